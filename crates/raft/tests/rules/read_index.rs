//! ReadIndex (thesis §6.4).

use crate::support::*;

/// Thesis §6.4 step 1: a new leader serves no read before it committed an
/// entry of its term (until then its commit index may be stale); the read
/// index is then at least that entry.
#[test]
fn read_index_waits_for_a_commit_in_the_current_term() {
    let mut c = cluster(3, opts());
    elect_unsettled(&mut c, 1);
    c.raft(1).read_index(7).unwrap();
    c.process(r(1));
    assert!(c.node(1).ready_reads.is_empty());
    assert!(
        c.queue.iter().all(|m| m.context != 7),
        "no heartbeat round yet"
    );
    c.stabilize();
    assert_eq!(
        c.node(1).ready_reads,
        vec![ReadState {
            index: Index(4),
            context: 7
        }]
    );
}

/// Thesis §6.4 step 3: the leader serves a read only after a heartbeat
/// round acknowledged by a majority confirms it still leads.
#[test]
fn read_index_needs_a_heartbeat_quorum() {
    let mut c = cluster(3, opts());
    elect(&mut c, 1);
    c.raft(1).read_index(8).unwrap();
    c.process(r(1));
    c.deliver_matching(|m| m.msg_type == MessageType::Heartbeat);
    c.process_all();
    assert_eq!(
        c.drop_matching(|m| m.msg_type == MessageType::HeartbeatResp),
        2
    );
    c.process_all();
    assert!(
        c.node(1).ready_reads.is_empty(),
        "no acknowledgement, no read"
    );

    // The next heartbeat carries the pending read; one follower is a quorum with the leader.
    c.tick(1);
    c.process(r(1));
    c.drop_matching(|m| m.to == r(3));
    c.stabilize();
    assert_eq!(
        c.node(1).ready_reads,
        vec![ReadState {
            index: Index(4),
            context: 8
        }]
    );
}

/// Thesis §6.4: a follower gets its read index from the leader (the
/// leader's commit index, once it confirmed its leadership), not from its
/// own possibly lagging commit index, and serves the read once applied.
#[test]
fn follower_read_index_goes_through_the_leader() {
    let mut c = cluster(3, opts());
    elect(&mut c, 1);
    // 2 stores entry 5 but does not learn that it committed.
    propose(&mut c, 1, "a");
    c.process(r(1));
    c.deliver_matching(|_| true);
    c.process_all();
    c.deliver_matching(|_| true);
    c.process(r(1));
    c.drop_matching(|m| m.to == r(2));
    c.stabilize();
    assert_eq!((committed(&c, 1), committed(&c, 2)), (Index(5), Index(4)));
    c.raft(2).read_index(9).unwrap();
    c.stabilize();
    assert_eq!(
        c.node(2).ready_reads,
        vec![ReadState {
            index: Index(5),
            context: 9
        }]
    );
    assert!(c.node(1).ready_reads.is_empty());

    let mut lone = replica(cfg(2), &[1], 1, 1);
    assert_eq!(lone.read_index(1), Err(ProposalError::NoLeader));
}

/// Thesis §6.4: reads a leader holds when it loses leadership can never be
/// confirmed; they are reported dropped so their callers can retry.
#[test]
fn pending_reads_are_dropped_when_leadership_is_lost() {
    let mut c = cluster(3, opts());
    elect_unsettled(&mut c, 1);
    c.raft(1).read_index(11).unwrap(); // waits for the first commit
    c.drop_matching(|_| true);
    c.raft(1).step(msg(MessageType::Heartbeat, 2, 1, 3));
    c.process(r(1));
    assert_eq!(c.node(1).dropped_reads, vec![11]);

    let mut c = cluster(3, opts());
    elect(&mut c, 1);
    c.raft(1).read_index(10).unwrap(); // waits for a heartbeat quorum
    c.process(r(1));
    c.drop_matching(|_| true);
    c.raft(1).step(msg(MessageType::Heartbeat, 2, 1, 3));
    c.process(r(1));
    assert_eq!(c.node(1).dropped_reads, vec![10]);
    assert!(c.node(1).ready_reads.is_empty());
}

/// Thesis §6.4.1: lease-based reads skip the heartbeat round and rely on
/// CheckQuorum (a leader that lost its majority steps down within an
/// election timeout), so a config without CheckQuorum is invalid.
#[test]
fn lease_read_requires_check_quorum_and_skips_the_heartbeat_round() {
    let bad = RaftConfig {
        lease_read: true,
        check_quorum: false,
        ..cfg(1)
    };
    assert!(matches!(
        bad.validate(),
        Err(ConfigError::Invalid {
            field: "lease_read",
            ..
        })
    ));
    assert!(
        Raft::new(
            bad,
            MemLog::new(),
            HardState::default(),
            voters(&[1]),
            Index(0)
        )
        .is_err()
    );

    let o = ClusterOptions {
        lease_read: true,
        check_quorum: true,
        ..opts()
    };
    let mut c = cluster(3, o);
    elect(&mut c, 1);
    // The lease starts with a quorum's answers to a heartbeat (counted from
    // when it was sent, thesis §6.4.1).
    c.tick(1);
    c.stabilize();
    c.raft(1).read_index(12).unwrap();
    c.process(r(1));
    assert_eq!(
        c.node(1).ready_reads,
        vec![ReadState {
            index: Index(4),
            context: 12
        }]
    );
    assert!(c.queue.is_empty(), "no heartbeat round");
}

/// Thesis §6.4.1 with §3.10: a leadership transfer ends the lease early
/// (TimeoutNow lets the target win at once, overriding the followers'
/// lease), so while one is under way a lease read takes the heartbeat round.
#[test]
fn lease_read_takes_the_heartbeat_round_during_a_transfer() {
    let o = ClusterOptions {
        lease_read: true,
        check_quorum: true,
        ..opts()
    };
    let mut c = cluster(3, o);
    elect(&mut c, 1);
    c.isolate(3);
    c.raft(1).transfer_leader(r(3)).unwrap();
    c.raft(1).read_index(13).unwrap();
    c.process(r(1));
    assert!(
        c.node(1).ready_reads.is_empty(),
        "no lease during the transfer"
    );
    assert_eq!(queued(&c, MessageType::Heartbeat, 1, 2)[0].context, 13);
    c.stabilize();
    assert_eq!(
        c.node(1).ready_reads,
        vec![ReadState {
            index: Index(4),
            context: 13
        }]
    );
}
