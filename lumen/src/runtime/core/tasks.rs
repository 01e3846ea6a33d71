//! Tasks: submission (placement, registration of argument references, the
//! task table), running a task on an executor thread, reporting and
//! receiving its outcome, cancelling.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use serde::Serialize;

use lumen_transport::Rank;

use super::{check_gpu_request, encode_args, infeasible, panic_message, runtime_error, Inner};
use crate::error::Result;
use crate::runtime::error::{RuntimeError, TaskError, TaskErrorKind};
use crate::runtime::ids::ObjectId;
use crate::runtime::object_ref::{collect_refs, Pinned};
use crate::runtime::options::TaskOptions;
use crate::runtime::protocol::{encode, Outcome, RtMsg, TaskSpec, RUNTIME_TAG};
use crate::runtime::refs::ObjectState;
use crate::runtime::registry::{self, TaskFailure};
use crate::runtime::scheduler::{Preferences, Request};
use crate::runtime::task_table::{ActorCall, InFlight};

/// Serialises as `RtMsg::Submit(spec)` (a newtype variant, index 0)
/// without owning the spec; a test checks the bytes are the same.
struct SubmitRef<'a>(&'a TaskSpec);

impl Serialize for SubmitRef<'_> {
    fn serialize<S: serde::Serializer>(
        &self,
        serializer: S,
    ) -> std::result::Result<S::Ok, S::Error> {
        serializer.serialize_newtype_variant("RtMsg", 0, "Submit", self.0)
    }
}

impl Inner {
    /// (host) A task to run here: its argument objects are held until it
    /// ran (`release_all` in `run_task`).
    pub(super) fn on_submit(self: &Arc<Self>, src: Rank, spec: TaskSpec) {
        self.hold_all(&spec.refs);
        if let Err(spec) = self.executor.push(spec, src) {
            self.fail_removed(*spec);
        }
    }

    /// (host) The owner cancels `object`'s task; it fails with `Cancelled`
    /// if it has not started, else it runs to its end.
    pub(super) fn on_cancel(self: &Arc<Self>, object: ObjectId) {
        let Some(spec) = self.executor.remove(object) else {
            return;
        };
        let failure = TaskError {
            function: spec.name.clone(),
            rank: self.rank,
            kind: TaskErrorKind::Cancelled,
            message: "cancelled before it started".into(),
        };
        self.send_or_log(
            object.owner,
            &RtMsg::Done {
                object,
                outcome: Outcome::Failed(failure),
                refs: Vec::new(),
                queued: self.executor.queued(),
            },
        );
        self.release_all(&spec.refs);
    }

    /// Waits while this rank has `LUMEN_MAX_PENDING_TASKS` tasks and
    /// actor calls pending (backpressure): until one finishes, or fails
    /// with `TooManyPending` after `LUMEN_SUBMIT_TIMEOUT_MS`. A wait of
    /// more than 10 s is logged once, saying why. Threads submitting at
    /// once may each pass the last free place: the bound is kept to within
    /// the number of submitting threads.
    pub(super) fn wait_for_room(&self, what: &str) -> Result<()> {
        let limits = &self.limits;
        if limits.max_pending == 0 {
            return Ok(());
        }
        let mut s = self.lock();
        let mut started = None;
        let mut warned = false;
        loop {
            let pending = s.tasks.len();
            if pending < limits.max_pending {
                limits
                    .pending_peak
                    .fetch_max(pending as u64 + 1, Ordering::Relaxed);
                return Ok(());
            }
            if self.stopping.load(Ordering::Acquire) {
                return Err(runtime_error(RuntimeError::ShuttingDown));
            }
            let since = *started.get_or_insert_with(|| {
                limits.pending_waits.fetch_add(1, Ordering::Relaxed);
                std::time::Instant::now()
            });
            let waited = since.elapsed();
            if let Some(timeout) = limits.submit_timeout.filter(|t| waited >= *t) {
                return Err(runtime_error(RuntimeError::TooManyPending {
                    what: what.to_string(),
                    pending,
                    limit: limits.max_pending,
                    waited: timeout,
                }));
            }
            if !warned && waited >= std::time::Duration::from_secs(10) {
                warned = true;
                tracing::warn!(
                    rank = self.rank,
                    "submitting {what} has waited {waited:?}: {pending} tasks and actor calls pending (LUMEN_MAX_PENDING_TASKS={}); it goes once one finishes",
                    limits.max_pending
                );
            }
            s = self.changed.wait_timeout(s, super::WAIT_SLICE);
        }
    }

