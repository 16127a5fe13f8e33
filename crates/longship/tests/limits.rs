//! Limits and errors through the public API: payload size, queue and
//! in-memory log bounds, timeouts, unknown and duplicate shards, invalid
//! configurations, directory locking and calls after close.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use longship::{
    Config, Error, Index, NodeHost, NodeHostConfig, ReplicaId, RequestHandle, ShardId, SmResult,
    SnapshotOption, Start,
};
use longship_transport::MemNetwork;

/// Polls `f` until it holds; panics with `what` after `within`.
fn wait_for(what: &str, within: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn host_config(dir: &Path, i: u64) -> NodeHostConfig {
    NodeHostConfig {
        node_host_dir: dir.join(format!("nh{i}")),
        rtt_ms: RTT_MS,
        raft_address: addr(i),
        seed: Some(i),
        ..NodeHostConfig::default()
    }
}

fn build(net: &MemNetwork, cfg: NodeHostConfig) -> longship::Result<NodeHost> {
    let t = Arc::new(net.transport(&cfg.raft_address));
    NodeHost::builder(cfg).transport(t).build()
}

fn one_member() -> BTreeMap<ReplicaId, String> {
    [(ReplicaId(1), addr(1))].into_iter().collect()
}

fn start_kv(nh: &NodeHost, start: Start, cfg: Config) -> longship::Result<()> {
    nh.start_replica(start, |_, _| Box::new(Kv::default()), cfg)
}

/// A threaded NodeHost with a single-replica shard 1 that has elected itself.
fn single(dir: &Path, net: &MemNetwork, f: impl FnOnce(&mut NodeHostConfig)) -> NodeHost {
    let mut cfg = host_config(dir, 1);
    f(&mut cfg);
    let nh = build(net, cfg).unwrap();
    start_kv(&nh, Start::New(one_member()), config(1, 1)).unwrap();
    wait_for("single replica leads", TIMEOUT, || {
        nh.get_leader(ShardId(1))
            .unwrap()
            .is_some_and(|l| l.replica_id == ReplicaId(1))
    });
    nh
}

fn count(nh: &NodeHost, shard: u64) -> u64 {
    let b = retry(|| nh.sync_read(ShardId(shard), b"count", TIMEOUT));
    String::from_utf8(b).unwrap().parse().unwrap()
}

fn propose(nh: &NodeHost, shard: u64, cmd: &str) -> u64 {
    let mut s = nh.get_noop_session(ShardId(shard));
    retry(|| nh.sync_propose(&mut s, cmd.as_bytes().to_vec(), TIMEOUT)).value
}

fn proposals(nh: &NodeHost) -> u64 {
    nh.metrics()
        .proposals
        .load(std::sync::atomic::Ordering::Relaxed)
}

fn expect_err<T>(r: longship::Result<T>) -> Error {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => e,
    }
}

#[test]
fn payload_too_big_is_refused_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let net = MemNetwork::new();
    let nh = single(dir.path(), &net, |c| c.max_proposal_bytes = 64);
    let s = nh.get_noop_session(ShardId(1));
    let before = proposals(&nh);
    let err = expect_err(nh.propose(&s, vec![b'x'; 65], TIMEOUT));
    assert!(
        matches!(err, Error::PayloadTooBig { size: 65, max: 64 }),
        "{err}"
    );
    assert!(!err.is_temporary());
    let user = nh.get_node_user(ShardId(1)).unwrap();
    let err = expect_err(user.propose(&s, vec![b'x'; 1000], TIMEOUT));
    assert!(matches!(err, Error::PayloadTooBig { size: 1000, .. }));
    assert_eq!(proposals(&nh), before, "nothing was queued");
    assert_eq!(count(&nh, 1), 0);
    // At the limit it is accepted.
    let r = retry(|| nh.propose(&s, vec![b'x'; 64], TIMEOUT)?.wait());
    assert_eq!(r.value, 1);
    assert_eq!(count(&nh, 1), 1);
}

