//! Minion requests on the ret port: one frame in, one reply out, always (a REQ peer that gets
//! no reply is stuck until its timeout).
//!
//! Handled: clear `_auth` and `ping`; `aes` `_pillar` (empty pillar, signed send_private reply),
//! `_minion_event`, `_return`, `_register_resources` (3008), file-server and mine requests
//! (empty results, not errors). Anything malformed, forged or unexpected is answered with
//! Salt's `"bad load"` (or `{}`) and the reason is logged; the handler keeps serving.

use std::sync::{Arc, Mutex};

use brine_proto::Value;
use brine_proto::auth::{
    AuthPolicy, KeyState, MasterIdentity, Verdict, decide_auth, open_request_with, pillar_reply,
    seal_reply,
};
use brine_proto::codec;
use brine_proto::crypt::{Crypticle, EncAlgo, Entropy, PublicKey, SigAlgo};
use brine_proto::envelope::{Request, replies};
use brine_proto::loads::{AuthRequest, MinionEvent, ReturnLoad, SyndicReturn};
use tracing::{debug, info, warn};

use crate::keys::KeyStore;
use crate::secrets::Secrets;

/// Something that happened on the master, with Salt's event tag.
#[derive(Debug, Clone, PartialEq)]
pub struct MasterEvent {
    /// Tag (`salt/auth`, `minion_start`, `salt/job/<jid>/ret/<id>`...).
    pub tag: String,
    /// Data.
    pub data: Value,
}

/// Key acceptance policy (`auto_accept`, `open_mode`, `autosign_file`, `autoreject_file`).
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// `auto_accept`: accept every new key. Dangerous.
    pub danger_auto_accept: bool,
    /// `open_mode`: accept any key for any id, replacing stored ones. Very dangerous.
    pub danger_open_mode: bool,
    /// `autosign_file`: ids (globs or regexes, one per line) whose new keys are accepted.
    pub autosign_file: Option<std::path::PathBuf>,
    /// `autoreject_file`: ids (globs or regexes) whose keys are rejected.
    pub autoreject_file: Option<std::path::PathBuf>,
    /// `order_masters`: syndics below may send `_syndic_return` (refused otherwise).
    pub order_masters: bool,
    /// `permissive_pki_access`: a group-writable autosign/autoreject file is honoured.
    pub permissive_pki_access: bool,
    /// `request_server_ttl` seconds (0: off): older or replayed encrypted requests are refused.
    pub request_server_ttl: u64,
}

/// Whether `id` matches a line of Salt's autosign/autoreject file, as Salt's `expr_match`
/// decides: the line itself, a glob (Python `fnmatch`), or a Python regex matched as
/// `\A<line>\Z`; blank lines and `#` comments are skipped. The file is re-read on every
/// authentication, as Salt does, so edits apply without a restart.
///
/// A file others may write to is ignored (logged), as Salt does; one its group may write to
/// only with `permissive_pki_access`.
pub fn listed_in(file: Option<&std::path::Path>, id: &str, permissive: bool) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    let Some(file) = file else {
        return false;
    };
    let Ok(meta) = std::fs::metadata(file) else {
        return false;
    };
    let mode = meta.permissions().mode();
    if mode & 0o002 != 0 || (mode & 0o020 != 0 && !permissive) {
        warn!(
            path = %file.display(),
            mode = format!("{:o}", mode & 0o777),
            "wrong permissions for the autosign/autoreject file (writable by others, or by its group without permissive_pki_access): ignoring its content"
        );
        return false;
    }
    let Ok(text) = std::fs::read_to_string(file) else {
        return false;
    };
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .any(|l| {
            l == id
                || brine_proto::target::fnmatch(l, id)
                || brine_proto::target::pyre::compile(&format!("\\A{l}\\Z"))
                    .is_ok_and(|r| r.match_start(id) == Some(true))
        })
}

/// The request handler of one master.
pub struct RequestHandler {
    keys: KeyStore,
    identity: MasterIdentity,
    secrets: Arc<Mutex<Secrets>>,
    policy: Policy,
    rng: Box<dyn Entropy + Send>,
    files: Arc<crate::fileserver::MasterFiles>,
    /// Accepted keys already parsed, with the `tok` each minion proved with them: a request
    /// costs a `stat` of the key file instead of a read, a parse and an RSA operation.
    known: std::collections::HashMap<String, KnownKey>,
}

