//! Attacks that were already refused when this suite was written, kept refused.

use std::time::Duration;

use brine_proto::Value;
use brine_proto::crypt::{PrivateKey, SigAlgo};
use brine_proto::envelope::{Publish, Request};
use brine_proto::jid::Jid;
use brine_proto::loads::JobLoad;
use brine_test_support::sim::{HostileMinion, Rng, sim_runtime};
use brine_test_support::{Answer, Daemon, subscribe, wait_for, workspace_bin};
use serde_json::{Value as Json, json};

use crate::{Master, fresh_key};

fn clear(load: Value) -> Vec<u8> {
    Request::Clear { load, version: 3 }.encode()
}

/// Only `_auth` and `ping` are served in the clear: the master's own commands (publish, runner,
/// wheel, tokens, file receive) and every minion command are refused without a session.
#[test]
fn clear_channel_commands_are_refused() {
    subscribe();
    let m = Master::start("auto_accept: True");
    let rt = sim_runtime();
    let _m1 = m.sim(&rt, "clear-m1", 61);
    let ctx = brine_transport::Context::new();
    let mut c = brine_transport::ReqClient::new(
        &ctx,
        &brine_transport::tcp_endpoint("127.0.0.1", m.ports.1),
        brine_transport::SocketOptions::default(),
    );
    let jobs = m.job_count();
    for cmd in [
        "publish",
        "runner",
        "wheel",
        "_prep_auth_info",
        "mk_token",
        "get_token",
        "_file_recv",
        "_return",
        "_syndic_return",
        "_minion_event",
        "_pillar",
        "_mine",
        "_serve_file",
        "minion_pub",
        "revoke_auth",
        "destroy",
    ] {
        let load = Value::map()
            .with("cmd", cmd)
            .with("tgt", "*")
            .with("fun", "cmd.run")
            .with("arg", Value::Array(vec![Value::str("id")]))
            .with("key", "guess")
            .with("user", "root")
            .with("id", "clear-m1")
            .with("jid", "20261206000000000001")
            .with("return", true)
            .with("tag", "salt/key");
        let reply = rt
            .block_on(c.request(clear(load), Duration::from_secs(10)))
            .unwrap_or_else(|e| panic!("{cmd}: no answer ({e})"));
        let v = brine_proto::codec::decode(&reply).unwrap();
        assert!(
            v == Value::map() || v.as_bytes() == Some(b"bad load"),
            "{cmd} in the clear answered {v:?}"
        );
    }
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(m.job_count(), jobs, "a clear command published a job");
    assert_eq!(
        m.run_root("clear-m1", "test.ping", &[]),
        json!({"clear-m1": true})
    );
    drop(rt);
}

