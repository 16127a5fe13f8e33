//! The helloworld walkthrough with real processes: three replicas on
//! loopback TCP, proposals typed into different replicas, one replica
//! killed (-9) and then a second (proposals time out), both restarted, a
//! fourth replica added (it catches up through a snapshot) and removed, and
//! re-adding it refused. Every replica's printed `applied <count>: <message>`
//! lines must agree.
//!
//! `cargo test` builds the example; see `helloworld_binary` for other ways in.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(20);

/// Newest modification time of the files the example is built from.
fn newest_source(root: &Path) -> std::time::SystemTime {
    fn walk(p: &Path, newest: &mut std::time::SystemTime) {
        let Ok(meta) = std::fs::metadata(p) else {
            return;
        };
        if meta.is_dir() {
            for e in std::fs::read_dir(p).into_iter().flatten().flatten() {
                walk(&e.path(), newest);
            }
        } else if let Ok(m) = meta.modified() {
            *newest = (*newest).max(m);
        }
    }
    let mut newest = std::time::SystemTime::UNIX_EPOCH;
    walk(&root.join("Cargo.toml"), &mut newest);
    walk(&root.join("Cargo.lock"), &mut newest);
    for krate in ["raft", "storage", "transport", "longship"] {
        let dir = root.join("crates").join(krate);
        for part in ["Cargo.toml", "src", "examples"] {
            walk(&dir.join(part), &mut newest);
        }
    }
    newest
}

/// The example binary next to this test binary, built if it is missing or
/// older than its sources.
///
/// `cargo test` builds examples itself, so on a fresh checkout the binary is
/// there and current. Otherwise (e.g. `cargo test --test
/// helloworld_walkthrough` after an edit) cargo builds it, with the profile
/// and target directory of this test binary.
fn helloworld_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    // <target>/[<triple>/]<profile>/deps/<this test>
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binary inside <target>/<profile>/deps")
        .to_path_buf();
    let bin = profile_dir
        .join("examples")
        .join(format!("helloworld{}", std::env::consts::EXE_SUFFIX));
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let root = manifest_dir.join("../..");
    let current = std::fs::metadata(&bin)
        .and_then(|m| m.modified())
        .is_ok_and(|built| built >= newest_source(&root));
    if current {
        return bin;
    }
    let profile = profile_dir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("debug")
        .to_string();
    let above = profile_dir
        .parent()
        .expect("target directory")
        .to_path_buf();
    // Cargo marks the root of a target directory with CACHEDIR.TAG; without
    // it, `above` is the directory of a `--target` triple.
    let (target_dir, triple) = if above.join("CACHEDIR.TAG").exists() {
        (above, None)
    } else {
        let triple = above.file_name().and_then(|n| n.to_str()).map(String::from);
        (
            above.parent().map(Path::to_path_buf).unwrap_or(above),
            triple,
        )
    };
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    // Cargo sets these for this test; left in place, they would look like a
    // changed environment to build scripts and rebuild half the tree.
    for (k, _) in std::env::vars_os() {
        let name = k.to_string_lossy();
        let per_crate = [
            "CARGO_MANIFEST_",
            "CARGO_PKG_",
            "CARGO_CRATE_",
            "CARGO_BIN_",
            "CARGO_PRIMARY_PACKAGE",
            "CARGO_TARGET_TMPDIR",
            "CARGO_RUSTC_CURRENT_DIR",
            "OUT_DIR",
        ];
        if per_crate.iter().any(|p| name.starts_with(p)) {
            cmd.env_remove(&k);
        }
    }
    cmd.current_dir(manifest_dir)
        .args([
            "build",
            "--quiet",
            "-p",
            "longship",
            "--example",
            "helloworld",
        ])
        .arg("--target-dir")
        .arg(&target_dir);
    match profile.as_str() {
        "debug" => {}
        "release" => {
            cmd.arg("--release");
        }
        other => {
            cmd.args(["--profile", other]);
        }
    }
    if let Some(t) = triple {
        cmd.args(["--target", &t]);
    }
    match cmd.status() {
        Ok(s) if s.success() => {}
        // Fall back on whatever binary there is.
        other => eprintln!("building the helloworld example: {other:?}"),
    }
    assert!(
        bin.exists(),
        "helloworld example not found at {}",
        bin.display()
    );
    bin
}

use longship_testkit::free_addr;

/// Output lines of one process, shared with its reader threads.
#[derive(Default)]
struct Output {
    lines: Mutex<Vec<String>>,
    cv: Condvar,
}

