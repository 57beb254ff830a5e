//! The command line of CONTRACT section 5: exit codes, messages, the demo, and every config file
//! in `config/`.

use crate::common::{self, run, stderr};

#[test]
fn every_bundled_config_passes_check_config() {
    let mut checked = 0;
    for entry in std::fs::read_dir(common::root().join("config")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|x| x == "toml") {
            let out = run(&["check-config", path.to_str().unwrap()]);
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
    let out = run(&["check-config", cfg.to_str().unwrap()]);
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
        let out = run(&["check-config", cfg.to_str().unwrap()]);
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
