//! Failure detection with a bound (`runtime/core/liveness.rs`): a host whose
//! link is cut mid-job (its processes run on, its sockets stay open, no
//! packet passes) is declared dead by rank 0 within
//! `LUMEN_FAILURE_TIMEOUT_MS`; a call waiting on it fails with an error
//! naming its rank and node; tasks with retries finish on the survivors;
//! values whose only copies were on the cut host are rebuilt from lineage
//! (their tasks run again, recursively); an actor there restarts on a
//! survivor and the call that was in flight runs again on it
//! (`max_restarts`, `max_task_retries`); the cut-off ranks stop themselves.
//! Three namespace hosts × 2 ranks under `lumen run --keep-going`. Needs
//! root and iproute2; skips otherwise.

mod common;

use common::scenario::run_on_netns_nodes;

/// The bound the scenario runs with.
const BOUND_MS: u64 = 2000;

#[test]
fn a_cut_host_is_declared_dead_within_the_bound() {
    let Some(all) = run_on_netns_nodes(
        "lcut",
        &[2, 2, 2],
        "scenarios",
        "cut_link_mid_job",
        &[
            ("LUMEN_FAILURE_TIMEOUT_MS", &BOUND_MS.to_string()),
            ("LUMEN_INLINE_MAX", "1024"),
        ],
        true,
    ) else {
        return;
    };
    assert!(
        all.contains("rank 4 stops"),
        "the cut-off ranks stop:\n{all}"
    );
    for line in all.lines().filter(|l| {
        l.contains("detected after")
            || l.contains("objects rebuilt")
            || l.contains("actor restarted")
    }) {
        eprintln!("{line}");
    }
}

/// A rank on another node paused with SIGSTOP: a pause shorter than the
/// bound is only slow (its task completes), a longer one is declared dead
/// (the waiting call fails naming it), and the rank, resumed, hears it was
/// declared dead and stops.
#[test]
fn a_paused_rank_is_slow_within_the_bound_and_dead_beyond_it() {
    let Some(all) = run_on_netns_nodes(
        "lstop",
        &[2, 2, 2],
        "scenarios",
        "pause_a_rank",
        &[("LUMEN_FAILURE_TIMEOUT_MS", &BOUND_MS.to_string())],
        true,
    ) else {
        return;
    };
    assert!(
        all.contains("rank 4 stops: rank 0 declared this rank dead"),
        "the resumed rank stops:\n{all}"
    );
    for line in all.lines().filter(|l| l.contains("detected after")) {
        eprintln!("{line}");
    }
}

/// What the SIGKILL DAG runs with: values kept in the ranks' own memory
/// (no node arena), so what a killed rank held is lost with it.
const DAG_ENV: &[(&str, &str)] = &[
    ("LUMEN_ARENA_BYTES", "0"),
    ("LUMEN_INLINE_MAX", "256"),
    ("LUMEN_NUM_CPUS", "2"),
];

/// Runs scenario `name` under `prefix` (nothing, or `salloc ...`) as
/// `lumen run -n RANKS --keep-going` with `env`; checks that the job
/// succeeded and the scenario said ok, and returns what it printed.
fn keep_going(
    prefix: Option<std::process::Command>,
    ranks: u32,
    name: &str,
    env: &[(&str, &str)],
    timeout_s: u64,
) -> String {
    let mut command = match prefix {
        Some(mut prefix) => {
            prefix.arg(common::lumen());
            prefix
        }
        None => std::process::Command::new(common::lumen()),
    };
    command
        .args(["run", "-n", &ranks.to_string(), "--keep-going", "--"])
        .arg(common::scenario::this_binary())
        .args(common::scenario::scenario_args(name))
        .env("RUST_BACKTRACE", "0")
        .envs(env.iter().copied());
    let output = common::run_with_timeout(&mut command, timeout_s);
    let all = common::text(&output);
    assert!(output.status.success(), "scenario {name} failed:\n{all}");
    assert!(all.contains(&format!("scenario {name}: ok")), "{all}");
    all
}

