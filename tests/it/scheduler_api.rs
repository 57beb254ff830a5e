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
    FakeServer::start(api(get))
}

/// [`fake_api`]'s handler.
fn api(
    get: impl Fn(&str) -> Option<Value> + Send + Sync + 'static,
) -> impl Fn(&Request) -> Response + Send + Sync + 'static {
    let (first, second) = pages();
    let all: Vec<Value> = first.iter().chain(&second).cloned().collect();
    move |req| {
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
    }
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

// ---- look-ups off the hot path (issue 13, point 8) -------------------------------------------
//
// Anyone who may write log entries can name any job, so each failure may carry a new, forged job
// id; the API may be slow. The checks count the requests the fake received, not wall time.

/// One 401 AttemptFinished entry of `location`/`job_id`.
fn failure_at(location: &str, job_id: &str, insert_id: &str, timestamp: &str) -> Value {
    let mut e = read_json(fixture("logs/attempt_finished_401_oidc_run_job.json"));
    e["insertId"] = json!(insert_id);
    e["timestamp"] = json!(timestamp);
    e["resource"]["labels"]["location"] = json!(location);
    e["resource"]["labels"]["job_id"] = json!(job_id);
    e["jsonPayload"]["jobName"] = json!(format!(
        "projects/{PROJECT}/locations/{location}/jobs/{job_id}"
    ));
    e
}

/// One failure of each job, in [`LOCATION`], as NDJSON.
fn one_failure_each(jobs: &[String]) -> String {
    jobs.iter()
        .enumerate()
        .map(|(i, j)| {
            failure_at(
                LOCATION,
                j,
                &format!("f-{j}"),
                &format!("2026-03-02T02:00:{:02}Z", i % 60),
            )
            .to_string()
                + "\n"
        })
        .collect()
}

fn forged(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i}")).collect()
}

fn list_calls(reqs: &[Request]) -> Vec<String> {
    reqs.iter()
        .filter(|r| r.route() == format!("{PARENT}/jobs"))
        .map(|r| r.query("pageToken").unwrap_or_default())
        .collect()
}

/// `[incidents] min_failures = 1`: every forged id fires at once, so each look-up shows.
const FIRE_AT_ONCE: &str = "\n[incidents]\nmin_failures = 1\n";

/// Every alert is `auth-config-unavailable` with `auth.source` `unavailable`.
fn all_unavailable(alerts: &[Value]) {
    for a in alerts {
        assert_eq!(a["diagnosis"]["code"], "auth-config-unavailable", "{a:#}");
        assert_eq!(a["auth"]["source"], "unavailable", "{a:#}");
    }
}

#[test]
fn fifty_forged_job_ids_in_one_location_cost_one_listing_not_fifty_get_jobs() {
    let api = known_jobs();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &api.url(), FIRE_AT_ONCE);
    let jobs = forged("forged", 50);
    let logs = write(dir.path(), "logs.ndjson", one_failure_each(&jobs));

    let out = replay(&cfg, &logs);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    let alerts = ndjson(&out);
    assert_eq!(alerts.len(), 50, "{err}");
    all_unavailable(&alerts);

    // replay feeds entries one by one: the first id is a GetJob; its 404 makes the next
    // unknown id of the location a listing (both pages); the other 48 are not in it.
    let reqs = api.requests();
    assert_real_anonymous_calls(&reqs);
    let gets: Vec<&str> = reqs
        .iter()
        .map(|r| r.route())
        .filter(|r| *r != format!("{PARENT}/jobs"))
        .collect();
    assert_eq!(gets, [format!("{PARENT}/jobs/forged-0")], "{reqs:#?}");
    assert_eq!(list_calls(&reqs), ["", PAGE_2], "one listing, two pages");
}

