//! `syndic -c CONFIG_DIR`: brine's syndic.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

/// brine syndic: a master to the minions below (`CONFIG_DIR/master`) and a syndic to the
/// masters listed in `syndic_master`, with the identity in `CONFIG_DIR/minion`.
#[derive(Debug, Parser)]
#[command(name = "syndic", version)]
struct Args {
    /// Configuration directory (reads `master`, `master.d/*.conf`, `minion`, `minion.d/*.conf`).
    #[arg(short = 'c', long = "config-dir", default_value = "/etc/salt")]
    config_dir: PathBuf,
    /// Override the syndic's id toward the upper masters.
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
    let cfg = match brine_master_core::config::MasterConfig::load(&args.config_dir) {
        Ok(c) => c,
        Err(e) => return brine_daemon::usage_error("syndic", e),
    };
    if let Err(code) = brine_daemon::start_logging(
        "syndic",
        args.log_level.as_deref(),
        &cfg.log_level,
        &cfg.unknown_keys,
        "master",
    ) {
        return code;
    }
    if cfg.syndic_master.is_empty() {
        return brine_daemon::usage_error(
            "syndic",
            "syndic_master is not set in the master config: nothing to be a syndic of",
        );
    }
    let up = match brine_master_core::upstream::SyndicLinks::from_config_dir(
        &args.config_dir,
        &cfg,
        args.id.clone(),
    ) {
        Ok(Some(u)) => u,
        Ok(None) => unreachable!("syndic_master checked above"),
        Err(e) => return brine_daemon::usage_error("syndic", e),
    };
    if args.validate {
        eprintln!(
            "syndic: configuration OK (id {}, {}:{}/{}, upper masters {:?})",
            up.id(),
            cfg.interface,
            cfg.publish_port,
            cfg.ret_port,
            cfg.syndic_master
        );
        return ExitCode::SUCCESS;
    }
    let rt = match brine_daemon::runtime("syndic") {
        Ok(rt) => rt,
        Err(e) => return brine_daemon::failure("syndic", format!("cannot start runtime: {e}")),
    };
    let _guard = rt.enter();
    let server = match brine_master_core::server::Server::bind(cfg) {
        Ok(s) => s,
        Err(e) => return brine_daemon::failure("syndic", e),
    };
    rt.block_on(brine_master_core::upstream::serve(
        server,
        Some(up),
        brine_daemon::shutdown_signal(),
    ));
    ExitCode::SUCCESS
}