/// The Slurm test cluster, or `None` (skipped, saying why).
fn slurm() -> Option<lumen_testkit::SlurmCluster> {
    use lumen_testkit::{slurm_unavailable_reason, SlurmCluster, SlurmMode};
    if let Some(reason) = slurm_unavailable_reason(SlurmMode::Netns) {
        eprintln!("SKIPPED: no Slurm test cluster here: {reason}");
        return None;
    }
    Some(SlurmCluster::ensure(SlurmMode::Netns).expect("starting the Slurm test cluster"))
}

fn print_lines(all: &str, needles: &[&str]) {
    for line in all
        .lines()
        .filter(|l| needles.iter().any(|n| l.contains(n)))
    {
        eprintln!("{line}");
    }
}

/// The same DAG under Slurm: `lumen run --keep-going` inside an allocation
/// of 3 namespace hosts runs `srun --kill-on-bad-exit=0 --no-kill`, so the
/// step outlives the two SIGKILLed ranks (on two hosts) and its status is
/// rank 0's. Skips without the Slurm test cluster (needs root).
#[test]
fn slurm_keep_going_step_survives_sigkilled_ranks() {
    let Some(cluster) = slurm() else { return };
    let mut salloc = cluster.command("salloc");
    salloc.args(["-N", "3", "--ntasks-per-node=2"]);
    let all = keep_going(Some(salloc), 6, "dag_under_sigkill", DAG_ENV, 180);
    assert!(
        all.contains("rank 3 exited with status") && all.contains("the job goes on without it"),
        "the killed ranks are reported:\n{all}"
    );
    print_lines(&all, &["chaos:"]);
}

/// A node lost under Slurm (its link cut: no packet, processes running):
/// `lumen run --keep-going` inside the allocation runs `srun --no-kill`, so
/// the step is not ended when Slurm declares the node down (SlurmdTimeout,
/// 60 s in the test cluster); Lumen declared it dead within its own bound
/// long before, and the job runs on to 90 s after the cut. Slow (about two
/// minutes, and the node is down for Slurm until its link is back), so run
/// by hand: `cargo nextest run -p lumen --test rt_faults --run-ignored
/// ignored-only slurm_no_kill` (RELIABILITY.md).
#[test]
#[ignore = "slow: about two minutes and a Slurm node down; run by hand"]
fn slurm_no_kill_step_outlives_a_lost_node() {
    let Some(cluster) = slurm() else { return };
    /// Brings host 3's link back, however the test ends.
    struct Restore;
    impl Drop for Restore {
        fn drop(&mut self) {
            let _ = std::process::Command::new("ip")
                .args(["-n", "lumen-slctl", "link", "set", "vh3", "up"])
                .status();
        }
    }
    let _restore = Restore;
    let started = std::time::Instant::now();
    let mut salloc = cluster.command("salloc");
    // The allocation too: without it Slurm ends the whole job.
    salloc.args(["--no-kill", "-N", "3", "--ntasks-per-node=2"]);
    let bound = BOUND_MS.to_string();
    let all = keep_going(
        Some(salloc),
        6,
        "cut_link_mid_job",
        &[
            ("LUMEN_FAILURE_TIMEOUT_MS", &bound),
            ("LUMEN_INLINE_MAX", "1024"),
            ("LUMEN_TEST_BRIDGE", "lumen-slctl"),
            ("LUMEN_TEST_CUT_LINK", "vh3"),
            ("LUMEN_TEST_OUTLIVE_S", "90"),
        ],
        400,
    );
    eprintln!("{all}");
    eprintln!("salloc ended after {} s", started.elapsed().as_secs());
    // Slurm saw the node fail while the job ran, and the job went on.
    assert!(all.contains("Node failure on h3"), "{all}");
}

