//! schedwatch: finds Cloud Scheduler jobs that fail authentication, names the cause from the
//! job's own config, and alerts with the exact fix.
//!
//! # The map
//!
//! One pipeline, several doors. Data flows through the stages in this order:
//!
//! ```text
//!  source ──► decode ──► incidents ──► correlate ──► diagnose ──► notify ──► sinks
//!  (file,     (LogEntry   (per-job      (inventory,   (rules →     (alerts,   (stdout, file,
//!   pubsub)    → Attempt)  state         Scheduler     code + fix)  routes,    Slack, email,
//!                          machine)      API, cache)                outbox     webhook,
//!                                                                   queues)    PagerDuty: in
//!                                                                              schedwatch-sinks)
//! ```
//!
//! - [`source`]: where entries come from. [`source::file`] reads NDJSON, JSON arrays and
//!   Pub/Sub message dumps, streaming, with bounded memory; [`source::pubsub`] holds streaming
//!   pulls on a subscription; [`source::push`] takes Pub/Sub's push requests, token checked.
//! - [`decode`]: a Cloud Logging `LogEntry` → an [`decode::Attempt`] (job, outcome, event time),
//!   or a named [`decode::SkipReason`].
//! - [`dedup`]: the same entry delivered twice counts once, in a bounded window.
//! - [`incidents`]: CONTRACT section 2 as a pure state machine over event time: one open
//!   incident per job, firing, repeat and resolved transitions. No clock, no I/O.
//! - [`correlate`]: the job's config from the inventory files or the Cloud Scheduler API.
//! - [`diagnose`]: CONTRACT section 3's rule table → code, confidence, words and the fix
//!   (`gcloud` + Terraform).
//! - [`notify`]: turns an incident transition into the CONTRACT section 4 alert;
//!   [`notify::receiver`] is `[[receivers]]` (one enum of kinds) and builds them,
//!   [`notify::route`] picks the receivers (`[[routes]]`) and [`notify::deliver`] runs a
//!   retrying queue per receiver. Every receiver, and every view of an alert (the terminal
//!   view, NDJSON, email, Slack), lives in `schedwatch-sinks`.
//! - [`pipeline`]: the stages joined; every door (`replay`, `run`) calls the same
//!   [`pipeline::Pipeline::process_item`].
//! - [`store`]: the durable state of `run` (incidents, dedup keys, the outbox), committed a
//!   batch at a time before messages are acked: one contract ([`store::Store`]), two stores
//!   (a redb file, PostgreSQL). [`service`] is the long-running loop around it: its entry
//!   ([`service::run`], stopped by a token), the one batch processor, the alerts in flight.
//! - [`config`], [`cli`], [`app`]: the config file, the command line, and the wiring of each
//!   command; [`shutdown`] turns signals into the service's token. `main.rs` only parses
//!   arguments, sets up logging and maps errors to exit codes.
//!
//! `audit` is correlate + diagnose without logs. [`metrics`] counts for `GET /metrics`
//! ([`http`]). Modules that nothing outside the crate uses are `pub(crate)`, so the compiler
//! names their dead code.
#![deny(missing_docs)]
// The map and the module docs name the crate-private stages too (`cargo doc
// --document-private-items` renders them): the links are meant.
#![allow(rustdoc::private_intra_doc_links)]

pub mod app;
pub mod cli;
pub mod config;
pub mod correlate;
pub mod decode;
pub(crate) mod dedup;
pub mod diagnose;
pub(crate) mod http;
pub mod incidents;
pub mod logging;
pub(crate) mod metrics;
pub mod notify;
pub mod pipeline;
pub(crate) mod service;
pub mod shutdown;
pub mod source;
pub(crate) mod store;

use std::fmt;

use serde::{Deserialize, Serialize};

/// A Cloud Scheduler job: `(project, location, job_id)`, as the log's resource labels and the
/// Job resource's name both give it.
///
/// Always valid: every constructor checks Cloud Scheduler's own grammar ([`JobKey::new`]), so
/// a key can go into a fix, a log line, a message or an API path (`projects/P/locations/L/
/// jobs/J`) as it is. A label from a log entry or a job config that breaks the grammar never
/// becomes a key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "RawJobKey")]
pub struct JobKey {
    project: String,
    location: String,
    job_id: String,
}

/// The stored shape of a [`JobKey`], checked on the way in.
#[derive(Deserialize)]
struct RawJobKey {
    project: String,
    location: String,
    job_id: String,
}

impl TryFrom<RawJobKey> for JobKey {
    type Error = BadJobLabel;
    fn try_from(raw: RawJobKey) -> Result<Self, BadJobLabel> {
        JobKey::new(&raw.project, &raw.location, &raw.job_id)
    }
}

/// The longest job id Cloud Scheduler accepts.
pub const MAX_JOB_ID: usize = 500;
/// The longest location: locations are DNS labels (they appear in host names such as
/// `us-east1-run.googleapis.com`), and RFC 1035 caps a label at 63 characters. The longest real
/// one today is about 25.
pub const MAX_LOCATION: usize = 63;
/// A project id is 6 to 30 characters (Google's rule for project ids).
const PROJECT_ID_LEN: std::ops::RangeInclusive<usize> = 6..=30;
/// The longest domain of a domain-scoped project (`example.com:proj`): a DNS name.
const MAX_PROJECT_DOMAIN: usize = 253;

