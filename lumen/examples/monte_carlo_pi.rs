//! Estimates pi by throwing random points at the unit square in parallel
//! tasks, as in Ray's classic example; a progress actor counts the batches.
//!
//! ```text
//! cargo run --release --example monte_carlo_pi -- 64 1000000   # tasks, samples each
//! target/release/lumen run -n 4 -- target/release/examples/monte_carlo_pi
//! ```

use std::time::Instant;

use lumen::prelude::*;

/// Counts finished batches (any task may report).
#[lumen::actor]
struct Progress {
    batches: u64,
    samples: u64,
}

#[lumen::actor]
impl Progress {
    fn new() -> Self {
        Progress {
            batches: 0,
            samples: 0,
        }
    }

    fn report(&mut self, samples: u64) -> u64 {
        self.batches += 1;
        self.samples += samples;
        self.batches
    }

    fn samples(&self) -> u64 {
        self.samples
    }
}

/// xorshift64*: enough randomness for a demo, no dependency.
fn next(state: &mut u64) -> f64 {
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    (state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
}

/// Throws `samples` points; returns how many fell inside the quarter circle.
#[lumen::remote]
fn sample(seed: u64, samples: u64, progress: ActorHandle<Progress>) -> lumen::Result<u64> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut inside = 0;
    for _ in 0..samples {
        let (x, y) = (next(&mut state), next(&mut state));
        if x * x + y * y <= 1.0 {
            inside += 1;
        }
    }
    // Waiting for the report makes it land before this task's result
    // (calls from different callers are not ordered among each other).
    progress.report(samples)?.get()?;
    Ok(inside)
}

fn main() -> lumen::Result<()> {
    let mut args = std::env::args().skip(1);
    let tasks: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(32);
    let samples: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(200_000);
    let rt = lumen::init()?;
    let start = Instant::now();
    let progress = Progress::new_remote(&rt)?;
    let counts: Vec<ObjectRef<u64>> = (0..tasks)
        .map(|seed| sample::remote(&rt, seed, samples, progress.clone()))
        .collect::<lumen::Result<_>>()?;
    let inside: u64 = counts.iter().map(|c| c.get()).sum::<lumen::Result<u64>>()?;
    let total = tasks * samples;
    let pi = 4.0 * inside as f64 / total as f64;
    // Every task waited for its report, so all are in.
    let counted = progress.samples()?.get()?;
    println!(
        "pi ~= {pi:.6} from {total} samples in {tasks} tasks on {} ranks ({:.3} s); progress actor counted {counted}",
        rt.size(),
        start.elapsed().as_secs_f64()
    );
    assert_eq!(counted, total);
    assert!((pi - std::f64::consts::PI).abs() < 0.01);
    Ok(())
}
