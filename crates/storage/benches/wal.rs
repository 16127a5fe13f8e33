//! Write-ahead log throughput and latency on the real disk, next to the raw
//! cost of `write + fdatasync` of the same sizes.
//!
//! `cargo bench -p longship-storage --bench wal`. Files go to a temp dir
//! under `LONGSHIP_BENCH_DIR` (default: the system temp dir — make sure it
//! is a real disk, not tmpfs) and are deleted afterwards.
//!
//! * `raw_fdatasync/{append,overwrite}/<bytes>`: one `pwrite` of `<bytes>`
//!   and one `fdatasync`, appending to a growing file or overwriting a
//!   preallocated one.
//! * `wal_save/<entry bytes>B/<shards>x<entries per shard>`: one
//!   `save_raft_state` of that many entries (fsync on). Throughput is in
//!   entries; MB/s is entries/s times the entry payload size.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use longship_raft::{Entry, HardState, Index, ReplicaId, ShardId, Term};
use longship_storage::vfs::{FileSystem, MemFs, OsFs};
use longship_storage::{LogDb, Update, Wal, WalOptions};

fn bench_dir() -> tempfile::TempDir {
    let base = std::env::var_os("LONGSHIP_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    std::fs::create_dir_all(&base).unwrap();
    tempfile::tempdir_in(base).unwrap()
}

fn raw_fdatasync(c: &mut Criterion) {
    let mut g = c.benchmark_group("raw_fdatasync");
    g.measurement_time(Duration::from_secs(3))
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1));
    let dir = bench_dir();
    for size in [64usize, 4 << 10, 64 << 10, 1 << 20] {
        let buf = vec![0x5au8; size];
        g.throughput(Throughput::Bytes(size as u64));
        for mode in ["append", "overwrite"] {
            let path = dir.path().join(format!("raw-{mode}-{size}"));
            let f = OpenOptions::new()
                .create(true)
                .truncate(true)
                .read(true)
                .write(true)
                .open(&path)
                .unwrap();
            // Overwrite mode writes into space zero-filled and synced beforehand.
            let span = 256u64 << 20;
            if mode == "overwrite" {
                let zeros = vec![0u8; 1 << 20];
                for i in 0..span / (1 << 20) {
                    f.write_all_at(&zeros, i << 20).unwrap();
                }
                f.sync_all().unwrap();
            }
            let mut offset = 0u64;
            g.bench_function(BenchmarkId::new(mode, size), |b| {
                b.iter(|| {
                    if mode == "overwrite" && offset + size as u64 > span {
                        offset = 0;
                    }
                    f.write_all_at(&buf, offset).unwrap();
                    f.sync_data().unwrap();
                    offset += size as u64;
                })
            });
            drop(f);
            std::fs::remove_file(&path).unwrap();
        }
    }
    g.finish();
}

/// Next batch: `per_shard` entries for each of `shards` replicas.
fn make_batch(next: &mut [u64], per_shard: u64, payload: &Bytes) -> Vec<Update> {
    next.iter_mut()
        .enumerate()
        .map(|(s, n)| {
            let first = *n;
            *n += per_shard;
            Update {
                shard_id: ShardId(s as u64 + 1),
                replica_id: ReplicaId(1),
                entries: (first..first + per_shard)
                    .map(|i| Entry {
                        term: Term(5),
                        index: Index(i),
                        key: i,
                        cmd: payload.clone(),
                        ..Entry::default()
                    })
                    .collect(),
                hard_state: Some(HardState {
                    term: Term(5),
                    vote: ReplicaId(1),
                    commit: Index(first.saturating_sub(1)),
                }),
                snapshot: None,
            }
        })
        .collect()
}

/// Runs the `save_raft_state` cases on `fs` (group `name`).
fn save_cases(
    c: &mut Criterion,
    name: &str,
    fs: fn() -> Arc<dyn FileSystem>,
    cases: &[(u64, u64)],
) {
    let mut g = c.benchmark_group(name);
    g.measurement_time(Duration::from_secs(3))
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1));
    for payload_len in [16usize, 1024] {
        let payload = Bytes::from(vec![7u8; payload_len]);
        for &(shards, per_shard) in cases {
            if payload_len == 1024 && shards * per_shard > 50_000 {
                continue; // 50 MB per call tells nothing new
            }
            g.throughput(Throughput::Elements(shards * per_shard));
            let id = BenchmarkId::new(format!("{payload_len}B"), format!("{shards}x{per_shard}"));
            // Opened on first use, so filtered-out cases cost nothing.
            let mut state: Option<(tempfile::TempDir, Wal, Vec<u64>)> = None;
            g.bench_function(id, |b| {
                let (_, wal, next) = state.get_or_insert_with(|| {
                    let dir = bench_dir();
                    let wal =
                        Wal::open(fs(), &dir.path().join("wal"), WalOptions::default()).unwrap();
                    (dir, wal, vec![1u64; shards as usize])
                });
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let batch = make_batch(next, per_shard, &payload);
                        let t = Instant::now();
                        wal.save_raft_state(&batch).unwrap();
                        total += t.elapsed();
                        // Keep memory and disk bounded: compact behind (not timed).
                        if (next[0] / per_shard) % 64 == 0 {
                            let marks: Vec<_> = next
                                .iter()
                                .enumerate()
                                .map(|(s, n)| (ShardId(s as u64 + 1), ReplicaId(1), Index(n - 1)))
                                .collect();
                            wal.remove_entries_batch(&marks).unwrap();
                        }
                    }
                    total
                })
            });
            if let Some((dir, wal, _)) = state.take() {
                let stats = wal.stats();
                eprintln!(
                    "  {name} {payload_len}B {shards}x{per_shard}: {} batches, {} fsyncs, {:.1} MB written, {} segments",
                    stats.batches,
                    stats.syncs,
                    stats.bytes_written as f64 / 1e6,
                    stats.segments_created
                );
                drop(wal);
                drop(dir);
            }
        }
    }
    g.finish();
}

const CASES: &[(u64, u64)] = &[
    (1, 1),
    (1, 16),
    (1, 128),
    (1, 1024),
    (48, 1),
    (48, 16),
    (48, 128),
    (48, 1024),
    (1000, 1),
    (1000, 16),
];

fn wal_save(c: &mut Criterion) {
    save_cases(c, "wal_save", || Arc::new(OsFs::new()), CASES);
}

/// The same on `MemFs`: the CPU cost of the log alone, no disk.
fn wal_save_cpu(c: &mut Criterion) {
    save_cases(
        c,
        "wal_save_memfs",
        || Arc::new(MemFs::new()),
        &[(1, 1), (48, 1024), (1000, 16)],
    );
}

criterion_group!(benches, raw_fdatasync, wal_save, wal_save_cpu);
criterion_main!(benches);
