//! A key-value map with get, put and append, checked per key.

use super::{Model, Operation, Outcome};

/// A map operation on one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KvInput {
    /// Read the key's value.
    Get {
        /// The key.
        key: String,
    },
    /// Set the key's value.
    Put {
        /// The key.
        key: String,
        /// The new value.
        value: String,
    },
    /// Append to the key's value.
    Append {
        /// The key.
        key: String,
        /// What to append.
        value: String,
    },
}

impl KvInput {
    /// The key the operation touches.
    pub fn key(&self) -> &str {
        match self {
            KvInput::Get { key } | KvInput::Put { key, .. } | KvInput::Append { key, .. } => key,
        }
    }
}

/// What a map operation returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KvOutput {
    /// A get saw this value (`""` for a missing key).
    Value(String),
    /// A put or append succeeded.
    Done,
}

/// The sequential map: every key starts as `""`. Its state is one key's
/// value, because it is checked per key.
#[derive(Clone, Copy, Debug, Default)]
pub struct KvModel;

impl Model for KvModel {
    type State = String;
    type Input = KvInput;
    type Output = KvOutput;
    type Key = String;

    fn init(&self) -> String {
        String::new()
    }

    fn step(&self, state: &String, input: &KvInput, output: Option<&KvOutput>) -> Option<String> {
        match (input, output) {
            (KvInput::Get { .. }, None) => Some(state.clone()),
            (KvInput::Get { .. }, Some(KvOutput::Value(seen))) => {
                (seen == state).then(|| state.clone())
            }
            (KvInput::Put { value, .. }, None | Some(KvOutput::Done)) => Some(value.clone()),
            (KvInput::Append { value, .. }, None | Some(KvOutput::Done)) => {
                Some(format!("{state}{value}"))
            }
            _ => None,
        }
    }

    fn partition(&self, input: &KvInput) -> String {
        input.key().to_string()
    }
}

/// Leaves out every operation with an unknown outcome whose effect no read
/// could have seen: a put or append whose value occurs in no get's output.
///
/// Sound and complete: if such an operation `u` is in some linearization,
/// every state from `u` up to the next put contains `u`'s value, so no get
/// is linearized in that stretch; removing `u` changes only those states.
/// And an operation with an unknown outcome may be left out anyway. The
/// search gets much cheaper, since each such operation could otherwise be
/// tried at every point after its call.
pub fn prune_invisible_unknowns(
    history: &[Operation<KvInput, KvOutput>],
) -> Vec<Operation<KvInput, KvOutput>> {
    // Every value a get saw, by key, so the pass stays linear in the
    // history (a long load test has tens of thousands of operations).
    let mut seen: std::collections::HashMap<&str, Vec<&str>> = std::collections::HashMap::new();
    for op in history {
        if let (
            KvInput::Get { key },
            Outcome::Returned {
                output: KvOutput::Value(v),
                ..
            },
        ) = (&op.input, &op.outcome)
        {
            seen.entry(key.as_str()).or_default().push(v.as_str());
        }
    }
    history
        .iter()
        .filter(|op| {
            let value = match (&op.input, &op.outcome) {
                (KvInput::Put { value, .. } | KvInput::Append { value, .. }, Outcome::Unknown) => {
                    value
                }
                _ => return true,
            };
            seen.get(op.input.key())
                .is_some_and(|vs| vs.iter().any(|v| v.contains(value.as_str())))
        })
        .cloned()
        .collect()
}
