//! The host-staged path between two ranks: the reader asks, the owner pins
//! its object and streams it off its device in chunks (`staging::stage_out`,
//! each chunk one message), the reader writes each chunk to its own device
//! while the next arrives (`staging::stage_in`), then the owner unpins.
//!
//! ```text
//!  reader (rank R)                                   owner (rank O)
//!  DeviceRequest(id, seq, chunk) ─────────────────► handler on DEVICE_REQUEST_TAG:
//!                                                     pin(id) (restores it if evicted)
//!  ◄───────────────────── header(seq): len | error   stage_out: D2H of chunk k+1 while
//!  create_with(id, len): stage_in ◄── chunk 0..n ──  chunk k is sent; unpin
//! ```
//!
//! Per-pair order keeps the chunks in order on one tag. The owner serves
//! on whichever of its threads drives its endpoint's progress (its
//! progress thread in the runtime), one object at a time per thread.
//!
//! The same-node path ([`pull_ipc`]): the reader asks for a mapping
//! instead of the bytes; the owner pins the object under a lease and
//! answers with its region's exported handle (CUDA IPC) and the object's
//! offset; the reader opens the handle once per owner (cached), copies
//! device to device into its own arena and releases the lease. A lease
//! whose reader never releases it (it died) expires after [`LEASE`].
//!
//! ```text
//!  DeviceRequest(id, seq, kind=ipc) ─────────────► pin(id), lease (reader, seq)
//!  ◄──── header(seq): 2 | len | offset | handle
//!  open(handle) (cached), create_with: copy_from_exported
//!  DeviceRequest(id, seq, kind=release) ─────────► unpin, lease gone
//! ```

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use lumen_transport::{Endpoint, Message, Rank, Source};

use super::path::TransferPath;
use super::staging::{stage_in, stage_out, StagingError};
use super::{CreateError, DeviceArena, DeviceBlock, DeviceError, DeviceMemory, ExportedRegion};
use crate::pull::OBJECT_TAG_BASE;
use crate::ObjectId;

/// Tag of device object requests (served by [`DeviceServer`]'s handler).
pub const DEVICE_REQUEST_TAG: u64 = OBJECT_TAG_BASE | 4;
/// Headers: `HEADER_BASE | seq`; chunks: `CHUNK_BASE | seq` (32-bit seq).
const HEADER_BASE: u64 = 0xB300_0000_0000_0000;
const CHUNK_BASE: u64 = 0xB400_0000_0000_0000;
const REQUEST_LEN: usize = 40;
/// How long an IPC lease pins an object for a reader that never releases
/// it (a reader that died between the mapping and its copy).
pub const LEASE: Duration = Duration::from_secs(120);

/// What a request asks for (bytes 4..8 of it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// The bytes, in chunks (host staging).
    Staged,
    /// A mapping: the region's handle and the object's offset (CUDA IPC).
    Ipc,
    /// The end of an IPC copy: the owner drops the lease.
    Release,
}

impl Kind {
    fn code(self) -> u32 {
        match self {
            Kind::Staged => 0,
            Kind::Ipc => 1,
            Kind::Release => 2,
        }
    }

    fn from_code(code: u32) -> Option<Kind> {
        match code {
            0 => Some(Kind::Staged),
            1 => Some(Kind::Ipc),
            2 => Some(Kind::Release),
            _ => None,
        }
    }
}

/// What one device object transfer did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceTransfer {
    /// The path taken.
    pub path: TransferPath,
    /// Where the object is now, on the reader's device.
    pub block: DeviceBlock,
    /// Chunks moved.
    pub chunks: u64,
}

pub(crate) fn encode_request(id: ObjectId, seq: u64, chunk: u64, kind: Kind) -> [u8; REQUEST_LEN] {
    let mut out = [0u8; REQUEST_LEN];
    out[0..4].copy_from_slice(&1u32.to_le_bytes());
    out[4..8].copy_from_slice(&kind.code().to_le_bytes());
    out[8..24].copy_from_slice(&id.to_bytes());
    out[24..32].copy_from_slice(&seq.to_le_bytes());
    out[32..40].copy_from_slice(&chunk.to_le_bytes());
    out
}

