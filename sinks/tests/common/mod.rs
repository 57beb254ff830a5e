//! Test helpers: a receiver that records every request and answers as told (on the loopback
//! HTTP fake shared with the root crate's tests), secrets in temporary files, and alerts made
//! from CONTRACT section 4 JSON.

#![allow(dead_code)]

#[path = "../../../tests/fake/http.rs"]
mod http;

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use schedwatch_sinks::{Alert, SecretRef};
use serde_json::Value;

#[allow(unused_imports)] // not every test file uses each
pub use http::{unused_port as closed_port, FakeServer, Request, Response};

/// An answer: `status` with `body` (`.header(…)`, `.after(delay)` to add to it).
pub fn answer(status: u16, body: &str) -> Response {
    Response::new(status).body(body)
}

/// A receiver on the fake: answers the queued answers in order, then `default`.
pub struct Receiver {
    server: FakeServer,
    queued: Arc<Mutex<VecDeque<Response>>>,
}

impl Receiver {
    /// Starts a receiver answering `default` unless answers are queued.
    pub fn start(default: Response) -> Receiver {
        let queued = Arc::<Mutex<VecDeque<Response>>>::default();
        let next = Arc::clone(&queued);
        let server = FakeServer::start(move |_| {
            let queued = next.lock().unwrap().pop_front();
            queued.unwrap_or_else(|| default.clone())
        });
        Receiver { server, queued }
    }

    /// `http://127.0.0.1:PORT{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.server.url())
    }

    /// Queues the answer to the next unanswered request.
    pub fn answer_next(&self, answer: Response) {
        self.queued.lock().unwrap().push_back(answer);
    }

    pub fn requests(&self) -> Vec<Request> {
        self.server.requests()
    }
}

/// Secrets written to files in a temporary directory, as `{ file = … }` references.
pub struct Secrets {
    dir: tempfile::TempDir,
}

impl Secrets {
    pub fn new() -> Secrets {
        Secrets {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub fn file(&self, name: &str, value: &str) -> SecretRef {
        let path: PathBuf = self.dir.path().join(name);
        std::fs::write(&path, format!("{value}\n")).unwrap();
        SecretRef {
            env: None,
            file: Some(path),
        }
    }
}

/// A firing alert as CONTRACT section 4 shapes it. Log-derived text holds `<`, `>` and `&`.
pub const FIRING: &str = r#"{
  "schema": "schedwatch.alert.v1",
  "event": "firing",
  "incident_id": "4f1c2a9e7b3d5c01",
  "job": {"name": "projects/acme-data-prod/locations/us-east1/jobs/commit-worker",
          "project": "acme-data-prod", "location": "us-east1", "id": "commit-worker"},
  "failure": {"class": "unauthenticated", "status": "UNAUTHENTICATED", "http_status": 401,
              "count": 5, "first_at": "2026-11-20T09:00:01Z", "last_at": "2026-11-20T09:20:03Z"},
  "target": {"url": "https://run.googleapis.com/v2/projects/acme-data-prod/locations/us-east1/jobs/commit-worker:run?a=1&b=<2>",
             "kind": "google_api"},
  "auth": {"source": "inventory", "token": "oidc",
           "service_account": "scheduler-invoker@acme-data-prod.iam.gserviceaccount.com",
           "audience": "https://run.googleapis.com/", "scope": null},
  "diagnosis": {"code": "oidc-token-for-google-api", "confidence": "confirmed",
                "summary": "The job sends an OIDC token to a Google API, which accepts only OAuth access tokens.",
                "detail": "The target run.googleapis.com is a Google API & rejects ID tokens with 401 <!channel>. Use an OAuth token with the cloud-platform scope."},
  "fix": {"gcloud": "gcloud scheduler jobs update http commit-worker \\\n  --project=acme-data-prod --location=us-east1 \\\n  --clear-oidc-token \\\n  --oauth-service-account-email=scheduler-invoker@acme-data-prod.iam.gserviceaccount.com \\\n  --oauth-token-scope=https://www.googleapis.com/auth/cloud-platform",
          "terraform": "resource \"google_cloud_scheduler_job\" \"commit_worker\" {\n  # …\n  http_target {\n    oauth_token {\n      service_account_email = \"scheduler-invoker@acme-data-prod.iam.gserviceaccount.com\"\n      scope                 = \"https://www.googleapis.com/auth/cloud-platform\"\n    }\n  }\n}"},
  "runbook_url": "https://github.com/acme/schedwatch/blob/main/docs/runbook.md#oidc-token-for-google-api"
}"#;

pub fn firing() -> Alert {
    serde_json::from_str(FIRING).unwrap()
}

/// The same incident, `repeat_interval` later.
pub fn repeat() -> Alert {
    let mut v: Value = serde_json::from_str(FIRING).unwrap();
    v["event"] = "repeat".into();
    v["failure"]["count"] = 12.into();
    v["failure"]["last_at"] = "2026-11-20T13:20:02Z".into();
    serde_json::from_value(v).unwrap()
}

/// The same incident, resolved.
pub fn resolved() -> Alert {
    let mut v: Value = serde_json::from_str(FIRING).unwrap();
    v["event"] = "resolved".into();
    v["failure"]["count"] = 14.into();
    v["failure"]["last_at"] = "2026-11-20T13:40:02Z".into();
    v["resolved_at"] = "2026-11-20T14:00:01Z".into();
    serde_json::from_value(v).unwrap()
}

/// A firing alert whose gcloud fix is 20,000 characters (and Terraform as long).
pub fn huge_fix() -> Alert {
    let mut alert = firing();
    let line = "gcloud scheduler jobs update http commit-worker --location=us-east1 --x=<a&b>\n";
    alert.fix.gcloud = line.repeat(20_000 / line.len() + 1)[..20_000].to_owned();
    alert.fix.terraform = "# terraform & more\n".repeat(1100);
    alert
}

/// Every way a receiver may echo `secret` back: [`text_echoes`], and in base64.
pub fn echoes(secret: &str) -> Vec<String> {
    use base64::Engine as _;
    let mut forms = text_echoes(secret);
    forms.push(base64::engine::general_purpose::STANDARD.encode(secret));
    forms.push(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret));
    forms
}

