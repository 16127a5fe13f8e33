//! `longship-raft`: the pure Raft protocol core of longship.
//!
//! A deterministic state machine with no I/O, no threads, no clock and no OS
//! randomness. Its inputs are messages, ticks and local requests; its output is
//! an [`Update`] listing what to persist, what to send (and whether it may be
//! sent before persisting), what to apply and which reads are ready.
//!
//! References cited in the code: "Raft §x" is the extended Raft paper
//! (Ongaro & Ousterhout, 2014); "thesis §x" is Ongaro's PhD thesis (2014).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod codec;
mod entry;
mod ids;
mod log_reader;
mod membership;
mod memlog;
mod message;
mod rng;

pub use entry::{
    CLIENT_ID_NOOP, ENTRY_OVERHEAD_BYTES, Entry, EntryType, HardState, SERIES_ID_NOOP,
    SERIES_ID_REGISTER, SERIES_ID_UNREGISTER, SnapshotMeta, entries_size,
};
pub use ids::{Index, ReplicaId, ShardId, Term};
pub use log_reader::{LogError, LogReader};
pub use membership::{ConfigChange, ConfigChangeRejected, ConfigChangeType, Membership};
pub use memlog::{MemLog, limit_size};
pub use message::{
    CAMPAIGN_TRANSFER, COMMIT_ONLY, LOG_LOST, MESSAGE_BATCH_VERSION, Message, MessageBatch,
    MessageType,
};
pub use rng::Rng;

mod bootstrap;
mod config;
mod log;
mod progress;
pub mod quorum;
mod raft;
mod read_only;
mod recovery;
mod update;

pub use bootstrap::bootstrap_entries;
pub use config::{ConfigError, RaftConfig};
pub use log::RaftLog;
pub use progress::{Inflights, Progress, ProgressState};
pub use raft::{
    INDEX_MAX, InvalidReason, InvariantViolation, NOT_A_MEMBER, Raft, Role, Status, TERM_JUMP_MAX,
    TERM_MAX,
};
pub use recovery::RecoveryGuard;
pub use update::{LeaderInfo, ProposalError, ReadState, Update, WriteToken};
/// A deterministic multi-replica cluster for tests of the core (and of
/// code built on it): behind the `testkit` feature, off by default.
#[cfg(feature = "testkit")]
pub mod testkit;
