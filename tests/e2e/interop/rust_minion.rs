//! 6a: a Rust client built from brine-proto's minion-side state machine (`SimMinion`)
//! authenticates to a real salt-master, receives the real `salt` CLI's `test.ping`, and returns
//! `True` to it.

use std::time::Duration;

use brine_proto::crypt::PrivateKey;
use brine_test_support::{SaltMaster, SaltPeer, SimMinion, subscribe};
use brine_transport::Context;

async fn run(version: &str) {
    subscribe();
    let peer = SaltPeer::get(version);
    let master = tokio::task::spawn_blocking(move || SaltMaster::start(&peer, ""))
        .await
        .unwrap();
    let id = format!("brine-m-{}", version.replace('.', "-"));
    let ctx = Context::new();
    let key = PrivateKey::generate(2048).unwrap();
    let minion = SimMinion::start(
        &ctx,
        &id,
        key,
        "127.0.0.1",
        master.ret_port,
        master.publish_port,
        Duration::from_secs(60),
    )
    .await
    .unwrap_or_else(|e| {
        panic!(
            "auth to salt-master {version}: {e}\n{}",
            master.log_tail(30)
        )
    });
    assert!(
        master.pki_dir().join("minions").join(&id).exists(),
        "key accepted on the master"
    );

    let mut cli = master.salt_command(&[&id, "test.ping", "--out", "json", "--static", "-t", "30"]);
    let out = tokio::task::spawn_blocking(move || cli.output())
        .await
        .unwrap()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let json: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "salt {version} CLI printed no JSON ({e}):\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert_eq!(
        json,
        serde_json::json!({ id.clone(): true }),
        "salt CLI output; stderr: {}\nmaster log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        master.log_tail(60)
    );
    assert!(
        out.status.success(),
        "salt CLI exit status {:?}",
        out.status
    );
    assert!(minion.answered() >= 1);
    assert_eq!(
        minion.rejected.load(std::sync::atomic::Ordering::Relaxed),
        0,
        "every publish verified and decrypted"
    );

    // Echo with an argument, through the real CLI's arg parsing.
    let mut cli = master.salt_command(&[
        &id,
        "test.echo",
        "brine says hi",
        "--out",
        "json",
        "--static",
        "-t",
        "30",
    ]);
    let out = tokio::task::spawn_blocking(move || cli.output())
        .await
        .unwrap()
        .unwrap();
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json, serde_json::json!({ id.clone(): "brine says hi" }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_minion_answers_real_master_3006() {
    run("3006.30").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_minion_answers_real_master_3007() {
    run("3007.17").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_minion_answers_real_master_3008() {
    run("3008.5").await;
}
