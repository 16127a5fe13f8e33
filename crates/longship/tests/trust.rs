//! Who a NodeHost believes: a stranger claiming to be a replica of a shard
//! gets nothing sent to it.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use longship_raft::{Message, MessageBatch, MessageType, ReplicaId, ShardId, Term};
use longship_transport::{MessageHandler, SnapshotChunk, Transport as _};

/// Counts what reaches an address of the test's own.
#[derive(Default)]
struct Listener {
    batches: Mutex<Vec<MessageBatch>>,
}

impl MessageHandler for Listener {
    fn handle_batch(&self, batch: MessageBatch) {
        self.batches.lock().unwrap().push(batch);
    }
    fn handle_snapshot_chunk(&self, _: SnapshotChunk) -> bool {
        false
    }
    fn handle_unreachable(&self, _: &str, _: &[(ShardId, ReplicaId)]) {}
}

#[test]
fn a_stranger_posing_as_a_replica_gets_no_traffic() {
    let c = TestCluster::new(3);
    c.start_shard(1, &[1, 2, 3]);
    let leader = c.wait_leader(1);
    // Every member applied the membership (it is known by then).
    for h in 1..=3 {
        wait_until("membership applied", TIMEOUT, || {
            c.nh(h).stale_read(ShardId(1), b"count").is_ok()
        });
    }
    let evil = "evil:1";
    let listener = Arc::new(Listener::default());
    let t = c.net.transport(evil);
    t.start(listener.clone()).unwrap();
    // Replica 9 is no member; it asks for (pre-)votes and claims to lead a
    // later term, which members answer when they take the message at all.
    let term = c
        .nh(leader)
        .raft_status(ShardId(1))
        .unwrap()
        .hard_state
        .term;
    for to in 1..=3u64 {
        for msg_type in [
            MessageType::RequestPreVote,
            MessageType::RequestVote,
            MessageType::Heartbeat,
        ] {
            let m = Message {
                term: Term(term.0 + 1),
                log_index: longship_raft::Index(1_000_000),
                log_term: Term(term.0),
                ..Message::new(msg_type, ShardId(1), ReplicaId(to), ReplicaId(9))
            };
            t.send(
                &addr(to),
                MessageBatch {
                    deployment_id: longship::NodeHostConfig::default().deployment_id,
                    source_address: evil.into(),
                    bin_ver: longship_raft::MESSAGE_BATCH_VERSION,
                    messages: vec![m],
                },
            )
            .unwrap();
        }
    }
    // Long enough for every host to step the requests and send what it
    // would send (a tick is 5 ms here): nothing may come to the stranger.
    std::thread::sleep(Duration::from_millis(300));
    // The shard still works.
    c.propose(leader, 1, "set a 1");
    assert!(
        listener.batches.lock().unwrap().is_empty(),
        "a host sent traffic to an address learnt from a non-member: {:?}",
        listener.batches.lock().unwrap()
    );
}

#[test]
fn a_nodehost_directory_is_refused_to_another_address_or_deployment() {
    let dir = tempfile::tempdir().unwrap();
    let net = longship_transport::MemNetwork::new();
    let start = |address: &str, deployment_id: u64, reassign: bool| {
        longship::NodeHost::builder(longship::NodeHostConfig {
            node_host_dir: dir.path().join("nh"),
            raft_address: address.into(),
            deployment_id,
            reassign_directory: reassign,
            ..longship::NodeHostConfig::default()
        })
        .transport(Arc::new(net.transport(address)))
        .build()
    };
    start("owner-a:1", 5, false).unwrap().close();
    let err = start("owner-b:1", 5, false).err().expect("refused");
    assert!(
        err.to_string()
            .contains("belongs to raft address owner-a:1"),
        "{err}"
    );
    assert!(start("owner-a:1", 6, false).is_err(), "another deployment");
    start("owner-a:1", 5, false).unwrap().close();
    // Moved on purpose: the new owner is recorded.
    start("owner-b:1", 5, true).unwrap().close();
    start("owner-b:1", 5, false).unwrap().close();
}

#[test]
fn a_replica_s_inbound_queue_is_bounded_in_bytes() {
    use std::sync::atomic::Ordering;
    let dir = tempfile::tempdir().unwrap();
    let net = longship_transport::MemNetwork::new();
    // Manual mode: nothing drains the queue while the test fills it.
    let nh = longship::NodeHost::builder(longship::NodeHostConfig {
        node_host_dir: dir.path().join("nh"),
        raft_address: "bytes-1:1".into(),
        max_inbound_queue_bytes: 4096,
        ..longship::NodeHostConfig::default()
    })
    .transport(Arc::new(net.transport("bytes-1:1")))
    .manual()
    .build()
    .unwrap();
    nh.start_replica(
        longship::Start::New([(ReplicaId(1), "bytes-1:1".to_string())].into()),
        |_, _| Box::new(Kv::default()),
        config(1, 1),
    )
    .unwrap();
    let side = net.transport("bytes-side:1");
    let before = nh.metrics().messages_dropped.load(Ordering::Relaxed);
    // Twenty messages of about 1 KiB each: about four fit.
    for i in 0..20u64 {
        let m = Message {
            term: Term(1),
            context: i,
            entries: vec![longship_raft::Entry {
                term: Term(1),
                index: longship_raft::Index(i + 1),
                cmd: vec![7u8; 1000].into(),
                ..longship_raft::Entry::default()
            }],
            ..Message::new(
                MessageType::ReadIndex,
                ShardId(1),
                ReplicaId(1),
                ReplicaId(1),
            )
        };
        side.send(
            "bytes-1:1",
            MessageBatch {
                deployment_id: longship::NodeHostConfig::default().deployment_id,
                source_address: "bytes-side:1".into(),
                bin_ver: longship_raft::MESSAGE_BATCH_VERSION,
                messages: vec![m],
            },
        )
        .unwrap();
    }
    let dropped = nh.metrics().messages_dropped.load(Ordering::Relaxed) - before;
    assert!(
        (14..=17).contains(&dropped),
        "{dropped} of 20 messages of ~1 KiB dropped with a 4 KiB queue"
    );
    nh.close();
}
