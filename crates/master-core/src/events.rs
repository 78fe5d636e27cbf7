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

/// Microseconds since the epoch.
pub fn unix_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Salt's `_stamp` for now.
pub fn now_stamp() -> String {
    brine_proto::jid::iso_stamp(unix_micros())
}
