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
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use longship_raft::Rng;
use parking_lot::Mutex;

use super::MemFs;
use super::mem::normalize;
use super::{File, FileSystem};

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

/// The kind of a counted operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum OpKind {
    Write,
    Sync,
    Meta,
}

/// A name table entry: the id of a file or directory node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Entry {
    File(u64),
    Dir(u64),
}

/// A directory of the model.
#[derive(Clone, Debug, Default)]
struct DirNode {
    /// Names as the running program sees them.
    current: BTreeMap<OsString, Entry>,
    /// Names as of the last successful `sync_dir` of this directory.
    durable: BTreeMap<OsString, Entry>,
    /// Existed in the wrapped file system before; never removed by a crash.
    preexisting: bool,
}

/// A file of the model.
#[derive(Clone, Debug, Default)]
struct FileNode {
    /// Contents as of the last successful sync.
    durable: Vec<u8>,
    /// Hull `[lo, hi)` of byte ranges changed since the last sync (a
    /// truncation marks its boundary), `None` when clean.
    dirty: Option<(u64, u64)>,
}

impl FileNode {
    fn mark_dirty(&mut self, lo: u64, hi: u64) {
        self.dirty = Some(match self.dirty {
            None => (lo, hi),
            Some((a, b)) => (a.min(lo), b.max(hi)),
        });
    }
}

const ROOT: u64 = 0;

/// Bound on bytes one file may hold in the model (tests only).
const FILE_BYTES_MAX: u64 = 1 << 32;

struct State {
    rng: Rng,
    /// Number of counted operations so far.
    op_count: u64,
    /// Faults to inject at given operation numbers.
    scheduled: BTreeMap<u64, Fault>,
    /// Operations numbered above this fail until the next crash.
    crash_after: Option<u64>,
    probabilities: FaultProbabilities,
    /// Faults injected so far.
    faults_injected: u64,
    /// When set, the crash image before every counted operation is recorded.
    recording: Option<CrashMode>,
    /// Recorded `(operations done, crash image)` pairs.
    images: Vec<(u64, MemFs)>,
    /// Bumped by every crash; handles of an older generation are dead.
    generation: u64,
    dirs: HashMap<u64, DirNode>,
    files: HashMap<u64, FileNode>,
    next_id: u64,
}

fn err(kind: io::ErrorKind, msg: impl Into<String>) -> io::Error {
    io::Error::new(kind, msg.into())
}

fn injected(what: &str) -> io::Error {
    err(io::ErrorKind::Other, format!("injected fault: {what}"))
}

fn names(path: &Path) -> io::Result<Vec<OsString>> {
    if !path.is_absolute() {
        return Err(err(
            io::ErrorKind::InvalidInput,
            format!("{}: FaultyFs needs absolute paths", path.display()),
        ));
    }
    let mut out = Vec::new();
    for c in path.components() {
        match c {
            Component::Normal(n) => out.push(n.to_os_string()),
            Component::ParentDir => {
                return Err(err(io::ErrorKind::InvalidInput, "'..' not supported"));
            }
            _ => {}
        }
    }
    Ok(out)
}

impl State {
    fn alloc_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn frozen(&self) -> bool {
        self.crash_after.is_some_and(|k| self.op_count >= k)
    }

    /// Numbers the next operation and decides whether it fails.
    fn begin_op(&mut self, inner: &dyn FileSystem, kind: OpKind) -> io::Result<Option<Fault>> {
        if self.frozen() {
            return Err(err(io::ErrorKind::Other, "simulated power cut"));
        }
        if let Some(mode) = self.recording {
            let image = self.image(inner, mode)?;
            self.images.push((self.op_count, image));
        }
        self.op_count += 1;
        let mut fault = self.scheduled.remove(&self.op_count);
        if fault.is_none() {
            let p = self.probabilities;
            fault = match kind {
                OpKind::Write if p.torn_write > 0.0 && self.rng.chance(p.torn_write) => {
                    Some(Fault::TornWrite)
                }
                OpKind::Write if p.write_error > 0.0 && self.rng.chance(p.write_error) => {
                    Some(Fault::Error)
                }
                OpKind::Sync if p.sync_error > 0.0 && self.rng.chance(p.sync_error) => {
                    Some(Fault::Error)
                }
                _ => None,
            };
        }
        if fault.is_some() {
            self.faults_injected += 1;
        }
        Ok(fault)
    }

    /// Resolves a directory by its name components, adopting directories
    /// that exist in the wrapped file system but not yet in the model.
    fn resolve_dir(&mut self, inner: &dyn FileSystem, comps: &[OsString]) -> io::Result<u64> {
        let mut cur = ROOT;
        let mut path = PathBuf::from("/");
        for name in comps {
            path.push(name);
            let found = self.dirs[&cur].current.get(name).copied();
            cur = match found {
                Some(Entry::Dir(id)) => id,
                Some(Entry::File(_)) => {
                    return Err(err(
                        io::ErrorKind::NotADirectory,
                        format!("{}: not a directory", path.display()),
                    ));
                }
                None if inner.is_dir(&path) => self.adopt_dir(cur, name),
                None => {
                    return Err(err(
                        io::ErrorKind::NotFound,
                        format!("{}: no such directory", path.display()),
                    ));
                }
            };
        }
        Ok(cur)
    }

