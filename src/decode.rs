//! Decode: a Cloud Logging `LogEntry` (JSON) → an [`Attempt`] (CONTRACT section 1).
//!
//! The decoder is lenient to what it does not need (unknown fields, extra labels, a status sent
//! as a string) and strict about what it does: a usable job (all three labels) and a parseable
//! event time. Everything it cannot use becomes a [`SkipReason`], which the pipeline counts.
//!
//! One input item may hold several entries: a Pub/Sub pull response carries a list of messages,
//! a push envelope one message, and a message's `data` is the entry, base64-encoded.

use std::borrow::Cow;
use std::fmt;

use base64::Engine as _;
use chrono::{DateTime, Utc};
use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::JobKey;

/// The largest entry the decoder accepts. Cloud Logging caps an entry at 256 KiB; anything four
/// times that is not an execution log, and holding it would break the memory bound.
pub const MAX_ENTRY_BYTES: usize = 1024 * 1024;

/// The resource type of Cloud Scheduler execution logs.
const RESOURCE_TYPE: &str = "cloud_scheduler_job";

/// Which record of a scheduler attempt an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// `AttemptStarted`: read and ignored, it carries no outcome.
    Started,
    /// `AttemptFinished`: carries the outcome.
    Finished,
    /// A scheduler entry of another `@type`: ignored.
    Other,
}

/// The outcome class of a finished attempt (CONTRACT section 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// No `status` and an HTTP status in 200–299: resolves an incident.
    Success,
    /// `UNAUTHENTICATED` or HTTP 401.
    Unauthenticated,
    /// `PERMISSION_DENIED` or HTTP 403.
    PermissionDenied,
    /// 404, 5xx, `DEADLINE_EXCEEDED`, or nothing usable: neither counts nor resolves.
    OtherFailure,
}

impl Outcome {
    /// The contract's spelling of an auth failure class.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Unauthenticated => "unauthenticated",
            Outcome::PermissionDenied => "permission_denied",
            Outcome::OtherFailure => "other_failure",
        }
    }
}

/// One decoded execution log entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Attempt {
    /// The job: `(project_id, location, job_id)` from the resource labels.
    pub job: JobKey,
    /// Started, finished, or another scheduler record.
    pub phase: Phase,
    /// The outcome class; meaningful for [`Phase::Finished`] only.
    pub outcome: Outcome,
    /// `jsonPayload.status`, the gRPC code name (absent on success). This and the other details
    /// (`url`, `debug_info`, `insert_id`) are kept for failed attempts only.
    pub status: Option<String>,
    /// The HTTP status: `httpRequest.status`, else the `debugInfo` tail.
    pub http_status: Option<u16>,
    /// `jsonPayload.url`: what the job called.
    pub url: Option<String>,
    /// `jsonPayload.debugInfo`: shown to people, never branched on.
    pub debug_info: Option<String>,
    /// Event time: the entry's `timestamp`.
    pub timestamp: DateTime<Utc>,
    /// `insertId`.
    pub insert_id: Option<String>,
    /// Hash of `(logName, insertId, timestamp)`: the deduplication key.
    pub dedup_key: u128,
}

/// Why an input item was skipped. The names are stable: they appear in summaries and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SkipReason {
    /// Not valid JSON (truncated, not UTF-8, or too deeply nested).
    InvalidJson,
    /// Valid JSON, but not an object (`null`, a number, a string, an array inside NDJSON).
    NotAnObject,
    /// An object, but not a Cloud Scheduler log entry (other resource type, or no resource).
    NotSchedulerEntry,
    /// A scheduler entry whose known fields have the wrong types, or whose job labels are not
    /// a project id, a location and a job id as Cloud Scheduler spells them ([`JobKey::new`]).
    MalformedEntry,
    /// A scheduler entry without `project_id`, `location` or `job_id`.
    MissingJobLabels,
    /// A missing or unparseable `timestamp`.
    BadTimestamp,
    /// A Pub/Sub message whose `data` is missing or not base64.
    BadPubsubMessage,
    /// Larger than [`MAX_ENTRY_BYTES`].
    TooLarge,
}

