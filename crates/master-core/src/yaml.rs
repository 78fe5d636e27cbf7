//! YAML as Salt's `SaltYamlSafeLoader` reads it (PyYAML's safe loader, YAML 1.1), into
//! [`Value`]s that keep key order: plain scalars resolve with YAML 1.1's implicit types (`yes`,
//! `on` and `off` are booleans; `1e3` is a string, `1.0e+3` a float; `0b`/`0x` integers,
//! sexagesimal `1:30`), with Salt's changes (a leading-zero integer is decimal, not octal;
//! timestamps stay strings; a repeated key is an error); merge keys (`<<`), anchors and aliases.
//! The event parser is granit-parser (the one serde-saphyr uses).

use std::borrow::Cow;
use std::collections::HashMap;

use brine_proto::Value;
use granit_parser::{Event, Parser, ScalarStyle, Span};

/// Why a YAML text could not be loaded (the message says where).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct YamlError(pub String);

fn err_at(span: &Span, msg: impl std::fmt::Display) -> YamlError {
    YamlError(format!(
        "{msg}\n  line {}, column {}",
        span.start.line(),
        span.start.col() + 1
    ))
}

/// Load one YAML document (an empty text is `Nil`).
///
/// # Errors
/// [`YamlError`] for syntax errors, several documents, repeated keys, unacceptable keys and
/// tags the safe loader does not construct.
pub fn load(text: &str) -> Result<Value, YamlError> {
    let mut b = Builder {
        parser: Parser::new_from_str(text),
        anchors: HashMap::new(),
    };
    let mut doc: Option<Value> = None;
    while let Some(next) = b.parser.next_event() {
        let (ev, span) = next.map_err(|e| YamlError(e.to_string()))?;
        match ev {
            Event::StreamStart | Event::DocumentEnd => {}
            Event::StreamEnd => break,
            Event::DocumentStart(..) => {
                if doc.is_some() {
                    return Err(err_at(&span, "expected a single document in the stream"));
                }
                let (ev, span) = b.next()?;
                doc = Some(match ev {
                    Event::DocumentEnd => Value::Nil,
                    ev => b.node(ev, &span)?,
                });
                if let Some(Ok((Event::DocumentEnd, _))) =
                    b.parser.peek().map(|r| r.map(|(e, s)| (e.clone(), *s)))
                {
                    let _ = b.parser.next_event();
                }
            }
            other => return Err(err_at(&span, format!("unexpected {other:?}"))),
        }
    }
    Ok(doc.unwrap_or(Value::Nil))
}

struct Builder<'i> {
    parser: Parser<'i, granit_parser::StrInput<'i>>,
    anchors: HashMap<usize, Value>,
}

impl<'i> Builder<'i> {
    fn next(&mut self) -> Result<(Event<'i>, Span), YamlError> {
        match self.parser.next_event() {
            Some(r) => r.map_err(|e| YamlError(e.to_string())),
            None => Err(YamlError("unexpected end of the YAML stream".into())),
        }
    }

