//! `lumen bench startup`: launch to ready and launch to exit of
//! `lumen run -n N -- hello_ranks` (the example: join, one barrier, leave)
//! beside `mpirun -n N` of `mpi/mpi_hello.c` (MPI_Init, one barrier,
//! MPI_Finalize), in alternating rounds inside the load check.
//!
//! Both programs get the launcher's start time (`CLOCK_REALTIME`
//! nanoseconds, taken just before the launcher is spawned) as their
//! argument; rank 0 prints the time at which it left the barrier, which
//! every rank had entered by then: "ready". "exit" is the launcher's wall
//! time, reaping included. Rank 0 of Lumen also reports the threads and
//! sockets its process holds at that point.
//!
//! The figures come from the user-facing binaries: `lumen` and
//! `examples/hello_ranks` next to this `lumen-bench` (a workspace
//! `cargo build --release --examples` builds all three). The Open MPI
//! side is only run up to `--baseline-max-ranks` (32: beyond that `mpirun`
//! on two oversubscribed cores takes seconds per round and tells nothing
//! new).

use std::path::PathBuf;
use std::process::Command;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use serde::Serialize;

use crate::rounds::{median, with_load_checks, RoundLoad};

const MPI_SOURCE: &str = include_str!("../mpi/mpi_hello.c");

/// The placement both sides run with, for the report.
const PLACEMENT: &str = "one node, N processes on all cores, unpinned on both sides (lumen run's default; mpirun --oversubscribe --bind-to none)";

/// Options of `lumen bench startup`.
#[derive(Debug, Clone)]
pub struct StartupBenchOptions {
    /// Rank counts.
    pub ranks: Vec<u32>,
    /// Alternating rounds per rank count.
    pub rounds: usize,
    /// Run `mpirun` only up to this many ranks.
    pub baseline_max_ranks: u32,
    /// Run the Open MPI baseline at all.
    pub baseline: bool,
}

/// One figure: a rank count's launch-to-ready or launch-to-exit time.
#[derive(Debug, Clone, Serialize)]
pub struct StartupRow {
    /// "launch to ready" or "launch to exit".
    pub test: String,
    /// "ms".
    pub unit: &'static str,
    /// Ranks.
    pub ranks: u32,
    /// Lumen's median over the rounds.
    pub lumen: f64,
    /// "mpirun".
    pub baseline_name: &'static str,
    /// Open MPI's median, where it ran.
    pub baseline: Option<f64>,
    /// Median of the per-round ratios (Lumen / Open MPI; below 1 is faster).
    pub ratio: Option<f64>,
    /// Lowest and highest per-round ratio.
    pub ratio_range: Option<(f64, f64)>,
    /// Rounds behind the figures.
    pub rounds: usize,
    /// Threads of rank 0's process at the barrier (Lumen).
    pub threads: Option<u64>,
    /// Sockets rank 0's process holds at the barrier (Lumen).
    pub sockets: Option<u64>,
}

/// One side's round: (ready ms, exit ms, threads, sockets).
type Sample = (f64, f64, Option<u64>, Option<u64>);

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

