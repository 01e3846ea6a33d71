//! `lumen bench chaos`: the fault-injection DAG of the reliability suite
//! (`lumen/tests/rt_faults.rs`), run for many rounds or for a while, for
//! the runs too long for CI.
//!
//! Each round is a process of its own (`lumen-bench worker chaos-round`)
//! with an embedded cluster of `--workers` ranks, values kept in the ranks'
//! own memory (`LUMEN_ARENA_BYTES=0`, `LUMEN_INLINE_MAX=256`), so what a
//! killed rank held is lost and must be rebuilt from lineage. It submits a
//! four-layer DAG (`--layer` leaves, as many combines of two leaves, of two
//! combines, and checksums), kills `--kill` workers with SIGKILL at times
//! drawn from the round's seed, checks every checksum against a local
//! computation and prints one JSON line. The parent runs the rounds one
//! after another, counts a round that does not finish within `--timeout`
//! as a hang (and kills it), and fails when any result was wrong, lost or
//! hung. What this is not: a benchmark with a baseline (there is nothing
//! to compare fault recovery with on this machine), so it reports counts
//! and times, not ratios.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use lumen::InitOptions;
use serde::{Deserialize, Serialize};

/// Settings of a chaos run.
#[derive(Debug, Clone)]
pub struct ChaosOptions {
    /// Worker ranks per round.
    pub workers: u32,
    /// Workers killed per round (fewer than `workers`).
    pub kill: u32,
    /// Leaves per round (4 × layer + 2 tasks in all).
    pub layer: usize,
    /// Rounds to run (at least one).
    pub rounds: u32,
    /// Keep starting rounds until this much time has passed, when set.
    pub duration: Option<Duration>,
    /// A round that takes longer is a hang.
    pub timeout: Duration,
    /// Seed of the first round (the next ones add one).
    pub seed: u64,
}

/// What one round did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RoundReport {
    /// The round's seed.
    pub seed: u64,
    /// Tasks submitted.
    pub tasks: u64,
    /// Checksums verified.
    pub checked: u64,
    /// Checksums with a wrong value.
    pub wrong: u64,
    /// Checksums that failed (an error instead of a value).
    pub lost: u64,
    /// Values rebuilt from lineage.
    pub rebuilt: u64,
    /// Workers killed.
    pub killed: u32,
    /// Seconds from the first submission to the last check.
    pub seconds: f64,
    /// The round did not finish in time (killed).
    pub hung: bool,
    /// The first error seen, if any.
    pub first_error: Option<String>,
}

impl RoundReport {
    /// A round of `layer` leaves with `kill` workers killed, before any
    /// result is checked.
    fn new(seed: u64, layer: usize, kill: u32) -> Self {
        RoundReport {
            seed,
            tasks: 4 * layer as u64 + u64::from(kill),
            checked: 0,
            wrong: 0,
            lost: 0,
            rebuilt: 0,
            killed: kill,
            seconds: 0.0,
            hung: false,
            first_error: None,
        }
    }
}

#[lumen::remote]
fn chaos_pid() -> u32 {
    std::process::id()
}

fn leaf_value(i: u64) -> Vec<u64> {
    (0..64u64)
        .map(|k| i.wrapping_mul(31).wrapping_add(k))
        .collect()
}

fn add(a: &[u64], b: &[u64]) -> Vec<u64> {
    a.iter().zip(b).map(|(x, y)| x.wrapping_add(*y)).collect()
}

/// A value above the inline limit, kept in the executing rank's memory.
#[lumen::remote]
fn chaos_leaf(i: u64) -> Vec<u64> {
    leaf_value(i)
}

/// Reads its arguments itself (they may be being rebuilt).
#[lumen::remote]
fn chaos_combine(
    a: lumen::ObjectRef<Vec<u64>>,
    b: lumen::ObjectRef<Vec<u64>>,
) -> lumen::Result<Vec<u64>> {
    Ok(add(&a.get()?, &b.get()?))
}

#[lumen::remote]
fn chaos_checksum(v: lumen::ObjectRef<Vec<u64>>) -> lumen::Result<u64> {
    Ok(v.get()?.iter().fold(0u64, |a, &b| a.wrapping_add(b)))
}

