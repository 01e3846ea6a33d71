//! Placement across "nodes" (network namespaces joined by a bridge, TCP
//! between them): a STRICT_SPREAD group of GPU bundles lands one bundle per
//! node, and when a bundle's rank is killed the head places the bundle
//! again (on the other rank of that node: the only one on a node without a
//! bundle of the group), where a task and an actor of that bundle then run
//! with the bundle's GPU; and a task whose 64 MiB argument lives on the
//! other node runs there, with no node option given (locality by argument
//! bytes); SPREAD tasks go to the nodes in turn, and soft node affinity
//! runs on its node, or anywhere when that node does not exist. The ranks'
//! GPUs are configured (`LUMEN_NUM_GPUS=1`): no device
//! is touched. Needs root and iproute2; skips with a message otherwise.

mod common;

/// Runs `scenario` (module `scenario`) on namespace nodes, see
/// `common::scenario::run_on_netns_nodes`.
fn run_on_nodes(
    tag: &str,
    per_node: &[u32],
    scenario: &str,
    env: &[(&str, &str)],
    keep_going: bool,
) -> Option<String> {
    common::scenario::run_on_netns_nodes(tag, per_node, "scenario", scenario, env, keep_going)
}

#[test]
fn strict_spread_gpu_bundles_are_placed_again_when_a_rank_dies() {
    // Rank 0 (driver) and 1 on node 0, ranks 2 and 3 on node 1, 4 and 5 on
    // node 2; one GPU each.
    let env = [("LUMEN_NUM_GPUS", "1"), ("LUMEN_NUM_CPUS", "2")];
    if let Some(all) = run_on_nodes("lsr", &[2, 2, 2], "bundle_moves", &env, true) {
        for line in all.lines().filter(|l| l.contains("STRICT_SPREAD")) {
            eprintln!("{line}");
        }
    }
}

#[test]
fn a_task_runs_where_its_large_argument_lives() {
    // Rank 0 (driver) and 1 on node 0, ranks 2 and 3 on node 1.
    if let Some(all) = run_on_nodes("llo", &[2, 2], "runs_by_its_data", &[], false) {
        for line in all.lines().filter(|l| l.contains("locality")) {
            eprintln!("{line}");
        }
    }
}

#[test]
fn spread_goes_round_robin_over_nodes_and_soft_affinity_falls_back() {
    // Rank 0 (driver) and 1 on node 0, ranks 2 and 3 on node 1, 4 and 5 on
    // node 2.
    run_on_nodes("lsp", &[2, 2, 2], "spread_and_soft_affinity", &[], false);
}

mod scenario {
    use std::time::Duration;

    use lumen::prelude::*;
    use lumen::runtime::{PlacementStrategy, Resources};

    /// Where this task ran (rank, node) and its GPU ids.
    #[lumen::remote]
    fn where_am_i() -> lumen::Result<(u32, u32, Vec<u32>)> {
        let rt = lumen::current()?;
        let rank = rt.rank();
        Ok((rank, rt.node_of(rank).unwrap_or(u32::MAX), rt.gpu_ids()))
    }

    /// Kills its own rank.
    #[lumen::remote]
    fn die() -> u32 {
        // SAFETY: plain system call on our own process.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
        0
    }

    /// Says where it lives and which GPUs it holds.
    #[lumen::actor]
    struct Probe {
        gpus: Vec<u32>,
    }

    #[lumen::actor]
    impl Probe {
        fn new() -> lumen::Result<Self> {
            Ok(Probe {
                gpus: lumen::current()?.gpu_ids(),
            })
        }

        fn where_and_gpus(&mut self) -> lumen::Result<(u32, Vec<u32>)> {
            Ok((lumen::current()?.rank(), self.gpus.clone()))
        }
    }

