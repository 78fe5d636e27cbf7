//! The API's `wheel` client: the key and minion functions of Salt's wheel modules that web UIs
//! (SaltGUI) and operators call — `key.list_all`, `key.list`, `key.finger`, `key.accept`,
//! `key.reject`, `key.delete`, `key.print`, `minions.connected`, `config.values` — answered in
//! salt-api's envelope (`{"tag": "salt/wheel/<jid>", "data": {fun, jid, tag, user, _stamp,
//! return, success}}`), with Salt's `salt/wheel/<jid>/new` and `/ret` events.
//!
//! Key changes go to the pki directory as `brine-key` makes them, so `salt-key`, the master's
//! own key watcher (`salt/key` events) and `brine_key_sync` see them as any other decision.

use brine_master_core::keys::{KeyDir, KeyStore};
use brine_proto::Value;
use brine_proto::target::fnmatch;
use serde_json::{Map, Value as Json, json};
use tracing::{info, warn};

use crate::{Shared, Token};

/// Wheel functions served, for error messages and `GET /`.
pub(crate) const FUNCTIONS: &[&str] = &[
    "key.list_all",
    "key.list",
    "key.finger",
    "key.print",
    "key.accept",
    "key.reject",
    "key.delete",
    "minions.connected",
    "config.values",
];

/// The key directories in Salt's order, with the names `key.list_all` gives them.
const DIRS: [(KeyDir, &str); 4] = [
    (KeyDir::Accepted, "minions"),
    (KeyDir::Pending, "minions_pre"),
    (KeyDir::Rejected, "minions_rejected"),
    (KeyDir::Denied, "minions_denied"),
];

/// Options that never leave the master through `config.values` (Salt sends them; a web UI
/// needs none of them), besides what [`redact`] leaves out.
const SECRET_OPTIONS: &[&str] = &["external_auth"];

/// Leave out, at any depth, options whose name suggests a credential (`pass`, `secret`,
/// `token`, `key`, `cred`, any case): `config.values` goes to every `@wheel` user and, as its
/// return event, to every event reader.
fn redact(m: &mut Map<String, Json>) {
    m.retain(|k, _| {
        let k = k.to_ascii_lowercase();
        !["pass", "secret", "token", "key", "cred"]
            .iter()
            .any(|w| k.contains(w))
    });
    for v in m.values_mut() {
        redact_value(v);
    }
}

fn redact_value(v: &mut Json) {
    match v {
        Json::Object(m) => redact(m),
        Json::Array(a) => a.iter_mut().for_each(redact_value),
        _ => {}
    }
}

use crate::runners::kwarg as arg;

fn flag(chunk: &Json, name: &str) -> bool {
    match arg(chunk, name, usize::MAX) {
        Some(Json::Bool(b)) => *b,
        Some(Json::String(s)) => matches!(s.to_ascii_lowercase().as_str(), "true" | "1" | "yes"),
        Some(Json::Number(n)) => n.as_i64().is_some_and(|n| n != 0),
        _ => false,
    }
}

/// Salt's `match` argument: a glob, a comma-separated list of globs, or a list of them.
fn patterns(chunk: &Json) -> Result<Vec<String>, String> {
    match arg(chunk, "match", 0) {
        Some(Json::String(s)) => Ok(s
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(str::to_owned)
            .collect()),
        Some(Json::Array(a)) => a
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| format!("match: {v} is not a minion id or glob"))
            })
            .collect(),
        Some(other) => Err(format!("match: {other} is not a minion id or glob")),
        None => Err("this wheel function needs match (a minion id or glob)".into()),
    }
}

fn matching(keys: &KeyStore, d: KeyDir, pats: &[String]) -> Vec<String> {
    keys.list(d)
        .into_iter()
        .filter(|id| pats.iter().any(|p| p == id || fnmatch(p, id)))
        .collect()
}

/// `{status: [ids]}` for the statuses where `pats` match keys now (Salt's `name_match`).
fn name_match(keys: &KeyStore, pats: &[String]) -> Json {
    let mut m = Map::new();
    for (d, name) in DIRS {
        let ids = matching(keys, d, pats);
        if !ids.is_empty() {
            m.insert(name.to_owned(), json!(ids));
        }
    }
    Json::Object(m)
}