#[test]
fn full_proposal_and_read_queues_answer_system_busy() {
    let dir = tempfile::tempdir().unwrap();
    let net = MemNetwork::new();
    let mut cfg = host_config(dir.path(), 1);
    cfg.max_proposal_queue = 2;
    cfg.max_read_queue = 1;
    // Manual mode: nothing drains the queues until we run the workers.
    let nh = NodeHost::builder(cfg)
        .transport(Arc::new(net.transport(&addr(1))))
        .manual()
        .build()
        .unwrap();
    start_kv(&nh, Start::New(one_member()), config(1, 1)).unwrap();
    let s = nh.get_noop_session(ShardId(1));
    let h1 = nh.propose(&s, b"a".to_vec(), TIMEOUT).unwrap();
    let h2 = nh.propose(&s, b"b".to_vec(), TIMEOUT).unwrap();
    let err = expect_err(nh.propose(&s, b"c".to_vec(), TIMEOUT));
    assert!(matches!(err, Error::SystemBusy), "{err}");
    assert!(err.is_temporary());
    let user = nh.get_node_user(ShardId(1)).unwrap();
    assert!(matches!(
        user.propose(&s, b"d".to_vec(), TIMEOUT),
        Err(Error::SystemBusy)
    ));
    let busy = nh
        .metrics()
        .proposals_busy
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(busy, 2);
    let r1 = nh.read_index(ShardId(1), TIMEOUT).unwrap();
    assert!(matches!(
        nh.read_index(ShardId(1), TIMEOUT),
        Err(Error::SystemBusy)
    ));
    assert!(h1.try_result().is_none(), "nothing ran yet");

    // Drive the host by hand: the queued requests are stepped before the
    // replica has elected itself, so they are dropped (a temporary error).
    while nh.run_once() {}
    assert!(matches!(h1.wait(), Err(Error::Dropped { .. })));
    assert!(matches!(h2.wait(), Err(Error::Dropped { .. })));
    assert!(matches!(r1.wait(), Err(Error::Dropped { .. })));
    let mut ticks = 0;
    while nh
        .get_leader(ShardId(1))
        .unwrap()
        .is_none_or(|l| l.replica_id != ReplicaId(1))
    {
        assert!(ticks < 200, "no election after {ticks} ticks");
        nh.tick();
        while nh.run_once() {}
        ticks += 1;
    }
    // The drained queue accepts again and the proposals complete.
    let h1 = nh.propose(&s, b"a".to_vec(), TIMEOUT).unwrap();
    let h2 = nh.propose(&s, b"b".to_vec(), TIMEOUT).unwrap();
    for _ in 0..100 {
        if !nh.run_once() {
            break;
        }
    }
    assert_eq!(h1.wait().unwrap().value, 1);
    assert_eq!(h2.wait().unwrap().value, 2);
    nh.close();
}

#[test]
fn in_memory_log_limit_answers_system_busy() {
    let mut c = TestCluster::new(3);
    let cfg = |i| Config {
        max_uncommitted_bytes: 250,
        check_quorum: false,
        ..config(1, i)
    };
    c.start_shard_with(&[1, 2, 3], cfg);
    let leader = c.wait_leader(1);
    let others: Vec<u64> = (1..=3).filter(|&h| h != leader).collect();
    for &h in &others {
        c.stop_host(h);
    }
    let nh = c.nh(leader);
    let s = nh.get_noop_session(ShardId(1));
    let last_index = || {
        let info = nh.get_node_host_info();
        info.log_info
            .iter()
            .find(|l| l.shard_id == ShardId(1))
            .map(|l| l.last_index)
            .unwrap()
    };
    // Nothing commits without the followers: uncommitted bytes pile up.
    let mut accepted: Vec<RequestHandle<SmResult>> = Vec::new();
    let busy = loop {
        assert!(accepted.len() < 10, "the limit never applied");
        let before = last_index();
        let h = nh.propose(&s, vec![b'p'; 100], TIMEOUT).unwrap();
        let mut outcome = None;
        wait_for("proposal stepped", TIMEOUT, || {
            outcome = h.try_result();
            outcome.is_some() || last_index() > before
        });
        match outcome {
            Some(r) => break r,
            None => accepted.push(h),
        }
    };
    assert!(matches!(busy, Err(Error::SystemBusy)), "{busy:?}");
    assert_eq!(accepted.len(), 2, "100 + 100 bytes fit in 250, 300 do not");

    // When the followers return, the log commits and proposals go through.
    for &h in &others {
        c.start_host(h);
        start_kv(c.nh(h), Start::Restart, cfg(h)).unwrap();
    }
    // Isolated, the leader kept them uncommitted; now they commit in order.
    for (i, h) in accepted.into_iter().enumerate() {
        assert_eq!(h.wait().unwrap().value, i as u64 + 1);
    }
    let r = retry(|| c.nh(leader).propose(&s, vec![b'p'; 100], TIMEOUT)?.wait());
    assert_eq!(r.value, 3);
}

