//! Live interop against real Salt 3006.30, 3007.17 and 3008.5 (installed by
//! `scripts/salt-peer.sh`). These never skip: a missing peer fails with its install command.

mod rust_master;
mod rust_minion;
mod salt_harness;
