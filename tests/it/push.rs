//! Push mode (`run` with `[source.push]`): a real emulator push subscription pointed at the
//! local endpoint, the OIDC token checks with tokens signed by a test key served from a local
//! JWKS, and 2xx meaning "durable" across a kill -9.
//!
//! Then the endpoint as an attacker meets it (loopback, raw sockets where a client would be
//! too polite): unauthenticated partial bodies, slow and idle connections, more connections
//! than the bound, floods of bad tokens, huge or hostile headers, tokens from the future, and
//! a JWKS that hangs.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

use crate::common::emulator::{free_port, http_with, Emulator};
use crate::common::http::{FakeServer, Response};
use crate::common::service::{
    assert_clean_exit, by_job, expected, lines_of, read_alerts, tail, Service, Start, PROJECT,
};
use crate::common::{self, projection};
use crate::endpoints::{eventually, scrape};

const TOPIC: &str = "scheduler-logs";
const AUDIENCE: &str = "https://schedwatch-test.example/pubsub/push";
const PUSHER: &str = "pubsub-push@acme-ops.iam.gserviceaccount.com";

fn key(name: &str) -> EncodingKey {
    let pem = std::fs::read(common::root().join("tests/it/data/push").join(name)).unwrap();
    EncodingKey::from_rsa_pem(&pem).unwrap()
}

/// A token as Google signs them for push subscriptions, with `change` applied to the claims.
fn token(signer: &str, kid: &str, change: impl FnOnce(&mut Value)) -> String {
    let now = chrono::Utc::now().timestamp();
    let mut claims = json!({
        "aud": AUDIENCE,
        "azp": "109876543210987654321",
        "email": PUSHER,
        "email_verified": true,
        "exp": now + 3600,
        "iat": now,
        "iss": "https://accounts.google.com",
        "sub": "109876543210987654321",
    });
    change(&mut claims);
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(kid.to_owned());
    jsonwebtoken::encode(&header, &claims, &key(signer)).unwrap()
}

/// POSTs `body` to the push endpoint; the status and the answer's text.
fn push(address: &str, bearer: Option<&str>, body: &[u8]) -> (u16, String) {
    push_with(
        address,
        bearer.map(|t| format!("Bearer {t}")).as_deref(),
        body,
    )
}

/// [`push`] with the `Authorization` value as given.
fn push_with(address: &str, authorization: Option<&str>, body: &[u8]) -> (u16, String) {
    let headers: Vec<(&str, &str)> = authorization
        .map(|a| vec![("Authorization", a)])
        .unwrap_or_default();
    let reply = http_with(
        address,
        "POST",
        "/pubsub/push",
        &headers,
        Some(body),
        Duration::from_secs(40),
    )
    .expect("the push endpoint answers");
    (reply.status, reply.text())
}

/// An envelope as Pub/Sub pushes it, around one log entry.
fn envelope(entry: &Value, id: usize) -> Vec<u8> {
    let data = base64::engine::general_purpose::STANDARD.encode(entry.to_string());
    json!({
        "message": {"data": data, "messageId": id.to_string(), "message_id": id.to_string(),
                    "attributes": {"logging.googleapis.com/timestamp": entry["timestamp"]}},
        "subscription": "projects/acme-ops/subscriptions/schedwatch-push",
    })
    .to_string()
    .into_bytes()
}

/// The shared 401 entry with its own insertId and timestamp (minute `n`).
fn failure(n: usize) -> Value {
    let fixture: Value = serde_json::from_slice(
        &std::fs::read(common::fixture("pubsub/push_envelope_401.json")).unwrap(),
    )
    .unwrap();
    let data = base64::engine::general_purpose::STANDARD
        .decode(fixture["message"]["data"].as_str().unwrap())
        .unwrap();
    let mut entry: Value = serde_json::from_slice(&data).unwrap();
    entry["insertId"] = json!(format!("push-failure-{n}"));
    entry["timestamp"] = json!(format!("2026-03-02T02:{n:02}:07.298114Z"));
    entry
}

