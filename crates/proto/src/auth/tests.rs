//! Both sides of `_auth` wired together in memory, with a fake clock.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::*;
use crate::codec;
use crate::crypt::{CountingEntropy, Crypticle, PrivateKey, SigAlgo};
use crate::envelope::Request;
use crate::loads::AuthRequest;
use crate::value::Value;

fn keys() -> &'static (PrivateKey, PrivateKey, PrivateKey) {
    static K: OnceLock<(PrivateKey, PrivateKey, PrivateKey)> = OnceLock::new();
    K.get_or_init(|| {
        (
            PrivateKey::generate(2048).unwrap(),
            PrivateKey::generate(2048).unwrap(),
            PrivateKey::generate(2048).unwrap(),
        )
    })
}

/// The fake clock's origin; after this it only moves when a test moves it.
#[allow(clippy::disallowed_methods)]
fn origin() -> Instant {
    Instant::now()
}

struct Pair {
    minion: MinionAuth,
    master: MasterIdentity,
    state: KeyState,
    policy: AuthPolicy,
    aes: Crypticle,
    session: Crypticle,
    rng: CountingEntropy,
    now: Instant,
}

impl Pair {
    fn new(cached_master: Option<crate::crypt::PublicKey>) -> Self {
        let (master_key, minion_key, _) = keys();
        let mut rng = CountingEntropy::default();
        let me = MinionIdentity::new("m1", minion_key.clone()).unwrap();
        let minion = MinionAuth::new(me, MinionAuthConfig::default(), cached_master, &mut rng);
        Self {
            minion,
            master: MasterIdentity::new(master_key.clone(), 4505),
            state: KeyState::Unknown,
            policy: AuthPolicy {
                auto_sign: true,
                ..AuthPolicy::default()
            },
            aes: Crypticle::generate(&mut rng),
            session: Crypticle::generate(&mut rng),
            rng,
            now: origin(),
        }
    }

    /// Deliver the minion's pending request to the master and the reply back; returns the
    /// master's decision.
    fn exchange(&mut self) -> AuthDecision {
        let frame = self.minion.poll_transmit().expect("a request to send");
        let Request::Clear { load, .. } = Request::decode(&frame).unwrap() else {
            panic!("auth is clear")
        };
        let req = AuthRequest::from_value(&load).unwrap();
        let d = decide_auth(
            &req,
            &self.state,
            self.policy,
            &self.master,
            &self.aes,
            &self.session,
            &mut self.rng,
        )
        .unwrap();
        for a in &d.actions {
            match a {
                KeyAction::WriteAccepted(k) => self.state = KeyState::Accepted(k.clone()),
                KeyAction::WritePending(k) => self.state = KeyState::Pending(k.clone()),
                KeyAction::WriteRejected(_) | KeyAction::MovePendingToRejected => {
                    self.state = KeyState::Rejected;
                }
                KeyAction::WriteDenied(_) | KeyAction::RemovePending => {}
            }
        }
        self.minion
            .handle_reply(&codec::encode_wire(&d.reply), self.now);
        d
    }
}

#[test]
fn auto_accept_gives_both_keys() {
    let mut p = Pair::new(None);
    p.minion.start(p.now, &mut p.rng).unwrap();
    let d = p.exchange();
    assert_eq!(d.verdict, Verdict::Accept);
    assert!(matches!(d.actions[..], [KeyAction::WriteAccepted(_)]));
    assert_eq!(
        d.event.unwrap().get("act").unwrap().as_str(),
        Some("accept")
    );
    match p.minion.poll_event() {
        Some(AuthEvent::Accepted(c)) => {
            assert_eq!(c.aes, p.aes);
            assert_eq!(c.session, p.session);
            assert!(c.master_key_new);
            assert_eq!(c.publish_port, Some(4505));
        }
        other => panic!("expected Accepted, got {other:?}"),
    }
    assert!(p.minion.poll_timeout().is_none());
}

