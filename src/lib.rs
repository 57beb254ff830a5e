//! schedwatch: finds Cloud Scheduler jobs that fail authentication, names the cause from the
//! job's own config, and alerts with the exact fix.
//!
//! # The map
//!
//! One pipeline, several doors. Data flows through the stages in this order:
//!
//! ```text
//!  source ──► decode ──► incidents ──► correlate ──► diagnose ──► notify ──► sinks
//!  (file,     (LogEntry   (per-job      (inventory,   (rules →     (alerts,   (stdout, file,
//!   pubsub)    → Attempt)  state         Scheduler     code + fix)  routes,    Slack, email,
//!                          machine)      API, cache)                outbox     webhook,
//!                                                                   queues)    PagerDuty: in
//!                                                                              schedwatch-sinks)
//! ```
//!
//! - [`source`]: where entries come from. [`source::file`] reads NDJSON, JSON arrays and
//!   Pub/Sub message dumps, streaming, with bounded memory; [`source::pubsub`] holds streaming
//!   pulls on a subscription.
//! - [`decode`]: a Cloud Logging `LogEntry` → an [`decode::Attempt`] (job, outcome, event time),
//!   or a named [`decode::SkipReason`].
//! - [`dedup`]: the same entry delivered twice counts once, in a bounded window.
//! - [`incidents`]: CONTRACT section 2 as a pure state machine over event time: one open
//!   incident per job, firing, repeat and resolved transitions. No clock, no I/O.
//! - [`correlate`]: the job's config from the inventory files or the Cloud Scheduler API.
//! - [`diagnose`]: CONTRACT section 3's rule table → code, confidence, words and the fix
//!   (`gcloud` + Terraform).
//! - [`notify`]: turns an incident transition into the CONTRACT section 4 alert and renders the
//!   terminal view; [`notify::route`] picks the receivers (`[[routes]]`) and
//!   [`notify::deliver`] builds them and runs a retrying queue per receiver.
//! - [`pipeline`]: the stages joined; every door (`replay`, `run`) calls the same
//!   [`pipeline::Pipeline::process_item`].
//! - [`store`]: the durable state of `run` (incidents, dedup keys, the outbox), committed a
//!   batch at a time before messages are acked; [`service`] is the long-running loop around it.
//! - [`config`], [`cli`], [`app`]: the config file, the command line, and the wiring of each
//!   command. `main.rs` only parses arguments, sets up logging and maps errors to exit codes.
//!
//! `audit` is correlate + diagnose without logs.
#![deny(missing_docs)]

pub mod app;
pub mod cli;
pub mod config;
pub mod correlate;
pub mod decode;
pub mod dedup;
pub mod diagnose;
pub mod http;
pub mod incidents;
pub mod logging;
pub mod metrics;
pub mod notify;
pub mod pipeline;
pub mod service;
pub mod source;
pub mod store;

use std::fmt;

use serde::{Deserialize, Serialize};

/// A Cloud Scheduler job: `(project, location, job_id)`, as the log's resource labels and the
/// Job resource's name both give it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct JobKey {
    /// `resource.labels.project_id`.
    pub project: String,
    /// `resource.labels.location`.
    pub location: String,
    /// `resource.labels.job_id`.
    pub job_id: String,
}

impl JobKey {
    /// A key from its parts.
    pub fn new(project: &str, location: &str, job_id: &str) -> Self {
        JobKey {
            project: project.into(),
            location: location.into(),
            job_id: job_id.into(),
        }
    }

    /// Reads `projects/P/locations/L/jobs/J`.
    pub fn from_name(name: &str) -> Option<JobKey> {
        match name.split('/').collect::<Vec<_>>().as_slice() {
            ["projects", p, "locations", l, "jobs", j]
                if !p.is_empty() && !l.is_empty() && !j.is_empty() =>
            {
                Some(JobKey::new(p, l, j))
            }
            _ => None,
        }
    }

    /// `projects/P/locations/L/jobs/J`.
    pub fn name(&self) -> String {
        format!(
            "projects/{}/locations/{}/jobs/{}",
            self.project, self.location, self.job_id
        )
    }
}

impl fmt::Display for JobKey {
    /// `P/L/J`: the short form used in logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.project, self.location, self.job_id)
    }
}