/// Every way a receiver may echo `secret` back as text: as is; percent-encoded with upper- and
/// lower-case hex, with `+` for a space (form encoding), and twice over; JSON-escaped (as
/// `serde_json` writes it, with `\/`, and all `\uXXXX`); as HTML.
pub fn text_echoes(secret: &str) -> Vec<String> {
    let percent = |s: &str, lower: bool, plus: bool| -> String {
        s.bytes()
            .map(|b| match b {
                b' ' if plus => "+".to_owned(),
                b if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) => char::from(b).to_string(),
                b if lower => format!("%{b:02x}"),
                b => format!("%{b:02X}"),
            })
            .collect()
    };
    let json = serde_json::to_string(secret).unwrap();
    let json = json[1..json.len() - 1].to_owned();
    let all_u: String = secret
        .encode_utf16()
        .map(|u| format!("\\u{u:04x}"))
        .collect();
    let html = secret
        .replace('&', "&amp;")
        .replace('/', "&#x2F;")
        .replace('<', "&lt;")
        .replace('"', "&quot;");
    vec![
        secret.to_owned(),
        percent(secret, false, false),
        percent(secret, true, false),
        percent(secret, false, true),
        percent(&percent(secret, false, false), true, false),
        json.clone(),
        json.replace('/', "\\/"),
        all_u,
        html,
    ]
}

/// A body that echoes each of `secrets` in every form [`echoes`] knows, ` | ` between two.
pub fn echo_body(secrets: &[&str]) -> String {
    secrets
        .iter()
        .flat_map(|s| echoes(s))
        .collect::<Vec<_>>()
        .join(" | ")
}

/// What the quote of [`echo_body`] must be once every form is redacted.
pub fn echo_redacted(secrets: &[&str]) -> String {
    let forms = secrets.iter().map(|s| echoes(s).len()).sum();
    vec!["[redacted]"; forms].join(" | ")
}

/// Panics if `text` holds any of `secrets` in any form [`echoes`] knows.
pub fn assert_no_secret(text: &str, secrets: &[&str]) {
    for secret in secrets {
        for form in echoes(secret) {
            assert!(!text.contains(&form), "{secret:?} as {form:?} in: {text}");
        }
    }
}
