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

use std::collections::HashSet;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use schedwatch_sinks::{Alert, SecretRef};
use serde::Deserialize;
use tokio_postgres::types::Json;

use super::{OutboxRow, Retried, Sent, StoreError};
use crate::incidents::Incident;
use crate::JobKey;

/// `[state.postgres]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PostgresConfig {
    /// The connection URL, `postgres://USER@HOST:PORT/DB` (a password in it is allowed but
    /// better kept in `password`); read from env or a file.
    pub url: Option<SecretRef>,
    /// The password, from env or a file.
    pub password: Option<SecretRef>,
    /// Connections per replica, 1 to 100 ([`crate::config::POOL_SIZE`]).
    pub pool_size: usize,
    /// `disable` (a Cloud SQL Auth Proxy or connector on localhost), or `require`: TLS,
    /// verifying the server against the system's roots or `ca_file`.
    pub tls: TlsMode,
    /// A PEM file of the CA to trust for `tls = "require"` (Cloud SQL's server CA).
    pub ca_file: Option<std::path::PathBuf>,
    /// Dedup keys are kept this long: a redelivery later than this counts again. 1 s to 31 days
    /// ([`crate::config::DEDUP_RETENTION`]).
    #[serde(with = "humantime_serde")]
    pub dedup_retention: Duration,
    /// An outbox row leased to a replica is taken over by another this long after the lease's
    /// last renewal (the replica died). 5 s to 1 h ([`crate::config::OUTBOX_LEASE`]).
    #[serde(with = "humantime_serde")]
    pub outbox_lease: Duration,
}

/// TLS to the database.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// Plain TCP.
    #[default]
    Disable,
    /// TLS, the server's certificate verified.
    Require,
}

impl Default for PostgresConfig {
    fn default() -> Self {
        PostgresConfig {
            url: None,
            password: None,
            pool_size: 8,
            tls: TlsMode::Disable,
            ca_file: None,
            dedup_retention: Duration::from_secs(24 * 3600),
            outbox_lease: Duration::from_secs(60),
        }
    }
}

/// The schema, one migration a step, applied in order at start under an advisory lock.
const MIGRATIONS: &[&str] = &[
    // 1: the first schema.
    "CREATE TABLE dedup_keys (
         key bytea PRIMARY KEY,
         seen_at timestamptz NOT NULL DEFAULT now());
     CREATE INDEX dedup_keys_seen_at ON dedup_keys (seen_at);
     CREATE TABLE jobs (
         job text PRIMARY KEY,
         incident jsonb,
         updated_at timestamptz NOT NULL DEFAULT now());
     CREATE TABLE outbox (
         id bigserial PRIMARY KEY,
         alert jsonb NOT NULL,
         created_at timestamptz NOT NULL DEFAULT now(),
         lease_owner text,
         lease_until timestamptz,
         attempts integer NOT NULL DEFAULT 0,
         last_error text,
         failed jsonb,
         done_at timestamptz);
     CREATE INDEX outbox_pending ON outbox (id) WHERE done_at IS NULL;",
    // 2: `attempts` counts tries at receivers; the times a replica took a row over from
    // another, which version 1 counted there (1 + takeovers), move to their own column. The
    // tries of rows version 1 wrote are unknown: at least the takes, which stay.
    "ALTER TABLE outbox ADD COLUMN takeovers integer NOT NULL DEFAULT 0;
     UPDATE outbox SET takeovers = greatest(attempts - 1, 0);",
];

/// The advisory lock migrations run under (any constant; "schedwatch" in ASCII).
const MIGRATION_LOCK: i64 = 0x7363_6865_6477_6174;

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
}

/// A batch's transaction: the keys that are new, the locked jobs' incidents.
pub struct Batch {
    client: deadpool_postgres::Object,
    /// The dedup keys no one recorded before.
    pub fresh: HashSet<u128>,
    /// The locked jobs and their open incidents.
    pub incidents: Vec<(JobKey, Option<Incident>)>,
}

fn db(describe: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Db {
        path: describe.to_owned(),
        message: e.to_string(),
    }
}

