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
//!
//! The state (routes of relayed jobs, the outbox, returns on their way, batches under way) is
//! [`state::Upstream`], which does no I/O and is owned by one driver task ([`run`]); link
//! tasks, publish handlers and the core's return tap talk to the driver through a channel. At
//! shutdown the driver lets deliveries under way finish (up to [`DRAIN_TIMEOUT`]) and spools
//! every return no upper master acknowledged.

use std::collections::{HashSet, VecDeque};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use brine_minion_side::spool::Spool;
use brine_minion_side::{Feed, JobFeed, LinkConfig, LinkError, MasterAddr, ReqChannel};
use brine_proto::Value;
use brine_proto::auth::MinionIdentity;
use brine_proto::loads::{JobLoad, MinionEvent, ReturnLoad, SyndicReturn, SyndicReturnEntry};
use brine_transport::Context;
use tokio::sync::{Notify, mpsc, oneshot};
use tracing::{debug, info, warn};

use crate::CoreError;
use crate::config::MasterConfig;
use crate::server::MasterCore;
use state::{CoreView, OnPublish, Transmit, Upstream, What};

mod setup;
pub mod state;

pub use setup::{SyndicLinks, serve};

pub use state::{BATCH_RETURNS, OUTBOX_MAX, ROUTES_MAX};

