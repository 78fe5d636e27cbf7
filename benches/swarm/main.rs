//! `brine-swarm`: N simulated minions over the real protocol against any master (brine `mofm`,
//! a brine `syndic`, or a real `salt-master`), to measure what the master costs.
//!
//! Each simulated minion has its own id, its own cached RSA key (`~/.cache/brine/swarm-keys`),
//! its own request and publish connections; it authenticates (the minions of one process share
//! what they learnt of the master: its parsed public key, and the AES key with the `sig` that
//! vouched for it, so only the first decrypts `aes` — `brine_proto::auth::KnownMaster`; each
//! still decrypts its own session key and checks the reply's signature), decrypts and verifies
//! every publish, matches targets (glob, list, pcre, grains `os:Debian`...), answers `test.ping`,
//! `test.echo`, `test.sleep`, `saltutil.find_job`, and records publish-to-return latency: from
//! the job's jid (the master's publish time, to the microsecond) to the master's reply to the
//! return.
//!
//! Minions are spread over processes of `--per-proc` each (a process may hold 20,000 files),
//! and each process connects from its own source address (`--src`, then the next ones: a
//! (source, destination) pair has ~28k ephemeral ports).
//!
//! Phases: every minion authenticates at once (no pacing), then for each round each
//! `--publish` command runs (e.g. `brine -c DIR '*' test.ping`, `salt '*' test.ping`) and the
//! swarm waits until every minion's return was acknowledged. Printed: auth storm wall time and
//! failures, per command the CLI's wall time, completion (all returns acknowledged), p50/p99/max
//! latency, missing returns; the master processes' CPU seconds, RSS and PSS (`--pids`, each
//! with its children), and the swarm's own CPU.
//!
//! `brine-swarm --master 127.0.0.1:4506 -n 1000 --pids $(pgrep -o mofm) \
//!     --publish "brine -c /etc/salt '*' test.ping --out quiet" --rounds 3 [--json]`

#![forbid(unsafe_code)]

mod measure;
mod minion;

use measure::{Latencies, ceiling, cli_returned, head, net_counters, pct, sample};
use minion::minion;

use std::collections::HashMap;
use std::io::{BufRead as _, Write as _};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use brine_proto::Value;
use brine_proto::auth::{KnownMaster, MinionAuthConfig, MinionIdentity, MinionSession};
use brine_proto::feed::{Feed, PublishDecoder};
use brine_proto::jid::iso_stamp;
use brine_proto::loads::ReturnLoad;
use brine_test_support::sim::{Rng, authenticate_with, cached_key, cached_keys};
use brine_test_support::{cpu_ticks_tree, proc_tree, rss_tree_kb};
use brine_transport::{Context, ReqClient, SocketOptions, Subscriber};
use clap::Parser;
use serde_json::{Value as Json, json};

