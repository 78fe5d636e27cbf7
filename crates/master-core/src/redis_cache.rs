//! `master_job_cache: redis`: jobs and returns written to Redis in the key layout of Salt's
//! `redis` returner, so tools that read Salt's keys keep working, without ever holding up a
//! publish or a return.
//!
//! Keys (as Salt's `salt/returners/redis_return.py` writes them; `ttl` is `keep_jobs_seconds`):
//! - `load:<jid>`: the job's load as JSON (`SET ... EX ttl`);
//! - `ret:<jid>`: a hash, minion id → its whole return as JSON (`HSET`, then `EXPIRE ttl`);
//! - `<minion>:<fun>`: the jid of the minion's last return of `fun` (`SET ... EX ttl`);
//! - `minions`: a set of every minion that returned (`SADD`).
//!
//! Salt also rewrites `load:<jid>` with each return's load (its `store_job` calls `save_load` for
//! every return when the cache is not `local_cache`); brine writes the job's own load once.
//!
//! The state hands [`Record`]s to a [`RedisSink`]: a bounded queue drained by one writer task
//! that pipelines them. While Redis is down or slower than [`WRITE_TIMEOUT`], records go to an
//! on-disk journal (`cachedir/brine/redis-journal.jsonl`) and are replayed in order once Redis
//! answers again; every key is idempotent, so a record written twice (a batch that reached Redis
//! but whose answer was lost) leaves the same data. The writer fires
//! `salt/brine/job_cache/degraded` and `salt/brine/job_cache/recovered` on the bus.
//!
//! `event_return: redis` (Salt's redis returner has no `event_return`, so the layout is
//! brine's): every event of the master's bus is appended to the stream
//! `salt:events:<master>` (`XADD`, fields `tag` and `data` as JSON, capped near
//! [`EVENT_STREAM_MAX`] entries) by a second writer of the same kind, with its own journal.
//! Entry ids are given when the event is taken, so a replay writes each entry once.

use std::collections::BTreeMap;
use std::io::{BufRead as _, Write as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use brine_daemon::config::{ConfigError, Options};
use brine_proto::Value;
use serde_json::{Value as Json, json};
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::events::EventBus;
use crate::json::{from_json, to_json};

/// Records waiting for the writer; beyond this the state keeps them itself.
pub const QUEUE: usize = 65_536;
/// Records per pipelined write.
const BATCH: usize = 512;
/// A write or read that takes longer counts as Redis being unavailable.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a write waits for replicas' acknowledgements (`WAIT`), in milliseconds.
const WAIT_MS: u64 = 500;
/// How often an unavailable Redis is tried again.
const RETRY: Duration = Duration::from_secs(1);

/// Salt's `redis.*` options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisOptions {
    /// `redis.host` (Salt's default: `salt`).
    pub host: String,
    /// `redis.port` (6379).
    pub port: u16,
    /// `redis.db` (0).
    pub db: i64,
    /// `redis.password`.
    pub password: Option<String>,
    /// `redis.unix_socket_path` (used instead of host and port when set).
    pub unix_socket_path: Option<PathBuf>,
    /// One server, the primary a Sentinel names, or a Redis Cluster.
    pub topology: Topology,
    /// Replicas that must acknowledge each job cache write (`WAIT`) before it counts as stored
    /// (`redis.wait_replicas`, brine's extension; 1 with Sentinel, else 0). Writes fewer
    /// replicas took stay in the journal (the cache counts as degraded), so a failover cannot
    /// lose what was acknowledged; a promoted replica left alone keeps the cache degraded until
    /// a replica joins it again.
    pub wait_replicas: u32,
}

/// Where the data lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Topology {
    /// One server: `redis.host`/`redis.port` or `redis.unix_socket_path`.
    Server,
    /// Whatever server the Sentinels name the primary of `service`
    /// (`redis.sentinel.service_name`, `redis.sentinel.nodes`: brine's extension, Salt has
    /// none). Asked again after every failure, so a failover is followed.
    Sentinel {
        /// The service (Sentinel's `monitor` name).
        service: String,
        /// The Sentinels, `(host, port)`.
        nodes: Vec<(String, u16)>,
    },
    /// A Redis Cluster (`redis.cluster_mode`, `redis.cluster.startup_nodes`, as Salt has them).
    Cluster {
        /// Nodes to learn the cluster's layout from, `(host, port)`.
        nodes: Vec<(String, u16)>,
    },
}

/// Option keys this module reads (flat `redis.host`, as Salt writes them, or nested `redis:`).
pub const KNOWN_KEYS: &[&str] = &[
    "master_job_cache",
    "event_return",
    "event_return_whitelist",
    "event_return_blacklist",
    "event_return_queue",
    "event_return_queue_max_seconds",
    "eauth_tokens",
    "eauth_redis_host",
    "eauth_redis_port",
    "brine_key_sync",
    "redis",
    "redis.host",
    "redis.port",
    "redis.db",
    "redis.password",
    "redis.unix_socket_path",
    "redis.cluster_mode",
    "redis.cluster.startup_nodes",
    "redis.cluster.skip_full_coverage_check",
    "redis.sentinel",
    "redis.sentinel.service_name",
    "redis.sentinel.nodes",
    "redis.wait_replicas",
];

fn invalid(key: &str, message: String) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_owned(),
        message,
    }
}

