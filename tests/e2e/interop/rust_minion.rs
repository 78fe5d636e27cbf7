//! 6a: a Rust client built from brine-proto's minion-side state machine authenticates to a real
//! salt-master, receives the real `salt` CLI's `test.ping`, and returns `True` to it.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use brine_proto::Value;
use brine_proto::auth::{AuthEvent, MinionAuth, MinionAuthConfig, MinionIdentity, MinionSession};
use brine_proto::crypt::{Entropy, PrivateKey, SerialCheck, SerialGuard};
use brine_proto::envelope::Publish;
use brine_proto::jid::iso_stamp;
use brine_proto::loads::{JobLoad, ReturnLoad};
use brine_proto::target::{self, Facts, NoNodegroups};
use brine_test_support::{SaltMaster, SaltPeer, subscribe};
use brine_transport::{Context, OsEntropy, ReqClient, SocketOptions, Subscriber, tcp_endpoint};

struct Rng;

impl Entropy for Rng {
    fn fill(&mut self, buf: &mut [u8]) {
        OsEntropy::fill_bytes(buf);
    }
}

fn unix_micros() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_micros() as u64
}

async fn run(version: &str) {
    subscribe();
    let peer = SaltPeer::get(version);
    let master = tokio::task::spawn_blocking(move || SaltMaster::start(&peer, "")).await.unwrap();
    let id = format!("brine-m-{}", version.replace('.', "-"));
    let ctx = Context::new();
    let ret = tcp_endpoint("127.0.0.1", master.ret_port);
    let mut req = ReqClient::new(&ctx, &ret, SocketOptions::default());
    let me = MinionIdentity::new(&id, PrivateKey::generate(2048).unwrap()).unwrap();

    // _auth until accepted (auto_accept is on).
    let mut auth = MinionAuth::new(me.clone(), MinionAuthConfig::default(), None, &mut Rng);
    auth.start(Instant::now(), &mut Rng).unwrap();
    let creds = loop {
        if let Some(frame) = auth.poll_transmit() {
            match req.request(frame, Duration::from_secs(10)).await {
                Ok(reply) => auth.handle_reply(&reply, Instant::now()),
                Err(e) => panic!("auth request to salt-master {version} failed: {e}"),
            }
        }
        match auth.poll_event() {
            Some(AuthEvent::Accepted(c)) => break c,
            Some(AuthEvent::Pending) => {
                tokio::time::sleep_until(auth.poll_timeout().unwrap().into()).await;
                auth.handle_timeout(Instant::now(), &mut Rng).unwrap();
            }
            Some(other) => panic!("auth to salt-master {version}: {other:?}\n{}", master.log_tail(20)),
            None => {}
        }
    };
    assert!(master.pki_dir().join("minions").join(&id).exists(), "key accepted on the master");
    let session = MinionSession::new(me, creds.session.clone(), Default::default(), Default::default());

    let publish = tcp_endpoint("127.0.0.1", master.publish_port);
    let mut sub = Subscriber::connect(&ctx, &publish, &[b""], &SocketOptions::default()).unwrap();
    // Let the subscription reach the publisher before the CLI publishes.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let mut cli = master.salt_command(&[&id, "test.ping", "--out", "json", "--static", "-t", "30"]);
    let cli = tokio::task::spawn_blocking(move || cli.output());

    // Answer every job targeted at us until the CLI is done (the CLI may publish more than once,
    // e.g. a second test.ping to the listed minion, and find_job when it waits).
    let master_pub = creds.master_pub.clone();
    let aes = creds.aes.clone();
    let responder_id = id.clone();
    let answered = tokio::spawn(async move {
        let mut serials = SerialGuard::default();
        let grains = Value::map();
        let mut answered = 0usize;
        loop {
            let frames = sub.recv().await.unwrap();
            let p = Publish::decode(frames.last().unwrap()).expect("publish envelope");
            assert!(p.verify(&master_pub), "publish signed by master.pem");
            let mut load = p.open(&aes).expect("decrypt publish with the AES key from _auth");
            assert!(matches!(serials.check(&mut load), SerialCheck::Fresh(_)));
            let job = JobLoad::from_value(&load).unwrap();
            let facts = Facts { id: &responder_id, grains: &grains, pillar: &Value::Nil };
            let delim = job.delimiter.clone().unwrap_or_else(|| ":".into());
            if !target::matches(&job.tgt, job.tgt_type(), &delim, &facts, &NoNodegroups).unwrap() {
                continue;
            }
            let result = match job.fun_name() {
                Some("test.ping") => Value::Bool(true),
                Some("saltutil.find_job") => Value::map(),
                other => panic!("unexpected job {other:?}"),
            };
            let ret = ReturnLoad {
                id: responder_id.clone(),
                success: true,
                ret: result,
                retcode: 0,
                jid: job.jid.clone(),
                fun: job.fun.clone(),
                fun_args: job.arg.clone(),
                user: job.user.clone(),
                out: None,
                stamp: Some(iso_stamp(unix_micros())),
                extra: vec![],
            };
            let sealed = session.seal(ret.to_value(), (unix_micros() / 1_000_000) as i64, &mut Rng);
            let reply = req.request(sealed.frame, Duration::from_secs(10)).await.unwrap();
            assert_eq!(session.open_reply(&reply, &sealed.nonce).unwrap(), Value::Nil);
            answered += 1;
            if answered > 100 {
                return answered;
            }
        }
    });

    let out = cli.await.unwrap().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let json: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "salt {version} CLI printed no JSON ({e}):\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert_eq!(
        json,
        serde_json::json!({ id.clone(): true }),
        "salt CLI output; stderr: {}\nmaster log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        master.log_tail(60)
    );
    assert!(out.status.success(), "salt CLI exit status {:?}", out.status);
    answered.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_minion_answers_real_master_3006() {
    run("3006.30").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_minion_answers_real_master_3007() {
    run("3007.17").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_minion_answers_real_master_3008() {
    run("3008.5").await;
}
