//! The master core shared by `mofm` and `syndic`: the pki directory (`keys`), the master's
//! secrets (`secrets`: `master.pem`, the publish AES key, serials, per-minion session keys), the
//! request handler for minion traffic (`requests`: `_auth`, `_pillar`, `_minion_event`,
//! `_return`, `_register_resources`, `ping`) and publishing (`publish`). Minions' file and data
//! requests are answered by the file server (`fileserver`), the pillar compiler (`pillar`, with
//! `jinja` and `yaml`) and the mine (`mine`).
//!
//! It also holds the master's configuration (`config`: Salt's `master` file), the embedded job
//! cache (`jobcache`) and the Redis one (`redis_cache`), the event bus (`events`), `external_auth` and its ACLs (`eauth`), the
//! serving core (`server`) that mofm and syndic run, and the links to upper masters that make a
//! master a syndic (`upstream`). The HTTP API is mofm's own.

#![forbid(unsafe_code)]
#![warn(missing_docs, clippy::print_stdout, clippy::dbg_macro)]

pub mod config;
pub mod eauth;
pub mod error;
pub mod events;
pub mod fileserver;
pub mod jinja;
pub mod jobcache;
pub mod jobs;
pub mod json;
pub mod key_sync;
pub mod keys;
pub mod mine;
pub mod pillar;
pub mod publish;
pub mod redis_cache;
pub mod requests;
pub mod secrets;
pub mod server;
pub mod targeting;
pub mod upstream;
pub mod yaml;

pub use error::CoreError;

/// Where the root token lives (mode 0600): local `brine` commands read it, like Salt's root key.
pub fn root_token_path(cachedir: &std::path::Path) -> std::path::PathBuf {
    cachedir.join("brine").join("root_token")
}

/// Lock a mutex, taking the data even if a panicking thread poisoned it (a request handler's
/// panic must not stop the master).
pub fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
