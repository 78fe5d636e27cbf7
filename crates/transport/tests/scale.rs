//! One process serves 9,000 minions: a PUB subscriber and a ROUTER peer each (18,000 TCP
//! connections under the 20,000-file limit). The minions run in 4 child processes (this same
//! binary with `--child`), because each libzmq client socket costs two descriptors.
//!
//! A `harness = false` test: `main` is the parent unless started with `--child`.

use std::collections::HashSet;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use brine_transport::{Context, Dealer, Publisher, Router, SocketOptions, Subscriber};

const MINIONS: usize = 9_000;
const PROCESSES: usize = 4;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    if let Some(i) = args.iter().position(|a| a == "--child") {
        let a = &args[i + 1..];
        let done = rt.block_on(child(
            a[0].clone(),
            a[1].clone(),
            a[2].parse().unwrap(),
            a[3].clone(),
        ));
        println!("done {done}");
        return;
    }
    if args.iter().any(|a| a == "--list") {
        println!("one_process_serves_9000_minions: test");
        return;
    }
    // A name filter that does not match this test (cargo test <filter>) skips it, like libtest.
    let filters: Vec<&String> = args[1..].iter().filter(|a| !a.starts_with('-')).collect();
    if !filters.is_empty()
        && !filters
            .iter()
            .any(|f| "one_process_serves_9000_minions".contains(f.as_str()))
    {
        println!("test result: ok. 0 passed; 0 failed; 0 ignored; 0 measured; 1 filtered out");
        return;
    }
    println!("test one_process_serves_9000_minions ...");
    rt.block_on(one_process_serves_9000_minions());
    println!("test one_process_serves_9000_minions ... ok");
    println!("test result: ok. 1 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out");
}

/// N simulated minions: each subscribes, sends `hello:<id>`, waits for the `go` publish, sends
/// `got:<id>` and waits for its reply.
async fn child(router: String, publisher: String, count: usize, prefix: String) -> usize {
    let ctx = Context::new();
    let mut opts = SocketOptions::default();
    opts.reconnect.default = Duration::from_millis(200);
    opts.reconnect.max = Duration::from_millis(2000);
    opts.inbound_queue = 4;
    let mut tasks = Vec::with_capacity(count);
    for i in 0..count {
        let id = format!("{prefix}-{i:05}");
        let mut sub = Subscriber::connect(&ctx, &publisher, &[b""], &opts).expect("sub");
        let mut dealer = Dealer::connect(&ctx, &router, &opts).expect("dealer");
        tasks.push(tokio::spawn(async move {
            dealer.send(format!("hello:{id}").into_bytes()).await.ok()?;
            dealer.recv().await.ok()?;
            loop {
                let m = sub.recv().await.ok()?;
                if m.last().map(Vec::as_slice) == Some(b"go".as_slice()) {
                    break;
                }
            }
            dealer.send(format!("got:{id}").into_bytes()).await.ok()?;
            dealer.recv().await.ok()?;
            Some(())
        }));
        if i % 500 == 499 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let mut done = 0;
    for t in tasks {
        if let Ok(Some(())) = t.await {
            done += 1;
        }
    }
    done
}

async fn one_process_serves_9000_minions() {
    let ctx = Context::new();
    let mut ropts = SocketOptions::master_router();
    ropts.inbound_queue = 4096;
    let mut router = Router::bind(&ctx, "tcp://127.0.0.1:0", &ropts).unwrap();
    let mut popts = SocketOptions::master_pub();
    popts.hwm = 100;
    let publisher = Publisher::bind(&ctx, "tcp://127.0.0.1:0", &popts).unwrap();

    let client = std::env::current_exe().unwrap();
    let mut children = Vec::new();
    for p in 0..PROCESSES {
        children.push(
            Command::new(&client)
                .args([
                    "--child",
                    router.endpoint(),
                    publisher.endpoint(),
                    &(MINIONS / PROCESSES).to_string(),
                    &format!("m{p}"),
                ])
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .unwrap(),
        );
    }

    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(240);
    let (mut hello, mut got) = (HashSet::new(), HashSet::new());
    let mut next_go = tokio::time::Instant::now();
    while got.len() < MINIONS {
        if hello.len() == MINIONS && tokio::time::Instant::now() >= next_go {
            publisher.send(b"go".to_vec()).await.unwrap();
            next_go = tokio::time::Instant::now() + Duration::from_millis(500);
        }
        let req = match tokio::time::timeout(Duration::from_millis(200), router.recv()).await {
            Ok(r) => r.unwrap(),
            Err(_) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "timed out: {} hellos, {} gots",
                    hello.len(),
                    got.len()
                );
                continue;
            }
        };
        let text = String::from_utf8(req.payload.clone()).unwrap();
        if let Some(id) = text.strip_prefix("hello:") {
            hello.insert(id.to_owned());
        } else if let Some(id) = text.strip_prefix("got:") {
            got.insert(id.to_owned());
        }
        router.reply(&req, b"ok".to_vec()).await.unwrap();
    }
    let elapsed = started.elapsed();
    let mut done = 0;
    for c in children {
        let out = tokio::task::spawn_blocking(move || c.wait_with_output())
            .await
            .unwrap()
            .unwrap();
        let s = String::from_utf8_lossy(&out.stdout);
        done += s
            .trim()
            .strip_prefix("done ")
            .and_then(|n| n.parse::<usize>().ok())
            .unwrap_or(0);
    }
    assert_eq!(hello.len(), MINIONS);
    assert_eq!(got.len(), MINIONS, "every minion received the publish");
    assert_eq!(done, MINIONS, "every minion got both replies");
    let rss = std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .unwrap_or("VmHWM: ?")
        .to_owned();
    eprintln!("{MINIONS} minions served by one process in {elapsed:?}; server peak RSS {rss}");
}
