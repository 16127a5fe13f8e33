//! Sending to one remote host: its connections, their queues and writers.
//!
//! A frame is written by the thread that sends it whenever it can be: if
//! the connection is up, nothing is queued before it and no writer task is
//! writing, `send` writes the frame with one non-blocking `write` and
//! returns. Only what the socket does not take at once (a full socket
//! buffer, a connection still to be made, TLS) goes to the connection's
//! bounded queue and wakes its writer task. On an idle or lightly loaded
//! link a message therefore costs no thread wake-up on the sending side;
//! under load the writer drains everything queued with one write.
//!
//! Order: a connection's frames leave in the order `send` accepted them.
//! The queue is only ever drained by the writer, and the direct path is
//! taken only while the queue is empty and the writer idle, both checked
//! and the write done under the connection's lock.

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use longship_raft::codec::encode_batch;
use longship_raft::{MessageBatch, ReplicaId, ShardId};
use parking_lot::Mutex;
use tokio::io::AsyncWriteExt;
use tokio::sync::Notify;

use super::{AsyncStream, BACKOFF_MAX, BACKOFF_MIN, CONNECT_TIMEOUT, Inner, add, resolve};
use crate::SendError;
use crate::frame::{FrameType, encode_frame};
use crate::tls::server_name;

/// Encoded frames of one batch waiting for the writer, and the replicas
/// they are for (told when the peer cannot be reached).
pub(super) struct Outgoing {
    frames: Vec<Vec<u8>>,
    bytes: usize,
    targets: Vec<(ShardId, ReplicaId)>,
}

/// A connection that is up.
enum Conn {
    /// Plain TCP: shared, so that senders can write to it directly.
    Plain(Arc<tokio::net::TcpStream>),
    /// TLS: written by the writer task only (the session needs `&mut`).
    Tls(Box<dyn AsyncStream>),
}

/// What senders and the writer share, under one lock.
#[derive(Default)]
struct State {
    /// The connection while the writer is idle; the writer takes it while
    /// it writes.
    conn: Option<Conn>,
    /// Frames waiting for the writer, oldest first.
    queue: VecDeque<Outgoing>,
    /// Bytes in `queue`.
    queued_bytes: usize,
    /// The writer owns the queue's head and the connection: senders queue.
    writer_busy: bool,
    /// The transport closed: nothing is sent any more.
    closed: bool,
}

/// One connection to a remote host: its queue, its writer task.
pub(super) struct PeerConn {
    state: Mutex<State>,
    wake: Notify,
}

impl PeerConn {
    /// Starts the connection's writer task.
    pub(super) fn spawn(inner: &Arc<Inner>, address: &str) -> Arc<PeerConn> {
        let pc = Arc::new(PeerConn {
            state: Mutex::new(State::default()),
            wake: Notify::new(),
        });
        let (inner2, pc2, addr) = (inner.clone(), pc.clone(), address.to_string());
        inner
            .handle
            .spawn(async move { writer(inner2, pc2, addr).await });
        pc
    }

