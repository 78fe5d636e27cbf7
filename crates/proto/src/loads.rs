//! Typed request and publish loads, with Salt's key order.
//!
//! Each type parses from a decoded [`Value`] map and builds one back with `to_value`. Keys this
//! crate does not model are kept in `extra` (in their original order) and written after the
//! known keys, so nothing a newer Salt adds is lost when a load is relayed.

use crate::jid::Jid;
use crate::value::Value;

/// Why a load could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// The load is not a map.
    #[error("load is not a map")]
    NotAMap,
    /// A required field is missing or has the wrong type.
    #[error("load field {0:?} missing or of the wrong type")]
    Field(&'static str),
    /// `cmd` differs from what the type expects.
    #[error("expected cmd {expected:?}, got {got:?}")]
    WrongCmd {
        /// The cmd this type handles.
        expected: &'static str,
        /// The cmd found.
        got: String,
    },
    /// A jid that is not Salt's format.
    #[error("bad jid {0:?}")]
    BadJid(String),
}

fn map(v: &Value) -> Result<&[(Value, Value)], LoadError> {
    v.as_map().ok_or(LoadError::NotAMap)
}

fn req_str(v: &Value, key: &'static str) -> Result<String, LoadError> {
    v.get(key)
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or(LoadError::Field(key))
}

fn opt_str(v: &Value, key: &str) -> Option<String> {
    v.get(key).and_then(Value::as_str).map(str::to_owned)
}

fn check_cmd(v: &Value, expected: &'static str) -> Result<(), LoadError> {
    let got = req_str(v, "cmd")?;
    if got != expected {
        return Err(LoadError::WrongCmd { expected, got });
    }
    Ok(())
}

fn extras(v: &Value, known: &[&str]) -> Vec<(Value, Value)> {
    v.as_map()
        .unwrap_or_default()
        .iter()
        .filter(|(k, _)| !k.as_str().is_some_and(|k| known.contains(&k)))
        .cloned()
        .collect()
}

fn append(v: &mut Value, extra: &[(Value, Value)]) {
    if let Value::Map(m) = v {
        m.extend(extra.iter().cloned());
    }
}

/// Fields the request channel adds and strips; never part of a typed load.
const SEAL_KEYS: &[&str] = &["nonce", "ts", "tok"];

/// `_auth` request load (clear).
#[derive(Debug, Clone, PartialEq)]
pub struct AuthRequest {
    /// Minion id.
    pub id: String,
    /// `uuid4().hex`; the reply must echo it.
    pub nonce: String,
    /// `encryption_algorithm`.
    pub enc_algo: String,
    /// `signing_algorithm`.
    pub sig_algo: String,
    /// `autosign_grains`, when the minion is configured to send them.
    pub autosign_grains: Option<Value>,
    /// OAEP(master pub, minion token): sent once the master key is cached, to make the master
    /// prove it holds `master.pem`.
    pub token: Option<Vec<u8>>,
    /// The minion's public key, SPKI PEM in `clean_key` form.
    pub pub_key: String,
}

impl AuthRequest {
    /// Parse a clear load.
    ///
    /// # Errors
    /// [`LoadError`] if a field is missing.
    pub fn from_value(v: &Value) -> Result<Self, LoadError> {
        map(v)?;
        check_cmd(v, "_auth")?;
        Ok(Self {
            id: req_str(v, "id")?,
            nonce: opt_str(v, "nonce").unwrap_or_default(),
            enc_algo: opt_str(v, "enc_algo").unwrap_or_else(|| "OAEP-SHA1".into()),
            sig_algo: opt_str(v, "sig_algo").unwrap_or_else(|| "PKCS1v15-SHA1".into()),
            autosign_grains: v.get("autosign_grains").cloned(),
            token: v.get("token").and_then(Value::as_bytes).map(<[u8]>::to_vec),
            pub_key: req_str(v, "pub")?,
        })
    }

