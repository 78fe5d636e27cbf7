//! Grains computed natively from `/proc`, `/sys`, `/etc` and `getifaddrs`: no subprocesses.
//!
//! Computed once at start (and on `saltutil.refresh_grains`-style refreshes later); static
//! grains from the config (`grains:`) and `CONFIG_DIR/grains` override computed ones.
//! Python-specific grains (`pythonversion`, `pythonpath`...) are left out: brine has no Python.
//! `saltversion` is the Salt release whose behaviour brine reproduces.

use std::collections::BTreeMap;
use std::net::IpAddr;

use brine_proto::Value;

pub use brine_minion_side::host::{SALT_VERSION, fqdn, hostname, version_info};

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn os_release() -> BTreeMap<String, String> {
    let text = {
        let t = read("/etc/os-release");
        if t.is_empty() {
            read("/usr/lib/os-release")
        } else {
            t
        }
    };
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().trim_matches('"').to_owned()))
        .collect()
}

/// Salt's `os` and `os_family` for an os-release `ID`.
fn os_names(id: &str, name: &str) -> (String, String) {
    let (os, family) = match id {
        "debian" => ("Debian", "Debian"),
        "ubuntu" => ("Ubuntu", "Debian"),
        "linuxmint" => ("Mint", "Debian"),
        "raspbian" => ("Raspbian", "Debian"),
        "rhel" => ("RedHat", "RedHat"),
        "centos" => ("CentOS", "RedHat"),
        "rocky" => ("Rocky", "RedHat"),
        "almalinux" => ("AlmaLinux", "RedHat"),
        "fedora" => ("Fedora", "RedHat"),
        "amzn" => ("Amazon", "RedHat"),
        "ol" => ("OEL", "RedHat"),
        "opensuse-leap" | "opensuse" | "opensuse-tumbleweed" => ("SUSE", "Suse"),
        "sles" => ("SUSE", "Suse"),
        "arch" => ("Arch", "Arch"),
        "alpine" => ("Alpine", "Alpine"),
        "gentoo" => ("Gentoo", "Gentoo"),
        _ => {
            let n = name.split_whitespace().next().unwrap_or("Linux");
            return (n.to_owned(), n.to_owned());
        }
    };
    (os.to_owned(), family.to_owned())
}

fn cpuinfo() -> (Option<String>, Vec<String>, usize) {
    let text = read("/proc/cpuinfo");
    let mut model = None;
    let mut flags = Vec::new();
    let mut count = 0;
    for line in text.lines() {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        match k.trim() {
            "processor" => count += 1,
            "model name" if model.is_none() => model = Some(v.trim().to_owned()),
            "flags" if flags.is_empty() => {
                flags = v.split_whitespace().map(str::to_owned).collect()
            }
            _ => {}
        }
    }
    (model, flags, count)
}

