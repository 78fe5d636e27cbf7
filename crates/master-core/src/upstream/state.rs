//! The syndic's upstream side as a state machine without I/O, in the quinn-proto manner: the
//! driver ([`super::run`]) hands it what happened (`handle_*`, with the time) and carries out
//! what it asks for (`poll_transmit`), and sleeps until `poll_timeout`.
//!
//! It owns the routes of relayed jobs (which upper master brought each one, what was reported
//! upward), the outbox of returns waiting for the next batch, the returns taken from minions and
//! not delivered yet (a `find_job` about them answers "running"), and the batches handed to the
//! driver and not acknowledged yet.
//!
//! A driver, in order:
//! 1. feeds inputs as they come: [`Upstream::handle_publish`] for each publish from above,
//!    [`Upstream::handle_relayed`] once the core relayed it, [`Upstream::handle_return`] for
//!    every return the core takes, [`Upstream::handle_link`] when a link comes up or goes down,
//!    [`Upstream::handle_sent`] when a transmit finished;
//! 2. when `poll_timeout` is reached: for every jid of [`Upstream::open_routes`], the core's
//!    view of the job ([`Upstream::handle_core`]), then [`Upstream::handle_timeout`];
//! 3. drains [`Upstream::poll_transmit`] and carries each one out (a send to one upper master,
//!    with failover for returns; a write to the spool), reporting back with `handle_sent`.
//!
//! On shutdown, [`Upstream::shutdown`] turns every return not yet acknowledged by an upper
//! master (in the outbox or in a transmit under way) into spool writes: nothing taken from a
//! minion is lost. A batch whose send was under way may then reach the upper master twice; the
//! master keeps the first return per `(jid, minion)`.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use brine_proto::Value;
use brine_proto::loads::{JobLoad, MinionEvent, ReturnLoad, SyndicReturn, SyndicReturnEntry};

/// Returns that trigger an early flush of the batch.
pub const BATCH_RETURNS: usize = 2_000;
/// Returns held in memory at most; more go to the spool directly.
pub const OUTBOX_MAX: usize = 50_000;
/// Relayed jobs remembered after they finished (routing of late returns, de-duplication).
/// Routes of jobs still running are never forgotten.
pub const ROUTES_MAX: usize = 10_000;

/// What to do with a publish from an upper master.
#[derive(Debug, Clone, PartialEq)]
pub enum OnPublish {
    /// `saltutil.find_job`: answer it from the core's tracker ([`Upstream::find_job`]).
    FindJob,
    /// First sight of the job: relay it through the core, then [`Upstream::handle_relayed`].
    Relay,
    /// Seen before (from another upper master, or this master's own job coming back round):
    /// not relayed again; send this empty report to the link that brought it, so its master
    /// does not wait for this one.
    Duplicate(Value),
}

/// What the core knows about a relayed job, fed by the driver.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CoreView {
    /// The job's load from the core (what goes upward with reports and returns).
    pub load: Option<Value>,
    /// The minions expected here, once every syndic below reported (`None` while waiting).
    pub expected: Option<Vec<String>>,
    /// Whether the core's tracker still follows the job.
    pub tracking: bool,
}

/// Something for the driver to carry out.
#[derive(Debug, Clone, PartialEq)]
pub struct Transmit {
    /// Given back in [`Upstream::handle_sent`] (spool writes need no answer).
    pub id: u64,
    /// The upper master (index into `syndic_master`) it belongs to.
    pub link: usize,
    /// What it is.
    pub what: What,
}

/// The kinds of [`Transmit`].
#[derive(Debug, Clone, PartialEq)]
pub enum What {
    /// A `_syndic_return` with returns: to `link` first, then to any live upper master in
    /// `syndic_failover` order. When none takes it, `handle_sent(id, false)` (it is spooled).
    Returns {
        /// The first jid (names the spool entry).
        jid: String,
        /// The `_syndic_return` load.
        load: Value,
    },
    /// Reports of the minions expected here (a `_syndic_return` with empty returns), then the
    /// `syndic/<id>/<jid>` events Salt's CLI on an upper salt-master counts minions from. Only
    /// to `link`; when it fails, the report is made again next window.
    Report {
        /// The `_syndic_return` load.
        load: Value,
        /// The `_minion_event` load sent after it.
        event: Value,
    },
    /// Keep `load` in the spool for `link`'s master (returns nobody took).
    Spool {
        /// The first jid (names the spool entry).
        jid: String,
        /// The `_syndic_return` load.
        load: Value,
    },
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
    /// The core's load for the job, once known (minus `Minions`/`minions`).
    load: Option<Value>,
    /// Minions expected here, last fed by the driver.
    expected: Option<Vec<String>>,
    /// Minions reported upward so far (`None`: not reported yet).
    reported: Option<BTreeSet<String>>,
    /// A report for the job is under way.
    reporting: bool,
    /// Still of interest to the core: not reported yet, or the core still tracks it.
    open: bool,
    /// The core relayed the job (before that, its view says nothing yet).
    relayed: bool,
}

