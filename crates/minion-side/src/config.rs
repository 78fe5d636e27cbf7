//! The minion's configuration: Salt's `minion` file keys, Salt's defaults (3007.17).

use std::path::{Path, PathBuf};
use std::time::Duration;

use brine_daemon::config::{ConfigError, Options, under_root};
use brine_proto::Value;

/// `master_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MasterType {
    /// `str`: one master, or every master of a list at once (hot multi-master).
    Str,
    /// `failover`: one active master at a time, walking the list.
    Failover,
    /// `disable`: no master (masterless).
    Disable,
}

pub use crate::MasterAddr;

/// Everything the minion reads from its config. Defaults are Salt 3007.17's.
#[derive(Debug, Clone)]
pub struct MinionConfig {
    /// The directory given with `-c`.
    pub conf_dir: PathBuf,
    /// Minion id (resolved: config, `CONFIG_DIR/minion_id`, then the host's FQDN).
    pub id: String,
    /// `master` (string or list), each with its port.
    pub masters: Vec<MasterAddr>,
    /// `publish_port` (the minion connects SUB to its own setting, as Salt does).
    pub publish_port: u16,
    /// `master_type`.
    pub master_type: MasterType,
    /// `random_master` / `master_shuffle`.
    pub random_master: bool,
    /// `master_alive_interval` (0 = off).
    pub master_alive_interval: Duration,
    /// `master_failback`.
    pub master_failback: bool,
    /// `master_failback_interval` (0 = `master_alive_interval`).
    pub master_failback_interval: Duration,
    /// `master_tries` (-1 = forever).
    pub master_tries: i64,
    /// `retry_dns` seconds (forced to 0 with failover).
    pub retry_dns: Duration,
    /// `acceptance_wait_time`.
    pub acceptance_wait_time: Duration,
    /// `acceptance_wait_time_max` (0 = no doubling).
    pub acceptance_wait_time_max: Duration,
    /// `auth_timeout`.
    pub auth_timeout: Duration,
    /// `auth_tries`: sends of one `_auth` request before a new one.
    pub auth_tries: u32,
    /// `rejected_retry`: keep retrying when rejected instead of exiting.
    pub rejected_retry: bool,
    /// `root_dir`.
    pub root_dir: PathBuf,
    /// `pki_dir` (root_dir prepended).
    pub pki_dir: PathBuf,
    /// `cachedir` (root_dir prepended).
    pub cachedir: PathBuf,
    /// `grains` from the config plus `CONFIG_DIR/grains`.
    pub static_grains: Value,
    /// `verify_master_pubkey_sign`.
    pub verify_master_pubkey_sign: bool,
    /// `master_sign_key_name` (`master_sign`).
    pub master_sign_key_name: String,
    /// `zmq_filtering`.
    pub zmq_filtering: bool,
    /// `sign_pub_messages`: require the master's signature on every publish.
    pub sign_pub_messages: bool,
    /// `log_level`.
    pub log_level: String,
    /// `return_retry_timer` .. `return_retry_timer_max` seconds between return retries.
    pub return_retry_timer: (Duration, Duration),
    /// `return_retry_tries`.
    pub return_retry_tries: u32,
    /// brine: bytes the on-disk return spool may hold.
    pub return_spool_max_bytes: u64,
    /// brine: the Salt release this minion presents as (`saltversion` grain, `test.version`,
    /// version-specific return shapes). Default 3007.17.
    pub salt_version: String,
    /// Keys present in the files that brine does not implement (warned about at start).
    pub unknown_keys: Vec<String>,
    /// `mine_functions`: what `mine.update` runs and sends to the master.
    pub mine_functions: Value,
    /// `mine_interval` (minutes; 0: never on a timer).
    pub mine_interval: Duration,
    /// `saltenv` (the minion's file server environment; `None`: `base`).
    pub saltenv: Option<String>,
    /// `pillarenv` (`None`: every pillar environment).
    pub pillarenv: Option<String>,
    /// `hash_type` for files from the master (`sha256`).
    pub hash_type: String,
}

