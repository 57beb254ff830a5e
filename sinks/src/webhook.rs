//! The generic webhook sink: the CONTRACT section 4 event, POSTed as is, optionally signed, for
//! any receiver (a chat bridge, a ticketing hook, a script).
//!
//! What a receiver gets, for every attempt:
//!
//! - the body: `serde_json::to_vec(&alert)`, the same JSON `--format json` prints ([`body`]);
//! - `Content-Type: application/json`;
//! - `X-Schedwatch-Event: firing | repeat | resolved`;
//! - `X-Schedwatch-Delivery: <incident_id>:<event>:<failure.count>`, identical on every retry of
//!   one event, so a receiver can drop duplicates ([`delivery_id`]);
//! - `X-Schedwatch-Signature: sha256=<hex>` when `signing_secret` is set: HMAC-SHA256 of the
//!   exact body bytes, keyed with the secret ([`sign`]). Receivers recompute it over the raw
//!   body, before parsing, and compare in constant time;
//! - the configured `headers` and `secret_headers`.
//!
//! ```toml
//! [[receivers]]
//! name = "ops-hook"
//! [receivers.webhook]
//! url = { env = "SCHEDWATCH_HOOK_URL" }
//! signing_secret = { file = "/run/secrets/hook-signing-key" }
//! headers = { "X-Team" = "sre" }
//! secret_headers = { Authorization = { env = "SCHEDWATCH_HOOK_TOKEN" } }
//! timeout = "10s"
//! ```
//!
//! This module also holds the HTTP plumbing the three HTTP sinks share (the client, the
//! `timeout` setting, reading an answer into a [`DeliveryError`]).

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use hmac::{Hmac, KeyInit, Mac};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use serde::{Deserialize, Deserializer};
use sha2::Sha256;

use crate::delivery::{http_outcome, transport_error, BoxFuture};
use crate::secret::SecretError;
use crate::{Alert, DeliveryError, Secret, SecretRef, Sink};

/// How this sink names its receiver in delivery errors.
const WHAT: &str = "webhook receiver";

/// The event header: `firing`, `repeat` or `resolved`.
pub const EVENT_HEADER: &str = "x-schedwatch-event";
/// The idempotency header: `<incident_id>:<event>:<failure.count>`.
pub const DELIVERY_HEADER: &str = "x-schedwatch-delivery";
/// The signature header: `sha256=<hex HMAC-SHA256 of the body>`.
pub const SIGNATURE_HEADER: &str = "x-schedwatch-signature";

/// A `[receivers.webhook]` table.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Where to POST. A secret: webhook URLs often carry a token in the path or query.
    pub url: SecretRef,
    /// When set, every body is signed with HMAC-SHA256 under this key and the signature sent in
    /// `X-Schedwatch-Signature: sha256=<hex>`.
    #[serde(default)]
    pub signing_secret: Option<SecretRef>,
    /// Extra headers with plain values, e.g. `{ "X-Team" = "sre" }`.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Extra headers whose values are secrets, e.g. `{ Authorization = { env = "HOOK_TOKEN" } }`.
    /// The whole value is the secret (write `Bearer …` into the variable or file).
    #[serde(default)]
    pub secret_headers: BTreeMap<String, SecretRef>,
    /// How long one attempt may take, from connecting to the answer's status: `"10s"`,
    /// `"500ms"`, `"1m"`. Default 10 s.
    #[serde(default = "default_timeout", deserialize_with = "deserialize_timeout")]
    pub timeout: Duration,
}

/// Why a webhook sink cannot be built. Names the setting, never a secret's value.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// A secret (`url`, `signing_secret`, a `secret_headers` entry) cannot be read.
    #[error("webhook {field}: {error}")]
    Secret {
        /// The setting, e.g. `url` or `secret_headers.Authorization`.
        field: String,
        /// Why it cannot be read.
        error: SecretError,
    },
    /// The `url` secret does not hold an absolute http(s) URL.
    #[error("webhook url: the secret's value is not an absolute http:// or https:// URL")]
    Url,
    /// A configured header cannot be sent.
    #[error("webhook header {name:?}: {problem}")]
    Header {
        /// The header's name as configured.
        name: String,
        /// What to change.
        problem: &'static str,
    },
    /// The HTTP client cannot be built (TLS setup).
    #[error("webhook: cannot build the HTTP client: {0}")]
    Client(reqwest::Error),
}

/// Delivers alerts to one webhook receiver.
pub struct WebhookSink {
    name: String,
    url: Secret,
    signing_secret: Option<Secret>,
    /// The configured headers; secret values are marked sensitive.
    headers: HeaderMap,
    /// Secret values (and the URL's path and query) to scrub from a receiver's answer before
    /// it is quoted in an error.
    redact: Vec<String>,
    client: reqwest::Client,
}

