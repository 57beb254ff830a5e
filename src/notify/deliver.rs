//! Delivery: a queue per receiver fed from the store's outbox. The receivers are built from
//! their config in [`super::receiver`]; the stdout, file and other sinks live in the sinks crate.
//!
//! ```text
//!  processor ──(outbox rows)──► one task per receiver: send, retry with backoff ──► report
//!      ▲                                                                             │
//!      └──────────── "row N done for receiver R" (delivered or failed for good) ◄────┘
//! ```
//!
//! A row is recorded in the store as delivered (or failed, with the reasons) once every
//! receiver is done with it; a crash before that delivers it again at the next start (at
//! least once; `incident_id` lets receivers dedupe). Retryable failures (5xx, 429, timeouts,
//! refused connections) are retried with exponential backoff and jitter — 1 s doubling to
//! 5 min, or the receiver's `Retry-After` — for as long as it takes: an outage delays an alert,
//! it never loses one. Permanent failures (other 4xx, a rejected address) are logged with the
//! reason, counted and recorded as failed, never retried.

use std::sync::Arc;
use std::time::Duration;

use schedwatch_sinks::{Alert, DeliveryError, Sink};
use tokio::sync::mpsc;

use super::route::{RouteConfig, Router};
use crate::store::OutboxRow;

/// The name of the stdout receiver `run --format` adds: it prints every alert, whatever the
/// routes say.
pub const CLI_STDOUT: &str = "--format";

/// The first retry waits this long; each next one twice as long, up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// The longest wait between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// What a receiver's queue reports about one outbox row.
#[derive(Debug)]
pub struct Report {
    /// The outbox row.
    pub id: u64,
    /// The receiver.
    pub receiver: String,
    /// How the try went.
    pub outcome: Outcome,
}

/// One try of a row at a receiver.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    /// Failed, to be tried again after a backoff: the reason.
    Retrying(String),
    /// Delivered: the receiver is done with the row.
    Delivered,
    /// Failed for good, with the reason: the receiver is done with the row.
    Failed(String),
}

/// One queue and one task per receiver, and the routes that choose among them.
pub struct Dispatcher {
    queues: Vec<(String, mpsc::UnboundedSender<Arc<OutboxRow>>)>,
    router: Router,
}

impl Dispatcher {
    /// Starts a delivery task per receiver on `runtime`; reports go to `reports`.
    pub fn start(
        receivers: Vec<Arc<dyn Sink>>,
        routes: Vec<RouteConfig>,
        runtime: &tokio::runtime::Handle,
        reports: mpsc::UnboundedSender<Report>,
    ) -> Dispatcher {
        let names = receivers.iter().map(|s| s.name().to_owned()).collect();
        let queues = receivers
            .into_iter()
            .map(|sink| {
                let (tx, rx) = mpsc::unbounded_channel();
                let name = sink.name().to_owned();
                runtime.spawn(deliver_queue(sink, rx, reports.clone()));
                (name, tx)
            })
            .collect();
        Dispatcher {
            queues,
            router: Router::new(names, routes),
        }
    }

    /// Queues a row for the receivers its routes choose; returns how many.
    pub fn dispatch(&mut self, row: OutboxRow) -> usize {
        let chosen = self.router.route(&row.alert);
        let row = Arc::new(row);
        let mut queued = 0;
        for (name, q) in &self.queues {
            if chosen.contains(name) || name == CLI_STDOUT {
                // A closed queue means the runtime is shutting down: the row stays in the outbox.
                let _ = q.send(row.clone());
                queued += 1;
            }
        }
        queued
    }
}

/// A receiver's queue: rows in order, each tried until delivered or failed for good.
async fn deliver_queue(
    sink: Arc<dyn Sink>,
    mut rows: mpsc::UnboundedReceiver<Arc<OutboxRow>>,
    reports: mpsc::UnboundedSender<Report>,
) {
    while let Some(row) = rows.recv().await {
        let report = |outcome| Report {
            id: row.id,
            receiver: sink.name().to_owned(),
            outcome,
        };
        // Each failed try is reported too: the shared store records it on the row.
        let failed = deliver_one(sink.as_ref(), &row.alert, |reason| {
            let _ = reports.send(report(Outcome::Retrying(reason.to_owned())));
        })
        .await;
        let outcome = match failed {
            None => Outcome::Delivered,
            Some(reason) => Outcome::Failed(reason),
        };
        if reports.send(report(outcome)).is_err() {
            return;
        }
    }
}

/// Tries until delivered (`None`) or failed for good (`Some(reason)`); counts each outcome in
/// the receiver's metrics, and tells `retrying` the reason of each try that will be repeated.
pub async fn deliver_one(
    sink: &dyn Sink,
    alert: &Alert,
    mut retrying: impl FnMut(&str),
) -> Option<String> {
    let metrics = crate::metrics::metrics();
    let mut backoff = FIRST_BACKOFF;
    let mut attempt = 1u32;
    loop {
        let result = sink.send(alert).await;
        let counts = metrics.receiver(sink.name());
        if attempt > 1 {
            counts.retrying.dec();
        }
        match &result {
            Ok(()) => _ = counts.sent.inc(),
            Err(DeliveryError::Permanent { .. }) => _ = counts.failed.inc(),
            Err(DeliveryError::Retryable { .. }) => {
                counts.retries.inc();
                counts.retrying.inc();
            }
        }
        match result {
            Ok(()) => {
                if attempt > 1 {
                    tracing::info!(receiver = sink.name(), incident_id = %alert.incident_id, attempt, "alert delivered after retries");
                }
                return None;
            }
            Err(DeliveryError::Permanent { reason }) => {
                tracing::error!(receiver = sink.name(), incident_id = %alert.incident_id, event = alert.event.as_str(), "alert not delivered, permanently: {reason}");
                return Some(reason);
            }
            Err(DeliveryError::Retryable { reason, after }) => {
                let wait = after.unwrap_or_else(|| jittered(backoff)).min(MAX_BACKOFF);
                tracing::warn!(receiver = sink.name(), incident_id = %alert.incident_id, attempt, "alert not delivered yet: {reason}; retrying in {wait:?}");
                retrying(&reason);
                tokio::time::sleep(wait).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                attempt += 1;
            }
        }
    }
}

/// `d` ± 20 %, from the clock's nanoseconds: replicas that failed together do not retry together.
fn jittered(d: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |t| t.subsec_nanos());
    let factor = 0.8 + 0.4 * (f64::from(nanos % 1000) / 1000.0);
    d.mul_f64(factor)
}
