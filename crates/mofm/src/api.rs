//! The HTTP API, in the shape of salt-api's `rest_cherrypy`: `POST /login`, `POST /logout`,
//! `POST /` (lowstate: `local`, `local_async`, `runner`, `wheel`), `GET /jobs`,
//! `GET /jobs/<jid>`, `GET /minions`, `GET /minions/<id>`, `POST /minions`, `GET /keys`,
//! `GET /stats`, `GET /events` (server-sent events with salt-api's `tag:` line), and a web UI
//! (`app`, `static`: [`crate::web`]).
//!
//! Every endpoint but `/` and `/login` needs a token: the `X-Auth-Token` header, or for the
//! read-only `GET` routes the `session_id` cookie `/login` sets (a browser's `EventSource`
//! cannot send a header). None or an unknown one is 401, a function or target the token's ACL
//! does not allow is 403, and nothing is published. Plain HTTP: put TLS in front (a reverse
//! proxy) for remote use.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use brine_master_core::jobs::Missing;
use brine_master_core::json::{from_json, to_json};
use brine_proto::Value;
use serde_json::{Map, Value as Json, json};
use tokio_stream::StreamExt as _;
use tracing::{info, warn};

use crate::runners;
use crate::{PublishError, PublishSpec, Shared, Token};

type S = State<Arc<Shared>>;

/// An API error: status and message, as JSON.
#[derive(Debug)]
pub struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"status": self.0.as_u16(), "return": self.1});
        (self.0, axum::Json(body)).into_response()
    }
}

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, msg.into())
}

fn forbidden(msg: impl Into<String>) -> ApiError {
    ApiError(StatusCode::FORBIDDEN, msg.into())
}

/// What keeps slow, idle or flooding HTTP clients from tying up the master.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Open connections at most; more are closed as soon as they are accepted.
    pub max_connections: usize,
    /// The longest a client may take to send a request's headers (or to start its next
    /// request on a kept-alive connection), and then its body.
    pub read_timeout: Duration,
    /// The largest request body (413 beyond).
    pub max_body: usize,
}

/// Serve the API on `listener` until the task is dropped.
///
/// Each connection takes one of [`Limits::max_connections`] slots for its lifetime, so API
/// clients can never hold more descriptors than that, whatever they do: the ret and publish
/// ports keep the rest for minions. Headers must arrive within [`Limits::read_timeout`] and
/// the body within as much again, or the connection is closed.
pub async fn serve(listener: tokio::net::TcpListener, shared: Arc<Shared>) {
    let limits = shared.api_limits();
    let app = router(shared);
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let mut last_refusal_log: Option<std::time::Instant> = None;
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of descriptors, most likely: back off instead of spinning.
                warn!(error = %e, "HTTP API accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            drop(stream);
            if last_refusal_log.is_none_or(|t| t.elapsed() > Duration::from_secs(5)) {
                warn!(
                    %peer,
                    max_connections = limits.max_connections,
                    "HTTP API connection closed: too many open connections (rest_cherrypy max_connections)"
                );
                last_refusal_log = Some(std::time::Instant::now());
            }
            continue;
        };
        let app = app.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let _ = stream.set_nodelay(true);
            let svc =
                hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let mut app = app.clone();
                    tower_service::Service::call(&mut app, req)
                });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(limits.read_timeout)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                .with_upgrades();
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "HTTP API connection closed");
            }
        });
    }
}

/// Read the whole request body within the read timeout (and within the size limit) before any
/// handler runs: a client trickling its body holds a slot for that long at most.
async fn read_body_in_time(
    State(shared): S,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let limits = shared.api_limits();
    let (parts, body) = req.into_parts();
    match tokio::time::timeout(
        limits.read_timeout,
        axum::body::to_bytes(body, limits.max_body),
    )
    .await
    {
        Err(_) => {
            warn!(path = %parts.uri.path(), "HTTP API request refused: body not received in time");
            ApiError(
                StatusCode::REQUEST_TIMEOUT,
                "request body not received in time".into(),
            )
            .into_response()
        }
        Ok(Err(e)) => {
            warn!(path = %parts.uri.path(), error = %e, "HTTP API request refused: body too large or unreadable");
            ApiError(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "request body larger than {} bytes (rest_cherrypy max_request_body_size)",
                    limits.max_body
                ),
            )
            .into_response()
        }
        Ok(Ok(bytes)) => {
            next.run(axum::extract::Request::from_parts(parts, Body::from(bytes)))
                .await
        }
    }
}

/// The API's routes.
pub fn router(shared: Arc<Shared>) -> axum::Router {
    axum::Router::new()
        .route("/", get(index).post(lowstate))
        .route("/login", get(login_get).post(login))
        .route("/token", post(token_route))
        .route("/run", post(run_route))
        .route("/logout", post(logout))
        .route("/jobs", get(jobs))
        .route("/jobs/{jid}", get(job))
        .route("/minions", get(minions).post(minions_post))
        .route("/minions/{id}", get(minion))
        .route("/keys", get(keys))
        .route("/keys/{mid}", get(key_of))
        .route("/hook", post(hook))
        .route("/hook/{*tag}", post(hook))
        .route("/stats", get(stats))
        .route("/events", get(events))
        .fallback(not_found)
        // As salt-api: clients (pepper) read the Salt version they talk to from every answer.
        .layer(axum::middleware::map_response(
            |mut r: Response| async move {
                r.headers_mut().insert(
                    "x-salt-version",
                    axum::http::HeaderValue::from_static(crate::SALT_VERSION),
                );
                r
            },
        ))
        // The web UI's files, before the API's routes (GET and HEAD only).
        .layer(axum::middleware::from_fn_with_state(
            shared.clone(),
            crate::web::serve_ui,
        ))
        // The body is read (in time, within the size limit) by `read_body_in_time`.
        .layer(DefaultBodyLimit::disable())
        .layer(axum::middleware::from_fn_with_state(
            shared.clone(),
            read_body_in_time,
        ))
        .with_state(shared)
}

