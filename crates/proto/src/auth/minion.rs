//! Minion side of `_auth` as a sans-IO state machine, and the authenticated request channel.
//!
//! Call order: [`MinionAuth::start`], then loop: send whatever [`MinionAuth::poll_transmit`]
//! returns (on a fresh REQ socket), feed the reply to [`MinionAuth::handle_reply`] or, when
//! [`MinionAuth::poll_timeout`] passes, call [`MinionAuth::handle_timeout`]; drain
//! [`MinionAuth::poll_event`] after each input.

use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};

use crate::codec;
use crate::crypt::{
    Crypticle, CrypticleError, EncAlgo, Entropy, PrivateKey, PublicKey, SigAlgo, clean_key,
    new_nonce, sha256_hex,
};
use crate::envelope::{REQUEST_VERSION, Request, seal_fields};
use crate::loads::AuthRequest;
use crate::value::Value;

use super::AuthError;

/// Salt 3007's `auth_timeout` default.
pub const DEFAULT_AUTH_TIMEOUT: Duration = Duration::from_secs(5);
/// Salt 3007's `acceptance_wait_time` default.
pub const DEFAULT_ACCEPTANCE_WAIT_TIME: Duration = Duration::from_secs(10);
/// Salt 3007's `auth_tries` default.
pub const DEFAULT_AUTH_TRIES: u32 = 7;

/// The minion's own keys and id.
#[derive(Clone)]
pub struct MinionIdentity {
    /// Minion id.
    pub id: String,
    /// `minion.pem`.
    pub key: PrivateKey,
    /// `minion.pub`, `clean_key` form.
    pub pub_pem: String,
    /// `tok`: X9.31 signature of `b"salt"`, the same bytes for every request.
    pub tok: Vec<u8>,
}

impl fmt::Debug for MinionIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MinionIdentity")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl MinionIdentity {
    /// Derive the public key and `tok` from the private key.
    ///
    /// # Errors
    /// [`AuthError::Rsa`] if the key cannot sign.
    pub fn new(id: impl Into<String>, key: PrivateKey) -> Result<Self, AuthError> {
        let pub_pem = key.public_key().to_clean_pem();
        let tok = key.sign_x931(b"salt")?;
        Ok(Self {
            id: id.into(),
            key,
            pub_pem,
            tok,
        })
    }
}

/// Options for [`MinionAuth`], defaults as Salt 3007's minion.
#[derive(Debug, Clone)]
pub struct MinionAuthConfig {
    /// `encryption_algorithm`.
    pub enc_algo: EncAlgo,
    /// `signing_algorithm`.
    pub sig_algo: SigAlgo,
    /// `auth_timeout`: how long to wait for one reply.
    pub auth_timeout: Duration,
    /// `auth_tries`: how many times the same request is sent (each after `auth_timeout`
    /// without a reply) before a new one is built after `acceptance_wait_time`.
    pub auth_tries: u32,
    /// `acceptance_wait_time`: delay before retrying while pending.
    pub acceptance_wait_time: Duration,
    /// `acceptance_wait_time_max`: cap for the doubling delay (zero = no doubling).
    pub acceptance_wait_time_max: Duration,
    /// `master_sign.pub` when `verify_master_pubkey_sign` is on.
    pub master_sign_pub: Option<PublicKey>,
    /// `autosign_grains` to send.
    pub autosign_grains: Option<Value>,
    /// Shared by many minions of one process (brine-swarm), never by a real minion: see
    /// [`KnownMaster`].
    pub known_master: Option<KnownMaster>,
}

/// What minions sharing one process learnt from a master's accepting reply: its public key
/// (parsed) and the AES key with the `sig` that vouched for it. The `sig` is the master's
/// deterministic X9.31 signature over the key's SHA-256 digest, so a later reply from the same
/// master key carrying the same `sig` carries the same AES key: its `aes` field need not be
/// decrypted (one of the two RSA private-key operations of a simulated minion's auth).
/// Everything else in the reply is still checked, and only a reply that passed every check
/// teaches the memo.
#[derive(Clone, Default)]
pub struct KnownMaster(std::sync::Arc<std::sync::Mutex<Option<Learnt>>>);

#[derive(Clone)]
struct Learnt {
    pub_pem: String,
    master_pub: PublicKey,
    sig: Vec<u8>,
    aes: zeroize::Zeroizing<Vec<u8>>,
}