struct Running {
    child: Child,
    stdin: Option<ChildStdin>,
    out: Arc<Output>,
}

/// The replicas of the walkthrough; kills every child it started when dropped.
struct Walkthrough {
    bin: PathBuf,
    dir: tempfile::TempDir,
    peers: Vec<String>,
    extra_addr: String,
    running: BTreeMap<u64, Running>,
    /// Output of earlier lives of each replica (before a kill or exit).
    past: BTreeMap<u64, Vec<String>>,
}

impl Drop for Walkthrough {
    fn drop(&mut self) {
        for r in self.running.values_mut() {
            let _ = r.child.kill();
            let _ = r.child.wait();
        }
        if std::thread::panicking() {
            eprintln!("{}", self.transcript());
        }
    }
}

impl Walkthrough {
    fn new() -> Walkthrough {
        Walkthrough {
            bin: helloworld_binary(),
            dir: tempfile::tempdir().unwrap(),
            peers: (0..3).map(|_| free_addr()).collect(),
            extra_addr: free_addr(),
            running: BTreeMap::new(),
            past: BTreeMap::new(),
        }
    }

    /// Everything every replica printed, for failure messages.
    fn transcript(&self) -> String {
        let mut s = String::new();
        for id in self.past.keys().chain(self.running.keys()) {
            s.push_str(&format!("---- replica {id}\n"));
            for l in self.all_lines(*id) {
                s.push_str(&l);
                s.push('\n');
            }
        }
        s
    }

