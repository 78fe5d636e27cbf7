//! A master's links to the masters above it (`syndic_master`): what makes a brine master a
//! syndic. One link per upper master, each the minion side of Salt's protocol (`_auth` with the
//! syndic's own minion key, the publish feed, the request channel).
//!
//! - Downward: every publish from above is relayed through the core once (same jid, `to` one
//!   second less, `master_id` kept). A jid seen before (from another upper master, or one this
//!   master published itself when masters syndicate each other) is not relayed again; the link
//!   that brought the duplicate gets an empty report so its master does not wait for us.
//! - Reports: as soon as the core knows the minions a relayed job expects here (and every
//!   syndic below has reported), the upper master gets a `_syndic_return` entry with an empty
//!   `return` and the job load's `Minions`, so it settles the job without a blind
//!   `syndic_wait`. Minions reported later by syndics below follow as deltas.
//! - `saltutil.find_job` from above is answered from the core's tracker, never relayed.
//! - Upward: returns are batched per jid over `syndic_event_forward_timeout` (or
//!   [`BATCH_RETURNS`] returns), sent to the master that published the job, else to any live
//!   one; when none answers they go to an on-disk spool (bounded) retried with backoff. At most
//!   [`OUTBOX_MAX`] returns wait in memory; past that they are spooled at once.
//! - Events (`syndic_mode: sync`): forwarded once to every live upper master under the
//!   `syndic/<id>` prefix; events that already passed through this master are dropped, and the
//!   receiving core drops copies that reach it by two paths.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use brine_link::spool::Spool;
use brine_link::{Feed, JobFeed, LinkConfig, LinkError, MasterAddr, ReqChannel};
use brine_proto::Value;
use brine_proto::auth::MinionIdentity;
use brine_proto::loads::{JobLoad, MinionEvent, ReturnLoad, SyndicReturn, SyndicReturnEntry};
use brine_transport::Context;
use tokio::sync::Notify;
use tracing::{debug, info, warn};

use crate::config::MasterConfig;
use crate::json::from_json;
use crate::lock;
use crate::server::MasterCore;

/// Returns that trigger an early flush of the batch.
pub const BATCH_RETURNS: usize = 2_000;
/// Returns held in memory at most; more go to the spool directly.
pub const OUTBOX_MAX: usize = 50_000;
/// Relayed jobs remembered (routing of their returns, de-duplication).
const ROUTES_MAX: usize = 10_000;
/// Spool size bound.
const SPOOL_MAX_BYTES: u64 = 512 * 1024 * 1024;
/// Events forwarded per window at most (the rest wait for the next window or are lost to the
/// bus's own bound, as on a slow subscriber).
const EVENTS_PER_WINDOW: usize = 5_000;

/// How this master reaches the masters above it.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// The minion side: id, pki_dir (`minion.pem`), auth timings.
    pub link: LinkConfig,
    /// The upper masters (`syndic_master`, `syndic_master_port`).
    pub masters: Vec<MasterAddr>,
    /// `syndic_failover: random` (else `ordered`): the order fallback masters are tried in.
    pub failover_random: bool,
    /// `syndic_mode: sync`: forward events too.
    pub forward_events: bool,
    /// `syndic_event_forward_timeout`: the batching window.
    pub window: Duration,
    /// Where undeliverable returns wait (`cachedir`; the spool is `cachedir/brine/spool`).
    pub cachedir: std::path::PathBuf,
}

