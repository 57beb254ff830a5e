//! Correlate: find the job's auth config, by `(project, location, job_id)`.
//!
//! Two sources, tried in order: the job inventory (files: [`inventory`]) and the live Cloud
//! Scheduler API ([`scheduler_api`]). A failed look-up is never an error for the pipeline: the
//! diagnosis becomes `auth-config-unavailable` and the reason is logged.
//!
//! The API is asked before a batch, not during it: [`Correlator::prepare`] fetches what the
//! batch's failures need, concurrently and under one deadline, and [`Correlator::lookup`] then
//! answers from memory.

pub(crate) mod inventory;
pub(crate) mod job;
pub(crate) mod scheduler_api;

use std::sync::Arc;

pub use inventory::Inventory;
pub use job::{HttpTarget, JobConfig, Target, Token};
pub use scheduler_api::{SchedulerApi, SchedulerApiConfig};

use crate::JobKey;

/// Where a job's config came from: the alert's `auth.source`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthSource {
    /// The `--jobs` files.
    Inventory,
    /// The Cloud Scheduler API.
    SchedulerApi,
    /// Neither had it.
    Unavailable,
}

impl AuthSource {
    /// The contract's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthSource::Inventory => "inventory",
            AuthSource::SchedulerApi => "scheduler_api",
            AuthSource::Unavailable => "unavailable",
        }
    }
}

/// A look-up's answer.
#[derive(Debug, Clone)]
pub struct Lookup {
    /// The config, when found.
    pub config: Option<Arc<JobConfig>>,
    /// Where it came from.
    pub source: AuthSource,
    /// Why it is unavailable.
    pub reason: Option<String>,
}

/// The job config sources.
#[derive(Default)]
pub struct Correlator {
    inventory: Option<Inventory>,
    api: Option<SchedulerApi>,
}

impl Correlator {
    /// Inventory first, then the API; either may be absent.
    pub fn new(inventory: Option<Inventory>, api: Option<SchedulerApi>) -> Self {
        Correlator { inventory, api }
    }

    /// Before a batch: fetches from the API, together and within its timeout, the configs of
    /// the failing `jobs` the inventory lacks (`true`: the job's incident opens, so its config
    /// is fetched again). Until [`Correlator::end_batch`], their look-ups make no call.
    pub fn prepare<'a>(&mut self, jobs: impl IntoIterator<Item = (&'a JobKey, bool)>) {
        let Some(api) = &mut self.api else {
            return;
        };
        let mut needs = rustc_hash::FxHashMap::default();
        for (key, opening) in jobs {
            if self
                .inventory
                .as_ref()
                .is_some_and(|i| i.get(key).is_some())
            {
                continue;
            }
            if let Some(o) = needs.get_mut(key) {
                *o |= opening;
            } else {
                needs.insert(key.clone(), opening);
            }
        }
        api.prepare(needs);
    }

    /// The batch is processed: a job looked up from now on is fetched on its own.
    pub fn end_batch(&mut self) {
        if let Some(api) = &mut self.api {
            api.end_batch();
        }
    }

    /// The job's config. `opening` asks the API for a fresh copy (an incident is opening).
    pub fn lookup(&mut self, key: &JobKey, opening: bool) -> Lookup {
        if let Some(config) = self.inventory.as_ref().and_then(|i| i.get(key)) {
            return Lookup {
                config: Some(config),
                source: AuthSource::Inventory,
                reason: None,
            };
        }
        match &mut self.api {
            Some(api) => match api.get(key, opening) {
                Ok(config) => Lookup {
                    config: Some(config),
                    source: AuthSource::SchedulerApi,
                    reason: None,
                },
                Err(e) => Lookup {
                    config: None,
                    source: AuthSource::Unavailable,
                    reason: Some(e.to_string()),
                },
            },
            None => Lookup {
                config: None,
                source: AuthSource::Unavailable,
                reason: Some(match self.inventory {
                    Some(_) => "not in the job inventory".into(),
                    None => "no job inventory (--jobs) and the Cloud Scheduler API is not enabled"
                        .into(),
                }),
            },
        }
    }
}
