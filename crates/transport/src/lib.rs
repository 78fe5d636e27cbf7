//! ZeroMQ transport for brine: Salt's publish channel (PUB/SUB, port 4505) and request channel
//! (ROUTER/REQ/DEALER, port 4506) on tokio.
//!
//! This crate owns sockets, their options (Salt's defaults), reconnect backoff and the byte
//! frames; it does not interpret them (that is `brine-proto`). The ZeroMQ implementation — today
//! libzmq 4.3.4 through the `zmq` crate — is hidden behind this crate's own types
//! ([`Publisher`], [`Subscriber`], [`Router`], [`ReqClient`], [`Dealer`]), so it can be
//! replaced without touching the daemons. `docs/transport.md` records why libzmq was chosen.
//!
//! libzmq gives us, for free and identical to the Salt peers: ZMTP 3.1 with `SUBSCRIBE`
//! commands, answering ZMTP `PING` with `PONG`, asynchronous connects that never block on an
//! absent server, and reconnection.

#![warn(missing_docs, clippy::print_stdout, clippy::dbg_macro)]

mod context;
mod driver;
mod options;
mod pubsub;
mod reqrep;

pub use context::Context;
pub use driver::Multipart;
pub use options::{Heartbeat, MASTER_BATCH_SIZE, ReconnectBackoff, SocketOptions};
pub use pubsub::{Publisher, Subscriber};
pub use reqrep::{Dealer, ReqClient, Router, RouterReplier, RouterRequest};

/// Why a transport operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// libzmq refused an operation (bad endpoint, address in use...).
    #[error("zmq {op} {endpoint:?}: {source}")]
    Zmq {
        /// What we were doing.
        op: &'static str,
        /// The endpoint involved, if any.
        endpoint: String,
        /// libzmq's error.
        source: zmq::Error,
    },
    /// Registering the socket with the runtime failed.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// No reply within the timeout (the socket has been replaced).
    #[error("request timed out after {0:?}")]
    Timeout(std::time::Duration),
    /// The socket's driver task has stopped.
    #[error("socket closed")]
    Closed,
}

impl TransportError {
    pub(crate) fn zmq(op: &'static str, endpoint: &str, source: zmq::Error) -> Self {
        Self::Zmq {
            op,
            endpoint: endpoint.to_owned(),
            source,
        }
    }
}

/// `tcp://host:port`, bracketing IPv6 literals.
pub fn tcp_endpoint(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("tcp://[{host}]:{port}")
    } else {
        format!("tcp://{host}:{port}")
    }
}

/// The OS CSPRNG as a [`brine_proto`]-style entropy source (kept here: brine-proto reads no
/// randomness itself).
#[derive(Debug, Clone, Copy, Default)]
pub struct OsEntropy;

impl OsEntropy {
    /// Fill `buf` from the OS.
    pub fn fill_bytes(buf: &mut [u8]) {
        use rand::TryRngCore as _;
        rand::rngs::OsRng
            .try_fill_bytes(buf)
            .expect("invariant: the OS random source is available");
    }
}

/// The one entropy source brine's daemons, tools and tests hand to brine-proto.
impl brine_proto::crypt::Entropy for OsEntropy {
    fn fill(&mut self, buf: &mut [u8]) {
        Self::fill_bytes(buf);
    }
}

/// Microseconds since the Unix epoch (0 on a clock set before it): the one wall-clock helper.
pub fn unix_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// Seconds since the Unix epoch.
pub fn unix_secs() -> u64 {
    unix_micros() / 1_000_000
}