fn fingerprint(pem: &str) -> String {
    brine_proto::crypt::rsa::pem_finger(pem, brine_proto::crypt::rsa::MessageDigestName::Sha256)
}

/// The master's own key files as `key.list_all`'s `local` lists them.
fn local_keys(keys: &KeyStore) -> Vec<String> {
    let mut v: Vec<String> = [
        "master.pem",
        "master.pub",
        "master_sign.pem",
        "master_sign.pub",
    ]
    .into_iter()
    .filter(|f| keys.dir().join(f).is_file())
    .map(str::to_owned)
    .collect();
    v.sort();
    v
}

/// Keys of the matched minions (`key.finger`: fingerprints, `key.print`: the PEM), by status,
/// with the master's own under `local` for `*`.
fn key_details(keys: &KeyStore, pats: &[String], print: bool) -> Json {
    let show = |pem: &str| {
        if print {
            pem.to_owned()
        } else {
            fingerprint(pem)
        }
    };
    let mut m = Map::new();
    // The master's own keys under `local` for `*`: public keys only, and fingerprints only
    // (`key.print` never shows them: `master.pem` is the master's private key).
    if !print && pats.iter().any(|p| p == "*") {
        let mut local = Map::new();
        for f in local_keys(keys).into_iter().filter(|f| f.ends_with(".pub")) {
            if let Ok(pem) = std::fs::read_to_string(keys.dir().join(&f)) {
                local.insert(f, json!(show(&pem)));
            }
        }
        if !local.is_empty() {
            m.insert("local".into(), Json::Object(local));
        }
    }
    for (d, name) in DIRS {
        let mut found = Map::new();
        for id in matching(keys, d, pats) {
            if let Ok(Some(pem)) = keys.read(d, &id) {
                found.insert(id, json!(show(&pem)));
            }
        }
        if !found.is_empty() {
            m.insert(name.to_owned(), Json::Object(found));
        }
    }
    Json::Object(m)
}

/// Salt's AES rotation after a key was taken away (`rotate_aes_key`, on by default): minions
/// whose key went must not read the next publishes.
fn rotate_aes(shared: &Shared) {
    if shared.cfg.raw.get("rotate_aes_key") == Some(&Json::Bool(false)) {
        return;
    }
    let dfn = shared.cfg.cachedir.join(".dfn");
    if let Err(e) = std::fs::write(&dfn, shared.cfg.id.as_deref().unwrap_or("")) {
        warn!(path = %dfn.display(), error = %e, "cannot write the AES dropfile after a key change");
    }
}

fn key_change(shared: &Shared, token: &Token, fun: &str, chunk: &Json) -> Result<Json, String> {
    use brine_proto::auth::KeyAction;
    let pats = patterns(chunk)?;
    let keys = shared.keys();
    let err = |e: brine_master_core::keys::KeyError| e.to_string();
    // Where the matched keys come from, what they become (nothing: deleted), and which
    // `include_*` flags add a status (Salt's key.accept and key.reject).
    type Becomes = Option<fn(String) -> KeyAction>;
    let (mut from, to, extra): (Vec<KeyDir>, Becomes, &[(&str, KeyDir)]) = match fun {
        "key.accept" => (
            vec![KeyDir::Pending],
            Some(KeyAction::WriteAccepted),
            &[
                ("include_rejected", KeyDir::Rejected),
                ("include_denied", KeyDir::Denied),
            ],
        ),
        "key.reject" => (
            vec![KeyDir::Pending],
            Some(KeyAction::WriteRejected),
            &[
                ("include_accepted", KeyDir::Accepted),
                ("include_denied", KeyDir::Denied),
            ],
        ),
        _ => (DIRS.iter().map(|(d, _)| *d).collect(), None, &[]),
    };
    from.extend(
        extra
            .iter()
            .filter(|(f, _)| flag(chunk, f))
            .map(|(_, d)| *d),
    );
    let mut took_away = false;
    for d in from {
        for id in matching(keys, d, &pats) {
            if let Some(action) = to {
                let Ok(Some(pem)) = keys.read(d, &id) else {
                    continue;
                };
                keys.apply(&id, &action(pem)).map_err(err)?;
            }
            keys.remove(d, &id).map_err(err)?;
            took_away |= d == KeyDir::Accepted;
            info!(user = %token.user, minion_id = %id, fun, "key changed by a wheel call");
        }
    }
    if took_away {
        rotate_aes(shared);
    }
    Ok(name_match(keys, &pats))
}

