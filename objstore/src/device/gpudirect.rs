//! The GPU-direct RDMA path between nodes (feature `cuda`, and a verbs
//! device with dma-buf support): each rank registers its device arenas
//! with the RDMA device once (the allocation exported as a dma-buf,
//! `cuMemGetHandleForAddressRange`, then `ibv_reg_dmabuf_mr`), and a reader
//! copies an object with one RDMA read from the owner's GPU memory straight
//! into its own: no host memory, no CPU copy.
//!
//! ```text
//!  reader (rank R)                                   owner (rank O)
//!  Map(id, seq) ───────────────────────────────────► register its arena (once),
//!  ◄──────────── header: key | offset | len          pin(id) under a lease
//!  create_with: RDMA read key+offset → own arena (registered once)
//!  Release(seq) ───────────────────────────────────► unpin
//! ```
//!
//! Any refusal (no dma-buf support in the driver or the kernel, a backend
//! other than verbs, the host stand-in) comes before anything moved; the
//! caller then takes NCCL or host staging. Leases of readers that never
//! release expire after [`super::LEASE`], as for CUDA IPC.
//!
//! Not run here (no GPU, no RDMA device on the development machine).

use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lumen_transport::fabric::{OneSided, RemoteKey};
use lumen_transport::{Endpoint, Message, Rank};

use super::path::TransferPath;
use super::transfer::DeviceArenas;
use super::{CreateError, DeviceArena, DeviceError, DeviceMemory, DeviceTransfer, LEASE};
use crate::pull::OBJECT_TAG_BASE;
use crate::ObjectId;

/// Tag of GPU-direct requests (served by [`GpuDirectServer`]'s handler).
pub const GPUDIRECT_REQUEST_TAG: u64 = OBJECT_TAG_BASE | 6;
const HEADER_BASE: u64 = 0xB600_0000_0000_0000;
const REQUEST_LEN: usize = 32;

fn encode(release: bool, seq: u64, id: ObjectId) -> [u8; REQUEST_LEN] {
    let mut out = [0u8; REQUEST_LEN];
    out[0..4].copy_from_slice(&1u32.to_le_bytes());
    out[4..8].copy_from_slice(&u32::from(release).to_le_bytes());
    out[8..16].copy_from_slice(&seq.to_le_bytes());
    out[16..32].copy_from_slice(&id.to_bytes());
    out
}

fn decode(bytes: &[u8]) -> Result<(bool, u64, ObjectId), String> {
    if bytes.len() != REQUEST_LEN {
        return Err(format!("{} bytes, expected {REQUEST_LEN}", bytes.len()));
    }
    if bytes[0..4] != 1u32.to_le_bytes() {
        return Err("unknown version".into());
    }
    let release = match bytes[4..8] {
        [0, 0, 0, 0] => false,
        [1, 0, 0, 0] => true,
        _ => return Err("unknown request kind".into()),
    };
    let mut seq = [0u8; 8];
    seq.copy_from_slice(&bytes[8..16]);
    let mut id = [0u8; 16];
    id.copy_from_slice(&bytes[16..32]);
    Ok((release, u64::from_le_bytes(seq), ObjectId::from_bytes(id)))
}

/// A rank's device arenas registered with its RDMA device, by base
/// address (the dma-buf descriptors are kept while registered).
#[derive(Default)]
pub struct GpuDirect {
    registered: Mutex<HashMap<u64, (OwnedFd, RemoteKey)>>,
}

impl std::fmt::Debug for GpuDirect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.registered.lock().map(|r| r.len()).unwrap_or(0);
        f.debug_struct("GpuDirect").field("regions", &n).finish()
    }
}

