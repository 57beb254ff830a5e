//! The answers kept between batches — configs, failed look-ups, listings — and the calls in
//! flight: what decides, for each batch, which calls to start and which to wait for.

use std::collections::VecDeque;
use std::hash::Hash;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustc_hash::{FxHashMap, FxHashSet};
use tokio::sync::watch;

use super::{
    ApiError, SchedulerApiConfig, CONFIG_CAPACITY, FAILURE_CAPACITY, LISTING_CAPACITY,
    LIST_THRESHOLD, MAX_PENDING,
};
use crate::correlate::job::JobConfig;
use crate::metrics::metrics;
use crate::JobKey;

/// How a failed call ended: it tells whether the API is answering.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Heard {
    /// 404: the job (or location) does not exist.
    NotFound,
    /// Another answer that is the API's word on the job (403, 400, an unusable job).
    Refused,
    /// No answer: timed out, could not connect, or 429 / 5xx (overloaded).
    Nothing,
}

/// A failed call.
#[derive(Debug, Clone)]
pub(super) struct Failed {
    pub(super) error: ApiError,
    pub(super) heard: Heard,
}

impl Failed {
    pub(super) fn from_call(e: &google_cloud_gax::error::Error) -> Failed {
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

    pub(super) fn bad_job(reason: String) -> Failed {
        Failed {
            error: ApiError::BadJob(reason),
            heard: Heard::Refused,
        }
    }
}

/// `projects/P/locations/L`: where jobs are listed.
pub(super) type Parent = String;

/// The location and the id of a key, from its name (the one place paths are built from).
pub(super) fn split(key: &JobKey) -> (Parent, String) {
    let name = key.name();
    match name.split_once("/jobs/") {
        Some((parent, id)) => (parent.to_owned(), id.to_owned()),
        None => (name, String::new()),
    }
}

/// One call (or one paged listing) in flight.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) enum Fetch {
    Get(JobKey),
    List(Parent),
}

/// A listing that succeeded.
#[derive(Debug)]
pub(super) enum Listing {
    /// Every job id of the location.
    Complete(FxHashSet<String>),
    /// More than [`MAX_LIST_PAGES`](super::MAX_LIST_PAGES) pages: what it lacks may exist.
    Partial,
}

/// A map whose entries expire after a time to live, with at most `capacity` entries: the
/// oldest go first. Entries are dropped as new ones come, so memory returns after a flood.
pub(super) struct Expiring<K, V> {
    pub(super) map: FxHashMap<K, (Instant, V)>,
    /// Insertion order; an entry whose time differs from the map's was replaced since.
    pub(super) order: VecDeque<(Instant, K)>,
    pub(super) ttl: Duration,
    pub(super) capacity: usize,
}

impl<K: Clone + Eq + Hash, V> Expiring<K, V> {
    pub(super) fn new(ttl: Duration, capacity: usize) -> Self {
        Expiring {
            map: FxHashMap::default(),
            order: VecDeque::new(),
            ttl,
            capacity: capacity.max(1),
        }
    }

    /// The value, when younger than the time to live; with when it was stored.
    pub(super) fn get(&self, key: &K, now: Instant) -> Option<(Instant, &V)> {
        let (at, v) = self.map.get(key)?;
        (now.saturating_duration_since(*at) < self.ttl).then_some((*at, v))
    }

    pub(super) fn insert(&mut self, key: K, value: V, now: Instant) {
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

    pub(super) fn remove(&mut self, key: &K) {
        self.map.remove(key);
    }
}

/// Every answer kept, the calls in flight, and whether the API is answering.
pub(super) struct Cache {
    pub(super) configs: Expiring<JobKey, Arc<JobConfig>>,
    pub(super) failures: Expiring<JobKey, ApiError>,
    pub(super) listings: Expiring<Parent, Listing>,
    /// Locations whose listing failed.
    pub(super) unlisted: Expiring<Parent, ApiError>,
    /// Locations where a `GetJob` answered "not found".
    pub(super) not_found_in: Expiring<Parent, ()>,
    /// Dropping a sender (when its call ends) wakes whoever waits for it.
    pub(super) in_flight: FxHashMap<Fetch, watch::Sender<()>>,
    /// When a call last got no answer, unless one answered since.
    pub(super) silent_since: Option<Instant>,
    /// Whether "not asked" was logged for this silence.
    pub(super) silence_logged: bool,
    pub(super) error_ttl: Duration,
}

/// What [`Cache::plan`] decided for a batch.
#[derive(Default)]
pub(super) struct Plan {
    /// Calls to start, each with the jobs it is for.
    pub(super) start: Vec<(Fetch, FxHashSet<JobKey>)>,
    /// Calls to wait for (started now or before).
    pub(super) wait: Vec<watch::Receiver<()>>,
}

impl Cache {
    pub(super) fn new(config: &SchedulerApiConfig) -> Cache {
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
    pub(super) fn answer(
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
    pub(super) fn silent(&self, now: Instant) -> bool {
        self.silent_since
            .is_some_and(|at| now.saturating_duration_since(at) < self.error_ttl)
    }

    /// Why `key` has no answer after its batch's wait.
    pub(super) fn unanswered(&mut self, key: &JobKey, timeout: Duration, now: Instant) -> ApiError {
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
    pub(super) fn plan(
        &mut self,
        needs: &FxHashMap<JobKey, bool>,
        batch: Instant,
        now: Instant,
    ) -> Plan {
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
    pub(super) fn heard(&mut self, answered: bool, now: Instant) {
        if answered {
            self.silent_since = None;
            self.silence_logged = false;
        } else {
            self.silent_since = Some(now);
        }
    }

    /// A `GetJob` ended.
    pub(super) fn got(&mut self, key: JobKey, answer: Result<JobConfig, Failed>, now: Instant) {
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
    pub(super) fn listed(
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
