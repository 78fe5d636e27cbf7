//! One authenticated link to one master: `_auth`, the publish subscription, the request
//! channel (returns, events) with re-authentication when the master answers `"bad load"` or a
//! publish no longer decrypts (AES rotation).

use std::sync::Arc;
use std::time::{Duration, Instant};

use brine_proto::Value;
use brine_proto::auth::{
    AuthError, AuthEvent, Credentials, MinionAuth, MinionAuthConfig, MinionIdentity, MinionSession,
};
use brine_proto::crypt::{CrypticleError, PublicKey, sha1_hex};
use brine_proto::loads::MinionEvent;
use brine_transport::{
    Context, ReqClient, SocketOptions, Subscriber, TransportError, tcp_endpoint,
};
use tokio::sync::Mutex;
use tracing::{debug, info, warn};

use crate::pki;
use crate::{LinkConfig, MasterAddr};

/// Liveness probe: Salt's clear `ping` request (what `status.ping_master` sends), answered by
/// every Salt master with an echo. A dead, hung (SIGSTOP) or partitioned master does not answer.
pub struct Prober {
    client: ReqClient,
}

impl Prober {
    /// A prober for `master`.
    pub fn new(ctx: &Context, master: &MasterAddr) -> Self {
        Self {
            client: ReqClient::new(
                ctx,
                &tcp_endpoint(&master.host, master.ret_port),
                SocketOptions::default(),
            ),
        }
    }

    /// Whether the master answered within `timeout`.
    pub async fn ping(&mut self, timeout: Duration) -> bool {
        let frame = brine_proto::envelope::Request::Clear {
            load: Value::map().with("cmd", "ping"),
            version: brine_proto::envelope::REQUEST_VERSION,
        }
        .encode();
        self.client.request(frame, timeout).await.is_ok()
    }
}

/// The OS random source (brine-transport's).
pub use brine_transport::OsEntropy as Rng;

pub use brine_transport::unix_micros;

/// Seconds since the epoch, as Salt's loads carry them (`ts`).
pub fn unix_secs() -> i64 {
    i64::try_from(brine_transport::unix_secs()).unwrap_or(i64::MAX)
}

/// Why a link ended.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The master rejected or denied our key. Salt's minion exits.
    #[error(
        "the Salt Master has rejected this minion's public key (salt-key -r or a key mismatch); to retry, delete the key on the master and restart the minion"
    )]
    Rejected,
    /// The master's key differs from `minion_master.pub`.
    #[error(
        "the master key has changed: the master at {0} presents a different key than the cached minion_master.pub; if the change is intended, delete minion_master.pub and restart the minion"
    )]
    MasterKeyChanged(String),
    /// `max_minions` reached on the master.
    #[error("the master at {0} is full (max_minions)")]
    Full(String),
    /// No acceptance in time.
    #[error("no answer from {0}")]
    Unreachable(String),
    /// A local failure (pki, sockets).
    #[error("{0}")]
    Local(String),
}

/// The authenticated request channel to one master, shared by the jobs that return through it.
pub struct ReqChannel {
    cfg: Arc<LinkConfig>,
    me: MinionIdentity,
    master: MasterAddr,
    req: Mutex<ReqInner>,
    /// Cleared when the link's liveness probe declares the master dead: returns then go to the
    /// spool at once instead of waiting on a master that will not answer.
    alive: std::sync::atomic::AtomicBool,
    /// When the master last answered a request (milliseconds after `born`).
    answered_ms: std::sync::atomic::AtomicU64,
    born: Instant,
    /// Re-authentications so far (a master that restarted refuses the old session key).
    reauths: std::sync::atomic::AtomicU64,
}

struct ReqInner {
    client: ReqClient,
    session: MinionSession,
    creds: Box<Credentials>,
}

