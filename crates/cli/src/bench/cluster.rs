//! The NodeHosts a benchmark runs in this process: one per replica, on
//! loopback TCP or an in-memory network, with the write-ahead log (real
//! fsync) or in-memory log storage, every shard with one replica on each.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use longship::{Config, NodeHost, NodeHostConfig, ReplicaId, ShardId, Start};
use longship_transport::MemNetwork;

use super::sm::BenchSm;
use super::{LogDbKind, TransportKind};

/// How to build the cluster.
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    /// NodeHosts, one replica of every shard on each.
    pub replicas: u64,
    pub transport: TransportKind,
    pub logdb: LogDbKind,
    /// Directory holding `nh1`, `nh2`, ... (must exist).
    pub dir: PathBuf,
    pub base_port: u16,
    pub rtt_ms: u64,
    pub step_workers: Option<usize>,
    pub apply_workers: Option<usize>,
    /// `Config::inline_apply_max_bytes` of every replica.
    pub inline_apply_bytes: u64,
    /// The hosts share one write-ahead log (one fsync for all of them).
    pub shared_wal: bool,
    /// `NodeHostConfig::async_log_writes` (`None`: its default).
    pub async_log_writes: Option<bool>,
    /// Replicas quiesce when idle.
    pub quiesce: bool,
    /// `Config::snapshot_entries` of every replica (0: no automatic snapshots).
    pub snapshot_entries: u64,
}

/// Running NodeHosts; host `i` (1-based) is `hosts[i - 1]` and holds
/// replica `i` of every shard.
pub struct Cluster {
    pub opts: ClusterOptions,
    pub hosts: Vec<Arc<NodeHost>>,
    addrs: Vec<String>,
    net: MemNetwork,
}

/// Outcome of a step that may fail, as a message for the user.
pub type Res<T> = Result<T, String>;

impl Cluster {
    /// Starts the NodeHosts (no shards yet).
    pub fn start(opts: ClusterOptions) -> Res<Cluster> {
        let addrs = (1..=opts.replicas)
            .map(|i| match opts.transport {
                TransportKind::Tcp => format!("127.0.0.1:{}", opts.base_port as u64 + i - 1),
                TransportKind::Mem => format!("bench-host-{i}:1"),
            })
            .collect();
        let mut c = Cluster {
            opts,
            hosts: Vec::new(),
            addrs,
            net: MemNetwork::new(),
        };
        c.open_hosts()?;
        Ok(c)
    }

    fn host_config(&self, i: u64) -> NodeHostConfig {
        let mut cfg = NodeHostConfig {
            node_host_dir: self.opts.dir.join(format!("nh{i}")),
            rtt_ms: self.opts.rtt_ms,
            raft_address: self.addrs[(i - 1) as usize].clone(),
            seed: Some(i),
            ..NodeHostConfig::default()
        };
        if let Some(n) = self.opts.step_workers {
            cfg.step_workers = n;
        }
        if let Some(n) = self.opts.apply_workers {
            cfg.apply_workers = n;
        }
        if let Some(a) = self.opts.async_log_writes {
            cfg.async_log_writes = a;
        }
        cfg
    }

    /// Opens every NodeHost (again after `close_hosts`, on the same data).
    pub fn open_hosts(&mut self) -> Res<()> {
        // One write-ahead log for every host (each host has replica id `i`
        // in every shard, so a view owns the replicas with its id).
        let mut shared = if self.opts.shared_wal && self.opts.logdb == LogDbKind::Wal {
            let dir = self.opts.dir.join("wal-shared");
            let fs: Arc<dyn longship_storage::vfs::FileSystem> =
                Arc::new(longship_storage::vfs::OsFs::new());
            let wal = longship_storage::logdb::Wal::open(
                fs,
                &dir,
                longship_storage::logdb::WalOptions::default(),
            )
            .map_err(|e| format!("opening the shared log in {}: {e}", dir.display()))?;
            let owners = (1..=self.opts.replicas)
                .map(|i| {
                    Box::new(move |_: longship::ShardId, r: longship::ReplicaId| r.0 == i)
                        as Box<dyn Fn(longship::ShardId, longship::ReplicaId) -> bool + Send + Sync>
                })
                .collect();
            longship_storage::logdb::SharedLogDb::views(Arc::new(wal), owners)
        } else {
            Vec::new()
        };
        shared.reverse();
        for i in 1..=self.opts.replicas {
            let cfg = self.host_config(i);
            let mut b = NodeHost::builder(cfg);
            if self.opts.transport == TransportKind::Mem {
                b = b.transport(Arc::new(self.net.transport(&self.addrs[(i - 1) as usize])));
            }
            if self.opts.logdb == LogDbKind::Mem {
                b = b.mem_log_db();
            } else if let Some(view) = shared.pop() {
                b = b.log_db(view);
            }
            let nh = b
                .build()
                .map_err(|e| format!("starting NodeHost {i}: {e}"))?;
            self.hosts.push(Arc::new(nh));
        }
        Ok(())
    }

