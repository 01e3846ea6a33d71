//! Moving an object between nodes: a chunked, pipelined pull over the
//! transport's two-sided messages.
//!
//! ```text
//!  puller (rank P, node 1)                          server (rank S, node 0)
//!  create_object(id, len) in its arena
//!  send ChunkRequest 0..window ───────────────────► handler on PULL_REQUEST_TAG:
//!                                                     get(id) (pins), send the chunk's
//!  recv(S, reply tag of chunk i) ◄──────────────────  bytes straight from the arena,
//!  copy into the arena, send request i+window         unpin
//!  ... after the last chunk: seal_and_get → ObjectView (pinned)
//! ```
//!
//! Each chunk has its own reply tag (`0xB1..`, the pull's sequence number and
//! the chunk index), so replies may arrive in any order and several pulls
//! (from several threads) may run at once. A chunk reply whose length differs
//! from the chunk's is an error text from the server (the server makes sure
//! its length differs); the pull then fails with
//! [`ObjectStoreError::PullRefused`].
//!
//! Why two-sided messages and not the transport's one-sided
//! [`Endpoint::get`]: `get` reads a region registered as an `Arc<[u8]>`, so
//! serving an arena object through it would first copy the object out of the
//! shared segment into a heap buffer (one more full copy and twice the
//! memory). Sending straight from the pinned arena view costs the same wire
//! path with no extra copy at the server. `objstore/examples/objstore_bench.rs`
//! measures both.
//!
//! The server runs its handler on whichever of its threads drives the
//! endpoint's progress: a rank serving objects while it computes must call
//! [`Endpoint::spawn_progress_thread`] (or otherwise keep calling into its
//! endpoint).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use lumen_transport::{Endpoint, Message, Rank, Source, TransportError};

use crate::{NodeArena, ObjectId, ObjectStoreError, ObjectView};

/// First tag of the object-store protocol range (top nibble `0xB`).
pub const OBJECT_TAG_BASE: u64 = 0xB000_0000_0000_0000;
/// Tag of chunk requests (served by [`ObjectServer`]'s handler).
pub const PULL_REQUEST_TAG: u64 = OBJECT_TAG_BASE | 1;
/// Chunk replies: `REPLY_TAG_BASE | (pull sequence & 0xff_ffff) << 32 | chunk`.
const REPLY_TAG_BASE: u64 = 0xB100_0000_0000_0000;
const REQUEST_VERSION: u32 = 1;
const REQUEST_LEN: usize = 56;
const ERROR_PREFIX: &[u8] = b"lumen-objstore pull error: ";

/// How a pull moves its object.
#[derive(Debug, Clone)]
pub struct PullOptions {
    /// Bytes per chunk request. Default 8 MiB.
    pub chunk_bytes: u64,
    /// Chunk requests kept outstanding. Default 4.
    pub window: u32,
    /// Mark the local copy evictable (it is a secondary copy that can be
    /// pulled again). Default true.
    pub evictable: bool,
    /// How long to wait for any one chunk before failing. Default 60 s.
    pub chunk_timeout: Duration,
    /// Copy arrived chunks into the arena on a helper thread, so that the
    /// next chunk's transfer overlaps the copy. Default false: on the
    /// 2-core, oversubscribed machines measured it was no faster (see
    /// `examples/objstore_bench.rs`); worth enabling where cores are idle.
    pub copy_thread: bool,
}

impl Default for PullOptions {
    fn default() -> Self {
        PullOptions {
            chunk_bytes: 8 << 20,
            window: 4,
            evictable: true,
            chunk_timeout: Duration::from_secs(60),
            copy_thread: false,
        }
    }
}

/// One chunk request (sans-IO: encoded to and decoded from bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ChunkRequest {
    pub(crate) id: ObjectId,
    pub(crate) object_len: u64,
    pub(crate) offset: u64,
    pub(crate) len: u64,
    pub(crate) reply_tag: u64,
}

