//! Execution modules: the functions a job can call, with outputs shaped like a real Salt 3007
//! minion's (return value, `retcode`, `success`, `out`).

mod cmd;
mod cp;
mod grains_mod;
pub mod master;
mod mine;
mod pillar;
mod saltutil;
mod sys;
mod test;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use brine_proto::Value;
use brine_proto::loads::JobLoad;

/// What a function produced.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// The return value.
    pub ret: Value,
    /// `retcode` (Salt's `__context__["retcode"]`; 0 = success).
    pub retcode: i64,
    /// Outputter hint, when the function declares one.
    pub out: Option<&'static str>,
}

impl Outcome {
    /// A successful return.
    pub fn ok(ret: impl Into<Value>) -> Self {
        Self {
            ret: ret.into(),
            retcode: 0,
            out: None,
        }
    }

    /// A return with the `nested` outputter.
    pub fn nested(ret: impl Into<Value>) -> Self {
        Self {
            out: Some("nested"),
            ..Self::ok(ret)
        }
    }

    /// Salt's error shape: a message, retcode 1 (`EX_GENERIC`), nested outputter.
    pub fn error(msg: impl Into<String>) -> Self {
        Self {
            ret: Value::str(msg.into()),
            retcode: 1,
            out: Some("nested"),
        }
    }
}

/// A job as the functions see it.
#[derive(Debug, Clone)]
pub struct JobCtx {
    /// The publish load.
    pub job: JobLoad,
    /// Positional arguments.
    pub args: Vec<Value>,
    /// Keyword arguments (from the trailing `__kwarg__` map), in order.
    pub kwargs: Vec<(String, Value)>,
    /// The minion's grains.
    pub grains: Arc<Value>,
    /// Running jobs (for `saltutil.*`).
    pub jobs: JobTable,
    /// Where `cmd.script` may stage files.
    pub cachedir: std::path::PathBuf,
    /// The master the job came from (`None`: no link, as in unit tests).
    pub master: Option<Arc<master::MasterHandle>>,
    /// The pillar in memory.
    pub pillar: master::PillarStore,
    /// `mine_functions` from the minion's configuration.
    pub mine_functions: Value,
}

impl JobCtx {
    /// Split Salt's `arg` list into positional and keyword arguments.
    pub fn new(
        job: JobLoad,
        grains: Arc<Value>,
        jobs: JobTable,
        cachedir: std::path::PathBuf,
    ) -> Self {
        let mut args = Vec::new();
        let mut kwargs = Vec::new();
        for a in job.arg.as_array().unwrap_or_default() {
            if a.get("__kwarg__").is_some_and(Value::is_truthy) {
                for (k, v) in a.as_map().unwrap_or_default() {
                    if let Some(k) = k.as_str().filter(|k| *k != "__kwarg__") {
                        kwargs.push((k.to_owned(), v.clone()));
                    }
                }
            } else {
                args.push(a.clone());
            }
        }
        Self {
            job,
            args,
            kwargs,
            grains,
            jobs,
            cachedir,
            master: None,
            pillar: master::PillarStore::default(),
            mine_functions: Value::map(),
        }
    }

    /// The same job, with the master link, pillar and mine configuration of a running minion.
    pub fn with_master(
        mut self,
        master: Arc<master::MasterHandle>,
        pillar: master::PillarStore,
        mine_functions: Value,
    ) -> Self {
        self.master = Some(master);
        self.pillar = pillar;
        self.mine_functions = mine_functions;
        self
    }

    /// Positional argument `i`, or keyword `name`.
    pub fn arg(&self, i: usize, name: &str) -> Option<&Value> {
        self.kwarg(name).or_else(|| self.args.get(i))
    }

    /// Keyword argument `name`.
    pub fn kwarg(&self, name: &str) -> Option<&Value> {
        self.kwargs.iter().find(|(k, _)| k == name).map(|(_, v)| v)
    }

    /// The Salt release this minion presents as (the `saltversion` grain).
    pub fn salt_version(&self) -> &str {
        self.grains
            .get("saltversion")
            .and_then(Value::as_str)
            .unwrap_or(crate::grains::SALT_VERSION)
    }

    /// The major Salt release this minion presents as (3006, 3007, 3008...).
    pub fn salt_major(&self) -> i64 {
        crate::grains::version_info(self.salt_version()).map_or(3007, |(major, _)| major)
    }

