//! A web UI next to the API, as salt-api's `rest_cherrypy` serves one (SaltGUI's documented
//! setup): `static` is a directory served without auth under `static_path`, `app` an HTML file
//! served at `app_path` and to any browser `GET` asking for HTML outside the API (so a reload
//! of `/?page=x#minions` gets the UI, while the UI's own `GET /stats` or `POST /` with
//! `Accept: application/json` reach the API).

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use axum::body::Body;
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tracing::warn;

use crate::Shared;

/// The content type of a served file, by its extension (what browsers require for module
/// scripts and stylesheets).
pub fn content_type(path: &Path) -> &'static str {
    match path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        Some("html" | "htm") => "text/html; charset=utf-8",
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("json" | "map") => "application/json",
        Some("txt") => "text/plain; charset=utf-8",
        Some("png") => "image/png",
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("gif") => "image/gif",
        Some("svg") => "image/svg+xml",
        Some("ico") => "image/x-icon",
        Some("woff") => "font/woff",
        Some("woff2") => "font/woff2",
        _ => "application/octet-stream",
    }
}

/// The file under `root` that the URL path `rest` (after `static_path/`) names, or `None` for a
/// path that tries to leave it (`..`, absolute parts, NUL, backslashes) or names no regular
/// file. Symbolic links are followed only when they stay inside `root`.
pub fn resolve(root: &Path, rest: &str) -> Option<PathBuf> {
    if rest.contains(['\0', '\\']) {
        return None;
    }
    let rel = Path::new(rest.trim_start_matches('/'));
    if rel.as_os_str().is_empty() || !rel.components().all(|c| matches!(c, Component::Normal(_))) {
        return None;
    }
    let root = root.canonicalize().ok()?;
    let p = root.join(rel).canonicalize().ok()?;
    (p.starts_with(&root) && p.is_file()).then_some(p)
}

async fn file_response(path: &Path, head: bool) -> Response {
    match tokio::fs::read(path).await {
        Ok(bytes) => {
            let len = bytes.len();
            let body = if head {
                Body::empty()
            } else {
                Body::from(bytes)
            };
            (
                [
                    (header::CONTENT_TYPE, content_type(path).to_owned()),
                    (header::CONTENT_LENGTH, len.to_string()),
                    (header::CACHE_CONTROL, "no-cache".to_owned()),
                    (header::X_CONTENT_TYPE_OPTIONS, "nosniff".to_owned()),
                ],
                body,
            )
                .into_response()
        }
        Err(e) => {
            warn!(path = %path.display(), error = %e, "web UI file cannot be read");
            not_found()
        }
    }
}

fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        "Not Found\n",
    )
        .into_response()
}

/// Whether a request's `Accept` header asks for an HTML page (a browser navigating), as
/// salt-api decides it: `text/html` acceptable and the header not just `*/*`.
fn wants_html(headers: &HeaderMap) -> bool {
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .trim();
    accept != "*/*"
        && accept.split(',').any(|part| {
            let mut it = part.split(';');
            let kind = it.next().unwrap_or("").trim();
            let refused = it.any(|p| {
                p.trim()
                    .strip_prefix("q=")
                    .and_then(|q| q.trim().parse::<f32>().ok())
                    .is_some_and(|q| q == 0.0)
            });
            kind == "text/html" && !refused
        })
}

/// Middleware: the static directory and the app, before the API's routes.
pub async fn serve_ui(
    axum::extract::State(shared): axum::extract::State<Arc<Shared>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let cfg = &shared.cfg;
    let method = req.method().clone();
    if method != Method::GET && method != Method::HEAD {
        return next.run(req).await;
    }
    let head = method == Method::HEAD;
    let path = req.uri().path().to_owned();
    let under = |prefix: &str| {
        path == prefix
            || path
                .strip_prefix(prefix)
                .is_some_and(|rest| rest.starts_with('/'))
    };
    if let Some(dir) = &cfg.api_static
        && under(&cfg.api_static_path)
    {
        let rest = &path[cfg.api_static_path.len()..];
        let decoded = percent_decode(rest);
        return match decoded.as_deref().and_then(|r| resolve(dir, r)) {
            Some(file) => file_response(&file, head).await,
            None => {
                if decoded.as_deref().is_some_and(|r| r.contains("..")) {
                    warn!(path = %path, "web UI request outside the static directory refused");
                }
                not_found()
            }
        };
    }
    if let Some(app) = &cfg.api_app {
        let in_static = under(&cfg.api_static_path);
        if under(&cfg.api_app_path) || (!in_static && wants_html(req.headers())) {
            return file_response(app, head).await;
        }
    }
    next.run(req).await
}

/// `%xx` decoding of a URL path; `None` for malformed escapes or non-UTF-8 results.
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_files_inside_the_static_directory_are_served() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("static");
        std::fs::create_dir_all(root.join("scripts")).unwrap();
        std::fs::write(root.join("scripts/a.js"), "x").unwrap();
        std::fs::write(d.path().join("secret"), "s").unwrap();
        std::os::unix::fs::symlink(d.path().join("secret"), root.join("link")).unwrap();
        assert!(resolve(&root, "/scripts/a.js").is_some());
        for bad in [
            "/../secret",
            "/scripts/../../secret",
            "/link",
            "/scripts",
            "/",
            "",
            "/scripts/a.js\0",
            "/..\\secret",
            "/nope.js",
        ] {
            assert_eq!(resolve(&root, bad), None, "{bad:?}");
        }
        assert_eq!(
            percent_decode("/%2e%2e/secret").as_deref(),
            Some("/../secret")
        );
        assert_eq!(percent_decode("/%zz"), None);
    }

    #[test]
    fn a_browser_navigating_wants_html_and_a_script_does_not() {
        let h = |a: &str| {
            let mut m = HeaderMap::new();
            m.insert(header::ACCEPT, a.parse().unwrap());
            m
        };
        assert!(wants_html(&h(
            "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
        )));
        assert!(!wants_html(&h("application/json")));
        assert!(!wants_html(&h("*/*")));
        assert!(!wants_html(&h("text/html;q=0")));
        assert!(!wants_html(&HeaderMap::new()));
        assert_eq!(
            content_type(Path::new("x/index.js")),
            "text/javascript; charset=utf-8"
        );
        assert_eq!(content_type(Path::new("a.CSS")), "text/css; charset=utf-8");
    }
}
