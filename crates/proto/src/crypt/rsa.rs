//! RSA as Salt uses it (`salt/crypt.py`, `salt/utils/rsax931.py`), on OpenSSL.
//!
//! | Salt | here |
//! |---|---|
//! | `PublicKey.encrypt` / `PrivateKey.decrypt` | [`PublicKey::encrypt_oaep`] / [`PrivateKey::decrypt_oaep`] (OAEP, SHA-1 or SHA-224, empty label) |
//! | `PrivateKey.sign` / `PublicKey.verify` | [`PrivateKey::sign`] / [`PublicKey::verify`] (PKCS#1 v1.5, SHA-1 or SHA-224) |
//! | `PrivateKey.encrypt` / `PublicKey.decrypt` | [`PrivateKey::sign_x931`] / [`PublicKey::recover_x931`] (`RSA_X931_PADDING`, no hash) |
//!
//! OAEP encryption takes its seed from the caller ([`Entropy`]), so it is deterministic and the
//! captured ciphertexts can be reproduced. Private-key operations use OpenSSL's RSA blinding.

use std::fmt;

use openssl::hash::MessageDigest;
use openssl::pkey::{PKey, Private, Public};
use openssl::rsa::{Padding, Rsa};
use openssl::sign::{Signer, Verifier};
use zeroize::Zeroizing;

use crate::crypt::Entropy;

/// `RSA_X931_PADDING` in OpenSSL.
fn x931_padding() -> Padding {
    Padding::from_raw(5)
}

/// Why an RSA operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RsaError {
    /// A PEM file or text could not be parsed as an RSA key.
    #[error("invalid RSA key: {0}")]
    BadKey(String),
    /// Decryption failed (wrong key or corrupted ciphertext).
    #[error("RSA decryption failed")]
    Decrypt,
    /// The message is too long for the key and padding.
    #[error("message of {len} bytes too long for a {bits}-bit key")]
    TooLong {
        /// Message length.
        len: usize,
        /// Key size.
        bits: u32,
    },
    /// An X9.31 signature did not recover.
    #[error("X9.31 signature does not verify")]
    X931,
    /// OpenSSL reported an error.
    #[error("openssl: {0}")]
    Openssl(String),
}

impl From<openssl::error::ErrorStack> for RsaError {
    fn from(e: openssl::error::ErrorStack) -> Self {
        Self::Openssl(e.to_string())
    }
}

/// `encryption_algorithm`: the OAEP hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EncAlgo {
    /// `OAEP-SHA1`, Salt's default.
    #[default]
    OaepSha1,
    /// `OAEP-SHA224`.
    OaepSha224,
}

impl EncAlgo {
    /// Parse Salt's option value.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "OAEP-SHA1" => Some(Self::OaepSha1),
            "OAEP-SHA224" => Some(Self::OaepSha224),
            _ => None,
        }
    }

    /// Salt's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::OaepSha1 => "OAEP-SHA1",
            Self::OaepSha224 => "OAEP-SHA224",
        }
    }

    fn digest(self) -> MessageDigest {
        match self {
            Self::OaepSha1 => MessageDigest::sha1(),
            Self::OaepSha224 => MessageDigest::sha224(),
        }
    }
}

/// `signing_algorithm`: the PKCS#1 v1.5 hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SigAlgo {
    /// `PKCS1v15-SHA1`, Salt's default.
    #[default]
    Pkcs1v15Sha1,
    /// `PKCS1v15-SHA224`.
    Pkcs1v15Sha224,
}

impl SigAlgo {
    /// Parse Salt's option value.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "PKCS1v15-SHA1" => Some(Self::Pkcs1v15Sha1),
            "PKCS1v15-SHA224" => Some(Self::Pkcs1v15Sha224),
            _ => None,
        }
    }

    /// Salt's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pkcs1v15Sha1 => "PKCS1v15-SHA1",
            Self::Pkcs1v15Sha224 => "PKCS1v15-SHA224",
        }
    }

    fn digest(self) -> MessageDigest {
        match self {
            Self::Pkcs1v15Sha1 => MessageDigest::sha1(),
            Self::Pkcs1v15Sha224 => MessageDigest::sha224(),
        }
    }
}

/// Salt's `clean_key`: strip, then rejoin the lines with `\n` (no trailing newline).
pub fn clean_key(pem: &str) -> String {
    pem.trim().lines().collect::<Vec<_>>().join("\n")
}

