//! Device objects, first part: a rank puts a slice into its GPU's memory
//! and any rank reads it back as host memory; the owner reads it in place.
//!
//! ```ignore
//! let r = rt.put_device(&weights)?;      // into this rank's GPU (feature `cuda`)
//! let host: Vec<f32> = rt.get_host(&r)?; // on any rank, with or without a GPU
//! ```
//!
//! - The owner's objects live in its device arena
//!   (`lumen_objstore::device::DeviceArena` over a `CudaDomain`), opened on
//!   first use on the rank's first visible GPU (its binding narrows
//!   `CUDA_VISIBLE_DEVICES`), `LUMEN_DEVICE_ARENA` bytes (default 1 GiB;
//!   `256M`, `8G`), with a server for other ranks' reads registered on its
//!   endpoint. A full arena evicts its least recently used unpinned objects
//!   to host memory, and beyond twice its size there, to files in the
//!   temporary directory.
//! - [`DeviceRef`] names an object by owner and id; it is plain data
//!   (serde), so it can be passed to tasks and actors.
//! - [`Runtime::get_host`] on the owner copies device to host; elsewhere it
//!   pulls through host staging (`lumen_objstore::device::pull_to_host`),
//!   which needs no GPU on the reader.
//!
//! - [`Runtime::get_device`] pins it on this rank's GPU: in place on the
//!   owner, else pulled through host staging into this rank's arena.
//!
//! Not here yet (issue 13's remaining parts): device results of tasks and
//! actors, the direct paths onto another GPU (CUDA IPC on a node, NCCL or
//! GPU-direct across nodes: `path::choose` names them, nothing takes them
//! yet), and reference counting of device objects (they live until
//! [`Runtime::free_device`]). Without a GPU, or in a
//! build without the `cuda` feature, `put_device` fails saying which.

use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use lumen_objstore::ObjectId as StoreId;

use super::error::RuntimeError;
use super::Runtime;
use crate::error::{LumenError, Result};

/// Chunk of the host-staged path.
const CHUNK: usize = 4 << 20;
/// Bound of each wait for the owner.
const TIMEOUT: Duration = Duration::from_secs(60);

/// A device object: its owner and id (see the module docs).
#[derive(Debug, Serialize, Deserialize)]
#[serde(bound = "")]
pub struct DeviceRef<T> {
    owner: u32,
    id: [u8; 16],
    len: u64,
    #[serde(skip)]
    _values: PhantomData<fn() -> T>,
}

impl<T> Clone for DeviceRef<T> {
    fn clone(&self) -> Self {
        DeviceRef {
            owner: self.owner,
            id: self.id,
            len: self.len,
            _values: PhantomData,
        }
    }
}

impl<T> DeviceRef<T> {
    /// The rank whose GPU holds it.
    pub fn owner(&self) -> u32 {
        self.owner
    }

    /// Its size in bytes.
    pub fn len_bytes(&self) -> u64 {
        self.len
    }

    fn store_id(&self) -> StoreId {
        StoreId::from_bytes(self.id)
    }
}

/// This rank's device arena, opened on first use.
#[derive(Default)]
pub(crate) struct DevicePlane {
    #[cfg(feature = "cuda")]
    arena: std::sync::OnceLock<std::result::Result<cuda::Plane, String>>,
    next: AtomicU64,
}

fn device_error(rank: u32, detail: impl Into<String>) -> LumenError {
    LumenError::Runtime(RuntimeError::Device {
        rank,
        detail: detail.into(),
    })
}

#[cfg(feature = "cuda")]
mod cuda {
    use std::sync::Arc;

    use lumen_objstore::device::cuda::CudaDomain;
    use lumen_objstore::device::{DeviceArena, DeviceServer};

    /// A rank's device arena and the server of its objects.
    pub(crate) struct Plane {
        pub(crate) arena: Arc<DeviceArena<CudaDomain>>,
        _server: DeviceServer,
    }

    /// `LUMEN_DEVICE_ARENA`: bytes, with K, M or G.
    fn arena_bytes() -> std::result::Result<usize, String> {
        let Ok(text) = std::env::var("LUMEN_DEVICE_ARENA") else {
            return Ok(1 << 30);
        };
        lumen_transport::fabric::parse_size(&text)
            .filter(|&n| n > 0)
            .ok_or_else(|| {
                format!("LUMEN_DEVICE_ARENA={text:?}: expected a size such as 256M or 8G")
            })
    }

    pub(crate) fn open(endpoint: &lumen_transport::Endpoint) -> std::result::Result<Plane, String> {
        let bytes = arena_bytes()?;
        let domain = CudaDomain::open(0, bytes).map_err(|e| e.to_string())?;
        tracing::info!(
            rank = endpoint.rank(),
            "device objects: a {} MiB arena on {}",
            bytes >> 20,
            lumen_objstore::device::DeviceMemory::describe(&domain)
        );
        // Evicted objects beyond twice the arena's size in host memory go
        // to files in the temporary directory (removed with the arena).
        let arena = Arc::new(DeviceArena::with_spill_dir(
            domain,
            std::env::temp_dir(),
            2 * bytes as u64,
        ));
        let server = DeviceServer::register(endpoint, arena.clone()).map_err(|e| e.to_string())?;
        Ok(Plane {
            arena,
            _server: server,
        })
    }
}

impl Runtime {
    #[cfg(feature = "cuda")]
    fn device_plane(&self) -> Result<&cuda::Plane> {
        let inner = &self.inner;
        inner
            .devices
            .arena
            .get_or_init(|| cuda::open(&inner.endpoint))
            .as_ref()
            .map_err(|why| device_error(inner.rank, why.clone()))
    }

