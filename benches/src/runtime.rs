//! `lumen bench core` (alias `lumen bench runtime`): the core runtime against
//! Ray on the rows of Ray's own microbenchmark (`ray microbenchmark`,
//! `ray/_private/ray_perf.py`) that apply to Lumen, under Ray's row names and
//! definitions:
//!
//! | row | one timed call of the body |
//! |---|---|
//! | single client get calls | `get` of a small object put before |
//! | single client put calls | `put(0)` |
//! | single client put gigabytes | `put` of a 1 GiB array (GiB/s) |
//! | single client tasks and get batch | 1000 tasks submitted, then all got (batches/s) |
//! | single client wait 1k refs | 1000 tasks, then 1000 `wait(num_returns=1)` on the rest (rounds/s) |
//! | single client tasks sync | one task, submit and get |
//! | single client tasks async | 1000 tasks submitted, then all got (tasks/s) |
//! | 1:1 actor calls sync | one call, submit and get |
//! | 1:1 actor calls async | 1000 calls submitted, then all got (calls/s) |
//! | 1:n actor calls async | a client actor calls each of n actors 5000 times, then gets all |
//! | n:n actor calls async | 4 tasks holding the n actors' handles each make 5000 calls round-robin, then get all |
//!
//! n (the actors of 1:n and n:n) is half the cores, at least 1, as in
//! `ray_perf.py` (`cpu_count() // 2`). Lumen-only rows: a plain memcpy of
//! the same 1 GiB source as the put row (the anchor for put), and the time
//! of a task's first `get` of a 1 KiB (inline), a 1 MiB and a 1 GiB object
//! (node arena) put by the driver on the same node (median over tasks), to
//! show that a same-node get does not depend on the object's size.
//!
//! Timing follows Ray's `timeit` (`ray_microbenchmark_helpers.py`): a
//! warm-up, then four windows in which the body runs in steps of a tenth of
//! the warm-up count; the row is the mean (and standard deviation) of the
//! four rates. Ray runs its own `timeit` (1 s warm-up, 2 s windows, without
//! its 10 s pre-row sleep); Lumen runs the same loop with windows of a
//! quarter of that (0.25 s warm-up, 0.5 s windows: tens of thousands of
//! calls per window for most rows), so that the whole run stays near three
//! minutes. `--scale` multiplies Lumen's windows; below 1 (smoke runs) it
//! also shrinks both sides' windows and batch sizes.
//!
//! The source arrays are zero-filled as in `ray_perf.py` (`np.zeros`: fresh
//! pages that read as the kernel's zero page); the memcpy anchor reads the
//! same array, so put and memcpy are compared on equal terms.
//!
//! Lumen runs first, in this process as the driver of an embedded local
//! cluster (`--workers` worker processes: `lumen-bench` re-executed; its
//! pre-`main` worker entry serves the functions and actors below, which
//! the macros register in this binary). Ray then runs the same rows through
//! `benches/ray/ray_micro.py` (Ray's definitions copied verbatim, see its
//! docs) in the venv of `scripts/install-ray-baseline.sh` (installed on
//! demand), with `num_cpus` equal to `--workers`. Every Ray row is a rate;
//! each row's ratio is Lumen's rate over Ray's (above 1: Lumen is better).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;

use lumen::runtime::{ActorHandle, InitOptions, ObjectRef, Runtime};

/// `ray_perf.py`'s `small_value`.
#[lumen::remote]
fn small_value() -> Vec<u8> {
    b"ok".to_vec()
}

/// `ray_perf.py`'s `Actor` (no state; `small_value` returns two bytes).
#[lumen::actor]
struct BenchActor {}

#[lumen::actor]
impl BenchActor {
    fn new() -> Self {
        BenchActor {}
    }

    fn small_value(&self) -> Vec<u8> {
        b"ok".to_vec()
    }
}

/// `ray_perf.py`'s `Client`: calls each of its servers `n` times, then
/// gets every result.
#[lumen::actor]
struct BenchClient {
    servers: Vec<ActorHandle<BenchActor>>,
}

#[lumen::actor]
impl BenchClient {
    fn new(servers: Vec<ActorHandle<BenchActor>>) -> Self {
        BenchClient { servers }
    }

    fn small_value_batch(&self, n: u64) -> lumen::Result<u64> {
        let mut results = Vec::with_capacity(self.servers.len() * n as usize);
        for server in &self.servers {
            for _ in 0..n {
                results.push(server.small_value()?);
            }
        }
        for result in &results {
            result.get()?;
        }
        Ok(0)
    }
}

