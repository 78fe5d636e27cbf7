//! Target matching, as a pure function of the expression and one minion's facts.
//!
//! Follows Salt's minion-side matchers (`salt/matchers/*.py`, 3006-3008) step by step: `glob`
//! (Python `fnmatch`), `list`, `pcre` (`re.match`: anchored at the start only), `grain` /
//! `grain_pcre` / `pillar` / `pillar_pcre` (`subdict_match`: nested keys split on the delimiter,
//! deepest first, lower-cased glob or regex on the values), `ipcidr` (Python's `ipaddress`), and
//! `compound` (`G@ P@ I@ J@ L@ E@ S@ N@` words joined with `and`, `or`, `not` and parentheses; a
//! bare word is a glob, the results are evaluated as Python would).
//!
//! The answer is three-valued ([`Tri`]): a master deciding who a target reaches (for an ACL
//! check, or which minions a job waits for) must never count fewer minions than will run the
//! job, so where brine cannot be sure of a minion's answer — its grains or pillar are unknown,
//! a Unicode-sensitive regex meets non-ASCII text — it says [`Tri::Unknown`], and an expression
//! brine cannot evaluate at all (a Python regex construct the `regex` crate has no exact
//! equivalent for, `R@`, `T@`) is an error ([`TargetError::Unsupported`]), never "no match".
//! Python regular expressions are rebuilt construct by construct ([`pyre`]).

mod compound;
mod glob;
mod ipcidr;
pub mod pyre;
mod pystr;
mod subdict;

use crate::value::Value;

pub use compound::{nodegroup_comp, parse_word};
pub use glob::fnmatch;
pub use pystr::{py_isspace as is_space, py_split as split_words};

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

/// A minion's answer to a target: it matches, it does not, or brine cannot tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Tri {
    /// The minion does not run the job.
    No,
    /// The minion runs the job.
    Yes,
    /// brine cannot be sure (unknown grains or pillar, text a translation is not exact for).
    Unknown,
}

impl Tri {
    /// Kleene `or`.
    #[must_use]
    pub fn or(self, other: Self) -> Self {
        match (self, other) {
            (Self::Yes, _) | (_, Self::Yes) => Self::Yes,
            (Self::No, Self::No) => Self::No,
            _ => Self::Unknown,
        }
    }

    /// Kleene `and`.
    #[must_use]
    pub fn and(self, other: Self) -> Self {
        match (self, other) {
            (Self::No, _) | (_, Self::No) => Self::No,
            (Self::Yes, Self::Yes) => Self::Yes,
            _ => Self::Unknown,
        }
    }
}

impl std::ops::Not for Tri {
    type Output = Self;

    /// Kleene `not`.
    fn not(self) -> Self {
        match self {
            Self::Yes => Self::No,
            Self::No => Self::Yes,
            Self::Unknown => Self::Unknown,
        }
    }
}

impl From<bool> for Tri {
    fn from(b: bool) -> Self {
        if b { Self::Yes } else { Self::No }
    }
}

impl From<Option<bool>> for Tri {
    fn from(b: Option<bool>) -> Self {
        b.map_or(Self::Unknown, Self::from)
    }
}

