//! The email sink: one multipart/alternative message (plain text and HTML) per alert, sent over
//! SMTP through lettre.
//!
//! ```toml
//! [[receivers]]
//! name = "oncall-mail"
//!
//! [receivers.email]
//! host = "smtp.example.com"
//! security = "starttls"            # port 587; or "tls" (465), or "plain" (25, local relays only)
//! username = "schedwatch@example.com"
//! password = { env = "SMTP_PASSWORD" }   # or { file = "/run/secrets/smtp-password" }
//! from = "schedwatch <schedwatch@example.com>"
//! to = ["oncall@example.com"]
//! cc = ["platform@example.com"]
//! timeout = "10s"                  # the whole send, connect to last reply
//! subject_prefix = "[schedwatch]"
//! ```
//!
//! Everything in the message that comes from logs (job ids, URLs, summaries) is untrusted: the
//! subject and every value are kept on one line with each control or invisible character shown
//! as an escape ([`crate::escape`]), so a job id like `"x\r\nBcc: evil@example.com"` can add
//! neither a header nor a recipient nor a line of the body; the HTML part also escapes every
//! value; the fixes and the diagnosis's words keep their own line breaks and nothing else.
//!
//! Delivery outcomes: 4xx replies, refused connections, TLS handshakes and timeouts are
//! [`DeliveryError::Retryable`]; 5xx replies (550 mailbox unavailable, 553, 535 bad credentials)
//! and client-side refusals (no common AUTH mechanism, no STARTTLS) are
//! [`DeliveryError::Permanent`]. Reasons name the server, never the password.

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Utc};
use lettre::message::{Mailbox, MultiPart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use serde::Deserialize;

use crate::delivery::{quote, BoxFuture, DeliveryError, Sink};
use crate::redact::Redactor;
use crate::secret::{SecretError, SecretRef};
use crate::{Alert, EventKind};

/// The subject prefix when the config names none.
pub const DEFAULT_SUBJECT_PREFIX: &str = "[schedwatch]";

/// The send timeout when the config names none: long enough for a relay's greeting delay, a
/// TLS handshake and AUTH, short enough that one dead server does not hold the delivery queue.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Subjects longer than this are cut (with `…`): job ids and codes are short, and a subject is
/// for reading in an inbox list, not for the whole story.
const MAX_SUBJECT_CHARS: usize = 250;

/// How the connection to the SMTP server is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Security {
    /// Plain connection upgraded with STARTTLS, which is required: a server that does not
    /// offer it is refused before any credential or message is sent. Default port 587.
    #[default]
    Starttls,
    /// TLS from the first byte ("SMTPS", implicit TLS). Default port 465.
    Tls,
    /// No encryption at all. Only for a relay on the same host or in the same pod, and for
    /// tests: anyone on the path reads the alert. Credentials are refused with `plain` unless
    /// the host is a loopback address. Default port 25.
    Plain,
}

impl Security {
    /// The port used when the config names none: 587, 465 or 25.
    pub fn default_port(self) -> u16 {
        match self {
            Security::Starttls => 587,
            Security::Tls => 465,
            Security::Plain => 25,
        }
    }

    /// The config spelling: `starttls`, `tls`, `plain`.
    pub fn as_str(self) -> &'static str {
        match self {
            Security::Starttls => "starttls",
            Security::Tls => "tls",
            Security::Plain => "plain",
        }
    }
}

/// The SMTP username: written in the config (`username = "alerts@example.com"`) or, when the
/// provider makes it a credential too (an SES access key id), read like a secret
/// (`username = { env = "SMTP_USERNAME" }`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum Username {
    /// The username itself.
    Plain(String),
    /// Where to read it.
    Secret(SecretRef),
}

