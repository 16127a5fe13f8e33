//! longship-kv: a replicated key-value server speaking the Redis protocol
//! (RESP2), built on longship's public API only.
//!
//! Keys map to shards by a stable hash; every node runs a replica of every
//! shard and serves any key (proposals on followers are forwarded to the
//! shard's leader). Writes use client sessions, so a request the server
//! retries is applied once. Reads are linearizable (ReadIndex) unless the
//! connection sent READONLY. MSET is per key, not atomic across shards.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod cluster;
pub mod resp;
pub mod server;
pub mod sm;
