//! Incidents: CONTRACT section 2 as a pure state machine.
//!
//! `(state, failure or success, diagnosis) → (state, events)`. Nothing here reads the clock or
//! does I/O: every decision uses the entry's event time, so replay, tests and production take
//! the same path, and the state serialises as it is into a store.

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
}

impl Default for IncidentRules {
    fn default() -> Self {
        IncidentRules {
            min_failures: 3,
            fire_on_confirmed: true,
            repeat_interval: Duration::from_secs(4 * 3600),
        }
    }
}

/// The latest failure of an incident: what its notifications describe.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Failure {
    /// `unauthenticated` or `permission_denied`.
    pub outcome: Outcome,
    /// The gRPC status name, when logged.
    pub status: Option<String>,
    /// The HTTP status, when known.
    pub http_status: Option<u16>,
    /// The URL the job called, from the log.
    pub url: Option<String>,
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
    /// The diagnosis of the failure that arrived last (shared with the pipeline's memo).
    pub diagnosis: Arc<Diagnosis>,
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

/// The open incidents, one per job at most.
#[derive(Debug, Clone, Default)]
pub struct Incidents {
    rules: IncidentRules,
    open: rustc_hash::FxHashMap<JobKey, Incident>,
}

impl Incidents {
    /// No open incidents.
    pub fn new(rules: IncidentRules) -> Self {
        Incidents {
            rules,
            open: Default::default(),
        }
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
    pub fn iter(&self) -> impl Iterator<Item = (&JobKey, &Incident)> {
        self.open.iter()
    }

    /// Puts back an incident loaded from a store.
    pub fn restore(&mut self, job: JobKey, incident: Incident) {
        self.open.insert(job, incident);
    }

    /// Sets the job's incident as a shared store holds it (none: no open incident).
    pub fn replace(&mut self, job: &JobKey, incident: Option<Incident>) {
        match incident {
            Some(i) => {
                self.open.insert(job.clone(), i);
            }
            None => {
                self.open.remove(job);
            }
        }
    }

    /// Forgets every incident (a shared store holds them between batches).
    pub fn clear(&mut self) {
        self.open.clear();
    }

    /// An auth failure of `job`, diagnosed. Returns the transition and the incident after it.
    /// `first_key` names the incident if this failure opens one (the entry's dedup key).
    pub fn failure(
        &mut self,
        job: &JobKey,
        failure: Failure,
        diagnosis: Arc<Diagnosis>,
        first_key: u128,
    ) -> (Transition, &Incident) {
        let rules = &self.rules;
        let at = failure.at;
        let confirmed = diagnosis.confirmed();
        // The job's key is copied only when an incident opens.
        if !self.open.contains_key(job) {
            let opened = Incident {
                id: incident_id(job, first_key),
                count: 0,
                first_at: at,
                last_at: at,
                fired: false,
                notified_at: None,
                last_failure: failure.clone(),
                diagnosis: diagnosis.clone(),
            };
            self.open.insert(job.clone(), opened);
        }
        let incident = self.open.get_mut(job).expect("inserted above");
        incident.count += 1;
        incident.first_at = incident.first_at.min(at);
        incident.last_at = incident.last_at.max(at);
        incident.last_failure = failure;
        incident.diagnosis = diagnosis;

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
        (transition, incident)
    }

    /// A success of `job` at `at`. Ends the open incident when the success is later than its
    /// last failure: returns it, with `Resolved` when it had fired. An older success that
    /// arrives late changes nothing.
    pub fn success(&mut self, job: &JobKey, at: DateTime<Utc>) -> Option<(Transition, Incident)> {
        let later = self.open.get(job).is_some_and(|i| at > i.last_at);
        if !later {
            return None;
        }
        let incident = self.open.remove(job)?;
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
mod tests {
    use super::*;
    use crate::diagnose::{Code, Diagnosis};
    use chrono::TimeZone;

    fn t(min: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 20, 9, 0, 0).unwrap() + chrono::Duration::minutes(min)
    }

    fn fail(at: DateTime<Utc>) -> Failure {
        Failure {
            outcome: Outcome::Unauthenticated,
            status: None,
            http_status: Some(401),
            url: None,
            at,
        }
    }

    fn job() -> JobKey {
        JobKey::new("p", "l", "j")
    }

    fn diag(code: Code) -> Arc<Diagnosis> {
        Arc::new(Diagnosis::for_test(code))
    }

    #[test]
    fn fires_at_the_third_unconfirmed_failure_and_resolves_on_a_later_success() {
        let mut inc = Incidents::new(IncidentRules::default());
        let d = diag(Code::AuthConfigUnavailable);
        assert_eq!(
            inc.failure(&job(), fail(t(0)), d.clone(), 1).0,
            Transition::None
        );
        assert_eq!(
            inc.failure(&job(), fail(t(1)), d.clone(), 2).0,
            Transition::None
        );
        let (tr, i) = inc.failure(&job(), fail(t(2)), d.clone(), 3);
        assert_eq!((tr, i.count), (Transition::Firing, 3));
        assert_eq!(inc.failure(&job(), fail(t(3)), d, 4).0, Transition::None);
        assert!(
            inc.success(&job(), t(3)).is_none(),
            "not later than the last failure"
        );
        let (tr, i) = inc.success(&job(), t(4)).unwrap();
        assert_eq!(
            (tr, i.count, i.first_at, i.last_at),
            (Transition::Resolved, 4, t(0), t(3))
        );
        assert_eq!(inc.open_count(), 0);
    }

    #[test]
    fn a_confirmed_cause_fires_at_the_first_failure_unless_disabled() {
        let mut inc = Incidents::new(IncidentRules::default());
        assert_eq!(
            inc.failure(&job(), fail(t(0)), diag(Code::OidcTokenForGoogleApi), 1)
                .0,
            Transition::Firing
        );
        let mut off = Incidents::new(IncidentRules {
            fire_on_confirmed: false,
            ..Default::default()
        });
        assert_eq!(
            off.failure(&job(), fail(t(0)), diag(Code::OidcTokenForGoogleApi), 1)
                .0,
            Transition::None
        );
    }

    #[test]
    fn repeats_after_the_interval_measured_in_event_time() {
        let mut inc = Incidents::new(IncidentRules::default());
        let d = diag(Code::MissingAuthToken);
        assert_eq!(
            inc.failure(&job(), fail(t(0)), d.clone(), 1).0,
            Transition::Firing
        );
        assert_eq!(
            inc.failure(&job(), fail(t(239)), d.clone(), 2).0,
            Transition::None
        );
        assert_eq!(
            inc.failure(&job(), fail(t(240)), d.clone(), 3).0,
            Transition::Repeat
        );
        assert_eq!(
            inc.failure(&job(), fail(t(300)), d.clone(), 4).0,
            Transition::None
        );
        assert_eq!(
            inc.failure(&job(), fail(t(480)), d, 5).0,
            Transition::Repeat
        );
    }

    #[test]
    fn an_unfired_incident_ends_silently_and_the_next_one_has_a_new_id() {
        let mut inc = Incidents::new(IncidentRules::default());
        let d = diag(Code::UnexplainedAuthFailure);
        let first = inc.failure(&job(), fail(t(0)), d.clone(), 1).1.id.clone();
        let (tr, _) = inc.success(&job(), t(1)).unwrap();
        assert_eq!(tr, Transition::None);
        let second = inc.failure(&job(), fail(t(2)), d, 2).1.id.clone();
        assert_ne!(first, second);
    }

    /// Issue 13: a repeat check at the edge of the calendar (`300000years`, or an event time
    /// near chrono's end) panicked with "`DateTime + TimeDelta` overflowed".
    #[test]
    fn repeat_arithmetic_saturates_at_the_end_of_time() {
        let end = DateTime::<Utc>::MAX_UTC;
        let huge = Duration::from_secs(300_000 * 366 * 86_400);
        assert_eq!(later_by(t(0), huge), end);
        assert_eq!(later_by(end, Duration::from_secs(1)), end);
        assert_eq!(later_by(end, Duration::MAX), end);
        assert_eq!(later_by(t(0), Duration::from_secs(60)), t(1));

        for (start, interval) in [
            (t(0), huge),
            (t(0), Duration::MAX),
            (
                end - chrono::Duration::hours(1),
                Duration::from_secs(4 * 3600),
            ),
        ] {
            let mut inc = Incidents::new(IncidentRules {
                repeat_interval: interval,
                ..Default::default()
            });
            let d = diag(Code::MissingAuthToken);
            assert_eq!(
                inc.failure(&job(), fail(start), d.clone(), 1).0,
                Transition::Firing
            );
            // Never a repeat, and above all no panic, however late the next failure.
            assert_eq!(
                inc.failure(
                    &job(),
                    fail(start + chrono::Duration::minutes(30)),
                    d.clone(),
                    2
                )
                .0,
                Transition::None
            );
            assert_eq!(
                inc.failure(&job(), fail(end - chrono::Duration::seconds(1)), d, 3)
                    .0,
                Transition::None
            );
        }
    }

    #[test]
    fn a_late_older_failure_widens_the_window_but_keeps_the_latest_time() {
        let mut inc = Incidents::new(IncidentRules::default());
        let d = diag(Code::UnexplainedAuthFailure);
        inc.failure(&job(), fail(t(5)), d.clone(), 1);
        let (_, i) = inc.failure(&job(), fail(t(1)), d, 2);
        assert_eq!((i.first_at, i.last_at, i.count), (t(1), t(5), 2));
    }
}
