//! GPU-resident objects, first part: the bookkeeping that does not need a
//! GPU, and the CUDA memory domain behind the `cuda` feature.
//!
//! - [`DeviceMemory`]: one contiguous region of a memory domain (a GPU's
//!   memory, [`cuda::CudaDomain`] with the `cuda` feature; or
//!   [`HostDomain`], plain host memory standing in for a device in tests of
//!   the bookkeeping — it is never offered as a device to users).
//! - [`DeviceArena`]: objects in a per-GPU region, placed by the same
//!   boundary-tag allocator as the host arena (`heap`), whose block headers
//!   live in a sparse host-side shadow instead of device memory (touching
//!   device memory for every header would cost a copy each); objects are
//!   pinned while read, evicted to host memory (least recently used first)
//!   when a put needs room, spilled from there to files beyond a host
//!   budget (`DeviceArena::with_spill_dir`), and brought back on the next
//!   device get.
//! - [`path`]: which way a device object moves to a reader (same process,
//!   CUDA IPC, GPU-direct RDMA, NCCL, host staging), as a pure function of
//!   where owner and reader are and what the machines offer.
//! - [`staging`]: the host-staged path, device-to-host copies of chunk k+1
//!   overlapping the network send of chunk k.
//! - [`DeviceServer`] and [`pull_staged`]: that path between two ranks over
//!   the transport (the owner pins and streams, the reader writes each chunk
//!   to its own device while the next arrives).
//!
//! Not here yet (issue 13's remaining parts): `put_device` and device
//! results in the runtime, CUDA IPC handles passed between processes, peer
//! copies between GPUs, the NCCL and GPU-direct paths, and the device
//! script's measurements on a GPU.

mod arena;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod path;
pub mod staging;
mod transfer;

pub use arena::{CreateError, DeviceArena, DeviceArenaStats, DeviceBlock};
pub use transfer::{pull_staged, pull_to_host, DeviceServer, DeviceTransfer, DEVICE_REQUEST_TAG};

use std::sync::Mutex;

/// Why a device operation failed; each says what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeviceError {
    /// No CUDA driver or no GPU: the device API cannot run here.
    #[error("no GPU here: {0}")]
    Unavailable(String),
    /// The device arena cannot hold the object even after evicting every
    /// unpinned one.
    #[error("device arena full: {wanted} bytes wanted, {free} free after evicting, {pinned} bytes pinned by readers; release views or give the arena more memory")]
    Full {
        /// Bytes asked for.
        wanted: u64,
        /// Bytes free.
        free: u64,
        /// Bytes held by pinned objects.
        pinned: u64,
    },
    /// The object is not in this arena (on device or evicted).
    #[error("object {0} is not in this device arena")]
    NotFound(String),
    /// An object with this id exists already.
    #[error("object {0} is in this device arena already")]
    Exists(String),
    /// A range outside the region.
    #[error("bytes {offset}..+{len} are outside the {region}-byte device region")]
    OutOfRange {
        /// Offset asked.
        offset: u64,
        /// Length asked.
        len: u64,
        /// The region's size.
        region: u64,
    },
    /// The owner refused a transfer (it does not have the object, or the
    /// request was malformed).
    #[error("rank {rank} refused the device object: {detail}")]
    Refused {
        /// The owner.
        rank: u32,
        /// Its reason.
        detail: String,
    },
    /// The transport failed under a transfer (a dead peer, a timeout).
    #[error("moving a device object with rank {rank}: {detail}")]
    Transfer {
        /// The peer.
        rank: u32,
        /// What failed.
        detail: String,
    },
    /// The driver failed a call.
    #[error("{call} failed: {detail}")]
    Driver {
        /// The call.
        call: &'static str,
        /// The driver's error.
        detail: String,
    },
}

/// One contiguous region of a memory domain, addressed by byte offsets.
pub trait DeviceMemory: Send + Sync + std::fmt::Debug {
    /// Bytes in the region.
    fn len(&self) -> u64;

    /// Whether the region is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Copies `src` to `offset` (host to device), complete on return.
    fn write(&self, offset: u64, src: &[u8]) -> Result<(), DeviceError>;

    /// Copies `dst.len()` bytes at `offset` into `dst` (device to host),
    /// complete on return.
    fn read(&self, offset: u64, dst: &mut [u8]) -> Result<(), DeviceError>;

    /// Copies `len` bytes inside the region (device to device).
    fn copy_within(&self, from: u64, to: u64, len: u64) -> Result<(), DeviceError>;

    /// What this is (`cuda:0 (NVIDIA H100, 80 GiB)`, `host stand-in`).
    fn describe(&self) -> String;
}

/// Checks `offset..offset + len` against a region of `region` bytes.
pub(crate) fn check_range(offset: u64, len: u64, region: u64) -> Result<(), DeviceError> {
    match offset.checked_add(len) {
        Some(end) if end <= region => Ok(()),
        _ => Err(DeviceError::OutOfRange {
            offset,
            len,
            region,
        }),
    }
}

/// Host memory standing in for a device, for tests of the bookkeeping and
/// of the staging pipeline (the "host device memory domain" of issue 13):
/// the same interface, no GPU. Never chosen as a device by Lumen itself.
#[derive(Debug)]
pub struct HostDomain {
    bytes: Mutex<Vec<u8>>,
}

impl HostDomain {
    /// A zeroed region of `len` bytes.
    pub fn new(len: usize) -> Self {
        HostDomain {
            bytes: Mutex::new(vec![0; len]),
        }
    }

    fn bytes(&self) -> std::sync::MutexGuard<'_, Vec<u8>> {
        self.bytes.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl DeviceMemory for HostDomain {
    fn len(&self) -> u64 {
        self.bytes().len() as u64
    }

    fn write(&self, offset: u64, src: &[u8]) -> Result<(), DeviceError> {
        let mut bytes = self.bytes();
        check_range(offset, src.len() as u64, bytes.len() as u64)?;
        let at = offset as usize;
        bytes[at..at + src.len()].copy_from_slice(src);
        Ok(())
    }

    fn read(&self, offset: u64, dst: &mut [u8]) -> Result<(), DeviceError> {
        let bytes = self.bytes();
        check_range(offset, dst.len() as u64, bytes.len() as u64)?;
        let at = offset as usize;
        dst.copy_from_slice(&bytes[at..at + dst.len()]);
        Ok(())
    }

    fn copy_within(&self, from: u64, to: u64, len: u64) -> Result<(), DeviceError> {
        let mut bytes = self.bytes();
        let region = bytes.len() as u64;
        check_range(from, len, region)?;
        check_range(to, len, region)?;
        bytes.copy_within(from as usize..(from + len) as usize, to as usize);
        Ok(())
    }

    fn describe(&self) -> String {
        format!("host stand-in ({} bytes)", self.bytes().len())
    }
}
