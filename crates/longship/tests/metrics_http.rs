//! Latency histograms in the Prometheus text, served over HTTP on loopback
//! by `NodeHostConfig::metrics_address`.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;

use common::*;
use longship::{LatencyKind, NodeHost, NodeHostConfig, ShardId, SnapshotOption, Start};
use longship_transport::MemNetwork;

fn get(addr: SocketAddr, path: &str) -> (String, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap();
    (head.lines().next().unwrap().to_string(), body.to_string())
}

/// The samples of histogram `name`: (le, cumulative count) and the count.
fn histogram(text: &str, name: &str) -> (Vec<(String, u64)>, u64) {
    assert!(
        text.contains(&format!("# TYPE {name} histogram")),
        "{name} missing"
    );
    let mut buckets = Vec::new();
    let mut count = None;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix(&format!("{name}_bucket{{le=\"")) {
            let (le, n) = rest.split_once("\"} ").unwrap();
            buckets.push((le.to_string(), n.parse().unwrap()));
        } else if let Some(n) = line.strip_prefix(&format!("{name}_count ")) {
            count = Some(n.parse().unwrap());
        }
    }
    (buckets, count.expect("a _count sample"))
}

#[test]
fn a_loopback_get_returns_latency_histograms() {
    let dir = tempfile::tempdir().unwrap();
    let net = MemNetwork::new();
    let cfg = NodeHostConfig {
        node_host_dir: dir.path().join("nh1"),
        rtt_ms: RTT_MS,
        raft_address: addr(1),
        metrics_address: "127.0.0.1:0".into(),
        ..NodeHostConfig::default()
    };
    let nh = NodeHost::builder(cfg)
        .transport(Arc::new(net.transport(&addr(1))))
        .build()
        .unwrap();
    let at = nh.metrics_address().expect("the endpoint runs");
    assert!(at.ip().is_loopback() && at.port() != 0);
    nh.start_replica(
        Start::New(TestCluster::members(&[1])),
        |_, _| Box::new(Kv::default()),
        config(1, 1),
    )
    .unwrap();
    let mut s = nh.get_noop_session(ShardId(1));
    for i in 0..20 {
        retry(|| nh.sync_propose(&mut s, format!("set k{i} v").into_bytes(), TIMEOUT));
    }
    retry(|| nh.sync_read(ShardId(1), b"get k1", TIMEOUT));
    retry(|| {
        nh.request_snapshot(ShardId(1), SnapshotOption::default(), TIMEOUT)?
            .wait()
    });

    let (status, body) = get(at, "/metrics");
    assert_eq!(status, "HTTP/1.1 200 OK");
    for (name, at_least) in [
        ("longship_proposal_latency_seconds", 20),
        ("longship_read_latency_seconds", 1),
        ("longship_fsync_latency_seconds", 1),
        ("longship_apply_latency_seconds", 1),
        ("longship_snapshot_latency_seconds", 1),
    ] {
        let (buckets, count) = histogram(&body, name);
        assert!(count >= at_least, "{name}: {count}");
        assert_eq!(buckets.last().unwrap(), &("+Inf".to_string(), count));
        assert!(
            buckets.windows(2).all(|w| w[0].1 <= w[1].1),
            "{name}: buckets are cumulative: {buckets:?}"
        );
    }
    // Counters and gauges are served beside them.
    assert!(body.contains("# TYPE longship_proposals counter"));
    assert!(body.contains("# TYPE longship_replicas gauge"));
    let (n, p99) = nh.metrics().latency_quantile(LatencyKind::Proposal, 0.99);
    assert!(n >= 20 && p99.as_nanos() > 0, "{n} {p99:?}");

    let (status, _) = get(at, "/other");
    assert_eq!(status, "HTTP/1.1 404 Not Found");
    // Closing the NodeHost closes the endpoint.
    nh.close();
    assert!(TcpStream::connect(at).is_err());
}

#[test]
fn an_endpoint_address_in_use_is_refused_with_a_clear_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let net = MemNetwork::new();
    let cfg = NodeHostConfig {
        node_host_dir: dir.path().join("nh1"),
        rtt_ms: RTT_MS,
        raft_address: addr(1),
        metrics_address: taken.local_addr().unwrap().to_string(),
        ..NodeHostConfig::default()
    };
    let err = NodeHost::builder(cfg)
        .transport(Arc::new(net.transport(&addr(1))))
        .build()
        .err()
        .expect("refused");
    assert!(
        matches!(
            err,
            longship::Error::InvalidConfig {
                field: "metrics_address",
                ..
            }
        ),
        "{err}"
    );
}
