//! The shared store over TLS (`[state.postgres] tls = "require"`, `ca_file`), end to end: a real
//! PostgreSQL that takes TLS connections only (`hostssl`), its certificate signed by a throwaway
//! CA, and `schedwatch run` in push mode (nothing else to start: the store's code path is the
//! pull mode's). Trusting that CA, schedwatch connects encrypted and commits; trusting another
//! CA, or turning TLS off, it does not start work and says why, retrying meanwhile.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{json, Value};

use crate::common::emulator::{free_port, http_with};
use crate::common::postgres::{Ca, Postgres};
use crate::common::service::{assert_clean_exit, tail, Service, Start};
use crate::common::{self};
use crate::endpoints::eventually;

/// schedwatch's connections, told from the tests' psql by their `application_name`.
const APPLICATION: &str = "schedwatch-tls-test";

/// The line schedwatch logs each time it fails to connect to the shared store.
pub const CANNOT_REACH: &str = "cannot reach the shared state store";

/// A config: push source served on `address`, the state in `pg` with the `tls` lines given.
fn config(dir: &Path, address: &str, pg: &Postgres, tls: &str) -> PathBuf {
    let url = format!("{}?application_name={APPLICATION}", pg.url());
    push_config(dir, address, &url, tls, "")
}

/// A config: push source served on `address` (no token checks), the state in PostgreSQL at
/// `url` (kept in a file, as a secret) with more `[state.postgres]` lines `postgres`, then
/// `rest` (receivers, say).
pub fn push_config(dir: &Path, address: &str, url: &str, postgres: &str, rest: &str) -> PathBuf {
    let url = common::write(dir, "pg-url", url);
    common::write(
        dir,
        "config.toml",
        format!(
            "[server]\nlisten = \"{address}\"\n\n[source.push]\nallow_unauthenticated = true\n\n\
             [state.postgres]\nurl = {{ file = \"{}\" }}\npool_size = 2\n{postgres}\n\n{rest}",
            url.display()
        ),
    )
}

/// `schedwatch run --config config`, its files in `dir`, numbered `n`.
pub fn start_numbered(dir: &Path, config: &Path, n: usize) -> Service {
    Start {
        emulator: None,
        sub: "",
        jobs: None,
        state: &dir.join("state"),
        config: Some(config),
        dir,
        n,
        args: &[],
    }
    .spawn()
}

fn start(dir: &Path, config: &Path) -> Service {
    start_numbered(dir, config, 0)
}

/// `GET /readyz`: its status, 0 when nothing answers.
pub fn ready(address: &str) -> u16 {
    http_with(address, "GET", "/readyz", &[], None, Duration::from_secs(2)).map_or(0, |r| r.status)
}

/// The shared 401 entry with its own insertId and timestamp (minute `n`), in a push envelope.
pub fn failure(n: usize) -> Vec<u8> {
    let fixture: Value = serde_json::from_slice(
        &std::fs::read(common::fixture("pubsub/push_envelope_401.json")).unwrap(),
    )
    .unwrap();
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut entry: Value = serde_json::from_slice(
        &b64.decode(fixture["message"]["data"].as_str().unwrap())
            .unwrap(),
    )
    .unwrap();
    entry["insertId"] = json!(format!("tls-failure-{n}"));
    entry["timestamp"] = json!(format!("2026-03-02T02:{n:02}:07.298114Z"));
    json!({
        "message": {"data": b64.encode(entry.to_string()), "messageId": n.to_string(),
                    "attributes": {"logging.googleapis.com/timestamp": entry["timestamp"]}},
        "subscription": "projects/acme-ops/subscriptions/schedwatch-push",
    })
    .to_string()
    .into_bytes()
}

/// POSTs `body` to the push endpoint; the status and the answer's text.
pub fn push(address: &str, body: &[u8]) -> (u16, String) {
    let reply = http_with(
        address,
        "POST",
        "/pubsub/push",
        &[],
        Some(body),
        Duration::from_secs(40),
    )
    .expect("the push endpoint answers");
    (reply.status, reply.text())
}

