//! Large messages to other nodes as one-sided reads by the receiver: the
//! rendezvous of RDMA-capable MPIs, over whichever backend the rank opened
//! ([`crate::fabric::OneSided`]: verbs, libfabric, or the emulated TCP one).
//!
//! ```text
//!  sender (send of N >= min_bytes bytes)          receiver
//!  register the buffer (unless inside a
//!  registered region already)
//!  RTS(tag, cookie, N, key) ────────────────────► queued by delivery; the next
//!                                                 top-level progress reads N bytes
//!                                                 at key straight into a new buffer
//!                                                 (one copy, by the NIC), delivers
//!                                                 the message under `tag`
//!  ◄──────────────────────────────── FIN(cookie, ok)
//!  deregister, return
//! ```
//!
//! The sender's thread waits in `send` until the FIN (driving progress,
//! so two ranks sending each other large messages read each other's), so
//! later messages of that thread arrive after this one: per-pair order
//! holds. A read that fails (the fabric refused it, the backend has no
//! route) comes back as a failed FIN, and the sender then sends the same
//! bytes over the TCP path: nothing is lost, it is only slower (counted in
//! [`RendezvousStats::fallbacks`], logged). A receiver that dies is
//! reported by the transport's peer watch, as for any send.
//!
//! # Trust
//! For the transfer's duration the sender's buffer is registered with the
//! backend's ordinary registration, which lets the job's peers read (and,
//! at the fabric level, write) it. Keys carry the job and are checked by
//! every backend, so a peer of another job is refused; a rank of this job
//! running Lumen only ever reads a rendezvous key.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crate::error::TransportError;
use crate::fabric::{OneSided, RemoteKey};
use crate::types::{Message, Rank, Source, RESERVED_TAGS};

use super::shared::lock;
use super::Endpoint;

/// Tags of the rendezvous: bit 47 set, beside the barrier's (below bit 40).
const RDMA_TAGS: u64 = RESERVED_TAGS | (1 << 47);
/// Ready-to-send records (intercepted by delivery, never in the mailbox).
pub(crate) const RDMA_RTS_TAG: u64 = RDMA_TAGS | (1 << 40);
/// Finish records: `RDMA_FIN_BASE | (cookie & 0xffff_ffff)`.
const RDMA_FIN_BASE: u64 = RDMA_TAGS | (2 << 40);
const RTS_LEN: usize = 24 + RemoteKey::BYTES;
/// How long the receiver's read may take (the sender waits for the FIN
/// for as long as the receiver lives).
const RDMA_TIMEOUT: Duration = Duration::from_secs(120);

/// Where large messages to other nodes go as one-sided reads.
#[derive(Debug, Clone)]
pub struct FabricRoute {
    /// The backend (shared with the object store's pulls).
    pub backend: Arc<dyn OneSided>,
    /// Each reachable rank's peer index on `backend`.
    pub peers: HashMap<Rank, usize>,
    /// Messages of at least this many bytes take the one-sided path
    /// (`usize::MAX`: none; the route then serves [`Endpoint::fabric_read`]
    /// and [`Endpoint::fabric_write`] only).
    pub min_bytes: usize,
}

/// Counters of the one-sided rendezvous.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RendezvousStats {
    /// Messages this rank sent as one-sided reads.
    pub sent: u64,
    /// Messages this rank received by reading the sender's buffer.
    pub received: u64,
    /// Sends whose read failed and went over TCP instead.
    pub fallbacks: u64,
}

/// A decoded ready-to-send record.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Rts {
    tag: u64,
    cookie: u64,
    len: u64,
    key: RemoteKey,
}

impl Rts {
    fn encode(&self) -> [u8; RTS_LEN] {
        let mut out = [0u8; RTS_LEN];
        out[0..8].copy_from_slice(&self.tag.to_le_bytes());
        out[8..16].copy_from_slice(&self.cookie.to_le_bytes());
        out[16..24].copy_from_slice(&self.len.to_le_bytes());
        out[24..].copy_from_slice(&self.key.to_bytes());
        out
    }

