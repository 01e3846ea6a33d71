//! Host-to-device and device-to-host bandwidth through the CUDA domain of
//! the device arena, beside plain cudarc copies of the same sizes on the
//! same GPU (the anchor), rounds alternating; median GB/s and the ratio.
//! Run by `scripts/gpu-check.sh` on a machine with an NVIDIA GPU:
//!
//!     cargo run --release -p lumen-objstore --features cuda --example device_bandwidth

use std::time::Instant;

use cudarc::driver::CudaContext;
use lumen_objstore::device::cuda::CudaDomain;
use lumen_objstore::device::{DeviceError, DeviceMemory};

const ROUNDS: usize = 5;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let sizes = [1usize << 20, 16 << 20, 256 << 20];
    let largest = *sizes.iter().max().unwrap_or(&(1 << 20));
    let domain = match CudaDomain::open(0, largest) {
        Ok(d) => d,
        Err(DeviceError::Unavailable(why)) => {
            println!("device_bandwidth: NOT RUN: {why}");
            return Ok(());
        }
        Err(e) => return Err(e.into()),
    };
    println!("device: {}", domain.describe());
    let ctx = CudaContext::new(0)?;
    let stream = ctx.default_stream();
    let mut raw = stream.alloc_zeros::<u8>(largest)?;
    println!(
        "{:>10} {:>6} {:>12} {:>12} {:>7}",
        "bytes", "dir", "lumen GB/s", "cudarc GB/s", "ratio"
    );
    for &size in &sizes {
        let mut host = vec![7u8; size];
        let reps = ((1usize << 30) / size).clamp(2, 256);
        let (mut lh, mut rh, mut ld, mut rd) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            let t = Instant::now();
            for _ in 0..reps {
                domain.write(0, &host)?;
            }
            lh.push((size * reps) as f64 / t.elapsed().as_secs_f64() / 1e9);
            let t = Instant::now();
            for _ in 0..reps {
                stream.memcpy_htod(&host, &mut raw.slice_mut(0..size))?;
                stream.synchronize()?;
            }
            rh.push((size * reps) as f64 / t.elapsed().as_secs_f64() / 1e9);
            let t = Instant::now();
            for _ in 0..reps {
                domain.read(0, &mut host)?;
            }
            ld.push((size * reps) as f64 / t.elapsed().as_secs_f64() / 1e9);
            let t = Instant::now();
            for _ in 0..reps {
                stream.memcpy_dtoh(&raw.slice(0..size), &mut host)?;
                stream.synchronize()?;
            }
            rd.push((size * reps) as f64 / t.elapsed().as_secs_f64() / 1e9);
        }
        for (dir, l, r) in [("H2D", lh, rh), ("D2H", ld, rd)] {
            let (l, r) = (median(l), median(r));
            println!("{size:>10} {dir:>6} {l:>12.2} {r:>12.2} {:>7.2}", l / r);
        }
    }
    Ok(())
}
