//! Pillar: `pillar_roots` with `top.sls`, rendered `jinja|yaml`, compiled per minion on its
//! `_pillar` request as salt-master compiles it (`salt/pillar/__init__.py`): top files of every
//! environment (or of `pillarenv`), targets matched as Salt's `confirm_top` does (compound by
//! default, `- match: grain` etc.), globs in top files expanded over the environment's states,
//! `include:` (relative, `defaults`, `key`), merging with `pillar_source_merging_strategy`
//! (`smart` = `recurse`) and `pillar_merge_lists`, errors in `_errors` (a render failure is
//! "Rendering SLS 'x' failed. Please see master log for details." while
//! `pillar_safe_render_error` is on, as in Salt; the master log has the file and line), and
//! `pillar_opts`. The Jinja context is Salt's: `grains`, `opts`, `saltenv`, `sls`, `pillar`
//! (empty while compiling, as in Salt), `salt` (a few data functions), `tplpath`, `tplfile`,
//! `tpldir`, `tpldot`, `slspath`, `sls_path`, `slsdotpath`, `slscolonpath`, include defaults.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use brine_daemon::config::{ConfigError, Options};
use brine_proto::Value;
use brine_proto::target::{self, Facts, Tri};
use minijinja::value::Value as J;
use tracing::warn;

use crate::fileserver::{normpath, roots_option};
use crate::jinja;

/// Merged top data: saltenv → [(target, sls items)].
type Tops = Vec<(String, Vec<(Value, Value)>)>;
/// One saltenv's top while merging, with each target's order values.
type OrderedTop = (String, Vec<(Value, Value)>, Vec<i64>);

/// Pillar options (Salt's names and defaults).
#[derive(Debug, Clone)]
pub struct PillarConfig {
    /// `pillar_roots`.
    pub roots: Vec<(String, Vec<PathBuf>)>,
    /// `pillar_source_merging_strategy` (`smart`).
    pub merging_strategy: String,
    /// `pillar_merge_lists`.
    pub merge_lists: bool,
    /// `pillar_opts`: the master's options under `master`.
    pub opts: bool,
    /// `pillar_safe_render_error`.
    pub safe_render_error: bool,
    /// `pillar_includes_override_sls`.
    pub includes_override_sls: bool,
    /// `pillarenv`.
    pub pillarenv: Option<String>,
    /// `pillarenv_from_saltenv`.
    pub pillarenv_from_saltenv: bool,
    /// `env_order`.
    pub env_order: Vec<String>,
    /// `renderer` (`jinja|yaml`).
    pub renderer: String,
    /// `jinja_lstrip_blocks`, `jinja_trim_blocks`.
    pub lstrip_blocks: bool,
    /// `jinja_trim_blocks`.
    pub trim_blocks: bool,
}

impl PillarConfig {
    /// Merge `upd` into `dest` with `pillar_source_merging_strategy` and
    /// `pillar_merge_lists`.
    fn merge_into(&self, dest: &mut Value, upd: &Value) {
        merge(dest, upd, &self.merging_strategy, self.merge_lists);
    }

    /// Read Salt's pillar options.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] for bad values.
    pub fn from_options(o: &Options) -> Result<Self, ConfigError> {
        Ok(Self {
            roots: roots_option(
                o,
                "pillar_roots",
                &[("base", &["/srv/pillar", "/srv/spm/pillar"])],
            )?,
            merging_strategy: o
                .string("pillar_source_merging_strategy")?
                .unwrap_or_else(|| "smart".into()),
            merge_lists: o.bool("pillar_merge_lists", false)?,
            opts: o.bool("pillar_opts", false)?,
            safe_render_error: o.bool("pillar_safe_render_error", true)?,
            includes_override_sls: o.bool("pillar_includes_override_sls", false)?,
            pillarenv: o.string("pillarenv")?,
            pillarenv_from_saltenv: o.bool("pillarenv_from_saltenv", false)?,
            env_order: o.string_list("env_order")?.unwrap_or_default(),
            renderer: o.string("renderer")?.unwrap_or_else(|| "jinja|yaml".into()),
            lstrip_blocks: o.bool("jinja_lstrip_blocks", false)?,
            trim_blocks: o.bool("jinja_trim_blocks", false)?,
        })
    }
}

