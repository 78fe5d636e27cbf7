//! What the serving loop watches besides minion traffic: the pki directory (`salt/key` events,
//! syndics whose key went away), presence (`salt/presence/*`), Salt's AES dropfile, and the
//! cache directories that name syndics and resource managers.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

use brine_proto::Value;
use tracing::{info, warn};

use super::{MasterCore, Rng};
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
pub(super) fn check_dropfile(shared: &MasterCore, secrets: &Mutex<Secrets>) {
    let dfn = shared.cfg.cachedir.join(".dfn");
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

/// Salt's presence events: `salt/presence/change` `{new, lost}` when the present set changed
/// (checked every second), `salt/presence/present` `{present}` every minute.
pub(super) fn fire_presence(
    shared: &MasterCore,
    before: BTreeSet<String>,
    full: bool,
) -> BTreeSet<String> {
    let now = shared.present();
    let list = |s: Vec<&String>| Value::Array(s.into_iter().map(Value::str).collect());
    let new: Vec<&String> = now.difference(&before).collect();
    let lost: Vec<&String> = before.difference(&now).collect();
    if !new.is_empty() || !lost.is_empty() {
        shared.bus.fire(
            "salt/presence/change",
            Value::map().with("new", list(new)).with("lost", list(lost)),
        );
    }
    if full {
        shared.bus.fire(
            "salt/presence/present",
            Value::map().with("present", list(now.iter().collect())),
        );
    }
    now
}

/// `salt/key` events for key changes made on disk (`brine-key`, `salt-key`, auto-accept).
pub(super) fn fire_key_changes(
    shared: &MasterCore,
    before: BTreeMap<String, &'static str>,
) -> BTreeMap<String, &'static str> {
    let after = key_states(&shared.keys);
    for id in shared.syndics() {
        if after.get(&id) != Some(&"accept") {
            shared.forget_syndic(&id);
        }
    }
    for (id, act) in &after {
        if before.get(id) != Some(act) {
            shared.bus.fire(
                "salt/key",
                Value::map()
                    .with("id", id.as_str())
                    .with("act", *act)
                    .with("result", true),
            );
        }
    }
    for id in before.keys().filter(|id| !after.contains_key(*id)) {
        shared.bus.fire(
            "salt/key",
            Value::map()
                .with("id", id.as_str())
                .with("act", "delete")
                .with("result", true),
        );
    }
    after
}
