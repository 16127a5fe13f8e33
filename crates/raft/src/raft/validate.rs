//! Messages a correct peer cannot have sent are dropped, never acted on.
//!
//! The codec guarantees a message is well formed byte by byte; these checks
//! cover what only the protocol knows: an append whose entries do not follow
//! its previous index, terms from the future, a response acknowledging
//! entries the leader never had. Acting on such a message would corrupt the
//! log or trip an invariant assertion (and a panicking step worker would take
//! every shard it drives down with it), so the core drops it, counts it, and
//! keeps the reason for the engine to log. Peers are not trusted to be bug
//! free: a replica restarted on a wiped disk with its old id, a corrupted
//! frame that passed its checksum, or a buggy build all look like this.

use super::{Raft, Role};
use crate::log_reader::LogReader;
use crate::message::{Message, MessageType};

/// Why a message was dropped as invalid.
pub type InvalidReason = &'static str;

impl<L: LogReader> Raft<L> {
    /// Checks what can be checked of `m` alone, before it changes any state.
    pub(super) fn check_message(&self, m: &Message) -> Result<(), InvalidReason> {
        use MessageType::*;
        let needs_term = matches!(
            m.msg_type,
            RequestVote
                | RequestVoteResp
                | RequestPreVote
                | RequestPreVoteResp
                | Replicate
                | ReplicateResp
                | Heartbeat
                | HeartbeatResp
                | InstallSnapshot
                | ReadIndexResp
                | TimeoutNow
        );
        if needs_term && m.term.0 == 0 {
            return Err("protocol message without a term");
        }
        match m.msg_type {
            Replicate => check_append(m),
            InstallSnapshot => match &m.snapshot {
                None => Err("snapshot message without a snapshot"),
                Some(s) if s.is_empty() => Err("snapshot at index 0"),
                Some(s) if s.term > m.term => Err("snapshot term ahead of the sender's term"),
                Some(_) => Ok(()),
            },
            _ => Ok(()),
        }
    }

    /// A leader's checks of an answer in its own term (answers from older
    /// terms were dropped before; a leader of a term is one life of one
    /// replica, so the answer's claims are bounded by the leader's state).
    pub(super) fn check_answer(&self, m: &Message) -> Result<(), InvalidReason> {
        debug_assert!(self.role == Role::Leader);
        match m.msg_type {
            MessageType::ReplicateResp if !m.reject && m.log_index > self.log.last_index() => {
                Err("acknowledges entries past the leader's last index")
            }
            // Echoes the tick at which we sent the heartbeat.
            MessageType::HeartbeatResp if m.log_index.0 > self.ticks => {
                Err("heartbeat answer from a future tick")
            }
            _ => Ok(()),
        }
    }

    /// Counts and records a dropped message.
    pub(super) fn drop_invalid(&mut self, m: &Message, reason: InvalidReason) {
        self.invalid_messages += 1;
        self.last_invalid = Some((m.from, m.msg_type, reason));
    }
}

/// Raft §5.3: the entries of an append follow its previous index one by
/// one, with terms that never decrease, start at or after the previous
/// entry's term, and are not newer than the leader's term.
fn check_append(m: &Message) -> Result<(), InvalidReason> {
    if m.log_term > m.term {
        return Err("append's previous term ahead of the sender's term");
    }
    let mut expected = m.log_index.0;
    let mut prev_term = m.log_term;
    for e in &m.entries {
        expected = expected.checked_add(1).ok_or("append's indexes overflow")?;
        if e.index.0 != expected {
            return Err("append's entries do not follow its previous index");
        }
        if e.term.0 == 0 {
            return Err("append's entry has no term");
        }
        if e.term < prev_term {
            return Err("append's entry terms decrease");
        }
        if e.term > m.term {
            return Err("append's entry term ahead of the sender's term");
        }
        prev_term = e.term;
    }
    Ok(())
}
