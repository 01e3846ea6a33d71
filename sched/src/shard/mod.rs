//! The model-shard planner: a model's parallelism (TP × CP × PP × DP, with
//! EP inside DP) laid onto a cluster's nodes, NVLink islands and NICs.
//! Pure: it returns the rank layout, the communicators to build (one list of
//! rank groups per axis) and a traffic estimate, and touches nothing.
//!
//! # Layouts are rank orders
//! A layout is a mixed-radix rank order over the four grid axes, written
//! fastest-varying first as Megatron-LM writes its `order` argument
//! (`tp-cp-ep-dp-pp`: TP fastest, PP slowest). Expert parallelism is not a
//! grid axis of its own: as in Megatron's MoE, `ep` divides `dp` and an
//! expert-parallel group is `ep` consecutive data-parallel indices (the
//! fast part of the DP coordinate), so a rank's `ep` coordinate is
//! `dp % ep` and `tp × cp × pp × dp` is the world size. GPUs are numbered
//! node-major (`node = rank / gpus_per_node`, NVLink island
//! `rank / nvlink_island`, NIC `local_gpu × nics_per_node / gpus_per_node`,
//! the DGX pairing of GPUs to NICs).
//!
//! # The planner's rules
//! 1. **TP inside one NVLink island, always.** Tensor parallelism all-reduces
//!    activations several times per layer, which only NVLink bandwidth
//!    sustains; Narayanan et al., "Efficient Large-Scale Language Model
//!    Training on GPU Clusters Using Megatron-LM" (SC'21, §3.2, takeaway
//!    #1: tensor parallelism up to the GPUs of a server, pipeline
//!    parallelism across servers) measure throughput falling steeply once
//!    TP leaves a DGX node. An order that
//!    lets a TP group cross an island is never chosen ([`plan_with_order`]
//!    refuses it), and `tp` must divide the island ([`PlanError`]).
//! 2. **CP next**, inside the island when it fits: ring attention passes K/V
//!    blocks every layer.
//! 3. **PP stages on adjacent nodes**: the planner's default order is
//!    `tp-cp-pp-dp` ([`RankOrder::PLANNER`]), so when `tp × cp` fills a
//!    node, stage `s + 1` of a pipeline is on the node after stage `s`.
//! 4. **DP (and EP) cross nodes**, slowest, and spread over the NICs: with
//!    DP slowest every GPU of a node belongs to a different DP ring, so each
//!    ring has one rank per node and the node's rings use all its NICs
//!    (one rank per NIC per ring when `gpus_per_node == nics_per_node`).
//!
//! Given a [`ModelCost`], the planner evaluates every one of the 24 orders
//! that keeps rule 1 and takes the one with the fewest predicted cross-node
//! bytes per step, then the least loaded busiest NIC, then the order of
//! preference `tp-cp-pp-dp`, `tp-cp-dp-pp` (Megatron's), the rest. So rules
//! 2–4 decide ties and the traffic model decides the rest (for example
//! `tp-cp-dp-pp` wins when `tp × cp` leaves room in a node and gradients
//! outweigh pipeline activations). Megatron's order is always a candidate,
//! so the plan never predicts more cross-node bytes than it; the naive
//! in-order layout `dp-pp-cp-tp` (TP slowest) usually is not a candidate
//! (its TP groups cross islands), and is reported beside the plan with
//! Megatron's ([`ShardPlan::reference`]). Without a cost the planner takes
//! [`RankOrder::PLANNER`].
//!
//! Rule 1 is held even where bytes alone would break it, so the plan can
//! predict more cross-node bytes than the naive layout: when CP sends more
//! per rank than TP (by the model below, `cp - 1 > 4 (tp - 1)`), the naive
//! layout, CP fastest, keeps CP's ring inside nodes while the plan cannot
//! keep both; and with very few tokens per DP replica per step, gradients
//! can outweigh TP's activations. TP stays on NVLink regardless: its
//! all-reduces sit on the critical path of every layer, where DP's can
//! overlap the backward pass (as bucketed gradient all-reduce does). The property tests assert
//! "≤ naive" where TP outweighs CP and training batches are realistic,
//! and count the rest.
//!
//! # The traffic model (per training step, bytes sent)
//! With `A` = [`ModelCost::activation_bytes_per_microbatch`] (the activation
//! tensor of one microbatch at a layer boundary, whole sequence), `m`
//! microbatches, `L` layers (`L / pp` per stage), `P × b` parameter bytes:
//! - **TP**: ring all-reduce of the rank's activations (`A / cp`), two
//!   forward and two backward per layer (Narayanan et al. §2.3); each rank
//!   sends `2 (tp-1)/tp × A/cp × m × 4 × L/pp` to its ring neighbour.
//! - **CP**: ring attention passes the rank's K/V block around the CP ring
//!   forward and back: `2 (cp-1)/cp × A/tp × m × L/pp` per rank.
//! - **PP**: point-to-point activations to the next stage (forward) and
//!   gradients to the previous one (backward), `A/(tp × cp) × m` each way,
//!   with Megatron's scatter/gather split over the TP ranks (§4.1).
//! - **DP**: ring all-reduce of gradients, `2 (dp-1)/dp × P b/(tp × pp)` per
//!   rank, ring in DP-coordinate order.
//! - **EP**: every layer an MoE layer, tokens spread evenly over the `ep`
//!   experts, dispatch and combine forward and backward: `4 × A/(tp × cp) ×
//!   m × L/pp / ep` to each other member of the EP group.
//!
//! Bytes are cross-node when the two ends are on different nodes; a NIC's
//! load is the cross-node bytes its GPUs send. Left out, on purpose:
//! overlap with compute, tree and hierarchical (NVLS/SHARP) algorithms,
//! sequence parallelism, the distributed optimizer, CP's share of the
//! gradient reduction (Megatron reduces over DP × CP), expert parameters
//! reduced over DP/EP only, top-k routing imbalance, embedding and
//! pipeline-bubble effects, NVLink that spans nodes (NVL72 TP across nodes
//! counts as cross-node here). It ranks layouts; it does not predict time.
//!
//! # Example
//! ```
//! use lumen_sched::shard::{plan, ClusterShape, ModelCost, Parallelism};
//!
//! // 4 DGX-like nodes: 8 GPUs, one NVLink island, 4 NICs each.
//! let cluster = ClusterShape { nodes: 4, gpus_per_node: 8, nvlink_island: 8, nics_per_node: 4 };
//! let cost = ModelCost {
//!     parameters: 7_000_000_000,
//!     bytes_per_param: 2,
//!     activation_bytes_per_microbatch: 4096 * 4096 * 2,
//!     microbatches: 8,
//!     layers: 32,
//! };
//! let plan = plan(&Parallelism::new(4, 2, 4), &cluster, Some(&cost)).unwrap();
//! assert_eq!(plan.world, 32);
//! // Every TP group sits in one node.
//! for group in &plan.groups.tp {
//!     assert!(group.iter().all(|&r| plan.node_of(r) == plan.node_of(group[0])));
//! }
//! let traffic = plan.traffic.as_ref().unwrap();
//! let reference = plan.reference.as_ref().unwrap();
//! assert!(traffic.cross_node_bytes_per_step <= reference.naive.cross_node_bytes_per_step);
//! assert!(traffic.cross_node_bytes_per_step <= reference.megatron.cross_node_bytes_per_step);
//! ```

