//! Which minions a target reaches (Salt's `CkMinions.check_minions`), never fewer than will run
//! the job.
//!
//! Every accepted minion is evaluated as a Salt minion would evaluate the target for itself
//! ([`brine_proto::target::evaluate`]), with the grains it last reported. The answer is "yes",
//! "no", or "cannot tell" (no cached grains or pillar, text a Python regex translation is not
//! exact for): a minion that cannot be told apart is counted as reached, as Salt's `greedy` does —
//! it decides for itself when the publish arrives, and the job tracker settles it either way.
//! An expression brine cannot evaluate at all is an error, so it is never published as "nobody".
//!
//! The master also expands nodegroups (`-N`, and `N@` inside compound targets) before
//! publishing, with parentheses around each expansion, so minions (which have no nodegroups)
//! evaluate exactly what the master evaluated.

use std::collections::{BTreeSet, HashMap};

use brine_proto::Value;
use brine_proto::target::{
    self, Facts, NoNodegroups, Nodegroups, TargetError, Tri, is_space, nodegroup_comp, parse_word,
    split_words,
};

/// The minions a target reaches among the accepted ones.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reach {
    /// Minions that match for sure, sorted.
    pub yes: Vec<String>,
    /// Minions brine cannot tell about (they may run the job), sorted.
    pub unsure: Vec<String>,
}

impl Reach {
    /// Every minion that may run the job (sure or not), sorted.
    pub fn all(&self) -> Vec<String> {
        let mut v: Vec<String> = self.yes.iter().chain(&self.unsure).cloned().collect();
        v.sort();
        v
    }
}

/// What the master knows about accepted minions, to evaluate targets against.
#[derive(Debug, Clone, Copy)]
pub struct Fleet<'a> {
    /// Accepted minion ids.
    pub accepted: &'a [String],
    /// Grains each minion last reported.
    pub grains: &'a HashMap<String, Value>,
    /// The pillar last compiled for each minion.
    pub pillars: &'a HashMap<String, Value>,
    /// Minions that manage resources (Salt 3008 `_register_resources`): any target may reach
    /// them through a resource id, so they are never ruled out.
    pub resource_managers: &'a BTreeSet<String>,
}

/// Evaluate an already expanded target (no nodegroups) for every accepted minion.
///
/// # Errors
/// [`TargetError`] for unknown target types and malformed or unsupported expressions.
pub fn reach(
    tgt: &Value,
    tgt_type: &str,
    delimiter: &str,
    fleet: &Fleet<'_>,
) -> Result<Reach, TargetError> {
    let mut out = Reach::default();
    let nil = Value::Nil;
    for id in fleet.accepted {
        let facts = Facts {
            id,
            grains: fleet.grains.get(id).unwrap_or(&nil),
            // A minion whose pillar was not compiled in this run cannot be told.
            pillar: fleet.pillars.get(id).unwrap_or(&nil),
        };
        let t = target::evaluate(tgt, tgt_type, delimiter, &facts, &NoNodegroups)?;
        match t {
            Tri::Yes => out.yes.push(id.clone()),
            Tri::Unknown => out.unsure.push(id.clone()),
            Tri::No if fleet.resource_managers.contains(id) => out.unsure.push(id.clone()),
            Tri::No => {}
        }
    }
    out.yes.sort();
    out.unsure.sort();
    Ok(out)
}

/// Minions expected to answer `tgt` of `tgt_type`: every one that may run it, sorted.
///
/// # Errors
/// [`TargetError`] for unknown target types and malformed or unsupported expressions (the
/// publish is refused).
pub fn expected_minions(
    tgt: &Value,
    tgt_type: &str,
    delimiter: &str,
    accepted: &[String],
    grains: &HashMap<String, Value>,
    groups: &dyn Nodegroups,
) -> Result<Vec<String>, TargetError> {
    let (tgt, tgt_type) = expand_nodegroups(tgt, tgt_type, groups)?;
    let managers = BTreeSet::new();
    let pillars = HashMap::new();
    let fleet = Fleet {
        accepted,
        grains,
        pillars: &pillars,
        resource_managers: &managers,
    };
    Ok(reach(&tgt, &tgt_type, delimiter, &fleet)?.all())
}