/// A small deterministic generator (splitmix64) for kill times.
fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// One round, in this process (`lumen-bench worker chaos-round`).
pub fn round(workers: u32, kill: u32, layer: usize, seed: u64) -> anyhow::Result<RoundReport> {
    anyhow::ensure!(
        kill < workers,
        "--kill {kill} must leave a worker of {workers}"
    );
    anyhow::ensure!(layer >= 3, "--layer must be at least 3");
    let rt = InitOptions::new().num_workers(workers).init()?;
    let mut rng = seed ^ 0x5eed;
    // Which workers die, and when (100-1000 ms after the first submission).
    let mut victims: Vec<u32> = (1..=workers).collect();
    for i in (1..victims.len()).rev() {
        victims.swap(i, (splitmix(&mut rng) % (i as u64 + 1)) as usize);
    }
    victims.truncate(kill as usize);
    let mut plan = Vec::new();
    for &rank in &victims {
        let pid = chaos_pid::options().rank(rank).remote(&rt)?.get()?;
        let at = Duration::from_millis(100 + splitmix(&mut rng) % 900);
        plan.push((at, pid));
    }
    plan.sort();
    let started = Instant::now();
    let killer = std::thread::spawn(move || {
        for (at, pid) in plan {
            if let Some(wait) = at.checked_sub(started.elapsed()) {
                std::thread::sleep(wait);
            }
            // SAFETY: a plain kill(2) of a worker process of this round.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
    });
    let n = layer;
    let leaves: Vec<_> = (0..n as u64)
        .map(|i| chaos_leaf::options().spread().remote(&rt, i))
        .collect::<lumen::Result<_>>()?;
    let pairs: Vec<_> = (0..n)
        .map(|i| {
            chaos_combine::options().spread().remote(
                &rt,
                leaves[i].clone(),
                leaves[(i + 1) % n].clone(),
            )
        })
        .collect::<lumen::Result<_>>()?;
    let quads: Vec<_> = (0..n)
        .map(|i| {
            chaos_combine::options().spread().remote(
                &rt,
                pairs[i].clone(),
                pairs[(i + 2) % n].clone(),
            )
        })
        .collect::<lumen::Result<_>>()?;
    let sums: Vec<_> = quads
        .iter()
        .map(|q| chaos_checksum::options().spread().remote(&rt, q.clone()))
        .collect::<lumen::Result<_>>()?;
    let mut report = RoundReport::new(seed, n, kill);
    for (i, s) in sums.iter().enumerate() {
        let pair = |j: usize| add(&leaf_value(j as u64), &leaf_value(((j + 1) % n) as u64));
        let quad = add(&pair(i), &pair((i + 2) % n));
        let expected = quad.iter().fold(0u64, |a, &b| a.wrapping_add(b));
        report.checked += 1;
        match s.get() {
            Ok(v) if v == expected => {}
            Ok(_) => report.wrong += 1,
            Err(e) => {
                report.lost += 1;
                report.first_error.get_or_insert_with(|| e.to_string());
            }
        }
    }
    report.seconds = started.elapsed().as_secs_f64();
    let _ = killer.join();
    report.rebuilt = rt.stats(0)?.objects_rebuilt;
    drop(sums);
    rt.shutdown()?;
    Ok(report)
}

/// The whole run: rounds in child processes, one after another.
pub fn run(options: &ChaosOptions) -> anyhow::Result<Vec<RoundReport>> {
    let exe = std::env::current_exe().context("finding lumen-bench")?;
    let began = Instant::now();
    let mut reports = Vec::new();
    for i in 0.. {
        let enough_rounds = i >= options.rounds.max(1);
        let time_left = options.duration.is_some_and(|d| began.elapsed() < d);
        if enough_rounds && !time_left {
            break;
        }
        let seed = options.seed + i as u64;
        let mut child = Command::new(&exe)
            .args(["worker", "chaos-round"])
            .args(["--workers", &options.workers.to_string()])
            .args(["--kill", &options.kill.to_string()])
            .args(["--layer", &options.layer.to_string()])
            .args(["--seed", &seed.to_string()])
            .env("LUMEN_ARENA_BYTES", "0")
            .env("LUMEN_INLINE_MAX", "256")
            .env("LUMEN_NUM_CPUS", "2")
            .env_remove("LUMEN_RANK")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting a chaos round")?;
        let stdout = child.stdout.take();
        let reader = std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut out) = stdout {
                let _ = std::io::Read::read_to_string(&mut out, &mut text);
            }
            text
        });
        let started = Instant::now();
        let mut hung = false;
        loop {
            if child.try_wait()?.is_some() {
                break;
            }
            if started.elapsed() > options.timeout {
                hung = true;
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let text = reader.join().unwrap_or_default();
        let report = text
            .lines()
            .rev()
            .find_map(|l| serde_json::from_str::<RoundReport>(l).ok());
        let report = match (report, hung) {
            (Some(r), false) => r,
            (_, hung) => RoundReport {
                seconds: started.elapsed().as_secs_f64(),
                hung,
                first_error: Some(if hung {
                    format!("no result within {:?}", options.timeout)
                } else {
                    format!("the round failed without a report: {}", text.trim())
                }),
                ..RoundReport::new(seed, options.layer, options.kill)
            },
        };
        println!(
            "round {:>3} seed {:>4}: {} tasks, {} killed, {} checked, {} wrong, {} lost, {} rebuilt, {:.1} s{}",
            i + 1,
            report.seed,
            report.tasks,
            report.killed,
            report.checked,
            report.wrong,
            report.lost,
            report.rebuilt,
            report.seconds,
            if report.hung { ", HUNG" } else { "" }
        );
        if let Some(e) = &report.first_error {
            println!("    first error: {e}");
        }
        reports.push(report);
    }
    Ok(reports)
}

/// Prints the summary of a run; true when nothing was wrong, lost or hung.
pub fn summarize(reports: &[RoundReport]) -> bool {
    let bad = |r: &RoundReport| r.wrong > 0 || r.lost > 0 || r.hung || r.checked == 0;
    let clean = reports.iter().filter(|r| !bad(r)).count();
    let mut seconds: Vec<f64> = reports
        .iter()
        .filter(|r| !r.hung)
        .map(|r| r.seconds)
        .collect();
    seconds.sort_by(f64::total_cmp);
    let mut rebuilt: Vec<u64> = reports.iter().map(|r| r.rebuilt).collect();
    rebuilt.sort_unstable();
    let median = |v: &[f64]| v.get(v.len() / 2).copied().unwrap_or(0.0);
    println!(
        "chaos: {clean} of {} rounds clean; {} tasks; {} wrong, {} lost, {} hung; rebuilt per round {}..{} (median {}); round time median {:.1} s, max {:.1} s",
        reports.len(),
        reports.iter().map(|r| r.tasks).sum::<u64>(),
        reports.iter().map(|r| r.wrong).sum::<u64>(),
        reports.iter().map(|r| r.lost).sum::<u64>(),
        reports.iter().filter(|r| r.hung).count(),
        rebuilt.first().copied().unwrap_or(0),
        rebuilt.last().copied().unwrap_or(0),
        rebuilt.get(rebuilt.len() / 2).copied().unwrap_or(0),
        median(&seconds),
        seconds.last().copied().unwrap_or(0.0),
    );
    clean == reports.len()
}
