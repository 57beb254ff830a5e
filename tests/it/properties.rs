//! Property tests of the incident invariants, through the real pipeline (decode, dedup,
//! incidents, correlate, diagnose) and, for arrays, the real file source.
//!
//! Why not "any shuffle of a stream gives the same events": an alert is made when an entry
//! arrives, so a success that arrives before the older failures it follows cannot resolve them
//! (CONTRACT section 2: "an older success that arrives late changes nothing"). What holds, and
//! is tested: duplicates never change anything; interleaving different jobs' entries changes
//! nothing; and a JSON array — one document, processed in timestamp order — gives the same
//! events however it is shuffled.

use std::collections::BTreeMap;

use proptest::prelude::*;
use schedwatch::correlate::{Correlator, Inventory};
use schedwatch::diagnose::Diagnoser;
use schedwatch::incidents::IncidentRules;
use schedwatch::pipeline::Pipeline;
use schedwatch::source::file;
use schedwatch_sinks::Alert;

const JOBS: [&str; 4] = ["oidc-to-api", "no-inventory", "run-service", "pubsub"];

fn inventory() -> Inventory {
    let mut inv = Inventory::default();
    let jobs = serde_json::json!([
        {"name": "projects/acme-prod/locations/us-east1/jobs/oidc-to-api", "httpTarget": {
            "uri": "https://us-east1-run.googleapis.com/apis/run.googleapis.com/v1/namespaces/acme-prod/jobs/w:run",
            "oidcToken": {"serviceAccountEmail": "sa@acme-prod.iam.gserviceaccount.com"}}},
        {"name": "projects/acme-prod/locations/us-east1/jobs/run-service", "httpTarget": {
            "uri": "https://api-4x7qk2m9da-ue.a.run.app/t",
            "oidcToken": {"serviceAccountEmail": "sa@acme-prod.iam.gserviceaccount.com"}}},
        {"name": "projects/acme-prod/locations/us-east1/jobs/pubsub", "pubsubTarget": {"topicName": "projects/acme-prod/topics/t"}}
    ]);
    inv.add_document(jobs, "test");
    inv
}

fn pipeline() -> Pipeline {
    let rules = IncidentRules {
        repeat_interval: std::time::Duration::from_secs(600),
        ..Default::default()
    };
    Pipeline::new(
        rules,
        10_000,
        Correlator::new(Some(inventory()), None),
        Diagnoser::default(),
    )
}

/// One execution log entry: job index, outcome (0 started, 1 success, 2 401, 3 403, 4 500),
/// and a distinct second.
fn entry(job: usize, outcome: u8, second: u32) -> String {
    entry_of(JOBS[job], outcome, second)
}

/// [`entry`] of any job id.
fn entry_of(job_id: &str, outcome: u8, second: u32) -> String {
    let ts = format!(
        "2026-11-20T{:02}:{:02}:{:02}.000000Z",
        9 + second / 3600,
        (second / 60) % 60,
        second % 60
    );
    let (kind, status, http) = match outcome {
        0 => ("AttemptStarted", None, None),
        1 => ("AttemptFinished", None, Some(200)),
        2 => ("AttemptFinished", Some("UNAUTHENTICATED"), Some(401)),
        3 => ("AttemptFinished", Some("PERMISSION_DENIED"), Some(403)),
        _ => ("AttemptFinished", Some("INTERNAL"), Some(500)),
    };
    let mut e = serde_json::json!({
        "insertId": format!("id{second}"),
        "logName": "projects/acme-prod/logs/cloudscheduler.googleapis.com%2Fexecutions",
        "resource": {"type": "cloud_scheduler_job", "labels": {"project_id": "acme-prod", "location": "us-east1", "job_id": job_id}},
        "timestamp": ts,
        "jsonPayload": {"@type": format!("type.googleapis.com/google.cloud.scheduler.logging.{kind}"), "url": "https://x.example/"},
    });
    if let Some(s) = status {
        e["jsonPayload"]["status"] = s.into();
    }
    if let Some(h) = http {
        e["httpRequest"] = serde_json::json!({"status": h});
    }
    e.to_string()
}

