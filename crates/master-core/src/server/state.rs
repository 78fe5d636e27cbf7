//! The master's state, sans IO: jobs and their tracker, the job cache, presence, the syndics and
//! resource managers below, forwarded-event de-duplication and jid generation, owned by one
//! driver task ([`super::Server::run`]) and changed only through the methods here.
//!
//! Inputs: [`CoreState::handle_request`] (what a request worker decoded from a minion or
//! syndic), [`CoreState::publish`] and [`CoreState::relay`] (jobs from the API and from upper
//! masters), [`CoreState::handle_timeout`] (the time came), [`CoreState::handle_housekeeping`]
//! (once a second). Outputs, which the driver takes after every input in this order:
//! [`CoreState::poll_transmit`] (job loads to publish), [`CoreState::poll_event`] (events for
//! the bus, returns for the upstream side, "jobs changed" for waiters),
//! [`CoreState::poll_record`] (writes for the Redis job cache), then
//! [`CoreState::poll_timeout`] (when to call `handle_timeout` next). Queries (`job_view`,
//! `running`...) take `&self` and answer at once.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::{Duration, Instant};

use brine_proto::Value;
use brine_proto::jid::{Jid, JidGenerator};
use brine_proto::loads::{JobLoad, ReturnLoad};
use brine_proto::target::{TargetError, Tri};
use tracing::{debug, info, warn};

use super::book::{JobBook, Taken};
use super::watch::{key_states, resources_dir};
use super::{
    ActiveJob, Allowed, JobSince, JobView, MAX_JOB_TIMEOUT, PublishError, PublishSpec, Published,
    SYNDIC_HEARTBEAT_STALE, narrow, not_syndics, outside_acl,
};
use crate::config::MasterConfig;
use crate::events::unix_micros;
use crate::jobcache::JobCache;
use crate::keys::{KeyDir, KeyStore};
use crate::lock;
use crate::mine::DataCache;
use crate::redis_cache::Record;
use crate::requests::{Handled, MasterEvent, SyndicReport};
use crate::targeting::{Fleet, expand_nodegroups, reach};
use brine_proto::jid::start_time;

/// How long the driver lets a burst of returns land before settling a job that has them all.
const SETTLE_DELAY: Duration = Duration::from_millis(5);

/// A job load to publish on the PUB socket, and the minions it is for (`zmq_filtering`).
#[derive(Debug)]
pub struct Transmit {
    /// The load (serial and signature are the publisher's).
    pub load: JobLoad,
    /// The minions expected to run it.
    pub minions: Vec<String>,
}

/// What the state has for the driver besides publishes.
#[derive(Debug)]
pub enum CoreEvent {
    /// An event for the bus.
    Fire(MasterEvent),
    /// A return this master took (not a `find_job` answer): the upstream side forwards it.
    Return(Box<ReturnLoad>),
    /// A job took a return or became final: wake whoever waits on jobs.
    JobsChanged,
}

/// A job from the embedded cache: its jid, its load and the stored returns (minion, data).
pub type CachedJob = (String, Value, Vec<(String, Value)>);

/// The master's state. See the module documentation for the order a driver calls it in.
pub struct CoreState {
    cfg: MasterConfig,
    keys: KeyStore,
    /// Grains and pillar as the request workers last cached them (the mine reads them too).
    grains: DataCache,
    pillars: DataCache,
    book: JobBook,
    cache: JobCache,
    jidgen: JidGenerator,
    /// Syndics below this master (`cachedir/syndics/<id>`, as Salt records them).
    syndics: BTreeSet<String>,
    /// Minions that registered resources (Salt 3008): `cachedir/brine/resources/<id>`.
    resource_managers: BTreeSet<String>,
    /// Last heartbeat of each brine syndic below.
    syndic_beats: HashMap<String, Instant>,
    /// This master's id as a syndic (events that passed through it are dropped).
    syndic_id: Option<String>,
    /// Forwarded events seen (masters that syndicate each other see copies by several paths).
    forwarded_seen: crate::upstream::EventDedup,
    transmits: VecDeque<Transmit>,
    events: VecDeque<CoreEvent>,
    /// Writes for the Redis job cache (`master_job_cache: redis`), in order.
    records: VecDeque<Record>,
    jobs_changed: bool,
    /// The book's next deadline, recomputed only when something that can move it earlier
    /// happened (`None` inside: nothing due).
    book_due: Option<Option<Instant>>,
    /// A job has all its returns (or its syndics reported): settle at this time.
    settle_at: Option<Instant>,
    /// Housekeeping rounds, and what the last one saw.
    rounds: u64,
    key_snapshot: BTreeMap<String, &'static str>,
    presence_snapshot: BTreeSet<String>,
    /// The returns of jobs no longer in memory (finished and let go, or from before a restart)
    /// that late returns came for, by jid: read from the cache once per job and kept while
    /// late returns keep coming, so a syndic replaying thousands of them costs one read, not
    /// one per return. Only each minion's `return` is kept (to tell a copy from a conflict).
    late: HashMap<String, (Instant, HashMap<String, Value>)>,
}

impl std::fmt::Debug for CoreState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CoreState")
            .field("syndics", &self.syndics)
            .finish_non_exhaustive()
    }
}

/// How long the returns of a job no longer in memory stay indexed after the last late return
/// for it (see `CoreState::late`).
const LATE_KEPT: Duration = Duration::from_secs(60);

