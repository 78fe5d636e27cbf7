//! brine's target matching against Salt's own: a differential property test.
//!
//! Random patterns, ids, grains and pillar are generated from a seed; real Salt's minion-side
//! matchers (`oracle.py`, run with each Salt release's Python) and brine's matcher answer each
//! case. brine may say "cannot tell" (`Tri::Unknown`) or refuse an expression (an error), but
//! where it answers it must answer as Salt: above all it must never say "no" where a Salt minion
//! says "yes" — that is how an ACL would be checked against fewer minions than run the job.
//! So that the test cannot pass by refusing everything, the share of exact answers is checked.
//!
//! `BRINE_ORACLE_SEED=<n>` and `BRINE_ORACLE_CASES=<n>` (per kind) give longer runs.

use std::io::Write as _;
use std::process::Stdio;

use brine_proto::Value;
use brine_proto::target::{self, Facts, TargetError, Tri, pyre};
use brine_test_support::SaltPeer;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value as Json, json};

const VERSIONS: [&str; 3] = ["3006.30", "3007.17", "3008.5"];

fn seed() -> u64 {
    std::env::var("BRINE_ORACLE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5a17_0001)
}

fn cases_per_kind() -> usize {
    std::env::var("BRINE_ORACLE_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(6000)
}

/// Ask Salt (`oracle.py` under `version`'s Python) about every case, in one process.
fn oracle(version: &str, cases: &[Json]) -> Vec<String> {
    let peer = SaltPeer::get(version);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/targeting/oracle.py");
    let mut child = peer
        .command("python")
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the Salt oracle");
    let mut input = Vec::new();
    for c in cases {
        serde_json::to_writer(&mut input, c).unwrap();
        input.push(b'\n');
    }
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output().expect("the Salt oracle");
    writer.join().unwrap().unwrap();
    assert!(
        out.status.success(),
        "oracle.py failed under Salt {version}"
    );
    let lines: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(lines.len(), cases.len(), "one answer per case");
    lines
}

fn pick<'a, T: ?Sized>(rng: &mut StdRng, items: &[&'a T]) -> &'a T {
    items[rng.random_range(0..items.len())]
}

/// Pieces a pattern is made of, each with a text it matches.
const RE_ATOMS: &[(&str, &[&str])] = &[
    ("a", &["a"]),
    ("b", &["b"]),
    ("e", &["e", "E"]),
    ("w", &["w"]),
    ("0", &["0"]),
    ("_", &["_"]),
    ("-", &["-"]),
    ("é", &["é", "É"]),
    ("Σ", &["Σ", "σ", "ς"]),
    ("k", &["k", "K", "\u{212a}"]),
    ("ß", &["ß", "ẞ"]),
    (" ", &[" "]),
    (".", &["x", "\n", "é"]),
    ("\\d", &["7", "٣", "x"]),
    ("\\D", &["x", "7"]),
    ("\\w", &["x", "é", "_", "\u{301}", "-"]),
    ("\\W", &["-", "x", "é"]),
    ("\\s", &[" ", "\u{1c}", "\u{a0}", "\u{85}", "x", "\u{180e}"]),
    ("\\S", &["x", "\u{1c}"]),
    ("\\x41", &["A", "a"]),
    ("\\101", &["A"]),
    ("\\0", &["\0"]),
    ("\\07", &["\u{7}"]),
    ("\\n", &["\n"]),
    ("\\t", &["\t"]),
    ("\\.", &["."]),
    ("\\-", &["-"]),
    ("\\\\", &["\\"]),
    ("\\u00e9", &["é"]),
    ("\\a", &["\u{7}"]),
    ("[a-c]", &["b", "B", "d"]),
    ("[^a]", &["b", "a", "\n"]),
    ("[]]", &["]"]),
    ("[^]]", &["x", "]"]),
    ("[a-]", &["-", "a"]),
    ("[\\d_]", &["5", "_", "٣"]),
    ("[\\s]", &["\u{1f}", " "]),
    ("[\\S]", &["\u{1f}", "x"]),
    ("[[:alpha:]]", &["a", ":", "[", "x"]),
    ("[a&&b]", &["&", "b"]),
    ("[\\b]", &["\u{8}"]),
    ("[Z-a]", &["_", "A", "z", "Z"]),
    ("[A-Z]", &["Q", "q"]),
    ("[é-ë]", &["ê", "Ê"]),
    ("[\\x41-\\x5a]", &["Q", "q"]),
    ("{", &["{"]),
    ("}", &["}"]),
    ("{x}", &["{x}"]),
];

