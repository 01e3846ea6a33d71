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
//!
//! Lamellar (`--baseline lamellar`) runs the task rows that have an
//! active-message equivalent (`benches/lamellar`, built on demand by
//! `scripts/install-lamellar-baseline.sh`): `--workers + 1` PEs on the shmem
//! lamellae, one thread each, PE i pinned to core i, PE 0 driving, timed
//! with the same loop as Lumen's side.
//!
//! Rounds (`--rounds K`): Lumen, then each baseline, K times (ABAB...),
//! with the load check of [`crate::rounds`] around each round; a row is the
//! median over the rounds, its ratio the median of the rounds' ratios with
//! their range, and `lumen_rounds` keeps each round's value. The driver's
//! binding (the embedded cluster binds it under `LUMEN_BIND=auto`) is undone
//! after each Lumen round so that every round, and the baselines, start
//! from the same CPUs. Lumen-only rows count what a blocking round trip
//! costs besides time: caller and server sleeps (each a hand-off from
//! another thread), doorbell wake-up system calls, refused polls, and the
//! share of the machine's CPUs busy meanwhile (`RankStats`).

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

/// Sleeps `us` microseconds (the CPU cost of waiting for a longer task).
#[lumen::remote]
fn sleep_us(us: u64) -> u64 {
    std::thread::sleep(Duration::from_micros(us));
    us
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

/// A runtime to compare Lumen with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Baseline {
    /// Lamellar 0.8.1's active messages (`benches/lamellar`), shmem lamellae.
    Lamellar,
    /// Ray 2.60 (`benches/ray/ray_micro.py`).
    Ray,
    /// Lumen itself with the timeline recording (`LUMEN_TIMELINE`): the
    /// timeline's cost, on against off.
    Timeline,
}

impl Baseline {
    /// The name in `--baseline` and in the tables.
    pub fn name(self) -> &'static str {
        match self {
            Baseline::Lamellar => "lamellar",
            Baseline::Ray => "ray",
            Baseline::Timeline => "lumen+timeline",
        }
    }

    /// Parses `--baseline`'s comma-separated list (`lamellar,ray`).
    pub fn parse_list(list: &str) -> anyhow::Result<Vec<Baseline>> {
        list.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|name| match name {
                "lamellar" => Ok(Baseline::Lamellar),
                "ray" => Ok(Baseline::Ray),
                "timeline" => Ok(Baseline::Timeline),
                other => anyhow::bail!("unknown baseline {other:?}: lamellar, ray or timeline"),
            })
            .collect()
    }
}

/// Options of `lumen bench core`.
#[derive(Debug, Clone)]
pub struct RuntimeBenchOptions {
    /// Worker processes (Lumen), serving PEs (Lamellar: one more PE drives)
    /// and `num_cpus` (Ray).
    pub workers: u32,
    /// Multiplies Lumen's timing windows; below 1 also shrinks both sides'
    /// windows and batch sizes (smoke runs).
    pub scale: f64,
    /// The baselines run beside Lumen in every round.
    pub baselines: Vec<Baseline>,
    /// Ray's virtual environment.
    pub ray_venv: PathBuf,
    /// Lamellar's side (`benches/lamellar`, built on demand when missing).
    pub lamellar_bin: PathBuf,
    /// Rounds: Lumen, then each baseline, this many times.
    pub rounds: usize,
}

