//! Client sessions (thesis §6.3): at-most-once application of retried
//! proposals.
//!
//! A client registers a session (a proposal that creates it in the state
//! machine layer of every replica), then tags each proposal with the next
//! series id and the highest series id whose response it has received. The
//! replicated session table remembers the result of every applied series id
//! that was not yet acknowledged, so a retried proposal gets the first
//! result instead of being applied again.

use std::collections::BTreeMap;

use longship_raft::codec::{DecodeError, Decoder, put_bytes, put_uvarint};
use longship_raft::{
    CLIENT_ID_NOOP, Index, SERIES_ID_NOOP, SERIES_ID_REGISTER, SERIES_ID_UNREGISTER, ShardId,
};

use crate::sm::SmResult;

/// A client's session with one shard. Obtain one with
/// `NodeHost::sync_get_session` (de-duplicating) or
/// `NodeHost::get_noop_session` (no de-duplication).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    /// The shard the session belongs to.
    pub shard_id: ShardId,
    /// The client id (0 for the no-op session).
    pub client_id: u64,
    /// Series id of the next proposal.
    pub series_id: u64,
    /// Every series id up to this one was answered to the client.
    pub responded_to: u64,
}

impl Session {
    /// A session that does not de-duplicate (for idempotent state machines).
    pub fn noop(shard_id: ShardId) -> Session {
        Session {
            shard_id,
            client_id: CLIENT_ID_NOOP,
            series_id: SERIES_ID_NOOP,
            responded_to: 0,
        }
    }

    /// A new de-duplicating session with the given random client id, before registration.
    pub(crate) fn new(shard_id: ShardId, client_id: u64) -> Session {
        Session {
            shard_id,
            client_id,
            series_id: SERIES_ID_REGISTER,
            responded_to: 0,
        }
    }

    /// Whether this is a no-op session.
    pub fn is_noop(&self) -> bool {
        self.client_id == CLIENT_ID_NOOP
    }

    /// Records that the current proposal completed: the next proposal uses
    /// the next series id. Call it after a proposal made with
    /// `NodeHost::propose` completed (`sync_propose` does it for you).
    /// Do not call it after a timeout: retry with the same series id.
    pub fn proposal_completed(&mut self) {
        if self.is_noop() {
            return;
        }
        self.responded_to = self.series_id;
        self.series_id += 1;
    }

    pub(crate) fn prepare_for_register(&mut self) {
        self.series_id = SERIES_ID_REGISTER;
    }

    pub(crate) fn prepare_for_unregister(&mut self) {
        self.series_id = SERIES_ID_UNREGISTER;
    }

    pub(crate) fn prepare_for_propose(&mut self) {
        self.series_id = 1;
        self.responded_to = 0;
    }

    /// Whether the session may be used for a normal proposal.
    pub(crate) fn valid_for_proposal(&self, shard_id: ShardId) -> bool {
        self.shard_id == shard_id
            && (self.is_noop()
                || (self.series_id != SERIES_ID_REGISTER && self.series_id != SERIES_ID_UNREGISTER))
    }
}

/// Most results a session keeps for unacknowledged series ids. A proposal
/// that would need one more is refused (`Error::InvalidSession`) rather
/// than applied: forgetting the oldest result would let a retry of that
/// series be applied a second time. A client acknowledges results by
/// moving its `responded_to` forward (every proposal carries it).
pub const MAX_RESULTS_PER_SESSION: usize = 4096;

/// Largest `Config::max_sessions` (and most sessions a snapshot may hold).
pub const MAX_SESSIONS_CAP: usize = 1 << 20;

/// The command of a session registration entry: the session table bound of
/// the registering replica, which every replica applies (a bound set per
/// replica would let differently configured replicas evict different
/// sessions and diverge).
pub(crate) fn register_cmd(max_sessions: usize) -> bytes::Bytes {
    bytes::Bytes::copy_from_slice(&(max_sessions as u64).to_le_bytes())
}

