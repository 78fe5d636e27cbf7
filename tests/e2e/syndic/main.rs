//! The syndic tier (issue 5), with real peers: architecture #5 (two hot mofm, three brine
//! syndics connected to both, real salt-minions failing over between the syndics) surviving
//! `kill -9` of a syndic and of a MoM mid-job; architecture #6 (three masters, each a syndic of
//! the other two) delivering each job once to each minion and each return once; and a brine
//! syndic under a real salt-master acting as master of masters.

use std::path::Path;
use std::time::Duration;

use brine_test_support::sim::{SimOptions, cached_key, sim_runtime};
use brine_test_support::topology::{Node, async_jid, loopback, sse_tags, start_syndic};
use brine_test_support::{SaltMaster, SaltMinion, SaltPeer, SimMinion, subscribe, wait_for};
use serde_json::{Value as Json, json};

fn mofm_conf(root: &Path, addr: &str, ports: (u16, u16), api: u16, extra: &str) -> String {
    format!(
        "root_dir: {root}\ninterface: {addr}\npublish_port: {}\nret_port: {}\n\
         rest_cherrypy: {{host: {addr}, port: {api}}}\nauto_accept: True\norder_masters: True\n\
         gather_job_timeout: 3\n{extra}\n",
        ports.0,
        ports.1,
        root = root.display()
    )
}

/// Start mofm `name` as a master of masters on `addr` (config: [`mofm_conf`] + `extra`, files
/// under `root/name/etc`) and wait for its HTTP API.
fn start_mom(root: &Path, name: &str, addr: &str, ports: (u16, u16), extra: &str) -> Node {
    let api = api_port(addr);
    let n = Node::start(
        "mofm",
        name,
        addr,
        &root.join(name).join("etc"),
        &[("master", mofm_conf(root, addr, ports, api, extra))],
    );
    n.wait_port(api);
    n
}