/// A config: push source with `push` settings, served on `address`.
fn config(dir: &Path, address: &str, push: &str) -> std::path::PathBuf {
    config_with(dir, address, "", push)
}

/// [`config`] with more `[server]` settings.
fn config_with(dir: &Path, address: &str, server: &str, push: &str) -> std::path::PathBuf {
    common::write(
        dir,
        "config.toml",
        format!("[server]\nlisten = \"{address}\"\n{server}\n[source.push]\n{push}\n"),
    )
}

fn start(dir: &Path, config: &Path, jobs: Option<&Path>, n: usize) -> Service {
    Start {
        emulator: None,
        sub: "",
        jobs,
        state: &dir.join("state"),
        config: Some(config),
        dir,
        n,
        args: &[],
    }
    .spawn()
}

fn wait_ready(service: &mut Service, address: &str) {
    eventually(service, "ready", Duration::from_secs(30), || {
        http_with(address, "GET", "/readyz", &[], None, Duration::from_secs(2))
            .is_ok_and(|r| r.status == 200)
    });
}

#[test]
fn an_emulator_push_subscription_delivers_every_example_to_its_alerts() {
    let emu = Emulator::start();
    emu.create_topic(PROJECT, TOPIC);
    let dir = tempfile::tempdir().unwrap();
    let address = format!("127.0.0.1:{}", free_port());
    let example = common::shared().join("examples/oidc-to-run-job-then-fixed");
    let cfg = config(dir.path(), &address, "allow_unauthenticated = true");
    let mut service = start(dir.path(), &cfg, Some(&example.join("jobs")), 0);
    wait_ready(&mut service, &address);
    // Ordered, as a job's entries must arrive in order for its incident to be comparable.
    emu.create_push_subscription(
        PROJECT,
        "schedwatch-push",
        TOPIC,
        &format!("http://{address}/pubsub/push"),
        true,
    );
    let lines = lines_of(&example.join("logs.ndjson"));
    emu.publish_log_entries(PROJECT, TOPIC, &lines);
    let want = expected(&example);
    service.wait_for("the example's alerts", Duration::from_secs(60), |a| {
        a.len() >= want.len()
    });
    eventually(
        &mut service,
        "every push acked",
        Duration::from_secs(30),
        || scrape(&address)["schedwatch_messages_acked_total"] >= lines.len() as f64,
    );
    let m = scrape(&address);
    assert!(m["schedwatch_push_requests_total{outcome=\"acked\"}"] >= lines.len() as f64);
    let stderr = assert_clean_exit(service.terminate());
    assert_eq!(
        by_job(&projection(&read_alerts(
            &dir.path().join("stdout.0.ndjson")
        ))),
        by_job(&want),
        "{}",
        tail(&stderr)
    );
    assert!(
        stderr.contains("without a token"),
        "an unauthenticated push endpoint is warned about: {}",
        tail(&stderr)
    );
}

