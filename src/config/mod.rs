//! The config file (TOML): the sections, loading, and the checks every command runs.
//!
//! Every field has a default, so a config names only what it changes; unknown keys are errors
//! (a typo must not silently fall back to a default). Relative paths are relative to the config
//! file's folder. Every file in `config/` is parsed by a test.
//!
//! - this file: [`Config`], [`Loaded`] (read, parse, check) and [`ConfigError`];
//! - [`sections`]: each section's check ([`Section`]), run in the file's order by
//!   [`Loaded::from_str`], and the sections that belong to no stage (`[jobs]`, `[dedup]`,
//!   `[runbook]`);
//! - [`receivers`]: the checks of `[[receivers]]` and `[[routes]]`, and their secrets;
//! - [`start`]: what `run` checks as it starts (receivers built, the inventory loaded), which
//!   `check-config` runs too;
//! - [`limits`]: the range of every duration and size;
//! - [`check`]: errors on the line of what is wrong, and the one range check.
//!
//! A section's type lives with the stage that uses it (`[source]` in [`crate::source`],
//! `[[receivers]]` in [`crate::notify::receiver`], …); its check lives here, so no stage
//! imports the config back.

pub mod check;
pub mod limits;
pub mod receivers;
pub mod sections;
pub mod start;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use limits::*;
pub use sections::{DedupConfig, JobsConfig, RunbookConfig, Section};

use crate::correlate::SchedulerApiConfig;
use crate::incidents::IncidentRules;
use crate::notify::receiver::ReceiverConfig;
use crate::notify::route::RouteConfig;
use crate::source::SourceConfig;
use crate::store::StateConfig;
use check::Check;

/// The whole config file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where log entries come from (`run`).
    pub source: SourceConfig,
    /// The job inventory.
    pub jobs: JobsConfig,
    /// The live Cloud Scheduler API, for jobs the inventory lacks.
    pub scheduler_api: SchedulerApiConfig,
    /// When incidents fire, repeat and resolve.
    pub incidents: IncidentRules,
    /// The duplicate window.
    pub dedup: DedupConfig,
    /// Where alerts link to.
    pub runbook: RunbookConfig,
    /// Where alerts go.
    pub receivers: Vec<ReceiverConfig>,
    /// Which receivers get which alerts; none: every receiver gets every alert.
    pub routes: Vec<RouteConfig>,
    /// The durable state of `run` on a subscription.
    pub state: StateConfig,
    /// The HTTP endpoints of `run`.
    pub server: crate::http::ServerConfig,
    /// How logs look.
    pub log: crate::logging::LogConfig,
}

/// A config error, with the line it is on when known.
#[derive(Debug, thiserror::Error)]
#[error("{file}{}: {message}", line.map(|l| format!(":{l}")).unwrap_or_default())]
pub struct ConfigError {
    /// The config file.
    pub file: String,
    /// 1-based line.
    pub line: Option<usize>,
    /// What is wrong and what to change.
    pub message: String,
}

/// A parsed config with the folder its relative paths start from.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The parsed config.
    pub config: Config,
    /// The config file's folder.
    pub base: PathBuf,
    /// The config file.
    pub file: PathBuf,
    text: String,
}

impl Loaded {
    /// Reads and checks a config file.
    pub fn from_file(path: &Path) -> Result<Loaded, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: file.clone(),
            line: None,
            message: format!("cannot read the config file: {e}"),
        })?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        Loaded::from_str(&text, &file, base)
    }

    /// Parses and checks config text; `base` resolves relative paths.
    pub fn from_str(text: &str, file: &str, base: PathBuf) -> Result<Loaded, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError {
            file: file.to_owned(),
            line: e.span().map(|s| check::line_of(text, s.start)),
            message: e.message().trim().to_owned(),
        })?;
        let loaded = Loaded {
            config,
            base,
            file: PathBuf::from(file),
            text: text.to_owned(),
        };
        loaded.validate()?;
        Ok(loaded)
    }

    /// Where errors about this config point.
    pub fn at(&self) -> Check<'_> {
        Check {
            file: &self.file,
            text: &self.text,
            base: &self.base,
        }
    }

    /// Each section checks itself, in the file's order; the first error wins.
    fn validate(&self) -> Result<(), ConfigError> {
        let (c, at) = (&self.config, &self.at());
        c.source.check(at)?;
        c.jobs.check(at)?;
        c.scheduler_api.check(at)?;
        c.incidents.check(at)?;
        c.dedup.check(at)?;
        c.server.check(at)?;
        c.state.check(at)?;
        c.receivers.check(at)?;
        receivers::check_routes(&c.routes, &c.receivers, at)
    }

    /// Reads every secret the config names (`{ env = … }`, `{ file = … }`), as `run` will,
    /// without printing any value: an unset or empty variable, or a file that cannot be read or
    /// is empty, is an error naming it, the receiver and the line. Returns how many were read.
    pub fn check_secrets(&self) -> Result<usize, ConfigError> {
        let at = self.at();
        let refs = receivers::secret_refs(&self.config);
        for (key, label, secret) in &refs {
            if let Err(e) = secret.read() {
                return Err(at.error_at_key(key, format!("{label}: {e}")));
            }
        }
        Ok(refs.len())
    }

    /// A path from the config, resolved against the config file's folder.
    pub fn resolve(&self, p: &Path) -> PathBuf {
        self.at().resolve(p)
    }
}