use std::fmt;

use serde::{Deserialize, Serialize};

/// How a model is parallelised. `tp × cp × pp × dp` is the number of GPUs;
/// `ep` divides `dp` (expert groups are formed inside data parallelism).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Parallelism {
    /// Tensor-parallel size.
    pub tp: usize,
    /// Pipeline-parallel size (stages).
    pub pp: usize,
    /// Data-parallel size.
    pub dp: usize,
    /// Expert-parallel size, a divisor of `dp` (1: no MoE).
    pub ep: usize,
    /// Context-parallel size (1: none).
    pub cp: usize,
}

impl Parallelism {
    /// `tp × pp × dp`, with `ep` and `cp` 1.
    pub fn new(tp: usize, pp: usize, dp: usize) -> Self {
        Parallelism {
            tp,
            pp,
            dp,
            ep: 1,
            cp: 1,
        }
    }

    /// The same with expert parallelism `ep` (inside `dp`).
    pub fn with_ep(self, ep: usize) -> Self {
        Parallelism { ep, ..self }
    }

    /// The same with context parallelism `cp`.
    pub fn with_cp(self, cp: usize) -> Self {
        Parallelism { cp, ..self }
    }

    fn size(&self, axis: Axis) -> usize {
        match axis {
            Axis::Tp => self.tp,
            Axis::Cp => self.cp,
            Axis::Ep => self.ep,
            Axis::Dp => self.dp,
            Axis::Pp => self.pp,
        }
    }
}

