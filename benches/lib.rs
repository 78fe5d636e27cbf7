#![forbid(unsafe_code)]
//! Benchmarks only; see `codec.rs` and `crypto.rs`.
