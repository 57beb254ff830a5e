//! Google's official Pub/Sub emulator (Java, from the `google-cloud-cli-pubsub-emulator`
//! package) as a test fixture, with a std-only REST client for its admin and data calls.
//!
//! ```ignore
//! let emu = Emulator::with_topic_and_subscription("acme", "exec-logs", "schedwatch-sub", true);
//! emu.publish_log_entries("acme", "exec-logs", &lines);
//! // run schedwatch with PUBSUB_EMULATOR_HOST=emu.host(), then for example:
//! assert_eq!(emu.backlog("acme", "schedwatch-sub"), 0);
//! ```
//!
//! - [`Emulator::start`] picks a free port, spawns the launcher with `--host=127.0.0.1
//!   --port=PORT` (stdout and stderr into a log file in its own temporary directory) and waits up
//!   to 60 s until `GET /` answers. It **panics** with the log's tail if the emulator cannot be
//!   found or does not come up: tests that need it fail, they never skip. It answers about 1 s
//!   after the spawn on an idle 2-core machine (2-3 s under load). Booting a JVM is CPU-heavy,
//!   so only one emulator boots at a time in this test process (a start gate, released as soon
//!   as the emulator answers; the 60 s count from then on).
//! - The emulator keeps **everything in memory**: after [`Emulator::stop`] and
//!   [`Emulator::start_on`] the same port, topics, subscriptions and messages are gone.
//! - gRPC and REST share the port; [`Emulator::host`] is the value for `PUBSUB_EMULATOR_HOST`.
//! - Topic and subscription ids need at least 3 characters (the emulator answers 400).
//! - The launcher `exec`s java, so [`Emulator::pid`] is the JVM's. [`Emulator::stop`] (and
//!   `Drop`) SIGKILLs it and reaps it; when the test process itself is killed, the JVM outlives it.
//! - The admin and data helpers panic on any transport error or non-2xx answer, with the
//!   method, path, status and body. [`Emulator::call`] returns the raw [`Reply`] instead, for
//!   tests that expect an error.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{json, Value};

/// Where the Debian package installs the launcher.
const DEFAULT_LAUNCHER: &str =
    "/usr/lib/google-cloud-sdk/platform/pubsub-emulator/bin/cloud-pubsub-emulator";
/// The launcher relative to the Cloud SDK root.
const SDK_RELATIVE: &str = "platform/pubsub-emulator/bin/cloud-pubsub-emulator";
/// How long [`Emulator::start`] waits for `GET /` to answer once the JVM is spawned.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Pub/Sub's limit is 1,000 messages and 10 MB per publish request.
const PUBLISH_BATCH: usize = 1000;
const PUBLISH_BATCH_BYTES: usize = 7 * 1024 * 1024; // raw bytes: base64 makes them 4/3 larger
/// The attribute a Cloud Logging sink sets on every message it publishes.
pub const TIMESTAMP_ATTRIBUTE: &str = "logging.googleapis.com/timestamp";

/// Only one JVM boots at a time in this process (see the module docs).
static START_GATE: Mutex<()> = Mutex::new(());

/// One message to publish.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Publish {
    /// The payload (sent base64-encoded).
    pub data: Vec<u8>,
    /// Message attributes, in any order.
    pub attributes: Vec<(String, String)>,
    /// The ordering key; messages with the same key reach an ordered subscription in
    /// publish order.
    pub ordering_key: Option<String>,
}

impl Publish {
    /// A message with `data`, no attributes and no ordering key.
    pub fn new(data: impl Into<Vec<u8>>) -> Publish {
        Publish {
            data: data.into(),
            ..Publish::default()
        }
    }

