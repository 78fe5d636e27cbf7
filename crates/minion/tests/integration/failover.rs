//! Failover between two real salt-masters sharing a key (3006.30, 3007.17, 3008.5): the active master is killed
//! (SIGKILL) or hung (SIGSTOP, no FIN/RST) during a `test.sleep 5`. The minion must reattach to
//! the other master within `master_alive_interval` + 5 s, answer its jobs, and deliver the
//! interrupted job's return to it (spooled; Salt loses it). Then failback.

use std::time::{Duration, Instant};

use brine_test_support::{SaltMaster, SaltPeer, subscribe, wait_for};

use crate::{BrineMinion, shared_key_masters, wait_responding};

const ALIVE: u64 = 4;

struct Pair {
    a: SaltMaster,
    b: SaltMaster,
    minion: BrineMinion,
    ports: (u16, u16),
}

fn pair(version: &str, id: &str, failback: bool) -> Pair {
    subscribe();
    let peer = SaltPeer::get(version);
    let (a, b, ports) = shared_key_masters(&peer, None);
    let minion = BrineMinion::start_raw(
        id,
        &format!(
            "master: [127.0.0.2, 127.0.0.3]\nmaster_type: failover\nmaster_alive_interval: {ALIVE}\n\
             master_port: {}\npublish_port: {}\nacceptance_wait_time: 1\n\
             master_failback: {failback}\nmaster_failback_interval: 1\n",
            ports.1, ports.0
        ),
    );
    assert!(
        wait_responding(&a, &[id], Duration::from_secs(90)),
        "{}",
        minion.log()
    );
    Pair {
        a,
        b,
        minion,
        ports,
    }
}

fn fail_over(version: &str, sig: &str, id: &str) {
    let p = pair(version, id, false);
    let jid = p.a.salt_async(&[id, "test.sleep", "5"]);
    std::thread::sleep(Duration::from_secs(1));
    p.a.signal(sig);
    let t0 = Instant::now();
    assert!(
        wait_responding(&p.b, &[id], Duration::from_secs(ALIVE + 30)),
        "never reattached to B\n{}",
        p.minion.log()
    );
    let took = t0.elapsed();
    assert!(
        took <= Duration::from_secs(ALIVE + 5),
        "reattached after {took:?}, more than master_alive_interval + 5 s"
    );
    // The return of the job A published reaches B's job cache.
    assert!(
        wait_for(Duration::from_secs(30), || p.b.has_return(&jid, id)),
        "interrupted job's return never reached B\n{}",
        p.minion.log()
    );
    if sig == "-STOP" {
        p.a.signal("-CONT");
    }
    eprintln!("salt {version} {sig}: reattached to B in {took:?}");
    let _ = p.ports;
}

fn failback(version: &str) {
    let id = format!("fo-back-{}", version.replace('.', "-"));
    let p = pair(version, &id, true);
    let peer = p.a.peer.clone();
    let key_dir = tempfile::tempdir().unwrap();
    for f in ["master.pem", "master.pub"] {
        std::fs::copy(p.a.pki_dir().join(f), key_dir.path().join(f)).unwrap();
    }
    let ports = p.ports;
    p.a.signal("-KILL");
    drop(p.a);
    assert!(
        wait_responding(&p.b, &[&id], Duration::from_secs(ALIVE + 30)),
        "{}",
        p.minion.log()
    );
    // A comes back (same address, ports and key); the minion returns to it.
    let a2 = SaltMaster::start_full(
        &peer,
        "127.0.0.2",
        Some(ports),
        "",
        None,
        Some(key_dir.path()),
    );
    assert!(
        wait_responding(&a2, &[&id], Duration::from_secs(60)),
        "{}",
        p.minion.log()
    );
    // And stays there: for the next 10 s every job from A answers.
    for _ in 0..3 {
        assert!(
            wait_responding(&a2, &[&id], Duration::from_secs(5)),
            "flapped away from A"
        );
        std::thread::sleep(Duration::from_secs(3));
    }
}

macro_rules! per_version {
    ($($v:literal => $kill:ident, $stop:ident, $back:ident;)*) => {$(
        #[test]
        fn $kill() {
            fail_over($v, "-KILL", &format!("fo-kill-{}", $v.replace('.', "-")));
        }

        #[test]
        fn $stop() {
            fail_over($v, "-STOP", &format!("fo-stop-{}", $v.replace('.', "-")));
        }

        #[test]
        fn $back() {
            failback($v);
        }
    )*};
}

per_version! {
    "3006.30" => failover_on_kill_3006, failover_on_hang_3006, failback_without_flapping_3006;
    "3007.17" => failover_on_kill_3007, failover_on_hang_3007, failback_without_flapping_3007;
    "3008.5" => failover_on_kill_3008, failover_on_hang_3008, failback_without_flapping_3008;
}

/// A partition (the active master's host drops off the network: no FIN, no RST) is detected
/// like a death. Master A runs in a network namespace of the test's own, joined by a veth pair.
#[test]
fn failover_on_partition_3007() {
    use brine_test_support::Netns;
    subscribe();
    let peer = SaltPeer::get("3007.17");
    let ns = Netns::create(7);
    let (a, b, ports) = shared_key_masters(&peer, Some(&ns));
    let id = "fo-part";
    let minion = BrineMinion::start_raw(
        id,
        &format!(
            "master: [{}, 127.0.0.3]\nmaster_type: failover\nmaster_alive_interval: {ALIVE}\n\
             master_port: {}\npublish_port: {}\nacceptance_wait_time: 1\n",
            ns.addr, ports.1, ports.0
        ),
    );
    assert!(
        wait_responding(&a, &[id], Duration::from_secs(90)),
        "{}",
        minion.log()
    );
    let jid = a.salt_async(&[id, "test.sleep", "5"]);
    std::thread::sleep(Duration::from_secs(1));
    ns.partition();
    let t0 = Instant::now();
    assert!(
        wait_responding(&b, &[id], Duration::from_secs(ALIVE + 30)),
        "never reattached to B\n{}",
        minion.log()
    );
    let took = t0.elapsed();
    assert!(
        took <= Duration::from_secs(ALIVE + 5),
        "reattached after {took:?}"
    );
    assert!(
        wait_for(Duration::from_secs(30), || b.has_return(&jid, id)),
        "interrupted job's return never reached B\n{}",
        minion.log()
    );
    eprintln!("salt 3007.17 partition: reattached to B in {took:?}");
    drop(a);
}
