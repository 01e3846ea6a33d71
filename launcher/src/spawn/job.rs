//! [`run_job`]: the wait loop of `lumen run` (see the [spawn module
//! documentation](super) for what it does, in order).

use std::io::{self, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Child;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use lumen_transport::auth::JobSecret;
use rustix::process::{Pid, Signal, WaitId, WaitIdOptions};

use super::layout::{agent_words, layout, rank_env, this_host};
use super::process::{build_command, forward_lines, remove_shm_segments};
use super::signals::{signal_name, ActiveJob, Interrupts, LAST_SIGNAL, SIGNAL_COUNT};
use super::{
    new_job_id, ExitCause, JobOutcome, JobSpec, RankFailure, SpawnError, FAILURE_REPORT_WINDOW,
    STOP_GRACE,
};
use crate::config::{local_interfaces, select_interface_addr, Config};
use crate::rendezvous::RendezvousServer;

/// How long output still buffered in pipes is forwarded after the last rank exited.
const OUTPUT_DRAIN: Duration = Duration::from_secs(2);
/// How often the wait loop looks at signals and the grace period.
const TICK: Duration = Duration::from_millis(50);

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

/// Runs a job to completion (see the [module documentation](crate::spawn)) and says
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
    // For `lumen status` (see `crate::jobs`); the job runs without it.
    let _registration = crate::jobs::register(&crate::jobs::JobFile {
        job_id: job_id.clone(),
        rendezvous: rendezvous.to_string(),
        secret_hex: secret.to_hex(),
        pid: std::process::id(),
        ranks: spec.ranks,
        command: std::iter::once(&spec.program)
            .chain(&spec.args)
            .map(|word| word.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" "),
        started_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |t| t.as_secs()),
    })
    .map_err(|error| tracing::info!(%error, "no job file for lumen status"))
    .ok();

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
        let child = match command.spawn() {
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
        let pid = Pid::from_child(&child);
        ranks.push(Rank {
            child,
            pid,
            exit: None,
        });
    }
    // Forwarders start once every rank is forked: each fork copies the
    // mappings of the threads already running here (two per rank before,
    // and at 256 ranks the forks alone took 1.7 s of the start-up), and a
    // rank that fills its 64 KiB pipe before then only waits that long.
    for (rank, started) in ranks.iter_mut().enumerate() {
        let label = spec.label_output.then(|| format!("[{rank}] "));
        if let Some(stdout) = started.child.stdout.take() {
            readers += forward_lines(stdout, label.clone(), false, output_done.clone());
        }
        if let Some(stderr) = started.child.stderr.take() {
            readers += forward_lines(stderr, label, true, output_done.clone());
        }
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