#[test]
fn a_listing_finds_a_job_on_its_second_page_and_answers_an_absent_one_without_a_call() {
    let api = known_jobs();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &api.url(), FIRE_AT_ONCE);
    // A forged id (GetJob: 404), then a real job of page 2 (the location is listed), then
    // another forged id (not in the fresh listing: no call).
    let logs = one_failure_each(&[
        "ghost-a".into(),
        "report-rollup-aud".into(),
        "ghost-b".into(),
    ]);
    let logs = write(dir.path(), "logs.ndjson", logs);

    let out = replay(&cfg, &logs);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    let by_job: BTreeMap<String, Value> = ndjson(&out)
        .into_iter()
        .map(|a| (a["job"]["id"].as_str().unwrap_or_default().to_owned(), a))
        .collect();
    let found = &by_job["report-rollup-aud"];
    assert_eq!(found["auth"]["source"], "scheduler_api", "{found:#}");
    assert_eq!(
        found["diagnosis"]["code"], "oidc-audience-mismatch",
        "diagnosed from the config on page 2: {found:#}"
    );
    for ghost in ["ghost-a", "ghost-b"] {
        all_unavailable(&[by_job[ghost].clone()]);
    }

    let reqs = api.requests();
    assert_real_anonymous_calls(&reqs);
    assert_eq!(get_job_calls(&reqs, "ghost-a"), 1, "{reqs:#?}");
    assert_eq!(get_job_calls(&reqs, "report-rollup-aud"), 0, "{reqs:#?}");
    assert_eq!(
        get_job_calls(&reqs, "ghost-b"),
        0,
        "not in a fresh listing: not found without a call: {reqs:#?}"
    );
    assert_eq!(list_calls(&reqs), ["", PAGE_2], "{reqs:#?}");
    assert_eq!(reqs.len(), 3, "{reqs:#?}");
}

#[test]
fn the_same_unknown_jobs_repeated_cost_one_call_each() {
    let api = known_jobs();
    let dir = tempfile::tempdir().unwrap();
    // Another location, where listing is a 404 too: every id there is asked about once.
    let cfg = config(dir.path(), &api.url(), FIRE_AT_ONCE);
    let mut logs = String::new();
    for round in 0..20 {
        for job in ["ghost-x", "ghost-y"] {
            let ts = format!("2026-03-02T03:{round:02}:00Z");
            logs +=
                &(failure_at("us-east1", job, &format!("{job}-{round}"), &ts).to_string() + "\n");
        }
    }
    let logs = write(dir.path(), "logs.ndjson", logs);

    let out = replay(&cfg, &logs);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    let alerts = ndjson(&out);
    all_unavailable(&alerts);
    assert_eq!(alerts.len(), 2, "one incident each, firing once: {err}");
    let reqs = api.requests();
    // ghost-x: a GetJob (404); ghost-y: the location had a 404, so it is listed (a 404 too).
    assert_eq!(reqs.len(), 2, "40 failures, one call per job: {reqs:#?}");
    assert_eq!(
        reqs[0].route(),
        "/v1/projects/acme-data-prod/locations/us-east1/jobs/ghost-x"
    );
    assert_eq!(
        reqs[1].route(),
        "/v1/projects/acme-data-prod/locations/us-east1/jobs"
    );
}

/// How many requests the fake held at once, at most.
#[derive(Default)]
struct InFlight {
    now: AtomicUsize,
    max: AtomicUsize,
}

/// The fake API, answering each request only after `delay` and counting requests in flight.
fn held_api(delay: Duration) -> (FakeServer, Arc<InFlight>) {
    let gauge = Arc::new(InFlight::default());
    let counted = Arc::clone(&gauge);
    let answer = api(|_| None);
    let server = FakeServer::start(move |req| {
        let n = counted.now.fetch_add(1, Ordering::SeqCst) + 1;
        counted.max.fetch_max(n, Ordering::SeqCst);
        std::thread::sleep(delay);
        counted.now.fetch_sub(1, Ordering::SeqCst);
        answer(req)
    });
    (server, gauge)
}

#[test]
fn a_slow_api_costs_one_timeout_not_one_per_forged_job() {
    // The fake answers after 4 s; the timeout is 1 s.
    let (api, _) = held_api(Duration::from_secs(4));
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        &api.url(),
        &format!("timeout = \"1s\"\n{FIRE_AT_ONCE}"),
    );
    let logs = write(
        dir.path(),
        "logs.ndjson",
        one_failure_each(&forged("forged", 50)),
    );

    let out = replay(&cfg, &logs);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    let alerts = ndjson(&out);
    assert_eq!(alerts.len(), 50, "{err}");
    all_unavailable(&alerts);
    let reqs = api.requests();
    assert_eq!(
        reqs.len(),
        1,
        "the first call got no answer within its timeout: no new call for error_ttl: {reqs:#?}"
    );
    assert!(
        err.contains("did not answer"),
        "says why it stopped asking: {err}"
    );
}

