//! Salt's outputters over JSON values: `nested` (the default), `json`, `yaml`, `txt`, `raw`,
//! `quiet`. Text layout follows Salt 3007's with color off.

use serde_json::Value as Json;

/// An outputter brine does not have.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown outputter {0:?} (nested, json, yaml, txt, raw, quiet)")]
pub struct UnknownOutputter(pub String);

impl From<UnknownOutputter> for String {
    fn from(e: UnknownOutputter) -> Self {
        e.to_string()
    }
}

/// An outputter name, checked.
///
/// # Errors
/// [`UnknownOutputter`], which lists the known ones.
pub fn check(name: &str) -> Result<(), UnknownOutputter> {
    match name {
        "nested" | "json" | "yaml" | "txt" | "text" | "raw" | "quiet" | "no_return" => Ok(()),
        other => Err(UnknownOutputter(other.to_owned())),
    }
}

/// Render `v` with outputter `out`. The result has no trailing newline; empty means "print
/// nothing".
pub fn render(out: &str, v: &Json) -> String {
    let s = match out {
        "json" => return json4(v),
        "yaml" => yaml(v),
        "txt" | "text" => txt(v),
        "raw" => py_repr(v),
        "quiet" => String::new(),
        _ => {
            let mut lines = Vec::new();
            nested(v, 0, "", &mut lines);
            lines.join("\n")
        }
    };
    s.trim_end().to_owned()
}

/// JSON with Python's `indent=4` layout.
fn json4(v: &Json) -> String {
    let mut buf = Vec::new();
    let fmt = serde_json::ser::PrettyFormatter::with_indent(b"    ");
    let mut ser = serde_json::Serializer::with_formatter(&mut buf, fmt);
    serde::Serialize::serialize(v, &mut ser).ok();
    String::from_utf8(buf).unwrap_or_default()
}

fn scalar(v: &Json) -> Option<String> {
    match v {
        Json::Null => Some("None".into()),
        Json::Bool(true) => Some("True".into()),
        Json::Bool(false) => Some("False".into()),
        Json::Number(n) => Some(py_number(n)),
        _ => None,
    }
}

fn py_number(n: &serde_json::Number) -> String {
    if n.is_f64() {
        let f = n.as_f64().unwrap_or(0.0);
        if f.fract() == 0.0 && f.abs() < 1e16 {
            format!("{f:.1}")
        } else {
            format!("{f}")
        }
    } else {
        n.to_string()
    }
}

fn nested(v: &Json, indent: usize, prefix: &str, out: &mut Vec<String>) {
    let pad = " ".repeat(indent);
    if let Some(s) = scalar(v) {
        out.push(format!("{pad}{prefix}{s}"));
        return;
    }
    match v {
        Json::String(s) => {
            let s = s.replace('\x1b', "?");
            for (i, line) in s.lines().enumerate() {
                if i == 0 {
                    out.push(format!("{pad}{prefix}{line}"));
                } else {
                    out.push(format!("{pad}{}{line}", " ".repeat(prefix.len())));
                }
            }
        }
        Json::Array(a) => {
            for item in a {
                match item {
                    Json::Array(_) => {
                        out.push(format!("{pad}|_"));
                        nested(item, indent + 2, "- ", out);
                    }
                    Json::Object(_) => {
                        out.push(format!("{pad}|_"));
                        nested(item, indent + 2, "", out);
                    }
                    _ => nested(item, indent, "- ", out),
                }
            }
        }
        Json::Object(m) => {
            if indent > 0 {
                out.push(format!("{pad}----------"));
            }
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            for k in keys {
                out.push(format!("{pad}{prefix}{k}:"));
                nested(&m[k], indent + 4, "", out);
            }
        }
        _ => {}
    }
}

