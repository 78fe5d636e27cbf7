//! Salt's workloads through brine masters, against real Salt 3006.30, 3007.17 and 3008.5 (never
//! skipped): the state tree in `workloads/tree` (a `file.managed` rendered with Jinja from
//! pillar and grains, a `file.recurse`, a `cmd.run` with `onchanges`, a `require` chain across
//! included sls files, a top file giving two minions different states and pillar) applied by
//! real salt-minions on a real salt-master, then on mofm, then below a brine syndic; the job
//! returns (timing fields and pids masked) and the files written are the same. Also: pillar
//! targeting, `mine.get` across minions, a scheduled job's return in `jobs.list_jobs`, path
//! traversal refused, and the brine minion on a real salt-master (grain and compound targeting
//! match it, its `pillar.items` is what the master compiles).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use brine_test_support::topology::{Node, loopback, start_syndic_with};
use brine_test_support::{
    SaltMaster, SaltMinion, SaltPeer, free_port, subscribe, wait_for, write_config,
};
use serde_json::{Value as Json, json};

/// The sample state tree, copied (so a test can add what must not be committed: a symlink
/// leading out of the roots).
fn tree(dir: &Path) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("workloads/tree");
    let dst = dir.join("tree");
    copy_dir(&src, &dst);
    std::os::unix::fs::symlink("/etc", dst.join("salt/escape")).expect("symlink");
    dst
}

fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).expect("mkdir");
    for e in std::fs::read_dir(src).expect("read tree") {
        let e = e.expect("entry");
        let to = dst.join(e.file_name());
        if e.file_type().expect("type").is_dir() {
            copy_dir(&e.path(), &to);
        } else {
            std::fs::copy(e.path(), &to).expect("copy");
        }
    }
}

fn roots(tree: &Path) -> String {
    format!(
        "file_roots: {{base: [{t}/salt]}}\npillar_roots: {{base: [{t}/pillar]}}\n",
        t = tree.display()
    )
}

/// A salt-minion's configuration: its output directory as a grain, mine functions, and a
/// scheduled job that returns to the master.
fn minion_extra(out: &Path, id: &str) -> String {
    format!(
        "grains: {{outdir: {}}}\nmine_functions: {{grains.item: [id]}}\n\
         schedule: {{sched_echo: {{function: test.echo, args: [scheduled], seconds: 3, return_job: True}}}}\n",
        out.join(id).display()
    )
}

/// `salt ARGS --out json --static`, parsed (`Null` when it prints no JSON: no minion answered
/// yet).
fn salt_json(m: &SaltMaster, args: &[&str]) -> Json {
    let mut all = args.to_vec();
    all.extend(["--out", "json", "--static", "-t", "60"]);
    serde_json::from_slice(&m.salt(&all).stdout).unwrap_or(Json::Null)
}

/// Timing fields and process ids differ from run to run.
fn mask(v: &mut Json) {
    match v {
        Json::Object(o) => {
            for (k, x) in o.iter_mut() {
                if matches!(k.as_str(), "duration" | "start_time" | "pid") {
                    *x = json!("<masked>");
                } else {
                    mask(x);
                }
            }
        }
        Json::Array(a) => a.iter_mut().for_each(mask),
        _ => {}
    }
}

/// Every file under `dir` with its content.
fn files(dir: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(dir).unwrap().display().to_string();
                out.insert(rel, std::fs::read_to_string(&p).unwrap_or_default());
            }
        }
    }
    out
}

/// What a run of the workload shows.
#[derive(Debug)]
struct Seen {
    apply: Json,
    highstate: Json,
    pillar: Json,
    top: Json,
    synced: Json,
    mine: Json,
    written: BTreeMap<String, String>,
}