async fn not_found() -> ApiError {
    ApiError(StatusCode::NOT_FOUND, "no such route".into())
}

/// The cookie `/login` sets: salt-api's name, so clients that keep salt-api's session cookie
/// keep brine's. `HttpOnly` and `SameSite=Strict` (salt-api sets neither): scripts on the page
/// cannot read it, and another site cannot make a browser send it.
const SESSION_COOKIE: &str = "session_id";

/// The `session_id` cookie's value, if the request carries one.
fn session_cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == SESSION_COOKIE)
        .map(|(_, v)| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

/// How a route takes its token.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Auth {
    /// `X-Auth-Token` only: routes that act (`POST /`, `POST /minions`). A cookie a browser
    /// sends by itself would let any page the user visits act in their name.
    Header,
    /// `X-Auth-Token`, else the session cookie: read-only `GET` routes and `/logout`.
    HeaderOrCookie,
}

/// The token a request presents: `X-Auth-Token`, else (where `auth` allows) the cookie.
fn presented_token(headers: &HeaderMap, auth: Auth) -> Option<String> {
    headers
        .get("x-auth-token")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
        .or_else(|| {
            (auth == Auth::HeaderOrCookie)
                .then(|| session_cookie(headers))
                .flatten()
        })
}

async fn token_of(shared: &Shared, headers: &HeaderMap, auth: Auth) -> Result<Token, ApiError> {
    let Some(tok) = presented_token(headers, auth) else {
        return Err(ApiError(
            StatusCode::UNAUTHORIZED,
            "no token: log in at /login and send X-Auth-Token".into(),
        ));
    };
    match shared.token(&tok).await {
        Ok(Some(t)) => Ok(t),
        Ok(None) => {
            warn!("API request with an unknown or expired token refused");
            Err(ApiError(
                StatusCode::UNAUTHORIZED,
                "unknown or expired token".into(),
            ))
        }
        Err(crate::TokenStoreDown) => Err(ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            "the token store (Redis) cannot be asked now; retry".into(),
        )),
    }
}

/// A request body as JSON: JSON, or form fields (repeated keys become lists).
fn body_json(headers: &HeaderMap, body: &Bytes) -> Result<Json, ApiError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    parse_body(ct, body)
}

/// The lowstate chunks of a `POST /` body with content type `ct`.
///
/// # Errors
/// A message for bodies that are not JSON or form data, or not objects.
pub fn parse_lowstate(ct: &str, body: &[u8]) -> Result<Vec<Json>, String> {
    match parse_body(ct, body).map_err(|e| e.1)? {
        Json::Array(a) => Ok(a),
        one @ Json::Object(_) => Ok(vec![one]),
        _ => Err("lowstate must be an object or a list of objects".into()),
    }
}

/// The publish a `local` lowstate chunk asks for.
///
/// # Errors
/// A message naming what is missing or malformed.
pub fn publish_spec(chunk: &Json) -> Result<PublishSpec, String> {
    spec_of(chunk).map_err(|e| e.1)
}

fn parse_body(ct: &str, body: &[u8]) -> Result<Json, ApiError> {
    if ct.contains("json") || body.first().is_some_and(|b| matches!(b, b'{' | b'[')) {
        return serde_json::from_slice(body).map_err(|e| bad(format!("invalid JSON: {e}")));
    }
    let pairs: Vec<(String, String)> =
        serde_urlencoded::from_bytes(body).map_err(|e| bad(format!("invalid form: {e}")))?;
    let mut m = Map::new();
    for (k, v) in pairs {
        match m.get_mut(&k) {
            Some(Json::Array(a)) => a.push(Json::String(v)),
            Some(prev) => *prev = json!([prev.clone(), v]),
            None if k == "arg" => {
                m.insert(k, json!([v]));
            }
            None => {
                m.insert(k, Json::String(v));
            }
        }
    }
    Ok(Json::Object(m))
}

async fn index() -> axum::Json<Json> {
    axum::Json(json!({"return": "Welcome", "clients": CLIENTS}))
}

/// A login (`/login`, `/token`): the new token, or 401 (logged as `refused`) or 503.
async fn logged_in(
    shared: &Shared,
    eauth: &str,
    user: &str,
    password: &str,
    refused: &'static str,
) -> Result<(String, Token), ApiError> {
    match shared.login(eauth, user, password).await {
        Ok(Some(x)) => Ok(x),
        Ok(None) => {
            warn!(user, eauth, "{refused}");
            Err(ApiError(
                StatusCode::UNAUTHORIZED,
                "could not authenticate".into(),
            ))
        }
        Err(crate::TokenStoreDown) => Err(ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            "the token store (Redis) cannot take a new token now; retry".into(),
        )),
    }
}

/// The lowstate clients served.
const CLIENTS: [&str; 7] = [
    "local",
    "local_async",
    "local_batch",
    "runner",
    "runner_async",
    "wheel",
    "wheel_async",
];

