//! The master's serving core, shared by `mofm` and `syndic`: the ret port (one request worker
//! per core doing RSA, AES and msgpack), and one driver task that owns the master's state
//! ([`state::CoreState`]: jobs and their tracker, the job cache, presence, syndics, event
//! de-duplication) and publishes what it asks for. Daemons add their own fronts (mofm's HTTP
//! API, the syndic's upstream links) around [`MasterCore`], a handle that queues questions and
//! changes to the driver.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod book;
mod state;
mod watch;

pub use state::{CachedJob, CoreEvent, CoreState, Transmit};

use crate::CoreError;
use crate::config::MasterConfig;
use crate::events::EventBus;
use crate::jobcache::JobCache;
use crate::jobs::Missing;
use crate::keys::{KeyDir, KeyStore};
use crate::lock;
use crate::publish::JobPublisher;
use crate::requests::{Handled, Policy, RequestHandler};
use crate::secrets::{Secrets, load_or_create_key, load_or_create_master_key};
use crate::targeting::{Fleet, as_compound};
use brine_proto::Value;
use brine_proto::auth::MasterIdentity;
use brine_proto::crypt::SigAlgo;
use brine_proto::loads::{JobLoad, ReturnLoad};
use brine_proto::target::Tri;
use brine_transport::{Context, OsEntropy, Publisher, Router, SocketOptions, tcp_endpoint};
use tracing::{info, warn};

/// The OS random source (brine-transport's).
pub use brine_transport::OsEntropy as Rng;

/// A brine syndic whose heartbeat (every 2 s) is older than this is not waited for.
pub(crate) const SYNDIC_HEARTBEAT_STALE: Duration = Duration::from_secs(7);

/// The longest a job's timeout (`-t`, an upper master's `to`) is taken as.
pub const MAX_JOB_TIMEOUT: u64 = 30 * 86_400;

/// A job this master published and is tracking.
#[derive(Debug, Clone)]
pub struct ActiveJob {
    /// The cached load (function, arguments, target, user, minions, start time).
    pub load: Value,
    /// Minions expected to return (a set: at 50,000 minions a list made each return and each
    /// syndic report a linear scan).
    pub expected: BTreeSet<String>,
    /// Returns so far (the whole return objects).
    pub returns: BTreeMap<String, Value>,
    /// Minions in the order their returns arrived (what [`CoreState::job_since`] counts in).
    pub arrived: Vec<String>,
    /// Set when final: minions that will not return, and why.
    pub missing: Option<BTreeMap<String, Missing>>,
    finished_at: Option<Instant>,
}

/// A job's load, its returns, and (once final) who is missing and why.
pub type JobView = (
    Value,
    BTreeMap<String, Value>,
    Option<BTreeMap<String, Missing>>,
);

/// What a client following a job has not seen yet ([`CoreState::job_since`]).
#[derive(Debug, Clone)]
pub struct JobSince {
    /// The job's load (with `minions` only when asked from the start).
    pub load: Value,
    /// Returns after the cursor the client gave, in the order they arrived.
    pub new: Vec<(String, Value)>,
    /// Returns so far: the cursor for the next call.
    pub cursor: usize,
    /// Set when final: minions that will not return, and why.
    pub missing: Option<BTreeMap<String, Missing>>,
}

impl JobSince {
    /// Everything of a job read from a store (its order of arrival is not kept there).
    pub(crate) fn whole((load, returns, missing): JobView) -> Self {
        Self {
            load,
            cursor: returns.len(),
            new: returns.into_iter().collect(),
            missing,
        }
    }
}

/// How long after its deadline (`to` + `gather_job_timeout`) a stored job still counts as
/// running: returns a syndic replays or re-routes after a master died reach the store through
/// a restarted master or another one, which takes a few seconds more under load (3,000 minions
/// in the fault suite: up to ~13 s).
const STORED_GRACE_SECS: u64 = 15;

/// Whether a job known only from a store (the master's own cache after a restart, or the Redis
/// job cache for another master's job) may still get returns: its deadline, from its `to` and
/// `gather_job_timeout`, has not passed, and it is younger than a finished job stays in memory
/// (an older job not in memory finished normally and was let go).
pub(crate) fn stored_job_open(load: &Value, gather_job_timeout: u64, now_micros: u64) -> bool {
    let Some(to) = load
        .get("to")
        .and_then(Value::as_i64)
        .and_then(|t| u64::try_from(t).ok())
    else {
        return false;
    };
    let Some(start) = load
        .get("jid")
        .and_then(Value::as_str)
        .and_then(brine_proto::jid::unix_micros)
    else {
        return false;
    };
    let open_for = to
        .saturating_add(gather_job_timeout)
        .saturating_add(STORED_GRACE_SECS)
        .min(book::KEEP_FINISHED.as_secs());
    now_micros < start.saturating_add(open_for.saturating_mul(1_000_000))
}

/// A stored job as the API shows it: final, and every expected minion without a return
/// missing (no response); or still running (no missing list yet) while
/// [`stored_job_open`].
pub(crate) fn stored_view(
    load: Value,
    returns: BTreeMap<String, Value>,
    gather_job_timeout: u64,
) -> JobView {
    if stored_job_open(&load, gather_job_timeout, crate::events::unix_micros()) {
        return (load, returns, None);
    }
    let missing = load
        .get("minions")
        .map(Value::str_items)
        .unwrap_or_default()
        .into_iter()
        .filter(|id| !returns.contains_key(id))
        .map(|id| (id, Missing::NoResponse))
        .collect();
    (load, returns, Some(missing))
}

