//! `lumen bench transport`: OSU-style ping-pong latency and windowed bandwidth
//! between two ranks, over shared memory and over TCP, beside Open MPI's
//! numbers for the same sizes from the same invocation.

use std::time::Instant;

use lumen_transport::{Endpoint, Source, TransportError};

/// Message sizes measured by default (bytes).
pub const DEFAULT_SIZES: &[usize] = &[8, 64, 512, 4096, 32768, 262144, 1048576, 4194304];

/// Iterations for a size: many for small messages, fewer for large ones.
pub fn iterations(size: usize, scale: f64) -> usize {
    let base = if size <= 8192 {
        10_000
    } else {
        (10_000 * 8192 / size).max(50)
    };
    ((base as f64 * scale) as usize).max(10)
}

const PING: u64 = 11;
const PONG: u64 = 12;
const BW_DATA: u64 = 13;
const BW_ACK: u64 = 14;
/// Messages in flight per bandwidth window (osu_bw's default).
pub const WINDOW: usize = 64;

/// Half round-trip time in microseconds between ranks 0 and 1 (run on both).
pub fn latency(ep: &Endpoint, size: usize, iters: usize) -> Result<f64, TransportError> {
    let buffer = vec![0xa5u8; size];
    let warmup = (iters / 10).max(5);
    let mut start = Instant::now();
    for i in 0..warmup + iters {
        if i == warmup {
            start = Instant::now();
        }
        if ep.rank() == 0 {
            ep.send(1, PING, &buffer)?;
            let reply = ep.recv(Source::Rank(1), PONG)?;
            if i == 0 && reply.data != buffer {
                return Err(TransportError::PeerTable(format!(
                    "ping-pong data corrupted at {size} bytes"
                )));
            }
        } else {
            let m = ep.recv(Source::Rank(0), PING)?;
            ep.send(0, PONG, &m.data)?;
        }
    }
    Ok(start.elapsed().as_secs_f64() * 1e6 / iters as f64 / 2.0)
}

/// Windowed bandwidth from rank 0 to rank 1 in MB/s (1 MB = 1e6 bytes).
pub fn bandwidth(ep: &Endpoint, size: usize, iters: usize) -> Result<f64, TransportError> {
    let buffer = vec![0x5au8; size];
    let iters = (iters / 10).max(5);
    let warmup = 2;
    let mut start = Instant::now();
    for i in 0..warmup + iters {
        if i == warmup {
            start = Instant::now();
        }
        if ep.rank() == 0 {
            for _ in 0..WINDOW {
                ep.send(1, BW_DATA, &buffer)?;
            }
            ep.recv(Source::Rank(1), BW_ACK)?;
        } else {
            for _ in 0..WINDOW {
                ep.recv(Source::Rank(0), BW_DATA)?;
            }
            ep.send(0, BW_ACK, &[0u8; 4])?;
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    Ok((size * WINDOW * iters) as f64 / seconds / 1e6)
}
