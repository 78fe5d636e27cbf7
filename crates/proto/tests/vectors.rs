//! Reproduce every frame captured from real Salt (3006.30, 3007.17, 3008.5, and a 3007.17
//! syndic's upstream link) byte for byte: decode and re-encode every msgpack layer, decrypt and
//! re-encrypt every Crypticle blob with the recorded IV, verify and re-create every RSA
//! signature, and rebuild whole auth and pillar replies with the master-side code.
//!
//! Data: `tests/support/data/salt-<version>/` (copied from the capture set, with the throwaway
//! keys that decrypt it).

use std::path::{Path, PathBuf};

use brine_proto::auth::{AuthPolicy, KeyState, MasterIdentity, Verdict, decide_auth, pillar_reply};
use brine_proto::codec::{self, Mode};
use brine_proto::crypt::rsa::oaep_seed_of;
use brine_proto::crypt::{
    Crypticle, EncAlgo, FixedEntropy, PrivateKey, PublicKey, SigAlgo, sha256_hex,
};
use brine_proto::envelope::{Publish, Request, seal_fields, unseal_fields};
use brine_proto::loads::{
    AuthRequest, CliPublish, JobLoad, MinionEvent, PillarRequest, ReturnLoad, SyndicReturn,
};
use brine_proto::value::Value;
use serde_json::Value as Json;

fn data_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/support/data")
        .join(name)
}

struct Vectors {
    name: &'static str,
    messages: Vec<Json>,
    secrets: Json,
    master: PrivateKey,
    minion: PrivateKey,
    publish_port: u16,
}

impl Vectors {
    fn load(name: &'static str) -> Self {
        let dir = data_dir(name);
        let read = |p: &str| {
            std::fs::read(dir.join(p)).unwrap_or_else(|e| panic!("{}: {e}", dir.join(p).display()))
        };
        let master_cfg = String::from_utf8(
            std::fs::read(dir.join("config/master"))
                .or_else(|_| std::fs::read(dir.join("config/mom_master")))
                .unwrap(),
        )
        .unwrap();
        let publish_port = master_cfg
            .lines()
            .find_map(|l| l.strip_prefix("publish_port:"))
            .map(|p| p.trim().parse().unwrap())
            .expect("publish_port in master config");
        Self {
            name,
            messages: serde_json::from_slice(&read("messages.json")).unwrap(),
            secrets: serde_json::from_slice(&read("secrets.json")).unwrap(),
            master: PrivateKey::from_pem(&read("keys/master.pem")).unwrap(),
            minion: PrivateKey::from_pem(&read("keys/minion.pem")).unwrap(),
            publish_port,
        }
    }

    fn secret(&self, key_ref: &str) -> Crypticle {
        let (kind, idx) = key_ref.trim_end_matches(']').split_once('[').unwrap();
        let s = self.secrets[kind][idx.parse::<usize>().unwrap()]
            .as_str()
            .unwrap();
        Crypticle::from_key_string(s.as_bytes()).unwrap()
    }

    fn by_seq(&self, seq: u64) -> &Json {
        self.messages
            .iter()
            .find(|m| m["seq"].as_u64() == Some(seq))
            .unwrap()
    }
}

fn hx(j: &Json) -> Vec<u8> {
    hex::decode(j.as_str().expect("hex string")).unwrap()
}

fn payload(m: &Json) -> Vec<u8> {
    let idx = m["payload_frame_index"].as_u64().unwrap() as usize;
    hx(&m["zmq_frames_hex"][idx])
}