const RE_ANCHORS: &[(&str, &[&str])] = &[
    ("^", &["", "\n"]),
    ("$", &["", "\n"]),
    ("\\A", &[""]),
    ("\\Z", &[""]),
    ("\\b", &[""]),
    ("\\B", &[""]),
];

const RE_QUANT: &[&str] = &[
    "*", "+", "?", "{2}", "{,2}", "{1,}", "{1,2}", "*?", "+?", "??", "{0}", "{,}",
];

/// Constructs Python accepts and brine refuses, or Python refuses: sprinkled in.
const RE_ODD: &[&str] = &[
    "(?=a)",
    "(?!a)",
    "(?<=a)",
    "(?<!a)",
    "(?>a)",
    "a*+",
    "a{2}+",
    "(a)\\1",
    "(?P<q>a)(?P=q)",
    "(?#c)",
    "\\N{DIGIT ONE}",
    "\\ud800",
    "\\q",
    "\\x6",
    "\\8",
    "[z-a]",
    "[\\A]",
    "[a",
    "(",
    ")",
    "*",
    "a**",
    "{2,1}",
    "(?L)",
    "(?x)",
    "a(?i)b",
    "(?a:x)",
    "\\U0001F600",
    "(?i)é",
    "|",
    "(?P<1>a)",
    "[\\d-z]",
    "a{99999}",
];

const RE_FLAGS: &[&str] = &[
    "(?i)", "(?a)", "(?s)", "(?m)", "(?u)", "(?ai)", "(?ms)", "(?is)",
];

/// A random pattern and a text built to match it (mostly).
fn regex_case(rng: &mut StdRng, depth: usize) -> (String, String) {
    let (mut p, mut t) = (String::new(), String::new());
    if depth == 0 && rng.random_bool(0.25) {
        p.push_str(pick(rng, RE_FLAGS));
    }
    for _ in 0..rng.random_range(1..5) {
        let roll = rng.random_range(0..100);
        let (piece, sample) = if roll < 5 {
            (pick(rng, RE_ODD).to_owned(), String::new())
        } else if roll < 15 {
            let (a, s) = RE_ANCHORS[rng.random_range(0..RE_ANCHORS.len())];
            p.push_str(a);
            t.push_str(pick(rng, s));
            continue;
        } else if roll < 25 && depth < 2 {
            let open = pick(
                rng,
                &[
                    "(", "(?:", "(?P<g>", "(?i:", "(?-i:", "(?s:", "(?m:", "(?is:",
                ],
            );
            let (inner, s) = regex_case(rng, depth + 1);
            let (inner, s) = if rng.random_bool(0.3) {
                let (alt, s2) = regex_case(rng, depth + 1);
                let s = if rng.random_bool(0.5) { s } else { s2 };
                (format!("{inner}|{alt}"), s)
            } else {
                (inner, s)
            };
            let open = if open == "(?P<g>" {
                format!("(?P<g{}>", rng.random_range(0..1000))
            } else {
                open.to_owned()
            };
            (format!("{open}{inner})"), s)
        } else {
            let (a, s) = RE_ATOMS[rng.random_range(0..RE_ATOMS.len())];
            (a.to_owned(), pick(rng, s).to_owned())
        };
        if rng.random_bool(0.3) {
            let q = pick(rng, RE_QUANT);
            let n = match q.chars().next() {
                Some('*' | '?') => rng.random_range(0..3),
                Some('{') if q.starts_with("{0") => 0,
                Some('{') if q.starts_with("{2") => 2,
                _ => rng.random_range(1..3),
            };
            p.push_str(&piece);
            p.push_str(q);
            for _ in 0..n {
                t.push_str(&sample);
            }
        } else {
            p.push_str(&piece);
            t.push_str(&sample);
        }
    }
    (p, t)
}

