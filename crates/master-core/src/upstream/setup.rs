//! Setting a syndic up: the syndic's minion identity (`id`, `pki_dir`) from
//! `CONFIG_DIR/minion`, read as salt-syndic reads it (the same keys and defaults as the brine
//! minion; only the identity and auth timing are used), and serving the core with its links to
//! the masters above. The `syndic` binary uses it, and `mofm` when a master of masters is
//! itself a syndic (masters that syndicate each other).

use std::path::Path;
use std::sync::Arc;

use brine_proto::auth::MinionIdentity;

use super::UpstreamConfig;
use crate::CoreError;
use crate::config::MasterConfig;
use crate::server::MasterCore;

/// The upstream side, ready to run.
#[derive(Debug)]
pub struct SyndicLinks {
    cfg: UpstreamConfig,
    me: MinionIdentity,
}

impl SyndicLinks {
    /// Read `config_dir/minion` for the syndic's identity and load (or create) its key, when
    /// `master` lists a `syndic_master`. `None` without one.
    ///
    /// # Errors
    /// [`CoreError`] naming the bad option or the unusable pki directory.
    pub fn from_config_dir(
        config_dir: &Path,
        master: &MasterConfig,
        id_override: Option<String>,
    ) -> Result<Option<Self>, CoreError> {
        if master.syndic_master.is_empty() {
            return Ok(None);
        }
        let minion_file = config_dir.join("minion");
        let bad_minion =
            |e: &dyn std::fmt::Display| CoreError::config(&minion_file.display().to_string(), e);
        let opts = brine_daemon::config::load(config_dir, "minion").map_err(|e| bad_minion(&e))?;
        let id_override = id_override.or_else(|| master.id.clone());
        let mcfg = brine_minion_side::config::MinionConfig::from_options(
            &opts,
            config_dir,
            id_override,
            brine_minion_side::config::resolve_host_id,
        )
        .map_err(|e| bad_minion(&e))?;
        let mut link = mcfg.link();
        // A syndic keeps trying every upper master; it does not walk a failover list.
        link.give_up_on_timeout = false;
        let key = brine_minion_side::pki::load_or_create(&mcfg.pki_dir)
            .map_err(|e| CoreError::key(&mcfg.pki_dir, e))?;
        let me =
            MinionIdentity::new(&mcfg.id, key).map_err(|e| CoreError::key(&mcfg.pki_dir, e))?;
        let Some(cfg) = UpstreamConfig::from_master(master, link)? else {
            return Ok(None);
        };
        Ok(Some(Self { cfg, me }))
    }

    /// The syndic's id toward the upper masters.
    pub fn id(&self) -> &str {
        &self.me.id
    }

    /// Run the links until `shutdown` resolves (returns still batched are spooled).
    pub async fn run(self, core: Arc<MasterCore>, shutdown: impl Future<Output = ()>) {
        super::run(core, self.cfg, self.me, shutdown).await;
    }
}

/// Run `server` and, if configured, the upstream links, until `shutdown`; the links stop after
/// the server (returns that arrived meanwhile are spooled, not lost).
pub async fn serve(
    server: crate::server::Server,
    up: Option<SyndicLinks>,
    shutdown: impl Future<Output = ()>,
) {
    let stop = Arc::new(tokio::sync::Notify::new());
    let up_task = up.map(|u| {
        let core = server.core();
        let stop = stop.clone();
        tokio::spawn(async move { u.run(core, stop.notified()).await })
    });
    server.run(shutdown).await;
    stop.notify_one();
    if let Some(t) = up_task {
        let _ = t.await;
    }
}