    /// Submits a task of function `F` (see `#[lumen::remote]`).
    pub(crate) fn submit(
        self: &Arc<Self>,
        function: u64,
        name: &str,
        args: &impl Serialize,
        mut options: TaskOptions,
    ) -> Result<ObjectId> {
        if self.stopping.load(Ordering::Acquire) {
            return Err(runtime_error(RuntimeError::ShuttingDown));
        }
        check_gpu_request(name, options.resources.gpus)?;
        self.wait_for_room(name)?;
        let (encoded, device_args) =
            crate::runtime::device::collect_device_args(|| encode_args(&name, args));
        let (args, pinned) = encoded?;
        let refs = pinned.ids();
        // Pinned to its bundle's rank: a retry after that rank dies finds
        // it dead and fails.
        self.pin_to_bundle(
            name,
            &mut options.placement_group,
            &options.resources,
            &mut options.rank,
            options.node,
            |r| self.load_on(r).0,
        )?;
        let bytes = self.argument_bytes(&refs);
        let target = self
            .scheduler
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .place_task_with(
                &Request {
                    resources: Some(&options.resources),
                    node: options.node,
                    rank: options.rank,
                    data_at: None,
                },
                &Preferences {
                    strategy: options.scheduling,
                    args: &bytes,
                    nic_local: options.near_nic,
                },
            )
            .map_err(infeasible(name))?;
        self.register(&refs, target)?;
        let object = self.new_object();
        let spec = TaskSpec {
            object,
            function,
            name: name.to_string(),
            args,
            refs,
            device_args,
            options,
            attempt: 1,
        };
        let pinned = (spec.options.max_retries > 0 && !spec.refs.is_empty()).then_some(pinned);
        // Encoded from a borrow: the spec itself moves into the task table
        // (kept for retries) instead of being cloned.
        let message = if target == self.rank {
            Err(RtMsg::Submit(spec.clone()))
        } else {
            Ok(encode(&SubmitRef(&spec)))
        };
        let late = {
            let mut s = self.lock();
            s.refs.create(object, ObjectState::Pending);
            self.task_sent_locked(&mut s, spec, target, pinned)
        };
        if !late.is_empty() {
            self.apply_task_effects(target, late);
            return Ok(object);
        }
        crate::runtime::timeline::instant("submit", name, object, Some(target));
        let sent = match message {
            Ok(bytes) => self.endpoint.send(target, RUNTIME_TAG, &bytes),
            Err(local) => self.send(target, &local),
        };
        if let Err(e) = sent {
            // The monitor retries it once it sees the rank dead.
            tracing::debug!("submitting {name} to rank {target} failed: {e}");
        }
        Ok(object)
    }

    /// Where the values of `refs` are, as bytes by rank, for locality:
    /// a stored value on the rank that stored it and on every rank that
    /// reported a copy of it (on those ranks' nodes), an inline value on
    /// its owner (who serves it). Objects we own, and borrowed ones whose
    /// value we were sent; values not known yet are left out.
    pub(super) fn argument_bytes(&self, refs: &[ObjectId]) -> Vec<(Rank, u64)> {
        let mut bytes = Vec::new();
        if refs.is_empty() {
            return bytes;
        }
        let s = self.lock();
        for &id in refs {
            let (outcome, copies) = match s.refs.state(id) {
                Some(ObjectState::Ready(outcome)) => (outcome, s.refs.copies(id)),
                Some(ObjectState::Pending) => continue,
                None => match s.remote_values.get(&id) {
                    Some(Some(outcome)) => (
                        outcome,
                        s.remote_copies.get(&id).cloned().unwrap_or_default(),
                    ),
                    _ => continue,
                },
            };
            match outcome {
                Outcome::Stored { rank, len, .. } => {
                    bytes.push((*rank, *len));
                    bytes.extend(copies.iter().map(|&holder| (holder, *len)));
                }
                Outcome::Inline(value) => bytes.push((id.owner, value.len() as u64)),
                Outcome::Failed(_) => {}
            }
        }
        bytes
    }

    /// (owner) `Done` from rank `src`, which reported `queued` tasks there
    /// besides this one (its load for the scheduler).
    pub(super) fn on_done_from(
        self: &Arc<Self>,
        src: Rank,
        object: ObjectId,
        outcome: Outcome,
        refs: Vec<ObjectId>,
        queued: u32,
    ) {
        self.scheduler
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .reported(src, queued);
        self.complete(object, outcome, refs, Some(src));
    }

