//! An unpaced auth storm against mofm, then the re-key storm an AES rotation causes: N minions
//! (brine's protocol stack, keys cached in `~/.cache/brine/swarm-keys`) authenticate all at once;
//! a dropfile rotates the key; all N authenticate again at once. Prints wall time, mofm CPU and
//! auths per mofm CPU-second, to compare with the RSA ceiling from `cargo bench -p brine-bench`.
//!
//! `ulimit -n 20000; cargo run --release -p brine-e2e --example auth_storm -- [N]`
//! (`mofm` from `BRINE_BIN_DIR`, default this profile's target dir.)

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use brine_proto::auth::MinionIdentity;
use brine_proto::crypt::PrivateKey;
use brine_test_support::sim::authenticate;
use brine_test_support::{Daemon, free_port, wait_for};
use brine_transport::{Context, ReqClient, SocketOptions, tcp_endpoint};

fn bin(name: &str) -> PathBuf {
    if let Ok(d) = std::env::var("BRINE_BIN_DIR") {
        return PathBuf::from(d).join(name);
    }
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().parent().unwrap().join(name)
}

fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let f: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |x| x.1)
        .split_whitespace()
        .collect();
    let t = f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    t as f64 / 100.0
}

/// Cached key pairs (generating 2048-bit keys is the slow part of a swarm).
fn keys(n: usize) -> Vec<PrivateKey> {
    let dir = std::env::var("HOME").map_or_else(|_| PathBuf::from("/tmp"), PathBuf::from);
    let dir = dir.join(".cache/brine/swarm-keys");
    std::fs::create_dir_all(&dir).unwrap();
    (0..n)
        .map(|i| {
            let p = dir.join(format!("{i:06}.pem"));
            if let Ok(b) = std::fs::read(&p) {
                return PrivateKey::from_pem(&b).unwrap();
            }
            let k = PrivateKey::generate(2048).unwrap();
            std::fs::write(&p, k.to_pem_pkcs1().unwrap()).unwrap();
            k
        })
        .collect()
}

async fn storm(ctx: &Context, ids: &[Arc<MinionIdentity>], ret: u16) -> (Duration, usize) {
    let t = Instant::now();
    let mut tasks = Vec::new();
    for me in ids {
        let me = me.clone();
        let ctx = ctx.clone();
        tasks.push(tokio::spawn(async move {
            let mut req = ReqClient::new(
                &ctx,
                &tcp_endpoint("127.0.0.1", ret),
                SocketOptions::default(),
            );
            authenticate(&me, &mut req, Duration::from_secs(600))
                .await
                .is_ok()
        }));
    }
    let mut ok = 0;
    for t in tasks {
        ok += usize::from(t.await.unwrap_or(false));
    }
    (t.elapsed(), ok)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n: usize = std::env::args().nth(1).map_or(2000, |s| s.parse().unwrap());
    eprintln!("loading {n} cached minion keys (generated once) ...");
    let ids: Vec<Arc<MinionIdentity>> = keys(n)
        .into_iter()
        .enumerate()
        .map(|(i, k)| Arc::new(MinionIdentity::new(format!("storm-{i:06}"), k).unwrap()))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let (pubp, ret, api) = (free_port(), free_port(), free_port());
    std::fs::create_dir_all(dir.path().join("etc")).unwrap();
    std::fs::write(
        dir.path().join("etc/master"),
        format!(
            "root_dir: {}\ninterface: 127.0.0.1\npublish_port: {pubp}\nret_port: {ret}\n\
             rest_cherrypy: {{port: {api}}}\nauto_accept: True\n",
            dir.path().join("root").display()
        ),
    )
    .unwrap();
    let mut cmd = Command::new(bin("mofm"));
    cmd.arg("-c")
        .arg(dir.path().join("etc"))
        .args(["-l", "warning"]);
    let log = dir.path().join("mofm.log");
    let mofm = Daemon::spawn(cmd, "mofm", &log);
    assert!(wait_for(Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", api)).is_ok()
    }));
    let ctx = Context::new();

    let c0 = cpu_secs(mofm.pid());
    let (t1, ok1) = storm(&ctx, &ids, ret).await;
    let c1 = cpu_secs(mofm.pid());
    println!(
        "first contact: {ok1}/{n} accepted in {:.2} s ({:.0} auths/s wall); mofm CPU {:.2} s ({:.0} auths per CPU-second)",
        t1.as_secs_f64(),
        ok1 as f64 / t1.as_secs_f64(),
        c1 - c0,
        ok1 as f64 / (c1 - c0)
    );
    // Rotate the AES key (what brine-key -d does) and let every minion re-key at once.
    let cache = dir.path().join("root/var/cache/salt/master");
    std::fs::write(cache.join(".dfn"), "x").unwrap();
    assert!(wait_for(Duration::from_secs(5), || !cache
        .join(".dfn")
        .exists()));
    let c2 = cpu_secs(mofm.pid());
    let (t2, ok2) = storm(&ctx, &ids, ret).await;
    let c3 = cpu_secs(mofm.pid());
    println!(
        "re-key after rotation: {ok2}/{n} in {:.2} s ({:.0} auths/s wall); mofm CPU {:.2} s ({:.0} auths per CPU-second)",
        t2.as_secs_f64(),
        ok2 as f64 / t2.as_secs_f64(),
        c3 - c2,
        ok2 as f64 / (c3 - c2)
    );
}
