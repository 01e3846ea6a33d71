//! Unit tests of the shard planner: hand-checked layouts, every error.
use super::*;

fn dgx(nodes: usize) -> ClusterShape {
    ClusterShape {
        nodes,
        gpus_per_node: 8,
        nvlink_island: 8,
        nics_per_node: 4,
    }
}

fn cost() -> ModelCost {
    ModelCost {
        parameters: 7_000_000_000,
        bytes_per_param: 2,
        activation_bytes_per_microbatch: 4096 * 4096 * 2,
        microbatches: 8,
        layers: 32,
    }
}

#[test]
fn two_nodes_tp8_pp2_is_one_stage_per_node() {
    let plan = plan(&Parallelism::new(8, 2, 1), &dgx(2), Some(&cost())).unwrap();
    assert_eq!(plan.world, 16);
    assert_eq!(
        plan.groups.tp,
        vec![(0..8).collect::<Vec<_>>(), (8..16).collect()]
    );
    let pipelines: Vec<Vec<usize>> = (0..8).map(|r| vec![r, r + 8]).collect();
    assert_eq!(plan.groups.pp, pipelines);
    assert_eq!(plan.groups.dp.len(), 16);
    assert!(plan.groups.dp.iter().all(|group| group.len() == 1));
    assert_eq!(
        plan.coords[9],
        Coord {
            dp: 0,
            pp: 1,
            tp: 1,
            cp: 0,
            ep: 0
        }
    );
    let traffic = plan.traffic.unwrap();
    // Only pipeline sends cross: 8 forward + 8 backward of A/8 × 8 microbatches.
    let activation = (4096 * 4096 * 2) as f64;
    assert_eq!(traffic.per_axis.tp, 0.0);
    assert_eq!(traffic.per_axis.dp, 0.0);
    assert_eq!(
        traffic.cross_node_bytes_per_step,
        16.0 * activation / 8.0 * 8.0
    );
    // Naive order dp-pp-cp-tp: TP slowest, so every TP ring hop is strided by 2.
    let naive = plan.reference.unwrap().naive;
    assert!(naive.per_axis.tp > 0.0);
    assert!(naive.cross_node_bytes_per_step > traffic.cross_node_bytes_per_step);
}

#[test]
fn four_nodes_tp4_pp2_dp4() {
    let parallelism = Parallelism::new(4, 2, 4);
    let planned = plan_with_order(&parallelism, &dgx(4), RankOrder::PLANNER, None).unwrap();
    // tp-cp-pp-dp: a node holds both stages of one DP replica.
    assert_eq!(planned.groups.tp[0], vec![0, 1, 2, 3]);
    assert_eq!(planned.groups.pp[0], vec![0, 4]);
    assert_eq!(planned.groups.dp[0], vec![0, 8, 16, 24]);
    assert_eq!(
        planned.coords[13],
        Coord {
            dp: 1,
            pp: 1,
            tp: 1,
            cp: 0,
            ep: 0
        }
    );
    assert_eq!(planned.rank_of(&planned.coords[13]), 13);
    // Megatron's tp-cp-dp-pp: DP pairs share a node, stages are 16 apart.
    let megatron = plan_with_order(&parallelism, &dgx(4), RankOrder::MEGATRON, None).unwrap();
    assert_eq!(megatron.groups.dp[0], vec![0, 4, 8, 12]);
    assert_eq!(megatron.groups.pp[0], vec![0, 16]);
    // DP rings cross nodes on every hop in the planner's order: 32 sends;
    // in Megatron's, 0→4 stays, 4→8 crosses, 8→12 stays, 12→0 crosses: 16.
    let c = cost();
    let planner_traffic = layout_traffic(&parallelism, &dgx(4), RankOrder::PLANNER, &c).unwrap();
    let megatron_traffic = layout_traffic(&parallelism, &dgx(4), RankOrder::MEGATRON, &c).unwrap();
    let dp_send = 2.0 * 3.0 / 4.0 * 7.0e9 * 2.0 / 8.0;
    assert_eq!(planner_traffic.per_axis.dp, 32.0 * dp_send);
    assert_eq!(megatron_traffic.per_axis.dp, 16.0 * dp_send);
    assert_eq!(planner_traffic.per_axis.pp, 0.0);
    assert!(megatron_traffic.per_axis.pp > 0.0);
    // With the cost, the planner takes whichever predicts fewer bytes.
    let chosen = plan(&parallelism, &dgx(4), Some(&c)).unwrap();
    let chosen_bytes = chosen.traffic.unwrap().cross_node_bytes_per_step;
    assert!(chosen_bytes <= planner_traffic.cross_node_bytes_per_step);
    assert!(chosen_bytes <= megatron_traffic.cross_node_bytes_per_step);
}

#[test]
fn expert_groups_are_consecutive_dp_indices() {
    let parallelism = Parallelism::new(2, 1, 8).with_ep(4);
    let plan = plan_with_order(&parallelism, &dgx(2), RankOrder::MEGATRON, None).unwrap();
    assert_eq!(plan.groups.ep[0], vec![0, 2, 4, 6]);
    assert_eq!(plan.groups.ep[1], vec![1, 3, 5, 7]);
    assert_eq!(plan.groups.ep.len(), 4);
    assert_eq!(plan.coords[10].ep, 1);
    assert_eq!(plan.coords[10].dp, 5);
}

