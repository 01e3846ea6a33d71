//! A rank program for launcher tests: joins the job however it was started
//! (`srun`, `srun --mpi=pmi2`, `mpiexec.mpich`, `mpirun`, `lumen run`),
//! sends every other rank its host name, checks what it receives, runs a
//! 1 MiB allreduce over all ranks, and rank 0 prints one line saying how
//! many ranks on which hosts:
//!
//! ```text
//! srun -N 3 --ntasks-per-node=2 target/debug/examples/slurm_probe
//! probe: ok 6 ranks on 3 hosts [h1, h2, h3] via Slurm { pmi2: false } job 12.0
//! ```
//!
//! `--hold SECS` keeps every rank alive that long after the exchange (rank 0
//! prints `probe: ready` first), for tests that cancel a running job.
//! `--verbose` prints one line per rank with its placement and resources.

use std::time::Duration;

use lumen::transport::Source;

const TAG: u64 = 0x51;

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default()
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let hold: Option<u64> = args
        .iter()
        .position(|a| a == "--hold")
        .and_then(|i| args.get(i + 1))
        .map(|s| s.parse())
        .transpose()?;
    let verbose = args.iter().any(|a| a == "--verbose");
    let job = lumen::bootstrap::join()?;
    let ep = job.endpoint.clone();
    let (me, n) = (ep.rank(), ep.size());
    let host = hostname();
    if verbose {
        let allowed = std::fs::read_to_string("/proc/self/status")
            .unwrap_or_default()
            .lines()
            .find_map(|l| {
                l.strip_prefix("Cpus_allowed_list:")
                    .map(|v| v.trim().to_owned())
            })
            .unwrap_or_default();
        println!(
            "probe: rank {me} of {n} on {host} node {} local {}/{} cpus {:?} allowed {allowed} gpus {:?}",
            job.world.node_index,
            job.world.local_rank,
            job.world.local_size,
            job.resources.cpus,
            job.resources.gpus
        );
    }
    for peer in (0..n).filter(|&p| p != me) {
        ep.send(peer, TAG, format!("{me}:{host}").as_bytes())?;
    }
    let mut hosts = vec![String::new(); n as usize];
    hosts[me as usize] = host;
    for _ in 1..n {
        let message = ep.recv(Source::Any, TAG)?;
        let text = String::from_utf8(message.data)?;
        let (rank, name) = text
            .split_once(':')
            .ok_or_else(|| anyhow::anyhow!("rank {me}: malformed message {text:?}"))?;
        anyhow::ensure!(
            rank.parse::<u32>()? == message.src,
            "rank {me}: message from {} claims rank {rank}",
            message.src
        );
        hosts[message.src as usize] = name.to_owned();
    }
    // An allreduce over the world communicator: 1 MiB of u64, rank r
    // contributes r + 1 everywhere, so every element must sum to n(n+1)/2.
    let world = lumen::world_communicator(&job)?;
    let mut buffer = vec![u64::from(me) + 1; 1 << 17];
    world.allreduce(&mut buffer, lumen::collectives::ReduceOp::Sum)?;
    let expected = u64::from(n) * (u64::from(n) + 1) / 2;
    anyhow::ensure!(
        buffer.iter().all(|&x| x == expected),
        "rank {me}: allreduce gave {} instead of {expected}",
        buffer[0]
    );
    if me == 0 {
        println!("probe: allreduce of 1 MiB over {n} ranks = {expected} everywhere");
        let mut distinct = hosts.clone();
        distinct.sort();
        distinct.dedup();
        let step = job
            .world
            .step_id
            .as_ref()
            .map(|s| format!(".{s}"))
            .unwrap_or_default();
        println!(
            "probe: ok {n} ranks on {} hosts {distinct:?} via {:?} job {}{step}",
            distinct.len(),
            job.world.kind,
            job.world.job_id
        );
    }
    if let Some(seconds) = hold {
        if me == 0 {
            println!("probe: ready");
        }
        std::thread::sleep(Duration::from_secs(seconds));
    }
    job.finish()?;
    Ok(())
}
