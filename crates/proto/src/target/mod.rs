//! Target matching, as a pure function of the expression and one minion's facts.
//!
//! Follows Salt's matchers (`salt/matchers/*.py`): `glob` (Python `fnmatch`, case-sensitive),
//! `list`, `pcre` (`re.match`: anchored at the start only), `grain` / `grain_pcre` / `pillar` /
//! `pillar_pcre` (`subdict_match`: nested keys split on the delimiter, deepest first,
//! case-insensitive glob or regex on the values), `ipcidr`, and `compound`
//! (`G@ P@ I@ J@ L@ E@ S@ N@` words joined with `and`, `or`, `not` and parentheses; a bare word is
//! a glob). Nodegroups are expanded by a lookup the caller supplies.
//!
//! Regular expressions use the `regex` crate: Python features it lacks (backreferences,
//! look-around) make the expression invalid, which matches nothing, and is reported as an error.

mod compound;
mod glob;

use std::net::IpAddr;

use crate::value::Value;

pub use compound::parse_word;
pub use glob::fnmatch;

/// What a matcher needs to know about one minion.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    /// Minion id.
    pub id: &'a str,
    /// Grains (a map), or `Nil` if unknown.
    pub grains: &'a Value,
    /// Pillar (a map), or `Nil` if unknown.
    pub pillar: &'a Value,
}

/// Why a target could not be evaluated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TargetError {
    /// A `tgt_type` Salt does not know (the minion ignores such jobs).
    #[error("unknown tgt_type {0:?}")]
    UnknownType(String),
    /// A regular expression that does not compile.
    #[error("invalid regex {0:?}")]
    BadRegex(String),
    /// A compound expression that does not parse.
    #[error("invalid compound target: {0}")]
    BadCompound(String),
    /// A nodegroup that is not defined.
    #[error("unknown nodegroup {0:?}")]
    UnknownNodegroup(String),
    /// The target value has the wrong shape for its type (e.g. a map for a glob).
    #[error("target of the wrong shape for {0}")]
    BadShape(&'static str),
}

/// Expands a nodegroup name to its compound expression (or `None` if undefined).
pub trait Nodegroups {
    /// The compound expression for `name`.
    fn expand(&self, name: &str) -> Option<String>;
}

/// No nodegroups defined.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoNodegroups;

impl Nodegroups for NoNodegroups {
    fn expand(&self, _: &str) -> Option<String> {
        None
    }
}

impl<F: Fn(&str) -> Option<String>> Nodegroups for F {
    fn expand(&self, name: &str) -> Option<String> {
        self(name)
    }
}

/// Whether `facts` match `tgt` of type `tgt_type` (`glob`, `pcre`, `list`, `grain`,
/// `grain_pcre`, `pillar`, `pillar_pcre`, `ipcidr`, `compound`, `nodegroup`).
///
/// # Errors
/// [`TargetError`] for unknown types and malformed expressions.
pub fn matches(
    tgt: &Value,
    tgt_type: &str,
    delimiter: &str,
    facts: &Facts<'_>,
    groups: &dyn Nodegroups,
) -> Result<bool, TargetError> {
    let text = || tgt.as_str().ok_or(TargetError::BadShape("a string target"));
    match tgt_type {
        "glob" => Ok(fnmatch(text()?, facts.id)),
        "pcre" => regex_match(text()?, facts.id, false),
        "list" => Ok(match tgt {
            Value::Array(items) => items.iter().any(|i| i.is_str(facts.id)),
            _ => text()?.split(',').any(|s| s.trim() == facts.id),
        }),
        "grain" => Ok(subdict_match(facts.grains, text()?, delimiter, false)),
        "grain_pcre" => Ok(subdict_match(facts.grains, text()?, delimiter, true)),
        "pillar" => Ok(subdict_match(facts.pillar, text()?, delimiter, false)),
        "pillar_pcre" => Ok(subdict_match(facts.pillar, text()?, delimiter, true)),
        "ipcidr" => Ok(ipcidr_match(text()?, facts.grains)),
        "compound" => compound::eval(tgt, delimiter, facts, groups),
        "nodegroup" => {
            let name = text()?;
            let expr = groups
                .expand(name)
                .ok_or_else(|| TargetError::UnknownNodegroup(name.into()))?;
            compound::eval(&Value::str(expr), delimiter, facts, groups)
        }
        other => Err(TargetError::UnknownType(other.into())),
    }
}

/// Compiled expressions kept per thread: a master matches one expression against thousands of
/// minions, and compiling it each time would cost more than the matching.
const REGEX_CACHE_SIZE: usize = 256;

thread_local! {
    static REGEX_CACHE: std::cell::RefCell<std::collections::HashMap<String, Option<regex::Regex>>> =
        std::cell::RefCell::new(std::collections::HashMap::new());
}

/// `re.match(pattern, text)`: anchored at the start, not the end.
fn regex_match(pattern: &str, text: &str, case_insensitive: bool) -> Result<bool, TargetError> {
    let key = if case_insensitive {
        format!("(?i){pattern}")
    } else {
        pattern.to_owned()
    };
    let hit = REGEX_CACHE.with(|c| {
        let mut c = c.borrow_mut();
        if let Some(re) = c.get(&key) {
            return re.as_ref().map(|re| re.is_match(text));
        }
        if c.len() >= REGEX_CACHE_SIZE {
            c.clear();
        }
        let re = regex::RegexBuilder::new(&format!("^(?:{pattern})"))
            .case_insensitive(case_insensitive)
            .size_limit(1 << 20)
            .build()
            .ok();
        let m = re.as_ref().map(|re| re.is_match(text));
        c.insert(key, re);
        m
    });
    hit.ok_or_else(|| TargetError::BadRegex(pattern.into()))
}

