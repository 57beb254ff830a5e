//! The service driven inside the test process: the batch processor on a paused clock, fed
//! messages as the push door hands them (each with the ack its request waits for); and the
//! whole service through `run(service, shutdown)`, pushed to on a loopback port and stopped by
//! its token. The embedded store in a temporary folder, a file receiver.

use std::path::Path;

use tokio::sync::oneshot;

use super::*;
use crate::correlate::{Correlator, Inventory};
use crate::diagnose::Diagnoser;
use crate::incidents::IncidentRules;
use crate::source::Ack;
use schedwatch_sinks::file::FileReceiver;
use schedwatch_sinks::Format;

const SEED: &str = "../shared/examples/oidc-to-run-job-then-fixed";

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn pipeline() -> anyhow::Result<Pipeline> {
    let inventory = Inventory::load(&root().join(SEED).join("jobs"))?;
    Ok(Pipeline::new(
        IncidentRules::default(),
        1000,
        Correlator::new(Some(inventory), None),
        Diagnoser::default(),
    ))
}

/// The example's entries up to its first success: failures that open and fire one incident.
fn failures() -> Vec<String> {
    let text = std::fs::read_to_string(root().join(SEED).join("logs.ndjson")).unwrap();
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .take_while(|l| !l.contains("URL_CRAWLED"))
        .map(str::to_owned)
        .collect()
}

/// The processor's parts: alerts to `alerts` (NDJSON).
fn parts(state: StateConfig, alerts: &Path) -> Parts {
    let receiver = FileReceiver::file("file", alerts, Format::Json).unwrap();
    Parts {
        pipeline: pipeline().unwrap(),
        state,
        receivers: vec![Arc::new(receiver)],
        routes: Vec::new(),
        rebuild: Arc::new(pipeline),
        served: false,
    }
}

/// `line` as the push door hands it over, and what its request waits on.
fn message(n: usize, line: &str) -> (Received, oneshot::Receiver<()>) {
    let (ack, acked) = oneshot::channel();
    let m = Received {
        data: bytes::Bytes::from(line.to_owned()),
        message_id: n.to_string(),
        ack: Ack::Push(ack),
    };
    (m, acked)
}

/// The processor on the embedded store in `dir`, until `rx` closes.
async fn process_in(
    dir: &Path,
    state: StateConfig,
    rx: mpsc::Receiver<Received>,
) -> anyhow::Result<()> {
    let mut store = EmbeddedStore::open(dir, 1000)?;
    let stored = Store::load(&mut store).await?;
    process(store, stored, parts(state, &dir.join("alerts.ndjson")), rx).await
}

#[tokio::test(start_paused = true)]
async fn a_batch_is_acked_after_its_commit_and_its_alert_delivered_and_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let lines = failures();
    let (tx, rx) = mpsc::channel(lines.len());
    let feed = async {
        let mut acks = Vec::new();
        for (n, line) in lines.iter().enumerate() {
            let (m, acked) = message(n, line);
            tx.send(m).await.unwrap();
            acks.push(acked);
        }
        for acked in acks {
            acked.await.expect("acked, not dropped");
        }
        // The firing alert reaches the file; then the source closes.
        let alerts = dir.path().join("alerts.ndjson");
        while !std::fs::read_to_string(&alerts).is_ok_and(|t| t.contains("\"firing\"")) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        drop(tx);
    };
    let (result, ()) = tokio::join!(process_in(dir.path(), StateConfig::default(), rx), feed);
    result.unwrap();

    // What the next start carries on from: the incident open, every entry's key known, the
    // delivered alert recorded (not in the outbox to send again).
    let state = EmbeddedStore::open(dir.path(), 1000)
        .unwrap()
        .load()
        .unwrap();
    assert_eq!(state.incidents.len(), 1);
    assert_eq!(state.incidents[0].0.job_id(), "commit-worker");
    assert_eq!(state.dedup_keys.len(), lines.len());
    assert!(state.outbox.is_empty(), "{:?}", state.outbox);
    let text = std::fs::read_to_string(dir.path().join("alerts.ndjson")).unwrap();
    assert_eq!(text.lines().count(), 1, "{text}");
}

