//! The embedded store: one redb file, durable at every commit (fsync), no server.
//!
//! Tables: `incidents` (job name → the open incident as JSON), `dedup` (key → sequence) with
//! `dedup_order` (sequence → key) so the oldest keys can be dropped past the capacity, `outbox`
//! (id → alert JSON), `sent` (id → when every receiver was done with it and which refused it
//! for good, for the record, bounded), and `meta`
//! (counters).
//!
//! After an I/O error (a full disk, EIO) redb refuses every further call until the database is
//! closed and opened again; [`classify`] tells those errors from a damaged file, and
//! [`EmbeddedStore::reopen`] does the closing and opening.

use std::io::ErrorKind;
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
    /// `None` after a failed [`EmbeddedStore::reopen`] closed it and could not open it again.
    db: Option<Database>,
    path: PathBuf,
    dedup_capacity: u64,
}

/// What a redb error says about the store, and so what to do about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fault {
    /// The disk under the file failed (full, an I/O error), or an earlier failure latched the
    /// database shut: close it and open it again, with backoff, until the cause is gone.
    Reopen,
    /// The file is damaged, or is not (or no longer) a schedwatch store: nothing to retry.
    Damaged,
    /// Anything else (another process holds the file): try again later as it is.
    Retry,
}

/// Which redb errors mean "close and reopen", which "the file is damaged".
pub(crate) fn classify(e: &redb::Error) -> Fault {
    use redb::Error as E;
    match e {
        // What redb reports for a file that does not start like a redb database.
        E::Io(io) if io.kind() == ErrorKind::InvalidData => Fault::Damaged,
        // ENOSPC, EIO and the like, then "Previous I/O error occurred" on every later call.
        E::Io(_)
        | E::PreviousIo
        | E::DatabaseClosed
        | E::Backend(_)
        | E::LockPoisoned(_)
        | E::TransactionPoisoned => Fault::Reopen,
        E::Corrupted(_)
        | E::UpgradeRequired(_)
        | E::RepairAborted
        | E::TableTypeMismatch { .. }
        | E::TableIsMultimap(_)
        | E::TableIsNotMultimap(_)
        | E::TypeDefinitionChanged { .. } => Fault::Damaged,
        _ => Fault::Retry,
    }
}

/// `e` as a store error of the kind [`classify`] says.
fn store_error(path: &Path, e: impl Into<redb::Error>) -> StoreError {
    let e = e.into();
    let (path, message) = (path.display().to_string(), e.to_string());
    match classify(&e) {
        Fault::Reopen => StoreError::Io { path, message },
        Fault::Damaged => StoreError::Damaged { path, message },
        Fault::Retry => StoreError::Db { path, message },
    }
}

