//! The batch processor: messages → batch → store → acks → receivers, on any [`Store`].
//!
//! One batch at a time: a single writer keeps commit order equal to processing order. A batch
//! is begun on the store (which reads what its jobs need, if the process does not hold it),
//! run through the pipeline, committed with the deliveries recorded so far, and only then are
//! its messages acked and its new outbox rows handed to the receivers. A batch that fails is
//! dropped unacked (the client nacks it, so it comes back), and the next one waits a backoff.
//!
//! A failure of the process's own state (the embedded file) is tracked until a commit succeeds
//! again: the store is recovered (reopened after an I/O error) and the pipeline rebuilt from
//! what it holds, so nothing it did not commit lives on in memory; while idle, a write is tried
//! every backoff, so readiness comes back without traffic. Failing for longer than
//! `[state] unhealthy_after` turns `/healthz` to 503 (with nothing serving `/healthz`, the
//! process exits 1); a damaged file makes it exit 1 at once. A shared database's failure is
//! waited out with the same backoff: restarting a replica would not mend it.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::in_flight::InFlight;
use crate::metrics::metrics;
use crate::pipeline::Pipeline;
use crate::source::Received;
use crate::store::{BatchState, Changes, OutboxRow, StateConfig, Store, StoreError, Upkeep};

/// Builds a fresh pipeline, to rebuild the state after a failed commit.
pub type Rebuild = Arc<dyn Fn() -> anyhow::Result<Pipeline> + Send + Sync>;

/// How often progress is logged while messages flow.
const PROGRESS_INTERVAL: Duration = Duration::from_secs(60);

/// The processor and what it runs with.
pub(super) struct Processor<S: Store> {
    /// `None` only while a batch runs through it on the blocking pool.
    pipeline: Option<Pipeline>,
    store: S,
    state: StateConfig,
    flight: InFlight,
    rebuild: Rebuild,
    /// When progress was last logged, and the entry count then.
    last_progress: (Instant, u64),
    /// After a store failed: how long to wait before the next batch (redelivered messages
    /// must not spin against a database that is down, or a disk that is full).
    backoff: Duration,
    /// Since when the process's own state has failed (no commit succeeded since).
    failing_since: Option<Instant>,
    /// Whether `/healthz` is served: if not, a store that cannot recover ends the process.
    served: bool,
    /// Why the processor must stop (the store cannot recover): the process exits 1.
    fatal: Option<anyhow::Error>,
    /// When the store's upkeep is next due; `None`: it has none.
    next_upkeep: Option<Instant>,
}

/// What the processor waited for.
enum Woken {
    Message(Option<Received>),
    Report(crate::notify::deliver::Report),
    Idle,
}

impl<S: Store> Processor<S> {
    /// A processor on `store`, `pipeline` restored from what it holds.
    pub(super) fn new(
        pipeline: Pipeline,
        store: S,
        state: StateConfig,
        flight: InFlight,
        rebuild: Rebuild,
        served: bool,
    ) -> Self {
        let next_upkeep = store.upkeep_every().map(|_| Instant::now());
        Processor {
            pipeline: Some(pipeline),
            store,
            state,
            flight,
            rebuild,
            last_progress: (Instant::now(), 0),
            backoff: Duration::ZERO,
            failing_since: None,
            served,
            fatal: None,
            next_upkeep,
        }
    }

    fn pipeline(&self) -> &Pipeline {
        self.pipeline
            .as_ref()
            .expect("the pipeline is back after each batch")
    }

