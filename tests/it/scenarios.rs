//! Every scenario folder — `tests/scenarios/*` (made by `scripts/make_scenarios.py`) and
//! `../shared/examples/*` — through the real binary, compared with its `expected.json` the way
//! `../shared/tools/check_examples.py` compares them: per job `(event, code, count)` in order,
//! audit findings per job, and audit's exit code. On top of that, what CONTRACT section 4 says
//! of every alert (schema, incident ids, `resolved_at`, `runbook_url`) and what section 3 says
//! of the fixes a scenario's inventory pins down (the job's own service account, the token flags,
//! roles).
//!
//! A failure names the scenario and the difference; all scenarios run before the test fails.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde_json::Value;

use crate::common::{self, ndjson, run, stderr};

type PerJob = BTreeMap<String, Vec<(String, String, u64)>>;

/// The scenario folders: ours, then the shared examples.
fn cases() -> Vec<PathBuf> {
    let mut cases = Vec::new();
    for base in [
        common::root().join("tests/scenarios"),
        common::shared().join("examples"),
    ] {
        let mut dirs: Vec<PathBuf> = std::fs::read_dir(&base)
            .unwrap_or_else(|e| panic!("{}: {e}", base.display()))
            .map(|e| e.unwrap().path())
            .filter(|p| p.join("expected.json").is_file())
            .collect();
        assert!(
            !dirs.is_empty(),
            "no scenario folders in {}",
            base.display()
        );
        dirs.sort();
        cases.extend(dirs);
    }
    cases
}

fn name(case: &Path) -> String {
    let parent = case
        .parent()
        .and_then(Path::file_name)
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    format!("{parent}/{}", case.file_name().unwrap().to_string_lossy())
}

fn logs_file(case: &Path) -> PathBuf {
    ["logs.ndjson", "logs.json", "logs.pubsub.json"]
        .iter()
        .map(|n| case.join(n))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "{}: no logs.ndjson, logs.json or logs.pubsub.json",
                case.display()
            )
        })
}

fn key(job: &Value) -> Result<String, String> {
    let part = |k: &str| {
        job[k]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| format!("job.{k} missing in {job}"))
    };
    Ok(format!(
        "{}/{}/{}",
        part("project")?,
        part("location")?,
        part("id")?
    ))
}

/// The inventory as reference.py's `load_inventory` reads it: `P/L/J` → the Job JSON.
fn inventory(jobs: &Path) -> HashMap<String, Value> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(jobs)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    let mut inv = HashMap::new();
    for f in files {
        let doc: Value = serde_json::from_slice(&std::fs::read(&f).unwrap()).unwrap();
        let list = match doc {
            Value::Array(a) => a,
            Value::Object(ref o) if o.contains_key("jobs") => {
                o["jobs"].as_array().cloned().unwrap_or_default()
            }
            Value::Object(_) => vec![doc],
            _ => vec![],
        };
        for j in list {
            let parts: Vec<&str> = j["name"].as_str().unwrap_or("").split('/').collect();
            if parts.len() == 6 {
                inv.insert(format!("{}/{}/{}", parts[1], parts[3], parts[5]), j.clone());
            }
        }
    }
    inv
}

fn expected_per_job(exp: &Value) -> PerJob {
    let mut d = PerJob::new();
    for a in exp["alerts"].as_array().expect("expected.json: alerts") {
        d.entry(a["job"].as_str().unwrap().to_owned())
            .or_default()
            .push((
                a["event"].as_str().unwrap().to_owned(),
                a["code"].as_str().unwrap().to_owned(),
                a["count"].as_u64().unwrap(),
            ));
    }
    d
}

fn got_per_job(alerts: &[Value]) -> Result<PerJob, String> {
    let mut d = PerJob::new();
    for a in alerts {
        let event = a["event"]
            .as_str()
            .ok_or_else(|| format!("alert without event: {a}"))?;
        let code = a["diagnosis"]["code"]
            .as_str()
            .ok_or_else(|| format!("alert without diagnosis.code: {a}"))?;
        let count = a["failure"]["count"]
            .as_u64()
            .ok_or_else(|| format!("alert without failure.count: {a}"))?;
        d.entry(key(&a["job"])?)
            .or_default()
            .push((event.to_owned(), code.to_owned(), count));
    }
    Ok(d)
}

