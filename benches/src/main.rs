//! `lumen-bench`: the benchmark suites behind `lumen bench` (which runs this
//! executable with its arguments, see the crate docs), and their workers.
//!
//! Users type `lumen bench transport|collectives|runtime ...`; running
//! `lumen-bench transport ...` directly is the same. Two hidden commands
//! serve the suites themselves: `launch` starts a job of N ranks as `lumen
//! run` does (the same `lumen_launcher::spawn` code), and `worker` is one
//! rank of the transport or collectives suite.

use std::ffi::OsString;
use std::net::IpAddr;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use lumen_benches::{collectives, runtime, transport};
use lumen_launcher::spawn::{parse_hosts, JobSpec};
use lumen_launcher::submit::run_job_or_srun;

/// Lumen's benchmarks, each with its baseline in the same run (`lumen bench`).
#[derive(Debug, Parser)]
#[command(name = "lumen-bench", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Point-to-point latency and bandwidth, shared memory and TCP, beside Open MPI.
    Transport(TransportBenchArgs),
    /// Collective latency (allreduce, bcast, ...) beside Open MPI.
    Collectives(CollectivesBenchArgs),
    /// Tasks, actor calls and put/get beside Ray (its microbenchmark's rows).
    #[command(alias = "core")]
    Runtime(RuntimeBenchArgs),
    /// The scheduler at scale: placement decisions, placement groups and
    /// shard plans over a synthetic cluster (in-process).
    Sched(SchedBenchArgs),
    /// Object pulls between two namespace hosts, chunked and one-sided,
    /// beside iperf3.
    Objects(ObjectsBenchArgs),
    /// One-sided reads on each fabric backend beside fi_pingpong and Open
    /// MPI (also `transport --fabric NAME`).
    Fabric(FabricBenchArgs),
    /// Renders `--json` reports as BENCHMARKS.md sections (with --update,
    /// replaces each suite's generated section in that file).
    Markdown {
        /// Reports written by `--json`.
        #[arg(required = true)]
        reports: Vec<std::path::PathBuf>,
        /// The Markdown file whose generated sections are replaced.
        #[arg(long, value_name = "FILE")]
        update: Option<std::path::PathBuf>,
    },
    /// Launch to ready and to exit of `lumen run -n N -- hello_ranks`
    /// beside `mpirun -n N` (MPI_Init, a barrier, MPI_Finalize).
    Startup(StartupBenchArgs),
    /// Draws a `--json` report as an SVG plot (one panel per transport or
    /// layout and test, Lumen and its baselines on log axes).
    Plot {
        /// A report written by `--json`.
        report: std::path::PathBuf,
        /// The SVG file to write.
        #[arg(long, value_name = "FILE.svg")]
        out: std::path::PathBuf,
    },
    /// Fault injection for long runs: workers SIGKILLed during a 10k-task
    /// DAG, round after round; every result checked (RELIABILITY.md).
    Chaos(ChaosArgs),
    /// Internal: starts the ranks of a suite (as `lumen run`).
    #[command(hide = true)]
    Launch(LaunchArgs),
    /// Internal: one rank of a benchmark (started through `launch`).
    #[command(hide = true, subcommand)]
    Worker(WorkerCommand),
}

#[derive(Debug, Subcommand)]
enum WorkerCommand {
    /// A rank of the transport suite.
    Transport(TransportBenchArgs),
    /// A rank of the collectives suite.
    Collectives(CollectivesBenchArgs),
    /// The driver of one objects round.
    Objects(ObjectsWorkerArgs),
    /// One chaos round (prints its report as a JSON line).
    ChaosRound {
        #[arg(long)]
        workers: u32,
        #[arg(long)]
        kill: u32,
        #[arg(long)]
        layer: usize,
        #[arg(long)]
        seed: u64,
    },
    /// The serving side of the fabric suite.
    FabricServer {
        /// The backend.
        provider: String,
    },
}