#[test]
fn push_tokens_are_checked_against_the_jwks_issuer_audience_and_account() {
    let jwks = std::fs::read(common::root().join("tests/it/data/push/jwks.json")).unwrap();
    let keys = FakeServer::start(move |_| {
        Response::new(200)
            .header("content-type", "application/json")
            .body(jwks.clone())
    });
    let dir = tempfile::tempdir().unwrap();
    let address = format!("127.0.0.1:{}", free_port());
    let cfg = config(
        dir.path(),
        &address,
        &format!(
            "audience = \"{AUDIENCE}\"\nservice_account = \"{PUSHER}\"\njwks_url = \"{}/oauth2/v3/certs\"\n",
            keys.url()
        ),
    );
    let mut service = start(dir.path(), &cfg, None, 0);
    wait_ready(&mut service, &address);
    let body = envelope(&failure(0), 1);
    let kid = "schedwatch-test-1";

    let hs256 = {
        let mut h = Header::new(Algorithm::HS256);
        h.kid = Some(kid.to_owned());
        let claims = json!({"aud": AUDIENCE, "email": PUSHER, "email_verified": true,
                            "iss": "https://accounts.google.com", "exp": chrono::Utc::now().timestamp() + 600});
        jsonwebtoken::encode(&h, &claims, &EncodingKey::from_secret(b"guessable")).unwrap()
    };
    let refused: Vec<(&str, Option<String>)> = vec![
        ("no token", None),
        ("not a JWT", Some("not-a-jwt".to_owned())),
        (
            "signed by another key",
            Some(token("stranger.pem", kid, |_| {})),
        ),
        (
            "an unknown key id",
            Some(token("signer.pem", "rotated-away", |_| {})),
        ),
        (
            "another audience",
            Some(token("signer.pem", kid, |c| {
                c["aud"] = json!("https://elsewhere.example/")
            })),
        ),
        (
            "another service account",
            Some(token("signer.pem", kid, |c| {
                c["email"] = json!("intruder@evil.iam.gserviceaccount.com")
            })),
        ),
        (
            "an unverified email",
            Some(token("signer.pem", kid, |c| {
                c["email_verified"] = json!(false)
            })),
        ),
        (
            "another issuer",
            Some(token("signer.pem", kid, |c| {
                c["iss"] = json!("https://issuer.example")
            })),
        ),
        (
            "an expired token",
            Some(token("signer.pem", kid, |c| {
                c["exp"] = json!(chrono::Utc::now().timestamp() - 3600)
            })),
        ),
        ("HS256", Some(hs256)),
    ];
    for (what, bearer) in &refused {
        let (status, text) = push(&address, bearer.as_deref(), &body);
        assert_eq!(status, 401, "{what}: {text}");
    }
    let good = token("signer.pem", kid, |_| {});
    let (status, text) = push(&address, Some(&good), &body);
    assert_eq!(status, 204, "{text}\n{}", tail(&service.stderr()));
    let (status, text) = push(&address, Some(&good), b"{\"hello\": \"world\"}");
    assert_eq!(
        status, 200,
        "a non-envelope is skipped, not redelivered: {text}"
    );

    let m = scrape(&address);
    assert_eq!(
        m["schedwatch_push_requests_total{outcome=\"unauthorized\"}"],
        refused.len() as f64
    );
    assert_eq!(m["schedwatch_push_requests_total{outcome=\"acked\"}"], 1.0);
    assert_eq!(m["schedwatch_messages_acked_total"], 1.0);
    assert_eq!(
        m["schedwatch_messages_skipped_total{reason=\"bad_push_envelope\"}"],
        1.0
    );
    // The keys were read once: the unknown key id within the refresh interval did not
    // become a second fetch.
    assert_eq!(keys.requests().len(), 1, "{:?}", keys.requests());
    assert_eq!(keys.requests()[0].route(), "/oauth2/v3/certs");
    assert_clean_exit(service.terminate());
}

#[test]
fn a_push_answered_2xx_survives_a_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let address = format!("127.0.0.1:{}", free_port());
    let cfg = config(dir.path(), &address, "allow_unauthenticated = true");
    let mut service = start(dir.path(), &cfg, None, 0);
    wait_ready(&mut service, &address);
    // Two failures, each answered 204: committed. Then no shutdown work at all.
    for n in 0..2 {
        let (status, text) = push(&address, None, &envelope(&failure(n), n));
        assert_eq!(status, 204, "{text}");
    }
    assert!(service.alerts().is_empty(), "2 failures fire nothing yet");
    service.kill9();
    // The third failure after the restart completes the incident: the first two were kept.
    let mut again = start(dir.path(), &cfg, None, 1);
    wait_ready(&mut again, &address);
    let (status, text) = push(&address, None, &envelope(&failure(2), 2));
    assert_eq!(status, 204, "{text}");
    let alerts = again.wait_for("the firing alert", Duration::from_secs(30), |a| {
        !a.is_empty()
    });
    assert_eq!(alerts[0]["event"], "firing");
    assert_eq!(alerts[0]["failure"]["count"], 3, "{}", alerts[0]);
    // Redelivered after the crash (Pub/Sub did not see a 2xx in time): a duplicate, counted
    // once.
    let (status, _) = push(&address, None, &envelope(&failure(1), 1));
    assert_eq!(status, 204);
    assert_clean_exit(again.terminate());
    assert_eq!(read_alerts(&dir.path().join("stdout.1.ndjson")).len(), 1);
}

