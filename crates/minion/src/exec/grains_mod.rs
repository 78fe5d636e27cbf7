//! `grains.*`.

use brine_proto::Value;

use super::master::traverse;
use super::{JobCtx, Outcome, as_text};

pub(super) fn item(ctx: &JobCtx) -> Outcome {
    let mut out = Value::map();
    for a in &ctx.args {
        let key = as_text(a);
        out.insert(
            &key,
            ctx.grains
                .get(&key)
                .cloned()
                .unwrap_or_else(|| Value::str("")),
        );
    }
    Outcome::nested(out)
}

pub(super) fn get(ctx: &JobCtx) -> Outcome {
    let Some(key) = ctx.arg(0, "key").map(as_text) else {
        return super::invalid_args(ctx, "get() missing 1 required positional argument: 'key'");
    };
    let default = ctx
        .arg(1, "default")
        .cloned()
        .unwrap_or_else(|| Value::str(""));
    let delim = ctx
        .kwarg("delimiter")
        .map_or_else(|| ":".to_owned(), as_text);
    Outcome::ok(
        traverse(&ctx.grains, &key, &delim)
            .cloned()
            .unwrap_or(default),
    )
}

pub(super) fn ls(ctx: &JobCtx) -> Outcome {
    let mut keys: Vec<String> = ctx
        .grains
        .as_map()
        .unwrap_or_default()
        .iter()
        .filter_map(|(k, _)| k.as_str().map(str::to_owned))
        .collect();
    keys.sort();
    Outcome::ok(Value::Array(keys.into_iter().map(Value::from).collect()))
}
