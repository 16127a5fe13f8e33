//! Shared test kit: a key-value state machine (in all three kinds) and a
//! cluster of NodeHosts on an in-memory network.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use longship::{
    Config, Error, NodeHost, NodeHostConfig, ReplicaId, ShardId, SmEntry, SmError, Start,
    StateMachine, StopFlag,
};
use longship_transport::MemNetwork;

/// Commands: `set k v` stores, anything else is counted. Lookup `get k`
/// returns the value; lookup of anything else returns the count.
#[derive(Default, Clone)]
pub struct Kv {
    pub map: BTreeMap<String, String>,
    pub count: u64,
}

impl Kv {
    pub fn apply_cmd(&mut self, cmd: &[u8]) -> u64 {
        self.count += 1;
        let s = String::from_utf8_lossy(cmd);
        let mut parts = s.splitn(3, ' ');
        if parts.next() == Some("set")
            && let (Some(k), Some(v)) = (parts.next(), parts.next())
        {
            self.map.insert(k.to_string(), v.to_string());
        }
        self.count
    }

    pub fn query(&self, q: &[u8]) -> Vec<u8> {
        let s = String::from_utf8_lossy(q);
        if let Some(k) = s.strip_prefix("get ") {
            return self.map.get(k).cloned().unwrap_or_default().into_bytes();
        }
        self.count.to_string().into_bytes()
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = format!("{}\n", self.count);
        for (k, v) in &self.map {
            out.push_str(&format!("{k}\t{v}\n"));
        }
        out.into_bytes()
    }

    pub fn decode(b: &[u8]) -> Kv {
        let s = String::from_utf8_lossy(b);
        let mut lines = s.lines();
        let count = lines.next().and_then(|l| l.parse().ok()).unwrap_or(0);
        let map = lines
            .filter_map(|l| l.split_once('\t'))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Kv { map, count }
    }
}

impl StateMachine for Kv {
    fn update(&mut self, entries: &mut [SmEntry]) -> Result<(), SmError> {
        for e in entries {
            e.result.value = self.apply_cmd(&e.cmd);
        }
        Ok(())
    }
    fn lookup(&self, query: &[u8]) -> Result<Vec<u8>, SmError> {
        Ok(self.query(query))
    }
    fn save_snapshot(&self, w: &mut dyn Write, _: &StopFlag) -> Result<(), SmError> {
        Ok(w.write_all(&self.encode())?)
    }
    fn recover_from_snapshot(&mut self, r: &mut dyn Read, _: &StopFlag) -> Result<(), SmError> {
        let mut b = Vec::new();
        r.read_to_end(&mut b)?;
        *self = Kv::decode(&b);
        Ok(())
    }
}

/// What a [`HookedKv`] is about to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    /// An update of this many entries.
    Update(usize),
    Recover,
}

/// A Kv that calls `hook` before each update and each recovery (to block
/// or to record them).
pub struct HookedKv {
    pub kv: Kv,
    pub hook: Arc<dyn Fn(Hook) + Send + Sync>,
}

impl StateMachine for HookedKv {
    fn update(&mut self, entries: &mut [SmEntry]) -> Result<(), SmError> {
        (self.hook)(Hook::Update(entries.len()));
        self.kv.update(entries)
    }
    fn lookup(&self, query: &[u8]) -> Result<Vec<u8>, SmError> {
        self.kv.lookup(query)
    }
    fn save_snapshot(&self, w: &mut dyn Write, stop: &StopFlag) -> Result<(), SmError> {
        self.kv.save_snapshot(w, stop)
    }
    fn recover_from_snapshot(&mut self, r: &mut dyn Read, stop: &StopFlag) -> Result<(), SmError> {
        (self.hook)(Hook::Recover);
        self.kv.recover_from_snapshot(r, stop)
    }
}

pub const RTT_MS: u64 = 5;
pub const TIMEOUT: Duration = Duration::from_secs(5);