/// Entries with distinct, increasing seconds.
fn entries() -> impl Strategy<Value = Vec<(usize, String)>> {
    prop::collection::vec((0..JOBS.len(), 0u8..5, 1u32..400), 1..120).prop_map(|v| {
        let mut second = 0;
        v.into_iter()
            .map(|(job, outcome, gap)| {
                second += gap;
                (job, entry(job, outcome, second))
            })
            .collect()
    })
}

/// Entries of up to 40 jobs (a few with the inventory's configs), some hours apart, with a cap
/// of 1 to 8 tracked jobs and a pending expiry of an hour.
fn bounded() -> impl Strategy<Value = (usize, Vec<String>)> {
    let entry = (
        0usize..40,
        0u8..5,
        prop_oneof![8 => 1u32..400, 1 => 3000u32..9000],
    );
    (1usize..9, prop::collection::vec(entry, 1..200)).prop_map(|(cap, v)| {
        let mut second = 0;
        let lines = v
            .into_iter()
            .map(|(job, outcome, gap)| {
                second += gap;
                match JOBS.get(job) {
                    Some(known) => entry_of(known, outcome, second),
                    None => entry_of(&format!("flood-{job}"), outcome, second),
                }
            })
            .collect();
        (cap, lines)
    })
}

fn stream(lines: &[String]) -> Vec<Alert> {
    let mut p = pipeline();
    let mut out = Vec::new();
    for l in lines {
        p.process_item(l.as_bytes(), &mut out);
    }
    out
}

fn array(lines: &[String]) -> Vec<Alert> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("logs.json");
    std::fs::write(&path, format!("[{}]", lines.join(",\n"))).unwrap();
    let mut p = pipeline();
    let mut out = Vec::new();
    file::replay(&path, &mut p, &mut |a| {
        out.extend_from_slice(a);
        Ok(())
    })
    .unwrap();
    out
}