/// Ids, jids and file names with path tricks never become paths outside the master's
/// directories.
#[test]
fn path_tricks_in_ids_jids_and_file_names_go_nowhere() {
    subscribe();
    let m = Master::start("auto_accept: True");
    let rt = sim_runtime();
    let ctx = brine_transport::Context::new();
    let mut c = brine_transport::ReqClient::new(
        &ctx,
        &brine_transport::tcp_endpoint("127.0.0.1", m.ports.1),
        brine_transport::SocketOptions::default(),
    );
    let key = fresh_key().public_key().to_clean_pem();
    for id in [
        "../../../../tmp/brine-escaped",
        "a/b",
        "..",
        ".",
        "x\0y",
        "a\\b",
        "\n",
        "",
        &"l".repeat(300),
    ] {
        let load = Value::map()
            .with("cmd", "_auth")
            .with("id", id)
            .with("pub", key.as_str())
            .with("enc_algo", "OAEP-SHA1")
            .with("sig_algo", "PKCS1v15-SHA1");
        let _ = rt.block_on(c.request(clear(load), Duration::from_secs(10)));
    }
    assert!(!std::path::Path::new("/tmp/brine-escaped").exists());
    for d in [
        "minions",
        "minions_pre",
        "minions_rejected",
        "minions_denied",
    ] {
        let n = std::fs::read_dir(m.pki().join(d)).unwrap().count();
        assert_eq!(n, 0, "{d} got an entry from a hostile id");
    }
    // A minion asking for files outside the roots.
    let mut h = m.hostile(&rt, "paths", 62);
    for path in [
        "../../../../etc/passwd",
        "/etc/passwd",
        "salt://../../etc/passwd",
        "a\0b",
    ] {
        for cmd in [
            "_serve_file",
            "_file_hash",
            "_file_find",
            "_file_hash_and_stat",
        ] {
            let load = Value::map()
                .with("cmd", cmd)
                .with("path", path)
                .with("saltenv", "base")
                .with("loc", 0i64);
            match rt.block_on(h.send(load)) {
                Answer::Reply(v) => {
                    let text = format!("{v:?}");
                    assert!(!text.contains("root:x:0:0"), "{cmd} {path} served {text}");
                }
                Answer::BadLoad | Answer::Timeout => {}
            }
        }
    }
    // Jids through the API.
    let tok = m.root_token();
    for jid in ["..%2F..%2Fetc", "../../etc/passwd", "%2e%2e", "1;rm"] {
        let (st, _) = m.http("GET", &format!("/jobs/{jid}"), Some(&tok), &Json::Null);
        assert!(st == 400 || st == 404, "GET /jobs/{jid}: {st}");
    }
    m.assert_serves(&rt, "after-paths", 66);
    drop(rt);
}

/// Garbage, truncated and absurdly nested msgpack get `bad load` (or nothing), and the master
/// keeps serving.
#[test]
fn malformed_frames_are_refused() {
    subscribe();
    let mut m = Master::start("auto_accept: True");
    let rt = sim_runtime();
    let ctx = brine_transport::Context::new();
    let mut c = brine_transport::ReqClient::new(
        &ctx,
        &brine_transport::tcp_endpoint("127.0.0.1", m.ports.1),
        brine_transport::SocketOptions::default(),
    );
    let mut nested = vec![0x91u8; 200_000];
    nested.push(0xc0);
    let frames: Vec<Vec<u8>> = vec![
        vec![],
        b"not msgpack at all".to_vec(),
        vec![0x82, 0xa3, b'e', b'n', b'c'],
        vec![0xdf, 0xff, 0xff, 0xff, 0xff],
        vec![0xdd, 0x7f, 0xff, 0xff, 0xff],
        nested,
        vec![0xc7, 0x05, 0x01, 1, 2],
        clear(Value::Array(vec![])),
        clear(Value::map().with("cmd", Value::Int(5))),
        Request::Aes {
            id: "nobody".into(),
            load: vec![0u8; 64],
            version: 3,
            enc_algo: None,
            sig_algo: None,
        }
        .encode(),
    ];
    for f in frames {
        let reply = rt.block_on(c.request(f.clone(), Duration::from_secs(10)));
        if let Ok(r) = reply {
            let v = brine_proto::codec::decode(&r).unwrap_or(Value::Nil);
            assert!(
                v.as_bytes() == Some(b"bad load") || v == Value::map(),
                "{} bytes answered {v:?}",
                f.len()
            );
        }
    }
    assert!(m.alive(), "{}", m.log_tail());
    m.assert_serves(&rt, "after-garbage", 63);
    drop(rt);
}

/// A key offered for an accepted id is denied: the attacker gets no session and the owner keeps
/// its own.
#[test]
fn a_new_key_for_an_accepted_id_is_denied() {
    subscribe();
    let m = Master::start("auto_accept: True");
    let rt = sim_runtime();
    let _owner = m.sim(&rt, "owner", 64);
    let ctx = brine_transport::Context::new();
    let stolen = rt.block_on(HostileMinion::connect(
        &ctx,
        "owner",
        fresh_key(),
        "127.0.0.1",
        m.ports.1,
        Duration::from_secs(8),
    ));
    assert!(
        stolen.is_err(),
        "another key for an accepted id was accepted"
    );
    assert!(m.pki().join("minions_denied/owner").exists());
    assert_eq!(
        m.run_root("owner", "test.ping", &[]),
        json!({"owner": true})
    );
    drop(rt);
}

