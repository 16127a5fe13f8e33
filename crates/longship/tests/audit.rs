//! Regression tests from a correctness audit of the engine: each test
//! failed before the fix it names (see the commit that added it).

mod common;

use std::any::Any;
use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use longship::{
    ConcurrentStateMachine, Config, Error, Index, NodeHost, RequestHandle, ShardId, SmEntry,
    SmError, SnapshotOption, Start, StateMachine, StopFlag,
};

/// Waits for a request's outcome for at most `within`; `None` if it did not
/// complete (the request would have hung).
fn outcome_within<T: Send + 'static>(
    r: Result<RequestHandle<T>, Error>,
    within: Duration,
) -> Option<Result<T, Error>> {
    let h = match r {
        Ok(h) => h,
        Err(e) => return Some(Err(e)),
    };
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(h.wait());
    });
    rx.recv_timeout(within).ok()
}

/// What a test tells a [`Faulty`] state machine, and what it saw.
#[derive(Default)]
struct Control {
    /// `update` fails on a command containing "boom" while set.
    fail: AtomicBool,
    /// `update` of a command "block" waits until this is set.
    release: AtomicBool,
    /// `update` is waiting on `release`.
    blocked: AtomicBool,
}

/// The test key-value machine, with failures and blocking on command.
struct Faulty {
    kv: Kv,
    ctl: Arc<Control>,
}

