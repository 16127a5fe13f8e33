//! The TCP transport.
//!
//! Sending: per remote host, `connections_per_host` connections; a shard's
//! messages always use connection `shard % n`, so per-shard order is kept.
//! The sending thread encodes a batch and writes it to the socket at once
//! when the connection is up and idle (no thread wake-up); what the socket
//! does not take goes to the connection's bounded queue, which one writer
//! task drains with as few writes as it can (TCP_NODELAY: no waiting for
//! more). See `peer`. A full queue drops the batch
//! (Raft retransmits); a peer that cannot be reached is retried with
//! exponential backoff and jitter, and the NodeHost is told which replicas
//! are unreachable so leaders stop pipelining to them.
//!
//! Receiving: one task per accepted connection reads frames, checks each
//! header before allocating its body, and hands batches and snapshot chunks
//! to the [`MessageHandler`]. A bad frame closes that connection only.
//!
//! Snapshots: each stream uses its own connection, written synchronously by
//! the snapshot worker thread chunk by chunk (TCP back-pressure is the flow
//! control); the receiver answers the last chunk with an acknowledgement
//! once the snapshot is complete and verified. At most
//! `max_snapshot_streams` streams are sent at once.
//!
//! tokio stays inside this module: the transport owns its runtime.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream as StdTcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use longship_raft::{MessageBatch, ReplicaId, ShardId};
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::frame::{
    FRAME_HEADER_BYTES, FrameType, check_body, decode_header, encode_chunk, encode_frame,
};
use crate::tls::{TlsContext, TlsError, TlsPaths, server_name};

mod inbound;
mod peer;
use crate::{MessageHandler, SendError, SnapshotChunk, Transport};
use peer::PeerConn;

/// Configuration of a [`TcpTransport`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TcpConfig {
    /// `host:port` this host is known by (its identity in every frame's
    /// batches, and what peers dial); also where it listens unless
    /// `listen_address` is set.
    pub address: String,
    /// Where to listen when it differs from `address`: `0.0.0.0:port` or a
    /// private address while peers reach the host at `address` (behind NAT,
    /// a load balancer or a container port mapping).
    pub listen_address: Option<String>,
    /// Deployment id carried and checked in every frame.
    pub deployment_id: u64,
    /// Connections per remote host (shards are spread over them).
    pub connections_per_host: usize,
    /// Threads of the transport's runtime. Its reader threads also run
    /// the protocol work that arriving messages cause (see
    /// `MessageHandler::handle_batch_on_io_thread`). Default: one per two
    /// CPUs, at most 4.
    pub io_threads: usize,
    /// Largest frame body accepted or sent.
    pub max_frame_bytes: u32,
    /// Most bytes queued per connection for its writer (besides
    /// `send_queue_len`); past it new batches are dropped.
    pub max_queued_bytes: usize,
    /// Batches queued per connection before new ones are dropped.
    pub send_queue_len: usize,
    /// Snapshot streams sent at once.
    pub max_snapshot_streams: usize,
    /// Mutual TLS, if set.
    pub tls: Option<TlsPaths>,
    /// Inbound connections open at once; more are closed at once.
    pub max_inbound_connections: usize,
    /// Inbound connections open at once from one remote IP address.
    pub max_inbound_connections_per_ip: usize,
    /// Longest TLS handshake of an inbound connection.
    pub handshake_timeout: Duration,
    /// Once a frame's first byte arrived, the whole frame must arrive
    /// within this (a peer cannot hold a buffer by trickling a frame).
    pub frame_read_timeout: Duration,
}

impl Default for TcpConfig {
    fn default() -> Self {
        TcpConfig {
            address: String::new(),
            listen_address: None,
            deployment_id: 1,
            connections_per_host: 2,
            io_threads: (std::thread::available_parallelism().map_or(1, |n| n.get()) / 2)
                .clamp(1, 4),
            max_frame_bytes: 64 << 20,
            max_queued_bytes: 64 << 20,
            send_queue_len: 1024,
            max_snapshot_streams: 4,
            tls: None,
            max_inbound_connections: 1024,
            max_inbound_connections_per_ip: 64,
            handshake_timeout: Duration::from_secs(10),
            frame_read_timeout: Duration::from_secs(30),
        }
    }
}

