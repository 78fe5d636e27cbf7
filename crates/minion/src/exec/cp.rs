//! `cp.*`: files from the master's file server.

use std::path::PathBuf;

use brine_proto::Value;

use super::pillar::master_or_error;
use super::{JobCtx, Outcome, as_int, as_text};

fn saltenv(ctx: &JobCtx, pos: usize, default: &str) -> String {
    ctx.arg(pos, "saltenv")
        .filter(|v| v.is_truthy())
        .map_or_else(|| default.to_owned(), as_text)
}

fn gzip(ctx: &JobCtx) -> Option<i64> {
    ctx.kwarg("gzip").and_then(as_int)
}

/// `cp.get_file salt://PATH DEST [saltenv] [makedirs]`: the local path, or `""`.
pub(super) async fn get_file(ctx: &JobCtx) -> Outcome {
    let m = master_or_error!(ctx);
    let (Some(path), Some(dest)) = (ctx.arg(0, "path"), ctx.arg(1, "dest")) else {
        return super::invalid_args(
            ctx,
            "get_file() missing 2 required positional arguments: 'path' and 'dest'",
        );
    };
    let env = saltenv(ctx, 2, &m.default_saltenv());
    let makedirs = ctx.arg(3, "makedirs").is_some_and(Value::is_truthy);
    let dest = PathBuf::from(as_text(dest));
    match m
        .get_file(&as_text(path), Some(&dest), makedirs, &env, gzip(ctx))
        .await
    {
        Ok(Some(p)) => Outcome::ok(p.to_string_lossy().into_owned()),
        Ok(None) => Outcome::ok(""),
        Err(e) => Outcome::error(e),
    }
}

/// `cp.get_dir salt://DIR DEST [saltenv]`: every file (and empty directory) below DIR, copied
/// under DEST/<last component of DIR>; the sorted list of local paths.
pub(super) async fn get_dir(ctx: &JobCtx) -> Outcome {
    let m = master_or_error!(ctx);
    let (Some(path), Some(dest)) = (ctx.arg(0, "path"), ctx.arg(1, "dest")) else {
        return super::invalid_args(
            ctx,
            "get_dir() missing 2 required positional arguments: 'path' and 'dest'",
        );
    };
    let env = saltenv(ctx, 2, &m.default_saltenv());
    let (rel, env) = super::master::split_url(&as_text(path), &env);
    let rel = rel.trim_end_matches('/').to_owned();
    let prefix = rel.rsplit_once('/').map_or("", |(p, _)| p).to_owned();
    let dest = as_text(dest);
    let below = |f: &str| {
        f.len() > rel.len() && f.as_bytes()[rel.len()] == b'/' && f.starts_with(&rel)
            || rel.is_empty()
    };
    let local = |f: &str| format!("{dest}/{}", f[prefix.len()..].trim_start_matches('/'));
    let mut ret = Vec::new();
    let files = match m.list("_file_list", &env, &rel).await {
        Ok(f) => f,
        Err(e) => return Outcome::error(e),
    };
    for f in files.iter().filter(|f| below(f)) {
        let to = local(f);
        if to.split('/').any(|c| c == "..") {
            continue;
        }
        match m
            .get_file(
                &format!("salt://{f}"),
                Some(std::path::Path::new(&to)),
                true,
                &env,
                gzip(ctx),
            )
            .await
        {
            Ok(Some(p)) => ret.push(p.to_string_lossy().into_owned()),
            Ok(None) => {}
            Err(e) => return Outcome::error(e),
        }
    }
    if let Ok(dirs) = m.list("_file_list_emptydirs", &env, &rel).await {
        for d in dirs.iter().filter(|d| below(d)) {
            let to = local(d);
            if to.split('/').any(|c| c == "..") {
                continue;
            }
            if std::fs::create_dir_all(&to).is_ok() {
                ret.push(to);
            }
        }
    }
    ret.sort();
    Outcome::ok(Value::Array(ret.into_iter().map(Value::str).collect()))
}

/// `cp.list_master [saltenv] [prefix]`.
pub(super) async fn list_master(ctx: &JobCtx, cmd: &str) -> Outcome {
    let m = master_or_error!(ctx);
    let env = saltenv(ctx, 0, &m.default_saltenv());
    let prefix = ctx.arg(1, "prefix").map(as_text).unwrap_or_default();
    match m.list(cmd, &env, &prefix).await {
        Ok(l) => Outcome::ok(Value::Array(l.into_iter().map(Value::str).collect())),
        Err(e) => Outcome::error(e),
    }
}

/// `cp.hash_file salt://PATH [saltenv]`: `{hash_type, hsum}`, or `""` when absent.
pub(super) async fn hash_file(ctx: &JobCtx) -> Outcome {
    let m = master_or_error!(ctx);
    let Some(path) = ctx.arg(0, "path") else {
        return super::invalid_args(
            ctx,
            "hash_file() missing 1 required positional argument: 'path'",
        );
    };
    let path = as_text(path);
    if !path.starts_with("salt://") {
        // A local file, as Salt's cp.hash_file does for non-salt:// paths.
        return match super::master::local_hash(std::path::Path::new(&path), &m.hash_type) {
            Some(h) => Outcome::ok(
                Value::map()
                    .with("hsum", h)
                    .with("hash_type", m.hash_type.as_str()),
            ),
            None => Outcome::ok(Value::map()),
        };
    }
    let env = saltenv(ctx, 1, &m.default_saltenv());
    let (rel, env) = super::master::split_url(&path, &env);
    match m.hash_file(&rel, &env).await {
        Ok(Some(h)) => Outcome::ok(h),
        Ok(None) => Outcome::ok(""),
        Err(e) => Outcome::error(e),
    }
}

/// `cp.envs`.
pub(super) async fn envs(ctx: &JobCtx) -> Outcome {
    let m = master_or_error!(ctx);
    m.request(Value::map().with("cmd", "_file_envs"))
        .await
        .map_or_else(Outcome::error, Outcome::ok)
}