impl WebhookSink {
    /// Reads the secrets, checks the URL and headers, and builds the HTTP client.
    pub fn new(name: impl Into<String>, config: &WebhookConfig) -> Result<Self, WebhookError> {
        let read = |field: String, r: &SecretRef| {
            r.read()
                .map_err(|error| WebhookError::Secret { field, error })
        };
        let url = read("url".into(), &config.url)?;
        if !is_http_url(url.expose()) {
            return Err(WebhookError::Url);
        }
        let signing_secret = match &config.signing_secret {
            Some(r) => Some(read("signing_secret".into(), r)?),
            None => None,
        };

        let mut headers = HeaderMap::new();
        let mut redact = url_parts(url.expose());
        redact.extend(signing_secret.iter().map(|s| s.expose().to_owned()));
        for (name, value) in &config.headers {
            let header = header_name(name)?;
            let value = HeaderValue::from_str(value).map_err(|_| WebhookError::Header {
                name: name.clone(),
                problem: "the value is not a valid header value (control characters or non-ASCII)",
            })?;
            headers.insert(header, value);
        }
        for (name, secret_ref) in &config.secret_headers {
            let header = header_name(name)?;
            if headers.contains_key(&header) {
                return Err(WebhookError::Header {
                    name: name.clone(),
                    problem: "given in both `headers` and `secret_headers`; keep one",
                });
            }
            let secret = read(format!("secret_headers.{name}"), secret_ref)?;
            // The error names the header only: the value is the secret.
            let mut value =
                HeaderValue::from_str(secret.expose()).map_err(|_| WebhookError::Header {
                    name: name.clone(),
                    problem: "the secret's value is not a valid header value (control \
                              characters or non-ASCII)",
                })?;
            value.set_sensitive(true);
            headers.insert(header, value);
            redact.push(secret.expose().to_owned());
        }

        Ok(WebhookSink {
            name: name.into(),
            url,
            signing_secret,
            headers,
            redact,
            client: http_client(config.timeout).map_err(WebhookError::Client)?,
        })
    }
}

impl fmt::Debug for WebhookSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookSink")
            .field("name", &self.name)
            .field("url", &self.url)
            .field("signed", &self.signing_secret.is_some())
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Sink for WebhookSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn send<'a>(&'a self, alert: &'a Alert) -> BoxFuture<'a, Result<(), DeliveryError>> {
        Box::pin(async move {
            let body = body(alert);
            let mut request = self
                .client
                .post(self.url.expose())
                .headers(self.headers.clone())
                .header(CONTENT_TYPE, "application/json")
                .header(EVENT_HEADER, alert.event.as_str())
                .header(DELIVERY_HEADER, delivery_id(alert));
            if let Some(secret) = &self.signing_secret {
                request = request.header(SIGNATURE_HEADER, sign(secret, &body));
            }
            post(WHAT, request.body(body), &self.redact).await?;
            tracing::debug!(sink = %self.name, incident_id = %alert.incident_id, "webhook delivered");
            Ok(())
        })
    }
}

/// The body every attempt sends: the CONTRACT section 4 JSON, compact.
pub fn body(alert: &Alert) -> Vec<u8> {
    serde_json::to_vec(alert).expect("an Alert holds only strings, numbers and timestamps")
}

/// `<incident_id>:<event>:<failure.count>`, the value of `X-Schedwatch-Delivery`. Bytes a header
/// cannot carry (outside visible ASCII) and `%` are percent-encoded.
pub fn delivery_id(alert: &Alert) -> String {
    let raw = format!(
        "{}:{}:{}",
        alert.incident_id,
        alert.event.as_str(),
        alert.failure.count
    );
    let mut out = String::with_capacity(raw.len());
    for b in raw.bytes() {
        if b.is_ascii_graphic() && b != b'%' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `sha256=<lowercase hex HMAC-SHA256 of body keyed with secret>`, the value of
/// `X-Schedwatch-Signature`.
pub fn sign(secret: &Secret, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.expose().as_bytes())
        .expect("HMAC takes keys of any length");
    mac.update(body);
    format!("sha256={}", hex(&mac.finalize().into_bytes()))
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    out
}

/// A configured header's name, refusing the ones schedwatch sets itself.
fn header_name(name: &str) -> Result<HeaderName, WebhookError> {
    let header = HeaderName::from_bytes(name.as_bytes()).map_err(|_| WebhookError::Header {
        name: name.into(),
        problem: "not a valid header name",
    })?;
    let reserved = [
        "content-type",
        "content-length",
        "host",
        "transfer-encoding",
        "connection",
    ];
    if reserved.contains(&header.as_str()) || header.as_str().starts_with("x-schedwatch-") {
        return Err(WebhookError::Header {
            name: name.into(),
            problem: "set by schedwatch itself; remove it from the config",
        });
    }
    Ok(header)
}

// ---- HTTP plumbing shared by the Slack, webhook and PagerDuty sinks ----

/// The default `timeout` of every HTTP sink: long enough for a slow receiver, short enough that
/// one hung receiver does not hold the delivery queue.
pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// The longest `timeout` accepted: past that, retrying later is better than waiting.
const MAX_TIMEOUT: Duration = Duration::from_secs(300);

/// How much of an answer's body is read: error reasons quote 200 characters of it.
const ANSWER_BYTES: usize = 4096;

pub(crate) fn default_timeout() -> Duration {
    DEFAULT_TIMEOUT
}

/// Reads a `timeout` such as `"10s"`, `"500ms"`, `"1m"` or `"1m30s"`.
pub(crate) fn deserialize_timeout<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    parse_timeout(&text).map_err(serde::de::Error::custom)
}

