use super::*;

fn c(s: &str) -> Cmd {
    s.split(' ').map(|a| a.as_bytes().to_vec()).collect()
}

fn bulk(s: &str) -> Reply {
    Reply::Bulk(s.as_bytes().to_vec())
}

/// Applies one batch of commands stamped `at` (ms).
fn run(sm: &mut KvStateMachine, at: u64, cmds: &[&str]) -> Vec<Reply> {
    sm.apply_batch(Batch {
        stamp_ms: at,
        max_len: 1 << 20,
        cmds: cmds.iter().map(|s| c(s)).collect(),
    })
}

fn one(sm: &mut KvStateMachine, at: u64, cmd: &str) -> Reply {
    run(sm, at, &[cmd]).remove(0)
}

/// A lookup of read commands by a node whose clock says `probe`.
fn lookup(sm: &KvStateMachine, probe: u64, cmds: &[&str]) -> Vec<CmdResult> {
    let cmds: Vec<Cmd> = cmds.iter().map(|s| c(s)).collect();
    decode_results(&sm.query(&encode_batch(probe, 1 << 20, &cmds)).unwrap()).unwrap()
}

fn all_replies() -> Vec<CmdResult> {
    vec![
        CmdResult::Reply(Reply::ok()),
        CmdResult::Reply(Reply::Error("ERR x".into())),
        CmdResult::Reply(Reply::Int(-7)),
        CmdResult::Reply(bulk("val")),
        CmdResult::Reply(Reply::Nil),
        CmdResult::Reply(Reply::NilArray),
        CmdResult::Reply(Reply::Array(vec![
            Reply::Int(1),
            Reply::Array(vec![bulk("a"), Reply::Nil]),
        ])),
        CmdResult::Reply(Reply::Map(vec![
            (bulk("f"), bulk("v")),
            (bulk("g"), Reply::Nil),
        ])),
        CmdResult::NeedsClock,
    ]
}

#[test]
fn batches_round_trip_and_every_prefix_is_refused() {
    let cmds = vec![c("SET k v EX 10"), c("GET k"), vec![], c("DEL a b")];
    let enc = encode_batch(1234, 99, &cmds);
    assert_eq!(
        enc.len(),
        BATCH_HEADER_BYTES + cmds.iter().map(|x| cmd_encoded_len(x)).sum::<usize>()
    );
    let b = decode_batch(&enc).unwrap();
    assert_eq!((b.stamp_ms, b.max_len, &b.cmds), (1234, 99, &cmds));
    for cut in 0..enc.len() {
        assert_eq!(decode_batch(&enc[..cut]), None, "prefix of {cut} bytes");
    }
    let mut longer = enc.clone();
    longer.push(0);
    assert_eq!(decode_batch(&longer), None);
    // A count far larger than the bytes present allocates nothing.
    let mut huge = vec![BATCH_MAGIC, BATCH_VERSION];
    huge.extend_from_slice(&[0; 16]);
    huge.extend_from_slice(&u64::MAX.to_le_bytes());
    assert_eq!(decode_batch(&huge), None);
    let mut old_version = enc;
    old_version[1] = 1;
    assert_eq!(decode_batch(&old_version), None);
}

#[test]
fn results_round_trip_and_every_prefix_is_refused() {
    let results = all_replies();
    let enc = encode_results(&results);
    assert_eq!(decode_results(&enc), Some(results));
    for cut in 0..enc.len() {
        assert_eq!(decode_results(&enc[..cut]), None, "prefix of {cut} bytes");
    }
    // Nesting deeper than the bound is refused, not recursed into.
    let mut deep = Reply::Int(1);
    for _ in 0..20 {
        deep = Reply::Array(vec![deep]);
    }
    assert_eq!(
        decode_results(&encode_results(&[CmdResult::Reply(deep)])),
        None
    );
}

fn full_state() -> KvStateMachine {
    let mut sm = KvStateMachine::default();
    run(
        &mut sm,
        1000,
        &[
            "SET s v",
            "SET t v PX 5000",
            "HSET h f1 v1 f2 v2",
            "PEXPIRE h 9000",
            "SET gone x PX 1",
        ],
    );
    sm
}

