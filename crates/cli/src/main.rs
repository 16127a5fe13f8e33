//! `longship`: the command-line tool of longship.
//!
//! - `longship import-snapshot`: offline repair of a shard that lost its
//!   quorum for good (see `longship::tools::import_snapshot`).
//! - `longship inspect DIR`: lists the replicas stored in a NodeHost
//!   directory with their log ranges, hard states and snapshots, verifying
//!   every checksum, without changing anything; reports damage at the end
//!   of the log and replicas under a recovery guard (exit code 3), exits 1
//!   on corruption.
//! - `longship bench`: NodeHosts in this process under a client load;
//!   prints throughput, latency and CPU figures (see `bench.rs`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use longship::{NodeHostConfig, ReplicaId};

mod bench;

#[derive(Parser)]
#[command(name = "longship", version, about = "longship multi-group Raft tools")]
struct Cli {
    /// Log format on stderr (`RUST_LOG` filters, default warn).
    #[arg(long, value_enum, global = true, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

/// How logs are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object a line.
    Json,
}

/// Shows the library's logs on stderr: `RUST_LOG` filters them (default
/// `warn`: errors such as invalid peer messages and failed replicas),
/// `json` writes one JSON object a line for log shippers.
fn init_logs(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if json {
        logs.json().try_init()
    } else {
        logs.try_init()
    };
}

#[derive(Subcommand)]
enum Command {
    /// Rewrite a stopped replica's history to an exported snapshot and a new member list.
    ImportSnapshot {
        /// The NodeHost directory (`node_host_dir`) of the replica.
        #[arg(long)]
        node_host_dir: PathBuf,
        /// The WAL directory, if not `<node_host_dir>/wal`.
        #[arg(long)]
        wal_dir: Option<PathBuf>,
        /// The exported snapshot directory (`<export_path>/snapshot-<index as 16 hex digits>`,
        /// as `request_snapshot` returned it); the shard is taken from its metadata.
        #[arg(long)]
        snapshot_dir: PathBuf,
        /// The new members: `ID=ADDRESS,ID=ADDRESS,...`.
        #[arg(long)]
        members: String,
        /// The replica being repaired (must be among the members).
        #[arg(long)]
        replica_id: u64,
        /// This host's raft address, which `--members` must list for the
        /// replica (default: the address the NodeHost directory was last
        /// started under; required for a new host that never ran).
        #[arg(long)]
        raft_address: Option<String>,
    },
    /// Dump and verify a stopped NodeHost's directory, read-only.
    ///
    /// Exit codes: 0 all healthy; 1 an error (the log is corrupt before its
    /// end, or unreadable) or a snapshot that fails verification; 3 damage at
    /// the end of the log (what opening it would discard, with the shards,
    /// replicas and index ranges affected) or a replica under a recovery
    /// guard (it may lack data it acknowledged; it grants no votes until it
    /// has caught up).
    Inspect {
        /// The NodeHost directory.
        dir: PathBuf,
        /// The WAL directory, if not `<dir>/wal`.
        #[arg(long)]
        wal_dir: Option<PathBuf>,
    },
    /// Benchmark NodeHosts in this process: writes/s, reads/s, latency, CPU.
    Bench(Box<bench::BenchArgs>),
}

fn parse_members(s: &str) -> Result<BTreeMap<ReplicaId, String>, String> {
    let mut out = BTreeMap::new();
    for part in s.split(',').filter(|p| !p.trim().is_empty()) {
        let (id, addr) = part
            .split_once('=')
            .ok_or_else(|| format!("member {part:?} is not ID=ADDRESS"))?;
        let id: u64 = id
            .trim()
            .parse()
            .map_err(|_| format!("member id {id:?} is not a number"))?;
        if out.insert(ReplicaId(id), addr.trim().to_string()).is_some() {
            return Err(format!("member id {id} given twice"));
        }
    }
    Ok(out)
}

