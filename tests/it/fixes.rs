//! Every fix schedwatch emits is accepted by the real gcloud CLI's argument parser and parses
//! as HCL (CONTRACT section 3), and none gives the advice DOMAIN.md rules out.

use std::collections::BTreeSet;
use std::sync::Arc;

use schedwatch::correlate::{AuthSource, JobConfig, Lookup};
use schedwatch::decode::Outcome;
use schedwatch::diagnose::{Code, Diagnoser, Diagnosis};
use schedwatch::JobKey;
use serde_json::json;

const SA: &str = "scheduler-invoker@acme-data-prod.iam.gserviceaccount.com";

/// Target URLs of every kind the fixes distinguish.
const TARGETS: &[&str] = &[
    "https://us-east1-run.googleapis.com/apis/run.googleapis.com/v1/namespaces/acme-data-prod/jobs/commit-worker:run",
    "https://run.googleapis.com/v2/projects/acme-data-prod/locations/europe-west1/jobs/hourly-rollup:run",
    "https://workflowexecutions.googleapis.com/v1/projects/acme-data-prod/locations/us-east1/workflows/wf/executions",
    "https://report-api-4x7qk2m9da-ew.a.run.app/tasks/rollup?full=1&x=y",
    "https://report-api-123456789012.europe-west1.run.app/tasks",
    "https://europe-west1-acme-data-prod.cloudfunctions.net/rollup",
    "https://hooks.partner.example:8443/ingest",
];

/// Every diagnosis the rules can give over a grid of configs, outcomes and targets.
fn all_diagnoses() -> Vec<Diagnosis> {
    let key = JobKey::new("acme-data-prod", "us-east1", "commit-worker").unwrap();
    let d = Diagnoser::default();
    let mut out = Vec::new();
    let tokens = [
        json!({}),
        json!({"oidcToken": {"serviceAccountEmail": SA}}),
        json!({"oidcToken": {"serviceAccountEmail": SA, "audience": "https://custom.example.com"}}),
        json!({"oidcToken": {"audience": "https://other.example.com"}}),
        json!({"oauthToken": {"serviceAccountEmail": SA, "scope": "https://www.googleapis.com/auth/cloud-platform"}}),
        json!({"oauthToken": {}}),
    ];
    for uri in TARGETS {
        for token in &tokens {
            for body in [None, Some("eyJvdmVycmlkZXMiOnsidGFza0NvdW50IjoyfX0=")] {
                let mut http = json!({"uri": uri, "httpMethod": "POST"});
                http.as_object_mut()
                    .unwrap()
                    .extend(token.as_object().unwrap().clone());
                if let Some(b) = body {
                    http["body"] = json!(b);
                }
                let job = json!({"name": key.name(), "httpTarget": http, "schedule": "*/5 * * * *", "timeZone": "Europe/Amsterdam"});
                let lookup = Lookup {
                    config: Some(Arc::new(JobConfig::from_value(job).unwrap())),
                    source: AuthSource::Inventory,
                    reason: None,
                };
                for outcome in [Outcome::Unauthenticated, Outcome::PermissionDenied] {
                    out.push(d.diagnose(&key, &lookup, outcome, Some(uri)));
                }
            }
        }
        let none = Lookup {
            config: None,
            source: AuthSource::Unavailable,
            reason: Some("not in the job inventory".into()),
        };
        out.push(d.diagnose(&key, &none, Outcome::Unauthenticated, Some(uri)));
    }
    for target in [
        json!({"pubsubTarget": {"topicName": "projects/acme-data-prod/topics/nightly"}}),
        json!({"appEngineHttpTarget": {"relativeUri": "/x"}}),
    ] {
        let mut job = json!({"name": key.name()});
        job.as_object_mut()
            .unwrap()
            .extend(target.as_object().unwrap().clone());
        let lookup = Lookup {
            config: Some(Arc::new(JobConfig::from_value(job).unwrap())),
            source: AuthSource::Inventory,
            reason: None,
        };
        for outcome in [Outcome::Unauthenticated, Outcome::PermissionDenied] {
            out.push(d.diagnose(&key, &lookup, outcome, None));
        }
    }
    out
}

/// The gcloud commands in a fix, as a person would paste them: continuations joined, and a
/// command quoted in a comment counts too.
fn gcloud_commands(text: &str) -> Vec<String> {
    let joined = text.replace("\\\n", " ");
    joined
        .lines()
        .filter_map(|l| l.find("gcloud ").map(|i| l[i..].trim().to_owned()))
        .collect()
}

