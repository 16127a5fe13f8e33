//! Opening a write-ahead log: replaying its segments into the index.
//!
//! Segments are replayed from the oldest of the newest run of consecutive
//! ids (older ones are leftovers of an interrupted deletion). The oldest
//! replayed segment's checkpoint is the starting state; every later
//! checkpoint must agree with the replayed state.
//!
//! Every batch after a segment's checkpoint starts with two copies of a
//! batch header listing what each of its records changes (docs/formats.md,
//! "Damaged tails"). A batch is applied only if both copies and every
//! record check out. Otherwise:
//!
//! * A complete repair batch further on whose discard record names the
//!   batch's offset marks a hole: damage found and dealt with by an earlier
//!   open. Replay skips to the repair batch, in any segment.
//! * In the last segment, if only zeros follow, the log simply ends there
//!   (preallocated space).
//! * In the last segment, if no valid batch follows (other than the damaged
//!   batch's own header copy and unfinished repair batches for it), the
//!   batch is a damaged tail. It may have been acknowledged, so it is not
//!   treated as never written: the replicas its header names (every
//!   replica, when no header copy survived) get their term and vote
//!   restored from the header and a recovery guard, written in a repair
//!   batch after the damaged bytes before anything else happens; the damage
//!   is reported ([`Damage`]).
//! * Anything else (a damaged batch followed by a valid one, damage in an
//!   older segment, a record with a valid checksum that does not decode or
//!   does not fit the log) is [`Error::Corruption`] with file and offset.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use longship_raft::{HardState, Index, RecoveryGuard};

use super::commit::repair_batch;
use super::format::{
    BatchHeader, FLAG_LAST, KIND_BATCH_HEADER, KIND_UPDATE, RECORD_HEADER_BYTES, Record,
    RecordError, SEGMENT_HEADER_BYTES, Summary, batch_header_at, check_record,
    check_segment_header, decode_record, parse_segment_file_name, seal_batch, segment_seed,
    valid_record_after, valid_records_after,
};
use super::index::{IndexState, Loc, Segment, UpdateArgs};
use crate::error::{Error, Result};
use crate::logdb::shape::{Key, Op};
use crate::logdb::{Damage, ReplicaDamage};
use crate::vfs::{File, FileSystem};

/// Largest segment file replay reads (record offsets are `u32`).
const SEGMENT_FILE_MAX: u64 = u32::MAX as u64;

/// Whether replay may change files.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Mode {
    /// Never writes: files are opened read-only, nothing is cut, removed or
    /// synced; the state is what opening would produce.
    ReadOnly,
    /// Repairs what it may: cuts preallocated space, records damaged tails
    /// with their guards, removes segments torn while being created.
    Repair,
}

/// What replay produced.
pub(super) struct Replayed {
    /// The index of every replica.
    pub index: IndexState,
    /// Id for the next segment.
    pub next_id: u64,
    /// What was discarded or not trusted.
    pub damage: Vec<Damage>,
}

/// A damaged last batch of the last segment.
#[derive(Debug)]
struct TailDamage {
    /// Offset of the damaged batch.
    at: u64,
    /// Bytes from `at` to the last non-zero byte.
    bytes: u64,
    /// Where the repair batch may go at the earliest: past every non-zero
    /// byte and the header copy used (see [`write_repair`]).
    write_at: u64,
    /// A valid copy of the batch's header, if any.
    header: Option<BatchHeader>,
    /// What was wrong.
    reason: String,
    /// The file ends inside the batch: it was never written whole, so its
    /// fsync never completed and nothing in it was acknowledged (a torn
    /// write). Bytes that are there but garbled could have been.
    torn: bool,
}

/// How a segment's scan ended.
#[derive(Debug)]
enum ScanEnd {
    /// Every byte belongs to a complete batch.
    Clean,
    /// Only zeros from this offset on (the end of preallocated space).
    ZeroTail(u64),
    /// The last batch is damaged.
    Damaged(TailDamage),
    /// The segment holds no complete checkpoint (torn while being created).
    Empty {
        /// Why, when some of its bytes are not zero.
        reason: Option<String>,
    },
}

