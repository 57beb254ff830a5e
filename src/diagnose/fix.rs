//! Fixes: a paste-ready `gcloud` command and the Terraform equivalent, from the job's own values.
//!
//! Every gcloud command names `--project` and `--location`/`--region`, and the tests run each
//! through the real gcloud CLI's argument parser; every Terraform snippet is parsed as HCL.
//! Where the config does not name a value, a clearly marked placeholder stands in its place
//! (`SERVICE_ACCOUNT_EMAIL`, `PROJECT_NUMBER`, `SERVICE_NAME`).

use serde::{Deserialize, Serialize};

use super::target::{self, Invoked, TargetKind};
use super::{AuthFacts, Code};
use crate::correlate::JobConfig;
use crate::JobKey;
use schedwatch_sinks::escape;

/// A fix, as the alert carries it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fix {
    /// Shell lines: comments (`#`) and gcloud commands, continuation lines ending in `\`.
    pub gcloud: String,
    /// HCL.
    pub terraform: String,
}

/// The placeholder for an unknown service account.
pub const SA_PLACEHOLDER: &str = "SERVICE_ACCOUNT_EMAIL";
/// The OAuth scope every Google API accepts.
pub const CLOUD_PLATFORM: &str = "https://www.googleapis.com/auth/cloud-platform";

/// The values a fix is built from.
pub struct Facts<'a> {
    job: &'a JobKey,
    config: Option<&'a JobConfig>,
    uri: &'a str,
    kind: TargetKind,
    sa: String,
}

impl<'a> Facts<'a> {
    /// Gathers the facts; the service account falls back to the placeholder.
    pub fn new(
        job: &'a JobKey,
        config: Option<&'a JobConfig>,
        uri: &'a str,
        kind: TargetKind,
        auth: &AuthFacts,
    ) -> Self {
        let sa = auth
            .service_account
            .clone()
            .unwrap_or_else(|| SA_PLACEHOLDER.to_owned());
        Facts {
            job,
            config,
            uri,
            kind,
            sa,
        }
    }

    /// The audience an ID token for this target should carry: the origin for Cloud Run and
    /// other endpoints, the function URL for Cloud Functions (1st gen checks the full URL).
    fn audience(&self) -> String {
        match self.kind {
            TargetKind::CloudFunctions => target::without_query(self.uri),
            _ => target::origin_url(self.uri).unwrap_or_else(|| "https://TARGET_ORIGIN".into()),
        }
    }

    fn body_has_overrides(&self) -> bool {
        self.config
            .and_then(|c| c.http())
            .and_then(|h| h.body.as_deref())
            .is_some_and(|b| b.contains("overrides"))
    }
}

