//! Hot multi-master (`master: [a, b]`, `master_type: str`) and failover between masters with
//! different keys signed by one `master_sign` key (`verify_master_pubkey_sign`), against real
//! salt-masters 3007.17.

use std::time::Duration;

use brine_proto::crypt::PrivateKey;
use brine_test_support::{SaltMaster, SaltPeer, free_port, subscribe, wait_for};

use crate::{BrineMinion, shared_key_masters, wait_responding};

#[test]
fn hot_multi_master_returns_to_the_publisher_3007() {
    subscribe();
    let peer = SaltPeer::get("3007.17");
    let (a, b, ports) = shared_key_masters(&peer, None);
    let m = BrineMinion::start_raw(
        "hot-m",
        &format!(
            "master: [127.0.0.2, 127.0.0.3]\nmaster_port: {}\npublish_port: {}\nacceptance_wait_time: 1\n",
            ports.1, ports.0
        ),
    );
    assert!(
        wait_responding(&a, &["hot-m"], Duration::from_secs(90)),
        "{}",
        m.log()
    );
    assert!(
        wait_responding(&b, &["hot-m"], Duration::from_secs(30)),
        "{}",
        m.log()
    );
    let ja = a.salt_async(&["hot-m", "test.echo", "from-a"]);
    let jb = b.salt_async(&["hot-m", "test.echo", "from-b"]);
    assert!(wait_for(Duration::from_secs(20), || a
        .has_return(&ja, "hot-m")
        && b.has_return(&jb, "hot-m")));
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        !b.has_return(&ja, "hot-m") && !a.has_return(&jb, "hot-m"),
        "each return goes only to its publisher"
    );
}

#[test]
fn failover_between_differently_keyed_masters_signed_by_master_sign_3007() {
    subscribe();
    let peer = SaltPeer::get("3007.17");
    let ports = (free_port(), free_port());
    let a = SaltMaster::start_full(
        &peer,
        "127.0.0.2",
        Some(ports),
        "master_sign_pubkey: True",
        None,
        None,
    );
    assert!(wait_for(Duration::from_secs(10), || a
        .pki_dir()
        .join("master_sign.pub")
        .exists()));
    // B: its own master key, the same signing key.
    let bkeys = tempfile::tempdir().unwrap();
    let bk = PrivateKey::generate(2048).unwrap();
    std::fs::write(
        bkeys.path().join("master.pem"),
        &*bk.to_pem_pkcs1().unwrap(),
    )
    .unwrap();
    std::fs::write(
        bkeys.path().join("master.pub"),
        bk.public_key().to_pem_file(),
    )
    .unwrap();
    for f in ["master_sign.pem", "master_sign.pub"] {
        std::fs::copy(a.pki_dir().join(f), bkeys.path().join(f)).unwrap();
    }
    let b = SaltMaster::start_full(
        &peer,
        "127.0.0.3",
        Some(ports),
        "master_sign_pubkey: True",
        None,
        Some(bkeys.path()),
    );
    let sign_pub = std::fs::read(a.pki_dir().join("master_sign.pub")).unwrap();
    let m = BrineMinion::start_seeded(
        "signed-m",
        &format!(
            "master: [127.0.0.2, 127.0.0.3]\nmaster_type: failover\nmaster_alive_interval: 4\n\
             verify_master_pubkey_sign: True\nmaster_port: {}\npublish_port: {}\nacceptance_wait_time: 1\n",
            ports.1, ports.0
        ),
        &[("master_sign.pub", sign_pub)],
    );
    assert!(
        wait_responding(&a, &["signed-m"], Duration::from_secs(90)),
        "{}",
        m.log()
    );
    a.signal("-KILL");
    assert!(
        wait_responding(&b, &["signed-m"], Duration::from_secs(40)),
        "did not accept B's signed key\n{}",
        m.log()
    );
    let cached = std::fs::read_to_string(m.pki().join("minion_master.pub")).unwrap();
    assert_eq!(
        cached.trim(),
        bk.public_key().to_clean_pem(),
        "B's key cached after verification"
    );
}
