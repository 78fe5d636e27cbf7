//! Compound targets, as Salt's `compound_match.match` evaluates them on a minion: each word is
//! matched (`G@ P@ I@ J@ L@ S@ E@`, `N@` expanded in place, a bare word is a glob), the results
//! are joined with `and`/`or`/`not`/parentheses into a Python expression and `eval`ed.
//!
//! Every way the minion's evaluation can end is followed: a word whose matcher raises (a bad
//! address in the `ipv4` grain for `S@`) makes the whole target false on that minion; `S@` with
//! an invalid network is `[]` (false, `not` of it true); `( )` is an empty tuple (false). A
//! malformed expression (an operator first, a value after a value, `R@` without `seco.range`) is
//! false on every minion, and is reported as an error here so that a master refuses it.

use super::ipcidr::{Outcome, ipcidr};
use super::pystr::py_split;
use super::subdict::{Mode, subdict_match};
use super::{Facts, Nodegroups, TargetError, Tri, list_match, pcre};
use crate::value::Value;

/// Nodegroups may reference nodegroups; stop runaway expansion.
const MAX_WORDS: usize = 4096;

const OPERS: [&str; 5] = ["and", "or", "not", "(", ")"];

/// Split a compound word into `(engine, delimiter, pattern)` as `salt.utils.minions.parse_target`
/// does (its `TARGET_REX`): `G@os:Debian` → `(Some('G'), None, "os:Debian")`, `G;@a;b` →
/// `(Some('G'), Some(';'), "a;b")`; a word without an engine (or with an empty pattern) is a
/// glob. `T@` and `M@` (resources, Salt 3008) are engines here; older minions read them as globs.
pub fn parse_word(word: &str) -> (Option<char>, Option<char>, &str) {
    let mut it = word.char_indices();
    let Some((_, c0)) = it.next() else {
        return (None, None, word);
    };
    if !"GPIJLNSERTM".contains(c0) {
        return (None, None, word);
    }
    let rest: Vec<(usize, char)> = it.collect();
    if "GPIJ".contains(c0) && rest.len() >= 3 && rest[1].1 == '@' && rest[0].1 != '\n' {
        return (Some(c0), Some(rest[0].1), &word[rest[2].0..]);
    }
    if rest.len() >= 2 && rest[0].1 == '@' {
        return (Some(c0), None, &word[rest[1].0..]);
    }
    (None, None, word)
}

/// Salt's `nodegroup_comp`: the words a nodegroup expands to, as a minion (or Salt's master)
/// expands them; empty for an unknown or recursive nodegroup.
pub fn nodegroup_comp(
    name: &str,
    groups: &dyn Nodegroups,
    skip: &mut Vec<String>,
    first_call: bool,
) -> Vec<String> {
    if skip.iter().any(|s| s == name) {
        return Vec::new();
    }
    let Some(def) = groups.expand(name) else {
        return Vec::new();
    };
    let words: Vec<String> = py_split(&def).into_iter().map(str::to_owned).collect();
    skip.push(name.to_owned());
    let mut ret = Vec::new();
    let mut expanded = false;
    for w in &words {
        if OPERS.contains(&w.as_str()) {
            ret.push(w.clone());
        } else if w.chars().count() >= 3 && w.starts_with("N@") {
            expanded = true;
            ret.extend(nodegroup_comp(&w[2..], groups, skip, false));
        } else {
            ret.push(w.clone());
        }
    }
    if !ret.is_empty() {
        ret.insert(0, "(".into());
        ret.push(")".into());
    }
    skip.pop();
    if expanded || !first_call {
        if !first_call && let Some(j) = nodegroup_regex(&words) {
            return j;
        }
        return ret;
    }
    nodegroup_regex(&words).unwrap_or(words)
}