const KID: &str = "schedwatch-test-1";

/// A loopback JWKS serving the test key.
fn serve_jwks() -> FakeServer {
    let jwks = std::fs::read(common::root().join("tests/it/data/push/jwks.json")).unwrap();
    FakeServer::start(move |_| {
        Response::new(200)
            .header("content-type", "application/json")
            .body(jwks.clone())
    })
}

/// A push service that checks tokens against `keys`, with more `[server]` settings, ready.
fn start_checked(keys: &FakeServer, server: &str) -> (tempfile::TempDir, String, Service) {
    let dir = tempfile::tempdir().unwrap();
    let address = format!("127.0.0.1:{}", free_port());
    let cfg = config_with(
        dir.path(),
        &address,
        server,
        &format!(
            "audience = \"{AUDIENCE}\"\nservice_account = \"{PUSHER}\"\njwks_url = \"{}/oauth2/v3/certs\"\n",
            keys.url()
        ),
    );
    let mut service = start(dir.path(), &cfg, None, 0);
    wait_ready(&mut service, &address);
    (dir, address, service)
}

/// The process's resident memory in MiB (`VmRSS` in /proc).
fn rss_mib(service: &Service) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", service.child.id())).unwrap();
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS in {status}"));
    kib / 1024.0
}

fn connect(address: &str) -> TcpStream {
    TcpStream::connect(address).expect("the service accepts connections")
}

/// Whether the server sent something or closed `stream` (without waiting).
fn answered(stream: &TcpStream) -> bool {
    stream.set_nonblocking(true).unwrap();
    let peeked = stream.peek(&mut [0u8; 1]);
    stream.set_nonblocking(false).unwrap();
    !matches!(peeked, Err(e) if e.kind() == ErrorKind::WouldBlock)
}

/// Reads until the server closes `stream` (end of stream or reset), `wait` at most; whether it
/// did, and what it sent before.
fn closed_within(stream: &mut TcpStream, wait: Duration) -> (bool, String) {
    stream
        .set_read_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    let (end, mut got, mut buf) = (Instant::now() + wait, Vec::new(), [0u8; 4096]);
    while Instant::now() < end {
        match stream.read(&mut buf) {
            Ok(0) => return (true, String::from_utf8_lossy(&got).into_owned()),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return (true, String::from_utf8_lossy(&got).into_owned()),
        }
    }
    (false, String::from_utf8_lossy(&got).into_owned())
}

/// A push's head declaring a 16 MiB body, then up to `most` bytes of it, stopped as soon as
/// the server answers; the answer's status (0: none within 30 s) and the still-open socket.
fn partial_body(address: &str, bearer: &str, most: usize) -> (u16, TcpStream) {
    let mut s = connect(address);
    s.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
    let head = format!(
        "POST /pubsub/push HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {bearer}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        16 << 20
    );
    let _ = s.write_all(head.as_bytes());
    let chunk = vec![b' '; 64 * 1024];
    let mut sent = 0;
    while sent < most && !answered(&s) {
        match s.write(&chunk) {
            Ok(n) => sent += n,
            Err(_) => break, // the server stopped reading, or closed
        }
    }
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let (mut answer, mut buf) = (Vec::new(), [0u8; 1024]);
    while !answer.windows(2).any(|w| w == b"\r\n") {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
        }
    }
    let status = String::from_utf8_lossy(&answer)
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, s)
}

