//! The `lumen` command line: `lumen run` starts a job on this machine (or on
//! hosts reached through a launch agent), like `mpirun`; `lumen bench`
//! measures Lumen beside its baselines.

use std::ffi::OsString;
use std::net::IpAddr;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use lumen_launcher::spawn::{parse_hosts, run_job, JobSpec};

/// Lumen: a runtime for remote tasks, actors and collectives on HPC systems.
#[derive(Debug, Parser)]
#[command(name = "lumen", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run N ranks of a program and wait for them (like mpirun); inside a
    /// Slurm allocation (SLURM_JOB_ID set) the ranks are started with srun.
    Run(RunArgs),
    /// Write an sbatch script for a Lumen job and submit it to Slurm.
    Submit(SubmitArgs),
    /// Benchmarks with their baseline in the same run.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Internal: one rank of a benchmark (started by `lumen bench`).
    #[command(hide = true, subcommand)]
    BenchWorker(BenchCommand),
}

#[derive(Debug, Args)]
struct SubmitArgs {
    /// Nodes to allocate.
    #[arg(short = 'N', long, default_value_t = 1)]
    nodes: u32,
    /// Ranks on each node.
    #[arg(long, default_value_t = 1)]
    ntasks_per_node: u32,
    /// CPUs per rank (each rank is bound to its CPUs).
    #[arg(short = 'c', long)]
    cpus_per_task: Option<u32>,
    /// GPUs per node.
    #[arg(long)]
    gpus_per_node: Option<u32>,
    /// Time limit (minutes, HH:MM:SS, D-HH:MM:SS).
    #[arg(short = 't', long)]
    time: Option<String>,
    /// Partition.
    #[arg(short = 'p', long)]
    partition: Option<String>,
    /// Account to charge.
    #[arg(short = 'A', long)]
    account: Option<String>,
    /// Job name.
    #[arg(short = 'J', long)]
    job_name: Option<String>,
    /// Standard output file (Slurm patterns like %j allowed).
    #[arg(short = 'o', long)]
    output: Option<String>,
    /// Standard error file.
    #[arg(short = 'e', long)]
    error: Option<String>,
    /// Working directory of the job.
    #[arg(long)]
    chdir: Option<String>,
    /// Environment for the ranks, NAME=VALUE (repeatable).
    #[arg(long = "env", value_name = "NAME=VALUE")]
    env: Vec<String>,
    /// Bootstrap through PMI-2 (`srun --mpi=pmi2`).
    #[arg(long)]
    pmi2: bool,
    /// Print the script instead of submitting it.
    #[arg(long)]
    dry_run: bool,
    /// Wait for the job to end and exit with its exit code.
    #[arg(long)]
    wait: bool,
    /// The program each rank runs, and its arguments (after `--`).
    #[arg(required = true, trailing_var_arg = true, value_name = "PROGRAM ARGS")]
    command: Vec<String>,
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// Point-to-point latency and bandwidth, shared memory and TCP, beside Open MPI.
    Transport(TransportBenchArgs),
    /// Collective latency (allreduce, bcast, ...) beside Open MPI.
    Collectives(CollectivesBenchArgs),
    /// Tasks, actor calls and put/get beside Ray (its microbenchmark's rows).
    #[command(alias = "core")]
    Runtime(RuntimeBenchArgs),
}

#[derive(Debug, Args)]
struct RuntimeBenchArgs {
    /// Worker processes of the embedded cluster (Ray: num_cpus).
    #[arg(long, default_value_t = 4)]
    workers: u32,
    /// Iteration scale: 1.0 for the full counts, 0.05 for a smoke run.
    #[arg(long, default_value_t = 1.0)]
    scale: f64,
    /// "ray": also run Ray's side (installs Ray into --ray-venv if missing).
    #[arg(long, value_name = "NAME")]
    baseline: Option<String>,
    /// Ray's virtual environment.
    #[arg(long, default_value = "/opt/lumen/ray-venv")]
    ray_venv: std::path::PathBuf,
    /// Also write the rows as JSON to this file.
    #[arg(long, value_name = "FILE")]
    json: Option<std::path::PathBuf>,
}

