//! Placement policy: which rank runs a task or hosts an actor. Pure (no
//! IO); each submitting rank keeps its own instance and its own view of the
//! load it has placed (like Ray's owner-side lease requests, without a
//! central scheduler in the path of every task).
//!
//! A decision is asked with a [`Request`] (what the work must have) and
//! [`Preferences`] (what it would rather have); [`Scheduler::place_task`]
//! and [`Scheduler::place_actor`] take the default preferences.
//!
//! # Policy, in order
//! 1. **Candidates**: alive, serving (in driver mode rank 0 only submits),
//!    whose *total* resources fit the request, on the asked node (hard node
//!    affinity) / the asked rank. Soft node affinity
//!    ([`SchedulingStrategy::PreferNode`], Ray's
//!    `NodeAffinitySchedulingStrategy(soft=True)`) narrows the candidates to
//!    that node when it has one, else leaves them all. None: the request is
//!    infeasible (an error, not a hang).
//! 2. **SPREAD** ([`SchedulingStrategy::Spread`], Ray's `"SPREAD"`): the
//!    job's nodes in round robin (one cursor over the nodes in ascending
//!    order, shared by tasks and actors), the first node from the cursor
//!    with a candidate; inside it, the least loaded.
//! 3. **Data locality** (tasks): the node holding the most argument bytes
//!    ([`Preferences::args`]; [`Request::data_at`] counts as one argument
//!    there) is preferred: its least loaded candidate, or the rank holding
//!    most of those bytes when it is not busier. That choice is taken
//!    unless it is busier than the least-loaded candidate anywhere by more
//!    than one task per CPU; then the task **spills back** to that one
//!    (Ray's locality-aware leasing, then its hybrid spillback).
//! 4. Otherwise the **least loaded**; ties go to the rank used last (still
//!    warm: its threads spin before sleeping), then round-robin.
//!
//! A rank's **load** is `max(outstanding, reported) / max(cpus, 1)`:
//! `outstanding` the tasks this submitter placed there and that have not
//! finished, `reported` the queue length the rank itself last reported
//! ([`Scheduler::reported`], piggybacked on its replies), which counts the
//! work of every submitter. So a submitter spills away from a rank that
//! others keep busy. A report is halved by each
//! [`Scheduler::decay_reports`] (the caller's clock): a rank only reports
//! when it answers, and one that looked busy must be tried again. Actors are placed by the number of actors this
//! submitter placed on a rank instead.
//!
//! # GPU and NIC affinity
//! Among candidates of equal load, a preference order decides before the
//! round-robin distance (it never outweighs load):
//! - **CPU-only work avoids GPU ranks** (Ray's avoid-GPU-nodes rule): a
//!   request that asks for no GPU takes a rank without GPUs while such a
//!   candidate is not busier than the least-loaded rank with GPUs, so GPUs
//!   stay free for work that needs them.
//! - **NIC-local ranks** ([`Preferences::nic_local`]): a request for
//!   network-heavy work prefers ranks whose binding has a NIC on their NUMA
//!   node ([`Scheduler::with_nic_local`], fed by the topology binding) when
//!   they are not busier.
//!
//! GPU avoidance weighs more than NIC locality.
//!
//! Placement groups are not placed here: rank 0's table reserves them (see
//! [`crate::PlacementTable`]), and a task or actor in a group arrives with its bundle's
//! rank as the exact rank asked for (the bundle itself chosen by
//! [`Scheduler::load`] when any bundle will do). Feasibility here is
//! against a rank's total resources, reserved or not: a task that needs
//! reserved CPUs is not refused, it waits in the rank's queue.
//!
//! # How a decision stays cheap at thousands of ranks
//! A rank's capacity never changes, so ranks are grouped once into
//! *capacity classes* (ranks whose capacity is bit for bit the same, and
//! whose NIC locality is the same): feasibility and the GPU/NIC preference
//! are asked once per class, not once per rank. Each class
//! keeps two segment trees over its ranks (in rank order), one holding
//! each live serving rank's load and one its actor count, each node the
//! minimum of its range and the leftmost rank holding it. "Least loaded,
//! first from the round-robin cursor" is then the leftmost minimum of the
//! ranks at or after the cursor, else of those before it: two range
//! queries per class, `O(log n)`, and one leaf update per decision,
//! completion or report (in the one tree whose value changed, walking up
//! only while a minimum changes). Node affinity, locality and SPREAD scan
//! only one node's ranks, reading loads from the trees' leaves (SPREAD may
//! pass over nodes without a candidate). A local choice whose load is at
//! most 1 needs no search over the classes at all: loads are never
//! negative, so it is within one task per CPU of the least loaded. The
//! choice is exactly the one a scan over every rank would make (a
//! randomized test, `tests/placement_policy.rs`, checks it against such a
//! scan).
//!
//! # Invariants
//! - A tree leaf holds a value exactly when its rank is alive and serving,
//!   and the value is the one the scan computes (`max(outstanding,
//!   reported) / max(cpus, 1)` or `actors`); every change to a slot or a
//!   report refreshes its leaf.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::{Rank, Resources};