/// Counters of a TCP transport.
#[derive(Debug, Default)]
pub struct TcpStats {
    /// Frames written.
    pub frames_sent: AtomicU64,
    /// Frames received and accepted.
    pub frames_received: AtomicU64,
    /// Frames refused (bad magic, checksum, version, deployment, size; bad body).
    pub frames_rejected: AtomicU64,
    /// Batches dropped because a send queue was full.
    pub batches_dropped_queue_full: AtomicU64,
    /// Batches dropped because the peer was unreachable.
    pub batches_dropped_unreachable: AtomicU64,
    /// Failed connection attempts.
    pub connect_failures: AtomicU64,
    /// Connections refused during the TLS handshake.
    pub tls_rejected: AtomicU64,
    /// Sends written at once by the sending thread (no writer task woken).
    pub direct_writes: AtomicU64,
    /// Inbound connections closed at once because a connection limit was reached.
    pub connections_refused: AtomicU64,
    /// Inbound frames that did not arrive whole within `frame_read_timeout`.
    pub slow_frames: AtomicU64,
}

/// Why the transport could not start.
#[derive(Debug, thiserror::Error)]
pub enum TcpError {
    /// Binding the listener failed.
    #[error("cannot listen on {address}: {source}")]
    Bind {
        /// The address.
        address: String,
        /// The cause.
        source: std::io::Error,
    },
    /// TLS setup failed.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// Invalid configuration.
    #[error("invalid transport config: {0}")]
    Config(String),
    /// The runtime could not start.
    #[error("cannot start the transport runtime: {0}")]
    Runtime(std::io::Error),
}

trait AsyncStream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> AsyncStream for T {}

trait SyncStream: Read + Write + Send {}
impl<T: Read + Write + Send> SyncStream for T {}

type StreamKey = (ShardId, ReplicaId, ReplicaId, u64);

struct Inner {
    cfg: TcpConfig,
    runtime: Mutex<Option<tokio::runtime::Runtime>>,
    handle: tokio::runtime::Handle,
    handler: Mutex<Option<Arc<dyn MessageHandler>>>,
    peers: Mutex<BTreeMap<String, Vec<Arc<PeerConn>>>>,
    tls: Option<TlsContext>,
    closed: AtomicBool,
    stats: TcpStats,
    streams: Mutex<BTreeMap<StreamKey, Box<dyn SyncStream>>>,
    active_streams: AtomicUsize,
    listener: Mutex<Option<std::net::TcpListener>>,
    local_addr: Mutex<Option<SocketAddr>>,
    inbound: inbound::ConnectionCount,
}

/// The TCP transport. Cheap to clone.
#[derive(Clone)]
pub struct TcpTransport {
    inner: Arc<Inner>,
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const SNAPSHOT_ACK_TIMEOUT: Duration = Duration::from_secs(60);
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

impl TcpTransport {
    /// Binds the listener (so a busy port is reported now) and starts the runtime.
    pub fn new(cfg: TcpConfig) -> Result<TcpTransport, TcpError> {
        if cfg.connections_per_host == 0 || cfg.connections_per_host > 64 {
            return Err(TcpError::Config(
                "connections_per_host must be in 1..=64".into(),
            ));
        }
        if cfg.max_inbound_connections == 0 || cfg.max_inbound_connections_per_ip == 0 {
            return Err(TcpError::Config(
                "inbound connection limits must be non-zero".into(),
            ));
        }
        if cfg.handshake_timeout.is_zero() || cfg.frame_read_timeout.is_zero() {
            return Err(TcpError::Config("timeouts must be non-zero".into()));
        }
        if cfg.io_threads == 0 || cfg.io_threads > 64 {
            return Err(TcpError::Config("io_threads must be in 1..=64".into()));
        }
        if cfg.send_queue_len == 0 || cfg.max_snapshot_streams == 0 || cfg.max_frame_bytes < 1024 {
            return Err(TcpError::Config(
                "queue, stream and frame limits must be non-zero".into(),
            ));
        }
        let tls = match &cfg.tls {
            Some(p) => Some(TlsContext::load(p)?),
            None => None,
        };
        let bind = cfg.listen_address.as_deref().unwrap_or(&cfg.address);
        let listener = std::net::TcpListener::bind(bind).map_err(|source| TcpError::Bind {
            address: bind.to_string(),
            source,
        })?;
        listener.set_nonblocking(true).map_err(TcpError::Runtime)?;
        let local = listener.local_addr().ok();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(cfg.io_threads)
            .thread_name("ls-transport")
            .enable_all()
            .build()
            .map_err(TcpError::Runtime)?;
        let handle = runtime.handle().clone();
        Ok(TcpTransport {
            inner: Arc::new(Inner {
                cfg,
                runtime: Mutex::new(Some(runtime)),
                handle,
                handler: Mutex::new(None),
                peers: Mutex::new(BTreeMap::new()),
                tls,
                closed: AtomicBool::new(false),
                stats: TcpStats::default(),
                streams: Mutex::new(BTreeMap::new()),
                active_streams: AtomicUsize::new(0),
                listener: Mutex::new(Some(listener)),
                local_addr: Mutex::new(local),
                inbound: Default::default(),
            }),
        })
    }