#[test]
fn random_bytes_never_panic() {
    // xorshift: deterministic pseudo-random inputs, some a valid prefix
    // with the rest corrupted.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let valid_batch = encode_batch(5, 5, &[c("SET k v"), c("HSET h a b"), c("GET k")]);
    let valid_results = encode_results(&all_replies());
    let mut snap = Vec::new();
    full_state()
        .save_snapshot(&mut snap, &StopFlag::new())
        .unwrap();
    let valids = [valid_batch, valid_results, snap];
    for i in 0..30_000 {
        let len = (next() % 96) as usize;
        let mut b: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        if i % 2 == 0 {
            let v = &valids[(next() % 3) as usize];
            let keep = (next() as usize) % v.len();
            b = v[..keep].iter().copied().chain(b).collect();
        }
        let _ = decode_batch(&b);
        let _ = decode_results(&b);
        let sm = full_state();
        let _ = sm.query(&b);
        let mut sm2 = KvStateMachine::default();
        let _ = sm2.recover_from_snapshot(&mut &b[..], &StopFlag::new());
        // Applying whatever decodes never panics either.
        if let Some(batch) = decode_batch(&b) {
            let mut sm3 = full_state();
            let _ = sm3.apply_batch(batch);
        }
    }
}

#[test]
fn random_commands_never_panic() {
    let names = [
        "SET",
        "GET",
        "GETEX",
        "GETSET",
        "GETDEL",
        "SETEX",
        "PSETEX",
        "SETNX",
        "MSETNX",
        "MSET",
        "APPEND",
        "SETRANGE",
        "GETRANGE",
        "INCRBY",
        "INCRBYFLOAT",
        "EXPIRE",
        "PEXPIREAT",
        "TTL",
        "PERSIST",
        "RENAME",
        "RENAMENX",
        "DEL",
        "EXISTS",
        "TYPE",
        "KEYS",
        "SCAN",
        "RANDOMKEY",
        "DBSIZE",
        "FLUSHALL",
        "HSET",
        "HSETNX",
        "HGET",
        "HMGET",
        "HDEL",
        "HGETALL",
        "HINCRBY",
        "HINCRBYFLOAT",
        "HSCAN",
        "HLEN",
        "MGET",
        "TOUCH",
    ];
    let words = [
        "k",
        "h",
        "0",
        "-1",
        "10",
        "EX",
        "PX",
        "NX",
        "XX",
        "GT",
        "LT",
        "KEEPTTL",
        "GET",
        "PERSIST",
        "1.5",
        "inf",
        "*",
        "[",
        "MATCH",
        "COUNT",
        "99999999999999999999",
        "EXAT",
        "PXAT",
    ];
    let mut x: u64 = 42;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut sm = KvStateMachine::default();
    for i in 0..20_000u64 {
        let mut cmd = vec![
            names[(next() % names.len() as u64) as usize]
                .as_bytes()
                .to_vec(),
        ];
        for _ in 0..next() % 6 {
            cmd.push(
                words[(next() % words.len() as u64) as usize]
                    .as_bytes()
                    .to_vec(),
            );
        }
        let batch = Batch {
            stamp_ms: i * 7,
            max_len: 64,
            cmds: vec![cmd.clone()],
        };
        let _ = sm.apply_batch(batch);
        if crate::exec::is_read(&cmd) {
            let _ = sm.query(&encode_batch(i * 7 + 3, 64, &[cmd]));
        }
    }
}

#[test]
fn the_clock_is_the_largest_stamp_and_never_goes_back() {
    let mut sm = KvStateMachine::default();
    assert_eq!(one(&mut sm, 10_000, "SET k v PX 100"), Reply::ok());
    // A batch stamped earlier (a leader with a slower clock) runs at 10,000.
    assert_eq!(one(&mut sm, 5_000, "PTTL k"), Reply::Int(100));
    assert_eq!(sm.clock(), 10_000);
    assert_eq!(one(&mut sm, 10_099, "GET k"), bulk("v"));
    assert_eq!(
        one(&mut sm, 10_100, "GET k"),
        Reply::Nil,
        "expired at its time"
    );
    assert_eq!(one(&mut sm, 0, "EXISTS k"), Reply::Int(0));
    // The expired key was deleted when the batch was applied.
    assert_eq!(sm.map.len(), 0);
}