/// An email receiver's config (the `email` table of a `[[receivers]]` entry).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmailConfig {
    /// The SMTP server's host name (also the name its TLS certificate must carry).
    pub host: String,
    /// The SMTP port; by default 587 for `starttls`, 465 for `tls`, 25 for `plain`.
    #[serde(default)]
    pub port: Option<u16>,
    /// `starttls` (default), `tls` or `plain`; see [`Security`].
    #[serde(default)]
    pub security: Security,
    /// The SMTP username, when the server wants AUTH. Needs `password` too.
    #[serde(default)]
    pub username: Option<Username>,
    /// The SMTP password, from an environment variable or a file: `{ env = "SMTP_PASSWORD" }`
    /// or `{ file = "/run/secrets/smtp" }`. Never written in the config.
    #[serde(default)]
    pub password: Option<SecretRef>,
    /// The sender: `alerts@example.com` or `schedwatch <alerts@example.com>`.
    pub from: String,
    /// The recipients, at least one.
    pub to: Vec<String>,
    /// Copied recipients.
    #[serde(default)]
    pub cc: Vec<String>,
    /// The longest one send may take, from connecting to the server's last reply, as `"10s"`,
    /// `"1m30s"` or `"1500ms"` (the same `timeout` as every HTTP sink), 1s to 5m. Default 10 s.
    #[serde(
        default = "default_timeout",
        deserialize_with = "crate::delivery::deserialize_timeout"
    )]
    pub timeout: Duration,
    /// Put before every subject; `""` for none. Default `[schedwatch]`.
    #[serde(default = "default_subject_prefix")]
    pub subject_prefix: String,
}

fn default_timeout() -> Duration {
    DEFAULT_TIMEOUT
}

fn default_subject_prefix() -> String {
    DEFAULT_SUBJECT_PREFIX.to_owned()
}

impl EmailConfig {
    /// The configured port, or the default for the security mode.
    pub fn port(&self) -> u16 {
        self.port.unwrap_or(self.security.default_port())
    }
}

/// Why an email receiver's config cannot be used. Names the field to change, never a secret.
#[derive(Debug, thiserror::Error)]
pub enum EmailError {
    /// An address does not parse.
    #[error("email receiver: `{field}` = {value:?} is not an email address ({reason}); write `name@example.com` or `Name <name@example.com>`")]
    Address {
        /// The field: `from`, `to[0]`, `cc[1]`…
        field: String,
        /// The value as written (addresses are not secrets).
        value: String,
        /// What the parser said.
        reason: String,
    },
    /// `to` is empty.
    #[error("email receiver: `to` needs at least one address")]
    NoRecipients,
    /// The host is empty.
    #[error("email receiver: `host` is empty; name the SMTP server")]
    NoHost,
    /// `username` without `password` or the reverse.
    #[error(
        "email receiver: `username` and `password` go together; set both for AUTH, or neither"
    )]
    HalfCredentials,
    /// Credentials over an unencrypted connection to another host.
    #[error("email receiver: `security = \"plain\"` would send the SMTP password unencrypted to {host}; use `starttls` or `tls`, or a relay on localhost")]
    PlainCredentials {
        /// The configured host.
        host: String,
    },
    /// The username or password cannot be read.
    #[error("email receiver: `{field}`: {source}")]
    Secret {
        /// `username` or `password`.
        field: &'static str,
        /// Why (names the variable or file, never the value).
        source: SecretError,
    },
    /// lettre refused the TLS setup.
    #[error("email receiver: cannot set up TLS for {host}: {reason}")]
    Tls {
        /// The configured host.
        host: String,
        /// What lettre said.
        reason: String,
    },
}

/// Sends each alert as an email through one SMTP server.
pub struct EmailSink {
    name: String,
    host: String,
    port: u16,
    security: Security,
    from: Mailbox,
    to: Vec<Mailbox>,
    cc: Vec<Mailbox>,
    subject_prefix: String,
    /// The deadline for one whole send (connect, TLS, AUTH, envelope, data, quit). lettre's own
    /// timeout bounds only the TCP connect on tokio, so this is what stops a silent server.
    deadline: Duration,
    /// Whether the sink logs in (AUTH).
    auth: bool,
    /// The password (and the user, when it is a secret) in every form AUTH sends them, to redact
    /// from the server's replies before they are quoted in an error: a server may echo them.
    secrets: Redactor,
    transport: AsyncSmtpTransport<Tokio1Executor>,
}

impl fmt::Debug for EmailSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EmailSink")
            .field("name", &self.name)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("security", &self.security)
            .field("from", &self.from.to_string())
            .field(
                "to",
                &self.to.iter().map(Mailbox::to_string).collect::<Vec<_>>(),
            )
            .field(
                "cc",
                &self.cc.iter().map(Mailbox::to_string).collect::<Vec<_>>(),
            )
            .field("auth", &self.auth)
            .finish_non_exhaustive()
    }
}

