//! Receiving: accepting connections, reading frames, handing them on.
//!
//! What a peer can make this side spend is bounded before it is spent:
//! connections in all and per remote address (over the limit a connection
//! is closed at once), the TLS handshake's duration, and a frame's: once
//! its first byte arrived, the whole frame must arrive within
//! `frame_read_timeout`, and its body buffer grows only as bytes arrive
//! (a header announcing 64 MiB costs nothing until 64 MiB are sent). A bad
//! frame closes its connection only.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use longship_raft::codec::{Limits, decode_batch};
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use super::{AsyncStream, Inner, add};
use crate::frame::{
    FRAME_HEADER_BYTES, FrameError, FrameHeader, FrameType, check_body, decode_chunk,
    decode_header, encode_frame,
};

/// Read buffer of an inbound connection.
const READ_BUFFER_BYTES: usize = 64 << 10;
/// First allocation for a frame body; it grows as bytes arrive.
const BODY_START_BYTES: usize = 64 << 10;

/// Open inbound connections, in all and by remote address.
#[derive(Default)]
pub(super) struct ConnectionCount {
    by_ip: Mutex<BTreeMap<IpAddr, usize>>,
}

/// One admitted connection; gives its place back when dropped.
struct Admitted<'a> {
    count: &'a ConnectionCount,
    ip: IpAddr,
}

impl ConnectionCount {
    /// Admits a connection from `ip` unless a limit is reached.
    fn admit(&self, ip: IpAddr, total_max: usize, per_ip_max: usize) -> Option<Admitted<'_>> {
        let mut by_ip = self.by_ip.lock();
        let total: usize = by_ip.values().sum();
        let here = by_ip.get(&ip).copied().unwrap_or(0);
        if total >= total_max || here >= per_ip_max {
            return None;
        }
        by_ip.insert(ip, here + 1);
        Some(Admitted { count: self, ip })
    }
}

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        let mut by_ip = self.count.by_ip.lock();
        if let Some(n) = by_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                by_ip.remove(&self.ip);
            }
        }
    }
}

/// Accepts connections until the transport closes.
pub(super) async fn accept_loop(inner: Arc<Inner>, listener: std::net::TcpListener) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "transport listener failed");
            return;
        }
    };
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        if inner.closed.load(Ordering::Acquire) {
            return;
        }
        let _ = stream.set_nodelay(true);
        let inner = inner.clone();
        tokio::spawn(async move {
            let cfg = &inner.cfg;
            let Some(_admitted) = inner.inbound.admit(
                peer.ip(),
                cfg.max_inbound_connections,
                cfg.max_inbound_connections_per_ip,
            ) else {
                add(&inner.stats.connections_refused);
                tracing::warn!(%peer, "inbound connection limit reached; connection closed");
                return;
            };
            let stream: Box<dyn AsyncStream> = match &inner.tls {
                Some(tls) => {
                    let acceptor = tokio_rustls::TlsAcceptor::from(tls.server.clone());
                    match tokio::time::timeout(cfg.handshake_timeout, acceptor.accept(stream)).await
                    {
                        Ok(Ok(s)) => Box::new(s),
                        Ok(Err(e)) => {
                            add(&inner.stats.tls_rejected);
                            tracing::warn!(%peer, error = %e, "TLS handshake refused");
                            return;
                        }
                        Err(_) => {
                            add(&inner.stats.tls_rejected);
                            tracing::warn!(%peer, "TLS handshake timed out");
                            return;
                        }
                    }
                }
                None => Box::new(stream),
            };
            serve(&inner, stream, peer).await;
        });
    }
}

/// Why a connection is closed by the reader.
#[derive(Debug)]
enum ReadError {
    Io(std::io::Error),
    Frame(FrameError),
    /// A frame began and did not end within `frame_read_timeout`.
    Slow,
}

