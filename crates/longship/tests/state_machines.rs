//! The three state machine kinds through the public API: concurrent and
//! on-disk state machines (restart without re-applying, snapshots, catch-up
//! by snapshot), a state machine that blocks in `update` on one shard while
//! shards of other apply workers progress, and the read paths (stale,
//! ReadIndex + local, NodeUser, the request handle as a future).

mod common;

use std::any::Any;
use std::collections::BTreeMap;
use std::future::Future;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use common::*;
use longship::{
    ConcurrentStateMachine, Config, Error, Index, NodeHost, OnDiskStateMachine, ReplicaId, ShardId,
    SmEntry, SmError, SnapshotOption, Start, StateMachine, StopFlag,
};

/// Polls `f` until it holds; panics with `what` after `within`.
fn wait_for(what: &str, within: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Runs a future to completion on this thread.
fn block_on<F: Future>(f: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut f = pin!(f);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        assert!(Instant::now() < deadline, "future never completed");
        std::thread::park_timeout(Duration::from_millis(100));
    }
}

fn count_of(b: Vec<u8>) -> u64 {
    String::from_utf8(b).unwrap().parse().unwrap()
}

fn count(nh: &NodeHost, shard: u64) -> u64 {
    count_of(retry(|| nh.sync_read(ShardId(shard), b"count", TIMEOUT)))
}

fn propose(nh: &NodeHost, shard: u64, cmd: &str) -> u64 {
    let mut s = nh.get_noop_session(ShardId(shard));
    retry(|| nh.sync_propose(&mut s, cmd.as_bytes().to_vec(), TIMEOUT)).value
}

/// What a state machine instance reports to the test (shared across restarts).
#[derive(Default)]
struct Probe {
    /// Entries passed to `update`.
    updates: AtomicU64,
    /// `recover_from_snapshot` calls.
    recovered: AtomicU64,
}

fn updates(p: &Probe) -> u64 {
    p.updates.load(Ordering::SeqCst)
}

fn recovered(p: &Probe) -> u64 {
    p.recovered.load(Ordering::SeqCst)
}

// ---------------------------------------------------------------- concurrent

/// The Kv state machine behind a lock, lookups concurrent with updates.
struct ConcurrentKv {
    kv: RwLock<Kv>,
    probe: Arc<Probe>,
}

