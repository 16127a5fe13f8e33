//! [`FaultyFile`]: an open file of a [`FaultyFs`](super::FaultyFs).

use std::io;
use std::sync::Arc;

use parking_lot::Mutex;

use super::Fault;
use super::model::{FILE_BYTES_MAX, OpKind, State, err, injected};
use crate::vfs::{File, FileSystem};

/// A handle on a [`FaultyFs`] file.
pub(super) struct FaultyFile {
    pub(super) inner: Box<dyn File>,
    /// The wrapped file system (for crash images).
    pub(super) fs_inner: Arc<dyn FileSystem>,
    /// File node id in the model.
    pub(super) id: u64,
    /// Crash generation the handle was opened in.
    pub(super) generation: u64,
    pub(super) state: Arc<Mutex<State>>,
}

impl FaultyFile {
    fn check_alive(&self, st: &State) -> io::Result<()> {
        if st.generation == self.generation {
            Ok(())
        } else {
            Err(err(
                io::ErrorKind::Other,
                "file handle opened before a simulated crash",
            ))
        }
    }

    fn write(&self, offset: Option<u64>, buf: &[u8]) -> io::Result<u64> {
        let mut st = self.state.lock();
        self.check_alive(&st)?;
        let fault = st.begin_op(&*self.fs_inner, OpKind::Write)?;
        let offset = match offset {
            Some(o) => o,
            None => self.inner.len()?,
        };
        if offset.saturating_add(buf.len() as u64) > FILE_BYTES_MAX {
            return Err(err(io::ErrorKind::InvalidInput, "file too large"));
        }
        let n = match fault {
            None => buf.len(),
            Some(Fault::Error) => return Err(injected("write error")),
            Some(Fault::TornWrite) if buf.is_empty() => 0,
            Some(Fault::TornWrite) => st.rng.below(buf.len() as u64) as usize,
        };
        self.inner.write_at(offset, &buf[..n])?;
        st.files
            .get_mut(&self.id)
            .expect("open file has a node")
            .mark_dirty(offset, offset + n as u64);
        if fault.is_some() {
            return Err(injected("torn write"));
        }
        Ok(offset)
    }
}

impl File for FaultyFile {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        self.check_alive(&self.state.lock())?;
        self.inner.read_at(offset, buf)
    }

    fn write_at(&self, offset: u64, buf: &[u8]) -> io::Result<()> {
        self.write(Some(offset), buf).map(|_| ())
    }

    fn append(&self, buf: &[u8]) -> io::Result<u64> {
        self.write(None, buf)
    }

    fn sync(&self) -> io::Result<()> {
        let mut st = self.state.lock();
        self.check_alive(&st)?;
        if st.begin_op(&*self.fs_inner, OpKind::Sync)?.is_some() {
            return Err(injected("sync error"));
        }
        self.inner.sync()?;
        let len = self.inner.len()?;
        let node = st.files.get_mut(&self.id).expect("open file has a node");
        if let Some((lo, hi)) = node.dirty.take() {
            node.durable.resize(len as usize, 0);
            let hi = hi.min(len);
            if lo < hi {
                let n = self
                    .inner
                    .read_at(lo, &mut node.durable[lo as usize..hi as usize])?;
                debug_assert_eq!(n as u64, hi - lo);
            }
        }
        debug_assert_eq!(node.durable.len() as u64, len);
        Ok(())
    }

    fn len(&self) -> io::Result<u64> {
        self.check_alive(&self.state.lock())?;
        self.inner.len()
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut st = self.state.lock();
        self.check_alive(&st)?;
        if st.begin_op(&*self.fs_inner, OpKind::Write)?.is_some() {
            return Err(injected("set_len error"));
        }
        if len > FILE_BYTES_MAX {
            return Err(err(io::ErrorKind::InvalidInput, "file too large"));
        }
        let old = self.inner.len()?;
        self.inner.set_len(len)?;
        st.files
            .get_mut(&self.id)
            .expect("open file has a node")
            .mark_dirty(old.min(len), old.max(len));
        Ok(())
    }

    fn preallocate(&self, len: u64) -> io::Result<()> {
        self.check_alive(&self.state.lock())?;
        self.inner.preallocate(len)
    }
}
