//! The core runtime on real processes, in both ways a program can start:
//! on the embedded local cluster (the test binary re-executed as workers,
//! whose pre-`main` entry takes over) and under `lumen run -n 4`: tasks,
//! objects, errors, retries, and what a job leaves behind. Actors are in
//! `rt_actors.rs`.
//!
//! Each scenario is an ignored test in `scenarios` that calls
//! `lumen::init()` itself; the runner tests below start this same binary
//! with the scenario's name, bare or under `lumen run`, with a time limit
//! (see `common/scenario.rs`).

#[macro_use]
mod common;

use std::process::Command;

use common::scenario::*;
use common::*;

both_ways!(
    nested_tasks_three_levels,
    ten_thousand_tiny_tasks,
    reference_through_three_tasks_is_freed_once,
    errors_and_panics_come_back_typed,
    put_get_wait_cancel,
);

/// `LUMEN_METRICS_PORT`: every rank of the embedded cluster serves its
/// counters in Prometheus' text format on port + local rank; the scenario
/// scrapes the driver and the workers after running tasks.
#[test]
fn embedded_ranks_serve_prometheus_metrics() {
    // Three consecutive free ports (driver and two workers).
    let base = (0..50)
        .find_map(|_| {
            let first = std::net::TcpListener::bind("127.0.0.1:0").ok()?;
            let port = first.local_addr().ok()?.port();
            let rest: Vec<_> = (1..3)
                .map(|i| std::net::TcpListener::bind(("127.0.0.1", port.checked_add(i)?)).ok())
                .collect::<Option<_>>()?;
            drop((first, rest));
            Some(port)
        })
        .expect("three consecutive free ports");
    let all = embedded_with_env(
        "metrics_are_scraped",
        2,
        &[("LUMEN_METRICS_PORT", &base.to_string())],
    );
    assert!(all.contains("lumen_tasks_executed_total"), "{all}");
}