pub(crate) fn decode_request(bytes: &[u8]) -> Result<(ObjectId, u64, u64, Kind), String> {
    if bytes.len() != REQUEST_LEN {
        return Err(format!("{} bytes, expected {REQUEST_LEN}", bytes.len()));
    }
    if bytes[0..4] != 1u32.to_le_bytes() {
        return Err("unknown version".into());
    }
    let mut code = [0u8; 4];
    code.copy_from_slice(&bytes[4..8]);
    let code = u32::from_le_bytes(code);
    let kind = Kind::from_code(code).ok_or_else(|| format!("unknown request kind {code}"))?;
    let mut id = [0u8; 16];
    id.copy_from_slice(&bytes[8..24]);
    let word = |at: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&bytes[at..at + 8]);
        u64::from_le_bytes(w)
    };
    let chunk = word(32);
    if kind == Kind::Staged && (chunk == 0 || chunk > 1 << 30) {
        return Err(format!("chunk of {chunk} bytes"));
    }
    Ok((ObjectId::from_bytes(id), word(24), chunk, kind))
}

/// The device arenas of one rank (one per GPU it uses), served together.
#[derive(Debug)]
pub struct DeviceArenas<D: DeviceMemory> {
    arenas: RwLock<Vec<Arc<DeviceArena<D>>>>,
}

impl<D: DeviceMemory> Default for DeviceArenas<D> {
    fn default() -> Self {
        DeviceArenas {
            arenas: RwLock::new(Vec::new()),
        }
    }
}

impl<D: DeviceMemory> DeviceArenas<D> {
    /// A set of one arena.
    pub fn one(arena: Arc<DeviceArena<D>>) -> Self {
        let set = Self::default();
        set.add(arena);
        set
    }

    /// Adds an arena (a GPU opened later).
    pub fn add(&self, arena: Arc<DeviceArena<D>>) {
        self.arenas
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .push(arena);
    }

    /// The arena holding object `id`.
    pub fn find(&self, id: ObjectId) -> Option<Arc<DeviceArena<D>>> {
        self.arenas
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .find(|a| a.contains(id))
            .cloned()
    }
}

/// Objects pinned for IPC readers: (reader, seq) → the object, its arena,
/// and when the lease began.
type Leases<D> = Mutex<HashMap<(Rank, u64), (ObjectId, Arc<DeviceArena<D>>, Instant)>>;

/// Serves device objects of one rank's arenas to other ranks: host-staged
/// chunks, or IPC mappings on the same node.
#[derive(Debug)]
pub struct DeviceServer {
    served: Arc<AtomicU64>,
    mapped: Arc<AtomicU64>,
}

impl DeviceServer {
    /// Registers the request handler on `endpoint`, answering from `arena`.
    pub fn register<D: DeviceMemory + 'static>(
        endpoint: &Endpoint,
        arena: Arc<DeviceArena<D>>,
    ) -> Result<Self, DeviceError> {
        Self::register_set(endpoint, Arc::new(DeviceArenas::one(arena)))
    }

    /// Registers the request handler on `endpoint`, answering from
    /// whichever of `arenas` holds the object asked for.
    pub fn register_set<D: DeviceMemory + 'static>(
        endpoint: &Endpoint,
        arenas: Arc<DeviceArenas<D>>,
    ) -> Result<Self, DeviceError> {
        let served = Arc::new(AtomicU64::new(0));
        let mapped = Arc::new(AtomicU64::new(0));
        let (count, maps) = (served.clone(), mapped.clone());
        let leases: Arc<Leases<D>> = Arc::default();
        endpoint
            .register_handler(
                DEVICE_REQUEST_TAG,
                Arc::new(move |ep: &Endpoint, message: Message| {
                    match serve(ep, &arenas, &leases, message) {
                        Some(Kind::Staged) => count.fetch_add(1, Ordering::Relaxed),
                        Some(Kind::Ipc) => maps.fetch_add(1, Ordering::Relaxed),
                        _ => 0,
                    };
                }),
            )
            .map_err(|e| DeviceError::Transfer {
                rank: endpoint.rank(),
                detail: format!("registering the device object handler: {e}"),
            })?;
        Ok(DeviceServer { served, mapped })
    }

    /// Objects sent so far (host-staged).
    pub fn served(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }

    /// Objects mapped by readers of this node so far (IPC).
    pub fn mapped(&self) -> u64 {
        self.mapped.load(Ordering::Relaxed)
    }
}

/// A refusal header (status 1, then the reason) on `header_tag`.
fn refuse(ep: &Endpoint, to: Rank, header_tag: u64, why: &str) {
    let mut header = vec![1u8];
    header.extend_from_slice(why.as_bytes());
    let _ = ep.send(to, header_tag, &header);
}