fn api_port(addr: &str) -> u16 {
    std::net::TcpListener::bind((addr, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn all_true(v: &Json, ids: &[String]) -> bool {
    v.as_object().is_some_and(|m| {
        m.len() == ids.len() && ids.iter().all(|id| m.get(id) == Some(&json!(true)))
    })
}

fn tails(nodes: &[&Node]) -> String {
    nodes
        .iter()
        .map(|n| n.log_tail(25))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Returns recorded for `jid` in a master's job cache, one line per return.
fn cached_returns(root: &Path, cachedir: &str, jid: &str) -> Vec<String> {
    let p = root
        .join(cachedir.trim_start_matches('/'))
        .join("brine/jobs")
        .join(jid)
        .join("returns.jsonl");
    std::fs::read_to_string(p)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            serde_json::from_str::<Json>(l)
                .ok()?
                .get("id")?
                .as_str()
                .map(str::to_owned)
        })
        .collect()
}

/// Architecture #5 with real salt-minions 3007.17: test.ping from either MoM reaches each
/// minion once; `kill -9` of a syndic, its minions fail over and the next job reaches all;
/// `kill -9` of the publishing MoM mid-job, the job's returns land on the other MoM, which
/// keeps publishing.
#[test]
fn arch5_real_minions_under_brine_syndics_survive_kills() {
    subscribe();
    let peer = SaltPeer::get("3007.17");
    let (addrs, publish, ret) = loopback(5);
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let mut moms: Vec<Node> = (0..2)
        .map(|i| {
            start_mom(
                root,
                &format!("mom-{i}"),
                &addrs[i],
                (publish, ret),
                &format!("pki_dir: /mom-pki\ncachedir: /mom-{i}/cache\nmaster_id: mom-{i}"),
            )
        })
        .collect();
    let syndic_addrs = &addrs[2..5];
    let mut syndics: Vec<Node> = (0..3)
        .map(|j| {
            let addr = &syndic_addrs[j];
            let master = format!(
                "root_dir: {root}\ninterface: {addr}\npublish_port: {publish}\nret_port: {ret}\n\
                 auto_accept: True\npki_dir: /syndic-pki\ncachedir: /syndic-{j}/cache\n\
                 gather_job_timeout: 3\nsyndic_master: [{}, {}]\nsyndic_master_port: {ret}\n",
                addrs[0],
                addrs[1],
                root = root.display()
            );
            let minion = format!(
                "id: syndic-{j}\nroot_dir: {root}\npki_dir: /syndic-{j}/minion-pki\n\
                 cachedir: /syndic-{j}/minion-cache\n",
                root = root.display()
            );
            let n = Node::start(
                "syndic",
                &format!("syndic-{j}"),
                addr,
                &root.join(format!("syndic-{j}/etc")),
                &[("master", master), ("minion", minion)],
            );
            n.wait_port(ret);
            n
        })
        .collect();
    // Every syndic registered on both MoMs (heartbeats are authenticated requests).
    assert!(
        wait_for(Duration::from_secs(30), || {
            (0..2).all(|i| {
                (0..3).all(|j| {
                    root.join(format!("mom-{i}/cache/syndics/syndic-{j}"))
                        .exists()
                })
            })
        }),
        "{}",
        tails(&syndics.iter().chain(&moms).collect::<Vec<_>>())
    );
    let ids: Vec<String> = (0..3).map(|k| format!("arch5-{k}")).collect();
    let mut minions: Vec<SaltMinion> = (0..3)
        .map(|k| {
            let list: Vec<&str> = (0..3).map(|o| syndic_addrs[(k + o) % 3].as_str()).collect();
            SaltMinion::start_failover(&peer, &ids[k], &list, (publish, ret))
        })
        .collect();
    assert!(
        wait_for(Duration::from_secs(150), || all_true(
            &moms[0].brine_json(&["*", "test.ping", "-t", "5"]),
            &ids
        )),
        "{}\n{}",
        tails(&moms.iter().chain(&syndics).collect::<Vec<_>>()),
        minions[0].log_tail(20)
    );

    // From either MoM: every minion once, executed once.
    for mom in &moms {
        let out = mom.brine(&["*", "test.ping", "--async"]);
        let jid = async_jid(&out);
        assert_eq!(jid.len(), 20, "{}", String::from_utf8_lossy(&out.stdout));
        assert!(
            wait_for(Duration::from_secs(30), || all_true(
                &mom.brine_run_json(&["jobs.lookup_jid", &jid]),
                &ids
            )),
            "{}",
            tails(&moms.iter().chain(&syndics).collect::<Vec<_>>())
        );
        std::thread::sleep(Duration::from_secs(1));
        for m in &minions {
            let runs = m
                .log()
                .lines()
                .filter(|l| l.contains("Executing command") && l.contains(&jid))
                .count();
            assert_eq!(runs, 1, "{} ran {jid} {runs} times", m.id);
        }
        let cache = mom.name.replace("mom-", "/mom-") + "/cache";
        let mut rets = cached_returns(root, &cache, &jid);
        rets.sort();
        assert_eq!(rets, ids, "each return once in {}'s job cache", mom.name);
    }

    // A job outliving the MoM's timeout: the MoM asks with saltutil.find_job, the syndics answer
    // from their trackers (the MoM's find_job never reaches a minion), and the job waits for the
    // returns.
    let slow = moms[0].brine_json(&["*", "test.sleep", "5", "-t", "1"]);
    assert!(
        all_true(&slow, &ids),
        "{slow}\n{}",
        tails(&moms.iter().chain(&syndics).collect::<Vec<_>>())
    );
    let mom_find_jobs: Vec<String> = moms[0]
        .log()
        .lines()
        .filter(|l| l.contains("asking silent minions"))
        .filter_map(|l| l.split("find_job_jid=").nth(1))
        .filter_map(|r| r.split_whitespace().next())
        .map(str::to_owned)
        .collect();
    assert!(
        !mom_find_jobs.is_empty(),
        "the MoM asked about the slow job"
    );
    assert!(
        syndics
            .iter()
            .map(|s| s.log_count("answering find_job from the tracker"))
            .sum::<usize>()
            > 0,
        "{mom_find_jobs:?}\n{}",
        tails(&moms.iter().chain(&syndics).collect::<Vec<_>>())
    );
    for m in &minions {
        let log = m.log();
        for fj in &mom_find_jobs {
            assert!(
                !log.contains(fj.as_str()),
                "{} saw the MoM's find_job {fj}",
                m.id
            );
        }
    }

    // kill -9 a syndic that has minions: they fail over, and a later job reaches all of them.
    let busy = (0..3)
        .find(|j| syndics[*j].log_count("authentication minion_id=arch5-") > 0)
        .expect("some syndic has minions");
    syndics[busy].kill9();
    assert!(
        wait_for(Duration::from_secs(120), || all_true(
            &moms[1].brine_json(&["*", "test.ping", "-t", "5"]),
            &ids
        )),
        "after killing syndic-{busy}:\n{}\n{}",
        tails(&moms.iter().chain(&syndics).collect::<Vec<_>>()),
        minions
            .iter_mut()
            .map(|m| m.log_tail(15))
            .collect::<Vec<_>>()
            .join("\n")
    );

    // kill -9 the publishing MoM mid-job: the returns land on the other one.
    let out = moms[0].brine(&["*", "test.sleep", "4", "--async"]);
    let jid = async_jid(&out);
    assert_eq!(jid.len(), 20, "{}", String::from_utf8_lossy(&out.stdout));
    std::thread::sleep(Duration::from_secs(1));
    moms[0].kill9();
    let mut seen = Json::Null;
    assert!(
        wait_for(Duration::from_secs(60), || {
            seen = moms[1].brine_run_json(&["jobs.lookup_jid", &jid]);
            all_true(&seen, &ids)
        }),
        "returns of {jid} after mom-0 died: {seen}\n{}",
        tails(&moms.iter().chain(&syndics).collect::<Vec<_>>())
    );
    assert!(
        all_true(&moms[1].brine_json(&["*", "test.ping", "-t", "5"]), &ids),
        "{}",
        tails(&moms.iter().chain(&syndics).collect::<Vec<_>>())
    );
    drop(minions);
}

/// Architecture #6: three masters, each a syndic of the other two. A job from any of them
/// reaches each minion once, each return reaches the publisher once, and no master relays a
/// job twice (no loops).
#[test]
fn arch6_masters_syndicating_each_other_deliver_once() {
    subscribe();
    let (addrs, publish, ret) = loopback(3);
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    // One master key for all three (each is a master of masters to the others, and a syndic's
    // links cache one master key, as in Salt).
    let names = ["ma", "mb", "mc"];
    let mut masters = Vec::new();
    let mut apis = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let addr = &addrs[i];
        let api = api_port(addr);
        apis.push((addr.clone(), api));
        let others: Vec<&str> = (0..3)
            .filter(|k| *k != i)
            .map(|k| addrs[k].as_str())
            .collect();
        let conf = mofm_conf(
            &root.join(name),
            addr,
            (publish, ret),
            api,
            &format!(
                "syndic_master: [{}]\nsyndic_master_port: {ret}\nsyndic_wait: 3",
                others.join(", ")
            ),
        );
        let minion = format!(
            "id: {name}\nroot_dir: {}\n",
            root.join(name).join("syndic").display()
        );
        if i > 0 {
            let from = root.join("ma/etc/salt/pki/master");
            let to = root.join(name).join("etc/salt/pki/master");
            std::fs::create_dir_all(&to).unwrap();
            for f in ["master.pem", "master.pub"] {
                std::fs::copy(from.join(f), to.join(f)).unwrap();
            }
        }
        let n = Node::start(
            "mofm",
            name,
            addr,
            &root.join(name).join("etc"),
            &[("master", conf), ("minion", minion)],
        );
        n.wait_port(api);
        masters.push(n);
    }
    // Every master registered the other two as its syndics (their links are up: events fired
    // while a link is down are not kept for it).
    assert!(
        wait_for(Duration::from_secs(60), || {
            names.iter().all(|a| {
                names.iter().filter(|b| *b != a).all(|b| {
                    root.join(a)
                        .join("var/cache/salt/master/syndics")
                        .join(b)
                        .exists()
                })
            })
        }),
        "{}",
        masters
            .iter()
            .map(|n| n.log_tail(20))
            .collect::<Vec<_>>()
            .join("\n")
    );
    // Watch each master's event bus from before the minions start.
    let buses: Vec<_> = names
        .iter()
        .zip(&apis)
        .map(|(name, (addr, api))| {
            let tok = std::fs::read_to_string(
                root.join(name)
                    .join("var/cache/salt/master/brine/root_token"),
            )
            .unwrap();
            sse_tags(addr, *api, tok.trim())
        })
        .collect();
    // One brine minion on each master.
    let mut minions = Vec::new();
    let ids: Vec<String> = names.iter().map(|n| format!("{n}-minion")).collect();
    for (i, id) in ids.iter().enumerate() {
        let d = root.join(id);
        let conf = format!(
            "root_dir: {}\nid: {id}\nmaster: {}\nmaster_port: {ret}\npublish_port: {publish}\n\
             acceptance_wait_time: 1\n",
            d.display(),
            addrs[i]
        );
        minions.push(Node::start(
            "minion",
            id,
            id,
            &d.join("etc"),
            &[("minion", conf)],
        ));
    }
    let all = || {
        masters
            .iter()
            .chain(&minions)
            .map(|n| n.log_tail(20))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert!(
        wait_for(Duration::from_secs(90), || {
            masters
                .iter()
                .all(|m| all_true(&m.brine_json(&["*", "test.ping", "-t", "5"]), &ids))
        }),
        "{}",
        all()
    );
    // Events go up once: each master's bus shows each minion's start event exactly once
    // (directly, or under syndic/<id>/ from the master it is attached to), never looped back.
    std::thread::sleep(Duration::from_secs(2));
    for (name, bus) in names.iter().zip(&buses) {
        let seen = bus.lock().unwrap().clone();
        for id in &ids {
            let origin = format!("salt/minion/{id}/start");
            let copies: Vec<&String> = seen
                .iter()
                .filter(|t| brine_master_core::upstream::origin_tag(t, name).0 == origin)
                .collect();
            assert_eq!(copies.len(), 1, "{name} saw {origin} as {copies:?}");
        }
    }
    for (i, m) in masters.iter().enumerate() {
        let before: Vec<usize> = masters
            .iter()
            .map(|x| x.log_count("relayed from upper master"))
            .collect();
        let out = m.brine(&["*", "test.ping", "--async"]);
        let jid = async_jid(&out);
        assert_eq!(jid.len(), 20, "{}", String::from_utf8_lossy(&out.stdout));
        assert!(
            wait_for(Duration::from_secs(30), || all_true(
                &m.brine_run_json(&["jobs.lookup_jid", &jid]),
                &ids
            )),
            "{}",
            all()
        );
        // Let any loop show itself.
        std::thread::sleep(Duration::from_secs(3));
        for n in &minions {
            assert_eq!(
                n.log_count(&format!("executing job jid={jid}")),
                1,
                "{} ran {jid} once",
                n.name
            );
        }
        let mut rets = cached_returns(&root.join(names[i]), "/var/cache/salt/master", &jid);
        rets.sort();
        assert_eq!(rets, ids, "each return once at {}", names[i]);
        for (k, x) in masters.iter().enumerate() {
            let relays = x.log_count(&format!("relayed from upper master jid={jid}"));
            assert_eq!(
                relays,
                usize::from(k != i),
                "{} relayed {jid} {relays} times",
                x.name
            );
            assert_eq!(
                x.log_count("relayed from upper master") - before[k],
                usize::from(k != i)
            );
        }
    }
}

/// A brine syndic under a real salt-master with `order_masters: True`: `salt '*' test.ping` on
/// the real MoM gets the brine minion below the brine syndic.
fn brine_syndic_under_salt_master(version: &str) {
    subscribe();
    let peer = SaltPeer::get(version);
    let mom = SaltMaster::start(&peer, "order_masters: True\nsyndic_wait: 3");
    let (addrs, publish, ret) = loopback(1);
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let v = version.replace('.', "-");
    let syn_id = format!("bsyn-{v}");
    let master = format!(
        "root_dir: {root}\ninterface: {}\npublish_port: {publish}\nret_port: {ret}\n\
         auto_accept: True\nsyndic_master: 127.0.0.1\nsyndic_master_port: {}\n",
        addrs[0],
        mom.ret_port,
        root = root.join("syndic").display()
    );
    let minion = format!(
        "id: {syn_id}\nroot_dir: {}\npublish_port: {}\n",
        root.join("syndic").display(),
        mom.publish_port
    );
    let syndic = Node::start(
        "syndic",
        "syndic",
        &addrs[0],
        &root.join("syndic/etc"),
        &[("master", master), ("minion", minion)],
    );
    let under = format!("under-bsyn-{v}");
    let d = root.join("minion");
    let mconf = format!(
        "root_dir: {}\nid: {under}\nmaster: {}\nmaster_port: {ret}\npublish_port: {publish}\n\
         acceptance_wait_time: 1\n",
        d.display(),
        addrs[0]
    );
    let m = Node::start(
        "minion",
        &under,
        &under,
        &d.join("etc"),
        &[("minion", mconf)],
    );
    assert!(
        wait_for(Duration::from_secs(60), || mom
            .pki_dir()
            .join("minions")
            .join(&syn_id)
            .exists()),
        "{}\n{}",
        syndic.log_tail(30),
        mom.log_tail(30)
    );
    assert!(
        wait_for(Duration::from_secs(90), || {
            let out = mom.salt(&["*", "test.ping", "-t", "5", "--out", "json", "--static"]);
            serde_json::from_slice::<Json>(&out.stdout)
                .ok()
                .and_then(|v| v.get(&under).cloned())
                == Some(json!(true))
        }),
        "{}\n{}\n{}",
        syndic.log_tail(30),
        m.log_tail(20),
        mom.log_tail(40)
    );
    assert_eq!(
        mom.salt_json(&[&under, "cmd.run", "echo via-brine-syndic"])
            .get(&under),
        Some(&json!("via-brine-syndic")),
        "{}",
        syndic.log_tail(30)
    );
}

#[test]
fn brine_syndic_under_real_salt_master_3006() {
    brine_syndic_under_salt_master("3006.30");
}

#[test]
fn brine_syndic_under_real_salt_master_3007() {
    brine_syndic_under_salt_master("3007.17");
}

#[test]
fn brine_syndic_under_real_salt_master_3008() {
    brine_syndic_under_salt_master("3008.5");
}

/// A minion behind a brine syndic that answers its syndic's `find_job` too late (as on a
/// saturated host) but returns: the syndic's own wait for it runs out first (it relays with a
/// timeout one second shorter than the MoM's), yet the MoM's CLI still shows the return instead
/// of "did not return".
#[test]
fn a_late_minion_behind_a_syndic_is_still_waited_for() {
    subscribe();
    let (addrs, publish, ret) = loopback(2);
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let mom = start_mom(
        root,
        "mom",
        &addrs[0],
        (publish, ret),
        "pki_dir: /mom/pki\ncachedir: /mom/cache",
    );
    let syndic = start_syndic(
        root,
        "syn",
        "syndic-late",
        &addrs[1],
        &addrs[0],
        (publish, ret),
    );
    assert!(
        wait_for(Duration::from_secs(30), || root
            .join("mom/cache/syndics/syndic-late")
            .exists()),
        "{}",
        tails(&[&mom, &syndic])
    );
    let rt = sim_runtime();
    let ctx = brine_transport::Context::new();
    let _late = rt
        .block_on(SimMinion::start_with(
            &ctx,
            "late-1",
            cached_key(1),
            (&addrs[1], ret, publish),
            Duration::from_secs(30),
            SimOptions {
                answer_find_job: false,
                ..SimOptions::default()
            },
        ))
        .unwrap();
    // MoM timeout 3 s: the syndic relays with 2 s, asks late-1 at 2 s and gives up on it at
    // 5 s (gather_job_timeout 3); the MoM asks the syndic at 3 s and 6 s; late-1 returns at 8 s.
    let t0 = std::time::Instant::now();
    let out = mom.brine_json(&["late-1", "test.sleep", "8", "-t", "3"]);
    assert_eq!(
        out,
        json!({"late-1": true}),
        "after {:?}\n{}",
        t0.elapsed(),
        tails(&[&mom, &syndic])
    );
}