/// The bound a registration entry carries (entries written before it was
/// carried have none: the local bound applies, as it did then).
pub(crate) fn register_bound(cmd: &[u8], local: usize) -> usize {
    match <[u8; 8]>::try_from(cmd) {
        Ok(b) => (u64::from_le_bytes(b).min(MAX_SESSIONS_CAP as u64) as usize).max(1),
        Err(_) => local,
    }
}

/// What the replicated session table says about one proposal.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum SessionCheck {
    /// Apply it.
    Apply,
    /// Already applied: answer with this result (`None`: applied, result
    /// unknown), do not apply again.
    Duplicate(Option<SmResult>),
    /// The session is unknown, or the series id was already acknowledged and forgotten.
    Invalid,
    /// The session already keeps [`MAX_RESULTS_PER_SESSION`] unacknowledged
    /// results: refused, not applied.
    TooManyPending,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct SessionRecord {
    responded_to: u64,
    /// Log index of the last proposal of this session (LRU order).
    last_used: Index,
    /// Result of each applied, unacknowledged series id; `None` when the
    /// entry was applied but its result is unknown (an on-disk state machine
    /// skipped it after a restart).
    results: BTreeMap<u64, Option<SmResult>>,
}

/// The replicated session table of a shard. Changed only by applying log
/// entries, so every replica holds the same table at the same index.
///
/// Invariant: `lru` holds exactly one `(last_used, client_id)` per session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SessionManager {
    max_sessions: usize,
    sessions: BTreeMap<u64, SessionRecord>,
    lru: BTreeMap<(Index, u64), ()>,
}

const SESSIONS_FORMAT_VERSION: u64 = 1;

impl SessionManager {
    pub(crate) fn new(max_sessions: usize) -> SessionManager {
        SessionManager {
            max_sessions: max_sessions.max(1),
            sessions: BTreeMap::new(),
            lru: BTreeMap::new(),
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.sessions.len()
    }

    fn touch(&mut self, client_id: u64, index: Index) {
        if let Some(rec) = self.sessions.get_mut(&client_id) {
            self.lru.remove(&(rec.last_used, client_id));
            rec.last_used = index;
            self.lru.insert((index, client_id), ());
        }
    }

    /// Registers `client_id` at `index`. Evicts least recently used
    /// sessions while the table holds `bound` or more (the bound from the
    /// registration entry). Returns false if it already exists.
    pub(crate) fn register(&mut self, client_id: u64, index: Index, bound: usize) -> bool {
        if self.sessions.contains_key(&client_id) {
            return false;
        }
        while self.sessions.len() >= bound.max(1)
            && let Some((&(_, victim), _)) = self.lru.iter().next()
        {
            self.unregister(victim);
        }
        self.sessions.insert(
            client_id,
            SessionRecord {
                last_used: index,
                ..SessionRecord::default()
            },
        );
        self.lru.insert((index, client_id), ());
        true
    }

    /// Removes a session. Returns false if it did not exist.
    pub(crate) fn unregister(&mut self, client_id: u64) -> bool {
        match self.sessions.remove(&client_id) {
            Some(rec) => {
                self.lru.remove(&(rec.last_used, client_id));
                true
            }
            None => false,
        }
    }

    /// Checks a proposal of (`client_id`, `series_id`) that says the client
    /// has every response up to `responded_to`; evicts those responses.
    /// `in_flight`: proposals of this client already accepted for the batch
    /// being applied, whose results are not recorded yet.
    pub(crate) fn check(
        &mut self,
        client_id: u64,
        series_id: u64,
        responded_to: u64,
        index: Index,
        in_flight: usize,
    ) -> SessionCheck {
        let Some(rec) = self.sessions.get_mut(&client_id) else {
            return SessionCheck::Invalid;
        };
        if responded_to > rec.responded_to {
            rec.responded_to = responded_to;
            // Responded-to results are never asked for again (thesis §6.3).
            rec.results = rec.results.split_off(&(responded_to + 1));
        }
        let check = if let Some(r) = rec.results.get(&series_id) {
            SessionCheck::Duplicate(r.clone())
        } else if series_id <= rec.responded_to {
            SessionCheck::Invalid
        } else if rec.results.len() + in_flight >= MAX_RESULTS_PER_SESSION {
            SessionCheck::TooManyPending
        } else {
            SessionCheck::Apply
        };
        self.touch(client_id, index);
        check
    }

    /// Records the result of an applied proposal.
    pub(crate) fn record(&mut self, client_id: u64, series_id: u64, result: &SmResult) {
        if let Some(rec) = self.sessions.get_mut(&client_id) {
            // Bounded by `check`, which refuses what would pass the bound.
            rec.results.insert(series_id, Some(result.clone()));
        }
    }

    /// Records that a proposal was applied but its result is unknown.
    pub(crate) fn record_lost(&mut self, client_id: u64, series_id: u64) {
        if let Some(rec) = self.sessions.get_mut(&client_id) {
            rec.results.insert(series_id, None);
        }
    }

    /// Encodes the table (part of every snapshot).
    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        put_uvarint(out, SESSIONS_FORMAT_VERSION);
        put_uvarint(out, self.sessions.len() as u64);
        for (client_id, rec) in &self.sessions {
            put_uvarint(out, *client_id);
            put_uvarint(out, rec.responded_to);
            put_uvarint(out, rec.last_used.0);
            put_uvarint(out, rec.results.len() as u64);
            for (series, r) in &rec.results {
                put_uvarint(out, *series);
                match r {
                    Some(r) => {
                        out.push(1);
                        put_uvarint(out, r.value);
                        put_bytes(out, &r.data);
                    }
                    None => out.push(0),
                }
            }
        }
    }

