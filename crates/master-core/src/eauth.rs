//! `external_auth`: who may log in to the HTTP API, and what each user may run.
//!
//! Backends, with Salt's config shape:
//!
//! ```yaml
//! external_auth:
//!   file:
//!     ^filename: /etc/salt/brine-users      # user:password lines
//!     ^hashtype: plaintext                  # or md5, sha1, sha256, sha512 (Salt's, unsalted)
//!     alice:
//!       - 'web*':                           # targets matching web* ...
//!         - test.*                          # ... may run test.*
//!       - '@runner'                         # and any runner
//!     bob:
//!       - test.ping                         # test.ping on any target
//!   pam:                                    # the system's accounts (PAM service `login`,
//!     deploy: ['state.*']                   # or `auth.pam.service`)
//!   sharedsecret:                           # any user name, the master's `sharedsecret`
//!     ops: ['.*']                           # as the password
//!   auto:                                   # Salt's test backend: every password is right
//!     demo: ['test.ping']
//! ```
//!
//! Beyond Salt, a password field of the form `$pbkdf2-sha256$ITER$SALT$HASH` (salted
//! PBKDF2-HMAC-SHA256, base64 fields; made by `brine --hash-password`) is verified as such
//! whatever `^hashtype` says: salted hashes are what the file should hold.
//!
//! A user's permissions are their own entries under the backend, or those of `*` for a user it
//! does not name (Salt's fallback). Entries are matched as Salt's `auth_check` does: a string is a function
//! pattern (a regular expression matched at the start, [`fun_matches`]) allowed on any target
//! (`@runner`, `@wheel`, `@jobs`... name whole client families); a mapping
//! `{TARGET: [FUNCTION_PATTERNS]}` allows those functions only when every targeted minion
//! matches the target; `{'@runner': [FUNCTION_PATTERNS]}` limits runners.

use std::collections::BTreeMap;
use std::path::PathBuf;

pub use crate::server::Allowed;
use base64::Engine as _;
use serde_json::Value as Json;

/// What a token may do.
#[derive(Debug, Clone, PartialEq)]
pub enum Perms {
    /// The root token: everything.
    Root,
    /// A user's ACL entries.
    Acl(Vec<Json>),
}

/// The `file` backend's settings.
#[derive(Debug, Clone)]
struct FileBackend {
    path: PathBuf,
    hashtype: String,
    separator: String,
}

/// A password check by the system's PAM (`user`, `password`), supplied by the daemon that
/// links libpam (mofm); blocking.
pub type PamCheck = std::sync::Arc<dyn Fn(&str, &str) -> bool + Send + Sync>;

/// The configured `external_auth`.
#[derive(Clone, Default)]
pub struct Eauth {
    file: Option<FileBackend>,
    /// The `pam` backend's check, when configured and supplied ([`Eauth::with_pam`]).
    pam: Option<PamCheck>,
    /// The master's `sharedsecret` option (the `sharedsecret` backend's password).
    sharedsecret: Option<String>,
    /// Backend → user (or `*`) → permission entries.
    acl: BTreeMap<String, BTreeMap<String, Vec<Json>>>,
}

