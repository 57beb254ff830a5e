//! Store: the durable state of `run` — open incidents, recent dedup keys, the notification
//! outbox and the record of what was sent.
//!
//! A message's effect (its dedup key, the incident state it changed, the alerts it caused) is
//! committed in one transaction with the rest of its batch; only then are the messages acked.
//! A crash before the commit loses nothing (the messages come back); a crash after it loses
//! nothing either (the effect is on disk, and the redelivered message is a known duplicate).
//!
//! Both stores keep one contract, [`Store`], with one meaning: a batch is begun (the store
//! reads what the batch's jobs need), its changes committed (dedup keys, incident transitions,
//! outbox rows; the caller acks after), deliveries recorded, and upkeep done now and then. The
//! batch processor ([`crate::service`]) never asks which store it has; a new kind of state is
//! added to this contract once.
//!
//! - [`embedded`]: a single file (redb), the default: one replica. The process keeps the state
//!   in memory, read once at start ([`Store::load`]); a batch reads nothing.
//! - [`postgres`]: PostgreSQL, shared by several replicas on one subscription. A batch reads
//!   and locks its jobs' incidents and learns which of its entries are new ([`Store::begin`]).

pub mod embedded;
pub mod postgres;

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use schedwatch_sinks::Alert;
use serde::{Deserialize, Serialize};

use crate::incidents::Incident;
use crate::JobKey;

pub use embedded::EmbeddedStore;
pub use postgres::{PostgresConfig, PostgresStore};

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
    pub postgres: Option<PostgresConfig>,
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

/// The contract between the batch processor and a store. Every call that fails has committed
/// nothing: the batch's messages are not acked, and come back.
///
/// The futures need not be `Send`: the processor awaits them itself, on its own thread.
#[allow(async_fn_in_trait)] // The processor is generic over the store; nothing spawns these.
pub trait Store {
    /// A batch between [`Store::begin`] and [`Store::commit`] (PostgreSQL: its transaction).
    type Batch;

    /// Where the store is, for logs (never a password).
    fn describe(&self) -> String;

    /// How often [`Store::upkeep`] is due; `None`: never.
    fn upkeep_every(&self) -> Option<Duration>;

    /// What the process keeps in memory from the start: the embedded store's open incidents,
    /// recent dedup keys and undelivered alerts; nothing from a shared store, which each batch
    /// reads instead (its undelivered alerts are claimed by [`Store::upkeep`]).
    async fn load(&mut self) -> Result<State, StoreError>;

    /// Begins a batch whose entries have `keys` and `jobs`: reads what they need. `None`
    /// with it: the process's memory holds it (the embedded store).
    async fn begin(
        &self,
        keys: &[u128],
        jobs: &[JobKey],
    ) -> Result<(Self::Batch, Option<BatchState>), StoreError>;

    /// Commits the batch's changes, deliveries recorded since the last commit included;
    /// returns the new outbox rows (ids in commit order). Only now may the caller ack.
    async fn commit(
        &self,
        batch: Self::Batch,
        changes: Changes,
    ) -> Result<Vec<OutboxRow>, StoreError>;

    /// Records deliveries outside a batch: rows every receiver is done with, and failed tries
    /// to be repeated (kept on the row where the store has one). With nothing to record, the
    /// embedded store still writes: its success says the disk works again.
    async fn record(&self, sent: &[Sent], retried: &[Retried]) -> Result<(), StoreError>;

    /// The periodic work of a shared store: renew the leases of `in_flight`, claim alerts a
    /// stopped replica left, apply the incident bounds, expire old dedup keys.
    async fn upkeep(&mut self, work: Upkeep<'_>) -> Result<Upkept, StoreError>;

    /// After a failure: makes the store usable again — closed and opened again when `reopen`
    /// (the error said so: [`StoreError::needs_reopen`]) — and returns the state to rebuild the
    /// process's memory from, or `None` when the process keeps none (the next batch reads the
    /// store again).
    async fn recover(&mut self, reopen: bool) -> Result<Option<State>, StoreError>;
}

/// What a shared store holds for a batch's jobs, read at [`Store::begin`].
#[derive(Debug, Default)]
pub struct BatchState {
    /// The jobs (locked until the commit) and their open incidents.
    pub incidents: Vec<(JobKey, Option<Incident>)>,
    /// The batch's dedup keys no one recorded before: entries with other keys are duplicates.
    pub fresh: HashSet<u128>,
}

/// What [`Store::upkeep`] is given.
#[derive(Debug)]
pub struct Upkeep<'a> {
    /// Outbox rows this process still delivers, or delivered and not yet recorded.
    pub in_flight: &'a [u64],
    /// Pending incidents whose last failure is before this end (`[incidents] pending_expiry`).
    pub expiry_cutoff: Option<chrono::DateTime<chrono::Utc>>,
    /// `[incidents] max_tracked_jobs`.
    pub max_tracked_jobs: usize,
}