impl RedisOptions {
    /// The Redis job cache's options, when `master_job_cache` is `redis` (`None` for the
    /// embedded cache, `local_cache` in Salt's words).
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] for another job cache, Redis Cluster (not supported yet) or bad
    /// values.
    pub fn from_options(o: &Options) -> Result<Option<Self>, ConfigError> {
        match o.string("master_job_cache")?.as_deref() {
            None | Some("local_cache") => Ok(None),
            Some("redis") => Self::read(o).map(Some),
            Some(other) => Err(invalid(
                "master_job_cache",
                format!("{other:?}: brine serves local_cache and redis"),
            )),
        }
    }

    /// The Redis that `event_return: redis` writes the master's events to (the `redis.*`
    /// server; `None` without `event_return`).
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] for a returner brine does not have, or bad `redis.*` values.
    pub fn for_event_return(o: &Options) -> Result<Option<Self>, ConfigError> {
        let names: Vec<String> = match o.get("event_return") {
            None | Some(Json::Null) => Vec::new(),
            Some(Json::String(s)) => s
                .split(',')
                .map(|x| x.trim().to_owned())
                .filter(|x| !x.is_empty())
                .collect(),
            Some(Json::Array(a)) => a
                .iter()
                .map(|x| {
                    x.as_str()
                        .map(str::to_owned)
                        .unwrap_or_else(|| x.to_string())
                })
                .collect(),
            Some(other) => {
                return Err(invalid(
                    "event_return",
                    format!("{other}: a returner name or a list of them"),
                ));
            }
        };
        if let Some(other) = names.iter().find(|n| n.as_str() != "redis") {
            return Err(invalid(
                "event_return",
                format!("{other:?}: brine returns events to redis only"),
            ));
        }
        if names.is_empty() {
            return Ok(None);
        }
        Self::read(o).map(Some)
    }

    /// Where API tokens are kept when `eauth_tokens` is `rediscluster` (Salt's name) or
    /// `redis`: the `redis.*` server, or `eauth_redis_host` and `eauth_redis_port` as Salt's
    /// `rediscluster` token module reads them (`None`: tokens stay in this master's memory).
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] for another token store or bad values.
    pub fn for_tokens(o: &Options) -> Result<Option<Self>, ConfigError> {
        match o.string("eauth_tokens")?.as_deref() {
            None | Some("localfs") => Ok(None),
            Some("redis" | "rediscluster") => {
                let mut r = Self::read(o)?;
                if let Some(h) = o.string("eauth_redis_host")? {
                    r.host = h;
                    r.unix_socket_path = None;
                }
                if o.get("eauth_redis_port").is_some() {
                    r.port = o.int("eauth_redis_port", 6379, 1..=65535)? as u16;
                }
                Ok(Some(r))
            }
            Some(other) => Err(invalid(
                "eauth_tokens",
                format!(
                    "{other:?}: brine keeps tokens in memory (localfs) or in Redis (rediscluster, redis)"
                ),
            )),
        }
    }

    /// The server key decisions are shared through with `brine_key_sync: redis` (brine's
    /// extension): the `redis.*` one.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] for another value or bad `redis.*` values.
    pub fn for_key_sync(o: &Options) -> Result<Option<Self>, ConfigError> {
        match o.string("brine_key_sync")?.as_deref() {
            None | Some("off" | "False" | "false") => Ok(None),
            Some("redis") => Self::read(o).map(Some),
            Some(other) => Err(invalid(
                "brine_key_sync",
                format!("{other:?}: the only shared key store is redis"),
            )),
        }
    }

    /// Salt's `redis.*` options.
    fn read(o: &Options) -> Result<Self, ConfigError> {
        let nested = o.get("redis").and_then(Json::as_object);
        let raw = |k: &str| -> Option<Json> {
            o.get(&format!("redis.{k}"))
                .cloned()
                .or_else(|| nested.and_then(|n| n.get(k)).cloned())
                .filter(|v| !v.is_null())
        };
        let text = |k: &str| -> Option<String> {
            raw(k).map(|v| match v {
                Json::String(s) => s,
                other => other.to_string(),
            })
        };
        let truthy = |k: &str| {
            raw(k).is_some_and(|v| match v {
                Json::Bool(b) => b,
                Json::String(s) => {
                    matches!(s.to_ascii_lowercase().as_str(), "true" | "yes" | "on" | "1")
                }
                Json::Number(n) => n.as_i64() != Some(0),
                _ => false,
            })
        };
        // `redis.cluster.startup_nodes` flat, or `startup_nodes` under a `cluster:` map.
        let sub = |group: &str, k: &str| -> Option<Json> {
            raw(&format!("{group}.{k}"))
                .or_else(|| raw(group).and_then(|g| g.get(k).cloned()))
                .filter(|v| !v.is_null())
        };
        let cluster = truthy("cluster_mode");
        let sentinel = sub("sentinel", "service_name").map(|v| match v {
            Json::String(s) => s,
            other => other.to_string(),
        });
        let topology = match (cluster, sentinel) {
            (true, Some(_)) => {
                return Err(invalid(
                    "redis.sentinel.service_name",
                    "Redis Cluster and Sentinel exclude each other; set one".into(),
                ));
            }
            (true, None) => Topology::Cluster {
                nodes: node_list(
                    "redis.cluster.startup_nodes",
                    sub("cluster", "startup_nodes"),
                )?,
            },
            (false, Some(service)) => Topology::Sentinel {
                service,
                nodes: node_list("redis.sentinel.nodes", sub("sentinel", "nodes"))?,
            },
            (false, None) => Topology::Server,
        };
        let port = match text("port") {
            None => 6379,
            Some(p) => p
                .trim()
                .parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| invalid("redis.port", format!("{p:?} is not a port")))?,
        };
        let db = match text("db") {
            None => 0,
            Some(d) => d
                .trim()
                .parse::<i64>()
                .ok()
                .filter(|d| *d >= 0)
                .ok_or_else(|| invalid("redis.db", format!("{d:?} is not a database number")))?,
        };
        if db != 0 && matches!(topology, Topology::Cluster { .. }) {
            return Err(invalid(
                "redis.db",
                format!("{db}: a Redis Cluster has only database 0"),
            ));
        }
        let wait_replicas = match text("wait_replicas") {
            None => u32::from(matches!(topology, Topology::Sentinel { .. })),
            Some(n) => n.trim().parse::<u32>().map_err(|_| {
                invalid(
                    "redis.wait_replicas",
                    format!("{n:?} is not a number of replicas"),
                )
            })?,
        };
        if wait_replicas > 0 && matches!(topology, Topology::Cluster { .. }) {
            return Err(invalid(
                "redis.wait_replicas",
                "not with a Redis Cluster (each write may go to another primary)".into(),
            ));
        }
        Ok(Self {
            host: text("host").unwrap_or_else(|| "salt".into()),
            port,
            db,
            password: text("password").filter(|p| !p.is_empty()),
            unix_socket_path: text("unix_socket_path").map(PathBuf::from),
            topology,
            wait_replicas,
        })
    }

    /// Where the cache is, for logs (no password).
    pub fn describe(&self) -> String {
        let list = |nodes: &[(String, u16)]| {
            nodes
                .iter()
                .map(|(h, p)| format!("{h}:{p}"))
                .collect::<Vec<_>>()
                .join(",")
        };
        match (&self.topology, &self.unix_socket_path) {
            (Topology::Cluster { nodes }, _) => format!("cluster {}", list(nodes)),
            (Topology::Sentinel { service, nodes }, _) => {
                format!("sentinel {service} via {} db {}", list(nodes), self.db)
            }
            (Topology::Server, Some(p)) => format!("unix:{} db {}", p.display(), self.db),
            (Topology::Server, None) => format!("{}:{} db {}", self.host, self.port, self.db),
        }
    }

    /// A connection, or why there is none (refused, no answer within [`WRITE_TIMEOUT`]). With
    /// Sentinel, the Sentinels are asked which server is the primary now.
    async fn connect(&self) -> Result<Conn, String> {
        // The crate's own response timeout (500 ms) would call a slow Redis unavailable sooner
        // than the writer does.
        let config = redis::AsyncConnectionConfig::new().set_response_timeout(Some(WRITE_TIMEOUT));
        let open = async {
            match &self.topology {
                Topology::Server => self
                    .client()?
                    .get_multiplexed_async_connection_with_config(&config)
                    .await
                    .map(Conn::Node),
                Topology::Sentinel { service, nodes } => {
                    let mut info = redis::RedisConnectionInfo::default().set_db(self.db);
                    if let Some(pw) = &self.password {
                        info = info.set_password(pw);
                    }
                    let node = redis::sentinel::SentinelNodeConnectionInfo::default()
                        .set_redis_connection_info(info);
                    redis::sentinel::SentinelClient::build(
                        nodes.clone(),
                        service.clone(),
                        Some(node),
                        redis::sentinel::SentinelServerType::Master,
                    )?
                    .get_async_connection_with_config(&config)
                    .await
                    .map(Conn::Node)
                }
                Topology::Cluster { nodes } => {
                    let mut b = redis::cluster::ClusterClientBuilder::new(nodes.clone())
                        .response_timeout(WRITE_TIMEOUT);
                    if let Some(pw) = &self.password {
                        b = b.password(pw.clone());
                    }
                    b.build()?.get_async_connection().await.map(Conn::Cluster)
                }
            }
        };
        tokio::time::timeout(WRITE_TIMEOUT, open)
            .await
            .map_err(|_| "connecting timed out".to_owned())?
            .map_err(|e| e.to_string())
    }

    fn client(&self) -> redis::RedisResult<redis::Client> {
        // Percent-encoded: a password may hold any character.
        let enc = |s: &str| -> String {
            s.bytes()
                .map(|b| {
                    if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                        (b as char).to_string()
                    } else {
                        format!("%{b:02X}")
                    }
                })
                .collect()
        };
        let url = match &self.unix_socket_path {
            Some(p) => {
                let mut u = format!("redis+unix://{}?db={}", p.display(), self.db);
                if let Some(pw) = &self.password {
                    u.push_str(&format!("&pass={}", enc(pw)));
                }
                u
            }
            None => {
                let auth = self
                    .password
                    .as_ref()
                    .map(|pw| format!(":{}@", enc(pw)))
                    .unwrap_or_default();
                let host = if self.host.contains(':') {
                    format!("[{}]", self.host)
                } else {
                    self.host.clone()
                };
                format!("redis://{auth}{host}:{}/{}", self.port, self.db)
            }
        };
        redis::Client::open(url)
    }
}