impl KnownMaster {
    fn get(&self) -> Option<Learnt> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn set(&self, l: Learnt) {
        *self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(l);
    }
}

impl fmt::Debug for KnownMaster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KnownMaster(..)")
    }
}

impl Default for MinionAuthConfig {
    fn default() -> Self {
        Self {
            enc_algo: EncAlgo::OaepSha1,
            sig_algo: SigAlgo::Pkcs1v15Sha1,
            auth_timeout: DEFAULT_AUTH_TIMEOUT,
            auth_tries: DEFAULT_AUTH_TRIES,
            acceptance_wait_time: DEFAULT_ACCEPTANCE_WAIT_TIME,
            acceptance_wait_time_max: Duration::ZERO,
            master_sign_pub: None,
            autosign_grains: None,
            known_master: None,
        }
    }
}

/// What came of the handshake.
#[derive(Debug)]
pub enum AuthEvent {
    /// Accepted: the keys for the publish and request channels.
    Accepted(Box<Credentials>),
    /// The key waits for acceptance on the master; a retry is scheduled.
    Pending,
    /// The master rejected or denied the key. Salt's minion exits.
    Rejected,
    /// `max_minions` reached.
    Full,
    /// The master's key differs from the cached `minion_master.pub` and is not signed by
    /// `master_sign.pub`: refuse it ("The master key has changed").
    MasterKeyChanged,
    /// No reply within `auth_timeout`: the same request is queued again, or after `auth_tries`
    /// sends a new one is scheduled after `acceptance_wait_time`.
    TimedOut,
    /// The reply was invalid (bad signature, bad nonce...); a retry is scheduled.
    Invalid(AuthError),
}

/// The result of a successful `_auth`.
pub struct Credentials {
    /// The master's publish AES key.
    pub aes: Crypticle,
    /// This minion's session key for the request channel.
    pub session: Crypticle,
    /// The master's public key (to cache as `minion_master.pub`).
    pub master_pub: PublicKey,
    /// It in `clean_key` form.
    pub master_pub_pem: String,
    /// Whether it differs from what was cached before (write it out).
    pub master_key_new: bool,
    /// The `publish_port` the master advertised.
    pub publish_port: Option<i64>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("publish_port", &self.publish_port)
            .field("master_key_new", &self.master_key_new)
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
enum State {
    Idle,
    Awaiting {
        nonce: String,
        deadline: Instant,
        /// The request as sent (resent as is on a timeout).
        frame: Vec<u8>,
        /// Sends of `frame` so far.
        sent: u32,
    },
    Waiting {
        until: Instant,
    },
    Done,
}

/// The minion side of `_auth` (`salt/crypt.py:AsyncAuth.sign_in`).
pub struct MinionAuth {
    me: MinionIdentity,
    cfg: MinionAuthConfig,
    cached_master: Option<PublicKey>,
    /// Proof-of-key token: sent OAEP-encrypted to a known master, which must echo it.
    token: Crypticle,
    state: State,
    wait: Duration,
    transmit: Option<Vec<u8>>,
    events: VecDeque<AuthEvent>,
}

impl fmt::Debug for MinionAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MinionAuth")
            .field("id", &self.me.id)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl MinionAuth {
    /// A handshake for `me`. `cached_master` is `minion_master.pub`, if the minion has one.
    pub fn new(
        me: MinionIdentity,
        cfg: MinionAuthConfig,
        cached_master: Option<PublicKey>,
        rng: &mut dyn Entropy,
    ) -> Self {
        let wait = cfg.acceptance_wait_time;
        Self {
            me,
            cfg,
            cached_master,
            token: Crypticle::generate(rng),
            state: State::Idle,
            wait,
            transmit: None,
            events: VecDeque::new(),
        }
    }

    /// Queue an `_auth` request.
    ///
    /// # Errors
    /// [`AuthError::Rsa`] if the token cannot be encrypted to the cached master key.
    pub fn start(&mut self, now: Instant, rng: &mut dyn Entropy) -> Result<(), AuthError> {
        let nonce = new_nonce(rng);
        let token = match &self.cached_master {
            Some(m) => {
                Some(m.encrypt_oaep(self.token.key_string().as_bytes(), self.cfg.enc_algo, rng)?)
            }
            None => None,
        };
        let req = AuthRequest {
            id: self.me.id.clone(),
            nonce: nonce.clone(),
            enc_algo: self.cfg.enc_algo.as_str().into(),
            sig_algo: self.cfg.sig_algo.as_str().into(),
            autosign_grains: self.cfg.autosign_grains.clone(),
            token,
            pub_key: self.me.pub_pem.clone(),
        };
        let frame = Request::Clear {
            load: req.to_value(),
            version: REQUEST_VERSION,
        }
        .encode();
        self.transmit = Some(frame.clone());
        self.state = State::Awaiting {
            nonce,
            deadline: now + self.cfg.auth_timeout,
            frame,
            sent: 1,
        };
        Ok(())
    }

    /// Feed the master's reply frame.
    pub fn handle_reply(&mut self, frame: &[u8], now: Instant) {
        let State::Awaiting { nonce, .. } = &self.state else {
            return;
        };
        let nonce = nonce.clone();
        match self.check_reply(frame, &nonce) {
            Ok(ev) => {
                match &ev {
                    AuthEvent::Accepted(_)
                    | AuthEvent::Rejected
                    | AuthEvent::Full
                    | AuthEvent::MasterKeyChanged => self.state = State::Done,
                    _ => self.schedule_retry(now),
                }
                self.events.push_back(ev);
            }
            Err(e) => {
                self.schedule_retry(now);
                self.events.push_back(AuthEvent::Invalid(e));
            }
        }
    }

    /// Advance timers: a reply that did not come, or a pending wait that is over.
    ///
    /// # Errors
    /// As [`MinionAuth::start`].
    pub fn handle_timeout(&mut self, now: Instant, rng: &mut dyn Entropy) -> Result<(), AuthError> {
        match &mut self.state {
            State::Awaiting {
                deadline,
                frame,
                sent,
                ..
            } if now >= *deadline => {
                self.events.push_back(AuthEvent::TimedOut);
                if *sent < self.cfg.auth_tries.max(1) {
                    // Salt's sign_in: the same payload again (a master may still be working
                    // through the first copy, and answers both alike).
                    *sent += 1;
                    *deadline = now + self.cfg.auth_timeout;
                    self.transmit = Some(frame.clone());
                } else {
                    self.schedule_retry(now);
                }
                Ok(())
            }
            State::Waiting { until } if now >= *until => self.start(now, rng),
            _ => Ok(()),
        }
    }

    /// The next frame to send, if any.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.transmit.take()
    }

