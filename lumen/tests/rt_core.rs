//! The core runtime on real processes, in both ways a program can start:
//! on the embedded local cluster (the test binary re-executed as workers,
//! whose pre-`main` entry takes over) and under `lumen run -n 4`.
//!
//! Each scenario is an ignored test in `scenarios` that calls
//! `lumen::init()` itself; the runner tests below start this same binary
//! with the scenario's name, bare or under `lumen run`, with a time limit.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::*;

fn this_binary() -> PathBuf {
    std::env::current_exe().expect("test binary path")
}

fn scenario_args(name: &str) -> Vec<String> {
    vec![
        format!("scenarios::{name}"),
        "--exact".into(),
        "--ignored".into(),
        "--nocapture".into(),
        "--test-threads=1".into(),
    ]
}

/// Runs a scenario on the embedded cluster (3 workers); returns its output.
fn embedded(name: &str) -> String {
    embedded_with(name, 3)
}

fn embedded_with(name: &str, workers: u32) -> String {
    let mut command = Command::new(this_binary());
    command
        .args(scenario_args(name))
        .env("LUMEN_NUM_WORKERS", workers.to_string())
        .env_remove("LUMEN_RANK");
    let output = run_with_timeout(&mut command, 120);
    let all = text(&output);
    assert!(output.status.success(), "scenario {name} failed:\n{all}");
    assert!(all.contains(&format!("scenario {name}: ok")), "{all}");
    all
}

/// Runs a scenario under `lumen run -n 4`; returns its output.
fn launched(name: &str) -> String {
    let mut command = Command::new(lumen());
    command
        .args(["run", "-n", "4", "--"])
        .arg(this_binary())
        .args(scenario_args(name));
    let output = run_with_timeout(&mut command, 120);
    let all = text(&output);
    assert!(output.status.success(), "scenario {name} failed:\n{all}");
    assert!(all.contains(&format!("scenario {name}: ok")), "{all}");
    all
}

/// Processes still running with this job id in their environment.
fn processes_of_job(job_id: &str) -> Vec<u32> {
    let needle = format!("LUMEN_JOB_ID={job_id}");
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()))
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .map(|env| env.split(|&b| b == 0).any(|kv| kv == needle.as_bytes()))
                .unwrap_or(false)
        })
        .collect()
}

fn printed_job_id(output: &str) -> String {
    output
        .lines()
        .find_map(|l| l.split("job id ").nth(1))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| panic!("no job id printed:\n{output}"))
}

macro_rules! both_ways {
    ($($name:ident),* $(,)?) => {
        mod embedded_cluster {
            $(
                #[test]
                fn $name() {
                    super::embedded(stringify!($name));
                }
            )*
        }
        mod lumen_run {
            $(
                #[test]
                fn $name() {
                    super::launched(stringify!($name));
                }
            )*
        }
    };
}

both_ways!(
    nested_tasks_three_levels,
    ten_thousand_tiny_tasks,
    actor_keeps_per_caller_order,
    reference_through_three_tasks_is_freed_once,
    errors_and_panics_come_back_typed,
    actors_named_passed_and_killed,
    put_get_wait_cancel,
    actor_dropped_with_its_last_handle,
    actor_handle_in_a_task_keeps_it_alive,
    named_actor_outlives_its_handles,
);

#[test]
fn embedded_worker_killed_mid_task_is_retried_or_reported() {
    // Three workers die in the scenario; one is left to serve.
    let all = embedded_with("worker_killed_mid_task", 4);
    // The killed worker's death was noticed and the job still ended cleanly.
    let job = printed_job_id(&all);
    assert!(leftover_segments(&job).is_empty(), "{all}");
    assert!(processes_of_job(&job).is_empty(), "orphans:\n{all}");
}

/// Runs a scenario under `lumen run -n N --keep-going`: a rank that dies
/// does not stop the job, so the runtime's own recovery is what is tested.
fn launched_keep_going(name: &str, ranks: u32) -> String {
    let mut command = Command::new(lumen());
    command
        .args(["run", "-n", &ranks.to_string(), "--keep-going", "--"])
        .arg(this_binary())
        .args(scenario_args(name));
    let output = run_with_timeout(&mut command, 120);
    let all = text(&output);
    assert!(output.status.success(), "scenario {name} failed:\n{all}");
    assert!(all.contains(&format!("scenario {name}: ok")), "{all}");
    all
}

#[test]
fn lumen_run_keep_going_worker_killed_mid_task_is_retried_or_reported() {
    // Rank 0 drives, ranks 1-4 serve; three of them die in the scenario.
    let all = launched_keep_going("worker_killed_mid_task", 5);
    assert!(all.contains("the job goes on without it"), "{all}");
}

#[test]
fn lumen_run_keep_going_actor_restarts_after_its_rank_dies() {
    launched_keep_going("actor_restarts", 5);
}

#[test]
fn embedded_owner_death_fails_borrowers_instead_of_hanging() {
    // Four workers: the scenario kills one.
    embedded_with("owner_dies", 4);
}

#[test]
fn embedded_actor_restarts_after_its_rank_dies() {
    // Four workers: the scenario kills two.
    embedded_with("actor_restarts", 4);
}

#[test]
fn embedded_actor_call_in_flight_is_retried_after_its_rank_dies() {
    // Four workers: the scenario kills one.
    embedded_with("actor_call_retried", 4);
}

