//! Streaming file access with checksums: the writer every snapshot file is
//! written through, the reader every snapshot file is read through, and the
//! verified copy that export, import and verification are built on.

use std::io::{self, Read};
use std::path::{Path, PathBuf};

use crate::vfs::{File, FileSystem};

use super::error::{Result, SnapshotError, io_err};
use super::meta::{META_HEADER_BYTES, SnapshotInfo};

/// Size of the write buffer and of the chunks used for copying and verifying.
pub(crate) const IO_CHUNK_BYTES: usize = 256 << 10;

/// Writes a new file sequentially, buffering small writes and computing the
/// CRC32C and length of everything written.
pub(crate) struct CrcFileWriter {
    file: Box<dyn File>,
    path: PathBuf,
    /// Bytes already handed to the file; the buffer follows them.
    flushed: u64,
    crc: u32,
    buf: Vec<u8>,
}

impl CrcFileWriter {
    /// Creates (or truncates) the file at `path`.
    pub(crate) fn create(fs: &dyn FileSystem, path: PathBuf) -> Result<CrcFileWriter> {
        let file = fs.create(&path).map_err(io_err("create", &path))?;
        Ok(CrcFileWriter {
            file,
            path,
            flushed: 0,
            crc: 0,
            buf: Vec::new(),
        })
    }

    /// Bytes written so far (buffered ones included).
    pub(crate) fn len(&self) -> u64 {
        self.flushed + self.buf.len() as u64
    }

    /// The file's path.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `bytes`.
    pub(crate) fn write_all(&mut self, bytes: &[u8]) -> Result<()> {
        self.crc = crc32c::crc32c_append(self.crc, bytes);
        if self.buf.len() + bytes.len() <= IO_CHUNK_BYTES {
            if self.buf.capacity() == 0 {
                self.buf.reserve_exact(IO_CHUNK_BYTES);
            }
            self.buf.extend_from_slice(bytes);
            return Ok(());
        }
        self.flush_buf()?;
        if bytes.len() >= IO_CHUNK_BYTES {
            self.file
                .write_at(self.flushed, bytes)
                .map_err(io_err("write", &self.path))?;
            self.flushed += bytes.len() as u64;
        } else {
            self.buf.extend_from_slice(bytes);
        }
        Ok(())
    }

    fn flush_buf(&mut self) -> Result<()> {
        if !self.buf.is_empty() {
            self.file
                .write_at(self.flushed, &self.buf)
                .map_err(io_err("write", &self.path))?;
            self.flushed += self.buf.len() as u64;
            self.buf.clear();
        }
        Ok(())
    }

    /// Writes what is buffered and fsyncs the file; returns its length and CRC32C.
    pub(crate) fn finish(mut self) -> Result<(u64, u32)> {
        self.flush_buf()?;
        self.file.sync().map_err(io_err("fsync", &self.path))?;
        Ok((self.flushed, self.crc))
    }
}

/// A streaming reader of one snapshot file (the data file or an external
/// file) that checks the file's length and CRC32C as it goes.
///
/// Bytes are handed out as they are read; the checksum can only be checked
/// at the end. The content is known good once `read` has returned `Ok(0)`;
/// if it does not match, the final `read` returns an error of kind
/// `InvalidData` carrying [`SnapshotError::ChecksumMismatch`] instead (turn
/// it back with [`SnapshotError::from_io`]). A file shorter than recorded
/// gives [`SnapshotError::Corruption`] the same way. Never reads the whole
/// file into memory.
pub struct SnapshotReader {
    file: Box<dyn File>,
    path: PathBuf,
    offset: u64,
    size_bytes: u64,
    expected_crc: u32,
    crc: u32,
}

impl SnapshotReader {
    /// Opens `path` for reading, expecting `size_bytes` bytes with CRC32C
    /// `crc`. Fails with `Corruption` if the file is missing or has another length.
    pub(crate) fn open(
        fs: &dyn FileSystem,
        path: PathBuf,
        size_bytes: u64,
        crc: u32,
    ) -> Result<SnapshotReader> {
        let file = fs.open_read(&path).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                SnapshotError::Corruption {
                    file: path.clone(),
                    offset: 0,
                    reason: "file is missing".into(),
                }
            } else {
                SnapshotError::from_io(e, "open", path.clone())
            }
        })?;
        let len = file.len().map_err(io_err("stat", &path))?;
        if len != size_bytes {
            return Err(SnapshotError::Corruption {
                file: path,
                offset: len.min(size_bytes),
                reason: format!("file is {len} bytes, metadata says {size_bytes}"),
            });
        }
        Ok(SnapshotReader {
            file,
            path,
            offset: 0,
            size_bytes,
            expected_crc: crc,
            crc: 0,
        })
    }

    /// Length of the file in bytes, as recorded in the metadata.
    pub fn size_bytes(&self) -> u64 {
        self.size_bytes
    }

    /// Bytes handed out so far.
    pub fn position(&self) -> u64 {
        self.offset
    }

    /// The file being read.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the rest of the file, discarding it, and checks its checksum.
    pub fn verify_to_end(mut self) -> Result<()> {
        let mut buf = vec![0u8; IO_CHUNK_BYTES.min(self.remaining_usize())];
        self.copy_rest(&mut buf, |_| Ok(()))
    }

    fn remaining_usize(&self) -> usize {
        usize::try_from(self.size_bytes - self.offset).unwrap_or(usize::MAX)
    }

    /// Reads the rest of the file in chunks of `buf`'s size, handing each to
    /// `sink`, and checks the checksum at the end.
    pub(crate) fn copy_rest(
        &mut self,
        buf: &mut [u8],
        mut sink: impl FnMut(&[u8]) -> Result<()>,
    ) -> Result<()> {
        loop {
            let n = self.read_chunk(buf)?;
            if n == 0 {
                return Ok(());
            }
            sink(&buf[..n])?;
        }
    }

    /// `Read::read` with the typed error.
    fn read_chunk(&mut self, buf: &mut [u8]) -> Result<usize> {
        let remaining = self.size_bytes - self.offset;
        if remaining == 0 {
            if self.crc != self.expected_crc {
                return Err(SnapshotError::ChecksumMismatch {
                    file: self.path.clone(),
                    expected: self.expected_crc,
                    actual: self.crc,
                });
            }
            return Ok(0);
        }
        let want = usize::try_from(remaining).map_or(buf.len(), |r| r.min(buf.len()));
        if want == 0 {
            return Ok(0);
        }
        let n = self
            .file
            .read_at(self.offset, &mut buf[..want])
            .map_err(io_err("read", &self.path))?;
        if n == 0 {
            return Err(SnapshotError::Corruption {
                file: self.path.clone(),
                offset: self.offset,
                reason: format!("file ends before its recorded size {}", self.size_bytes),
            });
        }
        self.crc = crc32c::crc32c_append(self.crc, &buf[..n]);
        self.offset += n as u64;
        Ok(n)
    }
}

