//! What `run` checks as it starts, beyond each section's own checks, and `check-config` with
//! it, by the same code: every receiver built (a sink refuses a URL, an email address, an empty
//! recipient list) and the job inventory loaded. Each error is on its line.

use std::sync::Arc;

use schedwatch_sinks::Sink;

use super::{ConfigError, Loaded};
use crate::correlate::Inventory;
use crate::notify::receiver::ReceiverConfig;

/// Which receivers [`build_receivers`] builds, and how.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Build {
    /// Every one, secrets read: `run`.
    Run,
    /// Every one whose building has no effect (not a file receiver), secrets read:
    /// `check-config`.
    WithoutEffects,
    /// What can be built without a secret ([`crate::notify::receiver::ReceiverKind::without_secrets`]):
    /// `check-config --no-secrets`.
    WithoutSecrets,
}

/// Builds the configured receivers, reading their secrets now: a missing secret or a value a
/// sink refuses (not a URL, not an email address, no recipient) is a config error at start
/// (exit 2), on the receiver's line, not a failed alert at 3 a.m.
pub fn build_receivers(
    loaded: Option<&Loaded>,
    receivers: &[ReceiverConfig],
    build: Build,
) -> anyhow::Result<Vec<Arc<dyn Sink>>> {
    let mut built = Vec::new();
    for (n, r) in receivers.iter().enumerate() {
        let kind = match build {
            Build::Run => r.kind.clone(),
            Build::WithoutEffects if r.kind.builds_with_effects() => continue,
            Build::WithoutEffects => r.kind.clone(),
            Build::WithoutSecrets => match r.kind.without_secrets() {
                Some(kind) => kind,
                None => continue,
            },
        };
        let name = r.name.clone();
        let sink = ReceiverConfig { name, kind }
            .build()
            .map_err(|e| match loaded {
                Some(l) => {
                    let key = format!("receivers.{n}.{}", r.kind.key());
                    l.at().error_at_key(&key, e.to_string()).into()
                }
                None => e,
            })?;
        built.push(sink);
    }
    Ok(built)
}

impl Loaded {
    /// `[state.postgres]` as the store will use it: the URL parses (when `read_secrets`), the
    /// CA file reads; an error names the key's line and never the URL.
    pub fn check_state_store(&self, read_secrets: bool) -> Result<(), ConfigError> {
        let Some(pg) = &self.config.state.postgres else {
            return Ok(());
        };
        pg.check(read_secrets).map_err(|(key, message)| {
            self.at().error_at_key(
                &format!("state.postgres.{key}"),
                format!("state.postgres.{message}"),
            )
        })
    }

    /// Loads the job inventory as `run` will (every file parsed); an error names the
    /// `inventory` line and the file.
    pub fn check_inventory(&self) -> Result<(), ConfigError> {
        let Some(path) = &self.config.jobs.inventory else {
            return Ok(());
        };
        match Inventory::load(&self.resolve(path.get_ref())) {
            Ok(_) => Ok(()),
            Err(e) => Err(self
                .at()
                .error_at(Some(path.span()), format!("jobs.inventory: {e}"))),
        }
    }
}
