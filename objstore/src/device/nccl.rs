//! The NCCL path between nodes (feature `cuda`; cudarc loads libnccl at
//! run time): a device object moves GPU to GPU by `ncclSend`/`ncclRecv`
//! over a communicator of just the two ranks, made on first use and kept
//! (a "pair communicator").
//!
//! ```text
//!  reader (rank R)                                   owner (rank O)
//!  ncclGetUniqueId; Open(tag, id) ─────────────────► handler: NCCL loads? the
//!  ◄──────────────────────────────── header: ok      object's arena on a GPU? ok;
//!  ncclCommInitRank(2, id, 1)   ⇄   a sender thread: ncclCommInitRank(2, id, 0)
//!  (pair lock held from here to the receive's end)
//!  Send(tag, seq, object) ─────────────────────────► pin; header: len; queue the send
//!  ◄──────────────────────────── header: ok | len
//!  create_with: ncclRecv(len) ◄════ NCCL ═══════════ sender thread: ncclSend, sync, unpin
//! ```
//!
//! One transfer at a time per pair (the reader holds the pair's lock from
//! its request to the end of its receive, and the owner's sender thread
//! sends in arrival order), so sends and receives match. A pair is bound
//! to the reader's GPU (its `tag`) and to the GPU of the owner's arena that
//! held the first object asked for; an object in another of the owner's
//! arenas is refused (the caller then stages it through host memory).
//!
//! Refusals (no libnccl, a domain without CUDA memory, another arena) come
//! before either side joins a communicator, so nobody waits on a peer that
//! will not join. What is not bounded: an owner that dies after it agreed
//! and before it joined leaves the reader in `ncclCommInitRank` until NCCL's
//! own bootstrap notices the closed socket.
//!
//! Not run here (no GPU on the development machine): the protocol's
//! encoding and its refusals are tested; `scripts/gpu-check.sh` lists it as
//! needing two nodes with GPUs.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cudarc::driver::CudaStream;
use cudarc::nccl::sys as nccl;

use lumen_transport::{Endpoint, Message, Rank};

use super::path::TransferPath;
use super::transfer::DeviceArenas;
use super::{CreateError, DeviceArena, DeviceError, DeviceMemory, DeviceTransfer};
use crate::pull::OBJECT_TAG_BASE;
use crate::ObjectId;

/// Tag of NCCL requests (served by [`NcclServer`]'s handler).
pub const NCCL_REQUEST_TAG: u64 = OBJECT_TAG_BASE | 5;
/// Replies: `HEADER_BASE | seq`.
const HEADER_BASE: u64 = 0xB500_0000_0000_0000;
const REQUEST_LEN: usize = 40;
const UNIQUE_ID_LEN: usize = 128;

/// What a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Join a pair communicator (the unique id follows the request).
    Open,
    /// Send an object over the pair.
    Send,
}

fn encode(kind: Kind, tag: u64, seq: u64, id: ObjectId, unique: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(REQUEST_LEN + unique.len());
    out.extend_from_slice(&1u32.to_le_bytes());
    out.extend_from_slice(&(kind as u32).to_le_bytes());
    out.extend_from_slice(&tag.to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&id.to_bytes());
    out.extend_from_slice(unique);
    out
}

/// A decoded request: kind, the reader's pair tag, sequence, object, and
/// for `Open` the unique id.
type Request = (Kind, u64, u64, ObjectId, Option<[u8; UNIQUE_ID_LEN]>);

