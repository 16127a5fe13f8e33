//! Placed mode across processes: five `longship-kv` nodes form a cluster
//! through the master (`--join`; nodes 1-3 run the master), sixteen shards
//! of three replicas on the five nodes, under a load of clients that
//! follow `-MOVED` and record every operation. The deadlines:
//! one node is killed with -9 and never restarted, and within 30 s
//! (`--dead-after-ms 5000`) every shard has three live replicas again; a
//! sixth node joins, and within 60 s every node holds within one of the
//! mean replica count. Throughout, the recorded history must be
//! linearizable (checked at the end with the final value of every key:
//! no acknowledged write lost), and keys written before the kill read
//! back. Cluster-aware clients work against the placed cluster:
//! `CLUSTER SLOTS`/`SHARDS`/`NODES` describe the master's placement,
//! `redis-cli -c` and `redis-benchmark --cluster` run. Then `cluster show`
//! and `cluster drain`.
//!
//! Every process the test starts (nodes, redis tools, the `cluster`
//! subcommands) is registered by pid and killed when the test ends, fails
//! or passes its overall deadline (a watchdog then kills them and exits).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use longship_master::MasterState;
use longship_master::decide::{leader_view, loads, running};
use longship_master::rpc::TcpMasterClient;
use longship_sim::linearizability::kv::{KvInput, KvModel, KvOutput, prune_invisible_unknowns};
use longship_sim::linearizability::{Budget, Operation, check};

const SHARDS: u64 = 16;
/// The whole test ends within this (the watchdog kills what it started).
const TEST_DEADLINE: Duration = Duration::from_secs(420);

use longship_testkit::free_port;

/// The pids of every process the test started and has not reaped; a
/// watchdog thread kills them all (`kill -9 <pid>`) and ends the test
/// process once [`TEST_DEADLINE`] passes.
#[derive(Clone)]
struct Pids(Arc<Mutex<Vec<u32>>>);

impl Pids {
    fn new() -> Pids {
        let pids = Pids(Arc::new(Mutex::new(Vec::new())));
        let p = pids.clone();
        std::thread::spawn(move || {
            std::thread::sleep(TEST_DEADLINE);
            let left = p.0.lock().unwrap().clone();
            eprintln!("placed test: over {TEST_DEADLINE:?}; killing {left:?}");
            for pid in left {
                let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            }
            std::process::exit(101);
        });
        pids
    }

    fn add(&self, pid: u32) {
        self.0.lock().unwrap().push(pid);
    }

    fn remove(&self, pid: u32) {
        self.0.lock().unwrap().retain(|p| *p != pid);
    }

    /// Runs `cmd` to completion within `within`, killing it (by pid) if it
    /// takes longer.
    fn run(&self, mut cmd: Command, within: Duration) -> Output {
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        self.wait(child, within)
    }

