//! The live Cloud Scheduler API, through the official `google-cloud-scheduler-v1` client, kept
//! off the pipeline's hot path.
//!
//! A failing job whose config the API must supply may be forged (anyone who can write log
//! entries can name any job), and the API may be slow. So:
//!
//! - **One deadline a batch.** Before a batch is processed, [`SchedulerApi::prepare`] starts the
//!   calls its failures need — at most [`CONCURRENCY`] at a time, on the client's runtime — and
//!   waits for them together until `timeout` at most. The batch is then processed synchronously
//!   from the cache; a failure whose answer did not come in time is `auth-config-unavailable`,
//!   and its call goes on in the background to fill the cache for the job's next failure.
//!   A batch that needs no call does not wait at all.
//! - **Cached answers.** A config is trusted for `cache_ttl`, and fetched again when an incident
//!   opens, so an alert never describes a config that was fixed an hour ago. A failed look-up
//!   (404, 403, no answer) is remembered for `error_ttl`: the negative cache, bounded in size, so
//!   a flood of forged ids costs at most one call each and bounded memory.
//! - **Listings.** When two or more unknown jobs of one location are needed at once — or one,
//!   after a `GetJob` there answered "not found" — the location is listed (`ListJobs`, paged)
//!   instead of one `GetJob` each. For `error_ttl` after, a job that is not in that listing is
//!   "not found" without a call: fifty forged ids cost one listing, not fifty calls.
//! - **An API that does not answer is left alone.** After a call got no answer (timed out,
//!   could not connect, 429 or 5xx), no new call starts for `error_ttl`, unless another call
//!   answers meanwhile: a slow API costs one timeout, not one per batch. A config still within
//!   `cache_ttl` is used meanwhile, even for an incident that opens.
//!
//! API paths are built only from a [`JobKey`]'s name (`projects/P/locations/L/jobs/J`, and its
//! `projects/P/locations/L` for a listing), and an answer is used only for the job or location
//! it was asked for.

use std::collections::VecDeque;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use google_cloud_scheduler_v1::client::CloudScheduler;
use rustc_hash::{FxHashMap, FxHashSet};
use serde::{Deserialize, Serialize};
use tokio::sync::{watch, Semaphore};

use super::job::JobConfig;
use crate::metrics::metrics;
use crate::JobKey;

/// Calls in flight at once. A batch rarely needs more than a few new jobs, and four calls
/// answer those in one round trip; a flood of forged ids cannot open more than four
/// connections to the API nor spend its read quota faster than four calls a round trip.
pub const CONCURRENCY: usize = 4;

/// Calls started and not finished (running or waiting for one of the [`CONCURRENCY`] slots).
/// At ~100 ms an answer, 64 drain in under two seconds, well inside a batch's deadline; more
/// would only finish after it. A failure that finds them all taken is `auth-config-unavailable`
/// and asked again at the job's next failure.
const MAX_PENDING: usize = 64;

/// Unknown jobs of one location, needed at once, that make a listing instead of a `GetJob`
/// each: from two on, one listing (one call per 500 jobs) costs no more than the gets, and
/// answers every further id of that location without a call.
const LIST_THRESHOLD: usize = 2;

/// Pages of one listing at most (500 jobs a page, the API's maximum and default): 10,000 jobs.
/// A location with more is used as far as it was listed, without "not listed, so not found".
const MAX_LIST_PAGES: usize = 20;

/// Configs kept: the failing jobs of a large deployment, at most a few MiB.
const CONFIG_CAPACITY: usize = 10_000;

/// Failed look-ups kept, and locations with a recent "not found" or a failed listing: each
/// entry is a key and a short message (~300 bytes), so a flood of forged ids holds ~3 MiB at
/// most; beyond it the oldest are forgotten (and cost one more call if they come back).
const FAILURE_CAPACITY: usize = 10_000;

/// Listings kept, each up to 10,000 job ids (~40 bytes each): the locations a deployment
/// really uses. Only a location that exists can be listed, so forged ones do not count here.
const LISTING_CAPACITY: usize = 64;

/// `[scheduler_api]` in the config file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SchedulerApiConfig {
    /// Look jobs up in the Cloud Scheduler API when the inventory does not have them.
    pub enabled: bool,
    /// The API endpoint; the client's default (`https://cloudscheduler.googleapis.com`) when unset.
    pub endpoint: Option<String>,
    /// Send no credentials (for a local fake or emulator). Otherwise Application Default
    /// Credentials are used.
    pub anonymous: bool,
    /// How long a fetched job config is trusted, 10 s to 1 day
    /// ([`crate::config::CACHE_TTL`]).
    #[serde(with = "humantime_serde")]
    pub cache_ttl: Duration,
    /// How long a failed look-up — and a location's listing, for the jobs it lacks — is
    /// remembered before the API is asked again, 1 s to 1 h ([`crate::config::ERROR_TTL`]).
    #[serde(with = "humantime_serde")]
    pub error_ttl: Duration,
    /// The deadline of one call, and the longest a batch waits for the API, 1 s to 1 min
    /// ([`crate::config::API_TIMEOUT`]).
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for SchedulerApiConfig {
    fn default() -> Self {
        SchedulerApiConfig {
            enabled: false,
            endpoint: None,
            anonymous: false,
            cache_ttl: Duration::from_secs(300),
            error_ttl: Duration::from_secs(60),
            // The API answers in well under a second; 5 s rides out a slow moment, and a
            // batch that waits this long is still answered inside Pub/Sub's default 10 s push
            // acknowledgement deadline.
            timeout: Duration::from_secs(5),
        }
    }
}

