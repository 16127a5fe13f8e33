//! Tests of the binary codec (docs/formats.md, "Wire and entry codec"):
//! round-trips, arbitrary and mutated input, truncation, checksums, limits.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use longship_raft::codec::{
    self, DecodeError, Decoder, Limits, decode_batch, decode_config_change, decode_entry,
    decode_hard_state, decode_membership, decode_message, decode_snapshot_meta, encode_batch,
    encode_config_change, encode_entry, encode_hard_state, encode_membership, encode_message,
    encode_snapshot_meta, encoded_entry_size, put_u32_le, put_uvarint,
};
use longship_raft::{
    ConfigChange, ConfigChangeType, Entry, EntryType, HardState, Index, MESSAGE_BATCH_VERSION,
    Membership, Message, MessageBatch, MessageType, ReplicaId, ShardId, SnapshotMeta, Term,
};
use proptest::prelude::*;

// ---------------------------------------------------------------------------
// Generators.

/// Mostly small values (the common case the uvarints are for), sometimes
/// zero, sometimes anything.
fn int() -> impl Strategy<Value = u64> {
    prop_oneof![
        2 => Just(0u64),
        4 => 1u64..300,
        2 => 1u64..(1 << 40),
        1 => any::<u64>(),
    ]
}

fn entry_type() -> impl Strategy<Value = EntryType> {
    (0u8..5).prop_map(|v| EntryType::from_u8(v).unwrap())
}

fn entry() -> impl Strategy<Value = Entry> {
    (
        (int(), int(), entry_type()),
        (int(), int(), int(), int()),
        proptest::collection::vec(any::<u8>(), 0..48),
    )
        .prop_map(
            |((term, index, entry_type), (key, client_id, series_id, responded_to), cmd)| Entry {
                term: Term(term),
                index: Index(index),
                entry_type,
                key,
                client_id,
                series_id,
                responded_to,
                cmd: Bytes::from(cmd),
            },
        )
}

fn hard_state() -> impl Strategy<Value = HardState> {
    (int(), int(), int()).prop_map(|(t, v, c)| HardState {
        term: Term(t),
        vote: ReplicaId(v),
        commit: Index(c),
    })
}

fn address() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "[a-z0-9.-]{1,20}:[0-9]{1,5}",
        1 => ".{0,12}",
    ]
}

/// Disjoint sets: each id is assigned to exactly one of the four sets.
fn membership() -> impl Strategy<Value = Membership> {
    (
        int(),
        proptest::collection::btree_map(int(), (0u8..4, address()), 0..8),
    )
        .prop_map(|(cc_id, members)| {
            let mut m = Membership {
                config_change_id: Index(cc_id),
                ..Membership::default()
            };
            for (id, (set, addr)) in members {
                let id = ReplicaId(id);
                match set {
                    0 => drop(m.voters.insert(id, addr)),
                    1 => drop(m.non_votings.insert(id, addr)),
                    2 => drop(m.witnesses.insert(id, addr)),
                    _ => drop(m.removed.insert(id)),
                }
            }
            m
        })
}

fn snapshot_meta() -> impl Strategy<Value = SnapshotMeta> {
    (int(), int(), membership(), int(), any::<bool>(), int()).prop_map(
        |(index, term, membership, on_disk, witness, file_size)| SnapshotMeta {
            index: Index(index),
            term: Term(term),
            membership,
            on_disk_index: Index(on_disk),
            witness,
            file_size,
        },
    )
}

fn config_change() -> impl Strategy<Value = ConfigChange> {
    ((0u8..4), int(), address(), int()).prop_map(|(t, id, address, cc_id)| ConfigChange {
        change_type: ConfigChangeType::from_u8(t).unwrap(),
        replica_id: ReplicaId(id),
        address,
        config_change_id: Index(cc_id),
    })
}

/// Every message type that may travel between hosts.
fn wire_message_types() -> Vec<MessageType> {
    (0u8..=255)
        .filter_map(MessageType::from_u8)
        .filter(|t| !t.is_local())
        .collect()
}

