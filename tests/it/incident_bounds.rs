//! Pending incidents are bounded (issue 13, point 5): jobs that fail and never fire, the shape
//! of a flood of forged job ids, neither grow memory without end nor come back after a
//! restart. Through the real binary: replay's peak memory on 200,000 distinct jobs failing
//! once, the embedded store across a restart, and the PostgreSQL table swept by the service.

use std::io::Write;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use base64::Engine as _;
use serde_json::{json, Value};

use crate::common::emulator::free_port;
use crate::common::postgres::Postgres;
use crate::common::service::{assert_clean_exit, Service};
use crate::common::{self};
use crate::endpoints::{eventually, scrape};
use crate::postgres_tls::{push, push_config, ready, start_numbered};

/// One AttemptFinished 401 of `job_id`, at `timestamp`, with its own insertId.
fn failure(job_id: &str, timestamp: &str) -> Value {
    json!({
        "httpRequest": {"status": 401},
        "insertId": format!("{job_id}-{timestamp}"),
        "jsonPayload": {
            "@type": "type.googleapis.com/google.cloud.scheduler.logging.AttemptFinished",
            "jobName": format!("projects/acme-data-prod/locations/europe-west1/jobs/{job_id}"),
            "status": "UNAUTHENTICATED",
            "targetType": "HTTP",
            "url": "https://nightly-etl-4x7qk2m9da-ew.a.run.app/cron",
        },
        "logName": "projects/acme-data-prod/logs/cloudscheduler.googleapis.com%2Fexecutions",
        "resource": {"type": "cloud_scheduler_job", "labels": {
            "job_id": job_id, "location": "europe-west1", "project_id": "acme-data-prod"}},
        "severity": "ERROR",
        "timestamp": timestamp,
    })
}

/// `entry` in a Pub/Sub push envelope.
fn envelope(entry: &Value, id: usize) -> Vec<u8> {
    let data = base64::engine::general_purpose::STANDARD.encode(entry.to_string());
    json!({
        "message": {"data": data, "messageId": id.to_string(),
                    "attributes": {"logging.googleapis.com/timestamp": entry["timestamp"]}},
        "subscription": "projects/acme-ops/subscriptions/schedwatch-push",
    })
    .to_string()
    .into_bytes()
}

/// Pushes one failure of `job_id` at `timestamp`; it must be committed (204).
fn push_failure(address: &str, job_id: &str, timestamp: &str, id: usize) {
    let (status, text) = push(address, &envelope(&failure(job_id, timestamp), id));
    assert_eq!(status, 204, "push {id} ({job_id}): {text}");
}

/// Runs `argv[2:]` and writes the peak RSS of it (RUSAGE_CHILDREN, KiB) to `argv[1]`.
const PEAK_RSS: &str = "import resource, subprocess, sys
rc = subprocess.call(sys.argv[2:])
with open(sys.argv[1], 'w') as f:
    f.write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))
sys.exit(rc if rc >= 0 else 128 - rc)";

/// Waits for the process to end and returns its exit code (from `wait4`).
fn wait_with_peak_rss(child: std::process::Child) -> (i32, i64) {
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value for wait4 to overwrite.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `pid` is our child, not yet waited for; both pointers are to live locals.
    let waited = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(waited, pid, "wait4: {}", std::io::Error::last_os_error());
    // The Child is never waited for through std: forget it rather than let it try.
    std::mem::forget(child);
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        -1
    };
    // Linux reports ru_maxrss in KiB.
    (code, usage.ru_maxrss)
}

#[test]
fn replay_of_200k_jobs_failing_once_each_keeps_a_small_peak_and_reports_the_evictions() {
    const JOBS: usize = 200_000;
    // Far more than the cap's incidents, the dedup window and the binary need, far less than
    // main's ~600 MiB for these entries (2.9 KB an incident, none ever dropped).
    const PEAK_KIB: i64 = 64 * 1024;
    let dir = tempfile::tempdir().unwrap();
    let config = common::write(
        dir.path(),
        "config.toml",
        "[incidents]\nmax_tracked_jobs = 1000\n",
    );
    let stderr = dir.path().join("stderr.log");
    // Through a small python3 wrapper: Linux folds the spawning process's peak into a forked
    // child's ru_maxrss, so wait4 in this (large, busy) test binary would measure the test binary.
    let peak = dir.path().join("peak-rss-kib");
    let mut child = std::process::Command::new("python3")
        .args(["-c", PEAK_RSS])
        .arg(&peak)
        .arg(env!("CARGO_BIN_EXE_schedwatch"))
        .args(["replay", "--format", "json", "--config"])
        .arg(&config)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .expect("schedwatch starts");
    // Made on the fly into the pipe: the input is never a file, nor held whole by anyone.
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        let mut out = std::io::BufWriter::new(&mut stdin);
        let start = chrono::DateTime::parse_from_rfc3339("2026-03-02T00:00:00Z").unwrap();
        for n in 0..JOBS {
            let at = start + chrono::Duration::milliseconds(10 * n as i64);
            let ts = at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
            let line = failure(&format!("flood-{n}"), &ts).to_string();
            out.write_all(line.as_bytes()).unwrap();
            out.write_all(b"\n").unwrap();
        }
        out.flush().unwrap();
    });
    let (code, _) = wait_with_peak_rss(child);
    let peak_kib: i64 = std::fs::read_to_string(&peak)
        .expect("the wrapper wrote the peak RSS")
        .trim()
        .parse()
        .unwrap();
    let written = writer.join();
    let log = std::fs::read_to_string(&stderr).unwrap();
    assert_eq!(code, 0, "{log}");
    written.expect("every entry was written");
    assert!(
        log.contains(&format!(
            "{JOBS} incidents opened ({} dropped at the max_tracked_jobs cap)",
            JOBS - 1000
        )),
        "the summary counts the evictions: {log}"
    );
    // Said once, not 199,000 times.
    assert_eq!(
        log.matches("max_tracked_jobs): dropped").count(),
        1,
        "{log}"
    );
    assert!(
        peak_kib < PEAK_KIB,
        "peak RSS {} MiB, bound {} MiB",
        peak_kib / 1024,
        PEAK_KIB / 1024
    );
}

