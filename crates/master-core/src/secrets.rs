//! The master's secrets: `master.pem`/`master.pub` (Salt's files and modes), the publish AES key
//! with its serial counter, and one session key per minion.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

use brine_proto::crypt::{Crypticle, Entropy, PrivateKey, SerialCounter};

/// Load `pki_dir/master.pem`, or create it (RSA-2048, mode 0400) and `master.pub` (0644).
///
/// # Errors
/// A message naming the file when it cannot be read, parsed or written.
pub fn load_or_create_master_key(pki_dir: &Path) -> Result<PrivateKey, String> {
    load_or_create_key(pki_dir, "master")
}

/// Load `pki_dir/<stem>.pem`, or create it (RSA-2048, mode 0400) and `<stem>.pub` (0644): the
/// master key (`master`) and the `master_sign_pubkey` signing key (`master_sign`).
///
/// # Errors
/// A message naming the file when it cannot be read, parsed or written.
pub fn load_or_create_key(pki_dir: &Path, stem: &str) -> Result<PrivateKey, String> {
    std::fs::create_dir_all(pki_dir).map_err(|e| format!("{}: {e}", pki_dir.display()))?;
    let pem = pki_dir.join(format!("{stem}.pem"));
    if pem.exists() {
        let data = std::fs::read(&pem).map_err(|e| format!("{}: {e}", pem.display()))?;
        return PrivateKey::from_pem(&data).map_err(|e| format!("{}: {e}", pem.display()));
    }
    let key = PrivateKey::generate(2048).map_err(|e| e.to_string())?;
    let bytes = key.to_pem_pkcs1().map_err(|e| e.to_string())?;
    let write = |path: &Path, data: &[u8], mode: u32| -> Result<(), String> {
        std::fs::write(path, data).map_err(|e| format!("{}: {e}", path.display()))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .map_err(|e| format!("{}: {e}", path.display()))
    };
    // Masters that share a pki directory (hot pairs, failover syndics) may start together:
    // the key is written aside and linked into place, so exactly one of them creates it and
    // the others read that one.
    let tmp = pki_dir.join(format!(".{stem}.pem.{}", std::process::id()));
    write(&tmp, &bytes, 0o400)?;
    let linked = std::fs::hard_link(&tmp, &pem);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let data = std::fs::read(&pem).map_err(|e| format!("{}: {e}", pem.display()))?;
            return PrivateKey::from_pem(&data).map_err(|e| format!("{}: {e}", pem.display()));
        }
        Err(e) => return Err(format!("{}: {e}", pem.display())),
    }
    write(
        &pki_dir.join(format!("{stem}.pub")),
        key.public_key().to_pem_file().as_bytes(),
        0o644,
    )?;
    Ok(key)
}

/// The publish key, its serials, and the session keys.
#[derive(Debug)]
pub struct Secrets {
    aes: Crypticle,
    serials: SerialCounter,
    sessions: HashMap<String, Crypticle>,
}

impl Secrets {
    /// Fresh secrets (a master's AES key lives in memory only, as Salt's does).
    pub fn new(rng: &mut dyn Entropy) -> Self {
        Self {
            aes: Crypticle::generate(rng),
            serials: SerialCounter::default(),
            sessions: HashMap::new(),
        }
    }

    /// The current publish key.
    pub fn aes(&self) -> &Crypticle {
        &self.aes
    }

    /// The next publish serial under the current key.
    pub fn next_serial(&mut self) -> i64 {
        self.serials.next_serial()
    }

    /// The session key of `id`, created on first use.
    pub fn session(&mut self, id: &str, rng: &mut dyn Entropy) -> Crypticle {
        self.sessions
            .entry(id.to_owned())
            .or_insert_with(|| Crypticle::generate(rng))
            .clone()
    }

    /// The session key of `id`, if it has authenticated since the master started.
    pub fn existing_session(&self, id: &str) -> Option<&Crypticle> {
        self.sessions.get(id)
    }

    /// New AES key (after a key is deleted or rejected, `rotate_aes_key`): serials restart, and
    /// minions re-authenticate when the next publish fails their MAC check.
    pub fn rotate(&mut self, rng: &mut dyn Entropy) {
        self.aes = Crypticle::generate(rng);
        self.serials.reset();
    }

    /// Forget `id`'s session (its key was deleted or rejected).
    pub fn drop_session(&mut self, id: &str) {
        self.sessions.remove(id);
    }
}

#[cfg(test)]
mod tests {
    use brine_proto::crypt::CountingEntropy;

    use super::*;

    #[test]
    fn master_key_files_like_salt() {
        let d = tempfile::tempdir().unwrap();
        let k = load_or_create_master_key(d.path()).unwrap();
        let mode = |f: &str| {
            std::fs::metadata(d.path().join(f))
                .unwrap()
                .permissions()
                .mode()
                & 0o777
        };
        assert_eq!((mode("master.pem"), mode("master.pub")), (0o400, 0o644));
        assert_eq!(
            load_or_create_master_key(d.path()).unwrap().public_key(),
            k.public_key()
        );
    }

    #[test]
    fn serials_restart_on_rotation() {
        let mut rng = CountingEntropy::default();
        let mut s = Secrets::new(&mut rng);
        assert_eq!((s.next_serial(), s.next_serial()), (1, 2));
        let old = s.aes().clone();
        s.rotate(&mut rng);
        assert_ne!(&old, s.aes());
        assert_eq!(s.next_serial(), 1);
        let a = s.session("m1", &mut rng);
        assert_eq!(s.session("m1", &mut rng), a);
        s.drop_session("m1");
        assert!(s.existing_session("m1").is_none());
    }
}