/// Runs a launcher command line with the start time appended and reads rank
/// 0's JSON line.
fn sample(mut command: Command, what: &str) -> anyhow::Result<Sample> {
    let t0 = now_ns();
    let start = Instant::now();
    let output = command
        .arg(t0.to_string())
        .output()
        .with_context(|| format!("starting {what}"))?;
    let exit = start.elapsed().as_secs_f64() * 1e3;
    if !output.status.success() {
        bail!(
            "{what} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout
        .lines()
        .find(|l| l.starts_with('{'))
        .with_context(|| format!("{what} printed no ready time: {stdout:?}"))?;
    let v: serde_json::Value =
        serde_json::from_str(line).with_context(|| format!("parsing {line:?} from {what}"))?;
    let ready = v["ready_ms"]
        .as_f64()
        .with_context(|| format!("no ready_ms in {line:?} from {what}"))?;
    Ok((ready, exit, v["threads"].as_u64(), v["sockets"].as_u64()))
}

/// `lumen` and `examples/hello_ranks` beside this executable.
fn lumen_binaries() -> anyhow::Result<(PathBuf, PathBuf)> {
    let exe = crate::bench_exe()?;
    let dir = exe.parent().context("lumen-bench has no directory")?;
    let lumen = dir.join("lumen");
    let hello = dir.join("examples").join("hello_ranks");
    for path in [&lumen, &hello] {
        if !path.exists() {
            bail!(
                "{} is missing: build it beside lumen-bench with `cargo build --release -p lumen --bins --examples`",
                path.display()
            );
        }
    }
    Ok((lumen, hello))
}

/// `lumen bench startup`.
pub fn run(options: &StartupBenchOptions) -> anyhow::Result<crate::Report<StartupRow>> {
    let (lumen, hello) = lumen_binaries()?;
    let mpi = if options.baseline {
        match crate::mpi::compile("mpi_hello", MPI_SOURCE) {
            Ok(binary) => Some(binary),
            Err(e) => {
                eprintln!("lumen bench: Open MPI baseline unavailable: {e:#}");
                None
            }
        }
    } else {
        None
    };
    let mut rows = Vec::new();
    let mut loads: Vec<(String, Vec<RoundLoad>)> = Vec::new();
    for &n in &options.ranks {
        let with_mpi = mpi.as_ref().filter(|_| n <= options.baseline_max_ranks);
        let (rounds, round_loads) = with_load_checks(
            options.rounds,
            || {
                let mut command = Command::new(&lumen);
                command
                    .args(["run", "-n", &n.to_string(), "--"])
                    .arg(&hello);
                let a = sample(command, &format!("lumen run -n {n}"))?;
                let b = match with_mpi {
                    Some(binary) => {
                        let mut command = Command::new("mpirun");
                        command
                            .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
                            .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
                            .env("OMPI_MCA_oob_tcp_if_include", "lo")
                            .args(["-n", &n.to_string(), "--oversubscribe"])
                            .args(["--bind-to", "none"])
                            .arg(binary);
                        Some(sample(command, &format!("mpirun -n {n}"))?)
                    }
                    None => None,
                };
                Ok((a, b))
            },
            || crate::rounds::wait_quiet(std::time::Duration::from_secs(5)),
            crate::rounds::machine_busy,
        )?;
        loads.push((format!("{n} ranks"), round_loads));
        let pick = |f: fn(&Sample) -> f64| -> (Vec<f64>, Vec<f64>, Vec<f64>) {
            let lumen: Vec<f64> = rounds.iter().map(|(a, _)| f(a)).collect();
            let mpi: Vec<f64> = rounds
                .iter()
                .filter_map(|(_, b)| b.as_ref().map(f))
                .collect();
            let ratios = rounds
                .iter()
                .filter_map(|(a, b)| b.as_ref().map(|b| f(a) / f(b)))
                .collect();
            (lumen, mpi, ratios)
        };
        let last = rounds.last().map(|(a, _)| *a);
        for (test, f) in [
            ("launch to ready", (|s: &Sample| s.0) as fn(&Sample) -> f64),
            ("launch to exit", |s: &Sample| s.1),
        ] {
            let (lumen, mpi, ratios) = pick(f);
            rows.push(StartupRow {
                test: test.to_string(),
                unit: "ms",
                ranks: n,
                lumen: median(&lumen),
                baseline_name: "mpirun",
                baseline: (!mpi.is_empty()).then(|| median(&mpi)),
                ratio: (!ratios.is_empty()).then(|| median(&ratios)),
                ratio_range: (!ratios.is_empty()).then(|| {
                    let low = ratios.iter().copied().fold(f64::INFINITY, f64::min);
                    let high = ratios.iter().copied().fold(0.0, f64::max);
                    (low, high)
                }),
                rounds: lumen.len(),
                threads: last.and_then(|s| s.2),
                sockets: last.and_then(|s| s.3),
            });
        }
    }
    Ok(crate::Report {
        info: crate::rounds::RunInfo::now("startup", PLACEMENT),
        loads,
        rows,
    })
}

/// Prints rows as a table.
pub fn print_table(rows: &[StartupRow]) {
    println!(
        "{:<16} {:>6} {:>10} {:>10} {:>7} {:>13} {:>6} {:>8} {:>8}",
        "test", "ranks", "lumen ms", "mpirun ms", "ratio", "range", "rounds", "threads", "sockets"
    );
    let opt = |x: Option<f64>| x.map_or("n/a".to_string(), |x| format!("{x:.2}"));
    for r in rows {
        println!(
            "{:<16} {:>6} {:>10.1} {:>10} {:>7} {:>13} {:>6} {:>8} {:>8}",
            r.test,
            r.ranks,
            r.lumen,
            r.baseline.map_or("n/a".into(), |x| format!("{x:.1}")),
            opt(r.ratio),
            r.ratio_range
                .map_or("n/a".into(), |(l, h)| format!("{l:.3}-{h:.3}")),
            r.rounds,
            r.threads.map_or("n/a".into(), |x| x.to_string()),
            r.sockets.map_or("n/a".into(), |x| x.to_string()),
        );
    }
}
