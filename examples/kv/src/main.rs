//! `longship-kv`: with no arguments, a complete local cluster in one
//! process (three NodeHosts on loopback TCP, 16 shards x 3 replicas, data in
//! ./longship-data, Redis protocol on 127.0.0.1:7379, 7380 and 7381); with
//! `--node-id` etc., one node of a multi-process cluster.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use longship_kv::cluster::{NodeSpec, start_node};
use longship_kv::server::{KvNode, ServerConfig, serve};
use longship_kv::tls::{self, TlsFiles};

#[derive(Parser, Debug)]
#[command(
    name = "longship-kv",
    version,
    about = "A replicated key-value server speaking the Redis protocol"
)]
struct Args {
    /// This node's id (omit everything to start a local 3-node cluster in one process).
    #[arg(long)]
    node_id: Option<u64>,
    /// This node's raft address (host:port).
    #[arg(long)]
    raft_addr: Option<String>,
    /// Where to serve the Redis protocol (host:port).
    #[arg(long)]
    redis_addr: Option<String>,
    /// All nodes: `1=host:port,2=host:port,3=host:port` (raft addresses).
    #[arg(long)]
    peers: Option<String>,
    /// Every node's Redis address as clients reach it:
    /// `1=host:port,2=host:port,3=host:port`, for `-MOVED` redirects and
    /// `CLUSTER SLOTS/SHARDS/NODES` (default: only this node's --redis-addr,
    /// so other nodes' shards are served by forwarding).
    #[arg(long)]
    redis_peers: Option<String>,
    /// Answer `-MOVED`/`-CROSSSLOT` on every connection (for cluster
    /// clients that send no CLUSTER command first, as `redis-cli -c`), not
    /// only on connections that sent READONLY or a CLUSTER command.
    #[arg(long)]
    cluster_redirects: bool,
    /// Number of shards (the 16,384 hash slots are split over them).
    #[arg(long, default_value_t = 16)]
    shards: u64,
    /// Data directory (default ./longship-data, or ./longship-data/node<ID>).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// RTT in milliseconds.
    #[arg(long, default_value_t = 10)]
    rtt_ms: u64,
    /// Snapshot every this many applied entries per shard.
    #[arg(long, default_value_t = 10_000)]
    snapshot_entries: u64,
    /// Serve linearizable reads from leader leases (no heartbeat round per
    /// read batch). Assumes bounded clock drift between the nodes and no
    /// node paused for longer than an election timeout (see
    /// longship::Config::lease_read); off by default.
    #[arg(long)]
    lease_reads: bool,
    /// Serve the NodeHost's Prometheus metrics (counters, gauges, latency
    /// histograms) over HTTP at this address: `GET /metrics`. In the local
    /// 3-node cluster node `i` listens on this port + i - 1 (port 0: any).
    #[arg(long)]
    metrics_address: Option<String>,
    /// Write logs as JSON objects, one a line (`RUST_LOG` filters them;
    /// default warn).
    #[arg(long)]
    log_json: bool,
    /// Largest argument of a request and largest value a key can hold, in
    /// bytes (Redis's proto-max-bulk-len; suffixes kb, mb, gb allowed).
    #[arg(long, default_value = "512mb", value_parser = parse_size)]
    proto_max_bulk_len: u64,
    /// Most client connections per node (Redis's maxclients).
    #[arg(long, default_value_t = 10_000)]
    maxclients: usize,
    /// Close a client connection idle this many seconds (0: never, as Redis's timeout).
    #[arg(long, default_value_t = 0)]
    timeout: u64,
    /// Most bytes buffered for one connection's incomplete command
    /// (Redis's client-query-buffer-limit; suffixes kb, mb, gb allowed).
    #[arg(long, default_value = "1gb", value_parser = parse_size)]
    client_query_buffer_limit: u64,
    /// Password clients must give with AUTH before any command (Redis's
    /// requirepass). Visible in the process list: prefer --requirepass-file.
    #[arg(long, conflicts_with = "requirepass_file")]
    requirepass: Option<String>,
    /// File holding the password (its first line).
    #[arg(long)]
    requirepass_file: Option<PathBuf>,
    /// Serve Redis clients on a non-loopback address without a password
    /// or TLS (multi-process mode refuses to otherwise).
    #[arg(long)]
    insecure: bool,
    /// The Redis port speaks TLS (with --tls-cert-file, --tls-key-file and
    /// --tls-ca-cert-file).
    #[arg(long, requires_all = ["tls_cert_file", "tls_key_file", "tls_ca_cert_file"])]
    tls: bool,
    /// This node's certificate (PEM). With the key and CA files, the raft
    /// port uses mutual TLS; with --tls, the Redis port serves TLS too.
    #[arg(long, requires_all = ["tls_key_file", "tls_ca_cert_file"])]
    tls_cert_file: Option<PathBuf>,
    /// This node's private key (PEM).
    #[arg(long, requires = "tls_cert_file")]
    tls_key_file: Option<PathBuf>,
    /// The CA certificate that signs every node (and client) certificate.
    #[arg(long, requires = "tls_cert_file")]
    tls_ca_cert_file: Option<PathBuf>,
    /// Whether Redis clients must present a certificate signed by the CA
    /// (Redis's tls-auth-clients).
    #[arg(long, default_value = "yes", value_parser = ["yes", "no"])]
    tls_auth_clients: String,
    /// Placed mode: form a cluster through the master at these master RPC
    /// addresses (`host:port,host:port`); shards live on 3 of the nodes
    /// and are replaced and rebalanced by the master. Needs --raft-addr
    /// and --redis-addr.
    #[arg(long, value_delimiter = ',')]
    join: Vec<String>,
    /// Placed mode: this node also runs a master replica (its replica id is
    /// --node-id) with these members: `1=raft-host:port,2=...,3=...`.
    #[arg(long, requires_all = ["join", "master_addr", "node_id"])]
    master_peers: Option<String>,
    /// Placed mode: where this node's master RPC listens (one of --join).
    #[arg(long)]
    master_addr: Option<String>,
    /// Placed mode: a node silent this many milliseconds is declared dead
    /// and its replicas are replaced (master members).
    #[arg(long, default_value_t = 30_000)]
    dead_after_ms: u64,
    /// Placed mode: how often a node reports to the master, in milliseconds.
    #[arg(long, default_value_t = 500)]
    report_interval_ms: u64,
    #[command(subcommand)]
    command: Option<Sub>,
}