    /// The load, keys in Salt's order.
    pub fn to_value(&self) -> Value {
        let mut v = Value::map()
            .with("cmd", "_auth")
            .with("id", self.id.as_str())
            .with("nonce", self.nonce.as_str())
            .with("enc_algo", self.enc_algo.as_str())
            .with("sig_algo", self.sig_algo.as_str());
        if let Some(g) = &self.autosign_grains {
            v.insert("autosign_grains", g.clone());
        }
        if let Some(t) = &self.token {
            v.insert("token", Value::bin(t.clone()));
        }
        v.insert("pub", self.pub_key.as_str());
        v
    }
}

/// A job publish load (what the master encrypts onto the PUB socket).
#[derive(Debug, Clone, PartialEq)]
pub struct JobLoad {
    /// Function, e.g. `test.ping` (a list for multi-function jobs).
    pub fun: Value,
    /// Arguments; keyword arguments are a trailing map with `"__kwarg__": true`.
    pub arg: Value,
    /// Target expression (a list for `tgt_type: list`).
    pub tgt: Value,
    /// Job id.
    pub jid: String,
    /// Returners, comma-separated, or `""`.
    pub ret: String,
    /// The publishing master's `master_id`, when set.
    pub master_id: Option<String>,
    /// Grain/pillar key delimiter, only when not `:`.
    pub delimiter: Option<String>,
    /// Target type; `glob` if absent.
    pub tgt_type: Option<String>,
    /// Remaining timeout for syndics (`order_masters`).
    pub to: Option<i64>,
    /// The publishing user.
    pub user: Option<String>,
    /// `auth_list` (added by an `order_masters` master).
    pub auth_list: Option<Value>,
    /// Other keys (`ret_config`, `metadata`, `kwargs`...), in order.
    pub extra: Vec<(Value, Value)>,
    /// Publish serial (popped by the receiver's replay check before parsing, usually).
    pub serial: Option<i64>,
}

const JOB_KEYS: &[&str] = &[
    "fun",
    "arg",
    "tgt",
    "jid",
    "ret",
    "master_id",
    "delimiter",
    "tgt_type",
    "to",
    "user",
    "auth_list",
    "serial",
];

impl JobLoad {
    /// A plain job: `fun(arg)` on `tgt` of `tgt_type`.
    pub fn new(fun: &str, arg: Vec<Value>, tgt: Value, tgt_type: &str, jid: &Jid) -> Self {
        Self {
            fun: Value::str(fun),
            arg: Value::Array(arg),
            tgt,
            jid: jid.to_string(),
            ret: String::new(),
            master_id: None,
            delimiter: None,
            tgt_type: Some(tgt_type.into()),
            to: None,
            user: Some("root".into()),
            auth_list: None,
            extra: Vec::new(),
            serial: None,
        }
    }

    /// Parse a decrypted publish load. Salt requires `tgt`, `jid`, `fun` and `arg`.
    ///
    /// # Errors
    /// [`LoadError`] if one is missing.
    pub fn from_value(v: &Value) -> Result<Self, LoadError> {
        map(v)?;
        Ok(Self {
            fun: v.get("fun").cloned().ok_or(LoadError::Field("fun"))?,
            arg: v.get("arg").cloned().ok_or(LoadError::Field("arg"))?,
            tgt: v.get("tgt").cloned().ok_or(LoadError::Field("tgt"))?,
            jid: req_str(v, "jid")?,
            ret: opt_str(v, "ret").unwrap_or_default(),
            master_id: opt_str(v, "master_id"),
            delimiter: opt_str(v, "delimiter"),
            tgt_type: opt_str(v, "tgt_type"),
            to: v.get("to").and_then(Value::as_i64),
            user: opt_str(v, "user"),
            auth_list: v.get("auth_list").cloned(),
            extra: extras(v, JOB_KEYS),
            serial: v.get("serial").and_then(Value::as_i64),
        })
    }

    /// The function name, for single-function jobs.
    pub fn fun_name(&self) -> Option<&str> {
        self.fun.as_str()
    }

