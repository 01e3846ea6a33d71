//! NCCL correctness on one GPU: a single-rank job (its own endpoint, no
//! launcher), a CPU world communicator, an NCCL communicator made from it,
//! and every NCCL operation on device buffers checked against the host.
//! Run by scripts/gpu-nccl-check.sh on a machine with an NVIDIA GPU; on a
//! machine without CUDA it exits with the library's clear error.

use lumen_collectives::nccl::{nccl_available, NcclCommunicator};
use lumen_collectives::{Communicator, ReduceOp};
use lumen_transport::{EndpointBuilder, EndpointOptions, JobSecret, TransportConfig};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if let Err(e) = nccl_available() {
        eprintln!("nccl_check: NOT RUN: {e}");
        std::process::exit(2);
    }
    let options = EndpointOptions {
        rank: 0,
        size: 1,
        node: 0,
        local_rank: 0,
        local_size: 1,
        job_id: format!("nccl-check-{}", std::process::id()),
        secret: JobSecret::random(),
        config: TransportConfig::default(),
    };
    let builder = EndpointBuilder::new(options)?;
    let me = builder.address().clone();
    let endpoint = builder.connect(&[me], || Ok::<(), String>(()))?;
    let world = Communicator::world(endpoint)?;
    let gpu = NcclCommunicator::new(&world, 0)?;
    let stream = gpu.stream().clone();
    let n = (1 << 20) + 3;
    let host: Vec<f32> = (0..n).map(|i| (i % 251) as f32 * 0.5).collect();

    let mut a = stream.clone_htod(&host)?;
    gpu.allreduce(&mut a, ReduceOp::Sum)?;
    gpu.synchronize()?;
    assert_eq!(
        stream.clone_dtoh(&a)?,
        host,
        "allreduce sum on one rank is the identity"
    );

    let mut b = stream.clone_htod(&host)?;
    gpu.bcast(&mut b, 0)?;
    gpu.reduce(&mut b, ReduceOp::Max, 0)?;
    gpu.synchronize()?;
    assert_eq!(stream.clone_dtoh(&b)?, host, "bcast + reduce");

    let ints: Vec<i64> = (0..n as i64).map(|i| i * 3 - 7).collect();
    let send = stream.clone_htod(&ints)?;
    let mut gathered = stream.alloc_zeros::<i64>(n)?;
    gpu.allgather(&send, &mut gathered)?;
    let mut scattered = stream.alloc_zeros::<i64>(n)?;
    gpu.reduce_scatter(&send, &mut scattered, ReduceOp::Sum)?;
    gpu.synchronize()?;
    assert_eq!(stream.clone_dtoh(&gathered)?, ints, "allgather");
    assert_eq!(stream.clone_dtoh(&scattered)?, ints, "reduce_scatter");

    let halves: Vec<half::f16> = (0..4096)
        .map(|i| half::f16::from_f32((i % 64) as f32))
        .collect();
    let mut h = stream.clone_htod(&halves)?;
    gpu.allreduce(&mut h, ReduceOp::Prod)?;
    gpu.synchronize()?;
    assert_eq!(stream.clone_dtoh(&h)?, halves, "f16 allreduce");

    assert!(
        gpu.allreduce(&mut a, ReduceOp::BitXor).is_err(),
        "bitwise on floats is refused"
    );
    // Timing on one rank. An in-place allreduce on one rank is a no-op for
    // NCCL (it only enqueues), so the bandwidth line uses an out-of-place
    // allgather, which on one rank is a device-to-device copy of the buffer.
    for &bytes in &[8usize, 64 << 10, 4 << 20, 256 << 20] {
        let count = (bytes / 4).max(1);
        let mut buf = stream.alloc_zeros::<f32>(count)?;
        let mut out = stream.alloc_zeros::<f32>(count)?;
        let iters = if bytes >= 64 << 20 { 20 } else { 200 };
        let time = |f: &mut dyn FnMut() -> Result<(), Box<dyn std::error::Error>>| {
            for _ in 0..5 {
                f()?;
            }
            gpu.synchronize()?;
            let start = std::time::Instant::now();
            for _ in 0..iters {
                f()?;
            }
            gpu.synchronize()?;
            Ok::<f64, Box<dyn std::error::Error>>(
                start.elapsed().as_secs_f64() * 1e6 / iters as f64,
            )
        };
        let reduce_us = time(&mut || Ok(gpu.allreduce(&mut buf, ReduceOp::Sum)?))?;
        let gather_us = time(&mut || Ok(gpu.allgather(&buf, &mut out)?))?;
        println!(
            "nccl_check: {bytes:>10} B, 1 rank: allreduce in place {reduce_us:8.2} us/op; allgather (device copy) {gather_us:8.2} us/op, {:8.1} GB/s",
            (count * 4) as f64 / gather_us / 1e3
        );
    }

    println!("nccl_check: PASSED on GPU 0 (1 rank): allreduce, bcast, reduce, allgather, reduce_scatter, f32/i64/f16");
    Ok(())
}
