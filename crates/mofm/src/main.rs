//! `mofm -c CONFIG_DIR`: brine's master.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

/// brine master: serve Salt minions with an existing Salt master config and pki directory.
#[derive(Debug, Parser)]
#[command(name = "mofm", version)]
struct Args {
    /// Configuration directory (reads `master` and `master.d/*.conf`).
    #[arg(short = 'c', long = "config-dir", default_value = "/etc/salt")]
    config_dir: PathBuf,
    /// Log level: all, garbage, trace, debug, profile, info, warning, error, critical, quiet.
    #[arg(short = 'l', long = "log-level")]
    log_level: Option<String>,
    /// Check the configuration and exit.
    #[arg(long)]
    validate: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let cfg = match brine_mofm::config::MasterConfig::load(&args.config_dir) {
        Ok(c) => c,
        Err(e) => return brine_daemon::usage_error("mofm", e),
    };
    if let Err(code) = brine_daemon::start_logging(
        "mofm",
        args.log_level.as_deref(),
        &cfg.log_level,
        &cfg.unknown_keys,
        "master",
    ) {
        return code;
    }
    if cfg.auto_accept {
        tracing::warn!("auto_accept is on: every minion key is trusted on first contact");
    }
    if cfg.open_mode {
        tracing::warn!("open_mode is on: any key is accepted for any minion id");
    }
    let up = match brine_master_core::upstream::SyndicLinks::from_config_dir(
        &args.config_dir,
        &cfg,
        None,
    ) {
        Ok(u) => u,
        Err(e) => return brine_daemon::usage_error("mofm", e),
    };
    // What `Mofm::bind` would refuse, refused here too, so `--validate` says so (exit 64).
    if let Err(e) =
        brine_mofm::eauth::Eauth::from_config(&cfg.external_auth, cfg.sharedsecret.as_deref())
    {
        return brine_daemon::usage_error("mofm", e);
    }
    for (what, path, dir) in [
        ("rest_cherrypy: app", cfg.api_app.as_ref(), false),
        ("rest_cherrypy: static", cfg.api_static.as_ref(), true),
    ] {
        if let Some(p) = path
            && !(if dir { p.is_dir() } else { p.is_file() })
        {
            return brine_daemon::usage_error(
                "mofm",
                format!(
                    "{what}: {} is not a {}",
                    p.display(),
                    if dir { "directory" } else { "file" }
                ),
            );
        }
    }
    if args.validate {
        eprintln!(
            "mofm: configuration OK ({}:{}/{})",
            cfg.interface, cfg.publish_port, cfg.ret_port
        );
        return ExitCode::SUCCESS;
    }
    let rt = match brine_daemon::runtime("mofm") {
        Ok(rt) => rt,
        Err(e) => return brine_daemon::failure("mofm", format!("cannot start runtime: {e}")),
    };
    let _guard = rt.enter();
    let mofm = match rt.block_on(brine_mofm::Mofm::bind(cfg)) {
        Ok(m) => m,
        Err(e) => return brine_daemon::failure("mofm", e),
    };
    rt.block_on(mofm.run_with(up, brine_daemon::shutdown_signal()));
    ExitCode::SUCCESS
}
