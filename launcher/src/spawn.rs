//! The local job spawner behind `lumen run`: starts the ranks of a job, hosts
//! their rendezvous, forwards their output, and cleans up after them.
//!
//! [`run_job`] does, in order:
//!
//! 1. Makes a job id ([`new_job_id`]) and a fresh [`JobSecret`].
//! 2. Starts a [`RendezvousServer`] inside the calling process. Hosting it
//!    here rather than in rank 0 means it exists before any rank starts (no
//!    rank can race its bind), and it outlives every rank, so when a job
//!    fails `lumen run` can still ask it which ranks never arrived. It listens
//!    on 127.0.0.1 when every rank runs on this machine; otherwise on
//!    [`JobSpec::rendezvous_bind`] or the address that
//!    [`select_interface_addr`] picks from `LUMEN_TCP_IF`.
//! 3. Spawns each rank with the `LUMEN_*` variables that
//!    [`env::detect`](crate::env::detect) and
//!    [`env::job_secret_from_env`](crate::env::job_secret_from_env) read,
//!    in its own process group, with `PR_SET_PDEATHSIG(SIGKILL)` so that it
//!    dies with the thread that spawned it. Ranks on other hosts run through
//!    the launch agent as `AGENT... env K=V... PROGRAM ARGS...`.
//! 4. Forwards each rank's stdout and stderr line by line (whole lines, never
//!    interleaved), prefixed `[rank] ` when asked.
//! 5. Waits. The first rank that fails (non-zero exit, or killed by a signal)
//!    stops the job (with [`JobSpec::keep_going`], only rank 0's failure does;
//!    the others are reported and the job goes on): the others get [`FAILURE_REPORT_WINDOW`] (1 s) to notice
//!    the dead peer and exit with their own error, then SIGTERM and, after a
//!    2 s grace period, SIGKILL. SIGINT, SIGTERM or SIGHUP to the spawning process is forwarded
//!    to the ranks the same way.
//! 6. Removes this job's shared-memory files (`/dev/shm/lumen-{job_id}-*`, see
//!    [`shm_segment_prefix`]) on this machine, which a killed rank could not.
//!
//! Ranks fill hosts in order: with `--hosts a:2,b:2` and 3 ranks, ranks 0 and 1
//! run on `a` (node 0) and rank 2 on `b` (node 1).

use std::ffi::OsString;
use std::fmt;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::Once;
use std::time::{Duration, Instant};

use lumen_transport::auth::{random_bytes, JobSecret};
use rustix::process::{Pid, Signal, WaitId, WaitIdOptions};
use thiserror::Error;

use crate::config::{self, local_interfaces, select_interface_addr, Config, ConfigError};
use crate::env::JOB_SECRET_VAR;
use crate::rendezvous::{RendezvousError, RendezvousServer};

/// How long ranks get between SIGTERM and SIGKILL when a job stops.
pub const STOP_GRACE: Duration = Duration::from_secs(2);

/// After the first rank fails, how long the others get to notice (a dead peer
/// is reported to every rank waiting on it within milliseconds) and exit with
/// their own error message before they are sent SIGTERM.
pub const FAILURE_REPORT_WINDOW: Duration = Duration::from_secs(1);
/// How long output still buffered in pipes is forwarded after the last rank exited.
const OUTPUT_DRAIN: Duration = Duration::from_secs(2);
/// How often the wait loop looks at signals and the grace period.
const TICK: Duration = Duration::from_millis(50);

/// What to run and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobSpec {
    /// Number of ranks.
    pub ranks: u32,
    /// `(host, slots)`; ranks fill hosts in order. `None`: every rank on this
    /// machine.
    pub hosts: Option<Vec<(String, u32)>>,
    /// The program each rank runs.
    pub program: OsString,
    /// Its arguments.
    pub args: Vec<OsString>,
    /// Extra environment variables for every rank.
    pub env: Vec<(String, String)>,
    /// Prefix each line of output with `[rank] `.
    pub label_output: bool,
    /// Command template for ranks on other hosts, split on whitespace, with
    /// `{host}` replaced by the host name (appended when absent), e.g.
    /// `"ip netns exec {host}"` or `"ssh {host}"`. `None` or `"local"`:
    /// spawn every rank directly on this machine, whatever its host name.
    pub launch_agent: Option<String>,
    /// Address for the rendezvous server when ranks run on other hosts.
    pub rendezvous_bind: Option<IpAddr>,
    /// A rank other than 0 that fails does not stop the job (`lumen run
    /// --keep-going`): for runtime jobs, whose driver (rank 0) retries the
    /// lost rank's tasks elsewhere and restarts its actors. Rank 0's failure
    /// still stops the job; the job's status is rank 0's.
    pub keep_going: bool,
}

