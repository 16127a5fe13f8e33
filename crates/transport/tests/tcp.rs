//! The TCP transport over real loopback sockets: delivery and merging,
//! malformed input on the listening port, unreachable peers and backoff,
//! mutual TLS, snapshot streams, and the bounds on what a peer can cost
//! (connections per address, slow frames, stalled TLS handshakes).
//!
//! Every wait is bounded; addresses are 127.0.0.1 with ports picked free.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use longship_raft::codec::encode_batch;
use longship_raft::{
    Entry, Index, MESSAGE_BATCH_VERSION, Message, MessageBatch, MessageType, ReplicaId, ShardId,
    Term,
};
use longship_transport::frame::{FRAME_HEADER_BYTES, FrameType, encode_frame};
use longship_transport::{
    MessageHandler, SendError, SnapshotChunk, TcpConfig, TcpTransport, TlsPaths, Transport,
};

const WAIT: Duration = Duration::from_secs(10);
const DEPLOYMENT: u64 = 1;

use longship_testkit::free_addr;

#[derive(Default)]
struct Seen {
    messages: Vec<Message>,
    batches: usize,
    chunks: Vec<SnapshotChunk>,
    unreachable: Vec<(String, ShardId, ReplicaId)>,
}

/// Records what a transport hands to its NodeHost.
#[derive(Default)]
struct Recorder {
    seen: Mutex<Seen>,
    cv: Condvar,
    /// Chunks with this id are refused (the stream is aborted).
    refuse_chunk: AtomicU64,
}

impl Recorder {
    fn new() -> Arc<Recorder> {
        Arc::new(Recorder {
            refuse_chunk: AtomicU64::new(u64::MAX),
            ..Recorder::default()
        })
    }

    /// Waits until `f` holds; false after `within`.
    fn wait(&self, within: Duration, f: impl Fn(&Seen) -> bool) -> bool {
        let deadline = Instant::now() + within;
        let mut s = self.seen.lock().unwrap();
        loop {
            if f(&s) {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            s = self.cv.wait_timeout(s, deadline - now).unwrap().0;
        }
    }

    fn message_count(&self) -> usize {
        self.seen.lock().unwrap().messages.len()
    }
}

impl MessageHandler for Recorder {
    fn handle_batch(&self, batch: MessageBatch) {
        let mut s = self.seen.lock().unwrap();
        s.batches += 1;
        s.messages.extend(batch.messages);
        self.cv.notify_all();
    }

    fn handle_snapshot_chunk(&self, chunk: SnapshotChunk) -> bool {
        let refuse = chunk.chunk_id == self.refuse_chunk.load(Ordering::Acquire);
        let mut s = self.seen.lock().unwrap();
        if !refuse {
            s.chunks.push(chunk);
        }
        self.cv.notify_all();
        !refuse
    }