/// Everything checked for one message; returns how many checks passed.
fn check_message(v: &Vectors, m: &Json) -> usize {
    let name = m["name"].as_str().unwrap();
    let ctx = format!("{} seq {} {name}", v.name, m["seq"]);
    let mut checks = 0;
    let frame = payload(m);

    // 1. The outer msgpack layer re-encodes to the same bytes.
    let outer = codec::decode(&frame).unwrap_or_else(|e| panic!("{ctx}: {e}"));
    assert_eq!(
        codec::encode(&outer, Mode::Wire),
        frame,
        "{ctx}: outer repack"
    );
    checks += 1;
    let channel = m["channel"].as_str().unwrap();
    let dir = m["dir"].as_str().unwrap();
    if channel == "req" && dir == "c2s" {
        let req = Request::decode(&frame).unwrap_or_else(|e| panic!("{ctx}: {e}"));
        assert_eq!(req.encode(), frame, "{ctx}: typed request envelope");
        checks += 1;
    }
    if channel == "pub" {
        let p = Publish::decode(&frame).unwrap();
        assert_eq!(p.encode(), frame, "{ctx}: typed publish envelope");
        assert!(p.verify(&v.master.public_key()), "{ctx}: publish signature");
        assert_eq!(
            v.master.sign(&p.load, p.sig_algo.unwrap()).unwrap(),
            p.sig.clone().unwrap(),
            "{ctx}: publish re-signed"
        );
        checks += 3;
    }

    // 2. The Crypticle layer: MAC, decrypt, marker/nonce, re-encrypt with the recorded IV.
    let inner = &m["inner"];
    if inner.get("iv_hex").is_some() {
        let key = match inner["key_ref"].as_str().unwrap() {
            r if r.starts_with("pillar_key") => {
                Crypticle::from_key_string(m["pillar_key_decrypted"].as_str().unwrap().as_bytes())
                    .unwrap()
            }
            r => v.secret(r),
        };
        let iv: [u8; 16] = hx(&inner["iv_hex"]).try_into().unwrap();
        let mut blob = iv.to_vec();
        blob.extend(hx(&inner["ciphertext_hex"]));
        blob.extend(hx(&inner["hmac_sha256_hex"]));
        let located = if let Some(b) = outer.as_bytes() {
            b.to_vec()
        } else {
            outer
                .get("load")
                .or_else(|| outer.get("pillar"))
                .and_then(Value::as_bytes)
                .unwrap()
                .to_vec()
        };
        assert_eq!(located, blob, "{ctx}: blob is where the envelope says");
        let plaintext = hx(&inner["plaintext_hex"]);
        assert_eq!(key.decrypt(&blob).unwrap(), plaintext, "{ctx}: decrypt");
        assert_eq!(
            key.encrypt_with_iv(&plaintext, &iv),
            blob,
            "{ctx}: re-encrypt"
        );
        let nonce = inner.get("nonce").and_then(Json::as_str);
        let value = key
            .loads(&blob, nonce)
            .unwrap_or_else(|e| panic!("{ctx}: {e}"));
        let mp = hx(&inner["msgpack_hex"]);
        assert_eq!(codec::encode_wire(&value), mp, "{ctx}: inner repack");
        assert_eq!(key.dumps_with_iv(&value, nonce, &iv), blob, "{ctx}: dumps");
        checks += 5;
        if let Some(n) = nonce {
            assert!(key.loads(&blob, Some(&"0".repeat(32))).is_err() || n == "0".repeat(32));
            checks += 1;
        }
        checks += check_load(v, m, &ctx, &value);
    }
    if name == "auth_request" {
        checks += check_auth_request(v, m, &ctx, &outer);
    }
    if name == "auth_reply" {
        checks += check_auth_reply(v, m, &ctx, &outer);
    }
    if name == "cli_publish_request" {
        let load = outer.get("load").unwrap();
        let p = CliPublish::from_value(load).unwrap();
        assert!(
            codec::encode_wire(&p.to_value()) == codec::encode_wire(load),
            "{ctx}: typed CLI publish"
        );
        checks += 1;
    }
    checks
}

