//! The runners the API serves (`client: runner`): `jobs.lookup_jid`, `jobs.list_job`,
//! `jobs.print_job`, `jobs.list_jobs`, `jobs.active`, `manage.up`, `manage.down`,
//! `manage.status`, `manage.present`, `manage.not_present`, `manage.versions`, `cache.grains`,
//! `state.orchestrate_show_sls`, with the output shapes of Salt's.

use std::collections::BTreeSet;

use brine_master_core::json::to_json;
use brine_proto::Value;
use serde_json::{Map, Value as Json, json};

use crate::{MasterCore, PublishSpec, Shared, Token};

/// Salt's job summary keys from a cached load, with Salt's defaults for what it lacks.
pub(crate) fn summary(jid: &str, load: &Value) -> Json {
    let g = |k: &str, default: &str| {
        load.get(k)
            .filter(|v| !v.is_nil())
            .map_or_else(|| json!(default), to_json)
    };
    json!({
        "Function": g("fun", "unknown-function"),
        "Arguments": load.get("arg").map_or_else(|| json!([]), to_json),
        "Target": g("tgt", "unknown-target"),
        "Target-type": g("tgt_type", "list"),
        "User": g("user", "root"),
        "StartTime": load
            .get("StartTime")
            .map_or_else(|| Json::String(crate::start_time(jid)), to_json),
    })
}

/// Argument `name` of a runner or wheel lowstate chunk: top level, in `kwarg`, or positional
/// `pos`.
pub(crate) fn kwarg<'a>(chunk: &'a Json, name: &str, pos: usize) -> Option<&'a Json> {
    chunk
        .get(name)
        .or_else(|| chunk.get("kwarg").and_then(|k| k.get(name)))
        .or_else(|| chunk.get("arg").and_then(|a| a.get(pos)))
        .filter(|v| !v.is_null())
}

/// The `jid` argument: a string, or a number (a jid typed on a command line arrives as one).
fn jid_arg(chunk: &Json, fun: &str) -> Result<String, String> {
    let jid = match kwarg(chunk, "jid", 0) {
        Some(Json::String(s)) => s.clone(),
        Some(Json::Number(n)) => n.to_string(),
        _ => return Err(format!("{fun} needs a jid")),
    };
    if crate::valid_jid(&jid) {
        Ok(jid)
    } else {
        Err(format!("{jid:?} is not a job id"))
    }
}

/// Globs (a list, or a comma-separated string) of a `search_*` argument.
fn globs(v: Option<&Json>) -> Option<Vec<String>> {
    match v? {
        Json::String(s) => Some(s.split(',').map(|p| p.trim().to_owned()).collect()),
        Json::Array(a) => Some(
            a.iter()
                .filter_map(Json::as_str)
                .map(str::to_owned)
                .collect(),
        ),
        _ => None,
    }
}

fn any_glob(globs: &[String], text: &str) -> bool {
    globs
        .iter()
        .any(|g| g == text || brine_proto::target::fnmatch(g, text))
}

/// `jobs.list_job`'s shape for `jid`: the summary, `Minions`, `Result`; Salt's `Error` when
/// no job has that id.
async fn list_job(shared: &Shared, jid: &str) -> Json {
    let Some((load, returns, _)) = shared.job_view(jid).await else {
        return json!({
            "jid": jid,
            "Error": "Cannot contact returner or no job with this jid",
            "StartTime": crate::start_time(jid),
            "Result": {},
        });
    };
    let mut info = summary(jid, &load);
    info["jid"] = json!(jid);
    if let Some(m) = load.get("minions") {
        let mut ids: Vec<String> = to_json(m)
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(Json::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        ids.sort();
        info["Minions"] = json!(ids);
    }
    info["Result"] = Json::Object(
        returns
            .into_iter()
            .map(|(id, r)| {
                let f = |k: &str| r.get(k).map_or(Json::Null, to_json);
                let mut v = json!({"return": f("return"), "retcode": f("retcode"), "success": f("success")});
                if let Some(o) = r.get("out") {
                    v["out"] = to_json(o);
                }
                (id, v)
            })
            .collect(),
    );
    info
}

/// Publish `fun` to every accepted minion for a runner (the runner itself was authorized) and
/// wait for it: the returns by minion.
async fn ask_all(
    shared: &Shared,
    token: &Token,
    fun: &str,
    timeout: Option<u64>,
) -> Result<std::collections::BTreeMap<String, Value>, String> {
    let p = MasterCore::publish(
        shared,
        PublishSpec {
            tgt: Value::str("*"),
            tgt_type: "glob".into(),
            fun: fun.into(),
            arg: vec![],
            timeout,
            ret: String::new(),
        },
        &token.user,
        None,
    )
    .await
    .map_err(|e| e.to_string())?;
    if p.jid.is_empty() {
        return Ok(Default::default());
    }
    shared.wait_job(&p.jid).await;
    Ok(shared
        .job_view(&p.jid)
        .await
        .map(|(_, r, _)| r)
        .unwrap_or_default())
}

use crate::SALT_VERSION;

/// Salt's version order: numeric parts compared as numbers (`3006.9` < `3006.10`).
fn version_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    let parts = |v: &str| -> Vec<u64> {
        v.split(|c: char| !c.is_ascii_digit())
            .filter(|p| !p.is_empty())
            .filter_map(|p| p.parse().ok())
            .collect()
    };
    parts(a).cmp(&parts(b))
}

