//! The Salt mine on the master: `_mine`, `_mine_get`, `_mine_delete`, `_mine_flush`.
//!
//! Each minion's mine is a map `{function or alias: data}` stored as msgpack in
//! `cachedir/minions/<id>/mine.p` (Salt 3006/3007's localfs layout), kept in memory once read.
//! `_mine_get` targets as salt-master does (`CkMinions.check_minions`, not greedy: grain and
//! pillar targets only reach minions whose data this master holds; `pillar` compares values for
//! equality, `pillar_exact`), honours the master's `mine_get` ACL (requester id regex → function
//! regexes, `re.match`) and the minion-side ACL wrapping (`__saltmine_acl__`, `allow_tgt`).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use brine_proto::Value;
use brine_proto::auth::valid_minion_id;
use brine_proto::codec;
use brine_proto::target::{self, Facts, NoNodegroups, Tri};
use tracing::{debug, warn};

use crate::keys::{KeyDir, KeyStore};
use crate::lock;

/// Shared caches the mine targets against.
pub type DataCache = Arc<Mutex<HashMap<String, Value>>>;

/// Where a mine lives and what it allows.
#[derive(Debug, Clone)]
pub struct MineOptions {
    /// `cachedir/minions`.
    pub dir: PathBuf,
    /// The master's `mine_get` option (absent: every function for everyone).
    pub acl: Option<Value>,
    /// `minion_data_cache` or `enforce_mine_cache`: off, nothing is stored.
    pub enabled: bool,
}

/// The mine store and its targeting.
#[derive(Debug)]
pub struct Mine {
    opts: MineOptions,
    keys: KeyStore,
    grains: DataCache,
    pillars: DataCache,
    /// Mines read so far (`None`: the minion has none on disk).
    mines: Mutex<HashMap<String, Option<Value>>>,
}

impl Mine {
    /// A mine targeting over the accepted `keys` and the grains and pillar caches.
    pub fn new(opts: MineOptions, keys: KeyStore, grains: DataCache, pillars: DataCache) -> Self {
        Self {
            opts,
            keys,
            grains,
            pillars,
            mines: Mutex::new(HashMap::new()),
        }
    }

    fn path(&self, id: &str) -> Option<PathBuf> {
        valid_minion_id(id).then(|| self.opts.dir.join(id).join("mine.p"))
    }

    /// `id`'s mine (from memory, else from disk).
    fn fetch(&self, mines: &mut HashMap<String, Option<Value>>, id: &str) -> Option<Value> {
        if let Some(m) = mines.get(id) {
            return m.clone();
        }
        let m =
            self.path(id)
                .and_then(|p| std::fs::read(p).ok())
                .and_then(|b| match codec::decode(&b) {
                    Ok(v) => Some(v),
                    Err(e) => {
                        warn!(minion_id = id, error = %e, "unreadable mine file ignored");
                        None
                    }
                });
        mines.insert(id.to_owned(), m.clone());
        m
    }

