//! Regression tests from a correctness audit of the engine: each test
//! failed before the fix it names (see the commit that added it).

mod common;

use std::io::{Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;
use longship::{
    Config, Error, NodeHost, RequestHandle, ShardId, SmEntry, SmError, SnapshotOption,
    StateMachine, StopFlag,
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
        TestCluster::members(&[1]),
        false,
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
        .find(|l| l.0 == ShardId(shard))
        .map_or(0, |l| l.3.0)
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
    if let Ok(index) = snap.wait() {
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