/// `ray_perf.py`'s `work` of the n:n row: `n` calls spread round-robin over
/// the actors, then every result got.
#[lumen::remote]
fn work(actors: Vec<ActorHandle<BenchActor>>, n: u64) -> lumen::Result<u64> {
    let results = actors
        .iter()
        .cycle()
        .take(n as usize)
        .map(|actor| actor.small_value())
        .collect::<lumen::Result<Vec<_>>>()?;
    for result in &results {
        result.get()?;
    }
    Ok(0)
}

/// Times this rank's first `get` of `object` (put by the driver); checks
/// its length. Returns nanoseconds.
#[lumen::remote]
fn timed_first_get(object: ObjectRef<[u8]>, len: u64) -> Result<u64, String> {
    let start = Instant::now();
    let view = object.get().map_err(|e| e.to_string())?;
    let elapsed = start.elapsed();
    if view.len() as u64 != len {
        return Err(format!("got {} bytes of a {len}-byte object", view.len()));
    }
    Ok(elapsed.as_nanos() as u64)
}

/// Options of `lumen bench core`.
#[derive(Debug, Clone)]
pub struct RuntimeBenchOptions {
    /// Worker processes (Lumen) and `num_cpus` (Ray).
    pub workers: u32,
    /// Multiplies Lumen's timing windows; below 1 also shrinks both sides'
    /// windows and batch sizes (smoke runs).
    pub scale: f64,
    /// Run Ray's side too.
    pub ray: bool,
    /// Ray's virtual environment.
    pub ray_venv: PathBuf,
}

/// One row: a measurement of both systems.
#[derive(Debug, Clone, Serialize)]
pub struct RuntimeRow {
    /// Row name: Ray's, for the rows of its microbenchmark.
    pub test: String,
    /// "tasks/s", "calls/s", "gets/s", "puts/s", "GiB/s", "batches/s",
    /// "rounds/s"; "us" for the Lumen-only get-latency rows.
    pub unit: String,
    /// Lumen's value (mean of the timing windows; median for "us").
    pub lumen: f64,
    /// Standard deviation of Lumen's value.
    pub lumen_sd: f64,
    /// Ray's value, when it ran and has this row.
    pub ray: Option<f64>,
    /// Standard deviation of Ray's value.
    pub ray_sd: Option<f64>,
    /// Lumen's rate over Ray's: above 1, Lumen is better.
    pub ratio: Option<f64>,
}

/// One side's measurement of a row.
#[derive(Debug, Clone)]
struct Measured {
    test: String,
    unit: String,
    value: f64,
    sd: f64,
}

/// The bytes of the put-gigabytes row and of the memcpy anchor.
const GIB: usize = 1 << 30;

/// Warm-up and window lengths of the `timeit` loop.
#[derive(Debug, Clone, Copy)]
struct Windows {
    warmup: Duration,
    window: Duration,
}