    fn store(&self, mines: &mut HashMap<String, Option<Value>>, id: &str, v: Value) -> bool {
        let Some(path) = self.path(id) else {
            return false;
        };
        let bytes = codec::encode_wire(&v);
        let written = path
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| {
                let tmp = path.with_extension("p.tmp");
                std::fs::write(&tmp, &bytes)?;
                std::fs::rename(&tmp, &path)
            });
        if let Err(e) = written {
            warn!(minion_id = id, error = %e, "mine write failed");
            return false;
        }
        mines.insert(id.to_owned(), Some(v));
        true
    }

    /// `_mine`: store `data` (merged into the stored map; `clear` replaces it).
    pub fn update(&self, id: &str, load: &Value) -> Value {
        if !self.opts.enabled {
            return Value::Bool(true);
        }
        let Some(data) = load.get("data") else {
            return Value::map();
        };
        let mut mines = lock(&self.mines);
        let clear = load.get("clear").is_some_and(Value::is_truthy);
        let new = if clear {
            // Salt 3006-3008 fail here (the reply is "" and nothing is stored); brine does what
            // `mine.update(clear=True)` asks.
            data.clone()
        } else {
            match self.fetch(&mut mines, id) {
                None => data.clone(),
                Some(mut old @ Value::Map(_)) => {
                    if let Some(entries) = data.as_map() {
                        for (k, v) in entries {
                            set(&mut old, k, v.clone());
                        }
                    }
                    old
                }
                Some(_) => {
                    warn!(
                        minion_id = id,
                        "stored mine is not a map: the new data is not stored (as in Salt)"
                    );
                    return Value::Bool(true);
                }
            }
        };
        self.store(&mut mines, id, new);
        Value::Bool(true)
    }

    /// `_mine_delete`: drop one function from `id`'s mine.
    pub fn delete(&self, id: &str, load: &Value) -> Value {
        if !self.opts.enabled {
            return Value::Bool(true);
        }
        let mut mines = lock(&self.mines);
        let Some(mut m) = self.fetch(&mut mines, id) else {
            return Value::Bool(true);
        };
        if m.as_map().is_none() {
            return Value::Bool(false);
        }
        if let Some(fun) = load.get("fun") {
            if let Value::Map(entries) = &mut m {
                entries.retain(|(k, _)| k != fun);
            }
            if !self.store(&mut mines, id, m) {
                return Value::Bool(false);
            }
        }
        Value::Bool(true)
    }

    /// `_mine_flush`: remove `id`'s mine; `false` when there was none.
    pub fn flush(&self, id: &str) -> Value {
        if !self.opts.enabled {
            return Value::Bool(true);
        }
        let mut mines = lock(&self.mines);
        mines.insert(id.to_owned(), None);
        Value::Bool(
            self.path(id)
                .is_some_and(|p| std::fs::remove_file(p).is_ok()),
        )
    }

    /// The minions `tgt` of `tgt_type` reaches for the master (not greedy), ordered as Salt
    /// orders accepted keys (case-insensitively). `None` for an expression brine cannot
    /// evaluate exactly (logged).
    fn check_minions(&self, tgt: &Value, tgt_type: &str, greedy: bool) -> Option<Vec<String>> {
        let mut ids = self.keys.list(KeyDir::Accepted);
        ids.sort_by_key(|a| a.to_lowercase());
        let grains = lock(&self.grains);
        let pillars = lock(&self.pillars);
        let nil = Value::Nil;
        let mut out = Vec::new();
        for id in ids {
            let g = grains.get(&id);
            // Grain and pillar targets look at cached minions only (Salt's `greedy=False`).
            if !greedy
                && g.is_none()
                && matches!(
                    tgt_type,
                    "grain" | "grain_pcre" | "pillar_exact" | "pillar_pcre"
                )
            {
                continue;
            }
            let facts = Facts {
                id: &id,
                grains: g.unwrap_or(&nil),
                pillar: pillars.get(&id).unwrap_or(&nil),
            };
            match target::evaluate(tgt, tgt_type, ":", &facts, &NoNodegroups) {
                Ok(Tri::Yes) => out.push(id),
                Ok(Tri::No) => {}
                Ok(Tri::Unknown) if greedy => out.push(id),
                Ok(Tri::Unknown) => {
                    debug!(minion_id = %id, tgt = ?tgt, "mine target undecided for this minion (no data): not matched");
                }
                Err(e) => {
                    warn!(tgt = ?tgt, tgt_type, error = %e, "mine target refused");
                    return None;
                }
            }
        }
        Some(out)
    }

    /// `_mine_get`.
    pub fn get(&self, requester: &str, load: &Value) -> Value {
        let (functions, ret_dict) = match load.get("fun") {
            Some(Value::Str(_)) => {
                let s = load.get("fun").and_then(Value::as_str).unwrap_or("");
                let mut f: Vec<String> = Vec::new();
                for part in s.split(',') {
                    if !f.iter().any(|x| x == part) {
                        f.push(part.to_owned());
                    }
                }
                let many = f.len() > 1;
                (f, many)
            }
            Some(Value::Array(items)) => (
                items
                    .iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect(),
                true,
            ),
            _ => return Value::map(),
        };
        let functions = match &self.opts.acl {
            None => functions,
            Some(acl) => {
                let Some(entries) = acl.as_map() else {
                    return Value::map();
                };
                let mut perms: Vec<&str> = Vec::new();
                for (k, v) in entries {
                    let Some(k) = k.as_str() else { continue };
                    if re_match(k, requester) == Some(true) {
                        perms.extend(
                            v.as_array()
                                .unwrap_or_default()
                                .iter()
                                .filter_map(Value::as_str),
                        );
                    }
                }
                let allowed: Vec<String> = functions
                    .into_iter()
                    .filter(|f| perms.iter().any(|p| re_match(p, f) == Some(true)))
                    .collect();
                if allowed.is_empty() {
                    warn!(
                        minion_id = requester,
                        "mine.get refused by the master's mine_get ACL"
                    );
                    return Value::map();
                }
                allowed
            }
        };
        if !valid_minion_id(requester) {
            return Value::map();
        }
        let tgt_type = load
            .get("tgt_type")
            .or_else(|| load.get("expr_form"))
            .and_then(Value::as_str)
            .unwrap_or("glob");
        let tgt_type = match tgt_type.to_lowercase().as_str() {
            "pillar" => "pillar_exact".to_owned(),
            "compound" => "compound_pillar_exact".to_owned(),
            other => other.to_owned(),
        };
        let tgt = load.get("tgt").cloned().unwrap_or(Value::Nil);
        let Some(minions) = self.check_minions(&tgt, &tgt_type, false) else {
            return Value::map();
        };
        let mut ret = Value::map();
        let mut mines = lock(&self.mines);
        for m in minions {
            let Some(mdata @ Value::Map(_)) = self.fetch(&mut mines, &m) else {
                continue;
            };
            for f in &functions {
                let Some(entry) = mdata.get(f) else { continue };
                let mut data = entry.clone();
                if entry.get("__saltmine_acl__").is_some() {
                    data = entry.get("__data__").cloned().unwrap_or(Value::Nil);
                    if let Some(allow) = entry.get("allow_tgt").filter(|v| v.is_truthy()) {
                        let allow_type = entry
                            .get("allow_tgt_type")
                            .and_then(Value::as_str)
                            .filter(|t| !t.is_empty())
                            .unwrap_or("glob");
                        let allowed = self
                            .check_minions(allow, allow_type, true)
                            .unwrap_or_default();
                        if allowed.is_empty() || !allowed.iter().any(|a| a == requester) {
                            continue;
                        }
                    }
                }
                if ret_dict {
                    if ret.get(f).is_none() {
                        ret.insert(f, Value::map());
                    }
                    if let Value::Map(entries) = &mut ret
                        && let Some((_, inner)) = entries.iter_mut().find(|(k, _)| k.is_str(f))
                    {
                        inner.insert(&m, data);
                    }
                } else {
                    ret.insert(&m, data);
                }
            }
        }
        ret
    }
}

