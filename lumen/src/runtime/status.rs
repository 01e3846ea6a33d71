//! `lumen status`: a running job seen from outside.
//!
//! ```text
//!  lumen status ──(1) observer──▶ rendezvous store ── "lumen.status" ──▶ rank 0's address
//!       │                          (lumen run: LUMEN_RENDEZVOUS; srun: derived port on the
//!       │                           first node; both authenticated with the job secret)
//!       └──────(2) handshake + request ──▶ rank 0's status thread ──Stats──▶ every rank
//!                    ◀── JobStatus (JSON) ──────────────────────────────── (bounded wait)
//! ```
//!
//! Rank 0 of every runtime job serves its status on a TCP port of its own
//! (the IP its endpoint listens on, `LUMEN_STATUS_ADDR` to choose another)
//! and puts that address into the job's rendezvous store under
//! [`STORE_KEY`]. A caller proves it knows the job's secret with the same
//! handshake ranks use with each other ([`lumen_transport::handshake`]);
//! one that does not is refused before it can ask anything, and rank 0
//! logs the refusal. Each request makes rank 0 ask every live rank for its
//! counters ([`RankStats`]) and wait at most [`RANK_ANSWER_TIMEOUT`] for
//! them: a rank that does not answer in time is reported as not answering,
//! which is what a stuck rank looks like from outside.
//!
//! Design choices:
//! - Rank 0 gathers, not the tool: one connection per request whatever
//!   the job's size, and rank 0 already knows which ranks died and why,
//!   the placement groups (it is their head) and the named actors.
//! - The answer is JSON ([`JobStatus`], `lumen status --json`), so scripts
//!   and dashboards read the same thing the text view prints.
//!
//! What it cannot see yet: jobs that met through PMI (`srun --mpi=pmi2`,
//! Hydra) have no store to read the address from; per-task state (which
//! task runs where, how long it has been running); actors by name and
//! class on every rank (only the count per rank and the names rank 0
//! registered); bytes the transport moved outside object fetches.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use lumen_transport::auth::JobSecret;
use lumen_transport::frame::FrameKind;
use lumen_transport::handshake;
use serde::{Deserialize, Serialize};

pub use lumen_sched::GroupSummary;

use super::protocol::RankStats;

/// The key under which rank 0 puts its status address ([`StatusAddress`]
/// as JSON) into the job's rendezvous store.
pub const STORE_KEY: &str = "lumen.status";
/// Rank a status caller names itself in the handshake.
pub const CALLER_RANK: u32 = u32::MAX - 1;
/// How long rank 0 waits for each rank's counters.
pub const RANK_ANSWER_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest answer a caller reads (a million ranks' worth is far below).
pub const MAX_ANSWER: u32 = 256 << 20;

/// Where a job's status is served, as rank 0 puts it in the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusAddress {
    /// Rank 0's status port.
    pub addr: SocketAddr,
    /// The job id the handshake must name.
    pub job_id: String,
}

/// A job as rank 0 sees it at one moment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobStatus {
    /// The job id.
    pub job_id: String,
    /// Ranks in the job.
    pub size: u32,
    /// `driver` (rank 0 runs main, the others serve) or `spmd`.
    pub mode: String,
    /// Milliseconds since the epoch when rank 0 began gathering.
    pub taken_at_unix_ms: u64,
    /// How long gathering took, in milliseconds.
    pub gathered_ms: u64,
    /// Every rank, by rank.
    pub ranks: Vec<RankStatus>,
    /// Every node, by node index.
    pub nodes: Vec<NodeStatus>,
    /// The placement groups rank 0 (their head) holds.
    pub placement_groups: Vec<GroupSummary>,
    /// Named actors registered with rank 0, sorted.
    pub named_actors: Vec<String>,
}

