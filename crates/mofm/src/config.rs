//! The master's configuration: Salt's `master` file keys, Salt's defaults (3007.17).

use std::path::{Path, PathBuf};

use brine_daemon::config::{ConfigError, Options, under_root};

/// What mofm reads from `CONFIG_DIR/master` (+ `master.d/*.conf`).
#[derive(Debug, Clone)]
pub struct MasterConfig {
    /// `interface` to bind.
    pub interface: String,
    /// `publish_port` (PUB).
    pub publish_port: u16,
    /// `ret_port` (ROUTER).
    pub ret_port: u16,
    /// `root_dir`.
    pub root_dir: PathBuf,
    /// `pki_dir` (root_dir prepended).
    pub pki_dir: PathBuf,
    /// `cachedir` (root_dir prepended).
    pub cachedir: PathBuf,
    /// `auto_accept`. Dangerous: any minion with network access is trusted.
    pub auto_accept: bool,
    /// `open_mode`. Very dangerous: any key for any id.
    pub open_mode: bool,
    /// `gather_job_timeout` seconds.
    pub gather_job_timeout: u64,
    /// `log_level`.
    pub log_level: String,
    /// Keys brine does not implement (warned about at start).
    pub unknown_keys: Vec<String>,
}

/// Keys mofm reads or deliberately accepts (Salt process-model options with no meaning here).
pub const KNOWN_KEYS: &[&str] = &[
    "interface",
    "publish_port",
    "ret_port",
    "root_dir",
    "pki_dir",
    "cachedir",
    "auto_accept",
    "open_mode",
    "gather_job_timeout",
    "log_level",
    "log_level_logfile",
    "log_file",
    "user",
    "worker_threads",
    "sock_dir",
    "pidfile",
    "ipv6",
];

impl MasterConfig {
    /// Build from merged options.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] for bad values.
    pub fn from_options(o: &Options) -> Result<Self, ConfigError> {
        let root_dir = PathBuf::from(o.string("root_dir")?.unwrap_or_else(|| "/".into()));
        let port =
            |k: &str, d: i64| -> Result<u16, ConfigError> { Ok(o.int(k, d, 0..=65535)? as u16) };
        let cfg = Self {
            interface: o.string("interface")?.unwrap_or_else(|| "0.0.0.0".into()),
            publish_port: port("publish_port", 4505)?,
            ret_port: port("ret_port", 4506)?,
            pki_dir: under_root(
                &root_dir,
                Path::new(
                    &o.string("pki_dir")?
                        .unwrap_or_else(|| "/etc/salt/pki/master".into()),
                ),
            ),
            cachedir: under_root(
                &root_dir,
                Path::new(
                    &o.string("cachedir")?
                        .unwrap_or_else(|| "/var/cache/salt/master".into()),
                ),
            ),
            root_dir,
            auto_accept: o.bool("auto_accept", false)?,
            open_mode: o.bool("open_mode", false)?,
            gather_job_timeout: o.int("gather_job_timeout", 10, 1..=86_400)? as u64,
            log_level: o.string("log_level")?.unwrap_or_else(|| "warning".into()),
            unknown_keys: o.unknown_keys(KNOWN_KEYS),
        };
        if cfg.interface.parse::<std::net::IpAddr>().is_err() {
            return Err(ConfigError::Invalid {
                key: "interface".into(),
                message: format!("{:?} is not an IP address", cfg.interface),
            });
        }
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn salt_defaults_and_bad_values() {
        let c = MasterConfig::from_options(&Options::parse("root_dir: /srv/m\n").unwrap()).unwrap();
        assert_eq!((c.publish_port, c.ret_port), (4505, 4506));
        assert_eq!(c.pki_dir, PathBuf::from("/srv/m/etc/salt/pki/master"));
        assert!(!c.auto_accept);
        for bad in [
            "interface: somewhere\n",
            "ret_port: 99999\n",
            "auto_accept: maybe\n",
        ] {
            assert!(
                MasterConfig::from_options(&Options::parse(bad).unwrap()).is_err(),
                "{bad}"
            );
        }
    }
}
