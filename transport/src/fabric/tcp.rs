//! One-sided transfers emulated over TCP: the backend every node has, and
//! the one the conformance suite holds the others to.
//!
//! Each endpoint listens on a TCP port; a peer's read or write is a request
//! on a connection to it (`[magic, op, job, key, address, length]`, then
//! the bytes of a write), which a serving thread of the target answers by
//! moving the bytes straight between its registered memory and the socket:
//! no staging copy on either side, no request per chunk. The initiator
//! keeps idle connections per peer and opens another for each concurrent
//! transfer, so transfers to one peer run side by side.
//!
//! # What is checked, and where
//! The initiator checks the key (of this job, range inside the region)
//! before it sends anything. The target checks again, against its own
//! registrations, since the request came from the network: the job must
//! be its own, the range must lie inside one registered region and the
//! key must be that region's (64 random bits per registration, so a key
//! cannot be guessed). A refused request is answered with the reason and
//! the connection stays usable. Deregistration waits for the transfers
//! being served from the region.
//!
//! # Failure
//! A peer that dies closes its sockets (the kernel does): the transfer
//! fails at once with the OS's error. One that stops answering is bounded
//! by the transfer's timeout (socket timeouts set from it), after which the
//! connection is dropped, so nothing is written into the caller's memory
//! after the call returns.

use std::collections::BTreeMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use super::{FabricError, FabricStats, OneSided, Region, RemoteKey};

const MAGIC: u32 = 0x4c4f_5352; // "LOSR"
const OP_READ: u8 = 1;
const OP_WRITE: u8 = 2;
const HEADER: usize = 40;
const STATUS_OK: u8 = 0;
const STATUS_REFUSED: u8 = 1;
/// Longest refusal text a reply may carry.
const MAX_REASON: usize = 1024;
/// How long a serving thread waits for a stalled initiator mid-transfer
/// (one alive but no longer reading) before it drops the connection.
const STALL: Duration = Duration::from_secs(30);
/// How long either side polls a connection before it blocks on it.
const SPIN: Duration = Duration::from_micros(200);

#[derive(Debug, Clone, Copy)]
struct Registered {
    len: usize,
    key: u64,
}

#[derive(Debug)]
struct Serving {
    job: u64,
    /// Registered regions by start address; read-locked while a transfer
    /// is served from one, so deregistration waits for it.
    regions: RwLock<BTreeMap<u64, Registered>>,
    stop: AtomicBool,
    /// Connections being served, to shut down on drop.
    connections: Mutex<Vec<TcpStream>>,
    /// Serving threads busy now (serving a request, or polling for the
    /// next): a thread polls for its next request only while no other is
    /// busy (one peer issuing dependent reads); with several, polling
    /// threads would take the CPUs the others need (16 reads in flight on
    /// 2 cores: 1.9 -> 0.3 GB/s at 64 KiB).
    busy: std::sync::atomic::AtomicUsize,
}

#[derive(Debug)]
struct Peer {
    addr: SocketAddr,
    idle: Mutex<Vec<TcpStream>>,
}

/// A TCP endpoint for one-sided transfers (see the module docs).
#[derive(Debug)]
pub struct TcpOneSided {
    serving: Arc<Serving>,
    listen: SocketAddr,
    peers: Mutex<Vec<Arc<Peer>>>,
    stats: Mutex<FabricStats>,
    acceptor: Option<std::thread::JoinHandle<()>>,
    /// Transfers in flight from this endpoint: a caller polls for its reply
    /// only while it is the only one (as for serving threads).
    in_flight: std::sync::atomic::AtomicUsize,
}

