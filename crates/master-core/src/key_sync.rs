//! Key decisions shared between masters through Redis (`brine_key_sync: redis`, brine's
//! extension; Salt's masters share keys only by sharing a pki directory).
//!
//! Each master keeps Salt's pki layout on local disk, so `salt-key` and `brine-key` still read and
//! change it. Once a second a task compares the accepted and rejected keys on disk with what it
//! saw last. It publishes each decision made here (with `brine-key`, `salt-key` or
//! auto-acceptance) to the hash `brine:keys` (minion id → `{state, key, stamp, by}`, `state`
//! `accepted`, `rejected` or `deleted`) and bumps `brine:keys:version`. When the version moved,
//! it applies the other masters' newer decisions to its own directory. A deletion or a rejection
//! of an accepted key also writes Salt's AES dropfile, as `salt-key` does. Pending keys stay
//! local: every master sees a minion's own `_auth`.
//!
//! When Redis is unreachable, decisions made here wait and are published once it is back.
//! Meanwhile each master keeps the keys it last knew: a key deleted on another master stays
//! accepted here until Redis answers again (documented in `docs/mofm.md`).

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Value as Json, json};
use tracing::{debug, info, warn};

use crate::events::unix_micros;
use brine_proto::auth::KeyAction;

use crate::keys::{KeyDir, KeyStore};
use crate::redis_cache::RedisReader;

const HASH: &str = "brine:keys";
const VERSION: &str = "brine:keys:version";
/// How often the pki directory and Redis are compared.
pub const PERIOD: Duration = Duration::from_secs(1);

