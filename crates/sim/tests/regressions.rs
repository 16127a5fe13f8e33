//! Seeds that found bugs in longship, kept as regression tests. Each names
//! the bug; the seed's run is the one of the simulator at the time (a later
//! change to the simulator's draws may make it a different run, which
//! still has to pass).

use longship_sim::run_seed_sync;

/// Runs a named seed with synchronous log writes: every seed here was
/// found before the simulator drew asynchronous writes for half the seeds.
fn must_pass(seed: u64, ops: u64) {
    if let Err(f) = run_seed_sync(seed, ops) {
        panic!("{f}");
    }
}

/// [`must_pass`] in master mode (`longship-sim --master`).
fn must_pass_master(seed: u64, ops: u64) {
    if let Err(f) = longship_sim::run_master_seed_sync(seed, ops) {
        panic!("{f}");
    }
}

/// A follower received a snapshot into its store but crashed (after an I/O
/// error stopped it) before log storage recorded it. After the restart the
/// leader streamed the same snapshot again and the receiver refused it
/// ("snapshot at index N already exists") on every retry: the replica never
/// caught up. Found by seeds 91, 609 and 1092 of the first simulator; seed
/// 116 is one that still fails with the fix reverted. Fixed by reusing the
/// copy already in the store.
#[test]
fn seed_116_snapshot_already_in_store_is_reused() {
    must_pass(116, 3000);
}

/// The fix above reused a snapshot whose publication had failed at the
/// directory sync (an injected I/O error): visible in the store but not
/// durable. Log storage recorded it, a crash took the snapshot directory
/// away, and the replica could not restart ("snapshot at index 114 not
/// found"). Fixed by syncing the store's directory before reusing a copy.
#[test]
fn seed_565_reused_snapshot_is_made_durable_first() {
    must_pass(565, 3000);
}

/// A witness's snapshot (metadata only) travels in a message batch, with
/// no stream to report its outcome; the leader waited in the snapshot
/// state for a status that never came, so when the network dropped that
/// message the witness never received anything again (stuck at index 82
/// while the shard went on). Found by seed 115 once the simulator added
/// witnesses. Fixed by reporting the send's outcome like a stream's end.
#[test]
fn seed_115_lost_witness_snapshot_is_sent_again() {
    must_pass(115, 3000);
}

/// A witness holds no state machine data, but took reads: a linearizable
/// read on the witness's host was answered from its never-updated state
/// machine (an acknowledged probe write "not seen"; appends "lost" in the
/// final reads). Found by seed 373 (and a third of all seeds) once the
/// simulator added witnesses. Fixed: a witness refuses proposals, session
/// registration and reads with `Error::Witness`.
#[test]
fn seed_373_witness_refuses_reads() {
    must_pass(373, 3000);
}

/// No leader for ever after healing: of voters {1, 3} and witness 4
/// (replica 2 removed), the witness held the longest log (an uncommitted
/// entry), replica 3 a shorter log than replica 1, and replica 1, whose
/// commit index lagged behind the removal of 2, still counted 2 among the
/// voters (membership changes take effect when applied) and needed three
/// votes of four. Fixed in the core: vote answers carry the voter's commit
/// index and its term, and a candidate whose log has that term there
/// learns the commit (Log Matching), applies the removal and wins.
#[test]
fn seed_6192_candidate_learns_commit_from_votes() {
    must_pass(6192, 3000);
}

/// No leader for ever after healing: voters {3, 5} and witness 4 (1 and 2
/// removed, 5 promoted from non-voting). Replica 5 held the whole log but
/// had not learnt that its promotion and the removal of 2 were committed,
/// so it thought itself non-voting and never campaigned; replica 3 counted
/// the removed 2 and had a shorter log than the witness. Fixed in the
/// core: a replica that cannot campaign asks the others what is committed
/// once per election timeout without a leader (a pre-vote request that
/// changes nothing at the receivers); vote answers cap their commit index
/// at the asker's last index.
#[test]
fn seed_22883_non_voting_view_probes_for_the_commit() {
    must_pass(22883, 3000);
}

