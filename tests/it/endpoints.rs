//! The HTTP endpoints during `run` on a subscription of the real emulator: /healthz, /readyz
//! following the Pub/Sub connection, /metrics counters moving as messages flow, and Cloud
//! Logging JSON logs.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::emulator::{free_port, http, Emulator};
use crate::common::http::{FakeServer, Response};
use crate::common::service::{
    assert_clean_exit, expected, lines_of, tail, Service, Start, PROJECT,
};
use crate::common::{self};

const TOPIC: &str = "scheduler-logs";

/// GET `path` on the service.
fn get(address: &str, path: &str) -> (u16, String) {
    match http(address, "GET", path, None, Duration::from_secs(5)) {
        Ok(r) => (r.status, r.text()),
        Err(e) => (0, e.to_string()),
    }
}

/// `/metrics` as `name{labels}` → value; checks every sample has a `# TYPE` line.
pub fn scrape(address: &str) -> BTreeMap<String, f64> {
    let (status, text) = get(address, "/metrics");
    assert_eq!(status, 200, "{text}");
    let mut typed = std::collections::HashSet::new();
    let mut samples = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split(' ');
            typed.insert(parts.next().unwrap().to_owned());
            assert!(
                matches!(parts.next(), Some("counter" | "gauge" | "histogram")),
                "{line}"
            );
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (name, value) = line.rsplit_once(' ').unwrap();
        let family = name.split('{').next().unwrap();
        // A histogram's samples are its name with _bucket, _sum or _count.
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| family.strip_suffix(s).filter(|f| typed.contains(*f)))
            .unwrap_or(family);
        assert!(typed.contains(family), "no # TYPE for {line}");
        samples.insert(name.to_owned(), value.parse::<f64>().unwrap());
    }
    samples
}

/// `promtool check metrics` (Prometheus's own parser and linter) finds nothing to say about
/// the service's `/metrics`.
fn assert_promtool_clean(address: &str) {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let (status, text) = get(address, "/metrics");
    assert_eq!(status, 200, "{text}");
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool is missing: scripts/test installs it (apt-get install prometheus)");
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool check metrics: {}\n{said}\n{text}",
        out.status
    );
}

