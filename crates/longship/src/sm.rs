//! The state machine traits applications implement.
//!
//! Three kinds, as in dragonboat:
//! - [`StateMachine`]: state in memory, exclusive access for updates;
//!   lookups wait while an update runs.
//! - [`ConcurrentStateMachine`]: lookups run while updates run; snapshots
//!   are prepared quickly on the apply path and saved off it.
//! - [`OnDiskStateMachine`]: state lives in the application's own durable
//!   store; after a restart longship skips the entries it already applied,
//!   and snapshots stream its state only to bring other replicas up.
//!
//! Snapshots are written to and read from streams; the data never has to
//! fit in memory. Every method gets a [`StopFlag`] it should poll in long
//! loops so that closing a NodeHost does not wait for a long snapshot.

use std::any::Any;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use longship_raft::Index;

/// What a state machine returns for one applied entry.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SmResult {
    /// A number of the application's choosing.
    pub value: u64,
    /// Optional bytes.
    pub data: Vec<u8>,
}

/// One entry handed to `update`: the application fills `result`.
#[derive(Clone, Debug, Default)]
pub struct SmEntry {
    /// Log index of the entry.
    pub index: Index,
    /// The proposed command.
    pub cmd: Bytes,
    /// The result the application sets.
    pub result: SmResult,
}

/// An error returned by a state machine. Returning an error from `update`
/// stops the replica (its state would otherwise diverge); from `lookup` it
/// only fails that read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SmError(pub String);

/// The message of [`SmError::snapshot_aborted`] (dragonboat's
/// `ErrSnapshotAborted`, a sentinel compared by value like it).
pub const SNAPSHOT_ABORTED: &str = "snapshot aborted by the state machine";

impl SmError {
    /// An error with a message.
    pub fn new(msg: impl Into<String>) -> SmError {
        SmError(msg.into())
    }

    /// What a state machine's `save_snapshot` (or `prepare_snapshot`)
    /// returns to abort a snapshot it does not want taken now: the save is
    /// discarded, nothing is compacted, the replica goes on, and a
    /// requested snapshot ends with [`Error::Aborted`](crate::Error::Aborted)
    /// (not `Rejected`).
    pub fn snapshot_aborted() -> SmError {
        SmError(SNAPSHOT_ABORTED.to_string())
    }

    /// Whether this is [`SmError::snapshot_aborted`].
    pub fn is_snapshot_aborted(&self) -> bool {
        self.0 == SNAPSHOT_ABORTED
    }
}

impl From<std::io::Error> for SmError {
    fn from(e: std::io::Error) -> Self {
        SmError(e.to_string())
    }
}

/// Set when the replica is being stopped: long operations should return early.
#[derive(Clone, Debug, Default)]
pub struct StopFlag(Arc<AtomicBool>);

impl StopFlag {
    /// A flag that is not set.
    pub fn new() -> StopFlag {
        StopFlag::default()
    }

    /// Whether stopping was requested.
    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }

    /// Requests stopping.
    pub fn set(&self) {
        self.0.store(true, Ordering::Release);
    }
}

/// Most files one snapshot may carry ([`SnapshotFiles::add_file`]).
pub const SNAPSHOT_FILES_MAX: usize = 4000;
/// Most bytes of metadata one attached file may carry.
pub const SNAPSHOT_FILE_METADATA_MAX_BYTES: usize = 64 << 10;
/// Most bytes of metadata all the files of one snapshot may carry together.
pub const SNAPSHOT_FILES_METADATA_MAX_BYTES: usize = 16 << 20;

