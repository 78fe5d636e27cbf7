//! `mofm`: brine's master. This first part serves unmodified Salt minions from Salt's own
//! `master` config and pki directory: keys (auto-accept or pending), `_auth`, `_pillar`, start
//! events, returns, and keeps a grains cache for master-side targeting. Publishing jobs (the HTTP
//! API and the `brine` CLI) comes next.

#![forbid(unsafe_code)]
#![warn(missing_docs, clippy::print_stdout, clippy::dbg_macro)]

pub mod config;

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use brine_master::keys::KeyStore;
use brine_master::requests::{Policy, RequestHandler};
use brine_master::secrets::{Secrets, load_or_create_master_key};
use brine_proto::Value;
use brine_proto::auth::MasterIdentity;
use brine_proto::crypt::Entropy;
use brine_transport::{Context, OsEntropy, Publisher, Router, SocketOptions, tcp_endpoint};
use tracing::{debug, info};

use crate::config::MasterConfig;

/// The OS random source.
#[derive(Debug, Clone, Copy, Default)]
pub struct Rng;

impl Entropy for Rng {
    fn fill(&mut self, buf: &mut [u8]) {
        OsEntropy::fill_bytes(buf);
    }
}

/// A bound master: sockets open, keys loaded.
pub struct Mofm {
    cfg: MasterConfig,
    router: Router,
    publisher: Publisher,
    handler: RequestHandler,
    secrets: Arc<Mutex<Secrets>>,
    grains: Arc<Mutex<HashMap<String, Value>>>,
}

impl std::fmt::Debug for Mofm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mofm")
            .field("ret", &self.router.endpoint())
            .field("publish", &self.publisher.endpoint())
            .finish_non_exhaustive()
    }
}

impl Mofm {
    /// Load keys and bind the publish and ret ports.
    ///
    /// # Errors
    /// A message naming what failed (pki directory, key file, address in use).
    pub fn bind(cfg: MasterConfig) -> Result<Self, String> {
        let keys = KeyStore::open(&cfg.pki_dir).map_err(|e| e.to_string())?;
        let key = load_or_create_master_key(&cfg.pki_dir)?;
        let ctx = Context::new();
        let router = Router::bind(
            &ctx,
            &tcp_endpoint(&cfg.interface, cfg.ret_port),
            &SocketOptions::master_router(),
        )
        .map_err(|e| e.to_string())?;
        let publisher = Publisher::bind(
            &ctx,
            &tcp_endpoint(&cfg.interface, cfg.publish_port),
            &SocketOptions::master_pub(),
        )
        .map_err(|e| e.to_string())?;
        let identity = MasterIdentity::new(key, publisher.port());
        let secrets = Arc::new(Mutex::new(Secrets::new(&mut Rng)));
        let policy = Policy {
            danger_auto_accept: cfg.auto_accept,
            danger_open_mode: cfg.open_mode,
        };
        let handler = RequestHandler::new(keys, identity, secrets.clone(), policy, Box::new(Rng));
        Ok(Self {
            cfg,
            router,
            publisher,
            handler,
            secrets,
            grains: Arc::new(Mutex::new(HashMap::new())),
        })
    }

    /// The bound ret (request) port.
    pub fn ret_port(&self) -> u16 {
        self.router.port()
    }

    /// The bound publish port.
    pub fn publish_port(&self) -> u16 {
        self.publisher.port()
    }

    /// Salt's AES rotation request: `brine-key`/`salt-key` write `cachedir/.dfn` after deleting or
    /// rejecting a key (`rotate_aes_key`). Checked every second (Salt: every `loop_interval`).
    fn check_dropfile(&mut self) {
        let dfn = self.cfg.cachedir.join(".dfn");
        if !dfn.exists() {
            return;
        }
        {
            use std::os::unix::fs::PermissionsExt as _;
            let _ = std::fs::set_permissions(&dfn, std::fs::Permissions::from_mode(0o600));
        }
        if let Err(e) = std::fs::remove_file(&dfn) {
            tracing::warn!(path = %dfn.display(), error = %e, "cannot remove the AES dropfile");
            return;
        }
        self.secrets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .rotate(&mut Rng);
        info!("AES key rotated (dropfile); minions re-authenticate on their next publish");
    }

    /// Serve until `shutdown` resolves.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) {
        info!(
            ret = %self.router.endpoint(),
            publish = %self.publisher.endpoint(),
            pki = %self.cfg.pki_dir.display(),
            "mofm serving"
        );
        tokio::pin!(shutdown);
        let mut maintenance = tokio::time::interval(std::time::Duration::from_secs(1));
        loop {
            tokio::select! {
                () = &mut shutdown => {
                    info!("shutting down");
                    return;
                }
                _ = maintenance.tick() => self.check_dropfile(),
                req = self.router.recv() => {
                    let Ok(req) = req else { return };
                    let peer = String::from_utf8_lossy(&req.peer).into_owned();
                    let h = self.handler.handle(&req.payload, &peer);
                    if self.router.reply(&req, h.reply).await.is_err() {
                        return;
                    }
                    for e in h.events {
                        info!(tag = %e.tag, "event");
                        debug!(tag = %e.tag, data = ?e.data, "event data");
                    }
                    for r in h.returns {
                        info!(jid = %r.jid, minion_id = %r.id, "return");
                    }
                    if let Some((id, g)) = h.grains {
                        self.grains
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .insert(id, g);
                    }
                }
            }
        }
    }
}
