//! The master's secrets: `master.pem`/`master.pub` (Salt's files and modes), the publish AES key
//! with its serial counter, and one session key per minion.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

use brine_proto::crypt::{Crypticle, Entropy, PrivateKey, SerialCounter};

use crate::CoreError;

/// Load `pki_dir/master.pem`, or create it (RSA-2048, mode 0400) and `master.pub` (0644).
///
/// # Errors
/// [`CoreError`] naming the file when it cannot be read, parsed or written.
pub fn load_or_create_master_key(pki_dir: &Path) -> Result<PrivateKey, CoreError> {
    load_or_create_key(pki_dir, "master")
}

/// Load `pki_dir/<stem>.pem`, or create it (RSA-2048, mode 0400) and `<stem>.pub` (0644): the
/// master key (`master`) and the `master_sign_pubkey` signing key (`master_sign`).
///
/// # Errors
/// [`CoreError`] naming the file when it cannot be read, parsed or written.
pub fn load_or_create_key(pki_dir: &Path, stem: &str) -> Result<PrivateKey, CoreError> {
    std::fs::create_dir_all(pki_dir).map_err(CoreError::io(pki_dir))?;
    let pem = pki_dir.join(format!("{stem}.pem"));
    if pem.exists() {
        let data = std::fs::read(&pem).map_err(CoreError::io(&pem))?;
        return PrivateKey::from_pem(&data).map_err(|e| CoreError::key(&pem, e));
    }
    let key = PrivateKey::generate(2048).map_err(|e| CoreError::key(&pem, e))?;
    let bytes = key.to_pem_pkcs1().map_err(|e| CoreError::key(&pem, e))?;
    let write = |path: &Path, data: &[u8], mode: u32| -> Result<(), CoreError> {
        std::fs::write(path, data).map_err(CoreError::io(path))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .map_err(CoreError::io(path))
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
            let data = std::fs::read(&pem).map_err(CoreError::io(&pem))?;
            return PrivateKey::from_pem(&data).map_err(|e| CoreError::key(&pem, e));
        }
        Err(e) => return Err(CoreError::io(&pem)(e)),
    }
    write(
        &pki_dir.join(format!("{stem}.pub")),
        key.public_key().to_pem_file().as_bytes(),
        0o644,
    )?;
    Ok(key)
}

/// The publish key, its serials, the session keys, and recent `_auth` replies.
#[derive(Debug)]
pub struct Secrets {
    aes: Crypticle,
    serials: SerialCounter,
    sessions: HashMap<String, Crypticle>,
    auth_replies: AuthReplies,
    nonces: SeenNonces,
}

/// Request nonces seen within `request_server_ttl` (a digest of id and nonce each), so that a
/// captured request cannot be played again while its timestamp still passes.
#[derive(Debug, Default)]
struct SeenNonces {
    set: std::collections::HashSet<[u8; 16]>,
    order: std::collections::VecDeque<(u64, [u8; 16])>,
}

/// How long an accepted `_auth` reply is kept for a resend of the same request: Salt's minion
/// sends the very same `_auth` frame `auth_tries` (7) times, `auth_timeout` (5 s) apart, before
/// building a new one.
pub const AUTH_REPLAY_TTL: std::time::Duration = std::time::Duration::from_secs(40);
const AUTH_REPLIES_MAX: usize = 50_000;

/// Accepted `_auth` replies by digest of the request frame. In an auth storm a minion whose
/// request waited more than `auth_timeout` in the queue sends it again, and the master used to
/// pay the RSA work twice (decrypting the token, signing the reply) for one minion; the
/// resend now gets the first answer back. Only accepted replies are kept, only while the
/// publish key and the minion's session are unchanged.
#[derive(Debug, Default)]
struct AuthReplies {
    map: HashMap<String, (std::time::Instant, String, Vec<u8>)>,
    order: std::collections::VecDeque<(std::time::Instant, String)>,
}

impl AuthReplies {
    fn expire(&mut self, now: std::time::Instant) {
        while let Some((t, d)) = self.order.front() {
            if now.duration_since(*t) < AUTH_REPLAY_TTL && self.order.len() <= AUTH_REPLIES_MAX {
                break;
            }
            if self.map.get(d).is_some_and(|(t2, _, _)| t2 == t) {
                self.map.remove(d);
            }
            self.order.pop_front();
        }
        if self.map.is_empty() {
            self.map = HashMap::new();
            self.order = Default::default();
        }
    }
}

impl Secrets {
    /// Fresh secrets (a master's AES key lives in memory only, as Salt's does).
    pub fn new(rng: &mut dyn Entropy) -> Self {
        Self {
            aes: Crypticle::generate(rng),
            serials: SerialCounter::default(),
            sessions: HashMap::new(),
            auth_replies: AuthReplies::default(),
            nonces: SeenNonces::default(),
        }
    }

    /// Whether `id`'s request `nonce` is seen for the first time within `ttl` seconds of `now`
    /// (it is remembered until then).
    pub fn first_use(&mut self, id: &str, nonce: &str, now: u64, ttl: u64) -> bool {
        let n = &mut self.nonces;
        while let Some((t, d)) = n.order.front() {
            if now.saturating_sub(*t) <= ttl {
                break;
            }
            n.set.remove(d);
            n.order.pop_front();
        }
        let digest = brine_proto::crypt::sha256(format!("{id}\0{nonce}").as_bytes());
        let mut key = [0u8; 16];
        key.copy_from_slice(&digest[..16]);
        if !n.set.insert(key) {
            return false;
        }
        n.order.push_back((now, key));
        true
    }

    /// The reply given to the `_auth` request with this frame digest, if it was accepted less
    /// than [`AUTH_REPLAY_TTL`] ago for `id`, whose session still stands.
    pub fn auth_reply(&self, digest: &str, id: &str) -> Option<Vec<u8>> {
        let (t, who, reply) = self.auth_replies.map.get(digest)?;
        (who == id && t.elapsed() < AUTH_REPLAY_TTL && self.sessions.contains_key(id))
            .then(|| reply.clone())
    }

    /// Remember the reply to an accepted `_auth` request.
    pub fn remember_auth_reply(&mut self, digest: String, id: &str, reply: &[u8]) {
        let now = std::time::Instant::now();
        self.auth_replies.expire(now);
        self.auth_replies.order.push_back((now, digest.clone()));
        self.auth_replies
            .map
            .insert(digest, (now, id.to_owned(), reply.to_vec()));
    }

    /// Drop remembered `_auth` replies older than [`AUTH_REPLAY_TTL`].
    pub fn expire_auth_replies(&mut self) {
        self.auth_replies.expire(std::time::Instant::now());
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

    /// Keep `session` as `id`'s session key unless it has one already; the one kept.
    pub fn adopt_session(&mut self, id: &str, session: Crypticle) -> Crypticle {
        self.sessions
            .entry(id.to_owned())
            .or_insert(session)
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
        // The remembered replies carry the old key.
        self.auth_replies = AuthReplies::default();
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