/// What [`Store::upkeep`] did.
#[derive(Debug, Default)]
pub struct Upkept {
    /// Undelivered alerts claimed from the outbox (left by a stopped replica), to deliver.
    pub claimed: Vec<OutboxRow>,
    /// Open incidents across the replicas.
    pub open_incidents: Option<u64>,
    /// Pending incidents expired, and incidents dropped over `max_tracked_jobs`, by a sweep.
    pub swept: Option<(u64, u64)>,
    /// Dedup keys past their retention deleted, when that was due.
    pub expired_keys: Option<u64>,
}

/// What went wrong with the store. Every store error means "not committed": the messages are
/// not acked, and come back.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The embedded database could not be opened, read or written.
    #[error("state store {path}: {message}")]
    Db {
        /// The store's file.
        path: String,
        /// What failed.
        message: String,
    },
    /// The disk under the embedded store failed (full, an I/O error): the open database refuses
    /// every call until it is closed and opened again ([`EmbeddedStore::reopen`]).
    #[error("state store {path}: {message}")]
    Io {
        /// The store's file.
        path: String,
        /// What failed.
        message: String,
    },
    /// The embedded store's file is damaged, gone, or not a schedwatch store: trying again
    /// cannot help.
    #[error("state store {path} is unusable: {message}; move it aside to start with an empty state (the open incidents and undelivered alerts in it are lost)")]
    Damaged {
        /// The store's file.
        path: String,
        /// What is wrong with it.
        message: String,
    },
    /// A stored value could not be read back (a newer schedwatch wrote it, or the file is damaged).
    #[error("state store {path}: a stored {what} is unreadable: {message}")]
    Corrupt {
        /// The store's file.
        path: String,
        /// Which kind of record.
        what: &'static str,
        /// The parse error.
        message: String,
    },
    /// The shared database could not be reached, or failed a statement.
    #[error("state store {path}: {message}")]
    Shared {
        /// Where the database is (host and database name).
        path: String,
        /// What failed.
        message: String,
    },
    /// The shared database refused this replica's login (a wrong password, an unknown user):
    /// trying again cannot help until the config or the database's users change.
    #[error("state store {path}: {message}")]
    Refused {
        /// Where the database is (host and database name).
        path: String,
        /// The server's reason.
        message: String,
    },
}

impl StoreError {
    /// Whether trying again later may succeed (a full disk, a lock held by a dying process, a
    /// database that is restarting).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            StoreError::Db { .. } | StoreError::Io { .. } | StoreError::Shared { .. }
        )
    }

    /// Whether the failure is of this process's own state (the embedded file): one that lasts
    /// is for a restart to cure. A shared database's failure is waited out instead: restarting
    /// a replica cannot mend it.
    pub fn is_local(&self) -> bool {
        !matches!(self, StoreError::Shared { .. } | StoreError::Refused { .. })
    }

    /// Whether the store must be closed and opened again before it can work.
    pub fn needs_reopen(&self) -> bool {
        matches!(self, StoreError::Io { .. })
    }
}

/// The changes one batch of messages made, committed together.
#[derive(Debug, Default)]
pub struct Changes {
    /// Incidents changed: the new state, or `None` when the incident ended.
    pub incidents: Vec<(JobKey, Option<Incident>)>,
    /// Dedup keys first seen in the batch.
    pub dedup_keys: Vec<u128>,
    /// Alerts the batch caused, for the outbox.
    pub alerts: Vec<Alert>,
    /// Outbox rows every receiver is done with since the last commit.
    pub sent: Vec<Sent>,
}

impl Changes {
    /// Whether there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.incidents.is_empty()
            && self.dedup_keys.is_empty()
            && self.alerts.is_empty()
            && self.sent.is_empty()
    }
}

/// An outbox row every receiver is done with: delivered, or failed for good at some.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Sent {
    /// The outbox row.
    pub id: u64,
    /// `(receiver, reason)` for each receiver that refused it for good.
    pub failed: Vec<(String, String)>,
    /// The last tries: one per receiver the row went to.
    pub tries: u32,
}

impl Sent {
    /// A row delivered everywhere, its tries already recorded (or none: no route chose it).
    pub fn delivered(id: u64) -> Sent {
        Sent {
            id,
            failed: Vec::new(),
            tries: 0,
        }
    }
}

/// Tries of an outbox row that failed and will be repeated, since they were last recorded
/// (the shared store keeps them on the row, for whoever looks at a stuck alert).
#[derive(Debug, Clone, PartialEq)]
pub struct Retried {
    /// The outbox row.
    pub id: u64,
    /// How many tries failed.
    pub tries: u32,
    /// The last one's `receiver: reason`.
    pub last_error: String,
}

/// An outbox row: an alert waiting for delivery.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OutboxRow {
    /// The row's id, increasing in commit order.
    pub id: u64,
    /// The alert.
    pub alert: Alert,
}

/// What a store holds, read at start.
#[derive(Debug, Default)]
pub struct State {
    /// Open incidents.
    pub incidents: Vec<(JobKey, Incident)>,
    /// Recent dedup keys, oldest first.
    pub dedup_keys: Vec<u128>,
    /// Alerts not yet delivered, in commit order.
    pub outbox: Vec<OutboxRow>,
}