fn decode(bytes: &[u8]) -> Result<Request, String> {
    if bytes.len() < REQUEST_LEN {
        return Err(format!(
            "{} bytes, expected at least {REQUEST_LEN}",
            bytes.len()
        ));
    }
    let word4 = |at: usize| {
        let mut w = [0u8; 4];
        w.copy_from_slice(&bytes[at..at + 4]);
        u32::from_le_bytes(w)
    };
    let word8 = |at: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&bytes[at..at + 8]);
        u64::from_le_bytes(w)
    };
    if word4(0) != 1 {
        return Err("unknown version".into());
    }
    let kind = match word4(4) {
        0 => Kind::Open,
        1 => Kind::Send,
        other => return Err(format!("unknown request kind {other}")),
    };
    let mut id = [0u8; 16];
    id.copy_from_slice(&bytes[24..40]);
    let rest = &bytes[REQUEST_LEN..];
    let unique = match (kind, rest.len()) {
        (Kind::Open, UNIQUE_ID_LEN) => {
            let mut u = [0u8; UNIQUE_ID_LEN];
            u.copy_from_slice(rest);
            Some(u)
        }
        (Kind::Send, 0) => None,
        (_, n) => return Err(format!("{n} bytes after a {kind:?} request")),
    };
    Ok((kind, word8(8), word8(16), ObjectId::from_bytes(id), unique))
}

/// Whether libnccl and the CUDA driver load here.
pub fn available() -> Result<(), DeviceError> {
    super::cuda::available()?;
    // SAFETY: only tries to dlopen the library names.
    if !unsafe { nccl::is_culib_present() } {
        return Err(DeviceError::Unavailable(
            "libnccl.so is not installed or not on the library path (install NCCL, e.g. libnccl2, and set LD_LIBRARY_PATH)".into(),
        ));
    }
    Ok(())
}

fn nccl_error(call: &'static str, result: nccl::ncclResult_t) -> DeviceError {
    DeviceError::Driver {
        call,
        detail: format!("{result:?}"),
    }
}

fn check(call: &'static str, result: nccl::ncclResult_t) -> Result<(), DeviceError> {
    if result == nccl::ncclResult_t::ncclSuccess {
        Ok(())
    } else {
        Err(nccl_error(call, result))
    }
}

/// A communicator of two ranks and the stream its operations run on.
struct Pair {
    comm: nccl::ncclComm_t,
    stream: Arc<CudaStream>,
}

// SAFETY: the communicator is used by one thread at a time (the reader's
// pair lock, or the owner's one sender thread), which NCCL allows; the raw
// pointer is only a handle.
unsafe impl Send for Pair {}

impl Pair {
    /// Joins the pair communicator `unique` as `rank` (0 owner, 1 reader)
    /// on `memory`'s GPU.
    fn join(
        memory: &super::cuda::CudaDomain,
        unique: [u8; UNIQUE_ID_LEN],
        rank: i32,
    ) -> Result<Pair, DeviceError> {
        let ctx = memory.context();
        ctx.bind_to_thread().map_err(|e| DeviceError::Driver {
            call: "cuCtxSetCurrent",
            detail: e.to_string(),
        })?;
        let stream = ctx.new_stream().map_err(|e| DeviceError::Driver {
            call: "cuStreamCreate",
            detail: e.to_string(),
        })?;
        let mut id = nccl::ncclUniqueId {
            internal: [0; UNIQUE_ID_LEN],
        };
        for (dst, &src) in id.internal.iter_mut().zip(unique.iter()) {
            *dst = src as std::ffi::c_char;
        }
        let mut comm: nccl::ncclComm_t = std::ptr::null_mut();
        // SAFETY: `comm` is written on success; the id came from
        // ncclGetUniqueId on the reader; the GPU's context is current.
        check("ncclCommInitRank", unsafe {
            nccl::ncclCommInitRank(&mut comm, 2, id, rank)
        })?;
        Ok(Pair { comm, stream })
    }