impl ChunkRequest {
    /// `version u32 | 0 u32 | id (16) | object_len | offset | len | reply tag`,
    /// integers little-endian: 56 bytes.
    pub(crate) fn encode(&self) -> [u8; REQUEST_LEN] {
        let mut out = [0u8; REQUEST_LEN];
        out[0..4].copy_from_slice(&REQUEST_VERSION.to_le_bytes());
        out[8..24].copy_from_slice(&self.id.to_bytes());
        let words = [self.object_len, self.offset, self.len];
        for (i, w) in words.iter().enumerate() {
            out[24 + 8 * i..32 + 8 * i].copy_from_slice(&w.to_le_bytes());
        }
        // The reply tag's low 56 bits; its top byte is always 0xB1.
        out[48..56].copy_from_slice(&(self.reply_tag & !REPLY_TAG_BASE).to_le_bytes());
        out
    }

    /// Parses [`ChunkRequest::encode`]'s output; rejects anything else.
    pub(crate) fn decode(bytes: &[u8]) -> Result<Self, String> {
        if bytes.len() != REQUEST_LEN {
            return Err(format!("{} bytes, expected {REQUEST_LEN}", bytes.len()));
        }
        let word = |at: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&bytes[at..at + 8]);
            u64::from_le_bytes(w)
        };
        let version = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        if version != REQUEST_VERSION {
            return Err(format!("version {version}, expected {REQUEST_VERSION}"));
        }
        let mut id = [0u8; 16];
        id.copy_from_slice(&bytes[8..24]);
        let (object_len, offset, len, tag_bits) = (word(24), word(32), word(40), word(48));
        let request = ChunkRequest {
            id: ObjectId::from_bytes(id),
            object_len,
            offset,
            len,
            reply_tag: REPLY_TAG_BASE | (tag_bits & !REPLY_TAG_BASE),
        };
        if tag_bits >> 56 != 0 {
            return Err("reply tag outside the object-store range".into());
        }
        if request.len == 0
            || request
                .offset
                .checked_add(request.len)
                .is_none_or(|end| end > request.object_len)
        {
            return Err(format!(
                "chunk [{}, +{}) outside an object of {} bytes",
                request.offset, request.len, request.object_len
            ));
        }
        Ok(request)
    }
}

/// The error reply for a chunk of `chunk_len` bytes: a text whose length is
/// never `chunk_len`, so the puller can tell it from data.
pub(crate) fn error_reply(detail: &str, chunk_len: u64) -> Vec<u8> {
    let mut out = ERROR_PREFIX.to_vec();
    out.extend_from_slice(detail.as_bytes());
    if out.len() as u64 == chunk_len {
        out.push(b'.');
    }
    out
}

fn reply_tag(sequence: u64, chunk: u64) -> u64 {
    REPLY_TAG_BASE | ((sequence & 0xff_ffff) << 32) | (chunk & 0xffff_ffff)
}

/// Serves chunk requests for objects of the local arena: registers a handler
/// for [`PULL_REQUEST_TAG`] on the endpoint. Keep it alive as long as the
/// rank serves (dropping it does not unregister the handler; the transport
/// has no unregister call, so the handler stays until the endpoint closes).
#[derive(Debug)]
pub struct ObjectServer {
    arena: NodeArena,
    served: Arc<AtomicU64>,
}

