//! The `minion` binary against real Salt masters (3006.30, 3007.17, 3008.5).

mod failover;
mod functions;
mod keys;
mod multimaster;
mod startup;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use brine_test_support::{Daemon, SaltMaster, TempDir, tail, wait_for};

/// A running brine `minion` with its own config dir and root.
pub struct BrineMinion {
    pub dir: TempDir,
    pub id: String,
    pub daemon: Daemon,
}

impl BrineMinion {
    /// Write `CONFIG_DIR/minion` for `id` pointed at `master`, plus `extra`, and start it.
    pub fn start(master: &SaltMaster, id: &str, extra: &str) -> Self {
        Self::start_raw(
            id,
            &format!(
                "master: 127.0.0.1\nmaster_port: {}\npublish_port: {}\nacceptance_wait_time: 1\n{extra}\n",
                master.ret_port, master.publish_port
            ),
        )
    }

    /// Start with exactly `config` (plus `root_dir` and `id`).
    pub fn start_raw(id: &str, config: &str) -> Self {
        Self::start_seeded(id, config, &[])
    }

    /// Like [`BrineMinion::start_raw`], with files placed in the pki directory first.
    pub fn start_seeded(id: &str, config: &str, pki_files: &[(&str, Vec<u8>)]) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("brine-minion-")
            .tempdir()
            .unwrap();
        let pki = dir.path().join("root/etc/salt/pki/minion");
        std::fs::create_dir_all(&pki).unwrap();
        for (name, data) in pki_files {
            std::fs::write(pki.join(name), data).unwrap();
        }
        std::fs::create_dir_all(dir.path().join("etc")).unwrap();
        std::fs::write(
            dir.path().join("etc/minion"),
            format!(
                "root_dir: {}\nid: {id}\n{config}",
                dir.path().join("root").display()
            ),
        )
        .unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_minion"));
        cmd.arg("-c")
            .arg(dir.path().join("etc"))
            .args(["-l", "debug"]);
        let daemon = Daemon::spawn(cmd, "minion", &dir.path().join("minion.log"));
        Self {
            dir,
            id: id.to_owned(),
            daemon,
        }
    }

    pub fn log(&self) -> String {
        tail(&self.dir.path().join("minion.log"), 40)
    }

    pub fn pki(&self) -> PathBuf {
        self.dir.path().join("root/etc/salt/pki/minion")
    }
}

/// Two real masters sharing one key pair and the same ports, on different addresses (the minion
/// connects its SUB to its own `publish_port` for every master, as Salt does): A at 127.0.0.2,
/// or inside `netns` when given, and B at 127.0.0.3. Returns `(a, b, (publish_port, ret_port))`.
pub fn shared_key_masters(
    peer: &brine_test_support::SaltPeer,
    netns: Option<&brine_test_support::Netns>,
) -> (SaltMaster, SaltMaster, (u16, u16)) {
    let ports = (
        brine_test_support::free_port(),
        brine_test_support::free_port(),
    );
    let a_addr = netns.map_or("127.0.0.2", |ns| ns.addr.as_str());
    let a = SaltMaster::start_full_in(peer, netns, a_addr, Some(ports), "", None, None);
    let b = SaltMaster::start_full(peer, "127.0.0.3", Some(ports), "", None, Some(&a.pki_dir()));
    (a, b, ports)
}

/// Run `salt` on `master` until `id` answers test.ping (minions take a moment after auth).
pub fn wait_responding(master: &SaltMaster, ids: &[&str], timeout: Duration) -> bool {
    let list = ids.join(",");
    wait_for(timeout, || {
        let out = master.salt(&[
            "-L",
            &list,
            "test.ping",
            "--out",
            "json",
            "--static",
            "-t",
            "5",
        ]);
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(&out.stdout) else {
            return false;
        };
        ids.iter()
            .all(|id| v.get(*id) == Some(&serde_json::Value::Bool(true)))
    })
}

/// Every minion return in the master's job cache, as JSON:
/// `{jid: {"fun":.., "arg":.., "returns": {id: {"return", "retcode", "success", "out"}}}}`.
pub fn job_cache(master: &SaltMaster) -> serde_json::Value {
    const SCRIPT: &str = r#"
import glob, json, os, sys
import msgpack
root = sys.argv[1]
out = {}
for d in glob.glob(os.path.join(root, "*", "*")):
    lp = os.path.join(d, ".load.p")
    if not os.path.exists(lp):
        continue
    load = msgpack.unpackb(open(lp, "rb").read(), raw=False, strict_map_key=False)
    jid = load.get("jid") or os.path.basename(d)
    rets = {}
    for r in glob.glob(os.path.join(d, "*", "return.p")):
        mdir = os.path.dirname(r)
        ret = msgpack.unpackb(open(r, "rb").read(), raw=False, strict_map_key=False)
        op = os.path.join(mdir, "out.p")
        ret["out"] = msgpack.unpackb(open(op, "rb").read(), raw=False) if os.path.exists(op) else None
        rets[os.path.basename(mdir)] = ret
    out[jid] = {"fun": load.get("fun"), "arg": load.get("arg"), "returns": rets}
print(json.dumps(out, default=repr))
"#;
    let jobs = master.dir.path().join("root/var/cache/salt/master/jobs");
    let out = master
        .peer
        .command("python3")
        .arg("-c")
        .arg(SCRIPT)
        .arg(&jobs)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

pub fn exists(p: &Path) -> bool {
    p.exists()
}