fn per_job(alerts: &[Alert]) -> BTreeMap<String, Vec<Alert>> {
    let mut m: BTreeMap<String, Vec<Alert>> = BTreeMap::new();
    for a in alerts {
        m.entry(a.job.id.clone()).or_default().push(a.clone());
    }
    m
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn a_duplicate_never_changes_the_result(entries in entries(), picks in prop::collection::vec((any::<prop::sample::Index>(), any::<prop::sample::Index>()), 1..30)) {
        let lines: Vec<String> = entries.into_iter().map(|(_, l)| l).collect();
        let mut with_dups = lines.clone();
        for (what, place) in picks {
            let dup = lines[what.index(lines.len())].clone();
            // A copy arrives after the original, as redeliveries do.
            let original = with_dups.iter().position(|l| *l == dup).unwrap();
            let at = original + 1 + place.index(with_dups.len() - original);
            with_dups.insert(at.min(with_dups.len()), dup);
        }
        prop_assert_eq!(stream(&lines), stream(&with_dups));
    }

    #[test]
    fn interleaving_jobs_differently_changes_nothing(entries in entries(), seed in any::<u64>()) {
        let lines: Vec<String> = entries.iter().map(|(_, l)| l.clone()).collect();
        // Another interleaving: each job's entries keep their order.
        let mut queues: Vec<Vec<String>> = vec![Vec::new(); JOBS.len()];
        for (job, l) in &entries {
            queues[*job].push(l.clone());
        }
        for q in &mut queues { q.reverse(); }
        let mut rng = seed;
        let mut mixed = Vec::new();
        while queues.iter().any(|q| !q.is_empty()) {
            rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let live: Vec<usize> = (0..JOBS.len()).filter(|&j| !queues[j].is_empty()).collect();
            let j = live[(rng >> 33) as usize % live.len()];
            mixed.push(queues[j].pop().unwrap());
        }
        prop_assert_eq!(per_job(&stream(&lines)), per_job(&stream(&mixed)));
    }

    #[test]
    fn a_shuffled_json_array_gives_the_same_events(entries in entries(), seed in any::<u64>()) {
        let lines: Vec<String> = entries.into_iter().map(|(_, l)| l).collect();
        let mut shuffled = lines.clone();
        let mut rng = seed | 1;
        for i in (1..shuffled.len()).rev() {
            rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;
            shuffled.swap(i, (rng % (i as u64 + 1)) as usize);
        }
        let in_order = stream(&lines);
        prop_assert_eq!(&array(&shuffled), &in_order);
        // Newest first, as `gcloud logging read` prints.
        let newest_first: Vec<String> = lines.iter().rev().cloned().collect();
        prop_assert_eq!(&array(&newest_first), &in_order);
    }

    #[test]
    fn tracked_incidents_never_exceed_the_cap_and_keep_their_shape((cap, lines) in bounded()) {
        let rules = IncidentRules {
            repeat_interval: std::time::Duration::from_secs(600),
            pending_expiry: std::time::Duration::from_secs(3600),
            max_tracked_jobs: cap,
            ..Default::default()
        };
        let mut p = Pipeline::new(rules, 10_000, Correlator::new(Some(inventory()), None), Diagnoser::default());
        let mut alerts = Vec::new();
        for l in &lines {
            p.process_item(l.as_bytes(), &mut alerts);
            prop_assert!(p.incidents().open_count() <= cap, "{} open, cap {cap}", p.incidents().open_count());
        }
        let s = &p.stats;
        // Every incident opened is open, dropped, or ended by a success.
        prop_assert!(s.incidents_opened >= p.incidents().open_count() as u64 + s.incidents_expired + s.incidents_evicted);
        // A dropped incident's job starts over: firing first, a resolved only last, per incident.
        let mut by_incident: BTreeMap<&str, Vec<&Alert>> = BTreeMap::new();
        for a in &alerts {
            by_incident.entry(a.incident_id.as_str()).or_default().push(a);
        }
        for events in by_incident.values() {
            use schedwatch_sinks::EventKind::*;
            prop_assert_eq!(events[0].event, Firing);
            for (i, e) in events.iter().enumerate() {
                prop_assert!(e.event != Firing || i == 0);
                prop_assert!(e.event != Resolved || i == events.len() - 1);
            }
        }
    }

    #[test]
    fn incidents_keep_their_shape(entries in entries()) {
        let lines: Vec<String> = entries.into_iter().map(|(_, l)| l).collect();
        let alerts = stream(&lines);
        let mut by_incident: BTreeMap<String, Vec<&Alert>> = BTreeMap::new();
        for a in &alerts {
            by_incident.entry(a.incident_id.clone()).or_default().push(a);
        }
        for events in by_incident.values() {
            use schedwatch_sinks::EventKind::*;
            // firing first, then repeats, then at most one resolved, last.
            prop_assert_eq!(events[0].event, Firing);
            for (i, e) in events.iter().enumerate() {
                prop_assert_eq!(&e.job, &events[0].job);
                prop_assert!(e.event != Firing || i == 0);
                prop_assert!(e.event != Resolved || i == events.len() - 1);
                prop_assert_eq!(e.resolved_at.is_some(), e.event == Resolved);
                prop_assert!(e.failure.first_at <= e.failure.last_at);
                if i > 0 { prop_assert!(e.failure.count >= events[i - 1].failure.count); }
            }
        }
        // At most one open (unresolved) incident per job at the end.
        let mut open: BTreeMap<&str, usize> = BTreeMap::new();
        for events in by_incident.values() {
            if events.last().unwrap().event != Resolved { *open.entry(events[0].job.id.as_str()).or_default() += 1; }
        }
        prop_assert!(open.values().all(|&n| n <= 1));
    }
}
use schedwatch_sinks::EventKind::Resolved;

// ---- Fixes are safe to paste, whatever a log entry or a job config holds ----
//
// Every value a fix can carry comes from a log entry (the job's labels, within Cloud
// Scheduler's grammar, and the logged URL) or a job config (service account, audience, URI,
// topic, body…), and may be anything. Each rendered `fix.gcloud` is sourced by bash with
// `gcloud` a shell function that records its argv: bash may do nothing but call it (a DEBUG
// trace inherited by functions and subshells shows every command), nothing may be written, and
// the recorded arguments hold the values intact, each as one argument, none taken for a flag.

mod paste {
    use std::collections::BTreeSet;
    use std::path::Path;
    use std::process::Command;
    use std::sync::Arc;