/// An RSA private key. OpenSSL clears the key's numbers when it is dropped.
#[derive(Clone)]
pub struct PrivateKey {
    rsa: Rsa<Private>,
    pkey: PKey<Private>,
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PrivateKey({} bits, <redacted>)", self.bits())
    }
}

impl PrivateKey {
    /// Generate a key of `bits` (Salt uses 2048; 4096 is common) with e = 65537.
    ///
    /// This is the one place in brine-proto where randomness does not come from the caller:
    /// prime generation uses OpenSSL's CSPRNG, which is the vetted choice for it.
    ///
    /// # Errors
    /// [`RsaError::Openssl`] if OpenSSL fails.
    pub fn generate(bits: u32) -> Result<Self, RsaError> {
        Self::from_rsa(Rsa::generate(bits)?)
    }

    /// Load a PEM private key: PKCS#1 (`BEGIN RSA PRIVATE KEY`, Salt's format) or PKCS#8.
    ///
    /// # Errors
    /// [`RsaError::BadKey`] if it is not an unencrypted RSA private key.
    pub fn from_pem(pem: &[u8]) -> Result<Self, RsaError> {
        let rsa = Rsa::private_key_from_pem(pem).map_err(|e| RsaError::BadKey(e.to_string()))?;
        rsa.check_key()
            .map_err(|e| RsaError::BadKey(e.to_string()))?;
        Self::from_rsa(rsa)
    }

    /// Like [`PrivateKey::from_pem`] without OpenSSL's consistency check (primality tests on
    /// `p` and `q`, ~30 ms for RSA-2048), for keys this program generated and cached itself
    /// (thousands of simulated minions).
    ///
    /// # Errors
    /// [`RsaError::BadKey`] if the PEM does not parse.
    pub fn from_pem_unchecked(pem: &[u8]) -> Result<Self, RsaError> {
        let rsa = Rsa::private_key_from_pem(pem).map_err(|e| RsaError::BadKey(e.to_string()))?;
        Self::from_rsa(rsa)
    }

    fn from_rsa(rsa: Rsa<Private>) -> Result<Self, RsaError> {
        let pkey = PKey::from_rsa(rsa.clone())?;
        Ok(Self { rsa, pkey })
    }

    /// PEM PKCS#1 ("TraditionalOpenSSL"), as Salt writes `master.pem`/`minion.pem`.
    ///
    /// # Errors
    /// [`RsaError::Openssl`] if OpenSSL fails.
    pub fn to_pem_pkcs1(&self) -> Result<Zeroizing<Vec<u8>>, RsaError> {
        Ok(Zeroizing::new(self.rsa.private_key_to_pem()?))
    }

    /// The public half.
    pub fn public_key(&self) -> PublicKey {
        let n = self.rsa.n().to_owned().expect("invariant: BigNum copy");
        let e = self.rsa.e().to_owned().expect("invariant: BigNum copy");
        PublicKey::from_rsa(Rsa::from_public_components(n, e).expect("invariant: valid n, e"))
    }

    /// Modulus size in bits.
    pub fn bits(&self) -> u32 {
        self.rsa.size() * 8
    }

    /// OAEP decrypt (`PrivateKey.decrypt`).
    ///
    /// # Errors
    /// [`RsaError::Decrypt`] for a wrong key or malformed ciphertext.
    pub fn decrypt_oaep(&self, ct: &[u8], algo: EncAlgo) -> Result<Zeroizing<Vec<u8>>, RsaError> {
        let mut ctx = openssl::pkey_ctx::PkeyCtx::new(&self.pkey)?;
        ctx.decrypt_init()?;
        ctx.set_rsa_padding(Padding::PKCS1_OAEP)?;
        let md = match algo {
            EncAlgo::OaepSha1 => openssl::md::Md::sha1(),
            EncAlgo::OaepSha224 => openssl::md::Md::sha224(),
        };
        ctx.set_rsa_oaep_md(md)?;
        ctx.set_rsa_mgf1_md(md)?;
        let mut out = Zeroizing::new(Vec::new());
        ctx.decrypt_to_vec(ct, &mut out)
            .map_err(|_| RsaError::Decrypt)?;
        Ok(out)
    }

