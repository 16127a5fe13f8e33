//! longship: multi-group Raft consensus for Rust.
//!
//! One [`NodeHost`] per server hosts replicas of many Raft groups (shards)
//! that share one log storage (a write-ahead log with one fsync per worker
//! cycle for all shards), one transport and fixed worker pools. Applications
//! implement a state machine trait ([`StateMachine`],
//! [`ConcurrentStateMachine`] or [`OnDiskStateMachine`]); longship gives
//! them proposals, linearizable reads, exactly-once client sessions,
//! snapshots with log compaction, membership changes and leadership transfer.
//!
//! See [`NodeHost`] for an example.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod builder;
mod compression;
mod config;
mod engine;
mod error;
pub mod events;
mod host;
mod inbound;
mod info;
mod latency;
mod metrics;
mod metrics_http;
mod nodehost;
mod owner;
mod replica;
mod reporter;
mod request;
mod rsm;
mod session;
mod sm;
mod snapshot_files;
mod submit;
mod tombstone;
pub mod tools;
mod types;
mod verify;
mod work;

pub use builder::NodeHostBuilder;
pub use compression::Compression;
#[doc(hidden)]
pub use compression::fuzzing;
pub use config::{Config, NodeHostConfig};
pub use error::{Error, Result};
pub use events::EventListener;
pub use info::{LogInfo, MembershipInfo, NodeHostInfo, NodeHostInfoOption, ShardInfo};
pub use latency::LatencyKind;
pub use longship_raft::{HardState, Index, ReplicaId, Role, ShardId, Status as RaftStatus, Term};
pub use metrics::{Gauges, Metrics};
pub use nodehost::NodeHost;
pub use reporter::{
    HostReport, MAX_REPORT_METADATA_BYTES, MAX_REPORTED_MEMBERS, MAX_REPORTED_REPLICAS,
    MAX_REQUESTS_PER_ROUND, MasterClient, MasterClientError, MasterReporter, MasterRequest,
    ReplicaFactory, ReplicaReport, ReportRounds, ReportingOptions,
};
pub use request::RequestHandle;
pub use session::Session;
pub use sm::{
    ConcurrentStateMachine, OnDiskStateMachine, SNAPSHOT_ABORTED, SNAPSHOT_FILE_METADATA_MAX_BYTES,
    SNAPSHOT_FILES_MAX, SNAPSHOT_FILES_METADATA_MAX_BYTES, SmEntry, SmError, SmResult,
    SnapshotFile, SnapshotFiles, StateMachine, StopFlag,
};
pub use submit::NodeUser;
pub use types::{Leader, SnapshotOption, SnapshotResult, Start};

/// The transports a [`NodeHostBuilder`] takes (from `longship-transport`):
/// TCP (the default of [`NodeHost::new`]) and an in-memory network for
/// tests and examples that run several NodeHosts in one process; and the
/// error [`Error::Transport`] carries.
pub mod transport {
    pub use longship_transport::{
        MemNetwork, MemTransport, SendError, TcpConfig, TcpTransport, TlsPaths, Transport,
    };
}

/// The storage parts a [`NodeHostBuilder`] takes (from `longship-storage`):
/// file systems and log storage; and the errors that
/// [`Error::Storage`] and [`Error::Snapshot`] carry.
pub mod storage {
    pub use longship_storage::Error;
    pub use longship_storage::logdb::{LogDb, MemLogDb};
    pub use longship_storage::snapshot::SnapshotError;
    pub use longship_storage::vfs::{FileSystem, MemFs, OsFs};
}
