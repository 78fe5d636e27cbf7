//! `master_job_cache: redis` against a real `redis-server`: jobs and returns land in the keys
//! Salt's redis returner uses; Redis killed or frozen in the middle of jobs holds up no publish
//! and no return, and everything reaches Redis once it is back; a second master that shares
//! only Redis shows the jobs the first one ran.

use std::time::Duration;

use brine_test_support::sim::{cached_key, sim_runtime};
use brine_test_support::{RedisSentinel, RedisServer, subscribe, wait_for};
use serde_json::{Value as Json, json};

use super::{Mofm, attach_sims};

fn root_token(m: &Mofm) -> String {
    std::fs::read_to_string(m.root().join("var/cache/salt/master/brine/root_token"))
        .unwrap()
        .trim()
        .to_owned()
}

/// Publish `test.ping` to `tgt` and follow it until final; its jid and returns (by minion).
pub(super) fn ping(m: &Mofm, token: &str, tgt: &str) -> (String, Json) {
    let (st, r) = m.http(
        "POST",
        "/",
        Some(token),
        &json!([{"client": "local_async", "tgt": tgt, "fun": "test.ping"}]),
    );
    assert_eq!(st, 200, "{r}");
    let jid = r["return"][0]["jid"].as_str().unwrap().to_owned();
    let mut result = serde_json::Map::new();
    let mut cursor = 0;
    loop {
        let (st, r) = m.http(
            "GET",
            &format!("/jobs/{jid}?since={cursor}&wait=20"),
            Some(token),
            &Json::Null,
        );
        assert_eq!(st, 200, "{r}");
        let info = &r["info"][0];
        for (id, v) in info["Result"].as_object().unwrap() {
            result.insert(id.clone(), v["return"].clone());
        }
        cursor = info["Cursor"].as_u64().unwrap();
        if info["Finished"] == json!(true) {
            return (jid, Json::Object(result));
        }
    }
}

pub(super) fn redis_conf(r: &RedisServer) -> String {
    format!(
        "master_job_cache: redis\nredis.host: 127.0.0.1\nredis.port: {}\nkeep_jobs_seconds: 3600\n",
        r.port
    )
}

fn all_true(ids: &[String]) -> Json {
    Json::Object(ids.iter().map(|id| (id.clone(), json!(true))).collect())
}