    /// PKCS#1 v1.5 signature (`PrivateKey.sign`).
    ///
    /// # Errors
    /// [`RsaError::Openssl`] if OpenSSL fails.
    pub fn sign(&self, msg: &[u8], algo: SigAlgo) -> Result<Vec<u8>, RsaError> {
        let mut s = Signer::new(algo.digest(), &self.pkey)?;
        s.set_rsa_padding(Padding::PKCS1)?;
        s.update(msg)?;
        Ok(s.sign_to_vec()?)
    }

    /// X9.31 private "encrypt" (`PrivateKey.encrypt`): used for the auth reply `sig` and the
    /// request `tok`. Deterministic.
    ///
    /// # Errors
    /// [`RsaError::TooLong`] if `msg` does not fit the key with X9.31's 2 bytes of framing.
    pub fn sign_x931(&self, msg: &[u8]) -> Result<Vec<u8>, RsaError> {
        let k = self.rsa.size() as usize;
        if msg.len() + 2 > k {
            return Err(RsaError::TooLong {
                len: msg.len(),
                bits: self.bits(),
            });
        }
        let mut out = vec![0u8; k];
        let n = self.rsa.private_encrypt(msg, &mut out, x931_padding())?;
        out.truncate(n);
        Ok(out)
    }

    /// The raw RSA private operation `c^d mod n` (no padding). For recovering OAEP seeds from
    /// captured traffic in tests and tools; never needed by the protocol itself.
    ///
    /// # Errors
    /// [`RsaError::Decrypt`] if `c` is not a valid input.
    pub fn raw_private(&self, c: &[u8]) -> Result<Zeroizing<Vec<u8>>, RsaError> {
        let mut out = Zeroizing::new(vec![0u8; self.rsa.size() as usize]);
        let n = self
            .rsa
            .private_decrypt(c, &mut out, Padding::NONE)
            .map_err(|_| RsaError::Decrypt)?;
        out.truncate(n);
        Ok(out)
    }
}

/// An RSA public key.
#[derive(Clone)]
pub struct PublicKey {
    rsa: Rsa<Public>,
    pkey: PKey<Public>,
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({} bits)", self.rsa.size() * 8)
    }
}

impl PartialEq for PublicKey {
    fn eq(&self, other: &Self) -> bool {
        self.rsa.n() == other.rsa.n() && self.rsa.e() == other.rsa.e()
    }
}

impl Eq for PublicKey {}

impl PublicKey {
    fn from_rsa(rsa: Rsa<Public>) -> Self {
        let pkey = PKey::from_rsa(rsa.clone()).expect("invariant: RSA key wraps into PKey");
        Self { rsa, pkey }
    }

    /// Load a PEM public key: SubjectPublicKeyInfo (`BEGIN PUBLIC KEY`, Salt's format) or PKCS#1
    /// (`BEGIN RSA PUBLIC KEY`).
    ///
    /// # Errors
    /// [`RsaError::BadKey`] if it is neither.
    pub fn from_pem(pem: &[u8]) -> Result<Self, RsaError> {
        let rsa = Rsa::public_key_from_pem(pem)
            .or_else(|_| Rsa::public_key_from_pem_pkcs1(pem))
            .map_err(|e| RsaError::BadKey(e.to_string()))?;
        if rsa.size() < 128 {
            return Err(RsaError::BadKey(format!(
                "{}-bit key is too small",
                rsa.size() * 8
            )));
        }
        Ok(Self::from_rsa(rsa))
    }

    /// SPKI PEM in Salt's `clean_key` form (no trailing newline), as sent in `pub`/`pub_key`.
    pub fn to_clean_pem(&self) -> String {
        let pem = self
            .rsa
            .public_key_to_pem()
            .expect("invariant: public key serialises");
        clean_key(&String::from_utf8_lossy(&pem))
    }

    /// SPKI PEM with a trailing newline, as Salt writes `.pub` files.
    pub fn to_pem_file(&self) -> String {
        let mut s = self.to_clean_pem();
        s.push('\n');
        s
    }

    /// Modulus size in bytes.
    pub fn size(&self) -> usize {
        self.rsa.size() as usize
    }

