//! Device objects: a buffer in GPU memory is an ordinary object. Any rank
//! puts one, any task or actor returns one (its [`DeviceRef`] in the
//! result), passes its ref on, and reads it on its own GPU or as host
//! memory; it is freed when the last reference anywhere drops.
//!
//! ```ignore
//! let r = rt.put_device(&weights)?;        // into this rank's GPU (feature `cuda`)
//! let host: Vec<f32> = rt.get_host(&r)?;   // on any rank, with or without a GPU
//! let view = rt.get_device(&r)?;           // on this task's GPU, pinned while `view` lives
//! println!("{:?}", view.path());           // SameBuffer, CudaIpc, HostStaged, ...
//! ```
//!
//! # Where objects live
//! Each rank keeps one device arena per GPU it uses
//! (`lumen_objstore::device::DeviceArena`, `LUMEN_DEVICE_ARENA` bytes each,
//! default 1 GiB; `256M`, `8G`), opened on first use. A task or actor with
//! `num_gpus` puts into and reads onto its first assigned GPU
//! ([`Runtime::gpu_ids`], CUDA ordinals of the rank's process); elsewhere
//! GPU 0 of the rank (its binding narrows `CUDA_VISIBLE_DEVICES`). A full
//! arena evicts its least recently used unpinned objects to host memory,
//! and beyond twice its size there, to files in the temporary directory.
//!
//! # How they move (the path is chosen per read, reported by
//! [`DeviceView::path`] and counted in [`Runtime::device_stats`])
//! - same rank, same GPU: the same buffer, no copy;
//! - same rank, another GPU: one GPU-to-GPU copy (`cuMemcpyPeer`, over
//!   NVLink or PCIe where the GPUs allow it);
//! - another process of the node: the owner's region mapped here (CUDA IPC:
//!   `cuIpcGetMemHandle`, opened once per owner) and one device-to-device
//!   copy, a peer copy when the GPUs differ; if the mapping fails, host
//!   staging;
//! - another node: GPU-direct RDMA where both ends have a verbs fabric
//!   (`LUMEN_FABRIC`) and the GPU driver exports dma-bufs — one RDMA read
//!   from the owner's GPU memory into this one's
//!   (`lumen_objstore::device::gpudirect`); else NCCL send/receive between
//!   the two GPUs over a pair communicator made on first use
//!   (`lumen_objstore::device::nccl`; libnccl on both ends); else host
//!   staging, device-to-host copies of one chunk overlapping the network
//!   send of the previous one. Neither GPU-direct nor NCCL has run on
//!   hardware yet (no GPU or RDMA device where this was written).
//!
//! # Lifetime
//! A [`DeviceRef`] carries a counted reference (an `ObjectRef` of the
//! rank that put it), so clones, refs passed to tasks and actors and refs
//! inside results are counted by the ownership machinery like any object.
//! When the owner frees it, the device block goes (at the last unpin, if a
//! reader is still copying); a reader's copies go when its own last
//! reference does. A gap it shares with `ObjectRef`s nested in values: a
//! `DeviceRef` inside a value that a rank fetched with `get` (not one it
//! got as an argument or result) is not registered with its owner, so
//! that rank's copies live until it exits and the owner may free the
//! object first (a read then fails, saying the object is gone).
//!
//! # Tasks and their GPUs
//! With the `cuda` feature, a task or actor with GPUs runs with the primary
//! CUDA context of its first GPU bound to its thread, and the device
//! arguments of a task or of an actor's method call are pulled onto that
//! GPU before it runs (those of a call to a whole mesh are pulled by the
//! method's first `get_device`).
//!
//! # No GPU, no pretending
//! Without the `cuda` feature or without a GPU, `put_device` and
//! `get_device` fail saying which. `LUMEN_DEVICE_DOMAIN=host` replaces the
//! GPU by a host stand-in (a shared-memory file per "GPU", which other
//! processes of the node map as CUDA IPC maps an allocation) so that the
//! runtime's device plumbing is tested on machines without one; it is
//! never chosen unless asked for, and describes itself as a stand-in.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use lumen_objstore::device::path::TransferPath;
use lumen_objstore::device::{
    DeviceArena, DeviceArenas, DeviceBlock, DeviceError, DeviceMemory, DeviceServer,
    ExportedRegion, HostDomain, IpcCache,
};
use lumen_objstore::ObjectId as StoreId;

