//! An accepted minion turned hostile: forged returns and events, replays.

use std::time::Duration;

use brine_proto::Value;
use brine_proto::envelope::Request;
use brine_proto::loads::{SyndicReturn, SyndicReturnEntry};
use brine_test_support::sim::sim_runtime;
use brine_test_support::{Answer, subscribe, wait_for};
use serde_json::{Value as Json, json};

use crate::{Master, event, events_for, fresh_key};

fn syndic_return(jid: &str, minion: &str, ret: &str, named: Option<&[&str]>) -> Value {
    syndic_return_from(jid, minion, ret, named, None)
}

fn syndic_return_from(
    jid: &str,
    minion: &str,
    ret: &str,
    named: Option<&[&str]>,
    master_id: Option<&str>,
) -> Value {
    let mut load = Value::map()
        .with("fun", "test.echo")
        .with("tgt", "*")
        .with("tgt_type", "glob");
    if let Some(m) = master_id {
        load.insert("master_id", m);
    }
    if let Some(n) = named {
        load.insert("Minions", Value::Array(n.iter().map(Value::str).collect()));
    }
    SyndicReturn {
        entries: vec![SyndicReturnEntry {
            id: "hostile".into(),
            jid: jid.into(),
            fun: Value::str("test.echo"),
            load,
            returns: vec![(
                minion.into(),
                Value::map()
                    .with("return", ret)
                    .with("retcode", 0i64)
                    .with("success", true),
            )],
            master_id: None,
            extra: vec![],
        }],
    }
    .to_value()
}

/// The return a job shows for `minion` (root's `GET /jobs/<jid>`).
fn shown(m: &Master, jid: &str, minion: &str) -> Json {
    m.job(jid)["return"][0][minion].clone()
}

/// An accepted minion sent `_syndic_return` for a victim's job: taken without `order_masters`,
/// stored last-write-wins, kept for jids never published, and its sender recorded as a syndic
/// for good.
#[test]
fn a_minion_cannot_forge_or_overwrite_returns_through_syndic_returns() {
    subscribe();
    for order_masters in [false, true] {
        let m = Master::start(&format!(
            "auto_accept: True\norder_masters: {order_masters}"
        ));
        let rt = sim_runtime();
        let _victim = m.sim(&rt, "victim", 41);
        let mut hostile = m.hostile(&rt, "hostile", 42);
        // The victim's real job and return.
        let tok = m.root_token();
        let (st, body) = m.http(
            "POST",
            "/",
            Some(&tok),
            &json!([{"client": "local", "tgt": "victim", "fun": "test.echo", "arg": ["real"], "full_return": true}]),
        );
        assert_eq!(st, 200, "{body}");
        let jid = body["return"][0]["victim"]["jid"]
            .as_str()
            .unwrap()
            .to_owned();
        assert_eq!(shown(&m, &jid, "victim"), json!("real"));
        // Overwrite it; return for a minion the job does not target; for a jid never
        // published; with the victim named below the hostile "syndic".
        // A made-up jid; one claiming another master published it, but a year old; one
        // from the future.
        let unknown = "20260101000000000000";
        let old = "20251201000000000000";
        let future = "20991201000000000000";
        for load in [
            syndic_return(&jid, "victim", "forged", None),
            syndic_return(&jid, "victim", "forged", Some(&["victim"])),
            syndic_return(&jid, "bystander", "forged", None),
            syndic_return(unknown, "below-1", "forged", None),
            syndic_return_from(old, "below-1", "forged", None, Some("mom-b")),
            syndic_return_from(future, "below-1", "forged", None, Some("mom-b")),
        ] {
            let _ = rt.block_on(hostile.send(load));
        }
        std::thread::sleep(Duration::from_millis(500));
        assert_eq!(
            shown(&m, &jid, "victim"),
            json!("real"),
            "order_masters {order_masters}: the first return stands\n{}",
            m.log_tail()
        );
        assert_eq!(shown(&m, &jid, "bystander"), Json::Null, "{}", m.job(&jid));
        for j in [unknown, old, future] {
            let (st, _) = m.http("GET", &format!("/jobs/{j}"), Some(&tok), &Json::Null);
            assert_eq!(
                st, 404,
                "returns for a job never published ({j}) are not kept"
            );
        }
        let syndic_file = m.cachedir().join("syndics/hostile");
        if order_masters {
            // With syndics allowed, the sender is one; a deleted key stops that.
            assert!(syndic_file.exists());
            std::fs::remove_file(m.pki().join("minions/hostile")).unwrap();
            assert!(
                wait_for(Duration::from_secs(10), || !syndic_file.exists()),
                "a deleted key is still a syndic\n{}",
                m.log_tail()
            );
        } else {
            assert!(
                !syndic_file.exists(),
                "registered as a syndic without order_masters"
            );
            assert!(m.log().contains("order_masters is off"), "{}", m.log_tail());
        }
        // The master still serves the victim.
        let r = m.run_root("victim", "test.ping", &[]);
        assert_eq!(r, json!({"victim": true}));
        drop(rt);
    }
}

