//! The shared store for several replicas on one subscription: PostgreSQL (Cloud SQL, AlloyDB).
//!
//! Pub/Sub spreads one job's messages across replicas at random, so a batch's effect is decided
//! inside one transaction, where the database keeps replicas consistent:
//!
//! ```text
//!  BEGIN
//!  INSERT INTO dedup_keys … ON CONFLICT DO NOTHING RETURNING key   -- which entries are new
//!  INSERT INTO jobs … ON CONFLICT DO NOTHING                        -- a row to lock per job
//!  SELECT … FROM jobs WHERE job = ANY(…) ORDER BY job FOR UPDATE    -- the jobs' incidents, locked
//!     (the pipeline runs the new entries against them, in memory)
//!  UPDATE jobs SET incident = …                                     -- the transitions
//!  INSERT INTO outbox … RETURNING id                                -- the alerts, leased to us
//!  COMMIT                                                           -- then the messages are acked
//! ```
//!
//! Two replicas touching one job wait on its row lock, in job order (no deadlock); the second
//! sees the first's committed incident, so an incident fires once however messages are spread.
//! A key inserted by a transaction that rolls back is gone with it: the redelivered message is
//! new again. The outbox is delivered with leases: rows a replica committed are leased to it;
//! a row whose lease ran out (its replica died) is claimed by another with
//! `FOR UPDATE SKIP LOCKED` (counted in `takeovers`). Each try at a receiver is counted in
//! `attempts`, and the last failed one's `receiver: reason` is kept in `last_error`: while a
//! receiver is down, the row says so.
//!
//! [`connect`]: the config, the connection (TLS), the schema's migrations, and the words of
//! its errors.

mod connect;

use std::collections::HashSet;
use std::time::Duration;

use deadpool_postgres::Pool;
use schedwatch_sinks::Alert;
use tokio_postgres::types::Json;

use super::{
    BatchState, Changes, OutboxRow, Retried, Sent, State, Store, StoreError, Upkeep, Upkept,
};
use crate::incidents::Incident;
use crate::JobKey;
use connect::{db, refused_login, with_causes};

pub use connect::PostgresConfig;

/// How often a replica renews its outbox leases, claims rows whose lease ran out, and reads
/// the open-incident count (or a third of the lease, when shorter: a lease is renewed twice
/// before it could run out).
const UPKEEP_INTERVAL: Duration = Duration::from_secs(10);
/// How often expired dedup keys are deleted and the incident bounds applied to the whole table
/// (at most: with a shorter retention, every retention).
const EXPIRE_INTERVAL: Duration = Duration::from_secs(600);
/// How many undelivered rows one upkeep claims: a dead replica's backlog is taken over in
/// steps, and shared with the other replicas.
const CLAIM_LIMIT: i64 = 100;

/// The PostgreSQL store of one replica.
#[derive(Clone)]
pub struct PostgresStore {
    pool: Pool,
    /// This replica's name on the leases it holds.
    owner: String,
    lease: Duration,
    retention: Duration,
    /// Where, for messages (host and database, never the password).
    describe: String,
    /// When expired dedup keys were last deleted.
    last_expiry: std::time::Instant,
}

/// A batch's open transaction, on its own connection.
pub struct Transaction {
    client: deadpool_postgres::Object,
}

impl PostgresStore {
    fn err(&self, e: impl std::error::Error + 'static) -> StoreError {
        let message = with_causes(&e);
        if refused_login(&e) {
            return StoreError::Refused {
                path: self.describe.clone(),
                message,
            };
        }
        db(&self.describe, message)
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool.get().await.map_err(|e| self.err(e))
    }

    /// Opens a batch's transaction: records `keys` (those already recorded are not fresh) and
    /// locks `jobs`' rows, in job order, returning their incidents.
    pub async fn begin(
        &self,
        keys: &[u128],
        jobs: &[JobKey],
    ) -> Result<(Transaction, BatchState), StoreError> {
        let client = self.client().await?;
        client
            .batch_execute("BEGIN")
            .await
            .map_err(|e| self.err(e))?;
        let mut read = BatchState {
            fresh: HashSet::with_capacity(keys.len()),
            incidents: Vec::with_capacity(jobs.len()),
        };
        match Self::read_batch(&client, keys, jobs, &mut read).await {
            Ok(()) => Ok((Transaction { client }, read)),
            Err(e) => {
                let _ = client.batch_execute("ROLLBACK").await;
                Err(self.err(e))
            }
        }
    }