    /// Waits for `child` (registered here) within `within`, killing it if
    /// it takes longer; returns its output.
    fn wait(&self, mut child: Child, within: Duration) -> Output {
        let pid = child.id();
        self.add(pid);
        let deadline = Instant::now() + within;
        // Read the pipes on their own threads so a chatty child never
        // blocks on a full pipe.
        let mut out = child.stdout.take();
        let mut err = child.stderr.take();
        let o = std::thread::spawn(move || {
            let mut b = Vec::new();
            if let Some(s) = out.as_mut() {
                let _ = s.read_to_end(&mut b);
            }
            b
        });
        let e = std::thread::spawn(move || {
            let mut b = Vec::new();
            if let Some(s) = err.as_mut() {
                let _ = s.read_to_end(&mut b);
            }
            b
        });
        let status = loop {
            if let Some(st) = child.try_wait().expect("wait") {
                break st;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                break child.wait().expect("wait");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        self.remove(pid);
        Output {
            status,
            stdout: o.join().unwrap(),
            stderr: e.join().unwrap(),
        }
    }
}

struct Node {
    raft: String,
    redis: String,
    args: Vec<String>,
    child: Option<Child>,
    pids: Pids,
}

impl Node {
    fn start(&mut self, log: &Path) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_longship-kv"))
            .args(&self.args)
            .env("RUST_BACKTRACE", "1")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start longship-kv");
        self.pids.add(child.id());
        self.child = Some(child);
    }

    /// kill -9 (by the child's pid) and reap it.
    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
            self.pids.remove(c.id());
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
    pids: Pids,
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
            pids: self.pids.clone(),
        };
        n.start(&self.dir.path().join(format!("node{i}.log")));
        self.nodes.insert(i, n);
    }

    fn start(n: u64, pids: Pids) -> Cluster {
        let mut c = Cluster {
            dir: tempfile::tempdir().unwrap(),
            nodes: BTreeMap::new(),
            masters: (1..=3)
                .map(|_| format!("127.0.0.1:{}", free_port()))
                .collect(),
            master_raft: (1..=3)
                .map(|i| (i, format!("127.0.0.1:{}", free_port())))
                .collect(),
            pids,
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

    /// `longship-kv cluster --master ... <args>`, bounded.
    fn cluster_cmd(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_longship-kv"));
        cmd.args(["cluster", "--master", &self.masters.join(",")])
            .args(args);
        self.pids.run(cmd, Duration::from_secs(30))
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
            "timed out after {within:?} waiting for: {what}\n{}",
            c.log_tail()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    start.elapsed()
}

/// A RESP reply, as the test needs it.
#[derive(Debug, PartialEq)]
enum Resp {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Vec<Resp>),
}

fn encode(args: &[&str]) -> Vec<u8> {
    let mut req = format!("*{}\r\n", args.len());
    for a in args {
        req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    req.into_bytes()
}

/// A connection to one node (reads time out: nothing blocks for ever).
struct Conn {
    r: BufReader<TcpStream>,
    w: TcpStream,
}

impl Conn {
    fn connect(addr: &str) -> std::io::Result<Conn> {
        let a = addr
            .parse()
            .map_err(|_| std::io::Error::other(format!("bad address {addr}")))?;
        let s = TcpStream::connect_timeout(&a, Duration::from_millis(500))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.set_write_timeout(Some(Duration::from_secs(10)))?;
        Ok(Conn {
            r: BufReader::new(s.try_clone()?),
            w: s,
        })
    }

    fn read(&mut self) -> std::io::Result<Resp> {
        let mut line = String::new();
        self.r.read_line(&mut line)?;
        let body = line.trim_end().to_string();
        let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, "bad reply");
        let rest = body.get(1..).unwrap_or("");
        match body.chars().next() {
            Some('+') => Ok(Resp::Simple(rest.to_string())),
            Some('-') => Ok(Resp::Error(rest.to_string())),
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
                    .map(|_| self.read())
                    .collect::<Result<_, _>>()
                    .map(Resp::Array)
            }
            _ => Err(bad()),
        }
    }

    fn call(&mut self, args: &[&str]) -> std::io::Result<Resp> {
        self.w.write_all(&encode(args))?;
        self.read()
    }
}

/// A client that follows `-MOVED` (a redirected command was not executed
/// where it was refused, so it is sent again to the named node), keeping
/// one connection per node.
struct MovedClient {
    conns: BTreeMap<String, Conn>,
}

impl MovedClient {
    fn new() -> MovedClient {
        MovedClient {
            conns: BTreeMap::new(),
        }
    }

    /// Sends `args` to `addr`, following up to five redirects. An I/O error
    /// drops that node's connection.
    fn call(&mut self, addr: &str, args: &[&str]) -> std::io::Result<Resp> {
        let mut addr = addr.to_string();
        for _ in 0..5 {
            if !self.conns.contains_key(&addr) {
                let c = Conn::connect(&addr)?;
                self.conns.insert(addr.clone(), c);
            }
            let reply = self.conns.get_mut(&addr).expect("connected").call(args);
            match reply {
                Ok(Resp::Error(e)) if e.starts_with("MOVED ") => {
                    addr = e.rsplit(' ').next().unwrap_or_default().to_string();
                }
                Ok(r) => return Ok(r),
                Err(e) => {
                    self.conns.remove(&addr);
                    return Err(e);
                }
            }
        }
        Err(std::io::Error::other("too many redirects"))
    }
}

