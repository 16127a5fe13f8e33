//! The replicated state machine layer: applies committed entries to the
//! user's state machine (of any of the three kinds) with client-session
//! de-duplication and membership changes, and saves/recovers snapshots that
//! hold the session table and the state machine's data.

use std::io::{Read, Write};

use longship_raft::codec::{Decoder, Limits, decode_config_change};
use longship_raft::{
    ConfigChange, ConfigChangeRejected, Entry, EntryType, Index, Membership, SERIES_ID_REGISTER,
    SERIES_ID_UNREGISTER, Term,
};
use parking_lot::{Mutex, RwLock};

use crate::compression::{CompressWriter, Compression, DecompressReader, decompress_entry_payload};
use crate::session::{SessionCheck, SessionManager};
use crate::sm::{
    ConcurrentStateMachine, OnDiskStateMachine, SmEntry, SmError, SmResult, SnapshotFile,
    SnapshotFiles, StateMachine, StopFlag,
};

/// The user's state machine, of one of the three kinds.
pub(crate) enum UserSm {
    Regular(RwLock<Box<dyn StateMachine>>),
    Concurrent(Box<dyn ConcurrentStateMachine>),
    OnDisk(Box<dyn OnDiskStateMachine>),
}

/// Runs a call into the user's state machine; a panic there becomes an
/// error of this replica (which then fails: its shard's other replicas,
/// and every other shard of this host, go on) instead of unwinding through
/// a worker that drives many shards.
pub(crate) fn guarded<T>(what: &str, f: impl FnOnce() -> Result<T, SmError>) -> Result<T, SmError> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(payload) => Err(SmError::new(format!(
            "state machine panicked in {what}: {}",
            panic_message(&*payload)
        ))),
    }
}

/// The message a panic carried.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a non-string panic payload".into())
}

impl UserSm {
    fn update(&self, entries: &mut [SmEntry]) -> Result<(), SmError> {
        guarded("update", || match self {
            UserSm::Regular(sm) => sm.write().update(entries),
            UserSm::Concurrent(sm) => sm.update(entries),
            UserSm::OnDisk(sm) => sm.update(entries),
        })
    }

    pub(crate) fn lookup(&self, query: &[u8]) -> Result<Vec<u8>, SmError> {
        guarded("lookup", || match self {
            UserSm::Regular(sm) => sm.read().lookup(query),
            UserSm::Concurrent(sm) => sm.lookup(query),
            UserSm::OnDisk(sm) => sm.lookup(query),
        })
    }

    pub(crate) fn close(&self) {
        let closed = guarded("close", || {
            match self {
                UserSm::Regular(sm) => sm.write().close(),
                UserSm::Concurrent(sm) => sm.close(),
                UserSm::OnDisk(sm) => sm.close(),
            }
            Ok(())
        });
        if let Err(e) = closed {
            tracing::error!(error = %e, "closing a state machine");
        }
    }

    /// The state machine's hash (`None`: it offers none, or it panicked).
    pub(crate) fn hash(&self) -> Option<u64> {
        guarded("hash", || {
            Ok(match self {
                UserSm::Regular(sm) => sm.read().hash(),
                UserSm::Concurrent(sm) => sm.hash(),
                UserSm::OnDisk(sm) => sm.hash(),
            })
        })
        .ok()
        .flatten()
    }

    pub(crate) fn is_on_disk(&self) -> bool {
        matches!(self, UserSm::OnDisk(_))
    }
}

/// What applying one entry produced, for completing the request that made it.
#[derive(Debug)]
pub(crate) enum Applied {
    /// A normal proposal's result (also for a de-duplicated retry).
    Result { key: u64, result: SmResult },
    /// A retried proposal that was applied before a restart whose result
    /// is no longer known (on-disk state machines).
    ResultLost { key: u64 },
    /// A session operation or proposal the session table refused.
    SessionInvalid { key: u64 },
    /// A session was registered or unregistered.
    Session { key: u64, ok: bool },
    /// An entry whose payload does not decompress: skipped by every
    /// replica alike (decoding is deterministic), its proposer told why.
    Undecodable { key: u64, why: String },
    /// A config change was applied or rejected.
    ConfigChange {
        key: u64,
        outcome: Result<(), ConfigChangeRejected>,
    },
}

/// A snapshot captured on the apply path, to be written off it.
pub(crate) struct Prepared {
    pub(crate) header: Vec<u8>,
    /// How the state machine's part is compressed (as `header` records).
    pub(crate) compression: Compression,
    /// No state machine part at all (as `header` records): an on-disk
    /// state machine's local snapshot.
    pub(crate) metadata_only: bool,
    pub(crate) ctx: Option<Box<dyn std::any::Any + Send>>,
}

