//! An in-memory cluster of protocol cores for tests, benches and scripted
//! scenarios: each node is a [`Raft`] over a [`MemLog`], driven through the
//! same update cycle an engine runs (send, persist, send after persist,
//! apply, advance), with a message queue the caller delivers, drops,
//! reorders or partitions.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt::Write as _;

use crate::bootstrap::bootstrap_entries;
use crate::codec::decode_config_change;
use crate::config::RaftConfig;
use crate::entry::{Entry, EntryType, HardState, SnapshotMeta};
use crate::ids::{Index, ReplicaId, ShardId, Term};
use crate::log_reader::LogReader;
use crate::membership::Membership;
use crate::memlog::MemLog;
use crate::message::{Message, MessageType};
use crate::raft::Raft;
use crate::recovery::RecoveryGuard;
use crate::update::{ReadState, Update};

/// One replica of the test cluster.
pub struct Node {
    /// The core.
    pub raft: Raft<MemLog>,
    /// Durable hard state.
    pub hard_state: HardState,
    /// Entries applied so far, by index (the test state machine).
    pub applied: BTreeMap<Index, Entry>,
    /// Highest applied index (may jump over entries when a snapshot is installed).
    pub applied_index: Index,
    /// Reads that became ready, in order.
    pub ready_reads: Vec<ReadState>,
    /// Reads dropped because leadership was lost.
    pub dropped_reads: Vec<u64>,
    /// Results of applied config changes: (index, accepted).
    pub config_results: Vec<(Index, bool)>,
    /// Membership after each applied config change (for snapshots).
    pub membership_history: Vec<(Index, Membership)>,
    /// Durable recovery guard (protocol-aware recovery), if any.
    pub recovery_guard: Option<RecoveryGuard>,
}

impl Node {
    /// The membership as of applied index `index`.
    pub fn membership_at(&self, index: Index) -> Membership {
        self.membership_history
            .iter()
            .rev()
            .find(|(i, _)| *i <= index)
            .map(|(_, m)| m.clone())
            .unwrap_or_default()
    }
}

/// Options of the nodes of a cluster.
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    /// Pre-vote on every node.
    pub pre_vote: bool,
    /// CheckQuorum on every node.
    pub check_quorum: bool,
    /// Lease reads on every node.
    pub lease_read: bool,
    /// Election timeout in ticks.
    pub election_rtt: u64,
    /// Heartbeat interval in ticks.
    pub heartbeat_rtt: u64,
    /// Max bytes per append message.
    pub max_append_bytes: u64,
    /// In-flight window size.
    pub max_inflight_msgs: usize,
    /// Max uncommitted bytes (0 = unlimited).
    pub max_uncommitted_bytes: u64,
    /// Seed for election timeouts.
    pub seed: u64,
    /// Asynchronous storage writes on every node
    /// ([`RaftConfig::async_storage_writes`]): the caller may take several
    /// updates with [`Cluster::process_begin`] before finishing them, in order.
    pub async_storage_writes: bool,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            pre_vote: false,
            check_quorum: false,
            lease_read: false,
            election_rtt: 10,
            heartbeat_rtt: 1,
            max_append_bytes: 1 << 20,
            max_inflight_msgs: 256,
            max_uncommitted_bytes: 0,
            seed: 1,
            async_storage_writes: false,
        }
    }
}

/// The shard every test cluster runs.
pub const TEST_SHARD: ShardId = ShardId(1);

/// A cluster of nodes and the messages between them.
pub struct Cluster {
    /// Nodes by id.
    pub nodes: BTreeMap<ReplicaId, Node>,
    /// Messages sent and not yet delivered, in send order.
    pub queue: VecDeque<Message>,
    /// Cut links (from, to): messages on them are dropped when sent.
    pub cut: BTreeSet<(ReplicaId, ReplicaId)>,
    /// Options used for new nodes.
    pub options: ClusterOptions,
    /// Entries known committed, by index, across all nodes (for checks).
    pub committed: BTreeMap<Index, Entry>,
}

fn addr(id: ReplicaId) -> String {
    format!("node{}", id.0)
}

