//! The alert event that every schedwatch sink receives (CONTRACT section 4), and the sinks
//! that deliver it.
//!
//! The event type lives here, not in the processor, so that a sink depends on nothing but the
//! event it delivers.
//!
//! - [`alert`]: [`Alert`], the `schedwatch.alert.v1` event, and its parts.
//! - [`stdout`]: the NDJSON sink (`--format json`), one event per line.
#![deny(missing_docs)]

pub mod alert;
pub mod stdout;

pub use alert::{
    Alert, AlertAuth, AlertDiagnosis, AlertFailure, AlertFix, AlertJob, AlertTarget, EventKind,
};
pub use stdout::NdjsonSink;
