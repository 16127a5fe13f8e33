//! Checking that replicas agree: their state machines' hashes
//! ([`StateMachine::hash`](crate::StateMachine::hash), dragonboat's
//! `GetHash`) compared at one applied index.

use std::time::{Duration, Instant};

use longship_raft::{Index, ShardId};

use crate::error::{Error, Result};
use crate::nodehost::NodeHost;

impl NodeHost {
    /// The applied index of the local replica of `shard` and its state
    /// machine's hash there, read together (under the replica's apply
    /// lock, so no entry is applied in between). `None` when the state
    /// machine offers no hash.
    pub fn state_hash(&self, shard: ShardId) -> Result<Option<(Index, u64)>> {
        let r = self
            .host
            .replica(shard)
            .ok_or(Error::ShardNotFound(shard))?;
        if r.config.is_witness {
            return Err(Error::Witness(shard));
        }
        let _applying = crate::engine::ApplyLock::lock(&self.host, &r);
        let index = r.rsm.applied().index;
        Ok(r.rsm.sm.hash().map(|h| (index, h)))
    }

    /// Compares the state of `shard` on `hosts` (NodeHosts of this process,
    /// each running a replica of it that holds data): waits up to `timeout`
    /// until every replica has applied the same index, then compares their
    /// state machines' hashes there. Returns that index when all agree,
    /// [`Error::StateDiverged`] when they do not. A shard that keeps taking
    /// writes may never rest at one index on every host: then
    /// [`Error::Timeout`]. A state machine without a hash is refused
    /// ([`Error::Rejected`]).
    pub fn verify(hosts: &[&NodeHost], shard: ShardId, timeout: Duration) -> Result<Index> {
        if hosts.is_empty() {
            return Err(Error::invalid_config("hosts", "must not be empty"));
        }
        let deadline = Instant::now() + timeout;
        let pause = Duration::from_millis(hosts[0].config().rtt_ms.clamp(1, 10));
        loop {
            let mut seen = Vec::with_capacity(hosts.len());
            for nh in hosts {
                match nh.state_hash(shard)? {
                    Some((index, hash)) => seen.push((nh.raft_address().to_string(), index, hash)),
                    None => {
                        return Err(Error::Rejected(format!(
                            "the state machine of shard {shard} on {} offers no hash \
                             (StateMachine::hash)",
                            nh.raft_address()
                        )));
                    }
                }
            }
            let index = seen[0].1;
            if index > Index(0) && seen.iter().all(|(_, i, _)| *i == index) {
                if seen.iter().all(|(_, _, h)| *h == seen[0].2) {
                    return Ok(index);
                }
                return Err(Error::StateDiverged {
                    shard_id: shard,
                    index,
                    hashes: seen.into_iter().map(|(a, _, h)| (a, h)).collect(),
                });
            }
            if Instant::now() >= deadline {
                return Err(Error::Timeout);
            }
            std::thread::sleep(pause);
        }
    }
}
