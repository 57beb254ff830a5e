//! The Cloud Scheduler v1 `Job` resource, reduced to what diagnosis and fixes need.
//!
//! Read leniently from the REST JSON that `gcloud scheduler jobs describe --format=json`, the
//! REST API and the official client's serialisation all share.

use serde::Deserialize;

use crate::JobKey;

/// A job's configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobConfig {
    /// `(project, location, job_id)`, from `name`.
    pub key: JobKey,
    /// What the job calls.
    pub target: Target,
    /// The cron schedule, for a complete Terraform resource.
    pub schedule: Option<String>,
    /// The schedule's time zone.
    pub time_zone: Option<String>,
}

/// The job's target: exactly one of the three kinds, or none found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `httpTarget`: the only kind that carries a token.
    Http(HttpTarget),
    /// `pubsubTarget`, with its topic.
    PubSub {
        /// `projects/P/topics/T`.
        topic: Option<String>,
    },
    /// `appEngineHttpTarget`.
    AppEngine,
    /// No target in the resource.
    Unknown,
}

/// `httpTarget`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpTarget {
    /// `uri`.
    pub uri: Option<String>,
    /// `httpMethod` (`POST` when absent).
    pub http_method: Option<String>,
    /// `body`, decoded from base64 when it is text.
    pub body: Option<String>,
    /// The token Scheduler attaches.
    pub token: Token,
}

/// The token of an `httpTarget`: at most one of the two.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Token {
    /// Neither `oidcToken` nor `oauthToken`.
    None,
    /// `oidcToken`: a Google-signed ID token.
    Oidc {
        /// `serviceAccountEmail`.
        service_account: Option<String>,
        /// `audience` (defaults to the full uri).
        audience: Option<String>,
    },
    /// `oauthToken`: an OAuth access token.
    OAuth {
        /// `serviceAccountEmail`.
        service_account: Option<String>,
        /// `scope` (defaults to cloud-platform).
        scope: Option<String>,
    },
}

/// How much of a bad job name an error shows: enough to find it in the file (real names are
/// under 600 characters), not a whole hostile document.
pub const NAME_SHOWN: usize = 120;