    /// Sends or receives `len` bytes at device address `ptr` with the
    /// other rank, and waits for it.
    fn transfer(&self, send: bool, ptr: u64, len: u64) -> Result<(), DeviceError> {
        let peer = if send { 1 } else { 0 };
        let stream = self.stream.cu_stream() as nccl::cudaStream_t;
        // SAFETY: `ptr..ptr + len` is a pinned block of a live device
        // arena on this pair's GPU (the callers check); the communicator
        // lives while `self` does.
        let result = unsafe {
            if send {
                nccl::ncclSend(
                    ptr as *const std::ffi::c_void,
                    len as usize,
                    nccl::ncclDataType_t::ncclUint8,
                    peer,
                    self.comm,
                    stream,
                )
            } else {
                nccl::ncclRecv(
                    ptr as *mut std::ffi::c_void,
                    len as usize,
                    nccl::ncclDataType_t::ncclUint8,
                    peer,
                    self.comm,
                    stream,
                )
            }
        };
        check(if send { "ncclSend" } else { "ncclRecv" }, result)?;
        self.stream.synchronize().map_err(|e| DeviceError::Driver {
            call: "cuStreamSynchronize",
            detail: e.to_string(),
        })
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        // SAFETY: created by ncclCommInitRank, destroyed once.
        let _ = unsafe { nccl::ncclCommDestroy(self.comm) };
    }
}

/// A send the owner's sender thread carries out.
type Job = Box<dyn FnOnce(&Pair) + Send>;

/// The owner's side: a sender thread per (reader, tag).
struct Sender {
    jobs: mpsc::Sender<Job>,
    /// Base address of the arena the pair's GPU serves.
    arena_base: u64,
}

/// Serves device objects of one rank's arenas over NCCL (see the module
/// docs).
pub struct NcclServer {
    sent: Arc<AtomicU64>,
}

impl std::fmt::Debug for NcclServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NcclServer")
            .field("sent", &self.sent())
            .finish()
    }
}

fn reply(ep: &Endpoint, to: Rank, seq: u64, status: Result<u64, String>) {
    match status {
        Ok(len) => super::transfer::reply_header(ep, to, HEADER_BASE, seq, Ok(&len.to_le_bytes())),
        Err(why) => super::transfer::reply_header(ep, to, HEADER_BASE, seq, Err(&why)),
    };
}

impl NcclServer {
    /// Registers the NCCL request handler on `endpoint`, answering from
    /// whichever of `arenas` holds the object asked for.
    pub fn register<D: DeviceMemory + 'static>(
        endpoint: &Endpoint,
        arenas: Arc<DeviceArenas<D>>,
    ) -> Result<Self, DeviceError> {
        let sent = Arc::new(AtomicU64::new(0));
        let count = sent.clone();
        let senders: Arc<Mutex<HashMap<(Rank, u64), Sender>>> = Arc::default();
        endpoint
            .register_handler(
                NCCL_REQUEST_TAG,
                Arc::new(move |ep: &Endpoint, message: Message| {
                    serve(ep, &arenas, &senders, &count, message);
                }),
            )
            .map_err(|e| DeviceError::Transfer {
                rank: endpoint.rank(),
                detail: format!("registering the NCCL handler: {e}"),
            })?;
        Ok(NcclServer { sent })
    }

    /// Objects sent over NCCL so far.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }
}