/// The same DAG with the lineage full from the start
/// (`LUMEN_LINEAGE_BYTES=1`): nothing is rebuilt, the results that needed a
/// lost value fail with an error naming the setting, none is wrong.
#[test]
fn with_the_lineage_full_lost_values_fail_naming_the_limit() {
    let mut env = DAG_ENV.to_vec();
    env.extend([
        ("LUMEN_LINEAGE_BYTES", "1"),
        ("LUMEN_CHAOS_N", "1000"),
        ("LUMEN_CHAOS_EXPECT_LOST", "1"),
    ]);
    let all = keep_going(None, 5, "dag_under_sigkill", &env, 120);
    print_lines(&all, &["chaos:", "first loss"]);
}

/// The same on one node, where silence is not used (see
/// `runtime/core/liveness.rs`): the process's own state says it is stopped.
#[test]
fn a_stopped_rank_on_the_same_node_is_declared_dead_beyond_the_bound() {
    let bound = BOUND_MS.to_string();
    let all = keep_going(
        None,
        3,
        "pause_a_local_rank",
        &[("LUMEN_FAILURE_TIMEOUT_MS", &bound)],
        120,
    );
    assert!(
        all.contains("rank 2 stops: rank 0 declared this rank dead"),
        "the resumed rank stops:\n{all}"
    );
    print_lines(&all, &["detected after"]);
}

/// Chaos on one node: two of four worker ranks are killed with SIGKILL
/// while a 10,002-task DAG with object arguments runs, values kept in the
/// ranks' own memory (no node arena), so what the killed ranks held is lost
/// and rebuilt from lineage; every result is checked, none is lost. It
/// takes 2-5 s here: a hang fails it within two minutes.
#[test]
fn a_dag_survives_sigkilled_workers() {
    let all = keep_going(None, 5, "dag_under_sigkill", DAG_ENV, 120);
    print_lines(&all, &["chaos:"]);
}

mod scenarios {
    use std::time::{Duration, Instant};

    use super::BOUND_MS;

    #[lumen::remote]
    fn sleep_ms(ms: u64) -> u32 {
        std::thread::sleep(Duration::from_millis(ms));
        lumen::current().map(|rt| rt.rank()).unwrap_or(u32::MAX)
    }

    #[lumen::remote]
    fn square(x: u64) -> u64 {
        std::thread::sleep(Duration::from_millis(300));
        x * x
    }

    /// An actor on the host that is cut off, restarted elsewhere.
    #[lumen::actor]
    struct Tally {
        sum: u64,
    }

    #[lumen::actor]
    impl Tally {
        fn new() -> Self {
            Tally { sum: 0 }
        }

        /// Adds `x` after `ms` milliseconds.
        fn add_after(&mut self, ms: u64, x: u64) -> u64 {
            std::thread::sleep(Duration::from_millis(ms));
            self.sum += x;
            self.sum
        }

        fn rank(&self) -> lumen::Result<u32> {
            Ok(lumen::current()?.rank())
        }
    }

    /// A value above the inline limit (stored where it was made).
    #[lumen::remote]
    fn make(seed: u64) -> Vec<u64> {
        (0..16_384u64).map(|i| i.wrapping_mul(seed + 1)).collect()
    }

    /// Depends on a `make` result (rebuilt with it when both are lost).
    #[lumen::remote]
    fn total(values: lumen::ObjectRef<Vec<u64>>) -> lumen::Result<Vec<u64>> {
        let v = values.get()?;
        Ok(vec![v.iter().fold(0u64, |a, &b| a.wrapping_add(b)); 2048])
    }

    fn expected_total(seed: u64) -> u64 {
        (0..16_384u64).fold(0u64, |a, i| a.wrapping_add(i.wrapping_mul(seed + 1)))
    }

    fn cut(host: usize) {
        let bridge = std::env::var("LUMEN_TEST_BRIDGE").expect("the bridge namespace");
        // The Slurm test cluster names its hosts' links from 1.
        let link = std::env::var("LUMEN_TEST_CUT_LINK").unwrap_or_else(|_| format!("vh{host}"));
        let status = std::process::Command::new("ip")
            .args(["-n", &bridge, "link", "set", &link, "down"])
            .status()
            .expect("running ip");
        assert!(status.success(), "cutting host {host}");
    }

