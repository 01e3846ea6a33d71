//! The placement policy against a reference: the scan over every rank that
//! `Scheduler` was before it kept indexes, extended with the rules added
//! since (soft node affinity, SPREAD, locality by bytes per node with
//! spillback, reported queue lengths, GPU avoidance and NIC locality)
//! written as plain scans, decision for decision over random clusters and
//! random requests, completions, reports, actor exits and deaths.

use std::collections::BTreeMap;

use lumen_sched::{
    Infeasible, Preferences, Rank, RankSlot, Request, Resources, Scheduler, SchedulingStrategy,
};

/// The scheduler as a scan: candidates collected from every rank per call.
#[derive(Debug, Clone)]
struct ReferenceScheduler {
    ranks: Vec<RankSlot>,
    reported: Vec<u32>,
    nic_local: Vec<bool>,
    next: usize,
    /// SPREAD's cursor into the ascending list of nodes.
    spread_next: usize,
}

impl ReferenceScheduler {
    /// The policy over `ranks` (indexed by rank), its round-robin cursor
    /// at `first` (each submitter starts at another rank: its own + 1).
    fn new(ranks: Vec<RankSlot>, first: usize, nic_local: Vec<bool>) -> Self {
        let next = if ranks.is_empty() {
            0
        } else {
            first % ranks.len()
        };
        let reported = vec![0; ranks.len()];
        ReferenceScheduler {
            ranks,
            reported,
            nic_local,
            next,
            spread_next: 0,
        }
    }

    fn nodes(&self) -> Vec<u32> {
        let mut nodes: Vec<u32> = self.ranks.iter().map(|s| s.node).collect();
        nodes.sort_unstable();
        nodes.dedup();
        nodes
    }

    fn fits(&self, i: usize, request: &Request<'_>, node: Option<u32>) -> bool {
        let slot = &self.ranks[i];
        slot.alive
            && slot.serving
            && node.is_none_or(|n| n == slot.node)
            && request
                .resources
                .is_none_or(|need| slot.capacity.fits(need))
    }

    fn load(&self, i: usize) -> f64 {
        let slot = &self.ranks[i];
        f64::from(slot.outstanding.max(self.reported[i])) / slot.capacity.cpus.max(1.0)
    }

    fn penalty(&self, i: usize, request: &Request<'_>, preferences: &Preferences<'_>) -> u8 {
        let cpu_only = request.resources.is_none_or(|need| need.gpus <= 0.0);
        let gpus = self.ranks[i].capacity.gpus > 0.0;
        2 * u8::from(cpu_only && gpus) + u8::from(preferences.nic_local && !self.nic_local[i])
    }