fn serve<D: DeviceMemory + 'static>(
    ep: &Endpoint,
    arenas: &DeviceArenas<D>,
    senders: &Mutex<HashMap<(Rank, u64), Sender>>,
    sent: &Arc<AtomicU64>,
    message: Message,
) {
    let src = message.src;
    let (kind, tag, seq, id, unique) = match decode(&message.data) {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(peer = src, "malformed NCCL request ignored: {e}");
            return;
        }
    };
    let Some(arena) = arenas.find(id) else {
        reply(
            ep,
            src,
            seq,
            Err(DeviceError::NotFound(id.to_string()).to_string()),
        );
        return;
    };
    let Some(cuda) = arena.memory().cuda() else {
        reply(
            ep,
            src,
            seq,
            Err(format!("{} has no NCCL path", arena.memory().describe())),
        );
        return;
    };
    let base = cuda.base_ptr();
    let mut senders = senders.lock().unwrap_or_else(|p| p.into_inner());
    match (kind, unique) {
        (Kind::Open, Some(unique)) => {
            if let Err(e) = available() {
                reply(ep, src, seq, Err(e.to_string()));
                return;
            }
            if senders.contains_key(&(src, tag)) {
                reply(ep, src, seq, Err("this pair exists already".into()));
                return;
            }
            let (jobs, queue) = mpsc::channel::<Job>();
            let joining = arena.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("lumen-nccl-{src}"))
                .spawn(move || {
                    let Some(cuda) = joining.memory().cuda() else {
                        return;
                    };
                    let pair = match Pair::join(cuda, unique, 0) {
                        Ok(pair) => pair,
                        Err(e) => {
                            tracing::warn!(peer = src, "joining a pair communicator: {e}");
                            return;
                        }
                    };
                    drop(joining);
                    for job in queue {
                        job(&pair);
                    }
                });
            match spawned {
                Ok(_) => {
                    senders.insert(
                        (src, tag),
                        Sender {
                            jobs,
                            arena_base: base,
                        },
                    );
                    reply(ep, src, seq, Ok(0));
                }
                Err(e) => reply(ep, src, seq, Err(format!("no sender thread: {e}"))),
            }
        }
        (Kind::Send, None) => {
            let Some(sender) = senders.get(&(src, tag)) else {
                reply(
                    ep,
                    src,
                    seq,
                    Err("no pair communicator with this rank: open one first".into()),
                );
                return;
            };
            if sender.arena_base != base {
                reply(
                    ep,
                    src,
                    seq,
                    Err("the object is on another GPU than this pair's".into()),
                );
                return;
            }
            let block = match arena.pin(id) {
                Ok(block) => block,
                Err(e) => {
                    reply(ep, src, seq, Err(e.to_string()));
                    return;
                }
            };
            reply(ep, src, seq, Ok(block.len));
            let count = sent.clone();
            let job_arena = arena.clone();
            let job: Job = Box::new(move |pair: &Pair| {
                match pair.transfer(true, base + block.offset, block.len) {
                    Ok(()) => {
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => tracing::warn!(peer = src, object = %id, "NCCL send: {e}"),
                }
                job_arena.unpin(id);
            });
            if sender.jobs.send(job).is_err() {
                // The sender thread ended (its join failed): forget the pair.
                arena.unpin(id);
                senders.remove(&(src, tag));
            }
        }
        _ => tracing::error!(peer = src, "malformed NCCL request ignored"),
    }
}

/// A reader's pair communicators, by owner and the reader's GPU.
#[derive(Default)]
pub struct NcclPairs {
    pairs: Mutex<HashMap<(Rank, u64), SharedPair>>,
}

type SharedPair = Arc<Mutex<Pair>>;

impl std::fmt::Debug for NcclPairs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.pairs.lock().map(|p| p.len()).unwrap_or(0);
        f.debug_struct("NcclPairs").field("pairs", &n).finish()
    }
}

static SEQUENCE: AtomicU64 = AtomicU64::new(1);

fn ask(
    endpoint: &Endpoint,
    owner: Rank,
    request: &[u8],
    seq: u64,
    timeout: Duration,
) -> Result<u64, DeviceError> {
    match super::transfer::request_header(
        endpoint,
        owner,
        NCCL_REQUEST_TAG,
        request,
        HEADER_BASE,
        seq,
        timeout,
    )? {
        (0, len) if len.len() == 8 => Ok(super::transfer::word(&len, 0).unwrap_or(0)),
        _ => Err(DeviceError::Transfer {
            rank: owner,
            detail: "a malformed NCCL header".into(),
        }),
    }
}

