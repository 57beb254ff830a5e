//! The long-running service (`run` on a subscription, pulled or pushed): Pub/Sub → pipeline
//! → store → acks → receivers, until SIGTERM or SIGINT; beside it the HTTP endpoints
//! ([`crate::http`]).
//!
//! ```text
//!  pull tasks ──(bounded channel)──► processor thread ──► store commit ──► acks
//!  (source::pubsub, one per stream)    (batches of N msgs     (one fsync      (only now; a push
//!   or push requests (source::push)     or T ms)               a batch)        request's 204)
//!                                                                                │
//!                                                                              outbox ──► receivers
//!                                                                   (notify::deliver: a queue
//!                                                                    per receiver, retries)
//! ```
//!
//! The processor is one thread: the pipeline is synchronous CPU work, and a single writer keeps
//! commit order equal to processing order. A batch's messages are acked only after the batch's
//! effect — dedup keys, incident state, outbox rows — is committed. When a commit fails, the
//! batch's messages are dropped unacked (the client nacks them, so they come back) and the
//! pipeline's memory is rebuilt from the store, so nothing it did not commit survives. The
//! Cloud Scheduler API look-ups a batch needs are made before it is processed, together, and
//! wait the API's `timeout` at most; a batch that needs none does not wait at all.
//!
//! The embedded store after an I/O error (a full disk, EIO): it is closed and opened again,
//! and the batches that follow (or, with none, a small write every backoff) are tried again
//! with backoff, readiness 503 meanwhile, until a commit succeeds. A store still failing after
//! `[state] unhealthy_after` turns `/healthz` to 503 for the platform to restart the process
//! (with nothing serving `/healthz`, the process exits 1); a damaged file makes it exit 1 at
//! once.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustc_hash::FxHashMap;
use schedwatch_sinks::{Alert, Sink};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::http::Mode;
use crate::metrics::metrics;
use crate::notify::deliver::{Dispatcher, Outcome, Report};
use crate::notify::route::RouteConfig;
use crate::pipeline::Pipeline;
use crate::source::pubsub::{self, PubsubConfig};
use crate::source::push::{PushConfig, PushReceiver, TokenVerifier};
use crate::source::Received;
use crate::store::{
    Changes, EmbeddedStore, OutboxRow, PostgresConfig, PostgresStore, Retried, Sent, StoreError,
};

/// `[state]` in the config file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StateConfig {
    /// The folder of the embedded store (`schedwatch.redb`).
    pub dir: PathBuf,
    /// A batch is committed this long after its first message at the latest: the durability
    /// window, and the latency a commit adds to an alert. 1 ms to 1 min
    /// ([`crate::config::COMMIT_INTERVAL`]).
    #[serde(with = "humantime_serde")]
    pub commit_interval: Duration,
    /// A batch is committed at this many messages at the latest, 1 to 100,000
    /// ([`crate::config::COMMIT_MAX_MESSAGES`]).
    pub commit_max_messages: usize,
    /// On SIGTERM, how long in-flight work may take before the process exits anyway (Cloud
    /// Run's grace period is 10 s). Messages not acked by then come back. 1 s to 10 min
    /// ([`crate::config::SHUTDOWN_TIMEOUT`]).
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// How long the embedded store may keep failing (a full disk, I/O errors: it is reopened
    /// and retried with backoff meanwhile, and not ready) before `/healthz` answers 503 so the
    /// platform restarts the process; with nothing serving `/healthz`, the process exits 1
    /// instead. Any duration; 0 gives up at the first failure.
    #[serde(with = "humantime_serde")]
    pub unhealthy_after: Duration,
    /// `[state.postgres]`: a PostgreSQL store shared by several replicas instead of the
    /// embedded file.
    #[serde(skip_serializing)]
    pub postgres: Option<crate::store::PostgresConfig>,
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
            // Long enough for a transient cause to pass (space freed by log rotation, a volume
            // remounted) without a restart; a liveness probe then adds its own threshold.
            unhealthy_after: Duration::from_secs(300),
            postgres: None,
        }
    }
}

/// How often progress is logged while messages flow.
const PROGRESS_INTERVAL: Duration = Duration::from_secs(60);

