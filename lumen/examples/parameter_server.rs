//! A parameter server, as in Ray's classic example: an actor holds the
//! model's weights; worker tasks fetch them, compute a gradient on their
//! shard of data, and push it; the server applies it. Here the "model" is a
//! linear regression y = w.x fitted by gradient descent on synthetic data.
//!
//! ```text
//! cargo run --release --example parameter_server
//! target/release/lumen run -n 4 -- target/release/examples/parameter_server
//! ```

use lumen::prelude::*;

const DIM: usize = 16;

/// The weights and the learning rate.
#[lumen::actor]
struct ParameterServer {
    weights: Vec<f64>,
    rate: f64,
    updates: u64,
}

#[lumen::actor]
impl ParameterServer {
    fn new(dim: usize, rate: f64) -> Self {
        ParameterServer {
            weights: vec![0.0; dim],
            rate,
            updates: 0,
        }
    }

    fn weights(&self) -> Vec<f64> {
        self.weights.clone()
    }

    /// Applies a gradient; returns the new weights.
    fn apply(&mut self, gradient: Vec<f64>) -> Vec<f64> {
        for (w, g) in self.weights.iter_mut().zip(&gradient) {
            *w -= self.rate * g;
        }
        self.updates += 1;
        self.weights.clone()
    }

    fn updates(&self) -> u64 {
        self.updates
    }
}

/// The weights the data is generated from.
fn true_weights() -> Vec<f64> {
    (0..DIM).map(|i| (i as f64 - 7.5) / 4.0).collect()
}

/// Deterministic synthetic samples of shard `shard`.
fn shard_data(shard: u64, n: usize) -> Vec<(Vec<f64>, f64)> {
    let w = true_weights();
    let mut state = shard.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
    };
    (0..n)
        .map(|_| {
            let x: Vec<f64> = (0..DIM).map(|_| next()).collect();
            let y = x.iter().zip(&w).map(|(a, b)| a * b).sum();
            (x, y)
        })
        .collect()
}

/// One worker step: fetch the weights, compute the mean-squared-error
/// gradient on this shard, push it to the server.
#[lumen::remote]
fn worker_step(server: ActorHandle<ParameterServer>, shard: u64) -> lumen::Result<f64> {
    let weights = server.weights()?.get()?;
    let data = shard_data(shard, 256);
    let mut gradient = vec![0.0; DIM];
    let mut loss = 0.0;
    for (x, y) in &data {
        let error: f64 = x.iter().zip(&weights).map(|(a, b)| a * b).sum::<f64>() - y;
        loss += error * error;
        for (g, xi) in gradient.iter_mut().zip(x) {
            *g += 2.0 * error * xi / data.len() as f64;
        }
    }
    server.apply(gradient)?.get()?;
    Ok(loss / data.len() as f64)
}

fn main() -> lumen::Result<()> {
    let rt = lumen::init()?;
    let server = ParameterServer::new_remote(&rt, DIM, 0.1)?;
    let workers = 4u64;
    let mut loss = f64::INFINITY;
    for round in 0..40 {
        let steps: Vec<ObjectRef<f64>> = (0..workers)
            .map(|w| worker_step::remote(&rt, server.clone(), w + round * workers))
            .collect::<lumen::Result<_>>()?;
        loss = steps.iter().map(|s| s.get()).sum::<lumen::Result<f64>>()? / workers as f64;
        if round % 10 == 0 {
            println!("round {round:2}: mean loss {loss:.6}");
        }
    }
    let weights = server.weights()?.get()?;
    let error: f64 = weights
        .iter()
        .zip(true_weights())
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    println!(
        "after {} updates on {} ranks: loss {loss:.6}, largest weight error {error:.4}",
        server.updates()?.get()?,
        rt.size()
    );
    assert!(error < 0.05, "did not converge: {weights:?}");
    Ok(())
}
