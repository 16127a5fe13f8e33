//! A small virtual file system: the only way longship-storage touches files.
//!
//! Three implementations: [`OsFs`] (the real one), [`MemFs`] (in memory, for
//! tests and the simulator) and [`FaultyFs`] (wraps another, injects seeded
//! I/O errors and torn writes, and on a simulated crash drops every byte and
//! directory change that was not made durable).
//!
//! Durability model, shared by every implementation: data written to a file
//! is durable once `File::sync` returns; the *existence* of a created,
//! renamed or removed name is durable once `FileSystem::sync_dir` of its
//! parent directory returns.

use std::io;
use std::path::{Path, PathBuf};

/// An open file. Reads and writes are positional so one handle can serve
/// appends and random reads without a shared cursor.
pub trait File: Send + Sync {
    /// Reads up to `buf.len()` bytes at `offset`; returns how many were read
    /// (fewer only at end of file).
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize>;
    /// Writes all of `buf` at `offset`, extending the file if needed.
    fn write_at(&self, offset: u64, buf: &[u8]) -> io::Result<()>;
    /// Appends `buf` at the current end of the file; returns the offset it was written at.
    fn append(&self, buf: &[u8]) -> io::Result<u64>;
    /// Makes every write so far durable (fdatasync).
    fn sync(&self) -> io::Result<()>;
    /// Current length in bytes.
    fn len(&self) -> io::Result<u64>;
    /// Whether the file is empty.
    fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }
    /// Cuts or extends (with zeros) the file to `len` bytes.
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// Reserves space for `len` bytes without changing the visible length
    /// (best effort; may be a no-op).
    fn preallocate(&self, len: u64) -> io::Result<()>;
}

/// A file system: names, directories and opening files.
pub trait FileSystem: Send + Sync {
    /// Creates (or truncates) a file for reading and writing.
    fn create(&self, path: &Path) -> io::Result<Box<dyn File>>;
    /// Opens an existing file for reading and writing.
    fn open(&self, path: &Path) -> io::Result<Box<dyn File>>;
    /// Opens an existing file for reading only.
    fn open_read(&self, path: &Path) -> io::Result<Box<dyn File>>;
    /// Atomically renames `from` to `to`, replacing `to` if it exists.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Removes a file.
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Removes a directory and everything below it.
    fn remove_dir_all(&self, path: &Path) -> io::Result<()>;
    /// Creates a directory and its missing parents.
    fn create_dir_all(&self, path: &Path) -> io::Result<()>;
    /// Names (full paths) of the entries of a directory, sorted.
    fn list(&self, dir: &Path) -> io::Result<Vec<PathBuf>>;
    /// Whether a path exists.
    fn exists(&self, path: &Path) -> bool;
    /// Whether a path is a directory.
    fn is_dir(&self, path: &Path) -> bool;
    /// Makes the directory's entries (creates, renames, removes) durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
}

mod faulty;
mod mem;
mod os;

pub use faulty::{CrashMode, Fault, FaultProbabilities, FaultyFs};
pub use mem::MemFs;
pub use os::OsFs;
