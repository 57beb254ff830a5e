//! The Cloud Scheduler API path (CONTRACT section 3, "looked up … in the Cloud Scheduler API"):
//! the real binary and the official `google-cloud-scheduler-v1` client against a loopback fake
//! of the REST API, serving the shared Job fixtures.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::http::{unused_url, FakeServer, Request, Response};
use crate::common::{self, fixture, ndjson, projection, run, stderr, write};

const PROJECT: &str = "acme-data-prod";
const LOCATION: &str = "europe-west1";
const PARENT: &str = "/v1/projects/acme-data-prod/locations/europe-west1";
const SA: &str = "scheduler-invoker@acme-data-prod.iam.gserviceaccount.com";
/// Real page tokens are opaque base64: `+`, `/` and `=` must survive the query string.
const PAGE_2: &str = "Q2lR+page/2==";

fn read_json(path: PathBuf) -> Value {
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

/// The jobs of `acme-data-prod/europe-west1` in list order: `list_response.json`'s three, then
/// four more broken or non-HTTP ones (the second page).
fn pages() -> (Vec<Value>, Vec<Value>) {
    let first = read_json(fixture("jobs/list_response.json"))["jobs"]
        .as_array()
        .unwrap()
        .clone();
    let second = [
        "no_auth_token_broken",
        "oauth_to_run_app_service_broken",
        "oidc_wrong_audience_broken",
        "app_engine_target_job",
    ]
    .iter()
    .map(|f| read_json(fixture(&format!("jobs/{f}.json"))))
    .collect();
    (first, second)
}

fn google_error(code: u16, message: &str, status: &str) -> Response {
    Response::json(
        code,
        &json!({"error": {"code": code, "message": message, "status": status}}),
    )
}

/// A fake of the Cloud Scheduler REST API: `GetJob` for every job of [`pages`] (or what `get`
/// answers first), 404 with Google's error body for others, and `ListJobs` in two pages.
fn fake_api(get: impl Fn(&str) -> Option<Value> + Send + Sync + 'static) -> FakeServer {
    let (first, second) = pages();
    let all: Vec<Value> = first.iter().chain(&second).cloned().collect();
    FakeServer::start(move |req| {
        if req.method != "GET" {
            return google_error(405, "Method not allowed.", "UNIMPLEMENTED");
        }
        let route = req.route();
        if route == format!("{PARENT}/jobs") {
            return match req.query("pageToken").as_deref() {
                None | Some("") => {
                    Response::json(200, &json!({"jobs": first, "nextPageToken": PAGE_2}))
                }
                Some(PAGE_2) => Response::json(200, &json!({"jobs": second})),
                Some(other) => google_error(
                    400,
                    &format!("Invalid page token {other:?}."),
                    "INVALID_ARGUMENT",
                ),
            };
        }
        let name = route.trim_start_matches("/v1/");
        let job = get(name).or_else(|| all.iter().find(|j| j["name"] == name).cloned());
        match job {
            Some(job) => Response::json(200, &job),
            None => google_error(404, "Job not found.", "NOT_FOUND"),
        }
    })
}

fn known_jobs() -> FakeServer {
    fake_api(|_| None)
}

/// A config with the Scheduler API pointed at `endpoint`, plus `extra` TOML lines.
fn config(dir: &Path, endpoint: &str, extra: &str) -> PathBuf {
    write(
        dir,
        "schedwatch.toml",
        format!(
            "[scheduler_api]\nenabled = true\nendpoint = \"{endpoint}\"\nanonymous = true\n{extra}"
        ),
    )
}

/// One AttemptFinished entry per `(insert_id, timestamp)`, from a fixture, for `job_id`.
fn entries(fixture_name: &str, job_id: &str, at: &[(&str, &str)]) -> String {
    let base = read_json(fixture(&format!("logs/{fixture_name}")));
    at.iter()
        .map(|(id, ts)| {
            let mut e = base.clone();
            e["insertId"] = json!(id);
            e["timestamp"] = json!(ts);
            e["resource"]["labels"]["job_id"] = json!(job_id);
            e["jsonPayload"]["jobName"] = json!(format!(
                "projects/{PROJECT}/locations/{LOCATION}/jobs/{job_id}"
            ));
            e.to_string() + "\n"
        })
        .collect()
}

fn failures(job_id: &str, n: usize) -> String {
    let at: Vec<(String, String)> = (0..n)
        .map(|i| {
            (
                format!("fail-{job_id}-{i}"),
                format!("2026-03-02T02:0{i}:07.298114Z"),
            )
        })
        .collect();
    let at: Vec<(&str, &str)> = at.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    entries("attempt_finished_401_oidc_run_job.json", job_id, &at)
}

fn get_job_calls(reqs: &[Request], job_id: &str) -> usize {
    reqs.iter()
        .filter(|r| r.route() == format!("{PARENT}/jobs/{job_id}"))
        .count()
}

/// Every request the client sent is a REST call of the real client, and carries no credentials.
fn assert_real_anonymous_calls(reqs: &[Request]) {
    assert!(!reqs.is_empty(), "the fake was never called");
    for r in reqs {
        assert_eq!(r.method, "GET", "{r:?}");
        assert!(
            r.route().starts_with(&format!("{PARENT}/jobs")),
            "not a Cloud Scheduler v1 path: {}",
            r.path
        );
        assert_eq!(
            r.header("authorization"),
            None,
            "anonymous mode sent credentials: {r:?}"
        );
        assert!(
            r.header("x-goog-api-client").is_some(),
            "not the official client? {r:?}"
        );
    }
}

fn replay(cfg: &Path, logs: &Path) -> std::process::Output {
    run(&[
        "replay",
        "--config",
        cfg.to_str().unwrap(),
        "--format",
        "json",
        logs.to_str().unwrap(),
    ])
}

#[test]
fn a_job_the_api_knows_is_diagnosed_from_its_config_at_the_first_failure_with_one_get_job() {
    let api = known_jobs();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &api.url(), "");
    // Five distinct failures plus a redelivery of the first.
    let mut logs = failures("nightly-etl-trigger", 5);
    logs += logs.clone().lines().next().unwrap();
    let logs = write(dir.path(), "logs.ndjson", logs + "\n");

    let out = replay(&cfg, &logs);
    assert!(out.status.success(), "{}", stderr(&out));
    let alerts = ndjson(&out);
    let job = format!("{PROJECT}/{LOCATION}/nightly-etl-trigger");
    assert_eq!(
        projection(&alerts),
        vec![(job, "firing".into(), "oidc-token-for-google-api".into(), 1)],
        "{alerts:#?}"
    );
    let a = &alerts[0];
    assert_eq!(
        a["failure"]["first_at"].as_str().unwrap().get(..19),
        Some("2026-03-02T02:00:07"),
        "{a:#}"
    );
    assert_eq!(a["auth"]["source"], "scheduler_api", "{a:#}");
    assert_eq!(a["auth"]["token"], "oidc", "{a:#}");
    assert_eq!(a["auth"]["service_account"], SA, "{a:#}");
    assert_eq!(a["diagnosis"]["confidence"], "confirmed", "{a:#}");
    let gcloud = a["fix"]["gcloud"].as_str().unwrap();
    assert!(
        gcloud.contains(&format!("--oauth-service-account-email={SA}")),
        "{gcloud}"
    );
    assert!(
        a["fix"]["terraform"].as_str().unwrap().contains(SA),
        "{a:#}"
    );

    let reqs = api.requests();
    assert_real_anonymous_calls(&reqs);
    assert_eq!(
        get_job_calls(&reqs, "nightly-etl-trigger"),
        1,
        "one GetJob for six entries of one incident: {reqs:#?}"
    );
    assert_eq!(reqs.len(), 1, "{reqs:#?}");
}