pub fn addr(i: u64) -> String {
    format!("host{i}:1")
}

/// NodeHosts on one in-memory network, with data in a temp dir.
pub struct TestCluster {
    pub net: MemNetwork,
    pub dir: tempfile::TempDir,
    pub hosts: BTreeMap<u64, NodeHost>,
    /// `NodeHostConfig::async_log_writes` of every host (also set for every
    /// test by `LONGSHIP_TEST_ASYNC_LOG_WRITES=1`, to run the suite in that mode).
    pub async_log_writes: bool,
}

impl TestCluster {
    pub fn new(n: u64) -> TestCluster {
        Self::with_log_writes(n, false)
    }

    /// `n` hosts with asynchronous log writes.
    pub fn new_async(n: u64) -> TestCluster {
        Self::with_log_writes(n, true)
    }

    fn with_log_writes(n: u64, async_log_writes: bool) -> TestCluster {
        let async_log_writes =
            async_log_writes || std::env::var_os("LONGSHIP_TEST_ASYNC_LOG_WRITES").is_some();
        let mut c = TestCluster {
            net: MemNetwork::new(),
            dir: tempfile::tempdir().unwrap(),
            hosts: BTreeMap::new(),
            async_log_writes,
        };
        for i in 1..=n {
            c.start_host(i);
        }
        c
    }

    pub fn host_dir(&self, i: u64) -> PathBuf {
        self.dir.path().join(format!("nh{i}"))
    }

    pub fn host_config(&self, i: u64) -> NodeHostConfig {
        NodeHostConfig {
            node_host_dir: self.host_dir(i),
            rtt_ms: RTT_MS,
            raft_address: addr(i),
            seed: Some(i),
            // Two of each whatever the machine (the defaults follow the
            // CPU count): tests rely on shards running on different workers.
            step_workers: 2,
            apply_workers: 2,
            async_log_writes: self.async_log_writes,
            ..NodeHostConfig::default()
        }
    }

    pub fn start_host(&mut self, i: u64) {
        let cfg = self.host_config(i);
        let nh = NodeHost::builder(cfg)
            .transport(Arc::new(self.net.transport(&addr(i))))
            .build()
            .unwrap();
        self.hosts.insert(i, nh);
    }

    pub fn stop_host(&mut self, i: u64) {
        if let Some(nh) = self.hosts.remove(&i) {
            nh.close();
        }
    }

    pub fn nh(&self, i: u64) -> &NodeHost {
        &self.hosts[&i]
    }

    pub fn members(ids: &[u64]) -> BTreeMap<ReplicaId, String> {
        ids.iter().map(|&i| (ReplicaId(i), addr(i))).collect()
    }

    /// Starts replica `i` of `shard` on host `i` with members `ids` and the default test config.
    pub fn start_shard(&self, shard: u64, ids: &[u64]) {
        self.start_shard_with(ids, |i| config(shard, i));
    }

    /// Starts replica `i` on host `i` with members `ids` and config `cfg(i)`.
    pub fn start_shard_with(&self, ids: &[u64], cfg: impl Fn(u64) -> Config) {
        for &i in ids {
            self.nh(i)
                .start_replica(
                    Start::New(Self::members(ids)),
                    |_, _| Box::new(Kv::default()),
                    cfg(i),
                )
                .unwrap();
        }
    }

    /// Waits until some host reports a leader for `shard`; returns its host id.
    pub fn wait_leader(&self, shard: u64) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            for (&i, nh) in &self.hosts {
                if let Ok(Some(l)) = nh.get_leader(ShardId(shard))
                    && l.replica_id == ReplicaId(i)
                {
                    return i;
                }
            }
            assert!(Instant::now() < deadline, "no leader for shard {shard}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

pub fn config(shard: u64, replica: u64) -> Config {
    Config {
        election_rtt: 10,
        heartbeat_rtt: 1,
        ..Config::new(ShardId(shard), ReplicaId(replica))
    }
}

/// Retries an operation while it fails with a temporary error.
pub fn retry<T>(mut f: impl FnMut() -> Result<T, Error>) -> T {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match f() {
            Ok(v) => return v,
            Err(e) if e.is_temporary() && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10))
            }
            Err(e) => panic!("operation failed: {e}"),
        }
    }
}

