//! Each section's check, and the sections that belong to no stage.
//!
//! A section checks its own keys: paths that must exist, keys that exclude each other, and the
//! [`Limit`] of every duration and size it has, each error on the line of what is wrong. A key
//! added to a section is checked here, next to the section's others, so `check-config` and
//! every command check the same.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use toml::Spanned;

use super::check::Check;
use super::limits::*;
use super::ConfigError;
use crate::correlate::SchedulerApiConfig;
use crate::dedup;
use crate::diagnose::DEFAULT_RUNBOOK;
use crate::http::ServerConfig;
use crate::incidents::IncidentRules;
use crate::source::{is_subscription_name, SourceConfig, SourceKind};
use crate::store::StateConfig;

/// A config section that checks itself against the config text (for the lines of its errors).
pub trait Section {
    /// The section's mistakes, the first one found.
    fn check(&self, at: &Check) -> Result<(), ConfigError>;
}

/// `[jobs]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JobsConfig {
    /// A Job JSON file or a folder of them (`gcloud scheduler jobs list --format=json`).
    pub inventory: Option<Spanned<PathBuf>>,
}

/// `[dedup]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct DedupConfig {
    /// Entries remembered to drop duplicates: at least this many, at most twice as many
    /// (16 bytes each, plus the table); 1,000 to 10,000,000 ([`DEDUP_CAPACITY`]).
    pub capacity: usize,
}

impl Default for DedupConfig {
    fn default() -> Self {
        DedupConfig {
            capacity: dedup::DEFAULT_CAPACITY,
        }
    }
}

/// `[runbook]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RunbookConfig {
    /// Alerts link to `base_url#code`: point it at your copy of `docs/runbook.md`, e.g. on your
    /// Git host or wiki.
    pub base_url: String,
}

impl Default for RunbookConfig {
    fn default() -> Self {
        RunbookConfig {
            base_url: DEFAULT_RUNBOOK.to_owned(),
        }
    }
}

impl Section for SourceConfig {
    fn check(&self, at: &Check) -> Result<(), ConfigError> {
        let written = self.written();
        for kind in written {
            match kind {
                SourceKind::File(path) => at.exists("source.path", path)?,
                SourceKind::Pull(_) | SourceKind::Push(_) => {}
            }
        }
        let push_at = |push: &Spanned<_>| at.find("[source.push]").or(Some(push.span()));
        match written {
            [_, SourceKind::Pull(sub), ..] => {
                return Err(at.error_at(
                    Some(sub.span()),
                    "[source] has both `path` and `subscription`: keep one".into(),
                ))
            }
            [_, SourceKind::Push(push), ..] => {
                return Err(at.error_at(
                    push_at(push),
                    "[source.push] is a source of its own: remove `path` and `subscription` from [source] (a push subscription is configured on the Pub/Sub side)".into(),
                ))
            }
            [SourceKind::Push(push)] => {
                if let Err(e) = push.get_ref().validate() {
                    return Err(at.error_at(push_at(push), e));
                }
            }
            [SourceKind::Pull(sub)] if !is_subscription_name(sub.get_ref()) => {
                return Err(at.error_at(
                    Some(sub.span()),
                    format!(
                        "source.subscription = {:?} is not projects/PROJECT/subscriptions/SUBSCRIPTION",
                        sub.get_ref()
                    ),
                ))
            }
            _ => {}
        }
        at.within("source.streams", self.streams, &STREAMS)?;
        at.within(
            "source.max_outstanding_messages",
            self.max_outstanding_messages,
            &OUTSTANDING_MESSAGES,
        )?;
        at.within(
            "source.max_outstanding_bytes",
            self.max_outstanding_bytes,
            &OUTSTANDING_BYTES,
        )?;
        at.within(
            "source.lease_extension",
            self.lease_extension,
            &LEASE_EXTENSION,
        )
    }
}

impl Section for JobsConfig {
    fn check(&self, at: &Check) -> Result<(), ConfigError> {
        match &self.inventory {
            Some(path) => at.exists("jobs.inventory", path),
            None => Ok(()),
        }
    }
}

impl Section for SchedulerApiConfig {
    fn check(&self, at: &Check) -> Result<(), ConfigError> {
        at.within("scheduler_api.cache_ttl", self.cache_ttl, &CACHE_TTL)?;
        at.within("scheduler_api.error_ttl", self.error_ttl, &ERROR_TTL)?;
        at.within("scheduler_api.timeout", self.timeout, &API_TIMEOUT)
    }
}

impl Section for IncidentRules {
    fn check(&self, at: &Check) -> Result<(), ConfigError> {
        at.within("incidents.min_failures", self.min_failures, &MIN_FAILURES)?;
        at.within(
            "incidents.repeat_interval",
            self.repeat_interval,
            &REPEAT_INTERVAL,
        )?;
        at.within(
            "incidents.pending_expiry",
            self.pending_expiry,
            &PENDING_EXPIRY,
        )?;
        at.within(
            "incidents.max_tracked_jobs",
            self.max_tracked_jobs,
            &MAX_TRACKED_JOBS,
        )
    }
}

impl Section for DedupConfig {
    fn check(&self, at: &Check) -> Result<(), ConfigError> {
        at.within("dedup.capacity", self.capacity, &DEDUP_CAPACITY)
    }
}

impl Section for ServerConfig {
    fn check(&self, at: &Check) -> Result<(), ConfigError> {
        at.within(
            "server.max_connections",
            self.max_connections,
            &MAX_CONNECTIONS,
        )
    }
}

impl Section for StateConfig {
    fn check(&self, at: &Check) -> Result<(), ConfigError> {
        if let Some(pg) = &self.postgres {
            if pg.url.is_none() {
                return Err(at.error_at(
                    at.find("[state.postgres]"),
                    "[state.postgres] needs `url = { env = \"VAR\" }` or `{ file = \"PATH\" }`: postgres://USER@HOST:PORT/DATABASE".into(),
                ));
            }
        }
        at.within(
            "state.unhealthy_after",
            self.unhealthy_after,
            &UNHEALTHY_AFTER,
        )?;
        at.within(
            "state.commit_interval",
            self.commit_interval,
            &COMMIT_INTERVAL,
        )?;
        at.within(
            "state.commit_max_messages",
            self.commit_max_messages,
            &COMMIT_MAX_MESSAGES,
        )?;
        at.within(
            "state.shutdown_timeout",
            self.shutdown_timeout,
            &SHUTDOWN_TIMEOUT,
        )?;
        if let Some(pg) = &self.postgres {
            at.within("state.postgres.pool_size", pg.pool_size, &POOL_SIZE)?;
            at.within(
                "state.postgres.dedup_retention",
                pg.dedup_retention,
                &DEDUP_RETENTION,
            )?;
            at.within(
                "state.postgres.outbox_lease",
                pg.outbox_lease,
                &OUTBOX_LEASE,
            )?;
        }
        Ok(())
    }
}
