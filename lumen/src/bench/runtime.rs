//! `lumen bench runtime`: the core runtime against Ray on the rows of Ray's
//! own microbenchmark that apply (`ray microbenchmark`, `ray_perf.py`):
//! sync task latency, task throughput, sync actor-call latency, actor-call
//! throughput, small put/get latency, 64 MiB put/get bandwidth (plus a plain
//! 64 MiB memcpy for scale).
//!
//! Lumen runs first, in this process as the driver of an embedded local
//! cluster (`--workers` worker processes: this binary re-executed; its
//! pre-`main` worker entry serves). Ray then runs the same rows through
//! `benches/ray/ray_micro.py` in the venv of `scripts/install-ray-baseline.sh`
//! (installed on demand), with `num_cpus` equal to `--workers`. Each row
//! reports "speedup": how many times better Lumen is (Ray's latency over
//! Lumen's; Lumen's rate over Ray's).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use serde::Serialize;

use crate::runtime::{InitOptions, ObjectRef};

#[crate::remote]
fn noop() -> u64 {
    0
}

#[crate::remote]
fn add(a: u64, b: u64) -> u64 {
    a + b
}

/// The actor of the actor-call rows.
#[crate::actor]
struct BenchCounter {
    n: u64,
}

#[crate::actor]
impl BenchCounter {
    fn new() -> Self {
        BenchCounter { n: 0 }
    }

    fn incr(&mut self, by: u64) -> u64 {
        self.n += by;
        self.n
    }
}

/// Options of `lumen bench runtime`.
#[derive(Debug, Clone)]
pub struct RuntimeBenchOptions {
    /// Worker processes (Lumen) and `num_cpus` (Ray).
    pub workers: u32,
    /// Multiplies every iteration count.
    pub scale: f64,
    /// Run Ray's side too.
    pub ray: bool,
    /// Ray's virtual environment.
    pub ray_venv: PathBuf,
}

/// One row: a measurement of both systems.
#[derive(Debug, Clone, Serialize)]
pub struct RuntimeRow {
    /// Row name (as printed by `ray_micro.py`).
    pub test: String,
    /// "us", "tasks/s", "calls/s", "MB/s".
    pub unit: String,
    /// Lumen's value.
    pub lumen: f64,
    /// Ray's value, when it ran.
    pub ray: Option<f64>,
    /// How many times better Lumen is (higher is better).
    pub speedup: Option<f64>,
}

fn count(base: u64, scale: f64) -> u64 {
    ((base as f64 * scale) as u64).max(1)
}

fn lumen_rows(options: &RuntimeBenchOptions) -> anyhow::Result<Vec<(String, f64, String)>> {
    let rt = InitOptions::new().num_workers(options.workers).init()?;
    let mut rows = Vec::new();
    let mut row = |test: &str, value: f64, unit: &str| {
        rows.push((test.to_string(), value, unit.to_string()));
    };
    // Warm up every worker.
    let warm: Vec<ObjectRef<u64>> = (0..options.workers * 4)
        .map(|_| noop::remote(&rt))
        .collect::<crate::Result<_>>()?;
    for r in &warm {
        r.get()?;
    }

    let n = count(2000, options.scale);
    let start = Instant::now();
    for _ in 0..n {
        add::remote(&rt, 1, 2)?.get()?;
    }
    row(
        "task_sync_latency",
        start.elapsed().as_secs_f64() / n as f64 * 1e6,
        "us",
    );

    let n = count(10_000, options.scale);
    let start = Instant::now();
    let refs: Vec<ObjectRef<u64>> = (0..n)
        .map(|_| noop::remote(&rt))
        .collect::<crate::Result<_>>()?;
    crate::wait(&refs, refs.len(), None)?;
    row(
        "task_throughput",
        n as f64 / start.elapsed().as_secs_f64(),
        "tasks/s",
    );
    drop(refs);

    let actor = BenchCounter::new_remote(&rt)?;
    actor.incr(0)?.get()?;
    let n = count(2000, options.scale);
    let start = Instant::now();
    for _ in 0..n {
        actor.incr(1)?.get()?;
    }
    row(
        "actor_call_sync_latency",
        start.elapsed().as_secs_f64() / n as f64 * 1e6,
        "us",
    );

    let n = count(10_000, options.scale);
    let start = Instant::now();
    let refs: Vec<ObjectRef<u64>> = (0..n)
        .map(|_| actor.incr(1))
        .collect::<crate::Result<_>>()?;
    crate::wait(&refs, refs.len(), None)?;
    row(
        "actor_call_throughput",
        n as f64 / start.elapsed().as_secs_f64(),
        "calls/s",
    );
    drop(refs);

    let n = count(5000, options.scale);
    let start = Instant::now();
    for i in 0..n {
        rt.put(&i)?.get()?;
    }
    row(
        "put_get_small_latency",
        start.elapsed().as_secs_f64() / n as f64 * 1e6,
        "us",
    );

    let big = vec![1u8; 64 << 20];
    let n = count(20, options.scale);
    let start = Instant::now();
    for _ in 0..n {
        let r = rt.put_slice(&big)?;
        let view = r.get()?;
        anyhow::ensure!(view.len() == big.len(), "short read");
    }
    row(
        "put_get_64MiB_bandwidth",
        (n as f64 * big.len() as f64) / start.elapsed().as_secs_f64() / 1e6,
        "MB/s",
    );

    let mut target = vec![0u8; big.len()];
    let start = Instant::now();
    for _ in 0..n {
        target.copy_from_slice(std::hint::black_box(&big));
        std::hint::black_box(&mut target);
    }
    row(
        "memcpy_64MiB_bandwidth",
        (n as f64 * big.len() as f64) / start.elapsed().as_secs_f64() / 1e6,
        "MB/s",
    );
    rt.shutdown()?;
    Ok(rows)
}