/// Keys brine's minion reads.
pub const KNOWN_KEYS: &[&str] = &[
    "id",
    "master",
    "master_port",
    "publish_port",
    "master_type",
    "random_master",
    "master_shuffle",
    "master_alive_interval",
    "master_failback",
    "master_failback_interval",
    "master_tries",
    "retry_dns",
    "retry_dns_count",
    "acceptance_wait_time",
    "acceptance_wait_time_max",
    "auth_timeout",
    "auth_tries",
    "rejected_retry",
    "root_dir",
    "pki_dir",
    "cachedir",
    "grains",
    "verify_master_pubkey_sign",
    "master_sign_key_name",
    "zmq_filtering",
    "sign_pub_messages",
    "log_level",
    "log_level_logfile",
    "log_file",
    "user",
    "return_retry_timer",
    "return_retry_timer_max",
    "return_retry_tries",
    "brine_return_spool_max_bytes",
    "brine_salt_version",
    "ipv6",
    "sock_dir",
    "pidfile",
    "mine_functions",
    "mine_interval",
    "saltenv",
    "pillarenv",
    "hash_type",
];

fn secs(o: &Options, key: &str, default: i64) -> Result<Duration, ConfigError> {
    Ok(Duration::from_secs(
        o.int(key, default, 0..=31_536_000)? as u64
    ))
}

fn port(o: &Options, key: &str, default: i64) -> Result<u16, ConfigError> {
    Ok(o.int(key, default, 1..=65535)? as u16)
}

/// A YAML value as a msgpack [`Value`] (for static grains).
pub fn json_to_value(v: &serde_json::Value) -> Value {
    match v {
        serde_json::Value::Null => Value::Nil,
        serde_json::Value::Bool(b) => Value::Bool(*b),
        serde_json::Value::Number(n) => n
            .as_i64()
            .map(Value::Int)
            .or_else(|| n.as_u64().map(Value::from_u64))
            .unwrap_or_else(|| Value::F64(n.as_f64().unwrap_or(0.0))),
        serde_json::Value::String(s) => Value::str(s),
        serde_json::Value::Array(a) => Value::Array(a.iter().map(json_to_value).collect()),
        serde_json::Value::Object(m) => Value::Map(
            m.iter()
                .map(|(k, v)| (Value::str(k), json_to_value(v)))
                .collect(),
        ),
    }
}

impl MinionConfig {
    /// What the links to masters need.
    pub fn link(&self) -> crate::LinkConfig {
        crate::LinkConfig {
            id: self.id.clone(),
            pki_dir: self.pki_dir.clone(),
            publish_port: self.publish_port,
            zmq_filtering: self.zmq_filtering,
            auth_timeout: self.auth_timeout,
            auth_tries: self.auth_tries,
            acceptance_wait_time: self.acceptance_wait_time,
            acceptance_wait_time_max: self.acceptance_wait_time_max,
            rejected_retry: self.rejected_retry,
            verify_master_pubkey_sign: self.verify_master_pubkey_sign,
            master_sign_key_name: self.master_sign_key_name.clone(),
            give_up_on_timeout: self.master_type == MasterType::Failover,
        }
    }
}