impl Cluster {
    /// A cluster of `voters` (ids) with the given options.
    pub fn new(voters: &[u64], options: ClusterOptions) -> Cluster {
        let membership =
            Membership::with_voters(voters.iter().map(|&id| (id, addr(ReplicaId(id)))));
        let mut c = Cluster {
            nodes: BTreeMap::new(),
            queue: VecDeque::new(),
            cut: BTreeSet::new(),
            options,
            committed: BTreeMap::new(),
        };
        let (entries, hard_state) = bootstrap_entries(&membership);
        for &id in voters {
            c.add_node(ReplicaId(id), Membership::default());
            let cfg = c.config_for(ReplicaId(id));
            let node = c.nodes.get_mut(&ReplicaId(id)).expect("just added");
            let mut log = MemLog::new();
            log.append(&entries);
            node.hard_state = hard_state;
            node.raft = Raft::new(cfg, log, hard_state, Membership::default(), Index(0))
                .expect("valid test config");
        }
        // Apply the bootstrap entries so the nodes know their membership.
        c.process_all();
        c
    }

    /// The core config for node `id`.
    pub fn config_for(&self, id: ReplicaId) -> RaftConfig {
        let o = &self.options;
        RaftConfig {
            shard_id: TEST_SHARD,
            replica_id: id,
            election_rtt: o.election_rtt,
            heartbeat_rtt: o.heartbeat_rtt,
            check_quorum: o.check_quorum,
            pre_vote: o.pre_vote,
            lease_read: o.lease_read,
            max_append_bytes: o.max_append_bytes,
            max_inflight_msgs: o.max_inflight_msgs,
            max_uncommitted_bytes: o.max_uncommitted_bytes,
            seed: o.seed,
            async_storage_writes: o.async_storage_writes,
            ..RaftConfig::default()
        }
    }

    /// Adds a node starting with an empty log and `membership` (normally
    /// empty: a replica joining an existing shard learns the membership from
    /// the log it replicates).
    pub fn add_node(&mut self, id: ReplicaId, membership: Membership) {
        let raft = Raft::new(
            self.config_for(id),
            MemLog::new(),
            HardState::default(),
            membership,
            Index(0),
        )
        .expect("valid test config");
        self.nodes.insert(
            id,
            Node {
                raft,
                hard_state: HardState::default(),
                applied: BTreeMap::new(),
                applied_index: Index(0),
                ready_reads: Vec::new(),
                dropped_reads: Vec::new(),
                config_results: Vec::new(),
                membership_history: Vec::new(),
                recovery_guard: None,
            },
        );
    }

    /// Restarts node `id` from its durable state: unpersisted state is lost,
    /// the state machine restarts from the snapshot (with the snapshot's
    /// membership) and re-applies the committed log after it.
    pub fn restart(&mut self, id: ReplicaId) {
        let cfg = self.config_for(id);
        let node = self.nodes.get_mut(&id).expect("restart of unknown node");
        let log = node.raft.log().reader().clone();
        let snap = log.snapshot();
        let applied_index = snap.index;
        node.applied.retain(|i, _| *i <= applied_index);
        node.applied_index = applied_index;
        node.membership_history.retain(|(i, _)| *i <= applied_index);
        node.raft = Raft::new(cfg, log, node.hard_state, snap.membership, applied_index)
            .expect("valid test config");
        if let Some(g) = node.recovery_guard {
            node.raft.set_recovery_guard(g);
        }
    }

    /// Crashes node `id` with storage damage that lost every durable entry
    /// after `keep_through` (its commit index is clamped there), then
    /// restarts it. With `guard`, the storage noticed and hands the replica
    /// a [`RecoveryGuard`] (acknowledged through its old last index);
    /// without, the damage went unnoticed (what protocol-aware recovery
    /// exists to prevent).
    pub fn crash_losing_tail(&mut self, id: ReplicaId, keep_through: Index, guard: bool) {
        let node = self.nodes.get_mut(&id).expect("crash of unknown node");
        let old_last = node.raft.log().reader().last_index();
        node.raft.log_reader_mut().truncate_after(keep_through);
        let kept = node.raft.log().reader().last_index();
        node.hard_state.commit = node.hard_state.commit.min(kept);
        if guard {
            let g = RecoveryGuard {
                acked_through: Some(old_last),
                restart_term: node.hard_state.term,
            };
            node.recovery_guard = Some(match node.recovery_guard {
                Some(prev) => prev.merge(g),
                None => g,
            });
        }
        self.restart(id);
    }