/// CONTRACT section 4, per alert and per incident.
fn alert_problems(alerts: &[Value]) -> Vec<String> {
    let mut problems = Vec::new();
    // job → (the open incident's id, every id the job has had)
    let mut open: HashMap<String, (Option<String>, Vec<String>)> = HashMap::new();
    for a in alerts {
        let Ok(job) = key(&a["job"]) else {
            problems.push(format!("alert without job project/location/id: {a}"));
            continue;
        };
        let event = a["event"].as_str().unwrap_or("");
        let code = a["diagnosis"]["code"].as_str().unwrap_or("");
        let at = format!("{job} {event}");
        if a["schema"] != "schedwatch.alert.v1" {
            problems.push(format!(
                "{at}: schema is {}, not \"schedwatch.alert.v1\"",
                a["schema"]
            ));
        }
        let want_name = format!(
            "projects/{}/locations/{}/jobs/{}",
            a["job"]["project"].as_str().unwrap_or(""),
            a["job"]["location"].as_str().unwrap_or(""),
            a["job"]["id"].as_str().unwrap_or("")
        );
        if a["job"]["name"] != want_name.as_str() {
            problems.push(format!(
                "{at}: job.name is {}, want {want_name}",
                a["job"]["name"]
            ));
        }
        match a["runbook_url"].as_str() {
            Some(u) if u.ends_with(&format!("#{code}")) => {}
            other => problems.push(format!(
                "{at}: runbook_url {other:?} does not end in #{code}"
            )),
        }
        for f in ["gcloud", "terraform"] {
            if a["fix"][f].as_str().is_none_or(|s| s.trim().is_empty()) {
                problems.push(format!("{at}: fix.{f} is empty"));
            }
        }
        let resolved_at = a.get("resolved_at").filter(|v| !v.is_null());
        match (event, resolved_at) {
            ("resolved", Some(v)) => {
                let parsed = v
                    .as_str()
                    .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok());
                let last = a["failure"]["last_at"]
                    .as_str()
                    .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok());
                match (parsed, last) {
                    (Some(r), Some(l)) if r > l => {}
                    (Some(_), Some(_)) => problems.push(format!(
                        "{at}: resolved_at {v} is not later than failure.last_at"
                    )),
                    _ => problems.push(format!(
                        "{at}: resolved_at {v} or failure.last_at is not RFC 3339"
                    )),
                }
            }
            ("resolved", None) => problems.push(format!("{at}: no resolved_at")),
            (_, Some(v)) => problems.push(format!("{at}: resolved_at {v} on a {event} event")),
            (_, None) => {}
        }
        let id = a["incident_id"].as_str().unwrap_or("").to_owned();
        if id.is_empty() {
            problems.push(format!("{at}: empty incident_id"));
            continue;
        }
        let (current, seen) = open.entry(job.clone()).or_default();
        match event {
            "firing" => {
                if let Some(c) = current {
                    problems.push(format!("{at}: fires while incident {c} is still open"));
                }
                if seen.contains(&id) {
                    problems.push(format!("{at}: a new incident reuses the id {id}"));
                }
                seen.push(id.clone());
                *current = Some(id);
            }
            "repeat" | "resolved" => {
                match current {
                    Some(c) if *c == id => {}
                    Some(c) => problems.push(format!(
                        "{at}: incident_id {id}, but the open incident fired as {c}"
                    )),
                    None => problems.push(format!("{at}: no incident fired before it")),
                }
                if event == "resolved" {
                    *current = None;
                }
            }
            other => problems.push(format!("{job}: unknown event {other:?}")),
        }
    }
    problems
}

