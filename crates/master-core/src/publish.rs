//! Publishing jobs: stamp the serial, encrypt with the current AES key, sign with `master.pem`
//! (`sign_pub_messages`, Salt's default), and send on the PUB socket — one frame, or with
//! `zmq_filtering` a `[topic, payload]` per targeted minion (`sha1_hex(id)`) or `broadcast`.

use std::sync::{Arc, Mutex};

use brine_proto::crypt::{Entropy, PrivateKey, SigAlgo, sha1_hex};
use brine_proto::envelope::Publish;
use brine_proto::loads::JobLoad;
use brine_transport::{Publisher, TransportError};

use crate::secrets::Secrets;

/// Publishes jobs for one master.
pub struct JobPublisher {
    sock: Publisher,
    secrets: Arc<Mutex<Secrets>>,
    key: PrivateKey,
    /// `sign_pub_messages` (master side, default true).
    pub sign: bool,
    /// `zmq_filtering`.
    pub zmq_filtering: bool,
}

impl std::fmt::Debug for JobPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobPublisher")
            .field("endpoint", &self.sock.endpoint())
            .finish_non_exhaustive()
    }
}

impl JobPublisher {
    /// A publisher on a bound PUB socket.
    pub fn new(sock: Publisher, secrets: Arc<Mutex<Secrets>>, key: PrivateKey) -> Self {
        Self {
            sock,
            secrets,
            key,
            sign: true,
            zmq_filtering: false,
        }
    }

    /// The PUB socket's port.
    pub fn port(&self) -> u16 {
        self.sock.port()
    }

    /// Publish `job`; `minions` are the expected targets (used for `zmq_filtering` topics when
    /// the target type is resolved on the master). Returns the serial used.
    ///
    /// # Errors
    /// [`TransportError`] if the socket is gone; signing failures are reported the same way.
    pub async fn publish(
        &self,
        mut job: JobLoad,
        minions: Option<&[String]>,
        rng: &mut (dyn Entropy + Send),
    ) -> Result<i64, TransportError> {
        let (aes, serial) = {
            let mut s = self
                .secrets
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let serial = s.next_serial();
            (s.aes().clone(), serial)
        };
        job.serial = Some(serial);
        let signer = self.sign.then_some((&self.key, SigAlgo::Pkcs1v15Sha1));
        let frame = Publish::seal(&job.to_value(), &aes, signer, rng)
            .map_err(|e| TransportError::Io(std::io::Error::other(e.to_string())))?
            .encode();
        match (self.zmq_filtering, minions) {
            (false, _) => self.sock.send(frame).await?,
            (true, Some(ids)) if matches!(job.tgt_type(), "glob" | "pcre" | "list") => {
                for id in ids {
                    self.sock
                        .send_topic(sha1_hex(id.as_bytes()).as_bytes(), frame.clone())
                        .await?;
                }
            }
            (true, _) => self.sock.send_topic(b"broadcast", frame).await?,
        }
        Ok(serial)
    }
}