fn message() -> impl Strategy<Value = Message> {
    (
        proptest::sample::select(wire_message_types()),
        (int(), int(), int()),
        (int(), int(), int(), int()),
        (any::<bool>(), int(), int(), int()),
        proptest::collection::vec(entry(), 0..4),
        proptest::option::weighted(0.2, snapshot_meta()),
    )
        .prop_map(
            |(
                msg_type,
                (shard, from, to),
                (term, log_term, log_index, commit),
                (reject, hint, hint_term, context),
                entries,
                snapshot,
            )| Message {
                msg_type,
                shard_id: ShardId(shard),
                from: ReplicaId(from),
                to: ReplicaId(to),
                term: Term(term),
                log_term: Term(log_term),
                log_index: Index(log_index),
                commit: Index(commit),
                reject,
                hint: Index(hint),
                hint_term: Term(hint_term),
                entries,
                snapshot,
                context,
            },
        )
}

fn batch() -> impl Strategy<Value = MessageBatch> {
    (
        any::<u64>(),
        address(),
        proptest::collection::vec(message(), 0..6),
    )
        .prop_map(|(deployment_id, source_address, messages)| MessageBatch {
            deployment_id,
            source_address,
            bin_ver: MESSAGE_BATCH_VERSION,
            messages,
        })
}

// ---------------------------------------------------------------------------
// Helpers.

fn limits() -> Limits {
    Limits::default()
}

fn enc<T>(v: &T, f: fn(&T, &mut Vec<u8>)) -> Vec<u8> {
    let mut out = Vec::new();
    f(v, &mut out);
    out
}