    fn start(&mut self, id: u64, extra: &[&str]) {
        assert!(!self.running.contains_key(&id));
        let mut child = Command::new(&self.bin)
            .arg("--replica-id")
            .arg(id.to_string())
            .arg("--data-dir")
            .arg(self.dir.path())
            .arg("--peers")
            .arg(self.peers.join(","))
            .args(["--read-interval", "1"])
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start helloworld");
        let out = Arc::new(Output::default());
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        for (stream, prefix) in [
            (Box::new(stdout) as Box<dyn std::io::Read + Send>, ""),
            (Box::new(stderr), "stderr: "),
        ] {
            let out = out.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { break };
                    out.lines.lock().unwrap().push(format!("{prefix}{line}"));
                    out.cv.notify_all();
                }
            });
        }
        let stdin = child.stdin.take();
        self.running.insert(id, Running { child, stdin, out });
        self.wait_line(id, 0, "startup banner", |l| l.contains("running at"));
    }

    /// Lines printed so far by the running replica `id`.
    fn mark(&self, id: u64) -> usize {
        self.running[&id].out.lines.lock().unwrap().len()
    }

    /// Waits until the lines replica `id` printed after line `since`
    /// satisfy `f`, which returns what the caller wants from them.
    fn wait_lines<T>(
        &self,
        id: u64,
        since: usize,
        what: &str,
        f: impl Fn(&[String]) -> Option<T>,
    ) -> T {
        let out = &self.running[&id].out;
        let deadline = Instant::now() + WAIT;
        let mut lines = out.lines.lock().unwrap();
        loop {
            if let Some(v) = f(lines.get(since..).unwrap_or_default()) {
                return v;
            }
            let now = Instant::now();
            if now >= deadline {
                drop(lines);
                panic!("replica {id} did not print {what} within {WAIT:?}");
            }
            lines = out.cv.wait_timeout(lines, deadline - now).unwrap().0;
        }
    }

    /// Waits until replica `id` prints, after line `since`, a line matching `f`.
    fn wait_line(&self, id: u64, since: usize, what: &str, f: impl Fn(&str) -> bool) -> String {
        self.wait_lines(id, since, what, |lines| {
            lines.iter().find(|l| f(l)).cloned()
        })
    }

    fn type_line(&mut self, id: u64, line: &str) {
        let stdin = self.running.get_mut(&id).unwrap().stdin.as_mut().unwrap();
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
    }

    /// Types `msg` into replica `from` and waits until every replica in `on`
    /// printed it as applied; returns its count.
    fn propose(&mut self, from: u64, msg: &str, on: &[u64]) -> u64 {
        let marks: Vec<(u64, usize)> = on.iter().map(|&i| (i, self.mark(i))).collect();
        self.type_line(from, msg);
        let mut count = None;
        for (i, since) in marks {
            let l = self.wait_line(i, since, &format!("`applied N: {msg}`"), |l| {
                parse_applied(l).is_some_and(|(_, m)| m == msg)
            });
            let (c, _) = parse_applied(&l).unwrap();
            assert!(
                count.is_none() || count == Some(c),
                "replicas disagree on the count of {msg:?}"
            );
            count = Some(c);
        }
        count.unwrap()
    }

    /// Waits until each of `ids` completes a background read after now: the
    /// shard has a working leader again (a proposal forwarded to a leader
    /// that just died is lost, and only times out).
    fn wait_for_leader(&self, ids: &[u64]) {
        let marks: Vec<(u64, usize)> = ids.iter().map(|&i| (i, self.mark(i))).collect();
        for (i, since) in marks {
            // Two: the first may have been answered just before a kill.
            self.wait_lines(i, since, "two successful reads", |lines| {
                let reads = lines.iter().filter(|l| l.starts_with("read: ")).count();
                (reads >= 2).then_some(())
            });
        }
    }

    fn kill9(&mut self, id: u64) {
        let mut r = self.running.remove(&id).unwrap();
        r.child.kill().unwrap();
        r.child.wait().unwrap();
        self.retire(id, &r);
    }

    fn retire(&mut self, id: u64, r: &Running) {
        let lines = r.out.lines.lock().unwrap().clone();
        self.past.entry(id).or_default().extend(lines);
    }

    /// Ends replica `id` cleanly: end of input, or Ctrl+C (SIGINT) when `interrupt`.
    fn stop(&mut self, id: u64, interrupt: bool) {
        let since = self.mark(id);
        if interrupt {
            let pid = self.running[&id].child.id().to_string();
            let ok = Command::new("kill")
                .args(["-INT", &pid])
                .status()
                .expect("`kill` not found on PATH: run scripts/test (it installs it), or: sudo apt-get install procps");
            assert!(ok.success());
        } else {
            self.running.get_mut(&id).unwrap().stdin = None;
        }
        self.wait_line(id, since, "`stopped`", |l| l == "stopped");
        let mut r = self.running.remove(&id).unwrap();
        let deadline = Instant::now() + WAIT;
        let status = loop {
            if let Some(s) = r.child.try_wait().unwrap() {
                break s;
            }
            assert!(Instant::now() < deadline, "replica {id} did not exit");
            std::thread::sleep(Duration::from_millis(20));
        };
        self.retire(id, &r);
        assert!(status.success(), "replica {id} exited with {status}");
    }

    /// Every line of every life of replica `id`.
    fn all_lines(&self, id: u64) -> Vec<String> {
        let mut v = self.past.get(&id).cloned().unwrap_or_default();
        if let Some(r) = self.running.get(&id) {
            v.extend(r.out.lines.lock().unwrap().iter().cloned());
        }
        v
    }

    /// Count -> message as printed by replica `id` over all its lives.
    /// A count printed twice (re-applied after a restart) must name the same
    /// message, and within one life counts go up by one.
    fn applied(&self, id: u64) -> BTreeMap<u64, String> {
        let mut map = BTreeMap::new();
        let mut last: Option<u64> = None;
        for l in self.all_lines(id) {
            if l.contains("running at") || l.starts_with("recovered from a snapshot") {
                last = l
                    .strip_prefix("recovered from a snapshot: ")
                    .and_then(|r| r.split(' ').next())
                    .and_then(|n| n.parse().ok());
                continue;
            }
            let Some((c, m)) = parse_applied(&l) else {
                continue;
            };
            if let Some(prev) = last {
                assert_eq!(c, prev + 1, "replica {id} skipped from {prev} to {c}");
            }
            last = Some(c);
            if let Some(old) = map.insert(c, m.to_string()) {
                assert_eq!(old, m, "replica {id} applied two messages as {c}");
            }
        }
        map
    }

    /// All replicas printed the same message for every count they share.
    fn assert_same_sequences(&self, ids: &[u64]) {
        let maps: Vec<(u64, BTreeMap<u64, String>)> =
            ids.iter().map(|&i| (i, self.applied(i))).collect();
        for (i, a) in &maps {
            for (j, b) in &maps {
                for (c, m) in a {
                    if let Some(n) = b.get(c) {
                        assert_eq!(m, n, "replicas {i} and {j} differ at {c}");
                    }
                }
            }
        }
    }
}

/// `applied <count>: <message>` -> (count, message).
fn parse_applied(line: &str) -> Option<(u64, &str)> {
    let rest = line.strip_prefix("applied ")?;
    let (count, msg) = rest.split_once(": ")?;
    Some((count.parse().ok()?, msg))
}

