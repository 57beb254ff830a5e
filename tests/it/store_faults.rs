//! The embedded store on a disk that fills: `run` with its state folder on a small tmpfs of its
//! own, filled by a file until every new page is refused (ENOSPC), then grown again. A failed
//! commit is not acked, readiness is 503 meanwhile, the store is reopened and the work resumes
//! by itself once there is room, and every incident fires once with the right count; a store
//! that cannot recover turns `/healthz` to 503, and a damaged file ends the process (exit 1).
//!
//! Mounting needs root, or `sudo` without a password; each tmpfs is unmounted when its test
//! ends, however it ends.

use std::collections::{BTreeMap, VecDeque};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use base64::Engine as _;
use serde_json::{json, Value};

use crate::common::emulator::{free_port, http, http_with, Emulator};
use crate::common::service::{assert_clean_exit, read_alerts, tail, Start, PROJECT};
use crate::common::{self};
use crate::endpoints::{eventually, scrape};

const TOPIC: &str = "scheduler-logs";
const SUB: &str = "schedwatch";

/// Jobs in each test: their alerts and incidents need about a megabyte, more than the free
/// pages a young store file has, so a full disk refuses some of their commits whatever redb
/// reuses.
const JOBS: usize = 200;

/// A tmpfs mounted for one test; unmounted when dropped (a panic too).
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (`mount`'s syntax: `2m`) on `dir`, owned by this user.
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let id = |flag: &str| {
            let out = Command::new("id").arg(flag).output().expect("id runs");
            String::from_utf8_lossy(&out.stdout).trim().to_owned()
        };
        let options = format!("size={size},uid={},gid={},mode=0700", id("-u"), id("-g"));
        privileged(&["mount", "-t", "tmpfs", "-o", &options, "tmpfs"], dir);
        Tmpfs {
            dir: dir.to_owned(),
        }
    }

    /// Gives it `size` in all: room again.
    fn resize(&self, size: &str) {
        privileged(&["mount", "-o", &format!("remount,size={size}")], &self.dir);
    }

    /// Fills every free page with a file; returns its path.
    fn fill(&self) -> PathBuf {
        let path = self.dir.join("filler");
        let mut f = std::fs::File::create(&path).unwrap();
        let chunk = vec![0xa5u8; 64 * 1024];
        loop {
            match f.write(&chunk) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(ENOSPC) => break,
                Err(e) => panic!("filling {}: {e}", path.display()),
            }
        }
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let unmounted = privileged_status(&["umount"], &self.dir);
        if !unmounted {
            // Still busy (a process that outlived its test): detached now, gone once it ends.
            privileged_status(&["umount", "-l"], &self.dir);
        }
    }
}

/// "No space left on device" (28 on Linux).
const ENOSPC: i32 = 28;

/// `args dir` as root: directly when we are root, else through `sudo -n`; panics when it fails.
fn privileged(args: &[&str], dir: &Path) {
    assert!(
        privileged_status(args, dir),
        "`{} {}` failed: these tests mount a tmpfs, which needs root or sudo without a password",
        args.join(" "),
        dir.display()
    );
}

fn privileged_status(args: &[&str], dir: &Path) -> bool {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    let mut cmd = if root {
        Command::new(args[0])
    } else {
        let mut c = Command::new("sudo");
        c.args(["-n", args[0]]);
        c
    };
    cmd.args(&args[1..])
        .arg(dir)
        .status()
        .is_ok_and(|s| s.success())
}

