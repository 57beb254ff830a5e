//! Incidents: CONTRACT section 2 as a pure state machine.
//!
//! `(state, failure or success, diagnosis) → (state, events)`. Nothing here reads the clock or
//! does I/O: every decision uses the entry's event time, so replay, tests and production take
//! the same path, and the state serialises as it is into a store.
//!
//! What is tracked is bounded, whatever the input: an incident that has not fired ends silently
//! once an entry arrives `pending_expiry` (event time) after its last failure, and at most
//! `max_tracked_jobs` incidents are open — past that the oldest goes, unfired ones first. An
//! ordered index ([`Incidents`]'s `by_age`) makes both a look at its first element, never a
//! scan. An unfired incident holds no diagnosis: the failure that fires it brings its own.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::decode::Outcome;
use crate::diagnose::Diagnosis;
use crate::JobKey;

/// The incident rules a user tunes (`[incidents]` in the config file).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IncidentRules {
    /// Auth failures that make an incident fire when nothing confirms the cause, 1 to 10,000
    /// ([`crate::config::MIN_FAILURES`]).
    pub min_failures: u32,
    /// Fire at the first failure when the job's own config confirms the cause.
    pub fire_on_confirmed: bool,
    /// While failing, notify again once a failure is this long after the last notification,
    /// 1 min to 30 days ([`crate::config::REPEAT_INTERVAL`]).
    #[serde(with = "humantime_serde")]
    pub repeat_interval: Duration,
    /// An incident that has not fired ends silently when an entry arrives this long (event
    /// time) after its last failure.
    #[serde(with = "humantime_serde")]
    pub pending_expiry: Duration,
    /// Jobs with an open incident, at most; past it the one with the oldest last failure is
    /// dropped, unfired incidents before fired ones.
    pub max_tracked_jobs: usize,
}

impl Default for IncidentRules {
    fn default() -> Self {
        IncidentRules {
            min_failures: 3,
            fire_on_confirmed: true,
            repeat_interval: Duration::from_secs(4 * 3600),
            // Two days: a daily job (the slowest common schedule) that fails every run keeps
            // counting towards min_failures, with a day's slack for a late or missed run; far
            // beyond any retry burst (Cloud Scheduler backs off an hour at most) and 12x the
            // default repeat_interval.
            pending_expiry: Duration::from_secs(48 * 3600),
            // Ten times the jobs of a large organisation failing at once, and ~45 MiB at most
            // (about 450 bytes an unfired incident with its index entry), so replay stays
            // under 64 MiB on any input.
            max_tracked_jobs: 100_000,
        }
    }
}

/// The latest failure of an incident: what its notifications describe. The URL the job called
/// is not kept: the diagnosis names the target, and a log entry's URL is as long as whoever
/// wrote the entry likes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Failure {
    /// `unauthenticated` or `permission_denied`.
    pub outcome: Outcome,
    /// The gRPC status name, when logged.
    pub status: Option<String>,
    /// The HTTP status, when known.
    pub http_status: Option<u16>,
    /// Event time.
    pub at: DateTime<Utc>,
}

/// One job's open incident.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Incident {
    /// Stable for the incident's life: derived from the job and its first failure, so two
    /// replicas or a replay of the same data name it alike.
    pub id: String,
    /// Distinct auth failures collected.
    pub count: u64,
    /// Earliest failure's event time.
    pub first_at: DateTime<Utc>,
    /// Latest failure's event time.
    pub last_at: DateTime<Utc>,
    /// Whether a `firing` notification was made.
    pub fired: bool,
    /// Event time of the failure that caused the last notification.
    pub notified_at: Option<DateTime<Utc>>,
    /// The failure that arrived last.
    pub last_failure: Failure,
    /// Once it fired: the diagnosis of the failure that arrived last (shared with the
    /// pipeline's memo), for the repeats and the resolved notification. An unfired incident
    /// holds none (its words and fix are most of an incident's size; the failure that fires
    /// it brings a fresh one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diagnosis: Option<Arc<Diagnosis>>,
}

/// What an observation caused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// Nothing to notify (an incident may still have opened, grown, or closed silently).
    None,
    /// The incident reached its threshold.
    Firing,
    /// Still failing, `repeat_interval` after the last notification.
    Repeat,
    /// A later success ended a fired incident.
    Resolved,
}