    async fn read_batch(
        client: &tokio_postgres::Client,
        keys: &[u128],
        jobs: &[JobKey],
        read: &mut BatchState,
    ) -> Result<(), tokio_postgres::Error> {
        let bytes: Vec<Vec<u8>> = keys.iter().map(|k| k.to_be_bytes().to_vec()).collect();
        let rows = client
            .query(
                "INSERT INTO dedup_keys (key) SELECT unnest($1::bytea[])
                 ON CONFLICT DO NOTHING RETURNING key",
                &[&bytes],
            )
            .await?;
        for row in rows {
            let b: &[u8] = row.get(0);
            if let Ok(b) = <[u8; 16]>::try_from(b) {
                read.fresh.insert(u128::from_be_bytes(b));
            }
        }
        let mut names: Vec<String> = jobs.iter().map(JobKey::name).collect();
        names.sort();
        names.dedup();
        client
            .execute(
                "INSERT INTO jobs (job) SELECT unnest($1::text[]) ORDER BY 1 ON CONFLICT DO NOTHING",
                &[&names],
            )
            .await?;
        let rows = client
            .query(
                "SELECT job, incident FROM jobs WHERE job = ANY($1) ORDER BY job FOR UPDATE",
                &[&names],
            )
            .await?;
        for row in rows {
            let name: String = row.get(0);
            let incident: Option<Json<Incident>> = row.get(1);
            if let Ok(job) = JobKey::from_name(&name) {
                read.incidents.push((job, incident.map(|j| j.0)));
            }
        }
        Ok(())
    }

    /// Writes the batch's changes and commits; the new outbox rows are leased to this replica.
    pub async fn commit(
        &self,
        batch: Transaction,
        changes: Changes,
    ) -> Result<Vec<OutboxRow>, StoreError> {
        let Transaction { client } = batch;
        let result: Result<Vec<OutboxRow>, tokio_postgres::Error> = async {
            for (job, incident) in &changes.incidents {
                client
                    .execute(
                        "UPDATE jobs SET incident = $2, updated_at = now() WHERE job = $1",
                        &[&job.name(), &incident.as_ref().map(Json)],
                    )
                    .await?;
            }
            let mut rows = Vec::with_capacity(changes.alerts.len());
            let lease = self.lease.as_secs_f64();
            for alert in changes.alerts {
                let row = client
                    .query_one(
                        "INSERT INTO outbox (alert, lease_owner, lease_until)
                         VALUES ($1, $2, clock_timestamp() + make_interval(secs => $3)) RETURNING id",
                        &[&Json(&alert), &self.owner, &lease],
                    )
                    .await?;
                let id: i64 = row.get(0);
                rows.push(OutboxRow {
                    id: id as u64,
                    alert,
                });
            }
            Self::record_sent(&client, &changes.sent).await?;
            client.batch_execute("COMMIT").await?;
            Ok(rows)
        }
        .await;
        match result {
            Ok(rows) => Ok(rows),
            Err(e) => {
                let _ = client.batch_execute("ROLLBACK").await;
                Err(self.err(e))
            }
        }
    }

    async fn record_sent(
        client: &tokio_postgres::Client,
        sent: &[Sent],
    ) -> Result<(), tokio_postgres::Error> {
        // Delivered everywhere (the common case): one statement for all of them.
        let (delivered, tries): (Vec<i64>, Vec<i32>) = sent
            .iter()
            .filter(|s| s.failed.is_empty())
            .map(|s| (s.id as i64, s.tries as i32))
            .unzip();
        if !delivered.is_empty() {
            client
                .execute(
                    "UPDATE outbox o SET done_at = now(), lease_owner = NULL, lease_until = NULL,
                         attempts = o.attempts + d.tries
                     FROM unnest($1::int8[], $2::int4[]) AS d (id, tries) WHERE o.id = d.id",
                    &[&delivered, &tries],
                )
                .await?;
        }
        for s in sent.iter().filter(|s| !s.failed.is_empty()) {
            let failed = Json(
                s.failed
                    .iter()
                    .map(|(receiver, reason)| serde_json::json!({"receiver": receiver, "reason": reason}))
                    .collect::<Vec<_>>(),
            );
            let last_error = s.failed.last().map(|(r, reason)| format!("{r}: {reason}"));
            client
                .execute(
                    "UPDATE outbox SET done_at = now(), failed = $2, last_error = coalesce($3, last_error),
                         lease_owner = NULL, lease_until = NULL, attempts = attempts + $4
                     WHERE id = $1",
                    &[&(s.id as i64), &failed, &last_error, &(s.tries as i32)],
                )
                .await?;
        }
        Ok(())
    }