/// One row: Lumen's median over the rounds beside one baseline's.
#[derive(Debug, Clone, Serialize)]
pub struct RuntimeRow {
    /// Row name: Ray's, for the rows of its microbenchmark.
    pub test: String,
    /// "tasks/s", "calls/s", "gets/s", "puts/s", "GiB/s", "batches/s",
    /// "rounds/s"; "us" for the Lumen-only get-latency rows.
    pub unit: String,
    /// Lumen's value: the median over the rounds of each round's value
    /// (a round's value: the mean of its timing windows; for "us", the
    /// median over tasks).
    pub lumen: f64,
    /// The baseline of this row ("-" for a Lumen-only row).
    pub baseline_name: String,
    /// The baseline's median over the rounds.
    pub baseline: Option<f64>,
    /// The median of the rounds' ratios, Lumen's rate over the baseline's:
    /// above 1, Lumen is better.
    pub ratio: Option<f64>,
    /// The smallest and largest round's ratio.
    pub ratio_range: Option<(f64, f64)>,
    /// Rounds measured.
    pub rounds: usize,
    /// Lumen's largest standard deviation over a round's windows, as a
    /// share of its value.
    pub lumen_sd: f64,
    /// Lumen's value in each round, in order (a bimodal figure shows here).
    pub lumen_rounds: Vec<f64>,
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
/// Also returns how the driver was bound.
fn lumen_rows(options: &RuntimeBenchOptions) -> anyhow::Result<(Vec<Measured>, String)> {
    lumen_rows_with(options, None)
}

/// Lumen's rows; with `timeline`, the runtime records its timeline
/// (`LUMEN_TIMELINE` set while it starts, so its workers record too) and
/// writes it there as it shuts down, after the windows.
fn lumen_rows_with(
    options: &RuntimeBenchOptions,
    timeline: Option<&std::path::Path>,
) -> anyhow::Result<(Vec<Measured>, String)> {
    // The benchmark's own thread is the only one here: the variable is
    // set while no other thread reads the environment.
    match timeline {
        Some(path) => std::env::set_var("LUMEN_TIMELINE", path),
        None => std::env::remove_var("LUMEN_TIMELINE"),
    }
    let rt = InitOptions::new().num_workers(options.workers).init();
    std::env::remove_var("LUMEN_TIMELINE");
    let rt = rt?;
    let binding = match rt.binding() {
        Some(b) => format!("driver on cpus {:?}", b.cpus),
        None => "not bound".to_string(),
    };
    let rows = lumen_rows_on(&rt, options);
    rt.shutdown()?;
    Ok((rows?, binding))
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
    let mut costs = round_trip_costs(rt, "tasks sync", count(2000), &mut || {
        small_value::remote(rt)?.get()?;
        Ok(())
    })?;
    // What spinning costs when the answer is slow to come: one 1 ms task
    // at a time (the caller spins, then sleeps; the worker's idle spin
    // shrinks to a sixteenth).
    costs.extend(round_trip_costs(
        rt,
        "1 ms tasks sync",
        count(200),
        &mut || {
            sleep_us::remote(rt, 1000)?.get()?;
            Ok(())
        },
    )?);
    costs.extend(round_trip_costs(
        rt,
        "actor calls sync",
        count(2000),
        &mut || {
            actor.small_value()?.get()?;
            Ok(())
        },
    )?);
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

    rows.extend(costs);
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

/// What `n` blocking round trips cost beyond their time, summed over
/// every rank (Lumen-only rows): thread hand-offs (callers whose wait
/// slept, and executor or actor threads that slept before the next task
/// or call: each was woken by another thread), polls refused (a thread
/// that wanted to spin while another of its rank did),
/// doorbell wake-up system calls, and the share of the machine's CPUs
/// busy meanwhile (spinning shows here).
fn round_trip_costs(
    rt: &Runtime,
    what: &str,
    n: u64,
    body: &mut dyn FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<Vec<Measured>> {
    let snapshot = || -> anyhow::Result<[u64; 4]> {
        let mut sum = [0u64; 4];
        for rank in 0..rt.size() {
            let stats = rt.stats(rank)?;
            sum[0] += stats.waits_slept;
            sum[1] += stats.executor_sleeps + stats.actor_sleeps;
            sum[2] += stats.doorbell_rings;
            sum[3] += stats.polls_refused;
        }
        Ok(sum)
    };
    let before = snapshot()?;
    let cpu_before = crate::rounds::cpu_jiffies();
    // At least 250 ms: /proc/stat counts in 10 ms ticks.
    let start = Instant::now();
    let mut done = 0u64;
    while done < n || start.elapsed() < Duration::from_millis(250) {
        body()?;
        done += 1;
    }
    let n = done;
    let cpu_after = crate::rounds::cpu_jiffies();
    let after = snapshot()?;
    let per = |a: u64, b: u64| a.saturating_sub(b) as f64 / n as f64;
    let busy = match (cpu_before, cpu_after) {
        (Some((b0, t0)), Some((b1, t1))) if t1 > t0 => (b1 - b0) as f64 / (t1 - t0) as f64,
        _ => f64::NAN,
    };
    let row = |test: String, unit: &str, value: f64| Measured {
        test,
        unit: unit.to_string(),
        value,
        sd: 0.0,
    };
    Ok(vec![
        row(
            format!("{what}: caller sleeps per round trip"),
            "count",
            per(after[0], before[0]),
        ),
        row(
            format!("{what}: server sleeps per round trip"),
            "count",
            per(after[1], before[1]),
        ),
        row(
            format!("{what}: doorbell wake-ups per round trip"),
            "count",
            per(after[2], before[2]),
        ),
        row(
            format!("{what}: polls refused per round trip"),
            "count",
            per(after[3], before[3]),
        ),
        row(
            format!("{what}: CPU busy (share of the machine)"),
            "share",
            busy,
        ),
    ])
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
    parse_rows(&output.stdout, "Ray")
}

fn lamellar_installer() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/install-lamellar-baseline.sh")
}

/// The default `--lamellar-bin`: where the installer builds it.
pub fn default_lamellar_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("lamellar/target/release/lumen-lamellar-baseline")
}

/// The CPUs this process may use, as it started (the embedded cluster's
/// driver binds this process to one core while it runs; see [`run`]).
fn start_cpus() -> &'static [usize] {
    static CPUS: std::sync::OnceLock<Vec<usize>> = std::sync::OnceLock::new();
    CPUS.get_or_init(|| {
        // SAFETY: a zeroed cpu_set_t is a valid empty set; the call writes
        // at most its size.
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        // SAFETY: as above; `set` outlives the call.
        let rc =
            unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
        let cpus: Vec<usize> = (0..libc::CPU_SETSIZE as usize)
            // SAFETY: `c` is below CPU_SETSIZE.
            .filter(|&c| rc == 0 && unsafe { libc::CPU_ISSET(c, &set) })
            .collect();
        if cpus.is_empty() {
            vec![0]
        } else {
            cpus
        }
    })
}

