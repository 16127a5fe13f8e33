//! helloworld: the three-terminal walkthrough.
//!
//! Start three replicas of shard 128 in three terminals:
//!
//! ```text
//! cargo run --release --example helloworld -- --replica-id 1
//! cargo run --release --example helloworld -- --replica-id 2
//! cargo run --release --example helloworld -- --replica-id 3
//! ```
//!
//! Every line typed is proposed; every replica prints `applied <count>:
//! <message>` for each applied proposal, so all terminals show the same lines
//! in the same order. `add <host:port> <id>` and `remove <id>` change the
//! membership; a replica added that way is started with `--replica-id <id>
//! --addr <host:port> --join`. Every 10 applied proposals each replica takes
//! a snapshot, which compacts its log. Ctrl+D or Ctrl+C stops it cleanly.
//! See the README for the walkthrough.

use std::collections::BTreeMap;
use std::io::{BufRead, Read, Write};
use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use longship::events::{EventListener, SnapshotEvent};
use longship::{
    Config, Error, Index, NodeHost, NodeHostConfig, ReplicaId, ShardId, SmEntry, SmError,
    SnapshotOption, Start, StateMachine, StopFlag,
};

/// The shard every replica of this example belongs to.
const SHARD: ShardId = ShardId(128);
/// A snapshot is taken every this many applied proposals.
const SNAPSHOT_EVERY_PROPOSALS: u64 = 10;
/// Entries kept in the log behind a snapshot.
const COMPACTION_OVERHEAD: u64 = 5;
/// How long a proposal, read or membership change may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
/// One tick: heartbeats every tick, elections after 10 to 20.
const RTT_MS: u64 = 50;

#[derive(Parser, Debug)]
#[command(about = "longship helloworld: a replicated message log of three (or more) replicas")]
struct Args {
    /// This replica's id: 1, 2 or 3 for the initial members; another id for
    /// a replica added with `add <host:port> <id>`.
    #[arg(long)]
    replica_id: u64,
    /// Raft address of this replica (required for ids other than 1, 2, 3).
    #[arg(long)]
    addr: Option<String>,
    /// Start a replica that was added to the running shard.
    #[arg(long)]
    join: bool,
    /// Where replicas keep their data (each in its own subdirectory).
    #[arg(long, default_value = "example-data")]
    data_dir: PathBuf,
    /// Seconds between the background linearizable reads.
    #[arg(long, default_value_t = 10)]
    read_interval: u64,
    /// Raft addresses of the initial replicas 1, 2 and 3.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "localhost:63001,localhost:63002,localhost:63003"
    )]
    peers: Vec<String>,
    /// Log format on stderr: `text` (human-readable lines) or `json` (one
    /// JSON object a line, for log shippers). `RUST_LOG` filters; default
    /// `warn`.
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
}

// ------------------------------------------------------------ state machine

/// Counts the proposals it applied and prints each one. The count is its
/// whole state, so it is what a snapshot holds.
struct Counter {
    count: u64,
    /// Told the count each time it reaches a multiple of
    /// `SNAPSHOT_EVERY_PROPOSALS`, to request a snapshot.
    snapshot_due: Mutex<Sender<u64>>,
}

impl StateMachine for Counter {
    fn update(&mut self, entries: &mut [SmEntry]) -> Result<(), SmError> {
        let mut out = std::io::stdout().lock();
        for e in entries {
            self.count += 1;
            let msg = String::from_utf8_lossy(&e.cmd);
            // Printed here, on apply, so a restarted replica prints the
            // entries it re-applies after its last snapshot again.
            let _ = writeln!(out, "applied {}: {}", self.count, msg);
            e.result.value = self.count;
            if self.count.is_multiple_of(SNAPSHOT_EVERY_PROPOSALS) {
                let _ = self.snapshot_due.lock().unwrap().send(self.count);
            }
        }
        let _ = out.flush();
        Ok(())
    }

    fn lookup(&self, _query: &[u8]) -> Result<Vec<u8>, SmError> {
        Ok(self.count.to_le_bytes().to_vec())
    }

    fn save_snapshot(&self, w: &mut dyn Write, _: &StopFlag) -> Result<(), SmError> {
        Ok(w.write_all(&self.count.to_le_bytes())?)
    }