/// Why an open incident was dropped without a notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Eviction {
    /// It had not fired, and an entry arrived `pending_expiry` after its last failure.
    Expired,
    /// A new incident needed room under `max_tracked_jobs`.
    Capacity,
}

/// An incident dropped without a notification: the store must forget it too.
#[derive(Debug, Clone, PartialEq)]
pub struct Evicted {
    /// Its job.
    pub job: JobKey,
    /// The incident as it was.
    pub incident: Incident,
    /// Why it went.
    pub reason: Eviction,
}

/// An incident's place in the eviction order: unfired before fired, then the oldest last
/// failure first (the job only tells apart equal times).
type Rank = (bool, DateTime<Utc>, Arc<JobKey>);

/// The open incidents, one per job at most.
#[derive(Debug, Clone, Default)]
pub struct Incidents {
    rules: IncidentRules,
    /// The job's key is shared with its `by_age` entry, not copied.
    open: rustc_hash::FxHashMap<Arc<JobKey>, Incident>,
    /// Every open incident, in eviction order: what expires or goes first is at the front.
    by_age: BTreeSet<Rank>,
    /// Dropped since the last [`Incidents::take_evicted`].
    evicted: Vec<Evicted>,
    /// The event time of the last failure or success seen.
    latest: Option<DateTime<Utc>>,
}

impl Incidents {
    /// No open incidents.
    pub fn new(rules: IncidentRules) -> Self {
        Incidents {
            rules,
            ..Default::default()
        }
    }

    /// The rules in force.
    pub fn rules(&self) -> &IncidentRules {
        &self.rules
    }

    /// The job's open incident.
    pub fn get(&self, job: &JobKey) -> Option<&Incident> {
        self.open.get(job)
    }

    /// How many incidents are open.
    pub fn open_count(&self) -> usize {
        self.open.len()
    }