/// What CONTRACT section 3 requires of a fix, where the scenario's inventory pins it down
/// (check_examples.py's `fix_misses`, plus the Pub/Sub and overrides cases).
fn fix_problems(alert: &Value, inv: &HashMap<String, Value>) -> Vec<String> {
    let (Ok(job), Some(code)) = (key(&alert["job"]), alert["diagnosis"]["code"].as_str()) else {
        return vec![];
    };
    let g = alert["fix"]["gcloud"].as_str().unwrap_or("");
    let tf = alert["fix"]["terraform"].as_str().unwrap_or("");
    let j = &alert["job"];
    let (id, project, location) = (
        j["id"].as_str().unwrap_or(""),
        j["project"].as_str().unwrap_or(""),
        j["location"].as_str().unwrap_or(""),
    );
    let cfg = inv.get(&job);
    let http = cfg.map(|c| &c["httpTarget"]).filter(|t| t.is_object());
    let sa = http
        .and_then(|t| {
            t["oidcToken"]["serviceAccountEmail"]
                .as_str()
                .or(t["oauthToken"]["serviceAccountEmail"].as_str())
        })
        .unwrap_or("SERVICE_ACCOUNT_EMAIL");
    let mut need: Vec<String> = Vec::new();
    let mut tf_need = None;
    let mut never = vec!["keys create", "Basic "];
    match code {
        "oidc-token-for-google-api" => {
            need = vec![
                format!("scheduler jobs update http {id}"),
                format!("--project={project}"),
                format!("--location={location}"),
                format!("--oauth-service-account-email={sa}"),
            ];
            tf_need = Some("oauth_token");
            never.extend([
                "--oidc-token-audience",
                "--oidc-service-account-email",
                "add-iam-policy-binding",
            ]);
        }
        "oauth-token-for-non-google-target" => {
            need = vec![
                format!("--oidc-service-account-email={sa}"),
                "--oidc-token-audience=".into(),
            ];
            tf_need = Some("oidc_token");
        }
        "missing-auth-token" => {
            let flag = if alert["target"]["kind"] == "google_api" {
                "--oauth-service-account-email"
            } else {
                "--oidc-service-account-email"
            };
            need = vec![flag.into()];
        }
        "missing-invoker-permission" => {
            if cfg.is_some_and(|c| c["pubsubTarget"].is_object()) {
                // Scheduler publishes as its service agent: roles/run.invoker would be wrong advice.
                need = vec!["roles/pubsub.publisher".into()];
            } else {
                need = vec!["roles/run.invoker".into()];
                let body = http
                    .and_then(|t| t["body"].as_str())
                    .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                    .unwrap_or_default();
                if body.contains("overrides")
                    && !(g.contains("roles/run.developer") || tf.contains("roles/run.developer"))
                {
                    return vec![format!("{job}: the body carries overrides, but the fix does not name roles/run.developer")];
                }
            }
        }
        _ => {}
    }
    let mut misses: Vec<String> = need
        .into_iter()
        .filter(|n| !g.contains(n.as_str()))
        .map(|n| format!("gcloud lacks '{n}'"))
        .collect();
    misses.extend(
        never
            .into_iter()
            .filter(|n| g.contains(n) || tf.contains(n))
            .map(|n| format!("has '{n}'")),
    );
    if let Some(t) = tf_need.filter(|t| !tf.contains(t)) {
        misses.push(format!("terraform lacks {t}"));
    }
    misses
        .into_iter()
        .map(|m| format!("{job} {code}: fix {m}"))
        .collect()
}

