//! Shared test helpers: the binary, the shared examples, temporary files.

#![allow(dead_code)]

pub mod emulator;
pub mod http;
pub mod postgres;
pub mod service;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The schedwatch binary Cargo built for these tests.
pub fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_schedwatch"))
}

/// Runs schedwatch with `args`, stdin closed.
pub fn run(args: &[&str]) -> Output {
    bin()
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("schedwatch runs")
}

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `../shared`: the contract, fixtures and examples every developer and CI have.
pub fn shared() -> PathBuf {
    root().join("../shared")
}

/// A file under `../shared/fixtures`.
pub fn fixture(rel: &str) -> PathBuf {
    shared().join("fixtures").join(rel)
}

/// stdout as NDJSON values.
pub fn ndjson(out: &Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.trim_start().starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {e}: {l}")))
        .collect()
}

/// `(job P/L/J, event, code, count)` of each alert, the projection reference.py prints.
pub fn projection(alerts: &[serde_json::Value]) -> Vec<(String, String, String, u64)> {
    alerts
        .iter()
        .map(|a| {
            (
                format!(
                    "{}/{}/{}",
                    a["job"]["project"].as_str().unwrap(),
                    a["job"]["location"].as_str().unwrap(),
                    a["job"]["id"].as_str().unwrap()
                ),
                a["event"].as_str().unwrap().to_owned(),
                a["diagnosis"]["code"].as_str().unwrap().to_owned(),
                a["failure"]["count"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// stderr as text.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Writes `text` to `dir/name` and returns the path.
pub fn write(dir: &Path, name: &str, text: impl AsRef<[u8]>) -> PathBuf {
    let p = dir.join(name);
    if let Some(parent) = p.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::fs::write(&p, text).unwrap();
    p
}

/// The commands the real gcloud CLI does not accept, each with its exit code and message.
///
/// Each runs under `sh -c` after `prelude` (variable assignments), in `dir`, with an empty
/// `CLOUDSDK_CONFIG`: no account, so nothing reaches Google. An accepted command is parsed and
/// validated, then stops for want of credentials: exit 1 with `gcloud auth login` advice. A
/// flag error exits 2; a bad value in a key=value flag, or a missing file, exits 1 with another
/// message. gcloud takes about a second to start, so four run at once.
pub fn gcloud_rejects(prelude: &str, commands: &[String], dir: &Path) -> Vec<String> {
    let which = Command::new("gcloud").arg("--version").output();
    assert!(
        which.is_ok_and(|o| o.status.success()),
        "the gcloud CLI must be installed (scripts/test installs google-cloud-cli)"
    );
    let config = tempfile::tempdir().unwrap();
    std::thread::scope(|s| {
        let handles: Vec<_> = commands
            .chunks(commands.len().div_ceil(4).max(1))
            .map(|chunk| {
                let config = config.path();
                s.spawn(move || {
                    let mut bad = Vec::new();
                    for c in chunk {
                        let out = Command::new("sh")
                            .arg("-c")
                            .arg(format!("{prelude}\n{c}"))
                            .current_dir(dir)
                            .env("CLOUDSDK_CONFIG", config)
                            .env("CLOUDSDK_CORE_DISABLE_PROMPTS", "1")
                            .env_remove("GOOGLE_APPLICATION_CREDENTIALS")
                            .env_remove("CLOUDSDK_CORE_PROJECT")
                            .env_remove("CLOUDSDK_AUTH_ACCESS_TOKEN_FILE")
                            .stdin(std::process::Stdio::null())
                            .output()
                            .expect("sh runs");
                        let err = stderr(&out);
                        if out.status.code() != Some(1) || !err.contains("gcloud auth login") {
                            bad.push(format!(
                                "{c}\n  -> exit {:?}: {}",
                                out.status.code(),
                                err.trim()
                            ));
                        }
                    }
                    bad
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    })
}