    fn handle_unreachable(&self, address: &str, targets: &[(ShardId, ReplicaId)]) {
        let mut s = self.seen.lock().unwrap();
        for &(shard, replica) in targets {
            s.unreachable.push((address.to_string(), shard, replica));
        }
        self.cv.notify_all();
    }
}

fn config(address: &str) -> TcpConfig {
    TcpConfig {
        address: address.to_string(),
        deployment_id: DEPLOYMENT,
        ..TcpConfig::default()
    }
}

fn start_with(cfg: TcpConfig) -> (TcpTransport, Arc<Recorder>) {
    let t = TcpTransport::new(cfg).unwrap();
    let r = Recorder::new();
    t.start(r.clone()).unwrap();
    (t, r)
}

fn start(address: &str) -> (TcpTransport, Arc<Recorder>) {
    start_with(config(address))
}

/// A `Replicate` message of `shard` numbered `seq` (in `log_index`).
fn message(shard: u64, seq: u64, payload_bytes: usize) -> Message {
    Message {
        log_index: Index(seq),
        term: Term(1),
        entries: if payload_bytes > 0 {
            vec![Entry {
                term: Term(1),
                index: Index(seq + 1),
                cmd: vec![seq as u8; payload_bytes].into(),
                ..Entry::default()
            }]
        } else {
            Vec::new()
        },
        ..Message::new(
            MessageType::Replicate,
            ShardId(shard),
            ReplicaId(1),
            ReplicaId(2),
        )
    }
}

fn batch(source: &str, messages: Vec<Message>) -> MessageBatch {
    MessageBatch {
        deployment_id: DEPLOYMENT,
        source_address: source.to_string(),
        bin_ver: MESSAGE_BATCH_VERSION,
        messages,
    }
}

/// Sends one message from `a` to `b` and waits until `rb` has it: the link works.
fn assert_link_works(a: &TcpTransport, b_addr: &str, rb: &Recorder, shard: u64) {
    let before = rb.message_count();
    let deadline = Instant::now() + WAIT;
    // Resend while waiting: a connection found broken loses what was written into it.
    loop {
        let _ = a.send(b_addr, batch(a.local_address(), vec![message(shard, 7, 0)]));
        if rb.wait(Duration::from_millis(200), |s| s.messages.len() > before) {
            return;
        }
        assert!(Instant::now() < deadline, "{b_addr} no longer receives");
    }
}

fn wait_counter(what: &str, c: &AtomicU64, at_least: u64) {
    let deadline = Instant::now() + WAIT;
    while c.load(Ordering::Relaxed) < at_least {
        assert!(
            Instant::now() < deadline,
            "{what} stayed at {} (wanted {at_least})",
            c.load(Ordering::Relaxed)
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn batches_flow_both_ways_in_shard_order_mostly_written_by_the_sender() {
    let (a_addr, b_addr) = (free_addr(), free_addr());
    let (a, ra) = start(&a_addr);
    let (b, rb) = start(&b_addr);
    const N: u64 = 2000;
    for seq in 0..N {
        // Four shards: spread over both connections, each kept in order.
        let m = message(seq % 4 + 1, seq, 16);
        a.send(&b_addr, batch(&a_addr, vec![m.clone()])).unwrap();
        b.send(&a_addr, batch(&b_addr, vec![m])).unwrap();
    }
    for (name, r) in [("b", &rb), ("a", &ra)] {
        assert!(
            r.wait(WAIT, |s| s.messages.len() == N as usize),
            "{name} got {} of {N} messages",
            r.message_count()
        );
        let s = r.seen.lock().unwrap();
        for shard in 1..=4 {
            let seqs: Vec<u64> = s
                .messages
                .iter()
                .filter(|m| m.shard_id == ShardId(shard))
                .map(|m| m.log_index.0)
                .collect();
            let want: Vec<u64> = (0..N).filter(|q| q % 4 + 1 == shard).collect();
            assert_eq!(seqs, want, "shard {shard} out of order at {name}");
        }
    }
    // Once connected, a sender writes its frames itself (no writer task).
    for (name, t) in [("a", &a), ("b", &b)] {
        let direct = t.stats().direct_writes.load(Ordering::Relaxed);
        assert!(
            direct > 0,
            "{name}: no frame was written by the sender itself"
        );
    }
    // Every frame written was accepted (the writer counts after its flush).
    let deadline = Instant::now() + WAIT;
    while a.stats().frames_sent.load(Ordering::Relaxed)
        != b.stats().frames_received.load(Ordering::Relaxed)
    {
        assert!(Instant::now() < deadline, "frames sent and received differ");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(a.stats().frames_rejected.load(Ordering::Relaxed), 0);
    assert_eq!(b.stats().frames_rejected.load(Ordering::Relaxed), 0);
    a.close();
    b.close();
}

#[test]
fn batches_larger_than_the_frame_limit_are_split_across_frames() {
    let (a_addr, b_addr) = (free_addr(), free_addr());
    let small = |addr: &str| TcpConfig {
        max_frame_bytes: 64 << 10,
        connections_per_host: 1,
        ..config(addr)
    };
    let (a, _ra) = start_with(small(&a_addr));
    let (_b, rb) = start_with(small(&b_addr));
    // 100 messages of 4 KiB in one batch: about 400 KiB, six times the frame limit.
    let messages: Vec<Message> = (0..100).map(|seq| message(1, seq, 4096)).collect();
    a.send(&b_addr, batch(&a_addr, messages.clone())).unwrap();
    assert!(
        rb.wait(WAIT, |s| s.messages.len() == messages.len()),
        "got {} of {} messages",
        rb.message_count(),
        messages.len()
    );
    assert_eq!(rb.seen.lock().unwrap().messages, messages);
    assert!(a.stats().frames_sent.load(Ordering::Relaxed) >= 7);
    a.close();
}

// ------------------------------------------------------------ bad input

/// A frame's header with `f` applied and the header checksum recomputed, so
/// that the field changed by `f` is what the reader refuses.
fn rewrite_header(mut frame: Vec<u8>, f: impl FnOnce(&mut [u8])) -> Vec<u8> {
    f(&mut frame[..FRAME_HEADER_BYTES]);
    let crc = crc32c::crc32c(&frame[..24]);
    frame[24..28].copy_from_slice(&crc.to_le_bytes());
    frame
}

fn good_frame(source: &str) -> Vec<u8> {
    let body = encode_batch(&batch(source, vec![message(3, 1, 32)]));
    encode_frame(FrameType::Batch, DEPLOYMENT, &body)
}

/// Waits until the peer closes `s` (end of stream or reset).
fn assert_closed_by_peer(mut s: TcpStream, what: &str) {
    s.set_read_timeout(Some(WAIT)).unwrap();
    let mut buf = [0u8; 256];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::ConnectionAborted
                ) =>
            {
                return;
            }
            Err(e) => panic!("{what}: connection not closed by the receiver: {e}"),
        }
    }
}

#[test]
fn malformed_frames_are_rejected_and_close_only_their_connection() {
    let (a_addr, b_addr) = (free_addr(), free_addr());
    let (a, _ra) = start(&a_addr);
    let (b, rb) = start_with(TcpConfig {
        max_frame_bytes: 1 << 20,
        ..config(&b_addr)
    });
    // A good peer, connected before and served throughout.
    assert_link_works(&a, &b_addr, &rb, 1);

    let good = good_frame(&a_addr);
    let mut garbage: Vec<u8> = (0..200u32).map(|i| (i * 37 + 11) as u8).collect();
    garbage[..4].copy_from_slice(b"GET ");
    let mut bad_body_crc = good.clone();
    let last = bad_body_crc.len() - 1;
    bad_body_crc[last] ^= 0x40;
    let mut bad_header_crc = good.clone();
    bad_header_crc[25] ^= 1;
    let not_a_batch = encode_frame(FrameType::Batch, DEPLOYMENT, b"definitely not a batch");
    let ack_unasked = encode_frame(FrameType::SnapshotAck, DEPLOYMENT, &[1]);
    // (name, bytes, whether to half-close after writing)
    let cases: Vec<(&str, Vec<u8>, bool)> = vec![
        ("garbage bytes", garbage, false),
        ("truncated header", good[..20].to_vec(), true),
        ("truncated body", good[..good.len() - 10].to_vec(), true),
        (
            "oversize length",
            rewrite_header(good.clone(), |h| {
                h[16..20].copy_from_slice(&u32::MAX.to_le_bytes())
            }),
            false,
        ),
        (
            "length just over the limit",
            rewrite_header(good.clone(), |h| {
                h[16..20].copy_from_slice(&((1u32 << 20) + 1).to_le_bytes())
            }),
            false,
        ),
        (
            "wrong magic",
            rewrite_header(good.clone(), |h| h[0..4].copy_from_slice(b"LSTQ")),
            false,
        ),
        (
            "wrong version",
            rewrite_header(good.clone(), |h| h[4] = 99),
            false,
        ),
        (
            "unknown frame type",
            rewrite_header(good.clone(), |h| h[5] = 77),
            false,
        ),
        ("bad header checksum", bad_header_crc, false),
        ("bad body checksum", bad_body_crc, false),
        (
            "wrong deployment id",
            rewrite_header(good.clone(), |h| {
                h[8..16].copy_from_slice(&(DEPLOYMENT + 1).to_le_bytes())
            }),
            false,
        ),
        ("body that is not a batch", not_a_batch, false),
        ("unsolicited snapshot ack", ack_unasked, false),
    ];
    for (name, bytes, half_close) in cases {
        let before = b.stats().frames_rejected.load(Ordering::Relaxed);
        let received = rb.message_count();
        let mut s = TcpStream::connect(&b_addr).unwrap();
        s.write_all(&bytes).unwrap();
        if half_close {
            s.shutdown(Shutdown::Write).unwrap();
        }
        assert_closed_by_peer(s, name);
        wait_counter(name, &b.stats().frames_rejected, before + 1);
        assert_eq!(
            b.stats().frames_rejected.load(Ordering::Relaxed),
            before + 1,
            "{name}"
        );
        assert_eq!(
            rb.message_count(),
            received,
            "{name}: something was delivered"
        );
        assert_link_works(&a, &b_addr, &rb, 1);
    }
    // A well-formed frame on a raw connection is served like any other.
    let received = rb.message_count();
    let mut s = TcpStream::connect(&b_addr).unwrap();
    s.write_all(&good).unwrap();
    assert!(rb.wait(WAIT, |st| st.messages.len() == received + 1));
    drop(s);
    a.close();
    b.close();
}

// ------------------------------------------------------------ reachability

#[test]
fn unreachable_peer_is_reported_and_delivery_resumes_once_it_listens() {
    let (a_addr, b_addr) = (free_addr(), free_addr());
    let (a, ra) = start(&a_addr);
    // Nobody listens at b_addr yet.
    let deadline = Instant::now() + WAIT;
    loop {
        let _ = a.send(&b_addr, batch(&a_addr, vec![message(9, 1, 0)]));
        if ra.wait(Duration::from_millis(50), |s| {
            s.unreachable
                .iter()
                .any(|u| *u == (b_addr.clone(), ShardId(9), ReplicaId(2)))
        }) {
            break;
        }
        assert!(Instant::now() < deadline, "no unreachable report");
    }
    assert!(a.stats().connect_failures.load(Ordering::Relaxed) >= 1);
    assert!(
        a.stats()
            .batches_dropped_unreachable
            .load(Ordering::Relaxed)
            >= 1
    );
    // Keep sending for a while: attempts back off instead of hammering.
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_millis(600) {
        let _ = a.send(&b_addr, batch(&a_addr, vec![message(9, 2, 0)]));
        std::thread::sleep(Duration::from_millis(2));
    }
    let failures = a.stats().connect_failures.load(Ordering::Relaxed);
    assert!(
        failures < 30,
        "{failures} connection attempts in 600 ms: no backoff"
    );
    // The peer comes up: delivery resumes (within the longest backoff).
    let (b, rb) = start(&b_addr);
    assert_link_works(&a, &b_addr, &rb, 9);
    a.close();
    b.close();
}

#[test]
fn a_restarted_peer_on_the_same_port_is_served_again() {
    let (a_addr, b_addr) = (free_addr(), free_addr());
    let (a, _ra) = start(&a_addr);
    let (b, rb) = start(&b_addr);
    assert_link_works(&a, &b_addr, &rb, 2);
    b.close();
    drop(b);
    // Sends while it is down are dropped (and reported), never block.
    for seq in 0..50 {
        let _ = a.send(&b_addr, batch(&a_addr, vec![message(2, seq, 0)]));
    }
    let (b2, rb2) = start(&b_addr);
    assert_link_works(&a, &b_addr, &rb2, 2);
    a.close();
    b2.close();
}

#[test]
fn a_full_send_queue_drops_instead_of_growing() {
    let (a_addr, b_addr) = (free_addr(), free_addr());
    let (a, _ra) = start_with(TcpConfig {
        send_queue_len: 4,
        connections_per_host: 1,
        ..config(&a_addr)
    });
    // A listener that accepts and never reads: the writer stalls on a full socket.
    let l = std::net::TcpListener::bind(&b_addr).unwrap();
    let big = || batch(&a_addr, vec![message(1, 1, 256 << 10)]);
    let deadline = Instant::now() + WAIT;
    loop {
        match a.send(&b_addr, big()) {
            Err(SendError::QueueFull(addr)) => {
                assert_eq!(addr, b_addr);
                break;
            }
            Ok(()) | Err(SendError::Unreachable(_)) => {}
            Err(e) => panic!("{e}"),
        }
        assert!(Instant::now() < deadline, "queue never filled");
    }
    assert!(a.stats().batches_dropped_queue_full.load(Ordering::Relaxed) >= 1);
    drop(l);
    a.close();
}

// ------------------------------------------------------------ TLS

struct Ca {
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
    pem_path: PathBuf,
}

fn make_ca(dir: &Path, name: &str) -> Ca {
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    p.distinguished_name
        .push(rcgen::DnType::CommonName, format!("{name} CA"));
    p.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = p.self_signed(&key).unwrap();
    let pem_path = dir.join(format!("{name}-ca.pem"));
    std::fs::write(&pem_path, cert.pem()).unwrap();
    Ca {
        cert,
        key,
        pem_path,
    }
}

/// A host certificate for 127.0.0.1/localhost signed by `ca`; trusts `trust`.
fn host_tls(dir: &Path, ca: &Ca, trust: &Path, name: &str) -> TlsPaths {
    let mut p =
        rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .unwrap();
    p.distinguished_name.push(rcgen::DnType::CommonName, name);
    p.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = p.signed_by(&key, &ca.cert, &ca.key).unwrap();
    let cert_file = dir.join(format!("{name}.pem"));
    let key_file = dir.join(format!("{name}.key"));
    std::fs::write(&cert_file, cert.pem()).unwrap();
    std::fs::write(&key_file, key.serialize_pem()).unwrap();
    TlsPaths {
        ca_file: trust.to_path_buf(),
        cert_file,
        key_file,
    }
}

fn tls_config(address: &str, tls: TlsPaths) -> TcpConfig {
    TcpConfig {
        tls: Some(tls),
        ..config(address)
    }
}

#[test]
fn mutual_tls_peers_talk_and_strangers_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ca = make_ca(dir.path(), "good");
    let rogue = make_ca(dir.path(), "rogue");
    let (a_addr, b_addr, c_addr, d_addr) = (free_addr(), free_addr(), free_addr(), free_addr());
    let (a, ra) = start_with(tls_config(
        &a_addr,
        host_tls(dir.path(), &ca, &ca.pem_path, "a"),
    ));
    let (b, rb) = start_with(tls_config(
        &b_addr,
        host_tls(dir.path(), &ca, &ca.pem_path, "b"),
    ));
    assert_link_works(&a, &b_addr, &rb, 1);
    assert_link_works(&b, &a_addr, &ra, 1);

    // C trusts the deployment's CA (so it accepts b) but its own certificate
    // comes from another CA: b refuses it.
    let (c, _rc) = start_with(tls_config(
        &c_addr,
        host_tls(dir.path(), &rogue, &ca.pem_path, "c"),
    ));
    let received = rb.message_count();
    let refused = b.stats().tls_rejected.load(Ordering::Relaxed);
    let _ = c.send(&b_addr, batch(&c_addr, vec![message(1, 1, 0)]));
    wait_counter(
        "tls_rejected (foreign CA)",
        &b.stats().tls_rejected,
        refused + 1,
    );

    // D speaks plain TCP to a TLS port: refused too.
    let (d, _rd) = start(&d_addr);
    let refused = b.stats().tls_rejected.load(Ordering::Relaxed);
    let _ = d.send(&b_addr, batch(&d_addr, vec![message(1, 1, 0)]));
    wait_counter(
        "tls_rejected (plain TCP)",
        &b.stats().tls_rejected,
        refused + 1,
    );

    // Raw garbage on the TLS port: refused, connection closed.
    let refused = b.stats().tls_rejected.load(Ordering::Relaxed);
    let mut s = TcpStream::connect(&b_addr).unwrap();
    s.write_all(&[0x16; 300]).unwrap();
    assert_closed_by_peer(s, "garbage on the TLS port");
    wait_counter(
        "tls_rejected (garbage)",
        &b.stats().tls_rejected,
        refused + 1,
    );

    // Nothing from the strangers arrived (their connections were refused
    // at the handshake, counted above: nothing of theirs can come later),
    // and a is still served.
    assert_eq!(rb.message_count(), received);
    assert_link_works(&a, &b_addr, &rb, 1);
    // Snapshot streams use TLS as well.
    let chunks = snapshot_chunks(3, 10_000);
    for c in chunks.clone() {
        a.send_snapshot_chunk(&b_addr, c).unwrap();
    }
    assert_eq!(rb.seen.lock().unwrap().chunks, chunks);
    for t in [a, b, c, d] {
        t.close();
    }
}

#[test]
fn tls_setup_errors_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let missing = TlsPaths {
        ca_file: dir.path().join("nope.pem"),
        cert_file: dir.path().join("nope.pem"),
        key_file: dir.path().join("nope.key"),
    };
    let err = TcpTransport::new(tls_config(&free_addr(), missing))
        .err()
        .expect("missing files accepted");
    assert!(err.to_string().contains("nope.pem"), "{err}");
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "").unwrap();
    let ca = make_ca(dir.path(), "good");
    let mut paths = host_tls(dir.path(), &ca, &ca.pem_path, "a");
    paths.ca_file = empty;
    assert!(TcpTransport::new(tls_config(&free_addr(), paths)).is_err());
}