#[test]
fn the_redis_job_cache_never_holds_up_a_job_and_loses_no_return() {
    subscribe();
    let mut redis = RedisServer::start();
    let m = Mofm::start(&format!("auto_accept: True\n{}", redis_conf(&redis)));
    let rt = sim_runtime();
    let ctx = brine_transport::Context::new();
    let ids: Vec<String> = (0..3).map(|i| format!("rc{i}")).collect();
    let _sims = attach_sims(&m, &rt, &ctx, &ids);
    let token = root_token(&m);
    let events = brine_test_support::topology::sse_tags("127.0.0.1", m.ports.2, &token);
    std::thread::sleep(Duration::from_millis(300));

    // Redis up: the job and its returns are in Salt's keys.
    let (jid, got) = ping(&m, &token, "rc*");
    assert_eq!(got, all_true(&ids));
    assert!(
        wait_for(Duration::from_secs(10), || redis
            .cli(&["HLEN", &format!("ret:{jid}")])
            .trim()
            == "3"),
        "returns in ret:{jid}: {}",
        redis.cli(&["HGETALL", &format!("ret:{jid}")])
    );
    let load: Json = serde_json::from_str(&redis.cli(&["GET", &format!("load:{jid}")])).unwrap();
    assert_eq!(load["fun"], "test.ping", "{load}");
    assert_eq!(load["jid"], jid.as_str(), "{load}");
    let one: Json =
        serde_json::from_str(&redis.cli(&["HGET", &format!("ret:{jid}"), "rc0"])).unwrap();
    assert_eq!(
        (&one["return"], &one["id"], &one["jid"], &one["fun"]),
        (
            &json!(true),
            &json!("rc0"),
            &json!(jid),
            &json!("test.ping")
        ),
        "{one}"
    );
    assert_eq!(redis.cli(&["GET", "rc0:test.ping"]).trim(), jid);
    let ttl: i64 = redis
        .cli(&["TTL", &format!("ret:{jid}")])
        .trim()
        .parse()
        .unwrap();
    assert!(
        (1..=3600).contains(&ttl),
        "keep_jobs_seconds as the TTL: {ttl}"
    );
    let mut members: Vec<String> = redis
        .cli(&["SMEMBERS", "minions"])
        .lines()
        .map(str::to_owned)
        .collect();
    members.sort();
    assert_eq!(members, ids);

    // Redis killed: jobs run and return as before; the cache says it is degraded, and once
    // Redis is back every record reaches it.
    redis.stop();
    let (down_jid, got) = ping(&m, &token, "rc*");
    assert_eq!(got, all_true(&ids), "a job while Redis is down");
    let tags = |t: &str| tags_in(&events, t);
    assert!(
        wait_for(Duration::from_secs(10), || tags(
            "salt/brine/job_cache/degraded"
        ) == 1),
        "{}",
        m.log_tail()
    );
    assert_eq!(m.brine_json(&["rc*", "test.ping"]), all_true(&ids));
    redis.spawn();
    assert!(
        wait_for(Duration::from_secs(15), || tags(
            "salt/brine/job_cache/recovered"
        ) == 1),
        "{}",
        m.log_tail()
    );
    assert_eq!(
        redis.cli(&["HLEN", &format!("ret:{down_jid}")]).trim(),
        "3",
        "returns of the job run while Redis was down"
    );
    assert!(
        redis
            .cli(&["GET", &format!("load:{down_jid}")])
            .contains("test.ping")
    );

    // Redis frozen (no answers at all): the same.
    redis.freeze();
    let (frozen_jid, got) = ping(&m, &token, "rc*");
    assert_eq!(got, all_true(&ids), "a job while Redis does not answer");
    assert!(
        wait_for(Duration::from_secs(10), || tags(
            "salt/brine/job_cache/degraded"
        ) == 2),
        "{}",
        m.log_tail()
    );
    redis.thaw();
    assert!(
        wait_for(Duration::from_secs(15), || tags(
            "salt/brine/job_cache/recovered"
        ) == 2),
        "{}",
        m.log_tail()
    );
    assert_eq!(
        redis.cli(&["HLEN", &format!("ret:{frozen_jid}")]).trim(),
        "3"
    );

    // A second master sharing only Redis shows the first one's jobs.
    let other = Mofm::start(&redis_conf(&redis));
    let other_token = root_token(&other);
    let (st, r) = other.http(
        "GET",
        &format!("/jobs/{down_jid}"),
        Some(&other_token),
        &Json::Null,
    );
    assert_eq!(st, 200, "{r}");
    assert_eq!(r["return"][0], all_true(&ids), "{r}");
    // (The first job went with the killed Redis, which kept nothing on disk.)
    let out = other.brine_run(&["jobs.lookup_jid", &frozen_jid, "--out", "json"]);
    let looked: Json = serde_json::from_slice(&out.stdout).unwrap_or(Json::Null);
    assert_eq!(looked, all_true(&ids), "{}", super::text(&out));
    let out = other.brine_run(&["jobs.list_jobs", "--out", "json"]);
    let listed: Json = serde_json::from_slice(&out.stdout).unwrap_or(Json::Null);
    for j in [&down_jid, &frozen_jid] {
        assert!(listed.get(j.as_str()).is_some(), "{j} in {listed}");
    }
}

