//! The fault suite (issue 17): the HA tier of architecture #5 — two mofm sharing a Redis job
//! cache (a primary, a replica and a Sentinel), three brine syndics connected to both, simulated
//! minions below the syndics — under a steady `brine '*' test.ping` load from both MoMs, while
//! one fault at a time hits a MoM, a syndic or Redis in the middle of jobs.
//!
//! For each fault it counts what users would see:
//! - **lost**: returns a minion's syndic acknowledged that never reached the Redis job cache;
//! - **twice**: returns recorded twice in a MoM's job cache;
//! - **CLI incomplete**: jobs the `brine` CLI reported with a missing minion although every
//!   minion's return was acknowledged;
//! - **whole after**: seconds from the end of the fault until a `test.ping` through each MoM
//!   answers for every minion again.
//!
//! The table is printed, written to `target/faults/reliability.md`, and — with
//! `BRINE_FAULTS_DOC=1` (`scripts/faults.sh`) — into docs/reliability.md. The test fails if any
//! return is lost or recorded twice, or the CLI reports a complete job incomplete.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use brine_test_support::sim::{cached_keys, sim_runtime};
use brine_test_support::topology::{Node, loopback, start_syndic};
use brine_test_support::{
    RedisSentinel, RedisServer, SimMinion, repo_root, subscribe, wait_for, workspace_bin,
};
use serde_json::Value as Json;

/// Simulated minions below each syndic.
const SIMS_PER_SYNDIC: usize = 100;
/// How long a fault lasts before it is healed.
const FAULT: Duration = Duration::from_secs(6);

/// One job the load ran through the CLI.
#[derive(Debug, Clone)]
struct Job {
    jid: String,
    /// Minions the CLI printed `true` for; `None` when it printed no result at all (it lost
    /// the MoM it was talking to).
    cli: Option<BTreeSet<String>>,
}

/// The tier: Redis (primary, replica, Sentinel), two MoMs, three syndics, the simulated minions.
struct Tier {
    root: PathBuf,
    primary: RedisServer,
    replica: RedisServer,
    sentinel: RedisSentinel,
    moms: Vec<Node>,
    syndics: Vec<Node>,
    sims: Vec<SimMinion>,
    ids: Vec<String>,
    ports: (u16, u16),
    _rt: tokio::runtime::Runtime,
    _dir: tempfile::TempDir,
}

fn mofm_conf(
    root: &Path,
    i: usize,
    addr: &str,
    (publish, ret): (u16, u16),
    api: u16,
    sentinel: u16,
) -> String {
    format!(
        "root_dir: {root}\ninterface: {addr}\npublish_port: {publish}\nret_port: {ret}\n\
         rest_cherrypy: {{host: {addr}, port: {api}}}\nauto_accept: True\norder_masters: True\n\
         gather_job_timeout: 3\npki_dir: /mom-pki\ncachedir: /mom-{i}/cache\nmaster_id: mom-{i}\n\
         master_job_cache: redis\nredis.sentinel.service_name: {svc}\n\
         redis.sentinel.nodes: ['127.0.0.1:{sentinel}']\neauth_tokens: rediscluster\n\
         keep_jobs_seconds: 3600\nunique_jid: True\n",
        root = root.display(),
        svc = RedisSentinel::SERVICE,
    )
}

