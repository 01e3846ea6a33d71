//! The placement-group table and strategies against a reference: the
//! table and `place` as they were before they stopped copying every
//! host's resources per group (their code, verbatim but for the crate's
//! private helpers), plus the rescheduling of a created group's bundles
//! whose rank died, written plainly (a copy of the hosts with the
//! excluded nodes marked not serving, where the table filters in place),
//! step for step over random clusters and random sequences of create,
//! wait, reserved, remove and rank_died.

use std::collections::BTreeMap;

use lumen_sched::{
    place, Action, Host, PlacementGroupId, PlacementStrategy, PlacementTable, Rank, Resources,
};

mod reference;

use reference::{strategy, table};

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

fn resources(stream: &mut Stream, cpus: &[f64], gpus: &[f64], custom_percent: usize) -> Resources {
    let mut custom = BTreeMap::new();
    if stream.chance(custom_percent) {
        custom.insert("ssd".to_string(), [0.5, 1.0, 2.0][stream.below(3)]);
    }
    Resources {
        cpus: cpus[stream.below(cpus.len())],
        gpus: gpus[stream.below(gpus.len())],
        custom,
    }
}

/// A random cluster: nodes of a few ranks (not always in rank order),
/// capacities of a few shapes, a driver, some ranks not serving or dead.
fn cluster(stream: &mut Stream, max_ranks: usize, max_nodes: usize) -> Vec<Host> {
    let ranks = 1 + stream.below(max_ranks);
    let nodes = 1 + stream.below(max_nodes);
    let sorted = stream.chance(70);
    let driver = stream.chance(50);
    (0..ranks)
        .map(|r| {
            let capacity = resources(stream, &[0.0, 1.0, 2.0, 4.0, 8.0], &[0.0, 1.0, 2.0], 25);
            Host {
                node: if sorted {
                    (r * nodes / ranks) as u32
                } else {
                    stream.below(nodes) as u32
                },
                available: capacity.clone(),
                capacity,
                serving: !(stream.chance(5) || driver && r == 0),
                alive: !stream.chance(3),
            }
        })
        .collect()
}

fn bundles(stream: &mut Stream, most: usize) -> Vec<Resources> {
    let n = if stream.chance(3) {
        0
    } else {
        1 + stream.below(most)
    };
    (0..n)
        .map(|_| {
            if stream.chance(2) {
                Resources::default()
            } else {
                resources(
                    stream,
                    &[0.0, 0.5, 1.0, 2.0, 3.0],
                    &[0.0, 0.0, 0.5, 1.0],
                    10,
                )
            }
        })
        .collect()
}

fn strategy(stream: &mut Stream) -> PlacementStrategy {
    [
        PlacementStrategy::Pack,
        PlacementStrategy::Spread,
        PlacementStrategy::StrictPack,
        PlacementStrategy::StrictSpread,
    ][stream.below(4)]
}

/// Drives both tables through the same random steps; every step's
/// actions must be equal.
fn same_steps(seed: u64, clusters: usize, steps: usize, max_ranks: usize, max_nodes: usize) {
    let mut stream = Stream(seed);
    let mut groups = 0;
    for cluster_seed in 0..clusters {
        let hosts = cluster(&mut stream, max_ranks, max_nodes);
        let ranks = hosts.len();
        let mut fast = PlacementTable::new(hosts.clone());
        let mut slow = table::ReferenceTable::new(hosts);
        // Reservations asked for and not yet acknowledged.
        let mut unacked: Vec<(PlacementGroupId, Rank)> = Vec::new();
        let mut seq = 0;
        for step in 0..steps {
            let at = format!("cluster {cluster_seed}, step {step}");
            let some_group = |stream: &mut Stream, seq: u64| PlacementGroupId {
                creator: 0,
                seq: stream.below(seq as usize + 2) as u64,
            };
            let actions = match stream.below(10) {
                0..=3 => {
                    seq += 1;
                    groups += 1;
                    let id = if stream.chance(3) {
                        some_group(&mut stream, seq)
                    } else {
                        PlacementGroupId { creator: 0, seq }
                    };
                    let most = if stream.chance(10) { 24 } else { 5 };
                    let b = bundles(&mut stream, most);
                    let s = strategy(&mut stream);
                    let from = stream.below(ranks) as Rank;
                    let a = fast.create(id, b.clone(), s, from, step as u64);
                    assert_eq!(a, slow.create(id, b, s, from, step as u64), "{at}");
                    a
                }
                4 => {
                    let id = some_group(&mut stream, seq);
                    let a = fast.wait(id, 1, step as u64);
                    assert_eq!(a, slow.wait(id, 1, step as u64), "{at}");
                    a
                }
                5..=7 => {
                    if unacked.is_empty() {
                        continue;
                    }
                    let (id, host) = unacked.swap_remove(stream.below(unacked.len()));
                    let a = fast.reserved(id, host);
                    assert_eq!(a, slow.reserved(id, host), "{at}");
                    a
                }
                8 => {
                    let id = some_group(&mut stream, seq);
                    let a = fast.remove(id);
                    assert_eq!(a, slow.remove(id), "{at}");
                    a.1
                }
                _ => {
                    if !stream.chance(30) {
                        continue;
                    }
                    let rank = stream.below(ranks + 1) as Rank;
                    let a = fast.rank_died(rank);
                    assert_eq!(a, slow.rank_died(rank), "{at}");
                    a
                }
            };
            for action in actions {
                if let Action::Reserve { host, group, .. } = action {
                    unacked.push((group, host));
                }
            }
        }
    }
    assert!(groups > clusters, "{groups}");
}