/// An accepted key as it was parsed, and the `tok` verified against it.
struct KnownKey {
    stamp: (u64, u64, i64, i64),
    key: PublicKey,
    tok: Option<Vec<u8>>,
}

/// Keys remembered per handler at most (then the memory starts over).
const KNOWN_KEYS_MAX: usize = 200_000;

impl std::fmt::Debug for RequestHandler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestHandler")
            .field("pki", &self.keys.dir())
            .finish_non_exhaustive()
    }
}

/// What a syndic sent for one job.
#[derive(Debug, Clone)]
pub struct SyndicReport {
    /// The job id.
    pub jid: String,
    /// The job's minions below the syndic (the job load's `Minions`), when the entry is a report.
    pub minions: Option<Vec<String>>,
    /// The job load as the syndic has it (without `Minions`), if sent.
    pub load: Value,
    /// The returns it carries (for minions below the syndic), not yet checked.
    pub returns: Vec<ReturnLoad>,
}

/// The reply to one request and what it caused.
#[derive(Debug, Default)]
pub struct Handled {
    /// The reply frame (always present).
    pub reply: Vec<u8>,
    /// Events to fire.
    pub events: Vec<MasterEvent>,
    /// Returns received.
    pub returns: Vec<ReturnLoad>,
    /// Grains a minion reported (with its `_pillar` request), for the grains cache.
    pub grains: Option<(String, Value)>,
    /// The pillar compiled for a minion, for the pillar cache (`-I` targeting, the API).
    pub pillar: Option<(String, Value)>,
    /// The authenticated minion behind the request (an accepted `_auth` or a valid `aes`
    /// request), for presence.
    pub minion: Option<String>,
    /// A syndic's `_syndic_return`: its id and, per jid, the minions below it that the job
    /// targets (from the job load's `Minions`).
    pub syndic: Option<(String, Vec<SyndicReport>)>,
    /// A `_register_resources` (Salt 3008): the minion and whether it manages any resource.
    pub resources: Option<(String, bool)>,
    /// A return the minion sent with jid `req` (a scheduled job, `salt-call`): the whole load,
    /// to be stored under a jid the master assigns.
    pub minion_job: Option<Value>,
}

impl Handled {
    /// A reply that caused nothing else.
    pub fn only(reply: Vec<u8>) -> Self {
        Self {
            reply,
            ..Self::default()
        }
    }
}

fn bad_load() -> Vec<u8> {
    codec::encode_wire(&Value::str(replies::BAD_LOAD))
}

impl RequestHandler {
    /// A handler over `keys` with `identity` (master key, publish port) and shared `secrets`.
    pub fn new(
        keys: KeyStore,
        identity: MasterIdentity,
        secrets: Arc<Mutex<Secrets>>,
        policy: Policy,
        rng: Box<dyn Entropy + Send>,
    ) -> Self {
        Self {
            keys,
            identity,
            secrets,
            policy,
            rng,
            files: Arc::new(crate::fileserver::MasterFiles::off()),
            known: std::collections::HashMap::new(),
        }
    }

    /// Answer file requests (`_serve_file`, `_master_opts`, `_file_recv`...) with `files`.
    #[must_use]
    pub fn with_files(mut self, files: Arc<crate::fileserver::MasterFiles>) -> Self {
        self.files = files;
        self
    }

    fn secrets(&self) -> std::sync::MutexGuard<'_, Secrets> {
        self.secrets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Handle one request frame. `peer` is only used in log lines.
    pub fn handle(&mut self, frame: &[u8], peer: &str) -> Handled {
        let req = match Request::decode(frame) {
            Ok(r) => r,
            Err(e) => {
                warn!(peer, error = %e, "refused request");
                return Handled::only(bad_load());
            }
        };
        match &req {
            Request::Clear { load, .. } => self.clear(load, frame, peer),
            Request::Aes { id, .. } => self.aes(&req, id.clone(), peer),
        }
    }

    fn clear(&mut self, load: &Value, frame: &[u8], peer: &str) -> Handled {
        match load.get("cmd").and_then(Value::as_str) {
            Some("_auth") => self.auth(load, frame, peer),
            // The failback probe (`status.ping_master`): echo the load.
            Some("ping") => Handled::only(codec::encode_wire(load)),
            other => {
                warn!(peer, cmd = ?other, "refused clear request: only _auth and ping are served in the clear");
                Handled::only(codec::encode_wire(&Value::map()))
            }
        }
    }

