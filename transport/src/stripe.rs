//! Striping one large TCP message over several connections to the same peer,
//! and putting it back together in order.
//!
//! With `TransportConfig::tcp_conns` = N > 1, every pair of ranks on different
//! nodes keeps N connections: the primary one (small messages, control, order)
//! and N - 1 bulk lanes. A message of at least `tcp_stripe_min` bytes goes out
//! as a `StripeBegin` frame on the primary connection (tag, total length and a
//! per-peer sequence number), then as N contiguous parts written concurrently:
//! part 0 on the primary connection, part i on lane i, each as `StripeChunk`
//! frames (`tag` = sequence number, `aux` = byte offset in the message). This
//! is the multi-rail/multi-stream idea of MPI's TCP BTL (several links or
//! sockets per peer, `btl_tcp_links`) and of GridFTP's parallel streams: a
//! single TCP flow is limited by one congestion window and one core's protocol
//! processing, several flows are not.
//!
//! # Order
//! Messages of a pair stay ordered: the receiver keeps, per peer, a queue of
//! what the primary connection announced ([`Held`]). A striped message takes
//! its place in that queue at its `StripeBegin`; any message that arrives on the
//! primary connection after it waits behind it until all its bytes are in.
//!
//! # Where the bytes land
//! A lane read by a waiting caller receives a chunk straight into the final
//! message buffer at the chunk's offset (no intermediate copy): it first
//! claims the byte range ([`PeerStripes::claim`]), receives into it without any
//! lock, then reports what arrived ([`PeerStripes::filled`]). Claimed ranges
//! never overlap (checked), and a message leaves its assembly only once every
//! byte has been reported, so a pointer handed out by `claim` stays valid and
//! exclusive until its range is filled. A chunk arriving before its
//! `StripeBegin` (lanes race the primary connection) either waits in the
//! kernel (direct reads: the lane is simply not read until the assembly
//! exists) or, where the bytes were already taken (frames decoded from a
//! buffer, the io_uring receiver), is kept aside and copied in when the
//! `StripeBegin` arrives.
//!
//! This module is the bookkeeping only (no sockets): the TCP module drives it.

use std::collections::{HashMap, VecDeque};

use crate::types::{Message, Rank};

/// What the primary connection announced, in arrival order.
#[derive(Debug)]
pub(crate) enum Held {
    /// A complete message waiting behind an incomplete striped one.
    Ready(Message),
    /// A striped message (by sequence number) still being assembled or ready.
    Striped(u64),
}

/// A striped message under assembly.
#[derive(Debug)]
struct Assembly {
    tag: u64,
    total: usize,
    /// Capacity `total`; its length stays 0 until every byte has arrived.
    data: Vec<u8>,
    /// Byte ranges handed out so far (start, end), never overlapping.
    claimed: Vec<(usize, usize)>,
    filled: usize,
}

/// Where a claimed chunk must be written.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Claim {
    /// Address of the first byte of the range, inside the message's buffer.
    pub(crate) ptr: *mut u8,
}

/// Per-peer reassembly state.
#[derive(Debug, Default)]
pub(crate) struct PeerStripes {
    order: VecDeque<Held>,
    assemblies: HashMap<u64, Assembly>,
    /// Chunks whose `StripeBegin` had not arrived yet: sequence -> (offset, bytes).
    early: HashMap<u64, Vec<(u64, Vec<u8>)>>,
}

impl PeerStripes {
    /// Messages waiting in order (striped or held behind one).
    pub(crate) fn held(&self) -> usize {
        self.order.len()
    }

    /// A complete message from the primary connection: delivered now when
    /// nothing is held, else queued behind the striped message(s).
    pub(crate) fn arrive(&mut self, message: Message) -> Option<Message> {
        if self.order.is_empty() {
            Some(message)
        } else {
            self.order.push_back(Held::Ready(message));
            None
        }
    }

    /// A `StripeBegin` from the primary connection.
    pub(crate) fn begin(&mut self, seq: u64, tag: u64, total: u64) -> Result<(), String> {
        if self.assemblies.contains_key(&seq) {
            return Err(format!("striped message {seq} announced twice"));
        }
        let total = usize::try_from(total)
            .map_err(|_| format!("striped message of {total} bytes is too large"))?;
        let mut data = Vec::new();
        data.try_reserve_exact(total)
            .map_err(|_| format!("cannot allocate {total} bytes for a striped message"))?;
        self.assemblies.insert(
            seq,
            Assembly {
                tag,
                total,
                data,
                claimed: Vec::new(),
                filled: 0,
            },
        );
        self.order.push_back(Held::Striped(seq));
        if let Some(chunks) = self.early.remove(&seq) {
            for (offset, bytes) in chunks {
                self.copy_in(seq, offset, &bytes)?;
            }
        }
        Ok(())
    }

