//! `saltutil.*`.

use brine_proto::Value;

use super::{JobCtx, Outcome, as_text};

pub(super) fn find_job(ctx: &JobCtx) -> Outcome {
    let Some(jid) = ctx.arg(0, "jid").map(as_text) else {
        return super::invalid_args(
            ctx,
            "find_job() missing 1 required positional argument: 'jid'",
        );
    };
    Outcome::ok(ctx.jobs.get(&jid).unwrap_or_else(Value::map))
}

pub(super) fn kill_job(ctx: &JobCtx) -> Outcome {
    let Some(jid) = ctx.arg(0, "jid").map(as_text) else {
        return super::invalid_args(
            ctx,
            "kill_job() missing 1 required positional argument: 'jid'",
        );
    };
    if ctx.jobs.kill(&jid) {
        Outcome::ok(format!(
            "Signal 9 sent to job {jid} at pid {}",
            std::process::id()
        ))
    } else {
        Outcome::ok(format!("Job {jid} was not found"))
    }
}

/// brine has no custom modules to sync: report every sync target empty, as a real minion with
/// nothing in `salt://_*` does.
pub(super) fn sync_all(ctx: &JobCtx) -> Outcome {
    let mut v = Value::map();
    for k in [
        "clouds",
        "beacons",
        "modules",
        "states",
        "sdb",
        "grains",
        "renderers",
        "returners",
        "output",
        "utils",
        "log_handlers",
        "executors",
        "proxymodules",
        "engines",
        "thorium",
        "serializers",
        "matchers",
    ] {
        v.insert(k, Value::Array(vec![]));
    }
    // Salt 3008 added resource modules to the sync targets.
    if ctx.salt_major() >= 3008 {
        v.insert("resources", Value::Array(vec![]));
    }
    Outcome::ok(v)
}
