//! The config file (TOML): structs, defaults and validation (`check-config`).
//!
//! Every field has a default, so a config names only what it changes; unknown keys are errors
//! (a typo must not silently fall back to a default). Relative paths are relative to the config
//! file's folder. Every file in `config/` is parsed by a test.

use std::path::{Path, PathBuf};
use std::time::Duration;

use schedwatch_sinks::SecretRef;
use serde::{Deserialize, Serialize};
use toml::Spanned;

use crate::correlate::SchedulerApiConfig;
use crate::dedup;
use crate::diagnose::DEFAULT_RUNBOOK;
use crate::incidents::IncidentRules;
use crate::source::pubsub::PubsubConfig;
use crate::store::StateConfig;

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
    /// Streaming pulls held open at once, 1 to 16 ([`STREAMS`]).
    pub streams: usize,
    /// Messages leased and not yet acked, per stream, 1 to 100,000 ([`OUTSTANDING_MESSAGES`]).
    pub max_outstanding_messages: i64,
    /// Bytes leased and not yet acked, per stream, 1 MiB to 1 GiB ([`OUTSTANDING_BYTES`]).
    pub max_outstanding_bytes: i64,
    /// How far each lease extension reaches: after a crash, Pub/Sub redelivers the messages
    /// the process held this long after its last extension (10 s to 10 min,
    /// [`LEASE_EXTENSION`]).
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
        if let Some(sub) = &c.source.subscription {
            if !is_subscription_name(sub.get_ref()) {
                return Err(self.error_at(
                    Some(sub.span()),
                    format!("source.subscription = {:?} is not projects/PROJECT/subscriptions/SUBSCRIPTION", sub.get_ref()),
                ));
            }
        }
        if let Some(pg) = &c.state.postgres {
            if pg.url.is_none() {
                return Err(self.error_at(
                    self.find("[state.postgres]"),
                    "[state.postgres] needs `url = { env = \"VAR\" }` or `{ file = \"PATH\" }`: postgres://USER@HOST:PORT/DATABASE".into(),
                ));
            }
        }
        self.check_ranges()?;
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

    /// Every duration and size against its [`Limit`]: one table, so a key added to a section
    /// is added here with its range, and `check-config` and every command check the same.
    fn check_ranges(&self) -> Result<(), ConfigError> {
        let c = &self.config;
        let s = &c.source;
        self.within("source.streams", s.streams, &STREAMS)?;
        self.within(
            "source.max_outstanding_messages",
            s.max_outstanding_messages,
            &OUTSTANDING_MESSAGES,
        )?;
        self.within(
            "source.max_outstanding_bytes",
            s.max_outstanding_bytes,
            &OUTSTANDING_BYTES,
        )?;
        self.within(
            "source.lease_extension",
            s.lease_extension,
            &LEASE_EXTENSION,
        )?;
        let api = &c.scheduler_api;
        self.within("scheduler_api.cache_ttl", api.cache_ttl, &CACHE_TTL)?;
        self.within("scheduler_api.error_ttl", api.error_ttl, &ERROR_TTL)?;
        self.within("scheduler_api.timeout", api.timeout, &API_TIMEOUT)?;
        let rules = &c.incidents;
        self.within("incidents.min_failures", rules.min_failures, &MIN_FAILURES)?;
        self.within(
            "incidents.repeat_interval",
            rules.repeat_interval,
            &REPEAT_INTERVAL,
        )?;
        self.within(
            "incidents.pending_expiry",
            rules.pending_expiry,
            &PENDING_EXPIRY,
        )?;
        self.within(
            "incidents.max_tracked_jobs",
            rules.max_tracked_jobs,
            &MAX_TRACKED_JOBS,
        )?;
        self.within("dedup.capacity", c.dedup.capacity, &DEDUP_CAPACITY)?;
        self.within(
            "server.max_connections",
            c.server.max_connections,
            &MAX_CONNECTIONS,
        )?;
        let state = &c.state;
        self.within(
            "state.unhealthy_after",
            state.unhealthy_after,
            &UNHEALTHY_AFTER,
        )?;
        self.within(
            "state.commit_interval",
            state.commit_interval,
            &COMMIT_INTERVAL,
        )?;
        self.within(
            "state.commit_max_messages",
            state.commit_max_messages,
            &COMMIT_MAX_MESSAGES,
        )?;
        self.within(
            "state.shutdown_timeout",
            state.shutdown_timeout,
            &SHUTDOWN_TIMEOUT,
        )?;
        if let Some(pg) = &state.postgres {
            self.within("state.postgres.pool_size", pg.pool_size, &POOL_SIZE)?;
            self.within(
                "state.postgres.dedup_retention",
                pg.dedup_retention,
                &DEDUP_RETENTION,
            )?;
            self.within(
                "state.postgres.outbox_lease",
                pg.outbox_lease,
                &OUTBOX_LEASE,
            )?;
        }
        for (n, r) in c.receivers.iter().enumerate() {
            let timeouts = [
                ("slack", r.slack.as_ref().map(|k| k.timeout)),
                ("webhook", r.webhook.as_ref().map(|k| k.timeout)),
                ("pagerduty", r.pagerduty.as_ref().map(|k| k.timeout)),
                ("email", r.email.as_ref().map(|k| k.timeout)),
            ];
            for (kind, timeout) in timeouts {
                if let Some(t) = timeout {
                    self.within(
                        &format!("receivers.{n}.{kind}.timeout"),
                        t,
                        &RECEIVER_TIMEOUT,
                    )?;
                }
            }
        }
        for (n, route) in c.routes.iter().enumerate() {
            if let Some(every) = route.repeat_interval {
                self.within(
                    &format!("routes.{n}.repeat_interval"),
                    every,
                    &REPEAT_INTERVAL,
                )?;
            }
        }
        Ok(())
    }

    /// The one range check: `value`, set at `key` (a dotted path, numbers index arrays of
    /// tables), must be within `limit`; else an error on the key's line that quotes the value
    /// as written and gives the range and why.
    fn within<T: Bounded>(&self, key: &str, value: T, limit: &Limit<T>) -> Result<(), ConfigError> {
        if limit.min <= value && value <= limit.max {
            return Ok(());
        }
        let located = self.locate(key);
        let written = match located.as_ref().and_then(|(_, v)| v.clone()) {
            Some(v) => self.text[v].to_owned(),
            None => value.spelt(),
        };
        let span = located.map(|(k, _)| k);
        Err(self.error_at(
            span,
            format!(
                "{} = {written}: must be from {} to {} ({})",
                display_key(key),
                limit.min.spelt(),
                limit.max.spelt(),
                limit.why
            ),
        ))
    }

    /// Where the key at `path` is written: its span, and its value's when the whole path is
    /// written; else the span of the deepest part that is (a table whose key takes its
    /// default).
    fn locate(
        &self,
        path: &str,
    ) -> Option<(std::ops::Range<usize>, Option<std::ops::Range<usize>>)> {
        use toml::de::{DeTable, DeValue};
        let doc = DeTable::parse(&self.text).ok()?;
        let mut parts = path.split('.');
        let (key, mut at) = doc.get_ref().get_key_value(parts.next()?)?;
        let mut key_span = key.span();
        for part in parts {
            let next = match at.get_ref() {
                DeValue::Table(t) => t.get_key_value(part).map(|(k, v)| (k.span(), v)),
                DeValue::Array(a) => part
                    .parse::<usize>()
                    .ok()
                    .and_then(|i| a.get(i))
                    .map(|v| (v.span(), v)),
                _ => None,
            };
            let Some((span, value)) = next else {
                return Some((key_span, None));
            };
            (key_span, at) = (span, value);
        }
        Some((key_span, Some(at.span())))
    }

    /// Reads every secret the config names (`{ env = … }`, `{ file = … }`), as `run` will,
    /// without printing any value: an unset or empty variable, or a file that cannot be read or
    /// is empty, is an error naming it, the receiver and the line. Returns how many were read.
    pub fn check_secrets(&self) -> Result<usize, ConfigError> {
        let refs = self.secret_refs();
        for (key, label, secret) in &refs {
            if let Err(e) = secret.read() {
                return Err(
                    self.error_at(self.locate(key).map(|(k, _)| k), format!("{label}: {e}"))
                );
            }
        }
        Ok(refs.len())
    }

    /// Every secret reference: its key's path, how an error names it (with the receiver) and
    /// where it is read from.
    fn secret_refs(&self) -> Vec<(String, String, &SecretRef)> {
        let c = &self.config;
        let mut out = Vec::new();
        if let Some(pg) = &c.state.postgres {
            for (field, r) in [("url", &pg.url), ("password", &pg.password)] {
                if let Some(r) = r {
                    let key = format!("state.postgres.{field}");
                    out.push((key.clone(), key, r));
                }
            }
        }
        for (n, r) in c.receivers.iter().enumerate() {
            let name = &r.name;
            let mut add = |key: String, secret| {
                let label = format!("receiver {name:?}: {key}");
                out.push((format!("receivers.{n}.{key}"), label, secret));
            };
            if let Some(k) = &r.slack {
                add("slack.webhook_url".into(), &k.webhook_url);
            }
            if let Some(k) = &r.webhook {
                add("webhook.url".into(), &k.url);
                if let Some(s) = &k.signing_secret {
                    add("webhook.signing_secret".into(), s);
                }
                for (header, s) in &k.secret_headers {
                    add(format!("webhook.secret_headers.{header}"), s);
                }
            }
            if let Some(k) = &r.pagerduty {
                add("pagerduty.routing_key".into(), &k.routing_key);
            }
            if let Some(k) = &r.email {
                if let Some(schedwatch_sinks::email::Username::Secret(s)) = &k.username {
                    add("email.username".into(), s);
                }
                if let Some(s) = &k.password {
                    add("email.password".into(), s);
                }
            }
        }
        out
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

/// `receivers.0.slack.timeout` as a user reads it: `receivers[0].slack.timeout`.
fn display_key(path: &str) -> String {
    let mut out = String::new();
    for part in path.split('.') {
        if part.parse::<usize>().is_ok() {
            out.push_str(&format!("[{part}]"));
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(part);
        }
    }
    out
}

// ---- The range of every duration and size ----
//
// Each key a user may set to a length of time or an amount has a range, checked when any
// command loads the config: a value outside it is a config error on its line, never a panic,
// an allocation abort or an arithmetic overflow hours later. The ranges are wide enough for any
// deployment we can think of; the ends say why. Documented in each field's doc comment,
// config/full.toml and the README's configuration reference.

/// The values a key accepts, both ends included, and why those ends.
#[derive(Debug, Clone, Copy)]
pub struct Limit<T> {
    /// The smallest value accepted.
    pub min: T,
    /// The largest value accepted.
    pub max: T,
    /// Why those ends (shown in the error).
    pub why: &'static str,
}

/// A value a [`Limit`] bounds, spelt as a config writes it.
pub trait Bounded: PartialOrd + Copy {
    /// `"30days"`, `500000`.
    fn spelt(self) -> String;
}

impl Bounded for Duration {
    fn spelt(self) -> String {
        format!("\"{}\"", humantime::format_duration(self))
    }
}

macro_rules! bounded_numbers {
    ($($t:ty),*) => {$(
        impl Bounded for $t {
            fn spelt(self) -> String {
                self.to_string()
            }
        }
    )*};
}
bounded_numbers!(usize, u32, i64);

const SECOND: u64 = 1;
const MINUTE: u64 = 60 * SECOND;
const HOUR: u64 = 60 * MINUTE;
const DAY: u64 = 24 * HOUR;
const MIB: i64 = 1024 * 1024;

const fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// `[source] streams`.
pub const STREAMS: Limit<usize> = Limit {
    min: 1,
    max: 16,
    why:
        "each is a streaming pull and a task; one stream carries far more than one process decodes",
};

/// `[source] max_outstanding_messages`, per stream.
pub const OUTSTANDING_MESSAGES: Limit<i64> = Limit {
    min: 1,
    max: 100_000,
    why: "leased messages wait in memory and are redelivered after a crash; with streams it sizes the processor's queue",
};

/// `[source] max_outstanding_bytes`, per stream.
pub const OUTSTANDING_BYTES: Limit<i64> = Limit {
    min: MIB,
    max: 1024 * MIB,
    why: "at least one entry of the largest size read (1 MiB); leased bytes are held in memory",
};

/// `[source] lease_extension`.
pub const LEASE_EXTENSION: Limit<Duration> = Limit {
    min: secs(10 * SECOND),
    max: secs(10 * MINUTE),
    why: "Pub/Sub's ack deadline range",
};

/// `[scheduler_api] cache_ttl`.
pub const CACHE_TTL: Limit<Duration> = Limit {
    min: secs(10 * SECOND),
    max: secs(DAY),
    why: "shorter costs a call for nearly every failure of a job; a config older than a day may describe a job since fixed",
};

/// `[scheduler_api] error_ttl`.
pub const ERROR_TTL: Limit<Duration> = Limit {
    min: secs(SECOND),
    max: secs(HOUR),
    why: "shorter retries a refused look-up for nearly every entry; longer hides a granted role for hours",
};

/// `[scheduler_api] timeout`.
pub const API_TIMEOUT: Limit<Duration> = Limit {
    min: secs(SECOND),
    max: secs(MINUTE),
    why: "a look-up holds the entries behind it: past a minute the API is down, not slow",
};

/// `[incidents] min_failures`.
pub const MIN_FAILURES: Limit<u32> = Limit {
    min: 1,
    max: 10_000,
    why: "a job retrying every 10 seconds fails about 8,600 times a day: more would never fire",
};

/// `[incidents] repeat_interval`, and a route's.
pub const REPEAT_INTERVAL: Limit<Duration> = Limit {
    min: secs(MINUTE),
    max: secs(30 * DAY),
    why: "a job runs at most once a minute, so shorter notifies at nearly every failure; a reminder a month later reminds nobody",
};

/// `[incidents] pending_expiry`.
pub const PENDING_EXPIRY: Limit<Duration> = Limit {
    min: secs(MINUTE),
    max: secs(3650 * DAY),
    why: "longer than the slowest job's period, or its repeated failures never add up; past ten years nothing is pending any more",
};

/// `[incidents] max_tracked_jobs`.
pub const MAX_TRACKED_JOBS: Limit<usize> = Limit {
    min: 1,
    max: 10_000_000,
    why: "each open incident is held in memory; ten million are about 4.5 GiB",
};

/// `[server] max_connections`.
pub const MAX_CONNECTIONS: Limit<usize> = Limit {
    min: 1,
    max: 65_536,
    why: "each connection holds up to 40 KiB before its token is checked: past 64 Ki the bound no longer bounds the memory (2.5 GiB)",
};

/// `[state] unhealthy_after`.
pub const UNHEALTHY_AFTER: Limit<Duration> = Limit {
    min: secs(10 * SECOND),
    max: secs(DAY),
    why: "shorter restarts the process for a blip the store reopens from by itself; longer leaves a stuck process serving nothing",
};

/// `[dedup] capacity`.
pub const DEDUP_CAPACITY: Limit<usize> = Limit {
    min: 1_000,
    max: 10_000_000,
    why: "fewer forget a redelivery within seconds on a busy feed; two generations of 10 million keys take about 300 MiB, allocated at start",
};

/// `[state] commit_interval`.
pub const COMMIT_INTERVAL: Limit<Duration> = Limit {
    min: Duration::from_millis(1),
    max: secs(MINUTE),
    why: "each commit is an fsync; longer delays every alert and ack by as much",
};

/// `[state] commit_max_messages`.
pub const COMMIT_MAX_MESSAGES: Limit<usize> = Limit {
    min: 1,
    max: 100_000,
    why: "a batch is held in memory until it commits; more than streams × max_outstanding_messages never gathers",
};

/// `[state] shutdown_timeout`.
pub const SHUTDOWN_TIMEOUT: Limit<Duration> = Limit {
    min: secs(SECOND),
    max: secs(10 * MINUTE),
    why: "Cloud Run gives 10s and Kubernetes 30s by default; unacked messages come back after their lease anyway",
};

/// `[state.postgres] pool_size`.
pub const POOL_SIZE: Limit<usize> = Limit {
    min: 1,
    max: 100,
    why: "PostgreSQL allows 100 connections by default, shared by every replica",
};

/// `[state.postgres] dedup_retention`.
pub const DEDUP_RETENTION: Limit<Duration> = Limit {
    min: secs(SECOND),
    max: secs(31 * DAY),
    why: "Pub/Sub keeps a message at most 31 days, so no redelivery comes later",
};

/// `[state.postgres] outbox_lease`.
pub const OUTBOX_LEASE: Limit<Duration> = Limit {
    min: secs(5 * SECOND),
    max: secs(HOUR),
    why: "renewed every lease/3, so shorter is taken over from a live replica under load; longer delays a dead replica's alerts",
};

/// A receiver's `timeout` (Slack, webhook, PagerDuty, email).
pub const RECEIVER_TIMEOUT: Limit<Duration> = Limit {
    min: secs(SECOND),
    max: secs(5 * MINUTE),
    why:
        "a receiver's round trip takes a fraction of a second; past 5m a retry later beats waiting",
};

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

    /// Each key's range, at both ends: the end itself is accepted, one step past it is an error
    /// on the key's line that names the key and the range. Each section's defaults pass.
    #[test]
    fn every_range_is_checked_at_both_ends_with_the_line() {
        let durations = |l: &Limit<Duration>| {
            let ms = |d: Duration| format!("\"{}ms\"", d.as_millis());
            let step = Duration::from_millis(1);
            [
                (ms(l.min), true),
                (ms(l.min - step), false),
                (ms(l.max), true),
                (ms(l.max + step), false),
            ]
        };
        let numbers = |min: i128, max: i128| {
            [
                (min.to_string(), true),
                ((min - 1).to_string(), false),
                (max.to_string(), true),
                ((max + 1).to_string(), false),
            ]
        };
        let receiver = |kind: &str, fields: &str| {
            format!("[[receivers]]\nname = \"r\"\n[receivers.{kind}]\n{fields}\n")
        };
        let email =
            "host = \"smtp.example.com\"\nfrom = \"a@example.com\"\nto = [\"b@example.com\"]";
        let cases = [
            (
                "[source]\n".to_owned(),
                "streams",
                numbers(STREAMS.min as i128, STREAMS.max as i128),
            ),
            (
                "[source]\n".to_owned(),
                "max_outstanding_messages",
                numbers(
                    OUTSTANDING_MESSAGES.min.into(),
                    OUTSTANDING_MESSAGES.max.into(),
                ),
            ),
            (
                "[source]\n".to_owned(),
                "max_outstanding_bytes",
                numbers(OUTSTANDING_BYTES.min.into(), OUTSTANDING_BYTES.max.into()),
            ),
            (
                "[source]\n".to_owned(),
                "lease_extension",
                durations(&LEASE_EXTENSION),
            ),
            (
                "[scheduler_api]\n".to_owned(),
                "cache_ttl",
                durations(&CACHE_TTL),
            ),
            (
                "[scheduler_api]\n".to_owned(),
                "error_ttl",
                durations(&ERROR_TTL),
            ),
            (
                "[scheduler_api]\n".to_owned(),
                "timeout",
                durations(&API_TIMEOUT),
            ),
            (
                "[incidents]\n".to_owned(),
                "min_failures",
                numbers(MIN_FAILURES.min.into(), MIN_FAILURES.max.into()),
            ),
            (
                "[incidents]\n".to_owned(),
                "repeat_interval",
                durations(&REPEAT_INTERVAL),
            ),
            (
                "[incidents]\n".to_owned(),
                "pending_expiry",
                durations(&PENDING_EXPIRY),
            ),
            (
                "[incidents]\n".to_owned(),
                "max_tracked_jobs",
                numbers(MAX_TRACKED_JOBS.min as i128, MAX_TRACKED_JOBS.max as i128),
            ),
            (
                "[server]\n".to_owned(),
                "max_connections",
                numbers(MAX_CONNECTIONS.min as i128, MAX_CONNECTIONS.max as i128),
            ),
            (
                "[state]\n".to_owned(),
                "unhealthy_after",
                durations(&UNHEALTHY_AFTER),
            ),
            (
                "[dedup]\n".to_owned(),
                "capacity",
                numbers(DEDUP_CAPACITY.min as i128, DEDUP_CAPACITY.max as i128),
            ),
            (
                "[state]\n".to_owned(),
                "commit_interval",
                durations(&COMMIT_INTERVAL),
            ),
            (
                "[state]\n".to_owned(),
                "commit_max_messages",
                numbers(
                    COMMIT_MAX_MESSAGES.min as i128,
                    COMMIT_MAX_MESSAGES.max as i128,
                ),
            ),
            (
                "[state]\n".to_owned(),
                "shutdown_timeout",
                durations(&SHUTDOWN_TIMEOUT),
            ),
            (
                "[state.postgres]\nurl = { env = \"DB\" }\n".to_owned(),
                "pool_size",
                numbers(POOL_SIZE.min as i128, POOL_SIZE.max as i128),
            ),
            (
                "[state.postgres]\nurl = { env = \"DB\" }\n".to_owned(),
                "dedup_retention",
                durations(&DEDUP_RETENTION),
            ),
            (
                "[state.postgres]\nurl = { env = \"DB\" }\n".to_owned(),
                "outbox_lease",
                durations(&OUTBOX_LEASE),
            ),
            (
                receiver("slack", "webhook_url = { env = \"U\" }"),
                "timeout",
                durations(&RECEIVER_TIMEOUT),
            ),
            (
                receiver("webhook", "url = { env = \"U\" }"),
                "timeout",
                durations(&RECEIVER_TIMEOUT),
            ),
            (
                receiver("pagerduty", "routing_key = { env = \"K\" }"),
                "timeout",
                durations(&RECEIVER_TIMEOUT),
            ),
            (
                receiver("email", email),
                "timeout",
                durations(&RECEIVER_TIMEOUT),
            ),
            (
                "[[receivers]]\nname = \"r\"\nstdout = {}\n[[routes]]\nreceivers = [\"r\"]\n"
                    .to_owned(),
                "repeat_interval",
                durations(&REPEAT_INTERVAL),
            ),
        ];
        for (section, key, edges) in cases {
            parse(&section).unwrap_or_else(|e| panic!("{section}: the defaults pass: {e}"));
            let line = section.lines().count() + 1;
            for (value, ok) in edges {
                let text = format!("{section}{key} = {value}\n");
                match (parse(&text), ok) {
                    (Ok(_), true) => {}
                    (Err(e), false) => {
                        assert_eq!(e.line, Some(line), "{text}: {e}");
                        let message = e.to_string();
                        assert!(
                            message.contains(&format!("{key} = {value}: must be from ")),
                            "{text}: {message}"
                        );
                    }
                    (got, _) => panic!("{text}: {got:?}"),
                }
            }
        }
    }

    #[test]
    fn range_errors_quote_the_value_as_written_and_name_the_array_entry() {
        let e = parse("[incidents]\nrepeat_interval = \"300000years\"\n").unwrap_err();
        assert_eq!(e.line, Some(2));
        assert_eq!(
            e.message,
            format!(
                "incidents.repeat_interval = \"300000years\": must be from \"1m\" to \"30days\" ({})",
                REPEAT_INTERVAL.why
            )
        );
        let e = parse("[[receivers]]\nname = \"a\"\nstdout = {}\n\n[[receivers]]\nname = \"b\"\nwebhook = { url = { env = \"U\" }, timeout = \"6m\" }\n").unwrap_err();
        assert_eq!(e.line, Some(7), "{e}");
        assert!(
            e.message.starts_with(
                "receivers[1].webhook.timeout = \"6m\": must be from \"1s\" to \"5m\""
            ),
            "{e}"
        );
        // A huge number is refused, not allocated.
        let e = parse("[dedup]\ncapacity = 18446744073709551615\n").unwrap_err();
        assert_eq!(e.line, Some(2), "{e}");
    }

    #[test]
    fn secrets_are_read_and_named_never_printed() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("token");
        std::fs::write(&secret, "hunter2-value\n").unwrap();
        let text = format!(
            "[[receivers]]\nname = \"pager\"\n[receivers.pagerduty]\nrouting_key = {{ file = {secret:?} }}\n\n[[receivers]]\nname = \"mail\"\n[receivers.email]\nhost = \"h\"\nfrom = \"a@example.com\"\nto = [\"b@example.com\"]\nusername = {{ env = \"SCHEDWATCH_TEST_UNSET_USER\" }}\npassword = {{ file = {secret:?} }}\n"
        );
        let loaded = parse(&text).unwrap();
        let e = loaded.check_secrets().unwrap_err();
        assert_eq!(e.line, Some(12), "{e}");
        assert_eq!(
            e.message,
            "receiver \"mail\": email.username: environment variable SCHEDWATCH_TEST_UNSET_USER is unset or empty"
        );
        let fixed = text.replace("{ env = \"SCHEDWATCH_TEST_UNSET_USER\" }", "\"plain-user\"");
        assert_eq!(parse(&fixed).unwrap().check_secrets().unwrap(), 2);
        std::fs::write(&secret, "  \n").unwrap();
        let e = parse(&fixed).unwrap().check_secrets().unwrap_err();
        assert_eq!(e.line, Some(4), "{e}");
        assert!(
            e.message
                .starts_with("receiver \"pager\": pagerduty.routing_key: secret file "),
            "{e}"
        );
        assert!(!e.to_string().contains("hunter2"), "{e}");
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
