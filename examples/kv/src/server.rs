//! The Redis-protocol front end of a kv node: connections, commands,
//! sessions and retries.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use longship::{Error, NodeHost, Session, ShardId, SmResult};
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::resp::{Reply, RespLimits, parse_command};
use crate::sm::{KvWrite, get_query, query, status};

/// How long a request keeps retrying before answering with an error.
const REQUEST_DEADLINE: Duration = Duration::from_secs(10);
/// Timeout of one attempt.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(3);
/// Sessions kept per shard for reuse.
const SESSIONS_PER_SHARD: usize = 256;
/// Largest key.
pub const MAX_KEY_BYTES: usize = 64 << 10;
/// Largest value.
pub const MAX_VALUE_BYTES: usize = 4 << 20;
/// Most commands of one pipeline executed before replies are written.
const MAX_PIPELINE: usize = 1024;

/// The shard of a key: a stable hash (FNV-1a) over `shards` shards numbered from 1.
pub fn shard_of(key: &[u8], shards: u64) -> ShardId {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key {
        h = (h ^ *b as u64).wrapping_mul(0x100_0000_01b3);
    }
    ShardId(h % shards + 1)
}

/// One kv node: a NodeHost with a replica of every shard.
pub struct KvNode {
    /// The NodeHost.
    pub nh: Arc<NodeHost>,
    /// Number of shards (ids 1..=shards).
    pub shards: u64,
    /// This node's id (its replica id in every shard).
    pub node_id: u64,
    sessions: Mutex<BTreeMap<ShardId, Vec<Session>>>,
    limits: RespLimits,
}

impl KvNode {
    /// A front end over `nh`.
    pub fn new(nh: Arc<NodeHost>, shards: u64, node_id: u64) -> Arc<KvNode> {
        Arc::new(KvNode {
            nh,
            shards,
            node_id,
            sessions: Mutex::new(BTreeMap::new()),
            limits: RespLimits {
                max_bulk_bytes: MAX_VALUE_BYTES,
                ..RespLimits::default()
            },
        })
    }