fn regex_pattern(rng: &mut StdRng) -> String {
    regex_case(rng, 0).0
}

const TEXT_PIECES: &[&str] = &[
    "a", "b", "w", "e", "0", "1", "_", "-", ".", "é", "Σ", "ς", "k", "K", "\u{212a}", " ", "\n",
    "\u{1c}", "\u{a0}", "A", "B", "Z", "ß", "İ", "]", "[", "&", "{", "}", "x", "\u{8}", "😀",
    "web", "db", "\u{301}",
];

fn text(rng: &mut StdRng) -> String {
    let mut t = String::new();
    for _ in 0..rng.random_range(0..6) {
        t.push_str(pick(rng, TEXT_PIECES));
    }
    t
}

const GLOB_PIECES: &[&str] = &[
    "*", "?", "[a-c]", "[!a]", "[", "]", "web", "db", "1", "0", ".", "-", "[z-a]", "[a-c-e]", "\\",
    "[!]", "[]]", "[^a]", "[a--c]", "[!b-a]", "é", "[&]", "[a-]", "**",
];

fn glob(rng: &mut StdRng) -> String {
    let mut g = String::new();
    for _ in 0..rng.random_range(1..5) {
        g.push_str(pick(rng, GLOB_PIECES));
    }
    g
}

const IDS: &[&str] = &[
    "web01",
    "web02.example.com",
    "db1",
    "db-2",
    "a,b",
    "x",
    "WEB01",
    "wéb",
    "web_1",
    "lb.1",
];

fn grains(rng: &mut StdRng) -> Json {
    let mem = [json!(1.5), json!(1e16), json!(0.0001), json!(2)][rng.random_range(0..4)].clone();
    let os = pick(
        rng,
        &["Debian", "RedHat", "debian", "Ubuntu", "Zürich", "ΣΑΣ"],
    );
    let mut g = json!({
        "os": os,
        "osrelease": pick(rng, &["12", "9.3", "22.04"]),
        "num_cpus": rng.random_range(1..5),
        "mem": mem,
        "virtual": rng.random_bool(0.5),
        "none": null,
        "roles": [pick(rng, &["web", "db"]), "db:primary", {"lb": "front"}, ["x", "y"]],
        "ec2": {"tags": {"env": pick(rng, &["prod", "dev"]), "Name": "a'b"}, "empty": {}},
        "k:v": "colon",
        "ipv4": [pick(rng, &["10.1.2.3", "192.168.0.5", "127.0.0.1"]), "127.0.0.1"],
        "ipv6": [pick(rng, &["::1", "fe80::1", "2001:db8::5"])],
        "list": [1, 2.5, true, null, "s"],
    });
    if rng.random_bool(0.2) {
        g["ipv4"] = json!(["not-an-ip", "10.0.0.1"]);
    }
    if rng.random_bool(0.1) {
        g["ipv4"] = json!("10.1.2.3");
    }
    g
}

const GRAIN_EXPRS: &[&str] = &[
    "os:Debian",
    "os:deb*",
    "os:D?bian",
    "os:Zür*",
    "os:σας",
    "osrelease:12",
    "num_cpus:2",
    "num_cpus:[1-3]",
    "mem:1.5",
    "mem:1e+16",
    "mem:0.0001",
    "virtual:True",
    "virtual:false",
    "none:None",
    "roles:web",
    "roles:db:primary",
    "roles:lb",
    "roles:lb:front",
    "roles:*",
    "roles:{'lb': 'front'}",
    "roles:['x', 'y']",
    "roles:*front*",
    "ec2:tags:env:prod",
    "ec2:tags:env",
    "ec2:tags:*:prod",
    "ec2:*:dev",
    "ec2:empty",
    "ec2:empty:x",
    "k:v:colon",
    "list:1",
    "list:2.5",
    "list:none",
    "list:0",
    "list:4",
    "list:-1",
    "missing:x",
    "os",
    "*:Debian",
    "roles:0:web",
    "roles:2:lb:front",
    "ec2:tags:Name:a'b",
    "os:(deb|red).*",
    "os:deb(?=ian)",
    "os:.*an$",
    "osrelease:\\d+",
    "os:[[:alpha:]]*",
    "roles:w\\w+",
    "ec2:tags:env:pr(od",
    "os:débian",
    "num_cpus:0*2",
];

