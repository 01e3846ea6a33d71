//! The placement policy against a reference: the scan over every rank that
//! `Scheduler` was before it kept indexes (its code, verbatim), decision
//! for decision over random clusters and random requests, completions,
//! actor exits and deaths.

use std::collections::BTreeMap;

use lumen_sched::{Infeasible, Rank, RankSlot, Request, Resources, Scheduler};

/// The scheduler as it was: candidates collected from every rank per call.
#[derive(Debug, Clone)]
struct ReferenceScheduler {
    ranks: Vec<RankSlot>,
    next: usize,
}

impl ReferenceScheduler {
    /// The policy over `ranks` (indexed by rank), its round-robin cursor
    /// at `first` (each submitter starts at another rank: its own + 1).
    fn new(ranks: Vec<RankSlot>, first: usize) -> Self {
        let next = if ranks.is_empty() {
            0
        } else {
            first % ranks.len()
        };
        ReferenceScheduler { ranks, next }
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
    fn place_task(&mut self, request: &Request<'_>) -> Result<Rank, Infeasible> {
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
    fn place_actor(&mut self, request: &Request<'_>) -> Result<Rank, Infeasible> {
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
    #[allow(dead_code)]
    fn load(&self, rank: Rank) -> (u32, u32) {
        self.ranks
            .get(rank as usize)
            .map_or((0, 0), |slot| (slot.outstanding, slot.actors))
    }

    /// A task placed on `rank` finished (or was moved away).
    fn finished(&mut self, rank: Rank) {
        if let Some(slot) = self.ranks.get_mut(rank as usize) {
            slot.outstanding = slot.outstanding.saturating_sub(1);
        }
    }

    /// An actor placed on `rank` stopped (killed or out of handles).
    fn actor_gone(&mut self, rank: Rank) {
        if let Some(slot) = self.ranks.get_mut(rank as usize) {
            slot.actors = slot.actors.saturating_sub(1);
        }
    }

    /// `rank` died: never placed on again.
    fn rank_died(&mut self, rank: Rank) {
        if let Some(slot) = self.ranks.get_mut(rank as usize) {
            slot.alive = false;
            slot.outstanding = 0;
        }
    }
}

/// splitmix64: deterministic and dependency-free.
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

    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }
}

/// A few capacity shapes, so ranks share classes and some requests fit
/// only some of them (fractional and below-one CPUs included).
fn capacity(stream: &mut Stream) -> Resources {
    let cpus = [0.5, 1.0, 2.0, 8.0, 3.0][stream.below(5)];
    let gpus = [0.0, 1.0, 2.0][stream.below(3)];
    let mut custom = BTreeMap::new();
    if stream.chance(30) {
        custom.insert("ssd".to_string(), [1.0, 2.0][stream.below(2)]);
    }
    Resources { cpus, gpus, custom }
}

fn need(stream: &mut Stream) -> Resources {
    let cpus = [0.0, 0.5, 1.0, 2.0, 4.0][stream.below(5)];
    let gpus = [0.0, 0.0, 0.5, 1.0, 3.0][stream.below(5)];
    let mut custom = BTreeMap::new();
    if stream.chance(15) {
        custom.insert("ssd".to_string(), 1.0);
    }
    Resources { cpus, gpus, custom }
}

fn cluster(stream: &mut Stream) -> Vec<RankSlot> {
    let ranks = 1 + stream.below(40);
    let nodes = 1 + stream.below(6) as u32;
    let driver = stream.chance(50);
    (0..ranks)
        .map(|r| RankSlot {
            node: stream.below(nodes as usize) as u32,
            capacity: capacity(stream),
            serving: !(stream.chance(5) || driver && r == 0),
            alive: !stream.chance(5),
            outstanding: stream.below(3) as u32,
            actors: stream.below(2) as u32,
        })
        .collect()
}

fn same(
    step: usize,
    what: &str,
    fast: Result<Rank, Infeasible>,
    slow: Result<Rank, Infeasible>,
) -> Result<Rank, Infeasible> {
    assert_eq!(fast, slow, "step {step}: {what}");
    fast
}

#[test]
fn indexed_policy_decides_as_the_scan_over_every_rank() {
    let mut stream = Stream(11);
    let mut decisions = 0;
    for cluster_seed in 0..300 {
        let slots = cluster(&mut stream);
        let ranks = slots.len();
        let first = stream.below(2 * ranks);
        let mut fast = Scheduler::new(slots.clone(), first);
        let mut slow = ReferenceScheduler::new(slots, first);
        let mut placed: Vec<Rank> = Vec::new();
        for step in 0..200 {
            let resources = need(&mut stream);
            let request = Request {
                resources: (!stream.chance(20)).then_some(&resources),
                node: stream.chance(20).then(|| stream.below(7) as u32),
                rank: stream.chance(10).then(|| stream.below(ranks + 1) as Rank),
                data_at: stream.chance(50).then(|| stream.below(ranks + 1) as Rank),
            };
            let what = format!("cluster {cluster_seed}, {request:?}");
            match stream.below(10) {
                0..=4 => {
                    let got = same(
                        step,
                        &what,
                        fast.place_task(&request),
                        slow.place_task(&request),
                    );
                    if let Ok(rank) = got {
                        placed.push(rank);
                    }
                    decisions += 1;
                }
                5..=6 => {
                    same(
                        step,
                        &what,
                        fast.place_actor(&request),
                        slow.place_actor(&request),
                    )
                    .ok();
                    decisions += 1;
                }
                7 => {
                    if !placed.is_empty() {
                        let rank = placed.swap_remove(stream.below(placed.len()));
                        fast.finished(rank);
                        slow.finished(rank);
                    }
                }
                8 => {
                    let rank = stream.below(ranks + 1) as Rank;
                    fast.actor_gone(rank);
                    slow.actor_gone(rank);
                }
                _ => {
                    if stream.chance(20) {
                        let rank = stream.below(ranks + 1) as Rank;
                        fast.rank_died(rank);
                        slow.rank_died(rank);
                    }
                }
            }
            for rank in 0..=ranks as Rank {
                assert_eq!(fast.load(rank), slow.load(rank), "step {step}: {what}");
            }
        }
    }
    assert!(decisions > 30_000, "{decisions}");
}

#[test]
fn indexed_policy_decides_as_the_scan_on_a_large_uniform_cluster() {
    // The benchmark's shape: many ranks of one capacity, long runs of ties.
    let slots: Vec<RankSlot> = (0..1024)
        .map(|r| RankSlot {
            node: r / 8,
            capacity: Resources {
                cpus: 8.0,
                gpus: 1.0,
                custom: BTreeMap::new(),
            },
            serving: r != 0,
            alive: true,
            outstanding: 0,
            actors: 0,
        })
        .collect();
    let mut fast = Scheduler::new(slots.clone(), 1);
    let mut slow = ReferenceScheduler::new(slots, 1);
    let mut stream = Stream(7);
    let need = Resources::cpus(1.0);
    let mut placed = std::collections::VecDeque::new();
    for step in 0..20_000 {
        let request = Request {
            resources: Some(&need),
            node: stream.chance(5).then(|| stream.below(128) as u32),
            rank: None,
            data_at: stream.chance(50).then(|| stream.below(1024) as Rank),
        };
        let got = if stream.chance(20) {
            same(
                step,
                "actor",
                fast.place_actor(&request),
                slow.place_actor(&request),
            )
        } else {
            same(
                step,
                "task",
                fast.place_task(&request),
                slow.place_task(&request),
            )
        };
        if let Ok(rank) = got {
            placed.push_back(rank);
        }
        if placed.len() > 3000 || stream.chance(10) {
            if let Some(rank) = placed.pop_front() {
                fast.finished(rank);
                slow.finished(rank);
                fast.actor_gone(rank);
                slow.actor_gone(rank);
            }
        }
        if stream.chance(1) {
            let rank = stream.below(1024) as Rank;
            fast.rank_died(rank);
            slow.rank_died(rank);
        }
    }
}
