//! TCP between nodes: one authenticated connection per pair of ranks on
//! different nodes (more for striping bulk messages, see below), written by application threads (a lock per connection,
//! vectored writes, no copy of the payload) and read either by the caller or
//! by a background receiver thread.
//!
//! # Caller-driven reading (the default, `TcpBackend::Auto`/`Epoll`)
//! Like Open MPI's TCP BTL, a thread that waits in `recv`, `get` or a send
//! loop reads the sockets itself: [`TcpReaders::poll`] takes each
//! connection's lock with `try_lock` (so one thread reads a connection at a
//! time, and a busy connection is skipped rather than waited for), receives
//! without blocking and feeds the bytes through the connection's
//! [`ConnState`] decoder. A large payload is received straight into the
//! message's own buffer (no scratch copy). No thread is woken on the way: a
//! ping-pong hop costs a `send` and the peer's next `recv` poll.
//!
//! A background thread still exists for ranks that compute without calling in
//! (handlers, one-sided gets, and draining so that a peer's writes never stall
//! for good). It blocks in a level-triggered epoll and reads ready
//! connections, except while application threads are polling: a waiting
//! thread registers in [`TcpReaders::pollers`] during its spin phase, and the
//! background thread then naps on a futex (2 ms at a time) instead of being
//! woken by every arrival and competing for the two cores. It resumes when the
//! last poller goes to sleep (which kicks it), or when a registered poller
//! stopped polling for a whole nap (stuck in a long handler or a blocked
//! write), so the rule "a reader never blocks on a write" still holds.
//!
//! # The io_uring receiver (`TcpBackend::Uring`)
//! One multishot receive per connection with a provided-buffer ring, read by
//! the background thread only (see [`crate::uring`]). Its bytes are consumed by
//! the kernel on the background thread's behalf, so callers cannot also read
//! the socket without reordering the stream: every message costs two thread
//! wake-ups (receiver, then the waiting caller). Measured on the 2-core
//! development VM with `lumen bench transport --scale 0.3` (loopback, 2 ranks,
//! Open MPI's TCP BTL in the same run):
//!
//! ```text
//!                       io_uring thread   caller-driven   Open MPI
//! latency 8 B             78-90 us          4.7-5.0 us     4.2 us
//! latency 4 KiB           77-93 us          5.7-5.9 us     5.9 us
//! latency 1 MiB           670-730 us        300-390 us     140 us
//! bandwidth 4 MiB         1500-1700 MB/s    2400-2950 MB/s 3500-3900 MB/s
//! ```
//!
//! so `Auto` picks caller-driven reading (reported as "epoll", the background
//! thread's readiness source); io_uring stays available (`LUMEN_TCP_BACKEND=uring`).
//! Bulk transfers are still bound by the kernel's two copies.
//!
//! # Large messages (measured as above, medians of 5 runs, Lumen only)
//! - Every received message is a fresh `Vec` handed to the application. With
//!   glibc's defaults a large one is an `mmap` per message, a page fault per
//!   4 KiB and an `munmap` (TLB shootdown) when the application drops it;
//!   [`crate::sys::tune_malloc`] keeps such blocks on the heap
//!   (`TransportConfig::tune_malloc`, on by default): bandwidth 1 MiB
//!   2450 -> 4430 MB/s, 4 MiB 2550 -> 3320 MB/s, latency unchanged. Prefaulting
//!   the buffer with `MADV_POPULATE_WRITE` instead measured no gain, nor did
//!   4 MiB or 2 MiB SO_SNDBUF/SO_RCVBUF (autotuning already reaches that).
//! - A receiver that keeps getting bytes stays in its spin phase (the spin
//!   restarts on progress) instead of handing a half-received message to the
//!   background thread: 4 MiB latency about 1750 -> 1450-1500 us.
//! - Writers: the socket is non-blocking for writes too (the reader's
//!   `O_NONBLOCK` is on the shared file description), but the writer's
//!   `poll(POLLOUT)` runs rarely (43 times for ~500 MiB sent in a 1 MiB run,
//!   strace), and a spin-retry before it measured no gain, so it stays.
//! - Zero-copy sends (`TransportConfig::tcp_zerocopy_min`, off by default):
//!   `MSG_ZEROCOPY`, completions reaped from the error queue before `send`
//!   returns. On loopback the kernel still copies on receive and a
//!   completion only arrives once the receiver has read the data, so each
//!   send waits for the peer: 1 MiB latency 390 -> 800 us, bandwidth
//!   4200 -> 900 MB/s. Worth measuring on a real NIC before enabling.
//!
//! # Several connections per peer (`TransportConfig::tcp_conns`, `LUMEN_TCP_CONNS`)
//! With N > 1 every remote pair keeps N connections; messages of at least
//! `tcp_stripe_min` bytes (1 MiB) are striped over all of them, written
//! concurrently with non-blocking writes and received straight into the
//! message buffer, in order (see [`crate::stripe`]). Measured on the 2-core
//! VM over loopback (`LUMEN_TCP_CONNS=N lumen bench transport --tcp-only
//! --scale 0.3`, other builds running, so the spread is wide): 4 MiB
//! bandwidth 2900-3500 MB/s with one connection, 4000-4800 with two or
//! four; 16 MiB 2500 -> 3000-3500 MB/s; 1 MiB latency 360-390 -> 220-330 us;
//! small messages unchanged (they only use the primary connection).
//!
//! The listener stays open after setup: late connections must pass the same
//! handshake, are then read like any other (an extra connection of that rank),
//! and a connection that sends a malformed frame is closed and logged without
//! disturbing the others. Only the loss of a rank's primary connection marks
//! that rank dead.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io::{self, IoSlice, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::config::TcpBackend;
use crate::endpoint::{
    connect_with_retry, EndpointOptions, Message, PeerAddress, Rank, Route, Shared, TransportError,
    PEER_DEAD, PEER_DEPARTED,
};
use crate::frame::{Frame, FrameDecoder, FrameHeader, FrameKind};
use crate::handshake;
use crate::stripe::{Claim, PeerStripes};
use crate::sys::{
    enable_zerocopy, futex_wait, futex_wake_all, reap_zerocopy, recv_into_spare, recv_nonblocking,
    send_zerocopy, Epoll,
};
use crate::wire::{self, GetGrantMsg, GetRequestMsg};

