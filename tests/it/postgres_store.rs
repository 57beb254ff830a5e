//! The shared store's own rules, end to end, each against a fresh real PostgreSQL with
//! `schedwatch run` in push mode (the store's code path is pull mode's) and receivers on
//! loopback: what the outbox row says about its tries, how a dead replica's alert is taken
//! over and a live one's is not, dedup keys expiring, schema migrations with replicas starting
//! together, and a password from a file. The chaos suite (shared_store.rs) runs them all at
//! once, under load; these pin each down.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use crate::common::emulator::free_port;
use crate::common::http::{FakeServer, Response};
use crate::common::postgres::Postgres;
use crate::common::service::{assert_clean_exit, tail, Service};
use crate::common::{self};
use crate::deploy_docs::{blocks, read};
use crate::endpoints::eventually;
use crate::postgres_tls::{
    connect_failure, failure, push, push_config, ready, start_numbered, CANNOT_REACH,
};

/// The job of [`failure`]'s entries, as the `jobs` table names it.
const JOB: &str = "projects/acme-data-prod/locations/europe-west1/jobs/nightly-etl-trigger";

/// A `[[receivers]]` webhook named `name` posting to `server` (its URL in a file: a secret).
fn webhook(dir: &Path, name: &str, server: &FakeServer) -> String {
    let url = common::write(dir, &format!("{name}-url"), server.url());
    format!(
        "[[receivers]]\nname = \"{name}\"\n[receivers.webhook]\nurl = {{ file = \"{}\" }}\n\n",
        url.display()
    )
}

/// One replica: its folder (config, output files), its push address, the process.
struct Replica {
    address: String,
    service: Service,
}

impl Replica {
    /// Starts replica `n` in `dir/n` against `url`, with `postgres` and `rest` config lines
    /// (see [`push_config`]); does not wait for it.
    fn spawn(dir: &Path, n: usize, url: &str, postgres: &str, rest: &str) -> Replica {
        let dir = folder(dir, n);
        let address = format!("127.0.0.1:{}", free_port());
        let config = push_config(&dir, &address, url, postgres, rest);
        Replica {
            address,
            service: start_numbered(&dir, &config, n),
        }
    }

    /// [`Replica::spawn`], then waits until it is ready.
    fn start(dir: &Path, n: usize, url: &str, postgres: &str, rest: &str) -> Replica {
        let mut replica = Replica::spawn(dir, n, url, postgres, rest);
        replica.wait_ready();
        replica
    }

    fn wait_ready(&mut self) {
        let address = self.address.clone();
        eventually(
            &mut self.service,
            "ready on PostgreSQL",
            Duration::from_secs(30),
            || ready(&address) == 200,
        );
    }

    /// Pushes [`failure`] `n`, which must be answered 204 (committed).
    fn push_failure(&self, n: usize) {
        let (status, text) = push(&self.address, &failure(n));
        assert_eq!(status, 204, "push {n}: {text}");
    }
}

