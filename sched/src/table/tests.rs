//! Unit tests of the placement-group table.

use super::*;
use crate::strategy::tests::{cpus, hosts, id};

#[test]
fn infeasible_groups_say_what_was_asked_and_what_exists() {
    let mut t = PlacementTable::new(hosts(&[4], 1.0, true));
    let actions = t.create(id(1), cpus(2, 1.0), PlacementStrategy::StrictSpread, 0, 7);
    let [Action::Answer {
        answer: GroupAnswer::Infeasible(why),
        request: 7,
        ..
    }] = &actions[..]
    else {
        panic!("{actions:?}");
    };
    assert!(why.contains("STRICT_SPREAD group of 2 bundle(s) [{cpus: 1}, {cpus: 1}]"));
    assert!(why.contains("needs 2 distinct nodes, the job has 1 node(s)"));
    assert!(why.contains("node 0: ranks 1-3 {cpus: 1} each"), "{why}");
    let actions = t.create(id(2), cpus(1, 2.0), PlacementStrategy::Pack, 0, 8);
    assert!(
        matches!(&actions[..], [Action::Answer { answer: GroupAnswer::Infeasible(w), .. }]
            if w.contains("bundle 0 {cpus: 2} fits on no serving rank")),
        "{actions:?}"
    );
    let actions = t.create(
        id(3),
        vec![Resources::default()],
        PlacementStrategy::Pack,
        0,
        9,
    );
    assert!(matches!(
        &actions[..],
        [Action::Answer {
            answer: GroupAnswer::Infeasible(_),
            ..
        }]
    ));
}

fn created(t: &mut PlacementTable, actions: &[Action], group: PlacementGroupId) {
    for a in actions {
        if let Action::Reserve { host, group: g, .. } = a {
            if *g == group {
                t.reserved(group, *host);
            }
        }
    }
}

fn ranks_of(t: &mut PlacementTable, group: PlacementGroupId) -> Option<Vec<Rank>> {
    t.wait(group, 5, 99).into_iter().find_map(|a| match a {
        Action::Answer {
            answer: GroupAnswer::Created(view),
            ..
        } => Some(view.ranks),
        _ => None,
    })
}

#[test]
fn reservation_is_atomic_and_released_on_removal() {
    let mut t = PlacementTable::new(hosts(&[4], 1.0, true));
    let a = t.create(id(1), cpus(2, 1.0), PlacementStrategy::Pack, 0, 1);
    assert_eq!(
        a[0],
        Action::Answer {
            to: 0,
            request: 1,
            answer: GroupAnswer::Accepted
        }
    );
    let reserves = a
        .iter()
        .filter(|x| matches!(x, Action::Reserve { .. }))
        .count();
    assert_eq!(reserves, 2);
    // Not created before every host acknowledged; a waiter is answered then.
    assert!(t.wait(id(1), 3, 2).is_empty());
    created(&mut t, &a, id(1));
    let ranks = ranks_of(&mut t, id(1)).expect("created");
    assert_eq!(ranks.len(), 2);
    // Two bundles need two CPUs; one is left: nothing of this group is
    // reserved (all or none), it waits.
    let b = t.create(id(2), cpus(2, 1.0), PlacementStrategy::Pack, 0, 3);
    assert_eq!(b.len(), 1, "{b:?}");
    assert!(ranks_of(&mut t, id(2)).is_none());
    let c = t.create(id(3), cpus(1, 1.0), PlacementStrategy::Pack, 0, 4);
    created(&mut t, &c, id(3));
    assert!(
        ranks_of(&mut t, id(3)).is_some(),
        "a smaller group is not held back"
    );
    let (known, removed) = t.remove(id(3));
    assert!(known);
    assert!(removed
        .iter()
        .any(|x| matches!(x, Action::Release { group, .. } if *group == id(3))));
    // Still only 1 CPU free after removing group 3: group 2 waits.
    assert!(!removed
        .iter()
        .any(|x| matches!(x, Action::Reserve { group, .. } if *group == id(2))));
    let (_, removed) = t.remove(id(1));
    assert!(removed
        .iter()
        .any(|x| matches!(x, Action::Reserve { group, .. } if *group == id(2))));
    created(&mut t, &removed, id(2));
    assert!(ranks_of(&mut t, id(2)).is_some());
    assert_eq!(
        t.wait(id(1), 2, 5),
        vec![Action::Answer {
            to: 2,
            request: 5,
            answer: GroupAnswer::Removed
        }]
    );
    assert!(!t.remove(id(1)).0);
}

#[test]
fn a_host_dying_during_reservation_fails_the_group() {
    let mut t = PlacementTable::new(hosts(&[4], 1.0, true));
    let a = t.create(id(1), cpus(3, 1.0), PlacementStrategy::Spread, 0, 1);
    assert!(t.wait(id(1), 0, 2).is_empty());
    t.reserved(id(1), 1);
    let died = t.rank_died(2);
    assert!(died.iter().any(|x| matches!(x,
        Action::Answer { request: 2, answer: GroupAnswer::Failed(w), .. } if w.contains("rank 2 died"))));
    let released: Vec<Rank> = died
        .iter()
        .filter_map(|x| match x {
            Action::Release { host, .. } => Some(*host),
            _ => None,
        })
        .collect();
    assert_eq!(released, vec![1, 3], "{a:?} {died:?}");
    // What is left (2 ranks) cannot hold 3 bundles any more.
    let b = t.create(id(2), cpus(3, 1.0), PlacementStrategy::Pack, 0, 3);
    assert!(matches!(
        &b[..],
        [Action::Answer {
            answer: GroupAnswer::Infeasible(_),
            ..
        }]
    ));
}
fn gpu_hosts(per_node: &[u32]) -> Vec<Host> {
    let mut h = hosts(per_node, 2.0, true);
    for host in &mut h {
        host.capacity.gpus = 1.0;
        host.available.gpus = 1.0;
    }
    h
}

