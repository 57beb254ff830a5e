//! The chaos suite of the state stores, on the real Pub/Sub emulator: hundreds of jobs'
//! failures spread over the whole run, a replica killed with SIGKILL mid-run and the store
//! restarted mid-run, then every job's success. Every incident fires exactly once at its third
//! failure and resolves holding all its failures, every alert is delivered, and an alert is
//! delivered twice only in the crash window. Two set-ups: three replicas sharing PostgreSQL (a
//! real server started by the tests), and one replica on the embedded store.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::emulator::{free_port, http, Emulator, Publish};
use crate::common::http::{FakeServer, Request, Response};
use crate::common::postgres::Postgres;
use crate::common::service::{assert_clean_exit, tail, Service, Start, PROJECT};
use crate::common::{self};
use crate::endpoints::scrape;

const TOPIC: &str = "scheduler-logs";
const SUB: &str = "replicas";
const JOBS: usize = 300;
const PER_JOB: usize = 6;

/// One execution log entry of job `n`: a 401 in round `round` (a minute apart, round by round,
/// so every job's failures are spread over the whole run), or the job's success after them all.
fn entry(n: usize, round: usize, success: bool) -> Vec<u8> {
    let job = format!("export-{n:04}");
    let ts = format!("2026-11-20T09:{round:02}:{:02}.{n:06}Z", n % 60);
    let url = format!("https://us-east1-run.googleapis.com/apis/run.googleapis.com/v1/namespaces/acme-data-prod/jobs/{job}:run");
    let (severity, outcome) = if success {
        (
            "INFO",
            r#""targetType":"HTTP"},"httpRequest":{"status":200}"#.to_owned(),
        )
    } else {
        (
            "ERROR",
            r#""targetType":"HTTP","debugInfo":"URL_ERROR-ERROR_AUTHENTICATION. Original HTTP response code number = 401","status":"UNAUTHENTICATED"},"httpRequest":{"status":401}"#.to_owned(),
        )
    };
    format!(
        r#"{{"insertId":"r{round}j{n:06}","logName":"projects/acme-data-prod/logs/cloudscheduler.googleapis.com%2Fexecutions","resource":{{"type":"cloud_scheduler_job","labels":{{"job_id":"{job}","location":"us-east1","project_id":"acme-data-prod"}}}},"timestamp":"{ts}","receiveTimestamp":"{ts}","severity":"{severity}","jsonPayload":{{"@type":"type.googleapis.com/google.cloud.scheduler.logging.AttemptFinished","jobName":"projects/acme-data-prod/locations/us-east1/jobs/{job}","url":"{url}",{outcome}}}"#
    )
    .into_bytes()
}

/// `PER_JOB` failures of each job, round by round. No inventory: the cause is unconfirmed and
/// an incident fires at its third failure.
fn failures() -> Vec<Publish> {
    (0..PER_JOB)
        .flat_map(|round| (0..JOBS).map(move |n| Publish::new(entry(n, round, false))))
        .collect()
}

/// Each job's success, later than all its failures: every incident resolves.
fn successes() -> Vec<Publish> {
    (0..JOBS)
        .map(|n| Publish::new(entry(n, 30, true)))
        .collect()
}

/// The replicas of one run, their config, and the receiver they deliver to.
struct Run {
    emu: Emulator,
    hook: FakeServer,
    dir: tempfile::TempDir,
    config: std::path::PathBuf,
    /// Every start, in order; `None` once stopped or killed.
    replicas: Vec<Option<Service>>,
}

impl Run {
    /// The emulator, the subscription, the receiver and the config: the state in `postgres`
    /// when given, else in an embedded store (one folder, kept across restarts).
    fn start(postgres: Option<&Postgres>) -> Run {
        let emu = Emulator::start();
        emu.create_topic(PROJECT, TOPIC);
        emu.create_subscription(PROJECT, SUB, TOPIC, 10, false);
        let hook = FakeServer::start(|_| Response::new(204));
        let dir = tempfile::tempdir().unwrap();
        let hook_url = common::write(dir.path(), "hook-url", format!("{}/hook", hook.url()));
        let state = match postgres {
            Some(pg) => {
                let url = common::write(dir.path(), "pg-url", pg.url());
                format!(
                    "[state.postgres]\nurl = {{ file = \"{}\" }}\npool_size = 4\noutbox_lease = \"10s\"\n\n",
                    url.display()
                )
            }
            None => String::new(),
        };
        let config = common::write(
            dir.path(),
            "config.toml",
            format!(
                "{state}[source]\nlease_extension = \"10s\"\n\n[[receivers]]\nname = \"hook\"\nwebhook = {{ url = {{ file = \"{}\" }} }}\n",
                hook_url.display()
            ),
        );
        Run {
            emu,
            hook,
            dir,
            config,
            replicas: Vec::new(),
        }
    }