#[test]
fn embedded_task_retry_keeps_its_object_arguments() {
    // Three workers: the scenario kills one.
    embedded_with("task_retried_with_object_arguments", 3);
}

#[test]
fn embedded_cluster_leaves_nothing_behind() {
    let all = embedded("prints_job_id");
    let job = printed_job_id(&all);
    assert!(leftover_segments(&job).is_empty(), "{all}");
    assert!(processes_of_job(&job).is_empty(), "orphans:\n{all}");
}

/// The driver panics or is killed: its workers go too, and no shared memory
/// stays behind.
fn driver_dies(scenario: &str) {
    let mut command = Command::new(this_binary());
    command
        .args(scenario_args(scenario))
        .env("LUMEN_NUM_WORKERS", "3");
    let output = run_with_timeout(&mut command, 60);
    let all = text(&output);
    assert!(
        !output.status.success(),
        "the driver should have failed:\n{all}"
    );
    let job = printed_job_id(&all);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !processes_of_job(&job).is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(processes_of_job(&job).is_empty(), "orphans:\n{all}");
    assert!(leftover_segments(&job).is_empty(), "{all}");
}

#[test]
fn embedded_driver_panic_leaves_nothing_behind() {
    driver_dies("driver_panics");
}

#[test]
fn embedded_driver_killed_leaves_nothing_behind() {
    driver_dies("driver_killed");
}

#[test]
fn mismatched_binary_is_refused_at_bootstrap() {
    // Rank 1 claims another build.
    let script =
        r#"if [ "$LUMEN_RANK" = 1 ]; then export LUMEN_BUILD_ID=other; fi; exec "$0" "$@""#;
    let mut command = Command::new(lumen());
    command
        .args(["run", "-n", "2", "--", "sh", "-c", script])
        .arg(this_binary())
        .args(scenario_args("prints_job_id"));
    let output = run_with_timeout(&mut command, 60);
    let all = text(&output);
    assert!(!output.status.success(), "{all}");
    assert!(all.contains("rank 1 runs a different build"), "{all}");
}

#[test]
fn a_different_executable_is_refused_at_bootstrap() {
    // Rank 1 runs another program (the quickstart example) than rank 0.
    let script = r#"if [ "$LUMEN_RANK" = 1 ]; then exec "$1"; fi; shift; exec "$0" "$@""#;
    let mut command = Command::new(lumen());
    command
        .args(["run", "-n", "2", "--", "sh", "-c", script])
        .arg(this_binary())
        .arg(example("quickstart"))
        .args(scenario_args("prints_job_id"))
        .env_remove("LUMEN_BUILD_ID");
    let output = run_with_timeout(&mut command, 60);
    let all = text(&output);
    assert!(!output.status.success(), "{all}");
    assert!(all.contains("rank 1 runs a different build"), "{all}");
}

/// The scenarios; each runs as rank 0 (driver) of its job.
mod scenarios {
    use std::time::{Duration, Instant};

    use lumen::prelude::*;
    use lumen::runtime::{RuntimeError, TaskErrorKind};

    #[lumen::remote]
    fn add(a: u64, b: u64) -> u64 {
        a + b
    }

    #[lumen::remote]
    fn whoami() -> u32 {
        lumen::current().map(|rt| rt.rank()).unwrap_or(u32::MAX)
    }

    #[lumen::remote]
    fn level3(x: u64) -> u64 {
        x * 2
    }

    #[lumen::remote]
    fn level2(x: u64) -> lumen::Result<u64> {
        let rt = lumen::current()?;
        let parts: Vec<ObjectRef<u64>> = (0..3)
            .map(|i| level3::remote(&rt, x + i))
            .collect::<lumen::Result<_>>()?;
        parts.iter().map(|p| p.get()).sum()
    }

    #[lumen::remote]
    fn level1(x: u64) -> lumen::Result<u64> {
        let rt = lumen::current()?;
        let parts: Vec<ObjectRef<u64>> = (0..3)
            .map(|i| level2::remote(&rt, x * 10 + i))
            .collect::<lumen::Result<_>>()?;
        parts.iter().map(|p| p.get()).sum()
    }

    fn expected_level2(x: u64) -> u64 {
        (0..3).map(|i| (x + i) * 2).sum()
    }

    fn expected_level1(x: u64) -> u64 {
        (0..3).map(|i| expected_level2(x * 10 + i)).sum()
    }

    fn done(name: &str) {
        println!("scenario {name}: ok");
    }

    #[test]
    #[ignore = "run by the runner tests"]
    fn nested_tasks_three_levels() -> lumen::Result<()> {
        let rt = lumen::init()?;
        let tops: Vec<ObjectRef<u64>> = (0..4)
            .map(|x| level1::remote(&rt, x))
            .collect::<lumen::Result<_>>()?;
        for (x, top) in tops.iter().enumerate() {
            assert_eq!(
                top.get_timeout(Duration::from_secs(60))?,
                expected_level1(x as u64)
            );
        }
        done("nested_tasks_three_levels");
        Ok(())
    }