    /// Adds an attribute.
    pub fn attr(mut self, key: &str, value: &str) -> Publish {
        self.attributes.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Sets the ordering key.
    pub fn key(mut self, ordering_key: &str) -> Publish {
        self.ordering_key = Some(ordering_key.to_owned());
        self
    }
}

/// One pulled message: `(ack_id, data, attributes sorted by key)`.
pub type Pulled = (String, Vec<u8>, Vec<(String, String)>);

/// A running Pub/Sub emulator on `127.0.0.1`; killed on drop.
pub struct Emulator {
    port: u16,
    child: Option<Child>,
    pid: u32,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Emulator {
    /// Starts an emulator on a free port; panics with the log's tail if it does not come up.
    pub fn start() -> Emulator {
        Emulator::start_on(free_port())
    }

    /// Starts an emulator on `port` (e.g. the port of one just stopped, to test a restart:
    /// the new one starts empty). Panics with the log's tail if it does not come up, for example
    /// because the port is taken.
    pub fn start_on(port: u16) -> Emulator {
        let launcher = launcher();
        let dir = tempfile::Builder::new()
            .prefix("pubsub-emulator-")
            .tempdir()
            .expect("temporary directory for the emulator");
        let log = dir.path().join("emulator.log");
        let out = std::fs::File::create(&log).expect("emulator log file");
        let err = out.try_clone().expect("emulator log file");
        let _gate = START_GATE.lock().unwrap_or_else(|e| e.into_inner());
        let child = Command::new(&launcher)
            .arg("--host=127.0.0.1")
            .arg(format!("--port={port}"))
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run the Pub/Sub emulator {}: {e}",
                    launcher.display()
                )
            });
        let pid = child.id();
        let mut emu = Emulator {
            port,
            child: Some(child),
            pid,
            log,
            _dir: dir,
        };
        let started = Instant::now();
        loop {
            if let Some(status) = emu
                .child
                .as_mut()
                .unwrap()
                .try_wait()
                .expect("wait for the emulator")
            {
                emu.child = None;
                panic!("the Pub/Sub emulator ({}) exited with {status} before answering on port {port}; log tail:\n{}", launcher.display(), emu.log_tail());
            }
            if matches!(http(&emu.host(), "GET", "/", None, Duration::from_secs(2)), Ok(r) if r.status < 500)
            {
                return emu;
            }
            // A failed bind (port taken) does not end the JVM: its other threads keep it alive.
            if emu.log().contains("Exception in thread \"main\"") {
                emu.stop();
                panic!(
                    "the Pub/Sub emulator failed to start on port {port}; log tail:\n{}",
                    emu.log_tail()
                );
            }
            if started.elapsed() > START_TIMEOUT {
                emu.stop();
                panic!("the Pub/Sub emulator did not answer GET http://127.0.0.1:{port}/ within {START_TIMEOUT:?}; log tail:\n{}", emu.log_tail());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Starts an emulator with `projects/P/topics/T` and a subscription `S` on it (ack deadline
    /// 10 s, Pub/Sub's default; message ordering on or off).
    pub fn with_topic_and_subscription(
        project: &str,
        topic: &str,
        sub: &str,
        ordering: bool,
    ) -> Emulator {
        let emu = Emulator::start();
        emu.create_topic(project, topic);
        emu.create_subscription(project, sub, topic, 10, ordering);
        emu
    }

    /// `127.0.0.1:PORT`: the value for `PUBSUB_EMULATOR_HOST`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The port (gRPC and REST).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The JVM's process id (the launcher `exec`s java).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The emulator's stdout and stderr so far.
    pub fn log(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.log).unwrap_or_default()).into_owned()
    }

    /// The log file's path (it lives as long as this value).
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Kills the emulator (SIGKILL) and waits for it to exit: the port is closed when this
    /// returns. Idempotent.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill(); // SIGKILL on Unix; an error means it already exited
            let _ = child.wait();
        }
    }

    /// Whether the emulator process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    fn log_tail(&self) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        let tail = lines[lines.len().saturating_sub(40)..].join("\n");
        if tail.is_empty() {
            "(empty)".to_owned()
        } else {
            tail
        }
    }

    // ---- REST -----------------------------------------------------------------------------

    /// One REST call: `method path` with an optional JSON body; the raw reply, or the
    /// transport error.
    pub fn call(&self, method: &str, path: &str, body: Option<&Value>) -> io::Result<Reply> {
        let body = body.map(|b| b.to_string().into_bytes());
        http(
            &self.host(),
            method,
            path,
            body.as_deref(),
            Duration::from_secs(30),
        )
    }

    /// [`Emulator::call`] that panics unless the answer is 2xx; the body as JSON (`null` when
    /// empty).
    pub fn call_ok(&self, method: &str, path: &str, body: Option<&Value>) -> Value {
        let reply = self
            .call(method, path, body)
            .unwrap_or_else(|e| panic!("Pub/Sub emulator {method} {path}: {e}"));
        if !(200..300).contains(&reply.status) {
            panic!(
                "Pub/Sub emulator {method} {path}: HTTP {}: {}",
                reply.status,
                reply.text()
            );
        }
        if reply.body.iter().all(u8::is_ascii_whitespace) {
            return Value::Null;
        }
        reply.json()
    }

    /// `PUT /v1/projects/P/topics/T`.
    pub fn create_topic(&self, project: &str, topic: &str) {
        self.call_ok(
            "PUT",
            &format!("/v1/projects/{project}/topics/{topic}"),
            Some(&json!({})),
        );
    }

    /// `PUT /v1/projects/P/subscriptions/S` on topic `T`, pull delivery.
    pub fn create_subscription(
        &self,
        project: &str,
        sub: &str,
        topic: &str,
        ack_deadline_secs: u32,
        ordering: bool,
    ) {
        let body = json!({
            "topic": format!("projects/{project}/topics/{topic}"),
            "ackDeadlineSeconds": ack_deadline_secs,
            "enableMessageOrdering": ordering,
        });
        self.call_ok(
            "PUT",
            &format!("/v1/projects/{project}/subscriptions/{sub}"),
            Some(&body),
        );
    }

    /// `PUT /v1/projects/P/subscriptions/S` on topic `T`, push delivery to `endpoint`.
    pub fn create_push_subscription(
        &self,
        project: &str,
        sub: &str,
        topic: &str,
        endpoint: &str,
        ordering: bool,
    ) {
        let body = json!({
            "topic": format!("projects/{project}/topics/{topic}"),
            "ackDeadlineSeconds": 10,
            "enableMessageOrdering": ordering,
            "pushConfig": {"pushEndpoint": endpoint},
        });
        self.call_ok(
            "PUT",
            &format!("/v1/projects/{project}/subscriptions/{sub}"),
            Some(&body),
        );
    }

    /// Publishes `messages` in order, up to 1,000 (and about 7 MB) per request; returns their
    /// message ids in the same order.
    pub fn publish(&self, project: &str, topic: &str, messages: &[Publish]) -> Vec<String> {
        let path = format!("/v1/projects/{project}/topics/{topic}:publish");
        let mut ids = Vec::with_capacity(messages.len());
        let mut rest = messages;
        while !rest.is_empty() {
            let (mut n, mut bytes) = (0, 0);
            while n < rest.len()
                && n < PUBLISH_BATCH
                && (n == 0 || bytes + rest[n].data.len() <= PUBLISH_BATCH_BYTES)
            {
                bytes += rest[n].data.len();
                n += 1;
            }
            let (batch, tail) = rest.split_at(n);
            rest = tail;
            let wire: Vec<Value> = batch
                .iter()
                .map(|m| {
                    let mut v =
                        json!({"data": base64::engine::general_purpose::STANDARD.encode(&m.data)});
                    if !m.attributes.is_empty() {
                        v["attributes"] = m
                            .attributes
                            .iter()
                            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                            .collect::<serde_json::Map<_, _>>()
                            .into();
                    }
                    if let Some(key) = &m.ordering_key {
                        v["orderingKey"] = json!(key);
                    }
                    v
                })
                .collect();
            let reply = self.call_ok("POST", &path, Some(&json!({ "messages": wire })));
            let got: Vec<String> = reply["messageIds"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|i| i.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            assert_eq!(
                got.len(),
                batch.len(),
                "publish to {path}: {} message ids for {} messages: {reply}",
                got.len(),
                batch.len()
            );
            ids.extend(got);
        }
        ids
    }

    /// One pull of up to `max` messages with `returnImmediately` (it may return fewer than
    /// are available, or none). Each is `(ack_id, data, attributes sorted by key)`; they stay
    /// leased for the subscription's ack deadline until acknowledged.
    pub fn pull(&self, project: &str, sub: &str, max: usize) -> Vec<Pulled> {
        self.pull_full(project, sub, max)
            .into_iter()
            .map(|m| (m.ack_id, m.data, m.attributes))
            .collect()
    }

    /// Pulls (and leases) until `n` messages arrived or `timeout` passed; returns what arrived.
    /// On an ordered subscription the emulator hands out a key's next message only once the
    /// ones before it are acknowledged, so messages published after a pull may not arrive
    /// until that pull's messages are acked (messages already published arrive in one pull).
    pub fn pull_n(&self, project: &str, sub: &str, n: usize, timeout: Duration) -> Vec<Pulled> {
        let end = Instant::now() + timeout;
        let mut got = Vec::new();
        while got.len() < n {
            let batch = self.pull(project, sub, n - got.len());
            if batch.is_empty() {
                if Instant::now() >= end {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            got.extend(batch);
        }
        got
    }

    fn pull_full(&self, project: &str, sub: &str, max: usize) -> Vec<PulledMessage> {
        let reply = self.call_ok(
            "POST",
            &format!("/v1/projects/{project}/subscriptions/{sub}:pull"),
            Some(&json!({"maxMessages": max.max(1), "returnImmediately": true})),
        );
        let Some(received) = reply["receivedMessages"].as_array() else {
            return Vec::new();
        };
        received
            .iter()
            .map(|r| {
                let m = &r["message"];
                let data = base64::engine::general_purpose::STANDARD
                    .decode(m["data"].as_str().unwrap_or_default())
                    .unwrap_or_else(|e| panic!("pulled message data is not base64 ({e}): {r}"));
                let mut attributes: Vec<(String, String)> = m["attributes"]
                    .as_object()
                    .map(|o| {
                        o.iter()
                            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                            .collect()
                    })
                    .unwrap_or_default();
                attributes.sort();
                PulledMessage {
                    ack_id: r["ackId"].as_str().expect("ackId").to_owned(),
                    data,
                    attributes,
                }
            })
            .collect()
    }

    /// Acknowledges `ack_ids` (no call when empty).
    pub fn acknowledge<S: AsRef<str>>(&self, project: &str, sub: &str, ack_ids: &[S]) {
        for chunk in ack_ids.chunks(1000) {
            let ids: Vec<&str> = chunk.iter().map(AsRef::as_ref).collect();
            self.call_ok(
                "POST",
                &format!("/v1/projects/{project}/subscriptions/{sub}:acknowledge"),
                Some(&json!({"ackIds": ids})),
            );
        }
    }

    /// Sets the ack deadline of leased messages (0 = give them back now, a "nack").
    pub fn modify_ack_deadline<S: AsRef<str>>(
        &self,
        project: &str,
        sub: &str,
        ack_ids: &[S],
        seconds: u32,
    ) {
        for chunk in ack_ids.chunks(1000) {
            let ids: Vec<&str> = chunk.iter().map(AsRef::as_ref).collect();
            self.call_ok(
                "POST",
                &format!("/v1/projects/{project}/subscriptions/{sub}:modifyAckDeadline"),
                Some(&json!({"ackIds": ids, "ackDeadlineSeconds": seconds})),
            );
        }
    }

    /// **Approximately** how many messages the subscription holds that are neither acknowledged
    /// nor leased: Pub/Sub has no count call, so this pulls (returnImmediately) until a pull
    /// comes back empty, then gives everything back with `modifyAckDeadline 0`. Messages another
    /// subscriber holds are not counted, and while this runs they are hidden from it; on an
    /// ordered subscription messages queued behind an unacknowledged one of the same key may not
    /// be delivered, so they may not be counted either. Meant for "everything was acked" (0) at
    /// the end of a test, with the program under test stopped.
    pub fn backlog(&self, project: &str, sub: &str) -> usize {
        let mut leased: Vec<String> = Vec::new();
        loop {
            let batch = self.pull(project, sub, 1000);
            if batch.is_empty() {
                break;
            }
            leased.extend(batch.into_iter().map(|(ack_id, ..)| ack_id));
        }
        self.modify_ack_deadline(project, sub, &leased, 0);
        leased.len()
    }

    /// Publishes each Cloud Logging `LogEntry` line as one message, in order, as a log sink
    /// would: the line's bytes as the data and the attribute `logging.googleapis.com/timestamp`
    /// set to the entry's `timestamp`. Unlike a sink, each message also gets the ordering key
    /// `resource.labels.job_id`, so an ordered subscription delivers each job's entries in order
    /// (deterministic tests). A line that is not a JSON object, or lacks those fields, is
    /// published as-is without the attribute or the key (for bad-input tests). Returns the
    /// message ids.
    pub fn publish_log_entries(
        &self,
        project: &str,
        topic: &str,
        lines: &[Vec<u8>],
    ) -> Vec<String> {
        let messages: Vec<Publish> = lines
            .iter()
            .map(|line| {
                let mut m = Publish::new(line.clone());
                if let Ok(entry) = serde_json::from_slice::<Value>(line) {
                    if let Some(ts) = entry["timestamp"].as_str() {
                        m = m.attr(TIMESTAMP_ATTRIBUTE, ts);
                    }
                    if let Some(job) = entry["resource"]["labels"]["job_id"].as_str() {
                        m = m.key(job);
                    }
                }
                m
            })
            .collect();
        self.publish(project, topic, &messages)
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        self.stop();
    }
}

struct PulledMessage {
    ack_id: String,
    data: Vec<u8>,
    attributes: Vec<(String, String)>,
}

/// The launcher: `dpkg -L google-cloud-cli-pubsub-emulator`, then the Debian package's path,
/// then `gcloud info`'s SDK root. Panics when none exists.
fn launcher() -> PathBuf {
    let from_dpkg = Command::new("dpkg")
        .args(["-L", "google-cloud-cli-pubsub-emulator"])
        .stderr(Stdio::null())
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .find(|l| l.ends_with("bin/cloud-pubsub-emulator"))
                .map(PathBuf::from)
        });
    let from_gcloud = || {
        Command::new("gcloud")
            .args(["info", "--format=value(installation.sdk_root)"])
            .stderr(Stdio::null())
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .filter(|root| !root.is_empty())
            .map(|root| Path::new(&root).join(SDK_RELATIVE))
    };
    from_dpkg
        .into_iter()
        .chain([PathBuf::from(DEFAULT_LAUNCHER)])
        .find(|p| p.is_file())
        .or_else(|| from_gcloud().filter(|p| p.is_file()))
        .unwrap_or_else(|| {
            panic!("the Pub/Sub emulator is not installed: no bin/cloud-pubsub-emulator from `dpkg -L google-cloud-cli-pubsub-emulator`, at {DEFAULT_LAUNCHER}, or under `gcloud info`'s SDK root (install google-cloud-cli-pubsub-emulator)")
        })
}