/// Why a document is not a Job.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// `name` missing, not `projects/P/locations/L/jobs/J`, or a part of it not as Cloud
    /// Scheduler spells it. The name is shown cut short and escaped: it is untrusted.
    #[error("the job's \"name\" {name:?} is not a Cloud Scheduler job name: {reason}")]
    BadName {
        /// The first [`NAME_SHOWN`] characters of the name.
        name: String,
        /// What is wrong with it.
        reason: crate::BadJobName,
    },
    /// Not an object of the Job shape.
    #[error("not a Cloud Scheduler Job: {0}")]
    Shape(#[from] serde_json::Error),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawJob {
    #[serde(default)]
    name: String,
    #[serde(default)]
    http_target: Option<RawHttpTarget>,
    #[serde(default)]
    pubsub_target: Option<RawPubsubTarget>,
    #[serde(default)]
    app_engine_http_target: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    schedule: Option<String>,
    #[serde(default)]
    time_zone: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawHttpTarget {
    #[serde(default)]
    uri: Option<String>,
    #[serde(default)]
    http_method: Option<String>,
    #[serde(default)]
    body: Option<String>,
    #[serde(default)]
    oidc_token: Option<RawToken>,
    #[serde(default)]
    oauth_token: Option<RawToken>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct RawToken {
    #[serde(default)]
    service_account_email: Option<String>,
    #[serde(default)]
    audience: Option<String>,
    #[serde(default)]
    scope: Option<String>,
}

impl RawToken {
    /// An empty token object (`"oidcToken": {}`) configures nothing.
    fn is_set(&self) -> bool {
        [&self.service_account_email, &self.audience, &self.scope]
            .iter()
            .any(|f| f.as_deref().is_some_and(|s| !s.is_empty()))
    }
}

fn nonempty(s: Option<String>) -> Option<String> {
    s.filter(|s| !s.is_empty())
}

impl JobConfig {
    /// Reads one Job resource.
    pub fn from_value(value: serde_json::Value) -> Result<JobConfig, JobError> {
        JobConfig::from_raw(serde_json::from_value(value)?)
    }

    /// Reads one Job resource from its JSON text, without building a `Value` tree first (a
    /// 10,000-job inventory would cost tens of MiB as `Value`s).
    pub fn from_json(text: &str) -> Result<JobConfig, JobError> {
        JobConfig::from_raw(serde_json::from_str(text)?)
    }

    fn from_raw(raw: RawJob) -> Result<JobConfig, JobError> {
        let key = JobKey::from_name(&raw.name).map_err(|reason| JobError::BadName {
            name: raw.name.chars().take(NAME_SHOWN).collect(),
            reason,
        })?;
        let target = if let Some(t) = raw.http_target {
            let token = match (
                t.oidc_token.filter(RawToken::is_set),
                t.oauth_token.filter(RawToken::is_set),
            ) {
                (Some(o), _) => Token::Oidc {
                    service_account: nonempty(o.service_account_email),
                    audience: nonempty(o.audience),
                },
                (None, Some(o)) => Token::OAuth {
                    service_account: nonempty(o.service_account_email),
                    scope: nonempty(o.scope),
                },
                (None, None) => Token::None,
            };
            let body = t.body.and_then(|b| {
                use base64::Engine as _;
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(b.trim())
                    .ok()?;
                String::from_utf8(bytes).ok()
            });
            Target::Http(HttpTarget {
                uri: nonempty(t.uri),
                http_method: t.http_method,
                body,
                token,
            })
        } else if let Some(p) = raw.pubsub_target {
            Target::PubSub {
                topic: p.topic_name,
            }
        } else if raw.app_engine_http_target.is_some() {
            Target::AppEngine
        } else {
            Target::Unknown
        };
        Ok(JobConfig {
            key,
            target,
            schedule: raw.schedule,
            time_zone: raw.time_zone,
        })
    }

    /// The HTTP target, when the job has one.
    pub fn http(&self) -> Option<&HttpTarget> {
        match &self.target {
            Target::Http(h) => Some(h),
            _ => None,
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawPubsubTarget {
    #[serde(default)]
    topic_name: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> JobConfig {
        let path = format!(
            "{}/../shared/fixtures/jobs/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        let v = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        JobConfig::from_value(v).unwrap()
    }

    #[test]
    fn reads_the_token_of_each_fixture() {
        let j = fixture("oidc_to_googleapis_run_job_broken.json");
        let h = j.http().unwrap();
        assert!(
            matches!(
                &h.token,
                Token::Oidc {
                    service_account: Some(_),
                    ..
                }
            ),
            "{h:?}"
        );
        let j = fixture("oauth_to_googleapis_run_job_good.json");
        assert!(matches!(j.http().unwrap().token, Token::OAuth { .. }));
        let j = fixture("no_auth_token_broken.json");
        assert_eq!(j.http().unwrap().token, Token::None);
        assert!(matches!(
            fixture("pubsub_target_job.json").target,
            Target::PubSub { topic: Some(_) }
        ));
        assert_eq!(
            fixture("app_engine_target_job.json").target,
            Target::AppEngine
        );
    }

    #[test]
    fn rejects_a_bad_name_and_treats_an_empty_token_as_none() {
        let err = JobConfig::from_value(serde_json::json!({"name": "jobs/x"})).unwrap_err();
        assert!(err
            .to_string()
            .contains("projects/PROJECT/locations/LOCATION/jobs/JOB"));
        let j = JobConfig::from_value(serde_json::json!({
            "name": "projects/acme-prod/locations/us-east1/jobs/j",
            "httpTarget": {"uri": "https://x.a.run.app/", "oidcToken": {}}
        }))
        .unwrap();
        assert_eq!(j.http().unwrap().token, Token::None);
    }
}
