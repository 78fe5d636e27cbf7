//! Network namespaces for partition tests (iproute2, as root).

use std::path::Path;
use std::process::{Command, Stdio};

/// `ip` from iproute2, wherever it is (CI's PATH may not include the sbin directories).
fn ip_path() -> &'static str {
    ["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .unwrap_or("ip")
}

pub(crate) fn ip_command() -> Command {
    Command::new(ip_path())
}

/// `program`, run inside the network namespace `netns` when given (`ip netns exec NAME
/// PROGRAM`; `ip` execs the program, so the child's pid is the program's).
pub(crate) fn command_in(netns: Option<&str>, program: &Path) -> Command {
    match netns {
        Some(ns) => {
            let mut c = ip_command();
            c.args(["netns", "exec", ns]).arg(program);
            c
        }
        None => Command::new(program),
    }
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
        let ip = ip_ok;
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
        ip_quiet(&["link", "del", &self.host_if]);
        ip_quiet(&["netns", "del", &self.name]);
    }
}

/// A test LAN: a bridge here (`10.250.B.1/24`, B picked from the process id) and any number of
/// hosts, each a network namespace of its own on the bridge (`10.250.B.(10 + i)`). Hosts reach
/// each other through the bridge (no IP forwarding needed) and this namespace through
/// `10.250.B.1`; a host can be cut off silently and joined again ([`LanHost::partition`],
/// [`LanHost::heal`]). Everything is removed on drop.
#[derive(Debug)]
pub struct Lan {
    bridge: String,
    /// The first three octets (`10.250.B`).
    pub net: String,
    /// This namespace's address on the LAN (`10.250.B.1`).
    pub gateway: String,
}

/// `ip ARGS`, its failure ignored and unsaid (cleanups of what may not exist).
fn ip_quiet(args: &[&str]) {
    let _ = ip_command().args(args).stderr(Stdio::null()).status();
}

fn ip_ok(args: &[&str]) {
    let st = ip_command().args(args).status().expect("run ip (iproute2)");
    assert!(st.success(), "ip {args:?} failed");
}

impl Lan {
    /// Create the bridge.
    ///
    /// # Panics
    /// If `ip link` fails (needs root).
    pub fn create() -> Self {
        let pid = std::process::id();
        let b = 1 + pid % 250;
        let bridge = format!("bl{}", pid % 1_000_000);
        let net = format!("10.250.{b}");
        // A bridge left by a crashed run with the same pid would make `add` fail.
        ip_quiet(&["link", "del", &bridge]);
        ip_ok(&["link", "add", &bridge, "type", "bridge"]);
        let lan = Self {
            bridge: bridge.clone(),
            gateway: format!("{net}.1"),
            net,
        };
        ip_ok(&[
            "addr",
            "add",
            &format!("{}/24", lan.gateway),
            "dev",
            &bridge,
        ]);
        ip_ok(&["link", "set", &bridge, "up"]);
        lan
    }

    /// Host `i` (0..=200): its own namespace at `10.250.B.(10 + i)` on the bridge.
    ///
    /// # Panics
    /// If `ip` fails.
    pub fn host(&self, i: u8) -> LanHost {
        let pid = std::process::id() % 100_000;
        let name = format!("brine-lan-{pid}-{i}");
        let outer = format!("vo{pid}x{i}");
        let inner = format!("vi{pid}x{i}");
        let addr = format!("{}.{}", self.net, 10 + u16::from(i));
        ip_quiet(&["netns", "del", &name]);
        ip_ok(&["netns", "add", &name]);
        let h = LanHost {
            name: name.clone(),
            addr: addr.clone(),
            outer: outer.clone(),
        };
        ip_ok(&[
            "link", "add", &outer, "type", "veth", "peer", "name", &inner,
        ]);
        ip_ok(&["link", "set", &inner, "netns", &name]);
        ip_ok(&["link", "set", &outer, "master", &self.bridge]);
        ip_ok(&["link", "set", &outer, "up"]);
        let inside = |args: &[&str]| {
            let mut a = vec!["netns", "exec", &name, ip_path()];
            a.extend_from_slice(args);
            ip_ok(&a);
        };
        inside(&["addr", "add", &format!("{addr}/24"), "dev", &inner]);
        inside(&["link", "set", &inner, "up"]);
        inside(&["link", "set", "lo", "up"]);
        h
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        ip_quiet(&["link", "del", &self.bridge]);
    }
}

/// One host of a [`Lan`]: a network namespace with one address on the bridge.
#[derive(Debug)]
pub struct LanHost {
    /// Namespace name (`ip netns exec NAME ...`).
    pub name: String,
    /// Its address on the LAN.
    pub addr: String,
    outer: String,
}

impl LanHost {
    /// Cut the host off: its port on the bridge goes down, so frames to and from it are dropped
    /// without a word (no RST, no ICMP); the processes inside keep running and their
    /// connections stay open.
    pub fn partition(&self) {
        let _ = ip_command()
            .args(["link", "set", &self.outer, "down"])
            .status();
    }

    /// Join it again after [`Self::partition`].
    pub fn heal(&self) {
        let _ = ip_command()
            .args(["link", "set", &self.outer, "up"])
            .status();
    }
}

impl Drop for LanHost {
    fn drop(&mut self) {
        ip_quiet(&["link", "del", &self.outer]);
        ip_quiet(&["netns", "del", &self.name]);
    }
}