/// Where messages come from.
#[derive(Debug, Clone)]
pub enum Source {
    /// Streaming pull on a subscription.
    Pull(PubsubConfig),
    /// Push requests on `POST /pubsub/push`.
    Push(PushConfig),
}

/// How long a push request waits for the commit of its message before it is answered 503
/// (and redelivered). Commits take milliseconds; this is for a store that is failing.
const PUSH_WAIT: Duration = Duration::from_secs(30);

/// Where the durable state is.
pub enum Backend {
    /// The embedded file: one replica.
    Embedded(EmbeddedStore),
    /// PostgreSQL, shared by the replicas; connected when the service starts.
    Postgres(PostgresConfig),
}

/// The store in use.
enum Store {
    Embedded(EmbeddedStore),
    Postgres(PostgresStore),
}

/// With a shared store, how often a replica renews its outbox leases, claims rows whose lease
/// ran out, and reads the open-incident count (or a third of the lease, when shorter).
const SHARED_TICK: Duration = Duration::from_secs(10);
/// How often expired dedup keys are deleted from a shared store (at most: with a shorter
/// retention, every retention).
const EXPIRE_INTERVAL: Duration = Duration::from_secs(600);

/// Everything the service runs with.
pub struct Service {
    /// The pipeline, restored from the store at start.
    pub pipeline: Pipeline,
    /// The durable state.
    pub store: Backend,
    /// Pull or push.
    pub source: Source,
    /// Where the HTTP endpoints are served, if anywhere (push needs it).
    pub listen: Option<SocketAddr>,
    /// How many HTTP connections are served at once (`[server] max_connections`).
    pub max_connections: usize,
    /// Batching, durability and shutdown settings.
    pub state: StateConfig,
    /// The receivers, built.
    pub receivers: Vec<Arc<dyn Sink>>,
    /// Which receivers get which alerts.
    pub routes: Vec<RouteConfig>,
    /// Builds a fresh pipeline, to reload state after a failed commit.
    pub rebuild: Box<dyn Fn() -> anyhow::Result<Pipeline> + Send>,
}