/// What went wrong talking to the API.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ApiError {
    /// The client could not be built (credentials not found, bad endpoint).
    #[error("cannot set up the Cloud Scheduler client: {0}")]
    Setup(String),
    /// The call failed.
    #[error("Cloud Scheduler API: {0}")]
    Call(String),
    /// The call took longer than the configured timeout.
    #[error("Cloud Scheduler API: no answer within {0:?}")]
    Timeout(Duration),
    /// The answer was not a usable Job.
    #[error("Cloud Scheduler API returned an unusable job: {0}")]
    BadJob(String),
    /// A fresh listing of the job's location does not have it.
    #[error("Cloud Scheduler API: no such job in the listing of its location ({0})")]
    NotListed(String),
    /// No call was made for this failure.
    #[error("Cloud Scheduler API not asked: {0}")]
    NotAsked(String),
}

/// How a failed call ended: it tells whether the API is answering.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Heard {
    /// 404: the job (or location) does not exist.
    NotFound,
    /// Another answer that is the API's word on the job (403, 400, an unusable job).
    Refused,
    /// No answer: timed out, could not connect, or 429 / 5xx (overloaded).
    Nothing,
}

/// A failed call.
#[derive(Debug, Clone)]
struct Failed {
    error: ApiError,
    heard: Heard,
}

impl Failed {
    fn from_call(e: &google_cloud_gax::error::Error) -> Failed {
        let heard = match e.http_status_code() {
            Some(404) => Heard::NotFound,
            Some(429) | Some(500..) | None => Heard::Nothing,
            Some(_) => Heard::Refused,
        };
        Failed {
            error: ApiError::Call(e.to_string()),
            heard,
        }
    }

    fn bad_job(reason: String) -> Failed {
        Failed {
            error: ApiError::BadJob(reason),
            heard: Heard::Refused,
        }
    }
}

/// `projects/P/locations/L`: where jobs are listed.
type Parent = String;

/// The location and the id of a key, from its name (the one place paths are built from).
fn split(key: &JobKey) -> (Parent, String) {
    let name = key.name();
    match name.split_once("/jobs/") {
        Some((parent, id)) => (parent.to_owned(), id.to_owned()),
        None => (name, String::new()),
    }
}

/// One call (or one paged listing) in flight.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Fetch {
    Get(JobKey),
    List(Parent),
}

/// A listing that succeeded.
#[derive(Debug)]
enum Listing {
    /// Every job id of the location.
    Complete(FxHashSet<String>),
    /// More than [`MAX_LIST_PAGES`] pages: what it lacks may exist.
    Partial,
}

/// A map whose entries expire after a time to live, with at most `capacity` entries: the
/// oldest go first. Entries are dropped as new ones come, so memory returns after a flood.
struct Expiring<K, V> {
    map: FxHashMap<K, (Instant, V)>,
    /// Insertion order; an entry whose time differs from the map's was replaced since.
    order: VecDeque<(Instant, K)>,
    ttl: Duration,
    capacity: usize,
}

impl<K: Clone + Eq + Hash, V> Expiring<K, V> {
    fn new(ttl: Duration, capacity: usize) -> Self {
        Expiring {
            map: FxHashMap::default(),
            order: VecDeque::new(),
            ttl,
            capacity: capacity.max(1),
        }
    }

    /// The value, when younger than the time to live; with when it was stored.
    fn get(&self, key: &K, now: Instant) -> Option<(Instant, &V)> {
        let (at, v) = self.map.get(key)?;
        (now.saturating_duration_since(*at) < self.ttl).then_some((*at, v))
    }

    fn insert(&mut self, key: K, value: V, now: Instant) {
        self.map.insert(key.clone(), (now, value));
        self.order.push_back((now, key));
        // The expired, the stale (replaced or removed) and, over capacity, the oldest.
        while let Some((at, key)) = self.order.front() {
            let live = self.map.get(key).is_some_and(|(t, _)| t == at);
            let expired = now.saturating_duration_since(*at) >= self.ttl;
            let over = self.map.len() > self.capacity || self.order.len() > 2 * self.capacity;
            if live && !expired && !over {
                break;
            }
            if live {
                self.map.remove(key);
            }
            self.order.pop_front();
        }
    }

    fn remove(&mut self, key: &K) {
        self.map.remove(key);
    }
}

/// Every answer kept, the calls in flight, and whether the API is answering.
struct Cache {
    configs: Expiring<JobKey, Arc<JobConfig>>,
    failures: Expiring<JobKey, ApiError>,
    listings: Expiring<Parent, Listing>,
    /// Locations whose listing failed.
    unlisted: Expiring<Parent, ApiError>,
    /// Locations where a `GetJob` answered "not found".
    not_found_in: Expiring<Parent, ()>,
    /// Dropping a sender (when its call ends) wakes whoever waits for it.
    in_flight: FxHashMap<Fetch, watch::Sender<()>>,
    /// When a call last got no answer, unless one answered since.
    silent_since: Option<Instant>,
    /// Whether "not asked" was logged for this silence.
    silence_logged: bool,
    error_ttl: Duration,
}

