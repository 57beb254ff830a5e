//! The HTTP sinks (Slack, webhook, PagerDuty) against real receivers on loopback.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{answer, closed_port, firing, huge_fix, repeat, resolved, Receiver, Secrets};
use schedwatch_sinks::delivery;
use schedwatch_sinks::pagerduty::{self, PagerDutyConfig, PagerDutySink, Severity};
use schedwatch_sinks::slack::{self, SlackConfig, SlackSink};
use schedwatch_sinks::webhook::{WebhookConfig, WebhookSink};
use schedwatch_sinks::{Alert, DeliveryError, Sink};
use serde_json::{json, Value};

/// The secret part of every test webhook URL: it must never show up in errors or Debug.
const URL_TOKEN: &str = "T0000/B0000/XXXXsecretXXXX";
const ROUTING_KEY: &str = "R0UT1NGKEYsecret0000000000000000";

fn slack_sink(receiver_url: &str) -> SlackSink {
    let secrets = Secrets::new();
    let config = SlackConfig {
        webhook_url: secrets.file("slack", &format!("{receiver_url}/services/{URL_TOKEN}")),
        timeout: Duration::from_secs(5),
    };
    SlackSink::new("sre-slack", &config).unwrap()
}

fn pagerduty_sink(endpoint: &str, severity_by_code: BTreeMap<String, Severity>) -> PagerDutySink {
    let secrets = Secrets::new();
    let config = PagerDutyConfig {
        routing_key: secrets.file("pd", ROUTING_KEY),
        endpoint: endpoint.to_owned(),
        severity_by_code,
        timeout: Duration::from_secs(5),
    };
    PagerDutySink::new("pager", &config).unwrap()
}

fn reason(e: &DeliveryError) -> &str {
    match e {
        DeliveryError::Retryable { reason, .. } | DeliveryError::Permanent { reason } => reason,
    }
}

// ---- Slack: the message ----

/// Checks a message against Block Kit's shape and Slack's limits, returning every text in it.
fn check_block_kit(message: &Value) -> Vec<String> {
    let len = |s: &str| s.encode_utf16().count();
    let mut texts = Vec::new();
    let text = message["text"].as_str().expect("a top-level text fallback");
    assert!(!text.is_empty() && len(text) <= 3000);
    texts.push(text.to_owned());
    let blocks = message["blocks"].as_array().expect("blocks");
    assert!(!blocks.is_empty() && blocks.len() <= slack::MAX_BLOCKS);
    assert_eq!(blocks[0]["type"], "header");
    for block in blocks {
        match block["type"].as_str().unwrap() {
            "header" => {
                assert_eq!(block["text"]["type"], "plain_text");
                let t = block["text"]["text"].as_str().unwrap();
                assert!(!t.is_empty() && len(t) <= 150, "header of {} units", len(t));
                texts.push(t.to_owned());
            }
            "section" => {
                assert!(block.get("text").is_some() || block.get("fields").is_some());
                if let Some(text) = block.get("text") {
                    assert_eq!(text["type"], "mrkdwn");
                    let t = text["text"].as_str().unwrap();
                    assert!(
                        !t.is_empty() && len(t) <= 3000,
                        "section of {} units",
                        len(t)
                    );
                    texts.push(t.to_owned());
                }
                if let Some(fields) = block.get("fields") {
                    let fields = fields.as_array().unwrap();
                    assert!(!fields.is_empty() && fields.len() <= 10);
                    for f in fields {
                        assert_eq!(f["type"], "mrkdwn");
                        let t = f["text"].as_str().unwrap();
                        assert!(!t.is_empty() && len(t) <= 2000);
                        texts.push(t.to_owned());
                    }
                }
            }
            "context" => {
                let elements = block["elements"].as_array().unwrap();
                assert!(!elements.is_empty() && elements.len() <= 10);
                for e in elements {
                    let t = e["text"].as_str().unwrap();
                    assert!(!t.is_empty() && len(t) <= 3000);
                    texts.push(t.to_owned());
                }
            }
            "divider" => {}
            other => panic!("unexpected block type {other}"),
        }
    }
    texts
}

#[test]
fn slack_messages_are_block_kit_within_limits() {
    for alert in [firing(), repeat(), resolved(), huge_fix()] {
        check_block_kit(&slack::render(&alert));
    }
}

