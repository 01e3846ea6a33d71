//! The sending half of the data path: eager records through the pair's ring
//! (or a TCP connection), rendezvous for large messages on a node (the
//! receiver pulls with `process_vm_readv` while the sender waits), chunked
//! streaming where single-copy reads are refused.

use std::sync::Arc;
use std::time::Duration;

use crate::error::TransportError;
use crate::frame::{FrameHeader, FrameKind, HEADER_LEN};
use crate::tcp::TcpPeer;
use crate::types::{Message, Rank, Route, PEER_DEAD, RESERVED_TAGS};
use crate::wire::ReadyToSendMsg;

use super::shared::{lock, Producer};
use super::waiter::{Waiter, SPIN_DURING_COPY_MAX};
use super::Endpoint;

impl Endpoint {
    /// Sends `data` to `dst` under `tag`. Returns once `data` may be reused:
    /// immediately for eager messages, after the receiver pulled it for large ones.
    pub fn send(&self, dst: Rank, tag: u64, data: &[u8]) -> Result<(), TransportError> {
        if tag >= RESERVED_TAGS {
            return Err(TransportError::ReservedTag(tag));
        }
        self.send_any(dst, tag, data)
    }

    pub(super) fn send_any(&self, dst: Rank, tag: u64, data: &[u8]) -> Result<(), TransportError> {
        self.check_rank(dst)?;
        let shared = &*self.shared;
        if let Some(e) = shared.peer_error(dst) {
            return Err(e);
        }
        if data.len() as u64 > shared.config.max_message {
            return Err(TransportError::MessageTooLarge {
                rank: dst,
                bytes: data.len() as u64,
                limit: shared.config.max_message,
            });
        }
        if let Some(sent) = shared.sent.get(dst as usize) {
            if !sent.load(std::sync::atomic::Ordering::Relaxed) {
                sent.store(true, std::sync::atomic::Ordering::Relaxed);
            }
        }
        match shared.routes[dst as usize] {
            Route::Myself => {
                shared.deliver(Message {
                    src: shared.rank,
                    tag,
                    data: data.to_vec(),
                });
                Ok(())
            }
            Route::Local(to) => self.send_local(dst, to, tag, data),
            Route::Remote => match self.send_rdma(dst, tag, data) {
                Some(result) => result,
                None => self.send_remote(dst, tag, data),
            },
        }
    }

    /// Sends over the TCP connection to `dst` (a rank of another node).
    pub(super) fn send_remote(
        &self,
        dst: Rank,
        tag: u64,
        data: &[u8],
    ) -> Result<(), TransportError> {
        let shared = &*self.shared;
        let peer = self.remote(dst)?;
        peer.send_data(shared.rank, tag, data, shared.config.max_frame)
            .map_err(|e| {
                shared.mark_peer(dst, PEER_DEAD, format!("send failed: {e}"));
                shared.peer_error(dst).unwrap_or(TransportError::Io {
                    context: format!("sending to rank {dst}"),
                    source: e,
                })
            })
    }

    pub(super) fn remote(&self, dst: Rank) -> Result<Arc<TcpPeer>, TransportError> {
        let shared = &*self.shared;
        match shared.tcp_connector.get() {
            Some(connector) => connector.peer(dst).map_err(|e| match e {
                // Connecting on first use failed: the rank is unreachable,
                // which is what a closed connection would have said.
                TransportError::Io { .. } | TransportError::Handshake { .. } => {
                    shared.mark_peer(dst, PEER_DEAD, e.to_string());
                    shared.peer_error(dst).unwrap_or(e)
                }
                other => other,
            }),
            None => Err(TransportError::PeerClosed { rank: dst }),
        }
    }

    /// Pushes one record into ring (me → to), waiting for room. The caller
    /// holds that ring's producer lock (`producer`).
    pub(super) fn push_record(
        &self,
        producer: &mut Producer,
        dst: Rank,
        to: usize,
        header: &FrameHeader,
        payload: &[u8],
    ) -> Result<(), TransportError> {
        let shared = &*self.shared;
        let Some(seg) = &shared.segment else {
            return Err(TransportError::PeerClosed { rank: dst });
        };
        if seg.try_push_cached(shared.my_local, to, header, payload, &mut producer.head) {
            seg.notify(to);
            return Ok(());
        }
        let mut waiter = Waiter::new(shared, None);
        while !seg.try_push_cached(shared.my_local, to, header, payload, &mut producer.head) {
            if let Some(e) = shared.peer_error(dst) {
                return Err(e);
            }
            seg.notify(to);
            // Drain our own rings meanwhile: the peer may be blocked sending to us.
            self.progress_inner(false)?;
            waiter.pause(|| false);
        }
        seg.notify(to);
        Ok(())
    }

    pub(super) fn send_local(
        &self,
        dst: Rank,
        to: usize,
        tag: u64,
        data: &[u8],
    ) -> Result<(), TransportError> {
        let shared = &*self.shared;
        let Some(seg) = &shared.segment else {
            return Err(TransportError::PeerClosed { rank: dst });
        };
        let max_chunk = seg.max_record() - HEADER_LEN;
        let eager = data.len() <= shared.config.eager_limit.min(max_chunk);
        let total = data.len() as u64;
        if eager {
            let mut producer = lock(&shared.ring_producers[to]);
            let header = FrameHeader::data(shared.rank, tag, data.len() as u32, total, false);
            return self.push_record(&mut producer, dst, to, &header, data);
        }
        if shared.single_copy[to] {
            let cookie = {
                let mut producer = lock(&shared.ring_producers[to]);
                producer.cookies += 1;
                let rts = ReadyToSendMsg {
                    cookie: producer.cookies,
                    len: total,
                    pid: std::process::id() as i32,
                    addr: data.as_ptr() as u64,
                };
                let payload = rts.encode();
                let mut header =
                    FrameHeader::control(FrameKind::ReadyToSend, shared.rank, payload.len() as u32);
                header.tag = tag;
                self.push_record(&mut producer, dst, to, &header, &payload)?;
                producer.cookies
            };
            // `data` stays borrowed until the receiver has copied it out. The
            // copy takes about a nanosecond per byte here: spinning that long
            // saves a futex wake-up (~30 us) per message (1 MiB ping-pong:
            // 125 -> 90 us). Above 2 MiB, spinning beside the copy cut 4 MiB
            // bandwidth from 9 to 3.5 GB/s on the 2-core VM, so those sleep.
            let copy_time = Duration::from_nanos(if total > SPIN_DURING_COPY_MAX {
                0
            } else {
                total
            });
            let mut waiter = Waiter::with_spin(shared, shared.config.spin + copy_time, None);
            while seg.completions(shared.my_local, to) < cookie {
                if let Some(e) = shared.peer_error(dst) {
                    return Err(e);
                }
                self.progress_inner(false)?;
                waiter.pause(|| seg.completions(shared.my_local, to) >= cookie);
            }
            return Ok(());
        }
        let mut producer = lock(&shared.ring_producers[to]);
        let mut chunks = data.chunks(max_chunk).peekable();
        while let Some(chunk) = chunks.next() {
            let header = FrameHeader::data(
                shared.rank,
                tag,
                chunk.len() as u32,
                total,
                chunks.peek().is_some(),
            );
            self.push_record(&mut producer, dst, to, &header, chunk)?;
        }
        Ok(())
    }
}
