//! One simulated minion: its sockets, authentication, and the answers to publishes.

#[allow(clippy::wildcard_imports)]
use super::*;

/// A minion's socket options; no handshake timer (thousands of them in one process make
/// libzmq walk its timer map on every handshake, the swarm's CPU then skews the storm). A
/// request that times out keeps its connection (`keep_on_timeout`): a Salt minion reconnects
/// instead, but tens of thousands of reconnecting sockets in a few processes made the swarm,
/// not the master, the thing measured (50k: 10+ GB, ~7 descriptors per minion).
pub(crate) fn swarm_socket() -> SocketOptions {
    SocketOptions {
        handshake_ivl: Some(Duration::ZERO),
        batch_size: Some(brine_transport::MASTER_BATCH_SIZE),
        keep_on_timeout: true,
        ..SocketOptions::default()
    }
}

/// One simulated minion: authenticate, subscribe, then answer jobs until the process ends.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn minion(
    ctx: &Context,
    me: MinionIdentity,
    src: &str,
    host: &str,
    (ret, publish): (u16, u16),
    auth: MinionAuthConfig,
    wait: Duration,
    lat: Latencies,
) -> Result<SwarmMinion, String> {
    let id = me.id.clone();
    let mut req = ReqClient::new(ctx, &format!("tcp://{src}:0;{host}:{ret}"), swarm_socket());
    let creds = authenticate_with(&me, &mut req, wait, auth)
        .await
        .map_err(|e| e.to_string())?;
    let req = Arc::new(tokio::sync::Mutex::new(req));
    let session = MinionSession::new(
        me,
        creds.session.clone(),
        Default::default(),
        Default::default(),
    );
    let sub = Subscriber::connect(
        ctx,
        &format!("tcp://{src}:0;{host}:{publish}"),
        &[b""],
        &swarm_socket(),
    )
    .map_err(|e| e.to_string())?;
    let handle = SwarmMinion {
        id: id.clone(),
        req: req.clone(),
        session: session.clone(),
        master_pub: creds.master_pub.clone(),
        _task: None,
    };
    let task = tokio::spawn(answer(id, sub, req, session, creds, lat));
    Ok(SwarmMinion {
        _task: Some(task),
        ..handle
    })
}

/// An authenticated simulated minion: its request channel and session (for workloads), and the
/// task answering its publishes.
pub(crate) struct SwarmMinion {
    id: String,
    req: Arc<tokio::sync::Mutex<ReqClient>>,
    session: MinionSession,
    master_pub: brine_proto::crypt::PublicKey,
    _task: Option<tokio::task::JoinHandle<()>>,
}

impl SwarmMinion {
    /// An encrypted request and its opened reply (3 tries of 60 s).
    async fn request(&self, load: Value) -> Result<Value, String> {
        let mut last = String::new();
        for _ in 0..3 {
            let sealed = self
                .session
                .seal(load.clone(), (now_us() / 1_000_000) as i64, &mut Rng);
            let reply = self
                .req
                .lock()
                .await
                .request(sealed.frame.clone(), Duration::from_secs(60))
                .await;
            match reply {
                Ok(r) => {
                    return self
                        .session
                        .open_reply(&r, &sealed.nonce)
                        .map_err(|e| e.to_string());
                }
                Err(e) => last = e.to_string(),
            }
        }
        Err(format!("no answer: {last}"))
    }

    /// The `files` workload: list, then hash, find and fetch the first `n` files (verifying
    /// the content against the hash when `check`). Returns (requests, bytes).
    pub(crate) async fn fetch_files(&self, n: usize, check: bool) -> Result<(u64, u64), String> {
        let base = || Value::map().with("saltenv", "base");
        let list = self
            .request(base().with("prefix", "").with("cmd", "_file_list"))
            .await?;
        let files: Vec<String> = list
            .as_array()
            .unwrap_or_default()
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .take(n)
            .collect();
        if files.is_empty() {
            return Err("the master lists no files".into());
        }
        let (mut requests, mut bytes) = (1u64, 0u64);
        for f in files {
            let hash = self
                .request(base().with("path", f.as_str()).with("cmd", "_file_hash"))
                .await?;
            self.request(base().with("path", f.as_str()).with("cmd", "_file_find"))
                .await?;
            requests += 2;
            let mut body = Vec::new();
            loop {
                let r = self
                    .request(
                        base()
                            .with("path", f.as_str())
                            .with("cmd", "_serve_file")
                            .with("loc", body.len() as i64),
                    )
                    .await?;
                requests += 1;
                let data = r
                    .get("data")
                    .and_then(|d| d.as_bytes())
                    .ok_or_else(|| format!("{f}: a reply without data"))?;
                if data.is_empty() {
                    break;
                }
                body.extend_from_slice(data);
            }
            bytes += body.len() as u64;
            if check
                && hash.get("hsum").and_then(Value::as_str)
                    != Some(&brine_proto::crypt::sha256_hex(&body))
            {
                return Err(format!("{f}: the content does not match its hash"));
            }
        }
        Ok((requests, bytes))
    }