#[test]
fn pending_then_manual_accept_with_token() {
    let master_pub = keys().0.public_key();
    let mut p = Pair::new(Some(master_pub));
    p.policy.auto_sign = false;
    p.minion.start(p.now, &mut p.rng).unwrap();
    assert_eq!(p.exchange().verdict, Verdict::Pend);
    assert!(matches!(p.minion.poll_event(), Some(AuthEvent::Pending)));
    assert!(matches!(p.state, KeyState::Pending(_)));
    // Nothing is sent before acceptance_wait_time has passed.
    let retry_at = p.minion.poll_timeout().unwrap();
    assert_eq!(retry_at - p.now, Duration::from_secs(10));
    p.minion
        .handle_timeout(p.now + Duration::from_secs(1), &mut p.rng)
        .unwrap();
    assert!(p.minion.poll_transmit().is_none());
    // Still pending on the retry; then the operator accepts (salt-key -a).
    p.now = retry_at;
    p.minion.handle_timeout(p.now, &mut p.rng).unwrap();
    assert_eq!(p.exchange().verdict, Verdict::Pend);
    assert!(matches!(p.minion.poll_event(), Some(AuthEvent::Pending)));
    let KeyState::Pending(k) = p.state.clone() else {
        panic!()
    };
    p.state = KeyState::Accepted(k);
    p.now = p.minion.poll_timeout().unwrap();
    p.minion.handle_timeout(p.now, &mut p.rng).unwrap();
    assert_eq!(p.exchange().verdict, Verdict::Accept);
    match p.minion.poll_event() {
        Some(AuthEvent::Accepted(c)) => assert!(!c.master_key_new),
        other => panic!("expected Accepted, got {other:?}"),
    }
}

#[test]
fn rejected_and_denied_keys() {
    let mut p = Pair::new(None);
    p.state = KeyState::Rejected;
    p.minion.start(p.now, &mut p.rng).unwrap();
    assert_eq!(p.exchange().verdict, Verdict::Reject);
    assert!(matches!(p.minion.poll_event(), Some(AuthEvent::Rejected)));

    // Another key is already accepted under this id: deny, keep a copy in minions_denied.
    let mut p = Pair::new(None);
    p.state = KeyState::Accepted(keys().2.public_key().to_clean_pem());
    p.minion.start(p.now, &mut p.rng).unwrap();
    let d = p.exchange();
    assert_eq!(d.verdict, Verdict::Deny);
    assert!(matches!(d.actions[..], [KeyAction::WriteDenied(_)]));
    assert!(matches!(p.minion.poll_event(), Some(AuthEvent::Rejected)));
}

#[test]
fn changed_master_key_is_refused() {
    // The minion cached a different master key (say, from before a re-install).
    let mut p = Pair::new(Some(keys().2.public_key()));
    p.minion.start(p.now, &mut p.rng).unwrap();
    let frame = p.minion.poll_transmit().unwrap();
    let Request::Clear { load, .. } = Request::decode(&frame).unwrap() else {
        panic!()
    };
    let req = AuthRequest::from_value(&load).unwrap();
    // The token was encrypted to the cached key, which this master cannot decrypt: it answers
    // without a token (as Salt does), and the minion refuses the new, unsigned key.
    let d = decide_auth(
        &req, &p.state, p.policy, &p.master, &p.aes, &p.session, &mut p.rng,
    )
    .unwrap();
    let inner = codec::decode(d.reply.get("load").unwrap().as_bytes().unwrap()).unwrap();
    assert!(inner.get("token").is_none());
    p.minion.handle_reply(&codec::encode_wire(&d.reply), p.now);
    assert!(matches!(
        p.minion.poll_event(),
        Some(AuthEvent::MasterKeyChanged)
    ));
}

#[test]
fn timeout_resends_the_same_request_then_a_new_one() {
    let mut p = Pair::new(None);
    p.minion.start(p.now, &mut p.rng).unwrap();
    let first = p.minion.poll_transmit().unwrap();
    let mut t = p.minion.poll_timeout().unwrap();
    assert_eq!(t - p.now, Duration::from_secs(5));
    // Salt's sign_in: the very same frame, auth_tries (7) times, auth_timeout apart.
    for _ in 1..7 {
        p.minion.handle_timeout(t, &mut p.rng).unwrap();
        assert!(matches!(p.minion.poll_event(), Some(AuthEvent::TimedOut)));
        assert_eq!(p.minion.poll_transmit().unwrap(), first, "resent as is");
        let next = p.minion.poll_timeout().unwrap();
        assert_eq!(next - t, Duration::from_secs(5));
        t = next;
    }
    // Then nothing for acceptance_wait_time, then a new request.
    p.minion.handle_timeout(t, &mut p.rng).unwrap();
    assert!(matches!(p.minion.poll_event(), Some(AuthEvent::TimedOut)));
    assert!(p.minion.poll_transmit().is_none());
    let retry = p.minion.poll_timeout().unwrap();
    assert_eq!(retry - t, Duration::from_secs(10));
    p.minion.handle_timeout(retry, &mut p.rng).unwrap();
    let second = p.minion.poll_transmit().unwrap();
    assert_ne!(first, second, "a fresh nonce per attempt");
    // A stale reply for the first attempt's nonce is refused.
    let Request::Clear { load, .. } = Request::decode(&first).unwrap() else {
        panic!()
    };
    let req = AuthRequest::from_value(&load).unwrap();
    let d = decide_auth(
        &req, &p.state, p.policy, &p.master, &p.aes, &p.session, &mut p.rng,
    )
    .unwrap();
    p.minion.handle_reply(&codec::encode_wire(&d.reply), retry);
    assert!(matches!(
        p.minion.poll_event(),
        Some(AuthEvent::Invalid(AuthError::NonceMismatch))
    ));
}