async fn login(State(shared): S, headers: HeaderMap, body: Bytes) -> Result<Response, ApiError> {
    let b = body_json(&headers, &body)?;
    let field = |k: &str| b.get(k).and_then(Json::as_str).unwrap_or("");
    let (user, eauth) = (field("username"), field("eauth"));
    let (tok, t) = logged_in(&shared, eauth, user, field("password"), "API login refused").await?;
    info!(user, eauth, "API login");
    let body = json!({"return": [{
        "token": tok, "start": t.start, "expire": t.expire,
        "user": t.user, "eauth": t.eauth, "perms": t.perms.to_json(),
    }]});
    let cookie = format!(
        "{SESSION_COOKIE}={tok}; Path=/; Max-Age={}; HttpOnly; SameSite=Strict",
        t.expire.saturating_sub(t.start)
    );
    Ok((
        [("x-auth-token", tok), (header::SET_COOKIE.as_str(), cookie)],
        axum::Json(body),
    )
        .into_response())
}

/// The most lowstate chunks one request may carry (each may be a publish or a password
/// check; salt-api has no limit).
pub const MAX_CHUNKS: usize = 64;

fn at_most(chunks: Vec<Json>) -> Result<Vec<Json>, ApiError> {
    if chunks.len() > MAX_CHUNKS {
        warn!(
            chunks = chunks.len(),
            "API request with too many lowstate chunks refused"
        );
        return Err(bad(format!(
            "{} lowstate chunks in one request; at most {MAX_CHUNKS}",
            chunks.len()
        )));
    }
    Ok(chunks)
}

/// The lowstate chunks of a request body (a list, or one object).
fn chunks_of(headers: &HeaderMap, body: &Bytes) -> Result<Vec<Json>, ApiError> {
    at_most(match body_json(headers, body)? {
        Json::Array(a) => a,
        o @ Json::Object(_) => vec![o],
        _ => return Err(bad("expected a lowstate object or a list of them")),
    })
}

/// `POST /token`: salt-api's `auth.mk_token` — a token for each set of credentials, as a bare
/// list `[{token, start, expire, name, eauth}]`, no session.
async fn token_route(
    State(shared): S,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let mut out = Vec::new();
    for c in chunks_of(&headers, &body)? {
        let field = |k: &str| c.get(k).and_then(Json::as_str).unwrap_or("").to_owned();
        let (user, eauth) = (field("username"), field("eauth"));
        let (tok, t) = logged_in(
            &shared,
            &eauth,
            &user,
            &field("password"),
            "API /token refused",
        )
        .await?;
        info!(user, eauth, "API token made (/token)");
        out.push(json!({"token": tok, "start": t.start, "expire": t.expire,
            "name": t.user, "eauth": t.eauth}));
    }
    Ok(axum::Json(Json::Array(out)).into_response())
}

/// `POST /run`: lowstate without a session, each chunk carrying its own `token` or
/// `username`/`password`/`eauth` (checked every time; no token is made).
async fn run_route(
    State(shared): S,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let chunks = chunks_of(&headers, &body)?;
    let mut out = Vec::with_capacity(chunks.len());
    for c in &chunks {
        let token = if let Some(tok) = c.get("token").and_then(Json::as_str) {
            match shared.token(tok).await {
                Ok(Some(t)) => t,
                Ok(None) => {
                    warn!("API /run with an unknown or expired token refused");
                    return Err(ApiError(
                        StatusCode::UNAUTHORIZED,
                        "unknown or expired token".into(),
                    ));
                }
                Err(crate::TokenStoreDown) => {
                    return Err(ApiError(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "the token store (Redis) cannot be asked now; retry".into(),
                    ));
                }
            }
        } else {
            let field = |k: &str| c.get(k).and_then(Json::as_str).unwrap_or("");
            let (user, eauth) = (field("username"), field("eauth"));
            let Some(t) = shared
                .check_credentials(eauth, user, field("password"))
                .await
            else {
                warn!(user, eauth, "API /run refused: bad credentials");
                return Err(ApiError(
                    StatusCode::UNAUTHORIZED,
                    "could not authenticate".into(),
                ));
            };
            t
        };
        out.extend(run_chunk(&shared, &token, c).await?);
    }
    Ok(axum::Json(json!({"return": out})).into_response())
}

/// `GET /login`: how to log in, as salt-api answers it.
async fn login_get() -> Response {
    (
        [(header::WWW_AUTHENTICATE, "Session")],
        axum::Json(json!({"status": "200 OK", "return": "Please log in"})),
    )
        .into_response()
}

/// `GET /keys/<mid>`: wheel `key.finger` for that minion (`{"return": {status: {mid: fp}}}`).
async fn key_of(
    State(shared): S,
    headers: HeaderMap,
    Path(mid): Path<String>,
) -> Result<axum::Json<Json>, ApiError> {
    let token = token_of(&shared, &headers, Auth::HeaderOrCookie).await?;
    if !token.perms.allows_wheel_fun("key.finger") {
        return Err(forbidden(format!(
            "{} may not read keys (@wheel)",
            token.user
        )));
    }
    if !brine_proto::auth::valid_minion_id(&mid) {
        return Err(bad(format!("{mid:?} is not a minion id")));
    }
    // An exact id, not a glob: `/keys/*` names no minion.
    let found = crate::wheel::value(&shared, &token, "key.finger", &json!({"match": mid}))
        .await
        .map_err(bad)?;
    let only: Map<String, Json> = found
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(status, _)| status.as_str() != "local")
        .filter_map(|(status, ids)| {
            let fp = ids.get(&mid)?;
            Some((status.clone(), json!({ &mid: fp })))
        })
        .collect();
    Ok(axum::Json(json!({"return": only})))
}