/// The sending half of a connection to one remote rank.
#[derive(Debug)]
pub(crate) struct TcpPeer {
    rank: Rank,
    stream: Mutex<TcpStream>,
    /// Chunks of at least this many bytes go out with `MSG_ZEROCOPY`; 0: never.
    zerocopy_min: usize,
    /// Zero-copy send calls made and completions reaped (under `stream`'s lock).
    zc_sent: AtomicU64,
    zc_done: AtomicU64,
    /// Extra connections for striped bulk messages (`tcp_conns - 1`).
    lanes: Vec<Mutex<TcpStream>>,
    /// Messages of at least this many bytes are striped when lanes exist.
    stripe_min: usize,
    /// Sequence number of the next striped message to this peer.
    next_stripe: AtomicU64,
}

/// Writes header and payload with `MSG_ZEROCOPY`, counting each send call.
fn write_all_zerocopy(
    fd: RawFd,
    mut slices: &mut [IoSlice<'_>],
    sent: &AtomicU64,
    done: &AtomicU64,
) -> io::Result<()> {
    while !slices.is_empty() {
        match send_zerocopy(fd, slices) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "connection closed while writing",
                ))
            }
            Ok(n) => {
                sent.fetch_add(1, Ordering::Relaxed);
                IoSlice::advance_slices(&mut slices, n);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => wait_fd(fd, libc::POLLOUT, 100),
            // The socket's option memory is full of pending notifications: reap some.
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                done.fetch_add(reap_zerocopy(fd)?, Ordering::Relaxed);
                wait_fd(fd, 0, 10);
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Returns once the kernel released every page of the zero-copy sends so far
/// (the caller may then reuse its buffer).
fn wait_zerocopy(fd: RawFd, sent: &AtomicU64, done: &AtomicU64) -> io::Result<()> {
    let start = Instant::now();
    while done.load(Ordering::Relaxed) < sent.load(Ordering::Relaxed) {
        let reaped = reap_zerocopy(fd)?;
        done.fetch_add(reaped, Ordering::Relaxed);
        if reaped == 0 {
            if start.elapsed() > Duration::from_secs(60) {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "zero-copy send not completed by the kernel after 60 s",
                ));
            }
            // An error-queue entry makes the socket report POLLERR.
            wait_fd(fd, 0, 100);
        }
    }
    Ok(())
}

/// Waits up to `ms` milliseconds for `events` (POLLERR/POLLHUP always count).
fn wait_fd(fd: RawFd, events: libc::c_short, ms: libc::c_int) {
    let mut pfd = libc::pollfd {
        fd,
        events,
        revents: 0,
    };
    // SAFETY: one valid pollfd; bounded timeout.
    unsafe { libc::poll(&mut pfd, 1, ms) };
}

