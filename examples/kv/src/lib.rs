//! longship-kv: a replicated key-value server speaking the Redis protocol
//! (RESP2), built on longship's public API only.
//!
//! Keys map to Redis Cluster hash slots and slots to shards (see
//! [`slots`]); every node runs a replica of every
//! shard and serves any key (proposals on followers are forwarded to the
//! shard's leader). Writes use client sessions, so a request the server
//! retries is applied once. Reads are linearizable (ReadIndex, or inside
//! the log next to the writes of the same pipeline) unless the connection
//! sent READONLY. Within one connection, commands on the same shard take
//! effect in the order sent and replies come back in order at any pipeline
//! depth (see [`server`]). MSET, MGET, DEL and EXISTS are per key, not
//! atomic across shards; MULTI/EXEC on one shard is one log entry. The
//! state machine ([`sm`], [`exec`]) runs Redis commands on strings and
//! hashes with expiry on a replicated clock. Clients may be asked for a
//! password and served over TLS ([`tls`]).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod cluster;
pub mod commands;
pub mod exec;
pub mod placed;
pub mod resp;
pub mod server;
pub mod slots;
pub mod sm;
pub mod tls;