impl UpstreamConfig {
    /// From the master's options and the minion side's link settings. `None` when no
    /// `syndic_master` is set.
    ///
    /// # Errors
    /// A message for a `syndic_master` entry that is not `host` or `host:port`.
    pub fn from_master(m: &MasterConfig, link: LinkConfig) -> Result<Option<Self>, String> {
        if m.syndic_master.is_empty() {
            return Ok(None);
        }
        let mut masters = Vec::new();
        for s in &m.syndic_master {
            let s = s.trim();
            let (host, port) = match s.rsplit_once(':') {
                Some((h, p)) if !h.contains(':') => (
                    h.to_owned(),
                    p.parse::<u16>()
                        .map_err(|_| format!("syndic_master: {s:?} is not host or host:port"))?,
                ),
                _ => (
                    s.trim_start_matches('[').trim_end_matches(']').to_owned(),
                    m.syndic_master_port,
                ),
            };
            if host.is_empty() {
                return Err(format!("syndic_master: {s:?} is not host or host:port"));
            }
            masters.push(MasterAddr {
                host,
                ret_port: port,
            });
        }
        Ok(Some(Self {
            link,
            masters,
            failover_random: m.syndic_failover_random,
            forward_events: m.syndic_mode_sync,
            window: m.syndic_event_forward_timeout,
            cachedir: m.cachedir.clone(),
        }))
    }
}

/// Where a relayed job came from and what has been said about it upward.
#[derive(Debug)]
struct Route {
    /// The link (index into the upper masters) that brought the job.
    link: usize,
    master_id: Option<String>,
    fun: Value,
    arg: Value,
    tgt: Value,
    tgt_type: String,
    /// Minions reported upward so far (`None`: not reported yet).
    reported: Option<BTreeSet<String>>,
}

#[derive(Debug, Default)]
struct Routes {
    map: HashMap<String, Route>,
    order: VecDeque<String>,
}

impl Routes {
    fn insert(&mut self, jid: String, r: Route) {
        if self.order.len() >= ROUTES_MAX
            && let Some(old) = self.order.pop_front()
        {
            self.map.remove(&old);
        }
        self.order.push_back(jid.clone());
        self.map.insert(jid, r);
    }
}

/// One `_syndic_return` load ready to send: the link it belongs to, its first jid (for the
/// spool's file name), the load, and the `(jid, minion)` returns it carries.
struct Batch {
    link: usize,
    jid: String,
    load: Value,
    members: Vec<(String, String)>,
}

/// Returns waiting for the next flush, per jid: `(minion, {return, retcode, success, ...})`.
#[derive(Debug, Default)]
struct Outbox {
    by_jid: BTreeMap<String, Vec<(String, Value)>>,
    count: usize,
}

struct Up {
    core: Arc<MasterCore>,
    cfg: UpstreamConfig,
    link_cfg: Arc<LinkConfig>,
    me: MinionIdentity,
    ctx: Context,
    links: Vec<Mutex<Option<Arc<ReqChannel>>>>,
    routes: Mutex<Routes>,
    outbox: Mutex<Outbox>,
    /// Returns taken from minions and not yet delivered upward or spooled, per jid: a `find_job`
    /// about them is answered "running" (the result is on its way).
    in_flight: Mutex<HashMap<String, std::collections::HashSet<String>>>,
    wake: Notify,
    spool: Spool,
}

/// Run the links to the upper masters until `shutdown` resolves. Returns sent to the core from
/// then on are forwarded upward.
pub async fn run(
    core: Arc<MasterCore>,
    cfg: UpstreamConfig,
    me: MinionIdentity,
    shutdown: impl Future<Output = ()>,
) {
    let up = Arc::new(Up {
        spool: Spool::new(&cfg.cachedir, SPOOL_MAX_BYTES),
        links: cfg.masters.iter().map(|_| Mutex::new(None)).collect(),
        link_cfg: Arc::new(cfg.link.clone()),
        core: core.clone(),
        me,
        ctx: Context::new(),
        routes: Mutex::new(Routes::default()),
        outbox: Mutex::new(Outbox::default()),
        in_flight: Mutex::new(HashMap::new()),
        wake: Notify::new(),
        cfg,
    });
    {
        let up2 = up.clone();
        core.set_return_tap(&up.me.id, Box::new(move |r| up2.take_return(r)));
    }
    info!(
        id = %up.me.id,
        masters = ?up.cfg.masters.iter().map(|m| format!("{}:{}", m.host, m.ret_port)).collect::<Vec<_>>(),
        "syndic links starting"
    );
    let mut set = tokio::task::JoinSet::new();
    for i in 0..up.cfg.masters.len() {
        set.spawn(link_loop(up.clone(), i));
    }
    set.spawn(flusher(up.clone()));
    shutdown.await;
    set.abort_all();
    // Whatever is still batched goes to the spool, not away.
    let batch = std::mem::take(&mut *lock(&up.outbox));
    for b in up.build_return_loads(batch) {
        up.spool.push(&b.jid, &b.load);
    }
}