    #[lumen::remote]
    fn pid() -> u32 {
        std::process::id()
    }

    /// A value above the inline limit, kept in the executing rank's memory.
    #[lumen::remote]
    fn leaf(i: u64) -> Vec<u64> {
        (0..64).map(|k| i * 1000 + k).collect()
    }

    #[lumen::remote]
    fn combine(
        a: lumen::ObjectRef<Vec<u64>>,
        b: lumen::ObjectRef<Vec<u64>>,
    ) -> lumen::Result<Vec<u64>> {
        let (a, b) = (a.get()?, b.get()?);
        Ok(a.iter().zip(&b).map(|(x, y)| x.wrapping_add(*y)).collect())
    }

    #[lumen::remote]
    fn checksum(v: lumen::ObjectRef<Vec<u64>>) -> lumen::Result<u64> {
        Ok(v.get()?.iter().fold(0u64, |a, &b| a.wrapping_add(b)))
    }

    fn leaf_local(i: u64) -> Vec<u64> {
        (0..64).map(|k| i * 1000 + k).collect()
    }

    fn add(a: &[u64], b: &[u64]) -> Vec<u64> {
        a.iter().zip(b).map(|(x, y)| x.wrapping_add(*y)).collect()
    }

    #[test]
    #[ignore = "a scenario: run by a test above under lumen run"]
    fn dag_under_sigkill() -> lumen::Result<()> {
        let n: usize = std::env::var("LUMEN_CHAOS_N")
            .ok()
            .and_then(|v| v.parse().ok())
            // 2500 per layer: the 10,002-task DAG of issue 14.
            .unwrap_or(2500);
        let kill = std::env::var("LUMEN_CHAOS_KILL").as_deref() != Ok("0");
        let rt = lumen::init()?;
        assert!(rt.size() >= 5, "ranks 3 and 4 are killed");
        let pids: Vec<u32> = (3..5)
            .map(|r| pid::options().rank(r).remote(&rt)?.get())
            .collect::<lumen::Result<_>>()?;
        let started = Instant::now();
        let killer = std::thread::spawn(move || {
            for (i, pid) in pids.into_iter().enumerate().filter(|_| kill) {
                std::thread::sleep(Duration::from_millis(if i == 0 { 300 } else { 700 }));
                // SAFETY: a plain kill(2) of a rank process of this job.
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            }
        });
        let leaves: Vec<_> = (0..n as u64)
            .map(|i| leaf::options().spread().remote(&rt, i))
            .collect::<lumen::Result<_>>()?;
        let pairs: Vec<_> = (0..n)
            .map(|i| {
                combine::options().spread().remote(
                    &rt,
                    leaves[i].clone(),
                    leaves[(i + 1) % n].clone(),
                )
            })
            .collect::<lumen::Result<_>>()?;
        let quads: Vec<_> = (0..n)
            .map(|i| {
                combine::options().spread().remote(
                    &rt,
                    pairs[i].clone(),
                    pairs[(i + 2) % n].clone(),
                )
            })
            .collect::<lumen::Result<_>>()?;
        let sums: Vec<_> = quads
            .iter()
            .map(|q| checksum::options().spread().remote(&rt, q.clone()))
            .collect::<lumen::Result<_>>()?;
        // With the lineage full from the start (LUMEN_LINEAGE_BYTES tiny),
        // values are lost instead: each loss must say so.
        let expect_lost = std::env::var("LUMEN_CHAOS_EXPECT_LOST").is_ok();
        let mut wrong = 0;
        let mut lost = 0;
        for (i, s) in sums.iter().enumerate() {
            let pair = |j: usize| add(&leaf_local(j as u64), &leaf_local(((j + 1) % n) as u64));
            let quad = add(&pair(i), &pair((i + 2) % n));
            let expected = quad.iter().fold(0u64, |a, &b| a.wrapping_add(b));
            match s.get() {
                Ok(v) if v == expected => {}
                Ok(_) => wrong += 1,
                Err(e) if expect_lost => {
                    let text = e.to_string();
                    assert!(text.contains("LUMEN_LINEAGE_BYTES"), "{text}");
                    if lost == 0 {
                        println!("first loss: {text}");
                    }
                    lost += 1;
                }
                Err(e) => return Err(e),
            }
        }
        killer.join().expect("killer");
        let rebuilt = rt.stats(0)?.objects_rebuilt;
        println!(
            "chaos: {} tasks, 2 of {} workers SIGKILLed, {} results checked, {wrong} wrong, {lost} lost, {rebuilt} values rebuilt from lineage, {:.1} s",
            4 * n + 2,
            rt.size() - 1,
            sums.len(),
            started.elapsed().as_secs_f64()
        );
        assert_eq!(wrong, 0);
        if expect_lost {
            assert!(lost > 0, "nothing was lost with the lineage full");
            assert_eq!(rebuilt, 0);
        }
        println!("scenario dag_under_sigkill: ok");
        Ok(())
    }

