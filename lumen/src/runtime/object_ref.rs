//! [`ObjectRef`]: a future to an immutable object, and the views `get`
//! returns.
//!
//! An `ObjectRef` is a counted reference (see [`refs`](super::refs)). Its
//! clones share one `Handle` (an `Arc`): the reference table counts
//! handles, not clones, so cloning and dropping a clone cost one atomic
//! operation, and only creating a handle (a task's result, a `put`, a
//! deserialised reference) and dropping its last clone update this rank's
//! table. (`wait` on a thousand references clones each into its answer: a
//! table update under the runtime's lock per clone and per drop made
//! Ray's "wait 1k refs" row 7-11x Ray instead of 100x.) Serialising one
//! (inside task arguments, actor calls or results) records it in a
//! thread-local collector, so the runtime knows which references a
//! message carries and registers the receiver with their owners before
//! the message leaves. Serialised outside the runtime (to a
//! file, say) it is just an id and keeps nothing alive.

use std::borrow::Cow;
use std::cell::RefCell;
use std::future::{Future, IntoFuture};
use std::marker::PhantomData;
use std::ops::Deref;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::core::{current_inner, Inner};
use super::error::RuntimeError;
use super::ids::ObjectId;
use super::store::Bytes;
use crate::error::{LumenError, Result};

thread_local! {
    static COLLECTOR: RefCell<Option<Vec<RefPin>>> = const { RefCell::new(None) };
}

/// One serialised reference and the runtime that pinned it.
type RefPin = (ObjectId, Option<Arc<Inner>>);

/// The references a message serialised, each pinned (an extra handle) so
/// that the object outlives the value it was serialised from until the
/// receiver is registered: unpinned when this drops, after the send.
#[derive(Default)]
pub(crate) struct Pinned {
    refs: Vec<RefPin>,
}

impl std::fmt::Debug for Pinned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.ids()).finish()
    }
}

impl Pinned {
    /// The ids, in serialisation order.
    pub(crate) fn ids(&self) -> Vec<ObjectId> {
        self.refs.iter().map(|(id, _)| *id).collect()
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        for (id, rt) in self.refs.drain(..) {
            if let Some(rt) = rt {
                rt.handle_dropped(id);
            }
        }
    }
}

/// Runs `f` (which serialises) and returns the `ObjectRef`s it serialised,
/// pinned until the returned [`Pinned`] drops.
pub(crate) fn collect_refs<R>(f: impl FnOnce() -> R) -> (R, Pinned) {
    let outer = COLLECTOR.with(|c| c.borrow_mut().replace(Vec::new()));
    let result = f();
    let refs = COLLECTOR.with(|c| {
        let mut slot = c.borrow_mut();
        let refs = slot.take().unwrap_or_default();
        *slot = outer;
        refs
    });
    (result, Pinned { refs })
}

/// A reference to an object that is (or will be) in the job's object store:
/// the result of a task or actor call, or a `put`. Cheap to clone and to
/// pass to other tasks (only the id travels; the executing rank fetches the
/// value). The object is freed when the last reference anywhere drops.
pub struct ObjectRef<T: ?Sized> {
    handle: Arc<Handle>,
    _type: PhantomData<fn() -> Box<T>>,
}

/// One handle counted in the reference table, shared by the clones of an
/// `ObjectRef`: the table hears of it when it is made and when the last
/// clone drops.
struct Handle {
    id: ObjectId,
    /// `None` for a reference deserialised outside a runtime.
    rt: Option<Arc<Inner>>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        if let Some(rt) = &self.rt {
            rt.handle_dropped(self.id);
        }
    }
}

impl<T: ?Sized> ObjectRef<T> {
    /// Wraps a new owned handle (the table already counts it).
    pub(crate) fn owned(id: ObjectId, rt: Arc<Inner>) -> Self {
        Self::from_handle(Handle { id, rt: Some(rt) })
    }

    fn from_handle(handle: Handle) -> Self {
        ObjectRef {
            handle: Arc::new(handle),
            _type: PhantomData,
        }
    }

    /// The object's id.
    pub fn id(&self) -> ObjectId {
        self.handle.id
    }

    fn rt(&self) -> Option<&Arc<Inner>> {
        self.handle.rt.as_ref()
    }

    fn runtime(&self) -> Result<&Arc<Inner>> {
        self.rt()
            .ok_or(LumenError::Runtime(RuntimeError::NoRuntime))
    }

