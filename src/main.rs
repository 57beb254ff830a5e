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
    schedwatch::logging::init(cli.log.as_deref().unwrap_or(default_level), cli.log_format);

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
