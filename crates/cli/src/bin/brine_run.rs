//! `brine-run FUN [ARG...] [key=value...]`: run a runner on the master (salt-run's habits):
//! `jobs.lookup_jid`, `jobs.list_jobs`, `jobs.active`, `manage.up`, `manage.down`,
//! `manage.status`.

use std::process::ExitCode;

use brine_cli::client::{Api, ConnectArgs};
use brine_cli::output;
use clap::Parser;
use serde_json::json;

/// Run a runner on the brine master.
#[derive(Debug, Parser)]
#[command(name = "brine-run", version)]
struct Args {
    #[command(flatten)]
    conn: ConnectArgs,
    /// Outputter: nested, json, yaml, txt, raw, quiet.
    #[arg(long = "out", default_value = "nested")]
    out: String,
    /// Runner function, e.g. jobs.lookup_jid.
    fun: String,
    /// Arguments; `key=value` ones are keyword arguments.
    args: Vec<String>,
}

fn main() -> ExitCode {
    let a = Args::parse();
    if let Err(e) = output::check(&a.out) {
        eprintln!("brine-run: {e}");
        return ExitCode::from(64);
    }
    let api = match Api::connect(&a.conn) {
        Ok(api) => api,
        Err(e) => {
            eprintln!("ERROR: {e}");
            return ExitCode::from(2);
        }
    };
    let (args, kwarg) = brine_cli::args::parse(&a.args);
    let chunk = json!([{"client": "runner", "fun": a.fun, "arg": args, "kwarg": kwarg}]);
    match api.post("/", &chunk) {
        Ok(r) => {
            let v = &r["return"][0];
            let text = output::render(&a.out, v);
            if !text.is_empty() {
                println!("{text}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ERROR: {e}");
            ExitCode::FAILURE
        }
    }
}
