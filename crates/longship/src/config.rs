//! Configuration of a NodeHost and of each replica.

use std::path::PathBuf;

use longship_raft::{ReplicaId, ShardId};

use crate::compression::Compression;
use crate::error::{Error, Result};

/// Configuration of one replica of one shard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// The shard (non-zero).
    pub shard_id: ShardId,
    /// This replica (non-zero, unique within the shard, never reused).
    pub replica_id: ReplicaId,
    /// Election timeout in RTTs; must exceed `2 * heartbeat_rtt`.
    pub election_rtt: u64,
    /// Heartbeat interval in RTTs.
    pub heartbeat_rtt: u64,
    /// Leaders step down without a quorum (thesis §6.2).
    pub check_quorum: bool,
    /// Pre-vote before elections (thesis §9.6).
    pub pre_vote: bool,
    /// Leader leases for reads (thesis §6.4.1; off by default): a leader
    /// that heard from a quorum within the last election timeout answers
    /// `read_index` at once, without a heartbeat round. Requires
    /// `check_quorum`. Safe only while clocks run at nearly the same rate:
    /// the lease assumes that no replica's election timer runs out sooner
    /// than the leader's (bounded clock drift, no process paused for longer
    /// than an election timeout while it believes it leads, no replica
    /// restarted within an election timeout of answering a heartbeat). It
    /// is off during a leadership transfer. Without it, every read batch
    /// costs a heartbeat round trip to a quorum.
    pub lease_read: bool,
    /// Take a snapshot every this many applied entries (0 = never automatically).
    pub snapshot_entries: u64,
    /// Entries kept in the log behind a snapshot (so slightly lagging
    /// followers catch up from the log rather than a snapshot).
    pub compaction_overhead: u64,
    /// Reject a membership change that names an outdated config-change index.
    pub ordered_config_change: bool,
    /// Start as a non-voting replica.
    pub is_non_voting: bool,
    /// Start as a witness: it votes and acknowledges entries but holds no
    /// state machine data (it receives entries without payloads); it takes
    /// no proposals, sessions or reads. Its snapshots (`snapshot_entries`)
    /// hold metadata only and compact its log like any replica's.
    pub is_witness: bool,
    /// Most bytes of proposals the leader holds uncommitted (default 256 MiB;
    /// 0 = unlimited); beyond it proposals fail with [`Error::SystemBusy`]
    /// (memory per shard stays bounded when followers or the disk fall
    /// behind). dragonboat calls
    /// it `MaxInMemLogSize`; it is handed to the protocol core's setting of
    /// the same name.
    pub max_uncommitted_bytes: u64,
    /// Stop ticking after this shard saw no traffic for a while.
    pub quiesce: bool,
    /// Most client sessions the shard keeps (LRU eviction beyond). The
    /// bound travels in each session's registration entry and is applied
    /// from there, so replicas configured differently still evict the same
    /// sessions (the replicated table never diverges); the bound of the
    /// replica a client registers through is the one in force for that
    /// registration.
    pub max_sessions: usize,
    /// Committed batches up to this many bytes are applied by the step
    /// worker itself when nothing older waits for the apply worker, which
    /// saves two thread hand-offs per commit (0, the default: every batch
    /// goes to the apply workers, as in dragonboat). Turn it on for a state
    /// machine whose `update` is quick for small batches (in-memory maps):
    /// while it applies inline, the other shards of its step worker wait,
    /// so an `update` that can block (synchronous disk writes, remote
    /// calls, locks held elsewhere) must leave it at 0.
    pub max_inline_apply_bytes: u64,
    /// How this replica compresses the payloads of the proposals made
    /// through it (dragonboat's `EntryCompressionType`; default none). The
    /// proposing thread compresses; every replica decompresses before its
    /// state machine sees the command, whatever its own setting, because a
    /// compressed entry records its algorithm (entry type `Encoded`, see
    /// `docs/formats.md`). A payload compression does not make smaller is
    /// proposed as it is. Size limits (`max_proposal_bytes`) apply to the
    /// uncompressed payload; the log, the network and the uncommitted-bytes
    /// limit see the compressed one.
    pub entry_compression: Compression,
    /// How this replica compresses the state machine's part of the
    /// snapshots it saves and exports (dragonboat's
    /// `SnapshotCompressionType`; default none). The algorithm is recorded
    /// in the snapshot's data header, so followers receiving the snapshot,
    /// a restart and an import read it whatever their own setting. The
    /// session table and attached files are not compressed.
    pub snapshot_compression: Compression,
}

