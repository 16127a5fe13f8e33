//! longship-sim: a deterministic whole-system simulator for longship and
//! the checkers it runs.
//!
//! - [`linearizability`]: a Wing–Gong/Lowe linearizability checker over any
//!   sequential model (with register and key-value models, and parsers for
//!   Jepsen-recorded histories).
//! - [`sim`]: the simulator. NodeHosts of the real engine in manual mode on
//!   one thread, the in-memory network behind a seeded fault layer
//!   ([`net`]), fault-injecting file systems with crashes, client workloads
//!   on a key-value state machine ([`kv`]), and safety, convergence and
//!   linearizability checks. A seed replays a run exactly. In master mode
//!   ([`run_master_seed`], `longship-sim --master`) the longship master
//!   runs on three of the hosts and places, repairs and balances the
//!   shards while hosts also die for good and join.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod kv;
pub mod linearizability;
pub mod log;
pub mod net;
pub mod sim;

pub use sim::{
    Failure, Report, SimConfig, run, run_master_seed, run_master_seed_sync, run_seed, run_seed_sync,
};