/// Run the workload through `run` (a `salt`/`brine` with JSON output).
fn workload(run: &dyn Fn(&[&str]) -> Json, out: &Path) -> Seen {
    let mut apply = run(&["*", "state.apply"]);
    mask(&mut apply);
    let written = files(out);
    let mut highstate = run(&["*", "state.highstate"]);
    mask(&mut highstate);
    let pillar = run(&["*", "pillar.items"]);
    let top = run(&["*", "state.show_top"]);
    let synced = run(&["*", "saltutil.sync_all"]);
    let updated = run(&["*", "mine.update"]);
    assert_eq!(updated, json!({"alpha": true, "beta": true}));
    let mine = run(&["alpha", "mine.get", "*", "grains.item"]);
    Seen {
        apply,
        highstate,
        pillar,
        top,
        synced,
        mine,
        written,
    }
}

fn both_answer(run: &dyn Fn(&[&str]) -> Json) -> bool {
    wait_for(Duration::from_secs(90), || {
        run(&["*", "test.ping", "-t", "3"]) == json!({"alpha": true, "beta": true})
    })
}

fn state_results_all_true(v: &Json) -> bool {
    v.as_object().is_some_and(|minions| {
        minions.values().all(|states| {
            states
                .as_object()
                .is_some_and(|s| !s.is_empty() && s.values().all(|st| st["result"] == json!(true)))
        })
    })
}

