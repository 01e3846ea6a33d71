//! A long object transfer with a progress bar: the driver puts a model's
//! worth of weights as shards (64 MiB objects) and every worker rank
//! reads every shard, as ranks do when loading a checkpoint. The bar
//! counts the bytes the ranks have read; it is drawn only on a terminal
//! (indicatif stays silent otherwise).
//!
//! ```text
//! lumen run -n 4 -- target/release/examples/shard_transfer --mib 2048
//! [00:00:03] ████████████░░░░░░░░ 3.8 GiB/6.0 GiB (1.2 GiB/s) shards read by 3 ranks
//! shard_transfer: 3 ranks read 32 shards (2048 MiB each rank) in 4.9 s
//! ```

use std::time::Instant;

use lumen::prelude::*;

/// Reads a shard where the task runs (pulled to its node first when the
/// shard lives on another) and returns its checksum.
#[lumen::remote]
fn read_shard(shard: ObjectRef<[u8]>) -> lumen::Result<u64> {
    let view = shard.get()?;
    Ok(view.iter().step_by(4096).map(|&b| u64::from(b)).sum())
}

fn main() -> lumen::Result<()> {
    let rt = lumen::init()?;
    let args: Vec<String> = std::env::args().collect();
    let mib: usize = args
        .iter()
        .position(|a| a == "--mib")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    const SHARD: usize = 64 << 20;
    let shards = (mib << 20).div_ceil(SHARD).max(1);
    let refs: Vec<ObjectRef<[u8]>> = (0..shards)
        .map(|i| rt.put_slice(&vec![(i % 251) as u8; SHARD]))
        .collect::<lumen::Result<_>>()?;
    let readers: Vec<u32> = (0..rt.size()).filter(|&r| r != rt.rank()).collect();
    let readers = if readers.is_empty() {
        vec![rt.rank()]
    } else {
        readers
    };
    let started = Instant::now();
    let mut pending: Vec<ObjectRef<u64>> = Vec::new();
    for &rank in &readers {
        for shard in &refs {
            pending.push(
                read_shard::options()
                    .rank(rank)
                    .remote(&rt, shard.clone())?,
            );
        }
    }
    let total = (pending.len() * SHARD) as u64;
    let bar = indicatif::ProgressBar::new(total).with_style(
        indicatif::ProgressStyle::with_template(
            "[{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} ({bytes_per_sec}) {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_message(format!("shards read by {} ranks", readers.len()));
    let mut sum = 0u64;
    while !pending.is_empty() {
        let (ready, rest) = lumen::wait(&pending, 1, None)?;
        for done in &ready {
            sum = sum.wrapping_add(done.get()?);
            bar.inc(SHARD as u64);
        }
        pending = rest;
    }
    bar.finish_and_clear();
    println!(
        "shard_transfer: {} ranks read {shards} shards ({} MiB each rank) in {:.1} s (checksum {sum})",
        readers.len(),
        shards * (SHARD >> 20),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