async fn link_loop(up: Arc<Up>, i: usize) {
    let mut backoff = Duration::from_secs(1);
    loop {
        let m = &up.cfg.masters[i];
        match serve_link(&up, i).await {
            Ok(()) => {
                warn!(master = %m.host, "upper master is gone; reconnecting");
                backoff = Duration::from_secs(1);
            }
            Err(e) => warn!(master = %m.host, error = %e, "cannot use upper master"),
        }
        *lock(&up.links[i]) = None;
        let jitter = Duration::from_millis(u64::from(rand_u16() % 500));
        tokio::time::sleep(backoff + jitter).await;
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}

fn rand_u16() -> u16 {
    let mut b = [0u8; 2];
    brine_transport::OsEntropy::fill_bytes(&mut b);
    u16::from_le_bytes(b)
}

/// Least time between two re-authentications caused by publishes that fail their MAC.
const REKEY_MIN_INTERVAL: Duration = Duration::from_secs(2);
/// How often an upper master is probed (the probe is also the heartbeat a `mofm` waits on).
const PROBE_PERIOD: Duration = Duration::from_secs(2);
/// How long a probe waits for its answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// Consecutive unanswered probes, with nothing else answered meanwhile, that make an upper
/// master dead (its link then re-authenticates). A master that answers late is overloaded,
/// not gone: re-authenticating to it adds RSA work exactly when it has least to spare.
const PROBE_MISSES: u32 = 3;
/// How long a report or event batch upward may take (it is retried next window; one timeout
/// does not make the master dead).
const SEND_TIMEOUT: Duration = Duration::from_secs(5);

async fn serve_link(up: &Arc<Up>, i: usize) -> Result<(), LinkError> {
    let m = up.cfg.masters[i].clone();
    let chan = Arc::new(
        ReqChannel::connect(&up.ctx, up.link_cfg.clone(), up.me.clone(), m.clone()).await?,
    );
    let port = chan
        .advertised_publish_port()
        .await
        .unwrap_or(up.link_cfg.publish_port);
    let mut feed = JobFeed::connect(&up.ctx, &up.link_cfg, &m.host, port)?;
    feed.decoder.relay = true;
    info!(master = %m.host, publish_port = port, "syndic connected to upper master");
    let started = format!(
        "Syndic {} started at {}",
        up.me.id,
        brine_link::asctime(brine_link::unix_secs())
    );
    if let Err(e) = chan
        .fire_event(
            &format!("salt/syndic/{}/start", up.me.id),
            Value::str(&started),
        )
        .await
    {
        warn!(master = %m.host, error = %e, "syndic start event not delivered");
    }
    let (mut aes, _) = chan.creds().await;
    *lock(&up.links[i]) = Some(chan.clone());
    up.wake.notify_one();
    // The liveness probe runs beside the publish feed: a probe waiting on a busy master must
    // not hold up the next publish (a `find_job` from above answered late is a minion given
    // up on).
    let dead = Arc::new(Notify::new());
    let prober = tokio::spawn(probe(chan.clone(), m.host.clone(), dead.clone()));
    let _stop_prober = AbortOnDrop(prober);
    let mut last_rekey: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            raw = feed.next_raw() => {
                let raw = raw?;
                let job = match feed.decoder.decode(&raw, &aes, &Value::Nil, &Value::Nil) {
                    Feed::Job(job) => job,
                    Feed::Skip => continue,
                    Feed::Rekey(raw) => {
                        if last_rekey.is_some_and(|t| t.elapsed() < REKEY_MIN_INTERVAL) {
                            warn!(master = %m.host, "publish fails its MAC right after a re-auth; dropped");
                            continue;
                        }
                        info!(master = %m.host, "publish did not verify with the current AES key; re-authenticating");
                        last_rekey = Some(tokio::time::Instant::now());
                        aes = chan.reauth().await?;
                        feed.decoder.reset_serials();
                        match feed.decoder.decode(&raw, &aes, &Value::Nil, &Value::Nil) {
                            Feed::Job(job) => job,
                            _ => continue,
                        }
                    }
                };
                // Relays, reports and find_job answers must not hold up the next publish.
                let (up, chan) = (up.clone(), chan.clone());
                tokio::spawn(async move { up.on_publish(i, &chan, *job).await });
            }
            () = dead.notified() => return Ok(()),
        }
    }
}