#[derive(Debug, Args)]
struct FabricBenchArgs {
    /// Backends: tcp, vm, ofi/<provider>, verbs, comma separated; `ofi`
    /// (both libfabric providers here) or `all` (every backend built).
    #[arg(long, alias = "providers", default_value = "all")]
    backends: String,
    /// Skip the Open MPI baseline.
    #[arg(long)]
    no_baseline: bool,
    /// Sizes in bytes, comma separated (K, M suffixes allowed).
    #[arg(long, default_value = "8,4K,64K,1M,4M")]
    sizes: String,
    /// Rounds (Lumen and fi_pingpong alternate).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Iteration scale: 1.0 for the full counts, 0.05 for a smoke run.
    #[arg(long, default_value_t = 1.0)]
    scale: f64,
    /// Also write the rows as JSON to this file.
    #[arg(long, value_name = "FILE")]
    json: Option<std::path::PathBuf>,
}

#[derive(Debug, Args)]
struct ObjectsBenchArgs {
    /// Object sizes in bytes, comma separated (K, M, G suffixes allowed).
    #[arg(long, default_value = "1M,16M,256M,1G")]
    sizes: String,
    /// Rounds per fabric (alternating).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Fabrics to compare; default tcp, and ofi when built with it.
    #[arg(long)]
    fabrics: Option<String>,
    /// Also write the rows as JSON to this file.
    #[arg(long, value_name = "FILE")]
    json: Option<std::path::PathBuf>,
}

#[derive(Debug, Args)]
struct ObjectsWorkerArgs {
    /// Object sizes in bytes, comma separated.
    #[arg(long)]
    sizes: String,
}

/// `1M`, `16M`, `1G`, `4096`.
fn parse_size(text: &str) -> anyhow::Result<usize> {
    let text = text.trim();
    let (digits, scale) = match text.chars().last() {
        Some('K' | 'k') => (&text[..text.len() - 1], 1usize << 10),
        Some('M' | 'm') => (&text[..text.len() - 1], 1 << 20),
        Some('G' | 'g') => (&text[..text.len() - 1], 1 << 30),
        _ => (text, 1),
    };
    let n: usize = digits
        .parse()
        .map_err(|_| anyhow::anyhow!("{text:?} is not a size like 16M"))?;
    n.checked_mul(scale)
        .ok_or_else(|| anyhow::anyhow!("{text} is too large"))
}

fn parse_sizes(list: &str) -> anyhow::Result<Vec<usize>> {
    list.split(',').map(parse_size).collect()
}

#[derive(Debug, Args)]
struct SchedBenchArgs {
    /// Nodes of the synthetic cluster.
    #[arg(long, default_value_t = 1024)]
    nodes: usize,
    /// GPUs (one rank each) per node.
    #[arg(long, default_value_t = 8)]
    gpus_per_node: usize,
    /// Iteration scale: 1.0 for the full counts, 0.01 for a smoke run.
    #[arg(long, default_value_t = 1.0)]
    scale: f64,
    /// Also write the rows as JSON to this file.
    #[arg(long, value_name = "FILE")]
    json: Option<std::path::PathBuf>,
}

#[derive(Debug, Args)]
struct ChaosArgs {
    /// Worker ranks per round.
    #[arg(long, default_value_t = 4)]
    workers: u32,
    /// Workers SIGKILLed per round.
    #[arg(long, default_value_t = 2)]
    kill: u32,
    /// Leaves per round: 4 x layer + 2 tasks (2500: the 10,002-task DAG).
    #[arg(long, default_value_t = 2500)]
    layer: usize,
    /// Rounds (at least this many).
    #[arg(long, default_value_t = 10)]
    rounds: u32,
    /// Keep starting rounds for this many seconds.
    #[arg(long, value_name = "SECONDS")]
    duration: Option<u64>,
    /// A round taking longer is counted as a hang and killed.
    #[arg(long, value_name = "SECONDS", default_value_t = 120)]
    timeout: u64,
    /// Seed of the first round.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Also write the rounds as JSON to this file.
    #[arg(long, value_name = "FILE")]
    json: Option<std::path::PathBuf>,
}