    /// Sends `batch`, encoded here by the sending thread: written at once
    /// when the socket takes it, else queued for the writer (bounded: a
    /// full queue drops it, Raft retransmits). Only what is queued records
    /// the replicas it is for.
    pub(super) fn send(
        &self,
        inner: &Inner,
        address: &str,
        batch: &MessageBatch,
    ) -> Result<(), SendError> {
        let mut frames = Vec::new();
        frames_of(inner, address, batch, &mut frames);
        let mut out = Outgoing {
            bytes: frames.iter().map(Vec::len).sum(),
            frames,
            targets: Vec::new(),
        };
        let mut st = self.state.lock();
        if st.closed {
            return Err(SendError::Closed);
        }
        if !st.writer_busy
            && st.queue.is_empty()
            && let Some(Conn::Plain(s)) = &st.conn
        {
            let frames = out.frames.len();
            let res = write_now(s, &mut out);
            let written = frames - out.frames.len();
            inner
                .stats
                .frames_sent
                .fetch_add(written as u64, Ordering::Relaxed);
            match res {
                Ok(true) => {
                    add(&inner.stats.direct_writes);
                    return Ok(());
                }
                // The rest (or all of it) goes through the writer.
                Ok(false) => {}
                Err(e) => {
                    // The writer reconnects (or reports the peer unreachable).
                    tracing::debug!(%address, error = %e, "write failed; reconnecting");
                    st.conn = None;
                }
            }
        } else if st.queue.len() >= inner.cfg.send_queue_len
            || st.queued_bytes + out.bytes > inner.cfg.max_queued_bytes
        {
            add(&inner.stats.batches_dropped_queue_full);
            return Err(SendError::QueueFull(address.to_string()));
        }
        out.targets = batch.messages.iter().map(|m| (m.shard_id, m.to)).collect();
        st.queued_bytes += out.bytes;
        st.queue.push_back(out);
        if !st.writer_busy {
            st.writer_busy = true;
            self.wake.notify_one();
        }
        Ok(())
    }

    /// Stops sending: queued frames are dropped, the writer ends.
    pub(super) fn close(&self) {
        let mut st = self.state.lock();
        st.closed = true;
        st.queue.clear();
        st.queued_bytes = 0;
        st.conn = None;
        drop(st);
        self.wake.notify_one();
    }
}

/// Writes as much of `out` as the socket takes without blocking. `Ok(true)`:
/// all of it; `Ok(false)`: `out` now holds what is left.
fn write_now(s: &tokio::net::TcpStream, out: &mut Outgoing) -> std::io::Result<bool> {
    while let Some(first) = out.frames.first_mut() {
        match s.try_write(first) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) if n == first.len() => {
                out.bytes -= n;
                out.frames.remove(0);
            }
            Ok(n) => {
                out.bytes -= n;
                first.drain(..n);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// Exponential backoff with jitter between connection attempts.
struct Backoff {
    delay: Duration,
    next_attempt: Instant,
    seed: u64,
}

impl Backoff {
    fn new(address: &str) -> Backoff {
        let seed = address.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
        });
        Backoff {
            delay: BACKOFF_MIN,
            next_attempt: Instant::now(),
            seed,
        }
    }

    fn ready(&self) -> bool {
        Instant::now() >= self.next_attempt
    }

    fn failed(&mut self) {
        self.seed = self
            .seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let jitter =
            Duration::from_millis((self.seed >> 33) % (self.delay.as_millis() as u64 / 2 + 1));
        self.next_attempt = Instant::now() + self.delay + jitter;
        self.delay = (self.delay * 2).min(BACKOFF_MAX);
    }

    fn reset(&mut self) {
        self.delay = BACKOFF_MIN;
    }
}

fn report_unreachable(inner: &Inner, address: &str, lost: &[Outgoing]) {
    if lost.is_empty() {
        return;
    }
    inner
        .stats
        .batches_dropped_unreachable
        .fetch_add(lost.len() as u64, Ordering::Relaxed);
    let targets: BTreeSet<(ShardId, ReplicaId)> = lost
        .iter()
        .flat_map(|o| o.targets.iter().copied())
        .collect();
    let handler = inner.handler.lock().clone();
    if let Some(h) = handler {
        h.handle_unreachable(address, &targets.into_iter().collect::<Vec<_>>());
    }
}

/// Writes every frame of `batch` to `conn`.
async fn write_all(conn: &mut Conn, batch: &[Outgoing]) -> std::io::Result<()> {
    match conn {
        Conn::Plain(s) => {
            for o in batch {
                for f in &o.frames {
                    let mut at = 0;
                    while at < f.len() {
                        s.writable().await?;
                        match s.try_write(&f[at..]) {
                            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                            Ok(n) => at += n,
                            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                            Err(e) => return Err(e),
                        }
                    }
                }
            }
            Ok(())
        }
        Conn::Tls(s) => {
            for o in batch {
                for f in &o.frames {
                    s.write_all(f).await?;
                }
            }
            s.flush().await
        }
    }
}