#[test]
fn lookups_ask_for_the_clock_when_the_reader_is_ahead() {
    let mut sm = KvStateMachine::default();
    run(&mut sm, 1_000, &["SET k v PX 500", "SET p v"]);
    // At the shard's clock (1,000) the key lives; a reader at 1,400 too.
    assert_eq!(
        lookup(&sm, 1_400, &["GET k"]),
        vec![CmdResult::Reply(bulk("v"))]
    );
    // A reader at 1,500 would see it expired: the shard's clock must move first.
    assert_eq!(
        lookup(&sm, 1_500, &["GET p", "GET k"]),
        vec![CmdResult::Reply(bulk("v")), CmdResult::NeedsClock]
    );
    assert_eq!(lookup(&sm, 1_600, &["DBSIZE"]), vec![CmdResult::NeedsClock]);
    assert_eq!(lookup(&sm, 1_600, &["KEYS *"]), vec![CmdResult::NeedsClock]);
    // An empty batch advances the clock; then the key is gone for everyone.
    run(&mut sm, 1_600, &[]);
    assert_eq!(
        lookup(&sm, 1_600, &["GET k", "DBSIZE"]),
        vec![
            CmdResult::Reply(Reply::Nil),
            CmdResult::Reply(Reply::Int(1))
        ]
    );
    // A reader behind the shard's clock still reads at the shard's clock.
    assert_eq!(
        lookup(&sm, 0, &["GET k"]),
        vec![CmdResult::Reply(Reply::Nil)]
    );
}

#[test]
fn set_and_expire_options_behave_as_in_redis() {
    let mut sm = KvStateMachine::default();
    let t = 1_000_000;
    assert_eq!(one(&mut sm, t, "SET k v EX 10"), Reply::ok());
    assert_eq!(one(&mut sm, t, "TTL k"), Reply::Int(10));
    assert_eq!(one(&mut sm, t, "PTTL k"), Reply::Int(10_000));
    assert_eq!(one(&mut sm, t, "EXPIRETIME k"), Reply::Int(1010));
    assert_eq!(one(&mut sm, t, "PEXPIRETIME k"), Reply::Int(1_010_000));
    assert_eq!(one(&mut sm, t, "SET k w KEEPTTL"), Reply::ok());
    assert_eq!(one(&mut sm, t, "PTTL k"), Reply::Int(10_000));
    assert_eq!(one(&mut sm, t, "SET k x GET"), bulk("w"));
    assert_eq!(
        one(&mut sm, t, "TTL k"),
        Reply::Int(-1),
        "SET clears the TTL"
    );
    assert_eq!(one(&mut sm, t, "TTL nokey"), Reply::Int(-2));
    assert_eq!(one(&mut sm, t, "SET k y NX GET"), bulk("x"));
    assert_eq!(one(&mut sm, t, "GET k"), bulk("x"));
    assert_eq!(one(&mut sm, t, "SET n y XX"), Reply::Nil);
    assert_eq!(one(&mut sm, t, "SET k y EXAT 2000"), Reply::ok());
    assert_eq!(one(&mut sm, t, "PEXPIRETIME k"), Reply::Int(2_000_000));
    assert_eq!(one(&mut sm, t, "SET k y PXAT 1000001"), Reply::ok());
    assert_eq!(one(&mut sm, t, "PTTL k"), Reply::Int(1));
    for bad in ["SET k v EX 0", "SET k v PX -5", "SETEX k 0 v"] {
        let r = one(&mut sm, t, bad);
        assert!(
            matches!(&r, Reply::Error(e) if e.contains("invalid expire time")),
            "{bad}: {r:?}"
        );
    }
    for bad in [
        "SET k v EX 1 PX 1",
        "SET k v NX XX",
        "SET k v EX",
        "SET k v KEEPTTL EX 1",
    ] {
        assert_eq!(one(&mut sm, t, bad), Reply::err("syntax error"), "{bad}");
    }
    assert_eq!(
        one(&mut sm, t, "SET k v EX x"),
        Reply::err("value is not an integer or out of range")
    );
    // EXPIRE and its conditions.
    one(&mut sm, t, "SET e v");
    assert_eq!(one(&mut sm, t, "EXPIRE e 100 XX"), Reply::Int(0));
    assert_eq!(
        one(&mut sm, t, "EXPIRE e 100 GT"),
        Reply::Int(0),
        "no TTL is infinite"
    );
    assert_eq!(one(&mut sm, t, "EXPIRE e 100 NX"), Reply::Int(1));
    assert_eq!(one(&mut sm, t, "EXPIRE e 50 NX"), Reply::Int(0));
    assert_eq!(one(&mut sm, t, "EXPIRE e 200 LT"), Reply::Int(0));
    assert_eq!(one(&mut sm, t, "EXPIRE e 50 LT"), Reply::Int(1));
    assert_eq!(one(&mut sm, t, "EXPIRE e 60 GT"), Reply::Int(1));
    assert_eq!(one(&mut sm, t, "TTL e"), Reply::Int(60));
    assert_eq!(one(&mut sm, t, "PEXPIRE e 1500 XX"), Reply::Int(1));
    assert_eq!(one(&mut sm, t, "TTL e"), Reply::Int(2), "TTL rounds");
    assert_eq!(
        one(&mut sm, t, "EXPIRE e 1 NX GT"),
        Reply::err("NX and XX, GT or LT options at the same time are not compatible")
    );
    assert_eq!(
        one(&mut sm, t, "EXPIRE e 1 GT LT"),
        Reply::err("GT and LT options at the same time are not compatible")
    );
    assert_eq!(
        one(&mut sm, t, "EXPIRE e 1 FOO"),
        Reply::err("Unsupported option FOO")
    );
    assert_eq!(one(&mut sm, t, "PERSIST e"), Reply::Int(1));
    assert_eq!(one(&mut sm, t, "PERSIST e"), Reply::Int(0));
    assert_eq!(
        one(&mut sm, t, "EXPIREAT e 1000"),
        Reply::Int(1),
        "the past deletes"
    );
    assert_eq!(one(&mut sm, t, "EXISTS e"), Reply::Int(0));
    assert_eq!(one(&mut sm, t, "EXPIRE nokey 10"), Reply::Int(0));
    // GETEX.
    one(&mut sm, t, "SET g v");
    assert_eq!(one(&mut sm, t, "GETEX g PX 300"), bulk("v"));
    assert_eq!(one(&mut sm, t, "PTTL g"), Reply::Int(300));
    assert_eq!(one(&mut sm, t, "GETEX g PERSIST"), bulk("v"));
    assert_eq!(one(&mut sm, t, "PTTL g"), Reply::Int(-1));
    assert_eq!(one(&mut sm, t, "GETEX g"), bulk("v"));
    assert_eq!(one(&mut sm, t, "GETEX nokey EX 1"), Reply::Nil);
    assert_eq!(one(&mut sm, t, "SETEX s 5 v"), Reply::ok());
    assert_eq!(one(&mut sm, t, "PSETEX p 5 v"), Reply::ok());
    assert_eq!(one(&mut sm, t, "PTTL s"), Reply::Int(5000));
    assert_eq!(one(&mut sm, t, "PTTL p"), Reply::Int(5));
    // INCR and APPEND keep the TTL.
    one(&mut sm, t, "SET c 1 EX 9");
    one(&mut sm, t, "INCR c");
    one(&mut sm, t, "APPEND c 0");
    assert_eq!(one(&mut sm, t, "GET c"), bulk("20"));
    assert_eq!(one(&mut sm, t, "TTL c"), Reply::Int(9));
}

