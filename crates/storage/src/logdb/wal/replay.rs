//! Opening a write-ahead log: replaying its segments into the index.
//!
//! Segments are replayed from the oldest of the newest run of consecutive
//! ids (older ones are leftovers of an interrupted deletion). The oldest
//! replayed segment's checkpoint is the starting state; every later
//! checkpoint must agree with the replayed state.
//!
//! Damage is told apart from a torn tail like this: a bad or incomplete
//! record in the last segment with no valid record anywhere after it is a
//! torn tail — the batch it belongs to was never acknowledged, so the
//! segment is cut back to that batch's start. Anything else (a bad record
//! followed by a valid one, a bad record in an older segment, a batch
//! without its last record in an older segment, a record that does not fit
//! the log) is reported as [`Error::Corruption`] with file and offset.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::format::{
    FLAG_LAST, RECORD_HEADER_BYTES, Record, RecordError, SEGMENT_HEADER_BYTES, check_record,
    check_segment_header, decode_record, parse_segment_file_name, segment_seed, valid_record_after,
};
use super::index::{IndexState, Loc, Segment, UpdateArgs};
use crate::error::{Error, Result};
use crate::vfs::{File, FileSystem};

/// Largest segment file replay reads (record offsets are `u32`).
const SEGMENT_FILE_MAX: u64 = u32::MAX as u64;

/// How a segment's scan ended.
#[derive(Debug, PartialEq, Eq)]
enum ScanEnd {
    /// Every byte belongs to a complete batch.
    Clean,
    /// The tail from this offset is torn and must be cut off.
    Torn(u64),
    /// The segment holds no complete batch at all (torn while being
    /// created); it is removed.
    Empty,
}

/// Replays the log in `dir`; returns the index and the id for the next segment.
pub(super) fn replay(
    fs: &dyn FileSystem,
    dir: &Path,
    cache_bytes: u64,
) -> Result<(IndexState, u64)> {
    if !fs.is_dir(dir) {
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
    let mut first_path: Option<PathBuf> = None;
    let mut removed_any = false;
    for (n, &id) in suffix.iter().enumerate() {
        let is_first = n == 0;
        let is_last = n + 1 == suffix.len();
        let path = dir.join(super::format::segment_file_name(id));
        let file: Arc<dyn File> =
            Arc::from(fs.open(&path).map_err(|e| Error::io_at(e, "open", &path))?);
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
                if is_last {
                    // What was replayed may never have been synced (a write
                    // whose fsync failed); make it durable before anything
                    // (a checkpoint) depends on it.
                    file.sync().map_err(|e| Error::io_at(e, "sync", &path))?;
                }
            }
            ScanEnd::Torn(at) => {
                if data[at as usize..].iter().all(|&b| b == 0) {
                    tracing::debug!(path = %path.display(), offset = at, "cutting off preallocated space");
                } else {
                    tracing::warn!(path = %path.display(), offset = at, "cutting off torn tail of the log");
                }
                file.set_len(at)
                    .and_then(|()| file.sync())
                    .map_err(|e| Error::io_at(e, "truncate", &path))?;
                if let Some(s) = idx.segments.get_mut(&id) {
                    s.len = at;
                }
            }
            ScanEnd::Empty => {
                tracing::warn!(path = %path.display(), "removing segment torn while being created");
                idx.segments.remove(&id);
                fs.remove_file(&path)
                    .map_err(|e| Error::io_at(e, "remove", &path))?;
                removed_any = true;
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
    for &id in stale {
        let path = dir.join(super::format::segment_file_name(id));
        tracing::info!(path = %path.display(), "removing segment left by an interrupted deletion");
        fs.remove_file(&path)
            .map_err(|e| Error::io_at(e, "remove", &path))?;
        removed_any = true;
    }
    if removed_any {
        fs.sync_dir(dir).map_err(|e| Error::io_at(e, "sync", dir))?;
    }
    // After the newest surviving segment: a removed torn segment's id is
    // reused, so ids stay consecutive.
    let next_id = idx.segments.keys().next_back().map_or(1, |last| last + 1);
    Ok((idx, next_id))
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
    if let Err(reason) = check_segment_header(data, id) {
        if is_last && !valid_record_after(data, 0, seed) {
            return Ok(ScanEnd::Empty);
        }
        return Err(Error::corruption(path, 0, reason));
    }
    let mut pos = SEGMENT_HEADER_BYTES;
    let mut batch_start = pos;
    let mut pending: Vec<(Record, Loc)> = Vec::new();
    let mut batches = 0u64;
    // Bounded: every round consumes a record or ends the scan.
    while pos < data.len() {
        let header = match check_record(&data[pos..], seed) {
            Ok(h) => h,
            Err(err) => {
                if is_last && !valid_record_after(data, pos + 1, seed) {
                    return Ok(if batches == 0 {
                        ScanEnd::Empty
                    } else {
                        ScanEnd::Torn(batch_start as u64)
                    });
                }
                let reason = match err {
                    RecordError::Incomplete => "record incomplete".to_string(),
                    RecordError::Bad(r) => r,
                };
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
        pending.push((record, loc));
        pos = end;
        if header.flags & FLAG_LAST != 0 {
            apply_batch(
                std::mem::take(&mut pending),
                batches == 0,
                is_first,
                idx,
                path,
                batch_start,
            )?;
            batches += 1;
            batch_start = pos;
        }
    }
    if !pending.is_empty() {
        if is_last {
            return Ok(if batches == 0 {
                ScanEnd::Empty
            } else {
                ScanEnd::Torn(batch_start as u64)
            });
        }
        return Err(Error::corruption(
            path,
            batch_start as u64,
            "batch without its last record",
        ));
    }
    if batches == 0 {
        if is_last {
            return Ok(ScanEnd::Empty);
        }
        return Err(Error::corruption(
            path,
            pos as u64,
            "segment without a checkpoint",
        ));
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
                Record::Op(_) | Record::Update(_) | Record::Relocate(_) => {
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
            Record::Checkpoint(_) => {
                return Err(Error::corruption(
                    path,
                    loc.offset as u64,
                    "checkpoint record after the segment start",
                ));
            }
            Record::Update(h) => idx
                .apply_update(
                    UpdateArgs {
                        key: h.key,
                        snapshot: h.snapshot.as_ref(),
                        hard_state: h.hard_state.as_ref(),
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
