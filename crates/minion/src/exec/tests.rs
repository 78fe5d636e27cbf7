use std::sync::Arc;

use brine_proto::Value;
use brine_proto::jid::Jid;
use brine_proto::loads::JobLoad;

use super::*;

fn ctx(fun: &str, arg: Vec<Value>) -> JobCtx {
    let jid = Jid::from_unix_micros(1_795_744_610_747_396);
    let job = JobLoad::new(fun, arg, Value::str("m1"), "glob", &jid);
    let grains = Value::map()
        .with("id", "m1")
        .with("os", "Debian")
        .with("deep", Value::map().with("a", Value::map().with("b", "c")))
        .with("list", Value::Array(vec![Value::map().with("k", "v")]));
    JobCtx::new(
        job,
        Arc::new(grains),
        JobTable::default(),
        std::env::temp_dir(),
    )
}

fn kw(pairs: &[(&str, Value)]) -> Value {
    let mut m = Value::map().with("__kwarg__", true);
    for (k, v) in pairs {
        m.insert(k, v.clone());
    }
    m
}

#[tokio::test]
async fn test_module() {
    assert_eq!(
        call("test.ping", &ctx("test.ping", vec![])).await,
        Outcome::ok(true)
    );
    assert_eq!(
        call("test.echo", &ctx("test.echo", vec![Value::str("hi")])).await,
        Outcome::ok("hi")
    );
    let missing = call("test.echo", &ctx("test.echo", vec![])).await;
    assert_eq!((missing.retcode, missing.out), (1, Some("nested")));
    let r = call("test.retcode", &ctx("test.retcode", vec![Value::Int(3)])).await;
    assert_eq!((r.ret, r.retcode), (Value::Bool(true), 3));
    assert_eq!(
        call("test.retcode", &ctx("test.retcode", vec![]))
            .await
            .retcode,
        42
    );
    let a = call(
        "test.arg",
        &ctx(
            "test.arg",
            vec![Value::Int(1), kw(&[("a", Value::str("b"))])],
        ),
    )
    .await;
    assert_eq!(
        a.ret.get("args").unwrap(),
        &Value::Array(vec![Value::Int(1)])
    );
    let kwargs = a.ret.get("kwargs").unwrap();
    assert_eq!(kwargs.get("a").unwrap().as_str(), Some("b"));
    assert_eq!(kwargs.get("__pub_fun").unwrap().as_str(), Some("test.arg"));
    assert_eq!(kwargs.get("__pub_tgt_type").unwrap().as_str(), Some("glob"));
    let unknown = call("nope.nope", &ctx("nope.nope", vec![])).await;
    assert_eq!(unknown, Outcome::error("'nope.nope' is not available."));
}

#[tokio::test]
async fn cmd_module_shapes() {
    let script = Value::str("echo out; echo err >&2; exit 3");
    let run = call("cmd.run", &ctx("cmd.run", vec![script.clone()])).await;
    assert_eq!((run.ret.as_str(), run.retcode), (Some("out\nerr"), 3));
    let all = call("cmd.run_all", &ctx("cmd.run_all", vec![script.clone()])).await;
    assert_eq!(all.ret.get("stdout").unwrap().as_str(), Some("out"));
    assert_eq!(all.ret.get("stderr").unwrap().as_str(), Some("err"));
    assert_eq!(all.ret.get("retcode").unwrap().as_i64(), Some(3));
    assert!(all.ret.get("pid").unwrap().as_i64().unwrap() > 0);
    let keys: Vec<&str> = all
        .ret
        .as_map()
        .unwrap()
        .iter()
        .filter_map(|(k, _)| k.as_str())
        .collect();
    assert_eq!(
        keys,
        ["pid", "retcode", "stdout", "stderr"],
        "Salt's key order"
    );
    assert_eq!(
        call(
            "cmd.retcode",
            &ctx("cmd.retcode", vec![Value::str("exit 5")])
        )
        .await
        .ret,
        Value::Int(5)
    );
    let piped = call(
        "cmd.shell",
        &ctx("cmd.shell", vec![Value::str("echo a | tr a b")]),
    )
    .await;
    assert_eq!(piped.ret.as_str(), Some("b"));
    let env = call(
        "cmd.run",
        &ctx(
            "cmd.run",
            vec![
                Value::str("echo $X; pwd"),
                kw(&[
                    ("env", Value::map().with("X", "y")),
                    ("cwd", Value::str("/")),
                ]),
            ],
        ),
    )
    .await;
    assert_eq!(env.ret.as_str(), Some("y\n/"));
    let t = call(
        "cmd.run",
        &ctx(
            "cmd.run",
            vec![Value::str("sleep 5"), kw(&[("timeout", Value::Int(1))])],
        ),
    )
    .await;
    assert_eq!(t.ret.as_str(), Some("Timed out after 1 seconds"));
}

