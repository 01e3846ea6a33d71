//! The store's IO shell: one thread with an epoll loop around the sans-IO
//! [`StoreState`], whatever the number of ranks.
//!
//! The loop accepts connections, runs each one's handshake as a state
//! machine ([`Acceptor`]: a silent peer is dropped after
//! [`HANDSHAKE_TIMEOUT`] and holds nothing meanwhile), registers the rank,
//! then reads its requests and applies them in arrival order. Replies are
//! queued per connection and written as the socket takes them, so every
//! rank sees its replies in the order the state produced them and a rank
//! that does not read stalls nobody else; one whose queue has not moved
//! for [`WRITE_TIMEOUT`] is dropped (and counts as gone).
//!
//! An earlier shell took a thread per connection: at 256 ranks on one node
//! that was 256 threads inside `lumen run` while it was still forking
//! ranks, and each fork copied their stacks' mappings.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use lumen_transport::auth::JobSecret;
use lumen_transport::frame::{encode_frame, FrameHeader, FrameKind, HEADER_LEN};
use lumen_transport::handshake::{Acceptor, Refused, HANDSHAKE_MAX_FRAME};
use rustix::event::epoll;

use super::{
    derived_job_id, derived_port, port_sequence, RendezvousError, StoreState, MAX_FRAME,
    OBSERVER_RANK, SERVER_RANK,
};
use crate::wire::{Reply, ReplyFrame, Request, RequestFrame, StoreStatus};

/// How long a new connection may take to authenticate.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long replies may wait on a rank that does not read.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Most bytes read from one connection before the loop turns to the others.
const READ_BURST: usize = 1 << 20;
/// Epoll keys of the listener and the waker; connections count up from
/// [`FIRST_CONNECTION`].
const LISTENER: u64 = 0;
const WAKER: u64 = 1;
const FIRST_CONNECTION: u64 = 2;

/// The rendezvous store serving one job.
///
/// Stops on [`shutdown`](Self::shutdown) or when dropped: the listener closes,
/// every connection is closed and the thread joined.
///
/// ```
/// use lumen_launcher::rendezvous::{RendezvousClient, RendezvousServer};
/// use lumen_transport::auth::JobSecret;
/// use std::time::Duration;
///
/// # fn main() -> Result<(), lumen_launcher::rendezvous::RendezvousError> {
/// let secret = JobSecret::random();
/// let server = RendezvousServer::bind("127.0.0.1:0".parse().unwrap(), "doc", 1, secret.clone())?;
/// let mut client =
///     RendezvousClient::connect(server.local_addr(), "doc", 0, &secret, Duration::from_secs(5))?;
/// let table = client.allgather("endpoint", b"here", Duration::from_secs(5))?;
/// assert_eq!(table, vec![b"here".to_vec()]);
/// client.finalize()?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct RendezvousServer {
    local_addr: SocketAddr,
    shared: Arc<Shared>,
    /// Written to on shutdown, to wake the loop.
    waker: UnixStream,
    thread: Option<JoinHandle<()>>,
}