/// Salt's `_nodegroup_regex`: a nodegroup of plain words without operators is a list (`L@`)
/// or, when a word has a regex character, an expression (`E@`).
fn nodegroup_regex(words: &[String]) -> Option<Vec<String>> {
    if words.iter().any(|w| OPERS.contains(&w.as_str())) {
        return None;
    }
    let engine_like = |w: &str| {
        let mut c = w.chars();
        matches!((c.next(), c.next()), (Some(e), Some('@')) if e.is_ascii_uppercase())
    };
    if words.iter().any(|w| w.contains('*') || engine_like(w)) {
        return None;
    }
    let regexy = words
        .iter()
        .any(|w| w.contains(['(', '[', '{', '\\', '?', '}', ']', ')']));
    let prefix = if regexy { "E@" } else { "L@" };
    Some(vec![format!("{prefix}{}", words.join(","))])
}

/// One evaluated word: its truth, and whether its matcher raises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Atom {
    truth: Tri,
    raises: Tri,
}

impl Atom {
    fn value(truth: Tri) -> Self {
        Self {
            truth,
            raises: Tri::No,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tok {
    Val(Atom),
    And,
    Or,
    Not,
    Open,
    Close,
}

pub(super) fn eval(
    tgt: &Value,
    facts: &Facts<'_>,
    groups: &dyn Nodegroups,
    pillar_mode: Mode,
) -> Result<Tri, TargetError> {
    let mut words: Vec<String> = match tgt {
        Value::Array(items) => items
            .iter()
            .map(|w| w.as_str().map(str::to_owned))
            .collect::<Option<_>>()
            .ok_or(TargetError::BadShape("a compound word list"))?,
        _ => py_split(
            tgt.as_str()
                .ok_or(TargetError::BadShape("a compound string"))?,
        )
        .into_iter()
        .map(str::to_owned)
        .collect(),
    };
    words.reverse(); // pop from the end
    let mut toks: Vec<Tok> = Vec::new();
    let mut seen = 0usize;
    while let Some(word) = words.pop() {
        seen += 1;
        if seen > MAX_WORDS {
            return Err(TargetError::BadCompound("more than 4096 words".into()));
        }
        let op = match word.as_str() {
            "and" => Some(Tok::And),
            "or" => Some(Tok::Or),
            "not" => Some(Tok::Not),
            "(" => Some(Tok::Open),
            ")" => Some(Tok::Close),
            _ => None,
        };
        if let Some(op) = op {
            match toks.last() {
                Some(Tok::Open) if matches!(op, Tok::And | Tok::Or) => {
                    return Err(TargetError::BadCompound(format!("{word:?} after \"(\"")));
                }
                Some(last) if op == Tok::Not && !matches!(last, Tok::And | Tok::Or | Tok::Open) => {
                    toks.push(Tok::And);
                }
                None if !matches!(op, Tok::Open | Tok::Not) => {
                    return Err(TargetError::BadCompound(format!("starts with {word:?}")));
                }
                _ => {}
            }
            toks.push(op);
            continue;
        }
        if word.contains('\n') {
            return Err(TargetError::Unsupported(format!(
                "a compound word with a newline ({word:?})"
            )));
        }
        let (engine, delim, pattern) = parse_word(&word);
        let delim = delim.map_or_else(|| ":".to_owned(), String::from);
        let atom = match engine {
            None => Atom::value(Tri::from(super::glob::py_fnmatch(facts.id, &word))),
            Some('N') => {
                let mut skip = Vec::new();
                let expanded = nodegroup_comp(pattern, groups, &mut skip, true);
                for w in expanded.into_iter().rev() {
                    words.push(w);
                }
                continue;
            }
            Some('G') => Atom::value(data_word(facts.grains, pattern, &delim, Mode::Glob)?),
            Some('P') => Atom::value(data_word(facts.grains, pattern, &delim, Mode::Regex)?),
            Some('I') => Atom::value(data_word(facts.pillar, pattern, &delim, pillar_mode)?),
            Some('J') => Atom::value(data_word(facts.pillar, pattern, &delim, Mode::Regex)?),
            Some('L') => Atom::value(Tri::from(list_match(pattern, facts.id))),
            Some('E') => Atom::value(pcre(pattern, facts.id)?),
            Some('S') => match ipcidr(pattern, facts.grains) {
                Outcome::Is(b) => Atom::value(Tri::from(b)),
                Outcome::Raises => Atom {
                    truth: Tri::No,
                    raises: Tri::Yes,
                },
                Outcome::Unknown => Atom {
                    truth: Tri::Unknown,
                    raises: Tri::Unknown,
                },
            },
            Some('R') => {
                return Err(TargetError::Unsupported(
                    "range targets (R@, seco.range)".into(),
                ));
            }
            Some(e) => {
                return Err(TargetError::Unsupported(format!(
                    "{e}@ (a resource target on Salt 3008 minions, a glob on older ones)"
                )));
            }
        };
        toks.push(Tok::Val(atom));
    }
    let mut p = Parser {
        toks: &toks,
        pos: 0,
    };
    let v = p.or()?;
    if p.pos != toks.len() {
        return Err(p.not_an_operator());
    }
    // A raising word fails the minion's whole match, before `eval` runs.
    let raises = toks
        .iter()
        .filter_map(|t| match t {
            Tok::Val(a) => Some(a.raises),
            _ => None,
        })
        .fold(Tri::No, Tri::or);
    Ok(match raises {
        Tri::Yes => Tri::No,
        Tri::Unknown if v == Tri::No => Tri::No,
        Tri::Unknown => Tri::Unknown,
        Tri::No => v,
    })
}

/// A `G@ P@ I@ J@` word: Salt's matcher refuses a pattern without its delimiter.
fn data_word(data: &Value, pattern: &str, delim: &str, mode: Mode) -> Result<Tri, TargetError> {
    if !pattern.contains(delim) {
        return Ok(Tri::No);
    }
    if data.is_nil() {
        return Ok(Tri::Unknown);
    }
    subdict_match(data, pattern, delim, mode)
}

/// Python's expression grammar over the words' results: `or` < `and` < `not` < atoms
/// (`True`, `False`, `[]`, `( expr )`, `( )`).
struct Parser<'t> {
    toks: &'t [Tok],
    pos: usize,
}

impl Parser<'_> {
    /// Something other than an operator after a value: Python reads `(` there as a call
    /// (which may never run: `True or x ( y )` is true), anything else as a syntax error.
    fn not_an_operator(&self) -> TargetError {
        if self.peek() == Some(Tok::Open) {
            TargetError::Unsupported("a value followed by \"(\" (Python would call it)".into())
        } else {
            TargetError::BadCompound("a value where an operator was expected".into())
        }
    }

    fn peek(&self) -> Option<Tok> {
        self.toks.get(self.pos).copied()
    }

    fn or(&mut self) -> Result<Tri, TargetError> {
        let mut v = self.and()?;
        while self.peek() == Some(Tok::Or) {
            self.pos += 1;
            let r = self.and()?;
            v = v.or(r);
        }
        Ok(v)
    }

    fn and(&mut self) -> Result<Tri, TargetError> {
        let mut v = self.not()?;
        while self.peek() == Some(Tok::And) {
            self.pos += 1;
            let r = self.not()?;
            v = v.and(r);
        }
        Ok(v)
    }

    fn not(&mut self) -> Result<Tri, TargetError> {
        if self.peek() == Some(Tok::Not) {
            self.pos += 1;
            return Ok(!self.not()?);
        }
        self.atom()
    }

    fn atom(&mut self) -> Result<Tri, TargetError> {
        match self.peek() {
            Some(Tok::Val(a)) => {
                self.pos += 1;
                Ok(a.truth)
            }
            Some(Tok::Open) => {
                self.pos += 1;
                if self.peek() == Some(Tok::Close) {
                    // `()`: an empty tuple, false.
                    self.pos += 1;
                    return Ok(Tri::No);
                }
                let v = self.or()?;
                match self.peek() {
                    Some(Tok::Close) => {}
                    None => return Err(TargetError::BadCompound("missing \")\"".into())),
                    Some(_) => return Err(self.not_an_operator()),
                }
                self.pos += 1;
                Ok(v)
            }
            None => Err(TargetError::BadCompound(
                "ends where a value was expected".into(),
            )),
            Some(other) => Err(TargetError::BadCompound(format!(
                "unexpected {}",
                match other {
                    Tok::And => "\"and\"",
                    Tok::Or => "\"or\"",
                    Tok::Not => "\"not\"",
                    Tok::Open => "\"(\"",
                    Tok::Close => "\")\"",
                    Tok::Val(_) => "value",
                }
            ))),
        }
    }
}
