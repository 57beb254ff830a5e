//! Shared test helpers: the binary, the shared examples, temporary files.

#![allow(dead_code)]

pub mod emulator;
pub mod http;
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
