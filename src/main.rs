//! The doorway: parse arguments, set up logging, run the command, map errors to exit codes
//! (0 success, 1 findings or a runtime failure, 2 usage or config errors).

use std::process::ExitCode;

use clap::Parser;
use schedwatch::app::{self, UsageError};
use schedwatch::cli::{Cli, Command};
use schedwatch::config::ConfigError;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_level = match cli.command {
        Command::Run(_) => "info",
        _ => "warn",
    };
    let filter =
        tracing_subscriber::EnvFilter::try_new(cli.log.as_deref().unwrap_or(default_level))
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    use std::io::IsTerminal as _;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .init();

    let result = match cli.command {
        Command::Run(args) => app::run(args),
        Command::Replay(args) => app::replay(args),
        Command::Audit(args) => app::audit(args),
        Command::CheckConfig(args) => app::check_config(args),
        Command::SendTest(args) => app::send_test(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("schedwatch: {e:#}");
            if e.is::<UsageError>() || e.is::<ConfigError>() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