/// A `_syndic_return` load of returns: `(link, first jid, load, (jid, minion) members)`.
type Batch = (usize, String, Value, Vec<(String, String)>);

/// What a transmit under way carries, to settle when it is acknowledged.
#[derive(Debug)]
enum Pending {
    Returns {
        jid: String,
        load: Value,
        members: Vec<(String, String)>,
    },
    Report {
        reports: Vec<(String, Vec<String>)>,
    },
}

/// The syndic's upstream state (see the module docs for the order a driver polls in).
#[derive(Debug)]
pub struct Upstream {
    me: String,
    links: usize,
    window: Duration,
    routes: HashMap<String, Route>,
    /// Jids in the order they were relayed (eviction of finished routes).
    order: VecDeque<String>,
    /// Routes the core's view is asked for each pass.
    open: BTreeSet<String>,
    /// Returns waiting for the next flush, per jid: `(minion, {return, retcode, ...})`.
    outbox: BTreeMap<String, Vec<(String, Value)>>,
    outbox_count: usize,
    /// Returns taken from minions and not yet acknowledged upward or spooled, per jid.
    in_flight: HashMap<String, HashSet<String>>,
    /// When the oldest return still in flight was taken, per jid.
    taken: HashMap<String, Instant>,
    pending: HashMap<u64, Pending>,
    transmits: VecDeque<Transmit>,
    next_id: u64,
    /// When the next pass is due (reports and the batch).
    next_pass: Option<Instant>,
    /// Links whose report failed in the current window (not retried until the next one).
    up: Vec<bool>,
}

impl Upstream {
    /// The upstream side of syndic `me` with `links` upper masters, batching over `window`
    /// (`syndic_event_forward_timeout`).
    pub fn new(me: &str, links: usize, window: Duration) -> Self {
        Self {
            me: me.to_owned(),
            links,
            window: window.max(Duration::from_millis(20)),
            routes: HashMap::new(),
            order: VecDeque::new(),
            open: BTreeSet::new(),
            outbox: BTreeMap::new(),
            outbox_count: 0,
            in_flight: HashMap::new(),
            taken: HashMap::new(),
            pending: HashMap::new(),
            transmits: VecDeque::new(),
            next_id: 0,
            next_pass: None,
            up: vec![false; links],
        }
    }

    /// A publish from upper master `link`. `known_here` says whether the core already has the
    /// jid (this master's own job, or one relayed before the routes were kept).
    pub fn handle_publish(
        &mut self,
        link: usize,
        job: &JobLoad,
        known_here: bool,
        now: Instant,
    ) -> OnPublish {
        if job.fun_name() == Some("saltutil.find_job") {
            return OnPublish::FindJob;
        }
        if known_here || self.routes.contains_key(&job.jid) {
            let entry = self.report_entry(
                &job.jid,
                job.fun.clone(),
                job.master_id.clone(),
                job.arg.clone(),
                job.tgt.clone(),
                job.tgt_type(),
                &[],
                None,
            );
            return OnPublish::Duplicate(
                SyndicReturn {
                    entries: vec![entry],
                }
                .to_value(),
            );
        }
        self.routes.insert(
            job.jid.clone(),
            Route {
                link: link.min(self.links.saturating_sub(1)),
                master_id: job.master_id.clone(),
                fun: job.fun.clone(),
                arg: job.arg.clone(),
                tgt: job.tgt.clone(),
                tgt_type: job.tgt_type().to_owned(),
                load: None,
                expected: None,
                reported: None,
                reporting: false,
                open: true,
                relayed: false,
            },
        );
        self.order.push_back(job.jid.clone());
        self.open.insert(job.jid.clone());
        self.evict();
        if self.next_pass.is_none() {
            self.next_pass = Some(now + self.window);
        }
        OnPublish::Relay
    }

    /// The core relayed `jid` (`ok`; its expectations may be known now: a pass is due), or
    /// could not (nothing will run here; the route stays for de-duplication).
    pub fn handle_relayed(&mut self, jid: &str, ok: bool, now: Instant) {
        if let Some(r) = self.routes.get_mut(jid) {
            r.relayed = true;
            if !ok {
                r.open = false;
                self.open.remove(jid);
            }
        }
        self.due(now);
    }