/// Spool size bound.
const SPOOL_MAX_BYTES: u64 = 512 * 1024 * 1024;
/// Events forwarded per window at most (the rest wait for the next window or are lost to the
/// bus's own bound, as on a slow subscriber).
const EVENTS_PER_WINDOW: usize = 5_000;
/// How long a stopping syndic waits for deliveries under way before spooling what they carry.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(12);

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
    /// [`CoreError::Config`] for a `syndic_master` entry that is not `host` or `host:port`.
    pub fn from_master(m: &MasterConfig, link: LinkConfig) -> Result<Option<Self>, CoreError> {
        let bad =
            |s: &str| CoreError::config("syndic_master", format!("{s:?} is not host or host:port"));
        if m.syndic_master.is_empty() {
            return Ok(None);
        }
        let mut masters = Vec::new();
        for s in &m.syndic_master {
            let s = s.trim();
            let (host, port) = match s.rsplit_once(':') {
                Some((h, p)) if !h.contains(':') => {
                    (h.to_owned(), p.parse::<u16>().map_err(|_| bad(s))?)
                }
                _ => (
                    s.trim_start_matches('[').trim_end_matches(']').to_owned(),
                    m.syndic_master_port,
                ),
            };
            if host.is_empty() {
                return Err(bad(s));
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

/// What the link tasks, publish handlers and the core's return tap tell the driver.
enum Cmd {
    /// A publish from upper master `link`; the answer says what to do with it.
    Publish {
        link: usize,
        job: Box<JobLoad>,
        known_here: bool,
        reply: oneshot::Sender<OnPublish>,
    },
    /// The core relayed a job (or could not).
    Relayed { jid: String, ok: bool },
    /// What a `find_job` about `jid` needs: its function and the returns on their way.
    FindJob {
        jid: String,
        reply: oneshot::Sender<(Value, HashSet<String>)>,
    },
    /// A return the core took.
    Return(Box<ReturnLoad>),
    /// Upper master `link` is up (with its channel) or down.
    Link(usize, Option<Arc<ReqChannel>>),
    /// A transmit finished.
    Sent { id: u64, ok: bool },
    /// A spool flush finished (`Some(false)`: a delivery failed, back off).
    SpoolFlushed(Option<bool>),
}

/// What lets a syndic stopped by `kill -9` still send upward the returns it had taken (and
/// acknowledged to its minions: they are in its job cache on disk) but not yet delivered or
/// spooled: the routes of relayed jobs (jid → link) in `cachedir/brine/upstream-routes.jsonl`,
/// and in `cachedir/brine/upstream-synced` the time before which every return taken had been
/// delivered or spooled (written at most once a second). At start, the returns of routed jobs
/// whose cache entry changed after that time (minus [`REPLAY_MARGIN`]) are spooled for their
/// master again; a master keeps the first copy of a return and ignores the others.
struct Durable {
    routes: std::path::PathBuf,
    synced: std::path::PathBuf,
    lines: usize,
    marked: Option<Instant>,
}

/// Returns taken just before the mark may still have been on their way to the driver.
const REPLAY_MARGIN: Duration = Duration::from_secs(10);

impl Durable {
    fn new(cachedir: &std::path::Path) -> Self {
        let dir = cachedir.join("brine");
        let _ = std::fs::create_dir_all(&dir);
        Self {
            routes: dir.join("upstream-routes.jsonl"),
            synced: dir.join("upstream-synced"),
            lines: 0,
            marked: None,
        }
    }

    /// Note that `jid`, relayed from upper master `link`, routes upward through it.
    fn route(&mut self, jid: &str, link: usize) {
        use std::io::Write as _;
        let line = format!("{}\n", serde_json::json!({"jid": jid, "link": link}));
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.routes)
            .and_then(|mut f| f.write_all(line.as_bytes()));
        if let Err(e) = written {
            warn!(path = %self.routes.display(), error = %e, "cannot note a relayed job's route; a crash may keep its returns from going upward");
        }
        self.lines += 1;
        if self.lines > 4 * ROUTES_MAX {
            self.compact();
        }
    }

    fn read_routes(&self) -> std::collections::HashMap<String, usize> {
        let text = std::fs::read_to_string(&self.routes).unwrap_or_default();
        text.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter_map(|j| {
                Some((
                    j.get("jid")?.as_str()?.to_owned(),
                    usize::try_from(j.get("link")?.as_u64()?).ok()?,
                ))
            })
            .collect()
    }

    /// Keep the newest [`ROUTES_MAX`] routes.
    fn compact(&mut self) {
        let text = std::fs::read_to_string(&self.routes).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let keep = &lines[lines.len().saturating_sub(ROUTES_MAX)..];
        let tmp = self.routes.with_extension("tmp");
        let body: String = keep.iter().map(|l| format!("{l}\n")).collect();
        if std::fs::write(&tmp, body).is_ok() && std::fs::rename(&tmp, &self.routes).is_ok() {
            self.lines = keep.len();
        }
    }

    /// Until when (as last noted) every return taken was delivered or spooled.
    fn synced_until(&self) -> Option<std::time::SystemTime> {
        let micros: u64 = std::fs::read_to_string(&self.synced)
            .ok()?
            .trim()
            .parse()
            .ok()?;
        Some(std::time::UNIX_EPOCH + Duration::from_micros(micros))
    }

    /// Note how far every return taken is delivered or spooled (at most once a second, unless
    /// `now_anyway`).
    fn mark(&mut self, st: &Upstream, now_anyway: bool) {
        if !now_anyway
            && self
                .marked
                .is_some_and(|t| t.elapsed() < Duration::from_secs(1))
        {
            return;
        }
        self.marked = Some(Instant::now());
        let until = st
            .oldest_undelivered()
            .map_or_else(std::time::SystemTime::now, |t| {
                std::time::SystemTime::now() - Instant::now().saturating_duration_since(t)
            });
        let micros = until
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros());
        let tmp = self.synced.with_extension("tmp");
        if std::fs::write(&tmp, micros.to_string()).is_ok() {
            let _ = std::fs::rename(&tmp, &self.synced);
        }
    }
}

/// Spool again the returns a crash may have kept from going upward (see [`Durable`]).
async fn replay(links: &Links, st: &Upstream, spool: &Spool, durable: &mut Durable) {
    let routes = durable.read_routes();
    if routes.is_empty() {
        return;
    }
    let since = durable
        .synced_until()
        .map_or(std::time::UNIX_EPOCH, |t| t - REPLAY_MARGIN);
    let jobs = links
        .core
        .cached_jobs_since(since, routes.keys().cloned().collect())
        .await;
    let mut n = 0usize;
    for (jid, load, returns) in jobs {
        if returns.is_empty() {
            continue;
        }
        let link = routes.get(&jid).copied().unwrap_or(0);
        n += returns.len();
        let entry = st.replay_entry(&jid, &load, returns);
        spool.push_to(
            &jid,
            &dest(&links.cfg.masters, link),
            &SyndicReturn {
                entries: vec![entry],
            }
            .to_value(),
        );
    }
    if n > 0 {
        info!(
            returns = n,
            "returns taken before the last run ended were spooled for the upper masters again"
        );
    }
    durable.compact();
}

/// What the driver's helpers share: configuration, identity and the live links. The state
/// itself ([`Upstream`]) belongs to the driver task alone.
struct Links {
    cfg: UpstreamConfig,
    link_cfg: Arc<LinkConfig>,
    me: MinionIdentity,
    ctx: Context,
    core: Arc<MasterCore>,
    tx: mpsc::UnboundedSender<Cmd>,
}

/// Run the links to the upper masters until `shutdown` resolves. Returns sent to the core from
/// then on are forwarded upward; at shutdown, deliveries under way are given
/// [`DRAIN_TIMEOUT`] and whatever no upper master acknowledged is spooled.
pub async fn run(
    core: Arc<MasterCore>,
    cfg: UpstreamConfig,
    me: MinionIdentity,
    shutdown: impl Future<Output = ()>,
) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let spool = Spool::new(&cfg.cachedir, SPOOL_MAX_BYTES);
    let mut st = Upstream::new(&me.id, cfg.masters.len(), cfg.window);
    let mut durable = Durable::new(&cfg.cachedir);
    let links = Arc::new(Links {
        link_cfg: Arc::new(cfg.link.clone()),
        core: core.clone(),
        me,
        ctx: Context::new(),
        tx: tx.clone(),
        cfg,
    });
    {
        let tx = tx.clone();
        core.set_return_tap(
            &links.me.id,
            Box::new(move |r| {
                let _ = tx.send(Cmd::Return(Box::new(r.clone())));
            }),
        )
        .await;
    }
    info!(
        id = %links.me.id,
        masters = ?links.cfg.masters.iter().map(|m| format!("{}:{}", m.host, m.ret_port)).collect::<Vec<_>>(),
        "syndic links starting"
    );
    replay(&links, &st, &spool, &mut durable).await;
    let mut link_tasks = tokio::task::JoinSet::new();
    for i in 0..links.cfg.masters.len() {
        link_tasks.spawn(link_loop(links.clone(), i));
    }
    let mut chans: Vec<Option<Arc<ReqChannel>>> = vec![None; links.cfg.masters.len()];
    let mut sends = tokio::task::JoinSet::new();
    let mut events = links.cfg.forward_events.then(|| links.core.bus.subscribe());
    let mut seen_events = EventDedup::default();
    let mut events_next = tokio::time::Instant::now();
    let mut spool_backoff = Duration::from_secs(1);
    let mut spool_next = tokio::time::Instant::now();
    let mut spool_busy = false;
    let window = links.cfg.window.max(Duration::from_millis(20));
    tokio::pin!(shutdown);
    loop {
        // Sleep until the state's timeout, the event window or the spool's retry, whichever
        // comes first (and at most a window: the state is re-read then).
        let now = tokio::time::Instant::now();
        let mut wake = now + window;
        if let Some(t) = st.poll_timeout() {
            wake = wake.min(tokio::time::Instant::from_std(t));
        }
        tokio::select! {
            () = &mut shutdown => break,
            cmd = rx.recv() => {
                let Some(cmd) = cmd else { break };
                handle_cmd(&mut st, &mut chans, cmd, &mut spool_backoff, &mut spool_next, &mut spool_busy, &mut durable);
                // Take whatever else is queued before the next pass.
                while let Ok(cmd) = rx.try_recv() {
                    handle_cmd(&mut st, &mut chans, cmd, &mut spool_backoff, &mut spool_next, &mut spool_busy, &mut durable);
                }
            }
            () = tokio::time::sleep_until(wake) => {}
            Some(_) = sends.join_next(), if !sends.is_empty() => {}
        }
        let now = Instant::now();
        if st.poll_timeout().is_some_and(|t| t <= now) {
            let open: Vec<(String, bool)> = st
                .open_routes()
                .map(|jid| (jid.to_owned(), st.wants_load(jid)))
                .collect();
            for (jid, tracking, expected, load) in links.core.route_views(open).await {
                let view = CoreView {
                    load,
                    expected,
                    tracking,
                };
                st.handle_core(&jid, view);
            }
            st.handle_timeout(now);
        }
        while let Some(t) = st.poll_transmit() {
            carry_out(&links, &chans, &spool, &mut sends, t);
        }
        durable.mark(&st, false);
        if let Some(rx) = events.as_mut()
            && tokio::time::Instant::now() >= events_next
        {
            events_next = tokio::time::Instant::now() + window;
            forward_events(&links, &chans, rx, &mut seen_events, &mut sends);
        }
        if !spool_busy && tokio::time::Instant::now() >= spool_next {
            spool_busy = true;
            // Pushed back when the flush reports; a flush that never reports is retried then.
            spool_next = tokio::time::Instant::now() + spool_backoff.max(window);
            let (links, chans) = (links.clone(), chans.clone());
            sends.spawn(async move {
                let r = flush_spool(&links, &chans).await;
                let _ = links.tx.send(Cmd::SpoolFlushed(r));
            });
        }
    }
    // Stopping: the batch goes out now, deliveries under way get DRAIN_TIMEOUT, and whatever
    // no upper master acknowledged is spooled.
    st.handle_timeout(Instant::now() + window);
    while let Some(t) = st.poll_transmit() {
        carry_out(&links, &chans, &spool, &mut sends, t);
    }
    let deadline = tokio::time::Instant::now() + DRAIN_TIMEOUT;
    while !sends.is_empty() {
        tokio::select! {
            () = tokio::time::sleep_until(deadline) => break,
            _ = sends.join_next() => {}
        }
        while let Ok(cmd) = rx.try_recv() {
            if let Cmd::Sent { id, ok } = cmd {
                st.handle_sent(id, ok);
            } else if let Cmd::Return(r) = cmd {
                st.handle_return(&r, Instant::now());
            }
        }
        while let Some(t) = st.poll_transmit() {
            if matches!(t.what, What::Spool { .. }) {
                carry_out(&links, &chans, &spool, &mut sends, t);
            }
        }
    }
    sends.abort_all();
    while let Ok(cmd) = rx.try_recv() {
        match cmd {
            Cmd::Sent { id, ok } => st.handle_sent(id, ok),
            Cmd::Return(r) => {
                st.handle_return(&r, Instant::now());
            }
            _ => {}
        }
    }
    st.shutdown();
    let mut spooled = 0usize;
    while let Some(t) = st.poll_transmit() {
        if let What::Spool { jid, load } = t.what {
            spool.push_to(&jid, &dest(&links.cfg.masters, t.link), &load);
            spooled += 1;
        }
    }
    if spooled > 0 {
        info!(
            batches = spooled,
            "returns not acknowledged upward were spooled at shutdown"
        );
    }
    durable.mark(&st, true);
    link_tasks.abort_all();
}