impl TcpOneSided {
    /// Listens on `node` (an IP address; loopback when `None`) on a port
    /// the kernel picks. `job` tags keys.
    pub fn open(node: Option<&str>, job: u64) -> Result<Self, FabricError> {
        let setup = |detail: String| FabricError::Setup {
            provider: "tcp".into(),
            detail,
        };
        let ip: std::net::IpAddr = node
            .unwrap_or("127.0.0.1")
            .parse()
            .map_err(|e| setup(format!("{:?} is not an IP address: {e}", node)))?;
        let listener = TcpListener::bind(SocketAddr::new(ip, 0))
            .map_err(|e| setup(format!("listening on {ip}: {e}")))?;
        let listen = listener
            .local_addr()
            .map_err(|e| setup(format!("reading the listening address: {e}")))?;
        let serving = Arc::new(Serving {
            job,
            regions: RwLock::new(BTreeMap::new()),
            stop: AtomicBool::new(false),
            connections: Mutex::new(Vec::new()),
            busy: std::sync::atomic::AtomicUsize::new(0),
        });
        let acceptor = {
            let serving = serving.clone();
            std::thread::Builder::new()
                .name("lumen-tcp-onesided".into())
                .spawn(move || accept_loop(listener, serving))
                .map_err(|e| setup(format!("starting the serving thread: {e}")))?
        };
        Ok(TcpOneSided {
            serving,
            listen,
            peers: Mutex::new(Vec::new()),
            stats: Mutex::new(FabricStats::default()),
            acceptor: Some(acceptor),
            in_flight: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    fn transfer(
        &self,
        peer: usize,
        key: &RemoteKey,
        offset: u64,
        op: u8,
        local: Local<'_>,
        timeout: Duration,
    ) -> Result<(), FabricError> {
        let len = local.len();
        key.check(self.serving.job, offset, len as u64)?;
        if len == 0 {
            return Ok(());
        }
        let peer = lock(&self.peers)
            .get(peer)
            .cloned()
            .ok_or(FabricError::NoSuchPeer(peer))?;
        let what = if op == OP_READ { "read" } else { "write" };
        let deadline = Instant::now() + timeout;
        let taken = lock(&peer.idle).pop();
        let mut stream = match taken {
            Some(s) => s,
            None => {
                let s = TcpStream::connect_timeout(&peer.addr, timeout).map_err(|e| {
                    io_failure(
                        what,
                        len,
                        timeout,
                        format!("connecting to {}: {e}", peer.addr),
                        e,
                    )
                })?;
                let _ = s.set_nodelay(true);
                s
            }
        };
        lock(&self.stats).posted += 1;
        let mut header = [0u8; HEADER];
        header[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        header[4] = op;
        header[8..16].copy_from_slice(&key.job.to_le_bytes());
        header[16..24].copy_from_slice(&key.key.to_le_bytes());
        header[24..32].copy_from_slice(&(key.base + offset).to_le_bytes());
        header[32..40].copy_from_slice(&(len as u64).to_le_bytes());
        let alone = self.in_flight.fetch_add(1, Ordering::AcqRel) == 0;
        let result = (|| -> Result<(), Failure> {
            set_deadline(&stream, deadline)?;
            stream.write_all(&header)?;
            let mut local = local;
            if let Local::Write(data) = &local {
                write_by_deadline(&mut stream, data, deadline)?;
            }
            let mut status = [0u8; 8];
            let got = if alone {
                spin_recv(&stream, &mut status, SPIN)
            } else {
                0
            };
            read_by_deadline(&mut stream, &mut status[got..], deadline)?;
            if status[0] != STATUS_OK {
                let n = u32::from_le_bytes([status[4], status[5], status[6], status[7]]) as usize;
                let mut reason = vec![0u8; n.min(MAX_REASON)];
                stream.read_exact(&mut reason)?;
                return Err(Failure::Refused(
                    String::from_utf8_lossy(&reason).into_owned(),
                ));
            }
            if let Local::Read(buf) = &mut local {
                read_by_deadline(&mut stream, buf, deadline)?;
            }
            Ok(())
        })();
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
        match result {
            Ok(()) => {
                lock(&peer.idle).push(stream);
                Ok(())
            }
            // The target refused it and kept the connection in step.
            Err(Failure::Refused(reason)) => {
                lock(&peer.idle).push(stream);
                Err(FabricError::Transfer {
                    what,
                    detail: format!("the target refused it: {reason}"),
                })
            }
            // Dropping the connection: nothing more lands in `local`.
            Err(Failure::Io(e)) => Err(io_failure(
                what,
                len,
                timeout,
                format!("peer {}: {e}", peer.addr),
                e,
            )),
        }
    }
}

/// The caller's side of a transfer.
enum Local<'a> {
    Read(&'a mut [u8]),
    Write(&'a [u8]),
}

impl Local<'_> {
    fn len(&self) -> usize {
        match self {
            Local::Read(b) => b.len(),
            Local::Write(b) => b.len(),
        }
    }
}

enum Failure {
    Refused(String),
    Io(std::io::Error),
}

impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Self {
        Failure::Io(e)
    }
}

fn io_failure(
    what: &'static str,
    len: usize,
    timeout: Duration,
    detail: String,
    e: std::io::Error,
) -> FabricError {
    if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) {
        FabricError::Timeout {
            what,
            bytes: len as u64,
            after: timeout,
        }
    } else {
        FabricError::Transfer { what, detail }
    }
}

fn set_deadline(stream: &TcpStream, deadline: Instant) -> std::io::Result<()> {
    let left = deadline
        .checked_duration_since(Instant::now())
        .filter(|d| !d.is_zero())
        .ok_or_else(|| std::io::Error::from(ErrorKind::TimedOut))?;
    stream.set_read_timeout(Some(left))?;
    stream.set_write_timeout(Some(left))
}

/// Socket timeouts bound each call; the deadline bounds the whole transfer.
fn read_by_deadline(
    stream: &mut TcpStream,
    buf: &mut [u8],
    deadline: Instant,
) -> std::io::Result<()> {
    let mut at = 0;
    let mut first = true;
    while at < buf.len() {
        // The timeouts set at the transfer's start hold for the first call.
        if !std::mem::take(&mut first) {
            set_deadline(stream, deadline)?;
        }
        let end = (at + (64 << 20)).min(buf.len());
        match stream.read(&mut buf[at..end]) {
            Ok(0) => return Err(ErrorKind::UnexpectedEof.into()),
            Ok(n) => at += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn write_by_deadline(stream: &mut TcpStream, buf: &[u8], deadline: Instant) -> std::io::Result<()> {
    let mut at = 0;
    let mut first = true;
    while at < buf.len() {
        // The timeouts set at the transfer's start hold for the first call.
        if !std::mem::take(&mut first) {
            set_deadline(stream, deadline)?;
        }
        let end = (at + (64 << 20)).min(buf.len());
        match stream.write(&buf[at..end]) {
            Ok(0) => return Err(ErrorKind::WriteZero.into()),
            Ok(n) => at += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn accept_loop(listener: TcpListener, serving: Arc<Serving>) {
    for stream in listener.incoming() {
        if serving.stop.load(Ordering::Acquire) {
            return;
        }
        let Ok(stream) = stream else { continue };
        let _ = stream.set_nodelay(true);
        if let Ok(clone) = stream.try_clone() {
            let mut connections = lock(&serving.connections);
            // Forget connections whose peers have gone.
            connections.retain(|c| c.peer_addr().is_ok());
            connections.push(clone);
        }
        let serving = serving.clone();
        let spawned = std::thread::Builder::new()
            .name("lumen-tcp-onesided-conn".into())
            .spawn(move || serve_connection(stream, &serving));
        if let Err(e) = spawned {
            tracing::warn!("tcp one-sided: could not start a serving thread: {e}");
        }
    }
}

/// Serves requests on one connection until the peer closes it or sends
/// something that is not a request (then the connection is dropped).
fn serve_connection(mut stream: TcpStream, serving: &Serving) {
    // Set once: a stalled initiator mid-transfer is dropped after STALL;
    // an idle connection just keeps waiting (see `next_request`).
    if stream.set_read_timeout(Some(STALL)).is_err()
        || stream.set_write_timeout(Some(STALL)).is_err()
    {
        return;
    }
    let mut header = [0u8; HEADER];
    while !serving.stop.load(Ordering::Acquire) {
        if !next_request(&mut stream, &mut header, serving) {
            return;
        }
        let word = |at: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&header[at..at + 8]);
            u64::from_le_bytes(w)
        };
        let magic = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
        let op = header[4];
        if magic != MAGIC || (op != OP_READ && op != OP_WRITE) {
            tracing::warn!("tcp one-sided: dropping a connection that sent no request");
            return;
        }
        let (job, key, addr, len) = (word(8), word(16), word(24), word(32));
        serving.busy.fetch_add(1, Ordering::AcqRel);
        let served = serve_one(&mut stream, serving, op, job, key, addr, len);
        serving.busy.fetch_sub(1, Ordering::AcqRel);
        if served.is_err() {
            return;
        }
    }
}

/// Reads the next request's header: polling for [`SPIN`] first (a request
/// often follows the last one closely, and a wake-up from a blocking read
/// costs tens of microseconds), then blocking. False when the connection
/// ended or sent half a header and stalled.
fn next_request(stream: &mut TcpStream, header: &mut [u8; HEADER], serving: &Serving) -> bool {
    let mut at = 0;
    if serving.busy.fetch_add(1, Ordering::AcqRel) == 0 {
        at = spin_recv(stream, header, SPIN);
    }
    serving.busy.fetch_sub(1, Ordering::AcqRel);
    while at < HEADER {
        match stream.read(&mut header[at..]) {
            Ok(0) => return false,
            Ok(n) => at += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            // Idle (nothing of a request yet): keep waiting.
            Err(e)
                if at == 0
                    && matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
                    && !serving.stop.load(Ordering::Acquire) => {}
            Err(_) => return false,
        }
    }
    true
}

/// Polls `stream` without blocking for up to `window`, filling `buf` from
/// its start; returns how many bytes arrived (0 on end of stream too: the
/// blocking read after it tells which).
fn spin_recv(stream: &TcpStream, buf: &mut [u8], window: Duration) -> usize {
    use std::os::fd::AsRawFd;
    spin_recv_inner(stream.as_raw_fd(), buf, window)
}

fn spin_recv_inner(fd: std::os::fd::RawFd, buf: &mut [u8], window: Duration) -> usize {
    let started = Instant::now();
    let mut at = 0;
    let mut polls = 0u32;
    while at < buf.len() {
        // SAFETY: `buf[at..]` is valid for writes of its length for the
        // call; MSG_DONTWAIT makes it return at once.
        let n = unsafe {
            libc::recv(
                fd,
                buf[at..].as_mut_ptr().cast(),
                buf.len() - at,
                libc::MSG_DONTWAIT,
            )
        };
        if n > 0 {
            at += n as usize;
            continue;
        }
        if n == 0 {
            return at;
        }
        let again = std::io::Error::last_os_error().kind() == ErrorKind::WouldBlock;
        polls += 1;
        if !again || (polls % 64 == 0 && started.elapsed() >= window) {
            return at;
        }
        std::hint::spin_loop();
    }
    at
}

fn serve_one(
    stream: &mut TcpStream,
    serving: &Serving,
    op: u8,
    job: u64,
    key: u64,
    addr: u64,
    len: u64,
) -> std::io::Result<()> {
    let regions = serving.regions.read().unwrap_or_else(|p| p.into_inner());
    let refusal = if job != serving.job {
        Some(format!(
            "the request is of job {job:#x}, this endpoint is in job {:#x}",
            serving.job
        ))
    } else {
        match usize::try_from(len)
            .ok()
            .and_then(|l| super::containing(&regions, addr, l, |r| r.len))
        {
            None => Some(format!(
                "bytes {addr:#x}..+{len} are not inside a region registered here"
            )),
            Some((_, reg)) if reg.key != key => {
                Some("the key is not the one of the region holding these bytes".into())
            }
            Some(_) => None,
        }
    };
    if let Some(reason) = refusal {
        drop(regions);
        if op == OP_WRITE {
            // Keep the stream in step: read and drop the write's bytes.
            std::io::copy(&mut (&mut *stream).take(len), &mut std::io::sink())?;
        }
        let reason = &reason.as_bytes()[..reason.len().min(MAX_REASON)];
        let mut status = [0u8; 8];
        status[0] = STATUS_REFUSED;
        status[4..8].copy_from_slice(&(reason.len() as u32).to_le_bytes());
        stream.write_all(&status)?;
        return stream.write_all(reason);
    }
    // `containing` accepted `len` as a usize above.
    let len = len as usize;
    if op == OP_READ {
        stream.write_all(&[STATUS_OK, 0, 0, 0, 0, 0, 0, 0])?;
        // SAFETY: `addr..addr + len` lies inside a region registered here
        // (checked above, under the read lock that deregistration waits
        // for), which `register`'s contract keeps mapped and allocated.
        let bytes = unsafe { std::slice::from_raw_parts(addr as *const u8, len) };
        stream.write_all(bytes)
    } else {
        // SAFETY: as for reads; a registered region is the peers' to write
        // (the contract of `register`), so writing into it from here is the
        // one-sided write the owner agreed to.
        let bytes = unsafe { std::slice::from_raw_parts_mut(addr as *mut u8, len) };
        stream.read_exact(bytes)?;
        stream.write_all(&[STATUS_OK, 0, 0, 0, 0, 0, 0, 0])
    }
}

impl OneSided for TcpOneSided {
    fn describe(&self) -> String {
        format!("tcp (emulated one-sided, serving on {})", self.listen)
    }

    fn address(&self) -> Result<Vec<u8>, FabricError> {
        Ok(format!("tcp:{}", self.listen).into_bytes())
    }

    fn insert_peer(&self, address: &[u8]) -> Result<usize, FabricError> {
        let text =
            std::str::from_utf8(address).map_err(|_| FabricError::BadAddress("not text".into()))?;
        let addr: SocketAddr = text
            .strip_prefix("tcp:")
            .ok_or_else(|| FabricError::BadAddress(format!("{text:?} is not a tcp address")))?
            .parse()
            .map_err(|e| FabricError::BadAddress(format!("{text:?}: {e}")))?;
        let mut peers = lock(&self.peers);
        peers.push(Arc::new(Peer {
            addr,
            idle: Mutex::new(Vec::new()),
        }));
        Ok(peers.len() - 1)
    }

    unsafe fn register(&self, addr: *mut u8, len: usize) -> Result<Region, FabricError> {
        let start = addr as u64;
        let mut regions = self
            .serving
            .regions
            .write()
            .unwrap_or_else(|p| p.into_inner());
        let key = match super::containing(&regions, start, len, |r| r.len) {
            Some((_, found)) => {
                lock(&self.stats).cache_hits += 1;
                found.key
            }
            None => {
                if let Some(have) = regions.get(&start) {
                    return Err(FabricError::AlreadyRegistered {
                        addr: start,
                        have: have.len as u64,
                        want: len as u64,
                    });
                }
                let key = rand::random::<u64>();
                regions.insert(start, Registered { len, key });
                lock(&self.stats).registrations += 1;
                key
            }
        };
        Ok(Region {
            addr: start,
            len: len as u64,
            key: RemoteKey {
                job: self.serving.job,
                base: start,
                len: len as u64,
                key,
            },
        })
    }

    fn registered(&self, addr: *const u8, len: usize) -> bool {
        super::containing(
            &self
                .serving
                .regions
                .read()
                .unwrap_or_else(|p| p.into_inner()),
            addr as u64,
            len,
            |r| r.len,
        )
        .is_some()
    }

    fn deregister(&self, addr: *const u8) {
        self.serving
            .regions
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(addr as u64));
    }

    fn read(
        &self,
        peer: usize,
        key: &RemoteKey,
        offset: u64,
        local: &mut [u8],
        timeout: Duration,
    ) -> Result<(), FabricError> {
        self.transfer(peer, key, offset, OP_READ, Local::Read(local), timeout)
    }

    fn write(
        &self,
        peer: usize,
        key: &RemoteKey,
        offset: u64,
        local: &[u8],
        timeout: Duration,
    ) -> Result<(), FabricError> {
        self.transfer(peer, key, offset, OP_WRITE, Local::Write(local), timeout)
    }

    fn stats(&self) -> FabricStats {
        *lock(&self.stats)
    }
}

impl Drop for TcpOneSided {
    fn drop(&mut self) {
        self.serving.stop.store(true, Ordering::Release);
        // Wake the acceptor, then end the connections being served.
        let _ = TcpStream::connect_timeout(&self.listen, Duration::from_secs(1));
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
        for c in lock(&self.serving.connections).drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
        // Transfers being served hold the read lock: wait for them (their
        // sockets are shut, so they end now) before the owner may free its
        // regions.
        self.serving
            .regions
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }
}