/// Answers request `seq` on `header_base | seq` (the device protocols'
/// replies): `Ok(body)` as status 0 and the body, `Err(why)` as a refusal.
/// True when a body went out.
pub(crate) fn reply_header(
    ep: &Endpoint,
    to: Rank,
    header_base: u64,
    seq: u64,
    answer: Result<&[u8], &str>,
) -> bool {
    let tag = header_base | (seq & 0xffff_ffff);
    match answer {
        Ok(body) => {
            let mut header = Vec::with_capacity(1 + body.len());
            header.push(0u8);
            header.extend_from_slice(body);
            ep.send(to, tag, &header).is_ok()
        }
        Err(why) => {
            refuse(ep, to, tag, why);
            false
        }
    }
}

/// Sends `request` to `owner` on `request_tag` and waits for its header on
/// `header_base | seq`: a refusal is `DeviceError::Refused` with the
/// owner's reason; otherwise the status byte and the body.
pub(crate) fn request_header(
    endpoint: &Endpoint,
    owner: Rank,
    request_tag: u64,
    request: &[u8],
    header_base: u64,
    seq: u64,
    timeout: Duration,
) -> Result<(u8, Vec<u8>), DeviceError> {
    let transfer = |detail: String| DeviceError::Transfer {
        rank: owner,
        detail,
    };
    endpoint
        .send(owner, request_tag, request)
        .map_err(|e| transfer(e.to_string()))?;
    let header = endpoint
        .recv_timeout(
            Source::Rank(owner),
            header_base | (seq & 0xffff_ffff),
            timeout,
        )
        .map_err(|e| transfer(e.to_string()))?;
    match header.data.split_first() {
        Some((1, reason)) => Err(DeviceError::Refused {
            rank: owner,
            detail: String::from_utf8_lossy(reason).into_owned(),
        }),
        Some((&status, rest)) => Ok((status, rest.to_vec())),
        None => Err(transfer("an empty header".into())),
    }
}

/// Answers one request; what it served, if it served something.
fn serve<D: DeviceMemory>(
    ep: &Endpoint,
    arenas: &DeviceArenas<D>,
    leases: &Leases<D>,
    message: Message,
) -> Option<Kind> {
    let src = message.src;
    let (id, seq, chunk, kind) = match decode_request(&message.data) {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(peer = src, "malformed device object request ignored: {e}");
            return None;
        }
    };
    let header_tag = HEADER_BASE | (seq & 0xffff_ffff);
    if kind == Kind::Release {
        let lease = leases
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(src, seq));
        match lease {
            Some((id, arena, _)) => arena.unpin(id),
            None => tracing::debug!(peer = src, "release of an unknown or expired lease {seq}"),
        }
        return None;
    }
    // Leases whose reader never came back.
    let expired: Vec<_> = {
        let mut leases = leases.lock().unwrap_or_else(|p| p.into_inner());
        let old: Vec<(Rank, u64)> = leases
            .iter()
            .filter(|(_, (_, _, at))| at.elapsed() > LEASE)
            .map(|(&k, _)| k)
            .collect();
        old.into_iter().filter_map(|k| leases.remove(&k)).collect()
    };
    for (id, arena, _) in expired {
        tracing::warn!(object = %id, "an IPC reader did not release its lease in {LEASE:?}: unpinned");
        arena.unpin(id);
    }
    let Some(arena) = arenas.find(id) else {
        refuse(
            ep,
            src,
            header_tag,
            &DeviceError::NotFound(id.to_string()).to_string(),
        );
        return None;
    };
    if kind == Kind::Ipc {
        let Some(handle) = arena.memory().export() else {
            refuse(
                ep,
                src,
                header_tag,
                &format!(
                    "{} cannot be mapped by another process",
                    arena.memory().describe()
                ),
            );
            return None;
        };
        let block = match arena.pin(id) {
            Ok(block) => block,
            Err(e) => {
                refuse(ep, src, header_tag, &e.to_string());
                return None;
            }
        };
        leases
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((src, seq), (id, arena.clone(), Instant::now()));
        let mut header = Vec::with_capacity(17 + handle.len());
        header.push(2u8);
        header.extend_from_slice(&block.len.to_le_bytes());
        header.extend_from_slice(&block.offset.to_le_bytes());
        header.extend_from_slice(&handle);
        if ep.send(src, header_tag, &header).is_err() {
            if let Some((id, arena, _)) = leases
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&(src, seq))
            {
                arena.unpin(id);
            }
            return None;
        }
        return Some(Kind::Ipc);
    }
    let block = match arena.pin(id) {
        Ok(block) => block,
        Err(e) => {
            refuse(ep, src, header_tag, &e.to_string());
            return None;
        }
    };
    let chunk_tag = CHUNK_BASE | (seq & 0xffff_ffff);
    let sent = reply_header(ep, src, HEADER_BASE, seq, Ok(&block.len.to_le_bytes()))
        && stage_out(
            arena.memory(),
            block.offset,
            block.len,
            chunk as usize,
            |c| ep.send(src, chunk_tag, c).map_err(|e| e.to_string()),
        )
        .map_err(|e| tracing::warn!(peer = src, object = %id, "sending a device object: {e}"))
        .is_ok();
    arena.unpin(id);
    sent.then_some(Kind::Staged)
}

