//! Scripted interaction tests: every file under `testdata/` drives a cluster
//! of cores step by step and compares what happens with the expected text.
//!
//! File format: blocks separated by blank lines. A block is one command line
//! (plus `#` comment lines before it), a line `----`, and the expected output
//! (never containing blank lines; `ok` when a command prints nothing).
//! Set `REWRITE=1` to regenerate the expected outputs from the current code;
//! then read the diff: the expected text is a claim about the protocol.
//! Commands starting with `check-` assert a fact and fail the test at once
//! if it does not hold, whatever the expected text says.
//!
//! Commands (ids are replica ids; `*` lists are comma-separated):
//! - `cluster voters=1,2,3 [prevote] [checkquorum] [lease] [async] [election=N] [heartbeat=N] [max-append=N] [inflight=N] [max-uncommitted=N] [seed=N]`
//!   (`async`: asynchronous storage writes, see `begin` and `persist`)
//! - `add-node ID` — a new replica with an empty log, joining: it learns the membership from the log it replicates
//! - `campaign ID`, `tick ID [N]`, `tick-all [N]`, `tick-election ID` (ticks until the node's role changes or,
//!   not leading, it starts a campaign round; prints the ticks, at most 1000)
//! - `tick-stabilize N`: N rounds of (tick every node once, then `stabilize`); prints only the
//!   changes of role, term or known leader, with the round they happened in
//! - `propose ID DATA`, `propose-conf ID add|remove|add-non-voting|add-witness TARGET [based-on=N]`
//! - `read-index ID CTX`, `transfer ID TARGET`
//! - `process ID` (one update cycle), `process-all`, `stabilize`
//! - `begin ID` (takes an update and sends what may leave before its write; the write stays in flight),
//!   `persist ID` (completes the node's oldest write in flight: persists it, sends what waited for it,
//!   applies, reports it to the core)
//! - `deliver [from=ID] [to=ID] [type=T] [index=N] [limit=N]`, `drop [...]` (same filters), `dup [...]` (append a
//!   copy of each matching queued message to the queue: duplicates, and with `deliver` reordering),
//!   `queue` (print queued messages); `index=N` matches the message's log index (`prev` of an append,
//!   `index` of an append response); `limit=N` takes only the first N matching messages
//! - `partition A,B C,D`, `isolate ID`, `heal`
//! - `compact ID INDEX` (takes a snapshot at INDEX on the node's durable log)
//! - `report-snapshot LEADER TARGET ok|fail`, `report-unreachable LEADER TARGET`
//! - `restart ID`
//! - `status [ID]`, `log ID`, `progress ID` (a leader's view of every replica: state, match, next, in-flight)
//! - `check-leader ID`, `check-role ID Role`, `check-term ID N`, `check-vote ID N`, `check-lead ID LEADER` (the leader
//!   node ID knows, 0 = none), `check-commit ID N`, `check-applied ID N`, `check-no-leader`,
//!   `check-read ID CTX INDEX`, `check-no-read ID CTX`, `check-read-dropped ID CTX`,
//!   `check-propose-error ID DATA ERROR` (proposes DATA, expects the error text),
//!   `check-conf-error ID add|remove|add-non-voting|add-witness TARGET [based-on=N] ERROR` (same for a config change),
//!   `check-member ID TARGET voter|non-voting|witness|removed|none` (membership as node ID applied it),
//!   `check-entry ID INDEX TERM [DATA]` (DATA as `log` prints it: `x`, `noop`, `meta`, `conf:AddReplica:4`),
//!   `check-last ID INDEX` (last log index), `check-progress LEADER TARGET Probe|Replicate|Snapshot [match=N] [next=N]`,
//!   `check-transfer LEADER TARGET` (0 = no transfer in progress), `check-logs-match` (applied entries agree by index)

use std::fmt::Write as _;
use std::path::Path;

use longship_raft::testkit::{
    Cluster, ClusterOptions, format_entries, format_message, format_status,
};
use longship_raft::{
    ConfigChange, ConfigChangeType, Index, Membership, Message, MessageType, ReplicaId,
};