/// Opens `path` and creates every table, so readers never meet a missing one. A reopen
/// (`create` false) wants the file to be there, and checks it whole first.
fn open_db(path: &Path, create: bool) -> Result<Database, StoreError> {
    let err = |e: redb::Error| store_error(path, e);
    let db = if create {
        Database::create(path).map_err(|e| err(e.into()))?
    } else {
        if !path.exists() {
            return Err(StoreError::Damaged {
                path: path.display().to_string(),
                message: "the file is gone (removed while schedwatch ran)".into(),
            });
        }
        // The file saw an I/O error: every page's checksum is verified, so a damaged file is
        // refused (and not trusted, where a plain open may panic).
        Database::builder()
            .set_check_integrity_on_open(true)
            .open(path)
            .map_err(|e| err(e.into()))?
    };
    let tx = db.begin_write().map_err(|e| err(e.into()))?;
    {
        tx.open_table(INCIDENTS).map_err(|e| err(e.into()))?;
        tx.open_table(DEDUP).map_err(|e| err(e.into()))?;
        tx.open_table(DEDUP_ORDER).map_err(|e| err(e.into()))?;
        tx.open_table(OUTBOX).map_err(|e| err(e.into()))?;
        tx.open_table(SENT).map_err(|e| err(e.into()))?;
        tx.open_table(META).map_err(|e| err(e.into()))?;
    }
    tx.commit().map_err(|e| err(e.into()))?;
    Ok(db)
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
        std::fs::create_dir_all(dir).map_err(|e| store_error(&path, e))?;
        let db = open_db(&path, true)?;
        Ok(EmbeddedStore {
            db: Some(db),
            path,
            dedup_capacity: dedup_capacity.max(1) as u64,
        })
    }

    /// Closes the database and opens the file again: after an I/O error redb refuses every
    /// call ("Previous I/O error occurred") until then. The reopened file holds what its last
    /// complete commit wrote. When the open fails, the store stays closed (every call says so)
    /// until a later reopen succeeds.
    pub fn reopen(&mut self) -> Result<(), StoreError> {
        // Dropped first: closing releases the file's lock, which the open takes again. Its
        // error, if any, is the I/O failure already reported.
        if let Some(db) = self.db.take() {
            let _ = db.close();
        }
        self.db = Some(open_db(&self.path, false)?);
        Ok(())
    }

    /// The store's file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The open database, or the error saying it is closed.
    fn db(&self) -> Result<&Database, StoreError> {
        self.db.as_ref().ok_or_else(|| StoreError::Io {
            path: self.path.display().to_string(),
            message: "closed after an I/O error, not reopened yet".into(),
        })
    }

    fn err(&self, e: impl Into<redb::Error>) -> StoreError {
        store_error(&self.path, e)
    }

    /// A value that could not be encoded (cannot happen with these types; not a disk fault).
    fn encode(&self, e: serde_json::Error) -> StoreError {
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
        let tx = self.db()?.begin_read().map_err(|e| self.err(e))?;
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
        let tx = self.db()?.begin_write().map_err(|e| self.err(e))?;
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
                            .map_err(|e| self.encode(e))?;
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
                let bytes = serde_json::to_vec(&alert).map_err(|e| self.encode(e))?;
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
                    .map_err(|e| self.encode(e))?;
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

    /// A 401 of `job_id` at minute `n`.
    fn failure_of(job_id: &str, n: usize) -> String {
        let line = seed_lines()
            .into_iter()
            .find(|l| l.contains("UNAUTHENTICATED"))
            .unwrap();
        let mut e: serde_json::Value = serde_json::from_str(&line).unwrap();
        e["resource"]["labels"]["job_id"] = job_id.into();
        e["insertId"] = format!("{job_id}-{n}").into();
        e["timestamp"] = format!("2026-03-02T02:{n:02}:07Z").into();
        e.to_string()
    }

    #[test]
    fn evicted_and_expired_incidents_are_deleted_from_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let inventory = Inventory::load(&root.join(SEED).join("jobs")).unwrap();
        let rules = IncidentRules {
            max_tracked_jobs: 2,
            pending_expiry: std::time::Duration::from_secs(600),
            ..Default::default()
        };
        let new_pipeline = || {
            let mut p = Pipeline::new(
                rules.clone(),
                1000,
                Correlator::new(Some(inventory.clone()), None),
                Diagnoser::default(),
            );
            p.track_changes();
            p
        };
        let names = |store: &EmbeddedStore| -> Vec<String> {
            let mut n: Vec<String> = store
                .load()
                .unwrap()
                .incidents
                .into_iter()
                .map(|(j, _)| j.job_id)
                .collect();
            n.sort();
            n
        };
        let store = EmbeddedStore::open(dir.path(), 1000).unwrap();
        let mut p = new_pipeline();
        // a, b, then c: over the cap, a (the oldest) goes, in the same commit.
        let lines: Vec<String> = ["a", "b", "c"]
            .iter()
            .enumerate()
            .map(|(n, j)| failure_of(j, n))
            .collect();
        feed(&mut p, &store, &lines);
        assert_eq!(names(&store), ["b", "c"]);
        assert_eq!(p.stats.incidents_evicted, 1);
        // Restarted: b and c only; d 15 minutes later expires both (10 minutes' expiry).
        drop(p);
        let mut p = new_pipeline();
        p.restore(&store.load().unwrap());
        feed(&mut p, &store, &[failure_of("d", 17)]);
        assert_eq!(names(&store), ["d"]);
        assert_eq!(p.stats.incidents_expired, 2);
    }

    #[test]
    fn a_cap_lowered_since_the_state_was_written_trims_it_at_the_first_commit() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path(), 1000).unwrap();
        let mut p = pipeline();
        let lines: Vec<String> = (0..3).map(|n| failure_of(&format!("j{n}"), n)).collect();
        feed(&mut p, &store, &lines);
        assert_eq!(store.load().unwrap().incidents.len(), 3);
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut p = Pipeline::new(
            IncidentRules {
                max_tracked_jobs: 1,
                ..Default::default()
            },
            1000,
            Correlator::new(
                Some(Inventory::load(&root.join(SEED).join("jobs")).unwrap()),
                None,
            ),
            Diagnoser::default(),
        );
        p.restore(&store.load().unwrap());
        p.track_changes();
        store.commit(p.take_changes(Vec::new())).unwrap();
        let state = store.load().unwrap();
        assert_eq!(state.incidents.len(), 1);
        assert_eq!(state.incidents[0].0.job_id, "j2");
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

    /// "No space left on device" (28 on Linux).
    const ENOSPC: i32 = 28;

    #[test]
    fn io_errors_mean_reopen_damage_means_give_up_and_a_held_lock_means_wait() {
        use redb::{DatabaseError, Error as E, StorageError};
        let os = |code| E::Io(std::io::Error::from_raw_os_error(code));
        let cases: Vec<(E, Fault)> = vec![
            (os(ENOSPC), Fault::Reopen),
            (os(5 /* EIO */), Fault::Reopen),
            (os(13 /* EACCES */), Fault::Reopen),
            (E::PreviousIo, Fault::Reopen),
            (E::DatabaseClosed, Fault::Reopen),
            (E::TransactionPoisoned, Fault::Reopen),
            (StorageError::PreviousIo.into(), Fault::Reopen),
            (E::Corrupted("Invalid magic number".into()), Fault::Damaged),
            (
                E::Io(std::io::Error::new(
                    ErrorKind::InvalidData,
                    "not a redb file",
                )),
                Fault::Damaged,
            ),
            (E::UpgradeRequired(2), Fault::Damaged),
            (E::TableIsMultimap("incidents".into()), Fault::Damaged),
            (DatabaseError::DatabaseAlreadyOpen.into(), Fault::Retry),
            (E::WouldBlock, Fault::Retry),
        ];
        for (e, want) in cases {
            assert_eq!(classify(&e), want, "{e}");
        }
        let path = Path::new("/state/schedwatch.redb");
        assert!(store_error(path, E::PreviousIo).needs_reopen());
        assert!(store_error(path, os(ENOSPC)).is_retryable());
        let damaged = store_error(path, E::Corrupted("Invalid magic number".into()));
        assert!(!damaged.is_retryable() && !damaged.needs_reopen());
        assert!(damaged.to_string().contains("move it aside"), "{damaged}");
        let busy = store_error(path, DatabaseError::DatabaseAlreadyOpen);
        assert!(busy.is_retryable() && !busy.needs_reopen());
    }

    #[test]
    fn a_reopened_store_keeps_every_commit_and_takes_more() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = EmbeddedStore::open(dir.path(), 10).unwrap();
        let keys = |keys: Vec<u128>| Changes {
            dedup_keys: keys,
            ..Changes::default()
        };
        store.commit(keys(vec![1, 2])).unwrap();
        store.reopen().unwrap();
        assert_eq!(store.load().unwrap().dedup_keys, vec![1, 2]);
        store.commit(keys(vec![3])).unwrap();
        // Reopened again, and by another process after that: the lock was released each time.
        store.reopen().unwrap();
        drop(store);
        let store = EmbeddedStore::open(dir.path(), 10).unwrap();
        assert_eq!(store.load().unwrap().dedup_keys, vec![1, 2, 3]);
    }

    #[test]
    fn a_file_replaced_by_garbage_or_removed_is_damaged_not_retried() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = EmbeddedStore::open(dir.path(), 10).unwrap();
        let file = dir.path().join(FILE_NAME);
        // Replaced while open (as another program would: a new file renamed over it).
        let garbage = dir.path().join("garbage");
        std::fs::write(&garbage, b"this is not a redb file\n".repeat(1000)).unwrap();
        std::fs::rename(&garbage, &file).unwrap();
        let err = store.reopen().expect_err("garbage is refused");
        assert!(matches!(err, StoreError::Damaged { .. }), "{err:?}");
        assert!(err.to_string().contains(FILE_NAME), "{err}");
        // Closed now: every call says so, and asks for a reopen.
        let closed = store.load().expect_err("closed");
        assert!(closed.needs_reopen(), "{closed:?}");
        assert!(matches!(
            EmbeddedStore::open(dir.path(), 10).err(),
            Some(StoreError::Damaged { .. })
        ));

        std::fs::remove_file(&file).unwrap();
        let gone = store.reopen().expect_err("a missing file is not made anew");
        assert!(matches!(gone, StoreError::Damaged { .. }), "{gone:?}");
        assert!(!file.exists());
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
        let tx = store.db().unwrap().begin_write().unwrap();
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
