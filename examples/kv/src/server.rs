//! The Redis-protocol front end of a kv node: connections, commands,
//! sessions and retries.
//!
//! # Order of a connection's commands
//!
//! Each connection is served by one task that works in *rounds*: it parses
//! every complete command in its buffer (at most [`MAX_ROUND_COMMANDS`]
//! commands or [`MAX_ROUND_BYTES`] of input), executes them, and queues
//! their replies in the order the commands were sent. It reads the socket
//! again only when the buffer holds no complete command, so a client that
//! pipelines faster than the cluster applies is slowed down by TCP
//! (backpressure), never refused, and never stalls: a client may send
//! 100,000 commands before reading and gets 100,000 replies.
//!
//! The guarantee: **within one connection, commands that touch the same
//! shard take effect in the order they were sent** — so the same key always
//! does — and every reply comes back in command order. Commands of one
//! round that touch *different* shards run in parallel (as a Redis Cluster
//! client's pipeline runs in parallel on different nodes). Rounds run one
//! after the other, so a command never takes effect before any command of
//! an earlier round.
//!
//! How a round executes: every command is checked against the command
//! table ([`crate::commands`]: name, arity, keys) and becomes per-shard
//! sub-commands (GET k is one command on the shard of k; MGET, EXISTS,
//! TOUCH, DEL, UNLINK and MSET are one command per key; DBSIZE, KEYS,
//! RANDOMKEY and FLUSHALL one per shard; SCAN one on the shard its cursor
//! names; MULTI ... EXEC one transaction command) and a combiner that builds
//! its reply. The sub-commands are grouped by shard, keeping their order.
//! A shard whose list holds only reads does one ReadIndex round and
//! answers every read from the local replica (linearizable; see
//! [`crate::sm`] for reads of keys that just expired). A shard whose list
//! holds a write proposes the whole ordered list as one log entry (split
//! into several entries, in order, only when it passes the entry size
//! limit), stamped with this node's clock; its reads then execute at apply
//! time at their place in the log ([`crate::exec`] runs them). Proposals use
//! client sessions and are retried with the same series id, so a retried
//! entry is applied at most once. Multi-key commands are per key, not
//! atomic across shards.
//!
//! # Redis Cluster
//!
//! Keys map to hash slots and slots to shards ([`crate::slots`]). A
//! connection in cluster mode (it sent READONLY or a CLUSTER command, or the
//! node runs with [`ServerConfig::cluster_redirects`]) gets `-MOVED` for a
//! key whose shard another node leads and `-CROSSSLOT` for a multi-key
//! command over several slots; other connections are
//! served by forwarding, multi-key commands per key.
//!
//! # Limits
//!
//! [`ServerConfig`] bounds what one client can make a node hold: the size
//! of one argument (`proto-max-bulk-len`; no value can grow past it,
//! APPEND included), the arguments of one command, the bytes buffered for
//! one connection, the number of connections and the idle time. A value
//! must also fit one replicated log entry (`max_proposal_bytes` of the
//! NodeHost, at most half its `max_frame_bytes`); a bigger one is answered
//! with an `-ERR` naming that limit.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::Poll;
use std::time::{Duration, Instant};

use longship::{Error, NodeHost, ReplicaId, Session, ShardId, SmResult};
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::commands;
use crate::exec::is_read;
use crate::resp::{Reply, RequestParser, RespError, RespLimits};
use crate::slots::{key_slot, shard_of_slot, slot_range};
use crate::sm::{
    BATCH_HEADER_BYTES, Cmd, CmdResult, MAX_SNAPSHOT_ITEM_BYTES, cmd_encoded_len, decode_results,
    encode_batch, status,
};

/// This node's wall clock in ms since the epoch (what batches are stamped with).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// How long a request keeps retrying before answering with an error.
const REQUEST_DEADLINE: Duration = Duration::from_secs(10);
/// Timeout of one attempt.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(3);
/// Sessions kept per shard for reuse.
const SESSIONS_PER_SHARD: usize = 256;
/// The Redis version longship-kv answers as (`HELLO`, `INFO`): the
/// commands it supports behave as in this version.
pub const REDIS_VERSION: &str = "7.2.0";
/// How often a node looks for expired keys in the shards it leads.
pub const SWEEP_INTERVAL: Duration = Duration::from_millis(250);
/// Largest key.
pub const MAX_KEY_BYTES: usize = 64 << 10;
/// Most commands executed in one round of a connection.
pub const MAX_ROUND_COMMANDS: usize = 1024;
/// Most request bytes executed in one round of a connection (a single
/// bigger command still makes a round of its own).
pub const MAX_ROUND_BYTES: usize = 4 << 20;
/// Unsent reply bytes above which a connection stops starting rounds until
/// the client reads (replies are bounded like requests).
pub const MAX_PENDING_REPLY_BYTES: usize = 8 << 20;
/// Longest a client may take to finish its TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes asked of the socket per read.
const READ_CHUNK: usize = 64 << 10;
/// An empty connection buffer with more capacity than this is freed.
const SHRINK_ABOVE: usize = 1 << 20;

/// Settings of the Redis front end: limits (Redis's names and defaults)
/// and the cluster topology clients are told about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerConfig {
    /// Largest argument (key or value) of a request, and largest value a
    /// key can ever hold (`proto-max-bulk-len`; default 512 MB). At most
    /// [`MAX_SNAPSHOT_ITEM_BYTES`].
    pub proto_max_bulk_len: u64,
    /// Most arguments of one command (default 1,048,576 as in Redis).
    pub max_args: usize,
    /// Most bytes buffered for one connection's incomplete command
    /// (`client-query-buffer-limit`; default 1 GB). Over it the client gets
    /// an `-ERR` and is disconnected.
    pub client_query_buffer_limit: usize,
    /// Most client connections of a node (`maxclients`; default 10,000).
    /// Over it a new connection gets `-ERR max number of clients reached`
    /// and is closed.
    pub maxclients: usize,
    /// Close a connection idle this long (`timeout`; zero: never, the default).
    pub timeout: Duration,
    /// Every node's Redis address as clients reach it, by node id (this
    /// node's included): what `-MOVED` and `CLUSTER SLOTS/SHARDS/NODES`
    /// report. A node missing here is never redirected to: its shards are
    /// served by forwarding.
    pub redis_addrs: BTreeMap<u64, String>,
    /// Answer `-MOVED` / `-CROSSSLOT` on every connection, not only on those
    /// in cluster mode (that sent `READONLY` or a `CLUSTER` command).
    pub cluster_redirects: bool,
    /// The password clients must give with `AUTH` (or `HELLO ... AUTH`)
    /// before any other command (`requirepass`; none by default).
    pub requirepass: Option<String>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            proto_max_bulk_len: 512 << 20,
            max_args: 1 << 20,
            client_query_buffer_limit: 1 << 30,
            maxclients: 10_000,
            timeout: Duration::ZERO,
            redis_addrs: BTreeMap::new(),
            cluster_redirects: false,
            requirepass: None,
        }
    }
}

impl ServerConfig {
    /// Checks the limits; the error names the first invalid one.
    pub fn validate(&self) -> Result<(), String> {
        if self.proto_max_bulk_len == 0 || self.proto_max_bulk_len > MAX_SNAPSHOT_ITEM_BYTES {
            return Err(format!(
                "proto-max-bulk-len must be in 1..={MAX_SNAPSHOT_ITEM_BYTES}"
            ));
        }
        if self.max_args == 0 {
            return Err("the argument limit must be at least 1".into());
        }
        if self.client_query_buffer_limit < 1024 {
            return Err("client-query-buffer-limit must be at least 1024 bytes".into());
        }
        if self.maxclients == 0 {
            return Err("maxclients must be at least 1".into());
        }
        Ok(())
    }

    fn resp_limits(&self) -> RespLimits {
        RespLimits {
            max_bulk_bytes: usize::try_from(self.proto_max_bulk_len).unwrap_or(usize::MAX),
            max_args: self.max_args,
            ..RespLimits::default()
        }
    }
}

pub use crate::slots::shard_of;

/// Where shards without a local replica are served (placed mode, see
/// [`crate::placed`]): the Redis address of the node a client is sent to
/// with `-MOVED`.
pub trait ShardDirectory: Send + Sync {
    /// The Redis address of a node serving `shard` (its leader's when
    /// known), or `None` when unknown.
    fn redis_addr(&self, shard: ShardId) -> Option<String>;

    /// The whole layout, for `CLUSTER SLOTS/SHARDS/NODES/INFO/MYID`
    /// (`None` while unknown: those then describe this node alone).
    fn topology(&self) -> Option<Topology> {
        None
    }
}

/// Where every shard is served in placed mode, as cluster-aware clients
/// (`redis-cli -c`, `redis-benchmark --cluster`, cluster client libraries)
/// learn it from `CLUSTER SLOTS`, `CLUSTER SHARDS` and `CLUSTER NODES`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Topology {
    /// The live nodes: node id ([`placed_node_id`]) → Redis address.
    pub nodes: BTreeMap<String, String>,
    /// Per shard, the nodes holding a replica of it, the one clients send
    /// its slots to first (its leader's node when known; a follower node
    /// forwards to its leader).
    pub shards: BTreeMap<ShardId, Vec<String>>,
}

/// The 40-character `CLUSTER` id of a placed node, from its raft address
/// (its identity in the deployment; stable across restarts).
pub fn placed_node_id(raft_address: &str) -> String {
    let fnv = |seed: u64| {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ seed;
        for b in raft_address.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        h
    };
    format!("{:016x}{:016x}{:08x}", fnv(0), fnv(1), fnv(2) as u32)
}

/// One kv node: a NodeHost with a replica of every shard.
pub struct KvNode {
    /// The NodeHost.
    pub nh: Arc<NodeHost>,
    /// Number of shards (ids 1..=shards).
    pub shards: u64,
    /// This node's id (its replica id in every shard).
    pub node_id: u64,
    /// The front end's limits.
    pub config: ServerConfig,
    sessions: Mutex<BTreeMap<ShardId, Vec<Session>>>,
    clients: AtomicUsize,
    /// `-MOVED` replies sent.
    moved: AtomicU64,
    /// The last client id given.
    next_client_id: AtomicU64,
    /// TLS for client connections (set before serving).
    tls: OnceLock<tokio_rustls::TlsAcceptor>,
    /// Commands received.
    commands: AtomicU64,
    /// When the node started.
    started: Instant,
    /// Open connections, by client id (`CLIENT LIST`).
    client_list: Mutex<BTreeMap<u64, ClientEntry>>,
    /// Whether the sweeper runs.
    sweeper: std::sync::atomic::AtomicBool,
    /// Shards whose local replica was quiesced, and when that was looked up.
    quiesced: Mutex<(Option<Instant>, std::collections::BTreeSet<ShardId>)>,
    /// NodeHosts of the same cluster in this process, by node id.
    local_hosts: OnceLock<Vec<(u64, Arc<NodeHost>)>>,
    /// Placed mode: where the shards without a local replica are.
    directory: OnceLock<Arc<dyn ShardDirectory>>,
}

