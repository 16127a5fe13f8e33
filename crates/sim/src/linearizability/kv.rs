//! A key-value map with get, put and append, checked per key.

use super::Model;

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
