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
//! With `--netns-ranks`, the same program runs over 3 namespace "nodes"
//! twice a round: connecting TCP peers on first use (`LUMEN_TCP_CONNECT=lazy`,
//! the Lumen column) and all-to-all at start (`eager`, the baseline column).
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
const PLACEMENT: &str = "one node, N processes on all cores, unpinned on both sides (lumen run's default; mpirun --oversubscribe --bind-to none); the netns rows: N ranks in 3 network namespaces joined by veth (N/3 each), all on this machine's 2 cores, lumen-bench launch (lumen run's code) with LUMEN_TCP_CONNECT=lazy against eager; threads and sockets are rank 0's on the Lumen (lazy) side";

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
    /// Also: these rank counts over 3 network-namespace nodes, connecting
    /// on first use (`LUMEN_TCP_CONNECT=lazy`) against all-to-all at start
    /// (`eager`) as the baseline (root).
    pub netns_ranks: Vec<u32>,
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
        push_rows(&mut rows, &rounds, n, "", "mpirun");
    }
    if !options.netns_ranks.is_empty() {
        netns_rows(options, &hello, &mut rows, &mut loads)?;
    }
    Ok(crate::Report {
        info: crate::rounds::RunInfo::now("startup", PLACEMENT),
        loads,
        rows,
    })
}

/// Lazy against eager TCP set-up across 3 namespace "nodes" (the ranks
/// share this machine's cores; the rendezvous is in the first namespace).
fn netns_rows(
    options: &StartupBenchOptions,
    hello: &std::path::Path,
    rows: &mut Vec<StartupRow>,
    loads: &mut Vec<(String, Vec<RoundLoad>)>,
) -> anyhow::Result<()> {
    use lumen_testkit::{netns_unavailable_reason, unique_prefix, NetnsCluster};
    if let Some(reason) = netns_unavailable_reason() {
        bail!("network namespaces unavailable: {reason}");
    }
    let exe = crate::bench_exe()?;
    let cluster = NetnsCluster::create(&unique_prefix("lsu"), 3)?;
    let result = (|| -> anyhow::Result<()> {
        for &n in &options.netns_ranks {
            let per = n.div_ceil(3);
            let hosts: Vec<String> = (0..3)
                .map(|i| format!("{}:{per}", cluster.namespace(i)))
                .collect();
            let run = |connect: &str| {
                let mut command = cluster.command(0, &exe);
                command
                    .args(["launch", "-n", &n.to_string(), "--hosts", &hosts.join(",")])
                    .args(["--launch-agent", "ip netns exec {host}"])
                    .args(["--rendezvous-bind", &cluster.host_addr(0).to_string()])
                    .arg("--")
                    .arg(hello)
                    .env("LUMEN_TCP_IF", cluster.subnet_cidr())
                    .env("LUMEN_TCP_CONNECT", connect);
                sample(command, &format!("{n} ranks over 3 namespaces, {connect}"))
            };
            let (rounds, round_loads) = with_load_checks(
                options.rounds,
                || Ok((run("lazy")?, Some(run("eager")?))),
                || crate::rounds::wait_quiet(std::time::Duration::from_secs(5)),
                crate::rounds::machine_busy,
            )?;
            loads.push((format!("{n} ranks, 3 namespace nodes"), round_loads));
            push_rows(
                rows,
                &rounds,
                n,
                "3 netns nodes, lazy vs eager TCP: ",
                "eager",
            );
        }
        Ok(())
    })();
    cluster.destroy()?;
    result
}

/// Two rows (ready, exit) from a rank count's rounds.
fn push_rows(
    rows: &mut Vec<StartupRow>,
    rounds: &[(Sample, Option<Sample>)],
    n: u32,
    prefix: &str,
    baseline_name: &'static str,
) {
    let last = rounds.last().map(|(a, _)| *a);
    for (test, f) in [
        ("launch to ready", (|s: &Sample| s.0) as fn(&Sample) -> f64),
        ("launch to exit", |s: &Sample| s.1),
    ] {
        let lumen: Vec<f64> = rounds.iter().map(|(a, _)| f(a)).collect();
        let other: Vec<f64> = rounds
            .iter()
            .filter_map(|(_, b)| b.as_ref().map(f))
            .collect();
        let ratios: Vec<f64> = rounds
            .iter()
            .filter_map(|(a, b)| b.as_ref().map(|b| f(a) / f(b)))
            .collect();
        rows.push(StartupRow {
            test: format!("{prefix}{test}"),
            unit: "ms",
            ranks: n,
            lumen: median(&lumen),
            baseline_name,
            baseline: (!other.is_empty()).then(|| median(&other)),
            ratio: (!ratios.is_empty()).then(|| median(&ratios)),
            ratio_range: crate::rounds::range(&ratios),
            rounds: lumen.len(),
            threads: last.and_then(|s| s.2),
            sockets: last.and_then(|s| s.3),
        });
    }
}

/// Prints rows as a table.
pub fn print_table(rows: &[StartupRow]) {
    println!(
        "{:<16} {:>6} {:>10} {:>10} {:>7} {:>13} {:>6} {:>8} {:>8}",
        "test", "ranks", "lumen ms", "baseline", "ratio", "range", "rounds", "threads", "sockets"
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