/// A driver input.
fn handle_cmd(
    st: &mut Upstream,
    chans: &mut [Option<Arc<ReqChannel>>],
    cmd: Cmd,
    spool_backoff: &mut Duration,
    spool_next: &mut tokio::time::Instant,
    spool_busy: &mut bool,
    durable: &mut Durable,
) {
    let now = Instant::now();
    match cmd {
        Cmd::Publish {
            link,
            job,
            known_here,
            reply,
        } => {
            let on = st.handle_publish(link, &job, known_here, now);
            if matches!(on, OnPublish::Relay) {
                durable.route(&job.jid, link);
            }
            let _ = reply.send(on);
        }
        Cmd::Relayed { jid, ok } => st.handle_relayed(&jid, ok, now),
        Cmd::FindJob { jid, reply } => {
            let _ = reply.send(st.find_job(&jid));
        }
        Cmd::Return(r) => {
            st.handle_return(&r, now);
        }
        Cmd::Link(i, chan) => {
            let up = chan.is_some();
            if let Some(slot) = chans.get_mut(i) {
                *slot = chan;
            }
            st.handle_link(i, up, now);
            if up {
                // Spooled returns may go now.
                *spool_next = tokio::time::Instant::now();
            }
        }
        Cmd::Sent { id, ok } => st.handle_sent(id, ok),
        Cmd::SpoolFlushed(r) => {
            *spool_busy = false;
            match r {
                Some(true) | None => *spool_backoff = Duration::from_secs(1),
                Some(false) => *spool_backoff = (*spool_backoff * 2).min(Duration::from_secs(30)),
            }
            *spool_next = tokio::time::Instant::now() + *spool_backoff;
        }
    }
}

