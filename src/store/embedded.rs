//! The embedded store: one redb file, durable at every commit (fsync), no server.
//!
//! Tables: `incidents` (job name → the open incident as JSON), `dedup` (key → sequence) with
//! `dedup_order` (sequence → key) so the oldest keys can be dropped past the capacity, `outbox`
//! (id → alert JSON), `sent` (id → when every receiver was done with it and which refused it
//! for good, for the record, bounded), and `meta`
//! (counters).

use std::path::{Path, PathBuf};

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

use super::{Changes, OutboxRow, State, StoreError};
use crate::incidents::Incident;
use crate::JobKey;

const INCIDENTS: TableDefinition<&str, &[u8]> = TableDefinition::new("incidents");
const DEDUP: TableDefinition<u128, u64> = TableDefinition::new("dedup");
const DEDUP_ORDER: TableDefinition<u64, u128> = TableDefinition::new("dedup_order");
const OUTBOX: TableDefinition<u64, &[u8]> = TableDefinition::new("outbox");
const SENT: TableDefinition<u64, &[u8]> = TableDefinition::new("sent");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// How many delivered alerts the record keeps: enough to answer "was this sent?" for weeks.
const SENT_KEPT: u64 = 10_000;

/// The store's file name inside the state folder.
pub const FILE_NAME: &str = "schedwatch.redb";

/// A redb file.
pub struct EmbeddedStore {
    db: Database,
    path: PathBuf,
    dedup_capacity: u64,
}

/// What `sent` keeps of an outbox row every receiver is done with.
#[derive(serde::Serialize)]
struct DoneRecord<'a> {
    done_at: &'a str,
    /// Each receiver that refused it for good, and why.
    failed: Vec<Refusal<'a>>,
    alert: Option<&'a serde_json::value::RawValue>,
}

#[derive(serde::Serialize)]
struct Refusal<'a> {
    receiver: &'a str,
    reason: &'a str,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct StoredIncident {
    job: JobKey,
    incident: Incident,
}

impl EmbeddedStore {
    /// Opens (or creates) `dir/schedwatch.redb`, keeping at most `dedup_capacity` dedup keys.
    pub fn open(dir: &Path, dedup_capacity: usize) -> Result<EmbeddedStore, StoreError> {
        let path = dir.join(FILE_NAME);
        let err = |e: &dyn std::fmt::Display| StoreError::Db {
            path: path.display().to_string(),
            message: e.to_string(),
        };
        std::fs::create_dir_all(dir).map_err(|e| err(&e))?;
        let db = Database::create(&path).map_err(|e| err(&e))?;
        let store = EmbeddedStore {
            db,
            path: path.clone(),
            dedup_capacity: dedup_capacity.max(1) as u64,
        };
        // Create every table, so readers never meet a missing one.
        let tx = store.db.begin_write().map_err(|e| err(&e))?;
        {
            tx.open_table(INCIDENTS).map_err(|e| err(&e))?;
            tx.open_table(DEDUP).map_err(|e| err(&e))?;
            tx.open_table(DEDUP_ORDER).map_err(|e| err(&e))?;
            tx.open_table(OUTBOX).map_err(|e| err(&e))?;
            tx.open_table(SENT).map_err(|e| err(&e))?;
            tx.open_table(META).map_err(|e| err(&e))?;
        }
        tx.commit().map_err(|e| err(&e))?;
        Ok(store)
    }