#[test]
fn table_steps_as_before_on_small_random_clusters() {
    same_steps(21, 400, 120, 24, 6);
}

#[test]
fn table_steps_as_before_on_larger_random_clusters() {
    // Enough ranks and bundles that SPREAD takes its ordered-set path.
    same_steps(22, 40, 150, 300, 60);
}

#[test]
fn place_decides_as_before_on_random_free_resources() {
    let mut stream = Stream(23);
    for case in 0..3000 {
        let mut hosts = cluster(&mut stream, 200, 40);
        for host in &mut hosts {
            host.available = resources(&mut stream, &[0.0, 0.5, 1.0, 3.0, 8.0], &[0.0, 1.0], 20);
        }
        let available: Vec<Resources> = hosts.iter().map(|h| h.available.clone()).collect();
        let most = if stream.chance(30) { 64 } else { 6 };
        let b = bundles(&mut stream, most);
        let s = strategy(&mut stream);
        assert_eq!(
            place(&b, s, &hosts, &available),
            strategy::place(&b, s, &hosts, &available),
            "case {case}: {s} {b:?}"
        );
    }
}

#[test]
fn a_large_spread_group_lands_as_before() {
    // The benchmark's shape: 256 nodes x 8 one-GPU ranks, one group of 512.
    let hosts: Vec<Host> = (0..2048)
        .map(|r| {
            let capacity = Resources {
                cpus: 8.0,
                gpus: 1.0,
                custom: BTreeMap::new(),
            };
            Host {
                node: r / 8,
                available: capacity.clone(),
                capacity,
                serving: true,
                alive: true,
            }
        })
        .collect();
    let gpu = Resources {
        cpus: 0.0,
        gpus: 1.0,
        custom: BTreeMap::new(),
    };
    let available: Vec<Resources> = hosts.iter().map(|h| h.available.clone()).collect();
    for strategy in [PlacementStrategy::Spread, PlacementStrategy::Pack] {
        for n in [4, 512, 2048, 2049] {
            let b = vec![gpu.clone(); n];
            assert_eq!(
                place(&b, strategy, &hosts, &available),
                strategy::place(&b, strategy, &hosts, &available),
                "{strategy} x {n}"
            );
        }
    }
}

/// Every reservation acknowledged at once: what the head sees when hosts
/// answer before anything else happens.
fn ack_all(table: &mut PlacementTable, mut actions: Vec<Action>) {
    while !actions.is_empty() {
        let mut next = Vec::new();
        for action in actions {
            if let Action::Reserve { host, group, .. } = action {
                next.extend(table.reserved(group, host));
            }
        }
        actions = next;
    }
}

#[test]
fn rescheduled_groups_keep_their_strategy_and_live_ranks() {
    let mut stream = Stream(24);
    let mut moved = 0;
    for _ in 0..300 {
        let hosts = cluster(&mut stream, 24, 6);
        let mut table = PlacementTable::new(hosts.clone());
        let mut alive: Vec<bool> = hosts.iter().map(|h| h.alive).collect();
        let mut created: Vec<(PlacementGroupId, PlacementStrategy, Vec<Rank>)> = Vec::new();
        for seq in 0..6 {
            let id = PlacementGroupId { creator: 0, seq };
            let s = strategy(&mut stream);
            let b = bundles(&mut stream, 4);
            let actions = table.create(id, b, s, 0, seq);
            ack_all(&mut table, actions);
        }
        for step in 0..12 {
            let rank = stream.below(hosts.len()) as Rank;
            alive[rank as usize] = false;
            let actions = table.rank_died(rank);
            moved += actions
                .iter()
                .filter(|a| matches!(a, Action::Reserve { .. }))
                .count();
            ack_all(&mut table, actions);
            created.clear();
            for seq in 0..6 {
                let id = PlacementGroupId { creator: 0, seq };
                for action in table.wait(id, 0, 1000 + step) {
                    if let Action::Answer {
                        answer: lumen_sched::GroupAnswer::Created(view),
                        ..
                    } = action
                    {
                        created.push((id, view.strategy, view.ranks));
                    }
                }
            }
            for (id, s, ranks) in &created {
                let live: Vec<Rank> = ranks
                    .iter()
                    .copied()
                    .filter(|&r| alive[r as usize])
                    .collect();
                let mut nodes: Vec<u32> = live.iter().map(|&r| hosts[r as usize].node).collect();
                nodes.sort_unstable();
                let count = nodes.len();
                nodes.dedup();
                match s {
                    PlacementStrategy::StrictSpread => {
                        assert_eq!(nodes.len(), count, "{id}: {ranks:?}")
                    }
                    PlacementStrategy::StrictPack => assert!(nodes.len() <= 1, "{id}: {ranks:?}"),
                    _ => {}
                }
            }
        }
    }
    assert!(moved > 100, "{moved} bundles placed again");
}
