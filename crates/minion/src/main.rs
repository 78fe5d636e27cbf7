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

fn main() -> ExitCode {
    let args = Args::parse();
    let opts = match brine_daemon::config::load(&args.config_dir, "minion") {
        Ok(o) => o,
        Err(e) => return brine_daemon::usage_error("minion", e),
    };
    let cfg = match brine_minion::config::MinionConfig::from_options(
        &opts,
        &args.config_dir,
        args.id.clone(),
        brine_minion::config::resolve_host_id,
    ) {
        Ok(c) => c,
        Err(e) => return brine_daemon::usage_error("minion", e),
    };
    if let Err(code) = brine_daemon::start_logging(
        "minion",
        args.log_level.as_deref(),
        &cfg.log_level,
        &cfg.unknown_keys,
        "minion",
    ) {
        return code;
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
        Err(e) => return brine_daemon::failure("minion", e),
    };
    let rt = match brine_daemon::runtime("minion") {
        Ok(rt) => rt,
        Err(e) => return brine_daemon::failure("minion", format!("cannot start runtime: {e}")),
    };
    match rt.block_on(brine_minion::run(cfg, key, brine_daemon::shutdown_signal())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => brine_daemon::failure("minion", e),
    }
}