fn ray_script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../benches/ray/ray_micro.py")
}

fn ray_installer() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/install-ray-baseline.sh")
}

fn ray_rows(options: &RuntimeBenchOptions) -> anyhow::Result<Vec<(String, f64)>> {
    let python = options.ray_venv.join("bin/python");
    let ready = std::process::Command::new(&python)
        .args(["-c", "import ray, numpy"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ready {
        eprintln!(
            "installing Ray into {} (once) ...",
            options.ray_venv.display()
        );
        let status = std::process::Command::new("bash")
            .arg(ray_installer())
            .arg(&options.ray_venv)
            .status()
            .context("running scripts/install-ray-baseline.sh")?;
        anyhow::ensure!(status.success(), "installing Ray failed");
    }
    let output = std::process::Command::new(&python)
        .arg(ray_script())
        .args(["--scale", &options.scale.to_string()])
        .args(["--workers", &options.workers.to_string()])
        .output()
        .context("running benches/ray/ray_micro.py")?;
    anyhow::ensure!(
        output.status.success(),
        "Ray's benchmark failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut rows = Vec::new();
    for line in String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|l| l.starts_with('{'))
    {
        let v: serde_json::Value =
            serde_json::from_str(line).with_context(|| format!("parsing Ray's line {line}"))?;
        if let (Some(test), Some(value)) = (v["test"].as_str(), v["value"].as_f64()) {
            rows.push((test.to_string(), value));
        }
    }
    Ok(rows)
}

/// Runs the benchmark (see the module docs).
pub fn run(options: &RuntimeBenchOptions) -> anyhow::Result<Vec<RuntimeRow>> {
    let lumen = lumen_rows(options)?;
    let ray = if options.ray {
        ray_rows(options)?
    } else {
        Vec::new()
    };
    Ok(lumen
        .into_iter()
        .map(|(test, value, unit)| {
            let ray = ray.iter().find(|(t, _)| *t == test).map(|(_, v)| *v);
            let speedup = ray.map(|r| if unit == "us" { r / value } else { value / r });
            RuntimeRow {
                test,
                unit,
                lumen: value,
                ray,
                speedup,
            }
        })
        .collect())
}

/// Prints the rows as a table.
pub fn print_table(rows: &[RuntimeRow]) {
    println!(
        "{:<26} {:>8} {:>14} {:>14} {:>10}",
        "test", "unit", "lumen", "ray", "speedup"
    );
    for row in rows {
        let ray = row.ray.map_or("-".to_string(), |v| format!("{v:.2}"));
        let speedup = row.speedup.map_or("-".to_string(), |v| format!("{v:.1}x"));
        println!(
            "{:<26} {:>8} {:>14.2} {:>14} {:>10}",
            row.test, row.unit, row.lumen, ray, speedup
        );
    }
}