/// `e` and its causes, `: `-joined, on one line, with what to change when the cause is a
/// known configuration mistake. tokio-postgres prints only the step that failed ("db error",
/// "error performing TLS handshake") and keeps the reason — the server's message, the
/// certificate problem — in `source()`; deadpool wraps it in words of its own and repeats its
/// cause's text, both dropped here.
fn with_causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let said = c.to_string();
        if !text.ends_with(&said) {
            text.push_str(": ");
            text.push_str(&said);
        }
        cause = c.source();
    }
    let mut text = text
        .trim_start_matches("Error occurred while creating a new object: ")
        .replace('\n', "; ");
    if text.contains("invalid peer certificate") {
        text.push_str(" — [state.postgres] ca_file must hold the CA that signed the server's certificate (Cloud SQL: the instance's server CA), and the URL's host must be a name or address the certificate lists");
    } else if text.contains("no pg_hba.conf entry") && text.contains("no encryption") {
        text.push_str(" — the server accepts only encrypted connections: set [state.postgres] tls = \"require\"");
    }
    text
}

impl PostgresStore {
    /// Connects, and applies the schema's missing migrations under an advisory lock (replicas
    /// starting together apply each once).
    pub async fn connect(
        config: &PostgresConfig,
        owner: String,
    ) -> Result<PostgresStore, StoreError> {
        let url = config
            .url
            .as_ref()
            .ok_or_else(|| {
                db(
                    "postgres",
                    "[state.postgres] needs `url` (from env or a file)",
                )
            })?
            .read()
            .map_err(|e| db("postgres", format!("url: {e}")))?;
        let mut pg: tokio_postgres::Config = url
            .expose()
            .parse()
            .map_err(|e| db("postgres", format!("url is not a PostgreSQL URL: {e}")))?;
        if let Some(p) = &config.password {
            let p = p
                .read()
                .map_err(|e| db("postgres", format!("password: {e}")))?;
            pg.password(p.expose());
        }
        pg.connect_timeout(Duration::from_secs(10));
        let describe = format!(
            "postgres {}/{}",
            pg.get_hosts()
                .iter()
                .map(|h| match h {
                    tokio_postgres::config::Host::Tcp(h) => h.clone(),
                    #[cfg(unix)]
                    tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
                })
                .collect::<Vec<_>>()
                .join(","),
            pg.get_dbname().unwrap_or("")
        );
        let manager_config = ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        };
        let manager = match config.tls {
            TlsMode::Disable => Manager::from_config(pg, tokio_postgres::NoTls, manager_config),
            TlsMode::Require => {
                pg.ssl_mode(tokio_postgres::config::SslMode::Require);
                let tls = tls_config(config.ca_file.as_deref()).map_err(|e| db(&describe, e))?;
                Manager::from_config(
                    pg,
                    tokio_postgres_rustls::MakeRustlsConnect::new(tls),
                    manager_config,
                )
            }
        };
        let pool = Pool::builder(manager)
            .max_size(config.pool_size.max(1))
            .wait_timeout(Some(Duration::from_secs(30)))
            .create_timeout(Some(Duration::from_secs(10)))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .map_err(|e| db(&describe, e))?;
        let store = PostgresStore {
            pool,
            owner,
            lease: config.outbox_lease,
            retention: config.dedup_retention,
            describe,
        };
        store.migrate().await?;
        Ok(store)
    }

    /// How long dedup keys are kept.
    pub fn retention(&self) -> Duration {
        self.retention
    }

    /// How long an outbox lease lasts.
    pub fn lease(&self) -> Duration {
        self.lease
    }

    /// Where the store is, for logs.
    pub fn describe(&self) -> &str {
        &self.describe
    }

    fn err(&self, e: impl std::error::Error + 'static) -> StoreError {
        db(&self.describe, with_causes(&e))
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool.get().await.map_err(|e| self.err(e))
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(|e| self.err(e))?;
        // Held to the end of the transaction: one replica migrates, the others wait and see.
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await
            .map_err(|e| self.err(e))?;
        // (Without the server's notice that the table exists, at every start.)
        tx.batch_execute(
            "SET LOCAL client_min_messages = warning;
             CREATE TABLE IF NOT EXISTS schedwatch_migrations (
                 version integer PRIMARY KEY,
                 applied_at timestamptz NOT NULL DEFAULT now())",
        )
        .await
        .map_err(|e| self.err(e))?;
        let applied: i32 = tx
            .query_one(
                "SELECT coalesce(max(version), 0) FROM schedwatch_migrations",
                &[],
            )
            .await
            .map_err(|e| self.err(e))?
            .get(0);
        if applied as usize > MIGRATIONS.len() {
            return Err(db(&self.describe, format!(
                "the schema is at version {applied}, newer than this schedwatch knows ({}): upgrade schedwatch",
                MIGRATIONS.len()
            )));
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(applied as usize) {
            let version = i as i32 + 1;
            tx.batch_execute(sql).await.map_err(|e| self.err(e))?;
            tx.execute(
                "INSERT INTO schedwatch_migrations (version) VALUES ($1)",
                &[&version],
            )
            .await
            .map_err(|e| self.err(e))?;
            tracing::info!(version, store = %self.describe, "schema migration applied");
        }
        tx.commit().await.map_err(|e| self.err(e))
    }

    /// Opens a batch's transaction: records `keys` (those already recorded are not fresh) and
    /// locks `jobs`' rows, in job order, returning their incidents.
    pub async fn begin(&self, keys: &[u128], jobs: &[JobKey]) -> Result<Batch, StoreError> {
        let client = self.client().await?;
        client
            .batch_execute("BEGIN")
            .await
            .map_err(|e| self.err(e))?;
        let mut batch = Batch {
            client,
            fresh: HashSet::with_capacity(keys.len()),
            incidents: Vec::with_capacity(jobs.len()),
        };
        let result: Result<(), tokio_postgres::Error> = async {
            let bytes: Vec<Vec<u8>> = keys.iter().map(|k| k.to_be_bytes().to_vec()).collect();
            let rows = batch
                .client
                .query(
                    "INSERT INTO dedup_keys (key) SELECT unnest($1::bytea[])
                     ON CONFLICT DO NOTHING RETURNING key",
                    &[&bytes],
                )
                .await?;
            for row in rows {
                let b: &[u8] = row.get(0);
                if let Ok(b) = <[u8; 16]>::try_from(b) {
                    batch.fresh.insert(u128::from_be_bytes(b));
                }
            }
            let mut names: Vec<String> = jobs.iter().map(JobKey::name).collect();
            names.sort();
            names.dedup();
            batch
                .client
                .execute(
                    "INSERT INTO jobs (job) SELECT unnest($1::text[]) ORDER BY 1 ON CONFLICT DO NOTHING",
                    &[&names],
                )
                .await?;
            let rows = batch
                .client
                .query(
                    "SELECT job, incident FROM jobs WHERE job = ANY($1) ORDER BY job FOR UPDATE",
                    &[&names],
                )
                .await?;
            for row in rows {
                let name: String = row.get(0);
                let incident: Option<Json<Incident>> = row.get(1);
                if let Ok(job) = JobKey::from_name(&name) {
                    batch.incidents.push((job, incident.map(|j| j.0)));
                }
            }
            Ok(())
        }
        .await;
        match result {
            Ok(()) => Ok(batch),
            Err(e) => {
                let _ = batch.client.batch_execute("ROLLBACK").await;
                Err(self.err(e))
            }
        }
    }

    /// Writes the batch's changes and commits; the new outbox rows are leased to this replica.
    pub async fn commit(
        &self,
        batch: Batch,
        changes: super::Changes,
    ) -> Result<Vec<OutboxRow>, StoreError> {
        let Batch { client, .. } = batch;
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

    /// Whether a trivial query answers now (readiness while idle).
    pub async fn ping(&self) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .simple_query("SELECT 1")
            .await
            .map_err(|e| self.err(e))?;
        Ok(())
    }
}

