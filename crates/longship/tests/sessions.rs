//! Client sessions (thesis §6.3) through the public API on three NodeHosts:
//! registration, at-most-once application of retried proposals, series ids,
//! eviction of responded-to results, closing, the bounded session table and
//! the no-op session.

mod common;

use std::time::{Duration, Instant};

use common::*;
use longship::{Config, Error, NodeHost, Session, ShardId, Start};

const SHARD: u64 = 1;

/// Polls `f` until it holds; panics with `what` after `within`.
fn wait_for(what: &str, within: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The number of commands the Kv state machine applied, read linearizably.
fn count(nh: &NodeHost, shard: u64) -> u64 {
    let b = retry(|| nh.sync_read(ShardId(shard), b"count", TIMEOUT));
    String::from_utf8(b).unwrap().parse().unwrap()
}

fn cluster(cfg: impl Fn(u64) -> Config) -> (TestCluster, u64) {
    let c = TestCluster::new(3);
    c.start_shard_with(&[1, 2, 3], cfg);
    let leader = c.wait_leader(SHARD);
    (c, leader)
}

fn get_session(nh: &NodeHost) -> Session {
    retry(|| nh.sync_get_session(ShardId(SHARD), TIMEOUT))
}

#[test]
fn registered_session_proposes_and_closed_session_is_refused() {
    let (c, leader) = cluster(|i| config(SHARD, i));
    let nh = c.nh(leader);
    let mut s = get_session(nh);
    assert!(!s.is_noop());
    assert_eq!(s.shard_id, ShardId(SHARD));
    assert_ne!(s.client_id, 0);
    assert_eq!(s.series_id, 1, "a new session starts at series 1");

    let r = retry(|| nh.sync_propose(&mut s, b"set a 1".to_vec(), TIMEOUT));
    assert_eq!(r.value, 1);
    let r = retry(|| nh.sync_propose(&mut s, b"set b 2".to_vec(), TIMEOUT));
    assert_eq!(r.value, 2);
    assert_eq!((s.series_id, s.responded_to), (3, 2));

    retry(|| nh.sync_close_session(&mut s, TIMEOUT));
    let err = nh
        .propose(&s, b"set c 3".to_vec(), TIMEOUT)
        .unwrap()
        .wait()
        .unwrap_err();
    assert!(matches!(err, Error::InvalidSession), "{err}");
    assert_eq!(count(nh, SHARD), 2, "the refused proposal changed nothing");
    assert_eq!(
        nh.sync_read(ShardId(SHARD), b"get c", TIMEOUT).unwrap(),
        b""
    );

    // Two sessions of one host are distinct clients.
    let s1 = get_session(nh);
    let s2 = get_session(nh);
    assert_ne!(s1.client_id, s2.client_id);
}

#[test]
fn session_of_another_shard_is_refused() {
    let c = TestCluster::new(3);
    c.start_shard(1, &[1, 2, 3]);
    c.start_shard(2, &[1, 2, 3]);
    let leader = c.wait_leader(1);
    let s = retry(|| c.nh(leader).sync_get_session(ShardId(1), TIMEOUT));
    // A session of shard 1 used on shard 2 (same fields, other shard id).
    let wrong = Session {
        shard_id: ShardId(2),
        ..s.clone()
    };
    let err = retry_invalid(|| c.nh(leader).propose(&wrong, b"x".to_vec(), TIMEOUT)?.wait());
    assert!(matches!(err, Error::InvalidSession), "{err}");
    assert_eq!(count(c.nh(leader), 2), 0);
}

#[test]
fn retried_proposal_is_applied_once_and_returns_the_first_result() {
    let (c, leader) = cluster(|i| config(SHARD, i));
    let nh = c.nh(leader);
    let mut s = get_session(nh);

    let first = retry(|| nh.propose(&s, b"set k first".to_vec(), TIMEOUT)?.wait());
    assert_eq!(first.value, 1);
    // Retry with the same series id (no proposal_completed), even with a
    // different payload: the session table answers with the first result.
    for _ in 0..3 {
        let again = retry(|| nh.propose(&s, b"set k second".to_vec(), TIMEOUT)?.wait());
        assert_eq!(again, first);
    }
    assert_eq!(count(nh, SHARD), 1, "the retries were not applied");
    assert_eq!(
        nh.sync_read(ShardId(SHARD), b"get k", TIMEOUT).unwrap(),
        b"first"
    );
    // Every replica applied it exactly once.
    for h in 1..=3 {
        wait_for("replica caught up", TIMEOUT, || {
            c.nh(h).stale_read(ShardId(SHARD), b"count").unwrap() == b"1"
        });
    }

    // Series ids advance only on completion.
    let before = s.clone();
    let big = vec![0u8; nh.config().max_proposal_bytes + 1];
    assert!(matches!(
        nh.propose(&s, big, TIMEOUT),
        Err(Error::PayloadTooBig { .. })
    ));
    assert_eq!(s, before, "a failed proposal does not advance the session");
    s.proposal_completed();
    assert_eq!(
        (s.series_id, s.responded_to),
        (before.series_id + 1, before.series_id)
    );

    let next = retry(|| nh.sync_propose(&mut s, b"set k third".to_vec(), TIMEOUT));
    assert_eq!(next.value, 2);
    assert_eq!(s.series_id, before.series_id + 2);
    assert_eq!(count(nh, SHARD), 2);
}

#[test]
fn responded_to_results_are_evicted() {
    let (c, leader) = cluster(|i| config(SHARD, i));
    let nh = c.nh(leader);
    let mut s = get_session(nh);
    let old = s.clone();
    let r1 = retry(|| nh.sync_propose(&mut s, b"one".to_vec(), TIMEOUT));
    assert_eq!(r1.value, 1);
    // Before the client acknowledged series 1, a retry of it is a duplicate.
    let dup = retry(|| nh.propose(&old, b"one".to_vec(), TIMEOUT)?.wait());
    assert_eq!(dup, r1);
    // The next proposal says "responded to 1": series 1's result is evicted,
    // and a late retry of series 1 is refused instead of applied again.
    let r2 = retry(|| nh.sync_propose(&mut s, b"two".to_vec(), TIMEOUT));
    assert_eq!(r2.value, 2);
    let late = nh
        .propose(&old, b"one".to_vec(), TIMEOUT)
        .unwrap()
        .wait()
        .unwrap_err();
    assert!(matches!(late, Error::InvalidSession), "{late}");
    // So is a retry of series 2 once acknowledged.
    let acked = Session {
        series_id: 2,
        responded_to: 2,
        ..s.clone()
    };
    let late = nh
        .propose(&acked, b"two".to_vec(), TIMEOUT)
        .unwrap()
        .wait()
        .unwrap_err();
    assert!(matches!(late, Error::InvalidSession), "{late}");
    assert_eq!(count(nh, SHARD), 2);
    // The session itself is still good.
    let r3 = retry(|| nh.sync_propose(&mut s, b"three".to_vec(), TIMEOUT));
    assert_eq!(r3.value, 3);
}

#[test]
fn session_table_is_bounded_and_evicts_the_least_recently_used() {
    let (c, leader) = cluster(|i| Config {
        max_sessions: 2,
        ..config(SHARD, i)
    });
    let nh = c.nh(leader);
    let mut a = get_session(nh);
    let mut b = get_session(nh);
    retry(|| nh.sync_propose(&mut b, b"b1".to_vec(), TIMEOUT));
    retry(|| nh.sync_propose(&mut a, b"a1".to_vec(), TIMEOUT));
    // `b` is now the least recently used: registering a third evicts it.
    let mut third = get_session(nh);
    let err = nh
        .propose(&b, b"b2".to_vec(), TIMEOUT)
        .unwrap()
        .wait()
        .unwrap_err();
    assert!(matches!(err, Error::InvalidSession), "{err}");
    assert_eq!(
        retry(|| nh.sync_propose(&mut a, b"a2".to_vec(), TIMEOUT)).value,
        3
    );
    assert_eq!(
        retry(|| nh.sync_propose(&mut third, b"t1".to_vec(), TIMEOUT)).value,
        4
    );
    assert_eq!(count(nh, SHARD), 4);
    // The eviction is replicated: a follower refuses `b` as well.
    let follower = (1..=3).find(|&h| h != leader).unwrap();
    let err = retry_invalid(|| c.nh(follower).propose(&b, b"b2".to_vec(), TIMEOUT)?.wait());
    assert!(matches!(err, Error::InvalidSession), "{err}");
    assert_eq!(count(nh, SHARD), 4);
}

/// Retries while the error is temporary; returns the permanent error.
fn retry_invalid<T: std::fmt::Debug>(mut f: impl FnMut() -> Result<T, Error>) -> Error {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match f() {
            Ok(v) => panic!("expected an error, got {v:?}"),
            Err(e) if e.is_temporary() && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10))
            }
            Err(e) => return e,
        }
    }
}

