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

use super::{
    BatchState, Changes, OutboxRow, Retried, Sent, State, Store, StoreError, Upkeep, Upkept,
};
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

            dedup_seq = self.write_dedup_keys(&tx, &changes.dedup_keys, dedup_seq)?;

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

            self.record_sent(&tx, &mut outbox, &changes.sent)?;
        }
        tx.commit().map_err(|e| self.err(e))?;
        Ok(rows)
    }

    /// Adds a batch's dedup keys (new ones only) and drops the oldest past the capacity;
    /// returns the next sequence number.
    fn write_dedup_keys(
        &self,
        tx: &redb::WriteTransaction,
        keys: &[u128],
        mut dedup_seq: u64,
    ) -> Result<u64, StoreError> {
        let mut dedup = tx.open_table(DEDUP).map_err(|e| self.err(e))?;
        let mut order = tx.open_table(DEDUP_ORDER).map_err(|e| self.err(e))?;
        for &key in keys {
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
        Ok(dedup_seq)
    }

    /// Moves the finished outbox rows to the `sent` table (the alert as stored, with the
    /// refusals), keeping the last [`SENT_KEPT`].
    fn record_sent(
        &self,
        tx: &redb::WriteTransaction,
        outbox: &mut redb::Table<'_, u64, &[u8]>,
        sent_rows: &[Sent],
    ) -> Result<(), StoreError> {
        let mut sent = tx.open_table(SENT).map_err(|e| self.err(e))?;
        let now = chrono::Utc::now().to_rfc3339();
        for done in sent_rows {
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
        Ok(())
    }
}

/// The process keeps the state in memory, read at start; every commit is one local fsync. The
/// commit is synchronous: the processor awaits it on its own thread, which it may block.
impl Store for EmbeddedStore {
    type Batch = ();

    fn describe(&self) -> String {
        self.path.display().to_string()
    }

    fn upkeep_every(&self) -> Option<std::time::Duration> {
        // Dedup keys and incidents are bounded at each commit; no outbox leases.
        None
    }

    async fn load(&mut self) -> Result<State, StoreError> {
        EmbeddedStore::load(self)
    }

    async fn begin(
        &self,
        _: &[u128],
        _: &[JobKey],
    ) -> Result<((), Option<BatchState>), StoreError> {
        Ok(((), None))
    }

    async fn commit(&self, _: (), changes: Changes) -> Result<Vec<OutboxRow>, StoreError> {
        EmbeddedStore::commit(self, changes)
    }

    async fn record(&self, sent: &[Sent], retried: &[Retried]) -> Result<(), StoreError> {
        // Failed tries are not kept on a row here, only what every receiver is done with: a
        // record of tries alone writes nothing.
        if sent.is_empty() && !retried.is_empty() {
            return Ok(());
        }
        let changes = Changes {
            sent: sent.to_vec(),
            ..Changes::default()
        };
        EmbeddedStore::commit(self, changes).map(drop)
    }

    async fn upkeep(&mut self, _: Upkeep<'_>) -> Result<Upkept, StoreError> {
        Ok(Upkept::default())
    }

    async fn recover(&mut self, reopen: bool) -> Result<Option<State>, StoreError> {
        if reopen {
            self.reopen()?;
            tracing::info!(store = %self.path.display(), "state store reopened");
        }
        EmbeddedStore::load(self).map(Some)
    }
}

#[cfg(test)]
mod tests;