fn config(dir: PathBuf, wal_dir: Option<PathBuf>) -> NodeHostConfig {
    NodeHostConfig {
        node_host_dir: dir,
        wal_dir: wal_dir.unwrap_or_default(),
        raft_address: "offline:0".into(),
        ..NodeHostConfig::default()
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logs(cli.log_format == LogFormat::Json);
    match cli.command {
        Command::Bench(args) => match bench::run(*args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
        Command::ImportSnapshot {
            node_host_dir,
            wal_dir,
            snapshot_dir,
            members,
            replica_id,
            raft_address,
        } => {
            let members = match parse_members(&members) {
                Ok(m) => m,
                Err(e) => {
                    eprintln!("error: --members: {e}");
                    return ExitCode::from(2);
                }
            };
            let raft_address = match raft_address {
                Some(a) => a,
                None => match longship::tools::recorded_raft_address(&node_host_dir) {
                    Ok(Some(a)) => a,
                    Ok(None) => {
                        eprintln!(
                            "error: {} was never started by a NodeHost: give this host's \
                             --raft-address",
                            node_host_dir.display()
                        );
                        return ExitCode::from(2);
                    }
                    Err(e) => {
                        eprintln!("error: {e}");
                        return ExitCode::FAILURE;
                    }
                },
            };
            let mut cfg = config(node_host_dir, wal_dir);
            cfg.raft_address = raft_address;
            let replica = ReplicaId(replica_id);
            match longship::tools::import_snapshot(&cfg, &snapshot_dir, &members, replica) {
                Ok(imported) => {
                    let members: Vec<String> =
                        members.iter().map(|(id, a)| format!("{id}={a}")).collect();
                    println!(
                        "imported the snapshot of shard {} at index {} as replica {replica}; \
                         members {}; start it with Start::Restart",
                        imported.shard_id,
                        imported.index,
                        members.join(",")
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Inspect { dir, wal_dir } => {
            let cfg = config(dir, wal_dir);
            match longship::tools::inspect(&cfg) {
                Ok(found) => print_inspection(&found),
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// Exit code of `inspect` when it found damage or a recovery guard.
const EXIT_DAMAGE: u8 = 3;

/// Prints what `inspect` found; returns the exit code (see `Inspect`).
fn print_inspection(found: &longship::tools::Inspection) -> ExitCode {
    let mut bad_snapshot = false;
    println!("{} replica(s)", found.replicas.len());
    for r in &found.replicas {
        // The hard state's commit is persisted lazily: it is a lower bound,
        // and printed as one.
        println!(
            "shard {} replica {}: log {}..={}, term {}, vote {}, \
             commit >= {} (as last persisted), snapshot at {}",
            r.shard_id,
            r.replica_id,
            r.first_index,
            r.last_index,
            r.hard_state.term,
            r.hard_state.vote,
            r.hard_state.commit,
            r.snapshot_index
        );
        if let Some(g) = r.recovery {
            let acked = match g.acked_through {
                Some(i) => format!("its commit index reaches {i}"),
                None => "(acknowledged range unknown)".to_string(),
            };
            println!(
                "  UNDER RECOVERY GUARD: may lack data it acknowledged; grants no votes until \
                 {acked} or an entry of a term after {} commits",
                g.restart_term
            );
        }
        for (index, v) in &r.snapshots {
            let name = format!("snapshot-{:016x}", index.0);
            match v {
                Ok(size) => {
                    println!("  snapshot {index} ({name}): {size} bytes, checksums ok")
                }
                Err(e) => {
                    bad_snapshot = true;
                    println!("  snapshot {index} ({name}): CORRUPT: {e}");
                }
            }
        }
    }
    for d in &found.damage {
        println!(
            "DAMAGE: {} at offset {}, {} byte(s): {}",
            d.file.display(),
            d.offset,
            d.bytes,
            d.reason
        );
        if d.replicas_unknown {
            println!(
                "  affected replicas unknown: every replica of the log is treated as affected"
            );
        } else if d.replicas.is_empty() {
            println!("  no replica affected");
        }
        for r in &d.replicas {
            println!("  may have lost: {r}");
        }
    }
    let guarded = found.replicas.iter().any(|r| r.recovery.is_some());
    if !found.damage.is_empty() || guarded {
        ExitCode::from(EXIT_DAMAGE)
    } else if bad_snapshot {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_parse_and_bad_input_is_refused() {
        let m = parse_members("1=m1:1, 4=m4:1,5=m5:1").unwrap();
        assert_eq!(m.len(), 3);
        assert_eq!(m[&ReplicaId(4)], "m4:1");
        assert!(parse_members("1").is_err());
        assert!(parse_members("x=a").is_err());
        assert!(parse_members("1=a,1=b").is_err());
    }
}
