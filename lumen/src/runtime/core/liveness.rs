//! Failure detection with a bound: a rank that stops answering without
//! closing its connections (a cut link, a hung or stopped host) is noticed
//! within `LUMEN_FAILURE_TIMEOUT_MS` (default 5 s, see
//! `lumen_launcher::config`), not only one that exits.
//!
//! - **Between nodes.** On a node a death is seen through the process
//!   (pidfd) at once; the silence bound applies to peers on other nodes.
//! - **On a node, stopped processes.** A peer on the watcher's own node
//!   whose process has been stopped (`/proc/PID/stat` state `T` or `t`:
//!   SIGSTOP, a debugger) for the bound is declared dead in the same way;
//!   its state is read once per heartbeat interval, and every monitor
//!   round while it is stopped. Silence is not used on
//!   a node: those messages wait for this rank's progress thread, which a
//!   long handler may hold for a while. A process that runs but whose
//!   program hangs (a deadlock in user code) is not a failure here, on a
//!   node or across nodes: its transport still answers.
//! - **Heartbeats, piggybacked.** Every rank and rank 0 watch each other:
//!   any message counts as a sign of life (the transport flags each arrival,
//!   `Endpoint::heard_from`), and a heartbeat goes only to a peer that was
//!   sent nothing else for a fifth of the bound (`Endpoint::sent_to`). Ranks
//!   watch rank 0 only, rank 0 watches all, so a job of N ranks carries
//!   2 N heartbeats per fifth of the bound at most, none while busy.
//! - **Rank 0 decides.** A rank silent for the bound is declared dead by
//!   rank 0 (with the ranks of its node silent for half the bound: a host
//!   goes as a whole, so no retry or restarted actor is placed on a
//!   neighbour about to be declared too), which marks it dead in its
//!   transport (waits on it fail at once, naming it), handles the death
//!   as for a crash (retries, restarts, `OwnerDied`), and tells every
//!   other rank, once: one sender, per-pair order, so every rank hears of
//!   deaths in the same order. Deaths rank 0
//!   notices itself (exits, closed connections) are announced the same way.
//! - **A cut-off minority stops.** A rank that hears nothing from rank 0
//!   for the bound, or is told it was declared dead, stops its process with
//!   an error saying so, instead of running on beside the job that replaced
//!   its work.
//! - **TCP.** Connections carry `TCP_USER_TIMEOUT` and keepalives of the
//!   same bound (the transport's `failure_timeout`), so a send to a silent
//!   host fails within it too.
//!
//! What the bound costs: a rank that is only slow (swapping, stopped with
//! SIGSTOP) for longer than the bound is declared dead; raise it for such
//! jobs, or set 0 to turn the detector off.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lumen_transport::Rank;

use super::Inner;
use crate::runtime::protocol::{encode, RtMsg, HEARTBEAT_TAG};

/// The detector's state on one rank.
#[derive(Debug)]
pub(crate) struct Liveness {
    /// Zero: off.
    bound: Duration,
    /// When each peer was last heard from and last sent to, and when the
    /// last round ran.
    clocks: Mutex<(Vec<(Instant, Instant)>, Instant)>,
    /// Watched peers on this node whose process was seen stopped, since
    /// when, and when their states were last read.
    stopped: Mutex<(std::collections::HashMap<Rank, Instant>, Option<Instant>)>,
}

impl Liveness {
    pub(crate) fn new(size: u32, bound: Duration) -> Self {
        let now = Instant::now();
        Liveness {
            bound,
            clocks: Mutex::new((vec![(now, now); size as usize], now)),
            stopped: Mutex::new((std::collections::HashMap::new(), None)),
        }
    }

    /// `LUMEN_FAILURE_TIMEOUT_MS`, as the launcher reads it (the default
    /// when unset; off when malformed, with the launcher's error logged).
    pub(crate) fn bound_from_env() -> Duration {
        match lumen_launcher::config::Config::from_env(|name| std::env::var(name).ok()) {
            Ok(config) => config.failure_timeout,
            Err(e) => {
                tracing::error!("{e}; the failure detector is off");
                Duration::ZERO
            }
        }
    }

    fn interval(&self) -> Duration {
        (self.bound / 5).max(Duration::from_millis(20))
    }
}

