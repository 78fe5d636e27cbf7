//! Logging with Salt's level names (`-l/--log-level`: `all`, `garbage`, `trace`, `debug`,
//! `profile`, `info`, `warning`, `error`, `critical`, `quiet`). `BRINE_LOG` (an env filter)
//! overrides.

/// Map a Salt log level to a tracing filter directive.
pub fn filter_for(level: &str) -> Option<&'static str> {
    Some(match level.to_ascii_lowercase().as_str() {
        "all" | "garbage" | "trace" => "trace",
        "debug" | "profile" => "debug",
        "info" => "info",
        "warning" | "warn" => "warn",
        "error" | "critical" => "error",
        "quiet" => "off",
        _ => return None,
    })
}

/// A log level Salt does not have.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid log level {0:?}")]
pub struct InvalidLogLevel(pub String);

/// Install the global subscriber (stderr).
///
/// # Errors
/// [`InvalidLogLevel`] if `level` is not a Salt log level.
pub fn init(level: &str) -> Result<(), InvalidLogLevel> {
    let directive = filter_for(level).ok_or_else(|| InvalidLogLevel(level.to_owned()))?;
    let filter = tracing_subscriber::EnvFilter::try_from_env("BRINE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(directive));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .try_init();
    Ok(())
}