#[test]
fn string_key_and_hash_commands_behave_as_in_redis() {
    let mut sm = KvStateMachine::default();
    let t = 5_000;
    let wrong = Reply::Error(crate::exec::WRONGTYPE.into());
    assert_eq!(one(&mut sm, t, "SETNX a 1"), Reply::Int(1));
    assert_eq!(one(&mut sm, t, "SETNX a 2"), Reply::Int(0));
    assert_eq!(one(&mut sm, t, "GETSET a 3"), bulk("1"));
    assert_eq!(one(&mut sm, t, "GETDEL a"), bulk("3"));
    assert_eq!(one(&mut sm, t, "GETDEL a"), Reply::Nil);
    assert_eq!(one(&mut sm, t, "MSETNX a 1 b 2"), Reply::Int(1));
    assert_eq!(one(&mut sm, t, "MSETNX b 3 c 4"), Reply::Int(0));
    assert_eq!(one(&mut sm, t, "EXISTS c"), Reply::Int(0));
    assert_eq!(one(&mut sm, t, "INCRBYFLOAT f 10.5"), bulk("10.5"));
    assert_eq!(one(&mut sm, t, "INCRBYFLOAT f 0.1"), bulk("10.6"));
    assert_eq!(one(&mut sm, t, "INCRBYFLOAT f -5.6"), bulk("5"));
    assert_eq!(
        one(&mut sm, t, "INCRBYFLOAT f x"),
        Reply::err("value is not a valid float")
    );
    assert_eq!(
        one(&mut sm, t, "INCRBYFLOAT f inf"),
        Reply::err("increment would produce NaN or Infinity")
    );
    one(&mut sm, t, "SET s Hello");
    assert_eq!(one(&mut sm, t, "GETRANGE s 0 3"), bulk("Hell"));
    assert_eq!(one(&mut sm, t, "GETRANGE s -3 -1"), bulk("llo"));
    assert_eq!(one(&mut sm, t, "GETRANGE s 10 20"), bulk(""));
    assert_eq!(one(&mut sm, t, "GETRANGE s -1 -5"), bulk(""));
    assert_eq!(one(&mut sm, t, "SETRANGE s 6 World"), Reply::Int(11));
    assert_eq!(
        one(&mut sm, t, "GET s"),
        Reply::Bulk(b"Hello\0World".to_vec())
    );
    assert_eq!(
        one(&mut sm, t, "SETRANGE s -1 x"),
        Reply::err("offset is out of range")
    );
    assert_eq!(one(&mut sm, t, "SETRANGE new 0 "), Reply::Int(0));
    assert_eq!(one(&mut sm, t, "EXISTS new"), Reply::Int(0));
    assert!(
        matches!(one(&mut sm, t, "SETRANGE s 2000000 x"), Reply::Error(e) if e.contains("maximum allowed size"))
    );
    // Types.
    assert_eq!(one(&mut sm, t, "HSET h f1 v1 f2 v2"), Reply::Int(2));
    assert_eq!(one(&mut sm, t, "HSET h f1 w1 f3 v3"), Reply::Int(1));
    assert_eq!(one(&mut sm, t, "TYPE h"), Reply::Simple("hash".into()));
    assert_eq!(one(&mut sm, t, "TYPE s"), Reply::Simple("string".into()));
    assert_eq!(one(&mut sm, t, "TYPE none"), Reply::Simple("none".into()));
    assert_eq!(one(&mut sm, t, "GET h"), wrong);
    assert_eq!(one(&mut sm, t, "APPEND h x"), wrong);
    assert_eq!(one(&mut sm, t, "INCR h"), wrong);
    assert_eq!(one(&mut sm, t, "HGET s f"), wrong);
    assert_eq!(one(&mut sm, t, "HSET s f v"), wrong);
    assert_eq!(
        one(&mut sm, t, "MGET h s"),
        Reply::Array(vec![Reply::Nil, bulk("Hello\0World")])
    );
    assert_eq!(one(&mut sm, t, "HGET h f1"), bulk("w1"));
    assert_eq!(
        one(&mut sm, t, "HMGET h f1 nof f3"),
        Reply::Array(vec![bulk("w1"), Reply::Nil, bulk("v3")])
    );
    assert_eq!(one(&mut sm, t, "HLEN h"), Reply::Int(3));
    assert_eq!(one(&mut sm, t, "HEXISTS h f2"), Reply::Int(1));
    assert_eq!(one(&mut sm, t, "HSTRLEN h f2"), Reply::Int(2));
    assert_eq!(
        one(&mut sm, t, "HGETALL h"),
        Reply::Map(vec![
            (bulk("f1"), bulk("w1")),
            (bulk("f2"), bulk("v2")),
            (bulk("f3"), bulk("v3")),
        ])
    );
    assert_eq!(
        one(&mut sm, t, "HKEYS h"),
        Reply::Array(["f1", "f2", "f3"].map(bulk).to_vec())
    );
    assert_eq!(
        one(&mut sm, t, "HVALS h"),
        Reply::Array(["w1", "v2", "v3"].map(bulk).to_vec())
    );
    assert_eq!(one(&mut sm, t, "HSETNX h f1 x"), Reply::Int(0));
    assert_eq!(one(&mut sm, t, "HSETNX h f4 x"), Reply::Int(1));
    assert_eq!(one(&mut sm, t, "HINCRBY h n 5"), Reply::Int(5));
    assert_eq!(
        one(&mut sm, t, "HINCRBY h f1 1"),
        Reply::err("hash value is not an integer")
    );
    assert_eq!(one(&mut sm, t, "HINCRBYFLOAT h n 0.5"), bulk("5.5"));
    assert_eq!(
        one(&mut sm, t, "HSCAN h 0 MATCH f* COUNT 100 NOVALUES"),
        Reply::Array(vec![
            bulk("0"),
            Reply::Array(["f1", "f2", "f3", "f4"].map(bulk).to_vec())
        ])
    );
    assert_eq!(one(&mut sm, t, "HDEL h f1 f2 f3 f4 nof"), Reply::Int(4));
    assert_eq!(one(&mut sm, t, "HDEL h n"), Reply::Int(1));
    assert_eq!(
        one(&mut sm, t, "EXISTS h"),
        Reply::Int(0),
        "an empty hash is deleted"
    );
    assert_eq!(
        one(&mut sm, t, "HSET h f"),
        Reply::err("wrong number of arguments for 'hset' command")
    );
    // RENAME keeps the value and the TTL.
    one(&mut sm, t, "HSET r f v");
    one(&mut sm, t, "PEXPIRE r 700");
    assert_eq!(one(&mut sm, t, "RENAME r r2"), Reply::ok());
    assert_eq!(one(&mut sm, t, "PTTL r2"), Reply::Int(700));
    assert_eq!(one(&mut sm, t, "HGET r2 f"), bulk("v"));
    assert_eq!(one(&mut sm, t, "RENAME r x"), Reply::err("no such key"));
    assert_eq!(one(&mut sm, t, "RENAMENX r2 s"), Reply::Int(0));
    assert_eq!(one(&mut sm, t, "RENAMENX r2 r3"), Reply::Int(1));
    // KEYS, SCAN, RANDOMKEY, DBSIZE, FLUSHALL.
    let Reply::Array(mut keys) = one(&mut sm, t, "KEYS *") else {
        panic!()
    };
    keys.sort_by_key(|k| format!("{k:?}"));
    assert_eq!(keys.len(), 5, "{keys:?}");
    assert_eq!(one(&mut sm, t, "KEYS r?"), Reply::Array(vec![bulk("r3")]));
    assert_eq!(one(&mut sm, t, "DBSIZE"), Reply::Int(5));
    let mut seen = Vec::new();
    let mut pos = "0".to_string();
    loop {
        let Reply::Array(r) = one(&mut sm, t, &format!("SCAN {pos} 1  ")) else {
            panic!()
        };
        let (Reply::Bulk(p), Reply::Array(ks)) = (&r[0], &r[1]) else {
            panic!()
        };
        seen.extend(ks.iter().cloned());
        pos = String::from_utf8(p.clone()).unwrap();
        if pos == "0" {
            break;
        }
    }
    seen.sort_by_key(|k| format!("{k:?}"));
    assert_eq!(seen, keys);
    assert_ne!(one(&mut sm, t, "RANDOMKEY 12345"), Reply::Nil);
    assert_eq!(one(&mut sm, t, "FLUSHALL"), Reply::ok());
    assert_eq!(one(&mut sm, t, "DBSIZE"), Reply::Int(0));
    assert_eq!(one(&mut sm, t, "RANDOMKEY 1"), Reply::Nil);
}

