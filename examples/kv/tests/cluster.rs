//! The Redis Cluster protocol against an in-process three-node cluster:
//! `CLUSTER` commands, `-MOVED` and `-CROSSSLOT` in cluster mode,
//! forwarding otherwise, `redis-cli -c`, and redis-py's `RedisCluster`
//! through leader transfers.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;
use longship::ShardId;
use longship_kv::server::cluster_node_id;
use longship_kv::slots::{key_slot, shard_of, slot_range};

#[test]
fn cluster_commands_describe_the_slots_and_their_leaders() {
    let c = Cluster::start(false);
    c.spread_leaders();
    let mut conn = c.conn(0);
    assert_eq!(conn.call(&["CLUSTER", "KEYSLOT", "foo"]), Resp::Int(12182));
    assert_eq!(
        conn.call(&["CLUSTER", "KEYSLOT", "{user1000}.following"]),
        Resp::Int(key_slot(b"user1000") as i64)
    );
    assert_eq!(
        conn.call(&["cluster", "myid"]),
        bulk(&cluster_node_id(1)),
        "subcommands are case-insensitive"
    );
    assert!(
        matches!(conn.call(&["CLUSTER", "NOPE"]), Resp::Error(e) if e.starts_with("ERR unknown subcommand"))
    );
    assert!(
        matches!(conn.call(&["CLUSTER", "KEYSLOT"]), Resp::Error(e) if e.contains("wrong number of arguments"))
    );

    // CLUSTER SLOTS: contiguous ranges covering every slot, each with its
    // shard's leader first, then the two other nodes.
    let Resp::Array(ranges) = conn.call(&["CLUSTER", "SLOTS"]) else {
        panic!("CLUSTER SLOTS is not an array");
    };
    assert_eq!(ranges.len(), SHARDS as usize);
    let mut next = 0;
    for (i, r) in ranges.iter().enumerate() {
        let Resp::Array(r) = r else { panic!("{r:?}") };
        let (a, b) = (int(&r[0]), int(&r[1]));
        assert_eq!(a, next);
        let shard = ShardId(i as u64 + 1);
        assert_eq!(slot_range(shard, SHARDS), Some((a as u16, b as u16)));
        next = b + 1;
        assert_eq!(r.len(), 5, "master and two replicas");
        let Resp::Array(master) = &r[2] else { panic!() };
        let leader = (i as u64) % 3 + 1;
        let (host, port) = c.addrs[leader as usize - 1].rsplit_once(':').unwrap();
        assert_eq!(master[0], bulk(host));
        assert_eq!(int(&master[1]), port.parse::<i64>().unwrap());
        assert_eq!(master[2], bulk(&cluster_node_id(leader)));
    }
    assert_eq!(next, 16384);

    // CLUSTER SHARDS: the same ranges, the leader as master.
    let Resp::Array(shards) = conn.call(&["CLUSTER", "SHARDS"]) else {
        panic!()
    };
    assert_eq!(shards.len(), SHARDS as usize);
    let Resp::Array(first) = &shards[0] else {
        panic!()
    };
    assert_eq!(first[0], bulk("slots"));
    assert_eq!(first[2], bulk("nodes"));
    let Resp::Array(nodes) = &first[3] else {
        panic!()
    };
    assert_eq!(nodes.len(), 3);
    let Resp::Array(m) = &nodes[0] else { panic!() };
    let field = |m: &[Resp], k: &str| {
        let i = m.iter().position(|x| *x == bulk(k)).unwrap();
        m[i + 1].clone()
    };
    assert_eq!(field(m, "role"), bulk("master"));
    assert_eq!(field(m, "id"), bulk(&cluster_node_id(1)));
    let Resp::Array(r) = &nodes[1] else { panic!() };
    assert_eq!(field(r, "role"), bulk("replica"));

    // CLUSTER NODES: every node leads two shards, so all three are masters.
    let nodes = text(&conn.call(&["CLUSTER", "NODES"]));
    let lines: Vec<&str> = nodes.lines().collect();
    assert_eq!(lines.len(), 3, "{nodes}");
    for (i, l) in lines.iter().enumerate() {
        let f: Vec<&str> = l.split(' ').collect();
        assert_eq!(f[0], cluster_node_id(i as u64 + 1));
        assert!(f[1].starts_with(&c.addrs[i]), "{l}");
        assert_eq!(f[2], if i == 0 { "myself,master" } else { "master" });
        assert_eq!(f.len(), 8 + 2, "two slot ranges: {l}");
    }
    let info = text(&conn.call(&["CLUSTER", "INFO"]));
    assert!(info.contains("cluster_state:ok"), "{info}");
    assert!(info.contains("cluster_slots_ok:16384"), "{info}");
    assert!(info.contains("cluster_known_nodes:3"), "{info}");
    assert!(info.contains("cluster_size:3"), "{info}");
    assert!(text(&conn.call(&["INFO"])).contains("cluster_enabled:1"));
}

