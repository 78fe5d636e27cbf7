//! The transport against itself (libzmq on both ends, as with real Salt peers).

use std::time::Duration;

use brine_transport::{
    Context, Dealer, Heartbeat, Publisher, ReqClient, Router, SocketOptions, Subscriber,
    TransportError,
};

const T: Duration = Duration::from_secs(10);

fn fast() -> SocketOptions {
    let mut o = SocketOptions::default();
    o.reconnect.default = Duration::from_millis(50);
    o.reconnect.max = Duration::from_millis(200);
    o.reconnect.randomize = false;
    o
}

/// Publish until the subscriber has joined (PUB drops messages for subscribers that are not
/// connected yet: the slow-joiner problem every Salt master has too).
async fn publish_until_received(
    p: &Publisher,
    s: &mut Subscriber,
    frames: &[&[u8]],
) -> Vec<Vec<u8>> {
    loop {
        if frames.len() == 1 {
            p.send(frames[0].to_vec()).await.unwrap();
        } else {
            p.send_topic(frames[0], frames[1].to_vec()).await.unwrap();
        }
        if let Ok(m) = tokio::time::timeout(Duration::from_millis(100), s.recv()).await {
            return m.unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pub_sub_with_and_without_topics() {
    let ctx = Context::new();
    let p = Publisher::bind(&ctx, "tcp://127.0.0.1:0", &SocketOptions::master_pub()).unwrap();
    assert_ne!(p.port(), 0);
    let ep = p.endpoint().to_owned();
    let mut all = Subscriber::connect(&ctx, &ep, &[b""], &fast()).unwrap();
    let got = publish_until_received(&p, &mut all, &[b"job"]).await;
    assert_eq!(got, vec![b"job".to_vec()]);

    // zmq_filtering: the minion subscribes to "broadcast" and sha1(id); others are filtered out
    // by the publisher after the ZMTP SUBSCRIBE commands.
    let mine = b"2f9d8e2e2f0f0f5c5c3a1e6d0f8c8b8a7a6a5a4a";
    let mut filtered = Subscriber::connect(&ctx, &ep, &[b"broadcast", mine], &fast()).unwrap();
    let got = publish_until_received(&p, &mut filtered, &[b"broadcast", b"b1"]).await;
    assert_eq!(got, vec![b"broadcast".to_vec(), b"b1".to_vec()]);
    p.send_topic(
        b"0000000000000000000000000000000000000000",
        b"not-mine".to_vec(),
    )
    .await
    .unwrap();
    p.send_topic(mine, b"mine".to_vec()).await.unwrap();
    let got = tokio::time::timeout(T, filtered.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, vec![mine.to_vec(), b"mine".to_vec()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn router_req_dealer_round_trips() {
    let ctx = Context::new();
    let mut r = Router::bind(&ctx, "tcp://127.0.0.1:0", &SocketOptions::master_router()).unwrap();
    let ep = r.endpoint().to_owned();
    let server = tokio::spawn(async move {
        for _ in 0..101 {
            let req = r.recv().await.unwrap();
            let mut reply = b"re:".to_vec();
            reply.extend(&req.payload);
            r.reply(&req, reply).await.unwrap();
        }
        r
    });
    let mut c = ReqClient::new(&ctx, &ep, fast());
    for i in 0..100 {
        let body = format!("q{i}").into_bytes();
        let got = c.request(body.clone(), T).await.unwrap();
        assert_eq!(got, [b"re:".as_slice(), &body].concat());
    }
    let mut d = Dealer::connect(&ctx, &ep, &fast()).unwrap();
    d.send(vec![7u8; 1 << 20]).await.unwrap();
    let got = tokio::time::timeout(T, d.recv()).await.unwrap().unwrap();
    assert_eq!(got.len(), 3 + (1 << 20));
    server.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_to_nothing_does_not_block_and_times_out() {
    let ctx = Context::new();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let ep = format!("tcp://127.0.0.1:{port}");
    let started = std::time::Instant::now();
    let _sub = Subscriber::connect(&ctx, &ep, &[b""], &fast()).unwrap();
    let _dealer = Dealer::connect(&ctx, &ep, &fast()).unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "connect returned at once"
    );
    let mut c = ReqClient::new(&ctx, &ep, fast());
    let err = c
        .request(b"x".to_vec(), Duration::from_millis(300))
        .await
        .unwrap_err();
    assert!(matches!(err, TransportError::Timeout(_)), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_reconnect_after_server_restart() {
    let ctx = Context::new();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let ep = format!("tcp://127.0.0.1:{port}");
    let mut dealer = Dealer::connect(&ctx, &ep, &fast()).unwrap();
    for round in 0..2 {
        let mut r = Router::bind(&ctx, &ep, &SocketOptions::master_router()).unwrap();
        dealer
            .send(format!("hello {round}").into_bytes())
            .await
            .unwrap();
        let req = tokio::time::timeout(T, r.recv())
            .await
            .expect("request after (re)start")
            .unwrap();
        r.reply(&req, b"ok".to_vec()).await.unwrap();
        assert_eq!(
            tokio::time::timeout(T, dealer.recv())
                .await
                .unwrap()
                .unwrap(),
            b"ok"
        );
        drop(r); // the "master" goes away; libzmq reconnects the dealer on its own
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriber_survives_master_heartbeats() {
    // A Salt 3006/3008 master PINGs every 10 s and drops peers that don't PONG within 30 s. Scaled
    // down: PING every 100 ms, drop after 300 ms; the subscriber must stay connected for 2 s.
    let ctx = Context::new();
    let mut o = SocketOptions::master_pub();
    o.heartbeat = Some(Heartbeat {
        interval: Duration::from_millis(100),
        timeout: Duration::from_millis(300),
    });
    let p = Publisher::bind(&ctx, "tcp://127.0.0.1:0", &o).unwrap();
    let mut s = Subscriber::connect(&ctx, p.endpoint(), &[b""], &fast()).unwrap();
    publish_until_received(&p, &mut s, &[b"first"]).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Still the same connection: a message sent once arrives (a dropped peer would miss it while
    // reconnecting, and a reconnect takes >= 50 ms here).
    for i in 0..20 {
        p.send(format!("m{i}").into_bytes()).await.unwrap();
    }
    for i in 0..20 {
        let m = tokio::time::timeout(T, s.recv()).await.unwrap().unwrap();
        assert_eq!(m, vec![format!("m{i}").into_bytes()]);
    }
}

/// `keep_on_timeout`: after a timeout the next request goes out on the same connection (the
/// router sees one peer), carries a request id the router sends back, and the late reply to
/// the abandoned request never reaches the caller.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_req_survives_a_timeout_on_one_connection() {
    let ctx = Context::new();
    let mut r = Router::bind(&ctx, "tcp://127.0.0.1:0", &SocketOptions::master_router()).unwrap();
    let ep = r.endpoint().to_owned();
    let opts = SocketOptions {
        keep_on_timeout: true,
        ..fast()
    };
    let mut c = ReqClient::new(&ctx, &ep, opts);
    let first = tokio::spawn(async move {
        let e = c
            .request(b"slow".to_vec(), Duration::from_millis(300))
            .await
            .unwrap_err();
        assert!(matches!(e, TransportError::Timeout(_)), "{e}");
        c
    });
    let slow = tokio::time::timeout(T, r.recv()).await.unwrap().unwrap();
    assert_eq!(slow.payload, b"slow");
    assert_eq!(slow.route.len(), 1, "REQ_CORRELATE's request id");
    let mut c = first.await.unwrap();
    let second = tokio::spawn(async move { c.request(b"fast".to_vec(), T).await });
    let fast_req = tokio::time::timeout(T, r.recv()).await.unwrap().unwrap();
    assert_eq!(fast_req.payload, b"fast");
    assert_eq!(fast_req.peer, slow.peer, "same connection");
    assert_ne!(fast_req.route, slow.route);
    // The late answer to the first request, then the answer to the second.
    r.reply(&slow, b"late".to_vec()).await.unwrap();
    r.reply(&fast_req, b"re:fast".to_vec()).await.unwrap();
    assert_eq!(second.await.unwrap().unwrap(), b"re:fast");
}

/// eventfd descriptors this process holds.
fn eventfds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|l| l.to_string_lossy().contains("eventfd"))
        .count()
}

/// The `timer_active` field of this process's TCP connections to `port` in `/proc/net/tcp`
/// (2: the keepalive timer runs).
fn tcp_timers_to(port: u16) -> Vec<u8> {
    let want = format!(":{port:04X}");
    std::fs::read_to_string("/proc/net/tcp")
        .unwrap()
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // local, remote, state 01 (established), "tr:when"
            (f[2].ends_with(&want) && f[3] == "01")
                .then(|| f[5].split(':').next().unwrap().parse().unwrap())
        })
        .collect()
}

/// libzmq is built with the Linux features its own build would detect (.cargo/config.toml):
/// `tcp_keepalive` options reach the kernel (Salt's keepalive is how a master or minion notices
/// a peer that vanished), and a socket's mailbox is one eventfd, not a socketpair (two
/// descriptors).
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalive_reaches_the_kernel_and_mailboxes_are_eventfds() {
    let ctx = Context::new();
    let mut r = Router::bind(&ctx, "tcp://127.0.0.1:0", &SocketOptions::master_router()).unwrap();
    let port = r.port();
    let ep = r.endpoint().to_owned();
    let opts = SocketOptions {
        tcp_keepalive: Some((60, 15, 3)),
        ..fast()
    };
    let mut c = ReqClient::new(&ctx, &ep, opts);
    // The client comes back from the task: dropping it would close the connection looked at.
    let client = tokio::spawn(async move {
        let reply = c.request(b"hi".to_vec(), T).await;
        (c, reply)
    });
    let req = tokio::time::timeout(T, r.recv()).await.unwrap().unwrap();
    r.reply(&req, b"ho".to_vec()).await.unwrap();
    let (_client, reply) = client.await.unwrap();
    assert_eq!(reply.unwrap(), b"ho");
    let timers = tcp_timers_to(port);
    assert!(!timers.is_empty(), "no connection to port {port} found");
    assert!(
        timers.iter().all(|t| *t == 2),
        "keepalive timer not running on the client's connection: {timers:?}"
    );

    // Each socket's mailbox is an eventfd (a socketpair costs two descriptors). Other tests of
    // this binary run at the same time and may close a few eventfds meanwhile.
    let before = eventfds();
    let subs: Vec<Subscriber> = (0..100)
        .map(|_| Subscriber::connect(&ctx, "tcp://127.0.0.1:1", &[b""], &fast()).unwrap())
        .collect();
    let more = eventfds() - before;
    assert!(
        more >= 90,
        "{more} new eventfds for {} sockets: mailboxes are socketpairs",
        subs.len()
    );
}
