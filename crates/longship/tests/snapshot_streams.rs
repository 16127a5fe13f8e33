//! Snapshot streams a host accepts at once are bounded in all and per
//! sending host, so that one peer cannot take every slot.

mod common;

use common::*;
use longship::{Index, ReplicaId, ShardId, Term};
use longship_raft::SnapshotMeta;
use longship_storage::snapshot::SnapshotInfo;
use longship_transport::{SnapshotChunk, Transport};

/// The first chunk of a snapshot stream to replica 2 of `shard`, as if
/// replica `from` (a member, on host `from`) streamed it.
fn first_chunk(c: &TestCluster, shard: u64, from: u64) -> SnapshotChunk {
    let meta = SnapshotMeta {
        index: Index(1_000_000),
        term: Term(1),
        membership: longship_raft::Membership {
            voters: TestCluster::members(&[1, 2, 3]),
            ..Default::default()
        },
        ..SnapshotMeta::default()
    };
    let info = SnapshotInfo {
        shard: ShardId(shard),
        replica: ReplicaId(2),
        meta,
        data_version: 1,
        data_size_bytes: 0,
        data_crc32c: 0,
        external_files: Vec::new(),
    };
    SnapshotChunk {
        deployment_id: c.host_config(2).deployment_id,
        shard_id: ShardId(shard),
        to: ReplicaId(2),
        from: ReplicaId(from),
        index: Index(1_000_000),
        term: Term(1),
        chunk_id: 0,
        info: info.encode().unwrap(),
        file_name: String::new(),
        offset: 0,
        data: Vec::new(),
        last: false,
        message: Vec::new(),
    }
}

#[test]
fn one_peer_cannot_take_every_snapshot_stream_slot() {
    const SHARDS: u64 = 20;
    let c = TestCluster::new(3);
    for shard in 1..=SHARDS {
        c.start_shard(shard, &[1, 2, 3]);
    }
    let side = c.net.transport("side-door:1");
    let mut accepted = 0;
    for shard in 1..=SHARDS {
        if side
            .send_snapshot_chunk(&addr(2), first_chunk(&c, shard, 1))
            .is_ok()
        {
            accepted += 1;
        }
    }
    assert_eq!(accepted, 16, "streams from host 1 held at once");
    // Another member's host still gets a slot.
    side.send_snapshot_chunk(&addr(2), first_chunk(&c, SHARDS, 3))
        .expect("a stream from host 3 is refused");
}