fn data_expr(rng: &mut StdRng) -> String {
    pick(rng, GRAIN_EXPRS).to_owned()
}

const CIDRS: &[&str] = &[
    "10.0.0.0/8",
    "10.1.2.3",
    "127.0.0.1",
    "192.168.0.0/16",
    "10.0.0.1/8",
    "010.1.2.3",
    "::1",
    "0:0::1",
    "fe80::/10",
    "2001:db8::/32",
    "10.0.0.0/255.0.0.0",
    "web",
    "10.1.2.3/32",
    "1.2.3.4/33",
    "::ffff:1.2.3.4",
    "fe80::1%eth0",
    "",
    "10.1.2",
];

fn word(rng: &mut StdRng) -> String {
    match rng.random_range(0..11) {
        0 => glob(rng),
        1 => pick(rng, IDS).to_owned(),
        2 => format!("G@{}", data_expr(rng)),
        3 => format!("P@{}", data_expr(rng)),
        4 => format!(
            "I@{}",
            pick(rng, &["role:lb", "role:l*", "role:x", "deep:a:b"])
        ),
        5 => format!("J@{}", pick(rng, &["role:l.", "role:(", "deep:a:.*"])),
        6 => format!("L@{},{}", pick(rng, IDS), pick(rng, IDS)),
        7 => format!("E@{}", regex_pattern(rng).replace([' ', '\n'], "")),
        8 => format!("S@{}", pick(rng, CIDRS)),
        9 => pick(
            rng,
            &[
                "N@webs",
                "N@plain",
                "N@nest",
                "N@nope",
                "G;@roles;db:primary",
                "G@@x",
                "G@",
                "Z@x",
                "T@x",
                "R@x",
            ],
        )
        .to_owned(),
        _ => pick(rng, &["and", "or", "not", "(", ")"]).to_owned(),
    }
}

fn compound(rng: &mut StdRng) -> String {
    let mut words = Vec::new();
    let n = rng.random_range(1..5);
    for i in 0..n {
        if i > 0 {
            words.push(pick(rng, &["and", "or", "and not", "or not"]).to_owned());
        }
        if rng.random_bool(0.2) {
            words.push(format!(
                "( {} {} {} )",
                word(rng),
                pick(rng, &["and", "or"]),
                word(rng)
            ));
        } else if rng.random_bool(0.15) {
            words.push(format!("not {}", word(rng)));
        } else {
            words.push(word(rng));
        }
    }
    if rng.random_bool(0.1) {
        // Sometimes malformed.
        words.push(word(rng));
    }
    words.join(" ")
}

fn nodegroups() -> Json {
    json!({"webs": "web* or L@db1,db-2", "plain": "web01 db1", "nest": "N@webs and G@os:Debian"})
}

fn target_case(rng: &mut StdRng) -> Json {
    let (tgt, tgt_type, delimiter) = match rng.random_range(0..9) {
        0 => (json!(glob(rng)), "glob", ":"),
        1 => (json!(regex_pattern(rng)), "pcre", ":"),
        2 => (
            json!(format!("{},{}", pick(rng, IDS), pick(rng, IDS))),
            "list",
            ":",
        ),
        3 => (json!(data_expr(rng)), "grain", ":"),
        4 => (json!(data_expr(rng)), "grain_pcre", ":"),
        5 => (json!(data_expr(rng).replace(':', "|")), "grain", "|"),
        6 => (json!(pick(rng, CIDRS)), "ipcidr", ":"),
        7 => (
            json!(pick(rng, &["role:lb", "deep:a:b", "deep:*:b", "role:L?"])),
            pick(rng, &["pillar", "pillar_pcre"]),
            ":",
        ),
        _ => (json!(compound(rng)), "compound", ":"),
    };
    json!({
        "kind": "target",
        "tgt": tgt,
        "tgt_type": tgt_type,
        "delimiter": delimiter,
        "id": pick(rng, IDS),
        "grains": grains(rng),
        "pillar": {"role": "lb", "deep": {"a": "b"}},
        "nodegroups": nodegroups(),
    })
}

