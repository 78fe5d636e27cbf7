//! A mofm on loopback, driven as an attacker would drive it.

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use brine_proto::crypt::PrivateKey;
use brine_test_support::SimMinion;
use brine_test_support::sim::{HostileMinion, cached_key};
use brine_test_support::{Daemon, free_port, tail, wait_for, workspace_bin};
use serde_json::{Value as Json, json};

/// A running mofm in a temporary root, with its ports and tokens.
pub(crate) struct Master {
    pub(crate) dir: tempfile::TempDir,
    /// (publish, ret, API).
    pub(crate) ports: (u16, u16, u16),
    daemon: Option<Daemon>,
}

impl Master {
    /// Start mofm with `extra` master config (`interface: 127.0.0.1`, free ports), logging at
    /// info; returns once its API answers.
    pub(crate) fn start(extra: &str) -> Self {
        Self::start_with(extra, "", None)
    }

    /// [`Master::start`] with `api` added to the `rest_cherrypy` mapping (`key: value, ...`),
    /// run under `ulimit -n <nofile>` when given.
    pub(crate) fn start_with(extra: &str, api: &str, nofile: Option<u32>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ports = (free_port(), free_port(), free_port());
        let etc = dir.path().join("etc");
        std::fs::create_dir_all(&etc).unwrap();
        std::fs::write(
            etc.join("master"),
            format!(
                "root_dir: {}\ninterface: 127.0.0.1\npublish_port: {}\nret_port: {}\n\
                 rest_cherrypy: {{port: {}{}{api}}}\ngather_job_timeout: 3\n{extra}\n",
                dir.path().join("root").display(),
                ports.0,
                ports.1,
                ports.2,
                if api.is_empty() { "" } else { ", " },
            ),
        )
        .unwrap();
        let bin = workspace_bin("mofm");
        let mut cmd = match nofile {
            None => Command::new(&bin),
            Some(n) => {
                let mut c = Command::new("bash");
                c.arg("-c")
                    .arg(format!("ulimit -n {n} && exec \"$0\" \"$@\""))
                    .arg(&bin);
                c
            }
        };
        cmd.arg("-c").arg(&etc).args(["-l", "info"]);
        let log = dir.path().join("mofm.log");
        let daemon = Daemon::spawn(cmd, "mofm", &log);
        let m = Self {
            dir,
            ports,
            daemon: Some(daemon),
        };
        let api = ports.2;
        assert!(
            wait_for(Duration::from_secs(15), || {
                std::net::TcpStream::connect(("127.0.0.1", api)).is_ok()
            }),
            "mofm did not come up:\n{}",
            m.log_tail()
        );
        m
    }

    pub(crate) fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    pub(crate) fn cachedir(&self) -> PathBuf {
        self.root().join("var/cache/salt/master")
    }

    pub(crate) fn pki(&self) -> PathBuf {
        self.root().join("etc/salt/pki/master")
    }

    pub(crate) fn pid(&self) -> u32 {
        self.daemon.as_ref().unwrap().pid()
    }

