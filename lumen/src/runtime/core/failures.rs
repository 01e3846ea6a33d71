//! Failures: the monitor that notices dead peers, and what a rank's death
//! does here — its registrations go, its tasks are retried or fail (the
//! decisions are the task table's; a task of a placement group goes to its
//! bundle's new rank), calls to its actors fail or are sent again to the
//! restarted actor, the actors this rank created on it restart, cached
//! views of placement groups with a bundle there are dropped, and everyone
//! waiting on it is woken with an error. The monitor also ages the queue
//! lengths ranks reported to this rank's scheduler.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use lumen_transport::{Rank, Source, TransportError};

use super::{Inner, Mode, Reply, MONITOR_PERIOD};
use crate::runtime::error::{TaskError, TaskErrorKind};
use crate::runtime::ids::ObjectId;
use crate::runtime::object_ref::Pinned;
use crate::runtime::protocol::{Outcome, RtMsg, PROBE_TAG};
use crate::runtime::refs::ObjectState;
use crate::runtime::scheduler::{Preferences, Request};
use crate::runtime::task_table::{actor_died, worker_died, ActorCall, TaskEffect};

impl Inner {
    /// The calls in flight to `host` (which died): those with retries left
    /// are sent again to wherever the actor's creator restarts it (on a
    /// thread of their own: finding the actor may wait for the creator);
    /// the others fail with `ActorDied`.
    pub(super) fn fail_actor_calls(self: &Arc<Self>, host: Rank, reason: &str) {
        let lost = self.lock().tasks.calls_lost(host);
        for call in lost.failed {
            self.fail_lost_call(call, host, reason);
        }
        if lost.resend.is_empty() {
            return;
        }
        let inner = self.clone();
        let resend = lost.resend;
        let spawned = std::thread::Builder::new()
            .name("lumen-actor-retry".into())
            .spawn(move || inner.resend_actor_calls(host, resend));
        if let Err(e) = spawned {
            tracing::error!("could not start a thread to resend actor calls: {e}");
        }
    }

    /// Completes a call lost with its actor's `host` with `ActorDied`.
    pub(super) fn fail_lost_call(
        self: &Arc<Self>,
        call: ActorCall<Pinned>,
        host: Rank,
        reason: &str,
    ) {
        let outcome = actor_died(call.name, call.actor, host, reason);
        self.on_done(call.object, outcome, Vec::new());
        if let Some(handles) = call.handles {
            self.handle_dropped(handles);
        }
    }

    /// Sends calls lost with `dead` again to the actor's new host (their
    /// sends are already counted by the task table).
    pub(super) fn resend_actor_calls(self: &Arc<Self>, dead: Rank, calls: Vec<ActorCall<Pinned>>) {
        for mut call in calls {
            let Some(retry) = call.retry.as_ref() else {
                continue;
            };
            let host = match self.actor_host(&retry.address) {
                Ok(host) => host,
                Err(e) => {
                    let reason = format!("its rank {dead} died and it was not restarted ({e})");
                    self.fail_lost_call(call, dead, &reason);
                    continue;
                }
            };
            let refs = retry.pinned.ids();
            if let Err(e) = self.register(&refs, host) {
                let reason = format!("its rank {dead} died; resending the call failed: {e}");
                self.fail_lost_call(call, dead, &reason);
                continue;
            }
            let message = RtMsg::ActorCall {
                actor: call.actor,
                method: retry.method,
                name: call.name.clone(),
                object: call.object,
                args: retry.args.clone(),
                refs,
                device_args: retry.device_args.clone(),
            };
            tracing::info!(
                "resending {} ({}) to {} on rank {host} (rank {dead} died); {} retries left",
                call.name,
                call.object,
                call.actor,
                retry.retries_left
            );
            call.host = host;
            let host_dead = {
                let mut s = self.lock();
                s.tasks.call_sent(call);
                s.dead.contains(&host)
            };
            if host_dead {
                self.fail_actor_calls(host, &format!("its rank {host} died"));
            } else {
                self.send_or_log(host, &message);
            }
        }
    }

