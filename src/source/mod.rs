//! Sources: where log entries come from.
//!
//! - [`file`](mod@file): log files and stdin (`replay`, and `run` on the bundled demo).
//! - [`pubsub`]: streaming pull on a subscription (`run`).
//! - [`push`]: Pub/Sub push requests on `POST /pubsub/push` (`run --push`), token-checked.
//!
//! Every source hands raw items to [`crate::pipeline::Pipeline`]; only how they arrive differs.
//! The two Pub/Sub doors hand the service the same [`Received`]: the data, and how to say
//! "done" once its effect is committed.
//!
//! `[source]` names one of them: a [`SourceKind`]. Its keys stay as people wrote them:
//! `path = …` (a file), `subscription = …` (streaming pull, tuned by the other keys of
//! `[source]`), or a `[source.push]` table.

pub mod file;
pub(crate) mod pubsub;
pub(crate) mod push;

use std::path::PathBuf;

use google_cloud_pubsub::subscriber::handler::Handler;
use serde::Deserialize;
use tokio::sync::oneshot;
use toml::Spanned;

use pubsub::PubsubConfig;
use push::PushConfig;

/// The one source `run` reads, with where it is written in the config.
#[derive(Debug, Clone)]
pub enum SourceKind {
    /// `path = …`: a log file read start to end (the bundled demo).
    File(Spanned<PathBuf>),
    /// `subscription = …`: a Pub/Sub subscription, `projects/P/subscriptions/S`, fed by a
    /// Cloud Logging sink.
    Pull(Spanned<String>),
    /// `[source.push]`: Pub/Sub pushes to `POST /pubsub/push`.
    Push(Spanned<PushConfig>),
}

/// How `check-config` names it: the file, the subscription, or push and how tokens are checked.
impl std::fmt::Display for SourceKind {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match self {
            SourceKind::File(path) => write!(f, "{}", path.get_ref().display()),
            SourceKind::Pull(subscription) => f.write_str(subscription.get_ref()),
            SourceKind::Push(push) if push.get_ref().allow_unauthenticated => {
                f.write_str("push, unauthenticated")
            }
            SourceKind::Push(_) => f.write_str("push, OIDC token checked"),
        }
    }
}

/// `[source]`: the source, and the streaming pull's settings (they apply to a subscription
/// given on the command line too).
#[derive(Debug, Clone, Deserialize)]
#[serde(from = "SourceKeys")]
pub struct SourceConfig {
    /// Every source written, in the order file, pull, push: more than one is a config error
    /// (the config's check says which keys to drop), so [`SourceConfig::kind`] is the one.
    written: Vec<SourceKind>,
    /// Streaming pulls held open at once, 1 to 16 ([`crate::config::STREAMS`]).
    pub streams: usize,
    /// Messages leased and not yet acked, per stream, 1 to 100,000
    /// ([`crate::config::OUTSTANDING_MESSAGES`]).
    pub max_outstanding_messages: i64,
    /// Bytes leased and not yet acked, per stream, 1 MiB to 1 GiB
    /// ([`crate::config::OUTSTANDING_BYTES`]).
    pub max_outstanding_bytes: i64,
    /// How far each lease extension reaches: after a crash, Pub/Sub redelivers the messages the
    /// process held this long after its last extension (10 s to 10 min,
    /// [`crate::config::LEASE_EXTENSION`]).
    pub lease_extension: std::time::Duration,
    /// The Pub/Sub endpoint (`PUBSUB_EMULATOR_HOST` wins when set).
    pub endpoint: Option<String>,
}

impl Default for SourceConfig {
    fn default() -> Self {
        SourceKeys::default().into()
    }
}

impl SourceConfig {
    /// The source configured, if any.
    pub fn kind(&self) -> Option<&SourceKind> {
        self.written.first()
    }

    /// Every source written (more than one is refused by the config's check).
    pub fn written(&self) -> &[SourceKind] {
        &self.written
    }

    /// Replaces the source (a command-line flag wins over the config).
    pub fn set(&mut self, kind: SourceKind) {
        self.written = vec![kind];
    }

    /// The streaming pull's settings for `subscription`.
    pub fn pubsub(&self, subscription: &str) -> PubsubConfig {
        PubsubConfig {
            subscription: subscription.to_owned(),
            streams: self.streams,
            max_outstanding_messages: self.max_outstanding_messages,
            max_outstanding_bytes: self.max_outstanding_bytes,
            lease_extension: self.lease_extension,
            endpoint: self.endpoint.clone(),
        }
    }
}

/// `[source]` as written: flat keys, kept as they always were.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct SourceKeys {
    path: Option<Spanned<PathBuf>>,
    subscription: Option<Spanned<String>>,
    push: Option<Spanned<PushConfig>>,
    streams: usize,
    max_outstanding_messages: i64,
    max_outstanding_bytes: i64,
    #[serde(with = "humantime_serde")]
    lease_extension: std::time::Duration,
    endpoint: Option<String>,
}

impl Default for SourceKeys {
    fn default() -> Self {
        let p = PubsubConfig::default();
        SourceKeys {
            path: None,
            subscription: None,
            push: None,
            streams: p.streams,
            max_outstanding_messages: p.max_outstanding_messages,
            max_outstanding_bytes: p.max_outstanding_bytes,
            lease_extension: p.lease_extension,
            endpoint: p.endpoint,
        }
    }
}

impl From<SourceKeys> for SourceConfig {
    fn from(k: SourceKeys) -> Self {
        let written = [
            k.path.map(SourceKind::File),
            k.subscription.map(SourceKind::Pull),
            k.push.map(SourceKind::Push),
        ];
        SourceConfig {
            written: written.into_iter().flatten().collect(),
            streams: k.streams,
            max_outstanding_messages: k.max_outstanding_messages,
            max_outstanding_bytes: k.max_outstanding_bytes,
            lease_extension: k.lease_extension,
            endpoint: k.endpoint,
        }
    }
}

/// Whether `s` is `projects/P/subscriptions/S`.
pub fn is_subscription_name(s: &str) -> bool {
    matches!(s.split('/').collect::<Vec<_>>().as_slice(), ["projects", p, "subscriptions", n] if !p.is_empty() && n.len() >= 3)
}

/// A Pub/Sub message and the means to ack it.
pub struct Received {
    /// The message's data: one LogEntry JSON.
    pub data: bytes::Bytes,
    /// Pub/Sub's id, for logs.
    pub message_id: String,
    /// Acks the message; dropping it nacks (the message comes back).
    pub ack: Ack,
}

/// How a message is acked.
pub enum Ack {
    /// A pulled message: through the subscriber client.
    Pull(Handler),
    /// A pushed message: the waiting request answers 2xx.
    Push(oneshot::Sender<()>),
}

impl Ack {
    /// Says the message's effect is durable.
    pub fn ack(self, runtime: &tokio::runtime::Handle) {
        match self {
            Ack::Pull(handler) => pubsub::ack(handler, runtime),
            // The request may have given up (its client hung up): the message then comes
            // back, and counts as a duplicate.
            Ack::Push(done) => {
                let _ = done.send(());
            }
        }
    }
}