/// What [`Cache::plan`] decided for a batch.
#[derive(Default)]
struct Plan {
    /// Calls to start, each with the jobs it is for.
    start: Vec<(Fetch, FxHashSet<JobKey>)>,
    /// Calls to wait for (started now or before).
    wait: Vec<watch::Receiver<()>>,
}

impl Cache {
    fn new(config: &SchedulerApiConfig) -> Cache {
        Cache {
            configs: Expiring::new(config.cache_ttl, CONFIG_CAPACITY),
            failures: Expiring::new(config.error_ttl, FAILURE_CAPACITY),
            listings: Expiring::new(config.error_ttl, LISTING_CAPACITY),
            unlisted: Expiring::new(config.error_ttl, FAILURE_CAPACITY),
            not_found_in: Expiring::new(config.error_ttl, FAILURE_CAPACITY),
            in_flight: FxHashMap::default(),
            silent_since: None,
            silence_logged: false,
            error_ttl: config.error_ttl,
        }
    }

    /// The answer for `key` without a call, if there is one. `refresh_since`: the config must
    /// have been fetched since then (an incident opens). `fallback`: after the batch's wait, a
    /// config within `cache_ttl` beats none, when no fresher answer came.
    fn answer(
        &self,
        key: &JobKey,
        refresh_since: Option<Instant>,
        fallback: bool,
        now: Instant,
    ) -> Option<Result<Arc<JobConfig>, ApiError>> {
        let config = self.configs.get(key, now);
        if let Some((at, c)) = config {
            if refresh_since.is_none_or(|since| at >= since) {
                return Some(Ok(c.clone()));
            }
        }
        if let Some((_, e)) = self.failures.get(key, now) {
            return Some(Err(e.clone()));
        }
        let (parent, id) = split(key);
        if let Some((at, Listing::Complete(ids))) = self.listings.get(&parent, now) {
            if !ids.contains(&id) {
                return Some(Err(ApiError::NotListed(format!(
                    "{} jobs listed {}s ago",
                    ids.len(),
                    now.saturating_duration_since(at).as_secs()
                ))));
            }
        }
        if let (true, Some((_, c))) = (fallback, config) {
            return Some(Ok(c.clone()));
        }
        self.unlisted.get(&parent, now).map(|(_, e)| Err(e.clone()))
    }

    /// Whether no call may start: one got no answer within `error_ttl`, and none answered since.
    fn silent(&self, now: Instant) -> bool {
        self.silent_since
            .is_some_and(|at| now.saturating_duration_since(at) < self.error_ttl)
    }

    /// Why `key` has no answer after its batch's wait.
    fn unanswered(&mut self, key: &JobKey, timeout: Duration, now: Instant) -> ApiError {
        let (parent, _) = split(key);
        if self.in_flight.contains_key(&Fetch::Get(key.clone()))
            || self.in_flight.contains_key(&Fetch::List(parent))
        {
            return ApiError::Timeout(timeout);
        }
        match self.silent_since.filter(|_| self.silent(now)) {
            Some(at) => {
                if !std::mem::replace(&mut self.silence_logged, true) {
                    tracing::warn!(
                        "the Cloud Scheduler API did not answer {}s ago: no new call for {:?} unless one answers; failing jobs meanwhile are auth-config-unavailable unless their config is cached",
                        now.saturating_duration_since(at).as_secs(),
                        self.error_ttl
                    );
                }
                ApiError::NotAsked(format!(
                    "it did not answer {}s ago",
                    now.saturating_duration_since(at).as_secs()
                ))
            }
            None => ApiError::NotAsked(format!("{MAX_PENDING} look-ups were already waiting")),
        }
    }

