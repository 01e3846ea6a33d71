//! Lumen's benchmarks: the comparative suites behind `lumen bench`, each
//! measuring Lumen beside its anchor in the same run, and criterion
//! micro-benchmarks of the hot paths (`benches/*.rs`, `cargo bench -p
//! lumen-benches`).
//!
//! This crate sits at the top of the workspace: it depends on `lumen` (the
//! runtime suite drives an embedded cluster through the facade) and on the
//! crates below it; nothing depends on it, and it must stay that way — the
//! suites are not part of the library users link.
//!
//! # The suites
//!
//! | module | command | compared with |
//! |---|---|---|
//! | [`transport`](mod@transport) (+ [`netns`]) | `lumen bench transport` | Open MPI's OSU-style ping-pong ([`mpi`], `mpi/mpi_pingpong.c`); memcpy; raw sockets and iperf3 across network namespaces |
//! | [`collectives`] | `lumen bench collectives` | Open MPI running `mpi/mpi_coll.c` |
//! | [`runtime`] | `lumen bench runtime` (alias `core`) | Ray's microbenchmark rows (`ray/ray_micro.py`) |
//! | [`startup`] | `lumen bench startup` | `mpirun -n N` of MPI_Init, a barrier, MPI_Finalize (`mpi/mpi_hello.c`) |
//! | [`chaos`] | `lumen bench chaos` | nothing: fault-injection rounds (SIGKILLed workers during a DAG), counted |
//!
//! Reports are ratios (Lumen time / baseline time, so below 1.0 is better
//! for latency; Lumen rate / baseline rate, so above 1.0 is better for
//! bandwidth and rates), printed as tables and optionally written as JSON.
//!
//! # One executable: `lumen-bench`
//!
//! `lumen bench ARGS` runs `lumen-bench ARGS` the way git and cargo run
//! their external subcommands: the `lumen-bench` next to the running `lumen`,
//! else the one on `PATH`, with the exit code passed through. The suites are
//! a separate executable because they need the whole runtime: a `lumen`
//! binary that contained them would make the `lumen` package depend on its
//! own benchmark crate. Build both with a workspace `cargo build` (or
//! `cargo build --release -p lumen-benches`).
//!
//! `lumen-bench` is also its own worker. The transport and collectives
//! suites start their ranks as `lumen-bench launch -n N -- lumen-bench
//! worker ...` (`launch` is `lumen run`: the same [`lumen_launcher::spawn`]
//! code), and the runtime suite's embedded cluster re-executes
//! `lumen-bench` itself, whose pre-`main` worker entry serves the remote
//! functions and actors of [`runtime`] (they are linked into this binary).
//!
//! # Layout
//!
//! ```text
//! benches/
//!   src/        the suites (this library) and src/main.rs, the lumen-bench CLI
//!   benches/    criterion: frame and wire codec, shm ring, ref table, placement
//!   mpi/        the Open MPI baselines (C, compiled with mpicc on first use)
//!   ray/        the Ray baseline (Python, run in scripts/install-ray-baseline.sh's venv)
//! ```

pub mod chaos;
pub mod collectives;
pub mod fabric;
pub mod mpi;
pub mod netns;
pub mod objects;
pub mod plot;
pub mod rounds;
pub mod runtime;
pub mod sched;
pub mod startup;
pub mod transport;

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context};
use serde::Serialize;

/// One measured row.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// "shm", "tcp" (loopback) or "tcp-netns" (two namespace hosts).
    pub transport: String,
    /// "latency" (µs) or "bandwidth" (MB/s).
    pub test: String,
    /// Message size in bytes.
    pub size: usize,
    /// Lumen's value.
    pub lumen: f64,
    /// What Lumen is compared with: "open-mpi", "raw-tcp" or "iperf3".
    pub baseline_name: String,
    /// The baseline's value in the same unit, when it ran.
    pub baseline: Option<f64>,
    /// Latency: lumen / baseline (lower is better). Bandwidth: lumen / baseline (higher is better).
    /// With several rounds: the median of the per-round ratios (`lumen`
    /// and `baseline` are then the medians of each side's values).
    pub ratio: Option<f64>,
    /// The smallest and largest per-round ratio (several rounds).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ratio_range: Option<(f64, f64)>,
    /// Rounds measured (Lumen and the baseline alternating).
    pub rounds: usize,
}