    /// The counters.
    pub fn stats(&self) -> &TcpStats {
        &self.inner.stats
    }

    /// The socket address actually bound (useful with port 0).
    pub fn local_socket_addr(&self) -> Option<SocketAddr> {
        *self.inner.local_addr.lock()
    }
}

fn add(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

impl Transport for TcpTransport {
    fn local_address(&self) -> &str {
        &self.inner.cfg.address
    }

    fn start(&self, handler: Arc<dyn MessageHandler>) -> Result<(), SendError> {
        *self.inner.handler.lock() = Some(handler);
        let Some(listener) = self.inner.listener.lock().take() else {
            return Ok(());
        };
        let inner = self.inner.clone();
        self.inner
            .handle
            .spawn(async move { inbound::accept_loop(inner, listener).await });
        Ok(())
    }

    fn send(&self, address: &str, batch: MessageBatch) -> Result<(), SendError> {
        let inner = &self.inner;
        if inner.closed.load(Ordering::Acquire) {
            return Err(SendError::Closed);
        }
        let n = inner.cfg.connections_per_host;
        let conns = {
            let mut peers = inner.peers.lock();
            peers
                .entry(address.to_string())
                .or_insert_with(|| (0..n).map(|_| PeerConn::spawn(inner, address)).collect())
                .clone()
        };
        // Split by shard so a shard's messages always share one connection.
        let mut parts: Vec<Vec<longship_raft::Message>> = vec![Vec::new(); n];
        for m in batch.messages {
            parts[(m.shard_id.0 % n as u64) as usize].push(m);
        }
        let mut result = Ok(());
        for (i, messages) in parts.into_iter().enumerate() {
            if messages.is_empty() {
                continue;
            }
            let b = MessageBatch {
                deployment_id: batch.deployment_id,
                source_address: batch.source_address.clone(),
                bin_ver: batch.bin_ver,
                messages,
            };
            if let Err(e) = conns[i].send(inner, address, &b) {
                result = Err(e);
            }
        }
        result
    }

    fn send_snapshot_chunk(&self, address: &str, chunk: SnapshotChunk) -> Result<(), SendError> {
        let inner = &self.inner;
        if inner.closed.load(Ordering::Acquire) {
            return Err(SendError::Closed);
        }
        let key = (chunk.shard_id, chunk.from, chunk.to, chunk.index.0);
        let mut stream = if chunk.chunk_id == 0 {
            if let Some(_old) = inner.streams.lock().remove(&key) {
                inner.active_streams.fetch_sub(1, Ordering::AcqRel);
            }
            if inner.active_streams.fetch_add(1, Ordering::AcqRel) >= inner.cfg.max_snapshot_streams
            {
                inner.active_streams.fetch_sub(1, Ordering::AcqRel);
                return Err(SendError::QueueFull(address.to_string()));
            }
            let connected = connect_sync(inner, address);
            let handler = inner.handler.lock().clone();
            if let Some(h) = handler {
                match &connected {
                    Ok(_) => h.handle_connection_established(address, true),
                    Err(_) => h.handle_connection_failed(address, true),
                }
            }
            match connected {
                Ok(s) => s,
                Err(e) => {
                    inner.active_streams.fetch_sub(1, Ordering::AcqRel);
                    tracing::info!(%address, error = %e, "snapshot connection failed");
                    return Err(SendError::Unreachable(address.to_string()));
                }
            }
        } else {
            match inner.streams.lock().remove(&key) {
                Some(s) => s,
                None => return Err(SendError::Unreachable(address.to_string())),
            }
        };
        let fail = |inner: &Inner| {
            inner.active_streams.fetch_sub(1, Ordering::AcqRel);
            Err(SendError::Unreachable(address.to_string()))
        };
        let last = chunk.last;
        let frame = encode_frame(
            FrameType::Chunk,
            inner.cfg.deployment_id,
            &encode_chunk(&chunk),
        );
        if stream
            .write_all(&frame)
            .and_then(|_| stream.flush())
            .is_err()
        {
            return fail(inner);
        }
        add(&inner.stats.frames_sent);
        if !last {
            inner.streams.lock().insert(key, stream);
            return Ok(());
        }
        // The receiver answers once the snapshot is complete and verified.
        let ok = read_ack_sync(&mut stream, inner.cfg.deployment_id);
        inner.active_streams.fetch_sub(1, Ordering::AcqRel);
        if ok {
            Ok(())
        } else {
            Err(SendError::Unreachable(address.to_string()))
        }
    }

    fn cancel_snapshot_stream(
        &self,
        _address: &str,
        shard_id: ShardId,
        from: ReplicaId,
        to: ReplicaId,
        index: longship_raft::Index,
    ) {
        if self
            .inner
            .streams
            .lock()
            .remove(&(shard_id, from, to, index.0))
            .is_some()
        {
            self.inner.active_streams.fetch_sub(1, Ordering::AcqRel);
        }
    }

    fn close(&self) {
        if self.inner.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        for conns in std::mem::take(&mut *self.inner.peers.lock()).into_values() {
            for c in conns {
                c.close();
            }
        }
        self.inner.streams.lock().clear();
        *self.inner.handler.lock() = None;
        if let Some(rt) = self.inner.runtime.lock().take() {
            if tokio::runtime::Handle::try_current().is_ok() {
                // Blocking is not allowed inside a runtime.
                rt.shutdown_background();
            } else {
                // Wait for the tasks to be dropped, so that the listening
                // port is free when `close` returns (a restart rebinds it).
                rt.shutdown_timeout(CLOSE_TIMEOUT);
            }
        }
    }
}

fn resolve(address: &str) -> std::io::Result<SocketAddr> {
    address.to_socket_addrs()?.next().ok_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::NotFound, "address resolves to nothing")
    })
}