impl KvNode {
    /// A front end over `nh` with the default limits.
    pub fn new(nh: Arc<NodeHost>, shards: u64, node_id: u64) -> Arc<KvNode> {
        KvNode::with_config(nh, shards, node_id, ServerConfig::default())
    }

    /// A front end over `nh` with these limits.
    pub fn with_config(
        nh: Arc<NodeHost>,
        shards: u64,
        node_id: u64,
        config: ServerConfig,
    ) -> Arc<KvNode> {
        Arc::new(KvNode {
            nh,
            shards,
            node_id,
            config,
            sessions: Mutex::new(BTreeMap::new()),
            clients: AtomicUsize::new(0),
            moved: AtomicU64::new(0),
            next_client_id: AtomicU64::new(0),
            tls: OnceLock::new(),
            commands: AtomicU64::new(0),
            started: Instant::now(),
            client_list: Mutex::new(BTreeMap::new()),
            sweeper: std::sync::atomic::AtomicBool::new(false),
            quiesced: Mutex::new((None, Default::default())),
            local_hosts: OnceLock::new(),
            directory: OnceLock::new(),
        })
    }

    /// Placed mode ([`crate::placed`]): shards live on some nodes only; a
    /// request for a shard without a local replica gets `-MOVED` to the
    /// node `directory` names, on every connection. Set once; later calls
    /// are ignored.
    pub fn set_directory(&self, directory: Arc<dyn ShardDirectory>) {
        let _ = self.directory.set(directory);
    }

    /// Whether the node runs in placed mode.
    fn placed(&self) -> bool {
        self.directory.get().is_some()
    }

    /// Tells the node about the NodeHosts of its cluster that run in this
    /// process (the no-argument local cluster): requests then go straight
    /// to the NodeHost that leads the key's shard instead of being
    /// forwarded over TCP by a follower. Set once; later calls are ignored.
    pub fn set_local_hosts(&self, hosts: Vec<(u64, Arc<NodeHost>)>) {
        let _ = self.local_hosts.set(hosts);
    }

    /// Makes every client connection of this node TLS (see
    /// [`crate::tls::acceptor`]). Set once, before [`serve`]; later calls
    /// are ignored.
    pub fn set_tls(&self, acceptor: tokio_rustls::TlsAcceptor) {
        let _ = self.tls.set(acceptor);
    }

    /// `-MOVED` replies this node has sent.
    pub fn moved_replies(&self) -> u64 {
        self.moved.load(Ordering::Relaxed)
    }

    /// Connections open now.
    pub fn clients(&self) -> usize {
        self.clients.load(Ordering::Acquire)
    }

    /// The NodeHost to ask about `shard`: the one in this process that
    /// leads it when known, else this node's.
    pub fn host_for(&self, shard: ShardId) -> &Arc<NodeHost> {
        if let Some(hosts) = self.local_hosts.get()
            && let Ok(Some(l)) = self.nh.get_leader(shard)
            && let Some((_, nh)) = hosts.iter().find(|(id, _)| ReplicaId(*id) == l.replica_id)
        {
            return nh;
        }
        &self.nh
    }

    /// Largest replicated entry the NodeHost accepts (its `max_proposal_bytes`,
    /// at most half of `max_frame_bytes`).
    pub fn max_entry_bytes(&self) -> usize {
        let c = self.nh.config();
        c.max_proposal_bytes.min(c.max_frame_bytes as usize / 2)
    }

