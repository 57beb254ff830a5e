//! Wiring: build the stages from the config and the command line, and run each command.

use std::io;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use schedwatch_sinks::stdout::{stdout, StdoutReceiver};
use schedwatch_sinks::{Alert, Format, Printer, Sink};
use tokio_util::sync::CancellationToken;

use crate::cli::{CheckConfigArgs, ReplayArgs, RunArgs, SendTestArgs};
use crate::config::start::{build_receivers, Build};
use crate::config::{Config, Loaded};
use crate::correlate::{Correlator, Inventory, SchedulerApi};
use crate::diagnose::Diagnoser;
use crate::notify::receiver::ReceiverKind;
use crate::pipeline::Pipeline;

mod audit;
use crate::source::file::{self, FileError};
use crate::source::SourceKind;
pub use audit::audit;

/// An error the user fixes by changing a flag, a path or the config: exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

fn usage(e: impl std::fmt::Display) -> anyhow::Error {
    UsageError(e.to_string()).into()
}

/// `schedwatch check-config [--no-secrets] FILE`: what `run` checks before it starts, with the
/// same code: the config as every command loads it (keys, ranges, paths, each section's
/// checks), every secret it names read as `run` reads them (unless `--no-secrets`), every
/// receiver built as `run` builds it (URLs, email addresses, recipients; but a file receiver,
/// whose building creates its file) and the job inventory loaded. Each error names its line.
pub fn check_config(args: CheckConfigArgs) -> anyhow::Result<ExitCode> {
    let loaded = Loaded::from_file(&args.file).map_err(usage)?;
    let c = &loaded.config;
    let secrets = if args.no_secrets {
        "secrets not read (--no-secrets)".to_owned()
    } else {
        let read = loaded.check_secrets().map_err(|mut e| {
            e.message.push_str(
                " (check-config reads every secret as run will; --no-secrets skips them)",
            );
            usage(e)
        })?;
        format!("{read} secret(s) read")
    };
    let build = if args.no_secrets {
        Build::WithoutSecrets
    } else {
        Build::WithoutEffects
    };
    build_receivers(Some(&loaded), &c.receivers, build).map_err(usage)?;
    loaded.check_inventory().map_err(usage)?;
    loaded.check_state_store(!args.no_secrets).map_err(usage)?;
    println!(
        "{}: ok (source: {}; inventory: {}; Scheduler API: {}; {} receiver(s); {secrets})",
        args.file.display(),
        c.source.kind().map_or("none".into(), SourceKind::to_string),
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
    let (loaded, config) = load(args.config.as_deref())?;
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
    let inventory = inventory_path(args.jobs.as_deref(), loaded.as_ref(), &config);
    let mut pipeline = build_pipeline(&config, inventory.as_deref(), &runtime)?;
    feed(&files, &mut pipeline, &formats, None)?;
    eprintln!("schedwatch replay: {}", pipeline.stats.summary());
    Ok(ExitCode::SUCCESS)
}

/// `schedwatch run`: a file source is read to its end; a subscription is consumed until
/// SIGTERM or SIGINT.
pub fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let (loaded, mut config) = load(args.config.as_deref())?;
    // Every secret read now, each error on its line: a missing one is a config error (exit 2),
    // not a failed alert at 3 a.m. or a store that cannot connect.
    if let Some(l) = &loaded {
        l.check_secrets().map_err(usage)?;
        l.check_state_store(true).map_err(usage)?;
    }
    let resolve = |p: &Path| resolve(loaded.as_ref(), p);
    source_flags(&args, &mut config.source)?;
    let inventory = inventory_path(args.jobs.as_deref(), loaded.as_ref(), &config);
    let mut formats = receiver_formats(&config);
    formats.extend(args.format);
    // Every receiver, its secrets read now: a missing one is a config error (exit 2).
    for r in &mut config.receivers {
        if let ReceiverKind::File(f) = &mut r.kind {
            f.path = resolve(&f.path);
        }
    }
    let mut receivers =
        build_receivers(loaded.as_ref(), &config.receivers, Build::Run).map_err(usage)?;
    if let Some(format) = args.format {
        receivers.push(std::sync::Arc::new(StdoutReceiver::stdout(
            crate::notify::deliver::CLI_STDOUT,
            vec![format],
        )));
    }
    if receivers.is_empty() {
        tracing::warn!(
            "no receivers configured: alerts are only counted; add [[receivers]] or --format json"
        );
    }
    let runtime = std::sync::Arc::new(Runtime::new());

    let file = match config.source.kind() {
        Some(SourceKind::File(path)) => Some(resolve(path.get_ref())),
        _ => None,
    };
    if let Some(path) = file {
        return run_file(
            &path,
            &config,
            &receivers,
            inventory.as_deref(),
            &formats,
            &runtime,
        );
    }
    let source = match config.source.kind() {
        Some(SourceKind::Pull(sub)) => crate::service::Source::Pull(config.source.pubsub(sub.get_ref())),
        Some(SourceKind::Push(push)) => crate::service::Source::Push(push.get_ref().clone()),
        Some(SourceKind::File(_)) | None => return Err(usage("run needs a source: --subscription projects/P/subscriptions/S, --push, or [source] subscription, path or [source.push] in the config")),
    };
    let push = matches!(source, crate::service::Source::Push(_));
    let listen = crate::http::listen_address(args.listen, &config.server, push).map_err(usage)?;
    let state_dir = args
        .state
        .clone()
        .unwrap_or_else(|| resolve(&config.state.dir));
    let store = match &config.state.postgres {
        Some(pg) => crate::service::Backend::Postgres(pg.clone()),
        None => crate::service::Backend::Embedded(
            crate::store::EmbeddedStore::open(&state_dir, config.dedup.capacity).map_err(usage)?,
        ),
    };
    let pipeline = build_pipeline(&config, inventory.as_deref(), &runtime)?;
    let rebuild: crate::service::Rebuild = {
        let (config, inventory, runtime) = (config.clone(), inventory.clone(), runtime.clone());
        std::sync::Arc::new(move || build_pipeline(&config, inventory.as_deref(), &runtime))
    };
    let mut state = config.state.clone();
    state.dir = state_dir;
    serve(crate::service::Service {
        pipeline,
        store,
        source,
        listen,
        max_connections: config.server.max_connections,
        state,
        receivers,
        routes: config.routes.clone(),
        rebuild,
    })?;
    Ok(ExitCode::SUCCESS)
}