/// Files a state machine attaches to the snapshot it is saving
/// (dragonboat's `ISnapshotFileCollection`): checkpoints, SST files,
/// anything kept beside the data written to the snapshot's stream.
///
/// Handed to the `save_snapshot_with_files` method of each state machine
/// kind. Once the save returns successfully, longship copies every added
/// file into the snapshot (checksummed with CRC32C, fsynced, committed
/// atomically with the rest); so the file must stay unchanged until the
/// save returns, and may be deleted after. Attached files travel with the
/// snapshot wherever it goes: streamed to followers, exported, imported.
/// On recovery they are handed back as [`SnapshotFile`]s.
///
/// Paths are on the NodeHost's file system (the operating system's,
/// unless [`NodeHostBuilder::file_system`](crate::NodeHostBuilder::file_system)
/// gave another). The file list and each file's metadata are recorded in
/// the snapshot (`docs/formats.md`, "Attached files").
#[derive(Debug, Default)]
pub struct SnapshotFiles {
    files: Vec<SnapshotFile>,
    metadata_bytes: usize,
}

impl SnapshotFiles {
    /// An empty collection.
    pub fn new() -> SnapshotFiles {
        SnapshotFiles::default()
    }

    /// Attaches the file at `path` under `file_id` (the state machine's
    /// own number for it, unique within the snapshot) with `metadata`
    /// (at most [`SNAPSHOT_FILE_METADATA_MAX_BYTES`], and
    /// [`SNAPSHOT_FILES_METADATA_MAX_BYTES`] for all files together; handed
    /// back as it is).
    ///
    /// Fails for a duplicate id, more than [`SNAPSHOT_FILES_MAX`] files or
    /// too much metadata; the save should then fail with the error. That
    /// the path is a readable file is checked when it is copied, after the
    /// save returns (the snapshot then fails).
    pub fn add_file(
        &mut self,
        file_id: u64,
        path: impl AsRef<Path>,
        metadata: &[u8],
    ) -> Result<(), SmError> {
        if self.files.iter().any(|f| f.file_id == file_id) {
            return Err(SmError::new(format!(
                "snapshot file id {file_id} added twice"
            )));
        }
        if self.files.len() >= SNAPSHOT_FILES_MAX {
            return Err(SmError::new(format!(
                "more than {SNAPSHOT_FILES_MAX} snapshot files"
            )));
        }
        if metadata.len() > SNAPSHOT_FILE_METADATA_MAX_BYTES {
            return Err(SmError::new(format!(
                "{} bytes of metadata for snapshot file {file_id}, at most {SNAPSHOT_FILE_METADATA_MAX_BYTES}",
                metadata.len()
            )));
        }
        if self.metadata_bytes + metadata.len() > SNAPSHOT_FILES_METADATA_MAX_BYTES {
            return Err(SmError::new(format!(
                "more than {SNAPSHOT_FILES_METADATA_MAX_BYTES} bytes of metadata for the snapshot's files"
            )));
        }
        self.metadata_bytes += metadata.len();
        self.files.push(SnapshotFile {
            file_id,
            path: path.as_ref().to_path_buf(),
            metadata: metadata.to_vec(),
        });
        Ok(())
    }

    /// The files added so far, in the order they were added.
    pub fn files(&self) -> &[SnapshotFile] {
        &self.files
    }

    /// Whether no file was added.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    pub(crate) fn into_files(self) -> Vec<SnapshotFile> {
        self.files
    }
}

/// A file attached to a snapshot ([`SnapshotFiles::add_file`]), as handed
/// to `recover_from_snapshot_with_files` (dragonboat's `SnapshotFile`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotFile {
    /// The id the saving state machine gave it.
    pub file_id: u64,
    /// Where it is: when saving, the file the state machine attached; when
    /// recovering, the copy inside the snapshot's directory, verified
    /// against its checksum before the call. That copy is removed with the
    /// snapshot (older snapshots are removed as newer ones are taken):
    /// copy or hard-link what the state machine keeps, during the call.
    pub path: PathBuf,
    /// The metadata it was attached with.
    pub metadata: Vec<u8>,
}