/// `(host, port)` pairs from a list of `{host: h, port: p}` maps (Salt's form for
/// `redis.cluster.startup_nodes`) or `"h:p"` strings.
fn node_list(key: &str, v: Option<Json>) -> Result<Vec<(String, u16)>, ConfigError> {
    let bad = |why: String| invalid(key, why);
    let Some(Json::Array(items)) = v else {
        return Err(bad("a list of {host, port} nodes is required".into()));
    };
    let port = |p: &Json| -> Option<u16> {
        match p {
            Json::Number(n) => n.as_u64().and_then(|n| u16::try_from(n).ok()),
            Json::String(s) => s.trim().parse().ok(),
            _ => None,
        }
        .filter(|p| *p > 0)
    };
    let nodes = items
        .iter()
        .map(|item| {
            match item {
                Json::Object(m) => {
                    let host = m.get("host").and_then(Json::as_str);
                    let p = m.get("port").map_or(Some(6379), port);
                    host.zip(p).map(|(h, p)| (h.to_owned(), p))
                }
                Json::String(s) => s.rsplit_once(':').and_then(|(h, p)| {
                    Some((h.trim_matches(['[', ']']).to_owned(), port(&json!(p))?))
                }),
                _ => None,
            }
            .filter(|(h, _)| !h.is_empty())
            .ok_or_else(|| {
                bad(format!(
                    "{item}: a node is {{host: ..., port: ...}} or \"host:port\""
                ))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    if nodes.is_empty() {
        return Err(bad("the list of nodes is empty".into()));
    }
    Ok(nodes)
}

/// A connection to wherever the data is: one server (also the primary a Sentinel named), or a
/// cluster, which routes each key to its node.
#[derive(Clone)]
enum Conn {
    Node(redis::aio::MultiplexedConnection),
    Cluster(redis::cluster_async::ClusterConnection),
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Node(_) => "Conn::Node",
            Self::Cluster(_) => "Conn::Cluster",
        })
    }
}

impl redis::aio::ConnectionLike for Conn {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Self::Node(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Self::Node(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Node(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}

impl Conn {
    /// Run `pipe`, its answers ignored. A cluster refuses a pipeline whose keys live in other
    /// slots, so there the commands go one after another, in order.
    async fn run(&mut self, pipe: &redis::Pipeline) -> redis::RedisResult<()> {
        match self {
            Self::Node(c) => pipe.query_async::<()>(c).await,
            Self::Cluster(c) => {
                for cmd in pipe.cmd_iter() {
                    cmd.query_async::<redis::Value>(c).await?;
                }
                Ok(())
            }
        }
    }

    /// Every key matching `pattern`, by `SCAN` (on each primary of a cluster).
    async fn scan(&mut self, pattern: &str) -> redis::RedisResult<Vec<String>> {
        let scan = |cursor: u64| {
            let mut c = redis::cmd("SCAN");
            c.arg(cursor)
                .arg("MATCH")
                .arg(pattern)
                .arg("COUNT")
                .arg(1000);
            c
        };
        let mut keys = Vec::new();
        match self {
            Self::Node(c) => {
                let mut cursor = 0;
                loop {
                    let (next, batch): (u64, Vec<String>) = scan(cursor).query_async(c).await?;
                    keys.extend(batch);
                    if next == 0 {
                        break;
                    }
                    cursor = next;
                }
            }
            Self::Cluster(c) => {
                for (host, port) in primaries(c).await? {
                    let mut cursor = 0;
                    loop {
                        let at = redis::cluster_routing::RoutingInfo::SingleNode(
                            redis::cluster_routing::SingleNodeRoutingInfo::ByAddress {
                                host: host.clone(),
                                port,
                            },
                        );
                        let (next, batch): (u64, Vec<String>) =
                            redis::from_redis_value(c.route_command(scan(cursor), at).await?)?;
                        keys.extend(batch);
                        if next == 0 {
                            break;
                        }
                        cursor = next;
                    }
                }
            }
        }
        Ok(keys)
    }
}

/// A cluster's primaries, from `CLUSTER SLOTS` (`[[first, last, [host, port, ...], ...], ...]`).
async fn primaries(
    c: &mut redis::cluster_async::ClusterConnection,
) -> redis::RedisResult<Vec<(String, u16)>> {
    let slots: Vec<Vec<redis::Value>> = redis::cmd("CLUSTER").arg("SLOTS").query_async(c).await?;
    let mut out: Vec<(String, u16)> = Vec::new();
    for range in slots {
        let Some(primary) = range.into_iter().nth(2) else {
            continue;
        };
        let node: Vec<redis::Value> = redis::from_redis_value(primary)?;
        let mut it = node.into_iter();
        let (Some(h), Some(p)) = (it.next(), it.next()) else {
            continue;
        };
        let addr = (
            redis::from_redis_value::<String>(h)?,
            redis::from_redis_value::<u16>(p)?,
        );
        if !out.contains(&addr) {
            out.push(addr);
        }
    }
    Ok(out)
}

/// One write for the job cache.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    /// A job's load.
    Load {
        /// The job id.
        jid: String,
        /// Its load (function, arguments, target, user, minions, start time).
        load: Value,
    },
    /// A minion's return.
    Return {
        /// The job id.
        jid: String,
        /// The minion.
        id: String,
        /// The function it ran.
        fun: String,
        /// The whole return (`return`, `retcode`, `success`, `fun`, `fun_args`...).
        data: Value,
    },
    /// An event of the master's bus (`event_return: redis`).
    Event {
        /// The stream it goes to (`salt:events:<master>`).
        stream: String,
        /// Its entry id in the stream (`<unix ms>-<n>`, given once when the event is taken,
        /// so a replay writes the same entry or nothing).
        entry: String,
        /// The event's tag.
        tag: String,
        /// Its data.
        data: Value,
    },
}

/// Entries kept per event stream (`XADD ... MAXLEN ~`).
pub const EVENT_STREAM_MAX: u64 = 100_000;

/// `XADD` that writes an entry once: a replayed entry (its id not above the stream's last)
/// is refused by Redis, and the refusal is swallowed so the rest of the pipeline goes on.
const XADD_ONCE: &str = "redis.pcall('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], ARGV[2], \
                         'tag', ARGV[3], 'data', ARGV[4]) return 0";

impl Record {
    /// The journal's line for this record.
    fn to_line(&self) -> Json {
        match self {
            Self::Load { jid, load } => json!({"load": jid, "data": to_json(load)}),
            Self::Return { jid, id, fun, data } => {
                json!({"ret": jid, "id": id, "fun": fun, "data": to_json(data)})
            }
            Self::Event {
                stream,
                entry,
                tag,
                data,
            } => json!({"event": tag, "stream": stream, "entry": entry, "data": to_json(data)}),
        }
    }

    fn from_line(j: &Json) -> Option<Self> {
        let s = |k: &str| j.get(k).and_then(Json::as_str).map(str::to_owned);
        let data = from_json(j.get("data")?);
        if let Some(jid) = s("load") {
            return Some(Self::Load { jid, load: data });
        }
        if let Some(tag) = s("event") {
            return Some(Self::Event {
                stream: s("stream")?,
                entry: s("entry")?,
                tag,
                data,
            });
        }
        Some(Self::Return {
            jid: s("ret")?,
            id: s("id")?,
            fun: s("fun").unwrap_or_default(),
            data,
        })
    }

    /// The commands that store this record, each with the one key it writes.
    fn commands(&self, ttl: u64) -> Vec<(String, redis::Cmd)> {
        let json = |v: &Value| serde_json::to_string(&to_json(v)).unwrap_or_default();
        let set = |key: &str, value: &str| {
            let mut c = redis::cmd("SET");
            c.arg(key).arg(value);
            if ttl > 0 {
                c.arg("EX").arg(ttl);
            }
            (key.to_owned(), c)
        };
        match self {
            Self::Load { jid, load } => vec![set(&format!("load:{jid}"), &json(load))],
            Self::Return { jid, id, fun, data } => {
                let key = format!("ret:{jid}");
                let mut hset = redis::cmd("HSET");
                hset.arg(&key).arg(id).arg(json(data));
                let mut out = vec![(key.clone(), hset)];
                if ttl > 0 {
                    let mut exp = redis::cmd("EXPIRE");
                    exp.arg(&key).arg(ttl);
                    out.push((key, exp));
                }
                out.push(set(&format!("{id}:{fun}"), jid));
                let mut sadd = redis::cmd("SADD");
                sadd.arg("minions").arg(id);
                out.push(("minions".to_owned(), sadd));
                out
            }
            Self::Event {
                stream,
                entry,
                tag,
                data,
            } => {
                let mut c = redis::cmd("EVAL");
                c.arg(XADD_ONCE)
                    .arg(1)
                    .arg(stream)
                    .arg(EVENT_STREAM_MAX)
                    .arg(entry)
                    .arg(tag)
                    .arg(json(data));
                vec![(stream.clone(), c)]
            }
        }
    }
}

/// Store `records` over `conn`: one pipeline on a server, followed by `WAIT wait` when
/// replicas must acknowledge; on a cluster, one pipeline per key (a cluster refuses pipelines
/// across slots), all in flight at once.
async fn store(conn: &Conn, records: &[Record], ttl: u64, wait: u32) -> Result<(), String> {
    match conn {
        Conn::Node(c) => {
            let mut pipe = redis::pipe();
            for r in records {
                for (_, cmd) in r.commands(ttl) {
                    pipe.add_command(cmd).ignore();
                }
            }
            if wait > 0 {
                pipe.cmd("WAIT").arg(wait).arg(WAIT_MS);
            }
            let mut c = c.clone();
            if wait == 0 {
                return pipe
                    .query_async::<()>(&mut c)
                    .await
                    .map_err(|e| e.to_string());
            }
            let (acked,): (u32,) = pipe.query_async(&mut c).await.map_err(|e| e.to_string())?;
            if acked < wait {
                return Err(format!(
                    "{acked} of the {wait} replicas required acknowledged the writes"
                ));
            }
            Ok(())
        }
        Conn::Cluster(c) => {
            let mut by_key: BTreeMap<String, redis::Pipeline> = BTreeMap::new();
            for r in records {
                for (key, cmd) in r.commands(ttl) {
                    by_key
                        .entry(key)
                        .or_insert_with(redis::pipe)
                        .add_command(cmd)
                        .ignore();
                }
            }
            let mut set = tokio::task::JoinSet::new();
            for pipe in by_key.into_values() {
                let mut c = c.clone();
                set.spawn(async move { pipe.query_async::<()>(&mut c).await });
            }
            while let Some(r) = set.join_next().await {
                r.map_err(|e| e.to_string())?.map_err(|e| e.to_string())?;
            }
            Ok(())
        }
    }
}

/// Where the state hands its records: never waits.
#[derive(Debug, Clone)]
pub struct RedisSink {
    tx: mpsc::Sender<Record>,
}

impl RedisSink {
    /// Queue `r` for the writer; given back when the queue is full (the caller keeps it and
    /// offers it again later).
    ///
    /// # Errors
    /// The record, when the queue is full or the writer has stopped.
    pub fn offer(&self, r: Record) -> Result<(), Record> {
        self.tx.try_send(r).map_err(|e| match e {
            mpsc::error::TrySendError::Full(r) | mpsc::error::TrySendError::Closed(r) => r,
        })
    }

    /// Queue `r`, waiting for room (only when stopping: nothing may be left behind then).
    pub async fn send(&self, r: Record) {
        let _ = self.tx.send(r).await;
    }
}

/// The on-disk journal of records Redis has not taken yet.
struct Journal {
    path: PathBuf,
}

impl Journal {
    fn append(&self, records: &[Record]) {
        let mut buf = Vec::new();
        for r in records {
            let _ = serde_json::to_writer(&mut buf, &r.to_line());
            buf.push(b'\n');
        }
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .and_then(|mut f| f.write_all(&buf));
        if let Err(e) = written {
            // Nothing else can keep them: say how many were lost and why.
            warn!(path = %self.path.display(), records = records.len(), error = %e, "job cache journal write failed; these records are lost");
        }
    }

    fn is_empty(&self) -> bool {
        std::fs::metadata(&self.path).map_or(true, |m| m.len() == 0)
    }

    fn read(&self) -> Vec<Record> {
        let Ok(f) = std::fs::File::open(&self.path) else {
            return Vec::new();
        };
        std::io::BufReader::new(f)
            .lines()
            .map_while(Result::ok)
            // A torn last line (a crash mid-append) is skipped.
            .filter_map(|l| serde_json::from_str::<Json>(&l).ok())
            .filter_map(|j| Record::from_line(&j))
            .collect()
    }

    fn clear(&self) {
        if let Err(e) = std::fs::remove_file(&self.path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            warn!(path = %self.path.display(), error = %e, "cannot remove the replayed job cache journal");
        }
    }
}

/// The writer: takes records off the queue and pipelines them to Redis, or to the journal while
/// Redis is unavailable.
struct Writer {
    opts: RedisOptions,
    ttl: u64,
    journal: Journal,
    bus: EventBus,
    conn: Option<Conn>,
    degraded: bool,
    /// [`SYNCED`]'s path, and when it was last written (the job cache's writer only).
    synced: Option<(PathBuf, Option<Instant>)>,
    /// What it writes, for logs and its events' tags (`job_cache`, `event_return`).
    what: &'static str,
}

impl Writer {
    async fn connect(&mut self) -> Result<(), String> {
        if self.conn.is_some() {
            return Ok(());
        }
        self.conn = Some(self.opts.connect().await?);
        Ok(())
    }

    async fn write(&mut self, records: &[Record]) -> Result<(), String> {
        self.connect().await?;
        for chunk in records.chunks(BATCH) {
            let conn = self.conn.as_ref().expect("connected above");
            let r = tokio::time::timeout(
                WRITE_TIMEOUT,
                store(conn, chunk, self.ttl, self.opts.wait_replicas),
            )
            .await;
            let failed = match r {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(e),
                Err(_) => Some(format!("no answer within {WRITE_TIMEOUT:?}")),
            };
            if let Some(e) = failed {
                self.conn = None;
                return Err(e);
            }
        }
        Ok(())
    }

    fn degrade(&mut self, why: &str) {
        if self.degraded {
            return;
        }
        self.degraded = true;
        warn!(writer = self.what, redis = %self.opts.describe(), reason = why, journal = %self.journal.path.display(), "Redis writer degraded: Redis is unavailable; records go to the journal until it is back");
        self.bus.fire(
            format!("salt/brine/{}/degraded", self.what),
            Value::map()
                .with("redis", self.opts.describe())
                .with("reason", why)
                .with("journal", self.journal.path.display().to_string()),
        );
    }

    /// Replay the journal in order; `true` once it is empty and Redis took everything.
    async fn recover(&mut self) -> bool {
        // Only a Redis that answers is worth reading the journal for.
        if let Err(e) = self.connect().await {
            tracing::debug!(error = %e, "Redis still unavailable");
            return false;
        }
        let records = self.journal.read();
        if let Err(e) = self.write(&records).await {
            tracing::debug!(error = %e, "Redis still unavailable");
            return false;
        }
        self.journal.clear();
        if self.degraded {
            self.degraded = false;
            info!(writer = self.what, redis = %self.opts.describe(), replayed = records.len(), "Redis writer recovered: journal replayed to Redis");
            self.bus.fire(
                format!("salt/brine/{}/recovered", self.what),
                Value::map()
                    .with("redis", self.opts.describe())
                    .with("replayed", records.len() as u64),
            );
        }
        true
    }

    /// Note that every record received up to `upto` is in Redis (at most once a second).
    fn note_synced(&mut self, upto: std::time::SystemTime) {
        let Some((path, last)) = &mut self.synced else {
            return;
        };
        if last.is_some_and(|t| t.elapsed() < Duration::from_secs(1)) {
            return;
        }
        *last = Some(Instant::now());
        let micros = upto
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros());
        let tmp = path.with_extension("tmp");
        if std::fs::write(&tmp, micros.to_string()).is_ok() {
            let _ = std::fs::rename(&tmp, &*path);
        }
    }

    async fn run(mut self, mut rx: mpsc::Receiver<Record>) {
        if !self.journal.is_empty() {
            // Left from before a restart: replayed before anything newer.
            self.degrade("records left in the journal from before a restart");
        }
        let mut retry = tokio::time::interval(RETRY);
        retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                r = rx.recv() => {
                    let Some(first) = r else { break };
                    let received = std::time::SystemTime::now();
                    let mut batch = vec![first];
                    while batch.len() < BATCH * 8 {
                        match rx.try_recv() {
                            Ok(r) => batch.push(r),
                            Err(_) => break,
                        }
                    }
                    if self.degraded {
                        self.journal.append(&batch);
                    } else if let Err(e) = self.write(&batch).await {
                        self.degrade(&e);
                        self.journal.append(&batch);
                    } else if rx.is_empty() {
                        self.note_synced(received);
                    }
                }
                _ = retry.tick(), if self.degraded => {
                    let tried = std::time::SystemTime::now();
                    if self.recover().await && rx.is_empty() {
                        self.note_synced(tried);
                    }
                }
            }
        }
        // Stopping: what is still queued goes to Redis if it answers, else to the journal.
        let mut rest = Vec::new();
        while let Ok(r) = rx.try_recv() {
            rest.push(r);
        }
        if !rest.is_empty() && (self.degraded || self.write(&rest).await.is_err()) {
            self.journal.append(&rest);
        }
    }
}

