//! The service's counters and gauges, and their Prometheus text rendering (`GET /metrics`).
//!
//! One registry for the process ([`metrics()`]), on `prometheus-client`: the stages count where
//! the event happens — the pull tasks what they receive, the processor what it acks and
//! commits, the delivery queues what they send — on the crate's atomics, so counting costs an
//! uncontended add and scraping never waits for the pipeline. The pipeline's own counters
//! (skips by reason, duplicates, alerts by event) are copied in after each batch, so there is
//! one source of truth for them: the pipeline reports them as [`PipelineCounts`] (this module
//! knows nothing of the pipeline).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Mutex, OnceLock};

use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use schedwatch_sinks::EventKind;

/// The process's metrics.
pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::default)
}

/// The `Content-Type` of [`Metrics::render`]: the Prometheus text format, version 0.0.4.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// One label: its name and value.
type Label<V = &'static str> = [(&'static str, V); 1];

/// How a push request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum PushOutcome {
    /// Committed and answered 2xx.
    Acked,
    /// Not committed (store down, shutdown): answered 503, Pub/Sub redelivers.
    Nacked,
    /// No valid token: answered 401.
    Unauthorized,
    /// Not a push envelope: counted, skipped and answered 2xx.
    BadEnvelope,
}

impl PushOutcome {
    fn label(self) -> &'static str {
        match self {
            PushOutcome::Acked => "acked",
            PushOutcome::Nacked => "nacked",
            PushOutcome::Unauthorized => "unauthorized",
            PushOutcome::BadEnvelope => "bad_envelope",
        }
    }
}

/// The pipeline's counters as of its last batch (totals since the process started), as the
/// pipeline reports them.
#[derive(Debug, Clone, Copy)]
pub struct PipelineCounts<'a> {
    /// Skipped items by reason.
    pub skipped: &'a BTreeMap<&'static str, u64>,
    /// Entries counted once already.
    pub duplicates: u64,
    /// Alerts made, by event.
    pub alerts: &'a BTreeMap<&'static str, u64>,
    /// Unfired incidents ended silently by `pending_expiry`.
    pub expired: u64,
    /// Incidents dropped to stay under `max_tracked_jobs`.
    pub evicted: u64,
}

/// One receiver's counters, shared with the registry.
#[derive(Debug, Clone)]
pub struct ReceiverMetrics {
    /// Alerts the receiver accepted.
    pub sent: Counter,
    /// Alerts it refused for good (a permanent error).
    pub failed: Counter,
    /// Attempts that failed and were retried.
    pub retries: Counter,
    /// Alerts waiting for a retry now.
    pub retrying: Gauge,
}

/// The per-receiver families of [`ReceiverMetrics`].
#[derive(Debug, Default)]
struct ReceiverFamilies {
    sent: Family<Label<String>, Counter>,
    failed: Family<Label<String>, Counter>,
    retries: Family<Label<String>, Counter>,
    retrying: Family<Label<String>, Gauge>,
}

/// Upper bounds, in seconds, of the store transaction histogram's buckets.
const TRANSACTION_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// Why an incident was dropped without a notification, as `incidents_evicted_total` labels it.
const EVICTION_REASONS: [&str; 2] = ["expired", "capacity"];

