//! Notify: an incident transition → the CONTRACT section 4 alert, and its delivery to the
//! configured receivers.
//!
//! - [`route`]: which receivers an alert goes to (`[[routes]]`, as Alertmanager does it).
//! - [`receiver`]: `[[receivers]]`, one enum of kinds, and how each is built.
//! - [`deliver`]: a queue per receiver with retries.
//!
//! The sinks themselves (Slack, email, webhooks, PagerDuty, stdout and file, and the terminal
//! view they print) live in the `schedwatch-sinks` crate.

pub mod deliver;
pub mod receiver;
pub(crate) mod route;

use chrono::{DateTime, Utc};
use schedwatch_sinks::alert::{
    self, Alert, AlertAuth, AlertDiagnosis, AlertFailure, AlertFix, AlertJob, AlertTarget,
    EventKind,
};

use crate::diagnose::{Diagnoser, Diagnosis};
use crate::incidents::Incident;
use crate::JobKey;

/// The alert for `incident` of `job`, described by `d` (the diagnosis of its latest failure).
/// `resolved_at` is the success's time, on `resolved` only.
pub fn alert(
    event: EventKind,
    job: &JobKey,
    incident: &Incident,
    d: &Diagnosis,
    diagnoser: &Diagnoser,
    resolved_at: Option<DateTime<Utc>>,
) -> Alert {
    let f = &incident.last_failure;
    Alert {
        schema: alert::SCHEMA.to_owned(),
        event,
        incident_id: incident.id.clone(),
        job: AlertJob {
            name: job.name(),
            project: job.project().to_owned(),
            location: job.location().to_owned(),
            id: job.job_id().to_owned(),
        },
        failure: AlertFailure {
            class: f.outcome.as_str().to_owned(),
            status: f.status.clone(),
            http_status: f.http_status,
            count: incident.count,
            first_at: incident.first_at,
            last_at: incident.last_at,
        },
        target: AlertTarget {
            url: d.target_url.clone(),
            kind: d.target_kind.as_str().to_owned(),
        },
        auth: AlertAuth {
            source: d.auth.source.as_str().to_owned(),
            token: d.auth.token.clone(),
            service_account: d.auth.service_account.clone(),
            audience: d.auth.audience.clone(),
            scope: d.auth.scope.clone(),
        },
        diagnosis: AlertDiagnosis {
            code: d.code.as_str().to_owned(),
            confidence: d.confidence().to_owned(),
            summary: d.summary.clone(),
            detail: d.detail.clone(),
        },
        fix: AlertFix {
            gcloud: d.fix.gcloud.clone(),
            terraform: d.fix.terraform.clone(),
        },
        runbook_url: diagnoser.runbook_url(d.code),
        resolved_at: if event == EventKind::Resolved {
            resolved_at
        } else {
            None
        },
    }
}
