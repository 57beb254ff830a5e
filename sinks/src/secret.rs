//! Secrets (webhook URLs, tokens, SMTP passwords, signing keys): read from an environment
//! variable or a file named in the config, never written in it, never printed.

use std::fmt;
use std::path::PathBuf;

use serde::Deserialize;

/// Where a secret comes from: `{ env = "SLACK_WEBHOOK_URL" }` or `{ file = "/run/secrets/x" }`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretRef {
    /// An environment variable holding the secret.
    pub env: Option<String>,
    /// A file holding the secret (surrounding whitespace is trimmed).
    pub file: Option<PathBuf>,
}

/// Why a secret could not be read. Names the variable or file, never the value.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// Neither or both of `env` and `file`.
    #[error("a secret needs exactly one of `env` or `file`")]
    Ambiguous,
    /// The variable is unset or empty.
    #[error("environment variable {0} is unset or empty")]
    Env(String),
    /// The file cannot be read or is empty.
    #[error("secret file {path}: {message}")]
    File {
        /// The file.
        path: PathBuf,
        /// What failed.
        message: String,
    },
}

impl SecretRef {
    /// Reads the secret now.
    pub fn read(&self) -> Result<Secret, SecretError> {
        match (&self.env, &self.file) {
            (Some(var), None) => std::env::var(var)
                .ok()
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
                .map(Secret)
                .ok_or_else(|| SecretError::Env(var.clone())),
            (None, Some(path)) => {
                let text = std::fs::read_to_string(path).map_err(|e| SecretError::File {
                    path: path.clone(),
                    message: e.to_string(),
                })?;
                let text = text.trim();
                if text.is_empty() {
                    return Err(SecretError::File {
                        path: path.clone(),
                        message: "empty".into(),
                    });
                }
                Ok(Secret(text.to_owned()))
            }
            _ => Err(SecretError::Ambiguous),
        }
    }
}

/// A secret value. `Debug` and `Display` print `[redacted]`; [`Secret::expose`] is the only way
/// to the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The value, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_from_a_file_and_never_prints_the_value() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        std::fs::write(&path, "https://hooks.slack.com/services/T/B/x\n").unwrap();
        let s = SecretRef {
            env: None,
            file: Some(path),
        }
        .read()
        .unwrap();
        assert_eq!(s.expose(), "https://hooks.slack.com/services/T/B/x");
        assert_eq!(format!("{s:?} {s}"), "[redacted] [redacted]");
    }

    #[test]
    fn a_missing_variable_is_named_and_both_sources_are_refused() {
        let e = SecretRef {
            env: Some("SCHEDWATCH_TEST_UNSET_VAR".into()),
            file: None,
        }
        .read()
        .unwrap_err();
        assert!(e.to_string().contains("SCHEDWATCH_TEST_UNSET_VAR"));
        let both = SecretRef {
            env: Some("A".into()),
            file: Some("b".into()),
        };
        assert!(matches!(both.read(), Err(SecretError::Ambiguous)));
    }
}