/// `eauth_tokens: rediscluster`: a token issued by one master works on another that shares
/// Redis, a logout on either ends it on both, and while Redis cannot be asked every token but
/// the local root token is refused (a revocation elsewhere cannot be seen).
#[test]
fn masters_sharing_redis_share_tokens_and_fail_closed() {
    subscribe();
    let redis = RedisServer::start();
    let users_dir = tempfile::tempdir().unwrap();
    let users = super::users_file(users_dir.path());
    let conf = format!(
        "{}eauth_tokens: rediscluster\nexternal_auth:\n  file:\n    ^filename: {}\n    alice:\n      - '@jobs'\n",
        redis_conf(&redis),
        users.display()
    );
    let (a, b) = (Mofm::start(&conf), Mofm::start(&conf));
    let login = |m: &Mofm| -> String {
        let (st, r) = m.http(
            "POST",
            "/login",
            None,
            &json!({"username": "alice", "password": "wonderland", "eauth": "file"}),
        );
        assert_eq!(st, 200, "{r}");
        r["return"][0]["token"].as_str().unwrap().to_owned()
    };
    let jobs = |m: &Mofm, tok: &str| m.http("GET", "/jobs", Some(tok), &Json::Null).0;
    let tok = login(&a);
    assert_eq!(jobs(&b, &tok), 200, "a token from one master on the other");
    assert_eq!(jobs(&a, &tok), 200);
    // Salt's layout: the token is the key.
    assert_eq!(redis.cli(&["EXISTS", &tok]).trim(), "1");
    b.http("POST", "/logout", Some(&tok), &Json::Null);
    assert_eq!(jobs(&a, &tok), 401, "logged out on the other master");
    let wrong = b.http(
        "POST",
        "/login",
        None,
        &json!({"username": "alice", "password": "nope", "eauth": "file"}),
    );
    assert_eq!(wrong.0, 401);
    let tok = login(&b);
    assert_eq!(jobs(&a, &tok), 200);
    let mut redis = redis;
    redis.stop();
    assert_eq!(
        jobs(&a, &tok),
        503,
        "fail closed while Redis cannot be asked (503: retry, the token is not bad)"
    );
    assert_eq!(
        a.http(
            "POST",
            "/login",
            None,
            &json!({"username": "alice", "password": "wonderland", "eauth": "file"})
        )
        .0,
        503,
        "no login while the token store is down"
    );
    assert_eq!(
        jobs(&a, &root_token(&a)),
        200,
        "the local root token still works"
    );
    redis.spawn();
    // A restarted Redis with no persistence lost the token: a new login works.
    assert!(wait_for(Duration::from_secs(10), || jobs(&a, &login(&a)) == 200));
}

/// `brine_key_sync: redis`: a key accepted, rejected or deleted with `brine-key` on one master
/// takes effect in the other's pki directory (Salt's layout, no shared filesystem); a deletion
/// there also asks for an AES rotation.
#[test]
fn key_decisions_reach_the_other_master_through_redis() {
    subscribe();
    let redis = RedisServer::start();
    let conf = format!("{}brine_key_sync: redis\n", redis_conf(&redis));
    let (a, b) = (Mofm::start(&conf), Mofm::start(&conf));
    let pem = cached_key(7).public_key().to_pem_file();
    let pki =
        |m: &Mofm, sub: &str, id: &str| m.root().join("etc/salt/pki/master").join(sub).join(id);
    // The minion asked both masters: pending on each.
    for m in [&a, &b] {
        for id in ["ks1", "ks2"] {
            std::fs::write(pki(m, "minions_pre", id), &pem).unwrap();
        }
    }
    let out = a.brine_key(&["-y", "-a", "ks1"]);
    assert!(out.status.success(), "{}", super::text(&out));
    assert!(
        wait_for(Duration::from_secs(10), || b.key("minions", "ks1")
            && !b.key("minions_pre", "ks1")),
        "accepted on the other master: {}",
        b.log_tail()
    );
    assert_eq!(
        std::fs::read_to_string(pki(&b, "minions", "ks1")).unwrap(),
        pem
    );
    let out = b.brine_key(&["-y", "-r", "ks2"]);
    assert!(out.status.success(), "{}", super::text(&out));
    assert!(
        wait_for(Duration::from_secs(10), || a.key("minions_rejected", "ks2")
            && !a.key("minions_pre", "ks2")),
        "rejected on the other master: {}",
        a.log_tail()
    );
    let dfn = a.root().join("var/cache/salt/master/.dfn");
    let _ = std::fs::remove_file(&dfn);
    let out = b.brine_key(&["-y", "-d", "ks1"]);
    assert!(out.status.success(), "{}", super::text(&out));
    assert!(
        wait_for(Duration::from_secs(10), || !a.key("minions", "ks1")),
        "deleted on the other master: {}",
        a.log_tail()
    );
    assert!(
        wait_for(Duration::from_secs(5), || a
            .log()
            .contains("AES key rotated")),
        "the other master rotated its AES key after the deletion: {}",
        a.log_tail()
    );
    // `brine-key -L` on each master agrees.
    let list = |m: &Mofm| String::from_utf8_lossy(&m.brine_key(&["-L"]).stdout).into_owned();
    assert_eq!(list(&a), list(&b));
}

