//! `pillar.*`: the pillar the master compiles for this minion.

use brine_proto::Value;

use super::master::traverse;
use super::{JobCtx, Outcome, as_text};

/// The master link, or Salt's error for a minion that has none.
macro_rules! master_or_error {
    ($ctx:expr) => {
        match &$ctx.master {
            Some(m) => m,
            None => return Outcome::error("No master connection for this job"),
        }
    };
}
pub(super) use master_or_error;

fn env_arg(ctx: &JobCtx, name: &str) -> Option<String> {
    ctx.kwarg(name).filter(|v| !v.is_nil()).map(as_text)
}

/// `pillar.items`: a fresh compilation by the master (Salt's `items` calls the master too);
/// with key arguments, `pillar.item`.
pub(super) async fn items(ctx: &JobCtx) -> Outcome {
    if !ctx.args.is_empty() {
        return item(ctx).await;
    }
    let m = master_or_error!(ctx);
    let pillarenv = env_arg(ctx, "pillarenv");
    let saltenv = env_arg(ctx, "saltenv");
    match m
        .fetch_pillar(&ctx.grains, pillarenv.as_deref(), saltenv.as_deref())
        .await
    {
        Ok(p) => {
            if pillarenv.is_none() && saltenv.is_none() {
                ctx.pillar.set(p.clone());
            }
            Outcome::ok(p)
        }
        Err(e) => Outcome::error(e),
    }
}

/// The pillar a lookup reads: in memory, or freshly compiled for `pillarenv`/`saltenv`.
async fn source(ctx: &JobCtx) -> Result<std::sync::Arc<Value>, String> {
    let pillarenv = env_arg(ctx, "pillarenv");
    let saltenv = env_arg(ctx, "saltenv");
    if pillarenv.is_none() && saltenv.is_none() {
        return Ok(ctx.pillar.get());
    }
    let Some(m) = &ctx.master else {
        return Err("No master connection for this job".into());
    };
    m.fetch_pillar(&ctx.grains, pillarenv.as_deref(), saltenv.as_deref())
        .await
        .map(std::sync::Arc::new)
        .map_err(String::from)
}

/// `pillar.item KEY...`: `{key: value}`, `default` (`""`) for missing keys.
pub(super) async fn item(ctx: &JobCtx) -> Outcome {
    let p = match source(ctx).await {
        Ok(p) => p,
        Err(e) => return Outcome::error(e),
    };
    let default = ctx
        .kwarg("default")
        .filter(|v| !v.is_nil())
        .cloned()
        .unwrap_or_else(|| Value::str(""));
    let delim = ctx
        .kwarg("delimiter")
        .filter(|v| !v.is_nil())
        .map_or_else(|| ":".to_owned(), as_text);
    let mut ret = Value::map();
    for a in &ctx.args {
        let key = as_text(a);
        let v = traverse(&p, &key, &delim)
            .cloned()
            .unwrap_or_else(|| default.clone());
        ret.insert(&key, v);
    }
    Outcome::ok(ret)
}

/// `pillar.get KEY [DEFAULT]`, with `delimiter` and `merge` of a dict or list default.
pub(super) async fn get(ctx: &JobCtx) -> Outcome {
    let Some(key) = ctx.arg(0, "key").map(as_text) else {
        return super::invalid_args(ctx, "get() missing 1 required positional argument: 'key'");
    };
    let p = match source(ctx).await {
        Ok(p) => p,
        Err(e) => return Outcome::error(e),
    };
    let default = ctx
        .arg(1, "default")
        .cloned()
        .unwrap_or_else(|| Value::str(""));
    let delim = ctx
        .kwarg("delimiter")
        .map_or_else(|| ":".to_owned(), as_text);
    let found = traverse(&p, &key, &delim);
    if ctx.kwarg("merge").is_some_and(Value::is_truthy) {
        match (&default, found) {
            (Value::Map(_), Some(f @ Value::Map(_))) => {
                let mut out = default.clone();
                merge_into(&mut out, f);
                return Outcome::ok(out);
            }
            (Value::Array(d), Some(Value::Array(f))) => {
                let mut out = d.clone();
                for x in f {
                    if !out.contains(x) {
                        out.push(x.clone());
                    }
                }
                return Outcome::ok(Value::Array(out));
            }
            _ => {}
        }
    }
    Outcome::ok(found.cloned().unwrap_or(default))
}

/// Salt's `dictupdate.update` (recursive, lists replaced).
fn merge_into(dest: &mut Value, upd: &Value) {
    let (Value::Map(d), Some(u)) = (dest, upd.as_map()) else {
        return;
    };
    for (k, v) in u {
        match d.iter_mut().find(|(dk, _)| dk == k) {
            Some((_, dv)) if dv.as_map().is_some() && v.as_map().is_some() => merge_into(dv, v),
            Some((_, dv)) => *dv = v.clone(),
            None => d.push((k.clone(), v.clone())),
        }
    }
}

/// `pillar.raw [KEY]`: the pillar in memory (a top-level key of it, `{}` when missing).
pub(super) fn raw(ctx: &JobCtx) -> Outcome {
    let p = ctx.pillar.get();
    match ctx.arg(0, "key").filter(|v| v.is_truthy()) {
        Some(k) => Outcome::ok(p.get(&as_text(k)).cloned().unwrap_or_else(Value::map)),
        None => Outcome::ok((*p).clone()),
    }
}

/// `saltutil.refresh_pillar`: compile again and keep the result.
pub(super) async fn refresh(ctx: &JobCtx) -> Outcome {
    let m = master_or_error!(ctx);
    match m.fetch_pillar(&ctx.grains, None, None).await {
        Ok(p) => {
            ctx.pillar.set(p);
            Outcome::ok(true)
        }
        Err(e) => Outcome::error(e),
    }
}
