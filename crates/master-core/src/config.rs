//! The master's configuration: Salt's `master` file keys, Salt's defaults (3007.17).

use std::collections::BTreeMap;
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
    /// `timeout`: seconds a CLI job waits before asking silent minions (`-t` overrides).
    pub timeout: u64,
    /// `keep_jobs_seconds` (or the older `keep_jobs` in hours).
    pub keep_jobs_seconds: u64,
    /// `master_job_cache: redis` and Salt's `redis.*` options (`None`: the embedded cache).
    pub redis: Option<crate::redis_cache::RedisOptions>,
    /// `event_return: redis`: the Redis the master's events are appended to (`None`: not kept).
    pub event_return_redis: Option<crate::redis_cache::RedisOptions>,
    /// `event_return_whitelist`: only events whose tag matches one of these globs are kept
    /// (empty: all).
    pub event_return_whitelist: Vec<String>,
    /// `event_return_blacklist`: events whose tag matches one of these globs are not kept.
    pub event_return_blacklist: Vec<String>,
    /// `eauth_tokens: rediscluster` (or `redis`): API tokens kept in Redis, valid on every
    /// master that shares it.
    pub token_redis: Option<crate::redis_cache::RedisOptions>,
    /// `brine_key_sync: redis` (brine's): key decisions shared with the masters that share the
    /// `redis.*` server.
    pub key_sync_redis: Option<crate::redis_cache::RedisOptions>,
    /// `nodegroups`: name → compound expression (lists are joined with `or`, as Salt does).
    pub nodegroups: BTreeMap<String, String>,
    /// The HTTP API address (`rest_cherrypy: {host, port}`; default 127.0.0.1:8000).
    pub api_host: String,
    /// The HTTP API port.
    pub api_port: u16,
    /// `rest_cherrypy: {max_request_body_size}` (Salt's, default 1 MiB): larger bodies get 413.
    pub api_max_body: usize,
    /// `rest_cherrypy: {max_connections}` (brine's): open API connections at most; more are
    /// closed at once, so slow or idle clients cannot take the descriptors minions need.
    pub api_max_connections: usize,
    /// `rest_cherrypy: {socket_timeout}` (brine's, seconds, default 10 as cheroot's): the
    /// longest a client may take to send a request's headers (or to start the next one on a
    /// kept-alive connection) and its body.
    pub api_socket_timeout: u64,
    /// `rest_cherrypy: {app}`: an HTML file (a web UI such as SaltGUI's `index.html`) served at
    /// `app_path` and to browsers asking for HTML anywhere outside the API.
    pub api_app: Option<PathBuf>,
    /// `rest_cherrypy: {app_path}` (default `/app`).
    pub api_app_path: String,
    /// `rest_cherrypy: {static}`: a directory served as is under `static_path`, without auth.
    pub api_static: Option<PathBuf>,
    /// `rest_cherrypy: {static_path}` (default `/static`).
    pub api_static_path: String,
    /// `rest_cherrypy: {stats_disable_auth}`: `GET /stats` without a token.
    pub api_stats_disable_auth: bool,
    /// `rest_cherrypy: {webhook_disable_auth}`: `POST /hook/...` without a token.
    pub api_webhook_disable_auth: bool,
    /// `zmq_max_message_size` (brine's, bytes, default 64 MiB): the largest request a peer may
    /// send on the ret port; a peer announcing more is disconnected before anything is
    /// allocated. 0: no limit, as in Salt.
    pub zmq_max_message_size: u64,
    /// `request_server_ttl` (Salt's, seconds, default 0 = off): encrypted requests whose `ts`
    /// is older are refused, and one already seen within the window is refused as a replay.
    pub request_server_ttl: u64,
    /// `permissive_pki_access`: a group-writable autosign/autoreject file is honoured.
    pub permissive_pki_access: bool,
    /// `external_auth` as configured (the `file` backend is supported).
    pub external_auth: serde_json::Value,
    /// `token_expire` seconds.
    pub token_expire: u64,
    /// `sharedsecret`: the password of the `sharedsecret` eauth backend.
    pub sharedsecret: Option<String>,
    /// `auth.pam.service`: the PAM service the `pam` eauth backend asks (Salt's `login`).
    pub pam_service: String,
    /// `zmq_filtering`.
    pub zmq_filtering: bool,
    /// `sign_pub_messages`.
    pub sign_pub_messages: bool,
    /// `master_sign_pubkey`: sign `master.pub` with `master_sign.pem` in `_auth` replies.
    pub master_sign_pubkey: bool,
    /// `master_sign_key_name` (file stem in pki_dir).
    pub master_sign_key_name: String,
    /// `autosign_file` (root_dir prepended).
    pub autosign_file: Option<PathBuf>,
    /// `autoreject_file` (root_dir prepended).
    pub autoreject_file: Option<PathBuf>,
    /// `presence_events`.
    pub presence_events: bool,
    /// `id` of the master (the AES dropfile must contain it); default `<hostname>_master`.
    pub id: Option<String>,
    /// `order_masters`: this master has syndics below it (publishes carry `to`; syndics'
    /// returns and expected minions are accepted).
    pub order_masters: bool,
    /// `syndic_wait`: the longest a job waits for a syndic that has not reported yet.
    pub syndic_wait: u64,
    /// `unique_jid`: jids end in `_<pid>`, as Salt's, so masters that publish into one job
    /// cache (MoMs sharing Redis) cannot hand out the same jid in the same microsecond.
    pub unique_jid: bool,
    /// Keys brine does not implement (warned about at start).
    pub unknown_keys: Vec<String>,
    /// The file server (`file_roots`, `file_ignore_*`, `hash_type`, ...).
    pub files: crate::fileserver::FileServerConfig,
    /// Pillar (`pillar_roots`, merging, `pillar_opts`...).
    pub pillar: crate::pillar::PillarConfig,
    /// Every option as configured (pillar templates see them as `opts`; `pillar_opts` sends
    /// them to minions).
    pub raw: serde_json::Map<String, serde_json::Value>,
    /// `file_recv`: minions may push files (`cp.push`) into `cachedir/minions/<id>/files`.
    pub file_recv: bool,
    /// `file_recv_max_size`, MB.
    pub file_recv_max_size: u64,
    /// The state options a minion asks for with `_master_opts`, in Salt's order with Salt's
    /// defaults (`top_file_merging_strategy` ... `jinja_trim_blocks`).
    pub state_opts: Vec<(String, serde_json::Value)>,
    /// `master_id`: stamped on publishes so syndics send returns back to this master.
    pub master_id: Option<String>,
    /// `syndic_master`: the masters above (string or list; `host` or `host:port`).
    pub syndic_master: Vec<String>,
    /// `syndic_master_port`: their ret port (default 4506).
    pub syndic_master_port: u16,
    /// `syndic_failover`: `random` or `ordered` (the order in which upstream masters are tried
    /// for returns whose master is gone).
    pub syndic_failover_random: bool,
    /// `syndic_mode`: `sync` forwards events upward; `cluster` only returns and job reports.
    pub syndic_mode_sync: bool,
    /// `syndic_event_forward_timeout`: the return batching window.
    pub syndic_event_forward_timeout: std::time::Duration,
    /// `zmq_backlog`: the listen backlog of the ret and publish ports. Salt's default is 1000;
    /// brine's is 4096 (the kernel caps it at `net.core.somaxconn`): an unpaced storm of 9,000
    /// minions overflowed 1000 (1,863 connections dropped and retried a second later).
    pub zmq_backlog: i32,
}