    /// From the network: checked, never trusted.
    pub(crate) fn decode(bytes: &[u8]) -> Result<Self, String> {
        if bytes.len() != RTS_LEN {
            return Err(format!(
                "{} bytes where a ready-to-send has {RTS_LEN}",
                bytes.len()
            ));
        }
        let word = |at: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&bytes[at..at + 8]);
            u64::from_le_bytes(w)
        };
        let key = RemoteKey::from_bytes(&bytes[24..]).map_err(|e| e.to_string())?;
        Ok(Rts {
            tag: word(0),
            cookie: word(8),
            len: word(16),
            key,
        })
    }
}

fn fin_tag(cookie: u64) -> u64 {
    RDMA_FIN_BASE | (cookie & 0xffff_ffff)
}

/// A zeroed buffer of `len` bytes, or why not (a length from the network
/// must not abort the process): `alloc_zeroed` maps fresh zero pages for
/// large sizes, so nothing is written before the read fills it.
fn zeroed(len: usize) -> Result<Vec<u8>, String> {
    if len == 0 {
        return Ok(Vec::new());
    }
    let layout = std::alloc::Layout::array::<u8>(len).map_err(|e| e.to_string())?;
    // SAFETY: `layout` has a non-zero size (len > 0).
    let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
    if ptr.is_null() {
        return Err(format!("could not allocate {len} bytes for the message"));
    }
    // SAFETY: `ptr` was allocated by the global allocator with the layout of
    // `len` bytes of u8 (align 1), and every byte is initialised (zeroed).
    Ok(unsafe { Vec::from_raw_parts(ptr, len, len) })
}

impl Endpoint {
    /// Sends messages of at least `route.min_bytes` bytes to the ranks of
    /// `route.peers` as one-sided reads by the receiver (see the module
    /// docs). Set once, after the ranks have exchanged fabric addresses.
    pub fn attach_fabric(&self, route: FabricRoute) -> Result<(), TransportError> {
        if route.min_bytes == usize::MAX {
            tracing::info!(
                rank = self.shared.rank,
                "transport: {} ranks of other nodes reachable one-sided over {}; messages stay on TCP",
                route.peers.len(),
                route.backend.describe()
            );
        } else {
            tracing::info!(
                rank = self.shared.rank,
                "transport: messages of {} bytes or more to {} ranks of other nodes go as one-sided reads over {}",
                route.min_bytes,
                route.peers.len(),
                route.backend.describe()
            );
        }
        self.shared.fabric.set(route).map_err(|_| {
            TransportError::PeerTable("a fabric is attached to this endpoint already".into())
        })
    }

    /// The one-sided backend attached with [`Endpoint::attach_fabric`].
    pub fn fabric(&self) -> Option<&Arc<dyn OneSided>> {
        self.shared.fabric.get().map(|route| &route.backend)
    }

    /// Reads `local.len()` bytes at `offset` of rank `rank`'s region `key`
    /// through the attached fabric (the one-sided API by rank; keys travel
    /// in the application's own messages).
    pub fn fabric_read(
        &self,
        rank: Rank,
        key: &RemoteKey,
        offset: u64,
        local: &mut [u8],
        timeout: Duration,
    ) -> Result<(), TransportError> {
        let (route, peer) = self.fabric_peer(rank)?;
        route
            .backend
            .read(peer, key, offset, local, timeout)
            .map_err(|e| TransportError::Fabric {
                rank,
                detail: e.to_string(),
            })
    }

    /// Writes `local` at `offset` of rank `rank`'s region `key` through
    /// the attached fabric; returns once the bytes are in its memory.
    pub fn fabric_write(
        &self,
        rank: Rank,
        key: &RemoteKey,
        offset: u64,
        local: &[u8],
        timeout: Duration,
    ) -> Result<(), TransportError> {
        let (route, peer) = self.fabric_peer(rank)?;
        route
            .backend
            .write(peer, key, offset, local, timeout)
            .map_err(|e| TransportError::Fabric {
                rank,
                detail: e.to_string(),
            })
    }

