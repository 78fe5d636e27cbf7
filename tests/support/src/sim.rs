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
        let mut req = ReqClient::new(ctx, &tcp_endpoint(host, ret_port), SocketOptions::default());
        let creds = authenticate(&me, &mut req, auth_deadline).await?;
        let session = MinionSession::new(
            me,
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
        let answered = Arc::new(AtomicUsize::new(0));
        let rejected = Arc::new(AtomicUsize::new(0));
        let acked = Acked::default();
        let task = tokio::spawn(respond(
            id.to_owned(),
            sub,
            req,
            session,
            creds,
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
    mut sub: Subscriber,
    req: ReqClient,
    session: MinionSession,
    creds: Box<Credentials>,
    (answered, rejected, acked): (Arc<AtomicUsize>, Arc<AtomicUsize>, Acked),
    opts: SimOptions,
) {
    let req = Arc::new(tokio::sync::Mutex::new(req));
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
        let (id, req, session, answered, acked) = (
            id.clone(),
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
            for _ in 0..opts.copies {
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