fn to_value(j: &Json) -> Value {
    match j {
        Json::Null => Value::Nil,
        Json::Bool(b) => Value::Bool(*b),
        Json::Number(n) => n
            .as_i64()
            .map(Value::Int)
            .unwrap_or_else(|| Value::F64(n.as_f64().unwrap_or(0.0))),
        Json::String(s) => Value::str(s),
        Json::Array(a) => Value::Array(a.iter().map(to_value).collect()),
        Json::Object(o) => Value::Map(
            o.iter()
                .map(|(k, v)| (Value::str(k), to_value(v)))
                .collect(),
        ),
    }
}

#[derive(Debug, Default)]
struct Tally {
    exact: usize,
    unsure: usize,
    refused: usize,
    failures: Vec<String>,
}

impl Tally {
    fn check(&self, what: &str, min_exact_share: f64) {
        let total = self.exact + self.unsure + self.refused;
        eprintln!(
            "{what}: {total} cases answered by both, {} exact, {} unsure, {} refused, {} wrong",
            self.exact,
            self.unsure,
            self.refused,
            self.failures.len()
        );
        assert!(
            self.failures.is_empty(),
            "{what}: brine disagrees with Salt (seed {:#x}):\n{}",
            seed(),
            self.failures
                .iter()
                .take(30)
                .cloned()
                .collect::<Vec<_>>()
                .join("\n")
        );
        let share = self.exact as f64 / total.max(1) as f64;
        assert!(
            share >= min_exact_share,
            "{what}: only {:.0}% exact answers (want {:.0}%): brine refuses or doubts too much",
            share * 100.0,
            min_exact_share * 100.0
        );
    }
}

#[test]
fn python_regular_expressions_as_salt_minions_evaluate_them() {
    let mut rng = StdRng::seed_from_u64(seed());
    let mut cases = Vec::new();
    while cases.len() < cases_per_kind() * 3 {
        let (pattern, sample) = regex_case(&mut rng, 0);
        let mut texts = vec![sample.clone(), text(&mut rng)];
        // Near misses: one character dropped, one added.
        let chars: Vec<char> = sample.chars().collect();
        if !chars.is_empty() {
            let i = rng.random_range(0..chars.len());
            texts.push(chars[..i].iter().chain(&chars[i + 1..]).collect());
            texts.push(format!("{sample}{}", pick(&mut rng, TEXT_PIECES)));
        }
        for t in texts {
            cases.push(json!({"kind": "re", "pattern": pattern, "text": t}));
        }
    }
    let answers = oracle("3007.17", &cases);
    let mut tally = Tally::default();
    let mut python_refuses = Tally::default();
    for (c, py) in cases.iter().zip(&answers) {
        let (p, t) = (c["pattern"].as_str().unwrap(), c["text"].as_str().unwrap());
        let brine = pyre::compile(p);
        if py.starts_with('E') {
            match brine {
                Err(_) => python_refuses.exact += 1,
                Ok(_) => python_refuses.failures.push(format!(
                    "{p:?}: Python refuses it ({py}), brine evaluates it"
                )),
            }
            continue;
        }
        let want = py == "T";
        match brine {
            Err(pyre::PyReError::Unsupported { .. }) => tally.refused += 1,
            Err(e) => tally
                .failures
                .push(format!("{p:?}: Python accepts it, brine says {e}")),
            Ok(re) => match re.match_start(t) {
                None => tally.unsure += 1,
                Some(b) if b == want => tally.exact += 1,
                Some(b) => tally
                    .failures
                    .push(format!("re.match({p:?}, {t:?}): Salt {want}, brine {b}")),
            },
        }
    }
    python_refuses.check("patterns Python refuses", 1.0);
    tally.check("patterns Python accepts", 0.35);
}