/// N simulated Salt minions against one master.
#[derive(Debug, Parser)]
#[command(name = "brine-swarm")]
struct Args {
    /// A master's request (ret) address, `host:port`, or `host:ret:publish`; repeatable (e.g.
    /// the syndics of a tier): the minions are split evenly over them, in blocks.
    #[arg(long, required_unless_present = "ceiling")]
    master: Vec<String>,
    /// The publish port of a master given as `host:port` (default: the ret port minus one).
    #[arg(long)]
    publish_port: Option<u16>,
    /// Simulated minions.
    #[arg(short = 'n', long, default_value_t = 100)]
    minions: usize,
    /// Minions per process (each minion holds 4 descriptors: two TCP connections and two
    /// ZeroMQ mailboxes; a process may hold 20,000).
    #[arg(long, default_value_t = 2500)]
    per_proc: usize,
    /// Minion id prefix (ids are PREFIX00000, PREFIX00001...).
    #[arg(long, default_value = "swarm-")]
    prefix: String,
    /// Index of the first key and id (several swarms against several masters).
    #[arg(long, default_value_t = 0)]
    first: usize,
    /// Source address of the first process's connections; the next processes use the next
    /// addresses.
    #[arg(long, default_value = "127.0.0.2")]
    src: String,
    /// A command that publishes one job (run with `sh -c` once per round); repeatable.
    #[arg(long = "publish")]
    publish: Vec<String>,
    /// Rounds of the publish commands.
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// Master process ids to sample (CPU, RSS, PSS, with their children).
    #[arg(long, value_delimiter = ',')]
    pids: Vec<u32>,
    /// More process ids sampled apart from `--pids` (e.g. the syndics, when `--pids` are the
    /// masters of masters).
    #[arg(long, value_delimiter = ',')]
    tier_pids: Vec<u32>,
    /// Seconds to wait for every minion to authenticate.
    #[arg(long, default_value_t = 120)]
    wait: u64,
    /// Seconds between the end of the auth storm and the first publish (subscriptions are
    /// still being set up when the last `_auth` reply arrives, as for real minions).
    #[arg(long, default_value_t = 3)]
    settle: u64,
    /// Seconds to wait for every return of a round.
    #[arg(long, default_value_t = 120)]
    round_wait: u64,
    /// Distinct key pairs to use (minion i uses key i mod K); 0: one per minion. Every minion
    /// still has its own id and does its own RSA work; a pool only saves generating keys for
    /// very large swarms.
    #[arg(long, default_value_t = 0)]
    key_pool: usize,
    /// After the auth storm (instead of publishing), every minion at once does what a Salt
    /// minion's state run asks of the master: `files` lists the file server and fetches up to
    /// `--fetch` files as a 3007 minion does (`_file_hash`, `_file_find`, `_serve_file` until
    /// EOF); `pillar` asks for its pillar (`_pillar`, the privately encrypted reply).
    #[arg(long)]
    workload: Option<String>,
    /// Files each minion fetches in the `files` workload (the first ones of `_file_list`).
    #[arg(long, default_value_t = 100)]
    fetch: usize,
    /// Print one JSON summary on stdout instead of text.
    #[arg(long)]
    json: bool,
    /// Only measure the master's auth ceiling on one core (RSA-2048 private-key operations per
    /// second, and whole first-contact `_auth` decisions per second: one private and two public
    /// operations plus the codec) and print it as JSON; no master needed.
    #[arg(long)]
    ceiling: bool,
    /// (internal) run as worker process K for minions `--range A..B`.
    #[arg(long, hide = true)]
    child: Option<usize>,
    /// (internal) the worker's minion range.
    #[arg(long, hide = true)]
    range: Option<String>,
}

fn main() {
    let args = Args::parse();
    if args.ceiling {
        println!("{}", ceiling());
        return;
    }
    if let (Some(k), Some(r)) = (args.child, args.range.clone()) {
        let (a, b) = r.split_once("..").expect("range A..B");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(child(&args, k, a.parse().unwrap(), b.parse().unwrap()));
        return;
    }
    parent(&args);
}

/// `host:ret` (publish: `publish_port`, else ret - 1) or `host:ret:publish`.
fn master_addr(s: &str, publish_port: Option<u16>) -> (String, u16, u16) {
    let mut parts = s.rsplitn(3, ':').collect::<Vec<_>>();
    parts.reverse();
    let port = |p: &str| -> u16 {
        p.parse()
            .unwrap_or_else(|_| panic!("--master {s}: not host:port[:publish]"))
    };
    match parts.as_slice() {
        [host, ret, publish] if publish.parse::<u16>().is_ok() && ret.parse::<u16>().is_ok() => {
            ((*host).to_owned(), port(ret), port(publish))
        }
        _ => {
            let (host, ret) = s
                .rsplit_once(':')
                .unwrap_or_else(|| panic!("--master {s}: not host:port"));
            let ret = port(ret);
            (host.to_owned(), ret, publish_port.unwrap_or(ret - 1))
        }
    }
}

fn src_addr(base: &str, k: usize) -> String {
    let mut o: Vec<u32> = base.split('.').map(|x| x.parse().unwrap_or(0)).collect();
    o.resize(4, 0);
    let v = (o[0] << 24 | o[1] << 16 | o[2] << 8 | o[3]) + k as u32;
    format!(
        "{}.{}.{}.{}",
        v >> 24,
        (v >> 16) & 255,
        (v >> 8) & 255,
        v & 255
    )
}

