//! `lumen bench collectives`: OSU-style average latency of allreduce, bcast,
//! allgather, reduce_scatter and alltoall, Lumen beside Open MPI for the same
//! operations, sizes and rank counts in the same invocation, with the ratio
//! per size (Lumen / Open MPI: below 1.0 is better).
//!
//! Both sides run the same loop (see `benches/mpi/mpi_coll.c` for the size
//! conventions): per op and size a warm-up, then three trials opened by a
//! barrier, a rank's time is its best trial's average per iteration, and the
//! reported latency is the average over ranks. One node: `lumen run -n N`
//! (shared memory; started as `lumen-bench launch`, the same launcher) beside `mpirun -n N --mca btl self,vader`. With `--netns`:
//! 3 network-namespace nodes × 2 ranks (shared memory inside, TCP across),
//! and Open MPI launched into the same namespaces: `mpirun` runs its `orted`
//! on each "host" through `plm_rsh_agent` (a script that does `ip netns
//! exec`), with `routed=direct` (the default tree routing cannot reach
//! namespaces from each other's daemons), a vader backing directory per
//! namespace (Open MPI names its segments after the host name, which all
//! namespaces share, so ranks of different "nodes" would map the same
//! segment and crash), and `mpi_yield_when_idle` (six ranks on two cores,
//! as `LUMEN_COLL_YIELD=on` on Lumen's side).

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context};
use lumen_collectives::{Communicator, ReduceOp};
use serde::Serialize;

/// Sizes measured by default (bytes).
pub const DEFAULT_SIZES: &[usize] = &[8, 64, 1024, 8192, 65536, 262144, 1048576, 4194304];

/// Operations measured.
pub const OPS: &[&str] = &[
    "allreduce",
    "bcast",
    "allgather",
    "reduce_scatter",
    "alltoall",
];

const MPI_SOURCE: &str = include_str!("../mpi/mpi_coll.c");

/// Trials per op and size; the best one counts (both sides).
const TRIALS: usize = 3;

/// Options of `lumen bench collectives`.
#[derive(Debug, Clone)]
pub struct CollectivesBenchOptions {
    /// Sizes in bytes (see `mpi_coll.c` for what a size means per op).
    pub sizes: Vec<usize>,
    /// Rank counts on one node.
    pub ranks: Vec<u32>,
    /// Iteration scale (1.0: 1000 iterations up to 8 KiB; 0.01 for a smoke run).
    pub scale: f64,
    /// Operations.
    pub ops: Vec<String>,
    /// Run the Open MPI baseline.
    pub baseline: bool,
    /// Also 3 namespace nodes × 2 ranks (root).
    pub netns: bool,
    /// Alternating rounds (Lumen, then Open MPI) per one-node layout, each
    /// inside the load check of [`crate::rounds::with_load_checks`].
    pub rounds: usize,
}

/// One measured row, named as the other suites' rows are, so that
/// `lumen-bench markdown` renders it.
#[derive(Debug, Clone, Serialize)]
pub struct CollectiveRow {
    /// "1x2", "1x4" (nodes × ranks per node) or "3x2-netns".
    pub layout: String,
    /// Operation.
    pub test: String,
    /// "us": the figures are average latencies.
    pub unit: &'static str,
    /// Size in bytes.
    pub size: usize,
    /// Lumen's average latency, µs (median over the rounds).
    pub lumen: f64,
    /// "open-mpi".
    pub baseline_name: &'static str,
    /// Open MPI's, when it ran.
    pub baseline: Option<f64>,
    /// lumen / mpi (lower is better): the median of the per-round ratios.
    pub ratio: Option<f64>,
    /// Lowest and highest per-round ratio.
    pub ratio_range: Option<(f64, f64)>,
    /// Rounds behind the figures (latencies are medians over them).
    pub rounds: usize,
}

/// Iterations per trial for a size.
pub fn iterations(size: usize, scale: f64) -> usize {
    let small = ((1000.0 * scale) as usize).max(1);
    let n = if size <= 8192 {
        small
    } else {
        small * 8192 / size
    };
    n.max(if scale < 0.1 { 2 } else { 20 })
}

fn small_iterations(scale: f64) -> usize {
    ((1000.0 * scale) as usize).max(1)
}