// ------------------------------------------------------------ snapshots

/// A stream of `data_chunks` chunks of `bytes` bytes each and a final chunk.
fn snapshot_chunks(data_chunks: u64, bytes: usize) -> Vec<SnapshotChunk> {
    let base = SnapshotChunk {
        deployment_id: DEPLOYMENT,
        shard_id: ShardId(5),
        to: ReplicaId(2),
        from: ReplicaId(1),
        index: Index(100),
        term: Term(3),
        file_name: "snapshot.data".into(),
        ..SnapshotChunk::default()
    };
    let mut out: Vec<SnapshotChunk> = (0..data_chunks)
        .map(|i| SnapshotChunk {
            chunk_id: i,
            info: if i == 0 { b"info".to_vec() } else { Vec::new() },
            offset: i * bytes as u64,
            data: (0..bytes).map(|j| (i as usize * 7 + j) as u8).collect(),
            ..base.clone()
        })
        .collect();
    out.push(SnapshotChunk {
        chunk_id: data_chunks,
        last: true,
        message: b"install".to_vec(),
        ..base
    });
    out
}

#[test]
fn snapshot_stream_is_delivered_in_order_and_acknowledged() {
    let (a_addr, b_addr) = (free_addr(), free_addr());
    let (a, _ra) = start(&a_addr);
    let (b, rb) = start(&b_addr);
    // Chunks bigger than a socket buffer, so the writes really block.
    let chunks = snapshot_chunks(6, 700 << 10);
    for c in chunks.clone() {
        a.send_snapshot_chunk(&b_addr, c).unwrap();
    }
    // The last send returned only after the receiver acknowledged it.
    assert_eq!(rb.seen.lock().unwrap().chunks, chunks);
    // Streams do not disturb batches.
    assert_link_works(&a, &b_addr, &rb, 1);
    a.close();
    b.close();
}

