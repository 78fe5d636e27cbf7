//! A pool of libzmq contexts.
//!
//! libzmq caps a context at 1023 sockets by default and the `zmq` crate cannot raise the cap, so
//! a process that needs more (a load tool simulating thousands of minions) spreads its sockets
//! over several contexts. Each context has one I/O thread.

use std::sync::{Arc, Mutex};

/// Sockets per libzmq context before a new one is started (libzmq's default cap is 1023).
const SOCKETS_PER_CONTEXT: usize = 1000;

/// Shared handle to this process's libzmq contexts. Cheap to clone.
#[derive(Clone, Default)]
pub struct Context {
    inner: Arc<Mutex<Pool>>,
}

#[derive(Default)]
struct Pool {
    current: Option<zmq::Context>,
    used: usize,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Context")
    }
}

impl Context {
    /// A new pool.
    pub fn new() -> Self {
        Self::default()
    }

    pub(crate) fn socket(&self, kind: zmq::SocketType) -> Result<zmq::Socket, zmq::Error> {
        let mut pool = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if pool.current.is_none() || pool.used >= SOCKETS_PER_CONTEXT {
            pool.current = Some(zmq::Context::new());
            pool.used = 0;
        }
        pool.used += 1;
        pool.current
            .as_ref()
            .expect("invariant: a context was just ensured")
            .socket(kind)
    }
}
