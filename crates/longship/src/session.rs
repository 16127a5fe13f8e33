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

/// Most results a session keeps for unacknowledged series ids; beyond it the
/// oldest is forgotten (a client should not have this many in flight).
pub const MAX_RESULTS_PER_SESSION: usize = 4096;

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

    /// Registers `client_id` at `index`. Evicts the least recently used
    /// session when the table is full. Returns false if it already exists.
    pub(crate) fn register(&mut self, client_id: u64, index: Index) -> bool {
        if self.sessions.contains_key(&client_id) {
            return false;
        }
        if self.sessions.len() >= self.max_sessions
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
    pub(crate) fn check(
        &mut self,
        client_id: u64,
        series_id: u64,
        responded_to: u64,
        index: Index,
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
        } else {
            SessionCheck::Apply
        };
        self.touch(client_id, index);
        check
    }

    /// Records the result of an applied proposal.
    pub(crate) fn record(&mut self, client_id: u64, series_id: u64, result: &SmResult) {
        if let Some(rec) = self.sessions.get_mut(&client_id) {
            rec.results.insert(series_id, Some(result.clone()));
            while rec.results.len() > MAX_RESULTS_PER_SESSION {
                rec.results.pop_first();
            }
        }
    }

    /// Records that a proposal was applied but its result is unknown.
    pub(crate) fn record_lost(&mut self, client_id: u64, series_id: u64) {
        if let Some(rec) = self.sessions.get_mut(&client_id) {
            rec.results.insert(series_id, None);
            while rec.results.len() > MAX_RESULTS_PER_SESSION {
                rec.results.pop_first();
            }
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
        let n = d.count("sessions", max_sessions.max(1) as u64)?;
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
        assert!(m.register(7, Index(1)));
        assert!(!m.register(7, Index(2)));
        assert_eq!(m.check(7, 1, 0, Index(3)), SessionCheck::Apply);
        m.record(7, 1, &r(11));
        assert_eq!(
            m.check(7, 1, 0, Index(4)),
            SessionCheck::Duplicate(Some(r(11)))
        );
        assert_eq!(m.check(7, 2, 1, Index(5)), SessionCheck::Apply);
        // Series 1 was acknowledged: a late retry of it is invalid.
        assert_eq!(m.check(7, 1, 1, Index(6)), SessionCheck::Invalid);
        assert_eq!(m.check(8, 1, 0, Index(7)), SessionCheck::Invalid);
    }

    #[test]
    fn lru_eviction_is_deterministic_and_bounded() {
        let mut m = SessionManager::new(2);
        m.register(1, Index(1));
        m.register(2, Index(2));
        assert_eq!(m.check(1, 1, 0, Index(3)), SessionCheck::Apply);
        m.register(3, Index(4));
        assert_eq!(m.len(), 2);
        // Session 2 was least recently used.
        assert_eq!(m.check(2, 1, 0, Index(5)), SessionCheck::Invalid);
        assert_eq!(m.check(1, 2, 1, Index(6)), SessionCheck::Apply);
    }

    #[test]
    fn table_round_trips_and_garbage_is_rejected() {
        let mut m = SessionManager::new(5);
        m.register(1, Index(1));
        m.check(1, 1, 0, Index(2));
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
}