/// `POST /hook/<tag...>`: salt-api's webhook — fires `salt/netapi/hook/<tag>` with the body
/// (`body` raw, `post` parsed) and the request's headers (without the credentials salt-api
/// would put on the bus: `X-Auth-Token`, `Cookie`, `Authorization`). A token is needed unless
/// `webhook_disable_auth`.
async fn hook(
    State(shared): S,
    headers: HeaderMap,
    tag: Option<Path<String>>,
    body: Bytes,
) -> Result<axum::Json<Json>, ApiError> {
    if !shared.cfg.api_webhook_disable_auth {
        token_of(&shared, &headers, Auth::Header).await?;
    }
    let rest = tag.map(|Path(t)| t).unwrap_or_default();
    let rest = rest.trim_matches('/');
    if rest.chars().any(|c| c.is_control() || c.is_whitespace()) || rest.len() > 512 {
        warn!(tag = ?rest, "webhook with a bad tag refused");
        return Err(bad(
            "a webhook tag is path segments without spaces or control characters",
        ));
    }
    let tag = if rest.is_empty() {
        "salt/netapi/hook".to_owned()
    } else {
        format!("salt/netapi/hook/{rest}")
    };
    let post = if body.is_empty() {
        json!({})
    } else {
        body_json(&headers, &body).unwrap_or_else(|_| json!({}))
    };
    let hdrs: Map<String, Json> = headers
        .iter()
        .filter(|(k, _)| {
            !matches!(
                k.as_str(),
                "x-auth-token" | "cookie" | "authorization" | "proxy-authorization"
            )
        })
        .filter_map(|(k, v)| Some((k.as_str().to_owned(), json!(v.to_str().ok()?))))
        .collect();
    let data = json!({
        "body": String::from_utf8_lossy(&body),
        "post": post,
        "headers": hdrs,
    });
    shared.bus.fire(tag, from_json(&data));
    Ok(axum::Json(json!({"success": true})))
}

async fn logout(State(shared): S, headers: HeaderMap) -> Response {
    if let Some(t) = presented_token(&headers, Auth::HeaderOrCookie) {
        shared.logout(&t).await;
    }
    (
        [(
            header::SET_COOKIE,
            format!("{SESSION_COOKIE}=; Path=/; Max-Age=0; HttpOnly; SameSite=Strict"),
        )],
        axum::Json(json!({"return": "Your token has been cleared"})),
    )
        .into_response()
}

/// `GET /stats`: the API's own figures (salt-api gives CherryPy's). SaltGUI checks it every
/// minute to keep its session and logs out on an error other than 401 and 500.
async fn stats(State(shared): S, headers: HeaderMap) -> Result<axum::Json<Json>, ApiError> {
    if !shared.cfg.api_stats_disable_auth {
        token_of(&shared, &headers, Auth::HeaderOrCookie).await?;
    }
    let now = brine_master_core::server::unix_secs();
    let started = shared.started();
    Ok(axum::Json(json!({"brine": {
        "Enabled": true,
        "Current Time": now,
        "Start Time": started,
        "Uptime": now.saturating_sub(started),
        "Minions Connected": shared.present().await.len(),
        "Jobs Running": shared.active_jobs().await.len(),
    }})))
}

fn to_args(v: Option<&Json>) -> Vec<Value> {
    match v {
        None | Some(Json::Null) => vec![],
        Some(Json::Array(a)) => a.iter().map(from_json).collect(),
        Some(other) => vec![from_json(other)],
    }
}

fn spec_of(chunk: &Json) -> Result<PublishSpec, ApiError> {
    let fun = chunk
        .get("fun")
        .and_then(Json::as_str)
        .ok_or_else(|| bad("lowstate needs fun"))?
        .to_owned();
    let tgt = chunk.get("tgt").ok_or_else(|| bad("lowstate needs tgt"))?;
    let tgt_type = chunk
        .get("tgt_type")
        .or_else(|| chunk.get("expr_form"))
        .and_then(Json::as_str)
        .map(str::to_owned)
        .unwrap_or_else(|| if tgt.is_array() { "list" } else { "glob" }.into());
    let mut arg = to_args(chunk.get("arg"));
    if let Some(Json::Object(kw)) = chunk.get("kwarg")
        && !kw.is_empty()
    {
        let mut m = from_json(&Json::Object(kw.clone()));
        m.insert("__kwarg__", true);
        arg.push(m);
    }
    let timeout = chunk.get("timeout").and_then(|t| {
        t.as_u64()
            .or_else(|| t.as_str().and_then(|s| s.parse().ok()))
    });
    Ok(PublishSpec {
        tgt: from_json(tgt),
        tgt_type,
        fun,
        arg,
        timeout,
        ret: chunk
            .get("ret")
            .and_then(Json::as_str)
            .unwrap_or("")
            .to_owned(),
    })
}

/// A lowstate flag: `true`, or `"true"`/`"True"` from a form.
fn truthy(v: Option<&Json>) -> bool {
    match v {
        Some(Json::Bool(b)) => *b,
        Some(Json::String(s)) => s.eq_ignore_ascii_case("true"),
        _ => false,
    }
}