/// Runs until a signal: pulls (or takes pushes), processes, commits, acks, delivers.
pub fn run(service: Service) -> anyhow::Result<()> {
    let service_postgres = match &service.store {
        Backend::Postgres(c) => Some(c.clone()),
        Backend::Embedded(_) => None,
    };
    let Service {
        mut pipeline,
        store,
        source,
        listen,
        max_connections,
        state,
        receivers,
        routes,
        rebuild,
    } = service;
    // Bound before anything starts: a taken port is an error now, not a silent missing probe.
    let served = listen.is_some();
    let listener = listen
        .map(|addr| {
            std::net::TcpListener::bind(addr)
                .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))
        })
        .transpose()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        // The pull tasks and the HTTP server only move bytes; the processor has its own thread.
        .worker_threads(2)
        .enable_all()
        .build()?;
    let handle = runtime.handle().clone();
    let shutdown = CancellationToken::new();
    // First of all, so that a SIGTERM during start-up is a clean shutdown too.
    let signals = {
        let _context = runtime.enter();
        Signals::register()?
    };
    {
        let shutdown = shutdown.clone();
        runtime.spawn(async move {
            signals.recv().await;
            tracing::info!("shutting down: no more pulling; finishing in-flight work");
            shutdown.cancel();
        });
    }

    // The embedded store: the pipeline carries on from it (open incidents, recent dedup keys).
    // A shared store is read batch by batch instead, and connected below.
    let (store, outbox) = match store {
        Backend::Embedded(store) => {
            let stored = store.load()?;
            metrics().store_call(true);
            pipeline.restore(&stored);
            tracing::info!(open_incidents = stored.incidents.len(), dedup_keys = stored.dedup_keys.len(), outbox = stored.outbox.len(), store = %store.path().display(), "state loaded");
            (Some(Store::Embedded(store)), stored.outbox)
        }
        Backend::Postgres(_) => (None, Vec::new()),
    };
    pipeline.track_changes();

    let (mode, rx, push) = match &source {
        Source::Pull(source) => {
            let client = runtime.block_on(pubsub::connect(source))?;
            // Room for every message the client may lease at once: the channel never holds
            // back a lease the flow control already granted.
            let capacity =
                (source.max_outstanding_messages.max(1) as usize) * source.streams.max(1);
            let (tx, rx) = mpsc::channel::<Received>(capacity);
            runtime.spawn(pubsub::probe(source.clone(), shutdown.clone()));
            for n in 0..source.streams.max(1) {
                runtime.spawn(pubsub::pull(
                    client.clone(),
                    source.clone(),
                    n,
                    tx.clone(),
                    shutdown.clone(),
                ));
            }
            (Mode::Pull, rx, None)
        }
        Source::Push(push) => {
            let verifier = if push.allow_unauthenticated {
                tracing::warn!("push requests are accepted without a token (source.push.allow_unauthenticated): only behind an ingress that authenticates them");
                None
            } else {
                Some(TokenVerifier::new(push.clone())?)
            };
            let (tx, rx) = mpsc::channel::<Received>(state.commit_max_messages.max(1) * 2);
            let receiver = PushReceiver::new(verifier, tx, PUSH_WAIT);
            (Mode::Push, rx, Some(Arc::new(receiver)))
        }
    };
    if let Some(listener) = listener {
        tracing::info!(address = %listener.local_addr()?, push = push.is_some(), "serving /healthz, /readyz, /metrics{}", if push.is_some() { ", /pubsub/push" } else { "" });
        let app = crate::http::router(mode, push);
        runtime.spawn(crate::http::serve(
            listener,
            app,
            max_connections,
            shutdown.clone(),
        ));
    }
    // A shared store: connected (and migrated) now, retried until it answers — the endpoints
    // say "not ready" meanwhile, and nothing is pulled or acked.
    let store = match (store, &service_postgres) {
        (Some(store), _) => store,
        (None, Some(config)) => match runtime.block_on(connect_shared(config, &shutdown)) {
            Some(pg) => Store::Postgres(pg),
            None => return Ok(()),
        },
        (None, None) => unreachable!("a backend is chosen"),
    };

    let deadline_after_signal = state.shutdown_timeout;
    let processor = std::thread::Builder::new()
        .name("processor".into())
        .spawn({
            let handle = handle.clone();
            move || {
                // Timers (batch deadlines) need the runtime's context on this thread too.
                let _context = handle.enter();
                let (reports_tx, reports) = mpsc::unbounded_channel();
                let dispatcher = Dispatcher::start(receivers, routes, &handle, reports_tx);
                let mut p = Processor {
                    pipeline,
                    store,
                    state,
                    handle,
                    dispatcher,
                    reports,
                    pending: FxHashMap::default(),
                    done: Vec::new(),
                    retried: FxHashMap::default(),
                    last_progress: (Instant::now(), 0),
                    failed_deliveries: 0,
                    rebuild,
                    backoff: Duration::ZERO,
                    failing_since: None,
                    served,
                    fatal: None,
                    next_tick: Instant::now(),
                    last_expiry: Instant::now(),
                };
                // Alerts a crash left undelivered go first.
                p.deliver(outbox);
                p.tick();
                p.run(rx)
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

/// SIGTERM and SIGINT, registered when made: a signal that comes while the service is still
/// starting is not lost (nor does it kill the process, the default action).
struct Signals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
}

impl Signals {
    /// Registers the handlers now; needs the runtime's context.
    fn register() -> std::io::Result<Signals> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(Signals {
                term: signal(SignalKind::terminate())?,
                int: signal(SignalKind::interrupt())?,
            })
        }
        #[cfg(not(unix))]
        Ok(Signals {})
    }

    async fn recv(mut self) {
        #[cfg(unix)]
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
    }
}

struct Processor {
    pipeline: Pipeline,
    store: Store,
    state: StateConfig,
    handle: tokio::runtime::Handle,
    dispatcher: Dispatcher,
    /// What the receivers' queues say they are done with.
    reports: mpsc::UnboundedReceiver<Report>,
    /// Outbox rows handed to the receivers, not done yet.
    pending: FxHashMap<u64, InFlight>,
    /// Rows every receiver is done with, recorded with the next commit.
    done: Vec<Sent>,
    /// With the shared store: failed tries to be repeated, recorded on their rows soon.
    retried: FxHashMap<u64, Retried>,
    /// When progress was last logged, and the entry count then.
    last_progress: (Instant, u64),
    /// Deliveries a receiver refused for good.
    failed_deliveries: u64,
    rebuild: Box<dyn Fn() -> anyhow::Result<Pipeline> + Send>,
    /// After a store failed: how long to wait before the next batch (redelivered messages
    /// must not spin against a database that is down, or a disk that is full).
    backoff: Duration,
    /// Since when the embedded store has failed (no commit succeeded since).
    failing_since: Option<Instant>,
    /// Whether `/healthz` is served: if not, a store that cannot recover ends the process.
    served: bool,
    /// Why the processor must stop (the embedded store cannot recover): the process exits 1.
    fatal: Option<anyhow::Error>,
    /// When the shared store's lease and claim work is next due.
    next_tick: Instant,
    /// When expired dedup keys were last deleted.
    last_expiry: Instant,
}

