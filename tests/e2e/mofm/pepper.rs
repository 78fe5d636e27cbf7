//! pepper (salt-api's command-line client, 0.7.6 from PyPI) against mofm, one test per group of
//! its command forms, with two real salt-minions 3007: local (glob, list, compound), the
//! `local_async`, `local_batch`, `runner` and `wheel` clients, `--fail-if-incomplete` (polls
//! `jobs.lookup_jid`), `--run-uri` (`/token`, then `/run`), a cached token (`-T -x`), JSON lowstate
//! (`--json`, `--json-file`), and a refused login.

use super::*;
use brine_test_support::pepper_bin;

struct Setup {
    m: Mofm,
    _dir: tempfile::TempDir,
    _minions: Vec<SaltMinion>,
    home: tempfile::TempDir,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let users = users_file(dir.path());
    let m = Mofm::start(&format!(
        "auto_accept: True\nexternal_auth: {{file: {{^filename: {}, \
         alice: ['.*', '@runner', '@wheel', '@jobs']}}}}\n",
        users.display()
    ));
    let peer = SaltPeer::get("3007.17");
    let (publish, ret, _) = m.ports;
    let minions: Vec<SaltMinion> = ["pep-a", "pep-b"]
        .iter()
        .map(|id| SaltMinion::start(&peer, id, publish, ret, ""))
        .collect();
    for id in ["pep-a", "pep-b"] {
        assert!(wait_ping(&m, id, 90), "{id}: {}", m.log_tail());
    }
    Setup {
        m,
        _dir: dir,
        _minions: minions,
        home: tempfile::tempdir().unwrap(),
    }
}

impl Setup {
    /// `pepper ARGS` with the API's URL and alice's credentials in pepper's environment
    /// variables, `HOME` a directory of its own (no `~/.pepperrc`).
    fn pepper(&self, args: &[&str]) -> Output {
        self.pepper_as("wonderland", args)
    }

    fn pepper_as(&self, password: &str, args: &[&str]) -> Output {
        Command::new(pepper_bin())
            .args(args)
            .env("HOME", self.home.path())
            .env(
                "SALTAPI_URL",
                format!("http://127.0.0.1:{}", self.m.ports.2),
            )
            .env("SALTAPI_USER", "alice")
            .env("SALTAPI_PASS", password)
            .env("SALTAPI_EAUTH", "file")
            .env_remove("SALTAPI_TOKEN")
            .output()
            .expect("pepper runs")
    }

    /// pepper's JSON output, asserting it exited 0.
    fn json(&self, args: &[&str]) -> Json {
        let out = self.pepper(args);
        assert!(out.status.success(), "pepper {args:?}: {}", text(&out));
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("pepper {args:?}: not JSON ({e}): {}", text(&out)))
    }
}

/// `{id: {ret, retcode, jid}}` (pepper asks for `full_return`): each minion's `ret`.
fn rets(v: &Json) -> Json {
    Json::Object(
        v["return"][0]
            .as_object()
            .unwrap_or_else(|| panic!("no return: {v}"))
            .iter()
            .map(|(id, r)| (id.clone(), r["ret"].clone()))
            .collect(),
    )
}

