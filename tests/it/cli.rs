//! The command line of CONTRACT section 5: exit codes, messages, the demo, and every config file
//! in `config/`.

use crate::common::{self, run, stderr};

#[test]
fn every_bundled_config_passes_check_config() {
    let mut checked = 0;
    for entry in std::fs::read_dir(common::root().join("config")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|x| x == "toml") {
            // Their secrets are not on this machine (check_config_reads_every_secret_… reads them).
            let out = run(&["check-config", "--no-secrets", path.to_str().unwrap()]);
            assert!(out.status.success(), "{}: {}", path.display(), stderr(&out));
            assert!(String::from_utf8_lossy(&out.stdout).contains(": ok"));
            checked += 1;
        }
    }
    assert!(checked >= 1);
}

#[test]
fn check_config_names_the_line_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let bad = common::write(
        dir.path(),
        "bad.toml",
        "[incidents]\nmin_failures = 3\nrepeat_interval = \"soon\"\n",
    );
    let out = run(&["check-config", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.contains("bad.toml:3"), "{err}");
    let typo = common::write(dir.path(), "typo.toml", "[incident]\nmin_failures = 3\n");
    let out = run(&["check-config", typo.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("typo.toml:1"), "{}", stderr(&out));
    let out = run(&["check-config", "/no/such/config.toml"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn the_demo_prints_the_reference_alerts() {
    let demo = common::root().join("config/demo.toml");
    let out = run(&[
        "run",
        "--config",
        demo.to_str().unwrap(),
        "--format",
        "json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let got = common::projection(&common::ndjson(&out));
    let reference = std::process::Command::new("python3")
        .arg(common::shared().join("tools/reference.py"))
        .args(["replay", "--jobs"])
        .arg(common::root().join("config/demo/jobs"))
        .arg(common::root().join("config/demo/logs.ndjson"))
        .output()
        .expect("python3 runs reference.py");
    assert!(reference.status.success());
    let want: Vec<(String, String, String, u64)> = String::from_utf8_lossy(&reference.stdout)
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                v["job"].as_str().unwrap().into(),
                v["event"].as_str().unwrap().into(),
                v["code"].as_str().unwrap().into(),
                v["count"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(got, want);
    assert!(got.iter().any(|(j, e, c, _)| j.ends_with("commit-worker")
        && e == "firing"
        && c == "oidc-token-for-google-api"));
    // The demo's own receiver prints the readable view, with the fix.
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(
            "FIRING  acme-data-prod/us-east1/commit-worker  oidc-token-for-google-api (confirmed)"
        ),
        "{text}"
    );
    assert!(
        text.contains("gcloud scheduler jobs update http commit-worker \\"),
        "{text}"
    );
    assert!(
        stderr(&out).contains("schedwatch run: 32 entries read"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn replay_reads_stdin_and_prints_text_with_the_fix() {
    let ex = common::shared().join("examples/oidc-to-run-job-then-fixed");
    let logs = std::fs::read(ex.join("logs.ndjson")).unwrap();
    let mut child = common::bin()
        .args(["replay", "--format", "text", "--jobs"])
        .arg(ex.join("jobs"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(&logs).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(
            "--oauth-service-account-email=543333616568-compute@developer.gserviceaccount.com"
        ),
        "{text}"
    );
    assert!(
        text.contains("RESOLVED  acme-data-prod/us-east1/commit-worker"),
        "{text}"
    );
    assert!(
        stderr(&out).contains("2 alerts sent (1 firing, 0 repeat, 1 resolved)"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn usage_errors_exit_2_and_say_what_to_change() {
    let out = run(&["replay", "/no/such/logs.ndjson"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("/no/such/logs.ndjson"),
        "{}",
        stderr(&out)
    );
    let out = run(&["replay", "--jobs", "/no/such/jobs", "-"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("/no/such/jobs"), "{}", stderr(&out));
    let out = run(&["audit"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--jobs PATH"), "{}", stderr(&out));
    let out = run(&["audit", "--project", "p"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "clap: --project needs --location"
    );
    // They become a Cloud Scheduler API path: only names Cloud Scheduler could have, refused
    // before any call (no API is configured here, so a call would fail differently).
    for (project, location, named) in [
        ("acme-prod", "..", "--location '..'"),
        (
            "acme-prod",
            "us-east1/jobs/x",
            "--location 'us-east1/jobs/x'",
        ),
        ("p", "us-east1", "--project 'p'"),
        ("../../v1", "us-east1", "--project '../../v1'"),
        ("acme-prod\n", "us-east1", "--project 'acme-prod\\n'"),
    ] {
        let out = run(&["audit", "--project", project, "--location", location]);
        assert_eq!(out.status.code(), Some(2), "{project} {location}");
        assert!(stderr(&out).contains(named), "{}", stderr(&out));
    }
    let out = run(&["frobnicate"]);
    assert_eq!(out.status.code(), Some(2));
    let dir = tempfile::tempdir().unwrap();
    let cfg = common::write(dir.path(), "c.toml", "[incidents]\nmin_failures = 2\n");
    let out = run(&["run", "--config", cfg.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("[source]"), "{}", stderr(&out));
}

#[test]
fn audit_exits_1_on_findings_and_0_without() {
    let jobs = common::fixture("jobs");
    let out = run(&[
        "audit",
        "--jobs",
        jobs.to_str().unwrap(),
        "--format",
        "json",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let lines = common::ndjson(&out);
    let by_job = |id: &str| {
        lines
            .iter()
            .find(|l| l["job"]["id"] == id)
            .unwrap_or_else(|| panic!("{id} audited"))
    };
    let codes = |id: &str| {
        by_job(id)["findings"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["code"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(codes("nightly-etl-trigger"), ["oidc-token-for-google-api"]);
    assert_eq!(codes("legacy-cron-cleanup"), Vec::<String>::new());
    let f = &by_job("nightly-etl-trigger")["findings"][0];
    assert!(f["fix"]["gcloud"]
        .as_str()
        .unwrap()
        .contains("--oauth-service-account-email="));
    assert!(f["summary"].as_str().unwrap().len() > 10);
    let healthy = common::shared().join("examples/non-auth-noise/jobs");
    let out = run(&[
        "audit",
        "--jobs",
        healthy.to_str().unwrap(),
        "--format",
        "text",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout)
        .contains("ok       acme-data-prod/us-east1/healthy-job"));
}

#[test]
fn the_readme_receivers_example_is_a_valid_config() {
    let readme = std::fs::read_to_string(common::root().join("README.md")).unwrap();
    let section = &readme[readme
        .find("## Receivers")
        .expect("README has a Receivers section")..];
    let start = section.find("```toml\n").expect("a toml block") + "```toml\n".len();
    let block = &section[start..start + section[start..].find("```").unwrap()];
    let dir = tempfile::tempdir().unwrap();
    let cfg = common::write(dir.path(), "receivers.toml", block);
    let out = run(&["check-config", "--no-secrets", cfg.to_str().unwrap()]);
    assert!(out.status.success(), "{}\n{block}", stderr(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("6 receiver(s)"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn logs_are_cloud_logging_json_on_cloud_run_and_text_on_request() {
    let demo = common::root().join("config/demo.toml");
    let demo = demo.to_str().unwrap();
    // K_SERVICE is what Cloud Run sets: JSON by itself.
    let out = common::bin()
        .args(["run", "--config", demo, "--log", "info"])
        .env("K_SERVICE", "schedwatch")
        .env_remove("SCHEDWATCH_LOG_FORMAT")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let logs: Vec<serde_json::Value> = stderr(&out)
        .lines()
        .filter(|l| !l.starts_with("schedwatch run:")) // the summary is for people
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(!logs.is_empty());
    for entry in &logs {
        assert_eq!(entry["severity"], "INFO", "{entry}");
        assert!(entry["message"].is_string(), "{entry}");
        assert!(entry["logging.googleapis.com/sourceLocation"]["file"].is_string());
    }
    assert!(
        logs.iter()
            .any(|e| e["message"] == "reading the file source" && e["source"].is_string()),
        "{logs:?}"
    );
    // --log-format text wins over Cloud Run's default.
    let out = common::bin()
        .args([
            "run",
            "--config",
            demo,
            "--log",
            "info",
            "--log-format",
            "text",
        ])
        .env("K_SERVICE", "schedwatch")
        .output()
        .unwrap();
    let text = stderr(&out);
    assert!(text.contains(" INFO reading the file source"), "{text}");
    assert!(!text.contains("\"severity\""), "{text}");
}

#[test]
fn every_toml_block_in_the_readme_is_a_valid_config() {
    let readme = std::fs::read_to_string(common::root().join("README.md")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut checked = 0;
    let mut receivers = String::new();
    for (n, block) in readme.split("```toml\n").skip(1).enumerate() {
        let block = &block[..block.find("```").unwrap()];
        // A routes fragment names the receivers of the example before it.
        let text = if block.trim_start().starts_with("[[routes]]") {
            format!("{receivers}\n{block}")
        } else {
            block.to_owned()
        };
        if block.contains("[[receivers]]") {
            receivers = block.to_owned();
        }
        let cfg = common::write(dir.path(), &format!("readme-{n}.toml"), &text);
        let out = run(&["check-config", "--no-secrets", cfg.to_str().unwrap()]);
        assert!(out.status.success(), "{}\n{block}", stderr(&out));
        checked += 1;
    }
    assert!(checked >= 3, "{checked} blocks");
}

/// `sh -c 'exec schedwatch replay --format json <demo> <redirect>'`: the shell sets up stdout.
fn replay_demo_with_stdout(redirect: &str) -> std::process::Output {
    let demo = common::root().join("config/demo");
    std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            r#"exec "$0" replay --format json --jobs "$1" "$2" {redirect}"#
        ))
        .arg(env!("CARGO_BIN_EXE_schedwatch"))
        .arg(demo.join("jobs"))
        .arg(demo.join("logs.ndjson"))
        .stdin(std::process::Stdio::null())
        .output()
        .expect("sh runs")
}

/// `audit`'s findings are its answer: printed nowhere, it is no audit (exit 1, not 0 "no
/// findings" or 1 "findings" with nothing to read).
#[test]
fn audit_with_stdout_closed_exits_1_and_says_why() {
    let demo = common::root().join("config/demo");
    let audit = |redirect: &str| {
        std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(r#"exec "$0" audit --jobs "$1" {redirect}"#))
            .arg(env!("CARGO_BIN_EXE_schedwatch"))
            .arg(demo.join("jobs"))
            .stdin(std::process::Stdio::null())
            .output()
            .expect("sh runs")
    };
    let out = audit(">&-");
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("cannot print findings to stdout") && err.contains("closed"),
        "{err}"
    );
    assert!(!err.contains("with findings"), "{err}");
    // The demo's jobs have findings: exit 1 too, but with them printed and counted.
    let out = audit(">/dev/null");
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("with findings"), "{}", stderr(&out));
}

#[test]
fn replay_with_stdout_closed_exits_1_and_counts_nothing_sent() {
    let out = replay_demo_with_stdout(">&-");
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("cannot print alerts to stdout") && err.contains("closed"),
        "{err}"
    );
    assert!(err.contains("0 alert(s) were printed"), "{err}");
    assert!(!err.contains("alerts sent"), "{err}");

    // /dev/null is where the user chose to send them: that is no error.
    let out = replay_demo_with_stdout(">/dev/null");
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("alerts sent"), "{}", stderr(&out));
}

#[test]
fn replay_into_a_pipe_whose_reader_has_gone_exits_1() {
    let demo = common::root().join("config/demo");
    let (reader, writer) = std::io::pipe().unwrap();
    // Closed before schedwatch starts: its first write gets EPIPE, whatever the timing.
    drop(reader);
    let out = common::bin()
        .args(["replay", "--format", "text", "--jobs"])
        .arg(demo.join("jobs"))
        .arg(demo.join("logs.ndjson"))
        .stdin(std::process::Stdio::null())
        .stdout(writer)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("cannot print alerts to stdout") && err.contains("Broken pipe"),
        "{err}"
    );
    assert!(!err.contains("alerts sent"), "{err}");
}

/// A config for `run` over the demo (file source, inventory) with `extra` appended.
fn demo_config(dir: &std::path::Path, extra: &str) -> std::path::PathBuf {
    let demo = common::root().join("config/demo");
    common::write(
        dir,
        "c.toml",
        format!(
            "[source]\npath = {:?}\n\n[jobs]\ninventory = {:?}\n\n{extra}",
            demo.join("logs.ndjson"),
            demo.join("jobs")
        ),
    )
}

/// Issue 13: `repeat_interval = "300000years"` passed check-config, then the first repeat check
/// panicked (`DateTime + Duration` overflowed); in push mode the redelivered message crashed it
/// again. Now every command refuses the config before reading a single entry.
#[test]
fn an_absurd_repeat_interval_is_a_config_error_for_every_command() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = demo_config(
        dir.path(),
        "[incidents]\nrepeat_interval = \"300000years\"\n",
    );
    let cfg = cfg.to_str().unwrap();
    let logs = common::root().join("config/demo/logs.ndjson");
    for args in [
        vec!["check-config", cfg],
        vec!["replay", "--config", cfg, logs.to_str().unwrap()],
        vec!["run", "--config", cfg],
        vec!["audit", "--config", cfg],
    ] {
        let out = run(&args);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert!(err.contains("c.toml:8:"), "{args:?} names the line: {err}");
        assert!(
            err.contains("incidents.repeat_interval = \"300000years\"")
                && err.contains("must be from \"1m\" to \"30days\""),
            "{args:?} says what to change: {err}"
        );
        assert!(out.stdout.is_empty(), "{args:?}: nothing was processed");
    }
}

/// Issue 13: a huge `[dedup] capacity` aborted on allocation.
#[test]
fn a_huge_dedup_capacity_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = demo_config(dir.path(), "[dedup]\ncapacity = 1000000000000\n");
    let cfg = cfg.to_str().unwrap();
    for args in [
        vec!["check-config", cfg],
        vec!["run", "--config", cfg],
        vec!["replay", "--config", cfg, "-"],
    ] {
        let out = run(&args);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.contains("c.toml:8: dedup.capacity = 1000000000000"),
            "{args:?}: {err}"
        );
        assert!(err.contains("10000000"), "{args:?} gives the range: {err}");
    }
}

#[test]
fn range_edges_for_every_command_that_loads_the_config() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("[incidents]\nrepeat_interval = \"1m\"\n", true),
        ("[incidents]\nrepeat_interval = \"59s\"\n", false),
        ("[incidents]\nrepeat_interval = \"30days\"\n", true),
        ("[incidents]\nrepeat_interval = \"30days 1s\"\n", false),
        ("[dedup]\ncapacity = 10000000\n", true),
        ("[dedup]\ncapacity = 10000001\n", false),
        ("[scheduler_api]\ntimeout = \"1m\"\n", true),
        ("[scheduler_api]\ntimeout = \"61s\"\n", false),
        (
            "[[receivers]]\nname = \"hook\"\nwebhook = { url = { env = \"X\" }, timeout = \"5m\" }\n",
            true,
        ),
        (
            "[[receivers]]\nname = \"hook\"\nwebhook = { url = { env = \"X\" }, timeout = \"999ms\" }\n",
            false,
        ),
    ];
    for (extra, ok) in cases {
        let cfg = demo_config(dir.path(), extra);
        let out = run(&["check-config", "--no-secrets", cfg.to_str().unwrap()]);
        let err = stderr(&out);
        if ok {
            assert_eq!(out.status.code(), Some(0), "{extra}: {err}");
        } else {
            assert_eq!(out.status.code(), Some(2), "{extra}: {err}");
            assert!(err.contains("c.toml:") && err.contains(" to "), "{err}");
            let out = run(&["replay", "--config", cfg.to_str().unwrap(), "-"]);
            assert_eq!(out.status.code(), Some(2), "replay, {extra}: {err}");
        }
    }
}

/// Issue 13: check-config said ok for a config whose secret variable was unset, which `run`
/// then refused. It reads every secret now, unless told `--no-secrets` (CI of a config
/// repository, where the secrets are not).
#[test]
fn check_config_reads_every_secret_unless_told_not_to() {
    let dir = tempfile::tempdir().unwrap();
    let empty = common::write(dir.path(), "empty-secret", "\n");
    let key = common::write(dir.path(), "key", "s3cr3t-signing-key\n");
    let cfg = common::write(
        dir.path(),
        "c.toml",
        format!(
            "[[receivers]]\nname = \"sre-slack\"\n[receivers.slack]\nwebhook_url = {{ env = \"SCHEDWATCH_TEST_SLACK_URL\" }}\n\n\
             [[receivers]]\nname = \"ops-hook\"\n[receivers.webhook]\nurl = {{ env = \"SCHEDWATCH_TEST_HOOK_URL\" }}\nsigning_secret = {{ file = {:?} }}\n",
            key
        ),
    );
    let cfg = cfg.to_str().unwrap();
    let slack = "https://hooks.slack.com/services/T0/B0/very-secret-token";
    let hook = "https://hooks.example.com/in/another-secret-token";
    let check = |args: &[&str], env: &[(&str, &str)]| {
        let mut cmd = common::bin();
        cmd.args(args)
            .env_remove("SCHEDWATCH_TEST_SLACK_URL")
            .env_remove("SCHEDWATCH_TEST_HOOK_URL")
            .envs(env.iter().copied())
            .stdin(std::process::Stdio::null());
        let out = cmd.output().unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
        for secret in [slack, hook, "s3cr3t-signing-key", "very-secret-token"] {
            assert!(
                !text.contains(secret),
                "a secret's value was printed: {text}"
            );
        }
        (out.status.code(), text)
    };

    // The variable unset: exit 2, naming it, the receiver and the line.
    let (code, text) = check(
        &["check-config", cfg],
        &[("SCHEDWATCH_TEST_HOOK_URL", hook)],
    );
    assert_eq!(code, Some(2), "{text}");
    assert!(
        text.contains("c.toml:4:")
            && text.contains("\"sre-slack\"")
            && text.contains("SCHEDWATCH_TEST_SLACK_URL"),
        "{text}"
    );
    assert!(
        text.contains("--no-secrets"),
        "says how to skip them: {text}"
    );
    // The same config in CI, without the secrets: ok.
    let (code, text) = check(&["check-config", "--no-secrets", cfg], &[]);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains(": ok") && text.contains("--no-secrets"),
        "{text}"
    );
    // Every secret there: ok, and it says they were read.
    let both = [
        ("SCHEDWATCH_TEST_SLACK_URL", slack),
        ("SCHEDWATCH_TEST_HOOK_URL", hook),
    ];
    let (code, text) = check(&["check-config", cfg], &both);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("3 secret(s) read"), "{text}");
    // A value run would refuse (not a URL) is refused here too, without printing it.
    let (code, text) = check(
        &["check-config", cfg],
        &[
            ("SCHEDWATCH_TEST_SLACK_URL", "very-secret-token"),
            ("SCHEDWATCH_TEST_HOOK_URL", hook),
        ],
    );
    assert_eq!(code, Some(2), "{text}");
    assert!(
        text.contains("\"sre-slack\"") && text.contains("URL"),
        "{text}"
    );

    // A secret file that cannot be read (a folder, a missing file) or is empty: exit 2, naming
    // the file and the receiver.
    let folder = dir.path().to_str().unwrap().to_owned();
    let missing = dir.path().join("no-such-file");
    for file in [
        folder.as_str(),
        missing.to_str().unwrap(),
        empty.to_str().unwrap(),
    ] {
        let text = std::fs::read_to_string(cfg)
            .unwrap()
            .replace(key.to_str().unwrap(), file);
        let bad = common::write(dir.path(), "bad.toml", text);
        let (code, text) = check(&["check-config", bad.to_str().unwrap()], &both);
        assert_eq!(code, Some(2), "{file}: {text}");
        assert!(
            text.contains("bad.toml:10:") && text.contains("\"ops-hook\"") && text.contains(file),
            "{file}: {text}"
        );
    }
}

#[test]
fn check_config_reads_the_database_secrets_too() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = common::write(
        dir.path(),
        "c.toml",
        "[state.postgres]\nurl = { env = \"SCHEDWATCH_TEST_DB_URL\" }\n",
    );
    let out = common::bin()
        .args(["check-config", cfg.to_str().unwrap()])
        .env_remove("SCHEDWATCH_TEST_DB_URL")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("c.toml:2:") && stderr(&out).contains("SCHEDWATCH_TEST_DB_URL"),
        "{}",
        stderr(&out)
    );
}

/// Issue 14: check-config runs what `run` checks before it starts, with the same code. Each
/// receiver here `run` refuses (exit 2); check-config said ok with `--no-secrets` (it built no
/// receiver then) and, reading the secrets, refused it without a line. Now it refuses it either
/// way, on the receiver's line.
#[test]
fn check_config_refuses_the_receivers_run_refuses_on_their_line() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        // An address that does not parse.
        (
            "from = \"not an address\"\nto = [\"b@example.com\"]",
            "`from` = \"not an address\" is not an email address",
        ),
        (
            "from = \"a@example.com\"\nto = [\"b@example.com\", \"b at example\"]",
            "`to[1]` = \"b at example\" is not an email address",
        ),
        // An empty recipient list.
        (
            "from = \"a@example.com\"\nto = []",
            "`to` needs at least one address",
        ),
        // Credentials by half.
        (
            "from = \"a@example.com\"\nto = [\"b@example.com\"]\nusername = \"alerts\"",
            "`username` and `password` go together",
        ),
        // An empty host.
        (
            "host = \" \"\nfrom = \"a@example.com\"\nto = [\"b@example.com\"]",
            "`host` is empty",
        ),
    ];
    for (fields, says) in cases {
        let fields = if fields.starts_with("host") {
            fields.to_owned()
        } else {
            format!("host = \"smtp.example.com\"\n{fields}")
        };
        // [[receivers]] on line 7, its `[receivers.email]` on line 9.
        let extra = format!("[[receivers]]\nname = \"mail\"\n[receivers.email]\n{fields}\n");
        let cfg = demo_config(dir.path(), &extra);
        let cfg = cfg.to_str().unwrap();
        for args in [
            vec!["check-config", "--no-secrets", cfg],
            vec!["check-config", cfg],
            vec!["run", "--config", cfg],
        ] {
            let out = run(&args);
            let err = stderr(&out);
            assert_eq!(out.status.code(), Some(2), "{args:?}, {fields}: {err}");
            assert!(
                err.contains("receiver \"mail\"") && err.contains(says),
                "{args:?}, {fields}: {err}"
            );
            if args[0] == "check-config" {
                assert!(err.contains("c.toml:9: "), "{args:?}, {fields}: {err}");
            }
        }
    }
    // The same receiver, right: ok, with and without the secrets.
    let extra = "[[receivers]]\nname = \"mail\"\n[receivers.email]\nhost = \"smtp.example.com\"\nfrom = \"a@example.com\"\nto = [\"b@example.com\"]\n";
    let cfg = demo_config(dir.path(), extra);
    for args in [
        vec!["check-config", "--no-secrets", cfg.to_str().unwrap()],
        vec!["check-config", cfg.to_str().unwrap()],
    ] {
        let out = run(&args);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", stderr(&out));
    }
}

/// Issue 14: a secret's value that `run` refuses (a Slack webhook that is not a URL) is refused
/// by check-config on the receiver's line.
#[test]
fn check_config_names_the_line_of_a_secret_value_run_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let secret = common::write(dir.path(), "slack-url", "not-a-url-but-secret\n");
    let extra = format!(
        "[[receivers]]\nname = \"sre\"\n[receivers.slack]\nwebhook_url = {{ file = {secret:?} }}\n"
    );
    let cfg = demo_config(dir.path(), &extra);
    let cfg = cfg.to_str().unwrap();
    for args in [vec!["check-config", cfg], vec!["run", "--config", cfg]] {
        let out = run(&args);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.contains("receiver \"sre\"") && err.contains("URL"),
            "{args:?}: {err}"
        );
        assert!(!err.contains("not-a-url-but-secret"), "{args:?}: {err}");
    }
    let out = run(&["check-config", cfg]);
    assert!(stderr(&out).contains("c.toml:9: "), "{}", stderr(&out));
}

/// Issue 14: `run` loads the job inventory before it reads an entry and refuses one that is
/// not JSON; check-config only looked whether the path existed. It loads it now, and names the
/// `inventory` line and the file.
#[test]
fn check_config_loads_the_inventory_as_run_does() {
    let dir = tempfile::tempdir().unwrap();
    let jobs = dir.path().join("jobs");
    std::fs::create_dir(&jobs).unwrap();
    common::write(&jobs, "broken.json", "{\"name\": ");
    let logs = common::root().join("config/demo/logs.ndjson");
    let cfg = common::write(
        dir.path(),
        "c.toml",
        format!("[source]\npath = {logs:?}\n[jobs]\ninventory = {jobs:?}\n"),
    );
    let cfg = cfg.to_str().unwrap();
    for args in [
        vec!["check-config", "--no-secrets", cfg],
        vec!["run", "--config", cfg],
    ] {
        let out = run(&args);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains("broken.json"), "{args:?}: {err}");
    }
    let out = run(&["check-config", "--no-secrets", cfg]);
    assert!(
        stderr(&out).contains("c.toml:4: jobs.inventory: "),
        "{}",
        stderr(&out)
    );
}

/// A database URL that does not parse, or a CA file that is not PEM: `run` refuses it before it
/// starts (it used to retry the connection forever), and `check-config` says so with the line —
/// never quoting the URL, which may hold a password.
#[test]
fn a_database_url_or_ca_file_the_store_cannot_use_is_refused_by_run_and_check_config() {
    let dir = tempfile::tempdir().unwrap();
    let not_pem = common::write(dir.path(), "ca.pem", "not a certificate\n");
    let cases = [
        (
            "url = { env = \"SCHEDWATCH_TEST_DB_URL\" }\n",
            "postgres://alice:s3cret-pw@db.internal:5432/schedwatch?sslmode=sometimes",
            "c.toml:4:",
            "state.postgres.url is not a PostgreSQL URL",
        ),
        (
            &format!(
                "url = {{ env = \"SCHEDWATCH_TEST_DB_URL\" }}\ntls = \"require\"\nca_file = {:?}\n",
                not_pem.to_str().unwrap()
            ) as &str,
            "postgres://alice@db.internal:5432/schedwatch",
            "c.toml:6:",
            "state.postgres.ca_file",
        ),
    ];
    for (table, url, line, says) in cases {
        let cfg = common::write(
            dir.path(),
            "c.toml",
            format!(
                "[source]\nsubscription = \"projects/acme-prod/subscriptions/sched-logs\"\n[state.postgres]\n{table}"
            ),
        );
        for args in [
            vec!["check-config", cfg.to_str().unwrap()],
            vec!["run", "--config", cfg.to_str().unwrap()],
        ] {
            let out = common::bin()
                .args(&args)
                .env("SCHEDWATCH_TEST_DB_URL", url)
                .env_remove("PUBSUB_EMULATOR_HOST")
                .output()
                .unwrap();
            let err = stderr(&out);
            assert_eq!(out.status.code(), Some(2), "{args:?} {url}: {err}");
            assert!(
                err.contains(line) && err.contains(says),
                "{args:?} {url}: {err}"
            );
            assert!(!err.contains("s3cret-pw"), "{args:?}: {err}");
        }
    }
}
