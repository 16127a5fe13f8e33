//! Placed mode across processes: five `longship-kv` nodes form a cluster
//! through the master (`--join`; nodes 1-3 run the master), eight shards on
//! 3 of the 5 nodes. Keys written through any node (following `-MOVED`)
//! survive a kill -9 of a node: with `--dead-after-ms 5000` every shard is
//! back to three live replicas within 30 s. A sixth node joins and receives
//! replicas until every node is within one of the mean, within 60 s. The
//! `cluster show` and `cluster drain` commands work against the master.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use longship_master::MasterState;
use longship_master::decide::{leader_view, loads, running};
use longship_master::rpc::TcpMasterClient;

const SHARDS: u64 = 8;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Node {
    raft: String,
    redis: String,
    args: Vec<String>,
    child: Option<Child>,
}

impl Node {
    fn start(&mut self, log: &Path) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        self.child = Some(
            Command::new(env!("CARGO_BIN_EXE_longship-kv"))
                .args(&self.args)
                .env("RUST_BACKTRACE", "1")
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("start longship-kv"),
        );
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
    }
}

struct Cluster {
    dir: tempfile::TempDir,
    nodes: BTreeMap<u64, Node>,
    masters: Vec<String>,
    master_raft: BTreeMap<u64, String>,
}