/// Which part of a job breaks Cloud Scheduler's grammar. Names the part and the rule, never the
/// value (it is untrusted, and may be anything).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BadJobLabel {
    /// Not a project id: 6–30 lower-case letters, digits and hyphens, starting with a letter and
    /// not ending with a hyphen, optionally after `DOMAIN:`.
    #[error("the project id is not 6-30 lower-case letters, digits or hyphens starting with a letter (optionally after \"example.com:\")")]
    Project,
    /// Not a location: 1–63 lower-case letters, digits and hyphens, starting with a letter.
    #[error(
        "the location is not 1-63 lower-case letters, digits or hyphens starting with a letter"
    )]
    Location,
    /// Not a job id: 1–500 letters, digits, hyphens and underscores.
    #[error("the job id is not 1-500 letters, digits, hyphens or underscores")]
    JobId,
}

impl JobKey {
    /// A key from its parts, each checked against Cloud Scheduler's grammar:
    ///
    /// - project: a Google project id, 6–30 lower-case letters, digits and hyphens, starting
    ///   with a letter and not ending with a hyphen; a domain-scoped one (`example.com:proj`)
    ///   puts a lower-case DNS name and `:` before it;
    /// - location: 1–[`MAX_LOCATION`] lower-case letters, digits and hyphens, starting with a
    ///   letter and not ending with a hyphen (a DNS label, as every Google location is);
    /// - job id: 1–[`MAX_JOB_ID`] ASCII letters, digits, hyphens and underscores. It may start
    ///   with `-`, which is why fixes never put it where a flag could be.
    pub fn new(project: &str, location: &str, job_id: &str) -> Result<Self, BadJobLabel> {
        if !is_project_id(project) {
            return Err(BadJobLabel::Project);
        }
        if !is_location(location) {
            return Err(BadJobLabel::Location);
        }
        if !is_job_id(job_id) {
            return Err(BadJobLabel::JobId);
        }
        Ok(JobKey {
            project: project.into(),
            location: location.into(),
            job_id: job_id.into(),
        })
    }

    /// Reads `projects/P/locations/L/jobs/J`, each part checked as [`JobKey::new`] does.
    pub fn from_name(name: &str) -> Result<JobKey, BadJobName> {
        let mut parts = name.split('/');
        match (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) {
            (
                Some("projects"),
                Some(p),
                Some("locations"),
                Some(l),
                Some("jobs"),
                Some(j),
                None,
            ) => JobKey::new(p, l, j).map_err(BadJobName::Label),
            _ => Err(BadJobName::Shape),
        }
    }

    /// `resource.labels.project_id`.
    pub fn project(&self) -> &str {
        &self.project
    }

    /// `resource.labels.location`.
    pub fn location(&self) -> &str {
        &self.location
    }

    /// `resource.labels.job_id`.
    pub fn job_id(&self) -> &str {
        &self.job_id
    }

    /// `projects/P/locations/L/jobs/J`.
    pub fn name(&self) -> String {
        format!(
            "projects/{}/locations/{}/jobs/{}",
            self.project, self.location, self.job_id
        )
    }
}

/// Why a job's `name` is not a [`JobKey`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BadJobName {
    /// Not of the shape `projects/P/locations/L/jobs/J`.
    #[error("it is not projects/PROJECT/locations/LOCATION/jobs/JOB")]
    Shape,
    /// The shape is right, a part is not.
    #[error("{0}")]
    Label(BadJobLabel),
}

/// A DNS label: lower-case letters, digits and hyphens, starting with a letter, not ending with
/// a hyphen, within `len`.
fn is_label(s: &str, len: std::ops::RangeInclusive<usize>) -> bool {
    len.contains(&s.len())
        && s.starts_with(|c: char| c.is_ascii_lowercase())
        && !s.ends_with('-')
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// A Google project id, plain (`acme-data-prod`) or domain-scoped (`example.com:acme`).
pub fn is_project_id(s: &str) -> bool {
    match s.split_once(':') {
        None => is_label(s, PROJECT_ID_LEN),
        Some((domain, id)) => {
            domain.len() <= MAX_PROJECT_DOMAIN
                && domain.contains('.')
                && domain.split('.').all(|l| {
                    (1..=63).contains(&l.len())
                        && !l.starts_with('-')
                        && !l.ends_with('-')
                        && l.bytes()
                            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                })
                && is_label(id, PROJECT_ID_LEN)
        }
    }
}

/// A Cloud Scheduler location (`us-east1`, `europe-west1`).
pub fn is_location(s: &str) -> bool {
    is_label(s, 1..=MAX_LOCATION)
}

/// A Cloud Scheduler job id.
pub fn is_job_id(s: &str) -> bool {
    (1..=MAX_JOB_ID).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl fmt::Display for JobKey {
    /// `P/L/J`: the short form used in logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.project, self.location, self.job_id)
    }
}
