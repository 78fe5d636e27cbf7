//! Start-up like salt-minion: config files, `--validate`, exit 64 on bad values.

use std::process::Command;

fn run(config: &str, extra_args: &[&str]) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("minion"), config).unwrap();
    std::fs::create_dir(dir.path().join("minion.d")).unwrap();
    std::fs::write(
        dir.path().join("minion.d/extra.conf"),
        "master_alive_interval: 10\n",
    )
    .unwrap();
    Command::new(env!("CARGO_BIN_EXE_minion"))
        .arg("-c")
        .arg(dir.path())
        .args(extra_args)
        .output()
        .unwrap()
}

#[test]
fn validate_accepts_a_salt_config_and_warns_on_unknown_keys() {
    let out = run(
        "id: m1\nmaster: [a, b]\nmaster_type: failover\nsome_salt_option: 1\n",
        &["--validate", "-l", "info"],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("configuration OK (id m1, 2 master(s))"),
        "{err}"
    );
    assert!(
        err.contains("some_salt_option"),
        "unknown keys are named in a warning: {err}"
    );
}

#[test]
fn bad_values_exit_64_with_a_clear_message() {
    for (cfg, needle) in [
        ("id: m1\nmaster_type: hot\n", "master_type"),
        ("id: m1\nmaster_port: 99999\n", "master_port"),
        ("id: m1\nmaster: [a\n", "minion"),
        ("id: ../x\n", "id"),
    ] {
        let out = run(cfg, &["--validate"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{cfg}: {err}");
        assert!(err.contains(needle), "{cfg}: {err}");
    }
    let out = run("id: m1\n", &["--validate", "-l", "loud"]);
    assert_eq!(out.status.code(), Some(64));
}

#[test]
fn id_flag_overrides_config() {
    let out = run("id: m1\n", &["--validate", "--id", "other"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("id other"));
}

#[test]
fn the_example_config_in_configs_validates() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs");
    let out = Command::new(env!("CARGO_BIN_EXE_minion"))
        .arg("-c")
        .arg(&dir)
        .arg("--validate")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("configuration OK (id web01.example.com, 2 master(s))"),
        "{err}"
    );
    assert!(
        !err.contains("unknown or unsupported"),
        "every example key is implemented: {err}"
    );
}
