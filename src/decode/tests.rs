use super::*;

fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/../shared/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn one(bytes: &[u8]) -> Decoded {
    let mut out = Vec::new();
    Decoder.decode_item(bytes, &mut out);
    assert_eq!(out.len(), 1, "one entry expected");
    out.pop().unwrap()
}

#[test]
fn decodes_a_401_from_the_cloud_run_admin_api() {
    let a = one(&fixture("logs/attempt_finished_401_oidc_run_job.json")).unwrap();
    assert_eq!(
        a.job,
        JobKey::new("acme-data-prod", "europe-west1", "nightly-etl-trigger").unwrap()
    );
    assert_eq!(a.phase, Phase::Finished);
    assert_eq!(a.outcome, Outcome::Unauthenticated);
    assert_eq!(a.status.as_deref(), Some("UNAUTHENTICATED"));
    assert_eq!(a.http_status, Some(401));
    assert!(a.url.unwrap().ends_with("jobs/nightly-etl:run"));
    assert!(a
        .debug_info
        .unwrap()
        .starts_with("URL_ERROR-ERROR_AUTHENTICATION"));
    assert_eq!(a.timestamp.to_rfc3339(), "2026-03-02T02:00:07.298114+00:00");
    assert_eq!(a.insert_id.as_deref(), Some("1q3w5e7r9t1y3u"));
}

#[test]
fn classifies_every_fixture_outcome() {
    let cases = [
        ("logs/attempt_finished_200_success.json", Outcome::Success),
        (
            "logs/attempt_finished_401_no_auth_googleapis.json",
            Outcome::Unauthenticated,
        ),
        (
            "logs/attempt_finished_401_oauth_to_run_app.json",
            Outcome::Unauthenticated,
        ),
        (
            "logs/attempt_finished_401_oidc_wrong_audience.json",
            Outcome::Unauthenticated,
        ),
        (
            "logs/attempt_finished_403_permission_denied.json",
            Outcome::PermissionDenied,
        ),
        (
            "logs/attempt_finished_404_not_found.json",
            Outcome::OtherFailure,
        ),
        (
            "logs/attempt_finished_500_internal.json",
            Outcome::OtherFailure,
        ),
        (
            "logs/attempt_finished_503_unavailable.json",
            Outcome::OtherFailure,
        ),
        (
            "logs/attempt_finished_504_deadline_exceeded.json",
            Outcome::OtherFailure,
        ),
    ];
    for (name, want) in cases {
        let a = one(&fixture(name)).unwrap();
        assert_eq!((a.phase, a.outcome), (Phase::Finished, want), "{name}");
    }
    let started = one(&fixture("logs/attempt_started_run_job.json")).unwrap();
    assert_eq!(started.phase, Phase::Started);
    // Nanosecond precision survives.
    assert_eq!(started.timestamp.timestamp_subsec_nanos(), 412_903_114);
}

#[test]
fn outcome_order_is_status_then_http_then_debug_info() {
    assert_eq!(
        classify_outcome(Some("PERMISSION_DENIED"), Some(401)),
        Outcome::PermissionDenied
    );
    assert_eq!(
        classify_outcome(Some("DEADLINE_EXCEEDED"), Some(200)),
        Outcome::OtherFailure
    );
    assert_eq!(classify_outcome(None, Some(204)), Outcome::Success);
    assert_eq!(classify_outcome(None, None), Outcome::OtherFailure);
    let e = br#"{"resource":{"type":"cloud_scheduler_job","labels":{"project_id":"acme-prod","location":"us-east1","job_id":"j"}},
        "timestamp":"2026-01-01T00:00:00Z","jsonPayload":{"@type":"x.AttemptFinished",
        "debugInfo":"URL_ERROR-ERROR_AUTHENTICATION. Original HTTP response code number = 401"}}"#;
    let a = one(e).unwrap();
    assert_eq!(
        (a.http_status, a.outcome),
        (Some(401), Outcome::Unauthenticated)
    );
}

