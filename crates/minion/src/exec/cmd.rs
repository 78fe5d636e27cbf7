//! `cmd.*`: commands run through `/bin/sh -c`, as the `salt` CLI's `cmd.run` does (pipes and
//! redirections work). Child processes are killed when the job is cancelled.

use std::process::Stdio;
use std::time::Duration;

use brine_proto::Value;
use tokio::io::AsyncWriteExt as _;

use super::{JobCtx, Outcome, as_int, as_text};

/// Which view of the result a `cmd.*` function returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Want {
    /// stdout and stderr interleaved (`cmd.run`, `cmd.shell`).
    Combined,
    /// `{pid, retcode, stdout, stderr}` (`cmd.run_all`).
    All,
    /// stdout only.
    Stdout,
    /// stderr only.
    Stderr,
    /// The exit code.
    Retcode,
}

struct Ran {
    pid: i64,
    code: i64,
    stdout: String,
    stderr: String,
}

/// Python's `str.rstrip()`, as Salt applies to command output.
fn rstrip(b: &[u8]) -> String {
    String::from_utf8_lossy(b).trim_end().to_owned()
}

async fn spawn(ctx: &JobCtx, script: &str, merge: bool) -> Result<Ran, String> {
    let body = if merge {
        format!("exec 2>&1\n{script}")
    } else {
        script.to_owned()
    };
    let mut c = tokio::process::Command::new("/bin/sh");
    c.arg("-c")
        .arg(body)
        .kill_on_drop(true)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let cwd = ctx
        .kwarg("cwd")
        .map(as_text)
        .or_else(|| std::env::var("HOME").ok())
        .unwrap_or_else(|| "/".into());
    c.current_dir(cwd);
    if let Some(env) = ctx.kwarg("env").and_then(Value::as_map) {
        for (k, v) in env {
            if let Some(k) = k.as_str() {
                c.env(k, as_text(v));
            }
        }
    }
    let stdin = ctx.kwarg("stdin").map(as_text);
    c.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    let mut child = c
        .spawn()
        .map_err(|e| format!("Unable to run command: {e}"))?;
    let pid = child.id().map_or(0, i64::from);
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        let _ = pipe.write_all(input.as_bytes()).await;
    }
    let wait = child.wait_with_output();
    let out = match ctx.kwarg("timeout").and_then(as_int).filter(|t| *t > 0) {
        Some(t) => tokio::time::timeout(Duration::from_secs(t as u64), wait)
            .await
            .map_err(|_| format!("Timed out after {t} seconds"))?,
        None => wait.await,
    }
    .map_err(|e| format!("Unable to run command: {e}"))?;
    Ok(Ran {
        pid,
        code: i64::from(out.status.code().unwrap_or(-1)),
        stdout: rstrip(&out.stdout),
        stderr: rstrip(&out.stderr),
    })
}

pub(super) async fn run(ctx: &JobCtx, want: Want) -> Outcome {
    let Some(cmd) = ctx.arg(0, "cmd").map(as_text) else {
        return super::invalid_args(ctx, "run() missing 1 required positional argument: 'cmd'");
    };
    let ran = match spawn(ctx, &cmd, want == Want::Combined).await {
        Ok(r) => r,
        Err(msg) => return Outcome::error(msg),
    };
    let ret = match want {
        Want::Combined | Want::Stdout => Value::str(&ran.stdout),
        Want::Stderr => Value::str(&ran.stderr),
        Want::Retcode => Value::Int(ran.code),
        Want::All => all(&ran),
    };
    Outcome {
        ret,
        retcode: ran.code,
        out: None,
    }
}

fn all(ran: &Ran) -> Value {
    Value::map()
        .with("pid", ran.pid)
        .with("retcode", ran.code)
        .with("stdout", ran.stdout.as_str())
        .with("stderr", ran.stderr.as_str())
}

/// `cmd.script SOURCE [ARGS]`: run a script from the master (`salt://`), a local path or a
/// `file://` URL, staged into the cache directory and made executable, with `ARGS` appended as
/// shell words.
pub(super) async fn script(ctx: &JobCtx) -> Outcome {
    let Some(source) = ctx.arg(0, "source").map(as_text) else {
        return super::invalid_args(
            ctx,
            "script() missing 1 required positional argument: 'source'",
        );
    };
    let mut path = source.strip_prefix("file://").unwrap_or(&source).to_owned();
    let cache_error = || Outcome {
        ret: Value::map()
            .with("pid", 0i64)
            .with("retcode", 1i64)
            .with("stdout", "")
            .with("stderr", "")
            .with("cache_error", true),
        retcode: 1,
        out: None,
    };
    if source.starts_with("salt://") {
        let Some(m) = &ctx.master else {
            return cache_error();
        };
        let env = ctx
            .kwarg("saltenv")
            .map_or_else(|| m.default_saltenv(), as_text);
        match m.get_file(&source, None, false, &env, None).await {
            Ok(Some(p)) => path = p.to_string_lossy().into_owned(),
            Ok(None) | Err(_) => return cache_error(),
        }
    }
    let Ok(body) = tokio::fs::read(&path).await else {
        return cache_error();
    };
    let dir = ctx.cachedir.join("extmods").join("scripts");
    if tokio::fs::create_dir_all(&dir).await.is_err() {
        return cache_error();
    }
    // A fresh, unguessable name (as Salt's `mkstemp(prefix="__salt.tmp.")`), never one built
    // from the publish: the jid comes from the network. Created new (no existing file or
    // symlink is followed) and executable by the owner only.
    let suffix = std::path::Path::new(&path)
        .extension()
        .and_then(|e| e.to_str())
        .filter(|e| e.chars().all(|c| c.is_ascii_alphanumeric()) && e.len() <= 16)
        .map(|e| format!(".{e}"))
        .unwrap_or_default();
    let staged = dir.join(format!(
        "__salt.tmp.{:016x}{:016x}{suffix}",
        rand::random::<u64>(),
        rand::random::<u64>()
    ));
    let written = {
        use tokio::io::AsyncWriteExt as _;
        let file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o700)
            .open(&staged)
            .await;
        match file {
            Ok(mut f) => f.write_all(&body).await.and(f.flush().await),
            Err(e) => Err(e),
        }
    };
    if written.is_err() {
        let _ = tokio::fs::remove_file(&staged).await;
        return cache_error();
    }
    let args = ctx.arg(1, "args").map(as_text).unwrap_or_default();
    let cmdline = format!("'{}' {args}", staged.display());
    let result = spawn(ctx, &cmdline, false).await;
    let _ = tokio::fs::remove_file(&staged).await;
    match result {
        Ok(ran) => Outcome {
            ret: all(&ran),
            retcode: ran.code,
            out: None,
        },
        Err(msg) => Outcome::error(msg),
    }
}
