//! NodeHosts in one process talking over real loopback TCP: many shards on
//! two and three hosts, a host closed and restarted on the same port,
//! malformed traffic and strangers on the raft port while replication goes
//! on, mutual TLS, and a snapshot larger than the frame limit streamed to a
//! lagging follower.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{Kv, TIMEOUT, retry, wait_until};
use longship::{
    Config, Index, NodeHost, NodeHostConfig, ReplicaId, ShardId, SnapshotOption, Start,
};
use longship_raft::codec::encode_batch;
use longship_raft::{MESSAGE_BATCH_VERSION, Message, MessageBatch, MessageType};
use longship_transport::frame::{FrameType, encode_frame};
use longship_transport::{TcpConfig, TcpTransport, TlsPaths, Transport};

const RTT_MS: u64 = 10;
const WAIT: Duration = Duration::from_secs(30);

use longship_testkit::free_addr;

/// NodeHosts on loopback TCP with data in a temp dir.
struct TcpCluster {
    dir: tempfile::TempDir,
    addrs: BTreeMap<u64, String>,
    hosts: BTreeMap<u64, NodeHost>,
    /// Applied to every host's config.
    tweak: fn(&mut NodeHostConfig),
}

impl TcpCluster {
    fn new(n: u64) -> TcpCluster {
        TcpCluster::with(n, |_| {})
    }

    fn with(n: u64, tweak: fn(&mut NodeHostConfig)) -> TcpCluster {
        let mut c = TcpCluster {
            dir: tempfile::tempdir().unwrap(),
            addrs: (1..=n).map(|i| (i, free_addr())).collect(),
            hosts: BTreeMap::new(),
            tweak,
        };
        for i in 1..=n {
            // A free port can be taken by a concurrent test between probing
            // and binding: a new host (not known to any peer yet) takes another.
            for attempt in 0.. {
                match NodeHost::new(c.host_config(i)) {
                    Ok(nh) => {
                        c.hosts.insert(i, nh);
                        break;
                    }
                    Err(longship::Error::TransportSetup(e))
                        if attempt < 5 && e.contains("in use") =>
                    {
                        c.addrs.insert(i, free_addr());
                    }
                    Err(e) => panic!("host {i}: {e}"),
                }
            }
        }
        c
    }

    fn host_config(&self, i: u64) -> NodeHostConfig {
        let mut cfg = NodeHostConfig {
            node_host_dir: self.dir.path().join(format!("nh{i}")),
            rtt_ms: RTT_MS,
            raft_address: self.addrs[&i].clone(),
            seed: Some(i),
            ..NodeHostConfig::default()
        };
        (self.tweak)(&mut cfg);
        cfg
    }

    /// Starts host `i` with the default (TCP) transport.
    fn start_host(&mut self, i: u64) {
        let nh = NodeHost::new(self.host_config(i)).unwrap();
        self.hosts.insert(i, nh);
    }

    /// Starts host `i` on a transport the test keeps (to read its counters).
    fn start_host_on(&mut self, i: u64, t: TcpTransport) {
        let nh = NodeHost::builder(self.host_config(i))
            .transport(Arc::new(t))
            .build()
            .unwrap();
        self.hosts.insert(i, nh);
    }

    fn stop_host(&mut self, i: u64) {
        if let Some(nh) = self.hosts.remove(&i) {
            nh.close();
        }
    }

    fn nh(&self, i: u64) -> &NodeHost {
        &self.hosts[&i]
    }

    fn members(&self, ids: &[u64]) -> BTreeMap<ReplicaId, String> {
        ids.iter()
            .map(|&i| (ReplicaId(i), self.addrs[&i].clone()))
            .collect()
    }

    /// Starts replica `i` on host `i` for each `i` of `on`, members `ids`, config `cfg(i)`.
    fn start_shard(&self, ids: &[u64], on: &[u64], cfg: impl Fn(u64) -> Config) {
        for &i in on {
            self.nh(i)
                .start_replica(
                    Start::New(self.members(ids)),
                    |_, _| Box::new(Kv::default()),
                    cfg(i),
                )
                .unwrap();
        }
    }

