//! Shared daemon plumbing: Salt-style configuration files, logging and signals.
//!
//! Owns: reading `CONFIG_DIR/<name>` plus `CONFIG_DIR/<name>.d/*.conf` (Salt's YAML, later files
//! override earlier keys), typed access helpers that turn bad values into clear errors, tracing
//! setup from Salt's log levels, and the shutdown signal. Does not own any protocol or daemon
//! logic.

#![forbid(unsafe_code)]
#![warn(missing_docs, clippy::print_stdout, clippy::dbg_macro)]

pub mod config;
pub mod logging;

/// Exit code for bad configuration or usage (`EX_USAGE`).
pub const EXIT_USAGE: i32 = 64;
/// Exit code for a runtime failure.
pub const EXIT_FAILURE: i32 = 1;

/// Print `PROG: msg` and return the exit code for bad configuration or usage (64).
pub fn usage_error(prog: &str, msg: impl std::fmt::Display) -> std::process::ExitCode {
    eprintln!("{prog}: {msg}");
    std::process::ExitCode::from(EXIT_USAGE as u8)
}

/// Print `PROG: msg` and return the exit code for a runtime failure (1).
pub fn failure(prog: &str, msg: impl std::fmt::Display) -> std::process::ExitCode {
    eprintln!("{prog}: {msg}");
    std::process::ExitCode::from(EXIT_FAILURE as u8)
}

/// Start logging at `cli_level` (`-l`) or else the config's `log_level`, then warn about each
/// option of the `what` file that is unknown or unsupported.
///
/// # Errors
/// The usage exit code (64), after printing why, for a bad level.
pub fn start_logging(
    prog: &str,
    cli_level: Option<&str>,
    cfg_level: &str,
    unknown: &[String],
    what: &str,
) -> Result<(), std::process::ExitCode> {
    logging::init(cli_level.unwrap_or(cfg_level)).map_err(|e| usage_error(prog, e))?;
    for k in unknown {
        tracing::warn!(key = %k, "unknown or unsupported {what} option ignored");
    }
    Ok(())
}

/// The daemons' tokio runtime: two worker threads named `brine-PROG`.
///
/// # Errors
/// The OS error if the threads cannot be started.
pub fn runtime(prog: &str) -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(format!("brine-{prog}"))
        .enable_all()
        .build()
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers the daemon can still be stopped by SIGKILL; never resolve.
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