    async fn take_session(&self, shard: ShardId) -> Result<Session, Error> {
        if let Some(s) = self.sessions.lock().get_mut(&shard).and_then(|v| v.pop()) {
            return Ok(s);
        }
        let nh = self.nh.clone();
        let deadline = Instant::now() + REQUEST_DEADLINE;
        loop {
            let nh2 = nh.clone();
            let r =
                tokio::task::spawn_blocking(move || nh2.sync_get_session(shard, ATTEMPT_TIMEOUT))
                    .await
                    .map_err(|_| Error::Stopped)?;
            match r {
                Ok(s) => return Ok(s),
                Err(e) if e.is_temporary() && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn put_session(&self, s: Session) {
        let mut all = self.sessions.lock();
        let v = all.entry(s.shard_id).or_default();
        if v.len() < SESSIONS_PER_SHARD {
            v.push(s);
        }
    }

    /// Proposes a write with a client session; retries (same series id, so
    /// it is applied at most once) until it completes or the deadline passes.
    pub async fn write(&self, w: &KvWrite) -> Result<SmResult, Error> {
        let shard = shard_of(w.key(), self.shards);
        let cmd = bytes::Bytes::from(w.encode());
        let mut s = self.take_session(shard).await?;
        let deadline = Instant::now() + REQUEST_DEADLINE;
        loop {
            let outcome = match self.nh.propose(&s, cmd.clone(), ATTEMPT_TIMEOUT) {
                Ok(h) => h.await,
                Err(e) => Err(e),
            };
            match outcome {
                Ok(r) => {
                    s.proposal_completed();
                    self.put_session(s);
                    return Ok(r);
                }
                Err(e) if e.is_temporary() && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                // The session's last proposal may or may not be applied: it is not reused.
                Err(e) => return Err(e),
            }
        }
    }

    /// Reads `q` from a shard: linearizable (ReadIndex) unless `stale`.
    pub async fn read(&self, shard: ShardId, q: &[u8], stale: bool) -> Result<Vec<u8>, Error> {
        if stale {
            return self.nh.stale_read(shard, q);
        }
        let deadline = Instant::now() + REQUEST_DEADLINE;
        loop {
            let r = match self.nh.read_index(shard, ATTEMPT_TIMEOUT) {
                Ok(h) => h.await,
                Err(e) => Err(e),
            };
            match r {
                Ok(_) => return self.nh.read_local(shard, q),
                Err(e) if e.is_temporary() && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// A text summary for INFO.
    pub fn info(&self) -> String {
        let info = self.nh.get_node_host_info();
        let mut s = format!(
            "# longship\r\nnode_id:{}\r\nraft_address:{}\r\nshards:{}\r\n",
            self.node_id, info.raft_address, self.shards
        );
        let leaders = info.shards.iter().filter(|x| x.is_leader).count();
        s.push_str(&format!("leader_shards:{leaders}\r\n"));
        for x in &info.shards {
            s.push_str(&format!(
                "shard_{}:leader={},term={},applied={},snapshot={}\r\n",
                x.shard_id, x.leader_id, x.term, x.applied, x.snapshot_index
            ));
        }
        s
    }
}

/// Accepts Redis connections until the listener fails.
pub async fn serve(listener: TcpListener, node: Arc<KvNode>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let _ = stream.set_nodelay(true);
                let node = node.clone();
                tokio::spawn(async move {
                    if let Err(e) = handle_conn(stream, node).await {
                        tracing::debug!(error = %e, "connection closed");
                    }
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// A command's reply: known now, or being computed.
enum Slot {
    Now(Reply),
    Later(JoinHandle<Reply>),
}

async fn handle_conn(mut stream: TcpStream, node: Arc<KvNode>) -> std::io::Result<()> {
    let mut buf: Vec<u8> = Vec::with_capacity(16 << 10);
    let mut out: Vec<u8> = Vec::with_capacity(16 << 10);
    let mut readonly = false;
    let mut chunk = vec![0u8; 64 << 10];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut used = 0;
        let mut slots: Vec<Slot> = Vec::new();
        // Writes of this pipeline still running; a read waits for them so it
        // sees the connection's earlier writes.
        let mut writes_in_flight = false;
        let mut quit = false;
        while slots.len() < MAX_PIPELINE {
            match parse_command(&buf[used..], &node.limits) {
                Ok(Some((args, len))) => {
                    used += len;
                    if args.is_empty() {
                        continue;
                    }
                    let name = String::from_utf8_lossy(&args[0]).to_ascii_uppercase();
                    match name.as_str() {
                        "QUIT" => {
                            slots.push(Slot::Now(Reply::ok()));
                            quit = true;
                            break;
                        }
                        "READONLY" => {
                            readonly = true;
                            slots.push(Slot::Now(Reply::ok()));
                            continue;
                        }
                        "READWRITE" => {
                            readonly = false;
                            slots.push(Slot::Now(Reply::ok()));
                            continue;
                        }
                        _ => {}
                    }
                    let is_write = matches!(
                        name.as_str(),
                        "SET" | "DEL" | "INCR" | "INCRBY" | "DECR" | "DECRBY" | "APPEND" | "MSET"
                    );
                    if !is_write && writes_in_flight {
                        // Resolve earlier writes first (keeps replies in order too).
                        for s in slots.iter_mut() {
                            if let Slot::Later(h) = s {
                                let r = h.await.unwrap_or_else(|_| Reply::err("internal error"));
                                *s = Slot::Now(r);
                            }
                        }
                        writes_in_flight = false;
                    }
                    let node2 = node.clone();
                    let stale = readonly;
                    let handle =
                        tokio::spawn(async move { execute(&node2, &name, &args, stale).await });
                    writes_in_flight |= is_write;
                    slots.push(Slot::Later(handle));
                }
                Ok(None) => break,
                Err(e) => {
                    // Garbage: answer once and close this connection only.
                    for s in slots.drain(..) {
                        encode_slot(s, &mut out).await;
                    }
                    Reply::Error(format!("ERR {e}")).encode(&mut out);
                    stream.write_all(&out).await?;
                    return Ok(());
                }
            }
        }
        buf.drain(..used);
        for s in slots {
            encode_slot(s, &mut out).await;
        }
        if !out.is_empty() {
            stream.write_all(&out).await?;
            out.clear();
        }
        if quit {
            return Ok(());
        }
    }
}

async fn encode_slot(s: Slot, out: &mut Vec<u8>) {
    let r = match s {
        Slot::Now(r) => r,
        Slot::Later(h) => h.await.unwrap_or_else(|_| Reply::err("internal error")),
    };
    r.encode(out);
}

fn arity_error(name: &str) -> Reply {
    Reply::err(format!(
        "wrong number of arguments for '{}' command",
        name.to_ascii_lowercase()
    ))
}

fn error_reply(e: &Error) -> Reply {
    match e {
        Error::Timeout => Reply::Error("TIMEOUT request timed out (outcome unknown)".into()),
        Error::SystemBusy => Reply::Error("BUSY system busy, retry later".into()),
        Error::PayloadTooBig { .. } => Reply::err("value too large"),
        other => Reply::err(other.to_string()),
    }
}

fn check_key(k: &[u8]) -> Option<Reply> {
    (k.len() > MAX_KEY_BYTES).then(|| Reply::err("key too large"))
}

fn parse_i64(b: &[u8]) -> Option<i64> {
    std::str::from_utf8(b).ok()?.parse().ok()
}

fn write_reply(r: Result<SmResult, Error>, ok: impl FnOnce(SmResult) -> Reply) -> Reply {
    match r {
        Ok(res) if res.value == status::NOT_INTEGER => {
            Reply::err("value is not an integer or out of range")
        }
        Ok(res) if res.value == status::OVERFLOW => {
            Reply::err("increment or decrement would overflow")
        }
        Ok(res) => ok(res),
        Err(e) => error_reply(&e),
    }
}

async fn get(node: &KvNode, key: &[u8], stale: bool) -> Result<Option<Vec<u8>>, Error> {
    let v = node
        .read(shard_of(key, node.shards), &get_query(key), stale)
        .await?;
    Ok(match v.split_first() {
        Some((1, rest)) => Some(rest.to_vec()),
        _ => None,
    })
}

/// Executes one command.
pub async fn execute(node: &KvNode, name: &str, args: &[Vec<u8>], stale: bool) -> Reply {
    let argc = args.len();
    for a in args.iter().skip(1) {
        if a.len() > MAX_VALUE_BYTES {
            return Reply::err("value too large");
        }
    }
    match name {
        "PING" => match argc {
            1 => Reply::Simple("PONG".into()),
            2 => Reply::Bulk(args[1].clone()),
            _ => arity_error(name),
        },
        "ECHO" if argc == 2 => Reply::Bulk(args[1].clone()),
        "COMMAND" | "CONFIG" => Reply::Array(Vec::new()),
        "SELECT" if argc == 2 => {
            if args[1] == b"0" {
                Reply::ok()
            } else {
                Reply::err("DB index is out of range")
            }
        }
        "GET" if argc == 2 => match get(node, &args[1], stale).await {
            Ok(Some(v)) => Reply::Bulk(v),
            Ok(None) => Reply::Nil,
            Err(e) => error_reply(&e),
        },
        "STRLEN" if argc == 2 => match get(node, &args[1], stale).await {
            Ok(v) => Reply::Int(v.map_or(0, |v| v.len() as i64)),
            Err(e) => error_reply(&e),
        },
        "EXISTS" if argc >= 2 => {
            let mut n = 0;
            for k in &args[1..] {
                match get(node, k, stale).await {
                    Ok(Some(_)) => n += 1,
                    Ok(None) => {}
                    Err(e) => return error_reply(&e),
                }
            }
            Reply::Int(n)
        }
        "MGET" if argc >= 2 => {
            let mut out = Vec::with_capacity(argc - 1);
            for k in &args[1..] {
                match get(node, k, stale).await {
                    Ok(Some(v)) => out.push(Reply::Bulk(v)),
                    Ok(None) => out.push(Reply::Nil),
                    Err(e) => return error_reply(&e),
                }
            }
            Reply::Array(out)
        }
        "SET" if argc >= 3 => {
            if let Some(r) = check_key(&args[1]) {
                return r;
            }
            let (mut nx, mut xx) = (false, false);
            for opt in &args[3..] {
                match String::from_utf8_lossy(opt).to_ascii_uppercase().as_str() {
                    "NX" => nx = true,
                    "XX" => xx = true,
                    "EX" | "PX" | "EXAT" | "PXAT" | "KEEPTTL" => {
                        return Reply::err("expiry (EX/PX) is not supported by longship-kv");
                    }
                    "GET" => return Reply::err("SET ... GET is not supported by longship-kv"),
                    _ => return Reply::err("syntax error"),
                }
            }
            if nx && xx {
                return Reply::err("syntax error");
            }
            let w = KvWrite::Set {
                key: args[1].clone(),
                value: args[2].clone(),
                nx,
                xx,
            };
            write_reply(node.write(&w).await, |r| {
                if r.value == status::NOT_SET {
                    Reply::Nil
                } else {
                    Reply::ok()
                }
            })
        }
        "MSET" if argc >= 3 && argc % 2 == 1 => {
            // Per key: not atomic across keys (they may live on different shards).
            for pair in args[1..].chunks(2) {
                if let Some(r) = check_key(&pair[0]) {
                    return r;
                }
            }
            for pair in args[1..].chunks(2) {
                let w = KvWrite::Set {
                    key: pair[0].clone(),
                    value: pair[1].clone(),
                    nx: false,
                    xx: false,
                };
                if let Err(e) = node.write(&w).await {
                    return error_reply(&e);
                }
            }
            Reply::ok()
        }
        "DEL" if argc >= 2 => {
            let mut n = 0;
            for k in &args[1..] {
                match node.write(&KvWrite::Del { key: k.clone() }).await {
                    Ok(r) => n += r.data.first().copied().unwrap_or(0) as i64,
                    Err(e) => return error_reply(&e),
                }
            }
            Reply::Int(n)
        }
        "INCR" | "DECR" if argc == 2 => {
            let delta = if name == "INCR" { 1 } else { -1 };
            incr(node, &args[1], delta).await
        }
        "INCRBY" | "DECRBY" if argc == 3 => {
            let Some(d) = parse_i64(&args[2]) else {
                return Reply::err("value is not an integer or out of range");
            };
            let delta = if name == "INCRBY" {
                Some(d)
            } else {
                d.checked_neg()
            };
            match delta {
                Some(d) => incr(node, &args[1], d).await,
                None => Reply::err("increment or decrement would overflow"),
            }
        }
        "APPEND" if argc == 3 => {
            if let Some(r) = check_key(&args[1]) {
                return r;
            }
            let w = KvWrite::Append {
                key: args[1].clone(),
                value: args[2].clone(),
            };
            write_reply(node.write(&w).await, |r| {
                Reply::Int(parse_i64(&r.data).unwrap_or(0))
            })
        }
        "DBSIZE" if argc == 1 => {
            let mut total = 0u64;
            for s in 1..=node.shards {
                match node.read(ShardId(s), &[query::DBSIZE], stale).await {
                    Ok(v) if v.len() == 8 => {
                        total += u64::from_le_bytes(v.try_into().expect("8 bytes"))
                    }
                    Ok(_) => return Reply::err("bad DBSIZE answer"),
                    Err(e) => return error_reply(&e),
                }
            }
            Reply::Int(total as i64)
        }
        "INFO" => Reply::Bulk(node.info().into_bytes()),
        "ECHO" | "SELECT" | "GET" | "STRLEN" | "EXISTS" | "MGET" | "SET" | "MSET" | "DEL"
        | "INCR" | "DECR" | "INCRBY" | "DECRBY" | "APPEND" | "DBSIZE" => arity_error(name),
        _ => {
            let shown: String = name.chars().take(64).collect();
            Reply::err(format!("unknown command '{}'", shown.to_ascii_lowercase()))
        }
    }
}

async fn incr(node: &KvNode, key: &[u8], delta: i64) -> Reply {
    if let Some(r) = check_key(key) {
        return r;
    }
    let w = KvWrite::IncrBy {
        key: key.to_vec(),
        delta,
    };
    write_reply(node.write(&w).await, |r| {
        Reply::Int(parse_i64(&r.data).unwrap_or(0))
    })
}
