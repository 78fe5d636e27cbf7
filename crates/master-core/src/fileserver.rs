//! The file server: Salt's `roots` backend, answering the requests a minion's file client and
//! state system make (`_serve_file`, `_file_hash`, `_file_hash_and_stat`, `_file_find`,
//! `_file_list`, `_file_list_emptydirs`, `_dir_list`, `_symlink_list`, `_file_envs`), in the
//! shapes salt-master 3006-3008 answers them (docs/mofm.md; the wire shapes were read from
//! Salt's code and checked against a real salt-master by `tests/e2e/fileserver`).
//!
//! Paths stay inside the roots. Like Salt, a request path that is absolute or contains `../`
//! finds nothing; beyond Salt, a NUL, a `..` left after normalising, a `saltenv` with a path in it
//! (for `__env__` roots), and a file or directory whose real path leaves its root (a symlink
//! pointing outside, which Salt serves by default) are refused too, each with a logged reason.

use crate::CoreError;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{Read as _, Seek as _, SeekFrom};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use brine_daemon::config::{ConfigError, Options};
use brine_proto::Value;
use brine_proto::target::pyre::{self, PyRegex};
use tracing::warn;

/// Salt's master `file_buffer_size`: bytes per `_serve_file` chunk.
pub const DEFAULT_FILE_BUFFER_SIZE: usize = 1_048_576;

/// The file server's configuration (Salt's option names).
#[derive(Debug, Clone)]
pub struct FileServerConfig {
    /// `file_roots`: saltenv → directories, in order (the first that has a file wins).
    pub roots: Vec<(String, Vec<PathBuf>)>,
    /// `fileserver_backend` (only `roots` is served).
    pub backends: Vec<String>,
    /// `file_ignore_regex` (Python regexes, `re.search`).
    pub ignore_regex: Vec<String>,
    /// `file_ignore_glob` (Python `fnmatch`).
    pub ignore_glob: Vec<String>,
    /// `file_buffer_size`.
    pub buffer_size: usize,
    /// `hash_type`.
    pub hash_type: String,
    /// `fileserver_followsymlinks`: descend into symlinked directories when listing.
    pub follow_symlinks: bool,
    /// `fileserver_ignoresymlinks`: leave symlinks out of listings.
    pub ignore_symlinks: bool,
}

impl Default for FileServerConfig {
    fn default() -> Self {
        Self {
            roots: vec![(
                "base".into(),
                vec!["/srv/salt".into(), "/srv/spm/salt".into()],
            )],
            backends: vec!["roots".into()],
            ignore_regex: Vec::new(),
            ignore_glob: Vec::new(),
            buffer_size: DEFAULT_FILE_BUFFER_SIZE,
            hash_type: "sha256".into(),
            follow_symlinks: true,
            ignore_symlinks: false,
        }
    }
}

/// `file_roots`/`pillar_roots`: `{env: dir | [dirs]}` in config order.
///
/// # Errors
/// [`ConfigError::Invalid`] for other shapes.
pub fn roots_option(
    o: &Options,
    key: &str,
    default: &[(&str, &[&str])],
) -> Result<Vec<(String, Vec<PathBuf>)>, ConfigError> {
    let bad = |m: String| ConfigError::Invalid {
        key: key.into(),
        message: m,
    };
    match o.get(key) {
        None | Some(serde_json::Value::Null) => Ok(default
            .iter()
            .map(|(e, dirs)| ((*e).to_owned(), dirs.iter().map(PathBuf::from).collect()))
            .collect()),
        Some(serde_json::Value::Object(m)) => m
            .iter()
            .map(|(env, dirs)| {
                let dirs = match dirs {
                    serde_json::Value::String(s) => vec![PathBuf::from(s)],
                    serde_json::Value::Array(a) => a
                        .iter()
                        .map(|d| {
                            d.as_str().map(PathBuf::from).ok_or_else(|| {
                                bad(format!("{env}: directories must be strings, found {d}"))
                            })
                        })
                        .collect::<Result<_, _>>()?,
                    serde_json::Value::Null => Vec::new(),
                    other => return Err(bad(format!("{env}: expected a list, found {other}"))),
                };
                Ok((env.clone(), dirs))
            })
            .collect(),
        Some(other) => Err(bad(format!(
            "expected a mapping of environments, found {other}"
        ))),
    }
}