fn tags_in(events: &std::sync::Mutex<Vec<String>>, tag: &str) -> usize {
    events
        .lock()
        .unwrap()
        .iter()
        .filter(|x| x.as_str() == tag)
        .count()
}

/// `redis.cluster_mode` with Salt's `redis.cluster.startup_nodes`, against a real three-node
/// Redis Cluster: the returns land in Salt's keys (spread over the nodes' slots), a second
/// master sharing only the cluster lists and reads the job (`SCAN` on every primary), and key
/// decisions travel through it too.
#[test]
fn a_redis_cluster_holds_the_job_cache_and_key_decisions() {
    subscribe();
    let cluster = brine_test_support::RedisCluster::start();
    let nodes: String = cluster
        .nodes
        .iter()
        .map(|n| format!("  - host: 127.0.0.1\n    port: {}\n", n.port))
        .collect();
    let conf = format!(
        "master_job_cache: redis\nredis.cluster_mode: true\nredis.cluster.startup_nodes:\n{nodes}keep_jobs_seconds: 3600\nbrine_key_sync: redis\n"
    );
    let m = Mofm::start(&format!("auto_accept: True\n{conf}"));
    let rt = sim_runtime();
    let ctx = brine_transport::Context::new();
    let ids: Vec<String> = (0..3).map(|i| format!("cl{i}")).collect();
    let _sims = attach_sims(&m, &rt, &ctx, &ids);
    let token = root_token(&m);
    std::thread::sleep(Duration::from_millis(300));
    let mut jids = Vec::new();
    for _ in 0..3 {
        let (jid, got) = ping(&m, &token, "cl*");
        assert_eq!(got, all_true(&ids));
        jids.push(jid);
    }
    for jid in &jids {
        assert!(
            wait_for(Duration::from_secs(10), || cluster
                .cli(&["HLEN", &format!("ret:{jid}")])
                .trim()
                == "3"),
            "returns of {jid} in the cluster: {}",
            m.log_tail()
        );
        assert!(
            cluster
                .cli(&["GET", &format!("load:{jid}")])
                .contains("test.ping")
        );
    }
    assert_eq!(cluster.cli(&["SCARD", "minions"]).trim(), "3");
    // The keys are spread: more than one node holds some of them.
    let holding = cluster
        .nodes
        .iter()
        .filter(|n| n.cli(&["DBSIZE"]).trim() != "0")
        .count();
    assert!(holding >= 2, "keys on {holding} of 3 nodes");

    let other = Mofm::start(&conf);
    let other_token = root_token(&other);
    let (st, r) = other.http(
        "GET",
        &format!("/jobs/{}", jids[0]),
        Some(&other_token),
        &Json::Null,
    );
    assert_eq!(st, 200, "{r}");
    assert_eq!(r["return"][0], all_true(&ids), "{r}");
    let out = other.brine_run(&["jobs.list_jobs", "--out", "json"]);
    let listed: Json = serde_json::from_slice(&out.stdout).unwrap_or(Json::Null);
    for j in &jids {
        assert!(listed.get(j.as_str()).is_some(), "{j} in {listed}");
    }

    // Key decisions through the cluster (their hash and version live in different slots).
    let pem = cached_key(9).public_key().to_pem_file();
    for mm in [&m, &other] {
        std::fs::write(mm.root().join("etc/salt/pki/master/minions_pre/clk"), &pem).unwrap();
    }
    let out = other.brine_key(&["-y", "-a", "clk"]);
    assert!(out.status.success(), "{}", super::text(&out));
    assert!(
        wait_for(Duration::from_secs(10), || m.key("minions", "clk")),
        "accepted on the other master through the cluster: {}",
        m.log_tail()
    );
}