#[test]
fn pepper_command_forms_work_against_mofm() {
    subscribe();
    let s = setup();

    // local: glob, list, compound; arguments pass through.
    let v = s.json(&["*", "test.ping"]);
    assert_eq!(rets(&v), json!({"pep-a": true, "pep-b": true}), "{v}");
    assert_eq!(v["return"][0]["pep-a"]["retcode"], json!(0), "{v}");
    let v = s.json(&["-L", "pep-a", "test.echo", "through-pepper"]);
    assert_eq!(rets(&v), json!({"pep-a": "through-pepper"}), "{v}");
    let v = s.json(&["-C", "pep-* and not pep-b", "test.ping"]);
    assert_eq!(rets(&v), json!({"pep-a": true}), "{v}");
    let v = s.json(&["-L", "pep-a,pep-b", "test.arg", "x", "k=5"]);
    assert_eq!(
        v["return"][0]["pep-a"]["ret"]["kwargs"]["k"],
        json!(5),
        "k=5 is typed by the minion as Salt types it: {v}"
    );

    // local_async, then the runner client: jobs.lookup_jid with the jid as pepper sends it.
    let v = s.json(&["--client", "local_async", "*", "test.echo", "later"]);
    let jid = v["return"][0]["jid"]
        .as_str()
        .unwrap_or_else(|| panic!("{v}"))
        .to_owned();
    let mut minions: Vec<String> =
        serde_json::from_value(v["return"][0]["minions"].clone()).unwrap();
    minions.sort();
    assert_eq!(minions, ["pep-a", "pep-b"]);
    // pepper asks runners for `full_return`: salt-api answers with the runner's return event.
    let runner = |args: &[&str]| {
        let mut a = vec!["--client", "runner"];
        a.extend(args);
        let v = s.json(&a);
        let ev = &v["return"][0];
        assert_eq!(
            ev["data"]["fun"],
            json!(format!("runner.{}", args[0])),
            "{v}"
        );
        assert!(
            ev["tag"].as_str().unwrap_or("").starts_with("salt/run/"),
            "{v}"
        );
        ev["data"]["return"].clone()
    };
    let jid_kw = format!("jid={jid}");
    let looked = wait_for(Duration::from_secs(30), || {
        runner(&["jobs.lookup_jid", &jid_kw]) == json!({"pep-a": "later", "pep-b": "later"})
    });
    assert!(looked, "jobs.lookup_jid {jid} never showed both returns");
    let job = runner(&["jobs.list_job", &jid_kw]);
    assert_eq!(job["Function"], json!("test.echo"), "{job}");
    assert_eq!(job["Result"]["pep-b"]["return"], json!("later"), "{job}");
    let jobs = runner(&["jobs.list_jobs"]);
    assert_eq!(jobs[&jid]["Function"], json!("test.echo"), "{jobs}");
    assert_eq!(
        runner(&["manage.status"]),
        json!({"up": ["pep-a", "pep-b"], "down": []})
    );

    // wheel: the key lists and a fingerprint, in salt-api's envelope.
    let v = s.json(&["--client", "wheel", "key.list_all"]);
    let data = &v["return"][0]["data"];
    assert_eq!(data["success"], json!(true), "{v}");
    assert_eq!(data["return"]["minions"], json!(["pep-a", "pep-b"]), "{v}");
    assert!(
        v["return"][0]["tag"]
            .as_str()
            .unwrap_or("")
            .starts_with("salt/wheel/"),
        "{v}"
    );
    let v = s.json(&["--client", "wheel", "key.finger", "match=pep-a"]);
    let fp = v["return"][0]["data"]["return"]["minions"]["pep-a"]
        .as_str()
        .unwrap_or("");
    assert_eq!(fp.len(), 95, "a sha256 fingerprint: {v}");

    // The master's private key never leaves it: key.print '*' shows minions' public keys only.
    let out = s.pepper(&["--client", "wheel", "key.print", "match=*"]);
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && printed.contains("PUBLIC KEY"),
        "{}",
        text(&out)
    );
    assert!(
        !printed.contains("PRIVATE"),
        "key.print leaked a private key:\n{printed}"
    );
    let v = s.json(&["--client", "wheel", "config.values"]);
    let conf = &v["return"][0]["data"]["return"];
    assert!(
        conf.get("external_auth").is_none() && conf.get("interface").is_some(),
        "{v}"
    );

    // local_batch (--batch): every minion, one at a time.
    let v = s.json(&["--batch", "1", "*", "test.echo", "batched"]);
    let mut got: Vec<String> = v["return"]
        .as_array()
        .unwrap_or_else(|| panic!("{v}"))
        .iter()
        .map(|r| {
            let (id, ret) = r.as_object().unwrap().iter().next().unwrap();
            assert_eq!(ret, &json!("batched"), "{v}");
            id.clone()
        })
        .collect();
    got.sort();
    assert_eq!(got, ["pep-a", "pep-b"], "{v}");

    // --fail-if-incomplete: local_async, then jobs.lookup_jid until every minion returned.
    let out = s.pepper(&["--fail-if-incomplete", "*", "test.echo", "polled"]);
    assert!(out.status.success(), "{}", text(&out));
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        printed.contains("pep-a") && printed.contains("pep-b") && printed.contains("polled"),
        "{printed}"
    );

    // --run-uri: a token from /token, then /run with the token in each chunk.
    let v = s.json(&["--run-uri", "pep-a", "test.echo", "via-run"]);
    assert_eq!(rets(&v), json!({"pep-a": "via-run"}), "{v}");

    // A cached token (-T -x FILE): the second run logs in no more.
    let cache = s.home.path().join("token-cache");
    let cache = cache.to_str().unwrap();
    s.json(&["-T", "-x", cache, "pep-a", "test.ping"]);
    let first = std::fs::read_to_string(cache).expect("pepper cached its token");
    let v = s.json(&["-T", "-x", cache, "pep-b", "test.ping"]);
    assert_eq!(rets(&v), json!({"pep-b": true}), "{v}");
    assert_eq!(
        std::fs::read_to_string(cache).unwrap(),
        first,
        "the token was reused"
    );

    // Lowstate as JSON, inline and from a file.
    let low = json!([{"client": "local", "tgt": "pep-b", "fun": "test.echo", "arg": ["raw"]}]);
    let v = s.json(&["--json", &low.to_string()]);
    assert_eq!(rets(&v), json!({"pep-b": "raw"}), "{v}");
    let file = s.home.path().join("low.json");
    std::fs::write(&file, low.to_string()).unwrap();
    let v = s.json(&["--json-file", file.to_str().unwrap()]);
    assert_eq!(rets(&v), json!({"pep-b": "raw"}), "{v}");

    // brine's own CLI types arguments as Salt's CLI does (yamlify_arg, key=value).
    let v = s.m.brine_json(&[
        "pep-a",
        "test.arg",
        "1",
        "True",
        "{\"a\": 1}",
        "a: 1",
        "k=5",
    ]);
    assert_eq!(
        v["pep-a"]["args"],
        json!([1, true, {"a": 1}, "a: 1"]),
        "{v}"
    );
    assert_eq!(v["pep-a"]["kwargs"]["k"], json!(5), "{v}");

    // A wrong password: pepper says so and exits non-zero; nothing was published.
    let jobs_before = s.m.job_count();
    let out = s.pepper_as("not-it", &["*", "test.ping"]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Authentication denied"),
        "{}",
        text(&out)
    );
    assert_eq!(s.m.job_count(), jobs_before);
}
