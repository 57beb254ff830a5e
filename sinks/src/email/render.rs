//! The subject and the two bodies (plain text and HTML) of an alert's email. Pure functions of
//! the alert, so tests (and a future `schedwatch preview`) can call them without a server.

use chrono::{DateTime, Utc};

use super::config::DEFAULT_SUBJECT_PREFIX;
use super::sanitise::{esc, multi_line, one_line, paragraph};
use crate::{Alert, EventKind};

/// Subjects longer than this are cut (with `…`): job ids and codes are short, and a subject is
/// for reading in an inbox list, not for the whole story.
const MAX_SUBJECT_CHARS: usize = 250;

/// The subject with the default prefix, e.g.
/// `[schedwatch] FIRING commit-worker (acme-data-prod): oidc-token-for-google-api`.
pub fn render_subject(alert: &Alert) -> String {
    render_subject_with_prefix(DEFAULT_SUBJECT_PREFIX, alert)
}

/// The subject with `prefix` (none when empty): one line, control characters removed, at most
/// 250 characters.
pub(crate) fn render_subject_with_prefix(prefix: &str, alert: &Alert) -> String {
    let subject = format!(
        "{} {} {} ({}): {}",
        prefix,
        alert.event.word(),
        alert.job.id,
        alert.job.project,
        alert.diagnosis.code
    );
    let subject = one_line(&subject);
    if subject.chars().count() <= MAX_SUBJECT_CHARS {
        subject
    } else {
        let mut cut: String = subject.chars().take(MAX_SUBJECT_CHARS - 1).collect();
        cut.push('…');
        cut
    }
}

/// The plain-text body.
pub fn render_text(alert: &Alert) -> String {
    let a = Clean::new(alert);
    let mut out = String::new();
    let mut line = |s: &str| {
        out.push_str(s);
        out.push('\n');
    };

    line(&a.headline);
    line("");
    line(&format!("Cause: {} ({})", a.code, a.confidence));
    line(&a.summary);
    if !a.detail.is_empty() {
        line("");
        line(&a.detail);
    }
    line("");

    line(if alert.event == EventKind::Resolved {
        "What failed before"
    } else {
        "What failed"
    });
    for (k, v) in &a.failure_rows {
        line(&format!("  {:<17} {v}", format!("{k}:")));
    }
    line("");
    line(&format!("Auth config ({})", a.auth_source));
    for (k, v) in &a.auth_rows {
        line(&format!("  {:<17} {v}", format!("{k}:")));
    }

    if let Some((gcloud, terraform)) = &a.fix {
        for (title, code) in [
            ("Fix with gcloud:", gcloud),
            ("Fix with Terraform:", terraform),
        ] {
            if code.trim().is_empty() {
                continue;
            }
            line("");
            line(title);
            line("");
            for l in code.trim_end().lines() {
                if l.is_empty() {
                    line("");
                } else {
                    line(&format!("    {l}"));
                }
            }
        }
    }

    line("");
    if !a.runbook.is_empty() {
        line(&format!("Runbook: {}", a.runbook));
    }
    line(&format!("Incident: {}", a.incident));
    line("-- ");
    line("Sent by schedwatch.");
    out
}