    #[test]
    #[ignore = "run by the runner tests"]
    fn ten_thousand_tiny_tasks() -> lumen::Result<()> {
        let rt = lumen::init()?;
        let start = Instant::now();
        let refs: Vec<ObjectRef<u64>> = (0..10_000u64)
            .map(|i| add::remote(&rt, i, 1))
            .collect::<lumen::Result<_>>()?;
        let (ready, pending) = lumen::wait(&refs, refs.len(), Some(Duration::from_secs(90)))?;
        assert!(pending.is_empty(), "{} tasks unfinished", pending.len());
        let sum: u64 = ready.iter().map(|r| r.get()).sum::<lumen::Result<u64>>()?;
        assert_eq!(sum, (1..=10_000u64).sum::<u64>());
        println!(
            "10000 tasks on {} ranks in {:.3} s",
            rt.size(),
            start.elapsed().as_secs_f64()
        );
        done("ten_thousand_tiny_tasks");
        Ok(())
    }

    /// Records (caller, sequence number) pairs in arrival order.
    #[lumen::actor]
    struct Journal {
        entries: Vec<(u32, u32)>,
    }

    #[lumen::actor]
    impl Journal {
        fn new() -> Self {
            Journal {
                entries: Vec::new(),
            }
        }

        fn record(&mut self, caller: u32, seq: u32) -> usize {
            self.entries.push((caller, seq));
            self.entries.len()
        }

        fn entries(&self) -> Vec<(u32, u32)> {
            self.entries.clone()
        }
    }

    /// Calls the journal `n` times without waiting, then waits for the last.
    #[lumen::remote]
    fn caller(journal: ActorHandle<Journal>, me: u32, n: u32) -> lumen::Result<u32> {
        let mut last = None;
        for seq in 0..n {
            last = Some(journal.record(me, seq)?);
        }
        if let Some(last) = last {
            last.get()?;
        }
        Ok(lumen::current()?.rank())
    }

    #[test]
    #[ignore = "run by the runner tests"]
    fn actor_keeps_per_caller_order() -> lumen::Result<()> {
        let rt = lumen::init()?;
        let journal = Journal::new_remote(&rt)?;
        let n = 300;
        let callers: Vec<ObjectRef<u32>> = (0..3)
            .map(|me| caller::remote(&rt, journal.clone(), me, n))
            .collect::<lumen::Result<_>>()?;
        let ranks: Vec<u32> = callers
            .iter()
            .map(|c| c.get())
            .collect::<lumen::Result<_>>()?;
        let entries = journal.entries()?.get()?;
        assert_eq!(entries.len(), 3 * n as usize);
        for me in 0..3 {
            let seqs: Vec<u32> = entries
                .iter()
                .filter(|(c, _)| *c == me)
                .map(|(_, s)| *s)
                .collect();
            assert_eq!(seqs, (0..n).collect::<Vec<_>>(), "caller {me} out of order");
        }
        println!(
            "callers ran on ranks {ranks:?}, actor on rank {}",
            journal.raw().rank()
        );
        done("actor_keeps_per_caller_order");
        Ok(())
    }

    /// Passes `data` on to the next hop (on another rank), or sums it.
    #[lumen::remote]
    fn hop(data: ObjectRef<[u64]>, hops_left: u32, size: u32) -> lumen::Result<u64> {
        let rt = lumen::current()?;
        if hops_left == 0 {
            return Ok(data.get()?.iter().sum());
        }
        let next = rt.rank() % (size - 1) + 1;
        hop::options()
            .rank(next)
            .remote(&rt, data, hops_left - 1, size)?
            .get()
    }

    /// Per rank: values in process memory, objects borrowed, and live
    /// objects of its node arena.
    fn stores_everywhere(rt: &Runtime) -> lumen::Result<Vec<(u64, u64, u64)>> {
        (0..rt.size())
            .map(|r| {
                rt.stats(r)
                    .map(|s| (s.stored_values, s.borrowed_objects, s.arena_objects))
            })
            .collect()
    }