/// `host:port` of upper master `link` (names spool entries, so they go back to it).
fn dest(masters: &[MasterAddr], link: usize) -> String {
    masters
        .get(link)
        .map(|m| format!("{}:{}", m.host, m.ret_port))
        .unwrap_or_default()
}

fn live(chans: &[Option<Arc<ReqChannel>>], i: usize) -> Option<Arc<ReqChannel>> {
    chans.get(i)?.clone().filter(|c| c.is_alive())
}

/// The order upper masters are tried in for something that belongs to `first`: it first, then
/// the others in `syndic_failover` order (`random` shuffles them).
pub fn failover_order(
    n: usize,
    first: usize,
    random: bool,
    mut rand: impl FnMut() -> usize,
) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).filter(|i| *i != first).collect();
    if random {
        for k in (1..order.len()).rev() {
            let j = rand() % (k + 1);
            order.swap(k, j);
        }
    }
    std::iter::once(first)
        .filter(|f| *f < n)
        .chain(order)
        .collect()
}

/// Live links for something that belongs to `first`, in [`failover_order`].
fn candidates(
    links: &Links,
    chans: &[Option<Arc<ReqChannel>>],
    first: usize,
) -> Vec<Arc<ReqChannel>> {
    failover_order(chans.len(), first, links.cfg.failover_random, || {
        usize::from(rand_u16())
    })
    .into_iter()
    .filter_map(|i| live(chans, i))
    .collect()
}

