//! Reading entries: from the cache when they are recent, else from the
//! records in the segment files.

use std::path::PathBuf;
use std::sync::Arc;

use longship_raft::{Entry, Index};

use super::Wal;
use super::format::{
    KIND_RELOCATE, KIND_UPDATE, RECORD_HEADER_BYTES, check_record, decode_update, segment_seed,
};
use super::index::Run;
use crate::error::{Error, Result};
use crate::logdb::push_limited;
use crate::logdb::shape::{Key, Shape};
use crate::vfs::File;

/// Runs collected per visit of the index, so a long read never holds the
/// index lock while it reads files.
const RUNS_PER_ROUND: usize = 64;

impl Wal {
    /// Entries `[low, high)` of `key`, at most `max_bytes` (at least one).
    pub(super) fn read_entries(
        &self,
        key: Key,
        low: Index,
        high: Index,
        max_bytes: u64,
    ) -> Result<Vec<Entry>> {
        let mut out = Vec::new();
        let mut bytes = 0u64;
        let mut next = low;
        // Bounded: every round reads at least one run or returns.
        loop {
            let mut disk: Vec<(Arc<dyn File>, PathBuf, Run)> = Vec::new();
            {
                let idx = self.index.read();
                let empty = super::index::ReplicaIndex::default();
                let r = idx.replicas.get(&key).unwrap_or(&empty);
                let shape: &Shape = &r.shape;
                if next <= shape.marker {
                    return Err(Error::Compacted);
                }
                if next == low {
                    if high > shape.last.next() {
                        return Err(Error::Unavailable);
                    }
                    if low >= high {
                        return Ok(out);
                    }
                }
                let high = high.min(shape.last.next());
                if next >= high {
                    return Ok(out);
                }
                let cache_first = r.cache.front().map_or(high, |e| e.index.min(high));
                if next >= cache_first {
                    let base = cache_first.0;
                    let iter = r
                        .cache
                        .range((next.0 - base) as usize..(high.0 - base) as usize);
                    push_limited(iter, max_bytes, &mut out, &mut bytes);
                    return Ok(out);
                }
                let pos = r.runs.partition_point(|run| run.end() <= next);
                for run in r.runs.iter().skip(pos) {
                    if run.first >= cache_first || disk.len() == RUNS_PER_ROUND {
                        break;
                    }
                    let seg = idx.segments.get(&run.loc.segment).ok_or_else(|| {
                        Error::Io(std::io::Error::other(format!(
                            "segment {} of a live run is gone",
                            run.loc.segment
                        )))
                    })?;
                    let mut run = *run;
                    if run.end() > cache_first {
                        run.count = cache_first.0 - run.first.0;
                    }
                    disk.push((seg.file.clone(), seg.path.clone(), run));
                }
            }
            for (file, path, run) in disk {
                let entries = read_record_entries(&*file, &path, &run, key)?;
                let from = next.max(run.first);
                let iter = entries
                    .iter()
                    .filter(|e| e.index >= from && e.index < run.end() && e.index < high);
                if !push_limited(iter, max_bytes, &mut out, &mut bytes) {
                    return Ok(out);
                }
                next = run.end().min(high);
                if next >= high {
                    return Ok(out);
                }
            }
        }
    }
}

/// Reads, checks and decodes the update record of a run.
pub(super) fn read_record_entries(
    file: &dyn File,
    path: &std::path::Path,
    run: &Run,
    key: Key,
) -> Result<Vec<Entry>> {
    let offset = u64::from(run.loc.offset);
    let mut buf = vec![0u8; run.loc.len as usize];
    let n = file
        .read_at(offset, &mut buf)
        .map_err(|e| Error::io_at(e, "read", path))?;
    if n < buf.len() {
        return Err(Error::corruption(path, offset, "record cut short"));
    }
    let header = check_record(&buf, segment_seed(run.loc.segment))
        .map_err(|e| Error::corruption(path, offset, format!("record unreadable: {e:?}")))?;
    if header.kind != KIND_UPDATE && header.kind != KIND_RELOCATE {
        return Err(Error::corruption(path, offset, "record is not an update"));
    }
    match decode_update(&buf[RECORD_HEADER_BYTES..]) {
        Ok((h, entries)) if h.key == key => Ok(entries),
        Ok(_) => Err(Error::corruption(
            path,
            offset,
            "record is not an update of this replica",
        )),
        Err(e) => Err(Error::corruption(
            path,
            offset,
            format!("undecodable record: {e}"),
        )),
    }
}
