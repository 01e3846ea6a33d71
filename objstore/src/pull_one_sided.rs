//! Pulling an object between nodes with one-sided reads, on whichever
//! backend moves them ([`lumen_transport::fabric::OneSided`]: verbs,
//! libfabric, or the emulated TCP one): the puller reads the owner's arena block directly into its own
//! new block — no copy at the owner, no chunk request per 8 MiB.
//!
//! ```text
//!  puller (rank P)                                   owner (rank S)
//!  create_object(id, len) in its arena
//!  PinRequest(id, len, seq) ───────────────────────► handler on PIN_REQUEST_TAG:
//!                                                      get(id) pins the block, keeps
//!  ◄──────────────────────────── (offset, len) ───── the view, replies its offset
//!  fabric read of len bytes at offset of S's registered arena,
//!  straight into the new block (one copy, by the NIC or the provider)
//!  Unpin(id, seq) ─────────────────────────────────► drops the view
//!  seal_and_get → ObjectView
//! ```
//!
//! The owner registers its whole arena mapping with its fabric endpoint once
//! ([`OneSidedServer::register`]); the puller's arena mapping is registered
//! with its own, so the read lands in place (zero copies beyond the
//! transfer itself). Each side's [`lumen_transport::fabric::RemoteKey`] and
//! fabric address travel over the control plane (the runtime's hello at
//! bootstrap; a test's messages).
//!
//! A pin whose puller never unpins (it died) is dropped after
//! [`PIN_LEASE`], so a dead puller cannot hold an object forever; a pull
//! takes far less than that or fails with a timeout first.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lumen_transport::fabric::{OneSided, RemoteKey};
use lumen_transport::{Endpoint, Message, Rank, Source};

use crate::pull::OBJECT_TAG_BASE;
use crate::{NodeArena, ObjectId, ObjectStoreError, ObjectView};

/// Tag of pin requests (served by [`OneSidedServer`]'s handler).
pub const PIN_REQUEST_TAG: u64 = OBJECT_TAG_BASE | 2;
/// Tag of unpin messages.
pub const UNPIN_TAG: u64 = OBJECT_TAG_BASE | 3;
/// Pin replies: `PIN_REPLY_BASE | (sequence & 0xffff_ffff)`.
const PIN_REPLY_BASE: u64 = 0xB200_0000_0000_0000;
/// How long an owner keeps a pin its puller never released.
pub const PIN_LEASE: Duration = Duration::from_secs(300);
const REQUEST_LEN: usize = 40;
const REPLY_LEN: usize = 24;

/// Where an owner's arena is reachable: its index among this process's
/// fabric peers and its arena's key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OneSidedSource {
    /// The owner's rank (its control messages: pin and unpin).
    pub rank: Rank,
    /// The owner, as [`OneSided::insert_peer`] numbered it.
    pub peer: usize,
    /// Its arena mapping's key.
    pub key: RemoteKey,
}

type Pins = HashMap<(Rank, u64), (ObjectView, Instant)>;

/// Serves pin requests for objects of the local arena, whose mapping it
/// registers with the fabric endpoint.
#[derive(Debug)]
pub struct OneSidedServer {
    key: RemoteKey,
    pins: Arc<Mutex<Pins>>,
    served: Arc<AtomicU64>,
}

pub(crate) fn encode_request(id: ObjectId, len: u64, seq: u64) -> [u8; REQUEST_LEN] {
    let mut out = [0u8; REQUEST_LEN];
    out[0..4].copy_from_slice(&1u32.to_le_bytes());
    out[8..24].copy_from_slice(&id.to_bytes());
    out[24..32].copy_from_slice(&len.to_le_bytes());
    out[32..40].copy_from_slice(&seq.to_le_bytes());
    out
}

pub(crate) fn decode_request(bytes: &[u8]) -> Result<(ObjectId, u64, u64), String> {
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
    Ok((ObjectId::from_bytes(id), word(24), word(32)))
}

