//! Committed batches applied by the step worker itself
//! (`Config::max_inline_apply_bytes`): the same results, in the same order,
//! as through the apply workers, with large batches still handed off.

mod common;

use std::sync::atomic::Ordering;

use common::*;
use longship::{Config, ShardId};

fn inline_config(shard: u64, replica: u64) -> Config {
    Config {
        max_inline_apply_bytes: 64 << 10,
        ..config(shard, replica)
    }
}

/// Proposes `n` commands at once on the leader, every seventh one larger
/// than the inline bound, and checks each result: the counter the state
/// machine returns is the command's position, so any reordering between
/// inline and handed-off batches shows.
fn pipelined_results_in_order(c: &TestCluster, leader: u64, n: u64) {
    let s = c.nh(leader).get_noop_session(ShardId(1));
    let base = String::from_utf8(c.read(leader, 1, "count"))
        .unwrap()
        .parse::<u64>()
        .unwrap();
    let handles: Vec<_> = (0..n)
        .map(|i| {
            let cmd = if i % 7 == 3 {
                format!("set big{i} {}", "x".repeat(100 << 10))
            } else {
                format!("set k{i} v{i}")
            };
            c.nh(leader).propose(&s, cmd.into_bytes(), TIMEOUT).unwrap()
        })
        .collect();
    for (i, h) in handles.into_iter().enumerate() {
        let r = h.wait().expect("proposal applied");
        assert_eq!(r.value, base + i as u64 + 1, "result of proposal {i}");
    }
}

#[test]
fn inline_applies_keep_order_and_results_with_handed_off_batches() {
    let c = TestCluster::new(3);
    c.start_shard_with(&[1, 2, 3], |r| inline_config(1, r));
    let leader = c.wait_leader(1);
    pipelined_results_in_order(&c, leader, 300);
    // Every replica applied everything, the same way.
    for h in 1..=3 {
        wait_until("replica applied all", TIMEOUT, || {
            c.nh(h)
                .stale_read(ShardId(1), b"get k299")
                .is_ok_and(|v| v == b"v299")
        });
        let m = c.nh(h).metrics();
        assert!(
            m.inline_applies.load(Ordering::Relaxed) > 0,
            "host {h}: no batch was applied inline"
        );
    }
    let counts: Vec<Vec<u8>> = (1..=3)
        .map(|h| c.nh(h).stale_read(ShardId(1), b"count").unwrap())
        .collect();
    assert!(counts.windows(2).all(|w| w[0] == w[1]), "{counts:?}");
}

#[test]
fn without_the_option_every_batch_goes_to_the_apply_workers() {
    let c = TestCluster::new(3);
    c.start_shard(1, &[1, 2, 3]);
    let leader = c.wait_leader(1);
    pipelined_results_in_order(&c, leader, 50);
    for h in 1..=3 {
        assert_eq!(c.nh(h).metrics().inline_applies.load(Ordering::Relaxed), 0);
    }
}