/// Attempt `n` of each of `jobs` jobs (a minute apart): a 401, or a success when `ok`.
fn attempts(jobs: usize, n: usize, ok: bool) -> Vec<Vec<u8>> {
    let t0 = chrono::DateTime::parse_from_rfc3339("2026-11-20T09:00:00Z").unwrap();
    (0..jobs)
        .map(|j| {
            let job = format!("export-{j:04}");
            let at = (t0 + chrono::Duration::minutes(n as i64) + chrono::Duration::milliseconds(j as i64))
                .format("%Y-%m-%dT%H:%M:%S%.6fZ")
                .to_string();
            let url = format!("https://us-east1-run.googleapis.com/apis/run.googleapis.com/v1/namespaces/acme-data-prod/jobs/{job}:run");
            let mut entry = json!({
                "insertId": format!("{job}-{n}"),
                "logName": "projects/acme-data-prod/logs/cloudscheduler.googleapis.com%2Fexecutions",
                "resource": {"type": "cloud_scheduler_job", "labels": {"job_id": job, "location": "us-east1", "project_id": "acme-data-prod"}},
                "timestamp": at,
                "receiveTimestamp": at,
                "severity": "ERROR",
                "jsonPayload": {
                    "@type": "type.googleapis.com/google.cloud.scheduler.logging.AttemptFinished",
                    "debugInfo": "URL_ERROR-ERROR_AUTHENTICATION. Original HTTP response code number = 401",
                    "jobName": format!("projects/acme-data-prod/locations/us-east1/jobs/{job}"),
                    "targetType": "HTTP",
                    "url": url,
                    "status": "UNAUTHENTICATED",
                },
                "httpRequest": {"status": 401},
            });
            if ok {
                entry["severity"] = json!("INFO");
                entry["jsonPayload"]["debugInfo"] =
                    json!("URL_CRAWLED. Original HTTP response code number = 200");
                entry["jsonPayload"].as_object_mut().unwrap().remove("status");
                entry["httpRequest"]["status"] = json!(200);
            }
            entry.to_string().into_bytes()
        })
        .collect()
}

/// GET `path` on the service: the status (0 when nothing answers) and the body.
fn get(address: &str, path: &str) -> (u16, String) {
    match http(address, "GET", path, None, Duration::from_secs(5)) {
        Ok(r) => (r.status, r.text()),
        Err(e) => (0, e.to_string()),
    }
}

/// The `[server]` and `[state]` tables (and `more`) in a config file.
fn config(dir: &Path, address: &str, unhealthy_after: &str, more: &str) -> PathBuf {
    common::write(
        dir,
        "config.toml",
        format!("[server]\nlisten = \"{address}\"\n\n[state]\nunhealthy_after = \"{unhealthy_after}\"\n{more}"),
    )
}

/// A metric's value now; NaN when the service does not answer (it is exiting).
fn metric(address: &str, name: &str) -> f64 {
    let (status, text) = get(address, "/metrics");
    if status != 200 {
        return f64::NAN;
    }
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(f64::NAN)
}

/// Per job: its alerts as `(event, incident_id, count)`, in print order.
fn per_job(alerts: &[Value]) -> BTreeMap<String, Vec<(String, String, u64)>> {
    let mut jobs: BTreeMap<String, Vec<(String, String, u64)>> = BTreeMap::new();
    for a in alerts {
        jobs.entry(a["job"]["id"].as_str().unwrap().to_owned())
            .or_default()
            .push((
                a["event"].as_str().unwrap().to_owned(),
                a["incident_id"].as_str().unwrap().to_owned(),
                a["failure"]["count"].as_u64().unwrap(),
            ));
    }
    jobs
}

/// What may be out while the store fails: firings counting the three failures, one a job.
fn assert_only_whole_firings(alerts: &[Value]) {
    for (job, events) in per_job(alerts) {
        assert!(
            events.len() == 1 && events[0].0 == "firing" && events[0].2 == 3,
            "{job}: {events:?}"
        );
    }
}

