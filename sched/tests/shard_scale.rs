//! The shard planner at cluster scale: 1024 and 8192 GPUs plan in a debug
//! build without trouble (no timing assertion: they just run), and print
//! the predicted cross-node bytes per step beside the naive layout and
//! Megatron's order (`cargo nextest run -p lumen-sched --no-capture -E
//! 'binary(shard_scale)'`).

use lumen_sched::shard::{plan, ClusterShape, ModelCost, Parallelism, ShardPlan, Traffic};

fn dgx(nodes: usize) -> ClusterShape {
    ClusterShape {
        nodes,
        gpus_per_node: 8,
        nvlink_island: 8,
        nics_per_node: 8,
    }
}

/// A dense transformer: parameters ≈ 12 L h², bf16 gradients, the boundary
/// activation sequence × h × 2 bytes.
fn transformer(hidden: u64, layers: u64, sequence: u64, microbatches: u64) -> ModelCost {
    ModelCost {
        parameters: 12 * layers * hidden * hidden,
        bytes_per_param: 2,
        activation_bytes_per_microbatch: sequence * hidden * 2,
        microbatches,
        layers,
    }
}

fn gib(bytes: f64) -> String {
    format!("{:.1} GiB", bytes / (1u64 << 30) as f64)
}

fn line(name: &str, traffic: &Traffic) -> String {
    let axes = traffic.per_axis;
    format!(
        "  {name:<9} cross-node {:>11}/step (tp {}, cp {}, ep {}, pp {}, dp {}), busiest NIC {}",
        gib(traffic.cross_node_bytes_per_step),
        gib(axes.tp),
        gib(axes.cp),
        gib(axes.ep),
        gib(axes.pp),
        gib(axes.dp),
        gib(traffic.busiest_nic_bytes_per_step)
    )
}

fn report(title: &str, plan: &ShardPlan) {
    let traffic = plan.traffic.expect("a cost was given");
    let reference = plan.reference.expect("a cost was given");
    println!("{title}: {} GPUs, order {}", plan.world, plan.order);
    println!("{}", line("plan", &traffic));
    println!("{}", line("naive", &reference.naive));
    println!("{}", line("megatron", &reference.megatron));
    assert!(traffic.cross_node_bytes_per_step <= reference.naive.cross_node_bytes_per_step);
    assert!(traffic.cross_node_bytes_per_step <= reference.megatron.cross_node_bytes_per_step);
    for group in &plan.groups.tp {
        assert!(group
            .iter()
            .all(|&r| plan.island_of(r) == plan.island_of(group[0])));
    }
}

#[test]
fn plans_1024_gpus_tp8_pp8_dp16() {
    // GPT-3 175B-like: h 12288, 96 layers, 2048 tokens, 1536 sequences a step.
    let cost = transformer(12288, 96, 2048, 1536 / 16);
    let full = plan(&Parallelism::new(8, 8, 16), &dgx(128), Some(&cost)).unwrap();
    assert_eq!(full.world, 1024);
    assert_eq!(full.groups.tp.len(), 128);
    assert_eq!(full.groups.pp.len(), 128);
    assert_eq!(full.groups.dp.len(), 64);
    report("128 × 8, tp 8 pp 8 dp 16", &full);

    // TP 4 leaves half a node: the orders differ in what shares it.
    let half = plan(&Parallelism::new(4, 8, 32), &dgx(128), Some(&cost)).unwrap();
    report("128 × 8, tp 4 pp 8 dp 32", &half);
}

#[test]
fn plans_8192_gpus() {
    // ~400B dense: h 16384, 128 layers, 4096 tokens, 4 Mi tokens a step.
    let cost = transformer(16384, 128, 4096, (4 << 20) / 64 / 4096);
    let plan_3d = plan(&Parallelism::new(8, 16, 64), &dgx(1024), Some(&cost)).unwrap();
    assert_eq!(plan_3d.world, 8192);
    report("1024 × 8, tp 8 pp 16 dp 64", &plan_3d);

    // MoE with context parallelism: TP 4 × CP 2 fill a node, EP 8 inside DP 128.
    let moe = Parallelism::new(4, 8, 128).with_cp(2).with_ep(8);
    let plan_moe = plan(&moe, &dgx(1024), Some(&transformer(8192, 64, 8192, 32))).unwrap();
    assert_eq!(plan_moe.groups.ep.len(), 8192 / 8);
    report("1024 × 8, tp 4 cp 2 pp 8 dp 128 ep 8", &plan_moe);
}
