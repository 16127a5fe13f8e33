//! `longship-storage`: everything of longship that touches disk.
//!
//! * [`vfs`]: a small file-system abstraction with an OS, an in-memory and a
//!   fault-injecting implementation.
//!
//! It knows bytes and fsync, not Raft rules.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod vfs;
