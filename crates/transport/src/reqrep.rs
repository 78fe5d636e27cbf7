//! The request channel: the master's ROUTER, and REQ/DEALER clients.

use std::time::Duration;

use crate::TransportError;
use crate::context::Context;
use crate::driver::{self, Handle, Multipart};
use crate::options::{SocketOptions, open};
use crate::pubsub::{last_endpoint, port_of};

/// A bound ROUTER socket (the master's ret port).
#[derive(Debug)]
pub struct Router {
    h: Handle,
    endpoint: String,
}

/// One request received by a [`Router`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouterRequest {
    /// The peer's routing id (pass it back to [`Router::reply`]).
    pub peer: Vec<u8>,
    /// The payload frame (after the empty delimiter a REQ peer sends).
    pub payload: Vec<u8>,
    /// Whether the peer framed it as REQ does (`[id, "", payload]`), so the reply needs the
    /// delimiter too.
    pub delimited: bool,
    /// Envelope frames between the routing id and the delimiter, sent back as they came: the
    /// request id of a REQ with `ZMQ_REQ_CORRELATE`, or the ids of proxies in between.
    pub route: Vec<Vec<u8>>,
}

impl Router {
    /// Bind a ROUTER socket on `endpoint` (port 0 picks a free port).
    ///
    /// # Errors
    /// [`TransportError::Zmq`] if the address cannot be bound.
    pub fn bind(
        ctx: &Context,
        endpoint: &str,
        opts: &SocketOptions,
    ) -> Result<Self, TransportError> {
        let s = open(ctx, zmq::ROUTER, endpoint, opts, true, |s| {
            s.set_router_handover(true)
        })?;
        let endpoint = last_endpoint(&s).unwrap_or_else(|| endpoint.to_owned());
        Ok(Self {
            h: driver::spawn(s, "router", opts.inbound_queue)?,
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

    /// The next request. Messages that are not `[id, payload]` or `[id, envelope.., "",
    /// payload]` are skipped (a peer speaking some other pattern).
    ///
    /// # Errors
    /// [`TransportError::Closed`] if the socket is gone.
    pub async fn recv(&mut self) -> Result<RouterRequest, TransportError> {
        loop {
            let mut m = self.h.rx.recv().await.ok_or(TransportError::Closed)?;
            if m.len() == 2 {
                let payload = m.pop().expect("invariant: 2 frames");
                let peer = m.pop().expect("invariant: 2 frames");
                return Ok(RouterRequest {
                    peer,
                    payload,
                    delimited: false,
                    route: Vec::new(),
                });
            }
            // `[id, envelope.., "", payload]`: the delimiter is the last frame but one, and
            // no envelope frame before it is empty.
            let n = m.len();
            if n >= 3 && m[n - 2].is_empty() && m[1..n - 2].iter().all(|f| !f.is_empty()) {
                let payload = m.pop().expect("invariant: >= 3 frames");
                m.pop();
                let peer = m.remove(0);
                return Ok(RouterRequest {
                    peer,
                    payload,
                    delimited: true,
                    route: m,
                });
            }
            tracing::debug!(frames = n, "router: ignoring oddly framed message");
        }
    }

    /// A sender that can reply from other tasks.
    pub fn replier(&self) -> RouterReplier {
        RouterReplier {
            tx: self.h.tx.clone(),
        }
    }

    /// Reply to `req`.
    ///
    /// # Errors
    /// [`TransportError::Closed`] if the socket is gone.
    pub async fn reply(&self, req: &RouterRequest, payload: Vec<u8>) -> Result<(), TransportError> {
        self.replier().reply(req, payload).await
    }
}

/// Sends replies through a [`Router`] (cloneable, for handler tasks).
#[derive(Debug, Clone)]
pub struct RouterReplier {
    tx: tokio::sync::mpsc::Sender<Multipart>,
}

impl RouterReplier {
    /// Reply to `req`.
    ///
    /// # Errors
    /// [`TransportError::Closed`] if the socket is gone.
    pub async fn reply(&self, req: &RouterRequest, payload: Vec<u8>) -> Result<(), TransportError> {
        let mut m = Vec::with_capacity(3 + req.route.len());
        m.push(req.peer.clone());
        m.extend(req.route.iter().cloned());
        if req.delimited {
            m.push(Vec::new());
        }
        m.push(payload);
        self.tx.send(m).await.map_err(|_| TransportError::Closed)
    }
}

/// A REQ client with Salt's semantics: one request at a time; on timeout the socket is closed
/// and a new one (a new TCP connection) is made for the next request — unless
/// [`SocketOptions::keep_on_timeout`] is set: then the next request goes out on the same
/// connection and libzmq drops a late reply to the abandoned one.
#[derive(Debug)]
pub struct ReqClient {
    ctx: Context,
    endpoint: String,
    opts: SocketOptions,
    h: Option<Handle>,
}

impl ReqClient {
    /// A client for `endpoint`. Nothing is connected until the first request; connecting never
    /// blocks, even if no server is listening.
    pub fn new(ctx: &Context, endpoint: &str, opts: SocketOptions) -> Self {
        Self {
            ctx: ctx.clone(),
            endpoint: endpoint.to_owned(),
            opts,
            h: None,
        }
    }

    /// The endpoint this client talks to.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    fn socket(&mut self) -> Result<&mut Handle, TransportError> {
        if self.h.is_none() {
            let s = open(
                &self.ctx,
                zmq::REQ,
                &self.endpoint,
                &self.opts,
                false,
                |_| Ok(()),
            )?;
            self.h = Some(driver::spawn(s, "req", 1)?);
        }
        Ok(self.h.as_mut().expect("invariant: just created"))
    }

    /// Send `payload` and wait up to `timeout` for the reply frame.
    ///
    /// # Errors
    /// [`TransportError::Timeout`] (the socket is discarded), or [`TransportError::Closed`].
    pub async fn request(
        &mut self,
        payload: Vec<u8>,
        timeout: Duration,
    ) -> Result<Vec<u8>, TransportError> {
        let keep = self.opts.keep_on_timeout;
        let h = self.socket()?;
        // A reply the driver read after the last request was abandoned is not ours.
        while h.rx.try_recv().is_ok() {}
        let exchange = async {
            h.tx.send(vec![payload])
                .await
                .map_err(|_| TransportError::Closed)?;
            let mut reply = h.rx.recv().await.ok_or(TransportError::Closed)?;
            reply.pop().ok_or(TransportError::Closed)
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => {
                self.h = None;
                Err(e)
            }
            Err(_) => {
                if !keep {
                    self.h = None;
                }
                Err(TransportError::Timeout(timeout))
            }
        }
    }

    /// Close the current socket (the next request opens a new connection).
    pub fn reset(&mut self) {
        self.h = None;
    }
}

/// A DEALER socket: asynchronous requests to a ROUTER, framed `["", payload]` like REQ.
#[derive(Debug)]
pub struct Dealer {
    h: Handle,
}

impl Dealer {
    /// Connect to `endpoint` (returns at once; libzmq reconnects on its own).
    ///
    /// # Errors
    /// [`TransportError::Zmq`] for a malformed endpoint.
    pub fn connect(
        ctx: &Context,
        endpoint: &str,
        opts: &SocketOptions,
    ) -> Result<Self, TransportError> {
        let s = open(ctx, zmq::DEALER, endpoint, opts, false, |_| Ok(()))?;
        Ok(Self {
            h: driver::spawn(s, "dealer", opts.inbound_queue)?,
        })
    }

    /// Queue a request.
    ///
    /// # Errors
    /// [`TransportError::Closed`] if the socket is gone.
    pub async fn send(&self, payload: Vec<u8>) -> Result<(), TransportError> {
        self.h
            .tx
            .send(vec![Vec::new(), payload])
            .await
            .map_err(|_| TransportError::Closed)
    }

    /// The next reply's payload.
    ///
    /// # Errors
    /// [`TransportError::Closed`] if the socket is gone.
    pub async fn recv(&mut self) -> Result<Vec<u8>, TransportError> {
        loop {
            let mut m = self.h.rx.recv().await.ok_or(TransportError::Closed)?;
            if let Some(p) = m.pop() {
                return Ok(p);
            }
        }
    }
}
