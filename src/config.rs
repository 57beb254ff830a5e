//! The config file (TOML): structs, defaults and validation (`check-config`).
//!
//! Every field has a default, so a config names only what it changes; unknown keys are errors
//! (a typo must not silently fall back to a default). Relative paths are relative to the config
//! file's folder. Every file in `config/` is parsed by a test.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use toml::Spanned;

use crate::correlate::SchedulerApiConfig;
use crate::dedup;
use crate::diagnose::DEFAULT_RUNBOOK;
use crate::incidents::IncidentRules;
use crate::service::StateConfig;
use crate::source::pubsub::PubsubConfig;

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
    pub routes: Vec<crate::notify::route::RouteConfig>,
    /// The durable state of `run` on a subscription.
    pub state: StateConfig,
    /// The HTTP endpoints of `run`.
    pub server: crate::http::ServerConfig,
    /// How logs look.
    pub log: crate::logging::LogConfig,
}

/// `[source]`: a file, a Pub/Sub subscription, or Pub/Sub push requests.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SourceConfig {
    /// A log file to read, start to end (the bundled demo). NDJSON, a JSON array, or Pub/Sub
    /// messages.
    pub path: Option<Spanned<PathBuf>>,
    /// A Pub/Sub subscription, `projects/P/subscriptions/S`, fed by a Cloud Logging sink.
    pub subscription: Option<Spanned<String>>,
    /// `[source.push]`: Pub/Sub pushes to `POST /pubsub/push` instead.
    pub push: Option<Spanned<crate::source::push::PushConfig>>,
    /// Streaming pulls held open at once.
    pub streams: usize,
    /// Messages leased and not yet acked, per stream.
    pub max_outstanding_messages: i64,
    /// Bytes leased and not yet acked, per stream.
    pub max_outstanding_bytes: i64,
    /// How far each lease extension reaches: after a crash, Pub/Sub redelivers the messages
    /// the process held this long after its last extension (10 s to 10 min).
    #[serde(with = "humantime_serde")]
    pub lease_extension: std::time::Duration,
    /// The Pub/Sub endpoint (`PUBSUB_EMULATOR_HOST` wins when set).
    pub endpoint: Option<String>,
}

impl Default for SourceConfig {
    fn default() -> Self {
        let p = PubsubConfig::default();
        SourceConfig {
            path: None,
            subscription: None,
            push: None,
            streams: p.streams,
            max_outstanding_messages: p.max_outstanding_messages,
            max_outstanding_bytes: p.max_outstanding_bytes,
            lease_extension: p.lease_extension,
            endpoint: p.endpoint,
        }
    }
}

impl SourceConfig {
    /// The Pub/Sub settings, when a subscription is configured.
    pub fn pubsub(&self) -> Option<PubsubConfig> {
        Some(PubsubConfig {
            subscription: self.subscription.as_ref()?.get_ref().clone(),
            streams: self.streams,
            max_outstanding_messages: self.max_outstanding_messages,
            max_outstanding_bytes: self.max_outstanding_bytes,
            lease_extension: self.lease_extension,
            endpoint: self.endpoint.clone(),
        })
    }
}

/// Whether `s` is `projects/P/subscriptions/S`.
pub fn is_subscription_name(s: &str) -> bool {
    matches!(s.split('/').collect::<Vec<_>>().as_slice(), ["projects", p, "subscriptions", n] if !p.is_empty() && n.len() >= 3)
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
    /// (16 bytes each, plus the table).
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

/// `[[receivers]]`: a named destination for alerts.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReceiverConfig {
    /// The receiver's name, used in logs.
    pub name: String,
    /// Print alerts on stdout.
    pub stdout: Option<StdoutConfig>,
    /// Append alerts to a file.
    pub file: Option<FileConfig>,
    /// A Slack incoming webhook.
    pub slack: Option<schedwatch_sinks::slack::SlackConfig>,
    /// An HTTP POST of the alert JSON.
    pub webhook: Option<schedwatch_sinks::webhook::WebhookConfig>,
    /// PagerDuty Events API v2.
    pub pagerduty: Option<schedwatch_sinks::pagerduty::PagerDutyConfig>,
    /// Email over SMTP.
    pub email: Option<schedwatch_sinks::email::EmailConfig>,
}

