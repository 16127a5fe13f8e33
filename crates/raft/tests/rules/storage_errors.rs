//! A storage read error fails only its replica (DESIGN §2 and issue 13:
//! faults stay where they happen). The core never panics on one: the read
//! fails, the error is kept in `Raft::storage_error`, and the core stops
//! acting (no ticks, no steps, no campaign, no vote, nothing to apply), so
//! the engine can fail that replica while the step worker goes on driving
//! every other shard.

use std::rc::Rc;

use crate::support::*;
use longship_raft::LogError;

/// A durable log whose reads fail while `fail` is set.
struct FaultyLog {
    log: MemLog,
    fail: Rc<Cell<bool>>,
}

impl FaultyLog {
    fn check(&self) -> Result<(), LogError> {
        if self.fail.get() {
            Err(LogError::Storage("injected read error".to_string()))
        } else {
            Ok(())
        }
    }
}

impl LogReader for FaultyLog {
    fn first_index(&self) -> Index {
        self.log.first_index()
    }
    fn last_index(&self) -> Index {
        self.log.last_index()
    }
    fn term(&self, index: Index) -> Result<Term, LogError> {
        self.check()?;
        self.log.term(index)
    }
    fn entries(&self, low: Index, high: Index, max_bytes: u64) -> Result<Vec<Entry>, LogError> {
        self.check()?;
        self.log.entries(low, high, max_bytes)
    }
    fn snapshot(&self) -> SnapshotMeta {
        self.log.snapshot()
    }
}

/// A voter of {1, 2, 3} over a faulty durable log of `terms`, at `term`,
/// with `commit` committed and nothing applied.
fn faulty_replica(
    id: u64,
    terms: &[u64],
    term: u64,
    commit: u64,
) -> (Raft<FaultyLog>, Rc<Cell<bool>>) {
    let fail = Rc::new(Cell::new(false));
    let mut log = MemLog::new();
    log.append(&ents_from(1, terms));
    let reader = FaultyLog {
        log,
        fail: fail.clone(),
    };
    let hs = HardState {
        term: Term(term),
        vote: ReplicaId::NONE,
        commit: Index(commit),
    };
    let raft = Raft::new(cfg(id), reader, hs, voters(&[1, 2, 3]), Index(0)).expect("valid config");
    (raft, fail)
}

/// Checks that `raft` is failed with the injected error and inert: ticks
/// and messages change nothing and produce nothing.
fn assert_failed_and_inert(raft: &mut Raft<FaultyLog>) {
    match raft.storage_error() {
        Some(LogError::Storage(what)) => assert!(what.contains("injected"), "{what}"),
        other => panic!("no storage error kept: {other:?}"),
    }
    let status = raft.status();
    for _ in 0..3 * ELECTION {
        raft.tick();
    }
    raft.step(vote_request(3, raft.id().0, raft.term().0 + 1, (100, 100)));
    assert_eq!(raft.status(), status, "a failed replica acted");
    if raft.has_update() {
        let u = raft.get_update();
        assert!(u.committed_entries.is_empty());
        raft.advance(&u);
    }
    assert!(
        !raft.has_update(),
        "a failed replica keeps producing updates"
    );
}

/// DESIGN §2 (an entry is applied only after it was read back committed):
/// committed entries the storage cannot read are not handed out, and the
/// replica fails instead of panicking in `get_update`.
#[test]
fn unreadable_committed_entries_fail_the_replica() {
    let (mut f, fail) = faulty_replica(2, &[1, 1, 1], 1, 3);
    fail.set(true);
    let u = f.get_update();
    assert!(u.committed_entries.is_empty());
    f.advance(&u);
    assert_eq!(f.log().applying(), Index(0));
    assert_failed_and_inert(&mut f);
}

/// Raft §5.3: a leader that cannot read the entries a follower needs
/// sends nothing and fails (it stops its heartbeats, so the shard elects
/// another leader) instead of panicking.
#[test]
fn leader_that_cannot_read_its_log_fails() {
    let (mut l, fail) = faulty_replica(1, &[1, 1, 1], 1, 3);
    l.campaign();
    let u = l.get_update();
    l.log_reader_mut().log.append(&u.entries);
    l.advance(&u);
    let term = l.term().0;
    l.step(msg(MessageType::RequestVoteResp, 2, 1, term));
    assert!(l.is_leader());
    let u = l.get_update();
    l.log_reader_mut().log.append(&u.entries);
    l.advance(&u);
    fail.set(true);
    // Follower 2 is far behind: the leader must read its durable entries.
    l.step(Message {
        reject: true,
        log_index: Index(3),
        hint: Index(0),
        ..msg(MessageType::ReplicateResp, 2, 1, term)
    });
    assert_failed_and_inert(&mut l);
}

/// Raft §5.4.1: a replica that cannot read its last entry's term cannot
/// tell whether a candidate is up to date: it grants no vote, starts no
/// campaign, and fails.
#[test]
fn unreadable_last_term_grants_no_vote() {
    let (mut f, fail) = faulty_replica(2, &[1, 1, 1], 1, 0);
    fail.set(true);
    f.step(vote_request(3, 2, 2, (1, 1)));
    let u = f.get_update();
    let answers: Vec<Message> = all_messages(&u);
    assert!(
        answers.iter().all(|m| m.reject),
        "a vote granted on an unreadable log: {answers:?}"
    );
    f.advance(&u);
    f.campaign();
    assert_eq!(f.role(), Role::Follower);
    assert_failed_and_inert(&mut f);
}
