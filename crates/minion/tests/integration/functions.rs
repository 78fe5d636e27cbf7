//! A real salt-master cannot tell the brine minion from a real salt-minion: the same commands,
//! sent by the real `salt` CLI to both at once, leave the same returns, retcodes, success flags
//! and outputters in the master's job cache.

use std::time::Duration;

use brine_test_support::{SaltMaster, SaltMinion, SaltPeer, subscribe};
use serde_json::{Value as Json, json};

use crate::{BrineMinion, job_cache, wait_responding};

const GRAINS: &str = "grains:\n  roles: [web, db]\n  deep: {a: {b: c}}\n";

fn mask_pid(v: &mut Json) {
    if let Some(o) = v.as_object_mut()
        && o.contains_key("pid")
    {
        o.insert("pid".into(), json!("<pid>"));
    }
}

fn compare(version: &str) {
    subscribe();
    let peer = SaltPeer::get(version);
    let master = SaltMaster::start(&peer, "");
    let real = SaltMinion::start(
        &peer,
        "real-m",
        master.publish_port,
        master.ret_port,
        GRAINS,
    );
    // brine presents as the fleet's Salt release, so version-specific shapes match too.
    let ours = BrineMinion::start(
        &master,
        "brine-m",
        &format!("{GRAINS}brine_salt_version: '{version}'\n"),
    );
    assert!(
        wait_responding(&master, &["real-m", "brine-m"], Duration::from_secs(120)),
        "minions not answering on salt {version}\nbrine:\n{}\nreal:\n{}",
        ours.log(),
        real.log_tail(30)
    );
    let script = ours.dir.path().join("script.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\necho \"args: $*\"\necho warn >&2\nexit 2\n",
    )
    .unwrap();
    let script = script.to_str().unwrap().to_owned();
    let commands: Vec<Vec<&str>> = vec![
        vec!["test.ping"],
        vec!["test.echo", "hello world"],
        vec!["test.arg", "1", "two", "a=b"],
        vec!["test.true"],
        vec!["test.false"],
        vec!["test.retcode", "3"],
        vec!["test.retcode"],
        vec!["test.sleep", "1"],
        vec!["cmd.run", "echo out; echo err >&2; exit 3"],
        vec!["cmd.run_all", "echo out; echo err >&2; exit 3"],
        vec!["cmd.run_stdout", "echo out; echo err >&2"],
        vec!["cmd.run_stderr", "echo out; echo err >&2"],
        vec!["cmd.retcode", "exit 5"],
        vec!["cmd.shell", "echo a | tr a b"],
        vec!["cmd.run", "pwd", "cwd=/tmp"],
        vec!["cmd.script", &script, "x y"],
        vec!["grains.item", "os", "os_family", "kernel", "roles"],
        vec!["grains.get", "deep:a:b"],
        vec!["grains.get", "roles"],
        vec!["grains.get", "nope"],
        vec!["saltutil.sync_all"],
        vec!["saltutil.running"],
        vec!["saltutil.find_job", "20200101000000000000"],
        vec!["nope.nope"],
        vec!["test.nope"],
    ];
    for c in &commands {
        let mut args = vec!["-L", "real-m,brine-m"];
        args.extend(c.iter().copied());
        let v = master.salt_json(&args);
        assert!(
            v.get("brine-m").is_some() && v.get("real-m").is_some(),
            "{c:?}: {v}"
        );
    }

    // Everything the two minions returned for the same jobs, as the master stored it.
    let cache = job_cache(&master);
    let mut compared = 0;
    for (jid, job) in cache.as_object().unwrap() {
        let rets = &job["returns"];
        let (Some(real), Some(brine)) = (rets.get("real-m"), rets.get("brine-m")) else {
            continue;
        };
        let fun = job["fun"].as_str().unwrap_or_default();
        let (mut real, mut brine) = (real.clone(), brine.clone());
        for r in [&mut real, &mut brine] {
            mask_pid(&mut r["return"]);
        }
        if fun == "cmd.script" {
            // Salt's cmd.script runs the cached copy; only stdout, stderr and retcode are ours to match.
            assert_eq!(
                real["return"]["stdout"], brine["return"]["stdout"],
                "{fun} stdout"
            );
            assert_eq!(real["retcode"], brine["retcode"], "{fun} retcode");
            compared += 1;
            continue;
        }
        assert_eq!(
            real, brine,
            "salt {version}, jid {jid}, {fun} {}: real minion vs brine minion",
            job["arg"]
        );
        compared += 1;
    }
    assert!(compared >= commands.len(), "compared {compared} jobs");

    // grains.items: every grain the issue names is there, and static grains apply.
    let items: Json = master.salt_json(&["brine-m", "grains.items"]);
    let g = &items["brine-m"];
    for k in [
        "id",
        "host",
        "fqdn",
        "domain",
        "os",
        "os_family",
        "osrelease",
        "oscodename",
        "osfullname",
        "kernel",
        "kernelrelease",
        "cpuarch",
        "num_cpus",
        "cpu_model",
        "mem_total",
        "ip4_interfaces",
        "ip6_interfaces",
        "ipv4",
        "ipv6",
        "hwaddr_interfaces",
        "machine_id",
        "saltversion",
        "roles",
    ] {
        assert!(g.get(k).is_some(), "grain {k} missing: {g}");
    }
    let both: Json = master.salt_json(&[
        "-L",
        "real-m,brine-m",
        "grains.item",
        "os",
        "osrelease",
        "num_cpus",
    ]);
    assert_eq!(
        both["real-m"], both["brine-m"],
        "computed grains agree with Salt's"
    );

    // sys.list_functions: everything brine offers exists on a real minion under the same name.
    let lists: Json = master.salt_json(&["-L", "real-m,brine-m", "sys.list_functions"]);
    let real_funs = lists["real-m"]
        .as_array()
        .unwrap_or_else(|| panic!("sys.list_functions: {lists}"));
    for f in lists["brine-m"]
        .as_array()
        .unwrap_or_else(|| panic!("sys.list_functions: {lists}"))
    {
        assert!(real_funs.contains(f), "{f} is not a real Salt function");
    }
    let doc: Json = master.salt_json(&["brine-m", "sys.doc", "test.ping"]);
    // The salt CLI merges sys.doc returns and prints them without minion ids.
    assert!(
        doc["test.ping"]
            .as_str()
            .unwrap_or_default()
            .contains("Not an ICMP ping"),
        "{doc}"
    );

    // Running jobs: find_job and running report them like a real minion, kill_job stops them.
    let jid = master.salt_async(&["-L", "real-m,brine-m", "test.sleep", "60"]);
    std::thread::sleep(Duration::from_secs(2));
    let found: Json = master.salt_json(&["-L", "real-m,brine-m", "saltutil.find_job", &jid]);
    let (mut r, mut b) = (found["real-m"].clone(), found["brine-m"].clone());
    mask_pid(&mut r);
    mask_pid(&mut b);
    assert_eq!(r, b, "find_job of a running test.sleep");
    assert_eq!(b["fun"], "test.sleep");
    let killed: Json = master.salt_json(&["brine-m", "saltutil.kill_job", &jid]);
    assert!(
        killed["brine-m"]
            .as_str()
            .unwrap()
            .starts_with(&format!("Signal 9 sent to job {jid}")),
        "{killed}"
    );
    let gone: Json = master.salt_json(&["brine-m", "saltutil.find_job", &jid]);
    assert_eq!(gone["brine-m"], json!({}), "killed job no longer running");

    let v: Json = master.salt_json(&["brine-m", "test.version"]);
    assert_eq!(
        v["brine-m"], version,
        "the Salt version brine's minion presents as"
    );
    drop(real);
}

#[test]
fn same_results_as_real_minion_3006() {
    compare("3006.30");
}

#[test]
fn same_results_as_real_minion_3007() {
    compare("3007.17");
}

#[test]
fn same_results_as_real_minion_3008() {
    compare("3008.5");
}
