//! brine's minion: a drop-in Salt minion for real salt-masters (3006, 3007, 3008).
//!
//! Owns: the minion configuration (`config`), its pki directory (`pki`), native grains
//! (`grains`), execution modules (`exec`), and the links to masters (`link`): `_auth`, the
//! publish subscription, job execution and returns. Protocol rules come from `brine-proto`,
//! sockets from `brine-transport`.

#![forbid(unsafe_code)]
#![warn(missing_docs, clippy::print_stdout, clippy::dbg_macro)]

pub use brine_minion_side::config;
pub mod exec;
pub mod grains;

pub use brine_minion_side::{link, pki, spool};

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use brine_proto::Value;
use brine_proto::auth::MinionIdentity;
use brine_proto::jid::iso_stamp;
use brine_proto::loads::{JobLoad, ReturnLoad};
use brine_transport::Context;
use rand::Rng as _;
use tracing::{debug, error, info, warn};

use crate::config::{MasterAddr, MasterType, MinionConfig};
use crate::exec::{JobCtx, JobTable};
use crate::link::{Feed, JobFeed, LinkError, ReqChannel, unix_micros};

pub use link::LinkError as Error;

/// Python's `fnmatch` (shared with `sys.*` pattern arguments).
pub(crate) fn target_glob(pat: &str, name: &str) -> bool {
    brine_proto::target::fnmatch(pat, name)
}

pub use brine_minion_side::asctime;

/// Shared state of a running minion.
struct Shared {
    cfg: Arc<MinionConfig>,
    link: Arc<brine_minion_side::LinkConfig>,
    me: MinionIdentity,
    grains: Arc<Value>,
    jobs: JobTable,
    ctx: Context,
    spool: spool::Spool,
    pillar: exec::master::PillarStore,
}

/// Run the minion until `shutdown` resolves, or a master refuses it for good.
///
/// # Errors
/// [`LinkError::Rejected`] and [`LinkError::MasterKeyChanged`] end the minion, as in Salt.
pub async fn run(
    cfg: MinionConfig,
    key: brine_proto::crypt::PrivateKey,
    shutdown: impl Future<Output = ()>,
) -> Result<(), LinkError> {
    let me = MinionIdentity::new(&cfg.id, key).map_err(|e| LinkError::Local(e.to_string()))?;
    let hosts: Vec<String> = cfg.masters.iter().map(|m| m.host.clone()).collect();
    let grains = Arc::new(grains::collect(
        &cfg.id,
        &hosts,
        &cfg.static_grains,
        &cfg.salt_version,
    ));
    let spool = spool::Spool::new(&cfg.cachedir, cfg.return_spool_max_bytes);
    let shared = Arc::new(Shared {
        link: Arc::new(cfg.link()),
        cfg: Arc::new(cfg),
        me,
        grains,
        jobs: JobTable::default(),
        ctx: Context::new(),
        spool,
        pillar: exec::master::PillarStore::default(),
    });
    info!(id = %shared.cfg.id, masters = ?hosts, "brine minion starting");
    let mut set = tokio::task::JoinSet::new();
    match shared.cfg.master_type {
        MasterType::Disable => {}
        MasterType::Str => {
            for m in shared.cfg.masters.clone() {
                set.spawn(master_loop(shared.clone(), vec![m]));
            }
        }
        MasterType::Failover => {
            let mut list = shared.cfg.masters.clone();
            if shared.cfg.random_master {
                // With failback, the first master stays first; only the secondaries shuffle.
                let first = usize::from(shared.cfg.master_failback).min(list.len());
                shuffle(&mut list[first..]);
            }
            set.spawn(master_loop(shared.clone(), list));
        }
    }
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => {
                info!("shutting down");
                set.abort_all();
                return Ok(());
            }
            done = set.join_next() => match done {
                Some(Ok(Err(e))) => {
                    set.abort_all();
                    return Err(e);
                }
                Some(Ok(Ok(()))) | Some(Err(_)) => {}
                None => {
                    // Masterless: nothing to do but wait.
                    shutdown.as_mut().await;
                    return Ok(());
                }
            }
        }
    }
}

fn shuffle<T>(v: &mut [T]) {
    let mut rng = rand::rng();
    for i in (1..v.len()).rev() {
        v.swap(i, rng.random_range(0..=i));
    }
}

/// How a link to a master ended (other than by an error).
enum LinkEnd {
    /// The liveness probe declared the master dead (killed, hung, or partitioned).
    Dead,
    /// Failover: the primary master is back and has been stable; go back to it.
    Failback,
}