/// The options `_master_opts` answers after `file_roots`, in Salt's order, with Salt's defaults
/// (as JSON). The first three follow `file_roots` even with `env_only`.
pub const STATE_OPTS: &[(&str, &str)] = &[
    ("top_file_merging_strategy", "\"merge\""),
    ("env_order", "[]"),
    ("default_top", "\"base\""),
    ("renderer", "\"jinja|yaml\""),
    ("failhard", "false"),
    ("state_top", "\"top.sls\""),
    ("state_top_saltenv", "null"),
    ("nodegroups", "{}"),
    ("state_auto_order", "true"),
    ("state_events", "false"),
    ("state_aggregate", "false"),
    ("jinja_env", "{}"),
    ("jinja_sls_env", "{}"),
    ("jinja_lstrip_blocks", "false"),
    ("jinja_trim_blocks", "false"),
];

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
    "timeout",
    "keep_jobs_seconds",
    "keep_jobs",
    "nodegroups",
    "rest_cherrypy",
    "external_auth",
    "token_expire",
    "sharedsecret",
    "auth.pam.service",
    "zmq_filtering",
    "sign_pub_messages",
    "master_sign_pubkey",
    "master_sign_key_name",
    "autosign_file",
    "autoreject_file",
    "presence_events",
    "id",
    "rotate_aes_key",
    "job_cache",
    "order_masters",
    "syndic_wait",
    "unique_jid",
    "master_id",
    "syndic_master",
    "syndic_master_port",
    "syndic_failover",
    "syndic_mode",
    "syndic_event_forward_timeout",
    "zmq_backlog",
    "zmq_max_message_size",
    "request_server_ttl",
    "permissive_pki_access",
    "file_roots",
    "fileserver_backend",
    "file_ignore_regex",
    "file_ignore_glob",
    "file_buffer_size",
    "hash_type",
    "fileserver_followsymlinks",
    "fileserver_ignoresymlinks",
    "file_recv",
    "file_recv_max_size",
    "top_file_merging_strategy",
    "env_order",
    "default_top",
    "renderer",
    "failhard",
    "state_top",
    "state_top_saltenv",
    "state_auto_order",
    "state_events",
    "state_aggregate",
    "jinja_env",
    "jinja_sls_env",
    "jinja_lstrip_blocks",
    "jinja_trim_blocks",
    "pillar_roots",
    "pillar_source_merging_strategy",
    "pillar_merge_lists",
    "pillar_opts",
    "pillar_safe_render_error",
    "pillar_includes_override_sls",
    "pillarenv",
    "pillarenv_from_saltenv",
    "mine_get",
    "minion_data_cache",
    "enforce_mine_cache",
];

