//! The bad-input corpus, through the real binary (CONTRACT section 1: a line or message that
//! is not valid JSON, not a scheduler entry, or lacks a usable job or timestamp is skipped and
//! counted, with one warning that names why; it never stops the run).
//!
//! Every bad item is mixed with good entries (the 401 fixture with distinct insertIds, then a
//! success), read from a file and from stdin, and checked for: exit 0, no panic, the good
//! entries' alerts, the summary line's count per skip reason, and one warning per reason.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::{Output, Stdio};

use serde_json::{json, Value};

use crate::common::{bin, fixture, ndjson, projection, stderr, write};

const JOB: &str = "acme-data-prod/europe-west1/nightly-etl-trigger";

/// A fixture, compact, with fields replaced.
fn entry(name: &str, insert_id: &str, timestamp: &str) -> Value {
    let mut e: Value = serde_json::from_slice(&std::fs::read(fixture(name)).unwrap()).unwrap();
    e["insertId"] = json!(insert_id);
    e["timestamp"] = json!(timestamp);
    e
}

fn failure(i: usize) -> Vec<u8> {
    let e = entry(
        "logs/attempt_finished_401_oidc_run_job.json",
        &format!("badinput{i:06}"),
        &format!("2026-03-02T02:{:02}:07.298114Z", i * 10),
    );
    serde_json::to_vec(&e).unwrap()
}

fn success() -> Vec<u8> {
    let e = entry(
        "logs/attempt_finished_200_success.json",
        "badinput-ok",
        "2026-03-02T03:00:06.875501Z",
    );
    serde_json::to_vec(&e).unwrap()
}

