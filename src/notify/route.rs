//! Routing: which receivers an alert goes to, as Alertmanager does it.
//!
//! `[[routes]]` are tried in order; the first that matches decides, unless it says
//! `continue = true`, in which case the next ones are tried too. No route configured, or none
//! matching: every receiver gets the alert. A route matches on the job's project, location,
//! job id (a glob: `*` any run of characters, `?` one) and the diagnosis code; a field left out
//! matches anything. Each route may hold back repeats (`repeat_interval`, in event time, per
//! incident; the incident rules' own interval still applies, so the longer of the two wins) and
//! resolved alerts (`send_resolved = false`).

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use schedwatch_sinks::{Alert, EventKind};
use serde::Deserialize;

/// `[[routes]]`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// The receivers this route sends to, by name.
    pub receivers: Vec<String>,
    /// What the alert must match; empty matches everything.
    #[serde(default, rename = "match")]
    pub matcher: Matcher,
    /// Keep trying the next routes after this one matched.
    #[serde(default, rename = "continue")]
    pub continue_matching: bool,
    /// Repeats for one incident go to this route at most this often, 1 min to 30 days
    /// ([`crate::config::REPEAT_INTERVAL`]).
    #[serde(default, with = "humantime_serde")]
    pub repeat_interval: Option<Duration>,
    /// Whether resolved alerts go to this route (default true).
    #[serde(default = "yes")]
    pub send_resolved: bool,
}

fn yes() -> bool {
    true
}

/// The fields a route matches on.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Matcher {
    /// The job's project id.
    pub project: Option<String>,
    /// The job's location.
    pub location: Option<String>,
    /// The job id, a glob (`nightly-*`).
    pub job: Option<String>,
    /// The diagnosis code (`oidc-token-for-google-api`).
    pub code: Option<String>,
}

impl Matcher {
    /// Whether `alert` matches every field given.
    pub fn matches(&self, alert: &Alert) -> bool {
        let eq = |want: &Option<String>, got: &str| want.as_deref().is_none_or(|w| w == got);
        eq(&self.project, &alert.job.project)
            && eq(&self.location, &alert.job.location)
            && eq(&self.code, &alert.diagnosis.code)
            && self.job.as_deref().is_none_or(|g| glob(g, &alert.job.id))
    }
}

