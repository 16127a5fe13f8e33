//! The metadata file of a snapshot (`snapshot.meta`) and its byte format.
//!
//! The format is described byte by byte in `docs/formats.md`, section
//! "Snapshot files". Decoding takes untrusted bytes: every length is bounded
//! before anything is allocated, and nothing panics.

use std::collections::BTreeSet;
use std::path::Path;

use longship_raft::codec;
use longship_raft::{ReplicaId, ShardId, SnapshotMeta};

use super::error::{Result, SnapshotError};
use super::{DATA_FILE_NAME, META_FILE_NAME};

/// First eight bytes of every metadata file.
pub const META_MAGIC: [u8; 8] = *b"LSHPSNAP";
/// The metadata format version this code writes and reads.
pub const META_FORMAT_VERSION: u16 = 1;
/// Bytes before the body: magic, version, reserved, body length.
pub const META_HEADER_BYTES: usize = 16;
/// Bytes after the body: the CRC32C.
pub const META_TRAILER_BYTES: usize = 4;
/// Largest body accepted (a membership of many thousand replicas fits easily).
pub const META_BODY_MAX_BYTES: u32 = 16 << 20;
/// Most external files one snapshot may list.
pub const EXTERNAL_FILES_MAX: u32 = 4096;
/// Longest external file name, in bytes.
pub const EXTERNAL_NAME_MAX_BYTES: usize = 255;

/// Smallest encoding of one external file entry: name length, a one-byte
/// name, size and checksum. Bounds the count before allocating.
const EXTERNAL_ENTRY_MIN_BYTES: usize = 2 + 1 + 8 + 4;

/// An extra file a snapshot carries next to its data file (for example the
/// files of an on-disk state machine).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExternalFile {
    /// File name inside the snapshot directory; see [`validate_external_name`].
    pub name: String,
    /// Length in bytes.
    pub size_bytes: u64,
    /// CRC32C of the whole file.
    pub crc32c: u32,
}

/// Everything the metadata file of a snapshot records.
///
/// Invariants (checked by [`SnapshotInfo::decode`] and before encoding):
/// `meta.index` is not 0; `meta.file_size == data_size_bytes`; external file
/// names are valid and unique.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotInfo {
    /// The shard the snapshot belongs to.
    pub shard: ShardId,
    /// The replica whose store holds it.
    pub replica: ReplicaId,
    /// Raft's view: index, term, membership (with its config-change index),
    /// on-disk index, witness flag and data size.
    pub meta: SnapshotMeta,
    /// Version of the state machine's data format, opaque to the store.
    pub data_version: u32,
    /// Length of the data file in bytes.
    pub data_size_bytes: u64,
    /// CRC32C of the whole data file.
    pub data_crc32c: u32,
    /// Extra files, in the order they were added.
    pub external_files: Vec<ExternalFile>,
}

/// Checks that `name` may be used for an external file: 1 to 255 bytes of
/// ASCII letters, digits, `.`, `_` and `-`, not starting with `.`, and not a
/// name the store uses itself.
pub fn validate_external_name(name: &str) -> Result<()> {
    let ok_chars = name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-');
    if name.is_empty()
        || name.len() > EXTERNAL_NAME_MAX_BYTES
        || !ok_chars
        || name.starts_with('.')
        || name == DATA_FILE_NAME
        || name == META_FILE_NAME
    {
        return Err(SnapshotError::InvalidArgument(format!(
            "invalid external file name {name:?}"
        )));
    }
    Ok(())
}

impl SnapshotInfo {
    /// Checks the invariants listed on the type.
    pub(crate) fn validate(&self) -> Result<()> {
        self.check().map_err(SnapshotError::InvalidArgument)
    }