fn io_missing(dir: &Path) -> Error {
    Error::Io(std::io::Error::new(
        std::io::ErrorKind::NotFound,
        format!("{}: no such log directory", dir.display()),
    ))
}

/// Replays the log in `dir`.
pub(super) fn replay(
    fs: &dyn FileSystem,
    dir: &Path,
    cache_bytes: u64,
    mode: Mode,
) -> Result<Replayed> {
    if !fs.is_dir(dir) {
        if mode == Mode::ReadOnly {
            return Err(io_missing(dir));
        }
        fs.create_dir_all(dir)
            .map_err(|e| Error::io_at(e, "create", dir))?;
        // Make the new directories' names durable: every ancestor may be new.
        for parent in dir
            .ancestors()
            .skip(1)
            .filter(|p| !p.as_os_str().is_empty())
        {
            fs.sync_dir(parent)
                .map_err(|e| Error::io_at(e, "sync", parent))?;
        }
    }
    let mut ids: Vec<u64> = fs
        .list(dir)
        .map_err(|e| Error::io_at(e, "list", dir))?
        .iter()
        .filter_map(|p| parse_segment_file_name(p.file_name()?.to_str()?))
        .collect();
    ids.sort_unstable();
    // The newest run of consecutive ids.
    let mut start = ids.len().saturating_sub(1);
    while start > 0 && ids[start - 1] + 1 == ids[start] {
        start -= 1;
    }
    let (stale, suffix) = ids.split_at(start.min(ids.len()));
    let mut idx = IndexState::new(cache_bytes);
    let mut damage = Vec::new();
    let mut first_path: Option<PathBuf> = None;
    let mut removed_any = false;
    for (n, &id) in suffix.iter().enumerate() {
        let is_first = n == 0;
        let is_last = n + 1 == suffix.len();
        let path = dir.join(super::format::segment_file_name(id));
        let opened = match mode {
            Mode::ReadOnly => fs.open_read(&path),
            Mode::Repair => fs.open(&path),
        };
        let file: Arc<dyn File> = Arc::from(opened.map_err(|e| Error::io_at(e, "open", &path))?);
        let len = file.len().map_err(|e| Error::io_at(e, "stat", &path))?;
        if len > SEGMENT_FILE_MAX {
            return Err(Error::corruption(
                &path,
                0,
                format!("segment of {len} bytes"),
            ));
        }
        let mut data = vec![0u8; len as usize];
        let got = file
            .read_at(0, &mut data)
            .map_err(|e| Error::io_at(e, "read", &path))?;
        data.truncate(got);
        idx.segments.insert(
            id,
            Segment {
                path: path.clone(),
                file: file.clone(),
                live_runs: 0,
                live_bytes: 0,
                len: data.len() as u64,
            },
        );
        match scan_segment(&data, id, is_first, is_last, &mut idx, &path)? {
            ScanEnd::Clean => {
                if is_last && mode == Mode::Repair {
                    // What was replayed may never have been synced (a write
                    // whose fsync failed); make it durable before anything
                    // (a checkpoint) depends on it.
                    file.sync().map_err(|e| Error::io_at(e, "sync", &path))?;
                }
            }
            ScanEnd::ZeroTail(at) => {
                tracing::debug!(path = %path.display(), offset = at, "cutting off preallocated space");
                if mode == Mode::Repair {
                    file.set_len(at)
                        .and_then(|()| file.sync())
                        .map_err(|e| Error::io_at(e, "truncate", &path))?;
                }
                if let Some(s) = idx.segments.get_mut(&id) {
                    s.len = at;
                }
            }
            ScanEnd::Damaged(tail) => {
                let (ops, found) = plan_repair(&idx, &tail, &path);
                if found.torn {
                    tracing::warn!(
                        path = %path.display(),
                        offset = tail.at,
                        bytes = tail.bytes,
                        damage = %found,
                        "torn tail of the log discarded: the file ends inside a batch that was never synced, so never acknowledged"
                    );
                } else {
                    tracing::warn!(
                        path = %path.display(),
                        offset = tail.at,
                        bytes = tail.bytes,
                        replicas_unknown = found.replicas_unknown,
                        damage = %found,
                        "damaged tail of the log: the replicas it may have held data of are put under a recovery guard"
                    );
                }
                for op in &ops {
                    idx.apply(op, None, false).map_err(|e| {
                        Error::corruption(&path, tail.at, format!("cannot apply the repair: {e}"))
                    })?;
                }
                let mut end = data.len() as u64;
                if mode == Mode::Repair && found.torn && ops.is_empty() {
                    // A torn batch was never acknowledged and leaves nothing
                    // to record: cut it off. Appending a repair batch after
                    // it instead would make the file no longer end inside
                    // the batch, and if that append were itself torn by a
                    // crash, the next open would judge the same bytes
                    // damaged (possibly acknowledged) and guard replicas
                    // for an ordinary crash (simulator seed 8156408).
                    file.set_len(tail.at)
                        .and_then(|()| file.sync())
                        .map_err(|e| Error::io_at(e, "truncate", &path))?;
                    end = tail.at;
                } else if mode == Mode::Repair {
                    end = write_repair(&*file, &path, id, &data, &tail, &ops)?;
                }
                if let Some(s) = idx.segments.get_mut(&id) {
                    s.len = end;
                }
                damage.push(found);
            }
            ScanEnd::Empty { reason } => {
                // Safe to drop only if it is the first segment ever (nothing
                // was stored) or an older segment holds the state its
                // checkpoint would have held.
                if is_first && id != 1 {
                    return Err(Error::corruption(
                        &path,
                        0,
                        reason.clone().unwrap_or_else(|| {
                            "segment without a checkpoint, and no older segment".into()
                        }),
                    ));
                }
                if let Some(reason) = reason {
                    let bytes = data.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
                    let found = Damage {
                        file: path.clone(),
                        offset: 0,
                        bytes: bytes as u64,
                        reason: format!(
                            "segment torn while being created ({reason}); the older segments hold what it would have"
                        ),
                        replicas: Vec::new(),
                        replicas_unknown: false,
                        torn: false,
                    };
                    tracing::warn!(path = %path.display(), damage = %found, "removing a segment torn while being created");
                    damage.push(found);
                }
                idx.segments.remove(&id);
                if mode == Mode::Repair {
                    fs.remove_file(&path)
                        .map_err(|e| Error::io_at(e, "remove", &path))?;
                    removed_any = true;
                }
            }
        }
        if is_first {
            first_path = Some(path);
        }
    }
    if let Some((key, run)) = idx.find_phantom() {
        let file = first_path.unwrap_or_else(|| dir.to_path_buf());
        return Err(Error::corruption(
            &file,
            0,
            format!(
                "entries {}..{} of shard {} replica {} are in a segment that no longer exists",
                run.first,
                run.end(),
                key.0,
                key.1
            ),
        ));
    }
    if mode == Mode::Repair {
        for &id in stale {
            let path = dir.join(super::format::segment_file_name(id));
            tracing::info!(path = %path.display(), "removing segment left by an interrupted deletion");
            fs.remove_file(&path)
                .map_err(|e| Error::io_at(e, "remove", &path))?;
            removed_any = true;
        }
    }
    if removed_any {
        fs.sync_dir(dir).map_err(|e| Error::io_at(e, "sync", dir))?;
    }
    // After the newest surviving segment: a removed torn segment's id is
    // reused, so ids stay consecutive.
    let next_id = idx.segments.keys().next_back().map_or(1, |last| last + 1);
    Ok(Replayed {
        index: idx,
        next_id,
        damage,
    })
}