#[test]
fn error_kinds_say_whether_to_retry() {
    let temporary = [
        Error::SystemBusy,
        Error::Timeout,
        Error::Dropped { leader: None },
        Error::PendingConfigChange,
        // dragonboat's IsTempError: retry on another host.
        Error::ShardClosed,
        Error::Stopped,
    ];
    for e in temporary {
        assert!(e.is_temporary(), "{e}");
    }
    let permanent = [
        Error::ShardNotFound(ShardId(1)),
        Error::ShardAlreadyExists(ShardId(1)),
        Error::InvalidSession,
        Error::TimeoutTooSmall { rtt_ms: 5 },
        Error::PayloadTooBig { size: 2, max: 1 },
        Error::Cancelled,
        Error::Aborted,
        Error::ShardNotStopped(ShardId(1)),
        Error::ReplicaDataRemoved {
            shard_id: ShardId(1),
            replica_id: ReplicaId(3),
        },
        Error::Rejected("no".into()),
        Error::ReplicaRemoved(ReplicaId(3)),
        Error::DirLocked("/x".into()),
        Error::StateMachine("bad".into()),
    ];
    for e in permanent {
        assert!(!e.is_temporary(), "{e}");
    }
}

#[test]
fn timeout_shorter_than_one_rtt_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let net = MemNetwork::new();
    let nh = single(dir.path(), &net, |c| c.rtt_ms = 20);
    let short = Duration::from_millis(19);
    let s = nh.get_noop_session(ShardId(1));
    let is_small = |e: Error| matches!(e, Error::TimeoutTooSmall { rtt_ms: 20 });
    assert!(is_small(expect_err(nh.propose(&s, b"x".to_vec(), short))));
    assert!(is_small(expect_err(nh.read_index(ShardId(1), short))));
    assert!(is_small(nh.sync_read(ShardId(1), b"", short).unwrap_err()));
    assert!(is_small(
        nh.sync_get_session(ShardId(1), short).unwrap_err()
    ));
    assert!(is_small(expect_err(nh.request_snapshot(
        ShardId(1),
        SnapshotOption::default(),
        short
    ))));
    assert!(is_small(expect_err(nh.request_add_replica(
        ShardId(1),
        ReplicaId(2),
        addr(2),
        Index(0),
        short
    ))));
    let user = nh.get_node_user(ShardId(1)).unwrap();
    assert!(is_small(expect_err(user.propose(&s, b"x".to_vec(), short))));
    assert!(is_small(expect_err(user.read_index(short))));
    assert_eq!(proposals(&nh), 0);
    // One RTT is enough to be accepted.
    let h = retry(|| nh.propose(&s, b"x".to_vec(), Duration::from_secs(1)));
    assert_eq!(h.wait().unwrap().value, 1);
    nh.propose(&s, b"y".to_vec(), Duration::from_millis(20))
        .unwrap();
}

#[test]
fn proposal_without_quorum_times_out_no_earlier_than_its_timeout() {
    let mut c = TestCluster::new(3);
    // Without check quorum the isolated leader keeps its role: the proposal
    // enters its log but can never commit.
    c.start_shard_with(&[1, 2, 3], |i| Config {
        check_quorum: false,
        ..config(1, i)
    });
    let leader = c.wait_leader(1);
    retry(|| {
        let mut s = c.nh(leader).get_noop_session(ShardId(1));
        c.nh(leader)
            .sync_propose(&mut s, b"first".to_vec(), TIMEOUT)
    });
    for h in (1..=3).filter(|&h| h != leader) {
        c.stop_host(h);
    }
    let nh = c.nh(leader);
    let timeout = Duration::from_millis(300);
    let s = nh.get_noop_session(ShardId(1));
    let start = Instant::now();
    let err = nh.propose(&s, b"lost".to_vec(), timeout).unwrap().wait();
    let elapsed = start.elapsed();
    assert!(matches!(err, Err(Error::Timeout)), "{err:?}");
    assert!(elapsed >= timeout, "timed out after {elapsed:?}");
    assert!(elapsed < timeout + Duration::from_secs(3), "{elapsed:?}");
    // A linearizable read cannot confirm leadership either.
    let start = Instant::now();
    let err = nh.sync_read(ShardId(1), b"count", timeout).unwrap_err();
    assert!(matches!(err, Error::Timeout), "{err}");
    assert!(start.elapsed() >= timeout);
    // A stale read still answers from the local state machine.
    assert_eq!(nh.stale_read(ShardId(1), b"count").unwrap(), b"1");
}

