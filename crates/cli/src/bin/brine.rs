//! `brine TARGET FUNCTION [ARG...]`: run a function on minions, with salt's flags and output.
//!
//! Exit codes follow salt's: 0 when every targeted minion returned with retcode 0; 1 when a
//! minion returned a non-zero retcode or did not return (`ERROR: Minions returned with non-zero
//! exit code`); 2 when no minion matched or nothing came back (`ERROR: No return received`) or
//! the API refused the call. `--retcode-passthrough` exits with the highest minion retcode instead.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use brine_cli::client::{Api, ConnectArgs};
use brine_cli::output;
use clap::Parser;
use serde_json::{Map, Value as Json, json};

/// Run FUNCTION on the minions matching TARGET (salt's flags).
#[derive(Debug, Parser)]
#[command(name = "brine", version)]
#[allow(clippy::struct_excessive_bools)]
struct Args {
    #[command(flatten)]
    conn: ConnectArgs,
    /// Target is a regular expression.
    #[arg(short = 'E', long = "pcre")]
    pcre: bool,
    /// Target is a comma-separated list of ids.
    #[arg(short = 'L', long = "list")]
    list: bool,
    /// Target is a grain `key:glob`.
    #[arg(short = 'G', long = "grain")]
    grain: bool,
    /// Target is a grain `key:regex`.
    #[arg(long = "grain-pcre")]
    grain_pcre: bool,
    /// Target is a pillar `key:glob`.
    #[arg(short = 'I', long = "pillar")]
    pillar: bool,
    /// Target is an IP address or CIDR subnet.
    #[arg(short = 'S', long = "ipcidr")]
    ipcidr: bool,
    /// Target is a compound expression.
    #[arg(short = 'C', long = "compound")]
    compound: bool,
    /// Target is a nodegroup from the master config.
    #[arg(short = 'N', long = "nodegroup")]
    nodegroup: bool,
    /// Seconds to wait before asking silent minions whether they still run the job.
    #[arg(short = 't', long = "timeout")]
    timeout: Option<u64>,
    /// Publish and print the job id without waiting.
    #[arg(long = "async")]
    run_async: bool,
    /// Outputter: nested, json, yaml, txt, raw, quiet.
    #[arg(long = "out", visible_alias = "output")]
    out: Option<String>,
    /// Write the output to this file instead of stdout.
    #[arg(long = "out-file")]
    out_file: Option<PathBuf>,
    /// Print all returns at once, when the job is done.
    #[arg(short = 's', long = "static")]
    static_out: bool,
    /// Run on this many minions (or this percentage, `10%`) at a time.
    #[arg(short = 'b', long = "batch-size", visible_alias = "batch")]
    batch: Option<String>,
    /// Show a progress bar on stderr.
    #[arg(short = 'p', long = "progress")]
    progress: bool,
    /// Exit with the highest retcode any minion returned.
    #[arg(long = "retcode-passthrough")]
    retcode_passthrough: bool,
    /// Do not list minions that did not return.
    #[arg(long = "hide-timeout")]
    hide_timeout: bool,
    /// Print the job id before the returns.
    #[arg(short = 'v', long = "verbose")]
    verbose: bool,
    /// Print `jid: JID` before the returns.
    #[arg(long = "show-jid")]
    show_jid: bool,
    /// Read a password on stdin and print its salted hash for the external_auth users file.
    #[arg(long = "hash-password", exclusive = true)]
    hash_password: bool,
    /// TARGET FUNCTION [ARG...] (`key=value` arguments are keyword arguments).
    rest: Vec<String>,
}

struct Out {
    file: Option<std::fs::File>,
    fmt: String,
}

impl Out {
    fn print(&mut self, v: &Json) {
        let text = output::render(&self.fmt, v);
        self.line(&text);
    }

    fn line(&mut self, text: &str) {
        if text.is_empty() {
            return;
        }
        match &mut self.file {
            Some(f) => {
                let _ = writeln!(f, "{text}");
            }
            None => println!("{text}"),
        }
    }
}