/// The cluster the job runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ClusterShape {
    /// Number of nodes.
    pub nodes: usize,
    /// GPUs on each node.
    pub gpus_per_node: usize,
    /// GPUs per NVLink domain: a divisor of `gpus_per_node` or a multiple of
    /// it (8 for a DGX node, 72 for an NVL72 rack of 18 × 4).
    pub nvlink_island: usize,
    /// Network interfaces on each node.
    pub nics_per_node: usize,
}

impl ClusterShape {
    /// The shape of `nodes` nodes like `machine`, with `slots` mesh slots
    /// (ranks, one GPU each) per node: NVLink islands and NICs from the
    /// machine's topology where its GPUs match the slots (an island is the
    /// GPUs sharing an NVLink or peer-access island; NICs prefer InfiniBand
    /// ones, else Ethernet), else one island of all slots and one NIC.
    pub fn from_machine(machine: &crate::topology::Topology, nodes: usize, slots: usize) -> Self {
        use crate::topology::DeviceKind;
        let slots = slots.max(1);
        let mut island = slots;
        if machine.gpus.len() == slots {
            let mut sizes: std::collections::BTreeMap<u32, usize> = Default::default();
            let mut all_known = true;
            for gpu in &machine.gpus {
                match gpu.nvlink_island {
                    Some(i) => *sizes.entry(i).or_default() += 1,
                    None => all_known = false,
                }
            }
            // Islands of one size that divides the node: use it.
            let mut distinct: Vec<usize> = sizes.values().copied().collect();
            distinct.dedup();
            if all_known && distinct.len() == 1 && slots % distinct[0] == 0 {
                island = distinct[0];
            }
        }
        let infiniband = machine
            .nics
            .iter()
            .filter(|n| n.kind == DeviceKind::InfiniBand)
            .count();
        let nics = if infiniband > 0 {
            infiniband
        } else {
            machine.nics.len()
        };
        ClusterShape {
            nodes: nodes.max(1),
            gpus_per_node: slots,
            nvlink_island: island,
            nics_per_node: nics.max(1),
        }
    }

    /// Number of GPUs, `nodes × gpus_per_node`.
    pub fn world(&self) -> usize {
        self.nodes * self.gpus_per_node
    }
}

/// What a training step moves, for the traffic estimate (see the module
/// doc's model).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ModelCost {
    /// Parameter count of the whole model.
    pub parameters: u64,
    /// Bytes per parameter gradient (2 for bf16).
    pub bytes_per_param: u64,
    /// Activation bytes of one microbatch at a layer boundary (microbatch ×
    /// sequence × hidden × bytes per element).
    pub activation_bytes_per_microbatch: u64,
    /// Microbatches per step (per pipeline).
    pub microbatches: u64,
    /// Transformer layers of the whole model (each stage holds `layers / pp`).
    pub layers: u64,
}

/// A parallelism axis. [`Axis::Ep`] is no grid axis of its own (it is the
/// fast part of `dp`) but has its own groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Axis {
    /// Tensor parallelism.
    Tp,
    /// Context parallelism.
    Cp,
    /// Expert parallelism.
    Ep,
    /// Data parallelism.
    Dp,
    /// Pipeline parallelism.
    Pp,
}

impl Axis {
    /// The four axes of the rank grid.
    pub const GRID: [Axis; 4] = [Axis::Tp, Axis::Cp, Axis::Dp, Axis::Pp];
    /// All five axes, each with its groups.
    pub const ALL: [Axis; 5] = [Axis::Tp, Axis::Cp, Axis::Ep, Axis::Dp, Axis::Pp];

    /// Its lower-case name, as in Megatron's order strings (`"tp"`).
    pub fn name(self) -> &'static str {
        match self {
            Axis::Tp => "tp",
            Axis::Cp => "cp",
            Axis::Ep => "ep",
            Axis::Dp => "dp",
            Axis::Pp => "pp",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// A rank order over the grid axes, fastest-varying first. Displayed as
/// Megatron writes it, with `ep` in front of `dp` (`tp-cp-ep-dp-pp`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RankOrder {
    fastest_first: [Axis; 4],
}

impl RankOrder {
    /// The planner's rules: TP, then CP, then PP, DP slowest.
    pub const PLANNER: RankOrder = RankOrder {
        fastest_first: [Axis::Tp, Axis::Cp, Axis::Pp, Axis::Dp],
    };
    /// Megatron-LM's default `tp-cp-ep-dp-pp`.
    pub const MEGATRON: RankOrder = RankOrder {
        fastest_first: [Axis::Tp, Axis::Cp, Axis::Dp, Axis::Pp],
    };
    /// The naive in-order layout `dp-pp-cp-tp`: TP slowest.
    pub const NAIVE: RankOrder = RankOrder {
        fastest_first: [Axis::Dp, Axis::Pp, Axis::Cp, Axis::Tp],
    };