#[derive(clap::Subcommand, Debug)]
enum Sub {
    /// Placed mode: shows the cluster, or drains a node, through the master.
    Cluster {
        /// Master RPC addresses (`host:port,host:port`).
        #[arg(long, value_delimiter = ',', required = true)]
        master: Vec<String>,
        #[command(subcommand)]
        action: ClusterAction,
    },
    /// Writes a CA and per-node certificates for a test cluster (ca.crt,
    /// node<i>.crt/.key, client.crt/.key).
    Certs {
        /// Where to write them.
        #[arg(long)]
        dir: PathBuf,
        /// Number of node certificates.
        #[arg(long, default_value_t = 3)]
        nodes: u64,
        /// Host names and IP addresses the certificates are valid for.
        #[arg(long, value_delimiter = ',', default_value = "127.0.0.1,localhost")]
        names: Vec<String>,
    },
}

/// What `longship-kv cluster` does.
#[derive(clap::Subcommand, Debug)]
enum ClusterAction {
    /// One line per node and per shard.
    Show,
    /// Moves every replica off the node with this raft address.
    Drain {
        /// The node's raft address.
        node: String,
    },
    /// Lets a drained node take replicas again.
    Undrain {
        /// The node's raft address.
        node: String,
    },
}

/// `longship-kv cluster ...`.
fn cluster_command(master: &[String], action: &ClusterAction) -> Result<(), String> {
    let client = longship_master::rpc::TcpMasterClient::new(
        master.to_vec(),
        std::time::Duration::from_secs(5),
    );
    match action {
        ClusterAction::Show => {
            let state = client.state().map_err(|e| e.to_string())?;
            print!("{}", longship_kv::placed::show(&state));
        }
        ClusterAction::Drain { node } => {
            client.drain(node, true).map_err(|e| e.to_string())?;
            println!("draining {node}");
        }
        ClusterAction::Undrain { node } => {
            client.drain(node, false).map_err(|e| e.to_string())?;
            println!("{node} takes replicas again");
        }
    }
    Ok(())
}