/// Gives this process back the CPUs it started with (after a Lumen round:
/// the driver's binding stays on the process after shutdown).
fn restore_cpus() {
    // SAFETY: a zeroed cpu_set_t is a valid empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &cpu in start_cpus() {
        // SAFETY: `cpu` came from CPU_ISSET over the set's range.
        unsafe { libc::CPU_SET(cpu, &mut set) };
    }
    // SAFETY: `set` is a valid set that outlives the call.
    unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
}

/// The CPU of PE `pe`: one core each, in turn, as `lamellar_run.sh` does.
fn core_of(pe: usize) -> usize {
    let cpus = start_cpus();
    cpus[pe % cpus.len()]
}

/// Lamellar's side: `workers + 1` PEs of `benches/lamellar` on the shmem
/// lamellae, one thread each (`LAMELLAR_THREADS=1`), PE i pinned to core
/// i (mod the cores), as `lamellar_run.sh` places them; PE 0 drives.
fn lamellar_rows(options: &RuntimeBenchOptions) -> anyhow::Result<Vec<Measured>> {
    use std::os::unix::process::CommandExt;
    if !options.lamellar_bin.exists() {
        eprintln!("building Lamellar's side (benches/lamellar, once; about 8 minutes) ...");
        let status = std::process::Command::new("bash")
            .arg(lamellar_installer())
            .status()
            .context("running scripts/install-lamellar-baseline.sh")?;
        anyhow::ensure!(
            status.success() && options.lamellar_bin.exists(),
            "building Lamellar's side failed (see the output above); run \
             scripts/install-lamellar-baseline.sh by hand or pass --lamellar-bin"
        );
    }
    let pes = options.workers as usize + 1;
    let job = format!("{}", 1 + std::process::id() % 30000);
    let mut children = Vec::with_capacity(pes);
    for pe in 0..pes {
        let core = core_of(pe);
        let mut command = std::process::Command::new(&options.lamellar_bin);
        command
            .args(["--scale", &options.scale.to_string()])
            .env("LAMELLAR_BACKEND", "shmem")
            .env("LAMELLAR_THREADS", "1")
            .env("LAMELLAR_NUM_PES", pes.to_string())
            .env("LAMELLAR_PE_ID", pe.to_string())
            .env("LAMELLAR_JOB_ID", &job)
            .env("LAMELLAR_MEM_SIZE", (64u64 << 20).to_string())
            .stdout(if pe == 0 {
                std::process::Stdio::piped()
            } else {
                std::process::Stdio::null()
            })
            .stderr(std::process::Stdio::piped());
        // SAFETY: the closure runs in the child between fork and exec and
        // calls only sched_setaffinity on a stack-local set, which is
        // async-signal-safe.
        unsafe {
            command.pre_exec(move || {
                let mut set: libc::cpu_set_t = std::mem::zeroed();
                libc::CPU_SET(core, &mut set);
                libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
                Ok(())
            });
        }
        children.push(command.spawn().context("starting Lamellar's side")?);
    }
    let mut outputs = Vec::with_capacity(pes);
    for child in children {
        outputs.push(
            child
                .wait_with_output()
                .context("waiting for Lamellar's side")?,
        );
    }
    // The shmem lamellae leaves its segments behind when a PE fails.
    if let Ok(entries) = std::fs::read_dir("/dev/shm") {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            if name.starts_with("lamellar_") && name.contains(&job) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
    for (pe, output) in outputs.iter().enumerate() {
        anyhow::ensure!(
            output.status.success(),
            "Lamellar's PE {pe} failed ({}):\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    parse_rows(&outputs[0].stdout, "Lamellar")
}

/// Lumen's rows with the timeline recording, in this process like
/// Lumen's own side (the file goes to a temporary directory, removed).
fn timeline_rows(options: &RuntimeBenchOptions) -> anyhow::Result<Vec<Measured>> {
    let dir = std::env::temp_dir().join(format!("lumen-bench-timeline-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let rows = lumen_rows_with(options, Some(&dir.join("trace.json")));
    let _ = std::fs::remove_dir_all(&dir);
    Ok(rows?.0)
}

/// The `{"test","unit","value","sd"}` lines of a baseline's side.
fn parse_rows(stdout: &[u8], side: &str) -> anyhow::Result<Vec<Measured>> {
    let mut rows = Vec::new();
    for line in String::from_utf8_lossy(stdout)
        .lines()
        .filter(|l| l.starts_with('{'))
    {
        let v: serde_json::Value =
            serde_json::from_str(line).with_context(|| format!("parsing {side}'s line {line}"))?;
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

/// How both sides were placed, for the report.
fn placement(options: &RuntimeBenchOptions, binding: &str) -> String {
    let mut parts = vec![format!(
        "Lumen: driver + {} worker processes (LUMEN_BIND=auto: {binding})",
        options.workers
    )];
    for baseline in &options.baselines {
        parts.push(match baseline {
            Baseline::Lamellar => format!(
                "Lamellar: {} PEs (PE 0 drives), shmem lamellae, LAMELLAR_THREADS=1, PE i pinned to core i mod {}",
                options.workers + 1,
                start_cpus().len()
            ),
            Baseline::Ray => format!(
                "Ray: num_cpus={}, not pinned (Ray's own timeit: 1 s warm-up, 2 s windows)",
                options.workers
            ),
            Baseline::Timeline => "Lumen+timeline: the same Lumen rows with LUMEN_TIMELINE set (every task, actor call and transfer recorded on every rank; the job's file is gathered and written after the windows)".to_string(),
        });
    }
    parts.join("; ")
}

/// Runs the benchmark (see the module docs): `rounds` rounds of Lumen,
/// then each baseline, with the load check around each round (a noisy
/// round is redone once, then kept and flagged).
pub fn run(options: &RuntimeBenchOptions) -> anyhow::Result<crate::Report<RuntimeRow>> {
    use crate::rounds::{machine_busy, median, wait_quiet, with_load_checks};
    let mut lumen_rounds: Vec<Vec<Measured>> = Vec::new();
    let mut baseline_rounds: Vec<(Baseline, Vec<Vec<Measured>>)> =
        options.baselines.iter().map(|b| (*b, Vec::new())).collect();
    let mut binding = String::from("not reported");
    start_cpus();
    let mut done = 0;
    let (measured, loads) = with_load_checks(
        options.rounds,
        || {
            let (lumen, bound) = lumen_rows(options)?;
            binding = bound;
            restore_cpus();
            let theirs = baseline_rounds
                .iter()
                .map(|(baseline, _)| match baseline {
                    Baseline::Lamellar => lamellar_rows(options),
                    Baseline::Ray => ray_rows(options),
                    Baseline::Timeline => timeline_rows(options),
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            done += 1;
            // On a terminal the rounds' progress bar says it.
            if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
                eprintln!("lumen bench runtime: round {done} done");
            }
            Ok((lumen, theirs))
        },
        || wait_quiet(Duration::from_secs(2)),
        machine_busy,
    )?;
    for (lumen, theirs) in measured {
        lumen_rounds.push(lumen);
        for ((_, rounds), rows) in baseline_rounds.iter_mut().zip(theirs) {
            rounds.push(rows);
        }
    }
    let first = lumen_rounds.first().cloned().unwrap_or_default();
    let mut rows = Vec::new();
    for row in &first {
        let lumen_values: Vec<f64> = lumen_rounds
            .iter()
            .filter_map(|r| r.iter().find(|m| m.test == row.test).map(|m| m.value))
            .collect();
        let lumen_sd = lumen_rounds
            .iter()
            .filter_map(|r| r.iter().find(|m| m.test == row.test))
            .map(|m| m.sd / m.value.abs().max(1e-12))
            .fold(0.0f64, f64::max);
        let lumen = median(&lumen_values);
        let mut compared = false;
        for (baseline, rounds) in &baseline_rounds {
            let mut theirs = Vec::new();
            let mut ratios = Vec::new();
            for (ours, their_round) in lumen_rounds.iter().zip(rounds) {
                let ours = ours.iter().find(|m| m.test == row.test);
                let other = their_round
                    .iter()
                    .find(|m| m.test == row.test && m.unit == row.unit);
                if let (Some(ours), Some(other)) = (ours, other) {
                    theirs.push(other.value);
                    ratios.push(ours.value / other.value);
                }
            }
            if theirs.is_empty() {
                continue;
            }
            compared = true;
            let lo = ratios.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = ratios.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            rows.push(RuntimeRow {
                test: row.test.clone(),
                unit: row.unit.clone(),
                lumen,
                baseline_name: baseline.name().to_string(),
                baseline: Some(median(&theirs)),
                ratio: Some(median(&ratios)),
                ratio_range: Some((lo, hi)),
                rounds: lumen_values.len(),
                lumen_sd,
                lumen_rounds: lumen_values.clone(),
            });
        }
        if !compared {
            rows.push(RuntimeRow {
                test: row.test.clone(),
                unit: row.unit.clone(),
                lumen,
                baseline_name: "-".to_string(),
                baseline: None,
                ratio: None,
                ratio_range: None,
                rounds: lumen_values.len(),
                lumen_sd,
                lumen_rounds: lumen_values.clone(),
            });
        }
    }
    Ok(crate::Report {
        info: crate::rounds::RunInfo::now(
            &format!("runtime, {} workers", options.workers),
            &placement(options, &binding),
        ),
        loads: vec![("rounds".to_string(), loads)],
        rows,
    })
}

fn find<'a>(rows: &'a [RuntimeRow], test: &str) -> Option<&'a RuntimeRow> {
    rows.iter().find(|r| r.test == test)
}

/// Prints the rows as a table, then put against memcpy and the two get
/// latencies against each other.
pub fn print_table(rows: &[RuntimeRow]) {
    println!(
        "{:<36} {:>9} {:>14} {:>6} {:>9} {:>12} {:>8} {:>13}",
        "test", "unit", "lumen", "±", "baseline", "value", "ratio", "range"
    );
    for row in rows {
        let value = row.baseline.map_or("-".to_string(), |v| format!("{v:.2}"));
        let ratio = row.ratio.map_or("-".to_string(), |v| format!("{v:.2}x"));
        let range = row
            .ratio_range
            .map_or(String::new(), |(lo, hi)| format!("{lo:.2}-{hi:.2}"));
        println!(
            "{:<36} {:>9} {:>14.2} {:>5.0}% {:>9} {:>12} {:>8} {:>13}",
            row.test,
            row.unit,
            row.lumen,
            100.0 * row.lumen_sd,
            row.baseline_name,
            value,
            ratio,
            range
        );
    }
    println!(
        "(medians over {} rounds; ratio: Lumen's rate over the baseline's, above 1 Lumen is better; \
         range: the rounds' smallest and largest ratio; ±: Lumen's largest sd over a round's windows)",
        rows.first().map_or(0, |r| r.rounds)
    );
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

/// Busy-waits `ns` nanoseconds on this core (Task Bench's compute kernel,
/// by time rather than by iterations); the dependency values are only
/// carried.
#[lumen::remote]
fn busy(ns: u64, a: u64, b: u64, c: u64) -> u64 {
    let start = Instant::now();
    while (start.elapsed().as_nanos() as u64) < ns {
        std::hint::spin_loop();
    }
    a.wrapping_add(b).wrapping_add(c).wrapping_add(1)
}

/// Task Bench's published minimum effective task granularity at 50%
/// efficiency for MPI (Slaughter et al., SC20): no dependencies, and a
/// stencil with 3 dependencies per task.
pub const TASK_BENCH_MPI_METG_NS: [(&str, f64); 2] =
    [("no dependencies", 390.0), ("3 dependencies", 4600.0)];

/// One Task Bench run: `width` tasks per step over `steps` steps, each
/// busy for `ns`; with `deps`, task (t, i) takes the values of tasks
/// (t-1, i-1), (t-1, i) and (t-1, i+1) (a stencil, edges clamped) as
/// arguments by reference. Returns the wall time (submit to last get).
fn task_bench_run(
    rt: &Runtime,
    ns: u64,
    width: usize,
    steps: usize,
    deps: bool,
) -> anyhow::Result<Duration> {
    let start = Instant::now();
    if !deps {
        let refs = (0..width * steps)
            .map(|_| busy::remote(rt, ns, 0, 0, 0))
            .collect::<lumen::Result<Vec<_>>>()?;
        for r in &refs {
            r.get()?;
        }
        return Ok(start.elapsed());
    }
    let mut previous: Vec<ObjectRef<u64>> = Vec::new();
    for step in 0..steps {
        let current = (0..width)
            .map(|i| {
                if step == 0 {
                    busy::remote(rt, ns, 0, 0, 0)
                } else {
                    let left = &previous[i.saturating_sub(1)];
                    let right = &previous[(i + 1).min(width - 1)];
                    busy::remote(rt, ns, left.clone(), previous[i].clone(), right.clone())
                }
            })
            .collect::<lumen::Result<Vec<_>>>()?;
        previous = current;
    }
    for r in &previous {
        r.get()?;
    }
    Ok(start.elapsed())
}

/// A pattern's METG in microseconds (`None`: no run reached 50%).
pub type Metg = (String, Option<f64>);

/// One point of the METG sweep.
#[derive(Debug, Clone, Serialize)]
pub struct MetgPoint {
    /// "no dependencies" or "3 dependencies".
    pub pattern: String,
    /// The task's busy time.
    pub task_us: f64,
    /// Tasks run.
    pub tasks: usize,
    /// Useful time over wall time × cores.
    pub efficiency: f64,
    /// Wall time × cores / tasks: the effective task granularity.
    pub granularity_us: f64,
}

/// Task Bench's measure (`--metg`): for each pattern, task durations from
/// 4 ms down by halves to 0.5 us, as many tasks as keep the cores busy
/// for about `0.25 s × scale` (at least 64), width twice the workers;
/// METG is the smallest effective granularity among the runs at 50%
/// efficiency or more. Cores: the workers (each runs one task at a time;
/// the driver only submits).
pub fn metg(options: &RuntimeBenchOptions) -> anyhow::Result<(Vec<MetgPoint>, Vec<Metg>)> {
    start_cpus();
    let rt = InitOptions::new().num_workers(options.workers).init()?;
    let cores = options.workers.max(1) as usize;
    let width = 2 * cores;
    // Start the workers.
    task_bench_run(&rt, 1000, width, 2, false)?;
    let mut points = Vec::new();
    let mut metgs = Vec::new();
    for (pattern, deps) in [("no dependencies", false), ("3 dependencies", true)] {
        let mut ns = 4_000_000u64;
        let mut best: Option<f64> = None;
        while ns >= 500 {
            let budget = 0.25 * options.scale.max(0.05) * cores as f64;
            let tasks = ((budget / (ns as f64 * 1e-9)) as usize).clamp(64, 200_000);
            let steps = tasks.div_ceil(width);
            let tasks = steps * width;
            let wall = task_bench_run(&rt, ns, width, steps, deps)?;
            let efficiency = tasks as f64 * ns as f64 * 1e-9 / (wall.as_secs_f64() * cores as f64);
            let granularity = wall.as_secs_f64() * cores as f64 / tasks as f64 * 1e6;
            if efficiency >= 0.5 {
                best = Some(best.map_or(granularity, |b: f64| b.min(granularity)));
            }
            points.push(MetgPoint {
                pattern: pattern.to_string(),
                task_us: ns as f64 / 1e3,
                tasks,
                efficiency,
                granularity_us: granularity,
            });
            if efficiency < 0.1 {
                break;
            }
            ns /= 2;
        }
        metgs.push((pattern.to_string(), best));
    }
    rt.shutdown()?;
    restore_cpus();
    Ok((points, metgs))
}