impl MasterConfig {
    /// Read `dir/master` (+ `master.d/*.conf`).
    ///
    /// # Errors
    /// [`ConfigError`] for unreadable files or bad values.
    pub fn load(dir: &Path) -> Result<Self, ConfigError> {
        Self::from_options(&brine_daemon::config::load(dir, "master")?)
    }

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
            root_dir: root_dir.clone(),
            auto_accept: o.bool("auto_accept", false)?,
            open_mode: o.bool("open_mode", false)?,
            gather_job_timeout: o.int("gather_job_timeout", 10, 1..=86_400)? as u64,
            log_level: o.string("log_level")?.unwrap_or_else(|| "warning".into()),
            timeout: o.int("timeout", 5, 1..=86_400)? as u64,
            keep_jobs_seconds: match o.get("keep_jobs_seconds") {
                Some(_) => o.int("keep_jobs_seconds", 86_400, 0..=i64::from(u32::MAX))? as u64,
                None => o.int("keep_jobs", 24, 0..=1_000_000)? as u64 * 3600,
            },
            nodegroups: nodegroups(o)?,
            api_host: api(o, "host")?
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_else(|| "127.0.0.1".into()),
            api_port: match api(o, "port")? {
                None => 8000,
                Some(v) => v
                    .as_u64()
                    .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
                    .and_then(|p| u16::try_from(p).ok())
                    .ok_or_else(|| invalid("rest_cherrypy", format!("bad port {v}")))?,
            },
            api_max_body: api_int(o, "max_request_body_size", 1_048_576, 1..=1 << 30)?,
            api_max_connections: api_int(o, "max_connections", 1000, 1..=1_000_000)?,
            api_socket_timeout: api_int(o, "socket_timeout", 10, 1..=86_400)? as u64,
            api_app: api_str(o, "app")?.map(PathBuf::from),
            api_app_path: api_url_path(o, "app_path", "/app")?,
            api_static: api_str(o, "static")?.map(PathBuf::from),
            api_static_path: api_url_path(o, "static_path", "/static")?,
            api_stats_disable_auth: api_bool(o, "stats_disable_auth")?,
            api_webhook_disable_auth: api_bool(o, "webhook_disable_auth")?,
            zmq_max_message_size: o.int("zmq_max_message_size", 64 << 20, 0..=i64::MAX)? as u64,
            request_server_ttl: o.int("request_server_ttl", 0, 0..=i64::from(u32::MAX))? as u64,
            permissive_pki_access: o.bool("permissive_pki_access", false)?,
            external_auth: o
                .get("external_auth")
                .cloned()
                .unwrap_or(serde_json::Value::Null),
            token_expire: o.int("token_expire", 43_200, 1..=i64::from(u32::MAX))? as u64,
            sharedsecret: o.string("sharedsecret")?,
            pam_service: o
                .string("auth.pam.service")?
                .unwrap_or_else(|| "login".into()),
            zmq_filtering: o.bool("zmq_filtering", false)?,
            sign_pub_messages: o.bool("sign_pub_messages", true)?,
            master_sign_pubkey: o.bool("master_sign_pubkey", false)?,
            master_sign_key_name: o
                .string("master_sign_key_name")?
                .unwrap_or_else(|| "master_sign".into()),
            autosign_file: o
                .string("autosign_file")?
                .map(|p| under_root(&root_dir, Path::new(&p))),
            autoreject_file: o
                .string("autoreject_file")?
                .map(|p| under_root(&root_dir, Path::new(&p))),
            presence_events: o.bool("presence_events", false)?,
            id: o.string("id")?,
            order_masters: o.bool("order_masters", false)?,
            syndic_wait: o.int("syndic_wait", 5, 0..=3600)? as u64,
            unique_jid: o.bool("unique_jid", false)?,
            zmq_backlog: o.int("zmq_backlog", 4096, 1..=65_535)? as i32,
            unknown_keys: o
                .unknown_keys(KNOWN_KEYS)
                .into_iter()
                .filter(|k| !crate::redis_cache::KNOWN_KEYS.contains(&k.as_str()))
                .collect(),
            redis: crate::redis_cache::RedisOptions::from_options(o)?,
            token_redis: crate::redis_cache::RedisOptions::for_tokens(o)?,
            event_return_redis: crate::redis_cache::RedisOptions::for_event_return(o)?,
            event_return_whitelist: o.string_list("event_return_whitelist")?.unwrap_or_default(),
            event_return_blacklist: o.string_list("event_return_blacklist")?.unwrap_or_default(),
            key_sync_redis: crate::redis_cache::RedisOptions::for_key_sync(o)?,
            files: crate::fileserver::FileServerConfig::from_options(o)?,
            pillar: crate::pillar::PillarConfig::from_options(o)?,
            raw: o.all().clone(),
            file_recv: o.bool("file_recv", false)?,
            file_recv_max_size: o.int("file_recv_max_size", 100, 0..=1_000_000)? as u64,
            state_opts: STATE_OPTS
                .iter()
                .map(|(k, d)| {
                    let v = o.get(k).cloned().unwrap_or_else(|| {
                        serde_json::from_str(d).unwrap_or(serde_json::Value::Null)
                    });
                    ((*k).to_owned(), v)
                })
                .collect(),
            master_id: o.string("master_id")?,
            syndic_master: o.string_list("syndic_master")?.unwrap_or_default(),
            syndic_master_port: port("syndic_master_port", 4506)?,
            syndic_failover_random: one_of(o, "syndic_failover", "random", "ordered")?,
            syndic_mode_sync: one_of(o, "syndic_mode", "sync", "cluster")?,
            syndic_event_forward_timeout: match o.get("syndic_event_forward_timeout") {
                None | Some(serde_json::Value::Null) => std::time::Duration::from_millis(500),
                Some(v) => match v.as_f64() {
                    Some(f) if (0.0..=60.0).contains(&f) => std::time::Duration::from_secs_f64(f),
                    _ => {
                        return Err(invalid(
                            "syndic_event_forward_timeout",
                            format!("{v} is not a number of seconds between 0 and 60"),
                        ));
                    }
                },
            },
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

fn invalid(key: &str, message: String) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message,
    }
}

