//! The terminal view of an alert (`--format text`, and `format = "text"` of a stdout or file
//! receiver): a few aligned lines a person reads, with the fix to paste.

use chrono::{DateTime, SecondsFormat, Utc};

use crate::escape;
use crate::{Alert, EventKind};

fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// The readable view of an alert (`--format text`): what failed, why, and the fix. Every value
/// is shown with its control and bidi characters escaped ([`escape`]): a URL or a status from a
/// log entry cannot drive the terminal or add a line.
pub fn render(a: &Alert) -> String {
    let v = |s: &str| escape::line(s).into_owned();
    let mut out = String::new();
    out.push_str(&format!(
        "{}  {}/{}/{}  {} ({})\n",
        a.event.word(),
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
        let text = render(&alert);
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
