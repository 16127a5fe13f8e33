//! Log replication (Raft §5.3).

use crate::support::*;

/// Raft §5.3: a follower refuses an append whose previous entry it does
/// not hold with the same term (the consistency check), and answers with a
/// hint of where the logs may match; it accepts one that matches.
#[test]
fn append_consistency_check() {
    let mut f = replica(cfg(2), &[1, 1, 1, 2], 2, 3);
    // Previous entry present with another term.
    f.step(append(1, 2, 3, (4, 3), vec![ent(5, 3)], 3));
    let m = only_message(&cycle(&mut f));
    assert!(m.reject);
    assert_eq!(
        (m.log_index, m.hint, m.hint_term),
        (Index(4), Index(4), Term(2))
    );
    // Previous entry beyond the end of the log.
    f.step(append(1, 2, 3, (7, 3), vec![ent(8, 3)], 3));
    let m = only_message(&cycle(&mut f));
    assert!(m.reject);
    assert_eq!(m.hint, Index(4), "hint points at the follower's last entry");
    assert_eq!(f.log().last_index(), Index(4), "nothing appended");
    // Matching previous entry.
    f.step(append(1, 2, 3, (4, 2), vec![ent(5, 3)], 3));
    let u = cycle(&mut f);
    let m = only_message(&u);
    assert!(!m.reject);
    assert_eq!(m.log_index, Index(5));
    assert_eq!(u.entries, vec![ent(5, 3)]);
}

/// Raft §5.3: if an existing entry conflicts with a new one (same index,
/// different term), the follower deletes it and all that follow it.
#[test]
fn conflicting_uncommitted_tail_is_truncated() {
    let mut f = replica(cfg(2), &[1, 1, 1, 2, 2], 2, 3);
    f.step(append(1, 2, 3, (3, 1), vec![ent(4, 3)], 3));
    let u = cycle(&mut f);
    assert_eq!(u.entries, vec![ent(4, 3)]);
    assert!(!only_message(&u).reject);
    assert_eq!(f.log().last_index(), Index(4));
    assert_eq!(f.log().term(Index(4)), Ok(Term(3)));
    assert_eq!(
        f.log().reader().last_index(),
        Index(4),
        "durable log truncated"
    );
}

/// Raft §5.3: an append whose entries are all already present truncates
/// nothing, so a duplicated, reordered or stale append never removes
/// entries; one older than the commit index is answered with the commit
/// index and never touches committed entries.
#[test]
fn stale_duplicated_or_reordered_append_truncates_nothing() {
    let mut f = replica(cfg(2), &[1, 1, 1], 2, 3);
    let a = append(1, 2, 2, (3, 1), vec![ent(4, 2), ent(5, 2)], 3);
    let b = append(1, 2, 2, (5, 2), vec![ent(6, 2)], 3);
    // b overtakes a: refused, as its previous entry is missing.
    f.step(b.clone());
    assert!(only_message(&cycle(&mut f)).reject);
    f.step(a.clone());
    assert_eq!(only_message(&cycle(&mut f)).log_index, Index(5));
    f.step(b);
    assert_eq!(only_message(&cycle(&mut f)).log_index, Index(6));
    // a again, and an even older, shorter append.
    f.step(a);
    let u = cycle(&mut f);
    assert!(u.entries.is_empty(), "nothing rewritten");
    assert_eq!(only_message(&u).log_index, Index(5));
    f.step(append(1, 2, 2, (3, 1), vec![ent(4, 2)], 3));
    cycle(&mut f);
    assert_eq!(f.log().last_index(), Index(6), "tail kept");

    f.step(heartbeat(1, 2, 2, 6));
    cycle(&mut f);
    assert_eq!(f.log().committed(), Index(6));
    // A stale append below the commit index, even one that disagrees.
    f.step(append(1, 2, 2, (2, 1), vec![ent(3, 2)], 2));
    let m = only_message(&cycle(&mut f));
    assert_eq!((m.reject, m.log_index), (false, Index(6)));
    assert_eq!(
        f.log().term(Index(3)),
        Ok(Term(1)),
        "committed entry intact"
    );
    assert_eq!(f.log().last_index(), Index(6));
}

