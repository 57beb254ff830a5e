//! One `schedwatch run` process under test, started against the emulator, with its output in
//! files: wait for alerts or log lines, SIGTERM, SIGKILL.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::emulator::Emulator;
use super::projection;

/// The project of the tests' topics and subscriptions.
pub const PROJECT: &str = "acme-ops";

/// One `schedwatch run` process; its stdout and stderr go to files in `dir` (kept after a
/// kill -9, numbered per start).
pub struct Service {
    pub child: Child,
    pub out: PathBuf,
    pub err: PathBuf,
}

/// How to start schedwatch.
pub struct Start<'a> {
    /// The emulator the process pulls from, if any (`PUBSUB_EMULATOR_HOST`).
    pub emulator: Option<&'a Emulator>,
    /// The subscription id; empty: no `--subscription` (push mode, or the config's).
    pub sub: &'a str,
    pub jobs: Option<&'a Path>,
    pub state: &'a Path,
    pub config: Option<&'a Path>,
    /// Where the output files go; `n` numbers them.
    pub dir: &'a Path,
    pub n: usize,
    /// More arguments for `run`.
    pub args: &'a [&'a str],
}

impl Start<'_> {
    pub fn spawn(&self) -> Service {
        let out = self.dir.join(format!("stdout.{}.ndjson", self.n));
        let err = self.dir.join(format!("stderr.{}.log", self.n));
        let mut cmd = super::bin();
        cmd.arg("run");
        if !self.sub.is_empty() {
            cmd.arg("--subscription")
                .arg(format!("projects/{}/subscriptions/{}", PROJECT, self.sub));
        }
        cmd.args(self.args)
            .arg("--state")
            .arg(self.state)
            .arg("--format")
            .arg("json");
        if let Some(jobs) = self.jobs {
            cmd.arg("--jobs").arg(jobs);
        }
        if let Some(config) = self.config {
            cmd.arg("--config").arg(config);
        }
        let child = cmd
            .env(
                "PUBSUB_EMULATOR_HOST",
                self.emulator.map(Emulator::host).unwrap_or_default(),
            )
            .env("SCHEDWATCH_LOG", "schedwatch=trace,info")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(&err).unwrap())
            .spawn()
            .expect("schedwatch starts");
        Service { child, out, err }
    }
}

impl Service {
    /// The alerts printed so far (complete lines only: a kill -9 may cut the last one).
    pub fn alerts(&self) -> Vec<Value> {
        read_alerts(&self.out)
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.err).unwrap_or_default()
    }

    /// Waits until `done(alerts)` holds; panics with stderr after `timeout`.
    pub fn wait_for(
        &mut self,
        what: &str,
        timeout: Duration,
        done: impl Fn(&[Value]) -> bool,
    ) -> Vec<Value> {
        let end = Instant::now() + timeout;
        loop {
            let alerts = self.alerts();
            if done(&alerts) {
                return alerts;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "schedwatch exited ({status}) before {what}; alerts {:?}\nstderr:\n{}",
                    projection(&alerts),
                    tail(&self.stderr())
                );
            }
            if Instant::now() > end {
                panic!(
                    "no {what} within {timeout:?}; alerts so far {:?}\nstderr:\n{}",
                    projection(&alerts),
                    tail(&self.stderr())
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until stderr has `n` lines containing `needle`.
    pub fn wait_for_log(&mut self, needle: &str, n: usize, timeout: Duration) {
        let end = Instant::now() + timeout;
        while self.stderr().matches(needle).count() < n {
            assert!(
                self.child.try_wait().unwrap().is_none(),
                "schedwatch exited before logging {needle:?} {n} times:\n{}",
                tail(&self.stderr())
            );
            assert!(
                Instant::now() < end,
                "schedwatch did not log {needle:?} {n} times within {timeout:?}:\n{}",
                tail(&self.stderr())
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, then waits for the exit (15 s at most: the 10 s deadline and some).
    pub fn terminate(mut self) -> (ExitStatus, String) {
        let pid = self.child.id().to_string();
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap();
        assert!(sent.success(), "kill -TERM {pid}");
        let end = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status, self.stderr());
            }
            if Instant::now() > end {
                let _ = self.child.kill();
                panic!(
                    "schedwatch did not exit within 15 s of SIGTERM:\n{}",
                    tail(&self.stderr())
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: no shutdown work at all.
    pub fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn read_alerts(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let complete = match text.rfind('\n') {
        Some(end) => &text[..=end],
        None => "",
    };
    complete
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

pub fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.contains(" TRACE ")).collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// A successful exit after SIGTERM, with the run summary on stderr.
pub fn assert_clean_exit((status, stderr): (ExitStatus, String)) -> String {
    assert!(
        status.success(),
        "exit {status} after SIGTERM:\n{}",
        tail(&stderr)
    );
    assert!(
        stderr.contains("entries read"),
        "no run summary on stderr:\n{}",
        tail(&stderr)
    );
    stderr
}

/// `lines` of a file as byte vectors, blank lines dropped.
pub fn lines_of(path: &Path) -> Vec<Vec<u8>> {
    std::fs::read(path)
        .unwrap()
        .split(|b| *b == b'\n')
        .filter(|l| !l.iter().all(u8::is_ascii_whitespace))
        .map(<[u8]>::to_vec)
        .collect()
}

/// Alerts grouped by job, in order within each job: what ordering keys guarantee.
pub fn by_job(
    alerts: &[(String, String, String, u64)],
) -> BTreeMap<String, Vec<(String, String, u64)>> {
    let mut map: BTreeMap<String, Vec<(String, String, u64)>> = BTreeMap::new();
    for (job, event, code, count) in alerts {
        map.entry(job.clone())
            .or_default()
            .push((event.clone(), code.clone(), *count));
    }
    map
}

/// An example's `expected.json` alerts as projections.
pub fn expected(example: &Path) -> Vec<(String, String, String, u64)> {
    let expected: Value =
        serde_json::from_slice(&std::fs::read(example.join("expected.json")).unwrap()).unwrap();
    expected["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["job"].as_str().unwrap().to_owned(),
                a["event"].as_str().unwrap().to_owned(),
                a["code"].as_str().unwrap().to_owned(),
                a["count"].as_u64().unwrap(),
            )
        })
        .collect()
}
