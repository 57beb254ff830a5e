//! The Slack sink: one Block Kit message per alert, POSTed to an incoming webhook.
//!
//! The message an on-call person reads ([`render`]):
//!
//! - a header with the state, the job and the cause: `:rotating_light: FIRING`,
//!   `:repeat: STILL FAILING (repeat)` or `:white_check_mark: RESOLVED`;
//! - the diagnosis (summary, detail, code and confidence);
//! - the failures (count, first and last time, HTTP status), the target and the auth config
//!   found;
//! - the gcloud fix and the Terraform snippet, each in a code block (firing and repeat only);
//! - the runbook link, and the incident id;
//! - a one-line `text`, which Slack shows in notifications.
//!
//! It stays within Slack's limits (50 blocks, 3,000 characters a section text, 2,000 a field,
//! 150 a header): a fix too long for its block is cut at a line end and says so. Text from the
//! logs and the job config is escaped (`&`, `<`, `>`), so it can neither mention `@channel` nor
//! forge a link, and its control and bidi characters are shown as escapes
//! ([`crate::escape`]), so it cannot add lines or reorder what people read.
//!
//! Slack accepts about one message per second per webhook: the sink waits before a send that
//! would come sooner than one second (`MIN_INTERVAL`) after the previous one to the same
//! webhook, or sooner than a `Retry-After` allowed.
//!
//! ```toml
//! [[receivers]]
//! name = "sre-slack"
//! [receivers.slack]
//! webhook_url = { env = "SLACK_WEBHOOK_URL" }
//! timeout = "10s"
//! ```

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::time::Instant;

use crate::delivery::{
    default_timeout, deserialize_timeout, http_client, is_http_url, post, BoxFuture,
};
use crate::redact::Redactor;
use crate::secret::SecretError;
use crate::{Alert, DeliveryError, EventKind, Secret, SecretRef, Sink};

/// How this sink names its receiver in delivery errors.
const WHAT: &str = "Slack";

/// Slack's limit on blocks in one message.
pub const MAX_BLOCKS: usize = 50;
/// Slack's limit on a section's text (and on the top-level `text` we send).
pub(crate) const MAX_SECTION_TEXT: usize = 3000;
/// Slack's limit on one section field.
pub(crate) const MAX_FIELD_TEXT: usize = 2000;
/// Slack's limit on a header's plain text.
pub(crate) const MAX_HEADER_TEXT: usize = 150;
/// Slack's rate for incoming webhooks: one message per second.
pub(crate) const MIN_INTERVAL: Duration = Duration::from_secs(1);
/// Ends a fix that was cut to fit its block.
pub const TRUNCATION_NOTE: &str = "… (truncated; full fix in the runbook / alert JSON)";

/// The longest a `Retry-After` holds back later sends to a webhook; longer waits are the
/// delivery queue's to honour, not a reason to hold every other alert.
const MAX_PAUSE: Duration = Duration::from_secs(60);

/// A `[receivers.slack]` table.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlackConfig {
    /// The incoming webhook URL (`https://hooks.slack.com/services/…`). A secret: anyone with it
    /// can post to the channel.
    pub webhook_url: SecretRef,
    /// How long one attempt may take: `"10s"`, `"1500ms"`, 1s to 5m. Default 10 s.
    #[serde(default = "default_timeout", deserialize_with = "deserialize_timeout")]
    pub timeout: Duration,
}

/// Why a Slack sink cannot be built. Never contains the webhook URL.
#[derive(Debug, thiserror::Error)]
pub enum SlackError {
    /// The `webhook_url` secret cannot be read.
    #[error("slack webhook_url: {0}")]
    Secret(SecretError),
    /// The secret does not hold an http(s) URL.
    #[error(
        "slack webhook_url: the secret's value is not an absolute http(s) URL \
         (expected https://hooks.slack.com/services/…)"
    )]
    Url,
    /// The HTTP client cannot be built (TLS setup).
    #[error("slack: cannot build the HTTP client: {0}")]
    Client(reqwest::Error),
}

/// The earliest instant the next message to one webhook may leave.
type Pacer = tokio::sync::Mutex<Option<Instant>>;

/// Posts alerts to one Slack incoming webhook.
pub struct SlackSink {
    name: String,
    webhook: Secret,
    /// The webhook URL and its parts: redacted from answers quoted in errors.
    secrets: Redactor,
    client: reqwest::Client,
    /// Shared by every sink on the same webhook URL.
    pacer: Arc<Pacer>,
}