/// A port nothing listens on right now (bound, read, released).
/// A port nothing listens on now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind 127.0.0.1:0")
        .local_addr()
        .unwrap()
        .port()
}

// ---- a tiny HTTP/1.1 client ------------------------------------------------------------------

/// An HTTP answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    /// The status code.
    pub status: u16,
    /// Header names in lower case, values trimmed.
    pub headers: Vec<(String, String)>,
    /// The body, de-chunked.
    pub body: Vec<u8>,
}

impl Reply {
    /// The body as UTF-8 (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON; panics with the body when it is not.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "HTTP {} body is not JSON ({e}): {}",
                self.status,
                self.text()
            )
        })
    }
}

/// One request to `host` ("127.0.0.1:PORT") on a fresh connection with `Connection: close`;
/// `body` is sent as `application/json`. Handles `Content-Length`, chunked and read-to-EOF
/// bodies, and skips 1xx answers.
pub fn http(
    host: &str,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
    timeout: Duration,
) -> io::Result<Reply> {
    http_with(host, method, path, &[], body, timeout)
}

/// [`http`] with more request headers.
pub fn http_with(
    host: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
    timeout: Duration,
) -> io::Result<Reply> {
    let addr: SocketAddr = host
        .parse()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{host}: {e}")))?;
    let mut stream = TcpStream::connect_timeout(&addr, timeout.min(Duration::from_secs(5)))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nAccept: application/json\r\nConnection: close\r\n");
    for (name, value) in headers {
        req.push_str(&format!("{name}: {value}\r\n"));
    }
    if let Some(b) = body {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            b.len()
        ));
    } else if matches!(method, "POST" | "PUT" | "PATCH") {
        req.push_str("Content-Length: 0\r\n");
    }
    req.push_str("\r\n");
    let mut out = req.into_bytes();
    out.extend_from_slice(body.unwrap_or_default());
    stream.write_all(&out)?;
    stream.flush()?;
    let mut r = BufReader::new(stream);
    loop {
        let status_line =
            read_line(&mut r)?.ok_or_else(|| bad("connection closed before a status line"))?;
        let status: u16 = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad(&format!("status line {status_line:?}")))?;
        let mut headers = Vec::new();
        loop {
            match read_line(&mut r)? {
                None => return Err(bad("connection closed in the headers")),
                Some(h) if h.is_empty() => break,
                Some(h) => {
                    let (k, v) = h
                        .split_once(':')
                        .ok_or_else(|| bad(&format!("header line {h:?}")))?;
                    headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
                }
            }
        }
        if (100..200).contains(&status) {
            continue; // 100 Continue and friends: the real answer follows
        }
        let header = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        let mut body = Vec::new();
        if method == "HEAD" || status == 204 || status == 304 {
            // no body
        } else if header("transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
        {
            body = read_chunked(&mut r)?;
        } else if let Some(n) = header("content-length") {
            body = vec![
                0;
                n.parse()
                    .map_err(|_| bad(&format!("content-length {n:?}")))?
            ];
            r.read_exact(&mut body)?;
        } else {
            r.read_to_end(&mut body)?;
        }
        return Ok(Reply {
            status,
            headers,
            body,
        });
    }
}

