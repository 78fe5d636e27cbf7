//! Sans-IO implementation of SaltStack's wire protocol (Salt 3006, 3007 and 3008).
//!
//! This crate owns the bytes and the rules: Salt's msgpack conventions ([`codec`], [`value`]),
//! the request and publish envelopes ([`envelope`]) and the typed loads inside them ([`loads`]),
//! RSA and Crypticle as Salt uses them ([`crypt`]), the `_auth` handshake as state machines for
//! both sides ([`auth`]), job ids ([`jid`]) and target matching ([`target`]).
//!
//! It does **not** own sockets, files, clocks or randomness: no async runtime, no ZeroMQ, no file
//! system. Callers pass the time and an [`crypt::Entropy`] source in, and perform the I/O the
//! state machines ask for. `brine-transport` drives this crate over ZeroMQ.

#![forbid(unsafe_code)]
#![warn(missing_docs, clippy::print_stdout, clippy::dbg_macro)]

pub mod auth;
pub mod codec;
pub mod crypt;
pub mod envelope;
pub mod feed;
pub mod jid;
pub mod loads;
pub mod target;
pub mod value;

pub use value::Value;