impl SkipReason {
    /// The stable name.
    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::InvalidJson => "invalid_json",
            SkipReason::NotAnObject => "not_an_object",
            SkipReason::NotSchedulerEntry => "not_a_scheduler_entry",
            SkipReason::MalformedEntry => "malformed_entry",
            SkipReason::MissingJobLabels => "missing_job_labels",
            SkipReason::BadTimestamp => "bad_timestamp",
            SkipReason::BadPubsubMessage => "bad_pubsub_message",
            SkipReason::TooLarge => "too_large",
        }
    }

    /// What a person should know about items skipped for this reason.
    pub fn explain(self) -> &'static str {
        match self {
            SkipReason::InvalidJson => "not valid JSON (truncated, not UTF-8, or nested too deeply)",
            SkipReason::NotAnObject => "a JSON value that is not an object",
            SkipReason::NotSchedulerEntry => "not a Cloud Scheduler log entry (resource.type is not cloud_scheduler_job); check the log sink's filter",
            SkipReason::MalformedEntry => "a scheduler entry whose fields have unexpected types, or whose job labels break Cloud Scheduler's grammar",
            SkipReason::MissingJobLabels => "resource.labels lacks project_id, location or job_id",
            SkipReason::BadTimestamp => "timestamp missing or not RFC 3339",
            SkipReason::BadPubsubMessage => "a Pub/Sub message whose data is missing or not base64",
            SkipReason::TooLarge => "larger than 1 MiB, far above Cloud Logging's 256 KiB entry limit",
        }
    }
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What one entry decoded to.
pub type Decoded = Result<Attempt, SkipReason>;

// The shapes read from the JSON. Borrowed where the text has no escapes, so the common case
// copies nothing it does not keep; every field optional, unknown fields ignored.

/// A JSON string borrowed from the input when it has no escapes, copied when it has.
/// (serde's own `Cow<str>` inside an `Option` always copies.)
#[derive(Debug)]
struct Text<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

impl Text<'_> {
    fn into_owned(self) -> String {
        self.0.into_owned()
    }
}

impl std::ops::Deref for Text<'_> {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

#[derive(Deserialize)]
struct RawItem<'a> {
    #[serde(borrow, default, rename = "logName")]
    log_name: Option<Text<'a>>,
    #[serde(borrow, default, rename = "insertId")]
    insert_id: Option<Text<'a>>,
    #[serde(borrow, default)]
    timestamp: Option<Text<'a>>,
    #[serde(borrow, default)]
    resource: Option<RawResource<'a>>,
    #[serde(borrow, default, rename = "jsonPayload")]
    payload: Option<RawPayload<'a>>,
    #[serde(default, rename = "httpRequest")]
    http_request: Option<RawHttp>,
    // Pub/Sub shapes: a push envelope or a received message (`message`), a pull response
    // (`receivedMessages`), or a bare message (`data`).
    #[serde(borrow, default)]
    message: Option<&'a RawValue>,
    #[serde(borrow, default, rename = "receivedMessages")]
    received_messages: Option<&'a RawValue>,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct RawResource<'a> {
    #[serde(borrow, default, rename = "type")]
    kind: Option<Text<'a>>,
    #[serde(borrow, default)]
    labels: Option<RawLabels<'a>>,
}

#[derive(Deserialize)]
struct RawLabels<'a> {
    #[serde(borrow, default)]
    project_id: Option<Text<'a>>,
    #[serde(borrow, default)]
    location: Option<Text<'a>>,
    #[serde(borrow, default)]
    job_id: Option<Text<'a>>,
}

#[derive(Deserialize)]
struct RawPayload<'a> {
    #[serde(borrow, default, rename = "@type")]
    kind: Option<Text<'a>>,
    #[serde(borrow, default)]
    status: Option<Text<'a>>,
    #[serde(borrow, default)]
    url: Option<Text<'a>>,
    #[serde(borrow, default, rename = "debugInfo")]
    debug_info: Option<Text<'a>>,
}

#[derive(Deserialize)]
struct RawHttp {
    #[serde(default, deserialize_with = "lenient_status")]
    status: Option<u16>,
}

/// `httpRequest.status` is a number; accept a numeric string too, ignore anything else.
fn lenient_status<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u16>, D::Error> {
    // A visitor rather than an untagged enum, which would buffer the value first.
    struct V;
    impl<'de> serde::de::Visitor<'de> for V {
        type Value = Option<u16>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an HTTP status")
        }
        fn visit_u64<E>(self, n: u64) -> Result<Self::Value, E> {
            Ok(u16::try_from(n).ok())
        }
        fn visit_i64<E>(self, n: i64) -> Result<Self::Value, E> {
            Ok(u16::try_from(n).ok())
        }
        fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_str<E>(self, s: &str) -> Result<Self::Value, E> {
            Ok(s.trim().parse().ok())
        }
        fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_none<E>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D2: serde::Deserializer<'de>>(self, d: D2) -> Result<Self::Value, D2::Error> {
            d.deserialize_any(V)
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut seq: A,
        ) -> Result<Self::Value, A::Error> {
            while seq.next_element::<IgnoredAny>()?.is_some() {}
            Ok(None)
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut map: A,
        ) -> Result<Self::Value, A::Error> {
            while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
            Ok(None)
        }
    }
    d.deserialize_any(V)
}

#[derive(Deserialize)]
struct RawMessage<'a> {
    #[serde(borrow, default)]
    data: Option<Text<'a>>,
}