/// What a snapshot being saved holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SnapshotContent {
    /// The state machine's whole state (exports, streams, and every local
    /// snapshot of in-memory state machines).
    Full,
    /// For an on-disk state machine, a local snapshot: the session table
    /// only, since the state machine's own store holds its state (synced
    /// first). Other kinds save `Full` whatever is asked.
    Local,
}

/// Bit 0 of the flags byte of the version-2 header: the snapshot has no
/// state machine part (an on-disk state machine's local snapshot).
const FLAG_METADATA_ONLY: u8 = 1;

/// State the snapshot of a shard carries besides the user's data.
pub(crate) const RSM_SNAPSHOT_MAGIC: &[u8; 4] = b"LSRS";
/// Version of the RSM snapshot header written when the state machine's
/// part is not compressed (readable by builds without compression).
pub(crate) const RSM_SNAPSHOT_VERSION_PLAIN: u32 = 1;
/// Version of the RSM snapshot header that records a compression.
pub(crate) const RSM_SNAPSHOT_VERSION: u32 = 2;

/// Applied position and membership, updated together.
#[derive(Clone, Debug, Default)]
pub(crate) struct AppliedState {
    pub(crate) index: Index,
    pub(crate) term: Term,
    pub(crate) membership: Membership,
}

/// The replicated state machine of one replica.
pub(crate) struct Rsm {
    pub(crate) sm: UserSm,
    sessions: Mutex<SessionManager>,
    max_sessions: usize,
    state: Mutex<AppliedState>,
    /// On-disk state machines: entries up to this index are already applied.
    on_disk_index: Mutex<Index>,
    witness: bool,
    /// How snapshots this replica writes compress the state machine's part
    /// (reading goes by what each snapshot records).
    snapshot_compression: Compression,
}

impl Rsm {
    pub(crate) fn new(sm: UserSm, max_sessions: usize, witness: bool) -> Rsm {
        Rsm {
            sm,
            sessions: Mutex::new(SessionManager::new(max_sessions)),
            max_sessions,
            state: Mutex::new(AppliedState::default()),
            on_disk_index: Mutex::new(Index(0)),
            witness,
            snapshot_compression: Compression::None,
        }
    }

    /// Sets how the snapshots this replica writes are compressed.
    pub(crate) fn with_snapshot_compression(mut self, c: Compression) -> Rsm {
        self.snapshot_compression = c;
        self
    }

    pub(crate) fn applied(&self) -> AppliedState {
        self.state.lock().clone()
    }

    /// The `config_change_id` of the applied membership.
    pub(crate) fn config_change_id(&self) -> Index {
        self.state.lock().membership.config_change_id
    }

    pub(crate) fn set_on_disk_index(&self, index: Index) {
        *self.on_disk_index.lock() = index;
    }

    pub(crate) fn on_disk_index(&self) -> Index {
        *self.on_disk_index.lock()
    }

    pub(crate) fn set_applied(&self, st: AppliedState) {
        *self.state.lock() = st;
    }