    /// When [`MinionAuth::handle_timeout`] must be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match &self.state {
            State::Awaiting { deadline, .. } => Some(*deadline),
            State::Waiting { until } => Some(*until),
            State::Idle | State::Done => None,
        }
    }

    /// The next outcome, if any.
    pub fn poll_event(&mut self) -> Option<AuthEvent> {
        self.events.pop_front()
    }

    fn schedule_retry(&mut self, now: Instant) {
        self.state = State::Waiting {
            until: now + self.wait,
        };
        if !self.cfg.acceptance_wait_time_max.is_zero() {
            self.wait = (self.wait * 2).min(self.cfg.acceptance_wait_time_max);
        }
    }

    fn check_reply(&self, frame: &[u8], nonce: &str) -> Result<AuthEvent, AuthError> {
        let outer = codec::decode(frame)?;
        let load = outer.get("load").ok_or(AuthError::Malformed("no load"))?;
        // Unsigned clear replies ("bad enc algo", or a master without sign_messages).
        if load.as_map().is_some() && outer.get("sig").is_none() {
            return match load.get("ret") {
                Some(Value::Bool(true)) => Ok(AuthEvent::Pending),
                Some(v) if v.is_str("full") => Ok(AuthEvent::Full),
                Some(Value::Bool(false)) => Ok(AuthEvent::Rejected),
                _ => Err(AuthError::Malformed("unsigned auth reply")),
            };
        }
        let signed = load
            .as_bytes()
            .ok_or(AuthError::Malformed("load not bytes"))?;
        let sig = outer
            .get("sig")
            .and_then(Value::as_bytes)
            .ok_or(AuthError::Malformed("no sig"))?;
        let inner = codec::decode(signed)?;

        if let Some(ret) = inner.get("ret") {
            // Status replies are signed by the master key: verify against the cached one when
            // there is one (a first contact cannot check them, as in Salt).
            if let Some(m) = &self.cached_master
                && !m.verify(signed, sig, self.cfg.sig_algo)
            {
                return Err(AuthError::BadSignature);
            }
            if inner.get("nonce").and_then(Value::as_str) != Some(nonce) {
                return Err(AuthError::NonceMismatch);
            }
            return Ok(match ret {
                Value::Bool(true) => AuthEvent::Pending,
                v if v.is_str("full") => AuthEvent::Full,
                _ => AuthEvent::Rejected,
            });
        }

        let pub_pem = inner
            .get("pub_key")
            .and_then(Value::as_str)
            .map(clean_key)
            .ok_or(AuthError::Malformed("no pub_key"))?;
        let known = self
            .cfg
            .known_master
            .as_ref()
            .and_then(KnownMaster::get)
            .filter(|k| k.pub_pem == pub_pem);
        let master_pub = match &known {
            Some(k) => k.master_pub.clone(),
            None => PublicKey::from_pem(pub_pem.as_bytes())?,
        };
        let master_key_new = self.cached_master.as_ref() != Some(&master_pub);
        // `verify_master_pubkey_sign`: the master must send `pub_sig`, and a key we have not
        // cached (first contact, or a different master) is accepted only if it verifies with
        // `master_sign.pub`. Without it, a changed key is refused (trust on first use).
        let signed_ok = || match (
            &self.cfg.master_sign_pub,
            inner.get("pub_sig").and_then(Value::as_str),
        ) {
            (Some(sign_pub), Some(pub_sig)) => {
                use base64::Engine as _;
                base64::engine::general_purpose::STANDARD
                    .decode(pub_sig.trim())
                    .is_ok_and(|s| sign_pub.verify(pub_pem.as_bytes(), &s, self.cfg.sig_algo))
            }
            _ => false,
        };
        if self.cfg.master_sign_pub.is_some() {
            if master_key_new && !signed_ok() {
                return Ok(AuthEvent::MasterKeyChanged);
            }
        } else if master_key_new && self.cached_master.is_some() {
            return Ok(AuthEvent::MasterKeyChanged);
        }
        let aes_ct = inner
            .get("aes")
            .and_then(Value::as_bytes)
            .ok_or(AuthError::Malformed("no aes"))?;
        let x931 = inner
            .get("sig")
            .and_then(Value::as_bytes)
            .ok_or(AuthError::Malformed("no sig in auth reply"))?;
        let vouched = known.filter(|k| k.sig == x931);
        let memo_hit = vouched.is_some();
        let aes_string = match vouched {
            Some(k) => k.aes,
            None => {
                let aes_string = self.me.key.decrypt_oaep(aes_ct, self.cfg.enc_algo)?;
                if master_pub.recover_x931(x931)? != sha256_hex(&aes_string).as_bytes() {
                    return Err(AuthError::BadSignature);
                }
                aes_string
            }
        };
        // The token was encrypted to the cached key: only that same master can echo it.
        if self.cached_master.is_some() && !master_key_new {
            let tok_ct = inner
                .get("token")
                .and_then(Value::as_bytes)
                .ok_or(AuthError::BadToken)?;
            let tok = self.me.key.decrypt_oaep(tok_ct, self.cfg.enc_algo)?;
            let mine = self.token.key_string();
            if !bool::from(subtle::ConstantTimeEq::ct_eq(
                tok.as_slice(),
                mine.as_bytes(),
            )) {
                return Err(AuthError::BadToken);
            }
        }
        let session_ct = inner
            .get("session")
            .and_then(Value::as_bytes)
            .ok_or(AuthError::Malformed("no session"))?;
        let session_string = self.me.key.decrypt_oaep(session_ct, self.cfg.enc_algo)?;
        if !master_pub.verify(signed, sig, self.cfg.sig_algo) {
            return Err(AuthError::BadSignature);
        }
        if inner.get("nonce").and_then(Value::as_str) != Some(nonce) {
            return Err(AuthError::NonceMismatch);
        }
        let aes = Crypticle::from_key_string(&aes_string)?;
        if let Some(memo) = self.cfg.known_master.as_ref().filter(|_| !memo_hit) {
            memo.set(Learnt {
                pub_pem: pub_pem.clone(),
                master_pub: master_pub.clone(),
                sig: x931.to_vec(),
                aes: aes_string,
            });
        }
        Ok(AuthEvent::Accepted(Box::new(Credentials {
            aes,
            session: Crypticle::from_key_string(&session_string)?,
            master_pub_pem: pub_pem,
            master_pub,
            master_key_new,
            publish_port: inner.get("publish_port").and_then(Value::as_i64),
        })))
    }
}