fn free_port_on(addr: &str) -> u16 {
    std::net::TcpListener::bind((addr, 0))
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

impl Tier {
    fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().to_owned();
        let (primary, replica, sentinel) = RedisSentinel::start_replicated();
        let (addrs, publish, ret) = loopback(5);
        let moms: Vec<Node> = (0..2)
            .map(|i| {
                let api = free_port_on(&addrs[i]);
                let n = Node::start(
                    "mofm",
                    &format!("mom-{i}"),
                    &addrs[i],
                    &root.join(format!("mom-{i}/etc")),
                    &[(
                        "master",
                        mofm_conf(&root, i, &addrs[i], (publish, ret), api, sentinel.port),
                    )],
                );
                n.wait_port(api);
                n
            })
            .collect();
        // Each syndic lists both MoMs.
        let moms_list = format!("{}, {}", addrs[0], addrs[1]);
        let syndics: Vec<Node> = (0..3)
            .map(|j| {
                let name = format!("syndic-{j}");
                start_syndic(
                    &root,
                    &name,
                    &name,
                    &addrs[2 + j],
                    &moms_list,
                    (publish, ret),
                )
            })
            .collect();
        assert!(
            wait_for(Duration::from_secs(30), || (0..2).all(|i| (0..3).all(
                |j| root
                    .join(format!("mom-{i}/cache/syndics/syndic-{j}"))
                    .exists()
            ))),
            "the syndics did not register on both MoMs"
        );
        let rt = sim_runtime();
        let ctx = brine_transport::Context::new();
        let n = 3 * SIMS_PER_SYNDIC;
        let keys = cached_keys(n);
        let ids: Vec<String> = (0..n).map(|k| format!("f{k:04}")).collect();
        let sims: Vec<SimMinion> = rt.block_on(async {
            let mut set = Vec::new();
            for (k, id) in ids.iter().enumerate() {
                // Each minion lists the three syndics, starting with its own (Salt's
                // `master_type: failover` with `random_master: False`).
                let masters: Vec<String> = (0..3).map(|o| addrs[2 + (k + o) % 3].clone()).collect();
                let (ctx, id, key) = (ctx.clone(), id.clone(), keys[k].clone());
                set.push(tokio::spawn(async move {
                    SimMinion::start_failover(
                        &ctx,
                        &id,
                        key,
                        &masters,
                        (ret, publish),
                        Duration::from_secs(60),
                    )
                    .await
                    .expect("a simulated minion attaches")
                }));
            }
            let mut out = Vec::new();
            for t in set {
                out.push(t.await.expect("join"));
            }
            out
        });
        let tier = Self {
            root,
            primary,
            replica,
            sentinel,
            moms,
            syndics,
            sims,
            ids,
            ports: (publish, ret),
            _rt: rt,
            _dir: dir,
        };
        assert!(
            tier.whole_within(Duration::from_secs(60)).is_some(),
            "the tier never answered for every minion:\n{}",
            tier.tails()
        );
        tier
    }

    fn tails(&self) -> String {
        self.moms
            .iter()
            .chain(&self.syndics)
            .map(|n| n.log_tail(20))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// How long until a `test.ping` through every MoM answers for every minion, polling; `None`
    /// if not within `limit`.
    fn whole_within(&self, limit: Duration) -> Option<Duration> {
        let t0 = Instant::now();
        let all: BTreeSet<String> = self.ids.iter().cloned().collect();
        let whole = wait_for(limit, || {
            self.moms
                .iter()
                .all(|m| run_job(&m.etc, 5).is_some_and(|j| j.cli.as_ref() == Some(&all)))
        });
        whole.then(|| t0.elapsed())
    }

    /// The port of the Redis primary the Sentinel names now.
    fn redis_primary(&self) -> u16 {
        self.sentinel.primary_port()
    }

    /// The Redis server that is the primary now.
    fn primary_server(&self) -> &RedisServer {
        if self.redis_primary() == self.replica.port {
            &self.replica
        } else {
            &self.primary
        }
    }

    /// Minion ids in `ret:<jid>` on the Redis primary.
    fn redis_returns(&self, jid: &str) -> BTreeSet<String> {
        self.primary_server()
            .cli(&["HKEYS", &format!("ret:{jid}")])
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect()
    }

    /// Returns recorded more than once for `jid`, summed over the MoMs' job caches.
    fn recorded_twice(&self, jid: &str) -> usize {
        (0..self.moms.len())
            .map(|i| {
                let p = self
                    .root
                    .join(format!("mom-{i}/cache/brine/jobs/{jid}/returns.jsonl"));
                let text = std::fs::read_to_string(p).unwrap_or_default();
                let mut seen = BTreeSet::new();
                text.lines()
                    .filter_map(|l| {
                        serde_json::from_str::<Json>(l)
                            .ok()?
                            .get("id")?
                            .as_str()
                            .map(str::to_owned)
                    })
                    .filter(|id| !seen.insert(id.clone()))
                    .count()
            })
            .sum()
    }

    /// Every acknowledged return, by jid (a minion twice if acknowledged twice).
    fn acked(&self) -> BTreeMap<String, Vec<String>> {
        let mut by_jid: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for s in &self.sims {
            for jid in s.acked_jids() {
                by_jid.entry(jid).or_default().push(s.id.clone());
            }
        }
        by_jid
    }
}

/// `brine -c etc --show-jid --out json --static -t T '*' test.ping`, bounded by `timeout`;
/// `None` when no job was published (the MoM is down or frozen).
fn run_job(etc: &Path, t: u64) -> Option<Job> {
    let out = Command::new("timeout")
        .arg((t + 20).to_string())
        .arg(workspace_bin("brine"))
        .arg("-c")
        .arg(etc)
        .args(["--show-jid", "--out", "json", "--static", "-t"])
        .arg(t.to_string())
        .args(["*", "test.ping"])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let (first, rest) = text.split_once('\n')?;
    let jid = first.strip_prefix("jid: ")?.trim().to_owned();
    let v: Json = serde_json::from_str(rest).unwrap_or(Json::Null);
    let cli = v.as_object().map(|m| {
        m.iter()
            .filter(|(_, r)| **r == Json::Bool(true))
            .map(|(id, _)| id.clone())
            .collect()
    });
    Some(Job { jid, cli })
}

/// A steady load: jobs through each MoM in turn, one after the other, until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    jobs: Arc<Mutex<Vec<Job>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(moms: &[Node]) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let jobs = Arc::new(Mutex::new(Vec::new()));
        let threads = moms
            .iter()
            .map(|m| {
                let (etc, stop, jobs) = (m.etc.clone(), stop.clone(), jobs.clone());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        match run_job(&etc, 8) {
                            Some(j) => jobs.lock().expect("jobs").push(j),
                            None => std::thread::sleep(Duration::from_millis(300)),
                        }
                        std::thread::sleep(Duration::from_millis(200));
                    }
                })
            })
            .collect();
        Self {
            stop,
            jobs,
            threads,
        }
    }

    fn finish(self) -> Vec<Job> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
        std::mem::take(&mut *self.jobs.lock().expect("jobs"))
    }
}

