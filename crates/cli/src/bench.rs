//! `longship bench`: NodeHosts in this process, one per replica, serving
//! shards of a trivial state machine; concurrent clients (async tasks on a
//! one-thread tokio runtime) propose and read for a while; prints writes/s,
//! reads/s, latency percentiles and the CPU time used. Other modes measure
//! the idle cost of many quiesced shards (`--idle`), restart over a long
//! log (`--restart`) and the snapshot stream rate (`--snapshot`).

mod cluster;
mod histogram;
mod modes;
mod procstat;
mod report;
mod sm;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::{Args, ValueEnum};
use longship::{Error, NodeHost, ShardId};
use parking_lot::Mutex;

use cluster::{Cluster, ClusterOptions, Res};
use histogram::Histogram;
use report::Report;

/// How NodeHosts talk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum TransportKind {
    /// Loopback TCP, ports from `--base-port`.
    Tcp,
    /// The in-memory network (no sockets).
    Mem,
}

/// Where logs are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogDbKind {
    /// The write-ahead log with real fsync, under `--data-dir`.
    Wal,
    /// In-memory log storage.
    Mem,
}

/// How NodeHosts write their logs (`NodeHostConfig::async_log_writes`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogWrites {
    /// A step worker writes and fsyncs its cycle itself.
    Sync,
    /// A log writer thread writes the queued cycles with one fsync while
    /// the step workers go on stepping.
    Async,
}

/// Which NodeHost a client sends its requests to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ProposeOn {
    /// The host of the shard's leader (no forwarding).
    Leader,
    /// A host that does not lead the shard (forwarded to the leader).
    Follower,
    /// Clients spread over all hosts.
    Spread,
}

/// Options of `longship bench`.
#[derive(Args, Clone, Debug)]
pub struct BenchArgs {
    /// Replicas per shard, one NodeHost each (1, 3 or 5).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=5))]
    pub replicas: u64,
    /// Shards, each with a replica on every NodeHost.
    #[arg(long, default_value_t = 48, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub shards: u64,
    /// Concurrent clients (async tasks), spread over the shards.
    #[arg(long, default_value_t = 64)]
    pub clients: usize,
    /// Bytes per proposal.
    #[arg(long, default_value_t = 16)]
    pub payload: usize,
    /// Share of requests that are linearizable reads (0.0 to 1.0); the rest are writes.
    #[arg(long, default_value_t = 0.0)]
    pub read_ratio: f64,
    /// Seconds measured (or, with --idle, seconds of idle CPU measured).
    #[arg(long, default_value_t = 5.0)]
    pub duration: f64,
    /// Seconds of load before measuring.
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
    /// How NodeHosts talk.
    #[arg(long, value_enum, default_value_t = TransportKind::Tcp)]
    pub transport: TransportKind,
    /// Log storage.
    #[arg(long, value_enum, default_value_t = LogDbKind::Wal)]
    pub logdb: LogDbKind,
    /// Where the NodeHosts keep their data: a fresh directory is made inside
    /// it and removed afterwards [default: the current directory].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// First TCP port on 127.0.0.1 (NodeHost i listens on base-port + i - 1).
    #[arg(long, default_value_t = 26001)]
    pub base_port: u16,
    /// NodeHost RTT in milliseconds (one tick).
    #[arg(long, default_value_t = 10)]
    pub rtt_ms: u64,
    /// Where clients send requests.
    #[arg(long, value_enum, default_value_t = ProposeOn::Leader)]
    pub propose_on: ProposeOn,
    /// Keep leaders where elections put them (default: spread them evenly over the hosts).
    #[arg(long)]
    pub no_balance: bool,
    /// Step worker threads per NodeHost [default: the NodeHostConfig default].
    #[arg(long)]
    pub step_workers: Option<usize>,
    /// Apply worker threads per NodeHost [default: the NodeHostConfig default].
    #[arg(long)]
    pub apply_workers: Option<usize>,
    /// `Config::inline_apply_max_bytes` of every replica: committed batches
    /// up to this size are applied by the step worker (0: always by the
    /// apply workers). The benchmark's state machine is a counter.
    #[arg(long, default_value_t = 64 << 10)]
    pub inline_apply_bytes: u64,
    /// The NodeHosts of this process share one write-ahead log: one group
    /// commit (one fsync) covers the writes of all of them, as separate
    /// fsyncs of the same disk would (`longship_storage::logdb::SharedLogDb`).
    #[arg(long)]
    pub shared_wal: bool,
    /// Synchronous or asynchronous log writes [default: the NodeHostConfig default].
    #[arg(long, value_enum)]
    pub log_writes: Option<LogWrites>,
    /// Timeout of each request in milliseconds.
    #[arg(long, default_value_t = 5000)]
    pub timeout_ms: u64,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    /// Idle mode: start --shards quiesced shards and measure CPU and memory
    /// over --duration once they are quiet.
    #[arg(long, conflicts_with_all = ["restart", "snapshot"])]
    pub idle: bool,
    /// Restart mode: fill the log with --restart-entries entries, close
    /// every NodeHost, reopen and time it until every shard serves a read.
    #[arg(long, conflicts_with = "snapshot")]
    pub restart: bool,
    /// Entries written before the restart (--restart).
    #[arg(long, default_value_t = 1_000_000)]
    pub restart_entries: u64,
    /// Snapshot mode: one shard whose state is --snapshot-mib MiB is sent
    /// as a snapshot to a replica started late; measures the stream rate.
    #[arg(long)]
    pub snapshot: bool,
    /// State size in MiB (--snapshot).
    #[arg(long, default_value_t = 256)]
    pub snapshot_mib: u64,
}