use super::core::Inner;
use super::error::RuntimeError;
use super::ids::ObjectId;
use super::object_ref::ObjectRef;
use super::{executor, Runtime};
use crate::error::{LumenError, Result};

/// Chunk of the host-staged path.
const CHUNK: usize = 4 << 20;
/// Bound of each wait for the owner.
const TIMEOUT: Duration = Duration::from_secs(60);

/// Where a device object is: plain data, carried inside [`DeviceRef`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct DeviceMeta {
    /// The rank whose GPU holds it.
    owner: u32,
    /// That GPU (a CUDA ordinal of the owner's process).
    gpu: u32,
    id: [u8; 16],
    len: u64,
}

impl DeviceMeta {
    fn store_id(&self) -> StoreId {
        StoreId::from_bytes(self.id)
    }
}

/// A device object: where it is, and a counted reference that keeps it
/// alive (see the module docs). Serialisable: pass it to tasks and actors,
/// return it from them.
pub struct DeviceRef<T> {
    meta: DeviceMeta,
    handle: ObjectRef<DeviceMeta>,
    _values: PhantomData<fn() -> T>,
}

impl<T> Serialize for DeviceRef<T> {
    fn serialize<S: serde::Serializer>(
        &self,
        serializer: S,
    ) -> std::result::Result<S::Ok, S::Error> {
        self.note_as_argument();
        (&self.meta, &self.handle).serialize(serializer)
    }
}

impl<'de, T> Deserialize<'de> for DeviceRef<T> {
    fn deserialize<D: serde::Deserializer<'de>>(
        deserializer: D,
    ) -> std::result::Result<Self, D::Error> {
        let (meta, handle) = <(DeviceMeta, ObjectRef<DeviceMeta>)>::deserialize(deserializer)?;
        Ok(DeviceRef {
            meta,
            handle,
            _values: PhantomData,
        })
    }
}

impl<T> Clone for DeviceRef<T> {
    fn clone(&self) -> Self {
        DeviceRef {
            meta: self.meta,
            handle: self.handle.clone(),
            _values: PhantomData,
        }
    }
}

impl<T> std::fmt::Debug for DeviceRef<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceRef")
            .field("owner", &self.meta.owner)
            .field("gpu", &self.meta.gpu)
            .field("len", &self.meta.len)
            .finish()
    }
}

impl<T> DeviceRef<T> {
    /// The rank whose GPU holds it.
    pub fn owner(&self) -> u32 {
        self.meta.owner
    }

    /// The owner's GPU (a CUDA ordinal of the owner's process).
    pub fn gpu(&self) -> u32 {
        self.meta.gpu
    }

    /// Its size in bytes.
    pub fn len_bytes(&self) -> u64 {
        self.meta.len
    }
}

/// Device objects moved to readers on this rank, by path, and what its
/// arenas hold (see [`Runtime::device_stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeviceStats {
    /// Reads of this rank's own objects on their GPU (no copy).
    pub same_buffer: u64,
    /// Copies GPU to GPU between two GPUs of this rank.
    pub between_own_gpus: u64,
    /// Copies from another process of the node by mapping its memory.
    pub ipc: u64,
    /// Copies from another node by NCCL send/receive.
    pub nccl: u64,
    /// Copies from another node by GPU-direct RDMA.
    pub gpudirect: u64,
    /// Copies through host staging (another node without NCCL, a failed
    /// mapping, two GPUs of this rank without CUDA).
    pub host_staged: u64,
    /// Reads into host memory (`get_host`).
    pub to_host: u64,
    /// Device arguments pulled onto a task's GPU before it ran.
    pub prefetched: u64,
    /// Objects (own and copies) this rank's arenas hold now.
    pub objects: u64,
    /// Their bytes.
    pub bytes: u64,
}

/// The memory under a rank's device arenas: a GPU, or the host stand-in.
#[derive(Debug)]
pub(crate) enum Domain {
    Host(HostDomain),
    #[cfg(feature = "cuda")]
    Cuda(lumen_objstore::device::cuda::CudaDomain),
}

