//! [`OsFs`]: the real file system, through `std::fs`.

use std::fs::{self, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use parking_lot::Mutex;

use super::{File, FileSystem};

/// The operating system's file system. `sync` is `fdatasync`; `sync_dir`
/// opens the directory and fsyncs it.
#[derive(Clone, Copy, Debug, Default)]
pub struct OsFs;

impl OsFs {
    /// The OS file system.
    pub fn new() -> OsFs {
        OsFs
    }
}

/// Adds the path to an I/O error so a failure names its file.
fn with_path(e: io::Error, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

/// An open OS file.
struct OsFile {
    file: fs::File,
    path: PathBuf,
    /// Serializes appends through this handle, so "read the length, write
    /// there" is atomic with respect to other appends on the same handle.
    append_lock: Mutex<()>,
}

impl File for OsFile {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let mut done = 0;
        // Bounded: every iteration either reads at least one byte or stops.
        while done < buf.len() {
            match self.file.read_at(&mut buf[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(with_path(e, &self.path)),
            }
        }
        Ok(done)
    }

    fn write_at(&self, offset: u64, buf: &[u8]) -> io::Result<()> {
        self.file
            .write_all_at(buf, offset)
            .map_err(|e| with_path(e, &self.path))
    }

    fn append(&self, buf: &[u8]) -> io::Result<u64> {
        let _g = self.append_lock.lock();
        let offset = self.len()?;
        self.write_at(offset, buf)?;
        Ok(offset)
    }

    fn sync(&self) -> io::Result<()> {
        self.file.sync_data().map_err(|e| with_path(e, &self.path))
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self
            .file
            .metadata()
            .map_err(|e| with_path(e, &self.path))?
            .len())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.file.set_len(len).map_err(|e| with_path(e, &self.path))
    }

    fn preallocate(&self, _len: u64) -> io::Result<()> {
        // Best effort by contract; std offers no fallocate(KEEP_SIZE) without
        // unsafe code, and growing the visible length would change the
        // meaning of `len`.
        Ok(())
    }
}

/// Opens `path` with `opts` as an [`OsFile`].
fn open_with(opts: &mut OpenOptions, path: &Path) -> io::Result<Box<dyn File>> {
    let file = opts.open(path).map_err(|e| with_path(e, path))?;
    Ok(Box::new(OsFile {
        file,
        path: path.to_path_buf(),
        append_lock: Mutex::new(()),
    }))
}

impl FileSystem for OsFs {
    fn create(&self, path: &Path) -> io::Result<Box<dyn File>> {
        open_with(
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true),
            path,
        )
    }

    fn open(&self, path: &Path) -> io::Result<Box<dyn File>> {
        open_with(OpenOptions::new().read(true).write(true), path)
    }

    fn open_read(&self, path: &Path) -> io::Result<Box<dyn File>> {
        open_with(OpenOptions::new().read(true), path)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to).map_err(|e| with_path(e, from))
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path).map_err(|e| with_path(e, path))
    }

    fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        fs::remove_dir_all(path).map_err(|e| with_path(e, path))
    }

    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        fs::create_dir_all(path).map_err(|e| with_path(e, path))
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<PathBuf>> {
        let mut out = Vec::new();
        for entry in fs::read_dir(dir).map_err(|e| with_path(e, dir))? {
            out.push(entry.map_err(|e| with_path(e, dir))?.path());
        }
        out.sort();
        Ok(out)
    }

    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }

    fn is_dir(&self, path: &Path) -> bool {
        path.is_dir()
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| with_path(e, dir))
    }
}
