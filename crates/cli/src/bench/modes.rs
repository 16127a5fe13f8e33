//! The benchmark modes other than throughput: idle cost of quiesced shards,
//! restart over a long log, and the snapshot stream rate.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use longship::{NodeHost, ReplicaId, ShardId, SnapshotOption};

use super::cluster::{Cluster, ClusterOptions, Res, dir_bytes};
use super::report::Report;
use super::sm::blob_command;
use super::{BenchArgs, Progress, procstat, start_cluster};

/// Ticks without traffic before a shard quiesces: longship quiesces after
/// ten election timeouts, and the default election timeout is 10 ticks.
const QUIESCE_TICKS: u64 = 10 * 10;

/// Starts `--shards` quiesced shards, waits until they are quiet, then
/// measures CPU, traffic and memory over `--duration`.
pub fn idle(args: &BenchArgs, opts: ClusterOptions, report: &mut Report) -> Res<()> {
    let progress = Progress::new();
    let rss_before = procstat::rss_bytes().unwrap_or(0);
    let t = Instant::now();
    let cluster = start_cluster(args, opts, &progress)?;
    report.set_f("start_and_elect_s", t.elapsed().as_secs_f64());
    // Quiet once no shard has had traffic for QUIESCE_TICKS; wait for the
    // message rate to fall to (nearly) nothing, bounded.
    let settle = Duration::from_millis(args.rtt_ms * QUIESCE_TICKS);
    let deadline = Instant::now() + settle * 4 + Duration::from_secs(30);
    let started = Instant::now();
    let mut sent = cluster.metrics()["messages_sent"];
    let window = Duration::from_millis(500);
    loop {
        std::thread::sleep(window);
        let now = cluster.metrics()["messages_sent"];
        let rate = (now - sent) as f64 / window.as_secs_f64();
        sent = now;
        progress.show(
            &format!(
                "waiting for {} shards to quiesce: {:.0} messages/s ({:.1}s)",
                args.shards,
                rate,
                started.elapsed().as_secs_f64()
            ),
            true,
        );
        if (started.elapsed() > settle && rate < args.shards as f64 / 100.0)
            || Instant::now() > deadline
        {
            break;
        }
    }
    report.set_f("settle_s", started.elapsed().as_secs_f64());
    let m0 = cluster.metrics();
    let cpu0 = procstat::cpu_seconds();
    let t0 = Instant::now();
    let duration = Duration::from_secs_f64(args.duration);
    while t0.elapsed() < duration {
        std::thread::sleep(Duration::from_millis(200).min(duration));
        progress.show(
            &format!(
                "measuring idle cost {:.1}/{:.1}s",
                t0.elapsed().as_secs_f64(),
                args.duration
            ),
            false,
        );
    }
    let secs = t0.elapsed().as_secs_f64();
    let cpu1 = procstat::cpu_seconds();
    let m1 = cluster.metrics();
    progress.done();
    report.set_f("measured_s", secs);
    report.cpu(cpu0, cpu1, secs);
    if let (Some(a), Some(b)) = (cpu0, cpu1) {
        let per_host = (b.0 + b.1 - a.0 - a.1) / secs / args.replicas as f64;
        report.set_f("cpu_cores_busy_per_host", per_host);
    }
    let d = |k: &str| m1[k] - m0[k];
    report.set_f("messages_per_s", d("messages_sent") as f64 / secs);
    report.set_f("step_cycles_per_s", d("step_cycles") as f64 / secs);
    report.set_f("persists_per_s", d("persist_batches") as f64 / secs);
    report.rss();
    let rss = procstat::rss_bytes().unwrap_or(0);
    report.set_u("rss_before_start_bytes", rss_before);
    let replicas = args.shards * args.replicas;
    report.set_u(
        "rss_per_host_bytes",
        rss.saturating_sub(rss_before) / args.replicas,
    );
    report.set_u(
        "rss_per_replica_bytes",
        rss.saturating_sub(rss_before) / replicas.max(1),
    );
    Ok(())
}

