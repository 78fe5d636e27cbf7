//! `brine-key`: manage minion keys like `salt-key` (same flags, same output).

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use brine_cli::key::{LISTS, matching, print_lists, write_dropfile};
use brine_master_core::keys::{KeyDir, KeyStore};
use clap::Parser;

/// Manage minion keys in the master's pki directory (salt-key's flags).
#[derive(Debug, Parser)]
#[command(name = "brine-key", version)]
struct Args {
    /// Configuration directory (reads `master` for `pki_dir`, `cachedir`, `root_dir`, `id`,
    /// `rotate_aes_key`).
    #[arg(short = 'c', long = "config-dir", default_value = "/etc/salt")]
    config_dir: PathBuf,
    /// List all keys.
    #[arg(short = 'L', long = "list-all")]
    list_all: bool,
    /// List keys: acc/accepted, pre/un/unaccepted, rej/rejected, den/denied, all.
    #[arg(short = 'l', long = "list")]
    list: Option<String>,
    /// Accept pending keys matching the glob.
    #[arg(short = 'a', long = "accept")]
    accept: Option<String>,
    /// Accept all pending keys.
    #[arg(short = 'A', long = "accept-all")]
    accept_all: bool,
    /// Reject keys matching the glob.
    #[arg(short = 'r', long = "reject")]
    reject: Option<String>,
    /// Reject all pending keys.
    #[arg(short = 'R', long = "reject-all")]
    reject_all: bool,
    /// Delete keys matching the glob.
    #[arg(short = 'd', long = "delete")]
    delete: Option<String>,
    /// Delete all keys.
    #[arg(short = 'D', long = "delete-all")]
    delete_all: bool,
    /// Print the fingerprint of keys matching the glob.
    #[arg(short = 'f', long = "finger")]
    finger: Option<String>,
    /// Print all fingerprints.
    #[arg(short = 'F', long = "finger-all")]
    finger_all: bool,
    /// Answer yes to every question.
    #[arg(short = 'y', long = "yes")]
    yes: bool,
    /// Output format: txt (default) or json.
    #[arg(long = "out", default_value = "txt")]
    out: String,
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("brine-key: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn confirm(action: &str, ids: &[String], yes: bool) -> anyhow::Result<bool> {
    if yes {
        return Ok(true);
    }
    println!("The following keys are going to be {action}:");
    for id in ids {
        println!("{id}");
    }
    print!("Proceed? [n/Y] ");
    std::io::stdout().flush()?;
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    Ok(matches!(line.trim(), "" | "y" | "Y" | "yes"))
}

fn run(a: Args) -> anyhow::Result<ExitCode> {
    let opts = match brine_daemon::config::load(&a.config_dir, "master") {
        Ok(o) => o,
        Err(e) => {
            eprintln!("brine-key: {e}");
            return Ok(ExitCode::from(brine_daemon::EXIT_USAGE as u8));
        }
    };
    let root = PathBuf::from(opts.string("root_dir")?.unwrap_or_else(|| "/".into()));
    let under = |p: String| brine_daemon::config::under_root(&root, std::path::Path::new(&p));
    let pki = under(
        opts.string("pki_dir")?
            .unwrap_or_else(|| "/etc/salt/pki/master".into()),
    );
    let cachedir = under(
        opts.string("cachedir")?
            .unwrap_or_else(|| "/var/cache/salt/master".into()),
    );
    let rotate = opts.bool("rotate_aes_key", true)?;
    // Salt's master id: `id` from the config, else the host's name + "_master". A real
    // salt-master only honours a dropfile that carries its own id.
    let master_id = match opts.string("id")? {
        Some(id) => id,
        None => format!(
            "{}_master",
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .unwrap_or_default()
                .trim()
        ),
    };
    let ks = KeyStore::open(&pki)?;
    let json = a.out == "json";
    let mut stdout = std::io::stdout();
    let all: Vec<KeyDir> = LISTS.iter().map(|(d, _, _)| *d).collect();

    if a.list_all {
        print_lists(&mut stdout, &ks, &all, json)?;
    } else if let Some(which) = &a.list {
        let dirs = match which.as_str() {
            "acc" | "accepted" => vec![KeyDir::Accepted],
            "pre" | "un" | "unaccepted" => vec![KeyDir::Pending],
            "rej" | "rejected" => vec![KeyDir::Rejected],
            "den" | "denied" => vec![KeyDir::Denied],
            "all" => all.clone(),
            other => anyhow::bail!("unknown key list {other:?}"),
        };
        print_lists(&mut stdout, &ks, &dirs, json)?;
    } else if a.accept.is_some() || a.accept_all {
        let ids = matching(&ks, KeyDir::Pending, a.accept.as_deref().unwrap_or("*"));
        if ids.is_empty() {
            println!(
                "The key glob '{}' does not match any unaccepted keys.",
                a.accept.as_deref().unwrap_or("*")
            );
            return Ok(ExitCode::SUCCESS);
        }
        if confirm("accepted", &ids, a.yes)? {
            for id in &ids {
                ks.accept(id)?;
                println!("Key for minion {id} accepted.");
            }
        }
    } else if a.reject.is_some() || a.reject_all {
        let pattern = a.reject.as_deref().unwrap_or("*");
        let mut ids = matching(&ks, KeyDir::Pending, pattern);
        if !a.reject_all {
            ids.extend(matching(&ks, KeyDir::Accepted, pattern));
        }
        if ids.is_empty() {
            println!("The key glob '{pattern}' does not match any keys to reject.");
            return Ok(ExitCode::SUCCESS);
        }
        if confirm("rejected", &ids, a.yes)? {
            for id in &ids {
                ks.reject(id)?;
                println!("Key for minion {id} rejected.");
            }
            if rotate {
                write_dropfile(&cachedir, &master_id)?;
            }
        }
    } else if a.delete.is_some() || a.delete_all {
        let pattern = a.delete.as_deref().unwrap_or("*");
        let mut ids: Vec<String> = all
            .iter()
            .flat_map(|d| matching(&ks, *d, pattern))
            .collect();
        ids.sort();
        ids.dedup();
        if ids.is_empty() {
            println!(
                "The key glob '{pattern}' does not match any accepted, unaccepted or rejected keys."
            );
            return Ok(ExitCode::SUCCESS);
        }
        if confirm("deleted", &ids, a.yes)? {
            for id in &ids {
                ks.delete(id)?;
                println!("Key for minion {id} deleted.");
            }
            if rotate {
                write_dropfile(&cachedir, &master_id)?;
            }
        }
    } else if a.finger.is_some() || a.finger_all {
        let pattern = a.finger.as_deref().unwrap_or("*");
        for (d, name, title) in LISTS {
            let ids = matching(&ks, d, pattern);
            if ids.is_empty() {
                continue;
            }
            if !json {
                println!("{title}");
            }
            for id in ids {
                let pem = std::fs::read_to_string(pki.join(name).join(&id))?;
                let fp = brine_proto::crypt::rsa::pem_finger(
                    &pem,
                    brine_proto::crypt::rsa::MessageDigestName::Sha256,
                );
                println!("{id}:  {fp}");
            }
        }
    } else {
        print_lists(&mut stdout, &ks, &all, json)?;
    }
    Ok(ExitCode::SUCCESS)
}