impl ReqChannel {
    /// Authenticate to `master` and open the channel.
    ///
    /// # Errors
    /// [`LinkError`] when the master refuses us or cannot be reached.
    pub async fn connect(
        ctx: &Context,
        cfg: Arc<LinkConfig>,
        me: MinionIdentity,
        master: MasterAddr,
    ) -> Result<Self, LinkError> {
        let mut client = ReqClient::new(
            ctx,
            &tcp_endpoint(&master.host, master.ret_port),
            SocketOptions::default(),
        );
        let creds = authenticate(&cfg, &me, &master, &mut client).await?;
        let session = MinionSession::new(
            me.clone(),
            creds.session.clone(),
            Default::default(),
            Default::default(),
        );
        Ok(Self {
            cfg,
            me,
            master,
            req: Mutex::new(ReqInner {
                client,
                session,
                creds,
            }),
            alive: std::sync::atomic::AtomicBool::new(true),
            answered_ms: std::sync::atomic::AtomicU64::new(0),
            born: Instant::now(),
            reauths: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// Whether the master answered a request in the last `d` (a slow master that still
    /// answers is alive, whatever one request's timeout said).
    pub fn answered_within(&self, d: Duration) -> bool {
        let last = self.answered_ms.load(std::sync::atomic::Ordering::Relaxed);
        self.age_ms().saturating_sub(last) <= u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
    }

    /// Milliseconds since the channel was made (the clock of `answered_ms`).
    fn age_ms(&self) -> u64 {
        u64::try_from(self.born.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// How many times the channel re-authenticated (after the master refused its session key,
    /// or on [`Self::reauth`]): a change means the master may have restarted.
    pub fn reauths(&self) -> u64 {
        self.reauths.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether the master is believed alive.
    pub fn is_alive(&self) -> bool {
        self.alive.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Mark the master dead (pending sends give up and spool).
    pub fn mark_dead(&self) {
        self.alive
            .store(false, std::sync::atomic::Ordering::Relaxed);
    }

    /// The master this channel talks to.
    pub fn master(&self) -> &MasterAddr {
        &self.master
    }

    /// The current publish key and master key.
    pub async fn creds(&self) -> (brine_proto::crypt::Crypticle, PublicKey) {
        let r = self.req.lock().await;
        (r.creds.aes.clone(), r.creds.master_pub.clone())
    }

    /// The publish port the master advertised when we authenticated.
    pub async fn advertised_publish_port(&self) -> Option<u16> {
        let r = self.req.lock().await;
        r.creds
            .publish_port
            .and_then(|p| u16::try_from(p).ok())
            .filter(|p| *p != 0)
    }

    /// Authenticate again (after an AES rotation); returns the new publish key.
    ///
    /// # Errors
    /// As [`ReqChannel::connect`].
    pub async fn reauth(&self) -> Result<brine_proto::crypt::Crypticle, LinkError> {
        let mut r = self.req.lock().await;
        let creds = authenticate(&self.cfg, &self.me, &self.master, &mut r.client).await?;
        self.reauths
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        r.session = MinionSession::new(
            self.me.clone(),
            creds.session.clone(),
            Default::default(),
            Default::default(),
        );
        let aes = creds.aes.clone();
        r.creds = creds;
        Ok(aes)
    }

    /// Send a request load (with `cmd`) and return the decrypted reply. A `"bad load"` answer
    /// (stale session) re-authenticates once and resends, as Salt's channel does.
    ///
    /// # Errors
    /// [`LinkError`] if the master cannot be reached or keeps refusing.
    pub async fn send(&self, load: &Value, timeout: Duration) -> Result<Value, LinkError> {
        self.request(load, timeout, false).await
    }

    /// Send a `_pillar` request and open the reply the master encrypted to this minion's key
    /// (checking the master's signature and the nonce); returns the pillar.
    ///
    /// # Errors
    /// As [`ReqChannel::send`]; a reply that fails a check is [`LinkError::Local`].
    pub async fn pillar(&self, load: &Value, timeout: Duration) -> Result<Value, LinkError> {
        self.request(load, timeout, true).await
    }

    async fn request(
        &self,
        load: &Value,
        timeout: Duration,
        private: bool,
    ) -> Result<Value, LinkError> {
        let mut r = self.req.lock().await;
        for attempt in 0..2 {
            let sealed = r.session.seal(load.clone(), unix_secs(), &mut Rng);
            let reply = r
                .client
                .request(sealed.frame, timeout)
                .await
                .map_err(|e| LinkError::Unreachable(format!("{}: {e}", self.master.host)))?;
            self.answered_ms
                .fetch_max(self.age_ms(), std::sync::atomic::Ordering::Relaxed);
            let opened = if private {
                let bad_load = brine_proto::codec::decode(&reply)
                    .ok()
                    .is_some_and(|v| v.as_bytes() == Some(b"bad load"));
                if bad_load {
                    Err(AuthError::Crypticle(CrypticleError::BadMac))
                } else {
                    r.session
                        .open_pillar_reply(&reply, &sealed.nonce, &r.creds.master_pub)
                }
            } else {
                r.session.open_reply(&reply, &sealed.nonce)
            };
            match opened {
                Ok(v) => return Ok(v),
                Err(AuthError::Crypticle(CrypticleError::BadMac)) if attempt == 0 => {
                    info!(master = %self.master.host, "session key refused; re-authenticating");
                    let creds =
                        authenticate(&self.cfg, &self.me, &self.master, &mut r.client).await?;
                    self.reauths
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    r.session = MinionSession::new(
                        self.me.clone(),
                        creds.session.clone(),
                        Default::default(),
                        Default::default(),
                    );
                    r.creds = creds;
                }
                Err(e) => {
                    return Err(LinkError::Local(format!(
                        "bad reply from {}: {e}",
                        self.master.host
                    )));
                }
            }
        }
        Err(LinkError::Local(format!(
            "{} keeps refusing our session",
            self.master.host
        )))
    }

    /// Fire an event on the master's bus (`_minion_event`).
    ///
    /// # Errors
    /// As [`ReqChannel::send`].
    pub async fn fire_event(&self, tag: &str, data: Value) -> Result<(), LinkError> {
        let ev = MinionEvent {
            id: self.me.id.clone(),
            pretag: None,
            events: vec![(tag.to_owned(), data)],
            batch: false,
            extra: vec![],
        };
        self.send(&ev.to_value(), Duration::from_secs(60))
            .await
            .map(drop)
    }
}

async fn authenticate(
    cfg: &LinkConfig,
    me: &MinionIdentity,
    master: &MasterAddr,
    client: &mut ReqClient,
) -> Result<Box<Credentials>, LinkError> {
    let cached_path = cfg.pki_dir.join("minion_master.pub");
    let cached = pki::read_pub(&cached_path).map_err(|e| LinkError::Local(e.to_string()))?;
    let master_sign_pub = if cfg.verify_master_pubkey_sign {
        let p = cfg
            .pki_dir
            .join(format!("{}.pub", cfg.master_sign_key_name));
        Some(
            pki::read_pub(&p)
                .map_err(|e| LinkError::Local(e.to_string()))?
                .ok_or_else(|| {
                    LinkError::Local(format!(
                        "verify_master_pubkey_sign is on but {} is missing",
                        p.display()
                    ))
                })?,
        )
    } else {
        None
    };
    let acfg = MinionAuthConfig {
        auth_timeout: cfg.auth_timeout,
        auth_tries: cfg.auth_tries,
        acceptance_wait_time: cfg.acceptance_wait_time,
        acceptance_wait_time_max: cfg.acceptance_wait_time_max,
        master_sign_pub,
        ..MinionAuthConfig::default()
    };
    let mut auth = MinionAuth::new(me.clone(), acfg, cached, &mut Rng);
    auth.start(Instant::now(), &mut Rng)
        .map_err(|e| LinkError::Local(e.to_string()))?;
    let mut timeouts = 0u32;
    loop {
        if let Some(frame) = auth.poll_transmit() {
            match client.request(frame, cfg.auth_timeout).await {
                Ok(reply) => auth.handle_reply(&reply, Instant::now()),
                Err(TransportError::Timeout(_)) => {
                    timeouts += 1;
                    // Failover walks on to the next master after one unanswered attempt
                    // (Salt sets auth_tries to 0 with failover).
                    if cfg.give_up_on_timeout {
                        return Err(LinkError::Unreachable(master.host.clone()));
                    }
                    auth.handle_timeout(Instant::now() + cfg.auth_timeout, &mut Rng)
                        .map_err(|e| LinkError::Local(e.to_string()))?;
                }
                Err(e) => return Err(LinkError::Local(e.to_string())),
            }
        }
        while let Some(ev) = auth.poll_event() {
            match ev {
                AuthEvent::Accepted(c) => {
                    if c.master_key_new {
                        pki::write_master_pub(&cfg.pki_dir, &c.master_pub)
                            .map_err(|e| LinkError::Local(e.to_string()))?;
                    }
                    return Ok(c);
                }
                AuthEvent::Pending => info!(
                    master = %master.host,
                    wait = ?cfg.acceptance_wait_time,
                    "key is pending acceptance on the master (salt-key -a {}); retrying",
                    me.id
                ),
                AuthEvent::Rejected if cfg.rejected_retry => {
                    warn!(master = %master.host, "key rejected; retrying (rejected_retry)")
                }
                AuthEvent::Rejected => return Err(LinkError::Rejected),
                AuthEvent::Full => return Err(LinkError::Full(master.host.clone())),
                AuthEvent::MasterKeyChanged => {
                    return Err(LinkError::MasterKeyChanged(master.host.clone()));
                }
                AuthEvent::TimedOut => debug!(master = %master.host, "auth timed out; retrying"),
                AuthEvent::Invalid(e) => {
                    warn!(master = %master.host, error = %e, "invalid auth reply; retrying")
                }
            }
        }
        if timeouts > 0 && timeouts.is_multiple_of(3) {
            debug!(master = %master.host, timeouts, "master not answering auth");
        }
        if let Some(t) = auth.poll_timeout() {
            tokio::time::sleep_until(t.into()).await;
            auth.handle_timeout(Instant::now(), &mut Rng)
                .map_err(|e| LinkError::Local(e.to_string()))?;
        }
    }
}

/// The publish subscription for one master, decoding and filtering jobs for this minion.
pub struct JobFeed {
    sub: Subscriber,
    /// Turns payloads into jobs for this minion.
    pub decoder: PublishDecoder,
}

pub use brine_proto::feed::{Feed, PublishDecoder, Skip};

/// Log why a publish was not run: a warning for what a genuine master never sends (bad
/// signature, undecryptable, replayed), a debug line for the routine (not targeted, duplicate).
pub fn log_skip(why: &Skip) {
    if why.is_rejection() {
        warn!(reason = %why, "publish dropped");
    } else {
        debug!(reason = %why, "publish not run here");
    }
}

impl JobFeed {
    /// Subscribe to `host:port` (topics per `zmq_filtering`).
    ///
    /// # Errors
    /// [`LinkError::Local`] for a bad endpoint.
    pub fn connect(
        ctx: &Context,
        cfg: &LinkConfig,
        host: &str,
        port: u16,
    ) -> Result<Self, LinkError> {
        let opts = SocketOptions {
            identity: Some(cfg.id.as_bytes().to_vec()),
            ..SocketOptions::default()
        };
        let topic = sha1_hex(cfg.id.as_bytes());
        let topics: Vec<&[u8]> = if cfg.zmq_filtering {
            vec![b"broadcast", topic.as_bytes()]
        } else {
            vec![b""]
        };
        let sub = Subscriber::connect(ctx, &tcp_endpoint(host, port), &topics, &opts)
            .map_err(|e| LinkError::Local(e.to_string()))?;
        Ok(Self {
            sub,
            decoder: PublishDecoder::new(&cfg.id),
        })
    }

    /// The next raw publish payload.
    ///
    /// # Errors
    /// [`LinkError::Local`] if the socket closed.
    pub async fn next_raw(&mut self) -> Result<Vec<u8>, LinkError> {
        let mut frames = self
            .sub
            .recv()
            .await
            .map_err(|e| LinkError::Local(e.to_string()))?;
        frames
            .pop()
            .ok_or_else(|| LinkError::Local("empty publish".into()))
    }
}