/// One row of the table.
#[derive(Debug)]
struct Row {
    fault: String,
    jobs: usize,
    returns: usize,
    lost: usize,
    twice: usize,
    cli_incomplete: usize,
    /// Jobs whose CLI printed no result: the MoM it talked to died under it.
    cli_cut_off: usize,
    whole_after: Option<Duration>,
}

/// What a fault does and how it is healed.
enum Fault {
    Kill9Mom(usize),
    StopMom(usize),
    StopSyndic(usize),
    Kill9Syndic(usize),
    StopRedis,
    /// kill -9 of the primary on this port.
    FailoverRedis(u16),
}

impl Fault {
    fn name(&self) -> String {
        match self {
            Self::Kill9Mom(i) => format!("kill -9 mom-{i}, restarted after {}s", FAULT.as_secs()),
            Self::StopMom(i) => format!("SIGSTOP mom-{i} for {}s", FAULT.as_secs()),
            Self::StopSyndic(j) => format!("SIGSTOP syndic-{j} for {}s", FAULT.as_secs()),
            Self::Kill9Syndic(j) => format!(
                "kill -9 syndic-{j} (its minions fail over), restarted after {}s",
                FAULT.as_secs()
            ),
            Self::StopRedis => format!(
                "SIGSTOP the Redis primary for {}s (Sentinel fails over)",
                FAULT.as_secs()
            ),
            Self::FailoverRedis(_) => {
                "kill -9 the Redis primary (Sentinel failover; it is restarted as a replica)"
                    .to_owned()
            }
        }
    }

    fn inject(&mut self, t: &mut Tier) {
        match self {
            Self::Kill9Mom(i) => t.moms[*i].kill9(),
            Self::StopMom(i) => t.moms[*i].signal("-STOP"),
            Self::StopSyndic(j) => t.syndics[*j].signal("-STOP"),
            Self::Kill9Syndic(j) => t.syndics[*j].kill9(),
            Self::StopRedis => t.primary_server().freeze(),
            Self::FailoverRedis(killed) => {
                let port = t.redis_primary();
                *killed = port;
                if port == t.primary.port {
                    t.primary.stop();
                } else {
                    t.replica.stop();
                }
            }
        }
    }

    fn heal(&self, t: &mut Tier) {
        match self {
            Self::Kill9Mom(i) => {
                t.moms[*i].spawn();
                t.moms[*i].wait_port(t.ports.1);
            }
            Self::StopMom(i) => t.moms[*i].signal("-CONT"),
            Self::StopSyndic(j) => t.syndics[*j].signal("-CONT"),
            Self::Kill9Syndic(j) => {
                t.syndics[*j].spawn();
                t.syndics[*j].wait_port(t.ports.1);
            }
            Self::StopRedis => {
                t.primary.thaw();
                t.replica.thaw();
            }
            Self::FailoverRedis(killed) => {
                assert!(
                    wait_for(Duration::from_secs(30), || t.redis_primary() != *killed),
                    "no failover: {}",
                    t.sentinel.log()
                );
                if *killed == t.primary.port {
                    t.primary.spawn();
                } else {
                    t.replica.spawn();
                }
            }
        }
    }
}