/// Writes the repair batch of a damaged tail after the damaged bytes,
/// durably, then cuts what follows it (zeros). Returns the segment's new
/// length.
///
/// The damaged bytes must read as damaged forever after, or the next
/// replay would see another log. The repair batch goes after the last
/// non-zero byte (and the header copy used); bytes between the file's end
/// and it were absent, and if a batch was cut short inside its own
/// trailing zero bytes, zeros there would make it whole again. So the gap
/// is filled with a filler byte chosen on a copy first: the damaged batch
/// must still read as damaged and the repair batch must be found for it.
fn write_repair(
    file: &dyn File,
    path: &Path,
    id: u64,
    data: &[u8],
    tail: &TailDamage,
    ops: &[Op],
) -> Result<u64> {
    let seed = segment_seed(id);
    let unsealed = repair_batch(tail.at, ops);
    let len = data.len() as u64;
    // Bounded: a few candidates. Two fillers cannot both complete the
    // damaged batch; the later places only matter if its checksum happened
    // to match the repair's first bytes.
    let candidates = [0x00u8, 0xff, 0xa5]
        .into_iter()
        .map(|f| (tail.write_at, f))
        .chain((1..=2).map(|k| (tail.write_at.max(len) + 8 * k, 0xffu8)));
    let mut chosen = None;
    for (at, filler) in candidates {
        let from = len.min(at);
        let mut bytes = vec![filler; (at - from) as usize];
        let mut batch = unsealed.clone();
        seal_batch(&mut batch, at, seed);
        bytes.extend_from_slice(&batch);
        let mut copy = data[..from as usize].to_vec();
        copy.extend_from_slice(&bytes);
        let stays_damaged = matches!(
            read_batch(&copy, tail.at as usize, id),
            Err(BatchFault::Damaged { .. })
        ) && find_repair(&copy, tail.at as usize, id) == Ok(Some(at as usize));
        if stays_damaged {
            chosen = Some((from, bytes));
            break;
        }
    }
    let Some((from, bytes)) = chosen else {
        return Err(Error::corruption(
            path,
            tail.at,
            format!("{}; found no place to record the repair", tail.reason),
        ));
    };
    let end = from + bytes.len() as u64;
    if end > super::SEGMENT_OFFSET_MAX {
        return Err(Error::corruption(
            path,
            tail.at,
            format!("{}; no room left in the segment to record it", tail.reason),
        ));
    }
    file.write_at(from, &bytes)
        .and_then(|()| file.sync())
        .map_err(|e| Error::io_at(e, "write repair batch to", path))?;
    // The guards are durable: only zeros follow, cut them so the segment
    // ends at its last record once a newer one exists.
    file.set_len(end)
        .and_then(|()| file.sync())
        .map_err(|e| Error::io_at(e, "truncate", path))?;
    Ok(end)
}