    /// Upper master `link` came up (a pass is due: reports waiting for it) or went down.
    pub fn handle_link(&mut self, link: usize, up: bool, now: Instant) {
        if let Some(u) = self.up.get_mut(link) {
            *u = up;
        }
        if up {
            self.due(now);
        }
    }

    /// A return the core took. Only returns of relayed jobs go upward (`false` otherwise).
    pub fn handle_return(&mut self, r: &ReturnLoad, now: Instant) -> bool {
        if !self.routes.contains_key(&r.jid) {
            return false;
        }
        let mut entry = Value::map()
            .with("return", r.ret.clone())
            .with("retcode", r.retcode)
            .with("success", r.success)
            .with("fun_args", r.fun_args.clone());
        if let Some(out) = &r.out {
            entry.insert("out", out.as_str());
        }
        self.in_flight
            .entry(r.jid.clone())
            .or_default()
            .insert(r.id.clone());
        self.taken.entry(r.jid.clone()).or_insert(now);
        self.outbox
            .entry(r.jid.clone())
            .or_default()
            .push((r.id.clone(), entry));
        self.outbox_count += 1;
        if self.outbox_count >= OUTBOX_MAX {
            tracing::warn!(
                returns = self.outbox_count,
                "too many returns waiting for the upper masters; spooling them"
            );
            for (link, jid, load, members) in self.take_outbox() {
                self.spool(link, jid, load, &members);
            }
        } else if self.outbox_count >= BATCH_RETURNS {
            self.due(now);
        } else if self.next_pass.is_none_or(|t| t > now + self.window) {
            self.next_pass = Some(now + self.window);
        }
        true
    }

    /// The jids whose core view the driver feeds before each [`Self::handle_timeout`]: every
    /// job not reported yet or still tracked by the core (not only the newest).
    pub fn open_routes(&self) -> impl Iterator<Item = &str> {
        self.open.iter().map(String::as_str)
    }

    /// Whether the job's load is still wanted in [`CoreView::load`] (it is kept once given).
    pub fn wants_load(&self, jid: &str) -> bool {
        self.routes.get(jid).is_some_and(|r| r.load.is_none())
    }

    /// The core's view of relayed job `jid`.
    pub fn handle_core(&mut self, jid: &str, view: CoreView) {
        let Some(r) = self.routes.get_mut(jid) else {
            self.open.remove(jid);
            return;
        };
        if let Some(mut load) = view.load {
            load.remove("Minions");
            load.remove("minions");
            r.load = Some(load);
        }
        if !r.relayed {
            return;
        }
        let settled = view.expected.is_some();
        if settled {
            r.expected = view.expected;
        }
        // Once the core no longer tracks the job, nothing more will be learnt about it: it is
        // closed when reported, or when the core forgot its expectations.
        r.open = r.reporting || view.tracking || (r.reported.is_none() && settled);
        if !r.open {
            self.open.remove(jid);
        }
    }

