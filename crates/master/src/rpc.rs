//! The master over TCP, for NodeHosts (and operators) in other processes.
//!
//! A [`MasterServer`] runs beside a master replica and listens on an
//! address of its own; a [`TcpMasterClient`] implements
//! [`longship::MasterClient`] by sending reports to the first server of its
//! list that answers. Frames are a 4-byte big-endian length and a JSON
//! body ([`RpcRequest`] / [`RpcResponse`]), at most [`MAX_FRAME_BYTES`];
//! a longer frame closes the connection before anything is allocated.
//! One thread per connection, at most [`MAX_CONNECTIONS`] at a time.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use longship::{HostReport, MasterClient, MasterClientError, MasterRequest, NodeHost, ShardId};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::model::{MasterState, Request};
use crate::service::{MasterError, create_shard, drain_host, read_state, report_from};
use crate::{Command, to_master_request};

/// Largest frame either side accepts.
pub const MAX_FRAME_BYTES: u32 = 4 << 20;

/// Most connections a server serves at once (more are closed at once).
pub const MAX_CONNECTIONS: usize = 64;

/// A call to a [`MasterServer`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RpcRequest {
    /// The deployment id the master manages.
    DeploymentId,
    /// A host's report; answered with its requests.
    Report(crate::model::Report),
    /// Create a shard.
    CreateShard {
        /// The shard.
        shard: u64,
        /// Its replica count.
        replicas: u32,
    },
    /// Start or stop draining a host (moving every replica off it).
    Drain {
        /// The host's raft address.
        host: String,
        /// Drain (true) or take replicas again (false).
        drain: bool,
    },
    /// The master's whole state (linearizable read).
    State,
}

/// A [`MasterServer`]'s answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RpcResponse {
    /// The deployment id.
    DeploymentId(u64),
    /// What the reporting host should do.
    Requests(Vec<Request>),
    /// The command was applied.
    Done,
    /// The master's state.
    State(Box<MasterState>),
    /// The call failed.
    Error(String),
}

fn write_frame(s: &mut TcpStream, body: &[u8]) -> std::io::Result<()> {
    let len = u32::try_from(body.len())
        .ok()
        .filter(|l| *l <= MAX_FRAME_BYTES)
        .ok_or_else(|| std::io::Error::other("frame too large"))?;
    let mut buf = Vec::with_capacity(4 + body.len());
    buf.extend_from_slice(&len.to_be_bytes());
    buf.extend_from_slice(body);
    s.write_all(&buf)
}

fn read_frame(s: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len)?;
    let len = u32::from_be_bytes(len);
    if len > MAX_FRAME_BYTES {
        return Err(std::io::Error::other(format!(
            "frame of {len} bytes over the limit"
        )));
    }
    let mut body = vec![0u8; len as usize];
    s.read_exact(&mut body)?;
    Ok(body)
}