    /// Applies committed entries in order. `apply_cc` applies a config change
    /// to the protocol core. Returns what each request-bearing entry produced.
    pub(crate) fn apply(
        &self,
        entries: &[Entry],
        apply_cc: &mut dyn FnMut(&ConfigChange, Index) -> Result<Membership, ConfigChangeRejected>,
        out: &mut Vec<Applied>,
    ) -> Result<(), SmError> {
        let mut batch: Vec<SmEntry> = Vec::new();
        // (key, client, series) of each entry in `batch`, or a duplicate's result.
        let mut batch_meta: Vec<(u64, u64, u64)> = Vec::new();
        // (client, series) in `batch`, and how many per client.
        let mut in_batch: std::collections::BTreeSet<(u64, u64)> = Default::default();
        let mut in_batch_of: std::collections::BTreeMap<u64, usize> = Default::default();
        let mut sessions = self.sessions.lock();
        let skip_to = self.on_disk_index();
        for e in entries {
            let mut st = self.state.lock();
            if e.index <= st.index {
                continue;
            }
            debug_assert_eq!(e.index, st.index.next(), "entries applied in order");
            match e.entry_type {
                EntryType::NoOp | EntryType::Metadata => {}
                EntryType::ConfigChange => {
                    drop(st);
                    self.flush(&mut batch, &mut batch_meta, &mut sessions, out)?;
                    in_batch.clear();
                    in_batch_of.clear();
                    st = self.state.lock();
                    let outcome = decode_config_change(&e.cmd)
                        .map_err(|_| ConfigChangeRejected::ZeroReplicaId)
                        .and_then(|cc| apply_cc(&cc, e.index));
                    let outcome = match outcome {
                        Ok(m) => {
                            st.membership = m;
                            Ok(())
                        }
                        Err(err) => Err(err),
                    };
                    out.push(Applied::ConfigChange {
                        key: e.key,
                        outcome,
                    });
                }
                EntryType::Normal | EntryType::Encoded => {
                    // An entry whose payload does not decompress (only a
                    // faulty or hostile member can forward one; a local
                    // proposal is compressed here) is skipped by every
                    // replica alike, never applied and never fatal: one
                    // bad proposal must not fail every replica of a shard.
                    let undecodable = |err: SmError| {
                        tracing::warn!(index = e.index.0, error = %err.0,
                            "skipping an entry whose payload does not decompress");
                        Applied::Undecodable {
                            key: e.key,
                            why: err.0,
                        }
                    };
                    if e.client_id != 0 && e.series_id == SERIES_ID_REGISTER {
                        match command(e) {
                            Ok(cmd) => {
                                let bound = crate::session::register_bound(&cmd, self.max_sessions);
                                let ok = sessions.register(e.client_id, e.index, bound);
                                out.push(Applied::Session { key: e.key, ok });
                            }
                            Err(err) => out.push(undecodable(err)),
                        }
                    } else if e.client_id != 0 && e.series_id == SERIES_ID_UNREGISTER {
                        let ok = sessions.unregister(e.client_id);
                        out.push(Applied::Session { key: e.key, ok });
                    } else if self.witness {
                        // Witnesses hold no state machine.
                    } else if e.index <= skip_to {
                        // An on-disk state machine already holds this entry's
                        // effect. The session table still learns that the
                        // series was applied (its result is gone), so a retry
                        // is refused rather than applied twice.
                        if e.client_id != 0
                            && sessions.check(e.client_id, e.series_id, e.responded_to, e.index, 0)
                                == SessionCheck::Apply
                        {
                            sessions.record_lost(e.client_id, e.series_id);
                        }
                    } else if e.client_id == 0 {
                        match command(e) {
                            Ok(cmd) => {
                                batch.push(SmEntry {
                                    index: e.index,
                                    cmd,
                                    result: SmResult::default(),
                                });
                                batch_meta.push((e.key, 0, 0));
                            }
                            Err(err) => out.push(undecodable(err)),
                        }
                    } else {
                        // A duplicate inside this batch must see the first
                        // one's result: apply what is batched first. (A set,
                        // not a scan of the batch per entry.)
                        if in_batch.contains(&(e.client_id, e.series_id)) {
                            drop(st);
                            self.flush(&mut batch, &mut batch_meta, &mut sessions, out)?;
                            in_batch.clear();
                            in_batch_of.clear();
                            st = self.state.lock();
                        }
                        let in_flight = in_batch_of.get(&e.client_id).copied().unwrap_or(0);
                        match sessions.check(
                            e.client_id,
                            e.series_id,
                            e.responded_to,
                            e.index,
                            in_flight,
                        ) {
                            SessionCheck::Apply => match command(e) {
                                Ok(cmd) => {
                                    batch.push(SmEntry {
                                        index: e.index,
                                        cmd,
                                        result: SmResult::default(),
                                    });
                                    batch_meta.push((e.key, e.client_id, e.series_id));
                                    in_batch.insert((e.client_id, e.series_id));
                                    *in_batch_of.entry(e.client_id).or_default() += 1;
                                }
                                Err(err) => out.push(undecodable(err)),
                            },
                            SessionCheck::Duplicate(Some(result)) => {
                                out.push(Applied::Result { key: e.key, result })
                            }
                            SessionCheck::Duplicate(None) => {
                                out.push(Applied::ResultLost { key: e.key })
                            }
                            SessionCheck::Invalid | SessionCheck::TooManyPending => {
                                out.push(Applied::SessionInvalid { key: e.key })
                            }
                        }
                    }
                }
            }
            st.index = e.index;
            st.term = e.term;
        }
        self.flush(&mut batch, &mut batch_meta, &mut sessions, out)
    }

    fn flush(
        &self,
        batch: &mut Vec<SmEntry>,
        meta: &mut Vec<(u64, u64, u64)>,
        sessions: &mut SessionManager,
        out: &mut Vec<Applied>,
    ) -> Result<(), SmError> {
        if batch.is_empty() {
            return Ok(());
        }
        self.sm.update(batch)?;
        for (e, &(key, client, series)) in batch.iter().zip(meta.iter()) {
            if client != 0 {
                sessions.record(client, series, &e.result);
            }
            out.push(Applied::Result {
                key,
                result: e.result.clone(),
            });
        }
        batch.clear();
        meta.clear();
        Ok(())
    }