impl MinionConfig {
    /// Build from merged options. `id_override` is `--id`; `resolve_id` supplies the fallback
    /// chain (minion_id file, FQDN) so tests can avoid touching the host.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] for bad values.
    pub fn from_options(
        o: &Options,
        conf_dir: &Path,
        id_override: Option<String>,
        resolve_id: impl FnOnce(&Path) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let master_type = match o.string("master_type")?.as_deref().unwrap_or("str") {
            "str" => MasterType::Str,
            "failover" => MasterType::Failover,
            "disable" => MasterType::Disable,
            other => {
                return Err(ConfigError::Invalid {
                    key: "master_type".into(),
                    message: format!("{other:?} is not one of str, failover, disable"),
                });
            }
        };
        let master_port = port(o, "master_port", 4506)?;
        let raw = o
            .string_list("master")?
            .unwrap_or_else(|| vec!["salt".into()]);
        let masters = raw
            .iter()
            .map(|m| parse_master(m, master_port))
            .collect::<Result<Vec<_>, _>>()?;
        if masters.is_empty() && master_type != MasterType::Disable {
            return Err(ConfigError::Invalid {
                key: "master".into(),
                message: "empty master list".into(),
            });
        }
        let root_dir = PathBuf::from(o.string("root_dir")?.unwrap_or_else(|| "/".into()));
        let pki_dir = under_root(
            &root_dir,
            Path::new(
                &o.string("pki_dir")?
                    .unwrap_or_else(|| "/etc/salt/pki/minion".into()),
            ),
        );
        let cachedir = under_root(
            &root_dir,
            Path::new(
                &o.string("cachedir")?
                    .unwrap_or_else(|| "/var/cache/salt/minion".into()),
            ),
        );
        let id = match id_override.or(o.string("id")?) {
            Some(id) => id,
            None => resolve_id(conf_dir).ok_or_else(|| ConfigError::Invalid {
                key: "id".into(),
                message: "no id configured and none could be derived from the host name".into(),
            })?,
        };
        if !brine_proto::auth::valid_minion_id(&id) {
            return Err(ConfigError::Invalid {
                key: "id".into(),
                message: format!("{id:?} is not a usable minion id"),
            });
        }
        let mut static_grains = match o.get("grains") {
            None => Value::map(),
            Some(v @ serde_json::Value::Object(_)) => json_to_value(v),
            Some(other) => {
                return Err(ConfigError::Invalid {
                    key: "grains".into(),
                    message: format!("expected a mapping, found {other}"),
                });
            }
        };
        let grains_file = conf_dir.join("grains");
        if grains_file.exists() {
            let text =
                std::fs::read_to_string(&grains_file).map_err(|source| ConfigError::Read {
                    path: grains_file.clone(),
                    source,
                })?;
            for (k, v) in brine_daemon::config::parse_str(&text, &grains_file)? {
                static_grains.insert(&k, json_to_value(&v));
            }
        }
        let failover = master_type == MasterType::Failover;
        let alive = secs(o, "master_alive_interval", 0)?;
        let failback_interval = secs(o, "master_failback_interval", 0)?;
        let timer = secs(o, "return_retry_timer", 5)?;
        let timer_max = secs(o, "return_retry_timer_max", 10)?.max(timer);
        Ok(Self {
            conf_dir: conf_dir.to_owned(),
            id,
            masters,
            publish_port: port(o, "publish_port", 4505)?,
            master_type,
            random_master: o.bool("random_master", false)? || o.bool("master_shuffle", false)?,
            master_alive_interval: alive,
            master_failback: o.bool("master_failback", false)?,
            master_failback_interval: if failback_interval.is_zero() {
                alive
            } else {
                failback_interval
            },
            master_tries: o.int("master_tries", -1, -1..=i64::from(u32::MAX))?,
            retry_dns: if failover {
                Duration::ZERO
            } else {
                secs(o, "retry_dns", 30)?
            },
            acceptance_wait_time: secs(o, "acceptance_wait_time", 10)?,
            acceptance_wait_time_max: secs(o, "acceptance_wait_time_max", 0)?,
            auth_timeout: secs(o, "auth_timeout", 5)?.max(Duration::from_secs(1)),
            auth_tries: o.int("auth_tries", 7, 0..=1000)?.max(1) as u32,
            rejected_retry: o.bool("rejected_retry", false)?,
            root_dir,
            pki_dir,
            cachedir,
            static_grains,
            verify_master_pubkey_sign: o.bool("verify_master_pubkey_sign", false)?,
            master_sign_key_name: o
                .string("master_sign_key_name")?
                .unwrap_or_else(|| "master_sign".into()),
            zmq_filtering: o.bool("zmq_filtering", false)?,
            sign_pub_messages: o.bool("sign_pub_messages", false)?,
            log_level: o.string("log_level")?.unwrap_or_else(|| "warning".into()),
            return_retry_timer: (timer, timer_max),
            return_retry_tries: o.int("return_retry_tries", 3, 1..=1000)? as u32,
            return_spool_max_bytes: o.int("brine_return_spool_max_bytes", 64 << 20, 0..=i64::MAX)?
                as u64,
            salt_version: {
                if matches!(
                    o.get("brine_salt_version"),
                    Some(serde_json::Value::Number(_))
                ) {
                    return Err(ConfigError::Invalid {
                        key: "brine_salt_version".into(),
                        message: "quote the version (YAML reads 3006.30 as the number 3006.3)"
                            .into(),
                    });
                }
                let v = o
                    .string("brine_salt_version")?
                    .unwrap_or_else(|| crate::host::SALT_VERSION.into());
                if crate::host::version_info(&v).is_none() {
                    return Err(ConfigError::Invalid {
                        key: "brine_salt_version".into(),
                        message: format!("{v:?} is not a Salt version like 3007.17"),
                    });
                }
                v
            },
            unknown_keys: o.unknown_keys(KNOWN_KEYS),
            mine_functions: o
                .get("mine_functions")
                .map_or_else(Value::map, json_to_value),
            mine_interval: Duration::from_secs(
                60 * o.int("mine_interval", 60, 0..=525_600)? as u64,
            ),
            saltenv: o.string("saltenv")?,
            pillarenv: o.string("pillarenv")?,
            hash_type: {
                let h = o.string("hash_type")?.unwrap_or_else(|| "sha256".into());
                if !["md5", "sha1", "sha224", "sha256", "sha384", "sha512"].contains(&h.as_str()) {
                    return Err(ConfigError::Invalid {
                        key: "hash_type".into(),
                        message: format!(
                            "{h:?} is not one of md5, sha1, sha224, sha256, sha384, sha512"
                        ),
                    });
                }
                h
            },
        })
    }
}

