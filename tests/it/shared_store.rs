//! Several replicas on one subscription with the state in PostgreSQL (a real server started by
//! the tests, and the real Pub/Sub emulator): every incident fires exactly once with the right
//! failure count however the messages are spread, through a replica killed with SIGKILL and a
//! database restart mid-run.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::emulator::{free_port, http, Emulator, Publish};
use crate::common::http::{FakeServer, Response};
use crate::common::postgres::Postgres;
use crate::common::service::{read_alerts, tail, Service, Start, PROJECT};
use crate::common::{self};

const TOPIC: &str = "scheduler-logs";
const SUB: &str = "replicas";

/// `per_job` 401 failures of each of `jobs` jobs, a minute apart, round by round (so every
/// job's failures are spread over the whole run). No inventory: the cause is unconfirmed and
/// an incident fires at its third failure.
fn failures(jobs: usize, per_job: usize) -> Vec<Vec<u8>> {
    let mut lines = Vec::with_capacity(jobs * per_job);
    for round in 0..per_job {
        for n in 0..jobs {
            let job = format!("export-{n:04}");
            let ts = format!("2026-11-20T09:{round:02}:{:02}.{n:06}Z", n % 60);
            let url = format!("https://us-east1-run.googleapis.com/apis/run.googleapis.com/v1/namespaces/acme-data-prod/jobs/{job}:run");
            lines.push(format!(
                r#"{{"insertId":"r{round}j{n:06}","logName":"projects/acme-data-prod/logs/cloudscheduler.googleapis.com%2Fexecutions","resource":{{"type":"cloud_scheduler_job","labels":{{"job_id":"{job}","location":"us-east1","project_id":"acme-data-prod"}}}},"timestamp":"{ts}","receiveTimestamp":"{ts}","severity":"ERROR","jsonPayload":{{"@type":"type.googleapis.com/google.cloud.scheduler.logging.AttemptFinished","debugInfo":"URL_ERROR-ERROR_AUTHENTICATION. Original HTTP response code number = 401","jobName":"projects/acme-data-prod/locations/us-east1/jobs/{job}","targetType":"HTTP","url":"{url}","status":"UNAUTHENTICATED"}},"httpRequest":{{"status":401}}}}"#
            ).into_bytes());
        }
    }
    lines
}

fn replica(emu: &Emulator, dir: &Path, config: &Path, n: usize, args: &[&str]) -> Service {
    Start {
        emulator: Some(emu),
        sub: SUB,
        jobs: None,
        state: &dir.join("unused-state"),
        config: Some(config),
        dir,
        n,
        args,
    }
    .spawn()
}

/// Every alert the replicas printed, by start number.
fn printed(dir: &Path, starts: usize) -> Vec<Value> {
    (0..starts)
        .flat_map(|n| read_alerts(&dir.join(format!("stdout.{n}.ndjson"))))
        .collect()
}

