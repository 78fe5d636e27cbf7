//! Master side of `_auth`, and of the authenticated request channel.
//!
//! The key decision follows `ReqServerChannel._auth` (Salt 3007) step by step. It is a pure
//! function of the request, what the caller found in the pki directories ([`KeyState`]) and the
//! policy: the caller performs the [`KeyAction`]s, fires the event and sends the reply.

use std::fmt;

use crate::codec;
use crate::crypt::{
    Crypticle, EncAlgo, Entropy, PrivateKey, PublicKey, SigAlgo, clean_key, sha256_hex,
};
use crate::envelope::{Request, Sealed, unseal_fields};
use crate::loads::AuthRequest;
use crate::value::Value;

use super::AuthError;

/// What the master's pki directories hold for a minion id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyState {
    /// No key anywhere.
    Unknown,
    /// `minions_pre/<id>` holds this key.
    Pending(String),
    /// `minions/<id>` holds this key.
    Accepted(String),
    /// `minions_rejected/<id>` exists.
    Rejected,
}

/// Policy inputs the caller evaluates (files and globs live outside this crate).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AuthPolicy {
    /// `open_mode`: accept any key, overwriting the stored one. Dangerous.
    pub open_mode: bool,
    /// The id matched `autoreject_file`.
    pub auto_reject: bool,
    /// `auto_accept`, or the id matched `autosign_file`/`autosign_grains`.
    pub auto_sign: bool,
    /// `max_minions` is reached and this id is not among the connected ones.
    pub full: bool,
}

/// What the caller must do to the pki directories.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyAction {
    /// Write the key to `minions/<id>`.
    WriteAccepted(String),
    /// Write the key to `minions_pre/<id>`.
    WritePending(String),
    /// Write the key to `minions_rejected/<id>`.
    WriteRejected(String),
    /// Write the offered key to `minions_denied/<id>` (it differs from the stored one).
    WriteDenied(String),
    /// Move `minions_pre/<id>` to `minions_rejected/<id>`.
    MovePendingToRejected,
    /// Delete `minions_pre/<id>` (it is being auto-accepted).
    RemovePending,
}

/// The outcome, as Salt's `salt/auth` event `act` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Key accepted; the reply carries the AES and session keys.
    Accept,
    /// Key waits in `minions_pre` (`ret: True`).
    Pend,
    /// Key rejected (`ret: False`).
    Reject,
    /// Offered key differs from the stored one (`ret: False`, copy to `minions_denied`).
    Deny,
    /// `max_minions` reached (`ret: "full"`).
    Full,
    /// The id is not acceptable (path tricks, control characters...).
    InvalidId,
}

impl Verdict {
    /// The `act` value of the `salt/auth` event.
    pub fn act(self) -> &'static str {
        match self {
            Self::Accept => "accept",
            Self::Pend => "pend",
            Self::Reject | Self::InvalidId => "reject",
            Self::Deny => "denied",
            Self::Full => "full",
        }
    }
}

/// Everything the master must do for one `_auth` request.
#[derive(Debug, Clone)]
pub struct AuthDecision {
    /// The outcome.
    pub verdict: Verdict,
    /// File operations, in order.
    pub actions: Vec<KeyAction>,
    /// Data of the `salt/auth` event (`{result, act, id, pub}`), if one is fired.
    pub event: Option<Value>,
    /// The reply to send (the whole outer map).
    pub reply: Value,
}

/// The master's long-lived key material for `_auth`.
#[derive(Clone)]
pub struct MasterIdentity {
    /// `master.pem`.
    pub key: PrivateKey,
    /// `master.pub`, in `clean_key` form.
    pub pub_pem: String,
    /// `pub_sig` for `master_sign_pubkey` (base64 + `\n`), if enabled.
    pub pub_sig: Option<String>,
    /// The `publish_port` advertised in the reply.
    pub publish_port: u16,
    /// The X9.31 `sig` over the current AES key's digest: the same in every reply while the
    /// key does not rotate, so one private-key operation serves them all (shared by clones).
    aes_sig: std::sync::Arc<std::sync::Mutex<Option<AesSig>>>,
}

/// The digest of an AES key string and its X9.31 signature.
type AesSig = (String, Vec<u8>);

