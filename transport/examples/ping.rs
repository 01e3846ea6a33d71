//! Every rank sends every other rank messages of several sizes, checks every
//! byte it receives, and rank 0 reports. Run it on 4 ranks:
//!
//! ```text
//! cargo build --release --examples && target/release/lumen run -n 4 -- target/release/examples/ping
//! ```
//!
//! Options (used by the tests): `--sizes 0,8,1048576` picks the message sizes;
//! `--kill-rank R` makes rank R SIGKILL itself after the first exchange, so the
//! others can show how a dead peer is reported.

use std::time::Instant;

use lumen_transport::{Endpoint, Source};

fn pattern(len: usize, seed: u32) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) as u8)
        .collect()
}

fn exchange(ep: &Endpoint, len: usize, tag: u64) -> anyhow::Result<()> {
    let (me, n) = (ep.rank(), ep.size());
    let sender = {
        let ep = ep.clone();
        std::thread::spawn(move || -> anyhow::Result<()> {
            for d in 1..n {
                let dst = (me + d) % n;
                ep.send(dst, tag, &pattern(len, me * 7919 + dst))?;
            }
            Ok(())
        })
    };
    for _ in 1..n {
        let m = ep.recv(Source::Any, tag)?;
        anyhow::ensure!(
            m.data.len() == len,
            "rank {me}: {} bytes from {}, expected {len}",
            m.data.len(),
            m.src
        );
        anyhow::ensure!(
            m.data == pattern(len, m.src * 7919 + me),
            "rank {me}: corrupted {len}-byte message from {}",
            m.src
        );
    }
    sender
        .join()
        .map_err(|_| anyhow::anyhow!("sender thread panicked"))??;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let sizes: Vec<usize> = match value("--sizes") {
        Some(list) => list.split(',').map(str::parse).collect::<Result<_, _>>()?,
        None => vec![0, 1, 8, 4096, 65536, 1 << 20, 16 << 20],
    };
    let kill_rank: Option<u32> = value("--kill-rank").map(|r| r.parse()).transpose()?;
    let job = lumen_launcher::bootstrap::join()?;
    let ep = job.endpoint.clone();
    if ep.rank() == 0 {
        println!(
            "ping: job id {} with {} ranks on {} nodes",
            job.world.job_id,
            job.size(),
            job.world.num_nodes.max(1)
        );
    }
    let start = Instant::now();
    for (i, &len) in sizes.iter().enumerate() {
        exchange(&ep, len, 1 + i as u64)?;
        if kill_rank == Some(ep.rank()) {
            // SAFETY: raising a signal at ourselves has no memory-safety preconditions.
            unsafe { libc::raise(libc::SIGKILL) };
        }
    }
    let bytes: usize = sizes.iter().sum::<usize>() * (ep.size() as usize - 1) * ep.size() as usize;
    if ep.rank() == 0 {
        println!(
            "ping: {} ranks exchanged {} sizes all-to-all ({} MiB) in {:.3} s, every byte verified; tcp receiver: {}",
            ep.size(),
            sizes.len(),
            bytes >> 20,
            start.elapsed().as_secs_f64(),
            ep.tcp_backend()
        );
    }
    job.finish()?;
    Ok(())
}
