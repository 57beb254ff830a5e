//! The PagerDuty sink: Events API v2 (`POST {endpoint}/v2/enqueue`).
//!
//! - firing and repeat → `trigger`, resolved → `resolve`, both with `dedup_key` = the incident
//!   id, so PagerDuty keeps one incident per schedwatch incident and a repeat adds to it;
//! - `payload`: `summary` (job and cause, at most 1,024 characters), `source` (the job name),
//!   `severity` ([`severity`]), `component` (the project), `group` (the location), `class` (the
//!   diagnosis code), `timestamp` (the latest failure) and `custom_details` (the whole alert,
//!   fix included); what people read there has its control and bidi characters escaped
//!   ([`crate::escape`]);
//! - `links`: the runbook.
//!
//! PagerDuty answers 202; a 400 (an event it cannot take) is permanent, a 429 or 5xx is retried.
//!
//! ```toml
//! [[receivers]]
//! name = "pager"
//! [receivers.pagerduty]
//! routing_key = { env = "PAGERDUTY_ROUTING_KEY" }
//! endpoint = "https://events.pagerduty.com"   # the default
//! severity_by_code = { "oidc-token-for-google-api" = "critical" }
//! timeout = "10s"
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use chrono::SecondsFormat;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::delivery::{
    default_timeout, deserialize_timeout, http_client, is_http_url, post, BoxFuture,
};
use crate::escape::line;
use crate::redact::Redactor;
use crate::secret::SecretError;
use crate::{Alert, DeliveryError, EventKind, Secret, SecretRef, Sink};

/// How this sink names its receiver in delivery errors.
const WHAT: &str = "PagerDuty";

/// The Events API host used when `endpoint` is not set.
pub const DEFAULT_ENDPOINT: &str = "https://events.pagerduty.com";
/// PagerDuty's limit on `payload.summary`.
pub const MAX_SUMMARY: usize = 1024;

/// A PagerDuty event severity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// `critical`.
    Critical,
    /// `error`.
    Error,
    /// `warning`.
    Warning,
    /// `info`.
    Info,
}

/// A `[receivers.pagerduty]` table.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PagerDutyConfig {
    /// The integration's routing key (Events API v2). A secret: it lets anyone open incidents.
    pub routing_key: SecretRef,
    /// The Events API base URL, without `/v2/enqueue`. Default [`DEFAULT_ENDPOINT`]; an EU
    /// account may use `https://events.eu.pagerduty.com`.
    #[serde(default = "default_endpoint")]
    pub endpoint: String,
    /// Severity per diagnosis code, overriding the default (`confirmed` → `error`, otherwise
    /// `warning`): `{ "oidc-token-for-google-api" = "critical" }`.
    #[serde(default)]
    pub severity_by_code: BTreeMap<String, Severity>,
    /// How long one attempt may take: `"10s"`, `"1500ms"`, 1s to 5m. Default 10 s.
    #[serde(default = "default_timeout", deserialize_with = "deserialize_timeout")]
    pub timeout: Duration,
}

fn default_endpoint() -> String {
    DEFAULT_ENDPOINT.to_owned()
}

/// Why a PagerDuty sink cannot be built. Never contains the routing key.
#[derive(Debug, thiserror::Error)]
pub enum PagerDutyError {
    /// The `routing_key` secret cannot be read.
    #[error("pagerduty routing_key: {0}")]
    Secret(SecretError),
    /// `endpoint` is not an absolute http(s) URL.
    #[error(
        "pagerduty endpoint {0:?}: expected an absolute http(s) URL such as {DEFAULT_ENDPOINT:?}"
    )]
    Endpoint(String),
    /// The HTTP client cannot be built (TLS setup).
    #[error("pagerduty: cannot build the HTTP client: {0}")]
    Client(reqwest::Error),
}

/// Sends alerts to one PagerDuty integration.
pub struct PagerDutySink {
    name: String,
    routing_key: Secret,
    /// The routing key, to redact from answers quoted in errors.
    secrets: Redactor,
    /// `{endpoint}/v2/enqueue`.
    url: String,
    severity_by_code: BTreeMap<String, Severity>,
    client: reqwest::Client,
}