/// A scheduler entry with one part changed: the shapes of the "usable job / timestamp" rules.
fn scheduler_entry(edit: impl FnOnce(&mut Value)) -> Vec<u8> {
    let mut e: Value = serde_json::from_slice(&failure(99)).unwrap();
    edit(&mut e);
    serde_json::to_vec(&e).unwrap()
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Skip reasons (SkipReason::as_str) → how many items of the corpus have each.
fn want_skips() -> BTreeMap<String, u64> {
    [
        ("invalid_json", 4),
        ("not_an_object", 5),
        ("not_a_scheduler_entry", 2),
        ("malformed_entry", 1),
        ("missing_job_labels", 2),
        ("bad_timestamp", 2),
        ("bad_pubsub_message", 2),
        ("too_large", 1),
    ]
    .into_iter()
    .map(|(r, n)| (r.to_owned(), n))
    .collect()
}

/// The bad items, each one line (without its newline), with the reason each is skipped for.
fn bad_items() -> Vec<(&'static str, Vec<u8>)> {
    let good = failure(50);
    let mut non_utf8 = good.clone();
    let at = non_utf8.windows(8).position(|w| w == b"badinput").unwrap();
    non_utf8[at..at + 3].copy_from_slice(b"\xff\xfe\xc3");
    let mut deep = "[".repeat(100_000).into_bytes();
    deep.extend(std::iter::repeat_n(b']', 100_000));
    // 10 MiB of debugInfo in an otherwise real-shaped entry.
    let huge =
        scheduler_entry(|e| e["jsonPayload"]["debugInfo"] = json!("x".repeat(10 * 1024 * 1024)));
    vec![
        ("invalid_json", good[..good.len() / 2].to_vec()), // truncated
        ("invalid_json", non_utf8),
        ("invalid_json", deep), // 100,000 levels
        ("invalid_json", serde_json::to_vec(&json!({"message": {"data": b64(b"{\"resource\": {")}})).unwrap()),
        ("not_an_object", b"null".to_vec()),
        ("not_an_object", b"42".to_vec()),
        ("not_an_object", b"\"a string\"".to_vec()),
        ("not_an_object", b"true".to_vec()),
        ("not_an_object", b"[]".to_vec()),
        (
            "not_a_scheduler_entry",
            serde_json::to_vec(&json!({"insertId": "gce1", "logName": "projects/acme-data-prod/logs/syslog",
                "resource": {"type": "gce_instance", "labels": {"instance_id": "1", "zone": "europe-west1-b"}},
                "timestamp": "2026-03-02T02:00:00.000000Z", "textPayload": "hello"}))
            .unwrap(),
        ),
        ("not_a_scheduler_entry", b"{}".to_vec()),
        ("malformed_entry", scheduler_entry(|e| e["resource"]["labels"] = json!("acme-data-prod/europe-west1/nightly-etl-trigger"))),
        ("missing_job_labels", scheduler_entry(|e| drop(e["resource"]["labels"].as_object_mut().unwrap().remove("job_id")))),
        ("missing_job_labels", scheduler_entry(|e| e["resource"]["labels"]["project_id"] = json!(""))),
        ("bad_timestamp", scheduler_entry(|e| e["timestamp"] = json!("yesterday"))),
        ("bad_timestamp", scheduler_entry(|e| drop(e.as_object_mut().unwrap().remove("timestamp")))),
        ("bad_pubsub_message", br#"{"message":{"data":"not base64!","messageId":"1"},"subscription":"projects/p/subscriptions/s"}"#.to_vec()),
        ("bad_pubsub_message", br#"{"receivedMessages":[{"ackId":"a","message":{"data":"%%%%","messageId":"2"}}]}"#.to_vec()),
        ("too_large", huge),
    ]
}

/// The corpus as a file: good entries among the bad items, blank lines, CRLF endings, and a
/// last line (a good entry) with no newline. `bad_first` puts a truncated line first, so the
/// reader's "is this a pretty-printed document?" guess sees invalid JSON at the start.
fn corpus(bad_first: bool) -> Vec<u8> {
    let bad = bad_items();
    let counted: u64 = want_skips().values().sum();
    assert_eq!(
        bad.len() as u64,
        counted,
        "want_skips() and bad_items() disagree"
    );
    let mut lines: Vec<(Vec<u8>, &str)> = Vec::new();
    let mut good = (0..3).map(failure);
    let mut bad = bad.into_iter().map(|(_, b)| b);
    if bad_first {
        lines.push((bad.next().unwrap(), "\n"));
    }
    lines.push((good.next().unwrap(), "\r\n"));
    lines.push((Vec::new(), "\n"));
    lines.push((b"   \t".to_vec(), "\r\n"));
    for (i, b) in bad.enumerate() {
        lines.push((b, if i % 2 == 0 { "\n" } else { "\r\n" }));
        if i % 6 == 5 {
            if let Some(g) = good.next() {
                lines.push((g, "\n"));
            }
        }
    }
    lines.extend(good.map(|g| (g, "\r\n")));
    lines.push((Vec::new(), "\r\n"));
    lines.push((success(), "")); // no newline at the end of the file
    let mut out = Vec::new();
    for (l, end) in lines {
        out.extend(l);
        out.extend(end.as_bytes());
    }
    out
}

/// `schedwatch replay --format json ARGS`, feeding `stdin` when given.
fn replay(args: &[&str], stdin: Option<Vec<u8>>) -> Output {
    let mut cmd = bin();
    cmd.arg("replay")
        .arg("--format")
        .arg("json")
        .args(args)
        .env("NO_COLOR", "1");
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    let mut child = cmd.spawn().expect("schedwatch runs");
    let writer = stdin.map(|bytes| {
        let mut pipe = child.stdin.take().unwrap();
        // Written from a thread: the child reads while the test collects its output. A broken
        // pipe (the child stopped reading) shows up as a missing entry below, not here.
        std::thread::spawn(move || {
            let _ = pipe.write_all(&bytes);
        })
    });
    let out = child.wait_with_output().unwrap();
    if let Some(w) = writer {
        w.join().unwrap();
    }
    out
}

fn replay_file(path: &Path) -> Output {
    replay(&[path.to_str().unwrap()], None)
}

/// The summary line: `schedwatch replay: N entries read, M skipped (reason n, …), …`.
#[derive(Debug, PartialEq)]
struct Summary {
    entries: u64,
    skipped: BTreeMap<String, u64>,
}

fn summary(err: &str) -> Summary {
    let line = err
        .lines()
        .find_map(|l| l.split_once("schedwatch replay: ").map(|(_, s)| s))
        .unwrap_or_else(|| panic!("no `schedwatch replay:` summary in stderr:\n{err}"));
    let (n, rest) = line
        .split_once(" entries read, ")
        .unwrap_or_else(|| panic!("summary: {line}"));
    let entries = n
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("summary: {line}"));
    let mut skipped = BTreeMap::new();
    if !rest.starts_with("none skipped") {
        let (total, rest) = rest
            .split_once(" skipped (")
            .unwrap_or_else(|| panic!("summary: {line}"));
        let (list, _) = rest
            .split_once(')')
            .unwrap_or_else(|| panic!("summary: {line}"));
        for part in list.split(", ") {
            let (reason, k) = part
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("summary: {line}"));
            skipped.insert(
                reason.to_owned(),
                k.parse().unwrap_or_else(|_| panic!("summary: {line}")),
            );
        }
        let total: u64 = total
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("summary: {line}"));
        assert_eq!(
            total,
            skipped.values().sum::<u64>(),
            "the skipped total disagrees with its parts: {line}"
        );
    }
    Summary { entries, skipped }
}

