//! What every sink shares: the [`Sink`] interface, the outcome of one delivery attempt, how an
//! HTTP answer maps to it, the HTTP plumbing of the Slack, webhook and PagerDuty sinks, and the
//! `timeout` setting.
//!
//! The delivery queue (in the processor) retries [`DeliveryError::Retryable`] with exponential
//! backoff and jitter, honouring `after` (a `Retry-After`), and records
//! [`DeliveryError::Permanent`] as failed without retrying.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use reqwest::header::RETRY_AFTER;
use serde::{Deserialize, Deserializer};

use crate::redact::Redactor;
use crate::Alert;

/// A boxed future, so sinks can live behind `dyn Sink`.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One place alerts go.
pub trait Sink: Send + Sync {
    /// The receiver's name from the config, for logs and metrics.
    fn name(&self) -> &str;
    /// Delivers one alert (one attempt; the queue decides about retries).
    fn send<'a>(&'a self, alert: &'a Alert) -> BoxFuture<'a, Result<(), DeliveryError>>;
}

/// Why a delivery attempt failed. Reasons never contain secrets (webhook URLs, tokens,
/// passwords): they name the receiver's kind, the status and the answer's first bytes, which
/// go through `quote` (secrets redacted, controls escaped).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DeliveryError {
    /// Worth trying again: a 5xx, a 429, a timeout, a refused connection.
    #[error("{reason} (will retry)")]
    Retryable {
        /// What happened.
        reason: String,
        /// How long the receiver asked us to wait (`Retry-After`), if it did.
        after: Option<Duration>,
    },
    /// Not worth trying again: the receiver rejected the alert (a 4xx other than 408 and 429)
    /// or the sink is misconfigured.
    #[error("{reason} (permanent)")]
    Permanent {
        /// What happened.
        reason: String,
    },
}

impl DeliveryError {
    /// Whether the queue should try again.
    pub fn is_retryable(&self) -> bool {
        matches!(self, DeliveryError::Retryable { .. })
    }
}

/// The most of what a receiver said that a delivery error quotes, in bytes once escaped: enough
/// for any receiver's own error (Slack's `invalid_payload`, PagerDuty's JSON errors of about 150
/// bytes, an SMTP reply, which RFC 5321 keeps under 512 and servers under 100), little enough
/// that a chatty or hostile receiver (an HTML error page, a stack trace) cannot fill a log line
/// or the outbox row's `last_error`.
pub const MAX_QUOTED: usize = 300;

/// What a receiver said (an HTTP answer's body, an SMTP reply, a transport error's text), fit to
/// quote in a [`DeliveryError`]: every form of `secrets` redacted first (see [`Redactor`]), then
/// control and invisible characters escaped (`\n`, `\u{1b}`…), so it cannot forge a log line
/// or drive a terminal, then cut to [`MAX_QUOTED`] bytes (ending in `…` when cut). `cut`: `said`
/// is itself only the start of the answer. The one way a receiver's words reach an error.
pub(crate) fn quote(said: &[u8], cut: bool, secrets: &Redactor) -> String {
    let text = secrets.redact(said, cut);
    let text = text.trim();
    let mut out = String::with_capacity(text.len().min(MAX_QUOTED));
    for c in text.chars() {
        let escaped: String = match c {
            // Quotes need no escape: the quoted text is never parsed back.
            '"' | '\'' => c.to_string(),
            c => c.escape_debug().collect(),
        };
        if out.len() + escaped.len() > MAX_QUOTED {
            out.push('…');
            break;
        }
        out.push_str(&escaped);
    }
    out
}

/// Maps an HTTP answer to a delivery outcome: 2xx delivered; 408, 429 and 5xx retryable (with
/// `Retry-After` in seconds when given); any other status permanent. `what` names the sink
/// ("Slack", "webhook receiver"…); `body` (the first [`ANSWER_BYTES`] at most) is [`quote`]d,
/// without `secrets`.
pub(crate) fn http_outcome(
    what: &str,
    status: u16,
    retry_after: Option<&str>,
    body: &[u8],
    secrets: &Redactor,
) -> Result<(), DeliveryError> {
    if (200..300).contains(&status) {
        return Ok(());
    }
    let body = quote(body, body.len() >= ANSWER_BYTES, secrets);
    let reason = format!("{what} answered HTTP {status}: \"{body}\"");
    if status == 408 || status == 429 || (500..600).contains(&status) {
        let after = retry_after
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        Err(DeliveryError::Retryable { reason, after })
    } else {
        Err(DeliveryError::Permanent { reason })
    }
}

/// Maps a transport error (no HTTP answer) to a retryable outcome: what failed and why (the
/// error and its causes), without the URL, and [`quote`]d without `secrets` in case a cause
/// quotes the URL or a header anyway.
pub(crate) fn transport_error(what: &str, e: reqwest::Error, secrets: &Redactor) -> DeliveryError {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else {
        "request failed"
    };
    let e = e.without_url();
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(&e);
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    DeliveryError::Retryable {
        reason: format!("{what}: {kind}: {}", quote(text.as_bytes(), false, secrets)),
        after: None,
    }
}

// ---- HTTP plumbing shared by the Slack, webhook and PagerDuty sinks, and the `timeout`
// setting of every sink ----

