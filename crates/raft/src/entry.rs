//! Log entries and the persistent state that goes with them.

use bytes::Bytes;

use crate::ids::{Index, ReplicaId, Term};
use crate::membership::Membership;

/// What an entry carries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum EntryType {
    /// An application command, applied to the state machine.
    #[default]
    Normal = 0,
    /// An encoded [`ConfigChange`](crate::ConfigChange) (thesis §4.1).
    ConfigChange = 1,
    /// The empty entry a new leader appends to commit its term (Raft §5.4.2, §8).
    NoOp = 2,
    /// A normal entry whose payload was stripped because it was sent to a
    /// witness replica: term, index and session fields only.
    Metadata = 3,
    /// An application command like [`Normal`](EntryType::Normal) whose
    /// payload is encoded (compressed) by the layer above the core: the
    /// payload's first byte names the encoding (`docs/formats.md`,
    /// "Compressed entry payloads"). The core treats it exactly like a
    /// normal entry; the state machine sees the decoded command. A build
    /// that predates this type refuses it when decoding (entry type 4).
    Encoded = 4,
}

impl EntryType {
    /// Decodes the wire value.
    pub fn from_u8(v: u8) -> Option<EntryType> {
        match v {
            0 => Some(EntryType::Normal),
            1 => Some(EntryType::ConfigChange),
            2 => Some(EntryType::NoOp),
            3 => Some(EntryType::Metadata),
            4 => Some(EntryType::Encoded),
            _ => None,
        }
    }
}

/// Series id reserved for registering a client session (thesis §6.3).
pub const SERIES_ID_REGISTER: u64 = u64::MAX - 1;
/// Series id reserved for unregistering a client session.
pub const SERIES_ID_UNREGISTER: u64 = u64::MAX;
/// Series id of proposals made with the no-op session (no de-duplication).
pub const SERIES_ID_NOOP: u64 = 0;
/// Client id of the no-op session.
pub const CLIENT_ID_NOOP: u64 = 0;

/// One Raft log entry.
///
/// `key` identifies the proposal on the replica that made it, so that it can
/// answer its caller once the entry is applied; it means nothing elsewhere.
/// `client_id`, `series_id` and `responded_to` implement client sessions
/// (thesis §6.3); they are zero for the no-op session.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Entry {
    /// Term in which a leader created the entry.
    pub term: Term,
    /// Position of the entry in the log.
    pub index: Index,
    /// What the entry carries.
    pub entry_type: EntryType,
    /// Proposal key on the proposing replica.
    pub key: u64,
    /// Client session id (0 for the no-op session).
    pub client_id: u64,
    /// Series id within the client session.
    pub series_id: u64,
    /// The client has received responses for every series id up to this one.
    pub responded_to: u64,
    /// The payload: application command or encoded config change.
    pub cmd: Bytes,
}

/// Fixed per-entry overhead used when sizing batches (an upper bound of the
/// encoded header).
pub const ENTRY_OVERHEAD_BYTES: u64 = 64;

impl Entry {
    /// Approximate encoded size, used by every byte limit (append message
    /// size, in-flight bytes, uncommitted bytes).
    #[inline]
    pub fn size_bytes(&self) -> u64 {
        ENTRY_OVERHEAD_BYTES + self.cmd.len() as u64
    }

    /// The payload size alone, used by the uncommitted-bytes limit.
    #[inline]
    pub fn payload_bytes(&self) -> u64 {
        self.cmd.len() as u64
    }

    /// This entry as a witness receives it: application payloads are stripped
    /// (witnesses hold no state machine); config changes stay whole because a
    /// witness must know the membership.
    pub fn to_witness(&self) -> Entry {
        match self.entry_type {
            EntryType::Normal | EntryType::Encoded => Entry {
                entry_type: EntryType::Metadata,
                cmd: Bytes::new(),
                ..self.clone()
            },
            _ => self.clone(),
        }
    }

    /// Whether the entry is a config change.
    #[inline]
    pub fn is_config_change(&self) -> bool {
        self.entry_type == EntryType::ConfigChange
    }
}

/// Sum of `size_bytes` over entries.
pub fn entries_size(entries: &[Entry]) -> u64 {
    entries.iter().map(Entry::size_bytes).sum()
}

/// The state Raft must persist before answering (Raft Figure 2).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HardState {
    /// Latest term this replica has seen.
    pub term: Term,
    /// Who this replica voted for in `term` (`ReplicaId::NONE` if nobody).
    pub vote: ReplicaId,
    /// Highest index known to be committed. Persisting it is an optimization;
    /// it may lag the real commit index.
    pub commit: Index,
}

impl HardState {
    /// Whether this is the state of a replica that never did anything.
    pub fn is_empty(&self) -> bool {
        *self == HardState::default()
    }
}

/// Metadata of a snapshot: the position it covers and the membership at that
/// position. The snapshot data itself lives in files managed outside the core.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SnapshotMeta {
    /// Last log index covered by the snapshot.
    pub index: Index,
    /// Term of the entry at `index`.
    pub term: Term,
    /// Membership as of `index`.
    pub membership: Membership,
    /// For on-disk state machines: the applied index the state machine
    /// reported when the snapshot was taken (0 otherwise).
    pub on_disk_index: Index,
    /// A witness snapshot: metadata only, no state machine data.
    pub witness: bool,
    /// Size in bytes of the snapshot data, as known to the engine (0 if unknown).
    pub file_size: u64,
}

impl SnapshotMeta {
    /// Whether this describes "no snapshot".
    pub fn is_empty(&self) -> bool {
        self.index == Index(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // A witness holds no state machine: compressed commands are stripped
    // like plain ones (it would otherwise store payloads it never uses).
    #[test]
    fn witnesses_get_application_entries_without_payload() {
        for t in [EntryType::Normal, EntryType::Encoded] {
            let e = Entry {
                entry_type: t,
                cmd: Bytes::from_static(b"\x01\x05abcde"),
                key: 3,
                ..Entry::default()
            };
            let w = e.to_witness();
            assert_eq!(w.entry_type, EntryType::Metadata);
            assert!(w.cmd.is_empty());
            assert_eq!(w.key, 3);
        }
        let cc = Entry {
            entry_type: EntryType::ConfigChange,
            cmd: Bytes::from_static(b"cc"),
            ..Entry::default()
        };
        assert_eq!(cc.to_witness(), cc);
        assert_eq!(EntryType::from_u8(4), Some(EntryType::Encoded));
        assert_eq!(EntryType::from_u8(5), None);
    }
}
