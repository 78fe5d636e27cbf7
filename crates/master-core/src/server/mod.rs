//! The master's serving core, shared by `mofm` and `syndic`: the ret port (one request handler
//! per core), publishing with master-side targeting, job tracking without `find_job` storms, the
//! job cache, the grains cache, presence, `salt/key` events from pki changes, and AES rotation on
//! Salt's dropfile. Daemons add their own fronts (mofm's HTTP API, the syndic's upstream links)
//! around [`MasterCore`], which is thread-safe and shared behind an `Arc`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod book;
mod watch;

use book::{JobBook, Taken};

use crate::CoreError;
use crate::config::MasterConfig;
use crate::events::{EventBus, unix_micros};
use crate::jobcache::JobCache;
use crate::jobs::Missing;
use crate::json::to_json;
use crate::keys::{KeyDir, KeyStore};
use crate::lock;
use crate::publish::JobPublisher;
use crate::requests::{Policy, RequestHandler};
use crate::secrets::{Secrets, load_or_create_key, load_or_create_master_key};
use crate::targeting::{Fleet, as_compound, expand_nodegroups, reach};
use brine_proto::Value;
use brine_proto::auth::MasterIdentity;
use brine_proto::crypt::SigAlgo;
use brine_proto::jid::{Jid, JidGenerator};
use brine_proto::loads::{JobLoad, ReturnLoad};
use brine_proto::target::{TargetError, Tri};
use brine_transport::{Context, OsEntropy, Publisher, Router, SocketOptions, tcp_endpoint};
use serde_json::{Value as Json, json};
use tracing::{debug, info, warn};

/// The OS random source (brine-transport's).
pub use brine_transport::OsEntropy as Rng;

/// A brine syndic whose heartbeat (every 2 s) is older than this is not waited for.
const SYNDIC_HEARTBEAT_STALE: Duration = Duration::from_secs(7);

/// The longest a job's timeout (`-t`, an upper master's `to`) is taken as.
pub const MAX_JOB_TIMEOUT: u64 = 30 * 86_400;

/// A job this master published and is tracking.
#[derive(Debug, Clone)]
pub struct ActiveJob {
    /// The cached load (function, arguments, target, user, minions, start time).
    pub load: Json,
    /// Minions expected to return (a set: at 50,000 minions a list made each return and each
    /// syndic report a linear scan).
    pub expected: BTreeSet<String>,
    /// Returns so far (the whole return objects).
    pub returns: BTreeMap<String, Json>,
    /// Minions in the order their returns arrived (what [`MasterCore::job_since`] counts in).
    pub arrived: Vec<String>,
    /// Set when final: minions that will not return, and why.
    pub missing: Option<BTreeMap<String, Missing>>,
    finished_at: Option<Instant>,
}

/// A job's load, its returns, and (once final) who is missing and why.
pub type JobView = (
    Json,
    BTreeMap<String, Json>,
    Option<BTreeMap<String, Missing>>,
);

/// What a client following a job has not seen yet ([`MasterCore::job_since`]).
#[derive(Debug, Clone)]
pub struct JobSince {
    /// The job's load (with `minions` only when asked from the start).
    pub load: Json,
    /// Returns after the cursor the client gave, in the order they arrived.
    pub new: Vec<(String, Json)>,
    /// Returns so far: the cursor for the next call.
    pub cursor: usize,
    /// Set when final: minions that will not return, and why.
    pub missing: Option<BTreeMap<String, Missing>>,
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

/// State shared by the serving loop and the daemon's fronts (API, upstream links).
pub struct MasterCore {
    /// The configuration.
    pub cfg: MasterConfig,
    keys: KeyStore,
    grains: crate::mine::DataCache,
    /// The pillar last compiled for each minion.
    pillars: crate::mine::DataCache,
    /// Jobs in memory, their tracker, `find_job` jids and presence ([`book::JobBook`]).
    book: Mutex<JobBook>,
    /// Woken on every return taken and every job made final (long polls, `wait_job`).
    jobs_changed: tokio::sync::Notify,
    /// Wakes the driver when a job has all its returns, a syndic reported or a minion said it no
    /// longer runs a job (it settles what is done at once), or a job was published (its
    /// deadlines).
    tracker_due: tokio::sync::Notify,
    cache: Mutex<JobCache>,
    /// The event bus.
    pub bus: EventBus,
    publisher: JobPublisher,
    jidgen: Mutex<JidGenerator>,
    /// Syndics below this master (`cachedir/syndics/<id>`, as Salt records them).
    syndics: Mutex<BTreeSet<String>>,
    /// Minions that registered resources (Salt 3008): `cachedir/brine/resources/<id>`.
    resource_managers: Mutex<BTreeSet<String>>,
    /// Where returns go besides the cache (a syndic's upstream links).
    return_tap: std::sync::OnceLock<ReturnTap>,
    /// Last heartbeat of each brine syndic below.
    syndic_beats: Mutex<HashMap<String, Instant>>,
    /// This master's id as a syndic (events that passed through it are dropped).
    syndic_id: std::sync::OnceLock<String>,
    /// Forwarded events seen (masters that syndicate each other see copies by several paths).
    forwarded_seen: Mutex<crate::upstream::EventDedup>,
}

/// A hook called with every return this master receives (not its own `find_job` answers).
pub type ReturnTap = Box<dyn Fn(&ReturnLoad) + Send + Sync>;

impl std::fmt::Debug for MasterCore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MasterCore")
            .field("publisher", &self.publisher)
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
use watch::{check_dropfile, fire_key_changes, fire_presence, ids_in, key_states, resources_dir};

impl MasterCore {
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