/// A state machine whose state lives in memory.
pub trait StateMachine: Send + Sync {
    /// Applies committed entries in log order, filling each `result`.
    fn update(&mut self, entries: &mut [SmEntry]) -> Result<(), SmError>;
    /// Answers a read-only query.
    fn lookup(&self, query: &[u8]) -> Result<Vec<u8>, SmError>;
    /// Writes the whole state to `w`.
    fn save_snapshot(&self, w: &mut dyn Write, stop: &StopFlag) -> Result<(), SmError>;
    /// Replaces the whole state by the one read from `r`.
    fn recover_from_snapshot(&mut self, r: &mut dyn Read, stop: &StopFlag) -> Result<(), SmError>;
    /// What longship calls to save a snapshot: writes the whole state to
    /// `w` and may attach files to `files` (see [`SnapshotFiles`]). The
    /// default calls [`save_snapshot`](Self::save_snapshot) and attaches
    /// none; a state machine that attaches files overrides this (and
    /// [`recover_from_snapshot_with_files`](Self::recover_from_snapshot_with_files)),
    /// and its `save_snapshot` is then never called by longship.
    fn save_snapshot_with_files(
        &self,
        w: &mut dyn Write,
        files: &mut SnapshotFiles,
        stop: &StopFlag,
    ) -> Result<(), SmError> {
        let _ = files;
        self.save_snapshot(w, stop)
    }
    /// What longship calls to recover from a snapshot: replaces the whole
    /// state by the one read from `r` and the attached `files` (see
    /// [`SnapshotFile::path`]). The default ignores the files and calls
    /// [`recover_from_snapshot`](Self::recover_from_snapshot).
    fn recover_from_snapshot_with_files(
        &mut self,
        r: &mut dyn Read,
        files: &[SnapshotFile],
        stop: &StopFlag,
    ) -> Result<(), SmError> {
        let _ = files;
        self.recover_from_snapshot(r, stop)
    }
    /// A hash of the whole state (dragonboat's `GetHash`), for checking
    /// that replicas agree ([`NodeHost::verify`](crate::NodeHost::verify)):
    /// equal states must give equal hashes on every replica. `None` (the
    /// default): the state machine offers none.
    fn hash(&self) -> Option<u64> {
        None
    }
    /// Releases resources; called once when the replica stops.
    fn close(&mut self) {}
}

/// A state machine whose lookups may run concurrently with updates.
/// longship never runs two updates, or an update and a snapshot
/// preparation, at the same time.
pub trait ConcurrentStateMachine: Send + Sync {
    /// Applies committed entries in log order, filling each `result`.
    fn update(&self, entries: &mut [SmEntry]) -> Result<(), SmError>;
    /// Answers a read-only query (may run during `update`).
    fn lookup(&self, query: &[u8]) -> Result<Vec<u8>, SmError>;
    /// Captures what `save_snapshot` needs, quickly, on the apply path.
    fn prepare_snapshot(&self) -> Result<Box<dyn Any + Send>, SmError>;
    /// Writes the state captured by `prepare_snapshot`, off the apply path.
    fn save_snapshot(
        &self,
        ctx: Box<dyn Any + Send>,
        w: &mut dyn Write,
        stop: &StopFlag,
    ) -> Result<(), SmError>;
    /// Replaces the whole state by the one read from `r`.
    fn recover_from_snapshot(&self, r: &mut dyn Read, stop: &StopFlag) -> Result<(), SmError>;
    /// What longship calls to save a prepared snapshot: writes it to `w`
    /// and may attach files to `files` (see [`SnapshotFiles`]). The default
    /// calls [`save_snapshot`](Self::save_snapshot) and attaches none; a
    /// state machine that attaches files overrides this (and
    /// [`recover_from_snapshot_with_files`](Self::recover_from_snapshot_with_files)).
    fn save_snapshot_with_files(
        &self,
        ctx: Box<dyn Any + Send>,
        w: &mut dyn Write,
        files: &mut SnapshotFiles,
        stop: &StopFlag,
    ) -> Result<(), SmError> {
        let _ = files;
        self.save_snapshot(ctx, w, stop)
    }
    /// What longship calls to recover from a snapshot: the stream `r` and
    /// the attached `files` (see [`SnapshotFile::path`]). The default
    /// ignores the files and calls
    /// [`recover_from_snapshot`](Self::recover_from_snapshot).
    fn recover_from_snapshot_with_files(
        &self,
        r: &mut dyn Read,
        files: &[SnapshotFile],
        stop: &StopFlag,
    ) -> Result<(), SmError> {
        let _ = files;
        self.recover_from_snapshot(r, stop)
    }
    /// A hash of the whole state (dragonboat's `GetHash`), for checking
    /// that replicas agree ([`NodeHost::verify`](crate::NodeHost::verify)):
    /// equal states must give equal hashes on every replica. `None` (the
    /// default): the state machine offers none.
    fn hash(&self) -> Option<u64> {
        None
    }
    /// Releases resources; called once when the replica stops.
    fn close(&self) {}
}

