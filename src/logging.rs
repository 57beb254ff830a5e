//! Logs on stderr through `tracing`: readable text on a terminal, or Cloud Logging's structured
//! JSON — one object a line with `severity`, `message`, `time`, the event's fields and its
//! source location — which Cloud Run, GKE and the Ops Agent turn into structured log entries.
//!
//! The format is chosen at start (`--log-format`, `SCHEDWATCH_LOG_FORMAT`) and may be set once
//! more by the config's `[log] format` after it is read; `auto` means JSON when `K_SERVICE` is
//! set (Cloud Run), text otherwise.

use std::fmt;
use std::io::IsTerminal as _;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering::Relaxed};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::{Format, Full, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// A log format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// JSON on Cloud Run (`K_SERVICE` set), text elsewhere.
    #[default]
    Auto,
    /// Readable text.
    Text,
    /// Cloud Logging's structured JSON.
    Json,
}

/// `[log]` in the config file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `auto`, `text` or `json`; `--log-format` and `SCHEDWATCH_LOG_FORMAT` win.
    pub format: LogFormat,
}

const TEXT: u8 = 0;
const JSON: u8 = 1;
/// The format in use: the formatter reads it for every event.
static CURRENT: AtomicU8 = AtomicU8::new(TEXT);
/// Whether the command line or the environment chose the format (the config then does not).
static CHOSEN: AtomicBool = AtomicBool::new(false);

fn resolve(format: LogFormat) -> u8 {
    match format {
        LogFormat::Text => TEXT,
        LogFormat::Json => JSON,
        LogFormat::Auto if std::env::var_os("K_SERVICE").is_some_and(|s| !s.is_empty()) => JSON,
        LogFormat::Auto => TEXT,
    }
}

/// Sets up logging on stderr; `format` is the command line's (or environment's) choice.
pub fn init(filter: &str, format: Option<LogFormat>) {
    if let Some(f) = format {
        CHOSEN.store(true, Relaxed);
        CURRENT.store(resolve(f), Relaxed);
    } else {
        CURRENT.store(resolve(LogFormat::Auto), Relaxed);
    }
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .fmt_fields(EscapedFields)
        .event_format(Switch {
            text: tracing_subscriber::fmt::format().with_target(false),
        })
        .init();
}

/// Applies the config's `[log] format`, unless the command line chose one.
pub fn configure(config: &LogConfig) {
    if !CHOSEN.load(Relaxed) {
        CURRENT.store(resolve(config.format), Relaxed);
    }
}

/// Text or JSON, as [`CURRENT`] says.
struct Switch {
    text: Format<Full, tracing_subscriber::fmt::time::SystemTime>,
}

impl<S, N> FormatEvent<S, N> for Switch
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        if CURRENT.load(Relaxed) == JSON {
            cloud_logging(writer, event)
        } else {
            self.text.format_event(ctx, writer, event)
        }
    }
}

/// The text format's fields: the message, then `name=value` for each other field, every
/// control and bidi character escaped ([`schedwatch_sinks::escape`]). A value from a log entry,
/// a job config or a receiver's answer cannot start a forged log line nor drive the terminal.
/// (tracing-subscriber's own fields escape ESC in messages only: not CR and LF, and not a
/// field written with `%`.)
pub struct EscapedFields;

impl<'w> FormatFields<'w> for EscapedFields {
    fn format_fields<R: tracing_subscriber::field::RecordFields>(
        &self,
        writer: Writer<'w>,
        fields: R,
    ) -> fmt::Result {
        let mut visitor = EscapingVisitor {
            writer,
            first: true,
            result: Ok(()),
        };
        fields.record(&mut visitor);
        visitor.result
    }
}

struct EscapingVisitor<'w> {
    writer: Writer<'w>,
    first: bool,
    result: fmt::Result,
}