    /// The jid a `saltutil.find_job` asks about (its first argument); `None` for any other
    /// function, or a find_job without one.
    pub fn find_job_asks_about(&self) -> Option<&str> {
        if self.fun_name() != Some("saltutil.find_job") {
            return None;
        }
        self.arg
            .as_array()
            .and_then(|a| a.first())
            .and_then(Value::as_str)
    }

    /// The target type, defaulting to `glob` as Salt does.
    pub fn tgt_type(&self) -> &str {
        self.tgt_type.as_deref().unwrap_or("glob")
    }

    /// The load, keys in the order `ClearFuncs._prep_pub` emits them.
    pub fn to_value(&self) -> Value {
        let mut v = Value::map()
            .with("fun", self.fun.clone())
            .with("arg", self.arg.clone())
            .with("tgt", self.tgt.clone())
            .with("jid", self.jid.as_str())
            .with("ret", self.ret.as_str());
        if let Some(m) = &self.master_id {
            v.insert("master_id", m.as_str());
        }
        if let Some(d) = &self.delimiter {
            v.insert("delimiter", d.as_str());
        }
        if let Some(t) = &self.tgt_type {
            v.insert("tgt_type", t.as_str());
        }
        if let Some(t) = self.to {
            v.insert("to", t);
        }
        append(&mut v, &self.extra);
        if let Some(u) = &self.user {
            v.insert("user", u.as_str());
        }
        if let Some(a) = &self.auth_list {
            v.insert("auth_list", a.clone());
        }
        if let Some(s) = self.serial {
            v.insert("serial", s);
        }
        v
    }

    /// A `saltutil.find_job` publish asking `minions` about `jid`.
    pub fn find_job(asking_about: &str, minions: &[String], jid: &Jid) -> Self {
        Self::new(
            "saltutil.find_job",
            vec![Value::str(asking_about)],
            Value::Array(minions.iter().map(Value::str).collect()),
            "list",
            jid,
        )
    }
}

/// `_return` load: one minion's result for one job.
#[derive(Debug, Clone, PartialEq)]
pub struct ReturnLoad {
    /// Minion id.
    pub id: String,
    /// Whether the function succeeded.
    pub success: bool,
    /// The function's return value.
    pub ret: Value,
    /// Exit-code-like status (0 = ok).
    pub retcode: i64,
    /// Job id.
    pub jid: String,
    /// Function name.
    pub fun: Value,
    /// Arguments the function was called with.
    pub fun_args: Value,
    /// Publishing user.
    pub user: Option<String>,
    /// Outputter hint (`nested`, `txt`...).
    pub out: Option<String>,
    /// Timestamp the minion's event bus adds (`2026-11-27T01:56:51.112705`).
    pub stamp: Option<String>,
    /// Other keys (`master_id`, `metadata`, `sig`...), in order.
    pub extra: Vec<(Value, Value)>,
}

const RETURN_KEYS: &[&str] = &[
    "cmd", "id", "success", "return", "retcode", "jid", "fun", "fun_args", "user", "out", "_stamp",
    "nonce", "ts", "tok",
];

impl ReturnLoad {
    /// A successful return (`retcode` 0, no arguments) of `fun` from minion `id` for `jid`.
    pub fn new(jid: &str, id: &str, fun: &str, ret: Value) -> Self {
        Self {
            id: id.to_owned(),
            success: true,
            ret,
            retcode: 0,
            jid: jid.to_owned(),
            fun: Value::str(fun),
            fun_args: Value::Array(vec![]),
            user: None,
            out: None,
            stamp: None,
            extra: vec![],
        }
    }

    /// Parse a decrypted `_return` load (after [`crate::envelope::unseal_fields`]).
    ///
    /// # Errors
    /// [`LoadError`] if `id`, `jid` or `return` is missing.
    pub fn from_value(v: &Value) -> Result<Self, LoadError> {
        map(v)?;
        check_cmd(v, "_return")?;
        Ok(Self {
            id: req_str(v, "id")?,
            success: v.get("success").and_then(Value::as_bool).unwrap_or(true),
            ret: v.get("return").cloned().ok_or(LoadError::Field("return"))?,
            retcode: v.get("retcode").and_then(Value::as_i64).unwrap_or(0),
            jid: req_str(v, "jid")?,
            fun: v.get("fun").cloned().unwrap_or(Value::Nil),
            fun_args: v.get("fun_args").cloned().unwrap_or(Value::Array(vec![])),
            user: opt_str(v, "user"),
            out: opt_str(v, "out"),
            stamp: opt_str(v, "_stamp"),
            extra: extras(v, RETURN_KEYS),
        })
    }