    pub(crate) fn alive(&mut self) -> bool {
        self.daemon.as_mut().unwrap().alive()
    }

    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("mofm.log")).unwrap_or_default()
    }

    pub(crate) fn log_tail(&self) -> String {
        tail(&self.dir.path().join("mofm.log"), 40)
    }

    /// The root token local commands use (`cachedir/brine/root_token`).
    pub(crate) fn root_token(&self) -> String {
        std::fs::read_to_string(self.cachedir().join("brine/root_token")).unwrap()
    }

    /// Jobs in the job cache.
    pub(crate) fn job_count(&self) -> usize {
        std::fs::read_dir(self.cachedir().join("brine/jobs")).map_or(0, Iterator::count)
    }

    /// One HTTP request with a JSON body; `(status, body)` (`Null` when not JSON).
    pub(crate) fn http(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: &Json,
    ) -> (u16, Json) {
        let (status, raw) = self.http_raw(method, path, token, &body.to_string());
        (status, serde_json::from_str(&raw).unwrap_or(Json::Null))
    }

    /// One HTTP request; `(status, body text)`, status 0 when the connection failed.
    pub(crate) fn http_raw(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: &str,
    ) -> (u16, String) {
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.ports.2)) else {
            return (0, String::new());
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(120)));
        let tok = token
            .map(|t| format!("X-Auth-Token: {t}\r\n"))
            .unwrap_or_default();
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{tok}\
             Content-Type: application/json\r\nAccept: application/json\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        );
        if s.write_all(req.as_bytes()).is_err() {
            return (0, String::new());
        }
        let mut raw = Vec::new();
        let _ = s.read_to_end(&mut raw);
        let raw = String::from_utf8_lossy(&raw).into_owned();
        let status = raw
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let body = raw.split_once("\r\n\r\n").map_or("", |x| x.1).to_owned();
        (status, body)
    }

    /// Log in through the API; the token.
    pub(crate) fn login(&self, user: &str, password: &str) -> String {
        let (st, body) = self.http(
            "POST",
            "/login",
            None,
            &json!({"username": user, "password": password, "eauth": "file"}),
        );
        assert_eq!(st, 200, "login {user}: {body}\n{}", self.log_tail());
        body["return"][0]["token"].as_str().unwrap().to_owned()
    }

    /// A lowstate `local` call as root: `{minion: return}`.
    pub(crate) fn run_root(&self, tgt: &str, fun: &str, arg: &[Json]) -> Json {
        let tok = self.root_token();
        let (st, body) = self.http(
            "POST",
            "/",
            Some(&tok),
            &json!([{"client": "local", "tgt": tgt, "fun": fun, "arg": arg, "timeout": 5}]),
        );
        assert_eq!(st, 200, "{body}\n{}", self.log_tail());
        body["return"][0].clone()
    }

    /// Wait until every one of `ids` answers test.ping.
    pub(crate) fn wait_minions(&self, ids: &[&str], secs: u64) {
        let ok = wait_for(Duration::from_secs(secs), || {
            let r = self.run_root("*", "test.ping", &[]);
            ids.iter().all(|id| r.get(*id) == Some(&json!(true)))
        });
        assert!(ok, "minions {ids:?} never answered\n{}", self.log_tail());
    }

    /// A simulated minion `id` (swarm key `key`) attached to this master; `Err` when it is not
    /// accepted within `secs`.
    pub(crate) fn try_sim(
        &self,
        rt: &tokio::runtime::Runtime,
        id: &str,
        key: usize,
        secs: u64,
    ) -> Result<SimMinion, brine_test_support::sim::SimError> {
        let ctx = brine_transport::Context::new();
        rt.block_on(SimMinion::start(
            &ctx,
            id,
            cached_key(key),
            "127.0.0.1",
            self.ports.1,
            self.ports.0,
            Duration::from_secs(secs),
        ))
    }

    /// [`Master::try_sim`], which must succeed within 30 s.
    pub(crate) fn sim(&self, rt: &tokio::runtime::Runtime, id: &str, key: usize) -> SimMinion {
        self.try_sim(rt, id, key, 30)
            .unwrap_or_else(|e| panic!("{id}: {e}\n{}", self.log_tail()))
    }

    /// The master still serves minions: a new simulated minion `id` attaches and answers
    /// `test.ping`.
    pub(crate) fn assert_serves(&self, rt: &tokio::runtime::Runtime, id: &str, key: usize) {
        let _m = self.sim(rt, id, key);
        assert_eq!(
            self.run_root(id, "test.ping", &[]),
            json!({ id: true }),
            "{}",
            self.log_tail()
        );
    }

    /// A hostile (but accepted: the master auto-accepts) minion.
    pub(crate) fn hostile(
        &self,
        rt: &tokio::runtime::Runtime,
        id: &str,
        key: usize,
    ) -> HostileMinion {
        let ctx = brine_transport::Context::new();
        let port = self.ports.1;
        rt.block_on(HostileMinion::connect(
            &ctx,
            id,
            cached_key(key),
            "127.0.0.1",
            port,
            Duration::from_secs(30),
        ))
        .unwrap_or_else(|e| panic!("{id} did not authenticate: {e}\n{}", self.log_tail()))
    }

    /// The current value of a JSON job view as root (`GET /jobs/<jid>`).
    pub(crate) fn job(&self, jid: &str) -> Json {
        let tok = self.root_token();
        self.http("GET", &format!("/jobs/{jid}"), Some(&tok), &Json::Null)
            .1
    }
}

/// A users file with `user:password` lines (salted hashes), for `external_auth: file`.
pub(crate) fn users_file(dir: &Path, users: &[(&str, &str)]) -> PathBuf {
    let p = dir.join("users");
    let lines: Vec<String> = users
        .iter()
        .map(|(u, pw)| {
            format!(
                "{u}:{}",
                brine_master_core::eauth::hash_password(pw).unwrap()
            )
        })
        .collect();
    std::fs::write(&p, lines.join("\n") + "\n").unwrap();
    p
}

/// A `_minion_event` load firing `tag` (empty data) as `id`.
pub(crate) fn event(id: &str, tag: &str) -> brine_proto::Value {
    brine_proto::Value::map()
        .with("cmd", "_minion_event")
        .with("id", id)
        .with("tag", tag)
        .with("data", brine_proto::Value::map())
}

/// A fresh key (not from the swarm cache) for an attacker.
pub(crate) fn fresh_key() -> PrivateKey {
    PrivateKey::generate(2048).unwrap()
}

/// Events read from `/events` for `secs` (a root token): `(tag, data)` each, plus the raw
/// stream.
pub(crate) fn events_for(
    m: &Master,
    secs: u64,
    during: impl FnOnce(),
) -> (Vec<(String, Json)>, String) {
    let tok = m.root_token();
    let mut s = std::net::TcpStream::connect(("127.0.0.1", m.ports.2)).unwrap();
    write!(
        s,
        "GET /events HTTP/1.1\r\nHost: x\r\nX-Auth-Token: {tok}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    // Let the subscription start before the events are fired.
    std::thread::sleep(Duration::from_millis(300));
    during();
    let until = std::time::Instant::now() + Duration::from_secs(secs);
    let mut raw = Vec::new();
    let mut buf = [0u8; 8192];
    while std::time::Instant::now() < until {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
    }
    let raw = String::from_utf8_lossy(&raw).into_owned();
    let events = raw
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<Json>(d).ok())
        .map(|e| {
            (
                e["tag"].as_str().unwrap_or("").to_owned(),
                e["data"].clone(),
            )
        })
        .collect();
    (events, raw)
}