/// Ray's `timeit` loop: warm up for `warmup` counting calls, then four
/// windows of at least `window`, each running the body in steps of a tenth
/// of the warm-up count; returns the mean and standard deviation of
/// `multiplier × calls / seconds` over the windows.
fn timeit(
    windows: Windows,
    multiplier: f64,
    mut body: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<(f64, f64)> {
    let start = Instant::now();
    let mut count = 0u64;
    while start.elapsed() < windows.warmup {
        body()?;
        count += 1;
    }
    let step = count / 10 + 1;
    let mut rates = Vec::with_capacity(4);
    for _ in 0..4 {
        let start = Instant::now();
        let mut count = 0u64;
        while start.elapsed() < windows.window {
            for _ in 0..step {
                body()?;
            }
            count += step;
        }
        rates.push(multiplier * count as f64 / start.elapsed().as_secs_f64());
    }
    let mean = rates.iter().sum::<f64>() / rates.len() as f64;
    let variance = rates.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / rates.len() as f64;
    Ok((mean, variance.sqrt()))
}

/// The actors of the 1:n and n:n rows: `ray_perf.py`'s `cpu_count() // 2`,
/// at least 1.
fn actor_count() -> usize {
    (std::thread::available_parallelism().map_or(1, |n| n.get()) / 2).max(1)
}

/// Lumen's side of every row, in `ray_perf.py`'s order.
fn lumen_rows(options: &RuntimeBenchOptions) -> anyhow::Result<Vec<Measured>> {
    let rt = InitOptions::new().num_workers(options.workers).init()?;
    let rows = lumen_rows_on(&rt, options);
    rt.shutdown()?;
    rows
}

fn lumen_rows_on(rt: &Runtime, options: &RuntimeBenchOptions) -> anyhow::Result<Vec<Measured>> {
    let windows = Windows {
        warmup: Duration::from_secs_f64(0.25 * options.scale),
        window: Duration::from_secs_f64(0.5 * options.scale),
    };
    let shrink = options.scale.min(1.0);
    let count = |base: u64| ((base as f64 * shrink) as u64).max(10);
    let batch = count(1000);
    let calls_per_actor = count(5000);
    let callers = 4u64;
    let n_actors = actor_count();

    let mut rows = Vec::new();
    let mut timed = |test: &str,
                     unit: &str,
                     multiplier: f64,
                     body: &mut dyn FnMut() -> anyhow::Result<()>|
     -> anyhow::Result<()> {
        let (value, sd) = timeit(windows, multiplier, body).with_context(|| test.to_string())?;
        rows.push(Measured {
            test: test.to_string(),
            unit: unit.to_string(),
            value,
            sd,
        });
        Ok(())
    };

    // Start every worker so process start-up is not in the first row.
    let warm = (0..options.workers * 4)
        .map(|_| small_value::remote(rt))
        .collect::<lumen::Result<Vec<_>>>()?;
    for r in &warm {
        r.get()?;
    }
    drop(warm);

    let value = rt.put(&0u64)?;
    timed("single client get calls", "gets/s", 1.0, &mut || {
        value.get()?;
        Ok(())
    })?;
    timed("single client put calls", "puts/s", 1.0, &mut || {
        rt.put(&0u64)?;
        Ok(())
    })?;

    let arr = vec![0i64; GIB / 8];
    timed("single client put gigabytes", "GiB/s", 1.0, &mut || {
        rt.put_slice(&arr)?;
        Ok(())
    })?;
    let mut target = vec![1i64; arr.len()];
    timed("memcpy 1 GiB (same source)", "GiB/s", 1.0, &mut || {
        target.copy_from_slice(std::hint::black_box(&arr));
        std::hint::black_box(&mut target);
        Ok(())
    })?;
    drop((arr, target));

    let submit_batch = |n: u64| {
        (0..n)
            .map(|_| small_value::remote(rt))
            .collect::<lumen::Result<Vec<_>>>()
    };
    timed(
        "single client tasks and get batch",
        "batches/s",
        1.0,
        &mut || {
            for r in &submit_batch(batch)? {
                r.get()?;
            }
            Ok(())
        },
    )?;
    timed("single client wait 1k refs", "rounds/s", 1.0, &mut || {
        let mut not_ready = submit_batch(batch)?;
        for _ in 0..batch {
            // Ray's loop rebinds `not_ready` to wait's answer; handing the
            // list over by value is the same (wait moves the refs instead
            // of cloning them).
            let (_ready, rest) = lumen::wait(not_ready, 1, None)?;
            not_ready = rest;
        }
        Ok(())
    })?;
    timed("single client tasks sync", "tasks/s", 1.0, &mut || {
        small_value::remote(rt)?.get()?;
        Ok(())
    })?;
    timed(
        "single client tasks async",
        "tasks/s",
        batch as f64,
        &mut || {
            for r in &submit_batch(batch)? {
                r.get()?;
            }
            Ok(())
        },
    )?;

    let actor = BenchActor::new_remote(rt)?;
    timed("1:1 actor calls sync", "calls/s", 1.0, &mut || {
        actor.small_value()?.get()?;
        Ok(())
    })?;
    let actor = BenchActor::new_remote(rt)?;
    timed(
        "1:1 actor calls async",
        "calls/s",
        batch as f64,
        &mut || {
            let calls = (0..batch)
                .map(|_| actor.small_value())
                .collect::<lumen::Result<Vec<_>>>()?;
            for r in &calls {
                r.get()?;
            }
            Ok(())
        },
    )?;

    let servers = (0..n_actors)
        .map(|_| BenchActor::new_remote(rt))
        .collect::<lumen::Result<Vec<_>>>()?;
    let client = BenchClient::new_remote(rt, servers.clone())?;
    let multiplier = (calls_per_actor * n_actors as u64) as f64;
    timed("1:n actor calls async", "calls/s", multiplier, &mut || {
        client.small_value_batch(calls_per_actor)?.get()?;
        Ok(())
    })?;

    let actors = (0..n_actors)
        .map(|_| BenchActor::new_remote(rt))
        .collect::<lumen::Result<Vec<_>>>()?;
    let multiplier = (callers * calls_per_actor) as f64;
    timed("n:n actor calls async", "calls/s", multiplier, &mut || {
        let callers = (0..callers)
            .map(|_| work::remote(rt, actors.clone(), calls_per_actor))
            .collect::<lumen::Result<Vec<_>>>()?;
        for r in &callers {
            r.get()?;
        }
        Ok(())
    })?;

    let samples = count(20) as usize;
    for (test, len) in [
        ("same-node first get, 1 KiB object", 1usize << 10),
        ("same-node first get, 1 MiB object", 1 << 20),
        ("same-node first get, 1 GiB object", GIB),
    ] {
        let object = rt.put_slice(&vec![7u8; len])?;
        let mut micros = (0..samples)
            .map(|_| -> anyhow::Result<f64> {
                let nanos = timed_first_get::remote(rt, object.clone(), len as u64)?.get()?;
                Ok(nanos as f64 / 1e3)
            })
            .collect::<anyhow::Result<Vec<f64>>>()
            .with_context(|| test.to_string())?;
        micros.sort_by(f64::total_cmp);
        let mean = micros.iter().sum::<f64>() / micros.len() as f64;
        let sd =
            (micros.iter().map(|m| (m - mean).powi(2)).sum::<f64>() / micros.len() as f64).sqrt();
        rows.push(Measured {
            test: test.to_string(),
            unit: "us".to_string(),
            value: micros[micros.len() / 2],
            sd,
        });
    }
    Ok(rows)
}

fn ray_script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("ray/ray_micro.py")
}

