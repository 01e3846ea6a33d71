//! The local job spawner behind `lumen run`: starts the ranks of a job, hosts
//! their rendezvous, forwards their output, and cleans up after them.
//!
//! [`run_job`] does, in order:
//!
//! 1. Makes a job id ([`new_job_id`]) and a fresh [`JobSecret`](lumen_transport::JobSecret).
//! 2. Starts a [`RendezvousServer`](crate::rendezvous::RendezvousServer) inside the calling process. Hosting it
//!    here rather than in rank 0 means it exists before any rank starts (no
//!    rank can race its bind), and it outlives every rank, so when a job
//!    fails `lumen run` can still ask it which ranks never arrived. It listens
//!    on 127.0.0.1 when every rank runs on this machine; otherwise on
//!    [`JobSpec::rendezvous_bind`] or the address that
//!    [`select_interface_addr`](crate::config::select_interface_addr) picks from `LUMEN_TCP_IF`.
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
//!
//! The embedded local cluster of `lumen::init` spawns through the same code
//! without waiting: [`LocalRanks`] starts ranks `1..n` beside the calling
//! process (rank 0) and hands back a handle to stop them.
//!
//! | module | concern |
//! |---|---|
//! | `layout` | host lists, ranks onto hosts, each rank's variables, launch agents (pure) |
//! | `process` | commands, `PR_SET_PDEATHSIG`, output forwarding, `/dev/shm` clean-up |
//! | `signals` | SIGINT/SIGTERM/SIGHUP forwarding |
//! | `job` | [`run_job`]'s wait loop |
//! | `local` | [`LocalRanks`] |

mod job;
mod layout;
mod local;
mod process;
mod signals;
#[cfg(test)]
mod tests;

use std::ffi::OsString;
use std::fmt;
use std::io;
use std::net::IpAddr;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::time::Duration;

use lumen_transport::auth::random_bytes;
use thiserror::Error;

use crate::config::ConfigError;
use crate::rendezvous::RendezvousError;

pub use job::run_job;
pub use layout::parse_hosts;
pub use local::{LocalRanks, LocalRanksSpec};
pub use signals::signal_name;

/// How long ranks get between SIGTERM and SIGKILL when a job stops.
pub const STOP_GRACE: Duration = Duration::from_secs(2);

/// After the first rank fails, how long the others get to notice (a dead peer
/// is reported to every rank waiting on it within milliseconds) and exit with
/// their own error message before they are sent SIGTERM.
pub const FAILURE_REPORT_WINDOW: Duration = Duration::from_secs(1);

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
    /// The thread that starts and watches the ranks of [`LocalRanks`] could
    /// not be started.
    #[error("could not start the thread that spawns and watches the ranks: {0}")]
    Thread(#[source] io::Error),
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