impl CoreState {
    /// The state of a master with `cfg`, its pki directory `keys`, its job cache, and the
    /// grains and pillar caches the request workers fill.
    pub fn new(
        cfg: MasterConfig,
        keys: KeyStore,
        cache: JobCache,
        grains: DataCache,
        pillars: DataCache,
    ) -> Self {
        let syndics = super::watch::ids_in(&cfg.cachedir.join("syndics"));
        let resource_managers = super::watch::ids_in(&resources_dir(&cfg.cachedir));
        let key_snapshot = key_states(&keys);
        let jidgen = if cfg.unique_jid {
            JidGenerator::with_suffix(&std::process::id().to_string())
        } else {
            JidGenerator::default()
        };
        Self {
            book: JobBook::new(Duration::from_secs(cfg.gather_job_timeout)),
            cfg,
            keys,
            grains,
            pillars,
            cache,
            jidgen,
            syndics,
            resource_managers,
            syndic_beats: HashMap::new(),
            syndic_id: None,
            forwarded_seen: Default::default(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            records: VecDeque::new(),
            jobs_changed: false,
            book_due: None,
            settle_at: None,
            rounds: 0,
            key_snapshot,
            presence_snapshot: BTreeSet::new(),
            late: HashMap::new(),
        }
    }

    // ---- outputs ----

    /// The next job load to publish.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next event (bus events, returns for the upstream side, then "jobs changed").
    pub fn poll_event(&mut self) -> Option<CoreEvent> {
        if let Some(e) = self.events.pop_front() {
            return Some(e);
        }
        std::mem::take(&mut self.jobs_changed).then_some(CoreEvent::JobsChanged)
    }

    /// The next write for the Redis job cache (only with `master_job_cache: redis`).
    pub fn poll_record(&mut self) -> Option<Record> {
        self.records.pop_front()
    }

    fn record(&mut self, r: Record) {
        if self.cfg.redis.is_some() {
            self.records.push_back(r);
        }
    }

    /// When [`Self::handle_timeout`] should run next (`None`: nothing is due), as seen at
    /// `now`.
    pub fn poll_timeout(&mut self, now: Instant) -> Option<Instant> {
        let book = match self.book_due {
            Some(t) => t,
            None => {
                let t = self.book.poll_timeout(now);
                self.book_due = Some(t);
                t
            }
        };
        match (book, self.settle_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn fire(&mut self, tag: impl Into<String>, data: Value) {
        self.events.push_back(CoreEvent::Fire(MasterEvent {
            tag: tag.into(),
            data,
        }));
    }

    /// The book's deadlines may have moved earlier.
    fn book_changed(&mut self) {
        self.book_due = None;
    }

    fn settle_soon(&mut self, now: Instant) {
        let at = now + SETTLE_DELAY;
        self.settle_at = Some(self.settle_at.map_or(at, |t| t.min(at)));
    }

    // ---- inputs ----

    /// Know this master's id as a syndic: events that passed through it are not taken again.
    pub fn set_syndic_id(&mut self, id: &str) {
        self.syndic_id = Some(id.to_owned());
    }

    /// What a request worker decoded and answered: returns, a syndic's batch, events, a
    /// minion's own job, resource registration, presence. (Grains and pillar went to their
    /// caches in the worker.)
    pub fn handle_request(&mut self, h: Handled, now: Instant) {
        let mut copies = Vec::new();
        for r in &h.returns {
            if !self.on_return(r, now) {
                copies.push(format!("salt/job/{}/ret/{}", r.jid, r.id));
            }
        }
        if let Some((syndic, reported)) = &h.syndic {
            for r in self.on_syndic(syndic, reported, now) {
                if self.on_return(&r, now) {
                    let mut data = r.to_value();
                    data.remove("cmd");
                    self.fire(format!("salt/job/{}/ret/{}", r.jid, r.id), data);
                }
            }
        }
        for e in h.events {
            if copies.contains(&e.tag) {
                continue;
            }
            if !self.forwarded_event_is_new(&e.tag, &e.data) {
                debug!(tag = %e.tag, "forwarded event seen before; dropped");
                continue;
            }
            if e.tag.starts_with("salt/minion/") && e.tag.ends_with("/start") {
                info!(tag = %e.tag, "minion started");
            } else {
                debug!(tag = %e.tag, "event");
            }
            self.events.push_back(CoreEvent::Fire(e));
        }
        if let Some(load) = h.minion_job {
            self.on_minion_job(load);
        }
        if let Some((id, manages)) = &h.resources {
            self.on_resources(id, *manages);
        }
        if let Some(id) = h.minion {
            self.book.handle_present(&id, now);
        }
    }

    /// The deadlines came: ask silent minions (`find_job`), make jobs final, flush the cache.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.settle_at = None;
        self.book_changed();
        let due = self.book.handle_timeout(now);
        for (jid, who) in due.asks {
            let fj = self.jidgen.next_jid(unix_micros());
            self.book.handle_find_job_sent(fj.as_str(), &jid);
            let load = JobLoad::find_job(&jid, &who, &fj);
            info!(jid = %jid, find_job_jid = %fj, minions = ?who, "asking silent minions (saltutil.find_job)");
            self.transmits.push_back(Transmit { load, minions: who });
        }
        for f in &due.finished {
            self.cache.close(&f.jid);
            info!(jid = %f.jid, returned = f.returned.len(), missing = f.missing.len(), "job finished");
        }
        self.cache.flush();
        if !due.finished.is_empty() {
            self.jobs_changed = true;
        }
    }

    /// Once a second: deadlines, the pki directory (`salt/key` events, syndics whose key went
    /// away), presence events, old jobs out of the cache.
    pub fn handle_housekeeping(&mut self, now: Instant) {
        self.rounds += 1;
        let n = self.rounds;
        self.late
            .retain(|_, (used, _)| now.saturating_duration_since(*used) < LATE_KEPT);
        for (syndic, beat) in &self.syndic_beats {
            if now.saturating_duration_since(*beat) >= SYNDIC_HEARTBEAT_STALE {
                self.book.syndic_lost(syndic);
            }
        }
        // The book at least once a second (and the job cache flushed).
        self.handle_timeout(now);
        if n.is_multiple_of(2) {
            self.watch_keys();
        }
        if self.cfg.presence_events {
            self.watch_presence(n.is_multiple_of(60));
        }
        if n % 3_600 == 1 {
            let removed = self.cache.sweep(unix_micros());
            if removed > 0 {
                info!(
                    removed,
                    "old jobs removed from the job cache (keep_jobs_seconds)"
                );
            }
        }
    }

    /// Flush the job cache (the driver is stopping).
    pub fn shutdown(&mut self) {
        self.cache.flush();
    }

    /// Put what the requests handled so far brought on disk (the job cache's buffered
    /// returns), before their senders are told they were stored: a `kill -9` right after the
    /// acknowledgement then loses nothing.
    pub fn persist(&mut self) {
        self.cache.flush();
    }

    /// Offer the Redis job cache again every job the embedded cache changed since `since`
    /// (its load and returns): what a `kill -9` caught between the acknowledgement and the
    /// Redis writer. Writes are idempotent, so a record written before is only written again.
    /// Returns how many jobs.
    pub fn resync_redis(&mut self, since: std::time::SystemTime) -> usize {
        if self.cfg.redis.is_none() {
            return 0;
        }
        let jids = self.cache.changed_since(since);
        for jid in &jids {
            let Some(load) = self.cache.job(jid) else {
                continue;
            };
            let fun = load
                .get("fun")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            self.record(Record::Load {
                jid: jid.clone(),
                load,
            });
            for (id, data) in self.cache.returns(jid) {
                let fun = data
                    .get("fun")
                    .and_then(Value::as_str)
                    .map_or_else(|| fun.clone(), str::to_owned);
                self.record(Record::Return {
                    jid: jid.clone(),
                    id,
                    fun,
                    data,
                });
            }
        }
        jids.len()
    }

    /// Jobs among `jids` whose embedded cache entry changed since `since`, with their loads and
    /// stored returns (a syndic's replay of returns a crash kept from going upward).
    pub fn cached_jobs_since(
        &self,
        since: std::time::SystemTime,
        jids: &std::collections::HashSet<String>,
    ) -> Vec<CachedJob> {
        self.cache
            .changed_since(since)
            .into_iter()
            .filter(|jid| jids.contains(jid))
            .filter_map(|jid| {
                let load = self.cache.job(&jid)?;
                let returns: Vec<(String, Value)> = self.cache.returns(&jid).into_iter().collect();
                Some((jid, load, returns))
            })
            .collect()
    }

    // ---- queries ----

    /// Accepted minion ids.
    pub fn accepted(&self) -> Vec<String> {
        self.keys.list(KeyDir::Accepted)
    }

    /// A fresh job id.
    pub fn new_jid(&mut self) -> String {
        self.jidgen.next_jid(unix_micros()).to_string()
    }

    /// Minions present: authenticated or heard from since the master started, and not given up
    /// on (a `find_job` left unanswered) since.
    pub fn present(&self) -> BTreeSet<String> {
        self.book.present().clone()
    }

    /// Syndics known below this master.
    pub fn syndics(&self) -> BTreeSet<String> {
        self.syndics.clone()
    }

    /// Whether the tracker still follows `jid` (not final yet).
    pub fn is_tracking(&self, jid: &str, now: Instant) -> bool {
        self.book.is_tracking(jid, now)
    }

    /// Whether `jid` is in memory and not final.
    pub fn is_running(&self, jid: &str) -> bool {
        self.book.is_running(jid)
    }

    /// Whether `jid` has more than `since` returns or is final (or not in memory).
    /// `None` for a job not in memory (the caller looks at the stores).
    pub fn changed_since(&self, jid: &str, since: usize) -> Option<bool> {
        let returned = self.book.returned(jid)?;
        Some(!self.book.is_running(jid) || returned > since)
    }

    /// The minions expected for `jid` once every syndic below has reported them (or
    /// `syndic_wait` passed); `None` while waiting, or for an unknown job.
    pub fn settled_expected(&self, jid: &str, now: Instant) -> Option<Vec<String>> {
        self.book.settled_expected(jid, now)
    }

    /// Whether each of `ids` still runs `jid` here: `Some(true)` running, `Some(false)` done or
    /// given up on, `None` for a minion this master does not know for that job.
    ///
    /// A minion this master gave up on only because its own wait ran out (no answer to
    /// `find_job` in time, or the job's deadline) still counts as running for a grace period
    /// after that: for a relayed job the master above decides how long to wait, and a syndic
    /// on a saturated host would otherwise tell it to stop waiting for returns that are still
    /// coming.
    pub fn running(&self, jid: &str, ids: &[String], now: Instant) -> Vec<(String, Option<bool>)> {
        self.book.running(jid, ids, now)
    }

    /// The job's load (what a syndic reports upward), from memory or the job cache.
    pub fn job_load(&self, jid: &str) -> Option<Value> {
        if let Some(load) = self.book.load(jid) {
            return Some(load.clone());
        }
        self.cache.job(jid)
    }

    /// A job as the API shows it: in memory while running (and shortly after), else from the
    /// cache. `(load, returns, missing-if-final)`.
    pub fn job_view(&self, jid: &str) -> Option<JobView> {
        if let Some(v) = self.book.view(jid) {
            return Some(v);
        }
        let load = self.cache.job(jid)?;
        let returns = self.cache.returns(jid);
        Some(super::stored_view(
            load,
            returns,
            self.cfg.gather_job_timeout,
        ))
    }

    /// The returns of `jid` after the first `since` (in the order they arrived) and the count
    /// so far, with the load and, once final, who is missing: what a client following the job
    /// has not seen yet. A job no longer in memory (read from the cache) gives every return
    /// (its order is not kept); clients drop those they have.
    pub fn job_since(&self, jid: &str, since: usize) -> Option<JobSince> {
        if let Some(j) = self.book.since(jid, since) {
            return Some(j);
        }
        self.job_view(jid).map(JobSince::whole)
    }

    /// Running jobs (not final yet), newest last.
    pub fn active_jobs(&self) -> Vec<(String, ActiveJob)> {
        self.book.active()
    }

    /// Stored jobs, oldest first.
    pub fn list_jobs(&self) -> Vec<(String, Value)> {
        self.cache.list()
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

    // ---- publishing ----

    /// Publish a job as `user`. With `allowed` (every caller but root: where the caller may run
    /// the function), every minion that may run the job must match one of those targets for
    /// sure (a minion brine cannot tell about counts as running it), or nothing is published.
    /// Below syndics the master cannot see which minions a target reaches, so there the
    /// published target is narrowed to `( target ) and ( acl targets )`, which the minions
    /// evaluate themselves. The load goes out through [`Self::poll_transmit`].
    ///
    /// # Errors
    /// [`PublishError`].
    pub fn publish(
        &mut self,
        spec: PublishSpec,
        user: &str,
        allowed: Option<Allowed>,
        now: Instant,
    ) -> Result<Published, PublishError> {
        let groups = |n: &str| self.cfg.nodegroups.get(n).cloned();
        let bad = |e: TargetError| PublishError::BadTarget(e.to_string());
        let (mut tgt, mut tgt_type) =
            expand_nodegroups(&spec.tgt, &spec.tgt_type, &groups).map_err(bad)?;
        let delimiter = ":";
        let mut reached = self
            .with_fleet(|f| reach(&tgt, &tgt_type, delimiter, f))
            .map_err(bad)?;
        let (all_syndics, syndics) = self.live_syndics(now);
        if let Some(Allowed::Within(within)) = allowed {
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
                let narrowed = narrow(&tgt, &tgt_type, delimiter, &within).ok_or_else(|| {
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
        // Below syndics: they are not minions that return; the job waits for their reports.
        let minions = not_syndics(&reached, &all_syndics);
        if minions.is_empty() && syndics.is_empty() {
            return Ok(Published {
                jid: String::new(),
                minions,
            });
        }
        let jid = self.jidgen.next_jid(unix_micros());
        let mut job = JobLoad::new(&spec.fun, spec.arg.clone(), tgt.clone(), &tgt_type, &jid);
        job.ret.clone_from(&spec.ret);
        job.user = Some(user.to_owned());
        job.master_id.clone_from(&self.cfg.master_id);
        let timeout_secs = spec.timeout.unwrap_or(self.cfg.timeout);
        Ok(self.launch(job, tgt, tgt_type, timeout_secs, minions, syndics, now))
    }

    /// Relay a job published by a master above (this master is its syndic): the same jid,
    /// `master_id`, user and extra keys, `to` one second less, targets resolved here. Returns the
    /// minions expected below this master (sub-syndics report theirs later).
    pub fn relay(&mut self, mut job: JobLoad, now: Instant) -> Published {
        let tgt_type = job.tgt_type().to_owned();
        let delim = job.delimiter.clone().unwrap_or_else(|| ":".into());
        let minions = self
            .with_fleet(|f| reach(&job.tgt, &tgt_type, &delim, f))
            .map(|r| r.all())
            .unwrap_or_else(|e| {
                warn!(jid = %job.jid, error = %e, "relayed target not evaluable here; minions decide");
                Vec::new()
            });
        let (all_syndics, syndics) = self.live_syndics(now);
        // Below this syndic are the minions talking to it now: masters that share a pki
        // directory (failover pairs) accept the same keys, but each minion is attached to one.
        let present = self.book.present();
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
        self.launch(job, tgt, tgt_type, timeout_secs, minions, syndics, now)
    }

    /// Cache, track, publish and announce a job.
    #[allow(clippy::too_many_arguments)]
    fn launch(
        &mut self,
        mut job: JobLoad,
        tgt: Value,
        tgt_type: String,
        timeout_secs: u64,
        minions: Vec<String>,
        syndics: Vec<String>,
        now: Instant,
    ) -> Published {
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
        let mut load = Value::map()
            .with("jid", jid.as_str())
            .with("fun", fun.as_str())
            .with("arg", arg.clone())
            .with("tgt", tgt.clone())
            .with("tgt_type", tgt_type.as_str())
            .with("user", user.as_str())
            .with("minions", id_list(&minions))
            .with("StartTime", start_time(&jid))
            // The job's timeout, as an upper master's publish carries it: how long a master that
            // restarted, or another master reading the shared cache, shows it as running.
            .with("to", timeout_secs);
        if let Some(m) = &job.master_id {
            load.insert("master_id", m.as_str());
        }
        if let Err(e) = self.cache.save_job(&jid, &load) {
            warn!(jid = %jid, error = %e, "job cache write failed");
        }
        self.record(Record::Load {
            jid: jid.clone(),
            load: load.clone(),
        });
        self.book.publish(
            &jid,
            load,
            &minions,
            &syndics,
            Duration::from_secs(timeout_secs),
            Duration::from_secs(self.cfg.syndic_wait),
            now,
        );
        // A brine syndic whose heartbeat is fresh is alive, only slow (a busy or briefly
        // stopped host): the job waits for its report up to the job's timeout, not just
        // `syndic_wait`, or the minions below it would be left out of a job they run. Its
        // heartbeat going stale ends the wait ([`Self::handle_housekeeping`]).
        let alive: Vec<String> = syndics
            .iter()
            .filter(|s| self.syndic_beats.contains_key(*s))
            .cloned()
            .collect();
        if !alive.is_empty() {
            let wait = Duration::from_secs(timeout_secs.max(self.cfg.syndic_wait));
            self.book.wait_for_live_syndics(&jid, &alive, wait, now);
        }
        // The next wake-up may be earlier now (this job's first ask).
        self.book_changed();
        self.transmits.push_back(Transmit {
            load: job,
            minions: minions.clone(),
        });
        info!(jid = %jid, fun = %fun, minions = minions.len(), user, "published");
        self.fire(
            format!("salt/job/{jid}/new"),
            Value::map()
                .with("jid", jid.as_str())
                .with("tgt", tgt)
                .with("tgt_type", tgt_type)
                .with("fun", fun)
                .with("arg", arg)
                .with("minions", id_list(&minions))
                .with("missing", Value::Array(vec![]))
                .with("user", user),
        );
        Published { jid, minions }
    }

    // ---- facts for targeting ----

    /// The facts targets are evaluated against: accepted keys, cached grains and pillar,
    /// resource managers.
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
        f(&Fleet {
            accepted: &accepted,
            grains: &grains,
            pillars: if pillars { &cached } else { &unknown },
            resource_managers: &self.resource_managers,
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

    /// Syndics a new job waits for: every registered syndic (with `order_masters`), except
    /// brine syndics whose heartbeat stopped (dead or cut off: nobody will report for them).
    /// Salt's syndics send no heartbeat and are always waited for, up to `syndic_wait`.
    /// Returns `(every registered syndic, the ones to wait for)`.
    fn live_syndics(&self, now: Instant) -> (BTreeSet<String>, Vec<String>) {
        if !self.cfg.order_masters {
            return (BTreeSet::new(), Vec::new());
        }
        let live = self
            .syndics
            .iter()
            .filter(|id| {
                self.syndic_beats
                    .get(*id)
                    .is_none_or(|t| now.saturating_duration_since(*t) < SYNDIC_HEARTBEAT_STALE)
            })
            .cloned()
            .collect();
        (self.syndics.clone(), live)
    }

    // ---- what requests brought ----

    /// Whether an event forwarded by a syndic should reach the bus: not one that passed through
    /// this master already, not a second copy of one seen by another path.
    fn forwarded_event_is_new(&mut self, tag: &str, data: &Value) -> bool {
        if !tag.starts_with("syndic/") {
            return true;
        }
        let me = self.syndic_id.as_deref().unwrap_or("");
        let (origin, looped) = crate::upstream::origin_tag(tag, me);
        if looped && !me.is_empty() {
            return false;
        }
        self.forwarded_seen
            .first_time(crate::upstream::event_key(origin, data))
    }

    /// A minion registered its resources (Salt 3008): while it manages some, any target may
    /// reach it through a resource id.
    fn on_resources(&mut self, id: &str, manages: bool) {
        let changed = if manages {
            self.resource_managers.insert(id.to_owned())
        } else {
            self.resource_managers.remove(id)
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

    /// Take a syndic's `_syndic_return`: register the syndic, take its reports, and return
    /// the returns it carries that pass the checks (each refusal is logged):
    /// - the job was published or relayed by this master;
    /// - the minion is not one of this master's own (an accepted key that is not a syndic);
    /// - the job's target can reach the minion (evaluated on its id; grains below a syndic are
    ///   unknown here, so only what the id rules out is ruled out);
    /// - when the entry names the minions below the syndic (a Salt syndic sends its job
    ///   load's `Minions`), the minion is among them.
    ///
    /// The first return per job and minion stands ([`Self::on_return`]).
    fn on_syndic(
        &mut self,
        syndic: &str,
        reported: &[SyndicReport],
        now: Instant,
    ) -> Vec<ReturnLoad> {
        // An empty `_syndic_return` is a brine syndic's heartbeat; anything else it sends
        // proves it alive too (its heartbeat may queue behind a large batch).
        if reported.is_empty() || self.syndic_beats.contains_key(syndic) {
            self.syndic_beats.insert(syndic.to_owned(), now);
        }
        if self.syndics.insert(syndic.to_owned()) {
            let dir = self.cfg.cachedir.join("syndics");
            let _ = std::fs::create_dir_all(&dir);
            if let Err(e) = std::fs::write(dir.join(syndic), b"") {
                warn!(syndic, error = %e, "cannot record the syndic");
            }
            info!(syndic, "syndic registered");
        }
        let mut accepted = Vec::new();
        for rep in reported {
            let jid = &rep.jid;
            let target = match self.book.load(jid) {
                Some(load) => Some(load.clone()),
                None if self.book.is_find_job(jid) => Some(Value::Nil),
                None => self.cache.job(jid),
            };
            let load = match target {
                Some(load) => load,
                None => match self.adoptable(jid, &rep.load) {
                    Ok(load) => {
                        info!(syndic, jid = %jid, master_id = %load.get("master_id").and_then(brine_proto::Value::as_str).unwrap_or(""), "returns for a job another master published, taken from its syndic");
                        if self.cache.job(jid).is_none() {
                            if let Err(e) = self.cache.save_job(jid, &load) {
                                warn!(jid = %jid, error = %e, "job cache write failed");
                            }
                            self.record(Record::Load {
                                jid: jid.clone(),
                                load: load.clone(),
                            });
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
                if !self.syndics.contains(&r.id) && self.keys.is_accepted(&r.id) {
                    refuse("the minion is this master's own, not below the syndic");
                    continue;
                }
                if let Some(named) = &rep.minions
                    && !named.contains(&r.id)
                {
                    refuse("the minion is not among those the syndic names for the job");
                    continue;
                }
                if let (Some(tgt), Some(tgt_type)) = (
                    load.get("tgt"),
                    load.get("tgt_type").and_then(Value::as_str),
                ) {
                    let nil = Value::Nil;
                    let facts = brine_proto::target::Facts {
                        id: &r.id,
                        grains: &nil,
                        pillar: &nil,
                    };
                    let tri = brine_proto::target::evaluate(
                        tgt,
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
            self.book.handle_syndic_report(jid, syndic, minions);
            self.book_changed();
            self.settle_soon(now);
        }
        accepted
    }

    /// Whether returns for `jid`, a job this master neither published nor relayed, may be taken
    /// from a syndic: only when the syndic sends the job's load naming another master as its
    /// publisher (`master_id`: a hot peer that died, and whose syndics now report here) and
    /// the jid is recent (within `keep_jobs_seconds`, not in the future). Anything else — a
    /// jid made up, an old one, one this master would have published — is refused. (Once
    /// masters share their jobs, issue 17, such a job is known here and this goes away.)
    fn adoptable(&self, jid: &str, load: &Value) -> Result<Value, &'static str> {
        let Some(master) = load.get("master_id").and_then(Value::as_str) else {
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
        Ok(load.clone())
    }

    /// A syndic whose key was deleted or rejected is no longer one.
    fn forget_syndic(&mut self, id: &str) {
        if self.syndics.remove(id) {
            self.syndic_beats.remove(id);
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
    fn on_return(&mut self, r: &ReturnLoad, now: Instant) -> bool {
        let running = r.ret.as_map().is_some_and(|m| !m.is_empty());
        if self.book.handle_find_job_answer(&r.jid, &r.id, running) {
            debug!(find_job_jid = %r.jid, minion_id = %r.id, running, "find_job answer");
            if !running {
                // The job may be settled now.
                self.book_changed();
                self.settle_soon(now);
            }
            return true;
        }
        let mut data = r.to_value();
        data.remove("cmd");
        match self.book.take_return(&r.jid, &r.id, &data) {
            Taken::Again => {
                debug!(jid = %r.jid, minion_id = %r.id, "same return again; already taken");
                return false;
            }
            Taken::Conflict => {
                warn!(jid = %r.jid, minion_id = %r.id, "a second, different return ignored: the first stands");
                return false;
            }
            Taken::New { complete } => {
                self.jobs_changed = true;
                if complete {
                    // Every return is in: settle the job now, not at the next round.
                    self.settle_soon(now);
                }
            }
            Taken::NotInMemory => {
                let cache = &self.cache;
                let (used, stored) = self.late.entry(r.jid.clone()).or_insert_with(|| {
                    let stored = cache
                        .returns(&r.jid)
                        .into_iter()
                        .map(|(id, v)| (id, v.get("return").cloned().unwrap_or(Value::Nil)))
                        .collect();
                    (now, stored)
                });
                *used = now;
                let ret = data.get("return").cloned().unwrap_or(Value::Nil);
                if let Some(first) = stored.get(&r.id) {
                    if *first == ret {
                        // A copy (a syndic's replay after a crash, a resend).
                        debug!(jid = %r.jid, minion_id = %r.id, "same return again for a finished job; already taken");
                    } else {
                        warn!(jid = %r.jid, minion_id = %r.id, "a return for a finished job that already has one ignored: the first stands");
                    }
                    return false;
                }
                stored.insert(r.id.clone(), ret);
                self.book.handle_late_return(&r.jid, &r.id);
                // A client may follow the job from the cache (this master restarted).
                self.jobs_changed = true;
            }
        }
        self.events
            .push_back(CoreEvent::Return(Box::new(r.clone())));
        if let Err(e) = self.cache.add_return(&r.jid, &r.id, &data) {
            warn!(jid = %r.jid, minion_id = %r.id, error = %e, "job cache write failed");
        }
        self.record(Record::Return {
            jid: r.jid.clone(),
            id: r.id.clone(),
            fun: r.fun.as_str().unwrap_or_default().to_owned(),
            data,
        });
        true
    }

    /// A return sent with jid `req` (a minion's scheduled job, `salt-call`): stored as
    /// salt-master's `store_job` stores it, as a job of its own under a new jid, targeted at
    /// the minion alone (`arg` from `fun_args`, `tgt_type` glob, `tgt` its id), and announced
    /// on `salt/job/<jid>/ret/<id>`.
    fn on_minion_job(&mut self, mut load: Value) {
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
        let jid = self.jidgen.next_jid(unix_micros()).as_str().to_owned();
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
        let stored = Value::map()
            .with("jid", jid.as_str())
            .with("fun", fun.as_str())
            .with("arg", arg)
            .with("tgt", id.as_str())
            .with("tgt_type", "glob")
            .with("user", user)
            .with("minions", Value::Array(vec![Value::str(&id)]))
            .with("StartTime", start_time(&jid));
        let mut data = load.clone();
        data.remove("cmd");
        if let Err(e) = self.cache.save_job(&jid, &stored) {
            warn!(jid = %jid, error = %e, "job cache write failed");
        }
        if let Err(e) = self.cache.add_return(&jid, &id, &data) {
            warn!(jid = %jid, minion_id = %id, error = %e, "job cache write failed");
        }
        self.cache.close(&jid);
        self.record(Record::Load {
            jid: jid.clone(),
            load: stored,
        });
        self.record(Record::Return {
            jid: jid.clone(),
            id: id.clone(),
            fun: fun.clone(),
            data,
        });
        info!(jid = %jid, minion_id = %id, fun = %fun, "minion-initiated return stored");
        self.fire(format!("salt/job/{jid}/ret/{id}"), load);
    }

    // ---- watching ----

    /// Salt's presence events: `salt/presence/change` `{new, lost}` when the present set
    /// changed (checked every second), `salt/presence/present` `{present}` every minute.
    fn watch_presence(&mut self, full: bool) {
        let now = self.book.present().clone();
        let before = std::mem::take(&mut self.presence_snapshot);
        let list = |s: Vec<&String>| Value::Array(s.into_iter().map(Value::str).collect());
        let new: Vec<&String> = now.difference(&before).collect();
        let lost: Vec<&String> = before.difference(&now).collect();
        if !new.is_empty() || !lost.is_empty() {
            let data = Value::map().with("new", list(new)).with("lost", list(lost));
            self.fire("salt/presence/change", data);
        }
        if full {
            let data = Value::map().with("present", list(now.iter().collect()));
            self.fire("salt/presence/present", data);
        }
        self.presence_snapshot = now;
    }

    /// `salt/key` events for key changes made on disk (`brine-key`, `salt-key`, auto-accept);
    /// a syndic whose key is no longer accepted is forgotten.
    fn watch_keys(&mut self) {
        let after = key_states(&self.keys);
        for id in self.syndics.clone() {
            if after.get(&id) != Some(&"accept") {
                self.forget_syndic(&id);
            }
        }
        let before = std::mem::take(&mut self.key_snapshot);
        let event = |id: &str, act: &str| {
            Value::map()
                .with("id", id)
                .with("act", act)
                .with("result", true)
        };
        for (id, act) in &after {
            if before.get(id) != Some(act) {
                self.fire("salt/key", event(id, act));
            }
        }
        for id in before.keys().filter(|id| !after.contains_key(*id)) {
            self.fire("salt/key", event(id, "delete"));
        }
        self.key_snapshot = after;
    }
}

/// Minion ids as a list value.
fn id_list(ids: &[String]) -> Value {
    Value::Array(ids.iter().map(Value::str).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::requests::Handled;

    /// A master in a new directory with accepted minions `ids` (`timeout` 5 s,
    /// `gather_job_timeout` 10 s).
    fn state(ids: &[&str], extra: &str) -> (tempfile::TempDir, CoreState) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let opts = format!(
            "root_dir: {}\npki_dir: {}/pki\ncachedir: {}/cache\ntimeout: 5\ngather_job_timeout: 10\n{extra}",
            dir.display(),
            dir.display(),
            dir.display()
        );
        let cfg = MasterConfig::from_options(&brine_daemon::config::Options::parse(&opts).unwrap())
            .unwrap();
        let accepted = cfg.pki_dir.join("minions");
        std::fs::create_dir_all(&accepted).unwrap();
        for id in ids {
            std::fs::write(accepted.join(id), b"key").unwrap();
        }
        let keys = KeyStore::open(&cfg.pki_dir).unwrap();
        let cache = JobCache::open(&dir.join("jobs"), Duration::from_secs(3600)).unwrap();
        let st = CoreState::new(cfg, keys, cache, DataCache::default(), DataCache::default());
        (tmp, st)
    }

    fn spec(tgt: &str) -> PublishSpec {
        PublishSpec {
            tgt: Value::str(tgt),
            tgt_type: "glob".into(),
            fun: "test.ping".into(),
            arg: vec![],
            timeout: None,
            ret: String::new(),
        }
    }

    fn ret(jid: &str, id: &str, v: Value) -> ReturnLoad {
        ReturnLoad::new(jid, id, "test.ping", v)
    }

    fn returns(rs: Vec<ReturnLoad>) -> Handled {
        Handled {
            returns: rs,
            ..Handled::default()
        }
    }

    fn drain(st: &mut CoreState) -> (Vec<Transmit>, Vec<CoreEvent>) {
        let t = std::iter::from_fn(|| st.poll_transmit()).collect();
        let e = std::iter::from_fn(|| st.poll_event()).collect();
        (t, e)
    }

    fn tags(events: &[CoreEvent]) -> Vec<String> {
        events
            .iter()
            .filter_map(|e| match e {
                CoreEvent::Fire(e) => Some(e.tag.clone()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn persisted_returns_are_offered_to_redis_again_after_a_crash() {
        let redis = "master_job_cache: redis\nredis.host: 127.0.0.1\n";
        let (dir, mut st) = state(&["a", "b"], redis);
        let t0 = Instant::now();
        let p = st.publish(spec("*"), "root", None, t0).unwrap();
        st.handle_request(returns(vec![ret(&p.jid, "a", Value::Bool(true))]), t0);
        st.persist();
        let before = std::iter::from_fn(|| st.poll_record()).count();
        assert_eq!(before, 2, "the load and a's return");
        // The process dies with those records still in memory; the next one starts over the
        // same job cache.
        drop(st);
        let cfg_dir = dir.path().display().to_string();
        let opts = format!(
            "root_dir: {cfg_dir}\npki_dir: {cfg_dir}/pki\ncachedir: {cfg_dir}/cache\n{redis}"
        );
        let cfg = MasterConfig::from_options(&brine_daemon::config::Options::parse(&opts).unwrap())
            .unwrap();
        let keys = KeyStore::open(&cfg.pki_dir).unwrap();
        let cache = JobCache::open(&dir.path().join("jobs"), Duration::from_secs(3600)).unwrap();
        let mut st = CoreState::new(cfg, keys, cache, DataCache::default(), DataCache::default());
        let later = std::time::SystemTime::now() + Duration::from_secs(60);
        assert_eq!(
            st.resync_redis(later),
            0,
            "nothing changed after a later mark"
        );
        let since = std::time::SystemTime::now() - Duration::from_secs(60);
        assert_eq!(st.resync_redis(since), 1);
        let again: Vec<Record> = std::iter::from_fn(|| st.poll_record()).collect();
        assert!(matches!(&again[0], Record::Load { jid, .. } if *jid == p.jid));
        assert!(matches!(
            &again[1],
            Record::Return { jid, id, fun, .. } if *jid == p.jid && id == "a" && fun == "test.ping"
        ));
        assert_eq!(again.len(), 2);
    }

    #[test]
    fn a_publish_goes_out_once_and_its_returns_finish_it() {
        let (_dir, mut st) = state(&["a", "b"], "");
        let t0 = Instant::now();
        let p = st.publish(spec("*"), "root", None, t0).unwrap();
        assert_eq!(p.minions, vec!["a".to_owned(), "b".to_owned()]);
        let (tx, ev) = drain(&mut st);
        assert_eq!(tx.len(), 1);
        assert_eq!(tx[0].load.jid, p.jid);
        assert_eq!(tags(&ev), vec![format!("salt/job/{}/new", p.jid)]);
        assert!(st.is_running(&p.jid));

        st.handle_request(returns(vec![ret(&p.jid, "a", Value::Bool(true))]), t0);
        let (_, ev) = drain(&mut st);
        assert!(matches!(
            ev.as_slice(),
            [CoreEvent::Return(_), CoreEvent::JobsChanged]
        ));
        // The same return again is a copy: not taken, not forwarded, no event.
        st.handle_request(returns(vec![ret(&p.jid, "a", Value::Bool(true))]), t0);
        assert!(drain(&mut st).1.is_empty());
        assert_eq!(st.changed_since(&p.jid, 0), Some(true));
        assert_eq!(st.changed_since(&p.jid, 1), Some(false));

        // The last return: the job settles a moment later, at the state's own timeout.
        st.handle_request(returns(vec![ret(&p.jid, "b", Value::Bool(true))]), t0);
        let due = st.poll_timeout(t0).unwrap();
        assert!(
            due <= t0 + Duration::from_millis(10),
            "settles soon, not at the job's timeout"
        );
        st.handle_timeout(due);
        let (tx, ev) = drain(&mut st);
        assert!(tx.is_empty(), "no find_job for a job with every return");
        assert!(ev.iter().any(|e| matches!(e, CoreEvent::JobsChanged)));
        assert!(!st.is_running(&p.jid));
        let (_, rets, missing) = st.job_view(&p.jid).unwrap();
        assert_eq!(rets.len(), 2);
        assert_eq!(missing.unwrap().len(), 0);
    }

    #[test]
    fn silent_minions_are_asked_at_the_timeout_and_given_up_on_later() {
        let (_dir, mut st) = state(&["a", "quiet"], "");
        let t0 = Instant::now();
        let p = st.publish(spec("*"), "root", None, t0).unwrap();
        st.handle_request(
            Handled {
                minion: Some("quiet".into()),
                ..returns(vec![ret(&p.jid, "a", Value::Bool(true))])
            },
            t0,
        );
        drain(&mut st);
        // Nothing before the job's timeout (5 s).
        st.handle_timeout(t0 + Duration::from_secs(4));
        assert!(drain(&mut st).0.is_empty());
        let due = st.poll_timeout(t0).unwrap();
        assert!(due > t0 + Duration::from_secs(4) && due <= t0 + Duration::from_secs(5));
        st.handle_timeout(due);
        let (tx, _) = drain(&mut st);
        assert_eq!(tx.len(), 1, "one find_job");
        assert_eq!(tx[0].load.fun_name(), Some("saltutil.find_job"));
        assert_eq!(tx[0].minions, vec!["quiet".to_owned()]);
        let fj = tx[0].load.jid.clone();
        // "Still running" keeps it waited for; no answer in gather_job_timeout gives up.
        let running = Value::map().with("jid", p.jid.as_str());
        st.handle_request(returns(vec![ret(&fj, "quiet", running)]), due);
        assert!(st.is_running(&p.jid));
        assert_eq!(
            st.running(&p.jid, &["quiet".into(), "a".into()], due),
            vec![("quiet".into(), Some(true)), ("a".into(), Some(false))]
        );
        let mut now = due;
        for _ in 0..200 {
            match st.poll_timeout(now) {
                Some(t) if st.is_running(&p.jid) => {
                    now = t.max(now + Duration::from_millis(1));
                    st.handle_timeout(now);
                    drain(&mut st);
                }
                _ => break,
            }
        }
        assert!(!st.is_running(&p.jid), "given up on by {:?}", now - t0);
        let (_, _, missing) = st.job_view(&p.jid).unwrap();
        assert!(missing.unwrap().contains_key("quiet"));
    }

    #[test]
    fn an_acl_outside_the_target_refuses_and_publishes_nothing() {
        let (_dir, mut st) = state(&["web1", "db1"], "");
        let t0 = Instant::now();
        let allowed = Allowed::Within(vec!["web*".into()]);
        let e = st.publish(spec("*"), "fred", Some(allowed.clone()), t0);
        assert!(matches!(e, Err(PublishError::Denied(_))), "{e:?}");
        assert!(drain(&mut st).0.is_empty());
        let p = st
            .publish(spec("web*"), "fred", Some(allowed.clone()), t0)
            .unwrap();
        assert_eq!(p.minions, vec!["web1".to_owned()]);
        assert_eq!(
            st.minions_within(&allowed),
            Some(["web1".to_owned()].into_iter().collect())
        );
    }

    #[test]
    fn forwarded_events_are_taken_once_and_never_our_own() {
        let (_dir, mut st) = state(&[], "order_masters: true\n");
        st.set_syndic_id("me");
        let ev = |tag: &str| MasterEvent {
            tag: tag.into(),
            data: Value::map().with("_stamp", "2026-12-07T00:00:00.000000"),
        };
        let h = |tags: &[&str]| Handled {
            events: tags.iter().map(|t| ev(t)).collect(),
            ..Handled::default()
        };
        let t0 = Instant::now();
        st.handle_request(
            h(&[
                "syndic/s1/salt/minion/m1/start",
                "syndic/s2/salt/minion/m1/start",
                "syndic/s1/syndic/me/custom/tag",
                "plain/tag",
            ]),
            t0,
        );
        assert_eq!(
            tags(&drain(&mut st).1),
            vec!["syndic/s1/salt/minion/m1/start", "plain/tag"]
        );
    }

    #[test]
    fn a_syndic_report_for_an_unknown_job_is_refused_and_its_minions_untaken() {
        let (_dir, mut st) = state(&["s1", "own"], "order_masters: true\n");
        let t0 = Instant::now();
        let p = st.publish(spec("*"), "root", None, t0).unwrap();
        drain(&mut st);
        let report = |jid: &str, id: &str| SyndicReport {
            jid: jid.into(),
            minions: Some(vec![id.into()]),
            load: Value::map(),
            returns: vec![ret(jid, id, Value::Bool(true))],
        };
        let h = Handled {
            syndic: Some((
                "s1".into(),
                vec![
                    report("20261207000000000000", "below"),
                    report(&p.jid, "own"),
                    report(&p.jid, "below"),
                ],
            )),
            ..Handled::default()
        };
        st.handle_request(h, t0);
        assert_eq!(st.syndics(), ["s1".to_owned()].into_iter().collect());
        let (_, ev) = drain(&mut st);
        assert_eq!(tags(&ev), vec![format!("salt/job/{}/ret/below", p.jid)]);
        let (_, rets, _) = st.job_view(&p.jid).unwrap();
        assert_eq!(rets.keys().collect::<Vec<_>>(), vec!["below"]);
        assert!(st.job_view("20261207000000000000").is_none());
    }

    #[test]
    fn key_changes_on_disk_fire_salt_key_and_forget_a_syndic() {
        let (dir, mut st) = state(&["s1"], "order_masters: true\n");
        let t0 = Instant::now();
        st.handle_request(
            Handled {
                syndic: Some(("s1".into(), vec![])),
                ..Handled::default()
            },
            t0,
        );
        assert!(st.syndics().contains("s1"));
        std::fs::remove_file(dir.path().join("pki/minions/s1")).unwrap();
        st.handle_housekeeping(t0);
        st.handle_housekeeping(t0 + Duration::from_secs(1));
        let (_, ev) = drain(&mut st);
        assert!(tags(&ev).contains(&"salt/key".to_owned()));
        assert!(st.syndics().is_empty());
    }
}