// ---- the same through `run` on push requests: a batch's look-ups are made together ----------

/// An envelope as Pub/Sub pushes it, around one log entry.
fn envelope(entry: &Value, id: usize) -> Vec<u8> {
    use base64::Engine as _;
    let data = base64::engine::general_purpose::STANDARD.encode(entry.to_string());
    json!({"message": {"data": data, "messageId": id.to_string()},
           "subscription": "projects/acme-ops/subscriptions/schedwatch-push"})
    .to_string()
    .into_bytes()
}

/// `run` on push requests with the API at `endpoint` (plus `api` lines): `batch` messages make
/// a batch (the batch closes at that count; 5 s is only a bound for a slow machine).
fn push_service(
    dir: &Path,
    endpoint: &str,
    api: &str,
    batch: usize,
) -> (crate::common::service::Service, String) {
    let address = format!("127.0.0.1:{}", crate::common::emulator::free_port());
    let cfg = config(
        dir,
        endpoint,
        &format!(
            "{api}{FIRE_AT_ONCE}\n[server]\nlisten = \"{address}\"\n\n[source.push]\nallow_unauthenticated = true\n\n[state]\ncommit_max_messages = {batch}\ncommit_interval = \"5s\"\n"
        ),
    );
    let mut service = crate::common::service::Start {
        emulator: None,
        sub: "",
        jobs: None,
        state: &dir.join("state"),
        config: Some(&cfg),
        dir,
        n: 0,
        args: &[],
    }
    .spawn();
    crate::endpoints::eventually(&mut service, "ready", Duration::from_secs(30), || {
        http_with(
            &address,
            "GET",
            "/readyz",
            &[],
            None,
            Duration::from_secs(2),
        )
        .is_ok_and(|r| r.status == 200)
    });
    (service, address)
}

/// Pushes every entry at once (one request each, all waiting for their commit); the statuses.
fn push_all(address: &str, entries: &[Value], first_id: usize) -> Vec<u16> {
    std::thread::scope(|s| {
        let pushes: Vec<_> = entries
            .iter()
            .enumerate()
            .map(|(i, e)| {
                s.spawn(move || {
                    let body = envelope(e, first_id + i);
                    http_with(
                        address,
                        "POST",
                        "/pubsub/push",
                        &[],
                        Some(&body),
                        Duration::from_secs(40),
                    )
                    .map_or(0, |r| r.status)
                })
            })
            .collect();
        pushes.into_iter().map(|p| p.join().unwrap()).collect()
    })
}

fn entries_of(location: &str, jobs: &[String], minute: u32) -> Vec<Value> {
    jobs.iter()
        .enumerate()
        .map(|(i, j)| {
            failure_at(
                location,
                j,
                &format!("p-{j}-{minute}"),
                &format!("2026-03-02T04:{minute:02}:{:02}Z", i % 60),
            )
        })
        .collect()
}

use crate::common::emulator::http_with;

