//! Seeded mutation fuzzing for longship.
//!
//! cargo-fuzz needs a nightly toolchain, which this project's machines do
//! not have; this crate is the stable-Rust stand-in the issue allows: each
//! target starts from valid encodings (the seeds), mutates them with a
//! seeded generator (bit flips, byte sets, boundary values over length
//! fields, insertions, deletions, truncations, splices of two seeds), and
//! feeds every input to the code under test inside `catch_unwind`. A panic
//! is a finding: the report names the target, the input's number and its
//! bytes, and the same number reproduces it (`FUZZ_ONLY=<n>`), so every
//! finding becomes a named regression test.
//!
//! ```text
//! cargo test --release -p longship-fuzz                         # the CI slice
//! FUZZ_INPUTS=1000000 cargo test --release -p longship-fuzz     # a million per target
//! ```
//!
//! Written by hand (not `arbitrary`/`proptest` shrinking) because the point
//! is volume over long runs with a reproducible numbering, and the
//! mutators know this project's formats (little-endian lengths, CRCs that
//! a target may recompute so that the decoder behind the check is reached).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::Instant;

use longship_raft::Rng;

/// Inputs per target when `FUZZ_INPUTS` is not set (the CI slice).
pub const DEFAULT_INPUTS: u64 = 5_000;

/// How many inputs a target runs: `FUZZ_INPUTS`, else `default`.
pub fn inputs(default: u64) -> u64 {
    std::env::var("FUZZ_INPUTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Values that break length and index arithmetic.
const BOUNDARY_U64: [u64; 10] = [
    0,
    1,
    0x7f,
    0xff,
    0xffff,
    0x7fff_ffff,
    0xffff_ffff,
    0x1_0000_0000,
    i64::MAX as u64,
    u64::MAX,
];

/// One mutated input derived from `seeds` by the generator `rng`.
pub fn mutate(rng: &mut Rng, seeds: &[Vec<u8>]) -> Vec<u8> {
    let mut b = seeds[rng.below(seeds.len() as u64) as usize].clone();
    let rounds = 1 + rng.below(4);
    for _ in 0..rounds {
        match rng.below(9) {
            // Flip one bit.
            0 if !b.is_empty() => {
                let i = rng.below(b.len() as u64) as usize;
                b[i] ^= 1 << rng.below(8);
            }
            // Set one byte.
            1 if !b.is_empty() => {
                let i = rng.below(b.len() as u64) as usize;
                b[i] = rng.next_u64() as u8;
            }
            // A boundary value over 4 or 8 bytes (a length, a count, an index).
            2 if b.len() >= 8 => {
                let v = BOUNDARY_U64[rng.below(BOUNDARY_U64.len() as u64) as usize];
                let width = if rng.chance(0.5) { 4 } else { 8 };
                let i = rng.below((b.len() - width + 1) as u64) as usize;
                b[i..i + width].copy_from_slice(&v.to_le_bytes()[..width]);
            }
            // Truncate.
            3 => {
                let n = rng.below(b.len() as u64 + 1) as usize;
                b.truncate(n);
            }
            // Insert random bytes.
            4 => {
                let at = rng.below(b.len() as u64 + 1) as usize;
                let n = 1 + rng.below(16) as usize;
                let ins: Vec<u8> = (0..n).map(|_| rng.next_u64() as u8).collect();
                b.splice(at..at, ins);
            }
            // Delete a range.
            5 if !b.is_empty() => {
                let at = rng.below(b.len() as u64) as usize;
                let n = 1 + rng.below((b.len() - at) as u64) as usize;
                b.drain(at..at + n);
            }
            // Duplicate a range (repeated records, doubled fields).
            6 if !b.is_empty() && b.len() < 1 << 20 => {
                let at = rng.below(b.len() as u64) as usize;
                let n = 1 + rng.below(((b.len() - at) as u64).min(64)) as usize;
                let dup = b[at..at + n].to_vec();
                b.splice(at..at, dup);
            }
            // Splice: the head of this input with the tail of another seed.
            7 => {
                let other = &seeds[rng.below(seeds.len() as u64) as usize];
                let cut = rng.below(b.len() as u64 + 1) as usize;
                let from = rng.below(other.len() as u64 + 1) as usize;
                b.truncate(cut);
                b.extend_from_slice(&other[from..]);
            }
            // Random bytes of a random length (rarely).
            _ => {
                if rng.chance(0.1) {
                    let n = rng.below(64) as usize;
                    b = (0..n).map(|_| rng.next_u64() as u8).collect();
                }
            }
        }
    }
    b
}

/// Runs `target` over `count` inputs mutated from `seeds` (and the seeds
/// themselves first). `target` says whether it accepted the input (decoded
/// it), so that the report shows how deep the mutations got. Panics with a
/// reproducible report at the first input that made `target` panic.
/// `FUZZ_ONLY=n` runs input `n` alone.
pub fn run(name: &str, seed: u64, seeds: &[Vec<u8>], count: u64, target: impl Fn(&[u8]) -> bool) {
    assert!(!seeds.is_empty(), "{name}: no seeds");
    let only: Option<u64> = std::env::var("FUZZ_ONLY").ok().and_then(|v| v.parse().ok());
    let started = Instant::now();
    let mut rng = Rng::new(seed);
    let mut accepted = 0u64;
    for n in 0..seeds.len() as u64 + count {
        let input = if (n as usize) < seeds.len() {
            seeds[n as usize].clone()
        } else {
            mutate(&mut rng, seeds)
        };
        if only.is_some_and(|o| o != n) {
            continue;
        }
        match catch_unwind(AssertUnwindSafe(|| target(&input))) {
            Ok(true) => accepted += 1,
            Ok(false) => {}
            Err(p) => {
                let why = p
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| p.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                panic!(
                    "fuzz target {name}: input {n} (seed {seed}, replay with FUZZ_ONLY={n}) panicked: {why}\ninput ({} bytes): {}",
                    input.len(),
                    hex(&input[..input.len().min(512)])
                );
            }
        }
    }
    eprintln!(
        "fuzz target {name}: {} inputs ({accepted} accepted) in {:.1}s, no panic",
        seeds.len() as u64 + count,
        started.elapsed().as_secs_f64()
    );
}

/// Lower-case hex of `b`.
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_inputs() {
        let seeds = vec![b"hello world, a seed".to_vec(), vec![0u8; 40]];
        let a: Vec<Vec<u8>> = {
            let mut r = Rng::new(7);
            (0..100).map(|_| mutate(&mut r, &seeds)).collect()
        };
        let b: Vec<Vec<u8>> = {
            let mut r = Rng::new(7);
            (0..100).map(|_| mutate(&mut r, &seeds)).collect()
        };
        assert_eq!(a, b);
        assert!(a.iter().any(|x| !seeds.contains(x)), "nothing was mutated");
    }

    #[test]
    fn a_panicking_target_is_reported_with_its_input_number() {
        let seeds = vec![vec![1u8; 16]];
        let r = catch_unwind(|| {
            run("demo", 1, &seeds, 1000, |b| {
                assert!(b.len() != 3, "three");
                true
            });
        });
        let msg = r
            .err()
            .and_then(|p| p.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        assert!(msg.contains("FUZZ_ONLY="), "{msg}");
    }
}
