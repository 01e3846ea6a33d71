//! Actors: state that lives on one rank, driven by method calls that run
//! one at a time in arrival order.
//!
//! Each actor runs on a thread of its hosting rank with a FIFO mailbox.
//! Calls from one caller reach the host in submission order (the transport
//! is ordered per pair of ranks, and one handler thread moves arriving calls
//! into the mailbox), so a caller sees its calls executed in the order it
//! made them; calls of different callers interleave. A call that arrives
//! before the actor's creation message (a handle passed on to a third rank
//! that calls at once) waits in a per-actor early queue. Killing an actor
//! stops its thread after the running call and fails queued and later calls
//! with `ActorDied`. With `max_restarts(n)` the actor's creator keeps its
//! constructor arguments and restarts it, with fresh state, on another
//! rank, up to `n` times; a caller whose handle names the dead rank asks the
//! creator where the actor went (see `core`). A dead hosting rank fails the
//! calls in flight (Ray's default, `max_task_retries = 0`); with
//! `max_task_retries(k)` (and restarts) each caller keeps its calls'
//! arguments until they complete and sends a call lost with the rank again
//! to the restarted actor, up to `k` times, in the order it made them: such
//! a call may run twice (at least once, as in Ray).
//!
//! # Lifetime
//! An unnamed actor lives as long as some handle to it does, anywhere
//! (Ray's actor garbage collection). Each [`RawActorHandle`] of it carries a
//! counted reference to the actor's handle count, which its creator owns
//! (see `refs`): clones, handles passed to tasks and actors and handles
//! returned in results are counted like `ObjectRef`s, and a caller also
//! counts while each of its calls is in flight. When the count reaches zero
//! the creator sends `ActorRelease` to the host, which runs the calls still
//! queued, then stops the actor's thread: the actor value is dropped there
//! (its `Drop` runs) and the creator's placement count for that rank goes
//! down. A **named** actor is not counted (any rank may look it up again by
//! name): it lives until [`RawActorHandle::kill`] or the end of the job, like
//! a detached actor in Ray. An actor that holds a handle to itself is never
//! collected, as in Ray.

use std::collections::{HashMap, VecDeque};
use std::marker::PhantomData;
use std::ops::Deref;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use serde::{Deserialize, Serialize};

use lumen_sched::GpuGrant;
use lumen_transport::Rank;

use super::core::current_inner;
use super::core::{owned_ref, Inner};
use super::error::RuntimeError;
use super::error::TaskErrorKind;
use super::executor;
use super::ids::{ActorId, ObjectId};
use super::object_ref::{collect_refs, ObjectRef};
use super::protocol::ActorAddress;
use super::registry::{self, TaskFailure};
use crate::error::{LumenError, Result};

/// A class of actors (implemented by `#[lumen::actor]`).
pub trait ActorClass: Send + 'static {
    /// Stable id of the class.
    const CLASS_ID: u64;
    /// `module::path::Type`.
    const CLASS_NAME: &'static str;
    /// The generated type with one method per actor method.
    type Methods: From<RawActorHandle> + AsRef<RawActorHandle> + Clone;
}

/// An untyped actor handle: which actor, where. Serialisable, so handles can
/// be passed to tasks and other actors. The handles of an unnamed actor are
/// counted: the actor stops once none is left (see the module docs).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RawActorHandle {
    address: ActorAddress,
    name: Option<String>,
    /// A counted reference to the actor's handle count (unnamed actors).
    handles: Option<ObjectRef<()>>,
}

impl PartialEq for RawActorHandle {
    fn eq(&self, other: &Self) -> bool {
        self.address == other.address && self.name == other.name
    }
}

impl Eq for RawActorHandle {}

impl RawActorHandle {
    pub(crate) fn new(
        address: ActorAddress,
        name: Option<String>,
        handles: Option<ObjectRef<()>>,
    ) -> Self {
        RawActorHandle {
            address,
            name,
            handles,
        }
    }

    /// The actor's id.
    pub fn id(&self) -> ActorId {
        self.address.id
    }

    /// The rank hosting it.
    pub fn rank(&self) -> Rank {
        self.address.host
    }

    /// What a mesh call sends for this actor (its address, its counted
    /// handle).
    pub(crate) fn address(&self) -> &ActorAddress {
        &self.address
    }

    pub(crate) fn handles_id(&self) -> Option<ObjectId> {
        self.handles.as_ref().map(ObjectRef::id)
    }