    /// Decides, for the jobs a batch needs (`true`: an incident opens), which are answered now,
    /// which calls to wait for, and which to start; the started ones are in flight on return.
    fn plan(&mut self, needs: &FxHashMap<JobKey, bool>, batch: Instant, now: Instant) -> Plan {
        let m = metrics();
        let mut plan = Plan::default();
        let mut waiting: FxHashSet<Fetch> = FxHashSet::default();
        // Per location: the jobs that need a call, and how many of them are unknown.
        let mut open: FxHashMap<Parent, (Vec<JobKey>, usize)> = FxHashMap::default();
        for (key, &opening) in needs {
            match self.answer(key, opening.then_some(batch), false, now) {
                Some(Ok(_)) => _ = m.api_cached_configs.inc(),
                Some(Err(ApiError::NotListed(_))) => _ = m.api_not_listed.inc(),
                Some(Err(_)) => _ = m.api_cached_failures.inc(),
                None => {
                    let (parent, _) = split(key);
                    let running = [Fetch::Get(key.clone()), Fetch::List(parent.clone())]
                        .into_iter()
                        .find(|f| self.in_flight.contains_key(f));
                    if let Some(fetch) = running {
                        if waiting.insert(fetch.clone()) {
                            plan.wait.push(self.in_flight[&fetch].subscribe());
                        }
                        continue;
                    }
                    let unknown = self.configs.get(key, now).is_none();
                    let entry = open.entry(parent).or_default();
                    entry.0.push(key.clone());
                    entry.1 += usize::from(unknown);
                }
            }
        }
        if open.is_empty() {
            return plan;
        }
        if self.silent(now) {
            m.api_not_asked
                .inc_by(open.values().map(|(k, _)| k.len() as u64).sum());
            return plan;
        }
        for (parent, (keys, unknown)) in open {
            let listed = self.listings.get(&parent, now).is_some();
            let not_found_here = self.not_found_in.get(&parent, now).is_some();
            let list = !listed && (unknown >= LIST_THRESHOLD || (unknown > 0 && not_found_here));
            let fetches: Vec<(Fetch, FxHashSet<JobKey>)> = if list {
                vec![(Fetch::List(parent), keys.into_iter().collect())]
            } else {
                keys.into_iter()
                    .map(|k| (Fetch::Get(k.clone()), [k].into_iter().collect()))
                    .collect()
            };
            for (fetch, keys) in fetches {
                if self.in_flight.len() >= MAX_PENDING {
                    m.api_not_asked.inc_by(keys.len() as u64);
                    continue;
                }
                let (tx, rx) = watch::channel(());
                self.in_flight.insert(fetch.clone(), tx);
                plan.wait.push(rx);
                plan.start.push((fetch, keys));
            }
        }
        plan
    }

    /// Notes whether a call got an answer (any answer, "not found" included).
    fn heard(&mut self, answered: bool, now: Instant) {
        if answered {
            self.silent_since = None;
            self.silence_logged = false;
        } else {
            self.silent_since = Some(now);
        }
    }

    /// A `GetJob` ended.
    fn got(&mut self, key: JobKey, answer: Result<JobConfig, Failed>, now: Instant) {
        match answer {
            Ok(config) => {
                self.heard(true, now);
                self.failures.remove(&key);
                self.configs.insert(key, Arc::new(config), now);
            }
            Err(f) => {
                self.heard(f.heard != Heard::Nothing, now);
                if f.heard == Heard::NotFound {
                    self.not_found_in.insert(split(&key).0, (), now);
                }
                // No answer leaves a config within cache_ttl in use; an answer replaces it.
                if f.heard == Heard::Nothing && self.configs.get(&key, now).is_some() {
                    return;
                }
                self.configs.remove(&key);
                self.failures.insert(key, f.error, now);
            }
        }
    }

    /// A listing of `parent` ended; the configs of `wanted` are kept.
    fn listed(
        &mut self,
        parent: Parent,
        wanted: &FxHashSet<JobKey>,
        answer: Result<(Vec<JobConfig>, bool), Failed>,
        now: Instant,
    ) {
        let (jobs, complete) = match answer {
            Ok(listing) => listing,
            Err(f) => {
                self.heard(f.heard != Heard::Nothing, now);
                self.unlisted.insert(parent, f.error, now);
                return;
            }
        };
        self.heard(true, now);
        let mut ids = FxHashSet::default();
        for job in jobs {
            let (p, id) = split(&job.key);
            if p != parent {
                tracing::warn!(location = %parent, job = %job.key, "left out of a listing: the job is not of the location listed");
                continue;
            }
            ids.insert(id);
            if wanted.contains(&job.key) {
                self.failures.remove(&job.key);
                self.configs.insert(job.key.clone(), Arc::new(job), now);
            }
        }
        tracing::debug!(location = %parent, jobs = ids.len(), complete, "jobs listed");
        let listing = if complete {
            Listing::Complete(ids)
        } else {
            Listing::Partial
        };
        self.unlisted.remove(&parent);
        self.listings.insert(parent, listing, now);
    }
}

/// The client and what its tasks share with the pipeline.
struct Shared {
    client: CloudScheduler,
    config: SchedulerApiConfig,
    cache: Mutex<Cache>,
    slots: Semaphore,
    calls: AtomicU64,
    errors: AtomicU64,
}