    /// When the driver should next call [`Self::handle_timeout`].
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.next_pass
    }

    /// A pass: reports for open routes whose expected minions are known (or grew), and the
    /// batch of returns, as transmits.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.next_pass.is_some_and(|t| t > now) {
            return;
        }
        self.next_pass = None;
        self.make_reports();
        for (link, jid, load, members) in self.take_outbox() {
            let id = self.next_id();
            self.pending.insert(
                id,
                Pending::Returns {
                    jid: jid.clone(),
                    load: load.clone(),
                    members,
                },
            );
            self.transmits.push_back(Transmit {
                id,
                link,
                what: What::Returns { jid, load },
            });
        }
        if !self.open.is_empty() {
            self.next_pass = Some(now + self.window);
        }
    }

    /// A transmit finished: `ok` when an upper master took it.
    pub fn handle_sent(&mut self, id: u64, ok: bool) {
        match self.pending.remove(&id) {
            Some(Pending::Returns { jid, load, members }) => {
                if ok {
                    self.landed(&members);
                } else {
                    let link = self.routes.get(&jid).map_or(0, |r| r.link);
                    self.spool(link, jid, load, &members);
                }
            }
            Some(Pending::Report { reports }) => {
                for (jid, minions) in reports {
                    let Some(r) = self.routes.get_mut(&jid) else {
                        continue;
                    };
                    r.reporting = false;
                    if ok {
                        r.reported.get_or_insert_with(BTreeSet::new).extend(minions);
                    }
                }
            }
            None => {}
        }
    }

    /// The next thing to carry out.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// What a `find_job` about `jid` needs from here: the job's function, and the minions whose
    /// returns are on their way upward (they count as running).
    pub fn find_job(&self, jid: &str) -> (Value, HashSet<String>) {
        (
            self.routes.get(jid).map_or(Value::Nil, |r| r.fun.clone()),
            self.in_flight.get(jid).cloned().unwrap_or_default(),
        )
    }

    /// Whether `jid` is a relayed job this side routes.
    pub fn routes(&self, jid: &str) -> bool {
        self.routes.contains_key(jid)
    }

    /// Stop: every return not acknowledged by an upper master (batched, or in a transmit under
    /// way) becomes a spool write; drain [`Self::poll_transmit`] afterwards.
    pub fn shutdown(&mut self) {
        let mut ids: Vec<u64> = self.pending.keys().copied().collect();
        ids.sort_unstable();
        for id in ids {
            if matches!(self.pending.get(&id), Some(Pending::Returns { .. })) {
                self.handle_sent(id, false);
            }
        }
        for (link, jid, load, members) in self.take_outbox() {
            self.spool(link, jid, load, &members);
        }
        // Only spool writes are left to carry out.
        self.transmits
            .retain(|t| matches!(t.what, What::Spool { .. }));
    }

    /// When the oldest return not yet acknowledged upward (nor spooled) was taken; `None`
    /// when every return taken so far is delivered or spooled.
    pub fn oldest_undelivered(&self) -> Option<Instant> {
        self.taken.values().min().copied()
    }

    /// A `_syndic_return` entry for `jid` rebuilt from this master's job cache (its `load` and
    /// the minions' stored returns), for returns a crash kept from going upward.
    pub fn replay_entry(
        &self,
        jid: &str,
        load: &Value,
        returns: Vec<(String, Value)>,
    ) -> SyndicReturnEntry {
        let field = |k: &str| load.get(k).cloned().unwrap_or(Value::Nil);
        let returns = returns
            .into_iter()
            .map(|(id, data)| {
                let mut entry = Value::map();
                for k in ["return", "retcode", "success", "fun_args", "out"] {
                    if let Some(v) = data.get(k) {
                        entry.insert(k, v.clone());
                    }
                }
                (id, entry)
            })
            .collect();
        SyndicReturnEntry {
            id: self.me.clone(),
            jid: jid.to_owned(),
            fun: field("fun"),
            load: load.clone(),
            returns,
            master_id: load
                .get("master_id")
                .and_then(Value::as_str)
                .map(str::to_owned),
            extra: vec![
                (Value::str("arg"), field("arg")),
                (Value::str("tgt"), field("tgt")),
                (Value::str("tgt_type"), field("tgt_type")),
            ],
        }
    }

    /// Returns taken from minions and not acknowledged upward yet.
    pub fn undelivered(&self) -> usize {
        self.in_flight.values().map(HashSet::len).sum()
    }

    fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn due(&mut self, now: Instant) {
        self.next_pass = Some(self.next_pass.map_or(now, |t| t.min(now)));
    }

    fn spool(&mut self, link: usize, jid: String, load: Value, members: &[(String, String)]) {
        self.landed(members);
        let id = self.next_id();
        self.transmits.push_back(Transmit {
            id,
            link,
            what: What::Spool { jid, load },
        });
    }

    /// Forget the oldest finished routes beyond [`ROUTES_MAX`]; a route whose job still runs
    /// here, or whose returns are still on their way, stays.
    fn evict(&mut self) {
        let mut budget = self.order.len();
        while self.routes.len() > ROUTES_MAX && budget > 0 {
            budget -= 1;
            let Some(jid) = self.order.pop_front() else {
                break;
            };
            let busy = self.open.contains(&jid)
                || self.in_flight.contains_key(&jid)
                || self.outbox.contains_key(&jid);
            if busy {
                self.order.push_back(jid);
            } else {
                self.routes.remove(&jid);
            }
        }
    }

    fn landed(&mut self, members: &[(String, String)]) {
        for (jid, id) in members {
            if let Some(set) = self.in_flight.get_mut(jid) {
                set.remove(id);
                if set.is_empty() {
                    self.in_flight.remove(jid);
                    self.taken.remove(jid);
                }
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn report_entry(
        &self,
        jid: &str,
        fun: Value,
        master_id: Option<String>,
        arg: Value,
        tgt: Value,
        tgt_type: &str,
        minions: &[String],
        load: Option<Value>,
    ) -> SyndicReturnEntry {
        let mut load = load.unwrap_or_else(Value::map);
        load.insert(
            "Minions",
            Value::Array(minions.iter().map(Value::str).collect()),
        );
        SyndicReturnEntry {
            id: self.me.clone(),
            jid: jid.to_owned(),
            fun,
            load,
            returns: Vec::new(),
            master_id,
            extra: vec![
                (Value::str("arg"), arg),
                (Value::str("tgt"), tgt),
                (Value::str("tgt_type"), Value::str(tgt_type)),
            ],
        }
    }

    /// One report transmit per link, for every open route whose expected minions are known and
    /// not reported yet (or grew), on a link that is up.
    fn make_reports(&mut self) {
        let mut per_link: BTreeMap<usize, Vec<(String, Vec<String>)>> = BTreeMap::new();
        for jid in &self.open {
            let Some(r) = self.routes.get(jid) else {
                continue;
            };
            if r.reporting || !self.up.get(r.link).copied().unwrap_or(false) {
                continue;
            }
            let Some(expected) = &r.expected else {
                continue;
            };
            let new: Vec<String> = expected
                .iter()
                .filter(|m| !r.reported.as_ref().is_some_and(|s| s.contains(*m)))
                .cloned()
                .collect();
            if r.reported.is_some() && new.is_empty() {
                continue;
            }
            per_link.entry(r.link).or_default().push((jid.clone(), new));
        }
        for (link, reports) in per_link {
            let mut entries = Vec::new();
            let mut events = Vec::new();
            for (jid, new) in &reports {
                let r = &self.routes[jid];
                entries.push(self.report_entry(
                    jid,
                    r.fun.clone(),
                    r.master_id.clone(),
                    r.arg.clone(),
                    r.tgt.clone(),
                    &r.tgt_type,
                    new,
                    r.load.clone(),
                ));
                events.push((
                    jid.clone(),
                    Value::map()
                        .with("jid", jid.as_str())
                        .with(
                            "minions",
                            Value::Array(new.iter().map(Value::str).collect()),
                        )
                        .with("syndic", self.me.as_str()),
                ));
            }
            for (jid, _) in &reports {
                if let Some(r) = self.routes.get_mut(jid) {
                    r.reporting = true;
                }
            }
            let load = SyndicReturn { entries }.to_value();
            let event = MinionEvent {
                id: self.me.clone(),
                pretag: Some(format!("syndic/{}", self.me)),
                events,
                batch: true,
                extra: vec![],
            }
            .to_value();
            let id = self.next_id();
            self.pending.insert(id, Pending::Report { reports });
            self.transmits.push_back(Transmit {
                id,
                link,
                what: What::Report { load, event },
            });
        }
    }

    /// The outbox as one `_syndic_return` load per link (the link each job came from):
    /// `(link, first jid, load, (jid, minion) members)`.
    fn take_outbox(&mut self) -> Vec<Batch> {
        type Entries = (Vec<SyndicReturnEntry>, Vec<(String, String)>);
        let outbox = std::mem::take(&mut self.outbox);
        self.outbox_count = 0;
        let mut per_link: BTreeMap<usize, Entries> = BTreeMap::new();
        for (jid, returns) in outbox {
            let Some(route) = self.routes.get(&jid) else {
                continue;
            };
            let slot = per_link.entry(route.link).or_default();
            slot.1
                .extend(returns.iter().map(|(id, _)| (jid.clone(), id.clone())));
            // The job load goes with every batch (one per jid, small): whichever master takes
            // the returns can show the job, even when it did not publish it.
            slot.0.push(SyndicReturnEntry {
                id: self.me.clone(),
                jid: jid.clone(),
                fun: route.fun.clone(),
                load: route.load.clone().unwrap_or(Value::Nil),
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
            .map(|(link, (entries, members))| {
                let jid = entries.first().map(|e| e.jid.clone()).unwrap_or_default();
                (link, jid, SyndicReturn { entries }.to_value(), members)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: Duration = Duration::from_millis(500);

    fn job(jid: &str) -> JobLoad {
        JobLoad {
            fun: Value::str("test.ping"),
            arg: Value::Array(vec![]),
            tgt: Value::str("*"),
            jid: jid.to_owned(),
            ret: String::new(),
            master_id: Some("mom".into()),
            delimiter: None,
            tgt_type: Some("glob".into()),
            to: None,
            user: Some("root".into()),
            auth_list: None,
            extra: vec![],
            serial: None,
        }
    }

    /// A syndic side with `links` upper masters, link 0 up at `t0`.
    fn linked(links: usize, t0: Instant) -> Upstream {
        let mut up = Upstream::new("syn", links, W);
        up.handle_link(0, true, t0);
        up
    }

    fn ret(jid: &str, id: &str) -> ReturnLoad {
        ReturnLoad::new(jid, id, "test.ping", Value::Bool(true))
    }

    fn settled(minions: &[&str], tracking: bool) -> CoreView {
        CoreView {
            load: Some(Value::map().with("fun", "test.ping")),
            expected: Some(minions.iter().map(|m| (*m).to_owned()).collect()),
            tracking,
        }
    }

    /// Relay `jid` from `link` and have the core take it.
    fn relay(up: &mut Upstream, link: usize, jid: &str, now: Instant) {
        assert_eq!(
            up.handle_publish(link, &job(jid), false, now),
            OnPublish::Relay
        );
        up.handle_relayed(jid, true, now);
    }

    /// A pass as a driver makes it, with `view` for every open route.
    fn pass(up: &mut Upstream, now: Instant, view: impl Fn(&str) -> CoreView) -> Vec<Transmit> {
        let open: Vec<String> = up.open_routes().map(str::to_owned).collect();
        for jid in open {
            let v = view(&jid);
            up.handle_core(&jid, v);
        }
        up.handle_timeout(now);
        std::iter::from_fn(|| up.poll_transmit()).collect()
    }

    /// `(jid, minions)` of each entry of a `_syndic_return` load.
    fn entries(load: &Value) -> Vec<(String, Vec<String>)> {
        SyndicReturn::from_value(load)
            .unwrap()
            .entries
            .into_iter()
            .map(|e| {
                let minions = if e.returns.is_empty() {
                    e.load
                        .get("Minions")
                        .map(Value::str_items)
                        .unwrap_or_default()
                } else {
                    e.returns.iter().map(|(id, _)| id.clone()).collect()
                };
                (e.jid, minions)
            })
            .collect()
    }

    /// What a syndic notes as "delivered up to" must not pass a return that is still in the
    /// outbox or in a send under way (kill -9 then would lose it), and must move on once the
    /// upper master acknowledged it.
    #[test]
    fn oldest_undelivered_follows_returns_until_acknowledged() {
        let t0 = Instant::now();
        let mut up = linked(1, t0);
        relay(&mut up, 0, "j1", t0);
        assert_eq!(up.oldest_undelivered(), None);
        let t1 = t0 + Duration::from_millis(100);
        assert!(up.handle_return(&ret("j1", "m1"), t1));
        assert!(up.handle_return(&ret("j1", "m2"), t1 + W));
        assert_eq!(up.oldest_undelivered(), Some(t1), "in the outbox");
        let out = pass(&mut up, t1 + W * 3, |_| settled(&["m1", "m2"], true));
        let sends: Vec<u64> = out
            .iter()
            .filter(|t| matches!(t.what, What::Returns { .. }))
            .map(|t| t.id)
            .collect();
        assert_eq!(sends.len(), 1, "{out:?}");
        assert_eq!(up.oldest_undelivered(), Some(t1), "in a send under way");
        up.handle_sent(sends[0], true);
        assert_eq!(up.oldest_undelivered(), None, "acknowledged upward");
    }

    /// A return rebuilt from the job cache after a crash carries what a live one does.
    #[test]
    fn a_replayed_entry_has_the_returns_and_the_job() {
        let up = linked(1, Instant::now());
        let load = job("j9").to_value();
        let data = ret("j9", "m1").to_value().with("retcode", 0);
        let e = up.replay_entry("j9", &load, vec![("m1".into(), data)]);
        assert_eq!(
            (e.id.as_str(), e.jid.as_str(), e.master_id.as_deref()),
            ("syn", "j9", Some("mom"))
        );
        assert_eq!(e.fun, Value::str("test.ping"));
        assert_eq!(e.returns.len(), 1);
        assert_eq!(e.returns[0].1.get("return"), Some(&Value::Bool(true)));
        assert_eq!(
            e.returns[0].1.get("jid"),
            None,
            "only a return's own fields"
        );
    }

    /// The old side looked at the newest 256 routes only: an older job that was still running
    /// never got its report, and its master fell back to `syndic_wait`.
    #[test]
    fn every_open_route_is_reported_not_only_the_newest() {
        let t0 = Instant::now();
        let mut up = linked(1, t0);
        for n in 0..300 {
            relay(&mut up, 0, &format!("{n:020}"), t0);
        }
        let out = pass(&mut up, t0, |_| settled(&["m1"], true));
        assert_eq!(out.len(), 1, "one report load per upper master");
        let What::Report { load, event } = &out[0].what else {
            panic!("{out:?}")
        };
        let reported = entries(load);
        assert_eq!(reported.len(), 300);
        assert!(reported.contains(&(format!("{:020}", 0), vec!["m1".to_owned()])));
        assert_eq!(
            MinionEvent::from_value(event).unwrap().events.len(),
            300,
            "one syndic/<id>/<jid> event per job for Salt's CLI"
        );
        up.handle_sent(out[0].id, true);
        // Reported and still running: no second report until the expected minions grow.
        assert!(pass(&mut up, t0 + W, |_| settled(&["m1"], true)).is_empty());
        let out = pass(&mut up, t0 + 2 * W, |j| {
            if j == format!("{:020}", 0) {
                settled(&["m1", "m2"], true)
            } else {
                settled(&["m1"], true)
            }
        });
        let What::Report { load, .. } = &out[0].what else {
            panic!("{out:?}")
        };
        assert_eq!(
            entries(load),
            vec![(format!("{:020}", 0), vec!["m2".to_owned()])],
            "a delta"
        );
    }

    /// A report to an upper master that did not take it is made again next window; a link that
    /// is down gets none until it is back.
    #[test]
    fn reports_are_retried_and_wait_for_their_link() {
        let t0 = Instant::now();
        let mut up = linked(2, t0);
        relay(&mut up, 1, "j1", t0);
        assert!(pass(&mut up, t0, |_| settled(&["m1"], true)).is_empty());
        up.handle_link(1, true, t0 + W);
        let out = pass(&mut up, t0 + W, |_| settled(&["m1"], true));
        assert_eq!(out[0].link, 1);
        up.handle_sent(out[0].id, false);
        let out = pass(&mut up, t0 + 2 * W, |_| settled(&["m1"], true));
        assert_eq!(out.len(), 1, "retried: {out:?}");
        up.handle_sent(out[0].id, true);
        // Reported and no longer tracked: the route closes.
        assert!(pass(&mut up, t0 + 3 * W, |_| settled(&["m1"], false)).is_empty());
        assert_eq!(up.open_routes().count(), 0);
    }

    /// The old side forgot the oldest route once 10,000 jobs were relayed, even while its job
    /// still ran: its returns were dropped and `find_job` answered "running" for ever.
    #[test]
    fn a_running_jobs_route_outlives_ten_thousand_newer_ones() {
        let t0 = Instant::now();
        let mut up = linked(1, t0);
        relay(&mut up, 0, "long", t0);
        for n in 0..ROUTES_MAX + 50 {
            let jid = format!("short{n}");
            up.handle_publish(0, &job(&jid), false, t0);
            // Done at once (the relay found nobody): closed, evictable.
            up.handle_relayed(&jid, false, t0);
        }
        assert!(up.routes.len() <= ROUTES_MAX + 1);
        assert!(up.routes("long"));
        assert!(!up.routes("short0"), "finished routes go first");
        assert!(up.handle_return(&ret("long", "m1"), t0));
        let out = pass(&mut up, t0 + W, |_| settled(&["m1"], true));
        let returns: Vec<_> = out
            .iter()
            .filter_map(|t| match &t.what {
                What::Returns { load, .. } => Some(entries(load)),
                _ => None,
            })
            .collect();
        assert_eq!(
            returns,
            vec![vec![("long".to_owned(), vec!["m1".to_owned()])]]
        );
    }

    /// Returns go to the master that published the job; when no master takes them they are
    /// spooled for that master (the old side sent every spooled batch to the first one).
    #[test]
    fn undelivered_returns_are_spooled_for_the_master_they_belong_to() {
        let t0 = Instant::now();
        let mut up = Upstream::new("syn", 3, W);
        relay(&mut up, 2, "j2", t0);
        relay(&mut up, 0, "j0", t0);
        let _ = pass(&mut up, t0, |_| CoreView::default());
        assert!(up.handle_return(&ret("j2", "m1"), t0));
        assert!(up.handle_return(&ret("j0", "m2"), t0));
        assert!(
            !up.handle_return(&ret("unknown", "m3"), t0),
            "not relayed here"
        );
        assert_eq!(up.poll_timeout(), Some(t0 + W), "batched over the window");
        let out = pass(&mut up, t0 + W, |_| CoreView::default());
        type PerLink = Vec<(usize, Vec<(String, Vec<String>)>)>;
        let mut by_link: PerLink = out
            .iter()
            .filter_map(|t| match &t.what {
                What::Returns { load, .. } => Some((t.link, entries(load))),
                _ => None,
            })
            .collect();
        by_link.sort();
        assert_eq!(
            by_link,
            vec![
                (0, vec![("j0".to_owned(), vec!["m2".to_owned()])]),
                (2, vec![("j2".to_owned(), vec!["m1".to_owned()])]),
            ]
        );
        // On their way: a find_job counts them as running.
        assert!(up.find_job("j2").1.contains("m1"));
        let to_2 = out.iter().find(|t| t.link == 2).unwrap().id;
        up.handle_sent(to_2, false);
        let spooled: Vec<Transmit> = std::iter::from_fn(|| up.poll_transmit()).collect();
        assert_eq!(spooled.len(), 1);
        assert_eq!(spooled[0].link, 2, "spooled for the master of the job");
        assert!(matches!(spooled[0].what, What::Spool { .. }));
        assert!(up.find_job("j2").1.is_empty(), "landed in the spool");
        // And the spool hands it back to that master first.
        let masters: Vec<brine_minion_side::MasterAddr> = ["a", "b", "c"]
            .iter()
            .map(|h| brine_minion_side::MasterAddr {
                host: (*h).to_owned(),
                ret_port: 4506,
            })
            .collect();
        let first = super::super::spool_link(&masters, Some("c:4506"));
        assert_eq!(first, 2);
        assert_eq!(
            super::super::failover_order(3, first, false, || 0),
            vec![2, 0, 1]
        );
        assert_eq!(super::super::spool_link(&masters, None), 0);
    }

    /// The old side aborted its flusher at shutdown: a batch already taken out of the outbox
    /// and not yet delivered was lost. Now every return not acknowledged is spooled.
    #[test]
    fn shutdown_spools_every_return_not_acknowledged() {
        let t0 = Instant::now();
        let mut up = Upstream::new("syn", 1, W);
        relay(&mut up, 0, "j", t0);
        up.handle_return(&ret("j", "m1"), t0);
        let out = pass(&mut up, t0 + W, |_| CoreView::default());
        assert!(matches!(out[0].what, What::Returns { .. }), "{out:?}");
        // Under way, never acknowledged; another return waits in the outbox.
        up.handle_return(&ret("j", "m2"), t0 + W);
        assert_eq!(up.undelivered(), 2);
        up.shutdown();
        let spooled: Vec<Vec<(String, Vec<String>)>> = std::iter::from_fn(|| up.poll_transmit())
            .map(|t| match t.what {
                What::Spool { load, .. } => entries(&load),
                other => panic!("only spool writes at shutdown: {other:?}"),
            })
            .collect();
        let mut minions: Vec<String> = spooled.into_iter().flatten().flat_map(|(_, m)| m).collect();
        minions.sort();
        assert_eq!(minions, ["m1", "m2"]);
        assert_eq!(up.undelivered(), 0);
    }

    /// A job seen before (another upper master, or this master's own) is not relayed again;
    /// its link gets an empty report at once.
    #[test]
    fn duplicates_get_an_empty_report() {
        let t0 = Instant::now();
        let mut up = Upstream::new("syn", 2, W);
        relay(&mut up, 0, "j", t0);
        let OnPublish::Duplicate(load) = up.handle_publish(1, &job("j"), false, t0) else {
            panic!()
        };
        assert_eq!(entries(&load), vec![("j".to_owned(), vec![])]);
        assert!(matches!(
            up.handle_publish(0, &job("mine"), true, t0),
            OnPublish::Duplicate(_)
        ));
        let mut fj = job("x");
        fj.fun = Value::str("saltutil.find_job");
        assert_eq!(up.handle_publish(0, &fj, false, t0), OnPublish::FindJob);
    }

    /// Many returns flush before the window ends; past the outbox bound they are spooled.
    #[test]
    fn big_batches_flush_early_and_the_outbox_is_bounded() {
        let t0 = Instant::now();
        let mut up = Upstream::new("syn", 1, W);
        relay(&mut up, 0, "j", t0);
        let _ = pass(&mut up, t0, |_| CoreView::default());
        for n in 0..BATCH_RETURNS {
            up.handle_return(&ret("j", &format!("m{n}")), t0);
        }
        assert_eq!(up.poll_timeout(), Some(t0), "due now");
        for n in BATCH_RETURNS..OUTBOX_MAX {
            up.handle_return(&ret("j", &format!("m{n}")), t0);
        }
        let t: Vec<Transmit> = std::iter::from_fn(|| up.poll_transmit()).collect();
        assert_eq!(t.len(), 1);
        assert!(matches!(t[0].what, What::Spool { .. }));
        assert_eq!(up.undelivered(), 0);
    }
}