/// Send `load` to the first of `candidates` that takes it.
async fn deliver(cands: Vec<Arc<ReqChannel>>, load: &Value) -> bool {
    for chan in cands {
        match chan.send(load, Duration::from_secs(10)).await {
            Ok(_) => return true,
            Err(e) => {
                warn!(master = %chan.master().host, error = %e, "upper master did not take the returns")
            }
        }
    }
    false
}

/// Carry out one transmit: sends run as tasks that report back with `Cmd::Sent`; spool writes
/// are done at once.
fn carry_out(
    links: &Arc<Links>,
    chans: &[Option<Arc<ReqChannel>>],
    spool: &Spool,
    sends: &mut tokio::task::JoinSet<()>,
    t: Transmit,
) {
    let tx = links.tx.clone();
    let id = t.id;
    match t.what {
        What::Spool { jid, load } => {
            spool.push_to(&jid, &dest(&links.cfg.masters, t.link), &load);
        }
        What::Returns { jid, load } => {
            let cands = candidates(links, chans, t.link);
            sends.spawn(async move {
                let ok = deliver(cands, &load).await;
                if ok {
                    debug!(jid = %jid, "returns forwarded upward");
                }
                let _ = tx.send(Cmd::Sent { id, ok });
            });
        }
        What::Report { load, event } => {
            let Some(chan) = live(chans, t.link) else {
                // The publishing master's link is down (maybe reconnecting): reported again
                // next window while the job runs here.
                let _ = tx.send(Cmd::Sent { id, ok: false });
                return;
            };
            sends.spawn(async move {
                let ok = match chan.send(&load, SEND_TIMEOUT).await {
                    Ok(_) => {
                        let _ = chan.send(&event, SEND_TIMEOUT).await;
                        true
                    }
                    Err(e) => {
                        warn!(master = %chan.master().host, error = %e, "report not delivered; will retry");
                        false
                    }
                };
                let _ = tx.send(Cmd::Sent { id, ok });
            });
        }
    }
}

