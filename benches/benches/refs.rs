//! Steps of the ownership table (`lumen/src/runtime/refs.rs`, Ray's
//! ownership protocol): the work every `put`, submit, reply, clone, pass
//! and drop of an `ObjectRef` does on the owner and on a borrower. Stepped
//! through the hidden `lumen::__private::RefTableSteps`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use lumen::__private::RefTableSteps;
use lumen::runtime::ObjectId;

/// Objects per iteration.
const BATCH: u64 = 1000;

/// A table that already owns `live` objects (the lookups then hash into a
/// populated map, as in a running driver).
fn owner_with(live: u64) -> (RefTableSteps, u64) {
    let mut table = RefTableSteps::new(0);
    for seq in 0..live {
        table.create_ready(ObjectId { owner: 0, seq }, vec![1]);
    }
    (table, live)
}

fn owner(c: &mut Criterion) {
    let mut group = c.benchmark_group("refs/owner");
    group.throughput(Throughput::Elements(BATCH));
    group.bench_function("put, clone, drop twice", |b| {
        let (mut table, mut next) = owner_with(10_000);
        b.iter(|| {
            for _ in 0..BATCH {
                let object = ObjectId {
                    owner: 0,
                    seq: next,
                };
                next += 1;
                table.create_ready(object, vec![1]);
                table.handle_added(object);
                black_box(table.handle_dropped(object));
                black_box(table.handle_dropped(object));
            }
        });
        assert_eq!(table.owned_count(), 10_000);
    });
    group.bench_function("submit, complete, drop", |b| {
        let (mut table, mut next) = owner_with(10_000);
        b.iter(|| {
            for _ in 0..BATCH {
                let object = ObjectId {
                    owner: 0,
                    seq: next,
                };
                next += 1;
                table.create_pending(object);
                black_box(table.complete_inline(object, vec![1]));
                black_box(table.handle_dropped(object));
            }
        });
    });
    group.bench_function("pass to a borrower, borrower done", |b| {
        let (mut table, live) = owner_with(10_000);
        b.iter(|| {
            for seq in 0..BATCH.min(live) {
                let object = ObjectId { owner: 0, seq };
                assert!(table.add_borrower(object, 1, 1));
                black_box(table.remove_borrower(object, 1, 1));
            }
        });
    });
    group.finish();
}

fn borrower(c: &mut Criterion) {
    let mut group = c.benchmark_group("refs/borrower");
    group.throughput(Throughput::Elements(BATCH));
    group.bench_function("argument held, handle, released", |b| {
        let mut table = RefTableSteps::new(1);
        let mut next = 0;
        b.iter(|| {
            for _ in 0..BATCH {
                let object = ObjectId {
                    owner: 0,
                    seq: next,
                };
                next += 1;
                table.hold(object);
                table.handle_added(object);
                black_box(table.handle_dropped(object));
                black_box(table.release(object));
            }
        });
        assert_eq!(table.borrowed_count(), 0);
    });
    group.finish();
}

criterion_group!(benches, owner, borrower);
criterion_main!(benches);