impl PagerDutySink {
    /// Reads the routing key, checks the endpoint and builds the HTTP client.
    pub fn new(name: impl Into<String>, config: &PagerDutyConfig) -> Result<Self, PagerDutyError> {
        let routing_key = config.routing_key.read().map_err(PagerDutyError::Secret)?;
        if !is_http_url(&config.endpoint) {
            return Err(PagerDutyError::Endpoint(config.endpoint.clone()));
        }
        let mut secrets = Redactor::new();
        secrets.secret(routing_key.expose());
        Ok(PagerDutySink {
            name: name.into(),
            routing_key,
            secrets,
            url: format!("{}/v2/enqueue", config.endpoint.trim_end_matches('/')),
            severity_by_code: config.severity_by_code.clone(),
            client: http_client(config.timeout).map_err(PagerDutyError::Client)?,
        })
    }
}

impl fmt::Debug for PagerDutySink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PagerDutySink")
            .field("name", &self.name)
            .field("routing_key", &self.routing_key)
            .field("url", &self.url)
            .field("severity_by_code", &self.severity_by_code)
            .finish_non_exhaustive()
    }
}

impl Sink for PagerDutySink {
    fn name(&self) -> &str {
        &self.name
    }

    fn send<'a>(&'a self, alert: &'a Alert) -> BoxFuture<'a, Result<(), DeliveryError>> {
        Box::pin(async move {
            let mut event = render(alert, &self.severity_by_code);
            event["routing_key"] = Value::from(self.routing_key.expose());
            let request = self.client.post(&self.url).json(&event);
            post(WHAT, request, &self.secrets).await?;
            tracing::debug!(sink = %self.name, incident_id = %alert.incident_id, "PagerDuty event enqueued");
            Ok(())
        })
    }
}

/// The severity of an alert: the `severity_by_code` entry for its diagnosis code if any, else
/// `error` for a confirmed diagnosis and `warning` for anything less certain.
pub fn severity(alert: &Alert, severity_by_code: &BTreeMap<String, Severity>) -> Severity {
    if let Some(s) = severity_by_code.get(&alert.diagnosis.code) {
        return *s;
    }
    match alert.diagnosis.confidence.as_str() {
        "confirmed" => Severity::Error,
        _ => Severity::Warning,
    }
}

/// `<project>/<location>/<job>: <code> — <diagnosis summary>`, at most [`MAX_SUMMARY`]
/// characters.
pub fn summary(alert: &Alert) -> String {
    let j = &alert.job;
    let text = format!(
        "{}/{}/{}: {} — {}",
        j.project, j.location, j.id, alert.diagnosis.code, alert.diagnosis.summary
    );
    let text = crate::escape::line(&text);
    if text.chars().count() <= MAX_SUMMARY {
        return text.into_owned();
    }
    let mut cut: String = text.chars().take(MAX_SUMMARY - 1).collect();
    cut.push('…');
    cut
}

/// The Events API v2 event for an alert, without `routing_key` (the sink adds it, so rendered
/// events can be logged and compared).
pub fn render(alert: &Alert, severity_by_code: &BTreeMap<String, Severity>) -> Value {
    if alert.event == EventKind::Resolved {
        return json!({"event_action": "resolve", "dedup_key": alert.incident_id});
    }
    let mut event = json!({
        "event_action": "trigger",
        "dedup_key": alert.incident_id,
        "client": "schedwatch",
        "payload": {
            "summary": summary(alert),
            "source": line(&alert.job.name),
            "severity": severity(alert, severity_by_code),
            "timestamp": alert.failure.last_at.to_rfc3339_opts(SecondsFormat::AutoSi, true),
            "component": line(&alert.job.project),
            "group": line(&alert.job.location),
            "class": line(&alert.diagnosis.code),
            "custom_details": custom_details(alert),
        },
    });
    if is_http_url(&alert.runbook_url) {
        event["links"] = json!([{
            "href": alert.runbook_url,
            "text": format!("Runbook: {}", line(&alert.diagnosis.code)),
        }]);
    }
    event
}

/// The whole alert as PagerDuty shows it to people (`custom_details`): every string with its
/// control and invisible characters escaped ([`crate::escape`]); the fixes and the diagnosis's
/// detail keep their line breaks.
fn custom_details(alert: &Alert) -> Value {
    fn shown(v: &mut Value, multi_line: bool) {
        match v {
            Value::String(s) if s.contains(crate::escape::is_unsafe) => {
                *s = if multi_line {
                    crate::escape::lines(s).into_owned()
                } else {
                    crate::escape::line(s).into_owned()
                };
            }
            Value::Array(items) => items.iter_mut().for_each(|v| shown(v, multi_line)),
            Value::Object(fields) => {
                for (k, v) in fields.iter_mut() {
                    shown(v, multi_line || k == "fix" || k == "detail");
                }
            }
            _ => {}
        }
    }
    let mut details = serde_json::to_value(alert).unwrap_or_default();
    shown(&mut details, false);
    details
}
