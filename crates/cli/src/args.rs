//! Command-line arguments typed as Salt's CLIs type them (`salt.utils.args.parse_input`):
//! `key=value` words become keyword arguments, and every value goes through Salt's
//! `yamlify_arg` — `1` is an integer, `True` a boolean, `{"a": 1}` a mapping, `None` null —
//! except what Salt keeps as written (jids, digits with underscores, text with tabs or line
//! breaks, a mapping or list not written in braces or brackets, what YAML would read as a
//! comment).

use brine_master_core::json::to_json;
use serde_json::{Map, Value as Json};

/// One word as Salt's `yamlify_arg` types it.
pub fn yamlify(arg: &str) -> Json {
    let keep = || Json::String(arg.to_owned());
    let t = arg.trim();
    if t.is_empty() || t == "---" || t == "..." {
        return keep();
    }
    if t.chars().all(|c| c.is_ascii_digit() || c == '_') && (t.contains('_') || is_jid(t)) {
        // Salt keeps digits with underscores as text, and gives jids back as strings.
        return keep();
    }
    if arg.contains(['\t', '\r', '\n']) {
        return keep();
    }
    if arg == "None" {
        return Json::Null;
    }
    let Ok(v) = brine_master_core::yaml::load(arg) else {
        return keep();
    };
    let v = to_json(&v);
    if arg.contains('#') {
        // Only a non-string result counts: '#' may have started a comment.
        return match v {
            Json::String(_) | Json::Null => keep(),
            other => other,
        };
    }
    match v {
        Json::Object(_) if !arg.starts_with('{') => keep(),
        Json::Array(_) if !arg.starts_with('[') => keep(),
        Json::String(ref s) if s.is_empty() && (arg == "|" || arg == "!") => keep(),
        Json::Null if t.starts_with('#') || arg == "!" => keep(),
        other => other,
    }
}

/// Salt's `is_jid`: twenty digits or more (a jid typed on a command line stays a string).
fn is_jid(s: &str) -> bool {
    s.len() >= 20 && s.chars().all(|c| c.is_ascii_digit())
}

/// Salt's `key=value` form: a name that starts with a letter or `_` and goes on with word
/// characters, `.` or `-`, then `=` not followed by another `=`.
fn kwarg(word: &str) -> Option<(&str, &str)> {
    let (k, v) = word.split_once('=')?;
    let mut chars = k.chars();
    let first = chars.next()?;
    let ok = (first.is_alphabetic() || first == '_')
        && chars.all(|c| c.is_alphanumeric() || matches!(c, '_' | '.' | '-'))
        && !v.starts_with('=');
    ok.then_some((k, v))
}

/// Positional arguments and keyword arguments from command-line words, as Salt's CLI makes
/// them.
pub fn parse(words: &[String]) -> (Vec<Json>, Map<String, Json>) {
    let mut args = Vec::new();
    let mut kw = Map::new();
    for w in words {
        match kwarg(w) {
            Some((k, v)) => {
                kw.insert(k.to_owned(), yamlify(v));
            }
            None => args.push(yamlify(w)),
        }
    }
    (args, kw)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn words_are_typed_as_salts_cli_types_them() {
        let words: Vec<String> = [
            "1",
            "True",
            "yes",
            "{\"a\": 1}",
            "a: 1",
            "[1, 2]",
            "1, 2",
            "None",
            "echo $HOME",
            "20261207221130429748",
            "1_000",
            "3.5",
            "#nope",
            "a # b",
            "",
            "k=5",
            "python_shell=False",
            "name=web 1",
            "x==y",
            "1a=2",
            "dotted.key-x=null",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        let (args, kw) = parse(&words);
        assert_eq!(
            Json::Array(args),
            json!([1, true, true, {"a": 1}, "a: 1", [1, 2], "1, 2", null, "echo $HOME",
                   "20261207221130429748", "1_000", 3.5, "#nope", "a # b", "", "x==y", "1a=2"])
        );
        assert_eq!(
            Json::Object(kw),
            json!({"k": 5, "python_shell": false, "name": "web 1", "dotted.key-x": null})
        );
    }
}