impl ConcurrentStateMachine for ConcurrentKv {
    fn update(&self, entries: &mut [SmEntry]) -> Result<(), SmError> {
        let mut kv = self.kv.write().unwrap();
        for e in entries {
            e.result.value = kv.apply_cmd(&e.cmd);
            self.probe.updates.fetch_add(1, Ordering::SeqCst);
        }
        Ok(())
    }
    fn lookup(&self, query: &[u8]) -> Result<Vec<u8>, SmError> {
        Ok(self.kv.read().unwrap().query(query))
    }
    fn prepare_snapshot(&self) -> Result<Box<dyn Any + Send>, SmError> {
        Ok(Box::new(self.kv.read().unwrap().encode()))
    }
    fn save_snapshot(
        &self,
        ctx: Box<dyn Any + Send>,
        w: &mut dyn Write,
        _: &StopFlag,
    ) -> Result<(), SmError> {
        let bytes = ctx
            .downcast::<Vec<u8>>()
            .map_err(|_| SmError::new("wrong context"))?;
        Ok(w.write_all(&bytes)?)
    }
    fn recover_from_snapshot(&self, r: &mut dyn Read, _: &StopFlag) -> Result<(), SmError> {
        let mut b = Vec::new();
        r.read_to_end(&mut b)?;
        *self.kv.write().unwrap() = Kv::decode(&b);
        self.probe.recovered.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

// ---------------------------------------------------------------- on disk

/// A Kv whose state and applied index live in a file: `open` reads them
/// back, so longship must not hand it entries it already applied.
struct DiskKv {
    path: PathBuf,
    state: Mutex<(u64, Kv)>,
    probe: Arc<Probe>,
}

impl DiskKv {
    fn new(path: PathBuf, probe: Arc<Probe>) -> DiskKv {
        DiskKv {
            path,
            state: Mutex::new((0, Kv::default())),
            probe,
        }
    }

    fn encode(index: u64, kv: &Kv) -> Vec<u8> {
        let mut out = format!("{index}\n").into_bytes();
        out.extend_from_slice(&kv.encode());
        out
    }

    fn decode(b: &[u8]) -> (u64, Kv) {
        let split = b.iter().position(|&c| c == b'\n').unwrap_or(b.len());
        let index = std::str::from_utf8(&b[..split])
            .unwrap()
            .parse()
            .unwrap_or(0);
        let rest = b.get(split + 1..).unwrap_or_default();
        (index, Kv::decode(rest))
    }

    fn persist(&self, index: u64, kv: &Kv) -> Result<(), SmError> {
        let tmp = self.path.with_extension("tmp");
        std::fs::write(&tmp, DiskKv::encode(index, kv))?;
        std::fs::rename(&tmp, &self.path)?;
        Ok(())
    }
}

impl OnDiskStateMachine for DiskKv {
    fn open(&self, _: &StopFlag) -> Result<Index, SmError> {
        let mut st = self.state.lock().unwrap();
        if let Ok(b) = std::fs::read(&self.path) {
            *st = DiskKv::decode(&b);
        }
        Ok(Index(st.0))
    }
    fn update(&self, entries: &mut [SmEntry]) -> Result<(), SmError> {
        let mut st = self.state.lock().unwrap();
        for e in entries.iter_mut() {
            assert!(
                e.index.0 > st.0,
                "entry {} applied again (applied {})",
                e.index.0,
                st.0
            );
            e.result.value = st.1.apply_cmd(&e.cmd);
            st.0 = e.index.0;
            self.probe.updates.fetch_add(1, Ordering::SeqCst);
        }
        self.persist(st.0, &st.1)
    }
    fn lookup(&self, query: &[u8]) -> Result<Vec<u8>, SmError> {
        Ok(self.state.lock().unwrap().1.query(query))
    }
    fn sync(&self) -> Result<(), SmError> {
        Ok(())
    }
    fn prepare_snapshot(&self) -> Result<Box<dyn Any + Send>, SmError> {
        let st = self.state.lock().unwrap();
        Ok(Box::new(DiskKv::encode(st.0, &st.1)))
    }
    fn save_snapshot(
        &self,
        ctx: Box<dyn Any + Send>,
        w: &mut dyn Write,
        _: &StopFlag,
    ) -> Result<(), SmError> {
        let bytes = ctx
            .downcast::<Vec<u8>>()
            .map_err(|_| SmError::new("wrong context"))?;
        Ok(w.write_all(&bytes)?)
    }
    fn recover_from_snapshot(&self, r: &mut dyn Read, _: &StopFlag) -> Result<(), SmError> {
        let mut b = Vec::new();
        r.read_to_end(&mut b)?;
        let (index, kv) = DiskKv::decode(&b);
        self.persist(index, &kv)?;
        *self.state.lock().unwrap() = (index, kv);
        self.probe.recovered.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

// ---------------------------------------------------------------- cluster

#[derive(Clone, Copy, Debug)]
enum Kind {
    Concurrent,
    OnDisk,
}

/// A cluster whose replicas run one kind of state machine; each host has
/// its own probe and (for on-disk state machines) its own state file.
struct Sms {
    c: TestCluster,
    kind: Kind,
    probes: BTreeMap<u64, Arc<Probe>>,
    files: tempfile::TempDir,
}

impl Sms {
    fn new(kind: Kind, hosts: u64) -> Sms {
        Sms {
            c: TestCluster::new(hosts),
            kind,
            probes: (1..=hosts).map(|h| (h, Arc::default())).collect(),
            files: tempfile::tempdir().unwrap(),
        }
    }

    fn probe(&self, h: u64) -> &Probe {
        &self.probes[&h]
    }

    fn file(&self, h: u64, shard: u64) -> PathBuf {
        self.files.path().join(format!("sm-{shard}-{h}"))
    }

    /// Starts replica `h`: a restart when its host has data of it, else
    /// a new shard with `members` (a join when empty).
    fn start(&self, h: u64, members: &[u64], cfg: Config) {
        let start = new_or_restart(self.c.nh(h), cfg.shard_id.0, h, members);
        let probe = self.probes[&h].clone();
        let nh = self.c.nh(h);
        match self.kind {
            Kind::Concurrent => nh.start_concurrent_replica(
                start,
                move |_, _| {
                    Box::new(ConcurrentKv {
                        kv: RwLock::new(Kv::default()),
                        probe,
                    })
                },
                cfg,
            ),
            Kind::OnDisk => {
                let path = self.file(h, cfg.shard_id.0);
                nh.start_on_disk_replica(start, move |_, _| Box::new(DiskKv::new(path, probe)), cfg)
            }
        }
        .unwrap();
    }

    fn restart_host(&mut self, h: u64, cfg: Config) {
        self.c.stop_host(h);
        self.c.start_host(h);
        self.start(h, &[], cfg);
    }
}

fn wait_count(nh: &NodeHost, shard: u64, n: u64) {
    wait_for("replica applied", TIMEOUT, || {
        count_of(nh.stale_read(ShardId(shard), b"count").unwrap()) == n
    });
}

/// Proposals, reads, and a restart of every host: each state machine ends
/// with the same state, and an on-disk one is not handed entries again.
fn proposals_and_restart(kind: Kind) {
    let mut s = Sms::new(kind, 3);
    for h in 1..=3 {
        s.start(h, &[1, 2, 3], config(1, h));
    }
    let leader = s.c.wait_leader(1);
    for i in 1..=5 {
        assert_eq!(propose(s.c.nh(leader), 1, &format!("set k{i} {i}")), i);
    }
    for h in 1..=3 {
        assert_eq!(count(s.c.nh(h), 1), 5, "{kind:?} host {h}");
        assert_eq!(
            s.c.nh(h).sync_read(ShardId(1), b"get k3", TIMEOUT).unwrap(),
            b"3"
        );
        assert_eq!(updates(s.probe(h)), 5, "{kind:?} host {h}");
    }
    for h in 1..=3 {
        s.c.stop_host(h);
    }
    for h in 1..=3 {
        s.c.start_host(h);
        s.start(h, &[], config(1, h));
    }
    let leader = s.c.wait_leader(1);
    assert_eq!(propose(s.c.nh(leader), 1, "set k6 6"), 6);
    for h in 1..=3 {
        assert_eq!(count(s.c.nh(h), 1), 6);
        let expected = match kind {
            // In memory: the log is applied again from the start.
            Kind::Concurrent => 5 + 6,
            // On disk: `open` said 5 were applied; only the new one is.
            Kind::OnDisk => 6,
        };
        assert_eq!(updates(s.probe(h)), expected, "{kind:?} host {h}");
    }
}

#[test]
fn concurrent_state_machine_replicates_and_restarts() {
    proposals_and_restart(Kind::Concurrent);
}

#[test]
fn on_disk_state_machine_is_not_reapplied_after_restart() {
    proposals_and_restart(Kind::OnDisk);
}

/// A snapshot with log compaction, then a restart: the replica comes back
/// from the snapshot plus the log after it.
fn snapshot_and_restart(kind: Kind) {
    let mut s = Sms::new(kind, 3);
    for h in 1..=3 {
        s.start(h, &[1, 2, 3], config(1, h));
    }
    let leader = s.c.wait_leader(1);
    let follower = (1..=3).find(|&h| h != leader).unwrap();
    for i in 1..=4 {
        propose(s.c.nh(leader), 1, &format!("set a{i} {i}"));
    }
    wait_count(s.c.nh(follower), 1, 4);
    let opt = SnapshotOption {
        compaction_overhead: Some(0),
        ..SnapshotOption::default()
    };
    let index =
        s.c.nh(follower)
            .request_snapshot(ShardId(1), opt, TIMEOUT)
            .unwrap()
            .wait()
            .unwrap()
            .index;
    assert!(index.0 >= 4);
    // A second request with nothing new applied is refused.
    let again =
        s.c.nh(follower)
            .request_snapshot(ShardId(1), SnapshotOption::default(), TIMEOUT)
            .unwrap()
            .wait();
    assert!(matches!(again, Err(Error::Rejected(_))), "{again:?}");
    // One sentence, its reason once (no "rejected: rejected: ...").
    let text = again.unwrap_err().to_string();
    assert!(
        text.starts_with("the shard refused the request: nothing new to snapshot")
            && text.matches("refused").count() == 1,
        "{text}"
    );
    // Applied after the snapshot: must survive the restart too.
    propose(s.c.nh(leader), 1, "set after 5");
    wait_count(s.c.nh(follower), 1, 5);
    let updates_before = updates(s.probe(follower));
    s.restart_host(follower, config(1, follower));
    assert_eq!(count(s.c.nh(follower), 1), 5, "{kind:?}");
    assert_eq!(
        s.c.nh(follower)
            .sync_read(ShardId(1), b"get after", TIMEOUT)
            .unwrap(),
        b"5"
    );
    assert_eq!(
        s.c.nh(follower)
            .sync_read(ShardId(1), b"get a2", TIMEOUT)
            .unwrap(),
        b"2"
    );
    match kind {
        Kind::Concurrent => {
            // Recovered from the snapshot, then the one entry after it.
            assert_eq!(recovered(s.probe(follower)), 1);
            assert_eq!(updates(s.probe(follower)), updates_before + 1);
        }
        Kind::OnDisk => {
            // Its own store already holds everything: nothing re-applied.
            assert_eq!(updates(s.probe(follower)), updates_before);
        }
    }
    assert_eq!(propose(s.c.nh(follower), 1, "more"), 6);
}

#[test]
fn concurrent_state_machine_snapshot_and_restart() {
    snapshot_and_restart(Kind::Concurrent);
}

#[test]
fn on_disk_state_machine_snapshot_and_restart() {
    snapshot_and_restart(Kind::OnDisk);
}

/// A follower that misses compacted entries catches up from a streamed
/// snapshot of the state machine.
fn catch_up_by_snapshot(kind: Kind) {
    let mut s = Sms::new(kind, 3);
    for h in 1..=3 {
        s.start(h, &[1, 2, 3], config(1, h));
    }
    let leader = s.c.wait_leader(1);
    let lagging = (1..=3).find(|&h| h != leader).unwrap();
    s.c.stop_host(lagging);
    for i in 1..=6 {
        propose(s.c.nh(leader), 1, &format!("set b{i} {i}"));
    }
    let opt = SnapshotOption {
        compaction_overhead: Some(0),
        ..SnapshotOption::default()
    };
    // Snapshot and compact both running replicas, so that whichever leads
    // (leadership may move under load) can only send a snapshot.
    for h in (1..=3).filter(|&h| h != lagging) {
        wait_count(s.c.nh(h), 1, 6);
        retry(|| {
            s.c.nh(h)
                .request_snapshot(ShardId(1), opt.clone(), TIMEOUT)?
                .wait()
        });
    }
    s.c.start_host(lagging);
    s.start(lagging, &[], config(1, lagging));
    wait_count(s.c.nh(lagging), 1, 6);
    assert_eq!(
        s.c.nh(lagging)
            .sync_read(ShardId(1), b"get b6", TIMEOUT)
            .unwrap(),
        b"6"
    );
    assert_eq!(recovered(s.probe(lagging)), 1, "{kind:?}");
    assert_eq!(propose(s.c.nh(lagging), 1, "after"), 7);
    wait_count(s.c.nh(lagging), 1, 7);
}

#[test]
fn concurrent_state_machine_catches_up_by_snapshot() {
    catch_up_by_snapshot(Kind::Concurrent);
}

#[test]
fn on_disk_state_machine_catches_up_by_snapshot() {
    catch_up_by_snapshot(Kind::OnDisk);
}

// ---------------------------------------------------------------- blocking

/// A gate the test opens; waits are bounded so a failing test cannot hang.
#[derive(Default)]
struct Gate {
    open: Mutex<bool>,
    cv: std::sync::Condvar,
    entered: AtomicU64,
}

impl Gate {
    fn wait_open(&self) {
        self.entered.fetch_add(1, Ordering::SeqCst);
        let g = self.open.lock().unwrap();
        let _ = self
            .cv
            .wait_timeout_while(g, Duration::from_secs(20), |open| !*open)
            .unwrap();
    }

    fn open(&self) {
        *self.open.lock().unwrap() = true;
        self.cv.notify_all();
    }
}

/// Kv that blocks in `update` on the command `block` until the gate opens.
struct Blocking {
    kv: Kv,
    gate: Arc<Gate>,
}

impl StateMachine for Blocking {
    fn update(&mut self, entries: &mut [SmEntry]) -> Result<(), SmError> {
        for e in entries {
            if &e.cmd[..] == b"block" {
                self.gate.wait_open();
            }
            e.result.value = self.kv.apply_cmd(&e.cmd);
        }
        Ok(())
    }
    fn lookup(&self, query: &[u8]) -> Result<Vec<u8>, SmError> {
        Ok(self.kv.query(query))
    }
    fn save_snapshot(&self, w: &mut dyn Write, _: &StopFlag) -> Result<(), SmError> {
        Ok(w.write_all(&self.kv.encode())?)
    }
    fn recover_from_snapshot(&mut self, r: &mut dyn Read, _: &StopFlag) -> Result<(), SmError> {
        let mut b = Vec::new();
        r.read_to_end(&mut b)?;
        self.kv = Kv::decode(&b);
        Ok(())
    }
}

#[test]
fn blocked_state_machine_does_not_stall_shards_of_other_apply_workers() {
    let c = TestCluster::new(3);
    for h in 1..=3 {
        let cfg = c.nh(h).config();
        assert!(cfg.apply_workers >= 2 && cfg.step_workers >= 2);
    }
    // Shard 1 and shard 2 run on different apply (and step) workers.
    let (slow, fast) = (1u64, 2u64);
    assert_ne!(slow % 2, fast % 2);
    let gate = Arc::new(Gate::default());
    for h in 1..=3 {
        let g = gate.clone();
        c.nh(h)
            .start_replica(
                Start::New(TestCluster::members(&[1, 2, 3])),
                move |_, _| {
                    Box::new(Blocking {
                        kv: Kv::default(),
                        gate: g,
                    })
                },
                config(slow, h),
            )
            .unwrap();
    }
    c.start_shard(fast, &[1, 2, 3]);
    let leader = c.wait_leader(slow);
    c.wait_leader(fast);
    let nh = c.nh(leader);
    let s = nh.get_noop_session(ShardId(slow));
    let blocked = retry(|| nh.propose(&s, b"block".to_vec(), Duration::from_secs(20)));
    wait_for("every replica blocked in update", TIMEOUT, || {
        gate.entered.load(Ordering::SeqCst) == 3
    });
    let last_of = |h: u64| {
        c.nh(h)
            .get_node_host_info()
            .log_info
            .iter()
            .find(|l| l.shard_id == ShardId(slow))
            .unwrap()
            .last_index
    };
    // More proposals on the blocked shard are still replicated everywhere.
    let start = last_of(leader);
    let queued: Vec<_> = (0..5)
        .map(|i| {
            retry(|| {
                nh.propose(
                    &s,
                    format!("set q{i} {i}").into_bytes(),
                    Duration::from_secs(20),
                )
            })
        })
        .collect();
    wait_for("queued proposals appended", TIMEOUT, || {
        last_of(leader) >= start.plus(5)
    });
    let target = last_of(leader);
    wait_for("queued proposals replicated", TIMEOUT, || {
        (1..=3).all(|h| last_of(h) >= target)
    });
    // Shard 2 keeps committing and answering on every host meanwhile.
    for i in 1..=10u64 {
        let h = i % 3 + 1;
        assert_eq!(propose(c.nh(h), fast, &format!("set f{i} {i}")), i);
        assert_eq!(count(c.nh(h), fast), i);
    }
    assert!(blocked.try_result().is_none(), "still blocked");
    // Open the gate: the blocked shard catches up and answers everything.
    gate.open();
    assert_eq!(blocked.wait().unwrap().value, 1);
    for (i, h) in queued.into_iter().enumerate() {
        assert_eq!(h.wait().unwrap().value, i as u64 + 2);
    }
    for h in 1..=3 {
        assert_eq!(count(c.nh(h), slow), 6);
    }
}

// ---------------------------------------------------------------- reads

#[test]
fn stale_read_answers_from_the_local_replica() {
    let c = TestCluster::new(3);
    c.start_shard(1, &[1, 2, 3]);
    let leader = c.wait_leader(1);
    assert_eq!(c.nh(leader).stale_read(ShardId(1), b"count").unwrap(), b"0");
    propose(c.nh(leader), 1, "set k v");
    // The leader applied it before answering the proposal.
    assert_eq!(c.nh(leader).stale_read(ShardId(1), b"get k").unwrap(), b"v");
    for h in 1..=3 {
        wait_for("follower applied", TIMEOUT, || {
            c.nh(h).stale_read(ShardId(1), b"get k").unwrap() == b"v"
        });
    }
    // A partitioned follower still answers stale reads, but not linearizable ones.
    let follower = (1..=3).find(|&h| h != leader).unwrap();
    for h in 1..=3 {
        if h != follower {
            c.net.cut(&addr(h), &addr(follower));
            c.net.cut(&addr(follower), &addr(h));
        }
    }
    propose(c.nh(leader), 1, "set k w");
    assert_eq!(
        c.nh(follower).stale_read(ShardId(1), b"get k").unwrap(),
        b"v"
    );
    let err = c
        .nh(follower)
        .sync_read(ShardId(1), b"get k", Duration::from_millis(200))
        .unwrap_err();
    assert!(err.is_temporary(), "{err}");
    c.net.heal();
    assert_eq!(
        retry(|| c.nh(follower).sync_read(ShardId(1), b"get k", TIMEOUT)),
        b"w"
    );
}

#[test]
fn read_index_then_read_local_is_linearizable_on_followers() {
    let c = TestCluster::new(3);
    c.start_shard(1, &[1, 2, 3]);
    let leader = c.wait_leader(1);
    let follower = (1..=3).find(|&h| h != leader).unwrap();
    let mut prev = Index(0);
    for i in 1..=5u64 {
        propose(c.nh(leader), 1, &format!("set x {i}"));
        // Right after the write completed on the leader, a ReadIndex read
        // on a follower must see it.
        let index = retry(|| c.nh(follower).read_index(ShardId(1), TIMEOUT)?.wait());
        assert!(index >= prev, "read index went back");
        prev = index;
        let v = c.nh(follower).read_local(ShardId(1), b"get x").unwrap();
        assert_eq!(v, i.to_string().into_bytes());
        let applied = c
            .nh(follower)
            .get_node_host_info()
            .shards
            .iter()
            .find(|s| s.shard_id == ShardId(1))
            .unwrap()
            .applied;
        assert!(applied >= index, "read completed before applying its index");
    }
    // The handle is also a future.
    let index = block_on(c.nh(follower).read_index(ShardId(1), TIMEOUT).unwrap());
    assert!(index.unwrap() >= prev);
    let mut s = c.nh(leader).get_noop_session(ShardId(1));
    let r = block_on(
        c.nh(leader)
            .propose(&s, b"set x 6".to_vec(), TIMEOUT)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(r.value, 6);
    s.proposal_completed();
    assert_eq!(
        c.nh(follower)
            .sync_read(ShardId(1), b"get x", TIMEOUT)
            .unwrap(),
        b"6"
    );
}

#[test]
fn node_user_proposes_and_reads() {
    let c = TestCluster::new(3);
    c.start_shard(1, &[1, 2, 3]);
    c.start_shard(2, &[1, 2, 3]);
    let leader = c.wait_leader(1);
    let follower = (1..=3).find(|&h| h != leader).unwrap();
    wait_for("follower knows the leader", TIMEOUT, || {
        c.nh(follower)
            .get_leader(ShardId(1))
            .unwrap()
            .is_some_and(|l| l.replica_id == ReplicaId(leader))
    });
    for h in [leader, follower] {
        let user = c.nh(h).get_node_user(ShardId(1)).unwrap();
        assert_eq!(user.shard_id(), ShardId(1));
        let s = c.nh(h).get_noop_session(ShardId(1));
        let handles: Vec<_> = (0..20)
            .map(|i| retry(|| user.propose(&s, format!("set u{h}-{i} {i}").into_bytes(), TIMEOUT)))
            .collect();
        let mut values: Vec<u64> = handles
            .into_iter()
            .map(|h| h.wait().unwrap().value)
            .collect();
        values.sort();
        values.dedup();
        assert_eq!(values.len(), 20, "each proposal applied once");
        retry(|| user.read_index(TIMEOUT)?.wait());
        assert_eq!(
            user.read_local(format!("get u{h}-19").as_bytes()).unwrap(),
            b"19"
        );
        // A session of another shard is refused.
        let other = c.nh(h).get_noop_session(ShardId(2));
        assert!(matches!(
            user.propose(&other, b"x".to_vec(), TIMEOUT),
            Err(Error::InvalidSession)
        ));
    }
    assert_eq!(count(c.nh(leader), 1), 40);
    assert_eq!(count(c.nh(leader), 2), 0);
    // Once the replica stops, the user's calls fail instead of hanging.
    let user = c.nh(follower).get_node_user(ShardId(1)).unwrap();
    c.nh(follower)
        .stop_replica(ShardId(1), ReplicaId(follower))
        .unwrap();
    let s = c.nh(follower).get_noop_session(ShardId(1));
    assert!(matches!(
        user.propose(&s, b"x".to_vec(), TIMEOUT),
        Err(Error::ShardClosed)
    ));
    assert!(matches!(user.read_index(TIMEOUT), Err(Error::ShardClosed)));
}

// ---------------------------------------------------------------- snapshot races

/// Requested snapshots while automatic ones run after every entry: a
/// request either gets a snapshot at or past the applied index it saw, or
/// is refused because exactly that snapshot exists already; never a
/// spurious failure from two saves of the same index.
fn requested_snapshots_race_automatic_ones(kind: Option<Kind>) {
    let cfg = |i| Config {
        snapshot_entries: 1,
        ..config(1, i)
    };
    let s = Sms::new(kind.unwrap_or(Kind::Concurrent), 1);
    match kind {
        Some(_) => s.start(1, &[1], cfg(1)),
        None => s.c.start_shard_with(&[1], cfg),
    }
    let nh = s.c.nh(1);
    s.c.wait_leader(1);
    for i in 0..40 {
        propose(nh, 1, &format!("set k{i} {i}"));
        let applied = nh.get_node_host_info().shards[0].applied;
        match retry(|| {
            Ok(nh
                .request_snapshot(ShardId(1), SnapshotOption::default(), TIMEOUT)?
                .wait())
        }) {
            Ok(done) => assert!(done.index >= applied, "{} < {applied}", done.index),
            Err(Error::Rejected(msg)) => assert!(msg.contains("nothing new"), "{kind:?}: {msg}"),
            Err(e) => panic!("{kind:?}: {e}"),
        }
    }
}

#[test]
fn requested_snapshots_race_automatic_ones_regular() {
    requested_snapshots_race_automatic_ones(None);
}

#[test]
fn requested_snapshots_race_automatic_ones_concurrent() {
    requested_snapshots_race_automatic_ones(Some(Kind::Concurrent));
}