/// An accepted minion put the master's own tags on the bus (`salt/key`, `salt/auth`, a job's
/// `new` and another minion's `ret`, `salt/run/...`), alone or in a batch, and split the
/// `/events` stream with a newline in a tag.
#[test]
fn a_minion_cannot_fire_the_master_s_events_or_split_the_stream() {
    subscribe();
    let m = Master::start("auto_accept: True");
    let rt = sim_runtime();
    let mut hostile = m.hostile(&rt, "evil", 43);
    let forged = [
        "salt/key",
        "salt/auth",
        "salt/job/20261206000000000001/new",
        "salt/job/20261206000000000001/ret/victim",
        "salt/run/20261206000000000001/new",
        "salt/minion/victim/start",
        "salt/presence/change",
        "legit/then\ntag: salt/key",
        "legit/cr\rtag: salt/key",
    ];
    let (events, raw) = events_for(&m, 3, || {
        for tag in forged {
            let single = Value::map()
                .with("cmd", "_minion_event")
                .with("id", "evil")
                .with("tag", tag)
                .with(
                    "data",
                    Value::map().with("id", "victim").with("act", "accept"),
                );
            let _ = rt.block_on(hostile.send(single));
        }
        let batch: Vec<Value> = forged
            .iter()
            .map(|t| {
                Value::map()
                    .with("tag", *t)
                    .with("data", Value::map().with("id", "victim"))
            })
            .collect();
        for pretag in [None, Some("salt"), Some("syndic/victim")] {
            let mut b = Value::map()
                .with("cmd", "_minion_event")
                .with("id", "evil")
                .with("events", Value::Array(batch.clone()));
            if let Some(p) = pretag {
                b.insert("pretag", p);
            }
            let _ = rt.block_on(hostile.send(b));
        }
        // A legitimate event of its own, which must get through.
        let ok = Value::map()
            .with("cmd", "_minion_event")
            .with("id", "evil")
            .with("tag", "custom/evil/ping")
            .with("data", Value::map().with("ok", true));
        let _ = rt.block_on(hostile.send(ok));
    });
    assert!(
        events.iter().any(|(t, _)| t == "custom/evil/ping"),
        "the stream works: {raw}"
    );
    for (tag, data) in &events {
        // The master's own events about `evil` (its key accepted, its auth) are genuine.
        let master_owned = tag.starts_with("salt/key") && data.get("id") == Some(&json!("victim"))
            || tag == "salt/auth" && data.get("id") == Some(&json!("victim"))
            || tag.starts_with("salt/job/20261206000000000001")
            || tag.starts_with("salt/run/20261206000000000001")
            || tag.starts_with("salt/minion/victim")
            || tag.starts_with("salt/presence")
            || tag.contains("syndic/victim")
            || tag.starts_with("salt/") && data.get("id") == Some(&json!("victim"));
        assert!(
            !master_owned,
            "forged event on the bus: {tag} {data}\n{raw}"
        );
    }
    // A tag with a line break would have put its tail on a line of its own.
    for line in raw.lines() {
        assert!(
            !line.starts_with("tag: legit/"),
            "the stream was split into a forged event: {raw}"
        );
    }
    assert!(m.log().contains("minion event refused"), "{}", m.log_tail());
    drop(rt);
}

