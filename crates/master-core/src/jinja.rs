//! Jinja as Salt's renderer runs it for pillar, on minijinja: undefined variables are errors
//! (Salt's `StrictUndefined`), Python's string and dict methods work (`.get()`, `.items()`,
//! `.split()`: minijinja-contrib's pycompat), `{% do %}`-free loop controls, `include` and
//! `import` from the pillar roots, and the filters Salt templates use most (`json`, `yaml`,
//! `yaml_encode`, `yaml_dquote`, `yaml_squote`, `load_yaml`, `load_json`, `to_bool`,
//! `unique`, `sequence`). Values keep their order (Python dicts do).

use brine_proto::Value;
use minijinja::value::{Object, ObjectRepr, Value as J};
use minijinja::{Environment, Error, ErrorKind};

/// A brine value as a Jinja value.
pub fn to_jinja(v: &Value) -> J {
    match v {
        Value::Nil => J::from(()),
        Value::Bool(b) => J::from(*b),
        Value::Int(i) => J::from(*i),
        Value::Uint(u) => J::from(*u),
        Value::F32(f) => J::from(f64::from(*f)),
        Value::F64(f) => J::from(*f),
        Value::Str(b) => J::from(String::from_utf8_lossy(b).into_owned()),
        Value::Bin(b) => J::from_bytes(b.clone()),
        Value::Array(items) => J::from(items.iter().map(to_jinja).collect::<Vec<J>>()),
        Value::Map(pairs) => J::from_pairs(pairs.iter().map(|(k, v)| (to_jinja(k), to_jinja(v)))),
        Value::Ext(..) => J::from(()),
    }
}

/// A Jinja value as a brine value (maps keep their order).
pub fn from_jinja(v: &J) -> Value {
    use minijinja::value::ValueKind as K;
    match v.kind() {
        K::Undefined | K::None => Value::Nil,
        K::Bool => Value::Bool(v.is_true()),
        K::Number => {
            if let Ok(i) = i64::try_from(v.clone()) {
                Value::Int(i)
            } else if let Ok(u) = u64::try_from(v.clone()) {
                Value::Uint(u)
            } else {
                Value::F64(f64::try_from(v.clone()).unwrap_or(f64::NAN))
            }
        }
        K::String => Value::str(v.as_str().unwrap_or_default()),
        K::Bytes => Value::Bin(v.as_bytes().unwrap_or_default().to_vec()),
        K::Seq | K::Iterable => Value::Array(
            v.try_iter()
                .map(|it| it.map(|x| from_jinja(&x)).collect())
                .unwrap_or_default(),
        ),
        K::Map => Value::Map(
            v.try_iter()
                .map(|keys| {
                    keys.map(|k| {
                        let val = v.get_item(&k).unwrap_or_default();
                        (from_jinja(&k), from_jinja(&val))
                    })
                    .collect()
                })
                .unwrap_or_default(),
        ),
        _ => Value::str(v.to_string()),
    }
}

fn json_text(v: &Value) -> String {
    serde_json::to_string(&crate::json::to_json(v)).unwrap_or_default()
}

fn filter_err(msg: impl Into<String>) -> Error {
    Error::new(ErrorKind::InvalidOperation, msg.into())
}

/// Salt's execution modules as pillar templates see them (`salt['grains.get'](...)`): the few
/// that read data the master has for the minion. Others are an error naming the function.
#[derive(Debug)]
pub struct SaltFuncs {
    /// The minion's grains.
    pub grains: Value,
    /// The options templates see (`opts`).
    pub opts: Value,
}

impl Object for SaltFuncs {
    fn repr(self: &std::sync::Arc<Self>) -> ObjectRepr {
        ObjectRepr::Map
    }

    fn get_value(self: &std::sync::Arc<Self>, key: &J) -> Option<J> {
        let name = key.as_str()?.to_owned();
        let me = self.clone();
        Some(J::from_function(
            move |args: minijinja::value::Rest<J>| -> Result<J, Error> {
                let arg = |i: usize| args.0.get(i).cloned();
                let key = arg(0)
                    .and_then(|k| k.as_str().map(str::to_owned))
                    .unwrap_or_default();
                let default = arg(1).unwrap_or_else(|| J::from(""));
                let delim = arg(2)
                    .and_then(|d| d.as_str().map(str::to_owned))
                    .unwrap_or_else(|| ":".into());
                let lookup = |data: &Value| -> Option<Value> {
                    let mut ptr = data;
                    for part in key.split(delim.as_str()) {
                        ptr = match ptr {
                            Value::Map(_) => ptr.get(part)?,
                            Value::Array(items) => items.get(part.parse::<usize>().ok()?)?,
                            _ => return None,
                        };
                    }
                    Some(ptr.clone())
                };
                match name.as_str() {
                    "grains.get" | "grains.item" => {
                        Ok(lookup(&me.grains).map_or(default, |v| to_jinja(&v)))
                    }
                    // Pillar is being compiled: templates see none of it (as in Salt).
                    "pillar.get" => Ok(default),
                    "config.get" => Ok(lookup(&me.opts)
                        .or_else(|| lookup(&me.grains))
                        .map_or(default, |v| to_jinja(&v))),
                    other => Err(filter_err(format!(
                        "salt['{other}'] is not available in brine's pillar renderer \
                         (grains.get, grains.item, pillar.get and config.get are)"
                    ))),
                }
            },
        ))
    }
}

