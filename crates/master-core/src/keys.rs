//! The master's pki directory, laid out like Salt's: `minions/` (accepted), `minions_pre/`
//! (pending), `minions_rejected/`, `minions_denied/`, one file per minion id holding its public
//! key. An existing Salt pki directory works unchanged.
//!
//! Every id is checked with [`valid_minion_id`] before it becomes a path, so hostile ids
//! (`../../etc/x`) never touch the file system.

use std::path::{Path, PathBuf};

use brine_proto::auth::{KeyAction, KeyState, valid_minion_id};
use brine_proto::crypt::{PublicKey, clean_key};

/// Why a key operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The id cannot be a file name.
    #[error("invalid minion id {0:?}")]
    InvalidId(String),
    /// File system failure.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// No key for that id in the expected state.
    #[error("no {state} key for {id:?}")]
    NotFound {
        /// Id.
        id: String,
        /// Which directory was expected to hold it.
        state: &'static str,
    },
}

/// The four key directories.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyDir {
    /// `minions/`.
    Accepted,
    /// `minions_pre/`.
    Pending,
    /// `minions_rejected/`.
    Rejected,
    /// `minions_denied/`.
    Denied,
}

impl KeyDir {
    fn name(self) -> &'static str {
        match self {
            Self::Accepted => "minions",
            Self::Pending => "minions_pre",
            Self::Rejected => "minions_rejected",
            Self::Denied => "minions_denied",
        }
    }
}

/// A Salt master pki directory.
#[derive(Debug, Clone)]
pub struct KeyStore {
    dir: PathBuf,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> KeyError + '_ {
    move |source| KeyError::Io {
        path: path.to_owned(),
        source,
    }
}

impl KeyStore {
    /// Open (creating the directories if needed) the pki directory `dir`.
    ///
    /// # Errors
    /// [`KeyError::Io`].
    pub fn open(dir: &Path) -> Result<Self, KeyError> {
        {
            // The pki directory holds the master's private key: owner-only, as Salt keeps it
            // (created 0700; an existing one that is not 0700 or 0750 is set to 0700).
            use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
            if !dir.exists() {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(dir)
                    .map_err(io(dir))?;
            }
            let mode = std::fs::metadata(dir)
                .map_err(io(dir))?
                .permissions()
                .mode()
                & 0o777;
            if mode != 0o700 && mode != 0o750 {
                std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                    .map_err(io(dir))?;
                tracing::info!(path = %dir.display(), old_mode = format!("{mode:o}"), "pki directory set to mode 700");
            }
        }
        for d in [
            KeyDir::Accepted,
            KeyDir::Pending,
            KeyDir::Rejected,
            KeyDir::Denied,
        ] {
            let p = dir.join(d.name());
            std::fs::create_dir_all(&p).map_err(io(&p))?;
        }
        Ok(Self {
            dir: dir.to_owned(),
        })
    }