    /// True when the value (or the failure) is available now. For a
    /// borrowed reference this asks the owner once and answers from its reply.
    pub fn is_ready(&self) -> bool {
        self.rt().is_some_and(|rt| rt.is_ready(self.id()))
    }

    /// Cancels the task computing this object if it has not started:
    /// `get` then fails with `Cancelled`. A running task runs to the end
    /// (Ray's `force=True`, killing the worker, is not offered).
    pub fn cancel(&self) -> Result<()> {
        self.runtime()?.cancel(self.id())
    }

    fn bytes(&self, timeout: Option<Duration>) -> Result<Bytes> {
        self.runtime()?.fetch(self.id(), timeout)
    }
}

impl<T: DeserializeOwned> ObjectRef<T> {
    /// Blocks until the value is ready and returns a copy. A task that
    /// blocks here gives its CPU back to its rank meanwhile, so nested tasks
    /// cannot deadlock a rank.
    pub fn get(&self) -> Result<T> {
        self.get_inner(None)
    }

    /// Like [`ObjectRef::get`], failing with `Timeout` after `timeout`.
    pub fn get_timeout(&self, timeout: Duration) -> Result<T> {
        self.get_inner(Some(timeout))
    }

    fn get_inner(&self, timeout: Option<Duration>) -> Result<T> {
        let bytes = self.bytes(timeout)?;
        bincode::deserialize(&bytes).map_err(|e| {
            LumenError::Runtime(RuntimeError::Codec {
                what: format!("{} as {}", self.id(), std::any::type_name::<T>()),
                detail: e.to_string(),
            })
        })
    }
}

impl<T: bytemuck::Pod> ObjectRef<[T]> {
    /// Blocks until the slice is ready and returns a view of it: no copy
    /// when the bytes are in this rank's store, one copy from another rank.
    pub fn get(&self) -> Result<SliceView<T>> {
        self.get_timeout_inner(None)
    }

    /// Like [`ObjectRef::get`], failing with `Timeout` after `timeout`.
    pub fn get_timeout(&self, timeout: Duration) -> Result<SliceView<T>> {
        self.get_timeout_inner(Some(timeout))
    }

    fn get_timeout_inner(&self, timeout: Option<Duration>) -> Result<SliceView<T>> {
        let bytes = self.bytes(timeout)?;
        let size = std::mem::size_of::<T>().max(1);
        if bytes.len() % size != 0 {
            return Err(LumenError::Runtime(RuntimeError::Codec {
                what: format!("{} as [{}]", self.id(), std::any::type_name::<T>()),
                detail: format!("{} bytes is not a whole number of elements", bytes.len()),
            }));
        }
        let aligned = (bytes.as_ptr() as usize) % std::mem::align_of::<T>() == 0;
        let bytes = if aligned {
            bytes
        } else {
            // Rare (allocations are 16-byte aligned): copy into aligned memory.
            let mut copy: Vec<T> = vec![T::zeroed(); bytes.len() / size];
            bytemuck::cast_slice_mut::<T, u8>(&mut copy).copy_from_slice(&bytes);
            Bytes::Owned(Arc::new(bytemuck::cast_slice::<T, u8>(&copy).to_vec()))
        };
        Ok(SliceView {
            bytes,
            _type: PhantomData,
        })
    }
}

/// A read-only view of a `put_slice` object: derefs to `[T]`.
pub struct SliceView<T> {
    bytes: Bytes,
    _type: PhantomData<T>,
}

impl<T: bytemuck::Pod> Deref for SliceView<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        // Length and alignment were checked when the view was made; an
        // empty object casts to an empty slice.
        bytemuck::try_cast_slice(&self.bytes).unwrap_or(&[])
    }
}

impl<T: bytemuck::Pod + std::fmt::Debug> std::fmt::Debug for SliceView<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SliceView")
            .field("len", &self.len())
            .finish()
    }
}

impl<T: ?Sized> Clone for ObjectRef<T> {
    fn clone(&self) -> Self {
        ObjectRef {
            handle: self.handle.clone(),
            _type: PhantomData,
        }
    }
}

impl<T: ?Sized> std::fmt::Debug for ObjectRef<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ObjectRef({})", self.id())
    }
}

impl<T: ?Sized> Serialize for ObjectRef<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        COLLECTOR.with(|c| {
            if let Some(list) = c.borrow_mut().as_mut() {
                if let Some(rt) = self.rt() {
                    rt.handle_added(self.id());
                }
                list.push((self.id(), self.rt().cloned()));
            }
        });
        self.id().serialize(serializer)
    }
}