impl Shared {
    /// The cache; a task that panicked while holding it left nothing half-written that matters.
    fn cache(&self) -> MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// One call with the per-call deadline, counted.
    async fn call<T>(
        &self,
        call: impl std::future::Future<Output = Result<T, google_cloud_gax::error::Error>>,
    ) -> Result<T, Failed> {
        self.calls.fetch_add(1, Relaxed);
        metrics().api_lookups.inc();
        let answer = match tokio::time::timeout(self.config.timeout, call).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(e)) => Err(Failed::from_call(&e)),
            Err(_) => Err(Failed {
                error: ApiError::Timeout(self.config.timeout),
                heard: Heard::Nothing,
            }),
        };
        if answer.is_err() {
            self.errors.fetch_add(1, Relaxed);
            metrics().api_errors.inc();
        }
        answer
    }

    async fn get_job(&self, key: &JobKey) -> Result<JobConfig, Failed> {
        let job = self
            .call(self.client.get_job().set_name(key.name()).send())
            .await?;
        let config = to_config(&job).map_err(|e| Failed::bad_job(e.to_string()))?;
        if config.key != *key {
            return Err(Failed::bad_job(format!(
                "asked for {key}, got {}",
                config.key
            )));
        }
        Ok(config)
    }

    /// The jobs of `parent`, [`MAX_LIST_PAGES`] pages at most; `true` when that was all.
    async fn list_jobs(&self, parent: &str) -> Result<(Vec<JobConfig>, bool), Failed> {
        let mut jobs = Vec::new();
        let mut page_token = String::new();
        for _ in 0..MAX_LIST_PAGES {
            metrics().api_list_calls.inc();
            let page = self
                .call(
                    self.client
                        .list_jobs()
                        .set_parent(parent)
                        .set_page_token(page_token.clone())
                        .send(),
                )
                .await?;
            for job in &page.jobs {
                match to_config(job) {
                    Ok(j) => jobs.push(j),
                    Err(e) => tracing::warn!(location = %parent, "left out of a listing: {e}"),
                }
            }
            if page.next_page_token.is_empty() {
                return Ok((jobs, true));
            }
            page_token = page.next_page_token;
        }
        Ok((jobs, false))
    }

    /// Runs one planned call in a slot; its answer goes to the cache.
    async fn fetch(self: Arc<Self>, fetch: Fetch, keys: FxHashSet<JobKey>) {
        // Out of the in-flight map however this ends (also when the runtime drops the task),
        // which wakes the batch waiting for it.
        struct Done<'a>(&'a Shared, &'a Fetch);
        impl Drop for Done<'_> {
            fn drop(&mut self) {
                self.0.cache().in_flight.remove(self.1);
            }
        }
        let _done = Done(&self, &fetch);
        let Ok(_slot) = self.slots.acquire().await else {
            return;
        };
        // The API fell silent while this call waited for a slot: it is not made.
        if self.cache().silent(Instant::now()) {
            metrics().api_not_asked.inc_by(keys.len() as u64);
            return;
        }
        match &fetch {
            Fetch::Get(key) => {
                let answer = self.get_job(key).await;
                if let Err(f) = &answer {
                    tracing::warn!(job = %key, "job config unavailable: {}", f.error);
                }
                self.cache().got(key.clone(), answer, Instant::now());
            }
            Fetch::List(parent) => {
                let answer = self.list_jobs(parent).await;
                if let Err(f) = &answer {
                    tracing::warn!(
                        location = %parent,
                        jobs = keys.len(),
                        "cannot list the location's jobs, so their configs are unavailable for {:?}: {}",
                        self.config.error_ttl,
                        f.error
                    );
                }
                self.cache()
                    .listed(parent.clone(), &keys, answer, Instant::now());
            }
        }
    }
}

/// The batch being processed: what was prepared for it.
struct Batch {
    started: Instant,
    /// Jobs prepared by [`SchedulerApi::prepare`]; a job not among them is prepared alone when
    /// it is looked up (a source that feeds entries one by one, like `replay`).
    prepared: FxHashSet<JobKey>,
}

/// The client, its runtime and the cache.
pub struct SchedulerApi {
    shared: Arc<Shared>,
    runtime: tokio::runtime::Handle,
    batch: Option<Batch>,
}

impl SchedulerApi {
    /// Builds the client on `runtime` (which must outlive it).
    pub fn connect(
        config: &SchedulerApiConfig,
        runtime: tokio::runtime::Handle,
    ) -> Result<SchedulerApi, ApiError> {
        use google_cloud_gax::retry_policy::{Aip194Strict, RetryPolicyExt as _};
        // Retries stop before our own deadline, so a failed look-up reports its real cause
        // ("connection refused", "permission denied") rather than a timeout.
        let retry_budget = config.timeout.mul_f32(0.8);
        let mut builder =
            CloudScheduler::builder().with_retry_policy(Aip194Strict.with_time_limit(retry_budget));
        if let Some(endpoint) = &config.endpoint {
            builder = builder.with_endpoint(endpoint.clone());
        }
        if config.anonymous {
            builder = builder.with_credentials(
                google_cloud_auth::credentials::anonymous::Builder::new().build(),
            );
        }
        let client = runtime
            .block_on(builder.build())
            .map_err(|e| ApiError::Setup(e.to_string()))?;
        Ok(SchedulerApi {
            shared: Arc::new(Shared {
                client,
                config: config.clone(),
                cache: Mutex::new(Cache::new(config)),
                slots: Semaphore::new(CONCURRENCY),
                calls: AtomicU64::new(0),
                errors: AtomicU64::new(0),
            }),
            runtime,
            batch: None,
        })
    }

    /// Before a batch: starts the calls its failing jobs need (`true`: an incident opens, so
    /// the config is fetched again) and waits for them together, `timeout` at most. Returns at
    /// once when every answer is cached. Must be called outside the async runtime (the
    /// pipeline runs on its own thread).
    pub fn prepare(&mut self, needs: FxHashMap<JobKey, bool>) {
        let started = Instant::now();
        self.wait_for(&needs, started);
        self.batch = Some(Batch {
            started,
            prepared: needs.into_keys().collect(),
        });
    }

    /// The batch is processed: a job looked up from now on is prepared alone.
    pub fn end_batch(&mut self) {
        self.batch = None;
    }

