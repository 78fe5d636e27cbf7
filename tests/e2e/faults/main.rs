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
//! The load runs `brine -c <mom etc>` on each MoM and `brine --url` through real nginx with
//! the shipped API tier site (`deploy/nginx/brine-api.conf`) in front of both MoMs.
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
use brine_test_support::topology::{Node, start_syndic_on};
use brine_test_support::{
    Lan, LanHost, Nginx, RedisSentinel, RedisServer, SaltMinion, SaltPeer, SimMinion, free_port,
    repo_root, subscribe, wait_for, workspace_bin,
};
use serde_json::Value as Json;

/// Simulated minions in all (spread over the three syndics); `BRINE_FAULTS_MINIONS` overrides.
const MINIONS: usize = 300;
/// Real salt-minions (3007) in the mix, failing over between the syndics as the simulated ones
/// (`BRINE_FAULTS_REAL` overrides).
const REAL_MINIONS: usize = 3;
/// A real salt-minion whose log (debug level: a live one logs at least every 5 s, its master
/// check) has been silent this long has wedged: a salt-minion 3007's main process sometimes
/// stops for good under this load (docs/reliability.md). The suite dumps its stacks and
/// restarts it, as a supervisor would, and the table says so.
const WEDGED: Duration = Duration::from_secs(30);
/// How long a fault lasts before it is healed.
const FAULT: Duration = Duration::from_secs(6);
/// How long a partition lasts: long enough for the minions of a partitioned syndic to notice
/// (a silent master is left after three unanswered probes of 3 s, 2 s apart: 9–11 s) and fail
/// over.
const PARTITION: Duration = Duration::from_secs(15);

/// One job the load ran through the CLI.
#[derive(Debug, Clone)]
struct Job {
    jid: String,
    /// Minions the CLI printed `true` for; `None` when it printed no result at all (it lost
    /// the MoM it was talking to).
    cli: Option<BTreeSet<String>>,
    /// The end of what the CLI wrote to stderr (why it printed no result).
    stderr: String,
}

/// The tier: Redis (primary, replica, Sentinel), two MoMs, three syndics, the simulated minions.
/// Every daemon but the Sentinel runs on a host of its own on a test LAN (a network namespace
/// on a bridge), so any of them can be partitioned; the minions, the Sentinel and the CLI run
/// here and reach them through the bridge.
struct Tier {
    root: PathBuf,
    primary: RedisServer,
    replica: RedisServer,
    sentinel: RedisSentinel,
    moms: Vec<Node>,
    syndics: Vec<Node>,
    sims: Vec<SimMinion>,
    /// nginx in front of both MoMs' APIs, and a token it gave (`brine --url` load).
    nginx: Nginx,
    api: (String, String),
    /// Real salt-minions (`master_type: failover` over the three syndics).
    real: Vec<SaltMinion>,
    /// Real salt-minions found wedged and restarted so far (ids, in order).
    revived: Vec<String>,
    /// Every minion id, simulated and real.
    ids: Vec<String>,
    ports: (u16, u16),
    _rt: tokio::runtime::Runtime,
    _dir: tempfile::TempDir,
    /// Hosts: 0 and 1 Redis, 2 and 3 the MoMs, 4 to 6 the syndics (dropped after the daemons).
    hosts: Vec<LanHost>,
    _lan: Lan,
}

fn mofm_conf(
    root: &Path,
    i: usize,
    addr: &str,
    (publish, ret): (u16, u16),
    api: u16,
    sentinel: &str,
) -> String {
    format!(
        "root_dir: {root}\ninterface: {addr}\npublish_port: {publish}\nret_port: {ret}\n\
         rest_cherrypy: {{host: {addr}, port: {api}}}\nauto_accept: True\norder_masters: True\n\
         external_auth: {{file: {{^filename: {root}/users, loader: ['test.*', '@jobs']}}}}\n\
         gather_job_timeout: 3\npki_dir: /mom-pki\ncachedir: /mom-{i}/cache\nmaster_id: mom-{i}\n\
         master_job_cache: redis\nredis.sentinel.service_name: {svc}\n\
         redis.sentinel.nodes: ['{sentinel}']\neauth_tokens: rediscluster\n\
         keep_jobs_seconds: 3600\nunique_jid: True\n",
        root = root.display(),
        svc = RedisSentinel::SERVICE,
    )
}

