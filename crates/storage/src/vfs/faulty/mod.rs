//! [`FaultyFs`]: a fault-injecting file system wrapping another one.
//!
//! It keeps a model of what is durable: per file, the bytes as of its last
//! successful `sync`; per directory, the name table as of its last
//! successful `sync_dir`. [`FaultyFs::crash`] rewrites the wrapped file
//! system to that durable state, the way a power cut would leave a disk.
//!
//! Every mutating operation (create, write, append, set_len, sync, rename,
//! remove, create_dir_all, sync_dir) gets a number, counted from 1. A test
//! can schedule a fault at an operation number, set per-operation fault
//! probabilities (seeded, so a run replays exactly), or "cut the power"
//! after operation `k`: every later mutating operation fails until
//! [`FaultyFs::crash`] is called.
//!
//! Paths must be absolute. The wrapped file system must hold no files the
//! tests use at start; directories that already exist in it (a temp dir) are
//! adopted as durable the first time a path goes through them.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use longship_raft::Rng;
use parking_lot::Mutex;

use super::mem::normalize;
use super::{File, FileSystem, MemFs};

mod file;
mod model;
#[cfg(test)]
mod tests;

use file::FaultyFile;
use model::{DirNode, Entry, FileNode, OpKind, ROOT, State, err, injected, names};

/// A fault to inject at one operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The operation fails with an I/O error and changes nothing.
    Error,
    /// A write stores only a (seeded random, possibly empty) strict prefix
    /// of its bytes and then fails. On other operations, same as `Error`.
    TornWrite,
}

/// What a simulated crash keeps of data written but not synced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrashMode {
    /// Every unsynced byte is lost.
    DropUnsynced,
    /// For files that were only appended to since their last sync, a seeded
    /// random prefix of the appended bytes survives (partial write-back).
    KeepRandomPrefix,
}

/// Per-operation fault probabilities (0.0 ..= 1.0).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct FaultProbabilities {
    /// A write, append or set_len fails without effect.
    pub write_error: f64,
    /// A write or append stores a strict prefix and fails.
    pub torn_write: f64,
    /// A file sync or directory sync fails (nothing becomes durable).
    pub sync_error: f64,
}

/// A fault-injecting, crash-simulating wrapper around another file system.
/// Cloning gives another handle to the same model.
#[derive(Clone)]
pub struct FaultyFs {
    inner: Arc<dyn FileSystem>,
    state: Arc<Mutex<State>>,
}

impl std::fmt::Debug for FaultyFs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let st = self.state.lock();
        f.debug_struct("FaultyFs")
            .field("op_count", &st.op_count)
            .field("generation", &st.generation)
            .finish()
    }
}

impl FaultyFs {
    /// Wraps `inner`; `seed` drives every random choice.
    pub fn new(inner: Arc<dyn FileSystem>, seed: u64) -> FaultyFs {
        let mut dirs = HashMap::new();
        dirs.insert(
            ROOT,
            DirNode {
                preexisting: true,
                ..DirNode::default()
            },
        );
        FaultyFs {
            inner,
            state: Arc::new(Mutex::new(State {
                rng: Rng::new(seed),
                op_count: 0,
                scheduled: BTreeMap::new(),
                crash_after: None,
                probabilities: FaultProbabilities::default(),
                faults_injected: 0,
                recording: None,
                images: Vec::new(),
                generation: 0,
                dirs,
                files: HashMap::new(),
                next_id: ROOT,
            })),
        }
    }

    /// A `FaultyFs` over a fresh [`MemFs`](super::MemFs).
    pub fn over_mem(seed: u64) -> FaultyFs {
        FaultyFs::new(Arc::new(super::MemFs::new()), seed)
    }

    /// Number of counted (mutating) operations so far.
    pub fn op_count(&self) -> u64 {
        self.state.lock().op_count
    }

    /// Number of faults injected so far.
    pub fn faults_injected(&self) -> u64 {
        self.state.lock().faults_injected
    }

    /// Injects `fault` at operation number `op` (counted from 1).
    pub fn schedule_fault(&self, op: u64, fault: Fault) {
        self.state.lock().scheduled.insert(op, fault);
    }

    /// Sets the per-operation fault probabilities.
    pub fn set_probabilities(&self, p: FaultProbabilities) {
        self.state.lock().probabilities = p;
    }

    /// Cuts the power after operation number `op`: later mutating operations
    /// fail until [`FaultyFs::crash`]. `None` lifts a pending cut.
    pub fn crash_after_op(&self, op: Option<u64>) {
        self.state.lock().crash_after = op;
    }