    use proptest::prelude::*;
    use schedwatch::correlate::{AuthSource, JobConfig, Lookup};
    use schedwatch::decode::Outcome;
    use schedwatch::diagnose::{target, Diagnoser, Diagnosis, TargetKind};
    use schedwatch::JobKey;
    use schedwatch_sinks::escape::is_unsafe;
    use serde_json::json;

    /// Pieces that mean something to a shell, a terminal or a parser.
    const NASTY: &[&str] = &[
        "'",
        "\"",
        "\\",
        "$(touch pwned)",
        "`touch pwned`",
        "\n",
        "\r\n",
        "\r",
        "\x1b",
        "\x1b[201~",
        ";",
        "|",
        "&",
        "&&",
        "--",
        "-",
        "#",
        "!",
        "!!",
        "${HOME}",
        "$x",
        "*",
        "?",
        "~",
        "=",
        "%",
        " ",
        "\t",
        "\u{202e}",
        "\u{2028}",
        "\u{85}",
        "\0",
        ">",
        ">pwned",
        "<",
        "{a,b}",
        "\\\n",
        "$'",
        "'\\''",
        "\n# c\ntouch pwned\n",
        "--impersonate-service-account",
        "ä",
        "😀",
        "${x}",
        "%{y}",
        ":",
        "/",
        "@",
        ".",
        "..",
    ];

    /// Any text, heavy in the pieces above.
    fn nasty() -> impl Strategy<Value = String> {
        prop::collection::vec(
            prop_oneof![
                3 => prop::sample::select(NASTY).prop_map(str::to_owned),
                1 => any::<char>().prop_map(String::from),
                1 => "[a-z0-9.-]{1,8}",
            ],
            0..8,
        )
        .prop_map(|parts| parts.concat())
    }

    /// Target URIs: hostile text alone, and inside each URL shape the fixes read names from.
    fn uris(a: &str, b: &str, c: &str) -> [String; 6] {
        [
            a.to_owned(),
            format!("https://run.googleapis.com/v2/projects/{a}/locations/{b}/jobs/{c}:run"),
            format!("https://us-east1-run.googleapis.com/apis/run.googleapis.com/v1/namespaces/{a}/jobs/{b}:run"),
            format!("https://europe-west1-acme.cloudfunctions.net/{a}{b}"),
            format!("https://svc-{a}.europe-west1.run.app/{b}"),
            format!("https://api-4x7qk2m9da-ue.a.run.app/{a}?{b}#{c}"),
        ]
    }

    /// A job as Cloud Scheduler's grammar allows it, leading hyphens included.
    fn job() -> impl Strategy<Value = JobKey> {
        (
            "[a-z][a-z0-9-]{4,20}[a-z0-9]",
            prop::option::of("[a-z0-9]{1,8}\\.[a-z]{2,4}"),
            "[a-z]([a-z0-9-]{0,12}[a-z0-9])?",
            prop_oneof!["[-_A-Za-z0-9]{1,30}", "--?[-_A-Za-z0-9]{0,30}"],
        )
            .prop_map(|(p, domain, l, j)| {
                let p = domain.map_or(p.clone(), |d| format!("{d}:{p}"));
                JobKey::new(&p, &l, &j).unwrap()
            })
    }

    /// One case: the job, and the values its config and its log entries hold. Every config
    /// shape (OIDC with and without an audience, OAuth, no token, Pub/Sub, no config at all) and
    /// every URL shape is tried
    /// with them, for both auth failures and the audit.
    #[derive(Debug, Clone)]
    struct Case {
        job: JobKey,
        sa: String,
        audience: String,
        uri: (String, String, String),
        topic: String,
        body: String,
        schedule: String,
        log_url: String,
    }

    fn case() -> impl Strategy<Value = Case> {
        (
            job(),
            (nasty(), nasty(), nasty()),
            (nasty(), nasty(), nasty(), nasty(), nasty()),
        )
            .prop_map(
                |(job, (sa, audience, topic), (a, b, c, body, schedule))| Case {
                    job,
                    sa,
                    audience,
                    log_url: uris(&b, &c, &a)[a.len() % 6].clone(),
                    uri: (a, b, c),
                    topic,
                    body,
                    schedule,
                },
            )
    }