/// Python `str()` of a grain value, as `subdict_match._match` compares it.
fn py_str(v: &Value) -> String {
    match v {
        Value::Nil => "None".into(),
        Value::Bool(true) => "True".into(),
        Value::Bool(false) => "False".into(),
        Value::Int(i) => i.to_string(),
        Value::Uint(u) => u.to_string(),
        Value::F32(f) => format!("{f:?}"),
        Value::F64(f) => format!("{f:?}"),
        Value::Str(b) | Value::Bin(b) => String::from_utf8_lossy(b).into_owned(),
        other => format!("{other:?}"),
    }
}

fn value_match(target: &Value, pattern: &str, regex: bool) -> bool {
    let t = py_str(target).to_lowercase();
    let p = pattern.to_lowercase();
    if regex {
        regex_match(&p, &t, false).unwrap_or(false)
    } else {
        fnmatch(&p, &t)
    }
}

/// `traverse_dict_and_list`: follow `key` split on `delimiter` through maps and lists.
fn traverse<'v>(data: &'v Value, key: &str, delimiter: &str) -> Option<&'v Value> {
    let mut ptr = data;
    for part in key.split(delimiter) {
        ptr = match ptr {
            Value::Map(_) => ptr.get(part)?,
            Value::Array(items) => {
                if let Some(v) = part.parse::<usize>().ok().and_then(|i| items.get(i)) {
                    v
                } else {
                    items
                        .iter()
                        .filter(|x| matches!(x, Value::Map(_)))
                        .find_map(|m| m.get(part))?
                }
            }
            _ => return None,
        };
    }
    Some(ptr)
}

fn dict_match(target: &Value, pattern: &str, regex: bool) -> bool {
    let Some(entries) = target.as_map() else {
        return false;
    };
    let (wildcard, pattern) = match pattern.strip_prefix("*:") {
        Some(p) => (true, p),
        None => (false, pattern),
    };
    if pattern == "*"
        || target.get(pattern).is_some()
        || entries.iter().any(|(k, _)| value_match(k, pattern, regex))
        || subdict_match(target, pattern, ":", regex)
    {
        return true;
    }
    if wildcard {
        for (_, v) in entries {
            let hit = match v {
                Value::Map(_) => dict_match(v, pattern, regex),
                Value::Array(items) => items.iter().any(|i| value_match(i, pattern, regex)),
                _ => value_match(v, pattern, regex),
            };
            if hit {
                return true;
            }
        }
    }
    false
}

/// Salt's `subdict_match`: `foo:bar:baz` matches `data.foo == "bar:baz"` and
/// `data.foo.bar == "baz"`, deeper keys tried first.
pub fn subdict_match(data: &Value, expr: &str, delimiter: &str, regex: bool) -> bool {
    let splits: Vec<&str> = expr.split(delimiter).collect();
    if splits.len() == 1 {
        return false;
    }
    for idx in (1..splits.len()).rev() {
        let key = splits[..idx].join(delimiter);
        let (matchstr, found) = if key == "*" {
            (expr.to_owned(), Some(data))
        } else {
            (
                splits[idx..].join(delimiter),
                traverse(data, &key, delimiter),
            )
        };
        let Some(found) = found else { continue };
        match found {
            Value::Map(m) if m.is_empty() => continue,
            Value::Map(_) => {
                if dict_match(found, &matchstr, regex) {
                    return true;
                }
            }
            Value::Array(items) => {
                if items.iter().any(|i| match i {
                    Value::Map(_) => dict_match(i, &matchstr, regex),
                    _ => value_match(i, &matchstr, regex),
                }) {
                    return true;
                }
            }
            other => {
                if value_match(other, &matchstr, regex) {
                    return true;
                }
            }
        }
    }
    false
}

/// `ipcidr`: `tgt` is an address or a network; matched against the `ipv4`/`ipv6` grains.
fn ipcidr_match(tgt: &str, grains: &Value) -> bool {
    let (addr, prefix) = match tgt.split_once('/') {
        Some((a, p)) => (a, p.parse::<u32>().ok()),
        None => (tgt, None),
    };
    let Ok(net) = addr.parse::<IpAddr>() else {
        return false;
    };
    let key = if net.is_ipv4() { "ipv4" } else { "ipv6" };
    let Some(addrs) = grains.get(key).and_then(Value::as_array) else {
        return false;
    };
    addrs
        .iter()
        .filter_map(|a| a.as_str()?.parse::<IpAddr>().ok())
        .any(|ip| in_network(ip, net, prefix))
}

fn in_network(ip: IpAddr, net: IpAddr, prefix: Option<u32>) -> bool {
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let p = prefix.unwrap_or(32).min(32);
            let mask = if p == 0 { 0 } else { u32::MAX << (32 - p) };
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let p = prefix.unwrap_or(128).min(128);
            let mask = if p == 0 { 0 } else { u128::MAX << (128 - p) };
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests;