impl ObjectServer {
    /// Registers the chunk-request handler on `endpoint`, answering from `arena`.
    pub fn register(endpoint: &Endpoint, arena: &NodeArena) -> Result<Self, ObjectStoreError> {
        let served_arena = arena.clone();
        let served = Arc::new(AtomicU64::new(0));
        let count = served.clone();
        endpoint
            .register_handler(
                PULL_REQUEST_TAG,
                Arc::new(move |ep: &Endpoint, message: Message| {
                    if serve(ep, &served_arena, message) {
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                }),
            )
            .map_err(|source| ObjectStoreError::Transport {
                id: ObjectId::default(),
                rank: endpoint.rank(),
                source,
            })?;
        Ok(ObjectServer {
            arena: arena.clone(),
            served,
        })
    }

    /// The arena served.
    pub fn arena(&self) -> &NodeArena {
        &self.arena
    }

    /// Chunks of object data this server has sent so far (error replies
    /// not counted).
    pub fn chunks_served(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }
}

/// Answers one chunk request; true when it sent the chunk's data.
fn serve(ep: &Endpoint, arena: &NodeArena, message: Message) -> bool {
    let src = message.src;
    let request = match ChunkRequest::decode(&message.data) {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(peer = src, "malformed object chunk request ignored: {e}");
            return false;
        }
    };
    let range = request.offset as usize..(request.offset + request.len) as usize;
    let mut data = false;
    let result = match arena.get(request.id) {
        Ok(Some(view)) if view.len() as u64 == request.object_len => {
            data = true;
            ep.send(src, request.reply_tag, &view[range])
        }
        Ok(Some(view)) => ep.send(
            src,
            request.reply_tag,
            &error_reply(
                &format!(
                    "object {} has {} bytes here, the request says {}",
                    request.id,
                    view.len(),
                    request.object_len
                ),
                request.len,
            ),
        ),
        Ok(None) => ep.send(
            src,
            request.reply_tag,
            &error_reply(
                &format!("object {} is not in rank {}'s arena", request.id, ep.rank()),
                request.len,
            ),
        ),
        Err(e) => ep.send(
            src,
            request.reply_tag,
            &error_reply(&e.to_string(), request.len),
        ),
    };
    match result {
        Ok(()) => data,
        Err(e) => {
            tracing::warn!(peer = src, object = %request.id, "could not answer a chunk request: {e}");
            false
        }
    }
}

static PULL_SEQUENCE: AtomicU64 = AtomicU64::new(1);

/// Pulls object `id` of `len` bytes from rank `from` (which runs an
/// [`ObjectServer`]) into `arena`, keeping `options.window` chunk requests of
/// `options.chunk_bytes` outstanding and copying each chunk straight into the
/// new object; seals it and returns a pinned view. If `id` is already sealed
/// (or spilled) here, returns it without any transfer; if another process of
/// the node is creating it right now (a concurrent pull), waits for its seal.
pub fn pull(
    arena: &NodeArena,
    endpoint: &Endpoint,
    from: Rank,
    id: ObjectId,
    len: u64,
    options: &PullOptions,
) -> Result<ObjectView, ObjectStoreError> {
    if let Some(view) = arena.get(id)? {
        return Ok(view);
    }
    let transport = |source: TransportError| ObjectStoreError::Transport {
        id,
        rank: from,
        source,
    };
    let chunk = options.chunk_bytes.max(1);
    let chunks = len.div_ceil(chunk);
    if chunks > u64::from(u32::MAX) {
        return Err(ObjectStoreError::InvalidOptions(format!(
            "pulling {len} bytes in chunks of {chunk} needs more than 2^32 chunks; raise chunk_bytes"
        )));
    }
    let mut writer = match arena.create_object(id, len) {
        Ok(w) => w,
        Err(ObjectStoreError::AlreadyExists { .. }) => {
            // Another rank of this node is pulling (or writing) it: wait for its seal.
            return wait_for_other_writer(arena, endpoint, from, id, len, options);
        }
        Err(e) => return Err(e),
    };
    let sequence = PULL_SEQUENCE.fetch_add(1, Ordering::Relaxed);
    let chunk_range = |i: u64| {
        let offset = i * chunk;
        (offset, chunk.min(len - offset))
    };
    let request = |i: u64| -> Result<(), ObjectStoreError> {
        let (offset, n) = chunk_range(i);
        let message = ChunkRequest {
            id,
            object_len: len,
            offset,
            len: n,
            reply_tag: reply_tag(sequence, i),
        };
        endpoint
            .send(from, PULL_REQUEST_TAG, &message.encode())
            .map_err(transport)
    };
    let window = u64::from(options.window.max(1)).min(chunks);
    for i in 0..window {
        request(i)?;
    }
    let receive = |i: u64| -> Result<(u64, Vec<u8>), ObjectStoreError> {
        let reply = endpoint
            .recv_timeout(
                Source::Rank(from),
                reply_tag(sequence, i),
                options.chunk_timeout,
            )
            .map_err(transport)?;
        let (offset, n) = chunk_range(i);
        if reply.data.len() as u64 != n {
            let text = String::from_utf8_lossy(&reply.data);
            let detail = text
                .strip_prefix(std::str::from_utf8(ERROR_PREFIX).unwrap_or_default())
                .map(str::to_owned)
                .unwrap_or_else(|| {
                    format!(
                        "chunk {i} arrived with {} bytes, expected {n}",
                        reply.data.len()
                    )
                });
            return Err(ObjectStoreError::PullRefused {
                id,
                rank: from,
                detail,
            });
        }
        if i + window < chunks {
            request(i + window)?;
        }
        Ok((offset, reply.data))
    };
    if options.copy_thread && chunks > 1 {
        // The receiving thread keeps the wire busy while a helper copies the
        // previous chunk into the arena.
        let base = writer.as_mut_ptr() as usize;
        std::thread::scope(|scope| -> Result<(), ObjectStoreError> {
            let (tx, rx) = std::sync::mpsc::sync_channel::<(u64, Vec<u8>)>(window as usize);
            let copier = scope.spawn(move || {
                for (offset, data) in rx {
                    // SAFETY: chunks are disjoint ranges inside the writer's
                    // `len` bytes (checked against `chunk_range` on receipt);
                    // the writer outlives this scope and nobody else touches
                    // its bytes until it is sealed after the scope.
                    unsafe {
                        std::ptr::copy_nonoverlapping(
                            data.as_ptr(),
                            (base + offset as usize) as *mut u8,
                            data.len(),
                        );
                    }
                }
            });
            let mut result = Ok(());
            for i in 0..chunks {
                match receive(i) {
                    Ok(chunk) => {
                        if tx.send(chunk).is_err() {
                            break; // the copier died: its panic surfaces at join
                        }
                    }
                    Err(e) => {
                        result = Err(e);
                        break;
                    }
                }
            }
            drop(tx);
            if copier.join().is_err() {
                return Err(ObjectStoreError::PullRefused {
                    id,
                    rank: from,
                    detail: "the local copy thread panicked".into(),
                });
            }
            result
        })?;
    } else {
        for i in 0..chunks {
            let (offset, data) = receive(i)?;
            writer[offset as usize..offset as usize + data.len()].copy_from_slice(&data);
        }
    }
    let view = writer.seal_and_get()?;
    if options.evictable {
        arena.set_evictable(id, true);
    }
    Ok(view)
}

