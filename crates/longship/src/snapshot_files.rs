//! Files a state machine attaches to a snapshot ([`SnapshotFiles`]): how
//! they are stored in the snapshot and found again on recovery.
//!
//! Each attached file becomes an external file of the snapshot named
//! `sm-file-<id as 16 hex digits>` (the snapshot store checksums, fsyncs,
//! streams, exports and imports external files). Their ids and metadata
//! are recorded in one more external file, the file table
//! `longship-files`, written last; a snapshot without attached files has
//! neither. Format in `docs/formats.md` ("Attached files").

use std::collections::BTreeSet;
use std::io::Read;

use longship_raft::codec::{Decoder, Limits, put_bytes, put_uvarint};
use longship_storage::snapshot::{SnapshotError, SnapshotInfo, SnapshotSink, SnapshotStore};

use crate::error::Error;
use crate::sm::{
    SNAPSHOT_FILE_METADATA_MAX_BYTES, SNAPSHOT_FILES_MAX, SNAPSHOT_FILES_METADATA_MAX_BYTES,
    SnapshotFile, SnapshotFiles,
};

/// Name of the file table inside a snapshot directory.
pub(crate) const FILE_TABLE_NAME: &str = "longship-files";
/// First bytes of the file table.
const TABLE_MAGIC: &[u8; 4] = b"LSFT";
/// Version of the file table format.
const TABLE_VERSION: u32 = 1;
/// Largest file table read: every file's id and metadata length (at most
/// 20 bytes each) plus all the metadata.
const TABLE_MAX_BYTES: u64 =
    (8 + 10 + SNAPSHOT_FILES_MAX * 20 + SNAPSHOT_FILES_METADATA_MAX_BYTES) as u64;

/// The name the attached file `file_id` has inside a snapshot directory.
pub(crate) fn stored_name(file_id: u64) -> String {
    format!("sm-file-{file_id:016x}")
}

/// The file table's bytes: magic, version, count, then per file its id
/// and its metadata (length-prefixed), in the order the files were added.
fn encode_table(files: &[SnapshotFile]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(TABLE_MAGIC);
    out.extend_from_slice(&TABLE_VERSION.to_le_bytes());
    put_uvarint(&mut out, files.len() as u64);
    for f in files {
        put_uvarint(&mut out, f.file_id);
        put_bytes(&mut out, &f.metadata);
    }
    out
}

/// Decodes a file table (untrusted: bounded, never panics): `(id,
/// metadata)` per file.
fn decode_table(buf: &[u8]) -> Result<Vec<(u64, Vec<u8>)>, String> {
    let mut d = Decoder::new(buf, Limits::default());
    let magic = d.raw(4).map_err(|e| format!("magic: {e}"))?;
    if magic != TABLE_MAGIC {
        return Err("bad magic".into());
    }
    let version = d.u32_le().map_err(|e| format!("version: {e}"))?;
    if version != TABLE_VERSION {
        return Err(format!("unsupported version {version}"));
    }
    let n = d
        .count("snapshot files", SNAPSHOT_FILES_MAX as u64)
        .map_err(|e| format!("count: {e}"))?;
    let mut out = Vec::with_capacity(n);
    let mut ids = BTreeSet::new();
    let mut total = 0usize;
    for _ in 0..n {
        let id = d.uvarint().map_err(|e| format!("file id: {e}"))?;
        if !ids.insert(id) {
            return Err(format!("file id {id} listed twice"));
        }
        let metadata = d
            .bytes_named("file metadata", SNAPSHOT_FILE_METADATA_MAX_BYTES as u64)
            .map_err(|e| format!("metadata of file {id}: {e}"))?;
        total += metadata.len();
        if total > SNAPSHOT_FILES_METADATA_MAX_BYTES {
            return Err("more metadata than a snapshot may carry".into());
        }
        out.push((id, metadata.to_vec()));
    }
    d.finish().map_err(|e| e.to_string())?;
    Ok(out)
}

/// Copies the files a save attached into `sink`, then the file table.
/// Nothing for a save that attached none.
pub(crate) fn attach(sink: &mut SnapshotSink, files: SnapshotFiles) -> Result<(), Error> {
    let files = files.into_files();
    if files.is_empty() {
        return Ok(());
    }
    for f in &files {
        sink.copy_external_file(&stored_name(f.file_id), &f.path)?;
    }
    let table = encode_table(&files);
    sink.write_external_file(FILE_TABLE_NAME, &mut &table[..])?;
    Ok(())
}

