//! Shard membership and single-server config changes (thesis §4.1).

use std::collections::{BTreeMap, BTreeSet};

use crate::ids::{Index, ReplicaId};

/// The kind of a single-server membership change.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ConfigChangeType {
    /// Add a voting replica, or promote a non-voting replica to voter.
    AddReplica = 0,
    /// Remove a replica of any kind. Its id can never be used again.
    RemoveReplica = 1,
    /// Add a non-voting replica (receives the log, never counted in quorums).
    AddNonVoting = 2,
    /// Add a witness (votes and persists entry metadata, holds no state).
    AddWitness = 3,
}

impl ConfigChangeType {
    /// Decodes the wire value.
    pub fn from_u8(v: u8) -> Option<ConfigChangeType> {
        match v {
            0 => Some(ConfigChangeType::AddReplica),
            1 => Some(ConfigChangeType::RemoveReplica),
            2 => Some(ConfigChangeType::AddNonVoting),
            3 => Some(ConfigChangeType::AddWitness),
            _ => None,
        }
    }
}

/// One membership change, carried in an [`EntryType::ConfigChange`](crate::EntryType) entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigChange {
    /// What to do.
    pub change_type: ConfigChangeType,
    /// The replica concerned.
    pub replica_id: ReplicaId,
    /// Its raft address (empty for removals).
    pub address: String,
    /// Ordered config change: the `config_change_id` of the membership this
    /// change was based on. 0 means "don't check" (unordered change).
    pub config_change_id: Index,
}

/// Why a config change was rejected when applied. The entry stays in the log
/// (it was committed); it simply has no effect.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigChangeRejected {
    /// Another change was applied after the one this change was based on.
    #[error("config change based on {based_on} but membership is at {current}")]
    Stale {
        /// `config_change_id` named by the change.
        based_on: Index,
        /// Current `config_change_id`.
        current: Index,
    },
    /// The replica id was removed before; removed ids are never reused.
    #[error("replica {0} was removed and cannot be added again")]
    Removed(ReplicaId),
    /// The replica is already a member in a role that cannot take this change.
    #[error("replica {0} is already a member")]
    AlreadyMember(ReplicaId),
    /// A witness or voter cannot be demoted to non-voting, a witness cannot be promoted.
    #[error("invalid role change for replica {0}")]
    InvalidRoleChange(ReplicaId),
    /// Removing this replica would leave no voter.
    #[error("cannot remove the last voter {0}")]
    LastVoter(ReplicaId),
    /// Replica id 0 is reserved.
    #[error("replica id 0 is reserved")]
    ZeroReplicaId,
}

/// The membership of a shard at some log position.
///
/// Invariant: the four sets `voters`, `non_votings`, `witnesses` and
/// `removed` are pairwise disjoint.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Membership {
    /// Index of the config change entry that produced this membership
    /// (0 for the initial membership).
    pub config_change_id: Index,
    /// Voting replicas and their addresses.
    pub voters: BTreeMap<ReplicaId, String>,
    /// Non-voting replicas and their addresses.
    pub non_votings: BTreeMap<ReplicaId, String>,
    /// Witness replicas and their addresses.
    pub witnesses: BTreeMap<ReplicaId, String>,
    /// Replicas removed for good.
    pub removed: BTreeSet<ReplicaId>,
}

impl Membership {
    /// A membership of voters only.
    pub fn with_voters<I, S>(voters: I) -> Membership
    where
        I: IntoIterator<Item = (u64, S)>,
        S: Into<String>,
    {
        Membership {
            voters: voters
                .into_iter()
                .map(|(id, a)| (ReplicaId(id), a.into()))
                .collect(),
            ..Membership::default()
        }
    }

    /// Whether `id` is a voter, non-voting replica or witness.
    pub fn contains(&self, id: ReplicaId) -> bool {
        self.voters.contains_key(&id)
            || self.non_votings.contains_key(&id)
            || self.witnesses.contains_key(&id)
    }