#[test]
fn a_refused_snapshot_stream_fails_at_the_sender() {
    let (a_addr, b_addr) = (free_addr(), free_addr());
    let (a, _ra) = start(&a_addr);
    let (b, rb) = start(&b_addr);
    for refuse_at in [2u64, 0, 4] {
        rb.refuse_chunk.store(refuse_at, Ordering::Release);
        let mut failed = None;
        for c in snapshot_chunks(4, 64 << 10) {
            let id = c.chunk_id;
            if let Err(e) = a.send_snapshot_chunk(&b_addr, c) {
                failed = Some((id, e));
                break;
            }
        }
        let (id, e) = failed.expect("a refused stream reported success");
        assert!(id >= refuse_at, "failed at chunk {id} before the refusal");
        assert_eq!(e, SendError::Unreachable(b_addr.clone()));
    }
    // A later stream succeeds.
    rb.refuse_chunk.store(u64::MAX, Ordering::Release);
    rb.seen.lock().unwrap().chunks.clear();
    let chunks = snapshot_chunks(2, 1000);
    for c in chunks.clone() {
        a.send_snapshot_chunk(&b_addr, c).unwrap();
    }
    assert_eq!(rb.seen.lock().unwrap().chunks, chunks);
    a.close();
    b.close();
}

#[test]
fn snapshot_to_an_unreachable_peer_fails_at_once_and_streams_are_limited() {
    let (a_addr, b_addr) = (free_addr(), free_addr());
    let (a, _ra) = start_with(TcpConfig {
        max_snapshot_streams: 1,
        ..config(&a_addr)
    });
    let first = snapshot_chunks(1, 100);
    assert_eq!(
        a.send_snapshot_chunk(&b_addr, first[0].clone()),
        Err(SendError::Unreachable(b_addr.clone()))
    );
    let (b, rb) = start(&b_addr);
    a.send_snapshot_chunk(&b_addr, first[0].clone()).unwrap();
    // A second stream (another snapshot index) waits for a free slot.
    let mut other = snapshot_chunks(1, 100);
    for c in &mut other {
        c.index = Index(200);
    }
    assert_eq!(
        a.send_snapshot_chunk(&b_addr, other[0].clone()),
        Err(SendError::QueueFull(b_addr.clone()))
    );
    a.send_snapshot_chunk(&b_addr, first[1].clone()).unwrap();
    for c in other.clone() {
        a.send_snapshot_chunk(&b_addr, c).unwrap();
    }
    assert_eq!(rb.seen.lock().unwrap().chunks.len(), 4);
    a.close();
    b.close();
}