/// One rank in a [`JobStatus`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RankStatus {
    /// The rank.
    pub rank: u32,
    /// Its node index.
    pub node: u32,
    /// Its node's host name (as the launcher named it).
    pub host: String,
    /// `alive`, `dead` or `not answering`.
    pub state: String,
    /// Why it is dead, or how long it was waited for.
    pub detail: Option<String>,
    /// How long its counters took to come back, in microseconds.
    pub answered_us: Option<u64>,
    /// Its counters, when it answered.
    pub stats: Option<RankStats>,
}

impl RankStatus {
    /// Mean time of the tasks this rank ran, in microseconds.
    pub fn mean_task_us(&self) -> Option<f64> {
        let stats = self.stats.as_ref()?;
        (stats.tasks_finished > 0)
            .then(|| stats.task_run_nanos as f64 / stats.tasks_finished as f64 / 1e3)
    }
}

/// One node in a [`JobStatus`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// Node index.
    pub node: u32,
    /// Host name.
    pub host: String,
    /// Its ranks.
    pub ranks: Vec<u32>,
    /// Live objects of the node arena (0 without one).
    pub arena_objects: u64,
    /// Arena heap bytes in use.
    pub arena_used_bytes: u64,
    /// Arena heap bytes.
    pub arena_capacity: u64,
    /// Arena bytes spilled to disk now.
    pub arena_spilled_bytes: u64,
}

/// Why a status request failed.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    /// Connecting, reading or writing failed.
    #[error("rank 0's status service at {addr}: {source}")]
    Io {
        /// Where.
        addr: SocketAddr,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
    /// The handshake failed: the wrong secret, another job's port, or
    /// something that is not a Lumen status service.
    #[error("rank 0's status service at {addr} refused this caller: {source} (is this the job's secret?)")]
    Refused {
        /// Where.
        addr: SocketAddr,
        /// What the handshake said.
        #[source]
        source: handshake::HandshakeError,
    },
    /// The answer was not a job status.
    #[error("rank 0's status service at {addr} answered something unreadable: {reason}")]
    Malformed {
        /// Where.
        addr: SocketAddr,
        /// Why.
        reason: String,
    },
}

/// Asks rank 0's status service at `addr` for the job's status, proving
/// knowledge of `secret` for job `job_id`. Every step is bounded by
/// `timeout` (rank 0 waits [`RANK_ANSWER_TIMEOUT`] for the ranks, so give
/// it more than that).
pub fn fetch(
    addr: SocketAddr,
    job_id: &str,
    secret: &JobSecret,
    timeout: Duration,
) -> Result<JobStatus, StatusError> {
    let io = |source| StatusError::Io { addr, source };
    let mut stream = TcpStream::connect_timeout(&addr, timeout).map_err(io)?;
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    stream.set_write_timeout(Some(timeout)).map_err(io)?;
    let _ = stream.set_nodelay(true);
    handshake::initiate(&mut stream, job_id, CALLER_RANK, secret)
        .map_err(|source| StatusError::Refused { addr, source })?;
    handshake::write_control(&mut stream, FrameKind::Store, CALLER_RANK, b"status").map_err(io)?;
    let (header, payload) = match handshake::read_frame(&mut stream, MAX_ANSWER) {
        Ok(frame) => frame,
        Err(handshake::HandshakeError::Io(source)) => return Err(io(source)),
        Err(other) => {
            return Err(StatusError::Malformed {
                addr,
                reason: other.to_string(),
            })
        }
    };
    if header.kind != FrameKind::Store {
        return Err(StatusError::Malformed {
            addr,
            reason: format!("a {:?} frame", header.kind),
        });
    }
    serde_json::from_slice(&payload).map_err(|e| StatusError::Malformed {
        addr,
        reason: e.to_string(),
    })
}

