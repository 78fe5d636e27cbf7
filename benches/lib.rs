//! Benchmarks only; see `codec.rs` and `crypto.rs`.
