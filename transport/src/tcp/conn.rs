//! The read side of one connection ([`ConnState`]): bytes in, frames
//! decoded and verified, messages and get replies reassembled and handed to
//! the [`Inbox`]; a bulk lane's chunks are received straight into the
//! striped message's buffer.
//!
//! Invariant: a malformed frame closes only its own connection (logged);
//! only the loss of a rank's primary connection marks that rank dead.

use std::io::{self};
use std::net::TcpStream;
use std::os::fd::{AsRawFd, RawFd};

use crate::error::TransportError;
use crate::frame::{Frame, FrameDecoder, FrameHeader, FrameKind};
use crate::sys::{recv_into_spare, recv_nonblocking};
use crate::types::{Message, Rank, PEER_DEAD, PEER_DEPARTED};
use crate::wire::{self, GetGrantMsg, GetRequestMsg};

use super::Inbox;

/// An authenticated connection handed to the receiver.
pub(crate) struct NewConnection {
    pub(crate) rank: Rank,
    pub(crate) stream: TcpStream,
    pub(crate) primary: bool,
    /// A bulk lane: carries only chunks of striped messages.
    pub(crate) lane: bool,
}

/// Read state of a bulk lane (see [`crate::stripe`]).
#[derive(Default)]
pub(super) struct LaneRead {
    pub(super) header: [u8; crate::frame::HEADER_LEN],
    pub(super) header_filled: usize,
    /// A chunk header whose message is not announced yet.
    pub(super) waiting: Option<FrameHeader>,
    /// The chunk being received: (sequence, destination address, bytes left).
    pub(super) receiving: Option<(u64, usize, usize)>,
}

/// Read-side state of one connection.
pub(crate) struct ConnState {
    pub(crate) rank: Rank,
    pub(crate) primary: bool,
    pub(crate) stream: TcpStream,
    pub(super) decoder: FrameDecoder,
    pub(super) partial_data: Option<(u64, u64, Vec<u8>)>,
    pub(super) partial_get: Option<(u64, Vec<u8>)>,
    pub(super) goodbye: bool,
    pub(super) lane: Option<LaneRead>,
    pub(super) max_frame: u32,
    pub(super) max_message: u64,
}

impl ConnState {
    pub(crate) fn new(conn: NewConnection, max_frame: u32, max_message: u64) -> Self {
        ConnState {
            rank: conn.rank,
            primary: conn.primary,
            stream: conn.stream,
            decoder: FrameDecoder::new(max_frame),
            partial_data: None,
            partial_get: None,
            goodbye: false,
            lane: conn.lane.then(LaneRead::default),
            max_frame,
            max_message,
        }
    }

    pub(crate) fn fd(&self) -> RawFd {
        self.stream.as_raw_fd()
    }

    /// Feeds received bytes; an error means the connection must be closed.
    pub(crate) fn feed(&mut self, shared: &dyn Inbox, bytes: &[u8]) -> Result<(), String> {
        let mut failure = None;
        let mut frames = Vec::new();
        self.decoder
            .feed(bytes, |f| frames.push(f))
            .map_err(|e| e.to_string())?;
        for frame in frames {
            if let Err(e) = self.on_frame(shared, frame) {
                failure = Some(e);
                break;
            }
        }
        failure.map_or(Ok(()), Err)
    }