/// The term and vote a damaged batch's header says a replica had, over
/// its surviving hard state: a vote is never forgotten (restoring one the
/// replica may not have sent is safe, forgetting one is not). The commit
/// index stays the surviving one, within the surviving log.
fn restore_hard_state(old: HardState, written: HardState, last: Index) -> HardState {
    let mut hs = old;
    if written.term > old.term {
        hs.term = written.term;
        hs.vote = written.vote;
    } else if written.term == old.term && old.vote.is_none() {
        hs.vote = written.vote;
    }
    hs.commit = old.commit.min(last);
    hs
}

/// What one replica may have lost, gathered over a damaged batch's header.
#[derive(Default)]
struct Loss {
    /// Hull of the indexes of lost entries and snapshots.
    range: Option<(Index, Index)>,
    /// The last hard state the batch set.
    hard_state: Option<HardState>,
    /// Whether the batch may have changed what the replica acknowledged
    /// (entries, a snapshot installed) or its guard (a guard set, a
    /// removal, a relocation): only then is a guard needed. A batch that
    /// set only its hard state (a vote, a term, a commit index) left its
    /// log as it was, and restoring the hard state from the header is
    /// the whole repair; guarding it anyway stopped a shard whose other
    /// voter was guarded (simulator seed 12048564).
    needs_guard: bool,
}

impl Loss {
    fn cover(&mut self, lo: Index, hi: Index) {
        self.range = Some(match self.range {
            None => (lo, hi),
            Some((a, b)) => (a.min(lo), b.max(hi)),
        });
    }
}