impl Inner {
    /// One round of the detector (from the monitor thread).
    pub(super) fn liveness_round(self: &Arc<Self>) {
        let bound = self.liveness.bound;
        if bound.is_zero() || self.size < 2 {
            return;
        }
        let now = Instant::now();
        let interval = self.liveness.interval();
        // Peers on other nodes: on this node a death is seen through the
        // process itself (pidfd), and this node's messages wait for this
        // rank's progress thread, which a long handler may hold for a while.
        let watched: Vec<Rank> = if self.rank == 0 {
            (1..self.size).collect()
        } else {
            vec![0]
        };
        let (watched, local): (Vec<Rank>, Vec<Rank>) = watched
            .into_iter()
            .partition(|&peer| !self.endpoint.is_local(peer));
        let mut silent = self.stopped_peers(&local, now);
        if watched.is_empty() && silent.is_empty() {
            return;
        }
        let mut beat = Vec::new();
        {
            let mut guard = self
                .liveness
                .clocks
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            let (clocks, last_round) = &mut *guard;
            // This rank itself stalled (the machine, a debugger): nobody is
            // declared for a silence it could not have heard end.
            if now.duration_since(*last_round) > bound / 2 {
                for (heard, _) in clocks.iter_mut() {
                    *heard = now;
                }
            }
            *last_round = now;
            let watched: Vec<Rank> = watched.into_iter().filter(|&p| !self.is_dead(p)).collect();
            for &peer in &watched {
                if self.endpoint.heard_from(peer) {
                    clocks[peer as usize].0 = now;
                }
            }
            let quiet = |peer: Rank| now.duration_since(clocks[peer as usize].0);
            // A node one of whose ranks is past the bound: its other ranks
            // silent for half of it go with it (the whole host is gone or
            // cut off; one by one, a retry could land on the next to go).
            let silent_nodes: Vec<u32> = watched
                .iter()
                .filter(|&&p| quiet(p) > bound)
                .filter_map(|&p| self.node_of(p))
                .collect();
            let mut quiet_peers = Vec::new();
            for &peer in &watched {
                let q = quiet(peer);
                let node_silent = self
                    .node_of(peer)
                    .is_some_and(|n| silent_nodes.contains(&n));
                if q > bound || (q > bound / 2 && node_silent) {
                    quiet_peers.push((peer, q));
                }
            }
            for &peer in &watched {
                if let Some(&(_, q)) = quiet_peers.iter().find(|(p, _)| *p == peer) {
                    let detail = if q > bound {
                        format!(
                            "{} silent for {} ms (LUMEN_FAILURE_TIMEOUT_MS={})",
                            self.describe_rank(peer),
                            q.as_millis(),
                            bound.as_millis()
                        )
                    } else {
                        format!(
                            "{} silent for {} ms, beside a rank of its node silent for longer than LUMEN_FAILURE_TIMEOUT_MS={} (the node is taken as gone)",
                            self.describe_rank(peer),
                            q.as_millis(),
                            bound.as_millis()
                        )
                    };
                    silent.push((peer, detail));
                    continue;
                }
                let sent = &mut clocks[peer as usize].1;
                if self.endpoint.sent_to(peer) {
                    *sent = now;
                } else if now.duration_since(*sent) >= interval {
                    *sent = now;
                    beat.push(peer);
                }
            }
        }
        for peer in beat {
            // A failed send is the transport noticing the death itself.
            let _ = self.endpoint.send(peer, HEARTBEAT_TAG, &[]);
        }
        if self.rank == 0 && !silent.is_empty() {
            // A host that stops answering takes all its ranks: none of them
            // may receive a retry or a restarted actor while its neighbours
            // are declared one by one (a restart there would be lost too).
            let mut scheduler = self.scheduler.lock().unwrap_or_else(|p| p.into_inner());
            for (peer, _) in &silent {
                scheduler.rank_died(*peer);
            }
        }
        for (peer, detail) in silent {
            if self.stopping.load(Ordering::Acquire) {
                return;
            }
            if self.rank == 0 {
                tracing::error!("declaring {detail}: dead");
                // Told first (the transport refuses sends to a dead peer): a
                // rank that was only stopped hears it when it resumes.
                let notice = encode(&RtMsg::RankDead {
                    rank: peer,
                    detail: detail.clone(),
                });
                let _ = self
                    .endpoint
                    .send(peer, crate::runtime::protocol::RUNTIME_TAG, &notice);
                self.endpoint.declare_dead(peer, &detail);
                self.on_rank_dead_because(peer, &detail);
            } else {
                self.stop_cut_off(&format!("lost contact with the job's head: {detail}"));
            }
        }
    }