impl GpuDirect {
    /// The key of `memory` (a CUDA arena) on `fabric`, registering it on
    /// first use; its base address beside it.
    fn key<D: DeviceMemory>(
        &self,
        fabric: &dyn OneSided,
        memory: &D,
    ) -> Result<(u64, RemoteKey), DeviceError> {
        let cuda = memory.cuda().ok_or_else(|| {
            DeviceError::Unavailable(format!("{} has no GPU-direct path", memory.describe()))
        })?;
        let base = cuda.base_ptr();
        let mut registered = self.registered.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, key)) = registered.get(&base) {
            return Ok((base, *key));
        }
        let (fd, base, len) = cuda.dmabuf()?;
        // SAFETY: the arena's allocation lives as long as its domain, which
        // outlives this rank's endpoint use of it (the runtime keeps its
        // arenas for the process's life).
        let region =
            unsafe { fabric.register_dmabuf(fd.as_raw_fd(), 0, len, base) }.map_err(|e| {
                DeviceError::Unavailable(format!(
                    "registering GPU memory with {}: {e}",
                    fabric.describe()
                ))
            })?;
        registered.insert(base, (fd, region.key));
        Ok((base, region.key))
    }
}

type Leases<D> = Mutex<HashMap<(Rank, u64), (ObjectId, Arc<DeviceArena<D>>, Instant)>>;

/// Serves device objects of one rank's arenas to GPU-direct readers.
pub struct GpuDirectServer {
    served: Arc<AtomicU64>,
}

impl std::fmt::Debug for GpuDirectServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuDirectServer")
            .field("served", &self.served())
            .finish()
    }
}

fn reply(ep: &Endpoint, to: Rank, seq: u64, body: Result<Vec<u8>, String>) {
    let answer = body.as_deref().map_err(String::as_str);
    super::transfer::reply_header(ep, to, HEADER_BASE, seq, answer);
}

impl GpuDirectServer {
    /// Registers the handler on `endpoint`: objects of `arenas`, read by
    /// peers over `fabric`, registrations kept in `direct`.
    pub fn register<D: DeviceMemory + 'static>(
        endpoint: &Endpoint,
        arenas: Arc<DeviceArenas<D>>,
        fabric: Arc<dyn OneSided>,
        direct: Arc<GpuDirect>,
    ) -> Result<Self, DeviceError> {
        let served = Arc::new(AtomicU64::new(0));
        let count = served.clone();
        let leases: Arc<Leases<D>> = Arc::default();
        endpoint
            .register_handler(
                GPUDIRECT_REQUEST_TAG,
                Arc::new(move |ep: &Endpoint, message: Message| {
                    let src = message.src;
                    let (release, seq, id) = match decode(&message.data) {
                        Ok(r) => r,
                        Err(e) => {
                            tracing::error!(
                                peer = src,
                                "malformed GPU-direct request ignored: {e}"
                            );
                            return;
                        }
                    };
                    let mut leases = leases.lock().unwrap_or_else(|p| p.into_inner());
                    if release {
                        if let Some((id, arena, _)) = leases.remove(&(src, seq)) {
                            arena.unpin(id);
                        }
                        return;
                    }
                    let old: Vec<(Rank, u64)> = leases
                        .iter()
                        .filter(|(_, (_, _, at))| at.elapsed() > LEASE)
                        .map(|(&k, _)| k)
                        .collect();
                    for k in old {
                        if let Some((id, arena, _)) = leases.remove(&k) {
                            arena.unpin(id);
                        }
                    }
                    let Some(arena) = arenas.find(id) else {
                        reply(
                            ep,
                            src,
                            seq,
                            Err(DeviceError::NotFound(id.to_string()).to_string()),
                        );
                        return;
                    };
                    let key = match direct.key(&*fabric, arena.memory()) {
                        Ok((_, key)) => key,
                        Err(e) => {
                            reply(ep, src, seq, Err(e.to_string()));
                            return;
                        }
                    };
                    let block = match arena.pin(id) {
                        Ok(block) => block,
                        Err(e) => {
                            reply(ep, src, seq, Err(e.to_string()));
                            return;
                        }
                    };
                    leases.insert((src, seq), (id, arena.clone(), Instant::now()));
                    let mut body = key.to_bytes().to_vec();
                    body.extend_from_slice(&block.offset.to_le_bytes());
                    body.extend_from_slice(&block.len.to_le_bytes());
                    reply(ep, src, seq, Ok(body));
                    count.fetch_add(1, Ordering::Relaxed);
                }),
            )
            .map_err(|e| DeviceError::Transfer {
                rank: endpoint.rank(),
                detail: format!("registering the GPU-direct handler: {e}"),
            })?;
        Ok(GpuDirectServer { served })
    }

    /// Objects mapped for readers so far.
    pub fn served(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }
}