/// What a minion sends with `_pillar`.
#[derive(Debug, Clone)]
pub struct PillarRequest<'a> {
    /// Minion id.
    pub id: &'a str,
    /// Its grains (with `id`).
    pub grains: &'a Value,
    /// `saltenv`.
    pub saltenv: Option<&'a str>,
    /// `pillarenv`.
    pub pillarenv: Option<&'a str>,
    /// `pillar_override`.
    pub pillar_override: Option<&'a Value>,
}

impl<'a> PillarRequest<'a> {
    /// A request from `id` with `grains`, no environments or override.
    pub fn new(id: &'a str, grains: &'a Value) -> Self {
        Self {
            id,
            grains,
            saltenv: None,
            pillarenv: None,
            pillar_override: None,
        }
    }
}

/// The pillar compiler of one master.
#[derive(Debug)]
pub struct PillarCompiler {
    cfg: PillarConfig,
    /// The master's options (for `opts` in templates and `pillar_opts`).
    master_opts: Value,
    nodegroups: std::collections::BTreeMap<String, String>,
}

/// `recurse` merge (`salt.utils.dictupdate.update`): maps merge key by key, lists are replaced
/// (or extended with what is not there yet when `merge_lists`), anything else is replaced.
pub fn merge_recurse(dest: &mut Value, upd: &Value, merge_lists: bool) {
    let Value::Map(up) = upd else {
        *dest = upd.clone();
        return;
    };
    if !matches!(dest, Value::Map(_)) {
        *dest = Value::map();
    }
    let Value::Map(d) = dest else { return };
    for (k, v) in up {
        match d.iter_mut().find(|(dk, _)| dk == k) {
            Some((_, dv)) => match (&mut *dv, v) {
                (Value::Map(_), Value::Map(_)) => merge_recurse(dv, v, merge_lists),
                (Value::Array(a), Value::Array(b)) if merge_lists => {
                    for x in b {
                        if !a.contains(x) {
                            a.push(x.clone());
                        }
                    }
                }
                _ => *dv = v.clone(),
            },
            None => d.push((k.clone(), v.clone())),
        }
    }
}

/// `salt.utils.dictupdate.merge` with a pillar merging strategy.
fn merge(dest: &mut Value, upd: &Value, strategy: &str, merge_lists: bool) {
    match strategy {
        "overwrite" | "aggregate" => {
            if let (Value::Map(d), Value::Map(u)) = (&mut *dest, upd) {
                for (k, v) in u {
                    match d.iter_mut().find(|(dk, _)| dk == k) {
                        Some((_, dv)) => *dv = v.clone(),
                        None => d.push((k.clone(), v.clone())),
                    }
                }
            } else {
                merge_recurse(dest, upd, merge_lists);
            }
        }
        "list" => {
            if let (Value::Map(d), Value::Map(u)) = (&mut *dest, upd) {
                for (k, v) in u {
                    if let Some((_, dv)) = d.iter_mut().find(|(dk, _)| dk == k) {
                        *dv = Value::Array(vec![dv.clone(), v.clone()]);
                    }
                }
            }
        }
        _ => merge_recurse(dest, upd, merge_lists),
    }
}

/// `list_states`: `a/b.sls` is `a.b`, `a/init.sls` is `a` (sorted).
fn states_of(files: &BTreeSet<String>) -> Vec<String> {
    let mut out = BTreeSet::new();
    for f in files {
        let Some(stem) = f.strip_suffix(".sls") else {
            continue;
        };
        let name = match stem.strip_suffix("/init") {
            Some(dir) => dir.to_owned(),
            None => stem.to_owned(),
        };
        out.insert(name.replace('/', "."));
    }
    out.into_iter().collect()
}

fn walk_files(root: &Path, dir: &Path, out: &mut BTreeSet<String>, depth: usize) {
    if depth > 64 {
        return;
    }
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        let Ok(meta) = std::fs::metadata(&p) else {
            continue;
        };
        if meta.is_dir() {
            walk_files(root, &p, out, depth + 1);
        } else if let Ok(rel) = p.strip_prefix(root) {
            out.insert(rel.to_string_lossy().into_owned());
        }
    }
}

/// The state of one compilation: environments, their roots and states, errors.
struct Compile<'a> {
    c: &'a PillarCompiler,
    req: &'a PillarRequest<'a>,
    roots: Vec<(String, Vec<PathBuf>)>,
    pillarenv: Option<String>,
    avail: Vec<(String, Vec<String>)>,
    errors: Vec<String>,
    opts: Value,
}