fn publish_error(e: PublishError) -> ApiError {
    match e {
        PublishError::BadTarget(m) => bad(m),
        PublishError::Denied(m) => forbidden(m),
        PublishError::Transport(m) => ApiError(StatusCode::INTERNAL_SERVER_ERROR, m),
    }
}

/// Salt's runner and wheel clients take `key=value` strings in `arg` as keyword arguments
/// (pepper sends them so to a salt-api that names its version): they move to `kwarg`, the
/// value typed as Salt's CLI types it for what brine's runners take (true/false, null, small
/// integers, JSON lists and maps; anything else, a jid included, stays a string).
fn kwargs_from_args(chunk: &Json) -> Json {
    let Some(args) = chunk.get("arg").and_then(Json::as_array) else {
        return chunk.clone();
    };
    let mut c = chunk.clone();
    let mut kw = c
        .get("kwarg")
        .and_then(Json::as_object)
        .cloned()
        .unwrap_or_default();
    let mut rest = Vec::new();
    for a in args {
        let pair = a.as_str().and_then(|s| s.split_once('=')).filter(|(k, _)| {
            !k.is_empty() && k.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
        });
        match pair {
            Some((k, v)) => {
                kw.insert(k.to_owned(), typed(v));
            }
            None => rest.push(a.clone()),
        }
    }
    c["arg"] = Json::Array(rest);
    if !kw.is_empty() {
        c["kwarg"] = Json::Object(kw);
    }
    c
}

fn typed(v: &str) -> Json {
    match v {
        "true" | "True" => return Json::Bool(true),
        "false" | "False" => return Json::Bool(false),
        "null" | "None" | "~" => return Json::Null,
        _ => {}
    }
    if v.len() <= 15
        && let Ok(n) = v.parse::<i64>()
    {
        return json!(n);
    }
    if (v.starts_with('[') || v.starts_with('{'))
        && let Ok(j) = serde_json::from_str::<Json>(v)
    {
        return j;
    }
    Json::String(v.to_owned())
}

/// Run one lowstate chunk: what it adds to the answer's `return` list (one value, or one per
/// minion for `local_batch`, as salt-api flattens it).
async fn run_chunk(
    shared: &Arc<Shared>,
    token: &Token,
    chunk: &Json,
) -> Result<Vec<Json>, ApiError> {
    if chunk.get("client").and_then(Json::as_str) == Some("local_batch") {
        return local_batch(shared, token, chunk).await;
    }
    run_one(shared, token, chunk).await.map(|v| vec![v])
}

/// The minions that answered job `jid`, with their returns, once it is final.
async fn finished_returns(shared: &Shared, jid: &str) -> BTreeMap<String, Value> {
    if jid.is_empty() {
        return BTreeMap::new();
    }
    shared.wait_job(jid).await;
    shared
        .job_view(jid)
        .await
        .map(|(_, r, _)| r)
        .unwrap_or_default()
}

/// salt-api's `local_batch` (Salt's batch mode): the target is pinged first (with the
/// caller's rights, as Salt's `Batch` does), then the function runs on `batch` of the minions
/// that answered at a time (`N` or `N%`, default `10%`); each return is one `{id: return}`.
async fn local_batch(
    shared: &Arc<Shared>,
    token: &Token,
    chunk: &Json,
) -> Result<Vec<Json>, ApiError> {
    let spec = spec_of(chunk)?;
    let batch = match chunk.get("batch") {
        None | Some(Json::Null) => "10%".to_owned(),
        Some(Json::String(s)) => s.trim().to_owned(),
        Some(Json::Number(n)) => n.to_string(),
        Some(other) => return Err(bad(format!("batch: {other} is not N or N%"))),
    };
    let ping = PublishSpec {
        fun: "test.ping".into(),
        arg: vec![],
        ..spec.clone()
    };
    let p = shared.publish(ping, token).await.map_err(publish_error)?;
    // Only minions the ping was published to: a minion answering a jid it was not sent
    // does not join the batch.
    let sent: std::collections::BTreeSet<&String> = p.minions.iter().collect();
    let up: Vec<String> = finished_returns(shared, &p.jid)
        .await
        .into_keys()
        .filter(|id| sent.contains(id))
        .collect();
    let size = match batch.strip_suffix('%') {
        Some(pct) => {
            let pct: f64 = pct
                .trim()
                .parse()
                .ok()
                .filter(|p: &f64| *p > 0.0 && p.is_finite())
                .ok_or_else(|| bad(format!("batch: {batch:?} is not N or N%")))?;
            ((up.len() as f64 * pct / 100.0).ceil() as usize).max(1)
        }
        None => batch
            .parse::<usize>()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| bad(format!("batch: {batch:?} is not N or N%")))?,
    };
    let mut out = Vec::new();
    for ids in up.chunks(size) {
        let part = PublishSpec {
            tgt: Value::Array(ids.iter().map(Value::str).collect()),
            tgt_type: "list".into(),
            ..spec.clone()
        };
        let p = shared.publish(part, token).await.map_err(publish_error)?;
        for (id, r) in finished_returns(shared, &p.jid).await {
            out.push(json!({ id: field(&r, "return") }));
        }
    }
    Ok(out)
}