impl EscapingVisitor<'_> {
    fn write(&mut self, field: &Field, value: &str) {
        if self.result.is_err() {
            return;
        }
        let value = schedwatch_sinks::escape::line(value);
        let sep = if self.first { "" } else { " " };
        self.first = false;
        self.result = match field.name() {
            "message" => write!(self.writer, "{sep}{value}"),
            name => write!(
                self.writer,
                "{sep}{}={value}",
                name.strip_prefix("r#").unwrap_or(name)
            ),
        };
    }
}

impl Visit for EscapingVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.write(field, value)
        } else {
            self.write(field, &format!("{value:?}"))
        }
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.write(field, &value.to_string())
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.write(field, &format!("{value:?}"))
    }
}

/// One Cloud Logging structured entry.
fn cloud_logging(mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
    let meta = event.metadata();
    let mut fields = JsonFields(Map::new());
    event.record(&mut fields);
    let mut entry = fields.0;
    let message = entry
        .remove("message")
        .unwrap_or(Value::String(String::new()));
    let mut out = Map::with_capacity(entry.len() + 5);
    out.insert("severity".into(), severity(*meta.level()).into());
    out.insert("message".into(), message);
    out.insert(
        "time".into(),
        chrono::Utc::now()
            .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
            .into(),
    );
    out.insert("target".into(), meta.target().into());
    if let (Some(file), Some(line)) = (meta.file(), meta.line()) {
        out.insert(
            "logging.googleapis.com/sourceLocation".into(),
            serde_json::json!({"file": file, "line": line.to_string(), "function": meta.target()}),
        );
    }
    out.extend(entry);
    let line = serde_json::to_string(&Value::Object(out)).map_err(|_| fmt::Error)?;
    writeln!(writer, "{line}")
}

/// Cloud Logging's `LogSeverity` names.
fn severity(level: Level) -> &'static str {
    match level {
        Level::ERROR => "ERROR",
        Level::WARN => "WARNING",
        Level::INFO => "INFO",
        Level::DEBUG | Level::TRACE => "DEBUG",
    }
}

/// An event's fields as JSON values.
struct JsonFields(Map<String, Value>);

impl Visit for JsonFields {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().into(), format!("{value:?}").into());
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().into(), value.into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// A writer into a shared buffer.
    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Buf {
        type Writer = Buf;
        fn make_writer(&'a self) -> Buf {
            self.clone()
        }
    }

    #[test]
    fn text_logs_escape_what_an_entry_or_a_config_can_carry() {
        let buf = Buf::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(buf.clone())
            .with_ansi(false)
            .fmt_fields(EscapedFields)
            .event_format(Switch {
                text: tracing_subscriber::fmt::format().with_target(false),
            })
            .finish();
        let evil = "https://x.example/\x1b]0;pwned\x07\n2026-01-01T00:00:00Z ERROR forged\r\u{202e}\u{9b}2J";
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(url = %evil, debug_info = evil, "bad target {evil}");
            tracing::info_span!("lookup", job = %evil).in_scope(|| tracing::info!("in a span"));
        });
        let out = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        assert_eq!(out.matches('\n').count(), 2, "one line per event:\n{out}");
        let unsafe_chars: Vec<char> = out
            .trim_end()
            .chars()
            .filter(|&c| c != '\n' && schedwatch_sinks::escape::is_unsafe(c))
            .collect();
        assert!(unsafe_chars.is_empty(), "{unsafe_chars:?} in\n{out}");
        assert!(!out
            .lines()
            .any(|l| l.starts_with("2026-01-01T00:00:00Z ERROR")));
        for shown in [
            r"bad target https://x.example/\x1b]0;pwned\x07\n2026-01-01T00:00:00Z ERROR forged\r\u{202e}\u{9b}2J",
            r"url=https://x.example/\x1b]0;pwned\x07\n",
            r"debug_info=",
            r"lookup{job=https://x.example/\x1b]0;pwned",
        ] {
            assert!(out.contains(shown), "{shown} not in\n{out}");
        }
    }
}
