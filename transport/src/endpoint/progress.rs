//! One round of progress: drain the incoming shared-memory rings (eager
//! records, rendezvous pulls, chunk reassembly), read TCP connections that
//! no other thread is reading, run queued active-message handlers, and
//! answer one-sided gets.
//!
//! Invariant: handlers and gets run only at top level (`top_level`), never
//! inside a send loop, where they could re-enter a ring this thread holds.

use std::sync::atomic::Ordering;

use crate::error::{io_err, TransportError};
use crate::frame::{FrameHeader, FrameKind};
use crate::shm::NodeSegment;
use crate::sys::read_process_memory_vec;
use crate::types::{Message, Route, Source, PEER_DEAD};
use crate::wire::{GetGrantMsg, GetRequestMsg, ReadyToSendMsg};

use super::shared::{lock, ConsumerState};
use super::Endpoint;

impl Endpoint {
    /// Polls for incoming data once; runs handlers and serves gets.
    /// Returns true when anything happened.
    pub fn progress(&self) -> Result<bool, TransportError> {
        self.progress_inner(true)
    }

    /// `top_level` is false inside send loops, where running handlers or
    /// answering gets (which send) could re-enter a ring this thread holds.
    pub(super) fn progress_inner(&self, top_level: bool) -> Result<bool, TransportError> {
        self.progress_wanting(top_level, None)
            .map(|(progressed, _)| progressed)
    }

    /// One round of progress. With `want`, a ring message that matches it while
    /// nothing older could match (the mailbox is empty, no handlers) is
    /// returned directly instead of going through the mailbox, and the round
    /// stops there.
    pub(super) fn progress_wanting(
        &self,
        top_level: bool,
        want: Option<(Source, u64)>,
    ) -> Result<(bool, Option<Message>), TransportError> {
        let shared = &*self.shared;
        let mut progressed = false;
        if let (Some(seg), Ok(mut consumer)) = (&shared.segment, shared.consumer.try_lock()) {
            for from in 0..seg.local_size() {
                if from == shared.my_local {
                    continue;
                }
                let mut budget = 64;
                while budget > 0 && seg.has_record(from, shared.my_local) {
                    budget -= 1;
                    let popped = seg.pop(from, shared.my_local, u32::MAX, |header, payload| {
                        self.handle_ring_record(&mut consumer, seg, from, header, payload, want)
                    });
                    match popped {
                        Ok(Some(Some(message))) => return Ok((true, Some(message))),
                        Ok(_) => progressed = true,
                        Err(e) => {
                            let rank = shared.local_ranks[from];
                            shared.mark_peer(
                                rank,
                                PEER_DEAD,
                                format!("its ring to rank {} is unusable: {e}", shared.rank),
                            );
                            break;
                        }
                    }
                }
            }
        }
        progressed |= shared.tcp_readers.poll(shared);
        if top_level {
            progressed |= self.run_handlers();
            progressed |= self.serve_gets();
            progressed |= self.serve_rdma();
        }
        Ok((progressed, None))
    }

