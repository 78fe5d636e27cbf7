//! One tokio task per ZeroMQ socket.
//!
//! libzmq sockets are not thread-safe and signal readiness through an edge-triggered file
//! descriptor (`ZMQ_FD`) whose meaning is "look at `ZMQ_EVENTS` again". The driver owns the
//! socket, registers that descriptor with tokio, and moves whole multipart messages between the
//! socket and two bounded channels. Nothing else touches the socket, so reads and writes can
//! never steal each other's wake-ups.

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, RawFd};

use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc;
use tracing::{debug, warn};

/// A multipart message.
pub type Multipart = Vec<Vec<u8>>;

/// Messages waiting in the driver for the socket to accept them.
const MAX_PENDING_OUT: usize = 1024;

/// Borrowed `ZMQ_FD`: owned by libzmq, so never closed here.
struct ZmqFd(RawFd);

impl AsRawFd for ZmqFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

/// The application's half of a driven socket.
#[derive(Debug)]
pub(crate) struct Handle {
    /// Messages received by the socket.
    pub(crate) rx: mpsc::Receiver<Multipart>,
    /// Messages for the socket to send.
    pub(crate) tx: mpsc::Sender<Multipart>,
}

/// Start a driver task for `sock`. Dropping the returned [`Handle`]'s sender ends the task and
/// closes the socket.
pub(crate) fn spawn(
    sock: zmq::Socket,
    label: &'static str,
    inbound: usize,
) -> std::io::Result<Handle> {
    let fd = sock.get_fd().map_err(std::io::Error::other)?;
    // SAFETY: the descriptor belongs to libzmq and stays open as long as `sock` lives. The
    // driver task owns both and drops the AsyncFd (deregistering it) before the socket.
    #[allow(unsafe_code)]
    let afd = unsafe { AsyncFd::register(ZmqFd(fd)) }.map_err(|e| e.into_parts().1)?;
    let (in_tx, in_rx) = mpsc::channel(inbound.max(1));
    let (out_tx, out_rx) = mpsc::channel(256);
    tokio::spawn(drive(sock, afd, in_tx, out_rx, label));
    Ok(Handle {
        rx: in_rx,
        tx: out_tx,
    })
}

async fn drive(
    sock: zmq::Socket,
    fd: AsyncFd<ZmqFd>,
    in_tx: mpsc::Sender<Multipart>,
    mut out_rx: mpsc::Receiver<Multipart>,
    label: &'static str,
) {
    let mut pending: VecDeque<Multipart> = VecDeque::new();
    let mut out_open = true;
    let mut spins = 0u32;
    loop {
        let events = match sock.get_events() {
            Ok(e) => e,
            Err(e) => {
                warn!(socket = label, error = %e, "zmq events failed; closing socket");
                break;
            }
        };
        let mut progressed = false;
        let mut in_full = false;
        if events.contains(zmq::POLLIN) {
            match in_tx.try_reserve() {
                Ok(permit) => match sock.recv_multipart(zmq::DONTWAIT) {
                    Ok(m) => {
                        permit.send(m);
                        progressed = true;
                    }
                    Err(zmq::Error::EAGAIN) => {}
                    Err(e) => debug!(socket = label, error = %e, "zmq recv failed"),
                },
                Err(mpsc::error::TrySendError::Full(())) => in_full = true,
                // The application dropped its receiver; keep sending what it queued.
                Err(mpsc::error::TrySendError::Closed(())) => {
                    if let Ok(m) = sock.recv_multipart(zmq::DONTWAIT) {
                        drop(m);
                        progressed = true;
                    }
                }
            }
        }
        if events.contains(zmq::POLLOUT)
            && let Some(m) = pending.front()
        {
            match sock.send_multipart(m.iter(), zmq::DONTWAIT) {
                Ok(()) => {
                    pending.pop_front();
                    progressed = true;
                }
                Err(zmq::Error::EAGAIN) => {}
                Err(e) => {
                    // E.g. EHOSTUNREACH on a ROUTER with mandatory routing: drop the message.
                    debug!(socket = label, error = %e, "zmq send failed; message dropped");
                    pending.pop_front();
                    progressed = true;
                }
            }
        }
        if !out_open && (pending.is_empty() || !progressed) {
            // The application dropped its sender: hand over what the socket takes now, then
            // close (LINGER decides what libzmq still flushes).
            break;
        }
        if progressed {
            spins += 1;
            if spins.is_multiple_of(64) {
                tokio::task::yield_now().await;
            }
            continue;
        }
        tokio::select! {
            ready = fd.readable() => match ready {
                Ok(mut guard) => guard.clear_ready(),
                Err(e) => {
                    warn!(socket = label, error = %e, "zmq fd failed; closing socket");
                    break;
                }
            },
            msg = out_rx.recv(), if out_open && pending.len() < MAX_PENDING_OUT => match msg {
                Some(m) => pending.push_back(m),
                None => out_open = false,
            },
            permit = in_tx.reserve(), if in_full => drop(permit),
        }
    }
    // Deregister from the reactor before libzmq closes the descriptor.
    drop(fd);
    drop(sock);
}
