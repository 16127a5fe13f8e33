//! A linearizability checker: the Wing–Gong/Lowe (WGL) search with
//! memoization, over any sequential [`Model`].
//!
//! A history is a list of [`Operation`]s, each with an invocation time and,
//! if it returned, a return time and an output. The checker searches for a
//! total order of the operations that respects real time (an operation that
//! returned before another was invoked comes first) and that the sequential
//! model accepts. It follows Lowe's "just-in-time linearization" form of the
//! Wing–Gong algorithm as used by porcupine: the calls and returns sit in a
//! time-ordered linked list; an operation is linearized by taking its call
//! (and its return) out of the list; reaching a return means the operation
//! it belongs to could not be placed, so the search backtracks. Every
//! `(set of linearized operations, model state)` pair it has reached is
//! remembered, and a pair seen before is never explored again.
//!
//! An operation with an unknown outcome (a timeout, Jepsen's `:info`) may
//! have taken effect at any point after its invocation, or never: it gets a
//! return time of +infinity and any output, and it may be left out. The
//! search succeeds once every operation with a known outcome is linearized.
//! Such an operation is never linearized where it would leave the state as
//! it is (an unknown read): that choice can only lead where leaving it out
//! leads too.
//!
//! Linearizability is compositional (Herlihy & Wing), so a model that
//! partitions its inputs (a key-value map, per key) is checked one
//! partition at a time. The work is bounded by [`Budget`]: past the bound the
//! verdict is [`Verdict::Unknown`] instead of a hang.

pub mod jepsen;
pub mod kv;
pub mod register;

use std::collections::{BTreeMap, HashMap};
use std::fmt::Debug;
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::time::{Duration, Instant};

/// A sequential specification: the states an object goes through when the
/// operations are applied one at a time.
pub trait Model {
    /// The object's state. Equal states must behave the same.
    type State: Clone + Eq + Hash + Debug;
    /// An operation's input (which operation, with its arguments).
    type Input: Debug;
    /// An operation's output as the client saw it.
    type Output: Debug;
    /// The partition an input belongs to; operations in different
    /// partitions never affect each other (for a map: the key). Models
    /// without partitions use `()`.
    type Key: Ord + Clone + Debug;

    /// The state before any operation.
    fn init(&self) -> Self::State;

    /// Applies `input` to `state`. `output` is what the client saw, or
    /// `None` if the outcome is unknown (any output is then acceptable).
    /// Returns the next state, or `None` if the model could not have
    /// produced `output` from `state`.
    fn step(
        &self,
        state: &Self::State,
        input: &Self::Input,
        output: Option<&Self::Output>,
    ) -> Option<Self::State>;

    /// The partition of `input` (see [`Model::Key`]).
    fn partition(&self, input: &Self::Input) -> Self::Key;
}

/// How an operation ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome<O> {
    /// It returned `output` at time `at`.
    Returned {
        /// What the client saw.
        output: O,
        /// When the client saw it (same clock as [`Operation::call`]).
        at: u64,
    },
    /// The client never learnt the outcome (timeout, crash): the operation
    /// may have taken effect at any time after its call, or never.
    Unknown,
}

/// One client operation of a history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Operation<I, O> {
    /// The client (process) that issued it; informational only.
    pub client: u64,
    /// What was asked.
    pub input: I,
    /// When it was invoked.
    pub call: u64,
    /// How it ended.
    pub outcome: Outcome<O>,
}

impl<I, O> Operation<I, O> {
    /// An operation that returned `output` at `ret`.
    pub fn returned(client: u64, input: I, call: u64, output: O, ret: u64) -> Self {
        Operation {
            client,
            input,
            call,
            outcome: Outcome::Returned { output, at: ret },
        }
    }

    /// An operation whose outcome is unknown.
    pub fn unknown(client: u64, input: I, call: u64) -> Self {
        Operation {
            client,
            input,
            call,
            outcome: Outcome::Unknown,
        }
    }

    fn output(&self) -> Option<&O> {
        match &self.outcome {
            Outcome::Returned { output, .. } => Some(output),
            Outcome::Unknown => None,
        }
    }
}