    /// The store's file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn err(&self, e: impl std::fmt::Display) -> StoreError {
        StoreError::Db {
            path: self.path.display().to_string(),
            message: e.to_string(),
        }
    }

    fn corrupt(&self, what: &'static str, e: impl std::fmt::Display) -> StoreError {
        StoreError::Corrupt {
            path: self.path.display().to_string(),
            what,
            message: e.to_string(),
        }
    }

    /// Everything needed to carry on: open incidents, recent dedup keys, undelivered alerts.
    pub fn load(&self) -> Result<State, StoreError> {
        let tx = self.db.begin_read().map_err(|e| self.err(e))?;
        let mut state = State::default();
        let incidents = tx.open_table(INCIDENTS).map_err(|e| self.err(e))?;
        for row in incidents.iter().map_err(|e| self.err(e))? {
            let (name, v) = row.map_err(|e| self.err(e))?;
            let s: StoredIncident = match serde_json::from_slice(v.value()) {
                Ok(s) => s,
                // Stored before job labels were checked, for a job no entry can name now:
                // left behind, not a reason to refuse to start.
                Err(e) if JobKey::from_name(name.value()).is_err() => {
                    tracing::warn!("an incident of a job whose name breaks Cloud Scheduler's grammar is left in the store: {e}");
                    continue;
                }
                Err(e) => return Err(self.corrupt("incident", e)),
            };
            state.incidents.push((s.job, s.incident));
        }
        let order = tx.open_table(DEDUP_ORDER).map_err(|e| self.err(e))?;
        for row in order.iter().map_err(|e| self.err(e))? {
            let (_, key) = row.map_err(|e| self.err(e))?;
            state.dedup_keys.push(key.value());
        }
        let outbox = tx.open_table(OUTBOX).map_err(|e| self.err(e))?;
        for row in outbox.iter().map_err(|e| self.err(e))? {
            let (id, v) = row.map_err(|e| self.err(e))?;
            let alert = serde_json::from_slice(v.value()).map_err(|e| self.corrupt("alert", e))?;
            state.outbox.push(OutboxRow {
                id: id.value(),
                alert,
            });
        }
        Ok(state)
    }

    /// Commits one batch's changes in one durable transaction; returns the new outbox rows.
    pub fn commit(&self, changes: Changes) -> Result<Vec<OutboxRow>, StoreError> {
        let tx = self.db.begin_write().map_err(|e| self.err(e))?;
        let mut rows = Vec::with_capacity(changes.alerts.len());
        {
            let mut meta = tx.open_table(META).map_err(|e| self.err(e))?;
            // The sequences are read once and written back once a commit.
            let counter = |name: &str| -> Result<u64, StoreError> {
                Ok(meta
                    .get(name)
                    .map_err(|e| self.err(e))?
                    .map_or(1, |v| v.value()))
            };
            let (mut dedup_seq, mut outbox_seq) = (counter("dedup_seq")?, counter("outbox_seq")?);

            let mut incidents = tx.open_table(INCIDENTS).map_err(|e| self.err(e))?;
            for (job, incident) in changes.incidents {
                let name = job.name();
                match incident {
                    Some(incident) => {
                        let bytes = serde_json::to_vec(&StoredIncident { job, incident })
                            .map_err(|e| self.err(e))?;
                        incidents
                            .insert(name.as_str(), bytes.as_slice())
                            .map_err(|e| self.err(e))?;
                    }
                    None => {
                        incidents.remove(name.as_str()).map_err(|e| self.err(e))?;
                    }
                }
            }

            let mut dedup = tx.open_table(DEDUP).map_err(|e| self.err(e))?;
            let mut order = tx.open_table(DEDUP_ORDER).map_err(|e| self.err(e))?;
            for key in changes.dedup_keys {
                if dedup.get(key).map_err(|e| self.err(e))?.is_some() {
                    continue;
                }
                let seq = dedup_seq;
                dedup_seq += 1;
                dedup.insert(key, seq).map_err(|e| self.err(e))?;
                order.insert(seq, key).map_err(|e| self.err(e))?;
            }
            // Expire the oldest keys past the capacity.
            let excess = order
                .len()
                .map_err(|e| self.err(e))?
                .saturating_sub(self.dedup_capacity);
            for _ in 0..excess {
                let Some((_, key)) = order.pop_first().map_err(|e| self.err(e))? else {
                    break;
                };
                let key = key.value();
                dedup.remove(key).map_err(|e| self.err(e))?;
            }

            let mut outbox = tx.open_table(OUTBOX).map_err(|e| self.err(e))?;
            for alert in changes.alerts {
                let id = outbox_seq;
                outbox_seq += 1;
                let bytes = serde_json::to_vec(&alert).map_err(|e| self.err(e))?;
                outbox
                    .insert(id, bytes.as_slice())
                    .map_err(|e| self.err(e))?;
                rows.push(OutboxRow { id, alert });
            }
            meta.insert("dedup_seq", dedup_seq)
                .map_err(|e| self.err(e))?;
            meta.insert("outbox_seq", outbox_seq)
                .map_err(|e| self.err(e))?;

            let mut sent = tx.open_table(SENT).map_err(|e| self.err(e))?;
            let now = chrono::Utc::now().to_rfc3339();
            for done in changes.sent {
                let id = done.id;
                if let Some(row) = outbox.remove(id).map_err(|e| self.err(e))? {
                    // The alert as it was stored, not parsed and written again.
                    let alert: Option<&serde_json::value::RawValue> =
                        serde_json::from_slice(row.value()).ok();
                    let record = serde_json::to_vec(&DoneRecord {
                        done_at: &now,
                        failed: done
                            .failed
                            .iter()
                            .map(|(receiver, reason)| Refusal { receiver, reason })
                            .collect(),
                        alert,
                    })
                    .map_err(|e| self.err(e))?;
                    drop(row);
                    sent.insert(id, record.as_slice())
                        .map_err(|e| self.err(e))?;
                }
            }
            let excess = sent
                .len()
                .map_err(|e| self.err(e))?
                .saturating_sub(SENT_KEPT);
            for _ in 0..excess {
                sent.pop_first().map_err(|e| self.err(e))?;
            }
        }
        tx.commit().map_err(|e| self.err(e))?;
        Ok(rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::correlate::{Correlator, Inventory};
    use crate::diagnose::Diagnoser;
    use crate::incidents::IncidentRules;
    use crate::pipeline::Pipeline;
    use crate::store::Sent;

    const SEED: &str = "../shared/examples/oidc-to-run-job-then-fixed";

    fn pipeline() -> Pipeline {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let inventory = Inventory::load(&root.join(SEED).join("jobs")).unwrap();
        let mut p = Pipeline::new(
            IncidentRules::default(),
            1000,
            Correlator::new(Some(inventory), None),
            Diagnoser::default(),
        );
        p.track_changes();
        p
    }

    fn seed_lines() -> Vec<String> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        std::fs::read_to_string(root.join(SEED).join("logs.ndjson"))
            .unwrap()
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(str::to_owned)
            .collect()
    }

    /// Feeds `lines` and commits their changes; returns the new outbox rows.
    fn feed(p: &mut Pipeline, store: &EmbeddedStore, lines: &[String]) -> Vec<OutboxRow> {
        let mut alerts = Vec::new();
        for l in lines {
            p.process_item(l.as_bytes(), &mut alerts);
        }
        store.commit(p.take_changes(alerts)).unwrap()
    }

    #[test]
    fn a_reopened_store_carries_incidents_dedup_keys_and_the_outbox_on() {
        let dir = tempfile::tempdir().unwrap();
        let lines = seed_lines();
        let first_success = lines
            .iter()
            .position(|l| l.contains("URL_CRAWLED"))
            .unwrap();
        {
            let store = EmbeddedStore::open(dir.path(), 1000).unwrap();
            let mut p = pipeline();
            let rows = feed(&mut p, &store, &lines[..first_success]);
            assert_eq!(rows.len(), 1, "the firing alert goes to the outbox");
            assert_eq!(rows[0].alert.event.as_str(), "firing");
        }
        // A new process: the incident is open, the keys known, the alert still undelivered.
        let store = EmbeddedStore::open(dir.path(), 1000).unwrap();
        let state = store.load().unwrap();
        assert_eq!(state.incidents.len(), 1);
        assert_eq!(state.incidents[0].0.job_id(), "commit-worker");
        assert_eq!(state.dedup_keys.len(), first_success);
        assert_eq!(state.outbox.len(), 1);

        let mut p = pipeline();
        p.restore(&state);
        p.track_changes();
        // Redelivered entries change nothing; the success resolves the same incident.
        let rows = feed(&mut p, &store, &lines);
        assert_eq!(rows.len(), 1, "{rows:?}");
        assert_eq!(rows[0].alert.event.as_str(), "resolved");
        assert_eq!(rows[0].alert.incident_id, state.outbox[0].alert.incident_id);
        assert_eq!(p.stats.duplicates as usize, first_success);

        // Recording both deliveries empties the outbox; the ended incident is gone.
        let sent = Changes {
            sent: vec![
                Sent::delivered(state.outbox[0].id),
                Sent::delivered(rows[0].id),
            ],
            ..Changes::default()
        };
        store.commit(sent).unwrap();
        let state = store.load().unwrap();
        assert!(state.outbox.is_empty());
        assert!(state.incidents.is_empty());
        assert_eq!(state.dedup_keys.len(), lines.len());
    }

    #[test]
    fn dedup_keys_are_bounded_and_the_oldest_go_first() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path(), 3).unwrap();
        for keys in [vec![1u128, 2], vec![3, 4], vec![4, 5]] {
            store
                .commit(Changes {
                    dedup_keys: keys,
                    ..Changes::default()
                })
                .unwrap();
        }
        assert_eq!(store.load().unwrap().dedup_keys, vec![3, 4, 5]);
    }

    #[test]
    fn a_second_opener_of_the_same_file_is_refused_with_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let _owner = EmbeddedStore::open(dir.path(), 10).unwrap();
        let err = EmbeddedStore::open(dir.path(), 10).err().expect("refused");
        assert!(err.to_string().contains(FILE_NAME), "{err}");
    }

    #[test]
    fn an_incident_stored_for_a_job_the_grammar_refuses_is_left_behind() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path(), 1000).unwrap();
        let lines = seed_lines();
        let first_success = lines
            .iter()
            .position(|l| l.contains("URL_CRAWLED"))
            .unwrap();
        feed(&mut pipeline(), &store, &lines[..first_success]);
        // A version that took any label stored the same incident for a forged job id.
        let tx = store.db.begin_write().unwrap();
        {
            let mut incidents = tx.open_table(INCIDENTS).unwrap();
            let (name, value) = {
                let (k, v) = incidents.iter().unwrap().next().unwrap().unwrap();
                (
                    k.value().to_owned(),
                    String::from_utf8(v.value().to_vec()).unwrap(),
                )
            };
            let forged_name = name.replace("commit-worker", "x\n# forged");
            let forged = value.replace("commit-worker", "x\\n# forged");
            incidents
                .insert(forged_name.as_str(), forged.as_bytes())
                .unwrap();
        }
        tx.commit().unwrap();
        let state = store.load().expect("starts");
        assert_eq!(state.incidents.len(), 1);
        assert_eq!(state.incidents[0].0.job_id(), "commit-worker");
    }
}