/// Keep a link to one of `masters` alive forever (walking the list on failure, failing back to
/// the first with `master_failback`); returns only on fatal refusals or when `master_tries`
/// rounds have failed.
async fn master_loop(shared: Arc<Shared>, masters: Vec<MasterAddr>) -> Result<(), LinkError> {
    let cfg = shared.cfg.clone();
    let mut i = 0usize;
    let mut failed_rounds = 0i64;
    loop {
        let m = masters[i % masters.len()].clone();
        let primary = (cfg.master_type == MasterType::Failover
            && cfg.master_failback
            && !i.is_multiple_of(masters.len()))
        .then(|| masters[0].clone());
        let failed = match serve_master(&shared, &m, primary.as_ref()).await {
            Err(e @ (LinkError::Rejected | LinkError::MasterKeyChanged(_))) => {
                error!(master = %m.host, "{e}");
                return Err(e);
            }
            Err(e) => {
                warn!(master = %m.host, error = %e, "cannot use master");
                true
            }
            Ok(LinkEnd::Dead) => {
                warn!(master = %m.host, "master is gone; failing over");
                false
            }
            Ok(LinkEnd::Failback) => {
                info!(master = %masters[0].host, "primary master is back; failing back");
                i = 0;
                continue;
            }
        };
        i += 1;
        if i.is_multiple_of(masters.len()) && failed {
            failed_rounds += 1;
            if cfg.master_tries >= 0 && failed_rounds >= cfg.master_tries.max(1) {
                return Err(LinkError::Unreachable(format!(
                    "no master answered in {failed_rounds} round(s)"
                )));
            }
            // A whole round failed: pause like Salt's acceptance_wait_time before the next.
            tokio::time::sleep(cfg.acceptance_wait_time.min(Duration::from_secs(10))).await;
        } else if masters.len() == 1 {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

/// The probe period and timeout for `master_alive_interval`: four probes per interval, a
/// master is dead after two unanswered probes in a row, so death is noticed within the interval.
fn probe_period(alive: Duration) -> Duration {
    (alive / 4).max(Duration::from_millis(250))
}

/// Least time between two re-authentications caused by publishes that fail their MAC. Publishes
/// that fail inside the window are held (up to [`REKEY_HELD_MAX`]) and retried after the next
/// re-authentication at the end of the window, so a second rotation soon after a first loses no
/// job.
const REKEY_MIN_INTERVAL: Duration = Duration::from_secs(2);

/// Publishes held while a re-authentication is deferred.
const REKEY_HELD_MAX: usize = 32;

/// Consecutive answered probes of the primary before failing back (no flapping).
const FAILBACK_STABLE_PROBES: u32 = 3;

async fn serve_master(
    shared: &Arc<Shared>,
    master: &MasterAddr,
    primary: Option<&MasterAddr>,
) -> Result<LinkEnd, LinkError> {
    let cfg = &shared.cfg;
    let mut feed = JobFeed::connect(&shared.ctx, &shared.link, &master.host, cfg.publish_port)?;
    let chan = Arc::new(
        ReqChannel::connect(
            &shared.ctx,
            shared.link.clone(),
            shared.me.clone(),
            master.clone(),
        )
        .await?,
    );
    info!(master = %master.host, "authenticated");
    let started = format!(
        "Minion {} started at {}",
        cfg.id,
        asctime(link::unix_secs())
    );
    for tag in [
        "minion_start".to_owned(),
        format!("salt/minion/{}/start", cfg.id),
    ] {
        if let Err(e) = chan.fire_event(&tag, Value::str(&started)).await {
            warn!(master = %master.host, error = %e, "start event not delivered");
        }
    }
    flush_spool(shared, &chan).await;
    let handle = Arc::new(exec::master::MasterHandle {
        chan: chan.clone(),
        id: cfg.id.clone(),
        saltenv: cfg.saltenv.clone(),
        pillarenv: cfg.pillarenv.clone(),
        hash_type: cfg.hash_type.clone(),
        cachedir: cfg.cachedir.clone(),
    });
    // The pillar, with our grains: the master caches both (grain and pillar targeting).
    match handle.fetch_pillar(&shared.grains, None, None).await {
        Ok(p) => shared.pillar.set(p),
        Err(e) => warn!(master = %master.host, error = %e, "pillar not received"),
    }
    let (mut aes, master_pub) = chan.creds().await;
    if cfg.sign_pub_messages {
        feed.decoder.verify_with = Some(master_pub);
    }

    let alive = cfg.master_alive_interval;
    let period = probe_period(if alive.is_zero() {
        Duration::from_secs(3600)
    } else {
        alive
    });
    let mut probe_tick = tokio::time::interval(period);
    probe_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut prober = link::Prober::new(&shared.ctx, master);
    let mut misses = 0u32;
    let failback_period = probe_period(if cfg.master_failback_interval.is_zero() {
        Duration::from_secs(3600)
    } else {
        cfg.master_failback_interval
    });
    let mut failback_tick = tokio::time::interval(failback_period);
    let mut primary_prober = primary.map(|p| link::Prober::new(&shared.ctx, p));
    let mut primary_ok = 0u32;
    let mut flush_tick = tokio::time::interval(Duration::from_secs(2));
    // `mine_interval`: mine.update at start and then every interval, as Salt's schedule does.
    let mine_on = !cfg.mine_interval.is_zero()
        && (cfg.mine_functions.as_map().is_some_and(|m| !m.is_empty())
            || shared.pillar.get().get("mine_functions").is_some());
    let mut mine_tick = tokio::time::interval(if cfg.mine_interval.is_zero() {
        Duration::from_secs(3600)
    } else {
        cfg.mine_interval
    });
    let mut last_rekey: Option<tokio::time::Instant> = None;
    let mut held: std::collections::VecDeque<Vec<u8>> = std::collections::VecDeque::new();
    let mut rekey_at: Option<tokio::time::Instant> = None;

    loop {
        tokio::select! {
            () = async { tokio::time::sleep_until(rekey_at.unwrap_or_else(tokio::time::Instant::now)).await }, if rekey_at.is_some() => {
                rekey_at = None;
                info!(master = %master.host, held = held.len(), "re-authenticating for publishes that did not verify");
                last_rekey = Some(tokio::time::Instant::now());
                aes = chan.reauth().await?;
                feed.decoder.reset_serials();
                for raw in held.drain(..) {
                    match feed.decoder.decode(&raw, &aes, &shared.grains, &shared.pillar.get()) {
                        Feed::Job(job) => start_job(shared, &handle, *job),
                        Feed::Rekey(_) => warn!(master = %master.host, "held publish fails its MAC with a fresh key too; dropped"),
                        Feed::Skip(why) => link::log_skip(&why),
                    }
                }
            }
            raw = feed.next_raw() => {
                let raw = raw?;
                let job = match feed.decoder.decode(&raw, &aes, &shared.grains, &shared.pillar.get()) {
                    Feed::Job(job) => job,
                    Feed::Skip(why) => {
                        link::log_skip(&why);
                        continue;
                    }
                    Feed::Rekey(raw) => {
                        // A rotated AES key shows up as one publish that fails its MAC. Forged
                        // publishes look the same; re-authenticating at most once per
                        // REKEY_MIN_INTERVAL keeps them from driving an auth storm.
                        if let Some(t) = last_rekey.filter(|t: &tokio::time::Instant| t.elapsed() < REKEY_MIN_INTERVAL) {
                            if held.len() >= REKEY_HELD_MAX {
                                warn!(master = %master.host, "publish fails its MAC and too many are held; dropped");
                            } else {
                                debug!(master = %master.host, "publish fails its MAC right after a re-auth; held until the next one");
                                held.push_back(raw);
                            }
                            rekey_at.get_or_insert(t + REKEY_MIN_INTERVAL);
                            continue;
                        }
                        info!(master = %master.host, "publish did not verify with the current AES key; re-authenticating");
                        last_rekey = Some(tokio::time::Instant::now());
                        aes = chan.reauth().await?;
                        feed.decoder.reset_serials();
                        match feed.decoder.decode(&raw, &aes, &shared.grains, &shared.pillar.get()) {
                            Feed::Job(job) => job,
                            Feed::Rekey(_) => {
                                warn!(master = %master.host, "publish fails its MAC with a fresh key too; dropped");
                                continue;
                            }
                            Feed::Skip(why) => {
                                link::log_skip(&why);
                                continue;
                            }
                        }
                    }
                };
                start_job(shared, &handle, *job);
            }
            _ = probe_tick.tick(), if !alive.is_zero() => {
                if prober.ping(period).await {
                    misses = 0;
                } else {
                    misses += 1;
                    warn!(master = %master.host, misses, "master did not answer the liveness probe");
                    if misses >= 2 {
                        chan.mark_dead();
                        return Ok(LinkEnd::Dead);
                    }
                }
            }
            _ = failback_tick.tick(), if primary_prober.is_some() => {
                let p = primary_prober.as_mut().expect("invariant: guarded by is_some");
                if p.ping(failback_period).await {
                    primary_ok += 1;
                    if primary_ok >= FAILBACK_STABLE_PROBES {
                        chan.mark_dead();
                        return Ok(LinkEnd::Failback);
                    }
                } else {
                    primary_ok = 0;
                }
            }
            _ = flush_tick.tick() => flush_spool(shared, &chan).await,
            _ = mine_tick.tick(), if mine_on => {
                let ctx = job_ctx(shared, &handle, JobLoad::new("mine.update", vec![], Value::str(&cfg.id), "glob", &brine_proto::jid::Jid::from_unix_micros(unix_micros())));
                tokio::spawn(async move {
                    let out = exec::call("mine.update", &ctx).await;
                    if out.retcode != 0 {
                        warn!(ret = ?out.ret, "scheduled mine.update failed");
                    }
                });
            }
        }
    }
}

/// Deliver spooled returns through `chan`, oldest first; stop at the first failure.
async fn flush_spool(shared: &Shared, chan: &ReqChannel) {
    for entry in shared.spool.entries() {
        let Some(load) = shared.spool.read(&entry) else {
            continue;
        };
        match chan.send(&load, Duration::from_secs(10)).await {
            Ok(_) => {
                info!(master = %chan.master().host, "spooled return delivered");
                shared.spool.remove(&entry);
            }
            Err(e) => {
                warn!(master = %chan.master().host, error = %e, "spooled return not delivered yet");
                return;
            }
        }
    }
}

fn job_ctx(shared: &Shared, handle: &Arc<exec::master::MasterHandle>, job: JobLoad) -> JobCtx {
    JobCtx::new(
        job,
        shared.grains.clone(),
        shared.jobs.clone(),
        shared.cfg.cachedir.clone(),
    )
    .with_master(
        handle.clone(),
        shared.pillar.clone(),
        shared.cfg.mine_functions.clone(),
    )
}

fn start_job(shared: &Arc<Shared>, handle: &Arc<exec::master::MasterHandle>, job: JobLoad) {
    let jid = job.jid.clone();
    let chan = &handle.chan;
    let ctx = job_ctx(shared, handle, job);
    let data = ctx.proc_data();
    let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
    let shared2 = shared.clone();
    let chan = chan.clone();
    let task = tokio::spawn(async move {
        if go_rx.await.is_err() {
            return;
        }
        let fun = ctx.job.fun_name().unwrap_or_default().to_owned();
        info!(jid = %ctx.job.jid, fun = %fun, "executing job");
        let out = exec::call(&fun, &ctx).await;
        shared2.jobs.remove(&ctx.job.jid);
        send_return(&shared2, &chan, &ctx.job, out).await;
    });
    shared.jobs.insert(&jid, data, task.abort_handle());
    let _ = go_tx.send(());
}

async fn send_return(shared: &Shared, chan: &ReqChannel, job: &JobLoad, out: exec::Outcome) {
    let mut extra = Vec::new();
    if let Some(m) = &job.master_id {
        extra.push((Value::str("master_id"), Value::str(m)));
    }
    for (k, v) in &job.extra {
        if k.is_str("metadata") && v.as_map().is_some() {
            extra.push((k.clone(), v.clone()));
        }
    }
    let load = ReturnLoad {
        id: shared.cfg.id.clone(),
        success: out.retcode == 0,
        ret: out.ret,
        retcode: out.retcode,
        jid: job.jid.clone(),
        fun: job.fun.clone(),
        fun_args: job.arg.clone(),
        user: job.user.clone(),
        out: out.out.map(str::to_owned),
        stamp: Some(iso_stamp(unix_micros())),
        extra,
    }
    .to_value();
    let (lo, hi) = shared.cfg.return_retry_timer;
    for attempt in 1..=shared.cfg.return_retry_tries {
        if !chan.is_alive() {
            break;
        }
        match chan.send(&load, hi.max(Duration::from_secs(5))).await {
            Ok(_) => return,
            Err(e) => {
                warn!(jid = %job.jid, attempt, error = %e, "return not delivered");
                if attempt < shared.cfg.return_retry_tries && chan.is_alive() {
                    let wait = rand::rng().random_range(
                        lo.as_millis() as u64..=hi.as_millis().max(lo.as_millis()) as u64,
                    );
                    tokio::time::sleep(Duration::from_millis(wait)).await;
                }
            }
        }
    }
    shared.spool.push(&job.jid, &load);
}