    fn check(&self) -> std::result::Result<(), String> {
        if self.meta.index.get() == 0 {
            return Err("snapshot index is 0".into());
        }
        if self.meta.file_size != self.data_size_bytes {
            return Err(format!(
                "raft metadata says {} data bytes, file table says {}",
                self.meta.file_size, self.data_size_bytes
            ));
        }
        let mut names = BTreeSet::new();
        for f in &self.external_files {
            validate_external_name(&f.name).map_err(|e| e.to_string())?;
            if !names.insert(f.name.as_str()) {
                return Err(format!("external file {:?} listed twice", f.name));
            }
        }
        if self.external_files.len() > EXTERNAL_FILES_MAX as usize {
            return Err(format!(
                "{} external files, at most {EXTERNAL_FILES_MAX}",
                self.external_files.len()
            ));
        }
        Ok(())
    }

    /// Encodes the metadata file: header, body, CRC32C.
    ///
    /// Fails with `InvalidArgument` if the invariants of the type do not hold.
    pub fn encode(&self) -> Result<Vec<u8>> {
        self.validate()?;
        let mut body = Vec::with_capacity(256);
        body.extend_from_slice(&codec::ENTRY_FORMAT_VERSION.to_le_bytes());
        body.extend_from_slice(&self.shard.get().to_le_bytes());
        body.extend_from_slice(&self.replica.get().to_le_bytes());
        body.extend_from_slice(&self.data_version.to_le_bytes());
        body.extend_from_slice(&self.data_size_bytes.to_le_bytes());
        body.extend_from_slice(&self.data_crc32c.to_le_bytes());
        let raft_meta = encode_raft_meta(&self.meta);
        put_len_u32(&mut body, raft_meta.len())?;
        body.extend_from_slice(&raft_meta);
        put_len_u32(&mut body, self.external_files.len())?;
        for f in &self.external_files {
            // check() bounded the name to 255 bytes.
            body.extend_from_slice(&(f.name.len() as u16).to_le_bytes());
            body.extend_from_slice(f.name.as_bytes());
            body.extend_from_slice(&f.size_bytes.to_le_bytes());
            body.extend_from_slice(&f.crc32c.to_le_bytes());
        }
        if body.len() > META_BODY_MAX_BYTES as usize {
            return Err(SnapshotError::InvalidArgument(format!(
                "snapshot metadata of {} bytes exceeds {META_BODY_MAX_BYTES}",
                body.len()
            )));
        }
        let mut out = Vec::with_capacity(META_HEADER_BYTES + body.len() + META_TRAILER_BYTES);
        out.extend_from_slice(&META_MAGIC);
        out.extend_from_slice(&META_FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
        out.extend_from_slice(&(body.len() as u32).to_le_bytes());
        out.extend_from_slice(&body);
        let crc = crc32c::crc32c(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        Ok(out)
    }

    /// Reads the body length from the first [`META_HEADER_BYTES`] of a
    /// metadata file, checking magic, version and bound. Lets a reader size
    /// its buffer before reading the rest.
    pub fn total_len_from_header(header: &[u8], file: &Path) -> Result<u64> {
        let corrupt = |offset: u64, reason: String| SnapshotError::Corruption {
            file: file.to_path_buf(),
            offset,
            reason,
        };
        if header.len() < META_HEADER_BYTES {
            return Err(corrupt(
                0,
                format!(
                    "metadata file of {} bytes is shorter than its {META_HEADER_BYTES}-byte header",
                    header.len()
                ),
            ));
        }
        if header[0..8] != META_MAGIC {
            return Err(corrupt(0, "bad magic".into()));
        }
        let version = u16::from_le_bytes([header[8], header[9]]);
        if version != META_FORMAT_VERSION {
            return Err(corrupt(
                8,
                format!("unsupported metadata format version {version}"),
            ));
        }
        if header[10..12] != [0, 0] {
            return Err(corrupt(10, "reserved bytes are not zero".into()));
        }
        let body_len = u32::from_le_bytes([header[12], header[13], header[14], header[15]]);
        if body_len > META_BODY_MAX_BYTES {
            return Err(corrupt(
                12,
                format!("body length {body_len} exceeds {META_BODY_MAX_BYTES}"),
            ));
        }
        Ok((META_HEADER_BYTES + body_len as usize + META_TRAILER_BYTES) as u64)
    }

    /// Decodes a whole metadata file. `file` names it in errors.
    ///
    /// Errors: `EmptySnapshot` for zero bytes or index 0, `ChecksumMismatch`
    /// when the CRC does not match, `Corruption` for anything else that is
    /// wrong. Never panics, whatever the bytes.
    pub fn decode(bytes: &[u8], file: &Path) -> Result<SnapshotInfo> {
        if bytes.is_empty() {
            return Err(SnapshotError::EmptySnapshot {
                path: file.to_path_buf(),
            });
        }
        let total = Self::total_len_from_header(bytes, file)?;
        let corrupt = |offset: usize, reason: String| SnapshotError::Corruption {
            file: file.to_path_buf(),
            offset: offset as u64,
            reason,
        };
        if bytes.len() as u64 != total {
            return Err(corrupt(
                bytes.len().min(total as usize),
                format!(
                    "metadata file is {} bytes, header says {total}",
                    bytes.len()
                ),
            ));
        }
        let crc_at = bytes.len() - META_TRAILER_BYTES;
        let expected = u32::from_le_bytes([
            bytes[crc_at],
            bytes[crc_at + 1],
            bytes[crc_at + 2],
            bytes[crc_at + 3],
        ]);
        let actual = crc32c::crc32c(&bytes[..crc_at]);
        if expected != actual {
            return Err(SnapshotError::ChecksumMismatch {
                file: file.to_path_buf(),
                expected,
                actual,
            });
        }
        let mut r = Cursor {
            bytes: &bytes[..crc_at],
            pos: META_HEADER_BYTES,
        };
        let info = Self::decode_body(&mut r).map_err(|(at, reason)| corrupt(at, reason))?;
        if r.pos != crc_at {
            return Err(corrupt(r.pos, "trailing bytes after the body".into()));
        }
        if info.meta.index.get() == 0 {
            return Err(SnapshotError::EmptySnapshot {
                path: file.to_path_buf(),
            });
        }
        info.check()
            .map_err(|reason| corrupt(META_HEADER_BYTES, reason))?;
        Ok(info)
    }

    fn decode_body(r: &mut Cursor<'_>) -> std::result::Result<SnapshotInfo, (usize, String)> {
        let codec_at = r.pos;
        let codec_version = r.u32()?;
        if codec_version != codec::ENTRY_FORMAT_VERSION {
            return Err((
                codec_at,
                format!("unsupported raft element encoding version {codec_version}"),
            ));
        }
        let shard = ShardId(r.u64()?);
        let replica = ReplicaId(r.u64()?);
        let data_version = r.u32()?;
        let data_size_bytes = r.u64()?;
        let data_crc32c = r.u32()?;
        let raft_len = r.u32()? as usize;
        let raft_at = r.pos;
        let raft_bytes = r.take(raft_len)?;
        let meta = decode_raft_meta(raft_bytes).map_err(|e| (raft_at, e))?;
        let count_at = r.pos;
        let count = r.u32()?;
        if count > EXTERNAL_FILES_MAX || count as usize > r.remaining() / EXTERNAL_ENTRY_MIN_BYTES {
            return Err((
                count_at,
                format!("external file count {count} out of bounds"),
            ));
        }
        let mut external_files = Vec::with_capacity(count as usize);
        for _ in 0..count {
            let name_at = r.pos;
            let name_len = r.u16()? as usize;
            if name_len == 0 || name_len > EXTERNAL_NAME_MAX_BYTES {
                return Err((name_at, format!("external name length {name_len}")));
            }
            let name = std::str::from_utf8(r.take(name_len)?)
                .map_err(|_| (name_at, "external name is not UTF-8".to_string()))?
                .to_string();
            let size_bytes = r.u64()?;
            let crc32c = r.u32()?;
            external_files.push(ExternalFile {
                name,
                size_bytes,
                crc32c,
            });
        }
        Ok(SnapshotInfo {
            shard,
            replica,
            meta,
            data_version,
            data_size_bytes,
            data_crc32c,
            external_files,
        })
    }
}

fn put_len_u32(out: &mut Vec<u8>, len: usize) -> Result<()> {
    let len = u32::try_from(len)
        .map_err(|_| SnapshotError::InvalidArgument(format!("length {len} exceeds u32")))?;
    out.extend_from_slice(&len.to_le_bytes());
    Ok(())
}

fn encode_raft_meta(meta: &SnapshotMeta) -> Vec<u8> {
    let mut buf = Vec::with_capacity(128);
    codec::encode_snapshot_meta(meta, &mut buf);
    buf
}

fn decode_raft_meta(bytes: &[u8]) -> std::result::Result<SnapshotMeta, String> {
    codec::decode_exact(
        bytes,
        &codec::Limits::default(),
        codec::decode_snapshot_meta,
    )
    .map_err(|e| format!("raft snapshot metadata: {e}"))
}

/// A bounds-checked little-endian reader; errors carry the offset.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    fn take(&mut self, n: usize) -> std::result::Result<&'a [u8], (usize, String)> {
        if n > self.remaining() {
            return Err((
                self.pos,
                format!("needs {n} bytes, {} left in the body", self.remaining()),
            ));
        }
        let s = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn array<const N: usize>(&mut self) -> std::result::Result<[u8; N], (usize, String)> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn u16(&mut self) -> std::result::Result<u16, (usize, String)> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    fn u32(&mut self) -> std::result::Result<u32, (usize, String)> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> std::result::Result<u64, (usize, String)> {
        Ok(u64::from_le_bytes(self.array()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use longship_raft::{Index, Membership, Term};
    use std::path::PathBuf;

    fn sample() -> SnapshotInfo {
        let mut membership = Membership::with_voters([(1, "a1"), (2, "a2")]);
        membership.config_change_id = Index(7);
        SnapshotInfo {
            shard: ShardId(3),
            replica: ReplicaId(2),
            meta: SnapshotMeta {
                index: Index(100),
                term: Term(4),
                membership,
                file_size: 11,
                ..SnapshotMeta::default()
            },
            data_version: 2,
            data_size_bytes: 11,
            data_crc32c: 0xdead_beef,
            external_files: vec![ExternalFile {
                name: "sst-1".into(),
                size_bytes: 5,
                crc32c: 9,
            }],
        }
    }

    #[test]
    fn round_trip() {
        let info = sample();
        let bytes = info.encode().unwrap();
        let path = PathBuf::from("m");
        assert_eq!(SnapshotInfo::decode(&bytes, &path).unwrap(), info);
        assert_eq!(
            SnapshotInfo::total_len_from_header(&bytes, &path).unwrap(),
            bytes.len() as u64
        );
    }

    #[test]
    fn every_bit_flip_is_detected() {
        let bytes = sample().encode().unwrap();
        let path = PathBuf::from("m");
        for i in 0..bytes.len() * 8 {
            let mut b = bytes.clone();
            b[i / 8] ^= 1 << (i % 8);
            let err = SnapshotInfo::decode(&b, &path).unwrap_err();
            assert!(err.is_corruption(), "bit {i}: {err}");
        }
    }

    #[test]
    fn invariants_are_enforced_on_encode() {
        let mut info = sample();
        info.data_size_bytes = 12;
        assert!(info.encode().is_err());
        let mut info = sample();
        info.external_files[0].name = "../x".into();
        assert!(info.encode().is_err());
        let mut info = sample();
        info.meta.index = Index(0);
        assert!(info.encode().is_err());
    }

    #[test]
    fn empty_input_is_empty_snapshot() {
        let err = SnapshotInfo::decode(&[], Path::new("m")).unwrap_err();
        assert!(matches!(err, SnapshotError::EmptySnapshot { .. }));
    }
}
