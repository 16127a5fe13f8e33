//! TCP framing (see docs/formats.md, "Transport frames").
//!
//! Every frame is a fixed 32-byte header followed by a body:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 4 | magic `LSTP` |
//! | 4 | 1 | format version (1) |
//! | 5 | 1 | frame type (1 batch, 2 snapshot chunk, 3 snapshot ack) |
//! | 6 | 2 | flags (0) |
//! | 8 | 8 | deployment id (LE) |
//! | 16 | 4 | body length (LE) |
//! | 20 | 4 | CRC32C of the body (LE) |
//! | 24 | 4 | CRC32C of bytes 0..24 (LE) |
//! | 28 | 4 | reserved (0) |
//!
//! A reader checks the whole header (magic, header CRC, version, type,
//! deployment id, length within the limit) before it allocates the body.

use longship_raft::codec::{DecodeError, Decoder, Limits, put_bytes, put_uvarint};
use longship_raft::{Index, ReplicaId, ShardId, Term};

use crate::SnapshotChunk;

/// Frame magic.
pub const FRAME_MAGIC: [u8; 4] = *b"LSTP";
/// Frame format version.
pub const FRAME_VERSION: u8 = 1;
/// Size of the frame header.
pub const FRAME_HEADER_BYTES: usize = 32;

/// What a frame carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameType {
    /// An encoded `MessageBatch`.
    Batch = 1,
    /// An encoded [`SnapshotChunk`].
    Chunk = 2,
    /// The receiver's verdict on a snapshot stream: body is one byte, 1 = ok.
    SnapshotAck = 3,
}

/// Why a frame was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The first four bytes are not the magic.
    #[error("bad frame magic")]
    BadMagic,
    /// The header checksum does not match.
    #[error("bad frame header checksum")]
    BadHeaderChecksum,
    /// Unknown version.
    #[error("unsupported frame version {0}")]
    UnsupportedVersion(u8),
    /// Unknown frame type.
    #[error("unknown frame type {0}")]
    UnknownType(u8),
    /// Another deployment sent it.
    #[error("frame from deployment {got}, expected {expected}")]
    WrongDeployment {
        /// The sender's deployment id.
        got: u64,
        /// Ours.
        expected: u64,
    },
    /// The announced body is over the limit.
    #[error("frame body of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// Announced length.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// The body checksum does not match.
    #[error("bad frame body checksum")]
    BadBodyChecksum,
    /// Reserved bits set.
    #[error("reserved frame bits set")]
    Reserved,
    /// The connection ended inside a frame.
    #[error("frame truncated: the connection ended inside it")]
    Truncated,
}

/// A checked frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    /// What the body is.
    pub frame_type: FrameType,
    /// Sender's deployment id.
    pub deployment_id: u64,
    /// Body length.
    pub body_len: u32,
    /// CRC32C of the body.
    pub body_crc: u32,
}

/// Encodes a frame (header and body) into one buffer.
pub fn encode_frame(frame_type: FrameType, deployment_id: u64, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(FRAME_HEADER_BYTES + body.len());
    out.extend_from_slice(&FRAME_MAGIC);
    out.push(FRAME_VERSION);
    out.push(frame_type as u8);
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&deployment_id.to_le_bytes());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(body).to_le_bytes());
    let hcrc = crc32c::crc32c(&out[..24]);
    out.extend_from_slice(&hcrc.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(body);
    out
}

/// Checks a header; refuses it before any body is read or allocated.
pub fn decode_header(
    h: &[u8; FRAME_HEADER_BYTES],
    deployment_id: u64,
    max_body: u32,
) -> Result<FrameHeader, FrameError> {
    if h[0..4] != FRAME_MAGIC {
        return Err(FrameError::BadMagic);
    }
    let u32_at = |i: usize| u32::from_le_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
    if crc32c::crc32c(&h[..24]) != u32_at(24) {
        return Err(FrameError::BadHeaderChecksum);
    }
    if h[4] != FRAME_VERSION {
        return Err(FrameError::UnsupportedVersion(h[4]));
    }
    let frame_type = match h[5] {
        1 => FrameType::Batch,
        2 => FrameType::Chunk,
        3 => FrameType::SnapshotAck,
        t => return Err(FrameError::UnknownType(t)),
    };
    if h[6] != 0 || h[7] != 0 || u32_at(28) != 0 {
        return Err(FrameError::Reserved);
    }
    let got = u64::from_le_bytes(h[8..16].try_into().expect("8 bytes"));
    if got != deployment_id {
        return Err(FrameError::WrongDeployment {
            got,
            expected: deployment_id,
        });
    }
    let body_len = u32_at(16);
    if body_len > max_body {
        return Err(FrameError::TooLarge {
            len: body_len as u64,
            max: max_body as u64,
        });
    }
    Ok(FrameHeader {
        frame_type,
        deployment_id: got,
        body_len,
        body_crc: u32_at(20),
    })
}