    /// Whether the power was cut (operations fail until [`FaultyFs::crash`]).
    pub fn is_power_cut(&self) -> bool {
        self.state.lock().frozen()
    }

    /// Starts (or, with `None`, stops) recording crash images: before every
    /// counted operation, what the disk would hold after a crash at that
    /// moment is copied into a [`MemFs`]. A test runs a workload once and
    /// then checks recovery from every crash point, without re-running it.
    pub fn record_crash_images(&self, mode: Option<CrashMode>) {
        self.state.lock().recording = mode;
    }

    /// The recorded crash images, each with the number of operations done
    /// before it, followed by the image of the current state.
    pub fn take_crash_images(&self) -> io::Result<Vec<(u64, MemFs)>> {
        let mut st = self.state.lock();
        let mut images = std::mem::take(&mut st.images);
        let mode = st.recording.unwrap_or(CrashMode::DropUnsynced);
        let image = st.image(&*self.inner, mode)?;
        images.push((st.op_count, image));
        Ok(images)
    }

    /// What the disk would hold after a crash now, as a fresh [`MemFs`].
    pub fn crash_image(&self, mode: CrashMode) -> io::Result<MemFs> {
        let mut st = self.state.lock();
        st.image(&*self.inner, mode)
    }

    /// Simulates a crash and restart: the wrapped file system is rewritten
    /// to its durable state, every open handle becomes dead, and the power
    /// cut (if any) is lifted. Scheduled faults and probabilities stay.
    pub fn crash(&self, mode: CrashMode) -> io::Result<()> {
        let mut st = self.state.lock();
        let inner = &*self.inner;
        let st = &mut *st;

        // Partial write-back of appended bytes, read before anything is removed.
        if mode == CrashMode::KeepRandomPrefix {
            for (path, id) in st.current_files() {
                if let Some(bytes) = st.written_back(inner, &path, id)? {
                    st.files.get_mut(&id).expect("listed").durable = bytes;
                }
            }
        }

        // 1. Remove the current tree (except pre-existing directories).
        let mut stack = vec![(ROOT, PathBuf::from("/"))];
        while let Some((dir, path)) = stack.pop() {
            for (name, e) in &st.dirs[&dir].current {
                let p = path.join(name);
                match *e {
                    Entry::File(_) => inner.remove_file(&p)?,
                    Entry::Dir(id) if st.dirs[&id].preexisting => stack.push((id, p)),
                    Entry::Dir(_) => inner.remove_dir_all(&p)?,
                }
            }
        }

        // 2. Rebuild the durable tree; a node named twice becomes two nodes.
        let mut seen_files = HashSet::new();
        let mut seen_dirs = HashSet::new();
        seen_dirs.insert(ROOT);
        let mut stack = vec![(ROOT, PathBuf::from("/"))];
        while let Some((dir, path)) = stack.pop() {
            let table: Vec<(OsString, Entry)> = st.dirs[&dir]
                .durable
                .iter()
                .map(|(n, e)| (n.clone(), *e))
                .collect();
            let mut new_table = BTreeMap::new();
            for (name, e) in table {
                let p = path.join(&name);
                let e = match e {
                    Entry::File(id) => {
                        let id = if seen_files.insert(id) {
                            id
                        } else {
                            let copy = FileNode {
                                durable: st.files[&id].durable.clone(),
                                dirty: None,
                            };
                            let nid = st.alloc_id();
                            seen_files.insert(nid);
                            st.files.insert(nid, copy);
                            nid
                        };
                        let f = inner.create(&p)?;
                        let node = st.files.get_mut(&id).expect("named file exists");
                        f.write_at(0, &node.durable)?;
                        f.sync()?;
                        node.dirty = None;
                        Entry::File(id)
                    }
                    Entry::Dir(id) => {
                        let id = if seen_dirs.insert(id) {
                            id
                        } else {
                            let copy = DirNode {
                                preexisting: false,
                                ..st.dirs[&id].clone()
                            };
                            let nid = st.alloc_id();
                            seen_dirs.insert(nid);
                            st.dirs.insert(nid, copy);
                            nid
                        };
                        inner.create_dir_all(&p)?;
                        stack.push((id, p));
                        Entry::Dir(id)
                    }
                };
                new_table.insert(name, e);
            }
            let d = st.dirs.get_mut(&dir).expect("reachable dir");
            d.durable = new_table.clone();
            d.current = new_table;
        }
        st.files.retain(|id, _| seen_files.contains(id));
        st.dirs.retain(|id, _| seen_dirs.contains(id));
        st.generation += 1;
        st.crash_after = None;
        Ok(())
    }