/// Runs the benchmark; the error is for the user.
pub fn run(args: BenchArgs) -> Res<()> {
    if !(0.0..=1.0).contains(&args.read_ratio) {
        return Err("--read-ratio must be within 0.0..=1.0".into());
    }
    if args.duration <= 0.0 || args.warmup < 0.0 {
        return Err("--duration must be positive and --warmup not negative".into());
    }
    if args.clients == 0 {
        return Err("--clients must be at least 1".into());
    }
    if args.restart && args.logdb == LogDbKind::Mem {
        return Err("--restart needs --logdb wal (in-memory logs do not survive a restart)".into());
    }
    let base = match &args.data_dir {
        Some(d) => d.clone(),
        None => std::env::current_dir().map_err(|e| e.to_string())?,
    };
    std::fs::create_dir_all(&base).map_err(|e| format!("{}: {e}", base.display()))?;
    let data_fs = procstat::fs_type(&base).unwrap_or_else(|| "unknown".into());
    if args.logdb == LogDbKind::Wal && procstat::is_memory_fs(&data_fs) {
        eprintln!(
            "warning: {} is on {data_fs}: fsync costs nothing there, the figures are not those of a disk; pass --data-dir on a disk",
            base.display()
        );
    }
    let dir = tempfile::Builder::new()
        .prefix(".longship-bench-")
        .tempdir_in(&base)
        .map_err(|e| format!("creating a data directory in {}: {e}", base.display()))?;
    let opts = ClusterOptions {
        replicas: args.replicas,
        transport: args.transport,
        logdb: args.logdb,
        dir: dir.path().to_path_buf(),
        base_port: args.base_port,
        rtt_ms: args.rtt_ms,
        step_workers: args.step_workers,
        apply_workers: args.apply_workers,
        inline_apply_bytes: args.inline_apply_bytes,
        shared_wal: args.shared_wal,
        async_log_writes: args.log_writes.map(|w| w == LogWrites::Async),
        quiesce: args.idle,
        snapshot_entries: 0,
    };
    let mut report = Report::new(&args, &data_fs);
    if args.logdb == LogDbKind::Wal {
        // What one small durable append costs right now on this disk: the
        // figures depend on it, and other load on the machine changes it.
        if let Some(us) = fsync_probe(dir.path()) {
            report.set_f("fsync_probe_p50_us", us);
        }
    }
    if args.idle {
        modes::idle(&args, opts, &mut report)?;
    } else if args.restart {
        modes::restart(&args, opts, &mut report)?;
    } else if args.snapshot {
        modes::snapshot(&args, opts, &mut report)?;
    } else {
        throughput(&args, opts, &mut report)?;
    }
    if args.json {
        println!("{}", report.json());
    } else {
        print!("{}", report.text());
    }
    Ok(())
}