#[test]
fn noop_session_is_not_deduplicated() {
    let (c, leader) = cluster(|i| config(SHARD, i));
    let nh = c.nh(leader);
    let mut s = nh.get_noop_session(ShardId(SHARD));
    assert!(s.is_noop());
    let a = retry(|| nh.propose(&s, b"same".to_vec(), TIMEOUT)?.wait());
    let b = retry(|| nh.propose(&s, b"same".to_vec(), TIMEOUT)?.wait());
    assert_eq!((a.value, b.value), (1, 2));
    // Completing does nothing to a no-op session, and closing it is a no-op.
    let before = s.clone();
    s.proposal_completed();
    assert_eq!(s, before);
    nh.sync_close_session(&mut s, TIMEOUT).unwrap();
    assert_eq!(
        retry(|| nh.sync_propose(&mut s, b"same".to_vec(), TIMEOUT)).value,
        3
    );
    assert_eq!(count(nh, SHARD), 3);
}

#[test]
fn follower_registers_and_proposes_through_the_leader() {
    let (c, leader) = cluster(|i| config(SHARD, i));
    let follower = (1..=3).find(|&h| h != leader).unwrap();
    let nh = c.nh(follower);
    let mut s = get_session(nh);
    let r1 = retry(|| nh.sync_propose(&mut s, b"set f 1".to_vec(), TIMEOUT));
    assert_eq!(r1.value, 1);
    // A retry on the follower is de-duplicated too.
    let old = Session {
        series_id: s.series_id - 1,
        responded_to: s.responded_to - 1,
        ..s.clone()
    };
    let dup = retry(|| nh.propose(&old, b"set f 1".to_vec(), TIMEOUT)?.wait());
    assert_eq!(dup, r1);
    let r2 = retry(|| nh.sync_propose(&mut s, b"set g 2".to_vec(), TIMEOUT));
    assert_eq!(r2.value, 2);
    // The same session works on the leader's host: sessions are shard state.
    let r3 = retry(|| {
        c.nh(leader)
            .sync_propose(&mut s, b"set h 3".to_vec(), TIMEOUT)
    });
    assert_eq!(r3.value, 3);
    for h in 1..=3 {
        assert_eq!(count(c.nh(h), SHARD), 3);
        assert_eq!(
            c.nh(h)
                .sync_read(ShardId(SHARD), b"get g", TIMEOUT)
                .unwrap(),
            b"2"
        );
    }
    retry(|| nh.sync_close_session(&mut s, TIMEOUT));
    let err = retry_invalid(|| c.nh(leader).propose(&s, b"x".to_vec(), TIMEOUT)?.wait());
    assert!(matches!(err, Error::InvalidSession), "{err}");
}