impl FileServerConfig {
    /// Read Salt's file server options.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] for bad values, and for a `file_ignore_regex` brine cannot
    /// evaluate as Python does (a file Salt would hide must not be served).
    pub fn from_options(o: &Options) -> Result<Self, ConfigError> {
        let d = Self::default();
        let cfg = Self {
            roots: roots_option(
                o,
                "file_roots",
                &[("base", &["/srv/salt", "/srv/spm/salt"])],
            )?,
            backends: o.string_list("fileserver_backend")?.unwrap_or(d.backends),
            ignore_regex: o.string_list("file_ignore_regex")?.unwrap_or_default(),
            ignore_glob: o.string_list("file_ignore_glob")?.unwrap_or_default(),
            buffer_size: o.int("file_buffer_size", d.buffer_size as i64, 1..=(64 << 20))? as usize,
            hash_type: o
                .string("hash_type")?
                .map_or(d.hash_type, |h| h.to_ascii_lowercase()),
            follow_symlinks: o.bool("fileserver_followsymlinks", true)?,
            ignore_symlinks: o.bool("fileserver_ignoresymlinks", false)?,
        };
        if digest(&cfg.hash_type).is_none() {
            return Err(ConfigError::Invalid {
                key: "hash_type".into(),
                message: format!(
                    "{} is not one of md5, sha1, sha224, sha256, sha384, sha512",
                    cfg.hash_type
                ),
            });
        }
        Ok(cfg)
    }
}

use brine_proto::crypt::digest_named as digest;

/// A file found in the roots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// `join(root, rel)` (not resolved), as Salt reports it.
    pub path: PathBuf,
    /// The normalised relative path (the minion caches the file under it).
    pub rel: String,
    /// `list(os.stat(path))`: mode, ino, dev, nlink, uid, gid, size, atime, mtime, ctime.
    pub stat: Option<[i64; 10]>,
    /// What the hash cache compares (size, mtime ns, mtime, ctime, inode), from the same stat.
    stamp: (u64, i64, i64, i64, u64),
}

/// How long a path found inside its root is trusted without resolving its symlinks again: in
/// a highstate storm every file is asked for thousands of times a second.
const RESOLVED_TTL: std::time::Duration = std::time::Duration::from_secs(2);

/// Hashes computed, kept while the file's size, mtime, ctime and inode do not change.
type HashCache = HashMap<PathBuf, ((u64, i64, i64, i64, u64), String)>;

/// The roots file server.
#[derive(Debug)]
pub struct FileServer {
    cfg: FileServerConfig,
    ignore_regex: Vec<PyRegex>,
    hashes: Mutex<HashCache>,
    /// (root, path) pairs recently resolved inside the root, and when.
    resolved: Mutex<HashMap<(PathBuf, PathBuf), std::time::Instant>>,
    /// Listings per saltenv, and when they were made.
    listed: Mutex<HashMap<String, (std::time::Instant, Arc<Lists>)>>,
}

/// Python's `posixpath.normpath`.
pub fn normpath(p: &str) -> String {
    if p.is_empty() {
        return ".".into();
    }
    let initial = if p.starts_with("//") && !p.starts_with("///") {
        "//"
    } else if p.starts_with('/') {
        "/"
    } else {
        ""
    };
    let mut parts: Vec<&str> = Vec::new();
    for c in p.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                if !initial.is_empty() && parts.is_empty() {
                    continue;
                }
                if parts.last().is_some_and(|l| *l != "..") {
                    parts.pop();
                } else {
                    parts.push("..");
                }
            }
            c => parts.push(c),
        }
    }
    let joined = format!("{initial}{}", parts.join("/"));
    if joined.is_empty() {
        ".".into()
    } else {
        joined
    }
}

fn stat_list(m: &std::fs::Metadata) -> [i64; 10] {
    [
        i64::from(m.mode()),
        m.ino() as i64,
        m.dev() as i64,
        m.nlink() as i64,
        i64::from(m.uid()),
        i64::from(m.gid()),
        m.size() as i64,
        m.atime(),
        m.mtime(),
        m.ctime(),
    ]
}

fn s(v: &str) -> Value {
    Value::str(v)
}

fn load_str<'v>(load: &'v Value, key: &str) -> Option<&'v str> {
    load.get(key).and_then(Value::as_str)
}