static SEQUENCE: AtomicU64 = AtomicU64::new(1);

/// Sends a request of `kind` for object `id` to `owner` and returns its
/// sequence and the header's body (after the status byte).
fn ask(
    endpoint: &Endpoint,
    owner: Rank,
    id: ObjectId,
    chunk: usize,
    kind: Kind,
    timeout: Duration,
) -> Result<(u64, u8, Vec<u8>), DeviceError> {
    let seq = SEQUENCE.fetch_add(1, Ordering::Relaxed);
    let request = encode_request(id, seq, chunk as u64, kind);
    let (status, body) = request_header(
        endpoint,
        owner,
        DEVICE_REQUEST_TAG,
        &request,
        HEADER_BASE,
        seq,
        timeout,
    )?;
    Ok((seq, status, body))
}

/// The little-endian word at `at`, if the bytes reach that far.
pub(crate) fn word(bytes: &[u8], at: usize) -> Option<u64> {
    let mut w = [0u8; 8];
    w.copy_from_slice(bytes.get(at..at + 8)?);
    Some(u64::from_le_bytes(w))
}

/// Asks `owner` for object `id` in chunks; returns the transfer's
/// sequence and the object's length from the owner's header.
fn request(
    endpoint: &Endpoint,
    owner: Rank,
    id: ObjectId,
    chunk: usize,
    timeout: Duration,
) -> Result<(u64, u64), DeviceError> {
    match ask(endpoint, owner, id, chunk, Kind::Staged, timeout)? {
        (seq, 0, body) if body.len() == 8 => Ok((seq, word(&body, 0).unwrap_or(0))),
        _ => Err(DeviceError::Transfer {
            rank: owner,
            detail: "a malformed header".into(),
        }),
    }
}

/// Regions of other processes of this node opened by a reader, by owner
/// and handle (opening one costs a driver call and a mapping).
#[derive(Debug, Default)]
pub struct IpcCache {
    open: Mutex<HashMap<(Rank, Vec<u8>), OpenRegion>>,
}

type OpenRegion = Arc<dyn ExportedRegion>;