impl Config {
    /// A config with defaults for replica `replica_id` of shard `shard_id`.
    ///
    /// ```
    /// use longship::{Config, ReplicaId, ShardId};
    /// let cfg = Config::new(ShardId(128), ReplicaId(1));
    /// assert_eq!(cfg.election_rtt, 10);
    /// ```
    pub fn new(shard_id: ShardId, replica_id: ReplicaId) -> Config {
        Config {
            shard_id,
            replica_id,
            ..Config::default()
        }
    }

    /// Checks every field; the error names the first invalid one.
    pub fn validate(&self) -> Result<()> {
        if self.shard_id.0 == 0 {
            return Err(Error::invalid_config("shard_id", "must be non-zero"));
        }
        if self.replica_id.is_none() {
            return Err(Error::invalid_config("replica_id", "must be non-zero"));
        }
        if self.heartbeat_rtt == 0 {
            return Err(Error::invalid_config("heartbeat_rtt", "must be non-zero"));
        }
        if self.election_rtt <= 2 * self.heartbeat_rtt {
            return Err(Error::invalid_config(
                "election_rtt",
                "must be greater than 2 * heartbeat_rtt",
            ));
        }
        if self.lease_read && !self.check_quorum {
            return Err(Error::invalid_config(
                "lease_read",
                "requires check_quorum (a leader must step down when it loses its quorum)",
            ));
        }
        if self.is_witness && self.is_non_voting {
            return Err(Error::invalid_config(
                "is_witness",
                "a replica cannot be both witness and non-voting",
            ));
        }
        if self.max_sessions == 0 || self.max_sessions > crate::session::MAX_SESSIONS_CAP {
            return Err(Error::invalid_config(
                "max_sessions",
                format!("must be in 1..={}", crate::session::MAX_SESSIONS_CAP),
            ));
        }
        Ok(())
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            shard_id: ShardId(0),
            replica_id: ReplicaId(0),
            election_rtt: 10,
            heartbeat_rtt: 1,
            check_quorum: true,
            pre_vote: true,
            lease_read: false,
            snapshot_entries: 0,
            compaction_overhead: 0,
            ordered_config_change: false,
            is_non_voting: false,
            is_witness: false,
            max_uncommitted_bytes: 256 << 20,
            quiesce: false,
            max_sessions: 4096,
            max_inline_apply_bytes: 0,
            entry_compression: Compression::None,
            snapshot_compression: Compression::None,
        }
    }
}