#[test]
fn a_new_incident_fetches_the_job_again_and_sees_the_fixed_config() {
    // The first GetJob answers the broken OIDC job, later ones the fixed OAuth one: the second
    // incident must be diagnosed from the fixed config, although the first answer is still
    // inside cache_ttl.
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&calls);
    let api = fake_api(move |name| {
        if !name.ends_with("/jobs/nightly-etl-trigger") {
            return None;
        }
        let f = if seen.fetch_add(1, Ordering::SeqCst) == 0 {
            "oidc_to_googleapis_run_job_broken"
        } else {
            "oauth_to_googleapis_run_job_good"
        };
        Some(read_json(fixture(&format!("jobs/{f}.json"))))
    });
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &api.url(), "");
    let job = "nightly-etl-trigger";
    let mut logs = entries(
        "attempt_finished_401_oidc_run_job.json",
        job,
        &[
            ("a1", "2026-03-02T02:00:07Z"),
            ("a2", "2026-03-02T02:00:17Z"),
        ],
    );
    logs += &entries(
        "attempt_finished_200_success.json",
        job,
        &[("ok", "2026-03-02T03:00:00Z")],
    );
    logs += &entries(
        "attempt_finished_401_oidc_run_job.json",
        job,
        &[
            ("b1", "2026-03-02T04:00:07Z"),
            ("b2", "2026-03-02T04:00:17Z"),
            ("b3", "2026-03-02T04:00:27Z"),
        ],
    );
    let logs = write(dir.path(), "logs.ndjson", logs);

    let out = replay(&cfg, &logs);
    assert!(out.status.success(), "{}", stderr(&out));
    let full = format!("{PROJECT}/{LOCATION}/{job}");
    assert_eq!(
        projection(&ndjson(&out)),
        vec![
            (
                full.clone(),
                "firing".into(),
                "oidc-token-for-google-api".into(),
                1
            ),
            (
                full.clone(),
                "resolved".into(),
                "oidc-token-for-google-api".into(),
                2
            ),
            // OAuth to a Google API is right: nothing in the config explains the new 401s.
            (full, "firing".into(), "unexplained-auth-failure".into(), 3),
        ],
        "{}",
        stderr(&out)
    );
    let reqs = api.requests();
    assert_real_anonymous_calls(&reqs);
    assert_eq!(
        get_job_calls(&reqs, job),
        2,
        "one GetJob per incident opened: {reqs:#?}"
    );
}