fn folder(dir: &Path, n: usize) -> PathBuf {
    let dir = dir.join(n.to_string());
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// SIGTERM to a replica that never got its store: a clean exit all the same. Its stderr.
fn stop_refused(service: Service) -> String {
    let (status, stderr) = service.terminate();
    assert!(
        status.success(),
        "exit {status} after SIGTERM while connecting:\n{}",
        tail(&stderr)
    );
    stderr
}

/// The outbox's one row, as `columns` (psql's `|`-separated text).
fn the_row(pg: &Postgres, columns: &str) -> String {
    let rows = pg.sql(&format!("SELECT {columns} FROM outbox"));
    assert_eq!(rows.lines().count(), 1, "one alert in the outbox: {rows}");
    rows
}

#[test]
fn the_outbox_row_counts_every_try_and_keeps_the_last_error_while_a_receiver_is_down() {
    let pg = Postgres::start();
    let dir = tempfile::tempdir().unwrap();
    // "flaky" is down for two tries (503: retried after 1 s, then 2 s); "broken" refuses for
    // good (400: never retried).
    let flaky_calls = Arc::new(AtomicUsize::new(0));
    let flaky = FakeServer::start({
        let calls = flaky_calls.clone();
        move |_| match calls.fetch_add(1, SeqCst) {
            0 | 1 => Response::text(503, "upstream down"),
            _ => Response::new(200),
        }
    });
    let broken = FakeServer::start(|_| Response::text(400, "no such channel"));
    let receivers = webhook(dir.path(), "flaky", &flaky) + &webhook(dir.path(), "broken", &broken);
    let mut replica = Replica::start(dir.path(), 0, &pg.url(), "", &receivers);
    for n in 0..3 {
        replica.push_failure(n);
    }
    let service = &mut replica.service;
    service.wait_for("the firing alert", Duration::from_secs(30), |a| {
        !a.is_empty()
    });

    // While "flaky" is down the row is not done, and says why. (Once done, "broken"'s refusal
    // for good is its last error.)
    let row = || the_row(&pg, "attempts, last_error, done_at IS NULL");
    eventually(
        service,
        "a failed try recorded on the row",
        Duration::from_secs(30),
        || row().contains("|flaky: "),
    );
    let seen = row();
    let fields: Vec<&str> = seen.splitn(2, '|').collect();
    let attempts: u32 = fields[0].parse().unwrap();
    assert!(
        (1..=2).contains(&attempts),
        "one or two failed tries counted while flaky is down: {seen}"
    );
    assert!(
        fields[1].starts_with("flaky: ")
            && fields[1].contains("HTTP 503")
            && fields[1].contains("upstream down"),
        "the last error names the receiver, the status and the answer: {seen}"
    );
    assert!(seen.ends_with("|t"), "not done while flaky is down: {seen}");
    // The guide's query for what waits in the outbox, and why, shows it.
    let query = blocks(&read("docs/deploy.md"), "sql");
    assert_eq!(query.len(), 1, "one SQL block in the deploy guide");
    let waiting = pg.sql(&query[0]);
    assert!(
        waiting.contains(&format!("|firing|{JOB}|")) && waiting.contains("|flaky: "),
        "the guide's query lists the waiting alert and its last error: {waiting}"
    );

    // Delivered at flaky's third try: done, every try counted — three at flaky, one at
    // broken, one at the test's stdout receiver — and broken's refusal kept.
    eventually(service, "the row done", Duration::from_secs(30), || {
        the_row(&pg, "done_at IS NOT NULL") == "t"
    });
    assert_eq!(flaky_calls.load(SeqCst), 3, "flaky tried three times");
    assert_eq!(
        broken.requests().len(),
        1,
        "a refusal for good is not retried"
    );
    let done = the_row(
        &pg,
        "attempts, last_error, failed->0->>'receiver', lease_owner IS NULL",
    );
    let fields: Vec<&str> = done.split('|').collect();
    assert_eq!(fields[0], "5", "every try counted: {done}");
    assert!(
        fields[1].starts_with("broken: ") && fields[1].contains("HTTP 400"),
        "the refusal for good is the last error: {done}"
    );
    assert_eq!(
        &fields[2..],
        ["broken", "t"],
        "failed at broken, no lease left: {done}"
    );
    assert_clean_exit(replica.service.terminate());
}

#[test]
fn a_dead_replicas_alert_is_taken_over_after_its_lease_and_a_live_ones_is_not() {
    let pg = Postgres::start();
    let dir = tempfile::tempdir().unwrap();
    // The receiver is down until `up`: the first replica keeps retrying, holding the lease.
    let up = Arc::new(AtomicBool::new(false));
    let hook = FakeServer::start({
        let up = up.clone();
        move |_| {
            if up.load(SeqCst) {
                Response::new(200)
            } else {
                Response::text(503, "maintenance")
            }
        }
    });
    let receivers = webhook(dir.path(), "hook", &hook);
    // A 6 s lease (the shortest allowed is 5 s), renewed every 2 s by the replica delivering it.
    let lease = "outbox_lease = \"6s\"";
    let first = Replica::start(dir.path(), 0, &pg.url(), lease, &receivers);
    for n in 0..3 {
        first.push_failure(n);
    }
    let mut second = Replica::start(dir.path(), 1, &pg.url(), lease, &receivers);
    hook.wait_for(Duration::from_secs(30), |r| r.len() >= 2);

    // Two leases long, the second replica leaves the row alone: the first renews its lease.
    std::thread::sleep(Duration::from_secs(12));
    let row = the_row(&pg, "takeovers, done_at IS NULL");
    assert_eq!(row, "0|t", "a live replica's alert is not taken over");
    assert!(
        !second
            .service
            .stderr()
            .contains("claimed undelivered alerts"),
        "the second replica claimed nothing:\n{}",
        tail(&second.service.stderr())
    );

    // The first replica dies holding it; the receiver comes back. The second replica takes
    // the row over once the lease has run out, and delivers it.
    first.service.kill9();
    let killed_at = hook.requests().len();
    up.store(true, SeqCst);
    eventually(
        &mut second.service,
        "the row delivered by the second replica",
        Duration::from_secs(30),
        || the_row(&pg, "done_at IS NOT NULL") == "t",
    );
    assert_eq!(the_row(&pg, "takeovers"), "1", "taken over once");
    assert!(
        second
            .service
            .stderr()
            .contains("claimed undelivered alerts"),
        "the second replica says it took an alert over:\n{}",
        tail(&second.service.stderr())
    );
    let after = hook.requests();
    assert_eq!(after.len(), killed_at + 1, "delivered once after the kill");
    assert_eq!(after.last().unwrap().json()["event"], "firing");
    // The second replica printed it too (its stdout receiver): the same incident.
    let printed = second.service.alerts();
    assert_eq!(printed.len(), 1, "{printed:?}");
    assert_eq!(printed[0]["failure"]["count"], 3);
    assert_clean_exit(second.service.terminate());
}

#[test]
fn dedup_keys_expire_after_the_retention_and_a_later_redelivery_counts_again() {
    let pg = Postgres::start();
    let dir = tempfile::tempdir().unwrap();
    // Keys kept 2 s; the store's tick (a third of the lease) every 2 s.
    let lines = "dedup_retention = \"2s\"\noutbox_lease = \"6s\"";
    let mut replica = Replica::start(dir.path(), 0, &pg.url(), lines, "");
    let count = || {
        pg.sql(&format!(
            "SELECT incident->>'count' FROM jobs WHERE job = '{JOB}'"
        ))
    };
    replica.push_failure(0);
    replica.push_failure(0);
    assert_eq!(
        count(),
        "1",
        "a redelivery within the retention is a duplicate"
    );
    assert_eq!(pg.sql("SELECT count(*) FROM dedup_keys"), "1");
    eventually(
        &mut replica.service,
        "the key deleted",
        Duration::from_secs(30),
        || pg.sql("SELECT count(*) FROM dedup_keys") == "0",
    );
    replica.push_failure(0);
    assert_eq!(
        count(),
        "2",
        "a redelivery after the retention counts again"
    );
    assert_clean_exit(replica.service.terminate());
}

#[test]
fn replicas_starting_together_apply_each_migration_once_and_a_newer_schema_is_refused() {
    let pg = Postgres::start();
    let dir = tempfile::tempdir().unwrap();
    let mut replicas: Vec<Replica> = (0..3)
        .map(|n| Replica::spawn(dir.path(), n, &pg.url(), "", ""))
        .collect();
    for r in &mut replicas {
        r.wait_ready();
    }
    let versions = pg.sql("SELECT version FROM schedwatch_migrations ORDER BY version");
    assert_eq!(versions, "1\n2", "each migration recorded once");
    let mut applied = 0;
    for r in replicas {
        let stderr = assert_clean_exit(r.service.terminate());
        applied += stderr.matches("schema migration applied").count();
    }
    assert_eq!(applied, 2, "each migration applied by one replica");
    assert_eq!(
        pg.sql("SELECT column_name FROM information_schema.columns WHERE table_name = 'outbox' AND column_name = 'takeovers'"),
        "takeovers"
    );

    // A schema from a newer schedwatch: this one does not touch it, and says what to do.
    pg.sql("INSERT INTO schedwatch_migrations (version) VALUES (3)");
    let mut old = Replica::spawn(dir.path(), 3, &pg.url(), "", "");
    let error = connect_failure(&mut old.service, 2);
    assert!(
        error.contains(
            "the schema is at version 3, newer than this schedwatch knows (2): upgrade schedwatch"
        ),
        "{error}"
    );
    assert_eq!(ready(&old.address), 503, "not ready on a newer schema");
    stop_refused(old.service);
}

#[test]
fn a_password_from_a_file_logs_in_where_the_server_requires_scram_and_a_wrong_one_is_refused() {
    let pg = Postgres::start();
    let password = "correct horse battery staple";
    pg.require_password("alerts", password);
    let dir = tempfile::tempdir().unwrap();
    let login = |n: usize, password: &str| {
        let file = common::write(&folder(dir.path(), n), "pg-password", password);
        format!("password = {{ file = \"{}\" }}", file.display())
    };

    let replica = Replica::start(dir.path(), 0, &pg.url_as("alerts"), &login(0, password), "");
    for n in 0..3 {
        replica.push_failure(n);
    }
    assert_eq!(
        pg.sql(&format!(
            "SELECT incident->>'count' FROM jobs WHERE job = '{JOB}'"
        )),
        "3"
    );
    assert_eq!(
        pg.sql("SELECT tableowner FROM pg_tables WHERE tablename = 'outbox'"),
        "alerts"
    );
    let stderr = assert_clean_exit(replica.service.terminate());
    assert!(
        !stderr.contains(CANNOT_REACH),
        "logged in at once:\n{}",
        tail(&stderr)
    );

    let wrong = "Tr0ub4dor&3";
    let mut refused = Replica::spawn(dir.path(), 1, &pg.url_as("alerts"), &login(1, wrong), "");
    let error = connect_failure(&mut refused.service, 2);
    assert!(
        error.contains("password authentication failed for user \"alerts\""),
        "the server's reason: {error}"
    );
    assert_eq!(ready(&refused.address), 503, "not ready while refused");
    let stderr = stop_refused(refused.service);
    for secret in [password, wrong] {
        assert!(
            !stderr.contains(secret),
            "a password in the log:\n{}",
            tail(&stderr)
        );
    }
}