#[test]
fn transactions_run_whole_and_watch_aborts_on_change() {
    let mut sm = KvStateMachine::default();
    let t = 1;
    let tx = |cmds: &[&str]| {
        let cmds: Vec<Cmd> = cmds.iter().map(|s| c(s)).collect();
        crate::exec::encode_exec(&cmds)
    };
    let r = sm.apply_batch(Batch {
        stamp_ms: t,
        max_len: 100,
        cmds: vec![tx(&["SET a 1", "INCR a", "HSET a f v", "GET a"])],
    });
    assert_eq!(
        r,
        vec![Reply::Array(vec![
            Reply::ok(),
            Reply::Int(2),
            Reply::Error(crate::exec::WRONGTYPE.into()),
            bulk("2"),
        ])]
    );
    let digest = |sm: &KvStateMachine| match lookup(sm, 0, &["\u{0}DIGEST a"]).remove(0) {
        CmdResult::Reply(Reply::Array(d)) => match &d[0] {
            Reply::Bulk(b) => String::from_utf8(b.clone()).unwrap(),
            _ => panic!(),
        },
        _ => panic!(),
    };
    let d = digest(&sm);
    let watched = format!("\u{0}WATCHED a {d}");
    let r = sm.apply_batch(Batch {
        stamp_ms: t,
        max_len: 100,
        cmds: vec![tx(&[&watched, "INCR a"])],
    });
    assert_eq!(r, vec![Reply::Array(vec![Reply::Int(3)])]);
    // The digest changed: the same transaction is aborted, nothing runs.
    let r = sm.apply_batch(Batch {
        stamp_ms: t,
        max_len: 100,
        cmds: vec![tx(&[&watched, "INCR a"])],
    });
    assert_eq!(r, vec![Reply::NilArray]);
    assert_eq!(one(&mut sm, t, "GET a"), bulk("3"));
}