#[test]
fn unknown_and_duplicate_shards() {
    let c = TestCluster::new(1);
    c.start_shard(1, &[1]);
    let nh = c.nh(1);
    let nf = ShardId(9);
    let is_nf = |e: Error| matches!(e, Error::ShardNotFound(ShardId(9)));
    let s = nh.get_noop_session(nf);
    assert!(is_nf(expect_err(nh.propose(&s, b"x".to_vec(), TIMEOUT))));
    assert!(is_nf(nh.sync_read(nf, b"", TIMEOUT).unwrap_err()));
    assert!(is_nf(expect_err(nh.read_index(nf, TIMEOUT))));
    assert!(is_nf(nh.read_local(nf, b"").unwrap_err()));
    assert!(is_nf(nh.stale_read(nf, b"").unwrap_err()));
    assert!(is_nf(nh.get_leader(nf).unwrap_err()));
    assert!(is_nf(nh.sync_get_session(nf, TIMEOUT).unwrap_err()));
    assert!(is_nf(expect_err(nh.get_node_user(nf))));
    assert!(is_nf(
        nh.sync_get_shard_membership(nf, TIMEOUT).unwrap_err()
    ));
    assert!(is_nf(expect_err(nh.request_snapshot(
        nf,
        SnapshotOption::default(),
        TIMEOUT
    ))));
    assert!(is_nf(expect_err(nh.request_add_replica(
        nf,
        ReplicaId(2),
        addr(2),
        Index(0),
        TIMEOUT
    ))));
    assert!(is_nf(
        nh.request_leader_transfer(nf, ReplicaId(1)).unwrap_err()
    ));
    assert!(is_nf(nh.stop_shard(nf).unwrap_err()));
    assert!(is_nf(nh.stop_replica(nf, ReplicaId(1)).unwrap_err()));
    // Shard 1 runs replica 1, not 2.
    assert!(matches!(
        nh.stop_replica(ShardId(1), ReplicaId(2)),
        Err(Error::ShardNotFound(ShardId(1)))
    ));
    assert!(!nh.has_node_info(nf, ReplicaId(1)));

    // A second replica of a running shard, whatever its id.
    for id in [1, 2] {
        let err =
            start_kv(nh, Start::New(TestCluster::members(&[1, 2])), config(1, id)).unwrap_err();
        assert!(
            matches!(err, Error::ShardAlreadyExists(ShardId(1))),
            "{err}"
        );
        // The state machine factory is not even called.
        let err = nh
            .start_on_disk_replica(
                Start::New(TestCluster::members(&[1])),
                |_, _| unreachable_sm(),
                config(1, id),
            )
            .unwrap_err();
        assert!(matches!(err, Error::ShardAlreadyExists(_)), "{err}");
    }
    assert_eq!(propose(nh, 1, "still fine"), 1);
    // Stopped, the shard is gone; started again, it runs.
    nh.stop_shard(ShardId(1)).unwrap();
    assert!(is_nf_shard1(nh.get_leader(ShardId(1)).unwrap_err()));
    start_kv(nh, Start::Restart, config(1, 1)).unwrap();
    assert_eq!(propose(nh, 1, "again"), 2);
}

fn is_nf_shard1(e: Error) -> bool {
    matches!(e, Error::ShardNotFound(ShardId(1)))
}

fn field_of(e: Error) -> &'static str {
    match e {
        Error::InvalidConfig { field, .. } => field,
        other => panic!("expected InvalidConfig, got {other}"),
    }
}