    /// The watched peers on this node (`local`) whose process has been
    /// stopped for the bound, with why (see the module docs).
    fn stopped_peers(&self, local: &[Rank], now: Instant) -> Vec<(Rank, String)> {
        let bound = self.liveness.bound;
        let mut guard = self
            .liveness
            .stopped
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let (since, last) = &mut *guard;
        // All of them once per interval; those seen stopped every round,
        // so that a resume between two stops is not missed.
        let all = last.is_none_or(|at| now.duration_since(at) >= self.liveness.interval());
        if all {
            *last = Some(now);
        }
        let mut out = Vec::new();
        let due: Vec<Rank> = local
            .iter()
            .copied()
            .filter(|p| all || since.contains_key(p))
            .collect();
        for peer in due {
            if peer == self.rank || self.is_dead(peer) {
                since.remove(&peer);
                continue;
            }
            let Some(pid) = self.endpoint.local_pid(peer) else {
                continue;
            };
            let state = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| process_state(&stat));
            if !matches!(state, Some('T' | 't')) {
                since.remove(&peer);
                continue;
            }
            let from = *since.entry(peer).or_insert(now);
            let stopped = now.duration_since(from);
            if stopped >= bound {
                since.remove(&peer);
                out.push((
                    peer,
                    format!(
                        "{}, process {pid}, stopped (SIGSTOP or a debugger) for {} ms (LUMEN_FAILURE_TIMEOUT_MS={})",
                        self.describe_rank(peer),
                        stopped.as_millis(),
                        bound.as_millis()
                    ),
                ));
            }
        }
        out
    }

    /// `rank 4 (node 2)`.
    pub(crate) fn describe_rank(&self, rank: Rank) -> String {
        match self.ranks.get(rank as usize) {
            Some(info) => format!("rank {rank} (node {})", info.node),
            None => format!("rank {rank}"),
        }
    }

    /// (rank 0) Tells every live rank that `rank` is dead, once per death:
    /// every rank hears of deaths from rank 0 in one order. (A rank the
    /// detector declared was told before, see `liveness_round`: alive but
    /// cut off or stopped, it then stops.)
    pub(super) fn announce_death(self: &Arc<Self>, rank: Rank, detail: &str) {
        if self.rank != 0 || self.stopping.load(Ordering::Acquire) {
            return;
        }
        let message = encode(&RtMsg::RankDead {
            rank,
            detail: detail.to_string(),
        });
        for peer in 1..self.size {
            if peer == self.rank || peer == rank || self.is_dead(peer) {
                continue;
            }
            let _ = self
                .endpoint
                .send(peer, crate::runtime::protocol::RUNTIME_TAG, &message);
        }
    }

    /// (not rank 0) Rank 0 says `rank` is dead.
    pub(super) fn on_rank_declared_dead(self: &Arc<Self>, src: Rank, rank: Rank, detail: String) {
        if src != 0 {
            tracing::warn!(
                rank = self.rank,
                "a death notice for rank {rank} from rank {src} (only rank 0 declares) ignored"
            );
            return;
        }
        if rank == self.rank {
            self.stop_cut_off(&format!("rank 0 declared this rank dead: {detail}"));
            return;
        }
        self.endpoint.declare_dead(rank, &detail);
        self.on_rank_dead_because(rank, &detail);
    }

    /// Stops this process: it is cut off from the job, whose other ranks
    /// carry on without it (see the module docs).
    fn stop_cut_off(&self, why: &str) {
        if self.stopping.load(Ordering::Acquire) {
            return;
        }
        tracing::error!(rank = self.rank, "{why}; this rank stops");
        eprintln!(
            "lumen: rank {} stops: {why} (partitioned from the job, or the job's head died)",
            self.rank
        );
        std::process::exit(75);
    }
}

/// The state letter of a `/proc/PID/stat` line (`R`, `S`, `T`, ...): the
/// field after the command, which is in parentheses and may hold spaces
/// and parentheses itself.
fn process_state(stat: &str) -> Option<char> {
    let (_, rest) = stat.rsplit_once(')')?;
    rest.trim_start().chars().next()
}

#[cfg(test)]
mod tests {
    use super::process_state;

    #[test]
    fn the_state_of_a_process_is_read_after_its_command() {
        assert_eq!(process_state("42 (rt_faults) T 1 42 42 0"), Some('T'));
        assert_eq!(process_state("7 (a (b) c) S 1 7"), Some('S'));
        assert_eq!(process_state("7 (no state)"), None);
        assert_eq!(process_state("garbage"), None);
        let own = std::fs::read_to_string("/proc/thread-self/stat").expect("procfs");
        assert_eq!(process_state(&own), Some('R'), "{own}");
    }
}