/// Set `k` in the map `m`, in place when present (Python's `dict.update` order).
fn set(m: &mut Value, k: &Value, v: Value) {
    if let Value::Map(entries) = m {
        if let Some(e) = entries.iter_mut().find(|(key, _)| key == k) {
            e.1 = v;
        } else {
            entries.push((k.clone(), v));
        }
    }
}

/// Python's `re.match(pattern, text)` (`None`: a pattern brine cannot evaluate exactly).
fn re_match(pattern: &str, text: &str) -> Option<bool> {
    target::pyre::compile(pattern)
        .ok()
        .and_then(|r| r.match_start(text))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mine(dir: &std::path::Path, acl: Option<Value>) -> Mine {
        let pki = dir.join("pki");
        let keys = KeyStore::open(&pki).unwrap();
        for id in ["m1", "m2", "web1", "m10"] {
            std::fs::write(pki.join("minions").join(id), "k").unwrap();
        }
        let grains: DataCache = Arc::default();
        for id in ["m1", "m2", "web1"] {
            lock(&grains).insert(id.into(), Value::map().with("os", "Linux"));
        }
        lock(&grains).insert("m10".into(), Value::map().with("os", "BSD"));
        Mine::new(
            MineOptions {
                dir: dir.join("minions"),
                acl,
                enabled: true,
            },
            keys,
            grains,
            Arc::default(),
        )
    }

    fn load(fun: Value, tgt: &str, tgt_type: &str) -> Value {
        Value::map()
            .with("fun", fun)
            .with("tgt", tgt)
            .with("tgt_type", tgt_type)
    }

    #[test]
    fn store_merge_get_delete_flush_as_salt_master() {
        let d = tempfile::tempdir().unwrap();
        let m = mine(d.path(), None);
        let up = |id: &str, data: Value| m.update(id, &Value::map().with("data", data));
        assert_eq!(
            up("m1", Value::map().with("test.ping", true).with("aaa", 1)),
            Value::Bool(true)
        );
        assert_eq!(
            up("m2", Value::map().with("test.ping", true)),
            Value::Bool(true)
        );
        assert_eq!(
            up("web1", Value::map().with("test.ping", "w")),
            Value::Bool(true)
        );
        // merged, existing keys in place
        up("m1", Value::map().with("test.ping", 2));
        let got = m.get("m2", &load(Value::str("test.ping"), "*", "glob"));
        assert_eq!(
            got,
            Value::map()
                .with("m1", 2)
                .with("m2", true)
                .with("web1", "w")
        );
        let got = m.get("m2", &load(Value::str("test.ping,aaa"), "m*", "glob"));
        assert_eq!(got.get("aaa"), Some(&Value::map().with("m1", 1)));
        let got = m.get(
            "m2",
            &load(Value::Array(vec![Value::str("aaa")]), "*", "glob"),
        );
        assert_eq!(got, Value::map().with("aaa", Value::map().with("m1", 1)));
        // grain targets: cached minions only; BSD's m10 has no mine anyway
        let got = m.get("m1", &load(Value::str("test.ping"), "os:Linux", "grain"));
        assert_eq!(got.as_map().unwrap().len(), 3);
        // a fresh store reads from disk
        drop(m);
        let m = mine(d.path(), None);
        assert_eq!(
            m.get("x", &load(Value::str("aaa"), "m1", "glob")),
            Value::map().with("m1", 1)
        );
        assert_eq!(
            m.delete("m1", &Value::map().with("fun", "aaa")),
            Value::Bool(true)
        );
        assert_eq!(
            m.get("x", &load(Value::str("aaa"), "m1", "glob")),
            Value::map()
        );
        assert_eq!(m.flush("m1"), Value::Bool(true));
        assert_eq!(
            m.flush("m1"),
            Value::Bool(false),
            "a second flush finds nothing"
        );
        assert_eq!(m.flush("../etc"), Value::Bool(false));
        // bad fun shapes
        assert_eq!(m.get("m1", &load(Value::Int(3), "*", "glob")), Value::map());
    }

    #[test]
    fn acls_master_and_minion_side() {
        let d = tempfile::tempdir().unwrap();
        // m1 (and, anchored at the start only, m10) may read test.*; nobody else anything.
        let acl = Value::map().with("m1", Value::Array(vec![Value::str("test\\.")]));
        let m = mine(d.path(), Some(acl));
        let wrapped = Value::map()
            .with("__data__", 5)
            .with("__saltmine_acl__", 1)
            .with("allow_tgt", "m1");
        m.update(
            "m2",
            &Value::map().with("data", Value::map().with("test.ping", wrapped)),
        );
        let q = load(Value::str("test.ping"), "*", "glob");
        assert_eq!(m.get("m1", &q), Value::map().with("m2", 5));
        assert_eq!(m.get("web1", &q), Value::map(), "no master ACL entry");
        assert_eq!(
            m.get("m10", &q),
            Value::map(),
            "allowed by the master, not by allow_tgt"
        );
        assert_eq!(
            m.get("m1", &load(Value::str("grains.items"), "*", "glob")),
            Value::map()
        );
    }
}