    fn auth(&mut self, load: &Value, frame: &[u8], peer: &str) -> Handled {
        let req = match AuthRequest::from_value(load) {
            Ok(r) => r,
            Err(e) => {
                warn!(peer, error = %e, "refused _auth");
                return Handled::only(bad_load());
            }
        };
        let state = match self.keys.state(&req.id) {
            Ok(s) => s,
            // Invalid ids are answered by decide_auth without touching any file.
            Err(_) => KeyState::Unknown,
        };
        // A resend of a request already accepted (the minion's auth_timeout ran out while it
        // waited in the queue): the same answer, without the RSA work again — as long as the
        // accepted key is still the one in the request.
        let digest = brine_proto::crypt::sha256_hex(frame);
        let clean = brine_proto::crypt::clean_key;
        if matches!(&state, KeyState::Accepted(k) if clean(k) == clean(&req.pub_key))
            && let Some(reply) = self.secrets().auth_reply(&digest, &req.id)
        {
            debug!(minion_id = %req.id, "resent _auth answered with its first reply");
            return Handled {
                minion: Some(req.id.clone()),
                reply,
                ..Handled::default()
            };
        }
        let policy = AuthPolicy {
            open_mode: self.policy.danger_open_mode,
            auto_sign: self.policy.danger_auto_accept
                || listed_in(
                    self.policy.autosign_file.as_deref(),
                    &req.id,
                    self.policy.permissive_pki_access,
                ),
            auto_reject: listed_in(
                self.policy.autoreject_file.as_deref(),
                &req.id,
                self.policy.permissive_pki_access,
            ),
            ..AuthPolicy::default()
        };
        // The session key: the minion's existing one, or a fresh one kept only if this
        // request is accepted. An unauthenticated request must not create state per id (a
        // flood of made-up ids) nor touch an accepted minion's session.
        let (aes, session, had_session) = {
            let s = self.secrets();
            let existing = s.existing_session(&req.id).cloned();
            let had = existing.is_some();
            (s.aes().clone(), existing, had)
        };
        let session = session.unwrap_or_else(|| Crypticle::generate(self.rng.as_mut()));
        let decision = match decide_auth(
            &req,
            &state,
            policy,
            &self.identity,
            &aes,
            &session,
            self.rng.as_mut(),
        ) {
            Ok(d) => d,
            Err(e) => {
                warn!(peer, minion_id = %req.id, error = %e, "refused _auth");
                return Handled::only(bad_load());
            }
        };
        if decision.verdict == Verdict::InvalidId {
            warn!(peer, minion_id = ?req.id, "refused _auth from an invalid minion id");
        } else {
            for a in &decision.actions {
                if let Err(e) = self.keys.apply(&req.id, a) {
                    warn!(minion_id = %req.id, error = %e, "key store update failed");
                }
            }
            info!(minion_id = %req.id, act = decision.verdict.act(), "authentication");
        }
        let mut decision = decision;
        if decision.verdict == Verdict::Accept && !had_session {
            // Keep the new session, unless a concurrent accept of the same id kept its own
            // first: then this reply must carry that one.
            let kept = self.secrets().adopt_session(&req.id, session.clone());
            if kept != session {
                match decide_auth(
                    &req,
                    &state,
                    policy,
                    &self.identity,
                    &aes,
                    &kept,
                    self.rng.as_mut(),
                ) {
                    Ok(d) => decision = d,
                    Err(e) => {
                        warn!(peer, minion_id = %req.id, error = %e, "refused _auth");
                        return Handled::only(bad_load());
                    }
                }
            }
        }
        let reply = codec::encode_wire(&decision.reply);
        if decision.verdict == Verdict::Accept {
            self.secrets().remember_auth_reply(digest, &req.id, &reply);
        } else if !matches!(state, KeyState::Accepted(_)) {
            // No accepted key for this id (any more): its session is of no use. An accepted
            // minion's session is never dropped by someone else's request (a wrong key, a
            // bogus algorithm): the request proves nothing about who sent it.
            self.secrets().drop_session(&req.id);
        }
        Handled {
            minion: (decision.verdict == Verdict::Accept).then(|| req.id.clone()),
            reply,
            events: decision
                .event
                .map(|data| MasterEvent {
                    tag: "salt/auth".into(),
                    data,
                })
                .into_iter()
                .collect(),
            ..Handled::default()
        }
    }

