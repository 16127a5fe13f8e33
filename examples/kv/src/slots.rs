//! Redis Cluster hash slots and their placement on shards.
//!
//! A key belongs to one of [`SLOTS`] (16,384) hash slots: CRC16 (XMODEM) of
//! the key, or of its hash tag — the bytes between the first `{` and the
//! first `}` after it, when that is not empty — modulo 16,384, exactly as
//! Redis Cluster computes it. Slots map onto the shards in contiguous
//! ranges: slot `s` lives on shard `s * shards / 16384 + 1`, so shard `i`
//! (from 1) holds slots `ceil((i-1) * 16384 / shards) ..= ceil(i * 16384 /
//! shards) - 1`. Keys with the same hash tag are always on the same shard.

use longship::ShardId;

/// Number of hash slots.
pub const SLOTS: u64 = 16_384;

/// CRC16 with the XMODEM parameters (polynomial 0x1021, initial value 0),
/// the checksum Redis Cluster hashes keys with.
pub fn crc16(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &b in data {
        crc ^= (b as u16) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// The part of a key that is hashed: its `{hash tag}` when it has a
/// non-empty one, else the whole key.
pub fn hash_tag(key: &[u8]) -> &[u8] {
    if let Some(open) = key.iter().position(|&b| b == b'{')
        && let Some(len) = key[open + 1..].iter().position(|&b| b == b'}')
        && len > 0
    {
        return &key[open + 1..open + 1 + len];
    }
    key
}

/// The hash slot of a key (0..16384).
pub fn key_slot(key: &[u8]) -> u16 {
    (crc16(hash_tag(key)) as u64 % SLOTS) as u16
}

/// The shard (numbered from 1) that holds `slot` among `shards` shards.
pub fn shard_of_slot(slot: u16, shards: u64) -> ShardId {
    ShardId(slot as u64 * shards / SLOTS + 1)
}

/// The shard of a key among `shards` shards.
pub fn shard_of(key: &[u8], shards: u64) -> ShardId {
    shard_of_slot(key_slot(key), shards)
}

/// The slots of `shard` (first and last, inclusive), or `None` when it
/// holds none (only when there are more shards than slots).
pub fn slot_range(shard: ShardId, shards: u64) -> Option<(u16, u16)> {
    let i = shard.0;
    if i == 0 || i > shards {
        return None;
    }
    let start = ((i - 1) * SLOTS).div_ceil(shards);
    let end = (i * SLOTS).div_ceil(shards);
    (start < end).then(|| (start as u16, (end - 1) as u16))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc16_and_slots_match_redis_cluster() {
        // The check value of CRC-16/XMODEM.
        assert_eq!(crc16(b"123456789"), 0x31c3);
        // Values from Redis's `CLUSTER KEYSLOT`.
        assert_eq!(key_slot(b"foo"), 12182);
        assert_eq!(key_slot(b"hello"), 866);
        assert_eq!(key_slot(b"somekey"), 11058);
        assert_eq!(key_slot(b""), 0);
        assert_eq!(key_slot(b"{user1000}.following"), key_slot(b"user1000"));
        assert_eq!(key_slot(b"{user1000}.followers"), key_slot(b"user1000"));
        // An empty tag hashes the whole key; only the first `{` counts.
        assert_eq!(key_slot(b"foo{}{bar}"), crc16(b"foo{}{bar}") % 16384);
        assert_eq!(key_slot(b"foo{{bar}}zap"), key_slot(b"{bar"));
        assert_eq!(key_slot(b"foo{bar}{zap}"), key_slot(b"bar"));
        assert_eq!(key_slot(b"{}"), crc16(b"{}") % 16384);
        assert_eq!(key_slot(b"a{b"), crc16(b"a{b") % 16384);
    }

    #[test]
    fn slot_ranges_partition_the_slots_in_order() {
        for shards in [1u64, 2, 3, 4, 7, 16, 100, 16_383, 16_384, 20_000] {
            let mut next: u64 = 0;
            for i in 1..=shards {
                let Some((a, b)) = slot_range(ShardId(i), shards) else {
                    assert!(shards > SLOTS, "{shards} shards: shard {i} has no slot");
                    continue;
                };
                assert_eq!(a as u64, next, "{shards} shards: shard {i}");
                assert!(a <= b);
                for s in [a, b] {
                    assert_eq!(shard_of_slot(s, shards), ShardId(i));
                }
                next = b as u64 + 1;
            }
            assert_eq!(next, SLOTS, "{shards} shards cover every slot");
        }
        assert_eq!(slot_range(ShardId(1), 4), Some((0, 4095)));
        assert_eq!(slot_range(ShardId(4), 4), Some((12288, 16383)));
        assert_eq!(slot_range(ShardId(0), 4), None);
        assert_eq!(slot_range(ShardId(5), 4), None);
    }
}
