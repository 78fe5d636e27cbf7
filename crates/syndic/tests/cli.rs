//! `syndic` as an operator starts it: `--validate` on Salt's two config files, and the clear
//! errors for a config that cannot be a syndic. (These tests also make `cargo test --workspace`
//! build the `syndic` binary that the topology tests in brine-cli run.)

use std::process::Command;

fn syndic(dir: &std::path::Path, extra: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_syndic"))
        .arg("-c")
        .arg(dir)
        .args(extra)
        .output()
        .unwrap()
}

#[test]
fn validate_reads_master_and_minion_files() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("root");
    std::fs::write(
        d.path().join("master"),
        format!(
            "root_dir: {}\ninterface: 127.0.0.1\nsyndic_master: [mom-a, 'mom-b:4606']\n\
             syndic_master_port: 4706\nsyndic_mode: cluster\nsyndic_failover: ordered\n\
             syndic_event_forward_timeout: 0.2\n",
            root.display()
        ),
    )
    .unwrap();
    std::fs::write(
        d.path().join("minion"),
        format!("id: syn-test\nroot_dir: {}\n", root.display()),
    )
    .unwrap();
    let out = syndic(d.path(), &["--validate"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("configuration OK (id syn-test"), "{err}");
    assert!(err.contains("mom-b:4606"), "{err}");
    // The syndic's minion key was created in the minion pki dir, with Salt's modes.
    let pem = root.join("etc/salt/pki/minion/minion.pem");
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(
        std::fs::metadata(&pem).unwrap().permissions().mode() & 0o777,
        0o400
    );
}

#[test]
fn refuses_configs_that_cannot_be_a_syndic() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("root");
    std::fs::write(
        d.path().join("master"),
        format!("root_dir: {}\n", root.display()),
    )
    .unwrap();
    let out = syndic(d.path(), &["--validate"]);
    assert_eq!(out.status.code(), Some(64));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("syndic_master is not set"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (bad, key) in [
        ("syndic_master: 'h:notaport'", "syndic_master"),
        ("syndic_master: h\nsyndic_mode: loud", "syndic_mode"),
        (
            "syndic_master: h\nsyndic_failover: sideways",
            "syndic_failover",
        ),
        (
            "syndic_master: h\nsyndic_event_forward_timeout: -1",
            "syndic_event_forward_timeout",
        ),
    ] {
        std::fs::write(
            d.path().join("master"),
            format!("root_dir: {}\n{bad}\n", root.display()),
        )
        .unwrap();
        let out = syndic(d.path(), &["--validate"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{bad}: {err}");
        assert!(err.contains(key), "{bad}: {err}");
    }
}