    /// An order from its axes, fastest first: a permutation of
    /// [`Axis::GRID`].
    pub fn new(fastest_first: [Axis; 4]) -> Result<Self, PlanError> {
        let permutation = Axis::GRID.iter().all(|axis| fastest_first.contains(axis));
        if permutation {
            Ok(RankOrder { fastest_first })
        } else {
            Err(PlanError::NotAnOrder {
                order: fastest_first.map(Axis::name).join("-"),
            })
        }
    }

    /// Its axes, fastest first.
    pub fn fastest_first(&self) -> [Axis; 4] {
        self.fastest_first
    }

    /// All 24 orders: the planner's first, Megatron's second, then the rest.
    fn candidates() -> Vec<RankOrder> {
        let mut orders = vec![RankOrder::PLANNER, RankOrder::MEGATRON];
        let grid = Axis::GRID;
        for a in 0..4 {
            for b in 0..4 {
                for c in 0..4 {
                    for d in 0..4 {
                        let distinct = a != b && a != c && a != d && b != c && b != d && c != d;
                        if !distinct {
                            continue;
                        }
                        let order = RankOrder {
                            fastest_first: [grid[a], grid[b], grid[c], grid[d]],
                        };
                        if !orders.contains(&order) {
                            orders.push(order);
                        }
                    }
                }
            }
        }
        orders
    }
}

impl fmt::Display for RankOrder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for axis in self.fastest_first {
            if axis == Axis::Dp {
                write!(f, "{}ep", if first { "" } else { "-" })?;
                first = false;
            }
            write!(f, "{}{}", if first { "" } else { "-" }, axis.name())?;
            first = false;
        }
        Ok(())
    }
}

/// Where a rank sits in the parallelism grid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Coord {
    /// Data-parallel index, `0..dp`.
    pub dp: usize,
    /// Pipeline stage, `0..pp`.
    pub pp: usize,
    /// Tensor-parallel index, `0..tp`.
    pub tp: usize,
    /// Context-parallel index, `0..cp`.
    pub cp: usize,
    /// Index inside its expert-parallel group, `dp % ep`.
    pub ep: usize,
}

/// The communicators to build: for each axis, its rank groups. Each group
/// lists its ranks in axis-coordinate order (a ring's order; a pipeline's
/// stages first to last); groups are sorted by their first rank.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Groups {
    /// Tensor-parallel groups, `tp` ranks each.
    pub tp: Vec<Vec<usize>>,
    /// Context-parallel groups, `cp` ranks each.
    pub cp: Vec<Vec<usize>>,
    /// Expert-parallel groups, `ep` ranks each.
    pub ep: Vec<Vec<usize>>,
    /// Data-parallel groups, `dp` ranks each.
    pub dp: Vec<Vec<usize>>,
    /// Pipelines, `pp` stages each.
    pub pp: Vec<Vec<usize>>,
}

impl Groups {
    /// The groups of one axis.
    pub fn axis(&self, axis: Axis) -> &[Vec<usize>] {
        match axis {
            Axis::Tp => &self.tp,
            Axis::Cp => &self.cp,
            Axis::Ep => &self.ep,
            Axis::Dp => &self.dp,
            Axis::Pp => &self.pp,
        }
    }
}

/// Bytes per step, per axis.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct AxisBytes {
    /// Tensor-parallel all-reduces.
    pub tp: f64,
    /// Context-parallel ring attention.
    pub cp: f64,
    /// Expert-parallel all-to-alls.
    pub ep: f64,
    /// Data-parallel gradient all-reduce.
    pub dp: f64,
    /// Pipeline point-to-point.
    pub pp: f64,
}

impl AxisBytes {
    /// One axis' bytes.
    pub fn axis(&self, axis: Axis) -> f64 {
        match axis {
            Axis::Tp => self.tp,
            Axis::Cp => self.cp,
            Axis::Ep => self.ep,
            Axis::Dp => self.dp,
            Axis::Pp => self.pp,
        }
    }

    fn axis_mut(&mut self, axis: Axis) -> &mut f64 {
        match axis {
            Axis::Tp => &mut self.tp,
            Axis::Cp => &mut self.cp,
            Axis::Ep => &mut self.ep,
            Axis::Dp => &mut self.dp,
            Axis::Pp => &mut self.pp,
        }
    }

