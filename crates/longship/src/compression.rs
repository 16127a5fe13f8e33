//! Compression of entry payloads and of snapshot data, chosen per replica
//! ([`Config::entry_compression`](crate::Config::entry_compression),
//! [`Config::snapshot_compression`](crate::Config::snapshot_compression)).
//!
//! What was chosen is always recorded next to the bytes: a compressed
//! entry has its own entry type ([`EntryType::Encoded`]) and names its
//! algorithm in its first payload byte; a snapshot's data header names
//! the algorithm of the state machine's part. A reader decompresses by what
//! it finds there, never by its own setting, so replicas configured
//! differently read each other's entries and snapshots.
//!
//! Every decoder here takes untrusted bytes: a claimed size is compared
//! with a fixed bound and with what the compressed bytes could possibly
//! expand to before anything is allocated, and bad input is an error,
//! never a panic. The byte formats are in `docs/formats.md` ("Compressed
//! entry payloads", "Snapshot data of the replicated state machine").
//!
//! [`EntryType::Encoded`]: longship_raft::EntryType::Encoded

use std::io::{self, Read, Write};

use longship_raft::codec::{Decoder, Limits, put_uvarint};

/// How entry payloads or snapshot data are compressed (dragonboat's
/// `CompressionType`). The default is no compression.
///
/// LZ4 (block format, through `lz4_flex`) is the faster of the two,
/// Snappy (raw format, through `snap`) often a little smaller on text.
/// Both cost CPU on the proposing side (entries) or the saving side
/// (snapshots) and on every replica that reads them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Compression {
    /// Bytes are stored as they are.
    #[default]
    None,
    /// LZ4 block format.
    Lz4,
    /// Snappy raw format.
    Snappy,
}

impl Compression {
    /// The byte that names this algorithm in the formats: 0 none, 1 LZ4,
    /// 2 Snappy.
    pub fn code(self) -> u8 {
        match self {
            Compression::None => 0,
            Compression::Lz4 => 1,
            Compression::Snappy => 2,
        }
    }

    /// The algorithm named by `code` (see [`Compression::code`]), `None`
    /// for a code this build does not know.
    pub fn from_code(code: u8) -> Option<Compression> {
        match code {
            0 => Some(Compression::None),
            1 => Some(Compression::Lz4),
            2 => Some(Compression::Snappy),
            _ => None,
        }
    }

    /// A short lower-case name, for messages.
    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Lz4 => "lz4",
            Compression::Snappy => "snappy",
        }
    }

    /// The most bytes `raw_len` bytes can take once compressed (0 for a
    /// length the algorithm cannot take at once).
    fn max_compressed_len(self, raw_len: usize) -> usize {
        match self {
            Compression::None => raw_len,
            Compression::Lz4 => lz4_flex::block::get_maximum_output_size(raw_len),
            Compression::Snappy => snap::raw::max_compress_len(raw_len),
        }
    }

    /// Compresses `raw` into a new buffer.
    fn compress(self, raw: &[u8]) -> Result<Vec<u8>, DecompressError> {
        let mut out = vec![0u8; self.max_compressed_len(raw.len())];
        let n = match self {
            Compression::None => {
                out.copy_from_slice(raw);
                raw.len()
            }
            Compression::Lz4 => lz4_flex::block::compress_into(raw, &mut out)
                .map_err(|e| DecompressError::new(self, format!("compressing: {e}")))?,
            Compression::Snappy => snap::raw::Encoder::new()
                .compress(raw, &mut out)
                .map_err(|e| DecompressError::new(self, format!("compressing: {e}")))?,
        };
        out.truncate(n);
        Ok(out)
    }

    /// Decompresses `stored` into exactly `out.len()` bytes. The caller
    /// checked `out.len()` against [`expansion_ok`].
    fn decompress_into(self, stored: &[u8], out: &mut [u8]) -> Result<(), DecompressError> {
        let n = match self {
            Compression::None => {
                if stored.len() != out.len() {
                    return Err(DecompressError::new(self, "stored length differs"));
                }
                out.copy_from_slice(stored);
                stored.len()
            }
            Compression::Lz4 => lz4_flex::block::decompress_into(stored, out)
                .map_err(|e| DecompressError::new(self, e.to_string()))?,
            Compression::Snappy => {
                let claimed = snap::raw::decompress_len(stored)
                    .map_err(|e| DecompressError::new(self, e.to_string()))?;
                if claimed != out.len() {
                    return Err(DecompressError::new(
                        self,
                        format!("expands to {claimed} bytes, {} recorded", out.len()),
                    ));
                }
                snap::raw::Decoder::new()
                    .decompress(stored, out)
                    .map_err(|e| DecompressError::new(self, e.to_string()))?
            }
        };
        if n != out.len() {
            return Err(DecompressError::new(
                self,
                format!("expands to {n} bytes, {} recorded", out.len()),
            ));
        }
        Ok(())
    }
}