/// The file under `cachedir/brine` where the writer notes when everything offered to it had
/// reached Redis.
const SYNCED: &str = "redis-synced";

/// Until when (as noted by the last run's writer) every record offered to it had reached Redis;
/// `None` if never noted. After a `kill -9`, jobs the embedded cache changed after this may be
/// missing from Redis ([`crate::server::CoreState::resync_redis`]).
pub fn synced_until(cachedir: &Path) -> Option<std::time::SystemTime> {
    let text = std::fs::read_to_string(cachedir.join("brine").join(SYNCED)).ok()?;
    let micros: u64 = text.trim().parse().ok()?;
    Some(std::time::UNIX_EPOCH + Duration::from_micros(micros))
}

/// Start the writer (a task on the current runtime) for `opts`, with its journal under
/// `cachedir/brine`, keys expiring after `ttl` seconds (0: never). The task ends once every
/// sink is dropped and what was queued is written (to Redis or the journal).
pub fn spawn_writer(
    opts: &RedisOptions,
    cachedir: &Path,
    ttl: u64,
    bus: EventBus,
) -> (RedisSink, tokio::task::JoinHandle<()>) {
    spawn(opts, cachedir, ttl, bus, "job_cache", "redis-journal.jsonl")
}

/// Start the writer of `event_return: redis` for `opts`: like [`spawn_writer`], with its own
/// queue and journal (`cachedir/brine/redis-events-journal.jsonl`), so events never hold up
/// the job cache; it fires `salt/brine/event_return/degraded` and `.../recovered`.
pub fn spawn_event_writer(
    opts: &RedisOptions,
    cachedir: &Path,
    bus: EventBus,
) -> (RedisSink, tokio::task::JoinHandle<()>) {
    spawn(
        opts,
        cachedir,
        0,
        bus,
        "event_return",
        "redis-events-journal.jsonl",
    )
}

