//! The `lumen` command line: `lumen run` starts a job on this machine (or on
//! hosts reached through a launch agent), like `mpirun`; `lumen submit`
//! writes and submits an sbatch script; `lumen bench` measures Lumen beside
//! its baselines.
//!
//! # `lumen bench` is an external subcommand
//!
//! The benchmark suites live in the `lumen-benches` package (`benches/`),
//! built as the `lumen-bench` executable. `lumen bench ARGS` runs
//! `lumen-bench ARGS` the way git and cargo run their external subcommands:
//! the `lumen-bench` next to this executable, else the first one on `PATH`;
//! its exit code is passed through. When it is missing, `lumen bench` says
//! how to build it (`cargo build --release -p lumen-benches`, or a plain
//! workspace `cargo build`). The suites are not linked into `lumen` because
//! they need the whole runtime (the runtime suite drives an embedded
//! cluster through the facade): a `lumen` binary that contained them would
//! make this package depend on its own benchmark crate.

use std::ffi::OsString;
use std::net::IpAddr;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use lumen_launcher::spawn::{parse_hosts, JobSpec};
use lumen_launcher::submit::run_job_or_srun;

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
    /// Benchmarks with their baseline in the same run: transport,
    /// collectives, runtime (`lumen bench --help`; runs `lumen-bench`).
    #[command(disable_help_flag = true)]
    Bench(BenchArgs),
    /// The machine as Lumen sees it (packages, NUMA nodes, cores, GPUs,
    /// NICs; like lstopo's text mode) and the binding it would choose for
    /// N local ranks.
    Topo(TopoArgs),
    /// A running job seen from outside: ranks alive and where, tasks
    /// running/queued/done per rank, actors, objects and arena use per
    /// node, placement groups, the slowest ranks. Authenticated with the
    /// job's secret (from ~/.lumen/jobs for lumen run jobs, derived from
    /// ~/.lumen/job-key for Slurm jobs, or LUMEN_JOB_SECRET).
    Status(StatusArgs),
    /// Timelines written with `LUMEN_TIMELINE=trace.json` (one file per
    /// rank): `lumen timeline merge trace.rank*.json -o trace.json` makes
    /// one Chrome trace of the job for ui.perfetto.dev.
    #[command(subcommand)]
    Timeline(TimelineCommand),
}

#[derive(Debug, Subcommand)]
enum TimelineCommand {
    /// Merges ranks' timeline files into one trace, sorted by time.
    Merge {
        /// The ranks' files (`trace.rank0.json` ...).
        #[arg(required = true)]
        files: Vec<std::path::PathBuf>,
        /// The merged trace.
        #[arg(short = 'o', long = "out", value_name = "FILE")]
        out: std::path::PathBuf,
    },
}

#[derive(Debug, Args)]
struct StatusArgs {
    /// A `lumen run` job id (see ~/.lumen/jobs) or a Slurm job id; without
    /// one, the one job this user runs here, else `SLURM_JOB_ID`.
    job: Option<String>,
    /// The job's rendezvous store, HOST:PORT (`LUMEN_RENDEZVOUS` of its
    /// ranks); the secret comes from LUMEN_JOB_SECRET and LUMEN_JOB_ID, or
    /// from the job file of that address.
    #[arg(long, value_name = "HOST:PORT", conflicts_with = "job")]
    rendezvous: Option<String>,
    /// Refresh every SECONDS (default 2) until the job ends.
    #[arg(long, value_name = "SECONDS", num_args = 0..=1, default_missing_value = "2")]
    watch: Option<f64>,
    /// Stop after this many views (with --watch).
    #[arg(long, value_name = "N")]
    count: Option<u64>,
    /// Print the status as JSON (one object per view).
    #[arg(long)]
    json: bool,
    /// Bound on finding the job and on each answer, in seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 10.0)]
    timeout: f64,
}

