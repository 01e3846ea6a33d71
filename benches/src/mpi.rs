//! The Open MPI baseline: our own OSU-style program (benches/mpi/mpi_pingpong.c),
//! compiled with Debian's `mpicc` on first use and run under `mpirun -n 2`.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context};

const SOURCE: &str = include_str!("../mpi/mpi_pingpong.c");

/// One line of the baseline's JSON output.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct MpiRow {
    /// "latency" or "bandwidth".
    pub test: String,
    /// Message size in bytes.
    pub size: usize,
    /// Half round trip, µs (latency rows).
    pub usec: Option<f64>,
    /// MB/s (bandwidth rows).
    pub mbps: Option<f64>,
}

/// Compiles an embedded MPI C program with `mpicc` once per source text
/// (cached in the temp dir under a hash of the source) and returns the binary.
pub(crate) fn compile(name: &str, source_text: &str) -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("lumen-{name}-{:016x}", fxhash(source_text)));
    let binary = dir.join(name);
    if binary.exists() {
        return Ok(binary);
    }
    std::fs::create_dir_all(&dir)?;
    let source = dir.join(format!("{name}.c"));
    std::fs::write(&source, source_text)?;
    let status = Command::new("mpicc")
        .args(["-O2", "-o"])
        .arg(&binary)
        .arg(&source)
        .status()
        .context("running mpicc (install Open MPI: scripts/install-deps.sh)")?;
    if !status.success() {
        bail!("mpicc failed with {status}");
    }
    Ok(binary)
}

fn build() -> anyhow::Result<PathBuf> {
    compile("mpi_pingpong", SOURCE)
}

fn fxhash(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// Runs the baseline over `btl` ("vader" for shared memory, "tcp" for loopback TCP).
pub fn run(tcp: bool, sizes: &[usize], scale: f64) -> anyhow::Result<Vec<MpiRow>> {
    let binary = build()?;
    let sizes: Vec<String> = sizes.iter().map(ToString::to_string).collect();
    let iters = ((10_000.0 * scale) as usize).max(10).to_string();
    let bw_iters = ((100.0 * scale) as usize).max(5).to_string();
    let mut command = Command::new("mpirun");
    command
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .env("OMPI_MCA_oob_tcp_if_include", "lo")
        .args([
            "-n",
            "2",
            "--oversubscribe",
            "--bind-to",
            "core",
            "--mca",
            "pml",
            "ob1",
            "--mca",
            "btl",
        ])
        .arg(if tcp { "self,tcp" } else { "self,vader" });
    if tcp {
        command.env("OMPI_MCA_btl_tcp_if_include", "lo");
    }
    let output = command
        .arg(&binary)
        .args(["-i", &iters, "-b", &bw_iters])
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
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).with_context(|| format!("parsing baseline line {l}")))
        .collect()
}