    /// The load, keys in the order `Minion._thread_return`/`_return_pub` emit them.
    pub fn to_value(&self) -> Value {
        let mut v = Value::map()
            .with("cmd", "_return")
            .with("id", self.id.as_str())
            .with("success", self.success)
            .with("return", self.ret.clone())
            .with("retcode", self.retcode)
            .with("jid", self.jid.as_str())
            .with("fun", self.fun.clone())
            .with("fun_args", self.fun_args.clone());
        if let Some(u) = &self.user {
            v.insert("user", u.as_str());
        }
        if let Some(o) = &self.out {
            v.insert("out", o.as_str());
        }
        append(&mut v, &self.extra);
        if let Some(s) = &self.stamp {
            v.insert("_stamp", s.as_str());
        }
        v
    }
}

/// `_minion_event` load: one event (`tag` + `data`) or a batch (`events`), e.g. from a syndic.
#[derive(Debug, Clone, PartialEq)]
pub struct MinionEvent {
    /// Sender id.
    pub id: String,
    /// Tag prefix (`syndic/<id>` for forwarded batches), or none.
    pub pretag: Option<String>,
    /// The events, as `(tag, data)`.
    pub events: Vec<(String, Value)>,
    /// Whether the load used the batch form (`events: [...]`).
    pub batch: bool,
    /// Other keys, in order.
    pub extra: Vec<(Value, Value)>,
}

impl MinionEvent {
    /// Parse a decrypted `_minion_event` load.
    ///
    /// # Errors
    /// [`LoadError`] if it has neither `tag`+`data` nor `events`.
    pub fn from_value(v: &Value) -> Result<Self, LoadError> {
        map(v)?;
        check_cmd(v, "_minion_event")?;
        let (events, batch) = if let Some(list) = v.get("events").and_then(Value::as_array) {
            let mut out = Vec::with_capacity(list.len());
            for e in list {
                let tag = req_str(e, "tag")?;
                out.push((tag, e.get("data").cloned().unwrap_or(Value::Nil)));
            }
            (out, true)
        } else {
            let tag = req_str(v, "tag")?;
            (
                vec![(tag, v.get("data").cloned().unwrap_or(Value::Nil))],
                false,
            )
        };
        Ok(Self {
            id: req_str(v, "id")?,
            pretag: opt_str(v, "pretag"),
            events,
            batch,
            extra: extras(
                v,
                &[
                    "id", "cmd", "pretag", "tag", "data", "events", "nonce", "ts", "tok",
                ],
            ),
        })
    }

    /// The load, keys in the order `Minion._fire_master` emits them.
    pub fn to_value(&self) -> Value {
        let mut v = Value::map()
            .with("id", self.id.as_str())
            .with("cmd", "_minion_event")
            .with("pretag", self.pretag.clone());
        if self.batch {
            let list = self
                .events
                .iter()
                .map(|(tag, data)| {
                    Value::map()
                        .with("data", data.clone())
                        .with("tag", tag.as_str())
                })
                .collect();
            v.insert("events", Value::Array(list));
        } else if let Some((tag, data)) = self.events.first() {
            v.insert("data", data.clone());
            v.insert("tag", tag.as_str());
        }
        append(&mut v, &self.extra);
        v
    }
}

/// `_pillar` request load.
#[derive(Debug, Clone, PartialEq)]
pub struct PillarRequest {
    /// Minion id.
    pub id: String,
    /// The minion's grains.
    pub grains: Value,
    /// `saltenv`.
    pub saltenv: Value,
    /// `pillarenv`.
    pub pillarenv: Value,
    /// `ver`: `"2"` asks for the signed, privately encrypted reply.
    pub ver: Option<String>,
    /// Other keys (`pillar_override`, `extra_minion_data`...), in order.
    pub extra: Vec<(Value, Value)>,
}