impl SlackSink {
    /// Reads the webhook URL and builds the HTTP client.
    pub fn new(name: impl Into<String>, config: &SlackConfig) -> Result<Self, SlackError> {
        let webhook = config.webhook_url.read().map_err(SlackError::Secret)?;
        if !is_http_url(webhook.expose()) {
            return Err(SlackError::Url);
        }
        Ok(SlackSink {
            name: name.into(),
            pacer: pacer_for(&webhook),
            secrets: {
                let mut secrets = Redactor::new();
                secrets.url(webhook.expose());
                secrets
            },
            webhook,
            client: http_client(config.timeout).map_err(SlackError::Client)?,
        })
    }
}

/// One pacer per webhook URL in the process, so two receivers configured with the same webhook
/// still send one message a second between them. Keyed by the URL's hash, not the URL.
fn pacer_for(webhook: &Secret) -> Arc<Pacer> {
    static PACERS: OnceLock<Mutex<HashMap<[u8; 32], Arc<Pacer>>>> = OnceLock::new();
    let key: [u8; 32] = Sha256::digest(webhook.expose().as_bytes()).into();
    let mut pacers = PACERS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    Arc::clone(pacers.entry(key).or_default())
}

impl fmt::Debug for SlackSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SlackSink")
            .field("name", &self.name)
            .field("webhook", &self.webhook)
            .finish_non_exhaustive()
    }
}

impl Sink for SlackSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn send<'a>(&'a self, alert: &'a Alert) -> BoxFuture<'a, Result<(), DeliveryError>> {
        Box::pin(async move {
            let message = render(alert);
            // Held across the send: messages to one webhook leave one at a time, in order.
            let mut next = self.pacer.lock().await;
            if let Some(at) = *next {
                if at > Instant::now() {
                    tracing::debug!(sink = %self.name, incident_id = %alert.incident_id,
                        "waiting for Slack's one-message-a-second limit");
                    tokio::time::sleep_until(at).await;
                }
            }
            let request = self.client.post(self.webhook.expose()).json(&message);
            let result = post(WHAT, request, &self.secrets).await;
            // Counted from the answer, so the receiver sees the gap whatever the latency.
            let pause = match &result {
                Err(DeliveryError::Retryable {
                    after: Some(after), ..
                }) => (*after).clamp(MIN_INTERVAL, MAX_PAUSE),
                _ => MIN_INTERVAL,
            };
            *next = Some(Instant::now() + pause);
            drop(next);
            result?;
            tracing::debug!(sink = %self.name, incident_id = %alert.incident_id, "Slack message posted");
            Ok(())
        })
    }
}

// ---- rendering ----

/// The whole message: `text` (the notification line), `blocks`, and no link unfurling (the
/// target URL is not a page to preview).
pub fn render(alert: &Alert) -> Value {
    json!({
        "text": fallback_text(alert),
        "blocks": blocks(alert),
        "unfurl_links": false,
        "unfurl_media": false,
    })
}

/// The emoji and the words for each event: [`EventKind::word`], and for a repeat its contract
/// name too, so the channel tells a reminder from a new incident.
fn state(event: EventKind) -> (&'static str, String) {
    match event {
        EventKind::Firing => (":rotating_light:", event.word().to_owned()),
        EventKind::Repeat => (":repeat:", format!("{} ({})", event.word(), event.as_str())),
        EventKind::Resolved => (":white_check_mark:", event.word().to_owned()),
    }
}

/// The header's plain text: state, job id and diagnosis code, at most [`MAX_HEADER_TEXT`]
/// characters. Plain text needs no escaping.
pub(crate) fn header_text(alert: &Alert) -> String {
    let (emoji, word) = state(alert.event);
    let text = format!(
        "{emoji} {word}: {} — {}",
        crate::escape::line(&alert.job.id),
        crate::escape::line(&alert.diagnosis.code)
    );
    cut_plain(&text, MAX_HEADER_TEXT)
}

/// The top-level `text`: one line naming the state, the job, the cause and the count (or when
/// it resolved), shown in notifications and by clients without Block Kit.
pub(crate) fn fallback_text(alert: &Alert) -> String {
    let (emoji, word) = state(alert.event);
    let job = format!(
        "{}/{}/{}",
        alert.job.project, alert.job.location, alert.job.id
    );
    let tail = match (alert.event, alert.resolved_at) {
        (EventKind::Resolved, Some(at)) => format!("succeeded again at {}", time(at)),
        (EventKind::Resolved, None) => "succeeded again".to_owned(),
        _ => failures(alert.failure.count),
    };
    let line = format!("{emoji} {word} {job}: {} ({tail})", alert.diagnosis.code);
    fit(&escape(&line), MAX_SECTION_TEXT)
}