impl EmailSink {
    /// Checks the config (addresses, credentials, TLS) and reads the secrets now, so a mistake
    /// stops schedwatch at start rather than at the first alert. Connects to nothing.
    pub fn new(name: impl Into<String>, config: &EmailConfig) -> Result<EmailSink, EmailError> {
        let host = config.host.trim().to_owned();
        if host.is_empty() {
            return Err(EmailError::NoHost);
        }
        let from = parse_mailbox("from", &config.from)?;
        if config.to.is_empty() {
            return Err(EmailError::NoRecipients);
        }
        let to = parse_mailboxes("to", &config.to)?;
        let cc = parse_mailboxes("cc", &config.cc)?;

        let credentials = match (&config.username, &config.password) {
            (None, None) => None,
            (Some(user), Some(password)) => {
                let (user, user_is_secret) = match user {
                    Username::Plain(u) => (u.clone(), false),
                    Username::Secret(r) => {
                        let user = r.read().map_err(|source| EmailError::Secret {
                            field: "username",
                            source,
                        })?;
                        (user.expose().to_owned(), true)
                    }
                };
                let password = password.read().map_err(|source| EmailError::Secret {
                    field: "password",
                    source,
                })?;
                Some((user, user_is_secret, password))
            }
            _ => return Err(EmailError::HalfCredentials),
        };
        if credentials.is_some() && config.security == Security::Plain && !is_loopback(&host) {
            return Err(EmailError::PlainCredentials { host });
        }

        let port = config.port();
        let tls = |host: &str| {
            TlsParameters::new(host.to_owned()).map_err(|e| EmailError::Tls {
                host: host.to_owned(),
                reason: e.to_string(),
            })
        };
        let tls = match config.security {
            Security::Starttls => Tls::Required(tls(&host)?),
            Security::Tls => Tls::Wrapper(tls(&host)?),
            Security::Plain => Tls::None,
        };
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host.clone())
            .port(port)
            .tls(tls)
            .timeout(Some(config.timeout));
        let mut secrets = Redactor::new();
        let auth = credentials.is_some();
        if let Some((user, user_is_secret, password)) = credentials {
            secrets.login(&user, user_is_secret, password.expose());
            builder = builder.credentials(Credentials::new(user, password.expose().to_owned()));
        }

        Ok(EmailSink {
            name: name.into(),
            host,
            port,
            security: config.security,
            from,
            to,
            cc,
            subject_prefix: config.subject_prefix.clone(),
            deadline: config.timeout,
            auth,
            secrets,
            transport: builder.build(),
        })
    }

    /// The subject this sink gives an alert (with its configured prefix).
    pub fn subject(&self, alert: &Alert) -> String {
        render_subject_with_prefix(&self.subject_prefix, alert)
    }

    /// The message for one alert: headers from the config, subject and both bodies rendered.
    fn message(&self, alert: &Alert) -> Result<Message, DeliveryError> {
        let mut builder = Message::builder()
            .from(self.from.clone())
            .subject(self.subject(alert))
            // A random `<…@hostname>` id: relays and spam filters expect one.
            .message_id(None)
            // One thread per incident in clients that follow References (the id is ours, but
            // only its safe characters go into a header).
            .references(format!("<{}@schedwatch>", header_token(&alert.incident_id)));
        for to in &self.to {
            builder = builder.to(to.clone());
        }
        for cc in &self.cc {
            builder = builder.cc(cc.clone());
        }
        builder
            .multipart(MultiPart::alternative_plain_html(
                render_text(alert),
                render_html(alert),
            ))
            .map_err(|e| DeliveryError::Permanent {
                reason: format!(
                    "email receiver {}: cannot build the message: {e}",
                    self.name
                ),
            })
    }

    /// Maps a lettre SMTP error to a delivery outcome; what the server said is [`quote`]d,
    /// without the credentials.
    fn outcome(&self, e: lettre::transport::smtp::Error) -> DeliveryError {
        let said = quote(e.to_string().as_bytes(), false, &self.secrets);
        let reason = format!("SMTP server {}:{}: {said}", self.host, self.port);
        if e.is_permanent() || e.is_client() {
            // 5xx: the server refused for good (unknown mailbox, bad credentials, policy).
            // Client: we cannot talk to this server as configured (no STARTTLS, no common AUTH).
            DeliveryError::Permanent { reason }
        } else {
            // 4xx, refused or dropped connections, TLS handshakes, timeouts, garbled replies.
            DeliveryError::Retryable {
                reason,
                after: None,
            }
        }
    }
}

