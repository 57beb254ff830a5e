//! The config's unit tests: every error with its line, every range at both ends.

use std::path::PathBuf;
use std::time::Duration;

use super::*;

fn parse(text: &str) -> Result<Loaded, ConfigError> {
    Loaded::from_str(text, "test.toml", PathBuf::from("."))
}

#[test]
fn defaults_follow_the_contract() {
    let c = parse("").unwrap().config;
    assert_eq!(c.incidents.min_failures, 3);
    assert!(c.incidents.fire_on_confirmed);
    assert_eq!(
        c.incidents.repeat_interval,
        std::time::Duration::from_secs(4 * 3600)
    );
    assert_eq!(
        c.incidents.pending_expiry,
        std::time::Duration::from_secs(48 * 3600)
    );
    assert_eq!(c.incidents.max_tracked_jobs, 100_000);
}

#[test]
fn errors_name_the_line_and_what_to_change() {
    let e = parse("[incidents]\nmin_failures = 3\nrepeat_intervall = \"4h\"\n").unwrap_err();
    assert_eq!(e.line, Some(3), "{e}");
    assert!(e.to_string().contains("repeat_intervall"), "{e}");
    let e = parse("[incidents]\nrepeat_interval = \"four hours\"\n").unwrap_err();
    assert_eq!(e.line, Some(2), "{e}");
    let e = parse("\n[jobs]\ninventory = \"no/such/dir\"\n").unwrap_err();
    assert_eq!(e.line, Some(3), "{e}");
    assert!(e.to_string().contains("relative to the config file"), "{e}");
    let e = parse("[incidents]\nmin_failures = 0\n").unwrap_err();
    assert_eq!(e.line, Some(2), "{e}");
    let e = parse("[incidents]\n\npending_expiry = \"0s\"\n").unwrap_err();
    assert_eq!(e.line, Some(3), "{e}");
    let e = parse("[incidents]\nmax_tracked_jobs = 0\n").unwrap_err();
    assert_eq!(e.line, Some(2), "{e}");
    let e = parse("[[receivers]]\nname = \"a\"\n").unwrap_err();
    assert!(e.to_string().contains("no destination"), "{e}");
}

/// An edge of a range: the value as written, and whether it is accepted.
type Edges = [(String, bool); 4];

