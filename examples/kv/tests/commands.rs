//! Commands through the server against an in-process three-node cluster:
//! expiry on the replicated clock (and its sweeper), keyspace commands over
//! every shard, one-shard multi-key commands, hashes, transactions, and
//! Redis's errors; then the same through redis-py.

mod common;

use std::io::Write;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use longship::ShardId;
use longship_kv::server::ServerConfig;
use longship_kv::slots::shard_of;

/// Keys on different shards.
fn keys_on_shards() -> Vec<String> {
    (1..=SHARDS)
        .map(|s| {
            (0..)
                .map(|i| format!("key{i}"))
                .find(|k| shard_of(k.as_bytes(), SHARDS) == ShardId(s))
                .unwrap()
        })
        .collect()
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        // Polling a condition (expiry time passing), not synchronising on time.
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn keys_expire_on_the_replicated_clock_and_are_swept() {
    let c = Cluster::start(false);
    let mut conn = c.conn(0);
    assert_eq!(conn.call(&["SET", "a", "1", "PX", "300"]), ok());
    assert_eq!(conn.call(&["SET", "b", "1", "EX", "100"]), ok());
    assert_eq!(conn.call(&["SETEX", "c", "100", "v"]), ok());
    assert_eq!(conn.call(&["SET", "p", "1"]), ok());
    let Resp::Int(ms) = conn.call(&["PTTL", "a"]) else {
        panic!()
    };
    assert!((1..=300).contains(&ms), "{ms}");
    assert_eq!(conn.call(&["TTL", "b"]), Resp::Int(100));
    assert_eq!(conn.call(&["TTL", "p"]), Resp::Int(-1));
    assert_eq!(conn.call(&["TTL", "nokey"]), Resp::Int(-2));
    assert_eq!(conn.call(&["EXPIRE", "p", "100", "XX"]), Resp::Int(0));
    assert_eq!(conn.call(&["EXPIRE", "p", "100", "NX"]), Resp::Int(1));
    assert_eq!(conn.call(&["PERSIST", "p"]), Resp::Int(1));
    assert_eq!(
        conn.call(&["GETEX", "b", "PERSIST"]),
        bulk("1"),
        "GETEX PERSIST"
    );
    assert_eq!(conn.call(&["TTL", "b"]), Resp::Int(-1));
    // `a` disappears for readers of every node once its time has come
    // (reads by ReadIndex: the node's clock is ahead of the idle shard's,
    // so the read goes through the log).
    let start = Instant::now();
    wait_until("a to expire", || {
        c.conn(1).call(&["GET", "a"]) == Resp::Bulk(None)
    });
    assert!(start.elapsed() < Duration::from_secs(5));
    for i in 0..3 {
        assert_eq!(c.conn(i).call(&["EXISTS", "a"]), Resp::Int(0));
    }
    assert_eq!(conn.call(&["DBSIZE"]), Resp::Int(3));
    // The sweeper deletes expired keys through the log: every replica
    // ends up holding the three live keys only.
    let stored = |i: usize| text(&c.conn(i).call(&["INFO"])).contains("db0:keys=3,expires=1,");
    wait_until("a to be swept everywhere", || (0..3).all(stored));
    // Many keys expiring at once are all swept.
    let mut req = Vec::new();
    for i in 0..500 {
        req.extend(cmd(&["SET", &format!("t{i}"), "v", "PX", "100"]));
    }
    conn.w.write_all(&req).unwrap();
    for _ in 0..500 {
        assert_eq!(conn.read(), ok());
    }
    wait_until("500 keys to be swept everywhere", || (0..3).all(stored));
}

#[test]
fn keyspace_commands_cover_every_shard() {
    let c = Cluster::start(false);
    let mut conn = c.conn(1);
    let keys = keys_on_shards();
    for k in &keys {
        assert_eq!(conn.call(&["SET", k, "v"]), ok());
    }
    assert_eq!(conn.call(&["HSET", "hash", "f", "v"]), Resp::Int(1));
    let mut all: Vec<String> = keys.clone();
    all.push("hash".into());
    all.sort();
    let Resp::Array(found) = conn.call(&["KEYS", "*"]) else {
        panic!()
    };
    let mut found: Vec<String> = found.iter().map(text).collect();
    found.sort();
    assert_eq!(found, all);
    assert_eq!(conn.call(&["KEYS", "h*"]), Resp::Array(vec![bulk("hash")]));
    // SCAN with COUNT 1 visits every shard and returns every key once.
    let mut seen = Vec::new();
    let mut cursor = "0".to_string();
    let mut calls = 0;
    loop {
        let Resp::Array(r) = conn.call(&["SCAN", &cursor, "COUNT", "1"]) else {
            panic!()
        };
        cursor = text(&r[0]);
        let Resp::Array(ks) = &r[1] else { panic!() };
        seen.extend(ks.iter().map(text));
        calls += 1;
        if cursor == "0" {
            break;
        }
    }
    seen.sort();
    assert_eq!(seen, all);
    assert!(calls as u64 >= SHARDS);
    let Resp::Array(r) = conn.call(&["SCAN", "0", "TYPE", "hash", "COUNT", "1000"]) else {
        panic!()
    };
    let mut typed = Vec::new();
    let mut cursor = text(&r[0]);
    let Resp::Array(ks) = &r[1] else { panic!() };
    typed.extend(ks.iter().map(text));
    while cursor != "0" {
        let Resp::Array(r) = conn.call(&["SCAN", &cursor, "TYPE", "hash", "COUNT", "1000"]) else {
            panic!()
        };
        cursor = text(&r[0]);
        let Resp::Array(ks) = &r[1] else { panic!() };
        typed.extend(ks.iter().map(text));
    }
    assert_eq!(typed, vec!["hash".to_string()]);
    let r = conn.call(&["RANDOMKEY"]);
    assert!(all.contains(&text(&r)), "{r:?}");
    assert_eq!(conn.call(&["DBSIZE"]), Resp::Int(all.len() as i64));
    assert_eq!(
        conn.call(&["MGET", &keys[0], "hash", &keys[1], "nokey"]),
        Resp::Array(vec![
            bulk("v"),
            Resp::Bulk(None),
            bulk("v"),
            Resp::Bulk(None)
        ])
    );
    assert_eq!(
        conn.call(&["TOUCH", &keys[0], &keys[2], "nokey"]),
        Resp::Int(2)
    );
    assert_eq!(
        conn.call(&["UNLINK", &keys[0], &keys[2], "nokey"]),
        Resp::Int(2)
    );
    assert_eq!(conn.call(&["TYPE", "hash"]), Resp::Simple("hash".into()));
    assert_eq!(conn.call(&["FLUSHALL"]), ok());
    assert_eq!(conn.call(&["DBSIZE"]), Resp::Int(0));
    assert_eq!(conn.call(&["RANDOMKEY"]), Resp::Bulk(None));
    // An empty keyspace: every call returns no key until the cursor is 0.
    let mut cursor = "0".to_string();
    for _ in 0..=SHARDS {
        let Resp::Array(r) = conn.call(&["SCAN", &cursor]) else {
            panic!()
        };
        assert_eq!(r[1], Resp::Array(vec![]));
        cursor = text(&r[0]);
        if cursor == "0" {
            break;
        }
    }
    assert_eq!(cursor, "0", "SCAN ends after one call per shard");
}

#[test]
fn one_shard_commands_hashes_and_redis_errors() {
    let c = Cluster::start(false);
    let mut conn = c.conn(2);
    let keys = keys_on_shards();
    // RENAME and MSETNX need their keys on one shard (hash tags).
    assert_eq!(conn.call(&["SET", "{u}a", "1"]), ok());
    assert_eq!(conn.call(&["RENAME", "{u}a", "{u}b"]), ok());
    assert_eq!(conn.call(&["GET", "{u}b"]), bulk("1"));
    assert_eq!(conn.call(&["RENAMENX", "{u}b", "{u}b"]), Resp::Int(0));
    assert_eq!(conn.call(&["SET", &keys[0], "x"]), ok());
    match conn.call(&["RENAME", &keys[0], &keys[1]]) {
        Resp::Error(e) => assert!(e.contains("different shards"), "{e}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        conn.call(&["MSETNX", "{u}x", "1", "{u}y", "2"]),
        Resp::Int(1)
    );
    assert_eq!(
        conn.call(&["MSETNX", "{u}y", "1", "{u}z", "2"]),
        Resp::Int(0)
    );
    assert_eq!(
        conn.call(&["RENAME", "nokey", "{nokey}2"]),
        Resp::Error("ERR no such key".into())
    );
    // Strings.
    assert_eq!(conn.call(&["GETSET", "s", "a"]), Resp::Bulk(None));
    assert_eq!(conn.call(&["SETNX", "s", "b"]), Resp::Int(0));
    assert_eq!(conn.call(&["SETRANGE", "s", "3", "xy"]), Resp::Int(5));
    assert_eq!(
        conn.call(&["GETRANGE", "s", "0", "-1"]),
        Resp::Bulk(Some(b"a\0\0xy".to_vec()))
    );
    assert_eq!(conn.call(&["INCRBYFLOAT", "f", "1.25"]), bulk("1.25"));
    assert_eq!(conn.call(&["GETDEL", "f"]), bulk("1.25"));
    assert_eq!(
        conn.call(&["SET", "s", "v", "GET"]),
        Resp::Bulk(Some(b"a\0\0xy".to_vec()))
    );
    // Hashes and WRONGTYPE.
    assert_eq!(conn.call(&["HSET", "h", "a", "1", "b", "2"]), Resp::Int(2));
    assert_eq!(conn.call(&["HINCRBY", "h", "a", "41"]), Resp::Int(42));
    assert_eq!(
        conn.call(&["HGETALL", "h"]),
        Resp::Array(vec![bulk("a"), bulk("42"), bulk("b"), bulk("2")])
    );
    let wrong =
        Resp::Error("WRONGTYPE Operation against a key holding the wrong kind of value".into());
    assert_eq!(conn.call(&["GET", "h"]), wrong);
    assert_eq!(conn.call(&["HGET", "s", "a"]), wrong);
    assert_eq!(
        conn.call(&["HSCAN", "h", "0"]),
        Resp::Array(vec![
            bulk("0"),
            Resp::Array(vec![bulk("a"), bulk("42"), bulk("b"), bulk("2")])
        ])
    );
    // Errors as Redis words them.
    assert_eq!(
        conn.call(&["NOSUCH", "a", "b"]),
        // (Redis ends the list with a space; the test client trims lines.)
        Resp::Error("ERR unknown command 'NOSUCH', with args beginning with: 'a' 'b'".into())
    );
    assert_eq!(
        conn.call(&["GET"]),
        Resp::Error("ERR wrong number of arguments for 'get' command".into())
    );
    assert_eq!(
        conn.call(&["SET", "k", "v", "EX", "0"]),
        Resp::Error("ERR invalid expire time in 'set' command".into())
    );
    assert_eq!(
        conn.call(&["SET", "k", "v", "BAD"]),
        Resp::Error("ERR syntax error".into())
    );
    let Resp::Int(n) = conn.call(&["COMMAND", "COUNT"]) else {
        panic!()
    };
    assert!(n > 60);
    let Resp::Array(info) = conn.call(&["COMMAND", "INFO", "mset", "nosuch"]) else {
        panic!()
    };
    let Resp::Array(mset) = &info[0] else {
        panic!()
    };
    assert_eq!(mset[0], bulk("mset"));
    assert_eq!(mset[1], Resp::Int(-3));
    assert_eq!(info[1], Resp::NilArray);
}

#[test]
fn multi_exec_runs_as_one_entry_and_watch_aborts_on_a_change() {
    let c = Cluster::start(false);
    let mut conn = c.conn(0);
    assert_eq!(conn.call(&["MULTI"]), ok());
    assert_eq!(
        conn.call(&["SET", "{t}a", "1"]),
        Resp::Simple("QUEUED".into())
    );
    assert_eq!(conn.call(&["INCR", "{t}a"]), Resp::Simple("QUEUED".into()));
    assert_eq!(
        conn.call(&["HSET", "{t}a", "f", "v"]),
        Resp::Simple("QUEUED".into())
    );
    assert_eq!(
        conn.call(&["MGET", "{t}a", "{t}b"]),
        Resp::Simple("QUEUED".into())
    );
    assert_eq!(
        conn.call(&["EXEC"]),
        Resp::Array(vec![
            ok(),
            Resp::Int(2),
            Resp::Error("WRONGTYPE Operation against a key holding the wrong kind of value".into()),
            Resp::Array(vec![bulk("2"), Resp::Bulk(None)]),
        ])
    );
    // Errors at queue time abort the transaction.
    assert_eq!(conn.call(&["MULTI"]), ok());
    assert_eq!(
        conn.call(&["MULTI"]),
        Resp::Error("ERR MULTI calls can not be nested".into())
    );
    assert_eq!(
        conn.call(&["SET", "{t}a", "9"]),
        Resp::Simple("QUEUED".into())
    );
    assert!(matches!(conn.call(&["GET"]), Resp::Error(_)));
    assert_eq!(
        conn.call(&["EXEC"]),
        Resp::Error("EXECABORT Transaction discarded because of previous errors.".into())
    );
    assert_eq!(conn.call(&["GET", "{t}a"]), bulk("2"));
    assert_eq!(
        conn.call(&["EXEC"]),
        Resp::Error("ERR EXEC without MULTI".into())
    );
    assert_eq!(
        conn.call(&["DISCARD"]),
        Resp::Error("ERR DISCARD without MULTI".into())
    );
    assert_eq!(conn.call(&["MULTI"]), ok());
    assert_eq!(conn.call(&["INCR", "{t}a"]), Resp::Simple("QUEUED".into()));
    assert_eq!(conn.call(&["DISCARD"]), ok());
    assert_eq!(conn.call(&["GET", "{t}a"]), bulk("2"));
    // Keys of several shards in one transaction are refused.
    let keys = keys_on_shards();
    assert_eq!(conn.call(&["MULTI"]), ok());
    conn.call(&["SET", &keys[0], "1"]);
    conn.call(&["SET", &keys[1], "1"]);
    assert!(matches!(conn.call(&["EXEC"]), Resp::Error(e) if e.contains("different shards")));
    // WATCH: a change by another client between WATCH and EXEC aborts.
    assert_eq!(conn.call(&["WATCH", "{t}a"]), ok());
    assert_eq!(c.conn(1).call(&["INCR", "{t}a"]), Resp::Int(3));
    assert_eq!(conn.call(&["MULTI"]), ok());
    assert_eq!(conn.call(&["INCR", "{t}a"]), Resp::Simple("QUEUED".into()));
    assert_eq!(conn.call(&["EXEC"]), Resp::NilArray);
    assert_eq!(conn.call(&["GET", "{t}a"]), bulk("3"));
    // Unchanged: it runs.
    assert_eq!(conn.call(&["WATCH", "{t}a", "{t}b"]), ok());
    assert_eq!(conn.call(&["MULTI"]), ok());
    assert_eq!(conn.call(&["INCR", "{t}a"]), Resp::Simple("QUEUED".into()));
    assert_eq!(conn.call(&["EXEC"]), Resp::Array(vec![Resp::Int(4)]));
    // UNWATCH forgets.
    assert_eq!(conn.call(&["WATCH", "{t}a"]), ok());
    assert_eq!(c.conn(1).call(&["INCR", "{t}a"]), Resp::Int(5));
    assert_eq!(conn.call(&["UNWATCH"]), ok());
    assert_eq!(conn.call(&["MULTI"]), ok());
    assert_eq!(conn.call(&["INCR", "{t}a"]), Resp::Simple("QUEUED".into()));
    assert_eq!(conn.call(&["EXEC"]), Resp::Array(vec![Resp::Int(6)]));
}

#[test]
fn auth_hello_client_config_and_info() {
    let c = Cluster::start_with(ServerConfig {
        requirepass: Some("s3cret".into()),
        ..ServerConfig::default()
    });
    let mut conn = c.conn(0);
    let noauth = Resp::Error("NOAUTH Authentication required.".into());
    assert_eq!(conn.call(&["GET", "k"]), noauth);
    assert_eq!(conn.call(&["PING"]), noauth);
    assert_eq!(
        conn.call(&["AUTH", "wrong"]),
        Resp::Error("WRONGPASS invalid username-password pair or user is disabled.".into())
    );
    assert_eq!(conn.call(&["GET", "k"]), noauth);
    assert_eq!(conn.call(&["AUTH", "default", "s3cret"]), ok());
    assert_eq!(conn.call(&["SET", "k", "v"]), ok());
    // HELLO 2 with AUTH and SETNAME on a new connection; RESP3 is refused.
    let mut other = c.conn(0);
    assert!(matches!(other.call(&["HELLO", "3"]), Resp::Error(e) if e.starts_with("NOAUTH")));
    assert!(matches!(other.call(&["HELLO", "4"]), Resp::Error(e) if e.starts_with("NOPROTO")));
    let Resp::Array(hello) =
        other.call(&["HELLO", "2", "AUTH", "default", "s3cret", "SETNAME", "me"])
    else {
        panic!()
    };
    assert_eq!(hello[0], bulk("server"));
    assert_eq!(hello[5], Resp::Int(2));
    assert_eq!(other.call(&["CLIENT", "GETNAME"]), bulk("me"));
    assert_eq!(other.call(&["GET", "k"]), bulk("v"));
    let Resp::Int(id) = other.call(&["CLIENT", "ID"]) else {
        panic!()
    };
    assert_eq!(other.call(&["CLIENT", "SETINFO", "LIB-NAME", "test"]), ok());
    let list = text(&conn.call(&["CLIENT", "LIST"]));
    assert!(
        list.lines().any(|l| l.starts_with(&format!("id={id} "))
            && l.contains(" name=me ")
            && l.contains("lib-name=test")),
        "{list}"
    );
    assert!(text(&other.call(&["CLIENT", "INFO"])).starts_with(&format!("id={id} ")));
    assert!(matches!(
        other.call(&["CLIENT", "SETNAME", "a b"]),
        Resp::Error(e) if e.contains("cannot contain spaces")
    ));
    // CONFIG GET with the real values; the password is never shown.
    assert_eq!(
        conn.call(&["CONFIG", "GET", "maxclients"]),
        Resp::Array(vec![bulk("maxclients"), bulk("10000")])
    );
    let Resp::Array(all) = conn.call(&["CONFIG", "GET", "*"]) else {
        panic!()
    };
    assert!(all.contains(&bulk("proto-max-bulk-len")));
    assert!(!all.contains(&bulk("s3cret")));
    assert!(matches!(
        conn.call(&["CONFIG", "SET", "timeout", "1"]),
        Resp::Error(_)
    ));
    // INFO: Redis's sections and the raft one.
    let info = text(&conn.call(&["INFO"]));
    for section in [
        "# Server",
        "# Clients",
        "# Memory",
        "# Stats",
        "# Keyspace",
        "# Cluster",
        "# Raft",
    ] {
        assert!(info.contains(section), "{section} missing:\n{info}");
    }
    assert!(info.contains("redis_version:"));
    assert!(info.contains(&format!("shards:{SHARDS}\r\n")));
    let keyspace = text(&conn.call(&["INFO", "keyspace"]));
    assert!(
        keyspace.starts_with("# Keyspace") && !keyspace.contains("# Server"),
        "{keyspace}"
    );
    // AUTH without a password configured is an error, as in Redis.
    let open = Cluster::start(false);
    assert!(matches!(
        open.conn(0).call(&["AUTH", "x"]),
        Resp::Error(e) if e.contains("without any password configured")
    ));
}

#[test]
fn hello_3_switches_the_connection_to_resp3() {
    let c = Cluster::start(false);
    let mut conn = c.conn(1);
    assert_eq!(conn.call(&["GET", "nokey"]), Resp::Bulk(None));
    let Resp::Map(hello) = conn.call(&["HELLO", "3"]) else {
        panic!("HELLO 3 answers a map")
    };
    assert!(hello.contains(&(bulk("proto"), Resp::Int(3))));
    assert_eq!(conn.call(&["GET", "nokey"]), Resp::Null);
    assert_eq!(conn.call(&["HSET", "h", "a", "1"]), Resp::Int(1));
    assert_eq!(
        conn.call(&["HGETALL", "h"]),
        Resp::Map(vec![(bulk("a"), bulk("1"))])
    );
    assert_eq!(
        conn.call(&["MGET", "h", "nokey"]),
        Resp::Array(vec![Resp::Null, Resp::Null])
    );
    assert_eq!(
        conn.call(&["CONFIG", "GET", "databases"]),
        Resp::Map(vec![(bulk("databases"), bulk("1"))])
    );
    // A pipeline that switches back: each reply in its command's protocol.
    conn.w
        .write_all(
            &[
                cmd(&["GET", "nokey"]),
                cmd(&["HELLO", "2"]),
                cmd(&["GET", "nokey"]),
            ]
            .concat(),
        )
        .unwrap();
    assert_eq!(conn.read(), Resp::Null);
    assert!(matches!(conn.read(), Resp::Array(_)));
    assert_eq!(conn.read(), Resp::Bulk(None));
}

const REDIS_PY_COMMANDS: &str = r#"
import sys, time
try:
    import redis
except ImportError as e:
    print("IMPORT_FAILED", e)
    sys.exit(3)

r = redis.Redis(host=sys.argv[1], port=int(sys.argv[2]), decode_responses=True, protocol=2)
assert r.set("e", "v", px=200)
assert 0 < r.pttl("e") <= 200
deadline = time.time() + 10
while r.get("e") is not None:
    assert time.time() < deadline, "e never expired"
    time.sleep(0.02)
assert r.ttl("e") == -2
r.hset("user:1", mapping={"name": "ann", "visits": "1"})
assert r.hincrby("user:1", "visits", 2) == 3
assert r.hgetall("user:1") == {"name": "ann", "visits": "3"}
try:
    r.get("user:1")
    raise AssertionError("no WRONGTYPE")
except redis.exceptions.ResponseError as e:
    assert str(e).startswith("WRONGTYPE"), e
with r.pipeline(transaction=True) as p:
    p.set("{tx}a", 1).incr("{tx}a").get("{tx}a")
    assert p.execute() == [True, 2, "2"]
def bump(pipe):
    v = int(pipe.get("{tx}a"))
    pipe.multi()
    pipe.set("{tx}a", v + 1)
assert r.transaction(bump, "{tx}a") == [True]
assert r.get("{tx}a") == "3"
r.mset({f"scan:{i}": i for i in range(50)})
assert sorted(r.scan_iter(match="scan:*", count=7)) == sorted(f"scan:{i}" for i in range(50))
assert r.type("scan:1") == "string"
assert r.incrbyfloat("fl", 2.5) == 2.5
assert r.getex("scan:1", ex=100) == "1" and r.ttl("scan:1") == 100
r3 = redis.Redis(host=sys.argv[1], port=int(sys.argv[2]), decode_responses=True, protocol=3)
assert r3.hgetall("user:1") == {"name": "ann", "visits": "3"}
assert r3.get("nokey") is None
assert r3.config_get("maxclients") == {"maxclients": "10000"}
print("OK")
"#;

#[test]
fn redis_py_expiry_hashes_transactions_and_scan() {
    let c = Cluster::start(false);
    let port = c.addrs[0].rsplit(':').next().unwrap().to_string();
    let out = Command::new("python3")
        .args(["-c", REDIS_PY_COMMANDS, "127.0.0.1", &port])
        .output()
        .expect("python3 not found: run scripts/test (it installs redis-py into target/test-venv)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.code() == Some(3) {
        panic!(
            "import redis failed: run scripts/test (it installs redis-py into target/test-venv)\n{stdout}{stderr}"
        );
    }
    assert!(out.status.success(), "redis-py failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("OK"), "{stdout}");
}

#[test]
fn ttls_carry_over_leader_changes() {
    let c = Cluster::start(false);
    c.spread_leaders();
    let shard = shard_of(b"short", SHARDS);
    let mut conn = c.conn(0);
    assert_eq!(conn.call(&["SET", "{short}long", "v", "EX", "100"]), ok());
    assert_eq!(conn.call(&["SET", "short", "v", "PX", "1500"]), ok());
    let start = Instant::now();
    // Move the shard's leadership around while the key lives.
    let leader = c.agreed_leader(shard).unwrap();
    c.move_leader(shard, leader % 3 + 1);
    c.move_leader(shard, (leader + 1) % 3 + 1);
    let Resp::Int(left) = conn.call(&["PTTL", "short"]) else {
        panic!()
    };
    let elapsed = start.elapsed().as_millis() as i64;
    // The TTL carried over (never reset, never grown). How much of it is
    // gone depends on the shard's replicated clock, which moves only with
    // stamped entries: an idle shard's clock may lag the wall clock, so
    // no lower bound on the time gone is asserted.
    if elapsed < 1400 {
        assert!(left > 0 && left <= 1500, "PTTL {left} after {elapsed} ms");
    }
    assert_eq!(conn.call(&["TTL", "{short}long"]), Resp::Int(100));
    wait_until("short to expire", || {
        c.conn(2).call(&["EXISTS", "short"]) == Resp::Int(0)
    });
    assert!(
        start.elapsed() >= Duration::from_millis(1490),
        "expired early"
    );
    // Every replica deletes it (the sweeper of the new leader's node).
    wait_until("short to be swept everywhere", || {
        (0..3).all(|i| text(&c.conn(i).call(&["INFO", "keyspace"])).contains("db0:keys=1,"))
    });
}
