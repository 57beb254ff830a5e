//! The job inventory: Job JSON files indexed by `(project, location, job_id)`.
//!
//! `--jobs PATH` is a file or a folder of `*.json` files, each one Job (`gcloud scheduler jobs
//! describe --format=json`), an array of Jobs (`jobs list --format=json`), or a REST list
//! response `{"jobs": [...], "nextPageToken": …}`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::job::JobConfig;
use crate::JobKey;

/// Why the inventory could not be read. Each names the file and what to change.
#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    /// The path cannot be read.
    #[error("cannot read the job inventory {path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A file is not JSON.
    #[error("{path} is not JSON ({source}); export jobs with `gcloud scheduler jobs list --location=LOCATION --format=json`")]
    Json {
        /// The file.
        path: PathBuf,
        /// The parse error.
        source: serde_json::Error,
    },
}

/// The jobs of one document, as JSON texts borrowed from it: a Job, an array of Jobs, or
/// `{"jobs": [...]}`. Nothing but the document and these slices is held.
fn job_texts(text: &str) -> Result<Vec<&serde_json::value::RawValue>, serde_json::Error> {
    /// A list response, or a Job (it has a `name`); other fields are skipped unparsed.
    #[derive(serde::Deserialize)]
    struct Probe<'a> {
        #[serde(borrow)]
        jobs: Option<Vec<&'a serde_json::value::RawValue>>,
        name: Option<serde::de::IgnoredAny>,
    }
    let doc: &serde_json::value::RawValue = serde_json::from_str(text)?;
    match doc.get().as_bytes().first() {
        Some(b'[') => serde_json::from_str(doc.get()),
        Some(b'{') => {
            let probe: Probe = serde_json::from_str(doc.get())?;
            Ok(match (probe.jobs, probe.name) {
                (Some(jobs), _) => jobs,
                (None, Some(_)) => vec![doc],
                // Neither a list nor a Job (e.g. an empty list response `{}`).
                (None, None) => Vec::new(),
            })
        }
        // A string or a number: "left out" with the Job parser's reason.
        _ => Ok(vec![doc]),
    }
}

/// Jobs by key.
#[derive(Debug, Default, Clone)]
pub struct Inventory {
    jobs: rustc_hash::FxHashMap<JobKey, Arc<JobConfig>>,
}

