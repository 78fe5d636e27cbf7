//! Demo: a real salt-master on loopback with minions built from brine's protocol stack (and one
//! real salt-minion), answering the real `salt '*' test.ping`.
//!
//! `scripts/demo.sh` installs the Salt peer and runs this. Until the brine daemons land, this is
//! what brine can do end to end.

use std::time::Duration;

use brine_proto::crypt::PrivateKey;
use brine_test_support::{SaltMaster, SaltMinion, SaltPeer, SimMinion, wait_for};
use brine_transport::Context;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let version = std::env::args().nth(1).unwrap_or_else(|| "3007.17".into());
    let brine_minions: usize = std::env::args().nth(2).map_or(Ok(3), |n| n.parse())?;
    let peer = SaltPeer::get(&version);
    eprintln!("starting salt-master {version} on 127.0.0.1 ...");
    let p = peer.clone();
    let master = tokio::task::spawn_blocking(move || SaltMaster::start(&p, "")).await?;
    let ctx = Context::new();
    let mut sims = Vec::new();
    for i in 0..brine_minions {
        let id = format!("brine-{i:02}");
        let key = PrivateKey::generate(2048)?;
        sims.push(
            SimMinion::start(
                &ctx,
                &id,
                key,
                "127.0.0.1",
                master.ret_port,
                master.publish_port,
                Duration::from_secs(60),
            )
            .await?,
        );
        eprintln!("  {id}: authenticated (brine-proto + brine-transport)");
    }
    let real = SaltMinion::start(
        &peer,
        "salt-minion-00",
        master.publish_port,
        master.ret_port,
        "",
    );
    let accepted = master.pki_dir().join("minions/salt-minion-00");
    wait_for(Duration::from_secs(60), || accepted.exists());
    // A real minion needs a few seconds after auth before it answers.
    tokio::time::sleep(Duration::from_secs(5)).await;
    eprintln!("  salt-minion-00: real salt-minion {version}\n\n$ salt '*' test.ping");
    let mut cmd = master.salt_command(&["*", "test.ping", "-t", "20"]);
    let out = tokio::task::spawn_blocking(move || cmd.output()).await??;
    print!("{}", String::from_utf8_lossy(&out.stdout));
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    drop(real);
    anyhow::ensure!(out.status.success(), "salt exited with {}", out.status);
    Ok(())
}