    /// Submits a method call (used by the generated methods). Inside
    /// `ActorMesh::call`'s closure the call is recorded, not sent.
    #[doc(hidden)]
    pub fn __call<T, A: Serialize>(
        &self,
        method: u64,
        name: &str,
        args: &A,
    ) -> Result<ObjectRef<T>> {
        let recorded = super::mesh::record(method, name, || {
            let (encoded, pinned) = collect_refs(|| bincode::serialize(args));
            let args = encoded.map_err(|e| {
                LumenError::Runtime(RuntimeError::Codec {
                    what: format!("the arguments of {name}"),
                    detail: e.to_string(),
                })
            })?;
            Ok((args, pinned))
        });
        if let Some(recorded) = recorded {
            recorded?;
            return Err(super::mesh::recorded());
        }
        let inner = current_inner().ok_or(LumenError::Runtime(RuntimeError::NoRuntime))?;
        let handles = self.handles.as_ref().map(ObjectRef::id);
        let object = inner.call_actor(&self.address, handles, method, name, args)?;
        Ok(owned_ref(&inner, object))
    }

    /// Stops the actor (after the call it is running); later calls fail.
    pub fn kill(&self) -> Result<()> {
        let inner = current_inner().ok_or(LumenError::Runtime(RuntimeError::NoRuntime))?;
        inner.kill_actor(&self.address, self.name.as_deref())
    }
}

/// A typed handle to an actor of class `A`: dereferences to the generated
/// methods (`handle.incr(5)` returns an `ObjectRef`). Clone it, or pass it
/// to tasks and other actors (it is serialisable).
pub struct ActorHandle<A: ActorClass> {
    methods: A::Methods,
    _class: PhantomData<fn() -> A>,
}

impl<A: ActorClass> ActorHandle<A> {
    pub(crate) fn new(raw: RawActorHandle) -> Self {
        ActorHandle {
            methods: A::Methods::from(raw),
            _class: PhantomData,
        }
    }

    /// The untyped handle.
    pub fn raw(&self) -> &RawActorHandle {
        self.methods.as_ref()
    }

    /// Stops the actor; later calls fail with `ActorDied`.
    pub fn kill(&self) -> Result<()> {
        self.raw().kill()
    }
}

impl<A: ActorClass> Deref for ActorHandle<A> {
    type Target = A::Methods;
    fn deref(&self) -> &A::Methods {
        &self.methods
    }
}

impl<A: ActorClass> Clone for ActorHandle<A> {
    fn clone(&self) -> Self {
        ActorHandle {
            methods: self.methods.clone(),
            _class: PhantomData,
        }
    }
}

impl<A: ActorClass> std::fmt::Debug for ActorHandle<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let raw = self.raw();
        write!(
            f,
            "ActorHandle<{}>({} on rank {})",
            A::CLASS_NAME,
            raw.id(),
            raw.rank()
        )
    }
}

impl<A: ActorClass> Serialize for ActorHandle<A> {
    fn serialize<S: serde::Serializer>(
        &self,
        serializer: S,
    ) -> std::result::Result<S::Ok, S::Error> {
        self.raw().serialize(serializer)
    }
}

impl<'de, A: ActorClass> Deserialize<'de> for ActorHandle<A> {
    fn deserialize<D: serde::Deserializer<'de>>(
        deserializer: D,
    ) -> std::result::Result<Self, D::Error> {
        let raw = RawActorHandle::deserialize(deserializer)?;
        if raw.address.class_id != A::CLASS_ID {
            return Err(serde::de::Error::custom(format!(
                "actor handle of class {} where {} was expected",
                raw.address.class_name,
                A::CLASS_NAME
            )));
        }
        Ok(ActorHandle::new(raw))
    }
}

/// A call waiting in an actor's mailbox.
/// A call's encoded arguments, the objects they reference, and the device
/// objects among those.
pub(crate) type CallArgs = (
    Vec<u8>,
    Vec<ObjectId>,
    Vec<(super::device::DeviceMeta, ObjectId)>,
);

#[derive(Debug)]
struct Call {
    method: u64,
    name: String,
    object: ObjectId,
    args: Vec<u8>,
    refs: Vec<ObjectId>,
    device_args: Vec<(super::device::DeviceMeta, ObjectId)>,
}

#[derive(Debug, Default)]
struct Mailbox {
    calls: VecDeque<Call>,
    /// Killed: stop after the running call.
    stopped: bool,
    /// No handle is left: stop once the queued calls have run.
    retiring: bool,
    /// The actor's thread sleeps on `ready` (a call notifies only then:
    /// std's condvar makes a system call on every notify).
    waiting: bool,
}

