//! Property tests of the incident invariants, through the real pipeline (decode, dedup,
//! incidents, correlate, diagnose) and, for arrays, the real file source.
//!
//! Why not "any shuffle of a stream gives the same events": an alert is made when an entry
//! arrives, so a success that arrives before the older failures it follows cannot resolve them
//! (CONTRACT section 2: "an older success that arrives late changes nothing"). What holds, and
//! is tested: duplicates never change anything; interleaving different jobs' entries changes
//! nothing; and a JSON array — one document, processed in timestamp order — gives the same
//! events however it is shuffled.

use std::collections::BTreeMap;

use proptest::prelude::*;
use schedwatch::correlate::{Correlator, Inventory};
use schedwatch::diagnose::Diagnoser;
use schedwatch::incidents::IncidentRules;
use schedwatch::pipeline::Pipeline;
use schedwatch::source::file;
use schedwatch_sinks::Alert;

const JOBS: [&str; 4] = ["oidc-to-api", "no-inventory", "run-service", "pubsub"];

fn inventory() -> Inventory {
    let mut inv = Inventory::default();
    let jobs = serde_json::json!([
        {"name": "projects/p/locations/us-east1/jobs/oidc-to-api", "httpTarget": {
            "uri": "https://us-east1-run.googleapis.com/apis/run.googleapis.com/v1/namespaces/p/jobs/w:run",
            "oidcToken": {"serviceAccountEmail": "sa@p.iam.gserviceaccount.com"}}},
        {"name": "projects/p/locations/us-east1/jobs/run-service", "httpTarget": {
            "uri": "https://api-4x7qk2m9da-ue.a.run.app/t",
            "oidcToken": {"serviceAccountEmail": "sa@p.iam.gserviceaccount.com"}}},
        {"name": "projects/p/locations/us-east1/jobs/pubsub", "pubsubTarget": {"topicName": "projects/p/topics/t"}}
    ]);
    inv.add_document(jobs, "test");
    inv
}

fn pipeline() -> Pipeline {
    let rules = IncidentRules {
        repeat_interval: std::time::Duration::from_secs(600),
        ..Default::default()
    };
    Pipeline::new(
        rules,
        10_000,
        Correlator::new(Some(inventory()), None),
        Diagnoser::default(),
    )
}

/// One execution log entry: job index, outcome (0 started, 1 success, 2 401, 3 403, 4 500),
/// and a distinct second.
fn entry(job: usize, outcome: u8, second: u32) -> String {
    entry_of(JOBS[job], outcome, second)
}

/// [`entry`] of any job id.
fn entry_of(job_id: &str, outcome: u8, second: u32) -> String {
    let ts = format!(
        "2026-11-20T{:02}:{:02}:{:02}.000000Z",
        9 + second / 3600,
        (second / 60) % 60,
        second % 60
    );
    let (kind, status, http) = match outcome {
        0 => ("AttemptStarted", None, None),
        1 => ("AttemptFinished", None, Some(200)),
        2 => ("AttemptFinished", Some("UNAUTHENTICATED"), Some(401)),
        3 => ("AttemptFinished", Some("PERMISSION_DENIED"), Some(403)),
        _ => ("AttemptFinished", Some("INTERNAL"), Some(500)),
    };
    let mut e = serde_json::json!({
        "insertId": format!("id{second}"),
        "logName": "projects/p/logs/cloudscheduler.googleapis.com%2Fexecutions",
        "resource": {"type": "cloud_scheduler_job", "labels": {"project_id": "p", "location": "us-east1", "job_id": job_id}},
        "timestamp": ts,
        "jsonPayload": {"@type": format!("type.googleapis.com/google.cloud.scheduler.logging.{kind}"), "url": "https://x.example/"},
    });
    if let Some(s) = status {
        e["jsonPayload"]["status"] = s.into();
    }
    if let Some(h) = http {
        e["httpRequest"] = serde_json::json!({"status": h});
    }
    e.to_string()
}