/// The attached files of the snapshot `info` in `store`, with their paths
/// inside the snapshot directory (empty for a snapshot without any). A
/// damaged table, or a file it lists that the snapshot lacks, is
/// `Corruption`. The files' checksums are the store's business
/// (`SnapshotStore::verify`), checked before a recovery.
pub(crate) fn attached(
    store: &SnapshotStore,
    info: &SnapshotInfo,
) -> Result<Vec<SnapshotFile>, Error> {
    if !info
        .external_files
        .iter()
        .any(|f| f.name == FILE_TABLE_NAME)
    {
        return Ok(Vec::new());
    }
    let index = info.meta.index;
    let dir = store.snapshot_dir(index);
    let corrupt = |reason: String| {
        Error::Snapshot(SnapshotError::Corruption {
            file: dir.join(FILE_TABLE_NAME),
            offset: 0,
            reason,
        })
    };
    let mut buf = Vec::new();
    store
        .open_external(index, FILE_TABLE_NAME)?
        .take(TABLE_MAX_BYTES + 1)
        .read_to_end(&mut buf)?;
    if buf.len() as u64 > TABLE_MAX_BYTES {
        return Err(corrupt(format!(
            "file table larger than {TABLE_MAX_BYTES} bytes"
        )));
    }
    let table = decode_table(&buf).map_err(|e| corrupt(format!("file table: {e}")))?;
    let mut out = Vec::with_capacity(table.len());
    for (file_id, metadata) in table {
        let name = stored_name(file_id);
        if !info.external_files.iter().any(|f| f.name == name) {
            return Err(corrupt(format!(
                "file table lists file {file_id}, which the snapshot lacks ({name})"
            )));
        }
        out.push(SnapshotFile {
            file_id,
            path: dir.join(name),
            metadata,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(id: u64, metadata: &[u8]) -> SnapshotFile {
        SnapshotFile {
            file_id: id,
            path: "unused".into(),
            metadata: metadata.to_vec(),
        }
    }

    #[test]
    fn tables_round_trip() {
        let files = vec![
            file(7, b"sst level 0"),
            file(0, b""),
            file(u64::MAX, &[0xff; 300]),
        ];
        let back = decode_table(&encode_table(&files)).unwrap();
        let want: Vec<(u64, Vec<u8>)> = files
            .iter()
            .map(|f| (f.file_id, f.metadata.clone()))
            .collect();
        assert_eq!(back, want);
        assert_eq!(decode_table(&encode_table(&[])).unwrap(), vec![]);
        assert_eq!(stored_name(255), "sm-file-00000000000000ff");
        longship_storage::snapshot::validate_external_name(&stored_name(u64::MAX)).unwrap();
        longship_storage::snapshot::validate_external_name(FILE_TABLE_NAME).unwrap();
    }

    #[test]
    fn damaged_tables_are_errors_and_never_panic() {
        let good = encode_table(&[file(1, b"a"), file(2, b"bb")]);
        for cut in 0..good.len() {
            assert!(decode_table(&good[..cut]).is_err(), "prefix {cut}");
        }
        let mut dup = encode_table(&[file(1, b"a"), file(1, b"b")]);
        assert!(decode_table(&dup).unwrap_err().contains("twice"));
        dup.push(0);
        assert!(decode_table(&dup).is_err());
        let mut trailing = good.clone();
        trailing.push(0);
        assert!(decode_table(&trailing).is_err());
        // A count far beyond the bytes present is refused before any loop.
        let mut big = TABLE_MAGIC.to_vec();
        big.extend_from_slice(&TABLE_VERSION.to_le_bytes());
        put_uvarint(&mut big, 1 << 40);
        assert!(decode_table(&big).is_err());
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for i in 0..20_000 {
            let mut m = good.clone();
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let at = (seed as usize) % m.len();
            m[at] = (seed >> 32) as u8;
            if i % 3 == 0 {
                m.truncate((seed >> 40) as usize % (m.len() + 1));
            }
            let _ = decode_table(&m);
        }
    }
}