impl PillarRequest {
    /// Parse a decrypted `_pillar` load.
    ///
    /// # Errors
    /// [`LoadError`] if `id` is missing.
    pub fn from_value(v: &Value) -> Result<Self, LoadError> {
        map(v)?;
        check_cmd(v, "_pillar")?;
        Ok(Self {
            id: req_str(v, "id")?,
            grains: v.get("grains").cloned().unwrap_or_else(Value::map),
            saltenv: v.get("saltenv").cloned().unwrap_or(Value::Nil),
            pillarenv: v.get("pillarenv").cloned().unwrap_or(Value::Nil),
            ver: opt_str(v, "ver"),
            extra: extras(
                v,
                &[
                    "id",
                    "grains",
                    "saltenv",
                    "pillarenv",
                    "ver",
                    "cmd",
                    "nonce",
                    "ts",
                    "tok",
                ],
            ),
        })
    }
}

/// One element of a `_syndic_return` load: the aggregated returns for one jid.
#[derive(Debug, Clone, PartialEq)]
pub struct SyndicReturnEntry {
    /// The syndic's id.
    pub id: String,
    /// Job id.
    pub jid: String,
    /// Function.
    pub fun: Value,
    /// The job load from the syndic's job cache (`{"cmd":"publish",...,"Minions":[..]}`).
    pub load: Value,
    /// Per-minion results: minion id → `{return, retcode, success, fun_args, [out]}`.
    pub returns: Vec<(String, Value)>,
    /// `master_id`, when the job carried one.
    pub master_id: Option<String>,
    /// Other keys (`arg`, `tgt`, `tgt_type`...), in order.
    pub extra: Vec<(Value, Value)>,
}

/// `_syndic_return` load: returns gathered by a syndic, one entry per jid.
#[derive(Debug, Clone, PartialEq)]
pub struct SyndicReturn {
    /// Per-jid entries.
    pub entries: Vec<SyndicReturnEntry>,
}

impl SyndicReturn {
    /// Parse a decrypted `_syndic_return` load.
    ///
    /// # Errors
    /// [`LoadError`] if `load` is not a list of entries with `jid` and `return`.
    pub fn from_value(v: &Value) -> Result<Self, LoadError> {
        map(v)?;
        check_cmd(v, "_syndic_return")?;
        let list = v
            .get("load")
            .and_then(Value::as_array)
            .ok_or(LoadError::Field("load"))?;
        let mut entries = Vec::with_capacity(list.len());
        for e in list {
            let returns = e
                .get("return")
                .and_then(Value::as_map)
                .ok_or(LoadError::Field("return"))?
                .iter()
                .filter_map(|(k, v)| Some((k.as_str()?.to_owned(), v.clone())))
                .collect();
            entries.push(SyndicReturnEntry {
                id: opt_str(e, "id").unwrap_or_default(),
                jid: req_str(e, "jid")?,
                fun: e.get("fun").cloned().unwrap_or(Value::Nil),
                load: e.get("load").cloned().unwrap_or(Value::Nil),
                returns,
                master_id: opt_str(e, "master_id"),
                extra: extras(e, &["id", "jid", "fun", "load", "return", "master_id"]),
            });
        }
        Ok(Self { entries })
    }

    /// The per-minion `_return` loads this expands to on the master of masters.
    pub fn to_returns(&self) -> Vec<ReturnLoad> {
        let mut out = Vec::new();
        for e in &self.entries {
            for (minion, r) in &e.returns {
                let mut extra = Vec::new();
                if let Some(m) = &e.master_id {
                    extra.push((Value::str("master_id"), Value::str(m)));
                }
                out.push(ReturnLoad {
                    id: minion.clone(),
                    success: r.get("success").and_then(Value::as_bool).unwrap_or(true),
                    ret: r.get("return").cloned().unwrap_or(Value::Nil),
                    retcode: r.get("retcode").and_then(Value::as_i64).unwrap_or(0),
                    jid: e.jid.clone(),
                    fun: e.fun.clone(),
                    fun_args: r.get("fun_args").cloned().unwrap_or(Value::Array(vec![])),
                    user: None,
                    out: opt_str(r, "out"),
                    stamp: None,
                    extra,
                });
            }
        }
        out
    }