fn tgt_type(a: &Args) -> &'static str {
    [
        (a.pcre, "pcre"),
        (a.list, "list"),
        (a.grain, "grain"),
        (a.grain_pcre, "grain_pcre"),
        (a.pillar, "pillar"),
        (a.ipcidr, "ipcidr"),
        (a.compound, "compound"),
        (a.nodegroup, "nodegroup"),
    ]
    .into_iter()
    .find(|(on, _)| *on)
    .map_or("glob", |(_, t)| t)
}

/// Salt's CLI argument parsing: `key=value` (key an identifier) is a keyword argument.
struct JobResult {
    returns: Vec<(String, Json)>,
    missing: BTreeMap<String, String>,
}

/// How long following a job goes on through failed requests (master unreachable, 502/503/504)
/// before the CLI gives up: long enough for a master's restart or a Redis failover.
const FOLLOW_RETRY: Duration = Duration::from_secs(20);

/// Follow `/jobs/<jid>` until final, calling `each` for every new return: long polls that
/// give only the returns not seen yet (`since`/`wait`, each return moves once); against an API
/// without them (a salt-api), re-reads of the whole job.
fn wait(
    api: &Api,
    jid: &str,
    expected: usize,
    progress: bool,
    mut each: impl FnMut(&str, &Json),
) -> Result<JobResult, String> {
    let start = Instant::now();
    let mut seen = BTreeSet::new();
    let mut returns = Vec::new();
    let mut cursor: Option<u64> = Some(0);
    let mut failing_since: Option<Instant> = None;
    loop {
        let path = match cursor {
            Some(c) => format!("/jobs/{jid}?since={c}&wait=10"),
            None => format!("/jobs/{jid}"),
        };
        let r = match api.get(&path) {
            Ok(r) => {
                failing_since = None;
                r
            }
            // The master went away under us (restarted, or its Redis is failing over; behind
            // a balancer the next request may reach another master): the job goes on without
            // us, so try again for a while before giving up on following it.
            Err(e) if e.is_transient() => {
                let since = *failing_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= FOLLOW_RETRY {
                    return Err(e.to_string());
                }
                std::thread::sleep(Duration::from_millis(500));
                continue;
            }
            Err(e) => return Err(e.to_string()),
        };
        let info = &r["info"][0];
        cursor = cursor.and_then(|_| info["Cursor"].as_u64());
        if let Some(res) = info["Result"].as_object() {
            for (id, v) in res {
                if seen.insert(id.clone()) {
                    each(id, v);
                    returns.push((id.clone(), v.clone()));
                }
            }
        }
        if progress {
            let n = seen.len();
            let width = 30;
            let filled = (n * width).checked_div(expected).unwrap_or(width);
            eprint!(
                "\r{:3}% |{}{}| Elapsed Time: {:.1}s Returns: [{n}/{expected}]",
                (n * 100).checked_div(expected).unwrap_or(100),
                "#".repeat(filled.min(width)),
                " ".repeat(width - filled.min(width)),
                start.elapsed().as_secs_f64()
            );
        }
        if info["Finished"] == json!(true) {
            if progress {
                eprintln!();
            }
            let missing = info["Missing"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_owned()))
                        .collect()
                })
                .unwrap_or_default();
            return Ok(JobResult { returns, missing });
        }
        if cursor.is_none() {
            let pause = if start.elapsed() < Duration::from_secs(2) {
                50
            } else {
                250
            };
            std::thread::sleep(Duration::from_millis(pause));
        }
    }
}

/// `BRINE_CLI_STATS=1`: what the command cost in API traffic, on stderr at the end.
struct PrintStats<'a>(&'a Api);

impl Drop for PrintStats<'_> {
    fn drop(&mut self) {
        if brine_cli::client::stats_wanted() {
            let (n, bytes) = self.0.stats();
            eprintln!("brine: {n} API requests, {bytes} bytes received");
        }
    }
}