/// `*` any run of characters, `?` any one; everything else literal.
pub fn glob(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    // Iterative matching with one backtrack point for the last `*`.
    let (mut pi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// The routes, with what each last sent per incident (for `repeat_interval`).
pub struct Router {
    routes: Vec<RouteConfig>,
    receivers: Vec<String>,
    last_sent: HashMap<(usize, String), DateTime<Utc>>,
}

impl Router {
    /// A router over `receivers` (all names, in config order) and `routes`.
    pub fn new(receivers: Vec<String>, routes: Vec<RouteConfig>) -> Router {
        Router {
            routes,
            receivers,
            last_sent: HashMap::new(),
        }
    }

    /// The names of the receivers `alert` goes to, each once, in config order.
    pub fn route(&mut self, alert: &Alert) -> Vec<String> {
        if self.routes.is_empty() {
            return self.receivers.clone();
        }
        let mut chosen: Vec<&str> = Vec::new();
        let mut matched = false;
        for (n, route) in self.routes.iter().enumerate() {
            if !route.matcher.matches(alert) {
                continue;
            }
            matched = true;
            let key = (n, alert.incident_id.clone());
            let send = match alert.event {
                EventKind::Resolved => {
                    self.last_sent.remove(&key);
                    route.send_resolved
                }
                EventKind::Repeat => match (route.repeat_interval, self.last_sent.get(&key)) {
                    (Some(every), Some(last)) => {
                        alert.failure.last_at >= crate::incidents::later_by(*last, every)
                    }
                    _ => true,
                },
                EventKind::Firing => true,
            };
            if send {
                if alert.event != EventKind::Resolved {
                    self.last_sent.insert(key, alert.failure.last_at);
                }
                chosen.extend(route.receivers.iter().map(String::as_str));
            }
            if !route.continue_matching {
                break;
            }
        }
        if !matched {
            return self.receivers.clone();
        }
        self.receivers
            .iter()
            .filter(|r| chosen.contains(&r.as_str()))
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert(event: &str, project: &str, job: &str, code: &str, last_at: &str) -> Alert {
        serde_json::from_value(serde_json::json!({
            "schema": "schedwatch.alert.v1", "event": event, "incident_id": format!("id-{job}"),
            "job": {"name": format!("projects/{project}/locations/us-east1/jobs/{job}"), "project": project, "location": "us-east1", "id": job},
            "failure": {"class": "unauthenticated", "status": "UNAUTHENTICATED", "http_status": 401, "count": 1, "first_at": "2026-11-20T09:00:00Z", "last_at": last_at},
            "target": {"url": "https://x", "kind": "google_api"},
            "auth": {"source": "inventory", "token": "oidc", "service_account": null, "audience": null, "scope": null},
            "diagnosis": {"code": code, "confidence": "confirmed", "summary": "s", "detail": "d"},
            "fix": {"gcloud": "g", "terraform": "t"},
            "runbook_url": "docs/runbook.md#x"
        }))
        .unwrap()
    }

    fn routes(toml_text: &str) -> Vec<RouteConfig> {
        #[derive(Deserialize)]
        struct R {
            routes: Vec<RouteConfig>,
        }
        toml::from_str::<R>(toml_text).unwrap().routes
    }

    #[test]
    fn globs() {
        assert!(glob("nightly-*", "nightly-etl"));
        assert!(glob("*-worker", "commit-worker"));
        assert!(glob("a?c*", "abcdef"));
        assert!(!glob("nightly-*", "hourly-etl"));
        assert!(glob("*", ""));
        assert!(!glob("a*b", "acbc"));
    }

    #[test]
    fn first_match_wins_unless_it_continues_and_no_match_goes_everywhere() {
        let all = vec!["slack".to_owned(), "pager".to_owned(), "mail".to_owned()];
        let mut r = Router::new(
            all.clone(),
            routes(
                r#"
[[routes]]
receivers = ["pager"]
match = { project = "acme-prod", code = "oidc-token-for-google-api" }
continue = true
[[routes]]
receivers = ["slack"]
match = { job = "nightly-*" }
[[routes]]
receivers = ["mail"]
match = { project = "acme-prod" }
"#,
            ),
        );
        let t = "2026-11-20T09:00:00Z";
        assert_eq!(
            r.route(&alert(
                "firing",
                "acme-prod",
                "commit-worker",
                "oidc-token-for-google-api",
                t
            )),
            ["pager", "mail"]
        );
        assert_eq!(
            r.route(&alert(
                "firing",
                "acme-prod",
                "nightly-etl",
                "missing-auth-token",
                t
            )),
            ["slack"]
        );
        assert_eq!(
            r.route(&alert("firing", "acme-dev", "x", "missing-auth-token", t)),
            all
        );
    }

    #[test]
    fn repeats_are_held_back_per_route_and_resolved_can_be_left_out() {
        let mut r = Router::new(
            vec!["pager".to_owned()],
            routes("[[routes]]\nreceivers = [\"pager\"]\nrepeat_interval = \"12h\"\nsend_resolved = false\n"),
        );
        assert_eq!(
            r.route(&alert("firing", "p", "j", "c", "2026-11-20T09:00:00Z"))
                .len(),
            1
        );
        assert!(
            r.route(&alert("repeat", "p", "j", "c", "2026-11-20T13:00:00Z"))
                .is_empty(),
            "4 h < 12 h"
        );
        assert_eq!(
            r.route(&alert("repeat", "p", "j", "c", "2026-11-20T21:00:00Z"))
                .len(),
            1
        );
        assert!(r
            .route(&alert("resolved", "p", "j", "c", "2026-11-20T21:00:00Z"))
            .is_empty());
    }
}
