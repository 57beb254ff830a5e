//! The long-running service (`run` on a subscription): Pub/Sub → pipeline → store → acks →
//! receivers, until SIGTERM or SIGINT.
//!
//! ```text
//!  pull tasks ──(bounded channel)──► processor thread ──► store commit ──► acks
//!  (source::pubsub, one per stream)    (batches of N msgs     (one fsync      (only now)
//!                                       or T ms)               a batch)          │
//!                                                                              outbox ──► receivers
//! ```
//!
//! The processor is one thread: the pipeline is synchronous CPU work, and a single writer keeps
//! commit order equal to processing order. A batch's messages are acked only after the batch's
//! effect — dedup keys, incident state, outbox rows — is committed. When a commit fails, the
//! batch's messages are dropped unacked (the client nacks them, so they come back) and the
//! pipeline's memory is rebuilt from the store, so nothing it did not commit survives.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use schedwatch_sinks::Alert;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::pipeline::Pipeline;
use crate::source::pubsub::{self, PubsubConfig, Received};
use crate::store::{Changes, EmbeddedStore, OutboxRow, StoreError};

/// `[state]` in the config file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StateConfig {
    /// The folder of the embedded store (`schedwatch.redb`).
    pub dir: PathBuf,
    /// A batch is committed this long after its first message at the latest: the durability
    /// window, and the latency a commit adds to an alert.
    #[serde(with = "humantime_serde")]
    pub commit_interval: Duration,
    /// A batch is committed at this many messages at the latest.
    pub commit_max_messages: usize,
    /// On SIGTERM, how long in-flight work may take before the process exits anyway (Cloud
    /// Run's grace period is 10 s). Messages not acked by then come back.
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
}

impl Default for StateConfig {
    fn default() -> Self {
        StateConfig {
            dir: PathBuf::from("schedwatch-state"),
            // One fsync per 5 ms is ~200 commits a second: far below what a disk sustains, and
            // far below Pub/Sub's own delivery latency.
            commit_interval: Duration::from_millis(5),
            commit_max_messages: 500,
            shutdown_timeout: Duration::from_secs(10),
        }
    }
}

/// How often progress is logged while messages flow.
const PROGRESS_INTERVAL: Duration = Duration::from_secs(60);

/// How often alerts a receiver refused are offered again.
const RETRY_INTERVAL: Duration = Duration::from_secs(30);

/// Where delivered alerts go (stdout for now).
pub type Emit = Box<dyn FnMut(&Alert) -> std::io::Result<()> + Send>;

