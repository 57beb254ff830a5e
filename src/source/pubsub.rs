//! Pub/Sub: streaming pull through the official `google-cloud-pubsub` client.
//!
//! Each of `streams` tasks holds one streaming pull and forwards every message, with its ack
//! handler, into a bounded channel that the processor drains. The client does the flow control
//! (max outstanding messages and bytes) and extends leases while the processor works; this
//! module reconnects with backoff when a stream breaks (an emulator restart, a deleted
//! subscription, a network fault) and stops pulling on shutdown.
//!
//! `PUBSUB_EMULATOR_HOST` is honoured — the official crate does not read it — by pointing the
//! client at `http://HOST` with anonymous credentials; otherwise Application Default
//! Credentials are used.

use std::time::Duration;

use google_cloud_pubsub::client::Subscriber;
use google_cloud_pubsub::subscriber::handler::Handler;
use google_cloud_pubsub::subscriber::ShutdownBehavior;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{Ack, Received};
use crate::metrics::metrics;

/// `[source]` for Pub/Sub.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PubsubConfig {
    /// `projects/P/subscriptions/S`.
    pub subscription: String,
    /// Streaming pulls held open at once.
    pub streams: usize,
    /// Messages leased and not yet acked, per stream: bounds memory and redelivery after a crash.
    pub max_outstanding_messages: i64,
    /// Bytes leased and not yet acked, per stream.
    pub max_outstanding_bytes: i64,
    /// How far each lease extension reaches (the stream's ack deadline): after a crash the
    /// messages the process held come back this long after its last extension.
    #[serde(with = "humantime_serde")]
    pub lease_extension: Duration,
    /// The Pub/Sub endpoint; the client's default when unset (and `PUBSUB_EMULATOR_HOST` wins).
    pub endpoint: Option<String>,
}

impl Default for PubsubConfig {
    fn default() -> Self {
        PubsubConfig {
            subscription: String::new(),
            streams: 1,
            // A thousand entries is a few hundred milliseconds of work: enough to keep the
            // processor busy, little to redeliver after a crash.
            max_outstanding_messages: 1000,
            max_outstanding_bytes: 64 * 1024 * 1024,
            // The client's default is 60 s; a restarted replica should see a crashed one's
            // messages sooner. Extensions are sent well before the deadline either way.
            lease_extension: Duration::from_secs(20),
            endpoint: None,
        }
    }
}

/// Why the client could not be built.
#[derive(Debug, thiserror::Error)]
#[error("cannot set up the Pub/Sub client: {0}")]
pub struct SetupError(String);

/// Builds the subscriber client: the emulator when `PUBSUB_EMULATOR_HOST` is set, else the
/// configured endpoint (or Google's) with Application Default Credentials.
pub async fn connect(config: &PubsubConfig) -> Result<Subscriber, SetupError> {
    let mut builder = Subscriber::builder();
    match emulator_host() {
        Some(host) => {
            tracing::info!(emulator = %host, "using the Pub/Sub emulator (PUBSUB_EMULATOR_HOST)");
            let endpoint = if host.starts_with("http") {
                host
            } else {
                format!("http://{host}")
            };
            builder = builder.with_endpoint(endpoint).with_credentials(
                google_cloud_auth::credentials::anonymous::Builder::new().build(),
            );
        }
        None => {
            if let Some(endpoint) = &config.endpoint {
                builder = builder.with_endpoint(endpoint.clone());
            }
        }
    }
    builder.build().await.map_err(|e| SetupError(e.to_string()))
}

fn emulator_host() -> Option<String> {
    std::env::var("PUBSUB_EMULATOR_HOST")
        .ok()
        .filter(|h| !h.is_empty())
}

/// The `host:port` the client connects to.
fn endpoint_address(config: &PubsubConfig) -> String {
    let url = emulator_host()
        .or_else(|| config.endpoint.clone())
        .unwrap_or_else(|| "https://pubsub.googleapis.com".to_owned());
    let (default_port, rest) = match url.split_once("://") {
        Some(("http", rest)) => (80, rest),
        Some((_, rest)) => (443, rest),
        None => (80, url.as_str()), // the emulator's HOST:PORT
    };
    let authority = rest.split('/').next().unwrap_or(rest);
    if authority
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        authority.to_owned()
    } else {
        format!("{authority}:{default_port}")
    }
}

/// How often [`probe`] connects.
const PROBE_INTERVAL: Duration = Duration::from_secs(5);