impl StateMachine for Faulty {
    fn update(&mut self, entries: &mut [SmEntry]) -> Result<(), SmError> {
        for e in entries.iter() {
            if self.ctl.fail.load(Ordering::SeqCst) && e.cmd.windows(4).any(|w| w == b"boom") {
                return Err(SmError::new("boom"));
            }
        }
        for e in entries {
            if &e.cmd[..] == b"block" {
                self.ctl.blocked.store(true, Ordering::SeqCst);
                let deadline = Instant::now() + Duration::from_secs(20);
                while !self.ctl.release.load(Ordering::SeqCst) && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            e.result.value = self.kv.apply_cmd(&e.cmd);
        }
        Ok(())
    }
    fn lookup(&self, query: &[u8]) -> Result<Vec<u8>, SmError> {
        self.kv.lookup(query)
    }
    fn save_snapshot(&self, w: &mut dyn Write, stop: &StopFlag) -> Result<(), SmError> {
        self.kv.save_snapshot(w, stop)
    }
    fn recover_from_snapshot(&mut self, r: &mut dyn Read, stop: &StopFlag) -> Result<(), SmError> {
        self.kv.recover_from_snapshot(r, stop)
    }
}

fn start_faulty(nh: &NodeHost, shard: u64, cfg: Config, ctl: &Arc<Control>) {
    let ctl = ctl.clone();
    nh.start_replica(
        new_or_restart(nh, shard, cfg.replica_id.0, &[1]),
        move |_, _| {
            Box::new(Faulty {
                kv: Kv::default(),
                ctl,
            })
        },
        Config {
            shard_id: ShardId(shard),
            ..cfg
        },
    )
    .unwrap();
}

fn is_failed(nh: &NodeHost, shard: u64) -> bool {
    nh.get_node_host_info()
        .shards
        .iter()
        .any(|s| s.shard_id == ShardId(shard) && s.failed)
}

fn last_index(nh: &NodeHost, shard: u64) -> u64 {
    nh.get_node_host_info()
        .log_info
        .iter()
        .find(|l| l.shard_id == ShardId(shard))
        .map_or(0, |l| l.last_index.0)
}

// A replica whose state machine failed in `update` has an applied state that
// already counts the entries of the failed batch. A snapshot taken then
// (queued before the failure) recorded those entries as applied and
// compacted them away: after a restart they were never applied.
#[test]
fn no_snapshot_is_taken_of_a_failed_replica() {
    let mut c = TestCluster::new(1);
    let ctl = Arc::new(Control::default());
    ctl.fail.store(true, Ordering::SeqCst);
    start_faulty(c.nh(1), 1, config(1, 1), &ctl);
    c.propose(1, 1, "set a 1");
    let s = c.nh(1).get_noop_session(ShardId(1));
    // The apply worker blocks in `update` (holding the replica's apply lock)...
    let blocker = c.nh(1).propose(&s, "block", TIMEOUT).unwrap();
    wait_until("update blocked", TIMEOUT, || {
        ctl.blocked.load(Ordering::SeqCst)
    });
    // ...a snapshot is requested (its save waits for the apply lock)...
    let snap = c
        .nh(1)
        .request_snapshot(ShardId(1), SnapshotOption::default(), TIMEOUT)
        .unwrap();
    // ...and a failing entry is committed behind the blocked one.
    let before = last_index(c.nh(1), 1);
    let boom = c.nh(1).propose(&s, "set x 1 boom", TIMEOUT).unwrap();
    wait_until("boom persisted", TIMEOUT, || {
        last_index(c.nh(1), 1) > before
    });
    let boom_index = last_index(c.nh(1), 1);
    std::thread::sleep(Duration::from_millis(50));
    ctl.release.store(true, Ordering::SeqCst);
    assert!(blocker.wait().is_ok());
    assert!(boom.wait().is_err());
    wait_until("replica failed", TIMEOUT, || is_failed(c.nh(1), 1));
    if let Ok(done) = snap.wait() {
        let index = done.index;
        assert!(
            index.0 < boom_index,
            "snapshot at {index} covers the failed entry at {boom_index}"
        );
    }
    // After a restart with a healthy state machine, the entry is applied.
    c.stop_host(1);
    c.start_host(1);
    ctl.fail.store(false, Ordering::SeqCst);
    start_faulty(c.nh(1), 1, config(1, 1), &ctl);
    assert_eq!(c.read(1, 1, "get x"), b"1 boom");
}

// Requests on a failed replica through a NodeUser (which does not look the
// replica up again) waited forever: the step worker skips a failed replica,
// so nothing expired or answered them.
#[test]
fn node_user_requests_on_a_failed_replica_complete() {
    let c = TestCluster::new(1);
    let ctl = Arc::new(Control::default());
    ctl.fail.store(true, Ordering::SeqCst);
    start_faulty(c.nh(1), 1, config(1, 1), &ctl);
    c.propose(1, 1, "set a 1");
    let user = c.nh(1).get_node_user(ShardId(1)).unwrap();
    let s = c.nh(1).get_noop_session(ShardId(1));
    assert!(user.propose(&s, "boom", TIMEOUT).unwrap().wait().is_err());
    wait_until("replica failed", TIMEOUT, || is_failed(c.nh(1), 1));
    let short = Duration::from_millis(100);
    let within = Duration::from_secs(5);
    let p = outcome_within(user.propose(&s, "set b 2", short), within);
    assert!(matches!(p, Some(Err(_))), "proposal: {p:?}");
    let r = outcome_within(user.read_index(short), within);
    assert!(matches!(r, Some(Err(_))), "read: {r:?}");
}

/// What a [`SlowSave`] state machine saw.
#[derive(Default)]
struct SaveProbe {
    saving: AtomicBool,
    closed_while_saving: AtomicBool,
    /// The last save ended because its stop flag was set.
    stopped: AtomicBool,
}

/// A concurrent Kv whose `save_snapshot` runs until the replica stops.
struct SlowSave {
    kv: Mutex<Kv>,
    probe: Arc<SaveProbe>,
}

impl ConcurrentStateMachine for SlowSave {
    fn update(&self, entries: &mut [SmEntry]) -> Result<(), SmError> {
        let mut kv = self.kv.lock().unwrap();
        for e in entries {
            e.result.value = kv.apply_cmd(&e.cmd);
        }
        Ok(())
    }
    fn lookup(&self, query: &[u8]) -> Result<Vec<u8>, SmError> {
        Ok(self.kv.lock().unwrap().query(query))
    }
    fn prepare_snapshot(&self) -> Result<Box<dyn Any + Send>, SmError> {
        Ok(Box::new(self.kv.lock().unwrap().encode()))
    }
    fn save_snapshot(
        &self,
        ctx: Box<dyn Any + Send>,
        w: &mut dyn Write,
        stop: &StopFlag,
    ) -> Result<(), SmError> {
        self.probe.saving.store(true, Ordering::SeqCst);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !stop.is_set() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        self.probe.stopped.store(stop.is_set(), Ordering::SeqCst);
        // Finishing up takes a moment after the stop request.
        std::thread::sleep(Duration::from_millis(50));
        let bytes = ctx.downcast::<Vec<u8>>().unwrap();
        w.write_all(&bytes)?;
        self.probe.saving.store(false, Ordering::SeqCst);
        Ok(())
    }
    fn recover_from_snapshot(&self, r: &mut dyn Read, _: &StopFlag) -> Result<(), SmError> {
        let mut b = Vec::new();
        r.read_to_end(&mut b)?;
        *self.kv.lock().unwrap() = Kv::decode(&b);
        Ok(())
    }
    fn close(&self) {
        if self.probe.saving.load(Ordering::SeqCst) {
            self.probe.closed_while_saving.store(true, Ordering::SeqCst);
        }
    }
}

/// Starts a SlowSave replica of shard 1 on host 1, requests a snapshot and
/// returns once its save is in progress (with the request's handle).
fn slow_save_in_progress(
    c: &TestCluster,
) -> (Arc<SaveProbe>, RequestHandle<longship::SnapshotResult>) {
    let probe = Arc::new(SaveProbe::default());
    let p = probe.clone();
    c.nh(1)
        .start_concurrent_replica(
            Start::New(TestCluster::members(&[1])),
            move |_, _| {
                Box::new(SlowSave {
                    kv: Mutex::new(Kv::default()),
                    probe: p,
                })
            },
            config(1, 1),
        )
        .unwrap();
    c.propose(1, 1, "set a 1");
    let snap = c
        .nh(1)
        .request_snapshot(ShardId(1), SnapshotOption::default(), TIMEOUT)
        .unwrap();
    wait_until("save started", TIMEOUT, || {
        probe.saving.load(Ordering::SeqCst)
    });
    (probe, snap)
}

// stop_shard did not wait for a snapshot being saved off the apply path (a
// concurrent or on-disk state machine): it closed the state machine in the
// middle of its save_snapshot, and a replica restarted at once raced with
// the old save's commit, log compaction and snapshot store clean-up.
#[test]
fn stop_shard_waits_for_a_snapshot_being_saved() {
    let c = TestCluster::new(1);
    let (probe, _snap) = slow_save_in_progress(&c);
    c.nh(1).stop_shard(ShardId(1)).unwrap();
    assert!(
        !probe.saving.load(Ordering::SeqCst),
        "stop_shard returned while the snapshot was being saved"
    );
    assert!(!probe.closed_while_saving.load(Ordering::SeqCst));
}

/// Log storage whose next write of a shard's entries, once armed, takes
/// `delay` (an fsync stuck on a slow disk).
struct SlowLogDb {
    inner: longship_storage::MemLogDb,
    armed: AtomicBool,
    writing: AtomicBool,
    delay: Duration,
}

impl longship_storage::LogDb for SlowLogDb {
    fn save_raft_state(
        &self,
        updates: &[longship_storage::LogUpdate],
    ) -> longship_storage::Result<()> {
        let slow = updates.iter().any(|u| !u.entries.is_empty())
            && self.armed.swap(false, Ordering::SeqCst);
        if slow {
            self.writing.store(true, Ordering::SeqCst);
            std::thread::sleep(self.delay);
        }
        let r = self.inner.save_raft_state(updates);
        self.writing.store(false, Ordering::SeqCst);
        r
    }
    fn entries(
        &self,
        s: ShardId,
        r: longship::ReplicaId,
        low: longship::Index,
        high: longship::Index,
        max_bytes: u64,
    ) -> longship_storage::Result<Vec<longship_raft::Entry>> {
        self.inner.entries(s, r, low, high, max_bytes)
    }
    fn term(
        &self,
        s: ShardId,
        r: longship::ReplicaId,
        i: longship::Index,
    ) -> longship_storage::Result<longship::Term> {
        self.inner.term(s, r, i)
    }
    fn first_index(&self, s: ShardId, r: longship::ReplicaId) -> longship::Index {
        self.inner.first_index(s, r)
    }
    fn last_index(&self, s: ShardId, r: longship::ReplicaId) -> longship::Index {
        self.inner.last_index(s, r)
    }
    fn snapshot(&self, s: ShardId, r: longship::ReplicaId) -> longship_raft::SnapshotMeta {
        self.inner.snapshot(s, r)
    }
    fn read_state(
        &self,
        s: ShardId,
        r: longship::ReplicaId,
    ) -> Option<longship_storage::ReplicaState> {
        self.inner.read_state(s, r)
    }
    fn list_replicas(&self) -> Vec<(ShardId, longship::ReplicaId)> {
        self.inner.list_replicas()
    }
    fn remove_entries_to(
        &self,
        s: ShardId,
        r: longship::ReplicaId,
        i: longship::Index,
    ) -> longship_storage::Result<()> {
        self.inner.remove_entries_to(s, r, i)
    }
    fn save_snapshot(
        &self,
        s: ShardId,
        r: longship::ReplicaId,
        m: &longship_raft::SnapshotMeta,
    ) -> longship_storage::Result<()> {
        self.inner.save_snapshot(s, r, m)
    }
    fn remove_node_data(&self, s: ShardId, r: longship::ReplicaId) -> longship_storage::Result<()> {
        self.inner.remove_node_data(s, r)
    }
    fn import_snapshot(
        &self,
        s: ShardId,
        r: longship::ReplicaId,
        m: &longship_raft::SnapshotMeta,
    ) -> longship_storage::Result<()> {
        self.inner.import_snapshot(s, r, m)
    }
    fn close(&self) -> longship_storage::Result<()> {
        self.inner.close()
    }
    fn set_recovery_guard(
        &self,
        s: ShardId,
        r: longship::ReplicaId,
        guard: longship_raft::RecoveryGuard,
    ) -> longship_storage::Result<()> {
        self.inner.set_recovery_guard(s, r, guard)
    }
}

// stop_shard did not wait for the step worker's cycle in flight: the
// stopped replica's entries and hard state were written after stop_shard
// returned, so a replica restarted at once loaded a state that the old
// cycle then changed under it (a vote or term written behind its back).
#[test]
fn stop_shard_waits_for_the_log_write_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    let net = longship_transport::MemNetwork::new();
    let db = Arc::new(SlowLogDb {
        inner: longship_storage::MemLogDb::new(),
        armed: AtomicBool::new(false),
        writing: AtomicBool::new(false),
        delay: Duration::from_millis(300),
    });
    let cfg = longship::NodeHostConfig {
        node_host_dir: dir.path().to_path_buf(),
        rtt_ms: RTT_MS,
        raft_address: addr(1),
        ..longship::NodeHostConfig::default()
    };
    let nh = NodeHost::builder(cfg)
        .transport(Arc::new(net.transport(&addr(1))))
        .log_db(db.clone())
        .build()
        .unwrap();
    nh.start_replica(
        Start::New(TestCluster::members(&[1])),
        |_, _| Box::new(Kv::default()),
        config(1, 1),
    )
    .unwrap();
    let mut s = nh.get_noop_session(ShardId(1));
    retry(|| nh.sync_propose(&mut s, b"set a 1".to_vec(), TIMEOUT));
    db.armed.store(true, Ordering::SeqCst);
    let _h = nh.propose(&s, b"set b 2".to_vec(), TIMEOUT).unwrap();
    wait_until("write started", TIMEOUT, || {
        db.writing.load(Ordering::SeqCst)
    });
    nh.stop_shard(ShardId(1)).unwrap();
    assert!(
        !db.writing.load(Ordering::SeqCst),
        "stop_shard returned while the replica's write was in flight"
    );
    nh.close();
}