    /// `object` is done with `outcome` (decided here: a failure, a local
    /// task, a cancel).
    pub(super) fn on_done(
        self: &Arc<Self>,
        object: ObjectId,
        outcome: Outcome,
        refs: Vec<ObjectId>,
    ) {
        self.complete(object, outcome, refs, None);
    }

    /// `object` is done; `from` is the rank that reported it. A report
    /// from a rank already declared dead is stale and dropped: that
    /// rank's death retried or failed everything it ran, and taking its
    /// late report would end the retry's entry and point the value at a
    /// process that is gone (messages it sent just before it died can be
    /// read after its death is noticed).
    fn complete(
        self: &Arc<Self>,
        object: ObjectId,
        outcome: Outcome,
        refs: Vec<ObjectId>,
        from: Option<Rank>,
    ) {
        // The entry is dropped after the lock (a retry record unpins). One
        // lock for the table, the borrowers waiting for the value and the
        // actor handle count an actor call held while in flight.
        crate::runtime::timeline::instant("reply", "", object, from);
        let stored_elsewhere =
            matches!(&outcome, Outcome::Stored { rank, .. } if *rank != self.rank);
        let (entry, io, waiters, released) = {
            let mut s = self.lock();
            if let Some(src) = from.filter(|r| s.dead.contains(r)) {
                drop(s);
                tracing::info!("dropped the report of {object} from rank {src}, declared dead");
                return;
            }
            let entry = match s.tasks.completed(object) {
                // Its value lives on another rank: keep how it was made,
                // before a death can find the value lost.
                Some(InFlight::Task {
                    spec, rank, pinned, ..
                }) if stored_elsewhere => {
                    let unkept = self.lineage.record(spec, pinned);
                    Some(Completed::Recorded {
                        rank,
                        _unkept: unkept,
                    })
                }
                other => other.map(Completed::Kept),
            };
            let waiters = s.value_waiters.remove(&object).unwrap_or_default();
            let copy = (!waiters.is_empty()).then(|| outcome.clone());
            let mut effects = s.refs.complete(object, outcome, refs);
            if let Some(Completed::Kept(InFlight::ActorCall(ActorCall {
                handles: Some(handles),
                ..
            }))) = &entry
            {
                effects.extend(self.drop_handle_locked(&mut s, *handles));
            }
            let io = Self::settle(&mut s, effects);
            let released = s.deferred.arrived(object);
            (entry, io, copy.map(|outcome| (waiters, outcome)), released)
        };
        let sent = match &entry {
            Some(Completed::Kept(InFlight::Task { sent, .. })) => Some(*sent),
            Some(Completed::Kept(InFlight::ActorCall(call))) => Some(call.sent),
            _ => None,
        };
        if let Some(sent) = sent {
            self.call_latency.record(sent.elapsed());
        }
        let finished = match &entry {
            Some(Completed::Recorded { rank, .. }) => Some(*rank),
            Some(Completed::Kept(InFlight::Task { rank, .. })) => Some(*rank),
            _ => None,
        };
        if let Some(rank) = finished {
            self.scheduler
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .finished(rank);
        }
        self.changed.notify_all();
        self.wake(object);
        if let Some((waiters, outcome)) = waiters {
            for (rank, request) in waiters {
                self.send_or_log(
                    rank,
                    &RtMsg::Value {
                        request,
                        outcome: outcome.clone(),
                        copies: Vec::new(),
                    },
                );
            }
        }
        self.carry_out(io);
        drop(entry);
        for (dead, spec, pinned) in released {
            self.retry_task_now(dead, spec, pinned);
        }
    }