struct Env {
    cluster: Option<Cluster>,
    /// Updates begun and not yet persisted, oldest first, per node.
    writes:
        std::collections::BTreeMap<ReplicaId, std::collections::VecDeque<longship_raft::Update>>,
}

fn id(s: &str) -> u64 {
    s.parse().unwrap_or_else(|_| panic!("bad id {s:?}"))
}

fn ids(s: &str) -> Vec<u64> {
    s.split(',').map(id).collect()
}

fn kv<'a>(args: &'a [&'a str], key: &str) -> Option<&'a str> {
    args.iter()
        .find_map(|a| a.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
}

fn msg_type(s: &str) -> MessageType {
    (0u8..=16)
        .filter_map(MessageType::from_u8)
        .find(|t| format!("{t:?}").eq_ignore_ascii_case(s))
        .unwrap_or_else(|| panic!("unknown message type {s}"))
}

fn filter<'a>(args: &'a [&'a str]) -> impl Fn(&Message) -> bool + 'a {
    let from = kv(args, "from").map(id);
    let to = kv(args, "to").map(id);
    let ty = kv(args, "type").map(msg_type);
    let index = kv(args, "index").map(id);
    let limit = kv(args, "limit").map_or(usize::MAX, |v| v.parse().unwrap());
    let taken = std::cell::Cell::new(0usize);
    move |m: &Message| {
        let hit = from.is_none_or(|f| m.from.0 == f)
            && to.is_none_or(|t| m.to.0 == t)
            && ty.is_none_or(|t| m.msg_type == t)
            && index.is_none_or(|i| m.log_index.0 == i)
            && taken.get() < limit;
        if hit {
            taken.set(taken.get() + 1);
        }
        hit
    }
}

impl Env {
    fn c(&mut self) -> &mut Cluster {
        self.cluster
            .as_mut()
            .expect("no cluster yet: start with `cluster`")
    }

    fn run(&mut self, line: &str) -> String {
        let parts: Vec<&str> = line.split_whitespace().collect();
        let (cmd, args) = (parts[0], &parts[1..]);
        let mut out = String::new();
        match cmd {
            "cluster" => {
                let voters = ids(kv(args, "voters").expect("voters="));
                let opts = ClusterOptions {
                    pre_vote: args.contains(&"prevote"),
                    check_quorum: args.contains(&"checkquorum"),
                    lease_read: args.contains(&"lease"),
                    election_rtt: kv(args, "election").map_or(10, |v| v.parse().unwrap()),
                    heartbeat_rtt: kv(args, "heartbeat").map_or(1, |v| v.parse().unwrap()),
                    max_append_bytes: kv(args, "max-append")
                        .map_or(1 << 20, |v| v.parse().unwrap()),
                    max_inflight_msgs: kv(args, "inflight").map_or(256, |v| v.parse().unwrap()),
                    max_uncommitted_bytes: kv(args, "max-uncommitted")
                        .map_or(0, |v| v.parse().unwrap()),
                    seed: kv(args, "seed").map_or(1, |v| v.parse().unwrap()),
                    async_storage_writes: args.contains(&"async"),
                };
                self.cluster = Some(Cluster::new(&voters, opts));
            }
            "add-node" => {
                let n = ReplicaId(id(args[0]));
                self.c().add_node(n, Membership::default());
            }
            "campaign" => self.c().raft(id(args[0])).campaign(),
            "tick" => {
                let n = args.get(1).map_or(1, |v| v.parse().unwrap());
                for _ in 0..n {
                    self.c().tick(id(args[0]));
                }
            }
            "tick-all" => {
                let n = args.first().map_or(1, |v| v.parse().unwrap());
                let all: Vec<u64> = self.c().nodes.keys().map(|r| r.0).collect();
                for _ in 0..n {
                    for &x in &all {
                        self.c().tick(x);
                    }
                }
            }
            "tick-election" => {
                let x = id(args[0]);
                let role = self.c().raft(x).role();
                let had_update = self.c().raft(x).has_update();
                let mut n = 0;
                while n < 1000 {
                    self.c().tick(x);
                    n += 1;
                    let r = self.c().raft(x);
                    let campaigned = !had_update && !r.is_leader() && r.has_update();
                    if r.role() != role || campaigned {
                        break;
                    }
                }
                let _ = write!(out, "ticked {n}");
            }
            "propose" => {
                let e = Cluster::entry(args[1]);
                if let Err(err) = self.c().raft(id(args[0])).propose(vec![e]) {
                    let _ = write!(out, "error: {err}");
                }
            }
            "propose-conf" => {
                let cc = conf(args);
                if let Err(err) = self.c().raft(id(args[0])).propose_config_change(&cc) {
                    let _ = write!(out, "error: {err}");
                }
            }
            "read-index" => {
                let ctx: u64 = args[1].parse().unwrap();
                if let Err(err) = self.c().raft(id(args[0])).read_index(ctx) {
                    let _ = write!(out, "error: {err}");
                }
            }
            "transfer" => {
                let t = ReplicaId(id(args[1]));
                if let Err(err) = self.c().raft(id(args[0])).transfer_leader(t) {
                    let _ = write!(out, "error: {err}");
                }
            }
            "process" => out = self.c().process(ReplicaId(id(args[0]))),
            "process-all" => out = self.c().process_all(),
            "begin" => {
                let n = ReplicaId(id(args[0]));
                if let Some((u, _)) = self.c().process_begin(n, Some(&mut out)) {
                    self.writes.entry(n).or_default().push_back(u);
                }
            }
            "persist" => {
                let n = ReplicaId(id(args[0]));
                let u = self
                    .writes
                    .get_mut(&n)
                    .and_then(|q| q.pop_front())
                    .unwrap_or_else(|| panic!("node {} has no write in flight", n.0));
                self.c().process_finish(n, &u, Some(&mut out));
            }
            "stabilize" => out = self.c().stabilize(),
            "deliver" => out = self.c().deliver_matching(filter(args)),
            "drop" => {
                let n = self.c().drop_matching(filter(args));
                let _ = write!(out, "dropped {n}");
            }
            "dup" => {
                let f = filter(args);
                let copies: Vec<Message> =
                    self.c().queue.iter().filter(|m| f(m)).cloned().collect();
                let _ = write!(out, "duplicated {}", copies.len());
                self.c().queue.extend(copies);
            }
            "tick-stabilize" => {
                let rounds: u64 = args[0].parse().unwrap();
                let all: Vec<u64> = self.c().nodes.keys().map(|r| r.0).collect();
                let view = |c: &Cluster, x: u64| {
                    let r = &c.node(x).raft;
                    (r.role(), r.term().0, r.leader_id().0)
                };
                let mut before: Vec<_> = all.iter().map(|&x| view(self.c(), x)).collect();
                for round in 1..=rounds {
                    for &x in &all {
                        self.c().tick(x);
                    }
                    self.c().stabilize();
                    for (i, &x) in all.iter().enumerate() {
                        let now = view(self.c(), x);
                        if now != before[i] {
                            let _ = writeln!(
                                out,
                                "round {round}: {x} {:?} term={} lead={}",
                                now.0, now.1, now.2
                            );
                            before[i] = now;
                        }
                    }
                }
            }
            "progress" => {
                let r = &self.c().node(id(args[0])).raft;
                for (rid, p) in r.progress() {
                    let _ = writeln!(
                        out,
                        "{}: {:?} match={} next={} inflight={} paused={}",
                        rid.0,
                        p.state,
                        p.match_index.0,
                        p.next_index.0,
                        p.inflights.count(),
                        p.is_paused()
                    );
                }
            }
            "queue" => {
                for m in &self.c().queue {
                    let _ = writeln!(out, "{}", format_message(m));
                }
            }
            "partition" => self.c().partition(&ids(args[0]), &ids(args[1])),
            "isolate" => self.c().isolate(id(args[0])),
            "heal" => self.c().heal(),
            "compact" => {
                let x = ReplicaId(id(args[0]));
                self.c().compact(x, Index(args[1].parse().unwrap()));
            }
            "report-snapshot" => {
                let (l, t) = (id(args[0]), id(args[1]));
                let m = Message {
                    reject: args[2] == "fail",
                    ..Message::new(
                        MessageType::SnapshotStatus,
                        longship_raft::testkit::TEST_SHARD,
                        ReplicaId(t),
                        ReplicaId(l),
                    )
                };
                self.c().raft(l).step(m);
            }
            "report-unreachable" => {
                let (l, t) = (id(args[0]), id(args[1]));
                let m = Message::new(
                    MessageType::Unreachable,
                    longship_raft::testkit::TEST_SHARD,
                    ReplicaId(t),
                    ReplicaId(l),
                );
                self.c().raft(l).step(m);
            }
            "restart" => {
                let n = ReplicaId(id(args[0]));
                self.writes.remove(&n);
                self.c().restart(n);
            }
            "status" => {
                let which: Vec<u64> = match args.first() {
                    Some(x) => vec![id(x)],
                    None => self.c().nodes.keys().map(|r| r.0).collect(),
                };
                for x in which {
                    let _ = writeln!(out, "{}", format_status(&self.c().node(x).raft));
                }
            }
            "log" => {
                let r = &self.c().node(id(args[0])).raft;
                let ents = r
                    .log()
                    .entries(r.log().first_index(), r.log().last_index().next(), u64::MAX)
                    .unwrap();
                let _ = write!(out, "{}", format_entries(&ents));
            }
            _ if cmd.starts_with("check-") => self.check(cmd, args),
            _ => panic!("unknown command {cmd}"),
        }
        out
    }

    fn check(&mut self, cmd: &str, args: &[&str]) {
        let c = self.c();
        match cmd {
            "check-leader" => {
                let x = id(args[0]);
                assert!(
                    c.node(x).raft.is_leader(),
                    "node {x} is not leader: {}",
                    format_status(&c.node(x).raft)
                );
                for (other, n) in &c.nodes {
                    if other.0 != x && n.raft.is_leader() {
                        assert!(
                            n.raft.term() < c.node(x).raft.term(),
                            "two leaders in one term"
                        );
                    }
                }
            }
            "check-no-leader" => assert!(
                c.nodes.values().all(|n| !n.raft.is_leader()),
                "a leader exists"
            ),
            "check-role" => {
                let x = id(args[0]);
                let role = format!("{:?}", c.node(x).raft.role());
                assert_eq!(role, args[1], "role of node {x}");
            }
            "check-vote" => assert_eq!(
                c.node(id(args[0])).raft.hard_state().vote.0,
                id(args[1]),
                "vote of node {}",
                args[0]
            ),
            "check-lead" => assert_eq!(
                c.node(id(args[0])).raft.leader_id().0,
                args[1].parse::<u64>().unwrap(),
                "leader known to node {}",
                args[0]
            ),
            "check-conf-error" => {
                let cc = conf(args);
                let want: Vec<&str> = args[3..]
                    .iter()
                    .filter(|a| !a.starts_with("based-on="))
                    .copied()
                    .collect();
                let got = c.raft(id(args[0])).propose_config_change(&cc);
                assert_eq!(
                    got.err().map(|e| e.to_string()),
                    Some(want.join(" ")),
                    "config change error"
                );
            }
            "check-entry" => {
                let r = &c.node(id(args[0])).raft;
                let index = Index(args[1].parse().unwrap());
                let e = r
                    .log()
                    .entries(index, index.next(), u64::MAX)
                    .unwrap_or_else(|err| panic!("entry {index} on node {}: {err}", args[0]));
                let text = format_entries(&e);
                let text = text.trim_start_matches('[').trim_end_matches(']');
                let (term_index, data) = text.split_once(' ').unwrap_or((text, ""));
                assert_eq!(
                    term_index,
                    format!("{}/{}", args[2], args[1]),
                    "term of entry {index} on node {}",
                    args[0]
                );
                if let Some(want) = args.get(3) {
                    assert_eq!(data, *want, "entry {index} on node {}", args[0]);
                }
            }
            "check-last" => assert_eq!(
                c.node(id(args[0])).raft.log().last_index().0,
                args[1].parse::<u64>().unwrap(),
                "last index of node {}",
                args[0]
            ),
            "check-progress" => {
                let r = &c.node(id(args[0])).raft;
                assert!(r.is_leader(), "node {} is not leader", args[0]);
                let p = r
                    .progress()
                    .get(&ReplicaId(id(args[1])))
                    .unwrap_or_else(|| panic!("no progress for {}", args[1]));
                assert_eq!(format!("{:?}", p.state), args[2], "progress state");
                if let Some(m) = kv(args, "match") {
                    assert_eq!(p.match_index.0, m.parse::<u64>().unwrap(), "match");
                }
                if let Some(n) = kv(args, "next") {
                    assert_eq!(p.next_index.0, n.parse::<u64>().unwrap(), "next");
                }
            }
            "check-transfer" => assert_eq!(
                c.node(id(args[0])).raft.transfer_target().0,
                args[1].parse::<u64>().unwrap(),
                "transfer target"
            ),
            "check-term" => assert_eq!(
                c.node(id(args[0])).raft.term().0,
                args[1].parse::<u64>().unwrap(),
                "term"
            ),
            "check-commit" => assert_eq!(
                c.node(id(args[0])).raft.log().committed().0,
                args[1].parse::<u64>().unwrap(),
                "commit of node {}",
                args[0]
            ),
            "check-applied" => assert_eq!(
                c.node(id(args[0])).applied_index.0,
                args[1].parse::<u64>().unwrap(),
                "applied of node {}",
                args[0]
            ),
            "check-read" => {
                let n = c.node(id(args[0]));
                let (ctx, index): (u64, u64) = (args[1].parse().unwrap(), args[2].parse().unwrap());
                assert!(
                    n.ready_reads
                        .iter()
                        .any(|r| r.context == ctx && r.index.0 == index),
                    "read ctx={ctx} index={index} not ready on {}: {:?}",
                    args[0],
                    n.ready_reads
                );
            }
            "check-no-read" => {
                let n = c.node(id(args[0]));
                let ctx: u64 = args[1].parse().unwrap();
                assert!(
                    !n.ready_reads.iter().any(|r| r.context == ctx),
                    "read {ctx} is ready"
                );
            }
            "check-read-dropped" => {
                let ctx: u64 = args[1].parse().unwrap();
                assert!(
                    c.node(id(args[0])).dropped_reads.contains(&ctx),
                    "read {ctx} not dropped"
                );
            }
            "check-propose-error" => {
                let want = args[2..].join(" ");
                let got = c.raft(id(args[0])).propose(vec![Cluster::entry(args[1])]);
                assert_eq!(
                    got.err().map(|e| e.to_string()),
                    Some(want),
                    "propose error"
                );
            }
            "check-logs-match" => {
                // Raft §5.3 log matching / §5.4.3 state-machine safety: every
                // index applied on two nodes holds the same entry (same term).
                let mut seen: std::collections::BTreeMap<u64, (u64, u64)> = Default::default();
                for (rid, n) in &c.nodes {
                    for e in n.applied.values() {
                        let (term, first) = *seen.entry(e.index.0).or_insert((e.term.0, rid.0));
                        assert_eq!(
                            term, e.term.0,
                            "applied logs differ at index {}: node {first} has term {term}, node {} has term {}",
                            e.index.0, rid.0, e.term.0
                        );
                    }
                }
            }
            "check-member" => {
                let x = id(args[0]);
                let target = ReplicaId(id(args[1]));
                let m = c.node(x).raft.membership();
                let kind = if m.is_voter(target) {
                    "voter"
                } else if m.is_non_voting(target) {
                    "non-voting"
                } else if m.is_witness(target) {
                    "witness"
                } else if m.removed.contains(&target) {
                    "removed"
                } else {
                    "none"
                };
                assert_eq!(kind, args[2], "membership of {target} on node {x}");
            }
            _ => panic!("unknown check {cmd}"),
        }
    }
}

fn conf(args: &[&str]) -> ConfigChange {
    let change_type = match args[1] {
        "add" => ConfigChangeType::AddReplica,
        "remove" => ConfigChangeType::RemoveReplica,
        "add-non-voting" => ConfigChangeType::AddNonVoting,
        "add-witness" => ConfigChangeType::AddWitness,
        other => panic!("unknown conf change {other}"),
    };
    let target = id(args[2]);
    ConfigChange {
        change_type,
        replica_id: ReplicaId(target),
        address: if change_type == ConfigChangeType::RemoveReplica {
            String::new()
        } else {
            format!("node{target}")
        },
        config_change_id: Index(kv(args, "based-on").map_or(0, |v| v.parse().unwrap())),
    }
}

/// Runs one file; returns the file's text with actual outputs.
fn run_file(path: &Path) -> (String, String) {
    let text = std::fs::read_to_string(path).unwrap();
    let mut env = Env {
        cluster: None,
        writes: Default::default(),
    };
    let mut rewritten = String::new();
    let blocks: Vec<&str> = text
        .split("\n\n")
        .filter(|b| !b.trim().is_empty())
        .collect();
    for block in blocks {
        let mut lines = block.lines().peekable();
        let mut cmd = None;
        for l in lines.by_ref() {
            rewritten.push_str(l);
            rewritten.push('\n');
            if l.starts_with('#') || l.trim().is_empty() {
                continue;
            }
            cmd = Some(l.to_string());
            break;
        }
        let Some(cmd) = cmd else { continue };
        let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| env.run(&cmd)));
        let out = match out {
            Ok(o) => o,
            Err(e) => {
                let msg = e
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                // The transcript so far shows how the cluster got there.
                let lines: Vec<&str> = rewritten.lines().collect();
                let tail = lines[lines.len().saturating_sub(60)..].join("\n");
                panic!(
                    "{}: command `{cmd}` failed: {msg}\n--- transcript (last 60 lines) ---\n{tail}",
                    path.display()
                );
            }
        };
        let out = out.trim_end();
        rewritten.push_str("----\n");
        rewritten.push_str(if out.is_empty() { "ok" } else { out });
        rewritten.push_str("\n\n");
    }
    (text, rewritten)
}

#[test]
fn interaction_scenarios() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.retain(|p| p.extension().is_some_and(|e| e == "txt"));
    files.sort();
    assert!(!files.is_empty(), "no scenario files");
    let rewrite = std::env::var("REWRITE").is_ok();
    let mut failures = Vec::new();
    for f in &files {
        let (old, new) = run_file(f);
        // Normalize: the expected text is everything, compared as written.
        let old_norm = normalize(&old);
        let new_norm = normalize(&new);
        if old_norm != new_norm {
            if rewrite {
                std::fs::write(f, &new).unwrap();
            } else {
                failures.push(format!(
                    "{}:\n{}",
                    f.display(),
                    first_diff(&old_norm, &new_norm)
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "scenario output differs (run with REWRITE=1 to regenerate, then review the diff):\n{}",
        failures.join("\n")
    );
}

fn normalize(s: &str) -> String {
    s.split("\n\n")
        .map(str::trim)
        .filter(|b| !b.is_empty())
        .collect::<Vec<_>>()
        .join("\n\n")
}

fn first_diff(a: &str, b: &str) -> String {
    for (i, (x, y)) in a.lines().zip(b.lines()).enumerate() {
        if x != y {
            return format!("line {}:\n  expected: {x}\n  actual:   {y}", i + 1);
        }
    }
    format!(
        "lengths differ: expected {} lines, actual {}",
        a.lines().count(),
        b.lines().count()
    )
}
