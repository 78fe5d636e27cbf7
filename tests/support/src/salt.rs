//! Real Salt daemons on loopback: the installed releases (`SaltPeer`) and `salt-master`,
//! `salt-minion` and `salt-syndic` with temporary `root_dir`s and free ports, stopped with their
//! whole process group on drop.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use tempfile::TempDir;

use crate::netns::{Netns, ip_command};
use crate::{Daemon, free_port, peers_root, tail, wait_for, write_config};

/// An installed Salt release.
#[derive(Debug, Clone)]
pub struct SaltPeer {
    /// `3007.17` etc.
    pub version: String,
    /// The venv's `bin/`.
    pub bin: PathBuf,
}

impl SaltPeer {
    /// The installed peer for `version`.
    ///
    /// # Panics
    /// If it is not installed, with the command that installs it.
    pub fn get(version: &str) -> Self {
        let dir = peers_root().join(version);
        let bin = dir.join("bin");
        assert!(
            dir.join(".brine-complete").exists() && bin.join("salt-master").exists(),
            "Salt {version} is not installed in {}.\n\
             Install it with:  scripts/salt-peer.sh {version}\n\
             (interop tests never skip: they need the real Salt peer)",
            dir.display()
        );
        Self {
            version: version.to_owned(),
            bin,
        }
    }

    /// A command for one of the venv's programs (`salt`, `salt-key`...).
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new(self.bin.join(program));
        c.env(
            "PATH",
            format!("{}:/usr/local/bin:/usr/bin:/bin", self.bin.display()),
        )
        .env_remove("PYTHONPATH")
        .stdin(Stdio::null());
        c
    }
}

/// A real `salt-master` on loopback with its own temporary `root_dir`.
#[derive(Debug)]
pub struct SaltMaster {
    /// The peer it runs.
    pub peer: SaltPeer,
    /// Temporary directory holding config and `root_dir`.
    pub dir: TempDir,
    /// Publish (PUB) port.
    pub publish_port: u16,
    /// Request (ROUTER) port.
    pub ret_port: u16,
    daemon: Daemon,
}

impl SaltMaster {
    /// The salt-master's (parent) process id.
    pub fn pid(&self) -> u32 {
        self.daemon.pid()
    }

    /// Start a master with `auto_accept: True` plus `extra` YAML, and wait until it serves.
    ///
    /// # Panics
    /// If it does not come up within 90 s (the log tail is printed).
    pub fn start(peer: &SaltPeer, extra: &str) -> Self {
        Self::start_with(peer, extra, None)
    }

    /// Like [`SaltMaster::start`], also writing `minion_file` (a syndic node's `minion` file,
    /// with `root_dir` prepended) into the same config directory.
    ///
    /// # Panics
    /// If it does not come up within 90 s.
    pub fn start_with(peer: &SaltPeer, extra: &str, minion_file: Option<&str>) -> Self {
        Self::start_full(peer, "127.0.0.1", None, extra, minion_file, None)
    }

    /// The general form: bind `interface` on `ports` (`(publish, ret)`, free ones if `None`),
    /// and reuse the master key pair from the pki directory `key_from` (masters sharing a key,
    /// as failover and hot multi-master need).
    ///
    /// # Panics
    /// If it does not come up within 90 s.
    pub fn start_full(
        peer: &SaltPeer,
        interface: &str,
        ports: Option<(u16, u16)>,
        extra: &str,
        minion_file: Option<&str>,
        key_from: Option<&Path>,
    ) -> Self {
        Self::start_full_in(peer, None, interface, ports, extra, minion_file, key_from)
    }

