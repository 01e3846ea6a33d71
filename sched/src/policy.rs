//! Placement policy: which rank runs a task or hosts an actor. Pure (no
//! IO); each submitting rank keeps its own instance and its own view of the
//! load it has placed (like Ray's owner-side lease requests, without a
//! central scheduler in the path of every task).
//!
//! Policy, in order:
//! 1. Candidates: alive, serving (in driver mode rank 0 only submits), whose
//!    *total* resources fit the request, on the asked node / the asked rank.
//!    None: the request is infeasible (an error, not a hang).
//! 2. Data locality: a candidate holding the largest argument is taken when
//!    it is not busier than the least-loaded candidate by more than its CPUs.
//! 3. Otherwise the least loaded (tasks this submitter has outstanding there,
//!    per CPU); ties go to the rank used last (still warm: its threads spin
//!    before sleeping), then round-robin.
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
//! *capacity classes* (ranks whose capacity is bit for bit the same):
//! feasibility is asked once per class, not once per rank. Each class
//! keeps two segment trees over its ranks (in rank order), one holding
//! each live serving rank's load and one its actor count, each node the
//! minimum of its range and the leftmost rank holding it. "Least loaded,
//! first from the round-robin cursor" is then the leftmost minimum of the
//! ranks at or after the cursor, else of those before it: two range
//! queries per class, `O(log n)`, and one leaf update per decision or
//! completion. Node affinity scans only that node's ranks. The choice is
//! exactly the one a scan over every rank would make (a randomized test,
//! `tests/placement_policy.rs`, checks it against such a scan).
//!
//! # Invariants
//! - A tree leaf holds a value exactly when its rank is alive and serving,
//!   and the value is the one the scan computes (`outstanding / max(cpus,
//!   1)` or `actors`); every change to a slot refreshes its leaf.

use std::collections::HashMap;

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

/// A placement request.
#[derive(Debug, Clone, Default)]
pub struct Request<'a> {
    /// What the task or actor needs (`None`: anything goes).
    pub resources: Option<&'a Resources>,
    /// Only ranks of this node (node affinity).
    pub node: Option<u32>,
    /// Exactly this rank.
    pub rank: Option<Rank>,
    /// Rank holding the largest argument, if any.
    pub data_at: Option<Rank>,
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
    next: usize,
    /// Ranks grouped by capacity (see the module docs).
    classes: Vec<CapacityClass>,
    /// Rank `r`'s class and its position in the class.
    class_of: Vec<(usize, usize)>,
    /// Each node's ranks, ascending.
    nodes: HashMap<u32, Vec<usize>>,
}

/// Ranks of one capacity, and their loads and actor counts as trees.
#[derive(Debug, Clone)]
struct CapacityClass {
    capacity: Resources,
    /// `capacity.cpus.max(1.0)`: what a rank's load is divided by.
    per_cpu: f64,
    /// The class's ranks, ascending.
    members: Vec<usize>,
    /// Load of each live serving member.
    load: MinTree<f64>,
    /// Actors on each live serving member.
    actors: MinTree<u32>,
}

/// A bit-exact key of a capacity, to group ranks into classes.
type CapacityKey = (u64, u64, Vec<(String, u64)>);