impl ReceiverConfig {
    /// How many kinds the receiver names (exactly one is valid).
    pub fn kinds(&self) -> usize {
        [
            self.stdout.is_some(),
            self.file.is_some(),
            self.slack.is_some(),
            self.webhook.is_some(),
            self.pagerduty.is_some(),
            self.email.is_some(),
        ]
        .iter()
        .filter(|k| **k)
        .count()
    }
}

/// A stdout receiver.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StdoutConfig {
    /// `json` (one CONTRACT section 4 event a line) or `text` (readable, with the fix).
    pub format: Format,
}

/// A file receiver: alerts appended, one a line (NDJSON) or as text.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// The file, created if missing, appended to; relative to the config file.
    pub path: PathBuf,
    /// `json` (default) or `text`.
    #[serde(default)]
    pub format: Format,
}

/// An output format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// One JSON event per line (NDJSON).
    #[default]
    Json,
    /// Readable text with the fix commands.
    Text,
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
    /// Reads and validates a config file.
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

    /// Parses and validates config text; `base` resolves relative paths.
    pub fn from_str(text: &str, file: &str, base: PathBuf) -> Result<Loaded, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError {
            file: file.to_owned(),
            line: e.span().map(|s| line_of(text, s.start)),
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

    fn error_at(&self, span: Option<std::ops::Range<usize>>, message: String) -> ConfigError {
        ConfigError {
            file: self.file.display().to_string(),
            line: span.map(|s| line_of(&self.text, s.start)),
            message,
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let c = &self.config;
        for (what, path) in [
            ("source.path", &c.source.path),
            ("jobs.inventory", &c.jobs.inventory),
        ] {
            if let Some(p) = path {
                let resolved = self.resolve(p.get_ref());
                if !resolved.exists() {
                    return Err(self.error_at(
                        Some(p.span()),
                        format!("{what} = {:?}: no such file or folder ({}); paths are relative to the config file", p.get_ref(), resolved.display()),
                    ));
                }
            }
        }
        if let (Some(_), Some(sub)) = (&c.source.path, &c.source.subscription) {
            return Err(self.error_at(
                Some(sub.span()),
                "[source] has both `path` and `subscription`: keep one".into(),
            ));
        }
        if let Some(push) = &c.source.push {
            if c.source.path.is_some() || c.source.subscription.is_some() {
                return Err(self.error_at(
                    self.find("[source.push]").or(Some(push.span())),
                    "[source.push] is a source of its own: remove `path` and `subscription` from [source] (a push subscription is configured on the Pub/Sub side)".into(),
                ));
            }
            if let Err(e) = push.get_ref().validate() {
                return Err(self.error_at(self.find("[source.push]").or(Some(push.span())), e));
            }
        }
        if let Err(e) = c.server.validate() {
            return Err(self.error_at(self.find("max_connections"), e));
        }
        if let Some(sub) = &c.source.subscription {
            if !is_subscription_name(sub.get_ref()) {
                return Err(self.error_at(
                    Some(sub.span()),
                    format!("source.subscription = {:?} is not projects/PROJECT/subscriptions/SUBSCRIPTION", sub.get_ref()),
                ));
            }
        }
        if c.source.streams == 0
            || c.source.max_outstanding_messages < 1
            || c.source.max_outstanding_bytes < 1
        {
            return Err(self.error_at(
                self.find("streams").or(self.find("max_outstanding")),
                "source.streams and source.max_outstanding_* must be at least 1".into(),
            ));
        }
        if !(10..=600).contains(&c.source.lease_extension.as_secs()) {
            return Err(self.error_at(
                self.find("lease_extension"),
                "source.lease_extension must be between 10s and 10m (Pub/Sub's ack deadline range)"
                    .into(),
            ));
        }
        if c.state.commit_max_messages == 0 || c.state.commit_interval.is_zero() {
            return Err(self.error_at(
                self.find("commit_"),
                "state.commit_interval and state.commit_max_messages must be above 0".into(),
            ));
        }
        if let Some(pg) = &c.state.postgres {
            if pg.url.is_none() {
                return Err(self.error_at(
                    self.find("[state.postgres]"),
                    "[state.postgres] needs `url = { env = \"VAR\" }` or `{ file = \"PATH\" }`: postgres://USER@HOST:PORT/DATABASE".into(),
                ));
            }
            if pg.pool_size == 0 || pg.outbox_lease < Duration::from_secs(5) {
                return Err(self.error_at(
                    self.find("pool_size").or(self.find("outbox_lease")),
                    "state.postgres.pool_size must be at least 1 and outbox_lease at least 5s"
                        .into(),
                ));
            }
        }
        if c.incidents.min_failures == 0 {
            return Err(self.error_at(
                self.find("min_failures"),
                "incidents.min_failures must be at least 1".into(),
            ));
        }
        if c.incidents.repeat_interval.is_zero() {
            return Err(self.error_at(
                self.find("repeat_interval"),
                "incidents.repeat_interval must be longer than 0s, e.g. \"4h\"".into(),
            ));
        }
        // Past ten years nothing is pending any more; ten million jobs are ~4.5 GiB of state.
        let (expiry, cap) = (c.incidents.pending_expiry, c.incidents.max_tracked_jobs);
        if expiry < Duration::from_secs(60) || expiry > Duration::from_secs(3650 * 86400) {
            return Err(self.error_at(
                self.find("pending_expiry"),
                "incidents.pending_expiry must be from 1m to 3650d; longer than your slowest job's period, e.g. \"48h\"".into(),
            ));
        }
        if cap == 0 || cap > 10_000_000 {
            return Err(self.error_at(
                self.find("max_tracked_jobs"),
                "incidents.max_tracked_jobs must be from 1 to 10000000, e.g. 100000".into(),
            ));
        }
        if c.dedup.capacity == 0 {
            return Err(self.error_at(
                self.find("capacity"),
                "dedup.capacity must be at least 1".into(),
            ));
        }
        let known: std::collections::HashSet<&str> =
            c.receivers.iter().map(|r| r.name.as_str()).collect();
        for route in &c.routes {
            if let Some(unknown) = route.receivers.iter().find(|r| !known.contains(r.as_str())) {
                return Err(self.error_at(
                    self.find(&format!("\"{unknown}\"")),
                    format!(
                        "a route names receiver {unknown:?}, which no [[receivers]] entry defines"
                    ),
                ));
            }
            if route.receivers.is_empty() {
                return Err(self.error_at(
                    self.find("[[routes]]"),
                    "a route needs `receivers = [...]`".into(),
                ));
            }
        }
        let mut names = std::collections::HashSet::new();
        for r in &c.receivers {
            if !names.insert(r.name.as_str()) {
                return Err(self.error_at(
                    self.find(&format!("\"{}\"", r.name)),
                    format!("two receivers are named {:?}; names must be unique", r.name),
                ));
            }
            match r.kinds() {
                1 => {}
                0 => {
                    return Err(self.error_at(
                        self.find(&format!("\"{}\"", r.name)),
                        format!(
                            "receiver {:?} has no destination: add one of stdout, file, slack, webhook, pagerduty or email (e.g. `stdout = {{ format = \"text\" }}`)",
                            r.name
                        ),
                    ))
                }
                _ => {
                    return Err(self.error_at(
                        self.find(&format!("\"{}\"", r.name)),
                        format!(
                            "receiver {:?} names more than one destination: make one receiver each",
                            r.name
                        ),
                    ))
                }
            }
        }
        Ok(())
    }

    /// The span of the first line mentioning `needle`, for errors about values that carry no span.
    fn find(&self, needle: &str) -> Option<std::ops::Range<usize>> {
        self.text.find(needle).map(|i| i..i + needle.len())
    }

    /// A path from the config, resolved against the config file's folder.
    pub fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_owned()
        } else {
            self.base.join(p)
        }
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())]
        .bytes()
        .filter(|&b| b == b'\n')
        .count()
        + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Loaded, ConfigError> {
        Loaded::from_str(text, "test.toml", PathBuf::from("."))
    }

    #[test]
    fn defaults_follow_the_contract() {
        let c = parse("").unwrap().config;
        assert_eq!(c.incidents.min_failures, 3);
        assert!(c.incidents.fire_on_confirmed);
        assert_eq!(
            c.incidents.repeat_interval,
            std::time::Duration::from_secs(4 * 3600)
        );
        assert_eq!(
            c.incidents.pending_expiry,
            std::time::Duration::from_secs(48 * 3600)
        );
        assert_eq!(c.incidents.max_tracked_jobs, 100_000);
    }

    #[test]
    fn errors_name_the_line_and_what_to_change() {
        let e = parse("[incidents]\nmin_failures = 3\nrepeat_intervall = \"4h\"\n").unwrap_err();
        assert_eq!(e.line, Some(3), "{e}");
        assert!(e.to_string().contains("repeat_intervall"), "{e}");
        let e = parse("[incidents]\nrepeat_interval = \"four hours\"\n").unwrap_err();
        assert_eq!(e.line, Some(2), "{e}");
        let e = parse("\n[jobs]\ninventory = \"no/such/dir\"\n").unwrap_err();
        assert_eq!(e.line, Some(3), "{e}");
        assert!(e.to_string().contains("relative to the config file"), "{e}");
        let e = parse("[incidents]\nmin_failures = 0\n").unwrap_err();
        assert_eq!(e.line, Some(2), "{e}");
        let e = parse("[incidents]\n\npending_expiry = \"0s\"\n").unwrap_err();
        assert_eq!(e.line, Some(3), "{e}");
        let e = parse("[incidents]\nmax_tracked_jobs = 0\n").unwrap_err();
        assert_eq!(e.line, Some(2), "{e}");
        let e = parse("[[receivers]]\nname = \"a\"\n").unwrap_err();
        assert!(e.to_string().contains("no destination"), "{e}");
    }

    #[test]
    fn deployment_sections_parse_and_their_mistakes_name_the_line() {
        let c = parse("[server]\nlisten = \"0.0.0.0:8080\"\n[log]\nformat = \"json\"\n[source.push]\naudience = \"https://a.example/pubsub/push\"\nservice_account = \"p@x.iam.gserviceaccount.com\"\n")
            .unwrap()
            .config;
        assert_eq!(c.server.listen, Some("0.0.0.0:8080".parse().unwrap()));
        assert_eq!(c.log.format, crate::logging::LogFormat::Json);
        let push = c.source.push.unwrap().into_inner();
        assert_eq!(push.jwks_url, crate::source::push::GOOGLE_JWKS);
        assert!(!push.allow_unauthenticated);

        let e = parse("[server]\nlisten = \"8080\"\n").unwrap_err();
        assert_eq!(e.line, Some(2), "{e}");
        let e = parse("# push\n[source.push]\naudience = \"https://a.example\"\n").unwrap_err();
        assert_eq!(e.line, Some(2), "{e}");
        assert!(e.to_string().contains("service_account"), "{e}");
        let e = parse("[source]\nsubscription = \"projects/p/subscriptions/sub\"\n[source.push]\nallow_unauthenticated = true\n").unwrap_err();
        assert_eq!(e.line, Some(3), "{e}");
        let e = parse("[log]\nformat = \"yaml\"\n").unwrap_err();
        assert_eq!(e.line, Some(2), "{e}");
    }
}
