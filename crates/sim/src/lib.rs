//! longship-sim: a deterministic simulator for longship and the checkers it
//! runs.
//!
//! [`linearizability`] is a Wing–Gong/Lowe linearizability checker over any
//! sequential model.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod linearizability;
