//! 6b: a real salt-minion authenticates against a request server built from brine-proto's
//! master-side state machine, and its start event (`_minion_event`) is decrypted.

use std::collections::HashMap;
use std::time::Duration;

use brine_proto::Value;
use brine_proto::auth::{
    AuthPolicy, KeyAction, KeyState, MasterIdentity, Verdict, decide_auth, open_request,
    pillar_reply, seal_reply,
};
use brine_proto::codec;
use brine_proto::crypt::{Crypticle, EncAlgo, PrivateKey, PublicKey, SigAlgo};
use brine_proto::envelope::Request;
use brine_proto::loads::{AuthRequest, MinionEvent};
use brine_test_support::{SaltMinion, SaltPeer, subscribe};
use brine_transport::{Context, Publisher, Router, SocketOptions};

use brine_transport::OsEntropy as Rng;

/// The smallest master that serves a real minion's start-up: `_auth`, `_pillar`,
/// `_minion_event`, `_register_resources`.
struct MiniMaster {
    identity: MasterIdentity,
    aes: Crypticle,
    keys: HashMap<String, String>,
    sessions: HashMap<String, Crypticle>,
    cmds: Vec<String>,
    verdicts: Vec<Verdict>,
}

impl MiniMaster {
    fn handle(&mut self, frame: &[u8]) -> (Vec<u8>, Vec<MinionEvent>) {
        let bad = || codec::encode_wire(&Value::str("bad load"));
        let Ok(req) = Request::decode(frame) else {
            return (bad(), vec![]);
        };
        match &req {
            Request::Clear { load, .. } => {
                let Ok(auth) = AuthRequest::from_value(load) else {
                    return (codec::encode_wire(&Value::map()), vec![]);
                };
                self.cmds.push("_auth".into());
                let state = match self.keys.get(&auth.id) {
                    Some(k) => KeyState::Accepted(k.clone()),
                    None => KeyState::Unknown,
                };
                let session = self
                    .sessions
                    .entry(auth.id.clone())
                    .or_insert_with(|| Crypticle::generate(&mut Rng))
                    .clone();
                let policy = AuthPolicy {
                    auto_sign: true,
                    ..AuthPolicy::default()
                };
                let d = decide_auth(
                    &auth,
                    &state,
                    policy,
                    &self.identity,
                    &self.aes,
                    &session,
                    &mut Rng,
                )
                .expect("auth decision");
                for a in &d.actions {
                    if let KeyAction::WriteAccepted(k) = a {
                        self.keys.insert(auth.id.clone(), k.clone());
                    }
                }
                self.verdicts.push(d.verdict);
                (codec::encode_wire(&d.reply), vec![])
            }
            Request::Aes { id, .. } => {
                let (Some(session), Some(pem)) = (self.sessions.get(id), self.keys.get(id)) else {
                    return (bad(), vec![]);
                };
                let minion_pub = PublicKey::from_pem(pem.as_bytes()).unwrap();
                let Ok(opened) = open_request(&req, session, &minion_pub) else {
                    return (bad(), vec![]);
                };
                self.cmds.push(opened.cmd.clone());
                let nonce = opened.sealed.nonce.clone();
                match opened.cmd.as_str() {
                    "_pillar" => {
                        let reply = pillar_reply(
                            &Value::map(),
                            &nonce,
                            &minion_pub,
                            &self.identity.key,
                            EncAlgo::OaepSha1,
                            SigAlgo::Pkcs1v15Sha1,
                            &mut Rng,
                        )
                        .unwrap();
                        (codec::encode_wire(&reply), vec![])
                    }
                    "_minion_event" => {
                        let ev = MinionEvent::from_value(&opened.load).expect("typed event");
                        (
                            codec::encode_wire(&seal_reply(&Value::Nil, &nonce, session, &mut Rng)),
                            vec![ev],
                        )
                    }
                    "_register_resources" => (
                        codec::encode_wire(&seal_reply(
                            &Value::Bool(true),
                            &nonce,
                            session,
                            &mut Rng,
                        )),
                        vec![],
                    ),
                    _ => (
                        codec::encode_wire(&seal_reply(&Value::map(), &nonce, session, &mut Rng)),
                        vec![],
                    ),
                }
            }
        }
    }
}

async fn run(version: &str) {
    subscribe();
    let peer = SaltPeer::get(version);
    let ctx = Context::new();
    let mut router =
        Router::bind(&ctx, "tcp://127.0.0.1:0", &SocketOptions::master_router()).unwrap();
    let publisher =
        Publisher::bind(&ctx, "tcp://127.0.0.1:0", &SocketOptions::master_pub()).unwrap();
    let mut master = MiniMaster {
        identity: MasterIdentity::new(PrivateKey::generate(2048).unwrap(), publisher.port()),
        aes: Crypticle::generate(&mut Rng),
        keys: HashMap::new(),
        sessions: HashMap::new(),
        cmds: vec![],
        verdicts: vec![],
    };
    let id = format!("salt-m-{}", version.replace('.', "-"));
    let (pport, rport) = (publisher.port(), router.port());
    let pid = id.clone();
    let peer2 = peer.clone();
    let minion =
        tokio::task::spawn_blocking(move || SaltMinion::start(&peer2, &pid, pport, rport, ""))
            .await
            .unwrap();

    let start_tag = format!("salt/minion/{id}/start");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    let mut events: Vec<MinionEvent> = Vec::new();
    while !events
        .iter()
        .any(|e| e.events.iter().any(|(t, _)| t == &start_tag))
    {
        let Ok(req) = tokio::time::timeout_at(deadline, router.recv()).await else {
            panic!(
                "salt-minion {version} sent no start event; requests seen: {:?}\n{}",
                master.cmds,
                minion.log_tail(40)
            );
        };
        let req = req.unwrap();
        let (reply, evs) = master.handle(&req.payload);
        router.reply(&req, reply).await.unwrap();
        events.extend(evs);
    }
    assert_eq!(master.verdicts.first(), Some(&Verdict::Accept));
    assert!(
        master.cmds.contains(&"_pillar".to_string()),
        "{:?}",
        master.cmds
    );
    if version.starts_with("3008") {
        assert!(master.cmds.contains(&"_register_resources".to_string()));
    }
    let (tag, data) = events
        .iter()
        .flat_map(|e| e.events.iter())
        .find(|(t, _)| t == &start_tag)
        .unwrap();
    assert_eq!(tag, &start_tag);
    let text = data
        .as_str()
        .or_else(|| data.get("data").and_then(Value::as_str))
        .unwrap_or_default();
    assert!(
        text.starts_with(&format!("Minion {id} started at ")),
        "start event data: {data:?}"
    );
    let ev = events
        .iter()
        .find(|e| e.events.iter().any(|(t, _)| t == &start_tag))
        .unwrap();
    assert_eq!(ev.id, id);
    drop(publisher);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_minion_authenticates_to_rust_master_3006() {
    run("3006.30").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_minion_authenticates_to_rust_master_3007() {
    run("3007.17").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_minion_authenticates_to_rust_master_3008() {
    run("3008.5").await;
}