/// The bound on a check's work. Steps are counted over all partitions and
/// are deterministic; the wall-clock limit is not, so a simulator that wants
/// replayable verdicts bounds steps only.
#[derive(Clone, Copy, Debug)]
pub struct Budget {
    /// At most this many search steps (call or return visits).
    pub steps_max: u64,
    /// At most this much wall-clock time, if set.
    pub time_max: Option<Duration>,
}

impl Default for Budget {
    fn default() -> Self {
        Budget {
            steps_max: 50_000_000,
            time_max: None,
        }
    }
}

/// The checker's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict<K> {
    /// A linearization exists for every partition.
    Linearizable,
    /// No linearization exists for partition `key`.
    NotLinearizable {
        /// The partition that has none.
        key: K,
        /// The most operations of that partition linearized at once in the
        /// search: a hint to where the history goes wrong.
        linearized_max: usize,
        /// The operations of that partition (indexes into the history).
        ops: Vec<usize>,
    },
    /// The budget ran out before an answer.
    Unknown,
}

impl<K> Verdict<K> {
    /// True for [`Verdict::Linearizable`].
    pub fn is_linearizable(&self) -> bool {
        matches!(self, Verdict::Linearizable)
    }

    /// True for [`Verdict::NotLinearizable`].
    pub fn is_violation(&self) -> bool {
        matches!(self, Verdict::NotLinearizable { .. })
    }
}

/// Checks `history` against `model` within `budget`.
///
/// Partitions are searched in turns of a bounded number of steps, so one
/// hard partition cannot hide a quick violation in another (porcupine runs
/// them in parallel for the same reason).
pub fn check<M: Model>(
    model: &M,
    history: &[Operation<M::Input, M::Output>],
    budget: Budget,
) -> Verdict<M::Key> {
    let mut partitions: BTreeMap<M::Key, Vec<usize>> = BTreeMap::new();
    for (i, op) in history.iter().enumerate() {
        partitions
            .entry(model.partition(&op.input))
            .or_default()
            .push(i);
    }
    let mut meter = Meter {
        steps_left: budget.steps_max,
        deadline: budget.time_max.map(|d| Instant::now() + d),
    };
    let mut live: Vec<Partition<M>> = partitions
        .into_iter()
        .map(|(key, ops)| {
            let search = PartitionSearch::new(model, history, &ops);
            (key, ops, search)
        })
        .collect();
    while !live.is_empty() {
        let mut i = 0;
        while i < live.len() {
            let (_, ops, search) = &mut live[i];
            match search.run(model, history, ops, &mut meter, TURN_STEPS) {
                Progress::Found => {
                    live.swap_remove(i);
                }
                Progress::Impossible => {
                    let (key, ops, search) = live.swap_remove(i);
                    return Verdict::NotLinearizable {
                        key,
                        linearized_max: search.linearized_max,
                        ops,
                    };
                }
                Progress::Paused => i += 1,
                Progress::OutOfBudget => return Verdict::Unknown,
            }
        }
    }
    Verdict::Linearizable
}

/// A partition's key, its operations and its search.
type Partition<M> = (
    <M as Model>::Key,
    Vec<usize>,
    PartitionSearch<<M as Model>::State>,
);

/// Steps one partition's search takes before the next partition's turn.
const TURN_STEPS: u64 = 20_000;

struct Meter {
    steps_left: u64,
    deadline: Option<Instant>,
}

impl Meter {
    /// Takes one step; false once the budget is spent.
    fn step(&mut self) -> bool {
        if self.steps_left == 0 {
            return false;
        }
        self.steps_left -= 1;
        let late = self.steps_left.is_multiple_of(4096)
            && self
                .deadline
                .is_some_and(|deadline| Instant::now() >= deadline);
        if late {
            self.steps_left = 0;
        }
        !late
    }
}

enum Progress {
    Found,
    Impossible,
    /// The turn is over; call `run` again to go on.
    Paused,
    OutOfBudget,
}

