//! An in-process three-node cluster serving the Redis protocol, and a
//! RESP client, shared by the integration tests.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use longship::{ReplicaId, ShardId};
use longship_kv::cluster::{NodeSpec, start_node};
use longship_kv::server::{KvNode, ServerConfig, serve};
use longship_kv::slots::shard_of;

pub const SHARDS: u64 = 6;

pub use longship_testkit::free_port;

/// Starts three kv nodes (one NodeHost each, in this process) with
/// `shards` shards over free loopback raft ports. A raft port picked by
/// `free_port` may be taken by another test before the node binds it: then
/// all start over with new ports.
pub fn start_nodes(shards: u64, server: &ServerConfig) -> (tempfile::TempDir, Vec<Arc<KvNode>>) {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let dir = tempfile::tempdir().unwrap();
        let peers: BTreeMap<u64, String> = (1..=3)
            .map(|i| (i, format!("127.0.0.1:{}", free_port())))
            .collect();
        let mut nodes: Vec<Arc<KvNode>> = Vec::new();
        let mut failed = None;
        for i in 1..=3u64 {
            match start_node(&NodeSpec {
                node_id: i,
                raft_addr: peers[&i].clone(),
                peers: peers.clone(),
                shards,
                data_dir: dir.path().join(format!("node{i}")),
                rtt_ms: 10,
                snapshot_entries: 1000,
                server: server.clone(),
                raft_tls: None,
                lease_reads: false,
                metrics_address: String::new(),
            }) {
                Ok(n) => nodes.push(n),
                Err(e) => {
                    failed = Some(format!("node {i}: {e}"));
                    break;
                }
            }
        }
        match failed {
            None => return (dir, nodes),
            Some(e) if e.contains("in use") && attempt < 5 => {
                for n in &nodes {
                    n.nh.close();
                }
            }
            Some(e) => panic!("{e}"),
        }
    }
}

pub struct Cluster {
    pub nodes: Vec<Arc<KvNode>>,
    pub addrs: Vec<String>,
    rt: Option<tokio::runtime::Runtime>,
    _dir: tempfile::TempDir,
}

impl Cluster {
    /// Three nodes that know each other's Redis addresses.
    pub fn start(cluster_redirects: bool) -> Cluster {
        Cluster::start_with(ServerConfig {
            cluster_redirects,
            ..ServerConfig::default()
        })
    }

    /// Three nodes with these settings (their Redis addresses filled in).
    pub fn start_with(config: ServerConfig) -> Cluster {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let listeners: Vec<tokio::net::TcpListener> = (0..3)
            .map(|_| {
                rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
                    .unwrap()
            })
            .collect();
        let addrs: Vec<String> = listeners
            .iter()
            .map(|l| l.local_addr().unwrap().to_string())
            .collect();
        let server = ServerConfig {
            redis_addrs: (1..=3u64).zip(addrs.iter().cloned()).collect(),
            ..config
        };
        let (dir, nodes) = start_nodes(SHARDS, &server);
        let hosts: Vec<_> = nodes.iter().map(|n| (n.node_id, n.nh.clone())).collect();
        for n in &nodes {
            n.set_local_hosts(hosts.clone());
        }
        for (l, n) in listeners.into_iter().zip(&nodes) {
            rt.spawn(serve(l, n.clone()));
        }
        let c = Cluster {
            nodes,
            addrs,
            rt: Some(rt),
            _dir: dir,
        };
        c.wait_leaders();
        c
    }

    pub fn conn(&self, i: usize) -> Conn {
        Conn::connect(&self.addrs[i])
    }

    /// The leader of `shard` when every node knows the same one.
    pub fn agreed_leader(&self, shard: ShardId) -> Option<u64> {
        let ls: Vec<_> = self
            .nodes
            .iter()
            .map(|n| n.nh.get_leader(shard).ok().flatten())
            .collect();
        let first = ls[0]?;
        ls.iter()
            .all(|l| l.is_some_and(|l| l.replica_id == first.replica_id))
            .then_some(first.replica_id.get())
    }