    fn wait_for(&self, needs: &FxHashMap<JobKey, bool>, started: Instant) {
        if needs.is_empty() {
            return;
        }
        let plan = self.shared.cache().plan(needs, started, started);
        if plan.wait.is_empty() {
            return;
        }
        for (fetch, keys) in plan.start {
            self.runtime
                .spawn(Arc::clone(&self.shared).fetch(fetch, keys));
        }
        let deadline = tokio::time::Instant::from_std(started + self.shared.config.timeout);
        let answered = self.runtime.block_on(async {
            tokio::time::timeout_at(deadline, async {
                for mut rx in plan.wait {
                    // Ends when the call's sender is dropped: the call is over.
                    while rx.changed().await.is_ok() {}
                }
            })
            .await
        });
        if answered.is_err() {
            // A call the batch waited for did not answer by the deadline: until one answers,
            // later batches do not wait for new calls.
            let mut cache = self.shared.cache();
            if cache.silent_since.is_none() {
                cache.silent_since = Some(Instant::now());
            }
        }
    }

    /// The job's config: from the cache, as the batch's preparation left it. A job the batch
    /// did not prepare is prepared alone first. `refresh`: an incident opens, so the config
    /// must have been fetched for this batch, unless the API could not answer in time.
    pub fn get(&mut self, key: &JobKey, refresh: bool) -> Result<Arc<JobConfig>, ApiError> {
        let since = match &self.batch {
            Some(b) if b.prepared.contains(key) => b.started,
            _ => {
                let started = Instant::now();
                let needs = [(key.clone(), refresh)].into_iter().collect();
                self.wait_for(&needs, started);
                started
            }
        };
        let now = Instant::now();
        let mut cache = self.shared.cache();
        match cache.answer(key, refresh.then_some(since), true, now) {
            Some(answer) => answer,
            None => {
                let e = cache.unanswered(key, self.shared.config.timeout, now);
                if matches!(e, ApiError::Timeout(_)) {
                    tracing::warn!(job = %key, "job config unavailable: {e}; the answer is kept for the job's next failure");
                }
                Err(e)
            }
        }
    }

    /// Every job of a location (`audit --project P --location L`), following pages.
    pub fn list(&mut self, project: &str, location: &str) -> Result<Vec<JobConfig>, ApiError> {
        let parent = format!("projects/{project}/locations/{location}");
        let mut jobs = Vec::new();
        let mut page_token = String::new();
        loop {
            let call = self
                .shared
                .client
                .list_jobs()
                .set_parent(parent.clone())
                .set_page_token(page_token.clone())
                .send();
            let page = self
                .runtime
                .block_on(self.shared.call(call))
                .map_err(|f| f.error)?;
            for job in &page.jobs {
                match to_config(job) {
                    Ok(j) => jobs.push(j),
                    Err(e) => tracing::warn!("left out of the audit: {e}"),
                }
            }
            if page.next_page_token.is_empty() {
                return Ok(jobs);
            }
            page_token = page.next_page_token;
        }
    }
}

