//! The alert event that every schedwatch sink receives (CONTRACT section 4), and the sinks
//! that deliver it.
//!
//! The event type lives here, not in the processor, so that a sink depends on nothing but the
//! event it delivers.
//!
//! - [`alert`]: [`Alert`], the `schedwatch.alert.v1` event, and its parts.
//! - `terminal`: the terminal view of an alert (`--format text`), printed by [`Printer`].
//! - [`stdout`]: the stdout receiver, and the formats and printer every printing receiver
//!   shares (NDJSON or the terminal view); a stdout closed at start fails every write.
//! - [`file`](mod@file): the file receiver, alerts appended.
//! - [`delivery`]: the [`Sink`] interface and what a delivery attempt ends in.
//! - [`escape`]: untrusted text made safe to show a person (controls and bidi characters
//!   escaped), for every human-facing rendering.
//! - [`secret`]: secrets from env or files, never printed.
//! - `redact`: every form of a sink's secrets, removed from what its receiver answers.
//! - [`slack`], [`webhook`], [`pagerduty`]: the HTTP sinks.
//! - [`email`]: SMTP through lettre.
#![deny(missing_docs)]

pub mod alert;
pub mod delivery;
pub mod email;
pub mod escape;
pub mod file;
pub mod pagerduty;
pub(crate) mod redact;
pub mod secret;
pub mod slack;
pub mod stdout;
pub(crate) mod terminal;
pub mod webhook;

pub use alert::{
    Alert, AlertAuth, AlertDiagnosis, AlertFailure, AlertFix, AlertJob, AlertTarget, EventKind,
};
pub use delivery::{DeliveryError, Sink};
pub use secret::{Secret, SecretRef};
pub use stdout::{Format, Printer};