/// The benchmark loop of one rank (run by `lumen-bench worker collectives`):
/// prints `{"test":op,"size":..,"usec":..}` lines at rank 0.
pub fn worker(
    comm: &Communicator,
    sizes: &[usize],
    ops: &[String],
    scale: f64,
) -> anyhow::Result<()> {
    let p = comm.size() as usize;
    let max = sizes.iter().copied().max().unwrap_or(4).max(4);
    let floats = max.div_ceil(4) * p;
    let mut a = vec![0f32; floats];
    let mut b = vec![0f32; floats];
    for op in ops {
        for &size in sizes {
            let count = size.div_ceil(4).max(1);
            let iters = iterations(size, scale);
            let warmup = (iters / 10).max(2);
            let mut best = f64::INFINITY;
            for trial in 0..=TRIALS {
                let n = if trial == 0 { warmup } else { iters };
                comm.barrier()?;
                let start = Instant::now();
                for _ in 0..n {
                    match op.as_str() {
                        "allreduce" => comm.allreduce(&mut a[..count], ReduceOp::Sum)?,
                        "bcast" => comm.bcast(&mut a[..count], 0)?,
                        "allgather" => comm.allgather(&a[..count], &mut b[..count * p])?,
                        "reduce_scatter" => {
                            comm.reduce_scatter(&a[..count * p], &mut b[..count], ReduceOp::Sum)?
                        }
                        "alltoall" => comm.alltoall(&a[..count * p], &mut b[..count * p])?,
                        other => bail!("unknown operation {other}; known: {}", OPS.join(", ")),
                    }
                }
                let per = start.elapsed().as_secs_f64() / n as f64;
                if trial > 0 {
                    best = best.min(per);
                }
            }
            let mut usec = [best * 1e6];
            comm.allreduce(&mut usec, ReduceOp::Sum)?;
            if comm.rank() == 0 {
                println!(
                    "{{\"test\":\"{op}\",\"size\":{size},\"usec\":{:.3}}}",
                    usec[0] / p as f64
                );
            }
        }
    }
    Ok(())
}