impl Sink for EmailSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn send<'a>(&'a self, alert: &'a Alert) -> BoxFuture<'a, Result<(), DeliveryError>> {
        Box::pin(async move {
            let message = self.message(alert)?;
            match tokio::time::timeout(self.deadline, self.transport.send(message)).await {
                Ok(Ok(_response)) => Ok(()),
                Ok(Err(e)) => Err(self.outcome(e)),
                Err(_elapsed) => Err(DeliveryError::Retryable {
                    reason: format!(
                        "SMTP server {}:{}: no answer within {:?}",
                        self.host, self.port, self.deadline
                    ),
                    after: None,
                }),
            }
        })
    }
}

fn parse_mailbox(field: &str, value: &str) -> Result<Mailbox, EmailError> {
    value
        .trim()
        .parse::<Mailbox>()
        .map_err(|e| EmailError::Address {
            field: field.to_owned(),
            value: value.to_owned(),
            reason: e.to_string(),
        })
}

fn parse_mailboxes(field: &str, values: &[String]) -> Result<Vec<Mailbox>, EmailError> {
    values
        .iter()
        .enumerate()
        .map(|(i, v)| parse_mailbox(&format!("{field}[{i}]"), v))
        .collect()
}

fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

// ---------------------------------------------------------------------------------------------
// Rendering. Pure functions of the alert, so tests (and a future `schedwatch preview`) can call
// them without a server.

/// The subject with the default prefix, e.g.
/// `[schedwatch] FIRING commit-worker (acme-data-prod): oidc-token-for-google-api`.
pub fn render_subject(alert: &Alert) -> String {
    render_subject_with_prefix(DEFAULT_SUBJECT_PREFIX, alert)
}