    /// Waits until every node knows the same leader of every shard.
    pub fn wait_leaders(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        // Polling a condition (elections), not synchronising on time.
        while (1..=SHARDS).any(|s| self.agreed_leader(ShardId(s)).is_none()) {
            assert!(Instant::now() < deadline, "shards did not elect leaders");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Moves the leadership of `shard` to node `to` and waits until every
    /// node knows it.
    pub fn move_leader(&self, shard: ShardId, to: u64) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match self.agreed_leader(shard) {
                Some(l) if l == to => return,
                Some(l) => {
                    let _ = self.nodes[(l - 1) as usize]
                        .nh
                        .request_leader_transfer(shard, ReplicaId(to));
                }
                None => {}
            }
            assert!(
                Instant::now() < deadline,
                "shard {shard} did not move to {to}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Spreads the leaders: shard s is led by node (s - 1) % 3 + 1.
    pub fn spread_leaders(&self) {
        for s in 1..=SHARDS {
            self.move_leader(ShardId(s), (s - 1) % 3 + 1);
        }
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

#[derive(Debug, Clone, PartialEq)]
pub enum Resp {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Vec<Resp>),
    NilArray,
    /// RESP3 `%`.
    Map(Vec<(Resp, Resp)>),
    /// RESP3 `_`.
    Null,
}

pub fn bulk(s: &str) -> Resp {
    Resp::Bulk(Some(s.as_bytes().to_vec()))
}

pub fn ok() -> Resp {
    Resp::Simple("OK".into())
}

pub fn cmd<A: AsRef<[u8]>>(args: &[A]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        let a = a.as_ref();
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

pub struct Conn {
    pub r: BufReader<TcpStream>,
    pub w: TcpStream,
}

impl Conn {
    pub fn connect(addr: &str) -> Conn {
        let s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        Conn {
            r: BufReader::new(s.try_clone().unwrap()),
            w: s,
        }
    }

    pub fn read(&mut self) -> Resp {
        let mut line = Vec::new();
        self.r.read_until(b'\n', &mut line).unwrap();
        assert!(!line.is_empty(), "connection closed");
        let body = String::from_utf8_lossy(&line).trim_end().to_string();
        let rest = body.get(1..).unwrap_or("");
        match body.chars().next() {
            Some('+') => Resp::Simple(rest.into()),
            Some('-') => Resp::Error(rest.into()),
            Some(':') => Resp::Int(rest.parse().unwrap()),
            Some('$') => {
                let n: i64 = rest.parse().unwrap();
                if n < 0 {
                    return Resp::Bulk(None);
                }
                let mut buf = vec![0u8; n as usize + 2];
                self.r.read_exact(&mut buf).unwrap();
                buf.truncate(n as usize);
                Resp::Bulk(Some(buf))
            }
            Some('*') => {
                let n: i64 = rest.parse().unwrap();
                if n < 0 {
                    return Resp::NilArray;
                }
                Resp::Array((0..n).map(|_| self.read()).collect())
            }
            Some('%') => {
                let n: usize = rest.parse().unwrap();
                Resp::Map((0..n).map(|_| (self.read(), self.read())).collect())
            }
            Some('_') => Resp::Null,
            _ => panic!("bad reply {body:?}"),
        }
    }

    pub fn call<A: AsRef<[u8]>>(&mut self, args: &[A]) -> Resp {
        self.w.write_all(&cmd(args)).unwrap();
        self.read()
    }
}

/// A key whose shard is `shard`.
pub fn key_on(shard: u64, prefix: &str) -> String {
    (0..)
        .map(|i| format!("{prefix}{i}"))
        .find(|k| shard_of(k.as_bytes(), SHARDS) == ShardId(shard))
        .unwrap()
}

pub fn int(r: &Resp) -> i64 {
    match r {
        Resp::Int(n) => *n,
        other => panic!("not an integer: {other:?}"),
    }
}

pub fn text(r: &Resp) -> String {
    match r {
        Resp::Bulk(Some(b)) => String::from_utf8_lossy(b).into_owned(),
        other => panic!("not a bulk: {other:?}"),
    }
}

pub fn tool(name: &str) -> Command {
    let found = Command::new(name)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "{name} not found: install redis-tools (scripts/test does)"
    );
    Command::new(name)
}