/// Run runner `fun` for `token` with the lowstate `chunk`'s arguments.
pub(crate) async fn run(
    shared: &Shared,
    token: &Token,
    fun: &str,
    chunk: &Json,
) -> Result<Json, String> {
    match fun {
        "jobs.list_job" => Ok(list_job(shared, &jid_arg(chunk, fun)?).await),
        "jobs.print_job" => {
            let jid = jid_arg(chunk, fun)?;
            let job = list_job(shared, &jid).await;
            if job.get("Error").is_some() {
                return Ok(json!({}));
            }
            Ok(json!({ jid: job }))
        }
        "jobs.lookup_jid" => {
            let jid = jid_arg(chunk, fun)?;
            let Some((_, returns, _)) = shared.job_view(&jid).await else {
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
            let funs = globs(kwarg(chunk, "search_function", usize::MAX));
            let targets = globs(kwarg(chunk, "search_target", usize::MAX));
            let mut m = Map::new();
            for (jid, load) in shared.list_jobs().await {
                let s = summary(&jid, &load);
                if let Some(f) = &funs
                    && !s["Function"].as_str().is_some_and(|x| any_glob(f, x))
                {
                    continue;
                }
                if let Some(t) = &targets {
                    let hit = match &s["Target"] {
                        Json::String(x) => any_glob(t, x),
                        Json::Array(a) => a.iter().filter_map(Json::as_str).any(|x| any_glob(t, x)),
                        _ => false,
                    };
                    if !hit {
                        continue;
                    }
                }
                m.insert(jid, s);
            }
            Ok(Json::Object(m))
        }
        "jobs.active" => {
            let mut m = Map::new();
            for (jid, j) in shared.active_jobs().await {
                let mut s = summary(&jid, &j.load);
                // Salt gives `{minion: pid}`; the pid is the minion's business (null here).
                let running: Vec<Json> = j
                    .expected
                    .iter()
                    .filter(|id| !j.returns.contains_key(*id))
                    .map(|id| json!({ id: null }))
                    .collect();
                s["Running"] = json!(running);
                s["Returned"] = json!(j.returns.keys().collect::<Vec<_>>());
                m.insert(jid, s);
            }
            Ok(Json::Object(m))
        }
        "manage.present" | "manage.not_present" => {
            let present = shared.present().await;
            let accepted: BTreeSet<String> = shared.accepted().into_iter().collect();
            Ok(if fun == "manage.present" {
                json!(accepted.intersection(&present).collect::<Vec<_>>())
            } else {
                json!(accepted.difference(&present).collect::<Vec<_>>())
            })
        }
        "manage.versions" => {
            let timeout = kwarg(chunk, "timeout", usize::MAX).and_then(Json::as_u64);
            let returns = ask_all(shared, token, "test.version", timeout).await?;
            let mut outcome: std::collections::BTreeMap<&str, Map<String, Json>> =
                Default::default();
            for id in shared.accepted() {
                let (label, v) = match returns
                    .get(&id)
                    .and_then(|r| r.get("return"))
                    .and_then(Value::as_str)
                {
                    None => ("Minion offline", Json::Bool(false)),
                    Some(v) => (
                        match version_cmp(v, SALT_VERSION) {
                            std::cmp::Ordering::Less => "Minion requires update",
                            std::cmp::Ordering::Equal => "Up to date",
                            std::cmp::Ordering::Greater => "Minion newer than master",
                        },
                        json!(v),
                    ),
                };
                outcome.entry(label).or_default().insert(id, v);
            }
            let mut m = Map::new();
            m.insert("Master".into(), json!(SALT_VERSION));
            for (k, v) in outcome {
                m.insert(k.into(), Json::Object(v));
            }
            Ok(Json::Object(m))
        }
        "cache.grains" => {
            let tgt = kwarg(chunk, "tgt", 0).and_then(Json::as_str).unwrap_or("*");
            let accepted = shared.accepted();
            let ids: Vec<&String> = accepted
                .iter()
                .filter(|id| *id == tgt || brine_proto::target::fnmatch(tgt, id))
                .collect();
            let mut m = Map::new();
            for id in ids {
                if let Some(g) = shared.grains_of(id) {
                    m.insert(id.clone(), to_json(&g));
                }
            }
            Ok(Json::Object(m))
        }
        // brine has no orchestration runner: nothing to show.
        "state.orchestrate_show_sls" => Ok(json!({})),
        "manage.up" | "manage.down" | "manage.status" => {
            let timeout = kwarg(chunk, "timeout", usize::MAX).and_then(Json::as_u64);
            let accepted: BTreeSet<String> = shared.accepted().into_iter().collect();
            // The runner itself was authorized; its ping goes to every accepted minion.
            let up: BTreeSet<String> = ask_all(shared, token, "test.ping", timeout)
                .await?
                .into_keys()
                .collect();
            let down: Vec<&String> = accepted.difference(&up).collect();
            Ok(match fun {
                "manage.up" => json!(up),
                "manage.down" => json!(down),
                _ => json!({"up": up, "down": down}),
            })
        }
        other => Err(format!(
            "runner {other:?} is not available (brine serves jobs.lookup_jid, jobs.list_job, \
             jobs.print_job, jobs.list_jobs, jobs.active, manage.up, manage.down, \
             manage.status, manage.present, manage.not_present, manage.versions, cache.grains, \
             state.orchestrate_show_sls)"
        )),
    }
}