#[test]
fn a_cancelled_half_sent_stream_frees_its_slot() {
    let (a_addr, b_addr) = (free_addr(), free_addr());
    let (a, _ra) = start_with(TcpConfig {
        max_snapshot_streams: 1,
        ..config(&a_addr)
    });
    let (b, rb) = start(&b_addr);
    let first = snapshot_chunks(3, 100);
    a.send_snapshot_chunk(&b_addr, first[0].clone()).unwrap();
    let mut other = snapshot_chunks(1, 100);
    for c in &mut other {
        c.index = Index(200);
    }
    // The sender gives up on the first stream partway (e.g. a disk error).
    assert_eq!(
        a.send_snapshot_chunk(&b_addr, other[0].clone()),
        Err(SendError::QueueFull(b_addr.clone()))
    );
    let c = &first[0];
    a.cancel_snapshot_stream(&b_addr, c.shard_id, c.from, c.to, c.index);
    for c in other.clone() {
        a.send_snapshot_chunk(&b_addr, c).unwrap();
    }
    // The two streams use two connections, read concurrently: compare the
    // second stream's chunks only.
    let got: Vec<SnapshotChunk> = rb
        .seen
        .lock()
        .unwrap()
        .chunks
        .iter()
        .filter(|c| c.index == Index(200))
        .cloned()
        .collect();
    assert_eq!(got, other);
    a.close();
    b.close();
}

