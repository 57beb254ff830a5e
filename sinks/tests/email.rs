//! The email sink against a real SMTP server (aiosmtpd, started per test on a free port), and
//! snapshots of the rendered bodies.
//!
//! aiosmtpd is installed with pip when missing; when it cannot be had, the tests fail and say
//! so: an email sink tested against nothing is not tested.
//!
//! `INSTA_UPDATE=always cargo test -p schedwatch-sinks --test email` rewrites the snapshots in
//! `tests/snapshots/`.

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use chrono::{TimeZone, Utc};
use schedwatch_sinks::alert::SCHEMA;
use schedwatch_sinks::email::{
    render_html, render_subject, render_text, EmailConfig, EmailSink, Security,
};
use schedwatch_sinks::{
    Alert, AlertAuth, AlertDiagnosis, AlertFailure, AlertFix, AlertJob, AlertTarget, DeliveryError,
    EventKind, Sink,
};
use serde_json::Value;

// ---------------------------------------------------------------------------------------------
// Fixtures

const GCLOUD_FIX: &str = "gcloud scheduler jobs update http commit-worker \\
  --project=acme-data-prod \\
  --location=europe-west1 \\
  --clear-oidc-token \\
  --oauth-service-account-email=scheduler@acme-data-prod.iam.gserviceaccount.com \\
  --oauth-token-scope=https://www.googleapis.com/auth/cloud-platform";

const TERRAFORM_FIX: &str = r#"resource "google_cloud_scheduler_job" "commit_worker" {
  # ...
  http_target {
    uri = "https://run.googleapis.com/v2/projects/acme-data-prod/locations/europe-west1/jobs/commit-worker:run"
    oauth_token {
      service_account_email = "scheduler@acme-data-prod.iam.gserviceaccount.com"
      scope                 = "https://www.googleapis.com/auth/cloud-platform"
    }
  }
}"#;

const RUNBOOK: &str =
    "https://github.com/acme/schedwatch/blob/main/docs/runbook.md#oidc-token-for-google-api";

fn firing() -> Alert {
    let at = |m, s| Utc.with_ymd_and_hms(2026, 11, 20, 9, m, s).unwrap();
    Alert {
        schema: SCHEMA.into(),
        event: EventKind::Firing,
        incident_id: "3f9c2a7e51d04b6a".into(),
        job: AlertJob {
            name: "projects/acme-data-prod/locations/europe-west1/jobs/commit-worker".into(),
            project: "acme-data-prod".into(),
            location: "europe-west1".into(),
            id: "commit-worker".into(),
        },
        failure: AlertFailure {
            class: "unauthenticated".into(),
            status: Some("UNAUTHENTICATED".into()),
            http_status: Some(401),
            count: 5,
            first_at: at(0, 1),
            last_at: at(20, 1),
        },
        target: AlertTarget {
            url: "https://run.googleapis.com/v2/projects/acme-data-prod/locations/europe-west1/jobs/commit-worker:run".into(),
            kind: "google_api".into(),
        },
        auth: AlertAuth {
            source: "inventory".into(),
            token: "oidc".into(),
            service_account: Some("scheduler@acme-data-prod.iam.gserviceaccount.com".into()),
            audience: Some("https://run.googleapis.com/".into()),
            scope: None,
        },
        diagnosis: AlertDiagnosis {
            code: "oidc-token-for-google-api".into(),
            confidence: "confirmed".into(),
            summary: "The job sends an OIDC ID token to a Google API, which accepts only OAuth access tokens.".into(),
            detail: "Google APIs (*.googleapis.com) check an OAuth 2.0 access token & its scopes; an ID token \
                     is refused with 401 <UNAUTHENTICATED> whatever its audience.\n\
                     Switch the job from oidcToken to oauthToken with the same service account."
                .into(),
        },
        fix: AlertFix { gcloud: GCLOUD_FIX.into(), terraform: TERRAFORM_FIX.into() },
        runbook_url: RUNBOOK.into(),
        resolved_at: None,
    }
}

fn resolved() -> Alert {
    Alert {
        event: EventKind::Resolved,
        resolved_at: Some(Utc.with_ymd_and_hms(2026, 11, 20, 10, 5, 0).unwrap()),
        ..firing()
    }
}

fn plain_config(port: u16) -> EmailConfig {
    serde_json::from_value(serde_json::json!({
        "host": "127.0.0.1",
        "port": port,
        "security": "plain",
        "from": "schedwatch <alerts@example.com>",
        "to": ["oncall@example.com", "Second Responder <second@example.com>"],
        "cc": ["platform@example.com"],
        "timeout": "5s",
    }))
    .unwrap()
}

