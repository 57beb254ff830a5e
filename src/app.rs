//! Wiring: build the stages from the config and the command line, and run each command.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use schedwatch_sinks::{Alert, NdjsonSink};

use crate::cli::{AuditArgs, CheckConfigArgs, ReplayArgs, RunArgs};
use crate::config::{Config, Format, Loaded};
use crate::correlate::{AuthSource, Correlator, Inventory, SchedulerApi, SchedulerApiConfig};
use crate::diagnose::Diagnoser;
use crate::pipeline::Pipeline;
use crate::source::file::{self, FileError};

/// An error the user fixes by changing a flag, a path or the config: exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

fn usage(e: impl std::fmt::Display) -> anyhow::Error {
    UsageError(e.to_string()).into()
}

/// `schedwatch check-config FILE`.
pub fn check_config(args: CheckConfigArgs) -> anyhow::Result<ExitCode> {
    let loaded = Loaded::from_file(&args.file).map_err(usage)?;
    let c = &loaded.config;
    println!(
        "{}: ok (source: {}; inventory: {}; Scheduler API: {}; {} receiver(s))",
        args.file.display(),
        match (&c.source.path, &c.source.subscription) {
            (Some(p), _) => p.get_ref().display().to_string(),
            (None, Some(s)) => s.get_ref().clone(),
            (None, None) => "none".into(),
        },
        c.jobs
            .inventory
            .as_ref()
            .map_or("none".into(), |p| p.get_ref().display().to_string()),
        if c.scheduler_api.enabled {
            "enabled"
        } else {
            "disabled"
        },
        c.receivers.len()
    );
    Ok(ExitCode::SUCCESS)
}

/// `schedwatch replay`.
pub fn replay(args: ReplayArgs) -> anyhow::Result<ExitCode> {
    let loaded = args
        .config
        .as_deref()
        .map(Loaded::from_file)
        .transpose()
        .map_err(usage)?;
    let formats = match (args.format, &loaded) {
        (Some(f), _) => vec![f],
        (None, Some(l)) if !l.config.receivers.is_empty() => receiver_formats(&l.config),
        (None, _) => vec![Format::Json],
    };
    let files = if args.files.is_empty() {
        vec![PathBuf::from("-")]
    } else {
        args.files
    };
    let runtime = Runtime::new();
    let config = loaded
        .as_ref()
        .map(|l| l.config.clone())
        .unwrap_or_default();
    let inventory = args.jobs.clone().or_else(|| {
        loaded.as_ref().and_then(|l| {
            l.config
                .jobs
                .inventory
                .as_ref()
                .map(|p| l.resolve(p.get_ref()))
        })
    });
    let mut pipeline = build_pipeline(&config, inventory.as_deref(), &runtime)?;
    feed(&files, &mut pipeline, &formats)?;
    eprintln!("schedwatch replay: {}", pipeline.stats.summary());
    Ok(ExitCode::SUCCESS)
}

