//! brine daemons (`mofm`, `syndic`, `minion`) in multi-master layouts on loopback: each node on
//! its own 127.x.y.z address, all on one publish/ret port pair (Salt minions use one
//! `publish_port` and `master_port` for every master they list), logs kept for failure
//! messages, and `kill -9` for failure tests.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value as Json;

use crate::{Daemon, tail, wait_for, workspace_bin, write_config};

/// `n` loopback addresses in a /24 of 127.0.0.0/8 picked at random (so tests running at the
/// same time do not meet), and a `(publish, ret)` port pair free on all of them.
pub fn loopback(n: usize) -> (Vec<String>, u16, u16) {
    let mut seed = [0u8; 4];
    brine_transport::OsEntropy::fill_bytes(&mut seed);
    let net = format!("127.{}.{}", 1 + seed[0] % 250, 1 + seed[1] % 250);
    let addrs: Vec<String> = (1..=n).map(|i| format!("{net}.{i}")).collect();
    let free = |port: u16| {
        addrs
            .iter()
            .all(|a| std::net::TcpListener::bind((a.as_str(), port)).is_ok())
    };
    let mut port = 20_000 + u16::from_le_bytes([seed[2], seed[3]]) % 20_000;
    loop {
        if free(port) && free(port + 1) {
            return (addrs, port, port + 1);
        }
        port = if port > 40_000 { 20_000 } else { port + 2 };
    }
}

/// One brine daemon with its config directory.
#[derive(Debug)]
pub struct Node {
    /// A short name for messages.
    pub name: String,
    /// The address it binds (masters) or its id (minions).
    pub addr: String,
    /// Its config directory (`-c`).
    pub etc: PathBuf,
    log: PathBuf,
    bin: String,
    daemon: Option<Daemon>,
    /// The network namespace it runs in (a [`crate::LanHost`]), if not this one.
    netns: Option<String>,
}

impl Node {
    /// Write `files` (`(name, YAML)`) into `etc`, then start `bin -c etc -l info`, logging to
    /// `etc/../<name>.log`.
    pub fn start(bin: &str, name: &str, addr: &str, etc: &Path, files: &[(&str, String)]) -> Self {
        Self::start_on(None, bin, name, addr, etc, files)
    }

    /// [`Node::start`] inside `host`'s network namespace when given (its address is `addr`).
    pub fn start_on(
        host: Option<&crate::LanHost>,
        bin: &str,
        name: &str,
        addr: &str,
        etc: &Path,
        files: &[(&str, String)],
    ) -> Self {
        for (f, body) in files {
            write_config(&etc.join(f), body);
        }
        let log = etc
            .parent()
            .expect("etc has a parent")
            .join(format!("{name}.log"));
        let mut n = Self {
            name: name.to_owned(),
            addr: addr.to_owned(),
            etc: etc.to_owned(),
            log,
            bin: bin.to_owned(),
            daemon: None,
            netns: host.map(|h| h.name.clone()),
        };
        n.spawn();
        n
    }

    /// Start (again) after [`Node::kill9`].
    pub fn spawn(&mut self) {
        let mut cmd = crate::netns::command_in(self.netns.as_deref(), &workspace_bin(&self.bin));
        cmd.arg("-c").arg(&self.etc).args(["-l", "info"]);
        // Appending: a restart keeps the earlier log.
        let prev = std::fs::read_to_string(&self.log).unwrap_or_default();
        self.daemon = Some(Daemon::spawn(cmd, &self.name, &self.log));
        if !prev.is_empty() {
            let _ = std::fs::write(self.log.with_extension("log.prev"), prev);
        }
    }

    /// Wait until something accepts TCP connections on `addr:port`.
    ///
    /// # Panics
    /// After 20 s, with the log tail.
    pub fn wait_port(&self, port: u16) {
        let addr = self.addr.clone();
        assert!(
            wait_for(Duration::from_secs(20), || {
                std::net::TcpStream::connect((addr.as_str(), port)).is_ok()
            }),
            "{} did not come up:\n{}",
            self.name,
            self.log_tail(30)
        );
    }

    /// `kill -9` the daemon (and its process group).
    pub fn kill9(&mut self) {
        if let Some(d) = self.daemon.take() {
            d.signal_group("-KILL");
        }
    }

    /// Send `sig` (`-STOP`, `-CONT`, `-TERM`...) to the daemon's process group.
    pub fn signal(&self, sig: &str) {
        if let Some(d) = &self.daemon {
            d.signal_group(sig);
        }
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.daemon.as_ref().map(Daemon::pid)
    }