    /// How the state machine's part of a snapshot written now is
    /// compressed: a witness writes none.
    fn compression_for_save(&self) -> Compression {
        if self.witness {
            Compression::None
        } else {
            self.snapshot_compression
        }
    }

    /// The RSM header of a snapshot whose state machine part is compressed
    /// with `c` (or absent, `metadata_only`): magic, version, (version 2:
    /// compression, flags, reserved bytes), the session table. Version 1
    /// when `c` is none and the part is there.
    pub(crate) fn snapshot_header(&self, c: Compression, metadata_only: bool) -> Vec<u8> {
        let mut sessions = Vec::new();
        self.sessions.lock().encode(&mut sessions);
        let mut out = Vec::with_capacity(24 + sessions.len());
        out.extend_from_slice(RSM_SNAPSHOT_MAGIC);
        if c == Compression::None && !metadata_only {
            out.extend_from_slice(&RSM_SNAPSHOT_VERSION_PLAIN.to_le_bytes());
        } else {
            out.extend_from_slice(&RSM_SNAPSHOT_VERSION.to_le_bytes());
            out.push(c.code());
            out.push(if metadata_only { FLAG_METADATA_ONLY } else { 0 });
            out.extend_from_slice(&[0u8; 6]);
        }
        out.extend_from_slice(&(sessions.len() as u64).to_le_bytes());
        out.extend_from_slice(&sessions);
        out
    }

    /// Writes a snapshot of a regular state machine (blocks its updates);
    /// the files it attaches are added to `files`.
    pub(crate) fn save_regular(
        &self,
        w: &mut dyn Write,
        files: &mut SnapshotFiles,
        stop: &StopFlag,
    ) -> Result<(), SmError> {
        let UserSm::Regular(sm) = &self.sm else {
            return Err(SmError::new("save_regular on a non-regular state machine"));
        };
        let guard = sm.read();
        let c = self.compression_for_save();
        w.write_all(&self.snapshot_header(c, false))?;
        if self.witness {
            // Metadata only: a witness's state machine never saw an entry.
            return Ok(());
        }
        write_compressed(w, c, |w| {
            guarded("save_snapshot", || {
                guard.save_snapshot_with_files(w, files, stop)
            })
        })
    }

    /// Captures a snapshot's content on the apply path: the RSM header and,
    /// for concurrent and on-disk state machines, their prepared context.
    /// (Regular state machines are saved whole by [`Rsm::save_regular`].)
    /// An on-disk state machine's `Local` snapshot is synced but not
    /// prepared: it holds no state machine part.
    pub(crate) fn prepare(&self, content: SnapshotContent) -> Result<Prepared, SmError> {
        let mut metadata_only = false;
        let ctx = match &self.sm {
            _ if self.witness => None,
            UserSm::Regular(_) => None,
            UserSm::Concurrent(sm) => Some(guarded("prepare_snapshot", || sm.prepare_snapshot())?),
            UserSm::OnDisk(sm) => {
                // The state must include everything applied so far: in the
                // stream, or (metadata only) in the state machine's store,
                // since the log behind the snapshot may be compacted.
                guarded("sync", || sm.sync())?;
                if content == SnapshotContent::Local {
                    metadata_only = true;
                    None
                } else {
                    Some(guarded("prepare_snapshot", || sm.prepare_snapshot())?)
                }
            }
        };
        let compression = if metadata_only {
            Compression::None
        } else {
            self.compression_for_save()
        };
        Ok(Prepared {
            header: self.snapshot_header(compression, metadata_only),
            compression,
            metadata_only,
            ctx,
        })
    }

    /// Writes a prepared snapshot (off the apply path); the files the state
    /// machine attaches are added to `files`.
    pub(crate) fn save_prepared(
        &self,
        p: Prepared,
        w: &mut dyn Write,
        files: &mut SnapshotFiles,
        stop: &StopFlag,
    ) -> Result<(), SmError> {
        w.write_all(&p.header)?;
        if self.witness || p.metadata_only {
            return Ok(());
        }
        write_compressed(w, p.compression, |w| {
            guarded("save_snapshot", || match (&self.sm, p.ctx) {
                (UserSm::Concurrent(sm), Some(ctx)) => {
                    sm.save_snapshot_with_files(ctx, w, files, stop)
                }
                (UserSm::OnDisk(sm), Some(ctx)) => sm.save_snapshot_with_files(ctx, w, files, stop),
                (UserSm::Regular(sm), None) => sm.read().save_snapshot_with_files(w, files, stop),
                _ => Err(SmError::new(
                    "prepared snapshot does not match the state machine kind",
                )),
            })
        })
    }