/// The subject with `prefix` (none when empty): one line, control characters removed, at most
/// 250 characters.
pub fn render_subject_with_prefix(prefix: &str, alert: &Alert) -> String {
    let subject = format!(
        "{} {} {} ({}): {}",
        prefix,
        event_word(alert.event),
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
        let headline = match alert.event {
            EventKind::Firing => format!("FIRING: Cloud Scheduler job {job} ({place}) {fails}."),
            EventKind::Repeat => {
                format!("STILL FAILING: Cloud Scheduler job {job} ({place}) still {fails}.")
            }
            EventKind::Resolved => match alert.resolved_at {
                Some(at) => format!(
                    "RESOLVED: Cloud Scheduler job {job} ({place}) succeeded again at {}.",
                    when(at)
                ),
                None => format!("RESOLVED: Cloud Scheduler job {job} ({place}) succeeded again."),
            },
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

fn event_word(event: EventKind) -> &'static str {
    match event {
        EventKind::Firing => "FIRING",
        EventKind::Repeat => "STILL FAILING",
        EventKind::Resolved => "RESOLVED",
    }
}

fn when(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

/// One line for a header, a table cell or a paragraph: control and invisible characters
/// (CR, LF, ESC, NEL, bidi overrides…) as visible escapes ([`crate::escape::line`]), runs of
/// other whitespace as one space, trimmed.
fn one_line(s: &str) -> String {
    crate::escape::line(s)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// A multi-line text (a fix, the diagnosis's words) for a body: its line feeds stay, every
/// other control or invisible character is a visible escape ([`crate::escape::lines`]).
fn multi_line(s: &str) -> String {
    crate::escape::lines(s).into_owned()
}

/// Only the characters that are safe anywhere in a header (for `References`).
fn header_token(s: &str) -> String {
    let t: String = s
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        .take(128)
        .collect();
    if t.is_empty() {
        "incident".to_owned()
    } else {
        t
    }
}

/// HTML escaping for text and attribute values.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 16);
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Escaped text with its line breaks kept.
fn paragraph(s: &str) -> String {
    esc(s).replace('\n', "<br>\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(json: serde_json::Value) -> Result<EmailConfig, serde_json::Error> {
        serde_json::from_value(json)
    }

    #[test]
    fn config_defaults_and_refusals() {
        let c = config(serde_json::json!({
            "host": "smtp.example.com", "from": "a@example.com", "to": ["b@example.com"]
        }))
        .unwrap();
        assert_eq!(c.security, Security::Starttls);
        assert_eq!(c.port(), 587);
        assert_eq!(c.timeout, DEFAULT_TIMEOUT);
        assert_eq!(c.subject_prefix, "[schedwatch]");
        assert!(c.cc.is_empty());

        let c = config(serde_json::json!({
            "host": "h", "from": "a@example.com", "to": ["b@example.com"],
            "security": "tls", "timeout": "1m30s", "username": "u", "password": {"env": "X"}
        }))
        .unwrap();
        assert_eq!(c.port(), 465);
        assert_eq!(c.timeout, Duration::from_secs(90));
        assert_eq!(c.username, Some(Username::Plain("u".into())));

        let c = config(serde_json::json!({
            "host": "h", "from": "a@example.com", "to": ["b@example.com"],
            "security": "plain", "timeout": "3s", "username": {"env": "SMTP_USER"}
        }))
        .unwrap();
        assert_eq!(c.port(), 25);
        assert_eq!(c.timeout, Duration::from_secs(3));
        assert_eq!(
            c.username,
            Some(Username::Secret(SecretRef {
                env: Some("SMTP_USER".into()),
                file: None
            }))
        );

        let base =
            serde_json::json!({"host": "h", "from": "a@example.com", "to": ["b@example.com"]});
        let with = |k: &str, v: serde_json::Value| {
            let mut j = base.clone();
            j[k] = v;
            config(j)
        };
        assert!(
            with("passwd", "x".into()).is_err(),
            "unknown fields are refused"
        );
        assert!(
            with("password", "hunter2".into()).is_err(),
            "a password is never inline"
        );
        assert!(with("security", "ssl".into()).is_err());
        assert!(with("timeout", "10".into()).is_err());
        assert!(with("timeout", "ten".into()).is_err());
    }

    #[test]
    fn addresses_are_checked_and_named() {
        let mut c = config(serde_json::json!({
            "host": "smtp.example.com", "from": "schedwatch <a@example.com>",
            "to": ["b@example.com", "not an address"]
        }))
        .unwrap();
        let e = EmailSink::new("mail", &c).unwrap_err();
        assert!(e.to_string().contains("`to[1]`"), "{e}");

        c.to = vec![];
        assert!(matches!(
            EmailSink::new("mail", &c),
            Err(EmailError::NoRecipients)
        ));

        c.to = vec!["b@example.com".into()];
        c.cc = vec!["c@".into()];
        assert!(EmailSink::new("mail", &c)
            .unwrap_err()
            .to_string()
            .contains("`cc[0]`"));

        c.cc = vec![];
        c.from = "nobody".into();
        assert!(EmailSink::new("mail", &c)
            .unwrap_err()
            .to_string()
            .contains("`from`"));
    }

    #[test]
    fn every_security_mode_builds() {
        for security in ["starttls", "tls", "plain"] {
            let c = config(serde_json::json!({
                "host": "smtp.example.com", "from": "a@example.com", "to": ["b@example.com"],
                "security": security
            }))
            .unwrap();
            let sink = EmailSink::new("mail", &c).unwrap();
            assert_eq!(sink.name(), "mail");
        }
    }

    #[test]
    fn credentials_need_both_halves_and_no_plain_remote() {
        let path = std::env::temp_dir().join(format!("schedwatch-email-pw-{}", std::process::id()));
        std::fs::write(&path, "s3cret\n").unwrap();
        let mut c = config(serde_json::json!({
            "host": "smtp.example.com", "from": "a@example.com", "to": ["b@example.com"],
            "security": "plain", "username": "u", "password": {"file": path}
        }))
        .unwrap();
        let e = EmailSink::new("mail", &c).unwrap_err();
        assert!(matches!(e, EmailError::PlainCredentials { .. }), "{e}");
        c.host = "127.0.0.1".into();
        let sink = EmailSink::new("mail", &c).unwrap();
        assert!(!format!("{sink:?}").contains("s3cret"));
        c.password = None;
        assert!(matches!(
            EmailSink::new("mail", &c),
            Err(EmailError::HalfCredentials)
        ));
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn one_line_strips_every_way_to_a_new_header() {
        assert_eq!(
            one_line("a\r\nBcc: evil@example.com"),
            r"a\r\nBcc: evil@example.com"
        );
        assert_eq!(
            one_line("a\u{85}b\u{2028}c\u{202E}d\x1b[31m"),
            r"a\u{85}b\u{2028}c\u{202e}d\x1b[31m"
        );
        assert_eq!(one_line("  x   y  "), "x y");
        assert_eq!(multi_line("a\r\nb\rc\x07\td"), "a\\r\nb\\rc\\x07\\td");
        assert_eq!(
            esc(r#"<a href="x">'&'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
        assert_eq!(header_token("ab/c d\r\n1"), "abcd1");
        assert_eq!(header_token("\r\n"), "incident");
    }
}
