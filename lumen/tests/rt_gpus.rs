//! GPUs for real: a task or actor with `num_gpus(k)` gets `k` specific
//! device ids of its rank, sees them (`Runtime::gpu_ids`, Ray's
//! `ray.get_gpu_ids()`), and gives them back when it ends; fractions share
//! a device; a request that is above one GPU but not whole is refused at
//! submission. The rank's GPUs are configured (`LUMEN_NUM_GPUS=2`): no
//! device is touched, so this runs here, on the embedded cluster and under
//! `lumen run`.

#[macro_use]
mod common;

use std::process::Command;

use common::scenario::*;
use common::*;

/// One serving rank with 4 CPU slots and 2 GPUs, beside the driver.
const GPU_ENV: [(&str, &str); 2] = [("LUMEN_NUM_GPUS", "2"), ("LUMEN_NUM_CPUS", "4")];

fn check(name: &str, output: &std::process::Output) {
    let all = text(output);
    assert!(output.status.success(), "scenario {name} failed:\n{all}");
    assert!(all.contains(&format!("scenario {name}: ok")), "{all}");
}

#[test]
fn embedded_cluster_gives_and_returns_gpu_ids() {
    let name = "gpu_ids_are_given_and_returned";
    let mut command = Command::new(this_binary());
    command
        .args(scenario_args(name))
        .envs(GPU_ENV)
        .env("LUMEN_NUM_WORKERS", "1")
        .env_remove("LUMEN_RANK");
    check(name, &run_with_timeout(&mut command, 120));
}

#[test]
fn lumen_run_gives_and_returns_gpu_ids() {
    let name = "gpu_ids_are_given_and_returned";
    let mut command = Command::new(lumen());
    command
        .args(["run", "-n", "2", "--"])
        .arg(this_binary())
        .args(scenario_args(name))
        .envs(GPU_ENV);
    check(name, &run_with_timeout(&mut command, 120));
}

mod scenarios {
    use std::time::Duration;

    use lumen::prelude::*;
    use lumen::runtime::RuntimeError;

    /// Holds its GPUs for `ms`, then says which they were.
    #[lumen::remote]
    fn hold(ms: u64) -> lumen::Result<Vec<u32>> {
        let ids = lumen::current()?.gpu_ids();
        std::thread::sleep(Duration::from_millis(ms));
        Ok(ids)
    }

    #[lumen::actor]
    struct Trainer {
        ids: Vec<u32>,
    }

    #[lumen::actor]
    impl Trainer {
        fn new() -> lumen::Result<Self> {
            Ok(Trainer {
                ids: lumen::current()?.gpu_ids(),
            })
        }
        fn constructed_with(&mut self) -> Vec<u32> {
            self.ids.clone()
        }
        fn now(&mut self) -> lumen::Result<Vec<u32>> {
            Ok(lumen::current()?.gpu_ids())
        }
    }

    #[test]
    #[ignore = "a scenario: run by the tests above in its own processes"]
    fn gpu_ids_are_given_and_returned() -> lumen::Result<()> {
        let rt = lumen::init()?;
        assert!(rt.gpu_ids().is_empty(), "the driver runs no task");

        // Two whole GPUs at once: one device each.
        let a = hold::options().num_gpus(1.0).remote(&rt, 300)?;
        let b = hold::options().num_gpus(1.0).remote(&rt, 300)?;
        let (mut ids_a, ids_b) = (a.get()?, b.get()?);
        assert_eq!(ids_a.len(), 1, "{ids_a:?}");
        assert_eq!(ids_b.len(), 1, "{ids_b:?}");
        assert_ne!(ids_a, ids_b, "two tasks shared a whole GPU");
        ids_a.extend(ids_b);
        ids_a.sort_unstable();
        assert_eq!(ids_a, vec![0, 1]);

        // They came back: both devices for one task.
        assert_eq!(
            hold::options().num_gpus(2.0).remote(&rt, 0)?.get()?,
            vec![0, 1]
        );

        // Fractions share a device, at most two halves on each.
        let halves: Vec<_> = (0..4)
            .map(|_| hold::options().num_gpus(0.5).remote(&rt, 300))
            .collect::<lumen::Result<_>>()?;
        let mut seen = [0u32; 2];
        for half in halves {
            let ids = half.get()?;
            assert_eq!(ids.len(), 1, "{ids:?}");
            seen[ids[0] as usize] += 1;
        }
        assert!(seen.iter().all(|&n| n <= 2), "{seen:?}");

        // A task and no GPU: no ids.
        assert!(hold::remote(&rt, 0)?.get()?.is_empty());

        // 1.5 GPUs is no shape a device has.
        let refused = hold::options().num_gpus(1.5).remote(&rt, 0);
        assert!(
            matches!(
                &refused,
                Err(LumenError::Runtime(RuntimeError::Infeasible { detail, .. })) if detail.contains("not a whole number")
            ),
            "{refused:?}"
        );

        // An actor holds its GPU for its life; a task gets the other one.
        let trainer = Trainer::actor_options().num_gpus(1.0).new_remote(&rt)?;
        let held = trainer.constructed_with()?.get()?;
        assert_eq!(held.len(), 1, "{held:?}");
        assert_eq!(trainer.now()?.get()?, held, "the same device in every call");
        let other = hold::options().num_gpus(1.0).remote(&rt, 0)?.get()?;
        assert_eq!(other.len(), 1);
        assert_ne!(other, held);
        // Killed, it gives its device back: a task then gets both.
        trainer.kill()?;
        let both = hold::options().num_gpus(2.0).remote(&rt, 0)?;
        assert_eq!(both.get_timeout(Duration::from_secs(30))?, vec![0, 1]);

        println!("scenario gpu_ids_are_given_and_returned: ok");
        Ok(())
    }
}
