//! A small HTTP/1.1 client for mofm's API (plain HTTP on loopback or through a TLS proxy's
//! local end; `Connection: close`, JSON bodies). Finding the API: `--url` (and a token from
//! `--token`, `BRINE_TOKEN` or a login), else the local master's config (`-c`): its
//! `rest_cherrypy` address and the root token in its cachedir.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::{Value as Json, json};

/// A connection target and credentials.
#[derive(Debug)]
pub struct Api {
    host: String,
    port: u16,
    token: String,
    /// Requests made and bytes received, for [`Api::stats`].
    requests: AtomicU64,
    received: AtomicU64,
}

/// Bytes received from the API by this process: `BRINE_CLI_STATS=1` prints them when the
/// command ends (measuring what following a job costs).
pub fn stats_wanted() -> bool {
    std::env::var_os("BRINE_CLI_STATS").is_some_and(|v| !v.is_empty() && v != "0")
}

/// A failed call.
#[derive(Debug)]
pub enum ApiError {
    /// The master could not be reached.
    Connect(String),
    /// The API answered with an error status.
    Status(u16, String),
}

impl ApiError {
    /// Whether trying again later may succeed: the master could not be reached, or answered
    /// that it (or what is behind it) is unavailable for now (502, 503, 504).
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Connect(_) | Self::Status(502..=504, _))
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Connect(m) => write!(
                f,
                "The salt master could not be contacted. Is master running? ({m})"
            ),
            Self::Status(401, m) => write!(f, "Authentication error occurred. ({m})"),
            Self::Status(403, m) => write!(f, "Authorization error occurred. ({m})"),
            Self::Status(c, m) => write!(f, "API error {c}: {m}"),
        }
    }
}

/// How to reach the API: the command-line options `brine` and `brine-run` share.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ConnectArgs {
    /// Configuration directory of the local master (API address, root token).
    #[arg(short = 'c', long = "config-dir", default_value = "/etc/salt")]
    pub config_dir: PathBuf,
    /// The API URL of a remote master (http://host:port).
    #[arg(long)]
    pub url: Option<String>,
    /// An API token (else BRINE_TOKEN, -a, or the local root token).
    #[arg(long)]
    pub token: Option<String>,
    /// Log in with this external_auth backend (e.g. file).
    #[arg(short = 'a', long = "auth")]
    pub eauth: Option<String>,
    /// User name for -a (else BRINE_USERNAME).
    #[arg(long)]
    pub username: Option<String>,
    /// Password for -a (else BRINE_PASSWORD).
    #[arg(long)]
    pub password: Option<String>,
}

fn parse_url(url: &str) -> Result<(String, u16), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url}: only http:// URLs are supported (put TLS in a proxy)"))?;
    let hostport = rest.split('/').next().unwrap_or(rest);
    let (h, p) = match hostport.rsplit_once(':') {
        Some((h, p)) => (h, p.parse().map_err(|_| format!("{url}: bad port"))?),
        None => (hostport, 80),
    };
    Ok((h.trim_matches(['[', ']']).to_owned(), p))
}

/// Why the API could not be reached or logged in to (the text is for the user).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct ConnectError(pub String);

impl From<ConnectError> for String {
    fn from(e: ConnectError) -> Self {
        e.0
    }
}

impl Api {
    /// Resolve from the arguments and the local master config in `config_dir`.
    ///
    /// # Errors
    /// [`ConnectError`]: no address, no token, a refused login.
    pub fn connect(a: &ConnectArgs) -> Result<Self, ConnectError> {
        Self::resolve(a).map_err(ConnectError)
    }