/// One call or return in the time-ordered list.
#[derive(Clone, Copy)]
struct Event {
    /// Position of the operation within the partition.
    op: usize,
    is_call: bool,
    /// A return at +infinity (the operation's outcome is unknown).
    is_endless: bool,
    /// For a call: the list node of its return.
    partner: usize,
}

/// A doubly linked list over `events` with a sentinel head at index
/// `events.len()`.
struct List {
    next: Vec<usize>,
    prev: Vec<usize>,
    nil: usize,
}

impl List {
    fn new(len: usize) -> Self {
        // Nodes 0..len in order, then the sentinel `len`.
        let nil = len;
        let next = (0..=len)
            .map(|i| if i == len { 0 } else { i + 1 })
            .collect();
        let prev = (0..=len)
            .map(|i| if i == 0 { len } else { i - 1 })
            .collect();
        List { next, prev, nil }
    }

    fn unlink(&mut self, node: usize) {
        let (p, n) = (self.prev[node], self.next[node]);
        self.next[p] = n;
        self.prev[n] = p;
    }

    /// Puts back a node taken out by `unlink`; nodes must be put back in the
    /// reverse order they were taken out.
    fn relink(&mut self, node: usize) {
        let (p, n) = (self.prev[node], self.next[node]);
        self.next[p] = node;
        self.prev[n] = node;
    }
}

/// A fixed-size set of operation positions with a Zobrist hash kept up to
/// date (the XOR of a fixed random word per member), so looking a set up in
/// the memo costs no pass over its words.
#[derive(Clone, PartialEq, Eq)]
struct Bits {
    words: Vec<u64>,
    hash: u64,
}

impl Bits {
    fn new(len: usize) -> Self {
        Bits {
            words: vec![0; len.div_ceil(64)],
            hash: 0,
        }
    }

    fn flip(&mut self, i: usize) {
        self.words[i / 64] ^= 1 << (i % 64);
        self.hash ^= zobrist(i);
    }
}