/// `schedwatch run`: a file source is read to its end; a subscription is consumed until
/// SIGTERM or SIGINT.
pub fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let loaded = args
        .config
        .as_deref()
        .map(Loaded::from_file)
        .transpose()
        .map_err(usage)?;
    let mut config = loaded
        .as_ref()
        .map(|l| l.config.clone())
        .unwrap_or_default();
    let resolve = |p: &Path| loaded.as_ref().map_or(p.to_owned(), |l| l.resolve(p));
    if let Some(sub) = &args.subscription {
        if !crate::config::is_subscription_name(sub) {
            return Err(usage(format!(
                "--subscription {sub:?} is not projects/PROJECT/subscriptions/SUBSCRIPTION"
            )));
        }
        config.source.path = None;
        config.source.subscription = Some(toml::Spanned::new(0..0, sub.clone()));
    }
    let inventory = args
        .jobs
        .clone()
        .or_else(|| config.jobs.inventory.as_ref().map(|p| resolve(p.get_ref())));
    let mut formats = receiver_formats(&config);
    formats.extend(args.format);
    if formats.is_empty() {
        tracing::warn!(
            "no receivers configured: alerts are only counted; add [[receivers]] or --format json"
        );
    }
    let runtime = std::sync::Arc::new(Runtime::new());

    if let Some(path) = config.source.path.as_ref().map(|p| resolve(p.get_ref())) {
        let mut pipeline = build_pipeline(&config, inventory.as_deref(), &runtime)?;
        tracing::info!(source = %path.display(), "reading the file source");
        feed(&[path], &mut pipeline, &formats)?;
        eprintln!(
            "schedwatch run: {}; {} incidents still open",
            pipeline.stats.summary(),
            pipeline.incidents().open_count()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let Some(source) = config.source.pubsub() else {
        return Err(usage("run needs a source: --subscription projects/P/subscriptions/S, or [source] subscription or path in the config"));
    };
    let state_dir = args
        .state
        .clone()
        .unwrap_or_else(|| resolve(&config.state.dir));
    let store =
        crate::store::EmbeddedStore::open(&state_dir, config.dedup.capacity).map_err(usage)?;
    let pipeline = build_pipeline(&config, inventory.as_deref(), &runtime)?;
    let rebuild = {
        let (config, inventory, runtime) = (config.clone(), inventory.clone(), runtime.clone());
        Box::new(move || build_pipeline(&config, inventory.as_deref(), &runtime))
    };
    let mut stdout = NdjsonSink::new(io::stdout());
    let emit: crate::service::Emit =
        Box::new(move |alert: &Alert| print_alert(&mut stdout, &formats, alert));
    let mut state = config.state.clone();
    state.dir = state_dir;
    crate::service::run(pipeline, store, source, state, emit, rebuild)?;
    Ok(ExitCode::SUCCESS)
}

/// `schedwatch audit`: rules 2–5 on every job; exit 1 when any job has a finding.
pub fn audit(args: AuditArgs) -> anyhow::Result<ExitCode> {
    let loaded = args
        .config
        .as_deref()
        .map(Loaded::from_file)
        .transpose()
        .map_err(usage)?;
    let config = loaded
        .as_ref()
        .map(|l| l.config.clone())
        .unwrap_or_default();
    let diagnoser = Diagnoser::new(&config.runbook.base_url);
    let (jobs, source) = match (&args.project, &args.location) {
        (Some(project), Some(location)) => {
            let runtime = Runtime::new();
            let api_config = SchedulerApiConfig {
                enabled: true,
                ..config.scheduler_api.clone()
            };
            // An API that refuses or cannot be reached is a set-up problem the user fixes
            // (credentials, roles/cloudscheduler.viewer, the endpoint): exit 2, not 1, which
            // means "findings".
            let mut api = SchedulerApi::connect(&api_config, runtime.handle()).map_err(usage)?;
            let jobs = api.list(project, location).map_err(|e| {
                usage(format!(
                    "cannot list jobs of projects/{project}/locations/{location}: {e}; schedwatch needs roles/cloudscheduler.viewer there"
                ))
            })?;
            (
                jobs.into_iter()
                    .map(std::sync::Arc::new)
                    .collect::<Vec<_>>(),
                AuthSource::SchedulerApi,
            )
        }
        _ => {
            let path = match (&args.jobs, &loaded) {
                (Some(p), _) => p.clone(),
                (None, Some(l)) => match &l.config.jobs.inventory {
                    Some(p) => l.resolve(p.get_ref()),
                    None => return Err(usage("audit needs --jobs PATH, --project P --location L, or [jobs] inventory in the config")),
                },
                (None, None) => return Err(usage("audit needs --jobs PATH or --project P --location L")),
            };
            (
                Inventory::load(&path).map_err(usage)?.sorted(),
                AuthSource::Inventory,
            )
        }
    };
    let mut any = false;
    let mut out = io::stdout().lock();
    for job in &jobs {
        let findings = diagnoser.audit(job, source);
        any |= !findings.is_empty();
        let key = &job.key;
        match args.format {
            Format::Json => {
                let line = serde_json::json!({
                    "job": {"name": key.name(), "project": key.project, "location": key.location, "id": key.job_id},
                    "findings": findings.iter().map(|d| serde_json::json!({
                        "code": d.code.as_str(),
                        "confidence": d.confidence(),
                        "summary": d.summary,
                        "fix": {"gcloud": d.fix.gcloud, "terraform": d.fix.terraform},
                        "runbook_url": diagnoser.runbook_url(d.code),
                    })).collect::<Vec<_>>(),
                });
                writeln!(out, "{line}")?;
            }
            Format::Text => {
                if findings.is_empty() {
                    writeln!(out, "ok       {key}")?;
                }
                for d in &findings {
                    writeln!(
                        out,
                        "FINDING  {key}  {} ({})\n  {}",
                        d.code.as_str(),
                        d.confidence(),
                        d.summary
                    )?;
                    for line in d.fix.gcloud.lines() {
                        writeln!(out, "    {line}")?;
                    }
                    writeln!(out, "  runbook {}", diagnoser.runbook_url(d.code))?;
                }
            }
        }
    }
    out.flush()?;
    let with = jobs
        .iter()
        .filter(|j| !diagnoser.audit(j, source).is_empty())
        .count();
    eprintln!(
        "schedwatch audit: {} jobs, {with} with findings",
        jobs.len()
    );
    Ok(if any {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn receiver_formats(config: &Config) -> Vec<Format> {
    config
        .receivers
        .iter()
        .filter_map(|r| r.stdout.as_ref().map(|s| s.format))
        .collect()
}

/// Feeds files through the pipeline, printing alerts as they are made.
fn feed(files: &[PathBuf], pipeline: &mut Pipeline, formats: &[Format]) -> anyhow::Result<()> {
    let stdout = io::stdout();
    let mut sink = NdjsonSink::new(stdout.lock());
    let mut emit = |alerts: &[Alert]| -> io::Result<()> {
        for alert in alerts {
            print_alert(&mut sink, formats, alert)?;
        }
        Ok(())
    };
    for path in files {
        file::replay(path, pipeline, &mut emit).map_err(|e| match e {
            FileError::Io { .. } => usage(e),
            FileError::Output(_) => e.into(),
        })?;
    }
    Ok(())
}

/// Builds the pipeline from the config and the inventory at `inventory`, if any.
fn build_pipeline(
    config: &Config,
    inventory: Option<&Path>,
    runtime: &Runtime,
) -> anyhow::Result<Pipeline> {
    let inventory = match inventory {
        Some(p) => {
            let inv = Inventory::load(p).map_err(usage)?;
            tracing::info!(path = %p.display(), jobs = inv.len(), "job inventory loaded");
            Some(inv)
        }
        None => None,
    };
    let api = if config.scheduler_api.enabled {
        Some(
            SchedulerApi::connect(&config.scheduler_api, runtime.handle())
                .map_err(|e| anyhow::anyhow!("{e}"))?,
        )
    } else {
        None
    };
    Ok(Pipeline::new(
        config.incidents.clone(),
        config.dedup.capacity,
        Correlator::new(inventory, api),
        Diagnoser::new(&config.runbook.base_url),
    ))
}

/// The async runtime for the Google clients, made on first use: a replay from inventory files
/// needs none.
struct Runtime(std::sync::OnceLock<tokio::runtime::Runtime>);

impl Runtime {
    fn new() -> Self {
        Runtime(std::sync::OnceLock::new())
    }

    fn handle(&self) -> tokio::runtime::Handle {
        self.0
            .get_or_init(|| {
                tokio::runtime::Builder::new_multi_thread()
                    // One worker: the clients only wait on the network.
                    .worker_threads(1)
                    .enable_all()
                    .build()
                    .expect("the runtime starts")
            })
            .handle()
            .clone()
    }
}

/// Prints one alert on the stdout receiver in each of `formats`: an NDJSON line, or the
/// readable text view.
fn print_alert<W: Write>(
    sink: &mut NdjsonSink<W>,
    formats: &[Format],
    alert: &Alert,
) -> io::Result<()> {
    for format in formats {
        match format {
            Format::Json => sink.send(alert)?,
            Format::Text => {
                let w = sink.writer();
                writeln!(w, "{}", crate::notify::render_text(alert))?;
                w.flush()?;
            }
        }
    }
    Ok(())
}