/// Polls `f` every few milliseconds until it returns true; panics with
/// `what` after `within`.
pub fn wait_until(what: &str, within: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

impl TestCluster {
    /// Sends `messages` to host `to` as if host `from` sent them (in one
    /// batch, by the network's side door): for messages no correct peer
    /// would send.
    pub fn send_raw(&self, from: u64, to: u64, messages: Vec<longship_raft::Message>) {
        use longship_transport::Transport as _;
        let batch = longship_raft::MessageBatch {
            deployment_id: NodeHostConfig::default().deployment_id,
            source_address: addr(from),
            bin_ver: longship_raft::MESSAGE_BATCH_VERSION,
            messages,
        };
        self.net
            .transport("side-door:1")
            .send(&addr(to), batch)
            .unwrap();
    }

    /// Starts a Kv replica on host `i` as `start` says, with `cfg`.
    pub fn start_replica_on(&self, i: u64, start: Start, cfg: Config) {
        self.nh(i)
            .start_replica(start, |_, _| Box::new(Kv::default()), cfg)
            .unwrap();
    }

    /// Proposes `cmd` on host `i` with a no-op session, retrying temporary
    /// errors; returns the state machine's value.
    pub fn propose(&self, i: u64, shard: u64, cmd: impl AsRef<[u8]>) -> u64 {
        let mut s = self.nh(i).get_noop_session(ShardId(shard));
        let cmd = cmd.as_ref().to_vec();
        retry(|| self.nh(i).sync_propose(&mut s, cmd.clone(), TIMEOUT)).value
    }

    /// Linearizable read on host `i`, retrying temporary errors.
    pub fn read(&self, i: u64, shard: u64, query: impl AsRef<[u8]>) -> Vec<u8> {
        retry(|| {
            self.nh(i)
                .sync_read(ShardId(shard), query.as_ref(), TIMEOUT)
        })
    }

    /// The leader of `shard` as seen by host `i` (0 when unknown).
    pub fn leader_seen_by(&self, i: u64, shard: u64) -> u64 {
        match self.nh(i).get_leader(ShardId(shard)) {
            Ok(Some(l)) => l.replica_id.0,
            _ => 0,
        }
    }
}

/// Retries an operation while it fails with a temporary error; returns its
/// success or its first permanent error (for tests that expect one).
pub fn retry_outcome<T>(mut f: impl FnMut() -> Result<T, Error>) -> Result<T, Error> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match f() {
            Err(e) if e.is_temporary() && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10))
            }
            other => return other,
        }
    }
}

/// How a test that starts the same replica again and again starts it:
/// `Start::Restart` once `nh` holds data of it, else a new shard with
/// members `ids`, or a join when `ids` is empty.
pub fn new_or_restart(nh: &NodeHost, shard: u64, replica: u64, ids: &[u64]) -> Start {
    if nh.has_node_info(ShardId(shard), ReplicaId(replica)) {
        Start::Restart
    } else if ids.is_empty() {
        Start::Join
    } else {
        Start::New(TestCluster::members(ids))
    }
}

/// Waits until `nh` has handed its replicas `n` more logical ticks (RTTs)
/// than now, plus two so the step workers processed them: "nothing
/// happened for `n` RTTs" measured in the host's own time, not in
/// wall-clock time that a loaded machine may not give the ticker.
pub fn wait_ticks(nh: &NodeHost, n: u64) {
    let ticks = || {
        nh.metrics()
            .ticks
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    let target = ticks() + n + 2;
    wait_until(
        &format!("{n} ticks"),
        Duration::from_millis((n + 2) * 1000).max(Duration::from_secs(30)),
        || ticks() >= target,
    );
}