    fn resolve(a: &ConnectArgs) -> Result<Self, String> {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let token = a.token.clone().or_else(|| env("BRINE_TOKEN"));
        // The local master's config, read once, when the API address or the root token is
        // to come from it.
        let local = if a.url.is_none() || (a.eauth.is_none() && token.is_none()) {
            let o =
                brine_daemon::config::load(&a.config_dir, "master").map_err(|e| e.to_string())?;
            Some(
                brine_master_core::config::MasterConfig::from_options(&o)
                    .map_err(|e| e.to_string())?,
            )
        } else {
            None
        };
        let (host, port) = match (&a.url, &local) {
            (Some(u), _) => parse_url(u)?,
            (None, None) => unreachable!("the local config is read when there is no --url"),
            (None, Some(c)) => {
                let host = match c.api_host.as_str() {
                    "0.0.0.0" => "127.0.0.1".to_owned(),
                    "::" => "::1".to_owned(),
                    h => h.to_owned(),
                };
                (host, c.api_port)
            }
        };
        let mut api = Self {
            host,
            port,
            token: String::new(),
            requests: AtomicU64::new(0),
            received: AtomicU64::new(0),
        };
        if let Some(eauth) = &a.eauth {
            let user = a
                .username
                .clone()
                .or_else(|| env("BRINE_USERNAME"))
                .ok_or("-a needs --username (or BRINE_USERNAME)")?;
            let pass = a
                .password
                .clone()
                .or_else(|| env("BRINE_PASSWORD"))
                .ok_or("-a needs --password (or BRINE_PASSWORD)")?;
            let r = api
                .post(
                    "/login",
                    &json!({"username": user, "password": pass, "eauth": eauth}),
                )
                .map_err(|e| match e {
                    ApiError::Status(401, _) => "Authentication failed".to_owned(),
                    other => other.to_string(),
                })?;
            api.token = r["return"][0]["token"]
                .as_str()
                .ok_or("login answer without a token")?
                .to_owned();
        } else if let Some(t) = token {
            api.token = t;
        } else if let Some(c) = &local {
            let p = brine_master_core::root_token_path(&c.cachedir);
            api.token = std::fs::read_to_string(&p)
                .map_err(|e| {
                    format!(
                        "{}: {e} (run as the master's user, or use --token / -a)",
                        p.display()
                    )
                })?
                .trim()
                .to_owned();
        }
        Ok(api)
    }

    /// `(requests, bytes received)` so far.
    pub fn stats(&self) -> (u64, u64) {
        (
            self.requests.load(Ordering::Relaxed),
            self.received.load(Ordering::Relaxed),
        )
    }

    /// GET `path`.
    ///
    /// # Errors
    /// [`ApiError`].
    pub fn get(&self, path: &str) -> Result<Json, ApiError> {
        self.call("GET", path, None)
    }

    /// POST JSON to `path`.
    ///
    /// # Errors
    /// [`ApiError`].
    pub fn post(&self, path: &str, body: &Json) -> Result<Json, ApiError> {
        self.call("POST", path, Some(body))
    }

    fn call(&self, method: &str, path: &str, body: Option<&Json>) -> Result<Json, ApiError> {
        let connect =
            |e: std::io::Error| ApiError::Connect(format!("{}:{}: {e}", self.host, self.port));
        let mut s = TcpStream::connect((self.host.as_str(), self.port)).map_err(connect)?;
        s.set_read_timeout(Some(Duration::from_secs(24 * 3600)))
            .ok();
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}:{}\r\nConnection: close\r\nAccept: application/json\r\n",
            self.host, self.port
        );
        if !self.token.is_empty() {
            req.push_str(&format!("X-Auth-Token: {}\r\n", self.token));
        }
        if method == "POST" {
            req.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                body.len()
            ));
        }
        req.push_str("\r\n");
        req.push_str(&body);
        s.write_all(req.as_bytes()).map_err(connect)?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).map_err(connect)?;
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.received.fetch_add(raw.len() as u64, Ordering::Relaxed);
        let split = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .ok_or_else(|| ApiError::Connect("truncated HTTP answer".into()))?;
        let head = String::from_utf8_lossy(&raw[..split]).to_string();
        let mut payload = raw[split + 4..].to_vec();
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        if head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            payload = dechunk(&payload);
        }
        let v: Json = serde_json::from_slice(&payload)
            .unwrap_or_else(|_| Json::String(String::from_utf8_lossy(&payload).into_owned()));
        if !(200..300).contains(&status) {
            let msg = v
                .get("return")
                .and_then(Json::as_str)
                .map_or_else(|| v.to_string(), str::to_owned);
            return Err(ApiError::Status(status, msg));
        }
        Ok(v)
    }
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = b.windows(2).position(|w| w == b"\r\n") {
        let size = usize::from_str_radix(
            String::from_utf8_lossy(&b[..eol])
                .split(';')
                .next()
                .unwrap_or("")
                .trim(),
            16,
        )
        .unwrap_or(0);
        if size == 0 || eol + 2 + size > b.len() {
            break;
        }
        out.extend_from_slice(&b[eol + 2..eol + 2 + size]);
        b = &b[(eol + 4 + size).min(b.len())..];
    }
    out
}