fn bad(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("HTTP client: bad answer: {what}"),
    )
}

/// One line without its CRLF; `None` at end of stream.
fn read_line(r: &mut impl BufRead) -> io::Result<Option<String>> {
    let mut line = Vec::new();
    Ok((r.read_until(b'\n', &mut line)? > 0).then(|| {
        String::from_utf8_lossy(&line)
            .trim_end_matches(['\r', '\n'])
            .to_owned()
    }))
}

fn read_chunked(r: &mut impl BufRead) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line = read_line(r)?.ok_or_else(|| bad("chunked body cut short"))?;
        let hex = line.split(';').next().unwrap_or_default().trim();
        let n = usize::from_str_radix(hex, 16).map_err(|_| bad(&format!("chunk size {hex:?}")))?;
        if n == 0 {
            while read_line(r)?.is_some_and(|t| !t.is_empty()) {} // trailers, up to the empty line
            return Ok(body);
        }
        let start = body.len();
        body.resize(start + n, 0);
        r.read_exact(&mut body[start..])?;
        if read_line(r)?.is_none_or(|l| !l.is_empty()) {
            return Err(bad("no CRLF after a chunk"));
        }
    }
}

// ---- self-tests --------------------------------------------------------------------------------

/// The client against a canned chunked answer (two chunks, one with an extension: bytes no
/// server library writes on request) and the repository's fake server (`Content-Length`).
#[test]
fn the_http_client_reads_chunked_and_sized_bodies() {
    use super::http::{FakeServer, Response};
    use std::io::{Read, Write};
    let canned = TcpListener::bind("127.0.0.1:0").unwrap();
    let chunked_host = canned.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        let (mut c, _) = canned.accept().unwrap();
        let _ = c.read(&mut [0; 4096]);
        c.write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n4\r\n{\"a\"\r\n3;x=y\r\n:1}\r\n0\r\n\r\n")
            .unwrap();
    });
    let r = http(
        &chunked_host,
        "GET",
        "/chunked",
        None,
        Duration::from_secs(10),
    )
    .unwrap();
    assert_eq!((r.status, r.json()), (200, json!({"a": 1})));
    let server = FakeServer::start(|req| {
        Response::json(201, &json!({"echo": req.text(), "method": req.method}))
    });
    let host = server.url().trim_start_matches("http://").to_owned();
    let r = http(
        &host,
        "PUT",
        "/x",
        Some(b"{\"b\":2}"),
        Duration::from_secs(10),
    )
    .unwrap();
    assert_eq!(
        (r.status, r.json()),
        (201, json!({"echo": "{\"b\":2}", "method": "PUT"}))
    );
    let req = &server.requests()[0];
    assert_eq!(
        (req.header("content-type"), req.header("connection")),
        (Some("application/json"), Some("close"))
    );
}