/// Issue 13: 60 connections sending 16 MiB bodies behind a forged token took RSS from 33 MB
/// to 940 MB, read before the token was looked at. Now each is answered 401 on its headers,
/// no body is held, and a good push still goes through.
#[test]
fn unauthenticated_partial_bodies_are_refused_on_their_headers_and_hold_no_memory() {
    let keys = serve_jwks();
    let (_dir, address, service) = start_checked(&keys, "");
    let good = token("signer.pem", KID, |_| {});
    let (status, text) = push(&address, Some(&good), &envelope(&failure(0), 0));
    assert_eq!(status, 204, "{text}");
    let before = rss_mib(&service);
    let forged = token("stranger.pem", KID, |_| {});
    let attacks: Vec<(u16, TcpStream)> = std::thread::scope(|s| {
        let attackers: Vec<_> = (0..60)
            .map(|_| s.spawn(|| partial_body(&address, &forged, 4 << 20)))
            .collect();
        attackers.into_iter().map(|a| a.join().unwrap()).collect()
    });
    // Measured while the attackers' sockets are still open.
    let during = rss_mib(&service);
    let statuses: Vec<u16> = attacks.iter().map(|(status, _)| *status).collect();
    assert!(
        statuses.iter().all(|&s| s == 401),
        "each partial body is refused on its headers: {statuses:?}\n{}",
        tail(&service.stderr())
    );
    // Generous: 60 buffered bodies were 240 MiB here (4 MiB each), and more with 16 MiB.
    assert!(
        during < before + 64.0,
        "RSS {before:.0} MiB before, {during:.0} MiB with 60 partial bodies open"
    );
    drop(attacks);
    let (status, text) = push(&address, Some(&good), &envelope(&failure(1), 1));
    assert_eq!(status, 204, "the service still serves: {text}");
    let after = rss_mib(&service);
    assert!(
        after < before + 64.0,
        "RSS {before:.0} MiB before the attack, {after:.0} MiB after"
    );
    assert_clean_exit(service.terminate());
}

/// Issue 13: connections that send their headers a byte at a time, send nothing, or idle
/// after an answer stayed open for ever. Each is now closed by the header (= idle) timeout.
#[test]
fn slow_and_idle_connections_are_closed() {
    let dir = tempfile::tempdir().unwrap();
    let address = format!("127.0.0.1:{}", free_port());
    let cfg = config(dir.path(), &address, "allow_unauthenticated = true");
    let mut service = start(dir.path(), &cfg, None, 0);
    wait_ready(&mut service, &address);
    // Four times the server's 30 s header timeout: generous on a loaded machine, and the end
    // of the test on a server that has none.
    let wait = Duration::from_secs(120);
    let (idle, slow, kept_alive) = std::thread::scope(|s| {
        let idle = s.spawn(|| closed_within(&mut connect(&address), wait).0);
        let slow = s.spawn(|| {
            // A slowloris: a byte a second of a head that never ends.
            let mut c = connect(&address);
            c.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
            let mut head = b"POST /pubsub/push HTTP/1.1\r\nHost: x\r\nX-Slow: ".to_vec();
            head.resize(head.len() + 200, b'a');
            let end = Instant::now() + wait;
            for byte in head {
                if Instant::now() > end || c.write_all(&[byte]).is_err() {
                    return Instant::now() <= end;
                }
                match c.read(&mut [0u8; 1024]) {
                    Ok(0) => return true,
                    Err(e) if !matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                        return true
                    }
                    _ => {}
                }
            }
            false
        });
        let kept_alive = s.spawn(|| {
            let mut c = connect(&address);
            c.write_all(format!("GET /healthz HTTP/1.1\r\nHost: {address}\r\n\r\n").as_bytes())
                .unwrap();
            closed_within(&mut c, wait)
        });
        (
            idle.join().unwrap(),
            slow.join().unwrap(),
            kept_alive.join().unwrap(),
        )
    });
    assert!(
        idle,
        "a connection that sent nothing is open after {wait:?}"
    );
    assert!(
        slow,
        "a head sent a byte a second is still read after {wait:?}"
    );
    let (closed, answer) = kept_alive;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        closed,
        "a keep-alive connection idle after its answer is open after {wait:?}"
    );
    let reply = http_with(
        &address,
        "GET",
        "/healthz",
        &[],
        None,
        Duration::from_secs(10),
    );
    assert_eq!(reply.map(|r| r.status).ok(), Some(200));
    assert_clean_exit(service.terminate());
}

