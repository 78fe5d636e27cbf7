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
use std::process::{Child, Command, Stdio};
use std::sync::Once;
use std::time::{Duration, Instant};

pub mod netns;
pub mod nginx;
pub mod procs;
pub mod redis;
pub mod salt;
pub mod sim;
pub mod topology;

pub use netns::{Lan, LanHost, Netns};
pub use nginx::Nginx;
pub use procs::{cpu_ticks_tree, proc_cpu_ticks, proc_tree, rss_tree_kb};
pub use redis::{RedisCluster, RedisSentinel, RedisServer};
pub use salt::{SaltMaster, SaltMinion, SaltPeer, SaltSyndic};
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

/// pepper, salt-api's command-line client (`scripts/salt-peer.sh` installs it next to the Salt
/// peers).
///
/// # Panics
/// If it is not installed, with the command that installs it.
pub fn pepper_bin() -> PathBuf {
    let dir = peers_root().join("pepper-0.7.6");
    let bin = dir.join("bin/pepper");
    assert!(
        dir.join(".brine-complete").exists() && bin.exists(),
        "pepper is not installed in {}.\nInstall it with:  scripts/salt-peer.sh 3007.17\n\
         (API tests never skip: they need the real client)",
        dir.display()
    );
    bin
}

/// The repository root (for scripts and fixtures).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A fixture file under `tests/support/data/`.
pub fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("data").join(rel)
}

/// A free TCP port on 127.0.0.1 for a test daemon to listen on.
///
/// Ports come from below the kernel's ephemeral range (32768-60999 on Linux by default):
/// outgoing connections take their source ports from that range, so a port the OS handed out
/// with `bind(:0)` could be taken by some test's connection before the daemon binds it (a
/// real salt-master then dies with "Address already in use"). Each call in a process gets a
/// different port; a small race with other processes remains until the port is bound.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    static SEED: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    let seed = *SEED.get_or_init(|| {
        std::process::id().wrapping_mul(2_654_435_761)
            ^ std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos())
    });
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        // 7919 is prime to SPAN: the calls of one process walk every port once.
        let port = LOW + seed.wrapping_add(n.wrapping_mul(7_919)) % SPAN;
        let port = u16::try_from(port).expect("below 32,000");
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
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