/// The registry: every metric below is registered in `registry` (they share their values with
/// it), plus the state that is not itself a metric (readiness, liveness, the last message's
/// time).
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Messages that reached the service (pulled or pushed).
    pub received: Counter,
    /// Messages acked after their commit.
    pub acked: Counter,
    /// Messages handed back (a failed commit, a shutdown): they are redelivered.
    pub nacked: Counter,
    /// Unix time in milliseconds of the last message received; 0 before the first.
    last_message_ms: AtomicI64,
    /// Seconds since then, set when rendered.
    last_message_age: Gauge<f64, AtomicU64>,
    /// Open incidents, after the last batch.
    pub incidents_open: Gauge,
    /// Store commits that succeeded.
    pub commits: Counter,
    /// Store commits that failed.
    pub commit_failures: Counter,
    /// Whether the last store call succeeded — readiness.
    store_ok: AtomicBool,
    /// Times the embedded store was closed and opened again after an I/O error.
    pub store_reopens: Counter,
    /// Why the process should be restarted (its store cannot recover) — liveness; `None`: alive.
    unhealthy: Mutex<Option<String>>,
    /// Subscription streams open now (not ended by a permanent error).
    pub streams_connected: Gauge,
    /// Whether the Pub/Sub endpoint answered the last reachability probe (1) — the client
    /// retries an unreachable endpoint silently and forever, so the streams alone cannot tell.
    pub pubsub_reachable: Gauge,
    /// Cloud Scheduler API job look-ups (cache misses that went to the API).
    pub api_lookups: Counter,
    /// Look-ups that failed.
    pub api_errors: Counter,
    /// Cloud Scheduler API calls that were `ListJobs` pages (also in `api_lookups`).
    pub api_list_calls: Counter,
    /// Failing jobs answered from a cached config, without a call.
    pub api_cached_configs: Counter,
    /// Failing jobs answered from a remembered failed look-up, without a call.
    pub api_cached_failures: Counter,
    /// Failing jobs absent from a fresh listing of their location: not found, without a call.
    pub api_not_listed: Counter,
    /// Failing jobs not asked about: the API did not answer lately, or too many calls waited.
    pub api_not_asked: Counter,
    /// Incidents the shared store's sweep dropped: unfired and expired, and over the cap
    /// ([`EVICTION_REASONS`]); added to the pipeline's own when rendered.
    pub incidents_swept: [AtomicU64; 2],
    /// The pipeline's evictions as of its last batch, in the same order.
    pipeline_evicted: [AtomicU64; 2],
    /// How long a batch spent in the store, in seconds: reading what it needs (with a shared
    /// store, including the wait for other replicas' row locks) and committing; the pipeline's
    /// work between the two is not counted.
    pub store_transaction: Histogram,
    skipped: Family<Label, Counter>,
    duplicates: Counter,
    alerts: Family<Label, Counter>,
    evicted: Family<Label, Counter>,
    receivers: ReceiverFamilies,
    push: Family<Label, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let cache_hits = Family::<Label, Counter>::default();
        let answer = |kind| cache_hits.get_or_create_owned(&[("answer", kind)]);
        let metrics = Metrics {
            registry: Registry::with_prefix("schedwatch"),
            received: Counter::default(),
            acked: Counter::default(),
            nacked: Counter::default(),
            last_message_ms: AtomicI64::new(0),
            last_message_age: Gauge::default(),
            incidents_open: Gauge::default(),
            commits: Counter::default(),
            commit_failures: Counter::default(),
            store_ok: AtomicBool::new(false),
            store_reopens: Counter::default(),
            unhealthy: Mutex::new(None),
            streams_connected: Gauge::default(),
            pubsub_reachable: Gauge::default(),
            api_lookups: Counter::default(),
            api_errors: Counter::default(),
            api_list_calls: Counter::default(),
            api_cached_configs: answer("config"),
            api_cached_failures: answer("failure"),
            api_not_listed: answer("not_listed"),
            api_not_asked: Counter::default(),
            incidents_swept: Default::default(),
            pipeline_evicted: Default::default(),
            store_transaction: Histogram::new(TRANSACTION_BUCKETS),
            skipped: Family::default(),
            duplicates: Counter::default(),
            alerts: Family::default(),
            evicted: Family::default(),
            receivers: ReceiverFamilies::default(),
            push: Family::default(),
        };
        // Families whose every label value is shown from the start, zero or not.
        for event in EventKind::ALL.map(EventKind::as_str) {
            drop(metrics.alerts.get_or_create(&[("event", event)]));
        }
        for reason in EVICTION_REASONS {
            drop(metrics.evicted.get_or_create(&[("reason", reason)]));
        }
        metrics.register(cache_hits)
    }
}

impl Metrics {
    /// Registers every metric, in the order `/metrics` shows them. The registry appends the
    /// `schedwatch_` prefix, a counter's `_total` and the final `.` of each help text.
    fn register(mut self, cache_hits: Family<Label, Counter>) -> Self {
        let mut registry = std::mem::take(&mut self.registry);
        self.register_pipeline(&mut registry);
        self.register_service(&mut registry, cache_hits);
        self.registry = registry;
        self
    }