#[test]
fn globs_as_python_fnmatch() {
    let mut rng = StdRng::seed_from_u64(seed() ^ 1);
    let mut cases = Vec::new();
    for _ in 0..cases_per_kind() {
        let g = glob(&mut rng);
        let mut t = text(&mut rng);
        if rng.random_bool(0.5) {
            t = g.replace(['*', '?', '[', ']', '!'], "");
        }
        cases.push(json!({"kind": "fnmatch", "pattern": g, "text": t}));
    }
    let answers = oracle("3007.17", &cases);
    let mut tally = Tally::default();
    for (c, py) in cases.iter().zip(&answers) {
        let (p, t) = (c["pattern"].as_str().unwrap(), c["text"].as_str().unwrap());
        let facts = Facts {
            id: t,
            grains: &Value::Nil,
            pillar: &Value::Nil,
        };
        let brine = target::evaluate(&Value::str(p), "glob", ":", &facts, &target::NoNodegroups);
        let want = py == "T";
        match brine {
            Ok(Tri::Unknown) => tally.unsure += 1,
            Ok(v) if (v == Tri::Yes) == want && !py.starts_with('E') => tally.exact += 1,
            Err(_) if py.starts_with('E') => tally.exact += 1,
            other => tally
                .failures
                .push(format!("fnmatch({t:?}, {p:?}): Salt {py}, brine {other:?}")),
        }
    }
    tally.check("globs", 0.95);
}

#[test]
fn every_target_type_as_salt_minions_match_it() {
    for version in VERSIONS {
        let mut rng = StdRng::seed_from_u64(seed() ^ 2);
        let cases: Vec<Json> = (0..cases_per_kind())
            .map(|_| target_case(&mut rng))
            .collect();
        let answers = oracle(version, &cases);
        let groups = nodegroups();
        let lookup = |n: &str| groups.get(n).and_then(Json::as_str).map(str::to_owned);
        let mut tally = Tally::default();
        for (c, py) in cases.iter().zip(&answers) {
            let g = to_value(&c["grains"]);
            let p = to_value(&c["pillar"]);
            let facts = Facts {
                id: c["id"].as_str().unwrap(),
                grains: &g,
                pillar: &p,
            };
            let tgt_type = c["tgt_type"].as_str().unwrap();
            let brine = target::evaluate(
                &to_value(&c["tgt"]),
                tgt_type,
                c["delimiter"].as_str().unwrap(),
                &facts,
                &lookup,
            );
            // A matcher that raises: the minion does not run the job.
            let salt_runs = py == "T";
            let case = || {
                format!(
                    "{tgt_type} {} on {:?} (os {}, ipv4 {}): Salt {version} {py}",
                    c["tgt"], facts.id, c["grains"]["os"], c["grains"]["ipv4"]
                )
            };
            match brine {
                Ok(Tri::Unknown) => tally.unsure += 1,
                Ok(Tri::Yes) if salt_runs => tally.exact += 1,
                Ok(Tri::No) if !salt_runs => tally.exact += 1,
                Ok(Tri::No) => tally
                    .failures
                    .push(format!("{}: brine says no (an ACL bypass)", case())),
                Ok(Tri::Yes) => tally.failures.push(format!("{}: brine says yes", case())),
                Err(TargetError::Unsupported(_)) => tally.refused += 1,
                // Malformed for Salt too: false on every minion, refused by brine.
                Err(_) if !salt_runs => tally.refused += 1,
                Err(e) => tally
                    .failures
                    .push(format!("{}: brine refuses it as malformed ({e})", case())),
            }
        }
        tally.check(&format!("targets under Salt {version}"), 0.6);
    }
}