/// Placed mode: one node of a cluster formed through the master.
fn run_placed(
    args: &Args,
    server: ServerConfig,
    raft_tls: Option<longship::transport::TlsPaths>,
) -> Result<(Arc<KvNode>, String, longship_kv::placed::PlacedNode), String> {
    let raft_addr = args
        .raft_addr
        .clone()
        .ok_or("--raft-addr is required with --join")?;
    let redis = args.redis_addr.clone().ok_or("--redis-addr is required")?;
    if !is_loopback(&redis) && server.requirepass.is_none() && !args.tls && !args.insecure {
        return Err(format!(
            "refusing to serve Redis clients on {redis} without a password or TLS: give --requirepass-file (or --requirepass) or --tls, or --insecure to serve anyone who can connect"
        ));
    }
    let master = match &args.master_peers {
        None => None,
        Some(p) => Some(longship_kv::placed::MasterSpec {
            replica_id: args
                .node_id
                .ok_or("--node-id is required with --master-peers")?,
            members: parse_peers(p).map_err(|e| format!("--master-peers: {e}"))?,
            rpc_addr: args
                .master_addr
                .clone()
                .ok_or("--master-addr is required")?,
            dead_after: std::time::Duration::from_millis(args.dead_after_ms),
        }),
    };
    let spec = longship_kv::placed::PlacedSpec {
        raft_addr: raft_addr.clone(),
        redis_addr: redis.clone(),
        join: args.join.clone(),
        master,
        shards: args.shards,
        data_dir: args.data_dir.clone().unwrap_or_else(|| {
            PathBuf::from(format!("longship-data/{}", raft_addr.replace(':', "_")))
        }),
        rtt_ms: args.rtt_ms,
        snapshot_entries: args.snapshot_entries,
        lease_reads: args.lease_reads,
        server,
        raft_tls,
        report_interval: std::time::Duration::from_millis(args.report_interval_ms.max(10)),
    };
    let placed = longship_kv::placed::start_placed(&spec)?;
    println!(
        "longship-kv: placed node: raft {raft_addr} redis {redis}, master at {}",
        args.join.join(",")
    );
    Ok((placed.node.clone(), redis, placed))
}

/// A size in bytes: a number with an optional k/kb/m/mb/g/gb suffix (powers of 1024, as Redis).
fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim().to_ascii_lowercase();
    let digits = t.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit: u64 = match &t[digits.len()..] {
        "" | "b" => 1,
        "k" | "kb" => 1 << 10,
        "m" | "mb" => 1 << 20,
        "g" | "gb" => 1 << 30,
        u => return Err(format!("unknown size unit {u:?} (use kb, mb or gb)")),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{s:?} is not a size in bytes"))?;
    n.checked_mul(unit)
        .ok_or_else(|| format!("{s:?} is too large"))
}

impl Args {
    /// The password of --requirepass or --requirepass-file.
    fn password(&self) -> Result<Option<String>, String> {
        let p = match (&self.requirepass, &self.requirepass_file) {
            (Some(p), _) => p.clone(),
            (None, Some(f)) => std::fs::read_to_string(f)
                .map_err(|e| format!("--requirepass-file {}: {e}", f.display()))?
                .lines()
                .next()
                .unwrap_or("")
                .to_string(),
            (None, None) => return Ok(None),
        };
        if p.is_empty() {
            return Err("the password is empty".into());
        }
        Ok(Some(p))
    }

    fn server_config(&self) -> Result<ServerConfig, String> {
        let cfg = ServerConfig {
            proto_max_bulk_len: self.proto_max_bulk_len,
            maxclients: self.maxclients,
            timeout: std::time::Duration::from_secs(self.timeout),
            client_query_buffer_limit: usize::try_from(self.client_query_buffer_limit)
                .map_err(|_| "--client-query-buffer-limit is too large".to_string())?,
            cluster_redirects: self.cluster_redirects,
            requirepass: self.password()?,
            ..ServerConfig::default()
        };
        cfg.validate()?;
        Ok(cfg)
    }
}

