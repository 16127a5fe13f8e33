//! Seeds that found bugs in longship, kept as regression tests. Each names
//! the bug; the seed's run is the one of the simulator at the time (a later
//! change to the simulator's draws may make it a different run, which
//! still has to pass).

use longship_sim::run_seed;

fn must_pass(seed: u64, ops: u64) {
    if let Err(f) = run_seed(seed, ops) {
        panic!("{f}");
    }
}

/// A follower received a snapshot into its store but crashed (after an I/O
/// error stopped it) before log storage recorded it. After the restart the
/// leader streamed the same snapshot again and the receiver refused it
/// ("snapshot at index 181 already exists") forever: the replica never
/// caught up. Fixed by reusing the copy already in the store.
#[test]
fn seed_91_snapshot_already_in_store_is_reused() {
    must_pass(91, 3000);
}