/// A publish request from the API.
#[derive(Debug, Clone)]
pub struct PublishSpec {
    /// Target expression.
    pub tgt: Value,
    /// Target type (`glob`, `pcre`, `list`, `grain`, `grain_pcre`, `pillar`, `compound`,
    /// `nodegroup`, `ipcidr`).
    pub tgt_type: String,
    /// Function.
    pub fun: String,
    /// Arguments (a trailing `__kwarg__` map for keyword arguments).
    pub arg: Vec<Value>,
    /// Seconds before silent minions are asked (`-t`).
    pub timeout: Option<u64>,
    /// Returners.
    pub ret: String,
}

/// Why a publish was refused.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The target does not parse or names an unknown nodegroup.
    #[error("{0}")]
    BadTarget(String),
    /// The caller may not run this.
    #[error("permission denied: {0}")]
    Denied(String),
    /// The publish socket failed.
    #[error("publish failed: {0}")]
    Transport(String),
}

/// Where an ACL lets its holder run one function.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Allowed {
    /// On any minion.
    Anywhere,
    /// On minions matching one of these compound targets (none: nowhere).
    Within(Vec<String>),
}

/// The minions `reach` may run a job on that are not syndics (syndics relay rather than run).
fn not_syndics(reach: &crate::targeting::Reach, syndics: &BTreeSet<String>) -> Vec<String> {
    reach
        .all()
        .into_iter()
        .filter(|m| !syndics.contains(m))
        .collect()
}

/// Minions among `ids` that match none of the compound targets `within` for sure.
fn outside_acl(ids: &[String], within: &[String], fleet: &Fleet<'_>) -> Vec<String> {
    let nil = Value::Nil;
    ids.iter()
        .filter(|id| {
            let facts = brine_proto::target::Facts {
                id,
                grains: fleet.grains.get(*id).unwrap_or(&nil),
                pillar: fleet.pillars.get(*id).unwrap_or(&nil),
            };
            // A resource manager may run a job for its resources: only its own id vouches.
            !within.iter().any(|t| {
                brine_proto::target::evaluate(
                    &Value::str(t),
                    "compound",
                    ":",
                    &facts,
                    &brine_proto::target::NoNodegroups,
                ) == Ok(Tri::Yes)
            })
        })
        .cloned()
        .collect()
}

/// `( tgt ) and ( acl1 ) or ...`: the target minions evaluate so that only those the ACL
/// allows run the job. `None` when the target or no ACL target can be written as compound.
fn narrow(tgt: &Value, tgt_type: &str, delimiter: &str, within: &[String]) -> Option<String> {
    let base = as_compound(tgt, tgt_type, delimiter)?;
    let acl: Vec<String> = within
        .iter()
        .filter_map(|t| as_compound(&Value::str(t), "compound", ":"))
        .collect();
    if acl.is_empty() {
        return None;
    }
    Some(format!("{base} and ( {} )", acl.join(" or ")))
}

/// A published job.
#[derive(Debug, Clone)]
pub struct Published {
    /// Its jid (empty when nothing matched and nothing was sent).
    pub jid: String,
    /// The minions expected to return.
    pub minions: Vec<String>,
}

/// A change or question for the state, run by the driver: it returns what delivers the answer,
/// called once the driver has taken the state's outputs (so a job is on its way to the PUB
/// socket before its publisher hears its jid).
type Cmd = Box<dyn FnOnce(&mut CoreState, Instant) -> Deliver + Send>;
type Deliver = Box<dyn FnOnce() + Send>;

/// Commands waiting for the driver. Request workers wait when it is full: the state is behind.
const CMD_QUEUE: usize = 16_384;

/// The most commands the driver takes in one turn before it publishes and fires what they
/// caused.
const CMD_BATCH: usize = 512;

/// The handle the daemon's fronts (API, upstream links) and the request workers hold: the
/// configuration, the pki directory, the event bus, and a queue to the driver that owns the
/// state ([`CoreState`]). Cheap to share behind an `Arc`; every question about jobs is answered
/// by the driver.
pub struct MasterCore {
    /// The configuration.
    pub cfg: MasterConfig,
    keys: KeyStore,
    grains: crate::mine::DataCache,
    /// The event bus.
    pub bus: EventBus,
    tx: tokio::sync::mpsc::Sender<Cmd>,
    /// Woken on every return taken and every job made final (long polls, `wait_job`).
    jobs_changed: tokio::sync::Notify,
    /// Where returns go besides the cache (a syndic's upstream links); called by the driver.
    return_tap: std::sync::OnceLock<ReturnTap>,
    publish_port: u16,
    /// Reads jobs back from the Redis job cache (`master_job_cache: redis`): jobs another
    /// master published, or this one before a restart that lost its disk.
    redis: Option<crate::redis_cache::RedisReader>,
}

/// A hook called with every return this master receives (not its own `find_job` answers).
pub type ReturnTap = Box<dyn Fn(&ReturnLoad) + Send + Sync>;

impl std::fmt::Debug for MasterCore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MasterCore")
            .field("publish_port", &self.publish_port)
            .finish_non_exhaustive()
    }
}

/// Write `data` to a new file readable by the owner only (0600).
///
/// # Errors
/// [`CoreError::Io`] naming the path.
pub fn write_private(path: &std::path::Path, data: &[u8]) -> Result<(), CoreError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(CoreError::io(dir))?;
    }
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(CoreError::io(path))?;
    f.write_all(data).map_err(CoreError::io(path))
}