#[test]
fn slack_firing_has_cause_details_fix_runbook_and_fallback() {
    let alert = firing();
    let message = slack::render(&alert);
    let texts = check_block_kit(&message);
    let all = texts.join("\n");

    assert_eq!(
        message["text"],
        ":rotating_light: FIRING acme-data-prod/us-east1/commit-worker: \
         oidc-token-for-google-api (5 failures)"
    );
    let header = message["blocks"][0]["text"]["text"].as_str().unwrap();
    assert!(header.starts_with(":rotating_light: FIRING"));
    assert!(header.contains("commit-worker") && header.contains("oidc-token-for-google-api"));

    for wanted in [
        "5 failures",
        "2026-11-20 09:00:01 UTC",
        "2026-11-20 09:20:03 UTC",
        "HTTP 401",
        "google_api",
        "token: `oidc`",
        "scheduler-invoker@acme-data-prod.iam.gserviceaccount.com",
        "audience: `https://run.googleapis.com/`",
        "from inventory",
    ] {
        assert!(all.contains(wanted), "{wanted:?} missing from\n{all}");
    }
    let gcloud = format!("```\n{}\n```", alert.fix.gcloud);
    assert!(
        texts.iter().any(|t| t.contains(&gcloud)),
        "gcloud fix in a code block"
    );
    assert!(texts
        .iter()
        .any(|t| t.contains("```\nresource \"google_cloud_scheduler_job\"")));
    assert!(all.contains(
        "<https://github.com/acme/schedwatch/blob/main/docs/runbook.md#oidc-token-for-google-api\
         |oidc-token-for-google-api>"
    ));
    assert!(all.contains("4f1c2a9e7b3d5c01"), "the incident id");
}

#[test]
fn slack_repeat_and_resolved_say_what_they_are() {
    let message = slack::render(&repeat());
    let texts = check_block_kit(&message);
    assert!(
        texts[1].starts_with(":repeat: STILL FAILING (repeat)"),
        "{}",
        texts[1]
    );
    assert!(message["text"]
        .as_str()
        .unwrap()
        .starts_with(":repeat: STILL FAILING (repeat)"));
    assert!(
        texts.join("\n").contains("```"),
        "a repeat still carries the fix"
    );

    let message = slack::render(&resolved());
    let texts = check_block_kit(&message);
    let all = texts.join("\n");
    assert!(
        texts[1].starts_with(":white_check_mark: RESOLVED"),
        "{}",
        texts[1]
    );
    assert!(message["text"]
        .as_str()
        .unwrap()
        .starts_with(":white_check_mark: RESOLVED"));
    assert!(all.contains("2026-11-20 14:00:01 UTC"), "resolved_at shown");
    assert!(
        !all.contains("```") && !all.contains("gcloud scheduler"),
        "no fix on resolved"
    );
}

#[test]
fn slack_cuts_a_20000_character_fix_cleanly() {
    let message = slack::render(&huge_fix());
    let texts = check_block_kit(&message);
    let fixes: Vec<&String> = texts.iter().filter(|t| t.starts_with("*Fix: ")).collect();
    assert_eq!(fixes.len(), 2);
    for fix in fixes {
        assert!(
            fix.ends_with(&format!("\n```\n_{}_", slack::TRUNCATION_NOTE)),
            "{fix}"
        );
        // Whole lines only: the line before the closing fence is complete.
        let lines: Vec<&str> = fix.lines().collect();
        let last = lines[lines.len() - 3];
        assert!(
            last.ends_with("--x=&lt;a&amp;b&gt;") || last == "# terraform &amp; more",
            "{last:?}"
        );
        assert!(
            fix.encode_utf16().count() > 2500,
            "the block is used, not emptied"
        );
    }
}

#[test]
fn slack_escapes_log_derived_text() {
    let body = serde_json::to_string(&slack::render(&firing())).unwrap();
    assert!(!body.contains("<!channel>") && body.contains("&lt;!channel&gt;"));
    assert!(body.contains("Google API &amp; rejects"));
    assert!(body.contains("commit-worker:run?a=1&amp;b=&lt;2&gt;"));
    // The only `<` left open a link we made: the runbook.
    let texts = check_block_kit(&slack::render(&firing()));
    for t in texts {
        for (i, _) in t.match_indices('<') {
            assert!(
                t[i..].starts_with("<https://github.com/acme/"),
                "unescaped < in {t}"
            );
        }
    }
}

/// The firing message, checked in as an insta snapshot in `tests/snapshots/`. A difference
/// fails the test and writes nothing (`.config/insta.yaml`); after a deliberate change,
/// `INSTA_UPDATE=always cargo test -p schedwatch-sinks` rewrites it for review in the diff.
#[test]
fn slack_firing_snapshot() {
    let message = serde_json::to_string_pretty(&slack::render(&firing())).unwrap();
    insta::with_settings!({prepend_module_to_snapshot => false}, {
        insta::assert_snapshot!("slack_firing", message);
    });
}

// ---- Slack: delivery ----