/// The value of wheel function `fun` for `chunk`.
pub(crate) async fn value(
    shared: &Shared,
    token: &Token,
    fun: &str,
    chunk: &Json,
) -> Result<Json, String> {
    let keys = shared.keys();
    match fun {
        "key.list_all" => {
            let mut m = Map::new();
            m.insert("local".into(), json!(local_keys(keys)));
            for (d, name) in DIRS {
                m.insert(name.into(), json!(keys.list(d)));
            }
            Ok(Json::Object(m))
        }
        "key.list" => {
            let status = arg(chunk, "match", 0)
                .and_then(Json::as_str)
                .ok_or("key.list needs match: a status (acc, pre, rej, den, all)")?;
            let dirs: Vec<(KeyDir, &str)> = match status {
                "acc" | "accepted" => vec![DIRS[0]],
                "pre" | "un" | "unaccepted" => vec![DIRS[1]],
                "rej" | "rejected" => vec![DIRS[2]],
                "den" | "denied" => vec![DIRS[3]],
                "all" => DIRS.to_vec(),
                other => return Err(format!("key.list: unknown status {other:?}")),
            };
            let mut m = Map::new();
            for (d, name) in dirs {
                m.insert(name.into(), json!(keys.list(d)));
            }
            Ok(Json::Object(m))
        }
        "key.finger" => Ok(key_details(keys, &patterns(chunk)?, false)),
        "key.print" => Ok(key_details(keys, &patterns(chunk)?, true)),
        "key.accept" | "key.reject" | "key.delete" => key_change(shared, token, fun, chunk),
        "minions.connected" => Ok(json!(shared.present().await)),
        "config.values" => {
            let mut m = shared.cfg.raw.clone();
            for k in SECRET_OPTIONS {
                m.remove(*k);
            }
            redact(&mut m);
            // Salt's defaults for what web UIs read when it is not configured.
            for (k, v) in [
                ("nodegroups", json!({})),
                ("reactor", json!([])),
                ("order_masters", json!(shared.cfg.order_masters)),
                ("state_verbose", json!(true)),
                ("state_output", json!("full")),
            ] {
                m.entry(k).or_insert(v);
            }
            if let Some(id) = &shared.cfg.id {
                m.entry("id").or_insert(json!(id));
            }
            Ok(Json::Object(m))
        }
        other => Err(format!(
            "wheel function {other:?} is not available (brine serves {})",
            FUNCTIONS.join(", ")
        )),
    }
}

/// Run wheel function `fun` for `token` (already allowed by its ACL) as job `jid` (a new one
/// if `None`): salt-api's envelope.
/// A function that fails is `success: false` with the message as its return, as in Salt.
pub(crate) async fn run(
    shared: &Shared,
    token: &Token,
    fun: &str,
    chunk: &Json,
    jid: Option<String>,
) -> Json {
    let jid = match jid {
        Some(j) => j,
        None => shared.new_jid().await,
    };
    let tag = format!("salt/wheel/{jid}");
    let user = token.user.clone();
    shared.bus.fire(
        format!("{tag}/new"),
        Value::map()
            .with("fun", format!("wheel.{fun}").as_str())
            .with("jid", jid.as_str())
            .with("user", user.as_str()),
    );
    let (ret, success) = match value(shared, token, fun, chunk).await {
        Ok(v) => (v, true),
        Err(e) => {
            warn!(user = %user, fun, error = %e, "wheel call failed");
            (Json::String(e), false)
        }
    };
    let stamp = brine_master_core::events::now_stamp();
    let data = json!({
        "fun": format!("wheel.{fun}"),
        "jid": jid,
        "tag": tag,
        "user": user,
        "_stamp": stamp,
        "return": ret,
        "success": success,
    });
    shared.bus.fire(
        format!("{tag}/ret"),
        brine_master_core::json::from_json(&data),
    );
    json!({"tag": tag, "data": data})
}