/// The writer task of one connection: connects, writes what senders could
/// not, and hands the connection back to them when the queue is empty.
async fn writer(inner: Arc<Inner>, pc: Arc<PeerConn>, address: String) {
    let mut backoff = Backoff::new(&address);
    loop {
        pc.wake.notified().await;
        // Busy: drain the queue until it is empty.
        let mut conn: Option<Conn> = None;
        loop {
            let batch: Vec<Outgoing> = {
                let mut st = pc.state.lock();
                if st.closed {
                    return;
                }
                if conn.is_none() {
                    conn = st.conn.take();
                }
                if st.queue.is_empty() {
                    st.conn = conn.take();
                    st.writer_busy = false;
                    break;
                }
                st.queued_bytes = 0;
                st.queue.drain(..).collect()
            };
            if conn.is_none() {
                if !backoff.ready() {
                    report_unreachable(&inner, &address, &batch);
                    continue;
                }
                let connected = connect(&inner, &address).await;
                let handler = inner.handler.lock().clone();
                if let Some(h) = handler {
                    match &connected {
                        Ok(_) => h.handle_connection_established(&address, false),
                        Err(_) => h.handle_connection_failed(&address, false),
                    }
                }
                match connected {
                    Ok(c) => {
                        backoff.reset();
                        conn = Some(c);
                    }
                    Err(e) => {
                        add(&inner.stats.connect_failures);
                        tracing::debug!(%address, error = %e, "connect failed");
                        backoff.failed();
                        report_unreachable(&inner, &address, &batch);
                        continue;
                    }
                }
            }
            let c = conn.as_mut().expect("connected above");
            match write_all(c, &batch).await {
                Ok(()) => {
                    let n: usize = batch.iter().map(|o| o.frames.len()).sum();
                    inner
                        .stats
                        .frames_sent
                        .fetch_add(n as u64, Ordering::Relaxed);
                }
                Err(e) => {
                    tracing::debug!(%address, error = %e, "write failed; reconnecting");
                    conn = None;
                    backoff.failed();
                    report_unreachable(&inner, &address, &batch);
                }
            }
        }
    }
}

/// Connects to `address` (TLS if configured).
async fn connect(inner: &Inner, address: &str) -> std::io::Result<Conn> {
    let addr = resolve(address)?;
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
    stream.set_nodelay(true)?;
    let Some(tls) = &inner.tls else {
        return Ok(Conn::Plain(Arc::new(stream)));
    };
    let name = server_name(address).ok_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, "bad TLS server name")
    })?;
    let connector = tokio_rustls::TlsConnector::from(tls.client.clone());
    let s = tokio::time::timeout(CONNECT_TIMEOUT, connector.connect(name, stream))
        .await
        .map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake timed out")
        })??;
    Ok(Conn::Tls(Box::new(s)))
}

/// Encodes `batch` as frames within the frame limit, halving it as often as
/// needed. A single message over the limit is dropped (and logged).
fn frames_of(inner: &Inner, address: &str, batch: &MessageBatch, out: &mut Vec<Vec<u8>>) {
    let body = encode_batch(batch);
    if body.len() <= inner.cfg.max_frame_bytes as usize {
        out.push(encode_frame(
            FrameType::Batch,
            inner.cfg.deployment_id,
            &body,
        ));
        return;
    }
    if batch.messages.len() <= 1 {
        tracing::warn!(%address, bytes = body.len(), "message over the frame limit dropped");
        return;
    }
    let (first, second) = batch.messages.split_at(batch.messages.len() / 2);
    for half in [first, second] {
        let part = MessageBatch {
            deployment_id: batch.deployment_id,
            source_address: batch.source_address.clone(),
            bin_ver: batch.bin_ver,
            messages: half.to_vec(),
        };
        frames_of(inner, address, &part, out);
    }
}
