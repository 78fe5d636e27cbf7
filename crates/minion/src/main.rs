//! `minion -c CONFIG_DIR`: brine's Salt minion.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

/// brine minion: attach to Salt masters with an existing Salt minion config.
#[derive(Debug, Parser)]
#[command(name = "minion", version)]
struct Args {
    /// Configuration directory (reads `minion` and `minion.d/*.conf`).
    #[arg(short = 'c', long = "config-dir", default_value = "/etc/salt")]
    config_dir: PathBuf,
    /// Override the minion id.
    #[arg(long)]
    id: Option<String>,
    /// Log level: all, garbage, trace, debug, profile, info, warning, error, critical, quiet.
    #[arg(short = 'l', long = "log-level")]
    log_level: Option<String>,
    /// Check the configuration and exit.
    #[arg(long)]
    validate: bool,
}

fn usage_error(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("minion: {msg}");
    ExitCode::from(brine_daemon::EXIT_USAGE as u8)
}

fn main() -> ExitCode {
    let args = Args::parse();
    let opts = match brine_daemon::config::load(&args.config_dir, "minion") {
        Ok(o) => o,
        Err(e) => return usage_error(e),
    };
    let cfg = match brine_minion::config::MinionConfig::from_options(
        &opts,
        &args.config_dir,
        args.id.clone(),
        brine_minion::config::resolve_host_id,
    ) {
        Ok(c) => c,
        Err(e) => return usage_error(e),
    };
    let level = args
        .log_level
        .clone()
        .unwrap_or_else(|| cfg.log_level.clone());
    if let Err(e) = brine_daemon::logging::init(&level) {
        return usage_error(e);
    }
    for k in &cfg.unknown_keys {
        tracing::warn!(key = %k, "unknown or unsupported minion option ignored");
    }
    if args.validate {
        eprintln!(
            "minion: configuration OK (id {}, {} master(s))",
            cfg.id,
            cfg.masters.len()
        );
        return ExitCode::SUCCESS;
    }
    let key = match brine_minion::pki::load_or_create(&cfg.pki_dir) {
        Ok(k) => k,
        Err(e) => {
            eprintln!("minion: {e}");
            return ExitCode::from(brine_daemon::EXIT_FAILURE as u8);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("brine-minion")
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("minion: cannot start runtime: {e}");
            return ExitCode::from(brine_daemon::EXIT_FAILURE as u8);
        }
    };
    match rt.block_on(brine_minion::run(cfg, key, brine_daemon::shutdown_signal())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("minion: {e}");
            ExitCode::from(brine_daemon::EXIT_FAILURE as u8)
        }
    }
}