macro_rules! each_domain {
    ($self:expr, $d:ident => $e:expr) => {
        match $self {
            Domain::Host($d) => $e,
            #[cfg(feature = "cuda")]
            Domain::Cuda($d) => $e,
        }
    };
}

impl DeviceMemory for Domain {
    fn len(&self) -> u64 {
        each_domain!(self, d => d.len())
    }
    fn write(&self, offset: u64, src: &[u8]) -> std::result::Result<(), DeviceError> {
        each_domain!(self, d => d.write(offset, src))
    }
    fn read(&self, offset: u64, dst: &mut [u8]) -> std::result::Result<(), DeviceError> {
        each_domain!(self, d => d.read(offset, dst))
    }
    fn copy_within(&self, from: u64, to: u64, len: u64) -> std::result::Result<(), DeviceError> {
        each_domain!(self, d => d.copy_within(from, to, len))
    }
    fn describe(&self) -> String {
        each_domain!(self, d => d.describe())
    }
    #[cfg(feature = "cuda")]
    fn cuda(&self) -> Option<&lumen_objstore::device::cuda::CudaDomain> {
        each_domain!(self, d => d.cuda())
    }
    fn export(&self) -> Option<Vec<u8>> {
        each_domain!(self, d => d.export())
    }
    fn open_exported(
        &self,
        handle: &[u8],
    ) -> std::result::Result<Box<dyn ExportedRegion>, DeviceError> {
        each_domain!(self, d => d.open_exported(handle))
    }
    fn copy_from_exported(
        &self,
        region: &dyn ExportedRegion,
        from: u64,
        to: u64,
        len: u64,
    ) -> std::result::Result<(), DeviceError> {
        each_domain!(self, d => d.copy_from_exported(region, from, to, len))
    }
}

type Arena = Arc<DeviceArena<Domain>>;

/// Device blocks on this rank tied to one counted reference: the owner's
/// object and copies pulled here, by GPU.
type Blocks = Vec<(u32, StoreId)>;

/// This rank's device arenas (one per GPU, opened on first use), the
/// server of its objects, and the blocks each reference keeps.
#[derive(Default)]
pub(crate) struct DevicePlane {
    arenas: Mutex<HashMap<u32, std::result::Result<Arena, String>>>,
    set: Arc<DeviceArenas<Domain>>,
    server: OnceLock<std::result::Result<DeviceServer, String>>,
    ipc: IpcCache,
    #[cfg(feature = "cuda")]
    nccl_server: OnceLock<std::result::Result<lumen_objstore::device::nccl::NcclServer, String>>,
    #[cfg(feature = "cuda")]
    nccl_pairs: lumen_objstore::device::nccl::NcclPairs,
    #[cfg(feature = "cuda")]
    gpudirect: Arc<lumen_objstore::device::gpudirect::GpuDirect>,
    #[cfg(feature = "cuda")]
    gpudirect_server: OnceLock<Option<lumen_objstore::device::gpudirect::GpuDirectServer>>,
    /// Objects being pulled onto a GPU of this rank, and their end.
    pulling: Mutex<std::collections::HashSet<(u32, StoreId)>>,
    pulled: std::sync::Condvar,
    /// Blocks by the runtime object that counts their references.
    blocks: Mutex<HashMap<ObjectId, Blocks>>,
    /// Entries in `blocks` (read without its lock on every free).
    tracked: AtomicUsize,
    next: AtomicU64,
    same_buffer: AtomicU64,
    between_own_gpus: AtomicU64,
    ipc_copies: AtomicU64,
    nccl_copies: AtomicU64,
    gpudirect_copies: AtomicU64,
    host_staged: AtomicU64,
    to_host: AtomicU64,
    prefetched: AtomicU64,
}

fn device_error(rank: u32, detail: impl Into<String>) -> LumenError {
    LumenError::Runtime(RuntimeError::Device {
        rank,
        detail: detail.into(),
    })
}

/// `LUMEN_DEVICE_ARENA`: bytes per GPU, with K, M or G.
fn arena_bytes() -> std::result::Result<usize, String> {
    let Ok(text) = std::env::var("LUMEN_DEVICE_ARENA") else {
        return Ok(1 << 30);
    };
    lumen_transport::fabric::parse_size(&text)
        .filter(|&n| n > 0)
        .ok_or_else(|| format!("LUMEN_DEVICE_ARENA={text:?}: expected a size such as 256M or 8G"))
}