/// The description of a snapshot at `index` of shard `shard` with `data`,
/// as a leader's store writes it (for forging streams).
fn snapshot_info(shard: u64, index: u64, data: &[u8]) -> longship_storage::snapshot::SnapshotInfo {
    let dir = tempfile::tempdir().unwrap();
    let fs: Arc<dyn longship_storage::vfs::FileSystem> =
        Arc::new(longship_storage::vfs::OsFs::new());
    let store = longship_storage::snapshot::SnapshotStore::open(
        fs,
        dir.path(),
        ShardId(shard),
        longship::ReplicaId(9),
    )
    .unwrap();
    let meta = longship_raft::SnapshotMeta {
        index: longship::Index(index),
        term: longship::Term(1),
        membership: longship_raft::Membership::with_voters([(1, addr(1))]),
        ..Default::default()
    };
    let mut sink = store.create(meta, 1).unwrap();
    sink.write_all(data).unwrap();
    sink.commit().unwrap()
}

/// A chunk of a stream to replica 1 of `shard` from replica 9.
fn chunk(
    shard: u64,
    info: &longship_storage::snapshot::SnapshotInfo,
) -> longship_transport::SnapshotChunk {
    longship_transport::SnapshotChunk {
        deployment_id: longship::NodeHostConfig::default().deployment_id,
        shard_id: ShardId(shard),
        to: longship::ReplicaId(1),
        from: longship::ReplicaId(9),
        index: info.meta.index,
        term: info.meta.term,
        file_name: longship_storage::snapshot::DATA_FILE_NAME.to_string(),
        ..Default::default()
    }
}

// Snapshot streams that never finished (the leader crashed, was partitioned,
// or stopped streaming) kept their receiver forever; after 64 of them the
// host refused every new stream, so no lagging replica on it could ever
// catch up again.
#[test]
fn abandoned_snapshot_streams_do_not_block_new_ones() {
    let c = TestCluster::new(1);
    c.start_shard(1, &[1]);
    c.propose(1, 1, "set a 1");
    let peer = c.net.transport("peer:1");
    use longship_transport::Transport as _;
    let info = snapshot_info(1, 1000, b"0123456789");
    for i in 0..65 {
        // A new stream (of a newer snapshot) whose sender goes away after its first chunk.
        let mut info = info.clone();
        info.meta.index = longship::Index(1000 + i);
        let first = longship_transport::SnapshotChunk {
            chunk_id: 0,
            index: info.meta.index,
            info: info.encode().unwrap(),
            ..chunk(1, &info)
        };
        assert!(
            peer.send_snapshot_chunk(&addr(1), first).is_ok(),
            "stream {i} refused"
        );
    }
}

// The InstallSnapshot message closing a snapshot stream was delivered
// wherever it pointed, not to the replica the stream was for: a peer could
// make another shard's replica install a snapshot it never received (the
// replica then failed for good, its snapshot missing) or hand a leader an
// InstallSnapshot of its own term (a panic of its step worker).
#[test]
fn a_snapshot_stream_installs_only_on_the_replica_it_was_for() {
    let c = TestCluster::new(1);
    c.start_shard(1, &[1]);
    c.start_shard(2, &[1]);
    c.propose(1, 1, "set a 1");
    c.propose(1, 2, "set a 1");
    let term = c.nh(1).get_leader(ShardId(2)).unwrap().unwrap().term;
    let data = b"LSRS";
    let info = snapshot_info(1, 1000, data);
    let peer = c.net.transport("peer:1");
    use longship_transport::Transport as _;
    let first = longship_transport::SnapshotChunk {
        chunk_id: 0,
        info: info.encode().unwrap(),
        data: data.to_vec(),
        ..chunk(1, &info)
    };
    let _ = peer.send_snapshot_chunk(&addr(1), first);
    // The closing message names shard 2.
    let m = longship_raft::Message {
        term,
        snapshot: Some(longship_raft::SnapshotMeta {
            term,
            ..info.meta.clone()
        }),
        ..longship_raft::Message::new(
            longship_raft::MessageType::InstallSnapshot,
            ShardId(2),
            longship::ReplicaId(9),
            longship::ReplicaId(1),
        )
    };
    let mut message = Vec::new();
    longship_raft::codec::encode_message(&m, &mut message);
    let last = longship_transport::SnapshotChunk {
        chunk_id: 1,
        offset: data.len() as u64,
        last: true,
        message,
        ..chunk(1, &info)
    };
    let _ = peer.send_snapshot_chunk(&addr(1), last);
    // (A dead step worker would also stop timing requests out.)
    let s = c.nh(1).get_noop_session(ShardId(2));
    let p = outcome_within(
        c.nh(1).propose(&s, b"set b 2".to_vec(), TIMEOUT),
        TIMEOUT * 2,
    );
    assert!(matches!(p, Some(Ok(_))), "shard 2 stopped working: {p:?}");
    assert!(!is_failed(c.nh(1), 2));
}

// An InstallSnapshot in a plain message batch names a snapshot the replica
// never received (real ones come through a snapshot stream; only witness
// snapshots, which carry no data, travel in batches). Accepted, it made the
// follower install a snapshot it did not have: the follower failed and,
// the snapshot being recorded in its log storage, could not even restart.
#[test]
fn an_install_snapshot_in_a_message_batch_is_ignored() {
    let c = TestCluster::new(3);
    c.start_shard(1, &[1, 2, 3]);
    c.propose(1, 1, "set a 1");
    let l = c.wait_leader(1);
    let f = if l == 1 { 2 } else { 1 };
    wait_until("follower knows the leader", TIMEOUT, || {
        c.leader_seen_by(f, 1) == l
    });
    let term = c.nh(f).get_leader(ShardId(1)).unwrap().unwrap().term;
    let membership =
        longship_raft::Membership::with_voters([(1, addr(1)), (2, addr(2)), (3, addr(3))]);
    let m = longship_raft::Message {
        term,
        snapshot: Some(longship_raft::SnapshotMeta {
            index: longship::Index(1000),
            term,
            membership,
            ..Default::default()
        }),
        ..longship_raft::Message::new(
            longship_raft::MessageType::InstallSnapshot,
            ShardId(1),
            longship::ReplicaId(l),
            longship::ReplicaId(f),
        )
    };
    c.send_raw(l, f, vec![m]);
    let s = c.nh(l).get_noop_session(ShardId(1));
    let p = outcome_within(
        c.nh(l).propose(&s, b"set z 1".to_vec(), TIMEOUT),
        TIMEOUT * 2,
    );
    assert!(
        matches!(p, Some(Ok(_))),
        "the leader stopped working: {p:?}"
    );
    wait_until("follower applied", TIMEOUT, || {
        c.nh(f).stale_read(ShardId(1), b"get z").ok().as_deref() == Some(&b"1"[..])
    });
    assert!(!is_failed(c.nh(f), 1));
}

