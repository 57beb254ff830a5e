//! Store: the durable state of `run` — open incidents, recent dedup keys, the notification
//! outbox and the record of what was sent.
//!
//! A message's effect (its dedup key, the incident state it changed, the alerts it caused) is
//! committed in one transaction with the rest of its batch; only then are the messages acked.
//! A crash before the commit loses nothing (the messages come back); a crash after it loses
//! nothing either (the effect is on disk, and the redelivered message is a known duplicate).
//!
//! - [`embedded`]: a single file (redb), the default: one replica.
//! - [`postgres`]: PostgreSQL, shared by several replicas on one subscription.

pub mod embedded;
pub mod postgres;

use schedwatch_sinks::Alert;
use serde::{Deserialize, Serialize};

use crate::incidents::Incident;
use crate::JobKey;

pub use embedded::EmbeddedStore;
pub use postgres::{PostgresConfig, PostgresStore};

/// What went wrong with the store. Every store error means "not committed": the messages are
/// not acked, and come back.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be opened, read or written.
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
}

impl StoreError {
    /// Whether trying again later may succeed (a full disk, a lock held by a dying process).
    pub fn is_retryable(&self) -> bool {
        matches!(self, StoreError::Db { .. } | StoreError::Io { .. })
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
