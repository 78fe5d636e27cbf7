//! The publish channel: the master's PUB and the minion's SUB.

use crate::TransportError;
use crate::context::Context;
use crate::driver::{self, Handle, Multipart};
use crate::options::{SocketOptions, open};

/// A bound PUB socket (the master's publish port).
#[derive(Debug)]
pub struct Publisher {
    h: Handle,
    endpoint: String,
}

impl Publisher {
    /// Bind a PUB socket on `endpoint` (`tcp://127.0.0.1:4505`; port 0 picks a free port).
    ///
    /// # Errors
    /// [`TransportError::Zmq`] if the address cannot be bound.
    pub fn bind(
        ctx: &Context,
        endpoint: &str,
        opts: &SocketOptions,
    ) -> Result<Self, TransportError> {
        let s = open(ctx, zmq::PUB, endpoint, opts, true, |_| Ok(()))?;
        let endpoint = last_endpoint(&s).unwrap_or_else(|| endpoint.to_owned());
        Ok(Self {
            h: driver::spawn(s, "pub", 1)?,
            endpoint,
        })
    }

    /// The bound endpoint, with the real port.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The bound TCP port.
    pub fn port(&self) -> u16 {
        port_of(&self.endpoint)
    }

    /// Publish one single-frame message (Salt's default, `zmq_filtering: False`).
    ///
    /// # Errors
    /// [`TransportError::Closed`] if the socket is gone.
    pub async fn send(&self, payload: Vec<u8>) -> Result<(), TransportError> {
        self.send_multipart(vec![payload]).await
    }

    /// Publish `[topic, payload]` (`zmq_filtering: True`: topic is `sha1_hex(id)`,
    /// `broadcast` or `syndic`).
    ///
    /// # Errors
    /// [`TransportError::Closed`] if the socket is gone.
    pub async fn send_topic(&self, topic: &[u8], payload: Vec<u8>) -> Result<(), TransportError> {
        self.send_multipart(vec![topic.to_vec(), payload]).await
    }

    async fn send_multipart(&self, m: Multipart) -> Result<(), TransportError> {
        self.h.tx.send(m).await.map_err(|_| TransportError::Closed)
    }
}

/// A connected SUB socket (a minion's view of a master's publish port).
#[derive(Debug)]
pub struct Subscriber {
    h: Handle,
}

impl Subscriber {
    /// Connect to `endpoint` and subscribe to `topics` (`[b""]` for everything). Returns at
    /// once: libzmq connects in the background and keeps reconnecting.
    ///
    /// # Errors
    /// [`TransportError::Zmq`] for a malformed endpoint.
    pub fn connect(
        ctx: &Context,
        endpoint: &str,
        topics: &[&[u8]],
        opts: &SocketOptions,
    ) -> Result<Self, TransportError> {
        let s = open(ctx, zmq::SUB, endpoint, opts, false, |s| {
            topics.iter().try_for_each(|t| s.set_subscribe(t))
        })?;
        Ok(Self {
            h: driver::spawn(s, "sub", opts.inbound_queue)?,
        })
    }

    /// The next published message (its frames: `[payload]` or `[topic, payload]`).
    ///
    /// # Errors
    /// [`TransportError::Closed`] if the socket is gone.
    pub async fn recv(&mut self) -> Result<Multipart, TransportError> {
        self.h.rx.recv().await.ok_or(TransportError::Closed)
    }
}

pub(crate) fn last_endpoint(s: &zmq::Socket) -> Option<String> {
    s.get_last_endpoint().ok()?.ok()
}

pub(crate) fn port_of(endpoint: &str) -> u16 {
    endpoint
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or(0)
}
