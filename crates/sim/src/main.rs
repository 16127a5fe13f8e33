//! `longship-sim`: runs the deterministic simulator.

fn main() {}