/// Median microseconds of appending 128 bytes to a file and `fdatasync`ing
/// it, over a few rounds, in `dir`.
fn fsync_probe(dir: &std::path::Path) -> Option<f64> {
    use std::io::Write;
    const ROUNDS: usize = 32;
    let path = dir.join("fsync-probe");
    let mut f = std::fs::File::create(&path).ok()?;
    let mut times = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        let t = Instant::now();
        f.write_all(&[0x5a; 128]).ok()?;
        f.sync_data().ok()?;
        times.push(t.elapsed().as_secs_f64() * 1e6);
    }
    drop(f);
    let _ = std::fs::remove_file(&path);
    times.sort_by(f64::total_cmp);
    Some(times[ROUNDS / 2])
}

/// Progress on stderr with `indicatif`: a spinner, the elapsed time and
/// the current line, redrawn in place on a terminal; hidden when stderr is
/// not a terminal (a log or a pipe gets the report only).
pub struct Progress {
    tty: bool,
    /// The bar of the current phase (a new one after [`Progress::done`]).
    bar: Mutex<Option<indicatif::ProgressBar>>,
}

impl Progress {
    pub fn new() -> Progress {
        Progress {
            tty: std::io::stderr().is_terminal(),
            bar: Mutex::new(None),
        }
    }

    fn new_bar(&self) -> indicatif::ProgressBar {
        if !self.tty {
            return indicatif::ProgressBar::hidden();
        }
        let bar = indicatif::ProgressBar::new_spinner();
        bar.set_style(
            indicatif::ProgressStyle::with_template("{spinner} [{elapsed_precise}] {msg}")
                .expect("a valid progress template"),
        );
        // indicatif redraws at its own rate (at most 20 times a second).
        bar.enable_steady_tick(Duration::from_millis(200));
        bar
    }

    /// Shows `line` (`force` is kept for callers; indicatif rate-limits
    /// drawing itself).
    pub fn show(&self, line: &str, _force: bool) {
        let mut bar = self.bar.lock();
        bar.get_or_insert_with(|| self.new_bar())
            .set_message(line.to_string());
    }

    /// Ends the progress line (left on screen as it last was).
    pub fn done(&self) {
        if let Some(bar) = self.bar.lock().take() {
            bar.finish();
        }
    }
}

/// Phases of a throughput run, shared with the clients.
const WARMUP: u8 = 0;
const MEASURE: u8 = 1;
const DONE: u8 = 2;

/// What clients share.
struct Shared {
    phase: AtomicU8,
    /// Completed requests (all phases), for progress.
    writes: AtomicU64,
    reads: AtomicU64,
    errors: AtomicU64,
    /// Latencies (ns) completed while measuring: writes, reads. Clients run
    /// on one thread, so the lock is never contended.
    latency: Mutex<(Histogram, Histogram)>,
    /// Counts while measuring: writes, reads, errors.
    measured: Mutex<(u64, u64, u64)>,
    /// Errors by kind (first few kinds kept).
    error_kinds: Mutex<Vec<(String, u64)>>,
}

/// A tiny xorshift generator: which requests are reads.
struct XorShift(u64);

