//! The real-Salt harness itself: a real MoM (`order_masters: True`), a real syndic node under it
//! and a real minion under the syndic answer `salt '*' test.ping` from the MoM. Later tests swap
//! brine daemons into each of these places.

use std::time::Duration;

use brine_test_support::{SaltMaster, SaltMinion, SaltPeer, SaltSyndic, subscribe, wait_for};

#[test]
fn real_mom_syndic_minion_chain_3007() {
    subscribe();
    let peer = SaltPeer::get("3007.17");
    let mom = SaltMaster::start(&peer, "order_masters: True");
    let mut syndic = SaltSyndic::start(&peer, "syn-h1", mom.publish_port, mom.ret_port);
    syndic.wait_accepted(&mom, Duration::from_secs(90));
    let minion = SaltMinion::start(
        &peer,
        "m-under-syndic",
        syndic.master.publish_port,
        syndic.master.ret_port,
        "",
    );
    let key = syndic.master.pki_dir().join("minions/m-under-syndic");
    assert!(
        wait_for(Duration::from_secs(90), || key.exists()),
        "{}",
        minion.log_tail(30)
    );
    // The minion answers once it has finished starting; retry the CLI for up to a minute.
    let mut last = String::new();
    let ok = wait_for(Duration::from_secs(90), || {
        let out = mom.salt(&["*", "test.ping", "--out", "json", "--static", "-t", "10"]);
        last = String::from_utf8_lossy(&out.stdout).into_owned();
        serde_json::from_str::<serde_json::Value>(last.trim())
            .is_ok_and(|j| j.get("m-under-syndic") == Some(&serde_json::Value::Bool(true)))
    });
    assert!(
        ok,
        "MoM never saw m-under-syndic answer; last output:\n{last}\n{}",
        mom.log_tail(30)
    );
}