    /// The pki directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, d: KeyDir, id: &str) -> Result<PathBuf, KeyError> {
        if !valid_minion_id(id) {
            return Err(KeyError::InvalidId(id.to_owned()));
        }
        Ok(self.dir.join(d.name()).join(id))
    }

    /// The key `id` holds in directory `d` (`None`: no such file).
    ///
    /// # Errors
    /// [`KeyError`] for an invalid id or a read failure.
    pub fn read(&self, d: KeyDir, id: &str) -> Result<Option<String>, KeyError> {
        let p = self.path(d, id)?;
        match std::fs::read_to_string(&p) {
            Ok(s) => Ok(Some(s)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(KeyError::Io { path: p, source: e }),
        }
    }

    /// Write a key file whole or not at all: into a temporary file in the pki directory (not a
    /// key directory, so no listing ever shows it), then renamed over the key's path. Another
    /// handler reading the key meanwhile sees no file or the whole key.
    fn write(&self, d: KeyDir, id: &str, pem: &str) -> Result<(), KeyError> {
        static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let p = self.path(d, id)?;
        let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = self
            .dir
            .join(format!(".key-{}-{n}.tmp", std::process::id()));
        std::fs::write(&tmp, pem).map_err(io(&tmp))?;
        std::fs::rename(&tmp, &p).map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            io(&p)(e)
        })
    }

    /// What the directories hold for `id`, in Salt's order of precedence.
    ///
    /// # Errors
    /// [`KeyError::InvalidId`] for ids that cannot be file names.
    pub fn state(&self, id: &str) -> Result<KeyState, KeyError> {
        if self.path(KeyDir::Rejected, id)?.exists() {
            return Ok(KeyState::Rejected);
        }
        if let Some(k) = self.read(KeyDir::Accepted, id)? {
            return Ok(KeyState::Accepted(k));
        }
        if let Some(k) = self.read(KeyDir::Pending, id)? {
            return Ok(KeyState::Pending(k));
        }
        Ok(KeyState::Unknown)
    }

    /// The accepted public key of `id`.
    ///
    /// # Errors
    /// [`KeyError`] if the id is invalid or the file unreadable.
    pub fn accepted_key(&self, id: &str) -> Result<Option<PublicKey>, KeyError> {
        Ok(self
            .read(KeyDir::Accepted, id)?
            .and_then(|pem| PublicKey::from_pem(clean_key(&pem).as_bytes()).ok()))
    }

    /// What identifies the accepted key file of `id` as it is now (inode, length, change
    /// time): a cached parse of it stays valid while this is unchanged. `None`: not accepted.
    pub fn accepted_stamp(&self, id: &str) -> Option<(u64, u64, i64, i64)> {
        use std::os::unix::fs::MetadataExt as _;
        let m = std::fs::metadata(self.path(KeyDir::Accepted, id).ok()?).ok()?;
        m.is_file()
            .then(|| (m.ino(), m.len(), m.ctime(), m.ctime_nsec()))
    }

    /// Whether `id` has an accepted key (a file check, no parsing).
    pub fn is_accepted(&self, id: &str) -> bool {
        self.path(KeyDir::Accepted, id).is_ok_and(|p| p.is_file())
    }

    /// Carry out what `decide_auth` asked for.
    ///
    /// # Errors
    /// [`KeyError`] on file system failures.
    pub fn apply(&self, id: &str, action: &KeyAction) -> Result<(), KeyError> {
        match action {
            KeyAction::WriteAccepted(pem) => self.write(KeyDir::Accepted, id, pem),
            KeyAction::WritePending(pem) => self.write(KeyDir::Pending, id, pem),
            KeyAction::WriteRejected(pem) => self.write(KeyDir::Rejected, id, pem),
            KeyAction::WriteDenied(pem) => self.write(KeyDir::Denied, id, pem),
            KeyAction::MovePendingToRejected => self.moved(KeyDir::Pending, KeyDir::Rejected, id),
            KeyAction::RemovePending => self.remove(KeyDir::Pending, id),
        }
    }

    /// Remove `id`'s key from directory `d` (absent already is fine).
    ///
    /// # Errors
    /// [`KeyError`] for an invalid id or a removal failure.
    pub fn remove(&self, d: KeyDir, id: &str) -> Result<(), KeyError> {
        let p = self.path(d, id)?;
        match std::fs::remove_file(&p) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(KeyError::Io { path: p, source: e })
            }
            _ => Ok(()),
        }
    }

    fn moved(&self, from: KeyDir, to: KeyDir, id: &str) -> Result<(), KeyError> {
        let src = self.path(from, id)?;
        if !src.exists() {
            return Err(KeyError::NotFound {
                id: id.to_owned(),
                state: from.name(),
            });
        }
        let dst = self.path(to, id)?;
        std::fs::rename(&src, &dst).map_err(io(&dst))
    }

    /// `salt-key -a`: pending → accepted.
    ///
    /// # Errors
    /// [`KeyError::NotFound`] if `id` is not pending.
    pub fn accept(&self, id: &str) -> Result<(), KeyError> {
        self.moved(KeyDir::Pending, KeyDir::Accepted, id)
    }

    /// `salt-key -r`: pending or accepted → rejected.
    ///
    /// # Errors
    /// [`KeyError::NotFound`] if `id` is neither pending nor accepted.
    pub fn reject(&self, id: &str) -> Result<(), KeyError> {
        self.moved(KeyDir::Pending, KeyDir::Rejected, id)
            .or_else(|_| self.moved(KeyDir::Accepted, KeyDir::Rejected, id))
    }

    /// `salt-key -d`: remove `id` from every directory. Returns whether anything was removed.
    ///
    /// # Errors
    /// [`KeyError`] for invalid ids or file system failures.
    pub fn delete(&self, id: &str) -> Result<bool, KeyError> {
        let mut any = false;
        for d in [
            KeyDir::Accepted,
            KeyDir::Pending,
            KeyDir::Rejected,
            KeyDir::Denied,
        ] {
            let p = self.path(d, id)?;
            match std::fs::remove_file(&p) {
                Ok(()) => any = true,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(KeyError::Io { path: p, source: e }),
            }
        }
        Ok(any)
    }

    /// The ids in directory `d`, sorted (files with invalid names are skipped).
    pub fn list(&self, d: KeyDir) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.dir.join(d.name()))
            .map(|rd| {
                rd.filter_map(Result::ok)
                    .filter_map(|e| e.file_name().into_string().ok())
                    .filter(|n| valid_minion_id(n) && !n.starts_with('.'))
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }
}