fn retcode_of(v: &Json) -> i64 {
    v.get("retcode").and_then(Json::as_i64).unwrap_or(0)
}

fn main() -> ExitCode {
    let a = Args::parse();
    if a.hash_password {
        let mut pw = String::new();
        let _ = std::io::stdin().read_line(&mut pw);
        return match brine_master_core::eauth::hash_password(pw.trim_end_matches(['\r', '\n'])) {
            Ok(h) => {
                println!("{h}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("ERROR: {e}");
                ExitCode::FAILURE
            }
        };
    }
    match run(&a) {
        Ok(c) => ExitCode::from(c),
        Err(e) => {
            eprintln!("ERROR: {e}");
            ExitCode::from(2)
        }
    }
}

fn run(a: &Args) -> Result<u8, String> {
    if a.rest.len() < 2 {
        return Err("usage: brine [options] TARGET FUNCTION [ARG...]".into());
    }
    let fmt = a.out.clone().unwrap_or_else(|| "nested".into());
    output::check(&fmt)?;
    let file = match &a.out_file {
        Some(p) => Some(std::fs::File::create(p).map_err(|e| format!("{}: {e}", p.display()))?),
        None => None,
    };
    let mut out = Out { file, fmt };
    let api = Api::connect(&a.conn)?;
    let _stats = PrintStats(&api);
    let ttype = tgt_type(a);
    let tgt = if ttype == "list" {
        json!(
            a.rest[0]
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>()
        )
    } else {
        json!(a.rest[0])
    };
    let fun = &a.rest[1];
    let (args, kwarg) = brine_cli::args::parse(&a.rest[2..]);
    if let Some(b) = &a.batch {
        return batch(a, &api, &mut out, &tgt, ttype, fun, &args, &kwarg, b);
    }
    let r = api
        .post(
            "/",
            &json!([{"client": "local_async", "tgt": tgt, "tgt_type": ttype, "fun": fun,
                     "arg": args, "kwarg": kwarg, "timeout": a.timeout}]),
        )
        .map_err(|e| e.to_string())?;
    let jid = r["return"][0]["jid"].as_str().unwrap_or("").to_owned();
    let minions = r["return"][0]["minions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if jid.is_empty() {
        println!("No minions matched the target. No command was sent, no jid was assigned.");
        if a.run_async {
            println!("Executed command with job ID: 0");
            return Ok(0);
        }
        eprintln!("ERROR: No return received");
        return Ok(2);
    }
    if a.run_async {
        println!("Executed command with job ID: {jid}");
        return Ok(0);
    }
    if a.verbose {
        let msg = format!("Executing job with jid {jid}");
        println!("{msg}\n{}\n", "-".repeat(msg.len()));
    } else if a.show_jid {
        println!("jid: {jid}");
    }
    let stream = !a.static_out;
    let res = wait(&api, &jid, minions.len(), a.progress, |id, v| {
        if stream {
            out.print(&json!({ id: v.get("return").cloned().unwrap_or(Json::Null) }));
        }
    })?;
    if a.static_out {
        let m: Map<String, Json> = res
            .returns
            .iter()
            .map(|(id, v)| (id.clone(), v.get("return").cloned().unwrap_or(Json::Null)))
            .collect();
        if m.is_empty() {
            eprintln!("ERROR: No return received");
            return Ok(2);
        }
        out.print(&Json::Object(m));
    } else if !a.hide_timeout {
        for (id, why) in &res.missing {
            let msg = if why.contains("[No response]") {
                format!(
                    "{why}\nThe minions may not have all finished running and any remaining minions will return upon completion. To look up the return data for this job later, run the following command:\n\nbrine-run jobs.lookup_jid {jid}"
                )
            } else {
                why.clone()
            };
            if out.fmt == "nested" {
                let body: Vec<String> = msg.split('\n').map(|l| format!("    {l}")).collect();
                out.line(&format!("{id}:\n{}", body.join("\n")));
            } else {
                out.print(&json!({ id: msg }));
            }
        }
    }
    let mut max_rc = res
        .returns
        .iter()
        .map(|(_, v)| retcode_of(v))
        .max()
        .unwrap_or(0);
    if !a.static_out && !a.hide_timeout && !res.missing.is_empty() {
        max_rc = max_rc.max(1);
    }
    if res.returns.is_empty() && res.missing.is_empty() {
        eprintln!("ERROR: No return received");
        return Ok(2);
    }
    if max_rc != 0 {
        if a.retcode_passthrough {
            return Ok(u8::try_from(max_rc.clamp(1, 255)).unwrap_or(1));
        }
        eprintln!("ERROR: Minions returned with non-zero exit code");
        return Ok(1);
    }
    Ok(0)
}

fn batch_size(spec: &str, n: usize) -> Result<usize, String> {
    let size = if let Some(p) = spec.strip_suffix('%') {
        let p: f64 = p.parse().map_err(|_| format!("bad batch size {spec:?}"))?;
        (n as f64 * p / 100.0).ceil() as usize
    } else {
        spec.parse()
            .map_err(|_| format!("bad batch size {spec:?}"))?
    };
    Ok(size.max(1))
}

#[allow(clippy::too_many_arguments)]
fn batch(
    a: &Args,
    api: &Api,
    out: &mut Out,
    tgt: &Json,
    ttype: &str,
    fun: &str,
    args: &[Json],
    kwarg: &Map<String, Json>,
    spec: &str,
) -> Result<u8, String> {
    // Salt's batch: ping the target first, then run on the responders a batch at a time.
    let r = api
        .post(
            "/",
            &json!([{"client": "local_async", "tgt": tgt, "tgt_type": ttype, "fun": "test.ping",
                     "timeout": a.timeout}]),
        )
        .map_err(|e| e.to_string())?;
    let jid = r["return"][0]["jid"].as_str().unwrap_or("").to_owned();
    if jid.is_empty() {
        println!("No minions matched the target. No command was sent, no jid was assigned.");
        eprintln!("ERROR: No return received");
        return Ok(2);
    }
    let pinged = wait(api, &jid, 0, false, |_, _| {})?;
    for id in pinged.missing.keys() {
        println!("Minion {id} did not respond. No job will be sent.");
    }
    let mut up: Vec<String> = pinged.returns.into_iter().map(|(id, _)| id).collect();
    up.sort();
    if up.is_empty() {
        eprintln!("ERROR: No return received");
        return Ok(2);
    }
    let size = batch_size(spec, up.len())?;
    let mut max_rc = 0;
    for chunk in up.chunks(size) {
        let names: Vec<String> = chunk.iter().map(|s| format!("'{s}'")).collect();
        println!("\nExecuting run on [{}]\n", names.join(", "));
        let r = api
            .post(
                "/",
                &json!([{"client": "local_async", "tgt": chunk, "tgt_type": "list", "fun": fun,
                         "arg": args, "kwarg": kwarg, "timeout": a.timeout}]),
            )
            .map_err(|e| e.to_string())?;
        let jid = r["return"][0]["jid"].as_str().unwrap_or("").to_owned();
        if jid.is_empty() {
            continue;
        }
        let res = wait(api, &jid, chunk.len(), a.progress, |id, v| {
            out.print(&json!({
                "jid": jid,
                id: v.get("return").cloned().unwrap_or(Json::Null),
                "retcode": retcode_of(v),
            }));
        })?;
        for (_, v) in &res.returns {
            max_rc = max_rc.max(retcode_of(v));
        }
        for id in res.missing.keys() {
            println!("Minion '{id}' failed to respond to job sent");
            max_rc = max_rc.max(1);
        }
    }
    Ok(u8::try_from(max_rc.clamp(0, 255)).unwrap_or(1))
}