#[test]
fn every_gcloud_fix_passes_the_real_gcloud_parser() {
    let commands: BTreeSet<String> = all_diagnoses()
        .iter()
        .flat_map(|d| gcloud_commands(&d.fix.gcloud))
        .collect();
    assert!(
        commands.len() >= 15,
        "the grid covers many distinct commands: {}",
        commands.len()
    );
    let commands: Vec<String> = commands.into_iter().collect();
    let dir = tempfile::tempdir().unwrap();
    let failures = crate::common::gcloud_rejects("", &commands, dir.path());
    assert!(
        failures.is_empty(),
        "gcloud rejects:\n{}",
        failures.join("\n")
    );
}

#[test]
fn every_terraform_fix_is_valid_hcl_of_the_right_resource() {
    for d in all_diagnoses() {
        let body: hcl::Body = hcl::from_str(&d.fix.terraform)
            .unwrap_or_else(|e| panic!("{:?}: not HCL: {e}\n{}", d.code, d.fix.terraform));
        let blocks: Vec<&hcl::Block> = body.blocks().collect();
        assert!(
            !blocks.is_empty(),
            "{:?}: no block in {}",
            d.code,
            d.fix.terraform
        );
        let tf = &d.fix.terraform;
        match d.code {
            Code::OidcTokenForGoogleApi => assert!(
                tf.contains("oauth_token {") && !tf.contains("oidc_token"),
                "{tf}"
            ),
            Code::OauthTokenForNonGoogleTarget | Code::OidcAudienceMismatch => {
                assert!(
                    tf.contains("oidc_token {") && !tf.contains("oauth_token"),
                    "{tf}"
                )
            }
            Code::MissingAuthToken => assert!(tf.contains("http_target {"), "{tf}"),
            Code::MissingInvokerPermission => assert!(tf.contains("_iam_member"), "{tf}"),
            Code::AuthConfigUnavailable | Code::UnexplainedAuthFailure => {
                assert_eq!(blocks[0].identifier(), "import", "{tf}")
            }
        }
    }
}

#[test]
fn fixes_never_give_the_advice_in_circulation() {
    for d in all_diagnoses() {
        let all = format!("{}\n{}", d.fix.gcloud, d.fix.terraform);
        for never in ["keys create", "Basic ", "key.json"] {
            assert!(
                !all.contains(never),
                "{:?} suggests {never:?}:\n{all}",
                d.code
            );
        }
        if d.code == Code::OidcTokenForGoogleApi {
            for never in [
                "--oidc-token-audience",
                "--oidc-service-account-email",
                "add-iam-policy-binding",
                "audience",
            ] {
                assert!(
                    !all.contains(never),
                    "{never:?} in the fix for an OIDC token to a Google API:\n{all}"
                );
            }
        }
        // More roles never fix a 401: grants appear only for 403s.
        if d.auth.source != AuthSource::Unavailable && d.code != Code::MissingInvokerPermission {
            assert!(
                !d.fix.gcloud.contains("add-iam-policy-binding"),
                "{:?} grants a role:\n{}",
                d.code,
                d.fix.gcloud
            );
        }
    }
}

#[test]
fn fixes_use_the_jobs_own_values_or_a_marked_placeholder() {
    for d in all_diagnoses() {
        let g = &d.fix.gcloud;
        if g.contains("scheduler jobs update http") {
            assert!(
                g.contains("--project=acme-data-prod") && g.contains("--location=us-east1"),
                "{g}"
            );
            match &d.auth.service_account {
                Some(sa) => assert!(g.contains(&format!("-service-account-email={sa}")), "{g}"),
                None => assert!(
                    g.contains("-service-account-email=SERVICE_ACCOUNT_EMAIL"),
                    "{g}"
                ),
            }
        }
        if d.code == Code::MissingInvokerPermission
            && d.target_url.contains(":run")
            && !d.target_url.contains("workflow")
        {
            assert!(g.contains("gcloud run jobs add-iam-policy-binding"), "{g}");
            assert!(g.contains("roles/run.invoker"), "{g}");
        }
        if g.contains("update http")
            && g.contains("oidc-token-audience")
            && d.target_url.contains(".a.run.app")
        {
            assert!(
                g.contains("--oidc-token-audience=https://report-api-4x7qk2m9da-ew.a.run.app \\")
                    || g.ends_with(
                        "--oidc-token-audience=https://report-api-4x7qk2m9da-ew.a.run.app"
                    ),
                "the audience is the origin:\n{g}"
            );
        }
    }
}

