//! The `schedwatch.alert.v1` event of CONTRACT section 4.
//!
//! Field names and value spellings are part of the contract: receivers and scripts parse them.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize, Serializer};

/// The schema name every event carries, so receivers can tell versions apart.
pub const SCHEMA: &str = "schedwatch.alert.v1";

/// What happened to the incident.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    /// The incident reached its firing threshold.
    Firing,
    /// The incident is still failing, `repeat_interval` after the last notification.
    Repeat,
    /// The job succeeded after a fired incident.
    Resolved,
}

impl EventKind {
    /// Every event, in the order an incident meets them.
    pub const ALL: [EventKind; 3] = [EventKind::Firing, EventKind::Repeat, EventKind::Resolved];

    /// The contract's spelling: `firing`, `repeat`, `resolved`.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Firing => "firing",
            EventKind::Repeat => "repeat",
            EventKind::Resolved => "resolved",
        }
    }

    /// The word a person reads for the event: `FIRING`, `STILL FAILING`, `RESOLVED`. The one
    /// spelling of every human rendering (the terminal view, email, Slack).
    pub fn word(self) -> &'static str {
        match self {
            EventKind::Firing => "FIRING",
            EventKind::Repeat => "STILL FAILING",
            EventKind::Resolved => "RESOLVED",
        }
    }
}

/// One alert event, as every sink receives it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    /// Always [`SCHEMA`].
    pub schema: String,
    /// Firing, repeat or resolved.
    pub event: EventKind,
    /// Stable for the incident's whole life; receivers dedupe on it.
    pub incident_id: String,
    /// The Cloud Scheduler job.
    pub job: AlertJob,
    /// The failures the incident collected.
    pub failure: AlertFailure,
    /// What the job calls.
    pub target: AlertTarget,
    /// The job's auth config, as found.
    pub auth: AlertAuth,
    /// The cause, named.
    pub diagnosis: AlertDiagnosis,
    /// The paste-ready fix.
    pub fix: AlertFix,
    /// The runbook section for the diagnosis code.
    pub runbook_url: String,
    /// When the job succeeded again; only on `resolved`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "rfc3339_opt"
    )]
    pub resolved_at: Option<DateTime<Utc>>,
}

/// The job an event is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertJob {
    /// `projects/P/locations/L/jobs/J`.
    pub name: String,
    /// The project id.
    pub project: String,
    /// The Cloud Scheduler location (region).
    pub location: String,
    /// The job id.
    pub id: String,
}

/// The failures an incident collected.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlertFailure {
    /// `unauthenticated` or `permission_denied`: the latest failure's class.
    pub class: String,
    /// The latest failure's gRPC status name, when the log carried one.
    pub status: Option<String>,
    /// The latest failure's HTTP status, when known.
    pub http_status: Option<u16>,
    /// Distinct failures in the incident when the event was made.
    pub count: u64,
    /// Event time of the earliest failure.
    #[serde(serialize_with = "rfc3339")]
    pub first_at: DateTime<Utc>,
    /// Event time of the latest failure.
    #[serde(serialize_with = "rfc3339")]
    pub last_at: DateTime<Utc>,
}

/// What the job calls.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertTarget {
    /// The job's `httpTarget.uri`, or the log's `url` when the config is unknown.
    pub url: String,
    /// `google_api`, `cloud_run`, `cloud_functions` or `other`.
    pub kind: String,
}

/// The job's auth config, as found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertAuth {
    /// `inventory`, `scheduler_api` or `unavailable`.
    pub source: String,
    /// `oidc`, `oauth`, `none` or `unknown`.
    pub token: String,
    /// The token's service account, when configured.
    pub service_account: Option<String>,
    /// The OIDC audience, when configured.
    pub audience: Option<String>,
    /// The OAuth scope, when configured.
    pub scope: Option<String>,
}

/// The named cause.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertDiagnosis {
    /// A stable code from CONTRACT section 3, e.g. `oidc-token-for-google-api`.
    pub code: String,
    /// `confirmed` (the job's config proves it) or `likely`.
    pub confidence: String,
    /// One sentence.
    pub summary: String,
    /// Why, in a few sentences.
    pub detail: String,
}

/// The fix, ready to paste.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertFix {
    /// Shell commands for the gcloud CLI.
    pub gcloud: String,
    /// The Terraform equivalent (HCL).
    pub terraform: String,
}

fn rfc3339<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&t.to_rfc3339_opts(SecondsFormat::AutoSi, true))
}

fn rfc3339_opt<S: Serializer>(t: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => rfc3339(t, s),
        None => s.serialize_none(),
    }
}
