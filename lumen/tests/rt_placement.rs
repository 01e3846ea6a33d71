//! Placement groups on real processes, on the embedded local cluster (3
//! workers) and under `lumen run -n 4`: in both, rank 0 is the driver and
//! ranks 1-3 serve, one CPU each, all on one node.
//!
//! Each scenario is an ignored test in `scenarios` that calls
//! `lumen::init()` itself; the runner tests start this same binary with the
//! scenario's name, bare or under `lumen run`, with a time limit (as
//! `rt_core` does).

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

fn check(name: &str, output: &std::process::Output) -> String {
    let all = text(output);
    assert!(output.status.success(), "scenario {name} failed:\n{all}");
    assert!(all.contains(&format!("scenario {name}: ok")), "{all}");
    all
}

/// Runs a scenario on the embedded cluster (3 workers).
fn embedded(name: &str) -> String {
    let mut command = Command::new(this_binary());
    command
        .args(scenario_args(name))
        .env("LUMEN_NUM_WORKERS", "3")
        .env_remove("LUMEN_NUM_CPUS")
        .env_remove("LUMEN_RANK");
    check(name, &run_with_timeout(&mut command, 120))
}

/// Runs a scenario under `lumen run -n 4`.
fn launched(name: &str) -> String {
    let mut command = Command::new(lumen());
    command
        .args(["run", "-n", "4", "--"])
        .arg(this_binary())
        .args(scenario_args(name))
        .env_remove("LUMEN_NUM_CPUS");
    check(name, &run_with_timeout(&mut command, 120))
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
    pack_and_spread_place_bundles,
    strict_spread_on_one_node_is_infeasible,
    reserved_resources_are_held_until_removed,
    actor_in_a_bundle_runs_on_its_rank,
    communicator_from_a_placement_group,
);

/// The scenarios; each runs as rank 0 (driver) of its job.
mod scenarios {
    use std::time::{Duration, Instant};

    use lumen::prelude::*;
    use lumen::runtime::{
        PlacementGroup, PlacementStrategy, Resources, RuntimeError, TaskErrorKind,
    };

    /// The rank this task runs on.
    #[lumen::remote]
    fn whoami() -> u32 {
        lumen::current().map(|rt| rt.rank()).unwrap_or(u32::MAX)
    }

