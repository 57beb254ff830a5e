//! The live Cloud Scheduler API, through the official `google-cloud-scheduler-v1` client.
//!
//! `GetJob` answers are cached for `cache_ttl` (a job's auth config changes rarely, and a
//! failing job logs up to six attempts a minute) and fetched again when an incident opens, so an
//! alert never describes a config that was fixed an hour ago. Failed look-ups are cached for a
//! shorter time, so a missing permission costs one call a minute, not one per log entry.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use google_cloud_scheduler_v1::client::CloudScheduler;
use serde::{Deserialize, Serialize};

use super::job::JobConfig;
use crate::JobKey;

/// `[scheduler_api]` in the config file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SchedulerApiConfig {
    /// Look jobs up in the Cloud Scheduler API when the inventory does not have them.
    pub enabled: bool,
    /// The API endpoint; the client's default (`https://cloudscheduler.googleapis.com`) when unset.
    pub endpoint: Option<String>,
    /// Send no credentials (for a local fake or emulator). Otherwise Application Default
    /// Credentials are used.
    pub anonymous: bool,
    /// How long a fetched job config is trusted, 10 s to 1 day
    /// ([`crate::config::CACHE_TTL`]).
    #[serde(with = "humantime_serde")]
    pub cache_ttl: Duration,
    /// How long a failed look-up is remembered before it is tried again, 1 s to 1 h
    /// ([`crate::config::ERROR_TTL`]).
    #[serde(with = "humantime_serde")]
    pub error_ttl: Duration,
    /// The deadline of one call, 1 s to 1 min ([`crate::config::API_TIMEOUT`]).
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for SchedulerApiConfig {
    fn default() -> Self {
        SchedulerApiConfig {
            enabled: false,
            endpoint: None,
            anonymous: false,
            cache_ttl: Duration::from_secs(300),
            error_ttl: Duration::from_secs(60),
            timeout: Duration::from_secs(10),
        }
    }
}

/// What went wrong talking to the API.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ApiError {
    /// The client could not be built (credentials not found, bad endpoint).
    #[error("cannot set up the Cloud Scheduler client: {0}")]
    Setup(String),
    /// The call failed.
    #[error("Cloud Scheduler API: {0}")]
    Call(String),
    /// The call took longer than the configured timeout.
    #[error("Cloud Scheduler API: no answer within {0:?}")]
    Timeout(Duration),
    /// The answer was not a usable Job.
    #[error("Cloud Scheduler API returned an unusable job: {0}")]
    BadJob(String),
}

struct Cached {
    at: Instant,
    answer: Result<Arc<JobConfig>, ApiError>,
}

/// The client, its runtime and the cache.
pub struct SchedulerApi {
    client: CloudScheduler,
    runtime: tokio::runtime::Handle,
    config: SchedulerApiConfig,
    cache: HashMap<JobKey, Cached>,
    /// Calls made and calls failed, for the run summary and metrics.
    pub calls: u64,
    /// Calls that failed.
    pub errors: u64,
}

impl SchedulerApi {
    /// Builds the client on `runtime` (which must outlive it).
    pub fn connect(
        config: &SchedulerApiConfig,
        runtime: tokio::runtime::Handle,
    ) -> Result<SchedulerApi, ApiError> {
        use google_cloud_gax::retry_policy::{Aip194Strict, RetryPolicyExt as _};
        // Retries stop before our own deadline, so a failed look-up reports its real cause
        // ("connection refused", "permission denied") rather than a timeout.
        let retry_budget = config.timeout.mul_f32(0.8);
        let mut builder =
            CloudScheduler::builder().with_retry_policy(Aip194Strict.with_time_limit(retry_budget));
        if let Some(endpoint) = &config.endpoint {
            builder = builder.with_endpoint(endpoint.clone());
        }
        if config.anonymous {
            builder = builder.with_credentials(
                google_cloud_auth::credentials::anonymous::Builder::new().build(),
            );
        }
        let client = runtime
            .block_on(builder.build())
            .map_err(|e| ApiError::Setup(e.to_string()))?;
        Ok(SchedulerApi {
            client,
            runtime,
            config: config.clone(),
            cache: HashMap::new(),
            calls: 0,
            errors: 0,
        })
    }