/// `run` on a file source: read to its end. Stdout receivers print as entries are read; the
/// others get each alert (with retries) before the next entry.
fn run_file(
    path: &Path,
    config: &Config,
    receivers: &[std::sync::Arc<dyn Sink>],
    inventory: Option<&Path>,
    formats: &[Format],
    runtime: &Runtime,
) -> anyhow::Result<ExitCode> {
    let mut pipeline = build_pipeline(config, inventory, runtime)?;
    tracing::info!(source = %path.display(), "reading the file source");
    let others: Vec<_> = config
        .receivers
        .iter()
        .zip(receivers)
        .filter(|(r, _)| !matches!(r.kind, ReceiverKind::Stdout(_)))
        .map(|(_, sink)| sink.clone())
        .collect();
    let router = crate::notify::route::Router::new(
        others.iter().map(|s| s.name().to_owned()).collect(),
        config.routes.clone(),
    );
    let mut inline = Inline {
        receivers: others,
        router,
        runtime,
    };
    feed(
        &[path.to_owned()],
        &mut pipeline,
        formats,
        Some(&mut inline),
    )?;
    eprintln!(
        "schedwatch run: {}; {} incidents still open",
        pipeline.stats.summary(),
        pipeline.incidents().open_count()
    );
    Ok(ExitCode::SUCCESS)
}

/// `--subscription` and `--push` replace the config's source; `--push` keeps its
/// `[source.push]` settings, and checks them as the config's check does.
fn source_flags(args: &RunArgs, source: &mut crate::source::SourceConfig) -> anyhow::Result<()> {
    if let Some(sub) = &args.subscription {
        if !crate::source::is_subscription_name(sub) {
            return Err(usage(format!(
                "--subscription {sub:?} is not projects/PROJECT/subscriptions/SUBSCRIPTION"
            )));
        }
        source.set(SourceKind::Pull(toml::Spanned::new(0..0, sub.clone())));
    }
    if args.push {
        let push = match source.kind() {
            Some(SourceKind::Push(push)) => push.clone(),
            _ => toml::Spanned::new(0..0, Default::default()),
        };
        push.get_ref().validate().map_err(usage)?;
        source.set(SourceKind::Push(push));
    }
    Ok(())
}

/// Runs the service until SIGTERM or SIGINT, and its in-flight work `[state]
/// shutdown_timeout` at most after that.
fn serve(service: crate::service::Service) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        // The pull tasks and the HTTP server only move bytes; the processor runs on this
        // thread, in `block_on`.
        .worker_threads(2)
        .enable_all()
        .build()?;
    // First of all, so that a signal during start-up is a clean shutdown too.
    let signals = {
        let _context = runtime.enter();
        crate::shutdown::Signals::register()?
    };
    let shutdown = CancellationToken::new();
    runtime.spawn(signals.cancel_on_signal(shutdown.clone(), service.state.shutdown_timeout));
    let result = runtime.block_on(crate::service::run(service, shutdown));
    runtime.shutdown_timeout(Duration::from_secs(1));
    result
}

