//! [`MemFs`]: an in-memory file system for tests and the simulator.
//!
//! Everything is durable at once (there is no page cache to lose); wrap it in
//! a [`FaultyFs`](super::FaultyFs) to model crashes. Deterministic: listings
//! are sorted and nothing depends on time or addresses.

use std::collections::BTreeMap;
use std::io;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};

use super::{File, FileSystem};

/// The bytes of one file, shared by every handle opened on it.
type Contents = Arc<RwLock<Vec<u8>>>;

/// A node of the name table.
#[derive(Clone)]
enum Node {
    File(Contents),
    Dir,
}

/// An in-memory file system. Cloning gives another handle to the same tree.
#[derive(Clone, Default)]
pub struct MemFs {
    /// Full normalized path → node. Subtrees are contiguous in this order
    /// because `PathBuf` compares component by component.
    nodes: Arc<Mutex<BTreeMap<PathBuf, Node>>>,
}

impl std::fmt::Debug for MemFs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemFs")
            .field("nodes", &self.nodes.lock().len())
            .finish()
    }
}

/// Drops `.` components and trailing separators so equal paths compare equal.
pub(crate) fn normalize(path: &Path) -> PathBuf {
    path.components()
        .filter(|c| !matches!(c, Component::CurDir))
        .collect()
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("{}: no such file or directory", path.display()),
    )
}

/// Whether `path` is a root (or empty), which always exists as a directory.
fn is_root(path: &Path) -> bool {
    path.parent().is_none() || path.as_os_str().is_empty()
}

impl MemFs {
    /// An empty file system.
    pub fn new() -> MemFs {
        MemFs::default()
    }

    /// Total bytes held in files (for tests checking space reclamation).
    pub fn total_file_bytes(&self) -> u64 {
        self.nodes
            .lock()
            .values()
            .map(|n| match n {
                Node::File(c) => c.read().len() as u64,
                Node::Dir => 0,
            })
            .sum()
    }

    fn check_parent(nodes: &BTreeMap<PathBuf, Node>, path: &Path) -> io::Result<()> {
        match path.parent() {
            Some(p) if !is_root(p) => match nodes.get(p) {
                Some(Node::Dir) => Ok(()),
                Some(Node::File(_)) => Err(io::Error::new(
                    io::ErrorKind::NotADirectory,
                    format!("{}: not a directory", p.display()),
                )),
                None => Err(not_found(p)),
            },
            _ => Ok(()),
        }
    }

    fn open_handle(&self, path: &Path, writable: bool) -> io::Result<Box<dyn File>> {
        let path = normalize(path);
        match self.nodes.lock().get(&path) {
            Some(Node::File(c)) => Ok(Box::new(MemFile {
                contents: c.clone(),
                writable,
            })),
            Some(Node::Dir) => Err(io::Error::new(
                io::ErrorKind::IsADirectory,
                format!("{}: is a directory", path.display()),
            )),
            None => Err(not_found(&path)),
        }
    }

    /// Keys of `path` and everything below it.
    fn subtree(nodes: &BTreeMap<PathBuf, Node>, path: &Path) -> Vec<PathBuf> {
        nodes
            .range(path.to_path_buf()..)
            .take_while(|(k, _)| k.starts_with(path))
            .map(|(k, _)| k.clone())
            .collect()
    }
}

/// A handle on a [`MemFs`] file.
struct MemFile {
    contents: Contents,
    /// Whether writes are allowed (false for `open_read`).
    writable: bool,
}

impl MemFile {
    fn check_writable(&self) -> io::Result<()> {
        if self.writable {
            Ok(())
        } else {
            Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "file opened read-only",
            ))
        }
    }
}

fn offset_usize(offset: u64) -> io::Result<usize> {
    usize::try_from(offset)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "offset too large"))
}

impl File for MemFile {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let data = self.contents.read();
        let Ok(start) = usize::try_from(offset) else {
            return Ok(0);
        };
        if start >= data.len() {
            return Ok(0);
        }
        let n = buf.len().min(data.len() - start);
        buf[..n].copy_from_slice(&data[start..start + n]);
        Ok(n)
    }

    fn write_at(&self, offset: u64, buf: &[u8]) -> io::Result<()> {
        self.check_writable()?;
        let start = offset_usize(offset)?;
        let end = start
            .checked_add(buf.len())
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "write past end"))?;
        let mut data = self.contents.write();
        if start == data.len() {
            data.extend_from_slice(buf);
            return Ok(());
        }
        if data.len() < end {
            data.resize(end, 0);
        }
        data[start..end].copy_from_slice(buf);
        Ok(())
    }

    fn append(&self, buf: &[u8]) -> io::Result<u64> {
        self.check_writable()?;
        let mut data = self.contents.write();
        let offset = data.len() as u64;
        data.extend_from_slice(buf);
        Ok(offset)
    }

    fn sync(&self) -> io::Result<()> {
        Ok(())
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.contents.read().len() as u64)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.check_writable()?;
        let len = offset_usize(len)?;
        self.contents.write().resize(len, 0);
        Ok(())
    }

    fn preallocate(&self, _len: u64) -> io::Result<()> {
        Ok(())
    }
}

impl FileSystem for MemFs {
    fn create(&self, path: &Path) -> io::Result<Box<dyn File>> {
        let path = normalize(path);
        let mut nodes = self.nodes.lock();
        Self::check_parent(&nodes, &path)?;
        let contents = match nodes.get(&path) {
            Some(Node::Dir) => {
                return Err(io::Error::new(
                    io::ErrorKind::IsADirectory,
                    format!("{}: is a directory", path.display()),
                ));
            }
            Some(Node::File(c)) => {
                // Like O_TRUNC: same file, emptied; other handles see it.
                c.write().clear();
                c.clone()
            }
            None => {
                let c: Contents = Arc::default();
                nodes.insert(path, Node::File(c.clone()));
                c
            }
        };
        Ok(Box::new(MemFile {
            contents,
            writable: true,
        }))
    }

