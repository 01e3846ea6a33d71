//! Waiting threads that drive progress themselves (issue 16): with a wait
//! spin, a caller blocked in `get` takes its reply on its own thread (a
//! poll session, the progress thread standing by) and an idle executor
//! thread polls for its next task before it sleeps. These run the same
//! work with the spin forced on (`LUMEN_RT_SPIN_US=100`, on ranks that
//! share cores, where the default is off) and off, and check that every
//! answer is right either way: sync and batched tasks, nested tasks (a task
//! blocked in `get` spins while the idle thread of its rank may not),
//! actor calls, a worker reading the driver's object (the driver's poller
//! serves the request), and `wait` with a timeout; the counters say which
//! path ran.

mod common;

use common::scenario::embedded_with_env;

fn run(name: &str, spin_us: &str) -> String {
    embedded_with_env(name, 3, &[("LUMEN_RT_SPIN_US", spin_us)])
}

#[test]
fn spinning_waiters_get_every_answer_on_their_own_thread() {
    run("spinning", "100");
}

#[test]
fn without_a_spin_nothing_polls_and_every_answer_is_handed_over() {
    run("sleeping", "0");
}

mod scenarios {
    use std::time::Duration;

    use lumen::runtime::{ObjectRef, RankStats, Runtime};

    #[lumen::remote]
    fn add(a: u64, b: u64) -> u64 {
        a + b
    }

    #[lumen::remote]
    fn nested(depth: u64) -> lumen::Result<u64> {
        if depth == 0 {
            return Ok(1);
        }
        let rt = lumen::runtime::current()?;
        let inner = nested::remote(&rt, depth - 1)?;
        Ok(inner.get()? + 1)
    }

    #[lumen::remote]
    fn sum_of(values: ObjectRef<Vec<u64>>) -> lumen::Result<u64> {
        Ok(values.get()?.iter().sum())
    }

    #[lumen::actor]
    struct Counter {
        n: u64,
    }

    #[lumen::actor]
    impl Counter {
        fn new() -> Self {
            Counter { n: 0 }
        }

        fn bump(&mut self) -> u64 {
            self.n += 1;
            self.n
        }
    }

    /// The same work for both scenarios; returns every rank's counters.
    fn work(rt: &Runtime) -> lumen::Result<Vec<RankStats>> {
        for i in 0..300u64 {
            assert_eq!(add::remote(rt, i, 1)?.get()?, i + 1);
        }
        let batch: Vec<_> = (0..500u64)
            .map(|i| add::remote(rt, i, i))
            .collect::<lumen::Result<_>>()?;
        for (i, r) in batch.iter().enumerate() {
            assert_eq!(r.get()?, 2 * i as u64);
        }
        let deep: Vec<_> = (0..6)
            .map(|_| nested::remote(rt, 4))
            .collect::<lumen::Result<_>>()?;
        for r in &deep {
            assert_eq!(r.get()?, 5);
        }
        let counter = Counter::new_remote(rt)?;
        for i in 1..=200u64 {
            assert_eq!(counter.bump()?.get()?, i);
        }
        let values = rt.put(&(0..1000u64).collect::<Vec<_>>())?;
        for _ in 0..20 {
            assert_eq!(sum_of::remote(rt, values.clone())?.get()?, 499_500);
        }
        let slow = nested::remote(rt, 3)?;
        let (ready, _) = lumen::wait(vec![slow.clone()], 1, Some(Duration::from_secs(30)))?;
        assert_eq!(ready.len(), 1);
        assert_eq!(slow.get()?, 4);
        (0..rt.size()).map(|rank| rt.stats(rank)).collect()
    }

    #[test]
    #[ignore = "run by the test above"]
    fn spinning() -> lumen::Result<()> {
        let rt = lumen::init()?;
        let stats = work(&rt)?;
        println!("spinning: {stats:#?}");
        assert!(
            stats[0].poll_sessions > 0,
            "the driver never polled: {stats:?}"
        );
        let idle_spins: u64 = stats[1..]
            .iter()
            .map(|s| s.idle_spins_found + s.idle_spins_empty)
            .sum();
        assert!(idle_spins > 0, "no idle executor thread polled: {stats:?}");
        println!("scenario spinning: ok");
        Ok(())
    }

    #[test]
    #[ignore = "run by the test above"]
    fn sleeping() -> lumen::Result<()> {
        let rt = lumen::init()?;
        let stats = work(&rt)?;
        for s in &stats {
            assert_eq!(s.poll_sessions, 0, "{stats:?}");
            assert_eq!(s.idle_spins_found + s.idle_spins_empty, 0, "{stats:?}");
        }
        assert!(stats[0].waits_slept > 0, "{stats:?}");
        println!("scenario sleeping: ok");
        Ok(())
    }
}