fn wait_for_other_writer(
    arena: &NodeArena,
    endpoint: &Endpoint,
    from: Rank,
    id: ObjectId,
    len: u64,
    options: &PullOptions,
) -> Result<ObjectView, ObjectStoreError> {
    let start = std::time::Instant::now();
    loop {
        if let Some(view) = arena.get(id)? {
            return Ok(view);
        }
        if arena.state(id).is_none() {
            // The other writer gave up (its pull failed): try ourselves.
            return pull(arena, endpoint, from, id, len, options);
        }
        if start.elapsed() > options.chunk_timeout {
            return Err(ObjectStoreError::PullRefused {
                id,
                rank: from,
                detail: format!(
                    "another process of this node has been writing the object for {:?}                      without sealing it",
                    options.chunk_timeout
                ),
            });
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_round_trip_and_bad_input() {
        let r = ChunkRequest {
            id: ObjectId::new(7, 9),
            object_len: 100,
            offset: 40,
            len: 60,
            reply_tag: reply_tag(5, 3),
        };
        assert_eq!(ChunkRequest::decode(&r.encode()).unwrap(), r);
        assert!(ChunkRequest::decode(&r.encode()[..55]).is_err());
        let mut bad = r.encode();
        bad[0] = 9;
        assert!(ChunkRequest::decode(&bad).is_err());
        let beyond = ChunkRequest { len: 61, ..r };
        assert!(ChunkRequest::decode(&beyond.encode()).is_err());
        let empty = ChunkRequest { len: 0, ..r };
        assert!(ChunkRequest::decode(&empty.encode()).is_err());
        let overflow = ChunkRequest {
            offset: u64::MAX,
            ..r
        };
        assert!(ChunkRequest::decode(&overflow.encode()).is_err());
        assert_eq!(reply_tag(5, 3) >> 60, 0xB);
    }

    #[test]
    fn error_reply_never_has_the_chunk_length() {
        for n in 0..200u64 {
            assert_ne!(error_reply("x", n).len() as u64, n);
        }
    }
}