/// What the policy knows about a rank.
#[derive(Debug, Clone)]
pub struct RankSlot {
    /// The rank's node (index in the job).
    pub node: u32,
    /// What the rank offers in all (reserved by placement groups or not).
    pub capacity: Resources,
    /// Takes tasks (in driver mode rank 0 only submits).
    pub serving: bool,
    /// Not known dead.
    pub alive: bool,
    /// Tasks placed there by this submitter and not finished.
    pub outstanding: u32,
    /// Actors placed there by this submitter.
    pub actors: u32,
}

/// What a placement must have.
#[derive(Debug, Clone, Default)]
pub struct Request<'a> {
    /// What the task or actor needs (`None`: anything goes).
    pub resources: Option<&'a Resources>,
    /// Only ranks of this node (hard node affinity).
    pub node: Option<u32>,
    /// Exactly this rank.
    pub rank: Option<Rank>,
    /// Rank holding the largest argument, for callers that know no sizes:
    /// counted as the only argument location when
    /// [`Preferences::args`] is empty.
    pub data_at: Option<Rank>,
}

/// How work is spread over the job (Ray's `scheduling_strategy`), beyond
/// the hard constraints of a [`Request`]. Placement groups and hard node
/// affinity are options of their own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum SchedulingStrategy {
    /// Ray's `"DEFAULT"`: data locality, then the least loaded.
    #[default]
    Default,
    /// Ray's `"SPREAD"`: nodes in round robin, the least loaded inside.
    Spread,
    /// Ray's `NodeAffinitySchedulingStrategy(node, soft=True)`: this node
    /// when it has a live candidate that fits, else anywhere.
    PreferNode(u32),
}

/// What a placement would rather have (see the module docs).
#[derive(Debug, Clone, Copy, Default)]
pub struct Preferences<'a> {
    /// Spread, soft node affinity, or the default.
    pub strategy: SchedulingStrategy,
    /// Bytes of the task's arguments by the rank holding them (a rank may
    /// appear more than once; its bytes add up).
    pub args: &'a [(Rank, u64)],
    /// Prefer ranks with a NIC on their NUMA node.
    pub nic_local: bool,
}

/// Why nothing fits: the request can never be placed in this job (an
/// error for the caller, never a hang).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Infeasible(pub String);

/// The placement policy of one submitting rank.
#[derive(Debug, Clone)]
pub struct Scheduler {
    ranks: Vec<RankSlot>,
    /// Queue length each rank last reported (0 until it does), halved by
    /// each [`Scheduler::decay_reports`].
    reported: Vec<u32>,
    /// The ranks whose report may not be 0 (each once), and whether a
    /// rank is among them.
    reporting: Vec<usize>,
    listed: Vec<bool>,
    /// Round-robin cursor over ranks.
    next: usize,
    /// SPREAD's cursor, an index into `node_order`.
    spread_next: usize,
    /// The job's nodes, ascending; `node_ranks[i]` are the ranks of
    /// `node_order[i]`, ascending, and `node_at[r]` is rank `r`'s `i`.
    node_order: Vec<u32>,
    node_ranks: Vec<Vec<usize>>,
    node_at: Vec<usize>,
    /// Ranks grouped by capacity (see the module docs).
    classes: Vec<CapacityClass>,
    /// Rank `r`'s class and its position in the class.
    class_of: Vec<(usize, usize)>,
}

