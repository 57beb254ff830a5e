//! Receivers end to end: `send-test`, and `run` delivering through a receiver that has an
//! outage. The webhook receiver is a loopback HTTP server (the real ones are unreachable
//! here); each sink's own rendering and answers are tested in `sinks/tests`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::common::emulator::Emulator;
use crate::common::http::{FakeServer, Response};
use crate::common::{self, run, stderr};

fn webhook_config(dir: &std::path::Path, url: &str) -> std::path::PathBuf {
    common::write(dir, "url", url);
    common::write(dir, "key", "signing-key-123");
    common::write(
        dir,
        "receivers.toml",
        format!(
            "[[receivers]]\nname = \"ops-hook\"\n[receivers.webhook]\nurl = {{ file = \"{}\" }}\nsigning_secret = {{ file = \"{}\" }}\n",
            dir.join("url").display(),
            dir.join("key").display()
        ),
    )
}

/// `schedwatch send-test --config CFG --receiver NAME`.
fn send_test(cfg: &std::path::Path, receiver: &str) -> std::process::Output {
    run(&[
        "send-test",
        "--config",
        cfg.to_str().unwrap(),
        "--receiver",
        receiver,
    ])
}

#[test]
fn send_test_delivers_the_sample_alert_and_reports_a_refusal() {
    let server = FakeServer::start(|_| Response::new(204));
    let dir = tempfile::tempdir().unwrap();
    let cfg = webhook_config(dir.path(), &format!("{}/hooks/schedwatch", server.url()));
    let out = send_test(&cfg, "ops-hook");
    assert!(out.status.success(), "{}", stderr(&out));
    let requests = server.requests();
    assert_eq!(requests.len(), 1);
    let alert = requests[0].json();
    assert_eq!(alert["schema"], "schedwatch.alert.v1");
    assert_eq!(alert["event"], "firing");
    assert_eq!(alert["diagnosis"]["code"], "oidc-token-for-google-api");
    assert!(requests[0]
        .header("x-schedwatch-signature")
        .is_some_and(|s| s.starts_with("sha256=")));
    // The webhook URL is a secret: never printed.
    assert!(
        !stderr(&out).contains("/hooks/schedwatch"),
        "{}",
        stderr(&out)
    );

    let refusing = FakeServer::start(|_| Response::text(400, "invalid_payload"));
    let cfg = webhook_config(dir.path(), &format!("{}/hooks/schedwatch", refusing.url()));
    let out = send_test(&cfg, "ops-hook");
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("400") && stderr(&out).contains("invalid_payload"),
        "{}",
        stderr(&out)
    );

    let out = send_test(&cfg, "nobody");
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("ops-hook"),
        "names the receivers there are: {}",
        stderr(&out)
    );
}