fn one_gpu(n: usize) -> Vec<Resources> {
    vec![
        Resources {
            gpus: 1.0,
            ..Resources::cpus(1.0)
        };
        n
    ]
}

fn reserves(actions: &[Action]) -> Vec<(Rank, Vec<u32>)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Reserve { host, bundles, .. } => {
                Some((*host, bundles.iter().map(|(i, _)| *i).collect()))
            }
            _ => None,
        })
        .collect()
}

#[test]
fn a_strict_spread_bundle_on_a_dead_rank_is_placed_again_on_its_node() {
    // Three nodes of two one-GPU ranks; rank 0 is the driver.
    let h = gpu_hosts(&[2, 2, 2]);
    let mut t = PlacementTable::new(h.clone());
    let a = t.create(id(1), one_gpu(3), PlacementStrategy::StrictSpread, 0, 1);
    created(&mut t, &a, id(1));
    let ranks = ranks_of(&mut t, id(1)).expect("created");
    let mut nodes: Vec<u32> = ranks.iter().map(|&r| h[r as usize].node).collect();
    nodes.sort_unstable();
    assert_eq!(nodes, vec![0, 1, 2]);
    // The bundle on node 1 loses its rank: the other rank of node 1 is
    // the only one on a node without a bundle of the group.
    let (moved, &dead) = ranks
        .iter()
        .enumerate()
        .find(|(_, &r)| h[r as usize].node == 1)
        .expect("a bundle on node 1");
    let died = t.rank_died(dead);
    let other = if dead == 2 { 3 } else { 2 };
    assert_eq!(
        reserves(&died),
        vec![(other, vec![moved as u32])],
        "{died:?}"
    );
    // Waiters wait for the new host's acknowledgement.
    assert!(t.wait(id(1), 4, 5).is_empty());
    let answered = t.reserved(id(1), other);
    let mut expected = ranks.clone();
    expected[moved] = other;
    assert!(
        matches!(&answered[..], [Action::Answer { to: 4, request: 5, answer: GroupAnswer::Created(v) }]
            if v.ranks == expected),
        "{answered:?}"
    );
    assert_eq!(ranks_of(&mut t, id(1)), Some(expected.clone()));
    // Node 1 has no live rank left: a bundle lost there cannot be
    // placed again under STRICT_SPREAD; it stays on its dead rank.
    let died = t.rank_died(other);
    assert!(reserves(&died).is_empty(), "{died:?}");
    let mut stays = expected;
    stays[moved] = other;
    assert_eq!(ranks_of(&mut t, id(1)), Some(stays));
}

#[test]
fn a_rescheduled_bundle_waits_for_room_then_moves() {
    let h = gpu_hosts(&[2, 2, 2]);
    let mut t = PlacementTable::new(h.clone());
    let a = t.create(id(1), one_gpu(3), PlacementStrategy::StrictSpread, 0, 1);
    created(&mut t, &a, id(1));
    let ranks = ranks_of(&mut t, id(1)).expect("created");
    // Another group takes every other GPU.
    let b = t.create(id(2), one_gpu(2), PlacementStrategy::Spread, 0, 2);
    created(&mut t, &b, id(2));
    let victim = ranks[1];
    let died = t.rank_died(victim);
    assert!(reserves(&died).is_empty(), "no room now: {died:?}");
    assert!(t.wait(id(1), 3, 9).is_empty(), "pending reschedule");
    // Group 2 ends: the bundle moves to a freed rank on its node, before
    // any pending group.
    let (_, removed) = t.remove(id(2));
    let moved = reserves(&removed);
    assert_eq!(moved.len(), 1, "{removed:?}");
    let (host, ref bundles) = moved[0];
    assert_eq!(bundles, &vec![1]);
    assert_eq!(h[host as usize].node, h[victim as usize].node);
    let answered = t.reserved(id(1), host);
    assert!(matches!(&answered[..], [Action::Answer { request: 9, .. }]));
}

#[test]
fn strict_pack_moves_next_to_the_others_and_a_dying_new_host_is_replaced() {
    let mut t = PlacementTable::new(hosts(&[1, 3, 2], 1.0, true));
    let a = t.create(id(1), cpus(2, 1.0), PlacementStrategy::StrictPack, 0, 1);
    created(&mut t, &a, id(1));
    let ranks = ranks_of(&mut t, id(1)).expect("created");
    // Node 1 (ranks 1-3) is the roomiest: both bundles there.
    assert!(ranks.iter().all(|&r| (1..=3).contains(&r)), "{ranks:?}");
    let spare = (1..=3).find(|r| !ranks.contains(r)).expect("a spare rank");
    let died = t.rank_died(ranks[0]);
    assert_eq!(reserves(&died), vec![(spare, vec![0])]);
    // The new host dies before acknowledging: node 1 has no room left,
    // and never will (its ranks hold one CPU each): the bundle stays.
    let died = t.rank_died(spare);
    assert!(reserves(&died).is_empty(), "{died:?}");
    let view = ranks_of(&mut t, id(1)).expect("answered");
    assert_eq!(view, vec![spare, ranks[1]]);
    // Removing it releases the live host only.
    let (_, removed) = t.remove(id(1));
    assert_eq!(
        removed,
        vec![Action::Release {
            host: ranks[1],
            group: id(1)
        }]
    );
}