/// Runs until a signal: pulls, processes, commits, acks, delivers.
pub fn run(
    mut pipeline: Pipeline,
    store: EmbeddedStore,
    source: PubsubConfig,
    state: StateConfig,
    mut emit: Emit,
    rebuild: Box<dyn Fn() -> anyhow::Result<Pipeline> + Send>,
) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        // The pull tasks only move bytes; the processor has its own thread.
        .worker_threads(2)
        .enable_all()
        .build()?;
    let handle = runtime.handle().clone();
    let shutdown = CancellationToken::new();

    // The pipeline carries on from the store: open incidents, recent dedup keys.
    let stored = store.load()?;
    pipeline.restore(&stored);
    pipeline.track_changes();
    tracing::info!(open_incidents = stored.incidents.len(), dedup_keys = stored.dedup_keys.len(), outbox = stored.outbox.len(), store = %store.path().display(), "state loaded");

    let client = runtime.block_on(pubsub::connect(&source))?;
    // Room for every message the client may lease at once: the channel never holds back a
    // lease the flow control already granted.
    let capacity = (source.max_outstanding_messages.max(1) as usize) * source.streams.max(1);
    let (tx, rx) = mpsc::channel::<Received>(capacity);
    for n in 0..source.streams.max(1) {
        runtime.spawn(pubsub::pull(
            client.clone(),
            source.clone(),
            n,
            tx.clone(),
            shutdown.clone(),
        ));
    }
    drop(tx);

    {
        let shutdown = shutdown.clone();
        runtime.spawn(async move {
            wait_for_signal().await;
            tracing::info!("shutting down: no more pulling; finishing in-flight work");
            shutdown.cancel();
        });
    }

    let deadline_after_signal = state.shutdown_timeout;
    let processor = std::thread::Builder::new()
        .name("processor".into())
        .spawn({
            let handle = handle.clone();
            move || {
                // Timers (batch deadlines) need the runtime's context on this thread too.
                let _context = handle.enter();
                let mut p = Processor {
                    pipeline,
                    store,
                    state,
                    handle,
                    pending_sent: Vec::new(),
                    undelivered: Vec::new(),
                    last_retry: Instant::now(),
                    last_progress: (Instant::now(), 0),
                    rebuild,
                };
                // Alerts a crash left undelivered go first.
                let mut outbox = stored.outbox;
                p.deliver(&mut outbox, &mut emit);
                p.run(rx, &mut emit)
            }
        })?;

    // Wait for the processor; once a signal came, give it `shutdown_timeout` at most.
    let mut signalled: Option<Instant> = None;
    while !processor.is_finished() {
        if signalled.is_none() && shutdown.is_cancelled() {
            signalled = Some(Instant::now());
        }
        if signalled.is_some_and(|at| at.elapsed() > deadline_after_signal) {
            tracing::warn!("in-flight work did not finish within {deadline_after_signal:?}; exiting: unacked messages will be redelivered");
            std::process::exit(0);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let result = processor
        .join()
        .map_err(|_| anyhow::anyhow!("the processor thread panicked"))?;
    runtime.shutdown_timeout(Duration::from_secs(1));
    result
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

struct Processor {
    pipeline: Pipeline,
    store: EmbeddedStore,
    state: StateConfig,
    handle: tokio::runtime::Handle,
    /// Outbox rows delivered and not yet recorded as sent: recorded with the next commit.
    pending_sent: Vec<u64>,
    /// Outbox rows a receiver refused: retried every `RETRY_INTERVAL`.
    undelivered: Vec<OutboxRow>,
    last_retry: Instant,
    /// When progress was last logged, and the entry count then.
    last_progress: (Instant, u64),
    rebuild: Box<dyn Fn() -> anyhow::Result<Pipeline> + Send>,
}

impl Processor {
    fn run(&mut self, mut rx: mpsc::Receiver<Received>, emit: &mut Emit) -> anyhow::Result<()> {
        let mut batch: Vec<Received> = Vec::with_capacity(self.state.commit_max_messages);
        loop {
            if !self.undelivered.is_empty() && self.last_retry.elapsed() >= RETRY_INTERVAL {
                self.last_retry = Instant::now();
                let mut rows = std::mem::take(&mut self.undelivered);
                tracing::info!(alerts = rows.len(), "retrying undelivered alerts");
                self.deliver(&mut rows, emit);
            }
            // Wait for a first message; while idle, record deliveries and retry refused ones.
            let idle_wait = if !self.pending_sent.is_empty() {
                Some(self.state.commit_interval)
            } else if !self.undelivered.is_empty() {
                Some(RETRY_INTERVAL.saturating_sub(self.last_retry.elapsed()))
            } else {
                None
            };
            let first = match idle_wait {
                None => self.handle.block_on(rx.recv()),
                Some(wait) => match self.handle.block_on(tokio::time::timeout(wait, rx.recv())) {
                    Ok(m) => m,
                    Err(_) => {
                        self.commit(Vec::new(), emit);
                        continue;
                    }
                },
            };
            let Some(first) = first else { break };
            batch.push(first);
            let deadline = tokio::time::Instant::now() + self.state.commit_interval;
            while batch.len() < self.state.commit_max_messages {
                match rx.try_recv() {
                    Ok(m) => batch.push(m),
                    Err(mpsc::error::TryRecvError::Disconnected) => break,
                    Err(mpsc::error::TryRecvError::Empty) => match self
                        .handle
                        .block_on(tokio::time::timeout_at(deadline, rx.recv()))
                    {
                        Ok(Some(m)) => batch.push(m),
                        Ok(None) | Err(_) => break,
                    },
                }
            }
            self.process(std::mem::take(&mut batch), emit);
            self.log_progress();
        }
        // The pull tasks are gone: record the last deliveries.
        if !self.pending_sent.is_empty() {
            self.commit(Vec::new(), emit);
        }
        tracing::info!("{}", self.pipeline.stats.summary());
        Ok(())
    }

    /// Every `PROGRESS_INTERVAL` while messages flow: what was read and sent, and the rate.
    fn log_progress(&mut self) {
        let (at, entries_then) = self.last_progress;
        let elapsed = at.elapsed();
        if elapsed < PROGRESS_INTERVAL {
            return;
        }
        let entries = self.pipeline.stats.entries;
        let rate = (entries - entries_then) as f64 / elapsed.as_secs_f64();
        tracing::info!(
            rate = format_args!("{rate:.0}/s"),
            open_incidents = self.pipeline.incidents().open_count(),
            undelivered = self.undelivered.len(),
            "progress: {}",
            self.pipeline.stats.summary()
        );
        self.last_progress = (Instant::now(), entries);
    }

    fn process(&mut self, batch: Vec<Received>, emit: &mut Emit) {
        let mut alerts = Vec::new();
        for m in &batch {
            self.pipeline.process_item(&m.data, &mut alerts);
        }
        tracing::debug!(
            messages = batch.len(),
            alerts = alerts.len(),
            "batch processed"
        );
        self.commit_and_ack(batch, alerts, emit);
    }

    fn commit_and_ack(&mut self, batch: Vec<Received>, alerts: Vec<Alert>, emit: &mut Emit) {
        if self.commit(alerts, emit) {
            for m in batch {
                pubsub::ack(m.handler, &self.handle);
            }
        } else {
            // Not committed: dropping the handlers nacks the messages; they come back.
            tracing::warn!(
                messages = batch.len(),
                "batch not committed; its messages will be redelivered"
            );
            drop(batch);
        }
    }

    /// Commits the pipeline's changes with `alerts` and the deliveries recorded so far, then
    /// delivers the new outbox rows. False when the commit failed.
    fn commit(&mut self, alerts: Vec<Alert>, emit: &mut Emit) -> bool {
        let mut changes: Changes = self.pipeline.take_changes(alerts);
        changes.sent = std::mem::take(&mut self.pending_sent);
        let sent = changes.sent.clone();
        if changes.is_empty() {
            return true;
        }
        match self.store.commit(changes) {
            Ok(mut rows) => {
                self.deliver(&mut rows, emit);
                true
            }
            Err(e) => {
                tracing::error!("state store commit failed: {e}");
                self.pending_sent = sent;
                self.recover(e);
                false
            }
        }
    }

    /// After a failed commit: rebuild the pipeline from what the store holds, so nothing that
    /// was not committed lives on in memory (the redelivered messages must count again).
    fn recover(&mut self, first: StoreError) {
        let mut delay = Duration::from_millis(100);
        let mut last = first.to_string();
        loop {
            match self
                .store
                .load()
                .map_err(anyhow::Error::from)
                .and_then(|state| {
                    let mut fresh = (self.rebuild)()?;
                    fresh.restore(&state);
                    fresh.track_changes();
                    fresh.stats = self.pipeline.stats.clone();
                    Ok(fresh)
                }) {
                Ok(fresh) => {
                    self.pipeline = fresh;
                    tracing::info!("state reloaded from the store after: {last}");
                    return;
                }
                Err(e) => {
                    last = e.to_string();
                    tracing::error!("cannot reload state ({last}); retrying in {delay:?}");
                    std::thread::sleep(delay);
                    delay = (delay * 2).min(Duration::from_secs(10));
                }
            }
        }
    }

    /// Hands outbox rows to the receivers; a delivered row is recorded as sent with the next
    /// commit (a crash in between delivers it again: at least once, never lost).
    fn deliver(&mut self, rows: &mut Vec<OutboxRow>, emit: &mut Emit) {
        for row in rows.drain(..) {
            match emit(&row.alert) {
                Ok(()) => self.pending_sent.push(row.id),
                Err(e) => {
                    tracing::error!(incident_id = %row.alert.incident_id, "alert not delivered: {e}; it stays in the outbox and is retried in {RETRY_INTERVAL:?}");
                    self.undelivered.push(row);
                }
            }
        }
    }
}