    fn recover_from_snapshot(&mut self, r: &mut dyn Read, _: &StopFlag) -> Result<(), SmError> {
        let mut b = [0u8; 8];
        r.read_exact(&mut b)?;
        self.count = u64::from_le_bytes(b);
        println!(
            "recovered from a snapshot: {} proposals applied",
            self.count
        );
        Ok(())
    }
}

/// Prints log compactions (they follow snapshots).
struct Printer;

impl EventListener for Printer {
    fn log_compacted(&self, info: SnapshotEvent) {
        println!("log compacted up to index {}", info.index);
    }
}

// ------------------------------------------------------------ requests

/// Runs `f` until it succeeds, fails for good, or `REQUEST_TIMEOUT` passes.
/// Only errors that mean "not done" are retried (no leader yet, busy): a
/// timeout means "outcome unknown" and is never retried.
fn with_retry<T>(mut f: impl FnMut(Duration) -> Result<T, Error>) -> Result<T, Error> {
    let deadline = Instant::now() + REQUEST_TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left < Duration::from_millis(RTT_MS) {
            return Err(Error::Timeout);
        }
        match f(left) {
            Err(Error::Dropped { .. } | Error::SystemBusy | Error::PendingConfigChange) => {
                std::thread::sleep(Duration::from_millis(RTT_MS));
            }
            other => return other,
        }
    }
}

fn propose(nh: &NodeHost, msg: &str) {
    let mut session = nh.get_noop_session(SHARD);
    let res = with_retry(|t| nh.sync_propose(&mut session, msg.as_bytes().to_vec(), t));
    if let Err(e) = res {
        // The `applied` line comes from the state machine; only failures here.
        println!("proposal {msg:?} failed: {e}");
    }
}

/// Handles `add <host:port> <id>` and `remove <id>`; false if `line` is neither.
fn membership_change(nh: &NodeHost, line: &str) -> bool {
    let words: Vec<&str> = line.split_whitespace().collect();
    let (res, what) = match words.as_slice() {
        ["add", addr, id] => {
            let Ok(id) = id.parse::<u64>() else {
                return false;
            };
            let res = with_retry(|t| {
                nh.request_add_replica(SHARD, ReplicaId(id), *addr, Index(0), t)?
                    .wait()
            });
            (res, format!("replica {id} added at {addr}"))
        }
        ["remove", id] => {
            let Ok(id) = id.parse::<u64>() else {
                return false;
            };
            let res = with_retry(|t| {
                nh.request_delete_replica(SHARD, ReplicaId(id), Index(0), t)?
                    .wait()
            });
            (res, format!("replica {id} removed"))
        }
        _ => return false,
    };
    match res {
        Ok(()) => println!("membership change done: {what}"),
        Err(e @ (Error::ReplicaRemoved(_) | Error::Rejected(_))) => {
            println!("membership change refused: {e}")
        }
        Err(e) => println!("membership change failed: {e}"),
    }
    true
}

/// Every `interval`, a linearizable read of the count, until `stop` says so.
fn reader(nh: Arc<NodeHost>, interval: Duration, stop: Receiver<()>) {
    loop {
        match stop.recv_timeout(interval) {
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            _ => return,
        }
        match with_retry(|t| nh.sync_read(SHARD, b"", t)) {
            Ok(v) if v.len() == 8 => {
                let count = u64::from_le_bytes(v.try_into().expect("8 bytes"));
                println!("read: {count} proposals applied");
            }
            Ok(_) => println!("read failed: unexpected answer"),
            Err(Error::Stopped | Error::ShardClosed) => return,
            Err(e) => println!("read failed: {e}"),
        }
    }
}

/// Takes the snapshots the state machine asks for.
fn snapshotter(nh: Arc<NodeHost>, due: Receiver<u64>) {
    for count in due {
        let res = nh
            .request_snapshot(SHARD, SnapshotOption::default(), REQUEST_TIMEOUT)
            .and_then(|h| h.wait());
        match res {
            Ok(done) => println!(
                "snapshot captured at index {} ({count} proposals applied)",
                done.index
            ),
            // Already covered by a newer snapshot (e.g. taken before a restart).
            Err(Error::Rejected(_)) => {}
            Err(Error::Stopped | Error::ShardClosed) => return,
            Err(e) => println!("snapshot failed: {e}"),
        }
    }
}

// ------------------------------------------------------------ main