#[test]
fn unwraps_pubsub_pull_responses_and_push_envelopes() {
    for name in [
        "pubsub/pull_response_401.json",
        "pubsub/push_envelope_401.json",
    ] {
        let a = one(&fixture(name)).unwrap();
        assert_eq!(a.outcome, Outcome::Unauthenticated, "{name}");
        assert_eq!(a.job.job_id(), "nightly-etl-trigger");
    }
    let direct = one(&fixture("logs/attempt_finished_401_oidc_run_job.json")).unwrap();
    let pushed = one(&fixture("pubsub/push_envelope_401.json")).unwrap();
    assert_eq!(
        direct.dedup_key, pushed.dedup_key,
        "the same entry, however it came"
    );
}

#[test]
fn accepts_a_status_sent_as_a_string_and_unknown_fields() {
    let e = br#"{"resource":{"type":"cloud_scheduler_job","labels":{"project_id":"acme-prod","location":"us-east1","job_id":"j","extra":"x"}},
        "timestamp":"2026-01-01T00:00:00.5+01:00","future":{"a":[1,2]},"httpRequest":{"status":"403","latency":"1s"},
        "jsonPayload":{"@type":"x.AttemptFinished","new":true}}"#;
    let a = one(e).unwrap();
    assert_eq!(a.outcome, Outcome::PermissionDenied);
    assert_eq!(a.timestamp.to_rfc3339(), "2025-12-31T23:00:00.500+00:00");
}

