//! Sources: where log entries come from.
//!
//! - [`file`](mod@file): log files and stdin (`replay`, and `run` on the bundled demo).
//! - [`pubsub`]: streaming pull on a subscription (`run`).
//! - [`push`]: Pub/Sub push requests on `POST /pubsub/push` (`run --push`), token-checked.
//!
//! Every source hands raw items to [`crate::pipeline::Pipeline`]; only how they arrive differs.
//! The two Pub/Sub doors hand the service the same [`Received`]: the data, and how to say
//! "done" once its effect is committed.

pub mod file;
pub(crate) mod pubsub;
pub(crate) mod push;

use google_cloud_pubsub::subscriber::handler::Handler;
use tokio::sync::oneshot;

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
