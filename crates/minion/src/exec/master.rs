//! What jobs ask the master for: pillar (`_pillar`), the mine (`_mine`, `_mine_get`...) and
//! files (the master's file server, as Salt's `RemoteClient` uses it).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use brine_minion_side::link::ReqChannel;
use brine_proto::Value;
use tracing::{debug, info, warn};

/// The pillar this minion last received (shared by every job and link).
#[derive(Debug, Clone)]
pub struct PillarStore(Arc<Mutex<Arc<Value>>>);

impl Default for PillarStore {
    fn default() -> Self {
        Self(Arc::new(Mutex::new(Arc::new(Value::map()))))
    }
}

impl PillarStore {
    /// The pillar in memory (`{}` before the first compilation).
    pub fn get(&self) -> Arc<Value> {
        let g = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if g.as_map().is_none() {
            return Arc::new(Value::map());
        }
        g.clone()
    }

    /// Replace the pillar in memory.
    pub fn set(&self, v: Value) {
        *self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(v);
    }
}

/// The link a job reaches its master through, with what requests need.
pub struct MasterHandle {
    /// The authenticated request channel.
    pub chan: Arc<ReqChannel>,
    /// This minion's id.
    pub id: String,
    /// `saltenv` (default `base`).
    pub saltenv: Option<String>,
    /// `pillarenv`.
    pub pillarenv: Option<String>,
    /// `hash_type`.
    pub hash_type: String,
    /// Where fetched files are cached (`cachedir/files/<saltenv>/...`).
    pub cachedir: PathBuf,
}

impl std::fmt::Debug for MasterHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MasterHandle")
            .field("master", &self.chan.master().host)
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// Why a request to the master failed (its text goes into the job's return).
#[derive(Debug, Clone, thiserror::Error)]
pub enum MasterError {
    /// No answer, or an answer that could not be opened.
    #[error("the master did not answer: {0}")]
    NoAnswer(String),
    /// The master did not compile the pillar.
    #[error("pillar not compiled by the master: {0}")]
    Pillar(String),
}

impl From<MasterError> for String {
    fn from(e: MasterError) -> Self {
        e.to_string()
    }
}

/// How long one request to the master may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

impl MasterHandle {
    /// Send a request load.
    ///
    /// # Errors
    /// [`MasterError::NoAnswer`], whose text goes into the job's return.
    pub async fn request(&self, load: Value) -> Result<Value, MasterError> {
        self.chan
            .send(&load, REQUEST_TIMEOUT)
            .await
            .map_err(|e| MasterError::NoAnswer(e.to_string()))
    }

    /// Compile this minion's pillar on the master (`_pillar`, `ver` 2: the reply is encrypted
    /// to this minion's key and signed by the master).
    pub async fn fetch_pillar(
        &self,
        grains: &Value,
        pillarenv: Option<&str>,
        saltenv: Option<&str>,
    ) -> Result<Value, MasterError> {
        let env = |v: Option<&str>| v.map_or(Value::Nil, Value::str);
        let load = Value::map()
            .with("cmd", "_pillar")
            .with("id", self.id.as_str())
            .with("grains", grains.clone())
            .with("saltenv", env(saltenv.or(self.saltenv.as_deref())))
            .with("pillarenv", env(pillarenv.or(self.pillarenv.as_deref())))
            .with("pillar_override", Value::map())
            .with("extra_minion_data", Value::map())
            .with("ver", "2");
        self.chan
            .pillar(&load, REQUEST_TIMEOUT)
            .await
            .map_err(|e| MasterError::Pillar(e.to_string()))
    }

    /// The saltenv a function uses when none is given.
    pub fn default_saltenv(&self) -> String {
        self.saltenv.clone().unwrap_or_else(|| "base".into())
    }

    /// `_file_hash`: `{hash_type, hsum}`, or `None` when the master has no such file.
    pub async fn hash_file(&self, rel: &str, saltenv: &str) -> Result<Option<Value>, String> {
        let v = self
            .request(
                Value::map()
                    .with("path", rel)
                    .with("saltenv", saltenv)
                    .with("cmd", "_file_hash"),
            )
            .await?;
        Ok(v.as_map().filter(|m| !m.is_empty()).map(|_| v.clone()))
    }