    /// Copies `values` into this rank's GPU as a device object (see the
    /// module docs); fails without a GPU or the `cuda` feature, saying so.
    pub fn put_device<T: bytemuck::Pod>(&self, values: &[T]) -> Result<DeviceRef<T>> {
        let rank = self.inner.rank;
        let n = self.inner.devices.next.fetch_add(1, Ordering::Relaxed);
        let id = StoreId::new(0xDE71_CE00_0000_0000 | u64::from(rank), n);
        let bytes: &[u8] = bytemuck::cast_slice(values);
        #[cfg(feature = "cuda")]
        {
            let plane = self.device_plane()?;
            plane
                .arena
                .put(id, bytes)
                .map_err(|e| device_error(rank, e.to_string()))?;
            Ok(DeviceRef {
                owner: rank,
                id: id.to_bytes(),
                len: bytes.len() as u64,
                _values: PhantomData,
            })
        }
        #[cfg(not(feature = "cuda"))]
        {
            let _ = (id, bytes);
            Err(device_error(
                rank,
                "this build has no device objects: build lumen with --features cuda (it needs no CUDA to build; an NVIDIA GPU and driver to run)",
            ))
        }
    }

    /// The object's values in host memory here: a device-to-host copy on
    /// the owner, a host-staged pull from it elsewhere (no GPU needed here).
    pub fn get_host<T: bytemuck::Pod>(&self, object: &DeviceRef<T>) -> Result<Vec<T>> {
        let rank = self.inner.rank;
        let bytes = if object.owner == rank {
            self.local_bytes(object)?
        } else {
            lumen_objstore::device::pull_to_host(
                &self.inner.endpoint,
                object.owner,
                object.store_id(),
                CHUNK,
                TIMEOUT,
            )
            .map_err(|e| device_error(rank, e.to_string()))?
        };
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

    #[cfg(feature = "cuda")]
    fn local_bytes<T>(&self, object: &DeviceRef<T>) -> Result<Vec<u8>> {
        let plane = self.device_plane()?;
        plane
            .arena
            .read_to_host(object.store_id())
            .map_err(|e| device_error(self.inner.rank, e.to_string()))
    }

    #[cfg(not(feature = "cuda"))]
    fn local_bytes<T>(&self, _object: &DeviceRef<T>) -> Result<Vec<u8>> {
        Err(device_error(
            self.inner.rank,
            "this build has no device objects (feature `cuda`)",
        ))
    }

    /// The object on this rank's GPU, pinned while the view lives: in
    /// place on the owner, else pulled here through host staging into this
    /// rank's device arena (the path it took is in the view). Needs a GPU
    /// here and the `cuda` feature.
    #[cfg(feature = "cuda")]
    pub fn get_device<T: bytemuck::Pod>(&self, object: &DeviceRef<T>) -> Result<DeviceView> {
        let rank = self.inner.rank;
        let plane = self.device_plane()?;
        let id = object.store_id();
        let path = if object.owner == rank {
            lumen_objstore::device::path::TransferPath::SameBuffer
        } else {
            match plane.arena.pin(id) {
                // Pulled here before: a local copy.
                Ok(_) => {
                    plane.arena.unpin(id);
                }
                Err(_) => {
                    lumen_objstore::device::pull_staged(
                        &self.inner.endpoint,
                        object.owner,
                        id,
                        &plane.arena,
                        CHUNK,
                        TIMEOUT,
                    )
                    .map_err(|e| device_error(rank, e.to_string()))?;
                }
            }
            lumen_objstore::device::path::TransferPath::HostStaged
        };
        let block = plane
            .arena
            .pin(id)
            .map_err(|e| device_error(rank, e.to_string()))?;
        Ok(DeviceView {
            arena: plane.arena.clone(),
            id,
            block,
            path,
        })
    }

    /// Frees a device object (on its owner).
    pub fn free_device<T>(&self, object: &DeviceRef<T>) -> Result<()> {
        let rank = self.inner.rank;
        if object.owner != rank {
            return Err(device_error(
                rank,
                format!(
                    "object owned by rank {}: free it there (device objects are not reference counted yet)",
                    object.owner
                ),
            ));
        }
        #[cfg(feature = "cuda")]
        {
            self.device_plane()?
                .arena
                .remove(object.store_id())
                .map_err(|e| device_error(rank, e.to_string()))
        }
        #[cfg(not(feature = "cuda"))]
        {
            Err(device_error(
                rank,
                "this build has no device objects (feature `cuda`)",
            ))
        }
    }
}

/// A device object pinned on this rank's GPU (see [`Runtime::get_device`]).
#[cfg(feature = "cuda")]
pub struct DeviceView {
    arena: std::sync::Arc<
        lumen_objstore::device::DeviceArena<lumen_objstore::device::cuda::CudaDomain>,
    >,
    id: StoreId,
    block: lumen_objstore::device::DeviceBlock,
    path: lumen_objstore::device::path::TransferPath,
}

#[cfg(feature = "cuda")]
impl DeviceView {
    /// Its byte offset in this rank's device arena and its length.
    pub fn block(&self) -> lumen_objstore::device::DeviceBlock {
        self.block
    }

    /// How it got here.
    pub fn path(&self) -> lumen_objstore::device::path::TransferPath {
        self.path
    }

    /// The arena's GPU (`cuda:0 (NVIDIA H100 ...)`).
    pub fn device(&self) -> String {
        lumen_objstore::device::DeviceMemory::describe(self.arena.memory())
    }
}

#[cfg(feature = "cuda")]
impl Drop for DeviceView {
    fn drop(&mut self) {
        self.arena.unpin(self.id);
    }
}

#[cfg(feature = "cuda")]
impl std::fmt::Debug for DeviceView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceView")
            .field("block", &self.block)
            .field("path", &self.path)
            .finish()
    }
}