/// A first version of "learn addresses only from members" (issue 13) let a
/// replica learn a sender's address only while it knew no member at all.
/// A member behind a membership change (its view: voters 1, 2, 3) then
/// could not answer the new leader 4, which its view did not list: it never
/// acknowledged an append and stayed at index 120 while the shard went on
/// (no convergence after healing). Fixed: the addresses of senders outside
/// the replica's view are learnt (bounded per replica, members' addresses
/// never replaced). Found by seed 138 before that change landed.
#[test]
fn seed_138_a_member_behind_a_change_answers_a_leader_it_does_not_know() {
    must_pass(138, 3000);
}

/// Protocol-aware recovery (issue 16, docs/recovery.md): a crash damages
/// the newest durable bytes of one host's log (the simulator's tail-damage
/// fault), so its replicas restart without entries they had acknowledged.
/// With the guard's vote rule taken out of the core (a guarded replica
/// voting like any other, as every replica did before), seed 7002790 loses
/// an acknowledged write (the history of key s1k0 is not linearizable) and
/// seed 7002897 ends with two replicas of shard 2 that applied different
/// entries at one index. With the rule, both pass.
#[test]
fn seed_7002790_a_replica_that_lost_acknowledged_entries_does_not_vote_them_away() {
    must_pass(7002790, 3000);
}

/// See `seed_7002790_...`: the divergence variant.
#[test]
fn seed_7002897_a_replica_that_lost_acknowledged_entries_does_not_diverge() {
    must_pass(7002897, 3000);
}

/// Protocol-aware recovery, found by the tail-damage fault: a follower
/// whose damaged batch had replaced an old entry got the old entry back,
/// while the leader still counted it as matched there. The follower took
/// the leader's heartbeat commit index (its match index) and applied the
/// replaced entry; the replicas diverged. Fixed in the core: a guarded
/// follower commits only through appends, and its LOG_LOST rejection at
/// the match index lowers the leader's match index below it.
#[test]
fn seed_8013877_a_damaged_follower_never_applies_a_replaced_entry() {
    must_pass(8013877, 3000);
}

/// A torn newest batch (the file ends inside it) was followed by a repair
/// batch; the host's start then failed on an injected I/O error while that
/// repair batch was being written, and the next crash kept part of it. At
/// the next open the file no longer ended inside the torn batch, which was
/// judged damaged (possibly acknowledged) and guarded a replica of a shard
/// of two voters and a witness: no leader could ever be elected again.
/// Fixed in the WAL: a torn tail is cut off (truncated), never followed.
#[test]
fn seed_8156408_an_ordinary_crash_during_repair_guards_nobody() {
    must_pass(8156408, 3000);
}

/// Master mode (docs/master.md, "Removed replicas and the engine's
/// volatile commit index"): a replica removed from shard 1 could not be
/// told to stop (its host was cut off from the master) and restarted; a
/// commit index alone is not written, so it came back applying only up to
/// an older membership in which it was a voter again, and with a replica
/// that lagged behind the removal it elected itself in a term whose
/// leader the current membership had already elected: two leaders in term
/// 3. Fixed in the engine: a cycle whose committed entries hold a membership
/// change writes the hard state before applying them. (A later change to
/// the master or the simulator may make this seed another run.)
#[test]
fn master_seed_5087_a_restarted_replica_falls_back_to_an_older_membership() {
    must_pass_master(5087, 3000);
}

/// Master mode, the liveness side of the same engine issue: the leader of
/// a shard died for good right after committing a removal, and the
/// restarted voters fell back to the membership before it, which needs
/// the removed (and deleted) replica's vote: no leader for ever. Fixed
/// with `master_seed_5087_...`.
#[test]
fn master_seed_4150_voters_restarted_into_an_older_membership_elect_no_leader() {
    must_pass_master(4150, 3000);
}

/// Master mode: a replica joined on host 3 was promoted to voter before
/// any entry reached it (a small shard catches up at once), so its host
/// stored nothing of it; host 3 crashed, and its restart, which starts
/// every replica its log storage holds, forgot it. With the voter on the
/// host that died for good, the shard (4 voters, 2 running) had no quorum
/// for ever. Fixed in the NodeHost: `Start::Join` records the replica
/// durably before it runs. (Seed 11321 was the same.)
#[test]
fn master_seed_11690_a_joined_voter_with_nothing_stored_survives_its_hosts_restart() {
    must_pass_master(11690, 3000);
}