impl XorShift {
    fn next_f64(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// One client: requests one at a time on one shard through one host.
async fn client(
    id: usize,
    nh: Arc<NodeHost>,
    shard: ShardId,
    payload: Bytes,
    read_ratio: f64,
    timeout: Duration,
    shared: Arc<Shared>,
) {
    let session = nh.get_noop_session(shard);
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15 ^ (id as u64 + 1).wrapping_mul(0xBF58_476D));
    loop {
        if shared.phase.load(Ordering::Relaxed) == DONE {
            return;
        }
        let read = read_ratio > 0.0 && rng.next_f64() < read_ratio;
        let start = Instant::now();
        let outcome = if read {
            match nh.read_index(shard, timeout) {
                Ok(h) => h.await.and_then(|_| nh.read_local(shard, b"").map(|_| ())),
                Err(e) => Err(e),
            }
        } else {
            match nh.propose(&session, payload.clone(), timeout) {
                Ok(h) => h.await.map(|_| ()),
                Err(e) => Err(e),
            }
        };
        let ns = start.elapsed().as_nanos() as u64;
        let measuring = shared.phase.load(Ordering::Relaxed) == MEASURE;
        match outcome {
            Ok(()) => {
                let counter = if read { &shared.reads } else { &shared.writes };
                counter.fetch_add(1, Ordering::Relaxed);
                if measuring {
                    let mut l = shared.latency.lock();
                    if read {
                        l.1.record(ns);
                    } else {
                        l.0.record(ns);
                    }
                    let mut m = shared.measured.lock();
                    if read {
                        m.1 += 1;
                    } else {
                        m.0 += 1;
                    }
                }
            }
            Err(e) => {
                shared.errors.fetch_add(1, Ordering::Relaxed);
                if measuring {
                    shared.measured.lock().2 += 1;
                }
                note_error(&shared, &e);
                // Busy or no leader: back off a little instead of spinning.
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    }
}

fn note_error(shared: &Shared, e: &Error) {
    let kind = match e {
        Error::SystemBusy => "system busy".to_string(),
        Error::Timeout => "timeout".to_string(),
        Error::Dropped { .. } => "dropped".to_string(),
        other => other.to_string(),
    };
    let mut kinds = shared.error_kinds.lock();
    if let Some(k) = kinds.iter_mut().find(|(k, _)| *k == kind) {
        k.1 += 1;
    } else if kinds.len() < 8 {
        kinds.push((kind, 1));
    }
}

/// Starts the cluster and its shards, waits for leaders, spreads them.
pub fn start_cluster(args: &BenchArgs, opts: ClusterOptions, progress: &Progress) -> Res<Cluster> {
    let cluster = Cluster::start(opts)?;
    let t = Instant::now();
    cluster.start_shards(args.shards, &mut |n| {
        progress.show(&format!("starting shards: {n}/{}", args.shards), false)
    })?;
    progress.show(
        &format!(
            "started {} shards x {} replicas in {:.1}s; electing leaders",
            args.shards,
            args.replicas,
            t.elapsed().as_secs_f64()
        ),
        true,
    );
    let wait = Duration::from_secs(60 + args.shards / 100);
    cluster.wait_for_leaders(args.shards, wait)?;
    Ok(cluster)
}

/// The throughput run.
fn throughput(args: &BenchArgs, opts: ClusterOptions, report: &mut Report) -> Res<()> {
    let progress = Progress::new();
    let cluster = start_cluster(args, opts, &progress)?;
    let balanced = if args.no_balance || args.replicas == 1 {
        None
    } else {
        progress.show("spreading leaders over the hosts", true);
        Some(cluster.balance_leaders(args.shards, Duration::from_secs(10)))
    };
    // Where each client goes.
    let mut targets = Vec::with_capacity(args.clients);
    for c in 0..args.clients {
        let shard = (c as u64 % args.shards) + 1;
        let leader = cluster.leader_host(shard).unwrap_or(1);
        let r = args.replicas;
        let host = match args.propose_on {
            ProposeOn::Leader => leader,
            ProposeOn::Follower if r > 1 => leader % r + 1,
            ProposeOn::Follower => leader,
            ProposeOn::Spread => (c as u64 / args.shards + shard) % r + 1,
        };
        targets.push((cluster.hosts[(host - 1) as usize].clone(), ShardId(shard)));
    }
    let shared = Arc::new(Shared {
        phase: AtomicU8::new(WARMUP),
        writes: AtomicU64::new(0),
        reads: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        latency: Mutex::new((Histogram::default(), Histogram::default())),
        measured: Mutex::new((0, 0, 0)),
        error_kinds: Mutex::new(Vec::new()),
    });
    let payload = Bytes::from(vec![0x5au8; args.payload]);
    let timeout = Duration::from_millis(args.timeout_ms);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;
    let metrics_before;
    let (cpu_before, cpu_after);
    let (switches_before, switches_after);
    let (t0, t1);
    {
        let _guard = rt.enter();
        let tasks: Vec<_> = targets
            .into_iter()
            .enumerate()
            .map(|(id, (nh, shard))| {
                rt.spawn(client(
                    id,
                    nh,
                    shard,
                    payload.clone(),
                    args.read_ratio,
                    timeout,
                    shared.clone(),
                ))
            })
            .collect();
        let warmup = Duration::from_secs_f64(args.warmup);
        let duration = Duration::from_secs_f64(args.duration);
        let show =
            |phase: &str, since: Instant, total: Duration, last: &mut (u64, u64, Instant)| {
                let (w, r) = (
                    shared.writes.load(Ordering::Relaxed),
                    shared.reads.load(Ordering::Relaxed),
                );
                let dt = last.2.elapsed().as_secs_f64().max(1e-9);
                progress.show(
                    &format!(
                        "{phase} {:>4.1}/{:.1}s  writes {:>9.0}/s  reads {:>9.0}/s  errors {}",
                        since.elapsed().as_secs_f64(),
                        total.as_secs_f64(),
                        (w - last.0) as f64 / dt,
                        (r - last.1) as f64 / dt,
                        shared.errors.load(Ordering::Relaxed)
                    ),
                    false,
                );
                if last.2.elapsed() >= Duration::from_millis(500) {
                    *last = (w, r, Instant::now());
                }
            };
        let mut last = (0, 0, Instant::now());
        rt.block_on(async {
            let start = Instant::now();
            while start.elapsed() < warmup {
                tokio::time::sleep(Duration::from_millis(100)).await;
                show("warmup ", start, warmup, &mut last);
            }
        });
        metrics_before = cluster.metrics();
        switches_before = procstat::context_switches();
        cpu_before = procstat::cpu_seconds();
        t0 = Instant::now();
        shared.phase.store(MEASURE, Ordering::Relaxed);
        rt.block_on(async {
            while t0.elapsed() < duration {
                tokio::time::sleep(Duration::from_millis(100).min(duration)).await;
                show("measure", t0, duration, &mut last);
            }
        });
        shared.phase.store(DONE, Ordering::Relaxed);
        t1 = Instant::now();
        cpu_after = procstat::cpu_seconds();
        switches_after = procstat::context_switches();
        progress.show("waiting for the last requests", true);
        rt.block_on(async {
            for t in tasks {
                let _ = t.await;
            }
        });
    }
    progress.done();
    let metrics_after = cluster.metrics();
    let secs = (t1 - t0).as_secs_f64();
    let (writes, reads, errors) = *shared.measured.lock();
    let lat = shared.latency.lock();
    report.set_f("measured_s", secs);
    report.set_u("writes", writes);
    report.set_u("reads", reads);
    report.set_u("errors", errors);
    report.set_f("writes_per_s", writes as f64 / secs);
    report.set_f("reads_per_s", reads as f64 / secs);
    report.latency("write_latency_us", &lat.0);
    report.latency("read_latency_us", &lat.1);
    report.cpu(cpu_before, cpu_after, secs);
    if let (Some(a), Some(b)) = (cpu_before, cpu_after)
        && writes + reads > 0
    {
        // The figure that least depends on other load on the machine.
        let cpu = b.0 + b.1 - a.0 - a.1;
        report.set_f("cpu_us_per_request", cpu * 1e6 / (writes + reads) as f64);
    }
    if let (Some(a), Some(b)) = (switches_before, switches_after)
        && writes + reads > 0
    {
        let n = (writes + reads) as f64;
        report.set_f("voluntary_switches_per_request", (b.0 - a.0) as f64 / n);
        report.set_f("involuntary_switches_per_request", (b.1 - a.1) as f64 / n);
    }
    if let Some(b) = balanced {
        report.set_u("leaders_balanced", b);
    }
    let d = |k: &str| metrics_after.get(k).unwrap_or(&0) - metrics_before.get(k).unwrap_or(&0);
    let fsyncs = d("persist_batches");
    report.set_u("persist_batches", fsyncs);
    report.set_u("entries_persisted", d("entries_persisted"));
    report.set_u("step_cycles", d("step_cycles"));
    report.set_u("messages_sent", d("messages_sent"));
    if fsyncs > 0 {
        report.set_f(
            "entries_per_persist",
            d("entries_persisted") as f64 / fsyncs as f64,
        );
    }
    report.errors(&shared.error_kinds.lock());
    report.rss();
    Ok(())
}

#[cfg(test)]
mod progress_tests {
    use super::Progress;

    /// Under `cargo test` stderr is captured, not a terminal: the progress
    /// is hidden, and showing and ending it draws nothing.
    #[test]
    fn progress_is_hidden_when_stderr_is_not_a_terminal() {
        let p = Progress {
            tty: false,
            bar: parking_lot::Mutex::new(None),
        };
        p.show("phase one", true);
        assert!(p.bar.lock().as_ref().is_some_and(|b| b.is_hidden()));
        p.done();
        assert!(p.bar.lock().is_none(), "done ends the phase's bar");
        p.show("phase two", false);
        assert!(p.bar.lock().as_ref().is_some_and(|b| b.is_hidden()));
    }
}
