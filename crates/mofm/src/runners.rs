//! The runners the API serves (`client: runner`): `jobs.lookup_jid`, `jobs.list_jobs`,
//! `jobs.active`, `manage.up`, `manage.down`, `manage.status`, with the output shapes of Salt's.

use std::collections::BTreeSet;

use brine_master_core::json::to_json;
use brine_proto::Value;
use serde_json::{Map, Value as Json, json};

use crate::{MasterCore, PublishSpec, Shared, Token};

/// Salt's job summary keys from a cached load.
pub(crate) fn summary(jid: &str, load: &Value) -> Json {
    let g = |k: &str| load.get(k).map_or(Json::Null, to_json);
    json!({
        "Function": g("fun"),
        "Arguments": load.get("arg").map_or_else(|| json!([]), to_json),
        "Target": g("tgt"),
        "Target-type": g("tgt_type"),
        "User": g("user"),
        "StartTime": load
            .get("StartTime")
            .map_or_else(|| Json::String(crate::start_time(jid)), to_json),
    })
}

fn kwarg<'a>(chunk: &'a Json, name: &str, pos: usize) -> Option<&'a Json> {
    chunk
        .get(name)
        .or_else(|| chunk.get("kwarg").and_then(|k| k.get(name)))
        .or_else(|| chunk.get("arg").and_then(|a| a.get(pos)))
        .filter(|v| !v.is_null())
}

/// Run runner `fun` for `token` with the lowstate `chunk`'s arguments.
pub(crate) async fn run(
    shared: &Shared,
    token: &Token,
    fun: &str,
    chunk: &Json,
) -> Result<Json, String> {
    match fun {
        "jobs.lookup_jid" => {
            let jid = kwarg(chunk, "jid", 0)
                .and_then(Json::as_str)
                .ok_or("jobs.lookup_jid needs a jid")?;
            if !crate::valid_jid(jid) {
                return Err(format!("{jid:?} is not a job id"));
            }
            let Some((_, returns, _)) = shared.job_view(jid).await else {
                return Ok(json!({}));
            };
            Ok(Json::Object(
                returns
                    .into_iter()
                    .map(|(id, r)| (id, r.get("return").map_or(Json::Null, to_json)))
                    .collect(),
            ))
        }
        "jobs.list_jobs" => {
            let mut m = Map::new();
            for (jid, load) in shared.list_jobs().await {
                let s = summary(&jid, &load);
                m.insert(jid, s);
            }
            Ok(Json::Object(m))
        }
        "jobs.active" => {
            let mut m = Map::new();
            for (jid, j) in shared.active_jobs().await {
                let mut s = summary(&jid, &j.load);
                let running: Vec<&String> = j
                    .expected
                    .iter()
                    .filter(|id| !j.returns.contains_key(*id))
                    .collect();
                s["Running"] = json!(running);
                s["Returned"] = json!(j.returns.keys().collect::<Vec<_>>());
                m.insert(jid, s);
            }
            Ok(Json::Object(m))
        }
        "manage.up" | "manage.down" | "manage.status" => {
            let timeout = kwarg(chunk, "timeout", usize::MAX).and_then(Json::as_u64);
            let accepted: BTreeSet<String> = shared.accepted().into_iter().collect();
            // The runner itself was authorized; its ping goes to every accepted minion.
            let p = MasterCore::publish(
                shared,
                PublishSpec {
                    tgt: Value::str("*"),
                    tgt_type: "glob".into(),
                    fun: "test.ping".into(),
                    arg: vec![],
                    timeout,
                    ret: String::new(),
                },
                &token.user,
                None,
            )
            .await
            .map_err(|e| e.to_string())?;
            let mut up = BTreeSet::new();
            if !p.jid.is_empty() {
                shared.wait_job(&p.jid).await;
                if let Some((_, returns, _)) = shared.job_view(&p.jid).await {
                    up = returns.into_keys().collect();
                }
            }
            let down: Vec<&String> = accepted.difference(&up).collect();
            Ok(match fun {
                "manage.up" => json!(up),
                "manage.down" => json!(down),
                _ => json!({"up": up, "down": down}),
            })
        }
        other => Err(format!(
            "runner {other:?} is not available (brine serves jobs.lookup_jid, jobs.list_jobs, \
             jobs.active, manage.up, manage.down, manage.status)"
        )),
    }
}