    /// The exact rank, the candidates, or why there are none; the node the
    /// candidates are on.
    fn candidates(
        &self,
        request: &Request<'_>,
        preferences: &Preferences<'_>,
    ) -> Result<(Vec<usize>, Option<u32>), Infeasible> {
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
            return Ok((vec![rank as usize], None));
        }
        let mut node = request.node;
        if node.is_none() {
            if let SchedulingStrategy::PreferNode(soft) = preferences.strategy {
                if (0..self.ranks.len()).any(|i| self.fits(i, request, Some(soft))) {
                    node = Some(soft);
                }
            }
        }
        let list: Vec<usize> = (0..self.ranks.len())
            .filter(|&i| self.fits(i, request, node))
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
        Ok((list, node))
    }

    /// The smallest (value, penalty, distance from the cursor) of `list`.
    fn smallest(
        &self,
        list: &[usize],
        value: impl Fn(usize) -> f64,
        request: &Request<'_>,
        preferences: &Preferences<'_>,
    ) -> Option<usize> {
        let n = self.ranks.len();
        let key = |i: usize| {
            (
                value(i),
                self.penalty(i, request, preferences),
                (i + n - self.next) % n,
            )
        };
        let mut best: Option<usize> = None;
        for &i in list {
            let better = match best {
                None => true,
                Some(b) => {
                    let (k, kb) = (key(i), key(b));
                    k.0 < kb.0 || (k.0 == kb.0 && (k.1, k.2) < (kb.1, kb.2))
                }
            };
            if better {
                best = Some(i);
            }
        }
        best
    }

    /// SPREAD: the first node from the cursor with a candidate.
    fn spread(
        &mut self,
        list: &[usize],
        value: impl Fn(&Self, usize) -> f64,
        request: &Request<'_>,
        preferences: &Preferences<'_>,
    ) -> usize {
        let nodes = self.nodes();
        for step in 0..nodes.len() {
            let at = (self.spread_next + step) % nodes.len();
            let there: Vec<usize> = list
                .iter()
                .copied()
                .filter(|&i| self.ranks[i].node == nodes[at])
                .collect();
            if let Some(best) = self.smallest(&there, |i| value(self, i), request, preferences) {
                self.spread_next = (at + 1) % nodes.len();
                return best;
            }
        }
        unreachable!("the list has a candidate")
    }

    fn choose_task(
        &mut self,
        request: &Request<'_>,
        preferences: &Preferences<'_>,
    ) -> Result<usize, Infeasible> {
        let (list, node) = self.candidates(request, preferences)?;
        if request.rank.is_some() {
            return Ok(list[0]);
        }
        if preferences.strategy == SchedulingStrategy::Spread {
            return Ok(self.spread(&list, Self::load, request, preferences));
        }
        let least = self
            .smallest(&list, |i| self.load(i), request, preferences)
            .expect("candidates");
        let args: Vec<(Rank, u64)> = if preferences.args.is_empty() {
            request.data_at.map(|at| (at, 1)).into_iter().collect()
        } else {
            preferences.args.to_vec()
        };
        // Bytes per node and per rank, of ranks in the job.
        let mut per_node: BTreeMap<u32, u64> = BTreeMap::new();
        let mut per_rank: BTreeMap<usize, u64> = BTreeMap::new();
        for &(rank, bytes) in &args {
            if let Some(slot) = self.ranks.get(rank as usize) {
                if bytes > 0 {
                    *per_node.entry(slot.node).or_insert(0) += bytes;
                    *per_rank.entry(rank as usize).or_insert(0) += bytes;
                }
            }
        }
        // Most bytes; ties to the lowest node (the first in the map).
        let heaviest = per_node
            .iter()
            .fold(None::<(u32, u64)>, |best, (&n, &b)| match best {
                Some((_, most)) if most >= b => best,
                _ => Some((n, b)),
            });
        if let Some((data_node, _)) = heaviest {
            if node.is_none_or(|n| n == data_node) {
                let there: Vec<usize> = list
                    .iter()
                    .copied()
                    .filter(|&i| self.ranks[i].node == data_node)
                    .collect();
                if let Some(on_node) = self.smallest(&there, |i| self.load(i), request, preferences)
                {
                    let holder = per_rank
                        .iter()
                        .filter(|(&r, _)| self.ranks[r].node == data_node)
                        .fold(None::<(usize, u64)>, |best, (&r, &b)| match best {
                            Some((_, most)) if most >= b => best,
                            _ => Some((r, b)),
                        })
                        .map(|(r, _)| r);
                    let choice = match holder {
                        Some(h) if there.contains(&h) && self.load(h) <= self.load(on_node) => h,
                        _ => on_node,
                    };
                    if self.load(choice) <= self.load(least) + 1.0 {
                        return Ok(choice);
                    }
                }
            }
        }
        Ok(least)
    }

    /// Picks a rank for a task and counts it as outstanding there.
    fn place_task(
        &mut self,
        request: &Request<'_>,
        preferences: &Preferences<'_>,
    ) -> Result<Rank, Infeasible> {
        let best = self.choose_task(request, preferences)?;
        self.next = best;
        self.ranks[best].outstanding += 1;
        Ok(best as Rank)
    }

    /// Picks a rank for an actor: the one with the fewest actors placed by us.
    fn place_actor(
        &mut self,
        request: &Request<'_>,
        preferences: &Preferences<'_>,
    ) -> Result<Rank, Infeasible> {
        let (list, _) = self.candidates(request, preferences)?;
        let actors = |s: &Self, i: usize| f64::from(s.ranks[i].actors);
        let best = if request.rank.is_some() {
            list[0]
        } else if preferences.strategy == SchedulingStrategy::Spread {
            self.spread(&list, actors, request, preferences)
        } else {
            self.smallest(&list, |i| actors(self, i), request, preferences)
                .expect("candidates")
        };
        let n = self.ranks.len();
        self.next = (best + 1) % n.max(1);
        self.ranks[best].actors += 1;
        Ok(best as Rank)
    }

    /// Tasks this submitter has outstanding on `rank`, and actors it
    /// placed there (to pick the least loaded bundle of a placement group).
    fn load_of(&self, rank: Rank) -> (u32, u32) {
        self.ranks
            .get(rank as usize)
            .map_or((0, 0), |slot| (slot.outstanding, slot.actors))
    }

    fn reported(&mut self, rank: Rank, queued: u32) {
        if self.ranks.get(rank as usize).is_some_and(|s| s.alive) {
            self.reported[rank as usize] = queued;
        }
    }

    fn decay_reports(&mut self) {
        for queued in &mut self.reported {
            *queued /= 2;
        }
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
            self.reported[rank as usize] = 0;
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

/// Random preferences: a strategy, argument bytes on random ranks (some
/// outside the job, some empty), NIC locality.
fn preferences<'a>(
    stream: &mut Stream,
    ranks: usize,
    nodes: u32,
    args: &'a mut Vec<(Rank, u64)>,
) -> Preferences<'a> {
    args.clear();
    if stream.chance(40) {
        // Mostly a few arguments; sometimes many (the scheduler sorts those).
        let count = if stream.chance(10) {
            17 + stream.below(24)
        } else {
            1 + stream.below(4)
        };
        for _ in 0..count {
            let bytes = [0, 1, 64, 1 << 20, 64 << 20][stream.below(5)];
            args.push((stream.below(ranks + 1) as Rank, bytes));
        }
    }
    let strategy = match stream.below(10) {
        0..=5 => SchedulingStrategy::Default,
        6..=7 => SchedulingStrategy::Spread,
        _ => SchedulingStrategy::PreferNode(stream.below(nodes as usize + 1) as u32),
    };
    Preferences {
        strategy,
        args,
        nic_local: stream.chance(30),
    }
}