/// Issue 13: there was no bound on connections. With `max_connections = 4`, four held
/// connections keep the rest waiting in the kernel's queue (not served, not costing memory);
/// once they go, every waiting one is served.
#[test]
fn connections_beyond_the_bound_wait_unaccepted() {
    let dir = tempfile::tempdir().unwrap();
    let address = format!("127.0.0.1:{}", free_port());
    let cfg = config_with(
        dir.path(),
        &address,
        "max_connections = 4\n",
        "allow_unauthenticated = true",
    );
    let mut service = start(dir.path(), &cfg, None, 0);
    wait_ready(&mut service, &address);
    let before = rss_mib(&service);
    // Accepted in the order they connect: these four take every slot.
    let held: Vec<TcpStream> = (0..4).map(|_| connect(&address)).collect();
    let mut waiting: Vec<TcpStream> = (0..60)
        .map(|_| {
            let mut c = connect(&address);
            c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .unwrap();
            c
        })
        .collect();
    // Two seconds for a server without a bound to answer them (it takes milliseconds).
    std::thread::sleep(Duration::from_secs(2));
    let answered_early = waiting.iter().filter(|c| answered(c)).count();
    let during = rss_mib(&service);
    assert_eq!(
        answered_early, 0,
        "connections beyond max_connections were served while four were held"
    );
    assert!(
        during < before + 16.0,
        "RSS {before:.0} MiB before, {during:.0} MiB with 60 connections queued"
    );
    drop(held);
    for c in &mut waiting {
        let (closed, answer) = closed_within(c, Duration::from_secs(60));
        assert!(
            closed && answer.starts_with("HTTP/1.1 200"),
            "{closed} {answer}"
        );
    }
    assert_clean_exit(service.terminate());
}

/// The lines of `stderr` about refused pushes.
fn refusal_lines(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|l| l.contains("push request") && l.contains("refused"))
        .collect()
}

/// The refusals `lines` count, by reason.
fn refusal_counts(lines: &[&str]) -> std::collections::BTreeMap<String, u64> {
    let mut counts = std::collections::BTreeMap::new();
    for line in lines {
        let Some(rest) = line.split("push requests refused: ").nth(1) else {
            panic!("not a refusal line of ours: {line}");
        };
        let reason = rest.split([';', '(']).next().unwrap().trim().to_owned();
        let count: u64 = rest
            .split(" since the last line")
            .next()
            .and_then(|before| before.rsplit(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no count in {line}"));
        *counts.entry(reason).or_default() += count;
    }
    counts
}

/// Issue 13: every refused request was a warning line. 200 refused now make one line per
/// reason, and the lines' counts (the last ones written at shutdown) add up to 200.
#[test]
fn a_flood_of_bad_tokens_is_logged_once_per_reason_with_counts() {
    let keys = serve_jwks();
    let (_dir, address, service) = start_checked(&keys, "");
    let started = Instant::now();
    for _ in 0..100 {
        assert_eq!(push(&address, Some("not-a-jwt"), b"{}").0, 401);
        assert_eq!(push(&address, None, b"{}").0, 401);
    }
    // One line per reason a minute: two, and two more should the flood have crossed a minute.
    let minutes = started.elapsed().as_secs() as usize / 60;
    let during = refusal_lines(&service.stderr()).len();
    assert!(
        (2..=2 * (minutes + 1)).contains(&during),
        "{during} lines for 200 refusals:\n{}",
        tail(&service.stderr())
    );
    let m = scrape(&address);
    assert_eq!(
        m["schedwatch_push_requests_total{outcome=\"unauthorized\"}"],
        200.0
    );
    let stderr = assert_clean_exit(service.terminate());
    let lines = refusal_lines(&stderr);
    assert!(lines.len() <= during + 2, "{lines:#?}");
    assert_eq!(
        refusal_counts(&lines),
        [
            ("invalid token".to_owned(), 100),
            ("no bearer token".to_owned(), 100)
        ]
        .into(),
        "{}",
        tail(&stderr)
    );
}

/// A token whose header's `alg` is `alg`: jsonwebtoken's error quotes it back.
fn hostile_token(alg: &str) -> String {
    let b64 = |v: &Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string().as_bytes())
    };
    format!(
        "{}.{}.c2ln",
        b64(&json!({"alg": alg, "typ": "JWT", "kid": KID})),
        b64(&json!({"aud": AUDIENCE}))
    )
}