    /// Takes a snapshot of node `id` at `index` (at most its applied index)
    /// and compacts its durable log up to it.
    pub fn compact(&mut self, id: ReplicaId, index: Index) {
        let node = self.nodes.get_mut(&id).expect("compact of unknown node");
        assert!(
            index <= node.applied_index,
            "compact at {index} beyond applied {}",
            node.applied_index
        );
        let term = node.raft.log().term(index).expect("compact: index in log");
        let membership = node.membership_at(index);
        node.raft.log_reader_mut().set_snapshot(SnapshotMeta {
            index,
            term,
            membership,
            ..SnapshotMeta::default()
        });
    }

    /// Node `id`.
    pub fn node(&self, id: u64) -> &Node {
        &self.nodes[&ReplicaId(id)]
    }

    /// Node `id`, mutably.
    pub fn node_mut(&mut self, id: u64) -> &mut Node {
        self.nodes.get_mut(&ReplicaId(id)).expect("unknown node")
    }

    /// The core of node `id`.
    pub fn raft(&mut self, id: u64) -> &mut Raft<MemLog> {
        &mut self.node_mut(id).raft
    }

    /// Cuts both directions between every node of `a` and every node of `b`.
    pub fn partition(&mut self, a: &[u64], b: &[u64]) {
        for &x in a {
            for &y in b {
                self.cut.insert((ReplicaId(x), ReplicaId(y)));
                self.cut.insert((ReplicaId(y), ReplicaId(x)));
            }
        }
    }

    /// Isolates `id` from every other node.
    pub fn isolate(&mut self, id: u64) {
        let others: Vec<u64> = self
            .nodes
            .keys()
            .map(|r| r.0)
            .filter(|&x| x != id)
            .collect();
        self.partition(&[id], &others);
    }

    /// Restores every link.
    pub fn heal(&mut self) {
        self.cut.clear();
    }

    fn enqueue(&mut self, msgs: Vec<Message>, out: &mut String) {
        for m in msgs {
            if self.cut.contains(&(m.from, m.to)) {
                let _ = writeln!(out, "  dropped {}", format_message(&m));
                continue;
            }
            self.queue.push_back(m);
        }
    }

    /// Runs node `id`'s update cycle once, as an engine would. Returns what
    /// happened as text (empty if there was nothing to do).
    pub fn process(&mut self, id: ReplicaId) -> String {
        let mut out = String::new();
        let Some(node) = self.nodes.get_mut(&id) else {
            return out;
        };
        if !node.raft.has_update() {
            return out;
        }
        let u = node.raft.get_update();
        let _ = writeln!(out, "> {} {}", id.0, summarize_update(&u));
        let early: Vec<Message> = u.messages.clone();
        for m in &early {
            let _ = writeln!(out, "  send {}", format_message(m));
        }
        // Persist.
        {
            let node = self.nodes.get_mut(&id).expect("node");
            let log = node.raft.log_reader_mut();
            if let Some(s) = &u.snapshot {
                log.apply_snapshot(s.clone());
            }
            log.append(&u.entries);
            if let Some(hs) = u.hard_state {
                node.hard_state = hs;
            }
            if u.recovery_cleared {
                node.recovery_guard = None;
            }
        }
        for m in &u.persisted_messages {
            let _ = writeln!(out, "  send {}", format_message(m));
        }
        self.enqueue(early, &mut out);
        self.enqueue(u.persisted_messages.clone(), &mut out);
        self.apply(id, &u, &mut out);
        let node = self.nodes.get_mut(&id).expect("node");
        node.raft.advance(&u);
        out
    }

