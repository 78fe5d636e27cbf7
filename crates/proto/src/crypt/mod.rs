//! Salt's cryptography: RSA ([`rsa`]) and the symmetric Crypticle ([`crypticle`]).
//!
//! Randomness always comes from the caller through [`Entropy`], so every operation here is
//! reproducible in tests (RSA key generation is the documented exception).

pub mod crypticle;
pub mod rsa;

pub use crypticle::{Crypticle, CrypticleError, SerialCheck, SerialCounter, SerialGuard};
pub use rsa::{EncAlgo, PrivateKey, PublicKey, RsaError, SigAlgo, clean_key};

/// A source of random bytes, supplied by the caller (the daemons pass the OS CSPRNG).
pub trait Entropy {
    /// Fill `buf` with random bytes.
    fn fill(&mut self, buf: &mut [u8]);
}

/// A predictable byte source for tests and replay tools. **Never use it for real keys.**
#[derive(Debug, Clone, Default)]
pub struct CountingEntropy {
    counter: u64,
}

impl Entropy for CountingEntropy {
    fn fill(&mut self, buf: &mut [u8]) {
        for b in buf {
            self.counter = self
                .counter
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            *b = (self.counter >> 33) as u8;
        }
    }
}

/// Replays fixed bytes in order (for reproducing captured IVs, seeds and nonces); panics if
/// asked for more than it holds.
#[derive(Debug, Clone)]
pub struct FixedEntropy {
    bytes: Vec<u8>,
    pos: usize,
}

impl FixedEntropy {
    /// Bytes to hand out, in order.
    pub fn new(bytes: Vec<u8>) -> Self {
        Self { bytes, pos: 0 }
    }
}

impl Entropy for FixedEntropy {
    fn fill(&mut self, buf: &mut [u8]) {
        let end = self.pos + buf.len();
        assert!(end <= self.bytes.len(), "FixedEntropy exhausted");
        buf.copy_from_slice(&self.bytes[self.pos..end]);
        self.pos = end;
    }
}

/// `uuid4().hex`-shaped nonce from `rng`: 32 lowercase hex chars, with the UUID version and
/// variant bits set as Python's `uuid4` sets them.
pub fn new_nonce(rng: &mut dyn Entropy) -> String {
    let mut b = [0u8; 16];
    rng.fill(&mut b);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    hex_lower(&b)
}

/// Lowercase hex.
pub fn hex_lower(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 15)] as char);
    }
    s
}

/// `hashlib.sha256(data).digest()`.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    openssl::sha::sha256(data)
}

/// `hashlib.sha256(data).hexdigest()`.
pub fn sha256_hex(data: &[u8]) -> String {
    hex_lower(&openssl::sha::sha256(data))
}

/// The digest Salt names `name` in `hash_type` and `hashtype` options (`md5`, `sha1`,
/// `sha224`, `sha256`, `sha384`, `sha512`); `None` for any other name.
pub fn digest_named(name: &str) -> Option<openssl::hash::MessageDigest> {
    use openssl::hash::MessageDigest as M;
    Some(match name {
        "md5" => M::md5(),
        "sha1" => M::sha1(),
        "sha224" => M::sha224(),
        "sha256" => M::sha256(),
        "sha384" => M::sha384(),
        "sha512" => M::sha512(),
        _ => return None,
    })
}

/// `hashlib.sha1(data).hexdigest()`: the `zmq_filtering` topic for a minion id.
pub fn sha1_hex(data: &[u8]) -> String {
    hex_lower(&openssl::sha::sha1(data))
}