/// Every key with a range: the section it is in (with what the section needs to parse), the
/// key, and its edges.
fn range_cases() -> Vec<(String, &'static str, Edges)> {
    let durations = |l: &Limit<Duration>| {
        let ms = |d: Duration| format!("\"{}ms\"", d.as_millis());
        let step = Duration::from_millis(1);
        [
            (ms(l.min), true),
            // Nothing is below zero: the minimum again.
            match l.min.checked_sub(step) {
                Some(below) => (ms(below), false),
                None => (ms(l.min), true),
            },
            (ms(l.max), true),
            (ms(l.max + step), false),
        ]
    };
    let numbers = |min: i128, max: i128| {
        [
            (min.to_string(), true),
            ((min - 1).to_string(), false),
            (max.to_string(), true),
            ((max + 1).to_string(), false),
        ]
    };
    let receiver = |kind: &str, fields: &str| {
        format!("[[receivers]]\nname = \"r\"\n[receivers.{kind}]\n{fields}\n")
    };
    let email = "host = \"smtp.example.com\"\nfrom = \"a@example.com\"\nto = [\"b@example.com\"]";
    vec![
        (
            "[source]\n".to_owned(),
            "streams",
            numbers(STREAMS.min as i128, STREAMS.max as i128),
        ),
        (
            "[source]\n".to_owned(),
            "max_outstanding_messages",
            numbers(
                OUTSTANDING_MESSAGES.min.into(),
                OUTSTANDING_MESSAGES.max.into(),
            ),
        ),
        (
            "[source]\n".to_owned(),
            "max_outstanding_bytes",
            numbers(OUTSTANDING_BYTES.min.into(), OUTSTANDING_BYTES.max.into()),
        ),
        (
            "[source]\n".to_owned(),
            "lease_extension",
            durations(&LEASE_EXTENSION),
        ),
        (
            "[scheduler_api]\n".to_owned(),
            "cache_ttl",
            durations(&CACHE_TTL),
        ),
        (
            "[scheduler_api]\n".to_owned(),
            "error_ttl",
            durations(&ERROR_TTL),
        ),
        (
            "[scheduler_api]\n".to_owned(),
            "timeout",
            durations(&API_TIMEOUT),
        ),
        (
            "[incidents]\n".to_owned(),
            "min_failures",
            numbers(MIN_FAILURES.min.into(), MIN_FAILURES.max.into()),
        ),
        (
            "[incidents]\n".to_owned(),
            "repeat_interval",
            durations(&REPEAT_INTERVAL),
        ),
        (
            "[incidents]\n".to_owned(),
            "pending_expiry",
            durations(&PENDING_EXPIRY),
        ),
        (
            "[incidents]\n".to_owned(),
            "max_tracked_jobs",
            numbers(MAX_TRACKED_JOBS.min as i128, MAX_TRACKED_JOBS.max as i128),
        ),
        (
            "[server]\n".to_owned(),
            "max_connections",
            numbers(MAX_CONNECTIONS.min as i128, MAX_CONNECTIONS.max as i128),
        ),
        (
            "[state]\n".to_owned(),
            "unhealthy_after",
            durations(&UNHEALTHY_AFTER),
        ),
        (
            "[dedup]\n".to_owned(),
            "capacity",
            numbers(DEDUP_CAPACITY.min as i128, DEDUP_CAPACITY.max as i128),
        ),
        (
            "[state]\n".to_owned(),
            "commit_interval",
            durations(&COMMIT_INTERVAL),
        ),
        (
            "[state]\n".to_owned(),
            "commit_max_messages",
            numbers(
                COMMIT_MAX_MESSAGES.min as i128,
                COMMIT_MAX_MESSAGES.max as i128,
            ),
        ),
        (
            "[state]\n".to_owned(),
            "shutdown_timeout",
            durations(&SHUTDOWN_TIMEOUT),
        ),
        (
            "[state.postgres]\nurl = { env = \"DB\" }\n".to_owned(),
            "pool_size",
            numbers(POOL_SIZE.min as i128, POOL_SIZE.max as i128),
        ),
        (
            "[state.postgres]\nurl = { env = \"DB\" }\n".to_owned(),
            "dedup_retention",
            durations(&DEDUP_RETENTION),
        ),
        (
            "[state.postgres]\nurl = { env = \"DB\" }\n".to_owned(),
            "outbox_lease",
            durations(&OUTBOX_LEASE),
        ),
        (
            receiver("slack", "webhook_url = { env = \"U\" }"),
            "timeout",
            durations(&RECEIVER_TIMEOUT),
        ),
        (
            receiver("webhook", "url = { env = \"U\" }"),
            "timeout",
            durations(&RECEIVER_TIMEOUT),
        ),
        (
            receiver("pagerduty", "routing_key = { env = \"K\" }"),
            "timeout",
            durations(&RECEIVER_TIMEOUT),
        ),
        (
            receiver("email", email),
            "timeout",
            durations(&RECEIVER_TIMEOUT),
        ),
        (
            "[[receivers]]\nname = \"r\"\nstdout = {}\n[[routes]]\nreceivers = [\"r\"]\n"
                .to_owned(),
            "repeat_interval",
            durations(&REPEAT_INTERVAL),
        ),
    ]
}

/// Each key's range, at both ends: the end itself is accepted, one step past it is an error
/// on the key's line that names the key and the range. Each section's defaults pass.
#[test]
fn every_range_is_checked_at_both_ends_with_the_line() {
    for (section, key, edges) in range_cases() {
        parse(&section).unwrap_or_else(|e| panic!("{section}: the defaults pass: {e}"));
        let line = section.lines().count() + 1;
        for (value, ok) in edges {
            let text = format!("{section}{key} = {value}\n");
            match (parse(&text), ok) {
                (Ok(_), true) => {}
                (Err(e), false) => {
                    assert_eq!(e.line, Some(line), "{text}: {e}");
                    let message = e.to_string();
                    assert!(
                        message.contains(&format!("{key} = {value}: must be from ")),
                        "{text}: {message}"
                    );
                }
                (got, _) => panic!("{text}: {got:?}"),
            }
        }
    }
}