    /// OAEP encrypt with a seed from `rng` (`PublicKey.encrypt`).
    ///
    /// # Errors
    /// [`RsaError::TooLong`] if `msg` exceeds `k - 2*hLen - 2` bytes.
    pub fn encrypt_oaep(
        &self,
        msg: &[u8],
        algo: EncAlgo,
        rng: &mut dyn Entropy,
    ) -> Result<Vec<u8>, RsaError> {
        let mut seed = Zeroizing::new(vec![0u8; algo.digest().size()]);
        rng.fill(&mut seed);
        self.encrypt_oaep_with_seed(msg, algo, &seed)
    }

    /// OAEP encrypt with the given seed (RFC 8017 §7.1.1). Deterministic.
    ///
    /// # Errors
    /// [`RsaError::TooLong`] if `msg` exceeds `k - 2*hLen - 2` bytes.
    pub fn encrypt_oaep_with_seed(
        &self,
        msg: &[u8],
        algo: EncAlgo,
        seed: &[u8],
    ) -> Result<Vec<u8>, RsaError> {
        let md = algo.digest();
        let hlen = md.size();
        let k = self.size();
        if msg.len() + 2 * hlen + 2 > k || seed.len() != hlen {
            return Err(RsaError::TooLong {
                len: msg.len(),
                bits: (k * 8) as u32,
            });
        }
        let mut db = Zeroizing::new(Vec::with_capacity(k - hlen - 1));
        db.extend_from_slice(&openssl::hash::hash(md, b"")?);
        db.resize(k - msg.len() - hlen - 2, 0);
        db.push(1);
        db.extend_from_slice(msg);
        let db_mask = mgf1(md, seed, k - hlen - 1)?;
        for (b, m) in db.iter_mut().zip(db_mask.iter()) {
            *b ^= m;
        }
        let seed_mask = mgf1(md, &db, hlen)?;
        let mut em = Zeroizing::new(Vec::with_capacity(k));
        em.push(0);
        em.extend(seed.iter().zip(seed_mask.iter()).map(|(s, m)| s ^ m));
        em.extend_from_slice(&db);
        let mut out = vec![0u8; k];
        let n = self.rsa.public_encrypt(&em, &mut out, Padding::NONE)?;
        out.truncate(n);
        Ok(out)
    }

    /// Verify a PKCS#1 v1.5 signature (`PublicKey.verify`).
    pub fn verify(&self, msg: &[u8], sig: &[u8], algo: SigAlgo) -> bool {
        let Ok(mut v) = Verifier::new(algo.digest(), &self.pkey) else {
            return false;
        };
        if v.set_rsa_padding(Padding::PKCS1).is_err() || v.update(msg).is_err() {
            return false;
        }
        v.verify(sig).unwrap_or(false)
    }

    /// Recover the message from an X9.31 signature (`PublicKey.decrypt`).
    ///
    /// # Errors
    /// [`RsaError::X931`] if the signature is not a valid X9.31 block under this key.
    pub fn recover_x931(&self, sig: &[u8]) -> Result<Vec<u8>, RsaError> {
        if sig.len() != self.size() {
            return Err(RsaError::X931);
        }
        let mut out = vec![0u8; self.size()];
        let n = self
            .rsa
            .public_decrypt(sig, &mut out, x931_padding())
            .map_err(|_| RsaError::X931)?;
        out.truncate(n);
        Ok(out)
    }

    /// The modulus, for fingerprints and tests.
    pub fn modulus(&self) -> Vec<u8> {
        self.rsa.n().to_vec()
    }
}

/// MGF1 (RFC 8017 §B.2.1).
fn mgf1(md: MessageDigest, seed: &[u8], len: usize) -> Result<Zeroizing<Vec<u8>>, RsaError> {
    let mut out = Zeroizing::new(Vec::with_capacity(len + md.size()));
    let mut counter: u32 = 0;
    while out.len() < len {
        let mut h = openssl::hash::Hasher::new(md)?;
        h.update(seed)?;
        h.update(&counter.to_be_bytes())?;
        out.extend_from_slice(&h.finish()?);
        counter += 1;
    }
    out.truncate(len);
    Ok(out)
}