/// Raft §5.3 (the optimization at the end of the section): a rejection
/// carries the conflicting term, so the leader skips a whole term per
/// round trip: probes are bounded by the number of diverging terms, not
/// the number of diverging entries.
#[test]
fn fast_backtracking_probes_once_per_term() {
    let mut c = cluster(3, opts());
    // Logs left behind by earlier leaders (all share the bootstrap entries 1..=3):
    // 1: 4..=30 term 2, 31..=53 term 4; 2: nothing more; 3: 4..=30 term 2, 31..=103 term 3.
    let leader_tail: Vec<u64> = (4..=53).map(|i| if i <= 30 { 2 } else { 4 }).collect();
    let stale_tail: Vec<u64> = (4..=103).map(|i| if i <= 30 { 2 } else { 3 }).collect();
    c.raft(1)
        .log_reader_mut()
        .append(&ents_from(4, &leader_tail));
    c.raft(3)
        .log_reader_mut()
        .append(&ents_from(4, &stale_tail));
    c.node_mut(1).hard_state.term = Term(4);
    c.node_mut(3).hard_state.term = Term(3);
    for id in 1..=3 {
        c.restart(r(id));
    }
    c.stabilize();
    c.raft(1).campaign();
    let rejections = [Cell::new(0), Cell::new(0), Cell::new(0), Cell::new(0)];
    pump(&mut c, |_, m| {
        if m.msg_type == MessageType::ReplicateResp && m.reject {
            let n = &rejections[m.from.0 as usize];
            n.set(n.get() + 1);
        }
    });
    assert!(c.raft(1).is_leader());
    for id in [2, 3] {
        assert_eq!(last_index(&c, id), Index(54));
        assert_eq!(c.node(id).raft.log().term(Index(31)), Ok(Term(4)));
        assert_eq!(committed(&c, id), Index(54));
    }
    assert_eq!(rejections[2].get(), 1, "a short log is found in one probe");
    assert_eq!(
        rejections[3].get(),
        1,
        "73 diverging entries of one term: one probe"
    );
}

/// Raft §5.3 flow control: while the leader does not know where a
/// follower's log matches (probe state) it sends one append at a time and
/// waits for the answer; once it matches, it pipelines.
#[test]
fn probe_state_sends_one_append_at_a_time() {
    let mut c = cluster(3, opts());
    elect_unsettled(&mut c, 1);
    assert_eq!(c.raft(1).progress()[&r(3)].state, ProgressState::Probe);
    for i in 0..3 {
        propose(&mut c, 1, &format!("p{i}"));
        c.process(r(1));
    }
    let to3 = queued(&c, MessageType::Replicate, 1, 3);
    assert_eq!(to3.len(), 1, "one probe in flight: {to3:?}");
    assert_eq!(to3[0].entries.len(), 1);

    deliver_one(&mut c, |m| {
        m.msg_type == MessageType::Replicate && m.to == r(3)
    });
    c.process(r(3));
    deliver_one(&mut c, |m| {
        m.msg_type == MessageType::ReplicateResp && m.from == r(3)
    });
    assert_eq!(c.raft(1).progress()[&r(3)].state, ProgressState::Replicate);
    c.process(r(1));
    let to3 = queued(&c, MessageType::Replicate, 1, 3);
    let sent: Vec<Index> = to3
        .iter()
        .flat_map(|m| m.entries.iter().map(|e| e.index))
        .collect();
    assert_eq!(sent, vec![Index(5), Index(6), Index(7)]);
}

/// Raft §5.3 flow control: in replicate state the leader pipelines appends
/// without waiting, up to the in-flight window, then stops until
/// acknowledgements free the window.
#[test]
fn replicate_state_pipelines_up_to_inflight_window() {
    let mut c = cluster(
        3,
        ClusterOptions {
            max_inflight_msgs: 3,
            ..opts()
        },
    );
    elect(&mut c, 1);
    for i in 0..5 {
        propose(&mut c, 1, &format!("p{i}"));
        c.process(r(1));
    }
    let to2 = queued(&c, MessageType::Replicate, 1, 2);
    assert_eq!(to2.len(), 3, "window of three messages: {to2:?}");
    assert!(c.raft(1).progress()[&r(2)].inflights.full());

    deliver_one(&mut c, |m| {
        m.msg_type == MessageType::Replicate && m.to == r(2)
    });
    c.process(r(2));
    deliver_one(&mut c, |m| {
        m.msg_type == MessageType::ReplicateResp && m.from == r(2)
    });
    c.process(r(1));
    let to2 = queued(&c, MessageType::Replicate, 1, 2);
    assert_eq!(to2.len(), 3, "one acknowledgement frees one slot");
    let last: Vec<Index> = to2[2].entries.iter().map(|e| e.index).collect();
    assert_eq!(
        last,
        vec![Index(8), Index(9)],
        "the rest goes in the freed slot"
    );
    c.stabilize();
    assert_eq!(committed(&c, 2), Index(9));
}