#[test]
fn a_job_the_api_does_not_know_is_config_unavailable_and_fires_at_the_third_failure() {
    let api = known_jobs();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &api.url(), "");
    let logs = write(dir.path(), "logs.ndjson", failures("ghost-trigger", 5));

    let out = replay(&cfg, &logs);
    let err = stderr(&out);
    assert!(
        out.status.success(),
        "a failed look-up is not an error: {err}"
    );
    let alerts = ndjson(&out);
    let job = format!("{PROJECT}/{LOCATION}/ghost-trigger");
    assert_eq!(
        projection(&alerts),
        vec![(job, "firing".into(), "auth-config-unavailable".into(), 3)],
        "{err}"
    );
    assert_eq!(
        alerts[0]["auth"]["source"], "unavailable",
        "{:#}",
        alerts[0]
    );
    assert_eq!(
        alerts[0]["diagnosis"]["confidence"], "likely",
        "{:#}",
        alerts[0]
    );
    assert!(
        err.contains("ghost-trigger") && err.contains("Job not found"),
        "the log names the job and the API's reason: {err}"
    );

    let reqs = api.requests();
    assert_real_anonymous_calls(&reqs);
    assert_eq!(
        get_job_calls(&reqs, "ghost-trigger"),
        1,
        "a failed look-up is remembered for error_ttl (60s): {reqs:#?}"
    );
}

#[test]
fn an_unreachable_api_is_config_unavailable_not_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    // The client retries connection errors; the per-call deadline bounds the wait.
    let cfg = config(dir.path(), &unused_url(), "timeout = \"2s\"\n");
    let logs = write(
        dir.path(),
        "logs.ndjson",
        failures("nightly-etl-trigger", 4),
    );

    let started = Instant::now();
    let out = replay(&cfg, &logs);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    let job = format!("{PROJECT}/{LOCATION}/nightly-etl-trigger");
    let alerts = ndjson(&out);
    assert_eq!(
        projection(&alerts),
        vec![(job, "firing".into(), "auth-config-unavailable".into(), 3)],
        "{err}"
    );
    assert_eq!(alerts[0]["auth"]["source"], "unavailable");
    assert!(
        err.contains("job config unavailable") && err.contains("nightly-etl-trigger"),
        "{err}"
    );
    // One 2s call, remembered for error_ttl; four calls would take 8s.
    assert!(
        started.elapsed() < Duration::from_secs(7),
        "took {:?}: {err}",
        started.elapsed()
    );
}

/// `python3 reference.py audit --jobs DIR` on the same jobs: `{job name: [codes]}`, or `None`
/// without python3.
fn reference_audit(jobs: &[Value]) -> Option<BTreeMap<String, Vec<String>>> {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "jobs.json",
        Value::Array(jobs.to_vec()).to_string(),
    );
    let out = std::process::Command::new("python3")
        .arg(common::shared().join("tools/reference.py"))
        .args(["audit", "--jobs", path.to_str().unwrap()])
        .output()
        .ok()?;
    assert!(
        out.status.code().is_some_and(|c| c <= 1),
        "reference.py failed: {}",
        stderr(&out)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    Some(
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                let v: Value = serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("reference.py audit line {l:?}: {e}"));
                (
                    v["job"].as_str().unwrap().to_owned(),
                    v["findings"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|c| c.as_str().unwrap().to_owned())
                        .collect(),
                )
            })
            .collect(),
    )
}