    fn apply(&mut self, id: ReplicaId, u: &Update, out: &mut String) {
        let node = self.nodes.get_mut(&id).expect("node");
        if let Some(s) = &u.snapshot {
            // Install: the state machine becomes the committed prefix (the
            // test's stand-in for snapshot data).
            node.applied = self
                .committed
                .range(..=s.index)
                .map(|(i, e)| (*i, e.clone()))
                .collect();
            node.applied_index = s.index;
            node.membership_history
                .push((s.index, s.membership.clone()));
            node.raft.applied_to(s.index);
            let _ = writeln!(out, "  installed snapshot {}/{}", s.term.0, s.index.0);
        }
        for e in &u.committed_entries {
            assert_eq!(
                e.index,
                node.applied_index.next(),
                "node {} applies out of order",
                id.0
            );
            // State-machine safety (Raft §5.4.3): one entry per index everywhere.
            // A witness applies payload-less metadata entries: only their
            // terms compare, and a full entry replaces a recorded one.
            let meta = EntryType::Metadata;
            match self.committed.get(&e.index) {
                Some(prev) if prev.entry_type == meta || e.entry_type == meta => {
                    assert_eq!(
                        prev.term, e.term,
                        "node {} applied a different entry at {}",
                        id.0, e.index
                    );
                    if e.entry_type != meta {
                        self.committed.insert(e.index, e.clone());
                    }
                }
                Some(prev) => assert_eq!(
                    (prev.term, &prev.cmd),
                    (e.term, &e.cmd),
                    "node {} applied a different entry at {}",
                    id.0,
                    e.index
                ),
                None => {
                    self.committed.insert(e.index, e.clone());
                }
            }
            node.applied.insert(e.index, e.clone());
            node.applied_index = e.index;
            if e.entry_type == EntryType::ConfigChange {
                let cc = decode_config_change(&e.cmd).expect("valid config change in log");
                let ok = node.raft.apply_config_change(&cc, e.index).is_ok();
                node.config_results.push((e.index, ok));
                if ok {
                    node.membership_history
                        .push((e.index, node.raft.membership().clone()));
                }
                let _ = writeln!(
                    out,
                    "  apply conf {} {:?} {} -> {}",
                    e.index.0,
                    cc.change_type,
                    cc.replica_id.0,
                    if ok { "ok" } else { "rejected" }
                );
            }
            node.raft.applied_to(e.index);
        }
        if !u.committed_entries.is_empty() {
            let _ = writeln!(out, "  applied to {}", node.applied_index.0);
        }
        for r in &u.ready_reads {
            let _ = writeln!(out, "  read ready ctx={} index={}", r.context, r.index.0);
        }
        for c in &u.dropped_reads {
            let _ = writeln!(out, "  read dropped ctx={c}");
        }
        node.ready_reads.extend(u.ready_reads.iter().copied());
        node.dropped_reads.extend(u.dropped_reads.iter().copied());
    }

    /// Runs every node's update cycle once.
    pub fn process_all(&mut self) -> String {
        let ids: Vec<ReplicaId> = self.nodes.keys().copied().collect();
        ids.into_iter().map(|id| self.process(id)).collect()
    }

    /// Delivers queued messages matching `filter` (in order); returns what happened.
    pub fn deliver_matching(&mut self, filter: impl Fn(&Message) -> bool) -> String {
        let mut out = String::new();
        let mut keep = VecDeque::new();
        let msgs: Vec<Message> = self.queue.drain(..).collect();
        for m in msgs {
            if !filter(&m) {
                keep.push_back(m);
                continue;
            }
            let _ = writeln!(out, "  deliver {}", format_message(&m));
            if let Some(node) = self.nodes.get_mut(&m.to) {
                node.raft.step(m);
            }
        }
        self.queue = keep;
        out
    }

    /// Drops queued messages matching `filter`.
    pub fn drop_matching(&mut self, filter: impl Fn(&Message) -> bool) -> usize {
        let before = self.queue.len();
        self.queue.retain(|m| !filter(m));
        before - self.queue.len()
    }

    /// Processes and delivers until nothing moves (bounded); returns the trace.
    pub fn stabilize(&mut self) -> String {
        let mut out = String::new();
        for _ in 0..10_000 {
            let p = self.process_all();
            let d = self.deliver_matching(|_| true);
            if p.is_empty() && d.is_empty() {
                return out;
            }
            out.push_str(&p);
            out.push_str(&d);
        }
        panic!("cluster did not stabilize within 10000 rounds");
    }

    /// Ticks node `id` once.
    pub fn tick(&mut self, id: u64) {
        self.raft(id).tick();
    }

    /// The node that leads the highest term, if any.
    pub fn leader(&self) -> Option<ReplicaId> {
        self.nodes
            .values()
            .filter(|n| n.raft.is_leader())
            .max_by_key(|n| n.raft.term())
            .map(|n| n.raft.id())
    }

    /// A normal entry carrying `data`, for proposals.
    pub fn entry(data: &str) -> Entry {
        Entry {
            cmd: bytes::Bytes::copy_from_slice(data.as_bytes()),
            ..Entry::default()
        }
    }
}

