//! The sending half of a TCP connection ([`TcpPeer`]): one lock per
//! connection, vectored writes of header and payload without copying the
//! payload, `MSG_ZEROCOPY` above `tcp_zerocopy_min`, and striping of bulk
//! messages over the extra connections (lanes).
//!
//! Invariant: a frame is written whole under its connection's lock, so
//! frames of concurrent senders never interleave on one stream.

use std::io::{self, IoSlice, Write};
use std::net::TcpStream;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::frame::{FrameHeader, FrameKind};
use crate::sys::{reap_zerocopy, send_zerocopy};
use crate::types::Rank;
use crate::wire::GetGrantMsg;

/// The sending half of a connection to one remote rank.
#[derive(Debug)]
pub(crate) struct TcpPeer {
    pub(super) rank: Rank,
    pub(super) stream: Mutex<TcpStream>,
    /// Chunks of at least this many bytes go out with `MSG_ZEROCOPY`; 0: never.
    pub(super) zerocopy_min: usize,
    /// Zero-copy send calls made and completions reaped (under `stream`'s lock).
    pub(super) zc_sent: AtomicU64,
    pub(super) zc_done: AtomicU64,
    /// Extra connections for striped bulk messages (`tcp_conns - 1`).
    pub(super) lanes: Vec<Mutex<TcpStream>>,
    /// Messages of at least this many bytes are striped when lanes exist.
    pub(super) stripe_min: usize,
    /// Sequence number of the next striped message to this peer.
    pub(super) next_stripe: AtomicU64,
    /// Further connections with this peer that nothing is sent on (both
    /// sides connected at once, see `connect`); only the goodbye goes out
    /// on them.
    pub(super) extras: Mutex<Vec<TcpStream>>,
}

impl TcpPeer {
    /// The sending half over `stream` (and `lanes` for striping).
    pub(super) fn new(
        rank: Rank,
        stream: TcpStream,
        settings: &super::connect::PeerSettings,
        lanes: Vec<Mutex<TcpStream>>,
    ) -> Self {
        let mut zerocopy_min = settings.zerocopy_min;
        if zerocopy_min > 0 {
            if let Err(e) = crate::sys::enable_zerocopy(stream.as_raw_fd()) {
                tracing::info!(peer = rank, "zero-copy send unavailable ({e}); copying");
                zerocopy_min = 0;
            }
        }
        TcpPeer {
            rank,
            stream: Mutex::new(stream),
            zerocopy_min,
            zc_sent: AtomicU64::new(0),
            zc_done: AtomicU64::new(0),
            lanes,
            stripe_min: settings.stripe_min.max(1),
            next_stripe: AtomicU64::new(0),
            extras: Mutex::new(Vec::new()),
        }
    }

    /// Keeps a further connection's writing half for the goodbye.
    pub(super) fn add_extra(&self, stream: TcpStream) {
        self.extras
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(stream);
    }

    /// Sends `payload` as a goodbye on every connection to this peer.
    pub(super) fn goodbye(&self, header: &FrameHeader, payload: &[u8]) {
        let _ = self.send_control(header, payload);
        let encoded = header.encode();
        for extra in self
            .extras
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter_mut()
        {
            let _ = write_all(extra, &mut [IoSlice::new(&encoded), IoSlice::new(payload)]);
        }
    }

    /// Shuts every connection to this peer down.
    pub(super) fn shutdown(&self) {
        let _ = self.lock().shutdown(std::net::Shutdown::Both);
        for extra in self.extras.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            let _ = extra.shutdown(std::net::Shutdown::Both);
        }
    }
}

/// Writes header and payload with `MSG_ZEROCOPY`, counting each send call.
pub(super) fn write_all_zerocopy(
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
pub(super) fn wait_zerocopy(fd: RawFd, sent: &AtomicU64, done: &AtomicU64) -> io::Result<()> {
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
pub(super) fn wait_fd(fd: RawFd, events: libc::c_short, ms: libc::c_int) {
    let mut pfd = libc::pollfd {
        fd,
        events,
        revents: 0,
    };
    // SAFETY: one valid pollfd; bounded timeout.
    unsafe { libc::poll(&mut pfd, 1, ms) };
}

pub(super) fn write_all(stream: &mut TcpStream, mut slices: &mut [IoSlice<'_>]) -> io::Result<()> {
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
    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, TcpStream> {
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
    pub(super) fn send_striped(
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
    pub(super) fn send_data_zerocopy(
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
