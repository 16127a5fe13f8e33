//! `longship-sim`: runs the deterministic simulator.
//!
//! ```text
//! longship-sim --seed N            replay one seed (prints its trace hash)
//! longship-sim --seeds A..B        run seeds A (inclusive) to B (exclusive)
//! options: --ops N (operations per seed, default 3000), --jobs N (threads),
//!          --progress N (a line on stderr every N passed seeds),
//!          --master (master mode: the longship master places, repairs and
//!          balances the shards while hosts die for good and join)
//! ```

use std::process::ExitCode;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use longship_sim::{run_master_seed, run_seed};

const USAGE: &str = "usage: longship-sim (--seed N | --seeds A..B) [--ops N] [--jobs N] [--progress N] [--master] [--verbose]";

struct Args {
    seeds: std::ops::Range<u64>,
    ops: u64,
    jobs: usize,
    verbose: bool,
    /// Master mode.
    master: bool,
    /// Print a line to stderr every this many passed seeds (0: never).
    progress: u64,
}

fn parse_args() -> Result<Args, String> {
    let mut seeds = None;
    let mut ops = 3000;
    let mut jobs = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut verbose = false;
    let mut master = false;
    let mut progress = 0;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--seed" => {
                let n: u64 = value()?.parse().map_err(|e| format!("--seed: {e}"))?;
                seeds = Some(n..n + 1);
                verbose = true;
            }
            "--seeds" => {
                let v = value()?;
                let (a, b) = v.split_once("..").ok_or("--seeds takes A..B")?;
                let a: u64 = a.parse().map_err(|e| format!("--seeds: {e}"))?;
                let b: u64 = b.parse().map_err(|e| format!("--seeds: {e}"))?;
                seeds = Some(a..b);
            }
            "--ops" => ops = value()?.parse().map_err(|e| format!("--ops: {e}"))?,
            "--jobs" => jobs = value()?.parse().map_err(|e| format!("--jobs: {e}"))?,
            "--verbose" => verbose = true,
            "--master" => master = true,
            "--progress" => progress = value()?.parse().map_err(|e| format!("--progress: {e}"))?,
            "-h" | "--help" => return Err(USAGE.to_string()),
            other => return Err(format!("unknown argument {other}\n{USAGE}")),
        }
    }
    let seeds = seeds.ok_or(USAGE)?;
    Ok(Args {
        seeds,
        ops,
        jobs: jobs.max(1),
        verbose,
        master,
        progress,
    })
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    if std::env::var_os("LONGSHIP_SIM_LOG").is_some() {
        longship_sim::log::StderrLog::install(tracing::Level::DEBUG);
    }
    let start = Instant::now();
    let next = AtomicU64::new(args.seeds.start);
    let passed = AtomicU64::new(0);
    let failures = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..args.jobs {
            scope.spawn(|| {
                loop {
                    let seed = next.fetch_add(1, Ordering::Relaxed);
                    if seed >= args.seeds.end {
                        break;
                    }
                    let t = Instant::now();
                    let outcome = if args.master {
                        run_master_seed(seed, args.ops)
                    } else {
                        run_seed(seed, args.ops)
                    };
                    match outcome {
                        Ok(r) => {
                            let n = passed.fetch_add(1, Ordering::Relaxed) + 1;
                            if args.progress > 0 && n.is_multiple_of(args.progress) {
                                eprintln!(
                                    "{n} passed after {:.0?} (last seed {seed})",
                                    start.elapsed()
                                );
                            }
                            if args.verbose {
                                println!(
                                    "seed {seed}: ok in {:.2?}, trace hash {:016x}\n  {r:?}",
                                    t.elapsed(),
                                    r.trace_hash
                                );
                            }
                        }
                        Err(f) => {
                            println!("{f}");
                            failures.lock().expect("failure list").push(seed);
                        }
                    }
                }
            });
        }
    });
    let failed = failures.into_inner().expect("failure list");
    println!(
        "{} passed, {} failed in {:.1?}{}",
        passed.load(Ordering::Relaxed),
        failed.len(),
        start.elapsed(),
        if failed.is_empty() {
            String::new()
        } else {
            format!(" (failing seeds: {failed:?})")
        }
    );
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
