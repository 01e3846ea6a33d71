//! The store's IO shell: a listener and one thread per connection around a
//! shared [`StoreState`].
//!
//! A thread per connection is simple and enough for bootstrap, where a few
//! hundred ranks each send a handful of requests; the protocol core is
//! sans-IO, so an event loop can replace the threads without touching it.
//!
//! Each connection thread runs the handshake (bounded by
//! [`HANDSHAKE_TIMEOUT`], so a silent peer cannot hold it), registers the
//! rank, then reads requests and applies them under one mutex. Replies are
//! written under the same mutex, so every rank sees replies in the order the
//! state produced them; each socket has a write timeout so that a stuck rank
//! cannot stall the store for long.

use std::collections::HashMap;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use lumen_transport::auth::JobSecret;
use lumen_transport::frame::{encode_frame, FrameHeader, FrameKind};
use lumen_transport::handshake;

use super::{
    derived_job_id, derived_port, port_sequence, RendezvousError, StoreState, MAX_FRAME,
    SERVER_RANK,
};
use crate::wire::{Reply, ReplyFrame, RequestFrame, StoreStatus};

/// How long a new connection may take to authenticate.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a reply may block on a rank that does not read.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// The rendezvous store serving one job.
///
/// Stops on [`shutdown`](Self::shutdown) or when dropped: the listener closes,
/// every connection is shut down and every thread joined.
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
    acceptor: Option<JoinHandle<()>>,
}

#[derive(Debug)]
struct Shared {
    job_id: String,
    secret: JobSecret,
    stopping: AtomicBool,
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    state: StoreState,
    /// Write halves of registered ranks.
    writers: HashMap<u32, TcpStream>,
    /// Every open connection by connection number, to shut down on stop.
    open: HashMap<u64, TcpStream>,
    threads: Vec<JoinHandle<()>>,
    next_connection: u64,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic in another connection thread leaves the state consistent
        // enough to keep serving: each mutation is a single call.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Inner {
    fn send(&mut self, replies: Vec<(u32, ReplyFrame)>) {
        for (rank, frame) in replies {
            if let Some(stream) = self.writers.get_mut(&rank) {
                if let Err(error) = write_reply(stream, &frame) {
                    // The rank's own connection thread sees the broken socket
                    // and reports the disconnect.
                    tracing::debug!(rank, %error, "rendezvous reply not delivered");
                }
            }
        }
    }
}

fn write_reply(stream: &mut TcpStream, frame: &ReplyFrame) -> std::io::Result<()> {
    let payload = frame.encode();
    let len = u32::try_from(payload.len())
        .map_err(|_| std::io::Error::other("rendezvous reply above 4 GiB"))?;
    let header = FrameHeader::control(FrameKind::Store, SERVER_RANK, len);
    stream.write_all(&encode_frame(&header, &payload))
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
        let shared = Arc::new(Shared {
            job_id: job_id.to_string(),
            secret,
            stopping: AtomicBool::new(false),
            inner: Mutex::new(Inner {
                state: StoreState::new(size),
                writers: HashMap::new(),
                open: HashMap::new(),
                threads: Vec::new(),
                next_connection: 0,
            }),
        });
        let for_acceptor = Arc::clone(&shared);
        let acceptor = std::thread::Builder::new()
            .name("lumen-rendezvous".into())
            .spawn(move || accept_loop(listener, for_acceptor))
            .map_err(|source| RendezvousError::Bind {
                addr: local_addr,
                source,
            })?;
        Ok(RendezvousServer {
            local_addr,
            shared,
            acceptor: Some(acceptor),
        })
    }

    /// The address the server listens on (with the port it got).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Who is connected, gone and waiting in barriers right now.
    pub fn status(&self) -> StoreStatus {
        self.shared.lock().state.status()
    }

    /// Stops serving: closes the listener and every connection and joins the
    /// threads. Ranks still waiting see their connection break. Idempotent.
    pub fn shutdown(&mut self) {
        let Some(acceptor) = self.acceptor.take() else {
            return;
        };
        self.shared.stopping.store(true, Ordering::SeqCst);
        // Wake the blocking accept with a connection of our own.
        let wake = match self.local_addr.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        let woken = TcpStream::connect_timeout(
            &SocketAddr::new(wake, self.local_addr.port()),
            Duration::from_secs(2),
        );
        if let Err(error) = &woken {
            tracing::warn!(%error, "could not wake the rendezvous acceptor; it exits on its next connection");
        }
        let threads = {
            let mut inner = self.shared.lock();
            for stream in inner.open.values() {
                let _ = stream.shutdown(std::net::Shutdown::Both);
            }
            inner.writers.clear();
            std::mem::take(&mut inner.threads)
        };
        if woken.is_ok() && acceptor.join().is_err() {
            tracing::error!("the rendezvous acceptor thread panicked");
        }
        for thread in threads {
            if thread.join().is_err() {
                tracing::error!("a rendezvous connection thread panicked");
            }
        }
    }
}