async fn child(args: &Args, k: usize, a: usize, b: usize) {
    let (host, ret, publish) = master_addr(&args.master[0], args.publish_port);
    let host = host.as_str();
    let src = src_addr(&args.src, k);
    let ctx = Context::new();
    // Only the keys this worker's minions use (minion i uses key i, or i mod --key-pool).
    let mut keys: HashMap<usize, brine_proto::crypt::PrivateKey> = HashMap::new();
    let lat: Latencies = Arc::default();
    // Identities first (key loading and the `tok` signature are not the storm), then wait for
    // the parent's "go" so every process storms at once.
    let ids: Vec<Result<MinionIdentity, String>> = (a..b)
        .map(|i| {
            let id = format!("{}{:05}", args.prefix, args.first + i);
            let k = match args.key_pool {
                0 => args.first + i,
                pool => (args.first + i) % pool,
            };
            let key = keys.entry(k).or_insert_with(|| cached_key(k)).clone();
            MinionIdentity::new(&id, key).map_err(|e| e.to_string())
        })
        .collect();
    drop(keys);
    println!("{}", json!({ "ready": true }));
    std::io::stdout().flush().ok();
    let mut lines = std::io::stdin().lock().lines();
    let _go = lines.next();
    drop(lines);
    let t0 = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    let known = KnownMaster::default();
    for me in ids {
        let (ctx, host, src, lat) = (ctx.clone(), host.to_owned(), src.clone(), lat.clone());
        let auth = MinionAuthConfig {
            known_master: Some(known.clone()),
            ..MinionAuthConfig::default()
        };
        let wait = Duration::from_secs(args.wait);
        set.spawn(
            async move { minion(&ctx, me?, &src, &host, (ret, publish), auth, wait, lat).await },
        );
    }
    let (mut ok, mut failed) = (0usize, 0usize);
    let mut errors: HashMap<String, usize> = HashMap::new();
    let mut running = Vec::new();
    while let Some(r) = set.join_next().await {
        match r {
            Ok(Ok(task)) => {
                ok += 1;
                running.push(task);
            }
            Ok(Err(e)) => {
                failed += 1;
                *errors.entry(e).or_default() += 1;
            }
            Err(e) => {
                failed += 1;
                *errors.entry(e.to_string()).or_default() += 1;
            }
        }
    }
    let line = json!({"authed": ok, "failed": failed, "secs": t0.elapsed().as_secs_f64(), "errors": errors});
    println!("{line}");
    std::io::stdout().flush().ok();
    // Commands on stdin: `stats` → the latencies recorded since the last `stats`.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<String>(16);
    std::thread::spawn(move || {
        for l in std::io::stdin().lock().lines() {
            let Ok(l) = l else { break };
            if tx.blocking_send(l).is_err() {
                break;
            }
        }
    });
    let running = Arc::new(running);
    while let Some(cmd) = rx.recv().await {
        if let Some(kind) = cmd.trim().strip_prefix("workload ") {
            let t = Instant::now();
            let mut set = tokio::task::JoinSet::new();
            for i in 0..running.len() {
                let (running, kind, fetch) = (running.clone(), kind.to_owned(), args.fetch);
                // Every 50th minion checks what it got (the rest trust it: the swarm's own
                // CPU must not become what is measured).
                let check = i % 50 == 0;
                set.spawn(async move {
                    let m = &running[i];
                    match kind.as_str() {
                        "files" => m.fetch_files(fetch, check).await,
                        "pillar" => m.pillar(check).await,
                        other => Err(format!("unknown workload {other}")),
                    }
                });
            }
            let (mut done, mut failed, mut requests, mut bytes) = (0u64, 0u64, 0u64, 0u64);
            let mut errors: HashMap<String, usize> = HashMap::new();
            while let Some(r) = set.join_next().await {
                match r {
                    Ok(Ok((q, b))) => {
                        done += 1;
                        requests += q;
                        bytes += b;
                    }
                    Ok(Err(e)) => {
                        failed += 1;
                        *errors.entry(e).or_default() += 1;
                    }
                    Err(e) => {
                        failed += 1;
                        *errors.entry(e.to_string()).or_default() += 1;
                    }
                }
            }
            println!(
                "{}",
                json!({"done": done, "failed": failed, "requests": requests, "bytes": bytes,
                       "secs": t.elapsed().as_secs_f64(), "errors": errors})
            );
            std::io::stdout().flush().ok();
            continue;
        }
        if cmd.trim() == "stats" {
            let jobs = std::mem::take(&mut *lat.lock().unwrap());
            println!("{}", json!({ "jobs": jobs }));
            std::io::stdout().flush().ok();
        }
    }
    drop(running);
}

