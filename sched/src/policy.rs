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
        Scheduler { ranks, next }
    }

    fn candidates(&self, request: &Request<'_>) -> Result<Vec<usize>, Infeasible> {
        if let Some(rank) = request.rank {
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
            return Ok(vec![rank as usize]);
        }
        let list: Vec<usize> = (0..self.ranks.len())
            .filter(|&i| {
                let slot = &self.ranks[i];
                slot.alive
                    && slot.serving
                    && request.node.is_none_or(|n| n == slot.node)
                    && request
                        .resources
                        .is_none_or(|need| slot.capacity.fits(need))
            })
            .collect();
        if list.is_empty() {
            let mut why = String::new();
            if let Some(node) = request.node {
                why.push_str(&format!("node {node}: "));
            }
            why.push_str(&match request.resources {
                Some(need) => format!("no live serving rank offers {need:?}"),
                None => "no live serving rank".to_string(),
            });
            return Err(Infeasible(why));
        }
        Ok(list)
    }

    /// Picks a rank for a task and counts it as outstanding there.
    pub fn place_task(&mut self, request: &Request<'_>) -> Result<Rank, Infeasible> {
        let list = self.candidates(request)?;
        let load = |i: usize| {
            let slot = &self.ranks[i];
            f64::from(slot.outstanding) / slot.capacity.cpus.max(1.0)
        };
        let n = self.ranks.len();
        // Least loaded, scanning from the round-robin cursor.
        let mut best = list[0];
        let mut best_key = (f64::INFINITY, usize::MAX);
        for &i in &list {
            let key = (load(i), (i + n - self.next) % n);
            if key.0 < best_key.0 || (key.0 == best_key.0 && key.1 < best_key.1) {
                best = i;
                best_key = key;
            }
        }
        if let Some(at) = request.data_at.map(|r| r as usize) {
            if list.contains(&at) && load(at) <= best_key.0 + 1.0 {
                best = at;
            }
        }
        // Ties go to the rank used last: an idle rank that just ran a task
        // is still polling (its threads spin before they sleep), so a chain
        // of dependent calls stays on a warm rank; loaded ranks still spread.
        self.next = best;
        self.ranks[best].outstanding += 1;
        Ok(best as Rank)
    }

    /// Picks a rank for an actor: the one with the fewest actors placed by us.
    pub fn place_actor(&mut self, request: &Request<'_>) -> Result<Rank, Infeasible> {
        let list = self.candidates(request)?;
        let n = self.ranks.len();
        let best = list
            .iter()
            .copied()
            .min_by_key(|&i| (self.ranks[i].actors, (i + n - self.next) % n))
            .unwrap_or(list[0]);
        self.next = (best + 1) % n.max(1);
        self.ranks[best].actors += 1;
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
        }
    }

    /// An actor placed on `rank` stopped (killed or out of handles).
    pub fn actor_gone(&mut self, rank: Rank) {
        if let Some(slot) = self.ranks.get_mut(rank as usize) {
            slot.actors = slot.actors.saturating_sub(1);
        }
    }

    /// `rank` died: never placed on again.
    pub fn rank_died(&mut self, rank: Rank) {
        if let Some(slot) = self.ranks.get_mut(rank as usize) {
            slot.alive = false;
            slot.outstanding = 0;
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