#[test]
fn invalid_node_host_configs_name_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let net = MemNetwork::new();
    type Edit = fn(&mut NodeHostConfig);
    let cases: &[(&str, Edit)] = &[
        ("node_host_dir", |c| c.node_host_dir = Default::default()),
        ("rtt_ms", |c| c.rtt_ms = 0),
        ("raft_address", |c| c.raft_address = String::new()),
        ("raft_address", |c| c.raft_address = "a".repeat(256)),
        ("step_workers", |c| c.step_workers = 0),
        ("apply_workers", |c| c.apply_workers = 0),
        ("snapshot_workers", |c| c.snapshot_workers = 0),
        ("max_proposal_bytes", |c| c.max_proposal_bytes = 0),
        ("max_proposal_queue", |c| c.max_proposal_queue = 0),
        ("max_read_queue", |c| c.max_read_queue = 0),
        ("max_inbound_queue", |c| c.max_inbound_queue = 0),
        ("max_apply_batch_bytes", |c| c.max_apply_batch_bytes = 0),
    ];
    for (field, edit) in cases {
        let mut cfg = host_config(dir.path(), 1);
        edit(&mut cfg);
        assert_eq!(field_of(cfg.validate().unwrap_err()), *field);
        let t = Arc::new(net.transport(&addr(1)));
        let err = expect_err(NodeHost::builder(cfg).transport(t).build());
        assert_eq!(field_of(err), *field);
    }
    // The transport must be at the configured address.
    let cfg = host_config(dir.path(), 1);
    let t = Arc::new(net.transport(&addr(2)));
    assert_eq!(
        field_of(expect_err(
            NodeHost::builder(cfg.clone()).transport(t).build()
        )),
        "raft_address"
    );
    // None of the refused builds holds the directory.
    let nh = build(&net, cfg).unwrap();
    nh.close();
}

#[test]
fn invalid_replica_configs_name_the_field_and_start_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let net = MemNetwork::new();
    let nh = build(&net, host_config(dir.path(), 1)).unwrap();
    type Edit = fn(&mut Config);
    let cases: &[(&str, Edit)] = &[
        ("shard_id", |c| c.shard_id = ShardId(0)),
        ("replica_id", |c| c.replica_id = ReplicaId(0)),
        ("heartbeat_rtt", |c| c.heartbeat_rtt = 0),
        ("election_rtt", |c| {
            c.heartbeat_rtt = 2;
            c.election_rtt = 4
        }),
        ("election_rtt", |c| c.election_rtt = 1),
        ("is_witness", |c| {
            c.is_witness = true;
            c.is_non_voting = true
        }),
        ("max_sessions", |c| c.max_sessions = 0),
    ];
    for (field, edit) in cases {
        let mut cfg = config(1, 1);
        edit(&mut cfg);
        assert_eq!(field_of(cfg.validate().unwrap_err()), *field);
        assert_eq!(
            field_of(start_kv(&nh, Start::New(one_member()), cfg).unwrap_err()),
            *field
        );
        // Concurrent and on-disk replicas are checked the same way.
        let mut cfg = config(1, 1);
        edit(&mut cfg);
        assert!(matches!(
            nh.start_on_disk_replica(Start::New(one_member()), |_, _| unreachable_sm(), cfg),
            Err(Error::InvalidConfig { .. })
        ));
    }
    // New members must contain this replica, not contain id 0, and have
    // addresses; witnesses and non-voting replicas join.
    let cases: &[(&str, Start, Config)] = &[
        (
            "Start::New",
            Start::New(TestCluster::members(&[2, 3])),
            config(1, 1),
        ),
        (
            "Start::New",
            Start::New([(ReplicaId(0), addr(0)), (ReplicaId(1), addr(1))].into()),
            config(1, 1),
        ),
        (
            "Start::New",
            Start::New([(ReplicaId(1), String::new())].into()),
            config(1, 1),
        ),
        (
            "is_witness",
            Start::New(one_member()),
            Config {
                is_non_voting: true,
                ..config(1, 1)
            },
        ),
    ];
    for (field, start, cfg) in cases {
        let err = nh
            .start_concurrent_replica(
                start.clone(),
                |_, _| panic!("the factory of an invalid replica was called"),
                cfg.clone(),
            )
            .unwrap_err();
        assert_eq!(field_of(err), *field);
    }
    // A restart needs data of the replica on this host.
    let err = start_kv(&nh, Start::Restart, config(1, 1)).unwrap_err();
    assert!(
        matches!(
            err,
            Error::ReplicaHasNoData {
                shard_id: ShardId(1),
                replica_id: ReplicaId(1)
            }
        ),
        "{err}"
    );
    // Nothing was started or written.
    assert!(matches!(
        nh.get_leader(ShardId(1)),
        Err(Error::ShardNotFound(_))
    ));
    assert!(!nh.has_node_info(ShardId(1), ReplicaId(1)));
    assert!(nh.get_node_host_info().shards.is_empty());
    // Membership requests check their arguments too.
    start_kv(&nh, Start::New(one_member()), config(1, 1)).unwrap();
    // A replica with data is restarted, never bootstrapped or joined again
    // (the factory is not called).
    nh.stop_shard(ShardId(1)).unwrap();
    for start in [Start::New(one_member()), Start::Join] {
        let err = nh
            .start_on_disk_replica(start, |_, _| unreachable_sm(), config(1, 1))
            .unwrap_err();
        assert!(
            matches!(
                err,
                Error::ReplicaHasData {
                    shard_id: ShardId(1),
                    replica_id: ReplicaId(1)
                }
            ),
            "{err}"
        );
    }
    start_kv(&nh, Start::Restart, config(1, 1)).unwrap();
    let err =
        expect_err(nh.request_add_replica(ShardId(1), ReplicaId(0), addr(2), Index(0), TIMEOUT));
    assert_eq!(field_of(err), "replica_id");
    let err = expect_err(nh.request_add_replica(ShardId(1), ReplicaId(2), "", Index(0), TIMEOUT));
    assert_eq!(field_of(err), "address");
    assert_eq!(
        field_of(
            nh.request_leader_transfer(ShardId(1), ReplicaId(0))
                .unwrap_err()
        ),
        "target"
    );
}