impl Inventory {
    /// Loads a file or a folder of `*.json` files (sorted by name; a later file's job replaces
    /// an earlier one of the same name). Entries that are not Jobs are warned about and left out.
    pub fn load(path: &Path) -> Result<Inventory, InventoryError> {
        let io = |source| InventoryError::Io {
            path: path.to_owned(),
            source,
        };
        let files = if path.is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(path)
                .map_err(io)?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "json") && p.is_file())
                .collect();
            files.sort();
            files
        } else {
            std::fs::metadata(path).map_err(io)?;
            vec![path.to_owned()]
        };
        let mut inventory = Inventory::default();
        for file in files {
            let text = std::fs::read(&file).map_err(|source| InventoryError::Io {
                path: file.clone(),
                source,
            })?;
            let json = |source| InventoryError::Json {
                path: file.clone(),
                source,
            };
            let text = std::str::from_utf8(&text).map_err(|e| json(serde::de::Error::custom(e)))?;
            let jobs = job_texts(text).map_err(json)?;
            for job in jobs {
                inventory.add_json(job.get(), &file.display().to_string());
            }
        }
        Ok(inventory)
    }

    /// Adds one Job from its JSON text; one that is not a Job is warned about and left out.
    fn add_json(&mut self, text: &str, origin: &str) {
        match JobConfig::from_json(text) {
            Ok(job) => {
                self.jobs.insert(job.key.clone(), Arc::new(job));
            }
            Err(e) => tracing::warn!(file = origin, "left out of the job inventory: {e}"),
        }
    }

    /// Adds the jobs of one document: a Job, an array of Jobs, or `{"jobs": [...]}`.
    pub fn add_document(&mut self, doc: serde_json::Value, origin: &str) {
        let jobs = match doc {
            serde_json::Value::Array(jobs) => jobs,
            serde_json::Value::Object(mut o)
                if o.contains_key("jobs") || !o.contains_key("name") =>
            {
                match o.remove("jobs") {
                    Some(serde_json::Value::Array(jobs)) => jobs,
                    _ => Vec::new(),
                }
            }
            one => vec![one],
        };
        for job in jobs {
            match JobConfig::from_value(job) {
                Ok(job) => {
                    self.jobs.insert(job.key.clone(), Arc::new(job));
                }
                Err(e) => tracing::warn!(file = origin, "left out of the job inventory: {e}"),
            }
        }
    }

    /// The job's config.
    pub fn get(&self, key: &JobKey) -> Option<Arc<JobConfig>> {
        self.jobs.get(key).cloned()
    }

    /// Every job, sorted by key.
    pub fn sorted(&self) -> Vec<Arc<JobConfig>> {
        let mut jobs: Vec<_> = self.jobs.values().cloned().collect();
        jobs.sort_by(|a, b| a.key.cmp(&b.key));
        jobs
    }

    /// How many jobs.
    pub fn len(&self) -> usize {
        self.jobs.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.jobs.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_one_job_an_array_and_a_list_response() {
        let dir = tempfile::tempdir().unwrap();
        let job = |id: &str| serde_json::json!({"name": format!("projects/acme-prod/locations/us-east1/jobs/{id}"), "httpTarget": {"uri": "https://x.a.run.app"}});
        std::fs::write(dir.path().join("a.json"), job("one").to_string()).unwrap();
        std::fs::write(
            dir.path().join("b.json"),
            serde_json::json!([job("two"), job("three")]).to_string(),
        )
        .unwrap();
        std::fs::write(
            dir.path().join("c.json"),
            serde_json::json!({"jobs": [job("four")], "nextPageToken": "x"}).to_string(),
        )
        .unwrap();
        std::fs::write(dir.path().join("d.json"), "[]").unwrap();
        std::fs::write(dir.path().join("notes.txt"), "not json, not read").unwrap();
        let inv = Inventory::load(dir.path()).unwrap();
        assert_eq!(inv.len(), 4);
        assert!(inv
            .get(&JobKey::new("acme-prod", "us-east1", "four").unwrap())
            .is_some());
        let list = Inventory::load(Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../shared/fixtures/jobs/list_response.json"
        )))
        .unwrap();
        assert!(list
            .get(&JobKey::new("acme-data-prod", "europe-west1", "nightly-etl-trigger").unwrap())
            .is_some());
    }

    #[test]
    fn a_job_whose_name_breaks_the_grammar_is_left_out() {
        let mut inv = Inventory::default();
        let job = |name: &str| serde_json::json!({"name": name, "httpTarget": {"uri": "https://x.a.run.app"}});
        inv.add_document(
            serde_json::json!([
                job("projects/acme-prod/locations/us-east1/jobs/fine"),
                job("projects/acme-prod/locations/../jobs/x"),
                job("projects/acme-prod/locations/us-east1/jobs/x\n# forged"),
                job("projects/acme-prod/locations/us-east1/jobs/a/../b"),
                job("projects/p/locations/us-east1/jobs/x"),
                job(&format!(
                    "projects/acme-prod/locations/us-east1/jobs/{}",
                    "j".repeat(501)
                )),
            ]),
            "test",
        );
        assert_eq!(inv.len(), 1);
        let err = JobConfig::from_value(job(&format!(
            "projects/acme-prod/locations/us-east1/jobs/x\u{1b}]{}",
            "j".repeat(10_000)
        )))
        .unwrap_err()
        .to_string();
        assert!(err.contains("job id") && err.len() < 600, "{err}");
        assert!(!err.contains('\u{1b}'), "{err}");
    }

    #[test]
    fn a_file_that_is_not_json_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("bad.json"), "{").unwrap();
        let err = Inventory::load(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("bad.json") && err.contains("not JSON"),
            "{err}"
        );
        assert!(Inventory::load(&dir.path().join("missing")).is_err());
    }
}