// A second leader in the leader's own term (a peer restarted on a wiped
// disk forgets its vote, so election safety can be broken from outside)
// and an acknowledgement of entries the leader never had made the core
// panic, which killed the step worker and every shard it drives. They are
// dropped and counted now; the shard goes on.
#[test]
fn messages_no_correct_peer_sends_do_not_stop_the_leader() {
    use longship_raft::{Message, MessageType};
    let c = TestCluster::new(3);
    c.start_shard(1, &[1, 2, 3]);
    c.propose(1, 1, "set a 1");
    let l = c.wait_leader(1);
    let f = if l == 1 { 2 } else { 1 };
    let term = c.nh(l).get_leader(ShardId(1)).unwrap().unwrap().term;
    let last = last_index(c.nh(l), 1);
    let from_f = |t: MessageType| Message {
        term,
        ..Message::new(
            t,
            ShardId(1),
            longship::ReplicaId(f),
            longship::ReplicaId(l),
        )
    };
    let messages = vec![
        from_f(MessageType::Heartbeat),
        Message {
            log_index: longship::Index(last),
            log_term: term,
            ..from_f(MessageType::Replicate)
        },
        Message {
            log_index: longship::Index(last + 1000),
            ..from_f(MessageType::ReplicateResp)
        },
    ];
    c.send_raw(f, l, messages);
    wait_until("the messages were dropped as invalid", TIMEOUT, || {
        c.nh(l)
            .metrics()
            .messages_invalid
            .load(std::sync::atomic::Ordering::Relaxed)
            == 3
    });
    let s = c.nh(l).get_noop_session(ShardId(1));
    let p = outcome_within(
        c.nh(l).propose(&s, b"set z 1".to_vec(), TIMEOUT),
        TIMEOUT * 2,
    );
    assert!(
        matches!(p, Some(Ok(_))),
        "the leader stopped working: {p:?}"
    );
    assert_eq!(c.nh(l).get_leader(ShardId(1)).unwrap().unwrap().term, term);
}