#[test]
fn three_replicas_fire_every_incident_once_through_a_kill_9_and_a_database_restart() {
    const JOBS: usize = 300;
    const PER_JOB: usize = 6;
    let mut pg = Postgres::start();
    let emu = Emulator::start();
    emu.create_topic(PROJECT, TOPIC);
    emu.create_subscription(PROJECT, SUB, TOPIC, 10, false);
    let hook = FakeServer::start(|_| Response::new(204));
    let dir = tempfile::tempdir().unwrap();
    let url = common::write(dir.path(), "pg-url", pg.url());
    let hook_url = common::write(dir.path(), "hook-url", format!("{}/hook", hook.url()));
    let config = common::write(
        dir.path(),
        "config.toml",
        format!(
            "[state.postgres]\nurl = {{ file = \"{}\" }}\npool_size = 4\noutbox_lease = \"10s\"\n\n[[receivers]]\nname = \"hook\"\nwebhook = {{ url = {{ file = \"{}\" }} }}\n",
            url.display(),
            hook_url.display()
        ),
    );

    let messages: Vec<Publish> = failures(JOBS, PER_JOB)
        .into_iter()
        .map(Publish::new)
        .collect();
    let total = messages.len();
    // Replica 1 serves /readyz.
    let address = format!("127.0.0.1:{}", free_port());
    let mut replicas: Vec<Option<Service>> = (0..3)
        .map(|n| {
            let args: &[&str] = if n == 1 { &["--listen", &address] } else { &[] };
            Some(replica(&emu, dir.path(), &config, n, args))
        })
        .collect();
    // Published while the replicas run, in four parts: the chaos lands mid-stream.
    let parts: Vec<&[Publish]> = messages.chunks(total.div_ceil(4)).collect();
    emu.publish(PROJECT, TOPIC, parts[0]);
    emu.publish(PROJECT, TOPIC, parts[1]);
    let wait = |what: &str,
                timeout: Duration,
                done: &dyn Fn() -> bool,
                replicas: &mut Vec<Option<Service>>| {
        let end = Instant::now() + timeout;
        while !done() {
            for r in replicas.iter_mut().flatten() {
                if let Some(status) = r.child.try_wait().unwrap() {
                    panic!(
                        "a replica exited ({status}) before {what}:\n{}",
                        tail(&r.stderr())
                    );
                }
            }
            if Instant::now() > end {
                let logs: Vec<String> = replicas
                    .iter()
                    .flatten()
                    .map(|r| tail(&r.stderr()))
                    .collect();
                panic!("not {what} within {timeout:?}\n{}", logs.join("\n----\n"));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    wait(
        "some incidents fired",
        Duration::from_secs(120),
        &|| printed(dir.path(), 3).len() >= 20,
        &mut replicas,
    );
    // SIGKILL one replica mid-run; a new one takes its place.
    replicas[0].take().unwrap().kill9();
    replicas.push(Some(replica(&emu, dir.path(), &config, 3, &[])));
    emu.publish(PROJECT, TOPIC, parts[2]);
    // The database goes away for a few seconds, mid-run, and comes back: the replicas say they
    // are not ready meanwhile, and are ready again by themselves.
    let ready =
        || http(&address, "GET", "/readyz", None, Duration::from_secs(2)).map_or(0, |r| r.status);
    assert_eq!(ready(), 200, "ready before the outage");
    pg.stop();
    let end = Instant::now() + Duration::from_secs(20);
    while ready() != 503 {
        assert!(
            Instant::now() < end,
            "/readyz still {} with the database down:\n{}",
            ready(),
            tail(&replicas[1].as_ref().unwrap().stderr())
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(2));
    pg.restart();
    let end = Instant::now() + Duration::from_secs(60);
    while ready() != 200 {
        assert!(
            Instant::now() < end,
            "/readyz not 200 again after the database came back"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    emu.publish(PROJECT, TOPIC, parts[3]);

    // Done: every job's incident holds all its failures, and the outbox is delivered.
    let counted = || {
        pg.try_sql("SELECT count(*) FROM jobs WHERE (incident->>'count')::int = 6")
            .is_some_and(|n| n == JOBS.to_string())
    };
    wait(
        "every failure counted",
        Duration::from_secs(300),
        &counted,
        &mut replicas,
    );
    let delivered = || {
        pg.try_sql("SELECT count(*) FROM outbox WHERE done_at IS NULL")
            .is_some_and(|n| n == "0")
    };
    wait(
        "every alert delivered",
        Duration::from_secs(120),
        &delivered,
        &mut replicas,
    );

    let stderr: Vec<String> = replicas
        .into_iter()
        .flatten()
        .map(|r| {
            let (status, err) = r.terminate();
            assert!(status.success(), "exit {status}:\n{}", tail(&err));
            err
        })
        .collect();

    // Exactly one incident, and one firing alert, per job, at the third failure.
    let outbox = pg.sql("SELECT alert->>'incident_id', alert->>'event', alert->'failure'->>'count', alert->'job'->>'id' FROM outbox ORDER BY id");
    let mut incidents: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in outbox.lines() {
        let f: Vec<&str> = line.split('|').collect();
        assert_eq!(f[1], "firing", "{line}");
        assert_eq!(f[2], "3", "fired at the third failure: {line}");
        incidents
            .entry(f[3].to_owned())
            .or_default()
            .insert(f[0].to_owned());
    }
    assert_eq!(incidents.len(), JOBS, "every job fired");
    assert!(
        incidents.values().all(|ids| ids.len() == 1),
        "one incident per job: {:?}",
        incidents
            .iter()
            .filter(|(_, ids)| ids.len() > 1)
            .collect::<Vec<_>>()
    );
    assert_eq!(outbox.lines().count(), JOBS, "one outbox row per incident");
    // Every alert reached the receiver; more than once only when a replica died (or the
    // database went away) between delivering it and recording it.
    let mut sent: BTreeMap<String, usize> = BTreeMap::new();
    for r in hook.requests() {
        *sent
            .entry(r.json()["incident_id"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    let ids: BTreeSet<String> = incidents.values().flatten().cloned().collect();
    assert_eq!(sent.keys().cloned().collect::<BTreeSet<_>>(), ids);
    let duplicates: Vec<&String> = sent
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(id, _)| id)
        .collect();
    // The crash window: rows the killed replica held, claimed by another after their lease ran
    // out. A duplicate outside it (a row no one had to take over) would be a bug.
    let taken_over: BTreeSet<String> = pg
        .sql("SELECT alert->>'incident_id' FROM outbox WHERE attempts > 1")
        .lines()
        .map(str::to_owned)
        .collect();
    eprintln!(
        "deliveries: {} alerts, {} delivered twice, {} taken over from the killed replica",
        ids.len(),
        duplicates.len(),
        taken_over.len()
    );
    assert!(
        duplicates.iter().all(|id| taken_over.contains(*id)),
        "delivered twice outside the crash window: {:?}",
        duplicates
            .iter()
            .filter(|id| !taken_over.contains(**id))
            .collect::<Vec<_>>()
    );
    // Every message was read; redeliveries (the crash, the outage) are counted as duplicates.
    let read: usize = stderr
        .iter()
        .filter_map(|e| {
            e.lines()
                .rev()
                .find_map(|l| {
                    l.split(" entries read")
                        .next()
                        .filter(|_| l.contains(" entries read"))
                })
                .and_then(|p| p.rsplit(' ').next())
                .and_then(|n| n.parse::<usize>().ok())
        })
        .sum();
    // At least the half published after the kill went to the survivors: nothing got stuck.
    assert!(
        read >= total / 2,
        "the surviving replicas read {read} of {total}"
    );
}
