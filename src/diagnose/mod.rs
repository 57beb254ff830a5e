//! Diagnose: CONTRACT section 3's rule table → a stable code, a confidence, words for people,
//! and a fix built from the job's own values ([`fix`]).
//!
//! The rules read only the job's config and the failure's class. What they must never say is
//! as fixed as what they say: no service-account keys, no audience tuning for a Google API
//! target, no extra roles for a 401.

pub(crate) mod fix;
pub mod target;

use serde::{Deserialize, Serialize};

use crate::correlate::{AuthSource, HttpTarget, JobConfig, Lookup, Target, Token};
use crate::decode::Outcome;
use crate::JobKey;
pub use fix::Fix;
use schedwatch_sinks::escape;
pub use target::TargetKind;

/// The diagnosis codes. Their spelling is part of the contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Code {
    /// Rule 1: the job's config could not be read.
    AuthConfigUnavailable,
    /// Rule 2: no token at all.
    MissingAuthToken,
    /// Rule 3: an OIDC ID token sent to a Google API.
    OidcTokenForGoogleApi,
    /// Rule 4: an OAuth access token sent to something that is not a Google API.
    OauthTokenForNonGoogleTarget,
    /// Rule 5: the OIDC audience names another origin than the target.
    OidcAudienceMismatch,
    /// Rule 6: a 403 with a plausible token: the service account lacks the invoker role.
    MissingInvokerPermission,
    /// Rule 7: nothing in the config explains the failure.
    UnexplainedAuthFailure,
}

impl Code {
    /// Every code, in rule order.
    pub const ALL: [Code; 7] = [
        Code::AuthConfigUnavailable,
        Code::MissingAuthToken,
        Code::OidcTokenForGoogleApi,
        Code::OauthTokenForNonGoogleTarget,
        Code::OidcAudienceMismatch,
        Code::MissingInvokerPermission,
        Code::UnexplainedAuthFailure,
    ];

    /// The stable spelling, e.g. `oidc-token-for-google-api`.
    pub fn as_str(self) -> &'static str {
        match self {
            Code::AuthConfigUnavailable => "auth-config-unavailable",
            Code::MissingAuthToken => "missing-auth-token",
            Code::OidcTokenForGoogleApi => "oidc-token-for-google-api",
            Code::OauthTokenForNonGoogleTarget => "oauth-token-for-non-google-target",
            Code::OidcAudienceMismatch => "oidc-audience-mismatch",
            Code::MissingInvokerPermission => "missing-invoker-permission",
            Code::UnexplainedAuthFailure => "unexplained-auth-failure",
        }
    }

    /// Whether the job's config alone proves the cause.
    pub fn confirmed(self) -> bool {
        matches!(
            self,
            Code::MissingAuthToken
                | Code::OidcTokenForGoogleApi
                | Code::OauthTokenForNonGoogleTarget
        )
    }
}

/// The job's auth config as the alert shows it (`auth` in CONTRACT section 4).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthFacts {
    /// Where the config came from.
    pub source: AuthSource,
    /// `oidc`, `oauth`, `none` or `unknown`.
    pub token: String,
    /// The token's service account.
    pub service_account: Option<String>,
    /// The OIDC audience.
    pub audience: Option<String>,
    /// The OAuth scope.
    pub scope: Option<String>,
}

/// A named cause with its fix.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Diagnosis {
    /// The rule that matched.
    pub code: Code,
    /// One sentence.
    pub summary: String,
    /// Why, in a few sentences.
    pub detail: String,
    /// The fix.
    pub fix: Fix,
    /// The target URL: the config's `httpTarget.uri`, else the log's `url`.
    pub target_url: String,
    /// The target's kind.
    pub target_kind: TargetKind,
    /// The auth config found.
    pub auth: AuthFacts,
}

impl Diagnosis {
    /// Whether the job's config confirms the cause (`confidence: confirmed`).
    pub fn confirmed(&self) -> bool {
        self.code.confirmed()
    }

    /// `confirmed` or `likely`.
    pub fn confidence(&self) -> &'static str {
        if self.confirmed() {
            "confirmed"
        } else {
            "likely"
        }
    }

    /// A diagnosis with placeholder texts, for state-machine tests.
    #[cfg(test)]
    pub(crate) fn for_test(code: Code) -> Diagnosis {
        Diagnosis {
            code,
            summary: String::new(),
            detail: String::new(),
            fix: Fix::default(),
            target_url: String::new(),
            target_kind: TargetKind::Other,
            auth: AuthFacts {
                source: AuthSource::Unavailable,
                token: "unknown".into(),
                service_account: None,
                audience: None,
                scope: None,
            },
        }
    }
}

/// What a rule needs to know about a failure or a job.
struct Case<'a> {
    job: &'a JobKey,
    config: Option<&'a JobConfig>,
    http: Option<&'a HttpTarget>,
    uri: String,
    kind: TargetKind,
    outcome: Option<Outcome>,
}

