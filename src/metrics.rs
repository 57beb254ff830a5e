//! The service's counters and gauges, and their Prometheus text rendering (`GET /metrics`).
//!
//! One registry for the process ([`metrics()`]): the stages count where the event happens —
//! the pull tasks what they receive, the processor what it acks and commits, the delivery
//! queues what they send — with relaxed atomics, so counting costs an uncontended add and
//! scraping never waits for the pipeline. The pipeline's own counters (skips by reason,
//! duplicates, alerts by event) are copied in after each batch, so there is one source of
//! truth for them: [`Stats`].

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Mutex, OnceLock};

use crate::pipeline::Stats;

/// The process's metrics.
pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::default)
}

/// Counters per receiver.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ReceiverCounts {
    /// Alerts the receiver accepted.
    pub sent: u64,
    /// Alerts it refused for good (a permanent error).
    pub failed: u64,
    /// Attempts that failed and were retried.
    pub retries: u64,
    /// Alerts waiting for a retry now.
    pub retrying: i64,
}

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

/// The registry.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Messages that reached the service (pulled or pushed).
    pub received: AtomicU64,
    /// Messages acked after their commit.
    pub acked: AtomicU64,
    /// Messages handed back (a failed commit, a shutdown): they are redelivered.
    pub nacked: AtomicU64,
    /// Unix time in milliseconds of the last message received; 0 before the first.
    pub last_message_ms: AtomicI64,
    /// Open incidents, after the last batch.
    pub incidents_open: AtomicU64,
    /// Store commits that succeeded.
    pub commits: AtomicU64,
    /// Store commits that failed.
    pub commit_failures: AtomicU64,
    /// Whether the last store call succeeded — readiness.
    pub store_ok: AtomicBool,
    /// Times the embedded store was closed and opened again after an I/O error.
    pub store_reopens: AtomicU64,
    /// Why the process should be restarted (its store cannot recover) — liveness; `None`: alive.
    unhealthy: Mutex<Option<String>>,
    /// Subscription streams open now (not ended by a permanent error).
    pub streams_connected: AtomicI64,
    /// Whether the Pub/Sub endpoint answered the last reachability probe (1) — the client
    /// retries an unreachable endpoint silently and forever, so the streams alone cannot tell.
    pub pubsub_reachable: AtomicU64,
    /// Cloud Scheduler API job look-ups (cache misses that went to the API).
    pub api_lookups: AtomicU64,
    /// Look-ups that failed.
    pub api_errors: AtomicU64,
    /// Cloud Scheduler API calls that were `ListJobs` pages (also in `api_lookups`).
    pub api_list_calls: AtomicU64,
    /// Failing jobs answered from a cached config, without a call.
    pub api_cached_configs: AtomicU64,
    /// Failing jobs answered from a remembered failed look-up, without a call.
    pub api_cached_failures: AtomicU64,
    /// Failing jobs absent from a fresh listing of their location: not found, without a call.
    pub api_not_listed: AtomicU64,
    /// Failing jobs not asked about: the API did not answer lately, or too many calls waited.
    pub api_not_asked: AtomicU64,
    /// Incidents the shared store's sweep dropped: unfired and expired, and over the cap.
    pub incidents_swept: [AtomicU64; 2],
    /// How long a batch's store transaction took, from its first statement to its commit
    /// (with a shared store, including the wait for other replicas' row locks).
    pub store_transaction: Histogram,
    pipeline: Mutex<PipelineCounts>,
    receivers: Mutex<BTreeMap<String, ReceiverCounts>>,
    push: Mutex<BTreeMap<PushOutcome, u64>>,
}

/// Upper bounds, in seconds, of the store transaction histogram's buckets.
const TRANSACTION_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// A Prometheus histogram of durations over [`TRANSACTION_BUCKETS`], lock-free.
#[derive(Debug, Default)]
pub struct Histogram {
    /// Observations at or under each bound (not cumulative; summed when rendered).
    buckets: [AtomicU64; TRANSACTION_BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    /// Counts one duration.
    pub fn observe(&self, d: std::time::Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = TRANSACTION_BUCKETS.iter().position(|b| secs <= *b) {
            self.buckets[i].fetch_add(1, Relaxed);
        }
        self.count.fetch_add(1, Relaxed);
        self.sum_micros
            .fetch_add(d.as_micros().min(u64::MAX as u128) as u64, Relaxed);
    }

    /// The `_bucket`, `_sum` and `_count` samples, suffix and labels first.
    fn samples(&self) -> Vec<(String, String)> {
        let mut out = Vec::with_capacity(TRANSACTION_BUCKETS.len() + 3);
        let mut cumulative = 0;
        for (bound, n) in TRANSACTION_BUCKETS.iter().zip(&self.buckets) {
            cumulative += n.load(Relaxed);
            out.push((
                format!("_bucket{}", label("le", &bound.to_string())),
                cumulative.to_string(),
            ));
        }
        let count = self.count.load(Relaxed);
        out.push((format!("_bucket{}", label("le", "+Inf")), count.to_string()));
        out.push((
            "_sum".into(),
            (self.sum_micros.load(Relaxed) as f64 / 1e6).to_string(),
        ));
        out.push(("_count".into(), count.to_string()));
        out
    }
}

/// The pipeline's counters as of its last batch, plus envelopes it never saw.
#[derive(Debug, Default)]
struct PipelineCounts {
    skipped: BTreeMap<&'static str, u64>,
    duplicates: u64,
    alerts: BTreeMap<&'static str, u64>,
    /// Incidents dropped without a notification: expired unfired, and over the cap.
    evicted: [u64; 2],
}

impl Metrics {
    /// A message arrived now.
    pub fn message_received(&self) {
        self.received.fetch_add(1, Relaxed);
        self.last_message_ms
            .store(chrono::Utc::now().timestamp_millis(), Relaxed);
    }

