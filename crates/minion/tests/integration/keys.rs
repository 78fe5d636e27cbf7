//! Key acceptance flows against a real salt-master: pending until `salt-key -a`, rejected
//! (the minion exits with a clear message), and a changed master key (refused).

use std::time::Duration;

use brine_proto::crypt::PrivateKey;
use brine_test_support::{SaltMaster, SaltPeer, subscribe, wait_for};

use crate::{BrineMinion, wait_responding};

fn pending_then_accepted_then_rejected(version: &str) {
    subscribe();
    let peer = SaltPeer::get(version);
    let master = SaltMaster::start(&peer, "auto_accept: False");
    let mut m = BrineMinion::start(&master, "pend-m", "");
    let pre = master.pki_dir().join("minions_pre/pend-m");
    assert!(
        wait_for(Duration::from_secs(30), || pre.exists()),
        "{}",
        m.log()
    );
    std::thread::sleep(Duration::from_secs(2));
    assert!(m.daemon.alive(), "a pending minion keeps waiting");
    assert!(m.log().contains("pending"), "{}", m.log());
    let out = master.salt_key(&["-y", "-a", "pend-m"]);
    assert!(out.status.success());
    assert!(
        wait_responding(&master, &["pend-m"], Duration::from_secs(60)),
        "{}",
        m.log()
    );
    assert!(
        m.pki().join("minion_master.pub").exists(),
        "master key cached"
    );

    // Rejecting the key: the next auth (a restart) is refused and the minion exits, saying why.
    drop(m);
    let out = master.salt_key(&["-y", "-r", "pend-m"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut m2 = BrineMinion::start(&master, "pend-m", "");
    // A new key pair (new root): the master has this id rejected.
    assert!(
        wait_for(Duration::from_secs(30), || !m2.daemon.alive()),
        "{}",
        m2.log()
    );
    assert_eq!(m2.daemon.exit_code(), Some(1));
    assert!(m2.log().contains("rejected"), "{}", m2.log());
}

fn changed_master_key_is_refused(version: &str) {
    subscribe();
    let peer = SaltPeer::get(version);
    let master = SaltMaster::start(&peer, "");
    // The minion has cached a different master key (as after a master re-install).
    let dir_key = PrivateKey::generate(2048)
        .unwrap()
        .public_key()
        .to_pem_file();
    let m = BrineMinion::start(&master, "keychg-m", "");
    // Stop it, plant the foreign minion_master.pub, start again in the same root.
    assert!(
        wait_responding(&master, &["keychg-m"], Duration::from_secs(60)),
        "{}",
        m.log()
    );
    m.daemon.signal_group("-KILL");
    std::fs::write(m.pki().join("minion_master.pub"), dir_key).unwrap();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_minion"));
    cmd.arg("-c").arg(m.dir.path().join("etc"));
    let mut again =
        brine_test_support::Daemon::spawn(cmd, "minion", &m.dir.path().join("minion2.log"));
    assert!(wait_for(Duration::from_secs(30), || !again.alive()));
    assert_eq!(again.exit_code(), Some(1));
    let log = std::fs::read_to_string(m.dir.path().join("minion2.log")).unwrap();
    assert!(log.contains("master key has changed"), "{log}");
}

macro_rules! per_version {
    ($($v:literal => $pend:ident, $changed:ident;)*) => {$(
        #[test]
        fn $pend() {
            pending_then_accepted_then_rejected($v);
        }

        #[test]
        fn $changed() {
            changed_master_key_is_refused($v);
        }
    )*};
}

per_version! {
    "3006.30" => pending_accept_reject_3006, changed_master_key_refused_3006;
    "3007.17" => pending_accept_reject_3007, changed_master_key_refused_3007;
    "3008.5" => pending_accept_reject_3008, changed_master_key_refused_3008;
}
