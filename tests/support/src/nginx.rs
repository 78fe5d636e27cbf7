//! A real nginx (Debian's package) on loopback, serving one site file (for example
//! `deploy/nginx/brine-api.conf`) with everything else in a temporary directory.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::{Daemon, wait_for};

/// A running nginx.
#[derive(Debug)]
pub struct Nginx {
    dir: tempfile::TempDir,
    _daemon: Daemon,
}

fn binary() -> PathBuf {
    for p in ["/usr/sbin/nginx", "/usr/bin/nginx"] {
        if std::path::Path::new(p).exists() {
            return PathBuf::from(p);
        }
    }
    panic!(
        "nginx is not installed: `apt-get install -y nginx-light` (scripts/test.sh installs it)"
    );
}

impl Nginx {
    /// The shipped API tier site (`deploy/nginx/brine-api.conf`) pointed at the two MoM APIs
    /// `apis` (`host:port`) and listening on `127.0.0.1:port`: only the addresses change.
    ///
    /// # Panics
    /// If the shipped file is missing or no longer has the placeholders this replaces.
    pub fn api_tier_site(apis: [&str; 2], port: u16) -> String {
        let conf = std::fs::read_to_string(crate::repo_root().join("deploy/nginx/brine-api.conf"))
            .expect("read deploy/nginx/brine-api.conf");
        assert!(
            conf.contains("mom1.example:8000")
                && conf.contains("mom2.example:8000")
                && conf.contains("listen 8000;"),
            "deploy/nginx/brine-api.conf lost its placeholders"
        );
        conf.replace("mom1.example:8000", apis[0])
            .replace("mom2.example:8000", apis[1])
            .replace("listen 8000;", &format!("listen 127.0.0.1:{port};"))
    }

    /// Serve `site` (the body of an `http {}` include) and wait until `port` on 127.0.0.1
    /// accepts connections.
    ///
    /// # Panics
    /// If nginx is missing, refuses the configuration or does not listen within 10 s.
    pub fn start(site: &str, port: u16) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path().display();
        std::fs::write(dir.path().join("site.conf"), site).expect("write site.conf");
        std::fs::write(
            dir.path().join("nginx.conf"),
            format!(
                "daemon off;\nmaster_process on;\nworker_processes 1;\nuser root;\n\
                 pid {d}/nginx.pid;\nerror_log {d}/error.log info;\n\
                 events {{ worker_connections 1024; }}\n\
                 http {{\n  access_log {d}/access.log;\n  client_body_temp_path {d}/body;\n  \
                 proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fastcgi;\n  \
                 uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n  \
                 include {d}/site.conf;\n}}\n"
            ),
        )
        .expect("write nginx.conf");
        let check = Command::new(binary())
            .arg("-t")
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(dir.path().join("nginx.conf"))
            .output()
            .expect("run nginx -t");
        assert!(
            check.status.success(),
            "nginx refused the configuration:\n{}",
            String::from_utf8_lossy(&check.stderr)
        );
        let mut cmd = Command::new(binary());
        cmd.arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(dir.path().join("nginx.conf"));
        let daemon = Daemon::spawn(cmd, "nginx", &dir.path().join("stdout.log"));
        assert!(
            wait_for(Duration::from_secs(10), || std::net::TcpStream::connect((
                "127.0.0.1",
                port
            ))
            .is_ok()),
            "nginx did not listen on {port}: {}",
            std::fs::read_to_string(dir.path().join("error.log")).unwrap_or_default()
        );
        Self {
            dir,
            _daemon: daemon,
        }
    }

    /// Its error log so far.
    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }
}