impl Cluster {
    fn node_args(&self, i: u64, raft: &str, redis: &str) -> Vec<String> {
        let mut a: Vec<String> = [
            "--join",
            &self.masters.join(","),
            "--raft-addr",
            raft,
            "--redis-addr",
            redis,
            "--shards",
            &SHARDS.to_string(),
            "--data-dir",
            &self.dir.path().join(format!("node{i}")).to_string_lossy(),
            "--dead-after-ms",
            "5000",
            "--report-interval-ms",
            "200",
            "--snapshot-entries",
            "100",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if let Some(k) = self.master_raft.keys().position(|&m| m == i) {
            let peers: Vec<String> = self
                .master_raft
                .iter()
                .map(|(id, r)| format!("{id}={r}"))
                .collect();
            a.extend([
                "--node-id".to_string(),
                i.to_string(),
                "--master-peers".into(),
                peers.join(","),
                "--master-addr".into(),
                self.masters[k].clone(),
            ]);
        }
        a
    }

    fn add(&mut self, i: u64, raft: String) {
        let redis = format!("127.0.0.1:{}", free_port());
        let args = self.node_args(i, &raft, &redis);
        let mut n = Node {
            raft,
            redis,
            args,
            child: None,
        };
        n.start(&self.dir.path().join(format!("node{i}.log")));
        self.nodes.insert(i, n);
    }

    fn start(n: u64) -> Cluster {
        let mut c = Cluster {
            dir: tempfile::tempdir().unwrap(),
            nodes: BTreeMap::new(),
            masters: (1..=3)
                .map(|_| format!("127.0.0.1:{}", free_port()))
                .collect(),
            master_raft: (1..=3)
                .map(|i| (i, format!("127.0.0.1:{}", free_port())))
                .collect(),
        };
        for i in 1..=n {
            let raft = c
                .master_raft
                .get(&i)
                .cloned()
                .unwrap_or_else(|| format!("127.0.0.1:{}", free_port()));
            c.add(i, raft);
        }
        c
    }

    fn client(&self) -> TcpMasterClient {
        TcpMasterClient::new(self.masters.clone(), Duration::from_secs(5))
    }

    fn state(&self) -> Option<MasterState> {
        self.client().state().ok()
    }

    fn log_tail(&self) -> String {
        let mut out = String::new();
        for i in self.nodes.keys() {
            let p = self.dir.path().join(format!("node{i}.log"));
            let s = std::fs::read_to_string(p).unwrap_or_default();
            let tail: Vec<&str> = s.lines().rev().take(5).collect();
            out.push_str(&format!("node{i}: {tail:?}\n"));
        }
        out
    }
}

/// Every shard has three live voters on live nodes (none at `dead`) and
/// nothing is in flight.
fn fully_replicated(s: &MasterState, dead: Option<&str>) -> bool {
    s.shards.len() == SHARDS as usize
        && s.ops.is_empty()
        && s.shards.keys().all(|shard| {
            leader_view(s, *shard).is_some_and(|v| {
                v.membership.voters.len() == 3
                    && v.membership.non_votings.is_empty()
                    && v.membership.voters.iter().all(|(r, h)| {
                        Some(h.as_str()) != dead && running(s, h, *shard, *r).is_some()
                    })
            })
        })
}

fn wait_until(c: &Cluster, what: &str, within: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < within,
            "timed out waiting for: {what}\n{}",
            c.log_tail()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    start.elapsed()
}

/// A RESP client that follows `-MOVED`.
fn call(addr: &str, args: &[&str]) -> Result<String, String> {
    let mut addr = addr.to_string();
    for _ in 0..10 {
        let mut s = TcpStream::connect(&addr).map_err(|e| format!("{addr}: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut req = format!("*{}\r\n", args.len());
        for a in args {
            req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
        let mut r = BufReader::new(s);
        let mut line = String::new();
        r.read_line(&mut line).map_err(|e| e.to_string())?;
        let line = line.trim_end().to_string();
        match line.as_bytes().first() {
            Some(b'-') if line.starts_with("-MOVED ") => {
                addr = line.rsplit(' ').next().unwrap().to_string();
            }
            Some(b'-') => return Err(line),
            Some(b'+') => return Ok(line[1..].to_string()),
            Some(b'$') => {
                let n: i64 = line[1..].parse().unwrap();
                if n < 0 {
                    return Ok(String::new());
                }
                let mut b = vec![0u8; n as usize + 2];
                r.read_exact(&mut b).map_err(|e| e.to_string())?;
                b.truncate(n as usize);
                return Ok(String::from_utf8(b).unwrap());
            }
            _ => return Ok(line),
        }
    }
    Err("too many redirects".into())
}

/// Retries `call` while the cluster settles (elections, moves).
fn call_retry(addr: &str, args: &[&str]) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match call(addr, args) {
            Ok(v) => return v,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
            Err(e) => panic!("{args:?} on {addr}: {e}"),
        }
    }
}

#[test]
fn nodes_form_a_cluster_through_the_master_survive_a_kill9_and_balance_a_new_node() {
    let mut c = Cluster::start(5);
    wait_until(
        &c,
        "the shards created on 3 of 5 nodes",
        Duration::from_secs(60),
        || {
            c.state()
                .is_some_and(|s| s.hosts.len() == 5 && fully_replicated(&s, None))
        },
    );
    let s = c.state().unwrap();
    let l = loads(&s);
    assert_eq!(l.values().sum::<usize>(), 3 * SHARDS as usize);
    // Writes through node 1, whatever shard holds the key.
    let entry = c.nodes[&1].redis.clone();
    for k in 0..40 {
        assert_eq!(
            call_retry(&entry, &["SET", &format!("key{k}"), &format!("v{k}")]),
            "OK"
        );
    }
    // kill -9 the non-master node holding the most replicas.
    let victim = *[4u64, 5]
        .iter()
        .max_by_key(|i| l.get(&c.nodes[i].raft).copied().unwrap_or(0))
        .unwrap();
    let dead = c.nodes[&victim].raft.clone();
    assert!(l[&dead] > 0);
    c.nodes.get_mut(&victim).unwrap().kill9();
    let took = wait_until(
        &c,
        "every shard back to 3 live replicas",
        Duration::from_secs(30),
        || {
            c.state()
                .is_some_and(|s| s.hosts[&dead].dead && fully_replicated(&s, Some(&dead)))
        },
    );
    eprintln!("re-replicated {} replicas in {took:?}", l[&dead]);
    c.nodes.remove(&victim);
    let entry = c.nodes[&2].redis.clone();
    for k in 0..40 {
        assert_eq!(
            call_retry(&entry, &["GET", &format!("key{k}")]),
            format!("v{k}")
        );
    }
    // A sixth node joins and receives replicas until balanced.
    c.add(6, format!("127.0.0.1:{}", free_port()));
    let new = c.nodes[&6].raft.clone();
    let took = wait_until(
        &c,
        "replicas within one of the mean",
        Duration::from_secs(60),
        || {
            c.state().is_some_and(|s| {
                let l = loads(&s);
                s.ops.is_empty()
                    && l.len() == 5
                    && l.get(&new).copied().unwrap_or(0) > 0
                    && l.values().max().unwrap() - l.values().min().unwrap() <= 1
            })
        },
    );
    eprintln!("balanced with the new node in {took:?}");
    for k in 0..40 {
        assert_eq!(
            call_retry(&c.nodes[&6].redis, &["GET", &format!("key{k}")]),
            format!("v{k}")
        );
    }
    // The cluster commands.
    let show = Command::new(env!("CARGO_BIN_EXE_longship-kv"))
        .args(["cluster", "--master", &c.masters.join(","), "show"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&show.stdout);
    assert!(show.status.success(), "{text}");
    assert!(
        text.contains(&format!("node {new}")) && text.contains("shard 8 leader"),
        "{text}"
    );
    let drain = Command::new(env!("CARGO_BIN_EXE_longship-kv"))
        .args(["cluster", "--master", &c.masters.join(","), "drain", &new])
        .output()
        .unwrap();
    assert!(
        drain.status.success(),
        "{}",
        String::from_utf8_lossy(&drain.stderr)
    );
    wait_until(
        &c,
        "the drained node emptied",
        Duration::from_secs(60),
        || {
            c.state().is_some_and(|s| {
                fully_replicated(&s, None)
                    && s.shards
                        .values()
                        .all(|r| r.placement.values().all(|h| *h != new))
            })
        },
    );
}