/// Aborts the task when dropped (the link ended).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Heartbeat an upper master every [`PROBE_PERIOD`] until it is dead: [`PROBE_MISSES`]
/// unanswered in a row with nothing else answered meanwhile (or marked dead elsewhere).
async fn probe(chan: Arc<ReqChannel>, host: String, dead: Arc<Notify>) {
    // The probe is an empty `_syndic_return`: authenticated, so the upper master learns this
    // syndic is alive (and stops waiting for it once the beats stop); a Salt master takes it
    // as a return with nothing in it.
    let beat = SyndicReturn { entries: vec![] }.to_value();
    let mut tick = tokio::time::interval(PROBE_PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut misses = 0u32;
    loop {
        tick.tick().await;
        if !chan.is_alive() {
            break;
        }
        if chan.send(&beat, PROBE_TIMEOUT).await.is_ok()
            || chan.answered_within(PROBE_TIMEOUT + PROBE_PERIOD)
        {
            misses = 0;
        } else {
            misses += 1;
            debug!(master = %host, misses, "upper master did not answer a probe");
            if misses >= PROBE_MISSES {
                chan.mark_dead();
                break;
            }
        }
    }
    dead.notify_one();
}

impl Up {
    async fn on_publish(self: &Arc<Self>, i: usize, chan: &Arc<ReqChannel>, job: JobLoad) {
        let jid = job.jid.clone();
        let fun = job.fun_name().unwrap_or_default().to_owned();
        if fun == "saltutil.find_job" {
            self.answer_find_job(chan, &job).await;
            return;
        }
        let first = {
            let mut routes = lock(&self.routes);
            let known = routes.map.contains_key(&jid) || self.core.job_load(&jid).is_some();
            if !known {
                routes.insert(
                    jid.clone(),
                    Route {
                        link: i,
                        master_id: job.master_id.clone(),
                        fun: job.fun.clone(),
                        arg: job.arg.clone(),
                        tgt: job.tgt.clone(),
                        tgt_type: job.tgt_type().to_owned(),
                        reported: None,
                    },
                );
            }
            !known
        };
        if !first {
            // Seen before (another upper master, or our own job coming back round): this
            // master will not relay it for that link, so say so at once.
            debug!(jid = %jid, link = i, "job already relayed or ours; empty report");
            let entry = self.report_entry(&jid, &job, Vec::new(), None);
            let load = SyndicReturn {
                entries: vec![entry],
            }
            .to_value();
            if let Err(e) = chan.send(&load, Duration::from_secs(10)).await {
                debug!(jid = %jid, error = %e, "empty report not delivered");
            }
            return;
        }
        match self.core.relay(job).await {
            Ok(p) => {
                info!(jid = %jid, fun = %fun, minions = p.minions.len(), "relayed from upper master")
            }
            Err(e) => warn!(jid = %jid, error = %e, "relay failed"),
        }
        self.wake.notify_one();
    }

    /// A `_syndic_return` entry reporting `minions` for `jid` (empty `return`).
    fn report_entry(
        &self,
        jid: &str,
        job: &JobLoad,
        minions: Vec<String>,
        load: Option<Value>,
    ) -> SyndicReturnEntry {
        let mut load = load.unwrap_or_else(Value::map);
        load.insert(
            "Minions",
            Value::Array(minions.iter().map(Value::str).collect()),
        );
        SyndicReturnEntry {
            id: self.me.id.clone(),
            jid: jid.to_owned(),
            fun: job.fun.clone(),
            load,
            returns: Vec::new(),
            master_id: job.master_id.clone(),
            extra: vec![
                (Value::str("arg"), job.arg.clone()),
                (Value::str("tgt"), job.tgt.clone()),
                (Value::str("tgt_type"), Value::str(job.tgt_type())),
            ],
        }
    }

    /// Answer `saltutil.find_job` for the minions below from the core's tracker.
    async fn answer_find_job(&self, chan: &ReqChannel, job: &JobLoad) {
        let Some(orig) = job
            .arg
            .as_array()
            .and_then(|a| a.first())
            .and_then(Value::as_str)
            .map(str::to_owned)
        else {
            return;
        };
        let ids: Vec<String> = match job.tgt.as_array() {
            Some(list) => list
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect(),
            None => match job.tgt.as_str() {
                Some(s) if job.tgt_type() == "list" => {
                    s.split(',').map(|x| x.trim().to_owned()).collect()
                }
                _ => self.core.settled_expected(&orig).unwrap_or_default(),
            },
        };
        let fun = lock(&self.routes)
            .map
            .get(&orig)
            .map_or(Value::Nil, |r| r.fun.clone());
        let on_the_way = lock(&self.in_flight)
            .get(&orig)
            .cloned()
            .unwrap_or_default();
        let mut returns = Vec::new();
        for (id, running) in self.core.running(&orig, &ids) {
            let Some(running) = running else { continue };
            let running = running || on_the_way.contains(&id);
            let ret = if running {
                Value::map()
                    .with("jid", orig.as_str())
                    .with("fun", fun.clone())
                    .with("syndic", self.me.id.as_str())
            } else {
                Value::map()
            };
            returns.push((
                id,
                Value::map()
                    .with("return", ret)
                    .with("retcode", 0)
                    .with("success", true)
                    .with("fun_args", Value::Array(vec![Value::str(&orig)])),
            ));
        }
        if returns.is_empty() {
            return;
        }
        info!(jid = %orig, find_job_jid = %job.jid, answers = returns.len(), "answering find_job from the tracker");
        let load = SyndicReturn {
            entries: vec![SyndicReturnEntry {
                id: self.me.id.clone(),
                jid: job.jid.clone(),
                fun: Value::str("saltutil.find_job"),
                load: Value::Nil,
                returns,
                master_id: job.master_id.clone(),
                extra: vec![
                    (Value::str("arg"), job.arg.clone()),
                    (Value::str("tgt"), job.tgt.clone()),
                    (Value::str("tgt_type"), Value::str(job.tgt_type())),
                ],
            }],
        }
        .to_value();
        if let Err(e) = chan.send(&load, Duration::from_secs(10)).await {
            debug!(jid = %orig, error = %e, "find_job answer not delivered");
        }
    }

    /// The core's return hook: batch returns of relayed jobs.
    fn take_return(&self, r: &ReturnLoad) {
        if !lock(&self.routes).map.contains_key(&r.jid) {
            return;
        }
        let mut entry = Value::map()
            .with("return", r.ret.clone())
            .with("retcode", r.retcode)
            .with("success", r.success)
            .with("fun_args", r.fun_args.clone());
        if let Some(out) = &r.out {
            entry.insert("out", out.as_str());
        }
        lock(&self.in_flight)
            .entry(r.jid.clone())
            .or_default()
            .insert(r.id.clone());
        let spill = {
            let mut ob = lock(&self.outbox);
            ob.by_jid
                .entry(r.jid.clone())
                .or_default()
                .push((r.id.clone(), entry));
            ob.count += 1;
            if ob.count == BATCH_RETURNS {
                self.wake.notify_one();
            }
            (ob.count >= OUTBOX_MAX).then(|| std::mem::take(&mut *ob))
        };
        if let Some(batch) = spill {
            warn!(
                returns = batch.count,
                "too many returns waiting for the upper masters; spooling them"
            );
            for b in self.build_return_loads(batch) {
                self.spool.push(&b.jid, &b.load);
                self.landed(&b.members);
            }
        }
    }

    /// One `_syndic_return` load per link (the link the jobs came from).
    fn build_return_loads(&self, batch: Outbox) -> Vec<Batch> {
        type Entries = (Vec<SyndicReturnEntry>, Vec<(String, String)>);
        let mut per_link: BTreeMap<usize, Entries> = BTreeMap::new();
        let routes = lock(&self.routes);
        for (jid, returns) in batch.by_jid {
            let Some(route) = routes.map.get(&jid) else {
                continue;
            };
            // The job load goes with every batch (one per jid, small): whichever master takes
            // the returns can show the job, even when it did not publish it.
            let mut load = self
                .core
                .job_load(&jid)
                .map_or(Value::Nil, |l| from_json(&l));
            load.remove("Minions");
            load.remove("minions");
            let slot = per_link.entry(route.link).or_default();
            slot.1
                .extend(returns.iter().map(|(id, _)| (jid.clone(), id.clone())));
            slot.0.push(SyndicReturnEntry {
                id: self.me.id.clone(),
                jid: jid.clone(),
                fun: route.fun.clone(),
                load,
                returns,
                master_id: route.master_id.clone(),
                extra: vec![
                    (Value::str("arg"), route.arg.clone()),
                    (Value::str("tgt"), route.tgt.clone()),
                    (Value::str("tgt_type"), Value::str(&route.tgt_type)),
                ],
            });
        }
        per_link
            .into_iter()
            .map(|(link, (entries, members))| Batch {
                link,
                jid: entries.first().map(|e| e.jid.clone()).unwrap_or_default(),
                load: SyndicReturn { entries }.to_value(),
                members,
            })
            .collect()
    }

    /// These returns reached an upper master or the spool.
    fn landed(&self, members: &[(String, String)]) {
        let mut f = lock(&self.in_flight);
        for (jid, id) in members {
            if let Some(set) = f.get_mut(jid) {
                set.remove(id);
                if set.is_empty() {
                    f.remove(jid);
                }
            }
        }
    }

    fn live(&self, i: usize) -> Option<Arc<ReqChannel>> {
        lock(&self.links[i]).clone().filter(|c| c.is_alive())
    }

    /// Live links to try for something that belongs to `first`: it first, then the others in
    /// `syndic_failover` order.
    fn candidates(&self, first: usize) -> Vec<Arc<ReqChannel>> {
        let n = self.links.len();
        let mut order: Vec<usize> = (0..n).filter(|i| *i != first).collect();
        if self.cfg.failover_random {
            for k in (1..order.len()).rev() {
                let j = usize::from(rand_u16()) % (k + 1);
                order.swap(k, j);
            }
        }
        std::iter::once(first)
            .chain(order)
            .filter_map(|i| self.live(i))
            .collect()
    }

    /// Send `load` to the first of `candidates(first)` that takes it.
    async fn deliver(&self, first: usize, load: &Value) -> bool {
        for chan in self.candidates(first) {
            match chan.send(load, Duration::from_secs(10)).await {
                Ok(_) => return true,
                Err(e) => {
                    warn!(master = %chan.master().host, error = %e, "upper master did not take the returns")
                }
            }
        }
        false
    }

    /// Reports for relayed jobs whose expected minions are now known (or grew).
    async fn send_reports(&self) {
        let pending: Vec<(String, usize, Option<BTreeSet<String>>)> = {
            let routes = lock(&self.routes);
            routes
                .order
                .iter()
                .rev()
                .take(256)
                .filter_map(|jid| {
                    let r = routes.map.get(jid)?;
                    if r.reported.is_some() && !self.core.is_tracking(jid) {
                        return None;
                    }
                    Some((jid.clone(), r.link, r.reported.clone()))
                })
                .collect()
        };
        // A link that failed a report in this pass is not tried again until the next window
        // (a master that does not answer would otherwise hold every report for its timeout).
        let mut failed: BTreeSet<usize> = BTreeSet::new();
        for (jid, link, reported) in pending {
            if failed.contains(&link) {
                continue;
            }
            let Some(expected) = self.core.settled_expected(&jid) else {
                continue;
            };
            let new: Vec<String> = expected
                .iter()
                .filter(|m| !reported.as_ref().is_some_and(|r| r.contains(*m)))
                .cloned()
                .collect();
            if reported.is_some() && new.is_empty() {
                continue;
            }
            let Some((job, load)) = self.route_job(&jid) else {
                continue;
            };
            let entry = self.report_entry(&jid, &job, new.clone(), Some(load));
            let report = SyndicReturn {
                entries: vec![entry],
            }
            .to_value();
            // The event Salt's own CLI on an upper salt-master counts minions from.
            let event = MinionEvent {
                id: self.me.id.clone(),
                pretag: Some(format!("syndic/{}", self.me.id)),
                events: vec![(
                    jid.clone(),
                    Value::map()
                        .with("jid", jid.as_str())
                        .with(
                            "minions",
                            Value::Array(new.iter().map(Value::str).collect()),
                        )
                        .with("syndic", self.me.id.as_str()),
                )],
                batch: true,
                extra: vec![],
            }
            .to_value();
            let Some(chan) = self.live(link) else {
                // The publishing master's link is down (maybe reconnecting): try again next
                // window while the job runs here.
                continue;
            };
            match chan.send(&report, SEND_TIMEOUT).await {
                Ok(_) => {
                    debug!(jid = %jid, minions = new.len(), "reported expected minions upward");
                    if let Some(r) = lock(&self.routes).map.get_mut(&jid) {
                        r.reported.get_or_insert_with(BTreeSet::new).extend(new);
                    }
                    let _ = chan.send(&event, SEND_TIMEOUT).await;
                }
                Err(e) => {
                    failed.insert(link);
                    warn!(jid = %jid, error = %e, "report not delivered; will retry");
                }
            }
        }
    }

    /// The relayed job as a load (for reports) and its cached load.
    fn route_job(&self, jid: &str) -> Option<(JobLoad, Value)> {
        let routes = lock(&self.routes);
        let r = routes.map.get(jid)?;
        let job = JobLoad {
            fun: r.fun.clone(),
            arg: r.arg.clone(),
            tgt: r.tgt.clone(),
            jid: jid.to_owned(),
            ret: String::new(),
            master_id: r.master_id.clone(),
            delimiter: None,
            tgt_type: Some(r.tgt_type.clone()),
            to: None,
            user: None,
            auth_list: None,
            extra: vec![],
            serial: None,
        };
        let mut load = self
            .core
            .job_load(jid)
            .map_or_else(Value::map, |l| from_json(&l));
        load.remove("minions");
        Some((job, load))
    }
}

async fn flusher(up: Arc<Up>) {
    let mut events = up.cfg.forward_events.then(|| up.core.bus.subscribe());
    let mut spool_backoff = Duration::from_secs(1);
    let mut spool_next = tokio::time::Instant::now();
    let mut seen_events = EventDedup::default();
    loop {
        tokio::select! {
            () = tokio::time::sleep(up.cfg.window.max(Duration::from_millis(20))) => {}
            () = up.wake.notified() => {}
        }
        up.send_reports().await;
        let batch = std::mem::take(&mut *lock(&up.outbox));
        if batch.count > 0 {
            let n = batch.count;
            for b in up.build_return_loads(batch) {
                if up.deliver(b.link, &b.load).await {
                    debug!(returns = n, "returns forwarded upward");
                } else {
                    up.spool.push(&b.jid, &b.load);
                }
                up.landed(&b.members);
            }
        }
        if let Some(rx) = events.as_mut() {
            forward_events(&up, rx, &mut seen_events).await;
        }
        if tokio::time::Instant::now() >= spool_next {
            match flush_spool(&up).await {
                Some(true) | None => spool_backoff = Duration::from_secs(1),
                Some(false) => {
                    spool_backoff = (spool_backoff * 2).min(Duration::from_secs(30));
                }
            }
            spool_next = tokio::time::Instant::now() + spool_backoff;
        }
    }
}

/// Deliver spooled returns, oldest first, to any live upper master; `None` when the spool is
/// empty, `Some(false)` when a delivery failed (back off).
async fn flush_spool(up: &Up) -> Option<bool> {
    let entries = up.spool.entries();
    if entries.is_empty() {
        return None;
    }
    for entry in entries {
        let Some(load) = up.spool.read(&entry) else {
            continue;
        };
        if up.deliver(0, &load).await {
            info!("spooled returns delivered upward");
            up.spool.remove(&entry);
        } else {
            return Some(false);
        }
    }
    Some(true)
}

/// Remembers the last 20,000 forwarded events' identities ([`event_key`]), so a copy arriving
/// by a second path is recognised (used by the forwarder and by the core's request path).
#[derive(Debug, Default)]
pub(crate) struct EventDedup {
    set: std::collections::HashSet<String>,
    order: VecDeque<String>,
}

impl EventDedup {
    pub(crate) fn first_time(&mut self, key: String) -> bool {
        if !self.set.insert(key.clone()) {
            return false;
        }
        self.order.push_back(key);
        if self.order.len() > 20_000
            && let Some(old) = self.order.pop_front()
        {
            self.set.remove(&old);
        }
        true
    }
}

/// An event's identity across masters: its origin tag and a digest of its data (which carries
/// the `_stamp` set where it was first fired, and is the same on every forwarding path).
pub fn event_key(origin: &str, data: &Value) -> String {
    use std::hash::{Hash as _, Hasher as _};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    brine_proto::codec::encode_wire(data).hash(&mut h);
    format!("{origin}\u{0}{:016x}", h.finish())
}

/// The tag an event had where it was first fired (without `syndic/<id>/` prefixes), and
/// whether `me` is among the masters it passed through.
pub fn origin_tag<'a>(tag: &'a str, me: &str) -> (&'a str, bool) {
    let mut t = tag;
    let mut looped = false;
    while let Some(rest) = t.strip_prefix("syndic/") {
        let Some((id, inner)) = rest.split_once('/') else {
            break;
        };
        looped |= id == me;
        t = inner;
    }
    (t, looped)
}

