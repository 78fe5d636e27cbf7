//! `sys.*`.

use brine_proto::Value;

use super::{FUNCTIONS, JobCtx, Outcome, as_text};
use crate::target_glob;

pub(super) fn list_functions(ctx: &JobCtx) -> Outcome {
    let pats: Vec<String> = ctx.args.iter().map(as_text).collect();
    let funs = FUNCTIONS
        .iter()
        .filter(|f| pats.is_empty() || pats.iter().any(|p| matches_module(p, f)))
        .map(Value::str)
        .collect();
    Outcome::ok(Value::Array(funs))
}

fn matches_module(pat: &str, fun: &str) -> bool {
    if pat.contains('*') || pat.contains('?') || pat.contains('[') {
        return target_glob(pat, fun);
    }
    fun == pat || fun.strip_prefix(pat).is_some_and(|r| r.starts_with('.'))
}

fn doc_of(fun: &str) -> &'static str {
    match fun {
        "test.ping" => {
            "Used to make sure the minion is up and responding. Not an ICMP ping.\n\nReturns ``True``."
        }
        "test.echo" => "Return a string - used for testing the connection",
        "test.arg" => {
            "Print out the data passed into the function ``*args`` and ``kwargs``, this is used to both test the publication data and cli argument passing, but also to display the information available within the publication data."
        }
        "test.version" => "Return the version of salt on the minion",
        "test.sleep" => {
            "Instruct the minion to initiate a process that will sleep for a given period of time."
        }
        "test.true" => "Always return ``True``",
        "test.false" => "Always return ``False``",
        "test.retcode" => "Test that the returncode system is functioning correctly",
        "cmd.run" => "Execute the passed command and return the output as a string",
        "cmd.shell" => {
            "Execute the passed command and return the output as a string, using the shell"
        }
        "cmd.run_all" => {
            "Execute the passed command and return a dict of return data (pid, retcode, stdout, stderr)"
        }
        "cmd.run_stdout" => "Execute a command, and only return the standard out",
        "cmd.run_stderr" => "Execute a command and only return the standard error",
        "cmd.retcode" => "Execute a shell command and return the command's return code.",
        "cmd.script" => {
            "Run a script from a local path (or file://) with optional arguments; returns pid, retcode, stdout, stderr"
        }
        "grains.items" => "Return all of the minion's grains",
        "grains.item" => "Return one or more grains",
        "grains.get" => {
            "Attempt to retrieve the named value from grains, if the named value is not available return the passed default. The default return is an empty string. Nested keys are separated by ``:``."
        }
        "grains.ls" => "Return a list of all available grains",
        "saltutil.find_job" => "Return the data for a specific job id that is currently running.",
        "saltutil.running" => "Return the data on all running salt processes on the minion",
        "saltutil.kill_job" => "Sends a kill signal (SIGKILL 9) to the named salt job's process",
        "saltutil.sync_all" => {
            "Sync down all of the dynamic modules from the file server (brine: nothing to sync)"
        }
        "sys.list_functions" => {
            "List the functions for all modules. Optionally, specify a module or modules from which to list."
        }
        "sys.doc" => {
            "Return the docstrings for all modules. Optionally, specify a module or a function to narrow the selection."
        }
        _ => "",
    }
}

pub(super) fn doc(ctx: &JobCtx) -> Outcome {
    let pats: Vec<String> = ctx.args.iter().map(as_text).collect();
    let mut out = Value::map();
    for f in FUNCTIONS {
        if pats.is_empty() || pats.iter().any(|p| matches_module(p, f)) {
            out.insert(f, doc_of(f));
        }
    }
    Outcome::nested(out)
}