// ---------------------------------------------------------------------------------------------
// The SMTP server

fn helper_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/smtp_sink.py")
}

fn python_has_aiosmtpd() -> bool {
    Command::new("python3")
        .args(["-c", "import aiosmtpd"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Makes sure `python3 -c 'import aiosmtpd'` works, installing it with pip once if needed.
fn ensure_aiosmtpd() {
    static READY: OnceLock<Result<(), String>> = OnceLock::new();
    let ready = READY.get_or_init(|| {
        if python_has_aiosmtpd() {
            return Ok(());
        }
        let mut tried = Vec::new();
        for extra in [&[][..], &["--break-system-packages"][..]] {
            let out = Command::new("python3")
                .args(["-m", "pip", "install", "--quiet", "aiosmtpd"])
                .args(extra)
                .output();
            match out {
                Ok(o) => tried.push(format!(
                    "pip install aiosmtpd {}: {}{}",
                    extra.join(" "),
                    o.status,
                    String::from_utf8_lossy(&o.stderr).trim()
                )),
                Err(e) => tried.push(format!("python3 -m pip: {e}")),
            }
            if python_has_aiosmtpd() {
                return Ok(());
            }
        }
        Err(tried.join("\n"))
    });
    if let Err(why) = ready {
        panic!(
            "the email sink tests need a real SMTP server: python3 with the aiosmtpd package \
             (`python3 -m pip install aiosmtpd`), and it could not be installed:\n{why}"
        );
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// An aiosmtpd child process that writes every accepted message to a temp folder; killed on
/// drop.
struct SmtpServer {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

/// One message as the server received it.
struct Received {
    mail_from: String,
    rcpt_tos: Vec<String>,
    /// The raw message (headers and body) as sent over DATA.
    data: String,
    /// `smtp_sink.py parse`'s view: headers, content type, parts.
    parsed: Value,
}

impl SmtpServer {
    fn start() -> SmtpServer {
        SmtpServer::start_with(None)
    }

    fn start_with(auth: Option<(&str, &str)>) -> SmtpServer {
        ensure_aiosmtpd();
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("server.log")).unwrap();
        let mut cmd = Command::new("python3");
        cmd.arg(helper_script())
            .arg("serve")
            .arg(port.to_string())
            .arg(dir.path().join("mail"));
        if let Some((user, password)) = auth {
            cmd.args([user, password]);
        }
        std::fs::create_dir(dir.path().join("mail")).unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start python3 smtp_sink.py serve");
        let mut server = SmtpServer { child, port, dir };
        server.wait_until_listening();
        server
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    fn wait_until_listening(&mut self) {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        // aiosmtpd starts in well under a second; 15 s covers a cold, busy 2-core machine.
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "the SMTP server exited ({status}) before listening:\n{}",
                    self.log()
                );
            }
            if Instant::now() > deadline {
                panic!(
                    "the SMTP server did not listen on {addr} within 15 s:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The messages received so far, waiting up to 10 s for at least `n`.
    fn messages(&self, n: usize) -> Vec<Received> {
        let mail = self.dir.path().join("mail");
        let deadline = Instant::now() + Duration::from_secs(10);
        let files = loop {
            let mut files: Vec<PathBuf> = std::fs::read_dir(&mail)
                .unwrap()
                .map(|e| e.unwrap().path())
                .filter(|p| p.extension().is_some_and(|e| e == "json"))
                .collect();
            files.sort();
            if files.len() >= n || Instant::now() > deadline {
                break files;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(
            files.len() >= n,
            "expected {n} messages, got {}:\n{}",
            files.len(),
            self.log()
        );
        files.iter().map(|f| read_message(f)).collect()
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn read_message(path: &Path) -> Received {
    let record: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let out = Command::new("python3")
        .arg(helper_script())
        .arg("parse")
        .arg(path)
        .output()
        .expect("run smtp_sink.py parse");
    assert!(
        out.status.success(),
        "parse failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Received {
        mail_from: record["mail_from"].as_str().unwrap().to_owned(),
        rcpt_tos: record["rcpt_tos"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect(),
        data: record["data"].as_str().unwrap().to_owned(),
        parsed: serde_json::from_slice(&out.stdout).unwrap(),
    }
}

impl Received {
    /// The decoded value of the only header called `name`; panics if there are several.
    fn header(&self, name: &str) -> String {
        let all: Vec<&str> = self.parsed["headers"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|h| h[0].as_str().unwrap().eq_ignore_ascii_case(name))
            .map(|h| h[1].as_str().unwrap())
            .collect();
        assert_eq!(all.len(), 1, "header {name}: {all:?}");
        all[0].to_owned()
    }

    fn header_names(&self) -> BTreeSet<String> {
        self.parsed["raw_headers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h[0].as_str().unwrap().to_ascii_lowercase())
            .collect()
    }

    /// The decoded text of the leaf part with this content type.
    fn part(&self, content_type: &str) -> String {
        let parts = self.parsed["parts"].as_array().unwrap();
        let found: Vec<&Value> = parts
            .iter()
            .filter(|p| p["content_type"] == content_type)
            .collect();
        assert_eq!(found.len(), 1, "one {content_type} part in {parts:?}");
        found[0]["text"].as_str().unwrap().to_owned()
    }

    fn part_types(&self) -> Vec<String> {
        self.parsed["parts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["content_type"].as_str().unwrap().to_owned())
            .collect()
    }

    /// The raw header section (everything before the first empty line).
    fn raw_head(&self) -> &str {
        let end = self
            .data
            .find("\r\n\r\n")
            .or_else(|| self.data.find("\n\n"))
            .unwrap();
        &self.data[..end]
    }
}

fn sorted(v: &[String]) -> Vec<String> {
    let mut v = v.to_vec();
    v.sort();
    v
}

fn sink(config: &EmailConfig) -> EmailSink {
    EmailSink::new("oncall-mail", config).unwrap()
}

// ---------------------------------------------------------------------------------------------
// Delivery

#[tokio::test]
async fn a_firing_alert_arrives_as_text_and_html_with_the_fix_and_the_runbook() {
    let server = SmtpServer::start();
    let alert = firing();
    sink(&plain_config(server.port)).send(&alert).await.unwrap();

    let [m] = <[Received; 1]>::try_from(server.messages(1)).ok().unwrap();
    assert_eq!(
        m.header("Subject"),
        "[schedwatch] FIRING commit-worker (acme-data-prod): oidc-token-for-google-api"
    );
    assert_eq!(m.header("Subject"), render_subject(&alert));
    assert_eq!(m.header("From"), "schedwatch <alerts@example.com>");
    let to = m.header("To");
    assert!(
        to.contains("oncall@example.com") && to.contains("Second Responder <second@example.com>"),
        "{to}"
    );
    assert_eq!(m.header("Cc"), "platform@example.com");
    assert_eq!(m.header("References"), "<3f9c2a7e51d04b6a@schedwatch>");
    assert!(
        m.header("Message-ID").starts_with('<'),
        "{}",
        m.header("Message-ID")
    );
    assert_eq!(m.parsed["content_type"], "multipart/alternative");
    assert_eq!(m.part_types(), ["text/plain", "text/html"]);
    assert_eq!(m.parsed["defects"], serde_json::json!([]));

    let text = m.part("text/plain");
    let html = m.part("text/html");
    for line in GCLOUD_FIX.lines() {
        assert!(text.contains(line.trim()), "text lacks {line:?}:\n{text}");
        assert!(html.contains(line.trim()), "html lacks {line:?}:\n{html}");
    }
    assert!(text.contains("resource \"google_cloud_scheduler_job\" \"commit_worker\" {"));
    assert!(html
        .contains("resource &quot;google_cloud_scheduler_job&quot; &quot;commit_worker&quot; {"));
    assert!(html.contains("<pre"), "{html}");
    assert!(text.contains(&format!("Runbook: {RUNBOOK}")), "{text}");
    assert!(html.contains(&format!("<a href=\"{RUNBOOK}\">")), "{html}");
    assert!(
        text.contains("5 (unauthenticated, HTTP 401 UNAUTHENTICATED)"),
        "{text}"
    );
    assert!(text.contains("2026-11-20 09:00:01 UTC") && text.contains("2026-11-20 09:20:01 UTC"));
    assert!(
        html.contains("401 &lt;UNAUTHENTICATED&gt;"),
        "log text is escaped: {html}"
    );

    assert_eq!(m.mail_from, "alerts@example.com");
    assert_eq!(
        sorted(&m.rcpt_tos),
        [
            "oncall@example.com",
            "platform@example.com",
            "second@example.com"
        ]
    );
}

#[tokio::test]
async fn a_job_id_with_crlf_cannot_add_a_header_or_a_recipient() {
    let server = SmtpServer::start();
    let mut alert = firing();
    alert.job.id = "commit-worker\r\nBcc: evil@example.com".into();
    alert.job.name = "projects/p/locations/l/jobs/x\r\nX-Injected: 1".into();
    alert.job.project = "acme\nCc: evil2@example.com".into();
    alert.diagnosis.code = "oidc-token-for-google-api\r\n\r\nfake body".into();
    alert.incident_id = "abc>\r\nBcc: evil3@example.com".into();
    sink(&plain_config(server.port)).send(&alert).await.unwrap();

    let [m] = <[Received; 1]>::try_from(server.messages(1)).ok().unwrap();
    assert_eq!(
        sorted(&m.rcpt_tos),
        [
            "oncall@example.com",
            "platform@example.com",
            "second@example.com"
        ],
        "no recipient beyond to + cc"
    );
    let names = m.header_names();
    let allowed: BTreeSet<String> = [
        "date",
        "from",
        "to",
        "cc",
        "subject",
        "references",
        "message-id",
        "mime-version",
        "content-type",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert!(
        names.is_subset(&allowed),
        "unexpected headers: {names:?}\n{}",
        m.raw_head()
    );
    let head = m.raw_head().to_ascii_lowercase();
    for line in head.lines() {
        assert!(
            !line.starts_with("bcc:")
                && !line.starts_with("x-injected:")
                && !line.starts_with("cc: evil"),
            "injected header line {line:?}"
        );
    }
    let subject = m.header("Subject");
    assert!(
        !subject.contains('\r') && !subject.contains('\n'),
        "{subject:?}"
    );
    assert_eq!(
        subject,
        r"[schedwatch] FIRING commit-worker\r\nBcc: evil@example.com (acme\nCc: evil2@example.com): oidc-token-for-google-api\r\n\r\nfake body"
    );
    assert_eq!(
        m.header("References"),
        "<abcBccevil3example.com@schedwatch>"
    );
}

#[tokio::test]
async fn a_resolved_alert_says_resolved_and_when_and_leaves_out_the_fix() {
    let server = SmtpServer::start();
    sink(&plain_config(server.port))
        .send(&resolved())
        .await
        .unwrap();

    let [m] = <[Received; 1]>::try_from(server.messages(1)).ok().unwrap();
    assert_eq!(
        m.header("Subject"),
        "[schedwatch] RESOLVED commit-worker (acme-data-prod): oidc-token-for-google-api"
    );
    let text = m.part("text/plain");
    let html = m.part("text/html");
    assert!(
        text.starts_with("RESOLVED: Cloud Scheduler job commit-worker"),
        "{text}"
    );
    assert!(
        text.contains("Resolved at:      2026-11-20 10:05:00 UTC"),
        "{text}"
    );
    assert!(
        html.contains("RESOLVED: Cloud Scheduler job commit-worker"),
        "{html}"
    );
    assert!(
        text.contains("succeeded again at 2026-11-20 10:05:00 UTC."),
        "{text}"
    );
    assert!(html.contains("2026-11-20 10:05:00 UTC"), "{html}");
    for body in [&text, &html] {
        assert!(
            !body.contains("--clear-oidc-token"),
            "no fix on resolved:\n{body}"
        );
        assert!(!body.contains("Fix with"), "{body}");
        assert!(body.contains(RUNBOOK));
    }
}

#[test]
fn a_repeat_says_still_failing() {
    let alert = Alert {
        event: EventKind::Repeat,
        ..firing()
    };
    assert_eq!(
        render_subject(&alert),
        "[schedwatch] STILL FAILING commit-worker (acme-data-prod): oidc-token-for-google-api"
    );
    assert!(render_text(&alert).starts_with("STILL FAILING: "));
    assert!(render_text(&alert).contains("--clear-oidc-token"));
}

#[tokio::test]
async fn smtp_replies_map_to_retry_decisions() {
    let server = SmtpServer::start();
    let mut config = plain_config(server.port);

    config.to = vec!["reject@example.com".into()];
    config.cc = vec![];
    match sink(&config).send(&firing()).await {
        Err(DeliveryError::Permanent { reason }) => assert!(reason.contains("550"), "{reason}"),
        other => panic!("550 must be permanent: {other:?}"),
    }

    config.to = vec!["busy@example.com".into()];
    match sink(&config).send(&firing()).await {
        Err(DeliveryError::Retryable { reason, .. }) => assert!(reason.contains("451"), "{reason}"),
        other => panic!("451 must be retryable: {other:?}"),
    }
    assert!(server.messages(0).is_empty());
}

#[tokio::test]
async fn the_password_never_shows_in_debug_or_in_a_failed_send() {
    const VAR: &str = "SCHEDWATCH_TEST_EMAIL_SMTP_PASSWORD";
    const PASSWORD: &str = "pw-7a1e9c-do-not-print";
    // Set once, before anything else in this process could read it; no other test uses it.
    static SET: OnceLock<()> = OnceLock::new();
    SET.get_or_init(|| std::env::set_var(VAR, PASSWORD));

    let closed = free_port(); // bound and released: nothing listens there now
    let mut config = plain_config(closed);
    config.username = serde_json::from_value(serde_json::json!("schedwatch")).unwrap();
    config.password = serde_json::from_value(serde_json::json!({ "env": VAR })).unwrap();
    config.timeout = Duration::from_secs(2);
    let sink = sink(&config);

    let debug = format!("{sink:?} {config:?}");
    assert!(!debug.contains(PASSWORD), "{debug}");
    assert!(debug.contains(VAR), "the variable's name may show: {debug}");

    let err = sink.send(&firing()).await.unwrap_err();
    let DeliveryError::Retryable { reason, .. } = &err else {
        panic!("a refused connection must be retryable: {err:?}");
    };
    assert!(reason.contains(&format!("127.0.0.1:{closed}")), "{reason}");
    for shown in [reason.clone(), err.to_string(), format!("{err:?}")] {
        assert!(!shown.contains(PASSWORD), "{shown}");
    }
}

#[tokio::test]
async fn a_server_that_never_answers_is_retryable_after_the_timeout() {
    // Accepts connections (the kernel's backlog) but never sends the SMTP greeting.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut config = plain_config(silent.local_addr().unwrap().port());
    config.timeout = Duration::from_millis(500);
    let started = Instant::now();
    let err = sink(&config).send(&firing()).await.unwrap_err();
    assert!(err.is_retryable(), "{err:?}");
    assert!(err.to_string().contains("no answer within"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn auth_over_plain_delivers_with_the_right_password_and_a_wrong_one_is_permanent() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("smtp-password");
    std::fs::write(&file, "right-horse-battery\n").unwrap();
    let server = SmtpServer::start_with(Some(("schedwatch", "right-horse-battery")));

    let mut config = plain_config(server.port);
    assert_eq!(config.security, Security::Plain);
    config.username = serde_json::from_value(serde_json::json!("schedwatch")).unwrap();
    config.password = serde_json::from_value(serde_json::json!({ "file": file })).unwrap();
    sink(&config).send(&firing()).await.unwrap();
    assert_eq!(server.messages(1).len(), 1);

    std::fs::write(&file, "wrong-staple\n").unwrap();
    let err = sink(&config).send(&firing()).await.unwrap_err();
    let DeliveryError::Permanent { reason } = &err else {
        panic!("bad credentials (535) must be permanent: {err:?}");
    };
    assert!(reason.contains("535"), "{reason}");
    assert!(!reason.contains("wrong-staple"), "{reason}");

    config.username = None;
    config.password = None;
    let err = sink(&config).send(&firing()).await.unwrap_err();
    assert!(
        !err.is_retryable(),
        "530 auth required must be permanent: {err:?}"
    );
}

/// A hostile SMTP server on loopback: it offers AUTH PLAIN and LOGIN and refuses the login of
/// the `n`-th connection with a 535 that quotes `replies[n]`, a line each (SMTP replies lines
/// of 1,000 bytes at most). Serves `replies.len()` connections, one after the other, each read
/// with a timeout; gives back the AUTH lines it got.
fn echoing_smtp_server(replies: Vec<Vec<String>>) -> (u16, std::thread::JoinHandle<Vec<String>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        let mut auth_lines = Vec::new();
        for reply in replies {
            let (stream, _) = listener.accept().unwrap();
            // Long enough for a busy machine, short enough that a test gone wrong ends.
            stream
                .set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            let mut out = stream.try_clone().unwrap();
            let mut lines = BufReader::new(stream);
            out.write_all(b"220 hostile ESMTP\r\n").unwrap();
            let mut line = String::new();
            while lines.read_line(&mut line).is_ok_and(|n| n > 0) {
                let command = line.trim_end().to_owned();
                line.clear();
                let upper = command.to_ascii_uppercase();
                let answer = if upper.starts_with("EHLO") || upper.starts_with("HELO") {
                    "250-hostile\r\n250 AUTH PLAIN LOGIN\r\n".to_owned()
                } else if upper.starts_with("AUTH") {
                    auth_lines.push(command);
                    let lines: String = reply
                        .iter()
                        .map(|echo| format!("535-5.7.8 {echo}\r\n"))
                        .collect();
                    format!("{lines}535 5.7.8 Authentication failed\r\n")
                } else if upper.starts_with("QUIT") {
                    let _ = out.write_all(b"221 bye\r\n");
                    break;
                } else {
                    "500 5.5.1 what\r\n".to_owned()
                };
                if out.write_all(answer.as_bytes()).is_err() {
                    break;
                }
            }
        }
        auth_lines
    });
    (port, server)
}

#[tokio::test]
async fn a_server_that_echoes_the_credentials_gets_none_into_the_error() {
    use base64::Engine as _;
    const USER: &str = "AKIAEXAMPLEUSER01";
    const PASSWORD: &str = "pw 7a1e/9c+&do-not-print";
    let plain = base64::engine::general_purpose::STANDARD.encode(format!("\0{USER}\0{PASSWORD}"));
    let user_password = format!("{USER}:{PASSWORD}");
    let cases: Vec<Vec<&str>> = vec![
        vec![PASSWORD],
        vec![USER],
        vec![&user_password],
        vec![&plain],
    ];
    // AUTH PLAIN's base64 is echoed as text: the base64 of that is no form it travels in.
    let forms = |s: &str| {
        if s == plain {
            common::text_echoes(s)
        } else {
            common::echoes(s)
        }
    };
    let replies = cases
        .iter()
        .map(|c| c.iter().flat_map(|s| forms(s)).collect())
        .collect();
    let (port, server) = echoing_smtp_server(replies);

    let dir = tempfile::tempdir().unwrap();
    let secret = |name: &str, value: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, value).unwrap();
        serde_json::json!({ "file": path })
    };
    let mut config = plain_config(port);
    config.username = serde_json::from_value(secret("user", USER)).unwrap();
    config.password = serde_json::from_value(secret("password", PASSWORD)).unwrap();
    let sink = sink(&config);
    let mut everything: Vec<&str> = cases.iter().flatten().copied().collect();
    everything.push(&plain);
    for echoed in &cases {
        let err = sink.send(&firing()).await.unwrap_err();
        let DeliveryError::Permanent { reason } = &err else {
            panic!("535 must be permanent: {err:?}");
        };
        assert!(reason.contains("535"), "{reason}");
        // Each form is redacted, not cut off: the quote holds them all.
        let count: usize = echoed.iter().map(|s| forms(s).len()).sum();
        assert_eq!(reason.matches("[redacted]").count(), count, "{reason}");
        assert!(reason.ends_with("Authentication failed"), "{reason}");
        common::assert_no_secret(&format!("{err} {err:?} {sink:?}"), &everything);
    }
    // The server was sent the real credentials, so it had them to echo.
    let auth = server.join().unwrap();
    assert_eq!(auth.len(), cases.len(), "{auth:?}");
    assert!(auth[0].contains(&plain), "{auth:?}");
}

// ---------------------------------------------------------------------------------------------
// Rendering

#[test]
fn log_text_cannot_inject_html_or_a_script_link() {
    let mut alert = firing();
    alert.diagnosis.summary = "<script>alert(1)</script>".into();
    alert.job.id = "<img src=x onerror=alert(1)>".into();
    alert.runbook_url = "javascript:alert(1)".into();
    let html = render_html(&alert);
    assert!(
        !html.contains("<script>") && !html.contains("<img"),
        "{html}"
    );
    assert!(
        html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
        "{html}"
    );
    assert!(!html.contains("href=\"javascript:"), "{html}");
}

/// The bodies, checked in as insta snapshots in `tests/snapshots/`. A difference fails the
/// test and writes nothing (`.config/insta.yaml`); after a deliberate change,
/// `INSTA_UPDATE=always cargo test -p schedwatch-sinks --test email` rewrites them for review
/// in the diff.
#[test]
fn firing_and_resolved_bodies_match_the_snapshots() {
    insta::with_settings!({prepend_module_to_snapshot => false}, {
        insta::assert_snapshot!("email_firing_text", render_text(&firing()));
        insta::assert_snapshot!("email_firing_html", render_html(&firing()));
        insta::assert_snapshot!("email_resolved_text", render_text(&resolved()));
    });
}