#[cfg(test)]
mod tests {
    use brine_proto::crypt::PrivateKey;

    use super::*;

    /// Two handlers can take the same minion's `_auth` at once (a resend on a new connection):
    /// one writes the accepted key while the other reads it. The reader must see no key or the
    /// whole key, never a truncated one (which `decide_auth` answers as a different key:
    /// "denied", and the minion gives up as rejected — likely what ended one simulated minion
    /// rejected in a 9k storm).
    #[test]
    fn a_key_being_written_is_never_read_half_written() {
        let (d, ks, pem) = store_and_key();
        let stop = std::sync::atomic::AtomicBool::new(false);
        let torn = std::thread::scope(|s| {
            let reader = s.spawn(|| {
                let mut torn = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    match ks.state("m1").unwrap() {
                        KeyState::Unknown => {}
                        KeyState::Accepted(k) if k == pem => {}
                        _ => torn += 1,
                    }
                }
                torn
            });
            for _ in 0..3000 {
                ks.apply("m1", &KeyAction::WriteAccepted(pem.clone()))
                    .unwrap();
                let _ = std::fs::remove_file(d.path().join("minions").join("m1"));
            }
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            reader.join().unwrap()
        });
        assert_eq!(torn, 0, "reads of a half-written key");
        let left: Vec<_> = std::fs::read_dir(d.path())
            .unwrap()
            .filter_map(|e| e.unwrap().file_name().into_string().ok())
            .filter(|n| n.ends_with(".tmp"))
            .collect();
        assert!(left.is_empty(), "temporary files left: {left:?}");
    }

    /// An empty pki directory and a minion's public key.
    fn store_and_key() -> (tempfile::TempDir, KeyStore, String) {
        let d = tempfile::tempdir().unwrap();
        let ks = KeyStore::open(d.path()).unwrap();
        let pem = PrivateKey::generate(2048)
            .unwrap()
            .public_key()
            .to_clean_pem();
        (d, ks, pem)
    }

    #[test]
    fn salt_key_lifecycle() {
        let (d, ks, pem) = store_and_key();
        assert_eq!(ks.state("m1").unwrap(), KeyState::Unknown);
        ks.apply("m1", &KeyAction::WritePending(pem.clone()))
            .unwrap();
        assert_eq!(ks.state("m1").unwrap(), KeyState::Pending(pem.clone()));
        assert_eq!(ks.list(KeyDir::Pending), vec!["m1"]);
        ks.accept("m1").unwrap();
        assert_eq!(ks.state("m1").unwrap(), KeyState::Accepted(pem.clone()));
        assert!(ks.accepted_key("m1").unwrap().is_some());
        assert!(d.path().join("minions/m1").exists(), "Salt's layout");
        ks.reject("m1").unwrap();
        assert_eq!(ks.state("m1").unwrap(), KeyState::Rejected);
        assert!(ks.delete("m1").unwrap());
        assert_eq!(ks.state("m1").unwrap(), KeyState::Unknown);
        assert!(!ks.delete("m1").unwrap());
        assert!(matches!(ks.accept("m1"), Err(KeyError::NotFound { .. })));
    }

    #[test]
    fn hostile_ids_never_become_paths() {
        let d = tempfile::tempdir().unwrap();
        let ks = KeyStore::open(&d.path().join("pki")).unwrap();
        for id in ["../../etc/x", "a/b", "..", "", "x\0y"] {
            assert!(
                matches!(ks.state(id), Err(KeyError::InvalidId(_))),
                "{id:?}"
            );
            assert!(ks.apply(id, &KeyAction::WriteAccepted("k".into())).is_err());
            assert!(ks.delete(id).is_err());
        }
        assert!(
            !d.path().join("etc").exists(),
            "nothing written outside the pki dir"
        );
    }
}
