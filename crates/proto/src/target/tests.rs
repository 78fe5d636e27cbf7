use proptest::prelude::*;

use super::*;

fn grains() -> Value {
    Value::map()
        .with("os", "Debian")
        .with("os_family", "Debian")
        .with("osrelease", "12")
        .with("num_cpus", 2i64)
        .with("virtual", false)
        .with(
            "roles",
            Value::Array(vec![Value::str("web"), Value::str("db:primary")]),
        )
        .with(
            "dns",
            Value::map().with("nameservers", Value::Array(vec![Value::str("127.0.0.1")])),
        )
        .with(
            "ipv4",
            Value::Array(vec![Value::str("10.1.2.3"), Value::str("127.0.0.1")]),
        )
        .with("ipv6", Value::Array(vec![Value::str("::1")]))
        .with(
            "ec2",
            Value::map().with("tags", Value::map().with("env", "prod")),
        )
        .with("kernelrelease", "6.1.0-foo:bar")
}

fn m(tgt: &str, ty: &str) -> bool {
    let g = grains();
    let pillar = Value::map().with("role", "lb");
    let facts = Facts {
        id: "web01.example.com",
        grains: &g,
        pillar: &pillar,
    };
    let groups = |name: &str| match name {
        "webs" => Some("web* or L@db1,db2".to_owned()),
        "nested" => Some("N@webs and G@os:Debian".to_owned()),
        "loop" => Some("N@loop".to_owned()),
        _ => None,
    };
    matches(&Value::str(tgt), ty, ":", &facts, &groups).unwrap_or_else(|e| panic!("{tgt}: {e}"))
}

#[test]
fn glob_list_pcre() {
    assert!(m("*", "glob"));
    assert!(m("web*", "glob"));
    assert!(!m("db*", "glob"));
    assert!(m("web0[0-9].example.com", "glob"));
    assert!(m("db1,web01.example.com", "list"));
    assert!(!m("web01", "list"));
    assert!(
        m("web\\d+", "pcre"),
        "re.match is anchored at the start only"
    );
    assert!(!m("example", "pcre"));
    assert!(m(".*example", "pcre"));
    let facts = Facts {
        id: "m1",
        grains: &Value::Nil,
        pillar: &Value::Nil,
    };
    let list = Value::Array(vec![Value::str("m0"), Value::str("m1")]);
    assert!(matches(&list, "list", ":", &facts, &NoNodegroups).unwrap());
}

#[test]
fn grains_nested_globs_and_lists() {
    assert!(m("os:Debian", "grain"));
    assert!(
        m("os:debian", "grain"),
        "grain values compare case-insensitively"
    );
    assert!(m("os:Deb*", "grain"));
    assert!(!m("os:RedHat", "grain"));
    assert!(m("num_cpus:2", "grain"));
    assert!(m("virtual:False", "grain"));
    assert!(m("roles:web", "grain"), "any list member");
    assert!(m("roles:db:primary", "grain"), "delimiter inside the value");
    assert!(m("dns:nameservers:127.0.0.1", "grain"));
    assert!(m("ec2:tags:env:prod", "grain"));
    assert!(m("ec2:tags:env", "grain"), "a map matches on its keys");
    assert!(m("kernelrelease:6.1.0-foo:bar", "grain"));
    assert!(!m("missing:x", "grain"));
    assert!(!m("os", "grain"), "no delimiter, no match");
    assert!(m("os:Deb.*", "grain_pcre"));
    assert!(!m("os:Red.*", "grain_pcre"));
    assert!(m("role:lb", "pillar"));
}

#[test]
fn ipcidr() {
    assert!(m("10.0.0.0/8", "ipcidr"));
    assert!(m("127.0.0.1", "ipcidr"));
    assert!(!m("192.168.0.0/16", "ipcidr"));
    assert!(m("::1", "ipcidr"));
}

#[test]
fn compound() {
    assert!(m("web* and G@os:Debian", "compound"));
    assert!(!m("web* and not G@os:Debian", "compound"));
    assert!(m("db* or G@os:Debian", "compound"));
    assert!(m("( db* or web* ) and E@.*\\.com", "compound"));
    assert!(!m("( db* or web* ) and not E@.*\\.com", "compound"));
    assert!(m("not db*", "compound"));
    assert!(
        m("web* not db*", "compound"),
        "`not` after a word implies `and`"
    );
    assert!(m("L@a,b,web01.example.com", "compound"));
    assert!(m("S@10.1.0.0/16 and P@os:Deb.*", "compound"));
    assert!(m("I@role:lb", "compound"));
    assert!(m("G;@roles;db:primary", "compound"), "custom delimiter");
    assert!(m("N@webs", "compound"));
    assert!(m("N@nested", "compound"));
    assert!(m("webs", "nodegroup"));
}