/// The ops that record a damaged tail (restored hard states, then recovery
/// guards) and the damage report.
fn plan_repair(idx: &IndexState, tail: &TailDamage, path: &Path) -> (Vec<Op>, Damage) {
    let mut ops = Vec::new();
    let mut guards = Vec::new();
    let mut replicas = Vec::new();
    // A torn batch was never acknowledged: nothing to restore or guard.
    // Its replicas are still listed, for the report.
    let unknown = tail.header.is_none() && !tail.torn;
    match &tail.header {
        Some(h) => {
            let mut losses: BTreeMap<Key, Loss> = BTreeMap::new();
            for item in &h.items {
                let Some(key) = item.key() else { continue };
                if key.0.0 == 0 || key.1.is_none() {
                    continue;
                }
                let loss = losses.entry(key).or_default();
                match item {
                    Summary::Update {
                        kind,
                        snapshot,
                        hard_state,
                        entries,
                        ..
                    } => {
                        if let Some((i, _)) = snapshot {
                            loss.cover(*i, *i);
                            loss.needs_guard = true;
                        }
                        if let Some((f, l)) = entries {
                            loss.cover(*f, *l);
                            loss.needs_guard = true;
                        }
                        if let Some(hs) = hard_state {
                            loss.hard_state = Some(*hs);
                        }
                        if *kind != KIND_UPDATE {
                            loss.needs_guard = true;
                        }
                    }
                    // A lost local snapshot record or compaction leaves the
                    // log (and what was acknowledged) whole.
                    Summary::SaveSnapshot { .. } | Summary::Compact { .. } => {}
                    Summary::Remove { .. } | Summary::SetGuard { .. } | Summary::Discard { .. } => {
                        loss.needs_guard = true;
                    }
                }
            }
            for (key, loss) in losses {
                let r = idx.replicas.get(&key);
                let old = r.map(|r| r.hard_state).unwrap_or_default();
                let last = r.map_or(Index(0), |r| r.shape.last);
                let mut term = old.term;
                if let Some(written) = loss.hard_state.filter(|_| !tail.torn) {
                    let restored = restore_hard_state(old, written, last);
                    term = restored.term;
                    if restored != old || r.is_none() {
                        ops.push(Op::Update {
                            key,
                            snapshot: None,
                            entries: Vec::new(),
                            hard_state: Some(restored),
                            clear_recovery: false,
                        });
                    }
                }
                let acked = loss.range.map_or(last, |(_, hi)| hi.max(last));
                if !tail.torn && loss.needs_guard {
                    guards.push(Op::SetGuard {
                        key,
                        guard: RecoveryGuard {
                            acked_through: Some(acked),
                            restart_term: term,
                        },
                    });
                }
                replicas.push(ReplicaDamage {
                    shard_id: key.0,
                    replica_id: key.1,
                    entries: Some(loss.range.unwrap_or((last.next(), last))),
                    hard_state: loss.hard_state.is_some(),
                });
            }
        }
        None if tail.torn => {}
        None => {
            for (key, r) in &idx.replicas {
                guards.push(Op::SetGuard {
                    key: *key,
                    guard: RecoveryGuard {
                        acked_through: None,
                        restart_term: r.hard_state.term,
                    },
                });
                replicas.push(ReplicaDamage {
                    shard_id: key.0,
                    replica_id: key.1,
                    entries: None,
                    hard_state: true,
                });
            }
        }
    }
    ops.extend(guards);
    let damage = Damage {
        file: path.to_path_buf(),
        offset: tail.at,
        bytes: tail.bytes,
        reason: tail.reason.clone(),
        replicas,
        replicas_unknown: unknown,
        torn: tail.torn,
    };
    (ops, damage)
}

/// A batch read whole: its records (after the header copies) and where it ends.
struct BatchRead {
    records: Vec<(Record, Loc)>,
    end: usize,
}

/// Why a batch could not be read whole.
enum BatchFault {
    /// Damaged or cut short: `reason`, with `header` if the first copy
    /// checked out.
    Damaged {
        reason: String,
        header: Option<(BatchHeader, usize)>,
    },
    /// Bytes with valid checksums that make no sense: corruption at `offset`.
    Invalid { offset: usize, reason: String },
}

