//! `brine-key`: salt-key's flags and output over the master's pki directory.

use std::io::Write;
use std::path::{Path, PathBuf};

use brine_master_core::keys::{KeyDir, KeyStore};
use brine_proto::target::fnmatch;

/// The four key lists in salt-key's order and names.
pub const LISTS: [(KeyDir, &str, &str); 4] = [
    (KeyDir::Accepted, "minions", "Accepted Keys:"),
    (KeyDir::Denied, "minions_denied", "Denied Keys:"),
    (KeyDir::Pending, "minions_pre", "Unaccepted Keys:"),
    (KeyDir::Rejected, "minions_rejected", "Rejected Keys:"),
];

/// Print lists (all, or the ones selected) as salt-key does, in `txt` or `json`.
pub fn print_lists(
    out: &mut dyn Write,
    ks: &KeyStore,
    which: &[KeyDir],
    json: bool,
) -> std::io::Result<()> {
    if json {
        let mut m = serde_json::Map::new();
        for (d, name, _) in LISTS {
            if which.contains(&d) {
                m.insert(name.into(), ks.list(d).into());
            }
        }
        return writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&serde_json::Value::Object(m)).unwrap_or_default()
        );
    }
    for (d, _, title) in LISTS {
        if which.contains(&d) {
            writeln!(out, "{title}")?;
            for id in ks.list(d) {
                writeln!(out, "{id}")?;
            }
        }
    }
    Ok(())
}

/// Ids in `dir` matching the glob `pattern`.
pub fn matching(ks: &KeyStore, dir: KeyDir, pattern: &str) -> Vec<String> {
    ks.list(dir)
        .into_iter()
        .filter(|id| fnmatch(pattern, id))
        .collect()
}

/// Ask the master to rotate its AES key (Salt's dropfile `cachedir/.dfn`, mode 0400): after a
/// key is deleted or rejected, minions that lost their key must not keep reading publishes.
pub fn write_dropfile(cachedir: &Path, master_id: &str) -> std::io::Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::create_dir_all(cachedir)?;
    let dfn = cachedir.join(".dfn");
    if dfn.exists() {
        // A rotation is already requested (Salt does the same).
        return Ok(dfn);
    }
    // Written aside and renamed into place, mode 0400: Salt ignores dropfiles with other modes.
    let next = cachedir.join(".dfn-next");
    std::fs::write(&next, master_id)?;
    std::fs::set_permissions(&next, std::fs::Permissions::from_mode(0o400))?;
    std::fs::rename(&next, &dfn)?;
    Ok(dfn)
}