#[test]
fn an_outage_of_a_receiver_delays_alerts_and_loses_none() {
    // The webhook answers 503 to its first three requests, then takes everything.
    let seen = Arc::new(AtomicUsize::new(0));
    let server = {
        let seen = seen.clone();
        FakeServer::start(move |_| {
            if seen.fetch_add(1, Ordering::SeqCst) < 3 {
                Response::text(503, "maintenance")
            } else {
                Response::new(200)
            }
        })
    };
    let ex = common::shared().join("examples/oidc-to-run-job-then-fixed");
    let lines: Vec<Vec<u8>> = std::fs::read(ex.join("logs.ndjson"))
        .unwrap()
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(<[u8]>::to_vec)
        .collect();
    let emu = Emulator::start();
    emu.create_topic("acme-ops", "scheduler-logs");
    emu.create_subscription("acme-ops", "schedwatch", "scheduler-logs", 10, true);
    emu.publish_log_entries("acme-ops", "scheduler-logs", &lines);

    let dir = tempfile::tempdir().unwrap();
    let cfg = webhook_config(dir.path(), &format!("{}/hook", server.url()));
    let mut child = common::bin()
        .args([
            "run",
            "--subscription",
            "projects/acme-ops/subscriptions/schedwatch",
            "--config",
        ])
        .arg(&cfg)
        .arg("--jobs")
        .arg(ex.join("jobs"))
        .arg("--state")
        .arg(dir.path().join("state"))
        .env("PUBSUB_EMULATOR_HOST", emu.host())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("stderr")).unwrap())
        .spawn()
        .unwrap();
    // Retries wait 1 s, 2 s, 4 s (± jitter): the two alerts arrive within a minute.
    let requests = server.wait_for(Duration::from_secs(60), |r| r.len() >= 5);
    // Nothing more comes: no alert is delivered twice.
    std::thread::sleep(Duration::from_secs(2));
    let requests = {
        drop(requests);
        server.requests()
    };
    std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    let log = std::fs::read_to_string(dir.path().join("stderr")).unwrap();
    assert!(status.success(), "{log}");
    // 3 refused + firing + resolved, in order, each alert delivered once.
    let events: Vec<String> = requests
        .iter()
        .map(|r| r.json()["event"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(events.len(), 5, "{events:?}\n{log}");
    assert_eq!(&events[3..], ["firing", "resolved"], "{events:?}");
    assert!(
        events[..3].iter().all(|e| e == "firing"),
        "the refused ones were the firing alert, retried: {events:?}"
    );
    assert!(log.contains("retrying in"), "{log}");
    assert!(
        !log.contains("/hook"),
        "the webhook URL is a secret:\n{log}"
    );
}

#[test]
fn routes_send_each_alert_to_the_first_matching_route_and_hold_back_resolved() {
    let a = FakeServer::start(|_| Response::new(200));
    let b = FakeServer::start(|_| Response::new(200));
    let dir = tempfile::tempdir().unwrap();
    common::write(dir.path(), "a", format!("{}/a", a.url()));
    common::write(dir.path(), "b", format!("{}/b", b.url()));
    let demo = common::root().join("config/demo");
    let cfg = common::write(
        dir.path(),
        "routed.toml",
        format!(
            r#"[source]
path = "{logs}"
[jobs]
inventory = "{jobs}"

[[receivers]]
name = "oidc-team"
webhook = {{ url = {{ file = "{a}" }} }}
[[receivers]]
name = "everyone-else"
webhook = {{ url = {{ file = "{b}" }} }}

[[routes]]
receivers = ["oidc-team"]
match = {{ code = "oidc-token-for-google-api" }}
send_resolved = false
[[routes]]
receivers = ["everyone-else"]
"#,
            logs = demo.join("logs.ndjson").display(),
            jobs = demo.join("jobs").display(),
            a = dir.path().join("a").display(),
            b = dir.path().join("b").display(),
        ),
    );
    let out = run(&["run", "--config", cfg.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));

    // What the demo makes, from replay.
    let replay = replay_demo();
    let all = common::ndjson(&replay);
    let key = |v: &serde_json::Value| {
        (
            v["incident_id"].as_str().unwrap().to_owned(),
            v["event"].as_str().unwrap().to_owned(),
        )
    };
    let oidc = |v: &serde_json::Value| v["diagnosis"]["code"] == "oidc-token-for-google-api";
    let want_a: Vec<_> = all
        .iter()
        .filter(|v| oidc(v) && v["event"] != "resolved")
        .map(key)
        .collect();
    let want_b: Vec<_> = all.iter().filter(|v| !oidc(v)).map(key).collect();
    assert!(
        !want_a.is_empty() && !want_b.is_empty(),
        "the demo has both kinds: {all:?}"
    );
    assert!(
        all.iter().any(|v| oidc(v) && v["event"] == "resolved"),
        "the demo resolves an oidc incident"
    );
    let got = |s: &FakeServer| {
        s.requests()
            .iter()
            .map(|r| key(&r.json()))
            .collect::<Vec<_>>()
    };
    assert_eq!(got(&a), want_a);
    assert_eq!(got(&b), want_b);
}

#[test]
fn a_file_receiver_appends_every_alert_as_ndjson() {
    let dir = tempfile::tempdir().unwrap();
    let demo = common::root().join("config/demo");
    let cfg = common::write(
        dir.path(),
        "file.toml",
        format!(
            "[source]\npath = \"{}\"\n[jobs]\ninventory = \"{}\"\n[[receivers]]\nname = \"archive\"\nfile = {{ path = \"out/alerts.ndjson\" }}\n",
            demo.join("logs.ndjson").display(),
            demo.join("jobs").display()
        ),
    );
    let out = run(&["run", "--config", cfg.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let replay = replay_demo();
    // Relative to the config file; appended, not replaced, on a second run.
    let written = std::fs::read_to_string(dir.path().join("out/alerts.ndjson")).unwrap();
    assert_eq!(written, String::from_utf8(replay.stdout.clone()).unwrap());
    let again = run(&["run", "--config", cfg.to_str().unwrap()]);
    assert!(again.status.success());
    assert_eq!(
        std::fs::read_to_string(dir.path().join("out/alerts.ndjson"))
            .unwrap()
            .lines()
            .count(),
        2 * written.lines().count()
    );
}

/// `replay --format json` of the bundled demo: the alerts every receiver should see.
fn replay_demo() -> std::process::Output {
    let demo = common::root().join("config/demo");
    let out = run(&[
        "replay",
        "--jobs",
        demo.join("jobs").to_str().unwrap(),
        "--format",
        "json",
        demo.join("logs.ndjson").to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    out
}

#[test]
fn send_test_never_prints_the_secrets_a_receiver_echoes() {
    use base64::Engine as _;
    const TEAM: &str = "T01ABCDEFGH";
    const HOOK_TOKEN: &str = "abcdefGHIJKLmnopQRSTuvwx";
    const QUERY_TOKEN: &str = "q-0123456789abcdef";
    const BEARER: &str = "tok-9f8e7d6c5b4a3210";
    // A receiver (or a proxy before it) that fails and echoes what it was sent: the request
    // line raw and percent-encoded, the Authorization header, its token in base64, all in a
    // JSON body that escapes `/`.
    let server = FakeServer::start(|req| {
        let auth = req.header("authorization").unwrap_or_default().to_owned();
        let token = auth.strip_prefix("Bearer ").unwrap_or_default();
        let encoded: String = req
            .path
            .bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() {
                    char::from(b).to_string()
                } else {
                    format!("%{b:02x}")
                }
            })
            .collect();
        let body = serde_json::json!({
            "error": "upstream failed",
            "path": req.path,
            "path_encoded": encoded,
            "authorization": auth,
            "token_b64": base64::engine::general_purpose::STANDARD.encode(token),
        });
        Response::text(500, &body.to_string().replace('/', "\\/"))
    });
    let dir = tempfile::tempdir().unwrap();
    common::write(
        dir.path(),
        "url",
        format!(
            "{}/hooks/{TEAM}/{HOOK_TOKEN}?token={QUERY_TOKEN}",
            server.url()
        ),
    );
    common::write(dir.path(), "bearer", format!("Bearer {BEARER}\n"));
    let cfg = common::write(
        dir.path(),
        "receivers.toml",
        format!(
            "[[receivers]]\nname = \"ops-hook\"\n[receivers.webhook]\nurl = {{ file = \"{}\" }}\n\
             secret_headers = {{ Authorization = {{ file = \"{}\" }} }}\n",
            dir.path().join("url").display(),
            dir.path().join("bearer").display()
        ),
    );

    let out = send_test(&cfg, "ops-hook");
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    // Every echo is there, redacted: none was merely cut off.
    for field in ["path", "path_encoded", "authorization", "token_b64"] {
        assert!(
            err.contains(&format!("\"{field}\":\"[redacted]\"")),
            "{field}: {err}"
        );
    }
    let b64 = base64::engine::general_purpose::STANDARD.encode(BEARER);
    for secret in [
        TEAM,
        HOOK_TOKEN,
        QUERY_TOKEN,
        BEARER,
        &b64,
        "/hooks",
        "hooks%2f",
    ] {
        assert!(!err.contains(secret), "{secret:?} in {err}");
    }
    // The receiver did get the secrets it echoed.
    let sent = &server.requests()[0];
    assert!(sent.path.contains(QUERY_TOKEN), "{}", sent.path);
    assert_eq!(
        sent.header("authorization"),
        Some(format!("Bearer {BEARER}").as_str())
    );
}
