//! Bootstrapping a new shard: its initial membership is written into the log.
//!
//! Every initial member of a new shard writes the same entries (term 1,
//! indexes `1..=n`, one config change per member) and a hard state that
//! commits them, before it first starts. The log is then self-describing: a
//! replica that joins later learns the whole membership history by
//! replicating the log (or a snapshot), and applying the same committed
//! config changes in the same order gives every replica the same membership.

use crate::codec::encode_config_change;
use crate::entry::{Entry, EntryType, HardState};
use crate::ids::{Index, ReplicaId, Term};
use crate::membership::{ConfigChange, ConfigChangeType, Membership};

/// The entries and hard state that bootstrap a new shard with `initial`
/// members (voters, non-voting replicas and witnesses; ids ascending).
pub fn bootstrap_entries(initial: &Membership) -> (Vec<Entry>, HardState) {
    let mut changes: Vec<(ReplicaId, ConfigChangeType, &String)> = Vec::new();
    changes.extend(
        initial
            .voters
            .iter()
            .map(|(id, a)| (*id, ConfigChangeType::AddReplica, a)),
    );
    changes.extend(
        initial
            .non_votings
            .iter()
            .map(|(id, a)| (*id, ConfigChangeType::AddNonVoting, a)),
    );
    changes.extend(
        initial
            .witnesses
            .iter()
            .map(|(id, a)| (*id, ConfigChangeType::AddWitness, a)),
    );
    let entries: Vec<Entry> = changes
        .into_iter()
        .enumerate()
        .map(|(i, (replica_id, change_type, address))| Entry {
            term: Term(1),
            index: Index(i as u64 + 1),
            entry_type: EntryType::ConfigChange,
            cmd: encode_config_change(&ConfigChange {
                change_type,
                replica_id,
                address: address.clone(),
                config_change_id: Index(0),
            })
            .into(),
            ..Entry::default()
        })
        .collect();
    let hs = HardState {
        term: Term(1),
        vote: ReplicaId::NONE,
        commit: Index(entries.len() as u64),
    };
    (entries, hs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::decode_config_change;

    #[test]
    fn replaying_bootstrap_entries_rebuilds_the_membership() {
        let mut initial = Membership::with_voters([(1, "a"), (2, "b")]);
        initial.witnesses.insert(ReplicaId(5), "w".into());
        let (ents, hs) = bootstrap_entries(&initial);
        assert_eq!(hs.commit, Index(3));
        let mut m = Membership::default();
        for e in &ents {
            m.apply(&decode_config_change(&e.cmd).unwrap(), e.index)
                .unwrap();
        }
        assert_eq!(m.voters, initial.voters);
        assert_eq!(m.witnesses, initial.witnesses);
        assert_eq!(m.config_change_id, Index(3));
    }
}
