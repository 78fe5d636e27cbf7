//! `external_auth` backends beyond `file`: `pam` against a real system account (created for
//! the test with `useradd`, removed after) through the system's PAM stack, and `sharedsecret`;
//! `mofm --validate` refusing what mofm could not start with (exit 64).

use super::*;

/// A system account for the test, removed on drop.
struct Account(String);

impl Account {
    fn create(password: &str) -> Self {
        let name = format!("brpam{}", std::process::id());
        let _ = Command::new("userdel").arg(&name).output();
        let out = Command::new("useradd")
            .args(["-M", "-N", "-s", "/usr/sbin/nologin", &name])
            .output()
            .expect("useradd runs (the test needs root)");
        assert!(out.status.success(), "useradd: {}", text(&out));
        let mut child = Command::new("chpasswd")
            .stdin(std::process::Stdio::piped())
            .spawn()
            .expect("chpasswd runs");
        {
            use std::io::Write as _;
            let mut stdin = child.stdin.take().unwrap();
            writeln!(stdin, "{name}:{password}").unwrap();
        }
        assert!(child.wait().unwrap().success(), "chpasswd failed");
        Self(name)
    }
}

impl Drop for Account {
    fn drop(&mut self) {
        let _ = Command::new("userdel").arg(&self.0).output();
    }
}

fn login(m: &Mofm, user: &str, password: &str, eauth: &str) -> (u16, Json) {
    m.http(
        "POST",
        "/login",
        None,
        &json!({"username": user, "password": password, "eauth": eauth}),
    )
}

#[test]
fn pam_and_sharedsecret_logins() {
    subscribe();
    let acct = Account::create("Pam-Pass-42");
    let user = acct.0.clone();
    let m = Mofm::start(&format!(
        "sharedsecret: brine-shared-9\n\
         external_auth:\n  pam:\n    {user}: ['test\\..*', '@wheel']\n  \
         sharedsecret:\n    ops: ['.*']\n"
    ));

    // PAM: the right password gives a token with the user's ACL; a wrong one is 401 (after
    // PAM's failure delay); an account the ACL does not name is 401 whatever PAM says.
    let (st, body) = login(&m, &user, "Pam-Pass-42", "pam");
    assert_eq!(st, 200, "{body}\n{}", m.log_tail());
    let tok = body["return"][0]["token"].as_str().unwrap().to_owned();
    assert_eq!(body["return"][0]["eauth"], json!("pam"));
    let (st, keys) = m.http(
        "POST",
        "/",
        Some(&tok),
        &json!([{"client": "wheel", "fun": "key.list_all"}]),
    );
    assert_eq!(st, 200, "{keys}");
    assert_eq!(keys["return"][0]["data"]["success"], json!(true), "{keys}");
    let (st, _) = m.http(
        "POST",
        "/",
        Some(&tok),
        &json!([{"client": "runner", "fun": "manage.up"}]),
    );
    assert_eq!(st, 403, "no @runner in the pam user's ACL");
    assert_eq!(login(&m, &user, "Pam-Pass-43", "pam").0, 401);
    assert_eq!(login(&m, "root", "whatever", "pam").0, 401);
    assert_eq!(login(&m, &user, "Pam-Pass-42", "file").0, 401);

    // sharedsecret: the master's `sharedsecret` as the password.
    let (st, body) = login(&m, "ops", "brine-shared-9", "sharedsecret");
    assert_eq!(st, 200, "{body}");
    assert_eq!(login(&m, "ops", "brine-shared-8", "sharedsecret").0, 401);
    assert!(m.log().contains("API login refused"), "{}", m.log_tail());
}

#[test]
fn validate_refuses_what_mofm_cannot_start_with() {
    let dir = tempfile::tempdir().unwrap();
    for (conf, says) in [
        ("external_auth: {ldap: {alice: ['.*']}}\n", "ldap"),
        (
            "external_auth: {sharedsecret: {ops: ['.*']}}\n",
            "sharedsecret",
        ),
        (
            "rest_cherrypy: {app: /nonexistent/brine/index.html}\n",
            "rest_cherrypy: app",
        ),
        ("rest_cherrypy: {static_path: 'static'}\n", "static_path"),
    ] {
        std::fs::write(
            dir.path().join("master"),
            format!("root_dir: {}\n{conf}", dir.path().join("root").display()),
        )
        .unwrap();
        let out = Command::new(workspace_bin("mofm"))
            .arg("-c")
            .arg(dir.path())
            .arg("--validate")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(64), "{conf}: {}", text(&out));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(says),
            "{conf}: {}",
            text(&out)
        );
    }
}