/// Reads one frame: `None` at a clean end between frames. Waiting for a
/// frame to begin has no time limit (connections are long-lived and idle
/// between bursts); once it began, the rest must come within `timeout`.
async fn read_frame<S: AsyncRead + Unpin>(
    s: &mut S,
    deployment_id: u64,
    max: u32,
    timeout: Duration,
) -> Result<Option<(FrameHeader, Vec<u8>)>, ReadError> {
    let mut h = [0u8; FRAME_HEADER_BYTES];
    match s.read(&mut h[..1]).await {
        Ok(0) => return Ok(None),
        Ok(_) => {}
        Err(e) => return Err(ReadError::Io(e)),
    }
    let rest = async {
        s.read_exact(&mut h[1..]).await.map_err(eof_is_truncation)?;
        let hdr = decode_header(&h, deployment_id, max).map_err(ReadError::Frame)?;
        // Checked header first; then a buffer that grows with what
        // arrives, never the announced length up front.
        let len = hdr.body_len as usize;
        let mut body = Vec::with_capacity(len.min(BODY_START_BYTES));
        let got = (&mut *s)
            .take(len as u64)
            .read_to_end(&mut body)
            .await
            .map_err(ReadError::Io)?;
        if got < len {
            return Err(ReadError::Frame(FrameError::Truncated));
        }
        check_body(&hdr, &body).map_err(ReadError::Frame)?;
        Ok(Some((hdr, body)))
    };
    match tokio::time::timeout(timeout, rest).await {
        Ok(r) => r,
        Err(_) => Err(ReadError::Slow),
    }
}

fn eof_is_truncation(e: std::io::Error) -> ReadError {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        ReadError::Frame(FrameError::Truncated)
    } else {
        ReadError::Io(e)
    }
}

/// Reads frames from one connection and hands them to the handler.
async fn serve(inner: &Inner, s: Box<dyn AsyncStream>, peer: SocketAddr) {
    // Buffered: a frame header and a small body cost one read, not two or three.
    let mut s = tokio::io::BufReader::with_capacity(READ_BUFFER_BYTES, s);
    let dep = inner.cfg.deployment_id;
    let limits = Limits {
        max_payload_bytes: inner.cfg.max_frame_bytes as u64,
        ..Limits::default()
    };
    // The raft address this connection's batches named: told to the
    // handler when the connection ends.
    let mut source = String::new();
    let lost = |source: &str| {
        if !source.is_empty()
            && let Some(h) = inner.handler.lock().clone()
        {
            h.handle_connection_lost(source);
        }
    };
    loop {
        let read = read_frame(
            &mut s,
            dep,
            inner.cfg.max_frame_bytes,
            inner.cfg.frame_read_timeout,
        )
        .await;
        let (hdr, body) = match read {
            Ok(Some(x)) => x,
            Ok(None) => return lost(&source),
            Err(ReadError::Io(e)) => {
                tracing::debug!(%peer, error = %e, "connection closed");
                return lost(&source);
            }
            Err(ReadError::Frame(e)) => {
                add(&inner.stats.frames_rejected);
                tracing::warn!(%peer, error = %e, "bad frame; closing the connection");
                return;
            }
            Err(ReadError::Slow) => {
                add(&inner.stats.frames_rejected);
                add(&inner.stats.slow_frames);
                tracing::warn!(%peer, "a frame took longer than frame_read_timeout; closing the connection");
                return;
            }
        };
        let Some(handler) = inner.handler.lock().clone() else {
            return;
        };
        match hdr.frame_type {
            FrameType::Batch => match decode_batch(&body, &limits) {
                Ok(b) if b.deployment_id == dep => {
                    add(&inner.stats.frames_received);
                    if source != b.source_address {
                        source.clone_from(&b.source_address);
                    }
                    handler.handle_batch_on_io_thread(b);
                }
                Ok(_) => {
                    add(&inner.stats.frames_rejected);
                    tracing::warn!(%peer, "batch from another deployment; closing the connection");
                    return;
                }
                Err(e) => {
                    add(&inner.stats.frames_rejected);
                    tracing::warn!(%peer, error = %e, "malformed batch; closing the connection");
                    return;
                }
            },
            FrameType::Chunk => {
                let chunk = match decode_chunk(&body, inner.cfg.max_frame_bytes as u64) {
                    Ok(c) if c.deployment_id == dep => c,
                    _ => {
                        add(&inner.stats.frames_rejected);
                        tracing::warn!(%peer, "malformed snapshot chunk; closing the connection");
                        return;
                    }
                };
                add(&inner.stats.frames_received);
                let last = chunk.last;
                // Chunk handling writes files: keep it off the async workers' hot path.
                let ok = tokio::task::block_in_place(|| handler.handle_snapshot_chunk(chunk));
                if !ok || last {
                    let ack = encode_frame(FrameType::SnapshotAck, dep, &[ok as u8]);
                    let _ = s.write_all(&ack).await;
                    let _ = s.flush().await;
                    if !ok {
                        return;
                    }
                }
            }
            FrameType::SnapshotAck => {
                add(&inner.stats.frames_rejected);
                return;
            }
        }
    }
}