    /// Reads whatever the socket holds without blocking (at most a bounded
    /// amount, for fairness between connections) and feeds it through the
    /// decoder. Returns whether bytes arrived and, if the connection must be
    /// closed, why.
    pub(super) fn read_available(
        &mut self,
        shared: &dyn Inbox,
        scratch: &mut [u8],
    ) -> (bool, Option<String>) {
        /// Payload bytes still missing above which the socket is read straight into the message.
        const DIRECT_MIN: usize = 16 * 1024;
        /// Bytes per call before yielding to other connections.
        const BUDGET: usize = 8 << 20;
        if self.lane.is_some() {
            return self.read_lane(shared, BUDGET);
        }
        let fd = self.fd();
        let mut got = 0usize;
        while got < BUDGET {
            let direct = match self.decoder.pending_payload() {
                Some((buffer, missing)) if missing >= DIRECT_MIN => {
                    Some(recv_into_spare(fd, buffer, missing))
                }
                _ => None,
            };
            let result = match direct {
                Some(result) => result.map(|n| (n, true)),
                None => recv_nonblocking(fd, scratch).map(|n| (n, false)),
            };
            match result {
                Ok((0, _)) => return (got > 0, Some("closed without a goodbye".into())),
                Ok((n, in_place)) => {
                    got += n;
                    let fed = if in_place {
                        match self.decoder.take_complete() {
                            Some(frame) => self.on_frame(shared, frame),
                            None => Ok(()),
                        }
                    } else {
                        self.feed(shared, &scratch[..n])
                    };
                    if let Err(e) = fed {
                        tracing::error!(
                            peer = self.rank,
                            "malformed data, closing the connection: {e}"
                        );
                        return (true, Some(format!("sent malformed data ({e})")));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return (got > 0, Some(format!("failed: {e}"))),
            }
        }
        (got > 0, None)
    }

    /// Caller-driven read of a bulk lane: chunk headers into a small buffer,
    /// chunk bytes straight into the striped message's buffer.
    pub(super) fn read_lane(
        &mut self,
        shared: &dyn Inbox,
        budget: usize,
    ) -> (bool, Option<String>) {
        let fd = self.fd();
        let rank = self.rank;
        let max_frame = self.max_frame;
        let readers = &shared.readers();
        let Some(lane) = self.lane.as_mut() else {
            return (false, None);
        };
        let mut got = 0usize;
        while got < budget {
            if let Some((seq, addr, left)) = lane.receiving {
                // SAFETY: `addr..addr + left` is the unreceived rest of a range
                // claimed for this lane alone (`PeerStripes::claim`); its
                // buffer lives until the range has been reported filled.
                match unsafe { crate::sys::recv_raw(fd, addr as *mut u8, left) } {
                    Ok(0) => return (got > 0, Some("closed without a goodbye".into())),
                    Ok(n) => {
                        got += n;
                        lane.receiving = (n < left).then_some((seq, addr + n, left - n));
                        if let Err(e) = readers.stripe_filled(shared, rank, seq, n) {
                            return (true, Some(format!("sent a bad chunk ({e})")));
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return (got > 0, Some(format!("failed: {e}"))),
                }
                continue;
            }
            if let Some(header) = lane.waiting {
                match readers.stripe_claim(rank, header.tag, header.aux, header.len) {
                    Ok(None) => break, // announced soon on the primary connection
                    Ok(Some(claim)) => {
                        lane.waiting = None;
                        if header.len > 0 {
                            lane.receiving =
                                Some((header.tag, claim.ptr as usize, header.len as usize));
                        }
                    }
                    Err(e) => return (true, Some(format!("sent a bad chunk ({e})"))),
                }
                continue;
            }
            match recv_nonblocking(fd, &mut lane.header[lane.header_filled..]) {
                Ok(0) => return (got > 0, Some("closed without a goodbye".into())),
                Ok(n) => {
                    got += n;
                    lane.header_filled += n;
                    if lane.header_filled == crate::frame::HEADER_LEN {
                        lane.header_filled = 0;
                        let header = match FrameHeader::decode(&lane.header, max_frame) {
                            Ok(h) if h.kind == FrameKind::StripeChunk && h.src == rank => h,
                            Ok(h) => {
                                return (
                                    true,
                                    Some(format!(
                                        "sent a {:?} frame from rank {} on a bulk lane",
                                        h.kind, h.src
                                    )),
                                )
                            }
                            Err(e) => return (true, Some(format!("sent a bad frame ({e})"))),
                        };
                        lane.waiting = Some(header);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return (got > 0, Some(format!("failed: {e}"))),
            }
        }
        (got > 0, None)
    }

    pub(super) fn on_frame(&mut self, shared: &dyn Inbox, frame: Frame) -> Result<(), String> {
        let Frame { header, payload } = frame;
        if header.src != self.rank {
            return Err(format!(
                "frame claims to come from rank {} on rank {}'s connection",
                header.src, self.rank
            ));
        }
        match header.kind {
            FrameKind::Data => {
                if !header.more() && self.partial_data.is_none() {
                    if payload.len() as u64 != header.aux {
                        return Err(format!(
                            "message of {} bytes announced, {} sent",
                            header.aux,
                            payload.len()
                        ));
                    }
                    shared.readers().deliver_in_order(
                        shared,
                        Message {
                            src: self.rank,
                            tag: header.tag,
                            data: payload,
                        },
                    );
                    return Ok(());
                }
                if header.aux > self.max_message {
                    return Err(format!(
                        "a message of {} bytes announced, above the limit of {} (LUMEN_MAX_MESSAGE_BYTES)",
                        header.aux, self.max_message
                    ));
                }
                // Reserved as it comes (at most a frame ahead), not as announced.
                let reserve = header.aux.min(u64::from(self.max_frame)) as usize;
                let (tag, total, buffer) = self
                    .partial_data
                    .get_or_insert_with(|| (header.tag, header.aux, Vec::with_capacity(reserve)));
                if *tag != header.tag
                    || *total != header.aux
                    || (buffer.len() + payload.len()) as u64 > *total
                {
                    return Err("chunk does not continue the message in progress".into());
                }
                buffer.extend_from_slice(&payload);
                if !header.more() {
                    if let Some((tag, total, data)) = self.partial_data.take() {
                        if data.len() as u64 != total {
                            return Err(format!(
                                "message of {total} bytes ended after {}",
                                data.len()
                            ));
                        }
                        shared.readers().deliver_in_order(
                            shared,
                            Message {
                                src: self.rank,
                                tag,
                                data,
                            },
                        );
                    }
                }
            }
            FrameKind::GetRequest => {
                let request = GetRequestMsg::decode(&payload).map_err(|e| e.to_string())?;
                shared.queue_get_request(self.rank, request);
            }
            FrameKind::GetReply => {
                let (_, buffer) = self
                    .partial_get
                    .get_or_insert_with(|| (header.aux, Vec::new()));
                buffer.extend_from_slice(&payload);
                if !header.more() {
                    if let Some((request, data)) = self.partial_get.take() {
                        shared.finish_get(request, Ok(data));
                    }
                }
            }
            FrameKind::GetGrant => {
                let grant = GetGrantMsg::decode(&payload).map_err(|e| e.to_string())?;
                let detail = grant
                    .error
                    .unwrap_or_else(|| "grant without data over TCP".into());
                shared.finish_get(
                    grant.request,
                    Err(TransportError::GetFailed {
                        rank: self.rank,
                        detail,
                    }),
                );
            }
            FrameKind::StripeBegin => {
                if !self.primary {
                    return Err("stripe announcement on a secondary connection".into());
                }
                let seq: [u8; 8] = payload
                    .as_slice()
                    .try_into()
                    .map_err(|_| "stripe announcement without its 8-byte sequence number")?;
                if header.aux > self.max_message {
                    return Err(format!(
                        "a striped message of {} bytes announced, above the limit of {} (LUMEN_MAX_MESSAGE_BYTES)",
                        header.aux, self.max_message
                    ));
                }
                shared.readers().stripe_begin(
                    shared,
                    self.rank,
                    u64::from_le_bytes(seq),
                    header.tag,
                    header.aux,
                )?;
            }
            FrameKind::StripeChunk => {
                if !self.primary && self.lane.is_none() {
                    return Err("stripe chunk on a connection that is not a bulk lane".into());
                }
                shared
                    .readers()
                    .stripe_chunk(shared, self.rank, header.tag, header.aux, payload)?;
            }
            FrameKind::Goodbye => {
                let reason = wire::decode_reason(true, &payload).unwrap_or_default();
                tracing::debug!(peer = self.rank, "goodbye: {reason}");
                self.goodbye = true;
                // On any connection: a peer that connected lazily says
                // goodbye on each of its connections (see `connect`).
                shared.mark_peer(self.rank, PEER_DEPARTED, "closed its endpoint".into());
            }
            other => return Err(format!("unexpected {other:?} frame after the handshake")),
        }
        Ok(())
    }

    /// The connection ended (EOF or error); decides what that means for the peer.
    pub(crate) fn closed(&self, shared: &dyn Inbox, why: &str) {
        if self.goodbye {
            return;
        }
        if self.primary {
            shared.mark_peer(
                self.rank,
                PEER_DEAD,
                format!("its connection to rank {} {why}", shared.rank()),
            );
        } else if self.lane.is_some() || shared.readers().stripes_held(self.rank) > 0 {
            // A striped message missing this lane's bytes could never complete.
            if shared.readers().stripes_held(self.rank) > 0 {
                shared.mark_peer(
                    self.rank,
                    PEER_DEAD,
                    format!(
                        "its bulk connection to rank {} {why} in the middle of a message",
                        shared.rank()
                    ),
                );
            } else {
                tracing::debug!(peer = self.rank, "bulk lane closed: {why}");
            }
        } else {
            tracing::warn!(peer = self.rank, "closed an extra connection: {why}");
        }
    }
}