async fn link_loop(up: Arc<Links>, i: usize) {
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
        let _ = up.tx.send(Cmd::Link(i, None));
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

async fn serve_link(up: &Arc<Links>, i: usize) -> Result<(), LinkError> {
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
    let mut feed_reauths = chan.reauths();
    let mut last_publish = tokio::time::Instant::now();
    let mut restart_check = tokio::time::interval(Duration::from_secs(1));
    restart_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    info!(master = %m.host, publish_port = port, "syndic connected to upper master");
    let started = format!(
        "Syndic {} started at {}",
        up.me.id,
        brine_minion_side::asctime(brine_minion_side::unix_secs())
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
    let _ = up.tx.send(Cmd::Link(i, Some(chan.clone())));
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
                last_publish = tokio::time::Instant::now();
                let job = match feed.decoder.decode(&raw, &aes, &Value::Nil, &Value::Nil) {
                    Feed::Job(job) => job,
                    Feed::Skip(why) => {
                        brine_minion_side::link::log_skip(&why);
                        continue;
                    }
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
                // The feed hears the master as it is now.
                feed_reauths = chan.reauths();
                // Relays, reports and find_job answers must not hold up the next publish.
                let (up, chan) = (up.clone(), chan.clone());
                tokio::spawn(async move { on_publish(&up, i, &chan, *job).await });
            }
            () = dead.notified() => return Ok(()),
            _ = restart_check.tick() => {
                // The request channel had to re-authenticate: the master restarted. Its
                // publisher is new, and the subscription may be waiting out a reconnect delay
                // of up to 10 s (Salt's schedule, meant to spread a fleet of minions): connect a
                // new one now, with the new key, so no publish of the restarted master is missed.
                // (A feed that decoded a publish since is left alone: the key was only
                // rotated.)
                if chan.reauths() != feed_reauths
                    && last_publish.elapsed() >= Duration::from_secs(2)
                {
                    feed_reauths = chan.reauths();
                    info!(master = %m.host, "upper master restarted (new session); subscribing again");
                    feed = JobFeed::connect(&up.ctx, &up.link_cfg, &m.host, port)?;
                    feed.decoder.relay = true;
                    aes = chan.creds().await.0;
                }
            }
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

/// A publish from upper master `i`: answered (`find_job`), relayed once, or reported empty
/// (a duplicate).
async fn on_publish(up: &Arc<Links>, i: usize, chan: &Arc<ReqChannel>, job: JobLoad) {
    let jid = job.jid.clone();
    let fun = job.fun_name().unwrap_or_default().to_owned();
    let (reply, answer) = oneshot::channel();
    let known_here = up.core.job_load(&jid).await.is_some();
    let cmd = Cmd::Publish {
        link: i,
        job: Box::new(job.clone()),
        known_here,
        reply,
    };
    if up.tx.send(cmd).is_err() {
        return;
    }
    let Ok(what) = answer.await else { return };
    match what {
        OnPublish::FindJob => answer_find_job(up, chan, &job).await,
        OnPublish::Duplicate(load) => {
            // Seen before (another upper master, or our own job coming back round): this
            // master will not relay it for that link, so say so at once.
            debug!(jid = %jid, link = i, "job already relayed or ours; empty report");
            if let Err(e) = chan.send(&load, Duration::from_secs(10)).await {
                debug!(jid = %jid, error = %e, "empty report not delivered");
            }
        }
        OnPublish::Relay => {
            let ok = match up.core.relay(job).await {
                Ok(p) => {
                    info!(jid = %jid, fun = %fun, minions = p.minions.len(), "relayed from upper master");
                    true
                }
                Err(e) => {
                    warn!(jid = %jid, error = %e, "relay failed");
                    false
                }
            };
            let _ = up.tx.send(Cmd::Relayed { jid, ok });
        }
    }
}

/// Answer `saltutil.find_job` for the minions below from the core's tracker (and the returns
/// on their way upward, which count as running).
async fn answer_find_job(up: &Links, chan: &ReqChannel, job: &JobLoad) {
    let Some(orig) = job.find_job_asks_about().map(str::to_owned) else {
        return;
    };
    let ids: Vec<String> = match job.tgt.as_array() {
        Some(_) => job.tgt.str_items(),
        None => match job.tgt.as_str() {
            Some(s) if job.tgt_type() == "list" => {
                s.split(',').map(|x| x.trim().to_owned()).collect()
            }
            _ => up.core.settled_expected(&orig).await.unwrap_or_default(),
        },
    };
    let (reply, answer) = oneshot::channel();
    if up
        .tx
        .send(Cmd::FindJob {
            jid: orig.clone(),
            reply,
        })
        .is_err()
    {
        return;
    }
    let Ok((fun, on_the_way)) = answer.await else {
        return;
    };
    let mut returns = Vec::new();
    for (id, running) in up.core.running(&orig, ids).await {
        let Some(running) = running else { continue };
        let running = running || on_the_way.contains(&id);
        let ret = if running {
            Value::map()
                .with("jid", orig.as_str())
                .with("fun", fun.clone())
                .with("syndic", up.me.id.as_str())
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
            id: up.me.id.clone(),
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

/// Deliver spooled returns, oldest first, each to the upper master it was spooled for (then
/// the others in failover order); `None` when the spool is empty, `Some(false)` when a
/// delivery failed (back off).
async fn flush_spool(up: &Links, chans: &[Option<Arc<ReqChannel>>]) -> Option<bool> {
    let spool = Spool::new(&up.cfg.cachedir, SPOOL_MAX_BYTES);
    let entries = spool.entries();
    if entries.is_empty() {
        return None;
    }
    for entry in entries {
        let Some(load) = spool.read(&entry) else {
            continue;
        };
        let first = spool_link(&up.cfg.masters, Spool::dest_of(&entry).as_deref());
        if deliver(candidates(up, chans, first), &load).await {
            info!("spooled returns delivered upward");
            spool.remove(&entry);
        } else {
            return Some(false);
        }
    }
    Some(true)
}

/// The upper master a spool entry was for (by `host:port`), else the first one.
pub fn spool_link(masters: &[MasterAddr], dest: Option<&str>) -> usize {
    dest.and_then(|d| {
        masters
            .iter()
            .position(|m| format!("{}:{}", m.host, m.ret_port) == d)
    })
    .unwrap_or(0)
}

/// Remembers the last 20,000 forwarded events' identities ([`event_key`]), so a copy arriving
/// by a second path is recognised (used by the forwarder and by the core's request path).
#[derive(Debug, Default)]
pub(crate) struct EventDedup {
    set: HashSet<String>,
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

fn forward_events(
    up: &Links,
    chans: &[Option<Arc<ReqChannel>>],
    rx: &mut tokio::sync::broadcast::Receiver<Arc<crate::requests::MasterEvent>>,
    seen: &mut EventDedup,
    sends: &mut tokio::task::JoinSet<()>,
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
    let load = Arc::new(
        MinionEvent {
            id: up.me.id.clone(),
            pretag: Some(format!("syndic/{}", up.me.id)),
            events: batch,
            batch: true,
            extra: vec![],
        }
        .to_value(),
    );
    for i in 0..chans.len() {
        if let Some(chan) = live(chans, i) {
            let load = load.clone();
            sends.spawn(async move {
                if let Err(e) = chan.send(&load, SEND_TIMEOUT).await {
                    debug!(master = %chan.master().host, error = %e, "events not forwarded");
                }
            });
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
