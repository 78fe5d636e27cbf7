//! CI smoke run of `brine-swarm` (issue 6): 200 simulated minions in two worker processes on
//! two source addresses against a real `mofm`; every minion authenticates and every return of
//! every round arrives. Correctness only: no timing is asserted.

use std::process::Command;

use brine_test_support::{free_port, start_mofm, workspace_bin};
use serde_json::Value as Json;

#[test]
fn swarm_of_200_against_mofm_all_authed_all_returned() {
    let dir = tempfile::tempdir().unwrap();
    let (publish, ret, api) = (free_port(), free_port(), free_port());
    let mofm = start_mofm(
        &workspace_bin("mofm"),
        dir.path(),
        "127.0.0.1",
        (publish, ret, api),
        "",
    );
    let brine = workspace_bin("brine");
    let etc = dir.path().join("etc");
    let cli = |rest: &str| {
        format!(
            "{} -c {} {rest} --out quiet",
            brine.display(),
            etc.display()
        )
    };
    let out = Command::new(env!("CARGO_BIN_EXE_brine-swarm"))
        .args(["--master", &format!("127.0.0.1:{ret}")])
        .args(["--publish-port", &publish.to_string()])
        .args(["-n", "200", "--per-proc", "100", "--src", "127.0.0.2"])
        .args(["--prefix", "smoke-", "--wait", "60", "--rounds", "2"])
        .args(["--pids", &mofm.pid().to_string()])
        .args(["--publish", &cli("'*' test.ping")])
        .args(["--publish", &cli("'smoke-*' test.echo hello")])
        .arg("--json")
        .output()
        .unwrap();
    let s: Json = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "no JSON summary ({e}): {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert_eq!(s["processes"], 2, "{s}");
    assert_eq!(s["authed"], 200, "{s}");
    assert_eq!(s["auth_failed"], 0, "{s}");
    let rounds = s["rounds"].as_array().unwrap();
    assert_eq!(rounds.len(), 4, "{s}");
    for r in rounds {
        assert_eq!(r["returns"], 200, "{r}");
        assert_eq!(r["missing"], 0, "{r}");
        assert_eq!(r["exit"], 0, "{r}");
        assert_eq!(r["jid"].as_str().map(str::len), Some(20), "{r}");
    }
    assert!(s["master_pss_kb"].as_u64().unwrap() > 0, "{s}");
}