#[test]
fn hostile_ids_are_refused_without_touching_keys() {
    for id in ["../../etc/x", "a/b", "", "..", "bad\0id", "x\\y"] {
        assert!(!valid_minion_id(id), "{id:?}");
    }
    assert!(valid_minion_id("web-01.example.com"));
    let (master_key, minion_key, _) = keys();
    let mut rng = CountingEntropy::default();
    let req = AuthRequest {
        id: "../../etc/x".into(),
        nonce: "n".into(),
        enc_algo: "OAEP-SHA1".into(),
        sig_algo: "PKCS1v15-SHA1".into(),
        autosign_grains: None,
        token: None,
        pub_key: minion_key.public_key().to_clean_pem(),
    };
    let aes = Crypticle::generate(&mut rng);
    let d = decide_auth(
        &req,
        &KeyState::Unknown,
        AuthPolicy {
            auto_sign: true,
            ..AuthPolicy::default()
        },
        &MasterIdentity::new(master_key.clone(), 4505),
        &aes,
        &aes,
        &mut rng,
    )
    .unwrap();
    assert_eq!(d.verdict, Verdict::InvalidId);
    assert!(d.actions.is_empty());
}

#[test]
fn request_channel_round_trip_and_forgeries() {
    let (_, minion_key, other) = keys();
    let mut rng = CountingEntropy::default();
    let session = Crypticle::generate(&mut rng);
    let me = MinionIdentity::new("m1", minion_key.clone()).unwrap();
    let chan = MinionSession::new(me, session.clone(), Default::default(), Default::default());
    let load = Value::map().with("cmd", "_return").with("id", "m1");
    let sealed = chan.seal(load, 1_795_744_611, &mut rng);
    let req = Request::decode(&sealed.frame).unwrap();
    let opened = open_request(&req, &session, &minion_key.public_key()).unwrap();
    assert_eq!(opened.cmd, "_return");
    assert_eq!(opened.sealed.nonce, sealed.nonce);
    let reply = seal_reply(&Value::Nil, &opened.sealed.nonce, &session, &mut rng);
    assert_eq!(
        chan.open_reply(&codec::encode_wire(&reply), &sealed.nonce)
            .unwrap(),
        Value::Nil
    );
    // A tok from another key, a wrong session key, a "bad load" answer.
    assert!(matches!(
        open_request(&req, &session, &other.public_key()),
        Err(AuthError::BadToken)
    ));
    let wrong = Crypticle::generate(&mut rng);
    assert!(matches!(
        open_request(&req, &wrong, &minion_key.public_key()),
        Err(AuthError::Crypticle(CrypticleError::BadMac))
    ));
    assert!(matches!(
        chan.open_reply(&codec::encode_wire(&Value::str("bad load")), &sealed.nonce),
        Err(AuthError::Crypticle(CrypticleError::BadMac))
    ));
}