/// A Jinja environment for pillar templates, loading `include`/`import`ed templates with
/// `load` (a path relative to the pillar roots).
pub fn environment(
    load: impl Fn(&str) -> Option<String> + Send + Sync + 'static,
    lstrip_blocks: bool,
    trim_blocks: bool,
) -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    if let Ok(syntax) = minijinja::syntax::SyntaxConfig::builder()
        .lstrip_blocks(lstrip_blocks)
        .trim_blocks(trim_blocks)
        .keep_trailing_newline(true)
        .build()
    {
        env.set_syntax(syntax);
    }
    env.set_loader(move |name| Ok(load(name)));
    env.add_filter("json", |v: J| json_text(&from_jinja(&v)));
    env.add_filter("yaml", |v: J| json_text(&from_jinja(&v)));
    env.add_filter("yaml_encode", |v: J| json_text(&from_jinja(&v)));
    env.add_filter("yaml_dquote", |v: J| json_text(&Value::str(v.to_string())));
    env.add_filter("yaml_squote", |v: J| {
        format!("'{}'", v.to_string().replace('\'', "''"))
    });
    env.add_filter("load_yaml", |v: J| -> Result<J, Error> {
        crate::yaml::load(v.as_str().unwrap_or_default())
            .map(|y| to_jinja(&y))
            .map_err(|e| filter_err(e.to_string()))
    });
    env.add_filter("load_json", |v: J| -> Result<J, Error> {
        serde_json::from_str::<serde_json::Value>(v.as_str().unwrap_or_default())
            .map(|j| to_jinja(&crate::json::from_json(&j)))
            .map_err(|e| filter_err(e.to_string()))
    });
    env.add_filter("to_bool", |v: J| -> bool {
        match v.as_str() {
            Some(s) => matches!(s.to_lowercase().as_str(), "true" | "yes" | "1" | "on"),
            None => v.is_true(),
        }
    });
    env.add_filter("unique", |v: J| -> J {
        let mut seen: Vec<J> = Vec::new();
        if let Ok(it) = v.try_iter() {
            for x in it {
                if !seen.contains(&x) {
                    seen.push(x);
                }
            }
        }
        J::from(seen)
    });
    env.add_filter("sequence", |v: J| -> J {
        match v.kind() {
            minijinja::value::ValueKind::Seq => v,
            _ => J::from(vec![v]),
        }
    });
    env
}

/// A render failure: the message, and the template line it points at (if known).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderError {
    /// What went wrong (minijinja's words).
    pub message: String,
    /// 1-based line in the template.
    pub line: Option<usize>,
}

/// Render `source` (named `name` in errors) with `ctx`.
///
/// # Errors
/// [`RenderError`].
pub fn render(
    env: &Environment<'static>,
    name: &str,
    source: &str,
    ctx: J,
) -> Result<String, RenderError> {
    let fail = |e: Error| RenderError {
        message: match e.detail() {
            Some(d) => format!("{}: {d}", e.kind()),
            None => e.kind().to_string(),
        },
        line: e.line(),
    };
    env.render_named_str(name, source, ctx).map_err(fail)
}

/// Salt's `get_context`: the lines around `line` with the error line marked.
pub fn context(source: &str, line: usize) -> String {
    let lines: Vec<&str> = source.lines().collect();
    if line == 0 || line > lines.len() {
        return format!("---\n{source}\n---");
    }
    let start = line.saturating_sub(6);
    let end = (line + 5).min(lines.len());
    let mut out = Vec::new();
    if start > 0 {
        out.push("[...]".to_owned());
    }
    for (i, l) in lines[start..end].iter().enumerate() {
        if start + i + 1 == line {
            out.push(format!("{l}    <======================"));
        } else {
            out.push((*l).to_owned());
        }
    }
    if end < lines.len() {
        out.push("[...]".to_owned());
    }
    format!("---\n{}\n---", out.join("\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_with_salt_habits() {
        let env = environment(|_| None, false, false);
        let grains = Value::map().with("id", "m1").with("os", "Debian");
        let ctx = J::from_pairs([
            ("grains", to_jinja(&grains)),
            (
                "salt",
                J::from_object(SaltFuncs {
                    grains: grains.clone(),
                    opts: Value::map(),
                }),
            ),
        ]);
        let out = render(
            &env,
            "t.sls",
            "os: {{ grains['os'] }}\nid: {{ salt['grains.get']('id') }}\nmissing: {{ salt['grains.get']('nope', 'dflt') }}\nl: {{ [1, 2] | json }}\n{% for k, v in grains.items() %}{{ k }}={{ v }} {% endfor %}\n",
            ctx.clone(),
        )
        .unwrap();
        assert_eq!(
            out,
            "os: Debian\nid: m1\nmissing: dflt\nl: [1,2]\nid=m1 os=Debian \n"
        );
        let e = render(&env, "t.sls", "a: 1\nb: {{ nope.x }}\n", ctx.clone()).unwrap_err();
        assert_eq!(e.line, Some(2));
        assert!(render(&env, "t.sls", "{{ salt['cmd.run']('id') }}", ctx).is_err());
        assert_eq!(
            context("a\nb\nc", 2),
            "---\na\nb    <======================\nc\n---"
        );
    }
}