/// Expand a `nodegroup` target, and `N@` words in a compound one, into the compound target
/// minions are sent. Unknown nodegroups are an error.
///
/// # Errors
/// [`TargetError::UnknownNodegroup`], [`TargetError::BadShape`].
pub fn expand_nodegroups(
    tgt: &Value,
    tgt_type: &str,
    groups: &dyn Nodegroups,
) -> Result<(Value, String), TargetError> {
    match tgt_type {
        "nodegroup" => {
            let name = tgt
                .as_str()
                .ok_or(TargetError::BadShape("a nodegroup name"))?;
            let words = expand_one(name, groups)?;
            Ok((Value::str(words.join(" ")), "compound".into()))
        }
        "compound" => {
            let words: Vec<String> = match tgt {
                Value::Array(items) => items
                    .iter()
                    .map(|w| w.as_str().map(str::to_owned))
                    .collect::<Option<_>>()
                    .ok_or(TargetError::BadShape("a compound word list"))?,
                _ => split_words(
                    tgt.as_str()
                        .ok_or(TargetError::BadShape("a compound string"))?,
                )
                .into_iter()
                .map(str::to_owned)
                .collect(),
            };
            if !words.iter().any(|w| parse_word(w).0 == Some('N')) {
                return Ok((tgt.clone(), tgt_type.to_owned()));
            }
            let mut out = Vec::with_capacity(words.len());
            for w in words {
                match parse_word(&w) {
                    (Some('N'), _, name) => out.extend(expand_one(name, groups)?),
                    _ => out.push(w),
                }
            }
            if matches!(tgt, Value::Array(_)) {
                return Ok((
                    Value::Array(out.iter().map(Value::str).collect()),
                    tgt_type.to_owned(),
                ));
            }
            Ok((Value::str(out.join(" ")), tgt_type.to_owned()))
        }
        _ => Ok((tgt.clone(), tgt_type.to_owned())),
    }
}

/// One nodegroup as Salt's `nodegroup_comp` expands it, always in parentheses (Salt leaves a
/// top-level expansion bare, which changes its meaning next to other words).
fn expand_one(name: &str, groups: &dyn Nodegroups) -> Result<Vec<String>, TargetError> {
    let mut words = nodegroup_comp(name, groups, &mut Vec::new(), true);
    if words.is_empty() {
        return Err(TargetError::UnknownNodegroup(name.into()));
    }
    if words.first().map(String::as_str) != Some("(")
        || words.last().map(String::as_str) != Some(")")
    {
        words.insert(0, "(".into());
        words.push(")".into());
    }
    Ok(words)
}