    fn signal(pid: u32, which: &str) {
        let status = std::process::Command::new("kill")
            .args([which, &pid.to_string()])
            .status()
            .expect("running kill");
        assert!(status.success(), "kill {which} {pid}");
    }

    #[test]
    #[ignore = "a scenario: run by a test above on namespace hosts"]
    fn pause_a_rank() -> lumen::Result<()> {
        pause(4, "rank 4 (node 2) silent", 5)?;
        println!("scenario pause_a_rank: ok");
        Ok(())
    }

    #[test]
    #[ignore = "a scenario: run by a test above on one node"]
    fn pause_a_local_rank() -> lumen::Result<()> {
        pause(2, "rank 2 (node 0), process", 1)?;
        println!("scenario pause_a_local_rank: ok");
        Ok(())
    }

    /// Stops rank `victim` with SIGSTOP shorter than the bound (slow: its
    /// task completes), then longer (declared dead: the waiting call fails
    /// with `expect` in its text), resumes it, and runs a task on
    /// `survivor`.
    fn pause(victim: u32, expect: &str, survivor: u32) -> lumen::Result<()> {
        let rt = lumen::init()?;
        let target = pid::options().rank(victim).remote(&rt)?.get()?;
        // Shorter than the bound: slow, not dead.
        let slow = sleep_ms::options().rank(victim).remote(&rt, 200)?;
        signal(target, "-STOP");
        std::thread::sleep(Duration::from_millis(BOUND_MS / 2));
        signal(target, "-CONT");
        assert_eq!(slow.get()?, victim, "a short pause is only slow");
        // Longer: declared dead.
        let call = sleep_ms::options().rank(victim).remote(&rt, 120_000)?;
        std::thread::sleep(Duration::from_millis(200));
        signal(target, "-STOP");
        let stopped_at = Instant::now();
        let err = call.get().expect_err("declared dead");
        let detected = stopped_at.elapsed();
        let text = err.to_string();
        println!(
            "detected after {} ms (bound {BOUND_MS} ms, SIGSTOP): {text}",
            detected.as_millis()
        );
        assert!(text.contains(expect), "{text}");
        // Resumed, it hears it was declared dead, and stops.
        signal(target, "-CONT");
        std::thread::sleep(Duration::from_millis(500));
        // The rest of the job runs on.
        assert_eq!(
            sleep_ms::options().rank(survivor).remote(&rt, 1)?.get()?,
            survivor
        );
        Ok(())
    }