/// Issue 13: a 200 KB token was echoed into the log line and the 401 body. Now a head over
/// 16 KiB is refused before our code sees it, and a 10 KB hostile one (a newline to forge a
/// log line, an ESC for the terminal) gets a fixed 401 and a short, escaped log line.
#[test]
fn hostile_authorization_headers_are_neither_echoed_nor_logged_whole() {
    let keys = serve_jwks();
    let (_dir, address, service) = start_checked(&keys, "");
    let huge = hostile_token(&"FORGED".repeat(200_000 / 6));
    let mut c = connect(&address);
    c.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = c.write_all(
        format!("POST /pubsub/push HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {huge}\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}")
            .as_bytes(),
    );
    let (closed, answer) = closed_within(&mut c, Duration::from_secs(30));
    assert!(closed, "{answer}");
    assert!(
        !answer.contains("FORGED") && !answer.starts_with("HTTP/1.1 2"),
        "{answer}"
    );

    let hostile = hostile_token(&format!(
        "\u{1b}[2J\nFORGED-LOG-LINE {}",
        "FORGED".repeat(10_000 / 6)
    ));
    assert!(hostile.len() < 15_000);
    let (status, text) = push(&address, Some(&hostile), b"{}");
    assert_eq!(status, 401, "{text}");
    assert!(!text.contains("FORGED"), "echoed: {text}");
    let stderr = assert_clean_exit(service.terminate());
    assert!(
        stderr.contains("push requests refused: invalid token"),
        "{}",
        tail(&stderr)
    );
    assert!(!stderr.contains('\u{1b}'), "a raw ESC reached the log");
    assert!(
        !stderr.lines().any(|l| l.starts_with("FORGED-LOG-LINE")),
        "a forged log line:\n{}",
        tail(&stderr)
    );
    assert!(
        !stderr.contains(&"FORGED".repeat(20)),
        "the token was logged whole:\n{}",
        tail(&stderr)
    );
}

/// Issue 13: tokens with `nbf` a day ahead, `iat` a year ahead or `exp` a century ahead were
/// accepted, and `BEARER` was refused. Google's tokens live an hour, from now.
#[test]
fn tokens_from_the_future_are_refused_and_the_scheme_is_case_insensitive() {
    let keys = serve_jwks();
    let (_dir, address, service) = start_checked(&keys, "");
    let now = chrono::Utc::now().timestamp();
    let day = 86_400;
    let refused = [
        (
            "nbf a day ahead",
            token("signer.pem", KID, |c| c["nbf"] = json!(now + day)),
        ),
        (
            "iat a year ahead",
            token("signer.pem", KID, |c| {
                c["iat"] = json!(now + 365 * day);
                c["exp"] = json!(now + 365 * day + 3600);
            }),
        ),
        (
            "exp a century ahead",
            token("signer.pem", KID, |c| c["exp"] = json!(now + 36_500 * day)),
        ),
        (
            "a day-long lifetime",
            token("signer.pem", KID, |c| c["exp"] = json!(now + day)),
        ),
    ];
    for (n, (what, t)) in refused.iter().enumerate() {
        let (status, text) = push(&address, Some(t), &envelope(&failure(n), n));
        assert_eq!(status, 401, "{what}: {text}");
    }
    for (n, scheme) in ["BEARER", "bearer", "Bearer"].iter().enumerate() {
        let good = token("signer.pem", KID, |_| {});
        let (status, text) = push_with(
            &address,
            Some(&format!("{scheme} {good}")),
            &envelope(&failure(10 + n), 10 + n),
        );
        assert_eq!(status, 204, "{scheme}: {text}");
    }
    assert_clean_exit(service.terminate());
}