    /// Damages the newest durable bytes of the file at `path`, as a disk
    /// may lose or garble a write it had acknowledged: flips one bit, at an
    /// offset and bit drawn from `rng_seed` (deterministic), among the last
    /// `within_last_bytes` bytes of the file's synced contents, not
    /// counting trailing zero bytes (preallocated space). Returns the
    /// offset of the damaged byte, or `None` when the synced contents hold
    /// no non-zero byte (or `within_last_bytes` is 0).
    ///
    /// Meant to be called at crash time (before [`FaultyFs::crash`]): the
    /// durable contents are damaged, so the next crash (or crash image)
    /// shows it; when the file has no unsynced changes the live file is
    /// damaged too. Not a counted operation; faults and the fault random
    /// stream are not affected.
    pub fn damage_synced_tail(
        &self,
        path: &Path,
        within_last_bytes: u64,
        rng_seed: u64,
    ) -> io::Result<Option<u64>> {
        let path = normalize(path);
        let mut st = self.state.lock();
        let id = match st.lookup(&*self.inner, &path)? {
            Some(Entry::File(id)) => id,
            Some(Entry::Dir(_)) => {
                return Err(err(
                    io::ErrorKind::IsADirectory,
                    format!("{}: is a directory", path.display()),
                ));
            }
            None => {
                return Err(err(
                    io::ErrorKind::NotFound,
                    format!("{}: no such file", path.display()),
                ));
            }
        };
        let node = st.files.get_mut(&id).expect("named file exists");
        let Some(last) = node.durable.iter().rposition(|&b| b != 0) else {
            return Ok(None);
        };
        if within_last_bytes == 0 {
            return Ok(None);
        }
        let end = last as u64 + 1;
        let window = within_last_bytes.min(end);
        let mut rng = Rng::new(rng_seed);
        let offset = end - window + rng.below(window);
        let bit = 1u8 << rng.below(8);
        node.durable[offset as usize] ^= bit;
        if node.dirty.is_none() {
            let byte = [node.durable[offset as usize]];
            self.inner.open(&path)?.write_at(offset, &byte)?;
        }
        Ok(Some(offset))
    }

    fn handle(&self, inner: Box<dyn File>, id: u64, generation: u64) -> Box<dyn File> {
        Box::new(FaultyFile {
            inner,
            fs_inner: self.inner.clone(),
            id,
            generation,
            state: self.state.clone(),
        })
    }

    fn open_with(&self, path: &Path, writable: bool) -> io::Result<Box<dyn File>> {
        let path = normalize(path);
        let mut st = self.state.lock();
        match st.lookup(&*self.inner, &path)? {
            Some(Entry::File(id)) => {
                let f = if writable {
                    self.inner.open(&path)?
                } else {
                    self.inner.open_read(&path)?
                };
                Ok(self.handle(f, id, st.generation))
            }
            Some(Entry::Dir(_)) => Err(err(
                io::ErrorKind::IsADirectory,
                format!("{}: is a directory", path.display()),
            )),
            None => Err(err(
                io::ErrorKind::NotFound,
                format!("{}: no such file", path.display()),
            )),
        }
    }
}

impl FileSystem for FaultyFs {
    fn create(&self, path: &Path) -> io::Result<Box<dyn File>> {
        let path = normalize(path);
        let mut st = self.state.lock();
        if st.begin_op(&*self.inner, OpKind::Meta)?.is_some() {
            return Err(injected("create error"));
        }
        let (dir, name) = st.resolve_parent(&*self.inner, &path)?;
        let existing = st.dirs[&dir].current.get(&name).copied();
        let id = match existing {
            Some(Entry::Dir(_)) => {
                return Err(err(
                    io::ErrorKind::IsADirectory,
                    format!("{}: is a directory", path.display()),
                ));
            }
            Some(Entry::File(id)) => {
                // O_TRUNC keeps the file; the truncation is an unsynced change.
                let f = self.inner.create(&path)?;
                let node = st.files.get_mut(&id).expect("named file exists");
                let old = node.durable.len() as u64;
                node.mark_dirty(0, old);
                return Ok(self.handle(f, id, st.generation));
            }
            None => st.alloc_id(),
        };
        let f = self.inner.create(&path)?;
        st.files.insert(id, FileNode::default());
        st.dirs
            .get_mut(&dir)
            .expect("resolved")
            .current
            .insert(name, Entry::File(id));
        Ok(self.handle(f, id, st.generation))
    }