/// Reads the batch at `data[pos..]` of segment `id`.
fn read_batch(data: &[u8], pos: usize, id: u64) -> std::result::Result<BatchRead, BatchFault> {
    let seed = segment_seed(id);
    let damaged = |reason: String, header: Option<(BatchHeader, usize)>| BatchFault::Damaged {
        reason,
        header,
    };
    let Some((h1, h1_end)) = batch_header_at(data, pos, seed).filter(|(h, _)| h.copy == 0) else {
        let reason = match check_record(&data[pos..], seed) {
            Err(RecordError::Incomplete) => format!("batch header at {pos} cut short"),
            Err(RecordError::Bad(r)) => format!("first batch header copy at {pos}: {r}"),
            Ok(_) => format!("no valid batch header at {pos}"),
        };
        return Err(damaged(reason, None));
    };
    let first = Some((h1.clone(), h1_end));
    match batch_header_at(data, h1_end, seed) {
        Some((h2, _)) if h2.copy == 1 && h2.same_batch(&h1) => {}
        _ => {
            return Err(damaged(
                format!("second batch header copy at {h1_end} damaged or missing"),
                first,
            ));
        }
    }
    let mut q = h1_end + (h1_end - pos);
    let mut records = Vec::with_capacity(h1.items.len());
    for (i, item) in h1.items.iter().enumerate() {
        let rh = match check_record(&data[q..], seed) {
            Ok(rh) => rh,
            Err(RecordError::Incomplete) => {
                return Err(damaged(format!("batch cut short at {q}"), first));
            }
            Err(RecordError::Bad(r)) => return Err(damaged(format!("record at {q}: {r}"), first)),
        };
        let last = i + 1 == h1.items.len();
        if rh.kind != item.kind() || (rh.flags & FLAG_LAST != 0) != last {
            return Err(BatchFault::Invalid {
                offset: q,
                reason: "record does not match its batch header".into(),
            });
        }
        let end = q + RECORD_HEADER_BYTES + rh.len as usize;
        let record = decode_record(rh.kind, &data[q + RECORD_HEADER_BYTES..end]).map_err(|e| {
            BatchFault::Invalid {
                offset: q,
                reason: format!("undecodable record: {e}"),
            }
        })?;
        records.push((
            record,
            Loc {
                segment: id,
                offset: q as u32,
                len: (end - q) as u32,
            },
        ));
        q = end;
    }
    if q as u64 != h1.end() {
        return Err(BatchFault::Invalid {
            offset: pos,
            reason: format!("batch ends at {q}, its header says {}", h1.end()),
        });
    }
    Ok(BatchRead { records, end: q })
}

/// The start of a complete repair batch after `data[pos]` whose discard
/// record names `pos`: the bytes up to it are a hole left by an earlier
/// open. `Err` when the search cannot be bounded.
fn find_repair(data: &[u8], pos: usize, id: u64) -> std::result::Result<Option<usize>, ()> {
    let seed = segment_seed(id);
    for (q, rh) in valid_records_after(data, pos + 1, seed)? {
        if rh.kind != KIND_BATCH_HEADER {
            continue;
        }
        let Some((h, _)) = batch_header_at(data, q, seed) else {
            continue;
        };
        let names_pos =
            matches!(h.items.first(), Some(Summary::Discard { from }) if *from == pos as u64);
        let start = h.start as usize;
        if names_pos && start > pos && start < data.len() && read_batch(data, start, id).is_ok() {
            return Ok(Some(start));
        }
    }
    Ok(None)
}