    /// The sum over the axes.
    pub fn total(&self) -> f64 {
        Axis::ALL.iter().map(|&axis| self.axis(axis)).sum()
    }
}

/// Predicted traffic of one layout per training step (the module doc's
/// model).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Traffic {
    /// Bytes sent between GPUs on different nodes, all axes.
    pub cross_node_bytes_per_step: f64,
    /// The cross-node bytes of each axis.
    pub per_axis: AxisBytes,
    /// All bytes sent, inside nodes too.
    pub total_bytes_per_step: f64,
    /// The cross-node bytes of the most loaded NIC of the cluster.
    pub busiest_nic_bytes_per_step: f64,
}

/// The traffic of the two reference layouts, for printing beside the plan.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ReferenceTraffic {
    /// The naive in-order layout [`RankOrder::NAIVE`] (`dp-pp-cp-tp`).
    pub naive: Traffic,
    /// Megatron-LM's default [`RankOrder::MEGATRON`] (`tp-cp-ep-dp-pp`).
    pub megatron: Traffic,
}

/// A rank layout and its communicators.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardPlan {
    /// The parallelism planned.
    pub parallelism: Parallelism,
    /// The cluster planned for.
    pub cluster: ClusterShape,
    /// The rank order chosen.
    pub order: RankOrder,
    /// Number of ranks (GPUs).
    pub world: usize,
    /// Each rank's coordinates, indexed by rank.
    pub coords: Vec<Coord>,
    /// The rank groups of each axis.
    pub groups: Groups,
    /// The plan's predicted traffic, when a [`ModelCost`] was given.
    pub traffic: Option<Traffic>,
    /// The reference layouts' traffic, when a [`ModelCost`] was given.
    pub reference: Option<ReferenceTraffic>,
}

impl ShardPlan {
    /// The node of `rank`.
    pub fn node_of(&self, rank: usize) -> usize {
        rank / self.cluster.gpus_per_node
    }

    /// The NVLink island of `rank`.
    pub fn island_of(&self, rank: usize) -> usize {
        rank / self.cluster.nvlink_island
    }

    /// The NIC (index on its node) that carries `rank`'s cross-node traffic.
    pub fn nic_of(&self, rank: usize) -> usize {
        nic_of(&self.cluster, rank)
    }

    /// The rank at `coord` (its `ep` is ignored: it follows from `dp`).
    pub fn rank_of(&self, coord: &Coord) -> usize {
        Layout::new(&self.parallelism, self.order).rank_of(coord)
    }
}

/// Why a plan cannot be made; each says what to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// A size is zero.
    #[error("{what} is 0: every parallel size and cluster dimension must be at least 1")]
    ZeroSize {
        /// The field (`"tp"`, `"nodes"`, ...).
        what: &'static str,
    },
    /// The parallelism does not use exactly the cluster's GPUs.
    #[error(
        "tp {tp} × cp {cp} × pp {pp} × dp {dp} = {product} GPUs, but the cluster has \
         {nodes} nodes × {gpus_per_node} = {gpus}: change dp (or the node count) so they match"
    )]
    WorldMismatch {
        /// Tensor-parallel size.
        tp: usize,
        /// Context-parallel size.
        cp: usize,
        /// Pipeline-parallel size.
        pp: usize,
        /// Data-parallel size.
        dp: usize,
        /// Their product.
        product: u128,
        /// Nodes.
        nodes: usize,
        /// GPUs per node.
        gpus_per_node: usize,
        /// GPUs of the cluster.
        gpus: usize,
    },
    /// The NVLink island neither divides a node nor is made of whole nodes.
    #[error(
        "nvlink_island {island} must divide gpus_per_node {gpus_per_node} or be a multiple of it"
    )]
    IslandShape {
        /// GPUs per NVLink island.
        island: usize,
        /// GPUs per node.
        gpus_per_node: usize,
    },
    /// TP is larger than an NVLink island.
    #[error(
        "tp {tp} exceeds the NVLink island of {island} GPUs: tensor parallelism must stay on \
         NVLink; use tp ≤ {island} and raise pp or dp"
    )]
    TpExceedsIsland {
        /// Tensor-parallel size.
        tp: usize,
        /// GPUs per NVLink island.
        island: usize,
    },
    /// TP does not split an NVLink island into whole groups.
    #[error(
        "tp {tp} does not divide the NVLink island of {island} GPUs: a TP group would straddle \
         two islands; use a divisor of {island}"
    )]
    TpDoesNotDivideIsland {
        /// Tensor-parallel size.
        tp: usize,
        /// GPUs per NVLink island.
        island: usize,
    },
    /// EP does not divide DP.
    #[error(
        "ep {ep} does not divide dp {dp}: expert-parallel groups are formed inside data \
         parallelism; use a divisor of {dp}"
    )]
    EpDoesNotDivideDp {
        /// Expert-parallel size.
        ep: usize,
        /// Data-parallel size.
        dp: usize,
    },
    /// An explicit order puts a TP group across NVLink islands.
    #[error(
        "rank order {order} puts a TP group across NVLink islands: put tp earlier (tp first \
         always keeps it inside)"
    )]
    TpCrossesIsland {
        /// The order asked for.
        order: String,
    },
    /// Axes given as an order are not a permutation of tp, cp, dp, pp.
    #[error("{order} is not a rank order: name each of tp, cp, dp and pp once")]
    NotAnOrder {
        /// The axes given.
        order: String,
    },
}