impl fmt::Debug for MasterIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MasterIdentity")
            .field("publish_port", &self.publish_port)
            .field("pub_sig", &self.pub_sig.is_some())
            .finish_non_exhaustive()
    }
}

impl MasterIdentity {
    /// Identity from the master key.
    pub fn new(key: PrivateKey, publish_port: u16) -> Self {
        let pub_pem = key.public_key().to_clean_pem();
        Self {
            key,
            pub_pem,
            pub_sig: None,
            publish_port,
            aes_sig: Default::default(),
        }
    }

    /// `sig` for the `aes` key string (X9.31 over its SHA-256 hex digest), computed once per key.
    ///
    /// # Errors
    /// [`AuthError::Rsa`] if signing fails.
    pub fn aes_sig(&self, aes_string: &str) -> Result<Vec<u8>, AuthError> {
        let digest = sha256_hex(aes_string.as_bytes());
        let mut memo = self
            .aes_sig
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((d, sig)) = memo.as_ref()
            && *d == digest
        {
            return Ok(sig.clone());
        }
        let sig = self.key.sign_x931(digest.as_bytes())?;
        *memo = Some((digest, sig.clone()));
        Ok(sig)
    }

    /// Enable `master_sign_pubkey`: sign `master.pub` with the signing key (`master_sign.pem`).
    ///
    /// # Errors
    /// [`AuthError::Rsa`] if signing fails.
    pub fn with_signing_key(
        mut self,
        sign_key: &PrivateKey,
        algo: SigAlgo,
    ) -> Result<Self, AuthError> {
        use base64::Engine as _;
        let sig = sign_key.sign(self.pub_pem.as_bytes(), algo)?;
        let mut s = base64::engine::general_purpose::STANDARD.encode(sig);
        s.push('\n');
        self.pub_sig = Some(s);
        Ok(self)
    }
}

/// Salt's `valid_id`, made stricter: an id must be usable as a single file name in the pki
/// directories. Rejects empty ids, `.`/`..`, path separators, NUL and other control characters,
/// and ids longer than 255 bytes.
pub fn valid_minion_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 255
        && id != "."
        && id != ".."
        && !id.chars().any(|c| c == '/' || c == '\\' || c.is_control())
}