/// `saltenv`, as Salt's wrappers take it: a string, or `str()` of another scalar.
fn saltenv_of(load: &Value) -> Option<String> {
    match load.get("saltenv")? {
        Value::Str(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::Int(i) => Some(i.to_string()),
        Value::Uint(u) => Some(u.to_string()),
        Value::Nil => Some("None".into()),
        Value::Bool(b) => Some(if *b { "True" } else { "False" }.into()),
        _ => None,
    }
}

impl FileServer {
    /// A file server over `cfg`.
    ///
    /// # Errors
    /// [`CoreError::Config`] for a `file_ignore_regex` brine cannot evaluate exactly.
    pub fn new(cfg: FileServerConfig) -> Result<Self, CoreError> {
        let mut ignore_regex = Vec::new();
        for r in &cfg.ignore_regex {
            match pyre::compile(r) {
                Ok(re) => ignore_regex.push(re),
                Err(e @ pyre::PyReError::Invalid { .. }) => {
                    // Salt drops an invalid entry with a warning.
                    warn!(regex = %r, error = %e, "file_ignore_regex entry dropped");
                }
                Err(e) => return Err(CoreError::config("file_ignore_regex", e)),
            }
        }
        for b in &cfg.backends {
            if b != "roots" {
                warn!(backend = %b, "fileserver_backend: brine serves the roots backend only");
            }
        }
        Ok(Self {
            cfg,
            ignore_regex,
            hashes: Mutex::new(HashMap::new()),
            resolved: Mutex::new(HashMap::new()),
            listed: Mutex::new(HashMap::new()),
        })
    }

    fn serves(&self) -> bool {
        self.cfg.backends.iter().any(|b| b == "roots")
    }

    /// `file_ignore_regex` (search) or `file_ignore_glob` (fnmatch) matches `name`. A name the
    /// regex translation cannot decide for is ignored (not served).
    fn ignored(&self, name: &str) -> bool {
        self.ignore_regex
            .iter()
            .any(|re| re.search(name) != Some(false))
            || self
                .cfg
                .ignore_glob
                .iter()
                .any(|g| brine_proto::target::fnmatch(g, name))
    }

    /// The environments, sorted (Salt's order is a set's, i.e. unspecified).
    pub fn envs(&self) -> Vec<String> {
        if !self.serves() {
            return Vec::new();
        }
        let set: BTreeSet<&String> = self.cfg.roots.iter().map(|(e, _)| e).collect();
        set.into_iter().cloned().collect()
    }

    /// The roots of `saltenv` (an `__env__` entry serves other names, with `__env__` in each
    /// directory replaced by the name; a name with a path in it is refused).
    fn roots_of(&self, saltenv: &str) -> Option<Vec<PathBuf>> {
        if !self.serves() {
            return None;
        }
        if let Some((_, dirs)) = self.cfg.roots.iter().find(|(e, _)| e == saltenv) {
            return Some(dirs.clone());
        }
        let (_, dirs) = self.cfg.roots.iter().find(|(e, _)| e == "__env__")?;
        if saltenv.is_empty()
            || saltenv.contains(['/', '\\', '\0'])
            || saltenv == "."
            || saltenv == ".."
        {
            warn!(saltenv, "refused: an __env__ saltenv with a path in it");
            return None;
        }
        Some(
            dirs.iter()
                .map(|d| PathBuf::from(d.to_string_lossy().replace("__env__", saltenv)))
                .collect(),
        )
    }

    /// Whether the real path of `full` stays inside the real path of `root`.
    /// [`FileServer::inside`], remembered for [`RESOLVED_TTL`].
    fn inside_cached(&self, root: &Path, full: &Path) -> bool {
        let key = (root.to_owned(), full.to_owned());
        let now = std::time::Instant::now();
        if crate::lock(&self.resolved)
            .get(&key)
            .is_some_and(|t| now.duration_since(*t) < RESOLVED_TTL)
        {
            return true;
        }
        let ok = Self::inside(root, full);
        if ok {
            let mut c = crate::lock(&self.resolved);
            if c.len() > 100_000 {
                c.clear();
            }
            c.insert(key, now);
        }
        ok
    }

    fn inside(root: &Path, full: &Path) -> bool {
        match (std::fs::canonicalize(root), std::fs::canonicalize(full)) {
            (Ok(r), Ok(f)) => f.starts_with(&r),
            _ => false,
        }
    }

    /// Salt's `find_file`: the first root of `saltenv` holding `path`.
    pub fn find(&self, path: &str, saltenv: &str) -> Option<Found> {
        let mut saltenv = saltenv.to_owned();
        let mut index: Option<usize> = None;
        let mut path = path.to_owned();
        if let Some(p) = path.strip_prefix('|') {
            path = p.to_owned();
        } else if let Some((p, query)) = path.clone().split_once('?') {
            path = p.to_owned();
            for kv in query.split('&') {
                if let Some((k, v)) = kv.split_once('=') {
                    match k {
                        "saltenv" => saltenv = v.to_owned(),
                        "index" => index = Some(v.parse().ok()?),
                        _ => {}
                    }
                }
            }
        }
        if path.contains('\0') {
            warn!(saltenv, "file request refused: NUL in the path");
            return None;
        }
        if path.starts_with('/') || path.contains("../") {
            warn!(path, saltenv, "file request refused: absolute path or ../");
            return None;
        }
        let rel = normpath(&path);
        if rel.starts_with('/') || rel.split('/').any(|c| c == "..") || rel == "." {
            if rel != "." {
                warn!(path, saltenv, "file request refused: outside the roots");
            }
            return None;
        }
        let roots = self.roots_of(&saltenv)?;
        let candidates: Vec<&PathBuf> = match index {
            Some(i) => roots.get(i).into_iter().collect(),
            None => roots.iter().collect(),
        };
        for root in candidates {
            let full = root.join(&rel);
            let Ok(meta) = std::fs::metadata(&full) else {
                continue;
            };
            if !meta.is_file() {
                continue;
            }
            if !self.inside_cached(root, &full) {
                warn!(path = %full.display(), root = %root.display(), "file request refused: it resolves outside its root (a symlink)");
                continue;
            }
            if self.ignored(&full.to_string_lossy()) {
                continue;
            }
            return Some(Found {
                stamp: (
                    meta.size(),
                    meta.mtime_nsec(),
                    meta.mtime(),
                    meta.ctime(),
                    meta.ino(),
                ),
                path: full,
                rel,
                stat: Some(stat_list(&meta)),
            });
        }
        None
    }

    /// `hash_type` hex digest of the found file (cached while it does not change).
    fn hash(&self, f: &Found) -> Option<String> {
        let stamp = f.stamp;
        if let Some((st, h)) = crate::lock(&self.hashes).get(&f.path)
            && *st == stamp
        {
            return Some(h.clone());
        }
        let md = digest(&self.cfg.hash_type)?;
        let mut hasher = openssl::hash::Hasher::new(md).ok()?;
        let mut file = std::fs::File::open(&f.path).ok()?;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = file.read(&mut buf).ok()?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]).ok()?;
        }
        let h = hex::encode(hasher.finish().ok()?);
        let mut cache = crate::lock(&self.hashes);
        if cache.len() > 100_000 {
            cache.clear();
        }
        cache.insert(f.path.clone(), (stamp, h.clone()));
        Some(h)
    }

    fn hash_dict(&self, f: &Found) -> Value {
        match self.hash(f) {
            Some(h) => Value::map()
                .with("hash_type", self.cfg.hash_type.as_str())
                .with("hsum", h),
            None => Value::map(),
        }
    }

    fn found_of(&self, load: &Value) -> Option<Found> {
        let path = load_str(load, "path")?;
        let saltenv = saltenv_of(load)?;
        self.find(path, &saltenv)
    }

    /// The reply to a file server request, or `None` when `cmd` is not one.
    pub fn request(&self, cmd: &str, load: &Value) -> Option<Value> {
        Some(match cmd {
            "_file_envs" => Value::Array(self.envs().iter().map(|e| s(e)).collect()),
            "_file_find" => {
                let empty = Value::map().with("path", "").with("rel", "");
                let Some(path) = load_str(load, "path").filter(|p| !p.is_empty()) else {
                    return Some(empty);
                };
                let saltenv = match load.get("saltenv") {
                    None => "base".to_owned(),
                    Some(_) => match saltenv_of(load) {
                        Some(e) => e,
                        None => return Some(Value::str("")),
                    },
                };
                match self.find(path, &saltenv) {
                    None => empty,
                    Some(f) => {
                        let mut v = Value::map()
                            .with("path", f.path.to_string_lossy().as_ref())
                            .with("rel", f.rel.as_str());
                        if let Some(st) = f.stat {
                            v.insert(
                                "stat",
                                Value::Array(st.iter().map(|n| Value::Int(*n)).collect()),
                            );
                        }
                        v.with("back", "roots")
                    }
                }
            }
            "_file_hash" => match self.found_of(load) {
                Some(f) => self.hash_dict(&f),
                None => Value::str(""),
            },
            "_file_hash_and_stat" => match self.found_of(load) {
                Some(f) => Value::Array(vec![
                    self.hash_dict(&f),
                    f.stat.map_or(Value::Nil, |st| {
                        Value::Array(st.iter().map(|n| Value::Int(*n)).collect())
                    }),
                ]),
                None => Value::Array(vec![Value::str(""), Value::Nil]),
            },
            "_serve_file" => self.serve(load),
            "_file_list" | "_file_list_emptydirs" | "_dir_list" => {
                let Some(saltenv) = saltenv_of(load) else {
                    return Some(Value::Array(vec![]));
                };
                let prefix = load_str(load, "prefix").unwrap_or("").trim_matches('/');
                let lists = self.lists_cached(&saltenv);
                let which = match cmd {
                    "_file_list" => &lists.files,
                    "_dir_list" => &lists.dirs,
                    _ => &lists.empty_dirs,
                };
                Value::Array(
                    which
                        .iter()
                        .filter(|p| p.starts_with(prefix))
                        .map(|p| s(p))
                        .collect(),
                )
            }
            "_symlink_list" => {
                let Some(saltenv) = saltenv_of(load) else {
                    return Some(Value::map());
                };
                let prefix = load_str(load, "prefix").unwrap_or("").trim_matches('/');
                let lists = self.lists_cached(&saltenv);
                Value::Map(
                    lists
                        .links
                        .iter()
                        .filter(|(k, _)| k.starts_with(prefix))
                        .map(|(k, v)| (s(k), s(v)))
                        .collect(),
                )
            }
            _ => return None,
        })
    }

    fn serve(&self, load: &Value) -> Value {
        let empty = || Value::map().with("data", "").with("dest", "");
        let (Some(path), Some(saltenv)) = (load_str(load, "path"), saltenv_of(load)) else {
            return empty();
        };
        let Some(loc) = load.get("loc").and_then(Value::as_i64) else {
            return empty();
        };
        let Some(f) = self.find(path, &saltenv) else {
            return empty();
        };
        let gzip = load.get("gzip").and_then(Value::as_i64).filter(|g| *g != 0);
        let mut data = Vec::new();
        if let Ok(mut file) = std::fs::File::open(&f.path)
            && file.seek(SeekFrom::Start(loc.max(0) as u64)).is_ok()
        {
            let _ = file
                .take(self.cfg.buffer_size as u64)
                .read_to_end(&mut data);
        }
        let mut reply = Value::map();
        match gzip {
            Some(level) if !data.is_empty() => {
                use std::io::Write as _;
                let level = u32::try_from(level.clamp(1, 9)).unwrap_or(6);
                let mut enc =
                    flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(level));
                let gz = enc.write_all(&data).and_then(|()| enc.finish());
                match gz {
                    Ok(gz) => {
                        reply.insert("data", Value::Bin(gz));
                        reply.insert("dest", f.rel.as_str());
                        reply.insert("gzip", Value::Int(level.into()));
                        return reply;
                    }
                    Err(_) => reply.insert("data", Value::Bin(data)),
                }
            }
            _ => reply.insert("data", Value::Bin(data)),
        }
        reply.insert("dest", f.rel.as_str());
        reply
    }

    /// [`FileServer::lists`], reused for [`RESOLVED_TTL`] (Salt reuses its lists for
    /// `fileserver_list_cache_time`, 20 s): every minion of a highstate storm lists the tree.
    fn lists_cached(&self, saltenv: &str) -> Arc<Lists> {
        let now = std::time::Instant::now();
        if let Some((t, l)) = crate::lock(&self.listed).get(saltenv)
            && now.duration_since(*t) < RESOLVED_TTL
        {
            return l.clone();
        }
        let l = Arc::new(self.lists(saltenv));
        let mut c = crate::lock(&self.listed);
        if c.len() > 1000 {
            c.clear();
        }
        c.insert(saltenv.to_owned(), (now, l.clone()));
        l
    }

    /// Files, directories, empty directories and symlinks of `saltenv`, over all its roots.
    fn lists(&self, saltenv: &str) -> Lists {
        let mut out = Lists::default();
        let Some(roots) = self.roots_of(saltenv) else {
            return out;
        };
        let (mut files, mut dirs, mut empty) = (BTreeSet::new(), BTreeSet::new(), BTreeSet::new());
        for root in &roots {
            let Ok(real_root) = std::fs::canonicalize(root) else {
                continue;
            };
            let mut seen = BTreeSet::new();
            self.walk(
                root,
                &real_root,
                root,
                &mut seen,
                &mut files,
                &mut dirs,
                &mut empty,
                &mut out.links,
            );
        }
        out.files = files.into_iter().collect();
        out.dirs = dirs.into_iter().collect();
        out.empty_dirs = empty.into_iter().collect();
        out
    }

    #[allow(clippy::too_many_arguments)]
    fn walk(
        &self,
        root: &Path,
        real_root: &Path,
        dir: &Path,
        seen: &mut BTreeSet<(u64, u64)>,
        files: &mut BTreeSet<String>,
        dirs: &mut BTreeSet<String>,
        empty: &mut BTreeSet<String>,
        links: &mut BTreeMap<String, String>,
    ) {
        let Ok(meta) = std::fs::metadata(dir) else {
            return;
        };
        // A symlink loop would walk forever.
        if !seen.insert((meta.dev(), meta.ino())) {
            return;
        }
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        let mut entries: Vec<std::fs::DirEntry> = rd.filter_map(Result::ok).collect();
        entries.sort_by_key(std::fs::DirEntry::file_name);
        let mut subdirs = Vec::new();
        for e in entries {
            let full = e.path();
            let Ok(rel) = full.strip_prefix(root) else {
                continue;
            };
            let rel = rel.to_string_lossy().into_owned();
            let Ok(lmeta) = std::fs::symlink_metadata(&full) else {
                continue;
            };
            let is_link = lmeta.file_type().is_symlink();
            if is_link && self.cfg.ignore_symlinks {
                continue;
            }
            if self.ignored(&rel) {
                continue;
            }
            // Whatever resolves outside the root is neither listed nor followed.
            let Ok(real) = std::fs::canonicalize(&full) else {
                continue;
            };
            if !real.starts_with(real_root) {
                continue;
            }
            if is_link && let Ok(target) = std::fs::read_link(&full) {
                links.insert(rel.clone(), target.to_string_lossy().into_owned());
            }
            let Ok(meta) = std::fs::metadata(&full) else {
                continue;
            };
            if meta.is_dir() {
                if std::fs::read_dir(&full).is_ok_and(|mut r| r.next().is_none()) {
                    empty.insert(rel.clone());
                }
                dirs.insert(rel);
                if !is_link || self.cfg.follow_symlinks {
                    subdirs.push(full);
                }
            } else {
                files.insert(rel);
            }
        }
        for d in subdirs {
            self.walk(root, real_root, &d, seen, files, dirs, empty, links);
        }
    }
}

