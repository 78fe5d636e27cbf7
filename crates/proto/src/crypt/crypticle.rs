//! Salt's `Crypticle`: AES-192-CBC with encrypt-then-MAC HMAC-SHA256, plus the `pickle::`
//! serialization wrapper, reply nonces and publish serials.
//!
//! ```text
//! key string = base64(24-byte AES key || 32-byte HMAC key)            76 ASCII chars
//! blob       = iv(16) || AES-192-CBC(PKCS#7(plaintext)) || HMAC-SHA256(iv || ct)
//! plaintext  = "pickle::" || [32-char reply nonce] || msgpack(value)
//! ```

use std::fmt;

use aes::cipher::block_padding::{NoPadding, Pkcs7};
use aes::cipher::{BlockModeDecrypt, BlockModeEncrypt, KeyIvInit};
use base64::Engine as _;
use hmac::{KeyInit, Mac};
use sha2::Sha256;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::codec::{self, Mode};
use crate::crypt::Entropy;
use crate::value::Value;

type Aes192CbcEnc = cbc::Encryptor<aes::Aes192>;
type Aes192CbcDec = cbc::Decryptor<aes::Aes192>;
type HmacSha256 = hmac::Hmac<Sha256>;

const AES_KEY_LEN: usize = 24;
const HMAC_KEY_LEN: usize = 32;
const IV_LEN: usize = 16;
const MAC_LEN: usize = 32;
/// Salt's serialization marker. Historic: no Python pickle is involved.
pub const PICKLE_PREFIX: &[u8] = b"pickle::";
/// Length of a reply nonce (`uuid4().hex`).
pub const NONCE_LEN: usize = 32;

/// Why a Crypticle operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CrypticleError {
    /// The key string is not base64 of 56 bytes.
    #[error("invalid crypticle key string: {0}")]
    BadKey(&'static str),
    /// The blob is shorter than an IV, one block and a MAC.
    #[error("ciphertext too short ({0} bytes)")]
    TooShort(usize),
    /// The HMAC does not match: wrong key, tampering, or a rotated key.
    #[error("message authentication failed")]
    BadMac,
    /// The ciphertext is not a whole number of blocks or the padding byte is impossible.
    #[error("bad ciphertext padding")]
    BadPadding,
    /// The plaintext does not start with `pickle::`.
    #[error("plaintext lacks the pickle:: marker")]
    NoMarker,
    /// A reply's nonce is missing or differs from the request's.
    #[error("nonce verification error")]
    NonceMismatch,
    /// The plaintext after the marker is not msgpack.
    #[error("bad msgpack in plaintext: {0}")]
    Decode(#[from] codec::DecodeError),
}

/// A Crypticle key: the AES-192 key and the HMAC-SHA256 key, zeroized on drop.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct Crypticle {
    aes: [u8; AES_KEY_LEN],
    hmac: [u8; HMAC_KEY_LEN],
}

impl fmt::Debug for Crypticle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Crypticle(<redacted>)")
    }
}

impl PartialEq for Crypticle {
    fn eq(&self, other: &Self) -> bool {
        use subtle::ConstantTimeEq;
        let a = self.aes.ct_eq(&other.aes) & self.hmac.ct_eq(&other.hmac);
        a.into()
    }
}

impl Eq for Crypticle {}

impl Crypticle {
    /// A fresh key from `rng` (`Crypticle.generate_key_string`).
    pub fn generate(rng: &mut dyn Entropy) -> Self {
        let mut k = Self {
            aes: [0; AES_KEY_LEN],
            hmac: [0; HMAC_KEY_LEN],
        };
        rng.fill(&mut k.aes);
        rng.fill(&mut k.hmac);
        k
    }

    /// Parse a 76-char key string (base64 of 56 bytes). Trailing whitespace is ignored, as the
    /// root key file may end in a newline.
    ///
    /// # Errors
    /// [`CrypticleError::BadKey`] if it is not base64 of exactly 56 bytes.
    pub fn from_key_string(s: &[u8]) -> Result<Self, CrypticleError> {
        let s = s.trim_ascii();
        let raw = Zeroizing::new(
            base64::engine::general_purpose::STANDARD
                .decode(s)
                .map_err(|_| CrypticleError::BadKey("not base64"))?,
        );
        if raw.len() != AES_KEY_LEN + HMAC_KEY_LEN {
            return Err(CrypticleError::BadKey("not 56 bytes"));
        }
        let mut k = Self {
            aes: [0; AES_KEY_LEN],
            hmac: [0; HMAC_KEY_LEN],
        };
        k.aes.copy_from_slice(&raw[..AES_KEY_LEN]);
        k.hmac.copy_from_slice(&raw[AES_KEY_LEN..]);
        Ok(k)
    }