#[tokio::test(start_paused = true)]
async fn a_batch_is_committed_at_commit_interval_or_at_commit_max_messages_whichever_first() {
    let dir = tempfile::tempdir().unwrap();
    let lines = failures();
    assert!(lines.len() >= 4);
    let state = StateConfig {
        commit_interval: Duration::from_secs(60),
        commit_max_messages: 3,
        ..StateConfig::default()
    };
    let (tx, rx) = mpsc::channel(8);
    let feed = async {
        // A lone message waits for the interval, counted from it.
        let started = tokio::time::Instant::now();
        let (m, acked) = message(0, &lines[0]);
        tx.send(m).await.unwrap();
        acked.await.unwrap();
        let waited = started.elapsed();
        assert!(
            (Duration::from_secs(60)..Duration::from_secs(61)).contains(&waited),
            "{waited:?}"
        );
        // Three are a full batch: committed without waiting.
        let started = tokio::time::Instant::now();
        let mut acks = Vec::new();
        for (n, line) in lines[1..4].iter().enumerate() {
            let (m, acked) = message(n + 1, line);
            tx.send(m).await.unwrap();
            acks.push(acked);
        }
        for acked in acks {
            acked.await.unwrap();
        }
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
        drop(tx);
    };
    let (result, ()) = tokio::join!(process_in(dir.path(), state, rx), feed);
    result.unwrap();
    let state = EmbeddedStore::open(dir.path(), 1000)
        .unwrap()
        .load()
        .unwrap();
    assert_eq!(state.dedup_keys.len(), 4);
}

/// One push request on a fresh connection; the answer's status code.
async fn push(addr: std::net::SocketAddr, n: usize, line: &str) -> u16 {
    use base64::Engine as _;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let body = serde_json::json!({
        "message": {
            "data": base64::engine::general_purpose::STANDARD.encode(line),
            "messageId": n.to_string(),
        },
        "subscription": "projects/acme-prod/subscriptions/schedwatch-push",
    })
    .to_string();
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "POST /pubsub/push HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    conn.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    conn.read_to_end(&mut answer).await.unwrap();
    let answer = String::from_utf8_lossy(&answer);
    answer
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {answer}"))
}

/// The whole service through its entry, `run(service, shutdown)`, inside this process: the push
/// door on a loopback port, the embedded store, a file receiver. Each request is answered 204
/// once its entry is committed; cancelling the token (what a signal does in `main`) ends `run`
/// with `Ok`, and the next start finds the state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_runs_in_process_from_its_entry_until_its_token_is_cancelled() {
    let dir = tempfile::tempdir().unwrap();
    let addr = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap()
    };
    let alerts = dir.path().join("alerts.ndjson");
    let service = Service {
        pipeline: pipeline().unwrap(),
        store: Backend::Embedded(EmbeddedStore::open(dir.path(), 1000).unwrap()),
        source: Source::Push(crate::source::push::PushConfig {
            allow_unauthenticated: true,
            ..Default::default()
        }),
        listen: Some(addr),
        max_connections: 16,
        state: StateConfig::default(),
        receivers: vec![Arc::new(
            FileReceiver::file("file", &alerts, Format::Json).unwrap(),
        )],
        routes: Vec::new(),
        rebuild: Arc::new(pipeline),
    };
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(run(service, shutdown.clone()));

    let lines = failures();
    // The port is bound inside `run`: the first request may come before it listens.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never listened on {addr}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for (n, line) in lines.iter().enumerate() {
        assert_eq!(push(addr, n, line).await, 204, "entry {n}");
    }
    while !std::fs::read_to_string(&alerts).is_ok_and(|t| t.contains("\"firing\"")) {
        assert!(tokio::time::Instant::now() < deadline, "no firing alert");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(30), running)
        .await
        .expect("run ends after its token is cancelled")
        .unwrap()
        .expect("run ends with Ok");
    // Stopped: the port is closed, and the next start carries on from the file.
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    let state = EmbeddedStore::open(dir.path(), 1000)
        .unwrap()
        .load()
        .unwrap();
    assert_eq!(state.incidents.len(), 1);
    assert_eq!(state.dedup_keys.len(), lines.len());
}
