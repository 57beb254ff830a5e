//! Connecting to PostgreSQL: `[state.postgres]`, TLS, the schema's migrations (applied at
//! start under an advisory lock), and error messages that say what to change.

use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use schedwatch_sinks::SecretRef;
use serde::Deserialize;

use super::PostgresStore;
use crate::store::StoreError;

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

pub(super) fn db(describe: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Shared {
        path: describe.to_owned(),
        message: e.to_string(),
    }
}

/// Whether the server refused the login itself (SQLSTATE class 28: a wrong password, an
/// unknown user), somewhere in `e`'s causes: not a transient failure.
pub(super) fn refused_login(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(e);
    while let Some(c) = cause {
        let code = c
            .downcast_ref::<tokio_postgres::Error>()
            .and_then(|e| e.code());
        if code.is_some_and(|code| code.code().starts_with("28")) {
            return true;
        }
        cause = c.source();
    }
    false
}

/// `e` and its causes, `: `-joined, on one line, with what to change when the cause is a
/// known configuration mistake. tokio-postgres prints only the step that failed ("db error",
/// "error performing TLS handshake") and keeps the reason — the server's message, the
/// certificate problem — in `source()`; deadpool wraps it in words of its own and repeats its
/// cause's text, both dropped here.
pub(super) fn with_causes(e: &(dyn std::error::Error + 'static)) -> String {
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

impl PostgresConfig {
    /// The connection settings from `url` and `password`, both read now; on error, the key it
    /// is about and why (never the URL).
    fn connection(&self) -> Result<tokio_postgres::Config, (&'static str, String)> {
        let url = self
            .url
            .as_ref()
            .ok_or((
                "url",
                "[state.postgres] needs `url` (from env or a file)".to_owned(),
            ))?
            .read()
            .map_err(|e| ("url", format!("url: {e}")))?;
        let mut pg: tokio_postgres::Config = url
            .expose()
            .parse()
            .map_err(|e| ("url", format!("url is not a PostgreSQL URL: {e}")))?;
        if let Some(p) = &self.password {
            let p = p
                .read()
                .map_err(|e| ("password", format!("password: {e}")))?;
            pg.password(p.expose());
        }
        Ok(pg)
    }

    /// What `run` refuses before it starts, checked by `check-config` too: a `url` that is not a
    /// PostgreSQL URL (when `read_secrets`; the value is never quoted, it may hold a password)
    /// and, with `tls = "require"`, a `ca_file` that does not read as PEM certificates. On
    /// error, the key it is about and why.
    pub fn check(&self, read_secrets: bool) -> Result<(), (&'static str, String)> {
        if read_secrets && self.url.is_some() {
            self.connection()?;
        }
        if self.tls == TlsMode::Require && self.ca_file.is_some() {
            tls_config(self.ca_file.as_deref()).map_err(|e| ("ca_file", e))?;
        }
        Ok(())
    }
}

impl PostgresStore {
    /// Connects, and applies the schema's missing migrations under an advisory lock (replicas
    /// starting together apply each once).
    pub async fn connect(
        config: &PostgresConfig,
        owner: String,
    ) -> Result<PostgresStore, StoreError> {
        let mut pg = config
            .connection()
            .map_err(|(_, message)| db("postgres", message))?;
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
            last_expiry: std::time::Instant::now(),
        };
        store.migrate().await?;
        Ok(store)
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
            if roots.is_empty() {
                return Err(format!(
                    "ca_file {}: no PEM certificate in it (-----BEGIN CERTIFICATE-----)",
                    path.display()
                ));
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