/// Entries with distinct, increasing seconds.
fn entries() -> impl Strategy<Value = Vec<(usize, String)>> {
    prop::collection::vec((0..JOBS.len(), 0u8..5, 1u32..400), 1..120).prop_map(|v| {
        let mut second = 0;
        v.into_iter()
            .map(|(job, outcome, gap)| {
                second += gap;
                (job, entry(job, outcome, second))
            })
            .collect()
    })
}

/// Entries of up to 40 jobs (a few with the inventory's configs), some hours apart, with a cap
/// of 1 to 8 tracked jobs and a pending expiry of an hour.
fn bounded() -> impl Strategy<Value = (usize, Vec<String>)> {
    let entry = (
        0usize..40,
        0u8..5,
        prop_oneof![8 => 1u32..400, 1 => 3000u32..9000],
    );
    (1usize..9, prop::collection::vec(entry, 1..200)).prop_map(|(cap, v)| {
        let mut second = 0;
        let lines = v
            .into_iter()
            .map(|(job, outcome, gap)| {
                second += gap;
                match JOBS.get(job) {
                    Some(known) => entry_of(known, outcome, second),
                    None => entry_of(&format!("flood-{job}"), outcome, second),
                }
            })
            .collect();
        (cap, lines)
    })
}

fn stream(lines: &[String]) -> Vec<Alert> {
    let mut p = pipeline();
    let mut out = Vec::new();
    for l in lines {
        p.process_item(l.as_bytes(), &mut out);
    }
    out
}

fn array(lines: &[String]) -> Vec<Alert> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("logs.json");
    std::fs::write(&path, format!("[{}]", lines.join(",\n"))).unwrap();
    let mut p = pipeline();
    let mut out = Vec::new();
    file::replay(&path, &mut p, &mut |a| {
        out.extend_from_slice(a);
        Ok(())
    })
    .unwrap();
    out
}

