//! longship: multi-group Raft consensus for Rust.
#![forbid(unsafe_code)]
#![warn(missing_docs)]