/// `n` random bytes as hex.
pub fn random_hex(n: usize) -> String {
    let mut b = vec![0u8; n];
    OsEntropy::fill_bytes(&mut b);
    hex::encode(b)
}

pub use brine_proto::jid::{start_time, valid_jid};
pub use brine_transport::unix_secs;
use watch::check_dropfile;

impl MasterCore {
    /// Run `f` on the state in the driver and return its answer (`None` once the driver has
    /// stopped).
    pub async fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut CoreState, Instant) -> T + Send + 'static,
    ) -> Option<T> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let cmd: Cmd = Box::new(move |st, now| {
            let v = f(st, now);
            Box::new(move || {
                let _ = tx.send(v);
            })
        });
        self.tx.send(cmd).await.ok()?;
        rx.await.ok()
    }

    /// Hand `f` to the driver without waiting for it to run; `after` runs once the driver has
    /// taken the outputs of the turn `f` ran in and put the job cache on disk.
    async fn tell_then(
        &self,
        f: impl FnOnce(&mut CoreState, Instant) + Send + 'static,
        after: impl FnOnce() + Send + 'static,
    ) {
        let cmd: Cmd = Box::new(move |st, now| {
            f(st, now);
            Box::new(after)
        });
        let _ = self.tx.send(cmd).await;
    }

    /// Hand `f` to the driver without waiting for it to run.
    async fn tell(&self, f: impl FnOnce(&mut CoreState, Instant) + Send + 'static) {
        let cmd: Cmd = Box::new(move |st, now| {
            f(st, now);
            Box::new(|| {})
        });
        let _ = self.tx.send(cmd).await;
    }

    /// The returns of `ids` for `jid` that the shared job cache (Redis) holds, as returns
    /// (none without Redis, or when it cannot be asked).
    async fn returns_in_shared_cache(&self, jid: &str, ids: &[String]) -> Vec<ReturnLoad> {
        let Some(redis) = self.redis.as_ref() else {
            return Vec::new();
        };
        if ids.is_empty() {
            return Vec::new();
        }
        let Some(found): Option<Vec<Option<String>>> = redis
            .get(redis::cmd("HMGET").arg(format!("ret:{jid}")).arg(ids))
            .await
        else {
            return Vec::new();
        };
        ids.iter()
            .zip(found)
            .filter_map(|(id, raw)| {
                let json = serde_json::from_str::<serde_json::Value>(&raw?).ok()?;
                let mut v = crate::json::from_json(&json);
                v.insert("cmd", "_return");
                let r = ReturnLoad::from_value(&v).ok()?;
                // The hash's field names the minion; a value that says otherwise is not taken.
                (r.id == *id && r.jid == jid).then_some(r)
            })
            .collect()
    }

    /// Accepted minion ids.
    pub fn accepted(&self) -> Vec<String> {
        self.keys.list(KeyDir::Accepted)
    }

    /// The key store.
    pub fn keys(&self) -> &KeyStore {
        &self.keys
    }

    /// Cached grains of `id`.
    pub fn grains_of(&self, id: &str) -> Option<Value> {
        lock(&self.grains).get(id).cloned()
    }

    /// Every minion with cached grains.
    pub fn all_grains(&self) -> BTreeMap<String, Value> {
        lock(&self.grains)
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// A fresh job id (for work that is not a publish: the API's wheel calls).
    pub async fn new_jid(&self) -> String {
        self.call(|st, _| st.new_jid()).await.unwrap_or_else(|| {
            brine_proto::jid::JidGenerator::default()
                .next_jid(crate::events::unix_micros())
                .to_string()
        })
    }

    /// Minions present ([`CoreState::present`]).
    pub async fn present(&self) -> BTreeSet<String> {
        self.call(|st, _| st.present()).await.unwrap_or_default()
    }

    /// Syndics known below this master.
    pub async fn syndics(&self) -> BTreeSet<String> {
        self.call(|st, _| st.syndics()).await.unwrap_or_default()
    }

    /// The accepted minions `allowed` covers for sure (`None`: every minion).
    pub async fn minions_within(&self, allowed: Allowed) -> Option<BTreeSet<String>> {
        self.call(move |st, _| st.minions_within(&allowed))
            .await
            .flatten()
    }

    /// Publish a job as `user` ([`CoreState::publish`]); `allowed` is where the caller may run
    /// the function (`None`: root).
    ///
    /// # Errors
    /// [`PublishError`].
    pub async fn publish(
        &self,
        spec: PublishSpec,
        user: &str,
        allowed: Option<Allowed>,
    ) -> Result<Published, PublishError> {
        let user = user.to_owned();
        self.call(move |st, now| st.publish(spec, &user, allowed, now))
            .await
            .unwrap_or_else(|| Err(PublishError::Transport("the master is stopping".into())))
    }

    /// Relay a job published by a master above ([`CoreState::relay`]).
    ///
    /// # Errors
    /// [`PublishError::Transport`] if the master is stopping.
    pub async fn relay(&self, job: JobLoad) -> Result<Published, PublishError> {
        self.call(move |st, now| st.relay(job, now))
            .await
            .ok_or_else(|| PublishError::Transport("the master is stopping".into()))
    }

    /// Send every return this master receives to `tap` as well, and know this master's id as a
    /// syndic (once; later taps are ignored).
    pub async fn set_return_tap(&self, syndic_id: &str, tap: ReturnTap) {
        let _ = self.return_tap.set(tap);
        let id = syndic_id.to_owned();
        self.tell(move |st, _| st.set_syndic_id(&id)).await;
    }

    /// Whether each of `ids` still runs `jid` here ([`CoreState::running`]).
    pub async fn running(&self, jid: &str, ids: Vec<String>) -> Vec<(String, Option<bool>)> {
        let jid = jid.to_owned();
        self.call(move |st, now| st.running(&jid, &ids, now))
            .await
            .unwrap_or_default()
    }

    /// The job's load (what a syndic reports upward), from memory or the job cache.
    pub async fn job_load(&self, jid: &str) -> Option<Value> {
        let jid = jid.to_owned();
        self.call(move |st, _| st.job_load(&jid)).await.flatten()
    }

    /// The minions expected for `jid` once settled ([`CoreState::settled_expected`]).
    pub async fn settled_expected(&self, jid: &str) -> Option<Vec<String>> {
        let jid = jid.to_owned();
        self.call(move |st, now| st.settled_expected(&jid, now))
            .await
            .flatten()
    }

    /// For each of `jids`: whether the tracker still follows it, its settled expected minions
    /// and (when asked for) its load — what the upstream side needs about its open routes, in
    /// one turn of the driver.
    pub async fn route_views(
        &self,
        jids: Vec<(String, bool)>,
    ) -> Vec<(String, bool, Option<Vec<String>>, Option<Value>)> {
        self.call(move |st, now| {
            jids.into_iter()
                .map(|(jid, want_load)| {
                    let tracking = st.is_tracking(&jid, now);
                    let expected = st.settled_expected(&jid, now);
                    let load = if want_load { st.job_load(&jid) } else { None };
                    (jid, tracking, expected, load)
                })
                .collect()
        })
        .await
        .unwrap_or_default()
    }

    /// [`CoreState::cached_jobs_since`].
    pub async fn cached_jobs_since(
        &self,
        since: std::time::SystemTime,
        jids: std::collections::HashSet<String>,
    ) -> Vec<CachedJob> {
        self.call(move |st, _| st.cached_jobs_since(since, &jids))
            .await
            .unwrap_or_default()
    }

    /// A job as the API shows it ([`CoreState::job_view`]), else from the Redis job cache.
    pub async fn job_view(&self, jid: &str) -> Option<JobView> {
        let j = jid.to_owned();
        if let Some(v) = self.call(move |st, _| st.job_view(&j)).await.flatten() {
            return Some(v);
        }
        self.redis_job(jid).await
    }

    /// A job only the Redis job cache has: final as far as this master knows once its
    /// deadline passed ([`stored_job_open`]).
    async fn redis_job(&self, jid: &str) -> Option<JobView> {
        let (load, returns) = self.redis.as_ref()?.job(jid).await?;
        Some(stored_view(load, returns, self.cfg.gather_job_timeout))
    }

    /// What a client following `jid` has not seen after `since` ([`CoreState::job_since`]).
    pub async fn job_since(&self, jid: &str, since: usize) -> Option<JobSince> {
        let j = jid.to_owned();
        if let Some(s) = self
            .call(move |st, _| st.job_since(&j, since))
            .await
            .flatten()
        {
            return Some(s);
        }
        self.redis_job(jid).await.map(JobSince::whole)
    }

    /// Wait until `jid` is final.
    pub async fn wait_job(&self, jid: &str) {
        loop {
            let changed = self.jobs_changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let jid = jid.to_owned();
            if !self
                .call(move |st, _| st.is_running(&jid))
                .await
                .unwrap_or(false)
            {
                return;
            }
            changed.await;
        }
    }

    /// Wait until `jid` has more than `since` returns or is final (or is not in memory), at
    /// most `limit`.
    pub async fn wait_job_change(&self, jid: &str, since: usize, limit: Duration) {
        let until = tokio::time::Instant::now() + limit;
        loop {
            let changed = self.jobs_changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let j = jid.to_owned();
            let change = self
                .call(move |st, _| st.changed_since(&j, since))
                .await
                .unwrap_or(Some(true));
            // A job only a store has (this master's cache after a restart, or another master's
            // in Redis) and not final yet: returns reach it without a wake-up here (written by
            // others, or its deadline passes), so look again shortly.
            let poll = match change {
                Some(true) => return,
                Some(false) => false,
                None => match self.job_view(jid).await {
                    Some((_, returns, missing)) if missing.is_none() && returns.len() <= since => {
                        true
                    }
                    _ => return,
                },
            };
            let recheck = tokio::time::Instant::now() + Duration::from_millis(500);
            tokio::select! {
                () = changed => {}
                () = tokio::time::sleep_until(recheck), if poll => {}
                () = tokio::time::sleep_until(until) => return,
            }
        }
    }

    /// Running jobs (not final yet), newest last.
    pub async fn active_jobs(&self) -> Vec<(String, ActiveJob)> {
        self.call(|st, _| st.active_jobs())
            .await
            .unwrap_or_default()
    }

    /// Stored jobs, oldest first: this master's, and with the Redis job cache every master's.
    pub async fn list_jobs(&self) -> Vec<(String, Value)> {
        let mut jobs: BTreeMap<String, Value> = self
            .call(|st, _| st.list_jobs())
            .await
            .unwrap_or_default()
            .into_iter()
            .collect();
        if let Some(r) = &self.redis {
            for (jid, load) in r.list().await {
                jobs.entry(jid).or_insert(load);
            }
        }
        jobs.into_iter().collect()
    }
}

