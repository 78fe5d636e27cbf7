//! `brine-key` on a real salt-master's pki directory (3007.17): a real minion's pending key is
//! accepted by brine-key and the minion answers the real `salt` CLI; deleting it writes Salt's
//! AES dropfile, which the real master accepts (and consumes) to rotate its key.

use std::process::Command;
use std::time::Duration;

use brine_test_support::{SaltMaster, SaltMinion, SaltPeer, subscribe, wait_for, workspace_bin};

fn brine_key(master: &SaltMaster, args: &[&str]) -> std::process::Output {
    Command::new(workspace_bin("brine-key"))
        .arg("-c")
        .arg(master.config_dir())
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn brine_key_manages_a_real_salt_pki_3007() {
    subscribe();
    let peer = SaltPeer::get("3007.17");
    let master = SaltMaster::start(&peer, "auto_accept: False\nloop_interval: 1\nid: bk-master");
    let minion = SaltMinion::start(&peer, "bk-1", master.publish_port, master.ret_port, "");
    assert!(
        wait_for(Duration::from_secs(60), || {
            let out = brine_key(&master, &["-l", "un", "--out", "json"]);
            serde_json::from_slice::<serde_json::Value>(&out.stdout)
                .is_ok_and(|v| v["minions_pre"] == serde_json::json!(["bk-1"]))
        }),
        "{}",
        minion.log_tail(20)
    );
    let out = brine_key(&master, &["-y", "-a", "bk-*"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "Key for minion bk-1 accepted."
    );
    let out = brine_key(&master, &["-L"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "Accepted Keys:\nbk-1\nDenied Keys:\nUnaccepted Keys:\nRejected Keys:\n",
        "salt-key's listing"
    );
    assert!(
        wait_for(Duration::from_secs(90), || {
            master.salt_json(&["bk-1", "test.ping"]).get("bk-1")
                == Some(&serde_json::Value::Bool(true))
        }),
        "the accepted minion answers\n{}",
        minion.log_tail(20)
    );
    let out = brine_key(&master, &["-y", "-d", "bk-1"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "Key for minion bk-1 deleted."
    );
    let dfn = master.dir.path().join("root/var/cache/salt/master/.dfn");
    // A real salt-master removes the dropfile only when it will rotate: mode 0400 and its own id
    // inside (otherwise it logs "incorrect permissions" and leaves it).
    assert!(
        wait_for(Duration::from_secs(30), || !dfn.exists()),
        "salt-master did not accept brine-key's dropfile\n{}",
        master.log_tail(20)
    );
}