async fn forward_events(
    up: &Up,
    rx: &mut tokio::sync::broadcast::Receiver<Arc<crate::requests::MasterEvent>>,
    seen: &mut EventDedup,
) {
    let mut batch = Vec::new();
    loop {
        match rx.try_recv() {
            Ok(e) => {
                let (origin, looped) = origin_tag(&e.tag, &up.me.id);
                // Returns go up as _syndic_return; an event that passed here before stops.
                if looped || origin.contains("/ret/") && origin.starts_with("salt/job/") {
                    continue;
                }
                if !seen.first_time(event_key(origin, &e.data)) {
                    continue;
                }
                batch.push((e.tag.clone(), e.data.clone()));
                if batch.len() >= EVENTS_PER_WINDOW {
                    break;
                }
            }
            Err(tokio::sync::broadcast::error::TryRecvError::Lagged(n)) => {
                warn!(lost = n, "events lost before forwarding (bus overrun)");
            }
            Err(_) => break,
        }
    }
    if batch.is_empty() {
        return;
    }
    let load = MinionEvent {
        id: up.me.id.clone(),
        pretag: Some(format!("syndic/{}", up.me.id)),
        events: batch,
        batch: true,
        extra: vec![],
    }
    .to_value();
    for i in 0..up.links.len() {
        if let Some(chan) = up.live(i)
            && let Err(e) = chan.send(&load, SEND_TIMEOUT).await
        {
            debug!(master = %chan.master().host, error = %e, "events not forwarded");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::origin_tag;

    #[test]
    fn origin_tags_and_loops() {
        assert_eq!(origin_tag("salt/job/1/new", "a"), ("salt/job/1/new", false));
        assert_eq!(
            origin_tag("syndic/b/syndic/c/salt/minion/x/start", "a"),
            ("salt/minion/x/start", false)
        );
        assert_eq!(
            origin_tag("syndic/b/syndic/a/custom/tag", "a"),
            ("custom/tag", true)
        );
        assert_eq!(origin_tag("syndic/oops", "a"), ("syndic/oops", false));
    }
}
