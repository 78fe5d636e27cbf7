//! `mofm`: brine's master. It runs brine-master-core's serving core ([`brine_master_core::server`]) for
//! unmodified Salt minions — keys, `_auth`, publishing with master-side targeting, job tracking
//! without `find_job` storms, the embedded job cache, events — and puts a salt-api-shaped HTTP API
//! ([`api`]) with `external_auth` ([`eauth`]) and runners in front of it, which the `brine` CLI
//! family speaks.

#![forbid(unsafe_code)]
#![warn(missing_docs, clippy::print_stdout, clippy::dbg_macro)]

pub mod api;
pub use brine_master_core::eauth;
mod runners;
pub mod web;
mod wheel;

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

pub use brine_master_core::config;
use brine_master_core::config::MasterConfig;
use brine_master_core::lock;
pub use brine_master_core::server::{
    ActiveJob, JobView, MasterCore, PublishError, PublishSpec, Published, Rng, start_time,
    valid_jid,
};
use brine_master_core::server::{Server, random_hex, unix_secs, write_private};
use brine_proto::Value;
use tracing::{info, warn};

use crate::eauth::{Eauth, Perms};

/// A logged-in API session.
#[derive(Debug, Clone)]
pub struct Token {
    /// User name.
    pub user: String,
    /// The eauth backend used.
    pub eauth: String,
    /// What it may do.
    pub perms: Perms,
    /// Unix seconds when it was issued.
    pub start: u64,
    /// Unix seconds when it expires.
    pub expire: u64,
}

pub use brine_master_core::root_token_path;

/// The API's state: the master core plus sessions and `external_auth`.
pub struct Shared {
    core: Arc<MasterCore>,
    tokens: Mutex<HashMap<String, Token>>,
    /// With `eauth_tokens: rediscluster`: tokens live in Redis, shared by every master.
    token_store: Option<brine_master_core::redis_cache::RedisReader>,
    root_token: String,
    eauth: Eauth,
    /// Unix seconds when the API started (`GET /stats`).
    started: u64,
    /// `runner_async`/`wheel_async` calls running ([`MAX_ASYNC_CALLS`] at most).
    async_jobs: Arc<tokio::sync::Semaphore>,
    /// Password checks running at once ([`MAX_PASSWORD_CHECKS`]): each may take seconds (PBKDF2,
    /// PAM's failure delay) on a blocking thread.
    password_checks: tokio::sync::Semaphore,
}

/// `runner_async` and `wheel_async` calls running at most; more are refused (503).
pub const MAX_ASYNC_CALLS: usize = 16;
/// Password checks (logins, `/token`, `/run`) running at once; more wait their turn.
pub const MAX_PASSWORD_CHECKS: usize = 4;

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("core", &self.core)
            .finish_non_exhaustive()
    }
}

impl std::ops::Deref for Shared {
    type Target = MasterCore;
    fn deref(&self) -> &MasterCore {
        &self.core
    }
}

/// The Salt version brine's API and runners report (`X-Salt-Version`, `manage.versions`): the
/// release whose salt-api it answers as.
pub const SALT_VERSION: &str = "3007.17";

/// Redis, which holds the API tokens (`eauth_tokens: rediscluster`), could not be asked about
/// one: the request is refused for now (503), not the token (401).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenStoreDown;