    #[test]
    #[ignore = "a scenario: run by the test above on namespace hosts"]
    fn cut_link_mid_job() -> lumen::Result<()> {
        let rt = lumen::init()?;
        assert_eq!(rt.size(), 6);
        // Ranks 4 and 5 are host 2. A call that can only fail, and work
        // spread over every rank that retries elsewhere.
        // Stored values on every rank (none read yet, so host 2's are its
        // only copies), and values computed from them.
        let made: Vec<_> = (0..12u64)
            .map(|seed| make::options().spread().remote(&rt, seed))
            .collect::<lumen::Result<_>>()?;
        let totals: Vec<_> = made
            .iter()
            .map(|m| total::options().spread().remote(&rt, m.clone()))
            .collect::<lumen::Result<_>>()?;
        let (ready, _) = lumen::wait(&totals[..], totals.len(), Some(Duration::from_secs(60)))?;
        assert_eq!(ready.len(), totals.len());
        // An actor on host 2 that may restart once, its calls sent again.
        let tally = Tally::actor_options()
            .rank(5)
            .max_restarts(1)
            .max_task_retries(2)
            .new_remote(&rt)?;
        assert_eq!(tally.add_after(0, 1)?.get()?, 1);
        let victim = sleep_ms::options().rank(4).remote(&rt, 120_000)?;
        // In flight when the host is cut: sent again to the restarted actor.
        let in_flight = tally.add_after(1500, 10)?;
        let work: Vec<_> = (0..24u64)
            .map(|x| square::options().spread().max_retries(3).remote(&rt, x))
            .collect::<lumen::Result<_>>()?;
        std::thread::sleep(Duration::from_millis(400));
        cut(2);
        let cut_at = Instant::now();
        let err = victim.get().expect_err("its host is cut off");
        let detected = cut_at.elapsed();
        let text = err.to_string();
        println!(
            "detected after {} ms (bound {BOUND_MS} ms): {text}",
            detected.as_millis()
        );
        assert!(text.contains("rank 4"), "{text}");
        assert!(text.contains("node 2"), "{text}");
        assert!(text.contains("silent"), "{text}");
        // The bound, one monitor round and scheduling slack on 2 cores.
        assert!(
            detected < Duration::from_millis(2 * BOUND_MS + 2000),
            "detected after {detected:?}"
        );
        for (x, r) in work.into_iter().enumerate() {
            let x = x as u64;
            assert_eq!(r.get()?, x * x, "task {x} finished (retried if on host 2)");
        }
        // Values lost with host 2 are rebuilt from lineage (their tasks run
        // again elsewhere, recursively), the others read as they are.
        for (seed, (m, t)) in made.iter().zip(&totals).enumerate() {
            let seed = seed as u64;
            assert_eq!(t.get()?[0], expected_total(seed), "total {seed}");
            assert_eq!(m.get()?[1], seed + 1, "made {seed}");
        }
        let rebuilt = rt.stats(0)?.objects_rebuilt;
        println!("objects rebuilt from lineage: {rebuilt}");
        assert!(rebuilt >= 1, "some of 24 values were on host 2");
        // The actor restarted on a survivor with fresh state; the call that
        // was in flight ran there.
        assert_eq!(in_flight.get_timeout(Duration::from_secs(30))?, 10);
        let moved = tally.rank()?.get()?;
        assert!(moved < 4, "restarted on a surviving host, not {moved}");
        assert_eq!(tally.add_after(0, 1)?.get()?, 11);
        println!("actor restarted on rank {moved} after the cut");
        // Under Slurm: run on past Slurm's own node timeout (SlurmdTimeout),
        // which ends the step unless it was started with --no-kill.
        let outlive: u64 = std::env::var("LUMEN_TEST_OUTLIVE_S")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut round = 0u64;
        while cut_at.elapsed() < Duration::from_secs(outlive) {
            let xs: Vec<_> = (0..8u64)
                .map(|x| square::options().spread().remote(&rt, x))
                .collect::<lumen::Result<_>>()?;
            for (x, r) in xs.into_iter().enumerate() {
                assert_eq!(r.get()?, (x * x) as u64);
            }
            round += 1;
            if round % 10 == 0 {
                println!(
                    "still running {} s after the cut",
                    cut_at.elapsed().as_secs()
                );
            }
        }
        println!("scenario cut_link_mid_job: ok");
        Ok(())
    }
}
