//! Facts about the host a minion-side configuration needs (the Salt version brine reports,
//! the host name and FQDN for the default id).

/// The Salt release brine's minion behaves as unless `brine_salt_version` says otherwise.
pub const SALT_VERSION: &str = "3007.17";

/// `3007.17` → `(3007, 17)`.
pub fn version_info(v: &str) -> Option<(i64, i64)> {
    let (major, minor) = v.split_once('.')?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// The host name as the kernel has it.
pub fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| read("/proc/sys/kernel/hostname").trim().to_owned())
}

/// The FQDN: the host name if it is dotted, else a dotted alias of it from `/etc/hosts`, else
/// the host name (no DNS lookups: they can hang a minion's start).
pub fn fqdn() -> String {
    let host = hostname();
    if host.contains('.') {
        return host;
    }
    for line in read("/etc/hosts").lines() {
        let line = line.split('#').next().unwrap_or_default();
        let names: Vec<&str> = line.split_whitespace().skip(1).collect();
        if names.contains(&host.as_str())
            && let Some(dotted) = names.iter().find(|n| n.starts_with(&format!("{host}.")))
        {
            return (*dotted).to_owned();
        }
    }
    host
}