impl Drop for RendezvousServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let accepted = listener.accept();
        if shared.stopping.load(Ordering::SeqCst) {
            return;
        }
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(error) => {
                tracing::warn!(%error, "rendezvous accept failed");
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        let mut inner = shared.lock();
        // Checked again under the lock: shutdown drains `open` under it.
        if shared.stopping.load(Ordering::SeqCst) {
            return;
        }
        inner.threads.retain(|thread| !thread.is_finished());
        // Bound the connections a misbehaving peer can open.
        let limit = inner.state.size() as usize * 2 + 64;
        if inner.open.len() >= limit {
            tracing::warn!(limit, "too many rendezvous connections; dropping a new one");
            continue;
        }
        let Ok(registered) = stream.try_clone() else {
            continue;
        };
        let connection = inner.next_connection;
        inner.next_connection += 1;
        inner.open.insert(connection, registered);
        let for_thread = Arc::clone(&shared);
        let spawned = std::thread::Builder::new()
            .name("lumen-rendezvous-conn".into())
            .spawn(move || {
                serve_connection(&for_thread, stream);
                for_thread.lock().open.remove(&connection);
            });
        match spawned {
            Ok(thread) => inner.threads.push(thread),
            Err(error) => {
                tracing::warn!(%error, "could not start a rendezvous connection thread");
                inner.open.remove(&connection);
            }
        }
    }
}

fn serve_connection(shared: &Shared, mut stream: TcpStream) {
    let peer = stream.peer_addr().ok();
    let _ = stream.set_nodelay(true);
    if let Err(error) = stream.set_read_timeout(Some(HANDSHAKE_TIMEOUT)) {
        tracing::warn!(%error, "rendezvous: cannot bound the handshake");
        return;
    }
    let rank = match handshake::accept(&mut stream, &shared.job_id, SERVER_RANK, &shared.secret) {
        Ok(rank) => rank,
        Err(error) => {
            // Expected for ranks of other jobs walking a derived port sequence.
            tracing::debug!(?peer, %error, "rendezvous handshake failed");
            return;
        }
    };
    if stream.set_read_timeout(None).is_err()
        || stream.set_write_timeout(Some(WRITE_TIMEOUT)).is_err()
    {
        return;
    }
    {
        let mut inner = shared.lock();
        if shared.stopping.load(Ordering::SeqCst) {
            return;
        }
        if let Err(refusal) = inner.state.connect(rank) {
            tracing::warn!(rank, ?peer, %refusal, "rendezvous refused a connection");
            let frame = ReplyFrame {
                id: 0,
                reply: Reply::Error {
                    reason: refusal.to_string(),
                },
            };
            let _ = write_reply(&mut stream, &frame);
            return;
        }
        let writer = match stream.try_clone() {
            Ok(writer) => writer,
            Err(error) => {
                tracing::warn!(rank, %error, "rendezvous: cannot keep a connection");
                let replies = inner.state.disconnected(rank);
                inner.send(replies);
                return;
            }
        };
        inner.writers.insert(rank, writer);
        let size = inner.state.size();
        inner.send(vec![(
            rank,
            ReplyFrame {
                id: 0,
                reply: Reply::Welcome { size },
            },
        )]);
    }
    tracing::debug!(rank, ?peer, "rank joined the rendezvous");
    serve_requests(shared, &mut stream, rank);
    let mut inner = shared.lock();
    inner.writers.remove(&rank);
    let replies = inner.state.disconnected(rank);
    inner.send(replies);
}

/// Reads and applies requests until the connection ends or misbehaves.
fn serve_requests(shared: &Shared, stream: &mut TcpStream, rank: u32) {
    loop {
        let (header, payload) = match handshake::read_frame(stream, MAX_FRAME) {
            Ok(frame) => frame,
            Err(error) => {
                tracing::debug!(rank, %error, "rendezvous connection ended");
                return;
            }
        };
        if header.kind != FrameKind::Store {
            tracing::warn!(rank, kind = ?header.kind, "rendezvous: unexpected frame kind; closing the connection");
            return;
        }
        let request = match RequestFrame::decode(&payload) {
            Ok(request) => request,
            Err(error) => {
                tracing::warn!(rank, %error, "rendezvous: malformed request; closing the connection");
                let frame = ReplyFrame {
                    id: 0,
                    reply: Reply::Error {
                        reason: format!("malformed request from rank {rank}: {error}"),
                    },
                };
                shared.lock().send(vec![(rank, frame)]);
                return;
            }
        };
        let mut inner = shared.lock();
        let replies = inner.state.handle(rank, request);
        inner.send(replies);
    }
}