    /// Proposes `cmd(shard)` to every shard at once from host `i`; retries
    /// what fails temporarily until each is applied.
    fn propose_all(&self, i: u64, shards: &[u64], cmd: impl Fn(u64) -> String) {
        let nh = self.nh(i);
        let deadline = Instant::now() + WAIT;
        let mut todo: Vec<u64> = shards.to_vec();
        while !todo.is_empty() {
            assert!(
                Instant::now() < deadline,
                "proposals to {todo:?} not applied"
            );
            let handles: Vec<(u64, _)> = todo
                .iter()
                .map(|&s| {
                    let session = nh.get_noop_session(ShardId(s));
                    (s, nh.propose(&session, cmd(s).into_bytes(), TIMEOUT))
                })
                .collect();
            let mut again = Vec::new();
            for (s, h) in handles {
                match h.and_then(|h| h.wait()) {
                    Ok(_) => {}
                    Err(e) if e.is_temporary() => again.push(s),
                    Err(e) => panic!("shard {s}: {e}"),
                }
            }
            if !again.is_empty() {
                std::thread::sleep(Duration::from_millis(20));
            }
            todo = again;
        }
    }

    /// Linearizable read of `query` on host `i`.
    fn read(&self, i: u64, shard: u64, query: &str) -> String {
        let v = retry(|| {
            self.nh(i)
                .sync_read(ShardId(shard), query.as_bytes(), TIMEOUT)
        });
        String::from_utf8(v).unwrap()
    }

    /// Waits until every host in `on` has applied `count` proposals to every shard.
    fn wait_counts(&self, on: &[u64], shards: &[u64], count: u64) {
        for &i in on {
            for &s in shards {
                wait_until(
                    &format!("host {i} shard {s} reaching {count}"),
                    WAIT,
                    || self.read(i, s, "count") == count.to_string(),
                );
            }
        }
    }
}

fn config(shard: u64, replica: u64) -> Config {
    Config {
        election_rtt: 10,
        heartbeat_rtt: 1,
        ..Config::new(ShardId(shard), ReplicaId(replica))
    }
}

fn shards(n: u64) -> Vec<u64> {
    (1..=n).collect()
}

#[test]
fn three_hosts_replicate_sixteen_shards() {
    let c = TcpCluster::new(3);
    let all = shards(16);
    for &s in &all {
        c.start_shard(&[1, 2, 3], &[1, 2, 3], |i| config(s, i));
    }
    for round in 0..10 {
        // Each round from another host: followers forward to their leaders.
        let from = round % 3 + 1;
        c.propose_all(from, &all, |s| format!("set k{round} s{s}r{round}"));
    }
    c.wait_counts(&[1, 2, 3], &all, 10);
    for i in 1..=3 {
        for &s in &all {
            assert_eq!(c.read(i, s, "get k9"), format!("s{s}r9"));
        }
    }
    let sent: u64 = (1..=3)
        .map(|i| c.nh(i).metrics().messages_sent.load(Ordering::Relaxed))
        .sum();
    assert!(sent > 0);
}

#[test]
fn two_hosts_replicate_sixteen_shards() {
    let c = TcpCluster::new(2);
    let all = shards(16);
    for &s in &all {
        c.start_shard(&[1, 2], &[1, 2], |i| config(s, i));
    }
    for round in 0..8 {
        c.propose_all(round % 2 + 1, &all, |s| format!("set k{round} {s}"));
    }
    c.wait_counts(&[1, 2], &all, 8);
}

#[test]
fn a_host_closed_and_restarted_on_the_same_port_catches_up() {
    let mut c = TcpCluster::new(3);
    let all = shards(4);
    for &s in &all {
        c.start_shard(&[1, 2, 3], &[1, 2, 3], |i| config(s, i));
    }
    for round in 0..5 {
        c.propose_all(1, &all, |s| format!("set a{round} {s}"));
    }
    c.wait_counts(&[3], &all, 5);
    c.stop_host(3);
    // Two of three keep the shards available.
    for round in 0..10 {
        c.propose_all(round % 2 + 1, &all, |s| format!("set b{round} {s}"));
    }
    c.start_host(3);
    for &s in &all {
        assert!(c.nh(3).has_node_info(ShardId(s), ReplicaId(3)));
        c.nh(3)
            .start_replica(Start::Restart, |_, _| Box::new(Kv::default()), config(s, 3))
            .unwrap();
    }
    c.wait_counts(&[3], &all, 15);
    // And it takes part again: proposals from it are applied everywhere.
    c.propose_all(3, &all, |s| format!("set c {s}"));
    c.wait_counts(&[1, 2, 3], &all, 16);
}