/// A state machine factory that must never be reached with an invalid config.
fn unreachable_sm() -> Box<dyn longship::OnDiskStateMachine> {
    panic!("the factory of an invalid replica config was called")
}

#[test]
fn two_node_hosts_cannot_share_a_directory() {
    let dir = tempfile::tempdir().unwrap();
    let net = MemNetwork::new();
    let first = build(&net, host_config(dir.path(), 1)).unwrap();
    // Same directory, other address.
    let mut cfg = host_config(dir.path(), 1);
    cfg.raft_address = addr(2);
    let err = expect_err(build(&net, cfg.clone()));
    assert!(matches!(err, Error::DirLocked(_)), "{err}");
    assert!(!err.is_temporary());
    // Also when the path is spelled differently.
    let mut other_spelling = cfg.clone();
    other_spelling.node_host_dir = dir.path().join("nh1").join(".").join("..").join("nh1");
    let err = expect_err(build(&net, other_spelling));
    assert!(matches!(err, Error::DirLocked(_)), "{err}");
    // Released when the first one is gone (to its owner: another address
    // is refused by the directory's owner record, tests/trust.rs).
    drop(first);
    let second = build(&net, host_config(dir.path(), 1)).unwrap();
    second.close();
}

#[test]
fn calls_after_close_return_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let net = MemNetwork::new();
    let nh = single(dir.path(), &net, |_| {});
    let user = nh.get_node_user(ShardId(1)).unwrap();
    let mut s = nh.get_noop_session(ShardId(1));
    assert_eq!(
        retry(|| nh.sync_propose(&mut s, b"x".to_vec(), TIMEOUT)).value,
        1
    );
    nh.close();
    nh.close(); // idempotent
    let stopped = |e: Error| matches!(e, Error::Stopped);
    assert!(stopped(expect_err(nh.propose(&s, b"x".to_vec(), TIMEOUT))));
    assert!(stopped(
        nh.sync_propose(&mut s, b"x".to_vec(), TIMEOUT).unwrap_err()
    ));
    assert!(stopped(nh.sync_read(ShardId(1), b"", TIMEOUT).unwrap_err()));
    assert!(stopped(expect_err(nh.read_index(ShardId(1), TIMEOUT))));
    assert!(stopped(nh.stale_read(ShardId(1), b"").unwrap_err()));
    assert!(stopped(nh.get_leader(ShardId(1)).unwrap_err()));
    assert!(stopped(
        nh.sync_get_session(ShardId(1), TIMEOUT).unwrap_err()
    ));
    assert!(stopped(expect_err(nh.get_node_user(ShardId(1)))));
    assert!(stopped(expect_err(nh.request_snapshot(
        ShardId(1),
        SnapshotOption::default(),
        TIMEOUT
    ))));
    assert!(stopped(
        start_kv(&nh, Start::New(one_member()), config(2, 1)).unwrap_err()
    ));
    assert!(stopped(expect_err(user.propose(
        &s,
        b"x".to_vec(),
        TIMEOUT
    ))));
    assert!(stopped(expect_err(user.read_index(TIMEOUT))));
}

