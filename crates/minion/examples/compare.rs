//! Side-by-side measurement: brine's minion and a real salt-minion on one real salt-master.
//!
//! `cargo run --release -p brine-minion --example compare -- [SALT_VERSION] [ROUNDS]`
//! (build the `minion` binary in the same profile first: `cargo build --release -p brine-minion`).
//!
//! Reports, for each minion: RSS and PSS of its whole process tree when idle and while running a
//! `test.sleep` job, and the publish→return latency of `test.ping` (from the master's debug log:
//! the time between "Published command ... jid J" and "Got return from ID for job J").

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use brine_test_support::{Daemon, SaltMaster, SaltMinion, SaltPeer, wait_for};

fn tree_pids(root: u32) -> Vec<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r.to_owned()) else {
            continue;
        };
        let ppid: u32 = rest
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        children.entry(ppid).or_default().push(pid);
    }
    let mut out = vec![root];
    let mut i = 0;
    while i < out.len() {
        if let Some(c) = children.get(&out[i]) {
            out.extend(c);
        }
        i += 1;
    }
    out
}

/// (RSS, PSS) in KiB summed over the process tree.
fn memory(root: u32) -> (u64, u64) {
    let mut rss = 0;
    let mut pss = 0;
    for pid in tree_pids(root) {
        let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
        for line in text.lines() {
            let val = |l: &str| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0)
            };
            if line.starts_with("Rss:") {
                rss += val(line);
            } else if line.starts_with("Pss:") {
                pss += val(line);
            }
        }
    }
    (rss, pss)
}

fn log_millis(line: &str) -> Option<i64> {
    // "2026-11-27 04:01:02,345 [...]"
    let ts = line.get(11..23)?;
    let (hms, ms) = ts.split_once(',')?;
    let mut p = hms.split(':').map(|x| x.parse::<i64>().ok());
    let (h, m, s) = (p.next()??, p.next()??, p.next()??);
    Some(((h * 60 + m) * 60 + s) * 1000 + ms.parse::<i64>().ok()?)
}

fn main() {
    let version = std::env::args().nth(1).unwrap_or_else(|| "3007.17".into());
    let rounds: usize = std::env::args()
        .nth(2)
        .and_then(|r| r.parse().ok())
        .unwrap_or(20);
    let peer = SaltPeer::get(&version);
    let master = SaltMaster::start(&peer, "");
    let real = SaltMinion::start(&peer, "real-m", master.publish_port, master.ret_port, "");
    let bin = std::env::current_exe()
        .unwrap()
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("minion");
    assert!(
        bin.exists(),
        "build the minion binary first: {}",
        bin.display()
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("etc")).unwrap();
    std::fs::write(
        dir.path().join("etc/minion"),
        format!(
            "root_dir: {}\nid: brine-m\nmaster: 127.0.0.1\nmaster_port: {}\npublish_port: {}\nacceptance_wait_time: 1\nbrine_salt_version: '{version}'\n",
            dir.path().join("root").display(),
            master.ret_port,
            master.publish_port
        ),
    )
    .unwrap();
    let mut cmd = Command::new(&bin);
    cmd.arg("-c")
        .arg(dir.path().join("etc"))
        .args(["-l", "warning"]);
    let ours = Daemon::spawn(cmd, "minion", &dir.path().join("minion.log"));
    let ok = wait_for(Duration::from_secs(120), || {
        let out = master.salt(&[
            "-L",
            "real-m,brine-m",
            "test.ping",
            "--out",
            "json",
            "--static",
            "-t",
            "5",
        ]);
        serde_json::from_slice::<serde_json::Value>(&out.stdout).is_ok_and(|v| {
            v.get("real-m").is_some_and(|x| x == true)
                && v.get("brine-m").is_some_and(|x| x == true)
        })
    });
    assert!(ok, "minions did not answer");
    let real_pid = pid_of_minion(&real.dir.path().join("root"));
    std::thread::sleep(Duration::from_secs(3));
    let idle = (memory(real_pid), memory(ours.pid()));
    let _ = master.salt(&["-L", "real-m,brine-m", "test.sleep", "6", "--async"]);
    std::thread::sleep(Duration::from_secs(3));
    let busy = (memory(real_pid), memory(ours.pid()));
    std::thread::sleep(Duration::from_secs(4));
    for _ in 0..rounds {
        let _ = master.salt(&[
            "-L",
            "real-m,brine-m",
            "test.ping",
            "--out",
            "quiet",
            "-t",
            "10",
        ]);
    }
    let log = std::fs::read_to_string(master.dir.path().join("root/master.log")).unwrap();
    let mut published: HashMap<String, i64> = HashMap::new();
    let mut lat: HashMap<&str, Vec<i64>> = HashMap::new();
    for line in log.lines() {
        if let Some(i) = line.find("Published command test.ping with jid ") {
            let jid = line[i + 37..].trim().to_owned();
            if let Some(t) = log_millis(line) {
                published.insert(jid, t);
            }
        } else if let Some(i) = line.find("Got return from ") {
            let rest = &line[i + 16..];
            let Some((id, jid)) = rest.split_once(" for job ") else {
                continue;
            };
            let key = if id == "real-m" {
                "real-m"
            } else if id == "brine-m" {
                "brine-m"
            } else {
                continue;
            };
            if let (Some(p), Some(t)) = (published.get(jid.trim()), log_millis(line)) {
                lat.entry(key).or_default().push(t - p);
            }
        }
    }
    let stats = |v: &mut Vec<i64>| {
        v.sort_unstable();
        if v.is_empty() {
            return "n/a".to_owned();
        }
        format!(
            "p50 {} ms, max {} ms (n={})",
            v[v.len() / 2],
            v[v.len() - 1],
            v.len()
        )
    };
    let mut r = lat.remove("real-m").unwrap_or_default();
    let mut b = lat.remove("brine-m").unwrap_or_default();
    println!("salt {version} master, same run:");
    println!("| | salt-minion {version} | brine minion | ratio |");
    println!("|---|---|---|---|");
    println!(
        "| RSS idle (process tree) | {} KiB | {} KiB | {:.1}x |",
        idle.0.0,
        idle.1.0,
        idle.0.0 as f64 / idle.1.0.max(1) as f64
    );
    println!(
        "| PSS idle | {} KiB | {} KiB | {:.1}x |",
        idle.0.1,
        idle.1.1,
        idle.0.1 as f64 / idle.1.1.max(1) as f64
    );
    println!(
        "| RSS during test.sleep | {} KiB | {} KiB | {:.1}x |",
        busy.0.0,
        busy.1.0,
        busy.0.0 as f64 / busy.1.0.max(1) as f64
    );
    println!(
        "| PSS during test.sleep | {} KiB | {} KiB | {:.1}x |",
        busy.0.1,
        busy.1.1,
        busy.0.1 as f64 / busy.1.1.max(1) as f64
    );
    println!(
        "| test.ping publish→return | {} | {} | |",
        stats(&mut r),
        stats(&mut b)
    );
}

/// The real salt-minion's main process (its pid file under the root).
fn pid_of_minion(root: &std::path::Path) -> u32 {
    let pidfile: PathBuf = root.join("var/run/salt-minion.pid");
    std::fs::read_to_string(&pidfile)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| panic!("no pid file at {}", pidfile.display()))
}