#[derive(Debug, Default)]
struct Lists {
    files: Vec<String>,
    dirs: Vec<String>,
    empty_dirs: Vec<String>,
    links: BTreeMap<String, String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normpath_as_python() {
        for (p, want) in [
            ("", "."),
            ("a//b/./c", "a/b/c"),
            ("a/../b", "b"),
            ("../a", "../a"),
            ("/../a", "/a"),
            ("//a", "//a"),
            ("///a", "/a"),
            ("a/b/..", "a"),
            ("a/..", "."),
        ] {
            assert_eq!(normpath(p), want, "{p}");
        }
    }

    fn tree() -> (tempfile::TempDir, FileServer) {
        let d = tempfile::tempdir().unwrap();
        let base = d.path().join("base");
        let base2 = d.path().join("base2");
        std::fs::create_dir_all(base.join("d1/d2")).unwrap();
        std::fs::create_dir_all(base.join("empty")).unwrap();
        std::fs::create_dir_all(base2.join("sub")).unwrap();
        std::fs::write(base.join("a.txt"), "hello\n").unwrap();
        std::fs::write(base.join("d1/d2/f.sls"), "x: 1\n").unwrap();
        std::fs::write(base.join(".secret"), "no").unwrap();
        std::fs::write(base2.join("a.txt"), "shadowed\n").unwrap();
        std::fs::write(base2.join("b.txt"), "second root\n").unwrap();
        std::os::unix::fs::symlink("a.txt", base.join("link.txt")).unwrap();
        std::os::unix::fs::symlink("/etc/hostname", base.join("outfile")).unwrap();
        std::os::unix::fs::symlink("/etc", base.join("outdir")).unwrap();
        std::os::unix::fs::symlink("..", base.join("loop")).unwrap();
        let fs = FileServer::new(FileServerConfig {
            roots: vec![("base".into(), vec![base, base2])],
            ignore_regex: vec!["/\\.secret$".into(), "^\\.secret".into()],
            buffer_size: 4,
            ..FileServerConfig::default()
        })
        .unwrap();
        (d, fs)
    }