/// `redis.sentinel.*` (brine's extension): the job cache follows the primary a real
/// `redis-sentinel` names. The primary is killed in the middle of jobs: jobs go on returning
/// everything, and after the failover every return of every job is on the new primary — the
/// writes acknowledged before the kill had reached the replica (`WAIT`), the rest waited in the
/// journal until the new primary had a replica again (the old one, restarted).
#[test]
fn a_sentinel_failover_of_the_redis_primary_loses_no_return() {
    subscribe();
    let (mut primary, replica, sentinel) = RedisSentinel::start_replicated();
    let m = Mofm::start(&format!(
        "auto_accept: True\nmaster_job_cache: redis\nredis.sentinel.service_name: {}\nredis.sentinel.nodes: ['127.0.0.1:{}']\nkeep_jobs_seconds: 3600\n",
        RedisSentinel::SERVICE,
        sentinel.port
    ));
    let rt = sim_runtime();
    let ctx = brine_transport::Context::new();
    let ids: Vec<String> = (0..3).map(|i| format!("sn{i}")).collect();
    let _sims = attach_sims(&m, &rt, &ctx, &ids);
    let token = root_token(&m);
    let events = brine_test_support::topology::sse_tags("127.0.0.1", m.ports.2, &token);
    std::thread::sleep(Duration::from_millis(300));

    let mut jids = Vec::new();
    let (jid, got) = ping(&m, &token, "sn*");
    assert_eq!(got, all_true(&ids));
    assert!(
        wait_for(Duration::from_secs(10), || primary
            .cli(&["HLEN", &format!("ret:{jid}")])
            .trim()
            == "3"),
        "{}",
        m.log_tail()
    );
    jids.push(jid);
    primary.stop();
    // During the failover and after it.
    for _ in 0..3 {
        let (jid, got) = ping(&m, &token, "sn*");
        assert_eq!(got, all_true(&ids), "a job while the primary is gone");
        jids.push(jid);
    }
    assert!(
        wait_for(Duration::from_secs(30), || sentinel.primary_port()
            == replica.port),
        "no failover: {}",
        sentinel.log()
    );
    // The old primary comes back (systemd would restart it) and the Sentinel makes it a
    // replica of the new one: until then no replica acknowledges writes and the cache stays
    // degraded, records kept in the journal.
    primary.spawn();
    let (jid, got) = ping(&m, &token, "sn*");
    assert_eq!(got, all_true(&ids));
    jids.push(jid);
    for jid in &jids {
        assert!(
            wait_for(Duration::from_secs(20), || replica
                .cli(&["HLEN", &format!("ret:{jid}")])
                .trim()
                == "3"
                && replica
                    .cli(&["GET", &format!("load:{jid}")])
                    .contains("test.ping")),
            "every return of {jid} on the new primary: {}",
            m.log_tail()
        );
    }
    assert!(
        tags_in(&events, "salt/brine/job_cache/degraded") >= 1,
        "the outage was announced"
    );
    assert!(
        // The Sentinel makes the restarted server a replica about ten seconds after it is back.
        wait_for(Duration::from_secs(40), || tags_in(
            &events,
            "salt/brine/job_cache/recovered"
        ) == tags_in(
            &events,
            "salt/brine/job_cache/degraded"
        )),
        "and its end: {} degraded, {} recovered; {}",
        tags_in(&events, "salt/brine/job_cache/degraded"),
        tags_in(&events, "salt/brine/job_cache/recovered"),
        m.log_tail() + &sentinel.log()
    );
}

/// The tags of the entries of `stream` in order, with each entry's data (as `redis-cli --raw
/// XRANGE` prints them: id, `tag`, the tag, `data`, the JSON).
fn stream_entries(redis: &RedisServer, stream: &str) -> Vec<(String, Json)> {
    let out = redis.cli(&["XRANGE", stream, "-", "+"]);
    let lines: Vec<&str> = out.lines().collect();
    let mut entries = Vec::new();
    let mut i = 0;
    while i + 4 < lines.len() {
        if lines[i + 1] == "tag" && lines[i + 3] == "data" {
            let data = serde_json::from_str(lines[i + 4]).unwrap_or(Json::Null);
            entries.push((lines[i + 2].to_owned(), data));
            i += 5;
        } else {
            i += 1;
        }
    }
    entries
}