/// The minion's authenticated request channel: seals loads with the session key and opens the
/// master's replies (`AsyncReqChannel._package_load` / `crypted_transfer_decode_dictentry`).
#[derive(Clone)]
pub struct MinionSession {
    me: MinionIdentity,
    session: Crypticle,
    enc_algo: EncAlgo,
    sig_algo: SigAlgo,
}

impl fmt::Debug for MinionSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MinionSession")
            .field("id", &self.me.id)
            .finish_non_exhaustive()
    }
}

/// A sealed request, ready to send, and the nonce its reply must carry.
#[derive(Debug, Clone)]
pub struct SealedRequest {
    /// The request frame.
    pub frame: Vec<u8>,
    /// The nonce placed in the load.
    pub nonce: String,
}

impl MinionSession {
    /// A channel using `session` (from [`Credentials`]).
    pub fn new(
        me: MinionIdentity,
        session: Crypticle,
        enc_algo: EncAlgo,
        sig_algo: SigAlgo,
    ) -> Self {
        Self {
            me,
            session,
            enc_algo,
            sig_algo,
        }
    }

    /// Seal `load` (which must carry `cmd`): add `nonce`, `ts`, `tok`, `id`, encrypt, wrap.
    pub fn seal(&self, mut load: Value, unix_secs: i64, rng: &mut dyn Entropy) -> SealedRequest {
        let nonce = new_nonce(rng);
        seal_fields(&mut load, &nonce, unix_secs, &self.me.tok, &self.me.id);
        let blob = self.session.dumps(&load, None, rng);
        let frame = Request::Aes {
            id: self.me.id.clone(),
            load: blob,
            version: REQUEST_VERSION,
            enc_algo: Some(self.enc_algo),
            sig_algo: Some(self.sig_algo),
        }
        .encode();
        SealedRequest { frame, nonce }
    }

