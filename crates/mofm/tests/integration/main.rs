//! `mofm` with unmodified salt-minions (3006.30, 3007.17, 3008.5): keys land in Salt's pki
//! layout (pending without auto_accept, accepted with it), start events arrive.

use std::process::Command;
use std::time::Duration;

use brine_test_support::{Daemon, SaltMinion, SaltPeer, free_port, subscribe, tail, wait_for};

struct Mofm {
    dir: tempfile::TempDir,
    ports: (u16, u16),
    _daemon: Daemon,
}

impl Mofm {
    fn start(extra: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ports = (free_port(), free_port());
        std::fs::create_dir_all(dir.path().join("etc")).unwrap();
        std::fs::write(
            dir.path().join("etc/master"),
            format!(
                "root_dir: {}\ninterface: 127.0.0.1\npublish_port: {}\nret_port: {}\nuser: root\n\
                 rest_cherrypy: {{port: {}}}\n{extra}\n",
                dir.path().join("root").display(),
                ports.0,
                ports.1,
                free_port()
            ),
        )
        .unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_mofm"));
        cmd.arg("-c")
            .arg(dir.path().join("etc"))
            .args(["-l", "info"]);
        let daemon = Daemon::spawn(cmd, "mofm", &dir.path().join("mofm.log"));
        assert!(wait_for(Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", ports.1)).is_ok()
        }));
        Self {
            dir,
            ports,
            _daemon: daemon,
        }
    }

    fn key(&self, sub: &str, id: &str) -> bool {
        self.dir
            .path()
            .join("root/etc/salt/pki/master")
            .join(sub)
            .join(id)
            .exists()
    }

    fn log(&self) -> String {
        tail(&self.dir.path().join("mofm.log"), 40)
    }
}

fn real_minion_attaches(version: &str) {
    subscribe();
    let peer = SaltPeer::get(version);
    let m = Mofm::start("auto_accept: True");
    let id = format!("real-{}", version.replace('.', "-"));
    let minion = SaltMinion::start(&peer, &id, m.ports.0, m.ports.1, "");
    assert!(
        wait_for(Duration::from_secs(90), || m
            .log()
            .contains(&format!("salt/minion/{id}/start"))),
        "no start event\n{}\n{}",
        m.log(),
        minion.log_tail(30)
    );
    assert!(m.key("minions", &id), "accepted key in Salt's pki layout");
    assert!(
        m.dir
            .path()
            .join("root/etc/salt/pki/master/master.pem")
            .exists()
    );
}

#[test]
fn real_minion_attaches_3006() {
    real_minion_attaches("3006.30");
}

#[test]
fn real_minion_attaches_3007() {
    real_minion_attaches("3007.17");
}

#[test]
fn real_minion_attaches_3008() {
    real_minion_attaches("3008.5");
}

#[test]
fn without_auto_accept_keys_wait_in_minions_pre() {
    subscribe();
    let peer = SaltPeer::get("3007.17");
    let m = Mofm::start("");
    let _minion = SaltMinion::start(&peer, "pending-1", m.ports.0, m.ports.1, "");
    assert!(
        wait_for(Duration::from_secs(60), || m
            .key("minions_pre", "pending-1")),
        "{}",
        m.log()
    );
    assert!(!m.key("minions", "pending-1"));
}

#[test]
fn validate_and_bad_config() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("master"),
        "interface: 127.0.0.1\nworker_threads: 5\n",
    )
    .unwrap();
    let ok = Command::new(env!("CARGO_BIN_EXE_mofm"))
        .arg("-c")
        .arg(dir.path())
        .arg("--validate")
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    std::fs::write(dir.path().join("master"), "ret_port: 70000\n").unwrap();
    let bad = Command::new(env!("CARGO_BIN_EXE_mofm"))
        .arg("-c")
        .arg(dir.path())
        .arg("--validate")
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("ret_port"));
}

#[test]
fn dropfile_rotates_the_aes_key() {
    let m = Mofm::start("");
    let cache = m.dir.path().join("root/var/cache/salt/master");
    std::fs::create_dir_all(&cache).unwrap();
    std::fs::write(cache.join(".dfn"), "master").unwrap();
    assert!(
        wait_for(Duration::from_secs(10), || m
            .log()
            .contains("AES key rotated")),
        "{}",
        m.log()
    );
    assert!(!cache.join(".dfn").exists(), "dropfile consumed");
}