#[test]
fn a_pushed_batch_of_forged_ids_is_one_listing_and_the_next_batch_makes_no_call() {
    let api = known_jobs();
    let dir = tempfile::tempdir().unwrap();
    let (mut service, address) = push_service(dir.path(), &api.url(), "", 21);

    // One batch: twenty forged ids and a real job of page 2.
    let mut jobs = forged("forged", 20);
    jobs.push("report-rollup-aud".into());
    let statuses = push_all(&address, &entries_of(LOCATION, &jobs, 0), 0);
    assert!(
        statuses.iter().all(|s| (200..300).contains(s)),
        "{statuses:?}"
    );
    // The next batch: twenty more forged ids of the same location.
    let more = forged("later", 21);
    let statuses = push_all(&address, &entries_of(LOCATION, &more, 1), 100);
    assert!(
        statuses.iter().all(|s| (200..300).contains(s)),
        "{statuses:?}"
    );

    let alerts = service.wait_for("42 alerts", Duration::from_secs(60), |a| a.len() >= 42);
    let (found, unavailable): (Vec<Value>, Vec<Value>) = alerts
        .into_iter()
        .partition(|a| a["job"]["id"] == "report-rollup-aud");
    assert_eq!(
        found[0]["auth"]["source"], "scheduler_api",
        "{:#}",
        found[0]
    );
    all_unavailable(&unavailable);

    let reqs = api.requests();
    assert_real_anonymous_calls(&reqs);
    assert_eq!(
        list_calls(&reqs),
        ["", PAGE_2],
        "the first batch lists the location, the second is answered by the listing: {reqs:#?}"
    );
    assert_eq!(reqs.len(), 2, "not one GetJob: {reqs:#?}");
    let m = crate::endpoints::scrape(&address);
    assert_eq!(
        m["schedwatch_scheduler_api_list_calls_total"], 2.0,
        "{m:#?}"
    );
    assert_eq!(
        m[r#"schedwatch_scheduler_api_cache_hits_total{answer="not_listed"}"#], 21.0,
        "{m:#?}"
    );
    crate::common::service::assert_clean_exit(service.terminate());
}

#[test]
fn a_slow_api_holds_a_pushed_batch_once_by_its_timeout_and_later_batches_not_at_all() {
    let (api, _) = held_api(Duration::from_secs(4));
    let dir = tempfile::tempdir().unwrap();
    let (mut service, address) = push_service(dir.path(), &api.url(), "timeout = \"1s\"\n", 20);

    // Round 0 lists the location: no answer within 1 s. Round 1, in another location, is not
    // asked (the API is silent). Round 2, back in the first location, is answered by its failed
    // listing, remembered for error_ttl.
    for (round, location) in [LOCATION, "us-east1", LOCATION].into_iter().enumerate() {
        let jobs = forged(&format!("round{round}"), 20);
        let entries = entries_of(location, &jobs, round as u32);
        let statuses = push_all(&address, &entries, 100 * round);
        assert!(
            statuses.iter().all(|s| (200..300).contains(s)),
            "acked, not 503: {statuses:?}\n{}",
            crate::common::service::tail(&service.stderr())
        );
    }
    let alerts = service.wait_for("60 alerts", Duration::from_secs(60), |a| a.len() >= 60);
    all_unavailable(&alerts);
    let reqs = api.requests();
    assert_eq!(
        list_calls(&reqs),
        [""],
        "one listing, unanswered; then no call while the API is silent: {reqs:#?}"
    );
    assert_eq!(reqs.len(), 1, "{reqs:#?}");
    let m = crate::endpoints::scrape(&address);
    assert_eq!(
        m["schedwatch_scheduler_api_not_asked_total"], 20.0,
        "{m:#?}"
    );
    assert_eq!(
        m[r#"schedwatch_scheduler_api_cache_hits_total{answer="failure"}"#], 20.0,
        "{m:#?}"
    );
    crate::common::service::assert_clean_exit(service.terminate());
}

#[test]
fn a_batch_looks_its_jobs_up_concurrently_and_at_most_four_at_a_time() {
    // Twelve jobs, each alone in its location: twelve GetJobs, each held 1 s by the fake.
    let (api, gauge) = held_api(Duration::from_secs(1));
    let dir = tempfile::tempdir().unwrap();
    let (mut service, address) = push_service(dir.path(), &api.url(), "timeout = \"10s\"\n", 12);
    let entries: Vec<Value> = (0..12)
        .map(|i| {
            let location = format!("region-{i}");
            entries_of(&location, &[format!("job-{i}")], 0).remove(0)
        })
        .collect();
    let statuses = push_all(&address, &entries, 0);
    assert!(
        statuses.iter().all(|s| (200..300).contains(s)),
        "{statuses:?}"
    );
    let alerts = service.wait_for("12 alerts", Duration::from_secs(60), |a| a.len() >= 12);
    all_unavailable(&alerts);

    let reqs = api.requests();
    assert_eq!(reqs.len(), 12, "one GetJob per job: {reqs:#?}");
    let max = gauge.max.load(Ordering::SeqCst);
    assert!(max <= 4, "{max} requests in flight at once: the bound is 4");
    assert!(
        max >= 2,
        "the look-ups of a batch run concurrently (max in flight {max})"
    );
    crate::common::service::assert_clean_exit(service.terminate());
}