#[derive(Deserialize)]
struct RawReceived<'a> {
    #[serde(borrow, default)]
    message: Option<&'a RawValue>,
}

/// Turns input bytes into attempts. Stateless: one decoder serves every source.
#[derive(Debug, Default, Clone, Copy)]
pub struct Decoder;

impl Decoder {
    /// Decodes one input item — a LogEntry, a Pub/Sub message, push envelope or pull response —
    /// appending one result per entry it holds to `out`.
    pub fn decode_item(&self, bytes: &[u8], out: &mut Vec<Decoded>) {
        self.decode_nested(bytes, out, 0)
    }

    fn decode_nested(&self, bytes: &[u8], out: &mut Vec<Decoded>, depth: u8) {
        // At every depth: a line or array element (which the file source already bounds), a
        // pulled or pushed message's data (up to Pub/Sub's 10 MB), and the data inside a
        // message dump. One rule for every door, checked before anything is parsed.
        if bytes.len() > MAX_ENTRY_BYTES {
            out.push(Err(SkipReason::TooLarge));
            return;
        }
        // serde's derived structs also read a JSON array, field by field in declaration order:
        // only an object can be a LogEntry or a Pub/Sub wrapper.
        if !is_object(bytes) {
            return out.push(Err(classify(bytes)));
        }
        let item: RawItem = match parse_item(bytes) {
            Ok(item) => item,
            Err(_) => return out.push(Err(classify(bytes))),
        };
        // A Pub/Sub wrapper never has a resource; a LogEntry never has these keys at the top.
        if item.resource.is_none() && depth < 2 {
            if let Some(list) = item.received_messages {
                return self.decode_received(list.get().as_bytes(), out, depth);
            }
            if let Some(message) = item.message {
                return self.decode_message(message.get().as_bytes(), out, depth);
            }
            if item.data.is_some() {
                return self.decode_message(bytes, out, depth);
            }
        }
        out.push(entry(item));
    }

    fn decode_received(&self, list: &[u8], out: &mut Vec<Decoded>, depth: u8) {
        match serde_json::from_slice::<Vec<RawReceived>>(list) {
            Ok(received) => {
                for r in received {
                    match r.message {
                        Some(m) => self.decode_message(m.get().as_bytes(), out, depth),
                        None => out.push(Err(SkipReason::BadPubsubMessage)),
                    }
                }
            }
            Err(_) => out.push(Err(SkipReason::BadPubsubMessage)),
        }
    }

    fn decode_message(&self, message: &[u8], out: &mut Vec<Decoded>, depth: u8) {
        let data = serde_json::from_slice::<RawMessage>(message)
            .ok()
            .and_then(|m| m.data)
            .and_then(|d| {
                base64::engine::general_purpose::STANDARD
                    .decode(d.trim())
                    .ok()
            });
        match data {
            Some(data) => self.decode_nested(&data, out, depth + 1),
            None => out.push(Err(SkipReason::BadPubsubMessage)),
        }
    }
}

/// Parses the typed shape. serde_json checks each string it borrows from bytes for UTF-8, one
/// call per string; checking the whole entry once (std's ASCII fast path) and parsing it as
/// `str` is faster. Bytes that are not UTF-8 take the byte parser, which rejects them where
/// they matter, as before.
fn parse_item(bytes: &[u8]) -> Result<RawItem<'_>, serde_json::Error> {
    match std::str::from_utf8(bytes) {
        Ok(text) => serde_json::from_str(text),
        Err(_) => serde_json::from_slice(bytes),
    }
}