fn build_mpi() -> anyhow::Result<PathBuf> {
    super::mpi::compile("mpi_coll", MPI_SOURCE)
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn mpi_rows(
    ranks: u32,
    options: &CollectivesBenchOptions,
) -> anyhow::Result<Vec<(String, usize, f64)>> {
    let binary = build_mpi()?;
    let sizes: Vec<String> = options.sizes.iter().map(ToString::to_string).collect();
    let bind = if ranks as usize <= cores() {
        "core"
    } else {
        "none"
    };
    let output = Command::new("mpirun")
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .env("OMPI_MCA_oob_tcp_if_include", "lo")
        .args([
            "-n",
            &ranks.to_string(),
            "--oversubscribe",
            "--bind-to",
            bind,
        ])
        .args(["--mca", "pml", "ob1", "--mca", "btl", "self,vader"])
        .arg(&binary)
        .args(["-i", &small_iterations(options.scale).to_string()])
        .args(["-t", &TRIALS.to_string(), "-o", &options.ops.join(",")])
        .arg(sizes.join(","))
        .output()
        .context("running mpirun (install Open MPI: scripts/install-deps.sh)")?;
    if !output.status.success() {
        bail!(
            "the MPI baseline failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    super::parse_json_rows(&output.stdout)
}

fn worker_args(options: &CollectivesBenchOptions) -> Vec<String> {
    let sizes: Vec<String> = options.sizes.iter().map(ToString::to_string).collect();
    vec![
        "worker".into(),
        "collectives".into(),
        "--scale".into(),
        options.scale.to_string(),
        "--sizes".into(),
        sizes.join(","),
        "--ops".into(),
        options.ops.join(","),
    ]
}

fn lumen_rows(
    ranks: u32,
    options: &CollectivesBenchOptions,
) -> anyhow::Result<Vec<(String, usize, f64)>> {
    let exe = crate::bench_exe()?;
    let output = Command::new(&exe)
        .args(["launch", "-n", &ranks.to_string(), "--"])
        .arg(&exe)
        .args(worker_args(options))
        .output()
        .context("starting lumen-bench launch")?;
    if !output.status.success() {
        bail!(
            "lumen collectives worker failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    super::parse_json_rows(&output.stdout)
}

/// Lumen rows and (when `baseline`) Open MPI rows for 3 namespace nodes x 2
/// ranks. Open MPI's `mpirun` reaches the namespaces with
/// `plm_rsh_agent="ip netns exec"` (the host names are the namespaces).
type NetnsRows = (Vec<(String, usize, f64)>, Vec<(String, usize, f64)>);

fn netns_rows(options: &CollectivesBenchOptions) -> anyhow::Result<NetnsRows> {
    use lumen_testkit::{netns_unavailable_reason, unique_prefix, NetnsCluster};
    if let Some(reason) = netns_unavailable_reason() {
        bail!("network namespaces unavailable: {reason}");
    }
    let exe = crate::bench_exe()?;
    let cluster = NetnsCluster::create(&unique_prefix("lcb"), 3)?;
    let hosts: Vec<String> = (0..3)
        .map(|i| format!("{}:2", cluster.namespace(i)))
        .collect();
    let output = cluster
        .command(0, &exe)
        .args(["launch", "-n", "6", "--hosts", &hosts.join(",")])
        .args(["--launch-agent", "ip netns exec {host}"])
        .args(["--rendezvous-bind", &cluster.host_addr(0).to_string()])
        .arg("--")
        .arg(&exe)
        .args(worker_args(options))
        .env("LUMEN_TCP_IF", cluster.subnet_cidr())
        // Six ranks share this machine's cores, but each namespace "node"
        // sees only its own two, so the automatic oversubscription check
        // cannot tell; say it.
        .env("LUMEN_COLL_YIELD", "on")
        .output()
        .context("running lumen in the namespaces")?;
    let mpi = if options.baseline {
        let sizes: Vec<String> = options.sizes.iter().map(ToString::to_string).collect();
        let subnet = cluster.subnet_cidr();
        let result = build_mpi().and_then(|binary| {
            // mpirun runs `AGENT HOST COMMAND...` where COMMAND is shell
            // text (variable settings, then orted), as ssh would pass it.
            let agent = binary.with_file_name("netns-agent.sh");
            std::fs::write(
                &agent,
                // Open MPI names its shared-memory segments after the host
                // name, which every namespace shares: give each "node" its
                // own directory for them, or ranks of different nodes map
                // the same segment.
                "#!/bin/sh\nhost=\"$1\"; shift\ndir=/tmp/lumen-vader-$host\nmkdir -p \"$dir\"\nexport OMPI_MCA_btl_vader_backing_directory=\"$dir\"\nexec ip netns exec \"$host\" /bin/sh -c \"$*\"\n",
            )?;
            std::fs::set_permissions(&agent, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
            cluster
                .command(0, "mpirun")
                .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
                .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
                .args(["-n", "6", "--host", &hosts.join(","), "--oversubscribe"])
                .args(["--bind-to", "none", "--mca", "plm_rsh_agent"])
                .arg(&agent)
                .args(["--mca", "routed", "direct"])
                // As Lumen's LUMEN_COLL_YIELD=on above: six ranks share two
                // cores, which no "node" can see by itself.
                .args(["--mca", "mpi_yield_when_idle", "1"])
                .args(["--mca", "pml", "ob1", "--mca", "btl", "self,vader,tcp"])
                .args(["--mca", "btl_tcp_if_include", &subnet])
                .args(["--mca", "oob_tcp_if_include", &subnet])
                .arg(&binary)
                .args(["-i", &small_iterations(options.scale).to_string()])
                .args(["-t", &TRIALS.to_string(), "-o", &options.ops.join(",")])
                .arg(sizes.join(","))
                .output()
                .context("running mpirun across the namespaces")
                .and_then(|out| {
                    if !out.status.success() {
                        bail!(
                            "mpirun across namespaces failed ({}): {}",
                            out.status,
                            String::from_utf8_lossy(&out.stderr)
                        );
                    }
                    super::parse_json_rows(&out.stdout)
                })
        });
        result.unwrap_or_else(|e| {
            eprintln!("lumen bench: Open MPI baseline across namespaces unavailable: {e:#}");
            Vec::new()
        })
    } else {
        Vec::new()
    };
    for i in 0..3 {
        // The agent's per-namespace segment directories (see the agent).
        let _ = std::fs::remove_dir_all(format!("/tmp/lumen-vader-{}", cluster.namespace(i)));
    }
    cluster.destroy()?;
    if !output.status.success() {
        bail!(
            "lumen collectives worker across namespaces failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok((super::parse_json_rows(&output.stdout)?, mpi))
}

/// How both sides are placed, for the report.
const PLACEMENT: &str = "one node: N ranks, each pinned to a core when N <= cores (Lumen by its worker, Open MPI --bind-to core), else unpinned and yielding when idle on both sides; Open MPI pml ob1, btl self,vader. 3x2-netns: 6 ranks in 3 network namespaces joined by veth, unpinned, yielding, Open MPI adds btl tcp";

/// `lumen bench collectives`: per layout, K rounds of Lumen then Open MPI
/// inside the load check; each row gives the median latencies over the
/// rounds, the median per-round ratio and its range.
pub fn run(options: &CollectivesBenchOptions) -> anyhow::Result<crate::Report<CollectiveRow>> {
    let mut rows = Vec::new();
    let mut loads = Vec::new();
    type Side = Vec<(String, usize, f64)>;
    let mut add = |layout: &str, rounds: &[(Side, Side)]| {
        use crate::rounds::median;
        let Some((first, _)) = rounds.first() else {
            return;
        };
        for (op, size, _) in first {
            let find = |side: &Side| {
                side.iter()
                    .find(|(o, s, _)| o == op && s == size)
                    .map(|m| m.2)
            };
            let lumen: Vec<f64> = rounds.iter().filter_map(|(l, _)| find(l)).collect();
            let mpi: Vec<f64> = rounds.iter().filter_map(|(_, m)| find(m)).collect();
            let ratios: Vec<f64> = (rounds.iter())
                .filter_map(|(l, m)| Some(find(l)? / find(m)?))
                .collect();
            let range = crate::rounds::range(&ratios);
            rows.push(CollectiveRow {
                layout: layout.to_string(),
                test: op.clone(),
                unit: "us",
                size: *size,
                lumen: median(&lumen),
                baseline_name: "open-mpi",
                baseline: (!mpi.is_empty()).then(|| median(&mpi)),
                ratio: (!ratios.is_empty()).then(|| median(&ratios)),
                ratio_range: range,
                rounds: lumen.len(),
            });
        }
    };
    for &ranks in &options.ranks {
        // A B A B ...: each round runs Lumen, then Open MPI, inside the load check.
        let (rounds, round_loads) = crate::rounds::with_load_checks(
            options.rounds,
            || {
                let lumen = lumen_rows(ranks, options)?;
                let mpi = if options.baseline {
                    mpi_rows(ranks, options).unwrap_or_else(|e| {
                        eprintln!("lumen bench: Open MPI baseline unavailable: {e:#}");
                        Vec::new()
                    })
                } else {
                    Vec::new()
                };
                Ok((lumen, mpi))
            },
            || crate::rounds::wait_quiet(std::time::Duration::from_secs(5)),
            crate::rounds::machine_busy,
        )?;
        add(&format!("1x{ranks}"), &rounds);
        loads.push((format!("1x{ranks}"), round_loads));
    }
    if options.netns {
        // Each round builds the namespaces afresh and runs both sides in them.
        let (rounds, round_loads) = crate::rounds::with_load_checks(
            options.rounds,
            || netns_rows(options),
            || crate::rounds::wait_quiet(std::time::Duration::from_secs(5)),
            crate::rounds::machine_busy,
        )?;
        add("3x2-netns", &rounds);
        loads.push(("3x2-netns".to_string(), round_loads));
    }
    Ok(crate::Report {
        info: crate::rounds::RunInfo::now("collectives", PLACEMENT),
        loads,
        rows,
    })
}

/// Prints rows as a table.
pub fn print_table(rows: &[CollectiveRow]) {
    println!(
        "{:<10} {:<15} {:>9} {:>12} {:>12} {:>7} {:>13} {:>6}",
        "layout", "op", "size", "lumen us", "open-mpi us", "ratio", "range", "rounds"
    );
    for r in rows {
        let mpi = r
            .baseline
            .map(|m| format!("{m:.2}"))
            .unwrap_or_else(|| "n/a".into());
        let ratio = r
            .ratio
            .map(|x| format!("{x:.2}"))
            .unwrap_or_else(|| "n/a".into());
        let range = r
            .ratio_range
            .map(|(low, high)| format!("{low:.2}-{high:.2}"))
            .unwrap_or_else(|| "n/a".into());
        println!(
            "{:<10} {:<15} {:>9} {:>12.2} {:>12} {:>7} {:>13} {:>6}",
            r.layout, r.test, r.size, r.lumen, mpi, ratio, range, r.rounds
        );
    }
}
