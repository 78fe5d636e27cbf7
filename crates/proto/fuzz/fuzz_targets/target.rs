//! Target expressions (compound, Python regexes, globs, grain expressions) against fixed
//! minion facts: what an API user can put in `tgt`.
#![no_main]

use brine_proto::Value;
use brine_proto::target::{self, Facts, NoNodegroups, pyre};
use libfuzzer_sys::fuzz_target;

const TYPES: [&str; 10] = [
    "glob", "pcre", "list", "grain", "grain_pcre", "pillar", "pillar_pcre", "ipcidr", "compound",
    "nodegroup",
];

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else { return };
    let Ok(text) = std::str::from_utf8(rest) else { return };
    let (tgt, id) = text.split_once('\u{0}').unwrap_or((text, "web01.example.com"));
    let grains = Value::map()
        .with("os", "Debian")
        .with("roles", Value::Array(vec![Value::str("web"), Value::map().with("a", "b")]))
        .with("ipv4", Value::Array(vec![Value::str("10.1.2.3")]))
        .with("num", 2i64)
        .with("f", 1.5f64)
        .with("nested", Value::map().with("x", Value::map().with("y", "z")));
    let pillar = Value::map().with("role", "lb");
    for (g, p) in [(&grains, &pillar), (&Value::Nil, &Value::Nil)] {
        let facts = Facts { id, grains: g, pillar: p };
        let ty = TYPES[usize::from(sel) % TYPES.len()];
        let groups = |n: &str| (n == "g").then(|| tgt.to_owned());
        let _ = target::evaluate(&Value::str(tgt), ty, ":", &facts, &groups);
        let _ = target::evaluate(&Value::str(tgt), "compound", ":", &facts, &NoNodegroups);
    }
    if let Ok(re) = pyre::compile(tgt) {
        let _ = re.match_start(id);
    }
    let _ = target::fnmatch(tgt, id);
});
