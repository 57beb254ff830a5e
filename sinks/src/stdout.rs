//! The stdout receiver, and what every printing receiver shares: the [`Format`]s, the
//! [`Printer`] and [`WriterReceiver`] (the file receiver is the same over a file:
//! [`crate::file`]).
//!
//! A format is `json` (one CONTRACT section 4 event a line, NDJSON) or `text` (the terminal
//! view, `crate::terminal`). Each alert is flushed as soon as it is printed, so a reader
//! piping the output sees it at once.

use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::delivery::{BoxFuture, DeliveryError, Sink};
use crate::Alert;

/// An output format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// One JSON event per line (NDJSON).
    #[default]
    Json,
    /// Readable text with the fix commands.
    Text,
}

/// Prints alerts to a writer in each of its formats, flushed after each alert.
#[derive(Debug)]
pub struct Printer<W: Write> {
    out: W,
    formats: Vec<Format>,
}

impl<W: Write> Printer<W> {
    /// A printer over `out` (for example [`stdout()`]) printing each alert once per format.
    pub fn new(out: W, formats: Vec<Format>) -> Self {
        Printer { out, formats }
    }

    /// Prints one alert in each format: an NDJSON line, or the terminal view.
    pub fn print(&mut self, alert: &Alert) -> io::Result<()> {
        for format in &self.formats {
            match format {
                Format::Json => {
                    serde_json::to_writer(&mut self.out, alert)?;
                    self.out.write_all(b"\n")?;
                }
                Format::Text => writeln!(self.out, "{}", crate::terminal::render(alert))?,
            }
            self.out.flush()?;
        }
        Ok(())
    }
}

/// Whether fd 1 was closed when the process started (`schedwatch replay … >&-`).
static STDOUT_CLOSED: AtomicBool = AtomicBool::new(false);

/// Tells every [`Stdout`] that fd 1 was closed when the process started. Rust's runtime opens
/// `/dev/null` in its place before `main` (so that no file opened later becomes "stdout"), and
/// writes there succeed: without this, alerts printed to a closed stdout would be counted as
/// sent. `main` finds out before the runtime starts and calls this first thing.
pub fn stdout_was_closed() {
    STDOUT_CLOSED.store(true, Ordering::Relaxed);
}

/// Standard output for alerts, where a write error is an error: stdout closed when the process
/// started fails every write, as a closed descriptor would (`EBADF`), and a pipe whose reader
/// has gone fails with `EPIPE` (Rust programs ignore SIGPIPE, so it surfaces as an error).
#[derive(Debug, Default)]
pub struct Stdout(());

/// stdout for alerts (see [`Stdout`]).
pub fn stdout() -> Stdout {
    Stdout(())
}

impl Stdout {
    fn check(&self) -> io::Result<()> {
        if STDOUT_CLOSED.load(Ordering::Relaxed) {
            return Err(io::Error::other(
                "it was closed when schedwatch started (>&-)",
            ));
        }
        Ok(())
    }
}

impl Write for Stdout {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.check()?;
        io::stdout().write(buf)
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.check()?;
        io::stdout().lock().write_all(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.check()?;
        io::stdout().flush()
    }
}

/// A receiver that prints alerts to a writer — stdout, or a file appended to — flushed after
/// each: NDJSON (CONTRACT section 4) or the terminal view.
pub struct WriterReceiver<W: Write + Send> {
    pub(crate) name: String,
    /// Names the writer in delivery errors.
    pub(crate) label: String,
    /// Whether a write error may pass (a full disk) or will not (stdout closed).
    pub(crate) retry_errors: bool,
    pub(crate) out: Mutex<Printer<W>>,
}

/// A stdout receiver.
pub type StdoutReceiver = WriterReceiver<Stdout>;

impl WriterReceiver<Stdout> {
    /// A stdout receiver printing each alert in every one of `formats`. A closed stdout (a pipe
    /// whose reader went away) will not get better by waiting: its errors are permanent.
    pub fn stdout(name: &str, formats: Vec<Format>) -> StdoutReceiver {
        WriterReceiver {
            name: name.to_owned(),
            label: "stdout".to_owned(),
            retry_errors: false,
            out: Mutex::new(Printer::new(stdout(), formats)),
        }
    }
}

impl<W: Write + Send> Sink for WriterReceiver<W> {
    fn name(&self) -> &str {
        &self.name
    }

    fn send<'a>(&'a self, alert: &'a Alert) -> BoxFuture<'a, Result<(), DeliveryError>> {
        let result = {
            let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
            out.print(alert)
        }
        .map_err(|e| {
            let reason = format!("{}: {e}", self.label);
            if self.retry_errors {
                DeliveryError::Retryable {
                    reason,
                    after: None,
                }
            } else {
                DeliveryError::Permanent { reason }
            }
        });
        Box::pin(async move { result })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alert::*;
    use chrono::TimeZone;

    fn alert() -> Alert {
        let t = chrono::Utc.with_ymd_and_hms(2026, 11, 20, 9, 0, 1).unwrap();
        Alert {
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
        }
    }

    #[test]
    fn writes_one_contract_line_per_alert() {
        let alert = alert();
        let mut printer = Printer::new(Vec::new(), vec![Format::Json]);
        printer.print(&alert).unwrap();
        let out = String::from_utf8(printer.out).unwrap();
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

    #[test]
    fn prints_each_alert_once_per_format_in_order() {
        let alert = alert();
        let mut printer = Printer::new(Vec::new(), vec![Format::Text, Format::Json]);
        printer.print(&alert).unwrap();
        let out = String::from_utf8(printer.out).unwrap();
        let view = crate::terminal::render(&alert);
        let (text, json) = out.split_at(view.len() + 1);
        assert_eq!(text, format!("{view}\n"));
        assert_eq!(
            serde_json::from_str::<Alert>(json.trim_end()).unwrap(),
            alert
        );
    }
}