/// Polls until `done` holds for `what`; panics with the service's log after `timeout`.
pub fn eventually(service: &mut Service, what: &str, timeout: Duration, done: impl Fn() -> bool) {
    let end = Instant::now() + timeout;
    while !done() {
        if let Some(status) = service.child.try_wait().unwrap() {
            panic!(
                "schedwatch exited ({status}) before {what}\n{}",
                tail(&service.stderr())
            );
        }
        assert!(
            Instant::now() < end,
            "not {what} within {timeout:?}\n{}",
            tail(&service.stderr())
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn endpoints_follow_the_run_and_the_counters_move_as_messages_flow() {
    let mut emu = Emulator::start();
    emu.create_topic(PROJECT, TOPIC);
    emu.create_subscription(PROJECT, "endpoints", TOPIC, 10, false);
    let hook = FakeServer::start(|_| Response::new(204));
    let dir = tempfile::tempdir().unwrap();
    let example = common::shared().join("examples/oidc-to-run-job-then-fixed");
    let address = format!("127.0.0.1:{}", free_port());
    let url = common::write(dir.path(), "hook-url", format!("{}/hook", hook.url()));
    let config = common::write(
        dir.path(),
        "config.toml",
        format!(
            "[server]\nlisten = \"{address}\"\n\n[[receivers]]\nname = \"ops-hook\"\nwebhook = {{ url = {{ file = \"{}\" }} }}\n",
            url.display()
        ),
    );
    let mut service = Start {
        emulator: Some(&emu),
        sub: "endpoints",
        jobs: Some(&example.join("jobs")),
        state: &dir.path().join("state"),
        config: Some(&config),
        dir: dir.path(),
        n: 0,
        args: &["--log-format", "json"],
    }
    .spawn();

    eventually(&mut service, "ready", Duration::from_secs(30), || {
        get(&address, "/readyz").0 == 200
    });
    assert_eq!(get(&address, "/healthz"), (200, "ok\n".to_owned()));
    let before = scrape(&address);
    assert_eq!(before["schedwatch_messages_received_total"], 0.0);
    assert!(before["schedwatch_last_message_age_seconds"].is_nan());
    assert_eq!(before["schedwatch_pubsub_streams_connected"], 1.0);
    // Opening and loading the store is no commit: store_commits_total counts commits only.
    assert_eq!(before["schedwatch_store_commits_total"], 0.0);

    // The example's entries and one message that is not a log entry.
    let mut lines = lines_of(&example.join("logs.ndjson"));
    lines.push(b"this is not JSON".to_vec());
    emu.publish_log_entries(PROJECT, TOPIC, &lines);
    let want = expected(&example);
    service.wait_for("the example's alerts", Duration::from_secs(60), |a| {
        a.len() >= want.len()
    });
    let n = lines.len() as f64;
    eventually(
        &mut service,
        "every message acked",
        Duration::from_secs(30),
        || scrape(&address)["schedwatch_messages_acked_total"] == n,
    );
    // Deliveries are recorded a moment after the alert is printed.
    eventually(
        &mut service,
        "every alert delivered",
        Duration::from_secs(30),
        || {
            scrape(&address).get("schedwatch_notifications_sent_total{receiver=\"ops-hook\"}")
                == Some(&(want.len() as f64))
        },
    );
    let m = scrape(&address);
    assert_eq!(m["schedwatch_messages_received_total"], n);
    assert_eq!(m["schedwatch_messages_nacked_total"], 0.0);
    assert_eq!(
        m["schedwatch_messages_skipped_total{reason=\"invalid_json\"}"], 1.0,
        "{m:?}"
    );
    let events = |e: &str| want.iter().filter(|w| w.1 == e).count() as f64;
    assert_eq!(
        m["schedwatch_alerts_total{event=\"firing\"}"],
        events("firing")
    );
    assert_eq!(
        m["schedwatch_alerts_total{event=\"resolved\"}"],
        events("resolved")
    );
    assert_eq!(
        m["schedwatch_incidents_open"],
        events("firing") - events("resolved")
    );
    assert_eq!(
        m["schedwatch_notifications_failed_total{receiver=\"ops-hook\"}"],
        0.0
    );
    assert_eq!(hook.requests().len(), want.len());
    let age = m["schedwatch_last_message_age_seconds"];
    assert!((0.0..60.0).contains(&age), "{age}");
    assert!(m["schedwatch_store_commits_total"] >= 1.0);
    // Every batch's transaction timed: as many as the commits that held one, in the buckets.
    let timed = m["schedwatch_store_transaction_seconds_count"];
    assert!(
        (1.0..=m["schedwatch_store_commits_total"]).contains(&timed),
        "{timed}"
    );
    assert_eq!(
        m["schedwatch_store_transaction_seconds_bucket{le=\"+Inf\"}"],
        timed
    );
    assert_eq!(m["schedwatch_store_commit_failures_total"], 0.0);
    assert_promtool_clean(&address);

    // Pub/Sub gone: not ready (alive still), and the log says why.
    let emulator_port = emu.port();
    emu.stop();
    eventually(
        &mut service,
        "unready without Pub/Sub",
        Duration::from_secs(20),
        || get(&address, "/readyz").0 == 503,
    );
    let (_, why) = get(&address, "/readyz");
    assert!(why.contains("Pub/Sub"), "{why}");
    assert_eq!(get(&address, "/healthz").0, 200);
    assert_eq!(
        scrape(&address)["schedwatch_pubsub_endpoint_reachable"],
        0.0
    );
    // Back, with the subscription made again: ready again, by itself.
    let emu = Emulator::start_on(emulator_port);
    emu.create_topic(PROJECT, TOPIC);
    emu.create_subscription(PROJECT, "endpoints", TOPIC, 10, false);
    eventually(&mut service, "ready again", Duration::from_secs(60), || {
        get(&address, "/readyz").0 == 200
    });

    let stderr = assert_clean_exit(service.terminate());
    // Every log line is a Cloud Logging structured entry.
    let mut severities = std::collections::BTreeSet::new();
    for line in stderr.lines() {
        let entry: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("log line is not JSON ({e}): {line}"));
        let severity = entry["severity"]
            .as_str()
            .unwrap_or_else(|| panic!("{line}"));
        assert!(
            ["DEBUG", "INFO", "WARNING", "ERROR"].contains(&severity),
            "{line}"
        );
        assert!(entry["message"].is_string(), "{line}");
        assert!(
            entry["time"].as_str().is_some_and(|t| t.ends_with('Z')),
            "{line}"
        );
        severities.insert(severity.to_owned());
    }
    assert!(
        severities.contains("WARNING"),
        "the outage is logged: {stderr}"
    );
    assert!(
        stderr.contains("\"message\":\"state loaded\"") && stderr.contains("\"open_incidents\":0"),
        "fields stay fields: {}",
        tail(&stderr)
    );
}
