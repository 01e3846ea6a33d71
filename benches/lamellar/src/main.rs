//! Lamellar's side of `lumen bench runtime --baseline lamellar`: the rows of
//! the runtime suite that have an active-message equivalent, timed with the
//! same `timeit` loop as Lumen's side (a warm-up, then four windows in steps
//! of a tenth of the warm-up count; the mean and standard deviation of the
//! four rates).
//!
//! | row | one timed call, on PE 0 |
//! |---|---|
//! | single client tasks sync | one AM to PE 1 returning two bytes (`exec_am_pe(..).block()`) |
//! | single client tasks async | 1000 AMs spawned round-robin over PEs 1.., then each blocked on |
//! | single client tasks and get batch | the same, counted in batches |
//!
//! The AM body is `ray_perf.py`'s `small_value` (returns `b"ok"`). PE 0 is
//! the driver, as Lumen's driver is: it sends and waits, PEs 1.. run the
//! AMs. Each row is printed as a JSON line (`{"test","unit","value","sd"}`),
//! the format of `benches/ray/ray_micro.py`.
//!
//! Run by `lumen bench runtime` with the shmem lamellae, one process per PE,
//! `LAMELLAR_THREADS=1`, each PE pinned to a core of its own (see
//! `benches/src/runtime.rs`); built by `scripts/install-lamellar-baseline.sh`.

use lamellar::active_messaging::prelude::*;
use std::time::{Duration, Instant};

#[lamellar::AmData(Clone, Debug)]
struct SmallValue {}

#[lamellar::am]
impl LamellarAM for SmallValue {
    async fn exec(self) -> Vec<u8> {
        b"ok".to_vec()
    }
}

fn timeit(warmup: Duration, window: Duration, multiplier: f64, mut body: impl FnMut()) -> (f64, f64) {
    let start = Instant::now();
    let mut count = 0u64;
    while start.elapsed() < warmup {
        body();
        count += 1;
    }
    let step = count / 10 + 1;
    let mut rates = Vec::with_capacity(4);
    for _ in 0..4 {
        let start = Instant::now();
        let mut count = 0u64;
        while start.elapsed() < window {
            for _ in 0..step {
                body();
            }
            count += step;
        }
        rates.push(multiplier * count as f64 / start.elapsed().as_secs_f64());
    }
    let mean = rates.iter().sum::<f64>() / rates.len() as f64;
    let variance = rates.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / rates.len() as f64;
    (mean, variance.sqrt())
}

fn main() {
    let mut scale = 1.0f64;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--scale" => {
                scale = args
                    .next()
                    .and_then(|s| s.parse().ok())
                    .expect("--scale takes a number");
            }
            other => panic!("unknown argument {other}"),
        }
    }
    let world = lamellar::LamellarWorldBuilder::new().build();
    let my_pe = world.my_pe();
    let num_pes = world.num_pes();
    assert!(num_pes >= 2, "the Lamellar baseline needs at least 2 PEs");
    world.barrier();
    if my_pe == 0 {
        let warmup = Duration::from_secs_f64(0.25 * scale);
        let window = Duration::from_secs_f64(0.5 * scale);
        let batch = ((1000.0 * scale.min(1.0)) as usize).max(10);
        let servers = num_pes - 1;
        let row = |test: &str, unit: &str, (value, sd): (f64, f64)| {
            println!("{{\"test\":\"{test}\",\"unit\":\"{unit}\",\"value\":{value},\"sd\":{sd}}}");
        };
        // Warm every PE up.
        for pe in 1..num_pes {
            let _ = world.exec_am_pe(pe, SmallValue {}).block();
        }
        let spawn_batch = || {
            (0..batch)
                .map(|i| world.spawn_am_pe(1 + i % servers, SmallValue {}))
                .collect::<Vec<_>>()
        };
        row(
            "single client tasks and get batch",
            "batches/s",
            timeit(warmup, window, 1.0, || {
                for h in spawn_batch() {
                    assert_eq!(h.block(), b"ok");
                }
            }),
        );
        row(
            "single client tasks sync",
            "tasks/s",
            timeit(warmup, window, 1.0, || {
                assert_eq!(world.exec_am_pe(1, SmallValue {}).block(), b"ok");
            }),
        );
        row(
            "single client tasks async",
            "tasks/s",
            timeit(warmup, window, batch as f64, || {
                for h in spawn_batch() {
                    assert_eq!(h.block(), b"ok");
                }
            }),
        );
    }
    world.barrier();
}