/// An outbox row handed to receivers.
struct InFlight {
    /// How many receivers it went to.
    receivers: u32,
    /// How many of them are not done with it yet.
    left: u32,
    /// `(receiver, reason)` for each that refused it for good.
    failed: Vec<(String, String)>,
}

/// Connects to the shared store, retrying with backoff until it answers or a signal comes.
async fn connect_shared(
    config: &PostgresConfig,
    shutdown: &CancellationToken,
) -> Option<PostgresStore> {
    let owner = format!(
        "{}-{}",
        std::env::var("HOSTNAME").unwrap_or_else(|_| "schedwatch".into()),
        std::process::id()
    );
    let mut delay = Duration::from_millis(200);
    loop {
        match PostgresStore::connect(config, owner.clone()).await {
            Ok(pg) => {
                metrics().store_call(true);
                tracing::info!(store = pg.describe(), replica = %owner, "shared state store connected");
                return Some(pg);
            }
            Err(e) => {
                metrics().store_call(false);
                tracing::error!("cannot reach the shared state store ({e}); retrying in {delay:?}");
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(10));
    }
}

/// What the processor waited for.
enum Woken {
    Message(Option<Received>),
    Report(Report),
    Idle,
}

impl Processor {
    fn run(&mut self, mut rx: mpsc::Receiver<Received>) -> anyhow::Result<()> {
        let mut batch: Vec<Received> = Vec::with_capacity(self.state.commit_max_messages);
        loop {
            // Wait for a first message; meanwhile take the receivers' reports, and record
            // them once nothing else comes for a commit interval.
            let idle = match &self.store {
                Store::Postgres(pg) => Some(
                    self.next_tick
                        .saturating_duration_since(Instant::now())
                        .min(if self.done.is_empty() && self.retried.is_empty() {
                            SHARED_TICK.min(pg.lease() / 3)
                        } else {
                            self.state.commit_interval.max(self.backoff)
                        }),
                ),
                // While the store fails, a write is tried every backoff: readiness comes back
                // without traffic (a push service that is not ready gets none).
                Store::Embedded(_) if self.failing_since.is_some() => {
                    Some(self.state.commit_interval.max(self.backoff))
                }
                Store::Embedded(_) => (!self.done.is_empty()).then_some(self.state.commit_interval),
            };
            let woken = self.handle.block_on(async {
                tokio::select! {
                    m = rx.recv() => Woken::Message(m),
                    Some(r) = self.reports.recv() => Woken::Report(r),
                    _ = sleep_or_never(idle) => Woken::Idle,
                }
            });
            let first = match woken {
                Woken::Message(m) => m,
                Woken::Report(r) => {
                    // A burst of deliveries is recorded at once, not one report a batch.
                    self.report(r);
                    self.take_reports();
                    continue;
                }
                Woken::Idle => {
                    self.commit(Vec::new());
                    self.stop_if_fatal()?;
                    self.tick();
                    continue;
                }
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
            self.process(std::mem::take(&mut batch));
            self.stop_if_fatal()?;
            self.tick();
            self.log_progress();
        }
        // The pull tasks are gone: let deliveries in flight finish (half the shutdown
        // deadline at most; what is left is delivered again at the next start), record them.
        let until = tokio::time::Instant::now() + self.state.shutdown_timeout / 2;
        while !self.pending.is_empty() {
            match self
                .handle
                .block_on(tokio::time::timeout_at(until, self.reports.recv()))
            {
                Ok(Some(r)) => self.report(r),
                Ok(None) | Err(_) => break,
            }
        }
        if !self.pending.is_empty() {
            tracing::warn!(alerts = self.pending.len(), "alerts still being delivered at shutdown stay in the outbox: they are delivered at the next start");
        }
        self.commit(Vec::new());
        self.stop_if_fatal()?;
        tracing::info!(
            "{}; {} deliveries refused for good",
            self.pipeline.stats.summary(),
            self.failed_deliveries
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
        let entries = self.pipeline.stats.entries;
        let rate = (entries - entries_then) as f64 / elapsed.as_secs_f64();
        tracing::info!(
            rate = format_args!("{rate:.0}/s"),
            open_incidents = self.pipeline.incidents().open_count(),
            alerts_in_delivery = self.pending.len(),
            deliveries_refused = self.failed_deliveries,
            "progress: {}",
            self.pipeline.stats.summary()
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

    fn process(&mut self, batch: Vec<Received>) {
        if let Store::Postgres(pg) = &self.store {
            let pg = pg.clone();
            return self.process_shared(&pg, batch);
        }
        if !self.backoff.is_zero() {
            std::thread::sleep(self.backoff);
        }
        let mut decoded = Vec::with_capacity(batch.len());
        for m in &batch {
            self.pipeline.decode(&m.data, &mut decoded);
        }
        let mut alerts = Vec::new();
        self.pipeline.process_batch(decoded, &mut alerts);
        let made = alerts.len();
        let started = Instant::now();
        let committed = self.commit(alerts);
        tracing::debug!(
            messages = batch.len(),
            alerts = made,
            store_ms = started.elapsed().as_secs_f64() * 1e3,
            committed,
            "batch processed"
        );
        let m = metrics();
        m.pipeline_stats(&self.pipeline.stats, self.pipeline.incidents().open_count());
        if committed {
            self.ack(batch);
        } else {
            // Not committed: dropping the handlers nacks the messages; they come back.
            m.nacked.inc_by(batch.len() as u64);
            tracing::warn!(
                messages = batch.len(),
                "batch not committed; its messages will be redelivered"
            );
            drop(batch);
        }
    }

    /// A batch against the shared store: the store says which entries are new and hands over
    /// their jobs' incidents, locked; the pipeline runs; the changes and the new alerts are
    /// committed in the same transaction; then the messages are acked.
    fn process_shared(&mut self, pg: &PostgresStore, batch: Vec<Received>) {
        if !self.backoff.is_zero() {
            std::thread::sleep(self.backoff);
        }
        let mut decoded = Vec::with_capacity(batch.len());
        for m in &batch {
            self.pipeline.decode(&m.data, &mut decoded);
        }
        let mut keys = Vec::with_capacity(decoded.len());
        let mut jobs = Vec::with_capacity(decoded.len());
        for a in decoded.iter().flatten() {
            keys.push(a.dedup_key);
            jobs.push(a.job.clone());
        }
        let started = Instant::now();
        let mut tx = match self.wait_shared(pg, pg.begin(&keys, &jobs)) {
            Ok(tx) => tx,
            Err(e) => return self.shared_failure(e, batch),
        };
        self.pipeline.load_batch(
            std::mem::take(&mut tx.incidents),
            std::mem::take(&mut tx.fresh),
        );
        // The API look-ups wait inside the transaction (its timeout at most): which incidents
        // open, and so which configs are fetched again, is known only now.
        let mut alerts = Vec::new();
        self.pipeline.process_batch(decoded, &mut alerts);
        let made = alerts.len();
        let mut changes = self.pipeline.take_changes(alerts);
        changes.sent = std::mem::take(&mut self.done);
        let done = changes.sent.clone();
        let m = metrics();
        match self.wait_shared(pg, pg.commit(tx, changes)) {
            Ok(rows) => {
                let took = started.elapsed();
                m.commit(true);
                m.store_transaction.observe(took.as_secs_f64());
                tracing::debug!(
                    messages = batch.len(),
                    alerts = made,
                    store_ms = took.as_secs_f64() * 1e3,
                    committed = true,
                    "batch processed"
                );
                self.backoff = Duration::ZERO;
                self.ack(batch);
                self.deliver(rows);
            }
            Err(e) => {
                self.done = done;
                self.shared_failure(e, batch);
            }
        }
        m.pipeline_stats(&self.pipeline.stats, self.pipeline.incidents().open_count());
    }

    /// Waits for a shared-store call — which may wait on other replicas' row locks — while
    /// recording the deliveries the receivers report meanwhile: an alert delivered and not yet
    /// recorded is delivered again by another replica if this one dies, so the window is kept
    /// short.
    fn wait_shared<T>(
        &mut self,
        pg: &PostgresStore,
        call: impl std::future::Future<Output = T>,
    ) -> T {
        enum Next<T> {
            Done(T),
            Report(Report),
        }
        let handle = self.handle.clone();
        handle.block_on(async {
            tokio::pin!(call);
            // Deliveries reported before the call first: it may wait long on row locks.
            self.take_reports();
            self.record_now(pg).await;
            loop {
                let next = tokio::select! {
                    biased;
                    out = &mut call => Next::Done(out),
                    Some(r) = self.reports.recv() => Next::Report(r),
                };
                match next {
                    Next::Done(out) => return out,
                    Next::Report(r) => {
                        self.report(r);
                        self.take_reports();
                        self.record_now(pg).await;
                    }
                }
            }
        })
    }

    /// Records the deliveries done so far in the shared store (kept for later on failure);
    /// false when that failed.
    async fn record_now(&mut self, pg: &PostgresStore) -> bool {
        if self.done.is_empty() && self.retried.is_empty() {
            return true;
        }
        let sent = std::mem::take(&mut self.done);
        let retried: Vec<Retried> = self.retried.drain().map(|(_, r)| r).collect();
        if let Err(e) = pg.record_deliveries(&sent, &retried).await {
            tracing::warn!("shared state store: deliveries not recorded yet: {e}");
            self.done.extend(sent);
            // Nothing was reported meanwhile (this holds the processor): put them back as they were.
            self.retried.extend(retried.into_iter().map(|r| (r.id, r)));
            return false;
        }
        true
    }

    /// Acks a committed batch's messages, and counts them.
    fn ack(&self, batch: Vec<Received>) {
        metrics().acked.inc_by(batch.len() as u64);
        for m in batch {
            m.ack.ack(&self.handle);
        }
    }

    /// The shared store failed a batch: nothing of it was committed, so its messages are
    /// handed back, and the next batch waits a little longer (100 ms doubling to 10 s).
    fn shared_failure(&mut self, e: StoreError, batch: Vec<Received>) {
        let m = metrics();
        m.commit(false);
        m.nacked.inc_by(batch.len() as u64);
        self.back_off();
        tracing::error!(
            messages = batch.len(),
            "shared state store: {e}; the batch is not committed and its messages will be redelivered (next try in {:?})",
            self.backoff
        );
        drop(batch);
    }

    /// After a store failed: the next try waits longer (100 ms doubling to 10 s).
    fn back_off(&mut self) {
        self.backoff =
            (self.backoff * 2).clamp(Duration::from_millis(100), Duration::from_secs(10));
    }

    /// With a shared store, every [`SHARED_TICK`]: renew the leases of the alerts this replica
    /// is delivering, claim the ones a dead replica left, read the open-incident count, and now
    /// and then delete expired dedup keys.
    fn tick(&mut self) {
        let Store::Postgres(pg) = &self.store else {
            return;
        };
        if Instant::now() < self.next_tick {
            return;
        }
        let pg = pg.clone();
        self.next_tick = Instant::now() + SHARED_TICK.min(pg.lease() / 3);
        // Rows being delivered, and rows delivered but not yet recorded: both still ours.
        let pending: Vec<u64> = self
            .pending
            .keys()
            .copied()
            .chain(self.done.iter().map(|s| s.id))
            .collect();
        let expire = self.last_expiry.elapsed() > EXPIRE_INTERVAL.min(pg.retention());
        let incidents = self.pipeline.incidents();
        let (cutoff, cap) = (
            incidents.expiry_cutoff(),
            incidents.rules().max_tracked_jobs,
        );
        let result = self.handle.block_on(async {
            let rows = pg.claim(&pending, 100).await?;
            let expired = if expire {
                // The pending incidents' bounds too, on the whole table (a batch sees its own
                // jobs only): between sweeps the table may pass the cap by what arrived.
                let (old, over) = pg.sweep_incidents(cutoff, cap).await?;
                let m = metrics();
                m.incidents_swept[0].fetch_add(old, Relaxed);
                m.incidents_swept[1].fetch_add(over, Relaxed);
                if over > 0 {
                    // At most once a sweep (EXPIRE_INTERVAL): no flood.
                    tracing::warn!(expired = old, dropped = over, max_tracked_jobs = cap, "more jobs have an open incident in the shared store than [incidents] max_tracked_jobs: dropped those whose last failure is oldest (unfired first; a fired one will not send its resolved notification)");
                } else if old > 0 {
                    tracing::debug!(expired = old, "pending incidents expired in the shared store");
                }
                Some(pg.expire_keys().await?)
            } else {
                None
            };
            let open = pg.open_incidents().await?;
            Ok::<_, StoreError>((rows, open, expired))
        });
        match result {
            Ok((rows, open, expired)) => {
                metrics().store_call(true);
                metrics().incidents_open.set(open as i64);
                if !rows.is_empty() {
                    tracing::info!(alerts = rows.len(), "claimed undelivered alerts from the shared outbox (left by a stopped replica, or not yet delivered)");
                }
                self.deliver(rows);
                if let Some(n) = expired {
                    self.last_expiry = Instant::now();
                    tracing::debug!(keys = n, "expired dedup keys deleted");
                }
            }
            Err(e) => {
                metrics().store_call(false);
                tracing::warn!(
                    "shared state store: {e}; leases not renewed, retrying in {SHARED_TICK:?}"
                );
            }
        }
    }

    /// Commits the pipeline's changes with `alerts` and the deliveries recorded so far, then
    /// hands the new outbox rows to the receivers. False when the commit failed.
    fn commit(&mut self, alerts: Vec<Alert>) -> bool {
        // Every delivery reported so far is recorded with this commit: the shorter the time
        // between delivering and recording, the fewer alerts a crash sends twice.
        self.take_reports();
        let store = match &self.store {
            Store::Embedded(store) => store,
            Store::Postgres(pg) => {
                // Only deliveries to record here: batches commit in process_shared.
                if self.done.is_empty() && self.retried.is_empty() {
                    return true;
                }
                let pg = pg.clone();
                let handle = self.handle.clone();
                let recorded = handle.block_on(self.record_now(&pg));
                metrics().commit(recorded);
                if recorded {
                    self.backoff = Duration::ZERO;
                } else {
                    // Not again at once: the next idle wait is as long as a batch's would be.
                    self.back_off();
                }
                return recorded;
            }
        };
        let mut changes: Changes = self.pipeline.take_changes(alerts);
        changes.sent = std::mem::take(&mut self.done);
        let done = changes.sent.clone();
        // While the store fails, even an empty commit is tried: it is still a write (the
        // counters), and its success says the disk works again.
        if changes.is_empty() && self.failing_since.is_none() {
            return true;
        }
        let started = Instant::now();
        let result = store.commit(changes);
        metrics().commit(result.is_ok());
        if result.is_ok() {
            metrics()
                .store_transaction
                .observe(started.elapsed().as_secs_f64());
        }
        match result {
            Ok(rows) => {
                if let Some(since) = self.failing_since.take() {
                    tracing::info!(
                        "state store: commits succeed again, after failing for {:.1} s",
                        since.elapsed().as_secs_f64()
                    );
                    metrics().set_unhealthy(None);
                }
                self.backoff = Duration::ZERO;
                self.deliver(rows);
                true
            }
            Err(e) => {
                self.done = done;
                self.back_off();
                tracing::warn!(
                    "state store commit failed: {e}; nothing it held is acked (the messages come back); {}retrying in {:?}",
                    if e.needs_reopen() { "reopening the store and " } else { "" },
                    self.backoff
                );
                self.recover(e);
                false
            }
        }
    }

    /// After a failed commit: make the store usable again — closed and reopened after an I/O
    /// error — and rebuild the pipeline from what it holds, so nothing that was not committed
    /// lives on in memory (the redelivered messages must count again). Tried again with backoff
    /// while it fails. A store that cannot recover sets [`Processor::fatal`], or turns
    /// `/healthz` to 503 (see [`Processor::check_unhealthy`]).
    fn recover(&mut self, first: StoreError) {
        let since = *self.failing_since.get_or_insert_with(Instant::now);
        let mut error = anyhow::Error::new(first);
        loop {
            let store_error = error.downcast_ref::<StoreError>();
            if store_error.is_some_and(|e| !e.is_retryable()) {
                let reason = error.to_string();
                tracing::error!(
                    "{reason}; schedwatch cannot go on: it exits (status 1) to be restarted"
                );
                metrics().set_unhealthy(Some(reason));
                self.fatal = Some(error);
                return;
            }
            self.check_unhealthy(since, &error);
            if self.fatal.is_some() {
                return;
            }
            let reopen = store_error.is_some_and(StoreError::needs_reopen);
            match self.reload(reopen) {
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
                    std::thread::sleep(self.backoff);
                    self.back_off();
                    error = e;
                }
            }
        }
    }

    /// Reopens the embedded store (after an I/O error) and rebuilds the pipeline from it.
    fn reload(&mut self, reopen: bool) -> anyhow::Result<()> {
        let Store::Embedded(store) = &mut self.store else {
            return Ok(());
        };
        if reopen {
            metrics().store_reopens.inc();
            store.reopen()?;
            tracing::info!(store = %store.path().display(), "state store reopened");
        }
        let state = store.load()?;
        let mut fresh = (self.rebuild)()?;
        fresh.restore(&state);
        fresh.track_changes();
        fresh.stats = self.pipeline.stats.clone();
        self.pipeline = fresh;
        tracing::info!(
            open_incidents = state.incidents.len(),
            outbox = state.outbox.len(),
            "state reloaded from the store"
        );
        // A commit reported failed may have reached the disk all the same: its alerts are in
        // the outbox, and go out now. Rows in flight or delivered are not sent again.
        let done: std::collections::HashSet<u64> = self.done.iter().map(|s| s.id).collect();
        self.deliver(
            state
                .outbox
                .into_iter()
                .filter(|row| !done.contains(&row.id))
                .collect(),
        );
        Ok(())
    }

    /// A store failing for longer than `unhealthy_after` cannot recover by itself: `/healthz`
    /// answers 503 with the reason, so the platform restarts the process (it goes on trying
    /// meanwhile, and is healthy again if a commit succeeds first). With nothing serving
    /// `/healthz`, the process exits 1 instead.
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

    /// Hands committed outbox rows to the queues of the receivers their routes choose.
    fn deliver(&mut self, rows: Vec<OutboxRow>) {
        for row in rows {
            // A row already in flight (reloaded after a failed commit) is not sent twice.
            if self.pending.contains_key(&row.id) {
                continue;
            }
            let id = row.id;
            match self.dispatcher.dispatch(row) {
                0 => self.done.push(Sent::delivered(id)),
                queued => {
                    let receivers = queued as u32;
                    self.pending.insert(
                        id,
                        InFlight {
                            receivers,
                            left: receivers,
                            failed: Vec::new(),
                        },
                    );
                }
            }
        }
    }

    /// Takes every report the receivers have sent so far, without waiting.
    fn take_reports(&mut self) {
        while let Ok(r) = self.reports.try_recv() {
            self.report(r);
        }
    }

    /// A receiver tried a row. When every receiver is done with it, it is recorded with the
    /// next commit; a try to be repeated is recorded on the shared store's row meanwhile.
    fn report(&mut self, r: Report) {
        let Some(row) = self.pending.get_mut(&r.id) else {
            return;
        };
        match r.outcome {
            Outcome::Retrying(reason) => {
                if matches!(self.store, Store::Postgres(_)) {
                    self.retried.insert(
                        r.id,
                        Retried {
                            id: r.id,
                            tries: self.retried.get(&r.id).map_or(0, |p| p.tries) + 1,
                            last_error: format!("{}: {reason}", r.receiver),
                        },
                    );
                }
                return;
            }
            Outcome::Delivered => {}
            Outcome::Failed(reason) => {
                self.failed_deliveries += 1;
                row.failed.push((r.receiver, reason));
            }
        }
        row.left -= 1;
        if row.left == 0 {
            let row = self.pending.remove(&r.id).expect("present");
            self.done.push(Sent {
                id: r.id,
                failed: row.failed,
                tries: row.receivers,
            });
        }
    }
}

/// Sleeps `d`, or forever when `None` (a `select!` branch that never fires).
async fn sleep_or_never(d: Option<Duration>) {
    match d {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}