/// An unauthenticated `_auth` carrying an accepted minion's id (with an attacker's key and a
/// bogus `enc_algo`) dropped that minion's session: it had to re-authenticate at RSA cost.
#[test]
fn a_forged_auth_does_not_drop_an_accepted_minion_s_session() {
    subscribe();
    let m = Master::start("auto_accept: True");
    let rt = sim_runtime();
    let mut victim = m.hostile(&rt, "victim", 44);
    let ping = || event("victim", "custom/victim/alive");
    assert!(matches!(rt.block_on(victim.send(ping())), Answer::Reply(_)));
    // The attacker, on its own connection, claims the victim's id.
    let ctx = brine_transport::Context::new();
    let mut attacker = brine_transport::ReqClient::new(
        &ctx,
        &brine_transport::tcp_endpoint("127.0.0.1", m.ports.1),
        brine_transport::SocketOptions::default(),
    );
    let key = fresh_key().public_key().to_clean_pem();
    for enc_algo in ["bogus", "OAEP-SHA1"] {
        let auth = Value::map()
            .with("cmd", "_auth")
            .with("id", "victim")
            .with("nonce", "0123456789abcdef0123456789abcdef")
            .with("enc_algo", enc_algo)
            .with("sig_algo", "PKCS1v15-SHA1")
            .with("pub", key.as_str());
        let frame = Request::Clear {
            load: auth,
            version: 3,
        }
        .encode();
        let _ = rt.block_on(attacker.request(frame, Duration::from_secs(10)));
    }
    assert!(
        matches!(rt.block_on(victim.send(ping())), Answer::Reply(_)),
        "the victim's session was dropped by someone else's _auth\n{}",
        m.log_tail()
    );
    // And a flood of made-up ids leaves no session behind (only the log line).
    for i in 0..200 {
        let auth = Value::map()
            .with("cmd", "_auth")
            .with("id", format!("ghost-{i}"))
            .with("enc_algo", "bogus")
            .with("pub", key.as_str());
        let frame = Request::Clear {
            load: auth,
            version: 3,
        }
        .encode();
        let _ = rt.block_on(attacker.request(frame, Duration::from_secs(10)));
    }
    assert!(matches!(rt.block_on(victim.send(ping())), Answer::Reply(_)));
    drop(rt);
}

/// With `request_server_ttl`, a captured request cannot be played again (nor one too old).
#[test]
fn request_server_ttl_refuses_stale_and_replayed_requests() {
    subscribe();
    let m = Master::start("auto_accept: True\nrequest_server_ttl: 60");
    let rt = sim_runtime();
    let mut h = m.hostile(&rt, "replayer", 45);
    let event = |tag: &str| event("replayer", tag);
    let (events, raw) = events_for(&m, 2, || {
        let once = h.seal(event("custom/replay/once"), None);
        assert!(matches!(
            rt.block_on(h.send_sealed(&once)),
            Answer::Reply(_)
        ));
        assert_eq!(
            rt.block_on(h.send_sealed(&once)),
            Answer::BadLoad,
            "a replayed request was taken\n{}",
            m.log_tail()
        );
        let old = h.seal(event("custom/replay/stale"), Some(1_000_000_000));
        assert_eq!(rt.block_on(h.send_sealed(&old)), Answer::BadLoad);
        // A fresh request still works (the replay did not cost the minion its session).
        assert!(matches!(
            rt.block_on(h.send(event("custom/replay/fresh"))),
            Answer::Reply(_)
        ));
    });
    let count = |t: &str| events.iter().filter(|(tag, _)| tag == t).count();
    assert_eq!(count("custom/replay/once"), 1, "{raw}");
    assert_eq!(count("custom/replay/stale"), 0, "{raw}");
    assert_eq!(count("custom/replay/fresh"), 1, "{raw}");
    drop(rt);
}