/// A bound master core: sockets open, keys loaded.
pub struct Server {
    shared: Arc<MasterCore>,
    state: CoreState,
    rx: tokio::sync::mpsc::Receiver<Cmd>,
    router: Router,
    publisher: JobPublisher,
    handlers: Vec<RequestHandler>,
    secrets: Arc<Mutex<Secrets>>,
    pillars: crate::mine::DataCache,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("ret", &self.router.endpoint())
            .field("publish_port", &self.shared.publish_port)
            .field("workers", &self.handlers.len())
            .finish_non_exhaustive()
    }
}

impl Server {
    /// Load keys, open the job cache, bind the publish and ret ports.
    ///
    /// # Errors
    /// [`CoreError`] naming what failed (pki directory, key file, address in use).
    pub fn bind(cfg: MasterConfig) -> Result<Self, CoreError> {
        let keys = KeyStore::open(&cfg.pki_dir)?;
        let key = load_or_create_master_key(&cfg.pki_dir)?;
        let cache = JobCache::open(
            &cfg.cachedir.join("brine").join("jobs"),
            Duration::from_secs(cfg.keep_jobs_seconds),
        )
        .map_err(CoreError::io(&cfg.cachedir))?;
        let ctx = Context::new();
        let router = Router::bind(
            &ctx,
            &tcp_endpoint(&cfg.interface, cfg.ret_port),
            &SocketOptions {
                backlog: cfg.zmq_backlog,
                max_msg_size: (cfg.zmq_max_message_size > 0)
                    .then(|| i64::try_from(cfg.zmq_max_message_size).unwrap_or(i64::MAX)),
                ..SocketOptions::master_router()
            },
        )
        .map_err(|e| CoreError::Bind(format!("ret_port {}: {e}", cfg.ret_port)))?;
        let publisher = Publisher::bind(
            &ctx,
            &tcp_endpoint(&cfg.interface, cfg.publish_port),
            &SocketOptions {
                backlog: cfg.zmq_backlog,
                // Subscribers only send subscriptions (a topic each).
                max_msg_size: Some(64 * 1024),
                ..SocketOptions::master_pub()
            },
        )
        .map_err(|e| CoreError::Bind(format!("publish_port {}: {e}", cfg.publish_port)))?;
        let mut identity = MasterIdentity::new(key.clone(), publisher.port());
        if cfg.master_sign_pubkey {
            identity = identity
                .with_signing_key(
                    &load_or_create_key(&cfg.pki_dir, &cfg.master_sign_key_name)?,
                    SigAlgo::Pkcs1v15Sha1,
                )
                .map_err(|e| CoreError::config("master_sign_key_name", e))?;
        }
        let secrets = Arc::new(Mutex::new(Secrets::new(&mut Rng)));
        let policy = Policy {
            danger_auto_accept: cfg.auto_accept,
            danger_open_mode: cfg.open_mode,
            autosign_file: cfg.autosign_file.clone(),
            autoreject_file: cfg.autoreject_file.clone(),
            order_masters: cfg.order_masters,
            permissive_pki_access: cfg.permissive_pki_access,
            request_server_ttl: cfg.request_server_ttl,
        };
        // One request handler per core: `_auth` is RSA-bound, and a fleet re-keying after an
        // AES rotation (or a restart) is served by every core at once.
        let grains = crate::mine::DataCache::default();
        let pillars = crate::mine::DataCache::default();
        let files = Arc::new(crate::fileserver::MasterFiles::new(
            &cfg,
            grains.clone(),
            pillars.clone(),
        )?);
        let workers = std::thread::available_parallelism().map_or(2, |n| n.get().clamp(1, 8));
        let mut handlers = Vec::with_capacity(workers);
        for _ in 0..workers {
            handlers.push(
                RequestHandler::new(
                    KeyStore::open(&cfg.pki_dir)?,
                    identity.clone(),
                    secrets.clone(),
                    policy.clone(),
                    Box::new(Rng),
                )
                .with_files(files.clone()),
            );
        }
        let mut jp = JobPublisher::new(publisher, secrets.clone(), key);
        jp.sign = cfg.sign_pub_messages;
        jp.zmq_filtering = cfg.zmq_filtering;
        let state = CoreState::new(
            cfg.clone(),
            KeyStore::open(&cfg.pki_dir)?,
            cache,
            grains.clone(),
            pillars.clone(),
        );
        let (tx, rx) = tokio::sync::mpsc::channel(CMD_QUEUE);
        let cfg_redis = cfg.redis.clone();
        let shared = Arc::new(MasterCore {
            cfg,
            keys,
            grains,
            bus: EventBus::new(),
            tx,
            jobs_changed: tokio::sync::Notify::new(),
            return_tap: std::sync::OnceLock::new(),
            publish_port: jp.port(),
            redis: cfg_redis.as_ref().map(crate::redis_cache::RedisReader::new),
        });
        Ok(Self {
            shared,
            state,
            rx,
            router,
            publisher: jp,
            handlers,
            secrets,
            pillars,
        })
    }