#[derive(Debug, Args)]
struct CollectivesBenchArgs {
    /// Sizes in bytes, comma separated.
    #[arg(long, value_delimiter = ',', default_values_t = lumen::bench::collectives::DEFAULT_SIZES.to_vec())]
    sizes: Vec<usize>,
    /// Rank counts on this node, comma separated.
    #[arg(long, value_delimiter = ',', default_values_t = vec![2u32, 4])]
    ranks: Vec<u32>,
    /// Operations, comma separated.
    #[arg(long, value_delimiter = ',', default_values_t = lumen::bench::collectives::OPS.iter().map(|s| s.to_string()).collect::<Vec<_>>())]
    ops: Vec<String>,
    /// Iteration scale: 1.0 for OSU-like counts, 0.01 for a smoke run.
    #[arg(long, default_value_t = 1.0)]
    scale: f64,
    /// Skip the Open MPI baseline.
    #[arg(long)]
    no_baseline: bool,
    /// Also measure 3 network-namespace nodes x 2 ranks (root).
    #[arg(long)]
    netns: bool,
    /// Also write the rows as JSON to this file.
    #[arg(long, value_name = "FILE")]
    json: Option<std::path::PathBuf>,
}

#[derive(Debug, Args)]
struct TransportBenchArgs {
    /// Message sizes in bytes, comma separated.
    #[arg(long, value_delimiter = ',', default_values_t = lumen::bench::transport::DEFAULT_SIZES.to_vec())]
    sizes: Vec<usize>,
    /// Iteration scale: 1.0 for OSU-like counts, 0.01 for a smoke run.
    #[arg(long, default_value_t = 1.0)]
    scale: f64,
    /// Only shared memory.
    #[arg(long, conflicts_with = "tcp_only")]
    shm_only: bool,
    /// Only TCP.
    #[arg(long)]
    tcp_only: bool,
    /// Skip the Open MPI baseline.
    #[arg(long)]
    no_baseline: bool,
    /// Also measure TCP between two network-namespace hosts (root) against
    /// raw sockets and iperf3.
    #[arg(long)]
    netns: bool,
    /// Also write the rows as JSON to this file.
    #[arg(long, value_name = "FILE")]
    json: Option<std::path::PathBuf>,
}

