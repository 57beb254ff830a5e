//! The pipeline: decode → dedup → incidents ⇄ correlate → diagnose → alert events.
//!
//! Every door (`replay`, `run`, the demo) feeds input items to [`Pipeline::process_item`] and
//! takes the alerts it appends. The pipeline is synchronous: it is CPU work over one entry at a
//! time. The only I/O it may do — Cloud Scheduler API look-ups for failing jobs — is made
//! before a batch ([`Pipeline::process_batch`]), concurrently and within one deadline, on the
//! client's runtime; an entry processed on its own looks its job up alone.

use std::collections::BTreeMap;

use rustc_hash::FxHashMap;
use std::sync::Arc;

use schedwatch_sinks::{Alert, EventKind};

use crate::correlate::{Correlator, JobConfig};
use crate::decode::{Attempt, Decoded, Decoder, Outcome, Phase, SkipReason};
use crate::dedup::Dedup;
use crate::diagnose::{Diagnoser, Diagnosis};
use crate::incidents::{Eviction, Failure, IncidentRules, Incidents, Transition};
use crate::{notify, JobKey};

/// What the pipeline saw, for the run summary and metrics.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Stats {
    /// Entries read (each line, array element or Pub/Sub message), usable or not.
    pub entries: u64,
    /// Entries counted once already (same logName, insertId, timestamp).
    pub duplicates: u64,
    /// `AttemptStarted` entries (read and ignored).
    pub started: u64,
    /// `AttemptFinished` entries that succeeded.
    pub successes: u64,
    /// `AttemptFinished` entries with 401 or 403.
    pub auth_failures: u64,
    /// `AttemptFinished` entries with other failures (404, 5xx, timeouts).
    pub other_failures: u64,
    /// Scheduler entries of another kind.
    pub other_records: u64,
    /// Skipped items by reason.
    pub skipped: BTreeMap<&'static str, u64>,
    /// Incidents opened.
    pub incidents_opened: u64,
    /// Unfired incidents ended silently by `pending_expiry`.
    pub incidents_expired: u64,
    /// Incidents dropped to stay under `max_tracked_jobs`.
    pub incidents_evicted: u64,
    /// Alerts made, by event.
    pub alerts: BTreeMap<&'static str, u64>,
}

/// What `/metrics` shows of the pipeline: the metrics know nothing of the pipeline, it hands
/// them its counters.
impl<'a> From<&'a Stats> for crate::metrics::PipelineCounts<'a> {
    fn from(stats: &'a Stats) -> Self {
        crate::metrics::PipelineCounts {
            skipped: &stats.skipped,
            duplicates: stats.duplicates,
            alerts: &stats.alerts,
            expired: stats.incidents_expired,
            evicted: stats.incidents_evicted,
        }
    }
}

impl Stats {
    /// Skipped items, all reasons.
    pub fn skipped_total(&self) -> u64 {
        self.skipped.values().sum()
    }

    /// One paragraph for people: what was read, skipped, opened and sent.
    pub fn summary(&self) -> String {
        let skipped = if self.skipped.is_empty() {
            "none skipped".to_owned()
        } else {
            let parts: Vec<String> = self
                .skipped
                .iter()
                .map(|(r, n)| format!("{r} {n}"))
                .collect();
            format!("{} skipped ({})", self.skipped_total(), parts.join(", "))
        };
        let alerts: u64 = self.alerts.values().sum();
        let mut dropped = Vec::new();
        if self.incidents_expired > 0 {
            dropped.push(format!("{} expired unfired", self.incidents_expired));
        }
        if self.incidents_evicted > 0 {
            dropped.push(format!(
                "{} dropped at the max_tracked_jobs cap",
                self.incidents_evicted
            ));
        }
        let dropped = if dropped.is_empty() {
            String::new()
        } else {
            format!(" ({})", dropped.join(", "))
        };
        let by_event: Vec<String> = EventKind::ALL
            .map(|e| {
                let n = self.alerts.get(e.as_str()).copied().unwrap_or(0);
                format!("{n} {}", e.as_str())
            })
            .into_iter()
            .collect();
        format!(
            "{} entries read, {skipped}, {} duplicates; {} finished attempts ({} auth failures, {} successes, {} other failures); \
             {} incidents opened{dropped}; {alerts} alerts sent ({})",
            self.entries,
            self.duplicates,
            self.successes + self.auth_failures + self.other_failures,
            self.auth_failures,
            self.successes,
            self.other_failures,
            self.incidents_opened,
            by_event.join(", ")
        )
    }
}

