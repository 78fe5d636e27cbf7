//! SaltGUI — a real salt-api client, its static files at `../shared/peers/saltgui` (not copied
//! into the project) — served by mofm's `rest_cherrypy: {app, static}` and driven by a headless
//! Chromium (Debian's package) over the DevTools protocol, with two real salt-minions 3007 and a
//! third whose key waits: log in, open the Minions, Keys, Grains, Pillars, Jobs and Events pages,
//! run a job from the Manual Run box and open it on the Job page, accept the waiting key and
//! delete another with the wheel calls the Keys page makes. Each page is asserted on what
//! it shows; screenshots go to `target/saltgui/`.

use std::io::{BufRead as _, BufReader, Write as _};
use std::process::{Child, ChildStdin, ChildStdout, Stdio};

use brine_test_support::{fixture, repo_root};

use super::*;

/// SaltGUI's files: `BRINE_SALTGUI`, else `../shared/peers/saltgui` next to the checkout, else
/// `/work/shared/peers/saltgui`.
fn saltgui_dir() -> PathBuf {
    let candidates = [
        std::env::var_os("BRINE_SALTGUI").map(PathBuf::from),
        Some(repo_root().join("../shared/peers/saltgui")),
        Some(repo_root().join("../../shared/peers/saltgui")),
        Some(PathBuf::from("/work/shared/peers/saltgui")),
    ];
    candidates
        .into_iter()
        .flatten()
        .find(|d| d.join("index.html").is_file() && d.join("static/scripts/index.js").is_file())
        .unwrap_or_else(|| {
            panic!(
                "SaltGUI's static files were not found (../shared/peers/saltgui); \
                 set BRINE_SALTGUI to the directory that holds its index.html"
            )
        })
}

fn chromium() -> PathBuf {
    let p = PathBuf::from("/usr/bin/chromium");
    assert!(
        p.exists(),
        "Chromium is not installed: apt-get install chromium (scripts/test.sh installs it)"
    );
    p
}

/// A headless Chromium driven by `tests/support/data/cdp.py` (DevTools protocol on a pipe).
struct Browser {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    shots: PathBuf,
    _profile: tempfile::TempDir,
}