    /// Copies the pipeline's counters after a batch.
    pub fn pipeline_stats(&self, stats: &Stats, open_incidents: usize) {
        let mut p = self.pipeline.lock().expect("metrics lock");
        p.skipped.clone_from(&stats.skipped);
        p.duplicates = stats.duplicates;
        p.alerts.clone_from(&stats.alerts);
        p.evicted = [stats.incidents_expired, stats.incidents_evicted];
        self.incidents_open.store(open_incidents as u64, Relaxed);
    }

    /// A store commit ended.
    pub fn commit(&self, ok: bool) {
        if ok {
            self.commits.fetch_add(1, Relaxed);
        } else {
            self.commit_failures.fetch_add(1, Relaxed);
        }
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

    /// Changes a receiver's counters.
    pub fn receiver(&self, name: &str, change: impl FnOnce(&mut ReceiverCounts)) {
        let mut r = self.receivers.lock().expect("metrics lock");
        match r.get_mut(name) {
            Some(c) => change(c),
            None => change(r.entry(name.to_owned()).or_default()),
        }
    }

    /// A push request ended.
    pub fn push(&self, outcome: PushOutcome) {
        *self
            .push
            .lock()
            .expect("metrics lock")
            .entry(outcome)
            .or_default() += 1;
    }

    /// Seconds since the last message, `None` before the first.
    pub fn last_message_age(&self) -> Option<f64> {
        match self.last_message_ms.load(Relaxed) {
            0 => None,
            ms => Some((chrono::Utc::now().timestamp_millis() - ms).max(0) as f64 / 1000.0),
        }
    }

    /// The Prometheus text exposition format, version 0.0.4.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        let mut family = |name: &str, kind: &str, help: &str, samples: &[(String, String)]| {
            let _ = writeln!(
                out,
                "# HELP schedwatch_{name} {help}\n# TYPE schedwatch_{name} {kind}"
            );
            for (labels, value) in samples {
                let _ = writeln!(out, "schedwatch_{name}{labels} {value}");
            }
        };
        let one = |v: u64| vec![(String::new(), v.to_string())];
        let get = |a: &AtomicU64| a.load(Relaxed);

        family(
            "messages_received_total",
            "counter",
            "Messages received from Pub/Sub (pulled or pushed).",
            &one(get(&self.received)),
        );
        family(
            "messages_acked_total",
            "counter",
            "Messages acked after their effect was committed.",
            &one(get(&self.acked)),
        );
        family(
            "messages_nacked_total",
            "counter",
            "Messages handed back for redelivery (a failed commit, a shutdown).",
            &one(get(&self.nacked)),
        );
        // Push requests that were not envelopes are skipped before the pipeline: counted once,
        // as a push outcome, and shown with the pipeline's skips.
        let bad_envelopes = self
            .push
            .lock()
            .expect("metrics lock")
            .get(&PushOutcome::BadEnvelope)
            .copied()
            .unwrap_or(0);
        let (skipped, duplicates, alerts, evicted) = {
            let p = self.pipeline.lock().expect("metrics lock");
            let mut skipped: Vec<(String, String)> = p
                .skipped
                .iter()
                .map(|(reason, n)| (label("reason", reason), n.to_string()))
                .collect();
            if bad_envelopes > 0 {
                skipped.push((
                    label("reason", "bad_push_envelope"),
                    bad_envelopes.to_string(),
                ));
            }
            let alerts: Vec<(String, String)> = ["firing", "repeat", "resolved"]
                .iter()
                .map(|e| {
                    (
                        label("event", e),
                        p.alerts.get(e).copied().unwrap_or(0).to_string(),
                    )
                })
                .collect();
            let evicted: Vec<(String, String)> = ["expired", "capacity"]
                .iter()
                .zip(p.evicted)
                .zip(&self.incidents_swept)
                .map(|((reason, n), swept)| (label("reason", reason), (n + get(swept)).to_string()))
                .collect();
            (skipped, p.duplicates, alerts, evicted)
        };
        family(
            "messages_skipped_total",
            "counter",
            "Messages skipped, by reason (malformed, not a Cloud Scheduler entry, ...).",
            &skipped,
        );
        family(
            "messages_duplicate_total",
            "counter",
            "Log entries seen before (same logName, insertId, timestamp), counted once.",
            &one(duplicates),
        );
        family(
            "incidents_open",
            "gauge",
            "Incidents open now.",
            &one(get(&self.incidents_open)),
        );
        family(
            "incidents_evicted_total",
            "counter",
            "Incidents dropped without a notification: unfired past [incidents] pending_expiry (expired), or the oldest past max_tracked_jobs (capacity).",
            &evicted,
        );
        family("alerts_total", "counter", "Alerts made, by event.", &alerts);