    /// What flows through the pipeline: messages, incidents, alerts and their delivery.
    fn register_pipeline(&self, r: &mut Registry) {
        r.register(
            "messages_received",
            "Messages received from Pub/Sub (pulled or pushed)",
            self.received.clone(),
        );
        r.register(
            "messages_acked",
            "Messages acked after their effect was committed",
            self.acked.clone(),
        );
        r.register(
            "messages_nacked",
            "Messages handed back for redelivery (a failed commit, a shutdown)",
            self.nacked.clone(),
        );
        r.register(
            "messages_skipped",
            "Messages skipped, by reason (malformed, not a Cloud Scheduler entry, ...)",
            self.skipped.clone(),
        );
        r.register(
            "messages_duplicate",
            "Log entries seen before (same logName, insertId, timestamp), counted once",
            self.duplicates.clone(),
        );
        r.register(
            "incidents_open",
            "Incidents open now",
            self.incidents_open.clone(),
        );
        r.register(
            "incidents_evicted",
            "Incidents dropped without a notification: unfired past [incidents] pending_expiry (expired), or the oldest past max_tracked_jobs (capacity)",
            self.evicted.clone(),
        );
        r.register("alerts", "Alerts made, by event", self.alerts.clone());
        let receivers = &self.receivers;
        r.register(
            "notifications_sent",
            "Alerts a receiver accepted",
            receivers.sent.clone(),
        );
        r.register(
            "notifications_failed",
            "Alerts a receiver refused for good (not retried)",
            receivers.failed.clone(),
        );
        r.register(
            "notifications_retries",
            "Delivery attempts that failed and were retried",
            receivers.retries.clone(),
        );
        r.register(
            "notifications_retrying",
            "Alerts waiting for a delivery retry now",
            receivers.retrying.clone(),
        );
    }

    /// The service's own state: the last message, the Scheduler API, the store, Pub/Sub, push.
    fn register_service(&self, r: &mut Registry, cache_hits: Family<Label, Counter>) {
        r.register(
            "last_message_age_seconds",
            "Seconds since the last message was received (NaN before the first)",
            self.last_message_age.clone(),
        );
        r.register(
            "scheduler_api_lookups",
            "Job configs read from the Cloud Scheduler API",
            self.api_lookups.clone(),
        );
        r.register(
            "scheduler_api_errors",
            "Cloud Scheduler API reads that failed",
            self.api_errors.clone(),
        );
        r.register(
            "scheduler_api_list_calls",
            "Cloud Scheduler API ListJobs pages read (one listing answers every job of a location)",
            self.api_list_calls.clone(),
        );
        r.register(
            "scheduler_api_cache_hits",
            "Failing jobs answered without a call: a cached config, a remembered failure, or absent from a fresh listing",
            cache_hits,
        );
        r.register(
            "scheduler_api_not_asked",
            "Failing jobs not asked about (auth-config-unavailable): the API did not answer lately, or too many calls waited",
            self.api_not_asked.clone(),
        );
        r.register("store_commits", "State store commits", self.commits.clone());
        r.register(
            "store_commit_failures",
            "State store commits that failed (their messages come back)",
            self.commit_failures.clone(),
        );
        r.register(
            "store_reopens",
            "Times the embedded state store was closed and opened again after an I/O error (a full disk)",
            self.store_reopens.clone(),
        );
        r.register(
            "store_transaction_seconds",
            "How long a batch spent in the store: reading what it needs (with a shared store, including waits for other replicas' row locks) and committing",
            self.store_transaction.clone(),
        );
        r.register(
            "pubsub_streams_connected",
            "Subscription streams open now (not ended by a permanent error)",
            self.streams_connected.clone(),
        );
        r.register(
            "pubsub_endpoint_reachable",
            "1 when the Pub/Sub endpoint accepted a connection at the last probe (every 5 s)",
            self.pubsub_reachable.clone(),
        );
        r.register(
            "push_requests",
            "Push requests, by outcome",
            self.push.clone(),
        );
    }

    /// A message arrived now.
    pub fn message_received(&self) {
        self.received.inc();
        self.last_message_ms
            .store(chrono::Utc::now().timestamp_millis(), Relaxed);
    }