fn meminfo_mib(key: &str) -> i64 {
    read("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|r| r.trim().trim_end_matches("kB").trim().parse::<i64>().ok())
        .map_or(0, |kb| kb / 1024)
}

struct Interfaces {
    v4: BTreeMap<String, Vec<String>>,
    v6: BTreeMap<String, Vec<String>>,
    hw: BTreeMap<String, String>,
}

fn interfaces() -> Interfaces {
    let mut i = Interfaces {
        v4: BTreeMap::new(),
        v6: BTreeMap::new(),
        hw: BTreeMap::new(),
    };
    if let Ok(addrs) = nix::ifaddrs::getifaddrs() {
        for a in addrs {
            let name = a.interface_name.clone();
            i.v4.entry(name.clone()).or_default();
            i.v6.entry(name.clone()).or_default();
            let Some(addr) = a.address else { continue };
            if let Some(s) = addr.as_sockaddr_in() {
                i.v4.get_mut(&name)
                    .expect("just inserted")
                    .push(s.ip().to_string());
            } else if let Some(s) = addr.as_sockaddr_in6() {
                i.v6.get_mut(&name)
                    .expect("just inserted")
                    .push(s.ip().to_string());
            }
        }
    }
    for name in i.v4.keys() {
        let mac = read(&format!("/sys/class/net/{name}/address"))
            .trim()
            .to_owned();
        if !mac.is_empty() {
            i.hw.insert(name.clone(), mac);
        }
    }
    i
}

fn str_list(v: &[String]) -> Value {
    Value::Array(v.iter().map(Value::str).collect())
}

fn iface_map(m: &BTreeMap<String, Vec<String>>) -> Value {
    Value::Map(
        m.iter()
            .map(|(k, v)| (Value::str(k), str_list(v)))
            .collect(),
    )
}

/// Compute the grains for minion `id`, master list `masters`, then apply `static_grains`.
pub fn collect(id: &str, masters: &[String], static_grains: &Value, salt_version: &str) -> Value {
    let (vmajor, vminor) = version_info(salt_version).unwrap_or((3007, 17));
    let host = hostname();
    let fqdn = fqdn();
    let domain = fqdn
        .split_once('.')
        .map(|(_, d)| d.to_owned())
        .unwrap_or_default();
    let rel = os_release();
    let os_id = rel.get("ID").cloned().unwrap_or_default();
    let (os, os_family) = os_names(&os_id, rel.get("NAME").map_or("Linux", String::as_str));
    let osrelease = rel.get("VERSION_ID").cloned().unwrap_or_default();
    let release_info: Vec<Value> = osrelease
        .split('.')
        .filter_map(|p| p.parse::<i64>().ok().map(Value::Int))
        .collect();
    let (cpu_model, cpu_flags, ncpu) = cpuinfo();
    let num_cpus = std::thread::available_parallelism().map_or_else(|_| ncpu.max(1), usize::from);
    let ifs = interfaces();
    let mut ipv4: Vec<String> = ifs.v4.values().flatten().cloned().collect();
    ipv4.sort();
    ipv4.dedup();
    let mut ipv6: Vec<String> = ifs.v6.values().flatten().cloned().collect();
    ipv6.sort();
    ipv6.dedup();
    let ip_interfaces = Value::Map(
        ifs.v4
            .iter()
            .map(|(k, v4)| {
                let mut all = v4.clone();
                all.extend(ifs.v6.get(k).cloned().unwrap_or_default());
                (Value::str(k), str_list(&all))
            })
            .collect(),
    );
    let osarch = match std::env::consts::ARCH {
        "x86_64" if os_family == "Debian" => "amd64",
        "aarch64" if os_family == "Debian" => "arm64",
        a => a,
    };
    let (uid, gid) = (
        nix::unistd::getuid().as_raw(),
        nix::unistd::getgid().as_raw(),
    );
    let mut g = Value::map()
        .with("id", id)
        .with("host", host.as_str())
        .with("localhost", host.as_str())
        .with("nodename", host.as_str())
        .with("fqdn", fqdn.as_str())
        .with("domain", domain.as_str())
        .with("fqdns", Value::Array(vec![]))
        .with(
            "master",
            if masters.len() == 1 {
                Value::str(&masters[0])
            } else {
                str_list(masters)
            },
        )
        .with("kernel", "Linux")
        .with("kernelrelease", read("/proc/sys/kernel/osrelease").trim())
        .with("kernelversion", read("/proc/sys/kernel/version").trim())
        .with("cpuarch", std::env::consts::ARCH)
        .with("osarch", osarch)
        .with("os", os.as_str())
        .with("os_family", os_family.as_str())
        .with("osfullname", rel.get("NAME").cloned().unwrap_or_default())
        .with(
            "oscodename",
            rel.get("VERSION_CODENAME").cloned().unwrap_or_default(),
        )
        .with("osrelease", osrelease.as_str())
        .with("osrelease_info", Value::Array(release_info.clone()))
        .with(
            "osmajorrelease",
            release_info.first().cloned().unwrap_or(Value::Nil),
        )
        .with(
            "osfinger",
            format!("{os}-{}", osrelease.split('.').next().unwrap_or_default()),
        )
        .with("num_cpus", num_cpus as i64)
        .with("cpu_model", cpu_model.unwrap_or_default())
        .with("cpu_flags", str_list(&cpu_flags))
        .with("mem_total", meminfo_mib("MemTotal:"))
        .with("swap_total", meminfo_mib("SwapTotal:"))
        .with("ip4_interfaces", iface_map(&ifs.v4))
        .with("ip6_interfaces", iface_map(&ifs.v6))
        .with("ip_interfaces", ip_interfaces)
        .with("ipv4", str_list(&ipv4))
        .with("ipv6", str_list(&ipv6))
        .with(
            "hwaddr_interfaces",
            Value::Map(
                ifs.hw
                    .iter()
                    .map(|(k, v)| (Value::str(k), Value::str(v)))
                    .collect(),
            ),
        )
        .with("machine_id", read("/etc/machine-id").trim())
        .with("saltversion", salt_version)
        .with(
            "saltversioninfo",
            Value::Array(vec![Value::Int(vmajor), Value::Int(vminor)]),
        )
        .with(
            "shell",
            std::env::var("SHELL").unwrap_or_else(|_| "/bin/sh".into()),
        )
        .with("uid", i64::from(uid))
        .with("gid", i64::from(gid))
        .with("pid", i64::from(std::process::id()))
        .with("brine", true);
    if ipaddr_is_loopback_only(&ipv4) {
        g.insert("ip_gw", false);
    }
    if let Value::Map(entries) = static_grains {
        for (k, v) in entries {
            if let Some(k) = k.as_str() {
                g.insert(k, v.clone());
            }
        }
    }
    g
}

fn ipaddr_is_loopback_only(v4: &[String]) -> bool {
    v4.iter()
        .filter_map(|a| a.parse::<IpAddr>().ok())
        .all(|a| a.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grains_have_the_salt_keys_and_static_overrides() {
        let statics = Value::map()
            .with("roles", Value::Array(vec![Value::str("web")]))
            .with("os", "Custom");
        let g = collect("m1", &["127.0.0.1".into()], &statics, SALT_VERSION);
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
        ] {
            assert!(g.get(k).is_some(), "grain {k} missing");
        }
        assert_eq!(g.get("id").unwrap().as_str(), Some("m1"));
        assert_eq!(
            g.get("os").unwrap().as_str(),
            Some("Custom"),
            "static grains win"
        );
        assert!(g.get("num_cpus").unwrap().as_i64().unwrap() >= 1);
        assert!(g.get("mem_total").unwrap().as_i64().unwrap() > 0);
        let v4 = g.get("ipv4").unwrap().as_array().unwrap();
        assert!(v4.iter().any(|a| a.is_str("127.0.0.1")), "{v4:?}");
        assert_eq!(g.get("saltversion").unwrap().as_str(), Some(SALT_VERSION));
    }

    #[test]
    fn os_mapping() {
        assert_eq!(
            os_names("debian", "Debian GNU/Linux"),
            ("Debian".into(), "Debian".into())
        );
        assert_eq!(
            os_names("rocky", "Rocky Linux"),
            ("Rocky".into(), "RedHat".into())
        );
        assert_eq!(
            os_names("weird", "Weird OS"),
            ("Weird".into(), "Weird".into())
        );
    }
}