#[test]
fn bad_expressions_are_errors() {
    let g = grains();
    let facts = Facts {
        id: "x",
        grains: &g,
        pillar: &Value::Nil,
    };
    let groups = |n: &str| (n == "loop").then(|| "N@loop".to_owned());
    for (tgt, ty) in [
        ("and x", "compound"),
        ("( and x )", "compound"),
        ("( x", "compound"),
        ("x )", "compound"),
        ("N@nope", "compound"),
        ("N@loop", "compound"),
        ("R@%cluster", "compound"),
        ("T@dummy", "compound"),
        ("web(?=1)", "pcre"),
        ("(unclosed", "pcre"),
        ("x", "bogus"),
    ] {
        assert!(
            matches(&Value::str(tgt), ty, ":", &facts, &groups).is_err(),
            "{tgt} / {ty} should be an error"
        );
    }
}

fn id_strategy() -> impl Strategy<Value = String> {
    "[a-z][a-z0-9.-]{0,20}"
}

fn word_strategy() -> impl Strategy<Value = String> {
    prop_oneof![
        id_strategy(),
        "[a-z]{1,3}\\*",
        Just("G@os:Debian".to_owned()),
        Just("G@os:RedHat".to_owned()),
        "L@[a-z]{1,4},[a-z]{1,4}",
    ]
}

proptest! {
    #[test]
    fn a_literal_id_globs_and_lists_itself(id in id_strategy()) {
        let facts = Facts { id: &id, grains: &Value::Nil, pillar: &Value::Nil };
        prop_assert!(matches(&Value::str(&id), "glob", ":", &facts, &NoNodegroups).unwrap());
        prop_assert!(matches(&Value::str("*"), "glob", ":", &facts, &NoNodegroups).unwrap());
        let list = format!("x,{id},y");
        prop_assert!(matches(&Value::str(list), "list", ":", &facts, &NoNodegroups).unwrap());
        let anchored = format!("{}$", regex::escape(&id));
        prop_assert!(matches(&Value::str(anchored), "pcre", ":", &facts, &NoNodegroups).unwrap());
    }

    #[test]
    fn compound_follows_boolean_algebra(id in id_strategy(), a in word_strategy(), b in word_strategy()) {
        let g = grains();
        let facts = Facts { id: &id, grains: &g, pillar: &Value::Nil };
        let eval = |e: String| matches(&Value::str(e), "compound", ":", &facts, &NoNodegroups).unwrap();
        let va = eval(a.clone());
        let vb = eval(b.clone());
        prop_assert_eq!(eval(format!("{a} and {b}")), va && vb);
        prop_assert_eq!(eval(format!("{a} or {b}")), va || vb);
        prop_assert_eq!(eval(format!("not {a}")), !va);
        prop_assert_eq!(eval(format!("not ( {a} or {b} )")), !va && !vb);
        prop_assert_eq!(eval(format!("( {a} ) and not ( {b} )")), va && !vb);
    }

    #[test]
    fn grain_lookup_of_a_set_value_matches(key in "[a-z]{1,8}", val in "[a-z0-9]{1,12}") {
        let g = Value::map().with(&key, val.as_str());
        let facts = Facts { id: "m", grains: &g, pillar: &Value::Nil };
        let exact = format!("{key}:{val}");
        let upper = format!("{key}:{}", val.to_uppercase());
        let longer = format!("{key}:{val}x");
        prop_assert!(matches(&Value::str(exact), "grain", ":", &facts, &NoNodegroups).unwrap());
        prop_assert!(matches(&Value::str(upper), "grain", ":", &facts, &NoNodegroups).unwrap());
        prop_assert!(!matches(&Value::str(longer), "grain", ":", &facts, &NoNodegroups).unwrap());
    }

    #[test]
    fn matchers_never_panic(tgt in ".{0,40}", id in ".{0,20}") {
        let g = grains();
        let facts = Facts { id: &id, grains: &g, pillar: &Value::Nil };
        for ty in ["glob", "pcre", "list", "grain", "grain_pcre", "compound", "ipcidr"] {
            let _ = matches(&Value::str(&tgt), ty, ":", &facts, &NoNodegroups);
        }
    }
}