#[derive(Debug, Default)]
struct Slot {
    mailbox: Mutex<Mailbox>,
    ready: Condvar,
    /// Calls queued so far (an idle actor thread that polls for its next
    /// call watches it without the lock).
    pushed: AtomicU64,
    /// The idle spin now, in nanoseconds (0: not yet set), halved after
    /// a spin that found no call, doubled after one that did (as the
    /// executor's).
    spin_ns: AtomicU64,
}

/// The actors hosted by a rank.
/// Times an actor thread of this process slept waiting for a call (the
/// next call then wakes it: a hand-off).
static ACTOR_SLEEPS: AtomicU64 = AtomicU64::new(0);

/// See [`ACTOR_SLEEPS`].
pub(crate) fn actor_sleeps() -> u64 {
    ACTOR_SLEEPS.load(Ordering::Relaxed)
}

#[derive(Debug, Default)]
pub(crate) struct ActorHost {
    actors: Mutex<HashMap<ActorId, Arc<Slot>>>,
    early: Mutex<HashMap<ActorId, Vec<Call>>>,
    /// Actors stopped here, and why (later calls fail with it).
    killed: Mutex<HashMap<ActorId, &'static str>>,
    /// Actor threads running here (until the actor value is dropped).
    live: Arc<AtomicU64>,
    /// The mesh broadcast calls queued here lately (a call may come twice:
    /// down the tree and, when a rank on its way died, directly).
    delivered: Mutex<Delivered>,
}

/// The last [`DELIVERED_KEPT`] broadcast calls queued on this rank.
#[derive(Debug, Default)]
struct Delivered {
    seen: std::collections::HashSet<ObjectId>,
    order: VecDeque<ObjectId>,
}

const DELIVERED_KEPT: usize = 1 << 16;

