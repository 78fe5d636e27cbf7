//! The return spool: returns that could not be delivered (the master died mid-job) are kept on
//! disk, bounded in size, and delivered to the next live master. Salt loses them (salt#60824).
//!
//! One file per return under `cachedir/brine/spool/`, written to a temporary name, synced and
//! renamed, so a crash leaves either a whole entry or none. Entries are the return load in
//! Salt's wire msgpack.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use brine_proto::{Value, codec};
use tracing::{error, warn};

/// A directory of undelivered returns.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    seq: AtomicU64,
}

impl Spool {
    /// A spool in `cachedir/brine/spool`, holding at most `max_bytes`.
    pub fn new(cachedir: &Path, max_bytes: u64) -> Self {
        Self {
            dir: cachedir.join("brine").join("spool"),
            max_bytes,
            seq: AtomicU64::new(0),
        }
    }

    /// Keep `load` for later delivery. When the spool is full the oldest entries are dropped
    /// (logged), so the newest results survive.
    pub fn push(&self, jid: &str, load: &Value) {
        self.push_to(jid, "", load);
    }

    /// As [`Self::push`], remembering `dest` (the master it was for, `host:port`) in the
    /// entry's name, for [`Self::dest_of`].
    pub fn push_to(&self, jid: &str, dest: &str, load: &Value) {
        let bytes = codec::encode_wire(load);
        if bytes.len() as u64 > self.max_bytes {
            error!(
                jid,
                size = bytes.len(),
                "return larger than the whole spool; dropped"
            );
            return;
        }
        if let Err(e) = std::fs::create_dir_all(&self.dir) {
            error!(jid, error = %e, "cannot create the return spool; return lost");
            return;
        }
        self.make_room(bytes.len() as u64);
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        let safe_jid: String = jid
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .take(40)
            .collect();
        let to = if dest.is_empty() {
            String::new()
        } else {
            let hex: String = dest.bytes().take(200).map(|b| format!("{b:02x}")).collect();
            format!("@{hex}")
        };
        let name = format!(
            "{}-{safe_jid}-{}-{n}{to}.ret",
            crate::link::unix_micros(),
            std::process::id()
        );
        let tmp = self.dir.join(format!(".{name}.tmp"));
        let write = || -> std::io::Result<()> {
            use std::io::Write as _;
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            std::fs::rename(&tmp, self.dir.join(&name))
        };
        match write() {
            Ok(()) => warn!(jid, "return spooled for the next live master"),
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                error!(jid, error = %e, "cannot spool return; return lost");
            }
        }
    }

    /// Spooled entries, oldest first.
    pub fn entries(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(&self.dir)
            .map(|rd| {
                rd.filter_map(Result::ok)
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|x| x == "ret"))
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    /// Read one entry; a corrupt entry is removed (and logged).
    pub fn read(&self, path: &Path) -> Option<Value> {
        let data = std::fs::read(path).ok()?;
        match codec::decode(&data) {
            Ok(v) => Some(v),
            Err(e) => {
                error!(path = %path.display(), error = %e, "corrupt spool entry removed");
                let _ = std::fs::remove_file(path);
                None
            }
        }
    }

    /// The master an entry was spooled for ([`Self::push_to`]), if it says.
    pub fn dest_of(path: &Path) -> Option<String> {
        let stem = path.file_stem()?.to_str()?;
        let (_, hex) = stem.rsplit_once('@')?;
        if hex.len() % 2 != 0 {
            return None;
        }
        let bytes: Option<Vec<u8>> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
            .collect();
        String::from_utf8(bytes?).ok()
    }

    /// Forget a delivered entry.
    pub fn remove(&self, path: &Path) {
        let _ = std::fs::remove_file(path);
    }

    fn make_room(&self, incoming: u64) {
        let entries = self.entries();
        let mut sizes: Vec<(PathBuf, u64)> = entries
            .into_iter()
            .map(|p| {
                let s = std::fs::metadata(&p).map_or(0, |m| m.len());
                (p, s)
            })
            .collect();
        let mut total: u64 = sizes.iter().map(|(_, s)| s).sum();
        sizes.reverse();
        while total + incoming > self.max_bytes {
            let Some((p, s)) = sizes.pop() else { break };
            error!(path = %p.display(), "return spool full; oldest return dropped");
            let _ = std::fs::remove_file(&p);
            total -= s;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_remember_the_master_they_were_for() {
        let d = tempfile::tempdir().unwrap();
        let s = Spool::new(d.path(), 1 << 20);
        let load = Value::map().with("cmd", "_syndic_return");
        s.push_to("1", "mom-b.example:4506", &load);
        s.push("2", &load);
        let e = s.entries();
        assert_eq!(Spool::dest_of(&e[0]).as_deref(), Some("mom-b.example:4506"));
        assert_eq!(Spool::dest_of(&e[1]), None);
        assert_eq!(s.read(&e[0]).unwrap(), load);
    }

    #[test]
    fn push_read_remove_and_bound() {
        let d = tempfile::tempdir().unwrap();
        let s = Spool::new(d.path(), 200);
        let load = |i: i64| {
            Value::map()
                .with("cmd", "_return")
                .with("jid", "20261127015650747396")
                .with("n", i)
        };
        s.push("20261127015650747396", &load(1));
        s.push("20261127015650747396", &load(2));
        let e = s.entries();
        assert_eq!(e.len(), 2);
        assert_eq!(s.read(&e[0]).unwrap(), load(1), "oldest first");
        s.remove(&e[0]);
        assert_eq!(s.entries().len(), 1);
        for i in 3..20 {
            s.push("20261127015650747396", &load(i));
        }
        let total: u64 = s
            .entries()
            .iter()
            .map(|p| std::fs::metadata(p).unwrap().len())
            .sum();
        assert!(total <= 200, "bounded: {total}");
        assert_eq!(
            s.read(s.entries().last().unwrap()).unwrap(),
            load(19),
            "newest kept"
        );
        std::fs::write(d.path().join("brine/spool/0-bad.ret"), b"\xc1").unwrap();
        assert!(s.read(&d.path().join("brine/spool/0-bad.ret")).is_none());
        assert!(
            !d.path().join("brine/spool/0-bad.ret").exists(),
            "corrupt entries are removed"
        );
    }
}