/// Issue 13: a JWKS read that hung held the key lock, so every push waited for it (10, 20,
/// 30 s). Now a push signed by a known key is answered while the read for an unknown key id
/// hangs; the pushes with unknown key ids share that one read and are refused when it fails,
/// and the failure is remembered (no read per forged key id).
#[test]
fn a_hanging_jwks_read_does_not_hold_pushes_signed_by_a_known_key() {
    let jwks = std::fs::read(common::root().join("tests/it/data/push/jwks.json")).unwrap();
    // The first read is answered; the next ones hang until released (60 s at most), then fail.
    let release = Arc::new((Mutex::new(false), Condvar::new()));
    let keys = {
        let release = Arc::clone(&release);
        let reads = std::sync::atomic::AtomicUsize::new(0);
        FakeServer::start(move |_| {
            if reads.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
                return Response::new(200)
                    .header("content-type", "application/json")
                    .body(jwks.clone());
            }
            let (released, wake) = &*release;
            let guard = released.lock().unwrap();
            let _ = wake
                .wait_timeout_while(guard, Duration::from_secs(60), |r| !*r)
                .unwrap();
            Response::text(503, "unavailable")
        })
    };
    let (_dir, address, service) = start_checked(&keys, "");
    let good = token("signer.pem", KID, |_| {});
    assert_eq!(
        push(&address, Some(&good), &envelope(&failure(0), 0)).0,
        204
    );
    assert_eq!(keys.requests().len(), 1);
    // An unknown key id makes a read only 10 s (MIN_REFRESH) after the last one.
    std::thread::sleep(Duration::from_secs(11));
    let rotated = token("signer.pem", "rotated-in", |_| {});
    let (address, rotated) = (address.as_str(), rotated.as_str());
    std::thread::scope(|s| {
        let first = s.spawn(|| push(address, Some(rotated), &envelope(&failure(1), 1)));
        let reads = keys.wait_for(Duration::from_secs(30), |r| r.len() >= 2);
        assert_eq!(reads.len(), 2, "the unknown key id makes a read");
        let more: Vec<_> = (2..5)
            .map(|n| s.spawn(move || push(address, Some(rotated), &envelope(&failure(n), n))))
            .collect();
        let (status, text) = push(address, Some(&good), &envelope(&failure(9), 9));
        assert_eq!(status, 204, "{text}");
        let waiting =
            more.iter().filter(|h| !h.is_finished()).count() + usize::from(!first.is_finished());
        // Released before any assertion can fail, so no thread waits out the 60 s.
        *release.0.lock().unwrap() = true;
        release.1.notify_all();
        assert_eq!(
            waiting, 4,
            "the known key's push was answered only after the hanging read ended"
        );
        for h in std::iter::once(first).chain(more) {
            let (status, text) = h.join().unwrap();
            assert_eq!(status, 401, "{text}");
        }
    });
    // One read for the four, and the failure is remembered: no read for the next forged kid.
    let forged = token("signer.pem", "forged", |_| {});
    assert_eq!(
        push(address, Some(&forged), &envelope(&failure(5), 5)).0,
        401
    );
    assert_eq!(keys.requests().len(), 2, "{:?}", keys.requests());
    assert!(
        service.stderr().contains("cannot read the push token keys"),
        "{}",
        tail(&service.stderr())
    );
    assert_clean_exit(service.terminate());
}