#[derive(Debug, Args)]
struct TopoArgs {
    /// Show the binding of this many local ranks.
    #[arg(long, value_name = "N")]
    ranks: Option<usize>,
    /// Read the machine from an hwloc XML file (`lstopo --of xml`) instead
    /// of discovering this one.
    #[arg(long, value_name = "FILE")]
    xml: Option<std::path::PathBuf>,
    /// CPUs the ranks may use, e.g. `0-7,16-23` (default: this process's
    /// affinity on the discovered machine, every CPU of an XML machine).
    #[arg(long, value_name = "LIST")]
    cpus: Option<String>,
    /// Print the machine and the binding as JSON instead.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct BenchArgs {
    /// What `lumen-bench` gets: a suite (transport, collectives, runtime)
    /// and its options.
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "ARGS"
    )]
    args: Vec<OsString>,
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
    /// The job outlives a failed rank or a lost node (`--no-kill` for the
    /// job and its step, `--kill-on-bad-exit=0`); its status is rank 0's.
    /// Runtime jobs retry the lost ranks' tasks and restart their actors.
    #[arg(long)]
    keep_going: bool,
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
    /// restart its actors elsewhere, as Ray does when a worker dies. Inside a
    /// Slurm allocation, where this runs srun, the step is started with
    /// `--kill-on-bad-exit=0 --no-kill`, so it also outlives a lost node.
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
        Command::Bench(args) => bench(args),
        Command::Topo(args) => topo(args),
        Command::Status(args) => status(args),
        Command::Timeline(TimelineCommand::Merge { files, out }) => merge_timelines(&files, &out),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("lumen: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn merge_timelines(
    files: &[std::path::PathBuf],
    out: &std::path::Path,
) -> anyhow::Result<ExitCode> {
    use anyhow::Context;
    let mut traces = Vec::with_capacity(files.len());
    for file in files {
        let text =
            std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        traces.push(
            serde_json::from_str(&text)
                .with_context(|| format!("{} is not a JSON timeline", file.display()))?,
        );
    }
    let merged = lumen::runtime::timeline::merge(&traces)
        .map_err(|e| anyhow::anyhow!("merging timelines: {e}"))?;
    std::fs::write(out, merged.to_string())
        .with_context(|| format!("writing {}", out.display()))?;
    println!(
        "wrote {} ({} events from {} files)",
        out.display(),
        merged["traceEvents"].as_array().map_or(0, Vec::len),
        files.len()
    );
    Ok(ExitCode::SUCCESS)
}

/// `lumen status`: find the job, then ask its rank 0 (once, or every
/// `--watch` seconds until it ends).
fn status(args: StatusArgs) -> anyhow::Result<ExitCode> {
    use lumen::runtime::status::{fetch, locate, render, Target};
    use std::io::IsTerminal;
    let timeout = std::time::Duration::from_secs_f64(args.timeout.max(0.1));
    let target = match (args.rendezvous, args.job) {
        (Some(addr), _) => Target::Rendezvous(addr),
        (None, Some(job)) => Target::Job(job),
        (None, None) => Target::Only,
    };
    let located = locate(&target, timeout).map_err(|e| anyhow::anyhow!(e))?;
    let clear = args.watch.is_some() && !args.json && std::io::stdout().is_terminal();
    let mut views = 0u64;
    loop {
        let status = match fetch(
            located.address.addr,
            &located.address.job_id,
            &located.secret,
            timeout,
        ) {
            Ok(status) => status,
            // Under --watch a job that ended is the end of the watch.
            Err(lumen::runtime::status::StatusError::Io { .. }) if views > 0 => {
                println!("job {} has ended", located.address.job_id);
                return Ok(ExitCode::SUCCESS);
            }
            Err(e) => return Err(e.into()),
        };
        views += 1;
        if args.json {
            println!("{}", serde_json::to_string(&status)?);
        } else {
            if clear {
                print!("\x1b[2J\x1b[H");
            }
            println!("{} (via {})", located.address.addr, located.how);
            print!("{}", render(&status));
        }
        let (Some(every), true) = (args.watch, args.count.is_none_or(|n| views < n)) else {
            return Ok(ExitCode::SUCCESS);
        };
        if !args.json {
            println!();
        }
        std::thread::sleep(std::time::Duration::from_secs_f64(every.max(0.05)));
    }
}

fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let mut command = args.command.into_iter();
    let program = command.next().ok_or_else(|| {
        anyhow::anyhow!("no program given; usage: lumen run -n N -- PROGRAM ARGS...")
    })?;
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
    Ok(ExitCode::from(run_job_or_srun(&spec)?))
}

/// `lumen topo`: discovery (hwloc XML or sysfs) and the binding policy
/// both live in `lumen_sched::topology`; this only prints them.
fn topo(args: TopoArgs) -> anyhow::Result<ExitCode> {
    use lumen_sched::topology::{bind_local_ranks, Topology};
    // The errors' messages carry their causes already: no `{:#}` chain.
    let flat = |e: &dyn std::fmt::Display| anyhow::anyhow!("{e}");
    let (topology, allowed, source) = match &args.xml {
        Some(path) => (
            Topology::from_hwloc_xml_file(path).map_err(|e| flat(&e))?,
            None,
            format!("hwloc XML {}", path.display()),
        ),
        None => {
            let (topology, source) = Topology::discover_with_source().map_err(|e| flat(&e))?;
            let source = match source {
                lumen_sched::topology::Source::Hwloc => "hwloc (discovered)",
                lumen_sched::topology::Source::Sysfs => "sysfs (discovered)",
            };
            (topology, this_process_cpus(), source.to_string())
        }
    };
    let allowed = match &args.cpus {
        Some(list) => Some(parse_cpu_list(list)?),
        None => allowed,
    };
    let binding = match args.ranks {
        Some(ranks) => Some(bind_local_ranks(&topology, ranks, allowed.as_deref())?),
        None => None,
    };
    if args.json {
        let out = serde_json::json!({ "source": source, "topology": topology, "binding": binding });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(ExitCode::SUCCESS);
    }
    print!("{}", topology.render());
    println!("(from {source})");
    if let Some(binding) = binding {
        println!();
        println!("binding of {} local ranks:", binding.len());
        for rank in &binding {
            let gpus: Vec<String> = rank
                .gpus
                .iter()
                .map(|g| format!("GPU {} ({})", g.index, g.pci_bus_id))
                .collect();
            let nic = rank.nic.as_ref().map(|n| {
                format!(
                    "NIC {} ({})",
                    n.name.as_deref().unwrap_or("?"),
                    n.pci_bus_id
                )
            });
            let mut notes = Vec::new();
            if rank.cpus_shared {
                notes.push("cpus shared with other ranks");
            }
            if rank.cpus_remote {
                notes.push("no allowed cpu on its GPU's NUMA node");
            }
            println!(
                "  local rank {:>3}: NUMA {} cpus {} {}{}{}",
                rank.local_rank,
                rank.numa,
                cpu_list(&rank.cpus),
                if gpus.is_empty() {
                    String::new()
                } else {
                    format!("{} ", gpus.join(", "))
                },
                nic.unwrap_or_default(),
                if notes.is_empty() {
                    String::new()
                } else {
                    format!(" [{}]", notes.join("; "))
                },
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The CPUs this process may run on (Slurm's or `taskset`'s cpuset).
fn this_process_cpus() -> Option<Vec<usize>> {
    let set = rustix::thread::sched_getaffinity(None).ok()?;
    let cpus: Vec<usize> = (0..rustix::thread::CpuSet::MAX_CPU)
        .filter(|&c| set.is_set(c))
        .collect();
    (!cpus.is_empty()).then_some(cpus)
}

/// Parses `0-3,8,10-11`.
fn parse_cpu_list(list: &str) -> anyhow::Result<Vec<usize>> {
    let mut cpus = Vec::new();
    for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let bad =
            || anyhow::anyhow!("bad cpu list {list:?}: expected numbers and ranges such as 0-3,8");
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (usize, usize) =
                    (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?);
                anyhow::ensure!(a <= b, "bad cpu range {part:?} in {list:?}");
                cpus.extend(a..=b);
            }
            None => cpus.push(part.parse().map_err(|_| bad())?),
        }
    }
    anyhow::ensure!(!cpus.is_empty(), "empty cpu list");
    Ok(cpus)
}

/// `0-3,8` from a sorted list.
fn cpu_list(cpus: &[usize]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < cpus.len() {
        let mut j = i;
        while j + 1 < cpus.len() && cpus[j + 1] == cpus[j] + 1 {
            j += 1;
        }
        out.push(if i == j {
            cpus[i].to_string()
        } else {
            format!("{}-{}", cpus[i], cpus[j])
        });
        i = j + 1;
    }
    out.join(",")
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
        keep_going: args.keep_going,
        command: args.command,
    };
    use lumen::submit::SubmitOutcome;
    let announce = |job_id: &str| println!("submitted batch job {job_id}");
    // With --wait, a spinner with the job's state and the time waited (on
    // a terminal only: indicatif draws nothing when stderr is not one).
    let spinner = indicatif::ProgressBar::new_spinner().with_style(
        indicatif::ProgressStyle::with_template("{spinner} batch job {msg} ({elapsed})")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
    );
    let mut ticking = false;
    let on_state = |state: &str| {
        if !ticking {
            spinner.enable_steady_tick(std::time::Duration::from_millis(120));
            ticking = true;
        }
        spinner.set_message(state.to_string());
    };
    let outcome = lumen::submit::submit(&spec, args.dry_run, args.wait, announce, on_state);
    spinner.finish_and_clear();
    match outcome? {
        SubmitOutcome::DryRun(script) => print!("{script}"),
        SubmitOutcome::Submitted { .. } => {}
        SubmitOutcome::Finished { job_id, exit_code } => {
            println!("batch job {job_id} finished with exit code {exit_code}");
            return Ok(ExitCode::from(u8::try_from(exit_code).unwrap_or(1)));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The benchmark executable that `lumen bench` runs (see the module docs).
const BENCH_EXE: &str = "lumen-bench";

/// `lumen bench ARGS`: runs `lumen-bench ARGS` and passes its exit code on.
fn bench(args: BenchArgs) -> anyhow::Result<ExitCode> {
    let beside = std::env::current_exe()
        .ok()
        .map(|exe| exe.with_file_name(BENCH_EXE));
    let program = beside
        .iter()
        .cloned()
        .chain(find_on_path(BENCH_EXE))
        .find(|path| path.is_file())
        .ok_or_else(|| {
            let beside = beside
                .as_deref()
                .map_or_else(|| "this executable".into(), |p| p.display().to_string());
            anyhow::anyhow!(
                "`lumen bench` runs the `{BENCH_EXE}` executable, found neither at {beside} \
                 nor on PATH; build it with `cargo build --release -p lumen-benches` \
                 (or a plain `cargo build` of the workspace)"
            )
        })?;
    let status = std::process::Command::new(&program)
        .args(&args.args)
        .status()
        .map_err(|e| anyhow::anyhow!("running {}: {e}", program.display()))?;
    Ok(ExitCode::from(exit_code_of(status)))
}

/// `name` in the directories of `PATH`, in order (existing or not).
fn find_on_path(name: &str) -> Vec<std::path::PathBuf> {
    std::env::var_os("PATH")
        .map(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join(name))
                .collect()
        })
        .unwrap_or_default()
}

/// A child's exit status as this process's exit code: its code, or 128 +
/// the signal that ended it (as shells report it).
fn exit_code_of(status: std::process::ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => u8::try_from(code).unwrap_or(1),
        (None, Some(signal)) => u8::try_from(128 + signal).unwrap_or(1),
        (None, None) => 1,
    }
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

    #[test]
    fn bench_arguments_are_passed_on_untouched() {
        let cli = Cli::try_parse_from([
            "lumen",
            "bench",
            "transport",
            "--scale",
            "0.01",
            "--help",
            "-x",
        ])
        .expect("valid command line");
        let Command::Bench(args) = cli.command else {
            panic!("parsed as another command")
        };
        assert_eq!(
            args.args,
            vec![
                OsString::from("transport"),
                "--scale".into(),
                "0.01".into(),
                "--help".into(),
                "-x".into()
            ]
        );
    }
}