/// The memory of GPU `gpu`: `LUMEN_DEVICE_DOMAIN=host` asks for the host
/// stand-in; else CUDA (feature `cuda`).
fn open_domain(gpu: u32, bytes: usize) -> std::result::Result<Domain, String> {
    match std::env::var("LUMEN_DEVICE_DOMAIN").as_deref() {
        Ok("host") => HostDomain::shared(bytes)
            .map(Domain::Host)
            .map_err(|e| e.to_string()),
        Ok("cuda") | Err(_) => open_cuda(gpu, bytes),
        Ok(other) => Err(format!(
            "LUMEN_DEVICE_DOMAIN={other:?}: expected cuda (the default) or host (a stand-in for tests)"
        )),
    }
}

#[cfg(feature = "cuda")]
fn open_cuda(gpu: u32, bytes: usize) -> std::result::Result<Domain, String> {
    lumen_objstore::device::cuda::CudaDomain::open(gpu as usize, bytes)
        .map(Domain::Cuda)
        .map_err(|e| e.to_string())
}

#[cfg(not(feature = "cuda"))]
fn open_cuda(_gpu: u32, _bytes: usize) -> std::result::Result<Domain, String> {
    Err("this build has no device objects: build lumen with --features cuda (it needs no CUDA to build; an NVIDIA GPU and driver to run)".into())
}

/// The GPU this thread's device objects go to: the task's or actor's
/// first, else the rank's first.
fn current_gpu() -> u32 {
    executor::gpu_ids().first().copied().unwrap_or(0)
}

impl DevicePlane {
    /// The arena of GPU `gpu`, opened on first use.
    fn arena(&self, inner: &Inner, gpu: u32) -> Result<Arena> {
        let mut arenas = self.arenas.lock().unwrap_or_else(|p| p.into_inner());
        let opened = arenas.entry(gpu).or_insert_with(|| {
            let bytes = arena_bytes()?;
            let domain = open_domain(gpu, bytes)?;
            tracing::info!(
                rank = inner.rank,
                "device objects: a {} MiB arena on {}",
                bytes >> 20,
                domain.describe()
            );
            let arena = Arc::new(DeviceArena::with_spill_dir(
                domain,
                std::env::temp_dir(),
                2 * bytes as u64,
            ));
            self.set.add(arena.clone());
            let server = self.server.get_or_init(|| {
                DeviceServer::register_set(&inner.endpoint, self.set.clone())
                    .map_err(|e| e.to_string())
            });
            server.as_ref().map_err(|e| e.clone())?;
            #[cfg(feature = "cuda")]
            if let Err(e) = self.nccl_server.get_or_init(|| {
                lumen_objstore::device::nccl::NcclServer::register(
                    &inner.endpoint,
                    self.set.clone(),
                )
                .map_err(|e| e.to_string())
            }) {
                tracing::warn!(rank = inner.rank, "no NCCL path for device objects: {e}");
            }
            #[cfg(feature = "cuda")]
            self.gpudirect_server.get_or_init(|| {
                let fabric = inner.store.fabric().filter(|f| f.is_verbs())?;
                lumen_objstore::device::gpudirect::GpuDirectServer::register(
                    &inner.endpoint,
                    self.set.clone(),
                    fabric.backend(),
                    self.gpudirect.clone(),
                )
                .map_err(|e| tracing::warn!(rank = inner.rank, "no GPU-direct path: {e}"))
                .ok()
            });
            Ok(arena)
        });
        opened
            .as_ref()
            .cloned()
            .map_err(|why| device_error(inner.rank, why.clone()))
    }

    fn track(&self, handle: ObjectId, gpu: u32, id: StoreId) {
        let mut blocks = self.blocks.lock().unwrap_or_else(|p| p.into_inner());
        let entry = blocks.entry(handle).or_insert_with(|| {
            self.tracked.fetch_add(1, Ordering::Relaxed);
            Vec::new()
        });
        if !entry.contains(&(gpu, id)) {
            entry.push((gpu, id));
        }
    }