/// The client's `Job` serialises as the REST JSON: read it with the inventory's reader, so both
/// sources give the same config for the same job. Except enums: the client writes them as
/// numbers (`"httpMethod": 1`, it asks the API for `enum-encoding=int`), while gcloud and the
/// inventory use names, so the one enum the reader takes is put back as its name.
fn to_config(job: &google_cloud_scheduler_v1::model::Job) -> Result<JobConfig, ApiError> {
    let mut value = serde_json::to_value(job).map_err(|e| ApiError::BadJob(e.to_string()))?;
    if let (Some(target), Some(http)) = (value.get_mut("httpTarget"), job.http_target()) {
        match http.http_method.name() {
            Some(name) => target["httpMethod"] = name.into(),
            None => _ = target.as_object_mut().map(|t| t.remove("httpMethod")),
        }
    }
    JobConfig::from_value(value).map_err(|e| ApiError::BadJob(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const L: &str = "projects/acme-prod/locations/us-east1";

    fn key(id: &str) -> JobKey {
        JobKey::new("acme-prod", "us-east1", id).unwrap()
    }

    fn job(k: &JobKey) -> JobConfig {
        JobConfig::from_value(serde_json::json!({
            "name": k.name(),
            "httpTarget": {"uri": "https://x.a.run.app/"}
        }))
        .unwrap()
    }

    fn cache() -> Cache {
        Cache::new(&SchedulerApiConfig::default())
    }

    fn needs(ids: &[&str], opening: bool) -> FxHashMap<JobKey, bool> {
        ids.iter().map(|id| (key(id), opening)).collect()
    }

    fn started(plan: &Plan) -> Vec<Fetch> {
        let mut f: Vec<Fetch> = plan.start.iter().map(|(f, _)| f.clone()).collect();
        f.sort_by_key(|f| format!("{f:?}"));
        f
    }

    fn not_found() -> Failed {
        Failed {
            error: ApiError::Call("Job not found.".into()),
            heard: Heard::NotFound,
        }
    }

    fn no_answer() -> Failed {
        Failed {
            error: ApiError::Timeout(Duration::from_secs(5)),
            heard: Heard::Nothing,
        }
    }

    /// Ends a planned call as its task does: out of the in-flight map.
    fn finish(c: &mut Cache, f: &Fetch) {
        c.in_flight.remove(f);
    }

    #[test]
    fn the_expiring_map_forgets_the_expired_and_beyond_capacity_the_oldest() {
        let t = Instant::now();
        let mut m = Expiring::new(Duration::from_secs(60), 3);
        for (i, k) in ["a", "b", "c", "d"].iter().enumerate() {
            m.insert(*k, i, t + Duration::from_secs(i as u64));
        }
        assert_eq!(m.map.len(), 3, "capacity 3");
        assert!(m.get(&"a", t).is_none(), "the oldest went first");
        assert_eq!(
            m.get(&"d", t + Duration::from_secs(3)).map(|(_, v)| *v),
            Some(3)
        );
        assert!(
            m.get(&"b", t + Duration::from_secs(61)).is_none(),
            "expired"
        );
        // Replacing a key many times holds one entry, and the order queue stays bounded.
        for i in 0..100 {
            m.insert("d", i, t + Duration::from_secs(4));
        }
        assert!(m.order.len() <= 6, "{}", m.order.len());
        assert_eq!(
            m.get(&"d", t + Duration::from_secs(4)).map(|(_, v)| *v),
            Some(99)
        );
        // Everything expired is dropped by the next insert: memory comes back after a flood.
        m.insert("e", 0, t + Duration::from_secs(200));
        assert_eq!(m.map.len(), 1);
        assert_eq!(m.order.len(), 1);
    }

    #[test]
    fn two_unknown_jobs_of_a_location_are_listed_one_is_got() {
        let now = Instant::now();
        let mut c = cache();
        let plan = c.plan(&needs(&["a"], true), now, now);
        assert_eq!(started(&plan), vec![Fetch::Get(key("a"))]);
        assert_eq!(plan.wait.len(), 1);

        let mut c = cache();
        let plan = c.plan(&needs(&["a", "b", "c"], true), now, now);
        assert_eq!(started(&plan), vec![Fetch::List(L.into())]);
        let wanted = &plan.start[0].1;
        assert_eq!(
            wanted.len(),
            3,
            "the listing keeps the configs of every job it is for"
        );
        assert!(c.in_flight.contains_key(&Fetch::List(L.into())));

        // Another location's single job is a GetJob of its own.
        let mut n = needs(&["a", "b"], true);
        n.insert(JobKey::new("acme-prod", "other", "x").unwrap(), true);
        let plan = cache().plan(&n, now, now);
        assert_eq!(
            started(&plan),
            vec![
                Fetch::Get(JobKey::new("acme-prod", "other", "x").unwrap()),
                Fetch::List(L.into())
            ]
        );
    }

    #[test]
    fn a_job_absent_from_a_fresh_listing_is_not_found_without_a_call() {
        let now = Instant::now();
        let mut c = cache();
        let plan = c.plan(&needs(&["a", "ghost-1"], true), now, now);
        let wanted = plan.start[0].1.clone();
        finish(&mut c, &plan.start[0].0);
        // Page 2's job is there as well as page 1's: the listing is every page.
        c.listed(
            L.into(),
            &wanted,
            Ok((vec![job(&key("a")), job(&key("b"))], true)),
            now,
        );
        assert!(c.answer(&key("a"), Some(now), false, now).unwrap().is_ok());
        let later = now + Duration::from_secs(30);
        for ghost in ["ghost-1", "ghost-2", "ghost-3"] {
            let e = c
                .answer(&key(ghost), None, false, later)
                .unwrap()
                .unwrap_err();
            assert!(matches!(e, ApiError::NotListed(_)), "{e}");
        }
        let plan = c.plan(
            &needs(&["ghost-2", "ghost-3", "ghost-4"], true),
            later,
            later,
        );
        assert!(
            plan.start.is_empty() && plan.wait.is_empty(),
            "no call at all"
        );
        // A listed job whose config was not wanted is fetched alone, not listed again.
        let plan = c.plan(&needs(&["b", "ghost-5"], false), later, later);
        assert_eq!(started(&plan), vec![Fetch::Get(key("b"))]);
        // After error_ttl, the listing is stale: the location is listed again.
        let stale = now + Duration::from_secs(61);
        let mut c2 = cache();
        c2.listed(L.into(), &wanted, Ok((vec![], true)), now);
        let plan = c2.plan(&needs(&["ghost-1", "ghost-2"], true), stale, stale);
        assert_eq!(started(&plan), vec![Fetch::List(L.into())]);
    }

    #[test]
    fn after_a_not_found_the_next_unknown_job_of_the_location_is_listed() {
        let now = Instant::now();
        let mut c = cache();
        let plan = c.plan(&needs(&["ghost-1"], true), now, now);
        finish(&mut c, &plan.start[0].0);
        c.got(key("ghost-1"), Err(not_found()), now);
        let plan = c.plan(&needs(&["ghost-2"], true), now, now);
        assert_eq!(started(&plan), vec![Fetch::List(L.into())]);
    }

    #[test]
    fn a_failed_look_up_is_remembered_for_error_ttl_in_a_bounded_cache() {
        let now = Instant::now();
        let mut c = cache();
        c.got(key("ghost"), Err(not_found()), now);
        let soon = now + Duration::from_secs(59);
        let plan = c.plan(&needs(&["ghost"], true), soon, soon);
        assert!(plan.start.is_empty(), "remembered: no second call");
        let e = c.answer(&key("ghost"), Some(soon), true, soon).unwrap();
        assert!(e.unwrap_err().to_string().contains("Job not found"));
        let later = now + Duration::from_secs(60);
        assert!(
            c.answer(&key("ghost"), None, true, later).is_none(),
            "asked again"
        );

        // A flood of forged ids: memory stays at the capacity.
        for i in 0..FAILURE_CAPACITY + 500 {
            c.got(
                JobKey::new("acme-prod", "us-east1", &format!("forged-{i}")).unwrap(),
                Err(not_found()),
                now,
            );
        }
        assert_eq!(c.failures.map.len(), FAILURE_CAPACITY);
        assert!(c.failures.order.len() <= 2 * FAILURE_CAPACITY);
    }

    #[test]
    fn a_call_in_flight_is_waited_for_not_made_twice() {
        let now = Instant::now();
        let mut c = cache();
        let first = c.plan(&needs(&["a", "b"], true), now, now);
        assert_eq!(first.start.len(), 1);
        // The next batch, while the listing runs: it waits for it, starts nothing.
        let second = c.plan(&needs(&["c"], true), now, now);
        assert!(second.start.is_empty());
        assert_eq!(second.wait.len(), 1);
    }

    #[test]
    fn an_api_that_did_not_answer_is_not_asked_until_error_ttl_or_an_answer() {
        let now = Instant::now();
        let mut c = cache();
        c.got(key("known"), Ok(job(&key("known"))), now);
        let plan = c.plan(&needs(&["a"], true), now, now);
        finish(&mut c, &plan.start[0].0);
        c.got(key("a"), Err(no_answer()), now);
        assert!(c.silent(now));
        // No new call, not even a refresh of a known job, whose cached config is used instead.
        let soon = now + Duration::from_secs(1);
        let plan = c.plan(&needs(&["b", "c", "known"], true), soon, soon);
        assert!(plan.start.is_empty() && plan.wait.is_empty());
        assert!(c
            .answer(&key("known"), Some(soon), true, soon)
            .unwrap()
            .is_ok());
        let e = c.unanswered(&key("b"), Duration::from_secs(5), soon);
        assert!(matches!(e, ApiError::NotAsked(_)), "{e}");
        // An answer (a "not found" too) ends the silence.
        c.got(key("x"), Err(not_found()), soon);
        assert!(!c.silent(soon));
        assert_eq!(c.plan(&needs(&["b"], true), soon, soon).start.len(), 1);
        // And so does error_ttl.
        let mut c = cache();
        c.got(key("a"), Err(no_answer()), now);
        assert!(!c.silent(now + Duration::from_secs(60)));
    }

    #[test]
    fn an_opening_incident_fetches_a_config_older_than_its_batch_again() {
        let now = Instant::now();
        let mut c = cache();
        c.got(key("a"), Ok(job(&key("a"))), now);
        let batch = now + Duration::from_secs(1);
        assert!(c.plan(&needs(&["a"], false), batch, batch).start.is_empty());
        assert_eq!(
            started(&c.plan(&needs(&["a"], true), batch, batch)),
            vec![Fetch::Get(key("a"))]
        );
        // Fetched for this batch: no further call when a second incident opens in it.
        let mut c = cache();
        c.got(key("a"), Ok(job(&key("a"))), batch);
        assert!(c.plan(&needs(&["a"], true), batch, batch).start.is_empty());
        // A refresh that got no answer leaves the cached config in use; a 404 replaces it.
        let mut c = cache();
        c.got(key("a"), Ok(job(&key("a"))), now);
        c.got(key("a"), Err(no_answer()), batch);
        assert!(c
            .answer(&key("a"), Some(batch), true, batch)
            .unwrap()
            .is_ok());
        c.got(key("a"), Err(not_found()), batch);
        assert!(c
            .answer(&key("a"), Some(batch), true, batch)
            .unwrap()
            .is_err());
    }

    #[test]
    fn calls_waiting_are_bounded() {
        let now = Instant::now();
        let mut c = cache();
        let many: FxHashMap<JobKey, bool> = (0..MAX_PENDING + 10)
            .map(|i| {
                (
                    JobKey::new(&format!("proj-{i:04}"), "us-east1", "j").unwrap(),
                    true,
                )
            })
            .collect();
        let plan = c.plan(&many, now, now);
        assert_eq!(plan.start.len(), MAX_PENDING);
        assert_eq!(c.in_flight.len(), MAX_PENDING);
    }

    #[test]
    fn a_listing_keeps_only_jobs_of_the_location_it_listed() {
        let now = Instant::now();
        let mut c = cache();
        let elsewhere = JobKey::new("acme-prod", "elsewhere", "a").unwrap();
        let wanted: FxHashSet<JobKey> = [key("a"), elsewhere.clone()].into_iter().collect();
        c.listed(
            L.into(),
            &wanted,
            Ok((vec![job(&elsewhere), job(&key("a"))], true)),
            now,
        );
        assert!(c.configs.get(&elsewhere, now).is_none());
        assert!(c.configs.get(&key("a"), now).is_some());
    }
}