    /// Reads the RSM header and recovers the state machine from the rest
    /// and the snapshot's attached `files`.
    pub(crate) fn recover(
        &self,
        r: &mut dyn Read,
        applied: AppliedState,
        files: &[SnapshotFile],
        stop: &StopFlag,
    ) -> Result<(), SmError> {
        let (compression, metadata_only, len) = read_header(r)?;
        let limit = (crate::session::MAX_SESSIONS_CAP as u64 + 1) * (1 << 20);
        if len > limit {
            return Err(SmError::new(format!(
                "session table of {len} bytes is over the limit"
            )));
        }
        // Grows with the bytes actually read: a damaged length cannot make
        // us allocate up to the limit before the data runs out.
        let mut buf = Vec::new();
        r.take(len).read_to_end(&mut buf)?;
        if buf.len() as u64 != len {
            return Err(SmError::new(format!(
                "session table truncated: {} of {len} bytes",
                buf.len()
            )));
        }
        let mut d = Decoder::new(&buf, Limits::default());
        let sessions = SessionManager::decode(&mut d, self.max_sessions)
            .map_err(|e| SmError::new(format!("session table: {e}")))?;
        d.finish()
            .map_err(|e| SmError::new(format!("session table: {e}")))?;
        if !self.witness {
            match &self.sm {
                // The state it lacks is in an on-disk state machine's own
                // store, which must hold at least the snapshot's entries
                // (it was synced before the snapshot was taken).
                UserSm::OnDisk(_) if metadata_only && self.on_disk_index() < applied.index => {
                    return Err(SmError::new(format!(
                        "the snapshot at index {} holds no state machine data (an on-disk state \
                         machine's local snapshot), but the state machine's store reports only \
                         index {} applied: its store lost state it had synced",
                        applied.index,
                        self.on_disk_index()
                    )));
                }
                UserSm::Regular(_) | UserSm::Concurrent(_) if metadata_only => {
                    return Err(SmError::new(format!(
                        "the snapshot at index {} holds no state machine data (an on-disk state \
                         machine's local snapshot): an in-memory state machine cannot recover \
                         from it",
                        applied.index
                    )));
                }
                UserSm::Regular(sm) => read_compressed(r, compression, |r| {
                    guarded("recover_from_snapshot", || {
                        sm.write().recover_from_snapshot_with_files(r, files, stop)
                    })
                })?,
                UserSm::Concurrent(sm) => read_compressed(r, compression, |r| {
                    guarded("recover_from_snapshot", || {
                        sm.recover_from_snapshot_with_files(r, files, stop)
                    })
                })?,
                // Its own store may already be at or past the snapshot (a
                // restart after a local snapshot): replacing its state by the
                // older snapshot would lose the entries after the snapshot,
                // which are skipped as already applied.
                UserSm::OnDisk(_) if self.on_disk_index() >= applied.index => {}
                UserSm::OnDisk(sm) => {
                    read_compressed(r, compression, |r| {
                        guarded("recover_from_snapshot", || {
                            sm.recover_from_snapshot_with_files(r, files, stop)
                        })
                    })?;
                    self.set_on_disk_index(applied.index);
                }
            }
        }
        *self.sessions.lock() = sessions;
        *self.state.lock() = applied;
        Ok(())
    }
}

/// The command of an application entry as the state machine sees it: a
/// compressed (`Encoded`) entry's payload decompressed. Decoding is
/// deterministic, so an entry that does not decompress fails alike on
/// every replica, which all skip it (`Applied::Undecodable`).
fn command(e: &Entry) -> Result<bytes::Bytes, SmError> {
    match e.entry_type {
        EntryType::Encoded => decompress_entry_payload(&e.cmd)
            .map(bytes::Bytes::from)
            .map_err(|err| SmError::new(format!("entry {} (term {}): {err}", e.index, e.term))),
        _ => Ok(e.cmd.clone()),
    }
}

/// Runs `save` on `w`, through a compressing writer unless `c` is none.
fn write_compressed(
    w: &mut dyn Write,
    c: Compression,
    save: impl FnOnce(&mut dyn Write) -> Result<(), SmError>,
) -> Result<(), SmError> {
    if c == Compression::None {
        return save(w);
    }
    let mut cw = CompressWriter::new(w, c);
    save(&mut cw)?;
    cw.finish()?;
    Ok(())
}

/// Runs `recover` on `r`, through a decompressing reader unless `c` is
/// none; then checks that the compressed stream is whole (read to its end
/// mark, nothing after it), whatever the state machine left unread.
fn read_compressed(
    r: &mut dyn Read,
    c: Compression,
    recover: impl FnOnce(&mut dyn Read) -> Result<(), SmError>,
) -> Result<(), SmError> {
    if c == Compression::None {
        return recover(r);
    }
    let mut dr = DecompressReader::new(r, c);
    recover(&mut dr)?;
    dr.finish()
        .map_err(|e| SmError::new(format!("snapshot data: {e}")))
}