/// A fixed pseudo-random word per position (splitmix64).
fn zobrist(i: usize) -> u64 {
    let mut z = (i as u64)
        .wrapping_add(1)
        .wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A small fast hasher (the FxHash mix) for model states and memo keys;
/// deterministic across runs.
#[derive(Default)]
struct FxHasher(u64);

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
    }

    fn write_u64(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

fn state_hash<S: Hash>(state: &S) -> u64 {
    let mut hasher = FxHasher::default();
    state.hash(&mut hasher);
    hasher.finish()
}

/// Hashes memo keys that are already hashes.
#[derive(Default)]
struct PassThrough(u64);

impl Hasher for PassThrough {
    fn write(&mut self, _bytes: &[u8]) {
        unreachable!("memo keys are u64 hashes")
    }

    fn write_u64(&mut self, word: u64) {
        self.0 = word;
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// The search over one partition, resumable between turns.
struct PartitionSearch<S> {
    events: Vec<Event>,
    list: List,
    linearized: Bits,
    linearized_count: usize,
    /// The most operations linearized at once so far.
    linearized_max: usize,
    /// Every `(linearized set, state)` reached, bucketed by a hash of both.
    seen: HashMap<u64, Vec<(Bits, S)>, BuildHasherDefault<PassThrough>>,
    /// The calls taken out of the list, with the state before each.
    stack: Vec<(usize, S)>,
    state: S,
    /// The node the search looks at next.
    node: usize,
}

impl<S: Clone + Eq + Hash> PartitionSearch<S> {
    fn new<M: Model<State = S>>(
        model: &M,
        history: &[Operation<M::Input, M::Output>],
        ops: &[usize],
    ) -> Self {
        let events = order_events(history, ops);
        let list = List::new(events.len());
        let node = list.next[list.nil];
        PartitionSearch {
            events,
            list,
            linearized: Bits::new(ops.len()),
            linearized_count: 0,
            linearized_max: 0,
            seen: HashMap::default(),
            stack: Vec::new(),
            state: model.init(),
            node,
        }
    }

    /// Records `(linearized + op, state)`; false if it was reached before.
    fn remember(&mut self, op: usize, state: &S) -> bool {
        let mut key = self.linearized.clone();
        key.flip(op);
        let hash = key.hash ^ state_hash(state);
        let bucket = self.seen.entry(hash).or_default();
        if bucket.iter().any(|(bits, s)| *bits == key && s == state) {
            return false;
        }
        bucket.push((key, state.clone()));
        true
    }

    fn run<M: Model<State = S>>(
        &mut self,
        model: &M,
        history: &[Operation<M::Input, M::Output>],
        ops: &[usize],
        meter: &mut Meter,
        turn_steps: u64,
    ) -> Progress {
        let nil = self.list.nil;
        for _ in 0..turn_steps {
            let node = self.node;
            if node == nil {
                return Progress::Found;
            }
            if !meter.step() {
                return Progress::OutOfBudget;
            }
            let event = self.events[node];
            if event.is_call {
                let op = &history[ops[event.op]];
                let next_state = model.step(&self.state, &op.input, op.output());
                match next_state {
                    // An operation with an unknown outcome that leaves the
                    // state as it is (a read, a put of the current value)
                    // is never worth linearizing: whatever the search can
                    // do from (linearized + op, state) it can do from
                    // (linearized, state) by leaving the op out, so taking
                    // it would only double the configurations to explore
                    // (a history with n unknown reads concurrent with a
                    // stretch that needs backtracking: 2^n).
                    Some(next_state) if op.output().is_none() && next_state == self.state => {
                        self.node = self.list.next[node]
                    }
                    Some(next_state) if self.remember(event.op, &next_state) => {
                        self.linearized.flip(event.op);
                        self.linearized_count += 1;
                        self.linearized_max = self.linearized_max.max(self.linearized_count);
                        let prior = std::mem::replace(&mut self.state, next_state);
                        self.stack.push((node, prior));
                        self.list.unlink(node);
                        self.list.unlink(event.partner);
                        self.node = self.list.next[nil];
                    }
                    _ => self.node = self.list.next[node],
                }
            } else if event.is_endless {
                // Every operation with a known outcome is linearized (their
                // returns all come before this one); the rest may be left
                // out.
                return Progress::Found;
            } else {
                // This operation could not be linearized before its return:
                // undo the most recent choice and try the next call after it.
                let Some((call, prior)) = self.stack.pop() else {
                    return Progress::Impossible;
                };
                let call_event = self.events[call];
                self.list.relink(call_event.partner);
                self.list.relink(call);
                self.linearized.flip(call_event.op);
                self.linearized_count -= 1;
                self.state = prior;
                self.node = self.list.next[call];
            }
        }
        Progress::Paused
    }
}

/// The calls and returns of the partition's operations in time order; a call
/// comes before a return at the same time (such operations overlap). Each
/// call's `partner` points at its return.
fn order_events<I, O>(history: &[Operation<I, O>], ops: &[usize]) -> Vec<Event> {
    // (time, 0 = call / 1 = return / 2 = endless return, op); endless
    // returns sort after everything else.
    let mut keyed: Vec<(u64, u8, usize)> = Vec::with_capacity(ops.len() * 2);
    for (pos, &i) in ops.iter().enumerate() {
        let op = &history[i];
        keyed.push((op.call, 0, pos));
        keyed.push(match op.outcome {
            Outcome::Returned { at, .. } => (at.max(op.call), 1, pos),
            Outcome::Unknown => (u64::MAX, 2, pos),
        });
    }
    keyed.sort_unstable();
    let mut events: Vec<Event> = Vec::with_capacity(keyed.len());
    let mut return_node = vec![0usize; ops.len()];
    for (node, &(_, kind, pos)) in keyed.iter().enumerate() {
        if kind != 0 {
            return_node[pos] = node;
        }
        events.push(Event {
            op: pos,
            is_call: kind == 0,
            is_endless: kind == 2,
            partner: 0,
        });
    }
    for event in events.iter_mut() {
        if event.is_call {
            event.partner = return_node[event.op];
        }
    }
    events
}

#[cfg(test)]
mod tests;