/// Exit 0, no panic, and the summary's per-reason counts; one warning per reason.
fn problems(
    what: &str,
    out: &Output,
    want_entries: u64,
    want_skips: &BTreeMap<String, u64>,
) -> Vec<String> {
    let err = stderr(out);
    let mut p = Vec::new();
    if out.status.code() != Some(0) {
        p.push(format!("{what}: exit {:?}, want 0", out.status.code()));
    }
    if err.contains("panicked") {
        p.push(format!("{what}: panicked"));
    }
    if !err.contains("schedwatch replay: ") {
        p.push(format!("{what}: no summary line; stderr: {}", tail(&err)));
        return p;
    }
    let got = summary(&err);
    if got.skipped != *want_skips {
        p.push(format!(
            "{what}: skipped {:?}, want {want_skips:?}",
            got.skipped
        ));
    }
    if got.entries != want_entries {
        p.push(format!(
            "{what}: {} entries read, want {want_entries}",
            got.entries
        ));
    }
    let warnings: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("skipped an entry"))
        .collect();
    if warnings.len() != got.skipped.len() {
        p.push(format!(
            "{what}: {} 'skipped an entry' warnings for {} reasons: {warnings:#?}",
            warnings.len(),
            got.skipped.len()
        ));
    }
    for reason in got.skipped.keys() {
        let n = warnings
            .iter()
            .filter(|w| w.contains(reason.as_str()))
            .count();
        if n != 1 {
            p.push(format!("{what}: {n} warnings name {reason}, want 1"));
        }
    }
    p
}

fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

#[test]
fn the_corpus_is_skipped_and_counted_while_good_entries_alert() {
    let dir = tempfile::tempdir().unwrap();
    let want_alerts = vec![
        (
            JOB.to_owned(),
            "firing".to_owned(),
            "auth-config-unavailable".to_owned(),
            3,
        ),
        (
            JOB.to_owned(),
            "resolved".to_owned(),
            "auth-config-unavailable".to_owned(),
            3,
        ),
    ];
    let skips = want_skips();
    let entries = skips.values().sum::<u64>() + 4;
    let mut all = Vec::new();
    for bad_first in [false, true] {
        let bytes = corpus(bad_first);
        assert!(bytes.len() > 10 * 1024 * 1024);
        let path = write(dir.path(), &format!("corpus-{bad_first}.ndjson"), &bytes);
        for (door, out) in [
            ("file", replay_file(&path)),
            ("stdin", replay(&["-"], Some(bytes))),
        ] {
            let what = format!(
                "{door}, {}",
                if bad_first {
                    "truncated line first"
                } else {
                    "good line first"
                }
            );
            all.extend(problems(&what, &out, entries, &skips));
            let got = projection(&ndjson(&out));
            if got != want_alerts {
                all.push(format!("{what}: alerts {got:?}, want {want_alerts:?}"));
            }
        }
    }
    assert!(all.is_empty(), "{}", all.join("\n"));
}

#[test]
fn each_bad_item_alone_is_skipped_for_its_reason() {
    // One good line first (so the file is read as NDJSON), then the item: the reason is the
    // item's own, not an effect of its neighbours.
    let dir = tempfile::tempdir().unwrap();
    let mut all = Vec::new();
    for (i, (reason, item)) in bad_items().into_iter().enumerate() {
        let mut bytes = failure(0);
        bytes.push(b'\n');
        bytes.extend(&item);
        bytes.push(b'\n');
        let path = write(dir.path(), &format!("item-{i}.ndjson"), &bytes);
        let out = replay_file(&path);
        let want: BTreeMap<String, u64> = [(reason.to_owned(), 1)].into();
        let shown = String::from_utf8_lossy(&item[..item.len().min(60)]).into_owned();
        all.extend(problems(&format!("item {i} ({shown})"), &out, 2, &want));
    }
    assert!(all.is_empty(), "{}", all.join("\n"));
}