/// Retries `call` while the cluster settles (elections, moves).
fn call_retry(addr: &str, args: &[&str]) -> Resp {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut c = MovedClient::new();
    loop {
        match c.call(addr, args) {
            Ok(Resp::Error(e)) if Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(100));
            }
            Ok(r) => return r,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
            Err(e) => panic!("{args:?} on {addr}: {e}"),
        }
    }
}

type History = Arc<Mutex<Vec<Operation<KvInput, KvOutput>>>>;

fn now(start: Instant) -> u64 {
    start.elapsed().as_nanos() as u64
}

/// One client: appends unique values and reads, over 17 keys (new keys
/// every second, so the checker's partitions stay small), through its
/// home node, following `-MOVED`, moving to another node after connection
/// trouble. An error reply or a lost connection leaves a write's outcome
/// unknown.
fn client_loop(
    id: u64,
    addrs: Vec<String>,
    stop: Arc<AtomicBool>,
    history: History,
    start: Instant,
) {
    let mut n = 0u64;
    let mut home = id as usize % addrs.len();
    let mut c = MovedClient::new();
    while !stop.load(Ordering::Acquire) {
        n += 1;
        // 17 keys a second: the checker's cost grows much faster than a
        // partition's size (7 keys a second took 142–400 s to check on a
        // loaded 2-core machine; each key still sees several clients at once).
        let key = format!("k{}.{}", start.elapsed().as_secs(), (id + n) % 17);
        let write = !n.is_multiple_of(3);
        let value = format!("[{id}.{n}]");
        let input = if write {
            KvInput::Append {
                key: key.clone(),
                value: value.clone(),
            }
        } else {
            KvInput::Get { key: key.clone() }
        };
        let call = now(start);
        let reply = if write {
            c.call(&addrs[home], &["APPEND", &key, &value])
        } else {
            c.call(&addrs[home], &["GET", &key])
        };
        let ret = now(start);
        let op = match (&input, reply) {
            (KvInput::Append { .. }, Ok(Resp::Int(_))) => {
                Operation::returned(id, input, call, KvOutput::Done, ret)
            }
            (KvInput::Get { .. }, Ok(Resp::Bulk(v))) => {
                let v = String::from_utf8(v.unwrap_or_default()).expect("utf8 values");
                Operation::returned(id, input, call, KvOutput::Value(v), ret)
            }
            (_, Ok(Resp::Error(_))) => Operation::unknown(id, input, call),
            (_, Ok(other)) => panic!("client {id}: unexpected reply {other:?}"),
            (_, Err(_)) => {
                home = (home + 1) % addrs.len();
                std::thread::sleep(Duration::from_millis(20));
                Operation::unknown(id, input, call)
            }
        };
        history.lock().unwrap().push(op);
    }
}

/// Clients running over the cluster, recording their operations.
struct Load {
    start: Instant,
    stop: Arc<AtomicBool>,
    history: History,
    clients: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(addrs: &[String], clients: u64) -> Load {
        let start = Instant::now();
        let stop = Arc::new(AtomicBool::new(false));
        let history: History = Arc::new(Mutex::new(Vec::new()));
        let clients = (1..=clients)
            .map(|id| {
                let (a, s, h) = (addrs.to_vec(), stop.clone(), history.clone());
                std::thread::spawn(move || client_loop(id, a, s, h, start))
            })
            .collect();
        Load {
            start,
            stop,
            history,
            clients,
        }
    }

