//! Compound targets: words, `and`/`or`/`not` and parentheses, as `compound_match.match`.

use super::{Facts, Nodegroups, TargetError, fnmatch, matches};
use crate::value::Value;

/// Nodegroups may reference nodegroups; stop runaway recursion.
const MAX_EXPANSION: usize = 64;

/// Split a compound word into `(engine, delimiter, pattern)` as `salt.utils.minions.parse_target`
/// does: `G@os:Debian` → `(Some('G'), None, "os:Debian")`; a bare word has no engine.
pub fn parse_word(word: &str) -> (Option<char>, Option<char>, &str) {
    let mut chars = word.chars();
    if let Some(e) = chars.next().filter(char::is_ascii_uppercase) {
        let rest = chars.as_str();
        if let Some(p) = rest.strip_prefix('@') {
            return (Some(e), None, p);
        }
        let mut r = rest.chars();
        if let Some(d) = r.next().filter(|c| !c.is_whitespace())
            && let Some(p) = r.as_str().strip_prefix('@')
        {
            return (Some(e), Some(d), p);
        }
    }
    (None, None, word)
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Tok {
    Val(bool),
    And,
    Or,
    Not,
    Open,
    Close,
}

pub(super) fn eval(
    tgt: &Value,
    delimiter: &str,
    facts: &Facts<'_>,
    groups: &dyn Nodegroups,
) -> Result<bool, TargetError> {
    let mut words: Vec<String> = match tgt {
        Value::Array(items) => items
            .iter()
            .map(|w| w.as_str().map(str::to_owned))
            .collect::<Option<_>>()
            .ok_or(TargetError::BadShape("a compound word list"))?,
        _ => tgt
            .as_str()
            .ok_or(TargetError::BadShape("a compound string"))?
            .split_whitespace()
            .map(str::to_owned)
            .collect(),
    };
    words.reverse(); // pop from the end
    let mut toks: Vec<Tok> = Vec::new();
    let mut expansions = 0;
    while let Some(word) = words.pop() {
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
        let (engine, delim, pattern) = parse_word(&word);
        let delim_owned = delim.map(String::from);
        let delim = delim_owned.as_deref().unwrap_or(delimiter);
        let value = match engine {
            None => fnmatch(pattern, facts.id),
            Some('N') => {
                expansions += 1;
                if expansions > MAX_EXPANSION {
                    return Err(TargetError::BadCompound("nodegroup recursion".into()));
                }
                let expr = groups
                    .expand(pattern)
                    .ok_or_else(|| TargetError::UnknownNodegroup(pattern.into()))?;
                words.push(")".into());
                words.extend(expr.split_whitespace().rev().map(str::to_owned));
                words.push("(".into());
                continue;
            }
            Some(e) => {
                let ty = match e {
                    'G' => "grain",
                    'P' => "grain_pcre",
                    'I' => "pillar",
                    'J' => "pillar_pcre",
                    'L' => "list",
                    'S' => "ipcidr",
                    'E' => "pcre",
                    other => {
                        return Err(TargetError::BadCompound(format!("unknown engine {other}@")));
                    }
                };
                match matches(&Value::str(pattern), ty, delim, facts, groups) {
                    Ok(b) => b,
                    Err(TargetError::BadRegex(_)) => false,
                    Err(e) => return Err(e),
                }
            }
        };
        toks.push(Tok::Val(value));
    }
    let mut p = Parser {
        toks: &toks,
        pos: 0,
    };
    let v = p.or()?;
    if p.pos != toks.len() {
        return Err(TargetError::BadCompound("unbalanced expression".into()));
    }
    Ok(v)
}

/// Python's boolean expression grammar: `or` < `and` < `not` < atoms.
struct Parser<'t> {
    toks: &'t [Tok],
    pos: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<Tok> {
        self.toks.get(self.pos).copied()
    }

    fn or(&mut self) -> Result<bool, TargetError> {
        let mut v = self.and()?;
        while self.peek() == Some(Tok::Or) {
            self.pos += 1;
            let r = self.and()?;
            v = v || r;
        }
        Ok(v)
    }

    fn and(&mut self) -> Result<bool, TargetError> {
        let mut v = self.not()?;
        while self.peek() == Some(Tok::And) {
            self.pos += 1;
            let r = self.not()?;
            v = v && r;
        }
        Ok(v)
    }

    fn not(&mut self) -> Result<bool, TargetError> {
        if self.peek() == Some(Tok::Not) {
            self.pos += 1;
            return Ok(!self.not()?);
        }
        self.atom()
    }

    fn atom(&mut self) -> Result<bool, TargetError> {
        match self.peek() {
            Some(Tok::Val(b)) => {
                self.pos += 1;
                Ok(b)
            }
            Some(Tok::Open) => {
                self.pos += 1;
                let v = self.or()?;
                if self.peek() != Some(Tok::Close) {
                    return Err(TargetError::BadCompound("missing \")\"".into()));
                }
                self.pos += 1;
                Ok(v)
            }
            other => Err(TargetError::BadCompound(format!("unexpected {other:?}"))),
        }
    }
}
