//! Placement decisions (`lumen-sched`): the policy every task submission
//! and actor creation runs on its submitting rank, and the placement-group
//! strategies rank 0 runs when a group is created, at job sizes from one
//! node to a thousand ranks.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use lumen_sched::{place, Host, PlacementStrategy, RankSlot, Request, Resources, Scheduler};

/// Ranks per node in every layout below.
const PER_NODE: u32 = 8;

fn slots(ranks: u32) -> Vec<RankSlot> {
    (0..ranks)
        .map(|rank| RankSlot {
            node: rank / PER_NODE,
            capacity: Resources::cpus(4.0),
            // Driver mode: rank 0 only submits.
            serving: rank != 0,
            alive: true,
            outstanding: 0,
            actors: 0,
        })
        .collect()
}

fn tasks(c: &mut Criterion) {
    let need = Resources::cpus(1.0);
    let mut group = c.benchmark_group("placement/task");
    for ranks in [8u32, 64, 1024] {
        group.bench_with_input(
            BenchmarkId::new("place and finish", ranks),
            &ranks,
            |b, &ranks| {
                let mut scheduler = Scheduler::new(slots(ranks), 1);
                let request = Request {
                    resources: Some(&need),
                    ..Request::default()
                };
                b.iter(|| {
                    let rank = scheduler
                        .place_task(black_box(&request))
                        .expect("a feasible request");
                    scheduler.finished(rank);
                    rank
                })
            },
        );
        group.bench_with_input(
            BenchmarkId::new("place with data locality", ranks),
            &ranks,
            |b, &ranks| {
                let mut scheduler = Scheduler::new(slots(ranks), 1);
                let request = Request {
                    resources: Some(&need),
                    data_at: Some(ranks / 2),
                    ..Request::default()
                };
                b.iter(|| {
                    let rank = scheduler
                        .place_task(black_box(&request))
                        .expect("a feasible request");
                    scheduler.finished(rank);
                    rank
                })
            },
        );
    }
    group.finish();
    c.bench_function("placement/actor 64 ranks", |b| {
        let mut scheduler = Scheduler::new(slots(64), 1);
        b.iter(|| {
            let rank = scheduler
                .place_actor(black_box(&Request::default()))
                .expect("a feasible request");
            scheduler.actor_gone(rank);
            rank
        })
    });
}

fn groups(c: &mut Criterion) {
    let hosts: Vec<Host> = (0..64)
        .map(|rank| Host {
            node: rank / PER_NODE,
            capacity: Resources::cpus(4.0),
            available: Resources::cpus(4.0),
            serving: true,
            alive: true,
        })
        .collect();
    let available: Vec<Resources> = hosts.iter().map(|h| h.available.clone()).collect();
    let bundles = vec![Resources::cpus(2.0); 8];
    let mut group = c.benchmark_group("placement/group of 8 bundles on 64 ranks");
    for strategy in [
        PlacementStrategy::Pack,
        PlacementStrategy::Spread,
        PlacementStrategy::StrictPack,
        PlacementStrategy::StrictSpread,
    ] {
        group.bench_function(BenchmarkId::from_parameter(strategy), |b| {
            b.iter(|| {
                place(black_box(&bundles), strategy, &hosts, &available).expect("the group fits")
            })
        });
    }
    group.finish();
}

criterion_group!(benches, tasks, groups);
criterion_main!(benches);