    /// Copies the pipeline's counters after a batch.
    pub fn pipeline_stats<'a>(&self, counts: impl Into<PipelineCounts<'a>>, open_incidents: usize) {
        let counts = counts.into();
        for (reason, n) in counts.skipped {
            set(&self.skipped.get_or_create(&[("reason", reason)]), *n);
        }
        set(&self.duplicates, counts.duplicates);
        for event in EventKind::ALL.map(EventKind::as_str) {
            let n = counts.alerts.get(event).copied().unwrap_or(0);
            set(&self.alerts.get_or_create(&[("event", event)]), n);
        }
        self.pipeline_evicted[0].store(counts.expired, Relaxed);
        self.pipeline_evicted[1].store(counts.evicted, Relaxed);
        self.incidents_open.set(open_incidents as i64);
    }

    /// A store commit ended.
    pub fn commit(&self, ok: bool) {
        if ok {
            self.commits.inc();
        } else {
            self.commit_failures.inc();
        }
        self.store_ok.store(ok, Relaxed);
    }

    /// A store call that is not a commit (loading, connecting, upkeep) ended: readiness follows
    /// it, the commit counters do not.
    pub fn store_call(&self, ok: bool) {
        self.store_ok.store(ok, Relaxed);
    }

    /// Whether the store's last commit (or, for a shared store, its last call) succeeded.
    pub fn store_writable(&self) -> bool {
        self.store_ok.load(Relaxed)
    }

    /// Marks the process as needing a restart, with the reason (`None`: healthy again).
    pub fn set_unhealthy(&self, reason: Option<String>) {
        *self.unhealthy.lock().expect("metrics lock") = reason;
    }

    /// Why the process should be restarted, or `None` while it is healthy.
    pub fn unhealthy(&self) -> Option<String> {
        self.unhealthy.lock().expect("metrics lock").clone()
    }

    /// The counters of the receiver `name`, which shows in every per-receiver family from now.
    pub fn receiver(&self, name: &str) -> ReceiverMetrics {
        let label = [("receiver", name.to_owned())];
        let r = &self.receivers;
        ReceiverMetrics {
            sent: r.sent.get_or_create_owned(&label),
            failed: r.failed.get_or_create_owned(&label),
            retries: r.retries.get_or_create_owned(&label),
            retrying: r.retrying.get_or_create_owned(&label),
        }
    }

    /// A push request ended. Requests that were not envelopes are skipped before the pipeline:
    /// counted here, and shown with the pipeline's skips too.
    pub fn push(&self, outcome: PushOutcome) {
        self.push
            .get_or_create(&[("outcome", outcome.label())])
            .inc();
        if outcome == PushOutcome::BadEnvelope {
            self.skipped
                .get_or_create(&[("reason", "bad_push_envelope")])
                .inc();
        }
    }

    /// Seconds since the last message, `None` before the first.
    pub fn last_message_age(&self) -> Option<f64> {
        match self.last_message_ms.load(Relaxed) {
            0 => None,
            ms => Some((chrono::Utc::now().timestamp_millis() - ms).max(0) as f64 / 1000.0),
        }
    }

    /// The Prometheus text exposition format, version 0.0.4 ([`CONTENT_TYPE`]).
    pub fn render(&self) -> String {
        // The values computed when asked: the age, and evictions from two sources.
        self.last_message_age
            .set(self.last_message_age().unwrap_or(f64::NAN));
        for (i, reason) in EVICTION_REASONS.into_iter().enumerate() {
            let n = self.pipeline_evicted[i].load(Relaxed) + self.incidents_swept[i].load(Relaxed);
            set(&self.evicted.get_or_create(&[("reason", reason)]), n);
        }
        let mut out = String::with_capacity(4096);
        prometheus_text::encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

/// Sets a counter to a total counted elsewhere (the pipeline's), which only grows.
fn set(counter: &Counter, total: u64) {
    counter.inner().store(total, Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_text_format_with_escaped_labels() {
        let m = Metrics::default();
        m.message_received();
        m.receiver("ops \"slack\"\n").sent.inc_by(2);
        m.push(PushOutcome::BadEnvelope);
        m.store_transaction.observe(0.003);
        m.store_transaction.observe(9.0);
        let text = m.render();
        for sample in [
            "schedwatch_store_transaction_seconds_bucket{le=\"0.0025\"} 0\n",
            "schedwatch_store_transaction_seconds_bucket{le=\"0.005\"} 1\n",
            "schedwatch_store_transaction_seconds_bucket{le=\"5\"} 1\n",
            "schedwatch_store_transaction_seconds_bucket{le=\"+Inf\"} 2\n",
            "schedwatch_store_transaction_seconds_sum 9.003\n",
            "schedwatch_store_transaction_seconds_count 2\n",
        ] {
            assert!(text.contains(sample), "{sample}{text}");
        }
        assert!(
            text.contains("\nschedwatch_messages_received_total 1\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "schedwatch_notifications_sent_total{receiver=\"ops \\\"slack\\\"\\n\"} 2\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("schedwatch_messages_skipped_total{reason=\"bad_push_envelope\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("schedwatch_push_requests_total{outcome=\"bad_envelope\"} 1\n"),
            "{text}"
        );
        // Every sample line belongs to a family declared just before it.
        let mut declared = std::collections::HashSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                declared.insert(rest.split(' ').next().unwrap().to_owned());
            } else if !line.starts_with('#') {
                let name = line.split(['{', ' ']).next().unwrap();
                let family = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s).filter(|f| declared.contains(*f)))
                    .unwrap_or(name);
                assert!(declared.contains(family), "{line}");
            }
        }
    }
}
