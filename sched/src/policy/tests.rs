//! Unit tests of the placement policy.

use super::*;

fn slots(n: u32, nodes: u32, driver: bool) -> Vec<RankSlot> {
    (0..n)
        .map(|r| RankSlot {
            node: r * nodes / n,
            capacity: Resources {
                cpus: 1.0,
                ..Resources::default()
            },
            serving: !(driver && r == 0),
            alive: true,
            outstanding: 0,
            actors: 0,
        })
        .collect()
}

fn cpu() -> Resources {
    Resources {
        cpus: 1.0,
        ..Resources::default()
    }
}

#[test]
fn spreads_over_serving_ranks_and_skips_the_driver() {
    let mut s = Scheduler::new(slots(4, 1, true), 0);
    let need = cpu();
    let request = Request {
        resources: Some(&need),
        ..Request::default()
    };
    let picks: Vec<Rank> = (0..6)
        .map(|_| s.place_task(&request).expect("fits"))
        .collect();
    assert!(!picks.contains(&0));
    for r in 1..4 {
        assert_eq!(picks.iter().filter(|&&p| p == r).count(), 2, "{picks:?}");
    }
    s.finished(1);
    s.finished(1);
    assert_eq!(s.place_task(&request), Ok(1), "least loaded first");
}

#[test]
fn a_chain_of_dependent_tasks_stays_on_a_warm_rank() {
    let mut s = Scheduler::new(slots(4, 1, true), 0);
    let need = cpu();
    let request = Request {
        resources: Some(&need),
        ..Request::default()
    };
    let first = s.place_task(&request).expect("fits");
    for _ in 0..5 {
        s.finished(first);
        assert_eq!(s.place_task(&request), Ok(first));
    }
}

#[test]
fn affinity_and_feasibility() {
    let mut s = Scheduler::new(slots(4, 2, false), 0);
    let need = cpu();
    let on_node_1 = Request {
        resources: Some(&need),
        node: Some(1),
        ..Request::default()
    };
    for _ in 0..4 {
        let r = s.place_task(&on_node_1).expect("fits");
        assert!(r == 2 || r == 3);
    }
    let big = Resources {
        cpus: 2.0,
        ..Resources::default()
    };
    let request = Request {
        resources: Some(&big),
        ..Request::default()
    };
    assert!(s.place_task(&request).is_err());
    let exact = Request {
        rank: Some(0),
        ..Request::default()
    };
    assert_eq!(s.place_task(&exact), Ok(0));
    s.rank_died(0);
    assert!(s.place_task(&exact).is_err());
}

#[test]
fn locality_wins_unless_much_busier() {
    let mut s = Scheduler::new(slots(3, 1, false), 0);
    let need = cpu();
    let request = Request {
        resources: Some(&need),
        data_at: Some(2),
        ..Request::default()
    };
    // One node: its least loaded rank first, the holder when it is not
    // busier than that one.
    assert_eq!(s.place_task(&request), Ok(2));
    let mut s = Scheduler::new(slots(4, 2, false), 0);
    let request = Request {
        resources: Some(&need),
        data_at: Some(3),
        ..Request::default()
    };
    assert_eq!(s.place_task(&request), Ok(3), "the holder");
    assert_eq!(s.place_task(&request), Ok(2), "its node, less loaded");
    assert_eq!(s.place_task(&request), Ok(3));
    assert_eq!(s.place_task(&request), Ok(2));
    // Node 1 has 2 per rank, node 0 none: more than one CPU busier.
    let spilled = s.place_task(&request).expect("fits");
    assert!(spilled < 2, "spilled back to node 0: {spilled}");
}

#[test]
fn locality_goes_by_bytes_per_node() {
    let mut s = Scheduler::new(slots(6, 3, false), 0);
    let need = cpu();
    let request = Request {
        resources: Some(&need),
        ..Request::default()
    };
    // Node 0 holds 3 MiB in two pieces, node 2 holds 2 MiB in one.
    let args = [(0, 1 << 20), (1, 2 << 20), (5, 2 << 20), (99, 1 << 30)];
    let preferences = Preferences {
        args: &args,
        ..Preferences::default()
    };
    assert_eq!(s.place_task_with(&request, &preferences), Ok(1));
    assert_eq!(s.place_task_with(&request, &preferences), Ok(0));
}