    /// Whether `id` is a voter.
    pub fn is_voter(&self, id: ReplicaId) -> bool {
        self.voters.contains_key(&id)
    }

    /// Whether `id` is a witness.
    pub fn is_witness(&self, id: ReplicaId) -> bool {
        self.witnesses.contains_key(&id)
    }

    /// Whether `id` is non-voting.
    pub fn is_non_voting(&self, id: ReplicaId) -> bool {
        self.non_votings.contains_key(&id)
    }

    /// Replicas whose votes and acknowledgements count: voters and witnesses.
    pub fn quorum_members(&self) -> impl Iterator<Item = ReplicaId> + '_ {
        self.voters.keys().chain(self.witnesses.keys()).copied()
    }

    /// Every member of any kind.
    pub fn all_members(&self) -> impl Iterator<Item = ReplicaId> + '_ {
        self.voters
            .keys()
            .chain(self.non_votings.keys())
            .chain(self.witnesses.keys())
            .copied()
    }

    /// Size of a majority of voters plus witnesses.
    pub fn quorum(&self) -> usize {
        (self.voters.len() + self.witnesses.len()) / 2 + 1
    }

    /// The address of a member.
    pub fn address(&self, id: ReplicaId) -> Option<&str> {
        self.voters
            .get(&id)
            .or_else(|| self.non_votings.get(&id))
            .or_else(|| self.witnesses.get(&id))
            .map(String::as_str)
    }

    /// Checks whether `cc` could be applied, without changing anything.
    pub fn check(&self, cc: &ConfigChange) -> Result<(), ConfigChangeRejected> {
        if cc.replica_id.is_none() {
            return Err(ConfigChangeRejected::ZeroReplicaId);
        }
        if cc.config_change_id != Index(0) && cc.config_change_id != self.config_change_id {
            return Err(ConfigChangeRejected::Stale {
                based_on: cc.config_change_id,
                current: self.config_change_id,
            });
        }
        let id = cc.replica_id;
        if self.removed.contains(&id) {
            return Err(ConfigChangeRejected::Removed(id));
        }
        match cc.change_type {
            ConfigChangeType::AddReplica => {
                if self.voters.contains_key(&id) {
                    return Err(ConfigChangeRejected::AlreadyMember(id));
                }
                if self.witnesses.contains_key(&id) {
                    return Err(ConfigChangeRejected::InvalidRoleChange(id));
                }
            }
            ConfigChangeType::AddNonVoting => {
                if self.non_votings.contains_key(&id) {
                    return Err(ConfigChangeRejected::AlreadyMember(id));
                }
                if self.contains(id) {
                    return Err(ConfigChangeRejected::InvalidRoleChange(id));
                }
            }
            ConfigChangeType::AddWitness => {
                if self.witnesses.contains_key(&id) {
                    return Err(ConfigChangeRejected::AlreadyMember(id));
                }
                if self.contains(id) {
                    return Err(ConfigChangeRejected::InvalidRoleChange(id));
                }
            }
            ConfigChangeType::RemoveReplica => {
                if self.voters.len() == 1 && self.voters.contains_key(&id) {
                    return Err(ConfigChangeRejected::LastVoter(id));
                }
            }
        }
        Ok(())
    }

    /// Applies `cc`, carried by the entry at `index`, or explains why it is
    /// rejected (in which case nothing changes).
    pub fn apply(&mut self, cc: &ConfigChange, index: Index) -> Result<(), ConfigChangeRejected> {
        self.check(cc)?;
        let id = cc.replica_id;
        match cc.change_type {
            ConfigChangeType::AddReplica => {
                // Promotion of a non-voting replica keeps its address unless a new one is given.
                let old = self.non_votings.remove(&id);
                let addr = if cc.address.is_empty() {
                    old.unwrap_or_default()
                } else {
                    cc.address.clone()
                };
                self.voters.insert(id, addr);
            }
            ConfigChangeType::AddNonVoting => {
                self.non_votings.insert(id, cc.address.clone());
            }
            ConfigChangeType::AddWitness => {
                self.witnesses.insert(id, cc.address.clone());
            }
            ConfigChangeType::RemoveReplica => {
                self.voters.remove(&id);
                self.non_votings.remove(&id);
                self.witnesses.remove(&id);
                self.removed.insert(id);
            }
        }
        self.config_change_id = index;
        debug_assert!(self.is_consistent());
        Ok(())
    }

    /// The disjointness invariant.
    pub fn is_consistent(&self) -> bool {
        let mut seen = BTreeSet::new();
        self.all_members().all(|id| seen.insert(id))
            && self.removed.iter().all(|id| !seen.contains(id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn add(t: ConfigChangeType, id: u64, based_on: u64) -> ConfigChange {
        ConfigChange {
            change_type: t,
            replica_id: ReplicaId(id),
            address: format!("a{id}"),
            config_change_id: Index(based_on),
        }
    }

    // Thesis §4.1: one server at a time, ordered.
    #[test]
    fn ordered_change_rejects_stale_base() {
        let mut m = Membership::with_voters([(1, "a1")]);
        m.apply(&add(ConfigChangeType::AddReplica, 2, 0), Index(5))
            .unwrap();
        assert_eq!(m.config_change_id, Index(5));
        let err = m.apply(&add(ConfigChangeType::AddReplica, 3, 4), Index(6));
        assert!(matches!(err, Err(ConfigChangeRejected::Stale { .. })));
        m.apply(&add(ConfigChangeType::AddReplica, 3, 5), Index(7))
            .unwrap();
        assert_eq!(m.voters.len(), 3);
    }

    #[test]
    fn removed_ids_never_return() {
        let mut m = Membership::with_voters([(1, "a1"), (2, "a2")]);
        m.apply(&add(ConfigChangeType::RemoveReplica, 2, 0), Index(3))
            .unwrap();
        for t in [
            ConfigChangeType::AddReplica,
            ConfigChangeType::AddNonVoting,
            ConfigChangeType::AddWitness,
        ] {
            assert_eq!(
                m.apply(&add(t, 2, 0), Index(4)),
                Err(ConfigChangeRejected::Removed(ReplicaId(2)))
            );
        }
        assert_eq!(m.config_change_id, Index(3));
    }

    #[test]
    fn promotion_moves_non_voting_to_voters() {
        let mut m = Membership::with_voters([(1, "a1")]);
        m.apply(&add(ConfigChangeType::AddNonVoting, 2, 0), Index(2))
            .unwrap();
        assert_eq!(m.quorum(), 1);
        m.apply(
            &ConfigChange {
                change_type: ConfigChangeType::AddReplica,
                replica_id: ReplicaId(2),
                address: String::new(),
                config_change_id: Index(0),
            },
            Index(3),
        )
        .unwrap();
        assert!(m.is_voter(ReplicaId(2)));
        assert_eq!(m.address(ReplicaId(2)), Some("a2"));
        assert!(!m.is_non_voting(ReplicaId(2)));
        assert_eq!(m.quorum(), 2);
    }

    #[test]
    fn witness_counts_in_quorum_and_cannot_be_promoted() {
        let mut m = Membership::with_voters([(1, "a1"), (2, "a2")]);
        m.apply(&add(ConfigChangeType::AddWitness, 3, 0), Index(2))
            .unwrap();
        assert_eq!(m.quorum(), 2);
        assert_eq!(
            m.apply(&add(ConfigChangeType::AddReplica, 3, 0), Index(3)),
            Err(ConfigChangeRejected::InvalidRoleChange(ReplicaId(3)))
        );
    }

    #[test]
    fn last_voter_cannot_be_removed() {
        let mut m = Membership::with_voters([(1, "a1")]);
        assert_eq!(
            m.apply(&add(ConfigChangeType::RemoveReplica, 1, 0), Index(2)),
            Err(ConfigChangeRejected::LastVoter(ReplicaId(1)))
        );
    }
}