impl Row {
    /// A row with its ratio computed.
    pub fn new(
        transport: &str,
        test: &str,
        size: usize,
        lumen: f64,
        baseline_name: &str,
        baseline: Option<f64>,
    ) -> Self {
        Row {
            transport: transport.to_string(),
            test: test.to_string(),
            size,
            lumen,
            baseline_name: baseline_name.to_string(),
            baseline,
            ratio: baseline.map(|b| lumen / b),
            ratio_range: None,
            rounds: 1,
        }
    }

    /// A row from alternating rounds (see [`rounds`]).
    pub fn from_series(
        transport: &str,
        test: &str,
        size: usize,
        baseline_name: &str,
        series: &rounds::Series,
    ) -> Self {
        Row {
            transport: transport.to_string(),
            test: test.to_string(),
            size,
            lumen: series.lumen_median(),
            baseline_name: baseline_name.to_string(),
            baseline: series.baseline_median(),
            ratio: series.ratio_median(),
            ratio_range: series.ratio_range(),
            rounds: series.lumen.len(),
        }
    }
}

/// A suite's report as `--json` writes it: the run's facts, the load of
/// each round, and the rows.
#[derive(Debug, Clone, Serialize)]
pub struct Report<R: Serialize> {
    /// Commit, date, machine, command, placement.
    pub info: rounds::RunInfo,
    /// The load check around each round, per part of the suite.
    pub loads: Vec<(String, Vec<rounds::RoundLoad>)>,
    /// The figures.
    pub rows: Vec<R>,
}

/// Parses the `{"test":..,"size":..,"usec"|"mbps":..}` lines a worker prints.
pub fn parse_json_rows(stdout: &[u8]) -> anyhow::Result<Vec<(String, usize, f64)>> {
    let mut rows = Vec::new();
    for line in String::from_utf8_lossy(stdout)
        .lines()
        .filter(|l| l.starts_with('{'))
    {
        let v: serde_json::Value =
            serde_json::from_str(line).with_context(|| format!("parsing worker line {line}"))?;
        let test = v["test"].as_str().unwrap_or_default().to_string();
        let size = v["size"].as_u64().unwrap_or_default() as usize;
        let value = v["usec"]
            .as_f64()
            .or(v["mbps"].as_f64())
            .unwrap_or(f64::NAN);
        rows.push((test, size, value));
    }
    Ok(rows)
}

/// This benchmark executable (`lumen-bench`): the launcher and the worker
/// of every suite's ranks.
pub(crate) fn bench_exe() -> anyhow::Result<PathBuf> {
    std::env::current_exe().context("locating the lumen-bench binary")
}

/// Options of `lumen bench transport`.
#[derive(Debug, Clone)]
pub struct TransportBenchOptions {
    /// Sizes in bytes.
    pub sizes: Vec<usize>,
    /// Iteration scale (1.0 = OSU-like counts; smaller for smoke runs).
    pub scale: f64,
    /// Measure shared memory.
    pub shm: bool,
    /// Measure TCP (two ranks forced onto two "nodes", over loopback).
    pub tcp: bool,
    /// Run the Open MPI baseline.
    pub baseline: bool,
    /// Also measure TCP between two network-namespace hosts against raw sockets and iperf3.
    pub netns: bool,
    /// Rounds of Lumen and Open MPI, alternating (see [`rounds`]).
    pub rounds: usize,
    /// Lumen's TCP receivers to measure (`LUMEN_TCP_BACKEND` values:
    /// "epoll", "uring"); each is its own part, alternating with Open MPI.
    /// The first is reported as "tcp", others as "tcp-NAME".
    pub tcp_backends: Vec<String>,
}