    /// The 76-char key string. Handle with care: it is the secret.
    pub fn key_string(&self) -> Zeroizing<String> {
        let mut raw = Zeroizing::new([0u8; AES_KEY_LEN + HMAC_KEY_LEN]);
        raw[..AES_KEY_LEN].copy_from_slice(&self.aes);
        raw[AES_KEY_LEN..].copy_from_slice(&self.hmac);
        Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(raw.as_slice()))
    }

    /// Encrypt `data` with the given IV (`Crypticle.encrypt`).
    pub fn encrypt_with_iv(&self, data: &[u8], iv: &[u8; IV_LEN]) -> Vec<u8> {
        let ct =
            Aes192CbcEnc::new(&self.aes.into(), &(*iv).into()).encrypt_padded_vec::<Pkcs7>(data);
        let mut out = Vec::with_capacity(IV_LEN + ct.len() + MAC_LEN);
        out.extend_from_slice(iv);
        out.extend_from_slice(&ct);
        let mut mac = <HmacSha256 as KeyInit>::new_from_slice(&self.hmac)
            .expect("invariant: HMAC accepts any key length");
        mac.update(&out);
        out.extend_from_slice(&mac.finalize().into_bytes());
        out
    }

    /// Encrypt `data` with a fresh IV from `rng`.
    pub fn encrypt(&self, data: &[u8], rng: &mut dyn Entropy) -> Vec<u8> {
        let mut iv = [0u8; IV_LEN];
        rng.fill(&mut iv);
        self.encrypt_with_iv(data, &iv)
    }

    /// Check the MAC (in constant time) and decrypt.
    ///
    /// # Errors
    /// [`CrypticleError::BadMac`] for a wrong key or tampering, [`CrypticleError::TooShort`] or
    /// [`CrypticleError::BadPadding`] for malformed blobs.
    pub fn decrypt(&self, blob: &[u8]) -> Result<Vec<u8>, CrypticleError> {
        if blob.len() < IV_LEN + 16 + MAC_LEN {
            return Err(CrypticleError::TooShort(blob.len()));
        }
        let (body, tag) = blob.split_at(blob.len() - MAC_LEN);
        let mut mac = <HmacSha256 as KeyInit>::new_from_slice(&self.hmac)
            .expect("invariant: HMAC accepts any key length");
        mac.update(body);
        mac.verify_slice(tag).map_err(|_| CrypticleError::BadMac)?;
        let (iv, ct) = body.split_at(IV_LEN);
        let iv: [u8; IV_LEN] = iv.try_into().expect("invariant: split at IV_LEN");
        let mut pt = Aes192CbcDec::new(&self.aes.into(), &iv.into())
            .decrypt_padded_vec::<NoPadding>(ct)
            .map_err(|_| CrypticleError::BadPadding)?;
        // Salt strips `last byte` bytes without validating them; we at least refuse impossible
        // values (the MAC has already authenticated the sender).
        let n = usize::from(*pt.last().ok_or(CrypticleError::BadPadding)?);
        if n == 0 || n > 16 || n > pt.len() {
            return Err(CrypticleError::BadPadding);
        }
        pt.truncate(pt.len() - n);
        Ok(pt)
    }

    /// `Crypticle.dumps`: `pickle::` + optional reply nonce + msgpack (wire mode), encrypted with
    /// the given IV.
    pub fn dumps_with_iv(&self, value: &Value, nonce: Option<&str>, iv: &[u8; IV_LEN]) -> Vec<u8> {
        self.encrypt_with_iv(&Self::plaintext(value, nonce), iv)
    }

    /// `Crypticle.dumps` with a fresh IV.
    pub fn dumps(&self, value: &Value, nonce: Option<&str>, rng: &mut dyn Entropy) -> Vec<u8> {
        self.encrypt(&Self::plaintext(value, nonce), rng)
    }

    /// The plaintext `dumps` encrypts.
    pub fn plaintext(value: &Value, nonce: Option<&str>) -> Vec<u8> {
        let mut pt = Vec::with_capacity(PICKLE_PREFIX.len() + NONCE_LEN + 64);
        pt.extend_from_slice(PICKLE_PREFIX);
        if let Some(n) = nonce {
            pt.extend_from_slice(n.as_bytes());
        }
        codec::encode_into(value, Mode::Wire, &mut pt);
        pt
    }

    /// `Crypticle.loads`: decrypt, check the marker and (for replies) the nonce, decode.
    ///
    /// Unlike Salt, a missing marker is an error rather than `{}`. Publish serials are checked
    /// separately by [`SerialGuard`], since the serial is part of the decoded load.
    ///
    /// # Errors
    /// Any [`CrypticleError`].
    pub fn loads(&self, blob: &[u8], nonce: Option<&str>) -> Result<Value, CrypticleError> {
        let pt = self.decrypt(blob)?;
        let rest = pt
            .strip_prefix(PICKLE_PREFIX)
            .ok_or(CrypticleError::NoMarker)?;
        let rest = match nonce {
            Some(n) => {
                if rest.len() < NONCE_LEN
                    || !bool::from(subtle::ConstantTimeEq::ct_eq(
                        &rest[..NONCE_LEN],
                        n.as_bytes(),
                    ))
                {
                    return Err(CrypticleError::NonceMismatch);
                }
                &rest[NONCE_LEN..]
            }
            None => rest,
        };
        Ok(codec::decode(rest)?)
    }
}