/// `schedwatch send-test`: one sample alert to one receiver, one attempt; exit 0 when it was
/// delivered, 1 with the receiver's answer when not, 2 when the receiver is not configured.
pub fn send_test(args: SendTestArgs) -> anyhow::Result<ExitCode> {
    let loaded = Loaded::from_file(&args.config).map_err(usage)?;
    let Some(r) = loaded
        .config
        .receivers
        .iter()
        .find(|r| r.name == args.receiver)
    else {
        let names: Vec<&str> = loaded
            .config
            .receivers
            .iter()
            .map(|r| r.name.as_str())
            .collect();
        return Err(usage(format!(
            "no receiver named {:?} in {} (receivers: {})",
            args.receiver,
            args.config.display(),
            names.join(", ")
        )));
    };
    let sink = r.build().map_err(usage)?;
    let alert = sample_alert(&loaded.config)?;
    let runtime = Runtime::new();
    match runtime.handle().block_on(sink.send(&alert)) {
        Ok(()) => {
            eprintln!(
                "schedwatch send-test: a sample {} alert for {} was delivered to {:?}",
                alert.event.as_str(),
                alert.job.name,
                r.name
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!(
                "schedwatch send-test: receiver {:?} did not take the sample alert: {e}",
                r.name
            );
            Ok(ExitCode::from(1))
        }
    }
}

/// The sample: the bundled demo's commit-worker case (an OIDC token sent to the Cloud Run
/// Admin API) through the real pipeline, so the alert is exactly what the receiver will get.
fn sample_alert(config: &Config) -> anyhow::Result<Alert> {
    const JOB: &str = include_str!("../config/demo/jobs/commit-worker.json");
    const LOGS: &str = include_str!("../config/demo/logs.ndjson");
    let mut inventory = Inventory::default();
    inventory.add_document(serde_json::from_str(JOB)?, "the send-test sample");
    let mut pipeline = Pipeline::new(
        config.incidents.clone(),
        1000,
        Correlator::new(Some(inventory), None),
        Diagnoser::new(&config.runbook.base_url),
    );
    let mut alerts = Vec::new();
    for line in LOGS.lines().filter(|l| l.contains("\"commit-worker\"")) {
        pipeline.process_item(line.as_bytes(), &mut alerts);
        if let Some(alert) = alerts.pop() {
            return Ok(alert);
        }
    }
    Err(anyhow::anyhow!("the sample entries made no alert with these [incidents] rules (min_failures, fire_on_confirmed)"))
}

/// The config file, if one is given, and the config to use (the defaults without one).
fn load(path: Option<&Path>) -> anyhow::Result<(Option<Loaded>, Config)> {
    let loaded = path.map(Loaded::from_file).transpose().map_err(usage)?;
    let config = loaded
        .as_ref()
        .map(|l| l.config.clone())
        .unwrap_or_default();
    crate::logging::configure(&config.log);
    Ok((loaded, config))
}

/// A path from the config: relative to the config file's folder, as it is without a file.
fn resolve(loaded: Option<&Loaded>, p: &Path) -> PathBuf {
    loaded.map_or_else(|| p.to_owned(), |l| l.resolve(p))
}

/// The job inventory: `--jobs`, else the config's `[jobs] inventory`.
fn inventory_path(
    jobs: Option<&Path>,
    loaded: Option<&Loaded>,
    config: &Config,
) -> Option<PathBuf> {
    jobs.map(Path::to_owned).or_else(|| {
        config
            .jobs
            .inventory
            .as_ref()
            .map(|p| resolve(loaded, p.get_ref()))
    })
}

fn receiver_formats(config: &Config) -> Vec<Format> {
    config
        .receivers
        .iter()
        .filter_map(|r| match &r.kind {
            ReceiverKind::Stdout(s) => Some(s.format),
            _ => None,
        })
        .collect()
}

/// Receivers other than stdout that a file source delivers to inline: each alert goes to the
/// ones its routes choose (with retries) before the next entry is read.
struct Inline<'a> {
    receivers: Vec<std::sync::Arc<dyn Sink>>,
    router: crate::notify::route::Router,
    runtime: &'a Runtime,
}

/// Feeds files through the pipeline, printing alerts as they are made (and delivering them to
/// `inline` receivers). Stops at the first alert that cannot be printed (stdout closed, or a
/// pipe whose reader has gone): an error, exit 1, as that alert and the next would be lost.
fn feed(
    files: &[PathBuf],
    pipeline: &mut Pipeline,
    formats: &[Format],
    mut inline: Option<&mut Inline>,
) -> anyhow::Result<()> {
    let mut printer = Printer::new(stdout(), formats.to_vec());
    let printed = std::cell::Cell::new(0u64);
    let mut emit = |alerts: &[Alert]| -> io::Result<()> {
        for alert in alerts {
            printer.print(alert)?;
            if !formats.is_empty() {
                printed.set(printed.get() + 1);
            }
            let Some(inline) = inline.as_deref_mut() else {
                continue;
            };
            let chosen = inline.router.route(alert);
            for receiver in inline
                .receivers
                .iter()
                .filter(|r| chosen.iter().any(|c| c == r.name()))
            {
                // Failed for good is logged by deliver_one; the run goes on.
                let _ = inline
                    .runtime
                    .handle()
                    .block_on(crate::notify::deliver::deliver_one(
                        receiver.as_ref(),
                        alert,
                        |_| {},
                    ));
            }
        }
        Ok(())
    };
    for path in files {
        let fed = file::replay(path, pipeline, &mut emit);
        fed.map_err(|e| match e {
            FileError::Io { .. } => usage(e),
            FileError::Output(e) => anyhow::anyhow!(
                "cannot print alerts to stdout: {e}. Stopped: {} alert(s) were printed before, \
                 none after",
                printed.get()
            ),
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
