//! `salt.utils.data.subdict_match` and `traverse_dict_and_list`, the engine of grain and pillar
//! targets, followed step by step with three-valued answers.

use super::TargetError;
use super::Tri;
use super::glob::py_fnmatch;
use super::pyre::{self, PyReError};
use super::pystr::{py_dict, py_lower, py_str};
use crate::value::Value;

/// How a pattern is compared with a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    /// `fnmatch` on lower-cased text (grain, pillar).
    Glob,
    /// `re.match` on lower-cased text (grain_pcre, pillar_pcre).
    Regex,
    /// Equality of lower-cased text (the master's `pillar_exact`, for `mine.get`).
    Exact,
}

/// What `traverse_dict_and_list` found.
enum Found<'v> {
    /// The default (`{}`): nothing there.
    Nothing,
    Some(&'v Value),
    Unknown,
}

/// `_match(target, pattern)`.
fn py_match(target: &Value, pattern: &str, mode: Mode) -> Result<Tri, TargetError> {
    let Some(t) = py_str(target).and_then(|s| py_lower(&s)) else {
        return Ok(Tri::Unknown);
    };
    let Some(p) = py_lower(pattern) else {
        return Ok(Tri::Unknown);
    };
    Ok(match mode {
        Mode::Glob => Tri::from(py_fnmatch(&t, &p)),
        Mode::Exact => Tri::from(t == p),
        Mode::Regex => match pyre::compile(&p) {
            Ok(re) => Tri::from(re.match_start(&t)),
            // Salt catches the exception and answers False.
            Err(PyReError::Invalid { .. }) => Tri::No,
            Err(e @ PyReError::Unsupported { .. }) => {
                return Err(TargetError::Unsupported(e.to_string()));
            }
        },
    })
}

/// `int(s)` for the index of a list: ASCII digits only are evaluated.
enum Index {
    Int(i64),
    NotInt,
    Unknown,
}

fn list_index(s: &str) -> Index {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return s.parse().map_or(Index::Unknown, Index::Int);
    }
    // `int()` also takes signs, surrounding whitespace, underscores and non-ASCII digits.
    if s.chars().any(|c| c.is_numeric()) {
        return Index::Unknown;
    }
    Index::NotInt
}

/// Whether YAML-loading `s` (the retry `traverse_dict_and_list` makes for a missing key) can
/// only give `s` itself or a non-string: plain ASCII words.
fn yaml_plain(s: &str) -> bool {
    s.chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == '/')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_./-".contains(c))
}

fn lookup<'v>(ptr: &'v Value, each: &str) -> Found<'v> {
    match ptr {
        Value::Array(items) => {
            let dicts: Vec<&Value> = items.iter().filter(|x| x.as_map().is_some()).collect();
            match list_index(each) {
                Index::Unknown => Found::Unknown,
                Index::NotInt => {
                    for d in dicts {
                        let Some(entries) = py_dict(d) else {
                            return Found::Unknown;
                        };
                        if let Some((_, v)) = entries.iter().find(|(k, _)| *k == each) {
                            return Found::Some(v);
                        }
                    }
                    Found::Nothing
                }
                Index::Int(i) => {
                    // Embedded dicts are tried with the integer key first: string keys only
                    // never hold it.
                    if dicts.iter().any(|d| py_dict(d).is_none()) {
                        return Found::Unknown;
                    }
                    let len = items.len() as i64;
                    let idx = if i < 0 { i + len } else { i };
                    if (0..len).contains(&idx) {
                        Found::Some(&items[idx as usize])
                    } else {
                        Found::Nothing
                    }
                }
            }
        }
        Value::Map(_) => {
            let Some(entries) = py_dict(ptr) else {
                return Found::Unknown;
            };
            if let Some((_, v)) = entries.iter().find(|(k, _)| *k == each) {
                return Found::Some(v);
            }
            if yaml_plain(each) {
                Found::Nothing
            } else {
                Found::Unknown
            }
        }
        // `str`, numbers, None, bool: `ptr[each]` raises TypeError, the default comes back.
        Value::Str(_)
        | Value::Nil
        | Value::Bool(_)
        | Value::Int(_)
        | Value::Uint(_)
        | Value::F32(_)
        | Value::F64(_)
        | Value::Bin(_) => Found::Nothing,
        Value::Ext(..) => Found::Unknown,
    }
}

