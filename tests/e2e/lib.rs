#![forbid(unsafe_code)]
//! Cross-process tests live in `interop/`; this library is empty.