impl OneSidedServer {
    /// Registers `arena`'s mapping with `fabric` and the pin handlers on
    /// `endpoint`. The arena stays mapped for the life of the endpoint (the
    /// handlers hold it), as the registration requires.
    pub fn register(
        endpoint: &Endpoint,
        arena: &NodeArena,
        fabric: &dyn OneSided,
    ) -> Result<Self, ObjectStoreError> {
        let (start, len) = arena.mapping();
        // SAFETY: the mapping stays valid while a clone of `arena` lives;
        // the handlers below keep one for the endpoint's life, and the
        // fabric endpoint's registrations end when it drops.
        let region = unsafe { fabric.register(start.cast_mut(), len) }.map_err(|e| {
            ObjectStoreError::Fabric {
                id: ObjectId::default(),
                rank: endpoint.rank(),
                detail: format!("registering arena {}: {e}", arena.name()),
            }
        })?;
        let pins: Arc<Mutex<Pins>> = Arc::default();
        let served = Arc::new(AtomicU64::new(0));
        let (held, count, served_arena) = (pins.clone(), served.clone(), arena.clone());
        let transport = |source| ObjectStoreError::Transport {
            id: ObjectId::default(),
            rank: endpoint.rank(),
            source,
        };
        endpoint
            .register_handler(
                PIN_REQUEST_TAG,
                Arc::new(move |ep: &Endpoint, message: Message| {
                    if pin(ep, &served_arena, &held, message) {
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                }),
            )
            .map_err(transport)?;
        let held = pins.clone();
        endpoint
            .register_handler(
                UNPIN_TAG,
                Arc::new(move |_: &Endpoint, message: Message| {
                    if let Ok((_, _, seq)) = decode_request(&message.data) {
                        held.lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .remove(&(message.src, seq));
                    }
                }),
            )
            .map_err(transport)?;
        Ok(OneSidedServer {
            key: region.key,
            pins,
            served,
        })
    }

    /// The arena mapping's key, for pullers ([`OneSidedSource::key`]).
    pub fn key(&self) -> RemoteKey {
        self.key
    }

    /// Objects pinned for pullers now.
    pub fn pinned(&self) -> usize {
        self.pins.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Pin requests answered with an object so far.
    pub fn served(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }
}

/// Answers one pin request; true when it pinned an object.
fn pin(ep: &Endpoint, arena: &NodeArena, pins: &Mutex<Pins>, message: Message) -> bool {
    let src = message.src;
    let (id, len, seq) = match decode_request(&message.data) {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(peer = src, "malformed pin request ignored: {e}");
            return false;
        }
    };
    let reply_tag = PIN_REPLY_BASE | (seq & 0xffff_ffff);
    let (start, _) = arena.mapping();
    let (reply, pinned) = match arena.get(id) {
        Ok(Some(view)) if view.len() as u64 == len => {
            let offset = view.as_ptr() as u64 - start as u64;
            let mut out = vec![0u8; REPLY_LEN];
            out[8..16].copy_from_slice(&offset.to_le_bytes());
            out[16..24].copy_from_slice(&len.to_le_bytes());
            let mut held = pins.lock().unwrap_or_else(|p| p.into_inner());
            held.retain(|_, (_, at)| at.elapsed() < PIN_LEASE);
            held.insert((src, seq), (view, Instant::now()));
            (out, true)
        }
        Ok(Some(view)) => (
            format!(
                "object {id} has {} bytes here, the request says {len}",
                view.len()
            )
            .into_bytes(),
            false,
        ),
        Ok(None) => (
            format!("object {id} is not in rank {}'s arena", ep.rank()).into_bytes(),
            false,
        ),
        Err(e) => (e.to_string().into_bytes(), false),
    };
    if let Err(e) = ep.send(src, reply_tag, &reply) {
        tracing::warn!(peer = src, object = %id, "could not answer a pin request: {e}");
        pins.lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(src, seq));
        return false;
    }
    pinned
}

static PIN_SEQUENCE: AtomicU64 = AtomicU64::new(1);

/// Pulls object `id` of `len` bytes from the rank of `source` (which runs a
/// [`OneSidedServer`], reachable as `source` on `fabric`) into `arena` with
/// one one-sided read; seals it and returns a pinned view. A local copy is
/// returned without any transfer. Fails within `timeout` when the owner
/// stops answering.
pub fn pull_one_sided(
    arena: &NodeArena,
    endpoint: &Endpoint,
    fabric: &dyn OneSided,
    source: &OneSidedSource,
    id: ObjectId,
    len: u64,
    timeout: Duration,
) -> Result<ObjectView, ObjectStoreError> {
    if let Some(view) = arena.get(id)? {
        return Ok(view);
    }
    let from = source.rank;
    let transport = |source| ObjectStoreError::Transport {
        id,
        rank: from,
        source,
    };
    let mut writer = arena.create_object(id, len)?;
    let seq = PIN_SEQUENCE.fetch_add(1, Ordering::Relaxed);
    let request = encode_request(id, len, seq);
    endpoint
        .send(from, PIN_REQUEST_TAG, &request)
        .map_err(transport)?;
    let reply = endpoint
        .recv_timeout(
            Source::Rank(from),
            PIN_REPLY_BASE | (seq & 0xffff_ffff),
            timeout,
        )
        .map_err(transport)?;
    if reply.data.len() != REPLY_LEN {
        return Err(ObjectStoreError::PullRefused {
            id,
            rank: from,
            detail: String::from_utf8_lossy(&reply.data).into_owned(),
        });
    }
    let mut word = [0u8; 8];
    word.copy_from_slice(&reply.data[8..16]);
    let offset = u64::from_le_bytes(word);
    let read = fabric.read(source.peer, &source.key, offset, &mut writer, timeout);
    // The owner's pin goes either way (a failed read leaves nothing here).
    let _ = endpoint.send(from, UNPIN_TAG, &request);
    read.map_err(|e| ObjectStoreError::Fabric {
        id,
        rank: from,
        detail: e.to_string(),
    })?;
    writer.seal_and_get()
}