/// Configuration of a NodeHost.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeHostConfig {
    /// Directory for everything but the WAL: snapshots, the lock file, host id.
    pub node_host_dir: PathBuf,
    /// Directory of the write-ahead log (defaults to `<node_host_dir>/wal` when empty).
    pub wal_dir: PathBuf,
    /// Round-trip time between NodeHosts in milliseconds; one tick.
    pub rtt_ms: u64,
    /// This host's raft address (`host:port`), unique in the deployment:
    /// what peers dial and what identifies the host.
    pub raft_address: String,
    /// Where the raft port listens when it differs from `raft_address`
    /// (empty: at `raft_address`), e.g. `0.0.0.0:63001` or a private
    /// address while peers reach the host through another (dragonboat's
    /// `ListenAddress`).
    pub listen_address: String,
    /// Where to serve the host's metrics over HTTP (`GET /metrics`, the
    /// Prometheus text of [`NodeHost::prometheus_text`]), e.g.
    /// `127.0.0.1:9090` (port 0: any free port, see
    /// [`NodeHost::metrics_address`]). Empty (the default): no endpoint.
    ///
    /// [`NodeHost::prometheus_text`]: crate::NodeHost::prometheus_text
    /// [`NodeHost::metrics_address`]: crate::NodeHost::metrics_address
    pub metrics_address: String,
    /// Start a NodeHost directory first started under another raft address
    /// or deployment id, and record the new ones (default false: such a
    /// start is refused, see `NodeHost::new`). For moving a host on
    /// purpose: its peers still dial the address their membership lists,
    /// so move a replica to a new address by removing it and adding it
    /// back at the new address (or move the host back).
    pub reassign_directory: bool,
    /// Deployment id: hosts of different deployments never talk.
    pub deployment_id: u64,
    /// Step worker threads (shard `s` runs on worker `s % step_workers`);
    /// default: one per two CPUs.
    pub step_workers: usize,
    /// Apply worker threads; default: one per two CPUs.
    pub apply_workers: usize,
    /// Snapshot worker threads; default: one per four CPUs.
    pub snapshot_workers: usize,
    /// Largest proposal payload in bytes (in effect at most half of
    /// `max_frame_bytes`, so that every entry fits a transport frame).
    pub max_proposal_bytes: usize,
    /// Most proposals queued per replica before `SystemBusy`.
    pub max_proposal_queue: usize,
    /// Most reads queued per replica before `SystemBusy`.
    pub max_read_queue: usize,
    /// Most inbound messages queued per replica (more are dropped; Raft retransmits).
    pub max_inbound_queue: usize,
    /// Most bytes of inbound messages queued per replica (more are
    /// dropped; Raft retransmits); with `max_inbound_queue`, bounds the
    /// memory a peer's traffic can hold per replica.
    pub max_inbound_queue_bytes: u64,
    /// Largest snapshot (data and external files) a leader may stream to
    /// this host; a stream announcing more is refused before a byte of it
    /// is written.
    pub max_snapshot_bytes: u64,
    /// Most entry bytes applied per apply batch, and most committed entry
    /// bytes queued per replica for its state machine: behind a slow state
    /// machine, committed entries wait in the log (not in memory queues).
    pub max_apply_batch_bytes: u64,
    /// Seed for ids and timeouts (`None`: from the OS; set it for reproducible runs).
    pub seed: Option<u64>,
    /// Mutual TLS between NodeHosts (CA, certificate and key PEM files).
    pub mutual_tls: Option<longship_transport::TlsPaths>,
    /// TCP connections per remote NodeHost; default: one per two CPUs
    /// (each connection is one more reader, and one more write per cycle).
    pub connections_per_host: usize,
    /// Largest transport frame in bytes (bigger messages are dropped; snapshots stream in chunks).
    pub max_frame_bytes: u32,
    /// Asynchronous log writes: step workers hand each cycle's log write
    /// to a log writer thread and go on stepping (their shards' next
    /// proposals are replicated while the fsync runs); the writer groups
    /// the queued writes of every step worker into one fsync, then sends
    /// what waited for it (append acknowledgements, votes) and reports it
    /// to the cores. Off (default): a step worker writes and fsyncs its
    /// cycle itself. The same ordering rules hold either way
    /// (docs/engine.md, "Asynchronous log writes").
    pub async_log_writes: bool,
}

/// Worker threads for this machine: one per `cpus_per_worker` CPUs, at
/// least 1 and at most 16. Measured on 2 CPUs (docs/benchmarks.md): one
/// step and one apply worker per NodeHost serve 64 clients 1.7 times
/// faster than two of each, which only took turns on the same cores.
fn default_workers(cpus_per_worker: usize) -> usize {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    (cpus / cpus_per_worker).clamp(1, 16)
}

