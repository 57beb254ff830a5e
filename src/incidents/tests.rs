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
        at,
    }
}

fn job() -> JobKey {
    JobKey::new("acme-prod", "us-east1", "j").unwrap()
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

fn job_n(n: usize) -> JobKey {
    JobKey::new("acme-prod", "us-east1", &format!("j{n}")).unwrap()
}

fn hours(h: i64) -> chrono::Duration {
    chrono::Duration::hours(h)
}

fn evicted(inc: &mut Incidents) -> Vec<(String, Eviction)> {
    inc.take_evicted()
        .map(|e| (e.job.job_id, e.reason))
        .collect()
}

#[test]
fn an_unfired_incident_expires_once_an_entry_is_the_window_past_its_last_failure() {
    let mut inc = Incidents::new(IncidentRules::default());
    let d = diag(Code::UnexplainedAuthFailure);
    inc.failure(&job_n(1), fail(t(0)), d.clone(), 1);
    // Exactly the window (48h) after: still pending.
    inc.failure(&job_n(2), fail(t(0) + hours(48)), d.clone(), 2);
    assert!(inc.get(&job_n(1)).is_some());
    assert!(evicted(&mut inc).is_empty());
    // A late, older entry expires nothing.
    inc.failure(&job_n(3), fail(t(-600)), d.clone(), 3);
    assert!(inc.get(&job_n(1)).is_some());
    // Any entry past the window ends it silently: here a success of another job.
    assert!(inc.success(&job_n(9), t(1) + hours(48)).is_none());
    // With j3, whose last failure is older still; the oldest first.
    assert_eq!(
        evicted(&mut inc),
        [
            ("j3".into(), Eviction::Expired),
            ("j1".into(), Eviction::Expired)
        ]
    );
    assert_eq!(inc.open_count(), 1);
    assert!(inc.get(&job_n(2)).is_some());
}

#[test]
fn a_fired_incident_never_expires_it_waits_for_its_success() {
    let mut inc = Incidents::new(IncidentRules::default());
    let fired = inc
        .failure(&job_n(1), fail(t(0)), diag(Code::MissingAuthToken), 1)
        .0;
    assert_eq!(fired, Transition::Firing);
    let later = t(0) + hours(24 * 365);
    inc.failure(
        &job_n(2),
        fail(later),
        diag(Code::UnexplainedAuthFailure),
        2,
    );
    assert!(evicted(&mut inc).is_empty());
    let (tr, i) = inc.success(&job_n(1), later).unwrap();
    assert_eq!((tr, i.count), (Transition::Resolved, 1));
}

#[test]
fn an_expired_jobs_next_failure_opens_a_new_incident_with_a_new_id() {
    let mut inc = Incidents::new(IncidentRules::default());
    let d = diag(Code::UnexplainedAuthFailure);
    let first = inc.failure(&job(), fail(t(0)), d.clone(), 1).1.id.clone();
    inc.failure(&job(), fail(t(1)), d.clone(), 2);
    let (tr, i) = inc.failure(&job(), fail(t(2) + hours(48)), d, 3);
    // Two old failures and this one would have fired; expired, it starts again at one.
    assert_eq!(
        (tr, i.count, i.first_at),
        (Transition::None, 1, t(2) + hours(48))
    );
    assert_ne!(i.id, first);
    assert_eq!(evicted(&mut inc), [("j".into(), Eviction::Expired)]);
}

#[test]
fn over_the_cap_the_oldest_unfired_incident_goes_first_then_the_oldest_fired() {
    let mut inc = Incidents::new(IncidentRules {
        max_tracked_jobs: 3,
        ..Default::default()
    });
    let (confirmed, unconfirmed) = (
        diag(Code::OidcTokenForGoogleApi),
        diag(Code::UnexplainedAuthFailure),
    );
    // j1 fired, the oldest; j2 and j3 pending.
    inc.failure(&job_n(1), fail(t(0)), confirmed.clone(), 1);
    inc.failure(&job_n(2), fail(t(1)), unconfirmed.clone(), 2);
    inc.failure(&job_n(3), fail(t(2)), unconfirmed.clone(), 3);
    // j2 fails again: its last failure is now the newest.
    inc.failure(&job_n(2), fail(t(3)), unconfirmed.clone(), 4);
    assert!(evicted(&mut inc).is_empty());
    // j4 needs room: j3 goes (the oldest unfired), not j1 (older, but fired).
    inc.failure(&job_n(4), fail(t(4)), unconfirmed.clone(), 5);
    assert_eq!(evicted(&mut inc), [("j3".into(), Eviction::Capacity)]);
    inc.failure(&job_n(5), fail(t(5)), unconfirmed.clone(), 6);
    assert_eq!(evicted(&mut inc), [("j2".into(), Eviction::Capacity)]);
    // j5 and j4 fire: only fired incidents are left, and j6 evicts the oldest, j1.
    inc.failure(&job_n(5), fail(t(6)), confirmed.clone(), 7);
    inc.failure(&job_n(4), fail(t(7)), confirmed.clone(), 8);
    inc.failure(&job_n(6), fail(t(8)), unconfirmed.clone(), 9);
    assert_eq!(evicted(&mut inc), [("j1".into(), Eviction::Capacity)]);
    assert_eq!(inc.open_count(), 3);
    let mut open: Vec<String> = inc.iter().map(|(j, _)| j.job_id.clone()).collect();
    open.sort();
    assert_eq!(open, ["j4", "j5", "j6"]);
}

#[test]
fn restored_incidents_over_a_lowered_cap_are_trimmed_oldest_first() {
    let mut before = Incidents::new(IncidentRules::default());
    let d = diag(Code::UnexplainedAuthFailure);
    for n in [3, 1, 4, 2] {
        before.failure(&job_n(n), fail(t(n as i64)), d.clone(), n as u128);
    }
    let mut after = Incidents::new(IncidentRules {
        max_tracked_jobs: 2,
        ..Default::default()
    });
    for (job, i) in before.iter() {
        after.restore(job.clone(), i.clone());
    }
    after.trim();
    assert_eq!(
        evicted(&mut after),
        [
            ("j1".into(), Eviction::Capacity),
            ("j2".into(), Eviction::Capacity)
        ]
    );
    assert_eq!(after.open_count(), 2);
}

#[test]
fn only_a_fired_incident_holds_a_diagnosis() {
    let mut inc = Incidents::new(IncidentRules::default());
    let d = diag(Code::UnexplainedAuthFailure);
    assert!(inc
        .failure(&job(), fail(t(0)), d.clone(), 1)
        .1
        .diagnosis
        .is_none());
    assert!(inc
        .failure(&job(), fail(t(1)), d.clone(), 2)
        .1
        .diagnosis
        .is_none());
    let (tr, i) = inc.failure(&job(), fail(t(2)), d.clone(), 3);
    assert_eq!(tr, Transition::Firing);
    assert!(Arc::ptr_eq(i.diagnosis.as_ref().unwrap(), &d));
    // Stored and read back: the pending one has no diagnosis field at all.
    let mut pending = Incidents::new(IncidentRules::default());
    let i = pending.failure(&job(), fail(t(0)), d, 1).1;
    let json = serde_json::to_value(i).unwrap();
    assert!(json.get("diagnosis").is_none(), "{json}");
    let back: Incident = serde_json::from_value(json).unwrap();
    assert_eq!(&back, i);
}

#[test]
fn a_far_future_entry_ends_pending_incidents_once_but_does_not_expire_later_ones() {
    let mut inc = Incidents::new(IncidentRules::default());
    let d = diag(Code::UnexplainedAuthFailure);
    inc.failure(&job_n(1), fail(t(0)), d.clone(), 1);
    // A forged timestamp years ahead: the window is measured from each entry's own time.
    inc.failure(&job_n(2), fail(t(0) + hours(24 * 3650)), d.clone(), 2);
    assert_eq!(evicted(&mut inc), [("j1".into(), Eviction::Expired)]);
    // Entries at the real time again: a new pending incident is kept and fires.
    for (n, key) in [(1, 3), (2, 4), (3, 5)] {
        inc.failure(&job_n(3), fail(t(n)), d.clone(), key);
    }
    assert!(evicted(&mut inc).is_empty());
    assert!(inc.get(&job_n(3)).unwrap().fired);
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
