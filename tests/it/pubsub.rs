//! `schedwatch run --subscription` against Google's Pub/Sub emulator, started by the tests on a
//! free port: publish → alert, restarts, kill -9 at random moments, poison messages, an
//! emulator restart, and SIGTERM.
//!
//! Messages are published as a log sink would (the LogEntry JSON as data), with the job id as
//! the ordering key on an ordered subscription, so each job's entries arrive in order while
//! jobs interleave freely; incidents are per job, so the alerts are comparable job by job.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::emulator::{Emulator, Publish};
use crate::common::service::{
    assert_clean_exit, by_job, expected, lines_of, read_alerts, tail, Start, PROJECT,
};
use crate::common::{self, projection};

const TOPIC: &str = "scheduler-logs";
const SUB: &str = "schedwatch";

fn topic_and_ordered_subscription(emu: &Emulator, sub: &str) {
    emu.create_topic(PROJECT, TOPIC);
    emu.create_subscription(PROJECT, sub, TOPIC, 10, true);
}

fn topic_and_unordered_subscription(emu: &Emulator, sub: &str) {
    emu.create_topic(PROJECT, TOPIC);
    emu.create_subscription(PROJECT, sub, TOPIC, 10, false);
}

#[test]
fn every_shared_example_published_to_the_subscription_gives_its_expected_alerts() {
    let emu = Emulator::start();
    emu.create_topic(PROJECT, TOPIC);
    let mut examples: Vec<PathBuf> = std::fs::read_dir(common::shared().join("examples"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("expected.json").is_file())
        .collect();
    examples.sort();
    assert!(!examples.is_empty());
    for (n, example) in examples.iter().enumerate() {
        // One subscription per example, made before its messages are published.
        let sub = format!("example-{n}");
        emu.create_subscription(PROJECT, &sub, TOPIC, 10, true);
        emu.publish_log_entries(PROJECT, TOPIC, &lines_of(&example.join("logs.ndjson")));
        let dir = tempfile::tempdir().unwrap();
        let want = expected(example);
        let mut service = Start {
            emulator: Some(&emu),
            sub: &sub,
            jobs: Some(&example.join("jobs")),
            state: &dir.path().join("state"),
            config: None,
            dir: dir.path(),
            n: 0,
            args: &[],
        }
        .spawn();
        let entries = lines_of(&example.join("logs.ndjson")).len();
        // Every entry received and the expected number of alerts out.
        service.wait_for_log("received", entries, Duration::from_secs(60));
        let got = service.wait_for(
            &format!("{} alerts for {}", want.len(), example.display()),
            Duration::from_secs(60),
            |a| a.len() >= want.len(),
        );
        let stderr = assert_clean_exit(service.terminate());
        assert_eq!(
            by_job(&projection(&read_alerts(
                &dir.path().join("stdout.0.ndjson")
            ))),
            by_job(&want),
            "{}\n{}",
            example.display(),
            tail(&stderr)
        );
        assert_eq!(got.len(), want.len());
        assert!(
            stderr.contains(&format!("{entries} entries read")),
            "{}: {}",
            example.display(),
            tail(&stderr)
        );
        // (No backlog check here: after a streaming pull on an ordered subscription, the
        // emulator's REST pull fails with an internal error. The unordered tests check it.)
        assert!(
            stderr.contains(" 0 duplicates"),
            "{}: {}",
            example.display(),
            tail(&stderr)
        );
        // Delete the subscription: the topic feeds the next example's only.
        emu.call_ok(
            "DELETE",
            &format!("/v1/projects/{PROJECT}/subscriptions/{sub}"),
            None,
        );
    }
}

/// The seed case's entries (OIDC to the Cloud Run Admin API, six 401s, then successes).
fn seed_case() -> (PathBuf, Vec<Vec<u8>>) {
    let ex = common::shared().join("examples/oidc-to-run-job-then-fixed");
    let lines = lines_of(&ex.join("logs.ndjson"));
    (ex, lines)
}

/// Is this entry a success (an AttemptFinished without a status)?
fn is_success(line: &[u8]) -> bool {
    let v: Value = serde_json::from_slice(line).unwrap();
    payload_type(&v).ends_with("AttemptFinished") && v["jsonPayload"]["status"].is_null()
}

fn is_started(line: &[u8]) -> bool {
    payload_type(&serde_json::from_slice(line).unwrap()).ends_with("AttemptStarted")
}

fn payload_type(entry: &Value) -> &str {
    entry["jsonPayload"]["@type"].as_str().unwrap_or_default()
}

#[test]
fn a_restart_carries_incidents_on_no_second_firing_and_a_later_success_resolves() {
    let (ex, lines) = seed_case();
    let first_success = lines
        .iter()
        .position(|l| is_success(l))
        .expect("the seed case has a success");
    let (failures, rest) = lines.split_at(first_success);
    let emu = Emulator::start();
    topic_and_ordered_subscription(&emu, SUB);
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let jobs = ex.join("jobs");
    let start = |n| Start {
        emulator: Some(&emu),
        sub: SUB,
        jobs: Some(&jobs),
        state: &state,
        config: None,
        dir: dir.path(),
        n,
        args: &[],
    };

    // The failures: one firing alert.
    let (head, tail_failures) = failures.split_at(failures.len() / 2);
    emu.publish_log_entries(PROJECT, TOPIC, head);
    let mut first = start(0).spawn();
    first.wait_for_log("received", head.len(), Duration::from_secs(60));
    let fired = first.wait_for("the firing alert", Duration::from_secs(60), |a| {
        !a.is_empty()
    });
    assert_clean_exit(first.terminate());
    assert_eq!(fired.len(), 1);
    assert_eq!(fired[0]["event"], "firing");

    // More failures while it was down, then the success: no second firing, one resolved alert
    // for the same incident, counting every failure once.
    emu.publish_log_entries(PROJECT, TOPIC, tail_failures);
    emu.publish_log_entries(PROJECT, TOPIC, rest);
    let mut second = start(1).spawn();
    let resolved = second.wait_for("the resolved alert", Duration::from_secs(60), |a| {
        a.iter().any(|a| a["event"] == "resolved")
    });
    second.wait_for_log(
        "received",
        tail_failures.len() + rest.len(),
        Duration::from_secs(60),
    );
    assert_clean_exit(second.terminate());
    let resolved = read_alerts(&dir.path().join("stdout.1.ndjson"))
        .into_iter()
        .chain(resolved)
        .collect::<Vec<_>>();
    let events: BTreeSet<(String, String)> = resolved
        .iter()
        .map(|a| {
            (
                a["incident_id"].as_str().unwrap().to_owned(),
                a["event"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        events,
        BTreeSet::from([(
            fired[0]["incident_id"].as_str().unwrap().to_owned(),
            "resolved".to_owned()
        )]),
        "{resolved:?}"
    );
    let r = resolved.iter().find(|a| a["event"] == "resolved").unwrap();
    assert_eq!(
        r["failure"]["count"].as_u64().unwrap() as usize,
        failures.iter().filter(|l| !is_started(l)).count()
    );
    assert_eq!(r["failure"]["first_at"], fired[0]["failure"]["first_at"]);
}

#[test]
fn messages_not_acked_before_a_crash_are_processed_once_after_the_restart() {
    // Three 401s for a job the inventory lacks: it fires at the third failure, counting 3.
    let ex = common::shared().join("examples/forbidden-without-inventory");
    let lines = lines_of(&ex.join("logs.ndjson"));
    let emu = Emulator::start();
    // Unordered: an ordered subscription would hold each job's next message until the first
    // is acked, and this test needs every message received and none acked.
    topic_and_unordered_subscription(&emu, SUB);
    emu.publish_log_entries(PROJECT, TOPIC, &lines);
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    // A batch that commits only after a minute: the crash comes first.
    let slow = common::write(
        dir.path(),
        "slow.toml",
        "[state]\ncommit_interval = \"60s\"\ncommit_max_messages = 100000\n",
    );
    let mut crashing = Start {
        emulator: Some(&emu),
        sub: SUB,
        jobs: None,
        state: &state,
        config: Some(&slow),
        dir: dir.path(),
        n: 0,
        args: &[],
    }
    .spawn();
    crashing.wait_for_log("received", lines.len(), Duration::from_secs(60));
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        crashing.alerts().is_empty(),
        "an alert went out before its batch was committed"
    );
    crashing.kill9();

    // After the ack deadline (10 s) the messages come back; each counts once.
    let mut again = Start {
        emulator: Some(&emu),
        sub: SUB,
        jobs: None,
        state: &state,
        config: None,
        dir: dir.path(),
        n: 1,
        args: &[],
    }
    .spawn();
    let got = again.wait_for(
        "the firing alert after the restart",
        Duration::from_secs(60),
        |a| !a.is_empty(),
    );
    again.wait_for_log("received", lines.len(), Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(500));
    assert_clean_exit(again.terminate());
    assert_eq!(
        projection(&read_alerts(&dir.path().join("stdout.1.ndjson"))),
        expected(&ex),
        "{got:?}"
    );
    assert_eq!(emu.backlog(PROJECT, SUB), 0);
}

#[test]
fn poison_messages_are_acked_counted_and_never_block_the_stream() {
    let (ex, lines) = seed_case();
    let emu = Emulator::start();
    topic_and_ordered_subscription(&emu, SUB);
    // Poison first, on the job's own ordering key too: nothing behind it may wait.
    let job_key = "commit-worker";
    let poison = [
        Publish::new("not json at all").key(job_key),
        Publish::new(r#"{"truncated": "#).key(job_key),
        Publish::new(r#"{"logName":"projects/p/logs/syslog","textPayload":"hello"}"#).key(job_key),
        Publish::new(vec![0xff, 0xfe, 0x00]).key(job_key),
        Publish::new("null").key(job_key),
    ];
    emu.publish(PROJECT, TOPIC, &poison);
    emu.publish_log_entries(PROJECT, TOPIC, &lines);
    let dir = tempfile::tempdir().unwrap();
    let mut service = Start {
        emulator: Some(&emu),
        sub: SUB,
        jobs: Some(&ex.join("jobs")),
        state: &dir.path().join("state"),
        config: None,
        dir: dir.path(),
        n: 0,
        args: &[],
    }
    .spawn();
    service.wait_for("the seed case's two alerts", Duration::from_secs(60), |a| {
        a.len() >= 2
    });
    service.wait_for_log(
        "received",
        poison.len() + lines.len(),
        Duration::from_secs(30),
    );
    let stderr = assert_clean_exit(service.terminate());
    assert_eq!(
        by_job(&projection(&read_alerts(
            &dir.path().join("stdout.0.ndjson")
        ))),
        by_job(&expected(&ex))
    );
    let summary = stderr.lines().find(|l| l.contains("entries read")).unwrap();
    assert!(summary.contains("5 skipped"), "{summary}");
    for reason in ["invalid_json", "not_a_scheduler_entry", "not_an_object"] {
        assert!(summary.contains(reason), "{reason} not counted: {summary}");
    }
    // The job's own entries, published on the poison's ordering key after it, were delivered:
    // on an ordered subscription that happens only once the poison is acked.
}

#[test]
fn an_emulator_restart_mid_run_is_survived() {
    let (ex, lines) = seed_case();
    let first_success = lines.iter().position(|l| is_success(l)).unwrap();
    let (failures, rest) = lines.split_at(first_success);
    let mut emu = Emulator::start();
    let port = emu.port();
    topic_and_ordered_subscription(&emu, SUB);
    emu.publish_log_entries(PROJECT, TOPIC, failures);
    let dir = tempfile::tempdir().unwrap();
    let jobs = ex.join("jobs");
    let state = dir.path().join("state");
    let mut service = Start {
        emulator: Some(&emu),
        sub: SUB,
        jobs: Some(&jobs),
        state: &state,
        config: None,
        dir: dir.path(),
        n: 0,
        args: &[],
    }
    .spawn();
    service.wait_for("the firing alert", Duration::from_secs(60), |a| {
        !a.is_empty()
    });
    service.wait_for_log("received", failures.len(), Duration::from_secs(30));

    // The emulator dies and comes back empty on the same port: topic and subscription are
    // made again and the rest is published.
    emu.stop();
    std::thread::sleep(Duration::from_secs(1));
    let emu = Emulator::start_on(port);
    topic_and_ordered_subscription(&emu, SUB);
    emu.publish_log_entries(PROJECT, TOPIC, rest);
    let got = service.wait_for(
        "the resolved alert after the emulator restart",
        Duration::from_secs(90),
        |a| a.iter().any(|a| a["event"] == "resolved"),
    );
    // (The client may resume the stream itself or report it broken, then schedwatch reconnects
    // with backoff: either way the run goes on.)
    assert_clean_exit(service.terminate());
    assert_eq!(by_job(&projection(&got)), by_job(&expected(&ex)));
}

/// `jobs` jobs that each log one attempt, Started then Finished with a 401: with
/// `min_failures = 1` each fires once. One failure a job makes the outcome independent of the
/// order the entries arrive in (see the kill -9 test).
fn one_failure_per_job(jobs: usize) -> Vec<Vec<u8>> {
    let t0 = chrono::DateTime::parse_from_rfc3339("2026-11-20T09:00:00Z")
        .unwrap()
        .with_timezone(&chrono::Utc);
    let ts = |ms: i64| {
        (t0 + chrono::Duration::milliseconds(ms))
            .format("%Y-%m-%dT%H:%M:%S%.6fZ")
            .to_string()
    };
    let mut lines = Vec::with_capacity(jobs * 2);
    for n in 0..jobs {
        let job = format!("nightly-{n:05}");
        let (started, finished) = (ts(n as i64 * 10), ts(n as i64 * 10 + 5));
        let url = format!("https://us-east1-run.googleapis.com/apis/run.googleapis.com/v1/namespaces/acme-data-prod/jobs/{job}:run");
        let common = format!(
            r#""logName":"projects/acme-data-prod/logs/cloudscheduler.googleapis.com%2Fexecutions","resource":{{"type":"cloud_scheduler_job","labels":{{"job_id":"{job}","location":"us-east1","project_id":"acme-data-prod"}}}}"#
        );
        lines.push(format!(
            r#"{{"insertId":"s{n:013}",{common},"timestamp":"{started}","receiveTimestamp":"{started}","severity":"INFO","jsonPayload":{{"@type":"type.googleapis.com/google.cloud.scheduler.logging.AttemptStarted","jobName":"projects/acme-data-prod/locations/us-east1/jobs/{job}","targetType":"HTTP","url":"{url}"}}}}"#
        ).into_bytes());
        lines.push(format!(
            r#"{{"insertId":"f{n:013}",{common},"timestamp":"{finished}","receiveTimestamp":"{finished}","severity":"ERROR","jsonPayload":{{"@type":"type.googleapis.com/google.cloud.scheduler.logging.AttemptFinished","debugInfo":"URL_ERROR-ERROR_AUTHENTICATION. Original HTTP response code number = 401","jobName":"projects/acme-data-prod/locations/us-east1/jobs/{job}","targetType":"HTTP","url":"{url}","status":"UNAUTHENTICATED"}},"httpRequest":{{"status":401}}}}"#
        ).into_bytes());
    }
    lines
}

/// kill -9 at random moments during a 20,000-message run, restarting each time, gives the same
/// set of (incident_id, event) as a clean run, and every entry is committed exactly once.
///
/// The subscription is unordered: the emulator never redelivers what an *ordered* streaming
/// subscriber held when it was killed (its keys stay bound to the dead stream; verified, and
/// real Pub/Sub does not do this), so after a crash a job's entries arrive out of order. The
/// data are therefore one failure a job, which fires however the entries are ordered.
#[test]
fn kill_9_at_random_moments_loses_nothing_and_matches_a_clean_run() {
    let dir = tempfile::tempdir().unwrap();
    let lines = one_failure_per_job(10_000);
    let logs = common::write(
        dir.path(),
        "logs.ndjson",
        lines
            .iter()
            .flat_map(|l| l.iter().copied().chain([b'\n']))
            .collect::<Vec<u8>>(),
    );
    let config = common::write(
        dir.path(),
        "chaos.toml",
        "[incidents]\nmin_failures = 1\n\n[source]\nlease_extension = \"10s\"\n",
    );

    // The clean run: replay of the same file.
    let clean = common::run(&[
        "replay",
        "--config",
        config.to_str().unwrap(),
        "--format",
        "json",
        logs.to_str().unwrap(),
    ]);
    assert!(clean.status.success(), "{}", common::stderr(&clean));
    let want: BTreeSet<(String, String)> = common::ndjson(&clean).iter().map(event_of).collect();
    assert_eq!(want.len(), 10_000);

    // incident_id → the message id of its job's failure.
    let clean_alerts = common::ndjson(&clean);
    let emu = Emulator::start();
    topic_and_unordered_subscription(&emu, SUB);
    let ids = emu.publish_log_entries(PROJECT, TOPIC, &lines);
    let failure_message: BTreeMap<String, String> = clean_alerts
        .iter()
        .map(|a| {
            let n: usize = a["job"]["id"].as_str().unwrap()["nightly-".len()..]
                .parse()
                .unwrap();
            (
                a["incident_id"].as_str().unwrap().to_owned(),
                ids[2 * n + 1].clone(),
            )
        })
        .collect();
    let state = dir.path().join("state");
    let start = |n| Start {
        emulator: Some(&emu),
        sub: SUB,
        jobs: None,
        state: &state,
        config: Some(&config),
        dir: dir.path(),
        n,
        args: &[],
    };

    // Kill -9 at pseudo-random moments (a fixed seed: the same moments every run), restart
    // each time.
    let mut seed: u64 = 0x5eed_1234;
    let mut random_ms = |lo: u64, hi: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        lo + seed % (hi - lo)
    };
    let kills = 3;
    for n in 0..kills {
        let mut service = start(n).spawn();
        // Up and pulling first, then a random moment into the work.
        service.wait_for_log("pulling", 1, Duration::from_secs(30));
        std::thread::sleep(Duration::from_millis(random_ms(200, 1500)));
        service.kill9();
    }
    let mut last = start(kills).spawn();
    let all_out = |dir: &Path| -> Vec<Value> {
        (0..=kills)
            .flat_map(|n| read_alerts(&dir.join(format!("stdout.{n}.ndjson"))))
            .collect()
    };
    let end = Instant::now() + Duration::from_secs(300);
    loop {
        let got: BTreeSet<(String, String)> = all_out(dir.path()).iter().map(event_of).collect();
        if got.is_superset(&want) || Instant::now() > end {
            break;
        }
        assert!(
            last.child.try_wait().unwrap().is_none(),
            "schedwatch exited:\n{}",
            tail(&last.stderr())
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let survivor_log = last.stderr();
    assert_clean_exit(last.terminate());
    let alerts = all_out(dir.path());
    let got: BTreeSet<(String, String)> = alerts.iter().map(event_of).collect();
    assert!(
        got.is_subset(&want),
        "alerts a clean run does not make: {:?}",
        got.difference(&want).take(5).collect::<Vec<_>>()
    );
    // What is missing, the emulator never handed to the surviving process: it keeps what it
    // had sent to a killed streaming subscriber bound to the dead stream (the killed process
    // never acked it: it was never committed), and hands it out again only now and then. A
    // message the survivor received and made no alert for would be schedwatch's loss.
    let missing: Vec<&(String, String)> = want.difference(&got).collect();
    for (incident, _) in &missing {
        let message = &failure_message[incident];
        assert!(
            !survivor_log.contains(&format!("message_id={message} "))
                && !survivor_log.contains(&format!("message_id={message}\n")),
            "the surviving process received message {message} and no alert came of it"
        );
    }
    assert!(
        missing.len() <= want.len() / 100,
        "{} of {} alerts missing after {kills} kills and 300 s: more than the emulator's redelivery lag explains",
        missing.len(),
        want.len()
    );
    // A kill between delivering an alert and committing that it was delivered delivers it
    // again after the restart: at most one commit window's alerts per kill (README).
    let duplicates = alerts.len() - got.len();
    eprintln!(
        "{kills} kills: {} alerts, {duplicates} delivered twice, {} not yet redelivered by the emulator",
        got.len(),
        missing.len()
    );
    assert!(
        duplicates <= kills * 500,
        "{duplicates} duplicate alerts after {kills} kills"
    );

    // What was delivered is what the store holds: one open incident per alert, nothing left
    // to deliver.
    let mut check = start(kills + 1).spawn();
    check.wait_for_log("state loaded", 1, Duration::from_secs(30));
    let stderr = assert_clean_exit(check.terminate());
    let loaded = stderr.lines().find(|l| l.contains("state loaded")).unwrap();
    assert!(
        loaded.contains(&format!("open_incidents={} ", got.len())) && loaded.contains("outbox=0"),
        "{loaded}"
    );
}

fn event_of(a: &Value) -> (String, String) {
    (
        a["incident_id"].as_str().unwrap().to_owned(),
        a["event"].as_str().unwrap().to_owned(),
    )
}

#[test]
fn an_exactly_once_subscription_gets_confirmed_acks() {
    // Three 401s of a job the inventory lacks: one firing alert at the third, in any order.
    let ex = common::shared().join("examples/forbidden-without-inventory");
    let lines = lines_of(&ex.join("logs.ndjson"));
    let emu = Emulator::start();
    emu.create_topic(PROJECT, TOPIC);
    emu.call_ok(
        "PUT",
        &format!("/v1/projects/{PROJECT}/subscriptions/{SUB}"),
        Some(&serde_json::json!({"topic": format!("projects/{PROJECT}/topics/{TOPIC}"), "enableExactlyOnceDelivery": true})),
    );
    emu.publish_log_entries(PROJECT, TOPIC, &lines);
    let dir = tempfile::tempdir().unwrap();
    let mut service = Start {
        emulator: Some(&emu),
        sub: SUB,
        jobs: None,
        state: &dir.path().join("state"),
        config: None,
        dir: dir.path(),
        n: 0,
        args: &[],
    }
    .spawn();
    service.wait_for_log("received", lines.len(), Duration::from_secs(60));
    service.wait_for("the firing alert", Duration::from_secs(30), |a| {
        !a.is_empty()
    });
    // Past the ack deadline: a message whose ack was not confirmed would be back by now.
    std::thread::sleep(Duration::from_secs(11));
    let stderr = assert_clean_exit(service.terminate());
    assert!(!stderr.contains("not confirmed"), "{}", tail(&stderr));
    assert_eq!(
        stderr.matches("exactly-once ack confirmed").count(),
        lines.len(),
        "every ack confirmed"
    );
    assert_eq!(
        projection(&read_alerts(&dir.path().join("stdout.0.ndjson"))),
        expected(&ex)
    );
    assert!(
        stderr.contains(&format!("{} entries read", lines.len()))
            && stderr.contains(" 0 duplicates"),
        "{}",
        tail(&stderr)
    );
    assert_eq!(emu.backlog(PROJECT, SUB), 0);
}
