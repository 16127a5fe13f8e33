//! Focused tests of the protocol rules, one (or a few) per rule, through the
//! public API. Each test's doc comment cites the section of the extended Raft
//! paper ("Raft §x") or of Ongaro's thesis ("thesis §x") that it checks;
//! longship's own contracts (limits, the update cycle) cite DESIGN.md.
//!
//! Two drivers are used: single cores over a `MemLog` stepped by hand
//! (`replica`, `cycle`), for rules about one replica's answer to one
//! message; and the testkit `Cluster`, for rules about several replicas.
//! The helpers are in `support`; one module per area of the protocol.

mod support;

mod bad_input;
mod check_quorum;
mod commit;
mod election;
mod forwarding;
mod invalid_messages;
mod invariants;
mod limits;
mod members;
mod membership;
mod persistence;
mod prevote;
mod quorum;
mod read_index;
mod recovery;
mod replication;
mod snapshots;
mod storage_errors;
mod transfer;
mod update_cycle;