/// Decodes the whole of `buf` with `f`.
fn dec<T>(buf: &[u8], f: fn(&mut Decoder<'_>) -> Result<T, DecodeError>) -> Result<T, DecodeError> {
    codec::decode_exact(buf, &limits(), f)
}

/// Re-seals a batch body (everything but the CRC) with a fresh CRC32C.
fn reseal(mut body: Vec<u8>) -> Vec<u8> {
    let crc = crc32c::crc32c(&body);
    put_u32_le(&mut body, crc);
    body
}

fn without_crc(buf: &[u8]) -> Vec<u8> {
    buf[..buf.len() - 4].to_vec()
}

/// Asserts that every strict prefix of `buf` fails to decode with `Truncated`.
fn assert_prefixes_truncated<T: std::fmt::Debug>(
    buf: &[u8],
    f: fn(&mut Decoder<'_>) -> Result<T, DecodeError>,
) {
    for n in 0..buf.len() {
        let r = f(&mut Decoder::new(&buf[..n], limits()));
        assert_eq!(
            r.as_ref().err(),
            Some(&DecodeError::Truncated),
            "prefix {n}/{}: {r:?}",
            buf.len()
        );
    }
}

/// Decodes arbitrary bytes; whatever decodes must re-encode to exactly the
/// bytes consumed (the encoding is canonical).
fn check_arbitrary<T>(
    buf: &[u8],
    decode: fn(&mut Decoder<'_>) -> Result<T, DecodeError>,
    encode: fn(&T, &mut Vec<u8>),
) {
    let mut d = Decoder::new(buf, limits());
    if let Ok(v) = decode(&mut d) {
        let used = d.position();
        assert_eq!(enc(&v, encode), &buf[..used]);
    }
}

fn sample_entry(cmd_len: usize) -> Entry {
    Entry {
        term: Term(5),
        index: Index(1_000_000),
        entry_type: EntryType::Normal,
        key: 1_000_000,
        client_id: 0,
        series_id: 0,
        responded_to: 0,
        cmd: Bytes::from(vec![0xab; cmd_len]),
    }
}

fn sample_batch() -> MessageBatch {
    let mut hb = Message::new(
        MessageType::Heartbeat,
        ShardId(7),
        ReplicaId(1),
        ReplicaId(2),
    );
    hb.term = Term(3);
    hb.commit = Index(99);
    let mut rep = Message::new(
        MessageType::Replicate,
        ShardId(8),
        ReplicaId(1),
        ReplicaId(3),
    );
    rep.term = Term(3);
    rep.log_term = Term(3);
    rep.log_index = Index(41);
    rep.entries = vec![sample_entry(16), sample_entry(0)];
    let mut snap = Message::new(
        MessageType::InstallSnapshot,
        ShardId(9),
        ReplicaId(1),
        ReplicaId(2),
    );
    snap.snapshot = Some(SnapshotMeta {
        index: Index(100),
        term: Term(2),
        membership: Membership::with_voters([(1, "a:1"), (2, "b:2")]),
        ..SnapshotMeta::default()
    });
    MessageBatch {
        deployment_id: 0xdead_beef,
        source_address: "host-a:7000".into(),
        bin_ver: MESSAGE_BATCH_VERSION,
        messages: vec![hb, rep, snap],
    }
}

// ---------------------------------------------------------------------------
// Round-trips.

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn entry_round_trips(e in entry()) {
        let buf = enc(&e, encode_entry);
        prop_assert_eq!(buf.len(), encoded_entry_size(&e));
        prop_assert_eq!(dec(&buf, decode_entry)?, e);
    }

    #[test]
    fn entry_list_round_trips(es in proptest::collection::vec(entry(), 0..8)) {
        let mut buf = Vec::new();
        codec::encode_entries(&es, &mut buf);
        prop_assert_eq!(dec(&buf, codec::decode_entries)?, es);
    }

    #[test]
    fn hard_state_round_trips(h in hard_state()) {
        prop_assert_eq!(dec(&enc(&h, encode_hard_state), decode_hard_state)?, h);
    }

    #[test]
    fn membership_round_trips(m in membership()) {
        prop_assert_eq!(dec(&enc(&m, encode_membership), decode_membership)?, m);
    }

    #[test]
    fn snapshot_meta_round_trips(s in snapshot_meta()) {
        prop_assert_eq!(dec(&enc(&s, encode_snapshot_meta), decode_snapshot_meta)?, s);
    }

    #[test]
    fn config_change_round_trips(cc in config_change()) {
        prop_assert_eq!(decode_config_change(&encode_config_change(&cc))?, cc);
    }

    #[test]
    fn message_round_trips(m in message()) {
        prop_assert_eq!(dec(&enc(&m, encode_message), decode_message)?, m);
    }

    #[test]
    fn batch_round_trips(b in batch()) {
        prop_assert_eq!(decode_batch(&encode_batch(&b), &limits())?, b);
    }
}

#[test]
fn batch_encoder_always_writes_the_current_version() {
    let b = MessageBatch {
        bin_ver: 0,
        ..sample_batch()
    };
    let got = decode_batch(&encode_batch(&b), &limits()).unwrap();
    assert_eq!(got.bin_ver, MESSAGE_BATCH_VERSION);
}

// ---------------------------------------------------------------------------
// Sizes.

#[test]
fn small_entries_are_compact() {
    // Term 5, index 1e6, key 1e6, no session: 1 + 1 + 3 + 3 + 1 + 16.
    let e = sample_entry(16);
    assert_eq!(encoded_entry_size(&e), 25);
    assert_eq!(enc(&e, encode_entry).len(), 25);
    let e = sample_entry(1024);
    assert_eq!(encoded_entry_size(&e), 1034);
    let noop = Entry {
        term: Term(1),
        index: Index(1),
        entry_type: EntryType::NoOp,
        ..Entry::default()
    };
    assert_eq!(encoded_entry_size(&noop), 4);
}

#[test]
fn heartbeats_are_compact() {
    let mut hb = Message::new(
        MessageType::Heartbeat,
        ShardId(1000),
        ReplicaId(1),
        ReplicaId(2),
    );
    hb.term = Term(7);
    hb.commit = Index(123_456);
    // type, fields, shard (2), from, to, term, commit (3).
    assert_eq!(enc(&hb, encode_message).len(), 10);
}

// ---------------------------------------------------------------------------
// Arbitrary and mutated input: never panics; what decodes is canonical.

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_bytes_never_panic(buf in proptest::collection::vec(any::<u8>(), 0..200)) {
        check_arbitrary(&buf, decode_entry, encode_entry);
        check_arbitrary(&buf, codec::decode_entries, |es: &Vec<Entry>, out| codec::encode_entries(es, out));
        check_arbitrary(&buf, decode_hard_state, encode_hard_state);
        check_arbitrary(&buf, decode_membership, encode_membership);
        check_arbitrary(&buf, decode_snapshot_meta, encode_snapshot_meta);
        check_arbitrary(&buf, decode_message, encode_message);
        if let Ok(cc) = decode_config_change(&buf) {
            prop_assert_eq!(encode_config_change(&cc), buf.clone());
        }
        let _ = decode_batch(&buf, &limits());
        // Past magic, version and CRC, so the body parser sees the bytes.
        let mut sealed = b"LSMB".to_vec();
        put_u32_le(&mut sealed, MESSAGE_BATCH_VERSION);
        sealed.extend_from_slice(&buf);
        let sealed = reseal(sealed);
        if let Ok(b) = decode_batch(&sealed, &limits()) {
            prop_assert_eq!(encode_batch(&b), sealed);
        }
    }

    #[test]
    fn mutated_messages_never_panic(
        m in message(),
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
    ) {
        let mut buf = enc(&m, encode_message);
        for (at, byte) in edits {
            let i = at.index(buf.len());
            buf[i] = byte;
        }
        check_arbitrary(&buf, decode_message, encode_message);
    }

    #[test]
    fn mutated_batch_bodies_never_panic(
        b in batch(),
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
    ) {
        let mut body = without_crc(&encode_batch(&b));
        for (at, byte) in edits {
            let i = 8 + at.index(body.len() - 8);
            body[i] = byte;
        }
        let sealed = reseal(body);
        if let Ok(got) = decode_batch(&sealed, &limits()) {
            prop_assert_eq!(encode_batch(&got), sealed);
        }
    }

    #[test]
    fn any_bit_flip_in_a_batch_is_detected(b in batch(), at in any::<prop::sample::Index>(), bit in 0u8..8) {
        let mut buf = encode_batch(&b);
        let i = at.index(buf.len());
        buf[i] ^= 1 << bit;
        prop_assert!(decode_batch(&buf, &limits()).is_err());
    }
}

// ---------------------------------------------------------------------------
// Truncation.

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn every_prefix_is_truncated(
        e in entry(),
        h in hard_state(),
        s in snapshot_meta(),
        m in message(),
        cc in config_change(),
    ) {
        assert_prefixes_truncated(&enc(&e, encode_entry), decode_entry);
        assert_prefixes_truncated(&enc(&h, encode_hard_state), decode_hard_state);
        assert_prefixes_truncated(&enc(&s.membership, encode_membership), decode_membership);
        assert_prefixes_truncated(&enc(&s, encode_snapshot_meta), decode_snapshot_meta);
        assert_prefixes_truncated(&enc(&m, encode_message), decode_message);
        let buf = encode_config_change(&cc);
        for n in 0..buf.len() {
            prop_assert_eq!(decode_config_change(&buf[..n]), Err(DecodeError::Truncated));
        }
    }

    #[test]
    fn every_batch_prefix_is_rejected(b in batch()) {
        let buf = encode_batch(&b);
        for n in 0..buf.len() {
            prop_assert!(decode_batch(&buf[..n], &limits()).is_err(), "prefix {}", n);
        }
    }
}