impl std::fmt::Debug for Eauth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Eauth")
            .field("file", &self.file)
            .field("pam", &self.pam.is_some())
            .field("backends", &self.acl.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

const PBKDF2_PREFIX: &str = "$pbkdf2-sha256$";
const PBKDF2_ITERATIONS: usize = 100_000;

/// The backends brine has.
pub const BACKENDS: &[&str] = &["file", "pam", "sharedsecret", "auto"];

impl Eauth {
    /// Read the `external_auth` option (and `sharedsecret`, the `sharedsecret` backend's
    /// password).
    ///
    /// # Errors
    /// [`CoreError::Config`] for shapes or backends brine does not support, or a backend
    /// that cannot work as configured (`sharedsecret` without the option).
    pub fn from_config(cfg: &Json, sharedsecret: Option<&str>) -> Result<Self, crate::CoreError> {
        Self::parse(cfg, sharedsecret).map_err(|e| {
            crate::CoreError::config(
                "external_auth",
                e.strip_prefix("external_auth: ").unwrap_or(&e),
            )
        })
    }

    fn parse(cfg: &Json, sharedsecret: Option<&str>) -> Result<Self, String> {
        let mut out = Self {
            sharedsecret: sharedsecret.filter(|s| !s.is_empty()).map(str::to_owned),
            ..Self::default()
        };
        let Json::Object(backends) = cfg else {
            return match cfg {
                Json::Null => Ok(out),
                other => Err(format!("external_auth: expected a mapping, found {other}")),
            };
        };
        for (backend, users) in backends {
            if !BACKENDS.contains(&backend.as_str()) {
                return Err(format!(
                    "external_auth: backend {backend:?} is not supported (brine has {})",
                    BACKENDS.join(", ")
                ));
            }
            let Json::Object(users) = users else {
                return Err(format!("external_auth: {backend}: expected a mapping"));
            };
            let mut file = FileBackend {
                path: PathBuf::new(),
                hashtype: "plaintext".into(),
                separator: ":".into(),
            };
            let mut acl = BTreeMap::new();
            for (k, v) in users {
                match (backend.as_str(), k.as_str(), v) {
                    ("file", "^filename", Json::String(p)) => {
                        // Salt uses ^filename as written (no root_dir prefix).
                        file.path = PathBuf::from(p);
                    }
                    ("file", "^hashtype", Json::String(h)) => {
                        file.hashtype = h.to_ascii_lowercase()
                    }
                    ("file", "^field_separator", Json::String(s)) => file.separator.clone_from(s),
                    ("file", "^filetype", Json::String(t)) if t == "text" => {}
                    ("file", "^filetype", other) => {
                        return Err(format!(
                            "external_auth: file: ^filetype {other} is not supported (use text)"
                        ));
                    }
                    (_, k, _) if k.starts_with('^') => {}
                    (_, user, Json::Array(entries)) => {
                        acl.insert(user.to_owned(), entries.clone());
                    }
                    (_, user, other) => {
                        return Err(format!(
                            "external_auth: {backend}: {user}: expected a list of permissions, found {other}"
                        ));
                    }
                }
            }
            match backend.as_str() {
                "file" if file.path.as_os_str().is_empty() => {
                    return Err("external_auth: file: ^filename is required".into());
                }
                "file" => out.file = Some(file),
                "sharedsecret" if out.sharedsecret.is_none() => {
                    return Err(
                        "external_auth: sharedsecret needs the master's `sharedsecret` option"
                            .into(),
                    );
                }
                "auto" => tracing::warn!(
                    "external_auth: the `auto` backend accepts any password (Salt's test backend): never on a master others can reach"
                ),
                _ => {}
            }
            out.acl.insert(backend.clone(), acl);
        }
        Ok(out)
    }

    /// Whether the `pam` backend is configured (its check must then be supplied).
    pub fn uses_pam(&self) -> bool {
        self.acl.contains_key("pam")
    }

    /// Check `pam` logins with `check` (the system's PAM).
    #[must_use]
    pub fn with_pam(mut self, check: PamCheck) -> Self {
        self.pam = Some(check);
        self
    }

    /// `user`'s permissions under `backend` (for a token issued after a password check, here or
    /// on another master with the same configuration): the user's own entries, or, for a user
    /// the backend does not name, those of `*` (as Salt's `fill_auth_list` without
    /// `permissive_acl`: `*` is the fallback, not an addition).
    pub fn permissions(&self, backend: &str, user: &str) -> Option<Perms> {
        let users = self.acl.get(backend)?;
        let entries = users.get(user).or_else(|| users.get("*"))?;
        Some(Perms::Acl(entries.clone()))
    }

    /// Check `user`'s password with `backend`; the user's permissions if it is right.
    pub fn authenticate(&self, backend: &str, user: &str, password: &str) -> Option<Perms> {
        let perms = self.permissions(backend, user)?;
        if user.is_empty() || user == "*" {
            return None;
        }
        let eq = |a: &[u8], b: &[u8]| a.len() == b.len() && openssl::memcmp::eq(a, b);
        let ok = match backend {
            "file" => {
                let f = self.file.as_ref()?;
                let text = std::fs::read_to_string(&f.path).ok()?;
                let stored = text.lines().find_map(|l| {
                    let (u, p) = l.split_once(f.separator.as_str())?;
                    (u == user).then(|| p.trim_end_matches('\r').to_owned())
                })?;
                verify(&stored, password, &f.hashtype)
            }
            "sharedsecret" => self
                .sharedsecret
                .as_deref()
                .is_some_and(|s| eq(s.as_bytes(), password.as_bytes())),
            "pam" => self.pam.as_ref().is_some_and(|check| check(user, password)),
            "auto" => true,
            _ => false,
        };
        ok.then_some(perms)
    }
}

/// A salted PBKDF2-HMAC-SHA256 hash of `password` for the users file.
///
/// # Errors
/// OpenSSL failures.
pub fn hash_password(password: &str) -> Result<String, openssl::error::ErrorStack> {
    let mut salt = [0u8; 16];
    openssl::rand::rand_bytes(&mut salt)?;
    let mut out = [0u8; 32];
    openssl::pkcs5::pbkdf2_hmac(
        password.as_bytes(),
        &salt,
        PBKDF2_ITERATIONS,
        openssl::hash::MessageDigest::sha256(),
        &mut out,
    )?;
    let b = base64::engine::general_purpose::STANDARD_NO_PAD;
    Ok(format!(
        "{PBKDF2_PREFIX}{PBKDF2_ITERATIONS}${}${}",
        b.encode(salt),
        b.encode(out)
    ))
}

fn verify(stored: &str, password: &str, hashtype: &str) -> bool {
    let eq = |a: &[u8], b: &[u8]| a.len() == b.len() && openssl::memcmp::eq(a, b);
    if let Some(rest) = stored.strip_prefix(PBKDF2_PREFIX) {
        let b = base64::engine::general_purpose::STANDARD_NO_PAD;
        let mut parts = rest.split('$');
        let (Some(iter), Some(salt), Some(hash)) = (parts.next(), parts.next(), parts.next())
        else {
            return false;
        };
        let (Ok(iter), Ok(salt), Ok(hash)) =
            (iter.parse::<usize>(), b.decode(salt), b.decode(hash))
        else {
            return false;
        };
        if !(1..=10_000_000).contains(&iter) || hash.len() != 32 {
            return false;
        }
        let mut out = [0u8; 32];
        return openssl::pkcs5::pbkdf2_hmac(
            password.as_bytes(),
            &salt,
            iter,
            openssl::hash::MessageDigest::sha256(),
            &mut out,
        )
        .is_ok()
            && eq(&out, &hash);
    }
    if hashtype == "plaintext" {
        return eq(stored.as_bytes(), password.as_bytes());
    }
    let Some(md) = brine_proto::crypt::digest_named(hashtype) else {
        return false;
    };
    openssl::hash::hash(md, password.as_bytes()).is_ok_and(|d| {
        eq(
            hex::encode(d).as_bytes(),
            stored.to_ascii_lowercase().as_bytes(),
        )
    })
}

/// Whether ACL function pattern `p` allows `fun`: a regular expression matched at the start
/// of the name, as Salt's master checks it (`re.match`), so `.*` allows everything and
/// `test.ping` also allows `test.pingx`. A pattern Python would refuse, or whose meaning brine
/// cannot be sure of, allows nothing (and is logged).
pub fn fun_matches(p: &str, fun: &str) -> bool {
    match brine_proto::target::pyre::compile(p) {
        Ok(re) => match re.match_start(fun) {
            Some(m) => m,
            None => {
                tracing::warn!(
                    pattern = p,
                    fun,
                    "external_auth pattern cannot be evaluated as Salt would for this function: denied"
                );
                false
            }
        },
        Err(e) => {
            tracing::warn!(pattern = p, error = %e, "external_auth pattern is not a regular expression brine can evaluate as Salt does: it allows nothing");
            false
        }
    }
}

fn fun_allowed(patterns: &Json, fun: &str) -> bool {
    let one = |p: &Json| p.as_str().is_some_and(|p| fun_matches(p, fun));
    match patterns {
        Json::Array(a) => a.iter().any(one),
        p => one(p),
    }
}

impl Perms {
    /// Where this token may run `fun`: anywhere (a plain function entry, or root), or on the
    /// minions matching one of the entries' targets (compound expressions, as in Salt).
    pub fn targets_for(&self, fun: &str) -> Allowed {
        let Self::Acl(entries) = self else {
            return Allowed::Anywhere;
        };
        let mut within = Vec::new();
        for e in entries {
            match e {
                Json::String(p) if !p.starts_with('@') && fun_matches(p, fun) => {
                    return Allowed::Anywhere;
                }
                Json::Object(m) => {
                    for (tgt, funs) in m {
                        if !tgt.starts_with('@') && fun_allowed(funs, fun) {
                            within.push(tgt.clone());
                        }
                    }
                }
                _ => {}
            }
        }
        Allowed::Within(within)
    }

    /// May this token run the runner `fun`? Salt's forms: `@runner`/`@runners` (every
    /// runner), `@<module>` (e.g. `@jobs`: every function of that runner module), and the
    /// same as keys of a mapping whose value lists the functions allowed.
    pub fn allows_runner(&self, fun: &str) -> bool {
        self.allows_special(&["@runner", "@runners"], fun)
    }

    /// May this token run the wheel function `fun` (`key.accept`...)? Salt's forms:
    /// `@wheel`/`@wheels`, `@<module>` (e.g. `@key`), and mappings of those to functions.
    pub fn allows_wheel_fun(&self, fun: &str) -> bool {
        self.allows_special(&["@wheel", "@wheels"], fun)
    }

    fn allows_special(&self, whole: &[&str], fun: &str) -> bool {
        let Self::Acl(entries) = self else {
            return true;
        };
        let module = fun.split_once('.').map(|(m, _)| format!("@{m}"));
        let names = |k: &str| whole.contains(&k) || module.as_deref() == Some(k);
        entries.iter().any(|e| match e {
            Json::String(p) => names(p),
            Json::Object(m) => m.iter().any(|(k, funs)| names(k) && fun_allowed(funs, fun)),
            _ => false,
        })
    }

    /// May this token list keys (`GET /keys`: wheel `key.list_all`)?
    pub fn allows_wheel(&self) -> bool {
        self.allows_wheel_fun("key.list_all")
    }

    /// The permission list as the API's `/login` reports it.
    pub fn to_json(&self) -> Json {
        match self {
            Self::Root => Json::Array(vec![Json::String(".*".into())]),
            Self::Acl(a) => Json::Array(a.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_backend_salted_and_salt_hashes_and_acls() {
        let d = tempfile::tempdir().unwrap();
        let users = d.path().join("users");
        std::fs::write(
            &users,
            format!(
                "alice:{}\nbob:{}\n",
                hash_password("wonderland").unwrap(),
                hex::encode(openssl::sha::sha256(b"builder"))
            ),
        )
        .unwrap();
        let cfg = serde_json::json!({"file": {
            "^filename": users.to_str().unwrap(),
            "^hashtype": "sha256",
            "alice": [{"web*": ["test.*"]}, "@runner"],
            "bob": ["test.ping"],
        }});
        let e = Eauth::from_config(&cfg, None).unwrap();
        assert!(e.authenticate("file", "alice", "wrong").is_none());
        assert!(e.authenticate("pam", "alice", "wonderland").is_none());
        assert!(e.authenticate("file", "carol", "x").is_none());
        let alice = e.authenticate("file", "alice", "wonderland").unwrap();
        let bob = e.authenticate("file", "bob", "builder").unwrap();
        let within = |v: &[&str]| Allowed::Within(v.iter().map(|s| (*s).to_owned()).collect());
        assert_eq!(alice.targets_for("test.ping"), within(&["web*"]));
        assert_eq!(alice.targets_for("cmd.run"), within(&[]));
        assert!(alice.allows_runner("jobs.list_jobs"));
        assert_eq!(bob.targets_for("test.ping"), Allowed::Anywhere);
        assert_eq!(bob.targets_for("test.echo"), within(&[]));
        assert!(!bob.allows_runner("manage.up"));
        assert_eq!(Perms::Root.targets_for("cmd.run"), Allowed::Anywhere);
        assert!(Eauth::from_config(&serde_json::json!({"ldap": {}}), None).is_err());
        // '.*' is Salt's "everything" (a regular expression); '*' is for users not named.
        let cfg = serde_json::json!({
            "sharedsecret": {"ops": [".*"], "*": ["@jobs"]},
            "auto": {"demo": ["test.ping"]},
        });
        assert!(
            Eauth::from_config(&cfg, None).is_err(),
            "sharedsecret needs its option"
        );
        let e = Eauth::from_config(&cfg, Some("s3cret")).unwrap();
        let ops = e.authenticate("sharedsecret", "ops", "s3cret").unwrap();
        assert!(e.authenticate("sharedsecret", "ops", "s3cre").is_none());
        assert!(e.authenticate("sharedsecret", "*", "s3cret").is_none());
        assert_eq!(ops.targets_for("cmd.run"), Allowed::Anywhere);
        assert!(
            !ops.allows_runner("jobs.lookup_jid"),
            "'*' does not add to a named user"
        );
        let anyone = e.authenticate("sharedsecret", "someone", "s3cret").unwrap();
        assert_eq!(anyone.targets_for("test.ping"), within(&[]));
        assert!(anyone.allows_runner("jobs.lookup_jid") && !anyone.allows_runner("manage.up"));
        let demo = e.authenticate("auto", "demo", "anything").unwrap();
        assert_eq!(demo.targets_for("test.ping"), Allowed::Anywhere);
        assert_eq!(demo.targets_for("test.pin"), within(&[]));
        assert!(e.authenticate("auto", "nobody", "x").is_none());
    }
}