    /// The reference `handle` is gone from this rank (the owner freed it,
    /// or this rank's last borrow of it ended): its device blocks here go.
    pub(crate) fn released(&self, handle: ObjectId) {
        if self.tracked.load(Ordering::Relaxed) == 0 {
            return;
        }
        let Some(blocks) = self
            .blocks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&handle)
        else {
            return;
        };
        self.tracked.fetch_sub(1, Ordering::Relaxed);
        let arenas = self.arenas.lock().unwrap_or_else(|p| p.into_inner());
        for (gpu, id) in blocks {
            if let Some(Ok(arena)) = arenas.get(&gpu) {
                arena.release(id);
            }
        }
    }

    /// Rank `rank` died: its mapped regions here are closed.
    pub(crate) fn rank_died(&self, rank: u32) {
        self.ipc.forget(rank);
        #[cfg(feature = "cuda")]
        self.nccl_pairs.forget(rank);
    }

    fn count(&self, path: TransferPath) {
        let counter = match path {
            TransferPath::SameBuffer => &self.same_buffer,
            TransferPath::PeerCopy => &self.between_own_gpus,
            TransferPath::CudaIpc { .. } => &self.ipc_copies,
            TransferPath::Nccl => &self.nccl_copies,
            TransferPath::ToHost => &self.to_host,
            TransferPath::GpuDirect => &self.gpudirect_copies,
            TransferPath::HostStaged => &self.host_staged,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

impl Inner {
    /// Object `meta` on GPU `gpu` of this rank, pulled here if it is not
    /// (see the module docs for the path); returns the arena and the path.
    fn device_copy(
        &self,
        meta: &DeviceMeta,
        handle: ObjectId,
        gpu: u32,
    ) -> Result<(Arena, TransferPath)> {
        let rank = self.rank;
        let plane = &self.devices;
        let arena = plane.arena(self, gpu)?;
        let id = meta.store_id();
        if meta.owner == rank && meta.gpu == gpu {
            return Ok((arena, TransferPath::SameBuffer));
        }
        // One pull per object and GPU at a time on this rank: a second
        // reader waits for the first one's copy instead of reading it half
        // written (or pulling it twice).
        let key = (gpu, id);
        let deadline = std::time::Instant::now() + TIMEOUT;
        {
            let mut pulling = plane.pulling.lock().unwrap_or_else(|p| p.into_inner());
            loop {
                if arena.ready(id) {
                    // Pulled here before (and still referenced).
                    plane.track(handle, gpu, id);
                    return Ok((arena, TransferPath::SameBuffer));
                }
                if pulling.insert(key) {
                    break;
                }
                if std::time::Instant::now() > deadline {
                    return Err(device_error(
                        rank,
                        format!(
                            "another thread of rank {rank} has been pulling {id} for {TIMEOUT:?}"
                        ),
                    ));
                }
                pulling = plane
                    .pulled
                    .wait_timeout(pulling, Duration::from_millis(50))
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
        }
        let pulled = self.pull_here(meta, &arena);
        plane
            .pulling
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&key);
        plane.pulled.notify_all();
        let path = pulled?;
        plane.track(handle, gpu, id);
        Ok((arena, path))
    }

    /// Copies object `meta` into `arena` (GPU `gpu` of this rank) by the
    /// best path there is.
    fn pull_here(&self, meta: &DeviceMeta, arena: &Arena) -> Result<TransferPath> {
        let rank = self.rank;
        let plane = &self.devices;
        let id = meta.store_id();
        let err = |e: DeviceError| device_error(rank, e.to_string());
        let path = if meta.owner == rank {
            // Another GPU of this process: GPU to GPU where both are CUDA.
            let source = plane.arena(self, meta.gpu)?;
            #[cfg(feature = "cuda")]
            if let (Domain::Cuda(dst), Domain::Cuda(src)) = (arena.memory(), source.memory()) {
                let block = source.pin(id).map_err(err)?;
                let copied = arena.create_with(id, block.len, |_, to| {
                    dst.copy_peer_from(src, block.offset, to, block.len)
                });
                source.unpin(id);
                match copied {
                    Ok(_)
                    | Err(lumen_objstore::device::CreateError::Device(DeviceError::Exists(_))) => {
                        return Ok(TransferPath::PeerCopy)
                    }
                    Err(lumen_objstore::device::CreateError::Device(e))
                    | Err(lumen_objstore::device::CreateError::Fill(e)) => return Err(err(e)),
                }
            }
            // Else through host memory.
            let bytes = source.read_to_host(id).map_err(err)?;
            put_or_exists(arena, id, &bytes).map_err(err)?;
            TransferPath::HostStaged
        } else {
            let same_node = self.ranks.get(meta.owner as usize).map(|r| r.node)
                == self.ranks.get(rank as usize).map(|r| r.node);
            let mapped = if same_node && arena.memory().export().is_some() {
                lumen_objstore::device::pull_ipc(
                    &self.endpoint,
                    meta.owner,
                    id,
                    arena,
                    &plane.ipc,
                    TIMEOUT,
                )
                .pipe_path(rank, meta.owner, "mapping it on this node")
            } else {
                None
            };
            #[cfg(feature = "cuda")]
            let mapped = match mapped {
                None if !same_node && arena.memory().cuda().is_some() => {
                    self.pull_gpudirect(meta, arena)
                }
                other => other,
            };
            #[cfg(feature = "cuda")]
            let mapped = match mapped {
                None if !same_node && arena.memory().cuda().is_some() => {
                    lumen_objstore::device::nccl::pull_nccl(
                        &self.endpoint,
                        meta.owner,
                        id,
                        arena,
                        &plane.nccl_pairs,
                        TIMEOUT,
                    )
                    .pipe_path(rank, meta.owner, "NCCL")
                }
                other => other,
            };
            match mapped {
                Some(path) => path,
                None => {
                    match lumen_objstore::device::pull_staged(
                        &self.endpoint,
                        meta.owner,
                        id,
                        arena,
                        CHUNK,
                        TIMEOUT,
                    ) {
                        Ok(_) | Err(DeviceError::Exists(_)) => {}
                        Err(e) => return Err(err(e)),
                    }
                    TransferPath::HostStaged
                }
            }
        };
        Ok(path)
    }

    /// GPU-direct RDMA from the owner's GPU into `arena`, where both ends
    /// have a verbs fabric (see `lumen_objstore::device::gpudirect`);
    /// `None` when it cannot (then NCCL or host staging).
    #[cfg(feature = "cuda")]
    fn pull_gpudirect(&self, meta: &DeviceMeta, arena: &Arena) -> Option<TransferPath> {
        let fabric = self.store.fabric().filter(|f| f.is_verbs())?;
        let peer = fabric.peer_of(meta.owner)?;
        let backend = fabric.backend();
        lumen_objstore::device::gpudirect::pull_gpudirect(
            &self.endpoint,
            &*backend,
            peer,
            meta.owner,
            meta.store_id(),
            arena,
            &self.devices.gpudirect,
            TIMEOUT,
        )
        .pipe_path(self.rank, meta.owner, "GPU-direct RDMA")
    }

    /// Pulls a task's device arguments onto its GPU before it runs (see
    /// the module docs); a failure is left for the task's own read to report.
    pub(crate) fn prefetch_device_args(&self, args: &[(DeviceMeta, ObjectId)]) {
        let gpu = current_gpu();
        for (meta, handle) in args {
            match self.device_copy(meta, *handle, gpu) {
                Ok((_, path)) => {
                    if path != TransferPath::SameBuffer {
                        self.devices.count(path);
                        self.devices.prefetched.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Err(e) => tracing::debug!(rank = self.rank, "prefetching a device argument: {e}"),
            }
        }
    }
}

/// A direct path's outcome as the path taken, or `None` (logged) when the
/// reader falls back to the next path; an object that arrived meanwhile
/// (another reader's pull) is here already.
trait PipePath {
    fn pipe_path(self, rank: u32, owner: u32, what: &str) -> Option<TransferPath>;
}

impl PipePath for std::result::Result<lumen_objstore::device::DeviceTransfer, DeviceError> {
    fn pipe_path(self, rank: u32, owner: u32, what: &str) -> Option<TransferPath> {
        match self {
            Ok(moved) => Some(moved.path),
            Err(DeviceError::Exists(_)) => Some(TransferPath::SameBuffer),
            Err(e) => {
                tracing::info!(
                    rank,
                    owner,
                    "no {what} for a device object ({e}): the next path instead"
                );
                None
            }
        }
    }
}

fn put_or_exists(arena: &Arena, id: StoreId, bytes: &[u8]) -> std::result::Result<(), DeviceError> {
    match arena.put(id, bytes) {
        Ok(_) | Err(DeviceError::Exists(_)) => Ok(()),
        Err(e) => Err(e),
    }
}

thread_local! {
    /// Device objects serialised into the arguments being encoded (for the
    /// executing rank to pull before the task runs).
    static ARGS: std::cell::RefCell<Option<Vec<(DeviceMeta, ObjectId)>>> =
        const { std::cell::RefCell::new(None) };
}

/// Runs `f` (an encoding of arguments) and returns the device objects it
/// serialised besides its result.
pub(crate) fn collect_device_args<R>(f: impl FnOnce() -> R) -> (R, Vec<(DeviceMeta, ObjectId)>) {
    let outer = ARGS.with(|a| a.borrow_mut().replace(Vec::new()));
    let result = f();
    let found = ARGS.with(|a| {
        let mut slot = a.borrow_mut();
        let found = slot.take().unwrap_or_default();
        *slot = outer;
        found
    });
    (result, found)
}

impl<T> DeviceRef<T> {
    /// Records this object for the task whose arguments are being encoded.
    fn note_as_argument(&self) {
        ARGS.with(|a| {
            if let Some(found) = a.borrow_mut().as_mut() {
                found.push((self.meta, self.handle.id()));
            }
        });
    }
}

impl Runtime {
    /// Copies `values` into this rank's GPU (the task's, see the module
    /// docs) as a device object; fails without a GPU or the `cuda`
    /// feature, saying which.
    pub fn put_device<T: bytemuck::Pod>(&self, values: &[T]) -> Result<DeviceRef<T>> {
        let inner = &self.inner;
        let rank = inner.rank;
        let gpu = current_gpu();
        let arena = inner.devices.arena(inner, gpu)?;
        let n = inner.devices.next.fetch_add(1, Ordering::Relaxed);
        let id = StoreId::new(0xDE71_CE00_0000_0000 | u64::from(rank), n);
        let bytes: &[u8] = bytemuck::cast_slice(values);
        arena
            .put(id, bytes)
            .map_err(|e| device_error(rank, e.to_string()))?;
        let meta = DeviceMeta {
            owner: rank,
            gpu,
            id: id.to_bytes(),
            len: bytes.len() as u64,
        };
        let handle = match self.put(&meta) {
            Ok(handle) => handle,
            Err(e) => {
                arena.release(id);
                return Err(e);
            }
        };
        inner.devices.track(handle.id(), gpu, id);
        Ok(DeviceRef {
            meta,
            handle,
            _values: PhantomData,
        })
    }

    /// The object's values in host memory here: a device-to-host copy on
    /// the owner, a host-staged pull from it elsewhere (no GPU needed here).
    pub fn get_host<T: bytemuck::Pod>(&self, object: &DeviceRef<T>) -> Result<Vec<T>> {
        let inner = &self.inner;
        let rank = inner.rank;
        let meta = &object.meta;
        let bytes = if meta.owner == rank {
            inner
                .devices
                .arena(inner, meta.gpu)?
                .read_to_host(meta.store_id())
                .map_err(|e| device_error(rank, e.to_string()))?
        } else {
            lumen_objstore::device::pull_to_host(
                &inner.endpoint,
                meta.owner,
                meta.store_id(),
                CHUNK,
                TIMEOUT,
            )
            .map_err(|e| device_error(rank, e.to_string()))?
        };
        inner.devices.count(TransferPath::ToHost);
        if bytes.len() % std::mem::size_of::<T>().max(1) != 0 {
            return Err(device_error(
                rank,
                format!(
                    "{} bytes are not a whole number of {}",
                    bytes.len(),
                    std::any::type_name::<T>()
                ),
            ));
        }
        Ok(bytemuck::pod_collect_to_vec(&bytes))
    }

    /// The object on this thread's GPU (the task's, see the module docs),
    /// pinned while the view lives: in place on the owner, else copied
    /// here by the best path there is (reported by the view).
    pub fn get_device<T>(&self, object: &DeviceRef<T>) -> Result<DeviceView> {
        let inner = &self.inner;
        let gpu = current_gpu();
        let id = object.meta.store_id();
        let mut attempt = 0;
        let (arena, path, block) = loop {
            let (arena, path) = inner.device_copy(&object.meta, object.handle.id(), gpu)?;
            match arena.pin(id) {
                Ok(block) => break (arena, path, block),
                // A copy released (its last reference here ended) between
                // finding and pinning it: pull it again, once.
                Err(DeviceError::NotFound(_))
                    if attempt == 0 && object.meta.owner != inner.rank =>
                {
                    attempt += 1;
                }
                Err(e) => return Err(device_error(inner.rank, e.to_string())),
            }
        };
        inner.devices.count(path);
        Ok(DeviceView {
            arena,
            id,
            block,
            path,
            _keep: object.handle.clone(),
        })
    }

    /// Counters of this rank's device objects (paths taken, arena use).
    pub fn device_stats(&self) -> DeviceStats {
        let p = &self.inner.devices;
        let mut stats = DeviceStats {
            same_buffer: p.same_buffer.load(Ordering::Relaxed),
            between_own_gpus: p.between_own_gpus.load(Ordering::Relaxed),
            ipc: p.ipc_copies.load(Ordering::Relaxed),
            nccl: p.nccl_copies.load(Ordering::Relaxed),
            gpudirect: p.gpudirect_copies.load(Ordering::Relaxed),
            host_staged: p.host_staged.load(Ordering::Relaxed),
            to_host: p.to_host.load(Ordering::Relaxed),
            prefetched: p.prefetched.load(Ordering::Relaxed),
            ..DeviceStats::default()
        };
        for arena in p
            .arenas
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .flatten()
        {
            let s = arena.stats();
            stats.objects += s.on_device + s.on_host + s.on_disk;
            stats.bytes += s.device_bytes + s.host_bytes + s.disk_bytes;
        }
        stats
    }
}

/// A device object pinned on this rank's GPU (see [`Runtime::get_device`]);
/// it keeps the object referenced while it lives.
pub struct DeviceView {
    arena: Arena,
    id: StoreId,
    block: DeviceBlock,
    path: TransferPath,
    _keep: ObjectRef<DeviceMeta>,
}

impl DeviceView {
    /// Its byte offset in this rank's device arena and its length.
    pub fn block(&self) -> DeviceBlock {
        self.block
    }

    /// How it got here.
    pub fn path(&self) -> TransferPath {
        self.path
    }

    /// The arena's memory (`cuda:0 (NVIDIA H100 ...)`, or the host
    /// stand-in).
    pub fn device(&self) -> String {
        self.arena.memory().describe()
    }

    /// A host copy of its bytes.
    pub fn to_host(&self) -> Result<Vec<u8>> {
        let mut out = vec![0u8; self.block.len as usize];
        self.arena
            .memory()
            .read(self.block.offset, &mut out)
            .map_err(|e| device_error(u32::MAX, e.to_string()))?;
        Ok(out)
    }

    /// Its address in GPU memory (a `CUdeviceptr` of this process, valid
    /// while the view lives), or `None` on the host stand-in.
    #[cfg(feature = "cuda")]
    pub fn device_ptr(&self) -> Option<u64> {
        match self.arena.memory() {
            Domain::Cuda(d) => Some(d.base_ptr() + self.block.offset),
            Domain::Host(_) => None,
        }
    }
}

impl Drop for DeviceView {
    fn drop(&mut self) {
        self.arena.unpin(self.id);
    }
}

impl std::fmt::Debug for DeviceView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceView")
            .field("block", &self.block)
            .field("path", &self.path)
            .finish()
    }
}

/// Binds the primary CUDA context of `gpu` to this thread (a task or actor
/// with GPUs runs with it current); without a driver, nothing (the task may
/// not use CUDA; its device calls say what is missing).
#[cfg(feature = "cuda")]
pub(crate) fn bind_gpu_context(gpu: u32) {
    if let Err(e) = lumen_objstore::device::cuda::bind_primary_context(gpu as usize) {
        tracing::trace!("no CUDA context for GPU {gpu}: {e}");
    }
}

#[cfg(not(feature = "cuda"))]
pub(crate) fn bind_gpu_context(_gpu: u32) {}