/// A writer for `what` with its journal `cachedir/brine/<journal>`; the job cache's also notes
/// how far Redis is complete ([`SYNCED`]).
fn spawn(
    opts: &RedisOptions,
    cachedir: &Path,
    ttl: u64,
    bus: EventBus,
    what: &'static str,
    journal: &str,
) -> (RedisSink, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(QUEUE);
    let dir = cachedir.join("brine");
    let _ = std::fs::create_dir_all(&dir);
    let w = Writer {
        opts: opts.clone(),
        ttl,
        journal: Journal {
            path: dir.join(journal),
        },
        bus,
        conn: None,
        degraded: false,
        synced: (what == "job_cache").then(|| (dir.join(SYNCED), None)),
        what,
    };
    (RedisSink { tx }, tokio::spawn(w.run(rx)))
}

/// Reads jobs back from Redis (another master's, or this one's after a restart), and keeps API
/// tokens there when masters share them.
#[derive(Debug)]
pub struct RedisReader {
    opts: RedisOptions,
    conn: tokio::sync::Mutex<Option<Conn>>,
}

impl RedisReader {
    /// A reader for `opts` (connects on first use).
    pub fn new(opts: &RedisOptions) -> Self {
        Self {
            opts: opts.clone(),
            conn: tokio::sync::Mutex::new(None),
        }
    }

