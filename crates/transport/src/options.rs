//! Socket options, with Salt's defaults (Salt 3007.17, `salt/transport/zeromq.py`).

use std::time::Duration;

use rand::Rng as _;

/// ZMTP heartbeats (`ZMQ_HEARTBEAT_*`). Salt 3006/3008 masters use 10 s / 30 s on PUB (and, in
/// 3008, ROUTER); minions set none. libzmq answers a peer's PINGs whether or not this is set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heartbeat {
    /// Interval between PINGs.
    pub interval: Duration,
    /// Drop the peer if nothing arrives for this long after a PING.
    pub timeout: Duration,
}

impl Heartbeat {
    /// Salt 3006/3008's master setting: 10 s interval, 30 s timeout.
    pub const SALT_MASTER: Self = Self {
        interval: Duration::from_secs(10),
        timeout: Duration::from_secs(30),
    };
}

/// Salt's reconnect schedule (`recon_default`, `recon_max`, `recon_randomize`): each socket gets
/// a first retry delay drawn uniformly from `[default, default + max]`, doubling up to `max`, so
/// a fleet reconnecting after a master restart is spread out instead of stampeding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReconnectBackoff {
    /// `recon_default` (1000 ms).
    pub default: Duration,
    /// `recon_max` (10000 ms).
    pub max: Duration,
    /// `recon_randomize` (true).
    pub randomize: bool,
}

impl Default for ReconnectBackoff {
    fn default() -> Self {
        Self {
            default: Duration::from_millis(1000),
            max: Duration::from_millis(10_000),
            randomize: true,
        }
    }
}

impl ReconnectBackoff {
    /// The `ZMQ_RECONNECT_IVL` for one socket.
    pub fn initial_interval(&self) -> Duration {
        if self.randomize {
            let lo = self.default.as_millis() as u64;
            let hi = lo + self.max.as_millis() as u64;
            Duration::from_millis(rand::rng().random_range(lo..=hi))
        } else {
            self.default
        }
    }
}

/// Options applied when a socket is created.
#[derive(Debug, Clone)]
pub struct SocketOptions {
    /// `ZMQ_ROUTING_ID`: the minion id on a SUB, `salt-req/minion/<id>/<pid>/<n>` on a 3006 REQ.
    pub identity: Option<Vec<u8>>,
    /// `ZMQ_LINGER`.
    pub linger: Duration,
    /// TCP keepalive: `(idle, interval, count)`, `None` for libzmq's default (OS settings).
    pub tcp_keepalive: Option<(i32, i32, i32)>,
    /// Reconnect schedule (connecting sockets).
    pub reconnect: ReconnectBackoff,
    /// `ZMQ_SNDHWM`/`ZMQ_RCVHWM` (Salt's `pub_hwm` is 1000; 0 = unlimited).
    pub hwm: i32,
    /// `ZMQ_BACKLOG` (Salt's `zmq_backlog`: 1000).
    pub backlog: i32,
    /// ZMTP heartbeats, if this side sends them.
    pub heartbeat: Option<Heartbeat>,
    /// Received messages buffered between the socket and the application.
    pub inbound_queue: usize,
    /// `ZMQ_HANDSHAKE_IVL`: `None` keeps libzmq's 30 s; `Some(ZERO)` disables the timer.
    ///
    /// libzmq keeps each I/O thread's timers in one ordered map and cancels a timer by walking
    /// it from the start, so a socket with thousands of connections completing their handshakes
    /// at once (an auth storm) spends its time walking that map. A peer that completes the
    /// ZMTP greeting costs no more than one that does not, so the timer protects little.
    pub handshake_ivl: Option<Duration>,
    /// libzmq's per-connection batch buffers (`ZMQ_IN_BATCH_SIZE`/`ZMQ_OUT_BATCH_SIZE`, 8 KiB
    /// by default; draft options, compiled in by `.cargo/config.toml`). A master holds two
    /// connections per minion, each with one decode and one encode buffer: with 8 KiB these are
    /// ~25 KiB of the ~60 KiB a connected minion costs. Messages larger than the buffer are
    /// read into and sent from their own allocation, so small buffers cost throughput only for
    /// bursts of small messages. `None`: libzmq's default.
    pub batch_size: Option<i32>,
    /// REQ only: `ZMQ_REQ_RELAXED` + `ZMQ_REQ_CORRELATE`, so a timed-out request does not cost
    /// a new connection (see [`crate::ReqClient`]). Salt's minions reconnect instead: against
    /// an overloaded master each timeout then adds a TCP and ZMTP handshake on both sides.
    pub keep_on_timeout: bool,
    /// `ZMQ_MAXMSGSIZE`: a peer announcing a larger message is disconnected before anything is
    /// allocated for it. `None`: no limit (libzmq's default, and Salt's).
    pub max_msg_size: Option<i64>,
}

impl Default for SocketOptions {
    fn default() -> Self {
        Self {
            identity: None,
            linger: Duration::from_millis(1),
            tcp_keepalive: Some((300, -1, -1)),
            reconnect: ReconnectBackoff::default(),
            hwm: 1000,
            backlog: 1000,
            heartbeat: None,
            inbound_queue: 1024,
            handshake_ivl: None,
            batch_size: None,
            keep_on_timeout: false,
            max_msg_size: None,
        }
    }
}