/// Why a target could not be evaluated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TargetError {
    /// A `tgt_type` Salt does not know (the minion ignores such jobs).
    #[error("unknown tgt_type {0:?}")]
    UnknownType(String),
    /// A regular expression Python's `re` refuses too.
    #[error("{0}")]
    BadRegex(String),
    /// A compound expression every minion evaluates to false (Salt logs it as invalid).
    #[error("invalid compound target: {0}")]
    BadCompound(String),
    /// A nodegroup that is not defined.
    #[error("unknown nodegroup {0:?}")]
    UnknownNodegroup(String),
    /// The target value has the wrong shape for its type (e.g. a map for a glob).
    #[error("target of the wrong shape for {0}")]
    BadShape(&'static str),
    /// Valid for Salt's minions, but brine cannot evaluate it exactly as they do.
    #[error("target not evaluable: {0}")]
    Unsupported(String),
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

/// Whether `facts` match `tgt` of type `tgt_type`: [`evaluate`] answered [`Tri::Yes`] (what a
/// minion decides for itself; an unsure answer does not run the job).
///
/// # Errors
/// [`TargetError`] for unknown types and malformed or unsupported expressions.
pub fn matches(
    tgt: &Value,
    tgt_type: &str,
    delimiter: &str,
    facts: &Facts<'_>,
    groups: &dyn Nodegroups,
) -> Result<bool, TargetError> {
    Ok(evaluate(tgt, tgt_type, delimiter, facts, groups)? == Tri::Yes)
}

/// What a Salt minion with `facts` decides for `tgt` of type `tgt_type` (`glob`, `pcre`, `list`,
/// `grain`, `grain_pcre`, `pillar`, `pillar_pcre`, `ipcidr`, `compound`, `nodegroup`).
/// `delimiter` is the job's (`grain`, `grain_pcre` and `pillar` use it, as the minion does);
/// `groups` expands `N@` words and `nodegroup` targets.
///
/// # Errors
/// [`TargetError`] for unknown types, malformed expressions (false on every minion) and
/// expressions brine cannot evaluate exactly.
pub fn evaluate(
    tgt: &Value,
    tgt_type: &str,
    delimiter: &str,
    facts: &Facts<'_>,
    groups: &dyn Nodegroups,
) -> Result<Tri, TargetError> {
    let text = || tgt.as_str().ok_or(TargetError::BadShape("a string target"));
    let data = |d: &Value, mode, delim: &str| -> Result<Tri, TargetError> {
        let t = text()?;
        if delim.is_empty() {
            return Err(TargetError::BadShape("a non-empty delimiter"));
        }
        if !t.contains(delim) {
            return Ok(Tri::No);
        }
        if d.is_nil() {
            return Ok(Tri::Unknown);
        }
        subdict::subdict_match(d, t, delim, mode)
    };
    use subdict::Mode::{Glob, Regex};
    match tgt_type {
        "glob" => Ok(Tri::from(glob::py_fnmatch(facts.id, text()?))),
        "pcre" => pcre(text()?, facts.id),
        "list" => match tgt {
            Value::Array(items) => Ok(Tri::from(items.iter().any(|i| i.is_str(facts.id)))),
            Value::Map(_) => match pystr::py_dict(tgt) {
                Some(d) => Ok(Tri::from(d.iter().any(|(k, _)| *k == facts.id))),
                None => Ok(Tri::Unknown),
            },
            _ => Ok(Tri::from(list_match(text()?, facts.id))),
        },
        "grain" => data(facts.grains, Glob, delimiter),
        "grain_pcre" => data(facts.grains, Regex, delimiter),
        "pillar" => data(facts.pillar, Glob, delimiter),
        // The minion passes no delimiter for pillar_pcre: always `:`.
        "pillar_pcre" => data(facts.pillar, Regex, ":"),
        "ipcidr" => Ok(match ipcidr::ipcidr(text()?, facts.grains) {
            ipcidr::Outcome::Is(b) => Tri::from(b),
            // The minion's match raises: it does not run the job.
            ipcidr::Outcome::Raises => Tri::No,
            ipcidr::Outcome::Unknown => Tri::Unknown,
        }),
        "compound" => compound::eval(tgt, facts, groups, Glob),
        // Master-side types (`mine.get` on the master): pillar values compared for equality.
        "pillar_exact" => data(facts.pillar, subdict::Mode::Exact, delimiter),
        "compound_pillar_exact" => compound::eval(tgt, facts, groups, subdict::Mode::Exact),
        "nodegroup" => {
            let name = text()?;
            let expr = groups
                .expand(name)
                .ok_or_else(|| TargetError::UnknownNodegroup(name.into()))?;
            compound::eval(&Value::str(expr), facts, groups, Glob)
        }
        other => Err(TargetError::UnknownType(other.into())),
    }
}

/// Salt's `list_match` on a string target: `,id,` inside, `id,` first, `,id` last, or the whole.
fn list_match(tgt: &str, id: &str) -> bool {
    tgt.contains(&format!(",{id},"))
        || tgt.starts_with(&format!("{id},"))
        || tgt.ends_with(&format!(",{id}"))
        || tgt == id
}

/// Compiled Python expressions kept per thread: a master matches one expression against
/// thousands of minions.
const REGEX_CACHE_SIZE: usize = 256;

thread_local! {
    static REGEX_CACHE: std::cell::RefCell<std::collections::HashMap<String, Result<pyre::PyRegex, pyre::PyReError>>> =
        std::cell::RefCell::new(std::collections::HashMap::new());
}

/// `bool(re.match(pattern, id))`, Python's way; a pattern Python refuses or brine cannot
/// evaluate is an error.
fn pcre(pattern: &str, text: &str) -> Result<Tri, TargetError> {
    REGEX_CACHE.with(|c| {
        let mut c = c.borrow_mut();
        if !c.contains_key(pattern) {
            if c.len() >= REGEX_CACHE_SIZE {
                c.clear();
            }
            c.insert(pattern.to_owned(), pyre::compile(pattern));
        }
        match &c[pattern] {
            Ok(re) => Ok(Tri::from(re.match_start(text))),
            Err(e @ pyre::PyReError::Invalid { .. }) => Err(TargetError::BadRegex(e.to_string())),
            Err(e) => Err(TargetError::Unsupported(e.to_string())),
        }
    })
}

#[cfg(test)]
mod tests;