/// Reads the request after a caller's handshake and writes the answer
/// (`answer` is called only for a well-formed request).
pub(crate) fn answer_caller(
    stream: &mut (impl Read + Write),
    answer: impl FnOnce() -> JobStatus,
) -> Result<(), String> {
    let (header, payload) =
        handshake::read_frame(stream, 4096).map_err(|e| format!("no request: {e}"))?;
    if header.kind != FrameKind::Store || payload != b"status" {
        return Err(format!("unknown request ({:?} frame)", header.kind));
    }
    let json = serde_json::to_vec(&answer()).map_err(|e| e.to_string())?;
    handshake::write_control(stream, FrameKind::Store, 0, &json).map_err(|e| e.to_string())?;
    stream.flush().map_err(|e| e.to_string())
}

/// Which job `lumen status` attaches to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The one job this user runs here under `lumen run` (its file in
    /// `~/.lumen/jobs`), else the Slurm job of `SLURM_JOB_ID`.
    Only,
    /// A `lumen run` job id (`~/.lumen/jobs/<id>`), else a Slurm job id.
    Job(String),
    /// The job whose rendezvous store is at this `host:port`; the secret
    /// and job id come from `LUMEN_JOB_SECRET` and `LUMEN_JOB_ID` (as its
    /// ranks have them), else from the job file naming this address.
    Rendezvous(String),
}

/// A job found: where its rank 0 serves and how to prove we belong.
#[derive(Debug, Clone)]
pub struct Located {
    /// Rank 0's status address and the handshake's job id.
    pub address: StatusAddress,
    /// The job secret.
    pub secret: JobSecret,
    /// How it was found, for the header line.
    pub how: String,
}

/// Finds the job `target` names and reads rank 0's status address from
/// its rendezvous store, authenticated with the job's secret (see the
/// module docs). Errors say what was looked at and what to do.
pub fn locate(target: &Target, timeout: Duration) -> Result<Located, String> {
    use lumen_launcher::jobs;
    let from_file = |job: &jobs::JobFile| -> Result<(String, String, JobSecret), String> {
        let secret = JobSecret::from_hex(&job.secret_hex)
            .map_err(|_| format!("the job file of {} holds no valid secret", job.job_id))?;
        Ok((job.rendezvous.clone(), job.job_id.clone(), secret))
    };
    let running = jobs::running();
    let (rendezvous, job_id, secret) = match target {
        Target::Rendezvous(addr) => {
            let env_secret = std::env::var("LUMEN_JOB_SECRET").ok();
            let env_job = std::env::var("LUMEN_JOB_ID").ok();
            match (env_secret, env_job) {
                (Some(hex), Some(job)) => {
                    let secret = JobSecret::from_hex(hex.trim())
                        .map_err(|_| "LUMEN_JOB_SECRET is not 64 hex digits".to_string())?;
                    (addr.clone(), job, secret)
                }
                _ => match running.iter().find(|j| &j.rendezvous == addr) {
                    Some(job) => from_file(job)?,
                    None => {
                        return Err(format!(
                            "no secret for the job at {addr}: set LUMEN_JOB_SECRET and LUMEN_JOB_ID as its ranks have them, or run lumen status on the host and as the user of its lumen run"
                        ))
                    }
                },
            }
        }
        Target::Job(id) => match running.iter().find(|j| &j.job_id == id) {
            Some(job) => from_file(job)?,
            None => return locate_slurm(id, timeout),
        },
        Target::Only => match running.as_slice() {
            [job] => from_file(job)?,
            [] => match std::env::var("SLURM_JOB_ID") {
                Ok(id) => return locate_slurm(&id, timeout),
                Err(_) => {
                    return Err(
                        "no Lumen job of this user runs here under lumen run (~/.lumen/jobs has none); give a job id (a Slurm job id works) or --rendezvous HOST:PORT".into(),
                    )
                }
            },
            many => {
                let list: Vec<String> = many
                    .iter()
                    .map(|j| format!("{} ({} ranks: {})", j.job_id, j.ranks, j.command))
                    .collect();
                return Err(format!(
                    "{} jobs run here; name one: {}",
                    many.len(),
                    list.join("; ")
                ));
            }
        },
    };
    let mut store = lumen_launcher::bootstrap::observe(&rendezvous, &job_id, &secret, timeout)
        .map_err(|e| attach_error(&e, &job_id, &rendezvous))?;
    let address = read_address(&mut store, &job_id)?;
    Ok(Located {
        address,
        secret,
        how: format!("rendezvous {rendezvous}"),
    })
}