/// Classifies the damaged batch at `data[pos..]` of the last segment: a
/// damaged tail, or corruption (a valid batch follows).
fn classify_tail(
    data: &[u8],
    pos: usize,
    id: u64,
    reason: String,
    first: Option<(BatchHeader, usize)>,
    path: &Path,
) -> Result<TailDamage> {
    let seed = segment_seed(id);
    let found = valid_records_after(data, pos + 1, seed).map_err(|()| {
        Error::corruption(
            path,
            pos as u64,
            format!("{reason}; too many record-like bytes after it to tell a damaged tail"),
        )
    })?;
    let mut header = first;
    for (q, rh) in found {
        if rh.kind != KIND_BATCH_HEADER {
            continue;
        }
        let Some((h, end)) = batch_header_at(data, q, seed) else {
            continue;
        };
        if h.start == pos as u64 {
            if header.is_none() {
                header = Some((h, end));
            }
            continue;
        }
        if matches!(h.items.first(), Some(Summary::Discard { from }) if *from == pos as u64) {
            // An unfinished repair of this very tail.
            continue;
        }
        return Err(Error::corruption(
            path,
            pos as u64,
            format!(
                "{reason}; a valid batch follows at offset {}",
                h.start.min(q as u64)
            ),
        ));
    }
    let nonzero_end = data.iter().rposition(|&b| b != 0).map_or(pos, |i| i + 1);
    // Torn: the file ends before the batch does (by its header), or inside
    // the first header copy when neither copy can be read. A batch whose
    // fsync completed is there whole: what is missing was never synced,
    // never acknowledged. (Preallocated space reads as zeros, not as an
    // end: there a cut batch looks garbled and is guarded, conservatively.)
    let torn = match &header {
        Some((h, _)) => (data.len() as u64) < h.end(),
        None => matches!(
            check_record(&data[pos..], seed),
            Err(RecordError::Incomplete)
        ),
    };
    let header_end = header.as_ref().map_or(0, |(_, end)| *end);
    let write_at = (nonzero_end.max(header_end) as u64).next_multiple_of(8);
    Ok(TailDamage {
        at: pos as u64,
        bytes: (nonzero_end - pos) as u64,
        write_at,
        header: header.map(|(h, _)| h),
        reason,
        torn,
    })
}

/// Replays one segment's records into `idx`.
fn scan_segment(
    data: &[u8],
    id: u64,
    is_first: bool,
    is_last: bool,
    idx: &mut IndexState,
    path: &Path,
) -> Result<ScanEnd> {
    let seed = segment_seed(id);
    let nonzero = |from: usize| data.get(from..).is_some_and(|d| d.iter().any(|&b| b != 0));
    if let Err(reason) = check_segment_header(data, id) {
        if is_last && !valid_record_after(data, 0, seed) {
            return Ok(ScanEnd::Empty {
                reason: nonzero(0).then_some(reason),
            });
        }
        return Err(Error::corruption(path, 0, reason));
    }
    // The checkpoint: records up to the first flagged LAST.
    let mut pos = SEGMENT_HEADER_BYTES;
    let mut checkpoint = Vec::new();
    loop {
        let header = match check_record(&data[pos..], seed) {
            Ok(h) => h,
            Err(err) => {
                let reason = match err {
                    RecordError::Incomplete if pos == data.len() => {
                        "segment without a checkpoint".to_string()
                    }
                    RecordError::Incomplete => "checkpoint cut short".to_string(),
                    RecordError::Bad(r) => format!("checkpoint: {r}"),
                };
                if is_last && !valid_record_after(data, pos + 1, seed) {
                    return Ok(ScanEnd::Empty {
                        reason: nonzero(SEGMENT_HEADER_BYTES).then_some(reason),
                    });
                }
                return Err(Error::corruption(path, pos as u64, reason));
            }
        };
        let end = pos + RECORD_HEADER_BYTES + header.len as usize;
        let record = decode_record(header.kind, &data[pos + RECORD_HEADER_BYTES..end])
            .map_err(|e| Error::corruption(path, pos as u64, format!("undecodable record: {e}")))?;
        let loc = Loc {
            segment: id,
            offset: pos as u32,
            len: (end - pos) as u32,
        };
        checkpoint.push((record, loc));
        pos = end;
        if header.flags & FLAG_LAST != 0 {
            break;
        }
    }
    apply_batch(checkpoint, true, is_first, idx, path, SEGMENT_HEADER_BYTES)?;
    // The batches. `hole`: the offset a repair batch must name, right after
    // skipping the hole it repairs.
    let mut hole: Option<u64> = None;
    // Bounded: every round consumes a batch or ends the scan.
    while pos < data.len() {
        match read_batch(data, pos, id) {
            Ok(batch) => {
                let mut records = batch.records;
                if let Some((Record::Discard { from }, loc)) = records.first() {
                    if hole != Some(*from) {
                        return Err(Error::corruption(
                            path,
                            loc.offset as u64,
                            "repair batch that follows no damaged bytes",
                        ));
                    }
                    records.remove(0);
                }
                hole = None;
                apply_batch(records, false, is_first, idx, path, pos)?;
                pos = batch.end;
            }
            Err(BatchFault::Invalid { offset, reason }) => {
                return Err(Error::corruption(path, offset as u64, reason));
            }
            Err(BatchFault::Damaged { reason, header }) => {
                match find_repair(data, pos, id) {
                    Ok(Some(start)) => {
                        tracing::debug!(path = %path.display(), offset = pos, bytes = start - pos,
                            "skipping damaged bytes repaired at an earlier open");
                        hole = Some(pos as u64);
                        pos = start;
                        continue;
                    }
                    Ok(None) => {}
                    Err(()) => return Err(Error::corruption(path, pos as u64, reason)),
                }
                if !is_last {
                    return Err(Error::corruption(path, pos as u64, reason));
                }
                if !nonzero(pos) {
                    return Ok(ScanEnd::ZeroTail(pos as u64));
                }
                return Ok(ScanEnd::Damaged(classify_tail(
                    data, pos, id, reason, header, path,
                )?));
            }
        }
    }
    Ok(ScanEnd::Clean)
}

