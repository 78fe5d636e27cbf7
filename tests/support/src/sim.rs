//! A simulated minion built only from brine-proto's minion-side state machine and
//! brine-transport: it authenticates, subscribes, matches targets and returns results for a
//! few test functions. Used by interop tests, the demo and (later) the swarm.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use brine_proto::Value;
use brine_proto::auth::{
    AuthEvent, Credentials, MinionAuth, MinionAuthConfig, MinionIdentity, MinionSession,
};
use brine_proto::crypt::PrivateKey;
use brine_proto::feed::{Feed, PublishDecoder};
use brine_proto::jid::iso_stamp;
use brine_proto::loads::ReturnLoad;
use brine_transport::{Context, ReqClient, SocketOptions, Subscriber, tcp_endpoint};

/// The OS random source (brine-transport's).
pub use brine_transport::OsEntropy as Rng;
use brine_transport::unix_micros;

/// Why a simulated minion could not start.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// The master did not accept the key.
    #[error("auth ended with {0}")]
    Auth(String),
    /// A transport failure.
    #[error("transport: {0}")]
    Transport(#[from] brine_transport::TransportError),
    /// A protocol failure.
    #[error("protocol: {0}")]
    Proto(#[from] brine_proto::auth::AuthError),
}

/// A runtime for simulated minions in a synchronous test: two worker threads, so the minions
/// keep answering while the test blocks on commands.
///
/// # Panics
/// If the runtime cannot start.
pub fn sim_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// How a simulated minion misbehaves (the default: it does not).
#[derive(Debug, Clone, Copy)]
pub struct SimOptions {
    /// Each return is sent this many times (a new envelope around the same load each time), as
    /// a minion does that resends a return whose acknowledgement came too late. `answered`
    /// counts every acknowledged copy.
    pub copies: usize,
    /// Whether `saltutil.find_job` is answered: a minion on a saturated host answers it too
    /// late, which looks the same to its master.
    pub answer_find_job: bool,
}

impl Default for SimOptions {
    fn default() -> Self {
        Self {
            copies: 1,
            answer_find_job: true,
        }
    }
}

/// The jids whose returns a simulated minion's master acknowledged.
pub type Acked = Arc<std::sync::Mutex<Vec<String>>>;

/// A running simulated minion. Dropping it stops it.
#[derive(Debug)]
pub struct SimMinion {
    /// Minion id.
    pub id: String,
    /// Jobs answered so far.
    pub answered: Arc<AtomicUsize>,
    /// Publishes that failed a check (bad signature, replayed serial, undecryptable).
    pub rejected: Arc<AtomicUsize>,
    /// The jid of each acknowledged return, in order (a jid twice if acknowledged twice).
    pub acked: Acked,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for SimMinion {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl SimMinion {
    /// Authenticate `id` with `key` to the master at `host:ret_port` (retrying while pending,
    /// up to `auth_deadline`), subscribe to `host:publish_port`, and answer jobs from then on.
    ///
    /// # Errors
    /// [`SimError`] if the key is not accepted in time.
    pub async fn start(
        ctx: &Context,
        id: &str,
        key: PrivateKey,
        host: &str,
        ret_port: u16,
        publish_port: u16,
        auth_deadline: Duration,
    ) -> Result<Self, SimError> {
        Self::start_with(
            ctx,
            id,
            key,
            (host, ret_port, publish_port),
            auth_deadline,
            SimOptions::default(),
        )
        .await
    }

    /// As [`SimMinion::start`], with the behaviours of [`SimOptions`].
    ///
    /// # Errors
    /// [`SimError`] if the key is not accepted in time.
    pub async fn start_with(
        ctx: &Context,
        id: &str,
        key: PrivateKey,
        (host, ret_port, publish_port): (&str, u16, u16),
        auth_deadline: Duration,
        opts: SimOptions,
    ) -> Result<Self, SimError> {
        let me = MinionIdentity::new(id, key)?;
        let link = attach(ctx, &me, host, (ret_port, publish_port), auth_deadline).await?;
        let answered = Arc::new(AtomicUsize::new(0));
        let rejected = Arc::new(AtomicUsize::new(0));
        let acked = Acked::default();
        let task = tokio::spawn(respond(
            id.to_owned(),
            link,
            (answered.clone(), rejected.clone(), acked.clone()),
            opts,
        ));
        // Give the subscription time to reach the publisher (ZeroMQ's slow joiner).
        tokio::time::sleep(Duration::from_millis(300)).await;
        Ok(Self {
            id: id.to_owned(),
            answered,
            rejected,
            acked,
            task,
        })
    }

    /// Jobs answered so far.
    pub fn answered(&self) -> usize {
        self.answered.load(Ordering::Relaxed)
    }

    /// The jids whose returns were acknowledged so far (one entry per acknowledged copy).
    pub fn acked_jids(&self) -> Vec<String> {
        self.acked
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

/// Authenticate `me` over `req` as a minion does (retrying while pending, resending on timeout)
/// until accepted or `deadline` passes.
///
/// # Errors
/// [`SimError`] if refused or not accepted in time.
pub async fn authenticate(
    me: &MinionIdentity,
    req: &mut ReqClient,
    deadline: Duration,
) -> Result<Box<Credentials>, SimError> {
    authenticate_with(me, req, deadline, MinionAuthConfig::default()).await
}

/// [`authenticate`] with `cfg` (e.g. a [`brine_proto::auth::KnownMaster`] shared by the
/// minions of one swarm process).
///
/// # Errors
/// [`SimError`] if refused or not accepted in time.
pub async fn authenticate_with(
    me: &MinionIdentity,
    req: &mut ReqClient,
    deadline: Duration,
    cfg: MinionAuthConfig,
) -> Result<Box<Credentials>, SimError> {
    let until = Instant::now() + deadline;
    let mut auth = MinionAuth::new(me.clone(), cfg, None, &mut Rng);
    auth.start(Instant::now(), &mut Rng)?;
    loop {
        if Instant::now() > until {
            return Err(SimError::Auth("no acceptance before the deadline".into()));
        }
        if let Some(frame) = auth.poll_transmit() {
            match req.request(frame, Duration::from_secs(5)).await {
                Ok(reply) => auth.handle_reply(&reply, Instant::now()),
                Err(brine_transport::TransportError::Timeout(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        match auth.poll_event() {
            Some(AuthEvent::Accepted(c)) => return Ok(c),
            Some(AuthEvent::Rejected) => return Err(SimError::Auth("rejected".into())),
            Some(AuthEvent::Full) => return Err(SimError::Auth("master full".into())),
            Some(AuthEvent::MasterKeyChanged) => {
                return Err(SimError::Auth("master key changed".into()));
            }
            Some(AuthEvent::Pending | AuthEvent::TimedOut | AuthEvent::Invalid(_)) | None => {}
        }
        if let Some(t) = auth.poll_timeout() {
            tokio::time::sleep_until(t.min(until).into()).await;
            auth.handle_timeout(Instant::now(), &mut Rng)?;
        }
    }
}

/// What a simulated minion answers for `fun(args)`: `(return, retcode, success)`.
async fn execute(fun: &str, args: &[Value]) -> (Value, i64, bool) {
    match fun {
        "test.ping" => (Value::Bool(true), 0, true),
        "test.echo" => (
            args.first().cloned().unwrap_or_else(|| Value::str("")),
            0,
            true,
        ),
        "test.sleep" => {
            let secs = args.first().and_then(|a| {
                a.as_i64()
                    .or_else(|| a.as_str().and_then(|s| s.parse().ok()))
            });
            tokio::time::sleep(Duration::from_secs(secs.unwrap_or(0).clamp(0, 3600) as u64)).await;
            (Value::Bool(true), 0, true)
        }
        "saltutil.find_job" => (Value::map(), 0, true),
        other => (
            Value::str(format!("'{other}' is not available.")),
            254,
            false,
        ),
    }
}

async fn respond(
    id: String,
    link: Attached,
    (answered, rejected, acked): (Arc<AtomicUsize>, Arc<AtomicUsize>, Acked),
    opts: SimOptions,
) {
    let Attached {
        mut sub,
        req,
        session,
        creds,
        ..
    } = link;
    let grains = Value::map().with("id", id.as_str()).with("os", "Debian");
    // Every publish must carry the master's signature (brine masters sign them all).
    let mut decoder = PublishDecoder::new(&id);
    decoder.verify_with = Some(creds.master_pub.clone());
    while let Ok(frames) = sub.recv().await {
        let Some(frame) = frames.last() else { continue };
        let job = match decoder.decode(frame, &creds.aes, &grains, &Value::Nil) {
            Feed::Job(job) => *job,
            // A failing MAC (a forged or foreign publish) counts as a rejection too: the
            // simulated minion does not re-authenticate.
            Feed::Rekey(_) => {
                rejected.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            Feed::Skip(why) => {
                if why.is_rejection() {
                    rejected.fetch_add(1, Ordering::Relaxed);
                }
                continue;
            }
        };
        if !opts.answer_find_job && job.fun_name() == Some("saltutil.find_job") {
            continue;
        }
        answer(job, &id, &req, &session, (&answered, &acked), opts.copies);
    }
}

/// Run `job` and send its return (`copies` times) over `req`, in a task of its own; each
/// acknowledged copy counts in `answered` and `acked`.
fn answer(
    job: brine_proto::loads::JobLoad,
    id: &str,
    req: &Arc<tokio::sync::Mutex<ReqClient>>,
    session: &MinionSession,
    (answered, acked): (&Arc<AtomicUsize>, &Acked),
    copies: usize,
) {
    let (id, req, session, answered, acked) = (
        id.to_owned(),
        req.clone(),
        session.clone(),
        answered.clone(),
        acked.clone(),
    );
    tokio::spawn(async move {
        let fun = job.fun_name().unwrap_or_default().to_owned();
        let args = job.arg.as_array().unwrap_or_default().to_vec();
        let (ret, retcode, success) = execute(&fun, &args).await;
        let load = ReturnLoad {
            id: id.clone(),
            success,
            ret,
            retcode,
            jid: job.jid.clone(),
            fun: job.fun.clone(),
            fun_args: job.arg.clone(),
            user: job.user.clone(),
            out: None,
            stamp: Some(iso_stamp(unix_micros())),
            extra: vec![],
        };
        let mut req = req.lock().await;
        for _ in 0..copies {
            let sealed = session.seal(
                load.to_value(),
                (unix_micros() / 1_000_000) as i64,
                &mut Rng,
            );
            for _ in 0..3 {
                if let Ok(reply) = req
                    .request(sealed.frame.clone(), Duration::from_secs(10))
                    .await
                {
                    if session.open_reply(&reply, &sealed.nonce).is_ok() {
                        answered.fetch_add(1, Ordering::Relaxed);
                        acked
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .push(load.jid.clone());
                    }
                    break;
                }
            }
        }
    });
}

/// A simulated minion's link to one master.
struct Attached {
    host: String,
    req: Arc<tokio::sync::Mutex<ReqClient>>,
    sub: Subscriber,
    creds: Box<Credentials>,
    session: MinionSession,
}

/// Authenticate `me` to the master at `host` (within `deadline`) and subscribe to its feed.
async fn attach(
    ctx: &Context,
    me: &MinionIdentity,
    host: &str,
    (ret_port, publish_port): (u16, u16),
    deadline: Duration,
) -> Result<Attached, SimError> {
    let mut req = ReqClient::new(ctx, &tcp_endpoint(host, ret_port), SocketOptions::default());
    let creds = authenticate(me, &mut req, deadline).await?;
    let session = MinionSession::new(
        me.clone(),
        creds.session.clone(),
        Default::default(),
        Default::default(),
    );
    let sub = Subscriber::connect(
        ctx,
        &tcp_endpoint(host, publish_port),
        &[b""],
        &SocketOptions::default(),
    )?;
    Ok(Attached {
        host: host.to_owned(),
        req: Arc::new(tokio::sync::Mutex::new(req)),
        sub,
        creds,
        session,
    })
}

/// What a liveness probe of a master found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Probe {
    /// It accepted a TCP connection.
    Up,
    /// The connection was refused (nothing listens: the master died and its host said so).
    Refused,
    /// No answer within the timeout: a partition, or only a saturated host or a full accept
    /// queue, which is why a timeout counts for less than a refusal (see [`serve`]).
    Silent,
}

/// Probe `host:port` with a TCP connection, as Salt's `master_alive_interval` check looks at
/// the connection. Async (no blocking thread per probe: a few thousand minions probe at once),
/// with a timeout long enough that a master on a saturated 2-core host still answers.
async fn probe(host: &str, port: u16) -> Probe {
    match tokio::time::timeout(PROBE_TIMEOUT, tokio::net::TcpStream::connect((host, port))).await {
        Ok(Ok(_)) => Probe::Up,
        Ok(Err(_)) => Probe::Refused,
        Err(_) => Probe::Silent,
    }
}

/// How often a simulated minion probes its master.
const PROBE_PERIOD: Duration = Duration::from_secs(2);
/// How long a probe waits for the TCP handshake (a SYN lost to a full accept queue is resent
/// after 1 s, so anything under ~3 s mistakes a busy master for a dead one).
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);
/// Refused probes in a row before a minion leaves its master (a refusal is certain).
const REFUSED_TO_LEAVE: u32 = 2;
/// Unanswered probes in a row before a minion leaves its master (about 10 s of silence).
const SILENT_TO_LEAVE: u32 = 3;

/// Why a simulated minion left its master.
enum Leave {
    /// A publish did not decrypt: re-authenticate to the same master, then decode it again.
    Rekey(Vec<u8>),
    /// The master stopped accepting connections: fail over to the next one.
    Gone,
}

/// Answer jobs from `link`'s master until it must be left; `pending` is a publish to decode
/// first (the one that asked for a re-authentication).
async fn serve(
    id: &str,
    link: &mut Attached,
    ports: (u16, u16),
    pending: Option<Vec<u8>>,
    (answered, rejected, acked): (&Arc<AtomicUsize>, &Arc<AtomicUsize>, &Acked),
) -> Leave {
    let grains = Value::map().with("id", id).with("os", "Debian");
    let mut decoder = PublishDecoder::new(id);
    decoder.verify_with = Some(link.creds.master_pub.clone());
    let mut probe_tick = tokio::time::interval(PROBE_PERIOD);
    probe_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut refused, mut silent) = (0, 0);
    let mut next = pending;
    loop {
        let frame = match next.take() {
            Some(f) => f,
            None => tokio::select! {
                r = link.sub.recv() => match r {
                    Ok(mut frames) => match frames.pop() {
                        Some(f) => f,
                        None => continue,
                    },
                    Err(_) => return Leave::Gone,
                },
                _ = probe_tick.tick() => {
                    match probe(&link.host, ports.0).await {
                        Probe::Up => (refused, silent) = (0, 0),
                        Probe::Refused => refused += 1,
                        Probe::Silent => silent += 1,
                    }
                    if refused >= REFUSED_TO_LEAVE || refused + silent >= SILENT_TO_LEAVE {
                        return Leave::Gone;
                    }
                    continue;
                }
            },
        };
        match decoder.decode(&frame, &link.creds.aes, &grains, &Value::Nil) {
            Feed::Job(job) => answer(*job, id, &link.req, &link.session, (answered, acked), 1),
            Feed::Rekey(payload) => return Leave::Rekey(payload),
            Feed::Skip(why) => {
                if why.is_rejection() {
                    rejected.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}

impl SimMinion {
    /// A simulated minion with Salt's `master_type: failover`: it attaches to the first of
    /// `masters` that accepts it, re-authenticates when a publish does not decrypt (the master
    /// restarted with a new AES key), and moves to the next master when its master stops
    /// accepting connections (probed every 2 s: two refusals, or three probes without an answer,
    /// in a row).
    ///
    /// # Errors
    /// [`SimError`] if no master accepts it within `auth_deadline`.
    pub async fn start_failover(
        ctx: &Context,
        id: &str,
        key: PrivateKey,
        masters: &[String],
        ports: (u16, u16),
        auth_deadline: Duration,
    ) -> Result<Self, SimError> {
        let me = MinionIdentity::new(id, key)?;
        let until = Instant::now() + auth_deadline;
        let mut idx = 0;
        let link = loop {
            match attach(ctx, &me, &masters[idx], ports, Duration::from_secs(10)).await {
                Ok(l) => break l,
                Err(e) if Instant::now() > until => return Err(e),
                Err(_) => {
                    idx = (idx + 1) % masters.len();
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        };
        let answered = Arc::new(AtomicUsize::new(0));
        let rejected = Arc::new(AtomicUsize::new(0));
        let acked = Acked::default();
        let counters = (answered.clone(), rejected.clone(), acked.clone());
        let (ctx, masters, name) = (ctx.clone(), masters.to_vec(), id.to_owned());
        let task = tokio::spawn(async move {
            let mut link = link;
            let mut pending = None;
            loop {
                let leave = serve(
                    &name,
                    &mut link,
                    ports,
                    pending.take(),
                    (&counters.0, &counters.1, &counters.2),
                )
                .await;
                if let Leave::Rekey(frame) = leave
                    && let Ok(l) =
                        attach(&ctx, &me, &masters[idx], ports, Duration::from_secs(10)).await
                {
                    link = l;
                    pending = Some(frame);
                    continue;
                }
                // Gone (or the re-authentication failed): the next master that accepts.
                link = loop {
                    idx = (idx + 1) % masters.len();
                    if let Ok(l) =
                        attach(&ctx, &me, &masters[idx], ports, Duration::from_secs(5)).await
                    {
                        break l;
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                };
            }
        });
        // Give the subscription time to reach the publisher (ZeroMQ's slow joiner).
        tokio::time::sleep(Duration::from_millis(300)).await;
        Ok(Self {
            id: id.to_owned(),
            answered,
            rejected,
            acked,
            task,
        })
    }
}

/// `n` minion key pairs, generated once and cached in `~/.cache/brine/swarm-keys` (generating
/// 2048-bit keys is the slow part of a swarm).
///
/// # Panics
/// If the cache directory cannot be written.
pub fn cached_keys(n: usize) -> Vec<PrivateKey> {
    (0..n).map(cached_key).collect()
}

/// Key pair number `i` of [`cached_keys`] (generated and cached if missing).
///
/// # Panics
/// If the cache directory cannot be written.
pub fn cached_key(i: usize) -> PrivateKey {
    let dir = std::env::var("HOME").map_or_else(|_| PathBuf::from("/tmp"), PathBuf::from);
    let dir = dir.join(".cache/brine/swarm-keys");
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(format!("{i:06}.pem"));
    if let Ok(b) = std::fs::read(&p) {
        return PrivateKey::from_pem_unchecked(&b).unwrap();
    }
    let k = PrivateKey::generate(2048).unwrap();
    std::fs::write(&p, k.to_pem_pkcs1().unwrap()).unwrap();
    k
}

/// An accepted minion turned hostile: it holds a real key, authenticates like any minion, and
/// then sends whatever encrypted requests it likes (forged returns, events, replays).
#[derive(Debug)]
pub struct HostileMinion {
    /// Its minion id.
    pub id: String,
    req: ReqClient,
    session: MinionSession,
    /// What `_auth` gave it (the publish AES key, the master's public key).
    pub creds: Box<Credentials>,
}

/// What the master answered a [`HostileMinion`].
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// An encrypted reply, opened.
    Reply(Value),
    /// `"bad load"` (the request was refused).
    BadLoad,
    /// No answer in time.
    Timeout,
}

impl HostileMinion {
    /// Authenticate `id` with `key` at `host:ret_port` (auto-accepted or accepted beforehand).
    ///
    /// # Errors
    /// [`SimError`] if the key is not accepted within `deadline`.
    pub async fn connect(
        ctx: &Context,
        id: &str,
        key: PrivateKey,
        host: &str,
        ret_port: u16,
        deadline: Duration,
    ) -> Result<Self, SimError> {
        let me = MinionIdentity::new(id, key)?;
        let mut req = ReqClient::new(ctx, &tcp_endpoint(host, ret_port), SocketOptions::default());
        let creds = authenticate(&me, &mut req, deadline).await?;
        let session = MinionSession::new(
            me,
            creds.session.clone(),
            Default::default(),
            Default::default(),
        );
        Ok(Self {
            id: id.to_owned(),
            req,
            session,
            creds,
        })
    }

    /// Seal `load` (with its `cmd`) as this minion, stamped `unix_secs` (now if `None`).
    pub fn seal(&self, load: Value, unix_secs: Option<i64>) -> brine_proto::auth::SealedRequest {
        let ts = unix_secs.unwrap_or_else(|| (unix_micros() / 1_000_000) as i64);
        self.session.seal(load, ts, &mut Rng)
    }

    /// Send a sealed request (again, for a replay) and open the answer.
    pub async fn send_sealed(&mut self, sealed: &brine_proto::auth::SealedRequest) -> Answer {
        match self
            .req
            .request(sealed.frame.clone(), Duration::from_secs(10))
            .await
        {
            Ok(reply) => match self.session.open_reply(&reply, &sealed.nonce) {
                Ok(v) => Answer::Reply(v),
                Err(_) => Answer::BadLoad,
            },
            Err(_) => Answer::Timeout,
        }
    }

    /// Seal and send `load` now.
    pub async fn send(&mut self, load: Value) -> Answer {
        let sealed = self.seal(load, None);
        self.send_sealed(&sealed).await
    }

    /// Send raw bytes on the request channel (a clear request, garbage) and return the raw
    /// answer, if any.
    pub async fn send_raw(&mut self, frame: Vec<u8>) -> Option<Vec<u8>> {
        self.req.request(frame, Duration::from_secs(10)).await.ok()
    }
}
