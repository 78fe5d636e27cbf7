//! Which accepted minions a publish should expect (Salt's `CkMinions.check_minions`).
//!
//! Id-based targets (glob, pcre, list) are evaluated against accepted key names. Targets that
//! need minion data (grain, grain_pcre, pillar, ipcidr, compound with such words) use the grains
//! cache; a minion with no cached grains is included (Salt's `greedy` behaviour): it decides
//! for itself when the publish arrives, and the job tracker settles it either way.

use std::collections::HashMap;

use brine_proto::Value;
use brine_proto::target::{self, Facts, Nodegroups, TargetError};

/// Minions expected to answer `tgt` of `tgt_type`, sorted.
///
/// # Errors
/// [`TargetError`] for unknown target types and malformed expressions (the publish is refused).
pub fn expected_minions(
    tgt: &Value,
    tgt_type: &str,
    delimiter: &str,
    accepted: &[String],
    grains: &HashMap<String, Value>,
    groups: &dyn Nodegroups,
) -> Result<Vec<String>, TargetError> {
    let mut out = Vec::new();
    for id in accepted {
        let cached = grains.get(id);
        let facts = Facts {
            id,
            grains: cached.unwrap_or(&Value::Nil),
            pillar: &Value::Nil,
        };
        let hit = target::matches(tgt, tgt_type, delimiter, &facts, groups)?;
        let needs_data = !matches!(tgt_type, "glob" | "pcre" | "list");
        if hit || (needs_data && cached.is_none()) {
            out.push(id.clone());
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use brine_proto::target::NoNodegroups;

    use super::*;

    #[test]
    fn ids_grains_and_greedy_unknowns() {
        let accepted: Vec<String> = ["web1", "web2", "db1", "new1"].map(String::from).to_vec();
        let mut grains = HashMap::new();
        grains.insert("web1".to_owned(), Value::map().with("os", "Debian"));
        grains.insert("web2".to_owned(), Value::map().with("os", "RedHat"));
        grains.insert("db1".to_owned(), Value::map().with("os", "Debian"));
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
        assert_eq!(e("web* and G@os:Debian", "compound"), ["new1", "web1"]);
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
}