fn ray_installer() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/install-ray-baseline.sh")
}

/// Ray's side: `ray_micro.py` in the venv (installed first if missing).
fn ray_rows(options: &RuntimeBenchOptions) -> anyhow::Result<Vec<Measured>> {
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
        anyhow::ensure!(
            status.success(),
            "installing Ray into {} failed (see the output above); run \
             scripts/install-ray-baseline.sh by hand or pass --ray-venv",
            options.ray_venv.display()
        );
    }
    let output = std::process::Command::new(&python)
        .arg(ray_script())
        .args(["--scale", &options.scale.to_string()])
        .args(["--workers", &options.workers.to_string()])
        .args(["--actors", &actor_count().to_string()])
        .output()
        .context("running benches/ray/ray_micro.py")?;
    anyhow::ensure!(
        output.status.success(),
        "Ray's benchmark (benches/ray/ray_micro.py) failed:\n{}",
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
            rows.push(Measured {
                test: test.to_string(),
                unit: v["unit"].as_str().unwrap_or_default().to_string(),
                value,
                sd: v["sd"].as_f64().unwrap_or(0.0),
            });
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
        .map(|row| {
            let ray = ray
                .iter()
                .find(|r| r.test == row.test && r.unit == row.unit);
            RuntimeRow {
                ratio: ray.map(|r| row.value / r.value),
                ray: ray.map(|r| r.value),
                ray_sd: ray.map(|r| r.sd),
                test: row.test,
                unit: row.unit,
                lumen: row.value,
                lumen_sd: row.sd,
            }
        })
        .collect())
}

fn find<'a>(rows: &'a [RuntimeRow], test: &str) -> Option<&'a RuntimeRow> {
    rows.iter().find(|r| r.test == test)
}

/// Prints the rows as a table, then put against memcpy and the two get
/// latencies against each other.
pub fn print_table(rows: &[RuntimeRow]) {
    println!(
        "{:<36} {:>9} {:>14} {:>7} {:>12} {:>7} {:>10}",
        "test", "unit", "lumen", "±", "ray", "±", "lumen/ray"
    );
    let percent = |sd: f64, value: f64| format!("{:.0}%", 100.0 * sd / value.abs().max(1e-12));
    for row in rows {
        let ray = row.ray.map_or("-".to_string(), |v| format!("{v:.2}"));
        let ray_sd = match (row.ray, row.ray_sd) {
            (Some(v), Some(sd)) => percent(sd, v),
            _ => "-".to_string(),
        };
        let ratio = row.ratio.map_or("-".to_string(), |v| format!("{v:.1}x"));
        println!(
            "{:<36} {:>9} {:>14.2} {:>7} {:>12} {:>7} {:>10}",
            row.test,
            row.unit,
            row.lumen,
            percent(row.lumen_sd, row.lumen),
            ray,
            ray_sd,
            ratio
        );
    }
    println!("(lumen/ray: Lumen's rate over Ray's, above 1 Lumen is better; ±: sd over windows)");
    if let (Some(put), Some(memcpy)) = (
        find(rows, "single client put gigabytes"),
        find(rows, "memcpy 1 GiB (same source)"),
    ) {
        println!(
            "put 1 GiB at {:.0}% of memcpy of the same source",
            100.0 * put.lumen / memcpy.lumen
        );
    }
    if let (Some(small), Some(large), Some(memcpy)) = (
        find(rows, "same-node first get, 1 KiB object"),
        find(rows, "same-node first get, 1 GiB object"),
        find(rows, "memcpy 1 GiB (same source)"),
    ) {
        println!(
            "same-node get: 1 GiB object {:.1} us, 1 KiB object {:.1} us ({:.2}x); \
             copying 1 GiB would take {:.0} us",
            large.lumen,
            small.lumen,
            large.lumen / small.lumen,
            1e6 / memcpy.lumen
        );
    }
}
