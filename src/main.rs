//! The doorway: parse arguments, set up logging, run the command, map errors to exit codes
//! (0 success, 1 findings or a runtime failure, 2 usage or config errors).

use std::process::ExitCode;

use clap::Parser;
use schedwatch::app::{self, UsageError};
use schedwatch::cli::{Cli, Command};
use schedwatch::config::ConfigError;

fn main() -> ExitCode {
    if closed_stdout::at_start() {
        schedwatch_sinks::stdout::stdout_was_closed();
    }
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

/// Whether fd 1 was closed when the process started (`schedwatch replay … >&-`). Rust's runtime
/// opens /dev/null in its place before `main` runs, so `main` cannot tell any more: a
/// constructor, which the loader runs before the runtime starts, looks first.
#[cfg(unix)]
mod closed_stdout {
    use std::sync::atomic::{AtomicBool, Ordering};

    static CLOSED: AtomicBool = AtomicBool::new(false);

    extern "C" fn look() {
        // SAFETY: fcntl(F_GETFD) only reads the descriptor's flags; on a closed one it fails
        // with EBADF.
        if unsafe { libc::fcntl(libc::STDOUT_FILENO, libc::F_GETFD) } == -1 {
            CLOSED.store(true, Ordering::Relaxed);
        }
    }

    /// Run by the loader before anything else: ELF's `.init_array`, Mach-O's `__mod_init_func`.
    #[used]
    #[cfg_attr(
        any(
            target_os = "linux",
            target_os = "android",
            target_os = "freebsd",
            target_os = "netbsd",
            target_os = "openbsd",
            target_os = "dragonfly",
            target_os = "illumos",
            target_os = "solaris"
        ),
        link_section = ".init_array"
    )]
    #[cfg_attr(target_vendor = "apple", link_section = "__DATA,__mod_init_func")]
    static LOOK: extern "C" fn() = look;

    pub fn at_start() -> bool {
        CLOSED.load(Ordering::Relaxed)
    }
}

#[cfg(not(unix))]
mod closed_stdout {
    pub fn at_start() -> bool {
        false
    }
}