impl NcclPairs {
    fn pair<D: DeviceMemory>(
        &self,
        endpoint: &Endpoint,
        owner: Rank,
        id: ObjectId,
        memory: &D,
        timeout: Duration,
    ) -> Result<SharedPair, DeviceError> {
        let cuda = memory.cuda().ok_or_else(|| {
            DeviceError::Unavailable(format!("{} has no NCCL path", memory.describe()))
        })?;
        let tag = cuda.ordinal() as u64;
        if let Some(pair) = self
            .pairs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(owner, tag))
        {
            return Ok(pair.clone());
        }
        available()?;
        let mut unique = nccl::ncclUniqueId {
            internal: [0; UNIQUE_ID_LEN],
        };
        // SAFETY: the driver writes the whole id on success.
        check("ncclGetUniqueId", unsafe {
            nccl::ncclGetUniqueId(&mut unique)
        })?;
        let bytes: Vec<u8> = unique.internal.iter().map(|&c| c as u8).collect();
        let mut raw = [0u8; UNIQUE_ID_LEN];
        raw.copy_from_slice(&bytes);
        let seq = SEQUENCE.fetch_add(1, Ordering::Relaxed);
        ask(
            endpoint,
            owner,
            &encode(Kind::Open, tag, seq, id, &raw),
            seq,
            timeout,
        )?;
        // The owner agreed and is joining: join too.
        let pair = Arc::new(Mutex::new(Pair::join(cuda, raw, 1)?));
        self.pairs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((owner, tag), pair.clone());
        Ok(pair)
    }

    /// Forgets `owner`'s pairs (it died).
    pub fn forget(&self, owner: Rank) {
        self.pairs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(o, _), _| *o != owner);
    }
}

/// Copies device object `id` of rank `owner` (another node, running an
/// [`NcclServer`]) into `arena` by NCCL send/receive between the two GPUs;
/// refused (`Unavailable` or `Refused`) when either side cannot, before
/// anything moved: the caller then stages it through host memory.
pub fn pull_nccl<D: DeviceMemory>(
    endpoint: &Endpoint,
    owner: Rank,
    id: ObjectId,
    arena: &DeviceArena<D>,
    pairs: &NcclPairs,
    timeout: Duration,
) -> Result<DeviceTransfer, DeviceError> {
    let pair = pairs.pair(endpoint, owner, id, arena.memory(), timeout)?;
    let tag = arena
        .memory()
        .cuda()
        .map(|c| c.ordinal() as u64)
        .unwrap_or_default();
    // One transfer at a time on this pair (see the module docs).
    let pair = pair.lock().unwrap_or_else(|p| p.into_inner());
    let seq = SEQUENCE.fetch_add(1, Ordering::Relaxed);
    let len = ask(
        endpoint,
        owner,
        &encode(Kind::Send, tag, seq, id, &[]),
        seq,
        timeout,
    )?;
    let base = arena
        .memory()
        .cuda()
        .map(|c| c.base_ptr())
        .unwrap_or_default();
    let block = arena
        .create_with(id, len, |_, offset| {
            pair.transfer(false, base + offset, len)
        })
        .map_err(|e| match e {
            CreateError::Device(d) | CreateError::Fill(d) => d,
        })?;
    Ok(DeviceTransfer {
        path: TransferPath::Nccl,
        block,
        chunks: 1,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_and_bad_ones_are_refused() {
        let id = ObjectId::new(4, 2);
        let unique = [7u8; UNIQUE_ID_LEN];
        let (kind, tag, seq, got, u) =
            decode(&encode(Kind::Open, 3, 9, id, &unique)).expect("open");
        assert_eq!((kind, tag, seq, got), (Kind::Open, 3, 9, id));
        assert_eq!(u, Some(unique));
        let (kind, _, _, _, u) = decode(&encode(Kind::Send, 0, 1, id, &[])).expect("send");
        assert_eq!((kind, u), (Kind::Send, None));
        assert!(decode(&[0u8; 12]).is_err());
        assert!(decode(&encode(Kind::Open, 0, 1, id, &[1, 2])).is_err());
        assert!(decode(&encode(Kind::Send, 0, 1, id, &[1])).is_err());
        let mut bad = encode(Kind::Send, 0, 1, id, &[]);
        bad[4] = 9;
        assert!(decode(&bad).is_err());
    }

    #[test]
    fn without_nccl_or_a_gpu_it_says_what_is_missing() {
        if let Err(e) = available() {
            let text = e.to_string();
            assert!(
                text.contains("libcuda") || text.contains("libnccl") || text.contains("GPU"),
                "{text}"
            );
            eprintln!("SKIPPED: the NCCL path needs a GPU and libnccl ({text})");
        }
    }
}
