//! `mine.*`: data this minion publishes to the master's mine, and lookups of other minions'.

use brine_proto::Value;
use tracing::warn;

use super::pillar::master_or_error;
use super::{JobCtx, Outcome, as_text};

/// `parse_function_definition`: a list of arguments (dicts among them are keyword arguments)
/// or a dict of keyword arguments; `mine_function`, `allow_tgt`, `allow_tgt_type` taken out.
struct MineFun {
    function: Option<String>,
    args: Vec<Value>,
    kwargs: Vec<(String, Value)>,
    allow_tgt: Option<Value>,
    allow_tgt_type: Option<Value>,
}

fn parse_definition(def: &Value) -> MineFun {
    let mut args = Vec::new();
    let mut kwargs: Vec<(String, Value)> = Vec::new();
    let mut take = |m: &[(Value, Value)]| {
        for (k, v) in m {
            if let Some(k) = k.as_str() {
                kwargs.retain(|(x, _)| x != k);
                kwargs.push((k.to_owned(), v.clone()));
            }
        }
    };
    match def {
        Value::Map(m) => take(m),
        Value::Array(items) => {
            for i in items {
                match i.as_map() {
                    Some(m) => take(m),
                    None => args.push(i.clone()),
                }
            }
        }
        _ => {}
    }
    let mut pop = |k: &str| {
        let i = kwargs.iter().position(|(x, _)| x == k)?;
        Some(kwargs.remove(i).1)
    };
    let function = pop("mine_function").map(|v| as_text(&v));
    let allow_tgt = pop("allow_tgt");
    let allow_tgt_type = pop("allow_tgt_type");
    MineFun {
        function,
        args,
        kwargs,
        allow_tgt,
        allow_tgt_type,
    }
}

/// Run `fun` with `args`/`kwargs` as this job (mine functions cannot be mine functions).
async fn run(
    ctx: &JobCtx,
    fun: &str,
    args: Vec<Value>,
    kwargs: Vec<(String, Value)>,
) -> Option<Value> {
    if fun.starts_with("mine.") || !super::FUNCTIONS.contains(&fun) {
        warn!(
            function = fun,
            "mine function not available on this minion; skipped"
        );
        return None;
    }
    let mut sub = ctx.clone();
    sub.job.fun = Value::str(fun);
    sub.args = args;
    sub.kwargs = kwargs;
    let out = Box::pin(super::call(fun, &sub)).await;
    if out.retcode != 0 {
        warn!(function = fun, "mine function failed; skipped");
        return None;
    }
    Some(out.ret)
}

fn wrap(res: Value, allow_tgt: Option<Value>, allow_tgt_type: Option<Value>) -> Value {
    match allow_tgt.filter(Value::is_truthy) {
        None => res,
        Some(t) => {
            let mut w = Value::map()
                .with("__data__", res)
                .with("__saltmine_acl__", 1i64)
                .with("allow_tgt", t);
            if let Some(tt) = allow_tgt_type.filter(Value::is_truthy) {
                w.insert("allow_tgt_type", tt);
            }
            w
        }
    }
}

async fn store(ctx: &JobCtx, data: Value, clear: bool) -> Outcome {
    let m = master_or_error!(ctx);
    let load = Value::map()
        .with("cmd", "_mine")
        .with("data", data)
        .with("id", m.id.as_str())
        .with("clear", clear);
    match m.request(load).await {
        Ok(_) => Outcome::ok(true),
        Err(e) => Outcome::error(e),
    }
}

/// `mine.send NAME [ARGS] [mine_function=] [allow_tgt=] [allow_tgt_type=]`.
pub(super) async fn send(ctx: &JobCtx) -> Outcome {
    let Some(name) = ctx
        .args
        .first()
        .map(as_text)
        .or_else(|| ctx.kwarg("name").map(as_text))
    else {
        return super::invalid_args(ctx, "send() missing 1 required positional argument: 'name'");
    };
    let mut kwargs: Vec<(String, Value)> = ctx
        .kwargs
        .iter()
        .filter(|(k, _)| k != "name" && !k.starts_with("__"))
        .cloned()
        .collect();
    let mut pop = |k: &str| {
        let i = kwargs.iter().position(|(x, _)| x == k)?;
        Some(kwargs.remove(i).1)
    };
    let function = pop("mine_function").map(|v| as_text(&v));
    let allow_tgt = pop("allow_tgt");
    let allow_tgt_type = pop("allow_tgt_type");
    let args = ctx.args.iter().skip(1).cloned().collect();
    let Some(res) = run(ctx, function.as_deref().unwrap_or(&name), args, kwargs).await else {
        return Outcome::ok(false);
    };
    store(
        ctx,
        Value::map().with(&name, wrap(res, allow_tgt, allow_tgt_type)),
        false,
    )
    .await
}

