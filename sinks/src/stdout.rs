//! The NDJSON sink: one CONTRACT section 4 event per line, to stdout or any writer.

use std::io::{self, Write};

use crate::Alert;

/// Writes each alert as one JSON line and flushes, so a reader piping the output sees every
/// alert as soon as it is made.
pub struct NdjsonSink<W: Write> {
    out: W,
}

impl<W: Write> NdjsonSink<W> {
    /// A sink over `out` (for example `std::io::stdout().lock()`).
    pub fn new(out: W) -> Self {
        NdjsonSink { out }
    }

    /// Writes one alert as a JSON line.
    pub fn send(&mut self, alert: &Alert) -> io::Result<()> {
        serde_json::to_writer(&mut self.out, alert)?;
        self.out.write_all(b"\n")?;
        self.out.flush()
    }

    /// The writer, for output in other formats between events.
    pub fn writer(&mut self) -> &mut W {
        &mut self.out
    }

    /// Gives back the writer.
    pub fn into_inner(self) -> W {
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alert::*;
    use chrono::TimeZone;

    #[test]
    fn writes_one_contract_line_per_alert() {
        let t = chrono::Utc.with_ymd_and_hms(2026, 11, 20, 9, 0, 1).unwrap();
        let alert = Alert {
            schema: SCHEMA.into(),
            event: EventKind::Firing,
            incident_id: "abc".into(),
            job: AlertJob {
                name: "projects/p/locations/l/jobs/j".into(),
                project: "p".into(),
                location: "l".into(),
                id: "j".into(),
            },
            failure: AlertFailure {
                class: "unauthenticated".into(),
                status: Some("UNAUTHENTICATED".into()),
                http_status: Some(401),
                count: 1,
                first_at: t,
                last_at: t,
            },
            target: AlertTarget {
                url: "https://run.googleapis.com/x".into(),
                kind: "google_api".into(),
            },
            auth: AlertAuth {
                source: "inventory".into(),
                token: "oidc".into(),
                service_account: Some("sa@p.iam.gserviceaccount.com".into()),
                audience: None,
                scope: None,
            },
            diagnosis: AlertDiagnosis {
                code: "oidc-token-for-google-api".into(),
                confidence: "confirmed".into(),
                summary: "s".into(),
                detail: "d".into(),
            },
            fix: AlertFix {
                gcloud: "gcloud".into(),
                terraform: "tf".into(),
            },
            runbook_url: "docs/runbook.md#oidc-token-for-google-api".into(),
            resolved_at: None,
        };
        let mut sink = NdjsonSink::new(Vec::new());
        sink.send(&alert).unwrap();
        let out = String::from_utf8(sink.into_inner()).unwrap();
        assert!(out.ends_with('\n') && out.matches('\n').count() == 1);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["schema"], "schedwatch.alert.v1");
        assert_eq!(v["event"], "firing");
        assert_eq!(v["failure"]["first_at"], "2026-11-20T09:00:01Z");
        assert!(
            v.get("resolved_at").is_none(),
            "resolved_at only on resolved"
        );
        assert_eq!(serde_json::from_value::<Alert>(v).unwrap(), alert);
    }
}