    /// Stops the clients, reads every key they used through `addr` (the
    /// final values, into the history) and checks the history for
    /// linearizability: an acknowledged append missing from its key's final
    /// value, or a read that saw a value go back, fails it.
    fn stop_and_check(self, addr: &str) {
        self.stop.store(true, Ordering::Release);
        for c in self.clients {
            c.join().unwrap();
        }
        let start = self.start;
        let mut hist = std::mem::take(&mut *self.history.lock().unwrap());
        let keys: std::collections::BTreeSet<String> =
            hist.iter().map(|o| o.input.key().to_string()).collect();
        let mut c = MovedClient::new();
        for key in keys {
            let call = now(start);
            let v = match call_until_ok(&mut c, addr, &["GET", &key]) {
                Resp::Bulk(v) => String::from_utf8(v.unwrap_or_default()).unwrap(),
                other => panic!("final GET {key}: {other:?}"),
            };
            hist.push(Operation::returned(
                99,
                KvInput::Get { key },
                call,
                KvOutput::Value(v),
                now(start),
            ));
        }
        let acked = hist
            .iter()
            .filter(|o| {
                matches!(o.input, KvInput::Append { .. })
                    && matches!(
                        o.outcome,
                        longship_sim::linearizability::Outcome::Returned { .. }
                    )
            })
            .count();
        assert!(acked > 200, "too little load went through: {acked} appends");
        let hist = prune_invisible_unknowns(&hist);
        let t = Instant::now();
        let verdict = check(
            &KvModel,
            &hist,
            Budget {
                steps_max: 200_000_000,
                // Generous: a loaded 2-core machine (the test suite runs
                // in parallel) took 142 s for 28,888 operations once.
                time_max: Some(Duration::from_secs(400)),
            },
        );
        eprintln!(
            "history: {} operations ({acked} acknowledged appends), checked in {:?}",
            hist.len(),
            t.elapsed()
        );
        assert!(
            verdict.is_linearizable(),
            "history of {} operations: {verdict:?}",
            hist.len()
        );
    }
}

/// `call` until it answers without an error (elections, moves), for 30 s.
fn call_until_ok(c: &mut MovedClient, addr: &str, args: &[&str]) -> Resp {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match c.call(addr, args) {
            Ok(Resp::Error(_)) | Err(_) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(100));
            }
            Ok(r) => return r,
            Err(e) => panic!("{args:?} on {addr}: {e}"),
        }
    }
}

/// `CLUSTER SLOTS` on `addr`: (first, last, master address, every node).
fn cluster_slots(addr: &str) -> Vec<(i64, i64, String, Vec<String>)> {
    let Ok(Resp::Array(ranges)) =
        Conn::connect(addr).and_then(|mut c| c.call(&["CLUSTER", "SLOTS"]))
    else {
        return Vec::new();
    };
    let node = |r: &Resp| match r {
        Resp::Array(v) => match (&v[0], &v[1]) {
            (Resp::Bulk(Some(h)), Resp::Int(p)) => format!("{}:{p}", String::from_utf8_lossy(h)),
            _ => panic!("bad node {r:?}"),
        },
        _ => panic!("bad node {r:?}"),
    };
    ranges
        .iter()
        .map(|r| match r {
            Resp::Array(v) => {
                let (Resp::Int(a), Resp::Int(b)) = (&v[0], &v[1]) else {
                    panic!("bad range {r:?}")
                };
                let nodes: Vec<String> = v[2..].iter().map(node).collect();
                (*a, *b, nodes[0].clone(), nodes)
            }
            _ => panic!("bad range {r:?}"),
        })
        .collect()
}