#[test]
fn nics_are_spread_when_dp_is_slowest() {
    let plan = plan_with_order(
        &Parallelism::new(8, 1, 4),
        &dgx(4),
        RankOrder::PLANNER,
        None,
    )
    .unwrap();
    // Each DP ring has one rank per node; the 8 rings of a node use its 4 NICs twice each.
    for ring in &plan.groups.dp {
        let nodes: Vec<usize> = ring.iter().map(|&r| plan.node_of(r)).collect();
        assert_eq!(nodes, vec![0, 1, 2, 3]);
    }
    let nics: Vec<usize> = (0..8).map(|r| plan.nic_of(r)).collect();
    assert_eq!(nics, vec![0, 0, 1, 1, 2, 2, 3, 3]);
}

#[test]
fn orders_display_as_megatron_writes_them() {
    assert_eq!(RankOrder::MEGATRON.to_string(), "tp-cp-ep-dp-pp");
    assert_eq!(RankOrder::NAIVE.to_string(), "ep-dp-pp-cp-tp");
    assert_eq!(RankOrder::PLANNER.to_string(), "tp-cp-pp-ep-dp");
    assert_eq!(RankOrder::candidates().len(), 24);
    assert!(matches!(
        RankOrder::new([Axis::Tp, Axis::Tp, Axis::Dp, Axis::Pp]),
        Err(PlanError::NotAnOrder { .. })
    ));
}

#[test]
fn errors_name_the_cause() {
    let err = |p: Parallelism, c: ClusterShape| plan(&p, &c, None).unwrap_err();
    assert!(matches!(
        err(Parallelism::new(8, 2, 2), dgx(2)),
        PlanError::WorldMismatch {
            product: 32,
            gpus: 16,
            ..
        }
    ));
    assert_eq!(
        err(Parallelism::new(16, 1, 1), dgx(2)),
        PlanError::TpExceedsIsland { tp: 16, island: 8 }
    );
    let six_gpus = ClusterShape {
        nodes: 1,
        gpus_per_node: 6,
        nvlink_island: 6,
        nics_per_node: 1,
    };
    assert_eq!(
        err(
            Parallelism::new(4, 3, 1),
            ClusterShape {
                gpus_per_node: 12,
                nvlink_island: 6,
                ..six_gpus
            }
        ),
        PlanError::TpDoesNotDivideIsland { tp: 4, island: 6 }
    );
    assert_eq!(
        err(Parallelism::new(8, 1, 2).with_ep(3), dgx(2)),
        PlanError::EpDoesNotDivideDp { ep: 3, dp: 2 }
    );
    assert_eq!(
        err(Parallelism::new(0, 1, 2), dgx(2)),
        PlanError::ZeroSize { what: "tp" }
    );
    assert_eq!(
        err(
            Parallelism::new(8, 1, 2),
            ClusterShape {
                nics_per_node: 0,
                ..dgx(2)
            }
        ),
        PlanError::ZeroSize {
            what: "nics_per_node"
        }
    );
    assert_eq!(
        err(
            Parallelism::new(8, 1, 2),
            ClusterShape {
                nvlink_island: 12,
                ..dgx(2)
            }
        ),
        PlanError::IslandShape {
            island: 12,
            gpus_per_node: 8
        }
    );
    assert!(matches!(
        plan_with_order(&Parallelism::new(8, 1, 2), &dgx(2), RankOrder::NAIVE, None),
        Err(PlanError::TpCrossesIsland { .. })
    ));
}

#[test]
fn plans_are_serde_types() {
    fn assert_serde<T: Serialize + for<'de> Deserialize<'de>>() {}
    assert_serde::<ShardPlan>();
}

#[test]
fn cluster_shapes_come_from_the_machines_topology() {
    let load = |file: &str| {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/machines")
            .join(file);
        crate::topology::Topology::from_hwloc_xml_file(&path).expect("machine")
    };
    let dgx_node = load("dgx-like.xml");
    let shape = ClusterShape::from_machine(&dgx_node, 4, 8);
    assert_eq!(shape.gpus_per_node, 8);
    assert_eq!(shape.nvlink_island, 8, "one NVLink island of 8");
    assert_eq!(
        shape.nics_per_node,
        dgx_node
            .nics
            .iter()
            .filter(|n| n.kind == crate::topology::DeviceKind::InfiniBand)
            .count()
            .max(1)
    );
    // Ranks that do not match the GPUs: one island of all slots.
    let shape = ClusterShape::from_machine(&dgx_node, 4, 3);
    assert_eq!(shape.nvlink_island, 3);
    let laptop = load("laptop.xml");
    let shape = ClusterShape::from_machine(&laptop, 1, 2);
    assert_eq!(
        (shape.nvlink_island, shape.nics_per_node),
        (2, laptop.nics.len().max(1))
    );
}