#[tokio::test]
async fn cmd_script_from_a_local_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.sh");
    std::fs::write(&path, "#!/bin/sh\necho \"args: $*\"\nexit 2\n").unwrap();
    let mut c = ctx(
        "cmd.script",
        vec![Value::str(path.to_str().unwrap()), Value::str("one two")],
    );
    c.cachedir = dir.path().join("cache");
    let r = call("cmd.script", &c).await;
    assert_eq!(r.ret.get("stdout").unwrap().as_str(), Some("args: one two"));
    assert_eq!(r.retcode, 2);
    let missing = call(
        "cmd.script",
        &ctx("cmd.script", vec![Value::str("/nonexistent/x.sh")]),
    )
    .await;
    assert_eq!(missing.ret.get("cache_error"), Some(&Value::Bool(true)));
}

#[tokio::test]
async fn cmd_script_stages_under_a_name_the_publish_does_not_choose() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.sh");
    std::fs::write(&path, "#!/bin/sh\necho \"$0\"\n").unwrap();
    let mut c = ctx("cmd.script", vec![Value::str(path.to_str().unwrap())]);
    c.cachedir = dir.path().join("cache");
    // A jid from the network with a path in it.
    c.job.jid = "../../escaped".into();
    let r = call("cmd.script", &c).await;
    assert_eq!(r.retcode, 0, "{:?}", r.ret);
    let staged = r
        .ret
        .get("stdout")
        .and_then(Value::as_str)
        .unwrap()
        .to_owned();
    let scripts = c.cachedir.join("extmods").join("scripts");
    assert!(
        std::path::Path::new(&staged).parent() == Some(scripts.as_path()),
        "staged at {staged}, outside {}",
        scripts.display()
    );
    assert!(
        !staged.contains("escaped"),
        "the jid chose the file name: {staged}"
    );
    assert!(
        staged.ends_with(".sh"),
        "the source's extension is kept: {staged}"
    );
    assert_eq!(
        std::fs::read_dir(&scripts).unwrap().count(),
        0,
        "removed after the run"
    );
}

#[tokio::test]
async fn grains_module() {
    let g = call(
        "grains.get",
        &ctx("grains.get", vec![Value::str("deep:a:b")]),
    )
    .await;
    assert_eq!(g.ret.as_str(), Some("c"));
    let g = call("grains.get", &ctx("grains.get", vec![Value::str("list:k")])).await;
    assert_eq!(g.ret.as_str(), Some("v"));
    let g = call("grains.get", &ctx("grains.get", vec![Value::str("nope")])).await;
    assert_eq!(g.ret.as_str(), Some(""));
    let g = call(
        "grains.get",
        &ctx("grains.get", vec![Value::str("nope"), Value::str("dflt")]),
    )
    .await;
    assert_eq!(g.ret.as_str(), Some("dflt"));
    let i = call(
        "grains.item",
        &ctx("grains.item", vec![Value::str("os"), Value::str("nope")]),
    )
    .await;
    assert_eq!(i.ret, Value::map().with("os", "Debian").with("nope", ""));
    assert_eq!(i.out, Some("nested"));
    let ls = call("grains.ls", &ctx("grains.ls", vec![])).await;
    assert_eq!(
        ls.ret.as_array().unwrap().first().unwrap().as_str(),
        Some("deep")
    );
}

#[tokio::test]
async fn running_jobs_are_found_and_killed() {
    let c = ctx("test.sleep", vec![Value::Int(30)]);
    let jobs = c.jobs.clone();
    let jid = c.job.jid.clone();
    let data = c.proc_data();
    let task = tokio::spawn(async move { call("test.sleep", &c).await });
    jobs.insert(&jid, data, task.abort_handle());
    let mut f = ctx("saltutil.find_job", vec![Value::str(&jid)]);
    f.jobs = jobs.clone();
    let found = call("saltutil.find_job", &f).await;
    assert_eq!(found.ret.get("fun").unwrap().as_str(), Some("test.sleep"));
    assert_eq!(found.ret.get("jid").unwrap().as_str(), Some(jid.as_str()));
    let mut k = ctx("saltutil.kill_job", vec![Value::str(&jid)]);
    k.jobs = jobs.clone();
    assert!(
        call("saltutil.kill_job", &k)
            .await
            .ret
            .as_str()
            .unwrap()
            .starts_with("Signal 9 sent")
    );
    assert!(task.await.unwrap_err().is_cancelled());
    assert_eq!(call("saltutil.find_job", &f).await.ret, Value::map());
}
