//! Limits (issue 14): a caller at `LUMEN_MAX_PENDING_TASKS` waits for room
//! (backpressure) and, past `LUMEN_SUBMIT_TIMEOUT_MS`, fails saying why;
//! a value above `LUMEN_MAX_OBJECT_BYTES`, put or returned, fails with an
//! error naming the limit, and nothing else is disturbed. Each runs on the
//! embedded cluster (3 workers) with its settings in the environment.

mod common;

use common::scenario::embedded_with_env;

fn run(name: &str, env: &[(&str, &str)]) -> String {
    embedded_with_env(name, 3, env)
}

#[test]
fn a_caller_at_the_pending_limit_waits_for_room() {
    run("pending_limit", &[("LUMEN_MAX_PENDING_TASKS", "4")]);
}

#[test]
fn a_submission_that_waits_too_long_fails_naming_the_limit() {
    run(
        "pending_timeout",
        &[
            ("LUMEN_MAX_PENDING_TASKS", "2"),
            ("LUMEN_SUBMIT_TIMEOUT_MS", "300"),
        ],
    );
}

#[test]
fn values_above_the_object_limit_fail_naming_it() {
    run("object_limit", &[("LUMEN_MAX_OBJECT_BYTES", "64K")]);
}

mod scenarios {
    use std::time::Duration;

    use lumen::runtime::{RuntimeError, TaskErrorKind};
    use lumen::LumenError;

    #[lumen::remote]
    fn slow_square(x: u64) -> u64 {
        std::thread::sleep(Duration::from_millis(20));
        x * x
    }

    #[lumen::remote]
    fn sleep_ms(ms: u64) -> u64 {
        std::thread::sleep(Duration::from_millis(ms));
        ms
    }

    #[lumen::remote]
    fn bytes(n: usize) -> Vec<u8> {
        vec![7u8; n]
    }

    #[lumen::actor]
    struct Echo;

    #[lumen::actor]
    impl Echo {
        fn new() -> Self {
            Echo
        }

        fn echo(&self, x: u64) -> u64 {
            x
        }
    }

    #[test]
    #[ignore = "run by the test above"]
    fn pending_limit() -> lumen::Result<()> {
        let rt = lumen::init()?;
        // 40 tasks and 10 actor calls from one thread, at most 4 pending.
        let squares: Vec<_> = (0..40u64)
            .map(|i| slow_square::options().spread().remote(&rt, i))
            .collect::<lumen::Result<_>>()?;
        let echo = Echo::actor_options().new_remote(&rt)?;
        let echoes: Vec<_> = (0..10u64)
            .map(|i| echo.echo(i))
            .collect::<lumen::Result<_>>()?;
        for (i, s) in squares.iter().enumerate() {
            assert_eq!(s.get()?, (i * i) as u64);
        }
        for (i, e) in echoes.iter().enumerate() {
            assert_eq!(e.get()?, i as u64);
        }
        let stats = rt.stats(0)?;
        println!(
            "pending limit 4: peak {} pending, {} submissions waited",
            stats.tasks_pending_peak, stats.submissions_waited
        );
        assert!(stats.tasks_pending_peak <= 4, "{stats:?}");
        assert!(stats.submissions_waited > 0, "{stats:?}");
        println!("scenario pending_limit: ok");
        Ok(())
    }

    #[test]
    #[ignore = "run by the test above"]
    fn pending_timeout() -> lumen::Result<()> {
        let rt = lumen::init()?;
        let long: Vec<_> = (0..2)
            .map(|_| sleep_ms::options().spread().remote(&rt, 2000))
            .collect::<lumen::Result<_>>()?;
        let refused = sleep_ms::options().remote(&rt, 1);
        match refused {
            Err(LumenError::Runtime(RuntimeError::TooManyPending { pending, limit, .. })) => {
                assert_eq!((pending, limit), (2, 2));
            }
            other => panic!("expected TooManyPending, got {other:?}"),
        }
        let text = sleep_ms::options()
            .remote(&rt, 1)
            .expect_err("still full")
            .to_string();
        println!("refused: {text}");
        assert!(text.contains("LUMEN_MAX_PENDING_TASKS=2"), "{text}");
        // Nothing pending was disturbed, and room comes back.
        for l in &long {
            assert_eq!(l.get()?, 2000);
        }
        assert_eq!(sleep_ms::options().remote(&rt, 1)?.get()?, 1);
        println!("scenario pending_timeout: ok");
        Ok(())
    }

    #[test]
    #[ignore = "run by the test above"]
    fn object_limit() -> lumen::Result<()> {
        let rt = lumen::init()?;
        let text = rt
            .put(&vec![1u8; 100 << 10])
            .expect_err("above the limit")
            .to_string();
        println!("put refused: {text}");
        assert!(text.contains("LUMEN_MAX_OBJECT_BYTES=65536"), "{text}");
        match bytes::options().remote(&rt, 100 << 10)?.get() {
            Err(LumenError::Runtime(RuntimeError::Task(e))) => {
                println!("result refused: {e}");
                assert_eq!(e.kind, TaskErrorKind::ObjectTooLarge);
                assert!(e.message.contains("LUMEN_MAX_OBJECT_BYTES=65536"), "{e}");
            }
            other => panic!("expected ObjectTooLarge, got {other:?}"),
        }
        // Under the limit all is as usual.
        let small = rt.put(&vec![2u8; 60 << 10])?;
        assert_eq!(small.get()?.len(), 60 << 10);
        assert_eq!(bytes::options().remote(&rt, 1000)?.get()?.len(), 1000);
        println!("scenario object_limit: ok");
        Ok(())
    }
}