/// Checks a body against its header's checksum.
pub fn check_body(h: &FrameHeader, body: &[u8]) -> Result<(), FrameError> {
    if crc32c::crc32c(body) != h.body_crc {
        return Err(FrameError::BadBodyChecksum);
    }
    Ok(())
}

const CHUNK_VERSION: u64 = 1;

/// Encodes a snapshot chunk (a frame body).
pub fn encode_chunk(c: &SnapshotChunk) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + c.data.len() + c.info.len() + c.message.len());
    put_uvarint(&mut out, CHUNK_VERSION);
    put_uvarint(&mut out, c.deployment_id);
    put_uvarint(&mut out, c.shard_id.0);
    put_uvarint(&mut out, c.to.0);
    put_uvarint(&mut out, c.from.0);
    put_uvarint(&mut out, c.index.0);
    put_uvarint(&mut out, c.term.0);
    put_uvarint(&mut out, c.chunk_id);
    put_bytes(&mut out, &c.info);
    put_bytes(&mut out, c.file_name.as_bytes());
    put_uvarint(&mut out, c.offset);
    put_bytes(&mut out, &c.data);
    out.push(c.last as u8);
    put_bytes(&mut out, &c.message);
    out
}

/// Decodes a snapshot chunk (untrusted: bounded, never panics).
pub fn decode_chunk(buf: &[u8], max_bytes: u64) -> Result<SnapshotChunk, DecodeError> {
    let mut d = Decoder::new(buf, Limits::default());
    let version = d.uvarint()?;
    if version != CHUNK_VERSION {
        return Err(DecodeError::UnsupportedVersion(
            version.min(u32::MAX as u64) as u32,
        ));
    }
    let deployment_id = d.uvarint()?;
    let shard_id = ShardId(d.uvarint()?);
    let to = ReplicaId(d.uvarint()?);
    let from = ReplicaId(d.uvarint()?);
    let index = Index(d.uvarint()?);
    let term = Term(d.uvarint()?);
    let chunk_id = d.uvarint()?;
    let info = d.bytes_named("chunk info", max_bytes)?.to_vec();
    let name = d.bytes_named("chunk file name", 255)?;
    let file_name = std::str::from_utf8(name)
        .map_err(|_| DecodeError::Invalid("file name is not UTF-8"))?
        .to_string();
    let offset = d.uvarint()?;
    let data = d.bytes_named("chunk data", max_bytes)?.to_vec();
    let last = match d.u8()? {
        0 => false,
        1 => true,
        _ => return Err(DecodeError::Invalid("chunk last flag")),
    };
    let message = d.bytes_named("chunk message", max_bytes)?.to_vec();
    d.finish()?;
    Ok(SnapshotChunk {
        deployment_id,
        shard_id,
        to,
        from,
        index,
        term,
        chunk_id,
        info,
        file_name,
        offset,
        data,
        last,
        message,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip_and_every_corruption_is_refused() {
        let frame = encode_frame(FrameType::Batch, 7, b"hello");
        let h: [u8; 32] = frame[..32].try_into().unwrap();
        let hdr = decode_header(&h, 7, 1024).unwrap();
        assert_eq!(hdr.body_len, 5);
        check_body(&hdr, &frame[32..]).unwrap();
        assert!(matches!(
            decode_header(&h, 8, 1024),
            Err(FrameError::WrongDeployment { .. })
        ));
        assert!(matches!(
            decode_header(&h, 7, 4),
            Err(FrameError::TooLarge { .. })
        ));
        for i in 0..32 {
            for bit in 0..8 {
                let mut bad = h;
                bad[i] ^= 1 << bit;
                assert!(
                    decode_header(&bad, 7, 1024).is_err(),
                    "flip at {i}:{bit} accepted"
                );
            }
        }
        let mut body = frame[32..].to_vec();
        body[0] ^= 1;
        assert_eq!(check_body(&hdr, &body), Err(FrameError::BadBodyChecksum));
    }

    #[test]
    fn chunk_round_trip_and_truncations_fail() {
        let c = SnapshotChunk {
            deployment_id: 3,
            shard_id: ShardId(9),
            to: ReplicaId(2),
            from: ReplicaId(1),
            index: Index(100),
            term: Term(4),
            chunk_id: 5,
            info: vec![1, 2, 3],
            file_name: "snapshot.data".into(),
            offset: 1 << 20,
            data: vec![7; 100],
            last: true,
            message: vec![9, 9],
        };
        let enc = encode_chunk(&c);
        assert_eq!(decode_chunk(&enc, 1 << 20).unwrap(), c);
        for cut in 0..enc.len() {
            assert!(decode_chunk(&enc[..cut], 1 << 20).is_err());
        }
        assert!(decode_chunk(&enc, 50).is_err(), "data over the limit");
    }
}