#[test]
fn reported_queues_push_work_elsewhere() {
    let mut s = Scheduler::new(slots(3, 3, false), 0);
    let need = cpu();
    let request = Request {
        resources: Some(&need),
        data_at: Some(1),
        ..Request::default()
    };
    // Rank 1 is busy with other submitters' work: 5 queued there.
    s.reported(1, 5);
    let r = s.place_task(&request).expect("fits");
    assert_ne!(r, 1, "spilled back from a rank others keep busy");
    s.reported(1, 0);
    assert_eq!(s.place_task(&request), Ok(1));
    // A report decays: a rank not heard from is tried again.
    s.reported(1, 5);
    assert_ne!(s.place_task(&request), Ok(1));
    for _ in 0..3 {
        s.decay_reports();
    }
    assert_eq!(s.place_task(&request), Ok(1));
    s.rank_died(1);
    s.reported(1, 3);
    assert_ne!(s.place_task(&request), Ok(1));
}

#[test]
fn spread_goes_round_robin_over_nodes() {
    let mut s = Scheduler::new(slots(6, 3, false), 0);
    let need = cpu();
    let request = Request {
        resources: Some(&need),
        ..Request::default()
    };
    let spread = Preferences {
        strategy: SchedulingStrategy::Spread,
        ..Preferences::default()
    };
    let nodes: Vec<Rank> = (0..6)
        .map(|_| s.place_task_with(&request, &spread).expect("fits") / 2)
        .collect();
    assert_eq!(nodes, vec![0, 1, 2, 0, 1, 2]);
    let actors: Vec<Rank> = (0..3)
        .map(|_| s.place_actor_with(&request, &spread).expect("fits") / 2)
        .collect();
    assert_eq!(actors, vec![0, 1, 2]);
}

#[test]
fn soft_node_affinity_falls_back_anywhere() {
    let mut s = Scheduler::new(slots(4, 2, false), 0);
    let need = cpu();
    let request = Request {
        resources: Some(&need),
        ..Request::default()
    };
    let soft = |node| Preferences {
        strategy: SchedulingStrategy::PreferNode(node),
        ..Preferences::default()
    };
    for _ in 0..4 {
        assert!(s.place_task_with(&request, &soft(1)).expect("fits") >= 2);
    }
    // Node 7 does not exist, node 1's ranks die: anywhere else.
    assert!(s.place_task_with(&request, &soft(7)).is_ok());
    s.rank_died(2);
    s.rank_died(3);
    assert!(s.place_task_with(&request, &soft(1)).expect("fits") < 2);
}

#[test]
fn cpu_only_work_avoids_gpu_ranks_and_nic_locality_is_preferred() {
    let mut slots = slots(4, 1, false);
    for slot in &mut slots[..2] {
        slot.capacity.gpus = 1.0;
    }
    let mut s = Scheduler::new(slots, 0).with_nic_local(&[false, false, false, true]);
    let need = cpu();
    let request = Request {
        resources: Some(&need),
        ..Request::default()
    };
    assert!(s.place_task(&request).expect("fits") >= 2);
    assert!(s.place_task(&request).expect("fits") >= 2);
    // Ranks 2 and 3 now busier than the GPU ranks: load wins.
    assert!(s.place_task(&request).expect("fits") < 2);
    let gpu = Resources {
        gpus: 1.0,
        ..Resources::default()
    };
    let request = Request {
        resources: Some(&gpu),
        ..Request::default()
    };
    assert!(s.place_task(&request).expect("fits") < 2);
    let mut s = Scheduler::new(self::slots(4, 1, false), 0).with_nic_local(&[false, true]);
    let nic = Preferences {
        nic_local: true,
        ..Preferences::default()
    };
    let request = Request::default();
    assert_eq!(s.place_task_with(&request, &nic), Ok(1));
    assert_ne!(s.place_task_with(&request, &nic), Ok(1));
}

#[test]
fn actors_spread() {
    let mut s = Scheduler::new(slots(3, 1, true), 0);
    let a = s.place_actor(&Request::default()).expect("fits");
    let b = s.place_actor(&Request::default()).expect("fits");
    assert_ne!(a, b);
    assert!(a != 0 && b != 0);
}