/// Compressed bytes that cannot be decompressed: damaged, truncated,
/// over a bound, or of an algorithm this build does not know.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{what} does not decompress: {reason}")]
pub(crate) struct DecompressError {
    what: String,
    reason: String,
}

impl DecompressError {
    fn new(c: Compression, reason: impl Into<String>) -> DecompressError {
        DecompressError {
            what: format!("{} data", c.name()),
            reason: reason.into(),
        }
    }

    fn plain(what: &str, reason: impl Into<String>) -> DecompressError {
        DecompressError {
            what: what.to_string(),
            reason: reason.into(),
        }
    }

    fn into_io(self) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, self)
    }
}

/// No LZ4 or Snappy block expands more than 255 times (an LZ4 match grows
/// by at most 255 bytes per input byte; a Snappy copy by at most 64 per
/// 3). A claimed length beyond this many times the stored bytes is refused
/// before anything is allocated, so memory stays proportional to input.
const EXPANSION_MAX: u64 = 256;

/// Whether `raw_len` bytes may come out of `stored_len` compressed bytes.
fn expansion_ok(raw_len: u64, stored_len: u64) -> bool {
    raw_len <= stored_len.saturating_mul(EXPANSION_MAX)
}

// ------------------------------------------------------------------ entries

/// Largest payload an [`EntryType::Encoded`](longship_raft::EntryType::Encoded)
/// entry may expand to: 64 MiB, the most `NodeHostConfig::max_proposal_bytes`
/// allows (a fixed bound, so every replica decides alike).
pub(crate) const ENTRY_DECOMPRESSED_MAX_BYTES: usize = 64 << 20;

/// The payload of an `Encoded` entry holding `cmd` compressed with `c`:
/// the algorithm's code, `cmd`'s length (uvarint), the compressed block.
/// `None` when `c` is [`Compression::None`], when `cmd` is over
/// [`ENTRY_DECOMPRESSED_MAX_BYTES`], or when compressing does not make it
/// smaller: the entry then stays a plain `Normal` one.
pub(crate) fn compress_entry_payload(c: Compression, cmd: &[u8]) -> Option<Vec<u8>> {
    if c == Compression::None || cmd.is_empty() || cmd.len() > ENTRY_DECOMPRESSED_MAX_BYTES {
        return None;
    }
    let block = c.compress(cmd).ok()?;
    // The same bound the reader applies: never write what it would refuse.
    if !expansion_ok(cmd.len() as u64, block.len() as u64) {
        return None;
    }
    let mut out = Vec::with_capacity(1 + 10 + block.len());
    out.push(c.code());
    put_uvarint(&mut out, cmd.len() as u64);
    out.extend_from_slice(&block);
    (out.len() < cmd.len()).then_some(out)
}