/// Serves the master's RPC through a NodeHost that runs a master replica
/// (calls are proposed to, or read from, the master shard through it).
/// Stops when dropped or when the NodeHost is gone.
pub struct MasterServer {
    addr: String,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl MasterServer {
    /// Listens on `listen` (`host:port`; port 0 picks one, see
    /// [`local_addr`](Self::local_addr)) for calls to the master of
    /// `deployment_id` through `nh`; each call waits at most `timeout`.
    pub fn start(
        nh: &Arc<NodeHost>,
        listen: &str,
        deployment_id: u64,
        timeout: Duration,
    ) -> std::io::Result<MasterServer> {
        let listener = TcpListener::bind(listen)?;
        let addr = listener.local_addr()?.to_string();
        let stop = Arc::new(AtomicBool::new(false));
        let weak = Arc::downgrade(nh);
        let s = stop.clone();
        let thread = std::thread::Builder::new()
            .name(format!("longship-master-rpc-{addr}"))
            .spawn(move || accept_loop(listener, weak, deployment_id, timeout, s))?;
        Ok(MasterServer {
            addr,
            stop,
            thread: Some(thread),
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> &str {
        &self.addr
    }
}

impl Drop for MasterServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // Wake the accept call.
        let _ = TcpStream::connect_timeout(
            &self.addr.parse().expect("a bound address parses"),
            Duration::from_secs(1),
        );
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn accept_loop(
    listener: TcpListener,
    nh: Weak<NodeHost>,
    deployment_id: u64,
    timeout: Duration,
    stop: Arc<AtomicBool>,
) {
    let open = Arc::new(AtomicUsize::new(0));
    for conn in listener.incoming() {
        if stop.load(Ordering::Acquire) {
            return;
        }
        let Ok(conn) = conn else { continue };
        if open.fetch_add(1, Ordering::AcqRel) >= MAX_CONNECTIONS {
            open.fetch_sub(1, Ordering::AcqRel);
            let _ = conn.shutdown(Shutdown::Both);
            continue;
        }
        let (nh, stop, open2) = (nh.clone(), stop.clone(), open.clone());
        let spawned = std::thread::Builder::new()
            .name("longship-master-rpc-conn".into())
            .spawn(move || {
                serve(conn, nh, deployment_id, timeout, stop);
                open2.fetch_sub(1, Ordering::AcqRel);
            });
        if spawned.is_err() {
            open.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

fn serve(
    mut conn: TcpStream,
    nh: Weak<NodeHost>,
    deployment_id: u64,
    timeout: Duration,
    stop: Arc<AtomicBool>,
) {
    // An idle client is dropped after a while; it reconnects.
    let _ = conn.set_read_timeout(Some(Duration::from_secs(60)));
    let _ = conn.set_nodelay(true);
    while !stop.load(Ordering::Acquire) {
        let Ok(frame) = read_frame(&mut conn) else {
            return;
        };
        let response = match serde_json::from_slice::<RpcRequest>(&frame) {
            Err(e) => RpcResponse::Error(format!("bad request: {e}")),
            Ok(req) => match nh.upgrade() {
                None => RpcResponse::Error("the master's NodeHost is closed".into()),
                Some(nh) => handle(&nh, req, deployment_id, timeout),
            },
        };
        let body = serde_json::to_vec(&response).expect("responses serialise");
        if write_frame(&mut conn, &body).is_err() {
            return;
        }
    }
}

fn handle(nh: &NodeHost, req: RpcRequest, deployment_id: u64, timeout: Duration) -> RpcResponse {
    let result = match req {
        RpcRequest::DeploymentId => return RpcResponse::DeploymentId(deployment_id),
        RpcRequest::Report(report) => {
            match crate::service::propose(nh, &Command::Report(report), timeout) {
                Ok((crate::sm::RESULT_OK, data)) => match serde_json::from_slice(&data) {
                    Ok(reqs) => return RpcResponse::Requests(reqs),
                    Err(e) => Err(MasterError::Decode(e.to_string())),
                },
                Ok((_, data)) => Err(MasterError::Refused(
                    String::from_utf8_lossy(&data).into_owned(),
                )),
                Err(e) => Err(e),
            }
        }
        RpcRequest::CreateShard { shard, replicas } => {
            create_shard(nh, ShardId(shard), replicas, timeout)
        }
        RpcRequest::Drain { host, drain } => drain_host(nh, &host, drain, timeout),
        RpcRequest::State => match read_state(nh, timeout) {
            Ok(s) => return RpcResponse::State(Box::new(s)),
            Err(e) => Err(e),
        },
    };
    match result {
        Ok(()) => RpcResponse::Done,
        Err(e) => RpcResponse::Error(e.to_string()),
    }
}

/// Calls master servers over TCP: the [`MasterClient`] of NodeHosts in
/// processes without a master replica, and the admin calls of operators.
/// Each call goes to the server that answered last, then to the others in
/// order.
pub struct TcpMasterClient {
    servers: Vec<String>,
    timeout: Duration,
    /// The connection in use and the index of its server.
    conn: Mutex<Option<(usize, TcpStream)>>,
}

impl TcpMasterClient {
    /// A client of the master servers at `servers`; a call waits at most
    /// `timeout` for one server.
    pub fn new(servers: Vec<String>, timeout: Duration) -> TcpMasterClient {
        TcpMasterClient {
            servers,
            timeout,
            conn: Mutex::new(None),
        }
    }

    fn call_one(&self, conn: &mut TcpStream, body: &[u8]) -> std::io::Result<RpcResponse> {
        write_frame(conn, body)?;
        let frame = read_frame(conn)?;
        serde_json::from_slice(&frame).map_err(std::io::Error::other)
    }

    /// Sends `req` to the first server that answers.
    pub fn call(&self, req: &RpcRequest) -> Result<RpcResponse, MasterError> {
        let body = serde_json::to_vec(req).expect("requests serialise");
        let mut guard = self.conn.lock();
        let mut last = String::from("no master server configured");
        let first = guard.as_ref().map_or(0, |(i, _)| *i);
        for k in 0..self.servers.len() {
            let i = (first + k) % self.servers.len();
            let mut conn = match guard.take() {
                Some((j, c)) if j == i => c,
                _ => {
                    let addr = &self.servers[i];
                    let connected = std::net::ToSocketAddrs::to_socket_addrs(addr.as_str())
                        .ok()
                        .and_then(|mut a| a.next())
                        .ok_or_else(|| std::io::Error::other(format!("cannot resolve {addr}")))
                        .and_then(|a| TcpStream::connect_timeout(&a, self.timeout));
                    match connected {
                        Ok(c) => {
                            let _ = c.set_read_timeout(Some(self.timeout * 2));
                            let _ = c.set_write_timeout(Some(self.timeout));
                            let _ = c.set_nodelay(true);
                            c
                        }
                        Err(e) => {
                            last = format!("{addr}: {e}");
                            continue;
                        }
                    }
                }
            };
            match self.call_one(&mut conn, &body) {
                // A server whose master replica cannot serve: try the next.
                Ok(RpcResponse::Error(e)) if k + 1 < self.servers.len() => last = e,
                Ok(resp) => {
                    *guard = Some((i, conn));
                    return Ok(resp);
                }
                Err(e) => last = format!("{}: {e}", self.servers[i]),
            }
        }
        Err(MasterError::Refused(last))
    }

    /// Creates `shard` with `replicas` replicas.
    pub fn create_shard(&self, shard: ShardId, replicas: u32) -> Result<(), MasterError> {
        expect_done(self.call(&RpcRequest::CreateShard {
            shard: shard.0,
            replicas,
        })?)
    }

    /// Starts (or, with `drain` false, ends) draining `host`.
    pub fn drain(&self, host: &str, drain: bool) -> Result<(), MasterError> {
        expect_done(self.call(&RpcRequest::Drain {
            host: host.to_string(),
            drain,
        })?)
    }

    /// The master's state.
    pub fn state(&self) -> Result<MasterState, MasterError> {
        match self.call(&RpcRequest::State)? {
            RpcResponse::State(s) => Ok(*s),
            RpcResponse::Error(e) => Err(MasterError::Refused(e)),
            other => Err(MasterError::Decode(format!("unexpected answer {other:?}"))),
        }
    }
}

fn expect_done(r: RpcResponse) -> Result<(), MasterError> {
    match r {
        RpcResponse::Done => Ok(()),
        RpcResponse::Error(e) => Err(MasterError::Refused(e)),
        other => Err(MasterError::Decode(format!("unexpected answer {other:?}"))),
    }
}

impl MasterClient for TcpMasterClient {
    fn deployment_id(&self) -> Result<u64, MasterClientError> {
        match self.call(&RpcRequest::DeploymentId) {
            Ok(RpcResponse::DeploymentId(d)) => Ok(d),
            Ok(other) => Err(MasterClientError(format!("unexpected answer {other:?}"))),
            Err(e) => Err(MasterClientError(e.to_string())),
        }
    }

    fn report(&self, report: &HostReport) -> Result<Vec<MasterRequest>, MasterClientError> {
        match self.call(&RpcRequest::Report(report_from(report))) {
            Ok(RpcResponse::Requests(reqs)) => Ok(reqs.iter().map(to_master_request).collect()),
            Ok(RpcResponse::Error(e)) => Err(MasterClientError(e)),
            Ok(other) => Err(MasterClientError(format!("unexpected answer {other:?}"))),
            Err(e) => Err(MasterClientError(e.to_string())),
        }
    }
}
