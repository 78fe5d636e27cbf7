//! `brine '*' test.ping` through mofm vs `salt '*' test.ping` through a real salt-master, with
//! the same real salt-minions attached to both (hot multi-master, shared master key), in one run.
//! Both CLIs stream (`--out txt`, not `--static`: salt's static mode runs a batch, pinging first).
//!
//! `cargo run -p brine-e2e --example fanout_real -- [MINIONS] [ROUNDS] [SALT_VERSION]`
//! Binaries (`mofm`, `brine`) come from `BRINE_BIN_DIR` (default: this profile's target dir);
//! build them with `--release` for numbers worth writing down.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use brine_test_support::{
    Daemon, SaltMaster, SaltPeer, cpu_ticks_tree, free_port, rss_tree_kb, start_mofm, wait_for,
};

fn bin(name: &str) -> PathBuf {
    if let Ok(d) = std::env::var("BRINE_BIN_DIR") {
        return PathBuf::from(d).join(name);
    }
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().parent().unwrap().join(name)
}

/// Minions that answered `True` in `--out txt` output (`id: True` lines).
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

fn main() {
    let n: usize = std::env::args().nth(1).map_or(50, |s| s.parse().unwrap());
    let rounds: usize = std::env::args().nth(2).map_or(5, |s| s.parse().unwrap());
    let version = std::env::args().nth(3).unwrap_or_else(|| "3007.17".into());
    let peer = SaltPeer::get(&version);
    eprintln!("salt-master {version} (defaults + auto_accept) ...");
    let salt = SaltMaster::start(&peer, "worker_threads: 5");

    // mofm with the same master key on its own ports (minions check one cached master key).
    let dir = tempfile::tempdir().unwrap();
    // Salt's `publish_port` is one value for every master a minion lists, so mofm publishes on
    // salt-master's port number, on another loopback address.
    let (pubp, retp, api) = (salt.publish_port, free_port(), free_port());
    let pki = dir.path().join("root/etc/salt/pki/master");
    std::fs::create_dir_all(&pki).unwrap();
    for f in ["master.pem", "master.pub"] {
        std::fs::copy(salt.pki_dir().join(f), pki.join(f)).unwrap();
    }
    let mofm = start_mofm(&bin("mofm"), dir.path(), "127.0.0.2", (pubp, retp, api), "");

    // Hot multi-master: each minion lists both masters.
    eprintln!("{n} real salt-minions {version}, each attached to both masters ...");
    let mdir = tempfile::tempdir().unwrap();
    let mut minions = Vec::new();
    for i in 0..n {
        let id = format!("fan-{i:03}");
        let root = mdir.path().join(&id);
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::write(
            root.join("etc/minion"),
            format!(
                "root_dir: {r}\nid: {id}\nuser: root\nmaster:\n  - 127.0.0.1:{sr}\n  - 127.0.0.2:{mr}\n\
                 publish_port: {pp}\nacceptance_wait_time: 2\nlog_level_logfile: warning\n",
                r = root.display(),
                sr = salt.ret_port,
                mr = retp,
                pp = salt.publish_port,
            ),
        )
        .unwrap();
        let mut c = peer.command("salt-minion");
        c.arg("-c").arg(root.join("etc")).args(["-l", "warning"]);
        minions.push(Daemon::spawn(c, "salt-minion", &root.join("out.log")));
    }
    let ping_salt = || {
        salt.salt_command(&["*", "test.ping", "--out", "txt", "-t", "30"])
            .output()
            .unwrap()
    };
    let ping_brine = || {
        Command::new(bin("brine"))
            .arg("-c")
            .arg(dir.path().join("etc"))
            .args(["*", "test.ping", "--out", "txt", "-t", "30"])
            .output()
            .unwrap()
    };
    assert!(
        wait_for(Duration::from_secs(900), || count_true(&ping_salt().stdout)
            == n
            && count_true(&ping_brine().stdout) == n),
        "not every minion answered both masters"
    );
    eprintln!("all {n} answer both; measuring {rounds} rounds each, alternating");
    let (mut ts, mut tb) = (Vec::new(), Vec::new());
    let (cs0, cb0) = (cpu_ticks_tree(salt.pid()), cpu_ticks_tree(mofm.pid()));
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
    let (cs, cb) = (
        cpu_ticks_tree(salt.pid()) - cs0,
        cpu_ticks_tree(mofm.pid()) - cb0,
    );
    let (ms, mb) = (median(ts.clone()), median(tb.clone()));
    let (rs, rb) = (rss_tree_kb(salt.pid()), rss_tree_kb(mofm.pid()));
    println!("minions: {n} real salt-minion {version} (hot multi-master), rounds: {rounds}");
    println!(
        "salt  '*' test.ping: median {ms:.3} s {ts:.3?}; salt-master CPU {:.2} s over the rounds; RSS {:.1} MB (all its processes)",
        cs as f64 / 100.0,
        rs as f64 / 1024.0
    );
    println!(
        "brine '*' test.ping: median {mb:.3} s {tb:.3?}; mofm CPU {:.2} s over the rounds; RSS {:.1} MB",
        cb as f64 / 100.0,
        rb as f64 / 1024.0
    );
    println!("ratio (salt / brine wall time): {:.1}x", ms / mb);
    drop(minions);
}
