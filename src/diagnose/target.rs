//! What a job calls: the kind of target and what its URL names (Cloud Run job or service,
//! function), for rules and for fixes that must name the resource to grant on.

use url::Url;

/// The alert's `target.kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TargetKind {
    /// A host equal to or under `googleapis.com`.
    GoogleApi,
    /// `*.run.app`.
    CloudRun,
    /// `*.cloudfunctions.net`.
    CloudFunctions,
    /// Anything else.
    Other,
}

impl TargetKind {
    /// Classifies a URL by its host.
    pub fn of(url: &str) -> TargetKind {
        let host = host(url);
        if host == "googleapis.com" || host.ends_with(".googleapis.com") {
            TargetKind::GoogleApi
        } else if host.ends_with(".run.app") {
            TargetKind::CloudRun
        } else if host.ends_with(".cloudfunctions.net") {
            TargetKind::CloudFunctions
        } else {
            TargetKind::Other
        }
    }

    /// The contract's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            TargetKind::GoogleApi => "google_api",
            TargetKind::CloudRun => "cloud_run",
            TargetKind::CloudFunctions => "cloud_functions",
            TargetKind::Other => "other",
        }
    }

    /// Whether the target takes OAuth access tokens (Google APIs) rather than ID tokens.
    pub fn wants_oauth(self) -> bool {
        self == TargetKind::GoogleApi
    }
}

/// The URL's host, lower-case; empty when it has none.
pub fn host(url: &str) -> String {
    Url::parse(url.trim())
        .ok()
        .and_then(|u| u.host_str().map(str::to_ascii_lowercase))
        .unwrap_or_default()
}

/// `(scheme, host, port)` with the scheme's default port filled in, so `https://h` and
/// `https://h:443` are the same origin.
pub fn origin(url: &str) -> Option<(String, String, Option<u16>)> {
    let u = Url::parse(url.trim()).ok()?;
    Some((
        u.scheme().to_owned(),
        u.host_str()?.to_ascii_lowercase(),
        u.port_or_known_default(),
    ))
}

/// `scheme://host[:port]`: the audience a Cloud Run service accepts by default.
pub fn origin_url(url: &str) -> Option<String> {
    let u = Url::parse(url.trim()).ok()?;
    let host = u.host_str()?;
    Some(match u.port() {
        Some(p) => format!("{}://{host}:{p}", u.scheme()),
        None => format!("{}://{host}", u.scheme()),
    })
}

/// The URL without query or fragment: what Cloud Functions expects as an audience.
pub fn without_query(url: &str) -> String {
    match Url::parse(url.trim()) {
        Ok(mut u) => {
            u.set_query(None);
            u.set_fragment(None);
            u.to_string()
        }
        Err(_) => url.to_owned(),
    }
}

/// The resource a target URL invokes, as far as the URL tells.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invoked {
    /// A Cloud Run job run through the Admin API (`…/jobs/NAME:run`, v1 or v2).
    RunJob {
        /// The project (or project number) in the URL.
        project: String,
        /// The region, when the URL names it.
        region: Option<String>,
        /// The Cloud Run job.
        name: String,
    },
    /// A Cloud Run service on `*.run.app`.
    RunService {
        /// The service name as the host shows it.
        name: String,
        /// The region, when the host shows it (deterministic URLs).
        region: Option<String>,
    },
    /// A Cloud Function on `REGION-PROJECT.cloudfunctions.net/NAME`.
    Function {
        /// The region from the host.
        region: Option<String>,
        /// The function.
        name: String,
    },
    /// Something else.
    Unknown,
}

