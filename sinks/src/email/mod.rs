//! The email sink: one multipart/alternative message (plain text and HTML) per alert, sent over
//! SMTP through lettre.
//!
//! ```toml
//! [[receivers]]
//! name = "oncall-mail"
//!
//! [receivers.email]
//! host = "smtp.example.com"
//! security = "starttls"            # port 587; or "tls" (465), or "plain" (25, local relays only)
//! username = "schedwatch@example.com"
//! password = { env = "SMTP_PASSWORD" }   # or { file = "/run/secrets/smtp-password" }
//! from = "schedwatch <schedwatch@example.com>"
//! to = ["oncall@example.com"]
//! cc = ["platform@example.com"]
//! timeout = "10s"                  # the whole send, connect to last reply
//! subject_prefix = "[schedwatch]"
//! ```
//!
//! Everything in the message that comes from logs (job ids, URLs, summaries) is untrusted: the
//! subject and every value are kept on one line with each control or invisible character shown
//! as an escape ([`crate::escape`]), so a job id like `"x\r\nBcc: evil@example.com"` can add
//! neither a header nor a recipient nor a line of the body; the HTML part also escapes every
//! value; the fixes and the diagnosis's words keep their own line breaks and nothing else.
//!
//! Delivery outcomes: 4xx replies, refused connections, TLS handshakes and timeouts are
//! [`Retryable`](crate::DeliveryError::Retryable); 5xx replies (550 mailbox unavailable, 553,
//! 535 bad credentials) and client-side refusals (no common AUTH mechanism, no STARTTLS) are
//! [`Permanent`](crate::DeliveryError::Permanent). Reasons name the server, never the password.
//!
//! - `config`: the `email` table ([`EmailConfig`]) and what makes it unusable ([`EmailError`]).
//! - `transport`: the sink, [`EmailSink`]: the message built and sent through lettre.
//! - `render`: the subject and the two bodies, pure functions of the alert.
//! - `sanitise`: log values made safe for a header, a body line and HTML.

mod config;
mod render;
mod sanitise;
mod transport;

pub use config::{EmailConfig, EmailError, Security, Username};
pub use render::{render_html, render_subject, render_text};
pub use transport::EmailSink;