#[test]
fn audit_lists_every_job_across_pages_with_the_reference_findings() {
    let api = known_jobs();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &api.url(), "");
    let out = run(&[
        "audit",
        "--config",
        cfg.to_str().unwrap(),
        "--project",
        PROJECT,
        "--location",
        LOCATION,
        "--format",
        "json",
    ]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "some jobs have findings: {}",
        stderr(&out)
    );

    let got: BTreeMap<String, Vec<String>> = ndjson(&out)
        .iter()
        .map(|l| {
            let codes = l["findings"]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| f["code"].as_str().unwrap().to_owned())
                .collect();
            (l["job"]["name"].as_str().unwrap().to_owned(), codes)
        })
        .collect();
    let name = |j: &str| format!("projects/{PROJECT}/locations/{LOCATION}/jobs/{j}");
    let expected: BTreeMap<String, Vec<String>> = [
        ("nightly-etl-trigger", Some("oidc-token-for-google-api")),
        ("report-rollup", None),
        ("heartbeat-publisher", None),
        ("hourly-rollup-trigger", Some("missing-auth-token")),
        (
            "report-rollup-oauth",
            Some("oauth-token-for-non-google-target"),
        ),
        ("report-rollup-aud", Some("oidc-audience-mismatch")),
        ("legacy-cron-cleanup", None),
    ]
    .into_iter()
    .map(|(j, c)| (name(j), c.into_iter().map(String::from).collect()))
    .collect();
    assert_eq!(got, expected, "{}", String::from_utf8_lossy(&out.stdout));
    assert_eq!(ndjson(&out).len(), 7, "one line per job, none twice");

    let (first, second) = pages();
    let all: Vec<Value> = first.into_iter().chain(second).collect();
    if let Some(reference) = reference_audit(&all) {
        let reference: BTreeMap<String, Vec<String>> = reference
            .into_iter()
            .map(|(k, v)| (name(k.rsplit('/').next().unwrap()), v))
            .collect();
        assert_eq!(got, reference, "schedwatch and reference.py disagree");
    }
    for line in ndjson(&out) {
        for f in line["findings"].as_array().unwrap() {
            assert!(
                f["fix"]["gcloud"]
                    .as_str()
                    .is_some_and(|g| g.contains("--project=acme-data-prod")),
                "{f:#}"
            );
        }
    }

    let reqs = api.requests();
    assert_real_anonymous_calls(&reqs);
    assert_eq!(reqs.len(), 2, "two pages, two calls: {reqs:#?}");
    assert!(
        reqs.iter().all(|r| r.route() == format!("{PARENT}/jobs")),
        "{reqs:#?}"
    );
    assert_eq!(
        reqs[0].query("pageToken").unwrap_or_default(),
        "",
        "{}",
        reqs[0].path
    );
    assert_eq!(
        reqs[1].query("pageToken").as_deref(),
        Some(PAGE_2),
        "the second call asks for page 2: {}",
        reqs[1].path
    );
}

#[test]
fn audit_of_a_location_the_api_refuses_is_an_error_that_names_it() {
    let api = FakeServer::start(|_| {
        google_error(
            403,
            "The caller does not have permission",
            "PERMISSION_DENIED",
        )
    });
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &api.url(), "");
    let out = run(&[
        "audit",
        "--config",
        cfg.to_str().unwrap(),
        "--project",
        PROJECT,
        "--location",
        LOCATION,
    ]);
    let err = stderr(&out);
    // Not 1, which means "findings": 2, a set-up problem, with what to change.
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("projects/acme-data-prod/locations/europe-west1")
            && err.contains("permission"),
        "{err}"
    );
    assert!(err.contains("roles/cloudscheduler.viewer"), "{err}");
    assert!(out.stdout.is_empty(), "no job lines from a failed listing");
    assert_eq!(
        api.requests().len(),
        1,
        "a 403 is not retried: {:#?}",
        api.requests()
    );
}

#[test]
fn requests_carry_no_authorization_header_in_anonymous_mode() {
    let api = known_jobs();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &api.url(), "");
    let logs = write(
        dir.path(),
        "logs.ndjson",
        failures("nightly-etl-trigger", 1) + &failures("ghost-trigger", 1),
    );
    assert!(replay(&cfg, &logs).status.success());
    assert!(
        run(&[
            "audit",
            "--config",
            cfg.to_str().unwrap(),
            "--project",
            PROJECT,
            "--location",
            LOCATION
        ])
        .status
        .code()
            == Some(1)
    );
    let reqs = api.requests();
    assert_eq!(reqs.len(), 4, "2 GetJob + 2 ListJobs: {reqs:#?}");
    for r in &reqs {
        assert_eq!(r.header("authorization"), None, "{r:?}");
        assert!(
            !r.headers
                .iter()
                .any(|(k, v)| k.contains("auth") || v.to_ascii_lowercase().starts_with("bearer")),
            "{r:?}"
        );
    }
}