#[test]
fn names_the_reason_for_each_rejection() {
    let cases: [(&[u8], SkipReason); 12] = [
        (b"{\"resource\": {", SkipReason::InvalidJson),
        (b"\xff\xfe{}", SkipReason::InvalidJson),
        (b"null", SkipReason::NotAnObject),
        (b"[1,2]", SkipReason::NotAnObject),
        (b"\"a string\"", SkipReason::NotAnObject),
        (b"{}", SkipReason::NotSchedulerEntry),
        (br#"{"resource":{"type":"gce_instance","labels":{}},"timestamp":"2026-01-01T00:00:00Z"}"#, SkipReason::NotSchedulerEntry),
        (br#"{"resource":{"type":"cloud_scheduler_job","labels":{"project_id":"acme-prod","location":"us-east1"}},"timestamp":"2026-01-01T00:00:00Z"}"#, SkipReason::MissingJobLabels),
        (br#"{"resource":{"type":"cloud_scheduler_job"},"timestamp":"2026-01-01T00:00:00Z"}"#, SkipReason::MissingJobLabels),
        (br#"{"resource":{"type":"cloud_scheduler_job","labels":{"project_id":"acme-prod","location":"us-east1","job_id":"j"}},"timestamp":"yesterday"}"#, SkipReason::BadTimestamp),
        (br#"{"resource":{"type":"cloud_scheduler_job","labels":"p/l/j"},"timestamp":"2026-01-01T00:00:00Z"}"#, SkipReason::MalformedEntry),
        (br#"{"message":{"data":"not base64!"}}"#, SkipReason::BadPubsubMessage),
    ];
    for (bytes, want) in cases {
        assert_eq!(
            one(bytes).unwrap_err(),
            want,
            "{}",
            String::from_utf8_lossy(bytes)
        );
    }
}

#[test]
fn deep_nesting_is_skipped_not_a_stack_overflow() {
    // Skipped as an unknown field: never a crash.
    let deep = format!("{{\"a\":{}{}}}", "[".repeat(100_000), "]".repeat(100_000));
    assert_eq!(
        one(deep.as_bytes()).unwrap_err(),
        SkipReason::NotSchedulerEntry
    );
    // Where a known field is nested too deeply, serde_json's recursion limit stops it.
    let deep = format!(
        "{{\"resource\":{}{}}}",
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    assert_eq!(one(deep.as_bytes()).unwrap_err(), SkipReason::InvalidJson);
}

#[test]
fn message_data_over_the_limit_is_too_large_at_every_door() {
    // What a pull or a push hands the pipeline is the raw entry (Pub/Sub allows 10 MB): a
    // real-shaped 401 with a debugInfo that takes it just over the limit.
    let mut e: serde_json::Value =
        serde_json::from_slice(&fixture("logs/attempt_finished_401_oidc_run_job.json")).unwrap();
    e["jsonPayload"]["debugInfo"] = "x".repeat(MAX_ENTRY_BYTES).into();
    let data = serde_json::to_vec(&e).unwrap();
    assert_eq!(one(&data).unwrap_err(), SkipReason::TooLarge, "pulled data");
    // The same data in a push envelope dump, and in a pull response dump.
    let b64 = base64::engine::general_purpose::STANDARD.encode(&data);
    let push = serde_json::json!({"message": {"data": b64, "messageId": "1"}});
    let pull = serde_json::json!({"receivedMessages": [{"ackId": "a", "message": {"data": b64}}]});
    for (name, dump) in [("push envelope", push), ("pull response", pull)] {
        let bytes = serde_json::to_vec(&dump).unwrap();
        assert_eq!(one(&bytes).unwrap_err(), SkipReason::TooLarge, "{name}");
    }
    // Just under the limit, the entry is read.
    e["jsonPayload"]["debugInfo"] = "x".repeat(2 * MAX_ENTRY_BYTES - data.len() - 100).into();
    let data = serde_json::to_vec(&e).unwrap();
    assert!(data.len() <= MAX_ENTRY_BYTES);
    assert_eq!(one(&data).unwrap().outcome, Outcome::Unauthenticated);
}

#[test]
fn dedup_key_separates_its_parts() {
    let key = |l, i, t| dedup_key(l, i, t, &[]);
    assert_ne!(
        key(Some("ab"), Some("c"), "t"),
        key(Some("a"), Some("bc"), "t")
    );
    assert_ne!(key(None, Some("x"), "t"), key(Some("x"), None, "t"));
    assert_eq!(
        key(Some("l"), Some("i"), "t"),
        key(Some("l"), Some("i"), "t")
    );
    // With both ids, the content is not part of the key (it was not before either).
    assert_eq!(
        dedup_key(Some("l"), Some("i"), "t", &[Some("a")]),
        dedup_key(Some("l"), Some("i"), "t", &[Some("b")])
    );
}

/// An entry with the given labels (raw JSON strings) and a 401.
fn labelled(project: &str, location: &str, job_id: &str) -> String {
    serde_json::json!({
        "insertId": "i1",
        "logName": "projects/acme-prod/logs/cloudscheduler.googleapis.com%2Fexecutions",
        "resource": {"type": "cloud_scheduler_job",
            "labels": {"project_id": project, "location": location, "job_id": job_id}},
        "timestamp": "2026-01-01T00:00:00Z",
        "jsonPayload": {"@type": "x.AttemptFinished", "status": "UNAUTHENTICATED"},
    })
    .to_string()
}

fn labels_pass(project: &str, location: &str, job_id: &str) -> bool {
    match one(labelled(project, location, job_id).as_bytes()) {
        Ok(a) => {
            assert_eq!(
                (a.job.project(), a.job.location(), a.job.job_id()),
                (project, location, job_id)
            );
            true
        }
        Err(SkipReason::MalformedEntry) => false,
        Err(other) => panic!("{project:?} {location:?} {job_id:?}: {other}"),
    }
}

#[test]
fn job_ids_follow_cloud_schedulers_grammar() {
    let ok = |j: &str| labels_pass("acme-prod", "us-east1", j);
    for good in [
        "j",
        "nightly-etl_trigger-2",
        "UPPER_lower-09",
        "-leading-hyphen",
        "--impersonate-service-account",
        "_",
        &"a".repeat(500),
    ] {
        assert!(ok(good), "{good:?} is a valid job id");
    }
    for bad in [
        &"a".repeat(501),
        "..",
        "a/../b",
        r"\..\",
        "a.b",
        "a b",
        "a\nb",
        "x\n# forged",
        "\u{1b}[31mred",
        "a;rm -rf /",
        "a'b",
        "a$(id)",
        "ä",
        "a\u{202e}b",
        "--impersonate-service-account=evil@x.iam.gserviceaccount.com",
    ] {
        assert!(!ok(bad), "{bad:?} is not a job id");
    }
    for c in [
        '\n', '\r', '\u{1b}', '\u{0}', '\t', '\u{85}', '\u{202e}', '\u{7f}',
    ] {
        assert!(!ok(&format!("job{c}x")), "{c:?} in a job id");
    }
}

#[test]
fn locations_follow_cloud_schedulers_grammar() {
    let ok = |l: &str| labels_pass("acme-prod", l, "j");
    for good in [
        "us-east1",
        "europe-west1",
        "global",
        "a",
        &format!("a{}", "b".repeat(62)),
    ] {
        assert!(ok(good), "{good:?} is a valid location");
    }
    for bad in [
        "..",
        ".",
        "US-EAST1",
        "us_east1",
        "us-east1/..",
        "1us",
        "-us",
        "us-",
        "us east1",
        "us-east1\n",
        &format!("a{}", "b".repeat(63)),
    ] {
        assert!(!ok(bad), "{bad:?} is not a location");
    }
}

#[test]
fn project_ids_follow_googles_grammar() {
    let ok = |p: &str| labels_pass(p, "us-east1", "j");
    for good in [
        "acme-data-prod",
        "abcdef",
        &format!("a{}", "b".repeat(29)),
        "a12345",
        "example.com:acme-prod",
        "google.com:my-project",
        "sub.example.co.uk:proj-1x",
    ] {
        assert!(ok(good), "{good:?} is a valid project id");
    }
    for bad in [
        "p",
        "abcde",
        &format!("a{}", "b".repeat(30)),
        "1acme-prod",
        "-acme-prod",
        "acme-prod-",
        "Acme-Prod",
        "acme_prod",
        "acme.prod",
        "..",
        "acme-prod/../x",
        ":acme-prod",
        "example.com:",
        "example:acme-prod",
        "example.com:a",
        "exa mple.com:acme-prod",
        "-example.com:acme-prod",
        "example.com:acme-prod:x",
        "acme-prod\n",
    ] {
        assert!(!ok(bad), "{bad:?} is not a project id");
    }
}

#[test]
fn entries_without_ids_are_duplicates_only_of_themselves() {
    // Three jobs fail at the same instant; none of the entries has insertId or logName.
    let entry = |job: &str, status: &str| {
        serde_json::json!({
            "resource": {"type": "cloud_scheduler_job",
                "labels": {"project_id": "acme-prod", "location": "us-east1", "job_id": job}},
            "timestamp": "2026-01-01T00:00:00Z",
            "jsonPayload": {"@type": "x.AttemptFinished", "status": status},
        })
        .to_string()
    };
    let keys: Vec<u128> = ["a", "b", "c"]
        .iter()
        .map(|j| {
            one(entry(j, "UNAUTHENTICATED").as_bytes())
                .unwrap()
                .dedup_key
        })
        .collect();
    assert!(keys[0] != keys[1] && keys[1] != keys[2] && keys[0] != keys[2]);
    // The same job, another outcome at the same instant: another entry.
    assert_ne!(
        one(entry("a", "PERMISSION_DENIED").as_bytes())
            .unwrap()
            .dedup_key,
        keys[0]
    );
    // The same entry twice, even re-serialised with other spacing, is one.
    let again: serde_json::Value = serde_json::from_str(&entry("a", "UNAUTHENTICATED")).unwrap();
    let pretty = serde_json::to_string_pretty(&again).unwrap();
    assert_eq!(one(pretty.as_bytes()).unwrap().dedup_key, keys[0]);
}