    /// Records deliveries outside a batch (nothing else to commit): rows done, and failed
    /// tries of rows still being tried.
    pub async fn record_deliveries(
        &self,
        sent: &[Sent],
        retried: &[Retried],
    ) -> Result<(), StoreError> {
        if sent.is_empty() && retried.is_empty() {
            return Ok(());
        }
        let client = self.client().await?;
        if !retried.is_empty() {
            let ids: Vec<i64> = retried.iter().map(|r| r.id as i64).collect();
            let tries: Vec<i32> = retried.iter().map(|r| r.tries as i32).collect();
            let errors: Vec<&str> = retried.iter().map(|r| r.last_error.as_str()).collect();
            client
                .execute(
                    "UPDATE outbox o SET attempts = o.attempts + d.tries, last_error = d.error
                     FROM unnest($1::int8[], $2::int4[], $3::text[]) AS d (id, tries, error)
                     WHERE o.id = d.id",
                    &[&ids, &tries, &errors],
                )
                .await
                .map_err(|e| self.err(e))?;
        }
        Self::record_sent(&client, sent)
            .await
            .map_err(|e| self.err(e))
    }

    /// Renews this replica's leases on `ids` (rows it is still delivering) and claims up to
    /// `limit` rows whose lease ran out or that no one holds: a dead replica's alerts.
    pub async fn claim(&self, ids: &[u64], limit: i64) -> Result<Vec<OutboxRow>, StoreError> {
        let client = self.client().await?;
        let lease = self.lease.as_secs_f64();
        let ids: Vec<i64> = ids.iter().map(|&i| i as i64).collect();
        let renew = client
            .execute(
                "UPDATE outbox SET lease_until = clock_timestamp() + make_interval(secs => $2)
                 WHERE id = ANY($1) AND lease_owner = $3 AND done_at IS NULL",
                &[&ids, &lease, &self.owner],
            )
            .await;
        renew.map_err(|e| self.err(e))?;
        let rows = client
            .query(
                "UPDATE outbox SET lease_owner = $1, lease_until = clock_timestamp() + make_interval(secs => $2),
                     takeovers = takeovers + 1
                 WHERE id IN (SELECT id FROM outbox
                              WHERE done_at IS NULL AND (lease_until IS NULL OR lease_until < clock_timestamp())
                              ORDER BY id LIMIT $3 FOR UPDATE SKIP LOCKED)
                 RETURNING id, alert",
                &[&self.owner, &lease, &limit],
            )
            .await
            .map_err(|e| self.err(e))?;
        let mut out: Vec<OutboxRow> = rows
            .into_iter()
            .map(|row| {
                let id: i64 = row.get(0);
                let alert: Json<Alert> = row.get(1);
                OutboxRow {
                    id: id as u64,
                    alert: alert.0,
                }
            })
            .collect();
        out.sort_by_key(|r| r.id);
        Ok(out)
    }

    /// Drops dedup keys older than the retention; returns how many.
    pub async fn expire_keys(&self) -> Result<u64, StoreError> {
        let client = self.client().await?;
        client
            .execute(
                "DELETE FROM dedup_keys WHERE seen_at < now() - make_interval(secs => $1)",
                &[&self.retention.as_secs_f64()],
            )
            .await
            .map_err(|e| self.err(e))
    }