    /// The `pillar` workload: one `_pillar` (opened and checked when `check`). Returns
    /// (requests, bytes of the reply).
    pub(crate) async fn pillar(&self, check: bool) -> Result<(u64, u64), String> {
        let grains = Value::map()
            .with("id", self.id.as_str())
            .with("os", "Debian")
            .with("os_family", "Debian")
            .with("kernel", "Linux")
            .with("num_cpus", 2i64)
            .with("roles", Value::Array(vec![Value::str("web")]));
        let load = Value::map()
            .with("cmd", "_pillar")
            .with("id", self.id.as_str())
            .with("grains", grains)
            .with("saltenv", Value::Nil)
            .with("pillarenv", Value::Nil)
            .with("pillar_override", Value::map())
            .with("extra_minion_data", Value::map())
            .with("ver", "2");
        let sealed = self
            .session
            .seal(load, (now_us() / 1_000_000) as i64, &mut Rng);
        let reply = self
            .req
            .lock()
            .await
            .request(sealed.frame.clone(), Duration::from_secs(120))
            .await
            .map_err(|e| e.to_string())?;
        if check {
            let p = self
                .session
                .open_pillar_reply(&reply, &sealed.nonce, &self.master_pub)
                .map_err(|e| e.to_string())?;
            if p.as_map().is_none_or(<[_]>::is_empty) || p.get("_errors").is_some() {
                return Err(format!("a bad pillar: {p:?}"));
            }
        } else if reply.len() < 64 {
            return Err("a reply too short for a pillar".into());
        }
        Ok((1, reply.len() as u64))
    }
}

pub(crate) async fn answer(
    id: String,
    mut sub: Subscriber,
    req: Arc<tokio::sync::Mutex<ReqClient>>,
    session: MinionSession,
    creds: Box<brine_proto::auth::Credentials>,
    lat: Latencies,
) {
    let grains = Value::map().with("id", id.as_str()).with("os", "Debian");
    let mut decoder = PublishDecoder::new(&id);
    decoder.verify_with = Some(creds.master_pub.clone());
    while let Ok(frames) = sub.recv().await {
        let Some(frame) = frames.last() else { continue };
        let Feed::Job(job) = decoder.decode(frame, &creds.aes, &grains, &Value::Nil) else {
            continue;
        };
        let (id, req, session, lat) = (id.clone(), req.clone(), session.clone(), lat.clone());
        tokio::spawn(async move {
            let fun = job.fun_name().unwrap_or_default().to_owned();
            let args = job.arg.as_array().unwrap_or_default().to_vec();
            let (ret, retcode) = match fun.as_str() {
                "test.ping" => (Value::Bool(true), 0),
                "test.echo" => (args.first().cloned().unwrap_or_else(|| Value::str("")), 0),
                "test.sleep" => {
                    let s = args.first().and_then(|a| {
                        a.as_i64()
                            .or_else(|| a.as_str().and_then(|s| s.parse().ok()))
                    });
                    tokio::time::sleep(Duration::from_secs(s.unwrap_or(0).clamp(0, 3600) as u64))
                        .await;
                    (Value::Bool(true), 0)
                }
                "saltutil.find_job" => (Value::map(), 0),
                other => (Value::str(format!("'{other}' is not available.")), 254),
            };
            let load = ReturnLoad {
                id,
                success: retcode == 0,
                ret,
                retcode,
                jid: job.jid.clone(),
                fun: job.fun.clone(),
                fun_args: job.arg.clone(),
                user: job.user.clone(),
                out: None,
                stamp: Some(iso_stamp(now_us())),
                extra: vec![],
            };
            let sealed = session.seal(load.to_value(), (now_us() / 1_000_000) as i64, &mut Rng);
            let mut req = req.lock().await;
            for _ in 0..3 {
                if let Ok(reply) = req
                    .request(sealed.frame.clone(), Duration::from_secs(20))
                    .await
                {
                    if session.open_reply(&reply, &sealed.nonce).is_ok()
                        && fun != "saltutil.find_job"
                    {
                        let ms = jid_us(&job.jid).map_or(0, |t| now_us().saturating_sub(t) / 1000);
                        lat.lock()
                            .unwrap()
                            .entry(job.jid.clone())
                            .or_default()
                            .push(u32::try_from(ms).unwrap_or(u32::MAX));
                    }
                    break;
                }
            }
        });
    }
}

use brine_transport::unix_micros as now_us;

/// A jid's time (`YYYYMMDDhhmmssffffff`, UTC) in microseconds since the epoch.
pub(crate) fn jid_us(jid: &str) -> Option<u64> {
    if jid.len() < 20 || !jid.as_bytes()[..20].iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = |a: usize, b: usize| jid[a..b].parse::<i64>().ok();
    let (y, m, d) = (n(0, 4)?, n(4, 6)?, n(6, 8)?);
    // Days from the civil date (Howard Hinnant's algorithm).
    let y2 = if m <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + n(8, 10)? * 3600 + n(10, 12)? * 60 + n(12, 14)?;
    Some(u64::try_from(secs).ok()? * 1_000_000 + n(14, 20)? as u64)
}