/// The command held by the payload of an `Encoded` entry (see
/// [`compress_entry_payload`]). Bounded: at most
/// [`ENTRY_DECOMPRESSED_MAX_BYTES`], and at most 256 times the compressed
/// bytes, checked before allocating.
pub(crate) fn decompress_entry_payload(payload: &[u8]) -> Result<Vec<u8>, DecompressError> {
    const WHAT: &str = "compressed entry payload";
    let mut d = Decoder::new(payload, Limits::default());
    let code = d
        .u8()
        .map_err(|_| DecompressError::plain(WHAT, "empty payload"))?;
    let c = match Compression::from_code(code) {
        Some(Compression::None) | None => {
            return Err(DecompressError::plain(
                WHAT,
                format!("unknown compression code {code}"),
            ));
        }
        Some(c) => c,
    };
    let raw_len = d
        .uvarint()
        .map_err(|e| DecompressError::new(c, format!("length: {e}")))?;
    let stored = d.raw(d.remaining()).unwrap_or_default();
    if raw_len == 0 || raw_len > ENTRY_DECOMPRESSED_MAX_BYTES as u64 {
        return Err(DecompressError::new(
            c,
            format!("claims {raw_len} bytes, allowed 1..={ENTRY_DECOMPRESSED_MAX_BYTES}"),
        ));
    }
    if !expansion_ok(raw_len, stored.len() as u64) {
        return Err(DecompressError::new(
            c,
            format!(
                "claims {raw_len} bytes from {} compressed bytes (at most {EXPANSION_MAX} times)",
                stored.len()
            ),
        ));
    }
    // Both bounds checked: `raw_len` fits in a usize and is small enough.
    let mut out = vec![0u8; raw_len as usize];
    c.decompress_into(stored, &mut out)?;
    Ok(out)
}

// ---------------------------------------------------------------- snapshots

/// Uncompressed bytes per block the snapshot writer compresses at once.
pub(crate) const SNAPSHOT_BLOCK_BYTES: usize = 64 << 10;
/// Largest block the snapshot reader accepts (uncompressed): bounds the
/// memory one reader holds, whatever the input claims.
pub(crate) const SNAPSHOT_BLOCK_MAX_BYTES: usize = 1 << 20;
/// Bytes of a block header: kind, uncompressed length, stored length,
/// CRC32C of the uncompressed bytes.
const BLOCK_HEADER_BYTES: usize = 13;
/// Block kinds.
const BLOCK_END: u8 = 0;
const BLOCK_COMPRESSED: u8 = 1;
const BLOCK_STORED: u8 = 2;

/// Compresses what is written to it into a stream of blocks on `inner`
/// (format in `docs/formats.md`). [`finish`](Self::finish) writes the last
/// block and the end mark; a stream without the end mark is refused by the
/// reader as truncated.
pub(crate) struct CompressWriter<'a> {
    inner: &'a mut dyn Write,
    c: Compression,
    buf: Vec<u8>,
}

impl<'a> CompressWriter<'a> {
    /// A writer compressing with `c` (not [`Compression::None`]: then write
    /// to `inner` directly).
    pub(crate) fn new(inner: &'a mut dyn Write, c: Compression) -> CompressWriter<'a> {
        debug_assert_ne!(c, Compression::None);
        CompressWriter {
            inner,
            c,
            buf: Vec::with_capacity(SNAPSHOT_BLOCK_BYTES),
        }
    }

    fn write_block(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let compressed = self
            .c
            .compress(&self.buf)
            .map_err(DecompressError::into_io)?;
        // A block compression does not shrink is stored as it is: no
        // expansion of incompressible data, and no work to read it back.
        let (kind, stored): (u8, &[u8]) = if compressed.len() < self.buf.len()
            && expansion_ok(self.buf.len() as u64, compressed.len() as u64)
        {
            (BLOCK_COMPRESSED, &compressed)
        } else {
            (BLOCK_STORED, &self.buf)
        };
        let mut head = [0u8; BLOCK_HEADER_BYTES];
        head[0] = kind;
        head[1..5].copy_from_slice(&(self.buf.len() as u32).to_le_bytes());
        head[5..9].copy_from_slice(&(stored.len() as u32).to_le_bytes());
        // The data file's checksum covers the stored bytes; this one the
        // bytes the state machine reads (LZ4 and Snappy blocks have none,
        // and a damaged block may still decode).
        head[9..13].copy_from_slice(&crc32c::crc32c(&self.buf).to_le_bytes());
        self.inner.write_all(&head)?;
        self.inner.write_all(stored)?;
        self.buf.clear();
        Ok(())
    }

    /// Writes what is buffered and the end mark.
    pub(crate) fn finish(mut self) -> io::Result<()> {
        self.write_block()?;
        self.inner.write_all(&[BLOCK_END; BLOCK_HEADER_BYTES])
    }
}

impl Write for CompressWriter<'_> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let room = SNAPSHOT_BLOCK_BYTES - self.buf.len();
        let n = room.min(data.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == SNAPSHOT_BLOCK_BYTES {
            self.write_block()?;
        }
        Ok(n)
    }

