//! The master core shared by `mofm` and `syndic`: the pki directory (`keys`), the master's
//! secrets (`secrets`: `master.pem`, the publish AES key, serials, per-minion session keys), the
//! request handler for minion traffic (`requests`: `_auth`, `_pillar`, `_minion_event`,
//! `_return`, `_register_resources`, `ping`) and publishing (`publish`).
//!
//! It does not own the job cache, the event bus transport, the HTTP API or configuration files:
//! the daemons build those on top.

#![forbid(unsafe_code)]
#![warn(missing_docs, clippy::print_stdout, clippy::dbg_macro)]

pub mod events;
pub mod jobcache;
pub mod jobs;
pub mod json;
pub mod keys;
pub mod publish;
pub mod requests;
pub mod secrets;
pub mod targeting;