/// Ranks of one capacity, and their loads and actor counts as trees.
#[derive(Debug, Clone)]
struct CapacityClass {
    capacity: Resources,
    /// `capacity.cpus.max(1.0)`: what a rank's load is divided by.
    per_cpu: f64,
    /// The ranks have GPUs (CPU-only work avoids them).
    gpus: bool,
    /// The ranks have a NIC on their NUMA node.
    nic_local: bool,
    /// The class's ranks, ascending.
    members: Vec<usize>,
    /// Load of each live serving member.
    load: MinTree<f64>,
    /// Actors on each live serving member.
    actors: MinTree<u32>,
}

/// A bit-exact key of a capacity and NIC locality, to group ranks into
/// classes.
type ClassKey = (u64, u64, Vec<(String, u64)>, bool);

fn class_key(capacity: &Resources, nic_local: bool) -> ClassKey {
    (
        capacity.cpus.to_bits(),
        capacity.gpus.to_bits(),
        capacity
            .custom
            .iter()
            .map(|(name, amount)| (name.clone(), amount.to_bits()))
            .collect(),
        nic_local,
    )
}

/// A segment tree over positions `0..len`: each node the smallest value of
/// its range and the leftmost position holding it; `None` where a position
/// holds nothing.
#[derive(Debug, Clone)]
struct MinTree<K> {
    size: usize,
    nodes: Vec<Option<(K, usize)>>,
}

impl<K: Copy + PartialOrd + PartialEq> MinTree<K> {
    fn new(len: usize) -> Self {
        let size = len.next_power_of_two().max(1);
        MinTree {
            size,
            nodes: vec![None; 2 * size],
        }
    }

    /// The leftmost of the two smallest: `right` only when strictly smaller.
    fn pick(left: Option<(K, usize)>, right: Option<(K, usize)>) -> Option<(K, usize)> {
        match (left, right) {
            (None, r) => r,
            (l, None) => l,
            (Some(l), Some(r)) => Some(if r.0 < l.0 { r } else { l }),
        }
    }

    /// Sets `position`'s value and the minima above it, stopping where a
    /// node is unchanged (its ancestors then are too).
    fn set(&mut self, position: usize, value: Option<K>) {
        let mut i = position + self.size;
        let leaf = value.map(|v| (v, position));
        if self.nodes[i] == leaf {
            return;
        }
        self.nodes[i] = leaf;
        while i > 1 {
            i /= 2;
            let min = Self::pick(self.nodes[2 * i], self.nodes[2 * i + 1]);
            if self.nodes[i] == min {
                return;
            }
            self.nodes[i] = min;
        }
    }

    /// The smallest value of positions `start..end` and its leftmost position.
    fn min_in(&self, start: usize, end: usize) -> Option<(K, usize)> {
        let (mut l, mut r) = (start + self.size, end + self.size);
        let (mut left, mut right) = (None, None);
        while l < r {
            if l & 1 == 1 {
                left = Self::pick(left, self.nodes[l]);
                l += 1;
            }
            if r & 1 == 1 {
                r -= 1;
                right = Self::pick(self.nodes[r], right);
            }
            l /= 2;
            r /= 2;
        }
        Self::pick(left, right)
    }

    /// The value at `position`, if it holds one.
    fn leaf(&self, position: usize) -> Option<K> {
        self.nodes[position + self.size].map(|(value, _)| value)
    }

    /// The leftmost smallest among positions `from..`, else among `..from`:
    /// the first minimum met scanning round-robin from `from`.
    fn min_from(&self, from: usize, len: usize) -> Option<(K, usize)> {
        Self::pick(self.min_in(from, len), self.min_in(0, from))
    }
}

/// The best candidate so far: its value, preference penalty, distance
/// from the round-robin cursor (distinct for distinct ranks) and rank.
type Best<K> = Option<(K, u8, usize, usize)>;

/// What a decision ranks candidates by: the value, then the preference
/// penalty, then the distance from the cursor.
fn better<K: PartialOrd>(key: (K, u8, usize), than: &Best<K>) -> bool {
    match than {
        None => true,
        Some((value, penalty, distance, _)) => {
            key.0 < *value
                || (key.0 == *value
                    && (key.1 < *penalty || (key.1 == *penalty && key.2 < *distance)))
        }
    }
}

