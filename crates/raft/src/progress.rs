//! What a leader knows of each follower's log, and the flow control of
//! replication to it (pipelining with a bounded in-flight window).

use std::collections::VecDeque;

use crate::ids::Index;

/// How the leader currently replicates to a follower.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgressState {
    /// The follower's log position is unknown: send one append at a time
    /// and wait for an answer (or a heartbeat response) before the next.
    Probe,
    /// The follower's log matches up to `match_index`: pipeline appends,
    /// advancing `next` optimistically, bounded by the in-flight window.
    Replicate,
    /// The follower needs a snapshot; nothing else is sent until the
    /// snapshot is reported finished or failed.
    Snapshot,
}

/// The bounded window of `Replicate` messages in flight to one follower.
///
/// Invariant: `count() <= max_count`, `bytes <= max_bytes` except that one
/// message is always admitted into an empty window; indexes are increasing.
#[derive(Clone, Debug)]
pub struct Inflights {
    /// (last index of the message, entry bytes in it)
    window: VecDeque<(Index, u64)>,
    bytes: u64,
    max_count: usize,
    max_bytes: u64,
}

impl Inflights {
    /// An empty window with the given bounds.
    pub fn new(max_count: usize, max_bytes: u64) -> Inflights {
        Inflights {
            window: VecDeque::new(),
            bytes: 0,
            max_count,
            max_bytes,
        }
    }

    /// Whether no more messages may be sent.
    pub fn full(&self) -> bool {
        self.window.len() >= self.max_count
            || (!self.window.is_empty() && self.bytes >= self.max_bytes)
    }

    /// Records a message whose last entry is `last` carrying `bytes`.
    pub fn add(&mut self, last: Index, bytes: u64) {
        assert!(!self.full(), "inflight window overflow");
        if let Some(&(prev, _)) = self.window.back() {
            assert!(
                last > prev,
                "inflight indexes must increase: {prev} then {last}"
            );
        }
        self.window.push_back((last, bytes));
        self.bytes += bytes;
    }

    /// Frees every message whose last index is `<= index`.
    pub fn free_le(&mut self, index: Index) {
        while let Some(&(last, bytes)) = self.window.front() {
            if last > index {
                break;
            }
            self.window.pop_front();
            self.bytes -= bytes;
        }
    }

    /// Frees the oldest message (a heartbeat answered while the window
    /// was full: the messages in it may have been lost).
    pub fn free_first_one(&mut self) {
        if let Some((_, bytes)) = self.window.pop_front() {
            self.bytes -= bytes;
        }
    }

    /// Frees everything.
    pub fn reset(&mut self) {
        self.window.clear();
        self.bytes = 0;
    }

    /// Messages in flight.
    pub fn count(&self) -> usize {
        self.window.len()
    }

    /// Entry bytes in flight.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

/// The leader's view of one replica.
///
/// Invariant: `match_index < next_index`.
#[derive(Clone, Debug)]
pub struct Progress {
    /// Highest index known to be replicated on the replica.
    pub match_index: Index,
    /// Next index to send.
    pub next_index: Index,
    /// Replication mode.
    pub state: ProgressState,
    /// In `Snapshot` state: the index of the snapshot being sent.
    pub pending_snapshot: Index,
    /// In `Probe` state: an append was sent and not yet answered.
    pub probe_sent: bool,
    /// Heard from since the last CheckQuorum round.
    pub recent_active: bool,
    /// The leader's tick count when it sent the newest heartbeat this
    /// replica answered (0: none): the start of the replica's lease.
    pub heartbeat_acked_at: u64,
    /// In-flight window.
    pub inflights: Inflights,
}

impl Progress {
    /// Progress of a replica whose log is unknown, probing from `next`.
    pub fn new(next: Index, max_inflight_msgs: usize, max_inflight_bytes: u64) -> Progress {
        Progress {
            match_index: Index(0),
            next_index: next,
            state: ProgressState::Probe,
            pending_snapshot: Index(0),
            probe_sent: false,
            recent_active: false,
            heartbeat_acked_at: 0,
            inflights: Inflights::new(max_inflight_msgs, max_inflight_bytes),
        }
    }

    fn reset_state(&mut self, state: ProgressState) {
        self.probe_sent = false;
        self.pending_snapshot = Index(0);
        self.state = state;
        self.inflights.reset();
    }

