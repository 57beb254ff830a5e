//! The service driven inside the test process, on a paused clock: messages handed to the
//! batch processor as the push door hands them (each with the ack its request waits for), the
//! embedded store in a temporary folder, a file receiver.

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