#[test]
fn inbound_connections_over_the_per_address_limit_are_closed_at_once() {
    let (a_addr, b_addr) = (free_addr(), free_addr());
    let (b, rb) = start_with(TcpConfig {
        max_inbound_connections_per_ip: 3,
        ..config(&b_addr)
    });
    let held: Vec<TcpStream> = (0..3)
        .map(|_| TcpStream::connect(&b_addr).unwrap())
        .collect();
    // Admitted connections are served: a frame on each arrives.
    for (i, mut s) in held.iter().enumerate() {
        s.write_all(&good_frame(&a_addr)).unwrap();
        assert!(
            rb.wait(WAIT, |seen| seen.batches > i),
            "frame on admitted connection {i} not delivered"
        );
    }
    let fourth = TcpStream::connect(&b_addr).unwrap();
    assert_closed_by_peer(fourth, "fourth connection from one address");
    wait_counter("connections_refused", &b.stats().connections_refused, 1);
    // A place freed is a place for a new connection.
    drop(held);
    let deadline = Instant::now() + WAIT;
    loop {
        let mut s = TcpStream::connect(&b_addr).unwrap();
        let before = rb.seen.lock().unwrap().batches;
        s.write_all(&good_frame(&a_addr)).unwrap();
        if rb.wait(Duration::from_millis(300), |seen| seen.batches > before) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no connection admitted after the others closed"
        );
    }
    b.close();
}

