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

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use google_cloud_scheduler_v1::client::CloudScheduler;
use rustc_hash::{FxHashMap, FxHashSet};
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

use super::job::JobConfig;
use crate::metrics::metrics;
use crate::JobKey;

mod cache;
use cache::{Cache, Failed, Fetch, Heard};

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
mod tests;
