//! The shared-memory ring, through the transport's public API: two ranks of
//! one node (two endpoints in this process, sharing a real node segment),
//! and a window of eager sends from rank 0 (ring pushes) followed by the
//! matching receives at rank 1 (ring pops), all on one thread, so the
//! figure is the cost of the ring path itself (framing, the release store
//! that publishes a record, polling, matching, the copy out) without a
//! wake-up or a cross-core round trip. The ping-pong between processes is
//! `lumen bench transport`.

use std::hint::black_box;
use std::sync::{Arc, Barrier};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use lumen_transport::{
    Endpoint, EndpointBuilder, EndpointOptions, JobSecret, PeerAddress, Source, TransportConfig,
};

/// Records per window: well inside a default 1 MiB ring at every size below.
const WINDOW: usize = 64;
const TAG: u64 = 21;

/// Ranks 0 and 1 of a one-node job, connected (each `connect` waits for the
/// other at the rendezvous barrier, so they run on two threads).
fn node_pair() -> (Endpoint, Endpoint) {
    let job_id = format!("bench-ring-{}", std::process::id());
    let secret = JobSecret::random();
    let builders: Vec<EndpointBuilder> = (0..2)
        .map(|rank| {
            EndpointBuilder::new(EndpointOptions {
                rank,
                size: 2,
                node: 0,
                local_rank: rank,
                local_size: 2,
                job_id: job_id.clone(),
                secret: secret.clone(),
                config: TransportConfig::default(),
            })
            .expect("creating an endpoint")
        })
        .collect();
    let peers: Vec<PeerAddress> = builders.iter().map(|b| b.address().clone()).collect();
    let barrier = Arc::new(Barrier::new(2));
    let mut threads = builders.into_iter().map(|builder| {
        let (peers, barrier) = (peers.clone(), barrier.clone());
        std::thread::spawn(move || {
            builder
                .connect(&peers, || {
                    barrier.wait();
                    Ok::<(), String>(())
                })
                .expect("connecting the endpoints")
        })
    });
    let (first, second) = (threads.next(), threads.next());
    let join = |t: Option<std::thread::JoinHandle<Endpoint>>| {
        t.expect("two ranks")
            .join()
            .expect("the connecting thread panicked")
    };
    (join(first), join(second))
}

fn push_pop(c: &mut Criterion) {
    let (rank0, rank1) = node_pair();
    let mut group = c.benchmark_group("ring/push then pop");
    for size in [8usize, 512, 4096] {
        let payload = vec![0xa5_u8; size];
        group.throughput(Throughput::Elements(WINDOW as u64));
        group.bench_with_input(BenchmarkId::from_parameter(size), &payload, |b, payload| {
            b.iter(|| {
                for _ in 0..WINDOW {
                    rank0.send(1, TAG, payload).expect("send into the ring");
                }
                for _ in 0..WINDOW {
                    let message = rank1
                        .recv(Source::Rank(0), TAG)
                        .expect("receive from the ring");
                    black_box(message);
                }
            })
        });
    }
    group.finish();
    rank0.close();
    rank1.close();
}

criterion_group!(benches, push_pop);
criterion_main!(benches);