/// A config for `run` in push mode on `address`, the state in the embedded store, with
/// `incidents` lines.
fn embedded_push_config(dir: &Path, address: &str, incidents: &str) -> std::path::PathBuf {
    common::write(
        dir,
        "config.toml",
        format!(
            "[server]\nlisten = \"{address}\"\n\n[source.push]\nallow_unauthenticated = true\n\n\
             [incidents]\n{incidents}\n"
        ),
    )
}

fn wait_ready(service: &mut Service, address: &str) {
    let address = address.to_owned();
    eventually(service, "ready", Duration::from_secs(30), || {
        ready(&address) == 200
    });
}

#[test]
fn an_incident_evicted_at_the_cap_is_deleted_from_the_embedded_store_and_stays_gone_after_a_restart(
) {
    let dir = tempfile::tempdir().unwrap();
    let address = format!("127.0.0.1:{}", free_port());
    let config = embedded_push_config(dir.path(), &address, "max_tracked_jobs = 2");
    let mut service = start_numbered(dir.path(), &config, 0);
    wait_ready(&mut service, &address);
    // a, b, c fail once each (3 failures fire): c's incident needs room, a's goes.
    for (id, job) in ["a", "b", "c"].into_iter().enumerate() {
        push_failure(
            &address,
            job,
            &format!("2026-03-02T02:0{id}:07.298114Z"),
            id,
        );
    }
    let metrics = scrape(&address);
    assert_eq!(
        metrics["schedwatch_incidents_evicted_total{reason=\"capacity\"}"],
        1.0
    );
    assert_eq!(
        metrics["schedwatch_incidents_evicted_total{reason=\"expired\"}"],
        0.0
    );
    assert_eq!(metrics["schedwatch_incidents_open"], 2.0);
    assert_clean_exit(service.terminate());

    let mut again = start_numbered(dir.path(), &config, 1);
    wait_ready(&mut again, &address);
    assert!(
        again.stderr().contains("open_incidents=2"),
        "the store holds b and c only:\n{}",
        again.stderr()
    );
    // Three failures of a now fire a new incident that starts at the first of them. Had a's
    // old incident come back, the second would have fired it, counting from 02:00.
    for n in 0..3 {
        push_failure(
            &address,
            "a",
            &format!("2026-03-02T03:0{n}:07.298114Z"),
            10 + n,
        );
    }
    let alerts = again.wait_for("a's firing alert", Duration::from_secs(30), |a| {
        !a.is_empty()
    });
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!(alerts[0]["job"]["id"], "a");
    assert_eq!(alerts[0]["failure"]["count"], 3);
    assert_eq!(
        alerts[0]["failure"]["first_at"],
        "2026-03-02T03:00:07.298114Z"
    );
    assert_clean_exit(again.terminate());
}

#[test]
fn the_shared_store_sweeps_pending_incidents_over_the_cap_and_past_the_expiry() {
    let pg = Postgres::start();
    let dir = tempfile::tempdir().unwrap();
    let address = format!("127.0.0.1:{}", free_port());
    // The sweep runs with the dedup expiry: every tick (a third of the lease, 2 s) here.
    let config = push_config(
        dir.path(),
        &address,
        &pg.url(),
        "dedup_retention = \"2s\"\noutbox_lease = \"6s\"",
        "[incidents]\nmax_tracked_jobs = 2\n",
    );
    let mut service = start_numbered(dir.path(), &config, 0);
    wait_ready(&mut service, &address);
    let open = || {
        pg.sql(
            "SELECT string_agg(split_part(job, '/', 6), ',' ORDER BY job) FROM jobs
             WHERE incident IS NOT NULL",
        )
    };
    // Each push is a batch of its own job: the table, not one process, holds them all.
    for (id, job) in ["j0", "j1", "j2", "j3"].into_iter().enumerate() {
        push_failure(
            &address,
            job,
            &format!("2026-03-02T02:0{id}:07.298114Z"),
            id,
        );
    }
    eventually(
        &mut service,
        "the two oldest swept over the cap",
        Duration::from_secs(30),
        || open() == "j2,j3",
    );
    // An entry three days later: j2 and j3 have not failed for longer than 48 h.
    push_failure(&address, "j4", "2026-03-05T02:00:07.298114Z", 4);
    eventually(
        &mut service,
        "the pending incidents expired",
        Duration::from_secs(30),
        || open() == "j4",
    );
    let metrics = scrape(&address);
    assert_eq!(
        metrics["schedwatch_incidents_evicted_total{reason=\"capacity\"}"],
        2.0
    );
    assert_eq!(
        metrics["schedwatch_incidents_evicted_total{reason=\"expired\"}"],
        2.0
    );
    assert_clean_exit(service.terminate());
}