fn run_workloads(version: &str) {
    subscribe();
    let peer = SaltPeer::get(version);
    let dir = tempfile::tempdir().unwrap();
    let tree = tree(dir.path());
    let out = dir.path().join("out");
    // The minions share this machine: two of them creating `out` at once for their first file
    // makes one fail with EEXIST inside Salt's file.managed (a race of the test's layout, not of
    // the master that published the job).
    std::fs::create_dir_all(&out).unwrap();

    // 1. A real salt-master serving the tree, and the brine minion on it.
    let salt = {
        let m = SaltMaster::start(&peer, &roots(&tree));
        let alpha = SaltMinion::start(
            &peer,
            "alpha",
            m.publish_port,
            m.ret_port,
            &minion_extra(&out, "alpha"),
        );
        let beta = SaltMinion::start(
            &peer,
            "beta",
            m.publish_port,
            m.ret_port,
            &minion_extra(&out, "beta"),
        );
        let run = |a: &[&str]| salt_json(&m, a);
        assert!(
            both_answer(&run),
            "minions on salt-master:\n{}\n{}",
            alpha.log_tail(20),
            beta.log_tail(20)
        );
        let seen = workload(&run, &out);
        brine_minion_on_salt_master(&peer, &m, dir.path());
        seen
    };
    assert!(
        state_results_all_true(&salt.apply),
        "the tree applies on salt-master {version}: {:#}",
        salt.apply
    );
    assert_eq!(
        salt.top,
        json!({"alpha": {"base": ["web"]}, "beta": {"base": ["app"]}}),
        "state.show_top on salt-master {version}"
    );
    assert_eq!(salt.written.len(), 9, "{:?}", salt.written.keys());
    std::fs::remove_dir_all(&out).unwrap();
    std::fs::create_dir_all(&out).unwrap();

    // 2. The same minion versions on mofm.
    let (addrs, publish, ret) = loopback(2);
    let api = free_port();
    let root = dir.path().join("brine");
    let mofm = Node::start(
        "mofm",
        "mofm",
        &addrs[0],
        &root.join("mofm/etc"),
        &[(
            "master",
            format!(
                "root_dir: {r}\ninterface: {a}\npublish_port: {publish}\nret_port: {ret}\n\
                 rest_cherrypy: {{port: {api}}}\nauto_accept: True\norder_masters: True\n\
                 pki_dir: /mofm/pki\ncachedir: /mofm/cache\ngather_job_timeout: 5\n{roots}",
                r = root.display(),
                a = addrs[0],
                roots = roots(&tree)
            ),
        )],
    );
    mofm.wait_port(ret);
    let brine = |a: &[&str]| mofm.brine_json(a);
    let on =
        |master: &str| format!("master: {master}\nmaster_port: {ret}\npublish_port: {publish}\n");
    {
        let alpha = SaltMinion::start_conf(
            &peer,
            "alpha",
            &(on(&addrs[0]) + &minion_extra(&out, "alpha")),
        );
        let beta = SaltMinion::start_conf(
            &peer,
            "beta",
            &(on(&addrs[0]) + &minion_extra(&out, "beta")),
        );
        assert!(
            both_answer(&brine),
            "minions on mofm:\n{}\n{}\n{}",
            alpha.log_tail(20),
            beta.log_tail(20),
            mofm.log_tail(30)
        );
        let seen = workload(&brine, &out);
        assert_eq!(
            seen.apply, salt.apply,
            "state.apply on mofm vs salt-master {version}"
        );
        assert_eq!(
            seen.highstate, salt.highstate,
            "state.highstate on mofm vs salt-master {version}"
        );
        assert_eq!(seen.written, salt.written, "files written");
        assert_eq!(seen.pillar, salt.pillar, "pillar.items");
        assert_eq!(seen.top, salt.top, "state.show_top");
        assert_eq!(seen.synced, salt.synced, "saltutil.sync_all");
        assert_eq!(seen.mine, salt.mine, "mine.get");
        assert_eq!(
            seen.mine,
            json!({"alpha": {"alpha": {"id": "alpha"}, "beta": {"id": "beta"}}})
        );

        // Pillar targeting, alone and in a compound.
        assert_eq!(
            brine(&["-I", "role:beta", "test.ping"]),
            json!({"beta": true})
        );
        assert_eq!(
            brine(&["-C", "I@site:title:Welcome* and G@id:a*", "test.ping"]),
            json!({"alpha": true})
        );
        // The mine function beta's pillar adds, read by alpha.
        brine(&["beta", "mine.update"]);
        assert_eq!(
            brine(&["alpha", "mine.get", "*", "pillar_role"]),
            json!({"alpha": {"beta": "beta-from-pillar"}})
        );

        // The scheduled job's returns are jobs of their own.
        let sched = wait_for(Duration::from_secs(30), || {
            mofm.brine_run_json(&["jobs.list_jobs"])
                .as_object()
                .is_some_and(|jobs| {
                    jobs.iter().any(|(jid, j)| {
                        j["Function"] == json!("test.echo")
                            && j["Target"] == json!("alpha")
                            && mofm.brine_run_json(&["jobs.lookup_jid", jid])
                                == json!({"alpha": "scheduled"})
                    })
                })
        });
        assert!(
            sched,
            "no scheduled return in jobs.list_jobs:\n{}",
            mofm.log_tail(30)
        );

        // Paths leave no root: ../ and a symlink out of the tree serve nothing.
        let stolen = out.join("stolen");
        for src in [
            "salt://../../../../../etc/hostname",
            "salt://escape/hostname",
            "salt://web/../../pillar/top.sls",
        ] {
            let got = brine(&["alpha", "cp.get_file", src, &stolen.display().to_string()]);
            assert_eq!(got, json!({"alpha": ""}), "{src}");
            assert!(!stolen.exists(), "{src} was written");
        }
        let listed = brine(&["alpha", "cp.list_master"]);
        let listed: Vec<&str> = listed["alpha"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Json::as_str)
            .collect();
        assert!(listed.contains(&"web/init.sls"), "{listed:?}");
        assert!(
            !listed.iter().any(|f| f.starts_with("escape")),
            "{listed:?}"
        );
        assert!(mofm.log_count("refused") > 0, "{}", mofm.log_tail(30));
    }
    std::fs::remove_dir_all(&out).unwrap();
    std::fs::create_dir_all(&out).unwrap();

    // 3. The same minions below a brine syndic with its own roots (the same tree).
    let syndic = start_syndic_with(
        &root,
        "syndic",
        "syndic-1",
        &addrs[1],
        &addrs[0],
        (publish, ret),
        &roots(&tree),
    );
    for id in ["alpha", "beta"] {
        mofm.tool("brine-key", &["-y", "-d", id]);
    }
    let alpha = SaltMinion::start_conf(
        &peer,
        "alpha",
        &(on(&addrs[1]) + &minion_extra(&out, "alpha")),
    );
    let beta = SaltMinion::start_conf(
        &peer,
        "beta",
        &(on(&addrs[1]) + &minion_extra(&out, "beta")),
    );
    assert!(
        both_answer(&brine),
        "minions below the syndic:\n{}\n{}\n{}",
        alpha.log_tail(20),
        beta.log_tail(20),
        syndic.log_tail(30)
    );
    let mut apply = brine(&["*", "state.apply"]);
    mask(&mut apply);
    assert_eq!(
        apply, salt.apply,
        "state.apply below a brine syndic vs salt-master {version}"
    );
    assert_eq!(files(&out), salt.written);
    let mut highstate = brine(&["*", "state.highstate"]);
    mask(&mut highstate);
    assert_eq!(highstate, salt.highstate);
}