fn api<'a>(o: &'a Options, field: &str) -> Result<Option<&'a serde_json::Value>, ConfigError> {
    match o.get("rest_cherrypy") {
        None => Ok(None),
        Some(serde_json::Value::Object(m)) => Ok(m.get(field).filter(|v| !v.is_null())),
        Some(other) => Err(invalid(
            "rest_cherrypy",
            format!("expected a mapping, found {other}"),
        )),
    }
}

fn api_bool(o: &Options, field: &str) -> Result<bool, ConfigError> {
    match api(o, field)? {
        None => Ok(false),
        Some(serde_json::Value::Bool(b)) => Ok(*b),
        Some(v) => Err(invalid(
            "rest_cherrypy",
            format!("{field}: expected true or false, found {v}"),
        )),
    }
}

fn api_str(o: &Options, field: &str) -> Result<Option<String>, ConfigError> {
    match api(o, field)? {
        None => Ok(None),
        Some(serde_json::Value::String(s)) if !s.is_empty() => Ok(Some(s.clone())),
        Some(v) => Err(invalid(
            "rest_cherrypy",
            format!("{field}: expected a path, found {v}"),
        )),
    }
}

/// A URL path option: starts with `/`, no trailing `/`, only plain path characters, and not
/// `/` itself (the API lives there).
fn api_url_path(o: &Options, field: &str, default: &str) -> Result<String, ConfigError> {
    let Some(p) = api_str(o, field)? else {
        return Ok(default.to_owned());
    };
    let p = p.trim_end_matches('/').to_owned();
    let plain = p.starts_with('/')
        && p.len() > 1
        && p[1..].split('/').all(|seg| {
            !seg.is_empty()
                && seg != "."
                && seg != ".."
                && seg
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.~".contains(c))
        });
    if plain {
        Ok(p)
    } else {
        Err(invalid(
            "rest_cherrypy",
            format!("{field}: {p:?} is not a URL path such as /static"),
        ))
    }
}