    /// Reserves `len` bytes at `offset` of message `seq` for a direct receive.
    /// `Ok(None)`: the message is not announced yet (try again later).
    pub(crate) fn claim(
        &mut self,
        seq: u64,
        offset: u64,
        len: u32,
    ) -> Result<Option<Claim>, String> {
        let Some(assembly) = self.assemblies.get_mut(&seq) else {
            return Ok(None);
        };
        let start = usize::try_from(offset).map_err(|_| "chunk offset out of range".to_string())?;
        let end = start
            .checked_add(len as usize)
            .filter(|&end| end <= assembly.total)
            .ok_or_else(|| {
                format!(
                    "chunk [{offset}, +{len}) lies outside striped message {seq} of {} bytes",
                    assembly.total
                )
            })?;
        if assembly
            .claimed
            .iter()
            .any(|&(s, e)| start < e && s < end && start < end)
        {
            return Err(format!(
                "chunk [{start}, {end}) of striped message {seq} overlaps one already received"
            ));
        }
        assembly.claimed.push((start, end));
        // SAFETY: `start <= total` and the buffer has capacity `total`, so the
        // offset stays inside (or one past) the allocation.
        let ptr = unsafe { assembly.data.as_mut_ptr().add(start) };
        Ok(Some(Claim { ptr }))
    }

    /// `n` more bytes of message `seq` were written through a claim.
    pub(crate) fn filled(&mut self, seq: u64, n: usize) -> Result<(), String> {
        let assembly = self
            .assemblies
            .get_mut(&seq)
            .ok_or_else(|| format!("bytes for unknown striped message {seq}"))?;
        assembly.filled += n;
        if assembly.filled > assembly.total {
            return Err(format!("striped message {seq} received too many bytes"));
        }
        Ok(())
    }

    /// A chunk whose bytes were already received elsewhere: copied in (or
    /// kept until its `StripeBegin` arrives).
    pub(crate) fn chunk(&mut self, seq: u64, offset: u64, bytes: Vec<u8>) -> Result<(), String> {
        if !self.assemblies.contains_key(&seq) {
            let early = self.early.entry(seq).or_default();
            if early.len() > 4096 {
                return Err(format!(
                    "too many chunks for unannounced striped message {seq}"
                ));
            }
            early.push((offset, bytes));
            return Ok(());
        }
        self.copy_in(seq, offset, &bytes)
    }

    fn copy_in(&mut self, seq: u64, offset: u64, bytes: &[u8]) -> Result<(), String> {
        let len = u32::try_from(bytes.len()).map_err(|_| "chunk too large".to_string())?;
        let Some(claim) = self.claim(seq, offset, len)? else {
            return Err(format!("striped message {seq} vanished"));
        };
        // SAFETY: `claim` checked that [offset, offset + len) lies inside the
        // buffer's capacity and overlaps no other claimed range, so nothing
        // else writes or reads these bytes; `bytes` is a separate allocation.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), claim.ptr, bytes.len()) };
        self.filled(seq, bytes.len())
    }

    /// Takes every message that can now be delivered, in order.
    pub(crate) fn flush(&mut self, src: Rank, out: &mut Vec<Message>) {
        while let Some(front) = self.order.front() {
            match front {
                Held::Ready(_) => {
                    if let Some(Held::Ready(message)) = self.order.pop_front() {
                        out.push(message);
                    }
                }
                Held::Striped(seq) => {
                    let seq = *seq;
                    let complete = self
                        .assemblies
                        .get(&seq)
                        .is_some_and(|a| a.filled == a.total);
                    if !complete {
                        return;
                    }
                    self.order.pop_front();
                    if let Some(mut assembly) = self.assemblies.remove(&seq) {
                        // SAFETY: every byte of [0, total) was claimed by exactly
                        // one writer (claims never overlap, they sum to at most
                        // total) and reported written (`filled == total`), so the
                        // whole capacity is initialised and no writer remains.
                        unsafe { assembly.data.set_len(assembly.total) };
                        out.push(Message {
                            src,
                            tag: assembly.tag,
                            data: assembly.data,
                        });
                    }
                }
            }
        }
    }
}

