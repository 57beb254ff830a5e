//! Push mode (`run` with `[source.push]`): a real emulator push subscription pointed at the
//! local endpoint, the OIDC token checks with tokens signed by a test key served from a local
//! JWKS, and 2xx meaning "durable" across a kill -9.

use std::path::Path;
use std::time::Duration;

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
    let auth = bearer.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth
        .as_deref()
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
    common::write(
        dir,
        "config.toml",
        format!("[server]\nlisten = \"{address}\"\n\n[source.push]\n{push}\n"),
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