static SEQUENCE: AtomicU64 = AtomicU64::new(1);

/// Copies device object `id` of rank `owner` (another node, running a
/// [`GpuDirectServer`]; `peer` is its index on `fabric`) into `arena` with
/// one RDMA read between the two GPUs' memories. Refused before anything
/// moved when either side cannot (see the module docs).
#[allow(clippy::too_many_arguments)]
pub fn pull_gpudirect<D: DeviceMemory>(
    endpoint: &Endpoint,
    fabric: &dyn OneSided,
    peer: usize,
    owner: Rank,
    id: ObjectId,
    arena: &DeviceArena<D>,
    direct: &GpuDirect,
    timeout: Duration,
) -> Result<DeviceTransfer, DeviceError> {
    let transfer = |detail: String| DeviceError::Transfer {
        rank: owner,
        detail,
    };
    // This side first: no request (and no pin at the owner) if this GPU
    // cannot be registered.
    let (base, _) = direct.key(fabric, arena.memory())?;
    let seq = SEQUENCE.fetch_add(1, Ordering::Relaxed);
    let body = match super::transfer::request_header(
        endpoint,
        owner,
        GPUDIRECT_REQUEST_TAG,
        &encode(false, seq, id),
        HEADER_BASE,
        seq,
        timeout,
    )? {
        (0, body) if body.len() == RemoteKey::BYTES + 16 => body,
        _ => return Err(transfer("a malformed GPU-direct header".into())),
    };
    let release = || {
        let _ = endpoint.send(owner, GPUDIRECT_REQUEST_TAG, &encode(true, seq, id));
    };
    let key = match RemoteKey::from_bytes(&body[..RemoteKey::BYTES]) {
        Ok(key) => key,
        Err(e) => {
            release();
            return Err(transfer(format!("its key: {e}")));
        }
    };
    let word = |at: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&body[at..at + 8]);
        u64::from_le_bytes(w)
    };
    let (offset, len) = (word(RemoteKey::BYTES), word(RemoteKey::BYTES + 8));
    let copied = arena
        .create_with(id, len, |_, to| {
            // SAFETY: `base + to .. + len` is the block just reserved in
            // this rank's registered arena, written by nobody else until
            // `create_with` returns.
            unsafe {
                fabric.read_registered(
                    peer,
                    &key,
                    offset,
                    (base + to) as *mut u8,
                    len as usize,
                    timeout,
                )
            }
            .map_err(|e| transfer(e.to_string()))
        })
        .map_err(|e| match e {
            CreateError::Device(d) | CreateError::Fill(d) => d,
        });
    release();
    let block = copied?;
    Ok(DeviceTransfer {
        path: TransferPath::GpuDirect,
        block,
        chunks: 1,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_and_bad_ones_are_refused() {
        let id = ObjectId::new(8, 1);
        assert_eq!(decode(&encode(false, 5, id)), Ok((false, 5, id)));
        assert_eq!(decode(&encode(true, 6, id)), Ok((true, 6, id)));
        assert!(decode(&[0u8; 3]).is_err());
        let mut bad = encode(false, 5, id);
        bad[4] = 3;
        assert!(decode(&bad).is_err());
        bad = encode(false, 5, id);
        bad[0] = 9;
        assert!(decode(&bad).is_err());
    }

    #[test]
    fn backends_without_device_memory_refuse_to_register_it() {
        // The software backends (here: tcp) refuse GPU memory, saying why.
        let tcp = lumen_transport::fabric::open(
            lumen_transport::fabric::FabricChoice::Tcp,
            Some("127.0.0.1"),
            1,
        )
        .expect("tcp backend");
        // SAFETY: a refusal registers nothing.
        let refused = unsafe { tcp.register_dmabuf(-1, 0, 4096, 0x1000) };
        let text = refused
            .expect_err("tcp cannot register device memory")
            .to_string();
        assert!(text.contains("verbs"), "{text}");
    }
}