/// Whether the first non-whitespace byte opens a JSON object.
fn is_object(bytes: &[u8]) -> bool {
    bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{')
}

/// Why bytes that failed the typed parse were rejected.
fn classify(bytes: &[u8]) -> SkipReason {
    match serde_json::from_slice::<serde_json::Value>(bytes) {
        Err(_) => SkipReason::InvalidJson,
        Ok(serde_json::Value::Object(o)) => {
            let scheduler = o
                .get("resource")
                .and_then(|r| r.get("type"))
                .and_then(|t| t.as_str())
                == Some(RESOURCE_TYPE);
            if scheduler {
                SkipReason::MalformedEntry
            } else {
                SkipReason::NotSchedulerEntry
            }
        }
        Ok(_) => SkipReason::NotAnObject,
    }
}

fn entry(item: RawItem<'_>) -> Decoded {
    let resource = item.resource.ok_or(SkipReason::NotSchedulerEntry)?;
    if resource.kind.as_deref() != Some(RESOURCE_TYPE) {
        return Err(SkipReason::NotSchedulerEntry);
    }
    let labels = resource.labels.ok_or(SkipReason::MissingJobLabels)?;
    let nonempty = |l: &Option<Text<'_>>| l.as_deref().filter(|s| !s.is_empty()).is_some();
    if !(nonempty(&labels.project_id) && nonempty(&labels.location) && nonempty(&labels.job_id)) {
        return Err(SkipReason::MissingJobLabels);
    }
    // The labels are whatever the entry's writer put there: only Cloud Scheduler's own
    // grammar gets through, so no label reaches a fix, a log line, a message or an API path.
    fn label<'t>(l: &'t Option<Text<'_>>) -> &'t str {
        l.as_deref().unwrap_or_default()
    }
    let job = JobKey::new(
        label(&labels.project_id),
        label(&labels.location),
        label(&labels.job_id),
    )
    .map_err(|_| SkipReason::MalformedEntry)?;
    let ts_text = item.timestamp.ok_or(SkipReason::BadTimestamp)?;
    let timestamp = parse_timestamp(&ts_text).ok_or(SkipReason::BadTimestamp)?;

    let payload = item.payload;
    let phase = match payload.as_ref().and_then(|p| p.kind.as_deref()) {
        Some(t) if t.ends_with("AttemptFinished") => Phase::Finished,
        Some(t) if t.ends_with("AttemptStarted") => Phase::Started,
        _ => Phase::Other,
    };
    let (kind, status, url, debug_info) = match payload {
        Some(p) => (p.kind, p.status, p.url, p.debug_info),
        None => (None, None, None, None),
    };
    let http_status = item
        .http_request
        .and_then(|h| h.status)
        .or_else(|| debug_info.as_deref().and_then(debug_info_code));
    let outcome = classify_outcome(status.as_deref(), http_status);
    // Spelled out only for the key of an entry without ids: the hot path allocates nothing.
    let http_text = (item.log_name.is_none() || item.insert_id.is_none())
        .then(|| http_status.map(|h| h.to_string()))
        .flatten();
    let dedup_key = dedup_key(
        item.log_name.as_deref(),
        item.insert_id.as_deref(),
        &ts_text,
        &[
            Some(job.project()),
            Some(job.location()),
            Some(job.job_id()),
            kind.as_deref(),
            status.as_deref(),
            http_text.as_deref(),
            url.as_deref(),
            debug_info.as_deref(),
        ],
    );
    // Details are copied only for failures, where an alert shows them; the hot path (started
    // entries and successes) copies nothing but the job.
    let details = phase == Phase::Finished && outcome != Outcome::Success;
    let keep = |t: Option<Text<'_>>| {
        if details {
            t.map(Text::into_owned)
        } else {
            None
        }
    };
    Ok(Attempt {
        job,
        phase,
        outcome,
        status: keep(status),
        http_status,
        url: keep(url),
        debug_info: keep(debug_info),
        timestamp,
        insert_id: keep(item.insert_id),
        dedup_key,
    })
}

/// CONTRACT section 1: `status` first, then the HTTP status (from `httpRequest` or the
/// `debugInfo` tail).
pub fn classify_outcome(status: Option<&str>, http: Option<u16>) -> Outcome {
    match status {
        Some("UNAUTHENTICATED") => Outcome::Unauthenticated,
        Some("PERMISSION_DENIED") => Outcome::PermissionDenied,
        Some(s) if !s.is_empty() => Outcome::OtherFailure,
        _ => match http {
            Some(200..=299) => Outcome::Success,
            Some(401) => Outcome::Unauthenticated,
            Some(403) => Outcome::PermissionDenied,
            _ => Outcome::OtherFailure,
        },
    }
}

/// The `N` of `… Original HTTP response code number = N`.
fn debug_info_code(text: &str) -> Option<u16> {
    let (_, tail) = text.rsplit_once("response code number =")?;
    tail.trim().trim_end_matches('.').parse().ok()
}

/// RFC 3339 with any fraction (Cloud Logging prints up to nanoseconds) and any offset.
pub fn parse_timestamp(text: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// The deduplication key of CONTRACT section 1: `(logName, insertId, timestamp)`, hashed to
/// 128 bits so the dedup window stores 16 bytes an entry (a collision needs ~2^64 entries).
///
/// An entry without `insertId` or `logName` has no identity of its own: then `content` (the
/// job and what the entry says) is part of the key too, so different jobs' entries at the same
/// instant stay apart while the same entry delivered twice is still one.
pub fn dedup_key(
    log_name: Option<&str>,
    insert_id: Option<&str>,
    timestamp: &str,
    content: &[Option<&str>],
) -> u128 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    let identified = log_name.is_some() && insert_id.is_some();
    let content = if identified { &[][..] } else { content };
    for part in [log_name, insert_id, Some(timestamp)].iter().chain(content) {
        match part {
            Some(s) => {
                h.update(&[1]);
                h.update(&(s.len() as u64).to_le_bytes());
                h.update(s.as_bytes());
            }
            None => h.update(&[0]),
        }
    }
    h.digest128()
}

#[cfg(test)]
mod tests;