fn measure(t: &mut Tier, fault: &mut Fault) -> Row {
    let load = Load::start(&t.moms);
    std::thread::sleep(Duration::from_secs(3));
    fault.inject(t);
    std::thread::sleep(FAULT);
    fault.heal(t);
    let whole_after = t.whole_within(Duration::from_secs(90));
    std::thread::sleep(Duration::from_secs(2));
    let jobs = load.finish();
    // Let the job cache settle (the journal is replayed within seconds).
    let acked = t.acked();
    let lost = |t: &Tier| -> usize {
        jobs.iter()
            .map(|j| {
                let stored = t.redis_returns(&j.jid);
                acked.get(&j.jid).map_or(0, |ids| {
                    ids.iter().filter(|id| !stored.contains(*id)).count()
                })
            })
            .sum()
    };
    wait_for(Duration::from_secs(30), || lost(t) == 0);
    let all: BTreeSet<String> = t.ids.iter().cloned().collect();
    for j in &jobs {
        let Some(cli) = &j.cli else {
            eprintln!("{}: the CLI of {} printed no result", fault.name(), j.jid);
            continue;
        };
        let missing: Vec<&String> = all.difference(cli).collect();
        if !missing.is_empty() {
            eprintln!(
                "{}: the CLI missed {} minions of {} ({:?}...)",
                fault.name(),
                missing.len(),
                j.jid,
                &missing[..missing.len().min(3)]
            );
            if std::env::var_os("BRINE_FAULTS_TRACE").is_some() {
                for n in t.moms.iter().chain(&t.syndics) {
                    for l in n.log().lines().filter(|l| l.contains(&j.jid)) {
                        eprintln!("  {}: {l}", n.name);
                    }
                }
            }
        }
    }
    let cli_incomplete = jobs
        .iter()
        .filter(|j| {
            let returned: BTreeSet<String> = acked
                .get(&j.jid)
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .collect();
            returned == all && j.cli.as_ref().is_some_and(|c| *c != all)
        })
        .count();
    let cli_cut_off = jobs.iter().filter(|j| j.cli.is_none()).count();
    Row {
        fault: fault.name(),
        jobs: jobs.len(),
        returns: jobs
            .iter()
            .map(|j| acked.get(&j.jid).map_or(0, Vec::len))
            .sum(),
        lost: lost(t),
        twice: jobs.iter().map(|j| t.recorded_twice(&j.jid)).sum(),
        cli_incomplete,
        cli_cut_off,
        whole_after,
    }
}

fn table(rows: &[Row], minions: usize) -> String {
    let mut s = format!(
        "Two mofm (Redis job cache through a Sentinel, shared tokens), three brine syndics, \
         {minions} simulated minions, `brine '*' test.ping` from both MoMs in a loop.\n\n\
         | fault | jobs | returns | lost | recorded twice | CLI incomplete | CLI cut off | whole again after |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|\n"
    );
    for r in rows {
        s += &format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |\n",
            r.fault,
            r.jobs,
            r.returns,
            r.lost,
            r.twice,
            r.cli_incomplete,
            r.cli_cut_off,
            r.whole_after.map_or_else(
                || "not within 90 s".to_owned(),
                |d| format!("{:.1} s", d.as_secs_f64())
            )
        );
    }
    s
}

#[test]
fn fault_table() {
    subscribe();
    let mut t = Tier::start();
    let mut faults = [
        Fault::Kill9Mom(0),
        Fault::StopMom(1),
        Fault::StopSyndic(0),
        Fault::Kill9Syndic(1),
        Fault::StopRedis,
        Fault::FailoverRedis(0),
    ];
    let mut rows = Vec::new();
    // BRINE_FAULTS_ONLY=<text>: only the faults whose name contains it.
    let only = std::env::var("BRINE_FAULTS_ONLY").unwrap_or_default();
    for f in faults.iter_mut().filter(|f| f.name().contains(&only)) {
        let row = measure(&mut t, f);
        eprintln!("{row:?}");
        rows.push(row);
    }
    let text = table(&rows, t.ids.len());
    println!("{text}");
    let out = repo_root().join("target/faults");
    let _ = std::fs::create_dir_all(&out);
    let _ = std::fs::write(out.join("reliability.md"), &text);
    if std::env::var_os("BRINE_FAULTS_DOC").is_some() {
        let doc = repo_root().join("docs/reliability.md");
        let old = std::fs::read_to_string(&doc).unwrap_or_default();
        let (begin, end) = ("<!-- fault table -->\n", "<!-- end of fault table -->\n");
        let new = match (old.find(begin), old.find(end)) {
            (Some(a), Some(b)) if a < b => {
                format!("{}{begin}{text}{}", &old[..a], &old[b..])
            }
            _ => format!("{old}\n{begin}{text}{end}"),
        };
        std::fs::write(&doc, new).expect("write docs/reliability.md");
    }
    for r in &rows {
        assert!(r.jobs > 0, "{}: no job ran", r.fault);
        assert_eq!(
            r.lost,
            0,
            "{}: returns lost\n{text}\n{}",
            r.fault,
            t.tails()
        );
        assert_eq!(r.twice, 0, "{}: returns recorded twice\n{text}", r.fault);
        assert_eq!(
            r.cli_incomplete,
            0,
            "{}: the CLI reported complete jobs incomplete\n{text}\n{}",
            r.fault,
            t.tails()
        );
        assert!(
            r.whole_after.is_some(),
            "{}: the tier did not recover\n{text}",
            r.fault
        );
    }
}