impl<'de, T: ?Sized> Deserialize<'de> for ObjectRef<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        let id = ObjectId::deserialize(deserializer)?;
        let rt = current_inner();
        if let Some(rt) = &rt {
            rt.handle_added(id);
        }
        Ok(ObjectRef::from_handle(Handle { id, rt }))
    }
}

/// What [`wait`] returns: (ready, not ready).
pub type Waited<T> = (Vec<ObjectRef<T>>, Vec<ObjectRef<T>>);

/// Waits until `num_returns` of `refs` are ready or `timeout` passes
/// (`None`: no limit); returns (ready, not ready), each in the order given,
/// as Ray's `ray.wait`: the ready list holds the first `num_returns` ready
/// references in that order (fewer after a timeout), the other list all
/// the rest.
///
/// `refs` is a slice, a `&Vec` or a `Vec`. References given by value are
/// moved into the answer; borrowed ones are cloned into it (an atomic
/// increment each, and the caller later drops the originals): in a loop
/// that waits on what the last call left, `refs = wait(refs, 1, None)?.1`
/// moves, and waiting on a thousand references costs nanoseconds instead
/// of microseconds per call.
///
/// ```no_run
/// # fn demo(refs: Vec<lumen::ObjectRef<u64>>) -> lumen::Result<()> {
/// let mut pending = refs;
/// while !pending.is_empty() {
///     let (ready, rest) = lumen::wait(pending, 1, None)?;
///     for r in &ready {
///         println!("{}", r.get()?);
///     }
///     pending = rest;
/// }
/// # Ok(())
/// # }
/// ```
pub fn wait<'a, T: ?Sized + 'a>(
    refs: impl Into<Cow<'a, [ObjectRef<T>]>>,
    num_returns: usize,
    timeout: Option<Duration>,
) -> Result<Waited<T>> {
    let refs = refs.into();
    let deadline = timeout.map(|t| Instant::now() + t);
    let want = num_returns.min(refs.len());
    let Some(rt) = refs.iter().find_map(|r| r.rt().cloned()) else {
        return Ok((Vec::new(), refs.into_owned()));
    };
    let ready = rt.wait_ready(refs.len(), |i| refs[i].id(), want, deadline);
    let mut done = Vec::with_capacity(ready.len());
    let mut pending = Vec::with_capacity(refs.len() - ready.len());
    match refs {
        Cow::Borrowed(refs) => {
            let mut from = 0;
            for index in ready {
                pending.extend_from_slice(&refs[from..index]);
                done.push(refs[index].clone());
                from = index + 1;
            }
            pending.extend_from_slice(&refs[from..]);
        }
        Cow::Owned(refs) => {
            let mut next = ready.into_iter().peekable();
            for (index, r) in refs.into_iter().enumerate() {
                if next.next_if_eq(&index).is_some() {
                    done.push(r);
                } else {
                    pending.push(r);
                }
            }
        }
    }
    Ok((done, pending))
}

/// The future behind `ObjectRef::into_future` (`.await`): polls the
/// object's readiness and registers its waker with the runtime, which wakes
/// it when the task's result (or the owner's answer) arrives. No async
/// runtime is assumed. Once ready, the value is read as `get` would: a
/// large value on another node is pulled by the polling thread.
pub struct ObjectRefFuture<T> {
    reference: ObjectRef<T>,
}

impl<T: DeserializeOwned> IntoFuture for ObjectRef<T> {
    type Output = Result<T>;
    type IntoFuture = ObjectRefFuture<T>;

    fn into_future(self) -> ObjectRefFuture<T> {
        ObjectRefFuture { reference: self }
    }
}

impl<T: DeserializeOwned> Future for ObjectRefFuture<T> {
    type Output = Result<T>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<T>> {
        let reference = &self.reference;
        let Some(rt) = reference.rt() else {
            return Poll::Ready(Err(LumenError::Runtime(RuntimeError::NoRuntime)));
        };
        let id = reference.id();
        if !rt.is_ready(id) {
            rt.register_waker(id, cx.waker());
            // The answer may have come between the check and the registration.
            if !rt.is_ready(id) {
                return Poll::Pending;
            }
        }
        Poll::Ready(reference.get())
    }
}

impl<T> std::fmt::Debug for ObjectRefFuture<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ObjectRefFuture")
    }
}
