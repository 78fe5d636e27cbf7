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
