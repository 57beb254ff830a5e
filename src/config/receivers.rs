//! The checks of `[[receivers]]` and `[[routes]]`, and the secrets the config names.
//!
//! That a receiver names exactly one kind is checked as it is read
//! ([`crate::notify::receiver`]); here: unique names, each kind's `timeout`, and routes that
//! name receivers which exist.

use std::collections::HashSet;

use schedwatch_sinks::SecretRef;

use super::check::Check;
use super::limits::{RECEIVER_TIMEOUT, REPEAT_INTERVAL};
use super::sections::Section;
use super::{Config, ConfigError};
use crate::notify::receiver::ReceiverConfig;
use crate::notify::route::RouteConfig;

impl Section for Vec<ReceiverConfig> {
    fn check(&self, at: &Check) -> Result<(), ConfigError> {
        let mut names = HashSet::new();
        for (n, r) in self.iter().enumerate() {
            if !names.insert(r.name.as_str()) {
                return Err(at.error_at(
                    at.find(&format!("\"{}\"", r.name)),
                    format!("two receivers are named {:?}; names must be unique", r.name),
                ));
            }
            if let Some(timeout) = r.kind.timeout() {
                let key = format!("receivers.{n}.{}.timeout", r.kind.key());
                at.within(&key, timeout, &RECEIVER_TIMEOUT)?;
            }
        }
        Ok(())
    }
}

/// Each route names receivers that exist, at least one, and a `repeat_interval` in range.
pub fn check_routes(
    routes: &[RouteConfig],
    receivers: &[ReceiverConfig],
    at: &Check,
) -> Result<(), ConfigError> {
    let known: HashSet<&str> = receivers.iter().map(|r| r.name.as_str()).collect();
    for (n, route) in routes.iter().enumerate() {
        if let Some(every) = route.repeat_interval {
            at.within(
                &format!("routes.{n}.repeat_interval"),
                every,
                &REPEAT_INTERVAL,
            )?;
        }
        if let Some(unknown) = route.receivers.iter().find(|r| !known.contains(r.as_str())) {
            return Err(at.error_at(
                at.find(&format!("\"{unknown}\"")),
                format!("a route names receiver {unknown:?}, which no [[receivers]] entry defines"),
            ));
        }
        if route.receivers.is_empty() {
            return Err(at.error_at(
                at.find("[[routes]]"),
                "a route needs `receivers = [...]`".into(),
            ));
        }
    }
    Ok(())
}

/// Every secret reference: its key's path, how an error names it (with the receiver) and
/// where it is read from.
pub fn secret_refs(c: &Config) -> Vec<(String, String, &SecretRef)> {
    let mut out = Vec::new();
    if let Some(pg) = &c.state.postgres {
        for (field, r) in [("url", &pg.url), ("password", &pg.password)] {
            if let Some(r) = r {
                let key = format!("state.postgres.{field}");
                out.push((key.clone(), key, r));
            }
        }
    }
    for (n, r) in c.receivers.iter().enumerate() {
        let kind = r.kind.key();
        for (field, secret) in r.kind.secrets() {
            let key = format!("{kind}.{field}");
            let label = format!("receiver {:?}: {key}", r.name);
            out.push((format!("receivers.{n}.{key}"), label, secret));
        }
    }
    out
}