const KILLED: &str = "it was killed";
const UNREFERENCED: &str = "all its handles were dropped";

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl ActorHost {
    pub(crate) fn create(
        &self,
        inner: &Arc<Inner>,
        address: ActorAddress,
        args: Vec<u8>,
        refs: Vec<ObjectId>,
        (gpus, bundle): (f64, Option<lumen_sched::Bundle>),
        mesh: Option<Box<super::mesh::MeshMember>>,
    ) {
        if lock(&self.killed).contains_key(&address.id) {
            // Killed before its creation message arrived (the kill came
            // from another rank than the creator).
            inner.release_all(&refs);
            return;
        }
        let slot = Arc::new(Slot::default());
        {
            let early = lock(&self.early).remove(&address.id).unwrap_or_default();
            lock(&slot.mailbox).calls.extend(early);
            lock(&self.actors).insert(address.id, slot.clone());
        }
        let runtime = Arc::downgrade(inner);
        let live = self.live.clone();
        live.fetch_add(1, Ordering::Relaxed);
        let counted = live.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("lumen-actor-{}", address.id.seq))
            .spawn(move || {
                let _live = LiveActor(counted);
                let Some(inner) = runtime.upgrade() else {
                    return;
                };
                // Its GPUs, for its whole life on this thread (it waits for
                // them as a task would; the submitter checked the rank has
                // enough).
                let grant = match take_gpus(&inner, gpus, bundle) {
                    Ok(grant) => grant,
                    Err(why) => {
                        inner.release_all(&refs);
                        drop(inner);
                        let failed = Err(TaskFailure::new(
                            TaskErrorKind::Error,
                            format!("cannot get its {gpus} GPU(s): {why}"),
                        ));
                        serve(runtime, address, slot, failed);
                        return;
                    }
                };
                executor::set_gpu_ids(grant.ids.clone());
                if let Some(&gpu) = grant.ids.first() {
                    super::device::bind_gpu_context(gpu);
                }
                super::mesh::set_member(mesh.map(|m| *m));
                let constructed = match registry::class(address.class_id) {
                    None => Err(TaskFailure::new(
                        TaskErrorKind::UnknownFunction,
                        format!(
                            "rank {} has no actor class with id {:#018x} ({}); do all ranks run the same binary?",
                            inner.rank, address.class_id, address.class_name
                        ),
                    )),
                    Some(class) => std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        (class.construct)(&args)
                    }))
                    .unwrap_or_else(|payload| {
                        Err(TaskFailure::new(TaskErrorKind::Panic, panic_text(&*payload)))
                    }),
                };
                inner.release_all(&refs);
                let executor = inner.executor.clone();
                drop(inner);
                serve(runtime, address, slot, constructed);
                super::mesh::set_member(None);
                executor::set_gpu_ids(Vec::new());
                executor.release_gpus(&grant);
            });
        if let Err(e) = spawned {
            live.fetch_sub(1, Ordering::Relaxed);
            tracing::error!("could not start an actor thread: {e}");
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn call(
        &self,
        inner: &Arc<Inner>,
        actor: ActorId,
        method: u64,
        name: String,
        object: ObjectId,
        (args, refs, device_args): CallArgs,
    ) {
        let call = Call {
            method,
            name,
            object,
            args,
            refs,
            device_args,
        };
        let slot = lock(&self.actors).get(&actor).cloned();
        match slot {
            Some(slot) => {
                let mut mailbox = lock(&slot.mailbox);
                if mailbox.stopped || mailbox.retiring {
                    let reason = if mailbox.stopped {
                        KILLED
                    } else {
                        UNREFERENCED
                    };
                    drop(mailbox);
                    fail_call(inner, actor, call, reason);
                    return;
                }
                mailbox.calls.push_back(call);
                slot.pushed.fetch_add(1, Ordering::Release);
                let waiting = mailbox.waiting;
                drop(mailbox);
                if waiting {
                    slot.ready.notify_one();
                }
            }
            None => {
                let killed = lock(&self.killed).get(&actor).copied();
                match killed {
                    Some(reason) => fail_call(inner, actor, call, reason),
                    None => lock(&self.early).entry(actor).or_default().push(call),
                }
            }
        }
    }

    pub(crate) fn kill(&self, inner: &Arc<Inner>, actor: ActorId) {
        lock(&self.killed).insert(actor, KILLED);
        let slot = lock(&self.actors).remove(&actor);
        let early = lock(&self.early).remove(&actor).unwrap_or_default();
        for call in early {
            fail_call(inner, actor, call, KILLED);
        }
        if let Some(slot) = slot {
            let queued: Vec<Call> = {
                let mut mailbox = lock(&slot.mailbox);
                mailbox.stopped = true;
                mailbox.calls.drain(..).collect()
            };
            slot.ready.notify_all();
            for call in queued {
                fail_call(inner, actor, call, KILLED);
            }
        }
    }

    /// No handle of `actor` is left (its creator says): it stops once the
    /// calls already queued have run, and its value is dropped.
    pub(crate) fn release(&self, inner: &Arc<Inner>, actor: ActorId) {
        lock(&self.killed).entry(actor).or_insert(UNREFERENCED);
        let slot = lock(&self.actors).remove(&actor);
        let early = lock(&self.early).remove(&actor).unwrap_or_default();
        for call in early {
            fail_call(inner, actor, call, UNREFERENCED);
        }
        if let Some(slot) = slot {
            lock(&slot.mailbox).retiring = true;
            slot.ready.notify_all();
        }
    }

    /// Whether broadcast call `object` comes here for the first time (it
    /// is then remembered; see [`Delivered`]).
    pub(crate) fn first_delivery(&self, object: ObjectId) -> bool {
        let mut d = lock(&self.delivered);
        if !d.seen.insert(object) {
            return false;
        }
        d.order.push_back(object);
        if d.order.len() > DELIVERED_KEPT {
            if let Some(old) = d.order.pop_front() {
                d.seen.remove(&old);
            }
        }
        true
    }

    /// Actor threads running on this rank.
    pub(crate) fn live(&self) -> u64 {
        self.live.load(Ordering::Relaxed)
    }

    /// Stops every actor (shutdown).
    pub(crate) fn stop_all(&self) {
        let slots: Vec<Arc<Slot>> = lock(&self.actors).drain().map(|(_, s)| s).collect();
        for slot in slots {
            lock(&slot.mailbox).stopped = true;
            slot.ready.notify_all();
        }
    }
}

/// Counts an actor thread as live until it ends (also when it unwinds).
struct LiveActor(Arc<AtomicU64>);

impl Drop for LiveActor {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-string payload".to_string()
    }
}

fn fail_call(inner: &Arc<Inner>, actor: ActorId, call: Call, reason: &str) {
    inner.finish(
        call.object,
        &call.name,
        Err(TaskFailure::new(
            TaskErrorKind::ActorDied,
            format!("{actor} is dead: {reason}"),
        )),
    );
    inner.release_all(&call.refs);
}