    /// [`SaltMaster::start_full`] inside the network namespace `netns` (a test host reachable
    /// over a veth pair), when given.
    ///
    /// # Panics
    /// If it does not come up within 90 s.
    pub fn start_full_in(
        peer: &SaltPeer,
        netns: Option<&Netns>,
        interface: &str,
        ports: Option<(u16, u16)>,
        extra: &str,
        minion_file: Option<&str>,
        key_from: Option<&Path>,
    ) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("brine-salt-master-")
            .tempdir()
            .expect("tempdir");
        let (publish_port, ret_port) = ports.unwrap_or_else(|| (free_port(), free_port()));
        let root = dir.path().join("root");
        let conf = format!(
            "root_dir: {root}\ninterface: {interface}\npublish_port: {publish_port}\n\
             ret_port: {ret_port}\nuser: root\n{accept}{workers}\
             log_file: {log}\nlog_level_logfile: debug\n{extra}\n",
            root = root.display(),
            log = root.join("master.log").display(),
            accept = if extra.contains("auto_accept:") {
                ""
            } else {
                "auto_accept: True\n"
            },
            workers = if extra.contains("worker_threads:") {
                ""
            } else {
                "worker_threads: 2\n"
            },
        );
        write_config(&dir.path().join("etc/master"), &conf);
        if let Some(m) = minion_file {
            write_config(
                &dir.path().join("etc/minion"),
                &format!("root_dir: {}\nuser: root\n{m}\n", root.display()),
            );
        }
        if let Some(src) = key_from {
            let pki = root.join("etc/salt/pki/master");
            std::fs::create_dir_all(&pki).expect("mkdir pki");
            for f in ["master.pem", "master.pub"] {
                std::fs::copy(src.join(f), pki.join(f)).expect("copy master key");
            }
            // A shared signing key pair (`master_sign_pubkey`) comes along when present.
            for f in ["master_sign.pem", "master_sign.pub"] {
                if src.join(f).exists() {
                    std::fs::copy(src.join(f), pki.join(f)).expect("copy master signing key");
                }
            }
        }
        let mut cmd = match netns {
            Some(ns) => {
                let mut c = ip_command();
                c.args(["netns", "exec", &ns.name])
                    .arg(peer.bin.join("salt-master"))
                    .env(
                        "PATH",
                        format!("{}:/usr/local/bin:/usr/bin:/bin", peer.bin.display()),
                    )
                    .stdin(Stdio::null());
                c
            }
            None => peer.command("salt-master"),
        };
        cmd.arg("-c")
            .arg(dir.path().join("etc"))
            .args(["-l", "warning"]);
        let daemon = Daemon::spawn(cmd, "salt-master", &dir.path().join("master.out"));
        let mut m = Self {
            peer: peer.clone(),
            dir,
            publish_port,
            ret_port,
            daemon,
        };
        let pull = m.sock_dir().join("publish_pull.ipc");
        let ready = wait_for(Duration::from_secs(90), || {
            if !m.daemon.alive() {
                return false;
            }
            pull.exists()
                && TcpStream::connect((interface, ret_port)).is_ok()
                && TcpStream::connect((interface, publish_port)).is_ok()
        });
        assert!(
            ready,
            "salt-master {} did not come up:\n{}\n{}",
            m.peer.version,
            tail(&m.dir.path().join("master.out"), 30),
            tail(&m.dir.path().join("root/master.log"), 30)
        );
        m
    }

    /// Send `sig` (`-KILL`, `-STOP`, `-CONT`) to the master and all its workers.
    pub fn signal(&self, sig: &str) {
        self.daemon.signal_group(sig);
    }

    /// The directory passed as `-c`.
    pub fn config_dir(&self) -> PathBuf {
        self.dir.path().join("etc")
    }

    /// `sock_dir` under the root.
    pub fn sock_dir(&self) -> PathBuf {
        self.dir.path().join("root/var/run/salt/master")
    }

    /// `pki_dir` under the root.
    pub fn pki_dir(&self) -> PathBuf {
        self.dir.path().join("root/etc/salt/pki/master")
    }

    /// Whether the job cache holds a return from `minion` for `jid` (`local_cache` layout:
    /// `jobs/<sha256(jid)[:2]>/<sha256(jid)[2:]>/<minion>/return.p`).
    pub fn has_return(&self, jid: &str, minion: &str) -> bool {
        let h = brine_proto::crypt::sha256_hex(jid.as_bytes());
        self.dir
            .path()
            .join("root/var/cache/salt/master/jobs")
            .join(&h[..2])
            .join(&h[2..])
            .join(minion)
            .join("return.p")
            .exists()
    }

    /// Run the real `salt` CLI against this master.
    pub fn salt(&self, args: &[&str]) -> Output {
        self.peer
            .command("salt")
            .arg("-c")
            .arg(self.config_dir())
            .args(args)
            .output()
            .expect("run salt")
    }

    /// Run `salt ARGS --out json --static -t 30` and parse what it prints.
    ///
    /// # Panics
    /// If the CLI prints no JSON (its stderr is in the message).
    pub fn salt_json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = args.to_vec();
        all.extend(["--out", "json", "--static", "-t", "30"]);
        let out = self.salt(&all);
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "salt {args:?} printed no JSON ({e}): {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        })
    }

    /// Run `salt ARGS --async` and return the jid it prints.
    ///
    /// # Panics
    /// If no jid is printed.
    pub fn salt_async(&self, args: &[&str]) -> String {
        let mut all = args.to_vec();
        all.push("--async");
        let out = self.salt(&all);
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .last()
            .unwrap_or_else(|| panic!("salt {args:?} --async printed no jid"))
            .to_owned()
    }

    /// Run the real `salt-key` against this master.
    pub fn salt_key(&self, args: &[&str]) -> Output {
        self.peer
            .command("salt-key")
            .arg("-c")
            .arg(self.config_dir())
            .args(args)
            .output()
            .expect("run salt-key")
    }

    /// The `salt` CLI as a command, to run in the background.
    pub fn salt_command(&self, args: &[&str]) -> Command {
        let mut c = self.peer.command("salt");
        c.arg("-c").arg(self.config_dir()).args(args);
        c
    }

    /// The end of the master's log, for failure messages.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.dir.path().join("root/master.log"), lines)
    }
}