#[tokio::test]
async fn slack_posts_the_message_and_keeps_one_second_between_sends() {
    let receiver = Receiver::start(answer(200, "ok"));
    let sink = slack_sink(&receiver.url(""));
    assert_eq!(sink.name(), "sre-slack");
    sink.send(&firing()).await.unwrap();
    sink.send(&repeat()).await.unwrap();

    let requests = receiver.requests();
    assert_eq!(requests.len(), 2);
    let (first, second) = (&requests[0], &requests[1]);
    assert_eq!(first.method, "POST");
    assert_eq!(first.path, format!("/services/{URL_TOKEN}"));
    assert_eq!(first.header("content-type"), Some("application/json"));
    assert_eq!(first.json(), slack::render(&firing()));
    assert_eq!(second.json(), slack::render(&repeat()));
    let gap = second.at.duration_since(first.at);
    assert!(gap >= Duration::from_secs(1), "sends {gap:?} apart");
}

#[tokio::test]
async fn slack_answers_map_to_retry_decisions() {
    let cases = [
        (answer(500, "internal_error"), "500"),
        (
            answer(429, "rate_limited").header("Retry-After", "3"),
            "429",
        ),
        (answer(400, "invalid_payload"), "400"),
        (answer(404, "no_service"), "404"),
    ];
    let mut outcomes = Vec::new();
    for (answer, _) in &cases {
        // One receiver each: a webhook's one-message-a-second pacing is not what is tested.
        let receiver = Receiver::start(answer.clone());
        let sink = slack_sink(&receiver.url(""));
        outcomes.push(sink.send(&firing()).await.unwrap_err());
    }
    for (e, (_, status)) in outcomes.iter().zip(&cases) {
        assert!(
            reason(e).contains(&format!("Slack answered HTTP {status}")),
            "{e}"
        );
        assert!(!reason(e).contains("secret"), "{e}");
    }
    assert!(matches!(
        outcomes[0],
        DeliveryError::Retryable { after: None, .. }
    ));
    assert!(matches!(
        outcomes[1],
        DeliveryError::Retryable { after: Some(d), .. } if d == Duration::from_secs(3)
    ));
    assert!(
        matches!(&outcomes[2], DeliveryError::Permanent { reason } if reason.contains("invalid_payload"))
    );
    assert!(
        matches!(&outcomes[3], DeliveryError::Permanent { reason } if reason.contains("no_service"))
    );
}

#[tokio::test]
async fn slack_holds_the_next_send_for_a_retry_after() {
    let receiver = Receiver::start(answer(200, "ok"));
    receiver.answer_next(answer(429, "rate_limited").header("Retry-After", "2"));
    let sink = slack_sink(&receiver.url(""));
    assert!(sink.send(&firing()).await.unwrap_err().is_retryable());
    sink.send(&firing()).await.unwrap();
    let requests = receiver.requests();
    let gap = requests[1].at.duration_since(requests[0].at);
    assert!(
        gap >= Duration::from_secs(2),
        "sent again {gap:?} after a Retry-After: 2"
    );
}

// ---- Webhook ----