/// Plans `parallelism` onto `cluster` by the module's rules; with a `cost`,
/// chooses among the legal orders by predicted cross-node bytes and
/// reports the reference layouts' traffic beside the plan's.
pub fn plan(
    parallelism: &Parallelism,
    cluster: &ClusterShape,
    cost: Option<&ModelCost>,
) -> Result<ShardPlan, PlanError> {
    validate(parallelism, cluster)?;
    let order = match cost {
        None => RankOrder::PLANNER,
        Some(cost) => {
            let mut best: Option<(RankOrder, Traffic)> = None;
            for order in RankOrder::candidates() {
                let layout = Layout::new(parallelism, order);
                if !layout.tp_inside_islands(cluster) {
                    continue;
                }
                let traffic = layout.traffic(cluster, cost);
                // Strictly better only: earlier candidates win ties.
                let better = match &best {
                    None => true,
                    Some((_, held)) => {
                        (
                            traffic.cross_node_bytes_per_step,
                            traffic.busiest_nic_bytes_per_step,
                        ) < (
                            held.cross_node_bytes_per_step,
                            held.busiest_nic_bytes_per_step,
                        )
                    }
                };
                if better {
                    best = Some((order, traffic));
                }
            }
            // Megatron's order always keeps TP inside (tp divides the island).
            best.map_or(RankOrder::MEGATRON, |(order, _)| order)
        }
    };
    plan_with_order(parallelism, cluster, order, cost)
}

/// Lays `parallelism` onto `cluster` in the given `order`, refusing an order
/// that puts a TP group across NVLink islands.
pub fn plan_with_order(
    parallelism: &Parallelism,
    cluster: &ClusterShape,
    order: RankOrder,
    cost: Option<&ModelCost>,
) -> Result<ShardPlan, PlanError> {
    validate(parallelism, cluster)?;
    let layout = Layout::new(parallelism, order);
    if !layout.tp_inside_islands(cluster) {
        return Err(PlanError::TpCrossesIsland {
            order: order.to_string(),
        });
    }
    let traffic = cost.map(|cost| layout.traffic(cluster, cost));
    let reference = cost.map(|cost| ReferenceTraffic {
        naive: Layout::new(parallelism, RankOrder::NAIVE).traffic(cluster, cost),
        megatron: Layout::new(parallelism, RankOrder::MEGATRON).traffic(cluster, cost),
    });
    Ok(ShardPlan {
        parallelism: *parallelism,
        cluster: *cluster,
        order,
        world: layout.world,
        coords: (0..layout.world).map(|rank| layout.coord(rank)).collect(),
        groups: layout.groups(),
        traffic,
        reference,
    })
}

/// The predicted traffic of `parallelism` laid out in `order` on `cluster`,
/// legal or not (the naive layout's TP crosses islands; this measures it).
pub fn layout_traffic(
    parallelism: &Parallelism,
    cluster: &ClusterShape,
    order: RankOrder,
    cost: &ModelCost,
) -> Result<Traffic, PlanError> {
    validate(parallelism, cluster)?;
    Ok(Layout::new(parallelism, order).traffic(cluster, cost))
}