impl Browser {
    fn start() -> Self {
        let profile = tempfile::tempdir().unwrap();
        let mut child = Command::new("python3")
            .arg(fixture("cdp.py"))
            .arg(chromium())
            .arg(profile.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 runs the DevTools driver");
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let shots = repo_root().join("target/saltgui");
        let _ = std::fs::create_dir_all(&shots);
        Self {
            child,
            stdin,
            stdout,
            shots,
            _profile: profile,
        }
    }

    fn send(&mut self, cmd: &Json) -> Json {
        writeln!(self.stdin, "{cmd}").expect("the DevTools driver is running");
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        serde_json::from_str(&line)
            .unwrap_or_else(|_| json!({"error": format!("driver: {line:?}")}))
    }

    /// Run `cmd`; on an error, a screenshot and the page's console go into the panic.
    fn must(&mut self, cmd: &Json, what: &str) -> Json {
        let r = self.send(cmd);
        if let Some(e) = r.get("error") {
            let shot = self.shot(&format!("failed-{}", what.replace(' ', "-")));
            let console = self.send(&json!({"console": true}));
            let text = self.send(&json!({"eval": "document.body ? document.body.innerText : ''"}));
            panic!(
                "{what}: {e}\nscreenshot: {}\npage text:\n{}\nconsole:\n{}",
                shot.display(),
                text["value"].as_str().unwrap_or(""),
                console["value"]
            );
        }
        r["value"].clone()
    }

    fn open(&mut self, url: &str) {
        self.must(&json!({ "navigate": url }), "navigate");
    }

    fn eval(&mut self, js: &str) -> Json {
        self.must(&json!({ "eval": js }), js)
    }

    /// Wait until `js` is truthy (20 s at most by default).
    fn wait(&mut self, js: &str, what: &str) -> Json {
        self.must(&json!({"wait": js, "timeout": 30}), what)
    }

    fn shot(&mut self, name: &str) -> PathBuf {
        let p = self.shots.join(format!("{name}.png"));
        let _ = self.send(&json!({"screenshot": p.display().to_string()}));
        p
    }

    /// The visible text of the page.
    fn text(&mut self) -> String {
        self.eval("document.body.innerText")
            .as_str()
            .unwrap_or("")
            .to_owned()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "{}", json!({"quit": true}));
        let done = wait_for(Duration::from_secs(10), || {
            matches!(self.child.try_wait(), Ok(Some(_)))
        });
        if !done {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// `GET path` on 127.0.0.1:`port` with `Accept: accept`: status, content type, body.
fn raw_get(port: u16, path: &str, accept: &str) -> (u16, String, String) {
    use std::io::Read as _;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nAccept: {accept}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    let _ = s.read_to_string(&mut raw);
    let status = raw
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let ct = head
        .lines()
        .find_map(|l| {
            l.split_once(':')
                .filter(|(k, _)| k.eq_ignore_ascii_case("content-type"))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_default();
    (status, ct, body.to_owned())
}

/// A JavaScript condition: the visible page shows every one of `words` and no SaltGUI error
/// (an `(error)` marker or an error row).
fn shows(words: &[&str]) -> String {
    let list = serde_json::to_string(words).unwrap();
    format!(
        "(() => {{ const t = document.body.innerText; \
         return {list}.every(w => t.includes(w)) && !t.includes('(error)') \
         && !document.querySelector('#error-row'); }})()"
    )
}

#[test]
fn saltgui_works_against_mofm() {
    subscribe();
    let gui = saltgui_dir();
    let dir = tempfile::tempdir().unwrap();
    let users = users_file(dir.path());
    let pillar = dir.path().join("pillar");
    std::fs::create_dir_all(&pillar).unwrap();
    std::fs::write(pillar.join("top.sls"), "base:\n  '*':\n    - gui\n").unwrap();
    std::fs::write(pillar.join("gui.sls"), "gui_colour: teal-from-pillar\n").unwrap();
    // Salt's ACL semantics: '.*' is a regular expression allowing every function.
    let m = Mofm::start_api(
        &format!(
            ", app: {gui}/index.html, static: {gui}/static",
            gui = gui.display()
        ),
        &format!(
            "external_auth: {{file: {{^filename: {}, alice: ['.*', '@wheel', '@runner', '@jobs']}}}}\n\
             pillar_roots: {{base: [{}]}}\n",
            users.display(),
            pillar.display()
        ),
    );
    let peer = SaltPeer::get("3007.17");
    let (publish, ret, api) = m.ports;
    let alpha = SaltMinion::start(&peer, "gui-alpha", publish, ret, "");
    let beta = SaltMinion::start(&peer, "gui-beta", publish, ret, "");
    assert!(
        wait_for(Duration::from_secs(60), || m
            .key("minions_pre", "gui-alpha")
            && m.key("minions_pre", "gui-beta")),
        "{}",
        m.log_tail()
    );
    let out = m.brine_key(&["-A", "-y"]);
    assert!(out.status.success(), "{}", text(&out));
    for id in ["gui-alpha", "gui-beta"] {
        assert!(wait_ping(&m, id, 90), "{id}: {}", m.log_tail());
    }
    // A third minion whose key stays pending.
    let waiting = SaltMinion::start(&peer, "gui-waiting", publish, ret, "");
    assert!(
        wait_for(Duration::from_secs(60), || m
            .key("minions_pre", "gui-waiting")),
        "{}",
        m.log_tail()
    );

    // The files as salt-api serves them: module scripts as JavaScript, the page to browsers,
    // the API to scripts, nothing outside the static directory.
    let (st, ct, _) = raw_get(api, "/static/scripts/index.js", "*/*");
    assert_eq!((st, ct.as_str()), (200, "text/javascript; charset=utf-8"));
    let (st, ct, body) = raw_get(api, "/?page=x", "text/html,*/*;q=0.8");
    assert_eq!(st, 200);
    assert!(
        ct.starts_with("text/html") && body.contains("SaltGUI"),
        "{ct}"
    );
    let (st, _, body) = raw_get(api, "/", "application/json");
    assert!(st == 200 && body.contains("Welcome"), "{st} {body}");
    for trick in [
        "/static/../index.html",
        "/static/%2e%2e/index.html",
        "/static/scripts/%2e%2e/%2e%2e/index.html",
        "/static/..%2findex.html",
        "/static//etc/passwd",
    ] {
        let (st, _, body) = raw_get(api, trick, "*/*");
        assert!(
            st == 404 && !body.contains("SaltGUI"),
            "{trick}: {st} {body}"
        );
    }

    let base = format!("http://127.0.0.1:{api}");
    let mut b = Browser::start();
    // A browser asking for `/` gets SaltGUI's page (salt-api's html_override), which sends it to
    // the login form.
    b.open(&format!("{base}/"));
    b.wait("!!document.getElementById('username')", "the login form");
    b.shot("01-login");
    b.eval(
        "(() => { \
           document.getElementById('username').value = 'alice'; \
           document.getElementById('password').value = 'wonderland'; \
           const s = document.querySelector('#username').form.querySelector('select'); \
           s.value = 'file'; \
           document.getElementById('login-button').click(); return true; })()",
    );
    b.wait(
        "!!sessionStorage.getItem('token')",
        "a token after logging in",
    );

    // Minions: both accepted minions, their Salt version (manage.versions) and OS grain.
    b.open(&format!("{base}/#minions"));
    b.wait(
        &shows(&["gui-alpha", "gui-beta", "3007.17"]),
        "the Minions page",
    );
    b.shot("02-minions");

    // Keys: accepted and pending keys with their fingerprints (wheel key.list_all, key.finger).
    b.open(&format!("{base}/#keys"));
    b.wait(
        &shows(&["gui-alpha", "gui-beta", "gui-waiting", "unaccepted"]),
        "the Keys page",
    );
    let fp = m.brine_key(&["-f", "gui-alpha"]);
    let fp = String::from_utf8_lossy(&fp.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("gui-alpha:").map(|f| f.trim().to_owned()))
        .expect("brine-key -f prints the fingerprint");
    assert!(
        b.text().contains(&fp),
        "the Keys page does not show gui-alpha's fingerprint {fp}"
    );
    b.shot("03-keys");

    // Grains (grains.items through the API).
    b.open(&format!("{base}/#grains"));
    b.wait(&shows(&["gui-alpha", "gui-beta"]), "the Grains page");
    b.shot("04-grains");
    b.open(&format!("{base}/?minionid=gui-alpha#grains-minion"));
    b.wait(&shows(&["saltversion", "3007.17"]), "gui-alpha's grains");
    b.shot("05-grains-minion");

    // Pillars: the value from pillar_roots, on the minion's pillar page.
    b.open(&format!("{base}/?minionid=gui-beta#pillars-minion"));
    b.wait(&shows(&["gui_colour"]), "gui-beta's pillar keys");
    b.shot("06-pillars-minion");

    // Events, open while a job runs from the Manual Run box.
    b.open(&format!("{base}/#events"));
    b.wait(&shows(&["Events", "to begin"]), "the Events page");
    // It starts paused: press its play button (the character its "press ... to begin" shows).
    b.eval(
        "(() => { const ch = document.body.innerText.match(/press (.+?) to begin/u)[1].trim(); \
           const play = [...document.querySelectorAll('span.small-button-for-click')] \
             .find(s => s.offsetParent !== null && s.textContent.trim() === ch); \
           play.click(); return true; })()",
    );
    b.eval(
        "(() => { document.getElementById('button-manual-run') \
           .dispatchEvent(new MouseEvent('click', {bubbles: true})); return true; })()",
    );
    b.wait(
        "getComputedStyle(document.getElementById('popup-run-command')).display !== 'none'",
        "the Manual Run box",
    );
    b.eval(
        "(() => { document.getElementById('target').value = 'gui-*'; \
           document.getElementById('command').value = 'test.echo brine-in-saltgui'; \
           document.getElementById('run-command').click(); return true; })()",
    );
    b.wait(
        "document.getElementById('popup-output').innerText.includes('brine-in-saltgui') \
         && document.getElementById('popup-output').innerText.includes('gui-beta')",
        "the job's output in the Manual Run box",
    );
    b.shot("07-manual-run");
    b.eval(
        "(() => { document.getElementById('cmd-close-button') \
           .dispatchEvent(new MouseEvent('click', {bubbles: true})); return true; })()",
    );
    // The return events reached the page through /events (the session cookie).
    b.wait(
        &shows(&["salt/job/", "/ret/gui-alpha"]),
        "return events on the Events page",
    );
    b.shot("08-events");

    // Jobs: the test.echo job listed; its Job page shows both returns.
    b.open(&format!("{base}/#jobs"));
    b.wait(&shows(&["test.echo"]), "the Jobs page");
    b.shot("09-jobs");
    let jobs = m.brine_run(&["jobs.list_jobs", "--out", "json"]);
    let jobs: Json = serde_json::from_slice(&jobs.stdout).unwrap_or(Json::Null);
    let jid = jobs
        .as_object()
        .and_then(|j| {
            j.iter()
                .filter(|(_, v)| v["Function"] == json!("test.echo"))
                .map(|(k, _)| k.clone())
                .max()
        })
        .unwrap_or_else(|| panic!("no test.echo job in jobs.list_jobs: {jobs}"));
    b.open(&format!("{base}/?id={jid}#job"));
    b.wait(
        &shows(&[
            "2 responses, 2 successes",
            "gui-alpha",
            "gui-beta",
            "brine-in-saltgui",
        ]),
        "the Job page",
    );
    b.shot("10-job");

    // The session outlives SaltGUI's keep-alive check (GET /stats), and logging out ends it.
    assert_eq!(
        b.eval(
            "fetch('/stats', {headers: {'X-Auth-Token': sessionStorage.getItem('token'), \
               'Accept': 'application/json'}}).then(r => r.status)"
        ),
        json!(200)
    );
    // The Keys page's accept and delete buttons are wheel calls: key.accept lets the waiting
    // minion in (it answers jobs), key.delete takes a key away (and rotates the AES key).
    let tok = b
        .eval("sessionStorage.getItem('token')")
        .as_str()
        .unwrap_or("")
        .to_owned();
    let wheel_with = |fun: &str, id: &str, flags: Json| {
        let mut chunk = json!({"client": "wheel", "fun": fun, "match": id});
        for (k, v) in flags.as_object().into_iter().flatten() {
            chunk[k] = v.clone();
        }
        let (st, v) = m.http("POST", "/", Some(&tok), &json!([chunk]));
        assert_eq!(st, 200, "{fun} {id}: {v}");
        assert_eq!(v["return"][0]["data"]["success"], json!(true), "{v}");
        v["return"][0]["data"]["return"].clone()
    };
    let wheel = |fun: &str, id: &str| wheel_with(fun, id, json!({}));
    assert_eq!(
        wheel("key.accept", "gui-waiting"),
        json!({"minions": ["gui-waiting"]})
    );
    assert!(m.key("minions", "gui-waiting") && !m.key("minions_pre", "gui-waiting"));
    assert!(wait_ping(&m, "gui-waiting", 90), "{}", m.log_tail());
    b.open(&format!("{base}/#keys"));
    b.wait(
        &format!(
            "{} && !document.body.innerText.includes('unaccepted')",
            shows(&["gui-waiting"])
        ),
        "the Keys page after key.accept",
    );
    // key.reject leaves an accepted key alone unless include_accepted says otherwise.
    assert_eq!(
        wheel("key.reject", "gui-alpha"),
        json!({"minions": ["gui-alpha"]})
    );
    assert_eq!(
        wheel_with("key.reject", "gui-alpha", json!({"include_accepted": true})),
        json!({"minions_rejected": ["gui-alpha"]})
    );
    assert_eq!(wheel("key.delete", "gui-beta"), json!({}));
    assert!(!m.key("minions", "gui-beta"));
    assert!(
        wait_for(Duration::from_secs(15), || m
            .log()
            .contains("AES key rotated")),
        "deleting an accepted key rotates the AES key:\n{}",
        m.log_tail()
    );
    drop(b);
    drop((alpha, beta, waiting));
}