/// The preferences that order candidates of equal load.
#[derive(Debug, Clone, Copy)]
struct Asked {
    /// No GPU asked: ranks with GPUs come after those without.
    cpu_only: bool,
    /// NIC-local ranks come first.
    nic_local: bool,
}

impl Asked {
    fn of(request: &Request<'_>, preferences: &Preferences<'_>) -> Self {
        Asked {
            cpu_only: request.resources.is_none_or(|need| need.gpus <= 0.0),
            nic_local: preferences.nic_local,
        }
    }

    /// 0 for a class that matches every preference; GPU avoidance weighs
    /// more than NIC locality.
    fn penalty(self, class: &CapacityClass) -> u8 {
        2 * u8::from(self.cpu_only && class.gpus) + u8::from(self.nic_local && !class.nic_local)
    }
}

/// Above this many argument locations, [`Scheduler::heaviest`] sorts
/// instead of scanning them once per location.
const MANY_ARGS: usize = 16;

/// Which count a decision minimizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Work {
    Task,
    Actor,
}

impl Scheduler {
    /// The policy over `ranks` (indexed by rank), its round-robin cursor
    /// at `first` (each submitter starts at another rank: its own + 1).
    pub fn new(ranks: Vec<RankSlot>, first: usize) -> Self {
        let next = if ranks.is_empty() {
            0
        } else {
            first % ranks.len()
        };
        let n = ranks.len();
        Self::build(ranks, vec![0; n], vec![false; n], next, 0)
    }

    /// The same policy, told which ranks have a NIC on their NUMA node
    /// (`local[r]` for rank `r`; missing entries are `false`).
    pub fn with_nic_local(self, local: &[bool]) -> Self {
        let nic_local = (0..self.ranks.len())
            .map(|r| local.get(r).copied().unwrap_or(false))
            .collect();
        Self::build(
            self.ranks,
            self.reported,
            nic_local,
            self.next,
            self.spread_next,
        )
    }

    fn build(
        ranks: Vec<RankSlot>,
        reported: Vec<u32>,
        nic_local: Vec<bool>,
        next: usize,
        spread_next: usize,
    ) -> Self {
        let mut classes: Vec<CapacityClass> = Vec::new();
        let mut by_key: HashMap<ClassKey, usize> = HashMap::new();
        let mut class_of = Vec::with_capacity(ranks.len());
        let mut nodes: HashMap<u32, Vec<usize>> = HashMap::new();
        for (rank, slot) in ranks.iter().enumerate() {
            let nic = nic_local[rank];
            let class = *by_key
                .entry(class_key(&slot.capacity, nic))
                .or_insert_with(|| {
                    classes.push(CapacityClass {
                        capacity: slot.capacity.clone(),
                        per_cpu: slot.capacity.cpus.max(1.0),
                        gpus: slot.capacity.gpus > 0.0,
                        nic_local: nic,
                        members: Vec::new(),
                        load: MinTree::new(0),
                        actors: MinTree::new(0),
                    });
                    classes.len() - 1
                });
            class_of.push((class, classes[class].members.len()));
            classes[class].members.push(rank);
            nodes.entry(slot.node).or_default().push(rank);
        }
        for class in &mut classes {
            class.load = MinTree::new(class.members.len());
            class.actors = MinTree::new(class.members.len());
        }
        let mut node_order: Vec<u32> = nodes.keys().copied().collect();
        node_order.sort_unstable();
        let mut node_at = vec![0; ranks.len()];
        let node_ranks: Vec<Vec<usize>> = node_order
            .iter()
            .enumerate()
            .map(|(at, node)| {
                let members = nodes.remove(node).unwrap_or_default();
                for &rank in &members {
                    node_at[rank] = at;
                }
                members
            })
            .collect();
        let mut scheduler = Scheduler {
            reporting: (0..ranks.len()).filter(|&r| reported[r] > 0).collect(),
            listed: reported.iter().map(|&q| q > 0).collect(),
            ranks,
            reported,
            next,
            spread_next: spread_next % node_order.len().max(1),
            node_order,
            node_ranks,
            node_at,
            classes,
            class_of,
        };
        for rank in 0..scheduler.ranks.len() {
            scheduler.refresh(rank);
        }
        scheduler
    }

