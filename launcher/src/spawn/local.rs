//! [`LocalRanks`]: the ranks of a job on this machine whose rank 0 is the
//! calling process — the embedded local cluster that `lumen::init` starts
//! when a program runs bare. Same spawning as [`run_job`](super::run_job)
//! (the rank variables of `layout`, `PR_SET_PDEATHSIG`, `/dev/shm` clean-up),
//! but it returns at once with a handle instead of waiting: the caller
//! joins the job itself ([`crate::bootstrap::join_with`] with
//! [`LocalRanks::caller_env`]) and stops the ranks when it leaves.
//!
//! # Invariants
//! - The ranks are spawned by, and reaped on, one thread of this module that
//!   lives until they are gone (`PR_SET_PDEATHSIG` fires when the spawning
//!   *thread* ends, not the process): while the caller lives, its ranks do;
//!   when it is killed, they die with it.
//! - The rendezvous store lives in the caller and outlives every rank.
//! - The ranks share the caller's terminal and process group (stdout and
//!   stderr inherited, so a Ctrl-C reaches them all), unlike `lumen run`'s.

use std::ffi::OsString;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Child;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use lumen_transport::auth::JobSecret;

use super::layout::{layout, rank_env, this_host};
use super::process::{local_command, remove_shm_segments};
use super::{new_job_id, SpawnError};
use crate::rendezvous::RendezvousServer;

/// How long [`LocalRanks::stop`] waits beyond its grace period for the
/// spawning thread to report that every rank is reaped.
const REAP_SLACK: Duration = Duration::from_secs(2);
/// How long a failed start waits for the ranks it started to be reaped.
const FAILED_START_WAIT: Duration = Duration::from_secs(5);

/// What [`LocalRanks::start`] starts: ranks `1..size` running `program`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalRanksSpec {
    /// Ranks in the job, the calling process (rank 0) included; at least 1.
    pub size: u32,
    /// The program each started rank runs (the embedded cluster:
    /// `/proc/self/exe`).
    pub program: OsString,
    /// Its arguments.
    pub args: Vec<OsString>,
    /// Variables for every started rank, beyond the `LUMEN_*` ones that
    /// place it in the job.
    pub env: Vec<(String, String)>,
    /// Variables of the calling process the started ranks must not inherit.
    pub env_remove: Vec<String>,
}

impl LocalRanksSpec {
    /// `size - 1` copies of `program` with no arguments, beside the caller.
    pub fn new(size: u32, program: impl Into<OsString>) -> Self {
        LocalRanksSpec {
            size,
            program: program.into(),
            args: Vec::new(),
            env: Vec::new(),
            env_remove: Vec::new(),
        }
    }
}

/// Ranks `1..size` of a job on this machine, started and watched by a
/// thread of their own; the caller is rank 0 (see the [module
/// documentation](crate::spawn)). Dropping it kills the ranks at once; [`stop`](Self::stop)
/// gives them time to leave first.
#[derive(Debug)]
pub struct LocalRanks {
    job_id: String,
    caller_env: Vec<(String, String)>,
    server: Option<RendezvousServer>,
    stop: mpsc::Sender<Duration>,
    stopped: mpsc::Receiver<()>,
}

impl LocalRanks {
    /// Makes a job id and secret, hosts the job's rendezvous store on
    /// 127.0.0.1, and starts ranks `1..spec.size`; returns once they are
    /// started (not joined). When a rank cannot be started, the ones
    /// already started are killed and reaped.
    pub fn start(spec: &LocalRanksSpec) -> Result<LocalRanks, SpawnError> {
        let layout = layout(spec.size, None, &this_host())?;
        let job_id = new_job_id();
        let secret = JobSecret::random();
        let server = RendezvousServer::bind(
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0),
            &job_id,
            spec.size,
            secret.clone(),
        )?;
        let rendezvous = server.local_addr();
        let caller_env = rank_env(&layout, 0, &job_id, rendezvous, &secret);
        let commands: Vec<_> = (1..spec.size)
            .map(|rank| {
                let mut variables = rank_env(&layout, rank, &job_id, rendezvous, &secret);
                variables.extend(spec.env.iter().cloned());
                local_command(&spec.program, &spec.args, &variables, &spec.env_remove)
            })
            .collect();
        let (stop, stop_rx) = mpsc::channel::<Duration>();
        let (stopped_tx, stopped) = mpsc::channel::<()>();
        let (ready_tx, ready) = mpsc::channel::<Result<(), (u32, std::io::Error)>>();
        let thread_job_id = job_id.clone();
        std::thread::Builder::new()
            .name("lumen-local-ranks".into())
            .spawn(move || {
                let mut children: Vec<Child> = Vec::with_capacity(commands.len());
                for (rank, mut command) in (1..).zip(commands) {
                    match command.spawn() {
                        Ok(child) => children.push(child),
                        Err(source) => {
                            for child in &mut children {
                                let _ = child.kill();
                                let _ = child.wait();
                            }
                            let _ = ready_tx.send(Err((rank, source)));
                            return;
                        }
                    }
                }
                let _ = ready_tx.send(Ok(()));
                // Until told to stop (or the handle is dropped), reap
                // nothing: the ranks are needed.
                let grace = stop_rx.recv().unwrap_or(Duration::ZERO);
                reap(&mut children, grace);
                remove_shm_segments(&thread_job_id);
                let _ = stopped_tx.send(());
            })
            .map_err(SpawnError::Thread)?;
        match ready.recv() {
            Ok(Ok(())) => {}
            Ok(Err((rank, source))) => {
                return Err(SpawnError::Spawn {
                    rank,
                    program: spec.program.to_string_lossy().into_owned(),
                    host: this_host(),
                    source,
                })
            }
            Err(_) => {
                return Err(SpawnError::Thread(std::io::Error::other(
                    "the spawning thread ended before it started the ranks",
                )))
            }
        }
        Ok(LocalRanks {
            job_id,
            caller_env,
            server: Some(server),
            stop,
            stopped,
        })
    }

    /// The job's id (`LUMEN_JOB_ID`).
    pub fn job_id(&self) -> &str {
        &self.job_id
    }

    /// The `LUMEN_*` variables that make the caller rank 0 of this job:
    /// join with them ([`crate::bootstrap::join_with`]) as the started ranks
    /// join with theirs.
    pub fn caller_env(&self) -> &[(String, String)] {
        &self.caller_env
    }

    /// Waits up to `grace` for the ranks to exit, kills those still
    /// running, reaps them, removes the job's `/dev/shm` files and closes
    /// the rendezvous store (which the ranks may use until they exit).
    pub fn stop(mut self, grace: Duration) {
        let _ = self.stop.send(grace);
        let _ = self.stopped.recv_timeout(grace + REAP_SLACK);
        if let Some(mut server) = self.server.take() {
            server.shutdown();
        }
    }

    /// Kills the ranks at once, for a caller that failed to join them.
    pub fn kill(self) {
        let _ = self.stop.send(Duration::ZERO);
        let _ = self.stopped.recv_timeout(FAILED_START_WAIT);
    }
}

/// Waits until `grace` has passed for `children` to exit, then kills the rest;
/// returns once all are reaped.
fn reap(children: &mut [Child], grace: Duration) {
    let deadline = Instant::now() + grace;
    loop {
        let mut running = 0;
        for child in children.iter_mut() {
            if matches!(child.try_wait(), Ok(None)) {
                running += 1;
            }
        }
        if running == 0 {
            return;
        }
        if Instant::now() >= deadline {
            for child in children.iter_mut() {
                let _ = child.kill();
            }
            for child in children.iter_mut() {
                let _ = child.wait();
            }
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}