/// Master mode: a move aborted (its new replica's host died) while the
/// `AddNonVoting` it had asked for was still in flight through a stale
/// leader; the next move's `AddNonVoting` was proposed meanwhile, so two
/// changes of one shard could both have taken effect. Fixed in the master:
/// the changes it asks for are ordered on the config change id of the
/// membership it saw, so at most one of them can.
#[test]
fn master_seed_10664_an_aborted_change_still_in_flight_cannot_take_effect_after_the_next() {
    must_pass_master(10664, 3000);
}

/// An injected write error failed host 4's log storage; a replica then
/// joining there could not start (its start now writes its state), and
/// the host, running nothing else, was never seen as sick: the simulator
/// stopped on the failed start. A NodeHost now tells that its log storage
/// refuses writes (`NodeHost::log_storage_failure`), and a host whose log
/// storage failed is crashed and restarted like one with a failed replica.
#[test]
fn seed_11000229_a_join_on_a_host_whose_log_storage_failed_restarts_the_host() {
    must_pass(11000229, 3000);
}

/// Master mode, the same with the master: a new host's log storage failed
/// at the first replica it was asked to start, and the master asked again
/// for ever while no shard could finish its move.
#[test]
fn master_seed_13706_a_host_whose_log_storage_failed_is_restarted() {
    must_pass_master(13706, 3000);
}

/// Host 2 crashed after a received snapshot (157) and its own (158) were
/// committed to its snapshot store but before the log storage recorded
/// them; its restart replayed from the recorded snapshot (131), took one at
/// 156, recorded it and compacted the log behind it, and then kept "the two
/// newest" snapshots, 157 and 158, removing 156. The next start found no
/// snapshot behind the compacted log ("must be rebuilt"). Fixed in the
/// engine: snapshots above the recorded one do not count among those kept
/// (`SnapshotStore::keep_newest_upto`). Found by the 100,000-seed run of
/// 2026-12-05 at seed 11052946 (the only failure of its first 56,000).
#[test]
fn seed_11052946_snapshots_above_the_recorded_one_never_push_it_out() {
    must_pass(11052946, 3000);
}

/// Two replicas of one shard under recovery guards at once, the third
/// behind both: no leader could ever be elected. Two causes, both fixed.
/// The simulator damaged a second replica's log while the shard's first
/// guarded replica was down (its guard is durable, but a down host was not
/// asked), against its own one-guard-at-a-time rule; and the log storage
/// guarded a replica whose damaged batch held only its hard state (a term
/// and vote, restored from the batch header; its log was untouched), with
/// a restart term above its log's last term that no candidate could meet.
/// Found by the 100,000-seed run of 2026-12-05 at seed 12048564.
#[test]
fn seed_12048564_a_lost_hard_state_alone_guards_nobody() {
    must_pass(12048564, 3000);
}

/// The first snapshot of a replica creates its directory (and the
/// NodeHost's snapshot root). An injected error failed the sync of the
/// root's parent; the retried snapshot found the root there and did not
/// sync it again, and a crash took the root with the snapshot that the
/// log storage, compacted behind it, recorded ("must be rebuilt" at the
/// next start). Fixed in the snapshot store: the first snapshot syncs the
/// directories above it whether or not it created them. Found by the
/// 100,000-seed run of 2026-12-05 at seeds 13101315, 13102293 and 13107400.
#[test]
fn seed_13101315_a_directory_left_by_a_failed_attempt_is_synced_again() {
    must_pass(13101315, 3000);
}

/// A replica lost, with its damaged log tail, the very entry that removed
/// it from its shard; no leader talks to a non-member, so it never learns
/// of the removal and its recovery guard stays for good (a zombie replica,
/// harmless: it never campaigns). The simulator's admin held every
/// membership change of the shard while any of its replicas was guarded,
/// so its retried Remove waited for ever. The harness now counts only
/// guarded replicas that the newest known membership still holds. Found by
/// the 100,000-seed run of 2026-12-05 at seeds 13213884 and 13216712
/// (product code unchanged).
#[test]
fn seed_13213884_a_removed_replica_under_a_guard_does_not_hold_up_the_admin() {
    must_pass(13213884, 3000);
}
