//! The security regression suite: each test attacks the real daemons over real sockets, as an
//! API user reaching beyond their ACL, an accepted minion turned hostile, or an unauthenticated
//! peer on the network, and asserts what the attacker sees — and that the daemon still serves
//! a minion afterwards.
//!
//! `BRINE_BIN_DIR=<another build>/target/debug cargo test -p brine-security` runs the same
//! attacks against another build's daemons (how each test was shown to fail before its fix).
//! docs/security.md lists what each test covers.

mod harness;

mod acl;
mod holds;
mod hostile_minion;
mod network;

pub(crate) use harness::*;