#[test]
fn a_different_master_key_is_accepted_when_signed_by_master_sign() {
    let (master_key, minion_key, sign_key) = keys();
    // The minion cached some other master's key (it was on master A; this is master B).
    let other = PrivateKey::generate(2048).unwrap().public_key();
    let mut rng = CountingEntropy::default();
    let me = MinionIdentity::new("m1", minion_key.clone()).unwrap();
    let cfg = MinionAuthConfig {
        master_sign_pub: Some(sign_key.public_key()),
        ..MinionAuthConfig::default()
    };
    let run = |identity: MasterIdentity, rng: &mut CountingEntropy| {
        let mut auth = MinionAuth::new(me.clone(), cfg.clone(), Some(other.clone()), rng);
        let now = origin();
        auth.start(now, rng).unwrap();
        let frame = auth.poll_transmit().unwrap();
        let Request::Clear { load, .. } = Request::decode(&frame).unwrap() else {
            panic!()
        };
        let req = AuthRequest::from_value(&load).unwrap();
        let aes = Crypticle::generate(rng);
        let d = decide_auth(
            &req,
            &KeyState::Unknown,
            AuthPolicy {
                auto_sign: true,
                ..AuthPolicy::default()
            },
            &identity,
            &aes,
            &aes,
            rng,
        )
        .unwrap();
        auth.handle_reply(&codec::encode_wire(&d.reply), now);
        auth.poll_event()
    };
    // Signed by master_sign.pem: accepted, and the new key is to be cached.
    let signed = MasterIdentity::new(master_key.clone(), 4505)
        .with_signing_key(sign_key, SigAlgo::Pkcs1v15Sha1)
        .unwrap();
    match run(signed, &mut rng) {
        Some(AuthEvent::Accepted(c)) => assert!(c.master_key_new),
        other => panic!("expected Accepted, got {other:?}"),
    }
    // Unsigned, or signed by another key: refused.
    assert!(matches!(
        run(MasterIdentity::new(master_key.clone(), 4505), &mut rng),
        Some(AuthEvent::MasterKeyChanged)
    ));
    let forged = MasterIdentity::new(master_key.clone(), 4505)
        .with_signing_key(minion_key, SigAlgo::Pkcs1v15Sha1)
        .unwrap();
    assert!(matches!(
        run(forged, &mut rng),
        Some(AuthEvent::MasterKeyChanged)
    ));
}

#[test]
fn minions_sharing_a_known_master_get_each_master_s_current_aes_key() {
    let (master_key, minion_key, other_key) = keys();
    let memo = KnownMaster::default();
    let mut rng = CountingEntropy::default();
    // One accepted handshake of minion `id` with `identity` serving `aes`; the minion's key.
    let mut auth_with = |id: &str, identity: &MasterIdentity, aes: &Crypticle| -> Crypticle {
        let me = MinionIdentity::new(id, minion_key.clone()).unwrap();
        let cfg = MinionAuthConfig {
            known_master: Some(memo.clone()),
            ..MinionAuthConfig::default()
        };
        let mut auth = MinionAuth::new(me, cfg, None, &mut rng);
        auth.start(origin(), &mut rng).unwrap();
        let frame = auth.poll_transmit().unwrap();
        let Request::Clear { load, .. } = Request::decode(&frame).unwrap() else {
            panic!()
        };
        let req = AuthRequest::from_value(&load).unwrap();
        let policy = AuthPolicy {
            auto_sign: true,
            ..AuthPolicy::default()
        };
        let session = Crypticle::generate(&mut rng);
        let d = decide_auth(
            &req,
            &KeyState::Unknown,
            policy,
            identity,
            aes,
            &session,
            &mut rng,
        )
        .unwrap();
        auth.handle_reply(&codec::encode_wire(&d.reply), origin());
        match auth.poll_event() {
            Some(AuthEvent::Accepted(c)) => {
                assert_eq!(c.session.key_string(), session.key_string());
                c.aes
            }
            other => panic!("expected Accepted, got {other:?}"),
        }
    };
    let master = MasterIdentity::new(master_key.clone(), 4505);
    let first = Crypticle::generate(&mut CountingEntropy::default());
    // The second minion takes the key from the memo (same master key, same `sig`).
    for id in ["m1", "m2"] {
        assert_eq!(
            auth_with(id, &master, &first).key_string(),
            first.key_string()
        );
    }
    // The master rotated: a new `sig`, so the new key is decrypted, not the memo's.
    let mut r = CountingEntropy::default();
    let _ = Crypticle::generate(&mut r);
    let rotated = Crypticle::generate(&mut r);
    assert_ne!(rotated.key_string(), first.key_string());
    assert_eq!(
        auth_with("m3", &master, &rotated).key_string(),
        rotated.key_string()
    );
    // Another master (another key) with the first AES key string: its own reply decides.
    let other = MasterIdentity::new(other_key.clone(), 4505);
    assert_eq!(
        auth_with("m4", &other, &first).key_string(),
        first.key_string()
    );
    assert_eq!(
        auth_with("m5", &master, &rotated).key_string(),
        rotated.key_string()
    );
}
