//! A job that keeps running, to look at from outside with `lumen status`:
//! rank 0 (the driver) creates a named actor and a placement group, then
//! keeps tasks running on every rank (some slower on the last rank) until
//! a stop file appears or the time is up.
//!
//! ```text
//! lumen run -n 4 -- target/debug/examples/long_job --seconds 60 &
//! lumen status            # the one job running here
//! lumen status --watch    # refreshes every 2 s until the job ends
//! ```
//!
//! Options: `--seconds S` (default 30), `--stop-file PATH` (ends as soon
//! as PATH exists), `--task-ms MS` (each task's duration, default 2).

use std::time::{Duration, Instant};

use lumen::runtime::{PlacementStrategy, Resources};

/// Works for `ms` milliseconds (sleeping, so a 2-core machine stays
/// usable), the last rank twice as long: the slowest rank to find.
#[lumen::remote]
fn work(ms: u64) -> u64 {
    let var = |names: &[&str]| -> Option<u64> {
        names
            .iter()
            .find_map(|name| std::env::var(name).ok()?.parse().ok())
    };
    let rank = var(&["LUMEN_RANK", "SLURM_PROCID", "OMPI_COMM_WORLD_RANK"]);
    let size = var(&["LUMEN_SIZE", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE"]);
    let factor = match (rank, size) {
        (Some(rank), Some(size)) if rank + 1 == size => 2,
        _ => 1,
    };
    std::thread::sleep(Duration::from_millis(ms * factor));
    rank.unwrap_or(0)
}

/// A counter that lives for the whole job.
#[lumen::actor]
struct Progress {
    waves: u64,
}

#[lumen::actor]
impl Progress {
    fn new() -> Self {
        Progress { waves: 0 }
    }

    fn wave(&mut self) -> u64 {
        self.waves += 1;
        self.waves
    }
}

fn arg<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> T {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() -> lumen::Result<()> {
    let rt = lumen::init()?;
    let args: Vec<String> = std::env::args().collect();
    let seconds: f64 = arg(&args, "--seconds", 30.0);
    let task_ms: u64 = arg(&args, "--task-ms", 2);
    let stop_file: Option<String> = arg(&args, "--stop-file", String::new())
        .parse()
        .ok()
        .filter(|p: &String| !p.is_empty());
    let progress = Progress::actor_options().name("progress").new_remote(&rt)?;
    let group = rt.placement_group(vec![Resources::cpus(0.5); 2], PlacementStrategy::Spread)?;
    group.ready()?;
    let ranks = rt.size();
    // The id `lumen status` takes: Slurm's under srun, else lumen run's.
    let job = std::env::var("SLURM_JOB_ID")
        .or_else(|_| std::env::var("LUMEN_JOB_ID"))
        .unwrap_or_default();
    println!(
        "long_job: ready: {ranks} ranks, placement group on ranks {:?}, job {job}",
        group.ranks()?
    );
    let ends = Instant::now() + Duration::from_secs_f64(seconds);
    let mut waves = 0;
    while Instant::now() < ends
        && !stop_file
            .as_deref()
            .is_some_and(|p| std::path::Path::new(p).exists())
    {
        let wave: Vec<_> = (0..ranks * 2)
            .map(|i| {
                work::options()
                    .rank(i % ranks)
                    .num_cpus(0.25)
                    .remote(&rt, task_ms)
            })
            .collect::<lumen::Result<_>>()?;
        for task in wave {
            task.get()?;
        }
        waves = progress.wave()?.get()?;
    }
    rt.remove_placement_group(&group)?;
    println!("long_job: done after {waves} waves");
    Ok(())
}