    fn load_of(&self, rank: usize) -> f64 {
        let slot = &self.ranks[rank];
        f64::from(slot.outstanding.max(self.reported[rank])) / slot.capacity.cpus.max(1.0)
    }

    /// Rewrites `rank`'s leaves after its slot changed.
    fn refresh(&mut self, rank: usize) {
        self.refresh_load(rank);
        self.refresh_actors(rank);
    }

    /// Rewrites `rank`'s load leaf (its tasks or its report changed).
    fn refresh_load(&mut self, rank: usize) {
        let (class, position) = self.class_of[rank];
        let slot = &self.ranks[rank];
        let queued = slot.outstanding.max(self.reported[rank]);
        let class = &mut self.classes[class];
        let eligible = slot.alive && slot.serving;
        class.load.set(
            position,
            eligible.then(|| f64::from(queued) / class.per_cpu),
        );
    }

    /// Rewrites `rank`'s actor-count leaf (its actors changed).
    fn refresh_actors(&mut self, rank: usize) {
        let (class, position) = self.class_of[rank];
        let slot = &self.ranks[rank];
        let eligible = slot.alive && slot.serving;
        self.classes[class]
            .actors
            .set(position, eligible.then_some(slot.actors));
    }

    /// A candidate: alive, serving, on `node` (if any), fits the request.
    fn is_candidate(&self, rank: usize, request: &Request<'_>, node: Option<u32>) -> bool {
        let slot = &self.ranks[rank];
        slot.alive
            && slot.serving
            && node.is_none_or(|n| n == slot.node)
            && request
                .resources
                .is_none_or(|need| slot.capacity.fits(need))
    }

    /// The asked rank when the request names one (or why it cannot be).
    fn exact(&self, rank: Rank, request: &Request<'_>) -> Result<usize, Infeasible> {
        let slot = self.ranks.get(rank as usize).ok_or_else(|| {
            Infeasible(format!(
                "rank {rank} is not in this job of {} ranks",
                self.ranks.len()
            ))
        })?;
        if !slot.alive {
            return Err(Infeasible(format!("rank {rank} is dead")));
        }
        if let Some(need) = request.resources {
            if !slot.capacity.fits(need) {
                return Err(Infeasible(format!(
                    "rank {rank} offers {:?}, the request needs {need:?}",
                    slot.capacity
                )));
            }
        }
        Ok(rank as usize)
    }

    fn nothing_fits(request: &Request<'_>) -> Infeasible {
        let mut why = String::new();
        if let Some(node) = request.node {
            why.push_str(&format!("node {node}: "));
        }
        why.push_str(&match request.resources {
            Some(need) => format!("no live serving rank offers {need:?}"),
            None => "no live serving rank".to_string(),
        });
        Infeasible(why)
    }

    /// The node the candidates must be on: the hard one, else the soft one
    /// when it has a candidate.
    fn node_for(&self, request: &Request<'_>, preferences: &Preferences<'_>) -> Option<u32> {
        if request.node.is_some() {
            return request.node;
        }
        match preferences.strategy {
            SchedulingStrategy::PreferNode(node)
                if self.node_index(node).is_some_and(|at| {
                    self.node_ranks[at]
                        .iter()
                        .any(|&r| self.is_candidate(r, request, None))
                }) =>
            {
                Some(node)
            }
            _ => None,
        }
    }

    /// `node`'s index in `node_order`.
    fn node_index(&self, node: u32) -> Option<usize> {
        self.node_order.binary_search(&node).ok()
    }

    /// How far after the round-robin cursor `rank` is (no division: this
    /// runs for every rank a node scan looks at).
    fn distance(&self, rank: usize) -> usize {
        if rank >= self.next {
            rank - self.next
        } else {
            rank + self.ranks.len() - self.next
        }
    }