/// A real `salt-minion` on loopback with its own temporary `root_dir`.
#[derive(Debug)]
pub struct SaltMinion {
    /// The peer it runs.
    pub peer: SaltPeer,
    /// Temporary directory holding config and `root_dir`.
    pub dir: TempDir,
    /// Minion id.
    pub id: String,
    daemon: Daemon,
}

impl SaltMinion {
    /// Start a minion `id` pointed at `127.0.0.1:ret_port` / `publish_port`, plus `extra` YAML.
    /// Returns once the process runs; what it does next is the test's to observe.
    pub fn start(peer: &SaltPeer, id: &str, publish_port: u16, ret_port: u16, extra: &str) -> Self {
        Self::start_conf(
            peer,
            id,
            &format!(
                "master: 127.0.0.1\nmaster_port: {ret_port}\npublish_port: {publish_port}\n{extra}"
            ),
        )
    }

    /// Start a minion `id` with `conf` as the rest of its config (masters, ports, failover...);
    /// `root_dir`, `id`, `user` and the log file are added.
    pub fn start_conf(peer: &SaltPeer, id: &str, conf: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("brine-salt-minion-")
            .tempdir()
            .expect("tempdir");
        let root = dir.path().join("root");
        let conf = format!(
            "root_dir: {root}\nid: {id}\nuser: root\nacceptance_wait_time: 2\n\
             log_file: {log}\nlog_level_logfile: debug\n{conf}\n",
            root = root.display(),
            log = root.join("minion.log").display(),
        );
        write_config(&dir.path().join("etc/minion"), &conf);
        let daemon = Self::spawn(peer, dir.path());
        Self {
            peer: peer.clone(),
            dir,
            id: id.to_owned(),
            daemon,
        }
    }

    fn spawn(peer: &SaltPeer, dir: &Path) -> Daemon {
        let mut cmd = peer.command("salt-minion");
        cmd.arg("-c").arg(dir.join("etc")).args(["-l", "warning"]);
        Daemon::spawn(cmd, "salt-minion", &dir.join("minion.out"))
    }

    /// Kill the minion (its whole process group, `SIGKILL`) and start it again with the same
    /// configuration, keys and log file (stdout/stderr of the old run go to `minion.out.old`).
    pub fn restart(&mut self) {
        self.daemon.signal_group("-KILL");
        let _ = wait_for(Duration::from_secs(5), || !self.daemon.alive());
        let out = self.dir.path().join("minion.out");
        let _ = std::fs::rename(&out, self.dir.path().join("minion.out.old"));
        self.daemon = Self::spawn(&self.peer, self.dir.path());
    }

    /// How long since the minion last wrote to its log (debug level: a live minion logs every
    /// few seconds, if only its master-alive check).
    pub fn log_silent_for(&self) -> Duration {
        std::fs::metadata(self.dir.path().join("root/minion.log"))
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .unwrap_or_default()
    }