/// HMAC-SHA256 written from RFC 2104, independent of the sink's `hmac` crate.
fn hmac_sha256(key: &[u8], message: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    let mut block = [0u8; 64];
    if key.len() > 64 {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let pad = |byte: u8| block.iter().map(|b| b ^ byte).collect::<Vec<u8>>();
    let inner = Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(message)
        .finalize();
    let outer = Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize();
    outer.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn the_test_hmac_matches_rfc_4231() {
    assert_eq!(
        hmac_sha256(b"Jefe", b"what do ya want for nothing?"),
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    );
}

const SIGNING_KEY: &str = "signing-key-secret-0123456789";
const HOOK_TOKEN: &str = "Bearer hook-token-secret-abcdef";

fn webhook_config(secrets: &Secrets, url: &str) -> WebhookConfig {
    WebhookConfig {
        url: secrets.file("url", url),
        signing_secret: Some(secrets.file("signing", SIGNING_KEY)),
        headers: BTreeMap::from([("X-Team".to_owned(), "sre".to_owned())]),
        secret_headers: BTreeMap::from([(
            "Authorization".to_owned(),
            secrets.file("token", HOOK_TOKEN),
        )]),
        timeout: Duration::from_secs(5),
    }
}

#[tokio::test]
async fn webhook_posts_the_contract_json_signed_with_its_headers() {
    let receiver = Receiver::start(answer(204, ""));
    let secrets = Secrets::new();
    let sink = WebhookSink::new(
        "ops-hook",
        &webhook_config(&secrets, &receiver.url(&format!("/hooks/{URL_TOKEN}?x=1"))),
    )
    .unwrap();
    for alert in [firing(), repeat(), resolved()] {
        sink.send(&alert).await.unwrap();
    }

    let requests = receiver.requests();
    assert_eq!(requests.len(), 3);
    for (request, alert) in requests.iter().zip([firing(), repeat(), resolved()]) {
        assert_eq!(request.method, "POST");
        assert_eq!(request.path, format!("/hooks/{URL_TOKEN}?x=1"));
        assert_eq!(request.body, serde_json::to_vec(&alert).unwrap());
        assert_eq!(request.header("content-type"), Some("application/json"));
        let signature = format!(
            "sha256={}",
            hmac_sha256(SIGNING_KEY.as_bytes(), &request.body)
        );
        assert_eq!(
            request.header("x-schedwatch-signature"),
            Some(signature.as_str())
        );
        assert_eq!(
            request.header("x-schedwatch-event"),
            Some(alert.event.as_str())
        );
        let delivery = format!(
            "4f1c2a9e7b3d5c01:{}:{}",
            alert.event.as_str(),
            alert.failure.count
        );
        assert_eq!(
            request.header("x-schedwatch-delivery"),
            Some(delivery.as_str())
        );
        assert_eq!(request.header("x-team"), Some("sre"));
        assert_eq!(request.header("authorization"), Some(HOOK_TOKEN));
    }
    assert_eq!(requests[2].json()["resolved_at"], "2026-11-20T14:00:01Z");
    assert_eq!(
        requests[1].header("x-schedwatch-delivery"),
        Some("4f1c2a9e7b3d5c01:repeat:12")
    );
}

/// The body exactly as sent (the CONTRACT section 4 JSON, one line), checked in as insta
/// snapshots (see `slack_firing_snapshot`).
#[test]
fn webhook_body_snapshots() {
    let body = |alert| String::from_utf8(schedwatch_sinks::webhook::body(&alert)).unwrap();
    insta::with_settings!({prepend_module_to_snapshot => false}, {
        insta::assert_snapshot!("webhook_firing", body(firing()));
        insta::assert_snapshot!("webhook_resolved", body(resolved()));
    });
}

#[tokio::test]
async fn webhook_without_signing_secret_sends_no_signature() {
    let receiver = Receiver::start(answer(200, "{}"));
    let secrets = Secrets::new();
    let mut config = webhook_config(&secrets, &receiver.url("/hook"));
    config.signing_secret = None;
    WebhookSink::new("h", &config)
        .unwrap()
        .send(&firing())
        .await
        .unwrap();
    assert_eq!(
        receiver.requests()[0].header("x-schedwatch-signature"),
        None
    );
}

#[tokio::test]
async fn webhook_secrets_stay_out_of_debug_and_errors() {
    // The receiver echoes a secret back: the quoted answer must not carry it.
    let receiver = Receiver::start(answer(
        500,
        &format!("cannot handle {HOOK_TOKEN} for /hooks/{URL_TOKEN}"),
    ));
    receiver.answer_next(answer(400, "bad"));
    let secrets = Secrets::new();
    let sink = WebhookSink::new(
        "ops-hook",
        &webhook_config(&secrets, &receiver.url(&format!("/hooks/{URL_TOKEN}"))),
    )
    .unwrap();

    let debug = format!("{sink:?}");
    let permanent = sink.send(&firing()).await.unwrap_err();
    let retryable = sink.send(&firing()).await.unwrap_err();
    assert!(
        matches!(permanent, DeliveryError::Permanent { .. }),
        "{permanent}"
    );
    assert!(retryable.is_retryable(), "{retryable}");
    assert!(reason(&retryable).contains("[redacted]"), "{retryable}");
    for text in [debug, reason(&permanent).to_owned(), retryable.to_string()] {
        for secret in [URL_TOKEN, SIGNING_KEY, HOOK_TOKEN, "hook-token-secret"] {
            assert!(!text.contains(secret), "{secret:?} in {text}");
        }
    }
}

#[test]
fn webhook_config_mistakes_are_named_without_secrets() {
    let secrets = Secrets::new();
    let mut config = webhook_config(&secrets, "not a url with secret-in-it");
    let e = WebhookSink::new("h", &config).unwrap_err().to_string();
    assert!(e.contains("url") && !e.contains("secret-in-it"), "{e}");

    config = webhook_config(&secrets, "https://example.com/x");
    config
        .headers
        .insert("Content-Type".into(), "text/plain".into());
    let e = WebhookSink::new("h", &config).unwrap_err().to_string();
    assert!(
        e.contains("Content-Type") && e.contains("set by schedwatch"),
        "{e}"
    );

    config = webhook_config(&secrets, "https://example.com/x");
    config
        .secret_headers
        .insert("X-Key".into(), secrets.file("bad", "line1\u{7f}line2"));
    let e = WebhookSink::new("h", &config).unwrap_err().to_string();
    assert!(e.contains("X-Key") && !e.contains("line1"), "{e}");

    let missing: Result<WebhookConfig, _> = serde_json::from_value(json!({}));
    assert!(missing.unwrap_err().to_string().contains("url"));
    let unknown: Result<WebhookConfig, _> =
        serde_json::from_value(json!({"url": {"env": "X"}, "sign": {"env": "Y"}}));
    assert!(unknown
        .unwrap_err()
        .to_string()
        .contains("unknown field `sign`"));
    let parsed: WebhookConfig = serde_json::from_value(json!({
        "url": {"env": "HOOK_URL"},
        "headers": {"X-Team": "sre"},
        "secret_headers": {"Authorization": {"env": "HOOK_TOKEN"}},
        "timeout": "2500ms",
    }))
    .unwrap();
    assert_eq!(parsed.timeout, Duration::from_millis(2500));
    assert_eq!(parsed.signing_secret, None);
    let default: WebhookConfig = serde_json::from_value(json!({"url": {"env": "U"}})).unwrap();
    assert_eq!(default.timeout, Duration::from_secs(10));
    let bad_timeout: Result<WebhookConfig, _> =
        serde_json::from_value(json!({"url": {"env": "U"}, "timeout": "10 parsecs"}));
    assert!(bad_timeout.unwrap_err().to_string().contains("timeout"));
}

#[tokio::test]
async fn a_receiver_that_hangs_times_out_as_retryable() {
    let receiver = Receiver::start(answer(200, "late").after(Duration::from_secs(3)));
    let secrets = Secrets::new();
    let mut config = webhook_config(&secrets, &receiver.url(&format!("/hooks/{URL_TOKEN}")));
    config.timeout = Duration::from_millis(200);
    let e = WebhookSink::new("h", &config)
        .unwrap()
        .send(&firing())
        .await
        .unwrap_err();
    assert!(e.is_retryable() && reason(&e).contains("timed out"), "{e}");
    assert!(!e.to_string().contains(URL_TOKEN), "{e}");
}

// ---- PagerDuty ----

const PD_ACCEPTED: &str =
    r#"{"status":"success","message":"Event processed","dedup_key":"4f1c2a9e7b3d5c01"}"#;

#[tokio::test]
async fn pagerduty_triggers_on_firing_and_resolves_on_resolved() {
    let receiver = Receiver::start(answer(202, PD_ACCEPTED));
    let sink = pagerduty_sink(&receiver.url("/"), BTreeMap::new());
    for alert in [firing(), repeat(), resolved()] {
        sink.send(&alert).await.unwrap();
    }

    let requests = receiver.requests();
    assert_eq!(requests.len(), 3);
    for r in &requests {
        assert_eq!(
            (r.method.as_str(), r.path.as_str()),
            ("POST", "/v2/enqueue")
        );
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert_eq!(r.json()["routing_key"], ROUTING_KEY);
        assert_eq!(r.json()["dedup_key"], "4f1c2a9e7b3d5c01");
    }
    let trigger = requests[0].json();
    assert_eq!(trigger["event_action"], "trigger");
    let payload = &trigger["payload"];
    assert_eq!(
        payload["summary"],
        "acme-data-prod/us-east1/commit-worker: oidc-token-for-google-api — The job sends an OIDC \
         token to a Google API, which accepts only OAuth access tokens."
    );
    assert_eq!(
        payload["source"],
        "projects/acme-data-prod/locations/us-east1/jobs/commit-worker"
    );
    assert_eq!(payload["severity"], "error");
    assert_eq!(payload["component"], "acme-data-prod");
    assert_eq!(payload["group"], "us-east1");
    assert_eq!(payload["class"], "oidc-token-for-google-api");
    assert_eq!(payload["timestamp"], "2026-11-20T09:20:03Z");
    assert_eq!(
        payload["custom_details"],
        serde_json::to_value(firing()).unwrap()
    );
    assert!(payload["custom_details"]["fix"]["gcloud"]
        .as_str()
        .unwrap()
        .starts_with("gcloud scheduler jobs update http commit-worker"));
    assert_eq!(
        trigger["links"],
        json!([{
            "href": "https://github.com/acme/schedwatch/blob/main/docs/runbook.md#oidc-token-for-google-api",
            "text": "Runbook: oidc-token-for-google-api",
        }])
    );

    assert_eq!(
        requests[1].json()["event_action"],
        "trigger",
        "a repeat re-triggers"
    );
    assert_eq!(
        requests[2].json(),
        json!({"routing_key": ROUTING_KEY, "event_action": "resolve", "dedup_key": "4f1c2a9e7b3d5c01"})
    );
}

/// The trigger and resolve events, checked in as insta snapshots (see `slack_firing_snapshot`).
#[test]
fn pagerduty_event_snapshots() {
    let none = BTreeMap::new();
    let trigger = serde_json::to_string_pretty(&pagerduty::render(&firing(), &none)).unwrap();
    let resolve = serde_json::to_string_pretty(&pagerduty::render(&resolved(), &none)).unwrap();
    insta::with_settings!({prepend_module_to_snapshot => false}, {
        insta::assert_snapshot!("pagerduty_trigger", trigger);
        insta::assert_snapshot!("pagerduty_resolve", resolve);
    });
}

#[test]
fn pagerduty_severity_follows_confidence_unless_configured() {
    let none = BTreeMap::new();
    let confirmed = firing();
    let mut likely = firing();
    likely.diagnosis.confidence = "likely".into();
    likely.diagnosis.code = "permission-denied-invoker".into();
    assert_eq!(pagerduty::severity(&confirmed, &none), Severity::Error);
    assert_eq!(pagerduty::severity(&likely, &none), Severity::Warning);

    let config: PagerDutyConfig = serde_json::from_value(json!({
        "routing_key": {"env": "PD_KEY"},
        "severity_by_code": {"oidc-token-for-google-api": "critical", "permission-denied-invoker": "info"},
    }))
    .unwrap();
    assert_eq!(config.endpoint, pagerduty::DEFAULT_ENDPOINT);
    assert_eq!(config.timeout, Duration::from_secs(10));
    assert_eq!(
        pagerduty::severity(&confirmed, &config.severity_by_code),
        Severity::Critical
    );
    assert_eq!(
        pagerduty::severity(&likely, &config.severity_by_code),
        Severity::Info
    );
    let event = pagerduty::render(&confirmed, &config.severity_by_code);
    assert_eq!(event["payload"]["severity"], "critical");
    assert!(
        event.get("routing_key").is_none(),
        "render leaves the secret out"
    );

    let bad: Result<PagerDutyConfig, _> = serde_json::from_value(json!({
        "routing_key": {"env": "PD_KEY"}, "severity_by_code": {"x": "page-everyone"},
    }));
    assert!(bad.is_err());
}

#[test]
fn pagerduty_summary_is_at_most_1024_characters() {
    let mut alert = firing();
    alert.diagnosis.summary = "é".repeat(3000);
    let summary = pagerduty::summary(&alert);
    assert_eq!(summary.chars().count(), pagerduty::MAX_SUMMARY);
    assert!(summary.ends_with('…'));
}

#[tokio::test]
async fn pagerduty_answers_map_to_retry_decisions() {
    let receiver = Receiver::start(answer(202, PD_ACCEPTED));
    receiver.answer_next(answer(
        400,
        r#"{"status":"invalid event","message":"Event object is invalid","errors":["Length of 'routing_key' is incorrect"]}"#,
    ));
    receiver.answer_next(answer(429, "").header("Retry-After", "5"));
    receiver.answer_next(answer(503, "unavailable"));
    let sink = pagerduty_sink(&receiver.url(""), BTreeMap::new());

    let e = sink.send(&firing()).await.unwrap_err();
    assert!(
        matches!(&e, DeliveryError::Permanent { reason } if reason.contains("HTTP 400")),
        "{e}"
    );
    let e = sink.send(&firing()).await.unwrap_err();
    assert!(
        matches!(e, DeliveryError::Retryable { after: Some(d), .. } if d == Duration::from_secs(5))
    );
    assert!(sink.send(&firing()).await.unwrap_err().is_retryable());
    sink.send(&firing()).await.unwrap();
    assert!(!format!("{sink:?}").contains(ROUTING_KEY));
}

#[test]
fn pagerduty_refuses_a_bad_endpoint() {
    let secrets = Secrets::new();
    let config = PagerDutyConfig {
        routing_key: secrets.file("pd", ROUTING_KEY),
        endpoint: "events.pagerduty.com".into(),
        severity_by_code: BTreeMap::new(),
        timeout: Duration::from_secs(1),
    };
    let e = PagerDutySink::new("p", &config).unwrap_err().to_string();
    assert!(
        e.contains("events.pagerduty.com") && !e.contains(ROUTING_KEY),
        "{e}"
    );
}

// ---- Secrets on transport errors ----

#[tokio::test]
async fn refused_connections_are_retryable_and_name_no_secret() {
    let base = format!("http://127.0.0.1:{}", closed_port());
    let secrets = Secrets::new();
    let webhook = WebhookSink::new(
        "h",
        &webhook_config(&secrets, &format!("{base}/hooks/{URL_TOKEN}")),
    )
    .unwrap();
    let sinks: Vec<Box<dyn Sink>> = vec![
        Box::new(slack_sink(&base)),
        Box::new(webhook),
        Box::new(pagerduty_sink(&base, BTreeMap::new())),
    ];
    let alert: Alert = firing();
    for sink in &sinks {
        let e = sink.send(&alert).await.unwrap_err();
        assert!(e.is_retryable(), "{}: {e}", sink.name());
        assert!(
            reason(&e).contains("connection failed"),
            "{}: {e}",
            sink.name()
        );
        let text = format!("{e} {e:?}");
        for secret in [
            URL_TOKEN,
            ROUTING_KEY,
            SIGNING_KEY,
            HOOK_TOKEN,
            "/services/",
            "/hooks/",
        ] {
            assert!(
                !text.contains(secret),
                "{secret:?} in {}: {text}",
                sink.name()
            );
        }
    }
}

#[test]
fn build_errors_name_the_setting_not_the_value() {
    let secrets = Secrets::new();
    let e = SlackSink::new(
        "s",
        &SlackConfig {
            webhook_url: secrets.file("s", "hooks.slack.com/services/T/B/secret-part"),
            timeout: Duration::from_secs(1),
        },
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("webhook_url") && !e.contains("secret-part"),
        "{e}"
    );

    let unset = schedwatch_sinks::SecretRef {
        env: Some("SCHEDWATCH_TEST_SLACK_UNSET".into()),
        file: None,
    };
    let e = SlackSink::new(
        "s",
        &SlackConfig {
            webhook_url: unset,
            timeout: Duration::from_secs(1),
        },
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("SCHEDWATCH_TEST_SLACK_UNSET"), "{e}");

    let config: Result<SlackConfig, _> =
        serde_json::from_value(json!({"webhook_url": {"env": "W"}, "channel": "#sre"}));
    assert!(config
        .unwrap_err()
        .to_string()
        .contains("unknown field `channel`"));
}

// ---- A receiver that echoes the secrets it was sent ----
//
// Each answer quotes one secret (or a few) in every form `common::echoes` knows, and is short
// enough once redacted to be quoted whole: so each form is shown to be redacted, not merely cut
// off by the quote's length limit.

/// A Slack webhook's parts as Slack shapes them: team id, bot id, token.
const SLACK_TEAM: &str = "T01ABCDEFGH";
const SLACK_BOT: &str = "B02ABCDEFGH";
const SLACK_TOKEN: &str = "abcdefGHIJKLmnopQRSTuvwx";

/// The quoted answer in a delivery error: what is between the first and the last `"`.
fn quoted(e: &DeliveryError) -> &str {
    let r = reason(e);
    let start = r.find('"').map_or(0, |i| i + 1);
    let end = r.rfind('"').unwrap_or(r.len());
    &r[start..end.max(start)]
}

#[tokio::test]
async fn slack_redacts_its_webhook_url_in_every_form_a_receiver_echoes() {
    let path = format!("/services/{SLACK_TEAM}/{SLACK_BOT}/{SLACK_TOKEN}");
    let mut all = vec![SLACK_TOKEN.to_owned(), path.clone()];
    for (i, status) in [400, 500, 404, 503, 403].into_iter().enumerate() {
        // One receiver (one webhook URL) each: Slack's pacing is not what is tested.
        let receiver = Receiver::start(answer(200, "ok"));
        let url = receiver.url(&path);
        let echoed: Vec<String> = match i {
            0 => vec![SLACK_TOKEN.into()],
            1 => vec![SLACK_TEAM.into(), SLACK_BOT.into()],
            2 => vec![path.clone()],
            3 => vec![url.clone()],
            // The path as a relative reference.
            _ => vec![path[1..].to_owned()],
        };
        all.push(url.clone());
        let echoed: Vec<&str> = echoed.iter().map(String::as_str).collect();
        receiver.answer_next(answer(status, &common::echo_body(&echoed)));
        let sink = SlackSink::new(
            "sre-slack",
            &SlackConfig {
                webhook_url: Secrets::new().file("slack", &url),
                timeout: Duration::from_secs(5),
            },
        )
        .unwrap();
        let e = sink.send(&firing()).await.unwrap_err();
        assert!(reason(&e).contains(&format!("HTTP {status}")), "{e}");
        assert_eq!(quoted(&e), common::echo_redacted(&echoed), "{e}");
        let shown = format!("{e} {e:?} {sink:?}");
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        common::assert_no_secret(&shown, &all);
        common::assert_no_secret(&shown, &[SLACK_TEAM, SLACK_BOT]);
    }
}

const QUERY_TOKEN: &str = "q-0123456789abcdef";
const BEARER: &str = "tok-9f8e7d6c5b4a3210";
const BASIC_USER: &str = "svc-alerts";
const BASIC_PASSWORD: &str = "pa55 w0rd/+&x";

#[tokio::test]
async fn webhook_redacts_url_token_headers_and_signing_key_in_every_form() {
    let receiver = Receiver::start(answer(204, ""));
    let url = receiver.url(&format!(
        "/hooks/{SLACK_TEAM}/{SLACK_TOKEN}?token={QUERY_TOKEN}&team=sre"
    ));
    let basic = {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(format!("{BASIC_USER}:{BASIC_PASSWORD}"))
    };
    let secrets = Secrets::new();
    let config = WebhookConfig {
        url: secrets.file("url", &url),
        signing_secret: Some(secrets.file("signing", SIGNING_KEY)),
        headers: BTreeMap::new(),
        secret_headers: BTreeMap::from([
            (
                "Authorization".to_owned(),
                secrets.file("bearer", &format!("Bearer {BEARER}")),
            ),
            (
                "Proxy-Authorization".to_owned(),
                secrets.file("basic", &format!("Basic {basic}")),
            ),
        ]),
        timeout: Duration::from_secs(5),
    };
    let sink = WebhookSink::new("ops-hook", &config).unwrap();
    let bearer_header = format!("Bearer {BEARER}");
    let basic_header = format!("Basic {basic}");
    let user_password = format!("{BASIC_USER}:{BASIC_PASSWORD}");
    let cases: Vec<Vec<&str>> = vec![
        vec![&url],
        vec![QUERY_TOKEN, SLACK_TOKEN],
        vec![SLACK_TEAM],
        vec![&bearer_header],
        vec![BEARER],
        vec![&basic_header],
        vec![&user_password],
        vec![BASIC_PASSWORD, BASIC_USER],
        vec![SIGNING_KEY],
    ];
    let mut everything: Vec<&str> = cases.iter().flatten().copied().collect();
    everything.push(&basic);
    for (i, echoed) in cases.iter().enumerate() {
        let status = if i % 2 == 0 { 401 } else { 502 };
        receiver.answer_next(answer(status, &common::echo_body(echoed)));
        let e = sink.send(&firing()).await.unwrap_err();
        assert_eq!(e.is_retryable(), status == 502, "{e}");
        assert_eq!(quoted(&e), common::echo_redacted(echoed), "{e}");
        common::assert_no_secret(&format!("{e} {e:?} {sink:?}"), &everything);
    }
    // What the requests carried is what was redacted.
    let sent = &receiver.requests()[0];
    assert_eq!(sent.header("authorization"), Some(bearer_header.as_str()));
    assert_eq!(
        sent.header("proxy-authorization"),
        Some(basic_header.as_str())
    );
    assert!(sent.path.contains(QUERY_TOKEN), "{}", sent.path);
}

#[tokio::test]
async fn pagerduty_redacts_its_routing_key_in_every_form() {
    let receiver = Receiver::start(answer(202, PD_ACCEPTED));
    for status in [400, 500] {
        receiver.answer_next(answer(status, &common::echo_body(&[ROUTING_KEY])));
    }
    let sink = pagerduty_sink(&receiver.url(""), BTreeMap::new());
    for _ in 0..2 {
        let e = sink.send(&firing()).await.unwrap_err();
        assert_eq!(quoted(&e), common::echo_redacted(&[ROUTING_KEY]), "{e}");
        common::assert_no_secret(&format!("{e} {e:?}"), &[ROUTING_KEY]);
    }
    // The key was sent, so the receiver had it to echo.
    let request = String::from_utf8(receiver.requests()[0].body.clone()).unwrap();
    assert!(request.contains(ROUTING_KEY));
}

#[tokio::test]
async fn an_answer_is_quoted_short_and_cannot_forge_a_log_line() {
    let receiver = Receiver::start(answer(204, ""));
    receiver.answer_next(answer(
        500,
        "oops\n2026-11-20T09:00:00Z INFO schedwatch: all good\r\u{1b}[2J\u{202e}",
    ));
    receiver.answer_next(answer(500, &"<html>".repeat(2000)));
    // A secret that starts before the quote's end and runs past it.
    receiver.answer_next(answer(
        400,
        &format!("{}{BEARER}", "x".repeat(delivery::MAX_QUOTED - 4)),
    ));
    let secrets = Secrets::new();
    let mut config = webhook_config(&secrets, &receiver.url("/hook"));
    config.secret_headers = BTreeMap::from([(
        "Authorization".to_owned(),
        secrets.file("bearer", &format!("Bearer {BEARER}")),
    )]);
    let sink = WebhookSink::new("h", &config).unwrap();

    let e = sink.send(&firing()).await.unwrap_err().to_string();
    assert!(!e.contains(['\n', '\r', '\u{1b}', '\u{202e}']), "{e:?}");
    assert!(
        e.contains(r"oops\n2026-11-20T09:00:00Z INFO schedwatch: all good\r\u{1b}[2J\u{202e}"),
        "{e}"
    );
    let e = sink.send(&firing()).await.unwrap_err();
    assert!(
        quoted(&e).len() <= delivery::MAX_QUOTED + '…'.len_utf8() && quoted(&e).ends_with('…'),
        "{e}"
    );
    let e = sink.send(&firing()).await.unwrap_err();
    assert!(!reason(&e).contains("tok-"), "{e}");
}
