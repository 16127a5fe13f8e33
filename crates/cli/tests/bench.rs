//! `longship bench` runs end to end on the in-memory transport and log
//! storage and prints one JSON object with the figures.

use std::process::Command;

fn bench(extra: &[&str]) -> serde_json::Value {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_longship"))
        .current_dir(dir.path())
        .args([
            "bench",
            "--duration",
            "1",
            "--transport",
            "mem",
            "--logdb",
            "mem",
            "--json",
        ])
        .args(extra)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "bench failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value =
        serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"));
    // The data directory made inside the working directory is gone.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    v
}

#[test]
fn bench_prints_the_figures_as_json() {
    let v = bench(&[
        "--warmup",
        "0.2",
        "--shards",
        "4",
        "--clients",
        "8",
        "--read-ratio",
        "0.5",
    ]);
    assert_eq!(v["mode"], "throughput");
    assert_eq!(v["replicas"], 3);
    assert_eq!(v["transport"], "mem");
    assert_eq!(v["logdb"], "mem");
    assert!(v["writes"].as_u64().unwrap() > 0, "{v}");
    assert!(v["reads"].as_u64().unwrap() > 0, "{v}");
    assert!(v["writes_per_s"].as_f64().unwrap() > 0.0);
    assert!(v["reads_per_s"].as_f64().unwrap() > 0.0);
    for key in ["write_latency_us", "read_latency_us"] {
        let lat = &v[key];
        let p50 = lat["p50"].as_f64().unwrap();
        let p99 = lat["p99"].as_f64().unwrap();
        let p999 = lat["p999"].as_f64().unwrap();
        assert!(0.0 < p50 && p50 <= p99 && p99 <= p999, "{key}: {lat}");
        assert!(p999 <= lat["max"].as_f64().unwrap());
    }
    assert!(v["cpu_s"].as_f64().unwrap() > 0.0);
    assert!(v["rss_bytes"].as_u64().unwrap() > 0);
}

#[test]
fn bench_with_defaults_runs_on_one_replica() {
    let v = bench(&["--replicas", "1", "--warmup", "0"]);
    assert_eq!(v["replicas"], 1);
    assert_eq!(v["shards"], 48);
    assert!(v["writes"].as_u64().unwrap() > 0, "{v}");
    assert_eq!(v["reads"], 0);
}

#[test]
fn bad_options_are_refused() {
    let out = Command::new(env!("CARGO_BIN_EXE_longship"))
        .args(["bench", "--read-ratio", "2", "--transport", "mem"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("read-ratio"));
}
