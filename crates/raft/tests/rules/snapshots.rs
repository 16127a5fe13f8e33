//! Snapshots (Raft §7).

use crate::support::*;

/// Raft §7: a leader whose follower needs compacted entries sends a
/// snapshot; the follower installs it (with the membership it holds),
/// acknowledges it, and replication resumes after it.
#[test]
fn leader_sends_snapshot_when_follower_needs_compacted_entries() {
    let mut c = cluster(3, opts());
    elect(&mut c, 1);
    c.isolate(3);
    add_member(&mut c, 1, ConfigChangeType::AddNonVoting, 4);
    for i in 0..5 {
        propose(&mut c, 1, &format!("p{i}"));
    }
    c.stabilize();
    let snap_index = c.node(1).applied_index;
    c.compact(r(1), snap_index);
    assert!(!c.raft(3).membership().contains(r(4)));

    c.heal();
    propose(&mut c, 1, "after");
    let snapshot_sent = Cell::new(false);
    let acked = Cell::new(false);
    pump(&mut c, |c, m| {
        if m.msg_type == MessageType::InstallSnapshot {
            assert_eq!(m.to, r(3));
            assert_eq!(m.snapshot.as_ref().map(|s| s.index), Some(snap_index));
            assert_eq!(
                c.node(1).raft.progress()[&r(3)].state,
                ProgressState::Snapshot
            );
            snapshot_sent.set(true);
        }
        if m.msg_type == MessageType::ReplicateResp && m.from == r(3) && m.log_index == snap_index {
            acked.set(true);
        }
    });
    assert!(snapshot_sent.get() && acked.get());
    assert_eq!(c.node(3).raft.log().reader().snapshot().index, snap_index);
    assert!(
        c.raft(3).membership().is_non_voting(r(4)),
        "membership of the snapshot"
    );
    assert_eq!(last_index(&c, 3), last_index(&c, 1));
    assert_eq!(c.node(3).applied_index, c.node(1).applied_index);
    assert_eq!(c.raft(1).progress()[&r(3)].state, ProgressState::Replicate);
}

/// Raft §7: a snapshot the follower already covers (its index is at or
/// below the commit index) is acknowledged without being installed.
#[test]
fn stale_snapshot_is_acknowledged_without_restore() {
    let mut f = replica(cfg(2), &[1; 10], 1, 8);
    f.step(snapshot_message(1, 2, 1, 5, 1));
    let u = cycle(&mut f);
    assert!(u.snapshot.is_none());
    let m = only_message(&u);
    assert_eq!(
        (m.msg_type, m.reject, m.log_index),
        (MessageType::ReplicateResp, false, Index(8))
    );
    assert_eq!(f.membership().voters.len(), 3, "membership untouched");
    assert_eq!(
        (f.log().first_index(), f.log().last_index()),
        (Index(1), Index(10))
    );
}

/// Raft §7: if the follower's log holds the snapshot's last entry, it keeps
/// the entries that follow, but the snapshot proves a match only up to its
/// index: the follower must not acknowledge more (its later entries may
/// conflict with the leader's and be counted toward a commit).
#[test]
fn snapshot_matching_the_log_acknowledges_only_its_index() {
    // The follower's entries 9 and 10 (term 2) may differ from the leader's.
    let mut f = replica(cfg(2), &[1, 1, 1, 1, 1, 1, 1, 1, 2, 2], 2, 3);
    f.step(snapshot_message(1, 2, 3, 8, 1));
    let u = cycle(&mut f);
    assert!(u.snapshot.is_none(), "log kept");
    assert_eq!(f.log().committed(), Index(8));
    assert_eq!(f.log().last_index(), Index(10));
    let m = only_message(&u);
    assert!(!m.reject);
    assert_eq!(
        m.log_index,
        Index(8),
        "acknowledges the snapshot, not the unproven tail"
    );
}

/// Raft §7 with flow control: when the transport reports that sending the
/// snapshot failed, the leader leaves snapshot state and sends it again
/// after the follower next answers.
#[test]
fn failed_snapshot_is_retried() {
    let mut c = cluster(3, opts());
    elect(&mut c, 1);
    c.isolate(3);
    for i in 0..3 {
        propose(&mut c, 1, &format!("p{i}"));
    }
    c.stabilize();
    let snap_index = c.node(1).applied_index;
    c.compact(r(1), snap_index);
    c.heal();
    propose(&mut c, 1, "after");
    c.process(r(1));
    c.deliver_matching(|m| m.to == r(3));
    c.process(r(3));
    c.deliver_matching(|m| m.from == r(3));
    c.process(r(1));
    assert_eq!(
        c.drop_matching(|m| m.msg_type == MessageType::InstallSnapshot),
        1
    );
    assert_eq!(c.raft(1).progress()[&r(3)].state, ProgressState::Snapshot);
    let failed = Message {
        reject: true,
        ..msg(MessageType::SnapshotStatus, 3, 1, 0)
    };
    c.raft(1).step(failed);
    assert_eq!(c.raft(1).progress()[&r(3)].state, ProgressState::Probe);
    c.tick(1);
    let resent = Cell::new(false);
    pump(&mut c, |_, m| {
        if m.msg_type == MessageType::InstallSnapshot {
            resent.set(true);
        }
    });
    assert!(resent.get(), "snapshot sent again");
    assert_eq!(last_index(&c, 3), last_index(&c, 1));
}

/// Raft §5.3 flow control: when the transport reports a follower
/// unreachable, the leader stops pipelining to it and probes again.
#[test]
fn unreachable_follower_goes_back_to_probe() {
    let mut c = cluster(3, opts());
    elect(&mut c, 1);
    assert_eq!(c.raft(1).progress()[&r(2)].state, ProgressState::Replicate);
    c.raft(1).step(msg(MessageType::Unreachable, 2, 1, 0));
    let p = &c.raft(1).progress()[&r(2)];
    assert_eq!(p.state, ProgressState::Probe);
    assert_eq!(p.next_index, p.match_index.next());
}
