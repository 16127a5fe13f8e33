//! What the process costs, read from `/proc` (Linux): CPU time, resident
//! memory, and the file system a directory lives on.

use std::path::Path;

/// Clock ticks per second of `/proc/<pid>/stat` times. Linux reports them
/// in USER_HZ, which is 100 on every architecture longship runs on.
const USER_HZ: f64 = 100.0;

/// CPU seconds (user, system) used by this process so far, all threads
/// included; `None` where `/proc` is not available.
pub fn cpu_seconds() -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    parse_stat_times(&stat)
}

/// utime and stime (fields 14 and 15) of a `/proc/<pid>/stat` line, in
/// seconds. The command name (field 2) may hold spaces and parentheses, so
/// fields are counted from the last `)`.
fn parse_stat_times(stat: &str) -> Option<(f64, f64)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    // `rest` starts at field 3 (state); utime is field 14.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime as f64 / USER_HZ, stime as f64 / USER_HZ))
}

/// Resident set size of this process in bytes (`VmRSS`).
pub fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_status_kb(&status, "VmRSS:").map(|kb| kb * 1024)
}

fn parse_status_kb(status: &str, key: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with(key))?;
    line[key.len()..].split_whitespace().next()?.parse().ok()
}

/// Threads of this process.
pub fn threads() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_status_kb(&status, "Threads:")
}

/// Context switches (voluntary, involuntary) summed over the threads of
/// this process: a voluntary one is mostly a thread going to sleep to be
/// woken later, the cost DESIGN.md §5 warns about.
pub fn context_switches() -> Option<(u64, u64)> {
    let mut total = (0, 0);
    for task in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        let Ok(status) = std::fs::read_to_string(task.path().join("status")) else {
            continue; // the thread ended meanwhile
        };
        total.0 += parse_status_kb(&status, "voluntary_ctxt_switches:").unwrap_or(0);
        total.1 += parse_status_kb(&status, "nonvoluntary_ctxt_switches:").unwrap_or(0);
    }
    Some(total)
}

/// The type of the file system holding `dir` (the mount with the longest
/// matching mount point in `/proc/self/mounts`), e.g. `ext4` or `tmpfs`.
pub fn fs_type(dir: &Path) -> Option<String> {
    let dir = dir.canonicalize().ok()?;
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    let mut best: Option<(usize, String)> = None;
    for line in mounts.lines() {
        let mut f = line.split_whitespace();
        let (Some(_dev), Some(point), Some(kind)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        // Mount points escape spaces as \040; such paths are rare enough here.
        let point = Path::new(point);
        if dir.starts_with(point) {
            let len = point.as_os_str().len();
            if best.as_ref().is_none_or(|(l, _)| len > *l) {
                best = Some((len, kind.to_string()));
            }
        }
    }
    best.map(|(_, kind)| kind)
}

/// Whether a file system of this type loses its data without a disk
/// (fsync there measures nothing).
pub fn is_memory_fs(kind: &str) -> bool {
    matches!(kind, "tmpfs" | "ramfs" | "devtmpfs")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_times_skip_a_tricky_command_name() {
        let line = "1234 (a b) c)) S 1 2 3 4 5 6 7 8 9 10 250 75 0 0 20 0 9 0";
        assert_eq!(parse_stat_times(line), Some((2.5, 0.75)));
        assert_eq!(parse_stat_times("garbage"), None);
    }

    #[test]
    fn status_fields_parse() {
        let s = "Name:\tx\nVmRSS:\t  1234 kB\nThreads:\t7\n";
        assert_eq!(parse_status_kb(s, "VmRSS:"), Some(1234));
        assert_eq!(parse_status_kb(s, "Threads:"), Some(7));
        assert_eq!(parse_status_kb(s, "VmHWM:"), None);
    }

    #[test]
    fn this_process_is_measurable() {
        if Path::new("/proc/self/stat").exists() {
            assert!(cpu_seconds().is_some());
            assert!(rss_bytes().unwrap() > 0);
            assert!(fs_type(Path::new(".")).is_some());
            // A fresh test process may not have switched voluntarily yet
            // (nextest runs each test in its own process): only readable.
            assert!(context_switches().is_some());
        }
    }
}