/// `host`, `host:port`, `[v6]:port` (Salt's `prep_ip_port`).
fn parse_master(m: &str, default_port: u16) -> Result<MasterAddr, ConfigError> {
    let bad = || ConfigError::Invalid {
        key: "master".into(),
        message: format!("{m:?} is not host or host:port"),
    };
    let m = m.trim();
    if m.is_empty() {
        return Err(bad());
    }
    if let Some(rest) = m.strip_prefix('[') {
        let (host, tail) = rest.split_once(']').ok_or_else(bad)?;
        let port = match tail.strip_prefix(':') {
            Some(p) => p.parse().map_err(|_| bad())?,
            None => default_port,
        };
        return Ok(MasterAddr {
            host: host.into(),
            ret_port: port,
        });
    }
    match m.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => Ok(MasterAddr {
            host: h.into(),
            ret_port: p.parse().map_err(|_| bad())?,
        }),
        _ => Ok(MasterAddr {
            host: m.into(),
            ret_port: default_port,
        }),
    }
}

/// Salt's id fallback: `CONFIG_DIR/minion_id`, else the host's FQDN (cached into that file).
pub fn resolve_host_id(conf_dir: &Path) -> Option<String> {
    let cache = conf_dir.join("minion_id");
    if let Ok(s) = std::fs::read_to_string(&cache) {
        let s = s.trim();
        if !s.is_empty() {
            return Some(s.to_owned());
        }
    }
    let fqdn = crate::host::fqdn();
    if fqdn.is_empty() || fqdn == "localhost" {
        return None;
    }
    let _ = std::fs::write(&cache, &fqdn);
    Some(fqdn)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(text: &str) -> Result<MinionConfig, ConfigError> {
        let o = Options::parse(text).unwrap();
        MinionConfig::from_options(&o, Path::new("/nonexistent"), None, |_| {
            Some("host1".into())
        })
    }

    #[test]
    fn salt_defaults_and_lists() {
        let c = cfg(
            "master: [a, 'b:5506', '[::1]:7']\nmaster_type: failover\nmaster_alive_interval: 10\n",
        )
        .unwrap();
        assert_eq!(c.id, "host1");
        assert_eq!(
            c.masters[0],
            MasterAddr {
                host: "a".into(),
                ret_port: 4506
            }
        );
        assert_eq!(c.masters[1].ret_port, 5506);
        assert_eq!(
            c.masters[2],
            MasterAddr {
                host: "::1".into(),
                ret_port: 7
            }
        );
        assert_eq!(c.master_type, MasterType::Failover);
        assert_eq!(c.master_failback_interval, Duration::from_secs(10));
        assert_eq!(c.retry_dns, Duration::ZERO, "failover forces retry_dns 0");
        assert_eq!(c.pki_dir, PathBuf::from("/etc/salt/pki/minion"));
        let c = cfg("root_dir: /srv/r\nid: m1\nbogus_key: 1\n").unwrap();
        assert_eq!(c.pki_dir, PathBuf::from("/srv/r/etc/salt/pki/minion"));
        assert_eq!(c.masters[0].host, "salt");
        assert_eq!(c.unknown_keys, vec!["bogus_key"]);
    }

    #[test]
    fn bad_values_fail() {
        for bad in [
            "master_type: hot\n",
            "master_port: 70000\n",
            "master_alive_interval: soon\n",
            "id: ../../etc/x\n",
            "grains: [a]\n",
            "master: 'h:notaport'\n",
        ] {
            assert!(cfg(bad).is_err(), "{bad}");
        }
    }
}