/// The inputs a diagnosis was made from: when the next failure of the same job has the same
/// ones, the diagnosis is reused instead of rewritten (a failing job logs up to six attempts a
/// minute, and words and fixes are the costly part).
struct Explained {
    config: Option<Arc<JobConfig>>,
    outcome: Outcome,
    url: Option<String>,
    diagnosis: Arc<Diagnosis>,
}

/// Changes not yet committed.
#[derive(Default)]
struct Tracked {
    jobs: rustc_hash::FxHashSet<JobKey>,
    keys: Vec<u128>,
}

/// The stages, joined.
pub struct Pipeline {
    decoder: Decoder,
    dedup: Dedup,
    incidents: Incidents,
    correlator: Correlator,
    diagnoser: Diagnoser,
    explained: FxHashMap<JobKey, Explained>,
    scratch: Vec<Decoded>,
    /// What changed since the last [`Pipeline::take_changes`], when a store keeps the state.
    tracking: Option<Tracked>,
    /// With a shared store: the dedup keys the store says are new this batch (the store, not
    /// this process, decides what is a duplicate).
    fresh: Option<std::collections::HashSet<u128>>,
    /// Whether the first eviction of a fired incident was logged.
    warned_fired_eviction: bool,
    /// What was seen so far.
    pub stats: Stats,
}

impl Pipeline {
    /// A pipeline with no open incidents.
    pub fn new(
        rules: IncidentRules,
        dedup_capacity: usize,
        correlator: Correlator,
        diagnoser: Diagnoser,
    ) -> Self {
        Pipeline {
            decoder: Decoder,
            dedup: Dedup::new(dedup_capacity),
            incidents: Incidents::new(rules),
            correlator,
            diagnoser,
            explained: FxHashMap::default(),
            scratch: Vec::new(),
            tracking: None,
            fresh: None,
            warned_fired_eviction: false,
            stats: Stats::default(),
        }
    }

    /// Records what changes from now on, for [`Pipeline::take_changes`]: `run` commits them to
    /// its store. `replay` keeps everything in memory and does not track.
    pub fn track_changes(&mut self) {
        self.tracking = Some(Tracked::default());
    }

    /// Carries on from a stored state: its open incidents and recent dedup keys.
    pub fn restore(&mut self, state: &crate::store::State) {
        for (job, incident) in &state.incidents {
            self.incidents.restore(job.clone(), incident.clone());
        }
        // A cap lowered since the state was written: the excess goes with the first commit.
        self.incidents.trim();
        for key in &state.dedup_keys {
            self.dedup.insert(*key);
        }
    }

    /// For the next batch, with a shared store: the jobs' incidents as the store holds them
    /// (locked), and the dedup keys it recorded as new. Entries with other keys are duplicates.
    pub fn load_batch(
        &mut self,
        incidents: Vec<(JobKey, Option<crate::incidents::Incident>)>,
        fresh: std::collections::HashSet<u128>,
    ) {
        self.incidents.clear();
        for (job, incident) in incidents {
            self.incidents.replace(&job, incident);
        }
        self.fresh = Some(fresh);
    }

    /// The changes since the last call, with `alerts` (the events they caused), ready to commit.
    pub fn take_changes(&mut self, alerts: Vec<Alert>) -> crate::store::Changes {
        self.note_evictions();
        let Some(t) = self.tracking.as_mut() else {
            return crate::store::Changes {
                alerts,
                ..Default::default()
            };
        };
        let incidents = t.jobs.drain().map(|job| {
            let incident = self.incidents.get(&job).cloned();
            (job, incident)
        });
        crate::store::Changes {
            incidents: incidents.collect(),
            dedup_keys: std::mem::take(&mut t.keys),
            alerts,
            sent: Vec::new(),
        }
    }

    /// The open incidents.
    pub fn incidents(&self) -> &Incidents {
        &self.incidents
    }