/// The runner's return event (salt-api's `full_return`, and what `runner_async` fires).
fn runner_return(token: &Token, fun: &str, chunk: &Json, jid: &str, value: Json) -> (String, Json) {
    let tag = format!("salt/run/{jid}/ret");
    let fun_args = match (chunk.get("arg"), chunk.get("kwarg")) {
        (Some(Json::Array(a)), Some(Json::Object(k))) if !k.is_empty() => {
            let mut v = a.clone();
            v.push(Json::Object(k.clone()));
            Json::Array(v)
        }
        (Some(Json::Array(a)), _) => Json::Array(a.clone()),
        (_, Some(Json::Object(k))) if !k.is_empty() => json!([k]),
        _ => json!([]),
    };
    let data = json!({
        "fun": format!("runner.{fun}"),
        "jid": jid,
        "user": token.user,
        "fun_args": fun_args,
        "_stamp": brine_master_core::events::now_stamp(),
        "return": value,
        "success": true,
    });
    (tag, data)
}

async fn run_one(shared: &Arc<Shared>, token: &Token, chunk: &Json) -> Result<Json, ApiError> {
    let client = chunk.get("client").and_then(Json::as_str).unwrap_or("");
    let normalized;
    let chunk = if matches!(client, "runner" | "wheel" | "runner_async" | "wheel_async") {
        normalized = kwargs_from_args(chunk);
        &normalized
    } else {
        chunk
    };
    match client {
        "local" | "local_async" => {
            let spec = spec_of(chunk)?;
            let p = shared.publish(spec, token).await.map_err(publish_error)?;
            if client == "local_async" {
                return Ok(json!({"jid": p.jid, "minions": p.minions}));
            }
            if p.jid.is_empty() {
                return Ok(json!({}));
            }
            shared.wait_job(&p.jid).await;
            let full = truthy(chunk.get("full_return"));
            let (returns, missing) = shared
                .job_view(&p.jid)
                .await
                .map(|(_, r, m)| (r, m.unwrap_or_default()))
                .unwrap_or_default();
            let mut out: Map<String, Json> = returns
                .into_iter()
                .map(|(id, r)| {
                    let v = if full {
                        let mut v = json!({"ret": field(&r, "return"), "retcode": field(&r, "retcode"), "jid": p.jid});
                        if let Some(o) = r.get("out") {
                            v["out"] = to_json(o);
                        }
                        v
                    } else {
                        field(&r, "return")
                    };
                    (id, v)
                })
                .collect();
            // As salt-api: each targeted minion that did not return is `false`.
            for id in missing.into_keys() {
                out.entry(id).or_insert(Json::Bool(false));
            }
            Ok(Json::Object(out))
        }
        "runner" => {
            let fun = chunk
                .get("fun")
                .and_then(Json::as_str)
                .ok_or_else(|| bad("lowstate needs fun"))?;
            if !token.perms.allows_runner(fun) {
                warn!(user = %token.user, fun, "runner refused by external_auth ACL");
                return Err(forbidden(format!("{} may not run {fun}", token.user)));
            }
            let value = runners::run(shared, token, fun, chunk).await.map_err(bad)?;
            if !truthy(chunk.get("full_return")) {
                return Ok(value);
            }
            // salt-api's `full_return`: the runner's return event.
            let jid = shared.new_jid().await;
            let (tag, data) = runner_return(token, fun, chunk, &jid, value);
            shared.bus.fire(tag.clone(), from_json(&data));
            Ok(json!({"tag": tag, "data": data}))
        }
        "runner_async" | "wheel_async" => {
            // Answered at once with the job's tag; the result comes as its `ret` event.
            let fun = chunk
                .get("fun")
                .and_then(Json::as_str)
                .ok_or_else(|| bad("lowstate needs fun"))?
                .to_owned();
            let wheel = client == "wheel_async";
            let allowed = if wheel {
                token.perms.allows_wheel_fun(&fun)
            } else {
                token.perms.allows_runner(&fun)
            };
            if !allowed {
                warn!(user = %token.user, fun, client, "call refused by external_auth ACL");
                return Err(forbidden(format!("{} may not run {fun}", token.user)));
            }
            let Ok(permit) = shared.async_jobs.clone().try_acquire_owned() else {
                warn!(user = %token.user, fun, "asynchronous runner/wheel call refused: too many running");
                return Err(ApiError(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!(
                        "{} asynchronous runner and wheel calls are running already; retry",
                        crate::MAX_ASYNC_CALLS
                    ),
                ));
            };
            let jid = shared.new_jid().await;
            let tag = format!("salt/{}/{jid}", if wheel { "wheel" } else { "run" });
            let (sh, tok, ch, j) = (shared.clone(), token.clone(), chunk.clone(), jid.clone());
            tokio::spawn(async move {
                let _permit = permit;
                if wheel {
                    crate::wheel::run(&sh, &tok, &fun, &ch, Some(j)).await;
                    return;
                }
                let (value, ok) = match runners::run(&sh, &tok, &fun, &ch).await {
                    Ok(v) => (v, true),
                    Err(e) => (Json::String(e), false),
                };
                let (tag, mut data) = runner_return(&tok, &fun, &ch, &j, value);
                data["success"] = json!(ok);
                sh.bus.fire(tag, from_json(&data));
            });
            Ok(json!({"tag": tag, "jid": jid}))
        }
        "wheel" => {
            let fun = chunk
                .get("fun")
                .and_then(Json::as_str)
                .ok_or_else(|| bad("lowstate needs fun"))?;
            if !token.perms.allows_wheel_fun(fun) {
                warn!(user = %token.user, fun, "wheel call refused by external_auth ACL");
                return Err(forbidden(format!("{} may not run wheel {fun}", token.user)));
            }
            Ok(crate::wheel::run(shared, token, fun, chunk, None).await)
        }
        other => Err(bad(format!(
            "unknown client {other:?} ({})",
            CLIENTS.join(", ")
        ))),
    }
}