    fn open(&self, path: &Path) -> io::Result<Box<dyn File>> {
        self.open_with(path, true)
    }

    fn open_read(&self, path: &Path) -> io::Result<Box<dyn File>> {
        self.open_with(path, false)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let (from, to) = (normalize(from), normalize(to));
        let mut st = self.state.lock();
        if st.begin_op(&*self.inner, OpKind::Meta)?.is_some() {
            return Err(injected("rename error"));
        }
        let (fdir, fname) = st.resolve_parent(&*self.inner, &from)?;
        let (tdir, tname) = st.resolve_parent(&*self.inner, &to)?;
        if !st.dirs[&fdir].current.contains_key(&fname) {
            return Err(err(
                io::ErrorKind::NotFound,
                format!("{}: no such file", from.display()),
            ));
        }
        self.inner.rename(&from, &to)?;
        let e = st
            .dirs
            .get_mut(&fdir)
            .expect("resolved")
            .current
            .remove(&fname)
            .expect("checked");
        st.dirs
            .get_mut(&tdir)
            .expect("resolved")
            .current
            .insert(tname, e);
        Ok(())
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let path = normalize(path);
        let mut st = self.state.lock();
        if st.begin_op(&*self.inner, OpKind::Meta)?.is_some() {
            return Err(injected("remove error"));
        }
        let (dir, name) = st.resolve_parent(&*self.inner, &path)?;
        self.inner.remove_file(&path)?;
        st.dirs
            .get_mut(&dir)
            .expect("resolved")
            .current
            .remove(&name);
        Ok(())
    }

    fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        let path = normalize(path);
        let mut st = self.state.lock();
        if st.begin_op(&*self.inner, OpKind::Meta)?.is_some() {
            return Err(injected("remove error"));
        }
        let (dir, name) = st.resolve_parent(&*self.inner, &path)?;
        self.inner.remove_dir_all(&path)?;
        st.dirs
            .get_mut(&dir)
            .expect("resolved")
            .current
            .remove(&name);
        Ok(())
    }

    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        let path = normalize(path);
        let comps = names(&path)?;
        let mut st = self.state.lock();
        if st.begin_op(&*self.inner, OpKind::Meta)?.is_some() {
            return Err(injected("mkdir error"));
        }
        let mut cur = ROOT;
        let mut p = PathBuf::from("/");
        let mut created = false;
        for name in &comps {
            p.push(name);
            let found = st.dirs[&cur].current.get(name).copied();
            cur = match found {
                Some(Entry::Dir(id)) => id,
                Some(Entry::File(_)) => {
                    return Err(err(
                        io::ErrorKind::AlreadyExists,
                        format!("{}: is a file", p.display()),
                    ));
                }
                None if !created && self.inner.is_dir(&p) => st.adopt_dir(cur, name),
                None => {
                    if !created {
                        self.inner.create_dir_all(&path)?;
                        created = true;
                    }
                    let id = st.alloc_id();
                    st.dirs.insert(id, DirNode::default());
                    st.dirs
                        .get_mut(&cur)
                        .expect("resolved")
                        .current
                        .insert(name.clone(), Entry::Dir(id));
                    id
                }
            };
        }
        Ok(())
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<PathBuf>> {
        let dir = normalize(dir);
        let comps = names(&dir)?;
        let mut st = self.state.lock();
        let id = st.resolve_dir(&*self.inner, &comps)?;
        let mut out: Vec<PathBuf> = st.dirs[&id].current.keys().map(|n| dir.join(n)).collect();
        out.sort();
        Ok(out)
    }

    fn exists(&self, path: &Path) -> bool {
        let path = normalize(path);
        matches!(self.state.lock().lookup(&*self.inner, &path), Ok(Some(_)))
    }

    fn is_dir(&self, path: &Path) -> bool {
        let path = normalize(path);
        matches!(
            self.state.lock().lookup(&*self.inner, &path),
            Ok(Some(Entry::Dir(_)))
        )
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let dir = normalize(dir);
        let comps = names(&dir)?;
        let mut st = self.state.lock();
        if st.begin_op(&*self.inner, OpKind::Sync)?.is_some() {
            return Err(injected("directory sync error"));
        }
        let id = st.resolve_dir(&*self.inner, &comps)?;
        self.inner.sync_dir(&dir)?;
        let d = st.dirs.get_mut(&id).expect("resolved");
        d.durable = d.current.clone();
        Ok(())
    }
}