// ---------------------------------------------------------------------------
// Lengths claiming huge sizes: rejected before allocating.

fn uvarint_bytes(v: u64) -> Vec<u8> {
    let mut out = Vec::new();
    put_uvarint(&mut out, v);
    out
}

#[test]
fn huge_entry_count_is_rejected() {
    let buf = uvarint_bytes(1 << 60);
    assert!(buf.len() <= 10);
    assert!(matches!(
        dec(&buf, codec::decode_entries),
        Err(DecodeError::TooLarge { what: "entry count", len, .. }) if len == 1 << 60
    ));
    // Within the limit but beyond the input: truncated, not allocated.
    let unlimited = Limits {
        max_entries: u64::MAX,
        ..limits()
    };
    assert_eq!(
        codec::decode_entries(&mut Decoder::new(&buf, unlimited)),
        Err(DecodeError::Truncated)
    );
}

#[test]
fn huge_message_entry_count_is_rejected() {
    // Replicate, fields = entries, shard 1, from 1, to 2, count 2^60.
    let mut buf = vec![MessageType::Replicate as u8, 1 << 4, 1, 1, 2];
    buf.extend(uvarint_bytes(1 << 60));
    assert!(matches!(
        dec(&buf, decode_message),
        Err(DecodeError::TooLarge {
            what: "entry count",
            ..
        })
    ));
}

#[test]
fn huge_payload_is_rejected() {
    // Normal entry, term 1, index 1, payload length 2^60.
    let mut buf = vec![0, 1, 1];
    buf.extend(uvarint_bytes(1 << 60));
    assert!(matches!(
        dec(&buf, decode_entry),
        Err(DecodeError::TooLarge {
            what: "entry payload",
            ..
        })
    ));
    let small = Limits {
        max_payload_bytes: 15,
        ..limits()
    };
    let e = enc(&sample_entry(16), encode_entry);
    assert!(matches!(
        decode_entry(&mut Decoder::new(&e, small)),
        Err(DecodeError::TooLarge {
            len: 16,
            max: 15,
            ..
        })
    ));
}

