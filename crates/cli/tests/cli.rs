//! The CLI family as an operator runs it without a master: `brine --hash-password`, usage
//! errors, and `brine-key` over an empty pki directory. (These tests also make
//! `cargo test --workspace` build `brine`, `brine-key` and `brine-run`, which the cross-daemon
//! tests in `tests/e2e` run: cargo builds the binaries of a package only for its own
//! integration tests.)

use std::io::Write as _;
use std::process::{Command, Stdio};

#[test]
fn hash_password_prints_a_hash_the_file_backend_accepts() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_brine"))
        .arg("--hash-password")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"wonderland\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let hash = String::from_utf8(out.stdout).unwrap();
    let hash = hash.trim();
    assert!(hash.starts_with("$pbkdf2-sha256$"), "{hash}");
    // The users file the `file` backend reads, with that hash: the password logs in, another
    // does not.
    let d = tempfile::tempdir().unwrap();
    let users = d.path().join("users");
    std::fs::write(&users, format!("alice:{hash}\n")).unwrap();
    let cfg = serde_json::json!({"file": {"^filename": users, "alice": [".*"]}});
    let eauth = brine_master_core::eauth::Eauth::from_config(&cfg, None).unwrap();
    assert!(eauth.authenticate("file", "alice", "wonderland").is_some());
    assert!(
        eauth
            .authenticate("file", "alice", "looking-glass")
            .is_none()
    );
}

#[test]
fn too_few_words_is_a_usage_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_brine"))
        .arg("*")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("usage: brine"), "{err}");
}

#[test]
fn brine_key_lists_an_empty_pki_directory() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(
        d.path().join("master"),
        format!("root_dir: {}\n", d.path().join("root").display()),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_brine-key"))
        .arg("-c")
        .arg(d.path())
        .arg("-L")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for header in [
        "Accepted Keys:",
        "Denied Keys:",
        "Unaccepted Keys:",
        "Rejected Keys:",
    ] {
        assert!(text.contains(header), "{header} missing:\n{text}");
    }
}

#[test]
fn brine_run_without_a_function_is_a_usage_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_brine-run"))
        .output()
        .unwrap();
    assert!(!out.status.success());
}