    /// The best candidate of the node at `at` in `node_order` (value, then
    /// preference, then cursor).
    fn best_on_node(
        &self,
        at: usize,
        request: &Request<'_>,
        asked: Asked,
        work: Work,
    ) -> Option<(f64, usize)> {
        let mut best: Best<f64> = None;
        // Fit is asked once per class; a leaf holds a value exactly when
        // its rank is alive and serving (the trees' invariant).
        let mut fit: Option<(usize, bool)> = None;
        for &rank in &self.node_ranks[at] {
            let (index, position) = self.class_of[rank];
            let class = &self.classes[index];
            let fits = match fit {
                Some((known, fits)) if known == index => fits,
                _ => {
                    let fits = request
                        .resources
                        .is_none_or(|need| class.capacity.fits(need));
                    fit = Some((index, fits));
                    fits
                }
            };
            if !fits {
                continue;
            }
            let value = match work {
                Work::Task => class.load.leaf(position),
                Work::Actor => class.actors.leaf(position).map(f64::from),
            };
            let Some(value) = value else {
                continue;
            };
            let key = (value, asked.penalty(class), self.distance(rank));
            if better(key, &best) {
                best = Some((key.0, key.1, key.2, rank));
            }
        }
        best.map(|(value, _, _, rank)| (value, rank))
    }

    /// The best candidate of the job, from the classes' trees.
    fn best_anywhere<K: Copy + PartialOrd>(
        &self,
        request: &Request<'_>,
        asked: Asked,
        tree: impl Fn(&CapacityClass) -> &MinTree<K>,
    ) -> Option<(K, usize)> {
        let mut best: Best<K> = None;
        for class in &self.classes {
            if request
                .resources
                .is_some_and(|need| !class.capacity.fits(need))
            {
                continue;
            }
            let from = class.members.partition_point(|&r| r < self.next);
            let Some((found, position)) = tree(class).min_from(from, class.members.len()) else {
                continue;
            };
            let rank = class.members[position];
            let key = (found, asked.penalty(class), self.distance(rank));
            if better(key, &best) {
                best = Some((key.0, key.1, key.2, rank));
            }
        }
        best.map(|(found, _, _, rank)| (found, rank))
    }

    /// The best candidate within `node` (any node when `None`), with its value.
    fn best(
        &self,
        request: &Request<'_>,
        node: Option<u32>,
        asked: Asked,
        work: Work,
    ) -> Option<(f64, usize)> {
        match (node, work) {
            (Some(node), _) => {
                let at = self.node_index(node)?;
                self.best_on_node(at, request, asked, work)
            }
            (None, Work::Task) => self.best_anywhere(request, asked, |c| &c.load),
            (None, Work::Actor) => self
                .best_anywhere(request, asked, |c| &c.actors)
                .map(|(actors, rank)| (f64::from(actors), rank)),
        }
    }

    /// SPREAD: the best candidate of the first node from the cursor that
    /// has one (only `within` when given); moves the cursor past it.
    fn spread(
        &mut self,
        request: &Request<'_>,
        within: Option<u32>,
        asked: Asked,
        work: Work,
    ) -> Option<usize> {
        let count = self.node_order.len();
        for step in 0..count {
            let at = (self.spread_next + step) % count;
            if within.is_some_and(|w| w != self.node_order[at]) {
                continue;
            }
            if let Some((_, rank)) = self.best_on_node(at, request, asked, work) {
                self.spread_next = (at + 1) % count;
                return Some(rank);
            }
        }
        None
    }

    /// The node holding the most argument bytes (its index in
    /// `node_order`; ties: the lowest node), and its rank holding most of
    /// them (ties: the lowest rank). No allocation for a task's usual few
    /// arguments (sums by scanning them); a sort for many.
    fn heaviest(&self, args: &[(Rank, u64)]) -> Option<(usize, usize)> {
        let valid = |&(rank, bytes): &(Rank, u64)| bytes > 0 && (rank as usize) < self.ranks.len();
        if let [one] = args {
            return valid(one).then(|| (self.node_at[one.0 as usize], one.0 as usize));
        }
        if args.len() > MANY_ARGS {
            return self.heaviest_sorted(args);
        }
        let node_of = |e: &(Rank, u64)| self.node_at[e.0 as usize];
        // The largest sum of `key`'s groups (ties: the smallest key).
        let most = |key: &dyn Fn(&(Rank, u64)) -> Option<usize>| {
            let mut best: Option<(u64, usize)> = None;
            for (i, entry) in args.iter().enumerate() {
                let Some(k) = key(entry) else {
                    continue;
                };
                if args[..i].iter().any(|e| key(e) == Some(k)) {
                    continue;
                }
                let sum = args[i..]
                    .iter()
                    .filter(|e| key(e) == Some(k))
                    .fold(0u64, |sum, e| sum.saturating_add(e.1));
                if best.is_none_or(|(b, at)| sum > b || (sum == b && k < at)) {
                    best = Some((sum, k));
                }
            }
            best.map(|(_, k)| k)
        };
        let node = most(&|e| valid(e).then(|| node_of(e)))?;
        let holder = most(&|e| (valid(e) && node_of(e) == node).then_some(e.0 as usize))?;
        Some((node, holder))
    }