async fn lowstate(State(shared): S, headers: HeaderMap, body: Bytes) -> Result<Response, ApiError> {
    let token = token_of(&shared, &headers, Auth::Header).await?;
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let chunks = at_most(parse_lowstate(ct, &body).map_err(bad)?)?;
    let mut out = Vec::with_capacity(chunks.len());
    for c in &chunks {
        out.extend(run_chunk(&shared, &token, c).await?);
    }
    Ok(axum::Json(json!({"return": out})).into_response())
}

async fn minions_post(
    State(shared): S,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let token = token_of(&shared, &headers, Auth::Header).await?;
    let chunk = match body_json(&headers, &body)? {
        Json::Array(mut a) if !a.is_empty() => a.swap_remove(0),
        o @ Json::Object(_) => o,
        _ => return Err(bad("expected a lowstate object")),
    };
    let p = shared
        .publish(spec_of(&chunk)?, &token)
        .await
        .map_err(publish_error)?;
    // 202, as salt-api: the job is published, not done.
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(json!({
            "return": [{"jid": p.jid, "minions": p.minions}],
            "_links": {"jobs": [{"href": format!("/jobs/{}", p.jid)}]},
        })),
    )
        .into_response())
}

/// `GET /jobs` needs what `jobs.list_jobs` needs; `GET /jobs/<jid>`, which shows every
/// return, what `jobs.list_job` needs (salt-api runs those runners with the token).
fn require_jobs(token: &Token, runner: &str) -> Result<(), ApiError> {
    if token.perms.allows_runner(runner) {
        Ok(())
    } else {
        Err(forbidden(format!(
            "{} may not read jobs (@jobs)",
            token.user
        )))
    }
}

async fn jobs(State(shared): S, headers: HeaderMap) -> Result<axum::Json<Json>, ApiError> {
    let token = token_of(&shared, &headers, Auth::HeaderOrCookie).await?;
    require_jobs(&token, "jobs.list_jobs")?;
    let v = runners::run(&shared, &token, "jobs.list_jobs", &json!({}))
        .await
        .map_err(bad)?;
    Ok(axum::Json(json!({"return": [v]})))
}

fn missing_reason(m: Missing) -> &'static str {
    match m {
        Missing::Gone => "Minion did not return. [Not connected]",
        Missing::NoResponse | Missing::NotRunning | Missing::TimedOut => {
            "Minion did not return. [No response]"
        }
    }
}

/// Longest a `GET /jobs/<jid>?wait=` long poll is held.
const LONG_POLL_MAX: Duration = Duration::from_secs(30);

async fn job(
    State(shared): S,
    headers: HeaderMap,
    Path(jid): Path<String>,
    Query(q): Query<BTreeMap<String, String>>,
) -> Result<axum::Json<Json>, ApiError> {
    let token = token_of(&shared, &headers, Auth::HeaderOrCookie).await?;
    require_jobs(&token, "jobs.list_job")?;
    if !crate::valid_jid(&jid) {
        return Err(bad(format!("{jid:?} is not a job id")));
    }
    if q.contains_key("since") || q.contains_key("wait") {
        return job_since(&shared, &jid, &q).await;
    }
    let (load, returns, missing) = shared
        .job_view(&jid)
        .await
        .ok_or_else(|| ApiError(StatusCode::NOT_FOUND, format!("no job {jid}")))?;
    let mut info = runners::summary(&jid, &load);
    info["jid"] = json!(jid);
    info["Minions"] = load.get("minions").map_or_else(|| json!([]), to_json);
    info["Result"] = Json::Object(
        returns
            .iter()
            .map(|(id, r)| (id.clone(), result(r)))
            .collect(),
    );
    info["Finished"] = json!(missing.is_some());
    info["Missing"] = Json::Object(
        missing
            .unwrap_or_default()
            .into_iter()
            .map(|(id, m)| (id, json!(missing_reason(m))))
            .collect(),
    );
    let ret: Map<String, Json> = returns
        .into_iter()
        .map(|(id, r)| (id, field(&r, "return")))
        .collect();
    Ok(axum::Json(json!({"info": [info], "return": [ret]})))
}

/// Field `k` of a stored return, as JSON (`null` when absent).
fn field(r: &Value, k: &str) -> Json {
    r.get(k).map_or(Json::Null, to_json)
}

/// A return as `Result` shows it.
fn result(r: &Value) -> Json {
    json!({"return": field(r, "return"), "retcode": field(r, "retcode"), "success": field(r, "success")})
}

