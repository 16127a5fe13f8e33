//! `longship-storage`: everything of longship that touches disk.
//!
//! * [`vfs`]: a small file-system abstraction with an OS, an in-memory and a
//!   fault-injecting implementation.
//! * [`logdb`]: log storage — the [`LogDb`](logdb::LogDb) trait, the
//!   segmented write-ahead log [`Wal`](logdb::Wal) shared by every shard of a
//!   NodeHost, and [`MemLogDb`](logdb::MemLogDb) for tests.
//! * [`snapshot`]: the snapshot file store of a replica (atomic, checksummed
//!   snapshot directories; export, import and chunked receive).
//!
//! It knows bytes and fsync, not Raft rules.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod error;
pub mod logdb;
pub mod snapshot;
pub mod vfs;

pub use error::{Error, Result};
pub use logdb::{LogDb, LogUpdate, MemLogDb, ReplicaLog, ReplicaState, Wal, WalOptions};