#[test]
fn the_emulator_starts_and_round_trips_a_message() {
    let (p, topic, sub) = ("test-project", "exec-logs", "schedwatch-sub");
    let started = Instant::now();
    let mut emu = Emulator::start();
    eprintln!(
        "Pub/Sub emulator pid {} answered on {} after {:?}",
        emu.pid(),
        emu.host(),
        started.elapsed()
    );
    emu.create_topic(p, topic);
    emu.create_subscription(p, sub, topic, 30, true);
    let sent = ["first", "second", "third"].map(|d| {
        Publish::new(d)
            .attr("n", d)
            .attr(TIMESTAMP_ATTRIBUTE, "2026-03-02T02:00:07Z")
            .key("job-a")
    });
    let ids = emu.publish(p, topic, &sent);
    assert_eq!(ids.len(), 3);
    let got = emu.pull_n(p, sub, 3, Duration::from_secs(20));
    let data: Vec<&[u8]> = got.iter().map(|(_, d, _)| d.as_slice()).collect();
    assert_eq!(
        data,
        [b"first".as_slice(), b"second", b"third"],
        "{:?}",
        got
    );
    assert_eq!(
        got[1].2,
        [
            (
                "logging.googleapis.com/timestamp".to_owned(),
                "2026-03-02T02:00:07Z".to_owned()
            ),
            ("n".to_owned(), "second".to_owned())
        ]
    );
    let acks: Vec<String> = got.iter().map(|(a, ..)| a.clone()).collect();
    emu.acknowledge(p, sub, &acks);
    assert_eq!(emu.backlog(p, sub), 0);
    assert!(emu.pull(p, sub, 10).is_empty());

    // backlog gives messages back: they are still there afterwards.
    let lines: Vec<Vec<u8>> = ["a", "b"]
        .iter()
        .enumerate()
        .map(|(i, job)| json!({"timestamp": format!("2026-03-02T02:0{i}:00Z"), "resource": {"labels": {"job_id": job}}}).to_string().into_bytes())
        .chain([b"not json".to_vec()])
        .collect();
    emu.publish_log_entries(p, topic, &lines);
    assert_eq!(emu.backlog(p, sub), 3);
    let mut got = emu.pull_n(p, sub, 3, Duration::from_secs(20));
    got.sort_by(|a, b| a.1.cmp(&b.1));
    assert_eq!(got.iter().map(|(_, d, _)| d.clone()).collect::<Vec<_>>(), {
        let mut l = lines.clone();
        l.sort();
        l
    });
    assert!(got.iter().any(|(_, d, attrs)| d == &lines[1]
        && attrs
            == &[(
                TIMESTAMP_ATTRIBUTE.to_owned(),
                "2026-03-02T02:01:00Z".to_owned()
            )]));
    assert!(got
        .iter()
        .any(|(_, d, attrs)| d == b"not json" && attrs.is_empty()));

    let port = emu.port();
    emu.stop();
    assert!(!emu.is_running());
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_err(),
        "port {port} still open after stop"
    );

    // A restart on the same port answers, and starts empty: the emulator keeps everything in
    // memory.
    let restarted = Instant::now();
    let emu2 = Emulator::start_on(port);
    eprintln!(
        "restart on {} answered after {:?}",
        emu2.host(),
        restarted.elapsed()
    );
    assert_eq!(emu2.port(), port);
    assert_ne!(emu2.pid(), emu.pid());
    let r = emu2
        .call("GET", &format!("/v1/projects/{p}/topics/{topic}"), None)
        .unwrap();
    assert_eq!(r.status, 404, "{}", r.text());
    emu2.create_topic(p, topic);
    assert_eq!(
        emu2.call("GET", &format!("/v1/projects/{p}/topics/{topic}"), None)
            .unwrap()
            .status,
        200
    );
}

#[test]
fn a_failed_start_panics_with_the_log() {
    // The port is taken: the JVM logs a BindException (and stays up); start_on kills it and
    // panics with the log, quickly rather than after the 60 s timeout.
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let started = Instant::now();
    let err = std::panic::catch_unwind(|| Emulator::start_on(port))
        .err()
        .expect("start on a taken port must panic");
    let msg = err.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(
        msg.contains("log tail") && msg.contains("Address already in use"),
        "{msg}"
    );
    assert!(
        started.elapsed() < START_TIMEOUT,
        "took {:?}",
        started.elapsed()
    );
}
