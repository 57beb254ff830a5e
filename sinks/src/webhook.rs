//! The generic webhook sink: the CONTRACT section 4 event, POSTed as is, optionally signed, for
//! any receiver (a chat bridge, a ticketing hook, a script).
//!
//! What a receiver gets, for every attempt:
//!
//! - the body: `serde_json::to_vec(&alert)`, the same JSON `--format json` prints ([`body`]);
//! - `Content-Type: application/json`;
//! - `X-Schedwatch-Event: firing | repeat | resolved`;
//! - `X-Schedwatch-Delivery: <incident_id>:<event>:<failure.count>`, identical on every retry of
//!   one event, so a receiver can drop duplicates (`delivery_id`);
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

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use hmac::{Hmac, KeyInit, Mac};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE};
use serde::Deserialize;
use sha2::Sha256;

use crate::delivery::{
    default_timeout, deserialize_timeout, http_client, is_http_url, post, BoxFuture,
};
use crate::redact::Redactor;
use crate::secret::SecretError;
use crate::{Alert, DeliveryError, Secret, SecretRef, Sink};

/// How this sink names its receiver in delivery errors.
const WHAT: &str = "webhook receiver";

/// The event header: `firing`, `repeat` or `resolved`.
pub(crate) const EVENT_HEADER: &str = "x-schedwatch-event";
/// The idempotency header: `<incident_id>:<event>:<failure.count>`.
pub(crate) const DELIVERY_HEADER: &str = "x-schedwatch-delivery";
/// The signature header: `sha256=<hex HMAC-SHA256 of the body>`.
pub(crate) const SIGNATURE_HEADER: &str = "x-schedwatch-signature";

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
    /// `"1500ms"`, `"1m"`, 1s to 5m. Default 10 s.
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
    /// The URL, the signing key and the secret header values, to redact from a receiver's
    /// answer before it is quoted in an error.
    secrets: Redactor,
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
        let mut secrets = Redactor::new();
        secrets.url(url.expose());
        if let Some(key) = &signing_secret {
            secrets.secret(key.expose());
        }
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
            secrets.secret(secret.expose());
        }

        Ok(WebhookSink {
            name: name.into(),
            url,
            signing_secret,
            headers,
            secrets,
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
            post(WHAT, request.body(body), &self.secrets).await?;
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
pub(crate) fn delivery_id(alert: &Alert) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

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