    /// Starts one more replica (numbered in start order), with `args` for `run`.
    fn spawn(&mut self, args: &[&str]) {
        let service = Start {
            emulator: Some(&self.emu),
            sub: SUB,
            jobs: None,
            state: &self.dir.path().join("state"),
            config: Some(&self.config),
            dir: self.dir.path(),
            n: self.replicas.len(),
            args,
        }
        .spawn();
        self.replicas.push(Some(service));
    }

    fn kill9(&mut self, n: usize) {
        self.replicas[n].take().expect("running").kill9();
    }

    /// Publishes the first two of the four parts and waits until some incidents fired.
    fn first_half(&mut self, parts: &[&[Publish]]) {
        self.publish(parts[0]);
        self.publish(parts[1]);
        self.wait("some incidents fired", Duration::from_secs(120), &|r| {
            r.delivered().len() >= 20
        });
    }

    fn publish(&self, messages: &[Publish]) {
        self.emu.publish(PROJECT, TOPIC, messages);
    }

    /// Waits until `done` holds; panics with the replicas' logs when one exits or `timeout`
    /// passes.
    fn wait(&mut self, what: &str, timeout: Duration, done: &dyn Fn(&Run) -> bool) {
        let end = Instant::now() + timeout;
        while !done(self) {
            for r in self.replicas.iter_mut().flatten() {
                if let Some(status) = r.child.try_wait().unwrap() {
                    panic!(
                        "a replica exited ({status}) before {what}:\n{}",
                        tail(&r.stderr())
                    );
                }
            }
            if Instant::now() > end {
                panic!("not {what} within {timeout:?}\n{}", self.logs());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The running replicas' recent logs.
    fn logs(&self) -> String {
        let logs: Vec<String> = self
            .replicas
            .iter()
            .flatten()
            .map(|r| tail(&r.stderr()))
            .collect();
        logs.join("\n----\n")
    }

    /// The alerts the receiver got, in arrival order.
    fn delivered(&self) -> Vec<Value> {
        self.hook.requests().iter().map(Request::json).collect()
    }

    /// How many jobs have an alert of `event` delivered.
    fn jobs_with(&self, event: &str) -> usize {
        self.delivered()
            .iter()
            .filter(|a| a["event"] == event)
            .map(|a| a["job"]["id"].as_str().unwrap().to_owned())
            .collect::<BTreeSet<_>>()
            .len()
    }

    /// SIGTERM to every replica still running: each exits 0 with its run summary, returned.
    fn stop_all(&mut self) -> Vec<String> {
        self.replicas
            .iter_mut()
            .filter_map(Option::take)
            .map(|r| assert_clean_exit(r.terminate()))
            .collect()
    }
}

/// A number from the `state loaded` line of a replica on the embedded store (`outbox`,
/// `dedup_keys`, `open_incidents`); it is logged before the replica serves `/readyz`.
fn loaded(replica: &Option<Service>, field: &str) -> usize {
    let log = replica.as_ref().expect("running").stderr();
    log.lines()
        .filter(|l| l.contains("state loaded"))
        .find_map(|l| l.split(&format!("{field}=")).nth(1))
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in the state loaded line:\n{}", tail(&log)))
}

/// `GET /readyz` on `address`: its status, 0 when nothing answers.
fn ready(address: &str) -> u16 {
    http(address, "GET", "/readyz", None, Duration::from_secs(2)).map_or(0, |r| r.status)
}

/// Waits until `/readyz` on `address` answers `want`.
fn wait_ready(run: &Run, address: &str, want: u16, timeout: Duration) {
    let end = Instant::now() + timeout;
    while ready(address) != want {
        assert!(
            Instant::now() < end,
            "/readyz is {} instead of {want} after {timeout:?}:\n{}",
            ready(address),
            run.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// (incident_id, event) → how many times the receiver got it.
fn deliveries(alerts: &[Value]) -> BTreeMap<(String, String), usize> {
    let mut n = BTreeMap::new();
    for a in alerts {
        let key = (
            a["incident_id"].as_str().unwrap().to_owned(),
            a["event"].as_str().unwrap().to_owned(),
        );
        *n.entry(key).or_default() += 1;
    }
    n
}

/// What every run shows at its end: one incident per job, fired at its third failure and
/// resolved holding all of them; each incident's firing and resolved alerts delivered. Returns
/// the (incident, event) pairs delivered more than once.
fn assert_every_incident_once(alerts: &[Value]) -> BTreeSet<(String, String)> {
    let mut by_job: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut wrong = Vec::new();
    for a in alerts {
        let want = match a["event"].as_str().unwrap() {
            "firing" => 3,
            "resolved" => PER_JOB,
            _ => panic!("no other event: {a}"),
        };
        if a["failure"]["count"] != want {
            wrong.push(format!(
                "{} {} at {} failures (not {want}), first {} last {}",
                a["job"]["id"],
                a["event"],
                a["failure"]["count"],
                a["failure"]["first_at"],
                a["failure"]["last_at"]
            ));
        }
        by_job
            .entry(a["job"]["id"].as_str().unwrap().to_owned())
            .or_default()
            .insert(a["incident_id"].as_str().unwrap().to_owned());
    }
    assert!(
        wrong.is_empty(),
        "{} alerts hold the wrong failure count (firing at the third, resolved at all {PER_JOB}):\n{}",
        wrong.len(),
        wrong.join("\n")
    );
    assert_eq!(by_job.len(), JOBS, "every job alerted");
    let split: Vec<_> = by_job.iter().filter(|(_, ids)| ids.len() > 1).collect();
    assert!(split.is_empty(), "one incident per job: {split:?}");
    let sent = deliveries(alerts);
    assert_eq!(sent.len(), 2 * JOBS, "a firing and a resolved per incident");
    let twice: BTreeSet<(String, String)> = sent
        .into_iter()
        .filter(|(_, n)| *n > 1)
        .map(|(k, _)| k)
        .collect();
    eprintln!(
        "deliveries: {} alerts, {} delivered more than once",
        2 * JOBS,
        twice.len()
    );
    twice
}

/// The entries the replicas read, from their run summaries.
fn entries_read(stderr: &[String]) -> usize {
    stderr
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
        .sum()
}

#[test]
fn three_replicas_on_postgresql_fire_every_incident_once_through_a_kill_9_and_a_database_restart() {
    let mut pg = Postgres::start();
    let mut run = Run::start(Some(&pg));
    let failures = failures();
    // Published while the replicas run, in four parts: the chaos lands mid-stream.
    let parts: Vec<&[Publish]> = failures.chunks(failures.len().div_ceil(4)).collect();
    // Replica 1 serves /readyz.
    let address = format!("127.0.0.1:{}", free_port());
    run.spawn(&[]);
    run.spawn(&["--listen", &address]);
    run.spawn(&[]);
    run.first_half(&parts);
    // SIGKILL one replica mid-run; a new one takes its place.
    run.kill9(0);
    run.spawn(&[]);
    run.publish(parts[2]);
    // The database goes away for a few seconds, mid-run, and comes back: the replicas say they
    // are not ready meanwhile, and are ready again by themselves.
    assert_eq!(ready(&address), 200, "ready before the outage");
    pg.stop();
    wait_ready(&run, &address, 503, Duration::from_secs(20));
    std::thread::sleep(Duration::from_secs(2));
    pg.restart();
    wait_ready(&run, &address, 200, Duration::from_secs(60));
    run.publish(parts[3]);

    // Every job's incident holds all its failures; then each job succeeds.
    let counted = |_: &Run| {
        pg.try_sql(&format!(
            "SELECT count(*) FROM jobs WHERE (incident->>'count')::int = {PER_JOB}"
        ))
        .is_some_and(|n| n == JOBS.to_string())
    };
    run.wait("every failure counted", Duration::from_secs(300), &counted);
    run.publish(&successes());
    run.wait("every incident resolved", Duration::from_secs(300), &|r| {
        r.jobs_with("resolved") == JOBS
    });
    let delivered = |_: &Run| {
        pg.try_sql("SELECT count(*) FROM outbox WHERE done_at IS NULL")
            .is_some_and(|n| n == "0")
    };
    run.wait(
        "every alert delivered",
        Duration::from_secs(120),
        &delivered,
    );
    let stderr = run.stop_all();

    let twice = assert_every_incident_once(&run.delivered());
    assert_eq!(
        pg.sql("SELECT count(*) FROM outbox"),
        (2 * JOBS).to_string(),
        "one outbox row per alert"
    );
    assert_eq!(
        pg.sql("SELECT count(*) FROM jobs WHERE incident IS NOT NULL"),
        "0",
        "no incident left open"
    );
    // The crash window: rows the killed replica held, claimed by another after their lease ran
    // out. A duplicate outside it (a row no one had to take over) would be a bug.
    let taken_over: BTreeSet<(String, String)> = pg
        .sql("SELECT alert->>'incident_id', alert->>'event' FROM outbox WHERE takeovers > 0")
        .lines()
        .map(|l| {
            let (id, event) = l.split_once('|').unwrap();
            (id.to_owned(), event.to_owned())
        })
        .collect();
    eprintln!(
        "{} alerts taken over from the killed replica",
        taken_over.len()
    );
    let outside: Vec<_> = twice.difference(&taken_over).collect();
    assert!(
        outside.is_empty(),
        "delivered twice outside the crash window: {outside:?}"
    );
    // At least the half published after the kill went to the survivors: nothing got stuck.
    let read = entries_read(&stderr);
    let total = failures.len() + JOBS;
    assert!(
        read >= total / 2,
        "the surviving replicas read {read} of {total}"
    );
}

#[test]
fn one_replica_on_the_embedded_store_fires_every_incident_once_through_a_kill_9_and_a_restart() {
    let mut run = Run::start(None);
    let failures = failures();
    let parts: Vec<&[Publish]> = failures.chunks(failures.len().div_ceil(4)).collect();
    run.spawn(&[]);
    run.first_half(&parts);
    // SIGKILL mid-run; a new process carries on from the same state folder. What the killed
    // one delivered before it recorded so may be delivered again: that is the crash window.
    run.kill9(0);
    let crash_window: BTreeSet<(String, String)> =
        deliveries(&run.delivered()).into_keys().collect();
    let address = format!("127.0.0.1:{}", free_port());
    run.spawn(&["--listen", &address]);
    run.publish(parts[2]);
    wait_ready(&run, &address, 200, Duration::from_secs(30));
    // The new process sends again what the store did not record as delivered: at most those
    // alerts are delivered twice.
    let resent = loaded(&run.replicas[1], "outbox");
    // The store restarts mid-run: it lives in the process, so the process stops (SIGTERM, a
    // clean exit) and a new one opens the store again.
    run.wait("more entries committed", Duration::from_secs(120), &|_| {
        scrape(&address)["schedwatch_messages_acked_total"] >= 100.0
    });
    let mut stderr = vec![assert_clean_exit(
        run.replicas[1].take().expect("running").terminate(),
    )];
    let address = format!("127.0.0.1:{}", free_port());
    run.spawn(&["--listen", &address]);
    wait_ready(&run, &address, 200, Duration::from_secs(30));
    run.publish(parts[3]);

    // Every failure committed once: the entries the store held when this process opened it
    // (one dedup key each), and those it committed since that were not duplicates.
    let held = loaded(&run.replicas[2], "dedup_keys") as f64;
    run.wait("every failure counted", Duration::from_secs(300), &|_| {
        let m = scrape(&address);
        held + m["schedwatch_messages_acked_total"] - m["schedwatch_messages_duplicate_total"]
            >= failures.len() as f64
    });
    run.publish(&successes());
    run.wait("every incident resolved", Duration::from_secs(300), &|r| {
        r.jobs_with("resolved") == JOBS
    });
    let m = scrape(&address);
    stderr.extend(run.stop_all());

    let twice = assert_every_incident_once(&run.delivered());
    let outside: Vec<_> = twice.difference(&crash_window).collect();
    assert!(
        outside.is_empty(),
        "delivered twice outside the crash window (the kill): {outside:?}"
    );
    assert!(
        twice.len() <= resent,
        "{} alerts delivered twice, more than the {resent} the restart sent again",
        twice.len()
    );
    assert_eq!(m["schedwatch_store_commit_failures_total"], 0.0);
    // The store agrees: nothing open, nothing left to deliver.
    run.spawn(&[]);
    let n = run.replicas.len() - 1;
    run.replicas[n]
        .as_mut()
        .unwrap()
        .wait_for_log("state loaded", 1, Duration::from_secs(30));
    assert_eq!(loaded(&run.replicas[n], "open_incidents"), 0);
    assert_eq!(loaded(&run.replicas[n], "outbox"), 0);
    assert_eq!(
        loaded(&run.replicas[n], "dedup_keys"),
        failures.len() + JOBS
    );
    run.stop_all();
    let read = entries_read(&stderr);
    let total = failures.len() + JOBS;
    assert!(
        read >= total / 2,
        "the restarted process read {read} of {total}"
    );
}