/// `event_return: redis`: the master's events go to the stream `salt:events:<master>` in order,
/// the blacklist leaves tags out, and events taken while Redis is down are written once it is
/// back, each once.
#[test]
fn event_return_to_redis_keeps_every_event_once() {
    subscribe();
    let mut redis = RedisServer::start();
    let m = Mofm::start(&format!(
        "auto_accept: True\nmaster_id: mom-ev\nevent_return: redis\n\
         event_return_blacklist: ['salt/job/*/new']\n\
         redis.host: 127.0.0.1\nredis.port: {}\n",
        redis.port
    ));
    let rt = sim_runtime();
    let ctx = brine_transport::Context::new();
    let ids: Vec<String> = (0..3).map(|i| format!("ev{i}")).collect();
    let _sims = attach_sims(&m, &rt, &ctx, &ids);
    let token = root_token(&m);
    let events = brine_test_support::topology::sse_tags("127.0.0.1", m.ports.2, &token);
    std::thread::sleep(Duration::from_millis(300));
    let stream = "salt:events:mom-ev";
    let rets = |redis: &RedisServer, jid: &str| {
        let tags: Vec<String> = stream_entries(redis, stream)
            .into_iter()
            .map(|(t, _)| t)
            .collect();
        ids.iter()
            .map(|id| {
                let t = format!("salt/job/{jid}/ret/{id}");
                tags.iter().filter(|x| **x == t).count()
            })
            .collect::<Vec<usize>>()
    };

    let (jid, got) = ping(&m, &token, "ev*");
    assert_eq!(got, all_true(&ids));
    assert!(
        wait_for(Duration::from_secs(10), || rets(&redis, &jid)
            == vec![1, 1, 1]),
        "each return event once in {stream}: {:?}\n{}",
        stream_entries(&redis, stream),
        m.log_tail()
    );
    let entries = stream_entries(&redis, stream);
    let ret = entries
        .iter()
        .find(|(t, _)| *t == format!("salt/job/{jid}/ret/ev0"))
        .map(|(_, d)| d.clone())
        .unwrap();
    assert_eq!(
        (&ret["return"], &ret["id"]),
        (&json!(true), &json!("ev0")),
        "{ret}"
    );
    assert!(
        !entries.iter().any(|(t, _)| t.ends_with("/new")),
        "the blacklist keeps salt/job/*/new out: {entries:?}"
    );

    // Redis killed: the bus and the jobs go on; once a Redis is back, what was taken meanwhile
    // is written, each event once (the new server starts empty).
    redis.stop();
    let (down_jid, got) = ping(&m, &token, "ev*");
    assert_eq!(got, all_true(&ids), "a job while Redis is down");
    let tags = |t: &str| tags_in(&events, t);
    assert!(
        wait_for(Duration::from_secs(10), || tags(
            "salt/brine/event_return/degraded"
        ) == 1),
        "{}",
        m.log_tail()
    );
    redis.spawn();
    assert!(
        wait_for(Duration::from_secs(15), || tags(
            "salt/brine/event_return/recovered"
        ) == 1),
        "{}",
        m.log_tail()
    );
    assert!(
        wait_for(Duration::from_secs(5), || rets(&redis, &down_jid)
            == vec![1, 1, 1]),
        "the down job's return events once each: {:?}",
        stream_entries(&redis, stream)
    );
    // Entry ids only grow: the stream kept its order.
    let ids_raw = redis.cli(&["XRANGE", stream, "-", "+"]);
    let entry_ids: Vec<(u64, u64)> = ids_raw
        .lines()
        .filter_map(|l| {
            let (a, b) = l.split_once('-')?;
            Some((a.parse().ok()?, b.parse().ok()?))
        })
        .collect();
    assert!(!entry_ids.is_empty());
    assert!(entry_ids.windows(2).all(|w| w[0] < w[1]), "{entry_ids:?}");
}