#[test]
fn close_completes_requests_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    let net = MemNetwork::new();
    let nh = NodeHost::builder(host_config(dir.path(), 1))
        .transport(Arc::new(net.transport(&addr(1))))
        .manual()
        .build()
        .unwrap();
    start_kv(&nh, Start::New(one_member()), config(1, 1)).unwrap();
    let s = nh.get_noop_session(ShardId(1));
    let h = nh.propose(&s, b"x".to_vec(), TIMEOUT).unwrap();
    let r = nh.read_index(ShardId(1), TIMEOUT).unwrap();
    nh.close();
    assert!(matches!(h.wait(), Err(Error::ShardClosed)));
    assert!(matches!(r.wait(), Err(Error::ShardClosed)));
}

// Behind a slow state machine, committed entries wait in the log, at most
// `max_apply_batch_bytes` of them queued for it (the apply queue grew
// without bound before). Once the state machine catches up, the apply
// worker tells the core at once instead of at the next tick.
#[test]
fn a_slow_state_machine_holds_committed_entries_in_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let net = MemNetwork::new();
    let mut cfg = host_config(dir.path(), 1);
    cfg.rtt_ms = 200;
    cfg.max_apply_batch_bytes = 2048;
    let nh = build(&net, cfg).unwrap();
    let gate = Arc::new((std::sync::Mutex::new(true), std::sync::Condvar::new()));
    let g = gate.clone();
    let rc = Config {
        election_rtt: 5,
        ..config(1, 1)
    };
    nh.start_replica(
        Start::New(one_member()),
        move |_, _| {
            let g = g.clone();
            Box::new(HookedKv {
                kv: Kv::default(),
                // Updates wait while the gate is closed.
                hook: Arc::new(move |h| {
                    let (open, cv) = &*g;
                    let mut o = open.lock().unwrap();
                    while matches!(h, Hook::Update(_)) && !*o {
                        o = cv.wait(o).unwrap();
                    }
                }),
            })
        },
        rc,
    )
    .unwrap();
    wait_for("single replica leads", Duration::from_secs(20), || {
        nh.get_leader(ShardId(1))
            .unwrap()
            .is_some_and(|l| l.replica_id == ReplicaId(1))
    });
    *gate.0.lock().unwrap() = false;
    // Opens the gate when dropped, also when an assertion fails: closing
    // the host would otherwise wait for the blocked apply worker for ever.
    struct Opener(Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>);
    impl Drop for Opener {
        fn drop(&mut self) {
            *self.0.0.lock().unwrap_or_else(|e| e.into_inner()) = true;
            self.0.1.notify_all();
        }
    }
    let opener = Opener(gate.clone());
    let s = nh.get_noop_session(ShardId(1));
    let value = "v".repeat(1000);
    // 256 entries, two per batch: waiting for a 200 ms tick (or another
    // wake-up) per batch takes more than the proposals' timeout.
    let handles: Vec<RequestHandle<SmResult>> = (0..256)
        .map(|i| {
            nh.propose(
                &s,
                format!("set k{i} {value}").into_bytes(),
                Duration::from_secs(5),
            )
            .unwrap()
        })
        .collect();
    // They commit while the state machine is stuck; at most a batch or
    // two of them is queued for it, the rest waits in the log.
    wait_for("all committed", Duration::from_secs(5), || {
        nh.get_node_host_info().log_info[0].last_index.0 >= 256
    });
    std::thread::sleep(Duration::from_millis(100));
    let g = nh.gauges();
    assert_eq!(g.proposals_pending, 256);
    assert!(g.apply_tasks_queued <= 2, "{g:?}");
    drop(opener);
    for h in handles {
        h.wait().expect("applied within the proposal's timeout");
    }
    assert_eq!(count(&nh, 1), 256);
}
