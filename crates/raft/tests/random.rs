//! Randomized multi-replica harness (DESIGN §4): 3- and 5-replica clusters of
//! protocol cores driven by one seeded `Rng` through random faults —
//! ticks, delayed persistence, message reorder/drop/duplication, symmetric
//! and one-way partitions, crash-restarts, proposals, membership changes,
//! leadership transfers, read-index requests and compaction with snapshot
//! transfer — checking the Raft safety properties after every step, then
//! healing everything and requiring convergence.
//!
//! No clock, no threads, no other randomness, only ordered containers: a
//! seed replays exactly. Environment:
//! - `RAFT_SEED=N` runs only seed `N`, printing a trace of every step;
//! - `RAFT_SEEDS=N` (and `RAFT_SEED_START=S`) runs seeds `S..S+N` instead of
//!   the default set (soak runs; use `cargo test --release`).

use std::panic::{AssertUnwindSafe, catch_unwind};

/// Fails the run; `run_seed` reports the seed and step.
macro_rules! fail {
    ($sim:expr, $($arg:tt)*) => {
        panic!($($arg)*)
    };
}

#[path = "random/sim.rs"]
mod sim;

use sim::{Sim, Stats};

/// Seeds the default run covers (split over the `random_seeds_*` tests).
const DEFAULT_SEEDS: u64 = 512;
/// Test functions the default seeds are split over (parallel test threads).
const SHARDS: u64 = 4;

/// Runs one seed; on failure panics with the seed and step.
fn run_seed(seed: u64, trace: bool) -> Stats {
    run_seed_with(seed, trace, false)
}

/// A seed found before the harness drew asynchronous storage writes for
/// half the seeds: run with synchronous writes, the history it was named for.
fn run_seed_sync(seed: u64) -> Stats {
    run_seed_with(seed, false, true)
}

fn run_seed_with(seed: u64, trace: bool, force_sync: bool) -> Stats {
    let mut sim = None;
    let result = catch_unwind(AssertUnwindSafe(|| {
        sim = Some(Sim::new(seed, trace, force_sync));
        sim.as_mut().expect("just set").run();
    }));
    if let Err(e) = result {
        let msg = e
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        let step = sim.as_ref().map_or(0, |s| s.step);
        if let Some(s) = sim.as_mut() {
            s.flush_trace();
        }
        panic!(
            "seed {seed} failed at step {step}: {msg}\nreplay: RAFT_SEED={seed} cargo test -p longship-raft --test random -- random_seeds_0 --nocapture"
        );
    }
    let stats = sim.expect("ran").stats;
    if trace {
        println!("{stats:?}");
    }
    stats
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| {
        v.trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number"))
    })
}

/// Runs this shard's part of the configured seeds.
fn run_shard(shard: u64) {
    if let Some(seed) = env_u64("RAFT_SEED") {
        if shard == 0 {
            run_seed(seed, true);
        }
        return;
    }
    let start = env_u64("RAFT_SEED_START").unwrap_or(0);
    let count = env_u64("RAFT_SEEDS").unwrap_or(DEFAULT_SEEDS);
    let mut failures = Vec::new();
    let mut ran = 0u64;
    let mut stats = Stats::default();
    for seed in (start..start + count).filter(|s| s % SHARDS == shard) {
        ran += 1;
        match catch_unwind(|| run_seed(seed, false)) {
            Ok(s) => stats.add(&s),
            Err(e) => {
                let msg = e
                    .downcast_ref::<String>()
                    .cloned()
                    .unwrap_or_else(|| format!("seed {seed} failed"));
                failures.push(msg);
                if failures.len() >= 5 {
                    break;
                }
            }
        }
    }
    println!("shard {shard}: {stats:?}");
    assert!(
        failures.is_empty(),
        "{} of {ran} seeds failed:\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

#[test]
fn random_seeds_0() {
    run_shard(0);
}

#[test]
fn random_seeds_1() {
    run_shard(1);
}

#[test]
fn random_seeds_2() {
    run_shard(2);
}

#[test]
fn random_seeds_3() {
    run_shard(3);
}

// ----- regressions -----
//
// Seeds that found core bugs. Each fails with its fix reverted, with the
// harness as committed alongside; a change to the harness's use of its
// random stream remaps seeds, so re-derive them (revert the fix, run
// RAFT_SEEDS) when changing the action mix.

/// Appends lost in Replicate state were never resent until the next
/// proposal: a heartbeat response from a lagging follower now triggers an
/// (empty if need be) append, which the follower rejects if it misses entries.
#[test]
fn seed_140_lost_appends_resent_after_heartbeat() {
    run_seed_sync(140);
}

/// A full in-flight window whose messages were all lost blocked the
/// follower for good: a heartbeat response frees one slot.
#[test]
fn seed_114_full_inflight_window_of_lost_appends() {
    run_seed_sync(114);
}

/// Replicas' random streams were shifted copies of each other (seed ^
/// id * golden with SplitMix64), so replicas ticked together drew equal
/// election timeouts and split votes forever.
#[test]
fn seed_12352_replicas_drew_equal_election_timeouts() {
    run_seed_sync(12352);
}

/// A witness that got a higher term from a since-removed candidate ignored
/// the lower-term leader forever (no pre-vote, no check-quorum), and cannot
/// campaign to move the shard on: it now answers with its term.
#[test]
fn seed_4681_witness_with_higher_term_answers_leader() {
    run_seed_sync(4681);
}

/// A member that missed the change adding a new member while partitioned
/// never caught up once that member led: the core drops messages from
/// non-members, and refusing a leader it does not know left the member
/// behind for good. A leader's messages of a term at least the receiver's
/// are now taken from any sender.
#[test]
fn seed_396_member_follows_a_leader_it_does_not_know() {
    run_seed_sync(396);
}

/// A forwarded proposal keeps its asker as `from`, so a follower that
/// forwards it on to the leader it knows can send it back to the asker
/// itself, now leader: messages "from this replica" are dropped as
/// invalid except forwarded requests.
#[test]
fn seed_10729_forwarded_request_returns_to_its_asker() {
    run_seed_sync(10729);
}

/// A member partitioned to a high term dropped the lower-term messages of
/// a leader it did not know (added while it was away) without answering,
/// so the leader never learnt of the newer term and the member never
/// rejoined: a leader's messages are now answered with our term whoever
/// sends them.
#[test]
fn seed_53890_stale_unknown_leader_hears_our_term() {
    run_seed_sync(53890);
}

/// A voter that missed the change adding a new voter dropped the new
/// voter's pre-votes as a non-member's, while the new voter was the only
/// replica that could win: the shard never elected a leader again. Vote
/// requests from a sender we do not know are now taken when its log is
/// ahead of ours (the change adding it may be in what we lack).
#[test]
fn seed_98766_voter_behind_a_change_hears_the_new_voter() {
    run_seed_sync(98766);
}

/// Asynchronous writes: a committed config change waited for a synced
/// commit index covering it, but the commit index had already been handed
/// out in a write that needed no sync, so no synced one was ever asked
/// for, and the replica never applied again (no convergence).
#[test]
fn seed_213205_held_config_change_asks_for_a_synced_commit() {
    run_seed(213205, false);
}