#[test]
fn range_errors_quote_the_value_as_written_and_name_the_array_entry() {
    let e = parse("[incidents]\nrepeat_interval = \"300000years\"\n").unwrap_err();
    assert_eq!(e.line, Some(2));
    assert_eq!(
        e.message,
        format!(
            "incidents.repeat_interval = \"300000years\": must be from \"1m\" to \"30days\" ({})",
            REPEAT_INTERVAL.why
        )
    );
    let e = parse("[[receivers]]\nname = \"a\"\nstdout = {}\n\n[[receivers]]\nname = \"b\"\nwebhook = { url = { env = \"U\" }, timeout = \"6m\" }\n").unwrap_err();
    assert_eq!(e.line, Some(7), "{e}");
    assert!(
        e.message
            .starts_with("receivers[1].webhook.timeout = \"6m\": must be from \"1s\" to \"5m\""),
        "{e}"
    );
    // A huge number is refused, not allocated.
    let e = parse("[dedup]\ncapacity = 18446744073709551615\n").unwrap_err();
    assert_eq!(e.line, Some(2), "{e}");
}

#[test]
fn secrets_are_read_and_named_never_printed() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("token");
    std::fs::write(&secret, "hunter2-value\n").unwrap();
    let text = format!(
        "[[receivers]]\nname = \"pager\"\n[receivers.pagerduty]\nrouting_key = {{ file = {secret:?} }}\n\n[[receivers]]\nname = \"mail\"\n[receivers.email]\nhost = \"h\"\nfrom = \"a@example.com\"\nto = [\"b@example.com\"]\nusername = {{ env = \"SCHEDWATCH_TEST_UNSET_USER\" }}\npassword = {{ file = {secret:?} }}\n"
    );
    let loaded = parse(&text).unwrap();
    let e = loaded.check_secrets().unwrap_err();
    assert_eq!(e.line, Some(12), "{e}");
    assert_eq!(
        e.message,
        "receiver \"mail\": email.username: environment variable SCHEDWATCH_TEST_UNSET_USER is unset or empty"
    );
    let fixed = text.replace("{ env = \"SCHEDWATCH_TEST_UNSET_USER\" }", "\"plain-user\"");
    assert_eq!(parse(&fixed).unwrap().check_secrets().unwrap(), 2);
    std::fs::write(&secret, "  \n").unwrap();
    let e = parse(&fixed).unwrap().check_secrets().unwrap_err();
    assert_eq!(e.line, Some(4), "{e}");
    assert!(
        e.message
            .starts_with("receiver \"pager\": pagerduty.routing_key: secret file "),
        "{e}"
    );
    assert!(!e.to_string().contains("hunter2"), "{e}");
}

#[test]
fn deployment_sections_parse_and_their_mistakes_name_the_line() {
    let c = parse("[server]\nlisten = \"0.0.0.0:8080\"\n[log]\nformat = \"json\"\n[source.push]\naudience = \"https://a.example/pubsub/push\"\nservice_account = \"p@x.iam.gserviceaccount.com\"\n")
        .unwrap()
        .config;
    assert_eq!(c.server.listen, Some("0.0.0.0:8080".parse().unwrap()));
    assert_eq!(c.log.format, crate::logging::LogFormat::Json);
    let Some(crate::source::SourceKind::Push(push)) = c.source.kind() else {
        panic!("a push source: {:?}", c.source)
    };
    let push = push.get_ref();
    assert_eq!(push.jwks_url, crate::source::push::GOOGLE_JWKS);
    assert!(!push.allow_unauthenticated);

    let e = parse("[server]\nlisten = \"8080\"\n").unwrap_err();
    assert_eq!(e.line, Some(2), "{e}");
    let e = parse("# push\n[source.push]\naudience = \"https://a.example\"\n").unwrap_err();
    assert_eq!(e.line, Some(2), "{e}");
    assert!(e.to_string().contains("service_account"), "{e}");
    let e = parse("[source]\nsubscription = \"projects/p/subscriptions/sub\"\n[source.push]\nallow_unauthenticated = true\n").unwrap_err();
    assert_eq!(e.line, Some(3), "{e}");
    let e = parse("[log]\nformat = \"yaml\"\n").unwrap_err();
    assert_eq!(e.line, Some(2), "{e}");
}
