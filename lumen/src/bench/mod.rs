//! `lumen bench`: benchmarks that compare Lumen with its anchor in the same run
//! and report ratios (Lumen time / baseline time, so below 1.0 is better for
//! latency; Lumen rate / baseline rate, so above 1.0 is better for bandwidth).

pub mod mpi;
pub mod transport;

use std::process::Command;

use anyhow::{bail, Context};
use serde::Serialize;

/// One measured row.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// "shm" or "tcp".
    pub transport: String,
    /// "latency" (µs) or "bandwidth" (MB/s).
    pub test: String,
    /// Message size in bytes.
    pub size: usize,
    /// Lumen's value.
    pub lumen: f64,
    /// Open MPI's value, when the baseline ran.
    pub mpi: Option<f64>,
    /// Latency: lumen / mpi (lower is better). Bandwidth: lumen / mpi (higher is better).
    pub ratio: Option<f64>,
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
}

/// Runs the two-rank worker under `lumen run` and parses its JSON lines.
fn lumen_rows(
    tcp: bool,
    options: &TransportBenchOptions,
) -> anyhow::Result<Vec<(String, usize, f64)>> {
    let exe = std::env::current_exe().context("locating the lumen binary")?;
    let sizes: Vec<String> = options.sizes.iter().map(ToString::to_string).collect();
    let mut command = Command::new(&exe);
    command.args(["run", "-n", "2"]);
    if tcp {
        command.args(["--hosts", "bench-node-a:1,bench-node-b:1"]);
    }
    command.arg("--").arg(&exe).args([
        "bench-worker",
        "transport",
        "--scale",
        &options.scale.to_string(),
        "--sizes",
        &sizes.join(","),
    ]);
    let output = command.output().context("starting lumen run")?;
    if !output.status.success() {
        bail!(
            "lumen bench worker failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let mut rows = Vec::new();
    for line in String::from_utf8_lossy(&output.stdout)
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

/// `lumen bench transport`.
pub fn transport(options: &TransportBenchOptions) -> anyhow::Result<Vec<Row>> {
    let mut rows = Vec::new();
    for (name, tcp, enabled) in [("shm", false, options.shm), ("tcp", true, options.tcp)] {
        if !enabled {
            continue;
        }
        let lumen = lumen_rows(tcp, options)?;
        let baseline = if options.baseline {
            match mpi::run(tcp, &options.sizes, options.scale) {
                Ok(rows) => rows,
                Err(e) => {
                    eprintln!("lumen bench: Open MPI baseline unavailable: {e:#}");
                    Vec::new()
                }
            }
        } else {
            Vec::new()
        };
        for (test, size, value) in lumen {
            let mpi = baseline
                .iter()
                .find(|b| b.test == test && b.size == size)
                .and_then(|b| b.usec.or(b.mbps));
            rows.push(Row {
                transport: name.to_string(),
                test,
                size,
                lumen: value,
                mpi,
                ratio: mpi.map(|m| value / m),
            });
        }
    }
    Ok(rows)
}

/// Prints rows as a table.
pub fn print_table(rows: &[Row]) {
    println!(
        "{:<5} {:<10} {:>9} {:>12} {:>12} {:>8}",
        "tport", "test", "size", "lumen", "open-mpi", "ratio"
    );
    for r in rows {
        let unit = if r.test == "latency" { "us" } else { "MB/s" };
        let mpi = r
            .mpi
            .map(|m| format!("{m:.2}"))
            .unwrap_or_else(|| "n/a".into());
        let ratio = r
            .ratio
            .map(|x| format!("{x:.2}"))
            .unwrap_or_else(|| "n/a".into());
        println!(
            "{:<5} {:<10} {:>9} {:>9.2} {unit:<2} {:>12} {:>8}",
            r.transport, r.test, r.size, r.lumen, mpi, ratio
        );
    }
}
