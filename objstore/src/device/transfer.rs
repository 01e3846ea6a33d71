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

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use lumen_transport::{Endpoint, Message, Rank, Source};

use super::path::TransferPath;
use super::staging::{stage_in, stage_out, StagingError};
use super::{CreateError, DeviceArena, DeviceBlock, DeviceError, DeviceMemory};
use crate::pull::OBJECT_TAG_BASE;
use crate::ObjectId;

/// Tag of device object requests (served by [`DeviceServer`]'s handler).
pub const DEVICE_REQUEST_TAG: u64 = OBJECT_TAG_BASE | 4;
/// Headers: `HEADER_BASE | seq`; chunks: `CHUNK_BASE | seq` (32-bit seq).
const HEADER_BASE: u64 = 0xB300_0000_0000_0000;
const CHUNK_BASE: u64 = 0xB400_0000_0000_0000;
const REQUEST_LEN: usize = 40;

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

fn encode_request(id: ObjectId, seq: u64, chunk: u64) -> [u8; REQUEST_LEN] {
    let mut out = [0u8; REQUEST_LEN];
    out[0..4].copy_from_slice(&1u32.to_le_bytes());
    out[8..24].copy_from_slice(&id.to_bytes());
    out[24..32].copy_from_slice(&seq.to_le_bytes());
    out[32..40].copy_from_slice(&chunk.to_le_bytes());
    out
}

fn decode_request(bytes: &[u8]) -> Result<(ObjectId, u64, u64), String> {
    if bytes.len() != REQUEST_LEN {
        return Err(format!("{} bytes, expected {REQUEST_LEN}", bytes.len()));
    }
    if bytes[0..4] != 1u32.to_le_bytes() {
        return Err("unknown version".into());
    }
    let mut id = [0u8; 16];
    id.copy_from_slice(&bytes[8..24]);
    let word = |at: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&bytes[at..at + 8]);
        u64::from_le_bytes(w)
    };
    let chunk = word(32);
    if chunk == 0 || chunk > 1 << 30 {
        return Err(format!("chunk of {chunk} bytes"));
    }
    Ok((ObjectId::from_bytes(id), word(24), chunk))
}

/// Serves device objects of one arena to other ranks.
#[derive(Debug)]
pub struct DeviceServer {
    served: Arc<AtomicU64>,
}

impl DeviceServer {
    /// Registers the request handler on `endpoint`, answering from `arena`.
    pub fn register<D: DeviceMemory + 'static>(
        endpoint: &Endpoint,
        arena: Arc<DeviceArena<D>>,
    ) -> Result<Self, DeviceError> {
        let served = Arc::new(AtomicU64::new(0));
        let count = served.clone();
        endpoint
            .register_handler(
                DEVICE_REQUEST_TAG,
                Arc::new(move |ep: &Endpoint, message: Message| {
                    if serve(ep, &arena, message) {
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                }),
            )
            .map_err(|e| DeviceError::Transfer {
                rank: endpoint.rank(),
                detail: format!("registering the device object handler: {e}"),
            })?;
        Ok(DeviceServer { served })
    }

    /// Objects sent so far.
    pub fn served(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }
}

/// Answers one request; true when it sent the object.
fn serve<D: DeviceMemory>(ep: &Endpoint, arena: &DeviceArena<D>, message: Message) -> bool {
    let src = message.src;
    let (id, seq, chunk) = match decode_request(&message.data) {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(peer = src, "malformed device object request ignored: {e}");
            return false;
        }
    };
    let header_tag = HEADER_BASE | (seq & 0xffff_ffff);
    let block = match arena.pin(id) {
        Ok(block) => block,
        Err(e) => {
            let mut header = vec![1u8];
            header.extend_from_slice(e.to_string().as_bytes());
            let _ = ep.send(src, header_tag, &header);
            return false;
        }
    };
    let mut header = vec![0u8];
    header.extend_from_slice(&block.len.to_le_bytes());
    let chunk_tag = CHUNK_BASE | (seq & 0xffff_ffff);
    let sent = ep.send(src, header_tag, &header).is_ok()
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
    sent
}

static SEQUENCE: AtomicU64 = AtomicU64::new(1);

/// Asks `owner` for object `id`; returns the transfer's sequence and the
/// object's length from the owner's header.
fn request(
    endpoint: &Endpoint,
    owner: Rank,
    id: ObjectId,
    chunk: usize,
    timeout: Duration,
) -> Result<(u64, u64), DeviceError> {
    let transfer = |detail: String| DeviceError::Transfer {
        rank: owner,
        detail,
    };
    let seq = SEQUENCE.fetch_add(1, Ordering::Relaxed);
    endpoint
        .send(
            owner,
            DEVICE_REQUEST_TAG,
            &encode_request(id, seq, chunk as u64),
        )
        .map_err(|e| transfer(e.to_string()))?;
    let header = endpoint
        .recv_timeout(
            Source::Rank(owner),
            HEADER_BASE | (seq & 0xffff_ffff),
            timeout,
        )
        .map_err(|e| transfer(e.to_string()))?;
    match header.data.split_first() {
        Some((0, rest)) if rest.len() == 8 => {
            let mut w = [0u8; 8];
            w.copy_from_slice(rest);
            Ok((seq, u64::from_le_bytes(w)))
        }
        Some((1, reason)) => Err(DeviceError::Refused {
            rank: owner,
            detail: String::from_utf8_lossy(reason).into_owned(),
        }),
        _ => Err(transfer("a malformed header".into())),
    }
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
            decode_request(&encode_request(id, 9, 65536)),
            Ok((id, 9, 65536))
        );
        assert!(decode_request(&[0u8; 7]).is_err());
        assert!(decode_request(&encode_request(id, 9, 0)).is_err());
        let mut bad = encode_request(id, 9, 4096);
        bad[0] = 2;
        assert!(decode_request(&bad).is_err());
    }
}