    /// The pillar last compiled for `id`.
    pub fn pillar_of(&self, id: &str) -> Option<Value> {
        lock(&self.pillars).get(id).cloned()
    }

    /// Every minion with cached grains.
    pub fn all_grains(&self) -> BTreeMap<String, Value> {
        lock(&self.grains)
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Minions present: authenticated or heard from since the master started, and not given up
    /// on (a `find_job` left unanswered) since.
    pub fn present(&self) -> BTreeSet<String> {
        lock(&self.book).present().clone()
    }

    /// The facts targets are evaluated against: accepted keys, cached grains and pillar,
    /// resource managers. Passed to `f` under the grains lock.
    fn with_fleet<T>(&self, f: impl FnOnce(&Fleet<'_>) -> T) -> T {
        self.fleet_with(true, f)
    }

    /// The facts an ACL is checked against: as [`Self::with_fleet`], but with every pillar
    /// unknown. A minion matches `I@`/`J@` against the pillar it holds in memory, compiled when
    /// it last refreshed; the master's cache holds the latest compilation (`pillar.items`
    /// compiles without refreshing the minion), so the two can differ and the master cannot be
    /// sure of either answer.
    fn with_acl_fleet<T>(&self, f: impl FnOnce(&Fleet<'_>) -> T) -> T {
        self.fleet_with(false, f)
    }

    fn fleet_with<T>(&self, pillars: bool, f: impl FnOnce(&Fleet<'_>) -> T) -> T {
        let accepted = self.accepted();
        let grains = lock(&self.grains);
        let cached = lock(&self.pillars);
        let unknown = HashMap::new();
        let managers = lock(&self.resource_managers);
        f(&Fleet {
            accepted: &accepted,
            grains: &grains,
            pillars: if pillars { &cached } else { &unknown },
            resource_managers: &managers,
        })
    }

    /// ACL targets are compound expressions, nodegroups expanded as in a publish; one that does
    /// not expand covers nobody.
    fn expand_acl_targets(&self, within: &[String]) -> Vec<String> {
        let groups = |n: &str| self.cfg.nodegroups.get(n).cloned();
        within
            .iter()
            .filter_map(|t| {
                let (e, _) = expand_nodegroups(&Value::str(t), "compound", &groups).ok()?;
                e.as_str().map(str::to_owned)
            })
            .collect()
    }

    /// The accepted minions `allowed` covers for sure (`None`: every minion).
    pub fn minions_within(&self, allowed: &Allowed) -> Option<BTreeSet<String>> {
        let Allowed::Within(within) = allowed else {
            return None;
        };
        let within = self.expand_acl_targets(within);
        let accepted = self.accepted();
        let outside: BTreeSet<String> = self
            .with_acl_fleet(|f| outside_acl(&accepted, &within, f))
            .into_iter()
            .collect();
        Some(
            accepted
                .into_iter()
                .filter(|id| !outside.contains(id))
                .collect(),
        )
    }

    /// Publish a job as `user`. With an `acl` (every caller but root), `acl(fun)` says where the
    /// caller may run the function: every minion that may run the job must match one of those
    /// targets for sure (a minion brine cannot tell about counts as running it), or nothing is
    /// published. Below syndics the master cannot see which minions a target reaches, so there
    /// the published target is narrowed to `( target ) and ( acl targets )`, which the minions
    /// evaluate themselves.
    ///
    /// # Errors
    /// [`PublishError`].
    pub async fn publish(
        &self,
        spec: PublishSpec,
        user: &str,
        acl: Option<&(dyn Fn(&str) -> Allowed + Sync)>,
    ) -> Result<Published, PublishError> {
        let groups = |n: &str| self.cfg.nodegroups.get(n).cloned();
        let bad = |e: TargetError| PublishError::BadTarget(e.to_string());
        let (mut tgt, mut tgt_type) =
            expand_nodegroups(&spec.tgt, &spec.tgt_type, &groups).map_err(bad)?;
        let delimiter = ":";
        let mut reached = self
            .with_fleet(|f| reach(&tgt, &tgt_type, delimiter, f))
            .map_err(bad)?;
        let (all_syndics, syndics) = self.live_syndics();
        if let Some(acl) = acl {
            let within = match acl(&spec.fun) {
                Allowed::Anywhere => None,
                Allowed::Within(t) => Some(t),
            };
            if let Some(within) = within {
                let denied = |why: String| {
                    warn!(user, fun = %spec.fun, reason = %why, "publish refused by the caller's ACL");
                    PublishError::Denied(format!("{user} may not run {}: {why}", spec.fun))
                };
                let within = self.expand_acl_targets(&within);
                if within.is_empty() {
                    return Err(denied("no target of the ACL allows it".into()));
                }
                // Syndics relay rather than run: what runs below them is dealt with below.
                let may_run = self
                    .with_acl_fleet(|f| reach(&tgt, &tgt_type, delimiter, f))
                    .map_err(bad)?;
                let runners = not_syndics(&may_run, &all_syndics);
                let outside = self.with_acl_fleet(|f| outside_acl(&runners, &within, f));
                if !outside.is_empty() {
                    let shown: Vec<&str> = outside.iter().take(10).map(String::as_str).collect();
                    let more = outside.len().saturating_sub(shown.len());
                    return Err(denied(format!(
                        "{} {}{} outside the ACL's targets (a minion whose grains or pillar brine cannot be sure of counts as targeted)",
                        if outside.len() == 1 {
                            "minion"
                        } else {
                            "minions"
                        },
                        shown.join(", "),
                        if more > 0 {
                            format!(" and {more} more")
                        } else {
                            String::new()
                        },
                    )));
                }
                if !all_syndics.is_empty() && !within.iter().any(|t| t.trim() == "*") {
                    let narrowed = narrow(&tgt, &tgt_type, delimiter, &within)
                        .ok_or_else(|| {
                            denied(
                                "minions below syndics can only be reached with a target brine can combine with the ACL's"
                                    .into(),
                            )
                        })?;
                    info!(user, fun = %spec.fun, tgt = %narrowed, "target narrowed to the caller's ACL (minions below syndics)");
                    tgt = Value::str(narrowed);
                    tgt_type = "compound".into();
                    reached = self
                        .with_fleet(|f| reach(&tgt, &tgt_type, delimiter, f))
                        .map_err(bad)?;
                }
            }
        }
        // Below syndics: they are not minions that return; the job waits for their reports.
        let minions = not_syndics(&reached, &all_syndics);
        if minions.is_empty() && syndics.is_empty() {
            return Ok(Published {
                jid: String::new(),
                minions,
            });
        }
        let now_us = unix_micros();
        let jid = lock(&self.jidgen).next_jid(now_us);
        let mut job = JobLoad::new(&spec.fun, spec.arg.clone(), tgt.clone(), &tgt_type, &jid);
        job.ret.clone_from(&spec.ret);
        job.user = Some(user.to_owned());
        job.master_id.clone_from(&self.cfg.master_id);
        let timeout_secs = spec.timeout.unwrap_or(self.cfg.timeout);
        self.launch(job, tgt, tgt_type, timeout_secs, minions, syndics)
            .await
    }

    /// Relay a job published by a master above (this master is its syndic): the same jid,
    /// `master_id`, user and extra keys, `to` one second less, targets resolved here. Returns the
    /// minions expected below this master (sub-syndics report theirs later).
    ///
    /// # Errors
    /// [`PublishError::Transport`] if the publish socket failed.
    pub async fn relay(&self, mut job: JobLoad) -> Result<Published, PublishError> {
        let tgt_type = job.tgt_type().to_owned();
        let delim = job.delimiter.clone().unwrap_or_else(|| ":".into());
        let minions = self
            .with_fleet(|f| reach(&job.tgt, &tgt_type, &delim, f))
            .map(|r| r.all())
            .unwrap_or_else(|e| {
                warn!(jid = %job.jid, error = %e, "relayed target not evaluable here; minions decide");
                Vec::new()
            });
        let (all_syndics, syndics) = self.live_syndics();
        // Below this syndic are the minions talking to it now: masters that share a pki
        // directory (failover pairs) accept the same keys, but each minion is attached to one.
        let present = self.present();
        let minions: Vec<String> = minions
            .into_iter()
            .filter(|m| !all_syndics.contains(m) && present.contains(m))
            .collect();
        let timeout_secs = job.to.map_or(self.cfg.timeout, |t| {
            u64::try_from(t.saturating_sub(1)).unwrap_or(1).max(1)
        });
        let (tgt, user) = (job.tgt.clone(), job.user.clone().unwrap_or_default());
        job.user.get_or_insert(user);
        job.tgt_type.get_or_insert_with(|| "glob".into());
        self.launch(job, tgt, tgt_type, timeout_secs, minions, syndics)
            .await
    }

    /// Cache, track, publish and announce a job.
    async fn launch(
        &self,
        mut job: JobLoad,
        tgt: Value,
        tgt_type: String,
        timeout_secs: u64,
        minions: Vec<String>,
        syndics: Vec<String>,
    ) -> Result<Published, PublishError> {
        // A timeout from the network (an API caller's, an upper master's `to`) can be any
        // number: past a month it means "forever" and must not overflow a deadline.
        let timeout_secs = timeout_secs.min(MAX_JOB_TIMEOUT);
        let jid = job.jid.clone();
        let fun = job.fun_name().unwrap_or_default().to_owned();
        let user = job.user.clone().unwrap_or_default();
        let arg = job.arg.clone();
        if self.cfg.order_masters {
            job.to = Some(i64::try_from(timeout_secs).unwrap_or(i64::MAX));
        } else {
            job.to = None;
        }
        let mut load = json!({
            "jid": jid.as_str(),
            "fun": fun,
            "arg": to_json(&arg),
            "tgt": to_json(&tgt),
            "tgt_type": tgt_type,
            "user": user,
            "minions": minions,
            "StartTime": start_time(&jid),
        });
        if let Some(m) = &job.master_id {
            load["master_id"] = json!(m);
        }
        if let Err(e) = lock(&self.cache).save_job(&jid, &load) {
            warn!(jid = %jid, error = %e, "job cache write failed");
        }
        lock(&self.book).publish(
            &jid,
            load.clone(),
            &minions,
            &syndics,
            Duration::from_secs(timeout_secs),
            Duration::from_secs(self.cfg.syndic_wait),
            Instant::now(),
        );
        // The driver's next wake-up may be earlier now (this job's first ask).
        self.tracker_due.notify_one();
        self.publisher
            .publish(job, Some(&minions), &mut Rng)
            .await
            .map_err(|e| PublishError::Transport(e.to_string()))?;
        info!(jid = %jid, fun = %fun, minions = minions.len(), user, "published");
        self.bus.fire(
            format!("salt/job/{jid}/new"),
            crate::json::from_json(&json!({
                "jid": jid.as_str(),
                "tgt": to_json(&tgt),
                "tgt_type": tgt_type,
                "fun": fun,
                "arg": to_json(&arg),
                "minions": minions,
                "missing": [],
                "user": user,
            })),
        );
        Ok(Published { jid, minions })
    }

    /// Send every return this master receives to `tap` as well, and know this master's id as a
    /// syndic (once; later calls are ignored).
    pub fn set_return_tap(&self, syndic_id: &str, tap: ReturnTap) {
        let _ = self.return_tap.set(tap);
        let _ = self.syndic_id.set(syndic_id.to_owned());
    }

    /// Whether an event forwarded by a syndic should reach the bus: not one that passed through
    /// this master already, not a second copy of one seen by another path.
    fn forwarded_event_is_new(&self, tag: &str, data: &Value) -> bool {
        if !tag.starts_with("syndic/") {
            return true;
        }
        let me = self.syndic_id.get().map_or("", String::as_str);
        let (origin, looped) = crate::upstream::origin_tag(tag, me);
        if looped && !me.is_empty() {
            return false;
        }
        lock(&self.forwarded_seen).first_time(crate::upstream::event_key(origin, data))
    }

    /// Whether the tracker still follows `jid` (not final yet).
    pub fn is_tracking(&self, jid: &str) -> bool {
        lock(&self.book).is_tracking(jid, Instant::now())
    }

    /// The minions expected for `jid` once every syndic below has reported them (or
    /// `syndic_wait` passed); `None` while waiting, or for an unknown job.
    pub fn settled_expected(&self, jid: &str) -> Option<Vec<String>> {
        lock(&self.book).settled_expected(jid, Instant::now())
    }

    /// Whether each of `ids` still runs `jid` here: `Some(true)` running, `Some(false)` done or
    /// given up on, `None` for a minion this master does not know for that job.
    ///
    /// A minion this master gave up on only because its own wait ran out (no answer to
    /// `find_job` in time, or the job's deadline) still counts as running for
    /// [`TIMED_OUT_GRACE`] after that: for a relayed job the master above decides how long to
    /// wait, and a syndic on a saturated host would otherwise tell it to stop waiting for
    /// returns that are still coming (at 50,000 minions over 6 syndics on 2 cores, half of
    /// them).
    pub fn running(&self, jid: &str, ids: &[String]) -> Vec<(String, Option<bool>)> {
        lock(&self.book).running(jid, ids, Instant::now())
    }

    /// The job's load (what a syndic reports upward), from memory or the job cache.
    pub fn job_load(&self, jid: &str) -> Option<Json> {
        if let Some(load) = lock(&self.book).load(jid) {
            return Some(load.clone());
        }
        lock(&self.cache).job(jid)
    }

    /// A job as the API shows it: in memory while running (and shortly after), else from the
    /// cache. `(load, returns, missing-if-final)`.
    pub fn job_view(&self, jid: &str) -> Option<JobView> {
        if let Some(v) = lock(&self.book).view(jid) {
            return Some(v);
        }
        let cache = lock(&self.cache);
        let load = cache.job(jid)?;
        let returns = cache.returns(jid);
        let missing = load
            .get("minions")
            .and_then(Json::as_array)
            .map(|m| {
                m.iter()
                    .filter_map(Json::as_str)
                    .filter(|id| !returns.contains_key(*id))
                    .map(|id| (id.to_owned(), Missing::NoResponse))
                    .collect()
            })
            .unwrap_or_default();
        Some((load, returns, Some(missing)))
    }

    /// Wait until `jid` is final.
    pub async fn wait_job(&self, jid: &str) {
        loop {
            let changed = self.jobs_changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if !lock(&self.book).is_running(jid) {
                return;
            }
            changed.await;
        }
    }

    /// The returns of `jid` after the first `since` (in the order they arrived) and the count
    /// so far, with the load and, once final, who is missing: what a client following the job
    /// has not seen yet. A job no longer in memory (read from the cache) gives every return
    /// (its order is not kept); clients drop those they have.
    pub fn job_since(&self, jid: &str, since: usize) -> Option<JobSince> {
        if let Some(j) = lock(&self.book).since(jid, since) {
            return Some(j);
        }
        let (load, returns, missing) = self.job_view(jid)?;
        Some(JobSince {
            load,
            cursor: returns.len(),
            new: returns.into_iter().collect(),
            missing,
        })
    }

    /// Wait until `jid` has more than `since` returns or is final (or is not in memory), at
    /// most `limit`.
    pub async fn wait_job_change(&self, jid: &str, since: usize, limit: Duration) {
        let until = tokio::time::Instant::now() + limit;
        loop {
            let changed = self.jobs_changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            {
                let book = lock(&self.book);
                if !book.is_running(jid) || book.returned(jid).is_some_and(|n| n > since) {
                    return;
                }
            }
            tokio::select! {
                () = changed => {}
                () = tokio::time::sleep_until(until) => return,
            }
        }
    }

    /// Running jobs (not final yet), newest last.
    pub fn active_jobs(&self) -> Vec<(String, ActiveJob)> {
        lock(&self.book).active()
    }

    /// Stored jobs, oldest first.
    pub fn list_jobs(&self) -> Vec<(String, Json)> {
        lock(&self.cache).list()
    }

    /// Syndics a new job waits for: every registered syndic (with `order_masters`), except
    /// brine syndics whose heartbeat stopped (dead or cut off: nobody will report for them).
    /// Salt's syndics send no heartbeat and are always waited for, up to `syndic_wait`.
    /// Returns `(every registered syndic, the ones to wait for)`.
    fn live_syndics(&self) -> (BTreeSet<String>, Vec<String>) {
        if !self.cfg.order_masters {
            return (BTreeSet::new(), Vec::new());
        }
        let all = lock(&self.syndics).clone();
        let beats = lock(&self.syndic_beats);
        let live = all
            .iter()
            .filter(|id| {
                beats
                    .get(*id)
                    .is_none_or(|t| t.elapsed() < SYNDIC_HEARTBEAT_STALE)
            })
            .cloned()
            .collect();
        (all, live)
    }

    /// A minion registered its resources (Salt 3008): while it manages some, any target may
    /// reach it through a resource id.
    fn on_resources(&self, id: &str, manages: bool) {
        let changed = {
            let mut m = lock(&self.resource_managers);
            if manages {
                m.insert(id.to_owned())
            } else {
                m.remove(id)
            }
        };
        if !changed {
            return;
        }
        let path = resources_dir(&self.cfg.cachedir).join(id);
        let r = if manages {
            std::fs::create_dir_all(resources_dir(&self.cfg.cachedir))
                .and_then(|()| std::fs::write(&path, b""))
        } else {
            std::fs::remove_file(&path)
        };
        if let Err(e) = r {
            warn!(minion_id = id, error = %e, "cannot record the minion's resources");
        }
        info!(minion_id = id, manages, "resource registration");
    }

    /// Syndics known below this master.
    pub fn syndics(&self) -> BTreeSet<String> {
        lock(&self.syndics).clone()
    }

    /// Take a syndic's `_syndic_return`: register the syndic, take its reports, and return
    /// the returns it carries that pass the checks (each refusal is logged):
    /// - the job was published or relayed by this master;
    /// - the minion is not one of this master's own (an accepted key that is not a syndic);
    /// - the job's target can reach the minion (evaluated on its id; grains below a syndic are
    ///   unknown here, so only what the id rules out is ruled out);
    /// - when the entry names the minions below the syndic (a Salt syndic sends its job
    ///   load's `Minions`), the minion is among them.
    ///
    /// The first return per job and minion stands ([`MasterCore::on_return`]).
    fn on_syndic(
        &self,
        syndic: &str,
        reported: &[crate::requests::SyndicReport],
    ) -> Vec<ReturnLoad> {
        {
            // An empty `_syndic_return` is a brine syndic's heartbeat; anything else it sends
            // proves it alive too (its heartbeat may queue behind a large batch).
            let mut beats = lock(&self.syndic_beats);
            if reported.is_empty() || beats.contains_key(syndic) {
                beats.insert(syndic.to_owned(), Instant::now());
            }
        }
        if lock(&self.syndics).insert(syndic.to_owned()) {
            let dir = self.cfg.cachedir.join("syndics");
            let _ = std::fs::create_dir_all(&dir);
            if let Err(e) = std::fs::write(dir.join(syndic), b"") {
                warn!(syndic, error = %e, "cannot record the syndic");
            }
            info!(syndic, "syndic registered");
        }
        let mut accepted = Vec::new();
        let syndics = lock(&self.syndics).clone();
        for rep in reported {
            let jid = &rep.jid;
            let target = {
                let book = lock(&self.book);
                match book.load(jid) {
                    Some(load) => Some(load.clone()),
                    None if book.is_find_job(jid) => Some(Json::Null),
                    None => {
                        drop(book);
                        lock(&self.cache).job(jid)
                    }
                }
            };
            let load = match target {
                Some(load) => load,
                None => match self.adoptable(jid, &rep.load) {
                    Ok(load) => {
                        info!(syndic, jid = %jid, master_id = %load.get("master_id").and_then(Json::as_str).unwrap_or(""), "returns for a job another master published, taken from its syndic");
                        let mut cache = lock(&self.cache);
                        if cache.job(jid).is_none()
                            && let Err(e) = cache.save_job(jid, &load)
                        {
                            warn!(jid = %jid, error = %e, "job cache write failed");
                        }
                        load
                    }
                    Err(why) => {
                        warn!(syndic, jid = %jid, returns = rep.returns.len(), reason = why, "syndic return refused: a job this master did not publish or relay");
                        continue;
                    }
                },
            };
            for r in &rep.returns {
                let refuse = |why: &str| {
                    warn!(syndic, jid = %jid, minion_id = %r.id, reason = why, "syndic return refused");
                };
                if !syndics.contains(&r.id) && self.keys.is_accepted(&r.id) {
                    refuse("the minion is this master's own, not below the syndic");
                    continue;
                }
                if let Some(named) = &rep.minions
                    && !named.contains(&r.id)
                {
                    refuse("the minion is not among those the syndic names for the job");
                    continue;
                }
                if let (Some(tgt), Some(tgt_type)) =
                    (load.get("tgt"), load.get("tgt_type").and_then(Json::as_str))
                {
                    let nil = Value::Nil;
                    let facts = brine_proto::target::Facts {
                        id: &r.id,
                        grains: &nil,
                        pillar: &nil,
                    };
                    let tri = brine_proto::target::evaluate(
                        &crate::json::from_json(tgt),
                        tgt_type,
                        ":",
                        &facts,
                        &brine_proto::target::NoNodegroups,
                    );
                    if tri == Ok(Tri::No) {
                        refuse("the job's target does not reach the minion");
                        continue;
                    }
                }
                accepted.push(r.clone());
            }
            let Some(minions) = &rep.minions else {
                continue;
            };
            lock(&self.book).handle_syndic_report(jid, syndic, minions);
            self.tracker_due.notify_one();
        }
        accepted
    }

    /// Whether returns for `jid`, a job this master neither published nor relayed, may be taken
    /// from a syndic: only when the syndic sends the job's load naming another master as its
    /// publisher (`master_id`: a hot peer that died, and whose syndics now report here) and
    /// the jid is recent (within `keep_jobs_seconds`, not in the future). Anything else — a
    /// jid made up, an old one, one this master would have published — is refused. (Once
    /// masters share their jobs, issue 17, such a job is known here and this goes away.)
    fn adoptable(&self, jid: &str, load: &Value) -> Result<Json, &'static str> {
        let load = to_json(load);
        let Some(master) = load.get("master_id").and_then(Json::as_str) else {
            return Err("no job load naming the master that published it");
        };
        if self.cfg.master_id.as_deref() == Some(master) {
            return Err("the load names this master, which has no such job");
        }
        let Some(parsed) = Jid::parse(jid) else {
            return Err("not a job id");
        };
        let now = Jid::from_unix_micros(unix_micros() + 60_000_000);
        let oldest = Jid::from_unix_micros(
            unix_micros().saturating_sub(self.cfg.keep_jobs_seconds.saturating_mul(1_000_000)),
        );
        let ts = &parsed.as_str()[..20];
        if ts > &now.as_str()[..20] || ts < &oldest.as_str()[..20] {
            return Err("a job id from the future or older than keep_jobs_seconds");
        }
        Ok(load)
    }

    /// A syndic whose key was deleted or rejected is no longer one.
    fn forget_syndic(&self, id: &str) {
        if lock(&self.syndics).remove(id) {
            lock(&self.syndic_beats).remove(id);
            let _ = std::fs::remove_file(self.cfg.cachedir.join("syndics").join(id));
            info!(
                syndic = id,
                "syndic forgotten (its key is no longer accepted)"
            );
        }
    }

    /// Take a minion's return. `false` when a return from that minion was already taken for
    /// that job: a copy (a minion resends a return whose acknowledgement it did not get in
    /// time), or a different one (the first stands, as in Salt's job cache; the other is
    /// logged). Neither is stored, forwarded or announced again.
    fn on_return(&self, r: &ReturnLoad) -> bool {
        let mut data = to_json(&r.to_value());
        if let Json::Object(o) = &mut data {
            o.remove("cmd");
        }
        {
            let running = r.ret.as_map().is_some_and(|m| !m.is_empty());
            if lock(&self.book).handle_find_job_answer(&r.jid, &r.id, running) {
                debug!(find_job_jid = %r.jid, minion_id = %r.id, running, "find_job answer");
                if !running {
                    // The job may be settled now.
                    self.tracker_due.notify_one();
                }
                return true;
            }
        }
        // Check and record under one lock: the reply goes out before this runs, so the copy
        // can be in another handler already.
        let taken = lock(&self.book).take_return(&r.jid, &r.id, &data);
        match taken {
            Taken::Again => {
                debug!(jid = %r.jid, minion_id = %r.id, "same return again; already taken");
                return false;
            }
            Taken::Conflict => {
                warn!(jid = %r.jid, minion_id = %r.id, "a second, different return ignored: the first stands");
                return false;
            }
            Taken::New { complete } => {
                self.jobs_changed.notify_waiters();
                if complete {
                    // Every return is in: the driver settles the job now, not at its next tick.
                    self.tracker_due.notify_one();
                }
            }
            Taken::NotInMemory => {
                if lock(&self.cache).returns(&r.jid).contains_key(&r.id) {
                    warn!(jid = %r.jid, minion_id = %r.id, "a return for a finished job that already has one ignored: the first stands");
                    return false;
                }
                lock(&self.book).handle_late_return(&r.jid, &r.id);
            }
        }
        if let Some(tap) = self.return_tap.get() {
            tap(r);
        }
        if let Err(e) = lock(&self.cache).add_return(&r.jid, &r.id, &data) {
            warn!(jid = %r.jid, minion_id = %r.id, error = %e, "job cache write failed");
        }
        true
    }

    /// A return sent with jid `req` (a minion's scheduled job, `salt-call`): stored as
    /// salt-master's `store_job` stores it, as a job of its own under a new jid, targeted at
    /// the minion alone (`arg` from `fun_args`, `tgt_type` glob, `tgt` its id), and announced
    /// on `salt/job/<jid>/ret/<id>`.
    fn on_minion_job(&self, mut load: Value) {
        let Some(id) = load.get("id").and_then(Value::as_str).map(str::to_owned) else {
            return;
        };
        let arg = load
            .get("arg")
            .or_else(|| load.get("fun_args"))
            .cloned()
            .unwrap_or_else(|| Value::Array(vec![]));
        load.insert("arg", arg.clone());
        load.insert("tgt_type", "glob");
        load.insert("tgt", id.as_str());
        let jid = lock(&self.jidgen)
            .next_jid(unix_micros())
            .as_str()
            .to_owned();
        load.insert("jid", jid.as_str());
        let fun = load
            .get("fun")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        let user = load
            .get("user")
            .and_then(Value::as_str)
            .unwrap_or("root")
            .to_owned();
        let stored = json!({
            "jid": jid.as_str(),
            "fun": fun,
            "arg": to_json(&arg),
            "tgt": id,
            "tgt_type": "glob",
            "user": user,
            "minions": [id],
            "StartTime": start_time(&jid),
        });
        let mut data = to_json(&load);
        if let Json::Object(o) = &mut data {
            o.remove("cmd");
        }
        {
            let mut cache = lock(&self.cache);
            if let Err(e) = cache.save_job(&jid, &stored) {
                warn!(jid = %jid, error = %e, "job cache write failed");
            }
            if let Err(e) = cache.add_return(&jid, &id, &data) {
                warn!(jid = %jid, minion_id = %id, error = %e, "job cache write failed");
            }
            cache.close(&jid);
        }
        info!(jid = %jid, minion_id = %id, fun = %fun, "minion-initiated return stored");
        self.bus.fire(format!("salt/job/{jid}/ret/{id}"), load);
    }

    async fn tick(&self) {
        let now = Instant::now();
        let due = lock(&self.book).handle_timeout(now);
        for (jid, who) in due.asks {
            let fj = lock(&self.jidgen).next_jid(unix_micros());
            lock(&self.book).handle_find_job_sent(fj.as_str(), &jid);
            let load = JobLoad::find_job(&jid, &who, &fj);
            info!(jid = %jid, find_job_jid = %fj, minions = ?who, "asking silent minions (saltutil.find_job)");
            if let Err(e) = self.publisher.publish(load, Some(&who), &mut Rng).await {
                warn!(error = %e, "find_job publish failed");
            }
        }
        {
            let mut cache = lock(&self.cache);
            for f in &due.finished {
                cache.close(&f.jid);
                info!(jid = %f.jid, returned = f.returned.len(), missing = f.missing.len(), "job finished");
            }
            cache.flush();
        }
        if !due.finished.is_empty() {
            self.jobs_changed.notify_waiters();
        }
    }
}

/// A bound master core: sockets open, keys loaded.
pub struct Server {
    shared: Arc<MasterCore>,
    router: Router,
    handlers: Vec<RequestHandler>,
    secrets: Arc<Mutex<Secrets>>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("ret", &self.router.endpoint())
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
        let syndics = ids_in(&cfg.cachedir.join("syndics"));
        let resource_managers = ids_in(&resources_dir(&cfg.cachedir));
        let shared = Arc::new(MasterCore {
            book: Mutex::new(JobBook::new(Duration::from_secs(cfg.gather_job_timeout))),
            cfg,
            keys,
            grains,
            pillars,
            jobs_changed: tokio::sync::Notify::new(),
            tracker_due: tokio::sync::Notify::new(),
            cache: Mutex::new(cache),
            bus: EventBus::new(),
            publisher: jp,
            jidgen: Mutex::new(JidGenerator::default()),
            syndics: Mutex::new(syndics),
            resource_managers: Mutex::new(resource_managers),
            return_tap: std::sync::OnceLock::new(),
            syndic_id: std::sync::OnceLock::new(),
            syndic_beats: Mutex::new(HashMap::new()),
            forwarded_seen: Mutex::new(Default::default()),
        });
        Ok(Self {
            shared,
            router,
            handlers,
            secrets,
        })
    }

    /// The bound ret (request) port.
    pub fn ret_port(&self) -> u16 {
        self.router.port()
    }

    /// The bound publish port.
    pub fn publish_port(&self) -> u16 {
        self.shared.publisher.port()
    }

    /// The shared core.
    pub fn core(&self) -> Arc<MasterCore> {
        self.shared.clone()
    }
}

impl Server {
    /// Serve until `shutdown` resolves.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let Self {
            shared,
            mut router,
            handlers,
            secrets,
        } = self;
        info!(
            ret = %router.endpoint(),
            publish = %shared.publisher.port(),
            pki = %shared.cfg.pki_dir.display(),
            "master serving"
        );
        let mut queues = Vec::new();
        let mut worker_tasks = Vec::new();
        for mut handler in handlers {
            let (tx, mut rx) = tokio::sync::mpsc::channel::<brine_transport::RouterRequest>(4096);
            let replier = router.replier();
            let shared = shared.clone();
            queues.push(tx);
            worker_tasks.push(tokio::spawn(async move {
                while let Some(req) = rx.recv().await {
                    let peer = String::from_utf8_lossy(&req.peer).into_owned();
                    let h = handler.handle(&req.payload, &peer);
                    if replier.reply(&req, h.reply).await.is_err() {
                        return;
                    }
                    let mut copies = Vec::new();
                    for r in &h.returns {
                        if !shared.on_return(r) {
                            copies.push(format!("salt/job/{}/ret/{}", r.jid, r.id));
                        }
                    }
                    if let Some((syndic, reported)) = &h.syndic {
                        for r in shared.on_syndic(syndic, reported) {
                            if shared.on_return(&r) {
                                let mut data = r.to_value();
                                data.remove("cmd");
                                shared
                                    .bus
                                    .fire(format!("salt/job/{}/ret/{}", r.jid, r.id), data);
                            }
                        }
                    }
                    for e in h.events {
                        if copies.contains(&e.tag) {
                            continue;
                        }
                        if !shared.forwarded_event_is_new(&e.tag, &e.data) {
                            debug!(tag = %e.tag, "forwarded event seen before; dropped");
                            continue;
                        }
                        if e.tag.starts_with("salt/minion/") && e.tag.ends_with("/start") {
                            info!(tag = %e.tag, "minion started");
                        } else {
                            debug!(tag = %e.tag, "event");
                        }
                        shared.bus.fire_event(e);
                    }
                    if let Some((id, p)) = h.pillar {
                        lock(&shared.pillars).insert(id, p);
                    }
                    if let Some((id, g)) = h.grains {
                        lock(&shared.grains).insert(id, g);
                    }
                    if let Some(load) = h.minion_job {
                        shared.on_minion_job(load);
                    }
                    if let Some((id, manages)) = &h.resources {
                        shared.on_resources(id, *manages);
                    }
                    if let Some(id) = h.minion {
                        lock(&shared.book).handle_present(&id);
                    }
                }
            }));
        }
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
        // Housekeeping once a second, the job book with it; and the book as soon as it has
        // something due (its poll_timeout) or a job has all its returns or changed what it waits
        // for.
        let mut housekeeping = tokio::time::interval(Duration::from_secs(1));
        let mut n: u64 = 0;
        let mut key_snapshot = key_states(&shared.keys);
        let mut presence_snapshot: BTreeSet<String> = BTreeSet::new();
        loop {
            let now = tokio::time::Instant::now();
            let due = lock(&shared.book)
                .poll_timeout(now.into_std())
                .map_or(now + Duration::from_secs(1), tokio::time::Instant::from_std)
                .clamp(now + Duration::from_millis(5), now + Duration::from_secs(1));
            tokio::select! {
                () = &mut shutdown => {
                    info!("shutting down");
                    break;
                }
                _ = housekeeping.tick() => {
                    n += 1;
                    // The book at least once a second (and the job cache flushed): the sleep
                    // below restarts with every turn of this loop, so it alone could starve.
                    shared.tick().await;
                    check_dropfile(&shared, &secrets);
                    lock(&secrets).expire_auth_replies();
                    if n.is_multiple_of(2) {
                        key_snapshot = fire_key_changes(&shared, key_snapshot);
                    }
                    if shared.cfg.presence_events {
                        presence_snapshot = fire_presence(&shared, presence_snapshot, n.is_multiple_of(60));
                    }
                    if n % 3_600 == 1 {
                        let removed = lock(&shared.cache).sweep(unix_micros());
                        if removed > 0 {
                            info!(removed, "old jobs removed from the job cache (keep_jobs_seconds)");
                        }
                    }
                }
                () = tokio::time::sleep_until(due) => shared.tick().await,
                () = shared.tracker_due.notified() => {
                    // Returns come in bursts: let the burst land, then settle what is done.
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    shared.tick().await;
                }
                _ = &mut dispatcher => break,
            }
        }
        // Dropping the dispatcher drops the ROUTER's receiver and the handlers' queues; the
        // handlers finish what they hold.
        dispatcher.abort();
        let _ = dispatcher.await;
        for t in worker_tasks {
            let _ = t.await;
        }
        lock(&shared.cache).flush();
    }
}