    /// Decodes one input item and processes every entry it holds, in order.
    pub fn process_item(&mut self, bytes: &[u8], out: &mut Vec<Alert>) {
        let mut scratch = std::mem::take(&mut self.scratch);
        self.decoder.decode_item(bytes, &mut scratch);
        for decoded in scratch.drain(..) {
            self.process(decoded, out);
        }
        self.scratch = scratch;
    }

    /// Processes a batch of decoded entries, in order. The Cloud Scheduler API look-ups its
    /// auth failures need are made first, together and under one deadline (the API's
    /// `timeout`), so entries never wait on the API one by one.
    pub fn process_batch(&mut self, batch: Vec<Decoded>, out: &mut Vec<Alert>) {
        let failing = batch.iter().flatten().filter(|a| {
            a.phase == Phase::Finished
                && matches!(
                    a.outcome,
                    Outcome::Unauthenticated | Outcome::PermissionDenied
                )
        });
        let incidents = &self.incidents;
        self.correlator
            .prepare(failing.map(|a| (&a.job, incidents.get(&a.job).is_none())));
        for decoded in batch {
            self.process(decoded, out);
        }
        self.correlator.end_batch();
    }

    /// Decodes one item without processing it (for sources that reorder, like JSON arrays).
    pub fn decode(&self, bytes: &[u8], out: &mut Vec<Decoded>) {
        self.decoder.decode_item(bytes, out);
    }

    /// Processes one decoded entry.
    pub fn process(&mut self, decoded: Decoded, out: &mut Vec<Alert>) {
        match decoded {
            Ok(attempt) => {
                self.stats.entries += 1;
                self.attempt(attempt, out)
            }
            Err(reason) => self.skip(reason),
        }
    }

    /// Counts an item skipped before decoding (by a source), warning once per reason.
    pub fn skip(&mut self, reason: SkipReason) {
        self.stats.entries += 1;
        let n = self.stats.skipped.entry(reason.as_str()).or_insert(0);
        *n += 1;
        if *n == 1 {
            tracing::warn!(
                reason = reason.as_str(),
                "skipped an entry: {}; further ones are counted, not logged",
                reason.explain()
            );
        }
    }

    fn attempt(&mut self, a: Attempt, out: &mut Vec<Alert>) {
        let new = match &mut self.fresh {
            // Taken out: a second entry with the key in the same batch is a duplicate.
            Some(fresh) => fresh.remove(&a.dedup_key),
            None => self.dedup.insert(a.dedup_key),
        };
        if !new {
            self.stats.duplicates += 1;
            return;
        }
        if let Some(t) = &mut self.tracking {
            t.keys.push(a.dedup_key);
        }
        match a.phase {
            Phase::Started => self.stats.started += 1,
            Phase::Other => self.stats.other_records += 1,
            Phase::Finished => match a.outcome {
                Outcome::Success => {
                    self.stats.successes += 1;
                    self.success(a, out);
                }
                Outcome::Unauthenticated | Outcome::PermissionDenied => {
                    self.stats.auth_failures += 1;
                    self.failure(a, out);
                }
                Outcome::OtherFailure => self.stats.other_failures += 1,
            },
        }
    }

    /// Counts the incidents the last step dropped without a notification, and forgets them
    /// here too: their memo goes, and the store deletes them with the next commit.
    fn note_evictions(&mut self) {
        let cap = self.incidents.rules().max_tracked_jobs;
        for e in self.incidents.take_evicted() {
            match e.reason {
                Eviction::Expired => self.stats.incidents_expired += 1,
                Eviction::Capacity => {
                    self.stats.incidents_evicted += 1;
                    // Said once, and once more for the first fired one: that one's resolved
                    // notification will never come. Further ones are only counted.
                    let first = self.stats.incidents_evicted == 1;
                    if first || (e.incident.fired && !self.warned_fired_eviction) {
                        self.warned_fired_eviction |= e.incident.fired;
                        tracing::warn!(
                            job = %e.job,
                            incident_id = %e.incident.id,
                            fired = e.incident.fired,
                            "{cap} jobs have an open incident ([incidents] max_tracked_jobs): dropped the one whose last failure is oldest{}; further ones are counted in schedwatch_incidents_evicted_total, not logged",
                            if e.incident.fired {
                                " — it had fired, and will not send a resolved notification"
                            } else {
                                ", which had not fired"
                            }
                        );
                    }
                }
            }
            self.explained.remove(&e.job);
            if let Some(t) = &mut self.tracking {
                t.jobs.insert(e.job);
            }
        }
    }