    pub(super) fn handle_ring_record(
        &self,
        consumer: &mut ConsumerState,
        seg: &NodeSegment,
        from: usize,
        header: FrameHeader,
        payload: &[u8],
        want: Option<(Source, u64)>,
    ) -> Option<Message> {
        let shared = &*self.shared;
        let src = shared.local_ranks[from];
        match header.kind {
            FrameKind::Data => {
                let slot = &mut consumer.partial[from];
                if !header.more() && slot.is_none() {
                    let message = Message {
                        src,
                        tag: header.tag,
                        data: payload.to_vec(),
                    };
                    let wanted = want.is_some_and(|(want_src, want_tag)| {
                        want_tag == header.tag
                            && (want_src == Source::Any || want_src == Source::Rank(src))
                    });
                    if wanted
                        && shared.mailbox_len.load(Ordering::Acquire) == 0
                        && shared.handler_count.load(Ordering::Acquire) == 0
                    {
                        return Some(message);
                    }
                    shared.deliver(message);
                    return None;
                }
                let limit = shared.config.max_message;
                if header.aux > limit {
                    // Refused before anything is allocated for it.
                    shared.mark_peer(
                        src,
                        PEER_DEAD,
                        format!(
                            "it sent a message of {} bytes, above the limit of {limit} (LUMEN_MAX_MESSAGE_BYTES)",
                            header.aux
                        ),
                    );
                    *slot = None;
                    return None;
                }
                let reserve = header.aux.min(payload.len().max(1) as u64 * 64) as usize;
                let (_, buffer) =
                    slot.get_or_insert_with(|| (header.tag, Vec::with_capacity(reserve)));
                buffer.extend_from_slice(payload);
                if !header.more() {
                    if let Some((tag, data)) = slot.take() {
                        shared.deliver(Message { src, tag, data });
                    }
                }
            }
            FrameKind::ReadyToSend => {
                let result = ReadyToSendMsg::decode(payload)
                    .map_err(|e| e.to_string())
                    .and_then(|rts| {
                        if rts.len > shared.config.max_message {
                            return Err(format!(
                                "it announced a message of {} bytes, above the limit of {} (LUMEN_MAX_MESSAGE_BYTES)",
                                rts.len, shared.config.max_message
                            ));
                        }
                        let len = usize::try_from(rts.len).map_err(|e| e.to_string())?;
                        read_process_memory_vec(rts.pid, rts.addr, len)
                            .map_err(|e| format!("single-copy read failed: {e}"))
                    });
                seg.complete(from, shared.my_local);
                seg.notify(from);
                match result {
                    Ok(data) => shared.deliver(Message {
                        src,
                        tag: header.tag,
                        data,
                    }),
                    Err(detail) => shared.mark_peer(src, PEER_DEAD, detail),
                }
            }
            FrameKind::GetRequest => match GetRequestMsg::decode(payload) {
                Ok(request) => shared.queue_get_request(src, request),
                Err(e) => tracing::error!(peer = src, "malformed get request: {e}"),
            },
            FrameKind::GetGrant => match GetGrantMsg::decode(payload) {
                Ok(grant) => {
                    let result = match grant.error {
                        Some(detail) => Err(TransportError::GetFailed { rank: src, detail }),
                        None => read_process_memory_vec(grant.pid, grant.addr, grant.len as usize)
                            .map_err(|e| {
                                let detail = format!("single-copy read failed: {e}");
                                if e.raw_os_error() == Some(libc::ESRCH) {
                                    // The granting process is gone: its death.
                                    shared.mark_peer(src, PEER_DEAD, detail.clone());
                                    TransportError::PeerDied { rank: src, detail }
                                } else {
                                    TransportError::GetFailed { rank: src, detail }
                                }
                            }),
                    };
                    shared.finish_get(grant.request, result);
                }
                Err(e) => tracing::error!(peer = src, "malformed get grant: {e}"),
            },
            other => tracing::error!(
                peer = src,
                "unexpected {other:?} record in shared-memory ring; ignored"
            ),
        }
        None
    }

    pub(super) fn run_handlers(&self) -> bool {
        let mut ran = false;
        loop {
            let next = lock(&self.shared.pending_handlers).pop_front();
            let Some(message) = next else { return ran };
            let handler = self
                .shared
                .handlers
                .read()
                .ok()
                .and_then(|h| h.get(&message.tag).cloned());
            match handler {
                Some(handler) => handler(self, message),
                None => self.shared.mailbox_push(message),
            }
            ran = true;
        }
    }

    pub(super) fn serve_gets(&self) -> bool {
        let mut served = false;
        loop {
            let next = lock(&self.shared.get_requests).pop_front();
            let Some((from, request)) = next else {
                return served;
            };
            served = true;
            let region = self
                .shared
                .regions
                .read()
                .ok()
                .and_then(|r| r.get(&request.region).cloned());
            let range = region.as_ref().and_then(|data| {
                let end = request.offset.checked_add(request.len)?;
                (end <= data.len() as u64).then_some(request.offset as usize..end as usize)
            });
            let error = match (&region, &range) {
                (Some(_), Some(_)) => None,
                _ => Some(
                    TransportError::NoSuchRegion {
                        rank: self.shared.rank,
                        key: request.region,
                        offset: request.offset,
                        len: request.len,
                    }
                    .to_string(),
                ),
            };
            let result = match self.shared.routes.get(from as usize) {
                Some(Route::Local(to)) => {
                    let addr = match (&region, &range) {
                        (Some(data), Some(range)) => data[range.clone()].as_ptr() as u64,
                        _ => 0,
                    };
                    let grant = GetGrantMsg {
                        request: request.request,
                        pid: std::process::id() as i32,
                        addr,
                        len: request.len,
                        error,
                    };
                    let payload = grant.encode();
                    let header = FrameHeader::control(
                        FrameKind::GetGrant,
                        self.shared.rank,
                        payload.len() as u32,
                    );
                    let mut producer = lock(&self.shared.ring_producers[*to]);
                    self.push_record(&mut producer, from, *to, &header, &payload)
                }
                Some(Route::Remote) => self.remote(from).and_then(|peer| {
                    let bytes = match (&region, &range) {
                        (Some(data), Some(range)) => Ok(&data[range.clone()]),
                        _ => Err(error.unwrap_or_default()),
                    };
                    peer.send_get_reply(
                        self.shared.rank,
                        request.request,
                        bytes,
                        self.shared.config.max_frame,
                    )
                    .map_err(io_err(format!("answering a get from rank {from}")))
                }),
                _ => Ok(()),
            };
            if let Err(e) = result {
                tracing::warn!(peer = from, "could not answer a get: {e}");
            }
        }
    }
}
