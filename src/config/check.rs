//! What every section's check shares: errors on the line of what is wrong, found from the key's
//! path in the config text, and the one range check.

use std::ops::Range;
use std::path::{Path, PathBuf};

use toml::Spanned;

use super::limits::{Bounded, Limit};
use super::ConfigError;

/// The config text a section is checked against: where its keys are, and the folder its
/// relative paths start from.
pub struct Check<'a> {
    /// The config file, as errors name it.
    pub file: &'a Path,
    /// Its text.
    pub text: &'a str,
    /// The folder relative paths start from.
    pub base: &'a Path,
}

impl Check<'_> {
    /// An error on the line where `span` starts (none: no line).
    pub fn error_at(&self, span: Option<Range<usize>>, message: String) -> ConfigError {
        ConfigError {
            file: self.file.display().to_string(),
            line: span.map(|s| line_of(self.text, s.start)),
            message,
        }
    }

    /// An error on the line of the key at `path` (`receivers.2.email`), or of the deepest part
    /// of it that is written.
    pub fn error_at_key(&self, path: &str, message: String) -> ConfigError {
        self.error_at(self.locate(path).map(|(k, _)| k), message)
    }

    /// The span of the first mention of `needle`, for errors about values that carry no span.
    pub fn find(&self, needle: &str) -> Option<Range<usize>> {
        self.text.find(needle).map(|i| i..i + needle.len())
    }

    /// A path from the config, resolved against the config file's folder.
    pub fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_owned()
        } else {
            self.base.join(p)
        }
    }

    /// The path at `what` (`jobs.inventory`) must exist.
    pub fn exists(&self, what: &str, path: &Spanned<PathBuf>) -> Result<(), ConfigError> {
        let resolved = self.resolve(path.get_ref());
        if resolved.exists() {
            return Ok(());
        }
        Err(self.error_at(
            Some(path.span()),
            format!(
                "{what} = {:?}: no such file or folder ({}); paths are relative to the config file",
                path.get_ref(),
                resolved.display()
            ),
        ))
    }

    /// The one range check: `value`, set at `key` (a dotted path, numbers index arrays of
    /// tables), must be within `limit`; else an error on the key's line that quotes the value
    /// as written and gives the range and why.
    pub fn within<T: Bounded>(
        &self,
        key: &str,
        value: T,
        limit: &Limit<T>,
    ) -> Result<(), ConfigError> {
        if limit.min <= value && value <= limit.max {
            return Ok(());
        }
        let located = self.locate(key);
        let written = match located.as_ref().and_then(|(_, v)| v.clone()) {
            Some(v) => self.text[v].to_owned(),
            None => value.spelt(),
        };
        let span = located.map(|(k, _)| k);
        Err(self.error_at(
            span,
            format!(
                "{} = {written}: must be from {} to {} ({})",
                display_key(key),
                limit.min.spelt(),
                limit.max.spelt(),
                limit.why
            ),
        ))
    }

    /// Where the key at `path` is written: its span, and its value's when the whole path is
    /// written; else the span of the deepest part that is (a table whose key takes its
    /// default).
    pub fn locate(&self, path: &str) -> Option<(Range<usize>, Option<Range<usize>>)> {
        use toml::de::{DeTable, DeValue};
        let doc = DeTable::parse(self.text).ok()?;
        let mut parts = path.split('.');
        let (key, mut at) = doc.get_ref().get_key_value(parts.next()?)?;
        let mut key_span = key.span();
        for part in parts {
            let next = match at.get_ref() {
                DeValue::Table(t) => t.get_key_value(part).map(|(k, v)| (k.span(), v)),
                DeValue::Array(a) => part
                    .parse::<usize>()
                    .ok()
                    .and_then(|i| a.get(i))
                    .map(|v| (v.span(), v)),
                _ => None,
            };
            let Some((span, value)) = next else {
                return Some((key_span, None));
            };
            (key_span, at) = (span, value);
        }
        Some((key_span, Some(at.span())))
    }
}

/// `receivers.0.slack.timeout` as a user reads it: `receivers[0].slack.timeout`.
pub fn display_key(path: &str) -> String {
    let mut out = String::new();
    for part in path.split('.') {
        if part.parse::<usize>().is_ok() {
            out.push_str(&format!("[{part}]"));
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(part);
        }
    }
    out
}

/// The 1-based line of byte `offset`.
pub fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())]
        .bytes()
        .filter(|&b| b == b'\n')
        .count()
        + 1
}