/// The end of every run: each job fired once counting its three failures, and that incident
/// resolved once (the success), counting the same three.
fn assert_each_job_fired_and_resolved_once(alerts: &[Value], stderr: &str) {
    let jobs = per_job(alerts);
    assert_eq!(jobs.len(), JOBS, "{}", tail(stderr));
    for (job, events) in jobs {
        let [(first, id, fired), (second, same, resolved)] = events.as_slice() else {
            panic!("{job}: {events:?}\n{}", tail(stderr));
        };
        assert_eq!(
            (first.as_str(), *fired, second.as_str(), *resolved),
            ("firing", 3, "resolved", 3),
            "{job}"
        );
        assert_eq!(id, same, "{job}");
    }
}

#[test]
fn a_full_disk_refuses_commits_unacked_and_once_it_grows_the_store_reopens_by_itself() {
    let emu = Emulator::start();
    emu.create_topic(PROJECT, TOPIC);
    // Unordered: the test waits for everything, in any order (each job fires at its third
    // failure, whichever comes third).
    emu.create_subscription(PROJECT, SUB, TOPIC, 10, false);
    let dir = tempfile::tempdir().unwrap();
    let fs = Tmpfs::mount(&dir.path().join("fs"), "2m");
    let address = format!("127.0.0.1:{}", free_port());
    let cfg = config(dir.path(), &address, "1h", "");
    let mut service = Start {
        emulator: Some(&emu),
        sub: SUB,
        jobs: None,
        state: &fs.dir.join("state"),
        config: Some(&cfg),
        dir: dir.path(),
        n: 0,
        args: &[],
    }
    .spawn();
    eventually(&mut service, "ready", Duration::from_secs(60), || {
        get(&address, "/readyz").0 == 200
    });

    // A first failure of every job, committed and acked while there is room.
    emu.publish_log_entries(PROJECT, TOPIC, &attempts(JOBS, 0, false));
    eventually(
        &mut service,
        "the first failures acked",
        Duration::from_secs(60),
        || metric(&address, "schedwatch_messages_acked_total") >= JOBS as f64,
    );

    // The disk fills; two more failures a job: the third fires, if it can be committed.
    fs.fill();
    let mut published = JOBS;
    for n in [1, 2] {
        published += emu
            .publish_log_entries(PROJECT, TOPIC, &attempts(JOBS, n, false))
            .len();
    }
    eventually(
        &mut service,
        "a refused commit and not ready",
        Duration::from_secs(120),
        || {
            metric(&address, "schedwatch_store_commit_failures_total") >= 1.0
                && get(&address, "/readyz").0 == 503
        },
    );
    let (_, why) = get(&address, "/readyz");
    assert!(why.contains("state store"), "{why}");
    // The batch that failed was handed back, not acked.
    assert!(metric(&address, "schedwatch_messages_nacked_total") >= 1.0);
    // The warning says what failed and that it goes on trying.
    service.wait_for_log("No space left on device", 1, Duration::from_secs(60));
    let log = service.stderr();
    assert!(
        log.contains("state store commit failed") && log.contains("retrying in"),
        "{}",
        tail(&log)
    );
    // Alive all along: it has not failed for `unhealthy_after` (an hour).
    assert_eq!(get(&address, "/healthz"), (200, "ok\n".to_owned()));
    assert_only_whole_firings(&service.alerts());

    // Room again (the tmpfs grows; the filler stays): no restart, it recovers by itself.
    fs.resize("64m");
    eventually(
        &mut service,
        "ready again after the disk grew",
        Duration::from_secs(120),
        || get(&address, "/readyz").0 == 200,
    );
    service.wait_for("every job's firing", Duration::from_secs(120), |a| {
        a.len() >= JOBS
    });
    assert!(metric(&address, "schedwatch_store_reopens_total") >= 1.0);
    // The incidents rebuilt from the disk go on: a success resolves each.
    published += emu
        .publish_log_entries(PROJECT, TOPIC, &attempts(JOBS, 3, true))
        .len();
    service.wait_for("every job's resolution", Duration::from_secs(120), |a| {
        a.len() >= 2 * JOBS
    });
    eventually(
        &mut service,
        "every message acked",
        Duration::from_secs(60),
        || metric(&address, "schedwatch_messages_acked_total") >= published as f64,
    );
    assert_eq!(get(&address, "/healthz").0, 200);
    let stderr = assert_clean_exit(service.terminate());
    assert!(stderr.contains("state store reopened"), "{}", tail(&stderr));
    assert_each_job_fired_and_resolved_once(
        &read_alerts(&dir.path().join("stdout.0.ndjson")),
        &stderr,
    );
    assert_eq!(emu.backlog(PROJECT, SUB), 0);
}