    /// Open the master's reply to a request sealed with `nonce`.
    ///
    /// # Errors
    /// [`AuthError::Crypticle`] with [`CrypticleError::BadMac`] when the master answered
    /// `"bad load"` or the session key is stale: re-authenticate and resend.
    pub fn open_reply(&self, frame: &[u8], nonce: &str) -> Result<Value, AuthError> {
        let v = codec::decode(frame)?;
        let blob = v
            .as_bytes()
            .ok_or(AuthError::Malformed("reply is not a blob"))?;
        if blob == b"bad load" {
            return Err(AuthError::Crypticle(CrypticleError::BadMac));
        }
        Ok(self.session.loads(blob, Some(nonce))?)
    }

    /// Open a `_pillar` "send_private" reply (`{key, pillar}`), verifying the master signature
    /// and the nonce, and return the pillar.
    ///
    /// # Errors
    /// [`AuthError`] if any check fails.
    pub fn open_pillar_reply(
        &self,
        frame: &[u8],
        nonce: &str,
        master: &PublicKey,
    ) -> Result<Value, AuthError> {
        let v = codec::decode(frame)?;
        let key_ct = v
            .get("key")
            .and_then(Value::as_bytes)
            .ok_or(AuthError::Malformed("no key"))?;
        let tmp = Crypticle::from_key_string(&self.me.key.decrypt_oaep(key_ct, self.enc_algo)?)?;
        let blob = v
            .get("pillar")
            .and_then(Value::as_bytes)
            .ok_or(AuthError::Malformed("no pillar"))?;
        let body = tmp.loads(blob, None)?;
        let data = body
            .get("data")
            .and_then(Value::as_bytes)
            .ok_or(AuthError::Malformed("no data"))?;
        let sig = body
            .get("sig")
            .and_then(Value::as_bytes)
            .ok_or(AuthError::Malformed("no sig"))?;
        if !master.verify(data, sig, self.sig_algo) {
            return Err(AuthError::BadSignature);
        }
        let d = codec::decode(data)?;
        if d.get("key").and_then(Value::as_bytes) != Some(key_ct) {
            return Err(AuthError::Malformed("pillar key mismatch"));
        }
        if d.get("nonce").and_then(Value::as_str) != Some(nonce) {
            return Err(AuthError::NonceMismatch);
        }
        Ok(d.get("pillar").cloned().unwrap_or_else(Value::map))
    }
}