    fn diagnoses(c: &Case) -> Vec<Diagnosis> {
        use base64::Engine as _;
        let d = Diagnoser::default();
        let body = base64::engine::general_purpose::STANDARD.encode(&c.body);
        let mut out = Vec::new();
        for uri in uris(&c.uri.0, &c.uri.1, &c.uri.2) {
            for shape in 0..6 {
                let mut job =
                    json!({"name": c.job.name(), "schedule": c.schedule, "timeZone": c.body});
                match shape {
                    0 => {
                        job["httpTarget"] = json!({"uri": uri, "httpMethod": c.schedule, "body": body,
                            "oidcToken": {"serviceAccountEmail": c.sa, "audience": c.audience}})
                    }
                    1 => {
                        job["httpTarget"] = json!({"uri": uri, "body": body,
                            "oauthToken": {"serviceAccountEmail": c.sa, "scope": c.audience}})
                    }
                    2 => job["httpTarget"] = json!({"uri": uri}),
                    3 => job["pubsubTarget"] = json!({"topicName": c.topic}),
                    // No audience: a 403 leads to the invoker grant on what the URL names.
                    5 => {
                        job["httpTarget"] = json!({"uri": uri,
                            "oidcToken": {"serviceAccountEmail": c.sa}})
                    }
                    _ => {}
                }
                let config = JobConfig::from_value(job).unwrap();
                let lookup = if shape == 4 {
                    Lookup {
                        config: None,
                        source: AuthSource::Unavailable,
                        reason: Some(c.body.clone()),
                    }
                } else {
                    Lookup {
                        config: Some(Arc::new(config.clone())),
                        source: AuthSource::Inventory,
                        reason: None,
                    }
                };
                for o in [Outcome::Unauthenticated, Outcome::PermissionDenied] {
                    out.push(d.diagnose(&c.job, &lookup, o, Some(&c.log_url)));
                }
                out.extend(d.audit(&config, AuthSource::Inventory));
            }
        }
        out
    }

    /// What bash recorded: each gcloud call's argv, and every command it ran.
    struct Run {
        calls: Vec<Vec<String>>,
        trace: Vec<String>,
        stderr: String,
        ok: bool,
        left: Vec<String>,
    }

    /// The stub: its one command shows in the trace (`set -T` traces inside functions).
    const STUB: &str = r#"printf '%s\0' "$#" "$@" >> "$ARGV""#;

