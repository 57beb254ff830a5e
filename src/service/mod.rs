//! The long-running service (`run` on a subscription, pulled or pushed): Pub/Sub → pipeline
//! → store → acks → receivers, until the shutdown token is cancelled (the edge cancels it on
//! SIGTERM or SIGINT: [`crate::shutdown`]); beside it the HTTP endpoints ([`crate::http`]).
//!
//! ```text
//!  pull tasks ──(bounded channel)──► batch processor ──► store commit ──► acks
//!  (source::pubsub, one per stream)    (batches of N msgs     (one fsync      (only now; a push
//!   or push requests (source::push)     or T ms)               a batch)        request's 204)
//!                                                                                │
//!                                                                              outbox ──► receivers
//!                                                                   (notify::deliver: a queue
//!                                                                    per receiver, retries)
//! ```
//!
//! - [`run`]: the entry — binds the endpoints, opens the source and the store, runs the
//!   processor until the source is done (the token cancelled), finishes in-flight work.
//! - [`processor`]: the one batch processor, on any [`crate::store::Store`].
//! - [`in_flight`]: the alerts being delivered, and what the receivers reported of them.
//!
//! The processor is awaited by [`run`] itself, not spawned: `schedwatch run` drives it on the
//! main thread (the runtime's workers move the pulled bytes and serve HTTP), so the embedded
//! store's synchronous commit blocks no one else; the pipeline runs on the blocking pool. A
//! test drives the same [`run`] inside its own runtime.

mod in_flight;
mod processor;
#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use schedwatch_sinks::Sink;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::http::Mode;
use crate::metrics::metrics;
use crate::notify::deliver::Dispatcher;
use crate::notify::route::RouteConfig;
use crate::pipeline::Pipeline;
use crate::source::pubsub::{self, PubsubConfig};
use crate::source::push::{PushConfig, PushReceiver, TokenVerifier};
use crate::source::Received;
use crate::store::{EmbeddedStore, PostgresConfig, PostgresStore, StateConfig, Store};

use in_flight::InFlight;
use processor::Processor;
pub use processor::Rebuild;

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
    pub rebuild: Rebuild,
}

/// What the processor runs with, besides its store and its messages.
struct Parts {
    pipeline: Pipeline,
    state: StateConfig,
    receivers: Vec<Arc<dyn Sink>>,
    routes: Vec<RouteConfig>,
    rebuild: Rebuild,
    /// Whether `/healthz` is served: if not, a store that cannot recover ends the process.
    served: bool,
}

/// Runs until `shutdown` is cancelled: pulls (or takes pushes), processes, commits, acks,
/// delivers; then finishes the work in flight. `shutdown` ends the pulling and the HTTP
/// server; how long the rest may take is the caller's to bound (`[state] shutdown_timeout`).
pub async fn run(service: Service, shutdown: CancellationToken) -> anyhow::Result<()> {
    let Service {
        pipeline,
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
    let listener = listen
        .map(|addr| {
            std::net::TcpListener::bind(addr)
                .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))
        })
        .transpose()?;
    let parts = Parts {
        pipeline,
        state,
        receivers,
        routes,
        rebuild,
        served: listen.is_some(),
    };
    match store {
        // The pipeline carries on from the file (open incidents, recent dedup keys), read
        // before anything is pulled: a damaged file stops the start.
        Backend::Embedded(mut store) => {
            let stored = Store::load(&mut store).await?;
            metrics().store_call(true);
            tracing::info!(open_incidents = stored.incidents.len(), dedup_keys = stored.dedup_keys.len(), outbox = stored.outbox.len(), store = %store.path().display(), "state loaded");
            let rx = open(&source, listener, max_connections, &parts.state, &shutdown).await?;
            process(store, stored, parts, rx).await
        }
        // A shared store: connected (and migrated) once the endpoints serve, retried until it
        // answers — they say "not ready" meanwhile, and nothing is pulled or acked.
        Backend::Postgres(config) => {
            let rx = open(&source, listener, max_connections, &parts.state, &shutdown).await?;
            let Some(mut store) = connect_shared(&config, &shutdown).await else {
                return Ok(());
            };
            let stored = Store::load(&mut store).await?;
            process(store, stored, parts, rx).await
        }
    }
}

/// Opens the source, and serves the HTTP endpoints on `listener`; returns the channel the
/// source hands its messages to, closed once `shutdown` ends it.
async fn open(
    source: &Source,
    listener: Option<std::net::TcpListener>,
    max_connections: usize,
    state: &StateConfig,
    shutdown: &CancellationToken,
) -> anyhow::Result<mpsc::Receiver<Received>> {
    let (mode, rx, push) = match source {
        Source::Pull(source) => {
            let client = pubsub::connect(source).await?;
            // Room for every message the client may lease at once: the channel never holds
            // back a lease the flow control already granted.
            let capacity =
                (source.max_outstanding_messages.max(1) as usize) * source.streams.max(1);
            let (tx, rx) = mpsc::channel::<Received>(capacity);
            tokio::spawn(pubsub::probe(source.clone(), shutdown.clone()));
            for n in 0..source.streams.max(1) {
                tokio::spawn(pubsub::pull(
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
            // Two batches' worth: one being committed, one filling.
            let (tx, rx) = mpsc::channel::<Received>(state.commit_max_messages.max(1) * 2);
            let receiver = PushReceiver::new(verifier, tx, PUSH_WAIT);
            (Mode::Push, rx, Some(Arc::new(receiver)))
        }
    };
    if let Some(listener) = listener {
        tracing::info!(address = %listener.local_addr()?, push = push.is_some(), "serving /healthz, /readyz, /metrics{}", if push.is_some() { ", /pubsub/push" } else { "" });
        let app = crate::http::router(mode, push);
        tokio::spawn(crate::http::serve(
            listener,
            app,
            max_connections,
            shutdown.clone(),
        ));
    }
    Ok(rx)
}

/// Runs the batch processor on `store`, which holds `stored`, with messages from `rx` until
/// it closes.
async fn process<S: Store>(
    store: S,
    stored: crate::store::State,
    parts: Parts,
    rx: mpsc::Receiver<Received>,
) -> anyhow::Result<()> {
    let Parts {
        mut pipeline,
        state,
        receivers,
        routes,
        rebuild,
        served,
    } = parts;
    pipeline.restore(&stored);
    pipeline.track_changes();
    let (reports_tx, reports) = mpsc::unbounded_channel();
    let dispatcher = Dispatcher::start(
        receivers,
        routes,
        &tokio::runtime::Handle::current(),
        reports_tx,
    );
    let flight = InFlight::new(dispatcher, reports);
    Processor::new(pipeline, store, state, flight, rebuild, served)
        .run(stored.outbox, rx)
        .await
}

/// Connects to the shared store, retrying with backoff until it answers or `shutdown` comes.
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
            Err(e) if !e.is_retryable() => {
                metrics().store_call(false);
                tracing::error!("cannot reach the shared state store ({e}); this is not transient: it does not pass by itself until the config or the database changes (tried again in {delay:?})");
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
