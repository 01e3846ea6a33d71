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
use crate::runtime::timeline;

/// Round trips per rank when measuring its clock.
const CLOCK_PROBES: usize = 5;
/// How long a rank may take to answer a probe or send its timeline.
const GATHER_TIMEOUT: Duration = Duration::from_secs(30);

impl Inner {
    /// Answers a request for this rank's counters.
    pub(super) fn on_stats(self: &Arc<Self>, src: Rank, request: u64) {
        let stats = self.local_stats();
        self.send_or_log(src, &RtMsg::StatsReply { request, stats });
    }

    /// Sends this rank's timeline events to the rank gathering them.
    pub(super) fn on_timeline_get(self: &Arc<Self>, src: Rank, request: u64, last: bool) {
        let (events, dropped) = timeline::snapshot(last);
        let node = self.node();
        self.send_or_log(
            src,
            &RtMsg::TimelineReply {
                request,
                node,
                dropped,
                events,
            },
        );
    }

    /// `rank`'s clock minus this rank's, in microseconds: the probe with
    /// the shortest of [`CLOCK_PROBES`] round trips, taking the answer as
    /// read halfway through it.
    fn clock_offset(self: &Arc<Self>, rank: Rank) -> Result<i64> {
        let mut best: Option<(u64, i64)> = None;
        for _ in 0..CLOCK_PROBES {
            let request = self.new_request();
            self.lock().replies.insert(request, Reply::Waiting(rank));
            let sent = timeline::now_us();
            self.send(rank, &RtMsg::ClockProbe { request })?;
            let Reply::Clock(theirs) = self.await_reply(request, Some(GATHER_TIMEOUT))? else {
                return Err(runtime_error(RuntimeError::RankDied {
                    rank,
                    what: "asking for its clock".into(),
                }));
            };
            let back = timeline::now_us();
            let rtt = back.saturating_sub(sent);
            let offset = theirs as i64 - ((sent + back) / 2) as i64;
            if best.is_none_or(|(shortest, _)| rtt < shortest) {
                best = Some((rtt, offset));
            }
        }
        Ok(best.map_or(0, |(_, offset)| offset))
    }

    /// Every rank's timeline, each on this rank's clock, handed to `sink`
    /// one rank at a time (so only one rank's events are held here), or
    /// why a rank is left out (dead, or it did not answer). `last`: the
    /// gather as the job ends (the others then write no file of their own).
    /// A `sink` that fails (the file cannot be written) ends the gather.
    pub(crate) fn gather_timeline(
        self: &Arc<Self>,
        last: bool,
        sink: &mut dyn FnMut(
            std::result::Result<timeline::RankTrace, (Rank, String)>,
        ) -> std::io::Result<()>,
    ) {
        // The ranks of a node share its clock: this node's are exact (0),
        // each other node is measured once, at its first rank that answers.
        let mut node_offsets: std::collections::HashMap<u32, i64> =
            std::collections::HashMap::from([(self.node(), 0)]);
        for info in self.ranks.iter() {
            let rank = info.rank;
            let gathered = if rank == self.rank {
                let (events, dropped) = timeline::snapshot(last);
                Ok(timeline::RankTrace {
                    rank,
                    node: info.node,
                    offset_us: 0,
                    dropped,
                    events,
                })
            } else if self.lock().dead.contains(&rank) {
                Err((rank, "dead".to_string()))
            } else {
                let offset = match node_offsets.get(&info.node) {
                    Some(&offset) => Ok(offset),
                    None => self.clock_offset(rank).inspect(|&offset| {
                        node_offsets.insert(info.node, offset);
                    }),
                };
                offset
                    .and_then(|offset_us| {
                        let request = self.new_request();
                        self.lock().replies.insert(request, Reply::Waiting(rank));
                        self.send(rank, &RtMsg::TimelineGet { request, last })?;
                        match self.await_reply(request, Some(GATHER_TIMEOUT))? {
                            Reply::Timeline(node, dropped, events) => Ok(timeline::RankTrace {
                                rank,
                                node,
                                offset_us,
                                dropped,
                                events,
                            }),
                            _ => Err(runtime_error(RuntimeError::RankDied {
                                rank,
                                what: "asking for its timeline".into(),
                            })),
                        }
                    })
                    .map_err(|e| {
                        tracing::warn!(rank, "timeline of rank {rank} left out: {e}");
                        (rank, e.to_string())
                    })
            };
            if sink(gathered).is_err() {
                return;
            }
        }
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
            tasks_retried: self.tasks_retried.load(Ordering::Relaxed),
            actors_restarted: self.actors_restarted.load(Ordering::Relaxed),
            fetched_bytes_one_sided: self.fetched.get("one-sided pull"),
            fetched_bytes_chunked: self.fetched.get("chunked pull"),
            fetched_bytes_shm: self.fetched.get("shm get"),
            fetched_bytes_tcp: self.fetched.get("tcp get"),
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
            Reply::Stats(stats) => Ok(*stats),
            _ => Err(runtime_error(RuntimeError::RankDied {
                rank,
                what: "asking for its counters".into(),
            })),
        }
    }
}
