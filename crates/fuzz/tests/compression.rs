//! The decoders of compressed bytes (`longship::fuzzing`): an `Encoded`
//! entry's payload comes from whichever member forwarded the proposal, and
//! a snapshot's compressed block stream from the leader that streamed it.
//! Any input gets a value or an error, never a panic, and never more than
//! the bounds (64 MiB per entry, 256 times its compressed size).

use longship::Compression;
use longship::fuzzing::{compress_entry, compress_stream, decompress_entry, decompress_stream};
use longship_fuzz::{DEFAULT_INPUTS, inputs, run};

const KINDS: [Compression; 2] = [Compression::Lz4, Compression::Snappy];

fn sample(n: usize) -> Vec<u8> {
    (0..n)
        .map(|i| b"set key value "[i % 14] ^ (i / 97) as u8)
        .collect()
}

#[test]
fn entry_payloads() {
    let mut seeds = Vec::new();
    for c in KINDS {
        for n in [300, 5000, 40_000] {
            let cmd = sample(n);
            let p = compress_entry(c, &cmd).expect("compressible");
            assert_eq!(decompress_entry(&p).unwrap(), cmd, "round trip");
            seeds.push(p);
        }
    }
    run(
        "compressed entry payload",
        11,
        &seeds,
        inputs(DEFAULT_INPUTS),
        |input| match decompress_entry(input) {
            Ok(out) => {
                assert!(out.len() <= 64 << 20);
                assert!(out.len() as u64 <= 256 * input.len() as u64);
                true
            }
            Err(_) => false,
        },
    );
}

#[test]
fn snapshot_block_streams() {
    for c in KINDS {
        let mut seeds = Vec::new();
        for n in [0, 100, 70_000, 200_000] {
            let data = sample(n);
            let s = compress_stream(c, &data);
            assert_eq!(decompress_stream(c, &s, u64::MAX).unwrap(), data);
            seeds.push(s);
        }
        run(
            &format!("snapshot block stream ({c:?})"),
            12,
            &seeds,
            inputs(DEFAULT_INPUTS / 5),
            |input| decompress_stream(c, input, 1 << 22).is_ok(),
        );
    }
}