impl Shared {
    /// The session behind an API token: `Ok(None)` for an unknown or expired one. With tokens
    /// kept in Redis, a token Redis cannot confirm (unreachable) is refused with
    /// [`TokenStoreDown`]: it may have been revoked on another master, and the client is told
    /// to retry rather than that its token is bad.
    ///
    /// # Errors
    /// [`TokenStoreDown`] when Redis, which holds the tokens, cannot be asked.
    pub async fn token(&self, tok: &str) -> Result<Option<Token>, TokenStoreDown> {
        if !self.root_token.is_empty()
            && tok.len() == self.root_token.len()
            && openssl::memcmp::eq(tok.as_bytes(), self.root_token.as_bytes())
        {
            return Ok(Some(Token {
                user: "root".into(),
                eauth: "root".into(),
                perms: Perms::Root,
                start: 0,
                expire: u64::MAX,
            }));
        }
        if let Some(store) = &self.token_store {
            let data = match store.token(tok).await {
                Ok(Some(d)) => d,
                Ok(None) => return Ok(None),
                Err(()) => {
                    warn!("API token refused: Redis, which holds the tokens, cannot be asked");
                    return Err(TokenStoreDown);
                }
            };
            let text = |k: &str| data.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
            let num = |k: &str| {
                data.get(k)
                    .and_then(Value::as_i64)
                    .and_then(|n| u64::try_from(n).ok())
                    .unwrap_or(0)
            };
            let (user, eauth) = (text("name"), text("eauth"));
            let Some(perms) = self.eauth.permissions(&eauth, &user) else {
                return Ok(None);
            };
            let t = Token {
                perms,
                user,
                eauth,
                start: num("start"),
                expire: num("expire"),
            };
            return Ok((t.expire > unix_secs()).then_some(t));
        }
        let mut tokens = lock(&self.tokens);
        let Some(t) = tokens.get(tok).cloned() else {
            return Ok(None);
        };
        if t.expire <= unix_secs() {
            tokens.remove(tok);
            return Ok(None);
        }
        Ok(Some(t))
    }

    /// Log in with `external_auth`; the new token and session, `Ok(None)` for credentials
    /// refused.
    ///
    /// # Errors
    /// [`TokenStoreDown`] when the tokens' Redis does not take the new one.
    pub async fn login(
        &self,
        eauth: &str,
        user: &str,
        password: &str,
    ) -> Result<Option<(String, Token)>, TokenStoreDown> {
        let Some(perms) = self.check_password(eauth, user, password).await else {
            return Ok(None);
        };
        let start = unix_secs();
        let t = Token {
            user: user.to_owned(),
            eauth: eauth.to_owned(),
            perms,
            start,
            expire: start + self.cfg.token_expire,
        };
        let tok = random_hex(20);
        if let Some(store) = &self.token_store {
            let data = Value::map()
                .with("start", t.start)
                .with("expire", t.expire)
                .with("name", t.user.as_str())
                .with("eauth", t.eauth.as_str())
                .with("token", tok.as_str());
            if !store.put_token(&tok, &data, self.cfg.token_expire).await {
                warn!(
                    user,
                    "login refused: Redis, which holds the tokens, did not take the new one"
                );
                return Err(TokenStoreDown);
            }
            return Ok(Some((tok, t)));
        }
        lock(&self.tokens).insert(tok.clone(), t.clone());
        Ok(Some((tok, t)))
    }

    /// Unix seconds when the API started.
    pub fn started(&self) -> u64 {
        self.started
    }

    /// The permissions of `user` if `password` is right for `eauth`. Off the async threads:
    /// PAM blocks (and sleeps after a wrong password).
    async fn check_password(&self, eauth: &str, user: &str, password: &str) -> Option<Perms> {
        let (e, b, u, p) = (
            self.eauth.clone(),
            eauth.to_owned(),
            user.to_owned(),
            password.to_owned(),
        );
        let _turn = self.password_checks.acquire().await.ok()?;
        tokio::task::spawn_blocking(move || e.authenticate(&b, &u, &p))
            .await
            .ok()
            .flatten()
    }

    /// A session for credentials checked now, not kept (`POST /run`); `None` if refused.
    pub async fn check_credentials(
        &self,
        eauth: &str,
        user: &str,
        password: &str,
    ) -> Option<Token> {
        let perms = self.check_password(eauth, user, password).await?;
        let start = unix_secs();
        Some(Token {
            user: user.to_owned(),
            eauth: eauth.to_owned(),
            perms,
            start,
            expire: start + 60,
        })
    }

    /// The HTTP API's limits (`rest_cherrypy`).
    pub fn api_limits(&self) -> api::Limits {
        api::Limits {
            max_connections: self.cfg.api_max_connections,
            read_timeout: std::time::Duration::from_secs(self.cfg.api_socket_timeout),
            max_body: self.cfg.api_max_body,
        }
    }

