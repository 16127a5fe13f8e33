//! longship-master: a master that keeps every shard replicated.
//!
//! NodeHosts report to the master ([`longship::MasterReporter`] with a
//! [`longship::MasterClient`], here [`InProcessMasterClient`]); the master
//! declares a host dead once it was silent for longer than
//! [`MasterConfig::dead_after_ms`], replaces its replicas on live hosts
//! (add as non-voting, catch up, promote, then remove the lost one),
//! rebalances replicas and leaders, and creates shards.
//!
//! The master is itself a longship shard ([`MASTER_SHARD_ID`], run by
//! [`MasterNode`] on 3 or 5 NodeHosts): its state ([`MasterState`]) is
//! replicated, and every decision is a pure function of that state and of
//! replicated time ([`decide::decide`]), evaluated when a tick proposed by
//! the master's leader is applied. A leader change therefore neither
//! repeats nor loses an operation. docs/master.md has the design and the
//! safety argument.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod decide;
pub mod model;
pub mod rpc;
mod service;
pub mod sm;

pub use model::{Command, MasterConfig, MasterState};
pub use service::{
    InProcessMasterClient, MasterAwareFactory, MasterError, MasterNode, MasterOptions,
    MasterTicker, TickerStopped, create_shard, drain_host, master_replica_config, read_state,
    report_from, to_master_request,
};
pub use sm::MasterStateMachine;

use longship::ShardId;

/// The shard id the master runs as (reserved: applications must not use
/// it). "MASTER" in ASCII.
pub const MASTER_SHARD_ID: ShardId = ShardId(0x4d41_5354_4552);
