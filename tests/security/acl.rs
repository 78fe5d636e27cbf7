//! An API user reaching beyond their `external_auth` ACL.

use std::time::Duration;

use brine_test_support::sim::{SimOptions, cached_key, sim_runtime};
use brine_test_support::topology::{Node, loopback, start_syndic};
use brine_test_support::{SaltMinion, SaltPeer, SimMinion, subscribe, wait_for};
use serde_json::{Value as Json, json};

use crate::{Master, users_file};

fn alice_acl(users: &std::path::Path) -> String {
    format!(
        "auto_accept: True\nexternal_auth:\n  file:\n    ^filename: {}\n    alice:\n      - 'web*':\n        - cmd.run\n        - test.*\n        - grains.items\n",
        users.display()
    )
}

/// Targets whose regular expressions Python (the minions) and Rust (brine before) read
/// differently: a user allowed `web*` ran `cmd.run` on `db1` by adding a word the master
/// matched against nobody. Now the master evaluates the expression as the minions do, or
/// refuses it.
#[test]
fn a_regex_only_python_understands_cannot_reach_past_the_acl() {
    subscribe();
    let peer = SaltPeer::get("3007.17");
    let users_dir = tempfile::tempdir().unwrap();
    let users = users_file(users_dir.path(), &[("alice", "wonderland")]);
    let m = Master::start(&alice_acl(&users));
    let _web = SaltMinion::start(&peer, "web1", m.ports.0, m.ports.1, "");
    let _db = SaltMinion::start(&peer, "db1", m.ports.0, m.ports.1, "");
    m.wait_minions(&["web1", "db1"], 120);
    let tok = m.login("alice", "wonderland");
    let jobs_before = m.job_count();
    for (tgt, tgt_type) in [
        // A look-ahead: Rust's regex refuses it, so it "matched nobody".
        ("web1 or E@(?=db)", "compound"),
        ("(?=db)|web1", "pcre"),
        // `{,2}` is 0..2 in Python; Rust refused it.
        ("web1 or E@d{,2}b1", "compound"),
        // `\Z` and an octal escape.
        ("web1 or E@db1\\Z", "compound"),
        ("web1 or E@\\144b1", "compound"),
        // The master cannot be sure of the pillar a minion holds in memory (its cache may be
        // newer than the minion's last refresh): every minion may match.
        ("web1 or I@role:db", "compound"),
        ("not G@os:NoSuchOS and not web1", "compound"),
    ] {
        let (st, body) = m.http(
            "POST",
            "/",
            Some(&tok),
            &json!([{"client": "local_async", "tgt": tgt, "tgt_type": tgt_type,
                      "fun": "cmd.run", "arg": ["echo ran-by-alice"]}]),
        );
        assert!(
            st == 400 || st == 403,
            "{tgt} ({tgt_type}) was published: {st} {body}\n{}",
            m.log_tail()
        );
        let text = body["return"].as_str().unwrap_or_default();
        assert!(
            text.contains("db1") || text.contains("not evaluable") || text.contains("invalid"),
            "{tgt}: the refusal says why: {text}"
        );
    }
    // Nothing was published: no job, and db1 returned nothing (give a slow minion time).
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        m.job_count(),
        jobs_before,
        "a refused target published a job"
    );
    // The ACL still lets alice do what it allows.
    let (st, body) = m.http(
        "POST",
        "/",
        Some(&tok),
        &json!([{"client": "local", "tgt": "web1 or E@(w|x)eb1", "tgt_type": "compound",
                  "fun": "cmd.run", "arg": ["echo ok"]}]),
    );
    assert_eq!(
        (st, &body["return"][0]),
        (200, &json!({"web1": "ok"})),
        "{body}"
    );
    // And root still reaches both minions.
    m.wait_minions(&["web1", "db1"], 30);
}