    /// A peer is gone: drop its registrations, retry or fail its tasks,
    /// fail what waited on it.
    pub(super) fn on_rank_dead(self: &Arc<Self>, rank: Rank) {
        let detail = format!(
            "{} died (its process exited or closed its connections)",
            self.describe_rank(rank)
        );
        self.on_rank_dead_because(rank, &detail);
    }

    /// `rank` is dead, for the reason `detail`; rank 0 tells every rank.
    pub(super) fn on_rank_dead_because(self: &Arc<Self>, rank: Rank, detail: &str) {
        if self.lock().dead.contains(&rank) {
            return;
        }
        // The scheduler first: once the rank is in `dead`, a task placed on
        // it is retried at once (`task_sent_locked`), and while the
        // scheduler still offered it every retry went there again, using
        // up all attempts in an instant (seen in CI under load: "rank 4
        // died while running it (4 attempts)" for a task that never ran
        // on rank 4 after its death).
        self.scheduler
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .rank_died(rank);
        let (effects, task_effects, rebuilds) = {
            let mut s = self.lock();
            if !s.dead.insert(rank) {
                return;
            }
            s.dead_why.insert(rank, detail.to_string());
            // Under the same lock as the death: nobody may see a lost value
            // as lost (ObjectLost) that is about to be rebuilt.
            let (rebuilds, mut effects) = self.mark_lost(&mut s, rank);
            effects.extend(s.refs.rank_died(rank));
            let task_effects = s.tasks.rank_died(rank, detail);
            self.devices.rank_died(rank);
            for reply in s.replies.values_mut() {
                if matches!(reply, Reply::Waiting(r) if *r == rank) {
                    *reply = Reply::Failed;
                }
            }
            let orphaned: Vec<ObjectId> = s
                .remote_values
                .iter()
                .filter(|(id, v)| id.owner == rank && v.is_none())
                .map(|(id, _)| *id)
                .collect();
            for id in orphaned {
                s.remote_values.insert(id, Some(owner_died(id)));
            }
            (effects, task_effects, rebuilds)
        };
        tracing::warn!(rank = self.rank, dead = rank, "{detail}");
        self.announce_death(rank, detail);
        self.group_rank_died(rank);
        self.changed.notify_all();
        self.wake_all();
        self.apply(effects);
        self.fail_actor_calls(rank, &format!("its rank died: {detail}"));
        self.repair_mesh_calls(rank);
        self.restart_actors(rank);
        self.apply_task_effects(rank, task_effects);
        self.run_rebuilds(rank, rebuilds);
        if rank == 0 && self.mode == Mode::Driver && self.rank != 0 {
            // The driver is gone: nothing will ever be asked of us again.
            let (flag, cv) = &self.shutdown_requested;
            *flag.lock().unwrap_or_else(|p| p.into_inner()) = true;
            cv.notify_all();
        }
    }