fn connect_sync(inner: &Inner, address: &str) -> std::io::Result<Box<dyn SyncStream>> {
    let addr = resolve(address)?;
    let stream = StdTcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(SNAPSHOT_ACK_TIMEOUT))?;
    stream.set_write_timeout(Some(SNAPSHOT_ACK_TIMEOUT))?;
    match &inner.tls {
        Some(tls) => {
            let name = server_name(address).ok_or_else(|| {
                std::io::Error::new(std::io::ErrorKind::InvalidInput, "bad TLS server name")
            })?;
            let conn = rustls::ClientConnection::new(tls.client.clone(), name)
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            Ok(Box::new(rustls::StreamOwned::new(conn, stream)))
        }
        None => Ok(Box::new(stream)),
    }
}

fn read_ack_sync(stream: &mut Box<dyn SyncStream>, deployment_id: u64) -> bool {
    let mut h = [0u8; FRAME_HEADER_BYTES];
    if stream.read_exact(&mut h).is_err() {
        return false;
    }
    let Ok(hdr) = decode_header(&h, deployment_id, 16) else {
        return false;
    };
    if hdr.frame_type != FrameType::SnapshotAck || hdr.body_len != 1 {
        return false;
    }
    let mut body = [0u8; 1];
    stream.read_exact(&mut body).is_ok() && check_body(&hdr, &body).is_ok() && body[0] == 1
}