impl SocketOptions {
    /// Salt's master ROUTER: linger 1 s, keepalive 60/15/3, large queues.
    pub fn master_router() -> Self {
        Self {
            linger: Duration::from_millis(1000),
            tcp_keepalive: Some((60, 15, 3)),
            hwm: 0,
            handshake_ivl: Some(Duration::ZERO),
            batch_size: Some(MASTER_BATCH_SIZE),
            ..Self::default()
        }
    }

    /// Salt's master PUB: `pub_hwm` 1000 per subscriber.
    pub fn master_pub() -> Self {
        Self {
            linger: Duration::from_millis(1),
            handshake_ivl: Some(Duration::ZERO),
            batch_size: Some(MASTER_BATCH_SIZE),
            ..Self::default()
        }
    }

    pub(crate) fn apply(&self, s: &mut zmq::Socket) -> Result<(), zmq::Error> {
        if let Some(b) = self.batch_size {
            for opt in [ZMQ_IN_BATCH_SIZE, ZMQ_OUT_BATCH_SIZE] {
                match set_int(s, opt, b) {
                    // A libzmq built without the draft options: keep its default buffers.
                    Err(zmq::Error::EINVAL) => {
                        tracing::debug!("libzmq without ZMQ_IN/OUT_BATCH_SIZE; default buffers");
                        break;
                    }
                    r => r?,
                }
            }
        }
        if let Some(id) = &self.identity {
            s.set_identity(id)?;
        }
        if self.keep_on_timeout && s.get_socket_type()? == zmq::REQ {
            s.set_req_relaxed(true)?;
            s.set_req_correlate(true)?;
        }
        s.set_linger(self.linger.as_millis() as i32)?;
        if let Some((idle, intvl, cnt)) = self.tcp_keepalive {
            s.set_tcp_keepalive(1)?;
            s.set_tcp_keepalive_idle(idle)?;
            s.set_tcp_keepalive_intvl(intvl)?;
            s.set_tcp_keepalive_cnt(cnt)?;
        }
        s.set_reconnect_ivl(self.reconnect.initial_interval().as_millis() as i32)?;
        s.set_reconnect_ivl_max(self.reconnect.max.as_millis() as i32)?;
        s.set_sndhwm(self.hwm)?;
        s.set_rcvhwm(self.hwm)?;
        s.set_backlog(self.backlog)?;
        if let Some(ivl) = self.handshake_ivl {
            s.set_handshake_ivl(ivl.as_millis() as i32)?;
        }
        if let Some(max) = self.max_msg_size {
            s.set_maxmsgsize(max)?;
        }
        if let Some(hb) = self.heartbeat {
            s.set_heartbeat_ivl(hb.interval.as_millis() as i32)?;
            s.set_heartbeat_timeout(hb.timeout.as_millis() as i32)?;
            s.set_heartbeat_ttl(hb.timeout.as_millis() as i32)?;
        }
        Ok(())
    }
}

/// Batch buffer size on the master's sockets (see [`SocketOptions::batch_size`]).
pub const MASTER_BATCH_SIZE: i32 = 512;
const ZMQ_IN_BATCH_SIZE: i32 = 101;
const ZMQ_OUT_BATCH_SIZE: i32 = 102;

/// `zmq_setsockopt` for an `int` option the `zmq` crate has no setter for.
fn set_int(s: &mut zmq::Socket, opt: i32, value: i32) -> Result<(), zmq::Error> {
    // SAFETY: the pointer is the live libzmq socket owned by `s` (borrowed mutably for the
    // call); libzmq reads `size_of::<c_int>()` bytes from `&value` during the call only.
    #[allow(unsafe_code)]
    let rc = unsafe {
        zmq_sys::zmq_setsockopt(
            s.as_mut_ptr(),
            opt,
            std::ptr::from_ref(&value).cast(),
            size_of::<i32>(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        // SAFETY: reads libzmq's thread-local errno, no arguments.
        #[allow(unsafe_code)]
        let errno = unsafe { zmq_sys::zmq_errno() };
        Err(zmq::Error::from_raw(errno))
    }
}

/// Create a socket of `kind` with `opts` applied, then bind or connect it to `endpoint`.
pub(crate) fn open(
    ctx: &crate::Context,
    kind: zmq::SocketType,
    endpoint: &str,
    opts: &SocketOptions,
    bind: bool,
    setup: impl FnOnce(&zmq::Socket) -> Result<(), zmq::Error>,
) -> Result<zmq::Socket, crate::TransportError> {
    use crate::TransportError;
    let mut s = ctx
        .socket(kind)
        .map_err(|e| TransportError::zmq("socket", endpoint, e))?;
    opts.apply(&mut s)
        .and_then(|()| setup(&s))
        .map_err(|e| TransportError::zmq("setsockopt", endpoint, e))?;
    if bind {
        s.bind(endpoint)
            .map_err(|e| TransportError::zmq("bind", endpoint, e))?;
    } else {
        s.connect(endpoint)
            .map_err(|e| TransportError::zmq("connect", endpoint, e))?;
    }
    Ok(s)
}
