//! What the serving loop reads from disk besides minion traffic: the pki directory's key states
//! (for `salt/key` events), Salt's AES dropfile, and the cache directories that name syndics
//! and resource managers.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

use tracing::{info, warn};

use super::Rng;
use crate::keys::{KeyDir, KeyStore};
use crate::lock;
use crate::secrets::Secrets;

/// The minion ids named by the files of `dir` (syndics, resource managers).
pub(super) fn ids_in(dir: &std::path::Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|id| brine_proto::auth::valid_minion_id(id))
        .collect()
}

pub(super) fn resources_dir(cachedir: &std::path::Path) -> std::path::PathBuf {
    cachedir.join("brine").join("resources")
}

/// Salt's AES rotation request: `brine-key`/`salt-key` write `cachedir/.dfn` after deleting or
/// rejecting a key (`rotate_aes_key`). Checked every second (Salt: every `loop_interval`).
pub(super) fn check_dropfile(cachedir: &std::path::Path, secrets: &Mutex<Secrets>) {
    let dfn = cachedir.join(".dfn");
    if !dfn.exists() {
        return;
    }
    {
        use std::os::unix::fs::PermissionsExt as _;
        let _ = std::fs::set_permissions(&dfn, std::fs::Permissions::from_mode(0o600));
    }
    if let Err(e) = std::fs::remove_file(&dfn) {
        warn!(path = %dfn.display(), error = %e, "cannot remove the AES dropfile");
        return;
    }
    lock(secrets).rotate(&mut Rng);
    info!("AES key rotated (dropfile); minions re-authenticate on their next publish");
}

pub(super) fn key_states(keys: &KeyStore) -> BTreeMap<String, &'static str> {
    let mut out = BTreeMap::new();
    for (d, act) in [
        (KeyDir::Pending, "pend"),
        (KeyDir::Rejected, "reject"),
        (KeyDir::Accepted, "accept"),
    ] {
        for id in keys.list(d) {
            out.insert(id, act);
        }
    }
    out
}