    /// The load, keys in Salt's order (`cmd`, `load`).
    pub fn to_value(&self) -> Value {
        let list = self
            .entries
            .iter()
            .map(|e| {
                let mut v = Value::map()
                    .with("id", e.id.as_str())
                    .with("jid", e.jid.as_str())
                    .with("fun", e.fun.clone());
                append(&mut v, &e.extra);
                v.insert("load", e.load.clone());
                v.insert(
                    "return",
                    Value::Map(
                        e.returns
                            .iter()
                            .map(|(k, r)| (Value::str(k), r.clone()))
                            .collect(),
                    ),
                );
                if let Some(m) = &e.master_id {
                    v.insert("master_id", m.as_str());
                }
                v
            })
            .collect();
        Value::map()
            .with("cmd", "_syndic_return")
            .with("load", Value::Array(list))
    }
}

/// The CLI's clear `publish` request (`LocalClient.pub`).
#[derive(Debug, Clone, PartialEq)]
pub struct CliPublish {
    /// Target.
    pub tgt: Value,
    /// Function.
    pub fun: Value,
    /// Arguments.
    pub arg: Value,
    /// The user's key (`cachedir/.<user>_key`).
    pub key: String,
    /// Target type.
    pub tgt_type: String,
    /// Returners.
    pub ret: String,
    /// Requested jid, or `""`.
    pub jid: String,
    /// CLI kwargs.
    pub kwargs: Value,
    /// User.
    pub user: String,
    /// Other keys (`to`...), in order.
    pub extra: Vec<(Value, Value)>,
}

impl CliPublish {
    /// Parse a clear `publish` load.
    ///
    /// # Errors
    /// [`LoadError`] if a required field is missing.
    pub fn from_value(v: &Value) -> Result<Self, LoadError> {
        map(v)?;
        check_cmd(v, "publish")?;
        Ok(Self {
            tgt: v.get("tgt").cloned().ok_or(LoadError::Field("tgt"))?,
            fun: v.get("fun").cloned().ok_or(LoadError::Field("fun"))?,
            arg: v.get("arg").cloned().unwrap_or(Value::Array(vec![])),
            key: opt_str(v, "key").unwrap_or_default(),
            tgt_type: opt_str(v, "tgt_type").unwrap_or_else(|| "glob".into()),
            ret: opt_str(v, "ret").unwrap_or_default(),
            jid: opt_str(v, "jid").unwrap_or_default(),
            kwargs: v.get("kwargs").cloned().unwrap_or_else(Value::map),
            user: opt_str(v, "user").unwrap_or_default(),
            extra: extras(
                v,
                &[
                    "cmd", "tgt", "fun", "arg", "key", "tgt_type", "ret", "jid", "kwargs", "user",
                ],
            ),
        })
    }

    /// The load, keys in `LocalClient._prep_pub`'s order.
    pub fn to_value(&self) -> Value {
        let mut v = Value::map()
            .with("cmd", "publish")
            .with("tgt", self.tgt.clone())
            .with("fun", self.fun.clone())
            .with("arg", self.arg.clone())
            .with("key", self.key.as_str())
            .with("tgt_type", self.tgt_type.as_str())
            .with("ret", self.ret.as_str())
            .with("jid", self.jid.as_str())
            .with("kwargs", self.kwargs.clone())
            .with("user", self.user.as_str());
        append(&mut v, &self.extra);
        v
    }
}

/// Remove the channel's seal fields from `extra`-style lists (used by relays).
pub fn strip_seal(v: &mut Value) {
    for k in SEAL_KEYS {
        v.remove(k);
    }
}