    /// Every open incident.
    #[cfg(test)]
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&JobKey, &Incident)> {
        self.open.iter().map(|(job, i)| (&**job, i))
    }

    /// Puts back an incident loaded from a store. Call [`Incidents::trim`] once all are back.
    pub fn restore(&mut self, job: JobKey, incident: Incident) {
        self.take(&job);
        self.put(Arc::new(job), incident);
    }

    /// As of the last failure or success seen: an unfired incident whose last failure is
    /// earlier has expired. None before any, or when the window reaches past the calendar.
    /// (Each entry's own time, not the latest of all: one entry forged years ahead ends the
    /// pending incidents once, but does not expire every later one.)
    pub fn expiry_cutoff(&self) -> Option<DateTime<Utc>> {
        let window = chrono::Duration::from_std(self.rules.pending_expiry).ok()?;
        self.latest?.checked_sub_signed(window)
    }

    /// Drops the oldest incidents past `max_tracked_jobs` (after a restore under a lower cap).
    pub fn trim(&mut self) {
        self.make_room(0);
    }

    /// Sets the job's incident as a shared store holds it (none: no open incident).
    pub fn replace(&mut self, job: &JobKey, incident: Option<Incident>) {
        let key = self.take(job).map(|(key, _)| key);
        if let Some(i) = incident {
            self.put(key.unwrap_or_else(|| Arc::new(job.clone())), i);
        }
    }

    /// Forgets every incident (a shared store holds them between batches).
    pub fn clear(&mut self) {
        self.open.clear();
        self.by_age.clear();
    }

    /// The incidents dropped without a notification since the last call: expired, or over
    /// the cap. The caller tells the store.
    pub fn take_evicted(&mut self) -> std::vec::Drain<'_, Evicted> {
        self.evicted.drain(..)
    }

    /// Takes the job's incident out of the map and the index.
    fn take(&mut self, job: &JobKey) -> Option<(Arc<JobKey>, Incident)> {
        let (key, incident) = self.open.remove_entry(job)?;
        let rank = (incident.fired, incident.last_at, key);
        self.by_age.remove(&rank);
        Some((rank.2, incident))
    }

    /// Puts an incident into the map and the index (the job must not be there).
    fn put(&mut self, key: Arc<JobKey>, incident: Incident) {
        self.by_age
            .insert((incident.fired, incident.last_at, key.clone()));
        self.open.insert(key, incident);
    }

    /// Drops the incident at the front of the eviction order.
    fn evict_first(&mut self, reason: Eviction) {
        let Some((_, _, key)) = self.by_age.pop_first() else {
            return;
        };
        if let Some(incident) = self.open.remove(&*key) {
            self.evicted.push(Evicted {
                job: Arc::unwrap_or_clone(key),
                incident,
                reason,
            });
        }
    }

    /// Ends the unfired incidents whose last failure is more than `pending_expiry` before
    /// `now`. They are at the front of the order, so this looks at one entry when none is due.
    fn expire(&mut self, now: DateTime<Utc>) {
        self.latest = Some(now);
        let Some(cutoff) = self.expiry_cutoff() else {
            return;
        };
        while let Some((false, last_at, _)) = self.by_age.first() {
            if *last_at >= cutoff {
                break;
            }
            self.evict_first(Eviction::Expired);
        }
    }

    /// Evicts until `room` more incidents fit under `max_tracked_jobs`.
    fn make_room(&mut self, room: usize) {
        // At least one: a new incident is always tracked.
        let cap = self.rules.max_tracked_jobs.max(1);
        while !self.open.is_empty() && self.open.len() + room > cap {
            self.evict_first(Eviction::Capacity);
        }
    }

    /// An auth failure of `job`, diagnosed. Returns the transition and the incident after it.
    /// `first_key` names the incident if this failure opens one (the entry's dedup key). Its
    /// event time first expires the pending incidents it is `pending_expiry` after, and an
    /// incident that opens may evict the oldest one: see [`Incidents::take_evicted`].
    pub fn failure(
        &mut self,
        job: &JobKey,
        failure: Failure,
        diagnosis: Arc<Diagnosis>,
        first_key: u128,
    ) -> (Transition, &Incident) {
        let at = failure.at;
        self.expire(at);
        let confirmed = diagnosis.confirmed();
        // The job's key is copied only when an incident opens.
        let (key, mut incident) = match self.take(job) {
            Some(open) => open,
            None => {
                self.make_room(1);
                let opened = Incident {
                    id: incident_id(job, first_key),
                    count: 0,
                    first_at: at,
                    last_at: at,
                    fired: false,
                    notified_at: None,
                    last_failure: failure.clone(),
                    diagnosis: None,
                };
                (Arc::new(job.clone()), opened)
            }
        };
        let rules = &self.rules;
        incident.count += 1;
        incident.first_at = incident.first_at.min(at);
        incident.last_at = incident.last_at.max(at);
        incident.last_failure = failure;

        let needed = if confirmed && rules.fire_on_confirmed {
            1
        } else {
            u64::from(rules.min_failures.max(1))
        };
        let transition = match incident.notified_at {
            None if incident.count >= needed => Transition::Firing,
            Some(last) if incident.fired && at >= later_by(last, rules.repeat_interval) => {
                Transition::Repeat
            }
            _ => Transition::None,
        };
        if transition != Transition::None {
            incident.fired = true;
            incident.notified_at = Some(at);
        }
        incident.diagnosis = incident.fired.then_some(diagnosis);
        self.put(key, incident);
        (transition, self.open.get(job).expect("put above"))
    }

    /// A success of `job` at `at`. Ends the open incident when the success is later than its
    /// last failure: returns it, with `Resolved` when it had fired. An older success that
    /// arrives late changes nothing.
    pub fn success(&mut self, job: &JobKey, at: DateTime<Utc>) -> Option<(Transition, Incident)> {
        self.expire(at);
        let later = self.open.get(job).is_some_and(|i| at > i.last_at);
        if !later {
            return None;
        }
        let (_, incident) = self.take(job)?;
        let transition = if incident.fired {
            Transition::Resolved
        } else {
            Transition::None
        };
        Some((transition, incident))
    }
}

/// `at` plus `interval`, or the last instant chrono holds when the sum lies beyond it. Event
/// times come from log entries and intervals from the config: together they must never make the
/// pipeline panic (`DateTime + Duration` does on overflow), only never reach the later time.
pub fn later_by(at: DateTime<Utc>, interval: Duration) -> DateTime<Utc> {
    chrono::TimeDelta::from_std(interval)
        .ok()
        .and_then(|d| at.checked_add_signed(d))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

fn incident_id(job: &JobKey, first_key: u128) -> String {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(job.name().as_bytes());
    h.update(&first_key.to_le_bytes());
    format!("{:016x}", h.digest())
}

#[cfg(test)]
mod tests;