/// Python's `repr` of the value (Salt's `raw` outputter).
pub fn py_repr(v: &Json) -> String {
    if let Some(s) = scalar(v) {
        return s;
    }
    match v {
        Json::String(s) => py_str(s),
        Json::Array(a) => format!("[{}]", a.iter().map(py_repr).collect::<Vec<_>>().join(", ")),
        Json::Object(m) => format!(
            "{{{}}}",
            m.iter()
                .map(|(k, v)| format!("{}: {}", py_str(k), py_repr(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        _ => String::new(),
    }
}

fn py_str(s: &str) -> String {
    let q = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    let mut out = String::with_capacity(s.len() + 2);
    out.push(q);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == q => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push(q);
    out
}

fn txt(v: &Json) -> String {
    match v {
        Json::Object(m) => {
            let mut lines = Vec::new();
            for (k, v) in m {
                match v {
                    Json::String(s) => {
                        for l in s.lines() {
                            lines.push(format!("{k}: {l}"));
                        }
                    }
                    other => lines.push(format!("{k}: {}", py_repr(other))),
                }
            }
            lines.join("\n")
        }
        Json::String(s) => s.clone(),
        other => py_repr(other),
    }
}

fn yaml_scalar(v: &Json) -> String {
    match v {
        Json::Null => "null".into(),
        Json::Bool(b) => b.to_string(),
        Json::Number(n) => n.to_string(),
        Json::String(s) => yaml_str(s),
        Json::Array(_) => "[]".into(),
        Json::Object(_) => "{}".into(),
    }
}

fn yaml_str(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "._/-@()+,".contains(c) || c == ' ')
        && !s.starts_with([' ', '-', '@'])
        && !s.ends_with(' ')
        && s.parse::<f64>().is_err()
        && !matches!(
            s.to_ascii_lowercase().as_str(),
            "true" | "false" | "yes" | "no" | "on" | "off" | "null" | "~" | "y" | "n"
        );
    if plain {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', "''").replace('\n', "\n\n"))
    }
}

fn yaml_block(v: &Json, indent: usize, out: &mut Vec<String>) {
    let pad = " ".repeat(indent);
    match v {
        Json::Object(m) if !m.is_empty() => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            for k in keys {
                let val = &m[k];
                match val {
                    Json::Object(x) if !x.is_empty() => {
                        out.push(format!("{pad}{}:", yaml_str(k)));
                        yaml_block(val, indent + 2, out);
                    }
                    Json::Array(x) if !x.is_empty() => {
                        out.push(format!("{pad}{}:", yaml_str(k)));
                        yaml_block(val, indent, out);
                    }
                    _ => out.push(format!("{pad}{}: {}", yaml_str(k), yaml_scalar(val))),
                }
            }
        }
        Json::Array(a) if !a.is_empty() => {
            for item in a {
                match item {
                    Json::Object(x) if !x.is_empty() => {
                        let mut sub = Vec::new();
                        yaml_block(item, indent + 2, &mut sub);
                        if let Some(first) = sub.first_mut() {
                            *first = format!("{pad}- {}", first.trim_start());
                        }
                        out.extend(sub);
                    }
                    Json::Array(x) if !x.is_empty() => {
                        let mut sub = Vec::new();
                        yaml_block(item, indent + 2, &mut sub);
                        if let Some(first) = sub.first_mut() {
                            *first = format!("{pad}- {}", first.trim_start());
                        }
                        out.extend(sub);
                    }
                    _ => out.push(format!("{pad}- {}", yaml_scalar(item))),
                }
            }
        }
        other => out.push(format!("{pad}{}", yaml_scalar(other))),
    }
}

fn yaml(v: &Json) -> String {
    let mut lines = Vec::new();
    yaml_block(v, 0, &mut lines);
    lines.join("\n")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn nested_matches_salt() {
        assert_eq!(render("nested", &json!({"m1": true})), "m1:\n    True");
        assert_eq!(
            render("nested", &json!({"m1": {"b": [1, "x"], "a": 1}})),
            "m1:\n    ----------\n    a:\n        1\n    b:\n        - 1\n        - x"
        );
        assert_eq!(
            render("nested", &json!({"m1": "line1\nline2"})),
            "m1:\n    line1\n    line2"
        );
        assert_eq!(render("nested", &json!({"m1": {}})), "m1:\n    ----------");
        assert_eq!(render("nested", &json!({"m1": []})), "m1:");
        assert_eq!(
            render(
                "nested",
                &json!({"m1": {"l": [[1, 2], {"z": 1, "y": null}]}})
            ),
            "m1:\n    ----------\n    l:\n        |_\n          - 1\n          - 2\n        |_\n          ----------\n          y:\n              None\n          z:\n              1"
        );
        assert_eq!(render("nested", &json!(["m1", "m2"])), "- m1\n- m2");
    }

    #[test]
    fn other_outputters() {
        assert_eq!(
            render("json", &json!({"m1": true})),
            "{\n    \"m1\": true\n}"
        );
        assert_eq!(
            render("raw", &json!({"m1": "a\nb", "m2": null})),
            "{'m1': 'a\\nb', 'm2': None}"
        );
        assert_eq!(
            render("txt", &json!({"m1": "a\nb", "m2": [1]})),
            "m1: a\nm1: b\nm2: [1]"
        );
        assert_eq!(
            render("yaml", &json!({"m1": {"b": [1, "x"], "a": true, "e": {}}})),
            "m1:\n  a: true\n  b:\n  - 1\n  - x\n  e: {}"
        );
        assert_eq!(render("quiet", &json!({"m1": true})), "");
    }
}