    /// Salt's `__pub_*` keyword arguments, in Salt's order.
    pub fn pub_kwargs(&self) -> Vec<(String, Value)> {
        let j = &self.job;
        let mut v: Vec<(String, Value)> = vec![
            ("__pub_fun".into(), j.fun.clone()),
            ("__pub_arg".into(), j.arg.clone()),
            ("__pub_tgt".into(), j.tgt.clone()),
            ("__pub_jid".into(), Value::str(&j.jid)),
            ("__pub_ret".into(), Value::str(&j.ret)),
            ("__pub_tgt_type".into(), Value::str(j.tgt_type())),
            (
                "__pub_user".into(),
                j.user.clone().map_or(Value::Nil, Value::from),
            ),
        ];
        for (k, val) in self.resource_fields() {
            v.push((format!("__pub_{k}"), val));
        }
        v
    }

    /// Salt 3008 adds resource targeting to the publish data a job sees (empty for a plain
    /// minion); earlier releases have none of it.
    fn resource_fields(&self) -> Vec<(&'static str, Value)> {
        if self.salt_major() < 3008 {
            return vec![];
        }
        let extra = |k: &str| {
            self.job
                .extra
                .iter()
                .find(|(key, _)| key.is_str(k))
                .map(|(_, v)| v.clone())
        };
        vec![
            (
                "resource_targets",
                extra("resource_targets").unwrap_or_else(|| Value::Array(vec![])),
            ),
            (
                "pure_resource_target",
                extra("pure_resource_target").unwrap_or(Value::Bool(false)),
            ),
            ("minion_is_target", Value::Bool(true)),
        ]
    }

    /// The data `saltutil.find_job`/`running` report for this job.
    pub fn proc_data(&self) -> Value {
        let j = &self.job;
        let mut v = Value::map()
            .with("pid", i64::from(std::process::id()))
            .with("fun", j.fun.clone())
            .with("arg", j.arg.clone())
            .with("tgt", j.tgt.clone())
            .with("jid", j.jid.as_str())
            .with("ret", j.ret.as_str())
            .with("tgt_type", j.tgt_type())
            .with("user", j.user.clone().map_or(Value::Nil, Value::from));
        for (k, val) in self.resource_fields() {
            v.insert(k, val);
        }
        v
    }
}

/// Jobs currently running on this minion.
#[derive(Debug, Clone, Default)]
pub struct JobTable {
    inner: Arc<Mutex<HashMap<String, RunningJob>>>,
}

#[derive(Debug)]
struct RunningJob {
    data: Value,
    abort: tokio::task::AbortHandle,
}

impl JobTable {
    /// Record a running job.
    pub fn insert(&self, jid: &str, data: Value, abort: tokio::task::AbortHandle) {
        self.lock()
            .insert(jid.to_owned(), RunningJob { data, abort });
    }

    /// Forget a finished job.
    pub fn remove(&self, jid: &str) {
        self.lock().remove(jid);
    }

    /// Whether a job with this jid is running.
    pub fn contains(&self, jid: &str) -> bool {
        self.lock().contains_key(jid)
    }

    /// The proc data of a running job.
    pub fn get(&self, jid: &str) -> Option<Value> {
        self.lock().get(jid).map(|j| j.data.clone())
    }

    /// Proc data of every running job.
    pub fn all(&self) -> Vec<Value> {
        self.lock().values().map(|j| j.data.clone()).collect()
    }