/// brine's extension of `GET /jobs/<jid>` for clients that follow a job: `since=N` gives only
/// the returns after the first N (in the order they arrived) and `Cursor`, the N for the next
/// call; `wait=S` holds the answer until there is something new or the job is final, at most S
/// seconds (30 at most). `Minions` comes with `since=0` only. Following a job this way moves
/// each return once, where re-reading the whole job moves it once per poll.
async fn job_since(
    shared: &Shared,
    jid: &str,
    q: &BTreeMap<String, String>,
) -> Result<axum::Json<Json>, ApiError> {
    let since: usize = match q.get("since") {
        None => 0,
        Some(v) => v
            .parse()
            .map_err(|_| bad(format!("since={v:?} is not a count")))?,
    };
    if let Some(w) = q.get("wait") {
        let secs: f64 = w
            .parse()
            .ok()
            .filter(|s: &f64| s.is_finite() && *s >= 0.0)
            .ok_or_else(|| bad(format!("wait={w:?} is not a number of seconds")))?;
        let limit = Duration::from_secs_f64(secs).min(LONG_POLL_MAX);
        shared.wait_job_change(jid, since, limit).await;
        // Returns often come in bursts: take the rest of the burst in the same answer.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let j = shared
        .job_since(jid, since)
        .await
        .ok_or_else(|| ApiError(StatusCode::NOT_FOUND, format!("no job {jid}")))?;
    let mut info = runners::summary(jid, &j.load);
    info["jid"] = json!(jid);
    if let Some(m) = j.load.get("minions") {
        info["Minions"] = to_json(m);
    }
    info["Result"] = Json::Object(
        j.new
            .iter()
            .map(|(id, r)| (id.clone(), result(r)))
            .collect(),
    );
    info["Cursor"] = json!(j.cursor);
    info["Finished"] = json!(j.missing.is_some());
    info["Missing"] = Json::Object(
        j.missing
            .unwrap_or_default()
            .into_iter()
            .map(|(id, m)| (id, json!(missing_reason(m))))
            .collect(),
    );
    Ok(axum::Json(json!({"info": [info]})))
}

/// Grains are what `grains.items` returns: a token sees the grains of the minions its ACL lets
/// it run `grains.items` on, as salt-api (which runs `grains.items` with the token) shows them.
async fn grains_visible(
    shared: &Shared,
    token: &Token,
) -> Option<std::collections::BTreeSet<String>> {
    shared
        .minions_within(token.perms.targets_for("grains.items"))
        .await
}

async fn minions(State(shared): S, headers: HeaderMap) -> Result<axum::Json<Json>, ApiError> {
    let token = token_of(&shared, &headers, Auth::HeaderOrCookie).await?;
    let visible = grains_visible(&shared, &token).await;
    let m: Map<String, Json> = shared
        .all_grains()
        .into_iter()
        .filter(|(id, _)| visible.as_ref().is_none_or(|v| v.contains(id)))
        .map(|(id, g)| (id, to_json(&g)))
        .collect();
    Ok(axum::Json(json!({"return": [m]})))
}

async fn minion(
    State(shared): S,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<axum::Json<Json>, ApiError> {
    let token = token_of(&shared, &headers, Auth::HeaderOrCookie).await?;
    if grains_visible(&shared, &token)
        .await
        .is_some_and(|v| !v.contains(&id))
    {
        warn!(user = %token.user, minion_id = %id, "grains refused by external_auth ACL");
        return Err(forbidden(format!(
            "{} may not read the grains of {id} (grains.items)",
            token.user
        )));
    }
    let g = shared.grains_of(&id).map_or(Json::Null, |g| to_json(&g));
    Ok(axum::Json(json!({"return": [{id: g}]})))
}

async fn keys(State(shared): S, headers: HeaderMap) -> Result<axum::Json<Json>, ApiError> {
    let token = token_of(&shared, &headers, Auth::HeaderOrCookie).await?;
    if !token.perms.allows_wheel() {
        return Err(forbidden(format!(
            "{} may not list keys (@wheel)",
            token.user
        )));
    }
    use brine_master_core::keys::KeyDir;
    let k = shared.keys();
    Ok(axum::Json(json!({"return": {
        "local": ["master.pem", "master.pub"],
        "minions": k.list(KeyDir::Accepted),
        "minions_pre": k.list(KeyDir::Pending),
        "minions_rejected": k.list(KeyDir::Rejected),
        "minions_denied": k.list(KeyDir::Denied),
    }})))
}

async fn events(
    State(shared): S,
    headers: HeaderMap,
    uri: axum::http::Uri,
) -> Result<Response, ApiError> {
    // As salt-api 3007: no query parameters (a token in a URL ends up in access logs).
    if uri.query().is_some_and(|q| !q.is_empty()) {
        warn!("GET /events with a query string refused");
        return Err(bad(
            "/events takes no query parameters: send X-Auth-Token or the session cookie",
        ));
    }
    token_of(&shared, &headers, Auth::HeaderOrCookie).await?;
    let rx = shared.bus.subscribe();
    let head = tokio_stream::once(Ok::<_, std::convert::Infallible>(Bytes::from_static(
        b"retry: 400\n\n",
    )));
    let evs = tokio_stream::wrappers::BroadcastStream::new(rx).filter_map(|e| {
        let e = e.ok()?;
        // The tag goes on a line of its own: one with a line break would split the stream
        // into a forged event. The bus refuses such tags from minions; this keeps any other
        // source from ever writing one.
        if e.tag.chars().any(char::is_control) {
            warn!(tag = ?e.tag, "event with a control character in its tag not streamed");
            return None;
        }
        // JSON (serde_json's compact form) never contains a raw line break.
        let data = json!({"tag": e.tag, "data": to_json(&e.data)});
        Some(Ok(Bytes::from(format!("tag: {}\ndata: {data}\n\n", e.tag))))
    });
    let body = Body::from_stream(head.chain(evs));
    Ok((
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response())
}