    /// Writes `started`, then holds its CPU until `gate` exists (polling:
    /// a task blocked in `get` would lend its CPU out).
    #[lumen::remote]
    fn hold_until(started: String, gate: String) -> lumen::Result<u32> {
        std::fs::write(&started, b"started")
            .map_err(|e| lumen::LumenError::Bootstrap(format!("writing {started}: {e}")))?;
        while std::fs::metadata(&gate).is_err() {
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(lumen::current()?.rank())
    }

    /// Tells where it lives.
    #[lumen::actor]
    struct Probe {
        calls: u32,
    }

    #[lumen::actor]
    impl Probe {
        fn new() -> Self {
            Probe { calls: 0 }
        }
        fn rank(&mut self) -> lumen::Result<u32> {
            self.calls += 1;
            Ok(lumen::current()?.rank())
        }
    }

    /// One shard of a model: builds its group's communicator and
    /// allreduces with the other shards.
    #[lumen::actor]
    struct Shard {}

    #[lumen::actor]
    impl Shard {
        fn new() -> Self {
            Shard {}
        }
        /// (communicator rank, size, allreduced job rank, job rank).
        fn allreduce_ranks(
            &mut self,
            group: PlacementGroup,
        ) -> lumen::Result<(u32, u32, f64, u32)> {
            let comm = lumen::placement_communicator(&group, 5)?;
            let me = lumen::current()?.rank();
            let mut x = [f64::from(me)];
            comm.allreduce(&mut x, lumen::collectives::ReduceOp::Sum)?;
            let mut word = [0u64; 1];
            if comm.rank() == 0 {
                word[0] = 42;
            }
            comm.bcast(&mut word, 0)?;
            assert_eq!(word[0], 42);
            Ok((comm.rank(), comm.size(), x[0], me))
        }
    }

    fn done(name: &str) {
        println!("scenario {name}: ok");
    }

    fn serving(rt: &Runtime) -> Vec<u32> {
        (1..rt.size()).collect()
    }

    /// Runs `whoami` in every bundle (with `cpus` each); returns the ranks.
    fn ranks_seen(rt: &Runtime, pg: &PlacementGroup, cpus: f64) -> lumen::Result<Vec<u32>> {
        (0..pg.bundle_count() as u32)
            .map(|i| {
                whoami::options()
                    .num_cpus(cpus)
                    .placement_group(pg, Some(i))
                    .remote(rt)?
                    .get_timeout(Duration::from_secs(60))
            })
            .collect()
    }

    fn distinct(ranks: &[u32]) -> Vec<u32> {
        let mut d = ranks.to_vec();
        d.sort_unstable();
        d.dedup();
        d
    }

    fn task_error<T: std::fmt::Debug>(result: lumen::Result<T>) -> lumen::runtime::TaskError {
        match result {
            Err(LumenError::Runtime(RuntimeError::Task(e))) => e,
            other => panic!("expected a task error, got {other:?}"),
        }
    }

    #[test]
    #[ignore = "run by the runner tests"]
    fn pack_and_spread_place_bundles() -> lumen::Result<()> {
        let rt = lumen::init()?;
        let serving = serving(&rt);
        // PACK: two half-CPU bundles share one rank.
        let pack = rt.placement_group(vec![Resources::cpus(0.5); 2], PlacementStrategy::Pack)?;
        pack.ready()?;
        let ranks = pack.ranks()?;
        println!("PACK 2 x 0.5 CPU: ranks {ranks:?}");
        assert_eq!(ranks.len(), 2);
        assert_eq!(ranks[0], ranks[1], "{ranks:?}");
        assert!(serving.contains(&ranks[0]), "the driver hosts no bundle");
        assert_eq!(ranks_seen(&rt, &pack, 0.5)?, ranks);
        // Any bundle: one that fits.
        let any = whoami::options()
            .num_cpus(0.5)
            .placement_group(&pack, None)
            .remote(&rt)?
            .get()?;
        assert_eq!(any, ranks[0]);
        // A task larger than its bundle is refused at once.
        let too_big = whoami::options()
            .num_cpus(1.0)
            .placement_group(&pack, Some(0))
            .remote(&rt);
        match too_big {
            Err(LumenError::Runtime(RuntimeError::Infeasible { detail, .. })) => {
                assert!(detail.contains("bundle 0"), "{detail}");
            }
            other => panic!("expected Infeasible, got {other:?}"),
        }
        rt.remove_placement_group(&pack)?;

        // SPREAD: one bundle per serving rank.
        let spread = rt.placement_group(
            vec![Resources::cpus(0.5); serving.len()],
            PlacementStrategy::Spread,
        )?;
        let ranks = spread.ranks()?;
        println!("SPREAD {} x 0.5 CPU: ranks {ranks:?}", serving.len());
        assert_eq!(distinct(&ranks), serving, "{ranks:?}");
        assert_eq!(ranks_seen(&rt, &spread, 0.5)?, ranks);

        // STRICT_PACK: one node (here every rank is on node 0). SPREAD left
        // half a CPU on each rank, so two ranks.
        let strict =
            rt.placement_group(vec![Resources::cpus(0.5); 2], PlacementStrategy::StrictPack)?;
        strict.ready()?;
        let nodes = strict.nodes()?;
        println!(
            "STRICT_PACK 2 x 0.5 CPU: ranks {:?}, nodes {nodes:?}",
            strict.ranks()?
        );
        assert_eq!(distinct(&nodes).len(), 1);
        assert_eq!(ranks_seen(&rt, &strict, 0.5)?, strict.ranks()?);
        rt.remove_placement_group(&spread)?;
        rt.remove_placement_group(&strict)?;
        // Removing twice is fine; using a removed group is not.
        rt.remove_placement_group(&strict)?;
        assert!(matches!(
            strict.ready(),
            Err(LumenError::Runtime(
                RuntimeError::PlacementGroupRemoved { .. }
            ))
        ));
        done("pack_and_spread_place_bundles");
        Ok(())
    }

    #[test]
    #[ignore = "run by the runner tests"]
    fn strict_spread_on_one_node_is_infeasible() -> lumen::Result<()> {
        let rt = lumen::init()?;
        assert_eq!(rt.num_nodes(), 1);
        let refused = rt.placement_group(
            vec![Resources::cpus(1.0); 2],
            PlacementStrategy::StrictSpread,
        );
        let message = match refused {
            Err(e @ LumenError::Runtime(RuntimeError::Infeasible { .. })) => e.to_string(),
            other => panic!("expected Infeasible, got {other:?}"),
        };
        println!("{message}");
        assert!(
            message.contains("STRICT_SPREAD group of 2 bundle(s) [{cpus: 1}, {cpus: 1}]"),
            "{message}"
        );
        assert!(
            message.contains("needs 2 distinct nodes, the job has 1 node(s)"),
            "{message}"
        );
        assert!(
            message.contains("node 0: ranks 1-3 {cpus: 1} each"),
            "{message}"
        );
        // One bundle is a spread over one node.
        let one =
            rt.placement_group(vec![Resources::cpus(1.0)], PlacementStrategy::StrictSpread)?;
        one.ready()?;
        rt.remove_placement_group(&one)?;
        // A bundle larger than any rank.
        let big = rt.placement_group(vec![Resources::cpus(64.0)], PlacementStrategy::Pack);
        match big {
            Err(LumenError::Runtime(RuntimeError::Infeasible { detail, .. })) => {
                assert!(detail.contains("fits on no serving rank"), "{detail}");
            }
            other => panic!("expected Infeasible, got {other:?}"),
        }
        done("strict_spread_on_one_node_is_infeasible");
        Ok(())
    }

    fn wait_for_file(path: &std::path::Path) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::fs::metadata(path).is_err() {
            assert!(
                Instant::now() < deadline,
                "{} never appeared",
                path.display()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    #[ignore = "run by the runner tests"]
    fn reserved_resources_are_held_until_removed() -> lumen::Result<()> {
        let rt = lumen::init()?;
        let serving = serving(&rt);
        // Every serving CPU goes into the group.
        let pg = rt.placement_group(
            vec![Resources::cpus(1.0); serving.len()],
            PlacementStrategy::Pack,
        )?;
        pg.ready()?;
        let ranks = pg.ranks()?;
        assert_eq!(distinct(&ranks), serving);
        // A task outside the group needs a CPU that only the group has: it
        // queues. Tasks inside run meanwhile.
        let outside = whoami::remote(&rt)?;
        assert_eq!(ranks_seen(&rt, &pg, 1.0)?, ranks);
        assert!(!outside.is_ready(), "ran on a reserved CPU");
        // Another group must wait for the resources (all or nothing).
        let second = rt.placement_group(vec![Resources::cpus(1.0)], PlacementStrategy::Pack)?;
        assert!(!second.wait(Duration::from_millis(200))?);

        // A task running in bundle 0 holds its CPU; another one queues
        // behind it in the same bundle.
        let dir = std::env::temp_dir().join(format!("lumen-pg-{}", rt.job_id()));
        std::fs::create_dir_all(&dir).expect("marker dir");
        let started = dir.join("started");
        let gate = dir.join("gate");
        let running = hold_until::options().placement_group(&pg, Some(0)).remote(
            &rt,
            started.display().to_string(),
            gate.display().to_string(),
        )?;
        wait_for_file(&started);
        let queued = whoami::options()
            .placement_group(&pg, Some(0))
            .remote(&rt)?;

        // Removal: the queued task fails, the running one goes on, the
        // reserved CPUs come back (the waiting group gets one).
        rt.remove_placement_group(&pg)?;
        let e = task_error(queued.get_timeout(Duration::from_secs(60)));
        assert_eq!(e.kind, TaskErrorKind::PlacementGroupRemoved, "{e}");
        println!("queued task: {e}");
        assert!(second.wait(Duration::from_secs(60))?);
        rt.remove_placement_group(&second)?;
        std::fs::write(&gate, b"go").expect("gate");
        assert_eq!(running.get_timeout(Duration::from_secs(60))?, ranks[0]);
        let ran_on = outside.get_timeout(Duration::from_secs(60))?;
        assert!(serving.contains(&ran_on));
        // Submitting into a removed group fails.
        let late = whoami::options().placement_group(&pg, Some(1)).remote(&rt);
        assert!(matches!(
            late,
            Err(LumenError::Runtime(
                RuntimeError::PlacementGroupRemoved { .. }
            ))
        ));
        let _ = std::fs::remove_dir_all(&dir);
        done("reserved_resources_are_held_until_removed");
        Ok(())
    }

    #[test]
    #[ignore = "run by the runner tests"]
    fn actor_in_a_bundle_runs_on_its_rank() -> lumen::Result<()> {
        let rt = lumen::init()?;
        let serving = serving(&rt);
        let pg = rt.placement_group(
            vec![Resources::cpus(0.5); serving.len()],
            PlacementStrategy::Spread,
        )?;
        let ranks = pg.ranks()?;
        let last = serving.len() as u32 - 1;
        let actor = Probe::actor_options()
            .placement_group(&pg, Some(last))
            .new_remote(&rt)?;
        assert_eq!(actor.raw().rank(), ranks[last as usize]);
        assert_eq!(actor.rank()?.get()?, ranks[last as usize]);
        // Any bundle: the one with the fewest of our actors.
        let other = Probe::actor_options()
            .placement_group(&pg, None)
            .new_remote(&rt)?;
        let other_rank = other.rank()?.get()?;
        assert!(ranks.contains(&other_rank));
        assert_ne!(other_rank, ranks[last as usize]);
        // A task in the same bundle runs beside the actor (actors take no
        // CPU slots).
        let beside = whoami::options()
            .num_cpus(0.5)
            .placement_group(&pg, Some(last))
            .remote(&rt)?;
        assert_eq!(beside.get()?, ranks[last as usize]);
        // Removing the group kills its actors: a call fails, at once (the
        // caller heard of the kill) or from the host.
        rt.remove_placement_group(&pg)?;
        for probe in [&actor, &other] {
            match probe
                .rank()
                .and_then(|r| r.get_timeout(Duration::from_secs(60)))
            {
                Err(LumenError::Runtime(RuntimeError::ActorDied { .. })) => {}
                Err(LumenError::Runtime(RuntimeError::Task(e)))
                    if e.kind == TaskErrorKind::ActorDied => {}
                other => panic!("expected ActorDied, got {other:?}"),
            }
        }
        done("actor_in_a_bundle_runs_on_its_rank");
        Ok(())
    }

    #[test]
    #[ignore = "run by the runner tests"]
    fn communicator_from_a_placement_group() -> lumen::Result<()> {
        let rt = lumen::init()?;
        let serving = serving(&rt);
        let pg = rt.placement_group(
            vec![Resources::cpus(0.5); serving.len()],
            PlacementStrategy::Spread,
        )?;
        let ranks = pg.ranks()?;
        let shards: Vec<_> = (0..pg.bundle_count() as u32)
            .map(|i| {
                Shard::actor_options()
                    .placement_group(&pg, Some(i))
                    .new_remote(&rt)
            })
            .collect::<lumen::Result<_>>()?;
        // Every member must be in the collective at once: submit all, then get.
        let calls: Vec<_> = shards
            .iter()
            .map(|s| s.allreduce_ranks(pg.clone()))
            .collect::<lumen::Result<_>>()?;
        let want: f64 = ranks.iter().map(|&r| f64::from(r)).sum();
        for (i, call) in calls.into_iter().enumerate() {
            let (comm_rank, size, sum, job_rank) = call.get_timeout(Duration::from_secs(60))?;
            println!("shard {i}: job rank {job_rank}, communicator rank {comm_rank} of {size}, sum {sum}");
            assert_eq!(job_rank, ranks[i]);
            assert_eq!(size as usize, ranks.len());
            assert_eq!(
                comm_rank as usize,
                ranks.iter().position(|&r| r == job_rank).unwrap()
            );
            assert_eq!(sum, want);
        }
        rt.remove_placement_group(&pg)?;
        done("communicator_from_a_placement_group");
        Ok(())
    }
}