    /// The job's config: from the cache when fresh, from the API when stale or when `refresh`.
    /// Must be called outside the async runtime (the pipeline runs on its own thread).
    pub fn get(&mut self, key: &JobKey, refresh: bool) -> Result<Arc<JobConfig>, ApiError> {
        if let Some(c) = self.cache.get(key) {
            let ttl = if c.answer.is_ok() {
                self.config.cache_ttl
            } else {
                self.config.error_ttl
            };
            // A refresh is skipped for a failed answer still inside its error_ttl: retrying
            // a denied call on every incident would only add load.
            if c.at.elapsed() < ttl && (!refresh || c.answer.is_err()) {
                return c.answer.clone();
            }
        }
        self.calls += 1;
        let metrics = crate::metrics::metrics();
        metrics
            .api_lookups
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let answer = self.fetch(key);
        if let Err(e) = &answer {
            self.errors += 1;
            metrics
                .api_errors
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::warn!(job = %key, "job config unavailable: {e}");
        }
        self.cache.insert(
            key.clone(),
            Cached {
                at: Instant::now(),
                answer: answer.clone(),
            },
        );
        answer
    }

    fn fetch(&self, key: &JobKey) -> Result<Arc<JobConfig>, ApiError> {
        let call = self.client.get_job().set_name(key.name()).send();
        let job = self
            .runtime
            .block_on(async { tokio::time::timeout(self.config.timeout, call).await })
            .map_err(|_| ApiError::Timeout(self.config.timeout))?
            .map_err(|e| ApiError::Call(e.to_string()))?;
        to_config(&job).map(Arc::new)
    }

    /// Every job of a location (`audit --project P --location L`), following pages.
    pub fn list(&mut self, project: &str, location: &str) -> Result<Vec<JobConfig>, ApiError> {
        let parent = format!("projects/{project}/locations/{location}");
        let mut jobs = Vec::new();
        let mut page_token = String::new();
        loop {
            self.calls += 1;
            let call = self
                .client
                .list_jobs()
                .set_parent(parent.clone())
                .set_page_token(page_token.clone())
                .send();
            let page = self
                .runtime
                .block_on(async { tokio::time::timeout(self.config.timeout, call).await })
                .map_err(|_| ApiError::Timeout(self.config.timeout))
                .and_then(|r| r.map_err(|e| ApiError::Call(e.to_string())))
                .inspect_err(|_| self.errors += 1)?;
            for job in &page.jobs {
                match to_config(job) {
                    Ok(j) => jobs.push(j),
                    Err(e) => tracing::warn!("left out of the audit: {e}"),
                }
            }
            if page.next_page_token.is_empty() {
                return Ok(jobs);
            }
            page_token = page.next_page_token;
        }
    }
}

/// The client's `Job` serialises as the REST JSON: read it with the inventory's reader, so both
/// sources give the same config for the same job. Except enums: the client writes them as
/// numbers (`"httpMethod": 1`, it asks the API for `enum-encoding=int`), while gcloud and the
/// inventory use names, so the one enum the reader takes is put back as its name.
fn to_config(job: &google_cloud_scheduler_v1::model::Job) -> Result<JobConfig, ApiError> {
    let mut value = serde_json::to_value(job).map_err(|e| ApiError::BadJob(e.to_string()))?;
    if let (Some(target), Some(http)) = (value.get_mut("httpTarget"), job.http_target()) {
        match http.http_method.name() {
            Some(name) => target["httpMethod"] = name.into(),
            None => _ = target.as_object_mut().map(|t| t.remove("httpMethod")),
        }
    }
    JobConfig::from_value(value).map_err(|e| ApiError::BadJob(e.to_string()))
}