    /// Its whole log (earlier runs included).
    pub fn log(&self) -> String {
        let prev = std::fs::read_to_string(self.log.with_extension("log.prev")).unwrap_or_default();
        prev + &std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// How many log lines contain `needle`.
    pub fn log_count(&self, needle: &str) -> usize {
        self.log().lines().filter(|l| l.contains(needle)).count()
    }

    /// The end of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        format!("--- {} ---\n{}", self.name, tail(&self.log, lines))
    }

    /// `BIN -c etc ARGS` (a brine CLI: `brine`, `brine-key`, `brine-run`).
    pub fn tool(&self, bin: &str, args: &[&str]) -> Output {
        Command::new(workspace_bin(bin))
            .arg("-c")
            .arg(&self.etc)
            .args(args)
            .output()
            .expect("run a brine CLI")
    }

    /// `brine -c etc ARGS` (a mofm node).
    pub fn brine(&self, args: &[&str]) -> Output {
        self.tool("brine", args)
    }

    /// `brine -c etc ARGS --out json --static`, parsed (`Null` if not JSON).
    pub fn brine_json(&self, args: &[&str]) -> Json {
        let mut a = args.to_vec();
        a.extend(["--out", "json", "--static"]);
        serde_json::from_slice(&self.brine(&a).stdout).unwrap_or(Json::Null)
    }

    /// `brine-run -c etc ARGS --out json`, parsed.
    pub fn brine_run_json(&self, args: &[&str]) -> Json {
        let mut a = args.to_vec();
        a.extend(["--out", "json"]);
        serde_json::from_slice(&self.tool("brine-run", &a).stdout).unwrap_or(Json::Null)
    }
}

/// The jid printed by `brine ... --async` (`Executed command with job ID: <jid>`).
pub fn async_jid(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .last()
        .unwrap_or_default()
        .to_owned()
}

/// Tags seen on a mofm's `GET /events` stream (salt-api's `tag:` lines), collected by a thread
/// from now on.
///
/// # Panics
/// If the API cannot be reached.
pub fn sse_tags(
    addr: &str,
    port: u16,
    token: &str,
) -> std::sync::Arc<std::sync::Mutex<Vec<String>>> {
    use std::io::{BufRead as _, Write as _};
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut s = std::net::TcpStream::connect((addr, port)).expect("connect to the API");
    write!(
        s,
        "GET /events HTTP/1.1\r\nHost: x\r\nX-Auth-Token: {token}\r\n\r\n"
    )
    .expect("send the request");
    let out = seen.clone();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(s).lines() {
            let Ok(line) = line else { return };
            if let Some(tag) = line.strip_prefix("tag: ") {
                out.lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push(tag.to_owned());
            }
        }
    });
    seen
}

/// Start a brine syndic `id` on `addr` below the master of masters at `mom` (several as
/// `"a, b"`; all on the ports `(publish, ret)`), auto-accepting its own minions, with its files
/// under `root/<dir>`
/// (`etc/master`, `etc/minion`, pki and cache); returns once its ret port answers.
pub fn start_syndic(
    root: &Path,
    dir: &str,
    id: &str,
    addr: &str,
    mom: &str,
    ports: (u16, u16),
) -> Node {
    start_syndic_with(root, dir, id, addr, mom, ports, "")
}

/// [`start_syndic`] with `extra` YAML in the syndic's `master` file (its `file_roots`...).
pub fn start_syndic_with(
    root: &Path,
    dir: &str,
    id: &str,
    addr: &str,
    mom: &str,
    ports: (u16, u16),
    extra: &str,
) -> Node {
    start_syndic_on(None, root, dir, id, addr, mom, ports, extra)
}

/// [`start_syndic_with`] inside `host`'s network namespace when given (`addr` is its address).
#[allow(clippy::too_many_arguments)]
pub fn start_syndic_on(
    host: Option<&crate::LanHost>,
    root: &Path,
    dir: &str,
    id: &str,
    addr: &str,
    mom: &str,
    (publish, ret): (u16, u16),
    extra: &str,
) -> Node {
    let master = format!(
        "root_dir: {root}\ninterface: {addr}\npublish_port: {publish}\nret_port: {ret}\n\
         auto_accept: True\npki_dir: /{dir}/pki\ncachedir: /{dir}/cache\ngather_job_timeout: 3\n\
         syndic_master: [{mom}]\nsyndic_master_port: {ret}\n{extra}",
        root = root.display()
    );
    let minion = format!(
        "id: {id}\nroot_dir: {root}\npki_dir: /{dir}/minion-pki\ncachedir: /{dir}/minion-cache\n",
        root = root.display()
    );
    let syndic = Node::start_on(
        host,
        "syndic",
        id,
        addr,
        &root.join(dir).join("etc"),
        &[("master", master), ("minion", minion)],
    );
    syndic.wait_port(ret);
    syndic
}