#[derive(Debug, Args)]
struct StartupBenchArgs {
    /// Rank counts, comma separated.
    #[arg(long, value_delimiter = ',', default_values_t = vec![2u32, 8, 32, 128, 256])]
    ranks: Vec<u32>,
    /// Alternating rounds (Lumen, then mpirun) per rank count.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Run mpirun only up to this many ranks.
    #[arg(long, default_value_t = 32)]
    baseline_max_ranks: u32,
    /// Skip the Open MPI baseline.
    #[arg(long)]
    no_baseline: bool,
    /// Also these rank counts over 3 network-namespace nodes: connecting
    /// on first use against all-to-all at start (root).
    #[arg(long, value_delimiter = ',')]
    netns_ranks: Vec<u32>,
    /// Also write the report as JSON to this file.
    #[arg(long, value_name = "FILE")]
    json: Option<std::path::PathBuf>,
    /// Also draw the report as an SVG (latency, bandwidth or time against
    /// size or ranks, log axes, one panel per test).
    #[arg(long, value_name = "FILE.svg")]
    plot: Option<std::path::PathBuf>,
}

#[derive(Debug, Args)]
struct RuntimeBenchArgs {
    /// Worker processes of the embedded cluster (Ray: num_cpus).
    #[arg(long, default_value_t = 4)]
    workers: u32,
    /// Iteration scale: 1.0 for the full counts, 0.05 for a smoke run.
    #[arg(long, default_value_t = 1.0)]
    scale: f64,
    /// Baselines run beside Lumen in every round, comma separated:
    /// "lamellar" (builds benches/lamellar if missing), "ray" (installs Ray
    /// into --ray-venv if missing), "timeline" (Lumen itself with
    /// LUMEN_TIMELINE recording: the timeline's cost).
    #[arg(long, value_name = "NAMES")]
    baseline: Option<String>,
    /// Rounds: Lumen, then each baseline, this many times (ABAB...).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Ray's virtual environment.
    #[arg(long, default_value = "/opt/lumen/ray-venv")]
    ray_venv: std::path::PathBuf,
    /// Task Bench's METG instead of the rows: the smallest task duration
    /// at which Lumen still runs at 50% efficiency, with no dependencies
    /// and with 3 per task, beside the published MPI figures.
    #[arg(long)]
    metg: bool,
    /// Lamellar's side (scripts/install-lamellar-baseline.sh builds it).
    #[arg(long)]
    lamellar_bin: Option<std::path::PathBuf>,
    /// Also write the rows as JSON to this file.
    #[arg(long, value_name = "FILE")]
    json: Option<std::path::PathBuf>,
}

#[derive(Debug, Args)]
struct CollectivesBenchArgs {
    /// Sizes in bytes, comma separated.
    #[arg(long, value_delimiter = ',', default_values_t = collectives::DEFAULT_SIZES.to_vec())]
    sizes: Vec<usize>,
    /// Rank counts on this node, comma separated.
    #[arg(long, value_delimiter = ',', default_values_t = vec![2u32, 4])]
    ranks: Vec<u32>,
    /// Operations, comma separated.
    #[arg(long, value_delimiter = ',', default_values_t = collectives::OPS.iter().map(|s| s.to_string()).collect::<Vec<_>>())]
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
    /// Alternating rounds of Lumen and Open MPI per layout (medians and
    /// the range of per-round ratios; with --netns each round builds the
    /// namespaces afresh).
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// Also write the rows as JSON to this file.
    #[arg(long, value_name = "FILE")]
    json: Option<std::path::PathBuf>,
    /// Also draw the report as an SVG (latency, bandwidth or time against
    /// size or ranks, log axes, one panel per test).
    #[arg(long, value_name = "FILE.svg")]
    plot: Option<std::path::PathBuf>,
}

#[derive(Debug, Args)]
struct TransportBenchArgs {
    /// Message sizes in bytes, comma separated.
    #[arg(long, value_delimiter = ',', default_values_t = transport::DEFAULT_SIZES.to_vec())]
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
    /// Lumen's TCP receivers to measure, comma separated (epoll, uring):
    /// each alternates with Open MPI; the first is reported as "tcp", the
    /// others as "tcp-NAME".
    #[arg(long, value_delimiter = ',')]
    tcp_backends: Vec<String>,
    /// Skip the Open MPI baseline.
    #[arg(long)]
    no_baseline: bool,
    /// Also measure TCP between two network-namespace hosts (root) against
    /// raw sockets and iperf3.
    #[arg(long)]
    netns: bool,
    /// Measure one-sided reads on a fabric backend instead of messages
    /// (tcp, vm, ofi, verbs, all, or a comma list such as ofi/shm): the
    /// fabric suite, beside fi_pingpong and Open MPI.
    #[arg(long, value_name = "NAME")]
    fabric: Option<String>,
    /// Rounds: Lumen and its baselines alternate, each round's ratio is
    /// kept, the median and its range reported (a round beside other load
    /// is redone once, then flagged).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Also write the rows as JSON to this file.
    #[arg(long, value_name = "FILE")]
    json: Option<std::path::PathBuf>,
    /// Also draw the report as an SVG (latency, bandwidth or time against
    /// size or ranks, log axes, one panel per test).
    #[arg(long, value_name = "FILE.svg")]
    plot: Option<std::path::PathBuf>,
}