/// Whether the snapshot data read by `r` (from its start) has no state
/// machine part: an on-disk state machine's local snapshot, which a leader
/// does not stream as it is.
pub(crate) fn is_metadata_only(r: &mut dyn Read) -> Result<bool, SmError> {
    Ok(read_header(r)?.1)
}

/// Reads the fixed part of the RSM snapshot header: the compression of the
/// state machine's part, whether there is none (metadata only) and the
/// session table's length.
fn read_header(r: &mut dyn Read) -> Result<(Compression, bool, u64), SmError> {
    let mut head = [0u8; 8];
    r.read_exact(&mut head)?;
    if &head[..4] != RSM_SNAPSHOT_MAGIC {
        return Err(SmError::new("snapshot data has a bad magic"));
    }
    let version = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
    let (compression, metadata_only) = match version {
        RSM_SNAPSHOT_VERSION_PLAIN => (Compression::None, false),
        RSM_SNAPSHOT_VERSION => {
            let mut v2 = [0u8; 8];
            r.read_exact(&mut v2)?;
            if v2[1] & !FLAG_METADATA_ONLY != 0 || v2[2..].iter().any(|&b| b != 0) {
                return Err(SmError::new(
                    "snapshot data header: unknown flags or reserved bytes not zero",
                ));
            }
            let c = Compression::from_code(v2[0]).ok_or_else(|| {
                SmError::new(format!(
                    "snapshot data is compressed with unknown algorithm {} \
                     (a newer longship wrote it?)",
                    v2[0]
                ))
            })?;
            (c, v2[1] & FLAG_METADATA_ONLY != 0)
        }
        v => {
            return Err(SmError::new(format!(
                "unsupported snapshot data version {v}"
            )));
        }
    };
    let mut len = [0u8; 8];
    r.read_exact(&mut len)?;
    Ok((compression, metadata_only, u64::from_le_bytes(len)))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    use longship_raft::{Index, SERIES_ID_REGISTER, Term};

    use super::*;

    /// Counts the entries it is handed.
    struct Counting(Arc<AtomicU64>);

    impl OnDiskStateMachine for Counting {
        fn open(&self, _: &StopFlag) -> Result<Index, SmError> {
            Ok(Index(0))
        }
        fn update(&self, entries: &mut [SmEntry]) -> Result<(), SmError> {
            for e in entries {
                e.result.value = self.0.fetch_add(1, Ordering::SeqCst) + 1;
            }
            Ok(())
        }
        fn lookup(&self, _: &[u8]) -> Result<Vec<u8>, SmError> {
            Ok(Vec::new())
        }
        fn sync(&self) -> Result<(), SmError> {
            Ok(())
        }
        fn prepare_snapshot(&self) -> Result<Box<dyn std::any::Any + Send>, SmError> {
            Ok(Box::new(()))
        }
        fn save_snapshot(
            &self,
            _: Box<dyn std::any::Any + Send>,
            _: &mut dyn Write,
            _: &StopFlag,
        ) -> Result<(), SmError> {
            Ok(())
        }
        fn recover_from_snapshot(&self, _: &mut dyn Read, _: &StopFlag) -> Result<(), SmError> {
            Ok(())
        }
    }

    fn entry(index: u64, key: u64, client: u64, series: u64) -> Entry {
        Entry {
            term: Term(1),
            index: Index(index),
            key,
            client_id: client,
            series_id: series,
            cmd: bytes::Bytes::from_static(b"x"),
            ..Entry::default()
        }
    }

    // Thesis §6.3 with an on-disk state machine: an entry skipped after a
    // restart (already in the store) still marks its series applied, so a
    // retry of it is refused instead of applied a second time.
    #[test]
    fn retry_of_an_entry_skipped_after_restart_is_not_applied_again() {
        let count = Arc::new(AtomicU64::new(0));
        let rsm = Rsm::new(UserSm::OnDisk(Box::new(Counting(count.clone()))), 16, false);
        rsm.set_on_disk_index(Index(2));
        let mut no_cc = |_: &ConfigChange, _: Index| -> Result<Membership, ConfigChangeRejected> {
            Err(ConfigChangeRejected::ZeroReplicaId)
        };
        let mut out = Vec::new();
        let entries = vec![
            entry(1, 10, 7, SERIES_ID_REGISTER),
            entry(2, 11, 7, 1),
            // The client timed out and retried series 1 after the restart.
            entry(3, 12, 7, 1),
            entry(4, 13, 7, 2),
        ];
        rsm.apply(&entries, &mut no_cc, &mut out).unwrap();
        assert_eq!(
            count.load(Ordering::SeqCst),
            1,
            "only series 2 reaches the state machine"
        );
        assert!(
            out.iter()
                .any(|a| matches!(a, Applied::ResultLost { key: 12 })),
            "{out:?}"
        );
        assert!(
            out.iter()
                .any(|a| matches!(a, Applied::Result { key: 13, .. })),
            "{out:?}"
        );
    }

    // Snapshot data is untrusted: a session-table length within the limit
    // (MAX_SESSIONS_CAP sessions of up to 1 MiB) but longer than the data
    // must not be allocated up front. With 2^24 sessions allowed, 8 TiB were
    // asked of the allocator before reading a byte, and the process aborted.
    #[test]
    fn a_session_table_length_past_the_data_is_refused_without_allocating_it() {
        let count = Arc::new(AtomicU64::new(0));
        let rsm = Rsm::new(UserSm::OnDisk(Box::new(Counting(count))), 1 << 24, false);
        let mut data = Vec::new();
        data.extend_from_slice(RSM_SNAPSHOT_MAGIC);
        data.extend_from_slice(&RSM_SNAPSHOT_VERSION_PLAIN.to_le_bytes());
        data.extend_from_slice(&(1u64 << 39).to_le_bytes());
        data.extend_from_slice(b"short");
        let applied = AppliedState {
            index: Index(5),
            term: Term(1),
            membership: Membership::default(),
        };
        let err = rsm
            .recover(&mut &data[..], applied, &[], &StopFlag::default())
            .unwrap_err();
        assert!(err.to_string().contains("truncated"), "{err}");
        assert_eq!(rsm.applied().index, Index(0), "nothing recovered");
    }

    /// A regular state machine holding the bytes it recovered.
    struct Bytes(Vec<u8>);

    impl StateMachine for Bytes {
        fn update(&mut self, _: &mut [SmEntry]) -> Result<(), SmError> {
            Ok(())
        }
        fn lookup(&self, _: &[u8]) -> Result<Vec<u8>, SmError> {
            Ok(self.0.clone())
        }
        fn save_snapshot(&self, w: &mut dyn Write, _: &StopFlag) -> Result<(), SmError> {
            Ok(w.write_all(&self.0)?)
        }
        fn recover_from_snapshot(&mut self, r: &mut dyn Read, _: &StopFlag) -> Result<(), SmError> {
            self.0.clear();
            r.read_to_end(&mut self.0)?;
            Ok(())
        }
    }

    fn bytes_rsm(data: &[u8], c: Compression) -> Rsm {
        Rsm::new(
            UserSm::Regular(RwLock::new(Box::new(Bytes(data.to_vec())))),
            16,
            false,
        )
        .with_snapshot_compression(c)
    }

    fn applied_at(index: u64) -> AppliedState {
        AppliedState {
            index: Index(index),
            term: Term(1),
            membership: Membership::default(),
        }
    }

    // The snapshot's header decides how its data is read, not the reader's
    // own setting; no compression keeps the version-1 header older builds read.
    #[test]
    fn snapshots_are_read_by_the_compression_they_record() {
        let data: Vec<u8> = b"state ".repeat(50_000);
        for written in [Compression::None, Compression::Lz4, Compression::Snappy] {
            let mut snap = Vec::new();
            bytes_rsm(&data, written)
                .save_regular(&mut snap, &mut SnapshotFiles::new(), &StopFlag::new())
                .unwrap();
            let version = u32::from_le_bytes(snap[4..8].try_into().unwrap());
            if written == Compression::None {
                assert_eq!(version, RSM_SNAPSHOT_VERSION_PLAIN);
                assert!(snap.len() > data.len());
            } else {
                assert_eq!(version, RSM_SNAPSHOT_VERSION);
                assert_eq!(snap[8], written.code());
                assert!(snap.len() < data.len() / 4, "{written:?}: {}", snap.len());
            }
            for reader in [Compression::None, Compression::Lz4, Compression::Snappy] {
                let rsm = bytes_rsm(b"", reader);
                rsm.recover(&mut &snap[..], applied_at(3), &[], &StopFlag::new())
                    .unwrap();
                assert_eq!(
                    rsm.sm.lookup(b"").unwrap(),
                    data,
                    "{written:?} read by {reader:?}"
                );
                assert_eq!(rsm.applied().index, Index(3));
            }
        }
    }

    #[test]
    fn an_unknown_snapshot_compression_is_a_clear_error() {
        let mut snap = Vec::new();
        bytes_rsm(b"abc", Compression::Lz4)
            .save_regular(&mut snap, &mut SnapshotFiles::new(), &StopFlag::new())
            .unwrap();
        snap[8] = 9;
        let rsm = bytes_rsm(b"", Compression::None);
        let err = rsm
            .recover(&mut &snap[..], applied_at(3), &[], &StopFlag::new())
            .unwrap_err();
        assert!(err.to_string().contains("unknown algorithm 9"), "{err}");
        assert_eq!(rsm.applied().index, Index(0), "nothing recovered");
        snap[8] = Compression::Lz4.code();
        snap[12] = 1;
        let err = rsm
            .recover(&mut &snap[..], applied_at(3), &[], &StopFlag::new())
            .unwrap_err();
        assert!(err.to_string().contains("reserved"), "{err}");
    }

    // A compressed entry reaches the state machine decompressed; one whose
    // payload does not decompress stops the apply with an error naming it.
    #[test]
    fn encoded_entries_are_decompressed_and_a_bad_one_is_skipped() {
        let count = Arc::new(AtomicU64::new(0));
        let rsm = Rsm::new(UserSm::OnDisk(Box::new(Counting(count.clone()))), 16, false);
        let mut no_cc = |_: &ConfigChange, _: Index| -> Result<Membership, ConfigChangeRejected> {
            Err(ConfigChangeRejected::ZeroReplicaId)
        };
        let cmd = b"set k ".repeat(100);
        let payload =
            crate::compression::compress_entry_payload(Compression::Snappy, &cmd).unwrap();
        let good = Entry {
            entry_type: EntryType::Encoded,
            cmd: bytes::Bytes::from(payload.clone()),
            ..entry(1, 10, 0, 0)
        };
        assert_eq!(command(&good).unwrap(), cmd);
        let mut out = Vec::new();
        rsm.apply(&[good], &mut no_cc, &mut out).unwrap();
        assert_eq!(count.load(Ordering::SeqCst), 1);
        let mut damaged = payload;
        damaged.truncate(damaged.len() - 3);
        let bad = Entry {
            entry_type: EntryType::Encoded,
            cmd: bytes::Bytes::from(damaged),
            ..entry(2, 11, 0, 0)
        };
        out.clear();
        rsm.apply(&[bad], &mut no_cc, &mut out).unwrap();
        match &out[..] {
            [Applied::Undecodable { key, why }] => {
                assert_eq!(*key, 11);
                assert!(
                    why.starts_with("entry 2 (term 1): snappy data does not decompress"),
                    "{why}"
                );
            }
            other => panic!("expected one Undecodable, got {} results", other.len()),
        }
        assert_eq!(count.load(Ordering::SeqCst), 1, "nothing applied");
        assert_eq!(rsm.applied().index, Index(2), "skipped, not stuck");
    }

    // An on-disk state machine's local snapshot holds the session table
    // only. Its own store must be at or past the snapshot; an in-memory
    // state machine cannot use it at all.
    #[test]
    fn metadata_only_snapshots_need_the_state_machine_s_own_store() {
        let count = Arc::new(AtomicU64::new(0));
        let on_disk = Rsm::new(UserSm::OnDisk(Box::new(Counting(count.clone()))), 16, false)
            .with_snapshot_compression(Compression::Lz4);
        let p = on_disk.prepare(SnapshotContent::Local).unwrap();
        assert!(p.metadata_only && p.ctx.is_none());
        let mut snap = Vec::new();
        on_disk
            .save_prepared(p, &mut snap, &mut SnapshotFiles::new(), &StopFlag::new())
            .unwrap();
        assert!(is_metadata_only(&mut &snap[..]).unwrap());
        assert_eq!(snap[8], 0, "nothing to compress");
        // Behind the snapshot: its store lost synced state.
        let err = on_disk
            .recover(&mut &snap[..], applied_at(5), &[], &StopFlag::new())
            .unwrap_err();
        assert!(err.to_string().contains("store lost state"), "{err}");
        // At or past it: sessions and position taken, the store kept.
        on_disk.set_on_disk_index(Index(5));
        on_disk
            .recover(&mut &snap[..], applied_at(5), &[], &StopFlag::new())
            .unwrap();
        assert_eq!(on_disk.applied().index, Index(5));
        let err = bytes_rsm(b"", Compression::None)
            .recover(&mut &snap[..], applied_at(5), &[], &StopFlag::new())
            .unwrap_err();
        assert!(err.to_string().contains("cannot recover"), "{err}");
        // A full one (streams, exports) is not metadata only.
        let p = on_disk.prepare(SnapshotContent::Full).unwrap();
        assert!(!p.metadata_only && p.ctx.is_some());
        // In-memory kinds save everything whatever is asked.
        let mut full = Vec::new();
        bytes_rsm(b"abc", Compression::None)
            .save_regular(&mut full, &mut SnapshotFiles::new(), &StopFlag::new())
            .unwrap();
        assert!(!is_metadata_only(&mut &full[..]).unwrap());
    }
}