    fn adopt_dir(&mut self, parent: u64, name: &OsString) -> u64 {
        let id = self.alloc_id();
        self.dirs.insert(
            id,
            DirNode {
                preexisting: true,
                ..DirNode::default()
            },
        );
        let p = self.dirs.get_mut(&parent).expect("parent exists");
        p.current.insert(name.clone(), Entry::Dir(id));
        p.durable.insert(name.clone(), Entry::Dir(id));
        id
    }

    /// The parent directory id and the last name of a path.
    fn resolve_parent(
        &mut self,
        inner: &dyn FileSystem,
        path: &Path,
    ) -> io::Result<(u64, OsString)> {
        let mut comps = names(path)?;
        let Some(name) = comps.pop() else {
            return Err(err(io::ErrorKind::InvalidInput, "path is the root"));
        };
        Ok((self.resolve_dir(inner, &comps)?, name))
    }

    fn lookup(&mut self, inner: &dyn FileSystem, path: &Path) -> io::Result<Option<Entry>> {
        let comps = names(path)?;
        if comps.is_empty() {
            return Ok(Some(Entry::Dir(ROOT)));
        }
        let (dir, name) = self.resolve_parent(inner, path)?;
        if let Some(e) = self.dirs[&dir].current.get(&name) {
            return Ok(Some(*e));
        }
        if inner.is_dir(path) {
            return Ok(Some(Entry::Dir(self.adopt_dir(dir, &name))));
        }
        Ok(None)
    }

    /// What the disk would hold after a crash now, as a fresh [`MemFs`]
    /// (changes nothing but the random draws of `KeepRandomPrefix`).
    fn image(&mut self, inner: &dyn FileSystem, mode: CrashMode) -> io::Result<MemFs> {
        let mut partial: HashMap<u64, Vec<u8>> = HashMap::new();
        if mode == CrashMode::KeepRandomPrefix {
            for (path, id) in self.current_files() {
                if let Some(bytes) = self.written_back(inner, &path, id)? {
                    partial.insert(id, bytes);
                }
            }
        }
        let out = MemFs::new();
        let mut stack = vec![(ROOT, PathBuf::from("/"))];
        // Bounded: follows durable tables; a node named twice is copied twice,
        // and tables form a tree of finite depth.
        while let Some((dir, path)) = stack.pop() {
            for (name, e) in &self.dirs[&dir].durable {
                let p = path.join(name);
                match *e {
                    Entry::Dir(id) => {
                        out.create_dir_all(&p)?;
                        stack.push((id, p));
                    }
                    Entry::File(id) => {
                        let bytes = partial.get(&id).unwrap_or(&self.files[&id].durable);
                        out.create(&p)?.write_at(0, bytes)?;
                    }
                }
            }
        }
        Ok(out)
    }

    /// For a file only appended to since its last sync: its durable bytes
    /// plus a random prefix of the appended ones.
    fn written_back(
        &mut self,
        inner: &dyn FileSystem,
        path: &Path,
        id: u64,
    ) -> io::Result<Option<Vec<u8>>> {
        let node = &self.files[&id];
        let Some((lo, hi)) = node.dirty else {
            return Ok(None);
        };
        if lo < node.durable.len() as u64 || hi <= lo {
            return Ok(None);
        }
        let keep = self.rng.below(hi - lo + 1);
        let mut buf = vec![0u8; keep as usize];
        let n = inner.open_read(path)?.read_at(lo, &mut buf)?;
        buf.truncate(n);
        let mut bytes = self.files[&id].durable.clone();
        bytes.resize(lo as usize, 0);
        bytes.extend_from_slice(&buf);
        Ok(Some(bytes))
    }

    /// Current path of every file reachable by name, with its id.
    fn current_files(&self) -> Vec<(PathBuf, u64)> {
        let mut out = Vec::new();
        let mut stack = vec![(ROOT, PathBuf::from("/"))];
        // Bounded: every directory node is visited once (the tree has no cycles).
        while let Some((dir, path)) = stack.pop() {
            for (name, e) in &self.dirs[&dir].current {
                match *e {
                    Entry::File(id) => out.push((path.join(name), id)),
                    Entry::Dir(id) => stack.push((id, path.join(name))),
                }
            }
        }
        out
    }
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

/// A handle on a [`FaultyFs`] file.
struct FaultyFile {
    inner: Box<dyn File>,
    /// The wrapped file system (for crash images).
    fs_inner: Arc<dyn FileSystem>,
    /// File node id in the model.
    id: u64,
    /// Crash generation the handle was opened in.
    generation: u64,
    state: Arc<Mutex<State>>,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(fs: &dyn FileSystem, p: &str) -> Vec<u8> {
        let f = fs.open_read(Path::new(p)).unwrap();
        let mut buf = vec![0u8; f.len().unwrap() as usize];
        f.read_at(0, &mut buf).unwrap();
        buf
    }