fn parse_timeout(text: &str) -> Result<Duration, String> {
    let bad =
        || format!("timeout {text:?}: expected a duration such as \"10s\", \"500ms\" or \"1m\"");
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err(bad());
    }
    let mut total = Duration::ZERO;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let number: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let part = match &rest[..unit] {
            "ms" => Duration::from_millis(number),
            "s" => Duration::from_secs(number),
            "m" => Duration::from_secs(number.saturating_mul(60)),
            _ => return Err(bad()),
        };
        total = total.saturating_add(part);
        rest = &rest[unit..];
    }
    if total.is_zero() || total > MAX_TIMEOUT {
        return Err(format!(
            "timeout {text:?}: must be more than 0 and at most 5m"
        ));
    }
    Ok(total)
}

/// An absolute http(s) URL with a host.
pub(crate) fn is_http_url(text: &str) -> bool {
    reqwest::Url::parse(text)
        .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some())
}

/// What to scrub from answers for a secret URL: the URL, and its path and query, which carry
/// the token in Slack-style webhooks and which a receiver may echo (`no route for /hooks/…`).
pub(crate) fn url_parts(url: &str) -> Vec<String> {
    let mut parts = vec![url.to_owned()];
    if let Ok(u) = reqwest::Url::parse(url) {
        if u.path().len() > 1 {
            parts.push(u.path().to_owned());
            // Without the leading `/`, for answers that quote it relative.
            parts.push(u.path()[1..].to_owned());
        }
        parts.extend(u.query().map(str::to_owned));
    }
    parts
}

/// The one client a sink keeps. Redirects are not followed: a POST that is redirected is a
/// misconfigured URL, and following it would resend secret headers to another address.
pub(crate) fn http_client(timeout: Duration) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("schedwatch/", env!("CARGO_PKG_VERSION")))
        .build()
}

/// Sends one request and maps the answer with [`http_outcome`] (or [`transport_error`] when
/// there is none). `redact` is scrubbed from the answer's body before it is quoted: a receiver
/// may echo what it was sent. Longer strings first, so a URL goes before its path.
pub(crate) async fn post(
    what: &str,
    request: reqwest::RequestBuilder,
    redact: &[String],
) -> Result<(), DeliveryError> {
    let mut response = request.send().await.map_err(|e| transport_error(what, e))?;
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
    let mut body = String::from_utf8_lossy(&bytes).into_owned();
    let mut redact: Vec<&String> = redact.iter().filter(|s| s.len() > 1).collect();
    redact.sort_by_key(|s| std::cmp::Reverse(s.len()));
    for secret in redact {
        body = body.replace(secret.as_str(), "[redacted]");
    }
    http_outcome(what, status, retry_after.as_deref(), &body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_parse_in_the_config_spelling() {
        assert_eq!(parse_timeout("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_timeout("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_timeout("1m30s"), Ok(Duration::from_secs(90)));
        for bad in ["", "10", "s", "10 h", "0s", "6m", "-1s", "1.5s"] {
            assert!(parse_timeout(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn delivery_ids_are_header_safe() {
        let json = r#"{"schema":"schedwatch.alert.v1","event":"repeat","incident_id":"a b%c",
            "job":{"name":"n","project":"p","location":"l","id":"j"},
            "failure":{"class":"unauthenticated","status":null,"http_status":null,"count":7,
                       "first_at":"2026-01-01T00:00:00Z","last_at":"2026-01-01T00:00:00Z"},
            "target":{"url":"u","kind":"other"},
            "auth":{"source":"unavailable","token":"unknown","service_account":null,
                    "audience":null,"scope":null},
            "diagnosis":{"code":"c","confidence":"likely","summary":"s","detail":"d"},
            "fix":{"gcloud":"g","terraform":"t"},"runbook_url":"r"}"#;
        let alert: Alert = serde_json::from_str(json).unwrap();
        assert_eq!(delivery_id(&alert), "a%20b%25c:repeat:7");
    }

    #[test]
    fn reserved_and_invalid_headers_are_refused() {
        assert!(header_name("X-Team").is_ok());
        assert!(header_name("content-type").is_err());
        assert!(header_name("X-Schedwatch-Event").is_err());
        assert!(header_name("bad header").is_err());
    }
}