#[derive(Debug)]
struct Shared {
    stopping: AtomicBool,
    state: Mutex<StoreState>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, StoreState> {
        // A panic while applying a request leaves the state consistent
        // enough to report status: each mutation is a single call.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl RendezvousServer {
    /// Listens on `addr` (port 0 picks a free one) for the `size` ranks of
    /// job `job_id`, which authenticate with `secret`.
    pub fn bind(
        addr: SocketAddr,
        job_id: &str,
        size: u32,
        secret: JobSecret,
    ) -> Result<RendezvousServer, RendezvousError> {
        if size == 0 {
            return Err(RendezvousError::EmptyJob);
        }
        let listener =
            TcpListener::bind(addr).map_err(|source| RendezvousError::Bind { addr, source })?;
        Self::serve(listener, job_id, size, secret)
    }

    /// Listens on the port derived from job and step id ([`derived_port`]) or,
    /// when that is taken, the next free port of its sequence. Ranks find it
    /// with [`RendezvousClient::connect_derived`](super::RendezvousClient::connect_derived).
    pub(crate) fn bind_derived(
        ip: IpAddr,
        job_id: &str,
        step_id: &str,
        size: u32,
        secret: JobSecret,
    ) -> Result<RendezvousServer, RendezvousError> {
        let base = derived_port(job_id, step_id);
        Self::bind_from_port(ip, base, &derived_job_id(job_id, step_id), size, secret)
    }

    /// Like `bind_derived` with an explicit first port
    /// and the handshake job id as given: tests use it to force two jobs onto
    /// the same sequence.
    pub fn bind_from_port(
        ip: IpAddr,
        base_port: u16,
        job_id: &str,
        size: u32,
        secret: JobSecret,
    ) -> Result<RendezvousServer, RendezvousError> {
        if size == 0 {
            return Err(RendezvousError::EmptyJob);
        }
        for port in port_sequence(base_port) {
            let addr = SocketAddr::new(ip, port);
            match TcpListener::bind(addr) {
                Ok(listener) => return Self::serve(listener, job_id, size, secret),
                Err(error) if error.kind() == std::io::ErrorKind::AddrInUse => {
                    tracing::debug!(%addr, "derived rendezvous port in use, trying the next");
                }
                Err(source) => return Err(RendezvousError::Bind { addr, source }),
            }
        }
        Err(RendezvousError::NoFreePort {
            ip,
            first: base_port,
            last: port_sequence(base_port).last().unwrap_or(base_port),
        })
    }

    fn serve(
        listener: TcpListener,
        job_id: &str,
        size: u32,
        secret: JobSecret,
    ) -> Result<RendezvousServer, RendezvousError> {
        let local_addr = listener
            .local_addr()
            .map_err(|source| RendezvousError::Bind {
                addr: SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
                source,
            })?;
        let failed = |source: std::io::Error| RendezvousError::Bind {
            addr: local_addr,
            source,
        };
        let (waker, woken) = UnixStream::pair().map_err(failed)?;
        listener.set_nonblocking(true).map_err(failed)?;
        woken.set_nonblocking(true).map_err(failed)?;
        let poller = epoll::create(epoll::CreateFlags::CLOEXEC).map_err(|e| failed(e.into()))?;
        for (fd, key) in [
            (std::os::fd::AsFd::as_fd(&listener), LISTENER),
            (std::os::fd::AsFd::as_fd(&woken), WAKER),
        ] {
            epoll::add(
                &poller,
                fd,
                epoll::EventData::new_u64(key),
                epoll::EventFlags::IN,
            )
            .map_err(|e| failed(e.into()))?;
        }
        let shared = Arc::new(Shared {
            stopping: AtomicBool::new(false),
            state: Mutex::new(StoreState::new(size)),
        });
        let mut event_loop = Loop {
            shared: Arc::clone(&shared),
            job_id: job_id.to_string(),
            secret,
            poller,
            listener,
            _woken: woken,
            connections: HashMap::new(),
            ranks: HashMap::new(),
            next_key: FIRST_CONNECTION,
        };
        let thread = std::thread::Builder::new()
            .name("lumen-rendezvous".into())
            .spawn(move || event_loop.run())
            .map_err(failed)?;
        Ok(RendezvousServer {
            local_addr,
            shared,
            waker,
            thread: Some(thread),
        })
    }

    /// The address the server listens on (with the port it got).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Who is connected, gone and waiting in barriers right now.
    pub fn status(&self) -> StoreStatus {
        self.shared.lock().status()
    }

    /// Stops serving: closes the listener and every connection and joins the
    /// thread. Ranks still waiting see their connection break. Idempotent.
    pub fn shutdown(&mut self) {
        let Some(thread) = self.thread.take() else {
            return;
        };
        self.shared.stopping.store(true, Ordering::SeqCst);
        if let Err(error) = (&self.waker).write_all(&[1]) {
            tracing::warn!(%error, "could not wake the rendezvous loop; it stops within its tick");
        }
        if thread.join().is_err() {
            tracing::error!("the rendezvous thread panicked");
        }
    }
}

impl Drop for RendezvousServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Where a connection stands.
enum Phase {
    /// Waiting for the peer's `Hello`.
    Hello,
    /// Challenge sent, waiting for the peer's `Proof`.
    Proof(Acceptor),
    /// Authenticated and registered as this rank.
    Rank(u32),
    /// Authenticated as [`OBSERVER_RANK`]: a tool (`lumen status`) that
    /// reads keys and is not one of the job's ranks.
    Observer,
}

struct Connection {
    stream: TcpStream,
    phase: Phase,
    /// Bytes read and not yet taken as frames.
    input: Vec<u8>,
    /// Bytes queued to write, from `written` on.
    output: Vec<u8>,
    written: usize,
    /// Accepted at (for the handshake bound), or last write progress while
    /// `output` is not empty (for the write bound).
    since: Instant,
    /// Whether the epoll set asks for writability too.
    want_write: bool,
    /// Close once `output` is written (a refusal on its way).
    closing: bool,
}

impl Connection {
    fn pending_output(&self) -> bool {
        self.written < self.output.len()
    }

