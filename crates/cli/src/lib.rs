//! brine's command-line tools. `brine-key` works on the master's pki directory like `salt-key`
//! (same flags, same output); `brine` and `brine-run` come with the HTTP API.

#![forbid(unsafe_code)]

pub mod key;