#[derive(Debug, Args)]
struct RunArgs {
    /// Number of ranks.
    #[arg(short = 'n', long = "ranks", value_name = "N")]
    ranks: u32,
    /// Hosts and their slots, filled in order: `h1:4,h2:4` (slots default to 1).
    #[arg(long, value_name = "HOST[:SLOTS],...")]
    hosts: Option<String>,
    /// Command that runs a rank on another host; `{host}` is replaced by the
    /// host name (appended when absent), e.g. "ssh {host}" or
    /// "ip netns exec {host}". "local" spawns every rank here.
    #[arg(long, value_name = "TEMPLATE")]
    launch_agent: Option<String>,
    /// Prefix each output line with `[rank] `.
    #[arg(long)]
    label: bool,
    /// A rank other than 0 that fails does not stop the job (rank 0's status
    /// is the job's): runtime jobs then retry the lost rank's tasks and
    /// restart its actors elsewhere, as Ray does when a worker dies. (Inside a
    /// Slurm allocation, where this runs srun, Slurm's own policy applies.)
    #[arg(long)]
    keep_going: bool,
    /// Address the rendezvous listens on when ranks run on other hosts
    /// (default: chosen from LUMEN_TCP_IF and the interfaces).
    #[arg(long, value_name = "IP")]
    rendezvous_bind: Option<IpAddr>,
    /// The program each rank runs, and its arguments (after `--`).
    #[arg(required = true, trailing_var_arg = true, value_name = "PROGRAM ARGS")]
    command: Vec<OsString>,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("LUMEN_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run(args),
        Command::Submit(args) => submit(args),
        Command::Bench(BenchCommand::Transport(args)) => bench_transport(args),
        Command::BenchWorker(BenchCommand::Transport(args)) => bench_transport_worker(args),
        Command::Bench(BenchCommand::Collectives(args)) => bench_collectives(args),
        Command::Bench(BenchCommand::Runtime(args)) => bench_runtime(args),
        Command::BenchWorker(BenchCommand::Runtime(_)) => Err(anyhow::anyhow!(
            "the runtime benchmark has no worker command"
        )),
        Command::BenchWorker(BenchCommand::Collectives(args)) => bench_collectives_worker(args),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("lumen: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let mut command = args.command.into_iter();
    let program = command.next().ok_or_else(|| {
        anyhow::anyhow!("no program given; usage: lumen run -n N -- PROGRAM ARGS...")
    })?;
    if args.hosts.is_none() && args.launch_agent.is_none() {
        let in_allocation = lumen::submit::srun_in_allocation(
            |name| std::env::var(name).ok(),
            args.ranks,
            args.label,
            program.clone(),
            command.clone().collect(),
        )?;
        if let Some(argv) = in_allocation {
            let status = std::process::Command::new(&argv[0])
                .args(&argv[1..])
                .status()
                .map_err(|e| anyhow::anyhow!("running srun inside the allocation: {e}"))?;
            return Ok(ExitCode::from(
                u8::try_from(status.code().unwrap_or(1)).unwrap_or(1),
            ));
        }
    }
    let spec = JobSpec {
        ranks: args.ranks,
        hosts: args.hosts.as_deref().map(parse_hosts).transpose()?,
        program,
        args: command.collect(),
        env: Vec::new(),
        label_output: args.label,
        launch_agent: args.launch_agent,
        rendezvous_bind: args.rendezvous_bind,
        keep_going: args.keep_going,
    };
    let outcome = run_job(&spec)?;
    // Exit codes above 255 cannot be returned; clamp to a failure.
    let code = u8::try_from(outcome.exit_code).unwrap_or(1);
    Ok(ExitCode::from(code))
}

fn submit(args: SubmitArgs) -> anyhow::Result<ExitCode> {
    let env = args
        .env
        .iter()
        .map(|pair| {
            pair.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .ok_or_else(|| anyhow::anyhow!("--env {pair:?} is not NAME=VALUE"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let spec = lumen_slurm::sbatch::BatchSpec {
        job_name: args.job_name,
        nodes: args.nodes,
        ntasks_per_node: args.ntasks_per_node,
        cpus_per_task: args.cpus_per_task,
        gpus_per_node: args.gpus_per_node,
        time: args.time,
        partition: args.partition,
        account: args.account,
        output: args.output,
        error: args.error,
        chdir: args.chdir,
        env,
        mpi: args.pmi2.then(|| "pmi2".to_owned()),
        command: args.command,
    };
    use lumen::submit::SubmitOutcome;
    let announce = |job_id: &str| println!("submitted batch job {job_id}");
    match lumen::submit::submit(&spec, args.dry_run, args.wait, announce)? {
        SubmitOutcome::DryRun(script) => print!("{script}"),
        SubmitOutcome::Submitted { .. } => {}
        SubmitOutcome::Finished { job_id, exit_code } => {
            println!("batch job {job_id} finished with exit code {exit_code}");
            return Ok(ExitCode::from(u8::try_from(exit_code).unwrap_or(1)));
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn bench_transport(args: TransportBenchArgs) -> anyhow::Result<ExitCode> {
    let options = lumen::bench::TransportBenchOptions {
        sizes: args.sizes,
        scale: args.scale,
        shm: !args.tcp_only,
        tcp: !args.shm_only,
        baseline: !args.no_baseline,
        netns: args.netns,
    };
    let rows = lumen::bench::transport(&options)?;
    lumen::bench::print_table(&rows);
    if let Some(path) = args.json {
        std::fs::write(&path, serde_json::to_string_pretty(&rows)?)?;
        println!("wrote {}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

fn bench_transport_worker(args: TransportBenchArgs) -> anyhow::Result<ExitCode> {
    use lumen::bench::transport::{bandwidth, iterations, latency};
    let job = lumen::bootstrap::join()?;
    anyhow::ensure!(
        job.size() == 2,
        "the transport benchmark needs exactly 2 ranks, got {}",
        job.size()
    );
    lumen::bench::pin_to_core(job.world.rank as usize);
    let ep = job.endpoint.clone();
    for &size in &args.sizes {
        let usec = latency(&ep, size, iterations(size, args.scale))?;
        if ep.rank() == 0 {
            println!("{{\"test\":\"latency\",\"size\":{size},\"usec\":{usec:.3}}}");
        }
    }
    for &size in &args.sizes {
        let mbps = bandwidth(&ep, size, iterations(size, args.scale))?;
        if ep.rank() == 0 {
            println!("{{\"test\":\"bandwidth\",\"size\":{size},\"mbps\":{mbps:.2}}}");
        }
    }
    job.finish()?;
    Ok(ExitCode::SUCCESS)
}

fn bench_collectives(args: CollectivesBenchArgs) -> anyhow::Result<ExitCode> {
    let options = lumen::bench::collectives::CollectivesBenchOptions {
        sizes: args.sizes,
        ranks: args.ranks,
        scale: args.scale,
        ops: args.ops,
        baseline: !args.no_baseline,
        netns: args.netns,
    };
    let rows = lumen::bench::collectives::run(&options)?;
    lumen::bench::collectives::print_table(&rows);
    if let Some(path) = args.json {
        std::fs::write(&path, serde_json::to_string_pretty(&rows)?)?;
        println!("wrote {}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

fn bench_collectives_worker(args: CollectivesBenchArgs) -> anyhow::Result<ExitCode> {
    let job = lumen::bootstrap::join()?;
    // Pin only when every rank of the job gets a core of its own on this
    // machine (namespace "nodes" share it, so the local rank is no guide).
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if job.size() as usize <= cores {
        lumen::bench::pin_to_core(job.world.rank as usize);
    }
    let world = lumen::world_communicator(&job)?;
    lumen::bench::collectives::worker(&world, &args.sizes, &args.ops, args.scale)?;
    drop(world);
    job.finish()?;
    Ok(ExitCode::SUCCESS)
}

fn bench_runtime(args: RuntimeBenchArgs) -> anyhow::Result<ExitCode> {
    let options = lumen::bench::runtime::RuntimeBenchOptions {
        workers: args.workers,
        scale: args.scale,
        ray: args.baseline.as_deref() == Some("ray"),
        ray_venv: args.ray_venv,
    };
    let rows = lumen::bench::runtime::run(&options)?;
    lumen::bench::runtime::print_table(&rows);
    if let Some(path) = args.json {
        std::fs::write(&path, serde_json::to_string_pretty(&rows)?)?;
        println!("wrote {}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_arguments_parse() {
        let cli = Cli::try_parse_from([
            "lumen", "run", "-n", "4", "--hosts", "a:2,b:2", "--label", "--", "./app", "-x", "--y",
        ])
        .expect("valid command line");
        let Command::Run(args) = cli.command else {
            panic!("parsed as another command")
        };
        assert_eq!(args.ranks, 4);
        assert_eq!(args.hosts.as_deref(), Some("a:2,b:2"));
        assert!(args.label);
        assert_eq!(
            args.command,
            vec![OsString::from("./app"), "-x".into(), "--y".into()]
        );
        assert!(Cli::try_parse_from(["lumen", "run", "-n", "4"]).is_err());
    }
}