impl PillarCompiler {
    /// A compiler over `cfg`, with the master's options (for templates' `opts` and
    /// `pillar_opts`) and nodegroups (for `- match: nodegroup` in top files).
    pub fn new(
        cfg: PillarConfig,
        master_opts: Value,
        nodegroups: std::collections::BTreeMap<String, String>,
    ) -> Self {
        Self {
            cfg,
            master_opts,
            nodegroups,
        }
    }

    /// Compile the pillar of one minion. Errors come back in `_errors`, never as an empty
    /// pillar that looks fine.
    pub fn compile(&self, req: &PillarRequest<'_>) -> Value {
        let pillarenv = req
            .pillarenv
            .map(str::to_owned)
            .or_else(|| self.cfg.pillarenv.clone())
            .or_else(|| {
                self.cfg
                    .pillarenv_from_saltenv
                    .then(|| req.saltenv.map(str::to_owned))
                    .flatten()
            });
        // `__env__` roots serve the requested environment (a name with a path in it is not).
        let wanted = pillarenv
            .clone()
            .or_else(|| req.saltenv.map(str::to_owned))
            .unwrap_or_else(|| "base".into());
        let mut roots: Vec<(String, Vec<PathBuf>)> = Vec::new();
        let has_wanted = self.cfg.roots.iter().any(|(e, _)| *e == wanted);
        for (env, dirs) in &self.cfg.roots {
            if env == "__env__" {
                if has_wanted || wanted.contains(['/', '\\', '\0']) || wanted.contains("..") {
                    continue;
                }
                roots.push((
                    wanted.clone(),
                    dirs.iter()
                        .map(|d| PathBuf::from(d.to_string_lossy().replace("__env__", &wanted)))
                        .collect(),
                ));
            } else {
                roots.push((env.clone(), dirs.clone()));
            }
        }
        let mut envs: Vec<String> = vec!["base".into()];
        for (e, _) in &roots {
            if !envs.contains(e) {
                envs.push(e.clone());
            }
        }
        let avail = envs
            .iter()
            .map(|e| {
                let mut files = BTreeSet::new();
                for (env, dirs) in &roots {
                    if env == e {
                        for d in dirs {
                            walk_files(d, d, &mut files, 0);
                        }
                    }
                }
                (e.clone(), states_of(&files))
            })
            .collect();
        let mut opts = self.master_opts.clone();
        opts.insert("id", req.id);
        opts.insert("minion_id", req.id);
        opts.insert("grains", req.grains.clone());
        opts.insert("saltenv", req.saltenv.map_or(Value::Nil, Value::str));
        opts.insert(
            "pillarenv",
            pillarenv.as_deref().map_or(Value::Nil, Value::str),
        );
        let mut c = Compile {
            c: self,
            req,
            roots,
            pillarenv,
            avail,
            errors: Vec::new(),
            opts,
        };
        c.run()
    }
}