    fn node(&mut self, ev: Event<'i>, span: &Span) -> Result<Value, YamlError> {
        match ev {
            Event::Scalar(text, style, anchor, tag) => {
                let v = scalar(&text, style, tag.as_deref(), span)?;
                if anchor != 0 {
                    self.anchors.insert(anchor, v.clone());
                }
                Ok(v)
            }
            Event::Alias(id) => self
                .anchors
                .get(&id)
                .cloned()
                .ok_or_else(|| err_at(span, "found undefined alias")),
            Event::SequenceStart(_, anchor, tag) => {
                check_collection_tag(tag.as_deref(), "seq", span)?;
                let mut items = Vec::new();
                loop {
                    let (ev, sp) = self.next()?;
                    if matches!(ev, Event::SequenceEnd) {
                        break;
                    }
                    items.push(self.node(ev, &sp)?);
                }
                let v = Value::Array(items);
                if anchor != 0 {
                    self.anchors.insert(anchor, v.clone());
                }
                Ok(v)
            }
            Event::MappingStart(_, anchor, tag) => {
                check_collection_tag(tag.as_deref(), "map", span)?;
                let mut own: Vec<(Value, Value, Span)> = Vec::new();
                let mut merge: Vec<(Value, Value)> = Vec::new();
                loop {
                    let (ev, ksp) = self.next()?;
                    if matches!(ev, Event::MappingEnd) {
                        break;
                    }
                    let is_merge =
                        matches!(&ev, Event::Scalar(t, ScalarStyle::Plain, _, None) if t == "<<");
                    let key = if is_merge {
                        Value::Nil
                    } else {
                        self.node(ev, &ksp)?
                    };
                    let (vev, vsp) = self.next()?;
                    let value = self.node(vev, &vsp)?;
                    if is_merge {
                        let maps: Vec<Value> = match value {
                            m @ Value::Map(_) => vec![m],
                            Value::Array(items) => {
                                let mut v = Vec::new();
                                for m in items.into_iter().rev() {
                                    if !matches!(m, Value::Map(_)) {
                                        return Err(err_at(&vsp, "expected a mapping for merging"));
                                    }
                                    v.push(m);
                                }
                                v
                            }
                            _ => {
                                return Err(err_at(
                                    &vsp,
                                    "expected a mapping or list of mappings for merging",
                                ));
                            }
                        };
                        for m in maps {
                            if let Value::Map(pairs) = m {
                                merge.extend(pairs);
                            }
                        }
                        continue;
                    }
                    if matches!(key, Value::Map(_) | Value::Array(_)) {
                        return Err(err_at(&ksp, "found unacceptable key"));
                    }
                    own.push((key, value, ksp));
                }
                // Merged pairs first (those the mapping does not set itself), then its own.
                let mut pairs: Vec<(Value, Value)> = Vec::new();
                for (k, v) in merge {
                    if own.iter().any(|(ok, _, _)| ok == &k) || pairs.iter().any(|(pk, _)| pk == &k)
                    {
                        continue;
                    }
                    pairs.push((k, v));
                }
                let merged = pairs.len();
                for (k, v, sp) in own {
                    if pairs[merged..].iter().any(|(pk, _)| py_eq(pk, &k)) {
                        return Err(err_at(
                            &sp,
                            format!("found conflicting ID '{}'", key_text(&k)),
                        ));
                    }
                    pairs.push((k, v));
                }
                let v = Value::Map(pairs);
                if anchor != 0 {
                    self.anchors.insert(anchor, v.clone());
                }
                Ok(v)
            }
            other => Err(err_at(span, format!("unexpected {other:?}"))),
        }
    }
}