    async fn take_session(&self, nh: &NodeHost, shard: ShardId) -> Result<Session, Error> {
        if let Some(s) = self.sessions.lock().get_mut(&shard).and_then(|v| v.pop()) {
            return Ok(s);
        }
        let deadline = Instant::now() + REQUEST_DEADLINE;
        loop {
            let r = match nh.register_session(shard, ATTEMPT_TIMEOUT) {
                Ok((s, h)) => h.await.map(|_| s),
                Err(e) => Err(e),
            };
            match r {
                Ok(s) => return Ok(s),
                Err(e) if e.is_temporary() && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn put_session(&self, s: Session) {
        let mut all = self.sessions.lock();
        let v = all.entry(s.shard_id).or_default();
        if v.len() < SESSIONS_PER_SHARD {
            v.push(s);
        }
    }

    /// Proposes `cmd` to `shard` with a client session and retries (same
    /// series id, so it is applied at most once) until it completes or the
    /// deadline passes.
    ///
    /// `fence` carries a session whose last proposal ended with an unknown
    /// outcome: it is used first, with that proposal counted as answered,
    /// so the lost entry can never be applied after this one. When this
    /// proposal's outcome ends unknown, its session is left in `fence`.
    async fn propose(
        &self,
        shard: ShardId,
        cmd: bytes::Bytes,
        fence: &mut Option<Session>,
    ) -> Result<SmResult, Error> {
        let nh = self.host_for(shard).clone();
        let mut s = match fence.take() {
            Some(s) => s,
            None => self.take_session(&nh, shard).await?,
        };
        let deadline = Instant::now() + REQUEST_DEADLINE;
        // Whether an attempt of this series id may have entered the log.
        let mut attempted = false;
        loop {
            let outcome = match nh.propose(&s, cmd.clone(), ATTEMPT_TIMEOUT) {
                Ok(h) => {
                    attempted = true;
                    h.await
                }
                Err(e) => Err(e),
            };
            match outcome {
                Ok(r) => {
                    s.proposal_completed();
                    self.put_session(s);
                    return Ok(r);
                }
                Err(e) if e.is_temporary() && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                // A pooled session the shard evicted: nothing of it was
                // applied; use a fresh one.
                Err(Error::InvalidSession) if !attempted && Instant::now() < deadline => {
                    s = self.take_session(&nh, shard).await?;
                }
                Err(e) => {
                    if attempted && !matches!(e, Error::InvalidSession) {
                        s.proposal_completed();
                        *fence = Some(s);
                    }
                    return Err(e);
                }
            }
        }
    }

    /// Waits for a linearizable read point of `shard` on `nh` (ReadIndex).
    async fn read_index(&self, nh: &NodeHost, shard: ShardId) -> Result<(), Error> {
        let deadline = Instant::now() + REQUEST_DEADLINE;
        loop {
            let r = match nh.read_index(shard, ATTEMPT_TIMEOUT) {
                Ok(h) => h.await,
                Err(e) => Err(e),
            };
            match r {
                Ok(_) => return Ok(()),
                Err(e) if e.is_temporary() && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Answers read commands of one shard: linearizable (one ReadIndex
    /// round for all of them) unless `stale`. When a command touches a key
    /// that expired by this node's clock but not yet by the shard's
    /// replicated clock, the shard's clock is advanced through the log and
    /// the commands are read again (see [`crate::sm`]).
    pub async fn read_cmds(
        &self,
        shard: ShardId,
        cmds: &[Cmd],
        stale: bool,
    ) -> Result<Vec<Reply>, Error> {
        let nh = self.host_for(shard).clone();
        if !stale {
            self.read_index(&nh, shard).await?;
        }
        for _ in 0..5 {
            let q = encode_batch(now_ms(), self.config.proto_max_bulk_len, cmds);
            let answer = nh.read_local(shard, &q)?;
            let results = match decode_results(&answer) {
                Some(r) if r.len() == cmds.len() => r,
                _ => return Err(Error::StateMachine("bad lookup answer".into())),
            };
            if results.iter().all(|r| matches!(r, CmdResult::Reply(_))) {
                return Ok(results
                    .into_iter()
                    .filter_map(|r| match r {
                        CmdResult::Reply(r) => Some(r),
                        CmdResult::NeedsClock => None,
                    })
                    .collect());
            }
            // The entry is applied here before the answer: read again.
            self.advance_clock(shard).await?;
        }
        Err(Error::StateMachine(
            "the shard clock did not advance".into(),
        ))
    }

    /// Proposes an empty batch to `shard`: it advances the shard's clock to
    /// this node's and deletes up to [`SWEEP_PER_BATCH`](crate::sm::SWEEP_PER_BATCH) expired keys. It
    /// changes nothing else, so it needs no session (retrying it is harmless).
    pub async fn advance_clock(&self, shard: ShardId) -> Result<(), Error> {
        let nh = self.host_for(shard).clone();
        let deadline = Instant::now() + REQUEST_DEADLINE;
        loop {
            let cmd = bytes::Bytes::from(encode_batch(now_ms(), 0, &[]));
            let r = match nh.propose(&nh.get_noop_session(shard), cmd, ATTEMPT_TIMEOUT) {
                Ok(h) => h.await,
                Err(e) => Err(e),
            };
            match r {
                Ok(_) => return Ok(()),
                Err(e) if e.is_temporary() && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Starts (once per node) the task that deletes expired keys of the
    /// shards this node leads, every [`SWEEP_INTERVAL`] (see `sweep_once`).
    pub fn start_sweeper(node: &Arc<KvNode>) {
        if node.sweeper.swap(true, Ordering::AcqRel) {
            return;
        }
        let node = node.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(SWEEP_INTERVAL).await;
                node.sweep_once().await;
            }
        });
    }

    /// One pass of the sweeper: for each shard this node leads whose
    /// earliest expiry has passed by this node's clock, proposes empty
    /// batches (each deletes up to [`SWEEP_PER_BATCH`](crate::sm::SWEEP_PER_BATCH) expired keys) until
    /// none is due. Returns the batches proposed.
    pub async fn sweep_once(&self) -> usize {
        let mut proposed = 0;
        for s in 1..=self.shards {
            let shard = ShardId(s);
            if !self.leads(shard) {
                continue;
            }
            for _ in 0..100 {
                let due = match self.nh.read_local(shard, &[crate::sm::query::NEXT_EXPIRY]) {
                    Ok(b) if b.len() == 16 => {
                        let next = u64::from_le_bytes(b[..8].try_into().unwrap_or([0xff; 8]));
                        next <= now_ms()
                    }
                    _ => false,
                };
                if !due || self.advance_clock(shard).await.is_err() {
                    break;
                }
                proposed += 1;
            }
        }
        proposed
    }

    /// Executes the ordered command list of one shard (see the module docs)
    /// and returns one outcome per command, in order.
    async fn run_shard(
        &self,
        shard: ShardId,
        cmds: Vec<Cmd>,
        stale: bool,
        mut fence: Option<Session>,
    ) -> (Vec<Reply>, Option<Session>) {
        let mut out: Vec<Reply> = Vec::with_capacity(cmds.len());
        if cmds.iter().all(|c| is_read(c)) {
            match self.read_cmds(shard, &cmds, stale).await {
                Ok(r) => out.extend(r),
                Err(e) => out.extend(cmds.iter().map(|_| error_reply(&e))),
            }
            return (out, fence);
        }
        let room = self.max_entry_bytes().saturating_sub(BATCH_HEADER_BYTES);
        let mut i = 0;
        while i < cmds.len() {
            // The longest run of commands from i that fits one entry.
            let mut end = i;
            let mut size = 0usize;
            while end < cmds.len() && size + cmd_encoded_len(&cmds[end]) <= room {
                size += cmd_encoded_len(&cmds[end]);
                end += 1;
            }
            if end == i {
                // Never happens: commands this big are refused before they
                // get here.
                out.push(too_big_for_raft(&cmds[i], self.max_entry_bytes()));
                i += 1;
                continue;
            }
            let cmd = bytes::Bytes::from(encode_batch(
                now_ms(),
                self.config.proto_max_bulk_len,
                &cmds[i..end],
            ));
            let results = match self.propose(shard, cmd, &mut fence).await {
                Ok(r) if r.value == status::OK => decode_results(&r.data)
                    .filter(|x| x.len() <= end - i)
                    .ok_or_else(|| Reply::err("internal error: bad batch result")),
                Ok(_) => Err(Reply::err("internal error: batch refused")),
                Err(e) => Err(error_reply(&e)),
            };
            match results {
                Ok(r) => {
                    let done = r.len();
                    out.extend(r.into_iter().map(|x| match x {
                        CmdResult::Reply(r) => r,
                        CmdResult::NeedsClock => Reply::err("internal error: clock"),
                    }));
                    i += done;
                    if i < end {
                        // The batch stopped before a read whose reply is too
                        // big to return through the log: read it now (every
                        // earlier command is applied, no later one is), then go on.
                        match self.read_cmds(shard, &cmds[i..i + 1], false).await {
                            Ok(mut r) => out.push(r.remove(0)),
                            Err(e) => out.push(error_reply(&e)),
                        }
                        i += 1;
                    }
                }
                Err(reply) => {
                    // Outcome unknown or failed: the later commands are not
                    // executed (they must not take effect before this one).
                    out.extend(cmds[i..].iter().map(|_| reply.clone()));
                    break;
                }
            }
        }
        (out, fence)
    }

    /// `AUTH [user] password`: the only user is `default`.
    fn auth(&self, state: &mut ConnState, password: &[u8]) -> Reply {
        let Some(want) = &self.config.requirepass else {
            return Reply::err(
                "AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?",
            );
        };
        if same_secret(password, want.as_bytes()) {
            state.authed = true;
            Reply::ok()
        } else {
            Reply::Error("WRONGPASS invalid username-password pair or user is disabled.".into())
        }
    }

    /// `HELLO [protover [AUTH user pass] [SETNAME name]]`: RESP2 or RESP3
    /// (RESP3 differs in nulls and maps: HGETALL, CONFIG GET, HELLO).
    fn hello(&self, state: &mut ConnState, args: &[Vec<u8>]) -> Reply {
        let mut proto = if state.resp3 { 3 } else { 2 };
        if let Some(v) = args.get(1) {
            match crate::exec::parse_int(v) {
                Some(v @ (2 | 3)) => proto = v,
                _ => return Reply::Error("NOPROTO unsupported protocol version".into()),
            }
        }
        let mut i = 2;
        while i < args.len() {
            match String::from_utf8_lossy(&args[i])
                .to_ascii_uppercase()
                .as_str()
            {
                "AUTH" if i + 2 < args.len() => {
                    let r = self.auth(state, &args[i + 2]);
                    if r != Reply::ok() {
                        return r;
                    }
                    i += 3;
                }
                "SETNAME" if i + 1 < args.len() => {
                    if let Some(c) = self.client_list.lock().get_mut(&state.id) {
                        c.name = String::from_utf8_lossy(&args[i + 1]).into_owned();
                    }
                    i += 2;
                }
                _ => return Reply::err("syntax error in HELLO option"),
            }
        }
        if !state.authed {
            return Reply::Error("NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time".into());
        }
        state.resp3 = proto == 3;
        let b = |s: &str| Reply::Bulk(s.as_bytes().to_vec());
        Reply::Map(vec![
            (b("server"), b("redis")),
            (b("version"), b(REDIS_VERSION)),
            (b("proto"), Reply::Int(proto)),
            (b("id"), Reply::Int(state.id as i64)),
            (b("mode"), b("cluster")),
            (b("role"), b("master")),
            (b("modules"), Reply::Array(Vec::new())),
        ])
    }

    /// `CLIENT ID | SETNAME | GETNAME | INFO | LIST | SETINFO`.
    fn client_command(&self, state: &mut ConnState, args: &[Vec<u8>]) -> Reply {
        let sub = String::from_utf8_lossy(&args[1]).to_ascii_uppercase();
        let mut list = self.client_list.lock();
        match (sub.as_str(), args.len()) {
            ("ID", 2) => Reply::Int(state.id as i64),
            ("SETNAME", 3) => {
                let name = String::from_utf8_lossy(&args[2]).into_owned();
                if name.chars().any(|c| c <= ' ' || c > '~') {
                    return Reply::err(
                        "Client names cannot contain spaces, newlines or special characters.",
                    );
                }
                if let Some(c) = list.get_mut(&state.id) {
                    c.name = name;
                }
                Reply::ok()
            }
            ("GETNAME", 2) => match list.get(&state.id) {
                Some(c) if !c.name.is_empty() => Reply::Bulk(c.name.clone().into_bytes()),
                _ => Reply::Nil,
            },
            ("SETINFO", 4) => {
                let v = String::from_utf8_lossy(&args[3]).into_owned();
                let Some(c) = list.get_mut(&state.id) else {
                    return Reply::ok();
                };
                match String::from_utf8_lossy(&args[2])
                    .to_ascii_uppercase()
                    .as_str()
                {
                    "LIB-NAME" => c.lib_name = v,
                    "LIB-VER" => c.lib_ver = v,
                    other => {
                        return Reply::err(format!("Unrecognized option '{other}'"));
                    }
                }
                Reply::ok()
            }
            ("INFO", 2) => Reply::Bulk(
                list.get(&state.id)
                    .map(|c| format!("{}\n", c.line(state.id)))
                    .unwrap_or_default()
                    .into_bytes(),
            ),
            ("LIST", 2) => Reply::Bulk(
                list.iter()
                    .map(|(id, c)| format!("{}\n", c.line(*id)))
                    .collect::<String>()
                    .into_bytes(),
            ),
            ("ID" | "SETNAME" | "GETNAME" | "SETINFO" | "INFO" | "LIST", _) => Reply::err(format!(
                "wrong number of arguments for 'client|{}' command",
                sub.to_ascii_lowercase()
            )),
            _ => Reply::err(format!(
                "unknown subcommand '{}'. Try CLIENT HELP.",
                String::from_utf8_lossy(&args[1])
                    .chars()
                    .take(64)
                    .collect::<String>()
            )),
        }
    }

    /// `CONFIG GET pattern...` with this node's real settings; `CONFIG SET`
    /// is refused (settings are command-line flags).
    fn config_command(&self, args: &[Vec<u8>]) -> Reply {
        let sub = String::from_utf8_lossy(&args[1]).to_ascii_uppercase();
        if sub != "GET" || args.len() < 3 {
            return Reply::err(format!(
                "CONFIG {} is not supported by longship-kv (settings are command-line flags); CONFIG GET parameter... is",
                sub.to_ascii_lowercase()
            ));
        }
        let c = &self.config;
        let values: Vec<(&str, String)> = vec![
            ("maxclients", c.maxclients.to_string()),
            ("timeout", c.timeout.as_secs().to_string()),
            ("proto-max-bulk-len", c.proto_max_bulk_len.to_string()),
            (
                "client-query-buffer-limit",
                c.client_query_buffer_limit.to_string(),
            ),
            ("databases", "1".into()),
            ("cluster-enabled", "yes".into()),
            ("appendonly", "yes".into()),
            ("appendfsync", "always".into()),
            ("save", String::new()),
            ("maxmemory", "0".into()),
            ("requirepass", String::new()),
        ];
        let mut out = Vec::new();
        for (name, v) in values {
            if args[2..]
                .iter()
                .any(|p| crate::exec::glob_match(&p.to_ascii_lowercase(), name.as_bytes()))
            {
                // The password itself is never shown.
                let v = if name == "requirepass" && c.requirepass.is_some() {
                    "********".into()
                } else {
                    v
                };
                out.push((
                    Reply::Bulk(name.as_bytes().to_vec()),
                    Reply::Bulk(v.into_bytes()),
                ));
            }
        }
        Reply::Map(out)
    }

    /// The leader of `shard` as this node knows it.
    fn leader_of(&self, shard: ShardId) -> Option<u64> {
        self.nh
            .get_leader(shard)
            .ok()
            .flatten()
            .map(|l| l.replica_id.0)
    }

    /// Whether this node leads `shard` now.
    pub fn leads(&self, shard: ShardId) -> bool {
        if self.placed() {
            // Replica ids are not node ids there.
            return self
                .nh
                .raft_status(shard)
                .is_ok_and(|s| s.role == longship::Role::Leader);
        }
        self.leader_of(shard) == Some(self.node_id)
    }

    /// The node that clients are told serves `shard` (the Redis Cluster
    /// master of its slots): its leader when known and its Redis address
    /// is known, else this node (which forwards).
    pub fn master_of(&self, shard: ShardId) -> u64 {
        match self.leader_of(shard) {
            Some(l) if self.config.redis_addrs.contains_key(&l) => l,
            _ => self.node_id,
        }
    }

    /// Whether this node's replica of `shard` is quiesced (its shard idle:
    /// no heartbeats, so a dead leader goes unnoticed until a request
    /// wakes it). Looked up at most every 100 ms.
    fn is_quiesced(&self, shard: ShardId) -> bool {
        let mut q = self.quiesced.lock();
        if q.0
            .is_none_or(|at| at.elapsed() > Duration::from_millis(100))
        {
            let info = self.nh.get_node_host_info();
            q.1 = info
                .shards
                .iter()
                .filter(|x| x.quiesced)
                .map(|x| x.shard_id)
                .collect();
            q.0 = Some(Instant::now());
        }
        q.1.contains(&shard)
    }

    /// Wakes the quiesced shards led by other nodes (a ReadIndex request
    /// whose answer is not awaited), so that a leader that died while its
    /// shard was idle is replaced: done when a client asks for the topology.
    fn wake_quiesced(&self) {
        for x in self.nh.get_node_host_info().shards {
            if x.quiesced && !x.is_leader {
                let _ = self.nh.read_index(x.shard_id, ATTEMPT_TIMEOUT);
            }
        }
        self.quiesced.lock().0 = None;
    }

    /// Cluster-mode routing of a command's ops: `-CROSSSLOT` when its keys
    /// are in different slots, `-MOVED slot host:port` when the leader of
    /// their shard is another node whose Redis address is known. Reads of
    /// a READONLY connection stay here (every node holds a replica of every
    /// shard), as do ops on a shard with no known leader (forwarded).
    fn route(&self, keys: &[&[u8]], write: bool, readonly: bool) -> Result<(), Reply> {
        let Some(slot) = same_slot(keys)? else {
            return Ok(());
        };
        if let Some(dir) = self.directory.get() {
            let shard = shard_of_slot(slot, self.shards);
            if self.nh.raft_status(shard).is_err() {
                self.moved.fetch_add(1, Ordering::Relaxed);
                return Err(match dir.redis_addr(shard) {
                    Some(addr) => Reply::Error(format!("MOVED {slot} {addr}")),
                    None => Reply::Error("CLUSTERDOWN Hash slot not served".into()),
                });
            }
            return Ok(());
        }
        if readonly && !write {
            return Ok(());
        }
        let shard = shard_of_slot(slot, self.shards);
        let master = self.master_of(shard);
        // A quiesced replica may not know that its leader died: forward
        // (which wakes the shard) rather than send the client to it.
        if master == self.node_id || self.is_quiesced(shard) {
            return Ok(());
        }
        let addr = &self.config.redis_addrs[&master];
        self.moved.fetch_add(1, Ordering::Relaxed);
        Err(Reply::Error(format!("MOVED {slot} {addr}")))
    }

    /// The slot ranges (first, last, shard) of the shards, in slot order.
    fn ranges(&self) -> Vec<(u16, u16, ShardId)> {
        (1..=self.shards)
            .filter_map(|i| slot_range(ShardId(i), self.shards).map(|(a, b)| (a, b, ShardId(i))))
            .collect()
    }

    /// Node ids clients are told about: those with a known Redis address,
    /// and this node.
    fn cluster_nodes(&self) -> Vec<u64> {
        let mut ids: Vec<u64> = self.config.redis_addrs.keys().copied().collect();
        if !ids.contains(&self.node_id) {
            ids.push(self.node_id);
            ids.sort_unstable();
        }
        ids
    }

    /// A node's Redis address as (host, port); this node's is
    /// `127.0.0.1:0` when not configured.
    fn redis_endpoint(&self, id: u64) -> (String, i64) {
        let addr = self
            .config
            .redis_addrs
            .get(&id)
            .map_or("127.0.0.1:0", String::as_str);
        match addr.rsplit_once(':') {
            Some((h, p)) => (
                h.trim_start_matches('[').trim_end_matches(']').to_string(),
                p.parse().unwrap_or(0),
            ),
            None => (addr.to_string(), 0),
        }
    }

    /// `CLUSTER SLOTS/SHARDS/NODES/INFO/MYID` in placed mode, from the
    /// master's placement; `None` for other subcommands (or while the
    /// layout is unknown).
    fn placed_cluster_command(&self, sub: &str, argc: usize) -> Option<Reply> {
        if argc != 2 || !matches!(sub, "SLOTS" | "SHARDS" | "NODES" | "INFO" | "MYID") {
            return None;
        }
        let myself = placed_node_id(self.nh.raft_address());
        if sub == "MYID" {
            return Some(Reply::Bulk(myself.into_bytes()));
        }
        let t = self.directory.get()?.topology()?;
        let endpoint = |id: &str| {
            let addr = t.nodes.get(id).map_or("127.0.0.1:0", String::as_str);
            match addr.rsplit_once(':') {
                Some((h, p)) => (
                    h.trim_start_matches('[').trim_end_matches(']').to_string(),
                    p.parse::<i64>().unwrap_or(0),
                ),
                None => (addr.to_string(), 0),
            }
        };
        // The ranges with a known node, and their nodes (master first).
        let ranges: Vec<(u16, u16, ShardId, &Vec<String>)> = self
            .ranges()
            .into_iter()
            .filter_map(|(a, b, shard)| {
                t.shards
                    .get(&shard)
                    .filter(|n| !n.is_empty())
                    .map(|n| (a, b, shard, n))
            })
            .collect();
        let bulk = |s: &str| Reply::Bulk(s.as_bytes().to_vec());
        Some(match sub {
            "SLOTS" => Reply::Array(
                ranges
                    .iter()
                    .map(|(a, b, _, nodes)| {
                        let mut v = vec![Reply::Int(*a as i64), Reply::Int(*b as i64)];
                        v.extend(nodes.iter().map(|id| {
                            let (host, port) = endpoint(id);
                            Reply::Array(vec![bulk(&host), Reply::Int(port), bulk(id)])
                        }));
                        Reply::Array(v)
                    })
                    .collect(),
            ),
            "SHARDS" => Reply::Array(
                ranges
                    .iter()
                    .map(|(a, b, _, nodes)| {
                        let node_maps = nodes
                            .iter()
                            .enumerate()
                            .map(|(i, id)| {
                                let (host, port) = endpoint(id);
                                let kv = |k: &str, v: Reply| (Reply::Bulk(k.into()), v);
                                Reply::Map(vec![
                                    kv("id", bulk(id)),
                                    kv("port", Reply::Int(port)),
                                    kv("ip", bulk(&host)),
                                    kv("endpoint", bulk(&host)),
                                    kv("role", bulk(if i == 0 { "master" } else { "replica" })),
                                    kv("replication-offset", Reply::Int(0)),
                                    kv("health", bulk("online")),
                                ])
                            })
                            .collect();
                        Reply::Map(vec![
                            (
                                bulk("slots"),
                                Reply::Array(vec![Reply::Int(*a as i64), Reply::Int(*b as i64)]),
                            ),
                            (bulk("nodes"), Reply::Array(node_maps)),
                        ])
                    })
                    .collect(),
            ),
            "NODES" => {
                let mut slots: BTreeMap<&str, Vec<String>> = BTreeMap::new();
                for (a, b, _, nodes) in &ranges {
                    slots.entry(&nodes[0]).or_default().push(if a == b {
                        a.to_string()
                    } else {
                        format!("{a}-{b}")
                    });
                }
                let first_master = slots.keys().next().map(|s| s.to_string());
                let mut out = String::new();
                for id in t.nodes.keys() {
                    let (host, port) = endpoint(id);
                    let me = if *id == myself { "myself," } else { "" };
                    let (role, master) = match (slots.get(id.as_str()), &first_master) {
                        (Some(_), _) | (None, None) => ("master", "-".to_string()),
                        (None, Some(m)) => ("slave", m.clone()),
                    };
                    out.push_str(&format!(
                        "{id} {host}:{port}@{} {me}{role} {master} 0 0 0 connected",
                        port + 10_000
                    ));
                    for r in slots.get(id.as_str()).into_iter().flatten() {
                        out.push(' ');
                        out.push_str(r);
                    }
                    out.push('\n');
                }
                Reply::Bulk(out.into_bytes())
            }
            _ => {
                let ok_slots: u64 = ranges.iter().map(|r| (r.1 - r.0) as u64 + 1).sum();
                let masters: std::collections::BTreeSet<&str> =
                    ranges.iter().map(|r| r.3[0].as_str()).collect();
                Reply::Bulk(
                    format!(
                        "cluster_enabled:1\r\ncluster_state:{}\r\ncluster_slots_assigned:{ok_slots}\r\ncluster_slots_ok:{ok_slots}\r\ncluster_slots_pfail:0\r\ncluster_slots_fail:{}\r\ncluster_known_nodes:{}\r\ncluster_size:{}\r\ncluster_current_epoch:0\r\ncluster_my_epoch:0\r\nlongship_shards:{}\r\n",
                        if ok_slots == crate::slots::SLOTS { "ok" } else { "fail" },
                        crate::slots::SLOTS - ok_slots,
                        t.nodes.len(),
                        masters.len(),
                        self.shards,
                    )
                    .into_bytes(),
                )
            }
        })
    }

    /// Answers `CLUSTER <subcommand> ...`.
    fn cluster_command(&self, args: &[Vec<u8>]) -> Reply {
        let sub = String::from_utf8_lossy(&args[1]).to_ascii_uppercase();
        let argc = args.len();
        if self.placed()
            && let Some(r) = self.placed_cluster_command(&sub, argc)
        {
            return r;
        }
        let node_entry = |id: u64| {
            let (host, port) = self.redis_endpoint(id);
            Reply::Array(vec![
                Reply::Bulk(host.into_bytes()),
                Reply::Int(port),
                Reply::Bulk(cluster_node_id(id).into_bytes()),
            ])
        };
        if matches!(sub.as_str(), "SLOTS" | "SHARDS" | "NODES" | "INFO") {
            self.wake_quiesced();
        }
        match sub.as_str() {
            "KEYSLOT" if argc == 3 => Reply::Int(key_slot(&args[2]) as i64),
            "MYID" if argc == 2 => Reply::Bulk(cluster_node_id(self.node_id).into_bytes()),
            "SLOTS" if argc == 2 => {
                let nodes = self.cluster_nodes();
                Reply::Array(
                    self.ranges()
                        .into_iter()
                        .map(|(a, b, shard)| {
                            let master = self.master_of(shard);
                            let mut v = vec![Reply::Int(a as i64), Reply::Int(b as i64)];
                            v.push(node_entry(master));
                            v.extend(
                                nodes
                                    .iter()
                                    .filter(|&&n| n != master)
                                    .map(|&n| node_entry(n)),
                            );
                            Reply::Array(v)
                        })
                        .collect(),
                )
            }
            "SHARDS" if argc == 2 => {
                let nodes = self.cluster_nodes();
                let info = self.nh.get_node_host_info();
                Reply::Array(
                    self.ranges()
                        .into_iter()
                        .map(|(a, b, shard)| {
                            let master = self.master_of(shard);
                            let applied = info
                                .shards
                                .iter()
                                .find(|x| x.shard_id == shard)
                                .map_or(0, |x| x.applied.0 as i64);
                            let mut order = vec![master];
                            order.extend(nodes.iter().copied().filter(|&n| n != master));
                            let node_maps = order
                                .into_iter()
                                .map(|id| {
                                    let (host, port) = self.redis_endpoint(id);
                                    let kv = |k: &str, v: Reply| (Reply::Bulk(k.into()), v);
                                    let bulk = |s: &str| Reply::Bulk(s.as_bytes().to_vec());
                                    let role = if id == master { "master" } else { "replica" };
                                    Reply::Map(vec![
                                        kv("id", bulk(&cluster_node_id(id))),
                                        kv("port", Reply::Int(port)),
                                        kv("ip", bulk(&host)),
                                        kv("endpoint", bulk(&host)),
                                        kv("role", bulk(role)),
                                        kv("replication-offset", Reply::Int(applied)),
                                        kv("health", bulk("online")),
                                    ])
                                })
                                .collect();
                            Reply::Map(vec![
                                (
                                    Reply::Bulk(b"slots".to_vec()),
                                    Reply::Array(vec![Reply::Int(a as i64), Reply::Int(b as i64)]),
                                ),
                                (Reply::Bulk(b"nodes".to_vec()), Reply::Array(node_maps)),
                            ])
                        })
                        .collect(),
                )
            }
            "NODES" if argc == 2 => Reply::Bulk(self.cluster_nodes_text().into_bytes()),
            "INFO" if argc == 2 => {
                let ranges = self.ranges();
                let ok_slots: u64 = ranges
                    .iter()
                    .filter(|r| self.leader_of(r.2).is_some())
                    .map(|r| (r.1 - r.0) as u64 + 1)
                    .sum();
                let masters: std::collections::BTreeSet<u64> =
                    ranges.iter().map(|r| self.master_of(r.2)).collect();
                let term = self
                    .nh
                    .get_node_host_info()
                    .shards
                    .iter()
                    .map(|x| x.term.0)
                    .max()
                    .unwrap_or(0);
                Reply::Bulk(
                    format!(
                        "cluster_enabled:1\r\ncluster_state:{}\r\ncluster_slots_assigned:{}\r\ncluster_slots_ok:{ok_slots}\r\ncluster_slots_pfail:0\r\ncluster_slots_fail:{}\r\ncluster_known_nodes:{}\r\ncluster_size:{}\r\ncluster_current_epoch:{term}\r\ncluster_my_epoch:{term}\r\nlongship_shards:{}\r\n",
                        if ok_slots == crate::slots::SLOTS { "ok" } else { "fail" },
                        crate::slots::SLOTS,
                        crate::slots::SLOTS - ok_slots,
                        self.cluster_nodes().len(),
                        masters.len(),
                        self.shards,
                    )
                    .into_bytes(),
                )
            }
            "KEYSLOT" | "MYID" | "SLOTS" | "SHARDS" | "NODES" | "INFO" => Reply::err(format!(
                "wrong number of arguments for 'cluster|{}' command",
                sub.to_ascii_lowercase()
            )),
            _ => Reply::err(format!(
                "unknown subcommand '{}'. Try CLUSTER HELP.",
                String::from_utf8_lossy(&args[1])
                    .chars()
                    .take(64)
                    .collect::<String>()
            )),
        }
    }

    /// `CLUSTER NODES`: one line per node. A node that leads a range is a
    /// master with its slots; a node that leads none is shown as a replica
    /// of the first master (a longship node is a replica of every shard,
    /// which this format cannot say).
    fn cluster_nodes_text(&self) -> String {
        let mut slots: BTreeMap<u64, Vec<String>> = BTreeMap::new();
        for (a, b, shard) in self.ranges() {
            slots
                .entry(self.master_of(shard))
                .or_default()
                .push(if a == b {
                    a.to_string()
                } else {
                    format!("{a}-{b}")
                });
        }
        let first_master = slots.keys().next().copied().unwrap_or(self.node_id);
        let mut out = String::new();
        for id in self.cluster_nodes() {
            let (host, port) = self.redis_endpoint(id);
            let me = if id == self.node_id { "myself," } else { "" };
            let (role, master) = match slots.get(&id) {
                Some(_) => ("master", "-".to_string()),
                None => ("slave", cluster_node_id(first_master)),
            };
            out.push_str(&format!(
                "{} {host}:{port}@{} {me}{role} {master} 0 0 0 connected",
                cluster_node_id(id),
                port + 10_000,
            ));
            for r in slots.get(&id).into_iter().flatten() {
                out.push(' ');
                out.push_str(r);
            }
            out.push('\n');
        }
        out
    }

    /// `INFO [section ...]`: Redis's `server`, `clients`, `memory`, `stats`,
    /// `keyspace` and `cluster` sections, and a `raft` section (shards,
    /// leaders, terms, applied indexes). No section (or `default`, `all`,
    /// `everything`): all of them.
    pub fn info(&self, sections: &[Vec<u8>]) -> String {
        let want = |name: &str| {
            sections.is_empty()
                || sections.iter().any(|s| {
                    let s = String::from_utf8_lossy(s).to_ascii_lowercase();
                    s == name || s == "all" || s == "default" || s == "everything"
                })
        };
        let info = self.nh.get_node_host_info();
        let mut s = String::new();
        if want("server") {
            let port = self
                .config
                .redis_addrs
                .get(&self.node_id)
                .and_then(|a| a.rsplit(':').next())
                .unwrap_or("0");
            s.push_str(&format!(
                "# Server\r\nredis_version:{REDIS_VERSION}\r\nredis_mode:cluster\r\nlongship_kv_version:{}\r\nprocess_id:{}\r\ntcp_port:{port}\r\nuptime_in_seconds:{}\r\nnode_id:{}\r\nraft_address:{}\r\n\r\n",
                env!("CARGO_PKG_VERSION"),
                std::process::id(),
                self.started.elapsed().as_secs(),
                self.node_id,
                info.raft_address,
            ));
        }
        if want("clients") {
            s.push_str(&format!(
                "# Clients\r\nconnected_clients:{}\r\nmaxclients:{}\r\n\r\n",
                self.clients(),
                self.config.maxclients
            ));
        }
        if want("memory") {
            // Resident set size (Linux; 0 elsewhere).
            let rss = std::fs::read_to_string("/proc/self/statm")
                .ok()
                .and_then(|t| t.split_whitespace().nth(1)?.parse::<u64>().ok())
                .map_or(0, |pages| pages * 4096);
            s.push_str(&format!(
                "# Memory\r\nused_memory:{rss}\r\nused_memory_rss:{rss}\r\nmaxmemory:0\r\nproto_max_bulk_len:{}\r\n\r\n",
                self.config.proto_max_bulk_len
            ));
        }
        if want("stats") {
            s.push_str(&format!(
                "# Stats\r\ntotal_connections_received:{}\r\ntotal_commands_processed:{}\r\nmoved_replies:{}\r\n\r\n",
                self.next_client_id.load(Ordering::Relaxed),
                self.commands.load(Ordering::Relaxed),
                self.moved_replies(),
            ));
        }
        if want("keyspace") {
            // Keys held by this node's replicas (expired keys not yet swept
            // included).
            let (mut keys, mut expires) = (0u64, 0u64);
            for x in &info.shards {
                if let Ok(b) = self.nh.read_local(x.shard_id, &[crate::sm::query::STATS])
                    && b.len() == 16
                {
                    keys += u64::from_le_bytes(b[..8].try_into().unwrap_or_default());
                    expires += u64::from_le_bytes(b[8..].try_into().unwrap_or_default());
                }
            }
            s.push_str(&format!(
                "# Keyspace\r\ndb0:keys={keys},expires={expires},avg_ttl=0\r\n\r\n"
            ));
        }
        if want("cluster") {
            s.push_str("# Cluster\r\ncluster_enabled:1\r\n\r\n");
        }
        if want("raft") {
            let leaders = info.shards.iter().filter(|x| x.is_leader).count();
            let quiesced = info.shards.iter().filter(|x| x.quiesced).count();
            s.push_str(&format!(
                "# Raft\r\nshards:{}\r\nleader_shards:{leaders}\r\nquiesced_shards:{quiesced}\r\n",
                self.shards
            ));
            for x in &info.shards {
                s.push_str(&format!(
                    "shard_{}:leader={},term={},applied={},snapshot={}\r\n",
                    x.shard_id, x.leader_id, x.term, x.applied, x.snapshot_index
                ));
            }
        }
        s
    }
}

/// The slot of all of `keys` (`None` when there are none), or `-CROSSSLOT`.
fn same_slot(keys: &[&[u8]]) -> Result<Option<u16>, Reply> {
    let mut slot = None;
    for k in keys {
        let s = key_slot(k);
        if slot.is_some_and(|x| x != s) {
            return Err(Reply::Error(
                "CROSSSLOT Keys in request don't hash to the same slot".into(),
            ));
        }
        slot = Some(s);
    }
    Ok(slot)
}

/// The 40-character id of a node in `CLUSTER` replies: its node id in hex.
pub fn cluster_node_id(node_id: u64) -> String {
    format!("{node_id:040x}")
}

/// What `CLIENT LIST` shows of a connection.
#[derive(Clone, Debug)]
struct ClientEntry {
    addr: String,
    laddr: String,
    name: String,
    lib_name: String,
    lib_ver: String,
    since: Instant,
    last: Instant,
    last_cmd: String,
}

impl ClientEntry {
    fn line(&self, id: u64) -> String {
        format!(
            "id={id} addr={} laddr={} fd=0 name={} age={} idle={} flags=N db=0 sub=0 psub=0 ssub=0 multi=-1 cmd={} user=default redir=-1 resp=2 lib-name={} lib-ver={}",
            self.addr,
            self.laddr,
            self.name,
            self.since.elapsed().as_secs(),
            self.last.elapsed().as_secs(),
            self.last_cmd,
            self.lib_name,
            self.lib_ver
        )
    }
}

/// Counts a connection while it lives (and lists it for `CLIENT LIST`).
struct ClientSlot(Arc<KvNode>, u64);

impl Drop for ClientSlot {
    fn drop(&mut self) {
        self.0.client_list.lock().remove(&self.1);
        self.0.clients.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Compares two secrets in time independent of where they differ.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    let mut diff = (a.len() != b.len()) as u8;
    for i in 0..a.len().max(b.len()) {
        diff |= a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0);
    }
    diff == 0
}

/// Accepts Redis connections until the listener fails. Over `maxclients`
/// connections, a new one is answered `-ERR max number of clients reached`
/// and closed (as Redis does).
pub async fn serve(listener: TcpListener, node: Arc<KvNode>) {
    KvNode::start_sweeper(&node);
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let _ = stream.set_nodelay(true);
                if node.clients.fetch_add(1, Ordering::AcqRel) >= node.config.maxclients {
                    node.clients.fetch_sub(1, Ordering::AcqRel);
                    // Best effort, never blocking the accept loop.
                    let _ = stream.try_write(b"-ERR max number of clients reached\r\n");
                    continue;
                }
                let id = node.next_client_id.fetch_add(1, Ordering::AcqRel) + 1;
                let now = Instant::now();
                node.client_list.lock().insert(
                    id,
                    ClientEntry {
                        addr: stream
                            .peer_addr()
                            .map(|a| a.to_string())
                            .unwrap_or_default(),
                        laddr: stream
                            .local_addr()
                            .map(|a| a.to_string())
                            .unwrap_or_default(),
                        name: String::new(),
                        lib_name: String::new(),
                        lib_ver: String::new(),
                        since: now,
                        last: now,
                        last_cmd: "NULL".into(),
                    },
                );
                let slot = ClientSlot(node.clone(), id);
                let node = node.clone();
                let tls = node.tls.get().cloned();
                tokio::spawn(async move {
                    let r = match tls {
                        None => {
                            let (r, w) = stream.into_split();
                            handle_conn(r, w, node, id).await
                        }
                        Some(acceptor) => {
                            match tokio::time::timeout(
                                TLS_HANDSHAKE_TIMEOUT,
                                acceptor.accept(stream),
                            )
                            .await
                            {
                                Ok(Ok(tls)) => {
                                    let (r, w) = tokio::io::split(tls);
                                    handle_conn(r, w, node, id).await
                                }
                                Ok(Err(e)) => Err(e),
                                Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
                            }
                        }
                    };
                    if let Err(e) = r {
                        tracing::debug!(error = %e, "connection closed");
                    }
                    drop(slot);
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// Per-connection state that commands change.
#[derive(Default)]
struct ConnState {
    /// READONLY: reads without ReadIndex (stale).
    readonly: bool,
    /// Cluster mode: the client sent READONLY or a CLUSTER command, so it
    /// gets `-MOVED` and `-CROSSSLOT` (see `KvNode::route`).
    cluster: bool,
    /// QUIT was received: close after the replies.
    quit: bool,
    /// MULTI: the commands queued for EXEC.
    multi: Option<Vec<Cmd>>,
    /// A command queued after MULTI was refused: EXEC answers EXECABORT.
    multi_error: bool,
    /// WATCHed keys and their digests when watched.
    watched: Vec<(Vec<u8>, Vec<u8>)>,
    /// The client id (`CLIENT ID`).
    id: u64,
    /// Whether the client may run commands (AUTH given, or no password).
    authed: bool,
    /// The client chose RESP3 (`HELLO 3`).
    resp3: bool,
    /// Sessions whose last proposal has an unknown outcome, by shard (see
    /// `KvNode::propose`).
    fences: BTreeMap<ShardId, Session>,
}

/// The commands of one round, and the protocol error that ended it, if any.
struct Round {
    commands: Vec<Vec<Vec<u8>>>,
    used: usize,
    error: Option<RespError>,
}

fn is_conn_command(args: &[Vec<u8>]) -> bool {
    args.first().is_some_and(|n| {
        n.eq_ignore_ascii_case(b"QUIT")
            || n.eq_ignore_ascii_case(b"READONLY")
            || n.eq_ignore_ascii_case(b"READWRITE")
            || n.eq_ignore_ascii_case(b"WATCH")
    })
}

/// Takes the complete commands at the front of `buf` for one round. A
/// command that changes the connection's state (QUIT, READONLY,
/// READWRITE, WATCH) ends its round.
fn parse_round(parser: &mut RequestParser, buf: &[u8]) -> Round {
    let mut round = Round {
        commands: Vec::new(),
        used: 0,
        error: None,
    };
    while round.commands.len() < MAX_ROUND_COMMANDS && round.used < MAX_ROUND_BYTES {
        match parser.next(&buf[round.used..]) {
            Ok(Some((args, len))) => {
                round.used += len;
                if args.is_empty() {
                    continue;
                }
                let ends = is_conn_command(&args);
                round.commands.push(args);
                if ends {
                    break;
                }
            }
            Ok(None) => break,
            Err(e) => {
                round.error = Some(e);
                break;
            }
        }
    }
    round
}

/// Polls `f` once: its output if it is ready now.
async fn poll_once<F: Future>(f: F) -> Option<F::Output> {
    let mut f = std::pin::pin!(f);
    std::future::poll_fn(|cx| {
        Poll::Ready(match f.as_mut().poll(cx) {
            Poll::Ready(v) => Some(v),
            Poll::Pending => None,
        })
    })
    .await
}

/// Writes what the stream takes now without waiting; then, when all is
/// written, flushes (TLS keeps records buffered until then). Returns
/// whether a flush is still pending.
async fn flush_some<W: AsyncWrite + Unpin>(w: &mut W, out: &mut Vec<u8>) -> std::io::Result<bool> {
    let mut sent = 0;
    while sent < out.len() {
        match poll_once(w.write(&out[sent..])).await {
            Some(Ok(0)) => return Err(std::io::ErrorKind::WriteZero.into()),
            Some(Ok(n)) => sent += n,
            Some(Err(e)) => return Err(e),
            None => break,
        }
    }
    out.drain(..sent);
    if !out.is_empty() {
        return Ok(true);
    }
    match poll_once(w.flush()).await {
        Some(r) => r.map(|_| false),
        None => Ok(true),
    }
}

/// Serves one client connection (a TCP stream's halves, or a TLS
/// stream's) until it closes; see the module docs for the rounds.
async fn handle_conn<R, W>(mut r: R, mut w: W, node: Arc<KvNode>, id: u64) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut parser = RequestParser::new(node.config.resp_limits());
    let mut buf: Vec<u8> = Vec::with_capacity(16 << 10);
    let mut out: Vec<u8> = Vec::with_capacity(16 << 10);
    let mut state = ConnState {
        id,
        authed: node.config.requirepass.is_none(),
        ..ConnState::default()
    };
    let mut eof = false;
    let mut last_active = tokio::time::Instant::now();
    let idle = node.config.timeout;
    let mut unflushed;
    loop {
        unflushed = flush_some(&mut w, &mut out).await?;
        while out.len() > MAX_PENDING_REPLY_BYTES {
            match w.write(&out).await? {
                0 => return Err(std::io::ErrorKind::WriteZero.into()),
                n => drop(out.drain(..n)),
            }
        }
        if out.is_empty() && out.capacity() > SHRINK_ABOVE {
            out = Vec::with_capacity(16 << 10);
        }
        let round = parse_round(&mut parser, &buf);
        if round.used > 0 || round.error.is_some() {
            buf.drain(..round.used);
            if buf.is_empty() && buf.capacity() > SHRINK_ABOVE {
                // Give back the memory of a burst.
                buf = Vec::with_capacity(16 << 10);
            }
            for (r, resp3) in execute_round(&node, &mut state, round.commands).await {
                r.encode_proto(&mut out, resp3);
            }
            if let Some(e) = round.error {
                // As Redis: answer the protocol error, then close.
                Reply::Error(format!("ERR {e}")).encode(&mut out);
                state.quit = true;
            }
            if state.quit {
                return close_after(r, w, &out).await;
            }
            last_active = tokio::time::Instant::now();
            continue;
        }
        if eof {
            w.write_all(&out).await?;
            w.flush().await?;
            return Ok(());
        }
        if buf.len() > node.config.client_query_buffer_limit {
            Reply::err(format!(
                "Protocol error: query buffer of {} bytes over client-query-buffer-limit ({} bytes)",
                buf.len(),
                node.config.client_query_buffer_limit
            ))
            .encode(&mut out);
            return close_after(r, w, &out).await;
        }
        // No complete command: read more (and send replies meanwhile).
        let idle_deadline = last_active + idle;
        buf.reserve(READ_CHUNK);
        tokio::select! {
            // Cancel safe: when another branch wins, nothing was read.
            n = r.read_buf(&mut buf) => {
                match n? {
                    0 => eof = true,
                    _ => last_active = tokio::time::Instant::now(),
                }
            }
            // Replies, or (TLS) the flush of what was written.
            n = async {
                if out.is_empty() {
                    w.flush().await.map(|_| None)
                } else {
                    w.write(&out).await.map(Some)
                }
            }, if !out.is_empty() || unflushed => {
                match n? {
                    Some(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                    Some(n) => drop(out.drain(..n)),
                    // Flushed: the next flush_some finds nothing pending.
                    None => {}
                }
            }
            _ = tokio::time::sleep_until(idle_deadline), if !idle.is_zero() => {
                // Idle past `timeout`: closed without a reply, as Redis does.
                return Ok(());
            }
        }
    }
}

/// Sends the last replies and closes the connection. Input the client
/// still sends is read and dropped for a moment first: closing a socket
/// with unread input resets it, and the client could lose the replies.
async fn close_after<R, W>(mut r: R, mut w: W, out: &[u8]) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    w.write_all(out).await?;
    w.shutdown().await?;
    let drain = async {
        let mut sink = vec![0u8; READ_CHUNK];
        let mut total = 0usize;
        while total < (64 << 20) {
            match r.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), drain).await;
    Ok(())
}

/// Polls every future until all are done; their outputs in order. (The
/// shards of one round run concurrently inside the connection's task.)
async fn join_all<F: Future>(futs: Vec<F>) -> Vec<F::Output> {
    let mut futs: Vec<Pin<Box<F>>> = futs.into_iter().map(Box::pin).collect();
    let mut outs: Vec<Option<F::Output>> = futs.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, o) in futs.iter_mut().zip(outs.iter_mut()) {
            if o.is_none() {
                match f.as_mut().poll(cx) {
                    Poll::Ready(v) => *o = Some(v),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    outs.into_iter().flatten().collect()
}

/// How a command's reply is built from the replies of its sub-commands.
#[derive(Clone, Debug)]
enum Combine {
    /// The one reply as is.
    One,
    /// The arrays concatenated (MGET per key, KEYS per shard).
    Concat,
    /// The integers summed (DEL, EXISTS, TOUCH, UNLINK, DBSIZE).
    Sum,
    /// OK once every part answered OK (MSET, FLUSHALL).
    AllOk,
    /// The first non-nil reply (RANDOMKEY over shards in random order).
    FirstNonNil,
    /// One shard's part of a SCAN: the cursor goes on from shard index `idx`.
    Scan { idx: u64 },
    /// WATCH: the digests of these keys are kept in the connection.
    Watch(Vec<Vec<u8>>),
}

/// A command of a round: its reply now, or sub-commands to run and how to
/// combine their replies.
enum Planned {
    Now(Reply),
    Cmds {
        first: usize,
        n: usize,
        combine: Combine,
    },
}

/// Sub-commands of a round, in command order, with their shard.
struct RoundCmds {
    cmds: Vec<(ShardId, Cmd)>,
}

/// Executes the commands of one round (see the module docs) and returns
/// their replies in order. `readonly` makes reads stale (no ReadIndex).
pub async fn execute_commands(
    node: &KvNode,
    commands: Vec<Vec<Vec<u8>>>,
    readonly: bool,
) -> Vec<Reply> {
    let mut state = ConnState {
        readonly,
        authed: true,
        ..ConnState::default()
    };
    execute_round(node, &mut state, commands)
        .await
        .into_iter()
        .map(|(r, _)| r)
        .collect()
}

/// Executes a round: each reply with whether it goes out in RESP3 (the
/// protocol after its command: HELLO's own reply is in the new one).
async fn execute_round(
    node: &KvNode,
    state: &mut ConnState,
    commands: Vec<Vec<Vec<u8>>>,
) -> Vec<(Reply, bool)> {
    // CLIENT LIST's idle time and last command: once per round.
    node.commands
        .fetch_add(commands.len() as u64, Ordering::Relaxed);
    if let Some(last) = commands.last().and_then(|c| c.first())
        && let Some(c) = node.client_list.lock().get_mut(&state.id)
    {
        c.last = Instant::now();
        c.last_cmd = String::from_utf8_lossy(last).to_ascii_lowercase();
    }
    let mut round = RoundCmds { cmds: Vec::new() };
    let mut protos = Vec::with_capacity(commands.len());
    let planned: Vec<Planned> = commands
        .iter()
        .map(|args| {
            let p = plan(node, state, args, &mut round);
            protos.push(state.resp3);
            p
        })
        .collect();
    let mut replies: Vec<Option<Reply>> = round.cmds.iter().map(|_| None).collect();
    if !round.cmds.is_empty() {
        // Group by shard, keeping the order of each shard's commands.
        let mut by_shard: BTreeMap<ShardId, (Vec<usize>, Vec<Cmd>)> = BTreeMap::new();
        for (i, (shard, cmd)) in round.cmds.into_iter().enumerate() {
            let e = by_shard.entry(shard).or_default();
            e.0.push(i);
            e.1.push(cmd);
        }
        let stale = state.readonly;
        let mut places = Vec::with_capacity(by_shard.len());
        let mut futs = Vec::with_capacity(by_shard.len());
        for (shard, (idx, cmds)) in by_shard {
            let fence = state.fences.remove(&shard);
            places.push((shard, idx));
            futs.push(node.run_shard(shard, cmds, stale, fence));
        }
        for ((shard, idx), (results, fence)) in places.into_iter().zip(join_all(futs).await) {
            if let Some(f) = fence {
                state.fences.insert(shard, f);
            }
            for (i, r) in idx.into_iter().zip(results) {
                replies[i] = Some(r);
            }
        }
    }
    planned
        .into_iter()
        .map(|p| match p {
            Planned::Now(r) => r,
            Planned::Cmds { first, n, combine } => {
                combine_reply(node, state, combine, &replies[first..first + n])
            }
        })
        .zip(protos)
        .collect()
}

fn combine_reply(
    node: &KvNode,
    state: &mut ConnState,
    combine: Combine,
    replies: &[Option<Reply>],
) -> Reply {
    let mut rs = Vec::with_capacity(replies.len());
    for r in replies {
        match r {
            // A failure of the request (not a command's own error reply,
            // which is part of the result) answers the whole command.
            Some(Reply::Error(e))
                if !matches!(combine, Combine::One | Combine::Concat)
                    || e.starts_with("TIMEOUT")
                    || e.starts_with("BUSY") =>
            {
                return Reply::Error(e.clone());
            }
            Some(r) => rs.push(r),
            None => return Reply::err("internal error: command not executed"),
        }
    }
    let unexpected = || Reply::err("internal error: unexpected reply");
    match combine {
        Combine::One => rs.first().map_or_else(unexpected, |r| (*r).clone()),
        Combine::Concat => {
            let mut out = Vec::new();
            for r in rs {
                match r {
                    Reply::Array(items) => out.extend(items.iter().cloned()),
                    Reply::Error(e) => return Reply::Error(e.clone()),
                    _ => return unexpected(),
                }
            }
            Reply::Array(out)
        }
        Combine::Sum => {
            let mut n: i64 = 0;
            for r in rs {
                match r {
                    Reply::Int(x) => n = n.saturating_add(*x),
                    _ => return unexpected(),
                }
            }
            Reply::Int(n)
        }
        Combine::AllOk => {
            if rs.iter().all(|r| **r == Reply::ok()) {
                Reply::ok()
            } else {
                unexpected()
            }
        }
        Combine::FirstNonNil => rs
            .into_iter()
            .find(|r| **r != Reply::Nil)
            .cloned()
            .unwrap_or(Reply::Nil),
        Combine::Scan { idx } => match rs.first() {
            Some(Reply::Array(parts)) if parts.len() == 2 => {
                let pos: u64 = match &parts[0] {
                    Reply::Bulk(b) => std::str::from_utf8(b)
                        .ok()
                        .and_then(|s| s.parse().ok())
                        .unwrap_or(0),
                    _ => return unexpected(),
                };
                let cursor = if pos != 0 {
                    (idx << SCAN_SHARD_SHIFT) | pos
                } else if idx + 1 < node.shards {
                    (idx + 1) << SCAN_SHARD_SHIFT
                } else {
                    0
                };
                Reply::Array(vec![
                    Reply::Bulk(cursor.to_string().into_bytes()),
                    parts[1].clone(),
                ])
            }
            _ => unexpected(),
        },
        Combine::Watch(keys) => match rs.first() {
            Some(Reply::Array(ds)) if ds.len() == keys.len() => {
                for (k, d) in keys.into_iter().zip(ds) {
                    if let Reply::Bulk(d) = d {
                        state.watched.push((k, d.clone()));
                    }
                }
                Reply::ok()
            }
            _ => unexpected(),
        },
    }
}

/// Bits of a SCAN cursor that hold the position inside a shard (a 48-bit
/// key hash plus one); the shard's index is above them.
const SCAN_SHARD_SHIFT: u32 = 49;

fn arity_error(name: &str) -> Reply {
    Reply::err(format!(
        "wrong number of arguments for '{}' command",
        name.to_ascii_lowercase()
    ))
}

fn error_reply(e: &Error) -> Reply {
    match e {
        Error::Timeout => Reply::Error("TIMEOUT request timed out (outcome unknown)".into()),
        Error::SystemBusy => Reply::Error("BUSY system busy, retry later".into()),
        Error::PayloadTooBig { size, max } => Reply::err(format!(
            "request of {size} bytes over the replicated entry limit of {max} bytes (max_proposal_bytes)"
        )),
        other => Reply::err(other.to_string()),
    }
}

fn too_big_for_raft(cmd: &[Vec<u8>], max_entry: usize) -> Reply {
    Reply::err(format!(
        "value too large to replicate: {} bytes over the replicated entry limit of {} bytes (max_proposal_bytes)",
        cmd_encoded_len(cmd) + BATCH_HEADER_BYTES,
        max_entry
    ))
}

/// Refuses a key over [`MAX_KEY_BYTES`], or a write that cannot fit one
/// replicated entry.
fn check_cmd(node: &KvNode, keys: &[&[u8]], cmd: &[Vec<u8>]) -> Option<Reply> {
    if keys.iter().any(|k| k.len() > MAX_KEY_BYTES) {
        return Some(Reply::err(format!(
            "key too large (over {MAX_KEY_BYTES} bytes)"
        )));
    }
    let max = node.max_entry_bytes();
    (!cmd.is_empty() && !is_read(cmd) && cmd_encoded_len(cmd) + BATCH_HEADER_BYTES > max)
        .then(|| too_big_for_raft(cmd, max))
}

fn parse_u64(b: &[u8]) -> Option<u64> {
    std::str::from_utf8(b).ok()?.parse().ok()
}

/// Commands answered by the node itself, never inside MULTI.
const CONN_COMMANDS: &[&str] = &[
    "QUIT",
    "READONLY",
    "READWRITE",
    "COMMAND",
    "CONFIG",
    "CLUSTER",
    "INFO",
    "SELECT",
    "MULTI",
    "EXEC",
    "DISCARD",
    "WATCH",
    "UNWATCH",
];

/// Commands over every shard (or, in cluster mode, every shard this node
/// leads).
const ALL_SHARD_COMMANDS: &[&str] = &["DBSIZE", "KEYS", "SCAN", "RANDOMKEY", "FLUSHALL", "FLUSHDB"];

/// Plans one command: its reply now, or its sub-commands in `round`.
fn plan(node: &KvNode, state: &mut ConnState, args: &[Vec<u8>], round: &mut RoundCmds) -> Planned {
    let now = Planned::Now;
    let Some(first) = args.first() else {
        return now(Reply::err("empty command"));
    };
    let name = String::from_utf8_lossy(first).to_ascii_uppercase();
    let argc = args.len();
    let Some(info) = commands::lookup(first) else {
        if state.multi.is_some() {
            state.multi_error = true;
        }
        return now(unknown_command(args));
    };
    if !info.arity_ok(argc) {
        if state.multi.is_some() {
            state.multi_error = true;
        }
        return now(arity_error(&name));
    }
    if !state.authed && !matches!(name.as_str(), "AUTH" | "HELLO" | "QUIT") {
        return now(Reply::Error("NOAUTH Authentication required.".into()));
    }
    let cluster_mode = state.cluster || node.config.cluster_redirects || node.placed();
    let keys = info.keys(args);
    // Inside MULTI: data commands are queued, checked like any other.
    if let Some(queued) = &mut state.multi
        && !matches!(
            name.as_str(),
            "EXEC" | "DISCARD" | "MULTI" | "WATCH" | "QUIT"
        )
    {
        if CONN_COMMANDS.contains(&name.as_str()) || ALL_SHARD_COMMANDS.contains(&name.as_str()) {
            state.multi_error = true;
            return now(Reply::err(format!(
                "{} is not supported inside MULTI by longship-kv",
                name.to_ascii_lowercase()
            )));
        }
        if let Some(r) = check_cmd(node, &keys, args) {
            state.multi_error = true;
            return now(r);
        }
        queued.push(args.to_vec());
        return now(Reply::Simple("QUEUED".into()));
    }
    match name.as_str() {
        "QUIT" => {
            state.quit = true;
            return now(Reply::ok());
        }
        "READONLY" => {
            state.readonly = true;
            state.cluster = true;
            return now(Reply::ok());
        }
        "READWRITE" => {
            state.readonly = false;
            return now(Reply::ok());
        }
        "PING" => {
            return now(match argc {
                1 => Reply::Simple("PONG".into()),
                2 => Reply::Bulk(args[1].clone()),
                _ => arity_error(&name),
            });
        }
        "ECHO" => return now(Reply::Bulk(args[1].clone())),
        "COMMAND" => return now(commands::command_command(args)),
        "CONFIG" => return now(node.config_command(args)),
        "AUTH" => return now(node.auth(state, args.last().map_or(&[][..], |p| p.as_slice()))),
        "HELLO" => return now(node.hello(state, args)),
        "CLIENT" => return now(node.client_command(state, args)),
        "SELECT" => {
            return now(if args[1] == b"0" {
                Reply::ok()
            } else {
                Reply::err("DB index is out of range")
            });
        }
        "INFO" => return now(Reply::Bulk(node.info(&args[1..]).into_bytes())),
        "CLUSTER" => {
            state.cluster = true;
            return now(node.cluster_command(args));
        }
        "MULTI" => {
            if state.multi.is_some() {
                return now(Reply::err("MULTI calls can not be nested"));
            }
            state.multi = Some(Vec::new());
            state.multi_error = false;
            return now(Reply::ok());
        }
        "DISCARD" => {
            if state.multi.take().is_none() {
                return now(Reply::err("DISCARD without MULTI"));
            }
            state.watched.clear();
            return now(Reply::ok());
        }
        "UNWATCH" => {
            state.watched.clear();
            return now(Reply::ok());
        }
        "WATCH" => {
            if state.multi.is_some() {
                return now(Reply::err("WATCH inside MULTI is not allowed"));
            }
            let shard = shard_of(keys[0], node.shards);
            if keys.iter().any(|k| shard_of(k, node.shards) != shard) {
                return now(not_one_shard(cluster_mode, &keys));
            }
            if cluster_mode && let Err(r) = node.route(&keys, false, false) {
                return now(r);
            }
            let mut cmd = vec![crate::exec::DIGEST_CMD.to_vec()];
            cmd.extend(keys.iter().map(|k| k.to_vec()));
            let keys = keys.iter().map(|k| k.to_vec()).collect();
            return round.plan(vec![(shard, cmd)], Combine::Watch(keys));
        }
        "EXEC" => {
            let Some(queued) = state.multi.take() else {
                return now(Reply::err("EXEC without MULTI"));
            };
            let watched = std::mem::take(&mut state.watched);
            if state.multi_error {
                return now(Reply::Error(
                    "EXECABORT Transaction discarded because of previous errors.".into(),
                ));
            }
            if queued.is_empty() {
                return now(Reply::Array(Vec::new()));
            }
            let mut all_keys: Vec<&[u8]> = watched.iter().map(|(k, _)| k.as_slice()).collect();
            for c in &queued {
                if let Some(i) = commands::lookup(&c[0]) {
                    all_keys.extend(i.keys(c));
                }
            }
            let shard = all_keys
                .first()
                .map_or(ShardId(1), |k| shard_of(k, node.shards));
            if all_keys.iter().any(|k| shard_of(k, node.shards) != shard) {
                return now(not_one_shard(cluster_mode, &all_keys));
            }
            let write = queued.iter().any(|c| !is_read(c));
            if cluster_mode && let Err(r) = node.route(&all_keys, write, state.readonly) {
                return now(r);
            }
            let mut cmds = Vec::with_capacity(queued.len() + 1);
            if !watched.is_empty() {
                let mut w = vec![crate::exec::WATCHED_CMD.to_vec()];
                for (k, d) in watched {
                    w.push(k);
                    w.push(d);
                }
                cmds.push(w);
            }
            cmds.extend(queued);
            let cmd = crate::exec::encode_exec(&cmds);
            if let Some(r) = check_cmd(node, &[], &cmd) {
                return now(r);
            }
            return round.plan(vec![(shard, cmd)], Combine::One);
        }
        _ => {}
    }
    if let Some(r) = check_cmd(node, &keys, &[]) {
        return now(r);
    }
    let write = !is_read(args);
    if cluster_mode && let Err(r) = node.route(&keys, write, state.readonly) {
        return now(r);
    }
    let shard = |k: &[u8]| shard_of(k, node.shards);
    // The shards a keyspace-wide command runs on.
    let all_shards = || -> Vec<ShardId> {
        (1..=node.shards)
            .map(ShardId)
            .filter(|&s| !cluster_mode || node.leads(s))
            .collect()
    };
    match name.as_str() {
        // Keyspace-wide: every shard (in cluster mode, as a Redis Cluster
        // master does, only the shards this node leads).
        "DBSIZE" | "KEYS" | "FLUSHALL" | "FLUSHDB" => {
            let combine = match name.as_str() {
                "DBSIZE" => Combine::Sum,
                "KEYS" => Combine::Concat,
                _ => Combine::AllOk,
            };
            let cmds = all_shards()
                .into_iter()
                .map(|s| (s, args.to_vec()))
                .collect();
            plan_cmds(node, round, cmds, combine)
        }
        "RANDOMKEY" => {
            let mut shards = all_shards();
            let seed = random_u64();
            if !shards.is_empty() {
                let k = (seed % shards.len() as u64) as usize;
                shards.rotate_left(k);
            }
            let cmds = shards
                .into_iter()
                .map(|s| {
                    (
                        s,
                        vec![b"RANDOMKEY".to_vec(), seed.to_string().into_bytes()],
                    )
                })
                .collect();
            plan_cmds(node, round, cmds, Combine::FirstNonNil)
        }
        "SCAN" => plan_scan(node, args, cluster_mode, round),
        // Per key, not atomic across keys (in cluster mode the keys share a
        // slot, so the parts are consecutive commands of one entry).
        "MGET" | "DEL" | "UNLINK" | "EXISTS" | "TOUCH" => {
            let sub = if name == "MGET" {
                b"MGET".to_vec()
            } else {
                first.clone()
            };
            let cmds = keys
                .iter()
                .map(|k| (shard(k), vec![sub.clone(), k.to_vec()]))
                .collect();
            let combine = if name == "MGET" {
                Combine::Concat
            } else {
                Combine::Sum
            };
            plan_cmds(node, round, cmds, combine)
        }
        "MSET" => {
            let cmds = args[1..]
                .chunks(2)
                .map(|p| {
                    (
                        shard(&p[0]),
                        vec![b"MSET".to_vec(), p[0].clone(), p[1].clone()],
                    )
                })
                .collect();
            plan_cmds(node, round, cmds, Combine::AllOk)
        }
        _ => {
            // One shard: a single-key command, or a multi-key one (RENAME,
            // MSETNX) whose keys must be on the same shard.
            let Some(k0) = keys.first() else {
                return plan_cmds(node, round, vec![(ShardId(1), args.to_vec())], Combine::One);
            };
            let s = shard(k0);
            if keys.iter().any(|k| shard(k) != s) {
                return now(not_one_shard(cluster_mode, &keys));
            }
            plan_cmds(node, round, vec![(s, args.to_vec())], Combine::One)
        }
    }
}

/// Plans sub-commands, each checked to fit one replicated entry (the
/// command is refused whole if one does not).
fn plan_cmds(
    node: &KvNode,
    round: &mut RoundCmds,
    cmds: Vec<(ShardId, Cmd)>,
    combine: Combine,
) -> Planned {
    for (_, c) in &cmds {
        if let Some(r) = check_cmd(node, &[], c) {
            return Planned::Now(r);
        }
    }
    round.plan(cmds, combine)
}

impl RoundCmds {
    fn plan(&mut self, cmds: Vec<(ShardId, Cmd)>, combine: Combine) -> Planned {
        let first = self.cmds.len();
        let n = cmds.len();
        self.cmds.extend(cmds);
        Planned::Cmds { first, n, combine }
    }
}

/// Plans `SCAN cursor [MATCH pattern] [COUNT n] [TYPE t]`: the cursor holds
/// a shard index (above [`SCAN_SHARD_SHIFT`]) and a position in its keys.
fn plan_scan(
    node: &KvNode,
    args: &[Vec<u8>],
    cluster_mode: bool,
    round: &mut RoundCmds,
) -> Planned {
    let Some(cursor) = parse_u64(&args[1]) else {
        return Planned::Now(Reply::err("invalid cursor"));
    };
    let (mut pattern, mut count, mut ty) = (Vec::new(), 10u64, Vec::new());
    let mut i = 2;
    while i < args.len() {
        let opt = String::from_utf8_lossy(&args[i]).to_ascii_uppercase();
        let Some(v) = args.get(i + 1) else {
            return Planned::Now(Reply::err("syntax error"));
        };
        match opt.as_str() {
            "MATCH" => pattern = v.clone(),
            "COUNT" => match crate::exec::parse_int(v) {
                Some(n) if n >= 1 => count = n as u64,
                Some(_) => return Planned::Now(Reply::err("syntax error")),
                None => {
                    return Planned::Now(Reply::err("value is not an integer or out of range"));
                }
            },
            "TYPE" => ty = v.clone(),
            _ => return Planned::Now(Reply::err("syntax error")),
        }
        i += 2;
    }
    let mut idx = cursor >> SCAN_SHARD_SHIFT;
    let mut pos = cursor & ((1 << SCAN_SHARD_SHIFT) - 1);
    // In cluster mode: only the shards this node leads.
    while idx < node.shards && cluster_mode && !node.leads(ShardId(idx + 1)) {
        idx += 1;
        pos = 0;
    }
    if idx >= node.shards {
        return Planned::Now(Reply::Array(vec![
            Reply::Bulk(b"0".to_vec()),
            Reply::Array(Vec::new()),
        ]));
    }
    let cmd = vec![
        b"SCAN".to_vec(),
        pos.to_string().into_bytes(),
        count.to_string().into_bytes(),
        pattern,
        ty,
    ];
    round.plan(vec![(ShardId(idx + 1), cmd)], Combine::Scan { idx })
}

/// The error for a command whose keys are on several shards: CROSSSLOT in
/// cluster mode (or when the slots differ), else a longship-kv error.
fn not_one_shard(cluster_mode: bool, keys: &[&[u8]]) -> Reply {
    match same_slot(keys) {
        Err(r) if cluster_mode => r,
        _ => Reply::err(
            "keys in request are on different shards (longship-kv runs this command on one shard: put the keys in one {hash tag})",
        ),
    }
}

/// A random number (for RANDOMKEY), from the std hasher's random keys.
fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(now_ms());
    h.finish()
}

/// Redis's reply to an unknown command: its name and the start of its
/// arguments, each quoted, at most about 128 characters of them.
fn unknown_command(args: &[Vec<u8>]) -> Reply {
    let name: String = String::from_utf8_lossy(&args[0])
        .chars()
        .take(128)
        .collect();
    let mut shown = String::new();
    for a in &args[1..] {
        if shown.len() >= 128 {
            break;
        }
        let room = 128 - shown.len();
        let a: String = String::from_utf8_lossy(a).chars().take(room).collect();
        shown.push_str(&format!("'{a}' "));
    }
    Reply::err(format!(
        "unknown command '{name}', with args beginning with: {shown}"
    ))
}
