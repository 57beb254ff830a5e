//! The email sink: each alert built into a multipart message and sent through lettre, with a
//! deadline on the whole send.

use std::fmt;
use std::time::Duration;

use lettre::message::{Mailbox, MultiPart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use super::config::{is_loopback, parse_mailbox, parse_mailboxes};
use super::render::{render_html, render_subject_with_prefix, render_text};
use super::sanitise::header_token;
use super::{EmailConfig, EmailError, Security, Username};
use crate::delivery::{quote, BoxFuture, DeliveryError, Sink};
use crate::redact::Redactor;
use crate::Alert;

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
    fn subject(&self, alert: &Alert) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn config(json: serde_json::Value) -> Result<EmailConfig, serde_json::Error> {
        serde_json::from_value(json)
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
}
