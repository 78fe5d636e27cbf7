//! Test harnesses for brine: real Salt daemons on loopback, and logging for tests.
//!
//! Real Salt comes from `scripts/salt-peer.sh`, which installs each release into
//! `$BRINE_SALT_PEERS/<version>` (default `~/.cache/brine/salt-peers`). A test that needs a peer
//! that is not installed fails and prints the command that installs it: interop tests never
//! skip.

#![forbid(unsafe_code)]
#![warn(missing_docs, clippy::print_stdout, clippy::dbg_macro)]

use std::io::Write as _;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Once;
use std::time::{Duration, Instant};

pub mod sim;
pub mod topology;

pub use sim::{Answer, HostileMinion, SimMinion};
pub use tempfile::TempDir;

/// The Salt releases brine is tested against.
pub const SALT_VERSIONS: [&str; 3] = ["3006.30", "3007.17", "3008.5"];

/// Install tracing output for a test (once per process), honouring `BRINE_LOG`.
pub fn subscribe() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let filter = tracing_subscriber::EnvFilter::try_from_env("BRINE_LOG")
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .try_init();
    });
}

/// Where the Salt peer venvs live.
pub fn peers_root() -> PathBuf {
    match std::env::var_os("BRINE_SALT_PEERS") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()))
            .join(".cache/brine/salt-peers"),
    }
}

/// The repository root (for scripts and fixtures).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A fixture file under `tests/support/data/`.
pub fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("data").join(rel)
}

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

/// A free TCP port on 127.0.0.1 (the OS picks it; a tiny race remains until it is bound).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0")
}

