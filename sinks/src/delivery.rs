//! What every sink shares: the [`Sink`] interface, the outcome of one delivery attempt, and how
//! an HTTP answer maps to it.
//!
//! The delivery queue (in the processor) retries [`DeliveryError::Retryable`] with exponential
//! backoff and jitter, honouring `after` (a `Retry-After`), and records
//! [`DeliveryError::Permanent`] as failed without retrying.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

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
/// passwords): they name the receiver's kind, the status and the answer's first bytes.
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

/// Maps an HTTP answer to a delivery outcome: 2xx delivered; 408, 429 and 5xx retryable (with
/// `Retry-After` in seconds when given); any other status permanent. `what` names the sink
/// ("Slack", "webhook receiver"…); `body` is quoted, cut to 200 characters.
pub fn http_outcome(
    what: &str,
    status: u16,
    retry_after: Option<&str>,
    body: &str,
) -> Result<(), DeliveryError> {
    if (200..300).contains(&status) {
        return Ok(());
    }
    let body: String = body.trim().chars().take(200).collect();
    let reason = format!("{what} answered HTTP {status}: {body:?}");
    if status == 408 || status == 429 || (500..600).contains(&status) {
        let after = retry_after
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        Err(DeliveryError::Retryable { reason, after })
    } else {
        Err(DeliveryError::Permanent { reason })
    }
}

/// Maps a transport error (no HTTP answer) to a retryable outcome, without the URL: webhook
/// URLs are secrets.
pub fn transport_error(what: &str, e: reqwest::Error) -> DeliveryError {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else {
        "request failed"
    };
    DeliveryError::Retryable {
        reason: format!("{what}: {kind}: {}", e.without_url()),
        after: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_retry_decisions() {
        assert_eq!(http_outcome("x", 204, None, ""), Ok(()));
        assert!(http_outcome("x", 500, None, "").unwrap_err().is_retryable());
        assert_eq!(
            http_outcome("x", 429, Some("7"), "slow down"),
            Err(DeliveryError::Retryable {
                reason: "x answered HTTP 429: \"slow down\"".into(),
                after: Some(Duration::from_secs(7))
            })
        );
        assert!(!http_outcome("x", 400, None, "invalid_payload")
            .unwrap_err()
            .is_retryable());
        assert!(!http_outcome("x", 404, None, "no_service")
            .unwrap_err()
            .is_retryable());
    }
}