#[test]
fn huge_strings_and_member_counts_are_rejected() {
    let mut cc = vec![1, 0, 1, 0];
    cc.extend(uvarint_bytes(u64::MAX));
    assert!(matches!(
        decode_config_change(&cc),
        Err(DecodeError::TooLarge {
            what: "replica address",
            ..
        })
    ));
    let long = ConfigChange {
        change_type: ConfigChangeType::AddReplica,
        replica_id: ReplicaId(1),
        address: "x".repeat(257),
        config_change_id: Index(0),
    };
    assert!(matches!(
        decode_config_change(&encode_config_change(&long)),
        Err(DecodeError::TooLarge {
            len: 257,
            max: 256,
            ..
        })
    ));
    let mut m = vec![0];
    m.extend(uvarint_bytes(1 << 40));
    assert!(matches!(
        dec(&m, decode_membership),
        Err(DecodeError::TooLarge {
            what: "membership set size",
            ..
        })
    ));
}

#[test]
fn huge_batch_message_count_is_rejected() {
    let mut body = b"LSMB".to_vec();
    put_u32_le(&mut body, MESSAGE_BATCH_VERSION);
    body.extend_from_slice(&7u64.to_le_bytes());
    body.push(0); // empty source address
    body.extend(uvarint_bytes(1 << 60));
    let buf = reseal(body);
    assert!(matches!(
        decode_batch(&buf, &limits()),
        Err(DecodeError::TooLarge {
            what: "message count",
            ..
        })
    ));
}

// ---------------------------------------------------------------------------
// Trailing bytes, unknown values, local types, framing errors.

#[test]
fn trailing_bytes_are_rejected() {
    let mut e = enc(&sample_entry(16), encode_entry);
    e.push(0);
    assert_eq!(dec(&e, decode_entry), Err(DecodeError::TrailingBytes(1)));

    let mut cc = encode_config_change(&ConfigChange {
        change_type: ConfigChangeType::RemoveReplica,
        replica_id: ReplicaId(3),
        address: String::new(),
        config_change_id: Index(9),
    });
    cc.extend_from_slice(&[1, 2]);
    assert_eq!(
        decode_config_change(&cc),
        Err(DecodeError::TrailingBytes(2))
    );

    let mut body = without_crc(&encode_batch(&sample_batch()));
    body.push(0);
    assert_eq!(
        decode_batch(&reseal(body), &limits()),
        Err(DecodeError::TrailingBytes(1))
    );
}

#[test]
fn unknown_enum_values_are_rejected() {
    for t in 5u8..16 {
        let mut e = enc(&sample_entry(1), encode_entry);
        e[0] = (e[0] & 0xf0) | t;
        assert_eq!(
            dec(&e, decode_entry),
            Err(DecodeError::Invalid("unknown entry type"))
        );
    }
    let hb = Message::new(
        MessageType::Heartbeat,
        ShardId(1),
        ReplicaId(1),
        ReplicaId(2),
    );
    for t in 18u8..=255 {
        let mut m = enc(&hb, encode_message);
        m[0] = t;
        assert_eq!(
            dec(&m, decode_message),
            Err(DecodeError::Invalid("unknown message type"))
        );
    }
    let mut m = enc(&hb, encode_message);
    m[1] = 0x80;
    m.insert(2, 0x08); // field bit 10
    assert_eq!(
        dec(&m, decode_message),
        Err(DecodeError::Invalid("unknown message field bits"))
    );
    let cc = ConfigChange {
        change_type: ConfigChangeType::AddWitness,
        replica_id: ReplicaId(4),
        address: "w:1".into(),
        config_change_id: Index(0),
    };
    let mut buf = encode_config_change(&cc);
    buf[1] = 4;
    assert_eq!(
        decode_config_change(&buf),
        Err(DecodeError::Invalid("unknown config change type"))
    );
    let mut buf = encode_config_change(&cc);
    buf[0] = 2;
    assert_eq!(
        decode_config_change(&buf),
        Err(DecodeError::UnsupportedVersion(2))
    );
    let s = SnapshotMeta::default();
    let mut buf = enc(&s, encode_snapshot_meta);
    buf[2] = 0x02;
    assert!(matches!(
        dec(&buf, decode_snapshot_meta),
        Err(DecodeError::Invalid(_))
    ));
}