    /// Takes one complete frame off `input`, if there is one.
    fn next_frame(&mut self) -> Result<Option<(FrameHeader, Vec<u8>)>, String> {
        if self.input.len() < HEADER_LEN {
            return Ok(None);
        }
        let max = match self.phase {
            Phase::Rank(_) | Phase::Observer => MAX_FRAME,
            _ => HANDSHAKE_MAX_FRAME,
        };
        let mut bytes = [0u8; HEADER_LEN];
        bytes.copy_from_slice(&self.input[..HEADER_LEN]);
        let header = FrameHeader::decode(&bytes, max).map_err(|e| e.to_string())?;
        let end = HEADER_LEN + header.len as usize;
        if self.input.len() < end {
            return Ok(None);
        }
        let payload = self.input[HEADER_LEN..end].to_vec();
        self.input.drain(..end);
        Ok(Some((header, payload)))
    }
}

/// The server's thread: the epoll set, the connections and the state.
struct Loop {
    shared: Arc<Shared>,
    job_id: String,
    secret: JobSecret,
    poller: std::os::fd::OwnedFd,
    listener: TcpListener,
    _woken: UnixStream,
    connections: HashMap<u64, Connection>,
    /// Registered ranks' connections.
    ranks: HashMap<u32, u64>,
    next_key: u64,
}

impl Loop {
    fn run(&mut self) {
        let mut events: Vec<epoll::Event> = Vec::with_capacity(256);
        let tick = rustix::event::Timespec {
            tv_sec: 0,
            tv_nsec: 100_000_000,
        };
        while !self.shared.stopping.load(Ordering::SeqCst) {
            events.clear();
            if let Err(error) = epoll::wait(
                &self.poller,
                rustix::buffer::spare_capacity(&mut events),
                Some(&tick),
            ) {
                if error != rustix::io::Errno::INTR {
                    tracing::error!(%error, "rendezvous: epoll_wait failed; the store stops");
                    return;
                }
            }
            for event in &events {
                match event.data.u64() {
                    LISTENER => self.accept_all(),
                    WAKER => {}
                    key => {
                        let flags = event.flags;
                        if flags.contains(epoll::EventFlags::OUT) {
                            self.flush(key);
                        }
                        if flags.intersects(
                            epoll::EventFlags::IN | epoll::EventFlags::HUP | epoll::EventFlags::ERR,
                        ) {
                            self.read(key);
                        }
                    }
                }
            }
            self.expire();
        }
        // Dropping the connections closes them: waiting ranks see EOF.
    }

    fn accept_all(&mut self) {
        loop {
            let stream = match self.listener.accept() {
                Ok((stream, _)) => stream,
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(error) => {
                    // Out of fds, say: leave the rest queued for the next tick.
                    tracing::warn!(%error, "rendezvous accept failed");
                    return;
                }
            };
            // Bound the connections a misbehaving peer can open.
            let limit = self.shared.lock().size() as usize * 2 + 64;
            if self.connections.len() >= limit {
                tracing::warn!(limit, "too many rendezvous connections; dropping a new one");
                continue;
            }
            if stream.set_nonblocking(true).is_err() {
                continue;
            }
            let _ = stream.set_nodelay(true);
            let key = self.next_key;
            self.next_key += 1;
            let registered = epoll::add(
                &self.poller,
                &stream,
                epoll::EventData::new_u64(key),
                epoll::EventFlags::IN | epoll::EventFlags::RDHUP,
            );
            if let Err(error) = registered {
                tracing::warn!(%error, "rendezvous: cannot watch a new connection");
                continue;
            }
            self.connections.insert(
                key,
                Connection {
                    stream,
                    phase: Phase::Hello,
                    input: Vec::new(),
                    output: Vec::new(),
                    written: 0,
                    since: Instant::now(),
                    want_write: false,
                    closing: false,
                },
            );
        }
    }

    /// Reads what the connection has, then applies each complete frame.
    fn read(&mut self, key: u64) {
        let Some(conn) = self.connections.get_mut(&key) else {
            return;
        };
        let mut ended = false;
        let mut chunk = [0u8; 64 << 10];
        let mut taken = 0;
        while taken < READ_BURST {
            match conn.stream.read(&mut chunk) {
                Ok(0) => {
                    ended = true;
                    break;
                }
                Ok(n) => {
                    conn.input.extend_from_slice(&chunk[..n]);
                    taken += n;
                }
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
                Err(error) => {
                    tracing::debug!(%error, "rendezvous connection ended");
                    ended = true;
                    break;
                }
            }
        }
        loop {
            let Some(conn) = self.connections.get_mut(&key) else {
                return;
            };
            if conn.closing {
                break;
            }
            match conn.next_frame() {
                Ok(Some((header, payload))) => self.apply(key, header, payload),
                Ok(None) => break,
                Err(error) => {
                    tracing::debug!(%error, "rendezvous: bad frame; closing the connection");
                    self.close(key);
                    return;
                }
            }
        }
        if ended {
            self.close(key);
        }
    }

