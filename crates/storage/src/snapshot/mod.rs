//! Snapshot files: one [`SnapshotStore`] per replica directory.
//!
//! A snapshot is a directory named by its index, holding the state machine's
//! data file, optional external files and a metadata file:
//!
//! ```text
//! <root>/snapshot-<shard>-<replica>/         one store (see replica_dir_name)
//!     snapshot-00000000000003e8/              a committed snapshot at index 1000
//!         snapshot.data                       the state machine's data
//!         snapshot.meta                       SnapshotInfo: ids, raft metadata, checksums
//!         <external files>                    optional, named by the state machine
//!     snapshot-00000000000007d0.tmp-3/        being written (removed when the store opens)
//!     snapshot-00000000000001f4.del-1/        being removed (removed when the store opens)
//! ```
//!
//! Durability: a snapshot is written under a temporary name, every file is
//! fsynced, then the temporary directory, then it is renamed to its final
//! name and the store directory is fsynced. So after a crash a final name
//! either holds a complete snapshot or is absent; temporary directories left
//! by a crash are deleted when the store is opened. Checksums (CRC32C) cover
//! the metadata file and every data and external file; the metadata file
//! records the others' sizes and checksums.
//!
//! The byte format of the metadata file is in `docs/formats.md`.

mod error;
mod io;
mod meta;
mod receiver;
mod sink;
mod staging;
mod store;
mod transfer;

pub use error::{Result, SkippedSnapshot, SnapshotError};
pub use io::SnapshotReader;
pub use meta::{
    EXTERNAL_FILES_MAX, EXTERNAL_NAME_MAX_BYTES, ExternalFile, META_BODY_MAX_BYTES,
    META_FORMAT_VERSION, META_HEADER_BYTES, META_MAGIC, META_TRAILER_BYTES, SnapshotInfo,
    validate_external_name,
};
pub use receiver::SnapshotReceiver;
pub use sink::SnapshotSink;
pub use store::{LoadedSnapshot, SnapshotStore, Verify};

use longship_raft::{Index, ReplicaId, ShardId};

/// Name of the state machine's data file inside a snapshot directory.
pub const DATA_FILE_NAME: &str = "snapshot.data";
/// Name of the metadata file inside a snapshot directory.
pub const META_FILE_NAME: &str = "snapshot.meta";

const SNAPSHOT_DIR_PREFIX: &str = "snapshot-";
const INDEX_HEX_DIGITS: usize = 16;
const TEMP_MARKER: &str = ".tmp-";
const DELETE_MARKER: &str = ".del-";

/// Name of the store directory of one replica: `snapshot-<shard>-<replica>`
/// (decimal ids).
pub fn replica_dir_name(shard: ShardId, replica: ReplicaId) -> String {
    format!("{SNAPSHOT_DIR_PREFIX}{shard}-{replica}")
}

/// Name of the directory of the committed snapshot at `index`:
/// `snapshot-` and 16 lowercase hex digits, so names sort by index.
pub fn snapshot_dir_name(index: Index) -> String {
    format!("{SNAPSHOT_DIR_PREFIX}{:016x}", index.get())
}

/// The index a committed snapshot directory is named by, or `None` if `name`
/// is not exactly such a name.
pub fn parse_snapshot_dir_name(name: &str) -> Option<Index> {
    let hex = name.strip_prefix(SNAPSHOT_DIR_PREFIX)?;
    let ok = hex.len() == INDEX_HEX_DIGITS
        && hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if !ok {
        return None;
    }
    u64::from_str_radix(hex, 16).ok().map(Index)
}

fn temp_dir_name(index: Index, id: u64) -> String {
    format!("{}{TEMP_MARKER}{id}", snapshot_dir_name(index))
}

fn delete_dir_name(index: Index, id: u64) -> String {
    format!("{}{DELETE_MARKER}{id}", snapshot_dir_name(index))
}

/// Whether `name` is a temporary or half-deleted snapshot directory, left
/// behind by a crash, that opening a store removes.
fn is_leftover_name(name: &str) -> bool {
    name.starts_with(SNAPSHOT_DIR_PREFIX)
        && (name.contains(TEMP_MARKER) || name.contains(DELETE_MARKER))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_can_move_between_threads() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<SnapshotStore>();
        send_sync::<SnapshotSink>();
        send_sync::<SnapshotReader>();
        send_sync::<SnapshotReceiver>();
        send_sync::<SnapshotError>();
    }

    #[test]
    fn dir_names_round_trip_and_sort() {
        let a = snapshot_dir_name(Index(9));
        let b = snapshot_dir_name(Index(0x10));
        assert!(a < b);
        assert_eq!(parse_snapshot_dir_name(&a), Some(Index(9)));
        assert_eq!(
            parse_snapshot_dir_name(&snapshot_dir_name(Index(u64::MAX))),
            Some(Index(u64::MAX))
        );
        assert_eq!(
            parse_snapshot_dir_name("snapshot-0000000000000009.tmp-1"),
            None
        );
        assert_eq!(parse_snapshot_dir_name("snapshot-000000000000000A"), None);
        assert_eq!(parse_snapshot_dir_name("snapshot-+00000000000000a"), None);
        assert!(is_leftover_name(&temp_dir_name(Index(3), 1)));
        assert!(is_leftover_name(&delete_dir_name(Index(3), 1)));
        assert!(!is_leftover_name(&a));
    }
}