    #[test]
    fn crash_drops_unsynced_bytes_and_names() {
        let fs = FaultyFs::over_mem(1);
        fs.create_dir_all(Path::new("/d")).unwrap();
        fs.sync_dir(Path::new("/")).unwrap();
        let f = fs.create(Path::new("/d/a")).unwrap();
        f.append(b"durable").unwrap();
        f.sync().unwrap();
        fs.sync_dir(Path::new("/d")).unwrap();
        f.append(b" lost").unwrap();
        let g = fs.create(Path::new("/d/b")).unwrap();
        g.append(b"x").unwrap();
        g.sync().unwrap(); // data synced but its name is not
        fs.crash(CrashMode::DropUnsynced).unwrap();
        assert_eq!(read_all(&fs, "/d/a"), b"durable");
        assert!(!fs.exists(Path::new("/d/b")));
        assert!(f.append(b"dead handle").is_err());
    }

    #[test]
    fn unsynced_rename_is_undone_and_synced_rename_kept() {
        let fs = FaultyFs::over_mem(2);
        fs.create_dir_all(Path::new("/d")).unwrap();
        fs.sync_dir(Path::new("/")).unwrap();
        let f = fs.create(Path::new("/d/tmp")).unwrap();
        f.append(b"v1").unwrap();
        f.sync().unwrap();
        fs.sync_dir(Path::new("/d")).unwrap();
        fs.rename(Path::new("/d/tmp"), Path::new("/d/final"))
            .unwrap();
        fs.crash(CrashMode::DropUnsynced).unwrap();
        assert!(fs.exists(Path::new("/d/tmp")));
        assert!(!fs.exists(Path::new("/d/final")));
        fs.rename(Path::new("/d/tmp"), Path::new("/d/final"))
            .unwrap();
        fs.sync_dir(Path::new("/d")).unwrap();
        fs.crash(CrashMode::DropUnsynced).unwrap();
        assert_eq!(read_all(&fs, "/d/final"), b"v1");
        assert_eq!(
            fs.list(Path::new("/d")).unwrap(),
            vec![PathBuf::from("/d/final")]
        );
    }

    #[test]
    fn unsynced_directory_disappears() {
        let fs = FaultyFs::over_mem(3);
        fs.create_dir_all(Path::new("/x/y")).unwrap();
        fs.crash(CrashMode::DropUnsynced).unwrap();
        assert!(!fs.exists(Path::new("/x")));
    }

    #[test]
    fn power_cut_and_scheduled_faults() {
        let fs = FaultyFs::over_mem(4);
        fs.create_dir_all(Path::new("/d")).unwrap(); // op 1
        let f = fs.create(Path::new("/d/a")).unwrap(); // op 2
        fs.schedule_fault(3, Fault::Error);
        assert!(f.append(b"abc").is_err()); // op 3
        assert_eq!(f.len().unwrap(), 0);
        fs.schedule_fault(4, Fault::TornWrite);
        assert!(f.append(b"abcdef").is_err()); // op 4
        assert!(f.len().unwrap() < 6);
        fs.crash_after_op(Some(5));
        f.set_len(0).unwrap(); // op 5
        assert!(fs.is_power_cut());
        assert!(f.append(b"x").is_err());
        assert!(fs.sync_dir(Path::new("/d")).is_err());
        assert_eq!(fs.op_count(), 5);
        fs.crash(CrashMode::DropUnsynced).unwrap();
        assert!(!fs.is_power_cut());
        assert!(!fs.exists(Path::new("/d")));
    }

    #[test]
    fn keep_random_prefix_keeps_a_prefix() {
        for seed in 0..20 {
            let fs = FaultyFs::over_mem(seed);
            fs.create_dir_all(Path::new("/d")).unwrap();
            fs.sync_dir(Path::new("/")).unwrap();
            let f = fs.create(Path::new("/d/a")).unwrap();
            fs.sync_dir(Path::new("/d")).unwrap();
            f.append(b"0123").unwrap();
            f.sync().unwrap();
            f.append(b"456789").unwrap();
            fs.crash(CrashMode::KeepRandomPrefix).unwrap();
            let got = read_all(&fs, "/d/a");
            assert!(got.len() >= 4 && b"0123456789".starts_with(&got));
        }
    }

    #[test]
    fn works_over_os_fs_in_a_temp_dir() {
        let tmp = tempfile::tempdir().unwrap();
        let fs = FaultyFs::new(Arc::new(super::super::OsFs), 5);
        let d = tmp.path().join("w");
        fs.create_dir_all(&d).unwrap();
        fs.sync_dir(tmp.path()).unwrap();
        let f = fs.create(&d.join("a")).unwrap();
        f.append(b"hello").unwrap();
        f.sync().unwrap();
        fs.sync_dir(&d).unwrap();
        f.append(b"!").unwrap();
        fs.crash(CrashMode::DropUnsynced).unwrap();
        assert_eq!(std::fs::read(d.join("a")).unwrap(), b"hello");
    }
}
