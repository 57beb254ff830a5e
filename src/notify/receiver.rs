//! `[[receivers]]`: a named destination for alerts, of one kind, and how it is built.
//!
//! The kinds are one enum, [`ReceiverKind`]: a variant per kind, named by its config key
//! (`stdout`, `file`, `slack`, `webhook`, `pagerduty`, `email`). Adding a kind is one variant
//! (its config type, from its file in the sinks crate) and the arms the compiler then asks for
//! (`build`, `timeout`, `secrets`); the list of keys that error messages give is serde's list
//! of the variants, never written by hand.
//!
//! ```toml
//! [[receivers]]
//! name = "sre-slack"
//! [receivers.slack]                # or, inline: stdout = { format = "text" }
//! webhook_url = { env = "SLACK_WEBHOOK_URL" }
//! ```

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use schedwatch_sinks::email::{EmailConfig, EmailSink, Username};
use schedwatch_sinks::file::FileReceiver;
use schedwatch_sinks::pagerduty::{PagerDutyConfig, PagerDutySink};
use schedwatch_sinks::slack::{SlackConfig, SlackSink};
use schedwatch_sinks::stdout::StdoutReceiver;
use schedwatch_sinks::webhook::{WebhookConfig, WebhookSink};
use schedwatch_sinks::{Format, SecretRef, Sink};
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;

/// `[[receivers]]`: a name and exactly one kind.
#[derive(Debug, Clone)]
pub struct ReceiverConfig {
    /// The receiver's name, used in logs, metrics and `[[routes]]`.
    pub name: String,
    /// Where its alerts go.
    pub kind: ReceiverKind,
}

/// The kinds of receiver, each under its key in the receiver's table.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReceiverKind {
    /// Print alerts on stdout.
    Stdout(StdoutConfig),
    /// Append alerts to a file.
    File(FileConfig),
    /// A Slack incoming webhook.
    Slack(SlackConfig),
    /// An HTTP POST of the alert JSON.
    Webhook(WebhookConfig),
    /// PagerDuty Events API v2.
    PagerDuty(PagerDutyConfig),
    /// Email over SMTP.
    Email(EmailConfig),
}

/// A stdout receiver.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StdoutConfig {
    /// `json` (one CONTRACT section 4 event a line) or `text` (readable, with the fix).
    pub format: Format,
}

/// A file receiver: alerts appended, one a line (NDJSON) or as text.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// The file, created if missing, appended to; relative to the config file.
    pub path: PathBuf,
    /// `json` (default) or `text`.
    #[serde(default)]
    pub format: Format,
}

impl ReceiverKind {
    /// The kinds' keys, in the enum's order: serde's own list of the variants.
    pub fn keys() -> &'static [&'static str] {
        variants_of::<ReceiverKind>()
    }

    /// The key this kind is written under.
    pub fn key(&self) -> &'static str {
        let n = match self {
            ReceiverKind::Stdout(_) => 0,
            ReceiverKind::File(_) => 1,
            ReceiverKind::Slack(_) => 2,
            ReceiverKind::Webhook(_) => 3,
            ReceiverKind::PagerDuty(_) => 4,
            ReceiverKind::Email(_) => 5,
        };
        Self::keys()[n]
    }

    /// The `timeout` of one attempt, for the kinds that have one.
    pub fn timeout(&self) -> Option<Duration> {
        match self {
            ReceiverKind::Stdout(_) | ReceiverKind::File(_) => None,
            ReceiverKind::Slack(c) => Some(c.timeout),
            ReceiverKind::Webhook(c) => Some(c.timeout),
            ReceiverKind::PagerDuty(c) => Some(c.timeout),
            ReceiverKind::Email(c) => Some(c.timeout),
        }
    }

    /// Every secret the kind names, each with its key under the kind (`webhook_url`,
    /// `secret_headers.Authorization`).
    pub fn secrets(&self) -> Vec<(String, &SecretRef)> {
        let mut out = Vec::new();
        match self {
            ReceiverKind::Stdout(_) | ReceiverKind::File(_) => {}
            ReceiverKind::Slack(c) => out.push(("webhook_url".into(), &c.webhook_url)),
            ReceiverKind::Webhook(c) => {
                out.push(("url".into(), &c.url));
                if let Some(s) = &c.signing_secret {
                    out.push(("signing_secret".into(), s));
                }
                for (header, s) in &c.secret_headers {
                    out.push((format!("secret_headers.{header}"), s));
                }
            }
            ReceiverKind::PagerDuty(c) => out.push(("routing_key".into(), &c.routing_key)),
            ReceiverKind::Email(c) => {
                if let Some(Username::Secret(s)) = &c.username {
                    out.push(("username".into(), s));
                }
                if let Some(s) = &c.password {
                    out.push(("password".into(), s));
                }
            }
        }
        out
    }

    /// Whether building it writes something (a file receiver creates its file): `check-config`
    /// leaves those unbuilt.
    pub fn builds_with_effects(&self) -> bool {
        matches!(self, ReceiverKind::File(_))
    }

    /// The kind as it can be built without reading a secret, so that `check-config
    /// --no-secrets` runs the checks that do not depend on one (an email receiver's host,
    /// addresses and recipients; credentials given by half); `None` when every check of the
    /// kind is of a secret's value (a URL, a routing key) or building it has an effect.
    pub fn without_secrets(&self) -> Option<ReceiverKind> {
        match self {
            ReceiverKind::Stdout(_) => Some(self.clone()),
            ReceiverKind::Email(c) => {
                let mut c = c.clone();
                // Both or neither: a half is refused as it is, without reading the other.
                if c.username.is_some() && c.password.is_some() {
                    (c.username, c.password) = (None, None);
                }
                Some(ReceiverKind::Email(c))
            }
            ReceiverKind::File(_)
            | ReceiverKind::Slack(_)
            | ReceiverKind::Webhook(_)
            | ReceiverKind::PagerDuty(_) => None,
        }
    }
}

