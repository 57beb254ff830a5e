//! What the service tracks of the alerts it delivers: outbox rows handed to the receivers'
//! queues and not done yet, rows every receiver is done with (recorded with the next commit),
//! and failed tries to be repeated (recorded on the row where the store keeps one).

use rustc_hash::FxHashMap;
use tokio::sync::mpsc;

use crate::notify::deliver::{Dispatcher, Outcome, Report};
use crate::store::{OutboxRow, Retried, Sent};

/// The alerts in delivery, and what the receivers reported of them.
pub(super) struct InFlight {
    dispatcher: Dispatcher,
    /// What the receivers' queues say they are done with.
    reports: mpsc::UnboundedReceiver<Report>,
    /// Outbox rows handed to the receivers, not done yet.
    pending: FxHashMap<u64, Row>,
    /// Rows every receiver is done with, recorded with the next commit.
    done: Vec<Sent>,
    /// Failed tries to be repeated, recorded on their rows soon.
    retried: FxHashMap<u64, Retried>,
    /// Deliveries a receiver refused for good.
    pub(super) failed_deliveries: u64,
}

/// An outbox row handed to receivers.
struct Row {
    /// How many receivers it went to.
    receivers: u32,
    /// How many of them are not done with it yet.
    left: u32,
    /// `(receiver, reason)` for each that refused it for good.
    failed: Vec<(String, String)>,
}

impl InFlight {
    /// Tracks what `dispatcher` delivers; its queues report to `reports`.
    pub(super) fn new(dispatcher: Dispatcher, reports: mpsc::UnboundedReceiver<Report>) -> Self {
        InFlight {
            dispatcher,
            reports,
            pending: FxHashMap::default(),
            done: Vec::new(),
            retried: FxHashMap::default(),
            failed_deliveries: 0,
        }
    }

    /// Hands committed outbox rows to the queues of the receivers their routes choose.
    pub(super) fn deliver(&mut self, rows: Vec<OutboxRow>) {
        for row in rows {
            // A row already in flight (reloaded after a failed commit) is not sent twice.
            if self.pending.contains_key(&row.id) {
                continue;
            }
            let id = row.id;
            match self.dispatcher.dispatch(row) {
                0 => self.done.push(Sent::delivered(id)),
                queued => {
                    let receivers = queued as u32;
                    self.pending.insert(
                        id,
                        Row {
                            receivers,
                            left: receivers,
                            failed: Vec::new(),
                        },
                    );
                }
            }
        }
    }

    /// Rows reloaded from the store after a failed commit: a commit reported failed may have
    /// reached the disk all the same, so its alerts go out now. Rows in flight or delivered
    /// are not sent again.
    pub(super) fn deliver_reloaded(&mut self, rows: Vec<OutboxRow>) {
        let done: std::collections::HashSet<u64> = self.done.iter().map(|s| s.id).collect();
        self.deliver(
            rows.into_iter()
                .filter(|row| !done.contains(&row.id))
                .collect(),
        );
    }

    /// The next report, waiting for it; `None` once every queue is gone.
    pub(super) async fn next_report(&mut self) -> Option<Report> {
        self.reports.recv().await
    }

    /// Takes every report the receivers have sent so far, without waiting.
    pub(super) fn take_reports(&mut self) {
        while let Ok(r) = self.reports.try_recv() {
            self.report(r);
        }
    }

    /// A receiver tried a row. When every receiver is done with it, it is recorded with the
    /// next commit; a try to be repeated is recorded on the row meanwhile.
    pub(super) fn report(&mut self, r: Report) {
        let Some(row) = self.pending.get_mut(&r.id) else {
            return;
        };
        match r.outcome {
            Outcome::Retrying(reason) => {
                let tries = self.retried.get(&r.id).map_or(0, |p| p.tries) + 1;
                self.retried.insert(
                    r.id,
                    Retried {
                        id: r.id,
                        tries,
                        last_error: format!("{}: {reason}", r.receiver),
                    },
                );
                return;
            }
            Outcome::Delivered => {}
            Outcome::Failed(reason) => {
                self.failed_deliveries += 1;
                row.failed.push((r.receiver, reason));
            }
        }
        row.left -= 1;
        if row.left == 0 {
            let row = self.pending.remove(&r.id).expect("present");
            self.done.push(Sent {
                id: r.id,
                failed: row.failed,
                tries: row.receivers,
            });
        }
    }

    /// Whether deliveries wait to be recorded.
    pub(super) fn has_records(&self) -> bool {
        !self.done.is_empty() || !self.retried.is_empty()
    }

    /// The rows done so far, for the next commit (handed back with [`InFlight::restore`] if
    /// it fails).
    pub(super) fn take_done(&mut self) -> Vec<Sent> {
        std::mem::take(&mut self.done)
    }

    /// The rows done and the failed tries so far, for recording outside a batch.
    pub(super) fn take_records(&mut self) -> (Vec<Sent>, Vec<Retried>) {
        let retried = self.retried.drain().map(|(_, r)| r).collect();
        (self.take_done(), retried)
    }

    /// Records that were not written after all: kept for the next try, as they were (no
    /// report is taken while a record is written).
    pub(super) fn restore(&mut self, done: Vec<Sent>, retried: Vec<Retried>) {
        self.done.extend(done);
        self.retried.extend(retried.into_iter().map(|r| (r.id, r)));
    }

    /// Rows this process still holds: being delivered, or delivered and not yet recorded.
    pub(super) fn held(&self) -> Vec<u64> {
        self.pending
            .keys()
            .copied()
            .chain(self.done.iter().map(|s| s.id))
            .collect()
    }

    /// How many rows are being delivered.
    pub(super) fn pending(&self) -> usize {
        self.pending.len()
    }
}