// ------------------------------------------------------------ bad traffic

/// Sends one malformed thing after another to `addr` until `stop`.
fn spam_raw(addr: String, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let good = encode_frame(
            FrameType::Batch,
            1,
            &encode_batch(&MessageBatch {
                deployment_id: 1,
                source_address: "127.0.0.1:1".into(),
                bin_ver: MESSAGE_BATCH_VERSION,
                messages: vec![Message::new(
                    MessageType::Heartbeat,
                    ShardId(1),
                    ReplicaId(9),
                    ReplicaId(1),
                )],
            }),
        );
        let wrong_deployment = encode_frame(FrameType::Batch, 2, &good[32..]);
        let mut oversize = good.clone();
        oversize[16..20].copy_from_slice(&u32::MAX.to_le_bytes());
        let crc = crc32c::crc32c(&oversize[..24]);
        oversize[24..28].copy_from_slice(&crc.to_le_bytes());
        let payloads: Vec<Vec<u8>> = vec![
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n0123456789012345678901234567890123456789".to_vec(),
            good[..good.len() / 2].to_vec(),
            oversize,
            wrong_deployment,
        ];
        let mut sent = 0;
        while !stop.load(Ordering::Acquire) {
            for p in &payloads {
                if let Ok(mut s) = std::net::TcpStream::connect(&addr) {
                    let _ = s.write_all(p);
                    sent += 1;
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        sent
    })
}

#[test]
fn malformed_traffic_on_the_raft_port_is_rejected_while_replication_goes_on() {
    let mut c = TcpCluster {
        dir: tempfile::tempdir().unwrap(),
        addrs: (1..=3).map(|i| (i, free_addr())).collect(),
        hosts: BTreeMap::new(),
        tweak: |_| {},
    };
    let t1 = TcpTransport::new(TcpConfig {
        address: c.addrs[&1].clone(),
        ..TcpConfig::default()
    })
    .unwrap();
    c.start_host_on(1, t1.clone());
    c.start_host(2);
    c.start_host(3);
    let all = shards(4);
    for &s in &all {
        c.start_shard(&[1, 2, 3], &[1, 2, 3], |i| config(s, i));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let spammer = spam_raw(c.addrs[&1].clone(), stop.clone());
    for round in 0..20 {
        c.propose_all(round % 3 + 1, &all, |s| format!("set k{round} {s}"));
    }
    c.wait_counts(&[1, 2, 3], &all, 20);
    stop.store(true, Ordering::Release);
    let sent = spammer.join().unwrap();
    assert!(sent >= 4, "the spammer sent {sent} payloads");
    // Every payload that reached the reader was refused (some may still be in flight).
    wait_until("rejections counted", WAIT, || {
        t1.stats().frames_rejected.load(Ordering::Relaxed) >= 4
    });
    assert!(t1.stats().frames_received.load(Ordering::Relaxed) > 0);
}

// ------------------------------------------------------------ TLS

struct Ca {
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
    pem: PathBuf,
}

fn make_ca(dir: &Path, name: &str) -> Ca {
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    p.distinguished_name
        .push(rcgen::DnType::CommonName, format!("{name} CA"));
    p.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = p.self_signed(&key).unwrap();
    let pem = dir.join(format!("{name}-ca.pem"));
    std::fs::write(&pem, cert.pem()).unwrap();
    Ca { cert, key, pem }
}

fn host_tls(dir: &Path, ca: &Ca, trust: &Path, name: &str) -> TlsPaths {
    let mut p =
        rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .unwrap();
    p.distinguished_name.push(rcgen::DnType::CommonName, name);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = p.signed_by(&key, &ca.cert, &ca.key).unwrap();
    let paths = TlsPaths {
        ca_file: trust.to_path_buf(),
        cert_file: dir.join(format!("{name}.pem")),
        key_file: dir.join(format!("{name}.key")),
    };
    std::fs::write(&paths.cert_file, cert.pem()).unwrap();
    std::fs::write(&paths.key_file, key.serialize_pem()).unwrap();
    paths
}

#[test]
fn mutual_tls_hosts_replicate_and_a_foreign_certificate_is_refused() {
    let certs = tempfile::tempdir().unwrap();
    let ca = make_ca(certs.path(), "deployment");
    let rogue_ca = make_ca(certs.path(), "rogue");
    let mut c = TcpCluster {
        dir: tempfile::tempdir().unwrap(),
        addrs: (1..=3).map(|i| (i, free_addr())).collect(),
        hosts: BTreeMap::new(),
        tweak: |_| {},
    };
    let tls: BTreeMap<u64, TlsPaths> = (1..=3)
        .map(|i| (i, host_tls(certs.path(), &ca, &ca.pem, &format!("h{i}"))))
        .collect();
    // Host 1 on a transport the test keeps; 2 and 3 through NodeHostConfig.
    let t1 = TcpTransport::new(TcpConfig {
        address: c.addrs[&1].clone(),
        tls: Some(tls[&1].clone()),
        ..TcpConfig::default()
    })
    .unwrap();
    c.start_host_on(1, t1.clone());
    for i in 2..=3 {
        let cfg = NodeHostConfig {
            mutual_tls: Some(tls[&i].clone()),
            ..c.host_config(i)
        };
        c.hosts.insert(i, NodeHost::new(cfg).unwrap());
    }
    let all = shards(4);
    for &s in &all {
        c.start_shard(&[1, 2, 3], &[1, 2, 3], |i| config(s, i));
    }
    // A stranger whose certificate another CA signed, and a plain-TCP one,
    // keep knocking while the shards replicate.
    let rogue = TcpTransport::new(TcpConfig {
        address: free_addr(),
        tls: Some(host_tls(certs.path(), &rogue_ca, &ca.pem, "rogue")),
        ..TcpConfig::default()
    })
    .unwrap();
    let plain = TcpTransport::new(TcpConfig {
        address: free_addr(),
        ..TcpConfig::default()
    })
    .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let knocker = {
        let (stop, rogue, plain, to) = (
            stop.clone(),
            rogue.clone(),
            plain.clone(),
            c.addrs[&1].clone(),
        );
        std::thread::spawn(move || {
            while !stop.load(Ordering::Acquire) {
                for t in [&rogue, &plain] {
                    let m = Message::new(
                        MessageType::Heartbeat,
                        ShardId(1),
                        ReplicaId(9),
                        ReplicaId(1),
                    );
                    let _ = t.send(
                        &to,
                        MessageBatch {
                            deployment_id: 1,
                            source_address: t.local_address().to_string(),
                            bin_ver: MESSAGE_BATCH_VERSION,
                            messages: vec![m],
                        },
                    );
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    for round in 0..10 {
        c.propose_all(round % 3 + 1, &all, |s| format!("set k{round} {s}"));
    }
    c.wait_counts(&[1, 2, 3], &all, 10);
    wait_until("strangers refused", WAIT, || {
        t1.stats().tls_rejected.load(Ordering::Relaxed) >= 2
    });
    stop.store(true, Ordering::Release);
    knocker.join().unwrap();
    rogue.close();
    plain.close();
}

// ------------------------------------------------------------ snapshots

#[test]
fn a_snapshot_larger_than_the_frame_limit_is_streamed_to_a_lagging_follower() {
    let c = TcpCluster::with(3, |cfg| {
        cfg.max_frame_bytes = 1 << 20;
        cfg.max_proposal_bytes = 256 << 10;
    });
    const SHARD: u64 = 1;
    c.start_shard(&[1, 2, 3], &[1, 2, 3], |i| config(SHARD, i));
    c.propose_all(1, &[SHARD], |_| "set first x".into());
    c.wait_counts(&[3], &[SHARD], 1);
    c.nh(3).stop_shard(ShardId(SHARD)).unwrap();
    // About 6 MiB of state while replica 3 is down.
    let value = |k: u64| format!("{k:03}-").repeat((128 << 10) / 4);
    for k in 0..48u64 {
        c.propose_all(k % 2 + 1, &[SHARD], |_| format!("set k{k} {}", value(k)));
    }
    for i in 1..=2 {
        let opt = SnapshotOption {
            compaction_overhead: Some(0),
            ..SnapshotOption::default()
        };
        retry(|| {
            c.nh(i)
                .request_snapshot(ShardId(SHARD), opt.clone(), TIMEOUT)?
                .wait()
        });
        let info = c.nh(i).get_node_host_info();
        let first = info.log_info[0].first_index;
        assert!(
            first.0 > 2,
            "host {i}: log not compacted (first index {first})"
        );
    }
    c.nh(3)
        .start_replica(
            Start::Restart,
            |_, _| Box::new(Kv::default()),
            config(SHARD, 3),
        )
        .unwrap();
    c.wait_counts(&[3], &[SHARD], 49);
    assert!(c.nh(3).metrics().snapshots_received.load(Ordering::Relaxed) >= 1);
    assert_eq!(c.read(3, SHARD, "get k47"), value(47));
    assert_eq!(c.read(3, SHARD, "get first"), "x");
    // It serves the data it received, and keeps up from the log afterwards.
    c.propose_all(3, &[SHARD], |_| "set last y".into());
    c.wait_counts(&[1, 2, 3], &[SHARD], 50);
}

#[test]
fn proposals_never_outgrow_the_frame_limit() {
    // max_proposal_bytes stays at its default (8 MiB), far over the frame.
    let c = TcpCluster::with(3, |cfg| cfg.max_frame_bytes = 1 << 20);
    const SHARD: u64 = 1;
    c.start_shard(&[1, 2, 3], &[1, 2, 3], |i| config(SHARD, i));
    c.propose_all(1, &[SHARD], |_| "set first x".into());
    // A payload that could not travel in one frame is refused up front
    // rather than wedging replication.
    let mut s = c.nh(1).get_noop_session(ShardId(SHARD));
    let huge = vec![b'x'; 700 << 10];
    match c.nh(1).sync_propose(&mut s, huge, TIMEOUT) {
        Err(longship::Error::PayloadTooBig { max, .. }) => assert!(max < 1 << 20),
        other => panic!("a payload over the frame limit was not refused: {other:?}"),
    }
    // Payloads near the limit replicate, several per append at most as the frame allows.
    for k in 0..6u64 {
        let v = format!("{k}").repeat(400 << 10);
        c.propose_all(k % 3 + 1, &[SHARD], |_| format!("set k{k} {v}"));
    }
    c.wait_counts(&[1, 2, 3], &[SHARD], 7);
}

#[test]
fn re_adding_a_removed_replica_is_refused_on_every_host() {
    let c = TcpCluster::new(3);
    const SHARD: u64 = 1;
    c.start_shard(&[1, 2, 3], &[1, 2, 3], |i| config(SHARD, i));
    c.propose_all(1, &[SHARD], |_| "set a 1".into());
    retry(|| {
        c.nh(1)
            .request_delete_replica(ShardId(SHARD), ReplicaId(3), Index(0), TIMEOUT)?
            .wait()
    });
    for i in 1..=2 {
        // Followers answer too, at once, instead of forwarding a change the
        // leader would drop without an answer.
        wait_until("the removal applied", WAIT, || {
            c.nh(i)
                .sync_get_shard_membership(ShardId(SHARD), TIMEOUT)
                .is_ok_and(|m| m.removed.contains(&ReplicaId(3)))
        });
        let t0 = Instant::now();
        let res = c
            .nh(i)
            .request_add_replica(
                ShardId(SHARD),
                ReplicaId(3),
                c.addrs[&3].clone(),
                Index(0),
                TIMEOUT,
            )
            .and_then(|h| h.wait());
        assert!(
            matches!(res, Err(longship::Error::ReplicaRemoved(ReplicaId(3)))),
            "host {i}: {res:?}"
        );
        assert!(
            t0.elapsed() < TIMEOUT / 2,
            "host {i} answered only after {:?}",
            t0.elapsed()
        );
    }
}

/// A quiesced follower counts no election ticks: when the leader's host
/// dies while the shard is quiet, the followers must still notice (the
/// leader's connection ends) and elect a new leader, without waiting for a
/// request to wake them.
#[test]
fn quiesced_followers_elect_a_new_leader_when_the_leader_s_host_dies() {
    let mut c = TcpCluster::new(3);
    c.start_shard(&[1, 2, 3], &[1, 2, 3], |i| Config {
        election_rtt: 10,
        heartbeat_rtt: 1,
        quiesce: true,
        ..Config::new(ShardId(1), ReplicaId(i))
    });
    let leader = wait_for_leader(&c, &[1, 2, 3]);
    retry(|| {
        let mut s = c.nh(leader).get_noop_session(ShardId(1));
        c.nh(leader)
            .sync_propose(&mut s, b"set a 1".to_vec(), TIMEOUT)
    });
    // Every replica goes quiet (ten election timeouts without traffic).
    wait_until("the shard quiesced everywhere", WAIT, || {
        (1..=3).all(|h| {
            c.nh(h)
                .get_node_host_info()
                .shards
                .iter()
                .all(|s| s.quiesced)
        })
    });
    c.stop_host(leader);
    let others: Vec<u64> = (1..=3).filter(|&h| h != leader).collect();
    // No request is sent: the followers must wake by themselves.
    wait_until("a new leader among the survivors", WAIT, || {
        others.iter().any(|&h| {
            c.nh(h)
                .get_leader(ShardId(1))
                .ok()
                .flatten()
                .is_some_and(|l| l.replica_id != ReplicaId(leader))
        })
    });
}

fn wait_for_leader(c: &TcpCluster, on: &[u64]) -> u64 {
    let mut found = 0;
    wait_until("a leader", WAIT, || {
        for &h in on {
            if let Ok(Some(l)) = c.nh(h).get_leader(ShardId(1))
                && l.replica_id == ReplicaId(h)
            {
                found = h;
                return true;
            }
        }
        false
    });
    found
}

/// `listen_address` apart from `raft_address`: each host listens on
/// 127.0.0.1:port while it is known to its peers (and dialled) as
/// localhost:port.
#[test]
fn hosts_listen_on_one_address_and_are_known_by_another() {
    let dir = tempfile::tempdir().unwrap();
    let ports: Vec<u16> = (0..3).map(|_| longship_testkit::free_port()).collect();
    let known = |i: usize| format!("localhost:{}", ports[i]);
    let hosts: Vec<NodeHost> = (0..3)
        .map(|i| {
            NodeHost::new(NodeHostConfig {
                node_host_dir: dir.path().join(format!("nh{i}")),
                rtt_ms: RTT_MS,
                raft_address: known(i),
                listen_address: format!("127.0.0.1:{}", ports[i]),
                ..NodeHostConfig::default()
            })
            .unwrap()
        })
        .collect();
    let members: BTreeMap<ReplicaId, String> = (0..3)
        .map(|i| (ReplicaId(i as u64 + 1), known(i)))
        .collect();
    for (i, nh) in hosts.iter().enumerate() {
        nh.start_replica(
            Start::New(members.clone()),
            |_, _| Box::new(Kv::default()),
            Config::new(ShardId(1), ReplicaId(i as u64 + 1)),
        )
        .unwrap();
    }
    let value = retry(|| {
        let mut s = hosts[0].get_noop_session(ShardId(1));
        hosts[0].sync_propose(&mut s, b"set k v".to_vec(), TIMEOUT)?;
        hosts[2].sync_read(ShardId(1), b"get k", TIMEOUT)
    });
    assert_eq!(value, b"v");
    assert_eq!(hosts[1].get_node_host_info().raft_address, known(1));
    for h in hosts {
        h.close();
    }
}
