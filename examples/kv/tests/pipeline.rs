//! Pipelining and limits over raw TCP sockets speaking RESP, against an
//! in-process three-node cluster (three NodeHosts on loopback, as the
//! no-argument `longship-kv` runs them).
//!
//! Every test checks behaviour: replies in order, their values against a
//! model, limits answered with an `-ERR` naming the limit.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use longship_kv::server::{KvNode, ServerConfig, serve, shard_of};

mod common;

const SHARDS: u64 = 4;

/// Three NodeHosts in this process, each serving the Redis protocol.
struct Cluster {
    nodes: Vec<Arc<KvNode>>,
    addrs: Vec<String>,
    rt: Option<tokio::runtime::Runtime>,
    _dir: tempfile::TempDir,
}

impl Cluster {
    fn start(server: ServerConfig) -> Cluster {
        let (dir, nodes) = common::start_nodes(SHARDS, &server);
        let hosts: Vec<_> = nodes.iter().map(|n| (n.node_id, n.nh.clone())).collect();
        for n in &nodes {
            n.set_local_hosts(hosts.clone());
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let addrs = nodes
            .iter()
            .map(|n| {
                let l = rt
                    .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
                    .unwrap();
                let a = l.local_addr().unwrap().to_string();
                rt.spawn(serve(l, n.clone()));
                a
            })
            .collect::<Vec<_>>();
        let c = Cluster {
            nodes,
            addrs,
            rt: Some(rt),
            _dir: dir,
        };
        for a in &c.addrs {
            wait_ready(a);
        }
        c
    }

    fn conn(&self, i: usize) -> Conn {
        Conn::connect(&self.addrs[i])
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
        for n in &self.nodes {
            n.nh.close();
        }
    }
}

fn wait_ready(addr: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut c = Conn::connect(addr);
        c.send(&cmd(&["DBSIZE"]));
        if let Ok(Resp::Int(_)) = c.try_read() {
            return;
        }
        assert!(Instant::now() < deadline, "{addr} did not become ready");
        // Polling a condition (shards electing leaders), not synchronising on time.
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A RESP reply.
#[derive(Debug, Clone, PartialEq)]
enum Resp {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Vec<Resp>),
}

fn bulk(s: &str) -> Resp {
    Resp::Bulk(Some(s.as_bytes().to_vec()))
}

fn ok() -> Resp {
    Resp::Simple("OK".into())
}

/// The RESP encoding of a command.
fn cmd<A: AsRef<[u8]>>(args: &[A]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        let a = a.as_ref();
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

struct Conn {
    r: BufReader<TcpStream>,
    w: TcpStream,
}

impl Conn {
    fn connect(addr: &str) -> Conn {
        let s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        Conn {
            r: BufReader::with_capacity(1 << 20, s.try_clone().unwrap()),
            w: s,
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.w.write_all(bytes).unwrap();
    }

    fn try_read(&mut self) -> std::io::Result<Resp> {
        let mut line = Vec::new();
        self.r.read_until(b'\n', &mut line)?;
        if line.is_empty() {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let body = String::from_utf8_lossy(&line).trim_end().to_string();
        let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, "bad reply");
        let rest = body.get(1..).unwrap_or("");
        match body.chars().next() {
            Some('+') => Ok(Resp::Simple(rest.into())),
            Some('-') => Ok(Resp::Error(rest.into())),
            Some(':') => Ok(Resp::Int(rest.parse().map_err(|_| bad())?)),
            Some('$') => {
                let n: i64 = rest.parse().map_err(|_| bad())?;
                if n < 0 {
                    return Ok(Resp::Bulk(None));
                }
                let mut buf = vec![0u8; n as usize + 2];
                self.r.read_exact(&mut buf)?;
                buf.truncate(n as usize);
                Ok(Resp::Bulk(Some(buf)))
            }
            Some('*') => {
                let n: i64 = rest.parse().map_err(|_| bad())?;
                (0..n.max(0))
                    .map(|_| self.try_read())
                    .collect::<std::io::Result<Vec<_>>>()
                    .map(Resp::Array)
            }
            _ => Err(bad()),
        }
    }

    fn read(&mut self) -> Resp {
        self.try_read().expect("a reply")
    }

    fn call<A: AsRef<[u8]>>(&mut self, args: &[A]) -> Resp {
        self.send(&cmd(args));
        self.read()
    }

    /// Whether the server closed the connection (EOF, or reset).
    fn is_closed(&mut self) -> bool {
        let mut b = [0u8; 1];
        matches!(self.r.read(&mut b), Ok(0) | Err(_))
    }
}

#[test]
fn pipelined_sets_then_a_get_in_one_write_see_the_last_set() {
    let c = Cluster::start(ServerConfig::default());
    let mut conn = c.conn(1);
    let mut req = Vec::new();
    for i in 0..200 {
        req.extend(cmd(&["SET", "k", &format!("v{i}")]));
    }
    req.extend(cmd(&["GET", "k"]));
    conn.send(&req);
    for i in 0..200 {
        assert_eq!(conn.read(), ok(), "reply {i}");
    }
    assert_eq!(conn.read(), bulk("v199"));
}

#[test]
fn pipelined_incrs_reply_in_order() {
    let c = Cluster::start(ServerConfig::default());
    let mut conn = c.conn(0);
    let mut req = cmd(&["SET", "c", "0"]);
    for _ in 0..200 {
        req.extend(cmd(&["INCR", "c"]));
    }
    conn.send(&req);
    assert_eq!(conn.read(), ok());
    for i in 1..=200 {
        assert_eq!(conn.read(), Resp::Int(i));
    }
    assert_eq!(c.conn(2).call(&["GET", "c"]), bulk("200"));
}

#[test]
fn three_thousand_pings_in_one_write_all_get_a_pong() {
    let c = Cluster::start(ServerConfig::default());
    let mut conn = c.conn(0);
    conn.send(&b"*1\r\n$4\r\nPING\r\n".repeat(3000));
    for i in 0..3000 {
        assert_eq!(conn.read(), Resp::Simple("PONG".into()), "reply {i}");
    }
    // Inline commands too.
    conn.send(&b"PING\r\n".repeat(3000));
    for _ in 0..3000 {
        assert_eq!(conn.read(), Resp::Simple("PONG".into()));
    }
    // Empty commands take no reply and no memory.
    let mut req = b"*0\r\n".repeat(2_000_000);
    req.extend(cmd(&["PING"]));
    conn.send(&req);
    assert_eq!(conn.read(), Resp::Simple("PONG".into()));
}

#[test]
fn a_client_that_writes_100k_commands_before_reading_gets_every_reply_in_order() {
    let c = Cluster::start(ServerConfig::default());
    const N: usize = 100_000;
    const KEYS: u64 = 50;
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut rnd = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    // A local model of every key gives the expected reply of each command.
    let mut model: std::collections::HashMap<String, i64> = Default::default();
    let mut req = Vec::with_capacity(N * 40);
    let mut expected = Vec::with_capacity(N);
    for i in 0..N {
        let key = format!("key:{}", rnd() % KEYS);
        match rnd() % 3 {
            0 => {
                let v = (i as i64) * 7 - 1000;
                req.extend(cmd(&["SET", &key, &v.to_string()]));
                model.insert(key, v);
                expected.push(ok());
            }
            1 => {
                req.extend(cmd(&["GET", &key]));
                expected.push(match model.get(&key) {
                    Some(v) => bulk(&v.to_string()),
                    None => Resp::Bulk(None),
                });
            }
            _ => {
                req.extend(cmd(&["INCR", &key]));
                let v = model.entry(key).or_insert(0);
                *v += 1;
                expected.push(Resp::Int(*v));
            }
        }
    }
    let mut conn = c.conn(2);
    let mut w = conn.w.try_clone().unwrap();
    // Everything is written before the first reply is read.
    let writer = std::thread::spawn(move || w.write_all(&req));
    writer
        .join()
        .unwrap()
        .expect("the server takes all 100,000 commands");
    for (i, want) in expected.iter().enumerate() {
        let got = conn.read();
        assert_eq!(&got, want, "reply {i}");
    }
}

#[test]
fn mixed_pipelines_across_shards_keep_per_key_order() {
    let c = Cluster::start(ServerConfig::default());
    let mut conn = c.conn(0);
    let mut req = Vec::new();
    let mut want = Vec::new();
    for round in 0..5 {
        for k in 0..20 {
            let key = format!("m{k}");
            req.extend(cmd(&["APPEND", &key, &format!("{round},")]));
            want.push(Resp::Int(((round + 1) * 2) as i64));
        }
        let keys: Vec<String> = (0..20).map(|k| format!("m{k}")).collect();
        let mut mget = vec!["MGET".to_string()];
        mget.extend(keys.iter().cloned());
        req.extend(cmd(&mget));
        let v: String = (0..=round).map(|r| format!("{r},")).collect();
        want.push(Resp::Array(vec![bulk(&v); 20]));
        let mut del = vec!["EXISTS".to_string()];
        del.extend(keys.iter().cloned());
        del.push("nokey".into());
        req.extend(cmd(&del));
        want.push(Resp::Int(20));
    }
    req.extend(cmd(&["DBSIZE"]));
    want.push(Resp::Int(20));
    req.extend(cmd(&["DEL", "m0", "m1", "nokey"]));
    want.push(Resp::Int(2));
    req.extend(cmd(&["DBSIZE"]));
    want.push(Resp::Int(18));
    req.extend(cmd(&["STRLEN", "m2"]));
    want.push(Resp::Int(10));
    conn.send(&req);
    for (i, w) in want.iter().enumerate() {
        assert_eq!(&conn.read(), w, "reply {i}");
    }
}

/// Keys that all live on one shard.
fn keys_on_one_shard(n: usize) -> Vec<String> {
    let target = shard_of(b"big", SHARDS);
    (0..)
        .map(|i| format!("s{i}"))
        .filter(|k| shard_of(k.as_bytes(), SHARDS) == target)
        .take(n)
        .collect()
}

#[test]
fn a_shard_list_bigger_than_one_entry_is_split_in_order() {
    let c = Cluster::start(ServerConfig::default());
    let mut conn = c.conn(1);
    // 100 values of 100 KB on one shard: more than one 8 MB entry.
    let keys = keys_on_one_shard(100);
    let mut mset: Vec<Vec<u8>> = vec![b"MSET".to_vec()];
    for (i, k) in keys.iter().enumerate() {
        mset.push(k.clone().into_bytes());
        mset.push(vec![b'a' + (i % 26) as u8; 100 << 10]);
    }
    let mut req = cmd(&mset);
    req.extend(cmd(&["SET", &keys[99], "last"]));
    req.extend(cmd(&["GET", &keys[99]]));
    req.extend(cmd(&["STRLEN", &keys[0]]));
    conn.send(&req);
    assert_eq!(conn.read(), ok());
    assert_eq!(conn.read(), ok());
    assert_eq!(conn.read(), bulk("last"));
    assert_eq!(conn.read(), Resp::Int(100 << 10));
}

#[test]
fn a_read_too_big_for_a_batch_result_keeps_its_place_in_the_order() {
    let c = Cluster::start(ServerConfig::default());
    let mut conn = c.conn(0);
    // A value of 1.5 MB: more than a batch returns through the log.
    let big = vec![b'x'; 3 << 19];
    assert_eq!(conn.call(&[b"SET".as_slice(), b"big", &big]), ok());
    let mut req = cmd(&["APPEND", "big", "y"]);
    req.extend(cmd(&["GET", "big"]));
    req.extend(cmd(&["SET", "big", "small"]));
    req.extend(cmd(&["GET", "big"]));
    conn.send(&req);
    assert_eq!(conn.read(), Resp::Int(big.len() as i64 + 1));
    let mut want = big.clone();
    want.push(b'y');
    assert_eq!(conn.read(), Resp::Bulk(Some(want)));
    assert_eq!(conn.read(), ok());
    assert_eq!(conn.read(), bulk("small"));
}

#[test]
fn a_bulk_over_proto_max_bulk_len_is_refused_and_other_clients_keep_working() {
    let c = Cluster::start(ServerConfig {
        proto_max_bulk_len: 1024,
        ..ServerConfig::default()
    });
    let mut other = c.conn(0);
    assert_eq!(other.call(&["SET", "a", "1"]), ok());
    let mut bad = c.conn(0);
    let mut req = cmd(&["SET", "ok", "before"]);
    req.extend(cmd(&["SET".as_bytes(), b"k", &[b'v'; 1025]]));
    bad.send(&req);
    assert_eq!(bad.read(), ok(), "commands before the bad one are executed");
    match bad.read() {
        Resp::Error(e) => assert!(
            e.starts_with("ERR") && e.contains("proto-max-bulk-len (1024 bytes)"),
            "{e}"
        ),
        other => panic!("{other:?}"),
    }
    assert!(bad.is_closed(), "a protocol error closes the connection");
    assert_eq!(other.call(&["GET", "ok"]), bulk("before"));
    assert_eq!(other.call(&["GET", "k"]), Resp::Bulk(None));
    assert_eq!(other.call(&[b"SET".as_slice(), b"k", &[b'v'; 1024]]), ok());
}

#[test]
fn append_never_grows_a_value_past_proto_max_bulk_len() {
    let c = Cluster::start(ServerConfig {
        proto_max_bulk_len: 1024,
        ..ServerConfig::default()
    });
    let mut conn = c.conn(2);
    assert_eq!(conn.call(&[b"SET".as_slice(), b"a", &[b'x'; 1000]]), ok());
    match conn.call(&[b"APPEND".as_slice(), b"a", &[b'y'; 25]]) {
        Resp::Error(e) => assert!(
            e.contains("string exceeds maximum allowed size") && e.contains("1024"),
            "{e}"
        ),
        other => panic!("{other:?}"),
    }
    assert_eq!(conn.call(&["STRLEN", "a"]), Resp::Int(1000));
    assert_eq!(
        conn.call(&[b"APPEND".as_slice(), b"a", &[b'y'; 24]]),
        Resp::Int(1024)
    );
    assert!(matches!(conn.call(&["APPEND", "a", "z"]), Resp::Error(_)));
    assert_eq!(conn.call(&["STRLEN", "a"]), Resp::Int(1024));
}

#[test]
fn a_value_over_the_raft_entry_limit_gets_an_error_naming_it() {
    let c = Cluster::start(ServerConfig::default());
    let mut conn = c.conn(0);
    let limit = c.nodes[0].max_entry_bytes();
    let value = vec![b'v'; limit + 1];
    match conn.call(&[b"SET".as_slice(), b"huge", &value]) {
        Resp::Error(e) => assert!(e.contains("max_proposal_bytes"), "{e}"),
        other => panic!("{other:?}"),
    }
    // The connection and the shard go on.
    assert_eq!(conn.call(&["GET", "huge"]), Resp::Bulk(None));
    assert_eq!(conn.call(&["SET", "huge", "small"]), ok());
}

#[test]
fn maxclients_refuses_the_connection_over_the_limit() {
    let c = Cluster::start(ServerConfig {
        maxclients: 2,
        ..ServerConfig::default()
    });
    // wait_ready's connections are closed; wait until the node counted them out.
    let deadline = Instant::now() + Duration::from_secs(10);
    while c.nodes[0].clients() > 0 {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut a = c.conn(0);
    let mut b = c.conn(0);
    assert_eq!(a.call(&["PING"]), Resp::Simple("PONG".into()));
    assert_eq!(b.call(&["PING"]), Resp::Simple("PONG".into()));
    let mut third = c.conn(0);
    assert_eq!(
        third.read(),
        Resp::Error("ERR max number of clients reached".into())
    );
    assert!(third.is_closed());
    // Other nodes count their own clients.
    assert_eq!(c.conn(1).call(&["PING"]), Resp::Simple("PONG".into()));
    drop(b);
    let deadline = Instant::now() + Duration::from_secs(10);
    while c.nodes[0].clients() > 1 {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(c.conn(0).call(&["PING"]), Resp::Simple("PONG".into()));
    assert_eq!(a.call(&["PING"]), Resp::Simple("PONG".into()));
}

#[test]
fn idle_clients_are_closed_after_timeout_and_busy_ones_are_not() {
    let c = Cluster::start(ServerConfig {
        timeout: Duration::from_secs(1),
        ..ServerConfig::default()
    });
    let mut idle = c.conn(0);
    assert_eq!(idle.call(&["PING"]), Resp::Simple("PONG".into()));
    let start = Instant::now();
    // A client that sends a command every 300 ms (the pace is what is
    // tested) outlives the 1 s timeout.
    let mut busy = c.conn(0);
    for _ in 0..6 {
        assert_eq!(busy.call(&["PING"]), Resp::Simple("PONG".into()));
        std::thread::sleep(Duration::from_millis(300));
    }
    assert_eq!(busy.call(&["GET", "nothing"]), Resp::Bulk(None));
    assert!(idle.is_closed());
    assert!(start.elapsed() >= Duration::from_millis(900));
}

#[test]
fn an_incomplete_command_over_the_query_buffer_limit_closes_only_its_connection() {
    let c = Cluster::start(ServerConfig {
        client_query_buffer_limit: 64 << 10,
        ..ServerConfig::default()
    });
    let mut other = c.conn(1);
    let mut conn = c.conn(1);
    // A header announcing 1 MB, then 200 KB of it.
    let mut req = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1048576\r\n".to_vec();
    req.extend(vec![b'v'; 200 << 10]);
    // The server may close before taking everything: a failed write is fine.
    let _ = conn.w.write_all(&req);
    match conn.try_read() {
        Ok(Resp::Error(e)) => assert!(e.contains("client-query-buffer-limit"), "{e}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(other.call(&["SET", "k", "v"]), ok());
}

#[test]
fn the_local_cluster_sends_requests_to_the_nodehost_that_leads_the_shard() {
    let c = Cluster::start(ServerConfig::default());
    for s in 1..=SHARDS {
        let shard = longship::ShardId(s);
        // Every shard has a leader once the cluster is ready; retry across a
        // leader change between the two looks.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let l = c.nodes[0].nh.get_leader(shard).unwrap();
            let l = l.unwrap_or_else(|| panic!("shard {s} has no known leader"));
            let leader = &c.nodes[(l.replica_id.get() - 1) as usize].nh;
            if c.nodes
                .iter()
                .all(|n| Arc::ptr_eq(n.host_for(shard), leader))
            {
                break;
            }
            // Polling until every node has heard of the same leader.
            assert!(
                Instant::now() < deadline,
                "shard {s} not routed to its leader"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    // A node that knows no sibling NodeHosts uses its own.
    let alone = KvNode::new(c.nodes[1].nh.clone(), SHARDS, 2);
    for s in 1..=SHARDS {
        assert!(Arc::ptr_eq(
            alone.host_for(longship::ShardId(s)),
            &c.nodes[1].nh
        ));
    }
}