fn validate(parallelism: &Parallelism, cluster: &ClusterShape) -> Result<(), PlanError> {
    let sizes = [
        ("tp", parallelism.tp),
        ("pp", parallelism.pp),
        ("dp", parallelism.dp),
        ("ep", parallelism.ep),
        ("cp", parallelism.cp),
        ("nodes", cluster.nodes),
        ("gpus_per_node", cluster.gpus_per_node),
        ("nvlink_island", cluster.nvlink_island),
        ("nics_per_node", cluster.nics_per_node),
    ];
    if let Some(&(what, _)) = sizes.iter().find(|(_, size)| *size == 0) {
        return Err(PlanError::ZeroSize { what });
    }
    let island = cluster.nvlink_island;
    let gpus_per_node = cluster.gpus_per_node;
    let island_fits = if island <= gpus_per_node {
        gpus_per_node % island == 0
    } else {
        island % gpus_per_node == 0
    };
    if !island_fits {
        return Err(PlanError::IslandShape {
            island,
            gpus_per_node,
        });
    }
    let product = [
        parallelism.tp,
        parallelism.cp,
        parallelism.pp,
        parallelism.dp,
    ]
    .iter()
    .map(|&size| size as u128)
    .product::<u128>();
    let gpus = cluster.nodes as u128 * gpus_per_node as u128;
    if product != gpus {
        return Err(PlanError::WorldMismatch {
            tp: parallelism.tp,
            cp: parallelism.cp,
            pp: parallelism.pp,
            dp: parallelism.dp,
            product,
            nodes: cluster.nodes,
            gpus_per_node,
            gpus: cluster.nodes.saturating_mul(gpus_per_node),
        });
    }
    if parallelism.tp > island {
        return Err(PlanError::TpExceedsIsland {
            tp: parallelism.tp,
            island,
        });
    }
    if island % parallelism.tp != 0 {
        return Err(PlanError::TpDoesNotDivideIsland {
            tp: parallelism.tp,
            island,
        });
    }
    if parallelism.dp % parallelism.ep != 0 {
        return Err(PlanError::EpDoesNotDivideDp {
            ep: parallelism.ep,
            dp: parallelism.dp,
        });
    }
    Ok(())
}

fn nic_of(cluster: &ClusterShape, rank: usize) -> usize {
    (rank % cluster.gpus_per_node) * cluster.nics_per_node / cluster.gpus_per_node
}

/// A mixed-radix rank order over a validated parallelism.
struct Layout {
    parallelism: Parallelism,
    world: usize,
    /// Stride of each grid axis, indexed by [`Axis::index`] (`Ep` unused).
    strides: [usize; 5],
}

impl Layout {
    fn new(parallelism: &Parallelism, order: RankOrder) -> Self {
        let mut strides = [0; 5];
        let mut stride = 1;
        for axis in order.fastest_first {
            strides[axis.index()] = stride;
            stride *= parallelism.size(axis);
        }
        Layout {
            parallelism: *parallelism,
            world: stride,
            strides,
        }
    }

    fn stride(&self, axis: Axis) -> usize {
        self.strides[axis.index()]
    }

    /// The coordinate of `rank` on a grid axis.
    fn coordinate(&self, rank: usize, axis: Axis) -> usize {
        rank / self.stride(axis) % self.parallelism.size(axis)
    }

    fn coord(&self, rank: usize) -> Coord {
        let dp = self.coordinate(rank, Axis::Dp);
        Coord {
            dp,
            pp: self.coordinate(rank, Axis::Pp),
            tp: self.coordinate(rank, Axis::Tp),
            cp: self.coordinate(rank, Axis::Cp),
            ep: dp % self.parallelism.ep,
        }
    }

    fn rank_of(&self, coord: &Coord) -> usize {
        coord.dp * self.stride(Axis::Dp)
            + coord.pp * self.stride(Axis::Pp)
            + coord.tp * self.stride(Axis::Tp)
            + coord.cp * self.stride(Axis::Cp)
    }

    /// A group's ranks start at each rank whose coordinate is 0 on the
    /// axis (for EP: a multiple of `ep` on DP) and step by the axis' stride.
    fn groups(&self) -> Groups {
        let axis_groups = |size: usize, grid_axis: Axis| -> Vec<Vec<usize>> {
            let stride = self.stride(grid_axis);
            (0..self.world)
                .filter(|&rank| self.coordinate(rank, grid_axis) % size == 0)
                .map(|first| (0..size).map(|k| first + k * stride).collect())
                .collect()
        };
        let p = &self.parallelism;
        Groups {
            tp: axis_groups(p.tp, Axis::Tp),
            cp: axis_groups(p.cp, Axis::Cp),
            ep: axis_groups(p.ep, Axis::Dp),
            dp: axis_groups(p.dp, Axis::Dp),
            pp: axis_groups(p.pp, Axis::Pp),
        }
    }

