//! An unauthenticated peer on the network: slow and flooding HTTP clients, huge frames,
//! files an attacker could write.

use std::io::{Read as _, Write as _};
use std::time::{Duration, Instant};

use brine_test_support::sim::sim_runtime;
use brine_test_support::{subscribe, wait_for};
use serde_json::json;

use crate::Master;

/// An unauthenticated slowloris (connections that send half a request and wait) took every
/// descriptor mofm had, and with them the minion ports: a new `_auth` or `ping` went
/// unanswered. Now API connections are capped and must send their headers (and body) in time.
#[test]
fn a_slowloris_on_the_api_never_starves_the_minion_ports() {
    subscribe();
    // 400 descriptors: more than the attack below could take if every connection were kept.
    let m = Master::start_with(
        "auto_accept: True",
        "max_connections: 40, socket_timeout: 2",
        Some(400),
    );
    let rt = sim_runtime();
    let ctx = brine_transport::Context::new();
    // The attack: 600 connections, each sending the start of a request and nothing more.
    let mut held = Vec::new();
    let api: std::net::SocketAddr = ([127, 0, 0, 1], m.ports.2).into();
    for _ in 0..600 {
        // A server that stopped accepting leaves connects hanging: do not wait on them.
        if let Ok(mut s) = std::net::TcpStream::connect_timeout(&api, Duration::from_millis(500)) {
            let _ = s.write_all(b"POST /login HTTP/1.1\r\nHost: x\r\nContent-Len");
            let _ = s.set_read_timeout(Some(Duration::from_millis(50)));
            held.push(s);
        }
    }
    // During the attack a minion authenticates and is served.
    let t0 = Instant::now();
    let minion = m.try_sim(&rt, "during-attack", 51, 20);
    assert!(
        minion.is_ok(),
        "a minion could not authenticate during the attack: {:?}\n{}",
        minion.err(),
        m.log_tail()
    );
    let mut ping = brine_transport::ReqClient::new(
        &ctx,
        &brine_transport::tcp_endpoint("127.0.0.1", m.ports.1),
        brine_transport::SocketOptions::default(),
    );
    let probe = brine_proto::envelope::Request::Clear {
        load: brine_proto::Value::map()
            .with("cmd", "ping")
            .with("id", "x"),
        version: 3,
    }
    .encode();
    assert!(
        rt.block_on(ping.request(probe, Duration::from_secs(10)))
            .is_ok(),
        "ping unanswered during the attack\n{}",
        m.log_tail()
    );
    // The server closes what it cannot serve: the connections beyond the cap at once, the
    // slow ones after socket_timeout.
    let closed = |s: &std::net::TcpStream| {
        let mut r = s;
        let mut b = [0u8; 512];
        loop {
            match r.read(&mut b) {
                // An answer (a 408) may come before the end.
                Ok(n) if n > 0 => {}
                Ok(_) => return true,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
                Err(_) => return false,
            }
        }
    };
    assert!(
        wait_for(Duration::from_secs(15), || held.iter().all(closed)),
        "slow connections are still open after {:?}: {} of {}; mofm holds {} descriptors\n{}",
        t0.elapsed(),
        held.iter().filter(|s| !closed(s)).count(),
        held.len(),
        std::fs::read_dir(format!("/proc/{}/fd", m.pid())).map_or(0, Iterator::count),
        m.log_tail()
    );
    drop(held);
    // A body that trickles is cut off too.
    let mut s = std::net::TcpStream::connect(("127.0.0.1", m.ports.2)).unwrap();
    s.write_all(b"POST /login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut reply = String::new();
    let _ = s.read_to_string(&mut reply);
    assert!(reply.starts_with("HTTP/1.1 408"), "{reply}");
    // After the attack the API serves again.
    let tok = m.root_token();
    let (st, body) = m.http(
        "POST",
        "/",
        Some(&tok),
        &json!([{"client": "local", "tgt": "during-attack", "fun": "test.ping"}]),
    );
    assert_eq!(
        (st, &body["return"][0]),
        (200, &json!({"during-attack": true}))
    );
    assert!(
        m.log().contains("too many open connections"),
        "{}",
        m.log_tail()
    );
    drop(rt);
}

/// ZeroMQ frames had no size limit: two unauthenticated 512 MiB frames took mofm to 2 GB. Now
/// a peer announcing more than `zmq_max_message_size` is cut off before anything is allocated.
#[test]
fn huge_frames_are_cut_off_before_they_are_allocated() {
    subscribe();
    let mut m = Master::start("auto_accept: True\nzmq_max_message_size: 8388608");
    let rt = sim_runtime();
    let ctx = brine_transport::Context::new();
    // The peak: a frame that was taken whole and freed again leaves the current RSS as it was.
    let peak = |pid: u32| -> u64 {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    let before = peak(m.pid());
    let big = vec![0x5au8; 96 << 20];
    for _ in 0..2 {
        let mut c = brine_transport::ReqClient::new(
            &ctx,
            &brine_transport::tcp_endpoint("127.0.0.1", m.ports.1),
            brine_transport::SocketOptions::default(),
        );
        let _ = rt.block_on(c.request(big.clone(), Duration::from_secs(5)));
    }
    drop(big);
    let after = peak(m.pid());
    assert!(
        after < before + 50 * 1024,
        "mofm's peak RSS grew from {before} KB to {after} KB on two 96 MiB frames"
    );
    assert!(m.alive());
    // It still serves a minion.
    m.assert_serves(&rt, "after-huge", 52);
    drop(rt);
}

/// A world-writable autosign file was honoured: anyone on the host could get keys accepted.
/// Salt ignores such a file (and a group-writable one without `permissive_pki_access`); the
/// pki directory is owner-only.
#[test]
fn an_autosign_file_others_can_write_is_ignored() {
    subscribe();
    use std::os::unix::fs::PermissionsExt as _;
    // Salt puts root_dir in front of autosign_file; the file is re-read on every _auth.
    let m = Master::start("autosign_file: /etc/salt/autosign.conf");
    let autosign = m.root().join("etc/salt/autosign.conf");
    std::fs::write(&autosign, "ok-*\nevil-*\n").unwrap();
    std::fs::set_permissions(&autosign, std::fs::Permissions::from_mode(0o666)).unwrap();
    let rt = sim_runtime();
    let try_auth = |id: &str, k: usize| m.try_sim(&rt, id, k, 6);
    assert!(
        try_auth("evil-1", 53).is_err(),
        "accepted through a world-writable autosign file"
    );
    assert!(m.pki().join("minions_pre/evil-1").exists());
    assert!(m.log().contains("wrong permissions"), "{}", m.log_tail());
    // Owner-writable only: honoured.
    std::fs::set_permissions(&autosign, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert!(try_auth("ok-1", 54).is_ok(), "{}", m.log_tail());
    let mode = std::fs::metadata(m.pki()).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "pki_dir mode {mode:o}");
    drop(rt);
}