/// Waits until schedwatch has failed to connect `n` times (it retries with a growing delay:
/// 0.2 s, 0.4 s, …); the first such line. Panics if it connects or exits instead.
pub fn connect_failure(service: &mut Service, n: usize) -> String {
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        let log = service.stderr();
        assert!(
            !log.contains("shared state store connected"),
            "schedwatch connected, and should not have:\n{}",
            tail(&log)
        );
        let failures: Vec<&str> = log.lines().filter(|l| l.contains(CANNOT_REACH)).collect();
        if failures.len() >= n {
            return failures[0].to_owned();
        }
        if let Some(status) = service.child.try_wait().unwrap() {
            panic!(
                "schedwatch exited ({status}) instead of retrying:\n{}",
                tail(&log)
            );
        }
        assert!(
            Instant::now() < end,
            "schedwatch did not log {CANNOT_REACH:?} {n} times within 30 s:\n{}",
            tail(&log)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// What a refused start leaves: not ready, no schema in the database, and a clean exit on
/// SIGTERM while it retries.
fn assert_refused(service: Service, address: &str, pg: &Postgres) {
    assert_eq!(ready(address), 503, "not ready while the store is refused");
    assert_eq!(
        pg.sql("SELECT to_regclass('schedwatch_migrations') IS NULL"),
        "t",
        "nothing was written to the database"
    );
    let (status, stderr) = service.terminate();
    assert!(
        status.success(),
        "exit {status} after SIGTERM while connecting:\n{}",
        tail(&stderr)
    );
}

#[test]
fn tls_require_with_the_servers_ca_connects_encrypted_and_commits_to_postgresql() {
    let pg = Postgres::start_tls();
    let dir = tempfile::tempdir().unwrap();
    let address = format!("127.0.0.1:{}", free_port());
    let tls = format!(
        "tls = \"require\"\nca_file = \"{}\"",
        pg.ca_file().display()
    );
    let cfg = config(dir.path(), &address, &pg, &tls);
    let mut service = start(dir.path(), &cfg);
    eventually(
        &mut service,
        "ready on PostgreSQL over TLS",
        Duration::from_secs(30),
        || ready(&address) == 200,
    );
    // The pool keeps its connections: the server says each of them is TLS.
    let connections = pg.sql(&format!(
        "SELECT s.ssl, s.version FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
         WHERE a.application_name = '{APPLICATION}'"
    ));
    assert!(
        !connections.is_empty(),
        "schedwatch holds no connection to the server:\n{}",
        pg.sql("SELECT pid, application_name, client_addr FROM pg_stat_activity")
    );
    for c in connections.lines() {
        assert!(
            c.starts_with("t|TLSv1."),
            "a connection of schedwatch without TLS: {c}"
        );
    }

    // Three failures, each answered 204 once committed: the incident fires at the third.
    for n in 0..3 {
        let (status, text) = push(&address, &failure(n));
        assert_eq!(status, 204, "push {n}: {text}");
    }
    let alerts = service.wait_for("the firing alert", Duration::from_secs(30), |a| {
        !a.is_empty()
    });
    assert_eq!(alerts[0]["event"], "firing", "{}", alerts[0]);
    assert_eq!(alerts[0]["failure"]["count"], 3, "{}", alerts[0]);
    // The state is in the database: the open incident and its alert, delivered.
    assert_eq!(
        pg.sql("SELECT job, incident->>'count' FROM jobs"),
        "projects/acme-data-prod/locations/europe-west1/jobs/nightly-etl-trigger|3"
    );
    let delivered =
        || pg.sql("SELECT alert->>'event', done_at IS NOT NULL FROM outbox") == "firing|t";
    eventually(
        &mut service,
        "the alert recorded as delivered",
        Duration::from_secs(30),
        delivered,
    );
    assert_eq!(pg.sql("SELECT count(*) FROM dedup_keys"), "3");
    let stderr = assert_clean_exit(service.terminate());
    assert!(
        !stderr.contains(CANNOT_REACH),
        "connected at the first attempt:\n{}",
        tail(&stderr)
    );
}

/// schedwatch against a TLS-only server with the `[state.postgres]` TLS lines `tls(dir)` gives:
/// it does not start work, retries, and logs an error that names the server; that error.
fn refusal(tls: impl FnOnce(&Path) -> String) -> String {
    let pg = Postgres::start_tls();
    let dir = tempfile::tempdir().unwrap();
    let address = format!("127.0.0.1:{}", free_port());
    let cfg = config(dir.path(), &address, &pg, &tls(dir.path()));
    let mut service = start(dir.path(), &cfg);
    let error = connect_failure(&mut service, 2);
    eprintln!("schedwatch says: {error}");
    assert!(
        error.contains("127.0.0.1/schedwatch"),
        "the error names the server: {error}"
    );
    assert!(
        !error.contains("Error occurred while creating a new object"),
        "the pool's own words are dropped: {error}"
    );
    assert_refused(service, &address, &pg);
    error
}

#[test]
fn tls_require_with_a_ca_that_did_not_sign_the_server_is_refused_naming_the_certificate() {
    let error = refusal(|dir| {
        let other = Ca::generate(dir, "other-ca");
        format!("tls = \"require\"\nca_file = \"{}\"", other.cert.display())
    });
    // That the server's certificate is not one the CA in `ca_file` signed, and what to change.
    assert!(
        error.contains("TLS") && error.contains("invalid peer certificate: UnknownIssuer"),
        "the error names the certificate problem: {error}"
    );
    assert!(
        error.contains("ca_file must hold the CA that signed the server's certificate"),
        "the error says what to change: {error}"
    );
}

#[test]
fn tls_disable_against_a_server_that_requires_tls_is_refused_with_the_servers_reason() {
    let error = refusal(|_| "tls = \"disable\"".to_owned());
    // The server's own words: no pg_hba.conf line lets an unencrypted connection in.
    assert!(
        error.contains("no pg_hba.conf entry") && error.contains("no encryption"),
        "the error carries the server's reason: {error}"
    );
    assert!(
        error.contains("set [state.postgres] tls = \"require\""),
        "the error says what to change: {error}"
    );
}