impl Compile<'_> {
    fn run(&mut self) -> Value {
        let (top, top_errors) = self.tops();
        let matches = self.top_matches(&top);
        let mut pillar = self.render_pillar(&matches);
        self.errors.extend(top_errors);
        if self.c.cfg.opts {
            let mut master = self.c.master_opts.clone();
            master.remove("grains");
            master.insert("saltversion", "3007.17");
            pillar.insert("master", master);
        }
        if !self.errors.is_empty() {
            pillar.insert(
                "_errors",
                Value::Array(self.errors.iter().map(Value::str).collect()),
            );
        }
        if let Some(o) = self
            .req
            .pillar_override
            .filter(|o| o.as_map().is_some_and(|m| !m.is_empty()))
        {
            self.c.cfg.merge_into(&mut pillar, o);
        }
        pillar
    }

    fn dirs(&self, env: &str) -> Vec<PathBuf> {
        self.roots
            .iter()
            .filter(|(e, _)| e == env)
            .flat_map(|(_, d)| d.clone())
            .collect()
    }

    /// The first root of `env` holding `rel`, refusing paths that leave the roots.
    fn find(&self, env: &str, rel: &str) -> Option<PathBuf> {
        let n = normpath(rel);
        if n.starts_with('/') || n.split('/').any(|c| c == "..") || rel.contains('\0') {
            return None;
        }
        self.dirs(env).into_iter().find_map(|d| {
            let p = d.join(&n);
            let inside = match (std::fs::canonicalize(&d), std::fs::canonicalize(&p)) {
                (Ok(r), Ok(f)) => f.starts_with(r),
                _ => false,
            };
            (inside && p.is_file()).then_some(p)
        })
    }

    /// `get_state`: `a.b` is `a/b.sls` or `a/b/init.sls`.
    fn state_file(&self, env: &str, sls: &str) -> Option<(PathBuf, String)> {
        let base = sls.replace('.', "/");
        for rel in [format!("{base}.sls"), format!("{base}/init.sls")] {
            if let Some(p) = self.find(env, &rel) {
                return Some((p, rel));
            }
        }
        None
    }

    fn avail(&self, env: &str) -> Option<&Vec<String>> {
        self.avail.iter().find(|(e, _)| e == env).map(|(_, s)| s)
    }

    /// Render one file with the renderer pipe (`#!` on its first line overrides it).
    fn render_file(
        &self,
        path: &Path,
        rel: &str,
        env: &str,
        sls: &str,
        defaults: &Value,
    ) -> Result<Value, String> {
        let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
        let (pipe, body) = match text.strip_prefix("#!") {
            Some(rest) => {
                let (first, _) = rest.split_once('\n').unwrap_or((rest, ""));
                (first.trim().to_owned(), text.as_str())
            }
            None => (self.c.cfg.renderer.clone(), text.as_str()),
        };
        let mut current = body.to_owned();
        let mut data: Option<Value> = None;
        for stage in pipe.split('|').map(str::trim) {
            match stage {
                "jinja" => {
                    current = self.render_jinja(&current, rel, env, sls, defaults)?;
                }
                "yaml" => {
                    data = Some(crate::yaml::load(&current).map_err(|e| e.to_string())?);
                }
                "json" => {
                    data = Some(
                        serde_json::from_str::<serde_json::Value>(&current)
                            .map(|j| crate::json::from_json(&j))
                            .map_err(|e| e.to_string())?,
                    );
                }
                other => {
                    return Err(format!(
                        "the {other} renderer is not available in brine (jinja, yaml and json are)"
                    ));
                }
            }
        }
        Ok(match data {
            Some(Value::Nil) | None => Value::map(),
            Some(v) => v,
        })
    }

    fn render_jinja(
        &self,
        source: &str,
        rel: &str,
        env: &str,
        sls: &str,
        defaults: &Value,
    ) -> Result<String, String> {
        let roots = self.dirs(env);
        let tpldir = Path::new(rel)
            .parent()
            .map(|p| p.to_string_lossy().into_owned())
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| ".".into());
        let tpldir_for_loader = tpldir.clone();
        let loader = move |name: &str| -> Option<String> {
            let rel = if name.starts_with("./") || name.starts_with("../") {
                normpath(&format!("{tpldir_for_loader}/{name}"))
            } else {
                normpath(name)
            };
            if rel.starts_with('/') || rel.split('/').any(|c| c == "..") {
                return None;
            }
            roots.iter().find_map(|d| {
                let p = d.join(&rel);
                let inside = match (std::fs::canonicalize(d), std::fs::canonicalize(&p)) {
                    (Ok(r), Ok(f)) => f.starts_with(r),
                    _ => false,
                };
                if inside {
                    std::fs::read_to_string(p).ok()
                } else {
                    None
                }
            })
        };
        let jenv = jinja::environment(loader, self.c.cfg.lstrip_blocks, self.c.cfg.trim_blocks);
        let slspath = if tpldir == "." {
            String::new()
        } else {
            tpldir.clone()
        };
        let mut vars: Vec<(String, J)> = vec![
            ("grains".into(), jinja::to_jinja(self.req.grains)),
            ("opts".into(), jinja::to_jinja(&self.opts)),
            ("pillar".into(), jinja::to_jinja(&Value::map())),
            ("saltenv".into(), J::from(env)),
            ("sls".into(), J::from(sls)),
            (
                "salt".into(),
                J::from_object(jinja::SaltFuncs {
                    grains: self.req.grains.clone(),
                    opts: self.opts.clone(),
                }),
            ),
            ("proxy".into(), jinja::to_jinja(&Value::map())),
            ("tplpath".into(), J::from(rel)),
            ("tplfile".into(), J::from(rel)),
            ("tpldir".into(), J::from(tpldir.as_str())),
            (
                "tpldot".into(),
                J::from(tpldir.replace('/', ".").trim_start_matches('.')),
            ),
            ("slspath".into(), J::from(slspath.as_str())),
            ("sls_path".into(), J::from(slspath.replace('/', "_"))),
            ("slsdotpath".into(), J::from(slspath.replace('/', "."))),
            ("slscolonpath".into(), J::from(slspath.replace('/', ":"))),
        ];
        if let Some(m) = defaults.as_map() {
            for (k, v) in m {
                if let Some(k) = k.as_str() {
                    vars.push((k.to_owned(), jinja::to_jinja(v)));
                }
            }
        }
        jinja::render(&jenv, rel, source, J::from_pairs(vars)).map_err(|e| {
            let detail = match e.line {
                Some(l) => format!("Jinja error: {}; line {l}\n\n{}", e.message, jinja::context(source, l)),
                None => format!("Jinja error: {}", e.message),
            };
            warn!(file = rel, saltenv = env, minion_id = self.req.id, error = %detail, "pillar render failed");
            detail
        })
    }

    /// Read and merge the top files (Salt's `get_tops` + `merge_tops`).
    fn tops(&mut self) -> (Tops, Vec<String>) {
        let mut errors = Vec::new();
        let envs: Vec<String> = match &self.pillarenv {
            Some(p) => {
                if self.roots.iter().any(|(e, _)| e == p) {
                    vec![p.clone()]
                } else {
                    Vec::new()
                }
            }
            None if self.c.cfg.merging_strategy == "none" => {
                vec![self.req.saltenv.unwrap_or("base").to_owned()]
            }
            None => self.avail.iter().map(|(e, _)| e.clone()).collect(),
        };
        let mut rendered: Vec<(String, Value)> = Vec::new();
        'envs: for env in &envs {
            let Some(path) = self.find(env, "top.sls") else {
                continue;
            };
            match self.render_file(&path, "top.sls", env, "", &Value::map()) {
                Ok(top) => {
                    let includes: Vec<String> =
                        top.get("include").map(Value::str_items).unwrap_or_default();
                    rendered.push((env.clone(), top));
                    let mut done = BTreeSet::new();
                    for inc in includes {
                        if !done.insert(inc.clone()) {
                            continue;
                        }
                        if let Some((p, rel)) = self.state_file(env, &inc) {
                            match self.render_file(&p, &rel, env, &inc, &Value::map()) {
                                Ok(t) => rendered.push((env.clone(), t)),
                                Err(e) => errors.push(format!(
                                    "Rendering Top file {inc} failed, render error:\n{e}"
                                )),
                            }
                        }
                    }
                }
                Err(e) => {
                    errors.push(format!(
                        "Rendering Primary Top file failed, render error:\n{e}"
                    ));
                    break 'envs;
                }
            }
        }
        // merge_tops: env → [(target, items)], later tops replace a target's items.
        let mut top: Vec<OrderedTop> = Vec::new();
        for (_, t) in &rendered {
            let Some(m) = t.as_map() else { continue };
            for (env, targets) in m {
                let Some(env) = env.as_str().filter(|e| *e != "include") else {
                    continue;
                };
                let Some(targets) = targets.as_map() else {
                    continue;
                };
                let slot = match top.iter().position(|(e, _, _)| e == env) {
                    Some(i) => i,
                    None => {
                        top.push((env.to_owned(), Vec::new(), Vec::new()));
                        top.len() - 1
                    }
                };
                for (tgt, items) in targets {
                    let mut matches = Vec::new();
                    let mut states: Vec<Value> = Vec::new();
                    let mut order = 0i64;
                    for item in items.as_array().unwrap_or_default() {
                        match item {
                            Value::Map(_) if item.get("match").is_some() => {
                                matches.push(item.clone())
                            }
                            Value::Map(_) if item.get("order").is_some() => {
                                order = match item.get("order") {
                                    Some(Value::Int(i)) => *i,
                                    Some(Value::Str(s)) => {
                                        String::from_utf8_lossy(s).trim().parse().unwrap_or(0)
                                    }
                                    _ => 0,
                                };
                            }
                            Value::Map(_) if item.get("ignore_missing").is_some() => {}
                            Value::Str(_) if !states.contains(item) => states.push(item.clone()),
                            _ => {}
                        }
                    }
                    matches.extend(states);
                    let entry = &mut top[slot];
                    match entry.1.iter().position(|(t, _)| t == tgt) {
                        Some(i) => {
                            entry.1[i].1 = Value::Array(matches);
                            entry.2[i] = order;
                        }
                        None => {
                            entry.1.push((tgt.clone(), Value::Array(matches)));
                            entry.2.push(order);
                        }
                    }
                }
            }
        }
        let merged = top
            .into_iter()
            .map(|(env, targets, orders)| {
                let mut idx: Vec<usize> = (0..targets.len()).collect();
                idx.sort_by_key(|i| orders[*i]);
                (env, idx.into_iter().map(|i| targets[i].clone()).collect())
            })
            .collect();
        (merged, errors)
    }

    /// `top_matches`: for each environment, the states of the targets this minion matches.
    fn top_matches(&self, top: &[(String, Vec<(Value, Value)>)]) -> Vec<(String, Vec<String>)> {
        let mut out: Vec<(String, Vec<String>)> = Vec::new();
        let groups = |n: &str| self.c.nodegroups.get(n).cloned();
        let nil = Value::map();
        let facts = Facts {
            id: self.req.id,
            grains: self.req.grains,
            pillar: &nil,
        };
        for (env, targets) in top {
            if self.pillarenv.as_ref().is_some_and(|p| p != env) {
                continue;
            }
            for (tgt, items) in targets {
                let items = items.as_array().unwrap_or_default();
                let kind = items
                    .iter()
                    .filter_map(|i| i.get("match").and_then(Value::as_str))
                    .next_back()
                    .unwrap_or("compound");
                let tgt_v = match tgt {
                    Value::Str(_) => tgt.clone(),
                    other => Value::str(format!("{other:?}")),
                };
                let hit = matches!(
                    target::evaluate(&tgt_v, kind, ":", &facts, &groups),
                    Ok(Tri::Yes)
                );
                if !hit {
                    continue;
                }
                let slot = match out.iter().position(|(e, _)| e == env) {
                    Some(i) => i,
                    None => {
                        out.push((env.clone(), Vec::new()));
                        out.len() - 1
                    }
                };
                for s in items.iter().filter_map(Value::as_str) {
                    if !out[slot].1.iter().any(|x| x == s) {
                        out[slot].1.push(s.to_owned());
                    }
                }
            }
        }
        out
    }

    fn render_pillar(&mut self, matches: &[(String, Vec<String>)]) -> Value {
        let mut pillar = self
            .req
            .pillar_override
            .cloned()
            .filter(|o| o.as_map().is_some())
            .unwrap_or_else(Value::map);
        let mut ordered: Vec<&(String, Vec<String>)> = Vec::new();
        for e in &self.c.cfg.env_order {
            if let Some(m) = matches.iter().find(|(me, _)| me == e) {
                ordered.push(m);
            }
        }
        for m in matches {
            if !ordered.iter().any(|o| o.0 == m.0) {
                ordered.push(m);
            }
        }
        for (env, patterns) in ordered {
            let mut mods: Vec<(String, Option<Value>)> = Vec::new();
            let Some(avail) = self.avail(env).cloned() else {
                self.errors.push(format!(
                    "No matching pillar environment for environment '{env}' found"
                ));
                continue;
            };
            for pat in patterns {
                let mut names: Vec<String> = avail
                    .iter()
                    .filter(|s| target::fnmatch(pat, s))
                    .cloned()
                    .collect();
                if names.is_empty() {
                    names.push(pat.clone());
                }
                for sls in names {
                    let state = self.render_pstate(&sls, env, &mut mods, &Value::map());
                    if let Some(s @ Value::Map(_)) = state {
                        self.c.cfg.merge_into(&mut pillar, &s);
                    }
                }
            }
        }
        pillar
    }

    /// `render_pstate`: one sls, its includes merged under it (or over it with
    /// `pillar_includes_override_sls`).
    fn render_pstate(
        &mut self,
        sls: &str,
        env: &str,
        mods: &mut Vec<(String, Option<Value>)>,
        defaults: &Value,
    ) -> Option<Value> {
        if let Some((_, done)) = mods.iter().find(|(m, _)| m == sls) {
            return done.clone();
        }
        let Some((path, rel)) = self.state_file(env, sls) else {
            if !self.dirs(env).is_empty() {
                self.errors.push(format!(
                    "Specified SLS '{sls}' in environment '{env}' is not available on the salt master"
                ));
                return Some(Value::map());
            }
            return None;
        };
        let mut state = match self.render_file(&path, &rel, env, sls, defaults) {
            Ok(s) => s,
            Err(e) => {
                self.errors.push(if self.c.cfg.safe_render_error {
                    format!("Rendering SLS '{sls}' failed. Please see master log for details.")
                } else {
                    format!("Rendering SLS '{sls}' failed, render error:\n{e}")
                });
                mods.push((sls.to_owned(), None));
                return None;
            }
        };
        if !matches!(state, Value::Map(_)) {
            self.errors
                .push(format!("SLS '{sls}' does not render to a dictionary"));
            mods.push((sls.to_owned(), Some(state.clone())));
            return Some(state);
        }
        mods.push((sls.to_owned(), Some(state.clone())));
        let Some(include) = state.remove("include") else {
            return Some(state);
        };
        let Some(items) = include.as_array().map(<[Value]>::to_vec) else {
            self.errors.push(format!(
                "Include Declaration in SLS '{sls}' is not formed as a list"
            ));
            return Some(state);
        };
        let avail = self.avail(env).cloned().unwrap_or_default();
        let is_init = rel.ends_with("/init.sls");
        let mut nstate = Value::map();
        let mut defaults_now = Value::map();
        for item in items {
            let (name, key) = match &item {
                Value::Str(b) => (String::from_utf8_lossy(b).into_owned(), None),
                Value::Map(m) if m.len() == 1 => {
                    let name = m[0].0.as_str().unwrap_or_default().to_owned();
                    let opts = &m[0].1;
                    if let Some(d) = opts.get("defaults") {
                        // Salt keeps these for later string items too.
                        defaults_now = d.clone();
                    }
                    (
                        name,
                        opts.get("key").and_then(Value::as_str).map(str::to_owned),
                    )
                }
                _ => continue,
            };
            let plain = name.trim_start_matches('.').replace('/', ".");
            let mut candidates: Vec<String> = avail
                .iter()
                .filter(|s| target::fnmatch(&plain, s))
                .cloned()
                .collect();
            if name.starts_with('.') {
                let mut parts: Vec<&str> = sls.split('.').collect();
                if !is_init {
                    parts.pop();
                }
                let dots = name.len() - name.trim_start_matches('.').len();
                for _ in 1..dots {
                    parts.pop();
                }
                let resolved = if parts.is_empty() {
                    plain.clone()
                } else {
                    format!("{}.{plain}", parts.join("."))
                };
                candidates.extend(
                    avail
                        .iter()
                        .filter(|s| target::fnmatch(&resolved, s))
                        .cloned(),
                );
            }
            if candidates.is_empty() {
                candidates.push(name.clone());
            }
            for cand in candidates {
                let Some(mut sub) = self.render_pstate(&cand, env, mods, &defaults_now) else {
                    continue;
                };
                if let Some(key) = &key {
                    for part in key.split(':').rev() {
                        sub = Value::map().with(part, sub);
                    }
                }
                if self.c.cfg.includes_override_sls {
                    self.c.cfg.merge_into(&mut state, &sub);
                } else {
                    self.c.cfg.merge_into(&mut nstate, &sub);
                }
            }
        }
        if self.c.cfg.includes_override_sls {
            Some(state)
        } else {
            self.c.cfg.merge_into(&mut nstate, &state);
            Some(nstate)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(root: &Path, rel: &str, text: &str) {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    fn compiler(roots: Vec<(String, Vec<PathBuf>)>) -> PillarCompiler {
        PillarCompiler::new(
            PillarConfig {
                roots,
                merging_strategy: "smart".into(),
                merge_lists: false,
                opts: false,
                safe_render_error: true,
                includes_override_sls: false,
                pillarenv: None,
                pillarenv_from_saltenv: false,
                env_order: Vec::new(),
                renderer: "jinja|yaml".into(),
                lstrip_blocks: false,
                trim_blocks: false,
            },
            Value::map().with("master_key", "x"),
            Default::default(),
        )
    }

    #[test]
    fn tops_includes_merges_and_errors_like_salt() {
        let d = tempfile::tempdir().unwrap();
        let base = d.path().join("base");
        let dev = d.path().join("dev");
        write(
            &base,
            "top.sls",
            "base:\n  '*':\n    - common\n  'm1':\n    - match: glob\n    - m1only\n  'os:Linux':\n    - match: grain\n    - linux\n  'G@os:Linux and m*':\n    - compound\n  'nobody':\n    - never\ndev:\n  '*':\n    - devstuff\n",
        );
        write(
            &base,
            "common.sls",
            "common:\n  a: 1\n  list: [1, 2]\n  nested: {x: 1, y: 2}\nshared: base-common\n",
        );
        write(
            &base,
            "m1only.sls",
            "m1only: true\ncommon:\n  list: [3]\n  nested: {y: 20, z: 30}\n",
        );
        write(&base, "linux.sls", "linux: {{ grains['os'] == 'Linux' }}\n");
        write(
            &base,
            "compound.sls",
            "include:\n  - .inc\ncompound_hit: 1\n",
        );
        write(
            &base,
            "inc.sls",
            "compound_hit: 0\nfrom_include: {{ sls }}\n",
        );
        write(&base, "never.sls", "never: true\n");
        write(&dev, "devstuff.sls", "shared: dev\ndevkey: 1\n");
        let c = compiler(vec![
            ("base".into(), vec![base.clone()]),
            ("dev".into(), vec![dev]),
        ]);
        let grains = Value::map().with("os", "Linux").with("id", "m1");
        let p = c.compile(&PillarRequest::new("m1", &grains));
        let want = Value::map()
            .with(
                "common",
                Value::map()
                    .with("a", 1i64)
                    .with("list", Value::Array(vec![Value::Int(3)]))
                    .with(
                        "nested",
                        Value::map()
                            .with("x", 1i64)
                            .with("y", 20i64)
                            .with("z", 30i64),
                    ),
            )
            .with("shared", "dev")
            .with("m1only", true)
            .with("linux", true)
            // The included sls is merged first, the including one over it (keys keep the
            // position they first had).
            .with("compound_hit", 1i64)
            .with("from_include", "inc")
            .with("devkey", 1i64);
        assert_eq!(p, want);
        // A template error: in _errors, the rest still compiled.
        write(&base, "linux.sls", "linux: {{ nope.attr }}\n");
        let p = c.compile(&PillarRequest::new("m1", &grains));
        assert_eq!(
            p.get("_errors"),
            Some(&Value::Array(vec![Value::str(
                "Rendering SLS 'linux' failed. Please see master log for details."
            )]))
        );
        assert_eq!(p.get("m1only"), Some(&Value::Bool(true)));
        // A missing sls named by the top file.
        write(&base, "top.sls", "base:\n  '*':\n    - ghost\n");
        let p = c.compile(&PillarRequest::new("m1", &grains));
        assert_eq!(
            p.get("_errors").unwrap().as_array().unwrap()[0],
            Value::str(
                "Specified SLS 'ghost' in environment 'base' is not available on the salt master"
            )
        );
        // A broken top file.
        write(&base, "top.sls", "base:\n  '*':\n    - {{ x.y }}\n");
        let p = c.compile(&PillarRequest::new("m1", &grains));
        let errs = p.get("_errors").unwrap().as_array().unwrap();
        assert!(
            errs[0]
                .as_str()
                .unwrap()
                .starts_with("Rendering Primary Top file failed, render error:\n"),
            "{errs:?}"
        );
    }

    #[test]
    fn merge_recurse_like_dictupdate() {
        let mut a = Value::map()
            .with("k", Value::map().with("x", 1i64))
            .with("l", Value::Array(vec![Value::Int(1)]));
        let b = Value::map()
            .with("k", Value::map().with("y", 2i64))
            .with("l", Value::Array(vec![Value::Int(2), Value::Int(1)]));
        merge_recurse(&mut a, &b, true);
        assert_eq!(
            a,
            Value::map()
                .with("k", Value::map().with("x", 1i64).with("y", 2i64))
                .with("l", Value::Array(vec![Value::Int(1), Value::Int(2)]))
        );
    }
}
