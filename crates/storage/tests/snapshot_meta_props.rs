//! Property tests of the snapshot metadata format: arbitrary bytes never
//! make the decoder panic (with and without a valid checksum, so the body
//! decoder is reached), and every valid value round-trips.

mod snapshot_util;

use std::path::Path;

use longship_raft::{Index, Membership, ReplicaId, ShardId, SnapshotMeta, Term};
use longship_storage::snapshot::{
    ExternalFile, META_FILE_NAME, META_FORMAT_VERSION, META_MAGIC, SnapshotError, SnapshotInfo,
};
use proptest::prelude::*;
use snapshot_util::*;

/// A metadata file with a valid header and checksum around `body`.
fn framed(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&META_MAGIC);
    out.extend_from_slice(&META_FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(body);
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

fn arb_info() -> impl Strategy<Value = SnapshotInfo> {
    let name = "[a-zA-Z0-9_-][a-zA-Z0-9._-]{0,40}";
    (
        (
            1u64..,
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
            any::<bool>(),
        ),
        (any::<u64>(), any::<u64>(), any::<u32>(), any::<u32>()),
        prop::collection::btree_map(1u64..1000, "[a-z0-9:.]{0,30}", 0..5),
        prop::collection::btree_map(name, (any::<u64>(), any::<u32>()), 0..4),
        any::<u64>(),
    )
        .prop_filter_map(
            "reserved names",
            |(
                (index, term, on_disk, cc, witness),
                (shard, replica, ver, crc),
                voters,
                ext,
                size,
            )| {
                if ext.contains_key("snapshot.data") || ext.contains_key("snapshot.meta") {
                    return None;
                }
                let mut membership = Membership::with_voters(voters);
                membership.config_change_id = Index(cc);
                Some(SnapshotInfo {
                    shard: ShardId(shard),
                    replica: ReplicaId(replica),
                    meta: SnapshotMeta {
                        index: Index(index),
                        term: Term(term),
                        membership,
                        on_disk_index: Index(on_disk),
                        witness,
                        file_size: size,
                    },
                    data_version: ver,
                    data_size_bytes: size,
                    data_crc32c: crc,
                    external_files: ext
                        .into_iter()
                        .map(|(name, (size_bytes, crc32c))| ExternalFile {
                            name,
                            size_bytes,
                            crc32c,
                        })
                        .collect(),
                })
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        let _ = SnapshotInfo::decode(&bytes, Path::new("m"));
        let _ = SnapshotInfo::total_len_from_header(&bytes, Path::new("m"));
    }

    #[test]
    fn arbitrary_bodies_with_valid_checksum_never_panic(
        body in prop::collection::vec(any::<u8>(), 0..600)
    ) {
        match SnapshotInfo::decode(&framed(&body), Path::new("m")) {
            // Whatever decodes must encode back to the same bytes.
            Ok(info) => prop_assert_eq!(info.encode().unwrap(), framed(&body)),
            Err(e) => prop_assert!(e.is_corruption(), "{}", e),
        }
    }

    #[test]
    fn mutated_valid_bodies_never_panic(
        info in arb_info(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        cut in any::<prop::sample::Index>(),
        do_cut in any::<bool>(),
    ) {
        let full = info.encode().unwrap();
        let mut body = full[16..full.len() - 4].to_vec();
        for (at, b) in edits {
            let i = at.index(body.len());
            body[i] = b;
        }
        if do_cut {
            let n = cut.index(body.len() + 1);
            body.truncate(n);
        }
        if let Ok(decoded) = SnapshotInfo::decode(&framed(&body), Path::new("m")) {
            prop_assert_eq!(decoded.encode().unwrap(), framed(&body));
        }
    }

    #[test]
    fn valid_metadata_round_trips(info in arb_info()) {
        let bytes = info.encode().unwrap();
        prop_assert_eq!(SnapshotInfo::decode(&bytes, Path::new("m")).unwrap(), info);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Arbitrary metadata files inside a store: `info`, `open_snapshot` and
    /// `load_newest` report damage, never panic.
    #[test]
    fn arbitrary_metadata_files_in_a_store_are_reported(
        bytes in prop::collection::vec(any::<u8>(), 0..300),
        frame in any::<bool>(),
    ) {
        let fs = mem_fs();
        let store = open_store(&fs, Path::new("/s"));
        write_snapshot(&store, 5, b"good", &[]);
        write_snapshot(&store, 9, b"victim", &[]);
        let content = if frame { framed(&bytes) } else { bytes };
        fs.create(&store.snapshot_dir(Index(9)).join(META_FILE_NAME))
            .unwrap()
            .write_at(0, &content)
            .unwrap();
        match store.info(Index(9)) {
            Ok(_) => {}
            Err(e) => prop_assert!(
                e.is_corruption() || matches!(e, SnapshotError::EmptySnapshot { .. }),
                "{}", e
            ),
        }
        let _ = store.open_snapshot(Index(9));
        let loaded = store.load_newest().unwrap();
        prop_assert_eq!(loaded.info.meta.index, Index(5));
    }
}