#[test]
fn cluster_mode_connections_get_moved_and_crossslot_and_others_are_forwarded() {
    let c = Cluster::start(false);
    c.spread_leaders();
    // Shard 2 is led by node 2; node 1 is asked.
    let k2 = key_on(2, "k");
    let k1 = key_on(1, "k");
    let slot2 = key_slot(k2.as_bytes());
    let mut plain = c.conn(0);
    assert_eq!(plain.call(&["SET", &k2, "v"]), ok(), "forwarded");
    assert_eq!(plain.call(&["GET", &k2]), bulk("v"));
    assert_eq!(
        plain.call(&["MSET", &k1, "1", &k2, "2"]),
        ok(),
        "per key outside cluster mode"
    );
    assert_eq!(plain.call(&["DBSIZE"]), Resp::Int(2));

    let mut cl = c.conn(0);
    assert_eq!(cl.call(&["CLUSTER", "MYID"]), bulk(&cluster_node_id(1)));
    let moved = Resp::Error(format!("MOVED {slot2} {}", c.addrs[1]));
    assert_eq!(cl.call(&["GET", &k2]), moved);
    assert_eq!(cl.call(&["SET", &k2, "x"]), moved);
    assert_eq!(cl.call(&["GET", &k1]), bulk("1"), "its own shard is served");
    let cross = Resp::Error("CROSSSLOT Keys in request don't hash to the same slot".into());
    assert_eq!(cl.call(&["MSET", &k1, "1", &k2, "2"]), cross);
    assert_eq!(cl.call(&["MGET", &k1, &k2]), cross);
    assert_eq!(cl.call(&["DEL", &k1, &k2]), cross);
    assert_eq!(cl.call(&["EXISTS", &k1, &k2]), cross);
    // Hash tags put keys in one slot.
    let (t1, t2) = ("{tag}a", "{tag}b");
    let tag_shard = shard_of(b"tag", SHARDS);
    let mut at = c.conn((tag_shard.0 as usize - 1) % 3);
    assert_eq!(at.call(&["READONLY"]), ok());
    assert_eq!(at.call(&["READWRITE"]), ok(), "leaves cluster mode on");
    assert_eq!(
        at.call(&["CLUSTER", "KEYSLOT", t1]),
        at.call(&["CLUSTER", "KEYSLOT", t2])
    );
    assert_eq!(at.call(&["MSET", t1, "a", t2, "b"]), ok());
    assert_eq!(
        at.call(&["MGET", t1, t2]),
        Resp::Array(vec![bulk("a"), bulk("b")])
    );
    // In cluster mode DBSIZE counts the keys of the shards the node leads.
    assert_eq!(
        cl.call(&["DBSIZE"]),
        Resp::Int(1 + (tag_shard.0 % 3 == 1) as i64 * 2)
    );

    // READONLY: reads of any shard are served here (stale), writes move.
    let mut ro = c.conn(0);
    assert_eq!(ro.call(&["READONLY"]), ok());
    let deadline = Instant::now() + Duration::from_secs(10);
    // A follower applies the write soon after it commits.
    while ro.call(&["GET", &k2]) != bulk("2") {
        assert!(Instant::now() < deadline, "replica never applied the write");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(ro.call(&["SET", &k2, "y"]), moved);

    // --cluster-redirects: every connection is in cluster mode.
    drop(c);
    let c = Cluster::start(true);
    c.spread_leaders();
    let mut conn = c.conn(0);
    assert_eq!(
        conn.call(&["SET", &k2, "v"]),
        Resp::Error(format!("MOVED {slot2} {}", c.addrs[1]))
    );
    assert_eq!(c.conn(1).call(&["SET", &k2, "v"]), ok());
}

#[test]
fn redis_cli_in_cluster_mode_follows_redirects() {
    let c = Cluster::start(true);
    c.spread_leaders();
    let port = c.addrs[0].rsplit(':').next().unwrap();
    let n = 300;
    let mut input = String::new();
    for i in 0..n {
        input.push_str(&format!("SET key:{i} value-{i}\n"));
    }
    for i in 0..n {
        input.push_str(&format!("GET key:{i}\n"));
    }
    let mut child = tool("redis-cli")
        .args(["-c", "-p", port])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let (redirects, lines): (Vec<&str>, Vec<&str>) = stdout
        .lines()
        .partition(|l| l.starts_with("-> Redirected to slot"));
    assert_eq!(lines.len(), 2 * n, "{stdout}");
    assert!(
        redirects.len() >= 10,
        "redis-cli was redirected only {} times",
        redirects.len()
    );
    for (i, l) in lines[..n].iter().enumerate() {
        assert_eq!(*l, "OK", "SET key:{i}");
    }
    for (i, l) in lines[n..].iter().enumerate() {
        assert_eq!(*l, format!("value-{i}"), "GET key:{i}");
    }
    // The keys landed on every shard, and redis-cli was redirected.
    let moved: u64 = c.nodes.iter().map(|n| n.moved_replies()).sum();
    assert!(moved > 0, "no MOVED was sent");
    let mut conn = c.conn(1);
    assert_eq!(conn.call(&["READONLY"]), ok());
    for i in [0, n / 2, n - 1] {
        let k = format!("key:{i}");
        assert_eq!(conn.call(&["GET", &k]), bulk(&format!("value-{i}")));
    }
}

const REDIS_PY_TEST: &str = r#"
import sys
try:
    import redis
    from redis.cluster import RedisCluster
except ImportError as e:
    print("IMPORT_FAILED", e)
    sys.exit(3)

host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rc = RedisCluster(host=host, port=port, decode_responses=True, socket_timeout=20, protocol=2)
# Each node leads two shards: the slots go to three different masters.
masters = {rc.nodes_manager.slots_cache[s][0].name for s in range(0, 16384, 64)}
assert len(masters) == 3, masters
model = {}
for i in range(n):
    k = f"py:{i % 97}"
    if i % 3 == 0:
        assert rc.set(k, str(i))
        model[k] = str(i)
    elif i % 3 == 1:
        assert rc.get(k) == model.get(k), (k, rc.get(k), model.get(k))
    else:
        c = f"{{counter}}:{i % 5}"
        v = rc.incr(c)
        model[c] = str(v)
    if i % 50 == 0:
        # Keys of one slot in one command.
        assert rc.mset({"{t}a": str(i), "{t}b": str(i + 1)})
        assert rc.mget("{t}a", "{t}b") == [str(i), str(i + 1)]
        print("progress", i, flush=True)
for k, v in model.items():
    assert rc.get(k) == v, (k, rc.get(k), v)
assert rc.keyslot("foo") == 12182
print("OK", len(model), flush=True)
"#;

#[test]
fn redis_py_cluster_client_survives_leader_transfers() {
    let c = Arc::new(Cluster::start(true));
    c.spread_leaders();
    let port = c.addrs[0].rsplit(':').next().unwrap().to_string();
    let child = Command::new("python3")
        .args(["-c", REDIS_PY_TEST, "127.0.0.1", &port, "3000"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 not found: run scripts/test (it installs redis-py into target/test-venv)");
    // Leader transfers while the client runs: each shard's leadership
    // rotates to the next node, again and again.
    let stop = Arc::new(AtomicBool::new(false));
    let mover = {
        let (c, stop) = (c.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut transfers = 0;
            let mut round = 0u64;
            while !stop.load(Ordering::Acquire) {
                for s in 1..=SHARDS {
                    if stop.load(Ordering::Acquire) {
                        break;
                    }
                    c.move_leader(ShardId(s), (s + round) % 3 + 1);
                    transfers += 1;
                    std::thread::sleep(Duration::from_millis(100));
                }
                round += 1;
            }
            transfers
        })
    };
    let out = child.wait_with_output().unwrap();
    stop.store(true, Ordering::Release);
    let transfers = mover.join().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.code() == Some(3) {
        panic!(
            "import redis failed: run scripts/test (it installs redis-py into target/test-venv)\n{stdout}{stderr}"
        );
    }
    assert!(
        out.status.success(),
        "redis-py test failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("OK"), "{stdout}");
    assert!(
        transfers >= 3,
        "only {transfers} leader transfers during the run"
    );
    let moved: u64 = c.nodes.iter().map(|n| n.moved_replies()).sum();
    assert!(moved > 0, "the client was never redirected");
}