#[test]
fn a_store_failing_past_its_bound_turns_healthz_503_and_a_damaged_file_ends_the_process() {
    let emu = Emulator::start();
    emu.create_topic(PROJECT, TOPIC);
    emu.create_subscription(PROJECT, SUB, TOPIC, 10, false);
    let dir = tempfile::tempdir().unwrap();
    let fs = Tmpfs::mount(&dir.path().join("fs"), "2m");
    let address = format!("127.0.0.1:{}", free_port());
    let cfg = config(dir.path(), &address, "2s", "");
    let state = fs.dir.join("state");
    let mut service = Start {
        emulator: Some(&emu),
        sub: SUB,
        jobs: None,
        state: &state,
        config: Some(&cfg),
        dir: dir.path(),
        n: 0,
        args: &[],
    }
    .spawn();
    eventually(&mut service, "ready", Duration::from_secs(60), || {
        get(&address, "/readyz").0 == 200
    });
    emu.publish_log_entries(PROJECT, TOPIC, &attempts(JOBS, 0, false));
    eventually(
        &mut service,
        "the first failures acked",
        Duration::from_secs(60),
        || metric(&address, "schedwatch_messages_acked_total") >= JOBS as f64,
    );

    // Made now, while there is room: later it replaces the store without needing any.
    let garbage = common::write(&state, "garbage", b"not a redb file\n".repeat(4096));
    fs.fill();
    for n in [1, 2] {
        emu.publish_log_entries(PROJECT, TOPIC, &attempts(JOBS, n, false));
    }
    // Full for longer than `unhealthy_after`: not alive any more, with the reason.
    eventually(
        &mut service,
        "/healthz 503 after 2 s of failures",
        Duration::from_secs(120),
        || get(&address, "/healthz").0 == 503,
    );
    let (_, why) = get(&address, "/healthz");
    assert!(
        why.contains("state store has failed for") && why.contains("unhealthy_after"),
        "{why}"
    );
    assert_eq!(get(&address, "/readyz").0, 503);

    // The store file replaced by garbage: the next reopen finds it, and the process ends.
    let mut acked = metric(&address, "schedwatch_messages_acked_total");
    std::fs::rename(&garbage, state.join("schedwatch.redb")).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = service.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still running with a damaged store:\n{}",
            tail(&service.stderr())
        );
        let now = metric(&address, "schedwatch_messages_acked_total");
        if !now.is_nan() {
            acked = now;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let stderr = service.stderr();
    assert_eq!(status.code(), Some(1), "{}", tail(&stderr));
    assert!(
        stderr.contains("is unusable") && stderr.contains("move it aside"),
        "{}",
        tail(&stderr)
    );
    assert_only_whole_firings(&service.alerts());
    // Nothing that was not committed is lost: the platform restarts schedwatch, the damaged
    // file moved aside as the message says (its incidents are lost with it), and the messages
    // the dead process never acked come to the new one.
    let unacked = 3 * JOBS - acked as usize;
    assert!(unacked > 0, "every message acked with a full disk");
    std::fs::remove_file(state.join("schedwatch.redb")).unwrap();
    fs.resize("64m");
    let mut restarted = Start {
        emulator: Some(&emu),
        sub: SUB,
        jobs: None,
        state: &state,
        config: Some(&cfg),
        dir: dir.path(),
        n: 1,
        args: &[],
    }
    .spawn();
    eventually(
        &mut restarted,
        "the unacked messages delivered again",
        Duration::from_secs(120),
        || metric(&address, "schedwatch_messages_received_total") >= unacked as f64,
    );
    assert_clean_exit(restarted.terminate());
}

