//! Sources: where log entries come from.
//!
//! - [`file`](mod@file): log files and stdin (`replay`, and `run` on the bundled demo).
//! - [`pubsub`]: streaming pull on a subscription (`run`).
//!
//! Every source hands raw items to [`crate::pipeline::Pipeline`]; only how they arrive differs.

pub mod file;
pub mod pubsub;