// Two concurrent starts of one shard both created and opened a state
// machine and wrote the shard's bootstrap entries; the loser's state
// machine was never closed. A start now reserves the shard first: the
// others fail at once, before any factory runs.
#[test]
fn concurrent_starts_of_a_shard_create_one_state_machine() {
    let c = TestCluster::new(1);
    let created = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let barrier = Arc::new(std::sync::Barrier::new(8));
    let results: Vec<Result<(), longship::Error>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let (created, barrier) = (created.clone(), barrier.clone());
                let nh = c.nh(1);
                s.spawn(move || {
                    barrier.wait();
                    nh.start_replica(
                        Start::New(TestCluster::members(&[1])),
                        move |_, _| {
                            created.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            Box::new(Kv::default())
                        },
                        config(1, 1),
                    )
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let ok = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(ok, 1, "{results:?}");
    assert!(
        results
            .iter()
            .all(|r| matches!(r, Ok(()) | Err(longship::Error::ShardAlreadyExists(_)))),
        "{results:?}"
    );
    assert_eq!(created.load(std::sync::atomic::Ordering::SeqCst), 1);
    c.propose(1, 1, "set a 1");
    // Stopped, it can be started again (the reservation was released).
    c.nh(1).stop_shard(ShardId(1)).unwrap();
    assert!(matches!(
        c.nh(1).stop_replica(ShardId(1), longship::ReplicaId(1)),
        Err(longship::Error::ShardNotFound(_))
    ));
    c.start_replica_on(1, Start::Restart, config(1, 1));
    assert_eq!(c.read(1, 1, "get a"), b"1");
}

/// Runs manual NodeHosts until none has anything left to do.
fn settle(hosts: &[&NodeHost]) {
    for _ in 0..10_000 {
        let mut any = false;
        for nh in hosts {
            any |= nh.run_once();
        }
        if !any {
            return;
        }
    }
    panic!("the hosts never settled");
}

// A step worker stalled for a while (a slow fsync) took, in its next
// cycle, the messages that arrived meanwhile first and all the stall's
// ticks after them: a follower that kept hearing from its leader stepped
// the heartbeats, then timed out and campaigned against a live leader.
// Ticks and messages are now replayed in the order they arrived.
#[test]
fn a_stalled_follower_does_not_campaign_against_a_live_leader() {
    let dir = tempfile::tempdir().unwrap();
    let net = longship_transport::MemNetwork::new();
    let hosts: Vec<NodeHost> = (1..=3)
        .map(|i| {
            let cfg = longship::NodeHostConfig {
                node_host_dir: dir.path().join(format!("nh{i}")),
                rtt_ms: RTT_MS,
                raft_address: addr(i),
                seed: Some(i),
                ..longship::NodeHostConfig::default()
            };
            NodeHost::builder(cfg)
                .transport(Arc::new(net.transport(&addr(i))))
                .manual()
                .build()
                .unwrap()
        })
        .collect();
    let all: Vec<&NodeHost> = hosts.iter().collect();
    for (i, nh) in hosts.iter().enumerate() {
        let cfg = Config {
            // Without either, a campaign shows as a new term at once.
            pre_vote: false,
            check_quorum: false,
            ..config(1, i as u64 + 1)
        };
        nh.start_replica(
            Start::New(TestCluster::members(&[1, 2, 3])),
            |_, _| Box::new(Kv::default()),
            cfg,
        )
        .unwrap();
    }
    let leader_of = |nh: &NodeHost| nh.get_leader(ShardId(1)).unwrap();
    for _ in 0..1000 {
        settle(&all);
        if all.iter().all(|nh| {
            let l = leader_of(nh);
            l.is_some() && l == leader_of(all[0])
        }) {
            break;
        }
        for nh in &all {
            nh.tick();
        }
    }
    let before = leader_of(all[0]).expect("no leader elected");
    let l = before.replica_id.0 as usize - 1;
    let f = (l + 1) % 3;
    let others: Vec<&NodeHost> = (0..3).filter(|&i| i != f).map(|i| all[i]).collect();
    // The follower's worker stalls for four election timeouts of ticks,
    // while its leader keeps sending heartbeats.
    for _ in 0..4 * config(1, 1).election_rtt {
        for nh in &others {
            nh.tick();
        }
        all[f].tick();
        settle(&others);
    }
    settle(&all);
    assert_eq!(
        leader_of(all[f]),
        Some(before),
        "the stalled follower campaigned against a live leader"
    );
    assert_eq!(leader_of(all[l]), Some(before));
}

/// A NodeHost driven by hand (no threads) on `dir`.
fn manual_host(dir: &std::path::Path, net: &longship_transport::MemNetwork) -> NodeHost {
    let cfg = longship::NodeHostConfig {
        node_host_dir: dir.to_path_buf(),
        rtt_ms: RTT_MS,
        raft_address: addr(1),
        seed: Some(1),
        ..longship::NodeHostConfig::default()
    };
    NodeHost::builder(cfg)
        .transport(Arc::new(net.transport(&addr(1))))
        .manual()
        .build()
        .unwrap()
}

/// Runs a manual NodeHost until `f` holds, ticking while nothing is left to do.
fn drive_until(nh: &NodeHost, what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..2000 {
        if f() {
            return;
        }
        if !nh.run_once() {
            nh.tick();
        }
    }
    panic!("never happened: {what}");
}

// A requested snapshot refused with SystemBusy (the snapshot job queue was
// full) left the replica marked as being snapshotted, with no job to clear
// the mark: automatic snapshots of that replica never ran again and its
// log grew without bound.
#[test]
fn a_snapshot_request_refused_as_busy_does_not_stop_automatic_snapshots() {
    let dir = tempfile::tempdir().unwrap();
    let net = longship_transport::MemNetwork::new();
    let nh = manual_host(dir.path(), &net);
    for shard in [1, 2] {
        nh.start_replica(
            Start::New(TestCluster::members(&[1])),
            |_, _| Box::new(Kv::default()),
            Config {
                snapshot_entries: 10,
                ..config(shard, 1)
            },
        )
        .unwrap();
    }
    drive_until(&nh, "leaders", || {
        [1, 2].iter().all(|&s| {
            nh.get_leader(ShardId(s))
                .unwrap()
                .is_some_and(|l| l.replica_id.0 == 1)
        })
    });
    // Shard 1's requests fill the snapshot job queue; shard 2's is refused.
    let mut held = Vec::new();
    let busy = loop {
        match nh.request_snapshot(ShardId(1), SnapshotOption::default(), TIMEOUT) {
            Ok(h) => held.push(h),
            Err(e) => break e,
        }
        assert!(held.len() <= 100_000, "the snapshot job queue has no bound");
    };
    assert!(matches!(busy, Error::SystemBusy), "{busy}");
    assert!(matches!(
        nh.request_snapshot(ShardId(2), SnapshotOption::default(), TIMEOUT),
        Err(Error::SystemBusy)
    ));
    while nh.run_once() {}
    // Enough entries on shard 2 for an automatic snapshot.
    let s = nh.get_noop_session(ShardId(2));
    for i in 0..15 {
        let h = nh.propose(&s, format!("set k{i} v"), TIMEOUT).unwrap();
        drive_until(&nh, "proposal applied", || h.try_result().is_some());
    }
    drive_until(&nh, "automatic snapshot of shard 2", || {
        nh.get_node_host_info()
            .shards
            .iter()
            .any(|i| i.shard_id == ShardId(2) && i.snapshot_index.0 > 0)
    });
}

// A timeout too long for a tick count (Duration::MAX as "no timeout") made
// the deadline computation overflow: a panic in debug builds, a deadline in
// the past (an immediate Timeout) in release builds.
#[test]
fn a_huge_timeout_does_not_overflow() {
    let dir = tempfile::tempdir().unwrap();
    let net = longship_transport::MemNetwork::new();
    let cfg = longship::NodeHostConfig {
        node_host_dir: dir.path().to_path_buf(),
        rtt_ms: 1,
        raft_address: addr(1),
        ..longship::NodeHostConfig::default()
    };
    let nh = NodeHost::builder(cfg)
        .transport(Arc::new(net.transport(&addr(1))))
        .build()
        .unwrap();
    nh.start_replica(
        Start::New(TestCluster::members(&[1])),
        |_, _| Box::new(Kv::default()),
        config(1, 1),
    )
    .unwrap();
    let mut s = nh.get_noop_session(ShardId(1));
    let r = retry(|| nh.sync_propose(&mut s, b"set a 1".to_vec(), Duration::MAX));
    assert_eq!(r.value, 1);
    assert!(nh.sync_read(ShardId(1), b"get a", Duration::MAX).is_ok());
    nh.close();
}

/// The OS file system, except that creating a directory under `slow`
/// waits until `release` is set (a slow export disk).
struct SlowExportFs {
    inner: longship_storage::vfs::OsFs,
    slow: std::path::PathBuf,
    blocked: AtomicBool,
    release: AtomicBool,
}

impl longship_storage::vfs::FileSystem for SlowExportFs {
    fn create(&self, p: &std::path::Path) -> std::io::Result<Box<dyn longship_storage::vfs::File>> {
        self.inner.create(p)
    }
    fn open(&self, p: &std::path::Path) -> std::io::Result<Box<dyn longship_storage::vfs::File>> {
        self.inner.open(p)
    }
    fn open_read(
        &self,
        p: &std::path::Path,
    ) -> std::io::Result<Box<dyn longship_storage::vfs::File>> {
        self.inner.open_read(p)
    }
    fn rename(&self, from: &std::path::Path, to: &std::path::Path) -> std::io::Result<()> {
        self.inner.rename(from, to)
    }
    fn remove_file(&self, p: &std::path::Path) -> std::io::Result<()> {
        self.inner.remove_file(p)
    }
    fn remove_dir_all(&self, p: &std::path::Path) -> std::io::Result<()> {
        self.inner.remove_dir_all(p)
    }
    fn create_dir_all(&self, p: &std::path::Path) -> std::io::Result<()> {
        if p.starts_with(&self.slow) {
            self.blocked.store(true, Ordering::SeqCst);
            let deadline = Instant::now() + Duration::from_secs(20);
            while !self.release.load(Ordering::SeqCst) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        self.inner.create_dir_all(p)
    }
    fn list(&self, dir: &std::path::Path) -> std::io::Result<Vec<std::path::PathBuf>> {
        self.inner.list(dir)
    }
    fn exists(&self, p: &std::path::Path) -> bool {
        self.inner.exists(p)
    }
    fn is_dir(&self, p: &std::path::Path) -> bool {
        self.inner.is_dir(p)
    }
    fn sync_dir(&self, dir: &std::path::Path) -> std::io::Result<()> {
        self.inner.sync_dir(dir)
    }
}

// The snapshot worker exported a requested snapshot while holding the
// replica's table of pending requests, which the step worker needs on every
// tick: a slow export stalled the step worker, and with it every shard it
// drives.
#[test]
fn a_slow_snapshot_export_does_not_stall_other_shards() {
    let dir = tempfile::tempdir().unwrap();
    let net = longship_transport::MemNetwork::new();
    let fs = Arc::new(SlowExportFs {
        inner: longship_storage::vfs::OsFs::new(),
        slow: dir.path().join("export"),
        blocked: AtomicBool::new(false),
        release: AtomicBool::new(false),
    });
    let cfg = longship::NodeHostConfig {
        node_host_dir: dir.path().join("nh"),
        rtt_ms: RTT_MS,
        raft_address: addr(1),
        step_workers: 1,
        ..longship::NodeHostConfig::default()
    };
    let nh = NodeHost::builder(cfg)
        .transport(Arc::new(net.transport(&addr(1))))
        .file_system(fs.clone())
        .build()
        .unwrap();
    for shard in [1, 2] {
        nh.start_replica(
            Start::New(TestCluster::members(&[1])),
            |_, _| Box::new(Kv::default()),
            config(shard, 1),
        )
        .unwrap();
        let mut s = nh.get_noop_session(ShardId(shard));
        retry(|| nh.sync_propose(&mut s, b"set a 1".to_vec(), TIMEOUT));
    }
    let opt = SnapshotOption {
        export_path: Some(dir.path().join("export")),
        ..SnapshotOption::default()
    };
    let snap = nh.request_snapshot(ShardId(1), opt, TIMEOUT).unwrap();
    wait_until("export started", TIMEOUT, || {
        fs.blocked.load(Ordering::SeqCst)
    });
    let s = nh.get_noop_session(ShardId(2));
    let p = outcome_within(nh.propose(&s, b"set b 2".to_vec(), TIMEOUT), TIMEOUT);
    fs.release.store(true, Ordering::SeqCst);
    assert!(matches!(p, Some(Ok(_))), "shard 2 stalled: {p:?}");
    assert!(snap.wait().is_ok());
    nh.close();
}

/// What a [`GatedSave`] state machine is doing; the test opens the gates.
#[derive(Default)]
struct Gates {
    preparing: AtomicBool,
    prepare_open: AtomicBool,
    saving: AtomicBool,
    save_open: AtomicBool,
}

fn wait_gate(gate: &AtomicBool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !gate.load(Ordering::SeqCst) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// A concurrent Kv whose snapshot preparation and save wait for the test.
struct GatedSave {
    kv: Mutex<Kv>,
    gates: Arc<Gates>,
}

impl ConcurrentStateMachine for GatedSave {
    fn update(&self, entries: &mut [SmEntry]) -> Result<(), SmError> {
        let mut kv = self.kv.lock().unwrap();
        for e in entries {
            e.result.value = kv.apply_cmd(&e.cmd);
        }
        Ok(())
    }
    fn lookup(&self, query: &[u8]) -> Result<Vec<u8>, SmError> {
        Ok(self.kv.lock().unwrap().query(query))
    }
    fn prepare_snapshot(&self) -> Result<Box<dyn Any + Send>, SmError> {
        self.gates.preparing.store(true, Ordering::SeqCst);
        wait_gate(&self.gates.prepare_open);
        Ok(Box::new(self.kv.lock().unwrap().encode()))
    }
    fn save_snapshot(
        &self,
        ctx: Box<dyn Any + Send>,
        w: &mut dyn Write,
        _: &StopFlag,
    ) -> Result<(), SmError> {
        self.gates.saving.store(true, Ordering::SeqCst);
        wait_gate(&self.gates.save_open);
        Ok(w.write_all(&ctx.downcast::<Vec<u8>>().unwrap())?)
    }
    fn recover_from_snapshot(&self, r: &mut dyn Read, _: &StopFlag) -> Result<(), SmError> {
        let mut b = Vec::new();
        r.read_to_end(&mut b)?;
        *self.kv.lock().unwrap() = Kv::decode(&b);
        Ok(())
    }
}

// Entries committed while a concurrent state machine prepared a snapshot
// found the apply lock taken; the apply worker skipped the replica and
// nothing marked it again until the whole save (off the apply path, which
// should not hold applies back) was over.
#[test]
fn applies_resume_once_a_snapshot_is_prepared() {
    let c = TestCluster::new(1);
    let gates = Arc::new(Gates::default());
    let g = gates.clone();
    c.nh(1)
        .start_concurrent_replica(
            Start::New(TestCluster::members(&[1])),
            move |_, _| {
                Box::new(GatedSave {
                    kv: Mutex::new(Kv::default()),
                    gates: g,
                })
            },
            config(1, 1),
        )
        .unwrap();
    c.propose(1, 1, "set a 1");
    let snap = c
        .nh(1)
        .request_snapshot(ShardId(1), SnapshotOption::default(), TIMEOUT)
        .unwrap();
    wait_until("preparing", TIMEOUT, || {
        gates.preparing.load(Ordering::SeqCst)
    });
    let s = c.nh(1).get_noop_session(ShardId(1));
    let before = last_index(c.nh(1), 1);
    let h = c.nh(1).propose(&s, b"set b 2".to_vec(), TIMEOUT).unwrap();
    wait_until("entry persisted", TIMEOUT, || {
        last_index(c.nh(1), 1) > before
    });
    // Let the apply worker find the replica busy.
    std::thread::sleep(Duration::from_millis(100));
    gates.prepare_open.store(true, Ordering::SeqCst);
    wait_until("saving", TIMEOUT, || gates.saving.load(Ordering::SeqCst));
    let p = outcome_within(Ok(h), TIMEOUT);
    gates.save_open.store(true, Ordering::SeqCst);
    assert!(
        matches!(p, Some(Ok(_))),
        "applied only after the save: {p:?}"
    );
    assert!(snap.wait().is_ok());
}

// An append whose entries do not follow its previous index (a gap or a
// jump backwards) made the follower's core panic, which killed its step
// worker: every shard of that worker stopped, and its requests never even
// timed out. The core's own message checks drop it now.
#[test]
fn a_malformed_append_is_ignored() {
    let c = TestCluster::new(3);
    c.start_shard(1, &[1, 2, 3]);
    c.propose(1, 1, "set a 1");
    let l = c.wait_leader(1);
    let f = if l == 1 { 2 } else { 1 };
    wait_until("follower knows the leader", TIMEOUT, || {
        c.leader_seen_by(f, 1) == l
    });
    let term = c.nh(f).get_leader(ShardId(1)).unwrap().unwrap().term;
    let last = last_index(c.nh(f), 1);
    let m = longship_raft::Message {
        term,
        log_index: longship::Index(last),
        log_term: term,
        commit: longship::Index(last),
        entries: vec![longship_raft::Entry {
            index: longship::Index(last + 5),
            term,
            ..Default::default()
        }],
        ..longship_raft::Message::new(
            longship_raft::MessageType::Replicate,
            ShardId(1),
            longship::ReplicaId(l),
            longship::ReplicaId(f),
        )
    };
    c.send_raw(l, f, vec![m]);
    // The core drops it (validate.rs) and counts it.
    wait_until("the append was dropped as invalid", TIMEOUT, || {
        c.nh(f).metrics().messages_invalid.load(Ordering::Relaxed) == 1
    });
    let s = c.nh(l).get_noop_session(ShardId(1));
    let p = outcome_within(
        c.nh(l).propose(&s, b"set z 1".to_vec(), TIMEOUT),
        TIMEOUT * 2,
    );
    assert!(matches!(p, Some(Ok(_))), "{p:?}");
    wait_until("follower applied", TIMEOUT, || {
        c.nh(f).stale_read(ShardId(1), b"get z").ok().as_deref() == Some(&b"1"[..])
    });
}

/// A Kv whose snapshots always fail (a full disk), counting the attempts.
struct FailingSave {
    kv: Kv,
    attempts: Arc<std::sync::atomic::AtomicU64>,
}

impl StateMachine for FailingSave {
    fn update(&mut self, entries: &mut [SmEntry]) -> Result<(), SmError> {
        self.kv.update(entries)
    }
    fn lookup(&self, query: &[u8]) -> Result<Vec<u8>, SmError> {
        self.kv.lookup(query)
    }
    fn save_snapshot(&self, _: &mut dyn Write, _: &StopFlag) -> Result<(), SmError> {
        self.attempts.fetch_add(1, Ordering::SeqCst);
        Err(SmError::new("no space left on device"))
    }
    fn recover_from_snapshot(&mut self, r: &mut dyn Read, stop: &StopFlag) -> Result<(), SmError> {
        self.kv.recover_from_snapshot(r, stop)
    }
}

// A failed automatic snapshot marked the replica for its apply worker,
// which scheduled the same snapshot again at once: on a shard with nothing
// new to apply, the apply and snapshot workers retried the failing save in
// a busy loop for ever.
#[test]
fn a_failing_automatic_snapshot_is_not_retried_in_a_loop() {
    let c = TestCluster::new(1);
    let attempts = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let a = attempts.clone();
    c.nh(1)
        .start_replica(
            Start::New(TestCluster::members(&[1])),
            move |_, _| {
                Box::new(FailingSave {
                    kv: Kv::default(),
                    attempts: a,
                })
            },
            Config {
                snapshot_entries: 5,
                ..config(1, 1)
            },
        )
        .unwrap();
    for i in 0..10 {
        c.propose(1, 1, format!("set k{i} v"));
    }
    wait_until("a snapshot attempt", TIMEOUT, || {
        attempts.load(Ordering::SeqCst) > 0
    });
    // Nothing new is applied from here on.
    std::thread::sleep(Duration::from_millis(100));
    let before = attempts.load(Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(300));
    let after = attempts.load(Ordering::SeqCst);
    assert!(
        after - before <= 1,
        "{} more attempts in 300 ms without anything new",
        after - before
    );
}

// NodeHostConfig::max_apply_batch_bytes was validated but never used: the
// core handed out committed entries in batches of its own default size.
#[test]
fn apply_batches_respect_max_apply_batch_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let net = longship_transport::MemNetwork::new();
    let cfg = longship::NodeHostConfig {
        node_host_dir: dir.path().to_path_buf(),
        rtt_ms: RTT_MS,
        raft_address: addr(1),
        seed: Some(1),
        max_apply_batch_bytes: 1,
        ..longship::NodeHostConfig::default()
    };
    let nh = NodeHost::builder(cfg)
        .transport(Arc::new(net.transport(&addr(1))))
        .manual()
        .build()
        .unwrap();
    let largest = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let l = largest.clone();
    nh.start_replica(
        Start::New(TestCluster::members(&[1])),
        move |_, _| {
            // Records the size of the largest batch `update` got.
            let l = l.clone();
            Box::new(HookedKv {
                kv: Kv::default(),
                hook: Arc::new(move |h| {
                    if let Hook::Update(n) = h {
                        l.fetch_max(n as u64, Ordering::SeqCst);
                    }
                }),
            })
        },
        config(1, 1),
    )
    .unwrap();
    drive_until(&nh, "leader", || {
        nh.get_leader(ShardId(1))
            .unwrap()
            .is_some_and(|l| l.replica_id.0 == 1)
    });
    let s = nh.get_noop_session(ShardId(1));
    let handles: Vec<_> = (0..20)
        .map(|i| nh.propose(&s, format!("set k{i} v"), TIMEOUT).unwrap())
        .collect();
    let mut done = vec![false; handles.len()];
    drive_until(&nh, "applied", || {
        for (h, d) in handles.iter().zip(done.iter_mut()) {
            *d |= h.try_result().is_some();
        }
        done.iter().all(|d| *d)
    });
    assert_eq!(largest.load(Ordering::SeqCst), 1, "a batch over the limit");
}

// close() set the replicas' stop flags only after it had joined the worker
// threads, so it waited for a snapshot being saved to finish on its own
// instead of asking it to stop (the promise of StopFlag).
#[test]
fn close_asks_a_snapshot_being_saved_to_stop() {
    let c = TestCluster::new(1);
    let (probe, _snap) = slow_save_in_progress(&c);
    c.nh(1).close();
    assert!(
        probe.stopped.load(Ordering::SeqCst),
        "the save ran to its end: close did not ask it to stop"
    );
}

/// A Kv whose `save_snapshot` gives up quietly (returns Ok with nothing
/// written) when asked to stop, as a state machine polling its StopFlag in
/// a loop may well do.
struct QuitsOnStop {
    kv: Mutex<Kv>,
    saving: Arc<AtomicBool>,
}

impl ConcurrentStateMachine for QuitsOnStop {
    fn update(&self, entries: &mut [SmEntry]) -> Result<(), SmError> {
        let mut kv = self.kv.lock().unwrap();
        for e in entries {
            e.result.value = kv.apply_cmd(&e.cmd);
        }
        Ok(())
    }
    fn lookup(&self, query: &[u8]) -> Result<Vec<u8>, SmError> {
        Ok(self.kv.lock().unwrap().query(query))
    }
    fn prepare_snapshot(&self) -> Result<Box<dyn Any + Send>, SmError> {
        Ok(Box::new(self.kv.lock().unwrap().encode()))
    }
    fn save_snapshot(
        &self,
        ctx: Box<dyn Any + Send>,
        w: &mut dyn Write,
        stop: &StopFlag,
    ) -> Result<(), SmError> {
        self.saving.store(true, Ordering::SeqCst);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if stop.is_set() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(w.write_all(&ctx.downcast::<Vec<u8>>().unwrap())?)
    }
    fn recover_from_snapshot(&self, r: &mut dyn Read, _: &StopFlag) -> Result<(), SmError> {
        let mut b = Vec::new();
        r.read_to_end(&mut b)?;
        *self.kv.lock().unwrap() = Kv::decode(&b);
        Ok(())
    }
}

fn start_quits_on_stop(c: &TestCluster, saving: &Arc<AtomicBool>) {
    let saving = saving.clone();
    c.nh(1)
        .start_concurrent_replica(
            new_or_restart(c.nh(1), 1, 1, &[1]),
            move |_, _| {
                Box::new(QuitsOnStop {
                    kv: Mutex::new(Kv::default()),
                    saving,
                })
            },
            config(1, 1),
        )
        .unwrap();
}

// A snapshot whose save was cut short by the stop flag was committed as
// if complete when the state machine returned Ok: its log compacted behind
// it, the replica came back after a restart from a snapshot missing its
// data.
#[test]
fn a_snapshot_cut_short_by_stopping_is_not_kept() {
    let mut c = TestCluster::new(1);
    let saving = Arc::new(AtomicBool::new(false));
    start_quits_on_stop(&c, &saving);
    c.propose(1, 1, "set a 1");
    let _snap = c
        .nh(1)
        .request_snapshot(ShardId(1), SnapshotOption::default(), TIMEOUT)
        .unwrap();
    wait_until("save started", TIMEOUT, || saving.load(Ordering::SeqCst));
    c.nh(1).stop_shard(ShardId(1)).unwrap();
    c.stop_host(1);
    c.start_host(1);
    start_quits_on_stop(&c, &saving);
    assert_eq!(c.read(1, 1, "get a"), b"1");
}

/// What a [`SlowRecover`] state machine saw.
#[derive(Default)]
struct RecoverProbe {
    recovering: AtomicBool,
    cut_short: AtomicBool,
    updated_after_cut: AtomicBool,
}

/// A concurrent Kv whose recovery from a snapshot runs until the replica
/// stops, then gives up quietly (Ok, nothing read).
struct SlowRecover {
    kv: Mutex<Kv>,
    probe: Arc<RecoverProbe>,
}

impl ConcurrentStateMachine for SlowRecover {
    fn update(&self, entries: &mut [SmEntry]) -> Result<(), SmError> {
        if self.probe.cut_short.load(Ordering::SeqCst) {
            self.probe.updated_after_cut.store(true, Ordering::SeqCst);
        }
        let mut kv = self.kv.lock().unwrap();
        for e in entries {
            e.result.value = kv.apply_cmd(&e.cmd);
        }
        Ok(())
    }
    fn lookup(&self, query: &[u8]) -> Result<Vec<u8>, SmError> {
        Ok(self.kv.lock().unwrap().query(query))
    }
    fn prepare_snapshot(&self) -> Result<Box<dyn Any + Send>, SmError> {
        Ok(Box::new(self.kv.lock().unwrap().encode()))
    }
    fn save_snapshot(
        &self,
        ctx: Box<dyn Any + Send>,
        w: &mut dyn Write,
        _: &StopFlag,
    ) -> Result<(), SmError> {
        Ok(w.write_all(&ctx.downcast::<Vec<u8>>().unwrap())?)
    }
    fn recover_from_snapshot(&self, r: &mut dyn Read, stop: &StopFlag) -> Result<(), SmError> {
        self.probe.recovering.store(true, Ordering::SeqCst);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if stop.is_set() {
                self.probe.cut_short.store(true, Ordering::SeqCst);
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let mut b = Vec::new();
        r.read_to_end(&mut b)?;
        *self.kv.lock().unwrap() = Kv::decode(&b);
        Ok(())
    }
}

// A recovery from a snapshot cut short by the stop flag, when the state
// machine returned Ok, counted as done: the apply worker went on applying
// the entries after the snapshot to a state machine that never got the
// snapshot's state (for an on-disk state machine, durably).
#[test]
fn nothing_is_applied_after_a_recovery_cut_short() {
    let mut c = TestCluster::new(3);
    let probe = Arc::new(RecoverProbe::default());
    let start_3 = |c: &TestCluster, probe: &Arc<RecoverProbe>| {
        let p = probe.clone();
        c.nh(3)
            .start_concurrent_replica(
                new_or_restart(c.nh(3), 1, 3, &[1, 2, 3]),
                move |_, _| {
                    Box::new(SlowRecover {
                        kv: Mutex::new(Kv::default()),
                        probe: p,
                    })
                },
                config(1, 3),
            )
            .unwrap();
    };
    for i in 1..=2 {
        c.start_replica_on(
            i,
            Start::New(TestCluster::members(&[1, 2, 3])),
            config(1, i),
        );
    }
    start_3(&c, &probe);
    c.propose(1, 1, "set a 1");
    // Replica 3 falls behind a compacted log.
    c.stop_host(3);
    let leader = c.wait_leader(1);
    for i in 0..10 {
        c.propose(leader, 1, format!("set k{i} v"));
    }
    let opt = SnapshotOption {
        compaction_overhead: Some(0),
        ..SnapshotOption::default()
    };
    retry(|| {
        c.nh(leader)
            .request_snapshot(ShardId(1), opt.clone(), TIMEOUT)?
            .wait()
    });
    c.start_host(3);
    start_3(&c, &probe);
    wait_until("replica 3 recovers from a snapshot", TIMEOUT, || {
        probe.recovering.load(Ordering::SeqCst)
    });
    // Entries after the snapshot reach replica 3 while it recovers.
    c.propose(leader, 1, "set z 1");
    let last = last_index(c.nh(leader), 1);
    wait_until("replica 3 holds the new entry", TIMEOUT, || {
        last_index(c.nh(3), 1) >= last
    });
    std::thread::sleep(Duration::from_millis(100));
    c.nh(3).stop_shard(ShardId(1)).unwrap();
    assert!(probe.cut_short.load(Ordering::SeqCst));
    assert!(
        !probe.updated_after_cut.load(Ordering::SeqCst),
        "entries applied on top of a recovery that did not happen"
    );
}

/// A transport whose first snapshot chunk fails, at a moment the sending
/// host's inbound queue is full (a message from a peer just arrived).
struct FailFirstStream {
    inner: longship_transport::MemTransport,
    net: longship_transport::MemNetwork,
    failed: AtomicBool,
}

impl longship_transport::Transport for FailFirstStream {
    fn local_address(&self) -> &str {
        self.inner.local_address()
    }
    fn start(
        &self,
        handler: Arc<dyn longship_transport::MessageHandler>,
    ) -> Result<(), longship_transport::SendError> {
        self.inner.start(handler)
    }
    fn send(
        &self,
        address: &str,
        batch: longship_raft::MessageBatch,
    ) -> Result<(), longship_transport::SendError> {
        self.inner.send(address, batch)
    }
    fn send_snapshot_chunk(
        &self,
        address: &str,
        chunk: longship_transport::SnapshotChunk,
    ) -> Result<(), longship_transport::SendError> {
        if self.failed.swap(true, Ordering::SeqCst) {
            return self.inner.send_snapshot_chunk(address, chunk);
        }
        // A harmless message (from a non-member) fills this host's queue.
        let m = longship_raft::Message::new(
            longship_raft::MessageType::HeartbeatResp,
            chunk.shard_id,
            longship::ReplicaId(7),
            chunk.from,
        );
        let batch = longship_raft::MessageBatch {
            deployment_id: chunk.deployment_id,
            source_address: String::new(),
            bin_ver: longship_raft::MESSAGE_BATCH_VERSION,
            messages: vec![m],
        };
        self.net
            .transport("peer:1")
            .send(self.inner.local_address(), batch)?;
        Err(longship_transport::SendError::Unreachable(address.into()))
    }
    fn close(&self) {
        self.inner.close()
    }
}

// The report that a snapshot stream failed reached the leader's core
// through the bounded inbound queue; dropped there (the queue was full),
// the leader waited for that stream's outcome for ever and the follower
// never got another snapshot.
#[test]
fn a_failed_snapshot_stream_is_always_reported() {
    let dir = tempfile::tempdir().unwrap();
    let net = longship_transport::MemNetwork::new();
    let host_cfg = |i: u64| longship::NodeHostConfig {
        node_host_dir: dir.path().join(format!("nh{i}")),
        rtt_ms: RTT_MS,
        raft_address: addr(i),
        seed: Some(i),
        max_inbound_queue: 1,
        ..longship::NodeHostConfig::default()
    };
    let t1 = FailFirstStream {
        inner: net.transport(&addr(1)),
        net: net.clone(),
        failed: AtomicBool::new(false),
    };
    let nh1 = NodeHost::builder(host_cfg(1))
        .transport(Arc::new(t1))
        .manual()
        .build()
        .unwrap();
    let nh3 = NodeHost::builder(host_cfg(3))
        .transport(Arc::new(net.transport(&addr(3))))
        .manual()
        .build()
        .unwrap();
    let run = || {
        let a = nh1.run_once();
        let b = nh3.run_once();
        if !a && !b {
            nh1.tick();
            nh3.tick();
        }
    };
    let until = |what: &str, f: &mut dyn FnMut() -> bool| {
        for _ in 0..5000 {
            if f() {
                return;
            }
            run();
        }
        panic!("never happened: {what}");
    };
    let kv = |_, _| -> Box<dyn StateMachine> { Box::new(Kv::default()) };
    nh1.start_replica(Start::New(TestCluster::members(&[1])), kv, config(1, 1))
        .unwrap();
    until("leader", &mut || {
        nh1.get_leader(ShardId(1))
            .unwrap()
            .is_some_and(|l| l.replica_id.0 == 1)
    });
    let s = nh1.get_noop_session(ShardId(1));
    for i in 0..5 {
        let h = nh1.propose(&s, format!("set k{i} v"), TIMEOUT).unwrap();
        until("applied", &mut || h.try_result().is_some());
    }
    let opt = SnapshotOption {
        compaction_overhead: Some(0),
        ..SnapshotOption::default()
    };
    let h = nh1.request_snapshot(ShardId(1), opt, TIMEOUT).unwrap();
    until("snapshot", &mut || h.try_result().is_some());
    let h = nh1
        .request_add_non_voting(
            ShardId(1),
            longship::ReplicaId(3),
            addr(3),
            Index(0),
            TIMEOUT,
        )
        .unwrap();
    until("replica 3 added", &mut || h.try_result().is_some());
    nh3.start_replica(
        Start::Join,
        kv,
        Config {
            is_non_voting: true,
            ..config(1, 3)
        },
    )
    .unwrap();
    // The first stream fails; the next one must be tried and succeed.
    until("replica 3 caught up by a snapshot", &mut || {
        nh3.stale_read(ShardId(1), b"get k4").ok().as_deref() == Some(&b"v"[..])
    });
}

// Snapshot streams to a replica that was stopped meanwhile were kept for
// ever (their chunks were refused, so nothing finished them): stopping 64
// replicas in the middle of a stream left this host unable to receive any
// snapshot again.
#[test]
fn stopping_a_replica_ends_its_snapshot_streams() {
    let dir = tempfile::tempdir().unwrap();
    let net = longship_transport::MemNetwork::new();
    let nh = manual_host(dir.path(), &net);
    for shard in 1..=65 {
        nh.start_replica(
            Start::New(TestCluster::members(&[1])),
            |_, _| Box::new(Kv::default()),
            config(shard, 1),
        )
        .unwrap();
    }
    let peer = net.transport("peer:1");
    use longship_transport::Transport as _;
    let first = |shard: u64| {
        let info = snapshot_info(shard, 1000, b"0123456789");
        longship_transport::SnapshotChunk {
            chunk_id: 0,
            info: info.encode().unwrap(),
            ..chunk(shard, &info)
        }
    };
    for shard in 1..=64 {
        peer.send_snapshot_chunk(&addr(1), first(shard)).unwrap();
        nh.stop_shard(ShardId(shard)).unwrap();
    }
    assert!(
        peer.send_snapshot_chunk(&addr(1), first(65)).is_ok(),
        "stream refused"
    );
}