impl Default for NodeHostConfig {
    fn default() -> Self {
        NodeHostConfig {
            node_host_dir: PathBuf::new(),
            wal_dir: PathBuf::new(),
            rtt_ms: 100,
            raft_address: String::new(),
            listen_address: String::new(),
            metrics_address: String::new(),
            reassign_directory: false,
            deployment_id: 1,
            step_workers: default_workers(2),
            apply_workers: default_workers(2),
            snapshot_workers: default_workers(4),
            max_proposal_bytes: 8 << 20,
            max_proposal_queue: 8192,
            max_read_queue: 8192,
            max_inbound_queue: 16384,
            max_inbound_queue_bytes: 128 << 20,
            max_snapshot_bytes: 1 << 40,
            max_apply_batch_bytes: 64 << 20,
            seed: None,
            mutual_tls: None,
            connections_per_host: default_workers(2),
            max_frame_bytes: 64 << 20,
            async_log_writes: false,
        }
    }
}

impl NodeHostConfig {
    /// Checks every field; the error names the first invalid one.
    pub fn validate(&self) -> Result<()> {
        if self.node_host_dir.as_os_str().is_empty() {
            return Err(Error::invalid_config("node_host_dir", "must be set"));
        }
        if self.rtt_ms == 0 {
            return Err(Error::invalid_config("rtt_ms", "must be non-zero"));
        }
        if self.listen_address.len() > 255 {
            return Err(Error::invalid_config(
                "listen_address",
                "must be at most 255 bytes (host:port)",
            ));
        }
        if self.metrics_address.len() > 255 {
            return Err(Error::invalid_config(
                "metrics_address",
                "must be at most 255 bytes (host:port)",
            ));
        }
        if self.raft_address.is_empty() || self.raft_address.len() > 255 {
            return Err(Error::invalid_config(
                "raft_address",
                "must be 1..=255 bytes (host:port)",
            ));
        }
        if self.step_workers == 0 || self.step_workers > 1024 {
            return Err(Error::invalid_config("step_workers", "must be in 1..=1024"));
        }
        if self.apply_workers == 0 || self.apply_workers > 1024 {
            return Err(Error::invalid_config(
                "apply_workers",
                "must be in 1..=1024",
            ));
        }
        if self.snapshot_workers == 0 || self.snapshot_workers > 1024 {
            return Err(Error::invalid_config(
                "snapshot_workers",
                "must be in 1..=1024",
            ));
        }
        if self.max_proposal_bytes == 0 || self.max_proposal_bytes > 64 << 20 {
            return Err(Error::invalid_config(
                "max_proposal_bytes",
                "must be in 1..=64 MiB",
            ));
        }
        if self.max_proposal_queue == 0 {
            return Err(Error::invalid_config(
                "max_proposal_queue",
                "must be non-zero",
            ));
        }
        if self.max_read_queue == 0 {
            return Err(Error::invalid_config("max_read_queue", "must be non-zero"));
        }
        if self.max_inbound_queue_bytes == 0 {
            return Err(Error::invalid_config(
                "max_inbound_queue_bytes",
                "must be non-zero",
            ));
        }
        if self.max_inbound_queue == 0 {
            return Err(Error::invalid_config(
                "max_inbound_queue",
                "must be non-zero",
            ));
        }
        if self.connections_per_host == 0 || self.connections_per_host > 64 {
            return Err(Error::invalid_config(
                "connections_per_host",
                "must be in 1..=64",
            ));
        }
        if self.max_frame_bytes < (1 << 20) {
            return Err(Error::invalid_config(
                "max_frame_bytes",
                "must be at least 1 MiB",
            ));
        }
        if self.max_apply_batch_bytes == 0 {
            return Err(Error::invalid_config(
                "max_apply_batch_bytes",
                "must be non-zero",
            ));
        }
        Ok(())
    }

    /// The WAL directory in effect.
    pub fn wal_dir(&self) -> PathBuf {
        if self.wal_dir.as_os_str().is_empty() {
            self.node_host_dir.join("wal")
        } else {
            self.wal_dir.clone()
        }
    }
}