#[test]
fn an_array_inside_ndjson_is_not_an_entry() {
    // serde's derived structs also accept a JSON array, field by field in declaration order:
    // an array line must not be read as a LogEntry (CONTRACT section 1: not an object).
    let dir = tempfile::tempdir().unwrap();
    let positional = json!([
        "projects/acme-data-prod/logs/cloudscheduler.googleapis.com%2Fexecutions",
        "positional-1",
        "2026-03-02T02:00:07.298114Z",
        {"type": "cloud_scheduler_job", "labels": {"project_id": "acme-data-prod", "location": "europe-west1", "job_id": "nightly-etl-trigger"}},
        {"@type": "type.googleapis.com/google.cloud.scheduler.logging.AttemptFinished", "status": "UNAUTHENTICATED"},
        {"status": 401}
    ]);
    let mut text = String::from_utf8(failure(0)).unwrap();
    text.push('\n');
    for i in 0..3 {
        let mut p = positional.clone();
        p[1] = json!(format!("positional-{i}"));
        text.push_str(&format!("{p}\n"));
    }
    text.push_str("[\"projects/p/logs/x\", \"id\"]\n");
    let path = write(dir.path(), "arrays.ndjson", text);
    let out = replay_file(&path);
    let want: BTreeMap<String, u64> = [("not_an_object".to_owned(), 4)].into();
    let p = problems("array lines", &out, 5, &want);
    assert!(p.is_empty(), "{}", p.join("\n"));
    assert_eq!(
        ndjson(&out).len(),
        0,
        "one 401 makes no alert without an inventory; arrays add none"
    );
}

#[test]
fn bad_items_inside_a_json_array_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let good: Vec<Value> = (0..3)
        .map(|i| serde_json::from_slice(&failure(i)).unwrap())
        .collect();
    let doc = json!([
        serde_json::from_slice::<Value>(&success()).unwrap(),
        good[2], null, 42, "text", {},
        serde_json::from_slice::<Value>(&scheduler_entry(|e| e["timestamp"] = json!("2026-13-45T99:00:00Z"))).unwrap(),
        {"message": {"data": "not base64!"}},
        good[1], good[0],
    ]);
    let path = write(
        dir.path(),
        "gcloud.json",
        serde_json::to_string_pretty(&doc).unwrap(),
    );
    let out = replay_file(&path);
    let want: BTreeMap<String, u64> = [
        ("not_an_object", 3),
        ("not_a_scheduler_entry", 1),
        ("bad_timestamp", 1),
        ("bad_pubsub_message", 1),
    ]
    .into_iter()
    .map(|(r, n)| (r.to_owned(), n))
    .collect();
    let p = problems("array document", &out, 10, &want);
    assert!(p.is_empty(), "{}", p.join("\n"));
    // Newest first in the file, processed in time order: three failures, then the success.
    let got = projection(&ndjson(&out));
    assert_eq!(
        got,
        vec![
            (
                JOB.to_owned(),
                "firing".to_owned(),
                "auth-config-unavailable".to_owned(),
                3
            ),
            (
                JOB.to_owned(),
                "resolved".to_owned(),
                "auth-config-unavailable".to_owned(),
                3
            ),
        ]
    );
}

#[test]
fn an_empty_file_is_no_entries_and_no_alerts() {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in [("empty.ndjson", ""), ("blank.ndjson", "\n\r\n  \n\t")] {
        let path = write(dir.path(), name, text);
        for (door, out) in [
            ("file", replay_file(&path)),
            ("stdin", replay(&["-"], Some(text.as_bytes().to_vec()))),
        ] {
            let what = format!("{name} via {door}");
            let p = problems(&what, &out, 0, &BTreeMap::new());
            assert!(p.is_empty(), "{}", p.join("\n"));
            assert!(ndjson(&out).is_empty(), "{what}: alerts from nothing");
        }
    }
}

#[test]
fn a_missing_file_is_a_usage_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("no-such-logs.ndjson");
    let out = replay_file(&path);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "stderr: {err}");
    assert!(
        err.contains("no-such-logs.ndjson"),
        "the message names the file: {err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    assert!(out.stdout.is_empty());
}