/// Typed parsing of decrypted loads, and signatures inside them.
fn check_load(v: &Vectors, m: &Json, ctx: &str, value: &Value) -> usize {
    let name = m["name"].as_str().unwrap();
    let mut checks = 0;
    if let Some(fun) = name.strip_prefix("publish_") {
        let job = JobLoad::from_value(value).unwrap();
        assert!(
            codec::encode_wire(&job.to_value()) == codec::encode_wire(value),
            "{ctx}: typed job load, in Salt's key order"
        );
        assert_eq!(Some(fun), job.fun_name());
        checks += 2;
    }
    if name.starts_with("req__") && !name.ends_with("_reply") {
        // tok: X9.31 of b"salt" with the minion key; deterministic, so re-signing matches.
        let tok = value.get("tok").and_then(Value::as_bytes).unwrap();
        let minion_pub = v.minion.public_key();
        assert_eq!(minion_pub.recover_x931(tok).unwrap(), b"salt", "{ctx}: tok");
        assert_eq!(
            v.minion.sign_x931(b"salt").unwrap(),
            tok,
            "{ctx}: tok re-signed"
        );
        checks += 2;
        let mut load = value.clone();
        let sealed = unseal_fields(&mut load);
        assert_eq!(Some(sealed.nonce.as_str()), m["request_nonce"].as_str());
        // Re-sealing the stripped load reproduces the plaintext (insert-or-replace order).
        // `id` goes where the sender had it: in the load already, or added by the channel.
        let mut resealed = load.clone();
        let keys: Vec<&str> = value
            .as_map()
            .unwrap()
            .iter()
            .filter_map(|(k, _)| k.as_str())
            .collect();
        if keys.last() == Some(&"id") {
            resealed.remove("id");
        }
        seal_fields(
            &mut resealed,
            &sealed.nonce,
            sealed.ts.unwrap(),
            tok,
            load.get("id").and_then(Value::as_str).unwrap(),
        );
        let cmd = load.get("cmd").and_then(Value::as_str).unwrap();
        if cmd != "_minion_event" && cmd != "_register_resources" {
            assert!(
                codec::encode_wire(&resealed) == codec::encode_wire(value),
                "{ctx}: seal_fields order"
            );
            checks += 1;
        }
        match cmd {
            "_return" => {
                let r = ReturnLoad::from_value(&load).unwrap();
                let mut typed = r.to_value();
                seal_fields(&mut typed, &sealed.nonce, sealed.ts.unwrap(), tok, &r.id);
                assert!(
                    codec::encode_wire(&typed) == codec::encode_wire(value),
                    "{ctx}: typed return, byte for byte"
                );
                checks += 1;
            }
            "_minion_event" => {
                let e = MinionEvent::from_value(&load).unwrap();
                assert!(!e.events.is_empty());
                let again = MinionEvent::from_value(&e.to_value()).unwrap();
                assert_eq!(again, e, "{ctx}: typed event");
                checks += 1;
            }
            "_pillar" => {
                let p = PillarRequest::from_value(&load).unwrap();
                assert_eq!(p.ver.as_deref(), Some("2"));
                checks += 1;
            }
            "_syndic_return" => {
                let s = SyndicReturn::from_value(&load).unwrap();
                assert_eq!(SyndicReturn::from_value(&s.to_value()).unwrap(), s);
                let rets = s.to_returns();
                assert!(!rets.is_empty() && rets.iter().all(|r| r.id == "m2"));
                checks += 2;
            }
            _ => {}
        }
    }
    if name.ends_with("_pillar_reply") {
        checks += check_pillar_reply(v, m, ctx);
    }
    checks
}

fn check_auth_request(v: &Vectors, m: &Json, ctx: &str, outer: &Value) -> usize {
    let load = outer.get("load").unwrap();
    let req = AuthRequest::from_value(load).unwrap();
    assert!(
        codec::encode_wire(&req.to_value()) == codec::encode_wire(load),
        "{ctx}: typed auth request"
    );
    assert_eq!(
        req.pub_key,
        v.minion.public_key().to_clean_pem(),
        "{ctx}: clean_key pub"
    );
    let mut checks = 2;
    if let Some(tok) = &req.token {
        let plain = v.master.decrypt_oaep(tok, EncAlgo::OaepSha1).unwrap();
        assert_eq!(
            std::str::from_utf8(&plain).unwrap(),
            m["token_decrypted_with_master_key"].as_str().unwrap(),
            "{ctx}: token"
        );
        let seed =
            oaep_seed_of(&v.master.raw_private(tok).unwrap(), 256, EncAlgo::OaepSha1).unwrap();
        assert_eq!(
            v.master
                .public_key()
                .encrypt_oaep_with_seed(&plain, EncAlgo::OaepSha1, &seed)
                .unwrap(),
            *tok,
            "{ctx}: token re-encrypted"
        );
        checks += 2;
    }
    checks
}

