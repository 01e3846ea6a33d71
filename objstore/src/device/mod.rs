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
//! - [`pull_ipc`]: the same-node path, the owner's region mapped by the
//!   reader ([`DeviceMemory::export`] / [`DeviceMemory::open_exported`]:
//!   CUDA IPC on a GPU, a shared file for the host stand-in) and one
//!   device-to-device copy, under a lease the reader releases.
//!
//! - [`nccl`] (feature `cuda`): the path between nodes, NCCL send/receive
//!   over a pair communicator made on first use (not run here: no GPU).
//!
//! - [`gpudirect`] (feature `cuda`): GPU-direct RDMA between nodes, the
//!   arenas registered with a verbs device by dma-buf and one RDMA read GPU
//!   to GPU (not run here: no GPU, no RDMA device).

mod arena;
#[cfg(feature = "cuda")]
pub mod cuda;
#[cfg(feature = "cuda")]
pub mod gpudirect;
#[cfg(feature = "cuda")]
pub mod nccl;
pub mod path;
pub mod staging;
pub(crate) mod transfer;

pub use arena::{CreateError, DeviceArena, DeviceArenaStats, DeviceBlock};
pub use transfer::{
    pull_ipc, pull_staged, pull_to_host, DeviceArenas, DeviceServer, DeviceTransfer, IpcCache,
    DEVICE_REQUEST_TAG, LEASE,
};

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

    /// The CUDA allocation under this memory, for the paths that hand
    /// device addresses to a library (NCCL); `None` for other domains.
    #[cfg(feature = "cuda")]
    fn cuda(&self) -> Option<&cuda::CudaDomain> {
        None
    }

    /// A handle to the whole region that another process of this node can
    /// open with [`DeviceMemory::open_exported`] (a CUDA IPC handle for a
    /// GPU, a shared file for the host stand-in), or `None` when this
    /// domain cannot share its memory.
    fn export(&self) -> Option<Vec<u8>> {
        None
    }

    /// Opens a region another process of this node exported (a domain of
    /// the same kind): CUDA IPC maps the other process's allocation into
    /// this one's context.
    fn open_exported(&self, _handle: &[u8]) -> Result<Box<dyn ExportedRegion>, DeviceError> {
        Err(DeviceError::Unavailable(format!(
            "{} cannot open another process's memory",
            self.describe()
        )))
    }

    /// Copies `len` bytes at `from` of an opened region (from
    /// [`DeviceMemory::open_exported`] of this domain) to `to` here: device
    /// to device, a peer copy over NVLink or PCIe when the GPUs differ.
    fn copy_from_exported(
        &self,
        _region: &dyn ExportedRegion,
        _from: u64,
        _to: u64,
        _len: u64,
    ) -> Result<(), DeviceError> {
        Err(DeviceError::Unavailable(format!(
            "{} cannot copy from another process's memory",
            self.describe()
        )))
    }
}

/// Another process's region, opened here (see [`DeviceMemory::export`]).
pub trait ExportedRegion: Send + Sync + std::fmt::Debug {
    /// Bytes in the region.
    fn len(&self) -> u64;

    /// Whether the region is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether it is on the same device as the domain that opened it (no
    /// peer copy between two GPUs).
    fn same_device(&self) -> bool;

    /// For the domain that opened it to find its own kind.
    fn as_any(&self) -> &dyn std::any::Any;
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

/// Host memory standing in for a device, for tests of the bookkeeping, of
/// the staging pipeline and of the runtime's device objects (the "host
/// device memory domain" of issue 13): the same interface, no GPU. It is
/// never chosen as a device by Lumen itself (the runtime uses it only when
/// `LUMEN_DEVICE_DOMAIN=host` asks for it) and describes itself as a
/// stand-in.
///
/// [`HostDomain::shared`] keeps the bytes in an unlinked file of the
/// node's shared memory (`/dev/shm`, mode 0600, gone with the process),
/// which another process of the node opens through the owner's descriptor
/// (`/proc/<pid>/fd/<fd>`, the exported handle), as CUDA IPC opens another
/// process's allocation: the same-node path is then tested between real
/// processes.
#[derive(Debug)]
pub struct HostDomain {
    store: HostStore,
}

#[derive(Debug)]
enum HostStore {
    Memory(Mutex<Vec<u8>>),
    Shared {
        file: std::fs::File,
        path: std::path::PathBuf,
        len: u64,
    },
}

/// A shared host stand-in of another process, opened read-only.
#[derive(Debug)]
struct HostExported {
    file: std::fs::File,
    len: u64,
}

impl ExportedRegion for HostExported {
    fn len(&self) -> u64 {
        self.len
    }