/// A state machine whose state lives in its own durable store.
///
/// Its local snapshots (automatic, `Config::snapshot_entries`, and
/// requested without an export path) hold metadata only: longship calls
/// [`sync`](Self::sync) and records the session table, and the log is
/// compacted behind that. [`prepare_snapshot`](Self::prepare_snapshot) and
/// `save_snapshot` run only when the whole state is needed elsewhere: a
/// stream to a follower that fell behind the compacted log, and an export.
pub trait OnDiskStateMachine: Send + Sync {
    /// Opens the store and returns the index of the last entry it applied
    /// durably (0 if none). Entries up to it are not applied again.
    fn open(&self, stop: &StopFlag) -> Result<Index, SmError>;
    /// Applies committed entries in log order, filling each `result`.
    fn update(&self, entries: &mut [SmEntry]) -> Result<(), SmError>;
    /// Answers a read-only query (may run during `update`).
    fn lookup(&self, query: &[u8]) -> Result<Vec<u8>, SmError>;
    /// Makes everything applied so far durable (before every snapshot:
    /// the log behind a local snapshot is compacted).
    fn sync(&self) -> Result<(), SmError>;
    /// Captures a consistent view for `save_snapshot`, quickly (for a
    /// stream to a follower or an export, not for local snapshots).
    fn prepare_snapshot(&self) -> Result<Box<dyn Any + Send>, SmError>;
    /// Streams the captured view (used to bring other replicas up).
    fn save_snapshot(
        &self,
        ctx: Box<dyn Any + Send>,
        w: &mut dyn Write,
        stop: &StopFlag,
    ) -> Result<(), SmError>;
    /// Replaces the whole state by the one read from `r`, durably.
    fn recover_from_snapshot(&self, r: &mut dyn Read, stop: &StopFlag) -> Result<(), SmError>;
    /// What longship calls to stream the captured view: writes it to `w`
    /// and may attach files to `files` (see [`SnapshotFiles`]; an on-disk
    /// state machine typically attaches its checkpoint's files). The
    /// default calls [`save_snapshot`](Self::save_snapshot) and attaches
    /// none; a state machine that attaches files overrides this (and
    /// [`recover_from_snapshot_with_files`](Self::recover_from_snapshot_with_files)).
    fn save_snapshot_with_files(
        &self,
        ctx: Box<dyn Any + Send>,
        w: &mut dyn Write,
        files: &mut SnapshotFiles,
        stop: &StopFlag,
    ) -> Result<(), SmError> {
        let _ = files;
        self.save_snapshot(ctx, w, stop)
    }
    /// What longship calls to replace the whole state, durably, by the one
    /// read from `r` and the attached `files` (see [`SnapshotFile::path`]).
    /// The default ignores the files and calls
    /// [`recover_from_snapshot`](Self::recover_from_snapshot).
    fn recover_from_snapshot_with_files(
        &self,
        r: &mut dyn Read,
        files: &[SnapshotFile],
        stop: &StopFlag,
    ) -> Result<(), SmError> {
        let _ = files;
        self.recover_from_snapshot(r, stop)
    }
    /// A hash of the whole state (dragonboat's `GetHash`), for checking
    /// that replicas agree ([`NodeHost::verify`](crate::NodeHost::verify)):
    /// equal states must give equal hashes on every replica. `None` (the
    /// default): the state machine offers none.
    fn hash(&self) -> Option<u64> {
        None
    }
    /// Releases resources; called once when the replica stops.
    fn close(&self) {}
}
