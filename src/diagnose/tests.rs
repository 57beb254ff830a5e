use super::*;
use std::sync::Arc;

fn lookup(job: serde_json::Value) -> Lookup {
    Lookup {
        config: Some(Arc::new(JobConfig::from_value(job).unwrap())),
        source: AuthSource::Inventory,
        reason: None,
    }
}

fn job(target: serde_json::Value) -> serde_json::Value {
    let mut j = serde_json::json!({"name": "projects/acme-prod/locations/us-east1/jobs/j"});
    j.as_object_mut()
        .unwrap()
        .extend(target.as_object().unwrap().clone());
    j
}

fn code(target: serde_json::Value, outcome: Outcome) -> Code {
    let key = JobKey::new("acme-prod", "us-east1", "j").unwrap();
    Diagnoser::default()
        .diagnose(&key, &lookup(job(target)), outcome, None)
        .code
}

const RUN_JOB: &str =
    "https://us-east1-run.googleapis.com/apis/run.googleapis.com/v1/namespaces/p/jobs/w:run";
const SERVICE: &str = "https://api-4x7qk2m9da-ue.a.run.app/tasks";

#[test]
fn the_rule_table_in_order() {
    use serde_json::json;
    let u = Outcome::Unauthenticated;
    let d = Outcome::PermissionDenied;
    let key = JobKey::new("acme-prod", "us-east1", "j").unwrap();
    let none = Lookup {
        config: None,
        source: AuthSource::Unavailable,
        reason: Some("x".into()),
    };
    assert_eq!(
        Diagnoser::default()
            .diagnose(&key, &none, u, Some(RUN_JOB))
            .code,
        Code::AuthConfigUnavailable
    );
    assert_eq!(
        code(json!({"httpTarget": {"uri": RUN_JOB}}), u),
        Code::MissingAuthToken
    );
    assert_eq!(
        code(
            json!({"httpTarget": {"uri": RUN_JOB, "oidcToken": {"serviceAccountEmail": "a@p.iam.gserviceaccount.com"}}}),
            d
        ),
        Code::OidcTokenForGoogleApi
    );
    assert_eq!(
        code(
            json!({"httpTarget": {"uri": SERVICE, "oauthToken": {"serviceAccountEmail": "a@x"}}}),
            u
        ),
        Code::OauthTokenForNonGoogleTarget
    );
    assert_eq!(
        code(
            json!({"httpTarget": {"uri": SERVICE, "oidcToken": {"serviceAccountEmail": "a@x", "audience": "https://api.example.com"}}}),
            u
        ),
        Code::OidcAudienceMismatch
    );
    // The audience's path does not matter, only its origin.
    assert_eq!(
        code(
            json!({"httpTarget": {"uri": SERVICE, "oidcToken": {"serviceAccountEmail": "a@x", "audience": "https://api-4x7qk2m9da-ue.a.run.app/other"}}}),
            d
        ),
        Code::MissingInvokerPermission
    );
    assert_eq!(
        code(
            json!({"httpTarget": {"uri": SERVICE, "oidcToken": {"serviceAccountEmail": "a@x"}}}),
            u
        ),
        Code::UnexplainedAuthFailure
    );
    assert_eq!(
        code(
            json!({"httpTarget": {"uri": RUN_JOB, "oauthToken": {"serviceAccountEmail": "a@x"}}}),
            d
        ),
        Code::MissingInvokerPermission
    );
    // Other target types go straight to rule 6 or 7.
    assert_eq!(
        code(
            json!({"pubsubTarget": {"topicName": "projects/p/topics/t"}}),
            d
        ),
        Code::MissingInvokerPermission
    );
    assert_eq!(
        code(json!({"appEngineHttpTarget": {"relativeUri": "/x"}}), u),
        Code::UnexplainedAuthFailure
    );
}

#[test]
fn audit_reports_rule_2_only_for_targets_that_need_a_token() {
    use serde_json::json;
    let d = Diagnoser::default();
    let webhook = JobConfig::from_value(job(
        json!({"httpTarget": {"uri": "https://hooks.example/x"}}),
    ))
    .unwrap();
    assert!(d.audit(&webhook, AuthSource::Inventory).is_empty());
    let run = JobConfig::from_value(job(json!({"httpTarget": {"uri": SERVICE}}))).unwrap();
    assert_eq!(
        d.audit(&run, AuthSource::Inventory)[0].code,
        Code::MissingAuthToken
    );
    let pubsub = JobConfig::from_value(job(json!({"pubsubTarget": {"topicName": "t"}}))).unwrap();
    assert!(d.audit(&pubsub, AuthSource::Inventory).is_empty());
}

#[test]
fn the_words_show_a_configs_controls_as_escapes() {
    use serde_json::json;
    let evil = "https://x.example/\x1b]0;t\x07\n# forged\u{202e}";
    let key = JobKey::new("acme-prod", "us-east1", "j").unwrap();
    let target = json!({"httpTarget": {"uri": evil, "oidcToken": {"serviceAccountEmail": evil, "audience": evil}}});
    for outcome in [Outcome::Unauthenticated, Outcome::PermissionDenied] {
        let d = Diagnoser::default().diagnose(&key, &lookup(job(target.clone())), outcome, None);
        let words = format!("{}{}", d.summary, d.detail);
        assert!(!words.contains(escape::is_unsafe), "{words}");
        assert!(
            words.contains(r"https://x.example/\x1b]0;t\x07\n# forged\u{202e}"),
            "{words}"
        );
        // The alert's own fields stay exact.
        assert_eq!(d.target_url, evil);
        assert_eq!(d.auth.audience.as_deref(), Some(evil));
    }
    let none = Lookup {
        config: None,
        source: AuthSource::Unavailable,
        reason: Some(format!("the API said {evil}")),
    };
    let d = Diagnoser::default().diagnose(&key, &none, Outcome::Unauthenticated, Some(evil));
    assert!(!d.detail.contains(escape::is_unsafe), "{}", d.detail);
}

#[test]
fn codes_round_trip_their_contract_spelling() {
    for c in Code::ALL {
        assert_eq!(serde_json::to_value(c).unwrap(), c.as_str());
    }
    assert_eq!(
        Diagnoser::new("https://x/runbook.md").runbook_url(Code::MissingAuthToken),
        "https://x/runbook.md#missing-auth-token"
    );
}
