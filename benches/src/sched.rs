//! `lumen bench sched`: the real scheduling code of `lumen-sched` driven
//! in-process over a synthetic cluster (by default 1024 nodes × 8 GPUs, one
//! rank per GPU), so the decisions a 1000-GPU job makes can be timed on a
//! laptop. Nothing here is a model of the policy: the rows call the same
//! [`Scheduler`], [`PlacementTable`] and shard planner that the runtime
//! calls, and step the table exactly as rank 0's head service does (create,
//! then one `reserved` per host that was asked to reserve, then remove).
//!
//! Rows and their anchors:
//!
//! | row | what | anchor |
//! |---|---|---|
//! | task placement | `Scheduler::place_task` decisions per second, half of them with an argument on a random rank (`data_at`), tasks finishing in submission order with 4 outstanding per rank | — |
//! | locality hit rate | of the requests with an argument, the share placed on the argument's node | — |
//! | balance | most outstanding tasks on a rank ÷ mean, after a burst with no completions | 1.0 is perfect |
//! | actor placement | `Scheduler::place_actor` decisions per second | — |
//! | placement group create/remove | groups of 4 one-GPU bundles (PACK) created, reserved by their hosts and removed, per second | Ray's published envelope: 646 groups/s |
//! | 1024-GPU placement group | time to create and reserve one group of 1024 one-GPU bundles (SPREAD) | — |
//! | shard plan | planning a 3D-parallel job over the cluster, and its predicted cross-node bytes per step beside the naive layout's and Megatron's order | — |
//!
//! | mesh broadcast | one call to 1024 hosts × 8 actors (8192) through the runtime's broadcast tree (`lumen_sched::mesh`, fanout 16): depth, most messages one sender sends, messages in all, and the critical path — each hop's measured work (splitting the host list, encoding each child's message and decoding it, as `RtMsg::MeshCall` carries it) plus an assumed one-way link latency per hop | Monarch: 5.8 ms median to 1024 hosts / 8192 actors (measured on real hosts) |
//!
//! The mesh row is a model with measured parts, not a run on 1024 hosts:
//! its per-hop work is timed here, its link latency is a parameter
//! ([`LINK_LATENCY_US`], the TCP latency measured between two namespace
//! hosts on this machine, see BENCHMARKS.md), and it assumes a host's
//! sends leave one after the other while different hosts work in parallel.

use std::collections::BTreeMap;
use std::time::Instant;

use lumen_sched::mesh::{split, split_all, tree_shape, DEFAULT_FANOUT};
use lumen_sched::shard::{plan, ClusterShape, ModelCost, Parallelism};
use lumen_sched::{
    Action, GroupAnswer, Host, PlacementGroupId, PlacementStrategy, PlacementTable, RankSlot,
    Request, Resources, Scheduler,
};
use serde::Serialize;

/// Options of `lumen bench sched`.
#[derive(Debug, Clone)]
pub struct SchedBenchOptions {
    /// Nodes of the synthetic cluster.
    pub nodes: usize,
    /// GPUs (and ranks) per node.
    pub gpus_per_node: usize,
    /// Iteration scale: 1.0 for the full counts, 0.01 for a smoke run.
    pub scale: f64,
}

/// One measured row.
#[derive(Debug, Clone, Serialize)]
pub struct SchedRow {
    /// What was measured.
    pub test: String,
    /// The cluster or job it was measured on.
    pub setting: String,
    /// The measured value.
    pub value: f64,
    /// Its unit.
    pub unit: String,
    /// What the row is compared with, if anything.
    pub anchor_name: Option<String>,
    /// The anchor's value in the same unit.
    pub anchor: Option<f64>,
}

impl SchedRow {
    fn new(test: &str, setting: &str, value: f64, unit: &str) -> Self {
        SchedRow {
            test: test.to_string(),
            setting: setting.to_string(),
            value,
            unit: unit.to_string(),
            anchor_name: None,
            anchor: None,
        }
    }

    fn anchored(mut self, name: &str, value: f64) -> Self {
        self.anchor_name = Some(name.to_string());
        self.anchor = Some(value);
        self
    }
}