    fn req(fs: &FileServer, cmd: &str, load: Value) -> Value {
        fs.request(cmd, &load).unwrap()
    }

    #[test]
    fn find_serve_hash_list_like_salt_and_inside_the_roots() {
        let (_d, fs) = tree();
        let l = |p: &str| Value::map().with("path", p).with("saltenv", "base");
        // The first root wins; the second serves what the first lacks.
        let f = fs.find("a.txt", "base").unwrap();
        assert_eq!(f.rel, "a.txt");
        assert!(fs.find("b.txt", "base").is_some());
        assert_eq!(
            fs.find("d1//d2/./f.sls", "base").unwrap().rel,
            "d1/d2/f.sls"
        );
        // Traversal, absolute, NUL, outside symlinks, ignored files: nothing.
        for p in [
            "../a.txt",
            "d1/../../x",
            "/etc/passwd",
            "a\0b",
            "outfile",
            "outdir/hostname",
            ".secret",
            "..",
            ".",
        ] {
            assert!(fs.find(p, "base").is_none(), "{p}");
        }
        assert!(
            fs.find("link.txt", "base").is_some(),
            "a link inside the root is served"
        );
        // Chunks of file_buffer_size (4 here) until an empty one.
        let chunk = |loc: i64| req(&fs, "_serve_file", l("a.txt").with("loc", loc));
        assert_eq!(
            chunk(0),
            Value::map()
                .with("data", Value::Bin(b"hell".to_vec()))
                .with("dest", "a.txt")
        );
        assert_eq!(chunk(4).get("data"), Some(&Value::Bin(b"o\n".to_vec())));
        assert_eq!(chunk(6).get("data"), Some(&Value::Bin(vec![])));
        assert_eq!(
            req(&fs, "_serve_file", l("nope").with("loc", 0)),
            Value::map().with("data", "").with("dest", "")
        );
        let gz = req(
            &fs,
            "_serve_file",
            l("a.txt").with("loc", 0).with("gzip", 5),
        );
        assert_eq!(gz.get("gzip"), Some(&Value::Int(5)));
        let mut out = String::new();
        flate2::read::GzDecoder::new(gz.get("data").unwrap().as_bytes().unwrap())
            .read_to_string(&mut out)
            .unwrap();
        assert_eq!(out, "hell");
        // Hashes.
        let h = req(&fs, "_file_hash", l("a.txt"));
        assert_eq!(h.get("hash_type"), Some(&Value::str("sha256")));
        assert_eq!(
            h.get("hsum"),
            Some(&Value::str(
                "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03"
            ))
        );
        assert_eq!(req(&fs, "_file_hash", l("nope")), Value::str(""));
        assert_eq!(
            req(&fs, "_file_hash_and_stat", l("nope")),
            Value::Array(vec![Value::str(""), Value::Nil])
        );
        // Listings: sorted, both roots, nothing outside, nothing ignored, no loop.
        let list = |cmd: &str| {
            req(
                &fs,
                cmd,
                Value::map().with("saltenv", "base").with("prefix", ""),
            )
        };
        let strs = |v: Value| -> Vec<String> {
            v.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_str().unwrap().to_owned())
                .collect()
        };
        assert_eq!(
            strs(list("_file_list")),
            ["a.txt", "b.txt", "d1/d2/f.sls", "link.txt"]
        );
        assert_eq!(strs(list("_dir_list")), ["d1", "d1/d2", "empty", "sub"]);
        assert_eq!(strs(list("_file_list_emptydirs")), ["empty", "sub"]);
        assert_eq!(
            list("_symlink_list"),
            Value::map().with("link.txt", "a.txt")
        );
        assert_eq!(
            strs(req(
                &fs,
                "_file_list",
                Value::map().with("saltenv", "base").with("prefix", "/d1/")
            )),
            ["d1/d2/f.sls"]
        );
        assert_eq!(
            strs(req(&fs, "_file_list", Value::map().with("saltenv", "nope"))),
            Vec::<String>::new()
        );
        assert_eq!(
            req(&fs, "_file_envs", Value::map()),
            Value::Array(vec![Value::str("base")])
        );
    }
}