    /// Delivers `outbox` (alerts a crash left undelivered go first), then processes batches
    /// from `rx` until it closes, and finishes the deliveries in flight.
    pub(super) async fn run(
        mut self,
        outbox: Vec<OutboxRow>,
        mut rx: mpsc::Receiver<Received>,
    ) -> anyhow::Result<()> {
        self.flight.deliver(outbox);
        self.upkeep().await;
        let mut batch: Vec<Received> = Vec::with_capacity(self.state.commit_max_messages);
        loop {
            // Wait for a first message; meanwhile take the receivers' reports, and record
            // them once nothing else comes for a commit interval.
            let idle = self.idle_wait();
            let woken = tokio::select! {
                m = rx.recv() => Woken::Message(m),
                Some(r) = self.flight.next_report() => Woken::Report(r),
                _ = sleep_or_never(idle) => Woken::Idle,
            };
            let first = match woken {
                Woken::Message(m) => m,
                Woken::Report(r) => {
                    // A burst of deliveries is recorded at once, not one report a batch.
                    self.flight.report(r);
                    self.flight.take_reports();
                    continue;
                }
                Woken::Idle => {
                    self.record().await;
                    self.stop_if_fatal()?;
                    self.upkeep().await;
                    continue;
                }
            };
            let Some(first) = first else { break };
            batch.push(first);
            let deadline = Instant::now() + self.state.commit_interval;
            while batch.len() < self.state.commit_max_messages {
                match rx.try_recv() {
                    Ok(m) => batch.push(m),
                    Err(mpsc::error::TryRecvError::Disconnected) => break,
                    Err(mpsc::error::TryRecvError::Empty) => {
                        match tokio::time::timeout_at(deadline, rx.recv()).await {
                            Ok(Some(m)) => batch.push(m),
                            Ok(None) | Err(_) => break,
                        }
                    }
                }
            }
            self.process(std::mem::take(&mut batch)).await;
            self.stop_if_fatal()?;
            self.upkeep().await;
            self.log_progress();
        }
        self.finish().await
    }

    /// How long to wait for a message before idle work: recording deliveries (after a commit
    /// interval), trying a write while the store fails (every backoff: readiness comes back
    /// without traffic, and a push service that is not ready gets none), the store's upkeep.
    fn idle_wait(&self) -> Option<Duration> {
        let record = (self.flight.has_records() || self.failing_since.is_some())
            .then(|| self.state.commit_interval.max(self.backoff));
        let upkeep = self
            .next_upkeep
            .map(|at| at.saturating_duration_since(Instant::now()));
        record.into_iter().chain(upkeep).min()
    }

    /// The sources are gone: let deliveries in flight finish (half the shutdown deadline at
    /// most; what is left is delivered again at the next start), and record them.
    async fn finish(mut self) -> anyhow::Result<()> {
        let until = Instant::now() + self.state.shutdown_timeout / 2;
        while self.flight.pending() > 0 {
            match tokio::time::timeout_at(until, self.flight.next_report()).await {
                Ok(Some(r)) => self.flight.report(r),
                Ok(None) | Err(_) => break,
            }
        }
        if self.flight.pending() > 0 {
            tracing::warn!(alerts = self.flight.pending(), "alerts still being delivered at shutdown stay in the outbox: they are delivered at the next start");
        }
        self.record().await;
        self.stop_if_fatal()?;
        tracing::info!(
            "{}; {} deliveries refused for good",
            self.pipeline().stats.summary(),
            self.flight.failed_deliveries
        );
        Ok(())
    }

    /// Every `PROGRESS_INTERVAL` while messages flow: what was read and sent, and the rate.
    fn log_progress(&mut self) {
        let (at, entries_then) = self.last_progress;
        let elapsed = at.elapsed();
        if elapsed < PROGRESS_INTERVAL {
            return;
        }
        let pipeline = self.pipeline();
        let entries = pipeline.stats.entries;
        let rate = (entries - entries_then) as f64 / elapsed.as_secs_f64();
        tracing::info!(
            rate = format_args!("{rate:.0}/s"),
            open_incidents = pipeline.incidents().open_count(),
            alerts_in_delivery = self.flight.pending(),
            deliveries_refused = self.flight.failed_deliveries,
            "progress: {}",
            pipeline.stats.summary()
        );
        self.last_progress = (Instant::now(), entries);
    }