    /// The bound ret (request) port.
    pub fn ret_port(&self) -> u16 {
        self.router.port()
    }

    /// The bound publish port.
    pub fn publish_port(&self) -> u16 {
        self.shared.publish_port
    }

    /// The shared core.
    pub fn core(&self) -> Arc<MasterCore> {
        self.shared.clone()
    }
}

impl Server {
    /// Serve until `shutdown` resolves: request workers (one per core) decode, verify and answer
    /// minion requests and hand what they caused to the driver (this task), which owns the
    /// state, publishes what it asks for, fires its events and sleeps until its next deadline.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let Self {
            shared,
            mut state,
            mut rx,
            mut router,
            publisher,
            handlers,
            secrets,
            pillars,
        } = self;
        info!(
            ret = %router.endpoint(),
            publish = %shared.publish_port,
            pki = %shared.cfg.pki_dir.display(),
            "master serving"
        );
        let mut queues = Vec::new();
        let mut worker_tasks = Vec::new();
        for mut handler in handlers {
            let (tx, mut rx) = tokio::sync::mpsc::channel::<brine_transport::RouterRequest>(4096);
            let replier = router.replier();
            let shared = shared.clone();
            let pillars = pillars.clone();
            queues.push(tx);
            worker_tasks.push(tokio::spawn(async move {
                while let Some(req) = rx.recv().await {
                    let peer = String::from_utf8_lossy(&req.peer).into_owned();
                    let mut h = handler.handle(&req.payload, &peer);
                    // A return (a minion's or a syndic's batch) is acknowledged only once the
                    // driver has taken it and put it on disk: a master killed right after the
                    // acknowledgement must not lose what the sender now forgets.
                    let carries =
                        !h.returns.is_empty() || h.syndic.is_some() || h.minion_job.is_some();
                    let mut reply = Some(std::mem::take(&mut h.reply));
                    if !carries
                        && let Some(r) = reply.take()
                        && replier.reply(&req, r).await.is_err()
                    {
                        return;
                    }

                    // The caches the mine and targeting read; the rest is the driver's.
                    if let Some((id, p)) = h.pillar.take() {
                        lock(&pillars).insert(id, p);
                    }
                    if let Some((id, g)) = h.grains.take() {
                        lock(&shared.grains).insert(id, g);
                    }
                    if carries {
                        let replier = replier.clone();
                        shared
                            .tell_then(
                                move |st, now| st.handle_request(h, now),
                                move || {
                                    tokio::spawn(async move {
                                        let _ =
                                            replier.reply(&req, reply.unwrap_or_default()).await;
                                    });
                                },
                            )
                            .await;
                        continue;
                    }
                    if h.events.is_empty() && h.resources.is_none() && h.minion.is_none() {
                        continue;
                    }
                    shared.tell(move |st, now| st.handle_request(h, now)).await;
                }
            }));
        }
        // The Redis job cache's writer (`master_job_cache: redis`): records the queue cannot
        // take yet wait in `held`, in order; nothing on the driver's path waits on Redis.
        if shared.cfg.redis.is_some()
            && let Some(upto) = crate::redis_cache::synced_until(&shared.cfg.cachedir)
        {
            // Records offered just before the last run ended may have waited in the driver a
            // moment longer: a margin.
            let since = upto - Duration::from_secs(10);
            let n = state.resync_redis(since);
            if n > 0 {
                info!(
                    jobs = n,
                    "jobs changed after Redis was last known complete offered to it again"
                );
            }
        }
        let mut store = shared.cfg.redis.as_ref().map(|o| {
            info!(redis = %o.describe(), "job cache: redis");
            if !shared.cfg.unique_jid {
                warn!(
                    "masters that share a Redis job cache can hand out the same jid in the same microsecond; set unique_jid: True on each of them"
                );
            }
            let ttl = shared.cfg.keep_jobs_seconds;
            let (sink, task) =
                crate::redis_cache::spawn_writer(o, &shared.cfg.cachedir, ttl, shared.bus.clone());
            Store {
                sink,
                task,
                held: std::collections::VecDeque::new(),
            }
        });
        // `event_return: redis`: every event of the bus, in order, to a stream in Redis.
        let (events_stop, events_stopped) = tokio::sync::oneshot::channel::<()>();
        let event_return = shared
            .cfg
            .event_return_redis
            .as_ref()
            .map(|o| tokio::spawn(event_return(shared.clone(), o.clone(), events_stopped)));
        // Key decisions shared with the other masters (`brine_key_sync: redis`).
        let (key_sync_stop, key_sync_stopped) = tokio::sync::oneshot::channel::<()>();
        let key_sync = shared.cfg.key_sync_redis.as_ref().map(|o| {
            info!(redis = %o.describe(), "key decisions shared through Redis");
            let ks = crate::key_sync::KeySync::new(
                shared.keys.clone(),
                crate::redis_cache::RedisReader::new(o),
                shared.cfg.cachedir.clone(),
                random_hex(6),
            );
            tokio::spawn(ks.run(async move {
                let _ = key_sync_stopped.await;
            }))
        });
        // Publishing (AES, the RSA signature, the socket) runs beside the driver, in order.
        let (pub_tx, mut pub_rx) = tokio::sync::mpsc::unbounded_channel::<Transmit>();
        let publishing = tokio::spawn(async move {
            while let Some(t) = pub_rx.recv().await {
                let jid = t.load.jid.clone();
                if let Err(e) = publisher.publish(t.load, Some(&t.minions), &mut Rng).await {
                    warn!(jid = %jid, error = %e, "publish failed");
                }
            }
        });
        // Requests go from the ROUTER's driver to the handlers in a task of their own: on the
        // runtime's workers, not on the thread that runs this loop (the caller's `block_on`),
        // which would add a cross-thread wake-up per request.
        let mut dispatcher = tokio::spawn(async move {
            let mut next = 0usize;
            while let Ok(req) = router.recv().await {
                next = (next + 1) % queues.len();
                if queues[next].send(req).await.is_err() {
                    break;
                }
            }
        });
        tokio::pin!(shutdown);
        let mut housekeeping = tokio::time::interval(Duration::from_secs(1));
        let mut delivers: Vec<Deliver> = Vec::new();
        loop {
            let now = tokio::time::Instant::now();
            let due = state
                .poll_timeout(now.into_std())
                .map_or(now + Duration::from_secs(1), tokio::time::Instant::from_std)
                .clamp(now, now + Duration::from_secs(1));
            tokio::select! {
                () = &mut shutdown => {
                    info!("shutting down");
                    break;
                }
                cmd = rx.recv() => {
                    let Some(cmd) = cmd else { break };
                    delivers.push(cmd(&mut state, Instant::now()));
                    // Take what else is queued (up to a batch) before publishing and firing.
                    for _ in 1..CMD_BATCH {
                        let Ok(cmd) = rx.try_recv() else { break };
                        delivers.push(cmd(&mut state, Instant::now()));
                    }
                }
                _ = housekeeping.tick() => {
                    state.handle_housekeeping(Instant::now());
                    check_dropfile(&shared.cfg.cachedir, &secrets);
                    lock(&secrets).expire_auth_replies();
                }
                () = tokio::time::sleep_until(due) => {}
                _ = &mut dispatcher => break,
            }
            let now = Instant::now();
            if state.poll_timeout(now).is_some_and(|t| t <= now) {
                state.handle_timeout(now);
            }
            drain(&shared, &mut state, &pub_tx);
            if let Some(s) = store.as_mut() {
                s.take(&mut state);
            }
            if !delivers.is_empty() {
                // Returns reach the disk before their senders hear they were stored.
                state.persist();
            }
            for d in delivers.drain(..) {
                d();
            }
        }
        // Stopping: the ROUTER's receiver and the handlers' queues go; the handlers finish what
        // they hold and hand it in, and the driver takes it all before it flushes the cache.
        dispatcher.abort();
        let _ = dispatcher.await;
        let workers = futures_join(worker_tasks);
        tokio::pin!(workers);
        loop {
            tokio::select! {
                () = &mut workers => break,
                Some(cmd) = rx.recv() => delivers.push(cmd(&mut state, Instant::now())),
            }
        }
        while let Ok(cmd) = rx.try_recv() {
            delivers.push(cmd(&mut state, Instant::now()));
        }
        drain(&shared, &mut state, &pub_tx);
        for d in delivers.drain(..) {
            d();
        }
        state.shutdown();
        drop(pub_tx);
        let _ = publishing.await;
        let _ = key_sync_stop.send(());
        let _ = events_stop.send(());
        if let Some(t) = event_return {
            let _ = tokio::time::timeout(crate::redis_cache::WRITE_TIMEOUT * 4, t).await;
        }
        if let Some(t) = key_sync {
            let _ = tokio::time::timeout(crate::redis_cache::WRITE_TIMEOUT * 2, t).await;
        }
        if let Some(mut s) = store {
            s.take(&mut state);
            for r in s.held.drain(..) {
                s.sink.send(r).await;
            }
            drop(s.sink);
            // The writer puts what Redis does not take in its journal before it ends.
            let limit = crate::redis_cache::WRITE_TIMEOUT * 3;
            if tokio::time::timeout(limit, s.task).await.is_err() {
                warn!("the Redis job cache's writer did not finish in time");
            }
        }
    }
}