    async fn conn(&self) -> Option<Conn> {
        let mut c = self.conn.lock().await;
        if c.is_none() {
            *c = Some(self.opts.connect().await.ok()?);
        }
        c.clone()
    }

    async fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Option<T> {
        let mut conn = self.conn().await?;
        match tokio::time::timeout(WRITE_TIMEOUT, cmd.query_async::<T>(&mut conn)).await {
            Ok(Ok(v)) => Some(v),
            Ok(Err(e)) => {
                warn!(redis = %self.opts.describe(), error = %e, "job cache read failed");
                *self.conn.lock().await = None;
                None
            }
            Err(_) => {
                warn!(redis = %self.opts.describe(), "job cache read timed out");
                *self.conn.lock().await = None;
                None
            }
        }
    }

    /// Run `cmd`: its answer, or `None` when Redis could not be asked.
    pub async fn get<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Option<T> {
        self.query(cmd).await
    }

    /// Run `pipe` (its answers ignored): `false` when Redis could not be asked.
    pub async fn run(&self, pipe: &redis::Pipeline) -> bool {
        let Some(mut conn) = self.conn().await else {
            return false;
        };
        match tokio::time::timeout(WRITE_TIMEOUT, conn.run(pipe)).await {
            Ok(Ok(())) => true,
            _ => {
                *self.conn.lock().await = None;
                false
            }
        }
    }