/// Applies one complete batch. The first batch of a segment is its
/// checkpoint; no other batch may hold checkpoint records.
fn apply_batch(
    batch: Vec<(Record, Loc)>,
    is_checkpoint: bool,
    is_first_segment: bool,
    idx: &mut IndexState,
    path: &Path,
    offset: usize,
) -> Result<()> {
    if is_checkpoint {
        let mut replicas = Vec::new();
        for (rec, loc) in batch {
            match rec {
                Record::Checkpoint(mut r) => replicas.append(&mut r),
                Record::Op(_)
                | Record::Update(_)
                | Record::Relocate(_)
                | Record::BatchHeader(_)
                | Record::Discard { .. } => {
                    return Err(Error::corruption(
                        path,
                        loc.offset as u64,
                        "segment does not start with a checkpoint",
                    ));
                }
            }
        }
        let mut keys: Vec<_> = replicas.iter().map(|c| c.key).collect();
        keys.sort_unstable();
        if keys.windows(2).any(|w| w[0] == w[1]) {
            return Err(Error::corruption(
                path,
                offset as u64,
                "checkpoint names a replica twice",
            ));
        }
        if is_first_segment {
            idx.load_checkpoint(replicas);
        } else if !idx.matches_checkpoint(&replicas) {
            return Err(Error::corruption(
                path,
                offset as u64,
                "checkpoint disagrees with the replayed log",
            ));
        }
        return Ok(());
    }
    for (rec, loc) in batch {
        match rec {
            Record::Checkpoint(_) | Record::BatchHeader(_) | Record::Discard { .. } => {
                return Err(Error::corruption(
                    path,
                    loc.offset as u64,
                    "checkpoint, batch header or discard record out of place",
                ));
            }
            Record::Update(h) => idx
                .apply_update(
                    UpdateArgs {
                        key: h.key,
                        snapshot: h.snapshot.as_ref(),
                        hard_state: h.hard_state.as_ref(),
                        clear_recovery: h.clear_recovery,
                        first: h.first,
                        // Bounded by the record length (checked when decoded).
                        count: h.count as usize,
                        loc: Some(loc),
                        cached: None,
                    },
                    |i| h.term_of(i as u64),
                )
                .map_err(|e| {
                    Error::corruption(
                        path,
                        loc.offset as u64,
                        format!("record does not fit the log: {e}"),
                    )
                })?,
            Record::Relocate(h) => idx
                .relocate(h.key, h.first, h.count, |i| h.term_of(i), loc)
                .map_err(|e| {
                    Error::corruption(path, loc.offset as u64, format!("bad relocation: {e}"))
                })?,
            Record::Op(op) => idx.apply(&op, Some(loc), false).map_err(|e| {
                Error::corruption(
                    path,
                    loc.offset as u64,
                    format!("record does not fit the log: {e}"),
                )
            })?,
        }
    }
    Ok(())
}