    /// Notes that `job`'s incident changed, for the next commit; the key is copied once a batch.
    fn track_job(&mut self, job: &JobKey) {
        if let Some(t) = &mut self.tracking {
            if !t.jobs.contains(job) {
                t.jobs.insert(job.clone());
            }
        }
    }

    fn success(&mut self, a: Attempt, out: &mut Vec<Alert>) {
        let ended = self.incidents.success(&a.job, a.timestamp);
        self.note_evictions();
        if let Some((transition, incident)) = ended {
            self.explained.remove(&a.job);
            self.track_job(&a.job);
            if transition == Transition::Resolved {
                tracing::info!(job = %a.job, incident_id = %incident.id, count = incident.count, "resolved");
                self.emit(
                    EventKind::Resolved,
                    &a.job,
                    &incident,
                    Some(a.timestamp),
                    out,
                );
            }
        }
    }

    fn failure(&mut self, a: Attempt, out: &mut Vec<Alert>) {
        let opening = self.incidents.get(&a.job).is_none();
        let lookup = self.correlator.lookup(&a.job, opening);
        let reusable = self.explained.get(&a.job).filter(|e| {
            e.outcome == a.outcome
                && e.url == a.url
                && match (&e.config, &lookup.config) {
                    (Some(x), Some(y)) => Arc::ptr_eq(x, y),
                    (None, None) => e.diagnosis.auth.source == lookup.source,
                    _ => false,
                }
        });
        // A fresh diagnosis is remembered only for a fired incident: an unfired one holds none.
        let (diagnosis, fresh) = match reusable {
            Some(e) => (e.diagnosis.clone(), None),
            None => {
                let diagnosis =
                    Arc::new(
                        self.diagnoser
                            .diagnose(&a.job, &lookup, a.outcome, a.url.as_deref()),
                    );
                let e = Explained {
                    config: lookup.config.clone(),
                    outcome: a.outcome,
                    url: a.url.clone(),
                    diagnosis: diagnosis.clone(),
                };
                (diagnosis, Some(e))
            }
        };
        self.track_job(&a.job);
        let failure = Failure {
            outcome: a.outcome,
            status: a.status,
            http_status: a.http_status,
            at: a.timestamp,
        };
        let (transition, incident) =
            self.incidents
                .failure(&a.job, failure, diagnosis, a.dedup_key);
        let event = match transition {
            Transition::Firing => Some(EventKind::Firing),
            Transition::Repeat => Some(EventKind::Repeat),
            Transition::None | Transition::Resolved => None,
        };
        // (An incident this failure opened has counted one failure.)
        let (opened, fired) = (incident.count == 1, incident.fired);
        let incident = event.map(|_| incident.clone());
        if opened {
            self.stats.incidents_opened += 1;
        }
        // First: an incident of this job that expired just now takes its memo along.
        self.note_evictions();
        if let Some(e) = fresh.filter(|_| fired) {
            self.explained.insert(a.job.clone(), e);
        }
        let (Some(event), Some(incident)) = (event, incident) else {
            return;
        };
        self.emit(event, &a.job, &incident, None, out);
    }

    /// Makes the alert for a fired incident's notification, with the incident's diagnosis.
    fn emit(
        &mut self,
        event: EventKind,
        job: &JobKey,
        incident: &crate::incidents::Incident,
        resolved_at: Option<chrono::DateTime<chrono::Utc>>,
        out: &mut Vec<Alert>,
    ) {
        // Every fired incident holds one; only a store written otherwise could lack it.
        let Some(diagnosis) = incident.diagnosis.as_deref() else {
            tracing::warn!(job = %job, incident_id = %incident.id, "a fired incident without a diagnosis (from the store): no {} notification", event.as_str());
            return;
        };
        if event != EventKind::Resolved {
            tracing::info!(job = %job, incident_id = %incident.id, code = diagnosis.code.as_str(), count = incident.count, "{}", event.as_str());
        }
        *self.stats.alerts.entry(event.as_str()).or_insert(0) += 1;
        out.push(notify::alert(
            event,
            job,
            incident,
            diagnosis,
            &self.diagnoser,
            resolved_at,
        ));
    }
}