    /// A job's load and returns, if Redis has its load.
    pub async fn job(&self, jid: &str) -> Option<(Value, BTreeMap<String, Value>)> {
        let load: Option<String> = self
            .query(redis::cmd("GET").arg(format!("load:{jid}")))
            .await?;
        let load = from_json(&serde_json::from_str::<Json>(&load?).ok()?);
        let rets: BTreeMap<String, String> = self
            .query(redis::cmd("HGETALL").arg(format!("ret:{jid}")))
            .await
            .unwrap_or_default();
        let returns = rets
            .into_iter()
            .filter_map(|(id, r)| Some((id, from_json(&serde_json::from_str::<Json>(&r).ok()?))))
            .collect();
        Some((load, returns))
    }

    /// Store API token `tok` (Salt's `rediscluster` layout: the token is the key, its data
    /// msgpack), expiring after `ttl` seconds. `false` when Redis did not take it.
    pub async fn put_token(&self, tok: &str, data: &Value, ttl: u64) -> bool {
        let bytes = brine_proto::codec::encode_wire(data);
        self.query::<()>(
            redis::cmd("SET")
                .arg(tok)
                .arg(bytes)
                .arg("EX")
                .arg(ttl.max(1)),
        )
        .await
        .is_some()
    }

    /// API token `tok`'s data: `Ok(None)` when Redis does not have it, `Err` when Redis could
    /// not be asked (the caller refuses the token: it may have been revoked elsewhere).
    ///
    /// # Errors
    /// Redis unreachable or its answer unreadable.
    pub async fn token(&self, tok: &str) -> Result<Option<Value>, ()> {
        let raw: Option<Vec<u8>> = self.query(redis::cmd("GET").arg(tok)).await.ok_or(())?;
        match raw {
            None => Ok(None),
            Some(b) => brine_proto::codec::decode(&b).map(Some).map_err(|_| ()),
        }
    }

