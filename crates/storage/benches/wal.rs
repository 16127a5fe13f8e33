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
use longship_storage::{LogDb, LogUpdate, Wal, WalOptions};

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
fn make_batch(next: &mut [u64], per_shard: u64, payload: &Bytes) -> Vec<LogUpdate> {
    next.iter_mut()
        .enumerate()
        .map(|(s, n)| {
            let first = *n;
            *n += per_shard;
            LogUpdate {
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
                clear_recovery: false,
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

/// A single small batch against one raw `write + fdatasync` of the same
/// size, measured alternately so both see the same disk. Criterion times
/// the WAL; the raw times and the ratio of medians are printed.
fn small_batch_vs_raw(c: &mut Criterion) {
    let mut g = c.benchmark_group("small_batch");
    g.measurement_time(Duration::from_secs(5))
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1));
    let payload = Bytes::from(vec![7u8; 16]);
    let span = 64u64 << 20;
    // Set up on first use, so a filtered-out run costs nothing.
    let mut setup: Option<(tempfile::TempDir, Wal, std::fs::File, Vec<u64>, usize)> = None;
    let mut offset = 0u64;
    let (mut raw_ns, mut wal_ns) = (Vec::new(), Vec::new());
    g.throughput(Throughput::Elements(1));
    g.bench_function("wal_1x16B_paired_with_raw", |b| {
        let (_, wal, raw, next, size) = setup.get_or_insert_with(|| {
            let dir = bench_dir();
            let wal = Wal::open(
                Arc::new(OsFs::new()),
                &dir.path().join("wal"),
                WalOptions::default(),
            )
            .unwrap();
            let raw = OpenOptions::new()
                .create(true)
                .truncate(true)
                .read(true)
                .write(true)
                .open(dir.path().join("raw"))
                .unwrap();
            let zeros = vec![0u8; 1 << 20];
            for i in 0..span >> 20 {
                raw.write_all_at(&zeros, i << 20).unwrap();
            }
            raw.sync_all().unwrap();
            let mut next = vec![1u64];
            let before = wal.write_position().1;
            wal.save_raft_state(&make_batch(&mut next, 1, &payload))
                .unwrap();
            let size = (wal.write_position().1 - before) as usize;
            (dir, wal, raw, next, size)
        });
        let buf = vec![0x5au8; *size];
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let t = Instant::now();
                raw.write_all_at(&buf, offset).unwrap();
                raw.sync_data().unwrap();
                raw_ns.push(t.elapsed().as_nanos() as u64);
                offset = (offset + buf.len() as u64) % (span - buf.len() as u64);
                let batch = make_batch(next, 1, &payload);
                let t = Instant::now();
                wal.save_raft_state(&batch).unwrap();
                let e = t.elapsed();
                wal_ns.push(e.as_nanos() as u64);
                total += e;
            }
            total
        })
    });
    g.finish();
    if let Some((_, _, _, _, size)) = setup {
        let median = |v: &mut Vec<u64>| {
            v.sort_unstable();
            v[v.len() / 2] as f64 / 1000.0
        };
        let (r, w) = (median(&mut raw_ns), median(&mut wal_ns));
        eprintln!(
            "  small batch ({size} bytes): raw write+fdatasync median {r:.0} us, WAL save median {w:.0} us, ratio {:.2} ({} pairs)",
            w / r,
            raw_ns.len()
        );
    }
}

/// Four threads saving at once (48 replicas x 16 entries each): group
/// commit shares one fsync between callers.
fn concurrent_callers(c: &mut Criterion) {
    let mut g = c.benchmark_group("wal_save_concurrent");
    g.measurement_time(Duration::from_secs(3))
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1));
    let threads = 4u64;
    let (shards, per_shard) = (48u64, 16u64);
    let dir = bench_dir();
    let wal = Arc::new(
        Wal::open(
            Arc::new(OsFs::new()),
            &dir.path().join("wal"),
            WalOptions::default(),
        )
        .unwrap(),
    );
    let payload = Bytes::from(vec![7u8; 16]);
    let next: Vec<Arc<parking_lot::Mutex<Vec<u64>>>> = (0..threads)
        .map(|_| Arc::new(parking_lot::Mutex::new(vec![1u64; shards as usize])))
        .collect();
    g.throughput(Throughput::Elements(threads * shards * per_shard));
    g.bench_function(
        format!("16B/{threads}threads_x_{shards}x{per_shard}"),
        |b| {
            b.iter_custom(|iters| {
                let t = Instant::now();
                let handles: Vec<_> = (0..threads)
                    .map(|th| {
                        let (wal, next, payload) =
                            (wal.clone(), next[th as usize].clone(), payload.clone());
                        std::thread::spawn(move || {
                            let mut next = next.lock();
                            for _ in 0..iters {
                                let mut batch = make_batch(&mut next, per_shard, &payload);
                                for u in &mut batch {
                                    u.shard_id = ShardId(u.shard_id.0 + th * shards);
                                }
                                wal.save_raft_state(&batch).unwrap();
                            }
                        })
                    })
                    .collect();
                for h in handles {
                    h.join().unwrap();
                }
                t.elapsed()
            })
        },
    );
    g.finish();
    let stats = wal.stats();
    eprintln!(
        "  concurrent: {} batches in {} fsyncs ({:.2} batches per fsync)",
        stats.batches,
        stats.syncs,
        stats.batches as f64 / stats.syncs.max(1) as f64
    );
}

/// Restart: replaying a log of about 100 MB of 16-byte entries of 48
/// replicas (4 M entries, nothing compacted).
fn open_long_log(c: &mut Criterion) {
    let mut g = c.benchmark_group("wal_open");
    g.measurement_time(Duration::from_secs(5))
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1));
    let payload = Bytes::from(vec![7u8; 16]);
    let mut setup: Option<(tempfile::TempDir, PathBuf)> = None;
    // About 100 MB: 85 calls of 48 x 1024 entries.
    let entries = 85 * 48 * 1024u64;
    g.throughput(Throughput::Elements(entries));
    g.bench_function(format!("16B/48_replicas_{entries}_entries"), |b| {
        let (_, path) = setup.get_or_insert_with(|| {
            let dir = bench_dir();
            let path = dir.path().join("wal");
            let wal = Wal::open(Arc::new(OsFs::new()), &path, WalOptions::default()).unwrap();
            let mut next = vec![1u64; 48];
            for _ in 0..85 {
                wal.save_raft_state(&make_batch(&mut next, 1024, &payload))
                    .unwrap();
            }
            (dir, path)
        });
        b.iter(|| Wal::open(Arc::new(OsFs::new()), path, WalOptions::default()).unwrap())
    });
    g.finish();
}

criterion_group!(
    benches,
    raw_fdatasync,
    small_batch_vs_raw,
    wal_save,
    concurrent_callers,
    open_long_log,
    wal_save_cpu
);
criterion_main!(benches);