    /// Decodes a table written by `encode` (untrusted: bounded, never panics).
    pub(crate) fn decode(
        d: &mut Decoder<'_>,
        max_sessions: usize,
    ) -> Result<SessionManager, DecodeError> {
        let version = d.uvarint()?;
        if version != SESSIONS_FORMAT_VERSION {
            return Err(DecodeError::UnsupportedVersion(
                version.min(u32::MAX as u64) as u32,
            ));
        }
        let mut m = SessionManager::new(max_sessions);
        let n = d.count("sessions", MAX_SESSIONS_CAP as u64)?;
        for _ in 0..n {
            let client_id = d.uvarint()?;
            let responded_to = d.uvarint()?;
            let last_used = Index(d.uvarint()?);
            let nres = d.count("session results", MAX_RESULTS_PER_SESSION as u64)?;
            let mut results = BTreeMap::new();
            for _ in 0..nres {
                let series = d.uvarint()?;
                let result = match d.u8()? {
                    0 => None,
                    1 => {
                        let value = d.uvarint()?;
                        let data = d
                            .bytes_named("session result", d.limits().max_payload_bytes)?
                            .to_vec();
                        Some(SmResult { value, data })
                    }
                    _ => return Err(DecodeError::Invalid("session result flag")),
                };
                results.insert(series, result);
            }
            if m.sessions.contains_key(&client_id) {
                return Err(DecodeError::Invalid("duplicate session"));
            }
            m.lru.insert((last_used, client_id), ());
            m.sessions.insert(
                client_id,
                SessionRecord {
                    responded_to,
                    last_used,
                    results,
                },
            );
        }
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use longship_raft::codec::Limits;

    fn r(v: u64) -> SmResult {
        SmResult {
            value: v,
            data: vec![],
        }
    }

    // Thesis §6.3: a retried series id is not applied twice and returns the first result.
    #[test]
    fn duplicate_returns_first_result_and_responded_are_evicted() {
        let mut m = SessionManager::new(10);
        assert!(m.register(7, Index(1), 10));
        assert!(!m.register(7, Index(2), 10));
        assert_eq!(m.check(7, 1, 0, Index(3), 0), SessionCheck::Apply);
        m.record(7, 1, &r(11));
        assert_eq!(
            m.check(7, 1, 0, Index(4), 0),
            SessionCheck::Duplicate(Some(r(11)))
        );
        assert_eq!(m.check(7, 2, 1, Index(5), 0), SessionCheck::Apply);
        // Series 1 was acknowledged: a late retry of it is invalid.
        assert_eq!(m.check(7, 1, 1, Index(6), 0), SessionCheck::Invalid);
        assert_eq!(m.check(8, 1, 0, Index(7), 0), SessionCheck::Invalid);
    }

    // The bound in force is the one the registration entry carries, not
    // the table's own: replicas configured differently evict alike.
    #[test]
    fn the_registration_entry_s_bound_decides_eviction() {
        let mut a = SessionManager::new(1000);
        let mut b = SessionManager::new(3);
        for (client, index) in [(1, 1), (2, 2), (3, 3), (4, 4)] {
            let bound = register_bound(&register_cmd(2), 1000);
            a.register(client, Index(index), bound);
            b.register(client, Index(index), register_bound(&register_cmd(2), 3));
        }
        assert_eq!(
            a,
            SessionManager {
                max_sessions: 1000,
                ..b.clone()
            }
        );
        assert_eq!(a.len(), 2);
        // An old registration without a bound uses the local one.
        assert_eq!(register_bound(b"", 7), 7);
        assert_eq!(register_bound(&u64::MAX.to_le_bytes(), 7), MAX_SESSIONS_CAP);
    }

    #[test]
    fn lru_eviction_is_deterministic_and_bounded() {
        let mut m = SessionManager::new(2);
        m.register(1, Index(1), 2);
        m.register(2, Index(2), 2);
        assert_eq!(m.check(1, 1, 0, Index(3), 0), SessionCheck::Apply);
        m.register(3, Index(4), 2);
        assert_eq!(m.len(), 2);
        // Session 2 was least recently used.
        assert_eq!(m.check(2, 1, 0, Index(5), 0), SessionCheck::Invalid);
        assert_eq!(m.check(1, 2, 1, Index(6), 0), SessionCheck::Apply);
    }

    #[test]
    fn table_round_trips_and_garbage_is_rejected() {
        let mut m = SessionManager::new(5);
        m.register(1, Index(1), 5);
        m.check(1, 1, 0, Index(2), 0);
        m.record(
            1,
            1,
            &SmResult {
                value: 3,
                data: b"x".to_vec(),
            },
        );
        let mut buf = Vec::new();
        m.encode(&mut buf);
        let mut d = Decoder::new(&buf, Limits::default());
        let back = SessionManager::decode(&mut d, 5).unwrap();
        assert_eq!(back, m);
        for cut in 0..buf.len() {
            let mut d = Decoder::new(&buf[..cut], Limits::default());
            assert!(SessionManager::decode(&mut d, 5).is_err());
        }
    }

    #[test]
    fn a_session_full_of_unacknowledged_results_refuses_instead_of_forgetting() {
        let mut m = SessionManager::new(4);
        assert!(m.register(7, Index(1), 4));
        let r = SmResult {
            value: 1,
            data: vec![],
        };
        for series in 1..=MAX_RESULTS_PER_SESSION as u64 {
            assert_eq!(
                m.check(7, series, 0, Index(1 + series), 0),
                SessionCheck::Apply
            );
            m.record(7, series, &r);
        }
        let next = MAX_RESULTS_PER_SESSION as u64 + 1;
        assert_eq!(
            m.check(7, next, 0, Index(next + 1), 0),
            SessionCheck::TooManyPending
        );
        // The oldest result is still there: its retry is a duplicate, not
        // applied again.
        assert_eq!(
            m.check(7, 1, 0, Index(next + 2), 0),
            SessionCheck::Duplicate(Some(r.clone()))
        );
        // Results batched but not yet recorded count too.
        let mut m2 = SessionManager::new(4);
        m2.register(8, Index(1), 4);
        assert_eq!(
            m2.check(8, 1, 0, Index(2), MAX_RESULTS_PER_SESSION),
            SessionCheck::TooManyPending
        );
        // Acknowledging frees room.
        assert_eq!(
            m.check(7, next, 10, Index(next + 3), 0),
            SessionCheck::Apply
        );
    }
}