fn traverse<'v>(data: &'v Value, key: &str, delimiter: &str) -> Found<'v> {
    let mut ptr = data;
    for each in key.split(delimiter) {
        match lookup(ptr, each) {
            Found::Some(v) => ptr = v,
            other => return other,
        }
    }
    Found::Some(ptr)
}

fn is_empty_dict(v: &Value) -> bool {
    matches!(v, Value::Map(m) if m.is_empty())
}

/// `_dict_match(target, pattern)`.
fn dict_match(target: &Value, pattern: &str, mode: Mode) -> Result<Tri, TargetError> {
    let Some(entries) = py_dict(target) else {
        return Ok(Tri::Unknown);
    };
    let (wildcard, pattern) = match pattern.strip_prefix("*:") {
        Some(p) => (true, p),
        None => (false, pattern),
    };
    let mut ret = Tri::from(pattern == "*" || entries.iter().any(|(k, _)| *k == pattern));
    if ret == Tri::Yes {
        return Ok(ret);
    }
    for (k, _) in &entries {
        ret = ret.or(py_match(&Value::str(k), pattern, mode)?);
        if ret == Tri::Yes {
            return Ok(ret);
        }
    }
    ret = ret.or(subdict_match(target, pattern, ":", mode)?);
    if ret == Tri::Yes || !wildcard {
        return Ok(ret);
    }
    for (_, v) in &entries {
        let hit = match v {
            Value::Map(_) => dict_match(v, pattern, mode)?,
            Value::Array(items) => {
                let mut any = Tri::No;
                for item in items {
                    any = any.or(py_match(item, pattern, mode)?);
                    if any == Tri::Yes {
                        break;
                    }
                }
                any
            }
            other => py_match(other, pattern, mode)?,
        };
        ret = ret.or(hit);
        if ret == Tri::Yes {
            break;
        }
    }
    Ok(ret)
}

/// `subdict_match(data, expr, delimiter)`: `foo:bar:baz` matches `data.foo == "bar:baz"` and
/// `data.foo.bar == "baz"`, deeper keys first.
///
/// # Errors
/// [`TargetError::Unsupported`] for a regular expression brine cannot evaluate.
pub(super) fn subdict_match(
    data: &Value,
    expr: &str,
    delimiter: &str,
    mode: Mode,
) -> Result<Tri, TargetError> {
    if delimiter.is_empty() {
        return Err(TargetError::BadShape("a non-empty delimiter"));
    }
    let splits: Vec<&str> = expr.split(delimiter).collect();
    if splits.len() == 1 {
        return Ok(Tri::No);
    }
    let mut ret = Tri::No;
    for idx in (1..splits.len()).rev() {
        let key = splits[..idx].join(delimiter);
        let (matchstr, found) = if key == "*" {
            (expr.to_owned(), Found::Some(data))
        } else {
            (
                splits[idx..].join(delimiter),
                traverse(data, &key, delimiter),
            )
        };
        let found = match found {
            Found::Nothing => continue,
            Found::Unknown => {
                ret = Tri::Unknown;
                continue;
            }
            Found::Some(v) if is_empty_dict(v) => continue,
            Found::Some(v) => v,
        };
        let hit = match found {
            Value::Map(_) => dict_match(found, &matchstr, mode)?,
            Value::Array(items) => {
                let mut any = Tri::No;
                for member in items {
                    if member.as_map().is_some() {
                        any = any.or(dict_match(member, &matchstr, mode)?);
                        if any == Tri::Yes {
                            break;
                        }
                    }
                    // A dict member is also matched as its `str()`.
                    any = any.or(py_match(member, &matchstr, mode)?);
                    if any == Tri::Yes {
                        break;
                    }
                }
                any
            }
            other => py_match(other, &matchstr, mode)?,
        };
        ret = ret.or(hit);
        if ret == Tri::Yes {
            return Ok(ret);
        }
    }
    Ok(ret)
}