impl ReceiverConfig {
    /// Builds the receiver, reading its secrets now: a missing secret or a value the sink
    /// refuses (not a URL, not an email address) is a config error at start, not a failed
    /// alert at 3 a.m.
    pub fn build(&self) -> anyhow::Result<Arc<dyn Sink>> {
        let name = &self.name;
        let context = |e: &dyn std::fmt::Display| anyhow::anyhow!("receiver {name:?}: {e}");
        Ok(match &self.kind {
            ReceiverKind::Stdout(s) => Arc::new(StdoutReceiver::stdout(name, vec![s.format])),
            ReceiverKind::File(f) => {
                Arc::new(FileReceiver::file(name, &f.path, f.format).map_err(|e| context(&e))?)
            }
            ReceiverKind::Slack(c) => Arc::new(SlackSink::new(name, c).map_err(|e| context(&e))?),
            ReceiverKind::Webhook(c) => {
                Arc::new(WebhookSink::new(name, c).map_err(|e| context(&e))?)
            }
            ReceiverKind::PagerDuty(c) => {
                Arc::new(PagerDutySink::new(name, c).map_err(|e| context(&e))?)
            }
            ReceiverKind::Email(c) => Arc::new(EmailSink::new(name, c).map_err(|e| context(&e))?),
        })
    }
}

// ---- Reading `name` and the one kind key from the receiver's table ----

impl<'de> Deserialize<'de> for ReceiverConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_struct("ReceiverConfig", fields(), ReceiverVisitor)
    }
}

/// A receiver's keys, as a derive would list them: `name` and one per kind.
fn fields() -> &'static [&'static str] {
    static FIELDS: std::sync::OnceLock<Vec<&'static str>> = std::sync::OnceLock::new();
    FIELDS.get_or_init(|| {
        std::iter::once("name")
            .chain(ReceiverKind::keys().iter().copied())
            .collect()
    })
}

struct ReceiverVisitor;

impl<'de> Visitor<'de> for ReceiverVisitor {
    type Value = ReceiverConfig;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a receiver: `name` and one of ")?;
        f.write_str(&ReceiverKind::keys().join(", "))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ReceiverConfig, A::Error> {
        let mut name: Option<String> = None;
        let mut kinds: Vec<ReceiverKind> = Vec::new();
        while let Some(key) = map.next_key::<String>()? {
            if key == "name" {
                if name.is_some() {
                    return Err(de::Error::duplicate_field("name"));
                }
                name = Some(map.next_value()?);
            } else if ReceiverKind::keys().contains(&key.as_str()) {
                kinds.push(map.next_value_seed(KindSeed(key))?);
            } else {
                return Err(de::Error::unknown_field(&key, fields()));
            }
        }
        let name = name.ok_or_else(|| de::Error::missing_field("name"))?;
        let mut kinds = kinds.into_iter();
        match (kinds.next(), kinds.next()) {
            (Some(kind), None) => Ok(ReceiverConfig { name, kind }),
            (None, _) => Err(de::Error::custom(format!(
                "receiver {name:?} has no destination: add one of {} (e.g. `stdout = {{ format = \"text\" }}`)",
                kind_list()
            ))),
            (Some(_), Some(_)) => Err(de::Error::custom(format!(
                "receiver {name:?} names more than one destination: make one receiver each"
            ))),
        }
    }
}

/// "stdout, file, slack, webhook, pagerduty or email".
fn kind_list() -> String {
    match ReceiverKind::keys().split_last() {
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
        None => String::new(),
    }
}

/// Reads the value under key `.0` as the kind of that name, through serde's derived enum.
struct KindSeed(String);

impl<'de> de::DeserializeSeed<'de> for KindSeed {
    type Value = ReceiverKind;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<ReceiverKind, D::Error> {
        ReceiverKind::deserialize(Tagged {
            tag: self.0,
            value: d,
        })
    }
}