#[test]
fn local_message_types_are_rejected() {
    for t in [MessageType::Unreachable, MessageType::SnapshotStatus] {
        assert!(t.is_local());
        let m = Message::new(t, ShardId(1), ReplicaId(2), ReplicaId(1));
        assert_eq!(
            dec(&enc(&m, encode_message), decode_message),
            Err(DecodeError::Invalid("local-only message type on the wire"))
        );
        let b = MessageBatch {
            messages: vec![m],
            ..sample_batch()
        };
        assert!(matches!(
            decode_batch(&encode_batch(&b), &limits()),
            Err(DecodeError::Invalid(_))
        ));
    }
}

#[test]
fn non_canonical_encodings_are_rejected() {
    // Key flagged present but zero.
    assert!(matches!(
        dec(&[0x10, 1, 1, 0, 0], decode_entry),
        Err(DecodeError::Invalid(_))
    ));
    // Entries flagged present but the list is empty.
    let buf = [MessageType::Replicate as u8, 1 << 4, 1, 1, 2, 0];
    assert!(matches!(
        dec(&buf, decode_message),
        Err(DecodeError::Invalid(_))
    ));
    // Zero-padded uvarint for the term.
    assert!(matches!(
        dec(&[0x00, 0x81, 0x00, 1, 0], decode_entry),
        Err(DecodeError::Invalid("non-canonical uvarint"))
    ));
}

#[test]
fn inconsistent_memberships_are_rejected() {
    let mut m = Membership::with_voters([(1, "a"), (2, "b")]);
    m.removed.insert(ReplicaId(2));
    assert!(!m.is_consistent());
    assert_eq!(
        dec(&enc(&m, encode_membership), decode_membership),
        Err(DecodeError::Invalid("membership sets overlap"))
    );
    let mut m = Membership::with_voters([(1, "a")]);
    m.witnesses.insert(ReplicaId(1), "w".into());
    assert!(dec(&enc(&m, encode_membership), decode_membership).is_err());
    // Duplicate ids within one set: config id 0, two voters both id 5.
    let buf = [0, 2, 5, 0, 5, 0, 0, 0, 0];
    assert_eq!(
        dec(&buf, decode_membership),
        Err(DecodeError::Invalid(
            "membership ids not strictly ascending"
        ))
    );
    let voters: BTreeMap<ReplicaId, String> = BTreeMap::new();
    let ok = Membership {
        voters,
        removed: BTreeSet::from([ReplicaId(9)]),
        ..Membership::default()
    };
    assert_eq!(dec(&enc(&ok, encode_membership), decode_membership), Ok(ok));
}

#[test]
fn batch_framing_errors_are_specific() {
    let good = encode_batch(&sample_batch());
    assert_eq!(decode_batch(&good, &limits()), Ok(sample_batch()));

    let mut bad = good.clone();
    bad[0] = b'X';
    assert_eq!(decode_batch(&bad, &limits()), Err(DecodeError::BadMagic));

    let mut bad = good.clone();
    bad[4] = 9;
    assert_eq!(
        decode_batch(&bad, &limits()),
        Err(DecodeError::UnsupportedVersion(9))
    );

    let mut bad = good.clone();
    let n = bad.len();
    bad[n - 10] ^= 0x40;
    assert!(matches!(
        decode_batch(&bad, &limits()),
        Err(DecodeError::BadChecksum { .. })
    ));

    assert_eq!(decode_batch(&[], &limits()), Err(DecodeError::Truncated));
    assert_eq!(
        decode_batch(&good[..10], &limits()),
        Err(DecodeError::Truncated)
    );
    let limited = Limits {
        max_messages: 2,
        ..limits()
    };
    assert!(matches!(
        decode_batch(&good, &limited),
        Err(DecodeError::TooLarge {
            what: "message count",
            len: 3,
            max: 2
        })
    ));
}

#[test]
fn errors_read_well() {
    let e = DecodeError::TooLarge {
        what: "entry payload",
        len: 100,
        max: 10,
    };
    assert_eq!(
        e.to_string(),
        "entry payload of 100 exceeds the limit of 10"
    );
    assert_eq!(
        DecodeError::TrailingBytes(3).to_string(),
        "3 unexpected trailing bytes after the value"
    );
}
