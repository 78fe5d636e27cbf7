//! A real `redis-server` (Debian's package) on a free loopback port, with its data in a
//! temporary directory; stopped (and startable again on the same port) for outage tests.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::{Daemon, LanHost, free_port, wait_for};

/// `redis-cli -h HOST -p PORT --raw ARGS...`: its output ("" when nothing answers).
fn cli(host: &str, port: u16, args: &[&str]) -> String {
    Command::new(binary("redis-cli"))
        .args(["-h", host, "-p", &port.to_string(), "--raw"])
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// A running (or stopped) `redis-server`.
#[derive(Debug)]
pub struct RedisServer {
    dir: tempfile::TempDir,
    /// Its port.
    pub port: u16,
    /// The address it binds (127.0.0.1, or its [`LanHost`]'s).
    pub addr: String,
    daemon: Option<Daemon>,
    starts: usize,
    extra: Vec<String>,
    /// The network namespace it runs in, if not this one.
    netns: Option<String>,
}

/// `redis-server` and `redis-cli`, or a panic that says how to install them.
fn binary(name: &str) -> PathBuf {
    for d in ["/usr/bin", "/usr/local/bin", "/usr/sbin"] {
        let p = PathBuf::from(d).join(name);
        if p.exists() {
            return p;
        }
    }
    panic!(
        "{name} is not installed: `apt-get install -y redis-server redis-sentinel` (scripts/test.sh installs them)"
    );
}

impl RedisServer {
    /// Start one on a free port.
    ///
    /// # Panics
    /// If `redis-server` is missing or does not answer within 10 s.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Start one on a free port with more `redis-server` arguments (`--replicaof ...`,
    /// `--cluster-enabled yes`...).
    ///
    /// # Panics
    /// As [`Self::start`].
    pub fn start_with(extra: &[&str]) -> Self {
        Self::start_on(None, extra)
    }

    /// [`Self::start_with`] inside `host`'s network namespace when given, bound to its address.
    ///
    /// # Panics
    /// As [`Self::start`].
    pub fn start_on(host: Option<&LanHost>, extra: &[&str]) -> Self {
        let mut r = Self {
            dir: tempfile::tempdir().expect("tempdir"),
            port: free_port(),
            addr: host.map_or_else(|| "127.0.0.1".to_owned(), |h| h.addr.clone()),
            daemon: None,
            starts: 0,
            extra: extra.iter().map(|s| (*s).to_owned()).collect(),
            netns: host.map(|h| h.name.clone()),
        };
        // A cluster node also listens on port + 10000 (its bus), which may be taken (by another
        // test, or an outgoing connection's ephemeral port): pick another port and retry.
        let cluster = extra.contains(&"--cluster-enabled");
        for _ in 0..5 {
            if cluster && r.netns.is_none() {
                while std::net::TcpListener::bind((r.addr.as_str(), r.port + 10_000)).is_err() {
                    r.port = free_port();
                }
            }
            if r.try_spawn() {
                return r;
            }
            if let Some(mut d) = r.daemon.take()
                && d.alive()
            {
                break;
            }
            r.port = free_port();
        }
        panic!(
            "redis-server did not answer on {}:{}: {}",
            r.addr,
            r.port,
            crate::tail(&r.dir.path().join(format!("redis-{}.log", r.starts)), 10)
        );
    }

    /// Start it again (same port, same data directory) after [`Self::stop`].
    ///
    /// # Panics
    /// If it does not answer within 10 s.
    pub fn spawn(&mut self) {
        assert!(
            self.try_spawn(),
            "redis-server did not answer on {}:{}",
            self.addr,
            self.port
        );
    }

    /// Start it; whether it answered within 10 s.
    fn try_spawn(&mut self) -> bool {
        let mut cmd = crate::netns::command_in(self.netns.as_deref(), &binary("redis-server"));
        cmd.args([
            "--port",
            &self.port.to_string(),
            "--bind",
            &self.addr,
            "--protected-mode",
            "no",
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
            "--dir",
        ])
        .arg(self.dir.path())
        .args(&self.extra);
        self.starts += 1;
        let log = self.dir.path().join(format!("redis-{}.log", self.starts));
        self.daemon = Some(Daemon::spawn(cmd, "redis-server", &log));
        wait_for(Duration::from_secs(10), || {
            self.cli(&["PING"]).trim() == "PONG" || !self.daemon.as_mut().is_some_and(Daemon::alive)
        }) && self.cli(&["PING"]).trim() == "PONG"
    }

    /// Stop it (SIGKILL: what an outage looks like to clients).
    pub fn stop(&mut self) {
        if let Some(d) = &self.daemon {
            d.signal_group("-KILL");
        }
        self.daemon = None;
    }

    /// Freeze it (SIGSTOP): connections stay open and nothing is answered.
    pub fn freeze(&self) {
        if let Some(d) = &self.daemon {
            d.signal_group("-STOP");
        }
    }

    /// Let a frozen server go on (SIGCONT).
    pub fn thaw(&self) {
        if let Some(d) = &self.daemon {
            d.signal_group("-CONT");
        }
    }

    /// `redis-cli -p PORT --raw ARGS...`: its output ("" when the server is down).
    pub fn cli(&self, args: &[&str]) -> String {
        cli(&self.addr, self.port, args)
    }
}

/// Three `redis-server`s made one Redis Cluster (`redis-cli --cluster create`, no replicas).
#[derive(Debug)]
pub struct RedisCluster {
    /// The nodes; each serves a third of the slots.
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Start three nodes and join them.
    ///
    /// # Panics
    /// If a node does not start or the cluster is not `ok` within 20 s.
    pub fn start() -> Self {
        let nodes: Vec<RedisServer> = (0..3)
            .map(|_| {
                RedisServer::start_with(&[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "2000",
                ])
            })
            .collect();
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = Command::new(binary("redis-cli"))
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli --cluster create");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let c = Self { nodes };
        assert!(
            wait_for(Duration::from_secs(20), || c.nodes.iter().all(|n| n
                .cli(&["CLUSTER", "INFO"])
                .contains("cluster_state:ok"))),
            "the Redis Cluster did not become ok"
        );
        c
    }

    /// `redis-cli -c` (following redirections) against the first node.
    pub fn cli(&self, args: &[&str]) -> String {
        self.nodes[0].cli(&[&["-c"][..], args].concat())
    }
}

/// A real `redis-sentinel` (Debian's package) on a free loopback port watching one primary as
/// service `brine`, quick to fail over (down after 1 s).
#[derive(Debug)]
pub struct RedisSentinel {
    dir: tempfile::TempDir,
    /// Its port.
    pub port: u16,
    /// The address used to talk to it.
    pub addr: String,
    _daemon: Daemon,
}

impl RedisSentinel {
    /// The service name it monitors.
    pub const SERVICE: &str = "brine";

    /// Start one watching the primary on `primary_port` (quorum 1).
    ///
    /// # Panics
    /// If `redis-sentinel` is missing or does not answer within 10 s.
    pub fn start(primary_port: u16) -> Self {
        Self::start_on(&["127.0.0.1"], "127.0.0.1", primary_port)
    }

    /// Start one bound to `bind` (its first address is the one used to talk to it) watching
    /// the primary at `primary_addr:primary_port`.
    ///
    /// # Panics
    /// As [`Self::start`].
    pub fn start_on(bind: &[&str], primary_addr: &str, primary_port: u16) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let conf = dir.path().join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind {bind}\nprotected-mode no\ndaemonize no\ndir {dir}\n\
                 sentinel monitor {s} {primary_addr} {primary_port} 1\n\
                 sentinel down-after-milliseconds {s} 1000\n\
                 sentinel failover-timeout {s} 5000\n\
                 sentinel parallel-syncs {s} 1\n",
                bind = bind.join(" "),
                dir = dir.path().display(),
                s = Self::SERVICE,
            ),
        )
        .expect("write sentinel.conf");
        let mut cmd = Command::new(binary("redis-sentinel"));
        cmd.arg(&conf);
        let daemon = Daemon::spawn(cmd, "redis-sentinel", &dir.path().join("sentinel.log"));
        let s = Self {
            dir,
            port,
            addr: bind[0].to_owned(),
            _daemon: daemon,
        };
        assert!(
            wait_for(Duration::from_secs(10), || s.cli(&["PING"]).trim()
                == "PONG"),
            "redis-sentinel did not answer on port {port}"
        );
        s
    }

    /// The port of the primary it names now (0 when it names none).
    pub fn primary_port(&self) -> u16 {
        self.cli(&["SENTINEL", "get-master-addr-by-name", Self::SERVICE])
            .lines()
            .nth(1)
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or(0)
    }

    /// `redis-cli -p PORT --raw ARGS...` against the Sentinel.
    pub fn cli(&self, args: &[&str]) -> String {
        cli(&self.addr, self.port, args)
    }

    /// A primary, a replica that has synced with it, and a Sentinel that watches both.
    ///
    /// # Panics
    /// If the replica does not sync or the Sentinel does not find it (with its log).
    pub fn start_replicated() -> (RedisServer, RedisServer, Self) {
        Self::start_replicated_on(None)
    }

    /// [`Self::start_replicated`] on a [`Lan`](crate::Lan): the primary and the replica each in
    /// their host's namespace, the Sentinel here bound to 127.0.0.1 and `gateway` (the LAN's
    /// address of this namespace, so the hosts reach it).
    ///
    /// # Panics
    /// As [`Self::start_replicated`].
    pub fn start_replicated_on(
        lan: Option<(&LanHost, &LanHost, &str)>,
    ) -> (RedisServer, RedisServer, Self) {
        let primary = RedisServer::start_on(lan.map(|l| l.0), &[]);
        let p = primary.port.to_string();
        let replica = RedisServer::start_on(lan.map(|l| l.1), &["--replicaof", &primary.addr, &p]);
        assert!(
            wait_for(Duration::from_secs(15), || replica
                .cli(&["INFO", "replication"])
                .contains("master_link_status:up")),
            "the replica did not sync"
        );
        let sentinel = match lan {
            Some((_, _, gateway)) => {
                Self::start_on(&[gateway, "127.0.0.1"], &primary.addr, primary.port)
            }
            None => Self::start(primary.port),
        };
        assert!(
            wait_for(Duration::from_secs(20), || sentinel
                .cli(&["SENTINEL", "replicas", Self::SERVICE])
                .contains(&replica.port.to_string())),
            "the sentinel did not find the replica: {}",
            sentinel.log()
        );
        (primary, replica, sentinel)
    }

    /// Its log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sentinel.log")).unwrap_or_default()
    }
}