// SAFETY: the raw pointer in a `Claim` points into a buffer owned by an
// `Assembly` that stays alive (and unmoved on the heap) until its range is
// filled; sending it to the thread that receives into it is the point.
unsafe impl Send for Claim {}

/// Splits `total` bytes into `lanes` contiguous parts (page-aligned cuts).
pub(crate) fn parts(total: usize, lanes: usize) -> Vec<(usize, usize)> {
    let lanes = lanes.max(1);
    let part = total.div_ceil(lanes).next_multiple_of(4096).max(1);
    (0..lanes)
        .map(|i| ((i * part).min(total), ((i + 1) * part).min(total)))
        .filter(|(s, e)| s < e)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(tag: u64, data: &[u8]) -> Message {
        Message {
            src: 1,
            tag,
            data: data.to_vec(),
        }
    }

    #[test]
    fn parts_cover_the_message_without_gaps() {
        for (total, lanes) in [(0, 3), (1, 4), (4096 * 3 + 5, 3), (10 << 20, 4), (7, 1)] {
            let p = parts(total, lanes);
            let mut at = 0;
            for &(s, e) in &p {
                assert_eq!(s, at);
                assert!(e > s);
                at = e;
            }
            assert_eq!(at, total);
            assert!(p.len() <= lanes);
        }
    }

    #[test]
    fn messages_after_a_striped_one_wait_for_it() {
        let mut p = PeerStripes::default();
        assert!(p.arrive(msg(1, b"first")).is_some());
        p.begin(7, 2, 8).unwrap();
        assert!(p.arrive(msg(3, b"after")).is_none());
        let mut out = Vec::new();
        p.flush(1, &mut out);
        assert!(out.is_empty());
        p.chunk(7, 4, b"5678".to_vec()).unwrap();
        p.flush(1, &mut out);
        assert!(out.is_empty(), "half a message must not be delivered");
        p.chunk(7, 0, b"1234".to_vec()).unwrap();
        p.flush(1, &mut out);
        let got: Vec<_> = out.iter().map(|m| (m.tag, m.data.clone())).collect();
        assert_eq!(got, vec![(2, b"12345678".to_vec()), (3, b"after".to_vec())]);
        assert_eq!(p.held(), 0);
    }

    #[test]
    fn chunks_before_their_announcement_are_kept() {
        let mut p = PeerStripes::default();
        p.chunk(1, 2, b"cd".to_vec()).unwrap();
        p.begin(1, 9, 4).unwrap();
        p.chunk(1, 0, b"ab".to_vec()).unwrap();
        let mut out = Vec::new();
        p.flush(1, &mut out);
        assert_eq!(out[0].data, b"abcd");
    }

    #[test]
    fn direct_claims_fill_the_buffer() {
        let mut p = PeerStripes::default();
        assert!(p.claim(5, 0, 4).unwrap().is_none(), "not announced yet");
        p.begin(5, 1, 6).unwrap();
        let a = p.claim(5, 0, 4).unwrap().unwrap();
        let b = p.claim(5, 4, 2).unwrap().unwrap();
        // SAFETY: the claims cover disjoint ranges of a 6-byte buffer.
        unsafe {
            std::ptr::copy_nonoverlapping(b"wxyz".as_ptr(), a.ptr, 4);
            std::ptr::copy_nonoverlapping(b"!?".as_ptr(), b.ptr, 2);
        }
        p.filled(5, 4).unwrap();
        p.filled(5, 2).unwrap();
        let mut out = Vec::new();
        p.flush(1, &mut out);
        assert_eq!(out[0].data, b"wxyz!?");
    }

    #[test]
    fn bad_chunks_are_refused() {
        let mut p = PeerStripes::default();
        p.begin(1, 0, 8).unwrap();
        assert!(p.claim(1, 6, 4).is_err(), "past the end");
        assert!(p.claim(1, u64::MAX, 4).is_err(), "offset overflow");
        p.claim(1, 0, 4).unwrap().unwrap();
        assert!(p.claim(1, 2, 4).is_err(), "overlap");
        assert!(p.begin(1, 0, 8).is_err(), "announced twice");
        assert!(p.filled(2, 1).is_err(), "unknown message");
        assert!(p.begin(3, 0, u64::MAX).is_err(), "cannot allocate");
    }
}