#[test]
fn indexed_policy_decides_as_the_scan_over_every_rank() {
    let mut stream = Stream(11);
    let mut decisions = 0;
    let mut args = Vec::new();
    for cluster_seed in 0..300 {
        let slots = cluster(&mut stream);
        let ranks = slots.len();
        let nic: Vec<bool> = (0..ranks).map(|_| stream.chance(40)).collect();
        let first = stream.below(2 * ranks);
        let mut fast = Scheduler::new(slots.clone(), first);
        // Told which ranks are NIC-local, or not (then none is).
        let nic = if stream.chance(70) {
            fast = fast.with_nic_local(&nic);
            nic
        } else {
            vec![false; ranks]
        };
        let mut slow = ReferenceScheduler::new(slots, first, nic);
        let mut placed: Vec<Rank> = Vec::new();
        for step in 0..200 {
            let resources = need(&mut stream);
            let request = Request {
                resources: (!stream.chance(20)).then_some(&resources),
                node: stream.chance(20).then(|| stream.below(7) as u32),
                rank: stream.chance(10).then(|| stream.below(ranks + 1) as Rank),
                data_at: stream.chance(50).then(|| stream.below(ranks + 1) as Rank),
            };
            let prefs = preferences(&mut stream, ranks, 6, &mut args);
            let what = format!("cluster {cluster_seed}, {request:?}, {prefs:?}");
            match stream.below(12) {
                0..=4 => {
                    let got = same(
                        step,
                        &what,
                        fast.place_task_with(&request, &prefs),
                        slow.place_task(&request, &prefs),
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
                        fast.place_actor_with(&request, &prefs),
                        slow.place_actor(&request, &prefs),
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
                9..=10 => {
                    let rank = stream.below(ranks + 1) as Rank;
                    let queued = [0, 1, 3, 8, 40][stream.below(5)];
                    fast.reported(rank, queued);
                    slow.reported(rank, queued);
                    if stream.chance(30) {
                        fast.decay_reports();
                        slow.decay_reports();
                    }
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
                assert_eq!(fast.load(rank), slow.load_of(rank), "step {step}: {what}");
            }
        }
    }
    assert!(decisions > 30_000, "{decisions}");
}

#[test]
fn indexed_policy_decides_as_the_scan_on_a_large_uniform_cluster() {
    // The benchmark's shape: many ranks of one capacity, long runs of ties;
    // a few ranks without GPUs and some NIC-local ones.
    let slots: Vec<RankSlot> = (0..1024)
        .map(|r| RankSlot {
            node: r / 8,
            capacity: Resources {
                cpus: 8.0,
                gpus: if r % 97 == 5 { 0.0 } else { 1.0 },
                custom: BTreeMap::new(),
            },
            serving: r != 0,
            alive: true,
            outstanding: 0,
            actors: 0,
        })
        .collect();
    let nic: Vec<bool> = (0..1024).map(|r| r % 4 == 0).collect();
    let mut fast = Scheduler::new(slots.clone(), 1).with_nic_local(&nic);
    let mut slow = ReferenceScheduler::new(slots, 1, nic);
    let mut stream = Stream(7);
    let need = Resources::cpus(1.0);
    let mut args = Vec::new();
    let mut placed = std::collections::VecDeque::new();
    for step in 0..20_000 {
        let request = Request {
            resources: Some(&need),
            node: stream.chance(5).then(|| stream.below(128) as u32),
            rank: None,
            data_at: stream.chance(50).then(|| stream.below(1024) as Rank),
        };
        let prefs = if stream.chance(30) {
            preferences(&mut stream, 1024, 128, &mut args)
        } else {
            Preferences::default()
        };
        let got = if stream.chance(20) {
            same(
                step,
                "actor",
                fast.place_actor_with(&request, &prefs),
                slow.place_actor(&request, &prefs),
            )
        } else {
            same(
                step,
                "task",
                fast.place_task_with(&request, &prefs),
                slow.place_task(&request, &prefs),
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
        if stream.chance(5) {
            let rank = stream.below(1024) as Rank;
            let queued = stream.below(30) as u32;
            fast.reported(rank, queued);
            slow.reported(rank, queued);
        }
        if stream.chance(1) {
            fast.decay_reports();
            slow.decay_reports();
        }
        if stream.chance(1) {
            let rank = stream.below(1024) as Rank;
            fast.rank_died(rank);
            slow.rank_died(rank);
        }
    }
}
