//! `NodeHost::get_node_host_info(_with)`: what each replica reports
//! (membership, pending membership change, catching up, role flags) and
//! the option to skip the log listing.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::*;
use longship::{Config, Index, NodeHost, NodeHostInfoOption, ReplicaId, ShardId, ShardInfo, Start};

const SHARD: u64 = 1;

fn info_of(nh: &NodeHost) -> ShardInfo {
    nh.get_node_host_info()
        .shards
        .into_iter()
        .find(|s| s.shard_id == ShardId(SHARD))
        .expect("the shard runs here")
}

#[test]
fn shard_info_reports_membership_roles_and_catching_up() {
    let c = TestCluster::new(4);
    c.start_shard(SHARD, &[1, 2, 3]);
    let leader = c.wait_leader(SHARD);
    c.propose(leader, SHARD, "set a 1");
    for h in 1..=3 {
        wait_until(&format!("host {h} caught up"), TIMEOUT, || {
            !info_of(c.nh(h)).catching_up
        });
        let s = info_of(c.nh(h));
        assert_eq!(
            s.membership.voters.keys().copied().collect::<Vec<_>>(),
            vec![ReplicaId(1), ReplicaId(2), ReplicaId(3)]
        );
        assert_eq!(s.membership.voters[&ReplicaId(h)], addr(h));
        assert_eq!(s.membership.config_change_id, s.config_change_id);
        assert!(!s.is_non_voting && !s.is_witness && !s.pending_config_change);
    }
    // A non-voting replica on host 4 reports itself so, and catches up.
    retry(|| {
        c.nh(leader)
            .request_add_non_voting(ShardId(SHARD), ReplicaId(4), addr(4), Index(0), TIMEOUT)?
            .wait()
    });
    c.start_replica_on(
        4,
        Start::Join,
        Config {
            is_non_voting: true,
            ..config(SHARD, 4)
        },
    );
    assert!(info_of(c.nh(4)).is_non_voting);
    wait_until("host 4 caught up", TIMEOUT, || {
        let s = info_of(c.nh(4));
        !s.catching_up && s.membership.non_votings.contains_key(&ReplicaId(4))
    });
    assert_eq!(c.read(4, SHARD, "get a"), b"1");

    // Log info is listed unless skipped.
    let full = c.nh(1).get_node_host_info();
    assert!(full.log_info_included);
    assert!(full.log_info.iter().any(|l| l.shard_id == ShardId(SHARD)));
    let light = c.nh(1).get_node_host_info_with(NodeHostInfoOption {
        skip_log_info: true,
    });
    assert!(!light.log_info_included);
    assert!(light.log_info.is_empty());
    assert_eq!(light.shards.len(), 1);
    assert_eq!(light.raft_address, addr(1));
}

#[test]
fn a_membership_change_not_yet_applied_is_pending_and_the_replica_catching_up() {
    let c = TestCluster::new(1);
    let gate_closed = Arc::new(AtomicBool::new(false));
    let blocked = Arc::new(AtomicBool::new(false));
    let (g, b) = (gate_closed.clone(), blocked.clone());
    c.nh(1)
        .start_replica(
            Start::New(TestCluster::members(&[1])),
            move |_, _| {
                let (g, b) = (g.clone(), b.clone());
                Box::new(HookedKv {
                    kv: Kv::default(),
                    hook: Arc::new(move |h| {
                        if matches!(h, Hook::Update(_)) && g.load(Ordering::SeqCst) {
                            b.store(true, Ordering::SeqCst);
                            // The state machine is slow until the test opens it.
                            while g.load(Ordering::SeqCst) {
                                std::thread::sleep(Duration::from_millis(1));
                            }
                        }
                    }),
                })
            },
            config(SHARD, 1),
        )
        .unwrap();
    c.wait_leader(SHARD);
    c.propose(1, SHARD, "set a 1");
    assert!(!info_of(c.nh(1)).pending_config_change);

    gate_closed.store(true, Ordering::SeqCst);
    let s = c.nh(1).get_noop_session(ShardId(SHARD));
    let write = c.nh(1).propose(&s, b"set b 2".to_vec(), TIMEOUT).unwrap();
    wait_until("the update is blocked", TIMEOUT, || {
        blocked.load(Ordering::SeqCst)
    });
    let change = c
        .nh(1)
        .request_add_non_voting(ShardId(SHARD), ReplicaId(2), addr(2), Index(0), TIMEOUT)
        .unwrap();
    // Committed (one voter) but not applied behind the blocked update.
    wait_until("the change is committed", TIMEOUT, || {
        let st = c.nh(1).raft_status(ShardId(SHARD)).unwrap();
        st.hard_state.commit > st.applied && st.last_index == st.hard_state.commit
    });
    let s1 = info_of(c.nh(1));
    assert!(s1.pending_config_change, "{s1:?}");
    assert!(s1.catching_up, "{s1:?}");
    assert!(s1.membership.non_votings.is_empty());

    gate_closed.store(false, Ordering::SeqCst);
    write.wait().unwrap();
    change.wait().unwrap();
    wait_until("the change is applied", TIMEOUT, || {
        let s = info_of(c.nh(1));
        !s.pending_config_change && !s.catching_up
    });
    let s2 = info_of(c.nh(1));
    assert_eq!(s2.membership.non_votings[&ReplicaId(2)], addr(2));
    assert!(s2.config_change_id > s1.config_change_id);
}