/// The slot of a key, as Redis Cluster computes it.
fn key_slot(key: &str) -> i64 {
    let k = key.as_bytes();
    let k = match k.iter().position(|&b| b == b'{') {
        Some(s) => match k[s + 1..].iter().position(|&b| b == b'}') {
            Some(e) if e > 0 => &k[s + 1..s + 1 + e],
            _ => k,
        },
        None => k,
    };
    let mut crc: u16 = 0;
    for &b in k {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    i64::from(crc % 16384)
}

/// Cluster-aware clients against the placed cluster: `CLUSTER SLOTS`
/// covers every slot with the nodes holding its shard, its leader's
/// first, so a key sent to its range's first node is served there
/// (no `-MOVED`); `CLUSTER SHARDS` and `NODES` agree; `redis-cli -c` and
/// `redis-benchmark --cluster` run.
fn cluster_clients_work(c: &Cluster) {
    let entry = c.nodes[&4].redis.clone();
    let addrs: Vec<String> = c.nodes.values().map(|n| n.redis.clone()).collect();
    // The layout settles once the directory refreshed (twice a second).
    let mut slots = Vec::new();
    wait_until(
        c,
        "CLUSTER SLOTS covering every slot",
        Duration::from_secs(30),
        || {
            slots = cluster_slots(&entry);
            let covered: i64 = slots.iter().map(|(a, b, _, _)| b - a + 1).sum();
            covered == 16384 && slots.iter().all(|s| s.3.len() == 3)
        },
    );
    for (a, b, master, nodes) in &slots {
        assert!(
            addrs.contains(master),
            "range {a}-{b}: unknown master {master}"
        );
        assert!(nodes.iter().all(|n| addrs.contains(n)), "{nodes:?}");
    }
    // A key goes to its range's first node and is served there.
    for i in 0..32 {
        let key = format!("slotkey{i}");
        let slot = key_slot(&key);
        let (_, _, master, _) = slots
            .iter()
            .find(|(a, b, _, _)| (*a..=*b).contains(&slot))
            .expect("covered");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let r = Conn::connect(master).and_then(|mut x| x.call(&["SET", &key, "v"]));
            match r {
                Ok(Resp::Simple(s)) if s == "OK" => break,
                other => {
                    assert!(
                        Instant::now() < deadline,
                        "SET {key} on its master {master}: {other:?}"
                    );
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }
    // CLUSTER SHARDS: sixteen ranges, three nodes each, one master.
    let shards = Conn::connect(&entry)
        .and_then(|mut x| x.call(&["CLUSTER", "SHARDS"]))
        .unwrap();
    let Resp::Array(shards) = shards else {
        panic!("CLUSTER SHARDS: {shards:?}")
    };
    assert_eq!(shards.len(), slots.len());
    // CLUSTER NODES: five nodes, this one "myself", the masters own slots.
    let Resp::Bulk(Some(text)) = Conn::connect(&entry)
        .and_then(|mut x| x.call(&["CLUSTER", "NODES"]))
        .unwrap()
    else {
        panic!("CLUSTER NODES")
    };
    let text = String::from_utf8_lossy(&text).to_string();
    assert_eq!(text.lines().count(), 5, "{text}");
    assert_eq!(text.matches("myself").count(), 1, "{text}");
    assert!(text.contains(&entry), "{text}");
    // redis-cli -c follows -MOVED.
    let port = |a: &str| a.rsplit(':').next().unwrap().to_string();
    let mut cli = Command::new("redis-cli");
    cli.args(["-c", "-p", &port(&entry), "SET", "{user1}:name", "longship"]);
    let out = c.pids.run(cli, Duration::from_secs(30));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("OK"),
        "redis-cli -c SET: {out:?}"
    );
    let mut cli = Command::new("redis-cli");
    cli.args(["-c", "-p", &port(&addrs[0]), "GET", "{user1}:name"]);
    let out = c.pids.run(cli, Duration::from_secs(30));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "longship",
        "{out:?}"
    );
    // redis-benchmark in cluster mode reads CLUSTER NODES and sends each
    // key to its range's master.
    let bench = || {
        let mut b = Command::new("redis-benchmark");
        b.args([
            "--cluster",
            "-p",
            &port(&entry),
            "-t",
            "set,get",
            "-n",
            "2000",
            "-c",
            "8",
            "-q",
        ]);
        c.pids.run(b, Duration::from_secs(60))
    };
    let mut out = bench();
    for _ in 0..2 {
        if out.status.success() {
            break;
        }
        eprintln!(
            "redis-benchmark --cluster failed, again: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_secs(1));
        out = bench();
    }
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("Master 0:") && text.contains("GET:"),
        "redis-benchmark --cluster: {text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn placed_cluster_under_load_survives_a_kill9_balances_a_new_node_and_stays_linearizable() {
    for tool in ["redis-cli", "redis-benchmark"] {
        let found = Command::new(tool)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(
            found,
            "{tool} not found: install redis-tools (scripts/test does)"
        );
    }
    let test_start = Instant::now();
    let pids = Pids::new();
    let mut c = Cluster::start(5, pids);
    let took = wait_until(
        &c,
        "the shards created on 3 of 5 nodes",
        Duration::from_secs(90),
        || {
            c.state()
                .is_some_and(|s| s.hosts.len() == 5 && fully_replicated(&s, None))
        },
    );
    eprintln!("formed: {SHARDS} shards of 3 replicas on 5 nodes in {took:?}");
    let s = c.state().unwrap();
    let l = loads(&s);
    assert_eq!(l.values().sum::<usize>(), 3 * SHARDS as usize);
    cluster_clients_work(&c);
    // Keys written before the kill, through node 1, whatever shard holds them.
    let entry = c.nodes[&1].redis.clone();
    for k in 0..40 {
        assert_eq!(
            call_retry(&entry, &["SET", &format!("key{k}"), &format!("v{k}")]),
            Resp::Simple("OK".into())
        );
    }
    let addrs: Vec<String> = c.nodes.values().map(|n| n.redis.clone()).collect();
    let load = Load::start(&addrs, 8);
    std::thread::sleep(Duration::from_secs(3));
    // kill -9 the non-master node holding the most replicas; it never comes
    // back.
    let s = c.state().unwrap();
    let l = loads(&s);
    let victim = *[4u64, 5]
        .iter()
        .max_by_key(|i| l.get(&c.nodes[i].raft).copied().unwrap_or(0))
        .unwrap();
    let dead = c.nodes[&victim].raft.clone();
    assert!(l[&dead] > 0);
    c.nodes.get_mut(&victim).unwrap().kill9();
    let took = wait_until(
        &c,
        "every shard back to 3 live replicas (dead after 5 s)",
        Duration::from_secs(30),
        || {
            c.state()
                .is_some_and(|s| s.hosts[&dead].dead && fully_replicated(&s, Some(&dead)))
        },
    );
    eprintln!(
        "re-replicated {} replicas of the killed node in {took:?}, under load",
        l[&dead]
    );
    c.nodes.remove(&victim);
    let entry = c.nodes[&2].redis.clone();
    for k in 0..40 {
        assert_eq!(
            call_retry(&entry, &["GET", &format!("key{k}")]),
            Resp::Bulk(Some(format!("v{k}").into_bytes()))
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
                let mean = l.values().sum::<usize>() as f64 / l.len() as f64;
                s.ops.is_empty()
                    && l.len() == 5
                    && l.get(&new).copied().unwrap_or(0) > 0
                    && l.values().all(|&n| (n as f64 - mean).abs() <= 1.0)
            })
        },
    );
    eprintln!("balanced with the new node in {took:?}, under load");
    load.stop_and_check(&c.nodes[&6].redis);
    for k in 0..40 {
        assert_eq!(
            call_retry(&c.nodes[&6].redis, &["GET", &format!("key{k}")]),
            Resp::Bulk(Some(format!("v{k}").into_bytes()))
        );
    }
    // The cluster commands.
    let show = c.cluster_cmd(&["show"]);
    let text = String::from_utf8_lossy(&show.stdout);
    assert!(show.status.success(), "{text}");
    assert!(
        text.contains(&format!("node {new}")) && text.contains(&format!("shard {SHARDS} leader")),
        "{text}"
    );
    let drain = c.cluster_cmd(&["drain", &new]);
    assert!(
        drain.status.success(),
        "{}",
        String::from_utf8_lossy(&drain.stderr)
    );
    wait_until(
        &c,
        "the drained node emptied",
        Duration::from_secs(90),
        || {
            c.state().is_some_and(|s| {
                fully_replicated(&s, None)
                    && s.shards
                        .values()
                        .all(|r| r.placement.values().all(|h| *h != new))
            })
        },
    );
    eprintln!("placed test done in {:?}", test_start.elapsed());
}
