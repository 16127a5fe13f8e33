//! Counters of a NodeHost, readable as Prometheus text.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
        /// NodeHost counters (monotonic) and gauges.
        #[derive(Default, Debug)]
        pub struct Metrics {
            $($(#[$doc])* pub $name: AtomicU64,)*
            /// Latency histograms (see [`Metrics::latency_quantile`]).
            pub(crate) latencies: crate::latency::Latencies,
        }

        impl Metrics {
            /// All counters as (name, value).
            pub fn values(&self) -> Vec<(&'static str, u64)> {
                vec![$((stringify!($name), self.$name.load(Ordering::Relaxed)),)*]
            }
        }
    };
}

counters!(
    /// Proposals accepted into a proposal queue.
    proposals,
    /// Proposals refused because a queue or the in-memory log was full.
    proposals_busy,
    /// Proposals dropped (no leader, transfer).
    proposals_dropped,
    /// Entries applied to state machines.
    entries_applied,
    /// Committed batches the step worker applied itself (no apply worker hand-off).
    inline_applies,
    /// Entries persisted by step workers.
    entries_persisted,
    /// `save_raft_state` calls (one fsync each).
    persist_batches,
    /// Elections won by replicas of this host.
    elections_won,
    /// Read-index requests served.
    reads,
    /// Messages sent.
    messages_sent,
    /// Messages received.
    messages_received,
    /// Received messages dropped (unknown shard or replica, wrong deployment, full queue).
    messages_dropped,
    /// Received messages the protocol core dropped because no correct peer
    /// could have sent them (e.g. a second leader in one term).
    messages_invalid,
    /// Snapshots saved locally.
    snapshots_saved,
    /// Snapshots exported ([`SnapshotOption::export_path`](crate::SnapshotOption::export_path)).
    snapshots_exported,
    /// Full snapshots an on-disk state machine saved to stream to a
    /// follower (its local snapshots hold metadata only).
    snapshots_saved_for_streams,
    /// Snapshots received from leaders.
    snapshots_received,
    /// Snapshot stream chunks refused (a stream over `max_snapshot_bytes`,
    /// a full disk, a stream replaced or without a replica): the stream ends.
    snapshot_chunks_refused,
    /// Snapshot bytes streamed to followers.
    snapshot_bytes_sent,
    /// Step worker cycles.
    step_cycles,
    /// Logical clock ticks (one RTT each) this host handed to its replicas.
    ticks,
    /// Replicas failed (state machine error or panic, log storage read or
    /// write error, a panic in their protocol work); the workers went on
    /// with their other shards.
    replica_failures,
    /// Worker rounds that panicked outside any replica's guard (the thread went on).
    worker_panics,
);

impl Metrics {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// The counters and the latency histograms (`longship_<what>_latency_seconds`,
    /// for proposal, read, fsync, apply and snapshot) in Prometheus text
    /// exposition format.
    pub fn prometheus_text(&self) -> String {
        prometheus_lines("counter", &self.values()) + &self.latencies.prometheus_text()
    }

    /// How many latencies of `kind` were recorded, and the one at quantile
    /// `q` (0.0..=1.0; e.g. 0.99 for p99), at microsecond resolution with
    /// three significant digits.
    pub fn latency_quantile(&self, kind: crate::LatencyKind, q: f64) -> (u64, std::time::Duration) {
        let (n, micros) = self.latencies.get(kind).quantile(q.clamp(0.0, 1.0));
        (n, std::time::Duration::from_micros(micros))
    }
}

/// Queue depths and replica states of a NodeHost at one instant, from
/// [`NodeHost::gauges`](crate::NodeHost::gauges): what an operator watches
/// to see a host falling behind (every queue is bounded; these say how
/// close to the bound it runs).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Gauges {
    /// Replicas running.
    pub replicas: u64,
    /// Replicas quiesced.
    pub replicas_quiesced: u64,
    /// Replicas stopped by a failure (state machine or storage error).
    pub replicas_failed: u64,
    /// Inbound messages queued for step workers.
    pub inbound_messages_queued: u64,
    /// Proposals queued for step workers.
    pub proposals_queued: u64,
    /// Proposals waiting for their outcome (queued, in the log, or
    /// committed and waiting to be applied).
    pub proposals_pending: u64,
    /// Read requests queued or waiting for their read index or apply.
    pub reads_pending: u64,
    /// Batches of committed entries queued for apply workers.
    pub apply_tasks_queued: u64,
    /// Snapshot jobs (saves and streams) queued.
    pub snapshot_jobs_queued: u64,
}

impl Gauges {
    /// All gauges as (name, value).
    pub fn values(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("replicas", self.replicas),
            ("replicas_quiesced", self.replicas_quiesced),
            ("replicas_failed", self.replicas_failed),
            ("inbound_messages_queued", self.inbound_messages_queued),
            ("proposals_queued", self.proposals_queued),
            ("proposals_pending", self.proposals_pending),
            ("reads_pending", self.reads_pending),
            ("apply_tasks_queued", self.apply_tasks_queued),
            ("snapshot_jobs_queued", self.snapshot_jobs_queued),
        ]
    }

    /// The gauges in Prometheus text exposition format.
    pub fn prometheus_text(&self) -> String {
        prometheus_lines("gauge", &self.values())
    }
}

/// `values` as Prometheus samples of `kind`, each after its TYPE line.
fn prometheus_lines(kind: &str, values: &[(&'static str, u64)]) -> String {
    let mut out = String::new();
    for (name, v) in values {
        let _ = writeln!(out, "# TYPE longship_{name} {kind}");
        let _ = writeln!(out, "longship_{name} {v}");
    }
    out
}