impl IpcCache {
    fn get<D: DeviceMemory>(
        &self,
        owner: Rank,
        handle: &[u8],
        memory: &D,
    ) -> Result<Arc<dyn ExportedRegion>, DeviceError> {
        let key = (owner, handle.to_vec());
        if let Some(region) = self
            .open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            return Ok(region.clone());
        }
        let region: Arc<dyn ExportedRegion> = Arc::from(memory.open_exported(handle)?);
        self.open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, region.clone());
        Ok(region)
    }

    /// Forgets `owner`'s regions (it died, or its mapping failed).
    pub fn forget(&self, owner: Rank) {
        self.open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(o, _), _| *o != owner);
    }

    /// Regions open now.
    pub fn len(&self) -> usize {
        self.open.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether none is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Copies device object `id` of rank `owner`, a process of this node,
/// into `arena` by mapping the owner's region (CUDA IPC) and copying
/// device to device (a peer copy when the GPUs differ): the bytes never
/// leave GPU memory. Refused (`DeviceError::Refused` or `Unavailable`)
/// when the owner's domain cannot be mapped or the mapping fails here: the
/// caller then takes [`pull_staged`].
pub fn pull_ipc<D: DeviceMemory>(
    endpoint: &Endpoint,
    owner: Rank,
    id: ObjectId,
    arena: &DeviceArena<D>,
    cache: &IpcCache,
    timeout: Duration,
) -> Result<DeviceTransfer, DeviceError> {
    let malformed = || DeviceError::Transfer {
        rank: owner,
        detail: "a malformed IPC header".into(),
    };
    let (seq, status, body) = ask(endpoint, owner, id, 0, Kind::Ipc, timeout)?;
    let release = || {
        let _ = endpoint.send(
            owner,
            DEVICE_REQUEST_TAG,
            &encode_request(id, seq, 0, Kind::Release),
        );
    };
    let (Some(len), Some(offset)) = (word(&body, 0), word(&body, 8)) else {
        release();
        return Err(malformed());
    };
    if status != 2 || body.len() <= 16 {
        release();
        return Err(malformed());
    }
    let handle = &body[16..];
    let copied = cache.get(owner, handle, arena.memory()).and_then(|region| {
        let peer_copy = !region.same_device();
        arena
            .create_with(id, len, |memory, to| {
                memory.copy_from_exported(region.as_ref(), offset, to, len)
            })
            .map(|block| (block, peer_copy))
            .map_err(|e| match e {
                CreateError::Device(d) | CreateError::Fill(d) => d,
            })
    });
    release();
    let (block, peer_copy) = copied.inspect_err(|_| cache.forget(owner))?;
    Ok(DeviceTransfer {
        path: TransferPath::CudaIpc { peer_copy },
        block,
        chunks: 1,
    })
}

/// Receives the next chunk of transfer `seq` from `owner` into `buf`.
fn next_chunk(
    endpoint: &Endpoint,
    owner: Rank,
    seq: u64,
    buf: &mut [u8],
    timeout: Duration,
) -> Result<(), String> {
    let m = endpoint
        .recv_timeout(
            Source::Rank(owner),
            CHUNK_BASE | (seq & 0xffff_ffff),
            timeout,
        )
        .map_err(|e| e.to_string())?;
    if m.data.len() != buf.len() {
        return Err(format!(
            "a chunk of {} bytes, expected {}",
            m.data.len(),
            buf.len()
        ));
    }
    buf.copy_from_slice(&m.data);
    Ok(())
}

/// Pulls device object `id` from rank `owner` (which runs a
/// [`DeviceServer`]) into `arena` through host memory, `chunk` bytes at a
/// time; each wait for the owner is bounded by `timeout`.
pub fn pull_staged<D: DeviceMemory>(
    endpoint: &Endpoint,
    owner: Rank,
    id: ObjectId,
    arena: &DeviceArena<D>,
    chunk: usize,
    timeout: Duration,
) -> Result<DeviceTransfer, DeviceError> {
    let chunk = chunk.clamp(4096, 1 << 30);
    let (seq, len) = request(endpoint, owner, id, chunk, timeout)?;
    let mut chunks = 0;
    let block = arena
        .create_with(id, len, |memory, offset| {
            stage_in(memory, offset, len, chunk, |buf| {
                next_chunk(endpoint, owner, seq, buf, timeout)
            })
            .map(|stats| chunks = stats.chunks)
        })
        .map_err(|e| match e {
            CreateError::Device(d) => d,
            CreateError::Fill(StagingError::Device(d)) => d,
            CreateError::Fill(StagingError::Transfer(t)) => DeviceError::Transfer {
                rank: owner,
                detail: t,
            },
        })?;
    Ok(DeviceTransfer {
        path: TransferPath::HostStaged,
        block,
        chunks,
    })
}

/// Copies device object `id` of rank `owner` into host memory here (a
/// reader without a GPU, or one that wants host bytes: `get_host`).
pub fn pull_to_host(
    endpoint: &Endpoint,
    owner: Rank,
    id: ObjectId,
    chunk: usize,
    timeout: Duration,
) -> Result<Vec<u8>, DeviceError> {
    let chunk = chunk.clamp(4096, 1 << 30);
    let (seq, len) = request(endpoint, owner, id, chunk, timeout)?;
    let len = usize::try_from(len).map_err(|_| DeviceError::Transfer {
        rank: owner,
        detail: format!("an object of {len} bytes does not fit this process"),
    })?;
    let mut out = Vec::new();
    out.try_reserve_exact(len)
        .map_err(|_| DeviceError::Transfer {
            rank: owner,
            detail: format!("could not allocate {len} bytes for the host copy"),
        })?;
    out.resize(len, 0);
    for piece in out.chunks_mut(chunk) {
        next_chunk(endpoint, owner, seq, piece, timeout).map_err(|detail| {
            DeviceError::Transfer {
                rank: owner,
                detail,
            }
        })?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_and_bad_ones_are_refused() {
        let id = ObjectId::new(3, 4);
        assert_eq!(
            decode_request(&encode_request(id, 9, 65536, Kind::Staged)),
            Ok((id, 9, 65536, Kind::Staged))
        );
        assert_eq!(
            decode_request(&encode_request(id, 9, 0, Kind::Ipc)),
            Ok((id, 9, 0, Kind::Ipc))
        );
        assert!(decode_request(&[0u8; 7]).is_err());
        assert!(decode_request(&encode_request(id, 9, 0, Kind::Staged)).is_err());
        let mut bad = encode_request(id, 9, 4096, Kind::Staged);
        bad[0] = 2;
        assert!(decode_request(&bad).is_err());
        let mut bad = encode_request(id, 9, 4096, Kind::Staged);
        bad[4] = 7;
        assert!(decode_request(&bad).is_err());
    }
}
