//! A register with read, write and compare-and-set (the etcd Jepsen test).

use super::Model;

/// A register operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RegisterInput {
    /// Read the value.
    Read,
    /// Set the value.
    Write(i64),
    /// Set the value to `to` if it equals `from`.
    Cas {
        /// The value the register must hold.
        from: i64,
        /// The value it gets.
        to: i64,
    },
}

/// What a register operation returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RegisterOutput {
    /// A read saw this value (`None`: never written).
    Read(Option<i64>),
    /// A write succeeded.
    Write,
    /// A compare-and-set succeeded (`true`) or found another value
    /// (`false`: Jepsen's `:fail :cas`).
    Cas(bool),
}

/// The sequential register: starts empty (`nil`).
#[derive(Clone, Copy, Debug, Default)]
pub struct RegisterModel;

impl Model for RegisterModel {
    type State = Option<i64>;
    type Input = RegisterInput;
    type Output = RegisterOutput;
    type Key = ();

    fn init(&self) -> Option<i64> {
        None
    }

    fn step(
        &self,
        state: &Option<i64>,
        input: &RegisterInput,
        output: Option<&RegisterOutput>,
    ) -> Option<Option<i64>> {
        match (input, output) {
            (RegisterInput::Read, None) => Some(*state),
            (RegisterInput::Read, Some(RegisterOutput::Read(seen))) => {
                (seen == state).then_some(*state)
            }
            (RegisterInput::Write(v), None | Some(RegisterOutput::Write)) => Some(Some(*v)),
            (RegisterInput::Cas { from, to }, None) => {
                // Unknown outcome: it took effect iff the comparison held; a
                // failed comparison changes nothing.
                Some(if *state == Some(*from) {
                    Some(*to)
                } else {
                    *state
                })
            }
            (RegisterInput::Cas { from, to }, Some(RegisterOutput::Cas(true))) => {
                (*state == Some(*from)).then_some(Some(*to))
            }
            (RegisterInput::Cas { from, .. }, Some(RegisterOutput::Cas(false))) => {
                (*state != Some(*from)).then_some(*state)
            }
            _ => None,
        }
    }

    fn partition(&self, _input: &RegisterInput) {}
}