    fn aes(&mut self, req: &Request, id: String, peer: &str) -> Handled {
        let refuse = |why: &str| {
            warn!(peer, minion_id = %id, reason = why, "refused request");
            Handled::only(bad_load())
        };
        let Some(session) = self.secrets().existing_session(&id).cloned() else {
            return refuse("no session (not authenticated since the master started)");
        };
        // The key file as it is now: a deleted or replaced key is noticed on the next request.
        let Some(stamp) = self.keys.accepted_stamp(&id) else {
            self.known.remove(&id);
            return refuse("no accepted key");
        };
        if self.known.get(&id).is_none_or(|k| k.stamp != stamp) {
            let Ok(Some(key)) = self.keys.accepted_key(&id) else {
                self.known.remove(&id);
                return refuse("no accepted key");
            };
            if self.known.len() >= KNOWN_KEYS_MAX {
                self.known.clear();
            }
            self.known.insert(
                id.clone(),
                KnownKey {
                    stamp,
                    key,
                    tok: None,
                },
            );
        }
        let known = self.known.get_mut(&id).expect("inserted above");
        let minion_pub = known.key.clone();
        let opened = match open_request_with(req, &session, &mut |tok| {
            if known.tok.as_deref() == Some(tok) {
                return true;
            }
            let ok = known.key.recover_x931(tok).is_ok_and(|m| m == b"salt");
            if ok {
                known.tok = Some(tok.to_vec());
            }
            ok
        }) {
            Ok(o) => o,
            Err(e) => return refuse(&e.to_string()),
        };
        let nonce = opened.sealed.nonce.clone();
        if self.policy.request_server_ttl > 0 {
            let ttl = self.policy.request_server_ttl;
            let now = crate::server::unix_secs();
            match opened.sealed.ts {
                None => return refuse("no ts in the request (request_server_ttl is on)"),
                Some(ts)
                    if i64::try_from(now).unwrap_or(i64::MAX).saturating_sub(ts)
                        > i64::try_from(ttl).unwrap_or(i64::MAX) =>
                {
                    return refuse("request older than request_server_ttl");
                }
                Some(_) => {}
            }
            if !self.secrets().first_use(&id, &nonce, now, ttl) {
                return refuse("replayed request (its nonce was seen within request_server_ttl)");
            }
        }
        let mut out = Handled {
            minion: Some(id.clone()),
            ..Handled::default()
        };
        let result = match opened.cmd.as_str() {
            "_pillar" => {
                // Salt sets the grains' id to the requester's (appended when missing).
                let grains = opened
                    .load
                    .get("grains")
                    .filter(|g| g.as_map().is_some())
                    .map(|g| {
                        let mut g = g.clone();
                        g.insert("id", id.as_str());
                        g
                    });
                let pillar = match (&self.files.pillar, &grains) {
                    (Some(compiler), Some(g)) => {
                        let text = |k: &str| opened.load.get(k).and_then(Value::as_str);
                        let mut req = crate::pillar::PillarRequest::new(&id, g);
                        req.saltenv = text("saltenv");
                        req.pillarenv = text("pillarenv");
                        req.pillar_override = opened.load.get("pillar_override");
                        compiler.compile(&req)
                    }
                    _ => Value::map(),
                };
                return match pillar_reply(
                    &pillar,
                    &nonce,
                    &minion_pub,
                    &self.identity.key,
                    EncAlgo::OaepSha1,
                    SigAlgo::Pkcs1v15Sha1,
                    self.rng.as_mut(),
                ) {
                    Ok(r) => Handled {
                        reply: codec::encode_wire(&r),
                        events: vec![MasterEvent {
                            tag: format!("minion/refresh/{id}"),
                            data: Value::map().with("Minion data cache refresh", id.as_str()),
                        }],
                        grains: grains.map(|g| (id.clone(), g)),
                        pillar: Some((id.clone(), pillar)),
                        minion: Some(id.clone()),
                        ..Handled::default()
                    },
                    Err(e) => refuse(&e.to_string()),
                };
            }
            "_minion_event" => {
                match MinionEvent::from_value(&opened.load) {
                    Ok(ev) => {
                        // A pretag (a syndic forwarding its minions' events) can only be the
                        // sender's own `syndic/<id>`.
                        let own = format!("syndic/{id}");
                        let pretag = match &ev.pretag {
                            Some(p) if ev.batch && *p == own && self.policy.order_masters => {
                                Some(p.as_str())
                            }
                            Some(p) if ev.batch => {
                                warn!(minion_id = %id, pretag = ?p, "minion events refused: a pretag other than syndic/<sender id>, or order_masters is off");
                                None
                            }
                            _ => None,
                        };
                        let refused_pretag = ev.batch && ev.pretag.is_some() && pretag.is_none();
                        for (tag, data) in ev.events {
                            if refused_pretag {
                                break;
                            }
                            let tag = match pretag {
                                Some(p) => {
                                    if tag.is_empty() || tag.chars().any(char::is_control) {
                                        warn!(minion_id = %id, tag = ?tag, "forwarded event refused: empty tag or control character");
                                        continue;
                                    }
                                    format!("{p}/{tag}")
                                }
                                None => {
                                    if let Some(why) = crate::events::refuse_minion_tag(&tag, &id) {
                                        warn!(minion_id = %id, tag = ?tag, reason = why, "minion event refused");
                                        continue;
                                    }
                                    tag
                                }
                            };
                            out.events.push(MasterEvent { tag, data });
                        }
                    }
                    Err(e) => {
                        debug!(minion_id = %id, error = %e, "malformed _minion_event ignored")
                    }
                }
                Value::Nil
            }
            "_return" => {
                match ReturnLoad::from_value(&opened.load) {
                    Ok(r) if r.id == id && r.jid == "req" => {
                        // Salt's `store_job`: the master assigns a jid and stores the job.
                        out.minion_job = Some(opened.load.clone());
                    }
                    Ok(r) if r.id == id && r.jid == "nocache" => {
                        // `return_job: nocache`: announced on the bus, never stored.
                        out.events.push(MasterEvent {
                            tag: format!("salt/job/nocache/ret/{id}"),
                            data: opened.load.clone(),
                        });
                    }
                    Ok(r) if r.id == id && brine_proto::jid::Jid::parse(&r.jid).is_some() => {
                        let mut data = opened.load.clone();
                        data.remove("cmd");
                        out.events.push(MasterEvent {
                            tag: format!("salt/job/{}/ret/{}", r.jid, r.id),
                            data,
                        });
                        out.returns.push(r);
                    }
                    Ok(r) => {
                        warn!(minion_id = %id, jid = %r.jid, "return with a bad jid or another minion's id ignored")
                    }
                    Err(e) => warn!(minion_id = %id, error = %e, "malformed _return ignored"),
                }
                Value::Nil
            }
            "_syndic_return" => {
                if !self.policy.order_masters {
                    return refuse("_syndic_return while order_masters is off (no syndics here)");
                }
                match SyndicReturn::from_value(&opened.load) {
                    Ok(sr) => {
                        let mut reported = Vec::new();
                        for e in sr.entries {
                            if brine_proto::jid::Jid::parse(&e.jid).is_none() {
                                warn!(syndic = %id, jid = %e.jid, "syndic return with a bad jid ignored");
                                continue;
                            }
                            let minions = e.load.get("Minions").map(|m| {
                                m.as_array()
                                    .unwrap_or_default()
                                    .iter()
                                    .filter_map(Value::as_str)
                                    .filter(|m| brine_proto::auth::valid_minion_id(m))
                                    .map(str::to_owned)
                                    .collect()
                            });
                            let one = SyndicReturn {
                                entries: vec![e.clone()],
                            };
                            let mut returns = Vec::new();
                            for r in one.to_returns() {
                                if !brine_proto::auth::valid_minion_id(&r.id) {
                                    warn!(syndic = %id, minion_id = ?r.id, "syndic return with a bad minion id ignored");
                                    continue;
                                }
                                returns.push(r);
                            }
                            let mut load = e.load;
                            load.remove("Minions");
                            reported.push(SyndicReport {
                                jid: e.jid,
                                minions,
                                load,
                                returns,
                            });
                        }
                        out.syndic = Some((id.clone(), reported));
                    }
                    Err(e) => warn!(syndic = %id, error = %e, "malformed _syndic_return ignored"),
                }
                Value::Nil
            }
            "_register_resources" => {
                let manages = match opened.load.get("resources") {
                    Some(Value::Map(m)) => !m.is_empty(),
                    Some(Value::Array(a)) => !a.is_empty(),
                    None | Some(Value::Nil) => false,
                    // Anything else: assume it manages some (never rule it out of a target).
                    Some(_) => true,
                };
                out.resources = Some((id.clone(), manages));
                Value::Bool(true)
            }
            cmd @ ("_file_envs"
            | "_file_list"
            | "_file_list_emptydirs"
            | "_dir_list"
            | "_symlink_list"
            | "_file_hash"
            | "_file_hash_and_stat"
            | "_file_find"
            | "_serve_file"
            | "_master_opts"
            | "_master_tops"
            | "_file_recv"
            | "_mine"
            | "_mine_get"
            | "_mine_delete"
            | "_mine_flush") => self
                .files
                .request(&id, cmd, &opened.load)
                .unwrap_or_else(Value::map),
            other => {
                debug!(minion_id = %id, cmd = other, "unsupported request answered with {{}}");
                Value::map()
            }
        };
        let session = self
            .secrets()
            .existing_session(&id)
            .cloned()
            .unwrap_or(session);
        out.reply = codec::encode_wire(&seal_reply(&result, &nonce, &session, self.rng.as_mut()));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use brine_proto::auth::{AuthEvent, MinionAuth, MinionAuthConfig, MinionIdentity};
    use brine_proto::crypt::PrivateKey;
    use std::time::Instant;

    fn handler(dir: &std::path::Path, secrets: Arc<Mutex<Secrets>>) -> RequestHandler {
        let key = PrivateKey::generate(2048).unwrap();
        RequestHandler::new(
            KeyStore::open(dir).unwrap(),
            MasterIdentity::new(key, 4505),
            secrets,
            Policy {
                danger_auto_accept: true,
                ..Policy::default()
            },
            Box::new(crate::server::Rng),
        )
    }

    /// A minion's `_auth` frame and the state machine that sent it.
    fn auth_frame(id: &str) -> (MinionAuth, Vec<u8>) {
        let me = MinionIdentity::new(id, PrivateKey::generate(2048).unwrap()).unwrap();
        let mut a = MinionAuth::new(
            me,
            MinionAuthConfig::default(),
            None,
            &mut crate::server::Rng,
        );
        a.start(Instant::now(), &mut crate::server::Rng).unwrap();
        let f = a.poll_transmit().unwrap();
        (a, f)
    }

    #[test]
    fn a_resent_auth_gets_the_first_answer_until_the_key_rotates() {
        let dir = tempfile::tempdir().unwrap();
        let secrets = Arc::new(Mutex::new(Secrets::new(&mut crate::server::Rng)));
        let mut h = handler(dir.path(), secrets.clone());
        let (mut minion, frame) = auth_frame("m1");
        let first = h.handle(&frame, "test");
        assert_eq!(first.minion.as_deref(), Some("m1"));
        assert_eq!(first.events.len(), 1, "salt/auth fired for the decision");
        let again = h.handle(&frame, "test");
        assert_eq!(
            again.reply, first.reply,
            "the resend gets the very same reply"
        );
        assert_eq!(again.minion.as_deref(), Some("m1"));
        // and it is a reply the minion accepts
        minion.handle_reply(&again.reply, Instant::now());
        assert!(matches!(minion.poll_event(), Some(AuthEvent::Accepted(_))));
        // A rotated publish key: the same frame is decided anew (the old reply has the old key).
        secrets.lock().unwrap().rotate(&mut crate::server::Rng);
        let after = h.handle(&frame, "test");
        assert_ne!(after.reply, first.reply);
        assert_eq!(after.minion.as_deref(), Some("m1"));
        // A deleted key: no remembered answer either (the minion is pending... auto_accept
        // accepts it again, from a fresh decision that rewrites the key file).
        assert!(h.keys.delete("m1").unwrap());
        let fresh = h.handle(&frame, "test");
        assert_ne!(fresh.reply, after.reply);
        assert!(dir.path().join("minions/m1").exists());
        // A different key accepted for the id meanwhile: the old frame is decided anew (and
        // refused: auto_accept does not replace an accepted key).
        let other_key = PrivateKey::generate(2048)
            .unwrap()
            .public_key()
            .to_clean_pem();
        std::fs::write(dir.path().join("minions/m1"), other_key).unwrap();
        let replaced = h.handle(&frame, "test");
        assert_eq!(replaced.minion, None, "an old key's resend is not accepted");
        // Another minion's frame is never answered from m1's entry.
        let (_, other) = auth_frame("m2");
        let o = h.handle(&other, "test");
        assert_eq!(o.minion.as_deref(), Some("m2"));
    }
}