        let receivers: Vec<(String, ReceiverCounts)> = self
            .receivers
            .lock()
            .expect("metrics lock")
            .iter()
            .map(|(n, c)| (label("receiver", n), *c))
            .collect();
        let per = |f: fn(&ReceiverCounts) -> String| -> Vec<(String, String)> {
            receivers.iter().map(|(l, c)| (l.clone(), f(c))).collect()
        };
        family(
            "notifications_sent_total",
            "counter",
            "Alerts a receiver accepted.",
            &per(|c| c.sent.to_string()),
        );
        family(
            "notifications_failed_total",
            "counter",
            "Alerts a receiver refused for good (not retried).",
            &per(|c| c.failed.to_string()),
        );
        family(
            "notifications_retries_total",
            "counter",
            "Delivery attempts that failed and were retried.",
            &per(|c| c.retries.to_string()),
        );
        family(
            "notifications_retrying",
            "gauge",
            "Alerts waiting for a delivery retry now.",
            &per(|c| c.retrying.to_string()),
        );

        let age = self
            .last_message_age()
            .map_or_else(|| "NaN".to_owned(), |s| format!("{s:.3}"));
        family(
            "last_message_age_seconds",
            "gauge",
            "Seconds since the last message was received (NaN before the first).",
            &[(String::new(), age)],
        );
        family(
            "scheduler_api_lookups_total",
            "counter",
            "Job configs read from the Cloud Scheduler API.",
            &one(get(&self.api_lookups)),
        );
        family(
            "scheduler_api_errors_total",
            "counter",
            "Cloud Scheduler API reads that failed.",
            &one(get(&self.api_errors)),
        );
        family(
            "scheduler_api_list_calls_total",
            "counter",
            "Cloud Scheduler API ListJobs pages read (one listing answers every job of a location).",
            &one(get(&self.api_list_calls)),
        );
        let answered = [
            ("config", &self.api_cached_configs),
            ("failure", &self.api_cached_failures),
            ("not_listed", &self.api_not_listed),
        ]
        .map(|(kind, n)| (label("answer", kind), get(n).to_string()));
        family(
            "scheduler_api_cache_hits_total",
            "counter",
            "Failing jobs answered without a call: a cached config, a remembered failure, or absent from a fresh listing.",
            &answered,
        );
        family(
            "scheduler_api_not_asked_total",
            "counter",
            "Failing jobs not asked about (auth-config-unavailable): the API did not answer lately, or too many calls waited.",
            &one(get(&self.api_not_asked)),
        );
        family(
            "store_commits_total",
            "counter",
            "State store commits.",
            &one(get(&self.commits)),
        );
        family(
            "store_commit_failures_total",
            "counter",
            "State store commits that failed (their messages come back).",
            &one(get(&self.commit_failures)),
        );
        family(
            "store_reopens_total",
            "counter",
            "Times the embedded state store was closed and opened again after an I/O error (a full disk).",
            &one(get(&self.store_reopens)),
        );
        family(
            "store_transaction_seconds",
            "histogram",
            "How long a batch's store transaction took, first statement to commit (with a shared store, including waits for other replicas' row locks).",
            &self.store_transaction.samples(),
        );
        family(
            "pubsub_streams_connected",
            "gauge",
            "Subscription streams open now (not ended by a permanent error).",
            &[(
                String::new(),
                self.streams_connected.load(Relaxed).to_string(),
            )],
        );
        family(
            "pubsub_endpoint_reachable",
            "gauge",
            "1 when the Pub/Sub endpoint accepted a connection at the last probe (every 5 s).",
            &one(get(&self.pubsub_reachable)),
        );
        let push: Vec<(String, String)> = self
            .push
            .lock()
            .expect("metrics lock")
            .iter()
            .map(|(o, n)| (label("outcome", o.label()), n.to_string()))
            .collect();
        family(
            "push_requests_total",
            "counter",
            "Push requests, by outcome.",
            &push,
        );
        out
    }
}

/// `{name="value"}`, the value escaped as the text format requires.
fn label(name: &str, value: &str) -> String {
    let mut escaped = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => escaped.push_str("\\\\"),
            '"' => escaped.push_str("\\\""),
            '\n' => escaped.push_str("\\n"),
            c => escaped.push(c),
        }
    }
    format!("{{{name}=\"{escaped}\"}}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_text_format_with_escaped_labels() {
        let m = Metrics::default();
        m.message_received();
        m.receiver("ops \"slack\"\n", |c| c.sent += 2);
        m.push(PushOutcome::BadEnvelope);
        m.store_transaction
            .observe(std::time::Duration::from_micros(3_000));
        m.store_transaction
            .observe(std::time::Duration::from_secs(9));
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