    fn fabric_peer(&self, rank: Rank) -> Result<(&FabricRoute, usize), TransportError> {
        self.check_rank(rank)?;
        let route = self
            .shared
            .fabric
            .get()
            .ok_or_else(|| TransportError::Fabric {
                rank,
                detail: format!(
                    "rank {} has no fabric attached (Endpoint::attach_fabric; LUMEN_FABRIC)",
                    self.shared.rank
                ),
            })?;
        let peer = *route
            .peers
            .get(&rank)
            .ok_or_else(|| TransportError::Fabric {
                rank,
                detail: format!(
                    "rank {} has no route to it on {} (same node, or a backend it does not offer)",
                    self.shared.rank,
                    route.backend.describe()
                ),
            })?;
        Ok((route, peer))
    }

    /// Counters of the one-sided rendezvous.
    pub fn rendezvous_stats(&self) -> RendezvousStats {
        let s = &self.shared.rdma_stats;
        RendezvousStats {
            sent: s[0].load(Ordering::Relaxed),
            received: s[1].load(Ordering::Relaxed),
            fallbacks: s[2].load(Ordering::Relaxed),
        }
    }

    /// The one-sided path for a send to a rank of another node, when it
    /// applies (`None`: the caller sends over TCP).
    pub(super) fn send_rdma(
        &self,
        dst: Rank,
        tag: u64,
        data: &[u8],
    ) -> Option<Result<(), TransportError>> {
        let route = self.shared.fabric.get()?;
        if data.len() < route.min_bytes || data.is_empty() || tag >= RESERVED_TAGS {
            return None;
        }
        route.peers.get(&dst)?;
        Some(self.send_rdma_to(route, dst, tag, data))
    }