/// `mine.update [clear=False] [mine_functions=]`: run `mine_functions` (the minion's
/// configuration, overridden by the pillar's) and send the results.
pub(super) async fn update(ctx: &JobCtx) -> Outcome {
    let clear = ctx.arg(0, "clear").is_some_and(Value::is_truthy);
    let funs = match ctx.kwarg("mine_functions").filter(|v| v.is_truthy()) {
        Some(Value::Array(list)) => Value::Map(
            list.iter()
                .map(|f| (f.clone(), Value::Array(vec![])))
                .collect(),
        ),
        Some(m @ Value::Map(_)) => m.clone(),
        Some(_) => return Outcome::ok(Value::Nil),
        None => {
            let mut m = ctx.mine_functions.clone();
            if m.as_map().is_none() {
                m = Value::map();
            }
            if let Some(p) = ctx
                .pillar
                .get()
                .get("mine_functions")
                .and_then(Value::as_map)
            {
                for (k, v) in p {
                    if let Some(k) = k.as_str() {
                        m.insert(k, v.clone());
                    }
                }
            }
            m
        }
    };
    if funs.as_map().is_none_or(<[_]>::is_empty) {
        return Outcome::ok(Value::Nil);
    }
    let mut data = Value::map();
    for (alias, def) in funs.as_map().unwrap_or_default().to_vec() {
        let Some(alias) = alias.as_str() else {
            continue;
        };
        let d = parse_definition(&def);
        let fun = d.function.clone().unwrap_or_else(|| alias.to_owned());
        if let Some(res) = run(ctx, &fun, d.args, d.kwargs).await {
            data.insert(alias, wrap(res, d.allow_tgt, d.allow_tgt_type));
        }
    }
    store(ctx, data, clear).await
}

/// `mine.get TGT FUN [tgt_type=glob] [exclude_minion=False]`.
pub(super) async fn get(ctx: &JobCtx) -> Outcome {
    let m = master_or_error!(ctx);
    let (Some(tgt), Some(fun)) = (ctx.arg(0, "tgt"), ctx.arg(1, "fun")) else {
        return super::invalid_args(
            ctx,
            "get() missing 2 required positional arguments: 'tgt' and 'fun'",
        );
    };
    let tgt_type = ctx
        .arg(2, "tgt_type")
        .map_or_else(|| "glob".to_owned(), as_text);
    let load = Value::map()
        .with("cmd", "_mine_get")
        .with("id", m.id.as_str())
        .with("tgt", tgt.clone())
        .with("fun", fun.clone())
        .with("tgt_type", tgt_type);
    match m.request(load).await {
        Ok(mut v) => {
            if ctx.arg(3, "exclude_minion").is_some_and(Value::is_truthy)
                && let Value::Map(entries) = &mut v
            {
                entries.retain(|(k, _)| !k.is_str(&m.id));
            }
            Outcome::ok(v)
        }
        Err(e) => Outcome::error(e),
    }
}

/// `mine.delete FUN`.
pub(super) async fn delete(ctx: &JobCtx) -> Outcome {
    let m = master_or_error!(ctx);
    let Some(fun) = ctx.arg(0, "fun") else {
        return super::invalid_args(
            ctx,
            "delete() missing 1 required positional argument: 'fun'",
        );
    };
    let load = Value::map()
        .with("cmd", "_mine_delete")
        .with("id", m.id.as_str())
        .with("fun", fun.clone());
    m.request(load)
        .await
        .map_or_else(Outcome::error, Outcome::ok)
}

/// `mine.flush`.
pub(super) async fn flush(ctx: &JobCtx) -> Outcome {
    let m = master_or_error!(ctx);
    let load = Value::map()
        .with("cmd", "_mine_flush")
        .with("id", m.id.as_str());
    m.request(load)
        .await
        .map_or_else(Outcome::error, Outcome::ok)
}