/// Rules 2–5: what the job's HTTP config alone says, if anything.
fn config_rule(http: &HttpTarget, kind: TargetKind, uri: &str) -> Option<Code> {
    match &http.token {
        Token::None => Some(Code::MissingAuthToken),
        Token::Oidc { .. } if kind == TargetKind::GoogleApi => Some(Code::OidcTokenForGoogleApi),
        Token::OAuth { .. } if kind != TargetKind::GoogleApi => {
            Some(Code::OauthTokenForNonGoogleTarget)
        }
        Token::Oidc {
            audience: Some(aud),
            ..
        } if target::origin(aud) != target::origin(uri) => Some(Code::OidcAudienceMismatch),
        _ => None,
    }
}

/// Applies the rules and writes the words and the fix.
#[derive(Debug, Clone)]
pub struct Diagnoser {
    runbook_base: String,
}

/// Where alerts link when no `[runbook] base_url` is configured: the runbook in this repository.
pub const DEFAULT_RUNBOOK: &str = "docs/runbook.md";

impl Default for Diagnoser {
    fn default() -> Self {
        Diagnoser::new(DEFAULT_RUNBOOK)
    }
}

impl Diagnoser {
    /// Runbook links are `runbook_base#code`.
    pub fn new(runbook_base: &str) -> Self {
        Diagnoser {
            runbook_base: runbook_base.trim_end_matches('#').to_owned(),
        }
    }

    /// The runbook section of a code.
    pub fn runbook_url(&self, code: Code) -> String {
        format!("{}#{}", self.runbook_base, code.as_str())
    }

    /// CONTRACT section 3: the first matching rule for an auth failure of `job`.
    pub fn diagnose(
        &self,
        job: &JobKey,
        lookup: &Lookup,
        outcome: Outcome,
        log_url: Option<&str>,
    ) -> Diagnosis {
        let config = lookup.config.as_deref();
        let http = config.and_then(JobConfig::http);
        let topic = match config.map(|c| &c.target) {
            Some(Target::PubSub { topic }) => topic.clone(),
            _ => None,
        };
        // A Pub/Sub target has no URL: the topic names what the job calls.
        let uri = http
            .and_then(|h| h.uri.clone())
            .or_else(|| log_url.map(str::to_owned))
            .or(topic)
            .unwrap_or_default();
        let kind = TargetKind::of(&uri);
        let case = Case {
            job,
            config,
            http,
            uri,
            kind,
            outcome: Some(outcome),
        };
        let code = match (config, http) {
            (None, _) => Code::AuthConfigUnavailable,
            (Some(_), Some(h)) => {
                config_rule(h, kind, &case.uri).unwrap_or(Self::by_outcome(outcome))
            }
            // Pub/Sub and App Engine targets carry no token to get wrong.
            (Some(_), None) => Self::by_outcome(outcome),
        };
        self.make(code, &case, lookup.source, lookup.reason.as_deref())
    }

    fn by_outcome(outcome: Outcome) -> Code {
        if outcome == Outcome::PermissionDenied {
            Code::MissingInvokerPermission
        } else {
            Code::UnexplainedAuthFailure
        }
    }

    /// `schedwatch audit`: rules 2–5 on a job's config, before anything fails. Rule 2 only for
    /// targets that need a token (Google APIs, Cloud Run, Cloud Functions): a webhook of one's
    /// own may well take none.
    pub fn audit(&self, config: &JobConfig, source: AuthSource) -> Vec<Diagnosis> {
        let Some(http) = config.http() else {
            return Vec::new();
        };
        let uri = http.uri.clone().unwrap_or_default();
        let kind = TargetKind::of(&uri);
        let case = Case {
            job: &config.key,
            config: Some(config),
            http: Some(http),
            uri,
            kind,
            outcome: None,
        };
        match config_rule(http, kind, &case.uri) {
            Some(Code::MissingAuthToken) if kind == TargetKind::Other => Vec::new(),
            Some(code) => vec![self.make(code, &case, source, None)],
            None => Vec::new(),
        }
    }

    fn make(
        &self,
        code: Code,
        case: &Case<'_>,
        source: AuthSource,
        reason: Option<&str>,
    ) -> Diagnosis {
        let auth = match case.http.map(|h| &h.token) {
            Some(Token::Oidc {
                service_account,
                audience,
            }) => AuthFacts {
                source,
                token: "oidc".into(),
                service_account: service_account.clone(),
                audience: audience.clone(),
                scope: None,
            },
            Some(Token::OAuth {
                service_account,
                scope,
            }) => AuthFacts {
                source,
                token: "oauth".into(),
                service_account: service_account.clone(),
                audience: None,
                scope: scope.clone(),
            },
            Some(Token::None) => AuthFacts {
                source,
                token: "none".into(),
                service_account: None,
                audience: None,
                scope: None,
            },
            None => AuthFacts {
                source,
                token: if case.config.is_some() {
                    "none"
                } else {
                    "unknown"
                }
                .into(),
                service_account: None,
                audience: None,
                scope: None,
            },
        };
        let (summary, detail) = words(code, case, &auth, reason);
        let fix = fix::render(
            code,
            &fix::Facts::new(case.job, case.config, &case.uri, case.kind, &auth),
        );
        Diagnosis {
            code,
            summary,
            detail,
            fix,
            target_url: case.uri.clone(),
            target_kind: case.kind,
            auth,
        }
    }
}