    fn send_rdma_to(
        &self,
        route: &FabricRoute,
        dst: Rank,
        tag: u64,
        data: &[u8],
    ) -> Result<(), TransportError> {
        let shared = &*self.shared;
        let backend = &route.backend;
        let ours = !backend.registered(data.as_ptr(), data.len());
        // SAFETY: `data` stays borrowed, so allocated, until this function
        // returns, and a registration made here is removed before that
        // (after the receiver's FIN, its death, or the timeout; a read still
        // in flight then fails at the target, it never writes here). Peers
        // of this job only read a rendezvous key (module docs, "Trust").
        let region = match unsafe { backend.register(data.as_ptr().cast_mut(), data.len()) } {
            Ok(region) => region,
            Err(e) => {
                tracing::debug!(
                    "rendezvous to rank {dst}: registering the buffer failed ({e}); over TCP"
                );
                return self.send_tcp(dst, tag, data);
            }
        };
        let cookie = shared.rdma_cookie.fetch_add(1, Ordering::Relaxed);
        let rts = Rts {
            tag,
            cookie,
            len: data.len() as u64,
            key: region.key,
        };
        let sent = self.send_tcp(dst, RDMA_RTS_TAG, &rts.encode());
        // No timeout: a sender that gave up while its ready-to-send is
        // still queued at the receiver would see its message delivered
        // later (after its next ones, from a buffer it reuses). The wait
        // ends with the FIN, or with the receiver's death (peer watch).
        let fin = sent.and_then(|()| self.recv_inner(Source::Rank(dst), fin_tag(cookie), None));
        if ours {
            backend.deregister(data.as_ptr());
        }
        let fin = fin?;
        if fin.data.first() == Some(&0) {
            shared.rdma_stats[0].fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        let why = String::from_utf8_lossy(fin.data.get(1..).unwrap_or_default()).into_owned();
        tracing::warn!(
            rank = shared.rank,
            "one-sided rendezvous to rank {dst} failed ({why}); sending the {} bytes over TCP",
            data.len()
        );
        shared.rdma_stats[2].fetch_add(1, Ordering::Relaxed);
        self.send_tcp(dst, tag, data)
    }

    /// Serves queued ready-to-sends: reads each message, delivers it, and
    /// answers its sender (top-level progress only).
    pub(super) fn serve_rdma(&self) -> bool {
        let mut served = false;
        loop {
            let next = lock(&self.shared.rdma_pending).pop_front();
            let Some((src, rts)) = next else {
                return served;
            };
            served = true;
            let answer = match self.read_rts(src, &rts) {
                Ok(data) => {
                    self.shared.deliver(Message {
                        src,
                        tag: rts.tag,
                        data,
                    });
                    self.shared.rdma_stats[1].fetch_add(1, Ordering::Relaxed);
                    vec![0u8]
                }
                Err(why) => {
                    let mut answer = vec![1u8];
                    answer.extend_from_slice(why.as_bytes());
                    answer
                }
            };
            if let Err(e) = self.send_tcp(src, fin_tag(rts.cookie), &answer) {
                tracing::warn!("rendezvous: answering rank {src}: {e}");
            }
        }
    }

    fn read_rts(&self, src: Rank, rts: &Rts) -> Result<Vec<u8>, String> {
        if rts.tag >= RESERVED_TAGS {
            return Err(format!("tag {:#x} is reserved", rts.tag));
        }
        let route = self
            .shared
            .fabric
            .get()
            .ok_or_else(|| format!("rank {} has no fabric attached", self.shared.rank))?;
        let &peer = route.peers.get(&src).ok_or_else(|| {
            format!(
                "rank {} has no fabric route to rank {src}",
                self.shared.rank
            )
        })?;
        let len = usize::try_from(rts.len).map_err(|e| e.to_string())?;
        let mut data = zeroed(len)?;
        // Registered in place for the read (the NIC writes straight into
        // it; unregistered memory would cost a bounce buffer and a copy).
        let backend = &route.backend;
        // SAFETY: `data` is ours, alive until after the deregistration
        // below, and read into only by this transfer.
        let ours = !backend.registered(data.as_ptr(), len)
            && unsafe { backend.register(data.as_mut_ptr(), len) }.is_ok();
        let read = backend.read(peer, &rts.key, 0, &mut data, RDMA_TIMEOUT);
        if ours {
            backend.deregister(data.as_ptr());
        }
        if let Err(e) = read {
            if ours && matches!(e, crate::fabric::FabricError::Timeout { .. }) {
                // The provider may still hold the timed-out operation and
                // write into the buffer: it is never freed (a bounded leak,
                // on this failure only).
                std::mem::forget(data);
            }
            return Err(format!("rank {} reading it: {e}", self.shared.rank));
        }
        Ok(data)
    }

    /// A send over the TCP path to a rank of another node (no rendezvous).
    fn send_tcp(&self, dst: Rank, tag: u64, data: &[u8]) -> Result<(), TransportError> {
        self.send_remote(dst, tag, data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_to_sends_round_trip_and_bad_ones_are_refused() {
        let rts = Rts {
            tag: 7,
            cookie: 9,
            len: 1 << 30,
            key: RemoteKey {
                job: 1,
                base: 2,
                len: 1 << 30,
                key: 3,
            },
        };
        let back = Rts::decode(&rts.encode()).expect("decodes");
        assert_eq!(
            (back.tag, back.cookie, back.len, back.key),
            (7, 9, 1 << 30, rts.key)
        );
        assert!(Rts::decode(&[0u8; 10]).is_err());
        assert!(fin_tag(u64::MAX) >= RESERVED_TAGS && fin_tag(1) != RDMA_RTS_TAG);
        assert!(
            zeroed(usize::MAX).is_err(),
            "a length from the network never aborts"
        );
        assert_eq!(zeroed(3).expect("small"), vec![0, 0, 0]);
    }
}