/// How the transport suite places its processes (printed and recorded).
pub const TRANSPORT_PLACEMENT: &str = "2 ranks on this machine each side; Lumen's ranks pinned to cores 0 and 1 (sched_setaffinity), Open MPI's with --bind-to core; TCP over loopback on both sides";

/// Runs the two-rank worker under `lumen-bench launch` and parses its JSON lines.
fn lumen_rows(
    tcp: Option<&str>,
    options: &TransportBenchOptions,
) -> anyhow::Result<Vec<(String, usize, f64)>> {
    let backend = tcp;
    let tcp = tcp.is_some();
    let exe = bench_exe()?;
    let sizes: Vec<String> = options.sizes.iter().map(ToString::to_string).collect();
    let mut command = Command::new(&exe);
    command.args(["launch", "-n", "2"]);
    if tcp {
        command.args(["--hosts", "bench-node-a:1,bench-node-b:1"]);
    }
    command.arg("--").arg(&exe).args([
        "worker",
        "transport",
        "--scale",
        &options.scale.to_string(),
        "--sizes",
        &sizes.join(","),
    ]);
    if let Some(backend) = backend {
        // Loopback, as the Open MPI baseline uses (btl_tcp_if_include=lo).
        command.env("LUMEN_TCP_IF", "lo");
        command.env("LUMEN_TCP_BACKEND", backend);
    }
    let output = command.output().context("starting lumen-bench launch")?;
    if !output.status.success() {
        bail!(
            "lumen bench worker failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    parse_json_rows(&output.stdout)
}

/// The TCP receivers to measure (`--tcp-backends`, else "auto") and the
/// name of each one's rows: `prefix` for the first, `prefix-NAME` after.
pub(crate) fn tcp_receivers<'a>(
    options: &'a TransportBenchOptions,
    prefix: &str,
) -> Vec<(String, &'a str)> {
    let backends: Vec<&str> = if options.tcp_backends.is_empty() {
        vec!["auto"]
    } else {
        options.tcp_backends.iter().map(String::as_str).collect()
    };
    backends
        .into_iter()
        .enumerate()
        .map(|(i, backend)| {
            let name = if i == 0 {
                prefix.to_string()
            } else {
                format!("{prefix}-{backend}")
            };
            (name, backend)
        })
        .collect()
}

/// `lumen bench transport`: Lumen and Open MPI in alternating rounds.
pub fn transport(options: &TransportBenchOptions) -> anyhow::Result<Report<Row>> {
    let mut rows = Vec::new();
    let mut loads = Vec::new();
    let mut parts: Vec<(String, Option<&str>)> = Vec::new();
    if options.shm {
        parts.push(("shm".into(), None));
    }
    if options.tcp {
        for (name, backend) in tcp_receivers(options, "tcp") {
            parts.push((name, Some(backend)));
        }
    }
    for (name, backend) in &parts {
        let (name, tcp) = (name.as_str(), backend.is_some());
        let key = |test: &str, size: usize| format!("{test}/{size}");
        let lumen = || -> anyhow::Result<rounds::Measured> {
            Ok(lumen_rows(*backend, options)?
                .into_iter()
                .map(|(test, size, value)| (key(&test, size), value))
                .collect())
        };
        let mut mpi_available = options.baseline;
        let mut mpi = || -> anyhow::Result<rounds::Measured> {
            if !mpi_available {
                return Ok(Vec::new());
            }
            match mpi::run(tcp, &options.sizes, options.scale) {
                Ok(rows) => Ok(rows
                    .into_iter()
                    .filter_map(|r| r.usec.or(r.mbps).map(|v| (key(&r.test, r.size), v)))
                    .collect()),
                Err(e) => {
                    eprintln!("lumen bench: Open MPI baseline unavailable: {e:#}");
                    mpi_available = false;
                    Ok(Vec::new())
                }
            }
        };
        let (series, round_loads) = rounds::alternate(options.rounds, lumen, Some(&mut mpi))?;
        loads.push((name.to_string(), round_loads));
        for s in &series {
            let Some((test, size)) = s.key.split_once('/') else {
                continue;
            };
            let size = size.parse().unwrap_or_default();
            rows.push(Row::from_series(name, test, size, "open-mpi", s));
        }
    }
    if options.shm {
        // The physical limit of a single-copy transfer on one node: memcpy.
        let shm_bandwidth: Vec<(usize, f64)> = rows
            .iter()
            .filter(|r| r.transport == "shm" && r.test == "bandwidth")
            .map(|r| (r.size, r.lumen))
            .collect();
        for (size, lumen) in shm_bandwidth {
            rows.push(Row::new(
                "shm",
                "bandwidth",
                size,
                lumen,
                "memcpy",
                Some(memcpy_mbps(size)),
            ));
        }
    }
    if options.netns {
        rows.extend(netns::run(options)?);
    }
    Ok(Report {
        // Its own BENCHMARKS.md section when several receivers were compared.
        info: rounds::RunInfo::now(
            if options.tcp_backends.len() > 1 {
                "transport, tcp receivers"
            } else {
                "transport"
            },
            TRANSPORT_PLACEMENT,
        ),
        loads,
        rows,
    })
}

/// memcpy throughput for `size`-byte copies between two buffers, in MB/s.
pub fn memcpy_mbps(size: usize) -> f64 {
    let source = vec![0x3cu8; size.max(1)];
    let mut destination = vec![0u8; size.max(1)];
    let repeats = ((256usize << 20) / size.max(1)).clamp(10, 1_000_000);
    destination.copy_from_slice(&source);
    let start = std::time::Instant::now();
    for _ in 0..repeats {
        destination.copy_from_slice(std::hint::black_box(&source));
        std::hint::black_box(&mut destination);
    }
    (size * repeats) as f64 / start.elapsed().as_secs_f64() / 1e6
}

/// Prints rows as a table.
pub fn print_table(rows: &[Row]) {
    println!(
        "{:<9} {:<9} {:>8} {:>15} {:>9} {:>10} {:>7} {:>13}",
        "transport", "test", "size", "lumen", "baseline", "value", "ratio", "ratio range"
    );
    for r in rows {
        let unit = if r.test == "latency" { "us" } else { "MB/s" };
        let baseline = r
            .baseline
            .map(|m| format!("{m:.2}"))
            .unwrap_or_else(|| "n/a".into());
        let ratio = r
            .ratio
            .map(|x| format!("{x:.2}"))
            .unwrap_or_else(|| "n/a".into());
        let range = r
            .ratio_range
            .map(|(lo, hi)| format!("{lo:.2}-{hi:.2}"))
            .unwrap_or_default();
        println!(
            "{:<9} {:<9} {:>8} {:>10.2} {unit:<4} {:>9} {:>10} {:>7} {:>13}",
            r.transport, r.test, r.size, r.lumen, r.baseline_name, baseline, ratio, range
        );
    }
}

/// Pins the calling thread to one core (`index` modulo the cores we may use),
/// as `mpirun --bind-to core` does for the baseline.
pub fn pin_to_core(index: usize) {
    // SAFETY: cpu_set_t is plain data; sched_{get,set}affinity only read/write it.
    unsafe {
        let mut allowed: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut allowed) != 0 {
            return;
        }
        let cores: Vec<usize> = (0..libc::CPU_SETSIZE as usize)
            .filter(|&c| libc::CPU_ISSET(c, &allowed))
            .collect();
        if cores.is_empty() {
            return;
        }
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cores[index % cores.len()], &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}