/// Python's `==` between two keys (`1 == 1.0 == True`).
fn py_eq(a: &Value, b: &Value) -> bool {
    let num = |v: &Value| -> Option<f64> {
        match v {
            Value::Bool(b) => Some(f64::from(u8::from(*b))),
            Value::Int(i) => Some(*i as f64),
            Value::Uint(u) => Some(*u as f64),
            Value::F64(f) => Some(*f),
            _ => None,
        }
    };
    match (num(a), num(b)) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

fn key_text(k: &Value) -> String {
    match k {
        Value::Str(b) => String::from_utf8_lossy(b).into_owned(),
        other => format!("{other:?}"),
    }
}

fn check_collection_tag(
    tag: Option<&granit_parser::Tag>,
    kind: &str,
    span: &Span,
) -> Result<(), YamlError> {
    match tag {
        None => Ok(()),
        Some(t) if t.handle() == "tag:yaml.org,2002:" && t.suffix() == kind => Ok(()),
        Some(t) => Err(err_at(
            span,
            format!(
                "could not determine a constructor for the tag '{}{}'",
                t.handle(),
                t.suffix()
            ),
        )),
    }
}

fn scalar(
    text: &str,
    style: ScalarStyle,
    tag: Option<&granit_parser::Tag>,
    span: &Span,
) -> Result<Value, YamlError> {
    if let Some(t) = tag {
        if t.handle() != "tag:yaml.org,2002:" {
            return Err(err_at(
                span,
                format!(
                    "could not determine a constructor for the tag '{}{}'",
                    t.handle(),
                    t.suffix()
                ),
            ));
        }
        let bad = || err_at(span, format!("invalid {} value {text:?}", t.suffix()));
        return match t.suffix() {
            "str" | "timestamp" => Ok(Value::str(text)),
            "null" => Ok(Value::Nil),
            "bool" => as_bool(text).map(Value::Bool).ok_or_else(bad),
            "int" => as_int(text).ok_or_else(bad),
            "float" => as_float(text).map(Value::F64).ok_or_else(bad),
            "binary" => {
                use base64::Engine as _;
                let clean: String = text.chars().filter(|c| !c.is_whitespace()).collect();
                base64::engine::general_purpose::STANDARD
                    .decode(clean)
                    .map(Value::Bin)
                    .map_err(|_| bad())
            }
            other => Err(err_at(
                span,
                format!(
                    "could not determine a constructor for the tag 'tag:yaml.org,2002:{other}'"
                ),
            )),
        };
    }
    if style != ScalarStyle::Plain {
        return Ok(Value::str(text));
    }
    Ok(resolve_plain(text))
}

/// YAML 1.1 implicit resolution of a plain scalar, as PyYAML's resolver with Salt's loader.
pub fn resolve_plain(text: &str) -> Value {
    if matches!(text, "" | "~" | "null" | "Null" | "NULL") {
        return Value::Nil;
    }
    if let Some(b) = as_bool(text) {
        return Value::Bool(b);
    }
    if is_yaml_int(text)
        && let Some(v) = as_int(text)
    {
        return v;
    }
    if is_yaml_float(text)
        && let Some(f) = as_float(text)
    {
        return Value::F64(f);
    }
    Value::str(text)
}

fn as_bool(t: &str) -> Option<bool> {
    match t {
        "yes" | "Yes" | "YES" | "true" | "True" | "TRUE" | "on" | "On" | "ON" => Some(true),
        "no" | "No" | "NO" | "false" | "False" | "FALSE" | "off" | "Off" | "OFF" => Some(false),
        _ => None,
    }
}

fn strip_sign(t: &str) -> (bool, &str) {
    match t.as_bytes().first() {
        Some(b'-') => (true, &t[1..]),
        Some(b'+') => (false, &t[1..]),
        _ => (false, t),
    }
}

/// PyYAML's int pattern: binary, octal (leading 0), decimal, hex, sexagesimal.
fn is_yaml_int(t: &str) -> bool {
    let (_, d) = strip_sign(t);
    let all = |s: &str, f: fn(char) -> bool| !s.is_empty() && s.chars().all(f);
    if let Some(b) = d.strip_prefix("0b") {
        return all(b, |c| c == '0' || c == '1' || c == '_');
    }
    if let Some(h) = d.strip_prefix("0x") {
        return all(h, |c| c.is_ascii_hexdigit() || c == '_');
    }
    if d == "0" {
        return true;
    }
    if let Some(o) = d.strip_prefix('0') {
        return all(o, |c| ('0'..='7').contains(&c) || c == '_');
    }
    if d.contains(':') {
        let mut parts = d.split(':');
        let first = parts.next().unwrap_or("");
        return first.starts_with(|c: char| ('1'..='9').contains(&c))
            && all(first, |c| c.is_ascii_digit() || c == '_')
            && parts.all(|p| {
                (1..=2).contains(&p.len())
                    && p.chars().all(|c| c.is_ascii_digit())
                    && (p.len() == 1 || p.as_bytes()[0] <= b'5')
            });
    }
    d.starts_with(|c: char| ('1'..='9').contains(&c)) && all(d, |c| c.is_ascii_digit() || c == '_')
}

/// `construct_yaml_int` after Salt's `construct_scalar` (leading zeros are dropped, so `010`
/// is ten, not eight).
fn as_int(t: &str) -> Option<Value> {
    let salted: Cow<'_, str> =
        if t != "0" && t.starts_with('0') && !t.starts_with("0b") && !t.starts_with("0x") {
            let s = t.trim_start_matches('0');
            Cow::Owned(if s.is_empty() {
                "0".into()
            } else {
                s.to_owned()
            })
        } else {
            Cow::Borrowed(t)
        };
    let v: String = salted.chars().filter(|c| *c != '_').collect();
    let (neg, d) = strip_sign(&v);
    let mag: i128 = if d == "0" {
        0
    } else if let Some(b) = d.strip_prefix("0b") {
        i128::from_str_radix(b, 2).ok()?
    } else if let Some(h) = d.strip_prefix("0x") {
        i128::from_str_radix(h, 16).ok()?
    } else if d.starts_with('0') {
        i128::from_str_radix(d, 8).ok()?
    } else if d.contains(':') {
        let mut n: i128 = 0;
        for p in d.split(':') {
            n = n.checked_mul(60)?.checked_add(p.parse::<i128>().ok()?)?;
        }
        n
    } else {
        d.parse().ok()?
    };
    let n = if neg { -mag } else { mag };
    if let Ok(i) = i64::try_from(n) {
        Some(Value::Int(i))
    } else {
        u64::try_from(n).ok().map(Value::Uint)
    }
}

/// PyYAML's float pattern (a dot is required; an exponent needs its sign).
fn is_yaml_float(t: &str) -> bool {
    if matches!(t, ".nan" | ".NaN" | ".NAN") {
        return true;
    }
    let (_, d) = strip_sign(t);
    if matches!(d, ".inf" | ".Inf" | ".INF") {
        return true;
    }
    let digits_ = |s: &str| s.chars().all(|c| c.is_ascii_digit() || c == '_');
    let exp_ok = |e: &str| -> bool {
        let Some(rest) = e.strip_prefix(['e', 'E']) else {
            return e.is_empty();
        };
        let Some(num) = rest.strip_prefix(['-', '+']) else {
            return false;
        };
        !num.is_empty() && num.chars().all(|c| c.is_ascii_digit())
    };
    if d.contains(':') {
        let Some((int, frac)) = d.rsplit_once('.') else {
            return false;
        };
        let mut parts = int.split(':');
        let first = parts.next().unwrap_or("");
        return first.starts_with(|c: char| c.is_ascii_digit())
            && digits_(first)
            && parts.all(|p| {
                (1..=2).contains(&p.len())
                    && p.chars().all(|c| c.is_ascii_digit())
                    && (p.len() == 1 || p.as_bytes()[0] <= b'5')
            })
            && digits_(frac);
    }
    let Some(dot) = d.find('.') else {
        return false;
    };
    let (int, rest) = (&d[..dot], &d[dot + 1..]);
    let frac_end = rest.find(['e', 'E']).unwrap_or(rest.len());
    let (frac, exp) = (&rest[..frac_end], &rest[frac_end..]);
    if int.is_empty() {
        // `.5`: no sign allowed, at least one digit.
        return t == d && !frac.is_empty() && digits_(frac) && exp_ok(exp);
    }
    int.starts_with(|c: char| c.is_ascii_digit()) && digits_(int) && digits_(frac) && exp_ok(exp)
}

fn as_float(t: &str) -> Option<f64> {
    let v: String = t
        .chars()
        .filter(|c| *c != '_')
        .collect::<String>()
        .to_lowercase();
    let (neg, d) = strip_sign(&v);
    let mag = if d == ".inf" {
        f64::INFINITY
    } else if d == ".nan" {
        f64::NAN
    } else if d.contains(':') {
        let (int, frac) = d.rsplit_once('.')?;
        let mut n = 0f64;
        for p in int.split(':') {
            n = n * 60.0 + p.parse::<f64>().ok()?;
        }
        n + format!("0.{frac}").parse::<f64>().ok()?
    } else {
        d.parse().ok()?
    };
    Some(if neg { -mag } else { mag })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_1_1_as_salt_loads_it() {
        let v = load(
            "b: 1\na: yes\nc: [1, 2.5, null, on, ~, '']\nd: {z: 1, y: '2'}\ne: 0o17\nf: 1e3\ng: 1.0e+3\nh: 010\ni: 0x1F\nj: 1:30\nk: 2026-01-01\nl: .5\nm: -.inf\nn: \"yes\"\no: 0b101\np: 1_000\n",
        )
        .unwrap();
        let want = Value::map()
            .with("b", 1i64)
            .with("a", true)
            .with(
                "c",
                Value::Array(vec![
                    Value::Int(1),
                    Value::F64(2.5),
                    Value::Nil,
                    Value::Bool(true),
                    Value::Nil,
                    Value::str(""),
                ]),
            )
            .with("d", Value::map().with("z", 1i64).with("y", "2"))
            .with("e", "0o17")
            .with("f", "1e3")
            .with("g", 1000.0f64)
            .with("h", 10i64)
            .with("i", 31i64)
            .with("j", 90i64)
            .with("k", "2026-01-01")
            .with("l", 0.5f64)
            .with("m", f64::NEG_INFINITY)
            .with("n", "yes")
            .with("o", 5i64)
            .with("p", 1000i64);
        assert_eq!(v, want);
        assert_eq!(load("").unwrap(), Value::Nil);
        assert_eq!(load("# only a comment\n").unwrap(), Value::Nil);
    }

    #[test]
    fn merges_anchors_and_errors() {
        let v = load("base: &b {x: 1, y: 2}\nuse:\n  <<: *b\n  y: 3\n").unwrap();
        assert_eq!(
            v.get("use").unwrap(),
            &Value::map().with("x", 1i64).with("y", 3i64)
        );
        assert!(
            load("a: 1\na: 2\n")
                .unwrap_err()
                .0
                .contains("conflicting ID 'a'")
        );
        assert!(load("{a: 1}: x\n").is_err(), "a mapping as a key");
        assert!(load("a: !!python/object x\n").is_err());
        assert!(load("a: 1\n---\nb: 2\n").is_err(), "two documents");
        assert!(load("a:\n\t- b\n").is_err(), "a tab");
        assert!(load("a: [1, 2\nb: 3\n").is_err());
    }
}