fn api_int(
    o: &Options,
    field: &str,
    default: usize,
    range: std::ops::RangeInclusive<usize>,
) -> Result<usize, ConfigError> {
    match api(o, field)? {
        None => Ok(default),
        Some(v) => v
            .as_u64()
            .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
            .and_then(|n| usize::try_from(n).ok())
            .filter(|n| range.contains(n))
            .ok_or_else(|| {
                invalid(
                    "rest_cherrypy",
                    format!("{field}: expected a number in {range:?}, found {v}"),
                )
            }),
    }
}

/// A two-valued string option: `true` for `default` (or when unset), `false` for `other`.
fn one_of(o: &Options, key: &str, default: &str, other: &str) -> Result<bool, ConfigError> {
    match o.string(key)?.as_deref() {
        None => Ok(true),
        Some(v) if v == default => Ok(true),
        Some(v) if v == other => Ok(false),
        Some(v) => Err(invalid(key, format!("{v:?} is not {default} or {other}"))),
    }
}

fn nodegroups(o: &Options) -> Result<BTreeMap<String, String>, ConfigError> {
    let mut out = BTreeMap::new();
    match o.get("nodegroups") {
        None => {}
        Some(serde_json::Value::Object(m)) => {
            for (name, v) in m {
                let expr = match v {
                    serde_json::Value::String(s) => s.clone(),
                    // A list of minion ids is a list target (Salt turns it into L@a,b).
                    serde_json::Value::Array(a) => {
                        let ids: Vec<String> = a
                            .iter()
                            .map(|x| {
                                x.as_str()
                                    .map(str::to_owned)
                                    .unwrap_or_else(|| x.to_string())
                            })
                            .collect();
                        format!("L@{}", ids.join(","))
                    }
                    other => {
                        return Err(invalid(
                            "nodegroups",
                            format!("{name}: expected a string or list, found {other}"),
                        ));
                    }
                };
                out.insert(name.clone(), expr);
            }
        }
        Some(other) => {
            return Err(invalid(
                "nodegroups",
                format!("expected a mapping, found {other}"),
            ));
        }
    }
    Ok(out)
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
        assert_eq!((c.api_host.as_str(), c.api_port), ("127.0.0.1", 8000));
        assert_eq!(c.keep_jobs_seconds, 86_400);
        assert_eq!(c.zmq_backlog, 4096);
        let c = MasterConfig::from_options(
            &Options::parse(
                "keep_jobs: 2\nnodegroups: {web: 'web* or G@role:web', two: [a, b]}\nrest_cherrypy: {port: '8123'}\n",
            )
            .unwrap(),
        )
        .unwrap();
        assert_eq!(c.keep_jobs_seconds, 7200);
        assert_eq!(c.nodegroups["two"], "L@a,b");
        assert_eq!(c.api_port, 8123);
        let c = MasterConfig::from_options(&Options::parse("zmq_backlog: 1000\n").unwrap());
        assert_eq!(c.unwrap().zmq_backlog, 1000);
        for bad in [
            "interface: somewhere\n",
            "ret_port: 99999\n",
            "auto_accept: maybe\n",
            "rest_cherrypy: {port: 70000}\n",
            "nodegroups: [a]\n",
            "zmq_backlog: 0\n",
        ] {
            assert!(
                MasterConfig::from_options(&Options::parse(bad).unwrap()).is_err(),
                "{bad}"
            );
        }
    }
}