/// Whether `addr` (host:port) only accepts connections from this machine.
fn is_loopback(addr: &str) -> bool {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn parse_peers(s: &str) -> Result<BTreeMap<u64, String>, String> {
    let mut out = BTreeMap::new();
    for p in s.split(',').filter(|p| !p.trim().is_empty()) {
        let (id, a) = p
            .split_once('=')
            .ok_or_else(|| format!("peer {p:?} is not ID=HOST:PORT"))?;
        let id: u64 = id
            .trim()
            .parse()
            .map_err(|_| format!("peer id {id:?} is not a number"))?;
        out.insert(id, a.trim().to_string());
    }
    if out.is_empty() {
        return Err("no peers".into());
    }
    Ok(out)
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

fn main() -> ExitCode {
    let args = Args::parse();
    init_logs(args.log_json);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match run(args, &runtime) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args, runtime: &tokio::runtime::Runtime) -> Result<(), String> {
    if let Some(Sub::Certs { dir, nodes, names }) = &args.command {
        for f in longship_kv::tls::write_certs(dir, *nodes, names)? {
            println!("wrote {f}");
        }
        return Ok(());
    }
    if let Some(Sub::Cluster { master, action }) = &args.command {
        return cluster_command(master, action);
    }
    let tls_files = match (
        &args.tls_cert_file,
        &args.tls_key_file,
        &args.tls_ca_cert_file,
    ) {
        (Some(cert), Some(key), Some(ca)) => Some(TlsFiles {
            cert_file: cert.clone(),
            key_file: key.clone(),
            ca_file: ca.clone(),
        }),
        _ => None,
    };
    let acceptor = if args.tls {
        let files = tls_files.as_ref().ok_or("--tls needs the TLS files")?;
        Some(tls::acceptor(files, args.tls_auth_clients == "yes")?)
    } else {
        None
    };
    let raft_tls = tls_files.as_ref().map(|f| longship::transport::TlsPaths {
        ca_file: f.ca_file.clone(),
        cert_file: f.cert_file.clone(),
        key_file: f.key_file.clone(),
    });
    let mut nodes: Vec<(Arc<KvNode>, String)> = Vec::new();
    // Keeps the placed node's reporter, master and directory running.
    let mut _placed = None;
    let local = args.node_id.is_none()
        && args.raft_addr.is_none()
        && args.peers.is_none()
        && args.join.is_empty();
    if args.shards == 0 || args.shards > longship_kv::slots::SLOTS {
        return Err("--shards must be in 1..=16384 (one hash slot at least per shard)".into());
    }
    let mut server = args.server_config()?;
    if !args.join.is_empty() {
        let (node, redis, placed) = run_placed(&args, server, raft_tls)?;
        nodes.push((node, redis));
        _placed = Some(placed);
    } else if local {
        let peers: BTreeMap<u64, String> = (1..=3)
            .map(|i| (i, format!("127.0.0.1:{}", 27378 + i)))
            .collect();
        let root = args
            .data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from("longship-data"));
        server.redis_addrs = (1..=3u64)
            .map(|i| (i, format!("127.0.0.1:{}", 7378 + i)))
            .collect();
        println!(
            "longship-kv: starting a local cluster: 3 NodeHosts, {} shards x 3 replicas, data in {}",
            args.shards,
            root.display()
        );
        for i in 1..=3u64 {
            let spec = NodeSpec {
                node_id: i,
                raft_addr: peers[&i].clone(),
                peers: peers.clone(),
                shards: args.shards,
                data_dir: root.join(format!("node{i}")),
                rtt_ms: args.rtt_ms,
                snapshot_entries: args.snapshot_entries,
                server: server.clone(),
                raft_tls: raft_tls.clone(),
                lease_reads: args.lease_reads,
                metrics_address: local_metrics_address(args.metrics_address.as_deref(), i)?,
            };
            let node = start_node(&spec).map_err(|e| format!("node {i}: {e}"))?;
            let redis = format!("127.0.0.1:{}", 7378 + i);
            println!("  node {i}: raft {} redis {redis}", spec.raft_addr);
            if let Some(m) = node.nh.metrics_address() {
                println!("  node {i}: metrics http://{m}/metrics");
            }
            nodes.push((node, redis));
        }
        // One process: each node sends a request to the NodeHost that leads its shard.
        let hosts: Vec<(u64, Arc<longship::NodeHost>)> = nodes
            .iter()
            .map(|(n, _)| (n.node_id, n.nh.clone()))
            .collect();
        for (n, _) in &nodes {
            n.set_local_hosts(hosts.clone());
        }
    } else {
        let node_id = args.node_id.ok_or("--node-id is required with --peers")?;
        let peers = parse_peers(args.peers.as_deref().ok_or("--peers is required")?)?;
        let raft_addr = match args.raft_addr {
            Some(a) => a,
            None => peers
                .get(&node_id)
                .cloned()
                .ok_or("--raft-addr is required (or list this node in --peers)")?,
        };
        let redis = args.redis_addr.clone().ok_or("--redis-addr is required")?;
        if !is_loopback(&redis) && server.requirepass.is_none() && !args.tls && !args.insecure {
            return Err(format!(
                "refusing to serve Redis clients on {redis} without a password or TLS: give --requirepass-file (or --requirepass) or --tls, or --insecure to serve anyone who can connect"
            ));
        }
        server.redis_addrs = match &args.redis_peers {
            Some(p) => parse_peers(p).map_err(|e| format!("--redis-peers: {e}"))?,
            None => BTreeMap::from([(node_id, redis.clone())]),
        };
        if !server.redis_addrs.contains_key(&node_id) {
            return Err("--redis-peers must list this node".into());
        }
        let spec = NodeSpec {
            node_id,
            raft_addr,
            peers,
            shards: args.shards,
            data_dir: args
                .data_dir
                .clone()
                .unwrap_or_else(|| PathBuf::from(format!("longship-data/node{node_id}"))),
            rtt_ms: args.rtt_ms,
            snapshot_entries: args.snapshot_entries,
            server,
            raft_tls,
            lease_reads: args.lease_reads,
            metrics_address: args.metrics_address.clone().unwrap_or_default(),
        };
        let node = start_node(&spec).map_err(|e| e.to_string())?;
        println!(
            "longship-kv: node {node_id}: raft {} redis {redis}, {} shards",
            spec.raft_addr, args.shards
        );
        if let Some(m) = node.nh.metrics_address() {
            println!("longship-kv: node {node_id}: metrics http://{m}/metrics");
        }
        nodes.push((node, redis));
    }
    runtime.block_on(async {
        for (node, addr) in &nodes {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
            if let Some(a) = &acceptor {
                node.set_tls(a.clone());
            }
            tokio::spawn(serve(listener, node.clone()));
        }
        let first = &nodes[0].1;
        let port = first.rsplit(':').next().unwrap_or("7379");
        println!("ready: connect with `redis-cli -p {port}` (Ctrl+C to stop)");
        tokio::signal::ctrl_c().await.map_err(|e| e.to_string())?;
        Ok::<(), String>(())
    })?;
    println!("stopping");
    for (node, _) in nodes {
        node.nh.close();
    }
    Ok(())
}

/// The metrics address of node `i` of the local cluster: `--metrics-address`
/// with its port moved up by `i - 1` (port 0 stays 0).
fn local_metrics_address(flag: Option<&str>, i: u64) -> Result<String, String> {
    let Some(flag) = flag else {
        return Ok(String::new());
    };
    let mut addr: std::net::SocketAddr = flag
        .parse()
        .map_err(|e| format!("--metrics-address {flag}: {e} (expected ip:port)"))?;
    if addr.port() != 0 {
        let port = u16::try_from(u64::from(addr.port()) + i - 1)
            .map_err(|_| format!("--metrics-address {flag}: port + {} is past 65535", i - 1))?;
        addr.set_port(port);
    }
    Ok(addr.to_string())
}
