//! The master core serving real salt-minions (3006.30, 3007.17, 3008.5): auth, start events,
//! a published `test.ping` and its return; hostile requests refused while it keeps serving.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use brine_master_core::keys::{KeyDir, KeyStore};
use brine_master_core::publish::JobPublisher;
use brine_master_core::requests::{MasterEvent, Policy, RequestHandler};
use brine_master_core::secrets::{Secrets, load_or_create_master_key};
use brine_proto::Value;
use brine_proto::auth::MasterIdentity;
use brine_proto::codec;
use brine_proto::crypt::Crypticle;
use brine_proto::envelope::Request;
use brine_proto::jid::JidGenerator;
use brine_proto::loads::{AuthRequest, JobLoad, ReturnLoad};
use brine_test_support::sim::Rng;
use brine_test_support::{SaltMinion, SaltPeer, subscribe};
use brine_transport::{Context, Publisher, ReqClient, Router, SocketOptions};
use tokio::sync::mpsc;

fn now_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

async fn serve_real_minion(version: &str) {
    subscribe();
    let peer = SaltPeer::get(version);
    let root = tempfile::tempdir().unwrap();
    let pki = root.path().join("pki");
    let keys = KeyStore::open(&pki).unwrap();
    let key = load_or_create_master_key(&pki).unwrap();
    let secrets = Arc::new(Mutex::new(Secrets::new(&mut Rng)));
    let ctx = Context::new();
    let mut router =
        Router::bind(&ctx, "tcp://127.0.0.1:0", &SocketOptions::master_router()).unwrap();
    let pubsock = Publisher::bind(&ctx, "tcp://127.0.0.1:0", &SocketOptions::master_pub()).unwrap();
    let identity = MasterIdentity::new(key.clone(), pubsock.port());
    let policy = Policy {
        danger_auto_accept: true,
        ..Policy::default()
    };
    let mut handler = RequestHandler::new(
        keys.clone(),
        identity,
        secrets.clone(),
        policy,
        Box::new(Rng),
    );
    let publisher = JobPublisher::new(pubsock, secrets.clone(), key);
    let (ev_tx, mut ev_rx) = mpsc::unbounded_channel::<MasterEvent>();
    let (ret_tx, mut ret_rx) = mpsc::unbounded_channel::<ReturnLoad>();
    let (grains_tx, mut grains_rx) = mpsc::unbounded_channel::<(String, Value)>();
    let ret_port = router.port();
    let server = tokio::spawn(async move {
        while let Ok(req) = router.recv().await {
            let h = handler.handle(&req.payload, "test");
            router.reply(&req, h.reply).await.unwrap();
            for e in h.events {
                let _ = ev_tx.send(e);
            }
            for r in h.returns {
                let _ = ret_tx.send(r);
            }
            if let Some(g) = h.grains {
                let _ = grains_tx.send(g);
            }
        }
    });

    let id = format!("real-{}", version.replace('.', "-"));
    let p2 = peer.clone();
    let (pp, id2) = (publisher.port(), id.clone());
    let minion =
        tokio::task::spawn_blocking(move || SaltMinion::start(&p2, &id2, pp, ret_port, ""))
            .await
            .unwrap();
    let start_tag = format!("salt/minion/{id}/start");
    let started = tokio::time::timeout(Duration::from_secs(90), async {
        while let Some(e) = ev_rx.recv().await {
            if e.tag == start_tag {
                return e;
            }
        }
        panic!("event channel closed");
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "no start event from salt-minion {version}\n{}",
            minion.log_tail(30)
        )
    });
    assert!(
        started
            .data
            .as_str()
            .unwrap()
            .starts_with(&format!("Minion {id} started"))
    );
    assert_eq!(keys.list(KeyDir::Accepted), vec![id.clone()]);
    // The minion's grains arrived with its _pillar request: the master can target on them.
    let (gid, grains) = grains_rx.try_recv().expect("grains from _pillar");
    assert_eq!(gid, id);
    assert_eq!(grains.get("id").and_then(Value::as_str), Some(id.as_str()));
    let cache = std::collections::HashMap::from([(gid, grains.clone())]);
    let os = grains.get("os").and_then(Value::as_str).unwrap().to_owned();
    let expected = brine_master_core::targeting::expected_minions(
        &Value::str(format!("G@os:{os} and {id}")),
        "compound",
        ":",
        &keys.list(KeyDir::Accepted),
        &cache,
        &brine_proto::target::NoNodegroups,
    )
    .unwrap();
    assert_eq!(expected, vec![id.clone()]);

    // Publish test.ping until the minion (a slow joiner) answers.
    let mut jids = JidGenerator::default();
    let ret = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let jid = jids.next_jid(now_micros());
            let job = JobLoad::new("test.ping", vec![], Value::str(&id), "glob", &jid);
            publisher
                .publish(job, Some(std::slice::from_ref(&id)), &mut Rng)
                .await
                .unwrap();
            if let Ok(Some(r)) = tokio::time::timeout(Duration::from_secs(2), ret_rx.recv()).await {
                return r;
            }
        }
    })
    .await
    .expect("the real minion returned test.ping");
    assert_eq!(
        (ret.id.as_str(), &ret.ret, ret.retcode),
        (id.as_str(), &Value::Bool(true), 0)
    );

    // Hostile requests, each refused with a reply; the master keeps serving.
    let mut c = ReqClient::new(
        &ctx,
        &format!("tcp://127.0.0.1:{ret_port}"),
        SocketOptions::default(),
    );
    let t = Duration::from_secs(10);
    let bad = codec::encode_wire(&Value::str("bad load"));
    assert_eq!(
        c.request(b"\xc1garbage".to_vec(), t).await.unwrap(),
        bad,
        "malformed msgpack"
    );
    let forged = Request::Aes {
        id: id.clone(),
        load: Crypticle::generate(&mut Rng).dumps(
            &Value::map().with("cmd", "_return"),
            None,
            &mut Rng,
        ),
        version: 3,
        enc_algo: None,
        sig_algo: None,
    };
    assert_eq!(
        c.request(forged.encode(), t).await.unwrap(),
        bad,
        "bad HMAC"
    );
    let publish = Request::Clear {
        load: Value::map().with("cmd", "publish").with("fun", "cmd.run"),
        version: 3,
    };
    assert_eq!(
        codec::decode(&c.request(publish.encode(), t).await.unwrap()).unwrap(),
        Value::map()
    );
    let hostile = AuthRequest {
        id: "../../etc/x".into(),
        nonce: "0".repeat(32),
        enc_algo: "OAEP-SHA1".into(),
        sig_algo: "PKCS1v15-SHA1".into(),
        autosign_grains: None,
        token: None,
        pub_key: brine_proto::crypt::PrivateKey::generate(2048)
            .unwrap()
            .public_key()
            .to_clean_pem(),
    };
    let reply = c
        .request(
            Request::Clear {
                load: hostile.to_value(),
                version: 3,
            }
            .encode(),
            t,
        )
        .await
        .unwrap();
    let outer = codec::decode(&reply).unwrap();
    let inner = codec::decode(outer.get("load").unwrap().as_bytes().unwrap()).unwrap();
    assert_eq!(
        inner.get("ret"),
        Some(&Value::Bool(false)),
        "hostile id refused"
    );
    let old = Request::Clear {
        load: Value::map().with("cmd", "_auth"),
        version: 2,
    };
    assert_eq!(
        c.request(old.encode(), t).await.unwrap(),
        bad,
        "version below minimum_auth_version"
    );
    // Nothing outside the pki directory, and only the real minion's key in it.
    let top: Vec<String> = std::fs::read_dir(root.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(top, vec!["pki"]);
    assert_eq!(keys.list(KeyDir::Accepted), vec![id.clone()]);
    assert!(keys.list(KeyDir::Pending).is_empty() && keys.list(KeyDir::Denied).is_empty());

    // Still serving the real minion.
    let jid = jids.next_jid(now_micros());
    let job = JobLoad::new(
        "test.echo",
        vec![Value::str("still here")],
        Value::str(&id),
        "glob",
        &jid,
    );
    publisher.publish(job, None, &mut Rng).await.unwrap();
    let r = tokio::time::timeout(Duration::from_secs(30), ret_rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.ret, Value::str("still here"));
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_real_minion_3006() {
    serve_real_minion("3006.30").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_real_minion_3007() {
    serve_real_minion("3007.17").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_real_minion_3008() {
    serve_real_minion("3008.5").await;
}