#[test]
fn a_body_with_overrides_names_run_developer() {
    let d: Vec<Diagnosis> = all_diagnoses()
        .into_iter()
        .filter(|d| {
            d.code == Code::MissingInvokerPermission && d.fix.gcloud.contains("runWithOverrides")
        })
        .collect();
    assert!(!d.is_empty());
    assert!(d
        .iter()
        .all(|d| d.fix.gcloud.contains("--role=roles/run.developer")));
}

/// A job id may start with `-` (Cloud Scheduler's grammar allows it: `--impersonate-service-account`
/// is a valid one), and so may a service account, topic, Cloud Run job or function name from
/// the job's config. gcloud must take each as the resource it names, never as a flag: every such
/// command puts it after `--`, and the real gcloud parser accepts it.
#[test]
fn names_that_start_with_a_hyphen_stay_arguments_for_the_real_gcloud() {
    let key = JobKey::new(
        "acme-data-prod",
        "us-east1",
        "--impersonate-service-account",
    )
    .unwrap();
    let sa = "-sa@acme-data-prod.iam.gserviceaccount.com";
    let d = Diagnoser::default();
    let lookup = |target: serde_json::Value| {
        let mut job = json!({"name": key.name()});
        job.as_object_mut()
            .unwrap()
            .extend(target.as_object().unwrap().clone());
        Lookup {
            config: Some(Arc::new(JobConfig::from_value(job).unwrap())),
            source: AuthSource::Inventory,
            reason: None,
        }
    };
    let run_job =
        "https://run.googleapis.com/v2/projects/acme-data-prod/locations/us-east1/jobs/-w:run";
    let cases = [
        // The OAuth switch on the job itself.
        (
            lookup(
                json!({"httpTarget": {"uri": run_job, "oidcToken": {"serviceAccountEmail": sa}}}),
            ),
            Outcome::Unauthenticated,
        ),
        // Grants on a Cloud Run job, a function (and its 1st gen command in a comment), a topic.
        (
            lookup(
                json!({"httpTarget": {"uri": run_job, "oauthToken": {"serviceAccountEmail": sa}}}),
            ),
            Outcome::PermissionDenied,
        ),
        (
            lookup(
                json!({"httpTarget": {"uri": "https://europe-west1-acme-data-prod.cloudfunctions.net/-fn", "oidcToken": {"serviceAccountEmail": sa}}}),
            ),
            Outcome::PermissionDenied,
        ),
        (
            lookup(json!({"pubsubTarget": {"topicName": "-t"}})),
            Outcome::PermissionDenied,
        ),
        // Does the service account exist?
        (
            lookup(
                json!({"httpTarget": {"uri": "https://api-4x7qk2m9da-ue.a.run.app/x", "oidcToken": {"serviceAccountEmail": sa}}}),
            ),
            Outcome::Unauthenticated,
        ),
        // No config: describe the job.
        (
            Lookup {
                config: None,
                source: AuthSource::Unavailable,
                reason: Some("not in the job inventory".into()),
            },
            Outcome::Unauthenticated,
        ),
    ];
    let mut commands = BTreeSet::new();
    for (lookup, outcome) in &cases {
        let diagnosis = d.diagnose(&key, lookup, *outcome, Some(run_job));
        let found = gcloud_commands(&diagnosis.fix.gcloud);
        assert!(!found.is_empty(), "{:?}: no command", diagnosis.code);
        for c in found {
            assert!(
                c.contains(" -- -"),
                "{:?}: the name is not after --: {c}",
                diagnosis.code
            );
            commands.insert(c);
        }
    }
    assert!(commands.len() >= 7, "{commands:#?}");
    let commands: Vec<String> = commands.into_iter().collect();
    let dir = tempfile::tempdir().unwrap();
    // A function name must start with a letter: gcloud refuses `-fn` as the NAME argument's
    // value, which shows it read it as the argument and not as a flag.
    let failures: Vec<String> = crate::common::gcloud_rejects("", &commands, dir.path())
        .into_iter()
        .filter(|f| {
            !(f.starts_with("gcloud functions ")
                && f.contains("argument NAME: Invalid value '-fn'"))
        })
        .collect();
    assert!(
        failures.is_empty(),
        "gcloud rejects:\n{}",
        failures.join("\n")
    );
}