/// Replay protection for publishes: Salt adds a strictly increasing `serial` to every publish
/// under one AES key, and a receiver drops any serial not above the last one it accepted.
#[derive(Debug, Clone, Default)]
pub struct SerialGuard {
    last: Option<i64>,
}

/// Outcome of [`SerialGuard::check`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SerialCheck {
    /// The load carried no serial (not a publish); accept.
    Absent,
    /// A fresh serial; it has been recorded.
    Fresh(i64),
    /// A serial at or below the last accepted: a replay. Drop the message.
    Replayed {
        /// The serial received.
        got: i64,
        /// The last serial accepted.
        last: i64,
    },
}

impl SerialGuard {
    /// Forget the last serial (after re-authentication with a new AES key).
    pub fn reset(&mut self) {
        self.last = None;
    }

    /// Pop `serial` from a decoded load and check it, as `Crypticle.loads` does.
    pub fn check(&mut self, load: &mut Value) -> SerialCheck {
        let Some(serial) = load.remove("serial").and_then(|s| s.as_i64()) else {
            return SerialCheck::Absent;
        };
        match self.last {
            Some(last) if serial <= last => SerialCheck::Replayed { got: serial, last },
            _ => {
                self.last = Some(serial);
                SerialCheck::Fresh(serial)
            }
        }
    }
}

/// The master's publish serial counter: starts at 1 for each AES key (`SMaster.get_serial`).
#[derive(Debug, Clone, Default)]
pub struct SerialCounter {
    next: i64,
}

impl SerialCounter {
    /// The next serial to stamp on a publish.
    pub fn next_serial(&mut self) -> i64 {
        self.next += 1;
        self.next
    }

    /// Reset on AES rotation.
    pub fn reset(&mut self) {
        self.next = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypt::CountingEntropy;

    #[test]
    fn round_trip_and_tamper() {
        let mut rng = CountingEntropy::default();
        let k = Crypticle::generate(&mut rng);
        let v = Value::map().with("a", 1i64);
        let blob = k.dumps(&v, Some("0123456789abcdef0123456789abcdef"), &mut rng);
        assert_eq!(
            k.loads(&blob, Some("0123456789abcdef0123456789abcdef"))
                .unwrap(),
            v
        );
        assert_eq!(
            k.loads(&blob, Some("ffffffffffffffffffffffffffffffff")),
            Err(CrypticleError::NonceMismatch)
        );
        let mut bad = blob.clone();
        bad[20] ^= 1;
        assert_eq!(k.loads(&bad, None), Err(CrypticleError::BadMac));
        let other = Crypticle::generate(&mut rng);
        assert_eq!(other.decrypt(&blob), Err(CrypticleError::BadMac));
        assert_eq!(k.decrypt(&blob[..40]), Err(CrypticleError::TooShort(40)));
    }

    #[test]
    fn key_string_round_trip_and_debug_redacts() {
        let mut rng = CountingEntropy::default();
        let k = Crypticle::generate(&mut rng);
        let s = k.key_string();
        assert_eq!(s.len(), 76);
        assert_eq!(Crypticle::from_key_string(s.as_bytes()).unwrap(), k);
        assert_eq!(format!("{k:?}"), "Crypticle(<redacted>)");
        assert!(Crypticle::from_key_string(b"short").is_err());
    }

    #[test]
    fn serials_reject_replays() {
        let mut g = SerialGuard::default();
        let load = |s: i64| Value::map().with("fun", "x").with("serial", s);
        assert_eq!(g.check(&mut load(1)), SerialCheck::Fresh(1));
        assert_eq!(g.check(&mut load(3)), SerialCheck::Fresh(3));
        assert_eq!(
            g.check(&mut load(3)),
            SerialCheck::Replayed { got: 3, last: 3 }
        );
        assert_eq!(
            g.check(&mut load(2)),
            SerialCheck::Replayed { got: 2, last: 3 }
        );
        let mut l = load(4);
        g.check(&mut l);
        assert!(l.get("serial").is_none(), "serial is popped like Salt does");
        g.reset();
        assert_eq!(g.check(&mut load(1)), SerialCheck::Fresh(1));
    }
}