/// Python's truth of a configured value.
fn json_truthy(v: &serde_json::Value) -> bool {
    match v {
        serde_json::Value::Null => false,
        serde_json::Value::Bool(b) => *b,
        serde_json::Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        serde_json::Value::String(s) => !s.is_empty(),
        serde_json::Value::Array(a) => !a.is_empty(),
        serde_json::Value::Object(o) => !o.is_empty(),
    }
}

/// Everything a master answers about files: the file server, `_master_opts`, `_master_tops`
/// and `_file_recv` (`cp.push`).
#[derive(Debug)]
pub struct MasterFiles {
    /// The roots file server.
    pub server: FileServer,
    /// The pillar compiler (`None`: every minion gets an empty pillar).
    pub pillar: Option<crate::pillar::PillarCompiler>,
    /// The mine (`None`: stores nothing, finds nothing).
    pub mine: Option<crate::mine::Mine>,
    state_opts: Vec<(String, Value)>,
    /// `cachedir/minions` and the largest file a minion may push (bytes), with `file_recv`.
    recv: Option<(PathBuf, u64)>,
}

impl MasterFiles {
    /// From the master's configuration.
    ///
    /// # Errors
    /// [`CoreError`] for a `file_ignore_regex` brine cannot evaluate exactly, or an unusable
    /// pki directory.
    pub fn new(
        cfg: &crate::config::MasterConfig,
        grains: crate::mine::DataCache,
        pillars: crate::mine::DataCache,
    ) -> Result<Self, CoreError> {
        let opts = crate::json::from_json(&serde_json::Value::Object(cfg.raw.clone()));
        let keys = crate::keys::KeyStore::open(&cfg.pki_dir)?;
        let flag = |k: &str, d: bool| cfg.raw.get(k).map_or(d, json_truthy);
        let mine = crate::mine::Mine::new(
            crate::mine::MineOptions {
                dir: cfg.cachedir.join("minions"),
                acl: cfg.raw.get("mine_get").map(crate::json::from_json),
                enabled: flag("minion_data_cache", true) || flag("enforce_mine_cache", false),
            },
            keys,
            grains,
            pillars,
        );
        Ok(Self {
            mine: Some(mine),
            server: FileServer::new(cfg.files.clone())?,
            pillar: Some(crate::pillar::PillarCompiler::new(
                cfg.pillar.clone(),
                opts,
                cfg.nodegroups.clone(),
            )),
            state_opts: cfg
                .state_opts
                .iter()
                .map(|(k, v)| (k.clone(), crate::json::from_json(v)))
                .collect(),
            recv: cfg.file_recv.then(|| {
                (
                    cfg.cachedir.join("minions"),
                    cfg.file_recv_max_size.saturating_mul(1 << 20),
                )
            }),
        })
    }

