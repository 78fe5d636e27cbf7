//! The master of masters under load (issue 5, item 10): N simulated minions (brine's protocol
//! stack, keys cached in `~/.cache/brine/swarm-keys`) spread over 3 syndics, `'*' test.ping`
//! from the MoM, in one run on both stacks:
//!
//! - brine: `mofm` (order_masters) + 3 brine `syndic`s;
//! - Salt: a real `salt-master` (order_masters) + 3 syndic nodes (each a real `salt-master` plus
//!   a real `salt-syndic`).
//!
//! Prints per stack: wall time per round (every return counted), the MoM's CPU seconds over the
//! rounds and its RSS (all its processes), and the syndic tier's CPU and RSS.
//!
//! `cargo build --release --bins && ulimit -n 20000 &&
//!  cargo run --release -p brine-e2e --example syndic_fanout -- [N] [ROUNDS] [SALT_VERSION]`
//! (the brine binaries of the same profile are used).

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use brine_test_support::sim::{SimMinion, cached_keys};
use brine_test_support::topology::{Node, loopback};
use brine_test_support::{
    SaltMaster, SaltPeer, SaltSyndic, cpu_ticks_tree, rss_tree_kb, wait_for, workspace_bin,
};
use brine_transport::Context;

/// Minions that answered `True` in `--out txt` output.
fn count_true(stdout: &[u8]) -> usize {
    String::from_utf8_lossy(stdout)
        .lines()
        .filter(|l| l.ends_with(": True"))
        .count()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

struct Usage {
    cpu_ticks: u64,
    rss_kb: u64,
}

fn usage(pids: &[u32]) -> Usage {
    Usage {
        cpu_ticks: pids.iter().map(|p| cpu_ticks_tree(*p)).sum(),
        rss_kb: pids.iter().map(|p| rss_tree_kb(*p)).sum(),
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n: usize = std::env::args().nth(1).map_or(1200, |s| s.parse().unwrap());
    let rounds: usize = std::env::args().nth(2).map_or(3, |s| s.parse().unwrap());
    let version = std::env::args().nth(3).unwrap_or_else(|| "3007.17".into());
    let peer = SaltPeer::get(&version);
    let keys = cached_keys(n);
    let ctx = Context::new();

    // brine: mofm + 3 syndics on their own loopback addresses.
    let (addrs, publish, ret) = loopback(4);
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let api = std::net::TcpListener::bind((addrs[0].as_str(), 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mom = Node::start(
        "mofm",
        "mom",
        &addrs[0],
        &root.join("mom/etc"),
        &[(
            "master",
            format!(
                "root_dir: {r}\ninterface: {a}\npublish_port: {publish}\nret_port: {ret}\n\
                 rest_cherrypy: {{host: {a}, port: {api}}}\nauto_accept: True\n\
                 order_masters: True\nlog_level: warning\n",
                r = root.join("mom").display(),
                a = addrs[0]
            ),
        )],
    );
    mom.wait_port(api);
    let syndics: Vec<Node> = (1..4)
        .map(|j| {
            let n = Node::start(
                "syndic",
                &format!("syndic-{j}"),
                &addrs[j],
                &root.join(format!("syndic-{j}/etc")),
                &[
                    (
                        "master",
                        format!(
                            "root_dir: {r}\ninterface: {a}\npublish_port: {publish}\n\
                             ret_port: {ret}\nauto_accept: True\nsyndic_master: {m}\n\
                             syndic_master_port: {ret}\n",
                            r = root.join(format!("syndic-{j}")).display(),
                            a = addrs[j],
                            m = addrs[0]
                        ),
                    ),
                    (
                        "minion",
                        format!(
                            "id: syndic-{j}\nroot_dir: {}\n",
                            root.join(format!("syndic-{j}/minion")).display()
                        ),
                    ),
                ],
            );
            n.wait_port(ret);
            n
        })
        .collect();
    eprintln!("brine: mofm + 3 syndics up; attaching {n} simulated minions ...");
    let targets: Vec<(String, u16, u16)> = (0..n)
        .map(|i| (addrs[1 + i % 3].clone(), ret, publish))
        .collect();
    let sims = attach(&ctx, &keys, &targets).await;
    let ping_brine = || {
        Command::new(workspace_bin("brine"))
            .arg("-c")
            .arg(&mom.etc)
            .args(["*", "test.ping", "--out", "txt", "-t", "30"])
            .output()
            .unwrap()
    };
    assert!(
        wait_for(Duration::from_secs(120), || count_true(
            &ping_brine().stdout
        ) == n),
        "not every simulated minion answered through brine"
    );

    // Salt: salt-master MoM + 3 syndic nodes.
    eprintln!("salt {version}: salt-master MoM + 3 syndic nodes ...");
    let smom = SaltMaster::start(&peer, "order_masters: True");
    let mut snodes: Vec<SaltSyndic> = (1..4)
        .map(|j| {
            SaltSyndic::start(
                &peer,
                &format!("ssyn-{j}"),
                smom.publish_port,
                smom.ret_port,
            )
        })
        .collect();
    for s in &mut snodes {
        s.wait_accepted(&smom, Duration::from_secs(120));
    }
    eprintln!("salt: attaching {n} simulated minions ...");
    let targets: Vec<(String, u16, u16)> = (0..n)
        .map(|i| {
            let m = &snodes[i % 3].master;
            ("127.0.0.1".to_owned(), m.ret_port, m.publish_port)
        })
        .collect();
    let ssims = attach(&ctx, &keys, &targets).await;
    let ping_salt = || {
        smom.salt_command(&["*", "test.ping", "--out", "txt", "-t", "30"])
            .output()
            .unwrap()
    };
    assert!(
        wait_for(Duration::from_secs(300), || count_true(&ping_salt().stdout)
            == n),
        "not every simulated minion answered through salt"
    );

    eprintln!("both stacks answer; {rounds} rounds each, alternating");
    let brine_mom = vec![mom.pid().unwrap()];
    let brine_tier: Vec<u32> = syndics.iter().filter_map(Node::pid).collect();
    let salt_mom = vec![smom.pid()];
    let salt_tier: Vec<u32> = snodes
        .iter()
        .flat_map(|s| [s.master.pid(), s.pid()])
        .collect();
    let (b0, bt0, s0, st0) = (
        usage(&brine_mom),
        usage(&brine_tier),
        usage(&salt_mom),
        usage(&salt_tier),
    );
    let (mut tb, mut ts) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let t = Instant::now();
        let o = ping_salt();
        ts.push(t.elapsed().as_secs_f64());
        assert_eq!(count_true(&o.stdout), n, "salt lost a return");
        let t = Instant::now();
        let o = ping_brine();
        tb.push(t.elapsed().as_secs_f64());
        assert_eq!(count_true(&o.stdout), n, "brine lost a return");
    }
    let (b1, bt1, s1, st1) = (
        usage(&brine_mom),
        usage(&brine_tier),
        usage(&salt_mom),
        usage(&salt_tier),
    );
    let secs = |a: &Usage, b: &Usage| (b.cpu_ticks - a.cpu_ticks) as f64 / 100.0;
    let mb = |u: &Usage| u.rss_kb as f64 / 1024.0;
    println!("{n} simulated minions behind 3 syndics, {rounds} rounds of '*' test.ping each");
    println!(
        "salt  {version}: median {:.2} s {ts:.2?}; MoM CPU {:.2} s, RSS {:.1} MB; syndic tier CPU {:.2} s, RSS {:.1} MB",
        median(ts.clone()),
        secs(&s0, &s1),
        mb(&s1),
        secs(&st0, &st1),
        mb(&st1)
    );
    println!(
        "brine:       median {:.2} s {tb:.2?}; MoM CPU {:.2} s, RSS {:.1} MB; syndic tier CPU {:.2} s, RSS {:.1} MB",
        median(tb.clone()),
        secs(&b0, &b1),
        mb(&b1),
        secs(&bt0, &bt1),
        mb(&bt1)
    );
    println!(
        "ratios (salt / brine): wall {:.1}x, MoM CPU {:.1}x, MoM RSS {:.1}x",
        median(ts) / median(tb),
        secs(&s0, &s1) / secs(&b0, &b1).max(0.01),
        mb(&s1) / mb(&b1)
    );
    drop((sims, ssims));
}

/// Start one simulated minion per key, minion `i` on `targets[i]` (`host, ret, publish`), all
/// at once.
async fn attach(
    ctx: &Context,
    keys: &[brine_proto::crypt::PrivateKey],
    targets: &[(String, u16, u16)],
) -> Vec<SimMinion> {
    let mut set = tokio::task::JoinSet::new();
    let ctx = Arc::new(ctx.clone());
    for (i, (key, (host, ret, publish))) in keys.iter().zip(targets).enumerate() {
        let (ctx, key, host, ret, publish) =
            (ctx.clone(), key.clone(), host.clone(), *ret, *publish);
        set.spawn(async move {
            SimMinion::start(
                &ctx,
                &format!("sim-{i:05}"),
                key,
                &host,
                ret,
                publish,
                Duration::from_secs(120),
            )
            .await
        });
    }
    let mut out = Vec::new();
    while let Some(r) = set.join_next().await {
        out.push(r.unwrap().unwrap());
    }
    out
}