    /// One frame from connection `key`, in its phase.
    fn apply(&mut self, key: u64, header: FrameHeader, payload: Vec<u8>) {
        let Some(conn) = self.connections.get_mut(&key) else {
            return;
        };
        match std::mem::replace(&mut conn.phase, Phase::Hello) {
            Phase::Hello => {
                match Acceptor::hello(&header, &payload, &self.job_id, SERVER_RANK, &self.secret) {
                    Ok((pending, challenge)) => {
                        conn.phase = Phase::Proof(pending);
                        self.queue(key, &challenge);
                    }
                    Err(Refused { error, tell }) => {
                        // Expected for ranks of other jobs walking a derived port sequence.
                        tracing::debug!(%error, "rendezvous handshake failed");
                        match tell {
                            Some(frame) => {
                                conn.closing = true;
                                self.queue(key, &frame);
                            }
                            None => self.close(key),
                        }
                    }
                }
            }
            Phase::Proof(pending) => match pending.proof(&header, &payload) {
                Ok(OBSERVER_RANK) => self.observe(key),
                Ok(rank) => self.register(key, rank),
                Err(error) => {
                    tracing::debug!(%error, "rendezvous handshake failed");
                    self.close(key);
                }
            },
            Phase::Observer => {
                conn.phase = Phase::Observer;
                self.observed(key, header, &payload);
            }
            Phase::Rank(rank) => {
                conn.phase = Phase::Rank(rank);
                if header.kind != FrameKind::Store {
                    tracing::warn!(rank, kind = ?header.kind, "rendezvous: unexpected frame kind; closing the connection");
                    self.close(key);
                    return;
                }
                match RequestFrame::decode(&payload) {
                    Ok(request) => {
                        let replies = self.shared.lock().handle(rank, request);
                        self.dispatch(replies);
                    }
                    Err(error) => {
                        tracing::warn!(rank, %error, "rendezvous: malformed request; closing the connection");
                        self.refuse(key, format!("malformed request from rank {rank}: {error}"));
                    }
                }
            }
        }
    }

    /// A request from an observer: only `Get`, answered at once from the
    /// values stored so far (an observer never waits on the job's ranks).
    fn observed(&mut self, key: u64, header: FrameHeader, payload: &[u8]) {
        if header.kind != FrameKind::Store {
            self.close(key);
            return;
        }
        let request = match RequestFrame::decode(payload) {
            Ok(request) => request,
            Err(error) => {
                self.refuse(key, format!("malformed request from an observer: {error}"));
                return;
            }
        };
        let reply = match request.request {
            Request::Get { key: name } => match self.shared.lock().value(&name) {
                Some(value) => Reply::Value { key: name, value },
                None => Reply::Error {
                    reason: format!("no rank of this job has put {name:?} (yet)"),
                },
            },
            _ => Reply::Error {
                reason: "an observer may only read keys".into(),
            },
        };
        let frame = ReplyFrame {
            id: request.id,
            reply,
        };
        self.queue_reply(key, &frame);
    }

    /// An authenticated observer: welcomed, never counted among the ranks.
    fn observe(&mut self, key: u64) {
        let Some(conn) = self.connections.get_mut(&key) else {
            return;
        };
        conn.phase = Phase::Observer;
        tracing::debug!(peer = ?conn.stream.peer_addr().ok(), "an observer joined the rendezvous");
        let size = self.shared.lock().size();
        let frame = ReplyFrame {
            id: 0,
            reply: Reply::Welcome { size },
        };
        self.queue_reply(key, &frame);
    }

    fn register(&mut self, key: u64, rank: u32) {
        let connected = self.shared.lock().connect(rank);
        let Some(conn) = self.connections.get_mut(&key) else {
            return;
        };
        match connected {
            Err(refusal) => {
                let peer = conn.stream.peer_addr().ok();
                tracing::warn!(rank, ?peer, %refusal, "rendezvous refused a connection");
                self.refuse(key, refusal.to_string());
            }
            Ok(()) => {
                conn.phase = Phase::Rank(rank);
                self.ranks.insert(rank, key);
                tracing::debug!(rank, "rank joined the rendezvous");
                let size = self.shared.lock().size();
                let frame = ReplyFrame {
                    id: 0,
                    reply: Reply::Welcome { size },
                };
                self.queue_reply(key, &frame);
            }
        }
    }