impl Read for SnapshotReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.read_chunk(buf).map_err(SnapshotError::into_io)
    }
}

impl std::fmt::Debug for SnapshotReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotReader")
            .field("path", &self.path)
            .field("offset", &self.offset)
            .field("size_bytes", &self.size_bytes)
            .finish_non_exhaustive()
    }
}

/// Reads and decodes a metadata file, bounding its length before
/// allocating. A missing file is `Corruption` (the snapshot is incomplete).
pub(crate) fn read_meta_file(fs: &dyn FileSystem, path: &Path) -> Result<SnapshotInfo> {
    let file = fs.open_read(path).map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            SnapshotError::Corruption {
                file: path.to_path_buf(),
                offset: 0,
                reason: "metadata file is missing".into(),
            }
        } else {
            SnapshotError::from_io(e, "open", path.to_path_buf())
        }
    })?;
    let len = file.len().map_err(io_err("stat", path))?;
    if len == 0 {
        return Err(SnapshotError::EmptySnapshot {
            path: path.to_path_buf(),
        });
    }
    let mut header = [0u8; META_HEADER_BYTES];
    let header_len = read_full_at(&*file, 0, &mut header, path)?;
    let total = SnapshotInfo::total_len_from_header(&header[..header_len], path)?;
    if total != len {
        return Err(SnapshotError::Corruption {
            file: path.to_path_buf(),
            offset: len.min(total),
            reason: format!("metadata file is {len} bytes, header says {total}"),
        });
    }
    // `total` is bounded by META_BODY_MAX_BYTES plus header and trailer.
    let mut bytes = vec![0u8; total as usize];
    let n = read_full_at(&*file, 0, &mut bytes, path)?;
    bytes.truncate(n);
    SnapshotInfo::decode(&bytes, path)
}

/// Reads until `buf` is full or the file ends; returns the bytes read.
fn read_full_at(file: &dyn File, offset: u64, buf: &mut [u8], path: &Path) -> Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        let n = file
            .read_at(offset + done as u64, &mut buf[done..])
            .map_err(io_err("read", path))?;
        if n == 0 {
            break;
        }
        done += n;
    }
    Ok(done)
}

/// Creates `path` holding exactly `bytes`, fsynced.
pub(crate) fn write_synced_file(fs: &dyn FileSystem, path: &Path, bytes: &[u8]) -> Result<()> {
    let file = fs.create(path).map_err(io_err("create", path))?;
    file.write_at(0, bytes).map_err(io_err("write", path))?;
    file.sync().map_err(io_err("fsync", path))
}

/// Copies a snapshot file into a new file, checking the source's length and
/// checksum on the way. The bytes checked are the bytes written.
pub(crate) fn copy_verified(
    mut src: SnapshotReader,
    dst_fs: &dyn FileSystem,
    dst: PathBuf,
) -> Result<()> {
    let mut writer = CrcFileWriter::create(dst_fs, dst)?;
    let mut buf = vec![0u8; IO_CHUNK_BYTES.min(src.remaining_usize()).max(1)];
    src.copy_rest(&mut buf, |chunk| writer.write_all(chunk))?;
    writer.finish()?;
    Ok(())
}

/// Copies everything `reader` yields into `writer`; returns the bytes copied.
pub(crate) fn copy_from_reader(reader: &mut dyn Read, writer: &mut CrcFileWriter) -> Result<u64> {
    let mut buf = vec![0u8; IO_CHUNK_BYTES];
    let mut total = 0u64;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(SnapshotError::from_io(
                    e,
                    "read source of",
                    writer.path().to_path_buf(),
                ));
            }
        };
        writer.write_all(&buf[..n])?;
        total += n as u64;
    }
}
