//! The embedded job cache: job loads and returns on local disk, no server needed, surviving
//! restarts, with `keep_jobs_seconds` retention.
//!
//! Layout under `cachedir/brine/jobs/<jid>/`: `load.json` (the job: function, arguments,
//! target, user, expected minions, start time; written once, atomically by rename) and
//! `returns.jsonl` (one JSON object per return, appended). Jids and minion ids are validated
//! before they become paths. Appends are buffered and flushed by [`JobCache::flush`] (the master
//! calls it several times a second and at shutdown); a torn last line after a crash is skipped
//! when read. Retention is by the jid's own timestamp, so sweeping needs no `stat`.

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::{BufRead as _, BufReader, BufWriter, Write as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use brine_proto::Value;
use brine_proto::auth::valid_minion_id;
use brine_proto::jid::Jid;
use serde_json::Value as Json;

use crate::json::{from_json, to_json};
use tracing::warn;

/// Salt's `keep_jobs_seconds` default (24 hours).
pub const DEFAULT_KEEP_JOBS: Duration = Duration::from_secs(86_400);

/// Open append handles kept at most (beyond this they are flushed and closed).
const MAX_WRITERS: usize = 256;

/// The cache.
#[derive(Debug)]
pub struct JobCache {
    dir: PathBuf,
    keep: Duration,
    writers: HashMap<String, BufWriter<File>>,
}

impl JobCache {
    /// Open (creating) the cache at `dir` (normally `cachedir/brine/jobs`).
    ///
    /// # Errors
    /// The directory cannot be created.
    pub fn open(dir: &Path, keep: Duration) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        Ok(Self {
            dir: dir.to_owned(),
            keep,
            writers: HashMap::new(),
        })
    }

    fn job_dir(&self, jid: &str) -> Option<PathBuf> {
        Jid::parse(jid).map(|j| self.dir.join(j.as_str()))
    }

    /// Store a job's load (`jid` must be a valid jid).
    ///
    /// # Errors
    /// Invalid jid or file system failure.
    pub fn save_job(&mut self, jid: &str, load: &Value) -> std::io::Result<()> {
        let dir = self
            .job_dir(jid)
            .ok_or_else(|| std::io::Error::other(format!("invalid jid {jid:?}")))?;
        std::fs::create_dir_all(&dir)?;
        let tmp = dir.join(".load.json.tmp");
        std::fs::write(&tmp, serde_json::to_vec(&to_json(load)).unwrap_or_default())?;
        std::fs::rename(&tmp, dir.join("load.json"))
    }

    /// Append one return (buffered until [`JobCache::flush`]).
    ///
    /// # Errors
    /// Invalid jid or id, or file system failure.
    pub fn add_return(&mut self, jid: &str, id: &str, data: &Value) -> std::io::Result<()> {
        if !valid_minion_id(id) {
            return Err(std::io::Error::other(format!("invalid minion id {id:?}")));
        }
        let dir = self
            .job_dir(jid)
            .ok_or_else(|| std::io::Error::other(format!("invalid jid {jid:?}")))?;
        if !self.writers.contains_key(jid) {
            if self.writers.len() >= MAX_WRITERS {
                self.flush();
                self.writers.clear();
            }
            std::fs::create_dir_all(&dir)?;
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.join("returns.jsonl"))?;
            self.writers
                .insert(jid.to_owned(), BufWriter::with_capacity(64 * 1024, f));
        }
        let line = serde_json::json!({"id": id, "data": to_json(data)});
        let w = self.writers.get_mut(jid).expect("inserted above");
        serde_json::to_writer(&mut *w, &line).map_err(std::io::Error::other)?;
        w.write_all(b"\n")
    }

    /// Push buffered returns to the file system.
    pub fn flush(&mut self) {
        for (jid, w) in &mut self.writers {
            if let Err(e) = w.flush() {
                warn!(jid, error = %e, "job cache write failed");
            }
        }
    }

    /// Flush and close the append handle of a finished job.
    pub fn close(&mut self, jid: &str) {
        if let Some(mut w) = self.writers.remove(jid)
            && let Err(e) = w.flush()
        {
            warn!(jid, error = %e, "job cache write failed");
        }
    }

    /// A job's load, if stored.
    pub fn job(&self, jid: &str) -> Option<Value> {
        let p = self.job_dir(jid)?.join("load.json");
        serde_json::from_slice::<Json>(&std::fs::read(p).ok()?)
            .ok()
            .map(|j| from_json(&j))
    }

    /// A job's returns by minion id (the last one wins if a minion returned twice).
    pub fn returns(&self, jid: &str) -> BTreeMap<String, Value> {
        let mut out = BTreeMap::new();
        let Some(dir) = self.job_dir(jid) else {
            return out;
        };
        let Ok(f) = File::open(dir.join("returns.jsonl")) else {
            return out;
        };
        for line in BufReader::new(f).lines() {
            let Ok(line) = line else { break };
            // A torn last line (crash mid-write) is skipped.
            let Ok(Json::Object(mut o)) = serde_json::from_str::<Json>(&line) else {
                continue;
            };
            if let (Some(Json::String(id)), Some(data)) = (o.remove("id"), o.remove("data")) {
                out.insert(id, from_json(&data));
            }
        }
        out
    }

    /// Jobs whose load or returns changed at or after `since` (file modification times),
    /// oldest first.
    pub fn changed_since(&self, since: std::time::SystemTime) -> Vec<String> {
        let changed = |dir: &Path| {
            ["load.json", "returns.jsonl"].iter().any(|f| {
                std::fs::metadata(dir.join(f))
                    .and_then(|m| m.modified())
                    .is_ok_and(|t| t >= since)
            })
        };
        let mut jids: Vec<String> = std::fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| Jid::parse(n).is_some() && changed(&self.dir.join(n)))
            .collect();
        jids.sort();
        jids
    }

    /// Every stored job with a load, oldest first.
    pub fn list(&self) -> Vec<(String, Value)> {
        let mut jids: Vec<String> = std::fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| Jid::parse(n).is_some())
            .collect();
        jids.sort();
        jids.into_iter()
            .filter_map(|j| self.job(&j).map(|l| (j, l)))
            .collect()
    }

    /// Remove jobs older than `keep_jobs_seconds` at `now_micros`; returns how many.
    pub fn sweep(&mut self, now_micros: u64) -> usize {
        let cutoff = Jid::from_unix_micros(now_micros.saturating_sub(self.keep.as_micros() as u64));
        let mut removed = 0;
        for e in std::fs::read_dir(&self.dir).into_iter().flatten().flatten() {
            let Ok(name) = e.file_name().into_string() else {
                continue;
            };
            let Some(jid) = Jid::parse(&name) else {
                continue;
            };
            // Compare the 20-digit timestamps.
            if jid.as_str()[..20] < cutoff.as_str()[..20] {
                self.writers.remove(jid.as_str());
                if std::fs::remove_dir_all(e.path()).is_ok() {
                    removed += 1;
                }
            }
        }
        removed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_returns_torn_lines_and_retention() {
        let d = tempfile::tempdir().unwrap();
        let mut c = JobCache::open(d.path(), Duration::from_secs(3600)).unwrap();
        let old = Jid::from_unix_micros(1_000_000_000_000_000);
        let new = Jid::from_unix_micros(1_000_000_000_000_000 + 7_200_000_000);
        for j in [&old, &new] {
            c.save_job(j.as_str(), &Value::map().with("fun", "test.ping"))
                .unwrap();
            c.add_return(j.as_str(), "m1", &Value::map().with("return", true))
                .unwrap();
        }
        assert!(c.add_return(old.as_str(), "../x", &Value::Nil).is_err());
        assert!(c.save_job("../../etc", &Value::Nil).is_err());
        c.flush();
        // A torn line is skipped; a second return from the same minion replaces the first.
        let p = d.path().join(new.as_str()).join("returns.jsonl");
        let mut f = OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(b"{\"id\": \"m1\", \"data\": 2}\n{\"id\": \"m2\", \"da")
            .unwrap();
        let r = c.returns(new.as_str());
        assert_eq!(r.len(), 1);
        assert_eq!(r["m1"], Value::Int(2));
        assert_eq!(c.list().len(), 2);
        // Reopened (a restart), then swept one hour after `new`: only `old` goes.
        drop(c);
        let mut c = JobCache::open(d.path(), Duration::from_secs(3600)).unwrap();
        assert_eq!(c.sweep(1_000_000_000_000_000 + 10_800_000_000 - 1), 1);
        assert_eq!(c.list().len(), 1);
        assert!(c.job(old.as_str()).is_none());
    }
}