    /// Runs a task on this (executor) thread and reports its outcome.
    pub(crate) fn run_task(self: &Arc<Self>, spec: TaskSpec, _from: Rank) {
        self.tasks_executed.fetch_add(1, Ordering::Relaxed);
        let clock = std::time::Instant::now();
        let started = crate::runtime::timeline::on().then(crate::runtime::timeline::now_us);
        let result = match registry::function(spec.function) {
            None => Err(TaskFailure::new(
                TaskErrorKind::UnknownFunction,
                format!(
                    "rank {} has no remote function with id {:#018x} ({}); do all ranks run the same binary?",
                    self.rank, spec.function, spec.name
                ),
            )),
            Some(entry) => {
                let (result, pinned) = collect_refs(|| {
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        (entry.invoke)(&spec.args)
                    }))
                    .unwrap_or_else(|payload| {
                        Err(TaskFailure::new(TaskErrorKind::Panic, panic_message(&*payload)))
                    })
                });
                result.map(|bytes| (bytes, pinned))
            }
        };
        if let Some(started) = started {
            crate::runtime::timeline::span("run", &spec.name, spec.object, started);
        }
        self.task_runs.record(clock.elapsed());
        self.finish(spec.object, &spec.name, result);
        self.release_all(&spec.refs);
    }

    /// Reports a finished task or actor call to the owner of `object`.
    pub(crate) fn finish(
        self: &Arc<Self>,
        object: ObjectId,
        function: &str,
        result: std::result::Result<(Vec<u8>, Pinned), TaskFailure>,
    ) {
        let failure = |failure: TaskFailure| {
            Outcome::Failed(TaskError {
                function: function.to_string(),
                rank: self.rank,
                kind: failure.kind,
                message: failure.message,
            })
        };
        // `pinned` keeps the result's references alive until the owner of
        // the task is registered for them and the reply is sent.
        let result = result.and_then(|(bytes, pinned)| match self.limits.max_object_bytes {
            Some(limit) if bytes.len() as u64 > limit => Err(TaskFailure::new(
                TaskErrorKind::ObjectTooLarge,
                format!(
                    "its result is {} bytes encoded, above LUMEN_MAX_OBJECT_BYTES={limit}; return smaller values (several objects) or raise the limit",
                    bytes.len()
                ),
            )),
            _ => Ok((bytes, pinned)),
        });
        let (outcome, refs, _pinned) = match result {
            Ok((bytes, pinned)) => {
                let refs = pinned.ids();
                match self.register(&refs, object.owner) {
                    Ok(()) => {
                        let outcome = if bytes.len() > self.inline_max {
                            self.store.store(&bytes)
                        } else {
                            Outcome::Inline(bytes)
                        };
                        (outcome, refs, Some(pinned))
                    }
                    Err(e) => (
                        failure(TaskFailure::new(
                            TaskErrorKind::DependencyFailed,
                            e.to_string(),
                        )),
                        Vec::new(),
                        Some(pinned),
                    ),
                }
            }
            Err(e) => (failure(e), Vec::new(), None),
        };
        self.send_or_log(
            object.owner,
            &RtMsg::Done {
                object,
                outcome,
                refs,
                queued: self.executor.queued(),
            },
        );
    }

    pub(crate) fn cancel(self: &Arc<Self>, object: ObjectId) -> Result<()> {
        let target = self.lock().tasks.task_rank(object);
        if let Some(rank) = target {
            self.send_or_log(rank, &RtMsg::Cancel { object });
        }
        Ok(())
    }

    /// (host) A task that cannot run here fails with `why` (its GPU request
    /// cannot be served on this rank).
    pub(crate) fn fail_task(self: &Arc<Self>, spec: TaskSpec, why: &str) {
        let failure = TaskFailure::new(TaskErrorKind::Error, why.to_string());
        self.finish(spec.object, &spec.name, Err(failure));
        self.release_all(&spec.refs);
    }

    /// A task sent to a placement group that was removed here fails.
    pub(crate) fn fail_removed(self: &Arc<Self>, spec: TaskSpec) {
        let group = spec.options.placement_group.map(|p| p.group);
        let failure = TaskFailure::new(
            TaskErrorKind::PlacementGroupRemoved,
            match group {
                Some(group) => format!("{group} was removed before the task started"),
                None => "its placement group was removed before it started".to_string(),
            },
        );
        self.finish(spec.object, &spec.name, Err(failure));
        self.release_all(&spec.refs);
    }

    /// Tasks this rank has outstanding on `rank`, and actors it placed there.
    pub(super) fn load_on(&self, rank: Rank) -> (u32, u32) {
        self.scheduler
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .load(rank)
    }
}

/// A finished entry of the task table, dropped after the state lock (a
/// pin's drop takes it).
#[derive(Debug)]
enum Completed {
    /// A task whose value lives on another rank: its spec went to the
    /// lineage (what the lineage did not keep comes back).
    Recorded {
        rank: Rank,
        _unkept: Option<(TaskSpec, Option<Pinned>)>,
    },
    Kept(InFlight<Pinned>),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn submit_ref_encodes_as_the_submit_message() {
        let spec = TaskSpec {
            object: ObjectId { owner: 3, seq: 7 },
            function: 0x1234,
            name: "module::function".into(),
            args: vec![1, 2, 3],
            refs: vec![ObjectId { owner: 1, seq: 2 }],
            device_args: Vec::new(),
            options: TaskOptions::default(),
            attempt: 1,
        };
        assert_eq!(
            encode(&SubmitRef(&spec)),
            encode(&RtMsg::Submit(spec.clone()))
        );
    }
}