/// The brine minion runs only publishes signed with the master's key when
/// `sign_pub_messages` is on: an accepted (hostile) minion knows the publish AES key and can
/// encrypt a job, but cannot sign it. Without signatures, a publish under any other key is
/// dropped.
#[test]
fn forged_publishes_do_not_run() {
    subscribe();
    let m = Master::start("auto_accept: True");
    let rt = sim_runtime();
    let hostile = m.hostile(&rt, "forger", 65);
    // The minion's publish port is the attacker's publisher; its ret port is the real master.
    let ctx = brine_transport::Context::new();
    let _in_rt = rt.enter();
    let publisher = brine_transport::Publisher::bind(
        &ctx,
        &brine_transport::tcp_endpoint("127.0.0.1", 0),
        &brine_transport::SocketOptions::default(),
    )
    .unwrap();
    let marks = tempfile::tempdir().unwrap();
    let (_signing, sdir) = brine_minion(
        "pub-signing",
        m.ports.1,
        publisher.port(),
        None,
        None,
        "sign_pub_messages: True",
    );
    let (_plain, pdir) = brine_minion(
        "pub-plain",
        m.ports.1,
        publisher.port(),
        None,
        None,
        "sign_pub_messages: False",
    );
    for id in ["pub-signing", "pub-plain"] {
        assert!(
            wait_for(Duration::from_secs(30), || m
                .pki()
                .join("minions")
                .join(id)
                .exists()),
            "{}",
            m.log_tail()
        );
    }
    std::thread::sleep(Duration::from_secs(3));
    let master_key =
        PrivateKey::from_pem(&std::fs::read(m.pki().join("master.pem")).unwrap()).unwrap();
    let mut serial = 1_000_000i64;
    let mut job = |id: &str, mark: &str| {
        serial += 1;
        let jid = Jid::from_unix_micros(1_800_000_000_000_000 + serial as u64);
        let mut j = JobLoad::new(
            "cmd.run",
            vec![Value::str(format!(
                "touch {}",
                marks.path().join(mark).display()
            ))],
            Value::str(id),
            "glob",
            &jid,
        );
        j.serial = Some(serial);
        j.to_value()
    };
    let send = |p: Publish| {
        for _ in 0..3 {
            rt.block_on(publisher.send(p.encode())).unwrap();
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    // Forged by the hostile minion: the right AES key, no signature or its own.
    let aes = hostile.creds.aes.clone();
    let own = fresh_key();
    send(Publish::seal(&job("pub-signing", "unsigned"), &aes, None, &mut Rng).unwrap());
    send(
        Publish::seal(
            &job("pub-signing", "self-signed"),
            &aes,
            Some((&own, SigAlgo::Pkcs1v15Sha1)),
            &mut Rng,
        )
        .unwrap(),
    );
    // Under a key that is not the master's AES key, for the minion that checks no signature.
    let other = brine_proto::crypt::Crypticle::generate(&mut Rng);
    send(Publish::seal(&job("pub-plain", "wrong-aes"), &other, None, &mut Rng).unwrap());
    // Controls: genuine-looking publishes (signed with master.pem / the right key) do run,
    // so the ones above were refused, not lost.
    send(
        Publish::seal(
            &job("pub-signing", "signed"),
            &aes,
            Some((&master_key, SigAlgo::Pkcs1v15Sha1)),
            &mut Rng,
        )
        .unwrap(),
    );
    send(Publish::seal(&job("pub-plain", "plain-ok"), &aes, None, &mut Rng).unwrap());
    let seen = |f: &str| marks.path().join(f).exists();
    assert!(
        wait_for(Duration::from_secs(20), || seen("signed")
            && seen("plain-ok")),
        "the controls did not run\n{}\n{}",
        brine_test_support::tail(&sdir.path().join("minion.log"), 30),
        brine_test_support::tail(&pdir.path().join("minion.log"), 30)
    );
    for f in ["unsigned", "self-signed", "wrong-aes"] {
        assert!(!seen(f), "a forged publish ran ({f})");
    }
    drop(rt);
}

/// Start the brine `minion` daemon as `id` with its master's ret port at `ret_port` and
/// `publish_port` (either may be an attacker's); `seed_master` pre-caches a master key, `key`
/// is its own key (else it makes one), `extra` more minion config.
fn brine_minion(
    id: &str,
    ret_port: u16,
    publish_port: u16,
    seed_master: Option<&std::path::Path>,
    key: Option<&PrivateKey>,
    extra: &str,
) -> (Daemon, tempfile::TempDir) {
    let d = tempfile::tempdir().unwrap();
    let pki = d.path().join("root/etc/salt/pki/minion");
    std::fs::create_dir_all(&pki).unwrap();
    if let Some(master_pub) = seed_master {
        std::fs::copy(master_pub, pki.join("minion_master.pub")).unwrap();
    }
    if let Some(k) = key {
        std::fs::write(pki.join("minion.pem"), k.to_pem_pkcs1().unwrap()).unwrap();
        std::fs::write(pki.join("minion.pub"), k.public_key().to_pem_file()).unwrap();
    }
    std::fs::write(
        d.path().join("minion"),
        format!(
            "id: {id}\nroot_dir: {}\nmaster: 127.0.0.1\nmaster_port: {ret_port}\npublish_port: {publish_port}\nauth_timeout: 2\nacceptance_wait_time: 1\n{extra}\n",
            d.path().join("root").display(),
        ),
    )
    .unwrap();
    let mut cmd = std::process::Command::new(workspace_bin("minion"));
    cmd.arg("-c").arg(d.path()).args(["-l", "debug"]);
    let log = d.path().join("minion.log");
    (Daemon::spawn(cmd, id, &log), d)
}

/// A man in the middle of the brine minion's `_auth`: a reply made with another master's key
/// (the minion has the real one cached) ends the minion without caching the impostor's key, as
/// Salt does; a genuine reply from the real master to an earlier request (a replay) is refused
/// and the minion keeps trying; the honest reply then gets it in, and it serves jobs.
#[test]
fn replayed_and_foreign_auth_replies_are_refused_by_the_minion() {
    use brine_proto::auth::{
        AuthPolicy, KeyState, MasterIdentity, MinionAuth, MinionIdentity, decide_auth,
    };
    use brine_proto::loads::AuthRequest;
    subscribe();
    let m = Master::start("auto_accept: True");
    let rt = sim_runtime();
    let _in_rt = rt.enter();
    let ctx = brine_transport::Context::new();
    let mut router = brine_transport::Router::bind(
        &ctx,
        &brine_transport::tcp_endpoint("127.0.0.1", 0),
        &brine_transport::SocketOptions::default(),
    )
    .unwrap();
    let mitm_port = router.port();
    let upstream_port = m.ports.1;
    #[derive(Clone, Copy, PartialEq, Debug)]
    enum Mode {
        Foreign,
        Replay,
        Honest,
    }
    let mode = std::sync::Arc::new(std::sync::Mutex::new(Mode::Foreign));
    let captured: std::sync::Arc<std::sync::Mutex<Option<Vec<u8>>>> = Default::default();
    let answered = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (mode2, captured2, answered2, ctx2) = (
        mode.clone(),
        captured.clone(),
        answered.clone(),
        ctx.clone(),
    );
    let foreign = MasterIdentity::new(fresh_key(), m.ports.0);
    let mitm = rt.spawn(async move {
        let replier = router.replier();
        let mut upstream = brine_transport::ReqClient::new(
            &ctx2,
            &brine_transport::tcp_endpoint("127.0.0.1", upstream_port),
            brine_transport::SocketOptions::default(),
        );
        while let Ok(req) = router.recv().await {
            let now = *mode2.lock().unwrap();
            let auth = match Request::decode(&req.payload) {
                Ok(Request::Clear { load, .. }) => AuthRequest::from_value(&load).ok(),
                _ => None,
            };
            let reply = match (now, auth) {
                (Mode::Foreign, Some(a)) => {
                    let aes = brine_proto::crypt::Crypticle::generate(&mut Rng);
                    let session = brine_proto::crypt::Crypticle::generate(&mut Rng);
                    let policy = AuthPolicy {
                        auto_sign: true,
                        ..AuthPolicy::default()
                    };
                    let d = decide_auth(
                        &a,
                        &KeyState::Unknown,
                        policy,
                        &foreign,
                        &aes,
                        &session,
                        &mut Rng,
                    )
                    .unwrap();
                    brine_proto::codec::encode_wire(&d.reply)
                }
                (Mode::Replay, Some(_)) => captured2.lock().unwrap().clone().unwrap(),
                _ => match upstream
                    .request(req.payload.clone(), Duration::from_secs(10))
                    .await
                {
                    Ok(r) => r,
                    Err(_) => continue,
                },
            };
            answered2.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if replier.reply(&req, reply).await.is_err() {
                break;
            }
        }
    });
    // 1. Another master's key, while the real one is cached: the minion stops.
    let master_pub = m.pki().join("master.pub");
    let (mut foreign_minion, fdir) = brine_minion(
        "mitm-foreign",
        mitm_port,
        m.ports.0,
        Some(&master_pub),
        None,
        "",
    );
    assert!(
        wait_for(Duration::from_secs(30), || !foreign_minion.alive()),
        "the minion kept going with an impostor's key\n{}",
        brine_test_support::tail(&fdir.path().join("minion.log"), 30)
    );
    let flog = std::fs::read_to_string(fdir.path().join("minion.log")).unwrap_or_default();
    assert!(flog.contains("master key has changed"), "{flog}");
    assert_eq!(
        std::fs::read(
            fdir.path()
                .join("root/etc/salt/pki/minion/minion_master.pub")
        )
        .unwrap(),
        std::fs::read(&master_pub).unwrap(),
        "the impostor's key was cached"
    );
    // 2. A genuine reply from the real master, to an earlier request of the same minion key
    //    (captured here by authenticating with that key first), played to its new request.
    *mode.lock().unwrap() = Mode::Replay;
    let key = PrivateKey::generate(2048).unwrap();
    let id = "mitm-replay";
    {
        let me = MinionIdentity::new(id, key.clone()).unwrap();
        let mut a = MinionAuth::new(me, Default::default(), None, &mut Rng);
        a.start(std::time::Instant::now(), &mut Rng).unwrap();
        let frame = a.poll_transmit().unwrap();
        let mut c = brine_transport::ReqClient::new(
            &ctx,
            &brine_transport::tcp_endpoint("127.0.0.1", upstream_port),
            brine_transport::SocketOptions::default(),
        );
        let reply = rt
            .block_on(c.request(frame, Duration::from_secs(10)))
            .unwrap();
        *captured.lock().unwrap() = Some(reply);
    }
    // The daemon uses the key the captured reply was made for.
    let before = answered.load(std::sync::atomic::Ordering::Relaxed);
    let (mut replay_minion, rdir) =
        brine_minion(id, mitm_port, m.ports.0, Some(&master_pub), Some(&key), "");
    assert!(
        wait_for(Duration::from_secs(30), || answered
            .load(std::sync::atomic::Ordering::Relaxed)
            >= before + 2),
        "the minion did not try again after a replayed reply\n{}",
        brine_test_support::tail(&rdir.path().join("minion.log"), 30)
    );
    assert!(replay_minion.alive());
    let rlog = std::fs::read_to_string(rdir.path().join("minion.log")).unwrap_or_default();
    assert!(rlog.contains("invalid auth reply"), "{rlog}");
    // 3. Honest from now on: the minion gets in and serves jobs.
    *mode.lock().unwrap() = Mode::Honest;
    m.wait_minions(&[id], 60);
    drop(replay_minion);
    mitm.abort();
    drop(rt);
}

/// `cp.push` (`_file_recv`): refused while `file_recv` is off (Salt's default); on, a minion
/// writes only below `cachedir/minions/<its id>/files`, whatever path it sends, and never
/// through a symlink.
#[test]
fn pushed_files_stay_in_the_minions_directory() {
    subscribe();
    let push = |path: &[&str], data: &[u8]| {
        Value::map()
            .with("cmd", "_file_recv")
            .with("id", "pusher")
            .with(
                "path",
                Value::Array(path.iter().map(|p| Value::str(*p)).collect()),
            )
            .with("size", data.len() as i64)
            .with("loc", 0i64)
            .with("data", Value::bin(data.to_vec()))
    };
    let rt = sim_runtime();
    let off = Master::start("auto_accept: True");
    let mut h = off.hostile(&rt, "pusher", 71);
    assert_eq!(
        rt.block_on(h.send(push(&["etc", "hostname"], b"x"))),
        Answer::Reply(Value::Bool(false)),
        "file_recv is off"
    );
    assert!(!off.cachedir().join("minions/pusher/files").exists());
    drop(off);

    let m = Master::start("auto_accept: True\nfile_recv: True\nfile_recv_max_size: 1");
    let mut h = m.hostile(&rt, "pusher", 72);
    let files = m.cachedir().join("minions/pusher/files");
    assert_eq!(
        rt.block_on(h.send(push(&["etc", "hostname"], b"pushed\n"))),
        Answer::Reply(Value::Bool(true))
    );
    assert_eq!(
        std::fs::read(files.join("etc/hostname")).unwrap(),
        b"pushed\n"
    );
    let outside = m.root().join("escaped");
    for path in [
        vec!["..", "..", "..", "escaped"],
        vec!["a", "..", "..", "..", "..", "escaped"],
        vec!["/", "tmp", "escaped"],
        vec![&outside.display().to_string()[1..]],
        vec!["a\0b"],
        vec!["a\\..\\..\\x"],
    ] {
        let got = rt.block_on(h.send(push(&path, b"evil")));
        if path.len() == 1 && !path[0].contains(['\0', '\\']) {
            // An absolute path without its leading slash is a path inside the minion's files.
            assert_eq!(got, Answer::Reply(Value::Bool(true)), "{path:?}");
            continue;
        }
        assert_eq!(got, Answer::Reply(Value::Bool(false)), "{path:?}");
    }
    assert!(!outside.exists(), "a push left the minion's directory");
    // A symlink planted in the minion's directory is not followed out of it.
    std::os::unix::fs::symlink(m.root(), files.join("link")).unwrap();
    let got = rt.block_on(h.send(push(&["link", "escaped2"], b"evil")));
    assert_eq!(got, Answer::Reply(Value::Bool(false)));
    assert!(!m.root().join("escaped2").exists());
    // Larger than file_recv_max_size (1 MB).
    let big = vec![0u8; 1_100_000];
    assert_eq!(
        rt.block_on(h.send(push(&["big"], &big))),
        Answer::Reply(Value::Bool(false))
    );
    assert!(m.log().contains("_file_recv refused"), "{}", m.log_tail());
    m.assert_serves(&rt, "after-push", 73);
}