/// The default `timeout` of every HTTP sink: long enough for a slow receiver, short enough that
/// one hung receiver does not hold the delivery queue.
pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// How much of an answer's body is read: secrets are redacted in all of it before the quote is
/// cut to [`MAX_QUOTED`] bytes, so a secret that starts inside the quote is found whole, even
/// encoded three times over (up to 9 bytes a character); reading more would only be thrown away.
pub(crate) const ANSWER_BYTES: usize = 4096;

pub(crate) fn default_timeout() -> Duration {
    DEFAULT_TIMEOUT
}

/// Reads a `timeout` in the grammar of every duration key of the config, humantime's (`"10s"`,
/// `"1500ms"`, `"1m30s"`, `"2 min"`). Its range (1s to 5m) is checked with the rest of the
/// config, by the application, so every key's range is checked and reported alike (with the
/// line).
pub(crate) fn deserialize_timeout<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    humantime::parse_duration(&text).map_err(|e| {
        serde::de::Error::custom(format!(
            "timeout {text:?}: {e}; write a duration such as \"10s\", \"1500ms\" or \"1m30s\""
        ))
    })
}

/// An absolute http(s) URL with a host.
pub fn is_http_url(text: &str) -> bool {
    reqwest::Url::parse(text)
        .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some())
}

/// The one client a sink keeps (and schedwatch's push-token key fetch). Redirects are not followed: a POST that is redirected is a
/// misconfigured URL, and following it would resend secret headers to another address.
pub fn http_client(timeout: Duration) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("schedwatch/", env!("CARGO_PKG_VERSION")))
        .build()
}

/// Sends one request and maps the answer with [`http_outcome`] (or [`transport_error`] when
/// there is none). `secrets` are what the request carried: a receiver may echo them.
pub(crate) async fn post(
    what: &str,
    request: reqwest::RequestBuilder,
    secrets: &Redactor,
) -> Result<(), DeliveryError> {
    let mut response = request
        .send()
        .await
        .map_err(|e| transport_error(what, e, secrets))?;
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    // Read (a bounded part of) the body even on success, so the connection can be reused. A
    // read error leaves what was read: the status is the answer.
    let mut bytes = Vec::new();
    while bytes.len() < ANSWER_BYTES {
        match response.chunk().await {
            Ok(Some(chunk)) => bytes.extend_from_slice(&chunk),
            _ => break,
        }
    }
    bytes.truncate(ANSWER_BYTES);
    http_outcome(what, status, retry_after.as_deref(), &bytes, secrets)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_parse_in_the_config_spelling() {
        let parse = |text: &str| {
            deserialize_timeout(
                serde::de::value::StrDeserializer::<serde::de::value::Error>::new(text),
            )
        };
        assert_eq!(parse("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse("1500ms"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse("1m"), Ok(Duration::from_secs(60)));
        // The grammar of every other duration key, now the sinks' too.
        assert_eq!(parse("2min"), Ok(Duration::from_secs(120)));
        assert_eq!(parse("1h"), Ok(Duration::from_secs(3600)));
        for bad in ["", "10", "s", "ten", "-1s", "18446744073709551615m1s"] {
            assert!(parse(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn statuses_map_to_retry_decisions() {
        let none = Redactor::new();
        assert_eq!(http_outcome("x", 204, None, b"", &none), Ok(()));
        assert!(http_outcome("x", 500, None, b"", &none)
            .unwrap_err()
            .is_retryable());
        assert_eq!(
            http_outcome("x", 429, Some("7"), b"slow down", &none),
            Err(DeliveryError::Retryable {
                reason: "x answered HTTP 429: \"slow down\"".into(),
                after: Some(Duration::from_secs(7))
            })
        );
        assert!(!http_outcome("x", 400, None, b"invalid_payload", &none)
            .unwrap_err()
            .is_retryable());
        assert!(!http_outcome("x", 404, None, b"no_service", &none)
            .unwrap_err()
            .is_retryable());
    }

    #[test]
    fn quotes_are_redacted_escaped_and_short() {
        let mut secrets = Redactor::new();
        secrets.secret("tok-0123456789");
        let forged = "bad tok-0123456789\n2026-01-01T00:00:00Z INFO all good\u{1b}[2J\u{202e}";
        assert_eq!(
            quote(forged.as_bytes(), false, &secrets),
            "bad [redacted]\\n2026-01-01T00:00:00Z INFO all good\\u{1b}[2J\\u{202e}"
        );
        let long = "x".repeat(10_000);
        let q = quote(long.as_bytes(), false, &secrets);
        assert!(
            q.len() <= MAX_QUOTED + '…'.len_utf8() && q.ends_with('…'),
            "{q}"
        );
        let escapes = "\u{7}".repeat(1000);
        let q = quote(escapes.as_bytes(), false, &secrets);
        assert!(q.len() <= MAX_QUOTED + '…'.len_utf8(), "{}", q.len());
        assert!(
            q.trim_end_matches('…').ends_with("\\u{7}"),
            "not cut inside an escape: {q}"
        );
        // Redaction comes before the cut: a secret at the cut is not half shown.
        let at_cut = format!("{}tok-0123456789", "y".repeat(MAX_QUOTED - 5));
        let q = quote(at_cut.as_bytes(), false, &secrets);
        assert!(!q.contains("tok-"), "{q}");
        // A secret cut short where the answer was cut when read.
        let read = format!("{}tok-01234", "z".repeat(10));
        assert_eq!(
            quote(read.as_bytes(), true, &secrets),
            "zzzzzzzzzz[redacted]"
        );
    }
}