    /// `_file_list` (or another listing command) with `prefix`.
    pub async fn list(
        &self,
        cmd: &str,
        saltenv: &str,
        prefix: &str,
    ) -> Result<Vec<String>, String> {
        let v = self
            .request(
                Value::map()
                    .with("saltenv", saltenv)
                    .with("prefix", prefix)
                    .with("cmd", cmd),
            )
            .await?;
        Ok(v.as_array()
            .unwrap_or_default()
            .iter()
            .filter_map(|x| {
                x.as_str()
                    .or_else(|| x.as_bytes().and_then(|b| std::str::from_utf8(b).ok()))
            })
            .map(str::to_owned)
            .collect())
    }

    /// Salt's `RemoteClient.get_file`: fetch `salt://rel` of `saltenv` to `dest` (a directory
    /// or a path ending in `/` takes the file's name; empty: the minion's file cache).
    /// `Ok(None)` when the master has no such file or `dest`'s directory is missing without
    /// `makedirs`.
    pub async fn get_file(
        &self,
        url: &str,
        dest: Option<&Path>,
        makedirs: bool,
        saltenv: &str,
        gzip: Option<i64>,
    ) -> Result<Option<PathBuf>, String> {
        let (rel, saltenv) = split_url(url, saltenv);
        let Some(server_hash) = self.hash_file(&rel, &saltenv).await? else {
            debug!(path = %rel, saltenv, "no such file on the master");
            return Ok(None);
        };
        let base = rel.rsplit('/').next().unwrap_or(&rel).to_owned();
        let mut dest: Option<PathBuf> = dest.map(|d| {
            if d.is_dir() || d.as_os_str().to_string_lossy().ends_with('/') {
                d.join(&base)
            } else {
                d.to_owned()
            }
        });
        let check = dest.clone().or_else(|| self.cache_path(&saltenv, &rel));
        if let Some(p) = check.as_ref().filter(|p| p.is_file())
            && local_hash(
                p,
                server_hash
                    .get("hash_type")
                    .and_then(Value::as_str)
                    .unwrap_or(&self.hash_type),
            )
            .is_some_and(|h| Some(h.as_str()) == server_hash.get("hsum").and_then(Value::as_str))
        {
            return Ok(Some(p.clone()));
        }
        if let Some(d) = &dest
            && let Some(dir) = d.parent().filter(|p| !p.as_os_str().is_empty())
            && !dir.is_dir()
        {
            if !makedirs {
                return Ok(None);
            }
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        let mut body: Vec<u8> = Vec::new();
        let mut got_dest: Option<String> = None;
        let mut broken = 0;
        loop {
            let mut load = Value::map()
                .with("path", rel.as_str())
                .with("saltenv", saltenv.as_str())
                .with("cmd", "_serve_file");
            if let Some(g) = gzip.filter(|g| *g > 0) {
                load.insert("gzip", g);
            }
            load.insert("loc", body.len() as i64);
            let reply = self.request(load).await?;
            let data = reply
                .get("data")
                .and_then(|d| d.as_bytes().or_else(|| d.as_str().map(str::as_bytes)));
            let rdest = reply.get("dest").and_then(|d| {
                d.as_str().map(str::to_owned).or_else(|| {
                    d.as_bytes()
                        .map(|b| String::from_utf8_lossy(b).into_owned())
                })
            });
            let (Some(data), Some(rdest)) = (data, rdest) else {
                broken += 1;
                warn!(path = %rel, attempt = broken, "file transfer reply without data or dest");
                if broken > 3 {
                    return Err(format!("the master's file transfer of {rel} is broken"));
                }
                continue;
            };
            if got_dest.is_none() && !rdest.is_empty() {
                got_dest = Some(rdest);
            }
            if data.is_empty() {
                break;
            }
            if reply.get("gzip").is_some_and(Value::is_truthy) {
                use std::io::Read as _;
                let mut out = Vec::new();
                flate2::read::MultiGzDecoder::new(data)
                    .read_to_end(&mut out)
                    .map_err(|e| format!("bad gzip data from the master: {e}"))?;
                body.extend_from_slice(&out);
            } else {
                body.extend_from_slice(data);
            }
        }
        if dest.is_none() {
            let Some(d) = got_dest.as_deref() else {
                return Ok(None);
            };
            dest = Some(
                self.cache_path(&saltenv, d)
                    .ok_or_else(|| format!("the master named an unsafe destination {d:?}"))?,
            );
        }
        let dest = dest.expect("set above");
        if let Some(dir) = dest.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        let tmp = dest.with_file_name(format!(
            ".{}.brine-tmp",
            dest.file_name()
                .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
        ));
        std::fs::write(&tmp, &body)
            .and_then(|()| std::fs::rename(&tmp, &dest))
            .map_err(|e| format!("{}: {e}", dest.display()))?;
        info!(path = %rel, saltenv, dest = %dest.display(), bytes = body.len(), "file fetched from the master");
        Ok(Some(dest))
    }

    /// `cachedir/files/<saltenv>/<rel>`, refusing a `rel` that would leave it.
    pub fn cache_path(&self, saltenv: &str, rel: &str) -> Option<PathBuf> {
        let safe = |s: &str| {
            !s.is_empty()
                && !s.contains('\0')
                && !s.starts_with('/')
                && s.split('/').all(|c| c != "..")
        };
        if !safe(saltenv) || saltenv.contains('/') || !safe(rel) {
            return None;
        }
        Some(self.cachedir.join("files").join(saltenv).join(rel))
    }
}

/// `salt://path?saltenv=env` → (`path`, env); the scheme is optional.
pub fn split_url(url: &str, saltenv: &str) -> (String, String) {
    let path = url.strip_prefix("salt://").unwrap_or(url);
    match path.split_once('?') {
        Some((p, q)) => {
            let env = q
                .split('&')
                .find_map(|kv| kv.strip_prefix("saltenv="))
                .unwrap_or(saltenv);
            (p.to_owned(), env.to_owned())
        }
        None => (path.to_owned(), saltenv.to_owned()),
    }
}

/// The hex digest of a local file.
pub fn local_hash(path: &Path, hash_type: &str) -> Option<String> {
    let md = brine_proto::crypt::digest_named(hash_type)?;
    let data = std::fs::read(path).ok()?;
    let d = openssl::hash::hash(md, &data).ok()?;
    Some(d.iter().map(|b| format!("{b:02x}")).collect())
}

/// Salt's `traverse_dict_and_list`: `a:b:0:c` through maps, list indexes and maps in lists.
pub fn traverse<'v>(data: &'v Value, key: &str, delimiter: &str) -> Option<&'v Value> {
    let mut ptr = data;
    for part in key.split(delimiter) {
        ptr = match ptr {
            Value::Map(entries) => entries
                .iter()
                .find(|(k, _)| k.is_str(part))
                .map(|(_, v)| v)?,
            Value::Array(items) => match part.parse::<i64>() {
                Ok(i) => {
                    let len = items.len() as i64;
                    let idx = if i < 0 { i + len } else { i };
                    items.get(usize::try_from(idx).ok()?)?
                }
                Err(_) => items.iter().find_map(|it| it.get(part))?,
            },
            _ => return None,
        };
    }
    Some(ptr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_traversal() {
        assert_eq!(
            split_url("salt://a/b.txt", "base"),
            ("a/b.txt".into(), "base".into())
        );
        assert_eq!(
            split_url("salt://a/b.txt?saltenv=dev", "base"),
            ("a/b.txt".into(), "dev".into())
        );
        let d = Value::map().with(
            "a",
            Value::map().with(
                "l",
                Value::Array(vec![Value::Int(1), Value::map().with("k", "v")]),
            ),
        );
        assert_eq!(traverse(&d, "a:l:0", ":"), Some(&Value::Int(1)));
        assert_eq!(traverse(&d, "a:l:k", ":"), Some(&Value::str("v")));
        assert_eq!(traverse(&d, "a:l:-1:k", ":"), Some(&Value::str("v")));
        assert_eq!(traverse(&d, "a|l|0", "|"), Some(&Value::Int(1)));
        assert_eq!(traverse(&d, "a:x", ":"), None);
    }
}
