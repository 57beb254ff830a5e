//! Notify: an incident transition → the CONTRACT section 4 alert, the terminal view of it, and
//! its delivery to the configured receivers.
//!
//! - [`route`]: which receivers an alert goes to (`[[routes]]`, as Alertmanager does it).
//! - [`receiver`]: `[[receivers]]`, one enum of kinds, and how each is built.
//! - [`deliver`]: a queue per receiver with retries.
//!
//! The sinks themselves (Slack, email, webhooks, PagerDuty, stdout) live in the
//! `schedwatch-sinks` crate.

pub mod deliver;
pub mod receiver;
pub mod route;

use chrono::{DateTime, SecondsFormat, Utc};
use schedwatch_sinks::alert::{
    self, Alert, AlertAuth, AlertDiagnosis, AlertFailure, AlertFix, AlertJob, AlertTarget,
    EventKind,
};
use schedwatch_sinks::escape;

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

fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// The readable terminal view of an alert (`--format text`): what failed, why, and the fix.
/// Every value is shown with its control and bidi characters escaped ([`escape`]): a URL or a
/// status from a log entry cannot drive the terminal or add a line.
pub fn render_text(a: &Alert) -> String {
    let v = |s: &str| escape::line(s).into_owned();
    let mut out = String::new();
    let event = match a.event {
        EventKind::Firing => "FIRING",
        EventKind::Repeat => "STILL FAILING",
        EventKind::Resolved => "RESOLVED",
    };
    out.push_str(&format!(
        "{event}  {}/{}/{}  {} ({})\n",
        v(&a.job.project),
        v(&a.job.location),
        v(&a.job.id),
        v(&a.diagnosis.code),
        v(&a.diagnosis.confidence)
    ));
    let status = match (&a.failure.http_status, &a.failure.status) {
        (Some(h), Some(s)) => format!("{h} {}", v(s)),
        (Some(h), None) => h.to_string(),
        (None, Some(s)) => v(s),
        (None, None) => v(&a.failure.class),
    };
    let plural = if a.failure.count == 1 { "" } else { "s" };
    out.push_str(&format!(
        "  failures  {} auth failure{plural} ({status}), {} .. {}\n",
        a.failure.count,
        ts(a.failure.first_at),
        ts(a.failure.last_at)
    ));
    if let Some(at) = a.resolved_at {
        out.push_str(&format!("  resolved  {}\n", ts(at)));
    }
    out.push_str(&format!(
        "  target    {} ({})\n",
        v(&a.target.url),
        v(&a.target.kind)
    ));
    if a.auth.source == "unavailable" {
        out.push_str("  auth      unknown: the job's config was not found\n");
    } else {
        let mut auth = format!("{} token", v(&a.auth.token));
        if let Some(sa) = &a.auth.service_account {
            auth.push_str(&format!(" as {}", v(sa)));
        }
        if let Some(aud) = &a.auth.audience {
            auth.push_str(&format!(", audience {}", v(aud)));
        }
        out.push_str(&format!(
            "  auth      {auth} (from the {})\n",
            v(&a.auth.source.replace('_', " "))
        ));
    }
    out.push_str(&format!("  cause     {}\n", v(&a.diagnosis.summary)));
    for line in wrap(&escape::lines(&a.diagnosis.detail), 88) {
        out.push_str(&format!("            {line}\n"));
    }
    if a.event != EventKind::Resolved {
        out.push_str("  fix (gcloud):\n");
        for line in escape::lines(&a.fix.gcloud).lines() {
            out.push_str(&format!("    {line}\n"));
        }
        out.push_str("  fix (terraform):\n");
        for line in escape::lines(&a.fix.terraform).lines() {
            out.push_str(&format!("    {line}\n"));
        }
    }
    out.push_str(&format!(
        "  runbook   {}\n  incident  {}\n",
        v(&a.runbook_url),
        v(&a.incident_id)
    ));
    out
}

fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = vec![String::new()];
    for word in text.split_whitespace() {
        let line = lines.last_mut().expect("never empty");
        if !line.is_empty() && line.len() + 1 + word.len() > width {
            lines.push(word.to_owned());
        } else {
            if !line.is_empty() {
                line.push(' ');
            }
            line.push_str(word);
        }
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_terminal_view_shows_controls_as_escapes() {
        let evil = "https://x.example/\x1b]0;pwned\x07\r\n  cause     forged\u{85}\u{202e}\x1b[2J";
        let alert: Alert = serde_json::from_value(serde_json::json!({
            "schema": "schedwatch.alert.v1", "event": "firing", "incident_id": "4f1c",
            "job": {"name": "projects/acme-prod/locations/us-east1/jobs/j",
                    "project": "acme-prod", "location": "us-east1", "id": "j"},
            "failure": {"class": "unauthenticated", "status": format!("UNAUTHENTICATED{evil}"),
                        "http_status": 401, "count": 3,
                        "first_at": "2026-11-20T09:00:01Z", "last_at": "2026-11-20T09:20:03Z"},
            "target": {"url": evil, "kind": "other"},
            "auth": {"source": "inventory", "token": "oidc", "service_account": format!("sa{evil}"),
                     "audience": evil, "scope": null},
            "diagnosis": {"code": "oidc-audience-mismatch", "confidence": "likely",
                          "summary": "s", "detail": format!("It calls {evil}.")},
            "fix": {"gcloud": format!("# {evil}\ngcloud x \\\n  --y={evil}"), "terraform": evil},
            "runbook_url": evil
        }))
        .unwrap();
        let text = render_text(&alert);
        let raw: Vec<char> = text
            .chars()
            .filter(|&c| c != '\n' && escape::is_unsafe(c))
            .collect();
        assert!(raw.is_empty(), "{raw:?} in\n{text}");
        assert!(
            !text.lines().any(|l| l.starts_with("  cause     forged")),
            "a forged line:\n{text}"
        );
        assert!(
            text.contains(r"  target    https://x.example/\x1b]0;pwned\x07\r\n  cause     forged\u{85}\u{202e}\x1b[2J (other)"),
            "{text}"
        );
        // The fix keeps its own lines.
        assert!(
            text.contains("    gcloud x \\\n      --y=https://x.example/\\x1b"),
            "{text}"
        );
    }
}