/// A push envelope around `entry`, as Pub/Sub sends it.
fn envelope(entry: &[u8], id: &str) -> Vec<u8> {
    let data = base64::engine::general_purpose::STANDARD.encode(entry);
    json!({
        "message": {"data": data, "messageId": id, "message_id": id},
        "subscription": format!("projects/{PROJECT}/subscriptions/schedwatch-push"),
    })
    .to_string()
    .into_bytes()
}

/// POSTs an envelope to the push endpoint: the status, 0 when nothing answers.
fn push(address: &str, body: &[u8]) -> u16 {
    http_with(
        address,
        "POST",
        "/pubsub/push",
        &[],
        Some(body),
        // Past the 30 s a push waits for its commit.
        Duration::from_secs(40),
    )
    .map_or(0, |r| r.status)
}

#[test]
fn pushes_while_the_disk_is_full_are_answered_503_and_committed_once_it_has_room() {
    let dir = tempfile::tempdir().unwrap();
    let fs = Tmpfs::mount(&dir.path().join("fs"), "2m");
    let address = format!("127.0.0.1:{}", free_port());
    let cfg = config(
        dir.path(),
        &address,
        "1h",
        "\n[source.push]\nallow_unauthenticated = true\n",
    );
    let mut service = Start {
        emulator: None,
        sub: "",
        jobs: None,
        state: &fs.dir.join("state"),
        config: Some(&cfg),
        dir: dir.path(),
        n: 0,
        args: &[],
    }
    .spawn();
    eventually(&mut service, "ready", Duration::from_secs(60), || {
        get(&address, "/readyz").0 == 200
    });
    let envelopes = |n: usize, ok: bool| -> Vec<Vec<u8>> {
        attempts(JOBS, n, ok)
            .iter()
            .enumerate()
            .map(|(j, e)| envelope(e, &format!("{n}-{j}")))
            .collect()
    };
    for body in envelopes(0, false) {
        assert_eq!(push(&address, &body), 204);
    }

    // Full: pushed one by one until one is refused (Pub/Sub would send it again later).
    fs.fill();
    let mut waiting: VecDeque<Vec<u8>> = [envelopes(1, false), envelopes(2, false)].concat().into();
    let refused = loop {
        let body = waiting
            .pop_front()
            .expect("a push refused while the disk is full");
        match push(&address, &body) {
            204 => continue,
            503 => break body,
            other => panic!("push answered {other}:\n{}", tail(&service.stderr())),
        }
    };
    waiting.push_front(refused);
    assert!(metric(&address, "schedwatch_store_commit_failures_total") >= 1.0);
    assert_eq!(
        scrape(&address).get("schedwatch_push_requests_total{outcome=\"nacked\"}"),
        Some(&1.0)
    );
    assert_eq!(get(&address, "/healthz").0, 200);
    assert_only_whole_firings(&service.alerts());

    // Room again: ready by itself (no push needed), then the refused push and the rest go in.
    fs.resize("64m");
    eventually(
        &mut service,
        "ready again after the disk grew",
        Duration::from_secs(120),
        || get(&address, "/readyz").0 == 200,
    );
    waiting.extend(envelopes(3, true));
    while let Some(body) = waiting.pop_front() {
        let status = push(&address, &body);
        assert_eq!(status, 204, "{}", tail(&service.stderr()));
    }
    service.wait_for("every job's alerts", Duration::from_secs(60), |a| {
        a.len() >= 2 * JOBS
    });
    let stderr = assert_clean_exit(service.terminate());
    assert_each_job_fired_and_resolved_once(
        &read_alerts(&dir.path().join("stdout.0.ndjson")),
        &stderr,
    );
}