fn attach_error(
    error: &lumen_launcher::bootstrap::BootstrapError,
    job_id: &str,
    store: &str,
) -> String {
    use lumen_launcher::bootstrap::BootstrapError;
    use lumen_launcher::rendezvous::RendezvousError;
    match error {
        BootstrapError::Rendezvous(RendezvousError::Authentication { source, .. }) => format!(
            "the rendezvous store at {store} refused this caller ({source}): that is not job {job_id}'s secret"
        ),
        BootstrapError::Rendezvous(RendezvousError::Refused { reason, .. }) => format!(
            "the rendezvous store at {store} is not job {job_id}'s: {reason}"
        ),
        other => format!("attaching to the rendezvous store of job {job_id} at {store}: {other}"),
    }
}

fn read_address(
    store: &mut lumen_launcher::rendezvous::RendezvousClient,
    job_id: &str,
) -> Result<StatusAddress, String> {
    let value = store.get(STORE_KEY, Duration::from_secs(2)).map_err(|e| {
        format!("job {job_id}'s rank 0 has not published a status address ({e}); its runtime may not have started yet, or LUMEN_STATUS=0")
    })?;
    serde_json::from_slice(&value)
        .map_err(|e| format!("job {job_id}'s status address is unreadable: {e}"))
}

/// A Slurm job: its running steps from `squeue`, each step's store on its
/// first node (derived port, secret derived from `~/.lumen/job-key`).
fn locate_slurm(job: &str, timeout: Duration) -> Result<Located, String> {
    let output = std::process::Command::new("squeue")
        .args(["-h", "-s", "-j", job, "-o", "%i|%N"])
        .output()
        .map_err(|e| {
            format!("{job} is not a lumen run job here, and squeue cannot be run to look for a Slurm job ({e})")
        })?;
    if !output.status.success() {
        return Err(format!(
            "{job} is not a lumen run job here, and Slurm does not know it: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    let text = String::from_utf8_lossy(&output.stdout);
    let steps: Vec<(String, String)> = text
        .lines()
        .filter_map(|line| {
            let (id, nodes) = line.trim().split_once('|')?;
            let (_, step) = id.split_once('.')?;
            step.parse::<u32>().ok()?;
            Some((step.to_string(), nodes.to_string()))
        })
        .collect();
    if steps.is_empty() {
        return Err(format!(
            "Slurm job {job} has no running step: its ranks have not started yet (lumen run inside the allocation starts them with srun)"
        ));
    }
    let mut failures = Vec::new();
    // The newest step first: a batch script's latest lumen run.
    for (step, nodes) in steps.iter().rev() {
        let first = lumen_slurm::hostlist::expand(nodes)
            .ok()
            .and_then(|hosts| hosts.into_iter().next())
            .unwrap_or_else(|| nodes.clone());
        match lumen_launcher::bootstrap::observe_slurm_step(job, step, &first, timeout) {
            Ok((mut store, secret)) => match read_address(&mut store, &format!("{job}.{step}")) {
                Ok(address) => {
                    return Ok(Located {
                        address,
                        secret,
                        how: format!("Slurm step {job}.{step}, store on {first}"),
                    })
                }
                Err(e) => failures.push(e),
            },
            Err(e) => failures.push(format!("step {job}.{step} on {first}: {e}")),
        }
    }
    Err(format!(
        "no Lumen runtime found in Slurm job {job}: {}",
        failures.join("; ")
    ))
}

fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

fn duration_us(us: f64) -> String {
    if us >= 1e6 {
        format!("{:.2} s", us / 1e6)
    } else if us >= 1e3 {
        format!("{:.2} ms", us / 1e3)
    } else {
        format!("{us:.0} µs")
    }
}

/// How many ranks the slowest-ranks list names.
const SLOWEST: usize = 3;

/// The text `lumen status` prints.
pub fn render(status: &JobStatus) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let alive = status.ranks.iter().filter(|r| r.state == "alive").count();
    let _ = writeln!(
        out,
        "job {} ({} mode): {alive} of {} ranks alive on {} node{} (gathered in {} ms)",
        status.job_id,
        status.mode,
        status.size,
        status.nodes.len(),
        if status.nodes.len() == 1 { "" } else { "s" },
        status.gathered_ms
    );
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{:>5} {:>4} {:<16} {:<14} {:>8} {:>7} {:>6} {:>9} {:>7} {:>6} {:>7} {:>10}",
        "rank",
        "node",
        "host",
        "state",
        "pid",
        "running",
        "queued",
        "done",
        "pending",
        "actors",
        "objects",
        "mean task"
    );
    for rank in &status.ranks {
        let stats = rank.stats.unwrap_or_default();
        let some = rank.stats.is_some();
        let field = |value: u64| {
            if some {
                value.to_string()
            } else {
                "-".into()
            }
        };
        let _ = writeln!(
            out,
            "{:>5} {:>4} {:<16} {:<14} {:>8} {:>7} {:>6} {:>9} {:>7} {:>6} {:>7} {:>10}",
            rank.rank,
            rank.node,
            rank.host,
            rank.state,
            field(stats.pid),
            field(stats.tasks_running),
            field(stats.tasks_queued),
            field(stats.tasks_finished),
            field(stats.tasks_pending),
            field(stats.actors_hosted),
            field(stats.owned_objects),
            rank.mean_task_us().map_or("-".into(), duration_us),
        );
    }
    let troubled: Vec<&RankStatus> = status.ranks.iter().filter(|r| r.state != "alive").collect();
    if !troubled.is_empty() {
        let _ = writeln!(out);
        for rank in troubled {
            let _ = writeln!(
                out,
                "rank {} {}: {}",
                rank.rank,
                rank.state,
                rank.detail.as_deref().unwrap_or("no detail")
            );
        }
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "objects and arena by node:");
    for node in &status.nodes {
        let arena = if node.arena_capacity == 0 {
            "no arena".to_string()
        } else {
            format!(
                "arena {} of {} ({:.1}%), {} objects, {} spilled",
                bytes(node.arena_used_bytes),
                bytes(node.arena_capacity),
                node.arena_used_bytes as f64 * 100.0 / node.arena_capacity as f64,
                node.arena_objects,
                bytes(node.arena_spilled_bytes)
            )
        };
        let owned: u64 = status
            .ranks
            .iter()
            .filter(|r| r.node == node.node)
            .filter_map(|r| r.stats.map(|s| s.owned_objects))
            .sum();
        let _ = writeln!(
            out,
            "  node {} {}: ranks {:?}, {owned} owned objects, {arena}",
            node.node, node.host, node.ranks
        );
    }
    let _ = writeln!(out);
    if status.placement_groups.is_empty() {
        let _ = writeln!(out, "placement groups: none");
    } else {
        let _ = writeln!(out, "placement groups:");
        for group in &status.placement_groups {
            let _ = writeln!(
                out,
                "  {}:{} {:?} {} bundle{} {} on ranks {:?}",
                group.id.creator,
                group.id.seq,
                group.strategy,
                group.bundles.len(),
                if group.bundles.len() == 1 { "" } else { "s" },
                group.state,
                group.ranks
            );
        }
    }
    let actors: u64 = status
        .ranks
        .iter()
        .filter_map(|r| r.stats.map(|s| s.actors_hosted))
        .sum();
    let _ = writeln!(
        out,
        "actors: {actors} running{}",
        if status.named_actors.is_empty() {
            String::new()
        } else {
            format!("; named: {}", status.named_actors.join(", "))
        }
    );
    let sum = |f: fn(&RankStats) -> u64| -> u64 {
        status
            .ranks
            .iter()
            .filter_map(|r| r.stats.as_ref().map(f))
            .sum()
    };
    let _ = writeln!(
        out,
        "object bytes fetched: {} one-sided, {} in chunks, {} by shm get, {} by tcp get; {} tasks retried, {} actors restarted",
        bytes(sum(|s| s.fetched_bytes_one_sided)),
        bytes(sum(|s| s.fetched_bytes_chunked)),
        bytes(sum(|s| s.fetched_bytes_shm)),
        bytes(sum(|s| s.fetched_bytes_tcp)),
        sum(|s| s.tasks_retried),
        sum(|s| s.actors_restarted)
    );
    let mut timed: Vec<(&RankStatus, f64)> = status
        .ranks
        .iter()
        .filter_map(|r| Some((r, r.mean_task_us()?)))
        .collect();
    timed.sort_by(|a, b| b.1.total_cmp(&a.1));
    if timed.is_empty() {
        let _ = writeln!(out, "slowest ranks: no task has finished yet");
    } else {
        let _ = writeln!(out, "slowest ranks (mean task time):");
        for (rank, mean) in timed.iter().take(SLOWEST) {
            let done = rank.stats.map_or(0, |s| s.tasks_finished);
            let _ = writeln!(
                out,
                "  rank {}: {} over {done} tasks, answered in {}",
                rank.rank,
                duration_us(*mean),
                rank.answered_us
                    .map_or("-".into(), |us| duration_us(us as f64))
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rank(rank: u32, state: &str, stats: Option<RankStats>) -> RankStatus {
        RankStatus {
            rank,
            node: rank / 2,
            host: format!("h{}", rank / 2),
            state: state.into(),
            detail: (state != "alive").then(|| "no answer within 2 s".into()),
            answered_us: stats.map(|_| 150),
            stats,
        }
    }

    #[test]
    fn the_text_view_names_ranks_states_arena_groups_and_the_slowest() {
        let busy = RankStats {
            tasks_executed: 10,
            tasks_finished: 10,
            task_run_nanos: 50_000_000,
            tasks_running: 2,
            pid: 4242,
            ..RankStats::default()
        };
        let quick = RankStats {
            tasks_executed: 10,
            tasks_finished: 10,
            task_run_nanos: 10_000,
            ..RankStats::default()
        };
        let status = JobStatus {
            job_id: "l1x2".into(),
            size: 3,
            mode: "driver".into(),
            taken_at_unix_ms: 0,
            gathered_ms: 3,
            ranks: vec![
                rank(0, "alive", Some(quick)),
                rank(1, "alive", Some(busy)),
                rank(2, "not answering", None),
            ],
            nodes: vec![NodeStatus {
                node: 0,
                host: "h0".into(),
                ranks: vec![0, 1],
                arena_objects: 2,
                arena_used_bytes: 1 << 20,
                arena_capacity: 4 << 20,
                arena_spilled_bytes: 0,
            }],
            placement_groups: Vec::new(),
            named_actors: vec!["counter".into()],
        };
        let text = render(&status);
        assert!(text.contains("2 of 3 ranks alive"), "{text}");
        assert!(
            text.contains("rank 2 not answering: no answer within 2 s"),
            "{text}"
        );
        assert!(
            text.contains("arena 1.0 MiB of 4.0 MiB (25.0%), 2 objects"),
            "{text}"
        );
        assert!(text.contains("named: counter"), "{text}");
        let slowest = text.split("slowest ranks").nth(1).unwrap();
        assert!(
            slowest
                .trim_start()
                .contains("rank 1: 5.00 ms over 10 tasks"),
            "{text}"
        );
        assert!(text.contains("4242"));
        // JSON round trip (what --json prints and the service sends).
        let json = serde_json::to_string(&status).unwrap();
        assert_eq!(serde_json::from_str::<JobStatus>(&json).unwrap(), status);
    }
}