    /// Cancel a running job (its child processes are killed with it).
    pub fn kill(&self, jid: &str) -> bool {
        match self.lock().remove(jid) {
            Some(j) => {
                j.abort.abort();
                true
            }
            None => false,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, RunningJob>> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Every function this minion provides, sorted (what `sys.list_functions` reports).
pub const FUNCTIONS: &[&str] = &[
    "cmd.retcode",
    "cmd.run",
    "cmd.run_all",
    "cmd.run_stderr",
    "cmd.run_stdout",
    "cmd.script",
    "cmd.shell",
    "cp.envs",
    "cp.get_dir",
    "cp.get_file",
    "cp.hash_file",
    "cp.list_master",
    "cp.list_master_dirs",
    "grains.get",
    "grains.item",
    "grains.items",
    "grains.ls",
    "mine.delete",
    "mine.flush",
    "mine.get",
    "mine.send",
    "mine.update",
    "pillar.get",
    "pillar.item",
    "pillar.items",
    "pillar.raw",
    "saltutil.find_job",
    "saltutil.kill_job",
    "saltutil.refresh_pillar",
    "saltutil.running",
    "saltutil.sync_all",
    "sys.doc",
    "sys.list_functions",
    "test.arg",
    "test.echo",
    "test.false",
    "test.ping",
    "test.retcode",
    "test.sleep",
    "test.true",
    "test.version",
];

/// Run `fun`.
pub async fn call(fun: &str, ctx: &JobCtx) -> Outcome {
    match fun {
        "test.ping" => Outcome::ok(true),
        "test.true" => Outcome::ok(true),
        "test.false" => Outcome::ok(false),
        "test.echo" => test::echo(ctx),
        "test.arg" => test::arg(ctx),
        "test.version" => Outcome::ok(ctx.salt_version().to_owned()),
        "test.sleep" => test::sleep(ctx).await,
        "test.retcode" => test::retcode(ctx),
        "cmd.run" | "cmd.shell" => cmd::run(ctx, cmd::Want::Combined).await,
        "cmd.run_all" => cmd::run(ctx, cmd::Want::All).await,
        "cmd.run_stdout" => cmd::run(ctx, cmd::Want::Stdout).await,
        "cmd.run_stderr" => cmd::run(ctx, cmd::Want::Stderr).await,
        "cmd.retcode" => cmd::run(ctx, cmd::Want::Retcode).await,
        "cmd.script" => cmd::script(ctx).await,
        "grains.items" => Outcome::nested((*ctx.grains).clone()),
        "grains.item" => grains_mod::item(ctx),
        "grains.get" => grains_mod::get(ctx),
        "grains.ls" => grains_mod::ls(ctx),
        "saltutil.find_job" => saltutil::find_job(ctx),
        // Like Salt's, the list leaves out the job asking.
        "saltutil.running" => Outcome::ok(Value::Array(
            ctx.jobs
                .all()
                .into_iter()
                .filter(|j| !j.get("jid").is_some_and(|v| v.is_str(&ctx.job.jid)))
                .collect(),
        )),
        "saltutil.kill_job" => saltutil::kill_job(ctx),
        "saltutil.sync_all" => saltutil::sync_all(ctx),
        "sys.list_functions" => sys::list_functions(ctx),
        "sys.doc" => sys::doc(ctx),
        "pillar.items" | "pillar.data" => pillar::items(ctx).await,
        "pillar.item" => pillar::item(ctx).await,
        "pillar.get" => pillar::get(ctx).await,
        "pillar.raw" => pillar::raw(ctx),
        "saltutil.refresh_pillar" => pillar::refresh(ctx).await,
        "mine.send" => mine::send(ctx).await,
        "mine.update" => mine::update(ctx).await,
        "mine.get" => mine::get(ctx).await,
        "mine.delete" => mine::delete(ctx).await,
        "mine.flush" => mine::flush(ctx).await,
        "cp.get_file" => cp::get_file(ctx).await,
        "cp.get_dir" => cp::get_dir(ctx).await,
        "cp.list_master" => cp::list_master(ctx, "_file_list").await,
        "cp.list_master_dirs" => cp::list_master(ctx, "_dir_list").await,
        "cp.hash_file" => cp::hash_file(ctx).await,
        "cp.envs" => cp::envs(ctx).await,
        state if state.starts_with("state.") => Outcome::error(format!(
            "'state' __virtual__ returned False: brine's minion has no state system ('{state}' \
             is not available); run states on a salt-minion"
        )),
        other => Outcome::error(format!("'{other}' is not available.")),
    }
}

/// `Passed invalid arguments to fun: reason` (Salt's TypeError shape).
pub(crate) fn invalid_args(ctx: &JobCtx, reason: &str) -> Outcome {
    Outcome::error(format!(
        "Passed invalid arguments to {}: {reason}",
        ctx.job.fun_name().unwrap_or_default()
    ))
}

/// An integer argument, given as a number or a numeric string (the CLI yamlifies `5` to 5).
pub(crate) fn as_int(v: &Value) -> Option<i64> {
    v.as_i64()
        .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
        .or_else(|| match v {
            Value::F64(f) if f.fract() == 0.0 => Some(*f as i64),
            _ => None,
        })
}

/// Text of an argument the way Python's `str()` would render a scalar.
pub(crate) fn as_text(v: &Value) -> String {
    match v {
        Value::Str(b) | Value::Bin(b) => String::from_utf8_lossy(b).into_owned(),
        Value::Int(i) => i.to_string(),
        Value::Uint(u) => u.to_string(),
        Value::F64(f) => f.to_string(),
        Value::Bool(true) => "True".into(),
        Value::Bool(false) => "False".into(),
        Value::Nil => "None".into(),
        other => format!("{other:?}"),
    }
}

#[cfg(test)]
mod tests;