    /// Serving no files (a master built without a configuration, in tests).
    pub fn off() -> Self {
        Self {
            server: FileServer::new(FileServerConfig {
                backends: Vec::new(),
                ..FileServerConfig::default()
            })
            .unwrap_or_else(|_| unreachable!("no regexes to compile")),
            pillar: None,
            mine: None,
            state_opts: Vec::new(),
            recv: None,
        }
    }

    /// The reply to `cmd` from the authenticated minion `id`, or `None` when `cmd` is not a
    /// file request.
    pub fn request(&self, id: &str, cmd: &str, load: &Value) -> Option<Value> {
        match cmd {
            "_master_opts" => {
                Some(self.master_opts(load.get("env_only").is_some_and(Value::is_truthy)))
            }
            // No master_tops modules run in brine: Salt's answer without any configured.
            "_master_tops" => Some(Value::map()),
            "_file_recv" => Some(self.file_recv(id, load)),
            "_mine" | "_mine_delete" | "_mine_flush" | "_mine_get" => {
                let Some(m) = &self.mine else {
                    return Some(if cmd == "_mine_get" {
                        Value::map()
                    } else {
                        Value::Bool(true)
                    });
                };
                Some(match cmd {
                    "_mine" => m.update(id, load),
                    "_mine_delete" => m.delete(id, load),
                    "_mine_flush" => m.flush(id),
                    _ => m.get(id, load),
                })
            }
            _ => self.server.request(cmd, load),
        }
    }