    /// [`Scheduler::heaviest`] for many arguments: sums over sorted runs.
    fn heaviest_sorted(&self, args: &[(Rank, u64)]) -> Option<(usize, usize)> {
        let mut entries: Vec<(usize, usize, u64)> = args
            .iter()
            .filter(|&&(rank, bytes)| bytes > 0 && (rank as usize) < self.ranks.len())
            .map(|&(rank, bytes)| (self.node_at[rank as usize], rank as usize, bytes))
            .collect();
        entries.sort_unstable();
        // (bytes, node) of the heaviest node, then (bytes, rank) on it.
        let mut node: Option<(u64, usize)> = None;
        for run in entries.chunk_by(|a, b| a.0 == b.0) {
            let sum = run.iter().fold(0u64, |s, e| s.saturating_add(e.2));
            if node.is_none_or(|(b, _)| sum > b) {
                node = Some((sum, run[0].0));
            }
        }
        let (_, node) = node?;
        let mut holder: Option<(u64, usize)> = None;
        for run in entries
            .iter()
            .filter(|e| e.0 == node)
            .collect::<Vec<_>>()
            .chunk_by(|a, b| a.1 == b.1)
        {
            let sum = run.iter().fold(0u64, |s, e| s.saturating_add(e.2));
            if holder.is_none_or(|(b, _)| sum > b) {
                holder = Some((sum, run[0].1));
            }
        }
        holder.map(|(_, rank)| (node, rank))
    }

    /// Data locality: on the node holding most argument bytes, its least
    /// loaded candidate, or the rank holding most of them when it is not
    /// busier than that one; with its load.
    fn local(
        &self,
        request: &Request<'_>,
        preferences: &Preferences<'_>,
        within: Option<u32>,
        asked: Asked,
    ) -> Option<(usize, f64)> {
        let one;
        let args = if preferences.args.is_empty() {
            one = [(request.data_at?, 1)];
            &one[..]
        } else {
            preferences.args
        };
        let (at, holder) = self.heaviest(args)?;
        if within.is_some_and(|w| w != self.node_order[at]) {
            return None;
        }
        let holder_load = self
            .is_candidate(holder, request, None)
            .then(|| self.load_of(holder));
        if holder_load == Some(0.0) {
            // Idle: the least loaded of its node, whatever the others.
            return Some((holder, 0.0));
        }
        let (load, least_there) = self.best_on_node(at, request, asked, Work::Task)?;
        match holder_load {
            Some(own) if own <= load => Some((holder, own)),
            _ => Some((least_there, load)),
        }
    }

    fn choose(
        &mut self,
        request: &Request<'_>,
        preferences: &Preferences<'_>,
        work: Work,
    ) -> Result<usize, Infeasible> {
        if let Some(rank) = request.rank {
            // The only candidate; its data, if any, is there or elsewhere.
            return self.exact(rank, request);
        }
        let within = self.node_for(request, preferences);
        let asked = Asked::of(request, preferences);
        if preferences.strategy == SchedulingStrategy::Spread {
            return self
                .spread(request, within, asked, work)
                .ok_or_else(|| Self::nothing_fits(request));
        }
        let local = match work {
            Work::Task => self.local(request, preferences, within, asked),
            Work::Actor => None,
        };
        // Loads are never negative: a local choice within one task per CPU
        // of zero is within that of the least loaded candidate too, and the
        // search over every class is not needed.
        if let Some((choice, load)) = local {
            if load <= 1.0 {
                return Ok(choice);
            }
        }
        let (least, best) = self
            .best(request, within, asked, work)
            .ok_or_else(|| Self::nothing_fits(request))?;
        // Spill back when the data's node is overloaded next to the least
        // loaded candidate anywhere.
        Ok(match local {
            Some((choice, load)) if load <= least + 1.0 => choice,
            _ => best,
        })
    }