// ---- the parent process -------------------------------------------------------------------

struct Worker {
    child: Child,
    stdin: ChildStdin,
    stdout: std::io::BufReader<ChildStdout>,
}

impl Worker {
    fn line(&mut self) -> Json {
        let mut l = String::new();
        self.stdout.read_line(&mut l).ok();
        serde_json::from_str(&l).unwrap_or(Json::Null)
    }
}

fn parent(args: &Args) {
    let exe = std::env::current_exe().expect("current_exe");
    let n = args.minions;
    let per = args.per_proc.max(1);
    // Keys first (cached; generating is slow), so the storm below is only the storm.
    let _ = cached_keys(if args.key_pool == 0 {
        args.first + n
    } else {
        args.key_pool
    });
    // Each master gets a contiguous block of minions, each block its own worker processes.
    let masters = args.master.len();
    let mut plan = Vec::new();
    for (m, master) in args.master.iter().enumerate() {
        let (lo, hi) = (n * m / masters, n * (m + 1) / masters);
        let mut a = lo;
        while a < hi {
            let b = (a + per).min(hi);
            plan.push((master.clone(), a, b));
            a = b;
        }
    }
    let mut workers: Vec<Worker> = plan
        .iter()
        .enumerate()
        .map(|(k, (master, a, b))| {
            let mut cmd = Command::new(&exe);
            cmd.args(["--master", master])
                .args(["--prefix", &args.prefix])
                .args(["--first", &args.first.to_string()])
                .args(["--src", &args.src])
                .args(["--wait", &args.wait.to_string()])
                .args(["--key-pool", &args.key_pool.to_string()])
                .args(["--fetch", &args.fetch.to_string()])
                .args(["--child", &k.to_string()])
                .args(["--range", &format!("{a}..{b}")])
                // Thousands of sockets and sessions allocated across threads fragment glibc's
                // per-thread arenas; two arenas suffice.
                .env("MALLOC_ARENA_MAX", "2")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped());
            if let Some(p) = args.publish_port {
                cmd.args(["--publish-port", &p.to_string()]);
            }
            let mut child = cmd.spawn().expect("spawn a swarm worker");
            Worker {
                stdin: child.stdin.take().expect("stdin"),
                stdout: std::io::BufReader::new(child.stdout.take().expect("stdout")),
                child,
            }
        })
        .collect();
    for w in &mut workers {
        let r = w.line();
        assert_eq!(r["ready"], true, "a swarm worker did not start: {r}");
    }
    let before = sample(&args.pids);
    let tier_before = sample(&args.tier_pids);
    let net_before = net_counters();
    let t0 = Instant::now();
    for w in &mut workers {
        let _ = writeln!(w.stdin, "go");
        let _ = w.stdin.flush();
    }
    let (mut authed, mut failed) = (0u64, 0u64);
    let mut errors = serde_json::Map::new();
    for w in &mut workers {
        let r = w.line();
        authed += r["authed"].as_u64().unwrap_or(0);
        failed += r["failed"].as_u64().unwrap_or(0);
        if let Some(e) = r["errors"].as_object() {
            for (k, v) in e {
                let c = errors.get(k).and_then(Json::as_u64).unwrap_or(0) + v.as_u64().unwrap_or(0);
                errors.insert(k.clone(), json!(c));
            }
        }
    }
    let auth_secs = t0.elapsed().as_secs_f64();
    let net_after = net_counters();
    let net: [u64; 3] = std::array::from_fn(|i| net_after[i].saturating_sub(net_before[i]));
    let after_auth = sample(&args.pids);
    let auth_cpu = (after_auth.0 - before.0) as f64 / 100.0;
    let tier_auth_cpu = (sample(&args.tier_pids).0 - tier_before.0) as f64 / 100.0;
    if !args.json {
        println!(
            "auth storm: {authed}/{n} authenticated in {auth_secs:.2} s ({failed} failed{}); master CPU {auth_cpu:.2} s{}",
            if errors.is_empty() {
                String::new()
            } else {
                format!(": {}", Json::Object(errors.clone()))
            },
            if auth_cpu > 0.0 {
                format!(
                    " ({:.0} auths per master CPU-second)",
                    authed as f64 / auth_cpu
                )
            } else {
                String::new()
            }
        );
    }
    std::thread::sleep(Duration::from_secs(args.settle));
    let mut workload = Json::Null;
    if let Some(kind) = &args.workload {
        let s0 = sample(&args.pids);
        let t = Instant::now();
        for w in &mut workers {
            let _ = writeln!(w.stdin, "workload {kind}");
            let _ = w.stdin.flush();
        }
        let (mut done, mut failed, mut requests, mut bytes) = (0u64, 0u64, 0u64, 0u64);
        let mut errors = serde_json::Map::new();
        for w in &mut workers {
            let r = w.line();
            done += r["done"].as_u64().unwrap_or(0);
            failed += r["failed"].as_u64().unwrap_or(0);
            requests += r["requests"].as_u64().unwrap_or(0);
            bytes += r["bytes"].as_u64().unwrap_or(0);
            if let Some(e) = r["errors"].as_object() {
                for (k, v) in e {
                    let c =
                        errors.get(k).and_then(Json::as_u64).unwrap_or(0) + v.as_u64().unwrap_or(0);
                    errors.insert(k.clone(), json!(c));
                }
            }
        }
        let secs = t.elapsed().as_secs_f64();
        let s1 = sample(&args.pids);
        workload = json!({
            "kind": kind, "fetch": args.fetch, "done": done, "failed": failed,
            "requests": requests, "bytes": bytes, "wall_secs": secs,
            "master_cpu_secs": (s1.0 - s0.0) as f64 / 100.0, "master_rss_kb": s1.1,
            "errors": errors,
        });
        if !args.json {
            println!(
                "workload {kind}: {done}/{authed} minions done ({failed} failed{}) in {secs:.2} s, {requests} requests, {:.1} MB, master CPU {:.2} s",
                if errors.is_empty() {
                    String::new()
                } else {
                    format!(": {}", Json::Object(errors.clone()))
                },
                bytes as f64 / 1e6,
                workload["master_cpu_secs"].as_f64().unwrap_or(0.0)
            );
        }
    }
    let mut rounds = Vec::new();
    for round in 0..args.rounds {
        for cmd in &args.publish {
            let s0 = sample(&args.pids);
            let ts0 = sample(&args.tier_pids);
            let t = Instant::now();
            let out = Command::new("sh")
                .args(["-c", cmd])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .output();
            let cli_secs = t.elapsed().as_secs_f64();
            let cli_returns = out.as_ref().map_or(0, |o| cli_returned(&o.stdout));
            // Collect until every authenticated minion's return of the newest job is in.
            let mut per_jid: HashMap<String, Vec<u32>> = HashMap::new();
            let deadline = t + Duration::from_secs(args.round_wait);
            let mut complete = None;
            loop {
                for w in &mut workers {
                    let _ = writeln!(w.stdin, "stats");
                    let _ = w.stdin.flush();
                    let r = w.line();
                    if let Some(jobs) = r["jobs"].as_object() {
                        for (jid, v) in jobs {
                            per_jid.entry(jid.clone()).or_default().extend(
                                v.as_array()
                                    .into_iter()
                                    .flatten()
                                    .filter_map(|x| x.as_u64().map(|x| x as u32)),
                            );
                        }
                    }
                }
                let newest = per_jid.iter().max_by_key(|(j, _)| (*j).clone());
                if newest.is_some_and(|(_, v)| v.len() as u64 >= authed) {
                    complete = Some(t.elapsed().as_secs_f64());
                    break;
                }
                if Instant::now() > deadline {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let s1 = sample(&args.pids);
            let ts1 = sample(&args.tier_pids);
            let (jid, mut v) = per_jid
                .into_iter()
                .max_by_key(|(j, _)| j.clone())
                .unwrap_or_default();
            v.sort_unstable();
            let r = json!({
                "round": round,
                "command": cmd,
                "cli_stdout_head": out.as_ref().map_or_else(|e| e.to_string(), |o| head(&o.stdout, 300)),
                "cli_stderr_head": out.as_ref().map_or_else(|_| String::new(), |o| head(&o.stderr, 300)),
                "exit": out.ok().and_then(|o| o.status.code()),
                "cli_returns": cli_returns,
                "jid": jid,
                "returns": v.len(),
                "missing": authed.saturating_sub(v.len() as u64),
                "cli_secs": cli_secs,
                "complete_secs": complete,
                "p50_ms": pct(&v, 0.5),
                "p99_ms": pct(&v, 0.99),
                "max_ms": v.last().copied().unwrap_or(0),
                "master_cpu_secs": (s1.0 - s0.0) as f64 / 100.0,
                "master_rss_kb": s1.1,
                "tier_cpu_secs": (ts1.0 - ts0.0) as f64 / 100.0,
                "tier_rss_kb": ts1.1,
            });
            if !args.json {
                println!(
                    "round {round} `{cmd}`: {}/{authed} returns ({cli_returns} shown by the command), CLI {cli_secs:.2} s, all returns in {}, latency p50 {} ms p99 {} ms max {} ms, master CPU {:.2} s",
                    r["returns"],
                    complete.map_or_else(|| "—(timed out)".to_owned(), |c| format!("{c:.2} s")),
                    r["p50_ms"],
                    r["p99_ms"],
                    r["max_ms"],
                    r["master_cpu_secs"].as_f64().unwrap_or(0.0)
                );
            }
            rounds.push(r);
        }
    }
    let end = sample(&args.pids);
    let tier_end = sample(&args.tier_pids);
    let swarm_cpu: u64 = workers.iter().map(|w| cpu_ticks_tree(w.child.id())).sum();
    let summary = json!({
        "minions": n,
        "processes": workers.len(),
        "authed": authed,
        "auth_failed": failed,
        "auth_errors": errors,
        "auth_secs": auth_secs,
        "auth_master_cpu_secs": auth_cpu,
        "auth_net": {"backlog_drops": net[0], "listen_overflows": net[1], "retransmits": net[2]},
        "rounds": rounds,
        "workload": workload,
        "master_rss_kb": end.1,
        "master_pss_kb": end.2,
        "master_pss_kb_per_minion": if authed > 0 { end.2 as f64 / authed as f64 } else { 0.0 },
        "swarm_cpu_secs": swarm_cpu as f64 / 100.0,
        "tier_auth_cpu_secs": tier_auth_cpu,
        "tier_rss_kb": tier_end.1,
        "tier_pss_kb": tier_end.2,
    });
    if args.json {
        println!("{summary}");
    } else {
        println!(
            "master: RSS {:.1} MB, PSS {:.1} MB ({:.1} KB per minion); swarm CPU {:.2} s",
            end.1 as f64 / 1024.0,
            end.2 as f64 / 1024.0,
            summary["master_pss_kb_per_minion"].as_f64().unwrap_or(0.0),
            swarm_cpu as f64 / 100.0
        );
    }
    for mut w in workers {
        drop(w.stdin);
        let _ = w.child.kill();
        let _ = w.child.wait();
    }
}