    fn master_opts(&self, env_only: bool) -> Value {
        let roots = Value::Map(
            self.server
                .envs()
                .iter()
                .map(|e| (Value::str(e), Value::Array(vec![])))
                .collect(),
        );
        let mut v = Value::map().with("file_roots", roots);
        let take = if env_only { 3 } else { self.state_opts.len() };
        for (k, val) in self.state_opts.iter().take(take) {
            v.insert(k, val.clone());
        }
        v
    }

    /// `_file_recv` (`cp.push`): refused unless `file_recv` is on, and then confined to
    /// `cachedir/minions/<id>/files`.
    fn file_recv(&self, id: &str, load: &Value) -> Value {
        let refuse = |why: &str| {
            warn!(minion_id = id, reason = why, "_file_recv refused");
            Value::Bool(false)
        };
        let (Some(path), Some(loc)) = (load.get("path"), load.get("loc").and_then(Value::as_i64))
        else {
            return refuse("no path or loc");
        };
        let Some((minions, max)) = &self.recv else {
            return refuse("file_recv is off");
        };
        let Some(parts) = path.as_array() else {
            return refuse("the path is not a list");
        };
        if loc < 0 {
            return refuse("negative loc");
        }
        let Some(data) = load.get("data").and_then(Value::as_bytes) else {
            // Salt raises on a load without data; its reply is "".
            return Value::str("");
        };
        if data.len() as u64 + loc as u64 > *max {
            return refuse("larger than file_recv_max_size");
        }
        let parts: Option<Vec<&str>> = parts.iter().map(Value::as_str).collect();
        let Some(parts) = parts else {
            return refuse("a path component that is not a string");
        };
        if parts.iter().any(|p| p.contains(['\0', '\\'])) {
            return refuse("NUL or backslash in the path");
        }
        let rel = normpath(&parts.join("/"));
        if rel.starts_with('/') || rel.split('/').any(|c| c == "..") || rel == "." {
            return refuse("the path leaves the minion's cache directory");
        }
        let files = minions.join(id).join("files");
        let dest = files.join(&rel);
        let Some(parent) = dest.parent() else {
            return refuse("no parent directory");
        };
        if std::fs::create_dir_all(parent).is_err() {
            return refuse("cannot create the directory");
        }
        // A symlink inside the minion's directory must not lead out of it either.
        match (std::fs::canonicalize(&files), std::fs::canonicalize(parent)) {
            (Ok(f), Ok(p)) if p.starts_with(&f) => {}
            _ => return refuse("the path leaves the minion's cache directory (a symlink)"),
        }
        if std::fs::symlink_metadata(&dest).is_ok_and(|m| m.file_type().is_symlink()) {
            return refuse("the destination is a symlink");
        }
        use std::io::Write as _;
        let append = loc != 0 && dest.exists();
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .append(append)
            .truncate(!append)
            .open(&dest);
        let ok = file.and_then(|mut f| {
            if loc != 0 && !append {
                f.seek(SeekFrom::Start(loc as u64))?;
            }
            f.write_all(data)
        });
        match ok {
            Ok(()) => Value::Bool(true),
            Err(e) => refuse(&format!("write failed: {e}")),
        }
    }
}