    /// Places and sends again a task whose rank `dead` died (the task table
    /// counted the attempt); it fails if no rank can take it. A task of a
    /// placement group goes to its bundle's rank as the head knows it now
    /// (the bundle is placed again when its rank dies), found on a thread
    /// of its own: the group may be waiting for its new host.
    pub(super) fn retry_task(
        self: &Arc<Self>,
        dead: Rank,
        spec: crate::runtime::protocol::TaskSpec,
        pinned: Option<Pinned>,
    ) {
        let Some(scheduling) = spec.options.placement_group else {
            self.retry_task_now(dead, spec, pinned);
            return;
        };
        let inner = self.clone();
        let spawned = std::thread::Builder::new()
            .name("lumen-group-retry".into())
            .spawn(move || {
                let mut spec = spec;
                let found = inner.choose_bundle(
                    &spec.name,
                    scheduling,
                    &spec.options.resources,
                    None,
                    spec.options.node,
                    |r| inner.load_on(r).0,
                );
                match found {
                    Ok((_, host)) => {
                        spec.options.rank = Some(host);
                        inner.retry_task_now(dead, spec, pinned);
                    }
                    Err(e) => {
                        let detail = format!("rank {dead} died and its bundle has no rank: {e}");
                        let outcome = worker_died(&spec, dead, spec.attempt - 1, detail);
                        inner.on_done(spec.object, outcome, Vec::new());
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::error!("could not start a thread to retry a task of a placement group: {e}");
        }
    }

    /// [`Inner::retry_task`] once the task's rank constraints are known.
    /// A task with arguments this rank owns that are pending (rebuilt or
    /// still running) is held until they are ready (see
    /// [`super::lineage::Deferred`]).
    pub(super) fn retry_task_now(
        self: &Arc<Self>,
        dead: Rank,
        spec: crate::runtime::protocol::TaskSpec,
        pinned: Option<Pinned>,
    ) {
        let (spec, pinned) = {
            let mut s = self.lock();
            let pending = super::lineage::pending_owned(self.rank, &spec.refs, |id| {
                matches!(s.refs.state(id), Some(ObjectState::Pending))
            });
            if !pending.is_empty() {
                tracing::debug!(
                    "{} ({}) waits for {} pending arguments before its retry",
                    spec.name,
                    spec.object,
                    pending.len()
                );
                s.deferred.hold(spec.object, (dead, spec, pinned), &pending);
                return;
            }
            (spec, pinned)
        };
        let object = spec.object;
        let bytes = self.argument_bytes(&spec.refs);
        let placed = self
            .scheduler
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .place_task_with(
                &Request {
                    resources: Some(&spec.options.resources),
                    node: spec.options.node,
                    rank: spec.options.rank,
                    data_at: None,
                },
                &Preferences {
                    strategy: spec.options.scheduling,
                    args: &bytes,
                    nic_local: spec.options.near_nic,
                },
            );
        let target = match placed {
            Ok(target) => target,
            Err(e) => {
                let detail = format!(
                    "{} and no rank can take the retry: {}",
                    self.why_dead(dead),
                    e.0
                );
                let outcome = worker_died(&spec, dead, spec.attempt - 1, detail);
                self.on_done(object, outcome, Vec::new());
                return;
            }
        };
        self.tasks_retried
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(
            "retrying {} ({object}) on rank {target}, attempt {}",
            spec.name,
            spec.attempt
        );
        if let Err(e) = self.register(&spec.refs, target) {
            let error = TaskError {
                function: spec.name.clone(),
                rank: dead,
                kind: TaskErrorKind::DependencyFailed,
                message: format!("retry after rank {dead} died: {e}"),
            };
            self.on_done(object, Outcome::Failed(error), Vec::new());
            return;
        }
        let message = RtMsg::Submit(spec.clone());
        let late = {
            let mut s = self.lock();
            self.task_sent_locked(&mut s, spec, target, pinned)
        };
        if late.is_empty() {
            self.send_or_log(target, &message);
        } else {
            self.apply_task_effects(target, late);
        }
    }

    /// (under the state lock) Puts a task sent to `target` in the task
    /// table. A target declared dead since it was placed (the placement
    /// and the death are not under one lock) gets its death's treatment
    /// at once: the returned effects (a retry elsewhere or a failure),
    /// for [`Inner::apply_task_effects`] after the lock. Without this
    /// the task would wait forever for a rank whose death was already
    /// handled.
    pub(super) fn task_sent_locked(
        &self,
        s: &mut super::State,
        spec: crate::runtime::protocol::TaskSpec,
        target: Rank,
        pinned: Option<Pinned>,
    ) -> Vec<TaskEffect<Pinned>> {
        if !s.dead.contains(&target) {
            s.tasks.task_sent(spec, target, pinned);
            return Vec::new();
        }
        tracing::info!(
            "rank {target} was declared dead before {} ({}) reached it",
            spec.name,
            spec.object
        );
        s.tasks.task_sent(spec, target, pinned);
        let why = s
            .dead_why
            .get(&target)
            .cloned()
            .unwrap_or_else(|| format!("rank {target} died"));
        s.tasks.rank_died(target, &why)
    }

    /// Carries out the task table's decisions about tasks whose rank
    /// `dead` died.
    pub(super) fn apply_task_effects(
        self: &Arc<Self>,
        dead: Rank,
        effects: Vec<TaskEffect<Pinned>>,
    ) {
        for effect in effects {
            match effect {
                TaskEffect::Fail {
                    object,
                    outcome,
                    pinned,
                } => {
                    self.on_done(object, outcome, Vec::new());
                    drop(pinned);
                }
                TaskEffect::Retry { spec, pinned } => self.retry_task(dead, spec, pinned),
            }
        }
    }

    /// True once some rank is known dead.
    /// Why `rank` is dead (`rank 4 (node 2) silent for 2003 ms ...`).
    pub(crate) fn why_dead(&self, rank: Rank) -> String {
        self.lock()
            .dead_why
            .get(&rank)
            .cloned()
            .unwrap_or_else(|| format!("rank {rank} died"))
    }

    pub(crate) fn any_dead(&self) -> bool {
        !self.lock().dead.is_empty()
    }

    /// True once `rank` is known dead.
    pub(crate) fn is_dead(&self, rank: Rank) -> bool {
        self.lock().dead.contains(&rank)
    }

    /// Tells every live rank to stop serving (driver mode).
    pub(crate) fn broadcast_shutdown(self: &Arc<Self>) {
        for rank in 0..self.size {
            if rank != self.rank && !self.is_dead(rank) {
                self.send_or_log(rank, &RtMsg::Shutdown);
            }
        }
    }
}

/// The outcome of an object whose owner died (fate sharing).
pub(super) fn owner_died(object: ObjectId) -> Outcome {
    Outcome::Failed(TaskError {
        function: String::new(),
        rank: object.owner,
        kind: TaskErrorKind::OwnerDied,
        message: format!("the owner (rank {}) of {object} died", object.owner),
    })
}

/// Monitor rounds between two halvings of the queue lengths ranks reported
/// (5 × 20 ms: a report's half-life is 100 ms).
const REPORT_DECAY_ROUNDS: u32 = 5;

/// Watches peers: a receive on a tag nobody uses, without waiting, reports a
/// dead or departed peer (the transport's progress thread notices deaths
/// through pidfds and closed sockets).
pub(super) fn monitor(runtime: Weak<Inner>) {
    let mut rounds: u32 = 0;
    loop {
        std::thread::sleep(MONITOR_PERIOD);
        let Some(inner) = runtime.upgrade() else {
            return;
        };
        if inner.stopping.load(Ordering::Acquire) {
            return;
        }
        rounds = rounds.wrapping_add(1);
        inner.liveness_round();
        if rounds % REPORT_DECAY_ROUNDS == 0 {
            // Queue lengths come only with answers: one that looked busy
            // is tried again after a while (see `Scheduler::decay_reports`).
            inner
                .scheduler
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .decay_reports();
        }
        for rank in 0..inner.size {
            if rank == inner.rank || inner.is_dead(rank) {
                continue;
            }
            let probe = inner
                .endpoint
                .recv_timeout(Source::Rank(rank), PROBE_TAG, Duration::ZERO);
            if let Err(TransportError::PeerDied { .. } | TransportError::PeerClosed { .. }) = probe
            {
                if inner.stopping.load(Ordering::Acquire) {
                    return;
                }
                inner.on_rank_dead(rank);
            }
        }
    }
}