    fn same_device(&self) -> bool {
        true
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// Prefix of exported host stand-in names (checked when opening one).
const HOST_EXPORT_PREFIX: &str = "lumen-devstandin-";

impl HostDomain {
    /// A zeroed region of `len` bytes in this process's memory.
    pub fn new(len: usize) -> Self {
        HostDomain {
            store: HostStore::Memory(Mutex::new(vec![0; len])),
        }
    }

    /// A zeroed region of `len` bytes in a file of the node's shared memory
    /// (`/dev/shm`, else the temporary directory), which other processes of
    /// the node can open through [`DeviceMemory::export`].
    pub fn shared(len: usize) -> Result<Self, DeviceError> {
        use std::os::unix::fs::OpenOptionsExt;
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let dir = std::path::Path::new("/dev/shm");
        let dir = if dir.is_dir() {
            dir.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = dir.join(format!("{HOST_EXPORT_PREFIX}{}-{n}", std::process::id()));
        let io = |what: &str, e: std::io::Error| DeviceError::Driver {
            call: "host stand-in",
            detail: format!("{what} {}: {e}", path.display()),
        };
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| io("creating", e))?;
        // Unlinked at once: nothing is left behind however the process
        // ends; other processes open it through this one's descriptor.
        let _ = std::fs::remove_file(&path);
        file.set_len(len as u64).map_err(|e| io("sizing", e))?;
        let path = std::path::PathBuf::from(format!(
            "/proc/{}/fd/{}",
            std::process::id(),
            std::os::fd::AsRawFd::as_raw_fd(&file)
        ));
        Ok(HostDomain {
            store: HostStore::Shared {
                file,
                path,
                len: len as u64,
            },
        })
    }

    fn memory(&self) -> Option<std::sync::MutexGuard<'_, Vec<u8>>> {
        match &self.store {
            HostStore::Memory(bytes) => Some(bytes.lock().unwrap_or_else(|p| p.into_inner())),
            HostStore::Shared { .. } => None,
        }
    }
}

fn file_error(e: std::io::Error) -> DeviceError {
    DeviceError::Driver {
        call: "host stand-in",
        detail: e.to_string(),
    }
}

impl DeviceMemory for HostDomain {
    fn len(&self) -> u64 {
        match &self.store {
            HostStore::Memory(_) => self.memory().map_or(0, |b| b.len() as u64),
            HostStore::Shared { len, .. } => *len,
        }
    }

    fn write(&self, offset: u64, src: &[u8]) -> Result<(), DeviceError> {
        check_range(offset, src.len() as u64, self.len())?;
        match &self.store {
            HostStore::Memory(_) => {
                let mut bytes = self.memory().expect("memory store");
                let at = offset as usize;
                bytes[at..at + src.len()].copy_from_slice(src);
                Ok(())
            }
            HostStore::Shared { file, .. } => {
                std::os::unix::fs::FileExt::write_all_at(file, src, offset).map_err(file_error)
            }
        }
    }

    fn read(&self, offset: u64, dst: &mut [u8]) -> Result<(), DeviceError> {
        check_range(offset, dst.len() as u64, self.len())?;
        match &self.store {
            HostStore::Memory(_) => {
                let bytes = self.memory().expect("memory store");
                let at = offset as usize;
                dst.copy_from_slice(&bytes[at..at + dst.len()]);
                Ok(())
            }
            HostStore::Shared { file, .. } => {
                std::os::unix::fs::FileExt::read_exact_at(file, dst, offset).map_err(file_error)
            }
        }
    }

    fn copy_within(&self, from: u64, to: u64, len: u64) -> Result<(), DeviceError> {
        let region = self.len();
        check_range(from, len, region)?;
        check_range(to, len, region)?;
        if let Some(mut bytes) = self.memory() {
            bytes.copy_within(from as usize..(from + len) as usize, to as usize);
            return Ok(());
        }
        let mut tmp = vec![0u8; len as usize];
        self.read(from, &mut tmp)?;
        self.write(to, &tmp)
    }

    fn describe(&self) -> String {
        match &self.store {
            HostStore::Memory(_) => format!("host stand-in ({} bytes)", self.len()),
            HostStore::Shared { len, .. } => {
                format!("host stand-in, shared ({len} bytes; not a GPU)")
            }
        }
    }

    fn export(&self) -> Option<Vec<u8>> {
        match &self.store {
            HostStore::Memory(_) => None,
            HostStore::Shared { path, .. } => Some(path.as_os_str().as_encoded_bytes().to_vec()),
        }
    }

    fn open_exported(&self, handle: &[u8]) -> Result<Box<dyn ExportedRegion>, DeviceError> {
        let refuse = |why: String| {
            DeviceError::Unavailable(format!("opening a shared host stand-in: {why}"))
        };
        let text =
            std::str::from_utf8(handle).map_err(|_| refuse("the name is not UTF-8".into()))?;
        let path = std::path::Path::new(text);
        // `/proc/<pid>/fd/<fd>` of the owner, naming an unlinked stand-in.
        let parts: Vec<&str> = text.split('/').collect();
        let numeric = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        let shaped =
            matches!(parts.as_slice(), ["", "proc", pid, "fd", fd] if numeric(pid) && numeric(fd));
        let target = std::fs::read_link(path).unwrap_or_default();
        let named = target
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with(HOST_EXPORT_PREFIX));
        if !shaped || !named {
            return Err(refuse(format!("{text:?} is not a stand-in's descriptor")));
        }
        let file = std::fs::File::open(path).map_err(|e| refuse(format!("{text}: {e}")))?;
        let len = file
            .metadata()
            .map_err(|e| refuse(format!("{text}: {e}")))?
            .len();
        Ok(Box::new(HostExported { file, len }))
    }

    fn copy_from_exported(
        &self,
        region: &dyn ExportedRegion,
        from: u64,
        to: u64,
        len: u64,
    ) -> Result<(), DeviceError> {
        let Some(peer) = region.as_any().downcast_ref::<HostExported>() else {
            return Err(DeviceError::Unavailable(
                "a host stand-in copies only from another host stand-in".into(),
            ));
        };
        check_range(from, len, peer.len)?;
        check_range(to, len, self.len())?;
        // Through a bounded buffer: a stand-in, not a fast path.
        let mut tmp = vec![0u8; len.min(4 << 20) as usize];
        let mut done = 0;
        while done < len {
            let n = (len - done).min(tmp.len() as u64) as usize;
            std::os::unix::fs::FileExt::read_exact_at(&peer.file, &mut tmp[..n], from + done)
                .map_err(file_error)?;
            self.write(to + done, &tmp[..n])?;
            done += n as u64;
        }
        Ok(())
    }
}