    /// Closes every NodeHost (their data stays in the directory).
    pub fn close_hosts(&mut self) {
        for nh in self.hosts.drain(..) {
            nh.close();
        }
        if self.opts.transport == TransportKind::Mem {
            for a in &self.addrs {
                self.net.unregister(a);
            }
        }
    }

    /// The replica config of `shard` on host `i`.
    fn replica_config(&self, shard: u64, i: u64) -> Config {
        Config {
            quiesce: self.opts.quiesce,
            max_inline_apply_bytes: self.opts.inline_apply_bytes,
            snapshot_entries: self.opts.snapshot_entries,
            compaction_overhead: if self.opts.snapshot_entries > 0 {
                self.opts.snapshot_entries / 2
            } else {
                0
            },
            ..Config::new(ShardId(shard), ReplicaId(i))
        }
    }

    fn members(&self) -> BTreeMap<ReplicaId, String> {
        (1..=self.opts.replicas)
            .map(|i| (ReplicaId(i), self.addrs[(i - 1) as usize].clone()))
            .collect()
    }

    /// Starts replica `i` of `shard` on host `i`: a new shard, or a restart
    /// from the data of an earlier run (`bench --mode restart`).
    pub fn start_replica(&self, shard: u64, i: u64) -> Res<()> {
        let nh = &self.hosts[(i - 1) as usize];
        let start = if nh.has_node_info(ShardId(shard), ReplicaId(i)) {
            Start::Restart
        } else {
            Start::New(self.members())
        };
        nh.start_replica(
            start,
            |_, _| Box::new(BenchSm::default()),
            self.replica_config(shard, i),
        )
        .map_err(|e| format!("starting shard {shard} replica {i}: {e}"))
    }

    /// Starts every replica of shards `1..=shards` on every host, calling
    /// `progress` with the count started so far now and then.
    pub fn start_shards(&self, shards: u64, progress: &mut dyn FnMut(u64)) -> Res<()> {
        for s in 1..=shards {
            for i in 1..=self.opts.replicas {
                self.start_replica(s, i)?;
            }
            if s % 256 == 0 || s == shards {
                progress(s);
            }
        }
        Ok(())
    }

    /// Host index (1-based) of the leader of `shard` as seen by its own
    /// host, if every replica agrees on it.
    pub fn leader_host(&self, shard: u64) -> Option<u64> {
        let mut seen = None;
        for nh in &self.hosts {
            let l = nh.get_leader(ShardId(shard)).ok()??;
            match seen {
                None => seen = Some(l.replica_id),
                Some(x) if x != l.replica_id => return None,
                _ => {}
            }
        }
        seen.map(|r: ReplicaId| r.0)
    }

    /// Waits until every shard in `1..=shards` has a leader all hosts know.
    pub fn wait_for_leaders(&self, shards: u64, timeout: Duration) -> Res<()> {
        let deadline = Instant::now() + timeout;
        let mut next = 1;
        while next <= shards {
            if self.leader_host(next).is_some() {
                next += 1;
                continue;
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "shard {next} has no leader after {timeout:?} ({} of {shards} do)",
                    next - 1
                ));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    }

    /// Moves leadership so that host `(s - 1) % replicas + 1` leads shard
    /// `s` (an even spread); returns how many shards ended where wanted.
    pub fn balance_leaders(&self, shards: u64, timeout: Duration) -> u64 {
        let want = |s: u64| (s - 1) % self.opts.replicas + 1;
        let deadline = Instant::now() + timeout;
        let mut asked = Instant::now() - Duration::from_secs(1);
        loop {
            let wrong: Vec<(u64, Option<u64>)> = (1..=shards)
                .map(|s| (s, self.leader_host(s)))
                .filter(|&(s, l)| l != Some(want(s)))
                .collect();
            if wrong.is_empty() || Instant::now() > deadline {
                return shards - wrong.len() as u64;
            }
            // Ask again now and then: a transfer can fail (the target lagging).
            if asked.elapsed() > Duration::from_millis(20 * self.opts.rtt_ms.max(5)) {
                for &(s, l) in &wrong {
                    if let Some(l) = l {
                        let _ = self.hosts[(l - 1) as usize]
                            .request_leader_transfer(ShardId(s), ReplicaId(want(s)));
                    }
                }
                asked = Instant::now();
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Counters summed over all hosts, by name.
    pub fn metrics(&self) -> BTreeMap<&'static str, u64> {
        let mut out = BTreeMap::new();
        for nh in &self.hosts {
            for (name, v) in nh.metrics().values() {
                *out.entry(name).or_insert(0) += v;
            }
        }
        out
    }

    /// The node host directory of host `i`.
    pub fn host_dir(&self, i: u64) -> PathBuf {
        self.opts.dir.join(format!("nh{i}"))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.close_hosts();
    }
}

/// Bytes used by the files under `dir`.
pub fn dir_bytes(dir: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    rd.flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}