/// One line of untrusted text for mrkdwn: control and bidi characters as visible escapes
/// ([`crate::escape::line`]), and Slack's mrkdwn control characters `&`, `<` and `>` escaped.
pub fn escape(text: &str) -> String {
    mrkdwn(&crate::escape::line(text))
}

/// Untrusted text whose line breaks stay (the diagnosis's detail), for mrkdwn: as [`escape`],
/// but line feeds are kept.
fn escape_lines(text: &str) -> String {
    mrkdwn(&crate::escape::lines(text))
}

/// Escapes Slack's mrkdwn control characters: `&`, `<` and `>`.
fn mrkdwn(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            c => out.push(c),
        }
    }
    out
}

fn blocks(alert: &Alert) -> Vec<Value> {
    let mut blocks = vec![json!({
        "type": "header",
        "text": {"type": "plain_text", "text": header_text(alert), "emoji": true},
    })];
    let d = &alert.diagnosis;
    let cause = format!("Cause: `{}` ({})", escape(&d.code), escape(&d.confidence));
    if alert.event == EventKind::Resolved {
        let when = alert.resolved_at.map_or_else(|| "now".to_owned(), time);
        let text = format!(
            "*{}* succeeded again at *{when}*.\nIt had failed {} since {}. {cause}: {}",
            escape(&alert.job.id),
            failures(alert.failure.count),
            time(alert.failure.first_at),
            escape(&d.summary),
        );
        blocks.push(section(&text));
        blocks.push(fields(&[
            job_field(alert),
            format!("*Resolved at*\n{when}"),
            failures_field(alert),
            target_field(alert),
            format!("*First failure*\n{}", time(alert.failure.first_at)),
            format!("*Last failure*\n{}", time(alert.failure.last_at)),
        ]));
    } else {
        let text = format!(
            "*{}*\n{}\n{cause}",
            escape(&d.summary),
            escape_lines(&d.detail)
        );
        blocks.push(section(&text));
        blocks.push(fields(&[
            job_field(alert),
            failures_field(alert),
            format!("*First failure*\n{}", time(alert.failure.first_at)),
            format!("*Last failure*\n{}", time(alert.failure.last_at)),
            target_field(alert),
            auth_field(alert),
        ]));
        if !alert.fix.gcloud.trim().is_empty() {
            blocks.push(section(&code_section("Fix: gcloud", &alert.fix.gcloud)));
        }
        if !alert.fix.terraform.trim().is_empty() {
            blocks.push(section(&code_section(
                "Fix: Terraform",
                &alert.fix.terraform,
            )));
        }
    }
    blocks.push(section(&runbook_line(alert)));
    blocks.push(json!({
        "type": "context",
        "elements": [{
            "type": "mrkdwn",
            "text": fit(
                &format!("schedwatch · incident `{}` · {}", escape(&alert.incident_id), alert.event.as_str()),
                MAX_FIELD_TEXT,
            ),
        }],
    }));
    // At most 8 blocks: far from MAX_BLOCKS, whatever the alert holds.
    debug_assert!(blocks.len() <= MAX_BLOCKS);
    blocks
}

fn section(text: &str) -> Value {
    json!({"type": "section", "text": {"type": "mrkdwn", "text": fit(text, MAX_SECTION_TEXT)}})
}

fn fields(texts: &[String]) -> Value {
    let fields: Vec<Value> = texts
        .iter()
        .map(|t| json!({"type": "mrkdwn", "text": fit(t, MAX_FIELD_TEXT)}))
        .collect();
    json!({"type": "section", "fields": fields})
}

fn job_field(alert: &Alert) -> String {
    let j = &alert.job;
    format!(
        "*Job*\n{}",
        code(&format!("{}/{}/{}", j.project, j.location, j.id))
    )
}

fn failures_field(alert: &Alert) -> String {
    let f = &alert.failure;
    let status = match (f.http_status, &f.status) {
        (Some(http), Some(grpc)) => format!("HTTP {http} ({})", escape(grpc)),
        (Some(http), None) => format!("HTTP {http}"),
        (None, Some(grpc)) => escape(grpc),
        (None, None) => "no HTTP status logged".to_owned(),
    };
    format!(
        "*Failures*\n{} · {} · {status}",
        failures(f.count),
        escape(&f.class)
    )
}

fn target_field(alert: &Alert) -> String {
    format!(
        "*Target* ({})\n{}",
        escape(&alert.target.kind),
        code(&alert.target.url)
    )
}