#[test]
fn a_pretty_printed_entry_is_one_entry() {
    let jobs = fixture("jobs/oidc_to_googleapis_run_job_broken.json");
    let file = fixture("logs/attempt_finished_401_oidc_run_job.json");
    let text = std::fs::read(&file).unwrap();
    assert!(
        text.iter().filter(|&&b| b == b'\n').count() > 10,
        "the fixture is pretty-printed"
    );
    let want = vec![(
        JOB.to_owned(),
        "firing".to_owned(),
        "oidc-token-for-google-api".to_owned(),
        1,
    )];
    for (door, out) in [
        (
            "file",
            replay(
                &["--jobs", jobs.to_str().unwrap(), file.to_str().unwrap()],
                None,
            ),
        ),
        (
            "stdin",
            replay(&["--jobs", jobs.to_str().unwrap(), "-"], Some(text)),
        ),
    ] {
        let p = problems(door, &out, 1, &BTreeMap::new());
        assert!(p.is_empty(), "{}", p.join("\n"));
        assert_eq!(projection(&ndjson(&out)), want, "{door}");
    }
}

#[test]
fn a_pretty_printed_entry_after_blank_lines_is_one_entry() {
    // Leading whitespace (an editor's blank line, `echo; cat entry.json`) does not make a
    // pretty-printed document into lines of broken JSON.
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read(fixture("logs/attempt_finished_401_oidc_run_job.json")).unwrap();
    let mut all = Vec::new();
    for (i, lead) in ["\n", "\r\n\n", "  \n  "].iter().enumerate() {
        let mut bytes = lead.as_bytes().to_vec();
        bytes.extend(&text);
        let path = write(dir.path(), &format!("lead-{i}.json"), &bytes);
        all.extend(problems(
            &format!("leading {lead:?}"),
            &replay_file(&path),
            1,
            &BTreeMap::new(),
        ));
    }
    assert!(all.is_empty(), "{}", all.join("\n"));
}

#[test]
fn a_byte_order_mark_does_not_cost_the_first_entry() {
    let dir = tempfile::tempdir().unwrap();
    let mut text = b"\xEF\xBB\xBF".to_vec();
    for i in 0..3 {
        text.extend_from_slice(&failure(i));
        text.push(b'\n');
    }
    let path = crate::common::write(dir.path(), "bom.ndjson", text);
    let out = replay_file(&path);
    assert!(out.status.success());
    let s = summary(&crate::common::stderr(&out));
    assert_eq!((s.entries, s.skipped.len()), (3, 0), "{s:?}");
    assert_eq!(
        crate::common::ndjson(&out).len(),
        1,
        "the third 401 fires (no inventory)"
    );
}

// ---- hostile inputs: bounded memory (CONTRACT section 1, issue 13 points 5 and 6) ----------

/// The memory target of `replay`, on hostile input as on clean input.
const MAX_RSS_KIB: u64 = 64 * 1024;

/// How much each hostile input streams: 64 MiB, so that a reader that held it whole would be
/// over [`MAX_RSS_KIB`] with the input alone, small enough that the five of them take seconds.
const HOSTILE_BYTES: usize = 64 * 1024 * 1024;

/// Success entries, each with its own insertId (so none is a duplicate), compact, one a line;
/// 8 KiB of an unknown field make it cheap to stream many megabytes of entries.
struct NumberedSuccess(String);

impl NumberedSuccess {
    fn new() -> Self {
        let mut e: Value = serde_json::from_slice(&success()).unwrap();
        e["insertId"] = json!("hostile#########");
        e["padding"] = json!("p".repeat(8 * 1024));
        NumberedSuccess(serde_json::to_string(&e).unwrap() + "\n")
    }

    fn line(&self, i: usize) -> Vec<u8> {
        self.0
            .replace("hostile#########", &format!("hostile{i:09}"))
            .into_bytes()
    }
}

/// Writes `byte` `n` times, a chunk at a time (never the whole in memory).
fn repeat(w: &mut dyn Write, byte: u8, n: usize) -> std::io::Result<()> {
    let chunk = vec![byte; 64 * 1024];
    let mut left = n;
    while left > 0 {
        let k = left.min(chunk.len());
        w.write_all(&chunk[..k])?;
        left -= k;
    }
    Ok(())
}

/// A hostile input, generated as it is written into replay's stdin.
type Generator = Box<dyn FnOnce(&mut dyn Write) -> std::io::Result<()> + Send>;

