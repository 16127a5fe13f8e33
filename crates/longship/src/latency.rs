//! Latency histograms of a NodeHost (proposal, read, fsync, apply,
//! snapshot), recorded with `hdrhistogram` and exposed as Prometheus
//! histograms beside the counters ([`Metrics::prometheus_text`]).
//!
//! Why the exposition stays hand-written rather than `prometheus-client`:
//! the NodeHost exports a fixed set of counters, gauges and five
//! histograms; `prometheus-client` would add a registry, its own metric
//! types next to the atomics the workers already bump, and a dependency
//! tree, for the same few lines of the text format (version 0.0.4, which
//! is stable). The tests parse the output, so a format slip shows.
//!
//! [`Metrics::prometheus_text`]: crate::Metrics::prometheus_text

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use hdrhistogram::Histogram;
use parking_lot::Mutex;

/// Upper bound of a recorded latency: a minute, in microseconds (longer
/// ones are recorded as a minute).
const MAX_MICROS: u64 = 60_000_000;

/// Bucket bounds of the Prometheus histograms, in microseconds.
const BUCKETS_MICROS: [u64; 17] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 5_000_000, 10_000_000,
];

struct State {
    histogram: Histogram<u64>,
    sum_micros: u64,
}

/// One latency histogram (microsecond resolution, 3 significant digits).
pub(crate) struct Latency {
    state: Mutex<State>,
}

impl Default for Latency {
    fn default() -> Self {
        Latency {
            state: Mutex::new(State {
                histogram: Histogram::new_with_bounds(1, MAX_MICROS, 3)
                    .expect("valid histogram bounds"),
                sum_micros: 0,
            }),
        }
    }
}

impl Latency {
    /// Records one latency.
    pub(crate) fn record(&self, d: Duration) {
        let micros = u64::try_from(d.as_micros())
            .unwrap_or(MAX_MICROS)
            .clamp(1, MAX_MICROS);
        let mut s = self.state.lock();
        s.histogram.saturating_record(micros);
        s.sum_micros = s.sum_micros.saturating_add(micros);
    }

    /// (count, value at quantile `q` in microseconds).
    pub(crate) fn quantile(&self, q: f64) -> (u64, u64) {
        let s = self.state.lock();
        (s.histogram.len(), s.histogram.value_at_quantile(q))
    }

    /// Appends the Prometheus histogram `longship_<name>_seconds`.
    fn write_prometheus(&self, name: &str, out: &mut String) {
        let (buckets, count, sum_micros) = {
            let s = self.state.lock();
            let buckets: Vec<u64> = BUCKETS_MICROS
                .iter()
                .map(|&le| s.histogram.count_between(0, le))
                .collect();
            (buckets, s.histogram.len(), s.sum_micros)
        };
        let _ = writeln!(out, "# TYPE longship_{name}_seconds histogram");
        for (le, n) in BUCKETS_MICROS.iter().zip(buckets) {
            let _ = writeln!(
                out,
                "longship_{name}_seconds_bucket{{le=\"{}\"}} {n}",
                *le as f64 / 1e6
            );
        }
        let _ = writeln!(out, "longship_{name}_seconds_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(
            out,
            "longship_{name}_seconds_sum {}",
            sum_micros as f64 / 1e6
        );
        let _ = writeln!(out, "longship_{name}_seconds_count {count}");
    }
}

/// What a latency measures ([`Metrics::latency_quantile`](crate::Metrics::latency_quantile)).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LatencyKind {
    /// From `propose` to the proposal's result (applied), successes only.
    Proposal,
    /// From `read_index` to the read index being ready locally.
    Read,
    /// One log storage write with its fsync (a step worker cycle's).
    Fsync,
    /// One batch of committed entries applied to a state machine.
    Apply,
    /// One snapshot saved (or exported), state machine and files.
    Snapshot,
}

/// The histograms of a NodeHost.
#[derive(Default)]
pub(crate) struct Latencies {
    pub(crate) proposal: Arc<Latency>,
    pub(crate) read: Arc<Latency>,
    pub(crate) fsync: Latency,
    pub(crate) apply: Latency,
    pub(crate) snapshot: Latency,
}

impl std::fmt::Debug for Latencies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Latencies")
            .field("proposal", &self.proposal.quantile(0.5))
            .field("read", &self.read.quantile(0.5))
            .finish_non_exhaustive()
    }
}

impl Latencies {
    pub(crate) fn get(&self, kind: LatencyKind) -> &Latency {
        match kind {
            LatencyKind::Proposal => &self.proposal,
            LatencyKind::Read => &self.read,
            LatencyKind::Fsync => &self.fsync,
            LatencyKind::Apply => &self.apply,
            LatencyKind::Snapshot => &self.snapshot,
        }
    }

    /// Every histogram in Prometheus text format.
    pub(crate) fn prometheus_text(&self) -> String {
        let mut out = String::new();
        for (name, kind) in [
            ("proposal_latency", LatencyKind::Proposal),
            ("read_latency", LatencyKind::Read),
            ("fsync_latency", LatencyKind::Fsync),
            ("apply_latency", LatencyKind::Apply),
            ("snapshot_latency", LatencyKind::Snapshot),
        ] {
            self.get(kind).write_prometheus(name, &mut out);
        }
        out
    }
}