/// The part of `lumen run`'s arguments the suites use.
#[derive(Debug, Args)]
struct LaunchArgs {
    /// Number of ranks.
    #[arg(short = 'n', long = "ranks", value_name = "N")]
    ranks: u32,
    /// Hosts and their slots, filled in order: `h1:4,h2:4` (slots default to 1).
    #[arg(long, value_name = "HOST[:SLOTS],...")]
    hosts: Option<String>,
    /// Command that runs a rank on another host (`{host}` is replaced by the
    /// host name); "local" spawns every rank here.
    #[arg(long, value_name = "TEMPLATE")]
    launch_agent: Option<String>,
    /// Address the rendezvous listens on when ranks run on other hosts.
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
        Command::Transport(args) => bench_transport(args),
        Command::Collectives(args) => bench_collectives(args),
        Command::Runtime(args) => bench_runtime(args),
        Command::Sched(args) => bench_sched(args),
        Command::Objects(args) => bench_objects(args),
        Command::Fabric(args) => bench_fabric(args),
        Command::Worker(WorkerCommand::FabricServer { provider }) => fabric_server(&provider),
        Command::Worker(WorkerCommand::Objects(args)) => parse_sizes(&args.sizes)
            .and_then(|sizes| lumen_benches::objects::worker(&sizes).map(|()| ExitCode::SUCCESS)),
        Command::Chaos(args) => bench_chaos(args),
        Command::Startup(args) => bench_startup(args),
        Command::Plot { report, out } => plot_file(&report, &out),
        Command::Markdown { reports, update } => markdown(&reports, update.as_deref()),
        Command::Worker(WorkerCommand::ChaosRound {
            workers,
            kill,
            layer,
            seed,
        }) => lumen_benches::chaos::round(workers, kill, layer, seed).and_then(|report| {
            println!("{}", serde_json::to_string(&report)?);
            Ok(ExitCode::SUCCESS)
        }),
        Command::Launch(args) => launch(args),
        Command::Worker(WorkerCommand::Transport(args)) => transport_worker(args),
        Command::Worker(WorkerCommand::Collectives(args)) => collectives_worker(args),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("lumen bench: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// `lumen run`, as the suites use it: inside a Slurm allocation through
/// `srun`, else through the launcher's spawner.
fn launch(args: LaunchArgs) -> anyhow::Result<ExitCode> {
    let mut command = args.command.into_iter();
    let program = command
        .next()
        .ok_or_else(|| anyhow::anyhow!("no program given; usage: launch -n N -- PROGRAM ARGS"))?;
    let spec = JobSpec {
        ranks: args.ranks,
        hosts: args.hosts.as_deref().map(parse_hosts).transpose()?,
        program,
        args: command.collect(),
        env: Vec::new(),
        label_output: false,
        launch_agent: args.launch_agent,
        rendezvous_bind: args.rendezvous_bind,
        keep_going: false,
    };
    Ok(ExitCode::from(run_job_or_srun(&spec)?))
}

fn markdown(
    reports: &[std::path::PathBuf],
    update: Option<&std::path::Path>,
) -> anyhow::Result<ExitCode> {
    use anyhow::Context;
    let mut document = match update {
        Some(path) => Some(
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?,
        ),
        None => None,
    };
    let mut loaded = Vec::new();
    for path in reports {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let report: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        loaded.push((report, name));
    }
    // One report: its section; several of one suite: one section with a
    // ratio per invocation and their spread.
    let section = match loaded.as_slice() {
        [(report, name)] => lumen_benches::rounds::markdown(report, name)?,
        many => lumen_benches::rounds::markdown_invocations(many)?,
    };
    match document.as_mut() {
        Some(doc) => *doc = lumen_benches::rounds::update_section(doc, &section),
        None => print!("{section}"),
    }
    if let (Some(path), Some(doc)) = (update, document) {
        std::fs::write(path, doc).with_context(|| format!("writing {}", path.display()))?;
        println!("updated {}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

fn bench_chaos(args: ChaosArgs) -> anyhow::Result<ExitCode> {
    let options = lumen_benches::chaos::ChaosOptions {
        workers: args.workers,
        kill: args.kill,
        layer: args.layer,
        rounds: args.rounds,
        duration: args.duration.map(std::time::Duration::from_secs),
        timeout: std::time::Duration::from_secs(args.timeout),
        seed: args.seed,
    };
    let reports = lumen_benches::chaos::run(&options)?;
    let clean = lumen_benches::chaos::summarize(&reports);
    write_json(args.json.as_deref(), &reports)?;
    Ok(if clean {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `lumen-bench plot REPORT --out FILE.svg`.
fn plot_file(report: &std::path::Path, out: &std::path::Path) -> anyhow::Result<ExitCode> {
    use anyhow::Context;
    let text =
        std::fs::read_to_string(report).with_context(|| format!("reading {}", report.display()))?;
    let value: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", report.display()))?;
    lumen_benches::plot::plot(&value, out)?;
    println!("wrote {}", out.display());
    Ok(ExitCode::SUCCESS)
}

/// Draws a report when `--plot FILE.svg` was given.
fn write_plot(
    path: Option<&std::path::Path>,
    report: &impl serde::Serialize,
) -> anyhow::Result<()> {
    if let Some(path) = path {
        lumen_benches::plot::plot(&serde_json::to_value(report)?, path)?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

/// Writes a suite's rows as JSON when `--json FILE` was given.
fn write_json(
    path: Option<&std::path::Path>,
    rows: &impl serde::Serialize,
) -> anyhow::Result<ExitCode> {
    if let Some(path) = path {
        std::fs::write(path, serde_json::to_string_pretty(rows)?)?;
        println!("wrote {}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

fn bench_transport(args: TransportBenchArgs) -> anyhow::Result<ExitCode> {
    if let Some(fabric) = &args.fabric {
        let options = lumen_benches::fabric::FabricBenchOptions {
            backends: lumen_benches::fabric::expand_fabric(fabric),
            mpi: !args.no_baseline,
            sizes: args.sizes.clone(),
            rounds: args.rounds,
            scale: args.scale,
        };
        let rows = lumen_benches::fabric::run(&options)?;
        lumen_benches::fabric::print_table(&rows);
        return write_json(args.json.as_deref(), &rows);
    }
    let options = lumen_benches::TransportBenchOptions {
        sizes: args.sizes,
        scale: args.scale,
        shm: !args.tcp_only,
        tcp: !args.shm_only,
        tcp_backends: args.tcp_backends.clone(),
        baseline: !args.no_baseline,
        netns: args.netns,
        rounds: args.rounds,
    };
    let report = lumen_benches::transport(&options)?;
    report.info.print();
    lumen_benches::print_table(&report.rows);
    write_plot(args.plot.as_deref(), &report)?;
    write_json(args.json.as_deref(), &report)
}

fn transport_worker(args: TransportBenchArgs) -> anyhow::Result<ExitCode> {
    use lumen_benches::transport::{bandwidth, iterations, latency};
    let job = lumen::bootstrap::join()?;
    anyhow::ensure!(
        job.size() == 2,
        "the transport benchmark needs exactly 2 ranks, got {}",
        job.size()
    );
    lumen_benches::pin_to_core(job.world.rank as usize);
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
    let options = collectives::CollectivesBenchOptions {
        sizes: args.sizes,
        ranks: args.ranks,
        scale: args.scale,
        ops: args.ops,
        baseline: !args.no_baseline,
        netns: args.netns,
        rounds: args.rounds,
    };
    let report = collectives::run(&options)?;
    report.info.print();
    collectives::print_table(&report.rows);
    write_plot(args.plot.as_deref(), &report)?;
    write_json(args.json.as_deref(), &report)
}

fn bench_startup(args: StartupBenchArgs) -> anyhow::Result<ExitCode> {
    let options = lumen_benches::startup::StartupBenchOptions {
        ranks: args.ranks,
        rounds: args.rounds,
        baseline_max_ranks: args.baseline_max_ranks,
        baseline: !args.no_baseline,
        netns_ranks: args.netns_ranks,
    };
    let report = lumen_benches::startup::run(&options)?;
    report.info.print();
    lumen_benches::startup::print_table(&report.rows);
    write_plot(args.plot.as_deref(), &report)?;
    write_json(args.json.as_deref(), &report)
}

fn collectives_worker(args: CollectivesBenchArgs) -> anyhow::Result<ExitCode> {
    let job = lumen::bootstrap::join()?;
    // Pin only when every rank of the job gets a core of its own on this
    // machine (namespace "nodes" share it, so the local rank is no guide).
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if job.size() as usize <= cores {
        lumen_benches::pin_to_core(job.world.rank as usize);
    }
    let world = lumen::world_communicator(&job)?;
    collectives::worker(&world, &args.sizes, &args.ops, args.scale)?;
    drop(world);
    job.finish()?;
    Ok(ExitCode::SUCCESS)
}

fn bench_runtime(args: RuntimeBenchArgs) -> anyhow::Result<ExitCode> {
    let options = runtime::RuntimeBenchOptions {
        workers: args.workers,
        scale: args.scale,
        baselines: runtime::Baseline::parse_list(args.baseline.as_deref().unwrap_or(""))?,
        ray_venv: args.ray_venv,
        lamellar_bin: args
            .lamellar_bin
            .unwrap_or_else(runtime::default_lamellar_bin),
        rounds: args.rounds,
    };
    if args.metg {
        return bench_metg(&options, args.json.as_deref());
    }
    let report = runtime::run(&options)?;
    report.info.print();
    runtime::print_table(&report.rows);
    write_json(args.json.as_deref(), &report)
}

/// `lumen bench runtime --metg`: `--rounds` sweeps, the median METG of
/// each pattern beside Task Bench's published MPI figure.
fn bench_metg(
    options: &runtime::RuntimeBenchOptions,
    json: Option<&std::path::Path>,
) -> anyhow::Result<ExitCode> {
    #[derive(serde::Serialize)]
    struct MetgRow {
        test: String,
        unit: String,
        lumen: Option<f64>,
        lumen_rounds: Vec<Option<f64>>,
        baseline_name: String,
        baseline: f64,
        ratio: Option<f64>,
        rounds: usize,
    }
    let mut sweeps = Vec::new();
    for round in 0..options.rounds.max(1) {
        let load = lumen_benches::rounds::wait_quiet(std::time::Duration::from_secs(2));
        if load > lumen_benches::rounds::NOISY {
            eprintln!(
                "lumen bench: METG round {} starts beside other load ({:.0}%)",
                round + 1,
                load * 100.0
            );
        }
        sweeps.push(runtime::metg(options)?);
    }
    let mut rows = Vec::new();
    for (pattern, published) in runtime::TASK_BENCH_MPI_METG_NS {
        let values: Vec<Option<f64>> = sweeps
            .iter()
            .map(|(_, m)| m.iter().find(|(p, _)| p == pattern).and_then(|(_, v)| *v))
            .collect();
        let found: Vec<f64> = values.iter().flatten().copied().collect();
        let lumen = (found.len() == values.len() && !found.is_empty())
            .then(|| lumen_benches::rounds::median(&found));
        rows.push(MetgRow {
            test: format!("METG(50%), {pattern}"),
            unit: "us".into(),
            lumen,
            lumen_rounds: values,
            baseline_name: "Task Bench MPI, published (SC20)".into(),
            baseline: published / 1e3,
            // Above 1: Lumen's tasks may be that many times finer.
            ratio: lumen.map(|l| published / 1e3 / l),
            rounds: sweeps.len(),
        });
    }
    let info = lumen_benches::rounds::RunInfo::now(
        &format!("runtime metg, {} workers", options.workers),
        &format!(
            "Lumen: driver + {} worker processes, one task at a time each (LUMEN_BIND=auto); width {} tasks per step; baseline: published figures, not run here",
            options.workers,
            2 * options.workers.max(1)
        ),
    );
    info.print();
    println!(
        "{:<36} {:>12} {:>14} {:>10}",
        "test", "lumen us", "Task Bench MPI", "ratio"
    );
    for row in &rows {
        println!(
            "{:<36} {:>12} {:>14.2} {:>10}",
            row.test,
            row.lumen
                .map_or("none at 50%".into(), |v| format!("{v:.2}")),
            row.baseline,
            row.ratio.map_or("-".into(), |r| format!("{r:.3}x"))
        );
    }
    println!("(ratio: the published METG over Lumen's; above 1 Lumen's tasks may be finer)");
    if let Some((points, _)) = sweeps.last() {
        println!("last sweep:");
        for p in points {
            println!(
                "  {:<16} task {:>9.1} us  {:>7} tasks  efficiency {:>5.1}%  granularity {:>9.2} us",
                p.pattern,
                p.task_us,
                p.tasks,
                100.0 * p.efficiency,
                p.granularity_us
            );
        }
    }
    let report = lumen_benches::Report {
        info,
        loads: Vec::new(),
        rows,
    };
    write_json(json, &report)
}

fn bench_fabric(args: FabricBenchArgs) -> anyhow::Result<ExitCode> {
    let options = lumen_benches::fabric::FabricBenchOptions {
        backends: lumen_benches::fabric::expand_fabric(&args.backends),
        mpi: !args.no_baseline,
        sizes: parse_sizes(&args.sizes)?,
        rounds: args.rounds,
        scale: args.scale,
    };
    let rows = lumen_benches::fabric::run(&options)?;
    lumen_benches::fabric::print_table(&rows);
    write_json(args.json.as_deref(), &rows)
}

fn fabric_server(backend: &str) -> anyhow::Result<ExitCode> {
    lumen_benches::fabric::server(backend).map(|()| ExitCode::SUCCESS)
}

fn bench_objects(args: ObjectsBenchArgs) -> anyhow::Result<ExitCode> {
    let fabrics = match &args.fabrics {
        Some(list) => list.split(',').map(|f| f.trim().to_string()).collect(),
        None if cfg!(feature = "ofi") => vec!["tcp".to_string(), "ofi".to_string()],
        None => {
            eprintln!("lumen bench objects: built without the ofi feature, measuring tcp only (cargo build --release -p lumen-benches --features ofi)");
            vec!["tcp".to_string()]
        }
    };
    let options = lumen_benches::objects::ObjectsBenchOptions {
        sizes: parse_sizes(&args.sizes)?,
        rounds: args.rounds,
        fabrics,
    };
    let rows = lumen_benches::objects::run(&options)?;
    lumen_benches::objects::print_table(&rows);
    write_json(args.json.as_deref(), &rows)
}

fn bench_sched(args: SchedBenchArgs) -> anyhow::Result<ExitCode> {
    let options = lumen_benches::sched::SchedBenchOptions {
        nodes: args.nodes,
        gpus_per_node: args.gpus_per_node,
        scale: args.scale,
    };
    let rows = lumen_benches::sched::run(&options)?;
    lumen_benches::sched::print_table(&rows);
    write_json(args.json.as_deref(), &rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suite_and_internal_arguments_parse() {
        let cli = Cli::try_parse_from([
            "lumen-bench",
            "collectives",
            "--scale",
            "0.01",
            "--sizes",
            "8,65536",
            "--ranks",
            "2,3",
        ])
        .expect("valid command line");
        let Command::Collectives(args) = cli.command else {
            panic!("parsed as another command")
        };
        assert_eq!(args.sizes, vec![8, 65536]);
        assert_eq!(args.ranks, vec![2, 3]);
        let cli = Cli::try_parse_from([
            "lumen-bench",
            "launch",
            "-n",
            "2",
            "--",
            "/bin/lumen-bench",
            "worker",
            "transport",
            "--sizes",
            "8",
        ])
        .expect("valid command line");
        let Command::Launch(args) = cli.command else {
            panic!("parsed as another command")
        };
        assert_eq!(args.ranks, 2);
        assert_eq!(args.command.len(), 5);
        assert!(matches!(
            Cli::try_parse_from(["lumen-bench", "core"]).map(|c| c.command),
            Ok(Command::Runtime(_))
        ));
    }
}
