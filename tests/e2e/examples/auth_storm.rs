//! An unpaced auth storm against mofm, then the re-key storm an AES rotation causes: N minions
//! (brine's protocol stack, keys cached in `~/.cache/brine/swarm-keys`) authenticate all at once;
//! a dropfile rotates the key; all N authenticate again at once. Prints wall time, mofm CPU and
//! auths per mofm CPU-second, to compare with the RSA ceiling from `cargo bench -p brine-bench`.
//!
//! `ulimit -n 20000; cargo run --release -p brine-e2e --example auth_storm -- [N]`
//! (`mofm` from `BRINE_BIN_DIR`, default this profile's target dir.)

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use brine_proto::auth::MinionIdentity;
use brine_test_support::sim::{authenticate, cached_keys};
use brine_test_support::{free_port, proc_cpu_ticks, start_mofm, wait_for};
use brine_transport::{Context, ReqClient, SocketOptions, tcp_endpoint};

fn bin(name: &str) -> PathBuf {
    if let Ok(d) = std::env::var("BRINE_BIN_DIR") {
        return PathBuf::from(d).join(name);
    }
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().parent().unwrap().join(name)
}

fn cpu_secs(pid: u32) -> f64 {
    proc_cpu_ticks(pid) as f64 / 100.0
}

/// Run one storm and print what it cost mofm.
async fn measured(what: &str, ctx: &Context, ids: &[Arc<MinionIdentity>], ret: u16, mofm_pid: u32) {
    let c0 = cpu_secs(mofm_pid);
    let (t, ok) = storm(ctx, ids, ret).await;
    let cpu = cpu_secs(mofm_pid) - c0;
    println!(
        "{what}: {ok}/{} accepted in {:.2} s ({:.0} auths/s wall); mofm CPU {cpu:.2} s ({:.0} auths per CPU-second)",
        ids.len(),
        t.as_secs_f64(),
        ok as f64 / t.as_secs_f64(),
        ok as f64 / cpu
    );
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
    let ids: Vec<Arc<MinionIdentity>> = cached_keys(n)
        .into_iter()
        .enumerate()
        .map(|(i, k)| Arc::new(MinionIdentity::new(format!("storm-{i:06}"), k).unwrap()))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let (pubp, ret, api) = (free_port(), free_port(), free_port());
    let mofm = start_mofm(&bin("mofm"), dir.path(), "127.0.0.1", (pubp, ret, api), "");
    let ctx = Context::new();

    measured("first contact", &ctx, &ids, ret, mofm.pid()).await;
    // Rotate the AES key (what brine-key -d does) and let every minion re-key at once.
    let cache = dir.path().join("root/var/cache/salt/master");
    std::fs::write(cache.join(".dfn"), "x").unwrap();
    assert!(wait_for(Duration::from_secs(5), || !cache
        .join(".dfn")
        .exists()));
    measured("re-key after rotation", &ctx, &ids, ret, mofm.pid()).await;
    if std::env::var("BRINE_MOFM_LOG").is_ok() {
        eprintln!(
            "{}",
            brine_test_support::tail(&dir.path().join("mofm.log"), 30)
        );
    }
}