#[test]
fn a_frame_that_trickles_is_dropped_but_an_idle_connection_is_kept() {
    let (a_addr, b_addr) = (free_addr(), free_addr());
    let (b, rb) = start_with(TcpConfig {
        frame_read_timeout: Duration::from_millis(300),
        ..config(&b_addr)
    });
    // A header announcing a 1 MiB frame, then a few bytes, then nothing.
    let big = encode_batch(&batch(&a_addr, vec![message(3, 1, 1 << 20)]));
    let frame = encode_frame(FrameType::Batch, DEPLOYMENT, &big);
    let mut slow = TcpStream::connect(&b_addr).unwrap();
    slow.write_all(&frame[..FRAME_HEADER_BYTES + 10]).unwrap();
    // Idle between frames for longer than the frame timeout: not a slow frame.
    let mut idle = TcpStream::connect(&b_addr).unwrap();
    assert_closed_by_peer(slow, "a frame stalled past frame_read_timeout");
    wait_counter("slow_frames", &b.stats().slow_frames, 1);
    // The subject of this check is wall-clock time: idle past the timeout.
    std::thread::sleep(Duration::from_millis(400));
    idle.write_all(&good_frame(&a_addr)).unwrap();
    assert!(
        rb.wait(WAIT, |seen| seen.batches >= 1),
        "a frame after an idle spell was not delivered"
    );
    assert_eq!(b.stats().slow_frames.load(Ordering::Relaxed), 1);
    b.close();
}