/// `event_return: redis`: takes every event off the bus (but those `event_return_whitelist`
/// and `event_return_blacklist` leave out), gives it its stream entry id and hands it to a
/// writer of its own. Never waits on Redis: what the writer's queue cannot take, or what the
/// bus drops because this task fell behind, is counted and logged, and the bus goes on.
async fn event_return(
    shared: Arc<MasterCore>,
    opts: crate::redis_cache::RedisOptions,
    stop: tokio::sync::oneshot::Receiver<()>,
) {
    use crate::redis_cache::Record;
    use tokio::sync::broadcast::error::RecvError;
    let cfg = &shared.cfg;
    let master = cfg
        .master_id
        .clone()
        .or_else(|| cfg.id.clone())
        .unwrap_or_else(|| "master".to_owned());
    let stream = format!("salt:events:{master}");
    info!(redis = %opts.describe(), stream = %stream, "event_return: redis");
    let mut rx = shared.bus.subscribe();
    let (sink, writer) =
        crate::redis_cache::spawn_event_writer(&opts, &cfg.cachedir, shared.bus.clone());
    let keep = |tag: &str| {
        let m = |globs: &[String]| globs.iter().any(|g| brine_proto::target::fnmatch(g, tag));
        (cfg.event_return_whitelist.is_empty() || m(&cfg.event_return_whitelist))
            && !m(&cfg.event_return_blacklist)
    };
    let (mut last_ms, mut seq) = (0u128, 0u64);
    let mut dropped = 0u64;
    let mut last_warn: Option<Instant> = None;
    tokio::pin!(stop);
    loop {
        let e = tokio::select! {
            _ = &mut stop => break,
            e = rx.recv() => e,
        };
        let e = match e {
            Ok(e) => e,
            Err(RecvError::Lagged(n)) => {
                dropped += n;
                if last_warn.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                    last_warn = Some(Instant::now());
                    warn!(
                        dropped,
                        "event_return fell behind the event bus; events dropped so far"
                    );
                }
                continue;
            }
            Err(RecvError::Closed) => break,
        };
        if !keep(&e.tag) {
            continue;
        }
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        if ms > last_ms {
            (last_ms, seq) = (ms, 0);
        } else {
            seq += 1;
        }
        let r = Record::Event {
            stream: stream.clone(),
            entry: format!("{last_ms}-{seq}"),
            tag: e.tag.clone(),
            data: e.data.clone(),
        };
        if sink.offer(r).is_err() {
            dropped += 1;
            if last_warn.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                last_warn = Some(Instant::now());
                warn!(
                    dropped,
                    "event_return's queue is full; events dropped so far"
                );
            }
        }
    }
    drop(sink);
    let _ = tokio::time::timeout(crate::redis_cache::WRITE_TIMEOUT * 3, writer).await;
}