impl Invoked {
    /// Reads a target URL.
    pub fn of(url: &str) -> Invoked {
        let Ok(u) = Url::parse(url.trim()) else {
            return Invoked::Unknown;
        };
        let host = u.host_str().unwrap_or_default().to_ascii_lowercase();
        let segments: Vec<&str> = u
            .path_segments()
            .map(|s| s.filter(|s| !s.is_empty()).collect())
            .unwrap_or_default();
        let job_name = |s: &str| s.strip_suffix(":run").map(str::to_owned);
        if host.ends_with("run.googleapis.com") {
            // v1: https://REGION-run.googleapis.com/apis/run.googleapis.com/v1/namespaces/NS/jobs/NAME:run
            if let ["apis", _, "v1", "namespaces", ns, "jobs", name] = segments.as_slice() {
                if let Some(name) = job_name(name) {
                    let region = host.strip_suffix("-run.googleapis.com").map(str::to_owned);
                    return Invoked::RunJob {
                        project: (*ns).to_owned(),
                        region,
                        name,
                    };
                }
            }
            // v2: https://run.googleapis.com/v2/projects/P/locations/R/jobs/NAME:run
            if let ["v2", "projects", p, "locations", r, "jobs", name] = segments.as_slice() {
                if let Some(name) = job_name(name) {
                    return Invoked::RunJob {
                        project: (*p).to_owned(),
                        region: Some((*r).to_owned()),
                        name,
                    };
                }
            }
            return Invoked::Unknown;
        }
        if let Some(label) = host.strip_suffix(".a.run.app") {
            // SERVICE-HASH-REGIONCODE.a.run.app: the hash and the short region code are the
            // last two dash-separated parts.
            let parts: Vec<&str> = label.rsplitn(3, '-').collect();
            if parts.len() == 3 {
                return Invoked::RunService {
                    name: parts[2].to_owned(),
                    region: None,
                };
            }
        } else if let Some(rest) = host.strip_suffix(".run.app") {
            // Deterministic URL: SERVICE-PROJECTNUMBER.REGION.run.app
            if let Some((label, region)) = rest.split_once('.') {
                if let Some((name, number)) = label.rsplit_once('-') {
                    if number.chars().all(|c| c.is_ascii_digit()) {
                        return Invoked::RunService {
                            name: name.to_owned(),
                            region: Some(region.to_owned()),
                        };
                    }
                }
            }
        } else if let Some(label) = host.strip_suffix(".cloudfunctions.net") {
            if let Some(name) = segments.first() {
                // REGION-PROJECT: regions have exactly two dashes less one (e.g. europe-west1).
                let region = label
                    .match_indices('-')
                    .nth(1)
                    .map(|(i, _)| label[..i].to_owned());
                return Invoked::Function {
                    region,
                    name: (*name).to_owned(),
                };
            }
        }
        Invoked::Unknown
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_follow_the_host() {
        assert_eq!(
            TargetKind::of("https://us-east1-run.googleapis.com/apis/x"),
            TargetKind::GoogleApi
        );
        assert_eq!(
            TargetKind::of("https://googleapis.com/"),
            TargetKind::GoogleApi
        );
        assert_eq!(
            TargetKind::of("https://notgoogleapis.com/"),
            TargetKind::Other
        );
        assert_eq!(
            TargetKind::of("https://x-abc-ew.a.run.app/t"),
            TargetKind::CloudRun
        );
        assert_eq!(
            TargetKind::of("https://europe-west1-p.cloudfunctions.net/f"),
            TargetKind::CloudFunctions
        );
        assert_eq!(TargetKind::of("not a url"), TargetKind::Other);
    }

    #[test]
    fn origins_fill_in_the_default_port() {
        assert_eq!(
            origin("https://A.example/x"),
            origin("https://a.example:443/y")
        );
        assert_ne!(origin("https://a.example"), origin("http://a.example"));
        assert_eq!(
            origin_url("https://a.example:8443/p?q").as_deref(),
            Some("https://a.example:8443")
        );
    }

    #[test]
    fn reads_what_a_target_invokes() {
        assert_eq!(
            Invoked::of("https://us-east1-run.googleapis.com/apis/run.googleapis.com/v1/namespaces/acme/jobs/commit-worker:run"),
            Invoked::RunJob { project: "acme".into(), region: Some("us-east1".into()), name: "commit-worker".into() }
        );
        assert_eq!(
            Invoked::of(
                "https://run.googleapis.com/v2/projects/p/locations/europe-west1/jobs/roll:run"
            ),
            Invoked::RunJob {
                project: "p".into(),
                region: Some("europe-west1".into()),
                name: "roll".into()
            }
        );
        assert_eq!(
            Invoked::of("https://report-api-4x7qk2m9da-ew.a.run.app/tasks"),
            Invoked::RunService {
                name: "report-api".into(),
                region: None
            }
        );
        assert_eq!(
            Invoked::of("https://report-api-123456789.europe-west1.run.app/"),
            Invoked::RunService {
                name: "report-api".into(),
                region: Some("europe-west1".into())
            }
        );
        assert_eq!(
            Invoked::of("https://europe-west1-acme-data.cloudfunctions.net/rollup"),
            Invoked::Function {
                region: Some("europe-west1".into()),
                name: "rollup".into()
            }
        );
        assert_eq!(Invoked::of("https://hooks.example/x"), Invoked::Unknown);
    }
}