/// The summary and detail of a diagnosis: prose for people, so every value in it (from a log
/// entry, a job config or an API's answer) is shown with its control and bidi characters as
/// escapes ([`escape::line`]); the exact values are the alert's own fields.
fn words(code: Code, case: &Case<'_>, auth: &AuthFacts, reason: Option<&str>) -> (String, String) {
    let job = case.job.name();
    let uri = if case.uri.is_empty() {
        "its target".into()
    } else {
        escape::line(&case.uri)
    };
    let sa = escape::line(
        auth.service_account
            .as_deref()
            .unwrap_or("(no service account set)"),
    );
    let reason = reason.map(escape::line);
    let audience = auth.audience.as_deref().map(escape::line);
    let failure = match case.outcome {
        Some(Outcome::PermissionDenied) => "403 PERMISSION_DENIED",
        Some(_) => "401 UNAUTHENTICATED",
        None => "an auth failure",
    };
    match code {
        Code::AuthConfigUnavailable => (
            "The job fails authentication, and schedwatch could not read its config to name the cause.".into(),
            format!(
                "{job} gets {failure} from {uri}. Its Cloud Scheduler config was not found ({}). Export it with \
                 `gcloud scheduler jobs describe` and add it to the job inventory, or grant schedwatch \
                 roles/cloudscheduler.viewer so it can read it from the API; the next alert will then name the cause.",
                reason.as_deref().unwrap_or("no source had it")
            ),
        ),
        Code::MissingAuthToken => {
            let needs = if case.kind.wants_oauth() {
                "Google APIs need an OAuth access token (--oauth-service-account-email)"
            } else {
                "Cloud Run, Cloud Functions and most endpoints need an OIDC ID token (--oidc-service-account-email)"
            };
            (
                "The job sends no auth token, and its target requires one.".into(),
                format!(
                    "{job} calls {uri} without an oidcToken or oauthToken, so Cloud Scheduler sends the request \
                     unauthenticated. {needs}. Add the token for a service account in the job's project."
                ),
            )
        }
        Code::OidcTokenForGoogleApi => (
            "The job sends an OIDC ID token to a Google API, which accepts only OAuth access tokens.".into(),
            format!(
                "{job} calls {uri} with an OIDC token for {sa}. Google APIs under googleapis.com reject ID \
                 tokens with 401 before IAM is evaluated, so no audience value and no extra role can fix it. \
                 Switch the job to an OAuth token for the same service account (scope cloud-platform): \
                 `gcloud scheduler jobs update http` replaces the OIDC setting in place."
            ),
        ),
        Code::OauthTokenForNonGoogleTarget => (
            "The job sends an OAuth access token to a target that verifies OIDC ID tokens.".into(),
            format!(
                "{job} calls {uri} with an OAuth token for {sa}. Only Google APIs (googleapis.com) accept \
                 access tokens; Cloud Run services, Cloud Functions and your own endpoints verify a \
                 Google-signed ID token whose audience is the target's URL. Switch the job to an OIDC token \
                 for the same service account."
            ),
        ),
        Code::OidcAudienceMismatch => (
            "The job's OIDC audience names a different origin than the URL it calls.".into(),
            format!(
                "{job} calls {uri} with an ID token whose audience is {}. Cloud Run and Cloud Functions accept \
                 a token only when its audience is their own URL or a configured custom audience, so this is \
                 likely the cause of the {failure}. Set the audience to the target's origin, or keep it and add \
                 it to the service's accepted audiences (`gcloud run services update SERVICE \
                 --add-custom-audiences=AUDIENCE`).",
                audience.as_deref().unwrap_or("unset")
            ),
        ),
        Code::MissingInvokerPermission => (
            "The target refuses the job's service account: it likely lacks the invoker role.".into(),
            format!(
                "{job} calls {uri} as {sa} and gets {failure}: the token was accepted, the caller was not \
                 allowed. Grant the service account the invoker role on the target (roles/run.invoker for \
                 Cloud Run; a Cloud Run job run with overrides in the body needs run.jobs.runWithOverrides, \
                 e.g. roles/run.developer). If every authenticated job in the project gets 403, the Cloud \
                 Scheduler service agent may have lost roles/cloudscheduler.serviceAgent instead."
            ),
        ),
        Code::UnexplainedAuthFailure => (
            "The job fails authentication, and its config does not explain why.".into(),
            format!(
                "{job} calls {uri} as {sa} ({} token) and gets {failure}, although the token type matches the \
                 target. Check that the service account exists and is enabled, that the Cloud Scheduler \
                 service agent may mint tokens for it (roles/iam.serviceAccountTokenCreator), and whether the \
                 target has its own auth in front (IAP, middleware).",
                auth.token
            ),
        ),
    }
}

#[cfg(test)]
mod tests;