    /// Ends the run when the store cannot recover: the process exits 1.
    fn stop_if_fatal(&mut self) -> anyhow::Result<()> {
        match self.fatal.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// One batch: begun on the store, run through the pipeline, committed, acked, its alerts
    /// handed to the receivers.
    async fn process(&mut self, batch: Vec<Received>) {
        if !self.backoff.is_zero() {
            tokio::time::sleep(self.backoff).await;
        }
        let mut decoded = Vec::with_capacity(batch.len());
        for m in &batch {
            self.pipeline().decode(&m.data, &mut decoded);
        }
        let mut keys = Vec::with_capacity(decoded.len());
        let mut jobs = Vec::with_capacity(decoded.len());
        for a in decoded.iter().flatten() {
            keys.push(a.dedup_key);
            jobs.push(a.job.clone());
        }
        // The time in the store's calls: the transaction (a shared store's stays open while
        // the pipeline runs, its API look-ups included), and waits on other replicas' locks.
        let started = Instant::now();
        let begun = with_records(
            &self.store,
            &mut self.flight,
            self.store.begin(&keys, &jobs),
        );
        let (tx, read) = match begun.await {
            Ok(begun) => begun,
            Err(e) => {
                metrics().commit(false);
                return self.failed(e, batch).await;
            }
        };
        let in_store = started.elapsed();
        let (mut changes, made) = self.run_pipeline(decoded, read).await;
        changes.sent = self.flight.take_done();
        let done = changes.sent.clone();
        let started = Instant::now();
        let committed = with_records(
            &self.store,
            &mut self.flight,
            self.store.commit(tx, changes),
        );
        let result = committed.await;
        let in_store = in_store + started.elapsed();
        let m = metrics();
        m.commit(result.is_ok());
        tracing::debug!(
            messages = batch.len(),
            alerts = made,
            store_ms = in_store.as_secs_f64() * 1e3,
            committed = result.is_ok(),
            "batch processed"
        );
        match result {
            Ok(rows) => {
                m.store_transaction.observe(in_store.as_secs_f64());
                self.succeeded();
                self.ack(batch);
                self.flight.deliver(rows);
            }
            Err(e) => {
                self.flight.restore(done, Vec::new());
                self.failed(e, batch).await;
            }
        }
        let pipeline = self.pipeline();
        m.pipeline_stats(&pipeline.stats, pipeline.incidents().open_count());
    }

    /// Runs a decoded batch through the pipeline, against `read` when the store handed over
    /// its jobs' state; returns the changes to commit and how many alerts they hold. On the
    /// blocking pool: the pipeline is CPU work, and its Cloud Scheduler API look-ups block
    /// on the API client's own runtime.
    async fn run_pipeline(
        &mut self,
        decoded: Vec<crate::decode::Decoded>,
        read: Option<BatchState>,
    ) -> (Changes, usize) {
        let mut pipeline = self.pipeline.take().expect("one batch at a time");
        let step = tokio::task::spawn_blocking(move || {
            if let Some(read) = read {
                pipeline.load_batch(read.incidents, read.fresh);
            }
            let mut alerts = Vec::new();
            pipeline.process_batch(decoded, &mut alerts);
            let made = alerts.len();
            let changes = pipeline.take_changes(alerts);
            (pipeline, changes, made)
        });
        let (pipeline, changes, made) = match step.await {
            Ok(done) => done,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        };
        self.pipeline = Some(pipeline);
        (changes, made)
    }

    /// Acks a committed batch's messages, and counts them.
    fn ack(&self, batch: Vec<Received>) {
        metrics().acked.inc_by(batch.len() as u64);
        let handle = tokio::runtime::Handle::current();
        for m in batch {
            m.ack.ack(&handle);
        }
    }

    /// Records the deliveries reported so far outside a batch (idle, or at shutdown). While
    /// the process's own state fails, it writes even with nothing to record: its success says
    /// the store works again.
    async fn record(&mut self) {
        self.flight.take_reports();
        if !self.flight.has_records() && self.failing_since.is_none() {
            return;
        }
        let (sent, retried) = self.flight.take_records();
        let result = self.store.record(&sent, &retried).await;
        metrics().commit(result.is_ok());
        match result {
            Ok(()) => self.succeeded(),
            Err(e) => {
                self.flight.restore(sent, retried);
                self.failed(e, Vec::new()).await;
            }
        }
    }

    /// A commit succeeded: the store works.
    fn succeeded(&mut self) {
        if let Some(since) = self.failing_since.take() {
            tracing::info!(
                "state store: commits succeed again, after failing for {:.1} s",
                since.elapsed().as_secs_f64()
            );
            metrics().set_unhealthy(None);
        }
        self.backoff = Duration::ZERO;
    }

    /// A store call failed: nothing of `batch` was committed, so its messages are handed back
    /// (dropping them nacks them), the next try waits longer, and the store is recovered.
    async fn failed(&mut self, e: StoreError, batch: Vec<Received>) {
        let m = metrics();
        m.nacked.inc_by(batch.len() as u64);
        drop(batch);
        self.back_off();
        tracing::warn!(
            "state store commit failed: {e}; nothing it held is acked (the messages come back); {}retrying in {:?}",
            if e.needs_reopen() { "reopening the store and " } else { "" },
            self.backoff
        );
        self.recover(e).await;
    }

    /// After a store failed (100 ms doubling to 10 s).
    fn back_off(&mut self) {
        self.backoff =
            (self.backoff * 2).clamp(Duration::from_millis(100), Duration::from_secs(10));
    }

    /// Makes the store usable again and rebuilds the pipeline from what it holds, so nothing
    /// that was not committed lives on in memory (the redelivered messages must count again).
    /// Tried again with backoff while it fails. The process's own state that cannot recover
    /// sets [`Processor::fatal`], or turns `/healthz` to 503 ([`Processor::check_unhealthy`]);
    /// a shared store's lasting error (a refused login) is said to be lasting, and waited out.
    async fn recover(&mut self, first: StoreError) {
        let local = first.is_local();
        let since = local.then(|| *self.failing_since.get_or_insert_with(Instant::now));
        let mut error = anyhow::Error::new(first);
        loop {
            let store_error = error.downcast_ref::<StoreError>();
            if store_error.is_some_and(|e| !e.is_retryable()) {
                let reason = error.to_string();
                if !local {
                    tracing::error!("{reason}; this is not transient: it does not pass by itself until the config or the database changes (tried again every {:?})", self.backoff);
                    return;
                }
                tracing::error!(
                    "{reason}; schedwatch cannot go on: it exits (status 1) to be restarted"
                );
                metrics().set_unhealthy(Some(reason));
                self.fatal = Some(error);
                return;
            }
            if let Some(since) = since {
                self.check_unhealthy(since, &error);
                if self.fatal.is_some() {
                    return;
                }
            }
            let reopen = store_error.is_some_and(StoreError::needs_reopen);
            match self.reload(reopen).await {
                Ok(()) => return,
                Err(e) => {
                    tracing::warn!(
                        "state store: cannot {} the state: {e}; retrying in {:?}",
                        if reopen {
                            "reopen the store and reload"
                        } else {
                            "reload"
                        },
                        self.backoff
                    );
                    tokio::time::sleep(self.backoff).await;
                    self.back_off();
                    error = e;
                }
            }
        }
    }

    /// Recovers the store (reopened first when `reopen`) and, when it hands back a state,
    /// rebuilds the pipeline from it and delivers its outbox.
    async fn reload(&mut self, reopen: bool) -> anyhow::Result<()> {
        if reopen {
            metrics().store_reopens.inc();
        }
        let Some(state) = self.store.recover(reopen).await? else {
            return Ok(());
        };
        let rebuild = self.rebuild.clone();
        let mut fresh = match tokio::task::spawn_blocking(move || rebuild()).await {
            Ok(built) => built?,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        };
        fresh.restore(&state);
        fresh.track_changes();
        fresh.stats = self.pipeline().stats.clone();
        self.pipeline = Some(fresh);
        tracing::info!(
            open_incidents = state.incidents.len(),
            outbox = state.outbox.len(),
            "state reloaded from the store"
        );
        self.flight.deliver_reloaded(state.outbox);
        Ok(())
    }

    /// The process's own state failing for longer than `unhealthy_after` cannot recover by
    /// itself: `/healthz` answers 503 with the reason, so the platform restarts the process (it
    /// goes on trying meanwhile, and is healthy again if a commit succeeds first). With nothing
    /// serving `/healthz`, the process exits 1 instead.
    fn check_unhealthy(&mut self, since: Instant, error: &anyhow::Error) {
        let failing = since.elapsed();
        if failing < self.state.unhealthy_after {
            return;
        }
        let reason = format!(
            "the state store has failed for {} s (state.unhealthy_after = {}): {error}",
            failing.as_secs(),
            humantime::format_duration(self.state.unhealthy_after)
        );
        let first = metrics().unhealthy().is_none();
        metrics().set_unhealthy(Some(reason.clone()));
        if !self.served {
            tracing::error!(
                "{reason}; nothing serves /healthz, so schedwatch exits (status 1) to be restarted"
            );
            self.fatal = Some(anyhow::anyhow!(reason));
        } else if first {
            tracing::error!("{reason}; /healthz answers 503 from now on, for the platform to restart schedwatch (it goes on trying meanwhile)");
        }
    }

    /// When due, the store's upkeep: leases renewed, alerts a stopped replica left claimed
    /// and delivered, the incident bounds applied, expired dedup keys deleted.
    async fn upkeep(&mut self) {
        let (Some(at), Some(every)) = (self.next_upkeep, self.store.upkeep_every()) else {
            return;
        };
        if Instant::now() < at {
            return;
        }
        self.next_upkeep = Some(Instant::now() + every);
        let held = self.flight.held();
        let incidents = self.pipeline().incidents();
        let work = Upkeep {
            in_flight: &held,
            expiry_cutoff: incidents.expiry_cutoff(),
            max_tracked_jobs: incidents.rules().max_tracked_jobs,
        };
        let cap = work.max_tracked_jobs;
        let done = match self.store.upkeep(work).await {
            Ok(done) => done,
            Err(e) => {
                metrics().store_call(false);
                tracing::warn!("state store: {e}; leases not renewed, retrying in {every:?}");
                return;
            }
        };
        let m = metrics();
        m.store_call(true);
        if let Some(open) = done.open_incidents {
            m.incidents_open.set(open as i64);
        }
        if let Some((old, over)) = done.swept {
            m.incidents_swept[0].fetch_add(old, Relaxed);
            m.incidents_swept[1].fetch_add(over, Relaxed);
            if over > 0 {
                // At most once a sweep: no flood.
                tracing::warn!(expired = old, dropped = over, max_tracked_jobs = cap, "more jobs have an open incident in the shared store than [incidents] max_tracked_jobs: dropped those whose last failure is oldest (unfired first; a fired one will not send its resolved notification)");
            } else if old > 0 {
                tracing::debug!(
                    expired = old,
                    "pending incidents expired in the shared store"
                );
            }
        }
        if let Some(n) = done.expired_keys {
            tracing::debug!(keys = n, "expired dedup keys deleted");
        }
        if !done.claimed.is_empty() {
            tracing::info!(alerts = done.claimed.len(), "claimed undelivered alerts from the shared outbox (left by a stopped replica, or not yet delivered)");
        }
        self.flight.deliver(done.claimed);
    }
}

/// Awaits a store call while recording the deliveries the receivers report meanwhile. A call
/// that answers at once (the embedded store's) is just that; one that waits — on the network,
/// on other replicas' row locks — first records what was reported before it, and then each
/// report as it comes: an alert delivered and not yet recorded is delivered again by another
/// replica if this one dies, so the window is kept short.
async fn with_records<S: Store, T>(
    store: &S,
    flight: &mut InFlight,
    call: impl std::future::Future<Output = T>,
) -> T {
    tokio::pin!(call);
    let first = std::future::poll_fn(|cx| std::task::Poll::Ready(call.as_mut().poll(cx))).await;
    if let std::task::Poll::Ready(out) = first {
        return out;
    }
    flight.take_reports();
    record_now(store, flight).await;
    loop {
        tokio::select! {
            biased;
            out = &mut call => return out,
            Some(r) = flight.next_report() => {
                flight.report(r);
                flight.take_reports();
                record_now(store, flight).await;
            }
        }
    }
}

/// Records the deliveries done so far (kept for later when that fails).
async fn record_now<S: Store>(store: &S, flight: &mut InFlight) {
    if !flight.has_records() {
        return;
    }
    let (sent, retried) = flight.take_records();
    if let Err(e) = store.record(&sent, &retried).await {
        tracing::warn!("state store: deliveries not recorded yet: {e}");
        flight.restore(sent, retried);
    }
}

/// Sleeps `d`, or forever when `None` (a `select!` branch that never fires).
async fn sleep_or_never(d: Option<Duration>) {
    match d {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}