#[test]
fn retry_after_timeout_is_applied_once() {
    // Without check quorum the isolated leader keeps its role, so the
    // proposal is neither committed nor dropped: it times out.
    let (c, leader) = cluster(|i| Config {
        check_quorum: false,
        ..config(SHARD, i)
    });
    let mut s = get_session(c.nh(leader));
    retry(|| {
        c.nh(leader)
            .sync_propose(&mut s, b"set a 1".to_vec(), TIMEOUT)
    });
    for h in 1..=3 {
        if h != leader {
            c.net.cut(&addr(leader), &addr(h));
            c.net.cut(&addr(h), &addr(leader));
        }
    }
    let err = c
        .nh(leader)
        .propose(&s, b"set b 2".to_vec(), Duration::from_millis(200))
        .unwrap()
        .wait()
        .unwrap_err();
    assert!(matches!(err, Error::Timeout), "{err}");
    assert_eq!(
        s.series_id, 2,
        "a timed out proposal does not advance the session"
    );
    c.net.heal();
    // Retry the same series id until it completes: whether the first
    // attempt was committed or lost with the old leader, it applies once.
    let mut at = leader;
    let deadline = Instant::now() + Duration::from_secs(20);
    let r = loop {
        match c
            .nh(at)
            .propose(&s, b"set b 2".to_vec(), Duration::from_millis(500))
        {
            Ok(h) => match h.wait() {
                Ok(r) => break r,
                Err(e) => assert!(e.is_temporary(), "{e}"),
            },
            Err(e) => assert!(e.is_temporary(), "{e}"),
        }
        assert!(Instant::now() < deadline, "retry never completed");
        at = at % 3 + 1;
    };
    assert_eq!(r.value, 2);
    s.proposal_completed();
    assert_eq!(count(c.nh(at), SHARD), 2);
}