fn write_all(stream: &mut TcpStream, mut slices: &mut [IoSlice<'_>]) -> io::Result<()> {
    while !slices.is_empty() {
        match stream.write_vectored(slices) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "connection closed while writing",
                ))
            }
            Ok(n) => IoSlice::advance_slices(&mut slices, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                let mut pfd = libc::pollfd {
                    fd: stream.as_raw_fd(),
                    events: libc::POLLOUT,
                    revents: 0,
                };
                // SAFETY: one valid pollfd; bounded timeout.
                unsafe { libc::poll(&mut pfd, 1, 100) };
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

impl TcpPeer {
    fn lock(&self) -> std::sync::MutexGuard<'_, TcpStream> {
        self.stream.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes a message as one or more data frames.
    pub(crate) fn send_data(
        &self,
        src: Rank,
        tag: u64,
        data: &[u8],
        max_frame: u32,
    ) -> io::Result<()> {
        let mut stream = self.lock();
        let total = data.len() as u64;
        if data.is_empty() {
            let header = FrameHeader::data(src, tag, 0, 0, false).encode();
            return write_all(&mut stream, &mut [IoSlice::new(&header)]);
        }
        if !self.lanes.is_empty() && data.len() >= self.stripe_min {
            return self.send_striped(&mut stream, src, tag, data, max_frame);
        }
        if self.zerocopy_min > 0 && data.len() >= self.zerocopy_min {
            return self.send_data_zerocopy(&stream, src, tag, data, max_frame);
        }
        let mut chunks = data.chunks(max_frame as usize).peekable();
        while let Some(chunk) = chunks.next() {
            let header =
                FrameHeader::data(src, tag, chunk.len() as u32, total, chunks.peek().is_some())
                    .encode();
            write_all(
                &mut stream,
                &mut [IoSlice::new(&header), IoSlice::new(chunk)],
            )?;
        }
        Ok(())
    }

    /// Writes a large message striped over the primary connection (held
    /// locked by the caller, which keeps the pair's order) and every lane:
    /// a `StripeBegin`, then one contiguous part per connection as
    /// `StripeChunk` frames, all connections written concurrently with
    /// non-blocking writes so that one full socket buffer never idles the
    /// others (see [`crate::stripe`]).
    fn send_striped(
        &self,
        primary: &mut TcpStream,
        src: Rank,
        tag: u64,
        data: &[u8],
        max_frame: u32,
    ) -> io::Result<()> {
        /// One connection's share: the bytes [next, end) still to send.
        struct Cursor {
            next: usize,
            end: usize,
            header: [u8; crate::frame::HEADER_LEN],
            header_sent: usize,
            frame_end: usize,
        }
        let seq = self.next_stripe.fetch_add(1, Ordering::Relaxed);
        let mut begin = FrameHeader::control(FrameKind::StripeBegin, src, 8);
        begin.tag = tag;
        begin.aux = data.len() as u64;
        write_all(
            primary,
            &mut [
                IoSlice::new(&begin.encode()),
                IoSlice::new(&seq.to_le_bytes()),
            ],
        )?;
        let mut lanes: Vec<_> = self
            .lanes
            .iter()
            .map(|lane| lane.lock().unwrap_or_else(|p| p.into_inner()))
            .collect();
        let parts = crate::stripe::parts(data.len(), 1 + lanes.len());
        let mut cursors: Vec<Cursor> = parts
            .iter()
            .map(|&(start, end)| Cursor {
                next: start,
                end,
                header: [0; crate::frame::HEADER_LEN],
                header_sent: crate::frame::HEADER_LEN,
                frame_end: start,
            })
            .collect();
        loop {
            let mut progressed = false;
            let mut waiting: Vec<libc::pollfd> = Vec::new();
            for (i, cursor) in cursors.iter_mut().enumerate() {
                if cursor.next == cursor.end && cursor.header_sent == crate::frame::HEADER_LEN {
                    continue;
                }
                if cursor.next == cursor.frame_end && cursor.header_sent == crate::frame::HEADER_LEN
                {
                    cursor.frame_end = (cursor.next + max_frame as usize).min(cursor.end);
                    let mut header = FrameHeader::control(
                        FrameKind::StripeChunk,
                        src,
                        (cursor.frame_end - cursor.next) as u32,
                    );
                    header.tag = seq;
                    header.aux = cursor.next as u64;
                    cursor.header = header.encode();
                    cursor.header_sent = 0;
                }
                let stream: &TcpStream = if i == 0 { primary } else { &lanes[i - 1] };
                let slices = [
                    IoSlice::new(&cursor.header[cursor.header_sent..]),
                    IoSlice::new(&data[cursor.next..cursor.frame_end]),
                ];
                match (&*stream).write_vectored(&slices) {
                    Ok(0) => {
                        return Err(io::Error::new(
                            io::ErrorKind::WriteZero,
                            "connection closed while writing",
                        ))
                    }
                    Ok(mut n) => {
                        progressed = true;
                        let from_header = n.min(crate::frame::HEADER_LEN - cursor.header_sent);
                        cursor.header_sent += from_header;
                        n -= from_header;
                        cursor.next += n;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => waiting.push(libc::pollfd {
                        fd: stream.as_raw_fd(),
                        events: libc::POLLOUT,
                        revents: 0,
                    }),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => progressed = true,
                    Err(e) => return Err(e),
                }
            }
            let done = cursors
                .iter()
                .all(|c| c.next == c.end && c.header_sent == crate::frame::HEADER_LEN);
            if done {
                drop(lanes.drain(..));
                return Ok(());
            }
            if !progressed && !waiting.is_empty() {
                // SAFETY: `waiting` is a valid array of pollfd for its length.
                unsafe { libc::poll(waiting.as_mut_ptr(), waiting.len() as libc::nfds_t, 100) };
            }
        }
    }

    /// [`TcpPeer::send_data`] with `MSG_ZEROCOPY`: the kernel references the
    /// pages of `data` and of the headers until its completion arrives, so
    /// every header lives in one vector until then, and this returns only
    /// after the kernel released them all (`send`'s contract).
    fn send_data_zerocopy(
        &self,
        stream: &TcpStream,
        src: Rank,
        tag: u64,
        data: &[u8],
        max_frame: u32,
    ) -> io::Result<()> {
        let fd = stream.as_raw_fd();
        let total = data.len() as u64;
        let count = data.len().div_ceil(max_frame as usize);
        let headers: Vec<[u8; crate::frame::HEADER_LEN]> = data
            .chunks(max_frame as usize)
            .enumerate()
            .map(|(i, chunk)| {
                FrameHeader::data(src, tag, chunk.len() as u32, total, i + 1 < count).encode()
            })
            .collect();
        let mut result = Ok(());
        for (header, chunk) in headers.iter().zip(data.chunks(max_frame as usize)) {
            let slices = &mut [IoSlice::new(header), IoSlice::new(chunk)];
            result = write_all_zerocopy(fd, slices, &self.zc_sent, &self.zc_done);
            if result.is_err() {
                break;
            }
        }
        // Even after a failed write, wait for what was handed to the kernel:
        // `headers` must outlive it.
        let waited = wait_zerocopy(fd, &self.zc_sent, &self.zc_done);
        result.and(waited)
    }

    /// Writes one control frame.
    pub(crate) fn send_control(&self, header: &FrameHeader, payload: &[u8]) -> io::Result<()> {
        let header = header.encode();
        write_all(
            &mut self.lock(),
            &mut [IoSlice::new(&header), IoSlice::new(payload)],
        )
    }

    /// Answers a get: the bytes as get-reply frames, or an error grant.
    pub(crate) fn send_get_reply(
        &self,
        src: Rank,
        request: u64,
        bytes: Result<&[u8], String>,
        max_frame: u32,
    ) -> io::Result<()> {
        match bytes {
            Err(error) => {
                let grant = GetGrantMsg {
                    request,
                    pid: 0,
                    addr: 0,
                    len: 0,
                    error: Some(error),
                }
                .encode();
                self.send_control(
                    &FrameHeader::control(FrameKind::GetGrant, src, grant.len() as u32),
                    &grant,
                )
            }
            Ok(data) => {
                let mut stream = self.lock();
                let mut chunks = data.chunks(max_frame as usize).peekable();
                if data.is_empty() {
                    let mut header = FrameHeader::control(FrameKind::GetReply, src, 0);
                    header.aux = request;
                    return write_all(&mut stream, &mut [IoSlice::new(&header.encode())]);
                }
                while let Some(chunk) = chunks.next() {
                    let mut header =
                        FrameHeader::control(FrameKind::GetReply, src, chunk.len() as u32);
                    header.aux = request;
                    if chunks.peek().is_some() {
                        header.flags |= crate::frame::FLAG_MORE;
                    }
                    write_all(
                        &mut stream,
                        &mut [IoSlice::new(&header.encode()), IoSlice::new(chunk)],
                    )?;
                }
                Ok(())
            }
        }
    }
}

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
struct LaneRead {
    header: [u8; crate::frame::HEADER_LEN],
    header_filled: usize,
    /// A chunk header whose message is not announced yet.
    waiting: Option<FrameHeader>,
    /// The chunk being received: (sequence, destination address, bytes left).
    receiving: Option<(u64, usize, usize)>,
}

/// Read-side state of one connection.
pub(crate) struct ConnState {
    pub(crate) rank: Rank,
    pub(crate) primary: bool,
    pub(crate) stream: TcpStream,
    decoder: FrameDecoder,
    partial_data: Option<(u64, u64, Vec<u8>)>,
    partial_get: Option<(u64, Vec<u8>)>,
    goodbye: bool,
    lane: Option<LaneRead>,
    max_frame: u32,
}

impl ConnState {
    pub(crate) fn new(conn: NewConnection, max_frame: u32) -> Self {
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
        }
    }

    pub(crate) fn fd(&self) -> RawFd {
        self.stream.as_raw_fd()
    }

    /// Feeds received bytes; an error means the connection must be closed.
    pub(crate) fn feed(&mut self, shared: &Shared, bytes: &[u8]) -> Result<(), String> {
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
    fn read_available(&mut self, shared: &Shared, scratch: &mut [u8]) -> (bool, Option<String>) {
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
    fn read_lane(&mut self, shared: &Shared, budget: usize) -> (bool, Option<String>) {
        let fd = self.fd();
        let rank = self.rank;
        let max_frame = self.max_frame;
        let readers = &shared.tcp_readers;
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

    fn on_frame(&mut self, shared: &Shared, frame: Frame) -> Result<(), String> {
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
                    shared.tcp_readers.deliver_in_order(
                        shared,
                        Message {
                            src: self.rank,
                            tag: header.tag,
                            data: payload,
                        },
                    );
                    return Ok(());
                }
                let (tag, total, buffer) = self.partial_data.get_or_insert_with(|| {
                    (
                        header.tag,
                        header.aux,
                        Vec::with_capacity(header.aux as usize),
                    )
                });
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
                        shared.tcp_readers.deliver_in_order(
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
                shared.tcp_readers.stripe_begin(
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
                    .tcp_readers
                    .stripe_chunk(shared, self.rank, header.tag, header.aux, payload)?;
            }
            FrameKind::Goodbye => {
                let reason = wire::decode_reason(true, &payload).unwrap_or_default();
                tracing::debug!(peer = self.rank, "goodbye: {reason}");
                self.goodbye = true;
                if self.primary {
                    shared.mark_peer(self.rank, PEER_DEPARTED, "closed its endpoint".into());
                }
            }
            other => return Err(format!("unexpected {other:?} frame after the handshake")),
        }
        Ok(())
    }

    /// The connection ended (EOF or error); decides what that means for the peer.
    pub(crate) fn closed(&self, shared: &Shared, why: &str) {
        if self.goodbye {
            return;
        }
        if self.primary {
            shared.mark_peer(
                self.rank,
                PEER_DEAD,
                format!("its connection to rank {} {why}", shared.rank),
            );
        } else if self.lane.is_some() || shared.tcp_readers.stripes_held(self.rank) > 0 {
            // A striped message missing this lane's bytes could never complete.
            if shared.tcp_readers.stripes_held(self.rank) > 0 {
                shared.mark_peer(
                    self.rank,
                    PEER_DEAD,
                    format!(
                        "its bulk connection to rank {} {why} in the middle of a message",
                        shared.rank
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

/// One connection read by caller-driven progress.
struct Connection {
    key: u64,
    fd: RawFd,
    state: Mutex<ConnState>,
    closed: AtomicBool,
}

impl Connection {
    fn rank(&self) -> Rank {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).rank
    }

    /// Reads what is available; closes the connection on end of stream or bad data.
    fn read(&self, shared: &Shared, state: &mut ConnState, scratch: &mut [u8]) -> bool {
        if self.closed.load(Ordering::Acquire) {
            return false;
        }
        let (progressed, closed) = state.read_available(shared, scratch);
        if let Some(why) = closed {
            self.closed.store(true, Ordering::Release);
            state.closed(shared, &why);
            let _ = state.stream.shutdown(std::net::Shutdown::Both);
            return true;
        }
        progressed
    }
}

const SCRATCH_BYTES: usize = 64 * 1024;

thread_local! {
    /// Receive buffer of a thread that polls sockets (small frames land here first).
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// The connections that callers read themselves, and the hand-over between
/// polling callers and the background thread (see the module docs).
#[derive(Default)]
pub(crate) struct TcpReaders {
    conns: RwLock<Vec<Arc<Connection>>>,
    count: AtomicUsize,
    /// Application threads in the spin phase of a wait (they poll the sockets).
    pollers: AtomicU32,
    /// Bumped by every caller poll: tells the background thread pollers are alive.
    polls: AtomicU64,
    /// Futex word the background thread naps on; bumped to kick it.
    nap_word: AtomicU32,
    napping: AtomicBool,
    /// Striped messages under assembly and messages held behind them, per peer.
    stripes: Mutex<HashMap<Rank, PeerStripes>>,
    /// Messages held in all of `stripes` (0: deliveries skip the lock).
    held: AtomicUsize,
}

impl TcpReaders {
    /// True when there are sockets for callers to poll.
    #[inline]
    pub(crate) fn active(&self) -> bool {
        self.count.load(Ordering::Relaxed) > 0
    }

    /// Caller-driven progress: reads every connection no other thread is reading.
    pub(crate) fn poll(&self, shared: &Shared) -> bool {
        if !self.active() {
            return false;
        }
        self.polls.fetch_add(1, Ordering::Relaxed);
        let conns = self.conns.read().unwrap_or_else(|p| p.into_inner());
        SCRATCH.with(|scratch| {
            let Ok(mut scratch) = scratch.try_borrow_mut() else {
                return false; // re-entered from a handler: the outer poll reads
            };
            if scratch.len() < SCRATCH_BYTES {
                scratch.resize(SCRATCH_BYTES, 0);
            }
            let mut progressed = false;
            for conn in conns.iter() {
                if let Ok(mut state) = conn.state.try_lock() {
                    progressed |= conn.read(shared, &mut state, &mut scratch);
                }
            }
            progressed
        })
    }

    /// A waiting thread starts busy-polling: the background thread may step aside.
    pub(crate) fn register_poller(&self) {
        self.pollers.fetch_add(1, Ordering::SeqCst);
    }

    /// A polling thread stops; `sleeping` when it is about to block, in which
    /// case the background thread must take over now rather than after its nap.
    pub(crate) fn unregister_poller(&self, sleeping: bool) {
        if self.pollers.fetch_sub(1, Ordering::SeqCst) == 1 && sleeping {
            self.nap_word.fetch_add(1, Ordering::SeqCst);
            if self.napping.load(Ordering::SeqCst) {
                futex_wake_all(&self.nap_word);
            }
        }
    }

    /// Background side: naps while callers poll. Returns false when it should read.
    fn step_aside(&self, last_polls: &mut u64) -> bool {
        let word = self.nap_word.load(Ordering::SeqCst);
        if self.pollers.load(Ordering::SeqCst) == 0 {
            return false;
        }
        let polls = self.polls.load(Ordering::Relaxed);
        if polls == *last_polls {
            return false; // registered but not polling for a whole nap: take over
        }
        *last_polls = polls;
        self.napping.store(true, Ordering::SeqCst);
        if self.pollers.load(Ordering::SeqCst) > 0 {
            futex_wait(&self.nap_word, word, Duration::from_millis(2));
        }
        self.napping.store(false, Ordering::SeqCst);
        true
    }

    /// Runs `f` on `rank`'s stripe state, then delivers what became
    /// deliverable, in order, and keeps `held` current.
    fn with_stripes<R>(
        &self,
        shared: &Shared,
        rank: Rank,
        f: impl FnOnce(&mut PeerStripes) -> R,
    ) -> R {
        let mut stripes = self.stripes.lock().unwrap_or_else(|p| p.into_inner());
        let peer = stripes.entry(rank).or_default();
        let before = peer.held();
        let result = f(peer);
        let mut ready = Vec::new();
        peer.flush(rank, &mut ready);
        let after = peer.held();
        // Delivery only queues the message (handlers run later), so doing it
        // under the lock keeps the order without risking re-entry.
        for message in ready {
            shared.deliver(message);
        }
        if after >= before {
            self.held.fetch_add(after - before, Ordering::AcqRel);
        } else {
            self.held.fetch_sub(before - after, Ordering::AcqRel);
        }
        result
    }

    /// Delivers a message from a primary connection, behind any striped
    /// message of the same peer still being assembled.
    pub(crate) fn deliver_in_order(&self, shared: &Shared, message: Message) {
        if self.held.load(Ordering::Acquire) == 0 {
            shared.deliver(message);
            return;
        }
        let rank = message.src;
        self.with_stripes(shared, rank, |peer| {
            if let Some(message) = peer.arrive(message) {
                shared.deliver(message);
            }
        });
    }

    fn stripe_begin(
        &self,
        shared: &Shared,
        rank: Rank,
        seq: u64,
        tag: u64,
        total: u64,
    ) -> Result<(), String> {
        self.with_stripes(shared, rank, |peer| peer.begin(seq, tag, total))
    }

    fn stripe_chunk(
        &self,
        shared: &Shared,
        rank: Rank,
        seq: u64,
        offset: u64,
        bytes: Vec<u8>,
    ) -> Result<(), String> {
        self.with_stripes(shared, rank, |peer| peer.chunk(seq, offset, bytes))
    }

    fn stripe_claim(
        &self,
        rank: Rank,
        seq: u64,
        offset: u64,
        len: u32,
    ) -> Result<Option<Claim>, String> {
        let mut stripes = self.stripes.lock().unwrap_or_else(|p| p.into_inner());
        stripes.entry(rank).or_default().claim(seq, offset, len)
    }

    fn stripe_filled(&self, shared: &Shared, rank: Rank, seq: u64, n: usize) -> Result<(), String> {
        self.with_stripes(shared, rank, |peer| peer.filled(seq, n))
    }

    fn stripes_held(&self, rank: Rank) -> usize {
        if self.held.load(Ordering::Acquire) == 0 {
            return 0;
        }
        let stripes = self.stripes.lock().unwrap_or_else(|p| p.into_inner());
        stripes.get(&rank).map_or(0, PeerStripes::held)
    }

    fn insert(&self, conn: Arc<Connection>) {
        let mut conns = self.conns.write().unwrap_or_else(|p| p.into_inner());
        conns.push(conn);
        self.count.store(conns.len(), Ordering::Relaxed);
    }

    fn remove(&self, key: u64) {
        let mut conns = self.conns.write().unwrap_or_else(|p| p.into_inner());
        conns.retain(|c| c.key != key);
        self.count.store(conns.len(), Ordering::Relaxed);
    }
}

/// Connections made at setup, before the receiver runs.
pub(crate) struct TcpSetup {
    backend: TcpBackend,
    spin: Duration,
    max_frame: u32,
    peers: HashMap<Rank, Arc<TcpPeer>>,
    read_sides: Vec<NewConnection>,
    listener: TcpListener,
    job_id: String,
    secret: crate::auth::JobSecret,
    rank: Rank,
    size: u32,
}

/// The running TCP side of an endpoint.
pub(crate) struct TcpDomain {
    peers: HashMap<Rank, Arc<TcpPeer>>,
    stop: Arc<AtomicBool>,
    listener_fd: RawFd,
    _listener: TcpListener,
    receiver: Option<JoinHandle<()>>,
    acceptor: Option<JoinHandle<()>>,
    backend_name: &'static str,
}

impl TcpDomain {
    /// Connects to every remote rank above us and accepts those below us.
    pub(crate) fn establish(
        options: &EndpointOptions,
        listener: TcpListener,
        peers: &[PeerAddress],
        routes: &[Route],
    ) -> Result<TcpSetup, TransportError> {
        let me = options.rank;
        let timeout = options.config.connect_timeout;
        let conns = options.config.tcp_conns.clamp(1, 64);
        let remote: Vec<Rank> = routes
            .iter()
            .enumerate()
            .filter(|(_, r)| matches!(r, Route::Remote))
            .map(|(i, _)| i as Rank)
            .collect();
        let expected: Vec<Rank> = remote.iter().copied().filter(|&r| r < me).collect();
        let accept_thread = {
            let listener = listener.try_clone().map_err(|source| TransportError::Io {
                context: "cloning the listener".into(),
                source,
            })?;
            let (job_id, secret) = (options.job_id.clone(), options.secret.clone());
            let expected = expected.clone();
            std::thread::spawn(move || {
                accept_expected(listener, &job_id, me, &secret, expected, conns, timeout)
            })
        };
        let mut streams = Vec::new();
        // The first connection to a rank is its primary one; the acceptor
        // tells them apart by order, as each handshake completes before the
        // next connection opens.
        for &r in remote.iter().filter(|&&r| r > me) {
            let addr = peers[r as usize].tcp;
            for _ in 0..conns {
                let mut stream =
                    connect_with_retry(addr, timeout).map_err(|source| TransportError::Io {
                        context: format!("connecting to rank {r} at {addr}"),
                        source,
                    })?;
                let _ = stream.set_nodelay(true);
                let _ = stream.set_read_timeout(Some(timeout));
                handshake::initiate(&mut stream, &options.job_id, me, &options.secret)
                    .map_err(|source| TransportError::Handshake { rank: r, source })?;
                streams.push((r, stream));
            }
        }
        let accepted = accept_thread
            .join()
            .map_err(|_| TransportError::PeerTable("the accept thread panicked".into()))??;
        streams.extend(accepted);
        if !streams.is_empty() && options.config.tune_malloc {
            crate::sys::tune_malloc(options.config.max_frame as usize);
        }
        let mut by_rank: HashMap<Rank, Vec<TcpStream>> = HashMap::new();
        for (rank, stream) in streams {
            by_rank.entry(rank).or_default().push(stream);
        }
        let mut peer_map = HashMap::new();
        let mut read_sides = Vec::new();
        for (rank, mut streams) in by_rank {
            let clone = |stream: &TcpStream| {
                let _ = stream.set_read_timeout(None);
                stream.try_clone().map_err(|source| TransportError::Io {
                    context: "cloning a socket".into(),
                    source,
                })
            };
            let mut lanes = Vec::new();
            for lane in streams.drain(1..) {
                read_sides.push(NewConnection {
                    rank,
                    stream: clone(&lane)?,
                    primary: false,
                    lane: true,
                });
                lanes.push(Mutex::new(lane));
            }
            let Some(stream) = streams.pop() else {
                continue;
            };
            let read = clone(&stream)?;
            let mut zerocopy_min = options.config.tcp_zerocopy_min;
            if zerocopy_min > 0 {
                if let Err(e) = enable_zerocopy(stream.as_raw_fd()) {
                    tracing::info!(peer = rank, "zero-copy send unavailable ({e}); copying");
                    zerocopy_min = 0;
                }
            }
            peer_map.insert(
                rank,
                Arc::new(TcpPeer {
                    rank,
                    stream: Mutex::new(stream),
                    zerocopy_min,
                    zc_sent: AtomicU64::new(0),
                    zc_done: AtomicU64::new(0),
                    lanes,
                    stripe_min: options.config.tcp_stripe_min.max(1),
                    next_stripe: AtomicU64::new(0),
                }),
            );
            read_sides.push(NewConnection {
                rank,
                stream: read,
                primary: true,
                lane: false,
            });
        }
        Ok(TcpSetup {
            backend: options.config.tcp_backend,
            spin: options.config.spin,
            max_frame: options.config.max_frame,
            peers: peer_map,
            read_sides,
            listener,
            job_id: options.job_id.clone(),
            secret: options.secret.clone(),
            rank: me,
            size: options.size,
        })
    }

    /// The sending half toward `rank`.
    pub(crate) fn peer(&self, rank: Rank) -> Option<Arc<TcpPeer>> {
        self.peers.get(&rank).cloned()
    }

    /// "io_uring" or "epoll".
    pub(crate) fn backend_name(&self) -> &'static str {
        self.backend_name
    }

    /// Says goodbye to every peer and stops the threads.
    pub(crate) fn shutdown(mut self, me: Rank) {
        let goodbye = wire::encode_reason(true, "endpoint closed");
        for peer in self.peers.values() {
            let _ = peer.send_control(
                &FrameHeader::control(FrameKind::Goodbye, me, goodbye.len() as u32),
                &goodbye,
            );
        }
        self.stop.store(true, Ordering::Release);
        // SAFETY: shutting down our own listening socket wakes the blocked accept.
        unsafe { libc::shutdown(self.listener_fd, libc::SHUT_RDWR) };
        if let Some(h) = self.acceptor.take() {
            let _ = h.join();
        }
        if let Some(h) = self.receiver.take() {
            let _ = h.join();
        }
        for peer in self.peers.values() {
            let _ = peer.lock().shutdown(std::net::Shutdown::Both);
            tracing::trace!(peer = peer.rank, "connection shut down");
        }
    }
}

impl TcpSetup {
    /// Starts the acceptor and receiver threads; `None` when there is nothing remote
    /// and nothing can arrive.
    pub(crate) fn start(self, shared: &Arc<Shared>) -> Result<Option<TcpDomain>, TransportError> {
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel::<NewConnection>();
        for conn in self.read_sides {
            let _ = tx.send(conn);
        }
        let listener_fd = self.listener.as_raw_fd();
        let acceptor = {
            let listener = self
                .listener
                .try_clone()
                .map_err(|source| TransportError::Io {
                    context: "cloning the listener".into(),
                    source,
                })?;
            let (job_id, secret, rank, size, stop) = (
                self.job_id.clone(),
                self.secret.clone(),
                self.rank,
                self.size,
                stop.clone(),
            );
            std::thread::Builder::new()
                .name(format!("lumen-accept-{rank}"))
                .spawn(move || accept_late(listener, &job_id, rank, size, &secret, tx, &stop))
                .map_err(|source| TransportError::Io {
                    context: "starting the accept thread".into(),
                    source,
                })?
        };
        let weak = Arc::downgrade(shared);
        let (spin, max_frame) = (self.spin, self.max_frame);
        let uring = match self.backend {
            // Caller-driven reading measured faster than the io_uring thread
            // (module docs), so only an explicit choice gets io_uring.
            TcpBackend::Epoll | TcpBackend::Auto => None,
            choice => match crate::uring::UringReceiver::new() {
                Ok(uring) => Some(uring),
                Err(e) if choice == TcpBackend::Uring => {
                    return Err(TransportError::Io {
                        context: "io_uring was requested (LUMEN_TCP_BACKEND=uring) but refused"
                            .into(),
                        source: e,
                    })
                }
                Err(e) => {
                    tracing::info!("io_uring unavailable ({e}); using epoll");
                    None
                }
            },
        };
        let backend_name = if uring.is_some() { "io_uring" } else { "epoll" };
        let receiver_stop = stop.clone();
        let readers = shared.tcp_readers.clone();
        let receiver = spawn_receiver(shared.rank, move || match uring {
            Some(uring) => uring.run(weak, rx, receiver_stop, spin, max_frame),
            None => background_receiver(weak, &readers, rx, receiver_stop, max_frame),
        })?;
        Ok(Some(TcpDomain {
            peers: self.peers,
            stop,
            listener_fd,
            _listener: self.listener,
            receiver: Some(receiver),
            acceptor: Some(acceptor),
            backend_name,
        }))
    }
}

fn spawn_receiver(
    rank: Rank,
    body: impl FnOnce() + Send + 'static,
) -> Result<JoinHandle<()>, TransportError> {
    std::thread::Builder::new()
        .name(format!("lumen-tcp-{rank}"))
        .spawn(body)
        .map_err(|source| TransportError::Io {
            context: "starting the TCP receiver".into(),
            source,
        })
}

fn accept_expected(
    listener: TcpListener,
    job_id: &str,
    me: Rank,
    secret: &crate::auth::JobSecret,
    expected: Vec<Rank>,
    conns: usize,
    timeout: Duration,
) -> Result<Vec<(Rank, TcpStream)>, TransportError> {
    // Connections still to come from each rank (its primary one first).
    let mut expected: HashMap<Rank, usize> = expected.into_iter().map(|r| (r, conns)).collect();
    let start = Instant::now();
    let mut got = Vec::new();
    listener
        .set_nonblocking(true)
        .map_err(|source| TransportError::Io {
            context: "listener".into(),
            source,
        })?;
    while !expected.is_empty() {
        match listener.accept() {
            Ok((mut stream, from)) => {
                let _ = stream.set_nonblocking(false);
                let _ = stream.set_nodelay(true);
                let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
                match handshake::accept(&mut stream, job_id, me, secret) {
                    Ok(rank) if expected.contains_key(&rank) => {
                        if let Some(left) = expected.get_mut(&rank) {
                            *left -= 1;
                            if *left == 0 {
                                expected.remove(&rank);
                            }
                        }
                        got.push((rank, stream));
                    }
                    Ok(rank) => tracing::warn!(
                        "refusing connection from {from} claiming rank {rank}: not expected"
                    ),
                    Err(e) => tracing::warn!("refusing connection from {from}: {e}"),
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if start.elapsed() > timeout {
                    return Err(TransportError::Timeout {
                        what: {
                            let mut missing: Vec<Rank> = expected.keys().copied().collect();
                            missing.sort_unstable();
                            format!("connections from ranks {missing:?} to rank {me}")
                        },
                        waited: timeout,
                    });
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(e) => {
                return Err(TransportError::Io {
                    context: "accepting a peer".into(),
                    source: e,
                })
            }
        }
    }
    let _ = listener.set_nonblocking(false);
    Ok(got)
}

/// After setup: authenticate late connections (extra connections of a rank),
/// log and drop everything else.
fn accept_late(
    listener: TcpListener,
    job_id: &str,
    me: Rank,
    size: u32,
    secret: &crate::auth::JobSecret,
    tx: mpsc::Sender<NewConnection>,
    stop: &AtomicBool,
) {
    let _ = listener.set_nonblocking(false);
    while !stop.load(Ordering::Acquire) {
        let Ok((mut stream, from)) = listener.accept() else {
            if stop.load(Ordering::Acquire) {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
            continue;
        };
        let _ = stream.set_nodelay(true);
        let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
        match handshake::accept(&mut stream, job_id, me, secret) {
            Ok(rank) if rank < size && rank != me => {
                let _ = stream.set_read_timeout(None);
                tracing::info!(peer = rank, "accepted an extra connection from {from}");
                if tx
                    .send(NewConnection {
                        rank,
                        stream,
                        primary: false,
                        lane: false,
                    })
                    .is_err()
                {
                    return;
                }
            }
            Ok(rank) => tracing::warn!(
                "refusing connection from {from}: claims rank {rank} of a {size}-rank job"
            ),
            Err(e) => tracing::warn!("refusing connection from {from}: {e}"),
        }
    }
}

/// The background half of caller-driven reading: registers new connections,
/// then reads ready ones from a level-triggered epoll whenever no caller polls.
fn background_receiver(
    shared: Weak<Shared>,
    readers: &TcpReaders,
    rx: mpsc::Receiver<NewConnection>,
    stop: Arc<AtomicBool>,
    max_frame: u32,
) {
    let epoll = Epoll::new()
        .map_err(|e| {
            tracing::error!("epoll unavailable ({e}): TCP peers are read only by waiting callers")
        })
        .ok();
    let mut conns: HashMap<u64, Arc<Connection>> = HashMap::new();
    let mut next_key = 1u64;
    let mut last_polls = u64::MAX;
    let mut ready = Vec::with_capacity(64);
    let mut scratch = vec![0u8; SCRATCH_BYTES];
    while !stop.load(Ordering::Acquire) {
        while let Ok(conn) = rx.try_recv() {
            if conn.stream.set_nonblocking(true).is_err() {
                continue;
            }
            let key = next_key;
            next_key += 1;
            let fd = conn.stream.as_raw_fd();
            let conn = Arc::new(Connection {
                key,
                fd,
                state: Mutex::new(ConnState::new(conn, max_frame)),
                closed: AtomicBool::new(false),
            });
            readers.insert(conn.clone());
            match &epoll {
                Some(epoll) if epoll.add(fd, key).is_err() => {
                    tracing::error!(
                        peer = conn.rank(),
                        "epoll refused a connection: only waiting callers read it"
                    );
                }
                _ => {}
            }
            conns.insert(key, conn);
        }
        if readers.step_aside(&mut last_polls) {
            continue;
        }
        let Some(epoll) = &epoll else {
            std::thread::sleep(Duration::from_millis(20));
            continue;
        };
        epoll.wait(&mut ready, Duration::from_millis(20));
        if ready.is_empty() {
            continue;
        }
        // A caller started polling while we slept: let it read.
        if readers.pollers.load(Ordering::SeqCst) > 0
            && readers.polls.load(Ordering::Relaxed) != last_polls
        {
            continue;
        }
        let Some(shared) = shared.upgrade() else {
            return;
        };
        for key in ready.drain(..) {
            let Some(conn) = conns.get(&key) else {
                continue;
            };
            if !conn.closed.load(Ordering::Acquire) {
                let mut state = conn.state.lock().unwrap_or_else(|p| p.into_inner());
                conn.read(&shared, &mut state, &mut scratch);
            }
            if conn.closed.load(Ordering::Acquire) {
                epoll.delete(conn.fd);
                readers.remove(key);
                conns.remove(&key);
            }
        }
    }
}