/// The brine minion on a real salt-master: its grains reach the master's cache (grain and
/// compound targets match it), and its pillar is what the master compiles for it.
fn brine_minion_on_salt_master(peer: &SaltPeer, m: &SaltMaster, dir: &Path) {
    let etc = dir.join("gamma/etc");
    write_config(
        &etc.join("minion"),
        &format!(
            "id: gamma\nroot_dir: {}\nmaster: 127.0.0.1\nmaster_port: {}\npublish_port: {}\n\
             acceptance_wait_time: 1\n",
            dir.join("gamma/root").display(),
            m.ret_port,
            m.publish_port
        ),
    );
    let node = Node::start("minion", "gamma", "gamma", &etc, &[]);
    let pinged = wait_for(Duration::from_secs(60), || {
        salt_json(m, &["gamma", "test.ping", "-t", "3"]) == json!({"gamma": true})
    });
    assert!(
        pinged,
        "brine minion on salt-master {}:\n{}",
        peer.version,
        node.log_tail(30)
    );
    let g = m.salt_json(&["-G", "kernel:Linux", "test.ping"]);
    assert_eq!(
        g["gamma"],
        json!(true),
        "-G on salt-master {}: {g}",
        peer.version
    );
    let c = m.salt_json(&["-C", "G@kernel:Linux and gam*", "test.ping"]);
    assert_eq!(
        c,
        json!({"gamma": true}),
        "-C on salt-master {}",
        peer.version
    );
    let items = m.salt_json(&["gamma", "pillar.items"]);
    let shown = peer
        .command("salt-run")
        .arg("-c")
        .arg(m.config_dir())
        .args(["pillar.show_pillar", "gamma", "--out", "json"])
        .output()
        .expect("salt-run");
    let shown: Json = serde_json::from_slice(&shown.stdout).unwrap_or(Json::Null);
    assert_eq!(items["gamma"], shown, "pillar.items vs pillar.show_pillar");
    assert_eq!(items["gamma"]["site"]["title"], json!("Welcome to gamma"));
    let raw = m.salt_json(&["gamma", "pillar.get", "site:owner"]);
    assert_eq!(raw, json!({"gamma": "alice"}));
    let script = m.salt_json(&["gamma", "cmd.script", "salt://scripts/hello.sh", "a b"]);
    assert_eq!(
        script["gamma"]["stdout"],
        json!("hello from the master, args: a b"),
        "{script}"
    );
    let got = m.salt_json(&[
        "gamma",
        "cp.get_file",
        "salt://web/site/about.html",
        &dir.join("gamma/about.html").display().to_string(),
    ]);
    assert_eq!(
        got["gamma"],
        json!(dir.join("gamma/about.html").display().to_string())
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("gamma/about.html")).unwrap(),
        "<p>About this site.</p>\n"
    );
}