/// One-line summary of an update (what to persist and apply).
pub fn summarize_update(u: &Update) -> String {
    let mut s = String::new();
    if let Some(hs) = u.hard_state {
        let _ = write!(
            s,
            "hs=term:{} vote:{} commit:{} ",
            hs.term.0, hs.vote.0, hs.commit.0
        );
    }
    if let Some(snap) = &u.snapshot {
        let _ = write!(s, "snapshot={}/{} ", snap.term.0, snap.index.0);
    }
    if !u.entries.is_empty() {
        let _ = write!(s, "persist={} ", format_entries(&u.entries));
    }
    if !u.committed_entries.is_empty() {
        let _ = write!(s, "apply={} ", format_entries(&u.committed_entries));
    }
    if let Some(l) = u.leader_change {
        let _ = write!(s, "leader={} term={} ", l.leader_id.0, l.term.0);
    }
    for (ent, e) in &u.dropped_proposals {
        let _ = write!(s, "proposal-dropped={}:{e:?} ", ent.key);
    }
    if u.recovery_cleared {
        s.push_str("recovery-cleared ");
    }
    s.trim_end().to_string()
}

/// Entries as `[term/index type "data", ...]`.
pub fn format_entries(ents: &[Entry]) -> String {
    let parts: Vec<String> = ents
        .iter()
        .map(|e| {
            let kind = match e.entry_type {
                EntryType::Normal => String::from_utf8_lossy(&e.cmd).into_owned(),
                EntryType::Encoded => format!("encoded {} bytes", e.cmd.len()),
                EntryType::ConfigChange => match decode_config_change(&e.cmd) {
                    Ok(cc) => format!("conf:{:?}:{}", cc.change_type, cc.replica_id.0),
                    Err(_) => "conf:?".to_string(),
                },
                EntryType::NoOp => "noop".to_string(),
                EntryType::Metadata => "meta".to_string(),
            };
            format!("{}/{} {}", e.term.0, e.index.0, kind)
        })
        .collect();
    format!("[{}]", parts.join(", "))
}

/// A message on one line, fields that matter for its type only.
pub fn format_message(m: &Message) -> String {
    let mut s = format!(
        "{}->{} {:?} term={}",
        m.from.0, m.to.0, m.msg_type, m.term.0
    );
    match m.msg_type {
        MessageType::Replicate => {
            let _ = write!(
                s,
                " prev={}/{} commit={} entries={}",
                m.log_term.0,
                m.log_index.0,
                m.commit.0,
                format_entries(&m.entries)
            );
        }
        MessageType::ReplicateResp => {
            let _ = write!(s, " index={}", m.log_index.0);
            if m.reject {
                let _ = write!(s, " reject hint={}/{}", m.hint_term.0, m.hint.0);
            }
        }
        MessageType::RequestVote | MessageType::RequestPreVote => {
            let _ = write!(s, " last={}/{}", m.log_term.0, m.log_index.0);
            if m.context != 0 {
                let _ = write!(s, " transfer");
            }
        }
        MessageType::RequestVoteResp | MessageType::RequestPreVoteResp => {
            s.push_str(if m.reject { " reject" } else { " granted" });
        }
        MessageType::Heartbeat => {
            let _ = write!(s, " commit={} ctx={}", m.commit.0, m.context);
        }
        MessageType::HeartbeatResp => {
            let _ = write!(s, " ctx={}", m.context);
        }
        MessageType::InstallSnapshot => {
            if let Some(snap) = &m.snapshot {
                let voters: Vec<u64> = snap.membership.voters.keys().map(|r| r.0).collect();
                let _ = write!(
                    s,
                    " snapshot={}/{} voters={:?}",
                    snap.term.0, snap.index.0, voters
                );
            }
        }
        MessageType::Propose => {
            let _ = write!(s, " entries={}", format_entries(&m.entries));
        }
        MessageType::ReadIndex => {
            let _ = write!(s, " ctx={}", m.context);
        }
        MessageType::ReadIndexResp => {
            let _ = write!(s, " ctx={} index={}", m.context, m.hint.0);
        }
        MessageType::TransferLeader => {
            let _ = write!(s, " target={}", m.hint.0);
        }
        _ => {
            if m.reject {
                s.push_str(" reject");
            }
        }
    }
    s
}