#[test]
fn three_terminal_walkthrough_with_real_processes() {
    let mut w = Walkthrough::new();
    for id in 1..=3 {
        w.start(id, &[]);
    }
    // The background linearizable read answers once a leader is elected.
    for id in 1..=3 {
        w.wait_line(id, 0, "a read", |l| l == "read: 0 proposals applied");
    }
    // Messages typed into different terminals show up everywhere, in one order.
    for (k, from) in [1, 2, 3, 1].into_iter().enumerate() {
        let k = k as u64 + 1;
        assert_eq!(w.propose(from, &format!("hello {k}"), &[1, 2, 3]), k);
    }
    w.assert_same_sequences(&[1, 2, 3]);

    // One replica killed: the other two keep going.
    w.kill9(3);
    w.wait_for_leader(&[1, 2]);
    assert_eq!(w.propose(1, "with two", &[1, 2]), 5);
    assert_eq!(w.propose(2, "still two", &[1, 2]), 6);

    // A second one killed: no quorum, the proposal times out.
    w.kill9(2);
    let since = w.mark(1);
    w.type_line(1, "alone");
    w.wait_line(1, since, "a timeout", |l| l.contains("timeout"));

    // Both restarted with the same command: they catch up, counts continue.
    w.start(2, &[]);
    w.start(3, &[]);
    w.wait_for_leader(&[1, 2, 3]);
    let c = w.propose(3, "back together", &[1, 2, 3]);
    // "alone" may or may not have made it into the log: its outcome was unknown.
    assert!(c == 7 || c == 8, "count {c}");
    w.assert_same_sequences(&[1, 2, 3]);
    for id in 1..=3 {
        let a = w.applied(id);
        assert_eq!(
            a.keys().copied().collect::<Vec<_>>(),
            (1..=c).collect::<Vec<_>>(),
            "replica {id}"
        );
    }

    // Past ten proposals every replica snapshots (and compacts its log).
    let marks: Vec<usize> = (1..=3).map(|i| w.mark(i)).collect();
    let mut count = c;
    while count < 12 {
        count = w.propose(1 + count % 3, &format!("filler {count}"), &[1, 2, 3]);
    }
    for id in 1..=3 {
        w.wait_line(id, marks[id as usize - 1], "`snapshot captured`", |l| {
            l.contains("snapshot captured")
        });
    }

    // Replica 4 added, started with --join: it catches up through a snapshot.
    let add = format!("add {} 4", w.extra_addr);
    let since = w.mark(2);
    w.type_line(2, &add);
    w.wait_line(2, since, "the add confirmed", |l| {
        l.contains("replica 4 added")
    });
    let extra = w.extra_addr.clone();
    w.start(4, &["--addr", &extra, "--join"]);
    w.wait_line(4, 0, "recovery from a snapshot", |l| {
        l.starts_with("recovered from a snapshot")
    });
    let c4 = w.propose(4, "from four", &[1, 2, 3, 4]);
    assert_eq!(c4, count + 1);
    w.wait_line(4, 0, "a read with the full count", |l| {
        l == format!("read: {c4} proposals applied")
    });
    w.assert_same_sequences(&[1, 2, 3, 4]);

    // Removed: it no longer receives proposals.
    let since = w.mark(3);
    w.type_line(3, "remove 4");
    w.wait_line(3, since, "the removal confirmed", |l| {
        l.contains("replica 4 removed")
    });
    let since4 = w.mark(4);
    let c5 = w.propose(1, "without four", &[1, 2, 3]);
    assert_eq!(c5, c4 + 1);
    std::thread::sleep(Duration::from_millis(500));
    let late = w.running[&4].out.lines.lock().unwrap()[since4..].to_vec();
    assert!(
        !late.iter().any(|l| l.contains("without four")),
        "a removed replica applied {late:?}"
    );
    // Re-adding a removed id is refused with a clear message.
    let since = w.mark(1);
    w.type_line(1, &add);
    let refusal = w.wait_line(1, since, "a refusal", |l| l.contains("refused"));
    assert!(refusal.contains("removed"), "{refusal}");

    w.assert_same_sequences(&[1, 2, 3, 4]);
    // Ctrl+C and Ctrl+D both shut down cleanly.
    w.stop(4, true);
    w.stop(1, true);
    w.stop(2, false);
    w.stop(3, false);
}