/// Below syndics the master cannot see who a target reaches: the published target is narrowed
/// to the user's ACL targets, so only minions inside them run the job.
#[test]
fn below_syndics_the_target_is_narrowed_to_the_acl() {
    subscribe();
    let (addrs, publish, ret) = loopback(2);
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let users = users_file(root, &[("alice", "wonderland")]);
    let api = std::net::TcpListener::bind((addrs[0].as_str(), 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mom_conf = format!(
        "root_dir: {root}\ninterface: {addr}\npublish_port: {publish}\nret_port: {ret}\n\
         rest_cherrypy: {{host: {addr}, port: {api}}}\norder_masters: True\ngather_job_timeout: 3\n\
         pki_dir: /mom/pki\ncachedir: /mom/cache\n{acl}",
        root = root.display(),
        addr = addrs[0],
        acl = alice_acl(&users),
    );
    let mom = Node::start(
        "mofm",
        "mom",
        &addrs[0],
        &root.join("mom/etc"),
        &[("master", mom_conf)],
    );
    mom.wait_port(api);
    let syndic = start_syndic(
        root,
        "syn",
        "syndic-acl",
        &addrs[1],
        &addrs[0],
        (publish, ret),
    );
    assert!(
        wait_for(Duration::from_secs(30), || root
            .join("mom/cache/syndics/syndic-acl")
            .exists()),
        "{}\n{}",
        mom.log_tail(30),
        syndic.log_tail(30)
    );
    let rt = sim_runtime();
    let ctx = brine_transport::Context::new();
    let start = |id: &str, k: usize| {
        rt.block_on(SimMinion::start_with(
            &ctx,
            id,
            cached_key(k),
            (&addrs[1], ret, publish),
            Duration::from_secs(30),
            SimOptions::default(),
        ))
        .unwrap()
    };
    let web = start("web-below", 11);
    let db = start("db-below", 12);
    // Root reaches both through the syndic.
    assert!(
        wait_for(Duration::from_secs(60), || {
            let v = mom.brine_json(&["*", "test.ping", "-t", "5"]);
            v == json!({"web-below": true, "db-below": true})
        }),
        "{}\n{}",
        mom.log_tail(30),
        syndic.log_tail(30)
    );
    let (web0, db0) = (web.answered(), db.answered());
    // alice targets everything: only web-below (inside `web*`) may run it.
    let mut s = std::net::TcpStream::connect((addrs[0].as_str(), api)).unwrap();
    let login = json!({"username": "alice", "password": "wonderland", "eauth": "file"}).to_string();
    let tok = {
        use std::io::{Read as _, Write as _};
        write!(
            s,
            "POST /login HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{login}",
            login.len()
        )
        .unwrap();
        let mut raw = String::new();
        s.read_to_string(&mut raw).unwrap();
        let body: Json = serde_json::from_str(raw.split_once("\r\n\r\n").unwrap().1).unwrap();
        body["return"][0]["token"].as_str().unwrap().to_owned()
    };
    let lowstate =
        json!([{"client": "local", "tgt": "*", "fun": "test.ping", "timeout": 5}]).to_string();
    let v: Json = {
        use std::io::{Read as _, Write as _};
        let mut s = std::net::TcpStream::connect((addrs[0].as_str(), api)).unwrap();
        write!(
            s,
            "POST / HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Auth-Token: {tok}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{lowstate}",
            lowstate.len()
        )
        .unwrap();
        let mut raw = String::new();
        s.read_to_string(&mut raw).unwrap();
        serde_json::from_str(raw.split_once("\r\n\r\n").unwrap().1).unwrap_or(Json::Null)
    };
    assert_eq!(
        v["return"][0],
        json!({"web-below": true}),
        "{v}\n{}\n{}",
        mom.log_tail(30),
        syndic.log_tail(30)
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(db.answered(), db0, "db-below ran alice's job");
    assert!(web.answered() > web0);
    drop(rt);
}

/// `GET /minions` shows the grains of the minions the token may run `grains.items` on, as
/// salt-api does (it runs `grains.items` with the token): not every minion's.
#[test]
fn minion_grains_follow_the_acl() {
    subscribe();
    let users_dir = tempfile::tempdir().unwrap();
    let users = users_file(users_dir.path(), &[("alice", "wonderland")]);
    let m = Master::start(&alice_acl(&users));
    let rt = sim_runtime();
    let _web = m.sim(&rt, "web-g", 21);
    let _db = m.sim(&rt, "db-g", 22);
    // Grains reach the master with a _pillar request: have both minions send one.
    let mut hw = m.hostile(&rt, "web-g", 21);
    let mut hd = m.hostile(&rt, "db-g", 22);
    for h in [&mut hw, &mut hd] {
        let id = h.id.clone();
        let load = brine_proto::Value::map()
            .with("cmd", "_pillar")
            .with("id", id.as_str())
            .with(
                "grains",
                brine_proto::Value::map()
                    .with("id", id.as_str())
                    .with("os", "Debian"),
            )
            .with("saltenv", "base")
            .with("ver", "2");
        let _ = rt.block_on(h.send(load));
    }
    let root = m.root_token();
    assert!(wait_for(Duration::from_secs(10), || {
        let (_, b) = m.http("GET", "/minions", Some(&root), &Json::Null);
        b["return"][0].as_object().is_some_and(|o| o.len() == 2)
    }));
    let tok = m.login("alice", "wonderland");
    let (st, body) = m.http("GET", "/minions", Some(&tok), &Json::Null);
    assert_eq!(st, 200);
    let seen: Vec<&String> = body["return"][0].as_object().unwrap().keys().collect();
    assert_eq!(seen, ["web-g"], "{body}");
    let (st, _) = m.http("GET", "/minions/db-g", Some(&tok), &Json::Null);
    assert_eq!(st, 403);
    let (st, body) = m.http("GET", "/minions/web-g", Some(&tok), &Json::Null);
    assert_eq!(
        (st, &body["return"][0]["web-g"]["os"]),
        (200, &json!("Debian"))
    );
    drop(rt);
}

/// A lowstate `timeout` of 2^64-1 used to overflow a deadline and panic the handler.
#[test]
fn an_absurd_timeout_is_a_long_wait_not_a_panic() {
    subscribe();
    let mut m = Master::start("auto_accept: True");
    let rt = sim_runtime();
    let _web = m.sim(&rt, "t-1", 31);
    let tok = m.root_token();
    for timeout in [
        json!(u64::MAX),
        json!(i64::MAX as u64 + 1),
        json!("18446744073709551615"),
    ] {
        let (st, body) = m.http(
            "POST",
            "/",
            Some(&tok),
            &json!([{"client": "local", "tgt": "t-1", "fun": "test.ping", "timeout": timeout}]),
        );
        assert_eq!(
            (st, &body["return"][0]),
            (200, &json!({"t-1": true})),
            "timeout {timeout}: {body}\n{}",
            m.log_tail()
        );
    }
    assert!(m.alive());
    assert!(!m.log().contains("panicked"), "{}", m.log_tail());
    drop(rt);
}