/// Raft §5.3 flow control: the in-flight window is also bounded in bytes.
#[test]
fn inflight_window_is_bounded_in_bytes() {
    let entry_bytes = Cluster::entry("x").size_bytes();
    let c = RaftConfig {
        max_inflight_bytes: 2 * entry_bytes,
        ..cfg(1)
    };
    let mut l = replica(c, &[1, 1, 1], 1, 3);
    make_leader(&mut l, &[2]);
    l.step(Message {
        log_index: Index(4),
        ..msg(MessageType::ReplicateResp, 2, 1, 2)
    });
    cycle(&mut l);
    let mut sent = 0;
    for _ in 0..5 {
        l.propose(vec![Cluster::entry("x")]).unwrap();
        sent += all_messages(&cycle(&mut l))
            .iter()
            .filter(|m| m.msg_type == MessageType::Replicate && m.to == r(2))
            .count();
    }
    assert_eq!(sent, 2, "two entries' bytes fill the window");
    assert!(l.progress()[&r(2)].inflights.full());
}

/// Raft §5.3: responses that arrive late or out of order are ignored: a
/// rejection of an index the follower is known to match does not move the
/// leader back, and an old acknowledgement does not lower `match_index`.
#[test]
fn stale_append_responses_are_ignored() {
    let mut c = cluster(3, opts());
    elect(&mut c, 1);
    for i in 0..3 {
        propose(&mut c, 1, &format!("p{i}"));
    }
    c.stabilize();
    let before = c.raft(1).progress()[&r(2)].clone();
    assert_eq!(
        (before.state, before.match_index),
        (ProgressState::Replicate, Index(7))
    );
    c.raft(1).step(Message {
        log_index: Index(5),
        reject: true,
        hint: Index(4),
        hint_term: Term(2),
        ..msg(MessageType::ReplicateResp, 2, 1, 2)
    });
    c.raft(1).step(Message {
        log_index: Index(4),
        ..msg(MessageType::ReplicateResp, 2, 1, 2)
    });
    let after = &c.raft(1).progress()[&r(2)];
    assert_eq!(after.state, ProgressState::Replicate);
    assert_eq!(
        (after.match_index, after.next_index),
        (before.match_index, before.next_index)
    );
    c.process(r(1));
    assert!(
        queued(&c, MessageType::Replicate, 1, 2).is_empty(),
        "nothing resent"
    );
}

/// Raft §5.3 (batching): an append carries at most `max_append_bytes` of
/// entries, except that a single larger entry is still sent alone.
#[test]
fn append_messages_respect_byte_limit() {
    let limit = 2 * (ENTRY_OVERHEAD_BYTES + 100) + 10;
    let mut c = cluster(
        3,
        ClusterOptions {
            max_append_bytes: limit,
            ..opts()
        },
    );
    elect(&mut c, 1);
    let batch: Vec<Entry> = (0..10).map(|_| Cluster::entry(&"x".repeat(100))).collect();
    c.raft(1).propose(batch).unwrap();
    c.process(r(1));
    let to2 = queued(&c, MessageType::Replicate, 1, 2);
    let sizes: Vec<usize> = to2.iter().map(|m| m.entries.len()).collect();
    assert_eq!(sizes, vec![2; 5]);
    for m in &to2 {
        assert!(longship_raft::entries_size(&m.entries) <= limit);
    }
    c.stabilize();

    let big = Cluster::entry(&"y".repeat(1000));
    c.raft(1)
        .propose(vec![big, Cluster::entry("small")])
        .unwrap();
    c.process(r(1));
    let sizes: Vec<usize> = queued(&c, MessageType::Replicate, 1, 2)
        .iter()
        .map(|m| m.entries.len())
        .collect();
    assert_eq!(sizes, vec![1, 1]);
}

/// Raft §5.3: the leader retries AppendEntries until every follower stores
/// every entry. A follower whose appends were lost (no transport error
/// reported) catches up on the next heartbeat round, without new proposals.
#[test]
fn lost_appends_are_resent_after_heartbeat() {
    let mut c = cluster(3, opts());
    elect(&mut c, 1);
    c.isolate(3);
    propose(&mut c, 1, "lost");
    c.stabilize();
    assert_eq!(committed(&c, 1), Index(5));
    assert_eq!(last_index(&c, 3), Index(4));
    c.heal();
    c.stabilize();
    assert_eq!(last_index(&c, 3), Index(4), "nothing new to send");
    tick_all(&mut c, 1);
    assert_eq!(last_index(&c, 3), Index(5));
    assert_eq!(committed(&c, 3), Index(5));
}