/// Decide on an `_auth` request and build the reply.
///
/// `aes` is the current publish key, `session` the minion's session key (the caller keeps one
/// per minion). OAEP seeds come from `rng` in reply order (`token`, `aes`, `session`).
///
/// # Errors
/// [`AuthError`] for an unusable request (bad algorithm names get a reply in `Ok`, as in Salt;
/// an unreadable public key or token is an error the caller logs and answers with `ret: False`).
pub fn decide_auth(
    req: &AuthRequest,
    state: &KeyState,
    policy: AuthPolicy,
    master: &MasterIdentity,
    aes: &Crypticle,
    session: &Crypticle,
    rng: &mut dyn Entropy,
) -> Result<AuthDecision, AuthError> {
    let Some(enc_algo) = EncAlgo::parse(&req.enc_algo) else {
        return Ok(unsigned_failure(Verdict::Reject, "bad enc algo"));
    };
    let Some(sig_algo) = SigAlgo::parse(&req.sig_algo) else {
        return Ok(unsigned_failure(Verdict::Reject, "bad sig algo"));
    };
    let offered = clean_key(&req.pub_key);
    let event = |result: bool, act: Option<&str>| {
        let mut e = Value::map().with("result", result);
        if let Some(a) = act {
            e.insert("act", a);
        }
        e.with("id", req.id.as_str())
            .with("pub", req.pub_key.as_str())
    };
    let signed = |ret: Value| -> Result<Value, AuthError> {
        clear_signed(
            &Value::map()
                .with("ret", ret)
                .with("nonce", req.nonce.as_str()),
            &master.key,
            sig_algo,
        )
    };
    let refuse =
        |verdict: Verdict, actions: Vec<KeyAction>, ev: Value| -> Result<AuthDecision, AuthError> {
            let ret = match verdict {
                Verdict::Pend => Value::Bool(true),
                Verdict::Full => Value::str("full"),
                _ => Value::Bool(false),
            };
            Ok(AuthDecision {
                verdict,
                actions,
                event: Some(ev),
                reply: signed(ret)?,
            })
        };

    if !valid_minion_id(&req.id) {
        return Ok(AuthDecision {
            verdict: Verdict::InvalidId,
            actions: vec![],
            event: None,
            reply: signed(Value::Bool(false))?,
        });
    }
    let minion_pub = PublicKey::from_pem(offered.as_bytes())?;
    if policy.full {
        return refuse(Verdict::Full, vec![], event(false, Some("full")));
    }
    let mut actions = Vec::new();
    if !policy.open_mode {
        match state {
            KeyState::Rejected => return refuse(Verdict::Reject, vec![], event(false, None)),
            KeyState::Accepted(stored) => {
                if clean_key(stored) != offered {
                    return refuse(
                        Verdict::Deny,
                        vec![KeyAction::WriteDenied(req.pub_key.clone())],
                        event(false, Some("denied")),
                    );
                }
            }
            KeyState::Unknown => {
                if policy.auto_reject {
                    return refuse(
                        Verdict::Reject,
                        vec![KeyAction::WriteRejected(req.pub_key.clone())],
                        event(false, Some("reject")),
                    );
                } else if !policy.auto_sign {
                    return refuse(
                        Verdict::Pend,
                        vec![KeyAction::WritePending(req.pub_key.clone())],
                        event(true, Some("pend")),
                    );
                }
                actions.push(KeyAction::WriteAccepted(req.pub_key.clone()));
            }
            KeyState::Pending(stored) => {
                if policy.auto_reject {
                    return refuse(
                        Verdict::Reject,
                        vec![KeyAction::MovePendingToRejected],
                        event(false, Some("reject")),
                    );
                }
                if clean_key(stored) != offered {
                    return refuse(
                        Verdict::Deny,
                        vec![KeyAction::WriteDenied(req.pub_key.clone())],
                        event(false, Some("denied")),
                    );
                }
                if !policy.auto_sign {
                    return refuse(Verdict::Pend, vec![], event(true, Some("pend")));
                }
                actions.push(KeyAction::RemovePending);
                actions.push(KeyAction::WriteAccepted(req.pub_key.clone()));
            }
        }
    } else if !matches!(state, KeyState::Accepted(k) if clean_key(k) == offered) {
        actions.push(KeyAction::WriteAccepted(req.pub_key.clone()));
    }

    let mut inner = Value::map()
        .with("enc", "pub")
        .with("pub_key", master.pub_pem.as_str())
        .with("publish_port", master.publish_port);
    if let Some(s) = &master.pub_sig {
        inner.insert("pub_sig", s.as_str());
    }
    // A token this master cannot decrypt was meant for another master (the minion cached a
    // different key): answer without one, as Salt does; the minion then decides by the key.
    if let Some(plain) = req
        .token
        .as_ref()
        .and_then(|tok| master.key.decrypt_oaep(tok, enc_algo).ok())
    {
        inner.insert(
            "token",
            Value::bin(minion_pub.encrypt_oaep(&plain, enc_algo, rng)?),
        );
    }
    let aes_string = aes.key_string();
    inner.insert(
        "aes",
        Value::bin(minion_pub.encrypt_oaep(aes_string.as_bytes(), enc_algo, rng)?),
    );
    inner.insert(
        "session",
        Value::bin(minion_pub.encrypt_oaep(session.key_string().as_bytes(), enc_algo, rng)?),
    );
    inner.insert("sig", Value::bin(master.aes_sig(&aes_string)?));
    inner.insert("nonce", req.nonce.as_str());
    Ok(AuthDecision {
        verdict: Verdict::Accept,
        actions,
        event: Some(event(true, Some("accept"))),
        reply: clear_signed(&inner, &master.key, sig_algo)?,
    })
}

fn unsigned_failure(verdict: Verdict, ret: &str) -> AuthDecision {
    AuthDecision {
        verdict,
        actions: vec![],
        event: None,
        reply: Value::map()
            .with("enc", "clear")
            .with("load", Value::map().with("ret", ret)),
    }
}

/// `_clear_signed`: `{"enc":"clear","load":msgpack(inner),"sig":PKCS1v15(master.pem, load)}`.
///
/// # Errors
/// [`AuthError::Rsa`] if signing fails.
pub fn clear_signed(inner: &Value, key: &PrivateKey, algo: SigAlgo) -> Result<Value, AuthError> {
    let b = codec::encode_wire(inner);
    let sig = key.sign(&b, algo)?;
    Ok(Value::map()
        .with("enc", "clear")
        .with("load", Value::bin(b))
        .with("sig", Value::bin(sig)))
}

