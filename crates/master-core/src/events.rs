//! The master's internal event bus: Salt's tags (`salt/auth`, `minion_start`,
//! `salt/job/<jid>/new`, `salt/job/<jid>/ret/<id>`, `salt/key`, `salt/presence/*`), each stamped
//! with `_stamp` as Salt does. Subscribers that fall behind lose the oldest events (they are
//! told how many) instead of slowing the master down.

use std::sync::Arc;

use brine_proto::Value;
use tokio::sync::broadcast;

use crate::requests::MasterEvent;

/// How many events a slow subscriber may lag behind before it loses some.
pub const BUS_CAPACITY: usize = 16_384;

/// A cloneable handle to the bus.
#[derive(Debug, Clone)]
pub struct EventBus {
    tx: broadcast::Sender<Arc<MasterEvent>>,
}

impl Default for EventBus {
    fn default() -> Self {
        Self::new()
    }
}

impl EventBus {
    /// An empty bus.
    pub fn new() -> Self {
        Self {
            tx: broadcast::channel(BUS_CAPACITY).0,
        }
    }

    /// Fire `tag` with `data`; `_stamp` is added to map data that lacks one.
    pub fn fire(&self, tag: impl Into<String>, mut data: Value) {
        if data.as_map().is_some() && data.get("_stamp").is_none() {
            data.insert("_stamp", now_stamp());
        }
        // No subscriber is not an error.
        let _ = self.tx.send(Arc::new(MasterEvent {
            tag: tag.into(),
            data,
        }));
    }

    /// Fire an event the request handler produced.
    pub fn fire_event(&self, e: MasterEvent) {
        self.fire(e.tag, e.data);
    }

    /// A new subscription, seeing events fired from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<MasterEvent>> {
        self.tx.subscribe()
    }
}

/// Longest tag a minion may fire.
pub const MAX_MINION_TAG: usize = 1024;

/// Why a tag fired by minion `sender` (`_minion_event`, after any `pretag`) is refused, or
/// `None` if it may reach the bus.
///
/// A minion may not impersonate the master: Salt's minion-event blacklist (`salt/job/*/new`,
/// `salt/job/*/publish`, `salt/job/*/return`, `salt/key`, `salt/run/*`, `salt/wheel/*`,
/// `salt/cloud/*`, `salt/cluster/*`), widened to every master-owned tag — `salt/auth`,
/// `salt/key/...`, every `salt/job/...` tag but its own progress events
/// (`salt/job/<jid>/prog/<sender>/...`), `salt/presence/...`, `salt/brine/...` — and another
/// minion's `salt/minion/<id>/...` and `salt/beacon/<id>/...`. Control characters (which would
/// split a line of the `/events` stream) and empty or oversized tags are refused too.
pub fn refuse_minion_tag(tag: &str, sender: &str) -> Option<&'static str> {
    if tag.is_empty() {
        return Some("empty tag");
    }
    if tag.len() > MAX_MINION_TAG {
        return Some("tag longer than 1024 bytes");
    }
    if tag.chars().any(char::is_control) {
        return Some("control character in the tag");
    }
    let under = |prefix: &str| tag == prefix || tag.starts_with(&format!("{prefix}/"));
    for master_owned in [
        "salt/auth",
        "salt/key",
        "salt/run",
        "salt/wheel",
        "salt/cloud",
        "salt/cluster",
        "salt/presence",
        "salt/brine",
        "salt/stats",
    ] {
        if under(master_owned) {
            return Some("a master-owned tag");
        }
    }
    if let Some(rest) = tag.strip_prefix("salt/job/") {
        let mut parts = rest.splitn(4, '/');
        let (_jid, kind, id) = (parts.next(), parts.next(), parts.next());
        return if kind == Some("prog") && id == Some(sender) {
            None
        } else {
            Some("a job tag only the master fires")
        };
    }
    for per_minion in ["salt/minion/", "salt/beacon/"] {
        if let Some(rest) = tag.strip_prefix(per_minion) {
            let id = rest.split('/').next().unwrap_or("");
            if id != sender {
                return Some("another minion's tag");
            }
        }
    }
    if tag.starts_with("syndic/") {
        return Some("a forwarded-event tag without the sender's pretag");
    }
    None
}

pub use brine_transport::unix_micros;

/// Salt's `_stamp` for now.
pub fn now_stamp() -> String {
    brine_proto::jid::iso_stamp(unix_micros())
}

#[cfg(test)]
mod tests {
    use super::refuse_minion_tag;

    #[test]
    fn minions_cannot_fire_the_master_s_tags() {
        for tag in [
            "salt/key",
            "salt/key/x",
            "salt/auth",
            "salt/job/20261206120000000000/new",
            "salt/job/20261206120000000000/ret/db1",
            "salt/job/20261206120000000000/ret/m1",
            "salt/job/20261206120000000000/prog/db1/0",
            "salt/run/20261206120000000000/new",
            "salt/wheel/x/new",
            "salt/presence/change",
            "salt/minion/db1/start",
            "salt/beacon/db1/inotify",
            "syndic/s1/salt/job/1/ret/x",
            "ok\ndata: forged",
            "",
        ] {
            assert!(refuse_minion_tag(tag, "m1").is_some(), "{tag:?}");
        }
        for tag in [
            "salt/minion/m1/start",
            "salt/beacon/m1/inotify/",
            "salt/job/20261206120000000000/prog/m1/0",
            "custom/deploy/done",
            "minion_start",
            "salt/keys-rotated-by-app",
        ] {
            assert_eq!(refuse_minion_tag(tag, "m1"), None, "{tag:?}");
        }
    }
}
