//! The Crypticle opener (AES-CBC + HMAC-SHA256, pickle framing, reply nonces) on any blob: what
//! a peer holding no key, or a minion with its own session key, can send.
#![no_main]

use brine_proto::crypt::{CountingEntropy, Crypticle};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // A fixed key (the blob would need the right MAC to get past it, so also fuzz the framing
    // behind a valid MAC: encrypt the input, then open it).
    let key = Crypticle::generate(&mut CountingEntropy::default());
    let _ = key.loads(data, None);
    let _ = key.loads(data, Some("0123456789abcdef0123456789abcdef"));
    let _ = key.decrypt(data);
    let sealed = key.encrypt_with_iv(data, &[7u8; 16]);
    let _ = key.loads(&sealed, None);
    let _ = key.loads(&sealed, Some("nonce"));
    let _ = Crypticle::from_key_string(data);
});