    #[test]
    #[ignore = "run by the runner tests"]
    fn reference_through_three_tasks_is_freed_once() -> lumen::Result<()> {
        let rt = lumen::init()?;
        let before = stores_everywhere(&rt)?;
        let start = rt.stats(0)?;
        let values: Vec<u64> = (0..(1u64 << 17)).collect(); // 1 MiB: stored, not inline
        let data = rt.put_slice(&values)?;
        let sum = hop::options()
            .rank(1)
            .remote(&rt, data.clone(), 3, rt.size())?;
        assert_eq!(sum.get()?, values.iter().sum::<u64>());
        let during = rt.stats(0)?;
        assert_eq!(
            during.stored_values + during.arena_objects,
            start.stored_values + start.arena_objects + 1
        );
        drop(data);
        drop(sum);
        // Every borrower has released by now (the tasks are done); the
        // owner frees on the last release.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let now = stores_everywhere(&rt)?;
            if now == before {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "not freed: {before:?} -> {now:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let end = rt.stats(0)?;
        // The put object and the result of the first hop, once each.
        assert_eq!(end.freed_objects - start.freed_objects, 2);
        assert_eq!(end.owned_objects, start.owned_objects);
        done("reference_through_three_tasks_is_freed_once");
        Ok(())
    }

    #[lumen::remote]
    fn fails(why: String) -> Result<u64, String> {
        Err(why)
    }

    #[lumen::remote]
    fn panics(n: u64) -> u64 {
        if n > 0 {
            panic!("deliberate panic with {n}");
        }
        n
    }

    /// A function id no rank has: what a rank running another build sees.
    #[allow(non_camel_case_types)]
    struct not_registered;

    impl RemoteFunction for not_registered {
        type Output = u64;
        const ID: u64 = 0x0123_4567_89ab_cdef;
        const NAME: &'static str = "nowhere::not_registered";
    }

    fn task_error(result: lumen::Result<u64>) -> lumen::runtime::TaskError {
        match result {
            Err(LumenError::Runtime(RuntimeError::Task(e))) => e,
            other => panic!("expected a task error, got {other:?}"),
        }
    }

    #[test]
    #[ignore = "run by the runner tests"]
    fn errors_and_panics_come_back_typed() -> lumen::Result<()> {
        let rt = lumen::init()?;
        let e = task_error(fails::remote(&rt, "no luck".to_string())?.get());
        assert_eq!(e.kind, TaskErrorKind::Error);
        assert_eq!(e.message, "no luck");
        assert!(e.function.ends_with("scenarios::fails"), "{e}");
        assert!(e.rank >= 1 && e.rank < rt.size(), "{e}");

        let e = task_error(panics::options().rank(1).remote(&rt, 7)?.get());
        assert_eq!(e.kind, TaskErrorKind::Panic);
        assert!(e.message.contains("deliberate panic with 7"), "{e}");
        assert_eq!(e.rank, 1);
        // The rank keeps serving.
        assert_eq!(panics::options().rank(1).remote(&rt, 0)?.get()?, 0);
        assert_eq!(add::options().rank(1).remote(&rt, 2, 3)?.get()?, 5);

        // An ObjectRef argument that failed fails its dependents.
        let failed = fails::remote(&rt, "upstream".to_string())?;
        let e = task_error(add::remote(&rt, &failed, 1)?.get());
        assert_eq!(e.kind, TaskErrorKind::DependencyFailed);
        assert!(e.message.contains("upstream"), "{e}");

        let e = task_error(
            rt.__submit_task::<not_registered, _>(&(), lumen::TaskOptions::default())?
                .get(),
        );
        assert_eq!(e.kind, TaskErrorKind::UnknownFunction);
        assert!(e.message.contains("same binary"), "{e}");

        // Infeasible requests fail at once.
        let r = add::options().num_cpus(64.0).remote(&rt, 1, 1);
        assert!(
            matches!(r, Err(LumenError::Runtime(RuntimeError::Infeasible { .. }))),
            "{r:?}"
        );
        done("errors_and_panics_come_back_typed");
        Ok(())
    }

    #[lumen::actor]
    struct Counter {
        n: u64,
    }

    #[lumen::actor]
    impl Counter {
        fn new(start: u64) -> Self {
            Counter { n: start }
        }

        fn incr(&mut self, by: u64) -> u64 {
            self.n += by;
            self.n
        }

        fn fail(&self) -> Result<u64, String> {
            Err(format!("counter at {}", self.n))
        }

        fn rank_of_self(&self) -> lumen::Result<u32> {
            Ok(lumen::current()?.rank())
        }

        /// Waits (up to 30 s) for the file `go`, then adds `by`.
        fn wait_then_incr(&mut self, go: String, by: u64) -> u64 {
            let deadline = Instant::now() + Duration::from_secs(30);
            while !std::path::Path::new(&go).exists() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            self.n += by;
            self.n
        }
    }

    /// Uses an actor handle received as an argument.
    #[lumen::remote]
    fn bump(counter: ActorHandle<Counter>, times: u64) -> lumen::Result<u64> {
        let mut last = 0;
        for _ in 0..times {
            last = counter.incr(1)?.get()?;
        }
        Ok(last)
    }

    #[test]
    #[ignore = "run by the runner tests"]
    fn actors_named_passed_and_killed() -> lumen::Result<()> {
        let rt = lumen::init()?;
        let counter = Counter::actor_options()
            .name("the-counter")
            .rank(2)
            .new_remote(&rt, 100)?;
        assert_eq!(counter.raw().rank(), 2);
        assert_eq!(counter.incr(1)?.get()?, 101);
        // Passed into tasks.
        let bumps: Vec<ObjectRef<u64>> = (0..3)
            .map(|_| bump::remote(&rt, counter.clone(), 10))
            .collect::<lumen::Result<_>>()?;
        for b in &bumps {
            b.get()?;
        }
        // Looked up by name.
        let same = rt.get_actor::<Counter>("the-counter")?;
        assert_eq!(same.incr(0)?.get()?, 131);
        assert!(matches!(
            rt.get_actor::<Counter>("nobody"),
            Err(LumenError::Runtime(RuntimeError::NoSuchActor { .. }))
        ));
        assert!(matches!(
            rt.get_actor::<Journal>("the-counter"),
            Err(LumenError::Runtime(RuntimeError::WrongActorClass { .. }))
        ));
        assert!(matches!(
            Counter::actor_options()
                .name("the-counter")
                .new_remote(&rt, 0),
            Err(LumenError::Runtime(RuntimeError::NameTaken { .. }))
        ));
        // A method's error.
        let e = task_error(counter.fail()?.get());
        assert_eq!(e.kind, TaskErrorKind::Error);
        assert_eq!(e.message, "counter at 131");
        // Killed: later calls fail.
        counter.kill()?;
        let after = same.incr(1).and_then(|r| r.get());
        match after {
            Err(LumenError::Runtime(RuntimeError::Task(e))) => {
                assert_eq!(e.kind, TaskErrorKind::ActorDied)
            }
            Err(LumenError::Runtime(RuntimeError::ActorDied { .. })) => {}
            other => panic!("expected ActorDied, got {other:?}"),
        }
        done("actors_named_passed_and_killed");
        Ok(())
    }

    /// Writes its count to `marker` when dropped (on its host rank).
    #[lumen::actor]
    struct Tracked {
        marker: String,
        n: u64,
    }

    impl Drop for Tracked {
        fn drop(&mut self) {
            let _ = std::fs::write(&self.marker, self.n.to_string());
        }
    }

    #[lumen::actor]
    impl Tracked {
        fn new(marker: String) -> Self {
            Tracked { marker, n: 0 }
        }

        fn incr(&mut self, by: u64) -> u64 {
            self.n += by;
            self.n
        }

        fn slow_incr(&mut self, by: u64, ms: u64) -> u64 {
            std::thread::sleep(Duration::from_millis(ms));
            self.n += by;
            self.n
        }
    }

    /// A fresh directory for this driver's marker files.
    fn marker_dir(scenario: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("lumen-{scenario}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("creating a temporary directory");
        dir
    }

    /// Polls `done` until it holds; actor shutdown travels as messages.
    fn wait_until(what: &str, mut done: impl FnMut() -> lumen::Result<bool>) -> lumen::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !done()? {
            assert!(Instant::now() < deadline, "still waiting: {what}");
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }

    /// What an actor wrote when it was dropped.
    fn marker_text(path: &std::path::Path) -> Option<String> {
        std::fs::read_to_string(path).ok().filter(|t| !t.is_empty())
    }

    /// Actors running on every rank.
    fn actors_hosted(rt: &Runtime) -> lumen::Result<Vec<u64>> {
        (0..rt.size())
            .map(|r| rt.stats(r).map(|s| s.actors_hosted))
            .collect()
    }

    #[test]
    #[ignore = "run by the runner tests"]
    fn actor_dropped_with_its_last_handle() -> lumen::Result<()> {
        let rt = lumen::init()?;
        let dir = marker_dir("actor-gc");
        let marker = dir.join("dropped");
        let hosted = actors_hosted(&rt)?;
        let tracked = Tracked::actor_options()
            .rank(1)
            .new_remote(&rt, marker.display().to_string())?;
        let copy = tracked.clone();
        // Calls submitted before the last handle drops (most still queued
        // when it does) run, and their results come back.
        let pending: Vec<ObjectRef<u64>> = (0..5)
            .map(|_| copy.slow_incr(1, 20))
            .collect::<lumen::Result<_>>()?;
        drop(tracked);
        drop(copy);
        let results: Vec<u64> = pending
            .iter()
            .map(|r| r.get())
            .collect::<lumen::Result<_>>()?;
        assert_eq!(results, vec![1, 2, 3, 4, 5]);
        wait_until("the actor's Drop writes its marker", || {
            Ok(marker_text(&marker).is_some())
        })?;
        // Dropped after every call ran.
        assert_eq!(marker_text(&marker).as_deref(), Some("5"));
        wait_until("the actor's thread ends", || {
            Ok(actors_hosted(&rt)? == hosted)
        })?;
        let _ = std::fs::remove_dir_all(&dir);
        done("actor_dropped_with_its_last_handle");
        Ok(())
    }

    /// Waits for the file `go`, then reports whether the actor was already
    /// dropped and calls it.
    #[lumen::remote]
    fn call_when_told(
        tracked: ActorHandle<Tracked>,
        go: String,
        marker: String,
    ) -> lumen::Result<(bool, u64)> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !std::path::Path::new(&go).exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        let dropped = std::path::Path::new(&marker).exists();
        Ok((dropped, tracked.incr(10)?.get()?))
    }

    #[test]
    #[ignore = "run by the runner tests"]
    fn actor_handle_in_a_task_keeps_it_alive() -> lumen::Result<()> {
        let rt = lumen::init()?;
        let dir = marker_dir("actor-borrowed");
        let marker = dir.join("dropped");
        let go = dir.join("go");
        let tracked = Tracked::actor_options()
            .rank(1)
            .new_remote(&rt, marker.display().to_string())?;
        assert_eq!(tracked.incr(1)?.get()?, 1);
        let task = call_when_told::options().rank(2).remote(
            &rt,
            tracked.clone(),
            go.display().to_string(),
            marker.display().to_string(),
        )?;
        // The driver's last handle goes; the task's copy keeps the actor.
        drop(tracked);
        std::fs::write(&go, b"go").expect("writing the go file");
        let (dropped_before_call, n) = task.get()?;
        assert!(
            !dropped_before_call,
            "the actor was dropped while a task held a handle"
        );
        assert_eq!(n, 11);
        wait_until("the actor's Drop writes its marker", || {
            Ok(marker_text(&marker).is_some())
        })?;
        assert_eq!(marker_text(&marker).as_deref(), Some("11"));
        let _ = std::fs::remove_dir_all(&dir);
        done("actor_handle_in_a_task_keeps_it_alive");
        Ok(())
    }

    #[test]
    #[ignore = "run by the runner tests"]
    fn named_actor_outlives_its_handles() -> lumen::Result<()> {
        let rt = lumen::init()?;
        let dir = marker_dir("actor-named");
        let named_marker = dir.join("named");
        let unnamed_marker = dir.join("unnamed");
        let named = Tracked::actor_options()
            .name("kept")
            .rank(1)
            .new_remote(&rt, named_marker.display().to_string())?;
        assert_eq!(named.incr(1)?.get()?, 1);
        drop(named);
        // An unnamed actor on the same rank, dropped after it: once it is
        // gone, the named one would have been released too if it counted.
        let unnamed = Tracked::actor_options()
            .rank(1)
            .new_remote(&rt, unnamed_marker.display().to_string())?;
        assert_eq!(unnamed.incr(1)?.get()?, 1);
        drop(unnamed);
        wait_until("the unnamed actor is dropped", || {
            Ok(marker_text(&unnamed_marker).is_some())
        })?;
        assert!(!named_marker.exists(), "the named actor was dropped");
        let again = rt.get_actor::<Tracked>("kept")?;
        assert_eq!(again.incr(1)?.get()?, 2);
        drop(again);
        let again = rt.get_actor::<Tracked>("kept")?;
        assert_eq!(again.incr(1)?.get()?, 3);
        // Until killed.
        again.kill()?;
        wait_until("the killed actor is dropped", || {
            Ok(marker_text(&named_marker).is_some())
        })?;
        assert_eq!(marker_text(&named_marker).as_deref(), Some("3"));
        let _ = std::fs::remove_dir_all(&dir);
        done("named_actor_outlives_its_handles");
        Ok(())
    }

    #[lumen::remote]
    fn sleepy(ms: u64) -> u64 {
        std::thread::sleep(Duration::from_millis(ms));
        ms
    }

    #[test]
    #[ignore = "run by the runner tests"]
    fn put_get_wait_cancel() -> lumen::Result<()> {
        let rt = lumen::init()?;
        // put / get of a serde value and of a large slice.
        let small = rt.put(&("hello".to_string(), 42u32))?;
        assert_eq!(small.get()?, ("hello".to_string(), 42));
        let big: Vec<f64> = (0..(4 << 20)).map(|i| i as f64).collect(); // 32 MiB
        let big_ref = rt.put_slice(&big)?;
        assert_eq!(&*big_ref.get()?, &big[..]);
        // wait: the quick ones first.
        let refs: Vec<ObjectRef<u64>> = [(1500u64, 1), (1, 2), (2, 3), (3, 2)]
            .iter()
            .map(|&(ms, rank)| sleepy::options().rank(rank).remote(&rt, ms))
            .collect::<lumen::Result<_>>()?;
        let (ready, pending) = lumen::wait(&refs, 3, Some(Duration::from_secs(30)))?;
        assert_eq!(ready.len(), 3);
        assert_eq!(pending.len(), 1);
        assert_eq!(pending[0].id(), refs[0].id());
        // get with a timeout.
        let slow = sleepy::options().rank(1).remote(&rt, 2000)?;
        assert!(matches!(
            slow.get_timeout(Duration::from_millis(100)),
            Err(LumenError::Runtime(RuntimeError::Timeout { .. }))
        ));
        // cancel a queued task: rank 1 is busy with `slow`, so this waits there.
        let queued = sleepy::options().rank(1).remote(&rt, 1)?;
        queued.cancel()?;
        let e = task_error(queued.get());
        assert_eq!(e.kind, TaskErrorKind::Cancelled);
        assert_eq!(slow.get()?, 2000);
        // All of `refs` have finished (rank 1 ran the slow one before
        // `slow`): a wait by value moves the first `num_returns`, in order.
        let (first, rest) = lumen::wait(refs.clone(), 2, None)?;
        let ids = |v: &[ObjectRef<u64>]| v.iter().map(ObjectRef::id).collect::<Vec<_>>();
        assert_eq!(ids(&first), ids(&refs[..2]));
        assert_eq!(ids(&rest), ids(&refs[2..]));
        // .await
        let fut = add::remote(&rt, 20, 22)?;
        assert_eq!(block_on(fut.into_future())?, 42);
        let many: Vec<ObjectRef<u64>> = (0..50)
            .map(|i| add::remote(&rt, i, 1))
            .collect::<lumen::Result<_>>()?;
        let total = block_on(async {
            let mut total = 0;
            for f in many {
                total += f.await?;
            }
            Ok::<u64, LumenError>(total)
        })?;
        assert_eq!(total, (1..=50).sum::<u64>());
        // A borrowed reference (owned by the rank that ran the task).
        let (_, borrowed) = own_something::remote(&rt, 8)?.get()?;
        assert_eq!(block_on(borrowed.into_future())?, 8);
        // whoami: tasks run on serving ranks only.
        let ranks: Vec<u32> = (0..8)
            .map(|_| whoami::remote(&rt))
            .map(|r| r.and_then(|r| r.get()))
            .collect::<lumen::Result<_>>()?;
        assert!(ranks.iter().all(|&r| r >= 1 && r < rt.size()), "{ranks:?}");
        done("put_get_wait_cancel");
        Ok(())
    }

    use std::future::{Future, IntoFuture};

    /// A minimal executor for one future.
    fn block_on<F: Future>(future: F) -> F::Output {
        use std::sync::Arc;
        use std::task::{Context, Poll, Wake, Waker};
        struct Unpark(std::thread::Thread);
        impl Wake for Unpark {
            fn wake(self: Arc<Self>) {
                self.0.unpark();
            }
        }
        let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
        let mut cx = Context::from_waker(&waker);
        let mut future = std::pin::pin!(future);
        loop {
            if let Poll::Ready(v) = future.as_mut().poll(&mut cx) {
                return v;
            }
            std::thread::park();
        }
    }

    /// Kills its own rank on the first attempt (a marker file tells).
    #[lumen::remote]
    fn die_once(marker: String) -> u32 {
        if std::fs::metadata(&marker).is_err() {
            let _ = std::fs::write(&marker, b"attempted");
            // SAFETY: plain system calls on our own process.
            unsafe {
                libc::kill(libc::getpid(), libc::SIGKILL);
            }
        }
        lumen::current().map(|rt| rt.rank()).unwrap_or(u32::MAX)
    }

    /// Kills its own rank on the first attempt, then sums its arguments.
    #[lumen::remote]
    fn sum_or_die_once(
        data: ObjectRef<[u64]>,
        extra: ObjectRef<u64>,
        marker: String,
    ) -> lumen::Result<u64> {
        if std::fs::metadata(&marker).is_err() {
            let _ = std::fs::write(&marker, b"attempted");
            // SAFETY: plain system call on our own process.
            unsafe {
                libc::kill(libc::getpid(), libc::SIGKILL);
            }
        }
        Ok(data.get()?.iter().sum::<u64>() + extra.get()?)
    }

    #[test]
    #[ignore = "run by the runner tests"]
    fn task_retried_with_object_arguments() -> lumen::Result<()> {
        let rt = lumen::init()?;
        let dir = marker_dir("task-retry-args");
        let marker = dir.join("attempted").display().to_string();
        let values: Vec<u64> = (0..(1u64 << 17)).collect(); // 1 MiB: stored
                                                            // The driver keeps no handle: while the task is in flight only its
                                                            // submission keeps the arguments alive, also across the retry.
        let sum = sum_or_die_once::options().max_retries(1).remote(
            &rt,
            rt.put_slice(&values)?,
            rt.put(&7u64)?,
            marker,
        )?;
        assert_eq!(
            sum.get_timeout(Duration::from_secs(60))?,
            values.iter().sum::<u64>() + 7
        );
        let _ = std::fs::remove_dir_all(&dir);
        done("task_retried_with_object_arguments");
        Ok(())
    }

    #[lumen::remote]
    fn die_always() -> u32 {
        // SAFETY: plain system call on our own process.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
        0
    }

    #[test]
    #[ignore = "run by the runner tests"]
    fn worker_killed_mid_task() -> lumen::Result<()> {
        let rt = lumen::init()?;
        println!("job id {}", rt.job_id());
        let marker = std::env::temp_dir().join(format!("lumen-die-once-{}", std::process::id()));
        let _ = std::fs::remove_file(&marker);
        let first = die_once::options()
            .rank(1)
            .max_retries(2)
            .remote(&rt, marker.display().to_string())?;
        // Pinned to rank 1, which died: the retry is infeasible there, so
        // the error names the death; unpinned, a retry runs elsewhere.
        let pinned = first.get();
        assert!(pinned.is_err(), "{pinned:?}");
        let _ = std::fs::remove_file(&marker);
        let retried = die_once::options()
            .max_retries(2)
            .remote(&rt, marker.display().to_string())?;
        let rank = retried.get_timeout(Duration::from_secs(30))?;
        println!("retried task finished on rank {rank}");
        let _ = std::fs::remove_file(&marker);
        let e = task_error(
            die_always::options()
                .max_retries(0)
                .remote(&rt)?
                .get_timeout(Duration::from_secs(30))
                .map(u64::from),
        );
        assert!(
            matches!(e.kind, TaskErrorKind::WorkerDied { attempts: 1 }),
            "{e}"
        );
        // The survivors still serve.
        assert_eq!(add::remote(&rt, 1, 1)?.get()?, 2);
        done("worker_killed_mid_task");
        Ok(())
    }

    /// Puts a value on this rank (which then owns it) and returns the ref.
    #[lumen::remote]
    fn own_something(len: u64) -> lumen::Result<(ObjectRef<[u8]>, ObjectRef<u64>)> {
        let rt = lumen::current()?;
        Ok((rt.put_slice(&vec![3u8; len as usize])?, rt.put(&len)?))
    }

    #[test]
    #[ignore = "run by the runner tests"]
    fn owner_dies() -> lumen::Result<()> {
        let rt = lumen::init()?;
        let (big, small) = own_something::options()
            .rank(1)
            .remote(&rt, 1 << 20)?
            .get()?;
        // Rank 1 owns both (neither read yet: a value already read stays
        // readable from the borrower's cache); kill it.
        let killed = die_always::options().rank(1).max_retries(0).remote(&rt)?;
        assert!(killed.get_timeout(Duration::from_secs(30)).is_err());
        // Passing a dead owner's ref on fails: nobody can register it.
        assert!(matches!(
            rt.put(&small),
            Err(LumenError::Runtime(RuntimeError::OwnerDied { .. }))
        ));
        let e = big.get_timeout(Duration::from_secs(30));
        assert!(e.is_err(), "the value of a dead owner came back");
        match small.get_timeout(Duration::from_secs(30)) {
            Ok(v) => panic!("value {v} of a dead owner"),
            Err(LumenError::Runtime(RuntimeError::Task(e))) => {
                assert_eq!(e.kind, TaskErrorKind::OwnerDied, "{e}")
            }
            Err(e) => panic!("unexpected error {e:?}"),
        }
        // The others still serve.
        assert_eq!(add::remote(&rt, 2, 2)?.get()?, 4);
        done("owner_dies");
        Ok(())
    }

    /// Kills the rank hosting `counter` (via a task pinned there).
    fn kill_host(rt: &Runtime, counter: &ActorHandle<Counter>) -> lumen::Result<()> {
        let killed = die_always::options()
            .rank(counter.raw().rank())
            .max_retries(0)
            .remote(rt)?;
        assert!(killed.get_timeout(Duration::from_secs(30)).is_err());
        Ok(())
    }

    #[test]
    #[ignore = "run by the runner tests"]
    fn actor_restarts() -> lumen::Result<()> {
        let rt = lumen::init()?;
        let counter = Counter::actor_options()
            .rank(1)
            .max_restarts(1)
            .new_remote(&rt, 100)?;
        assert_eq!(counter.incr(1)?.get()?, 101);
        kill_host(&rt, &counter)?;
        // Restarted on another rank with fresh state; the old handle finds it.
        assert_eq!(counter.incr(1)?.get_timeout(Duration::from_secs(30))?, 101);
        // A task elsewhere holding a copy of the old handle finds it too
        // (its rank may not have seen the death yet: a call it sends to the
        // dead rank fails, as calls in flight do; the next one goes through).
        assert_eq!(bump_after_death::remote(&rt, counter.clone())?.get()?, 102);
        // No restarts left: the second death is final.
        let moved = counter.rank_of_self()?.get()?;
        assert_ne!(moved, 1);
        let killed = die_always::options()
            .rank(moved)
            .max_retries(0)
            .remote(&rt)?;
        assert!(killed.get_timeout(Duration::from_secs(30)).is_err());
        match counter
            .incr(1)
            .and_then(|r| r.get_timeout(Duration::from_secs(30)))
        {
            Err(LumenError::Runtime(RuntimeError::ActorDied { .. })) => {}
            Err(LumenError::Runtime(RuntimeError::Task(e)))
                if e.kind == TaskErrorKind::ActorDied => {}
            other => panic!("expected ActorDied, got {other:?}"),
        }
        done("actor_restarts");
        Ok(())
    }

    #[test]
    #[ignore = "run by the runner tests"]
    fn actor_call_retried() -> lumen::Result<()> {
        let rt = lumen::init()?;
        let dir = marker_dir("actor-retry");
        let go = dir.join("go").display().to_string();
        let counter = Counter::actor_options()
            .rank(1)
            .max_restarts(1)
            .max_task_retries(1)
            .new_remote(&rt, 100)?;
        assert_eq!(counter.incr(1)?.get()?, 101);
        // Without task retries (Ray's default) a call in flight fails.
        let plain = Counter::actor_options()
            .rank(1)
            .max_restarts(1)
            .new_remote(&rt, 0)?;
        assert_eq!(plain.incr(1)?.get()?, 1);
        // Both calls wait on rank 1 when it dies.
        let retried = counter.wait_then_incr(go.clone(), 5)?;
        let lost = plain.wait_then_incr(go.clone(), 5)?;
        kill_host(&rt, &counter)?;
        std::fs::write(&go, b"go").expect("writing the go file");
        // Sent again to the restarted actor (fresh state: 100 + 5).
        assert_eq!(retried.get_timeout(Duration::from_secs(60))?, 105);
        assert_ne!(counter.rank_of_self()?.get()?, 1);
        match lost.get_timeout(Duration::from_secs(60)) {
            Err(LumenError::Runtime(RuntimeError::Task(e)))
                if e.kind == TaskErrorKind::ActorDied => {}
            other => panic!("expected ActorDied, got {other:?}"),
        }
        // The restarted actors serve later calls.
        assert_eq!(counter.incr(1)?.get()?, 106);
        assert_eq!(plain.incr(1)?.get_timeout(Duration::from_secs(60))?, 1);
        let _ = std::fs::remove_dir_all(&dir);
        done("actor_call_retried");
        Ok(())
    }

    /// One increment, retried once if the first call went to the dead rank.
    #[lumen::remote]
    fn bump_after_death(counter: ActorHandle<Counter>) -> lumen::Result<u64> {
        match counter.incr(1).and_then(|r| r.get()) {
            Err(LumenError::Runtime(RuntimeError::Task(e)))
                if e.kind == TaskErrorKind::ActorDied =>
            {
                counter.incr(1)?.get()
            }
            other => other,
        }
    }

    #[test]
    #[ignore = "run by the runner tests"]
    fn prints_job_id() -> lumen::Result<()> {
        let rt = lumen::init().inspect_err(|e| eprintln!("init failed: {e}"))?;
        println!("job id {}", rt.job_id());
        assert_eq!(add::remote(&rt, 1, 2)?.get()?, 3);
        let big = rt.put_slice(&vec![7u8; 1 << 20])?;
        assert_eq!(big.get()?.len(), 1 << 20);
        done("prints_job_id");
        Ok(())
    }

    #[test]
    #[ignore = "run by the runner tests"]
    fn driver_panics() {
        let rt = lumen::init().expect("init");
        println!("job id {}", rt.job_id());
        let _ = add::remote(&rt, 1, 2).and_then(|r| r.get());
        panic!("the driver panics on purpose");
    }

    #[test]
    #[ignore = "run by the runner tests"]
    fn driver_killed() {
        let rt = lumen::init().expect("init");
        println!("job id {}", rt.job_id());
        let _ = add::remote(&rt, 1, 2).and_then(|r| r.get());
        // SAFETY: plain system call on our own process.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
    }
}