/// One line describing node state: role, term, vote, commit, applied, log range, leader.
pub fn format_status(r: &Raft<MemLog>) -> String {
    let st = r.status();
    let voters: Vec<u64> = st.membership.voters.keys().map(|r| r.0).collect();
    let mut s = format!(
        "{}: {:?} term={} vote={} commit={} applied={} log={}..{} lead={} voters={:?}",
        st.replica_id.0,
        st.role,
        st.hard_state.term.0,
        st.hard_state.vote.0,
        st.hard_state.commit.0,
        st.applied.0,
        st.first_index.0,
        st.last_index.0,
        st.leader_id.0,
        voters
    );
    if !st.membership.non_votings.is_empty() {
        let nv: Vec<u64> = st.membership.non_votings.keys().map(|r| r.0).collect();
        let _ = write!(s, " non_voting={nv:?}");
    }
    if !st.membership.witnesses.is_empty() {
        let w: Vec<u64> = st.membership.witnesses.keys().map(|r| r.0).collect();
        let _ = write!(s, " witnesses={w:?}");
    }
    s
}

/// The term of the last entry of a node's log (for checks).
pub fn last_term(r: &Raft<MemLog>) -> Term {
    r.log().last_term().expect("MemLog reads never fail")
}

/// Whether the durable log of a node is readable (for checks).
pub fn durable_last_index(r: &Raft<MemLog>) -> Index {
    r.log().reader().last_index()
}

/// The update cycle split in two halves, for harnesses that delay a node's
/// persistence while other nodes act (a leader's appends leave before its
/// own write, thesis §10.2.1; a crash between the halves loses the write).
/// Between the halves the node must not be stepped or ticked, as in an
/// engine, whose worker runs the whole cycle for a replica at once, unless
/// the cluster runs asynchronous storage writes: then the node may be
/// stepped and further updates begun, each finished in the order begun.
impl Cluster {
    /// First half of node `id`'s update cycle: takes the update and queues
    /// the messages that may leave before persistence. Returns `None` if
    /// there was nothing to do, else the update (to hand to
    /// [`process_finish`](Self::process_finish)) and the messages dropped by
    /// cut links. With `trace`, describes what happened.
    pub fn process_begin(
        &mut self,
        id: ReplicaId,
        trace: Option<&mut String>,
    ) -> Option<(Update, Vec<Message>)> {
        let node = self.nodes.get_mut(&id)?;
        if !node.raft.has_update() {
            return None;
        }
        let u = node.raft.get_update();
        let mut dropped = Vec::new();
        let mut out = trace;
        if let Some(out) = out.as_deref_mut() {
            let _ = writeln!(out, "> {} {}", id.0, summarize_update(&u));
        }
        self.enqueue_traced(u.messages.clone(), out, &mut dropped);
        Some((u, dropped))
    }

    /// Second half: persists what `u` asks for, queues the messages that
    /// wait for persistence, applies committed entries and advances the core.
    /// Returns the messages dropped by cut links.
    pub fn process_finish(
        &mut self,
        id: ReplicaId,
        u: &Update,
        trace: Option<&mut String>,
    ) -> Vec<Message> {
        let mut dropped = Vec::new();
        let Some(node) = self.nodes.get_mut(&id) else {
            return dropped;
        };
        let log = node.raft.log_reader_mut();
        if let Some(s) = &u.snapshot {
            log.apply_snapshot(s.clone());
        }
        log.append(&u.entries);
        if let Some(hs) = u.hard_state {
            node.hard_state = hs;
        }
        if u.recovery_cleared {
            node.recovery_guard = None;
        }
        let mut out = trace;
        if let Some(out) = out.as_deref_mut() {
            let _ = writeln!(out, "  persisted {}", id.0);
        }
        self.enqueue_traced(
            u.persisted_messages.clone(),
            out.as_deref_mut(),
            &mut dropped,
        );
        let mut scratch = String::new();
        self.apply(id, u, out.unwrap_or(&mut scratch));
        let node = self.nodes.get_mut(&id).expect("node");
        node.raft.advance(u);
        dropped
    }

    fn enqueue_traced(
        &mut self,
        msgs: Vec<Message>,
        mut out: Option<&mut String>,
        dropped: &mut Vec<Message>,
    ) {
        for m in msgs {
            let cut = self.cut.contains(&(m.from, m.to));
            if let Some(out) = out.as_deref_mut() {
                let verb = if cut { "dropped" } else { "send" };
                let _ = writeln!(out, "  {verb} {}", format_message(&m));
            }
            if cut {
                dropped.push(m);
            } else {
                self.queue.push_back(m);
            }
        }
    }
}