    /// Applies `[incidents]`' bounds to the whole table, as the pipeline applies them to the
    /// jobs of a batch: ends the unfired incidents whose last failure is before `cutoff`, then
    /// drops the incidents past `cap` with the oldest last failure, unfired ones first. Rows a
    /// batch holds locked are skipped (the next sweep sees them), so this never waits on a
    /// batch nor deadlocks with one. Returns how many expired and how many went over the cap.
    pub async fn sweep_incidents(
        &self,
        cutoff: Option<chrono::DateTime<chrono::Utc>>,
        cap: usize,
    ) -> Result<(u64, u64), StoreError> {
        let client = self.client().await?;
        let expired = match cutoff {
            Some(cutoff) => client
                .execute(
                    "UPDATE jobs SET incident = NULL, updated_at = now()
                     WHERE job IN (SELECT job FROM jobs
                                   WHERE incident IS NOT NULL
                                     AND (incident->>'fired') IS DISTINCT FROM 'true'
                                     AND (incident->>'last_at')::timestamptz < $1::text::timestamptz
                                   FOR UPDATE SKIP LOCKED)",
                    &[&cutoff.to_rfc3339()],
                )
                .await
                .map_err(|e| self.err(e))?,
            None => 0,
        };
        // On this connection: a pool of one must not wait for a second.
        let open: i64 = client
            .query_one("SELECT count(*) FROM jobs WHERE incident IS NOT NULL", &[])
            .await
            .map_err(|e| self.err(e))?
            .get(0);
        let excess = (open as u64).saturating_sub(cap as u64);
        if excess == 0 {
            return Ok((expired, 0));
        }
        let evicted = client
            .execute(
                "UPDATE jobs SET incident = NULL, updated_at = now()
                 WHERE job IN (SELECT job FROM jobs WHERE incident IS NOT NULL
                               ORDER BY (incident->>'fired') = 'true', (incident->>'last_at')::timestamptz
                               LIMIT $1 FOR UPDATE SKIP LOCKED)",
                &[&(excess as i64)],
            )
            .await
            .map_err(|e| self.err(e))?;
        Ok((expired, evicted))
    }

    /// How many incidents are open, across the replicas.
    pub async fn open_incidents(&self) -> Result<u64, StoreError> {
        let client = self.client().await?;
        let row = client
            .query_one("SELECT count(*) FROM jobs WHERE incident IS NOT NULL", &[])
            .await
            .map_err(|e| self.err(e))?;
        Ok(row.get::<_, i64>(0) as u64)
    }
}

/// A batch reads and locks its jobs' rows; the outbox is delivered under leases renewed by
/// [`Store::upkeep`].
impl Store for PostgresStore {
    type Batch = Transaction;

    fn describe(&self) -> String {
        self.describe.clone()
    }

    fn upkeep_every(&self) -> Option<Duration> {
        Some(UPKEEP_INTERVAL.min(self.lease / 3))
    }

    async fn load(&mut self) -> Result<State, StoreError> {
        // Each batch reads its jobs; undelivered alerts are claimed by the first upkeep.
        Ok(State::default())
    }

    async fn begin(
        &self,
        keys: &[u128],
        jobs: &[JobKey],
    ) -> Result<(Transaction, Option<BatchState>), StoreError> {
        let (tx, read) = PostgresStore::begin(self, keys, jobs).await?;
        Ok((tx, Some(read)))
    }

    async fn commit(
        &self,
        tx: Transaction,
        changes: Changes,
    ) -> Result<Vec<OutboxRow>, StoreError> {
        PostgresStore::commit(self, tx, changes).await
    }

    async fn record(&self, sent: &[Sent], retried: &[Retried]) -> Result<(), StoreError> {
        self.record_deliveries(sent, retried).await
    }

    async fn upkeep(&mut self, work: Upkeep<'_>) -> Result<Upkept, StoreError> {
        let rows = self.claim(work.in_flight, CLAIM_LIMIT).await?;
        let mut done = Upkept {
            claimed: rows,
            ..Upkept::default()
        };
        if self.last_expiry.elapsed() > EXPIRE_INTERVAL.min(self.retention) {
            // The pending incidents' bounds too, on the whole table (a batch sees its own jobs
            // only): between sweeps the table may pass the cap by what arrived.
            done.swept = Some(
                self.sweep_incidents(work.expiry_cutoff, work.max_tracked_jobs)
                    .await?,
            );
            done.expired_keys = Some(self.expire_keys().await?);
            self.last_expiry = std::time::Instant::now();
        }
        done.open_incidents = Some(self.open_incidents().await?);
        Ok(done)
    }

    async fn recover(&mut self, _: bool) -> Result<Option<State>, StoreError> {
        // Nothing of a batch outlives it in memory: the next one reads the store again.
        Ok(None)
    }
}