    fn source_in_bash(fixes: &[&str], dir: &Path) -> Run {
        let work = dir.join("work");
        let fixes_dir = dir.join("fixes");
        let empty_path = dir.join("no-commands");
        for d in [&work, &fixes_dir, &empty_path] {
            std::fs::create_dir(d).unwrap();
        }
        let mut driver = format!(
            "set -T\ngcloud() {{ {STUB}; }}\ntrap 'printf \"%s\\0\" \"$BASH_COMMAND\" >> \"$TRACE\"' DEBUG\n"
        );
        for (i, fix) in fixes.iter().enumerate() {
            let path = fixes_dir.join(format!("fix{i}.sh"));
            std::fs::write(&path, fix).unwrap();
            driver.push_str(&format!("source '{}'\n", path.display()));
        }
        let (argv, trace) = (dir.join("argv"), dir.join("trace"));
        std::fs::write(&argv, "").unwrap();
        std::fs::write(&trace, "").unwrap();
        let out = Command::new("/bin/bash")
            .arg("--noprofile")
            .arg("--norc")
            .arg("-c")
            .arg(&driver)
            .current_dir(&work)
            .env_clear()
            // No directory with commands: only builtins and the stub can run.
            .env("PATH", &empty_path)
            .env("ARGV", &argv)
            .env("TRACE", &trace)
            .output()
            .expect("bash runs");
        let fields = |path: &Path| -> Vec<String> {
            let bytes = std::fs::read(path).unwrap();
            let mut f: Vec<String> = bytes
                .split(|&b| b == 0)
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect();
            f.pop(); // after the last NUL
            f
        };
        let mut calls = Vec::new();
        let mut argv_fields = fields(&argv).into_iter();
        while let Some(n) = argv_fields.next() {
            let n: usize = n.parse().expect("an argument count");
            calls.push(argv_fields.by_ref().take(n).collect());
        }
        let mut left: Vec<String> = std::fs::read_dir(&work)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.extend(
            std::fs::read_dir(dir)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| {
                    !["work", "fixes", "no-commands", "argv", "trace"].contains(&n.as_str())
                }),
        );
        Run {
            calls,
            trace: fields(&trace),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            ok: out.status.success(),
            left,
        }
    }

    /// The flags a fix may give; anything else that starts with `-` is a value taken for a flag.
    const FLAGS: &[&str] = &[
        "project",
        "location",
        "region",
        "member",
        "role",
        "format",
        "oidc-service-account-email",
        "oidc-token-audience",
        "oauth-service-account-email",
        "oauth-token-scope",
    ];

    /// The command words of each gcloud command the fixes give.
    const COMMANDS: &[&str] = &[
        "scheduler jobs update http",
        "scheduler jobs describe",
        "iam service-accounts describe",
        "pubsub topics add-iam-policy-binding",
        "run jobs add-iam-policy-binding",
        "run services add-iam-policy-binding",
        "projects add-iam-policy-binding",
    ];

    /// One gcloud call read back: its command, its flags and its one positional argument.
    struct Call {
        command: String,
        flags: Vec<(String, String)>,
        resource: Option<String>,
    }

    fn read_call(argv: &[String]) -> Result<Call, String> {
        let command = COMMANDS
            .iter()
            .find(|c| {
                let words: Vec<&str> = c.split(' ').collect();
                argv.len() >= words.len() && argv[..words.len()] == words[..]
            })
            .ok_or_else(|| format!("an unknown command: {argv:?}"))?;
        let mut flags = Vec::new();
        let mut resource = Vec::new();
        let mut rest = argv[command.split(' ').count()..].iter();
        while let Some(a) = rest.next() {
            if a == "--" {
                resource.extend(rest.by_ref().cloned());
                break;
            }
            match a.strip_prefix("--").and_then(|f| f.split_once('=')) {
                Some((name, value)) if FLAGS.contains(&name) => {
                    flags.push((name.to_owned(), value.to_owned()))
                }
                _ if a.starts_with('-') => {
                    return Err(format!("{a:?} is read as a flag: {argv:?}"))
                }
                _ => resource.push(a.clone()),
            }
        }
        if resource.len() > 1 {
            return Err(format!("more than one positional argument: {argv:?}"));
        }
        Ok(Call {
            command: command.to_string(),
            flags,
            resource: resource.pop(),
        })
    }

    /// Whether bash can carry `value` in an argument: not when it holds a NUL.
    fn carried(value: &str) -> bool {
        !value.contains('\0')
    }

    fn check(c: &Case, dir: &Path) -> Result<(), TestCaseError> {
        let ds = diagnoses(c);
        let fixes: Vec<&str> = ds.iter().map(|d| d.fix.gcloud.as_str()).collect();
        for (d, fix) in ds.iter().zip(&fixes) {
            prop_assert!(
                !fix.contains(|ch| ch != '\n' && is_unsafe(ch)),
                "{:?}: a raw control or bidi character in\n{fix}",
                d.code
            );
            prop_assert!(
                !d.fix.terraform.contains(|ch| ch != '\n' && is_unsafe(ch)),
                "{:?}: a raw control or bidi character in\n{}",
                d.code,
                d.fix.terraform
            );
            hcl::from_str::<hcl::Body>(&d.fix.terraform)
                .map_err(|e| TestCaseError::fail(format!("not HCL: {e}\n{}", d.fix.terraform)))?;
        }
        let run = source_in_bash(&fixes, dir);
        prop_assert!(
            run.ok && run.stderr.is_empty(),
            "bash: {}\n{fixes:#?}",
            run.stderr
        );
        prop_assert!(
            run.left.is_empty(),
            "files written: {:?}\n{fixes:#?}",
            run.left
        );
        for command in &run.trace {
            prop_assert!(
                command.starts_with("gcloud ")
                    || command == STUB
                    || command.starts_with("source '"),
                "bash ran {command:?}\n{fixes:#?}"
            );
        }
        // The commands people see: every line that is not a comment, continuations joined.
        let shown: usize = fixes
            .iter()
            .map(|f| {
                f.replace("\\\n", " ")
                    .lines()
                    .filter(|l| l.starts_with("gcloud "))
                    .count()
            })
            .sum();
        prop_assert_eq!(run.calls.len(), shown, "{:#?}", fixes);

        // The service account, or where a config names none, the placeholder.
        let placeholder = "SERVICE_ACCOUNT_EMAIL";
        let sas = [c.sa.as_str(), placeholder];
        // The audience each diagnosis's target calls for (audit reads no logged URL).
        let audiences: BTreeSet<String> = ds
            .iter()
            .map(|d| match TargetKind::of(&d.target_url) {
                TargetKind::CloudFunctions => target::without_query(&d.target_url),
                _ => target::origin_url(&d.target_url)
                    .unwrap_or_else(|| "https://TARGET_ORIGIN".into()),
            })
            .collect();
        let job = &c.job;
        for argv in &run.calls {
            let call = read_call(argv).map_err(TestCaseError::fail)?;
            let flag = |name: &str| {
                call.flags
                    .iter()
                    .find(|(n, _)| n == name)
                    .map(|(_, v)| v.as_str())
            };
            if call.command.starts_with("scheduler jobs") {
                prop_assert_eq!(call.resource.as_deref(), Some(job.job_id()), "{:?}", argv);
                prop_assert_eq!(flag("project"), Some(job.project()), "{:?}", argv);
                prop_assert_eq!(flag("location"), Some(job.location()), "{:?}", argv);
            }
            for name in ["oidc-service-account-email", "oauth-service-account-email"] {
                if let (Some(v), true) = (flag(name), carried(&c.sa)) {
                    prop_assert!(sas.contains(&v), "{:?}", argv);
                }
            }
            if let Some(v) = flag("oidc-token-audience") {
                prop_assert!(
                    audiences.contains(v) || audiences.iter().any(|a| !carried(a)),
                    "{:?} is none of {:?}",
                    argv,
                    audiences
                );
            }
            if call.command == "iam service-accounts describe" && carried(&c.sa) {
                prop_assert_eq!(call.resource.as_deref(), Some(c.sa.as_str()), "{:?}", argv);
            }
            if call.command.starts_with("pubsub") && carried(&c.topic) {
                prop_assert_eq!(
                    call.resource.as_deref(),
                    Some(c.topic.as_str()),
                    "{:?}",
                    argv
                );
            }
            if (call.command.starts_with("run ") || call.command.starts_with("projects"))
                && carried(&c.sa)
            {
                let member = flag("member").unwrap_or_default();
                prop_assert!(
                    sas.iter()
                        .any(|sa| member == format!("serviceAccount:{sa}")),
                    "{:?}",
                    argv
                );
            }
        }
        Ok(())
    }

    proptest! {
        // Each case starts bash once, for some 70 fixes: 64 cases run in seconds.
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        #[test]
        fn a_fix_sourced_by_bash_only_calls_gcloud_with_the_values_intact(c in case()) {
            let dir = tempfile::tempdir().unwrap();
            check(&c, dir.path())?;
        }
    }

    /// The property's own check catches what it is for: a fix written with a raw value.
    #[test]
    fn the_check_sees_an_injection() {
        let dir = tempfile::tempdir().unwrap();
        let run = source_in_bash(
            &["# about x\ny\ngcloud scheduler jobs describe j --project=p --location=l > out\ngcloud scheduler jobs describe $(echo a) --project=p"],
            dir.path(),
        );
        assert!(run.trace.iter().any(|c| c == "y"), "{:?}", run.trace);
        assert!(run.trace.iter().any(|c| c == "echo a"), "{:?}", run.trace);
        assert_eq!(run.left, ["out"]);
        assert!(!run.stderr.is_empty(), "y is not a command");
        let unique: BTreeSet<&Vec<String>> = run.calls.iter().collect();
        assert_eq!(unique.len(), 2);
    }
}