enum Input {
    Line(String),
    /// End of input or Ctrl+C.
    Quit(&'static str),
}

fn read_stdin(tx: Sender<Input>) {
    for line in std::io::stdin().lock().lines() {
        match line {
            Ok(l) => {
                if tx.send(Input::Line(l)).is_err() {
                    return;
                }
            }
            Err(_) => break,
        }
    }
    let _ = tx.send(Input::Quit("end of input"));
}

fn wait_for_ctrl_c(tx: Sender<Input>) {
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return;
    };
    if rt.block_on(tokio::signal::ctrl_c()).is_ok() {
        let _ = tx.send(Input::Quit("interrupted"));
    }
}

fn main() {
    let args = Args::parse();
    // The library's warnings and errors on stderr (RUST_LOG filters them).
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if args.log_format == "json" {
        logs.json().try_init()
    } else {
        logs.try_init()
    };
    if let Err(e) = run(args) {
        eprintln!("helloworld: {e}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> Result<(), String> {
    let id = args.replica_id;
    if id == 0 {
        return Err("--replica-id must be non-zero".into());
    }
    if args.peers.len() != 3 {
        return Err("--peers takes exactly three addresses".into());
    }
    let initial: BTreeMap<ReplicaId, String> = (1..=3)
        .map(ReplicaId)
        .zip(args.peers.iter().cloned())
        .collect();
    let addr = match (&args.addr, initial.get(&ReplicaId(id))) {
        (Some(a), _) => a.clone(),
        (None, Some(a)) => a.clone(),
        (None, None) => return Err(format!("replica {id} needs --addr HOST:PORT")),
    };
    let cfg = NodeHostConfig {
        node_host_dir: args.data_dir.join(format!("replica-{id}")),
        rtt_ms: RTT_MS,
        raft_address: addr.clone(),
        ..NodeHostConfig::default()
    };
    let nh = NodeHost::builder(cfg)
        .event_listener(Arc::new(Printer))
        .build()
        .map_err(|e| format!("cannot start the NodeHost at {addr}: {e}"))?;
    let nh = Arc::new(nh);

    let (snap_tx, snap_rx) = mpsc::channel();
    // The same command starts a replica every time: with data on this
    // host it restarts (whether it first bootstrapped or joined); without,
    // it joins with --join, else bootstraps the shard with the initial members.
    let start = if nh.has_node_info(SHARD, ReplicaId(id)) {
        Start::Restart
    } else if args.join {
        Start::Join
    } else if initial.contains_key(&ReplicaId(id)) {
        Start::New(initial)
    } else {
        return Err(format!(
            "replica {id} is not an initial member: add it with `add {addr} {id}`, then start it with --join"
        ));
    };
    let shard_cfg = Config {
        election_rtt: 10,
        heartbeat_rtt: 1,
        check_quorum: true,
        compaction_overhead: COMPACTION_OVERHEAD,
        ..Config::new(SHARD, ReplicaId(id))
    };
    let sm = Counter {
        count: 0,
        snapshot_due: Mutex::new(snap_tx),
    };
    nh.start_replica(start, |_, _| Box::new(sm), shard_cfg)
        .map_err(|e| format!("cannot start replica {id}: {e}"))?;
    println!(
        "replica {id} of shard {SHARD} running at {addr}: type a message and press Enter; \
         `add HOST:PORT ID` / `remove ID` change the membership; Ctrl+D quits"
    );

    let (stop_tx, stop_rx) = mpsc::channel();
    let reader = {
        let nh = nh.clone();
        let interval = Duration::from_secs(args.read_interval.max(1));
        std::thread::spawn(move || reader(nh, interval, stop_rx))
    };
    {
        // Not joined: it ends when the state machine (its sender) is dropped.
        let nh = nh.clone();
        std::thread::spawn(move || snapshotter(nh, snap_rx));
    }
    let (in_tx, in_rx) = mpsc::channel();
    {
        let tx = in_tx.clone();
        std::thread::spawn(move || read_stdin(tx));
    }
    std::thread::spawn(move || wait_for_ctrl_c(in_tx));

    let why = loop {
        match in_rx.recv() {
            Ok(Input::Line(line)) => {
                let line = line.trim();
                if line.is_empty() || membership_change(&nh, line) {
                    continue;
                }
                propose(&nh, line);
            }
            Ok(Input::Quit(why)) => break why,
            Err(_) => break "input closed",
        }
    };
    println!("{why}: shutting down");
    drop(stop_tx);
    nh.close();
    let _ = reader.join();
    println!("stopped");
    Ok(())
}