    #[test]
    #[ignore = "run by strict_spread_gpu_bundles_are_placed_again_when_a_rank_dies"]
    fn bundle_moves() -> lumen::Result<()> {
        let rt = lumen::init()?;
        assert_eq!(rt.num_nodes(), 3);
        let gpu = Resources {
            gpus: 1.0,
            ..Resources::default()
        };
        let pg = rt.placement_group(vec![gpu; 3], PlacementStrategy::StrictSpread)?;
        pg.ready()?;
        let (ranks, nodes) = (pg.ranks()?, pg.nodes()?);
        println!("STRICT_SPREAD 3 x 1 GPU: ranks {ranks:?}, nodes {nodes:?}");
        let mut distinct = nodes.clone();
        distinct.sort_unstable();
        assert_eq!(distinct, vec![0, 1, 2]);
        // The bundle on node 1 loses its rank.
        let bundle = nodes
            .iter()
            .position(|&n| n == 1)
            .expect("a bundle on node 1");
        let victim = ranks[bundle];
        let killed = die::options().rank(victim).max_retries(0).remote(&rt)?;
        assert!(killed.get_timeout(Duration::from_secs(30)).is_err());
        // The head placed it again: on node 1's other rank.
        let (moved, moved_nodes) = (pg.ranks()?, pg.nodes()?);
        println!("STRICT_SPREAD after rank {victim} died: ranks {moved:?}, nodes {moved_nodes:?}");
        let new_rank = moved[bundle];
        assert_ne!(new_rank, victim);
        assert_eq!(new_rank, if victim == 2 { 3 } else { 2 });
        assert_eq!(moved_nodes, nodes, "one bundle per node still");
        for (i, (&before, &after)) in ranks.iter().zip(&moved).enumerate() {
            if i != bundle {
                assert_eq!(before, after, "bundle {i} stayed");
            }
        }
        // A task of the bundle runs there, with the bundle's GPU.
        let (rank, node, gpus) = where_am_i::options()
            .placement_group(&pg, Some(bundle as u32))
            .num_cpus(0.0)
            .num_gpus(1.0)
            .remote(&rt)?
            .get_timeout(Duration::from_secs(30))?;
        assert_eq!((rank, node, gpus), (new_rank, 1, vec![0]));
        // So does an actor of the bundle.
        let probe = Probe::actor_options()
            .placement_group(&pg, Some(bundle as u32))
            .num_gpus(1.0)
            .new_remote(&rt)?;
        let (rank, gpus) = probe
            .where_and_gpus()?
            .get_timeout(Duration::from_secs(30))?;
        assert_eq!((rank, gpus), (new_rank, vec![0]));
        drop(probe);
        rt.remove_placement_group(&pg)?;
        println!("scenario bundle_moves: ok");
        Ok(())
    }

    #[test]
    #[ignore = "run by spread_goes_round_robin_over_nodes_and_soft_affinity_falls_back"]
    fn spread_and_soft_affinity() -> lumen::Result<()> {
        let rt = lumen::init()?;
        assert_eq!(rt.num_nodes(), 3);
        let mut per_node = [0; 3];
        for _ in 0..6 {
            let (_, node, _) = where_am_i::options().spread().remote(&rt)?.get()?;
            per_node[node as usize] += 1;
        }
        assert_eq!(per_node, [2, 2, 2], "SPREAD: one task per node in turn");
        for _ in 0..3 {
            let (_, node, _) = where_am_i::options().node_soft(2).remote(&rt)?.get()?;
            assert_eq!(node, 2);
        }
        // Node 9 does not exist: hard affinity is infeasible, soft runs.
        assert!(where_am_i::options().node(9).remote(&rt).is_err());
        let (_, node, _) = where_am_i::options().node_soft(9).remote(&rt)?.get()?;
        assert!(node < 3);
        println!("scenario spread_and_soft_affinity: ok");
        Ok(())
    }

    /// Makes `len` bytes here; they are stored on this rank (too large to
    /// travel inline).
    #[lumen::remote]
    fn make_bytes(len: u64) -> Vec<u8> {
        vec![7u8; len as usize]
    }

    /// Where it ran (rank, node), and how long its argument was.
    #[lumen::remote]
    fn where_with(data: ObjectRef<Vec<u8>>) -> lumen::Result<(u32, u32, usize)> {
        let rt = lumen::current()?;
        let rank = rt.rank();
        let len = data.get()?.len();
        Ok((rank, rt.node_of(rank).unwrap_or(u32::MAX), len))
    }

    #[test]
    #[ignore = "run by a_task_runs_where_its_large_argument_lives"]
    fn runs_by_its_data() -> lumen::Result<()> {
        let rt = lumen::init()?;
        assert_eq!(rt.num_nodes(), 2);
        let len = 64u64 << 20;
        // Returned by a task pinned to node 1: its value lives there.
        let big = make_bytes::options().node(1).remote(&rt, len)?;
        let (ready, _) = lumen::wait(vec![big.clone()], 1, Some(Duration::from_secs(60)))?;
        assert_eq!(ready.len(), 1, "the 64 MiB object is ready");
        // A task on node 0 just ran: its rank is the warm one, the first
        // choice without locality. No node option: the argument's bytes
        // take the tasks to node 1.
        let (warm, warm_node, _) = where_am_i::options().node(0).remote(&rt)?.get()?;
        assert_eq!(warm_node, 0, "rank {warm}");
        for _ in 0..4 {
            let (rank, node, seen) = where_with::remote(&rt, big.clone())?.get()?;
            println!(
                "locality: task with a 64 MiB argument on node 1 ran on rank {rank}, node {node}"
            );
            assert_eq!(node, 1, "rank {rank}");
            assert_eq!(seen as u64, len);
        }
        println!("scenario runs_by_its_data: ok");
        Ok(())
    }
}
