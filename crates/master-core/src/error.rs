//! The master core's error type: what failed, and on what path or option, for the daemon to
//! print and exit with.

use std::path::{Path, PathBuf};

/// Why the master core could not do something at start or on request.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    /// A file or directory could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// A key could not be parsed or generated.
    #[error("{}: {message}", path.display())]
    Key {
        /// The key file (empty when the key was being generated).
        path: PathBuf,
        /// What was wrong with it.
        message: String,
    },
    /// A configuration value that cannot be used.
    #[error("{option}: {message}")]
    Config {
        /// The option (`external_auth`, `file_roots`...).
        option: String,
        /// What is wrong with its value.
        message: String,
    },
    /// The pki directory cannot be used.
    #[error(transparent)]
    Keys(#[from] crate::keys::KeyError),
    /// Sockets or listeners could not be set up.
    #[error("{0}")]
    Bind(String),
}

impl CoreError {
    /// A closure mapping an I/O error on `path` (for `map_err`).
    pub fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Self + '_ {
        move |source| Self::Io {
            path: path.to_owned(),
            source,
        }
    }

    /// A key error on `path`.
    pub fn key(path: &Path, message: impl std::fmt::Display) -> Self {
        Self::Key {
            path: path.to_owned(),
            message: message.to_string(),
        }
    }

    /// A configuration error on `option`.
    pub fn config(option: &str, message: impl std::fmt::Display) -> Self {
        Self::Config {
            option: option.to_owned(),
            message: message.to_string(),
        }
    }
}