    /// Forget API token `tok` everywhere. `false` when Redis could not be asked.
    pub async fn delete_token(&self, tok: &str) -> bool {
        self.query::<()>(redis::cmd("DEL").arg(tok)).await.is_some()
    }

    /// Every job Redis has a load for (`load:*`), by jid.
    pub async fn list(&self) -> Vec<(String, Value)> {
        let Some(mut conn) = self.conn().await else {
            return Vec::new();
        };
        let keys = match tokio::time::timeout(WRITE_TIMEOUT * 5, conn.scan("load:*")).await {
            Ok(Ok(keys)) => keys,
            Ok(Err(e)) => {
                warn!(redis = %self.opts.describe(), error = %e, "listing the job cache failed");
                *self.conn.lock().await = None;
                return Vec::new();
            }
            Err(_) => {
                warn!(redis = %self.opts.describe(), "listing the job cache timed out");
                *self.conn.lock().await = None;
                return Vec::new();
            }
        };
        let mut out = Vec::new();
        for chunk in keys.chunks(500) {
            let Some(vals): Option<Vec<Option<String>>> =
                self.query(redis::cmd("MGET").arg(chunk)).await
            else {
                continue;
            };
            for (k, v) in chunk.iter().zip(vals) {
                let (Some(jid), Some(v)) = (k.strip_prefix("load:"), v) else {
                    continue;
                };
                if let Ok(j) = serde_json::from_str::<Json>(&v) {
                    out.push((jid.to_owned(), from_json(&j)));
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn salt_options_flat_or_nested() {
        let o = Options::parse(
            "master_job_cache: redis\nredis.host: 127.0.0.1\nredis.port: '7000'\nredis.db: 2\n",
        )
        .unwrap();
        let r = RedisOptions::from_options(&o).unwrap().unwrap();
        assert_eq!((r.host.as_str(), r.port, r.db), ("127.0.0.1", 7000, 2));
        let o =
            Options::parse("master_job_cache: redis\nredis: {host: h, password: s3}\n").unwrap();
        let r = RedisOptions::from_options(&o).unwrap().unwrap();
        assert_eq!(
            (r.host.as_str(), r.port, r.password.as_deref()),
            ("h", 6379, Some("s3"))
        );
        assert_eq!(
            RedisOptions::from_options(&Options::parse("a: 1\n").unwrap()).unwrap(),
            None
        );
        // Salt's cluster form, and brine's Sentinel form (maps or "host:port").
        let o = Options::parse(
            "master_job_cache: redis\nredis.cluster_mode: true\nredis.cluster.startup_nodes:\n  - host: a\n    port: 7000\n  - host: b\n    port: '7001'\n",
        )
        .unwrap();
        let r = RedisOptions::from_options(&o).unwrap().unwrap();
        assert_eq!(
            r.topology,
            Topology::Cluster {
                nodes: vec![("a".into(), 7000), ("b".into(), 7001)]
            }
        );
        assert_eq!(r.wait_replicas, 0);
        let o = Options::parse(
            "master_job_cache: redis\nredis:\n  sentinel:\n    service_name: mymaster\n    nodes: ['s1:26379', {host: s2}]\n",
        )
        .unwrap();
        let r = RedisOptions::from_options(&o).unwrap().unwrap();
        assert_eq!(
            r.topology,
            Topology::Sentinel {
                service: "mymaster".into(),
                nodes: vec![("s1".into(), 26379), ("s2".into(), 6379)]
            }
        );
        assert_eq!(
            r.wait_replicas, 1,
            "Sentinel waits for one replica by default"
        );
        assert!(
            r.describe()
                .contains("sentinel mymaster via s1:26379,s2:6379")
        );
        for bad in [
            "master_job_cache: mysql\n",
            "master_job_cache: redis\nredis.port: 0\n",
            // Cluster without nodes, with a database, with WAIT; both cluster and Sentinel.
            "master_job_cache: redis\nredis.cluster_mode: true\n",
            "master_job_cache: redis\nredis.cluster_mode: true\nredis.db: 1\nredis.cluster.startup_nodes: ['a:1']\n",
            "master_job_cache: redis\nredis.cluster_mode: true\nredis.wait_replicas: 1\nredis.cluster.startup_nodes: ['a:1']\n",
            "master_job_cache: redis\nredis.cluster_mode: true\nredis.cluster.startup_nodes: ['a:1']\nredis.sentinel.service_name: m\n",
            "master_job_cache: redis\nredis.sentinel.service_name: m\nredis.sentinel.nodes: ['s1:0']\n",
            "master_job_cache: redis\nredis.sentinel.service_name: m\nredis.sentinel.nodes: [3]\n",
        ] {
            assert!(
                RedisOptions::from_options(&Options::parse(bad).unwrap()).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn journal_lines_round_trip_and_torn_lines_are_skipped() {
        let d = tempfile::tempdir().unwrap();
        let j = Journal {
            path: d.path().join("j.jsonl"),
        };
        let recs = vec![
            Record::Load {
                jid: "1".into(),
                load: Value::map().with("fun", "test.ping"),
            },
            Record::Return {
                jid: "1".into(),
                id: "m".into(),
                fun: "test.ping".into(),
                data: Value::map().with("return", true),
            },
        ];
        j.append(&recs);
        std::fs::OpenOptions::new()
            .append(true)
            .open(&j.path)
            .unwrap()
            .write_all(b"{\"ret\": \"2\", \"id\"")
            .unwrap();
        assert_eq!(j.read(), recs);
        j.clear();
        assert!(j.is_empty());
    }
}
