//! The security regression suite lives in `main.rs` (`cargo test -p brine-security`).
