//! Salt-style configuration files.
//!
//! `load(dir, "minion")` reads `dir/minion` and then every `dir/minion.d/*.conf` in name order;
//! keys in later files replace earlier ones (Salt's `include` of `default_include`). Values are
//! YAML 1.1 as Salt reads them (`yes`/`no`/`on`/`off` are booleans).

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

/// Why configuration could not be loaded or is invalid.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid YAML, or not a mapping at the top.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
    /// A key has a value of the wrong type or out of range.
    #[error("invalid value for {key}: {message}")]
    Invalid {
        /// The option.
        key: String,
        /// What is wrong.
        message: String,
    },
}

/// The merged options of one daemon, in file order.
#[derive(Debug, Clone, Default)]
pub struct Options {
    map: Map<String, Value>,
    files: Vec<PathBuf>,
}

/// Salt's `prepend_root_dir`: an absolute path not already under `root` is moved under it.
pub fn under_root(root: &Path, p: &Path) -> PathBuf {
    if root == Path::new("/") || p.starts_with(root) {
        return p.to_owned();
    }
    root.join(p.strip_prefix("/").unwrap_or(p))
}

/// Parse one YAML document into a mapping (an empty file is an empty mapping).
///
/// # Errors
/// [`ConfigError::Parse`] if it is not YAML or not a mapping.
pub fn parse_str(text: &str, origin: &Path) -> Result<Map<String, Value>, ConfigError> {
    if text.trim().is_empty() {
        return Ok(Map::new());
    }
    let v: Value = serde_saphyr::from_str(text).map_err(|e| ConfigError::Parse {
        path: origin.to_owned(),
        message: e.to_string(),
    })?;
    match v {
        Value::Object(m) => Ok(m),
        Value::Null => Ok(Map::new()),
        other => Err(ConfigError::Parse {
            path: origin.to_owned(),
            message: format!("top level must be a mapping, found {other}"),
        }),
    }
}

/// Load `dir/name` (missing is allowed: Salt's defaults apply) and `dir/name.d/*.conf`.
///
/// # Errors
/// [`ConfigError`] for unreadable or unparsable files.
pub fn load(dir: &Path, name: &str) -> Result<Options, ConfigError> {
    let mut opts = Options::default();
    let main = dir.join(name);
    if main.exists() {
        opts.merge_file(&main)?;
    }
    let dropins = dir.join(format!("{name}.d"));
    if let Ok(rd) = std::fs::read_dir(&dropins) {
        let mut files: Vec<PathBuf> = rd
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "conf"))
            .collect();
        files.sort();
        for f in files {
            opts.merge_file(&f)?;
        }
    }
    Ok(opts)
}