    fn open(&self, path: &Path) -> io::Result<Box<dyn File>> {
        self.open_handle(path, true)
    }

    fn open_read(&self, path: &Path) -> io::Result<Box<dyn File>> {
        self.open_handle(path, false)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let (from, to) = (normalize(from), normalize(to));
        let mut nodes = self.nodes.lock();
        let Some(node) = nodes.get(&from).cloned() else {
            return Err(not_found(&from));
        };
        Self::check_parent(&nodes, &to)?;
        if from == to {
            return Ok(());
        }
        if to.starts_with(&from) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "cannot move a directory into itself",
            ));
        }
        match (&node, nodes.get(&to)) {
            (Node::File(_), Some(Node::Dir)) => {
                return Err(io::Error::new(
                    io::ErrorKind::IsADirectory,
                    format!("{}: is a directory", to.display()),
                ));
            }
            (Node::Dir, Some(Node::File(_))) => {
                return Err(io::Error::new(
                    io::ErrorKind::NotADirectory,
                    format!("{}: not a directory", to.display()),
                ));
            }
            (Node::Dir, Some(Node::Dir)) if Self::subtree(&nodes, &to).len() > 1 => {
                return Err(io::Error::new(
                    io::ErrorKind::DirectoryNotEmpty,
                    format!("{}: directory not empty", to.display()),
                ));
            }
            _ => {}
        }
        let moved = Self::subtree(&nodes, &from);
        nodes.remove(&to);
        for old in moved {
            let node = nodes.remove(&old).expect("listed above");
            let rel = old.strip_prefix(&from).expect("subtree of from");
            let new = if rel.as_os_str().is_empty() {
                to.clone()
            } else {
                to.join(rel)
            };
            nodes.insert(new, node);
        }
        Ok(())
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let path = normalize(path);
        let mut nodes = self.nodes.lock();
        match nodes.get(&path) {
            Some(Node::File(_)) => {
                nodes.remove(&path);
                Ok(())
            }
            Some(Node::Dir) => Err(io::Error::new(
                io::ErrorKind::IsADirectory,
                format!("{}: is a directory", path.display()),
            )),
            None => Err(not_found(&path)),
        }
    }

    fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        let path = normalize(path);
        let mut nodes = self.nodes.lock();
        if !matches!(nodes.get(&path), Some(Node::Dir)) {
            return Err(not_found(&path));
        }
        for k in Self::subtree(&nodes, &path) {
            nodes.remove(&k);
        }
        Ok(())
    }

    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        let path = normalize(path);
        let mut nodes = self.nodes.lock();
        let mut cur = PathBuf::new();
        for c in path.components() {
            cur.push(c);
            if is_root(&cur) {
                continue;
            }
            match nodes.get(&cur) {
                Some(Node::Dir) => {}
                Some(Node::File(_)) => {
                    return Err(io::Error::new(
                        io::ErrorKind::AlreadyExists,
                        format!("{}: is a file", cur.display()),
                    ));
                }
                None => {
                    nodes.insert(cur.clone(), Node::Dir);
                }
            }
        }
        Ok(())
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<PathBuf>> {
        let dir = normalize(dir);
        let nodes = self.nodes.lock();
        if !is_root(&dir) && !matches!(nodes.get(&dir), Some(Node::Dir)) {
            return Err(not_found(&dir));
        }
        Ok(nodes
            .range(dir.clone()..)
            .take_while(|(k, _)| k.starts_with(&dir))
            .filter(|(k, _)| k.parent() == Some(dir.as_path()))
            .map(|(k, _)| k.clone())
            .collect())
    }

    fn exists(&self, path: &Path) -> bool {
        let path = normalize(path);
        is_root(&path) || self.nodes.lock().contains_key(&path)
    }

    fn is_dir(&self, path: &Path) -> bool {
        let path = normalize(path);
        is_root(&path) || matches!(self.nodes.lock().get(&path), Some(Node::Dir))
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        if self.is_dir(dir) {
            Ok(())
        } else {
            Err(not_found(dir))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_dirs_rename_and_list() {
        let fs = MemFs::new();
        fs.create_dir_all(Path::new("/a/b")).unwrap();
        let f = fs.create(Path::new("/a/b/x")).unwrap();
        assert_eq!(f.append(b"hello").unwrap(), 0);
        assert_eq!(f.append(b" world").unwrap(), 5);
        f.write_at(0, b"J").unwrap();
        let mut buf = [0u8; 32];
        let r = fs.open_read(Path::new("/a/b/x")).unwrap();
        assert_eq!(r.read_at(0, &mut buf).unwrap(), 11);
        assert_eq!(&buf[..11], b"Jello world");
        assert!(r.write_at(0, b"x").is_err());
        fs.rename(Path::new("/a/b"), Path::new("/a/c")).unwrap();
        assert!(fs.exists(Path::new("/a/c/x")));
        assert!(!fs.exists(Path::new("/a/b/x")));
        assert_eq!(
            fs.list(Path::new("/a")).unwrap(),
            vec![PathBuf::from("/a/c")]
        );
        assert!(fs.create(Path::new("/nope/x")).is_err());
        fs.remove_dir_all(Path::new("/a")).unwrap();
        assert!(!fs.exists(Path::new("/a/c")));
        assert_eq!(fs.total_file_bytes(), 0);
    }
}