/// An enum value whose variant is `tag` and whose content is `value`.
struct Tagged<D> {
    tag: String,
    value: D,
}

impl<'de, D: Deserializer<'de>> Deserializer<'de> for Tagged<D> {
    type Error = D::Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        visitor.visit_enum(self)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map struct enum
        identifier ignored_any
    }
}

impl<'de, D: Deserializer<'de>> de::EnumAccess<'de> for Tagged<D> {
    type Error = D::Error;
    type Variant = Content<D>;

    fn variant_seed<S: de::DeserializeSeed<'de>>(
        self,
        seed: S,
    ) -> Result<(S::Value, Content<D>), D::Error> {
        use serde::de::IntoDeserializer;
        let tag: de::value::StringDeserializer<D::Error> = self.tag.into_deserializer();
        Ok((seed.deserialize(tag)?, Content(self.value)))
    }
}

/// The content of a [`Tagged`] value: every kind is a newtype variant.
struct Content<D>(D);

impl<'de, D: Deserializer<'de>> de::VariantAccess<'de> for Content<D> {
    type Error = D::Error;

    fn unit_variant(self) -> Result<(), D::Error> {
        Err(de::Error::custom("a receiver kind takes a table"))
    }

    fn newtype_variant_seed<S: de::DeserializeSeed<'de>>(
        self,
        seed: S,
    ) -> Result<S::Value, D::Error> {
        seed.deserialize(self.0)
    }

    fn tuple_variant<V: Visitor<'de>>(self, _: usize, _: V) -> Result<V::Value, D::Error> {
        Err(de::Error::custom("a receiver kind takes a table"))
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        _: &'static [&'static str],
        _: V,
    ) -> Result<V::Value, D::Error> {
        Err(de::Error::custom("a receiver kind takes a table"))
    }
}

/// The variant names serde knows for `T`, read by asking it to deserialize an enum from a
/// deserializer that only records them.
fn variants_of<'de, T: Deserialize<'de>>() -> &'static [&'static str] {
    struct Names<'a>(&'a mut &'static [&'static str]);
    impl<'de> Deserializer<'de> for Names<'_> {
        type Error = de::value::Error;
        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
            Err(de::Error::custom("not an enum"))
        }
        fn deserialize_enum<V: Visitor<'de>>(
            self,
            _: &'static str,
            variants: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Self::Error> {
            *self.0 = variants;
            Err(de::Error::custom("names read"))
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
            option unit unit_struct newtype_struct seq tuple tuple_struct map struct
            identifier ignored_any
        }
    }
    let mut names: &'static [&'static str] = &[];
    let _ = T::deserialize(Names(&mut names));
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ReceiverConfig, toml::de::Error> {
        toml::from_str(text)
    }

    #[test]
    fn the_keys_are_the_variants() {
        assert_eq!(
            ReceiverKind::keys(),
            ["stdout", "file", "slack", "webhook", "pagerduty", "email"]
        );
        assert_eq!(
            kind_list(),
            "stdout, file, slack, webhook, pagerduty or email"
        );
        let tables = [
            "[stdout]\n",
            "[file]\npath = \"x\"\n",
            "[slack]\nwebhook_url = { env = \"U\" }\n",
            "[webhook]\nurl = { env = \"U\" }\n",
            "[pagerduty]\nrouting_key = { env = \"K\" }\n",
            "[email]\nhost = \"h\"\nfrom = \"a@example.com\"\nto = [\"b@example.com\"]\n",
        ];
        for (key, table) in ReceiverKind::keys().iter().zip(tables) {
            let r = parse(&format!("name = \"r\"\n{table}")).unwrap();
            assert_eq!(r.kind.key(), *key, "{table}");
        }
    }

    #[test]
    fn one_kind_exactly_and_no_unknown_key() {
        let r = parse("name = \"a\"\nstdout = { format = \"text\" }\n").unwrap();
        assert!(matches!(
            r.kind,
            ReceiverKind::Stdout(StdoutConfig {
                format: Format::Text
            })
        ));
        let e = parse("name = \"a\"\n").unwrap_err().to_string();
        assert!(
            e.contains("receiver \"a\" has no destination: add one of stdout, file"),
            "{e}"
        );
        let e = parse("name = \"a\"\nstdout = {}\nfile = { path = \"x\" }\n").unwrap_err();
        assert!(e.to_string().contains("more than one destination"), "{e}");
        let e = parse("name = \"a\"\nslak = {}\n").unwrap_err().to_string();
        assert!(
            e.contains("unknown field `slak`, expected one of `name`, `stdout`"),
            "{e}"
        );
        let e = parse("stdout = {}\n").unwrap_err().to_string();
        assert!(e.contains("`name`"), "{e}");
        // An error inside a kind keeps its line.
        let text = "name = \"a\"\n[webhook]\nurl = { env = \"U\" }\ntimeout = \"ten\"\n";
        let at = parse(text).unwrap_err().span().unwrap().start;
        assert_eq!(text[..at].lines().count(), 4);
    }
}