    /// Forget a token (on every master, with tokens in Redis).
    pub async fn logout(&self, tok: &str) {
        if let Some(store) = &self.token_store
            && !store.delete_token(tok).await
        {
            warn!(
                "logout: Redis, which holds the tokens, cannot be asked; the token stays valid until it expires"
            );
        }
        lock(&self.tokens).remove(tok);
    }

    /// Publish a job, after checking `token` may run it on the minions it targets.
    ///
    /// # Errors
    /// [`PublishError`].
    pub async fn publish(
        &self,
        spec: PublishSpec,
        token: &Token,
    ) -> Result<Published, PublishError> {
        let allowed = match token.perms {
            Perms::Root => None,
            Perms::Acl(_) => Some(token.perms.targets_for(&spec.fun)),
        };
        self.core.publish(spec, &token.user, allowed).await
    }
}

/// A bound master: the core's sockets, the API listener, the root token written.
pub struct Mofm {
    server: Server,
    shared: Arc<Shared>,
    api: tokio::net::TcpListener,
}

impl std::fmt::Debug for Mofm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mofm")
            .field("server", &self.server)
            .finish_non_exhaustive()
    }
}

impl Mofm {
    /// Load keys, bind the publish, ret and API ports, write the root token.
    ///
    /// # Errors
    /// [`brine_master_core::CoreError`] naming what failed (pki directory, key file, address in
    /// use, bad `external_auth`).
    pub async fn bind(cfg: MasterConfig) -> Result<Self, brine_master_core::CoreError> {
        let eauth = Eauth::from_config(&cfg.external_auth, cfg.sharedsecret.as_deref())?;
        let eauth = if eauth.uses_pam() {
            let service = cfg.pam_service.clone();
            eauth.with_pam(Arc::new(move |user: &str, password: &str| {
                brine_pam::authenticate(&service, user, password)
            }))
        } else {
            eauth
        };
        let (api_host, api_port) = (cfg.api_host.clone(), cfg.api_port);
        let root_token = random_hex(20);
        write_private(&root_token_path(&cfg.cachedir), root_token.as_bytes())?;
        // The ret and publish ports first: once the API answers, minions can authenticate.
        let server = Server::bind(cfg)?;
        let api = tokio::net::TcpListener::bind((api_host.as_str(), api_port))
            .await
            .map_err(|e| {
                brine_master_core::CoreError::Bind(format!("API {api_host}:{api_port}: {e}"))
            })?;
        let token_store = server
            .core()
            .cfg
            .token_redis
            .as_ref()
            .map(brine_master_core::redis_cache::RedisReader::new);
        let shared = Arc::new(Shared {
            core: server.core(),
            tokens: Mutex::new(HashMap::new()),
            token_store,
            root_token,
            eauth,
            started: unix_secs(),
            async_jobs: Arc::new(tokio::sync::Semaphore::new(MAX_ASYNC_CALLS)),
            password_checks: tokio::sync::Semaphore::new(MAX_PASSWORD_CHECKS),
        });
        Ok(Self {
            server,
            shared,
            api,
        })
    }

    /// The bound ret (request) port.
    pub fn ret_port(&self) -> u16 {
        self.server.ret_port()
    }

    /// The bound publish port.
    pub fn publish_port(&self) -> u16 {
        self.server.publish_port()
    }

    /// The bound HTTP API address.
    pub fn api_addr(&self) -> Option<std::net::SocketAddr> {
        self.api.local_addr().ok()
    }

    /// The API state (for embedding and tests).
    pub fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    /// Serve until `shutdown` resolves.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        self.run_with(None, shutdown).await;
    }

    /// Serve until `shutdown` resolves, being a syndic of the masters above too when `up` is
    /// given (`syndic_master`; masters that syndicate each other).
    pub async fn run_with(
        self,
        up: Option<brine_master_core::upstream::SyndicLinks>,
        shutdown: impl Future<Output = ()>,
    ) {
        info!(
            api = %self.api_addr().map(|a| a.to_string()).unwrap_or_default(),
            "HTTP API serving"
        );
        let api_task = tokio::spawn(api::serve(self.api, self.shared));
        brine_master_core::upstream::serve(self.server, up, shutdown).await;
        api_task.abort();
    }
}