/// Waits for `amount` GPUs of this rank for an actor starting here;
/// fails when the rank can never serve it or the runtime stops.
fn take_gpus(
    inner: &Arc<Inner>,
    amount: f64,
    bundle: Option<lumen_sched::Bundle>,
) -> std::result::Result<GpuGrant, String> {
    loop {
        if let Some(grant) = inner.executor.acquire_gpus(amount, bundle)? {
            return Ok(grant);
        }
        if inner.stopping.load(Ordering::Acquire) {
            return Err("the runtime is stopping".to_string());
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// Runs the actor's calls until it is killed, released with nothing left
/// to run, or the runtime is gone; then drops the actor value (its `Drop`
/// runs here, a panic in it is logged).
fn serve(
    runtime: std::sync::Weak<Inner>,
    address: ActorAddress,
    slot: Arc<Slot>,
    mut state: std::result::Result<Box<dyn std::any::Any + Send>, TaskFailure>,
) {
    run_calls(&runtime, &address, &slot, &mut state);
    let dropped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || drop(state)));
    if let Err(payload) = dropped {
        tracing::error!(
            "dropping {} ({}) panicked: {}",
            address.id,
            address.class_name,
            panic_text(&*payload)
        );
    }
}

/// An idle actor thread polls the transport itself for its next call
/// before it sleeps (see `Inner::poll_until`), for the rank's wait spin at
/// most, adapted as the executor's idle spin is.
fn spin_for_call(runtime: &std::sync::Weak<Inner>, slot: &Slot, seen: u64) {
    let Some(inner) = runtime.upgrade() else {
        return;
    };
    let full = inner.wait_spin().as_nanos() as u64;
    if full == 0 {
        return;
    }
    let spin = match slot.spin_ns.load(Ordering::Relaxed) {
        0 => full,
        ns => ns.min(full),
    };
    let Some(found) = inner.poll_until(std::time::Duration::from_nanos(spin), || {
        slot.pushed.load(Ordering::Acquire) != seen
    }) else {
        return;
    };
    let next = if found {
        spin.saturating_mul(2).min(full)
    } else {
        (spin / 2).max(full / 16)
    };
    slot.spin_ns.store(next, Ordering::Relaxed);
}

fn run_calls(
    runtime: &std::sync::Weak<Inner>,
    address: &ActorAddress,
    slot: &Slot,
    state: &mut std::result::Result<Box<dyn std::any::Any + Send>, TaskFailure>,
) {
    loop {
        let call = {
            let mut mailbox = lock(&slot.mailbox);
            let mut spun = false;
            loop {
                if mailbox.stopped {
                    return;
                }
                if let Some(call) = mailbox.calls.pop_front() {
                    break call;
                }
                if mailbox.retiring {
                    return;
                }
                if !spun {
                    spun = true;
                    let seen = slot.pushed.load(Ordering::Acquire);
                    drop(mailbox);
                    spin_for_call(runtime, slot, seen);
                    mailbox = lock(&slot.mailbox);
                    continue;
                }
                mailbox.waiting = true;
                ACTOR_SLEEPS.fetch_add(1, Ordering::Relaxed);
                mailbox = slot.ready.wait(mailbox).unwrap_or_else(|p| p.into_inner());
                mailbox.waiting = false;
            }
        };
        let Some(inner) = runtime.upgrade() else {
            return;
        };
        let started = super::timeline::on().then(super::timeline::now_us);
        let result = match state {
            Err(failure) => Err(TaskFailure::new(
                TaskErrorKind::ActorDied,
                format!(
                    "{} could not be created: {}",
                    address.class_name, failure.message
                ),
            )),
            Ok(state) => match registry::method(call.method) {
                Some(method) if method.class_id == address.class_id => {
                    // Device arguments onto the actor's GPU first.
                    if !call.device_args.is_empty() && !executor::gpu_ids().is_empty() {
                        inner.prefetch_device_args(&call.device_args);
                    }
                    let (result, pinned) = collect_refs(|| {
                        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                            (method.invoke)(state.as_mut(), &call.args)
                        }))
                        .unwrap_or_else(|payload| {
                            Err(TaskFailure::new(
                                TaskErrorKind::Panic,
                                panic_text(&*payload),
                            ))
                        })
                    });
                    result.map(|bytes| (bytes, pinned))
                }
                _ => Err(TaskFailure::new(
                    TaskErrorKind::UnknownFunction,
                    format!(
                        "rank {} has no method {} (id {:#018x}) for {}",
                        inner.rank, call.name, call.method, address.class_name
                    ),
                )),
            },
        };
        if let Some(started) = started {
            super::timeline::span("call", &call.name, call.object, started);
        }
        inner.finish(call.object, &call.name, result);
        inner.release_all(&call.refs);
    }
}
