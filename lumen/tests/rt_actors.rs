//! Actors on real processes, on the embedded local cluster and under
//! `lumen run`: per-caller order, names, kill, garbage collection when the
//! last handle drops, restarts after the host dies (`max_restarts`) and
//! calls sent again (`max_task_retries`). Same scenario scheme as
//! `rt_core.rs` (see `common/scenario.rs`).

#[macro_use]
mod common;

use common::scenario::*;

both_ways!(
    actor_keeps_per_caller_order,
    actors_named_passed_and_killed,
    actor_dropped_with_its_last_handle,
    actor_handle_in_a_task_keeps_it_alive,
    named_actor_outlives_its_handles,
);

#[test]
fn lumen_run_keep_going_actor_restarts_after_its_rank_dies() {
    launched_keep_going("actor_restarts", 5);
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

    fn done(name: &str) {
        println!("scenario {name}: ok");
    }

    fn task_error(result: lumen::Result<u64>) -> lumen::runtime::TaskError {
        match result {
            Err(LumenError::Runtime(RuntimeError::Task(e))) => e,
            other => panic!("expected a task error, got {other:?}"),
        }
    }

    #[lumen::remote]
    fn die_always() -> u32 {
        // SAFETY: plain system call on our own process.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
        0
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
        // The creator counted it (lumen_actors_restarted_total).
        assert_eq!(rt.stats(0)?.actors_restarted, 1);
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
}
