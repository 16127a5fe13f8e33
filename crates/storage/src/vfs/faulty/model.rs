//! The durability model of [`FaultyFs`](super::FaultyFs): what each file
//! and directory holds now and what it would hold after a crash.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::io;
use std::path::{Component, Path, PathBuf};

use longship_raft::Rng;

use super::{CrashMode, Fault, FaultProbabilities};
use crate::vfs::{FileSystem, MemFs};

/// The kind of a counted operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum OpKind {
    Write,
    Sync,
    Meta,
}

/// A name table entry: the id of a file or directory node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Entry {
    File(u64),
    Dir(u64),
}

/// A directory of the model.
#[derive(Clone, Debug, Default)]
pub(super) struct DirNode {
    /// Names as the running program sees them.
    pub(super) current: BTreeMap<OsString, Entry>,
    /// Names as of the last successful `sync_dir` of this directory.
    pub(super) durable: BTreeMap<OsString, Entry>,
    /// Existed in the wrapped file system before; never removed by a crash.
    pub(super) preexisting: bool,
}

/// A file of the model.
#[derive(Clone, Debug, Default)]
pub(super) struct FileNode {
    /// Contents as of the last successful sync.
    pub(super) durable: Vec<u8>,
    /// Hull `[lo, hi)` of byte ranges changed since the last sync (a
    /// truncation marks its boundary), `None` when clean.
    pub(super) dirty: Option<(u64, u64)>,
}

impl FileNode {
    pub(super) fn mark_dirty(&mut self, lo: u64, hi: u64) {
        self.dirty = Some(match self.dirty {
            None => (lo, hi),
            Some((a, b)) => (a.min(lo), b.max(hi)),
        });
    }
}

pub(super) const ROOT: u64 = 0;

/// Bound on bytes one file may hold in the model (tests only).
pub(super) const FILE_BYTES_MAX: u64 = 1 << 32;

pub(super) struct State {
    pub(super) rng: Rng,
    /// Number of counted operations so far.
    pub(super) op_count: u64,
    /// Faults to inject at given operation numbers.
    pub(super) scheduled: BTreeMap<u64, Fault>,
    /// Operations numbered above this fail until the next crash.
    pub(super) crash_after: Option<u64>,
    pub(super) probabilities: FaultProbabilities,
    /// Faults injected so far.
    pub(super) faults_injected: u64,
    /// When set, the crash image before every counted operation is recorded.
    pub(super) recording: Option<CrashMode>,
    /// Recorded `(operations done, crash image)` pairs.
    pub(super) images: Vec<(u64, MemFs)>,
    /// Bumped by every crash; handles of an older generation are dead.
    pub(super) generation: u64,
    pub(super) dirs: HashMap<u64, DirNode>,
    pub(super) files: HashMap<u64, FileNode>,
    pub(super) next_id: u64,
}

pub(super) fn err(kind: io::ErrorKind, msg: impl Into<String>) -> io::Error {
    io::Error::new(kind, msg.into())
}

pub(super) fn injected(what: &str) -> io::Error {
    err(io::ErrorKind::Other, format!("injected fault: {what}"))
}

pub(super) fn names(path: &Path) -> io::Result<Vec<OsString>> {
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
    pub(super) fn alloc_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    pub(super) fn frozen(&self) -> bool {
        self.crash_after.is_some_and(|k| self.op_count >= k)
    }

    /// Numbers the next operation and decides whether it fails.
    pub(super) fn begin_op(
        &mut self,
        inner: &dyn FileSystem,
        kind: OpKind,
    ) -> io::Result<Option<Fault>> {
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
    pub(super) fn resolve_dir(
        &mut self,
        inner: &dyn FileSystem,
        comps: &[OsString],
    ) -> io::Result<u64> {
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

    pub(super) fn adopt_dir(&mut self, parent: u64, name: &OsString) -> u64 {
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
    pub(super) fn resolve_parent(
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

    pub(super) fn lookup(
        &mut self,
        inner: &dyn FileSystem,
        path: &Path,
    ) -> io::Result<Option<Entry>> {
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
    pub(super) fn image(&mut self, inner: &dyn FileSystem, mode: CrashMode) -> io::Result<MemFs> {
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
    pub(super) fn written_back(
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
    pub(super) fn current_files(&self) -> Vec<(PathBuf, u64)> {
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
