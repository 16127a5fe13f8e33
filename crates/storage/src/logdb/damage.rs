//! [`Damage`]: what log storage found damaged when it opened, and which
//! replicas may have lost acknowledged state because of it.

use std::fmt;
use std::path::PathBuf;

use longship_raft::{Index, ReplicaId, ShardId};

/// A region of log storage that replay at open discarded or could not
/// trust, with the replicas it may have held data of.
///
/// Log storage reports damage only where it could not rule out that the
/// bytes held something acknowledged; every affected replica is then put
/// under a [`RecoveryGuard`](longship_raft::RecoveryGuard) (found in
/// [`ReplicaState::recovery`](super::ReplicaState::recovery)). Damage it
/// cannot attribute to the end of the log is not reported here: it makes
/// opening fail with [`Error::Corruption`](crate::Error::Corruption).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Damage {
    /// The damaged file.
    pub file: PathBuf,
    /// Offset of the first byte not trusted.
    pub offset: u64,
    /// Number of bytes not trusted (from `offset`).
    pub bytes: u64,
    /// What was wrong with them.
    pub reason: String,
    /// The replicas whose data the bytes may have held, sorted. When
    /// [`replicas_unknown`](Self::replicas_unknown) is set, every replica of
    /// the log is listed (with unknown entries).
    pub replicas: Vec<ReplicaDamage>,
    /// The bytes did not say which replicas they belonged to: every
    /// replica in the log is treated as affected.
    pub replicas_unknown: bool,
    /// A torn write: the file ends inside the batch, which therefore was
    /// never synced whole and never acknowledged. Nothing was restored and
    /// no replica is put under a guard; the replicas listed are those the
    /// batch would have written.
    pub torn: bool,
}

/// What one replica may have lost in a [`Damage`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ReplicaDamage {
    /// The shard.
    pub shard_id: ShardId,
    /// The replica.
    pub replica_id: ReplicaId,
    /// Inclusive range of log indexes whose entries (or snapshot) may be
    /// lost. `None`: unknown. An empty range (`first > last`): the damaged
    /// bytes held no entries of this replica.
    pub entries: Option<(Index, Index)>,
    /// Whether a hard state (term, vote, commit) of the replica may be
    /// lost. When the bytes named it, its term and vote were restored.
    pub hard_state: bool,
}

impl ReplicaDamage {
    /// Whether entries of the replica may be lost (or it is unknown).
    pub fn entries_may_be_lost(&self) -> bool {
        self.entries.is_none_or(|(first, last)| first <= last)
    }
}

impl fmt::Display for ReplicaDamage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "shard {} replica {}: ", self.shard_id, self.replica_id)?;
        match self.entries {
            None => write!(f, "entries unknown")?,
            Some((first, last)) if first <= last => write!(f, "entries {first}..={last}")?,
            Some(_) => write!(f, "no entries")?,
        }
        if self.hard_state {
            write!(f, ", hard state")?;
        }
        Ok(())
    }
}

impl fmt::Display for Damage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} at offset {}, {} byte(s): {}",
            self.file.display(),
            self.offset,
            self.bytes,
            self.reason
        )?;
        if self.torn {
            write!(
                f,
                "; a torn write (the file ends inside the batch): never acknowledged, no guard"
            )?;
        }
        if self.replicas_unknown {
            write!(
                f,
                "; affected replicas unknown: every replica of the log is treated as affected"
            )?;
        } else if self.replicas.is_empty() {
            write!(f, "; no replica affected")?;
        } else {
            write!(f, "; may have lost: ")?;
            for (i, r) in self.replicas.iter().enumerate() {
                if i > 0 {
                    write!(f, "; ")?;
                }
                write!(f, "{r}")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_file_offset_and_replicas() {
        let d = Damage {
            file: PathBuf::from("/wal/00000000000000000003.wal"),
            offset: 4096,
            bytes: 120,
            reason: "record checksum mismatch".into(),
            replicas: vec![
                ReplicaDamage {
                    shard_id: ShardId(7),
                    replica_id: ReplicaId(2),
                    entries: Some((Index(10), Index(12))),
                    hard_state: true,
                },
                ReplicaDamage {
                    shard_id: ShardId(8),
                    replica_id: ReplicaId(1),
                    entries: Some((Index(5), Index(4))),
                    hard_state: true,
                },
            ],
            replicas_unknown: false,
            torn: false,
        };
        let s = d.to_string();
        assert!(s.contains("00000000000000000003.wal at offset 4096, 120 byte(s)"));
        assert!(s.contains("shard 7 replica 2: entries 10..=12, hard state"));
        assert!(s.contains("shard 8 replica 1: no entries, hard state"));
        assert!(d.replicas[0].entries_may_be_lost());
        assert!(!d.replicas[1].entries_may_be_lost());
    }
}
