//! The `email` table of a `[[receivers]]` entry, and the checks of its addresses.

use std::time::Duration;

use lettre::message::Mailbox;
use serde::Deserialize;

use crate::secret::{SecretError, SecretRef};

/// The subject prefix when the config names none.
pub(crate) const DEFAULT_SUBJECT_PREFIX: &str = "[schedwatch]";

/// The send timeout when the config names none: long enough for a relay's greeting delay, a
/// TLS handshake and AUTH, short enough that one dead server does not hold the delivery queue.
pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

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

pub(super) fn parse_mailbox(field: &str, value: &str) -> Result<Mailbox, EmailError> {
    value
        .trim()
        .parse::<Mailbox>()
        .map_err(|e| EmailError::Address {
            field: field.to_owned(),
            value: value.to_owned(),
            reason: e.to_string(),
        })
}

pub(super) fn parse_mailboxes(field: &str, values: &[String]) -> Result<Vec<Mailbox>, EmailError> {
    values
        .iter()
        .enumerate()
        .map(|(i, v)| parse_mailbox(&format!("{field}[{i}]"), v))
        .collect()
}

pub(super) fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
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
}
