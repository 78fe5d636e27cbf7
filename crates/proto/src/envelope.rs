//! The outer msgpack envelopes of Salt's request channel (REQ → ROUTER) and publish channel.
//!
//! ```text
//! request, clear: {"enc":"clear","load":<map>,"version":3}
//! request, aes:   {"enc":"aes","load":<Crypticle(session) blob>,"version":3,"id":..,"enc_algo":..,"sig_algo":..}
//! publish:        {"enc":"aes","load":<Crypticle(aes) blob>,"sig_algo":..,"sig":<PKCS#1 v1.5 over the blob>}
//! ```

use crate::codec::{self, DecodeError};
use crate::crypt::{Crypticle, CrypticleError, EncAlgo, PrivateKey, PublicKey, RsaError, SigAlgo};
use crate::value::Value;

/// The lowest request `version` a master accepts (`minimum_auth_version`, Salt 3006–3008: 3).
pub const MINIMUM_AUTH_VERSION: i64 = 3;
/// The request `version` Salt 3006–3008 send.
pub const REQUEST_VERSION: i64 = 3;

/// Why an envelope could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EnvelopeError {
    /// The frame is not msgpack.
    #[error("malformed msgpack: {0}")]
    Decode(#[from] DecodeError),
    /// The frame is msgpack but not a map.
    #[error("payload and load must be a dict")]
    NotAMap,
    /// A required field is missing or has the wrong type.
    #[error("envelope field {0:?} missing or of the wrong type")]
    Field(&'static str),
    /// `version` below [`MINIMUM_AUTH_VERSION`].
    #[error("request version {0} below the minimum {MINIMUM_AUTH_VERSION}")]
    OldVersion(i64),
    /// `enc` is neither `clear` nor `aes`.
    #[error("unknown enc {0:?}")]
    UnknownEnc(String),
    /// An `enc_algo`/`sig_algo` value Salt does not define.
    #[error("unknown algorithm {0:?}")]
    UnknownAlgo(String),
}

/// A decoded request envelope.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    /// `enc: clear`: `_auth`, the CLI's `publish`, `ping`, ...
    Clear {
        /// The load map, in the clear.
        load: Value,
        /// The envelope's `version`.
        version: i64,
    },
    /// `enc: aes`: every other minion request, encrypted with the minion's session key.
    Aes {
        /// The minion id claimed by the envelope (the session key is looked up by it).
        id: String,
        /// The Crypticle blob.
        load: Vec<u8>,
        /// The envelope's `version`.
        version: i64,
        /// `enc_algo`, if sent.
        enc_algo: Option<EncAlgo>,
        /// `sig_algo`, if sent.
        sig_algo: Option<SigAlgo>,
    },
}

impl Request {
    /// Decode a request frame and check its version.
    ///
    /// # Errors
    /// Any [`EnvelopeError`]; the master answers all of them with `"bad load"`.
    pub fn decode(frame: &[u8]) -> Result<Self, EnvelopeError> {
        let v = codec::decode(frame)?;
        if v.as_map().is_none() {
            return Err(EnvelopeError::NotAMap);
        }
        let version = v
            .get("version")
            .and_then(Value::as_i64)
            .ok_or(EnvelopeError::Field("version"))?;
        if version < MINIMUM_AUTH_VERSION {
            return Err(EnvelopeError::OldVersion(version));
        }
        let enc = v
            .get("enc")
            .and_then(Value::as_str)
            .ok_or(EnvelopeError::Field("enc"))?;
        match enc {
            "clear" => {
                let load = v.get("load").ok_or(EnvelopeError::Field("load"))?;
                if load.as_map().is_none() {
                    return Err(EnvelopeError::NotAMap);
                }
                Ok(Self::Clear {
                    load: load.clone(),
                    version,
                })
            }
            "aes" => {
                let load = v
                    .get("load")
                    .and_then(Value::as_bytes)
                    .ok_or(EnvelopeError::Field("load"))?
                    .to_vec();
                let id = v
                    .get("id")
                    .and_then(Value::as_str)
                    .ok_or(EnvelopeError::Field("id"))?
                    .to_owned();
                let enc_algo = match v.get("enc_algo").and_then(Value::as_str) {
                    None => None,
                    Some(s) => Some(
                        EncAlgo::parse(s).ok_or_else(|| EnvelopeError::UnknownAlgo(s.into()))?,
                    ),
                };
                let sig_algo = match v.get("sig_algo").and_then(Value::as_str) {
                    None => None,
                    Some(s) => Some(
                        SigAlgo::parse(s).ok_or_else(|| EnvelopeError::UnknownAlgo(s.into()))?,
                    ),
                };
                Ok(Self::Aes {
                    id,
                    load,
                    version,
                    enc_algo,
                    sig_algo,
                })
            }
            other => Err(EnvelopeError::UnknownEnc(other.into())),
        }
    }

    /// The envelope as a [`Value`], keys in Salt's order.
    pub fn to_value(&self) -> Value {
        match self {
            Self::Clear { load, version } => Value::map()
                .with("enc", "clear")
                .with("load", load.clone())
                .with("version", *version),
            Self::Aes {
                id,
                load,
                version,
                enc_algo,
                sig_algo,
            } => {
                let mut v = Value::map()
                    .with("enc", "aes")
                    .with("load", Value::bin(load.clone()))
                    .with("version", *version)
                    .with("id", id.as_str());
                if let Some(a) = enc_algo {
                    v.insert("enc_algo", a.as_str());
                }
                if let Some(a) = sig_algo {
                    v.insert("sig_algo", a.as_str());
                }
                v
            }
        }
    }

