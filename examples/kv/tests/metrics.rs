//! `longship-kv --metrics-address`: the node serves its NodeHost's
//! Prometheus text, latency histograms included, over HTTP.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use longship_testkit::free_port;

/// Kills the node when the test ends, passing or not.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn get_metrics(addr: &str) -> Option<String> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET /metrics HTTP/1.1\r\nHost: kv\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.starts_with("HTTP/1.1 200").then_some(out)
}

/// Sends one RESP command and reads the first line of the answer.
fn redis(addr: &str, args: &[&str]) -> Option<String> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut req = format!("*{}\r\n", args.len());
    for a in args {
        req += &format!("${}\r\n{a}\r\n", a.len());
    }
    s.write_all(req.as_bytes()).ok()?;
    let mut buf = [0u8; 256];
    let n = s.read(&mut buf).ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
}

#[test]
fn the_metrics_address_flag_serves_latency_histograms() {
    let dir = tempfile::tempdir().unwrap();
    let (raft, redis_addr, metrics) = (
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    );
    let _node = Killed(
        Command::new(env!("CARGO_BIN_EXE_longship-kv"))
            .args([
                "--node-id",
                "1",
                "--peers",
                &format!("1={raft}"),
                "--redis-addr",
                &redis_addr,
                "--metrics-address",
                &metrics,
                "--shards",
                "1",
                "--data-dir",
                dir.path().to_str().unwrap(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start longship-kv"),
    );
    // Write until the single node leads and answers (polled: the process
    // gives no other signal of being ready).
    let deadline = Instant::now() + Duration::from_secs(30);
    while redis(&redis_addr, &["SET", "k", "v"]).is_none_or(|r| !r.starts_with("+OK")) {
        assert!(Instant::now() < deadline, "the node never took a write");
        std::thread::sleep(Duration::from_millis(20));
    }
    let text = get_metrics(&metrics).expect("GET /metrics answers");
    for name in [
        "longship_proposal_latency_seconds",
        "longship_fsync_latency_seconds",
        "longship_apply_latency_seconds",
    ] {
        assert!(text.contains(&format!("# TYPE {name} histogram")), "{name}");
        let count: u64 = text
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}_count ")))
            .expect("a count")
            .parse()
            .unwrap();
        assert!(count >= 1, "{name}: {count}");
    }
    assert!(text.contains("longship_read_latency_seconds_bucket{le=\"+Inf\"}"));
}