/// Raft §5.3, Figure 2 (AppendEntries rule 5): a follower never commits
/// beyond what it is known to match; heartbeats carry the commit index
/// capped at the follower's match index.
#[test]
fn heartbeat_commit_is_capped_at_follower_match() {
    let mut c = cluster(3, opts());
    elect_unsettled(&mut c, 1);
    c.drop_matching(|m| m.to == r(3));
    c.stabilize();
    assert_eq!(committed(&c, 1), Index(4));
    c.tick(1);
    c.process(r(1));
    let hb3 = &queued(&c, MessageType::Heartbeat, 1, 3)[0];
    let hb2 = &queued(&c, MessageType::Heartbeat, 1, 2)[0];
    assert_eq!(hb2.commit, Index(4));
    assert_eq!(hb3.commit, Index(0), "3 matches nothing yet");
}

/// An append that only carries a new commit index to a follower in
/// pipelined replication (`COMMIT_ONLY`) is not answered when it matches:
/// the answer would tell the leader nothing. One that does not match is
/// answered, so the leader backs off; an empty probe is always answered.
#[test]
fn commit_only_appends_are_answered_only_when_refused() {
    use longship_raft::COMMIT_ONLY;
    let mut f = replica(cfg(2), &[1, 1, 1, 2], 2, 3);
    let mut m = append(1, 2, 2, (4, 2), vec![], 4);
    m.context = COMMIT_ONLY;
    f.step(m);
    let u = cycle(&mut f);
    assert!(all_messages(&u).is_empty(), "{:?}", all_messages(&u));
    assert_eq!(f.log().committed(), Index(4), "the commit index is taken");
    // Not matching: answered with a rejection.
    let mut m = append(1, 2, 2, (6, 2), vec![], 4);
    m.context = COMMIT_ONLY;
    f.step(m);
    assert!(only_message(&cycle(&mut f)).reject);
    // A probe (no flag) is answered.
    f.step(append(1, 2, 2, (4, 2), vec![], 4));
    let m = only_message(&cycle(&mut f));
    assert!(!m.reject);
    assert_eq!(m.log_index, Index(4));
}

/// The leader flags an empty append as `COMMIT_ONLY` only to a follower in
/// pipelined replication; a probe carries no flag.
#[test]
fn leader_flags_commit_only_appends_in_pipelined_replication_only() {
    use longship_raft::{COMMIT_ONLY, MessageType};
    let mut c = cluster(3, opts());
    elect(&mut c, 1);
    propose(&mut c, 1, "x");
    let mut seen_flagged = false;
    pump(&mut c, |_, m| {
        if m.msg_type == MessageType::Replicate && m.context == COMMIT_ONLY {
            assert!(m.entries.is_empty(), "flagged append with entries: {m:?}");
            seen_flagged = true;
        }
    });
    assert!(
        seen_flagged,
        "the commit of x reached the followers flagged"
    );
    for id in 1..=3 {
        assert_eq!(committed(&c, id), last_index(&c, 1));
    }
}

/// The answers to a write's appends are lost and nothing more is proposed:
/// the empty append a heartbeat answer prompts is a question (the follower's
/// match lags its previous entry), so it is answered, not flagged
/// `COMMIT_ONLY`, and the write commits. Flagged, an idle shard never
/// committed it (the master's simulator found such a shard).
#[test]
fn lost_answers_are_asked_again_and_the_write_commits() {
    use longship_raft::{COMMIT_ONLY, MessageType};
    let mut c = cluster(3, opts());
    elect(&mut c, 1);
    propose(&mut c, 1, "x");
    c.process_all();
    // The appends arrive; every answer to them is lost.
    deliver_one(&mut c, |m| {
        m.msg_type == MessageType::Replicate && m.to == r(2)
    });
    deliver_one(&mut c, |m| {
        m.msg_type == MessageType::Replicate && m.to == r(3)
    });
    c.process_all();
    let lost = c.drop_matching(|m| m.msg_type == MessageType::ReplicateResp);
    assert_eq!(lost, 2);
    let last = last_index(&c, 1);
    assert!(committed(&c, 1) < last);
    // Heartbeats: their answers make the leader ask again.
    let mut flagged_questions = 0;
    for _ in 0..20 {
        c.tick(1);
        pump(&mut c, |c, m| {
            if m.msg_type == MessageType::Replicate
                && m.context == COMMIT_ONLY
                && c.node(m.to.0).raft.log().last_index() >= m.log_index
                && committed(c, 1) < last
            {
                flagged_questions += 1;
            }
        });
        if committed(&c, 1) == last {
            break;
        }
    }
    assert_eq!(committed(&c, 1), last, "the write never committed");
    assert_eq!(flagged_questions, 0);
}