fn per_job(alerts: &[Alert]) -> BTreeMap<String, Vec<Alert>> {
    let mut m: BTreeMap<String, Vec<Alert>> = BTreeMap::new();
    for a in alerts {
        m.entry(a.job.id.clone()).or_default().push(a.clone());
    }
    m
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn a_duplicate_never_changes_the_result(entries in entries(), picks in prop::collection::vec((any::<prop::sample::Index>(), any::<prop::sample::Index>()), 1..30)) {
        let lines: Vec<String> = entries.into_iter().map(|(_, l)| l).collect();
        let mut with_dups = lines.clone();
        for (what, place) in picks {
            let dup = lines[what.index(lines.len())].clone();
            // A copy arrives after the original, as redeliveries do.
            let original = with_dups.iter().position(|l| *l == dup).unwrap();
            let at = original + 1 + place.index(with_dups.len() - original);
            with_dups.insert(at.min(with_dups.len()), dup);
        }
        prop_assert_eq!(stream(&lines), stream(&with_dups));
    }

    #[test]
    fn interleaving_jobs_differently_changes_nothing(entries in entries(), seed in any::<u64>()) {
        let lines: Vec<String> = entries.iter().map(|(_, l)| l.clone()).collect();
        // Another interleaving: each job's entries keep their order.
        let mut queues: Vec<Vec<String>> = vec![Vec::new(); JOBS.len()];
        for (job, l) in &entries {
            queues[*job].push(l.clone());
        }
        for q in &mut queues { q.reverse(); }
        let mut rng = seed;
        let mut mixed = Vec::new();
        while queues.iter().any(|q| !q.is_empty()) {
            rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let live: Vec<usize> = (0..JOBS.len()).filter(|&j| !queues[j].is_empty()).collect();
            let j = live[(rng >> 33) as usize % live.len()];
            mixed.push(queues[j].pop().unwrap());
        }
        prop_assert_eq!(per_job(&stream(&lines)), per_job(&stream(&mixed)));
    }

    #[test]
    fn a_shuffled_json_array_gives_the_same_events(entries in entries(), seed in any::<u64>()) {
        let lines: Vec<String> = entries.into_iter().map(|(_, l)| l).collect();
        let mut shuffled = lines.clone();
        let mut rng = seed | 1;
        for i in (1..shuffled.len()).rev() {
            rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;
            shuffled.swap(i, (rng % (i as u64 + 1)) as usize);
        }
        let in_order = stream(&lines);
        prop_assert_eq!(&array(&shuffled), &in_order);
        // Newest first, as `gcloud logging read` prints.
        let newest_first: Vec<String> = lines.iter().rev().cloned().collect();
        prop_assert_eq!(&array(&newest_first), &in_order);
    }

    #[test]
    fn tracked_incidents_never_exceed_the_cap_and_keep_their_shape((cap, lines) in bounded()) {
        let rules = IncidentRules {
            repeat_interval: std::time::Duration::from_secs(600),
            pending_expiry: std::time::Duration::from_secs(3600),
            max_tracked_jobs: cap,
            ..Default::default()
        };
        let mut p = Pipeline::new(rules, 10_000, Correlator::new(Some(inventory()), None), Diagnoser::default());
        let mut alerts = Vec::new();
        for l in &lines {
            p.process_item(l.as_bytes(), &mut alerts);
            prop_assert!(p.incidents().open_count() <= cap, "{} open, cap {cap}", p.incidents().open_count());
        }
        let s = &p.stats;
        // Every incident opened is open, dropped, or ended by a success.
        prop_assert!(s.incidents_opened >= p.incidents().open_count() as u64 + s.incidents_expired + s.incidents_evicted);
        // A dropped incident's job starts over: firing first, a resolved only last, per incident.
        let mut by_incident: BTreeMap<&str, Vec<&Alert>> = BTreeMap::new();
        for a in &alerts {
            by_incident.entry(a.incident_id.as_str()).or_default().push(a);
        }
        for events in by_incident.values() {
            use schedwatch_sinks::EventKind::*;
            prop_assert_eq!(events[0].event, Firing);
            for (i, e) in events.iter().enumerate() {
                prop_assert!(e.event != Firing || i == 0);
                prop_assert!(e.event != Resolved || i == events.len() - 1);
            }
        }
    }

    #[test]
    fn incidents_keep_their_shape(entries in entries()) {
        let lines: Vec<String> = entries.into_iter().map(|(_, l)| l).collect();
        let alerts = stream(&lines);
        let mut by_incident: BTreeMap<String, Vec<&Alert>> = BTreeMap::new();
        for a in &alerts {
            by_incident.entry(a.incident_id.clone()).or_default().push(a);
        }
        for events in by_incident.values() {
            use schedwatch_sinks::EventKind::*;
            // firing first, then repeats, then at most one resolved, last.
            prop_assert_eq!(events[0].event, Firing);
            for (i, e) in events.iter().enumerate() {
                prop_assert_eq!(&e.job, &events[0].job);
                prop_assert!(e.event != Firing || i == 0);
                prop_assert!(e.event != Resolved || i == events.len() - 1);
                prop_assert_eq!(e.resolved_at.is_some(), e.event == Resolved);
                prop_assert!(e.failure.first_at <= e.failure.last_at);
                if i > 0 { prop_assert!(e.failure.count >= events[i - 1].failure.count); }
            }
        }
        // At most one open (unresolved) incident per job at the end.
        let mut open: BTreeMap<&str, usize> = BTreeMap::new();
        for events in by_incident.values() {
            if events.last().unwrap().event != Resolved { *open.entry(events[0].job.id.as_str()).or_default() += 1; }
        }
        prop_assert!(open.values().all(|&n| n <= 1));
    }
}
use schedwatch_sinks::EventKind::Resolved;