impl Options {
    /// Options from a string (for tests and `--config-text`).
    ///
    /// # Errors
    /// [`ConfigError::Parse`].
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        Ok(Self {
            map: parse_str(text, Path::new("<string>"))?,
            files: vec![],
        })
    }

    fn merge_file(&mut self, path: &Path) -> Result<(), ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        for (k, v) in parse_str(&text, path)? {
            self.map.insert(k, v);
        }
        self.files.push(path.to_owned());
        Ok(())
    }

    /// Set a key (command-line overrides).
    pub fn set(&mut self, key: &str, value: Value) {
        self.map.insert(key.to_owned(), value);
    }

    /// Every option as read (file order, later files overriding earlier ones).
    pub fn all(&self) -> &Map<String, Value> {
        &self.map
    }

    /// The files read, in order.
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// The raw value of `key`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    /// Keys present that are not in `known` (the daemon warns about them).
    pub fn unknown_keys(&self, known: &[&str]) -> Vec<String> {
        self.map
            .keys()
            .filter(|k| !known.contains(&k.as_str()))
            .cloned()
            .collect()
    }

    /// A string option (numbers are accepted and stringified, as Salt does for ids).
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] if the value is a list or mapping.
    pub fn string(&self, key: &str) -> Result<Option<String>, ConfigError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(Value::Number(n)) => Ok(Some(n.to_string())),
            Some(Value::Bool(b)) => Ok(Some(if *b { "True" } else { "False" }.into())),
            Some(other) => Err(invalid(key, format!("expected a string, found {other}"))),
        }
    }

    /// A boolean option (`True`, `yes`, `on`... as YAML 1.1 reads them; also `"true"` strings).
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] for anything else.
    pub fn bool(&self, key: &str, default: bool) -> Result<bool, ConfigError> {
        match self.get(key) {
            None => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(Value::Number(n)) if n.as_i64().is_some() => Ok(n.as_i64() != Some(0)),
            Some(Value::String(s)) => match s.to_ascii_lowercase().as_str() {
                "true" | "yes" | "on" | "1" => Ok(true),
                "false" | "no" | "off" | "0" => Ok(false),
                _ => Err(invalid(key, format!("expected a boolean, found {s:?}"))),
            },
            Some(other) => Err(invalid(key, format!("expected a boolean, found {other}"))),
        }
    }

    /// An integer option within `range`.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] if not an integer or out of range.
    pub fn int(
        &self,
        key: &str,
        default: i64,
        range: std::ops::RangeInclusive<i64>,
    ) -> Result<i64, ConfigError> {
        let v = match self.get(key) {
            None => return Ok(default),
            Some(Value::Number(n)) => n
                .as_i64()
                .or_else(|| n.as_f64().filter(|f| f.fract() == 0.0).map(|f| f as i64)),
            Some(Value::String(s)) => s.trim().parse().ok(),
            Some(_) => None,
        };
        let v =
            v.ok_or_else(|| invalid(key, format!("expected an integer, found {}", self.map[key])))?;
        if !range.contains(&v) {
            return Err(invalid(
                key,
                format!("{v} is outside {}..={}", range.start(), range.end()),
            ));
        }
        Ok(v)
    }

    /// A string-or-list option (`master: a` or `master: [a, b]`).
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] for other shapes.
    pub fn string_list(&self, key: &str) -> Result<Option<Vec<String>>, ConfigError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(vec![s.clone()])),
            Some(Value::Array(a)) => a
                .iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s.clone()),
                    Value::Number(n) => Ok(n.to_string()),
                    other => Err(invalid(
                        key,
                        format!("list items must be strings, found {other}"),
                    )),
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
            Some(other) => Err(invalid(
                key,
                format!("expected a string or a list, found {other}"),
            )),
        }
    }
}

fn invalid(key: &str, message: String) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_owned(),
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_1_1_booleans_and_dropins() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("minion"),
            "master: salt1\nmaster_failback: yes\nid: 1234\nacceptance_wait_time: 10\n",
        )
        .unwrap();
        std::fs::create_dir(dir.path().join("minion.d")).unwrap();
        std::fs::write(dir.path().join("minion.d/10-a.conf"), "master: [m1, m2]\n").unwrap();
        std::fs::write(
            dir.path().join("minion.d/20-b.conf"),
            "master_type: failover\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("minion.d/ignored.txt"), "master: nope\n").unwrap();
        let o = load(dir.path(), "minion").unwrap();
        assert_eq!(
            o.string_list("master").unwrap(),
            Some(vec!["m1".into(), "m2".into()])
        );
        assert!(o.bool("master_failback", false).unwrap());
        assert_eq!(o.string("id").unwrap().as_deref(), Some("1234"));
        assert_eq!(
            o.string("master_type").unwrap().as_deref(),
            Some("failover")
        );
        assert_eq!(o.files().len(), 3);
        assert_eq!(
            o.unknown_keys(&["master", "master_failback", "id", "master_type"]),
            vec!["acceptance_wait_time"]
        );
    }

    #[test]
    fn root_dir_is_prepended_like_salt() {
        let r = Path::new("/srv/r");
        assert_eq!(
            under_root(r, Path::new("/etc/salt/pki")),
            PathBuf::from("/srv/r/etc/salt/pki")
        );
        assert_eq!(
            under_root(r, Path::new("/srv/r/pki")),
            PathBuf::from("/srv/r/pki")
        );
        assert_eq!(
            under_root(Path::new("/"), Path::new("/etc")),
            PathBuf::from("/etc")
        );
    }

    #[test]
    fn bad_values_are_clear_errors() {
        let o =
            Options::parse("master_alive_interval: soon\nmaster: {a: 1}\nflag: maybe\n").unwrap();
        let e = o
            .int("master_alive_interval", 0, 0..=86400)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("master_alive_interval") && e.contains("integer"),
            "{e}"
        );
        assert!(o.string_list("master").is_err());
        assert!(o.bool("flag", false).is_err());
        assert!(Options::parse("- a\n- b\n").is_err());
        assert!(Options::parse("a: [\n").is_err());
    }
}