    /// Picks a rank for a task (default preferences) and counts it as
    /// outstanding there.
    pub fn place_task(&mut self, request: &Request<'_>) -> Result<Rank, Infeasible> {
        self.place_task_with(request, &Preferences::default())
    }

    /// Picks a rank for a task and counts it as outstanding there.
    pub fn place_task_with(
        &mut self,
        request: &Request<'_>,
        preferences: &Preferences<'_>,
    ) -> Result<Rank, Infeasible> {
        let best = self.choose(request, preferences, Work::Task)?;
        // Ties go to the rank used last: an idle rank that just ran a task
        // is still polling (its threads spin before they sleep), so a chain
        // of dependent calls stays on a warm rank; loaded ranks still spread.
        self.next = best;
        self.ranks[best].outstanding += 1;
        self.refresh_load(best);
        Ok(best as Rank)
    }

    /// Picks a rank for an actor (default preferences): the one with the
    /// fewest actors placed by us.
    pub fn place_actor(&mut self, request: &Request<'_>) -> Result<Rank, Infeasible> {
        self.place_actor_with(request, &Preferences::default())
    }

    /// Picks a rank for an actor: the one with the fewest actors placed by
    /// us, after the strategy and preferences (argument bytes are ignored:
    /// an actor outlives its constructor's arguments).
    pub fn place_actor_with(
        &mut self,
        request: &Request<'_>,
        preferences: &Preferences<'_>,
    ) -> Result<Rank, Infeasible> {
        let best = self.choose(request, preferences, Work::Actor)?;
        let n = self.ranks.len();
        self.next = (best + 1) % n.max(1);
        self.ranks[best].actors += 1;
        self.refresh_actors(best);
        Ok(best as Rank)
    }

    /// Tasks this submitter has outstanding on `rank`, and actors it
    /// placed there (to pick the least loaded bundle of a placement group).
    pub fn load(&self, rank: Rank) -> (u32, u32) {
        self.ranks
            .get(rank as usize)
            .map_or((0, 0), |slot| (slot.outstanding, slot.actors))
    }

    /// `rank` reported `queued` tasks waiting or running there (from every
    /// submitter): its load is at least that until it reports again or the
    /// report decays.
    pub fn reported(&mut self, rank: Rank, queued: u32) {
        let rank = rank as usize;
        if rank < self.ranks.len() && self.ranks[rank].alive {
            if queued > 0 && !self.listed[rank] {
                self.listed[rank] = true;
                self.reporting.push(rank);
            }
            self.reported[rank] = queued;
            self.refresh_load(rank);
        }
    }

    /// Halves every report (the caller's clock: called periodically), so
    /// a rank that was busy when it last answered, and is sent nothing
    /// since, is tried again: reports come only with answers.
    /// `O(k log n)` for `k` ranks with a report.
    pub fn decay_reports(&mut self) {
        let mut reporting = std::mem::take(&mut self.reporting);
        reporting.retain(|&rank| {
            let halved = self.reported[rank] / 2;
            if halved != self.reported[rank] {
                self.reported[rank] = halved;
                self.refresh_load(rank);
            }
            self.listed[rank] = halved > 0;
            halved > 0
        });
        self.reporting = reporting;
    }

    /// A task placed on `rank` finished (or was moved away).
    pub fn finished(&mut self, rank: Rank) {
        if let Some(slot) = self.ranks.get_mut(rank as usize) {
            slot.outstanding = slot.outstanding.saturating_sub(1);
            self.refresh_load(rank as usize);
        }
    }

    /// An actor placed on `rank` stopped (killed or out of handles).
    pub fn actor_gone(&mut self, rank: Rank) {
        if let Some(slot) = self.ranks.get_mut(rank as usize) {
            slot.actors = slot.actors.saturating_sub(1);
            self.refresh_actors(rank as usize);
        }
    }

    /// `rank` died: never placed on again.
    pub fn rank_died(&mut self, rank: Rank) {
        if let Some(slot) = self.ranks.get_mut(rank as usize) {
            slot.alive = false;
            slot.outstanding = 0;
            self.reported[rank as usize] = 0;
            self.refresh(rank as usize);
        }
    }
}

#[cfg(test)]
mod tests;