/// rustls for the database: `ca_file`, else the system's roots.
fn tls_config(ca_file: Option<&std::path::Path>) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let pem =
                std::fs::read(path).map_err(|e| format!("ca_file {}: {e}", path.display()))?;
            for cert in rustls::pki_types::pem::PemObject::pem_slice_iter(&pem) {
                let cert: rustls::pki_types::CertificateDer =
                    cert.map_err(|e| format!("ca_file {}: {e}", path.display()))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("ca_file {}: {e}", path.display()))?;
            }
        }
        None => {
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
        }
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_documented_connection_strings_parse() {
        // docs/deploy.md: Cloud Run's Cloud SQL connector socket, as key=value words.
        let c: tokio_postgres::Config =
            "host=/cloudsql/acme-ops:europe-west1:schedwatch-db user=schedwatch dbname=schedwatch"
                .parse()
                .unwrap();
        assert!(matches!(
            c.get_hosts(),
            [tokio_postgres::config::Host::Unix(p)] if p.to_str() == Some("/cloudsql/acme-ops:europe-west1:schedwatch-db")
        ));
        let c: tokio_postgres::Config = "postgres://schedwatch@127.0.0.1:5432/schedwatch"
            .parse()
            .unwrap();
        assert_eq!(c.get_dbname(), Some("schedwatch"));
    }
}