impl JobSpec {
    /// `ranks` copies of `program` on this machine, with no arguments.
    pub fn local(ranks: u32, program: impl Into<OsString>) -> Self {
        JobSpec {
            ranks,
            hosts: None,
            program: program.into(),
            args: Vec::new(),
            env: Vec::new(),
            label_output: false,
            launch_agent: None,
            rendezvous_bind: None,
            keep_going: false,
        }
    }
}

/// How a rank ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitCause {
    /// It exited with this code.
    Code(i32),
    /// A signal killed it.
    Signal(i32),
}

impl ExitCause {
    fn from_status(status: ExitStatus) -> Self {
        match (status.code(), status.signal()) {
            (Some(code), _) => ExitCause::Code(code),
            (None, Some(signal)) => ExitCause::Signal(signal),
            (None, None) => ExitCause::Code(-1),
        }
    }

    /// Exit code a shell would report: the code, or 128 + signal.
    pub fn exit_code(self) -> i32 {
        match self {
            ExitCause::Code(code) => code,
            ExitCause::Signal(signal) => 128 + signal,
        }
    }

    /// True for exit code 0.
    pub fn success(self) -> bool {
        self == ExitCause::Code(0)
    }
}

impl fmt::Display for ExitCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            ExitCause::Code(code) => write!(f, "exited with code {code}"),
            ExitCause::Signal(signal) => match signal_name(signal) {
                Some(name) => write!(f, "exited with signal {signal} ({name})"),
                None => write!(f, "exited with signal {signal}"),
            },
        }
    }
}

/// The rank that made a job fail, and how.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RankFailure {
    /// The rank.
    pub rank: u32,
    /// How it ended.
    pub cause: ExitCause,
}

/// How a job ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobOutcome {
    /// The job's id (as in `LUMEN_JOB_ID`).
    pub job_id: String,
    /// 0 when every rank succeeded; else the code of the first failure (128 +
    /// signal for a signal), or 128 + signal when the spawner was interrupted.
    pub exit_code: i32,
    /// The first rank that failed, unless every rank succeeded or the job was
    /// interrupted first.
    pub first_failure: Option<RankFailure>,
    /// The signal (SIGINT, SIGTERM, SIGHUP) that interrupted the spawner.
    pub interrupted_by: Option<i32>,
    /// How each rank ended, by rank.
    pub exits: Vec<ExitCause>,
    /// When the job failed and at least one rank used the rendezvous: the
    /// ranks that never reached it.
    pub never_arrived: Vec<u32>,
}