    /// The Python stacks of the minion's processes, by `py-spy dump` (installed in the peer's
    /// venv by `scripts/salt-peer.sh`, best effort), or why there are none.
    pub fn stacks(&self) -> String {
        let spy = self.peer.bin.join("py-spy");
        if !spy.exists() {
            return format!("no stacks: {} is not installed", spy.display());
        }
        crate::procs::proc_tree(self.pid())
            .into_iter()
            .map(|pid| {
                let out = Command::new("timeout")
                    .args(["20", &spy.display().to_string(), "dump", "--pid"])
                    .arg(pid.to_string())
                    .output();
                match out {
                    Ok(o) => format!(
                        "--- pid {pid}\n{}{}",
                        String::from_utf8_lossy(&o.stdout),
                        String::from_utf8_lossy(&o.stderr)
                    ),
                    Err(e) => format!("--- pid {pid}: py-spy: {e}\n"),
                }
            })
            .collect()
    }

    /// A minion with Salt's `master_type: failover` over `masters` (tried in that order,
    /// `random_master: False`), all on the same `(publish_port, ret_port)`: it checks its
    /// master every 5 s (`master_alive_interval`) and moves to the next one when it is gone.
    /// The masters must share one master key pair (a salt-minion refuses a master whose key
    /// differs from the one it first trusted).
    pub fn start_failover(
        peer: &SaltPeer,
        id: &str,
        masters: &[&str],
        (publish_port, ret_port): (u16, u16),
    ) -> Self {
        Self::start_conf(
            peer,
            id,
            &format!(
                "master: [{}]\nmaster_type: failover\nrandom_master: False\n\
                 master_port: {ret_port}\npublish_port: {publish_port}\n\
                 master_alive_interval: 5\nretry_dns: 0\nauth_timeout: 5\nauth_tries: 1",
                masters.join(", ")
            ),
        )
    }

    /// The minion's own log file (`root/minion.log`, debug level).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("root/minion.log")).unwrap_or_default()
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        self.daemon.alive()
    }

    /// The minion's process id.
    pub fn pid(&self) -> u32 {
        self.daemon.pid()
    }

    /// The end of the minion's log, for failure messages.
    pub fn log_tail(&self, lines: usize) -> String {
        format!(
            "{}\n{}",
            tail(&self.dir.path().join("minion.out"), lines),
            tail(&self.dir.path().join("root/minion.log"), lines)
        )
    }
}

/// A real syndic node: a `salt-master` for its own minions plus `salt-syndic` linking it to a
/// master of masters (which needs `order_masters: True`).
#[derive(Debug)]
pub struct SaltSyndic {
    /// The node's own master (minions attach to its ports).
    pub master: SaltMaster,
    /// The syndic's id as the MoM sees it.
    pub id: String,
    daemon: Daemon,
}

impl SaltSyndic {
    /// Start a syndic node `id` under the MoM listening on 127.0.0.1 `mom_publish_port` /
    /// `mom_ret_port`. Returns once both processes run; use [`SaltSyndic::wait_accepted`] to wait
    /// for the MoM to accept it.
    pub fn start(peer: &SaltPeer, id: &str, mom_publish_port: u16, mom_ret_port: u16) -> Self {
        let master = SaltMaster::start_with(
            peer,
            &format!("syndic_master: 127.0.0.1\nsyndic_master_port: {mom_ret_port}\n"),
            Some(&format!(
                "id: {id}\npublish_port: {mom_publish_port}\nlog_level_logfile: debug"
            )),
        );
        let mut cmd = peer.command("salt-syndic");
        cmd.arg("-c")
            .arg(master.config_dir())
            .args(["-l", "warning"]);
        let daemon = Daemon::spawn(cmd, "salt-syndic", &master.dir.path().join("syndic.out"));
        Self {
            master,
            id: id.to_owned(),
            daemon,
        }
    }

    /// The salt-syndic process id.
    pub fn pid(&self) -> u32 {
        self.daemon.pid()
    }

    /// Wait until `mom` has accepted this syndic's key.
    ///
    /// # Panics
    /// If that does not happen within `timeout`.
    pub fn wait_accepted(&mut self, mom: &SaltMaster, timeout: Duration) {
        let key = mom.pki_dir().join("minions").join(&self.id);
        let ok = wait_for(timeout, || key.exists() || !self.daemon.alive());
        assert!(
            ok && self.daemon.alive(),
            "salt-syndic {} was not accepted by its MoM:\n{}",
            self.id,
            tail(&self.master.dir.path().join("syndic.out"), 30)
        );
    }
}