/// Until `shutdown`, opens a TCP connection to the Pub/Sub endpoint every few seconds and
/// records whether it could (`pubsub_endpoint_reachable`, readiness). The client retries an
/// unreachable endpoint silently and forever; this is how an outage shows in logs and probes.
pub async fn probe(config: PubsubConfig, shutdown: CancellationToken) {
    let address = endpoint_address(&config);
    let mut was: Option<bool> = None;
    loop {
        let attempt = tokio::time::timeout(
            Duration::from_secs(3),
            tokio::net::TcpStream::connect(address.as_str()),
        )
        .await;
        let error = match attempt {
            Ok(Ok(_)) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(_) => Some("no answer within 3s".to_owned()),
        };
        let up = error.is_none();
        metrics().pubsub_reachable.set(up as i64);
        match (was, &error) {
            (Some(false), None) => {
                tracing::info!(endpoint = %address, "Pub/Sub endpoint reachable again")
            }
            (Some(true) | None, Some(e)) => {
                tracing::warn!(endpoint = %address, "Pub/Sub endpoint unreachable ({e}); the client keeps retrying, not ready until it answers")
            }
            _ => {}
        }
        was = Some(up);
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(PROBE_INTERVAL) => {}
        }
    }
}

/// Holds one streaming pull open until `shutdown`, forwarding messages to `tx`; reconnects
/// with exponential backoff (100 ms to 30 s, with jitter) when the stream breaks.
pub async fn pull(
    client: Subscriber,
    config: PubsubConfig,
    stream_no: usize,
    tx: mpsc::Sender<Received>,
    shutdown: CancellationToken,
) {
    let mut backoff = Duration::from_millis(100);
    while !shutdown.is_cancelled() {
        let mut stream = client
            .subscribe(config.subscription.clone())
            .set_max_outstanding_messages(config.max_outstanding_messages)
            .set_max_outstanding_bytes(config.max_outstanding_bytes)
            .set_max_lease_extension(config.lease_extension)
            // Messages already handed to the processor are acked by it after their commit.
            .set_shutdown_behavior(ShutdownBehavior::WaitForProcessing)
            .build();
        tracing::info!(stream = stream_no, subscription = %config.subscription, "pulling");
        let connected = Connected::new();
        let broke = loop {
            let next = tokio::select! {
                biased;
                _ = shutdown.cancelled() => break None,
                next = stream.next() => next,
            };
            match next {
                Some(Ok((message, handler))) => {
                    backoff = Duration::from_millis(100);
                    tracing::trace!(stream = stream_no, message_id = %message.message_id, "received");
                    metrics().message_received();
                    let received = Received {
                        data: message.data,
                        message_id: message.message_id,
                        ack: Ack::Pull(handler),
                    };
                    if tx.send(received).await.is_err() {
                        break None; // the processor has stopped
                    }
                }
                Some(Err(e)) => break Some(e.to_string()),
                None => break Some("the stream ended".to_owned()),
            }
        };
        // Stop pulling; leases of messages the processor holds are kept until it acks them.
        let token = stream.shutdown_token();
        drop(stream);
        drop(connected);
        tokio::spawn(async move { token.shutdown().await });
        let Some(reason) = broke else { break };
        let jitter = Duration::from_millis(rand_millis(backoff.as_millis() as u64 / 4 + 1));
        tracing::warn!(
            stream = stream_no,
            "Pub/Sub stream broke: {reason}; reconnecting in {:?}",
            backoff + jitter
        );
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(backoff + jitter) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
    tracing::info!(stream = stream_no, "stopped pulling");
}

/// Counts a stream in `pubsub_streams_connected` while it lives.
struct Connected;

impl Connected {
    fn new() -> Connected {
        metrics().streams_connected.inc();
        Connected
    }
}

impl Drop for Connected {
    fn drop(&mut self) {
        metrics().streams_connected.dec();
    }
}

/// A little jitter without a random-number crate: the clock's nanoseconds.
fn rand_millis(below: u64) -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos() as u64);
    nanos % below.max(1)
}

/// Acks a message whose effect is committed. Exactly-once subscriptions confirm the ack; a
/// failed confirmation is logged (the message comes back and is a known duplicate).
pub fn ack(handler: Handler, runtime: &tokio::runtime::Handle) {
    match handler {
        Handler::ExactlyOnce(h) => {
            runtime.spawn(async move {
                match h.confirmed_ack().await {
                    Ok(()) => tracing::trace!("exactly-once ack confirmed"),
                    Err(e) => tracing::warn!("exactly-once ack not confirmed ({e}); the message will come back and count as a duplicate"),
                }
            });
        }
        other => other.ack(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_probed_address_is_the_clients_endpoint() {
        let at = |endpoint: &str| {
            endpoint_address(&PubsubConfig {
                endpoint: Some(endpoint.to_owned()),
                ..PubsubConfig::default()
            })
        };
        assert_eq!(
            at("https://pubsub.googleapis.com"),
            "pubsub.googleapis.com:443"
        );
        assert_eq!(
            at("https://europe-west1-pubsub.googleapis.com/"),
            "europe-west1-pubsub.googleapis.com:443"
        );
        assert_eq!(at("http://localhost:8085"), "localhost:8085");
    }
}