/// Why a job could not be run.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum SpawnError {
    /// Zero ranks asked for.
    #[error("a job needs at least one rank; pass -n with a positive number")]
    NoRanks,
    /// The hosts offer fewer slots than ranks.
    #[error("{ranks} ranks do not fit the {slots} slots of the host list; add hosts or slots, or ask for fewer ranks")]
    NotEnoughSlots {
        /// Ranks asked for.
        ranks: u32,
        /// Slots offered.
        slots: u64,
    },
    /// An entry of a host list is not `host` or `host:slots`.
    #[error("host list entry {entry:?} is not `host` or `host:slots` with slots >= 1: {reason}")]
    InvalidHost {
        /// The entry.
        entry: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// The launch agent template has no command.
    #[error(
        "the launch agent template is empty; give a command such as \"ssh {{host}}\", or \"local\""
    )]
    EmptyLaunchAgent,
    /// A `LUMEN_*` tuning variable of the spawning process is invalid (every
    /// rank would fail on it).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The host's interfaces could not be listed.
    #[error(
        "could not list network interfaces to bind the rendezvous: {0}; pass --rendezvous-bind"
    )]
    Interfaces(#[source] io::Error),
    /// No interface fits for ranks on other hosts to reach the rendezvous.
    #[error("no network interface to bind the rendezvous to (LUMEN_TCP_IF selects none); pass --rendezvous-bind or fix LUMEN_TCP_IF")]
    NoInterface,
    /// The rendezvous server did not start.
    #[error(transparent)]
    Rendezvous(#[from] RendezvousError),
    /// A rank's process could not be started.
    #[error("could not start rank {rank} ({program}) on {host}: {source}; check the program path and the launch agent")]
    Spawn {
        /// The rank.
        rank: u32,
        /// The command started (the launch agent for remote ranks).
        program: String,
        /// The host it was meant for.
        host: String,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
    /// Signal handlers for forwarding could not be installed.
    #[error("could not install handlers for SIGINT/SIGTERM/SIGHUP: {0}")]
    Signals(#[source] io::Error),
}

/// Prefix of the shared-memory files (under `/dev/shm`) of job `job_id`: the
/// transport names its node segments `{prefix}n{node_index}`.
///
/// ```
/// assert_eq!(lumen_launcher::spawn::shm_segment_prefix("l42x9f"), "lumen-l42x9f-");
/// ```
pub fn shm_segment_prefix(job_id: &str) -> String {
    format!("lumen-{job_id}-")
}

/// A fresh job id, `l{pid}x{16 random hex digits}`: unique on the host and
/// safe in file names.
pub fn new_job_id() -> String {
    let random = random_bytes();
    let hex: String = random[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("l{}x{hex}", std::process::id())
}

/// Parses `h1:4,h2:4` (slots default to 1: `h1,h2`).
///
/// ```
/// use lumen_launcher::spawn::parse_hosts;
/// assert_eq!(parse_hosts("a:2, b")?, vec![("a".to_string(), 2), ("b".to_string(), 1)]);
/// # Ok::<(), lumen_launcher::spawn::SpawnError>(())
/// ```
pub fn parse_hosts(list: &str) -> Result<Vec<(String, u32)>, SpawnError> {
    let invalid = |entry: &str, reason| SpawnError::InvalidHost {
        entry: entry.to_string(),
        reason,
    };
    let hosts: Vec<(String, u32)> = list
        .split(',')
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
        .map(|entry| {
            let (host, slots) = match entry.rsplit_once(':') {
                Some((host, slots)) => {
                    let slots = slots
                        .parse::<u32>()
                        .ok()
                        .filter(|&slots| slots > 0)
                        .ok_or_else(|| invalid(entry, "slots must be a positive integer"))?;
                    (host, slots)
                }
                None => (entry, 1),
            };
            if host.is_empty() || host.contains(char::is_whitespace) {
                return Err(invalid(entry, "the host name is empty or has spaces"));
            }
            Ok((host.to_string(), slots))
        })
        .collect::<Result<_, _>>()?;
    if hosts.is_empty() {
        return Err(invalid(list, "no hosts listed"));
    }
    Ok(hosts)
}

/// Where one rank runs.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Placement {
    node_index: u32,
    local_rank: u32,
    local_size: u32,
}

/// Ranks assigned to nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Layout {
    /// Host name of each node that got ranks, in node order.
    nodes: Vec<String>,
    /// Placement of each rank.
    ranks: Vec<Placement>,
}

fn layout(
    ranks: u32,
    hosts: Option<&[(String, u32)]>,
    this_host: &str,
) -> Result<Layout, SpawnError> {
    if ranks == 0 {
        return Err(SpawnError::NoRanks);
    }
    let single;
    let hosts = match hosts {
        Some(hosts) => hosts,
        None => {
            single = [(this_host.to_string(), ranks)];
            &single[..]
        }
    };
    let slots: u64 = hosts.iter().map(|(_, slots)| u64::from(*slots)).sum();
    if slots < u64::from(ranks) {
        return Err(SpawnError::NotEnoughSlots { ranks, slots });
    }
    let mut nodes = Vec::new();
    let mut placements = Vec::with_capacity(ranks as usize);
    let mut left = ranks;
    for (host, slots) in hosts {
        if left == 0 {
            break;
        }
        let here = (*slots).min(left);
        if here == 0 {
            continue;
        }
        // Bounded by the number of ranks, a u32.
        let node_index = u32::try_from(nodes.len()).unwrap_or(u32::MAX);
        nodes.push(host.clone());
        placements.extend((0..here).map(|local_rank| Placement {
            node_index,
            local_rank,
            local_size: here,
        }));
        left -= here;
    }
    Ok(Layout {
        nodes,
        ranks: placements,
    })
}

/// The variables that tell rank `rank` who it is (see [`crate::env`]).
fn rank_env(
    layout: &Layout,
    rank: u32,
    job_id: &str,
    rendezvous: SocketAddr,
    secret: &JobSecret,
) -> Vec<(String, String)> {
    let Some(place) = layout.ranks.get(rank as usize) else {
        return Vec::new();
    };
    let size = layout.ranks.len();
    [
        ("LUMEN_RANK", rank.to_string()),
        ("LUMEN_SIZE", size.to_string()),
        ("LUMEN_LOCAL_RANK", place.local_rank.to_string()),
        ("LUMEN_LOCAL_SIZE", place.local_size.to_string()),
        ("LUMEN_NODE_INDEX", place.node_index.to_string()),
        ("LUMEN_NUM_NODES", layout.nodes.len().to_string()),
        ("LUMEN_HOSTS", layout.nodes.join(",")),
        ("LUMEN_JOB_ID", job_id.to_string()),
        ("LUMEN_RENDEZVOUS", rendezvous.to_string()),
        (JOB_SECRET_VAR, secret.to_hex()),
    ]
    .into_iter()
    .map(|(name, value)| (name.to_string(), value))
    .collect()
}

/// This machine's host name, or "localhost".
fn this_host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|name| name.trim().to_string())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

fn is_this_host(host: &str, this_host: &str) -> bool {
    let short = |name: &str| name.split('.').next().unwrap_or(name).to_string();
    matches!(host, "localhost" | "127.0.0.1" | "::1")
        || host == this_host
        || short(host) == short(this_host)
}

/// The agent's words for `host`, or `None` when the rank is spawned directly.
fn agent_words(
    spec: &JobSpec,
    host: &str,
    this_host: &str,
) -> Result<Option<Vec<String>>, SpawnError> {
    let Some(template) = spec.launch_agent.as_deref().map(str::trim) else {
        return Ok(None);
    };
    if template == "local" || is_this_host(host, this_host) {
        return Ok(None);
    }
    let mut words: Vec<String> = template
        .split_whitespace()
        .map(|word| word.replace("{host}", host))
        .collect();
    if words.is_empty() {
        return Err(SpawnError::EmptyLaunchAgent);
    }
    if !template.contains("{host}") {
        words.push(host.to_string());
    }
    Ok(Some(words))
}

/// Process-wide record of SIGINT/SIGTERM/SIGHUP for the jobs running now.
struct Interrupts;

/// Number of `run_job` calls in progress; with none, a signal does what it
/// would do without our handler.
static ACTIVE_JOBS: AtomicUsize = AtomicUsize::new(0);
/// Signals received while a job ran, ever.
static SIGNAL_COUNT: AtomicUsize = AtomicUsize::new(0);
/// The last such signal.
static LAST_SIGNAL: AtomicUsize = AtomicUsize::new(0);

impl Interrupts {
    const SIGNALS: [i32; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

    /// Installs the handlers once per process.
    fn install() -> Result<(), SpawnError> {
        static INSTALL: Once = Once::new();
        let mut result = Ok(());
        INSTALL.call_once(|| {
            for signal in Self::SIGNALS {
                // SAFETY: the action only touches atomics and calls
                // emulate_default_handler, all async-signal-safe; it captures
                // nothing, so nothing can dangle.
                let registered = unsafe {
                    signal_hook::low_level::register(signal, move || {
                        if ACTIVE_JOBS.load(Ordering::SeqCst) > 0 {
                            LAST_SIGNAL.store(signal as usize, Ordering::SeqCst);
                            SIGNAL_COUNT.fetch_add(1, Ordering::SeqCst);
                        } else {
                            let _ = signal_hook::low_level::emulate_default_handler(signal);
                        }
                    })
                };
                if let Err(error) = registered {
                    result = Err(SpawnError::Signals(error));
                    return;
                }
            }
        });
        result
    }
}

/// Marks a job as running for the signal handler while alive.
struct ActiveJob;

impl ActiveJob {
    fn start() -> Self {
        ACTIVE_JOBS.fetch_add(1, Ordering::SeqCst);
        ActiveJob
    }
}

impl Drop for ActiveJob {
    fn drop(&mut self) {
        ACTIVE_JOBS.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A line for the user, from `lumen run` itself.
fn notice(message: &str) {
    let _ = writeln!(io::stderr().lock(), "lumen run: {message}");
}

/// A started rank.
struct Rank {
    child: Child,
    pid: Pid,
    exit: Option<ExitCause>,
}

impl Rank {
    /// Signals the rank's process group (and the rank itself, should it have
    /// left the group). Only called before the rank is reaped, so the pid
    /// cannot have been reused.
    fn signal(&self, signal: Signal) {
        let _ = rustix::process::kill_process_group(self.pid, signal);
        let _ = rustix::process::kill_process(self.pid, signal);
    }
}

/// Runs a job to completion (see the [module documentation](self)) and says
/// how it ended; `Err` only when the job could not be started.
///
/// Ranks get `PR_SET_PDEATHSIG(SIGKILL)`, which fires when the *thread* that
/// spawned them ends: call this from a thread that outlives the job (it
/// blocks until the job ends, so any calling thread does). The first call
/// installs process-wide handlers for SIGINT, SIGTERM and SIGHUP; while no
/// job runs they behave as the default (terminate).
pub fn run_job(spec: &JobSpec) -> Result<JobOutcome, SpawnError> {
    let here = this_host();
    let layout = layout(spec.ranks, spec.hosts.as_deref(), &here)?;
    let config = Config::from_env(|name| std::env::var(name).ok())?;
    let mut agents = Vec::with_capacity(layout.nodes.len());
    for host in &layout.nodes {
        agents.push(agent_words(spec, host, &here)?);
    }
    let bind_ip = if agents.iter().all(Option::is_none) {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else if let Some(ip) = spec.rendezvous_bind {
        ip
    } else {
        let interfaces = local_interfaces().map_err(SpawnError::Interfaces)?;
        select_interface_addr(&config.tcp_interfaces, &interfaces).ok_or(SpawnError::NoInterface)?
    };
    Interrupts::install()?;
    let _active = ActiveJob::start();
    let signals_seen = SIGNAL_COUNT.load(Ordering::SeqCst);

    let job_id = new_job_id();
    let secret = JobSecret::random();
    let server = RendezvousServer::bind(
        SocketAddr::new(bind_ip, 0),
        &job_id,
        spec.ranks,
        secret.clone(),
    )?;
    let rendezvous = server.local_addr();
    tracing::debug!(%job_id, %rendezvous, ranks = spec.ranks, "starting job");

    let (output_done, output_finished) = mpsc::channel::<()>();
    let mut readers = 0usize;
    let mut ranks: Vec<Rank> = Vec::with_capacity(spec.ranks as usize);
    for rank in 0..spec.ranks {
        let variables = rank_env(&layout, rank, &job_id, rendezvous, &secret);
        let node = layout
            .ranks
            .get(rank as usize)
            .map_or(0, |place| place.node_index);
        let host = layout.nodes.get(node as usize).cloned().unwrap_or_default();
        let agent = agents.get(node as usize).cloned().flatten();
        let mut command = build_command(spec, agent.as_deref(), &variables);
        let mut child = match command.spawn() {
            Ok(child) => child,
            Err(source) => {
                for started in &ranks {
                    started.signal(Signal::KILL);
                }
                for mut started in ranks {
                    let _ = started.child.wait();
                }
                remove_shm_segments(&job_id);
                let program = agent
                    .and_then(|words| words.into_iter().next())
                    .unwrap_or_else(|| spec.program.to_string_lossy().into_owned());
                return Err(SpawnError::Spawn {
                    rank,
                    program,
                    host,
                    source,
                });
            }
        };
        let label = spec.label_output.then(|| format!("[{rank}] "));
        if let Some(stdout) = child.stdout.take() {
            readers += forward_lines(stdout, label.clone(), false, output_done.clone());
        }
        if let Some(stderr) = child.stderr.take() {
            readers += forward_lines(stderr, label, true, output_done.clone());
        }
        let pid = Pid::from_child(&child);
        ranks.push(Rank {
            child,
            pid,
            exit: None,
        });
    }
    drop(output_done);

    let (exited_tx, exited) = mpsc::channel::<usize>();
    for (index, rank) in ranks.iter().enumerate() {
        let pid = rank.pid;
        let exited_tx = exited_tx.clone();
        let watcher = std::thread::Builder::new()
            .name(format!("lumen-run-wait-{index}"))
            .spawn(move || {
                // Waits without reaping: the rank stays a zombie, holding its
                // pid, until the main loop reaps it in the order of exits.
                let options = WaitIdOptions::EXITED | WaitIdOptions::NOWAIT;
                while let Err(rustix::io::Errno::INTR) =
                    rustix::process::waitid(WaitId::Pid(pid), options)
                {}
                let _ = exited_tx.send(index);
            });
        if let Err(error) = watcher {
            // Fall back to noticing this rank through polling below.
            tracing::warn!(%error, rank = index, "no watcher thread for a rank");
        }
    }
    drop(exited_tx);

    let mut first_failure: Option<RankFailure> = None;
    let mut interrupted_by: Option<i32> = None;
    let mut stopping_since: Option<Instant> = None;
    let mut terminate_at: Option<Instant> = None;
    let mut killed = false;
    let mut signals_handled = signals_seen;
    let mut running = ranks.len();
    let mut ever_used_rendezvous = false;
    let mut never_arrived = Vec::new();
    while running > 0 {
        let mut reaped: Vec<usize> = Vec::new();
        match exited.recv_timeout(TICK) {
            Ok(index) => reaped.push(index),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                // No watchers left (or none started): poll every rank.
                reaped.extend(0..ranks.len());
                std::thread::sleep(TICK);
            }
        }
        reaped.extend(exited.try_iter());
        for index in reaped {
            let Some(rank) = ranks.get_mut(index) else {
                continue;
            };
            if rank.exit.is_some() {
                continue;
            }
            let status = match rank.child.try_wait() {
                Ok(Some(status)) => ExitCause::from_status(status),
                Ok(None) => continue,
                Err(error) => {
                    tracing::warn!(%error, rank = index, "could not reap a rank");
                    ExitCause::Code(-1)
                }
            };
            rank.exit = Some(status);
            running -= 1;
            if !status.success() && spec.keep_going && index != 0 && stopping_since.is_none() {
                notice(&format!(
                    "rank {index} {status}; the job goes on without it (--keep-going)"
                ));
                continue;
            }
            if !status.success() && first_failure.is_none() && stopping_since.is_none() {
                // Bounded by spec.ranks, a u32.
                let failed = u32::try_from(index).unwrap_or(u32::MAX);
                first_failure = Some(RankFailure {
                    rank: failed,
                    cause: status,
                });
                let status_now = server.status();
                ever_used_rendezvous = status_now.never_arrived().len() < ranks.len();
                never_arrived = status_now.never_arrived();
                if running > 0 {
                    let others = if running == 1 {
                        "rank".to_string()
                    } else {
                        format!("{running} ranks")
                    };
                    notice(&format!(
                        "rank {failed} {status}; stopping the other {others}"
                    ));
                } else {
                    notice(&format!("rank {failed} {status}"));
                }
                terminate_at = Some(Instant::now() + FAILURE_REPORT_WINDOW);
            }
        }
        if let Some(at) = terminate_at {
            if Instant::now() >= at || running == 0 {
                terminate_at = None;
                for other in ranks.iter().filter(|rank| rank.exit.is_none()) {
                    other.signal(Signal::TERM);
                }
                stopping_since = Some(Instant::now());
            }
        }
        let signal_count = SIGNAL_COUNT.load(Ordering::SeqCst);
        if signal_count != signals_handled && running > 0 {
            signals_handled = signal_count;
            let number = i32::try_from(LAST_SIGNAL.load(Ordering::SeqCst)).unwrap_or(libc::SIGTERM);
            if stopping_since.is_none() {
                terminate_at = None;
                interrupted_by = Some(number);
                let name = signal_name(number).unwrap_or("a signal");
                notice(&format!("received {name}; stopping {running} rank(s)"));
                let forwarded = Signal::from_named_raw(number).unwrap_or(Signal::TERM);
                for rank in ranks.iter().filter(|rank| rank.exit.is_none()) {
                    rank.signal(forwarded);
                }
                stopping_since = Some(Instant::now());
            } else if !killed {
                notice("second signal; killing the ranks");
                for rank in ranks.iter().filter(|rank| rank.exit.is_none()) {
                    rank.signal(Signal::KILL);
                }
                killed = true;
            }
        }
        if let Some(since) = stopping_since {
            if !killed && running > 0 && since.elapsed() >= STOP_GRACE {
                notice(&format!(
                    "{running} rank(s) still running after {} s; killing them",
                    STOP_GRACE.as_secs()
                ));
                for rank in ranks.iter().filter(|rank| rank.exit.is_none()) {
                    rank.signal(Signal::KILL);
                }
                killed = true;
            }
        }
    }

    // Let the forwarders print what is still in the pipes.
    let drain_until = Instant::now() + OUTPUT_DRAIN;
    for _ in 0..readers {
        let left = drain_until.saturating_duration_since(Instant::now());
        if output_finished.recv_timeout(left).is_err() {
            break;
        }
    }
    if first_failure.is_some() && ever_used_rendezvous && !never_arrived.is_empty() {
        let who = match never_arrived.as_slice() {
            [one] => format!("rank {one}"),
            many => format!("ranks {many:?}"),
        };
        notice(&format!("{who} never reached the rendezvous"));
    } else {
        never_arrived.clear();
    }
    drop(server);
    remove_shm_segments(&job_id);

    let exits: Vec<ExitCause> = ranks
        .iter()
        .map(|rank| rank.exit.unwrap_or(ExitCause::Code(-1)))
        .collect();
    let exit_code = match (interrupted_by, first_failure) {
        (Some(signal), _) => 128 + signal,
        (None, Some(failure)) => failure.cause.exit_code(),
        (None, None) => 0,
    };
    Ok(JobOutcome {
        job_id,
        exit_code,
        first_failure,
        interrupted_by,
        exits,
        never_arrived,
    })
}

fn build_command(
    spec: &JobSpec,
    agent: Option<&[String]>,
    variables: &[(String, String)],
) -> Command {
    let mut command = match agent.and_then(<[String]>::split_first) {
        None => {
            let mut command = Command::new(&spec.program);
            command.args(&spec.args);
            command.envs(variables.iter().map(|(k, v)| (k, v)));
            command.envs(spec.env.iter().map(|(k, v)| (k, v)));
            command
        }
        Some((first, rest)) => {
            let mut command = Command::new(first);
            command.args(rest);
            command.arg("env");
            // Tuning knobs travel with the rank, so every rank runs with the
            // configuration `lumen run` validated.
            for name in config::VARIABLES {
                if let Ok(value) = std::env::var(name) {
                    command.arg(format!("{name}={value}"));
                }
            }
            for (name, value) in variables.iter().chain(&spec.env) {
                command.arg(format!("{name}={value}"));
            }
            command.arg(&spec.program);
            command.args(&spec.args);
            command
        }
    };
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let parent = rustix::process::getpid();
    // SAFETY: the closure runs in the forked child before exec and only makes
    // two raw system calls through rustix (prctl, getppid), which allocate
    // nothing and take no locks, so it is async-signal-safe.
    unsafe {
        command.pre_exec(move || {
            rustix::process::set_parent_process_death_signal(Some(Signal::KILL))?;
            // The parent may have died before prctl took effect.
            if rustix::process::getppid() != Some(parent) {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
    command
}

/// Forwards whole lines from `from` to our stdout or stderr; returns the
/// number of threads started (0 or 1). Each finished thread sends on `done`.
fn forward_lines(
    from: impl Read + Send + 'static,
    label: Option<String>,
    to_stderr: bool,
    done: mpsc::Sender<()>,
) -> usize {
    let spawned = std::thread::Builder::new()
        .name("lumen-run-output".into())
        .spawn(move || {
            let mut reader = BufReader::new(from);
            let mut line = Vec::with_capacity(256);
            loop {
                line.clear();
                match reader.read_until(b'\n', &mut line) {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => break,
                }
                if !line.ends_with(b"\n") {
                    line.push(b'\n');
                }
                let written = if to_stderr {
                    write_line(&mut io::stderr().lock(), label.as_deref(), &line)
                } else {
                    write_line(&mut io::stdout().lock(), label.as_deref(), &line)
                };
                if written.is_err() {
                    // Our own output is gone (closed pipe); keep draining so
                    // the rank does not block on a full pipe.
                    continue;
                }
            }
            let _ = done.send(());
        });
    usize::from(spawned.is_ok())
}

fn write_line(out: &mut impl Write, label: Option<&str>, line: &[u8]) -> io::Result<()> {
    if let Some(label) = label {
        out.write_all(label.as_bytes())?;
    }
    out.write_all(line)?;
    out.flush()
}

/// Removes `/dev/shm/lumen-{job_id}-*` on this machine.
fn remove_shm_segments(job_id: &str) {
    let prefix = shm_segment_prefix(job_id);
    let Ok(entries) = std::fs::read_dir("/dev/shm") else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with(&prefix) {
            match std::fs::remove_file(entry.path()) {
                Ok(()) => {
                    tracing::debug!(path = %entry.path().display(), "removed a leftover shared-memory file")
                }
                Err(error) if error.kind() == io::ErrorKind::NotFound => {}
                Err(error) => {
                    tracing::warn!(path = %entry.path().display(), %error, "could not remove a shared-memory file")
                }
            }
        }
    }
}

/// "SIGKILL" for 9, and so on, for the signals a rank commonly dies of.
pub fn signal_name(signal: i32) -> Option<&'static str> {
    Some(match signal {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGTRAP => "SIGTRAP",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGUSR2 => "SIGUSR2",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        libc::SIGXCPU => "SIGXCPU",
        libc::SIGXFSZ => "SIGXFSZ",
        libc::SIGSYS => "SIGSYS",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::env::{detect, job_secret_from_env, LaunchKind};

    fn hosts(list: &str) -> Vec<(String, u32)> {
        match parse_hosts(list) {
            Ok(hosts) => hosts,
            Err(error) => panic!("{list}: {error}"),
        }
    }

    #[test]
    fn host_lists() {
        assert_eq!(hosts("h1:4,h2:4"), vec![("h1".into(), 4), ("h2".into(), 4)]);
        assert_eq!(hosts(" a , b:2,"), vec![("a".into(), 1), ("b".into(), 2)]);
        for bad in ["", ",", "a:0", "a:x", ":3", "a b:2", "a:-1"] {
            assert!(
                matches!(parse_hosts(bad), Err(SpawnError::InvalidHost { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn ranks_fill_hosts_in_order() {
        let list = hosts("a:2,b:2,c:4");
        let job = layout(3, Some(&list), "me").expect("fits");
        assert_eq!(job.nodes, vec!["a".to_string(), "b".to_string()]);
        let places: Vec<(u32, u32, u32)> = job
            .ranks
            .iter()
            .map(|p| (p.node_index, p.local_rank, p.local_size))
            .collect();
        assert_eq!(places, vec![(0, 0, 2), (0, 1, 2), (1, 0, 1)]);
        let local = layout(4, None, "me").expect("fits");
        assert_eq!(local.nodes, vec!["me".to_string()]);
        assert_eq!(
            local.ranks[3],
            Placement {
                node_index: 0,
                local_rank: 3,
                local_size: 4
            }
        );
        assert!(matches!(
            layout(9, Some(&list), "me"),
            Err(SpawnError::NotEnoughSlots { ranks: 9, slots: 8 })
        ));
        assert!(matches!(layout(0, None, "me"), Err(SpawnError::NoRanks)));
    }

    #[test]
    fn rank_environment_is_what_detect_reads() {
        let list = hosts("a:2,b:2");
        let job = layout(4, Some(&list), "me").expect("fits");
        let secret = JobSecret::random();
        let addr: SocketAddr = "10.0.0.1:7000".parse().expect("address");
        let vars: HashMap<String, String> = rank_env(&job, 3, "l1x2", addr, &secret)
            .into_iter()
            .collect();
        let world = detect(|name| vars.get(name).cloned()).expect("detect");
        assert_eq!(
            (world.rank, world.size, world.local_rank, world.local_size),
            (3, 4, 1, 2)
        );
        assert_eq!((world.node_index, world.num_nodes), (1, 2));
        assert_eq!(world.hosts, vec!["a".to_string(), "b".to_string()]);
        assert_eq!(world.job_id, "l1x2");
        assert_eq!(world.kind, LaunchKind::Lumen);
        assert_eq!(world.rendezvous.as_deref(), Some("10.0.0.1:7000"));
        let read = job_secret_from_env(|name| vars.get(name).cloned()).expect("secret");
        assert_eq!(read, Some(secret));
    }

    #[test]
    fn launch_agent_templates() {
        let mut spec = JobSpec::local(2, "app");
        assert_eq!(agent_words(&spec, "far", "me").ok(), Some(None));
        spec.launch_agent = Some("ip netns exec {host}".into());
        assert_eq!(
            agent_words(&spec, "ns-h1", "me").ok().flatten(),
            Some(vec![
                "ip".into(),
                "netns".into(),
                "exec".into(),
                "ns-h1".into()
            ])
        );
        assert_eq!(agent_words(&spec, "me", "me").ok(), Some(None));
        assert_eq!(agent_words(&spec, "localhost", "me").ok(), Some(None));
        spec.launch_agent = Some("ssh -x".into());
        assert_eq!(
            agent_words(&spec, "far", "me.cluster").ok().flatten(),
            Some(vec!["ssh".into(), "-x".into(), "far".into()])
        );
        spec.launch_agent = Some("local".into());
        assert_eq!(agent_words(&spec, "far", "me").ok(), Some(None));
        spec.launch_agent = Some("  ".into());
        assert!(matches!(
            agent_words(&spec, "far", "me"),
            Err(SpawnError::EmptyLaunchAgent)
        ));

        let words = vec!["ip".to_string(), "netns".into(), "exec".into(), "h1".into()];
        let vars = vec![("LUMEN_RANK".to_string(), "1".to_string())];
        spec.args = vec!["--flag".into()];
        let command = build_command(&spec, Some(&words), &vars);
        assert_eq!(command.get_program(), "ip");
        let args: Vec<String> = command
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let env_at = args.iter().position(|a| a == "env").expect("env word");
        assert_eq!(&args[..env_at], ["netns", "exec", "h1"]);
        assert!(args.contains(&"LUMEN_RANK=1".to_string()));
        assert_eq!(&args[args.len() - 2..], ["app", "--flag"]);
    }

    #[test]
    fn exit_causes_read_well() {
        assert_eq!(
            ExitCause::Signal(9).to_string(),
            "exited with signal 9 (SIGKILL)"
        );
        assert_eq!(ExitCause::Signal(9).exit_code(), 137);
        assert_eq!(ExitCause::Code(3).to_string(), "exited with code 3");
        assert_eq!(ExitCause::Code(3).exit_code(), 3);
        assert!(ExitCause::Code(0).success());
        let ids = (new_job_id(), new_job_id());
        assert_ne!(ids.0, ids.1);
        assert!(
            ids.0.bytes().all(|b| b.is_ascii_alphanumeric()),
            "{}",
            ids.0
        );
    }

    #[test]
    fn labelled_lines() {
        let mut out = Vec::new();
        write_line(&mut out, Some("[3] "), b"hello\n").expect("write");
        write_line(&mut out, None, b"bye\n").expect("write");
        assert_eq!(out, b"[3] hello\nbye\n");
    }
}