impl Tier {
    fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().to_owned();
        let lan = Lan::create();
        let hosts: Vec<LanHost> = (0..7).map(|i| lan.host(i)).collect();
        let (primary, replica, sentinel) =
            RedisSentinel::start_replicated_on(Some((&hosts[0], &hosts[1], &lan.gateway)));
        let sentinel_addr = format!("{}:{}", lan.gateway, sentinel.port);
        let (publish, ret) = (free_port(), free_port());
        std::fs::write(
            root.join("users"),
            format!(
                "loader:{}\n",
                brine_master_core::eauth::hash_password(LOADER_PASSWORD).expect("hash")
            ),
        )
        .expect("write users");
        let apis = [free_port(), free_port()];
        let moms: Vec<Node> = (0..2)
            .map(|i| {
                let h = &hosts[2 + i];
                let api = apis[i];
                let n = Node::start_on(
                    Some(h),
                    "mofm",
                    &format!("mom-{i}"),
                    &h.addr,
                    &root.join(format!("mom-{i}/etc")),
                    &[(
                        "master",
                        mofm_conf(&root, i, &h.addr, (publish, ret), api, &sentinel_addr),
                    )],
                );
                n.wait_port(api);
                n
            })
            .collect();
        // Each syndic lists both MoMs.
        let moms_list = format!("{}, {}", hosts[2].addr, hosts[3].addr);
        let syndics: Vec<Node> = (0..3)
            .map(|j| {
                let name = format!("syndic-{j}");
                let h = &hosts[4 + j];
                // Masters a failover minion moves between share one master key pair (as Salt
                // requires: a minion keeps the master's public key it first trusted and
                // refuses another). syndic-0 made it; the others start with a copy.
                if j > 0 {
                    let (from, to) = (root.join("syndic-0/pki"), root.join(format!("{name}/pki")));
                    std::fs::create_dir_all(&to).expect("mkdir syndic pki");
                    for f in ["master.pem", "master.pub"] {
                        std::fs::copy(from.join(f), to.join(f)).expect("copy the master key");
                    }
                }
                start_syndic_on(
                    Some(h),
                    &root,
                    &name,
                    &name,
                    &h.addr,
                    &moms_list,
                    (publish, ret),
                    "",
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
        let n = std::env::var("BRINE_FAULTS_MINIONS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(MINIONS);
        let keys = cached_keys(n);
        let ids: Vec<String> = (0..n).map(|k| format!("f{k:04}")).collect();
        let sims: Vec<SimMinion> = rt.block_on(async {
            let mut set = Vec::new();
            for (k, id) in ids.iter().enumerate() {
                // Each minion lists the three syndics, starting with its own (Salt's
                // `master_type: failover` with `random_master: False`).
                let masters: Vec<String> = (0..3)
                    .map(|o| hosts[4 + (k + o) % 3].addr.clone())
                    .collect();
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
        // Real salt-minions, each listing the three syndics from a different one.
        let n_real = std::env::var("BRINE_FAULTS_REAL")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(REAL_MINIONS);
        let peer = (n_real > 0).then(|| SaltPeer::get("3007.17"));
        let real: Vec<SaltMinion> = (0..n_real)
            .map(|k| {
                let list: Vec<&str> = (0..3)
                    .map(|o| hosts[4 + (k + o) % 3].addr.as_str())
                    .collect();
                SaltMinion::start_failover(
                    peer.as_ref().expect("peer"),
                    &format!("real-{k}"),
                    &list,
                    (publish, ret),
                )
            })
            .collect();
        let mut ids = ids;
        ids.extend(real.iter().map(|m| m.id.clone()));
        // The API tier: nginx here, in front of both MoMs' APIs on the LAN.
        let port = free_port();
        let upstreams = [0, 1].map(|i| format!("{}:{}", hosts[2 + i].addr, apis[i]));
        let nginx = Nginx::start(
            &Nginx::api_tier_site([upstreams[0].as_str(), upstreams[1].as_str()], port),
            port,
        );
        let url = format!("http://127.0.0.1:{port}");
        let token = login(port);
        let mut tier = Self {
            root,
            primary,
            replica,
            sentinel,
            moms,
            syndics,
            sims,
            nginx,
            api: (url, token),
            real,
            revived: Vec::new(),
            ids,
            ports: (publish, ret),
            _rt: rt,
            _dir: dir,
            hosts,
            _lan: lan,
        };
        assert!(
            tier.whole_within(Duration::from_secs(150)).is_some(),
            "the tier never answered for every minion:\n{}\n{}\n{}",
            tier.routes_report(),
            tier.tails(),
            tier.real
                .iter()
                .map(|m| m.log_tail(20))
                .collect::<Vec<_>>()
                .join("\n")
        );
        tier
    }

    /// Copy the daemons' logs to `target/faults/logs` (kept for a failed run, or with
    /// `BRINE_FAULTS_KEEP=1`).
    fn save_logs(&self) {
        let out = repo_root().join("target/faults/logs");
        let _ = std::fs::remove_dir_all(&out);
        let _ = std::fs::create_dir_all(&out);
        for d in std::fs::read_dir(&self.root)
            .into_iter()
            .flatten()
            .flatten()
        {
            for f in std::fs::read_dir(d.path()).into_iter().flatten().flatten() {
                let name = f.file_name().to_string_lossy().into_owned();
                if name.contains(".log") {
                    let _ = std::fs::copy(f.path(), out.join(&name));
                }
            }
        }
        for m in &self.real {
            let _ = std::fs::write(out.join(format!("{}.log", m.id)), m.log());
        }
        let _ = std::fs::write(out.join("nginx-error.log"), self.nginx.error_log());
    }

    /// The CLI's arguments for each way the load reaches the MoMs: `-c` each MoM's
    /// configuration, and `--url` through nginx.
    fn cli_routes(&self) -> Vec<Vec<String>> {
        let mut routes: Vec<Vec<String>> = self
            .moms
            .iter()
            .map(|m| vec!["-c".to_owned(), m.etc.display().to_string()])
            .collect();
        routes.push(vec![
            "--url".to_owned(),
            self.api.0.clone(),
            "--token".to_owned(),
            self.api.1.clone(),
        ]);
        routes
    }

    fn tails(&self) -> String {
        self.moms
            .iter()
            .chain(&self.syndics)
            .map(|n| n.log_tail(20))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// One `test.ping` by each route of [`Self::cli_routes`]: what it answered (for failures).
    fn routes_report(&self) -> String {
        let all: BTreeSet<String> = self.ids.iter().cloned().collect();
        self.cli_routes()
            .iter()
            .map(|r| {
                let what = match run_job(r, 5) {
                    None => "no job published".to_owned(),
                    Some(Job {
                        jid,
                        cli: None,
                        stderr,
                    }) => format!("{jid}: no result ({stderr})"),
                    Some(Job {
                        jid,
                        cli: Some(cli),
                        stderr,
                    }) => format!(
                        "{jid}: {} of {} answered, missing {:?} ({stderr})",
                        cli.len(),
                        all.len(),
                        all.difference(&cli).take(5).collect::<Vec<_>>()
                    ),
                };
                format!("{}: {what}", r.join(" "))
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Restart the real salt-minions that wedged (their log silent for [`WEDGED`]), after
    /// saving their stacks (`py-spy dump`) and log tails to `target/faults/logs`.
    fn revive_wedged(&mut self) {
        let out = repo_root().join("target/faults/logs");
        for m in &mut self.real {
            let silent = m.log_silent_for();
            if silent < WEDGED {
                continue;
            }
            let n = self.revived.len();
            let report = format!(
                "{} wrote no log line for {:.0} s; its stacks:\n{}\n\nits log:\n{}\n",
                m.id,
                silent.as_secs_f64(),
                m.stacks(),
                m.log_tail(60)
            );
            let _ = std::fs::create_dir_all(&out);
            let file = out.join(format!("{}-wedged-{n}.txt", m.id));
            let _ = std::fs::write(&file, &report);
            eprintln!(
                "{} wedged (no log line for {:.0} s): restarting it; stacks in {}",
                m.id,
                silent.as_secs_f64(),
                file.display()
            );
            m.restart();
            self.revived.push(m.id.clone());
        }
    }

    /// How long until a `test.ping` through every MoM answers for every minion, polling; `None`
    /// if not within `limit`. A wedged real salt-minion is restarted on the way.
    fn whole_within(&mut self, limit: Duration) -> Option<Duration> {
        let t0 = Instant::now();
        let all: BTreeSet<String> = self.ids.iter().cloned().collect();
        // One job through every route at once: whole when each answers for every minion.
        let whole = wait_for(limit, || {
            self.revive_wedged();
            let routes = self.cli_routes();
            std::thread::scope(|s| {
                let runs: Vec<_> = routes
                    .iter()
                    .map(|r| {
                        s.spawn(|| run_job(r, 5).is_some_and(|j| j.cli.as_ref() == Some(&all)))
                    })
                    .collect();
                runs.into_iter().all(|h| h.join().unwrap_or(false))
            })
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

    /// Every acknowledged return, by jid (a minion twice if acknowledged twice). A simulated
    /// minion counts the acknowledgements it got; a real salt-minion's return counts as
    /// acknowledged once a syndic stored it in its job cache (it acknowledges after that).
    fn acked(&self, jids: &[&str]) -> BTreeMap<String, Vec<String>> {
        let mut by_jid: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for s in &self.sims {
            for jid in s.acked_jids() {
                by_jid.entry(jid).or_default().push(s.id.clone());
            }
        }
        for jid in jids {
            let mut stored = BTreeSet::new();
            for j in 0..self.syndics.len() {
                let p = self
                    .root
                    .join(format!("syndic-{j}/cache/brine/jobs/{jid}/returns.jsonl"));
                for l in std::fs::read_to_string(p).unwrap_or_default().lines() {
                    if let Some(id) = serde_json::from_str::<Json>(l)
                        .ok()
                        .and_then(|v| v.get("id")?.as_str().map(str::to_owned))
                        && self.real.iter().any(|m| m.id == id)
                    {
                        stored.insert(id);
                    }
                }
            }
            by_jid.entry((*jid).to_owned()).or_default().extend(stored);
        }
        by_jid
    }
}

/// The password of the API user the load logs in as through nginx.
const LOADER_PASSWORD: &str = "fault-load";

/// Log in through nginx at `127.0.0.1:port` (eauth `file`); the token.
fn login(port: u16) -> String {
    use std::io::{Read as _, Write as _};
    let body =
        serde_json::json!({"username": "loader", "password": LOADER_PASSWORD, "eauth": "file"})
            .to_string();
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect to nginx");
    write!(
        s,
        "POST /login HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("send the login");
    let mut raw = String::new();
    s.read_to_string(&mut raw).expect("read the login's answer");
    let v: Json = raw
        .split_once("\r\n\r\n")
        .and_then(|(_, b)| serde_json::from_str(b).ok())
        .unwrap_or(Json::Null);
    v["return"][0]["token"]
        .as_str()
        .unwrap_or_else(|| panic!("no token from the login through nginx: {raw}"))
        .to_owned()
}

/// `brine <route> --show-jid --out json --static -t T '*' test.ping`, bounded by `timeout`;
/// `None` when no job was published (the MoM is down or frozen).
fn run_job(route: &[String], t: u64) -> Option<Job> {
    let out = Command::new("timeout")
        .arg((t + 40).to_string())
        .arg(workspace_bin("brine"))
        .args(route)
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
    let err = String::from_utf8_lossy(&out.stderr);
    let stderr = err.lines().rev().take(3).collect::<Vec<_>>().join(" / ");
    Some(Job { jid, cli, stderr })
}

/// A steady load: jobs through each MoM in turn, one after the other, until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    jobs: Arc<Mutex<Vec<Job>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(routes: Vec<Vec<String>>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let jobs = Arc::new(Mutex::new(Vec::new()));
        let threads = routes
            .into_iter()
            .map(|route| {
                let (stop, jobs) = (stop.clone(), jobs.clone());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        match run_job(&route, 8) {
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
    /// The fault outlasts a job's wait ([`Fault::outlasts_jobs`]).
    partition: bool,
    /// Real salt-minions found wedged and restarted while the row ran.
    revived: Vec<String>,
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
    /// Primary and replica both frozen: no Redis at all.
    StopAllRedis,
    PartitionMom(usize),
    PartitionSyndic(usize),
    /// The Redis primary's host (index into the hosts) cut off from the LAN.
    PartitionRedis(usize),
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
            Self::StopAllRedis => format!(
                "SIGSTOP both Redis servers for {}s (no Redis at all)",
                FAULT.as_secs()
            ),
            Self::PartitionMom(i) => {
                format!(
                    "partition mom-{i} from the LAN for {}s",
                    PARTITION.as_secs()
                )
            }
            Self::PartitionSyndic(j) => format!(
                "partition syndic-{j} from the LAN for {}s (its minions fail over)",
                PARTITION.as_secs()
            ),
            Self::PartitionRedis(_) => format!(
                "partition the Redis primary from the LAN for {}s (Sentinel fails over)",
                PARTITION.as_secs()
            ),
        }
    }

    /// Whether the fault cuts a daemon off from the others for longer than a job's wait (the
    /// CLI's `-t 8` plus `gather_job_timeout`): returns held behind the partition reach the job
    /// cache after the CLI printed, so the CLI may report such a job incomplete. Counted in the
    /// table, not failed on; lost returns and returns recorded twice still fail it.
    fn outlasts_jobs(&self) -> bool {
        matches!(self, Self::PartitionMom(_) | Self::PartitionSyndic(_))
    }

    /// How long the fault lasts before it is healed.
    fn duration(&self) -> Duration {
        match self {
            Self::PartitionMom(_) | Self::PartitionSyndic(_) | Self::PartitionRedis(_) => PARTITION,
            _ => FAULT,
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
            Self::StopAllRedis => {
                t.primary.freeze();
                t.replica.freeze();
            }
            Self::PartitionMom(i) => t.hosts[2 + *i].partition(),
            Self::PartitionSyndic(j) => t.hosts[4 + *j].partition(),
            Self::PartitionRedis(h) => {
                *h = usize::from(t.redis_primary() != t.primary.port);
                t.hosts[*h].partition();
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
            Self::StopRedis | Self::StopAllRedis => {
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
            Self::PartitionMom(i) => t.hosts[2 + *i].heal(),
            Self::PartitionSyndic(j) => t.hosts[4 + *j].heal(),
            Self::PartitionRedis(h) => t.hosts[*h].heal(),
        }
    }
}

fn measure(t: &mut Tier, fault: &mut Fault) -> Row {
    let revived_before = t.revived.len();
    let load = Load::start(t.cli_routes());
    std::thread::sleep(Duration::from_secs(3));
    fault.inject(t);
    std::thread::sleep(fault.duration());
    fault.heal(t);
    let whole_after = t.whole_within(Duration::from_secs(90));
    std::thread::sleep(Duration::from_secs(2));
    let jobs = load.finish();
    // Let the job cache settle (the journal is replayed within seconds).
    let acked = t.acked(&jobs.iter().map(|j| j.jid.as_str()).collect::<Vec<_>>());
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
            eprintln!(
                "{}: the CLI of {} printed no result ({})",
                fault.name(),
                j.jid,
                j.stderr
            );
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
    // A job is complete when every simulated minion's return was acknowledged; a real
    // salt-minion (whose acknowledgements the test cannot see) counts as returned when a
    // syndic stored its return. Complete jobs the CLI printed with a minion missing are
    // counted.
    let sims: BTreeSet<String> = t.sims.iter().map(|m| m.id.clone()).collect();
    let cli_incomplete = jobs
        .iter()
        .filter(|j| {
            let Some(cli) = &j.cli else {
                return false;
            };
            let returned: BTreeSet<String> = acked
                .get(&j.jid)
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .collect();
            sims.is_subset(&returned) && !returned.is_subset(cli)
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
        partition: fault.outlasts_jobs(),
        revived: t.revived[revived_before..].to_vec(),
    }
}

fn table(rows: &[Row], minions: usize, real: usize) -> String {
    let real = if real > 0 {
        format!(" and {real} real salt-minions 3007")
    } else {
        String::new()
    };
    let mut s = format!(
        "Two mofm (Redis job cache through a Sentinel, shared tokens), three brine syndics, \
         {minions} simulated minions{real} failing over between the syndics (each daemon \
         on a host of its own: a network namespace on a bridge), \
         `brine '*' test.ping` in a loop from each MoM and through nginx in front of both \
         (`deploy/nginx/brine-api.conf`).\n\n\
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
            if r.partition && r.cli_incomplete > 0 {
                format!("{} ¹", r.cli_incomplete)
            } else {
                r.cli_incomplete.to_string()
            },
            r.cli_cut_off,
            r.whole_after.map_or_else(
                || "not within 90 s".to_owned(),
                |d| format!(
                    "{:.1} s{}",
                    d.as_secs_f64(),
                    if r.revived.is_empty() { "" } else { " ²" }
                )
            )
        );
    }
    if rows.iter().any(|r| r.partition && r.cli_incomplete > 0) {
        s += "\n¹ The partition outlasts the job's wait (the CLI's `-t 8` plus \
              `gather_job_timeout: 3`): returns held behind it reach the job cache (none is \
              lost) after the CLI printed the job. `brine-run jobs.lookup_jid` shows them.\n";
    }
    for r in rows.iter().filter(|r| !r.revived.is_empty()) {
        s += &format!(
            "\n² {}: the main process of {} stopped (no log line for {} s, no answer) and was \
             restarted by the suite, as a supervisor would; the time includes that wait. \
             That is salt-minion 3007, not the tier (docs/reliability.md).\n",
            r.fault,
            r.revived.join(", "),
            WEDGED.as_secs()
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
        Fault::StopAllRedis,
        Fault::PartitionMom(0),
        Fault::PartitionSyndic(2),
        Fault::PartitionRedis(0),
    ];
    let mut rows = Vec::new();
    // BRINE_FAULTS_ONLY=<text>: only the faults whose name contains it.
    let only = std::env::var("BRINE_FAULTS_ONLY").unwrap_or_default();
    for f in faults.iter_mut().filter(|f| f.name().contains(&only)) {
        let row = measure(&mut t, f);
        eprintln!("{row:?}");
        rows.push(row);
    }
    let text = table(&rows, t.sims.len(), t.real.len());
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
    let failed = rows.iter().any(|r| {
        r.jobs == 0
            || r.lost > 0
            || r.twice > 0
            || (r.cli_incomplete > 0 && !r.partition)
            || r.whole_after.is_none()
    });
    if failed || std::env::var_os("BRINE_FAULTS_KEEP").is_some() {
        t.save_logs();
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
        assert!(
            r.cli_incomplete == 0 || r.partition,
            "{}: the CLI reported complete jobs incomplete\n{text}\n{}",
            r.fault,
            t.tails()
        );
        assert!(
            r.whole_after.is_some(),
            "{}: the tier did not recover\n{text}\n{}",
            r.fault,
            t.routes_report()
        );
    }
}
