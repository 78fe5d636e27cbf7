//! `test.*`.

use std::time::Duration;

use brine_proto::Value;

use super::{JobCtx, Outcome, as_int, invalid_args};

pub(super) fn echo(ctx: &JobCtx) -> Outcome {
    match ctx.arg(0, "text") {
        Some(v) => Outcome::ok(v.clone()),
        None => invalid_args(ctx, "echo() missing 1 required positional argument: 'text'"),
    }
}

pub(super) fn arg(ctx: &JobCtx) -> Outcome {
    let mut kwargs: Vec<(Value, Value)> = ctx
        .kwargs
        .iter()
        .map(|(k, v)| (Value::str(k), v.clone()))
        .collect();
    kwargs.extend(
        ctx.pub_kwargs()
            .into_iter()
            .map(|(k, v)| (Value::str(k), v)),
    );
    Outcome::ok(
        Value::map()
            .with("args", Value::Array(ctx.args.clone()))
            .with("kwargs", Value::Map(kwargs)),
    )
}

pub(super) async fn sleep(ctx: &JobCtx) -> Outcome {
    let Some(v) = ctx.arg(0, "length") else {
        return invalid_args(
            ctx,
            "sleep() missing 1 required positional argument: 'length'",
        );
    };
    let Some(secs) = as_int(v) else {
        return invalid_args(
            ctx,
            &format!("invalid literal for int() with base 10: {v:?}"),
        );
    };
    tokio::time::sleep(Duration::from_secs(secs.clamp(0, 31_536_000) as u64)).await;
    Outcome::ok(true)
}

pub(super) fn retcode(ctx: &JobCtx) -> Outcome {
    let code = ctx.arg(0, "code").and_then(as_int).unwrap_or(42);
    Outcome {
        ret: Value::Bool(true),
        retcode: code,
        out: None,
    }
}