/// A decrypted, checked `aes` request.
#[derive(Debug, Clone, PartialEq)]
pub struct OpenedRequest {
    /// Minion id (envelope and load agree).
    pub id: String,
    /// `cmd`.
    pub cmd: String,
    /// The load, without `nonce`/`ts`/`tok`.
    pub load: Value,
    /// The stripped channel fields; the reply must echo `nonce`.
    pub sealed: Sealed,
}

/// Open an `aes` request the way `ReqServerChannel.handle_message` does: decrypt with the
/// minion's session key, pop `nonce`/`ts`/`tok`, require `load.id == envelope id`, and require
/// `tok` to X9.31-recover to `b"salt"` under the minion's accepted key.
///
/// # Errors
/// Any failure is an [`AuthError`]; the master replies `"bad load"` to all of them, which makes
/// a real minion re-authenticate.
pub fn open_request(
    req: &Request,
    session: &Crypticle,
    minion_pub: &PublicKey,
) -> Result<OpenedRequest, AuthError> {
    open_request_with(req, session, &mut |tok| {
        minion_pub.recover_x931(tok).is_ok_and(|m| m == b"salt")
    })
}

/// [`open_request`] with the `tok` check left to `tok_ok` (a master that remembers each
/// minion's verified `tok` skips the RSA operation for the requests after the first).
///
/// # Errors
/// As [`open_request`].
pub fn open_request_with(
    req: &Request,
    session: &Crypticle,
    tok_ok: &mut dyn FnMut(&[u8]) -> bool,
) -> Result<OpenedRequest, AuthError> {
    let Request::Aes { id, load, .. } = req else {
        return Err(AuthError::Malformed("not an aes request"));
    };
    let mut load = session.loads(load, None)?;
    let sealed = unseal_fields(&mut load);
    let load_id = load.get("id").and_then(Value::as_str).unwrap_or_default();
    if load_id != id {
        return Err(AuthError::IdMismatch {
            envelope: id.clone(),
            load: load_id.to_owned(),
        });
    }
    let tok = sealed.tok.as_deref().ok_or(AuthError::BadToken)?;
    if !tok_ok(tok) {
        return Err(AuthError::BadToken);
    }
    let cmd = load
        .get("cmd")
        .and_then(Value::as_str)
        .ok_or(AuthError::Malformed("no cmd"))?
        .to_owned();
    Ok(OpenedRequest {
        id: id.clone(),
        cmd,
        load,
        sealed,
    })
}

/// Seal a reply to an `aes` request: `Crypticle(session).dumps(result, nonce)` as a str value.
pub fn seal_reply(
    result: &Value,
    nonce: &str,
    session: &Crypticle,
    rng: &mut dyn Entropy,
) -> Value {
    Value::bin(session.dumps(result, Some(nonce), rng))
}

/// Build the `_pillar` "send_private" reply (`ReqServerChannel._encrypt_private`).
///
/// A one-off key from `rng` encrypts `{data: msgpack({key, pillar, nonce}), sig}`; the key goes to
/// the minion under OAEP. Randomness is taken in the order: one-off key, OAEP seed, IV.
///
/// # Errors
/// [`AuthError::Rsa`] if encryption or signing fails.
pub fn pillar_reply(
    pillar: &Value,
    nonce: &str,
    minion_pub: &PublicKey,
    master_key: &PrivateKey,
    enc_algo: EncAlgo,
    sig_algo: SigAlgo,
    rng: &mut dyn Entropy,
) -> Result<Value, AuthError> {
    let tmp = Crypticle::generate(rng);
    let key = minion_pub.encrypt_oaep(tmp.key_string().as_bytes(), enc_algo, rng)?;
    let data = codec::encode_wire(
        &Value::map()
            .with("key", Value::bin(key.clone()))
            .with("pillar", pillar.clone())
            .with("nonce", nonce),
    );
    let sig = master_key.sign(&data, sig_algo)?;
    let body = Value::map()
        .with("data", Value::bin(data))
        .with("sig", Value::bin(sig));
    Ok(Value::map()
        .with("key", Value::bin(key))
        .with("pillar", Value::bin(tmp.dumps(&body, None, rng))))
}