/// The Redis job cache's writer, from the driver's side.
struct Store {
    sink: crate::redis_cache::RedisSink,
    task: tokio::task::JoinHandle<()>,
    held: std::collections::VecDeque<crate::redis_cache::Record>,
}

impl Store {
    /// Queue the state's records for the writer, in order; what the queue cannot take now
    /// waits here for the next turn.
    fn take(&mut self, state: &mut CoreState) {
        while let Some(r) = state.poll_record() {
            self.held.push_back(r);
        }
        while let Some(r) = self.held.pop_front() {
            if let Err(r) = self.sink.offer(r) {
                self.held.push_front(r);
                break;
            }
        }
    }
}

/// Hand the state's outputs out: job loads to the publisher, events to the bus, returns to the
/// tap, and a wake-up to whoever waits on jobs.
fn drain(
    shared: &Arc<MasterCore>,
    state: &mut CoreState,
    pub_tx: &tokio::sync::mpsc::UnboundedSender<Transmit>,
) {
    while let Some(t) = state.poll_transmit() {
        look_in_shared_cache(shared, &t);
        let _ = pub_tx.send(t);
    }
    while let Some(e) = state.poll_event() {
        match e {
            CoreEvent::Fire(e) => shared.bus.fire_event(e),
            CoreEvent::Return(r) => {
                if let Some(tap) = shared.return_tap.get() {
                    tap(&r);
                }
            }
            CoreEvent::JobsChanged => shared.jobs_changed.notify_waiters(),
        }
    }
}