/// splitmix64: a deterministic stream, so every run places the same requests.
struct Stream(u64);

impl Stream {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn rank_resources(gpus: f64) -> Resources {
    Resources {
        cpus: 8.0,
        gpus,
        custom: BTreeMap::new(),
    }
}

fn gpus(n: f64) -> Resources {
    Resources {
        cpus: 0.0,
        gpus: n,
        custom: BTreeMap::new(),
    }
}

/// Runs every row on a cluster of `nodes × gpus_per_node` ranks.
pub fn run(options: &SchedBenchOptions) -> anyhow::Result<Vec<SchedRow>> {
    let nodes = options.nodes.max(1);
    let per_node = options.gpus_per_node.max(1);
    let ranks = nodes * per_node;
    let setting = format!("{nodes} nodes x {per_node} GPUs ({ranks} ranks)");
    let count = |full: usize| ((full as f64 * options.scale) as usize).max(10);
    let mut rows = Vec::new();
    rows.extend(task_placement(nodes, per_node, count(200_000), &setting)?);
    rows.push(actor_placement(nodes, per_node, count(50_000), &setting)?);
    rows.push(group_churn(nodes, per_node, count(5_000), &setting)?);
    rows.push(big_group(nodes, per_node, &setting)?);
    rows.extend(shard_plans(options.scale));
    rows.extend(mesh_broadcast(nodes, per_node, DEFAULT_FANOUT));
    Ok(rows)
}

fn slots(nodes: usize, per_node: usize) -> Vec<RankSlot> {
    (0..nodes * per_node)
        .map(|rank| RankSlot {
            node: (rank / per_node) as u32,
            capacity: rank_resources(1.0),
            serving: true,
            alive: true,
            outstanding: 0,
            actors: 0,
        })
        .collect()
}

fn hosts(nodes: usize, per_node: usize) -> Vec<Host> {
    (0..nodes * per_node)
        .map(|rank| Host {
            node: (rank / per_node) as u32,
            capacity: rank_resources(1.0),
            available: rank_resources(1.0),
            serving: true,
            alive: true,
        })
        .collect()
}

fn task_placement(
    nodes: usize,
    per_node: usize,
    decisions: usize,
    setting: &str,
) -> anyhow::Result<Vec<SchedRow>> {
    let ranks = nodes * per_node;
    let mut scheduler = Scheduler::new(slots(nodes, per_node), 1);
    let mut stream = Stream(1);
    let need = Resources::cpus(1.0);
    // Tasks finish in submission order, 4 outstanding per rank on average.
    let window = 4 * ranks;
    let mut outstanding = std::collections::VecDeque::with_capacity(window + 1);
    let (mut with_data, mut local) = (0u64, 0u64);
    let started = Instant::now();
    for i in 0..decisions {
        let data_at = (i % 2 == 0).then(|| stream.below(ranks) as u32);
        let rank = scheduler
            .place_task(&Request {
                resources: Some(&need),
                node: None,
                rank: None,
                data_at,
            })
            .map_err(|e| anyhow::anyhow!("placement failed: {}", e.0))?;
        if let Some(at) = data_at {
            with_data += 1;
            if at as usize / per_node == rank as usize / per_node {
                local += 1;
            }
        }
        outstanding.push_back(rank);
        if outstanding.len() > window {
            if let Some(done) = outstanding.pop_front() {
                scheduler.finished(done);
            }
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    // Balance: a burst of one task per rank with nothing finishing.
    let mut burst = Scheduler::new(slots(nodes, per_node), 1);
    for _ in 0..ranks * 2 {
        burst
            .place_task(&Request {
                resources: Some(&need),
                node: None,
                rank: None,
                data_at: None,
            })
            .map_err(|e| anyhow::anyhow!("placement failed: {}", e.0))?;
    }
    let loads: Vec<u32> = (0..ranks as u32).map(|r| burst.load(r).0).collect();
    let most = loads.iter().copied().max().unwrap_or(0) as f64;
    let mean = loads.iter().map(|&l| f64::from(l)).sum::<f64>() / ranks as f64;
    Ok(vec![
        SchedRow::new(
            "task placement",
            setting,
            decisions as f64 / elapsed,
            "decisions/s",
        ),
        SchedRow::new(
            "locality hit rate",
            setting,
            if with_data == 0 {
                0.0
            } else {
                local as f64 / with_data as f64
            },
            "share",
        ),
        SchedRow::new(
            "balance (max/mean)",
            setting,
            most / mean.max(1e-9),
            "ratio",
        )
        .anchored("perfect", 1.0),
    ])
}

fn actor_placement(
    nodes: usize,
    per_node: usize,
    decisions: usize,
    setting: &str,
) -> anyhow::Result<SchedRow> {
    let mut scheduler = Scheduler::new(slots(nodes, per_node), 1);
    let need = Resources::cpus(0.0);
    let started = Instant::now();
    for _ in 0..decisions {
        let rank = scheduler
            .place_actor(&Request {
                resources: Some(&need),
                node: None,
                rank: None,
                data_at: None,
            })
            .map_err(|e| anyhow::anyhow!("placement failed: {}", e.0))?;
        scheduler.actor_gone(rank);
    }
    let elapsed = started.elapsed().as_secs_f64();
    Ok(SchedRow::new(
        "actor placement",
        setting,
        decisions as f64 / elapsed,
        "decisions/s",
    ))
}

/// Creates a group and acknowledges every reservation as the hosts would;
/// returns the number of bundles' hosts once the group is created.
fn create_and_reserve(
    table: &mut PlacementTable,
    id: PlacementGroupId,
    bundles: Vec<Resources>,
    strategy: PlacementStrategy,
) -> anyhow::Result<usize> {
    let mut queue = table.create(id, bundles, strategy, 0, id.seq);
    table.wait(id, 0, id.seq);
    let mut hosts = 0;
    while let Some(action) = queue.pop() {
        match action {
            Action::Reserve { host, group, .. } => {
                hosts += 1;
                queue.extend(table.reserved(group, host));
            }
            Action::Answer {
                answer: GroupAnswer::Infeasible(why) | GroupAnswer::Failed(why),
                ..
            } => anyhow::bail!("{id} was refused: {why}"),
            Action::Answer { .. } | Action::Release { .. } => {}
        }
    }
    Ok(hosts)
}

fn group_churn(
    nodes: usize,
    per_node: usize,
    groups: usize,
    setting: &str,
) -> anyhow::Result<SchedRow> {
    let mut table = PlacementTable::new(hosts(nodes, per_node));
    let started = Instant::now();
    for seq in 1..=groups as u64 {
        let id = PlacementGroupId { creator: 0, seq };
        create_and_reserve(&mut table, id, vec![gpus(1.0); 4], PlacementStrategy::Pack)?;
        let (removed, _releases) = table.remove(id);
        anyhow::ensure!(removed, "{id} was not there to remove");
    }
    let elapsed = started.elapsed().as_secs_f64();
    Ok(SchedRow::new(
        "placement group create/remove (4 x 1 GPU, PACK)",
        setting,
        groups as f64 / elapsed,
        "groups/s",
    )
    .anchored("ray (published envelope)", 646.0))
}

fn big_group(nodes: usize, per_node: usize, setting: &str) -> anyhow::Result<SchedRow> {
    let bundles = (nodes * per_node).min(1024);
    let mut table = PlacementTable::new(hosts(nodes, per_node));
    let id = PlacementGroupId { creator: 0, seq: 1 };
    let started = Instant::now();
    create_and_reserve(
        &mut table,
        id,
        vec![gpus(1.0); bundles],
        PlacementStrategy::Spread,
    )?;
    let elapsed = started.elapsed().as_secs_f64();
    Ok(SchedRow::new(
        &format!("{bundles}-GPU placement group (SPREAD), create + reserve"),
        setting,
        elapsed * 1e3,
        "ms",
    ))
}

/// A GPT-like transformer's cost for the traffic estimate.
fn transformer(hidden: u64, layers: u64, sequence: u64, microbatches: u64) -> ModelCost {
    ModelCost {
        parameters: 12 * layers * hidden * hidden,
        bytes_per_param: 2,
        activation_bytes_per_microbatch: sequence * hidden * 2,
        microbatches,
        layers,
    }
}

fn shard_plans(scale: f64) -> Vec<SchedRow> {
    let mut rows = Vec::new();
    let jobs: [(&str, usize, Parallelism, ModelCost); 2] = [
        (
            "1024 GPUs (128 x 8), tp8 pp8 dp16, 175B-like",
            128,
            Parallelism::new(8, 8, 16),
            transformer(12288, 96, 2048, 64),
        ),
        (
            "8192 GPUs (1024 x 8), tp8 pp16 dp64, 400B-like",
            1024,
            Parallelism::new(8, 16, 64),
            transformer(16384, 128, 4096, 128),
        ),
    ];
    // A smoke run plans the small job only.
    let take = if scale < 0.1 { 1 } else { jobs.len() };
    for (name, nodes, parallelism, cost) in jobs.into_iter().take(take) {
        let cluster = ClusterShape {
            nodes,
            gpus_per_node: 8,
            nvlink_island: 8,
            nics_per_node: 8,
        };
        let started = Instant::now();
        let planned = plan(&parallelism, &cluster, Some(&cost));
        let elapsed = started.elapsed().as_secs_f64();
        match planned {
            Ok(shard) => {
                rows.push(SchedRow::new(
                    "shard plan: planning time",
                    name,
                    elapsed * 1e3,
                    "ms",
                ));
                if let (Some(traffic), Some(reference)) = (shard.traffic, shard.reference) {
                    let gib = |bytes: f64| bytes / f64::from(1u32 << 30);
                    rows.push(
                        SchedRow::new(
                            &format!("shard plan ({}): cross-node GiB/step", shard.order),
                            name,
                            gib(traffic.cross_node_bytes_per_step),
                            "GiB",
                        )
                        .anchored(
                            "naive dp-pp-cp-tp",
                            gib(reference.naive.cross_node_bytes_per_step),
                        ),
                    );
                    rows.push(
                        SchedRow::new(
                            "shard plan: cross-node GiB/step vs Megatron's order",
                            name,
                            gib(traffic.cross_node_bytes_per_step),
                            "GiB",
                        )
                        .anchored(
                            "megatron tp-cp-ep-dp-pp",
                            gib(reference.megatron.cross_node_bytes_per_step),
                        ),
                    );
                }
            }
            Err(e) => rows.push(SchedRow::new(
                &format!("shard plan failed: {e}"),
                name,
                f64::NAN,
                "",
            )),
        }
    }
    rows
}

/// Prints the rows as a table.
pub fn print_table(rows: &[SchedRow]) {
    println!(
        "{:<56} {:>14} {:<12} {:>12}  anchor",
        "test", "value", "unit", "anchor"
    );
    for row in rows {
        let anchor = row.anchor.map_or_else(String::new, |a| format!("{a:.1}"));
        println!(
            "{:<56} {:>14.2} {:<12} {:>12}  {}  [{}]",
            row.test,
            row.value,
            row.unit,
            anchor,
            row.anchor_name.as_deref().unwrap_or(""),
            row.setting
        );
    }
    println!("mesh broadcast: modelled from measured per-hop work plus {LINK_LATENCY_US} us per hop (see the module docs); Monarch's anchor is a measurement on real hosts");
}

/// One-way link latency assumed per hop of the mesh broadcast model, in
/// microseconds: the 8-byte TCP latency measured between two namespace
/// hosts on this machine (BENCHMARKS.md, "TCP 8 B latency across two
/// namespace hosts", best runs ~11.7 µs).
pub const LINK_LATENCY_US: f64 = 12.0;

/// One call of a hop: (host, actor id, return object id).
type HopTarget = (u32, (u32, u64), (u32, u64));

/// What one hop of a broadcast carries (the shape of the runtime's
/// `RtMsg::MeshCall`: hosts below, one (host, actor, object) per call, the
/// method and its arguments).
#[derive(Serialize, serde::Deserialize)]
struct Hop {
    hosts: Vec<u32>,
    targets: Vec<HopTarget>,
    method: u64,
    name: String,
    args: Vec<u8>,
    fanout: u16,
}

/// Times the work of one sender: splitting its chunk, encoding each
/// child's message and the child decoding it. Returns the children's
/// chunks and the seconds spent.
fn hop_work<'a>(
    chunk: &'a [u32],
    root: bool,
    targets: &[HopTarget],
    fanout: usize,
) -> (Vec<&'a [u32]>, f64, usize) {
    let started = Instant::now();
    let children = if root {
        split_all(chunk, fanout)
    } else {
        split(chunk, fanout)
    };
    let mut bytes = 0;
    for child in &children {
        let (first, last) = (child[0], child[child.len() - 1]);
        let start = targets.partition_point(|t| t.0 < first);
        let end = targets.partition_point(|t| t.0 <= last);
        let hop = Hop {
            hosts: child.to_vec(),
            targets: targets[start..end].to_vec(),
            method: 0x5eed,
            name: "model::Trainer::step".into(),
            args: vec![0; 16],
            fanout: fanout as u16,
        };
        let encoded = bincode::serialize(&hop).unwrap_or_default();
        bytes = bytes.max(encoded.len());
        let decoded: Option<Hop> = bincode::deserialize(&encoded).ok();
        std::hint::black_box(decoded);
    }
    (children, started.elapsed().as_secs_f64(), bytes)
}

fn mesh_broadcast(hosts: usize, actors_per_host: usize, fanout: usize) -> Vec<SchedRow> {
    let actors = hosts * actors_per_host;
    let setting = format!("{hosts} hosts x {actors_per_host} actors ({actors}), fanout {fanout}");
    let ranks: Vec<u32> = (0..hosts as u32).collect();
    let targets: Vec<HopTarget> = (0..actors)
        .map(|a| {
            let host = (a / actors_per_host) as u32;
            (host, (0, a as u64), (0, 1_000_000 + a as u64))
        })
        .collect();
    let shape = tree_shape(hosts, fanout);
    // Several rounds; the median critical path.
    let mut paths = Vec::new();
    let mut largest = 0;
    for _ in 0..7 {
        let mut critical = 0.0;
        let (mut level, root_time, root_bytes) = hop_work(&ranks, true, &targets, fanout);
        critical += root_time;
        largest = largest.max(root_bytes);
        while !level.is_empty() {
            let mut next = Vec::new();
            let mut slowest: f64 = 0.0;
            for chunk in level {
                let (children, took, bytes) = hop_work(chunk, false, &targets, fanout);
                slowest = slowest.max(took);
                largest = largest.max(bytes);
                next.extend(children);
            }
            critical += slowest;
            level = next;
        }
        paths.push(critical);
    }
    paths.sort_by(f64::total_cmp);
    let work = paths[paths.len() / 2];
    let modelled = work * 1e3 + shape.depth as f64 * LINK_LATENCY_US / 1e3;
    vec![
        SchedRow::new(
            "mesh broadcast: modelled time to every actor",
            &setting,
            modelled,
            "ms",
        )
        .anchored("monarch (measured, 1024 hosts / 8192 actors)", 5.8),
        SchedRow::new(
            "mesh broadcast: measured hop work on the critical path",
            &setting,
            work * 1e3,
            "ms",
        ),
        SchedRow::new(
            "mesh broadcast: tree depth (hops)",
            &setting,
            shape.depth as f64,
            "hops",
        ),
        SchedRow::new(
            "mesh broadcast: most messages one sender sends",
            &setting,
            shape.max_sends as f64,
            "msgs",
        )
        .anchored("flat: the caller sends to every host", hosts as f64),
        SchedRow::new(
            "mesh broadcast: messages in all",
            &setting,
            shape.messages as f64,
            "msgs",
        ),
        SchedRow::new(
            "mesh broadcast: largest hop message",
            &setting,
            largest as f64 / 1024.0,
            "KiB",
        ),
    ]
    .into_iter()
    .chain(shape.per_hop.iter().enumerate().map(|(hop, &reached)| {
        SchedRow::new(
            &format!("mesh broadcast: messages at hop {}", hop + 1),
            &setting,
            reached as f64,
            "msgs",
        )
    }))
    .collect()
}
