//! A real `redis-server` (Debian's package) on a free loopback port, with its data in a
//! temporary directory; stopped (and startable again on the same port) for outage tests.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::{Daemon, free_port, wait_for};

/// A running (or stopped) `redis-server`.
#[derive(Debug)]
pub struct RedisServer {
    dir: tempfile::TempDir,
    /// Its port on 127.0.0.1.
    pub port: u16,
    daemon: Option<Daemon>,
    starts: usize,
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
        "{name} is not installed: `apt-get install -y redis-server` (scripts/test.sh installs it)"
    );
}

impl RedisServer {
    /// Start one on a free port.
    ///
    /// # Panics
    /// If `redis-server` is missing or does not answer within 10 s.
    pub fn start() -> Self {
        let mut r = Self {
            dir: tempfile::tempdir().expect("tempdir"),
            port: free_port(),
            daemon: None,
            starts: 0,
        };
        r.spawn();
        r
    }

    /// Start it again (same port, same data directory) after [`Self::stop`].
    pub fn spawn(&mut self) {
        let mut cmd = Command::new(binary("redis-server"));
        cmd.args([
            "--port",
            &self.port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
            "--dir",
        ])
        .arg(self.dir.path());
        self.starts += 1;
        let log = self.dir.path().join(format!("redis-{}.log", self.starts));
        self.daemon = Some(Daemon::spawn(cmd, "redis-server", &log));
        assert!(
            wait_for(Duration::from_secs(10), || self.cli(&["PING"]).trim()
                == "PONG"),
            "redis-server did not answer on port {}",
            self.port
        );
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
        Command::new(binary("redis-cli"))
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "--raw"])
            .args(args)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    }
}