/// `LUMEN_TIMELINE`: rank 0 gathers every rank's events as the job ends
/// and writes one Chrome trace for the job (clocks aligned, offsets in
/// `otherData`), and the others write no file of their own; in it each
/// task's submit (rank 0), run (the worker it went to) and reply (rank 0)
/// appear in that order, on those ranks, and each actor call is a span on
/// the actor's rank. `rt.timeline(path)` writes the same mid-job; `lumen
/// timeline merge` reads such files.
#[test]
fn embedded_timeline_has_each_tasks_submit_run_and_reply_in_order() {
    let dir = std::env::temp_dir().join(format!("lumen-timeline-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let base = dir.join("trace.json");
    let mid = dir.join("mid.json");
    embedded_with_env(
        "timeline_records_tasks",
        2,
        &[
            ("LUMEN_TIMELINE", base.to_str().unwrap()),
            ("LUMEN_TEST_MID_TRACE", mid.to_str().unwrap()),
        ],
    );
    let read = |path: &std::path::Path| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    };
    // One file for the job; the workers were gathered, so wrote none.
    let trace = read(&base);
    assert_eq!(trace["otherData"]["ranks"], 3, "{}", trace["otherData"]);
    for rank in 0..3 {
        assert!(trace["otherData"]["clock_offsets_us"][rank.to_string()].is_i64());
        assert!(!dir.join(format!("trace.rank{rank}.json")).exists());
    }
    // The mid-job file holds the tasks (they had all finished).
    let early = read(&mid);
    assert_eq!(early["otherData"]["ranks"], 3);
    let runs = |t: &serde_json::Value| {
        t["traceEvents"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["name"].as_str().is_some_and(|n| n.starts_with("run ")))
            .count()
    };
    assert_eq!(runs(&early), 20);
    let events = trace["traceEvents"].as_array().unwrap();
    let find = |prefix: &str, object: &str| {
        events
            .iter()
            .find(|e| {
                e["name"].as_str().is_some_and(|n| n.starts_with(prefix))
                    && e["args"]["object"] == object
            })
            .cloned()
    };
    let submits: Vec<&serde_json::Value> = events
        .iter()
        .filter(|e| e["name"].as_str().is_some_and(|n| n.starts_with("submit ")))
        .collect();
    assert_eq!(
        submits.len(),
        20 + 3,
        "one submit per task and per actor call"
    );
    for submit in submits {
        let object = submit["args"]["object"].as_str().unwrap();
        let run = find("run ", object)
            .or_else(|| find("call ", object))
            .unwrap_or_else(|| panic!("no run of {object}"));
        let reply = find("reply", object).unwrap_or_else(|| panic!("no reply of {object}"));
        assert_eq!(submit["pid"], 0, "submitted by the driver");
        assert_eq!(run["pid"], submit["args"]["peer"], "run where it was sent");
        assert_eq!(reply["pid"], 0, "the reply reached the owner");
        assert_eq!(reply["args"]["peer"], run["pid"]);
        let (s, r, d, p) = (
            submit["ts"].as_u64().unwrap(),
            run["ts"].as_u64().unwrap(),
            run["dur"].as_u64().unwrap(),
            reply["ts"].as_u64().unwrap(),
        );
        assert!(
            s <= r && r + d <= p,
            "{object}: submit {s}, run {r}+{d}, reply {p}"
        );
        let name = run["name"].as_str().unwrap();
        assert!(name.ends_with("add") || name.contains("incr"), "{run}");
    }
    let calls: Vec<&serde_json::Value> = events.iter().filter(|e| e["cat"] == "actor").collect();
    assert_eq!(calls.len(), 3, "three actor calls");
    // The actor's placement: decided on the driver, rank 1 chosen.
    let placed: Vec<&serde_json::Value> =
        events.iter().filter(|e| e["cat"] == "placement").collect();
    assert_eq!(placed.len(), 1, "{placed:?}");
    assert!(placed[0]["name"]
        .as_str()
        .unwrap()
        .starts_with("place actor "));
    assert_eq!(
        (
            placed[0]["pid"].as_u64(),
            placed[0]["args"]["peer"].as_u64()
        ),
        (Some(0), Some(1))
    );
    // `lumen timeline merge` reads the job's file.
    let merged = dir.join("merged.json");
    let output = Command::new(lumen())
        .args(["timeline", "merge"])
        .arg(&base)
        .arg("-o")
        .arg(&merged)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        read(&merged)["traceEvents"].as_array().unwrap().len(),
        events.len()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn embedded_worker_killed_mid_task_is_retried_or_reported() {
    // Three workers die in the scenario; one is left to serve.
    let all = embedded_with("worker_killed_mid_task", 4);
    // The killed worker's death was noticed and the job still ended cleanly.
    let job = printed_job_id(&all);
    assert!(leftover_segments(&job).is_empty(), "{all}");
    assert!(processes_of_job(&job).is_empty(), "orphans:\n{all}");
}

#[test]
fn lumen_run_keep_going_worker_killed_mid_task_is_retried_or_reported() {
    // Rank 0 drives, ranks 1-4 serve; three of them die in the scenario.
    let all = launched_keep_going("worker_killed_mid_task", 5);
    assert!(all.contains("the job goes on without it"), "{all}");
}

#[test]
fn embedded_owner_death_fails_borrowers_instead_of_hanging() {
    // Four workers: the scenario kills one.
    embedded_with("owner_dies", 4);
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

    /// A fresh directory for this driver's marker files.
    fn marker_dir(scenario: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("lumen-{scenario}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("creating a temporary directory");
        dir
    }

    /// One HTTP request to a rank's metrics port; the whole answer.
    fn scrape(port: u16, request: &str) -> String {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))
            .unwrap_or_else(|e| panic!("no metrics on port {port}: {e}"));
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        stream.write_all(request.as_bytes()).unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        answer
    }

    /// The value of `metric` for `rank` in a scrape.
    fn sample(text: &str, metric: &str, rank: u32) -> Option<u64> {
        text.lines()
            .filter(|l| l.starts_with(&format!("{metric}{{")))
            .find(|l| l.contains(&format!("rank=\"{rank}\"")))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }

    #[test]
    #[ignore = "run by the runner tests"]
    fn timeline_records_tasks() -> lumen::Result<()> {
        let rt = lumen::init()?;
        let refs: Vec<ObjectRef<u64>> = (0..20u64)
            .map(|i| add::remote(&rt, i, 1))
            .collect::<lumen::Result<_>>()?;
        for r in &refs {
            r.get_timeout(Duration::from_secs(60))?;
        }
        if let Ok(path) = std::env::var("LUMEN_TEST_MID_TRACE") {
            let events = rt.timeline(&path)?;
            assert!(events >= 60, "{events} events");
        }
        let tally = Tally::actor_options().rank(1).new_remote(&rt)?;
        for _ in 0..3 {
            tally.incr()?.get()?;
        }
        done("timeline_records_tasks");
        Ok(())
    }

    #[lumen::actor]
    struct Tally {
        n: u64,
    }

    #[lumen::actor]
    impl Tally {
        fn new() -> Self {
            Tally { n: 0 }
        }

        fn incr(&mut self) -> u64 {
            self.n += 1;
            self.n
        }
    }

    #[test]
    #[ignore = "run by the runner tests"]
    fn metrics_are_scraped() -> lumen::Result<()> {
        let rt = lumen::init()?;
        let base: u16 = std::env::var("LUMEN_METRICS_PORT")
            .unwrap()
            .parse()
            .unwrap();
        let refs: Vec<ObjectRef<u64>> = (0..40u64)
            .map(|i| add::remote(&rt, i, 1))
            .collect::<lumen::Result<_>>()?;
        for r in &refs {
            r.get_timeout(Duration::from_secs(60))?;
        }
        let driver = scrape(base, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(driver.starts_with("HTTP/1.1 200 OK"), "{driver}");
        assert!(
            driver.contains("Content-Type: text/plain; version=0.0.4"),
            "{driver}"
        );
        assert!(
            driver.contains("# TYPE lumen_tasks_pending gauge"),
            "{driver}"
        );
        assert_eq!(
            sample(&driver, "lumen_tasks_pending", 0),
            Some(0),
            "{driver}"
        );
        // The workers (local ranks 1 and 2) ran the tasks between them.
        let executed: u64 = (1..=2u16)
            .map(|i| {
                let text = scrape(base + i, "GET /metrics HTTP/1.0\r\n\r\n");
                sample(&text, "lumen_tasks_executed_total", u32::from(i))
                    .unwrap_or_else(|| panic!("no task counter for rank {i}:\n{text}"))
            })
            .sum();
        assert!(executed >= 40, "the workers say they ran {executed} tasks");
        // Bad requests are answered and do not stop the server.
        assert!(scrape(base, "POST /metrics HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 405"));
        assert!(scrape(base, "GET /other HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404"));
        assert!(scrape(base, "\u{0}\u{1}garbage\r\n\r\n").starts_with("HTTP/1.1 405"));
        let again = scrape(base, "GET /metrics HTTP/1.1\r\n\r\n");
        assert!(again.starts_with("HTTP/1.1 200 OK"), "{again}");
        println!("{driver}");
        done("metrics_are_scraped");
        Ok(())
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
        // The driver counted the retry (lumen_tasks_retried_total).
        assert!(rt.stats(0)?.tasks_retried >= 1, "{:?}", rt.stats(0)?);
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