/// Rebuild the whole signed auth reply with `decide_auth`, feeding it the OAEP seeds recovered
/// from the capture, and compare bytes.
fn check_auth_reply(v: &Vectors, m: &Json, ctx: &str, outer: &Value) -> usize {
    let signed = outer.get("load").and_then(Value::as_bytes).unwrap();
    let sig = outer.get("sig").and_then(Value::as_bytes).unwrap();
    let master_pub = v.master.public_key();
    assert!(
        master_pub.verify(signed, sig, SigAlgo::Pkcs1v15Sha1),
        "{ctx}: outer sig"
    );
    let inner = codec::decode(signed).unwrap();
    assert_eq!(codec::encode_wire(&inner), signed, "{ctx}: inner repack");
    let derived = &m["derived"];
    let aes = derived["aes_decrypted"].as_str().unwrap();
    let session = derived["session_decrypted"].as_str().unwrap();
    let field = |k: &str| inner.get(k).and_then(Value::as_bytes).unwrap().to_vec();
    let x931 = field("sig");
    assert_eq!(
        master_pub.recover_x931(&x931).unwrap(),
        sha256_hex(aes.as_bytes()).as_bytes(),
        "{ctx}: X9.31 sig"
    );
    // The request this replies to.
    let req_msg = v.by_seq(m["reply_to_seq"].as_u64().unwrap());
    let req_outer = codec::decode(&payload(req_msg)).unwrap();
    let req = AuthRequest::from_value(req_outer.get("load").unwrap()).unwrap();
    let mut seeds = Vec::new();
    for k in ["token", "aes", "session"] {
        if inner.get(k).is_some() {
            let em = v.minion.raw_private(&field(k)).unwrap();
            seeds.extend(oaep_seed_of(&em, 256, EncAlgo::OaepSha1).unwrap());
        }
    }
    let decision = decide_auth(
        &req,
        &KeyState::Accepted(v.minion.public_key().to_clean_pem()),
        AuthPolicy::default(),
        &MasterIdentity::new(v.master.clone(), v.publish_port),
        &Crypticle::from_key_string(aes.as_bytes()).unwrap(),
        &Crypticle::from_key_string(session.as_bytes()).unwrap(),
        &mut FixedEntropy::new(seeds),
    )
    .unwrap();
    assert_eq!(decision.verdict, Verdict::Accept);
    assert_eq!(
        codec::encode_wire(&decision.reply),
        payload(m),
        "{ctx}: auth reply rebuilt byte for byte"
    );
    5
}

/// Rebuild the `_pillar` send_private reply with `pillar_reply`.
fn check_pillar_reply(v: &Vectors, m: &Json, ctx: &str) -> usize {
    let frame = payload(m);
    let outer = codec::decode(&frame).unwrap();
    let key_ct = outer.get("key").and_then(Value::as_bytes).unwrap();
    let tmp = m["pillar_key_decrypted"].as_str().unwrap();
    let mut rng_bytes = base64_decode(tmp);
    let em = v.minion.raw_private(key_ct).unwrap();
    rng_bytes.extend(oaep_seed_of(&em, 256, EncAlgo::OaepSha1).unwrap());
    rng_bytes.extend(hx(&m["inner"]["iv_hex"]));
    let req = v.by_seq(m["reply_to_seq"].as_u64().unwrap());
    let nonce = req["request_nonce"].as_str().unwrap();
    let signed: Json = m["signed_data"]["decoded"]["pillar"].clone();
    assert_eq!(
        signed,
        Json::Object(Default::default()),
        "captured pillars are empty"
    );
    let reply = pillar_reply(
        &Value::map(),
        nonce,
        &v.minion.public_key(),
        &v.master,
        EncAlgo::OaepSha1,
        SigAlgo::Pkcs1v15Sha1,
        &mut FixedEntropy::new(rng_bytes),
    )
    .unwrap();
    assert_eq!(
        codec::encode_wire(&reply),
        frame,
        "{ctx}: pillar reply rebuilt byte for byte"
    );
    1
}

fn base64_decode(s: &str) -> Vec<u8> {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let mut acc = 0u32;
    let mut bits = 0;
    for c in s.bytes().filter(|&c| c != b'=') {
        acc = (acc << 6) | T.iter().position(|&t| t == c).unwrap() as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

fn run(name: &'static str, min_messages: usize) {
    let v = Vectors::load(name);
    assert!(
        v.messages.len() >= min_messages,
        "{name}: {} messages",
        v.messages.len()
    );
    let mut checks = 0;
    for m in &v.messages {
        checks += check_message(&v, m);
    }
    let minion_pub: PublicKey = v.minion.public_key();
    assert_eq!(
        minion_pub.to_pem_file().as_bytes(),
        std::fs::read(data_dir(name).join("keys/minion.pub")).unwrap(),
        "{name}: minion.pub written as Salt writes it"
    );
    eprintln!(
        "{name}: {} messages, {checks} checks passed",
        v.messages.len()
    );
}

#[test]
fn salt_3006_30() {
    run("salt-3006.30", 18);
}

#[test]
fn salt_3007_17() {
    run("salt-3007.17", 53);
}

#[test]
fn salt_3008_5() {
    run("salt-3008.5", 20);
}

#[test]
fn salt_3007_17_syndic_upstream() {
    run("salt-3007.17-syndic", 23);
}
