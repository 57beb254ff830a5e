//! The seed case end to end, field by field against CONTRACT section 4. (Every scenario's
//! decisions are compared with the reference model in `scenarios`.)

use crate::common::{self, run, stderr};

#[test]
fn the_seed_case_alert_follows_the_contract_field_by_field() {
    let ex = common::shared().join("examples/oidc-to-run-job-then-fixed");
    let out = run(&[
        "replay",
        "--jobs",
        ex.join("jobs").to_str().unwrap(),
        "--format",
        "json",
        ex.join("logs.ndjson").to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let alerts = common::ndjson(&out);
    assert_eq!(alerts.len(), 2);
    let (firing, resolved) = (&alerts[0], &alerts[1]);
    assert_eq!(firing["schema"], "schedwatch.alert.v1");
    assert_eq!(firing["event"], "firing");
    assert_eq!(
        firing["job"],
        serde_json::json!({"name": "projects/acme-data-prod/locations/us-east1/jobs/commit-worker", "project": "acme-data-prod", "location": "us-east1", "id": "commit-worker"})
    );
    assert_eq!(firing["failure"]["class"], "unauthenticated");
    assert_eq!(firing["failure"]["status"], "UNAUTHENTICATED");
    assert_eq!(firing["failure"]["http_status"], 401);
    assert_eq!(firing["failure"]["count"], 1);
    assert_eq!(firing["failure"]["first_at"], "2026-11-20T09:00:01.464Z");
    assert_eq!(firing["failure"]["last_at"], "2026-11-20T09:00:01.464Z");
    assert_eq!(firing["target"]["kind"], "google_api");
    assert!(firing["target"]["url"]
        .as_str()
        .unwrap()
        .ends_with("/jobs/commit-worker:run"));
    assert_eq!(firing["auth"]["source"], "inventory");
    assert_eq!(firing["auth"]["token"], "oidc");
    assert_eq!(
        firing["auth"]["service_account"],
        "543333616568-compute@developer.gserviceaccount.com"
    );
    assert_eq!(firing["auth"]["scope"], serde_json::Value::Null);
    assert_eq!(firing["diagnosis"]["code"], "oidc-token-for-google-api");
    assert_eq!(firing["diagnosis"]["confidence"], "confirmed");
    assert!(firing["fix"]["gcloud"]
        .as_str()
        .unwrap()
        .contains("--oauth-token-scope=https://www.googleapis.com/auth/cloud-platform"));
    assert!(firing["fix"]["terraform"]
        .as_str()
        .unwrap()
        .contains("oauth_token {"));
    assert_eq!(
        firing["runbook_url"],
        "docs/runbook.md#oidc-token-for-google-api"
    );
    assert!(firing.get("resolved_at").is_none());

    assert_eq!(resolved["event"], "resolved");
    assert_eq!(resolved["incident_id"], firing["incident_id"]);
    assert_eq!(resolved["failure"]["count"], 6);
    assert_eq!(
        resolved["failure"]["first_at"],
        firing["failure"]["first_at"]
    );
    assert!(
        resolved["resolved_at"].as_str().unwrap()
            > resolved["failure"]["last_at"].as_str().unwrap()
    );
}

#[test]
fn the_runbook_has_a_section_for_every_code_the_alerts_link_to() {
    let runbook = std::fs::read_to_string(common::root().join("docs/runbook.md")).unwrap();
    for code in schedwatch::diagnose::Code::ALL {
        assert!(
            runbook
                .lines()
                .any(|l| l.trim() == format!("## {}", code.as_str())),
            "docs/runbook.md lacks `## {}`",
            code.as_str()
        );
    }
}

#[test]
fn a_configured_runbook_base_url_is_used() {
    let ex = common::shared().join("examples/forbidden-without-inventory");
    let dir = tempfile::tempdir().unwrap();
    let cfg = common::write(
        dir.path(),
        "c.toml",
        "[runbook]\nbase_url = \"https://wiki.example.com/schedwatch/runbook\"\n",
    );
    let out = run(&[
        "replay",
        "--config",
        cfg.to_str().unwrap(),
        "--format",
        "json",
        ex.join("logs.ndjson").to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let alerts = common::ndjson(&out);
    assert_eq!(
        alerts[0]["runbook_url"],
        "https://wiki.example.com/schedwatch/runbook#auth-config-unavailable"
    );
}

#[test]
fn min_failures_from_the_config_changes_when_an_unconfirmed_incident_fires() {
    let ex = common::shared().join("examples/forbidden-without-inventory");
    let dir = tempfile::tempdir().unwrap();
    let cfg = common::write(dir.path(), "c.toml", "[incidents]\nmin_failures = 2\n");
    let out = run(&[
        "replay",
        "--config",
        cfg.to_str().unwrap(),
        "--format",
        "json",
        ex.join("logs.ndjson").to_str().unwrap(),
    ]);
    let alerts = common::ndjson(&out);
    assert_eq!(alerts[0]["failure"]["count"], 2, "{alerts:?}");
}
