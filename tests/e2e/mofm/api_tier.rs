//! The API tier as operators deploy it: `deploy/nginx/brine-api.conf` in real nginx in front of
//! two mofm that share Redis (job cache and tokens). Log in through nginx, run jobs with
//! `brine --url`, kill -9 one mofm, go on with the same token, and look a job the dead one
//! published up through the survivor.

use std::process::Command;

use brine_test_support::sim::sim_runtime;
use brine_test_support::{Nginx, RedisServer, SimMinion, free_port, subscribe, workspace_bin};
use serde_json::{Value as Json, json};

use super::job_cache_redis::redis_conf;
use super::{Mofm, attach_sims, http_to as http, text, users_file};

#[test]
fn two_mofm_behind_nginx_keep_serving_when_one_is_killed() {
    subscribe();
    let redis = RedisServer::start();
    let users_dir = tempfile::tempdir().unwrap();
    let users = users_file(users_dir.path());
    let conf = format!(
        "auto_accept: True\n{}eauth_tokens: rediscluster\nexternal_auth:\n  file:\n    ^filename: {}\n    alice:\n      - 'test.*'\n      - '@jobs'\n",
        redis_conf(&redis),
        users.display()
    );
    let (a, b) = (Mofm::start(&conf), Mofm::start(&conf));
    // Each minion attaches to both MoMs (Salt's multi-master minion).
    let rt = sim_runtime();
    let ctx = brine_transport::Context::new();
    let ids: Vec<String> = (0..3).map(|i| format!("tier{i}")).collect();
    let sims: Vec<SimMinion> = [&a, &b]
        .into_iter()
        .flat_map(|m| attach_sims(m, &rt, &ctx, &ids))
        .collect();
    let port = free_port();
    let apis = [a.ports.2, b.ports.2].map(|p| format!("127.0.0.1:{p}"));
    let nginx = Nginx::start(
        &Nginx::api_tier_site([apis[0].as_str(), apis[1].as_str()], port),
        port,
    );
    let url = format!("http://127.0.0.1:{port}");
    // Log in through nginx (whichever MoM answers issues the token).
    let (st, r) = http(
        port,
        "POST",
        "/login",
        None,
        &json!({"username": "alice", "password": "wonderland", "eauth": "file"}),
    );
    assert_eq!(st, 200, "{r}");
    let tok = r["return"][0]["token"].as_str().unwrap().to_owned();
    let all_true = Json::Object(ids.iter().map(|id| (id.clone(), json!(true))).collect());
    let brine = |args: &[&str]| {
        Command::new(workspace_bin("brine"))
            .args(["--url", &url, "--token", &tok])
            .args(args)
            .args(["--out", "json", "--static"])
            .output()
            .unwrap()
    };
    // Jobs through nginx: the token keeps them on one MoM.
    let before = (a.job_count(), b.job_count());
    for _ in 0..4 {
        let out = brine(&["tier*", "test.ping"]);
        let got: Json = serde_json::from_slice(&out.stdout).unwrap_or(Json::Null);
        assert_eq!(got, all_true, "{}\n{}", text(&out), nginx.error_log());
    }
    let grew = (a.job_count() - before.0, b.job_count() - before.1);
    assert!(
        grew == (4, 0) || grew == (0, 4),
        "one MoM serves one token while it is up: {grew:?}"
    );
    let (busy, survivor) = if grew.0 == 4 { (&a, &b) } else { (&b, &a) };
    // The newest job of the MoM about to die.
    let mut jids: Vec<String> =
        std::fs::read_dir(busy.root().join("var/cache/salt/master/brine/jobs"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
    jids.sort();
    let jid = jids.pop().unwrap();

    busy.daemon.as_ref().unwrap().signal_group("-KILL");
    let before = survivor.job_count();
    for _ in 0..4 {
        let out = brine(&["tier*", "test.ping"]);
        let got: Json = serde_json::from_slice(&out.stdout).unwrap_or(Json::Null);
        assert_eq!(
            got,
            all_true,
            "after kill -9 of the token's MoM, same token: {}\n{}",
            text(&out),
            nginx.error_log()
        );
    }
    assert_eq!(survivor.job_count() - before, 4, "the survivor ran them");
    let (st, r) = http(
        port,
        "GET",
        &format!("/jobs/{jid}"),
        Some(&tok),
        &Json::Null,
    );
    assert_eq!(st, 200, "{r}");
    assert_eq!(
        r["return"][0], all_true,
        "the dead MoM's job through the survivor: {r}"
    );
    let out = Command::new(workspace_bin("brine-run"))
        .args(["--url", &url, "--token", &tok, "jobs.lookup_jid", &jid])
        .args(["--out", "json"])
        .output()
        .unwrap();
    let got: Json = serde_json::from_slice(&out.stdout).unwrap_or(Json::Null);
    assert_eq!(got, all_true, "{}", text(&out));
    drop(sims);
}