/// Proposes `entries` entries spread over the shards from `clients`
/// tasks, each keeping `window` proposals in flight. Returns how many were
/// applied.
fn fill(cluster: &Cluster, args: &BenchArgs, entries: u64, progress: &Progress) -> Res<u64> {
    const WINDOW: u64 = 32;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;
    let remaining = Arc::new(AtomicU64::new(entries));
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let payload = Bytes::from(vec![0x5au8; args.payload]);
    let timeout = Duration::from_millis(args.timeout_ms);
    let mut tasks = Vec::new();
    for c in 0..args.clients.max(1) {
        let shard = ShardId(c as u64 % args.shards + 1);
        let host = cluster.leader_host(shard.0).unwrap_or(1);
        let nh: Arc<NodeHost> = cluster.hosts[(host - 1) as usize].clone();
        let (remaining, done, failed, payload) = (
            remaining.clone(),
            done.clone(),
            failed.clone(),
            payload.clone(),
        );
        tasks.push(rt.spawn(async move {
            let session = nh.get_noop_session(shard);
            loop {
                let take = remaining
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |r| {
                        Some(r.saturating_sub(WINDOW))
                    })
                    .unwrap_or(0)
                    .min(WINDOW);
                if take == 0 {
                    return;
                }
                let mut handles = Vec::new();
                for _ in 0..take {
                    match nh.propose(&session, payload.clone(), timeout) {
                        Ok(h) => handles.push(h),
                        Err(_) => {
                            remaining.fetch_add(1, Ordering::Relaxed);
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                for h in handles {
                    match h.await {
                        Ok(_) => {
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(_) => {
                            remaining.fetch_add(1, Ordering::Relaxed);
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                if failed.load(Ordering::Relaxed) > entries + 1000 {
                    return;
                }
            }
        }));
    }
    let t = Instant::now();
    rt.block_on(async {
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let n = done.load(Ordering::Relaxed);
            progress.show(
                &format!(
                    "filling the log: {n}/{entries} entries ({:.0}/s)",
                    n as f64 / t.elapsed().as_secs_f64()
                ),
                false,
            );
            if tasks.iter().all(|t| t.is_finished()) {
                break;
            }
        }
    });
    let n = done.load(Ordering::Relaxed);
    if n < entries {
        return Err(format!(
            "filling the log: only {n} of {entries} proposals applied ({} failures)",
            failed.load(Ordering::Relaxed)
        ));
    }
    Ok(n)
}

/// Reads every shard once (linearizably, on host 1), retrying temporary
/// failures; returns the time of the first success.
fn read_all(cluster: &Cluster, shards: u64, timeout: Duration) -> Res<Option<Instant>> {
    let nh = &cluster.hosts[0];
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut first = None;
    for s in 1..=shards {
        loop {
            match nh.sync_read(ShardId(s), b"", timeout) {
                Ok(_) => {
                    first.get_or_insert_with(Instant::now);
                    break;
                }
                Err(e) if e.is_temporary() && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(e) => return Err(format!("reading shard {s} after the restart: {e}")),
            }
        }
    }
    Ok(first)
}

/// Fills the log, closes every NodeHost, reopens them and times the way
/// back to serving reads.
pub fn restart(args: &BenchArgs, opts: ClusterOptions, report: &mut Report) -> Res<()> {
    let progress = Progress::new();
    let mut cluster = start_cluster(args, opts, &progress)?;
    if args.replicas > 1 && !args.no_balance {
        cluster.balance_leaders(args.shards, Duration::from_secs(10));
    }
    let t = Instant::now();
    let n = fill(&cluster, args, args.restart_entries, &progress)?;
    let fill_s = t.elapsed().as_secs_f64();
    report.set_u("entries_written", n);
    report.set_f("fill_s", fill_s);
    report.set_f("fill_writes_per_s", n as f64 / fill_s);
    let log_entries: u64 = cluster.hosts[0]
        .get_node_host_info()
        .log_info
        .iter()
        .map(|l| l.last_index.0.saturating_sub(l.first_index.0) + 1)
        .sum();
    report.set_u("log_entries_per_host", log_entries);
    progress.show("closing the NodeHosts", true);
    let t = Instant::now();
    cluster.close_hosts();
    report.set_f("close_s", t.elapsed().as_secs_f64());
    report.set_u(
        "wal_bytes_per_host",
        dir_bytes(&cluster.host_dir(1).join("wal")),
    );
    progress.show("reopening the NodeHosts", true);
    let t = Instant::now();
    cluster.open_hosts()?;
    let open_s = t.elapsed().as_secs_f64();
    cluster.start_shards(args.shards, &mut |_| {})?;
    let start_s = t.elapsed().as_secs_f64();
    progress.show("reading every shard", true);
    let first = read_all(
        &cluster,
        args.shards,
        Duration::from_millis(args.timeout_ms),
    )?;
    let all_s = t.elapsed().as_secs_f64();
    progress.done();
    report.set_f("reopen_hosts_s", open_s);
    report.set_f("start_replicas_s", start_s);
    if let Some(f) = first {
        report.set_f("first_read_s", (f - t).as_secs_f64());
    }
    report.set_f("all_shards_read_s", all_s);
    report.rss();
    Ok(())
}

/// The host (1-based) whose replica of shard 1 leads, among `hosts`.
fn leader_among(cluster: &Cluster, hosts: u64) -> Option<u64> {
    (1..=hosts).find(|&i| {
        cluster.hosts[(i - 1) as usize]
            .get_leader(ShardId(1))
            .is_ok_and(|l| l.is_some_and(|l| l.replica_id == ReplicaId(i)))
    })
}

/// One shard whose state is `--snapshot-mib` MiB; its last replica starts
/// after the leader compacted its log, so it is brought up by a streamed
/// snapshot. Times that catch-up.
pub fn snapshot(args: &BenchArgs, opts: ClusterOptions, report: &mut Report) -> Res<()> {
    if args.replicas < 2 {
        return Err("--snapshot needs --replicas 2 or more".into());
    }
    report.set_u("shards", 1);
    let progress = Progress::new();
    let cluster = Cluster::start(opts)?;
    let r = args.replicas;
    for i in 1..r {
        cluster.start_replica(1, i)?;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let leader = loop {
        if let Some(l) = leader_among(&cluster, r - 1) {
            break l;
        }
        if Instant::now() > deadline {
            return Err("no leader for shard 1".into());
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let nh = cluster.hosts[(leader - 1) as usize].clone();
    let timeout = Duration::from_secs(120);
    let bytes = args.snapshot_mib << 20;
    let mut session = nh.get_noop_session(ShardId(1));
    nh.sync_propose(&mut session, blob_command(bytes), timeout)
        .map_err(|e| format!("setting the state size: {e}"))?;
    progress.show(
        &format!("saving a {} MiB snapshot", args.snapshot_mib),
        true,
    );
    let t = Instant::now();
    let index = nh
        .request_snapshot(
            ShardId(1),
            SnapshotOption {
                compaction_overhead: Some(0),
                ..SnapshotOption::default()
            },
            timeout,
        )
        .and_then(|h| h.wait())
        .map_err(|e| format!("saving the snapshot: {e}"))?
        .index;
    let save_s = t.elapsed().as_secs_f64();
    report.set_f("save_s", save_s);
    report.set_f("save_mb_per_s", bytes as f64 / 1e6 / save_s);
    let sent0 = cluster.metrics()["snapshot_bytes_sent"];
    progress.show("starting the lagging replica", true);
    let t = Instant::now();
    cluster.start_replica(1, r)?;
    let late = &cluster.hosts[(r - 1) as usize];
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let applied = late
            .get_node_host_info()
            .shards
            .first()
            .map_or(0, |s| s.applied.0);
        if applied >= index.0 {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!(
                "the lagging replica applied {applied}, not {index}, after 300 s"
            ));
        }
        progress.show(
            &format!(
                "streaming: {} MiB sent",
                (cluster.metrics()["snapshot_bytes_sent"] - sent0) >> 20
            ),
            false,
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    let secs = t.elapsed().as_secs_f64();
    progress.done();
    let sent = cluster.metrics()["snapshot_bytes_sent"] - sent0;
    report.set_u("snapshot_bytes", sent);
    report.set_f("catch_up_s", secs);
    report.set_f("stream_mb_per_s", sent as f64 / 1e6 / secs);
    report.rss();
    Ok(())
}