    /// Blocks are written whole; `finish` writes the last one.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Reads the block stream [`CompressWriter`] wrote, handing out the
/// uncompressed bytes. Errors (`InvalidData`) for a damaged or truncated
/// stream; holds at most one block of [`SNAPSHOT_BLOCK_MAX_BYTES`].
pub(crate) struct DecompressReader<'a> {
    inner: &'a mut dyn Read,
    c: Compression,
    block: Vec<u8>,
    stored: Vec<u8>,
    pos: usize,
    ended: bool,
    /// The first error: every later read fails with it, so a state machine
    /// that ignores an error cannot make the rest of the stream pass.
    failed: Option<String>,
}

impl<'a> DecompressReader<'a> {
    /// A reader of a stream compressed with `c`.
    pub(crate) fn new(inner: &'a mut dyn Read, c: Compression) -> DecompressReader<'a> {
        DecompressReader {
            inner,
            c,
            block: Vec::new(),
            stored: Vec::new(),
            pos: 0,
            ended: false,
            failed: None,
        }
    }

    fn err(&self, reason: impl Into<String>) -> io::Error {
        DecompressError::new(self.c, format!("snapshot block stream: {}", reason.into())).into_io()
    }

    /// Reads exactly `n` bytes into `stored`; the stream ending first is
    /// an error (truncated inside a block header if `header`, else a block).
    fn read_exact_or_truncated(&mut self, n: usize, header: bool) -> io::Result<()> {
        let buf: &mut Vec<u8> = &mut self.stored;
        buf.clear();
        let got = (&mut *self.inner).take(n as u64).read_to_end(buf)?;
        if got != n {
            let what = if header { "a block header" } else { "a block" };
            return Err(self.err(format!("truncated inside {what} (no end mark)")));
        }
        Ok(())
    }

    /// Loads the next block; false at the end mark.
    fn next_block(&mut self) -> io::Result<bool> {
        self.read_exact_or_truncated(BLOCK_HEADER_BYTES, true)?;
        let head = &self.stored[..BLOCK_HEADER_BYTES];
        let kind = head[0];
        let raw_len = u32::from_le_bytes([head[1], head[2], head[3], head[4]]) as usize;
        let stored_len = u32::from_le_bytes([head[5], head[6], head[7], head[8]]) as usize;
        let crc = u32::from_le_bytes([head[9], head[10], head[11], head[12]]);
        match kind {
            BLOCK_END if raw_len == 0 && stored_len == 0 && crc == 0 => {
                self.ended = true;
                return Ok(false);
            }
            BLOCK_END => return Err(self.err("end mark with non-zero fields")),
            BLOCK_COMPRESSED | BLOCK_STORED => {}
            k => return Err(self.err(format!("unknown block kind {k}"))),
        }
        if raw_len == 0 || raw_len > SNAPSHOT_BLOCK_MAX_BYTES {
            return Err(self.err(format!(
                "block of {raw_len} bytes, allowed 1..={SNAPSHOT_BLOCK_MAX_BYTES}"
            )));
        }
        let plausible = if kind == BLOCK_STORED {
            stored_len == raw_len
        } else {
            stored_len > 0
                && stored_len <= self.c.max_compressed_len(raw_len)
                && expansion_ok(raw_len as u64, stored_len as u64)
        };
        if !plausible {
            return Err(self.err(format!(
                "block of {raw_len} bytes cannot be stored in {stored_len} bytes"
            )));
        }
        self.read_exact_or_truncated(stored_len, false)?;
        self.block.clear();
        if kind == BLOCK_STORED {
            std::mem::swap(&mut self.block, &mut self.stored);
        } else {
            self.block.resize(raw_len, 0);
            self.c
                .decompress_into(&self.stored, &mut self.block)
                .map_err(DecompressError::into_io)?;
        }
        if crc32c::crc32c(&self.block) != crc {
            return Err(self.err("checksum mismatch of an uncompressed block"));
        }
        self.pos = 0;
        Ok(true)
    }

    /// Reads to the end mark (what the state machine left unread) and
    /// checks that nothing follows it.
    pub(crate) fn finish(mut self) -> io::Result<()> {
        io::copy(&mut self, &mut io::sink())?;
        if self.failed.is_some() || !self.ended {
            return Err(self.err("not read to its end mark"));
        }
        let mut one = [0u8; 1];
        if self.inner.read(&mut one)? != 0 {
            return Err(self.err("bytes after the end mark"));
        }
        Ok(())
    }
}

impl Read for DecompressReader<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if let Some(e) = &self.failed {
            return Err(io::Error::new(io::ErrorKind::InvalidData, e.clone()));
        }
        while self.pos == self.block.len() {
            if self.ended || out.is_empty() {
                return Ok(0);
            }
            match self.next_block() {
                Ok(true) => {}
                Ok(false) => return Ok(0),
                Err(e) => {
                    self.failed = Some(e.to_string());
                    return Err(e);
                }
            }
        }
        let n = out.len().min(self.block.len() - self.pos);
        out[..n].copy_from_slice(&self.block[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KINDS: [Compression; 2] = [Compression::Lz4, Compression::Snappy];

    fn text(n: usize) -> Vec<u8> {
        (0..n)
            .flat_map(|i| format!("key{} value{} ", i % 97, i % 13).into_bytes())
            .take(n)
            .collect()
    }

    /// Deterministic bytes that do not compress.
    fn noise(n: usize, mut seed: u64) -> Vec<u8> {
        (0..n)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect()
    }

    #[test]
    fn codes_round_trip_and_unknown_codes_are_none() {
        for c in [Compression::None, Compression::Lz4, Compression::Snappy] {
            assert_eq!(Compression::from_code(c.code()), Some(c));
        }
        assert_eq!(Compression::from_code(3), None);
        assert_eq!(Compression::default(), Compression::None);
    }

    #[test]
    fn entry_payloads_round_trip() {
        for c in KINDS {
            for n in [1usize, 17, 4096, 300_000] {
                let cmd = text(n);
                match compress_entry_payload(c, &cmd) {
                    Some(p) => {
                        assert_eq!(p[0], c.code());
                        assert!(p.len() < cmd.len());
                        assert_eq!(decompress_entry_payload(&p).unwrap(), cmd, "{c:?} {n}");
                    }
                    None => assert!(n < 64, "{c:?}: {n} bytes of text not compressed"),
                }
            }
            // Incompressible: stays a plain entry.
            assert_eq!(compress_entry_payload(c, &noise(4096, 7)), None);
        }
        assert_eq!(compress_entry_payload(Compression::None, &text(4096)), None);
    }

    #[test]
    fn bad_entry_payloads_are_clear_errors() {
        let cmd = text(10_000);
        for c in KINDS {
            let good = compress_entry_payload(c, &cmd).unwrap();
            // Unknown algorithm.
            let mut p = good.clone();
            p[0] = 9;
            let e = decompress_entry_payload(&p).unwrap_err().to_string();
            assert!(e.contains("unknown compression code 9"), "{e}");
            // A claimed length past the bound is refused before allocating.
            let mut p = vec![c.code()];
            put_uvarint(&mut p, 1 << 40);
            p.extend_from_slice(&good[4..]);
            let e = decompress_entry_payload(&p).unwrap_err().to_string();
            assert!(e.contains("claims 1099511627776 bytes"), "{e}");
            // A claim no block of that size could expand to.
            let mut p = vec![c.code()];
            put_uvarint(&mut p, 60 << 20);
            p.extend_from_slice(&[0u8; 16]);
            let e = decompress_entry_payload(&p).unwrap_err().to_string();
            assert!(e.contains("at most 256 times"), "{e}");
            // Truncated compressed bytes.
            let e = decompress_entry_payload(&good[..good.len() - 5])
                .unwrap_err()
                .to_string();
            assert!(
                e.starts_with(&format!("{} data does not decompress", c.name())),
                "{e}"
            );
            // The wrong recorded length.
            let mut p = vec![c.code()];
            put_uvarint(&mut p, cmd.len() as u64 - 1);
            p.extend_from_slice(&good[1 + longship_raft::codec::uvarint_len(cmd.len() as u64)..]);
            assert!(decompress_entry_payload(&p).is_err());
        }
        assert!(decompress_entry_payload(&[]).is_err());
        assert!(
            decompress_entry_payload(&[0, 1, 0]).is_err(),
            "code 0 is not compressed"
        );
    }

    #[test]
    fn arbitrary_entry_payloads_never_panic() {
        for seed in 1..3000u64 {
            let mut p = noise((seed % 64) as usize + 1, seed);
            p[0] = (seed % 3) as u8;
            let _ = decompress_entry_payload(&p);
            // Mutations of a valid payload.
            let c = KINDS[(seed % 2) as usize];
            let mut good = compress_entry_payload(c, &text(2000)).unwrap();
            let at = (seed as usize * 31) % good.len();
            good[at] ^= 1 << (seed % 8);
            if let Ok(out) = decompress_entry_payload(&good) {
                assert!(out.len() <= ENTRY_DECOMPRESSED_MAX_BYTES);
            }
        }
    }

    fn write_stream(c: Compression, data: &[u8], piece: usize) -> Vec<u8> {
        let mut out = Vec::new();
        let mut w = CompressWriter::new(&mut out, c);
        for chunk in data.chunks(piece.max(1)) {
            w.write_all(chunk).unwrap();
        }
        w.finish().unwrap();
        out
    }

    fn read_stream(c: Compression, stream: &[u8]) -> io::Result<Vec<u8>> {
        let mut input = stream;
        let mut r = DecompressReader::new(&mut input, c);
        let mut out = Vec::new();
        r.read_to_end(&mut out)?;
        r.finish()?;
        Ok(out)
    }

    #[test]
    fn snapshot_streams_round_trip() {
        for c in KINDS {
            for data in [Vec::new(), text(10), text(300_000), noise(200_000, 3)] {
                let stream = write_stream(c, &data, 7777);
                assert_eq!(read_stream(c, &stream).unwrap(), data, "{c:?}");
            }
            let data = text(1 << 20);
            let stream = write_stream(c, &data, 1 << 20);
            assert!(stream.len() < data.len() / 3, "{c:?}: {}", stream.len());
        }
    }

    #[test]
    fn damaged_snapshot_streams_are_errors() {
        for c in KINDS {
            let data = text(200_000);
            let stream = write_stream(c, &data, 4096);
            // Truncated anywhere: never taken for a shorter snapshot.
            for cut in [
                0,
                1,
                8,
                9,
                100,
                stream.len() / 2,
                stream.len() - 9,
                stream.len() - 1,
            ] {
                let e = read_stream(c, &stream[..cut]).unwrap_err();
                assert_eq!(e.kind(), io::ErrorKind::InvalidData);
                assert!(e.to_string().contains("truncated"), "{c:?} cut {cut}: {e}");
            }
            // Bytes after the end mark.
            let mut more = stream.clone();
            more.push(0);
            let e = read_stream(c, &more).unwrap_err();
            assert!(e.to_string().contains("after the end mark"), "{e}");
            // A block claiming more than the bound.
            let mut big = stream.clone();
            big[1..5].copy_from_slice(&(2u32 << 20).to_le_bytes());
            let e = read_stream(c, &big).unwrap_err();
            assert!(e.to_string().contains("allowed 1..="), "{e}");
            // An error sticks: a reader that ignores it cannot make the
            // rest of the stream pass.
            let cut = &stream[..stream.len() / 2];
            let mut input = cut;
            let mut r = DecompressReader::new(&mut input, c);
            let _ = r.read_to_end(&mut Vec::new());
            assert!(r.read(&mut [0u8; 16]).is_err());
            assert!(r.finish().is_err());
            // Damaged compressed bytes.
            let mut bad = stream.clone();
            for b in &mut bad[BLOCK_HEADER_BYTES..BLOCK_HEADER_BYTES + 64] {
                *b = 0xff;
            }
            assert!(read_stream(c, &bad).is_err(), "{c:?}");
            // Any single flipped bit of the stream is an error, never
            // different data (the block checksum catches what decodes).
            for at in (0..stream.len()).step_by(97) {
                let mut flipped = stream.clone();
                flipped[at] ^= 0x10;
                assert!(read_stream(c, &flipped).is_err(), "{c:?} flip at {at}");
            }
        }
    }

    #[test]
    fn arbitrary_snapshot_streams_never_panic() {
        for seed in 1..2000u64 {
            let c = KINDS[(seed % 2) as usize];
            let mut stream = write_stream(c, &text(5000 + seed as usize), 1000);
            let at = (seed as usize * 131) % stream.len();
            stream[at] ^= 1 << (seed % 8);
            let _ = read_stream(c, &stream);
            let _ = read_stream(c, &noise((seed % 200) as usize, seed));
        }
    }
}

/// Entry points for the fuzz targets (`crates/fuzz`): the decoders of
/// untrusted compressed bytes, reachable from outside the crate. Not part
/// of the supported API.
#[doc(hidden)]
pub mod fuzzing {
    use std::io::{Read, Write};

    use super::{CompressWriter, Compression, DecompressReader};

    /// Decodes an `Encoded` entry's payload.
    pub fn decompress_entry(payload: &[u8]) -> Result<Vec<u8>, String> {
        super::decompress_entry_payload(payload).map_err(|e| e.to_string())
    }

    /// Encodes `cmd` as an `Encoded` entry's payload (`None`: kept plain).
    pub fn compress_entry(c: Compression, cmd: &[u8]) -> Option<Vec<u8>> {
        super::compress_entry_payload(c, cmd)
    }

    /// Reads a snapshot's compressed block stream to its end mark (at most
    /// `max` bytes handed out) and checks that nothing follows it.
    pub fn decompress_stream(c: Compression, bytes: &[u8], max: u64) -> Result<Vec<u8>, String> {
        let mut src: &[u8] = bytes;
        let mut r = DecompressReader::new(&mut src, c);
        let mut out = Vec::new();
        (&mut r)
            .take(max)
            .read_to_end(&mut out)
            .map_err(|e| e.to_string())?;
        r.finish().map_err(|e| e.to_string())?;
        Ok(out)
    }

    /// Writes `data` as a compressed block stream.
    pub fn compress_stream(c: Compression, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut w = CompressWriter::new(&mut out, c);
        w.write_all(data).expect("writing to memory");
        w.finish().expect("writing to memory");
        out
    }
}