    /// Switches to probing. After a snapshot, probing starts after it.
    pub fn become_probe(&mut self) {
        let after_snapshot = self.pending_snapshot;
        let from_snapshot = self.state == ProgressState::Snapshot;
        self.reset_state(ProgressState::Probe);
        self.next_index = if from_snapshot {
            self.match_index.next().max(after_snapshot.next())
        } else {
            self.match_index.next()
        };
    }

    /// The follower lost every entry after `last` (its storage was
    /// damaged; it runs under a recovery guard): the match index drops to
    /// `last` and replication starts again with a probe there.
    pub fn forget_match_after(&mut self, last: Index) {
        self.match_index = self.match_index.min(last);
        self.reset_state(ProgressState::Probe);
        self.next_index = self.match_index.next();
    }

    /// Switches to pipelined replication.
    pub fn become_replicate(&mut self) {
        self.reset_state(ProgressState::Replicate);
        self.next_index = self.match_index.next();
    }

    /// Switches to sending a snapshot at `index`.
    pub fn become_snapshot(&mut self, index: Index) {
        self.reset_state(ProgressState::Snapshot);
        self.pending_snapshot = index;
    }

    /// The replica acknowledged `n`. Returns whether `match_index` advanced.
    pub fn maybe_update(&mut self, n: Index) -> bool {
        let updated = self.match_index < n;
        if updated {
            self.match_index = n;
            self.probe_sent = false;
        }
        if self.next_index <= n {
            self.next_index = n.next();
        }
        updated
    }

    /// Optimistically advances `next_index` after sending up to `last` (Replicate state).
    pub fn optimistic_update(&mut self, last: Index) {
        self.next_index = last.next();
    }

    /// The replica rejected an append at `rejected`; `hint` is the index the
    /// leader found to retry from (fast backtracking). Returns false if the
    /// rejection is stale (answers an older append) and must be ignored.
    pub fn maybe_decr_to(&mut self, rejected: Index, hint: Index) -> bool {
        if self.state == ProgressState::Replicate {
            // Raft §5.3: a rejection of something already matched is stale.
            if rejected <= self.match_index {
                return false;
            }
            self.next_index = self.match_index.next();
            return true;
        }
        // Probe: only the answer to the last probe counts.
        if self.next_index.prev() != rejected {
            return false;
        }
        self.next_index = hint.next().min(rejected).max(self.match_index.next());
        self.probe_sent = false;
        true
    }

    /// Whether the leader must not send more appends now.
    pub fn is_paused(&self) -> bool {
        match self.state {
            ProgressState::Probe => self.probe_sent,
            ProgressState::Replicate => self.inflights.full(),
            ProgressState::Snapshot => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Raft §5.3: stale rejections are ignored, fresh ones move next back.
    #[test]
    fn stale_rejection_in_replicate_is_ignored() {
        let mut p = Progress::new(Index(6), 8, 1 << 20);
        p.maybe_update(Index(5));
        p.become_replicate();
        p.optimistic_update(Index(9));
        assert!(!p.maybe_decr_to(Index(4), Index(4)));
        assert_eq!(p.next_index, Index(10));
        assert!(p.maybe_decr_to(Index(7), Index(7)));
        assert_eq!(p.next_index, Index(6));
    }

    #[test]
    fn probe_uses_hint_and_answers_only_last_probe() {
        let mut p = Progress::new(Index(11), 8, 1 << 20);
        p.probe_sent = true;
        assert!(!p.maybe_decr_to(Index(5), Index(2)));
        assert!(p.maybe_decr_to(Index(10), Index(3)));
        assert_eq!(p.next_index, Index(4));
        assert!(!p.probe_sent);
    }

    #[test]
    fn inflights_bound_count_and_bytes() {
        let mut f = Inflights::new(3, 100);
        f.add(Index(1), 10);
        f.add(Index(2), 10);
        assert!(!f.full());
        f.add(Index(3), 10);
        assert!(f.full());
        f.free_le(Index(2));
        assert_eq!(f.count(), 1);
        assert!(!f.full());
        f.add(Index(4), 200);
        assert!(f.full(), "byte bound");
        f.reset();
        assert_eq!(f.bytes(), 0);
    }

    #[test]
    fn probe_after_snapshot_starts_past_it() {
        let mut p = Progress::new(Index(2), 8, 1 << 20);
        p.become_snapshot(Index(20));
        assert!(p.is_paused());
        p.become_probe();
        assert_eq!(p.next_index, Index(21));
    }
}