/// The HTML body: the same content as [`render_text`], every value escaped, the fixes in
/// `<pre>` blocks.
pub fn render_html(alert: &Alert) -> String {
    let a = Clean::new(alert);
    let color = match alert.event {
        EventKind::Firing | EventKind::Repeat => "#c5221f",
        EventKind::Resolved => "#188038",
    };
    let mut h = String::new();
    let mut line = |s: &str| {
        h.push_str(s);
        h.push('\n');
    };
    line("<!DOCTYPE html>");
    line("<html>");
    line("<head>");
    line(r#"<meta charset="utf-8">"#);
    line(&format!("<title>{}</title>", esc(&a.headline)));
    line("</head>");
    line(
        r#"<body style="font-family: Arial, Helvetica, sans-serif; font-size: 14px; color: #202124;">"#,
    );
    line(&format!(
        r#"<h2 style="color: {color};">{}</h2>"#,
        esc(&a.headline)
    ));
    line(&format!(
        "<p><strong>Cause:</strong> <code>{}</code> ({})</p>",
        esc(&a.code),
        esc(&a.confidence)
    ));
    line(&format!("<p>{}</p>", paragraph(&a.summary)));
    if !a.detail.is_empty() {
        line(&format!("<p>{}</p>", paragraph(&a.detail)));
    }

    let table = |title: &str, rows: &[(&'static str, String)]| {
        let mut t = format!("<h3>{}</h3>\n", esc(title));
        t.push_str(r#"<table cellpadding="4" style="border-collapse: collapse;">"#);
        t.push('\n');
        for (k, v) in rows {
            t.push_str(&format!(
                "<tr><th align=\"left\" valign=\"top\">{}</th><td>{}</td></tr>\n",
                esc(k),
                esc(v)
            ));
        }
        t.push_str("</table>");
        t
    };
    let what = if alert.event == EventKind::Resolved {
        "What failed before"
    } else {
        "What failed"
    };
    line(&table(what, &a.failure_rows));
    line(&table(
        &format!("Auth config ({})", a.auth_source),
        &a.auth_rows,
    ));

    if let Some((gcloud, terraform)) = &a.fix {
        for (title, code) in [
            ("Fix with gcloud", gcloud),
            ("Fix with Terraform", terraform),
        ] {
            if code.trim().is_empty() {
                continue;
            }
            line(&format!("<h3>{title}</h3>"));
            line(&format!(
                r#"<pre style="background: #f1f3f4; padding: 8px; white-space: pre-wrap;">{}</pre>"#,
                esc(code.trim_end())
            ));
        }
    }

    if !a.runbook.is_empty() {
        // Only http(s) becomes a link: a `javascript:` URL from a tampered config stays text.
        let lower = a.runbook.to_ascii_lowercase();
        if lower.starts_with("https://") || lower.starts_with("http://") {
            line(&format!(
                r#"<p><strong>Runbook:</strong> <a href="{0}">{0}</a></p>"#,
                esc(&a.runbook)
            ));
        } else {
            line(&format!(
                "<p><strong>Runbook:</strong> {}</p>",
                esc(&a.runbook)
            ));
        }
    }
    line(&format!(
        r#"<p style="color: #5f6368; font-size: 12px;">Incident {} &middot; sent by schedwatch</p>"#,
        esc(&a.incident)
    ));
    line("</body>");
    line("</html>");
    h
}

/// The alert's fields, cleaned for a body and laid out once for both renderings.
struct Clean {
    headline: String,
    code: String,
    confidence: String,
    summary: String,
    detail: String,
    failure_rows: Vec<(&'static str, String)>,
    auth_source: String,
    auth_rows: Vec<(&'static str, String)>,
    /// `(gcloud, terraform)`; none on resolved.
    fix: Option<(String, String)>,
    runbook: String,
    incident: String,
}

impl Clean {
    fn new(alert: &Alert) -> Clean {
        let job = one_line(&alert.job.id);
        let place = format!(
            "project {}, {}",
            one_line(&alert.job.project),
            one_line(&alert.job.location)
        );
        let fails = match alert.failure.class.as_str() {
            "permission_denied" => "is refused permission by its target",
            _ => "fails to authenticate to its target",
        };
        let word = alert.event.word();
        let headline = match (alert.event, alert.resolved_at) {
            (EventKind::Firing, _) => {
                format!("{word}: Cloud Scheduler job {job} ({place}) {fails}.")
            }
            (EventKind::Repeat, _) => {
                format!("{word}: Cloud Scheduler job {job} ({place}) still {fails}.")
            }
            (EventKind::Resolved, Some(at)) => format!(
                "{word}: Cloud Scheduler job {job} ({place}) succeeded again at {}.",
                when(at)
            ),
            (EventKind::Resolved, None) => {
                format!("{word}: Cloud Scheduler job {job} ({place}) succeeded again.")
            }
        };

        let f = &alert.failure;
        let mut answer = one_line(&f.class);
        match (f.http_status, &f.status) {
            (Some(code), Some(status)) => {
                answer.push_str(&format!(", HTTP {code} {}", one_line(status)))
            }
            (Some(code), None) => answer.push_str(&format!(", HTTP {code}")),
            (None, Some(status)) => answer.push_str(&format!(", {}", one_line(status))),
            (None, None) => {}
        }
        let mut failure_rows = vec![
            ("Job", one_line(&alert.job.name)),
            ("Failures", format!("{} ({answer})", f.count)),
            ("First failure", when(f.first_at)),
            ("Last failure", when(f.last_at)),
        ];
        if let Some(at) = alert.resolved_at {
            failure_rows.push(("Resolved at", when(at)));
        }
        failure_rows.push((
            "Target",
            format!(
                "{} ({})",
                one_line(&alert.target.url),
                one_line(&alert.target.kind)
            ),
        ));

        let auth = &alert.auth;
        let opt = |v: &Option<String>| match v {
            Some(v) if !v.trim().is_empty() => one_line(v),
            _ => "(not set)".to_owned(),
        };
        let auth_source = match auth.source.as_str() {
            "inventory" => "from the inventory".to_owned(),
            "scheduler_api" => "from the Cloud Scheduler API".to_owned(),
            "unavailable" => "not available: the job's config could not be read".to_owned(),
            other => format!("source: {}", one_line(other)),
        };
        let auth_rows = vec![
            ("Token", one_line(&auth.token)),
            ("Service account", opt(&auth.service_account)),
            ("Audience", opt(&auth.audience)),
            ("Scope", opt(&auth.scope)),
        ];

        let fix = (alert.event != EventKind::Resolved).then(|| {
            (
                multi_line(&alert.fix.gcloud),
                multi_line(&alert.fix.terraform),
            )
        });

        Clean {
            headline,
            code: one_line(&alert.diagnosis.code),
            confidence: one_line(&alert.diagnosis.confidence),
            summary: multi_line(alert.diagnosis.summary.trim()),
            detail: multi_line(alert.diagnosis.detail.trim()),
            failure_rows,
            auth_source,
            auth_rows,
            fix,
            runbook: one_line(&alert.runbook_url),
            incident: one_line(&alert.incident_id),
        }
    }
}

fn when(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}
