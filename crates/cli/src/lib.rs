//! brine's command-line tools. `brine-key` works on the master's pki directory like `salt-key`
//! (same flags, same output); `brine` and `brine-run` speak mofm's HTTP API ([`client`]) and
//! print with Salt's outputters ([`output`]).

#![forbid(unsafe_code)]

pub mod args;
pub mod client;
pub mod key;
pub mod output;