/// Runs a command and writes its peak RSS in KiB (`ru_maxrss` of RUSAGE_CHILDREN) to a file.
/// A wrapper process is needed: Linux folds the spawning process's own peak into the child's
/// `ru_maxrss` at exec, so wait4 in this test binary (hundreds of MiB) would measure the test
/// binary. Python's (about 10 MiB) is folded in instead, as in scripts/bench's timer.
const PEAK_RSS: &str = "import resource, subprocess, sys
rc = subprocess.call(sys.argv[2:])
with open(sys.argv[1], 'w') as f:
    f.write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))
sys.exit(rc if rc >= 0 else 128 - rc)";

/// `schedwatch replay --format json -`, with stdin streamed from `generate`; the output and
/// schedwatch's peak RSS in KiB.
fn replay_streamed(generate: Generator) -> (Output, u64) {
    let dir = tempfile::tempdir().unwrap();
    let peak = dir.path().join("peak-rss-kib");
    let mut child = std::process::Command::new("python3")
        .args(["-c", PEAK_RSS])
        .arg(&peak)
        .arg(env!("CARGO_BIN_EXE_schedwatch"))
        .args(["replay", "--format", "json", "-"])
        .env("NO_COLOR", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 runs (scripts/test requires it)");
    let mut stdin = child.stdin.take().unwrap();
    // A reader that stops early (an array broken at its start) makes the rest a broken pipe.
    let writer = std::thread::spawn(move || {
        let _ = generate(&mut stdin);
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    let kib = std::fs::read_to_string(&peak)
        .unwrap_or_else(|e| panic!("no peak RSS from the wrapper ({e}): {}", stderr(&out)));
    (out, kib.trim().parse().unwrap())
}

/// The hostile inputs of issue 13: name, generator, entries read, skips by reason.
fn hostile_inputs() -> Vec<(&'static str, Generator, u64, BTreeMap<String, u64>)> {
    let skips = |list: &[(&str, u64)]| -> BTreeMap<String, u64> {
        list.iter().map(|(r, n)| (r.to_string(), *n)).collect()
    };
    // Valid NDJSON with its first 100 bytes cut off: the first line is one skip.
    let entries = NumberedSuccess::new();
    let lines = HOSTILE_BYTES / entries.line(0).len() + 1;
    let truncated_head: Generator = Box::new(move |w| {
        w.write_all(&entries.line(0)[100..])?;
        for i in 1..lines {
            w.write_all(&entries.line(i))?;
        }
        Ok(())
    });
    // `[` and NUL bytes to the end: an array broken at its first element.
    let zeros: Generator = Box::new(|w| {
        w.write_all(b"[")?;
        repeat(w, 0, HOSTILE_BYTES)
    });
    // An array (newest first, as gcloud prints it) with one huge element among good ones.
    let huge_item: Generator = Box::new(|w| {
        w.write_all(b"[")?;
        w.write_all(&failure(2))?;
        w.write_all(b",\n{\"insertId\":\"huge\",\"jsonPayload\":{\"debugInfo\":\"")?;
        repeat(w, b'x', HOSTILE_BYTES)?;
        w.write_all(b"\"}},\n")?;
        w.write_all(&failure(1))?;
        w.write_all(b",")?;
        w.write_all(&failure(0))?;
        w.write_all(b"]\n")
    });
    // Received Pub/Sub messages as `gcloud pubsub subscriptions pull --format=json` lists
    // them, one with huge base64 data.
    let huge_message: Generator = Box::new(|w| {
        let message = |i: usize| {
            serde_json::to_vec(&json!({"ackId": format!("a{i}"), "message": {"data": b64(&failure(i)), "messageId": i.to_string()}})).unwrap()
        };
        w.write_all(b"[")?;
        w.write_all(&message(0))?;
        w.write_all(b",{\"ackId\":\"huge\",\"message\":{\"messageId\":\"9\",\"data\":\"")?;
        repeat(w, b'A', HOSTILE_BYTES)?;
        w.write_all(b"\"}},")?;
        w.write_all(&message(1))?;
        w.write_all(b"]")
    });
    // A broken line, then megabytes without a newline, then a good entry.
    let no_newline: Generator = Box::new(|w| {
        w.write_all(b"{\"resource\": {\"type\": \"cloud_sched\n")?;
        let junk = b"garbage ".repeat(8 * 1024);
        for _ in 0..HOSTILE_BYTES / junk.len() {
            w.write_all(&junk)?;
        }
        w.write_all(b"\n")?;
        w.write_all(&failure(0))?;
        w.write_all(b"\n")
    });
    vec![
        (
            "NDJSON with its first 100 bytes cut off",
            truncated_head,
            lines as u64,
            skips(&[("invalid_json", 1)]),
        ),
        (
            "`[` followed by zeros",
            zeros,
            1,
            skips(&[("invalid_json", 1)]),
        ),
        (
            "a JSON array with a 64 MiB element",
            huge_item,
            4,
            skips(&[("too_large", 1)]),
        ),
        (
            "a list of pulled messages, one with 64 MiB of data",
            huge_message,
            3,
            skips(&[("too_large", 1)]),
        ),
        (
            "a broken line, then 64 MiB without a newline",
            no_newline,
            3,
            skips(&[("invalid_json", 1), ("too_large", 1)]),
        ),
    ]
}

#[test]
fn hostile_input_is_replayed_in_bounded_memory() {
    let mut all = Vec::new();
    for (what, generate, entries, skips) in hostile_inputs() {
        let started = std::time::Instant::now();
        let (out, peak_kib) = replay_streamed(generate);
        // For people reading the log; only memory is asserted.
        eprintln!(
            "{what}: peak RSS {:.1} MiB, {:.1} s",
            peak_kib as f64 / 1024.0,
            started.elapsed().as_secs_f64()
        );
        all.extend(problems(what, &out, entries, &skips));
        if peak_kib >= MAX_RSS_KIB {
            all.push(format!(
                "{what}: peak RSS {:.1} MiB, want < {} MiB",
                peak_kib as f64 / 1024.0,
                MAX_RSS_KIB / 1024
            ));
        }
    }
    assert!(all.is_empty(), "{}", all.join("\n"));
}

#[test]
fn an_interrupted_gcloud_export_keeps_the_entries_before_the_cut() {
    // `gcloud logging read --format=json`: pretty-printed, newest first; twelve 401s of one
    // job, 02:00 to 02:44, cut at 90% (the export was interrupted inside the eleventh).
    let dir = tempfile::tempdir().unwrap();
    let entries: Vec<Value> = (0..12)
        .rev()
        .map(|i| {
            entry(
                "logs/attempt_finished_401_oidc_run_job.json",
                &format!("export{i:02}"),
                &format!("2026-03-02T02:{:02}:07.298114Z", i * 4),
            )
        })
        .collect();
    let text = serde_json::to_string_pretty(&entries).unwrap();
    let cut = &text[..text.len() * 9 / 10];
    // Where each element starts; the last one begun is cut, the ten before it are whole.
    let starts: Vec<usize> = cut.match_indices("\n  {").map(|(i, _)| i + 3).collect();
    assert_eq!(
        starts.len(),
        11,
        "the cut falls inside the eleventh element"
    );
    let path = write(dir.path(), "export.json", cut);
    let out = replay_file(&path);
    let want: BTreeMap<String, u64> = [("invalid_json".to_owned(), 1)].into();
    let p = problems("interrupted export", &out, 11, &want);
    assert!(p.is_empty(), "{}", p.join("\n"));
    let err = stderr(&out);
    let warning = format!("breaks at byte {}, after 10 elements", starts[10]);
    assert!(
        err.lines().any(|l| l.contains(&warning)),
        "a warning that says where the array breaks ({warning}): {err}"
    );
    // The ten entries before the cut, in time order: the third failure fires.
    let alerts = ndjson(&out);
    let got = projection(&alerts);
    assert_eq!(
        got.first(),
        Some(&(
            JOB.to_owned(),
            "firing".to_owned(),
            "auth-config-unavailable".to_owned(),
            3
        )),
        "{got:?}"
    );
    assert_eq!(
        alerts[0]["failure"]["first_at"],
        json!("2026-03-02T02:08:07.298114Z"),
        "the oldest whole entry opens the incident (02:00 is missing, 02:04 was cut)"
    );
}

#[test]
fn an_array_stops_at_junk_between_elements_and_keeps_what_came_before() {
    // Two entries, then something that is neither `,` nor `]`: the array breaks there.
    let dir = tempfile::tempdir().unwrap();
    let mut text = b"[".to_vec();
    text.extend(failure(1));
    text.push(b',');
    text.extend(failure(0));
    let at = text.len() + 1;
    text.extend(b" }{\"more\": 1}]");
    let path = write(dir.path(), "junk.json", &text);
    let out = replay_file(&path);
    let want: BTreeMap<String, u64> = [("invalid_json".to_owned(), 1)].into();
    let p = problems("junk after two elements", &out, 3, &want);
    assert!(p.is_empty(), "{}", p.join("\n"));
    let warning = format!("breaks at byte {at}, after 2 elements");
    assert!(stderr(&out).contains(&warning), "{}", stderr(&out));
}

/// Anyone who may write log entries can write any labels (issue 13). Labels that break Cloud
/// Scheduler's grammar — a newline that would end a fix's comment line, a job id that is a
/// gcloud flag with its value, `..` path segments, terminal escapes, a project that is not a
/// project id, a job id past 500 characters — are skipped as `malformed_entry` and show up
/// nowhere: no alert, nothing on the terminal, nothing in a log line. A valid job id that starts
/// with `-` still alerts, its fix naming it after `--`.
#[test]
fn hostile_job_labels_are_malformed_entries_and_shown_nowhere() {
    let long = "evil".repeat(126);
    let hostile: [(&str, &str, &str); 8] = [
        (
            "acme-data-prod",
            "europe-west1",
            "x\n# evil\ntouch /tmp/evil-schedwatch",
        ),
        (
            "acme-data-prod",
            "europe-west1",
            "--impersonate-service-account=evil@attacker.iam.gserviceaccount.com",
        ),
        ("acme-data-prod", "europe-west1", r"\..\..\evil"),
        ("acme-data-prod", "..", "evil"),
        ("acme-data-prod", "europe-west1/../../evil", "j"),
        ("acme-data-prod", "europe-west1", "\x1b]0;evil\x07\x1b[2J\r"),
        ("evil/../acme-data-prod", "europe-west1", "j"),
        ("acme-data-prod", "europe-west1", &long),
    ];
    let valid_but_flag_like = "--impersonate-service-account";
    let mut lines = Vec::new();
    let mut n = 0;
    for (project, location, job_id) in
        hostile
            .iter()
            .copied()
            .chain([("acme-data-prod", "europe-west1", valid_but_flag_like)])
    {
        // Three failures: enough to fire without a config (no inventory is given).
        for _ in 0..3 {
            n += 1;
            let e = scheduler_entry(|e| {
                e["insertId"] = json!(format!("hostile{n}"));
                e["timestamp"] = json!(format!("2026-03-02T02:{:02}:07.298114Z", n));
                e["resource"]["labels"] =
                    json!({"project_id": project, "location": location, "job_id": job_id});
            });
            lines.push(String::from_utf8(e).unwrap());
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "hostile.ndjson", lines.join("\n"));
    let malformed: BTreeMap<String, u64> =
        [("malformed_entry".to_owned(), 3 * hostile.len() as u64)].into();

    for format in ["text", "json"] {
        let out = bin()
            .args([
                "replay",
                "--format",
                format,
                "--log-format",
                "text",
                path.to_str().unwrap(),
            ])
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let p = problems(format, &out, lines.len() as u64, &malformed);
        assert!(p.is_empty(), "{p:#?}\n{}", stderr(&out));
        let (stdout, err) = (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr(&out),
        );
        for (what, text) in [("stdout", &stdout), ("stderr", &err)] {
            assert!(
                !text.contains("evil"),
                "{format}: a hostile label in {what}:\n{text}"
            );
            assert!(
                !text.contains('\x1b') && !text.contains('\r'),
                "{format}: a control in {what}:\n{text}"
            );
        }
        if format == "json" {
            let alerts = ndjson(&out);
            assert_eq!(
                projection(&alerts),
                [(
                    format!("acme-data-prod/europe-west1/{valid_but_flag_like}"),
                    "firing".to_owned(),
                    "auth-config-unavailable".to_owned(),
                    3
                )]
            );
            let fix = alerts[0]["fix"]["gcloud"].as_str().unwrap();
            assert!(
                fix.ends_with(&format!("--format=json -- {valid_but_flag_like}")),
                "{fix}"
            );
        } else {
            assert!(
                stdout.contains(&format!(
                    "FIRING  acme-data-prod/europe-west1/{valid_but_flag_like}"
                )),
                "{stdout}"
            );
        }
    }
}