fn capacity_key(capacity: &Resources) -> CapacityKey {
    (
        capacity.cpus.to_bits(),
        capacity.gpus.to_bits(),
        capacity
            .custom
            .iter()
            .map(|(name, amount)| (name.clone(), amount.to_bits()))
            .collect(),
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

impl<K: Copy + PartialOrd> MinTree<K> {
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

    fn set(&mut self, position: usize, value: Option<K>) {
        let mut i = position + self.size;
        self.nodes[i] = value.map(|v| (v, position));
        while i > 1 {
            i /= 2;
            self.nodes[i] = Self::pick(self.nodes[2 * i], self.nodes[2 * i + 1]);
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

    /// The leftmost smallest among positions `from..`, else among `..from`:
    /// the first minimum met scanning round-robin from `from`.
    fn min_from(&self, from: usize, len: usize) -> Option<(K, usize)> {
        Self::pick(self.min_in(from, len), self.min_in(0, from))
    }
}

/// What a decision ranks candidates by: the value, then the distance
/// from the round-robin cursor (distinct for distinct ranks).
fn better<K: PartialOrd>(key: (K, usize), than: &Option<(K, usize, usize)>) -> bool {
    match than {
        None => true,
        Some((value, distance, _)) => key.0 < *value || (key.0 == *value && key.1 < *distance),
    }
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
        let mut classes: Vec<CapacityClass> = Vec::new();
        let mut by_key: HashMap<CapacityKey, usize> = HashMap::new();
        let mut class_of = Vec::with_capacity(ranks.len());
        let mut nodes: HashMap<u32, Vec<usize>> = HashMap::new();
        for (rank, slot) in ranks.iter().enumerate() {
            let class = *by_key
                .entry(capacity_key(&slot.capacity))
                .or_insert_with(|| {
                    classes.push(CapacityClass {
                        capacity: slot.capacity.clone(),
                        per_cpu: slot.capacity.cpus.max(1.0),
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
        let mut scheduler = Scheduler {
            ranks,
            next,
            classes,
            class_of,
            nodes,
        };
        for rank in 0..scheduler.ranks.len() {
            scheduler.refresh(rank);
        }
        scheduler
    }

    fn load_of(&self, rank: usize) -> f64 {
        let slot = &self.ranks[rank];
        f64::from(slot.outstanding) / slot.capacity.cpus.max(1.0)
    }

    /// Rewrites `rank`'s leaves after its slot changed.
    fn refresh(&mut self, rank: usize) {
        let (class, position) = self.class_of[rank];
        let slot = &self.ranks[rank];
        let class = &mut self.classes[class];
        let eligible = slot.alive && slot.serving;
        class.load.set(
            position,
            eligible.then(|| f64::from(slot.outstanding) / class.per_cpu),
        );
        class.actors.set(position, eligible.then_some(slot.actors));
    }

    /// A candidate: alive, serving, on the asked node, fits the request.
    fn is_candidate(&self, rank: usize, request: &Request<'_>) -> bool {
        let slot = &self.ranks[rank];
        slot.alive
            && slot.serving
            && request.node.is_none_or(|n| n == slot.node)
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

    /// The candidate with the smallest `value` (then nearest the cursor),
    /// with that value: from the node's ranks under node affinity, else
    /// from the classes' trees.
    fn smallest<K: Copy + PartialOrd>(
        &self,
        request: &Request<'_>,
        value: impl Fn(usize) -> K,
        tree: impl Fn(&CapacityClass) -> &MinTree<K>,
    ) -> Result<(K, usize), Infeasible> {
        let n = self.ranks.len();
        let mut best: Option<(K, usize, usize)> = None;
        if let Some(node) = request.node {
            for &rank in self.nodes.get(&node).map_or(&[][..], Vec::as_slice) {
                if !self.is_candidate(rank, request) {
                    continue;
                }
                let key = (value(rank), (rank + n - self.next) % n);
                if better(key, &best) {
                    best = Some((key.0, key.1, rank));
                }
            }
        } else {
            for class in &self.classes {
                if request
                    .resources
                    .is_some_and(|need| !class.capacity.fits(need))
                {
                    continue;
                }
                let from = class.members.partition_point(|&r| r < self.next);
                let Some((found, position)) = tree(class).min_from(from, class.members.len())
                else {
                    continue;
                };
                let rank = class.members[position];
                let key = (found, (rank + n - self.next) % n);
                if better(key, &best) {
                    best = Some((key.0, key.1, rank));
                }
            }
        }
        best.map(|(found, _, rank)| (found, rank))
            .ok_or_else(|| Self::nothing_fits(request))
    }

    /// Picks a rank for a task and counts it as outstanding there.
    pub fn place_task(&mut self, request: &Request<'_>) -> Result<Rank, Infeasible> {
        let best = match request.rank {
            // The only candidate; its data, if any, is there or elsewhere.
            Some(rank) => self.exact(rank, request)?,
            None => {
                let (least, mut best) = self.smallest(request, |r| self.load_of(r), |c| &c.load)?;
                if let Some(at) = request.data_at.map(|r| r as usize) {
                    if at < self.ranks.len()
                        && self.is_candidate(at, request)
                        && self.load_of(at) <= least + 1.0
                    {
                        best = at;
                    }
                }
                best
            }
        };
        // Ties go to the rank used last: an idle rank that just ran a task
        // is still polling (its threads spin before they sleep), so a chain
        // of dependent calls stays on a warm rank; loaded ranks still spread.
        self.next = best;
        self.ranks[best].outstanding += 1;
        self.refresh(best);
        Ok(best as Rank)
    }

    /// Picks a rank for an actor: the one with the fewest actors placed by us.
    pub fn place_actor(&mut self, request: &Request<'_>) -> Result<Rank, Infeasible> {
        let best = match request.rank {
            Some(rank) => self.exact(rank, request)?,
            None => {
                self.smallest(request, |r| self.ranks[r].actors, |c| &c.actors)?
                    .1
            }
        };
        let n = self.ranks.len();
        self.next = (best + 1) % n.max(1);
        self.ranks[best].actors += 1;
        self.refresh(best);
        Ok(best as Rank)
    }

    /// Tasks this submitter has outstanding on `rank`, and actors it
    /// placed there (to pick the least loaded bundle of a placement group).
    pub fn load(&self, rank: Rank) -> (u32, u32) {
        self.ranks
            .get(rank as usize)
            .map_or((0, 0), |slot| (slot.outstanding, slot.actors))
    }

    /// A task placed on `rank` finished (or was moved away).
    pub fn finished(&mut self, rank: Rank) {
        if let Some(slot) = self.ranks.get_mut(rank as usize) {
            slot.outstanding = slot.outstanding.saturating_sub(1);
            self.refresh(rank as usize);
        }
    }

    /// An actor placed on `rank` stopped (killed or out of handles).
    pub fn actor_gone(&mut self, rank: Rank) {
        if let Some(slot) = self.ranks.get_mut(rank as usize) {
            slot.actors = slot.actors.saturating_sub(1);
            self.refresh(rank as usize);
        }
    }

    /// `rank` died: never placed on again.
    pub fn rank_died(&mut self, rank: Rank) {
        if let Some(slot) = self.ranks.get_mut(rank as usize) {
            slot.alive = false;
            slot.outstanding = 0;
            self.refresh(rank as usize);
        }
    }
}

#[cfg(test)]
mod tests {
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
        assert_eq!(s.place_task(&request), Ok(2));
        assert_eq!(s.place_task(&request), Ok(2));
        // Rank 2 now has 2 outstanding, the others 0: more than one CPU busier.
        assert_ne!(s.place_task(&request), Ok(2));
    }

    #[test]
    fn actors_spread() {
        let mut s = Scheduler::new(slots(3, 1, true), 0);
        let a = s.place_actor(&Request::default()).expect("fits");
        let b = s.place_actor(&Request::default()).expect("fits");
        assert_ne!(a, b);
        assert!(a != 0 && b != 0);
    }
}