/// Every problem with one scenario folder.
fn check(case: &Path) -> Vec<String> {
    let name = name(case);
    let exp: Value = serde_json::from_slice(&std::fs::read(case.join("expected.json")).unwrap())
        .unwrap_or_else(|e| panic!("{name}/expected.json: {e}"));
    let jobs = case.join("jobs");
    let (jobs_s, logs_s) = (jobs.to_str().unwrap(), logs_file(case));
    let mut problems = Vec::new();

    let out = run(&[
        "replay",
        "--jobs",
        jobs_s,
        "--format",
        "json",
        logs_s.to_str().unwrap(),
    ]);
    let err = stderr(&out);
    if out.status.code() != Some(0) || err.contains("panicked") {
        return vec![format!(
            "{name}: replay exited {:?}: {}",
            out.status.code(),
            err.trim()
        )];
    }
    let alerts = ndjson(&out);
    match got_per_job(&alerts) {
        Ok(got) => {
            let want = expected_per_job(&exp);
            if got != want {
                let jobs: std::collections::BTreeSet<&String> =
                    got.keys().chain(want.keys()).collect();
                for j in jobs {
                    let (g, w) = (got.get(j), want.get(j));
                    if g != w {
                        problems.push(format!("{name}: alerts for {j}: got {g:?}, want {w:?}"));
                    }
                }
            }
        }
        Err(e) => problems.push(format!(
            "{name}: alert JSON does not follow the contract: {e}"
        )),
    }
    problems.extend(
        alert_problems(&alerts)
            .into_iter()
            .map(|p| format!("{name}: {p}")),
    );
    let inv = inventory(&jobs);
    problems.extend(
        alerts
            .iter()
            .flat_map(|a| fix_problems(a, &inv))
            .map(|p| format!("{name}: {p}")),
    );

    let out = run(&["audit", "--jobs", jobs_s, "--format", "json"]);
    let want: BTreeMap<String, Vec<String>> = exp["audit"]
        .as_object()
        .expect("expected.json: audit")
        .iter()
        .map(|(k, v)| {
            let mut codes: Vec<String> = v
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c.as_str().unwrap().to_owned())
                .collect();
            codes.sort();
            (k.clone(), codes)
        })
        .collect();
    let mut got = BTreeMap::new();
    for line in ndjson(&out) {
        let (Ok(k), Some(findings)) = (key(&line["job"]), line["findings"].as_array()) else {
            problems.push(format!(
                "{name}: audit line does not follow the contract: {line}"
            ));
            continue;
        };
        let mut codes: Vec<String> = findings
            .iter()
            .map(|f| f["code"].as_str().unwrap_or("<no code>").to_owned())
            .collect();
        codes.sort();
        for f in findings {
            if f["summary"].as_str().is_none_or(str::is_empty) || !f["fix"].is_object() {
                problems.push(format!(
                    "{name}: audit finding for {k} lacks a summary or fix: {f}"
                ));
            }
        }
        got.insert(k, codes);
    }
    let want_exit = if want.values().any(|v| !v.is_empty()) {
        1
    } else {
        0
    };
    if got != want || out.status.code() != Some(want_exit) {
        problems.push(format!(
            "{name}: audit got {got:?} (exit {:?}), want {want:?} (exit {want_exit}); stderr: {}",
            out.status.code(),
            stderr(&out).trim()
        ));
    }
    problems
}

#[test]
fn every_scenario_matches_the_reference_model() {
    let cases = cases();
    let problems: Vec<String> = cases.iter().flat_map(|c| check(c)).collect();
    assert!(
        problems.is_empty(),
        "{} problem(s) in {} scenarios:\n  {}",
        problems.len(),
        cases.len(),
        problems.join("\n  ")
    );
}

#[test]
fn scenarios_cover_every_diagnosis_code_and_input_shape() {
    let cases = cases();
    let mut codes = std::collections::BTreeSet::new();
    for c in &cases {
        let exp: Value =
            serde_json::from_slice(&std::fs::read(c.join("expected.json")).unwrap()).unwrap();
        for a in exp["alerts"].as_array().unwrap() {
            codes.insert(a["code"].as_str().unwrap().to_owned());
        }
        assert!(c.join("README.md").is_file(), "{}: no README.md", name(c));
        assert!(c.join("jobs").is_dir(), "{}: no jobs/", name(c));
    }
    let all = [
        "auth-config-unavailable",
        "missing-auth-token",
        "oidc-token-for-google-api",
        "oauth-token-for-non-google-target",
        "oidc-audience-mismatch",
        "missing-invoker-permission",
        "unexplained-auth-failure",
    ];
    let missing: Vec<&str> = all
        .iter()
        .copied()
        .filter(|c| !codes.contains(*c))
        .collect();
    assert!(missing.is_empty(), "no scenario expects {missing:?}");
    for shape in ["logs.ndjson", "logs.json", "logs.pubsub.json"] {
        assert!(
            cases.iter().any(|c| c.join(shape).is_file()),
            "no scenario with {shape}"
        );
    }
}