#[test]
fn a_tls_handshake_that_never_comes_is_dropped_after_its_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let ca = make_ca(dir.path(), "good");
    let b_addr = free_addr();
    let (b, _rb) = start_with(TcpConfig {
        handshake_timeout: Duration::from_millis(300),
        ..tls_config(&b_addr, host_tls(dir.path(), &ca, &ca.pem_path, "b"))
    });
    let silent = TcpStream::connect(&b_addr).unwrap();
    assert_closed_by_peer(silent, "a connection that never starts its TLS handshake");
    wait_counter("tls_rejected", &b.stats().tls_rejected, 1);
    b.close();
}

/// A receiver that stops reading fills the socket: a send then writes part
/// of its frame directly and queues the rest for the writer task, and later
/// sends queue behind it. When the receiver reads again, every frame
/// arrives whole and in order (the direct path never overtakes the queue).
#[test]
fn frames_stay_whole_and_in_order_across_a_receiver_that_stalls() {
    let (a_addr, b_addr) = (free_addr(), free_addr());
    let (a, _ra) = start_with(TcpConfig {
        send_queue_len: 10_000,
        connections_per_host: 1,
        ..config(&a_addr)
    });
    let l = std::net::TcpListener::bind(&b_addr).unwrap();
    const N: u64 = 200;
    // 64 KiB each: ~12 MiB, far more than the socket buffers hold.
    for seq in 0..N {
        let b = batch(&a_addr, vec![message(1, seq, 64 << 10)]);
        // The first send may find no connection yet (queued; connects).
        a.send(&b_addr, b).unwrap();
    }
    let (mut s, _) = l.accept().unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    let limits = longship_raft::codec::Limits::default();
    for want in 0..N {
        let mut h = [0u8; FRAME_HEADER_BYTES];
        s.read_exact(&mut h).unwrap();
        let hdr = longship_transport::frame::decode_header(&h, DEPLOYMENT, 64 << 20)
            .expect("a whole frame header");
        let mut body = vec![0u8; hdr.body_len as usize];
        s.read_exact(&mut body).unwrap();
        longship_transport::frame::check_body(&hdr, &body).expect("an intact frame body");
        let got = longship_raft::codec::decode_batch(&body, &limits).unwrap();
        assert_eq!(got.messages.len(), 1);
        assert_eq!(got.messages[0].log_index.0, want, "frame out of order");
    }
    a.close();
}