    /// Encode for the wire.
    pub fn encode(&self) -> Vec<u8> {
        codec::encode_wire(&self.to_value())
    }
}

/// A decoded publish envelope (one PUB frame, or the payload frame after a topic).
#[derive(Debug, Clone, PartialEq)]
pub struct Publish {
    /// The Crypticle blob, encrypted with the master's AES key.
    pub load: Vec<u8>,
    /// `sig_algo`, present when the master signs publishes (`sign_pub_messages`, default on).
    pub sig_algo: Option<SigAlgo>,
    /// PKCS#1 v1.5 signature over `load` by `master.pem`.
    pub sig: Option<Vec<u8>>,
}

impl Publish {
    /// Decode a publish frame. Salt ignores anything whose `enc` is not `aes`.
    ///
    /// # Errors
    /// Any [`EnvelopeError`].
    pub fn decode(frame: &[u8]) -> Result<Self, EnvelopeError> {
        let v = codec::decode(frame)?;
        if v.as_map().is_none() {
            return Err(EnvelopeError::NotAMap);
        }
        match v.get("enc").and_then(Value::as_str) {
            Some("aes") => {}
            Some(other) => return Err(EnvelopeError::UnknownEnc(other.into())),
            None => return Err(EnvelopeError::Field("enc")),
        }
        let load = v
            .get("load")
            .and_then(Value::as_bytes)
            .ok_or(EnvelopeError::Field("load"))?
            .to_vec();
        let sig_algo = match v.get("sig_algo").and_then(Value::as_str) {
            None => None,
            Some(s) => Some(SigAlgo::parse(s).ok_or_else(|| EnvelopeError::UnknownAlgo(s.into()))?),
        };
        let sig = v.get("sig").and_then(Value::as_bytes).map(<[u8]>::to_vec);
        Ok(Self {
            load,
            sig_algo,
            sig,
        })
    }

    /// Seal a job load: add nothing, encrypt with the AES key, sign if `signer` is given.
    ///
    /// # Errors
    /// [`RsaError`] if signing fails.
    pub fn seal(
        job: &Value,
        aes: &Crypticle,
        signer: Option<(&PrivateKey, SigAlgo)>,
        rng: &mut dyn crate::crypt::Entropy,
    ) -> Result<Self, RsaError> {
        let load = aes.dumps(job, None, rng);
        let (sig_algo, sig) = match signer {
            Some((key, algo)) => (Some(algo), Some(key.sign(&load, algo)?)),
            None => (None, None),
        };
        Ok(Self {
            load,
            sig_algo,
            sig,
        })
    }

    /// The envelope as a [`Value`], keys in Salt's order.
    pub fn to_value(&self) -> Value {
        let mut v = Value::map()
            .with("enc", "aes")
            .with("load", Value::bin(self.load.clone()));
        if let Some(a) = self.sig_algo {
            v.insert("sig_algo", a.as_str());
        }
        if let Some(s) = &self.sig {
            v.insert("sig", Value::bin(s.clone()));
        }
        v
    }

    /// Encode for the wire.
    pub fn encode(&self) -> Vec<u8> {
        codec::encode_wire(&self.to_value())
    }

    /// Verify the master's signature over the encrypted load (what a minion with
    /// `sign_pub_messages: True` does). An unsigned publish does not verify.
    pub fn verify(&self, master: &PublicKey) -> bool {
        match (&self.sig, self.sig_algo) {
            (Some(sig), algo) => master.verify(&self.load, sig, algo.unwrap_or_default()),
            (None, _) => false,
        }
    }

    /// Decrypt the job load.
    ///
    /// # Errors
    /// [`CrypticleError::BadMac`] when the AES key has rotated: re-authenticate and retry.
    pub fn open(&self, aes: &Crypticle) -> Result<Value, CrypticleError> {
        aes.loads(&self.load, None)
    }
}

/// The fields Salt's request channel adds to every `aes` load (`_package_load`): a nonce the
/// reply must echo, a timestamp, the `tok` proving the minion key, and the id.
#[derive(Debug, Clone, PartialEq)]
pub struct Sealed {
    /// `nonce`: `uuid4().hex`.
    pub nonce: String,
    /// `ts`: unix seconds.
    pub ts: Option<i64>,
    /// `tok`: X9.31 signature of `b"salt"` by the minion key.
    pub tok: Option<Vec<u8>>,
}

/// Add `nonce`, `ts`, `tok` and `id` to a request load in Salt's order (insert-or-replace, so a
/// `tok` the caller already placed keeps its position, as in Salt's `_minion_event` loads).
pub fn seal_fields(load: &mut Value, nonce: &str, ts: i64, tok: &[u8], id: &str) {
    load.insert("nonce", nonce);
    load.insert("ts", ts);
    load.insert("tok", Value::bin(tok.to_vec()));
    load.insert("id", id);
}

/// Remove `nonce`, `ts` and `tok` from a decrypted request load, as the master does before
/// dispatch. `id` stays in the load.
pub fn unseal_fields(load: &mut Value) -> Sealed {
    let nonce = load
        .remove("nonce")
        .and_then(|n| n.as_str().map(str::to_owned))
        .unwrap_or_default();
    let ts = load.remove("ts").and_then(|t| t.as_i64());
    let tok = load
        .remove("tok")
        .and_then(|t| t.as_bytes().map(<[u8]>::to_vec));
    Sealed { nonce, ts, tok }
}

/// Error strings a master replies with in the clear (Salt's exact texts).
pub mod replies {
    /// Any failed check on an `aes` request; makes the minion re-authenticate.
    pub const BAD_LOAD: &str = "bad load";
    /// A request that is not a map.
    pub const NOT_A_DICT: &str = "payload and load must be a dict";
}
