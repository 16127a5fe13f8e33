//! `longship-storage`: everything of longship that touches disk.
//!
//! * [`vfs`]: a small file-system abstraction with an OS, an in-memory and a
//!   fault-injecting implementation.
//! * [`snapshot`]: the snapshot file store of a replica (atomic, checksummed
//!   snapshot directories; export, import and chunked receive).
//!
//! It knows bytes and fsync, not Raft rules.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod snapshot;
pub mod vfs;