#[test]
fn workloads_3006() {
    run_workloads("3006.30");
}

#[test]
fn workloads_3007() {
    run_workloads("3007.17");
}

#[test]
fn workloads_3008() {
    run_workloads("3008.5");
}

/// The requests a minion's file client and state system make, answered by a real salt-master
/// and by mofm serving the same tree: the same values, byte for byte (str and bin kept apart),
/// stat lists included (same files on the same machine). `_file_envs` is a set in Salt.
fn file_server_as_salt_master(version: &str) {
    use brine_proto::Value;
    use brine_test_support::sim::{HostileMinion, cached_key, sim_runtime};
    subscribe();
    let peer = SaltPeer::get(version);
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    copy_dir(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("workloads/tree"),
        &tree,
    );
    // What the sample tree lacks: a link inside the root, an empty file, an empty directory,
    // a file larger than one 1 MiB chunk.
    std::os::unix::fs::symlink("site/about.html", tree.join("salt/web/link.html")).unwrap();
    std::fs::write(tree.join("salt/zero.txt"), "").unwrap();
    std::fs::create_dir_all(tree.join("salt/empty/inner")).unwrap();
    let big: Vec<u8> = (0..2_500_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(tree.join("salt/big.bin"), &big).unwrap();
    let conf = roots(&tree);
    let salt = SaltMaster::start(&peer, &conf);
    let (addrs, publish, ret) = loopback(1);
    let api = free_port();
    let root = dir.path().join("brine");
    let mofm = Node::start(
        "mofm",
        "mofm",
        &addrs[0],
        &root.join("etc"),
        &[(
            "master",
            format!(
                "root_dir: {r}\ninterface: {a}\npublish_port: {publish}\nret_port: {ret}\n\
                 rest_cherrypy: {{port: {api}}}\nauto_accept: True\n{conf}",
                r = root.display(),
                a = addrs[0]
            ),
        )],
    );
    mofm.wait_port(ret);
    let rt = sim_runtime();
    let ctx = brine_transport::Context::new();
    let connect = |host: &str, port: u16| {
        rt.block_on(HostileMinion::connect(
            &ctx,
            "fileclient",
            cached_key(7),
            host,
            port,
            Duration::from_secs(60),
        ))
        .expect("authenticate")
    };
    let mut s = connect("127.0.0.1", salt.ret_port);
    let mut b = connect(&addrs[0], ret);
    let req = |cmd: &str, kv: &[(&str, Value)]| {
        let mut v = Value::map().with("cmd", cmd);
        for (k, x) in kv {
            v.insert(k, x.clone());
        }
        v
    };
    let env = ("saltenv", Value::str("base"));
    let p = |s: &str| ("path", Value::str(s));
    let prefix = |s: &str| ("prefix", Value::str(s));
    let loc = |n: i64| ("loc", Value::Int(n));
    let loads = vec![
        req("_master_opts", &[]),
        req("_master_opts", &[("env_only", Value::Bool(true))]),
        req("_master_tops", &[("id", Value::str("fileclient"))]),
        req("_ext_nodes", &[]),
        req("_file_list", &[env.clone(), prefix("")]),
        req("_file_list", &[env.clone(), prefix("web")]),
        req("_file_list", &[env.clone(), prefix("/web/site/")]),
        req("_file_list", &[("saltenv", Value::str("nope")), prefix("")]),
        req("_file_list_emptydirs", &[env.clone(), prefix("")]),
        req("_dir_list", &[env.clone(), prefix("")]),
        req("_symlink_list", &[env.clone(), prefix("")]),
        req("_file_hash", &[env.clone(), p("web/init.sls")]),
        req("_file_hash", &[env.clone(), p("web/link.html")]),
        req("_file_hash", &[env.clone(), p("missing.sls")]),
        req("_file_hash", &[env.clone(), p("../etc/passwd")]),
        req("_file_hash", &[env.clone(), p("/etc/passwd")]),
        req("_file_hash_and_stat", &[env.clone(), p("web/init.sls")]),
        req("_file_hash_and_stat", &[env.clone(), p("missing.sls")]),
        req("_file_find", &[env.clone(), p("web//site/./about.html")]),
        req("_file_find", &[env.clone(), p("missing")]),
        req("_serve_file", &[env.clone(), p("web/init.sls"), loc(0)]),
        req(
            "_serve_file",
            &[env.clone(), p("web/init.sls"), loc(100_000)],
        ),
        req("_serve_file", &[env.clone(), p("zero.txt"), loc(0)]),
        req("_serve_file", &[env.clone(), p("missing"), loc(0)]),
        req("_serve_file", &[env.clone(), p("../../etc/passwd"), loc(0)]),
        req("_serve_file", &[env.clone(), p("big.bin"), loc(0)]),
        req("_serve_file", &[env.clone(), p("big.bin"), loc(1_048_576)]),
        req("_serve_file", &[env.clone(), p("big.bin"), loc(2_097_152)]),
        req("_serve_file", &[env.clone(), p("big.bin"), loc(2_500_000)]),
        req("_serve_file", &[p("web/init.sls"), loc(0)]),
        req(
            "_mine_get",
            &[
                ("tgt", Value::str("*")),
                ("fun", Value::str("x")),
                ("id", Value::str("fileclient")),
            ],
        ),
        req("_mine_flush", &[("id", Value::str("fileclient"))]),
        req(
            "_mine_delete",
            &[("id", Value::str("fileclient")), ("fun", Value::str("x"))],
        ),
    ];
    for load in loads {
        let a = rt.block_on(s.send(load.clone()));
        let c = rt.block_on(b.send(load.clone()));
        assert!(
            matches!(a, brine_test_support::sim::Answer::Reply(_)),
            "salt-master {version} answered {load:?} with {a:?}"
        );
        if std::env::var_os("BRINE_SHOW_FILE_REPLIES").is_some() {
            eprintln!("{load:?}\n  -> {a:?}");
        }
        assert_eq!(c, a, "{version}: {load:?}");
    }
    // The list of environments is a set in Salt.
    let envs = |h: &mut HostileMinion| match rt.block_on(h.send(req("_file_envs", &[]))) {
        brine_test_support::sim::Answer::Reply(Value::Array(mut v)) => {
            v.sort_by_key(|x| x.as_str().unwrap_or_default().to_owned());
            v
        }
        other => panic!("_file_envs: {other:?}"),
    };
    assert_eq!(envs(&mut b), envs(&mut s));
    // A gzipped chunk: any gzip member holding the same bytes (the header has a time).
    let gz = req(
        "_serve_file",
        &[env, p("web/init.sls"), loc(0), ("gzip", Value::Int(5))],
    );
    let unzip = |h: &mut HostileMinion| match rt.block_on(h.send(gz.clone())) {
        brine_test_support::sim::Answer::Reply(v) => {
            use std::io::Read as _;
            let data = v
                .get("data")
                .and_then(Value::as_bytes)
                .expect("data")
                .to_vec();
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(&data[..])
                .read_to_end(&mut out)
                .expect("gzip");
            (out, v.get("dest").cloned(), v.get("gzip").cloned())
        }
        other => panic!("gzip: {other:?}"),
    };
    assert_eq!(unzip(&mut b), unzip(&mut s));
    drop(mofm);
}

#[test]
fn file_server_as_salt_master_3006() {
    file_server_as_salt_master("3006.30");
}

#[test]
fn file_server_as_salt_master_3007() {
    file_server_as_salt_master("3007.17");
}

#[test]
fn file_server_as_salt_master_3008() {
    file_server_as_salt_master("3008.5");
}