/// The fix for a code.
pub fn render(code: Code, f: &Facts<'_>) -> Fix {
    match code {
        Code::AuthConfigUnavailable => Fix {
            gcloud: describe_job(f),
            terraform: import_block(f.job),
        },
        Code::MissingAuthToken if f.kind.wants_oauth() => switch_token(f, Token::OAuth),
        Code::MissingAuthToken => switch_token(f, Token::Oidc),
        Code::OidcTokenForGoogleApi => switch_token(f, Token::OAuth),
        Code::OauthTokenForNonGoogleTarget | Code::OidcAudienceMismatch => {
            switch_token(f, Token::Oidc)
        }
        Code::MissingInvokerPermission => grant_invoker(f),
        Code::UnexplainedAuthFailure => {
            let mut gcloud = describe_job(f);
            if f.sa != SA_PLACEHOLDER {
                let project = sa_project(&f.sa).unwrap_or_else(|| f.job.project().to_owned());
                gcloud.push_str("\n# Does the service account exist, and is it enabled?\n");
                gcloud.push_str(&command(
                    "iam service-accounts describe",
                    &f.sa,
                    &[flag("project", &project)],
                    ONE_LINE,
                ));
            }
            Fix {
                gcloud,
                terraform: import_block(f.job),
            }
        }
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Token {
    OAuth,
    Oidc,
}

/// `gcloud scheduler jobs update http` with the token the target needs, and the job resource
/// with that token.
fn switch_token(f: &Facts<'_>, token: Token) -> Fix {
    let j = f.job;
    let mut flags = vec![flag("project", j.project()), flag("location", j.location())];
    match token {
        Token::OAuth => flags.extend([
            flag("oauth-service-account-email", &f.sa),
            flag("oauth-token-scope", CLOUD_PLATFORM),
        ]),
        Token::Oidc => flags.extend([
            flag("oidc-service-account-email", &f.sa),
            flag("oidc-token-audience", &f.audience()),
        ]),
    }
    let gcloud = command("scheduler jobs update http", j.job_id(), &flags, LINES);
    let token_block = match token {
        Token::OAuth => format!(
            "    oauth_token {{\n      service_account_email = {}\n      scope                 = {}\n    }}\n",
            hcl(&f.sa),
            hcl(CLOUD_PLATFORM)
        ),
        Token::Oidc => format!(
            "    oidc_token {{\n      service_account_email = {}\n      audience              = {}\n    }}\n",
            hcl(&f.sa),
            hcl(&f.audience())
        ),
    };
    let http = f.config.and_then(|c| c.http());
    let method = http
        .and_then(|h| h.http_method.clone())
        .unwrap_or_else(|| "POST".into());
    let schedule = f
        .config
        .and_then(|c| c.schedule.clone())
        .unwrap_or_else(|| "SCHEDULE".into());
    let time_zone = f
        .config
        .and_then(|c| c.time_zone.clone())
        .unwrap_or_else(|| "Etc/UTC".into());
    let terraform = format!(
        "resource \"google_cloud_scheduler_job\" {} {{\n  project   = {}\n  region    = {}\n  name      = {}\n  schedule  = {}\n  time_zone = {}\n\n  http_target {{\n    uri         = {}\n    http_method = {}\n\n{token_block}  }}\n}}\n",
        hcl(&tf_name(j.job_id())),
        hcl(j.project()),
        hcl(j.location()),
        hcl(j.job_id()),
        hcl(&schedule),
        hcl(&time_zone),
        hcl(f.uri),
        hcl(&method),
    );
    Fix { gcloud, terraform }
}

/// The invoker grant on whatever the target invokes.
fn grant_invoker(f: &Facts<'_>) -> Fix {
    let j = f.job;
    let member = format!("serviceAccount:{}", f.sa);
    if let Some(crate::correlate::Target::PubSub { topic }) = f.config.map(|c| &c.target) {
        return grant_publisher(f, topic.as_deref());
    }
    let location = j.location();
    match Invoked::of(f.uri) {
        Invoked::RunJob {
            project,
            region,
            name,
        } => grant_run_job(
            f,
            &project,
            &region.unwrap_or_else(|| location.to_owned()),
            &name,
        ),
        Invoked::RunService { name, region } => {
            let note = if region.is_none() {
                format!(
                    "# The URL does not name the service's region; {} (the job's) is assumed.\n",
                    sh(location)
                )
            } else {
                String::new()
            };
            let region = region.unwrap_or_else(|| location.to_owned());
            run_service_grant(&note, &name, j.project(), &region, &member)
        }
        Invoked::Function { region, name } => {
            let region = region.unwrap_or_else(|| location.to_owned());
            let first_gen = command(
                "functions add-iam-policy-binding",
                &name,
                &[
                    flag("project", j.project()),
                    flag("region", &region),
                    flag("member", &member),
                    flag("role", "roles/cloudfunctions.invoker"),
                ],
                ONE_LINE,
            );
            let note = format!(
                "# 2nd gen functions run as a Cloud Run service of the same name, so it takes roles/run.invoker.\n\
                 # 1st gen instead: {first_gen}\n"
            );
            run_service_grant(&note, &name, j.project(), &region, &member)
        }
        Invoked::Unknown if f.kind == TargetKind::GoogleApi => {
            let gcloud = format!(
                "# Grant the role the API needs to run this call, e.g. roles/run.invoker for Cloud Run,\n\
                 # roles/workflows.invoker for Workflows, roles/cloudfunctions.invoker for Cloud Functions.\n{}",
                command(
                    "projects add-iam-policy-binding",
                    j.project(),
                    &[flag("member", &member), flag("role", "ROLE_FOR_THE_API")],
                    LINES,
                )
            );
            let terraform = iam_member(
                "google_project_iam_member",
                j.job_id(),
                &[("project", j.project())],
                "ROLE_FOR_THE_API",
                &member,
            );
            Fix { gcloud, terraform }
        }
        Invoked::Unknown => {
            let note = "# The target is not a run.app URL: if it is a Cloud Run service behind a custom domain or load\n\
                        # balancer, grant on that service (SERVICE_NAME); otherwise the target's own auth refused the caller.\n";
            run_service_grant(note, "SERVICE_NAME", j.project(), location, &member)
        }
    }
}

/// A Pub/Sub target: Cloud Scheduler's service agent publishes, so it needs the publisher role on
/// the topic (no invoker role is involved).
fn grant_publisher(f: &Facts<'_>, topic: Option<&str>) -> Fix {
    let j = f.job;
    let topic = topic
        .map(str::to_owned)
        .unwrap_or_else(|| format!("projects/{}/topics/TOPIC", j.project()));
    let agent =
        "serviceAccount:service-PROJECT_NUMBER@gcp-sa-cloudscheduler.iam.gserviceaccount.com";
    let gcloud = format!(
        "# A Pub/Sub target needs no roles/run.invoker: Cloud Scheduler publishes as its service\n\
         # agent, which needs roles/pubsub.publisher on the topic. PROJECT_NUMBER is {}'s number.\n{}",
        sh(j.project()),
        command(
            "pubsub topics add-iam-policy-binding",
            &topic,
            &[
                flag("project", j.project()),
                flag("member", agent),
                flag("role", "roles/pubsub.publisher"),
            ],
            LINES,
        )
    );
    let terraform = iam_member(
        "google_pubsub_topic_iam_member",
        j.job_id(),
        &[("project", j.project()), ("topic", &topic)],
        "roles/pubsub.publisher",
        agent,
    );
    Fix { gcloud, terraform }
}

/// A Cloud Run job run through the Admin API: `run.jobs.run` (`roles/run.invoker`), or
/// `run.jobs.runWithOverrides` (`roles/run.developer`) when the body carries overrides.
fn grant_run_job(f: &Facts<'_>, project: &str, region: &str, name: &str) -> Fix {
    let member = format!("serviceAccount:{}", f.sa);
    let (role, note) = if f.body_has_overrides() {
        (
            "roles/run.developer",
            "# The request body carries overrides: roles/run.invoker grants run.jobs.run but not\n# run.jobs.runWithOverrides, which roles/run.developer includes.\n",
        )
    } else {
        ("roles/run.invoker", "")
    };
    let gcloud = format!(
        "{note}{}",
        command(
            "run jobs add-iam-policy-binding",
            name,
            &[
                flag("project", project),
                flag("region", region),
                flag("member", &member),
                flag("role", role),
            ],
            LINES,
        )
    );
    let terraform = iam_member(
        "google_cloud_run_v2_job_iam_member",
        name,
        &[("project", project), ("location", region), ("name", name)],
        role,
        &member,
    );
    Fix { gcloud, terraform }
}

fn run_service_grant(note: &str, name: &str, project: &str, region: &str, member: &str) -> Fix {
    let gcloud = format!(
        "{note}{}",
        command(
            "run services add-iam-policy-binding",
            name,
            &[
                flag("project", project),
                flag("region", region),
                flag("member", member),
                flag("role", "roles/run.invoker"),
            ],
            LINES,
        )
    );
    let terraform = iam_member(
        "google_cloud_run_v2_service_iam_member",
        name,
        &[("project", project), ("location", region), ("name", name)],
        "roles/run.invoker",
        member,
    );
    Fix { gcloud, terraform }
}

fn iam_member(
    resource: &str,
    name: &str,
    scope: &[(&str, &str)],
    role: &str,
    member: &str,
) -> String {
    let mut out = format!(
        "resource {} {} {{\n",
        hcl(resource),
        hcl(&format!("{}_invoker", tf_name(name)))
    );
    for (k, v) in scope {
        out.push_str(&format!("  {k:<8} = {}\n", hcl(v)));
    }
    out.push_str(&format!(
        "  {:<8} = {}\n  {:<8} = {}\n}}\n",
        "role",
        hcl(role),
        "member",
        hcl(member)
    ));
    out
}

fn describe_job(f: &Facts<'_>) -> String {
    let j = f.job;
    // `./`: a job id may start with `-`, which `--jobs` would take for a flag.
    let file = sh(&format!("./{}.json", j.job_id()));
    format!(
        "# Read the job's auth config (httpTarget.oidcToken / oauthToken); save the output as\n\
         # {file} and run `schedwatch audit --jobs {file}` to name the cause.\n{}",
        command(
            "scheduler jobs describe",
            j.job_id(),
            &[
                flag("project", j.project()),
                flag("location", j.location()),
                flag("format", "json"),
            ],
            ONE_LINE,
        )
    )
}

fn import_block(j: &JobKey) -> String {
    format!(
        "# Bring the job under Terraform to see and change its auth config:\nimport {{\n  to = google_cloud_scheduler_job.{}\n  id = {}\n}}\n",
        tf_name(j.job_id()),
        hcl(&j.name())
    )
}

/// Flags on the command's line (`describe`, and a command quoted in a comment).
const ONE_LINE: &str = " ";
/// One flag a line, with continuations: the commands people read and edit.
const LINES: &str = " \\\n  ";

/// `--name=VALUE`, the value a shell word. Always `=`: a value that starts with `-` stays the
/// flag's value.
fn flag(name: &str, value: &str) -> String {
    format!("--{name}={}", sh(value))
}

/// `gcloud WORDS RESOURCE FLAGS…`, the flags joined by `sep`. A resource (the one positional
/// argument) that starts with `-` would be read as a flag — a job id may, and
/// `--impersonate-service-account` is a valid one — so it then goes last, after `--`, which
/// gcloud reads as the end of the flags.
fn command(words: &str, resource: &str, flags: &[String], sep: &str) -> String {
    let mut out = format!("gcloud {words}");
    let flag_like = resource.starts_with('-');
    if !flag_like {
        out.push(' ');
        out.push_str(&sh(resource));
    }
    for f in flags {
        out.push_str(sep);
        out.push_str(f);
    }
    if flag_like {
        out.push_str(sep);
        out.push_str("-- ");
        out.push_str(&sh(resource));
    }
    out
}

/// A service account's project: `NAME@PROJECT.iam.gserviceaccount.com`.
fn sa_project(sa: &str) -> Option<String> {
    sa.split_once('@')?
        .1
        .strip_suffix(".iam.gserviceaccount.com")
        .map(str::to_owned)
}

/// A shell word: as it is when it holds only safe characters, single-quoted otherwise, and
/// ANSI-C quoted (`$'…'`, bash and zsh) when it holds a control or invisible character, each
/// written as its UTF-8 bytes in `\xHH` escapes. So a fix never carries such a character raw:
/// a newline cannot end a `#` comment line, an ESC cannot reach the terminal or cut a bracketed
/// paste short. (A NUL cannot be in an argument at all: bash ends the word there.)
pub fn sh(s: &str) -> String {
    let safe = !s.is_empty()
        // zsh expands a word that starts with `=` to a command's path.
        && !s.starts_with('=')
        && s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:/@=+,%".contains(&b));
    if safe {
        return s.to_owned();
    }
    if !s.contains(escape::is_unsafe) {
        return format!("'{}'", s.replace('\'', r"'\''"));
    }
    let mut out = String::with_capacity(s.len() + 8);
    out.push_str("$'");
    for c in s.chars() {
        match c {
            '\\' => out.push_str(r"\\"),
            // Not `\'` nor a raw `!`: interactive bash's history expansion reads `\'` as the
            // quote's end and expands `!` there.
            '\'' | '!' => out.push_str(&format!(r"\x{:02x}", c as u32)),
            c if escape::is_unsafe(c) => {
                let mut utf8 = [0; 4];
                for b in c.encode_utf8(&mut utf8).bytes() {
                    out.push_str(&format!(r"\x{b:02x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// An HCL string literal, with template sequences escaped.
pub fn hcl(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '$' | '%' if chars.peek() == Some(&'{') => {
                out.push(c);
                out.push(c);
            }
            // Controls and bidi characters as escapes: the value is the same, what people see
            // is what Terraform reads.
            c if escape::is_unsafe(c) => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A Terraform resource name: letters, digits, `_` and `-`, starting with a letter or `_`.
pub fn tf_name(id: &str) -> String {
    let mut name: String = id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if !name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_') {
        name.insert(0, '_');
    }
    name
}

#[cfg(test)]
mod tests;