/// Before silent minions are asked with `find_job`, look for their returns in the shared job
/// cache (`master_job_cache: redis`): with masters of masters sharing Redis, a return may have
/// reached another master and be stored there (a syndic that restarted, or whose link to this
/// master was down, delivers it to whichever master is up). Found returns are taken as if they
/// had come here; the `find_job` goes out anyway (a minion that returned answers "not running").
fn look_in_shared_cache(shared: &Arc<MasterCore>, t: &Transmit) {
    if shared.redis.is_none() {
        return;
    }
    let Some(jid) = t.load.find_job_asks_about().map(str::to_owned) else {
        return;
    };
    let (shared, mut who) = (shared.clone(), t.minions.clone());
    // Until just before the `find_job` round ends (the job is final then): a return re-routed
    // through another master may land in Redis while the round runs.
    let until = tokio::time::Instant::now()
        + Duration::from_secs(shared.cfg.gather_job_timeout).saturating_sub(SHARED_LOOK_MARGIN);
    tokio::spawn(async move {
        loop {
            let found = shared.returns_in_shared_cache(&jid, &who).await;
            if !found.is_empty() {
                info!(jid = %jid, minions = ?found.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
                      "returns another master stored, taken from the shared job cache");
                who.retain(|id| !found.iter().any(|r| r.id == *id));
                shared
                    .tell(move |st, now| {
                        st.handle_request(
                            Handled {
                                returns: found,
                                ..Handled::default()
                            },
                            now,
                        );
                    })
                    .await;
            }
            let next = tokio::time::Instant::now() + SHARED_LOOK_EVERY;
            if who.is_empty() || next > until {
                return;
            }
            tokio::time::sleep_until(next).await;
        }
    });
}

/// How often the shared job cache is looked at during a `find_job` round.
const SHARED_LOOK_EVERY: Duration = Duration::from_secs(1);
/// The last look comes at least this long before the round ends.
const SHARED_LOOK_MARGIN: Duration = Duration::from_millis(300);

/// Wait for every task of `tasks`.
async fn futures_join(tasks: Vec<tokio::task::JoinHandle<()>>) {
    for t in tasks {
        let _ = t.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_at(unix_micros: u64, to: Option<u64>) -> Value {
        let jid = brine_proto::jid::Jid::from_unix_micros(unix_micros);
        let mut load = Value::map()
            .with("jid", format!("{jid}_42"))
            .with("minions", Value::Array(vec![Value::str("m1")]));
        if let Some(to) = to {
            load.insert("to", to);
        }
        load
    }

    #[test]
    fn a_stored_job_counts_as_running_until_its_deadline() {
        let now = 1_800_000_000_000_000u64;
        let secs = |s: u64| s * 1_000_000;
        // -t 8, gather_job_timeout 3: open for 8 + 3 + 15 s from the jid's time.
        assert!(stored_job_open(&load_at(now - secs(25), Some(8)), 3, now));
        assert!(!stored_job_open(&load_at(now - secs(27), Some(8)), 3, now));
        // A long timeout is capped at the time a finished job stays in memory.
        assert!(stored_job_open(
            &load_at(now - secs(100), Some(3600)),
            3,
            now
        ));
        assert!(!stored_job_open(
            &load_at(now - secs(121), Some(3600)),
            3,
            now
        ));
        // Without `to` (stored by an older brine, or by Salt) a stored job is final.
        assert!(!stored_job_open(&load_at(now - secs(1), None), 3, now));
        // The view: running without a missing list, then final with m1 missing.
        let (_, _, missing) =
            stored_view(load_at(secs(1_000_000_000), Some(8)), BTreeMap::new(), 3);
        assert_eq!(missing.map(|m| m.len()), Some(1));
    }
}