    /// Tells the peer why in an error reply, then closes once it is written.
    fn refuse(&mut self, key: u64, reason: String) {
        if let Some(conn) = self.connections.get_mut(&key) {
            conn.closing = true;
        }
        let frame = ReplyFrame {
            id: 0,
            reply: Reply::Error { reason },
        };
        self.queue_reply(key, &frame);
        self.finish_closing(key);
    }

    /// Sends each reply to its rank's connection (dropped for a rank that is gone).
    fn dispatch(&mut self, replies: Vec<(u32, ReplyFrame)>) {
        for (rank, frame) in replies {
            match self.ranks.get(&rank) {
                Some(&key) => self.queue_reply(key, &frame),
                None => tracing::debug!(rank, "rendezvous reply for a rank that is gone"),
            }
        }
    }

    fn queue_reply(&mut self, key: u64, frame: &ReplyFrame) {
        let payload = frame.encode();
        let Ok(len) = u32::try_from(payload.len()) else {
            tracing::error!("rendezvous reply above 4 GiB dropped");
            return;
        };
        let header = FrameHeader::control(FrameKind::Store, SERVER_RANK, len);
        self.queue(key, &encode_frame(&header, &payload));
    }

    fn queue(&mut self, key: u64, bytes: &[u8]) {
        let Some(conn) = self.connections.get_mut(&key) else {
            return;
        };
        if !conn.pending_output() {
            conn.output.clear();
            conn.written = 0;
            conn.since = Instant::now();
        }
        conn.output.extend_from_slice(bytes);
        self.flush(key);
    }

    /// Writes what the socket takes; asks epoll for writability while
    /// something is left.
    fn flush(&mut self, key: u64) {
        let Some(conn) = self.connections.get_mut(&key) else {
            return;
        };
        let mut broken = false;
        while conn.pending_output() {
            match conn.stream.write(&conn.output[conn.written..]) {
                Ok(0) => {
                    broken = true;
                    break;
                }
                Ok(n) => {
                    conn.written += n;
                    conn.since = Instant::now();
                }
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
                Err(error) => {
                    tracing::debug!(%error, "rendezvous reply not delivered");
                    broken = true;
                    break;
                }
            }
        }
        if broken {
            self.close(key);
            return;
        }
        let want = conn.pending_output();
        if want != conn.want_write {
            let mut flags = epoll::EventFlags::IN | epoll::EventFlags::RDHUP;
            if want {
                flags |= epoll::EventFlags::OUT;
            }
            if epoll::modify(
                &self.poller,
                &conn.stream,
                epoll::EventData::new_u64(key),
                flags,
            )
            .is_ok()
            {
                conn.want_write = want;
            }
        }
        if !want {
            conn.output.clear();
            conn.written = 0;
        }
        self.finish_closing(key);
    }

    /// Closes a connection marked `closing` once its output is out.
    fn finish_closing(&mut self, key: u64) {
        if let Some(conn) = self.connections.get(&key) {
            if conn.closing && !conn.pending_output() {
                self.close(key);
            }
        }
    }

    /// Drops a connection; a registered rank's departure goes to the state.
    fn close(&mut self, key: u64) {
        let Some(conn) = self.connections.remove(&key) else {
            return;
        };
        let _ = epoll::delete(&self.poller, &conn.stream);
        if let Phase::Rank(rank) = conn.phase {
            if self.ranks.get(&rank) == Some(&key) {
                self.ranks.remove(&rank);
                tracing::debug!(rank, "rank left the rendezvous");
                let replies = self.shared.lock().disconnected(rank);
                self.dispatch(replies);
            }
        }
    }

    /// Drops handshakes that took too long and ranks that stopped reading.
    fn expire(&mut self) {
        let now = Instant::now();
        let late: Vec<u64> = (self.connections.iter())
            .filter(|(_, conn)| match conn.phase {
                Phase::Hello | Phase::Proof(_) => now - conn.since > HANDSHAKE_TIMEOUT,
                Phase::Rank(_) | Phase::Observer => {
                    conn.pending_output() && now - conn.since > WRITE_TIMEOUT
                }
            })
            .map(|(&key, _)| key)
            .collect();
        for key in late {
            tracing::warn!(
                "rendezvous: dropping a connection that did not authenticate or read in time"
            );
            self.close(key);
        }
    }
}