/// A key's state on one master: accepted or rejected, with the key itself.
type Known = BTreeMap<String, (&'static str, String)>;

/// The task's state.
pub struct KeySync {
    keys: KeyStore,
    redis: RedisReader,
    cachedir: PathBuf,
    me: String,
    /// Accepted and rejected keys on disk as last seen (after publishing or applying).
    known: Known,
    /// Decisions made here that Redis has not taken yet, by minion id.
    outbox: BTreeMap<String, Json>,
    /// The newest decision applied or published per minion (its `stamp`).
    seen: HashMap<String, u64>,
    version: Option<String>,
}

fn snapshot(keys: &KeyStore) -> Known {
    let mut out = Known::new();
    for (d, state) in [
        (KeyDir::Accepted, "accepted"),
        (KeyDir::Rejected, "rejected"),
    ] {
        for id in keys.list(d) {
            if let Ok(Some(pem)) = keys.read(d, &id) {
                out.insert(id, (state, pem));
            }
        }
    }
    out
}

impl KeySync {
    /// Share the decisions of the pki directory `keys` through `redis`; `cachedir` is where
    /// the AES dropfile goes; `me` names this master in the records.
    pub fn new(keys: KeyStore, redis: RedisReader, cachedir: PathBuf, me: String) -> Self {
        let known = snapshot(&keys);
        Self {
            keys,
            redis,
            cachedir,
            me,
            known,
            outbox: BTreeMap::new(),
            seen: HashMap::new(),
            version: None,
        }
    }

    /// Compare, publish and apply once a second until `shutdown` resolves.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut tick = tokio::time::interval(PERIOD);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                _ = tick.tick() => self.round().await,
            }
        }
        self.round().await;
    }

    /// One comparison: local decisions out, other masters' decisions in.
    pub async fn round(&mut self) {
        let now = snapshot(&self.keys);
        let stamp = unix_micros();
        for (id, (state, pem)) in &now {
            if self.known.get(id) != Some(&(state, pem.clone())) {
                self.decided(id, state, Some(pem), stamp);
            }
        }
        let gone: Vec<String> = self
            .known
            .keys()
            .filter(|id| !now.contains_key(*id))
            .cloned()
            .collect();
        for id in gone {
            self.decided(&id, "deleted", None, stamp);
        }
        self.known = now;
        if !self.outbox.is_empty() {
            self.publish().await;
        }
        self.apply_remote().await;
    }

    fn decided(&mut self, id: &str, state: &str, pem: Option<&String>, stamp: u64) {
        info!(
            minion_id = id,
            state, "key decision made here; shared through Redis"
        );
        self.seen.insert(id.to_owned(), stamp);
        self.outbox.insert(
            id.to_owned(),
            json!({"state": state, "key": pem, "stamp": stamp, "by": self.me}),
        );
    }

    async fn publish(&mut self) {
        let mut pipe = redis::pipe();
        for (id, entry) in &self.outbox {
            pipe.hset(HASH, id, entry.to_string()).ignore();
        }
        pipe.incr(VERSION, 1).ignore();
        if self.redis.run(&pipe).await {
            self.outbox.clear();
        } else {
            warn!(
                waiting = self.outbox.len(),
                "key decisions not shared yet: Redis cannot be reached"
            );
        }
    }

    async fn apply_remote(&mut self) {
        let Some(version) = self
            .redis
            .get::<Option<String>>(redis::cmd("GET").arg(VERSION))
            .await
        else {
            return;
        };
        let Some(version) = version else { return };
        if self.version.as_ref() == Some(&version) {
            return;
        }
        let Some(all) = self
            .redis
            .get::<BTreeMap<String, String>>(redis::cmd("HGETALL").arg(HASH))
            .await
        else {
            return;
        };
        let mut changed = false;
        for (id, raw) in all {
            let Ok(entry) = serde_json::from_str::<Json>(&raw) else {
                warn!(minion_id = %id, "unreadable key decision in Redis ignored");
                continue;
            };
            let stamp = entry.get("stamp").and_then(Json::as_u64).unwrap_or(0);
            if self.outbox.contains_key(&id) || stamp <= self.seen.get(&id).copied().unwrap_or(0) {
                continue;
            }
            self.seen.insert(id.clone(), stamp);
            let state = entry.get("state").and_then(Json::as_str).unwrap_or("");
            let pem = entry.get("key").and_then(Json::as_str);
            let here = self.known.get(&id).map(|(s, p)| (*s, p.as_str()));
            let by = entry.get("by").and_then(Json::as_str).unwrap_or("?");
            match (state, pem) {
                ("accepted" | "rejected", Some(pem)) if here == Some((state_name(state), pem)) => {}
                ("deleted", _) if here.is_none() => {}
                _ => {
                    if let Err(e) = self.apply(&id, state, pem, here.map(|h| h.0)) {
                        warn!(minion_id = %id, state, by, error = %e, "key decision from another master not applied");
                        continue;
                    }
                    info!(minion_id = %id, state, by, "key decision from another master applied");
                    changed = true;
                }
            }
        }
        if changed {
            self.known = snapshot(&self.keys);
        }
        self.version = Some(version);
    }

    fn apply(
        &self,
        id: &str,
        state: &str,
        pem: Option<&str>,
        before: Option<&'static str>,
    ) -> Result<(), String> {
        let remove = |d: KeyDir| self.keys.remove(d, id).map_err(|e| e.to_string());
        if !brine_proto::auth::valid_minion_id(id) {
            return Err("not a valid minion id".into());
        }
        match (state, pem) {
            ("accepted", Some(pem)) => {
                self.keys
                    .apply(id, &KeyAction::WriteAccepted(pem.to_owned()))
                    .map_err(|e| e.to_string())?;
                remove(KeyDir::Pending)?;
                remove(KeyDir::Rejected)?;
            }
            ("rejected", Some(pem)) => {
                self.keys
                    .apply(id, &KeyAction::WriteRejected(pem.to_owned()))
                    .map_err(|e| e.to_string())?;
                remove(KeyDir::Pending)?;
                remove(KeyDir::Accepted)?;
            }
            ("deleted", _) => {
                self.keys.delete(id).map_err(|e| e.to_string())?;
            }
            (other, _) => return Err(format!("unknown key state {other:?}")),
        }
        if before == Some("accepted") && state != "accepted" {
            // As salt-key does after taking a key away: minions re-key on the next publish.
            let dfn = self.cachedir.join(".dfn");
            if let Err(e) = std::fs::write(&dfn, b"") {
                warn!(path = %dfn.display(), error = %e, "cannot write the AES dropfile");
            } else {
                debug!("AES dropfile written after a key was taken away on another master");
            }
        }
        Ok(())
    }
}

fn state_name(s: &str) -> &'static str {
    match s {
        "accepted" => "accepted",
        "rejected" => "rejected",
        _ => "deleted",
    }
}
