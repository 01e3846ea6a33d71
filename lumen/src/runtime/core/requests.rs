//! Requests to other ranks that a caller blocks on (a reply slot per
//! request id, failed when the peer dies), the rank's counters, shutdown.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lumen_transport::Rank;

use super::{runtime_error, Inner, Reply, WAIT_SLICE};
use crate::error::Result;
use crate::runtime::error::RuntimeError;
use crate::runtime::protocol::{RankStats, RtMsg};

impl Inner {
    /// Answers a request for this rank's counters.
    pub(super) fn on_stats(self: &Arc<Self>, src: Rank, request: u64) {
        let stats = self.local_stats();
        self.send_or_log(src, &RtMsg::StatsReply { request, stats });
    }

    /// The driver ends the job: serving ranks leave.
    pub(super) fn on_shutdown(&self) {
        let (flag, cv) = &self.shutdown_requested;
        *flag.lock().unwrap_or_else(|p| p.into_inner()) = true;
        cv.notify_all();
    }

    /// Waits for the answer to `request` (registered in `replies`).
    pub(super) fn await_reply(
        self: &Arc<Self>,
        request: u64,
        timeout: Option<Duration>,
    ) -> Result<Reply> {
        let deadline = timeout.map(|t| Instant::now() + t);
        self.blocking(|| {
            let mut spin = self.spin_clock();
            let mut s = self.lock();
            loop {
                match s.replies.get(&request) {
                    Some(Reply::Waiting(_)) => {}
                    Some(_) => {
                        return s
                            .replies
                            .remove(&request)
                            .ok_or(runtime_error(RuntimeError::ShuttingDown));
                    }
                    None => return Err(runtime_error(RuntimeError::ShuttingDown)),
                }
                let slice = match deadline {
                    Some(d) => {
                        let left = d.saturating_duration_since(Instant::now());
                        if left.is_zero() {
                            s.replies.remove(&request);
                            return Err(runtime_error(RuntimeError::Timeout {
                                what: format!("request {request}"),
                                waited: timeout.unwrap_or_default(),
                            }));
                        }
                        left.min(WAIT_SLICE)
                    }
                    None => WAIT_SLICE,
                };
                s = self.pause(s, &mut spin, slice);
            }
        })
    }

    pub(super) fn answer(&self, request: u64, reply: Reply) {
        let mut s = self.lock();
        if let Some(slot) = s.replies.get_mut(&request) {
            *slot = reply;
        }
        drop(s);
        self.changed.notify_all();
    }

    pub(crate) fn local_stats(&self) -> RankStats {
        let (running, queued) = self.executor.load();
        let arena = self.store.arena_stats().unwrap_or_default();
        let s = self.lock();
        RankStats {
            owned_objects: s.refs.owned_count() as u64,
            borrowed_objects: s.refs.borrowed_count() as u64,
            stored_values: self.store.len() as u64,
            arena_objects: self.store.arena_live().unwrap_or(0),
            freed_objects: s.refs.freed_count(),
            tasks_executed: self.tasks_executed.load(Ordering::Relaxed),
            actors_hosted: self.actors.live(),
            chunks_served: self.store.chunks_served(),
            one_sided_pulls: self.store.one_sided_pulls(),
            objects_rebuilt: self.lineage.rebuilt(),
            tasks_pending: s.tasks.len() as u64,
            tasks_pending_peak: self.limits.pending_peak.load(Ordering::Relaxed),
            submissions_waited: self.limits.pending_waits.load(Ordering::Relaxed),
            waits_slept: self.changed.sleeps.load(Ordering::Relaxed),
            executor_sleeps: self.executor.sleeps(),
            actor_sleeps: super::super::actor::actor_sleeps(),
            idle_spins_found: self.executor.spin_counts().0,
            idle_spins_empty: self.executor.spin_counts().1,
            poll_sessions: self.endpoint.poll_sessions().0,
            polls_refused: self.endpoint.poll_sessions().1,
            doorbell_rings: lumen_transport::doorbell_rings(),
            tasks_running: running,
            tasks_queued: queued,
            task_run_nanos: self.task_runs.sum_nanos(),
            tasks_finished: self.task_runs.count(),
            arena_used_bytes: arena.used_bytes,
            arena_capacity: arena.capacity,
            arena_spilled_objects: arena.spilled_objects,
            arena_spilled_bytes: arena.spilled_bytes,
            arena_spills: arena.spills,
            pid: u64::from(std::process::id()),
        }
    }

    /// Counters of `rank` (asks it when it is not this rank).
    pub(crate) fn stats(self: &Arc<Self>, rank: Rank) -> Result<RankStats> {
        if rank == self.rank {
            return Ok(self.local_stats());
        }
        let request = self.new_request();
        self.lock().replies.insert(request, Reply::Waiting(rank));
        self.send(rank, &RtMsg::Stats { request })?;
        match self.await_reply(request, None)? {
            Reply::Stats(stats) => Ok(stats),
            _ => Err(runtime_error(RuntimeError::RankDied {
                rank,
                what: "asking for its counters".into(),
            })),
        }
    }
}