fn auth_field(alert: &Alert) -> String {
    let a = &alert.auth;
    let mut lines = vec![format!("*Auth config* (from {})", escape(&a.source))];
    lines.push(format!("token: {}", code(&a.token)));
    let optional = [
        ("service account", &a.service_account),
        ("audience", &a.audience),
        ("scope", &a.scope),
    ];
    for (label, value) in optional {
        if let Some(value) = value {
            lines.push(format!("{label}: {}", code(value)));
        }
    }
    lines.join("\n")
}

fn runbook_line(alert: &Alert) -> String {
    let url = &alert.runbook_url;
    if is_http_url(url) {
        // `|` would end the link's URL part.
        let href = escape(url).replace('|', "%7C");
        format!("*Runbook:* <{href}|{}>", escape(&alert.diagnosis.code))
    } else {
        format!("*Runbook:* {}", escape(url))
    }
}

/// A fix in a code block under a bold title. A fix longer than the block allows is cut at the
/// last whole line that fits, the block closed, and [`TRUNCATION_NOTE`] added.
fn code_section(title: &str, fix: &str) -> String {
    // A ``` inside the fix would close the block early; a zero-width space keeps it shut.
    let body = escape_lines(fix.trim_end()).replace("```", "`\u{200B}``");
    let open = format!("*{title}*\n```\n");
    let close = "\n```";
    let whole = format!("{open}{body}{close}");
    if len(&whole) <= MAX_SECTION_TEXT {
        return whole;
    }
    let note = format!("\n_{TRUNCATION_NOTE}_");
    let room = MAX_SECTION_TEXT - len(&open) - len(close) - len(&note);
    let mut kept = fit_escaped(&body, room).to_owned();
    if let Some(end) = kept.rfind('\n') {
        kept.truncate(end);
    }
    format!("{open}{kept}{close}{note}")
}

/// Inline code, unless the value holds a backtick (which would end it early).
fn code(value: &str) -> String {
    if value.is_empty() || value.contains('`') {
        escape(value)
    } else {
        format!("`{}`", escape(value))
    }
}

fn failures(count: u64) -> String {
    if count == 1 {
        "1 failure".to_owned()
    } else {
        format!("{count} failures")
    }
}

fn time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

/// Length as Slack may count it: UTF-16 code units, never fewer than characters.
fn len(text: &str) -> usize {
    text.encode_utf16().count()
}

/// The longest prefix of escaped mrkdwn within `max` units that does not end inside an entity
/// (`&amp;`…).
fn fit_escaped(text: &str, max: usize) -> &str {
    let mut used = 0;
    let mut end = 0;
    for (i, c) in text.char_indices() {
        used += c.len_utf16();
        if used > max {
            break;
        }
        end = i + c.len_utf8();
    }
    let kept = &text[..end];
    match kept.rfind('&') {
        Some(amp) if !kept[amp..].contains(';') => &kept[..amp],
        _ => kept,
    }
}

/// Escaped mrkdwn cut to `max` units, ending in `…` when cut.
fn fit(text: &str, max: usize) -> String {
    if len(text) <= max {
        return text.to_owned();
    }
    format!("{}…", fit_escaped(text, max - 1))
}

/// Plain text cut to `max` units, ending in `…` when cut.
fn cut_plain(text: &str, max: usize) -> String {
    if len(text) <= max {
        return text.to_owned();
    }
    let mut used = 0;
    let kept: String = text
        .chars()
        .take_while(|c| {
            used += c.len_utf16();
            used < max
        })
        .collect();
    format!("{kept}…")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_never_split_an_entity_or_a_surrogate_pair() {
        assert_eq!(fit_escaped("ab&amp;cd", 4), "ab");
        assert_eq!(fit_escaped("ab&amp;cd", 7), "ab&amp;");
        assert_eq!(fit_escaped("a😀b", 2), "a");
        assert_eq!(fit("abcdef", 4), "abc…");
        assert_eq!(cut_plain("abcdef", 4), "abc…");
        assert_eq!(
            len(&cut_plain(&"😀".repeat(200), MAX_HEADER_TEXT)),
            MAX_HEADER_TEXT - 1
        );
    }

    #[test]
    fn long_fixes_end_on_a_whole_line_with_the_note() {
        let fix: String = (0..2000)
            .map(|i| format!("gcloud step {i} --flag=<x>\n"))
            .collect();
        let text = code_section("Fix: gcloud", &fix);
        assert!(len(&text) <= MAX_SECTION_TEXT);
        assert!(text.ends_with(&format!("\n```\n_{TRUNCATION_NOTE}_")));
        let last_line = text.lines().rev().nth(2).unwrap();
        assert!(last_line.starts_with("gcloud step ") && last_line.ends_with("--flag=&lt;x&gt;"));
    }
}