    /// Islands are contiguous rank ranges, so a TP group is inside one when
    /// its first and last ranks are.
    fn tp_inside_islands(&self, cluster: &ClusterShape) -> bool {
        let last = (self.parallelism.tp - 1) * self.stride(Axis::Tp);
        (0..self.world)
            .filter(|&rank| self.coordinate(rank, Axis::Tp) == 0)
            .all(|first| first / cluster.nvlink_island == (first + last) / cluster.nvlink_island)
    }

    /// Bytes of one directed send on each axis (the module doc's model).
    fn bytes_per_send(&self, cost: &ModelCost) -> AxisBytes {
        let p = &self.parallelism;
        let (tp, cp, pp, dp, ep) = (
            p.tp as f64,
            p.cp as f64,
            p.pp as f64,
            p.dp as f64,
            p.ep as f64,
        );
        let activation = cost.activation_bytes_per_microbatch as f64;
        let microbatches = cost.microbatches as f64;
        let layers_per_stage = cost.layers as f64 / pp;
        let gradient_bytes = cost.parameters as f64 * cost.bytes_per_param as f64;
        AxisBytes {
            tp: 2.0 * (tp - 1.0) / tp * activation / cp * microbatches * 4.0 * layers_per_stage,
            cp: 2.0 * (cp - 1.0) / cp * activation / tp * microbatches * layers_per_stage,
            ep: 4.0 * activation / (tp * cp) * microbatches * layers_per_stage / ep,
            dp: 2.0 * (dp - 1.0) / dp * gradient_bytes / (tp * pp),
            pp: activation / (tp * cp) * microbatches,
        }
    }

    /// Counts the directed sends of every axis (all, cross-node, per NIC),
    /// then prices them: equal counts give bit-equal bytes, so ties between
    /// orders are exact.
    fn traffic(&self, cluster: &ClusterShape, cost: &ModelCost) -> Traffic {
        let p = self.parallelism;
        let node = |rank: usize| rank / cluster.gpus_per_node;
        let mut sends = [0u64; 5];
        let mut cross = [0u64; 5];
        let mut nic_cross = vec![[0u64; 5]; cluster.nodes * cluster.nics_per_node];
        let mut count = |from: usize, to: usize, axis: Axis| {
            sends[axis.index()] += 1;
            if node(from) != node(to) {
                cross[axis.index()] += 1;
                let nic = node(from) * cluster.nics_per_node + nic_of(cluster, from);
                nic_cross[nic][axis.index()] += 1;
            }
        };
        for rank in 0..self.world {
            // Rings: TP, CP and DP send to the next index, wrapping.
            for axis in [Axis::Tp, Axis::Cp, Axis::Dp] {
                let size = p.size(axis);
                if size > 1 {
                    let index = self.coordinate(rank, axis);
                    let next =
                        rank - index * self.stride(axis) + (index + 1) % size * self.stride(axis);
                    count(rank, next, axis);
                }
            }
            // Pipelines: activations forward, gradients backward.
            let stage = self.coordinate(rank, Axis::Pp);
            if stage + 1 < p.pp {
                count(rank, rank + self.stride(Axis::Pp), Axis::Pp);
            }
            if stage > 0 {
                count(rank, rank - self.stride(Axis::Pp), Axis::Pp);
            }
            // Expert all-to-all: every other member of the EP group.
            if p.ep > 1 {
                let member = self.coordinate(rank, Axis::Dp) % p.ep;
                let first = rank - member * self.stride(Axis::Dp);
                for k in (0..p.ep).filter(|&k| k != member) {
                    count(rank, first + k * self.stride(Axis::Dp), Axis::Ep);
                }
            }
        }
        let price = self.bytes_per_send(cost);
        let priced = |counts: &[u64; 5]| {
            let mut bytes = AxisBytes::default();
            for axis in Axis::ALL {
                *bytes.axis_mut(axis) = counts[axis.index()] as f64 * price.axis(axis);
            }
            bytes
        };
        let per_axis = priced(&cross);
        let busiest_nic_bytes_per_step = nic_cross
            .iter()
            .map(|counts| priced(counts).total())
            .fold(0.0, f64::max);
        Traffic {
            cross_node_bytes_per_step: per_axis.total(),
            per_axis,
            total_bytes_per_step: priced(&sends).total(),
            busiest_nic_bytes_per_step,
        }
    }
}

#[cfg(test)]
mod tests;
