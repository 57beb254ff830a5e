//! The command line (CONTRACT section 5).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use schedwatch_sinks::Format;

/// Finds Cloud Scheduler jobs that fail authentication, names the cause from the job's config,
/// and alerts with the exact fix.
#[derive(Debug, Parser)]
#[command(name = "schedwatch", version, about, propagate_version = true)]
pub struct Cli {
    /// The command.
    #[command(subcommand)]
    pub command: Command,
    /// Log filter (tracing syntax: `info`, `schedwatch=debug`, …). Default: `info` for run,
    /// `warn` for the others. Logs go to stderr.
    #[arg(long, global = true, env = "SCHEDWATCH_LOG")]
    pub log: Option<String>,
    /// Log format: `json` is Cloud Logging's structured JSON (severity, message, fields);
    /// `auto` is JSON on Cloud Run (`K_SERVICE` set), text elsewhere. Default: the config's
    /// `[log] format`, else `auto`.
    #[arg(long, global = true, value_enum, env = "SCHEDWATCH_LOG_FORMAT")]
    pub log_format: Option<crate::logging::LogFormat>,
}

/// The commands, one per door into the pipeline.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// The main job: the configured source through the whole pipeline to the configured
    /// receivers. A file source (the bundled demo) is read to its end.
    Run(RunArgs),
    /// The same pipeline over log files, start to end, then exit 0.
    Replay(ReplayArgs),
    /// Checks job configs before anything fails; exit 1 when any job has a finding.
    Audit(AuditArgs),
    /// Validates a config file and says what is wrong, with the line: what `run` checks before
    /// it starts — every key, every range, every secret it names (read as `run` will, never
    /// printed; `--no-secrets` skips them), the receivers and the job inventory.
    CheckConfig(CheckConfigArgs),
    /// Sends a sample alert (the commit-worker case) to one receiver, to check its wiring.
    SendTest(SendTestArgs),
}

/// `schedwatch run`.
#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("what").required(true).multiple(true).args(["config", "subscription", "push"]))]
pub struct RunArgs {
    /// The config file.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// The Pub/Sub subscription fed by the log sink, `projects/P/subscriptions/S`; overrides
    /// the config's source. `PUBSUB_EMULATOR_HOST` is honoured.
    #[arg(long, conflicts_with = "push")]
    pub subscription: Option<String>,
    /// Push mode: serve `POST /pubsub/push` for a push subscription instead of pulling
    /// (token checks from `[source.push]`).
    #[arg(long)]
    pub push: bool,
    /// Serve /healthz, /readyz, /metrics (and /pubsub/push) on this address, e.g.
    /// `0.0.0.0:8080`; overrides `[server] listen`. Default: `0.0.0.0:$PORT` when `PORT` is set.
    #[arg(long)]
    pub listen: Option<std::net::SocketAddr>,
    /// A Job JSON file or a folder of them; overrides the config's inventory.
    #[arg(long)]
    pub jobs: Option<PathBuf>,
    /// The folder of the durable state (incidents, dedup keys, outbox); overrides `[state] dir`.
    /// The container image sets `SCHEDWATCH_STATE_DIR=/var/lib/schedwatch`, its volume.
    #[arg(long, env = "SCHEDWATCH_STATE_DIR")]
    pub state: Option<PathBuf>,
    /// Adds a stdout receiver printing alerts in this format.
    #[arg(long, value_enum)]
    pub format: Option<Format>,
}

/// `schedwatch replay`.
#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// A config file (incident rules, inventory, Scheduler API, runbook).
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// A Job JSON file or a folder of them; overrides the config's inventory.
    #[arg(long)]
    pub jobs: Option<PathBuf>,
    /// How to print alerts. Default: the config's receivers, else `json`.
    #[arg(long, value_enum)]
    pub format: Option<Format>,
    /// Log files: NDJSON, a JSON array (`gcloud logging read --format=json`), or Pub/Sub
    /// messages. `-` or none: stdin.
    pub files: Vec<PathBuf>,
}

/// `schedwatch audit`.
#[derive(Debug, Args)]
pub struct AuditArgs {
    /// A config file (inventory, Scheduler API, runbook).
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// A Job JSON file or a folder of them.
    #[arg(long, conflicts_with_all = ["project", "location"])]
    pub jobs: Option<PathBuf>,
    /// Audit every job of this project in `--location`, read from the Cloud Scheduler API.
    #[arg(long, requires = "location")]
    pub project: Option<String>,
    /// The Cloud Scheduler location (region) for `--project`.
    #[arg(long, requires = "project")]
    pub location: Option<String>,
    /// `json`: one line per job; `text`: readable, with fixes.
    #[arg(long, value_enum, default_value = "json")]
    pub format: Format,
}

/// `schedwatch check-config`.
#[derive(Debug, Args)]
pub struct CheckConfigArgs {
    /// The config file.
    pub file: PathBuf,
    /// Do not read the secrets the config names (environment variables, files): for the CI of
    /// a config repository, where they are not. Everything else is checked.
    #[arg(long)]
    pub no_secrets: bool,
}

/// `schedwatch send-test`.
#[derive(Debug, Args)]
pub struct SendTestArgs {
    /// The config file naming the receiver.
    #[arg(long, short)]
    pub config: PathBuf,
    /// The receiver's `name`.
    #[arg(long)]
    pub receiver: String,
}