#[test]
fn a_batch_stops_before_a_read_over_the_result_budget() {
    let mut sm = KvStateMachine::default();
    let big = vec![b'x'; MAX_BATCH_RESULT_BYTES];
    let r = sm.apply_batch(Batch {
        stamp_ms: 0,
        max_len: u64::MAX,
        cmds: vec![
            vec![b"SET".to_vec(), b"big".to_vec(), big.clone()],
            c("GET big"),
            c("GET big"),
            c("DEL big"),
        ],
    });
    // The first read fits the budget exactly; the second stops the batch.
    assert_eq!(r.len(), 2);
    assert_eq!(r[1], Reply::Bulk(big));
    // The DEL after the stop was not applied.
    assert_eq!(one(&mut sm, 0, "EXISTS big"), Reply::Int(1));
}

#[test]
fn snapshots_keep_types_expiry_and_clock_and_read_old_formats() {
    let sm = full_state();
    let mut buf = Vec::new();
    sm.save_snapshot(&mut buf, &StopFlag::new()).unwrap();
    assert_eq!(&buf[..8], b"LSKVSNP3");
    let mut back = KvStateMachine::default();
    back.recover_from_snapshot(&mut &buf[..], &StopFlag::new())
        .unwrap();
    assert_eq!(back, sm);
    assert_eq!(back.clock(), 1000);
    assert_eq!(
        back.query(&[query::DIGEST]).unwrap(),
        sm.query(&[query::DIGEST]).unwrap()
    );
    for cut in 0..buf.len() {
        assert!(
            KvStateMachine::default()
                .recover_from_snapshot(&mut &buf[..cut], &StopFlag::new())
                .is_err(),
            "prefix of {cut} bytes"
        );
    }
    // Version 2: magic, count, 64-bit lengths; version 1: count, 32-bit lengths.
    let mut v2 = SNAPSHOT_MAGIC_V2.to_le_bytes().to_vec();
    v2.extend_from_slice(&1u64.to_le_bytes());
    v2.extend_from_slice(&1u64.to_le_bytes());
    v2.push(b'k');
    v2.extend_from_slice(&5u64.to_le_bytes());
    v2.extend_from_slice(b"value");
    let mut v1 = 1u64.to_le_bytes().to_vec();
    v1.extend_from_slice(&1u32.to_le_bytes());
    v1.push(b'k');
    v1.extend_from_slice(&5u32.to_le_bytes());
    v1.extend_from_slice(b"value");
    for old in [v2, v1] {
        let mut sm = KvStateMachine::default();
        sm.recover_from_snapshot(&mut &old[..], &StopFlag::new())
            .unwrap();
        assert_eq!(one(&mut sm, 0, "GET k"), bulk("value"));
    }
    // A length over the bound is refused before any allocation.
    let mut bad = SNAPSHOT_MAGIC_V3.to_le_bytes().to_vec();
    bad.extend_from_slice(&0u64.to_le_bytes());
    bad.extend_from_slice(&1u64.to_le_bytes());
    bad.push(0);
    bad.extend_from_slice(&0u64.to_le_bytes());
    bad.extend_from_slice(&u64::MAX.to_le_bytes());
    assert!(
        KvStateMachine::default()
            .recover_from_snapshot(&mut &bad[..], &StopFlag::new())
            .is_err()
    );
}

#[test]
fn sweeping_deletes_expired_keys_in_bounded_steps() {
    let mut sm = KvStateMachine::default();
    let cmds: Vec<String> = (0..2500).map(|i| format!("SET k{i} v PX 10")).collect();
    let refs: Vec<&str> = cmds.iter().map(String::as_str).collect();
    run(&mut sm, 100, &refs);
    assert_eq!(sm.next_expiry(), 110);
    run(&mut sm, 200, &[]);
    assert_eq!(sm.map.len(), 2500 - SWEEP_PER_BATCH);
    assert_eq!(sm.len(), 0, "expired keys are not counted");
    run(&mut sm, 200, &[]);
    run(&mut sm, 200, &[]);
    assert_eq!(sm.map.len(), 0);
    assert_eq!(sm.next_expiry(), u64::MAX);
}