/// Poll `cond` every 100 ms until it holds or `timeout` passes.
pub fn wait_for(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let until = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= until {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A daemon process started in its own process group, stopped (the whole group) on drop.
#[derive(Debug)]
pub struct Daemon {
    child: Child,
    name: String,
}

impl Daemon {
    /// Start `cmd` with stdout and stderr to `log`, in a new process group.
    ///
    /// # Panics
    /// If it cannot be started.
    pub fn spawn(mut cmd: Command, name: &str, log: &Path) -> Self {
        use std::os::unix::process::CommandExt as _;
        let out = std::fs::File::create(log).expect("create daemon log");
        let err = out.try_clone().expect("clone log handle");
        cmd.stdout(out).stderr(err).process_group(0);
        let child = cmd.spawn().unwrap_or_else(|e| panic!("start {name}: {e}"));
        Self {
            child,
            name: name.to_owned(),
        }
    }

    /// Send `sig` (e.g. `-STOP`, `-KILL`) to the whole process group.
    pub fn signal_group(&self, sig: &str) {
        let _ = Command::new("kill")
            .args([sig, "--", &format!("-{}", self.child.id())])
            .stderr(Stdio::null())
            .status();
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The exit status, once it has exited.
    pub fn exit_code(&mut self) -> Option<i32> {
        self.child.try_wait().ok().flatten().and_then(|s| s.code())
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.signal_group("-TERM");
        let stopped = wait_for(Duration::from_secs(5), || {
            matches!(self.child.try_wait(), Ok(Some(_)))
        });
        // Salt's worker processes share the group; make sure none outlives the test.
        self.signal_group("-KILL");
        if !stopped {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
        let _ = &self.name;
    }
}

/// Write a config file (creating its directory).
pub fn write_config(path: &Path, body: &str) {
    std::fs::create_dir_all(path.parent().expect("config has a parent")).expect("mkdir config dir");
    let mut f = std::fs::File::create(path).expect("write config");
    f.write_all(body.as_bytes()).expect("write config");
}

/// The last `lines` lines of a file (for failure messages).
pub fn tail(path: &Path, lines: usize) -> String {
    let s = std::fs::read_to_string(path).unwrap_or_default();
    let v: Vec<&str> = s.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
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
        let mut cmd = peer.command("salt-minion");
        cmd.arg("-c")
            .arg(dir.path().join("etc"))
            .args(["-l", "warning"]);
        let daemon = Daemon::spawn(cmd, "salt-minion", &dir.path().join("minion.out"));
        Self {
            peer: peer.clone(),
            dir,
            id: id.to_owned(),
            daemon,
        }
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

/// `ip` from iproute2, wherever it is (CI's PATH may not include the sbin directories).
fn ip_path() -> &'static str {
    ["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .unwrap_or("ip")
}

fn ip_command() -> Command {
    Command::new(ip_path())
}

/// A test host: a network namespace of our own joined to this one by a veth pair, so a test can
/// cut the link silently (no FIN, no RST) — a real partition. Removed on drop.
#[derive(Debug)]
pub struct Netns {
    /// Namespace name.
    pub name: String,
    /// The host's address (inside the namespace).
    pub addr: String,
    host_if: String,
    inner_if: String,
}

impl Netns {
    /// Create namespace number `n` (0..=255, unique per concurrently running test) with
    /// `10.251.n.2` inside and `10.251.n.1` here.
    ///
    /// # Panics
    /// If `ip netns`/`ip link` fail (needs root).
    pub fn create(n: u8) -> Self {
        let pid = std::process::id();
        let name = format!("brine-{pid}-{n}");
        let host_if = format!("bh{}{n}", pid % 100_000);
        let inner_if = format!("bi{}{n}", pid % 100_000);
        let ip = |args: &[&str]| {
            let st = ip_command().args(args).status().expect("run ip (iproute2)");
            assert!(st.success(), "ip {args:?} failed");
        };
        ip(&["netns", "add", &name]);
        let ns = Self {
            name: name.clone(),
            addr: format!("10.251.{n}.2"),
            host_if: host_if.clone(),
            inner_if: inner_if.clone(),
        };
        ip(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", &inner_if,
        ]);
        ip(&["link", "set", &inner_if, "netns", &name]);
        ip(&["addr", "add", &format!("10.251.{n}.1/30"), "dev", &host_if]);
        ip(&["link", "set", &host_if, "up"]);
        ip(&[
            "netns",
            "exec",
            &name,
            ip_path(),
            "addr",
            "add",
            &format!("10.251.{n}.2/30"),
            "dev",
            &inner_if,
        ]);
        ip(&[
            "netns",
            "exec",
            &name,
            ip_path(),
            "link",
            "set",
            &inner_if,
            "up",
        ]);
        ip(&["netns", "exec", &name, ip_path(), "link", "set", "lo", "up"]);
        ns
    }

    /// Cut the link from inside the host: packets to it are dropped silently from now on.
    pub fn partition(&self) {
        let _ = ip_command()
            .args([
                "netns",
                "exec",
                &self.name,
                ip_path(),
                "link",
                "set",
                &self.inner_if,
                "down",
            ])
            .status();
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = ip_command()
            .args(["link", "del", &self.host_if])
            .stderr(Stdio::null())
            .status();
        let _ = ip_command()
            .args(["netns", "del", &self.name])
            .stderr(Stdio::null())
            .status();
    }
}

/// A binary of another workspace package, next to the running test's `deps/` directory.
/// `cargo test --workspace` builds, before running any test, the binaries of every package
/// that has integration tests (so each binary package keeps at least one).
///
/// # Panics
/// If it has not been built, saying how to build it.
pub fn workspace_bin(name: &str) -> PathBuf {
    // `BRINE_BIN_DIR` runs a test against the daemons of another build (an older commit's
    // `target/debug`, to show that a test fails there).
    if let Some(dir) = std::env::var_os("BRINE_BIN_DIR") {
        return PathBuf::from(dir).join(name);
    }
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binary lives in target/<profile>/deps");
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} is not built: run the tests with `cargo test --workspace` (scripts/test.sh) or \
         `cargo build --bins` first",
        p.display()
    );
    p
}

/// Start the `mofm` binary at `bin` with its config in `dir/etc/master` (root_dir `dir/root`,
/// `interface`, `ports` = (publish, ret, API), `auto_accept: True`, plus `extra` YAML), logging
/// to `dir/mofm.log` at `BRINE_MOFM_LOG` (default warning); returns once its API answers.
///
/// # Panics
/// If it does not come up within 10 s.
pub fn start_mofm(
    bin: &Path,
    dir: &Path,
    interface: &str,
    ports: (u16, u16, u16),
    extra: &str,
) -> Daemon {
    let (publish, ret, api) = ports;
    write_config(
        &dir.join("etc/master"),
        &format!(
            "root_dir: {}\ninterface: {interface}\npublish_port: {publish}\nret_port: {ret}\n\
             rest_cherrypy: {{port: {api}}}\nauto_accept: True\n{extra}\n",
            dir.join("root").display()
        ),
    );
    let mut cmd = Command::new(bin);
    let level = std::env::var("BRINE_MOFM_LOG").unwrap_or_else(|_| "warning".into());
    cmd.arg("-c").arg(dir.join("etc")).args(["-l", &level]);
    let log = dir.join("mofm.log");
    let d = Daemon::spawn(cmd, "mofm", &log);
    assert!(
        wait_for(Duration::from_secs(10), || {
            TcpStream::connect(("127.0.0.1", api)).is_ok()
        }),
        "mofm did not come up:\n{}",
        tail(&log, 20)
    );
    d
}

/// CPU time (user + system) of process `pid` in clock ticks (1/100 s), from `/proc/PID/stat`;
/// 0 if it is gone.
pub fn proc_cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let f: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |x| x.1)
        .split_whitespace()
        .collect();
    // utime and stime: fields 14 and 15, i.e. the 12th and 13th after the command name.
    f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
}

/// A process and its descendants (from `/proc/PID/task/PID/children`).
pub fn proc_tree(root: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let mut todo = vec![root];
    while let Some(pid) = todo.pop() {
        out.push(pid);
        let children =
            std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        todo.extend(
            children
                .split_whitespace()
                .filter_map(|c| c.parse::<u32>().ok()),
        );
    }
    out
}

/// Resident set of a process and its descendants (kB).
pub fn rss_tree_kb(root: u32) -> u64 {
    proc_tree(root)
        .into_iter()
        .map(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/status"))
                .unwrap_or_default()
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                .unwrap_or(0)
        })
        .sum()
}

/// CPU time (user + system, clock ticks) of a process and its descendants.
pub fn cpu_ticks_tree(root: u32) -> u64 {
    proc_tree(root).into_iter().map(proc_cpu_ticks).sum()
}