#[test]
fn sessions_survive_snapshot_and_restart() {
    let (mut c, leader) = cluster(|i| config(SHARD, i));
    let follower = (1..=3).find(|&h| h != leader).unwrap();
    let mut s = get_session(c.nh(leader));
    let old = s.clone();
    let r1 = retry(|| {
        c.nh(leader)
            .sync_propose(&mut s, b"set a 1".to_vec(), TIMEOUT)
    });
    wait_for("follower applied", TIMEOUT, || {
        c.nh(follower).stale_read(ShardId(SHARD), b"count").unwrap() == b"1"
    });
    // Snapshot the follower and compact its whole log: after a restart the
    // session table can only come from the snapshot.
    let opt = longship::SnapshotOption {
        compaction_overhead: Some(0),
        ..Default::default()
    };
    let index = c
        .nh(follower)
        .request_snapshot(ShardId(SHARD), opt, TIMEOUT)
        .unwrap()
        .wait()
        .unwrap()
        .index;
    assert!(index.0 > 0);
    let info = c.nh(follower).get_node_host_info();
    let log = info
        .log_info
        .iter()
        .find(|l| l.shard_id == ShardId(SHARD))
        .unwrap();
    assert!(log.first_index > index, "log compacted up to the snapshot");
    c.stop_host(follower);
    c.start_host(follower);
    c.nh(follower)
        .start_replica(
            Start::Restart,
            |_, _| Box::new(Kv::default()),
            config(SHARD, follower),
        )
        .unwrap();
    assert_eq!(count(c.nh(follower), SHARD), 1);
    // A retry of series 1 through the restarted replica is answered from
    // its recovered session table.
    let dup = retry(|| {
        c.nh(follower)
            .propose(&old, b"set a 1".to_vec(), TIMEOUT)?
            .wait()
    });
    assert_eq!(dup, r1);
    let r2 = retry(|| {
        c.nh(follower)
            .sync_propose(&mut s, b"set b 2".to_vec(), TIMEOUT)
    });
    assert_eq!(r2.value, 2);
    assert_eq!(count(c.nh(follower), SHARD), 2);
}