/// `tgt` of `tgt_type` written as one compound word (or a parenthesised compound), so that it
/// can be combined with other expressions; `None` when it cannot be written so exactly.
pub fn as_compound(tgt: &Value, tgt_type: &str, delimiter: &str) -> Option<String> {
    let s = tgt.as_str();
    let plain = |w: &str| !w.is_empty() && !w.chars().any(is_space) && !w.contains('\n');
    let with_delim = |engine: char, expr: &str, delim: &str| -> Option<String> {
        if !plain(expr) {
            return None;
        }
        match delim {
            ":" => Some(format!("{engine}@{expr}")),
            d if d.chars().count() == 1 && !d.chars().any(is_space) && d != "@" && d != "\n" => {
                Some(format!("{engine}{d}@{expr}"))
            }
            _ => None,
        }
    };
    match tgt_type {
        "glob" => {
            let g = s?;
            let op = ["and", "or", "not", "(", ")"].contains(&g);
            (plain(g) && !op && parse_word(g).0.is_none()).then(|| g.to_owned())
        }
        "pcre" => s.filter(|p| plain(p)).map(|p| format!("E@{p}")),
        "list" => match tgt {
            Value::Array(items) => {
                let ids: Option<Vec<&str>> = items.iter().map(Value::as_str).collect();
                let ids = ids?;
                let ok = !ids.is_empty() && ids.iter().all(|i| plain(i) && !i.contains(','));
                ok.then(|| format!("L@{}", ids.join(",")))
            }
            _ => s.filter(|l| plain(l)).map(|l| format!("L@{l}")),
        },
        "grain" => with_delim('G', s?, delimiter),
        "grain_pcre" => with_delim('P', s?, delimiter),
        "pillar" => with_delim('I', s?, delimiter),
        "pillar_pcre" => with_delim('J', s?, ":"),
        "ipcidr" => s.filter(|c| plain(c)).map(|c| format!("S@{c}")),
        "compound" => {
            let e = s?;
            (!e.trim().is_empty()).then(|| format!("( {e} )"))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use brine_proto::target::NoNodegroups;

    use super::*;

    fn accepted() -> Vec<String> {
        ["web1", "web2", "db1", "new1"].map(String::from).to_vec()
    }

    fn grains() -> HashMap<String, Value> {
        let mut grains = HashMap::new();
        grains.insert("web1".to_owned(), Value::map().with("os", "Debian"));
        grains.insert("web2".to_owned(), Value::map().with("os", "RedHat"));
        grains.insert("db1".to_owned(), Value::map().with("os", "Debian"));
        grains
    }

    #[test]
    fn ids_grains_and_unknowns() {
        let (accepted, grains) = (accepted(), grains());
        let e = |tgt: &str, ty: &str| {
            expected_minions(&Value::str(tgt), ty, ":", &accepted, &grains, &NoNodegroups).unwrap()
        };
        assert_eq!(e("web*", "glob"), ["web1", "web2"]);
        assert_eq!(
            e("db1,new1,ghost", "list"),
            ["db1", "new1"],
            "only accepted keys"
        );
        assert_eq!(
            e("os:Debian", "grain"),
            ["db1", "new1", "web1"],
            "new1 has no cached grains"
        );
        assert_eq!(
            e("web* and G@os:Debian", "compound"),
            ["web1"],
            "new1 is ruled out by its id"
        );
        assert_eq!(
            e("not G@os:Debian", "compound"),
            ["new1", "web2"],
            "`not` of an unknown is unknown, never ruled out"
        );
        assert_eq!(
            e("I@role:web", "compound"),
            ["db1", "new1", "web1", "web2"],
            "pillar is unknown for every minion"
        );
        assert!(
            expected_minions(
                &Value::str("x"),
                "bogus",
                ":",
                &accepted,
                &grains,
                &NoNodegroups
            )
            .is_err()
        );
    }

    #[test]
    fn python_only_regexes_are_refused_never_matched_by_nobody() {
        let (accepted, grains) = (accepted(), grains());
        for (tgt, ty) in [
            ("(?=db)", "pcre"),
            ("web* or E@(?!web)", "compound"),
            ("os:deb(?=ian)", "grain_pcre"),
            ("d{,2}b", "pcre"),
        ] {
            let r = expected_minions(&Value::str(tgt), ty, ":", &accepted, &grains, &NoNodegroups);
            match r {
                Err(TargetError::Unsupported(_) | TargetError::BadRegex(_)) => {}
                Ok(v) if tgt == "d{,2}b" => assert_eq!(v, ["db1"], "{{,n}} is Python's 0..n"),
                other => panic!("{tgt}: {other:?}"),
            }
        }
    }

    #[test]
    fn nodegroups_expand_in_parentheses() {
        let groups = |n: &str| match n {
            "webs" => Some("web1 or web2".to_owned()),
            "plain" => Some("db1 new1".to_owned()),
            _ => None,
        };
        let (t, ty) = expand_nodegroups(&Value::str("webs"), "nodegroup", &groups).unwrap();
        assert_eq!(
            (t.as_str().unwrap(), ty.as_str()),
            ("( web1 or web2 )", "compound")
        );
        let (t, _) =
            expand_nodegroups(&Value::str("N@webs and not web2"), "compound", &groups).unwrap();
        assert_eq!(t.as_str().unwrap(), "( web1 or web2 ) and not web2");
        let (t, _) = expand_nodegroups(&Value::str("plain"), "nodegroup", &groups).unwrap();
        assert_eq!(t.as_str().unwrap(), "( L@db1,new1 )");
        assert!(expand_nodegroups(&Value::str("N@nope or x"), "compound", &groups).is_err());
    }

    #[test]
    fn targets_written_as_compound_words() {
        let c = |t: &str, ty: &str, d: &str| as_compound(&Value::str(t), ty, d);
        assert_eq!(c("web*", "glob", ":").as_deref(), Some("web*"));
        assert_eq!(
            c("G@x", "glob", ":"),
            None,
            "a glob that reads as an engine word"
        );
        assert_eq!(c("and", "glob", ":"), None);
        assert_eq!(c("a b", "glob", ":"), None);
        assert_eq!(c("os:Debian", "grain", ":").as_deref(), Some("G@os:Debian"));
        assert_eq!(
            c("os|Debian", "grain", "|").as_deref(),
            Some("G|@os|Debian")
        );
        assert_eq!(c("web.*", "pcre", ":").as_deref(), Some("E@web.*"));
        assert_eq!(c("a or b", "compound", ":").as_deref(), Some("( a or b )"));
        let list = Value::Array(vec![Value::str("a"), Value::str("b")]);
        assert_eq!(as_compound(&list, "list", ":").as_deref(), Some("L@a,b"));
        let commas = Value::Array(vec![Value::str("a,b")]);
        assert_eq!(as_compound(&commas, "list", ":"), None);
    }
}