/// Undo OAEP masking to find the seed used to build `em` (the raw decrypted block). Only useful
/// for reproducing captured ciphertexts; returns `None` if `em` is not OAEP-shaped.
pub fn oaep_seed_of(em: &[u8], k: usize, algo: EncAlgo) -> Option<Vec<u8>> {
    let md = algo.digest();
    let hlen = md.size();
    let mut block = vec![0u8; k.checked_sub(em.len())?];
    block.extend_from_slice(em);
    if block.len() < 2 * hlen + 2 || block[0] != 0 {
        return None;
    }
    let masked_seed = &block[1..=hlen];
    let masked_db = &block[1 + hlen..];
    let seed_mask = mgf1(md, masked_db, hlen).ok()?;
    Some(
        masked_seed
            .iter()
            .zip(seed_mask.iter())
            .map(|(a, b)| a ^ b)
            .collect(),
    )
}

/// `salt.utils.crypt.pem_finger`: hash of the PEM body lines (each followed by `\n`), as
/// lowercase hex with `:` between bytes.
pub fn pem_finger(pem: &str, digest: MessageDigestName) -> String {
    let mut body = String::new();
    for line in pem.trim().lines() {
        if line.starts_with("-----") {
            continue;
        }
        body.push_str(line.trim_end());
        body.push('\n');
    }
    let md = match digest {
        MessageDigestName::Sha256 => MessageDigest::sha256(),
        MessageDigestName::Md5 => MessageDigest::md5(),
    };
    let h = openssl::hash::hash(md, body.as_bytes()).expect("invariant: hashing in memory");
    h.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Digests Salt's `hash_type` offers for fingerprints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageDigestName {
    /// `sha256`, the default.
    Sha256,
    /// `md5`, legacy.
    Md5,
}

#[cfg(test)]
mod tests {
    use openssl::bn::BigNum;

    use super::*;
    use crate::crypt::CountingEntropy;

    #[test]
    fn oaep_round_trip_both_hashes_and_seed_recovery() {
        let key = PrivateKey::generate(2048).unwrap();
        let public = key.public_key();
        let mut rng = CountingEntropy::default();
        for algo in [EncAlgo::OaepSha1, EncAlgo::OaepSha224] {
            let ct = public
                .encrypt_oaep(b"secret key string", algo, &mut rng)
                .unwrap();
            assert_eq!(&*key.decrypt_oaep(&ct, algo).unwrap(), b"secret key string");
            let em = key.raw_private(&ct).unwrap();
            let seed = oaep_seed_of(&em, public.size(), algo).unwrap();
            assert_eq!(
                public
                    .encrypt_oaep_with_seed(b"secret key string", algo, &seed)
                    .unwrap(),
                ct
            );
        }
        assert_eq!(BigNum::from_u32(65537).unwrap(), *public.rsa.e());
    }

    #[test]
    fn x931_and_pkcs1_round_trip() {
        let key = PrivateKey::generate(2048).unwrap();
        let public = key.public_key();
        let sig = key.sign_x931(b"salt").unwrap();
        assert_eq!(public.recover_x931(&sig).unwrap(), b"salt");
        let other = PrivateKey::generate(2048).unwrap().public_key();
        assert!(other.recover_x931(&sig).is_err());
        for algo in [SigAlgo::Pkcs1v15Sha1, SigAlgo::Pkcs1v15Sha224] {
            let s = key.sign(b"payload", algo).unwrap();
            assert!(public.verify(b"payload", &s, algo));
            assert!(!public.verify(b"payloaD", &s, algo));
            assert!(!other.verify(b"payload", &s, algo));
        }
    }

    #[test]
    fn pem_round_trips_in_salt_formats() {
        let key = PrivateKey::generate(2048).unwrap();
        let pem = key.to_pem_pkcs1().unwrap();
        assert!(pem.starts_with(b"-----BEGIN RSA PRIVATE KEY-----"));
        let again = PrivateKey::from_pem(&pem).unwrap();
        assert_eq!(again.public_key(), key.public_key());
        let public = key.public_key().to_clean_pem();
        assert!(public.starts_with("-----BEGIN PUBLIC KEY-----"));
        assert!(public.ends_with("-----END PUBLIC KEY-----"));
        assert_eq!(
            PublicKey::from_pem(public.as_bytes()).unwrap(),
            key.public_key()
        );
        assert!(format!("{key:?}").contains("redacted"));
        assert!(PrivateKey::from_pem(b"-----BEGIN RSA PRIVATE KEY-----\nAAAA\n").is_err());
    }

    #[test]
    fn clean_key_normalises_like_salt() {
        assert_eq!(clean_key("  a\r\nb\n\nc\n"), "a\nb\n\nc");
    }
}
