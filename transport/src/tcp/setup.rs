//! Setting up and running the TCP side of an endpoint ([`TcpDomain`]):
//! connect to higher ranks and accept lower ones, authenticate each
//! connection, then start the acceptor (late connections) and the
//! background receiver (epoll, or io_uring on request).
//!
//! Invariant: every connection passes the job's HMAC handshake before any
//! of its bytes are read as frames.

use std::collections::HashMap;
use std::io::{self};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::config::{TcpBackend, TcpConnect};
use crate::error::TransportError;
use crate::frame::{FrameHeader, FrameKind};
use crate::handshake;
use crate::sys::Epoll;
use crate::types::{EndpointOptions, PeerAddress, Rank, Route};
use crate::wire::{self};

use super::conn::{ConnState, NewConnection};
use super::connect::{Connector, PeerSettings, Registrar};
use super::peer::TcpPeer;
use super::readers::{Connection, TcpReaders, SCRATCH_BYTES};
use super::Inbox;

/// With `TcpConnect::Auto`, more remote ranks than this connect on first
/// use (see `connect`): below it, connecting all at start costs little and
/// every peer's death shows up as a closed connection.
pub(crate) const LAZY_ABOVE: usize = 64;

/// Connections made at setup, before the receiver runs.
pub(crate) struct TcpSetup {
    pub(super) backend: TcpBackend,
    pub(super) max_frame: u32,
    pub(super) max_message: u64,
    pub(super) connector: Arc<Connector>,
    pub(super) read_sides: Vec<NewConnection>,
    pub(super) listener: TcpListener,
    pub(super) job_id: String,
    pub(super) secret: crate::auth::JobSecret,
    pub(super) rank: Rank,
    pub(super) size: u32,
}

/// The running TCP side of an endpoint.
pub(crate) struct TcpDomain {
    pub(super) connector: Arc<Connector>,
    pub(super) stop: Arc<AtomicBool>,
    pub(super) listener_fd: RawFd,
    pub(super) _listener: TcpListener,
    pub(super) receiver: Option<JoinHandle<()>>,
    pub(super) acceptor: Option<JoinHandle<()>>,
    pub(super) backend_name: &'static str,
    /// Written at shutdown: wakes the background receiver out of its wait
    /// (the epoll receiver watches the other end under key 0).
    pub(super) waker: Option<Arc<std::os::fd::OwnedFd>>,
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
        let lazy = match options.config.tcp_connect {
            TcpConnect::Eager => false,
            TcpConnect::Lazy => true,
            TcpConnect::Auto => remote.len() > LAZY_ABOVE,
        };
        let lazy = if lazy && conns > 1 {
            tracing::info!(
                "connecting on first use does not open bulk lanes (LUMEN_TCP_CONNS={conns}): connecting every peer at start"
            );
            false
        } else {
            lazy
        };
        let settings = PeerSettings {
            zerocopy_min: options.config.tcp_zerocopy_min,
            stripe_min: options.config.tcp_stripe_min,
            failure_timeout: options.config.failure_timeout,
            connect_timeout: timeout,
            tune_malloc: options
                .config
                .tune_malloc
                .then_some(options.config.max_frame as usize),
        };
        // Lazily, nobody is connected now: connections open on first use.
        let expected: Vec<Rank> = if lazy {
            Vec::new()
        } else {
            remote.iter().copied().filter(|&r| r < me).collect()
        };
        let initiate: Vec<Rank> = if lazy {
            Vec::new()
        } else {
            remote.iter().copied().filter(|&r| r > me).collect()
        };
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
        for &r in &initiate {
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
            if let Some(bound) = options.config.failure_timeout {
                if let Err(e) =
                    crate::sys::set_failure_timeout(std::os::fd::AsRawFd::as_raw_fd(&stream), bound)
                {
                    tracing::debug!(peer = rank, "TCP_USER_TIMEOUT not set: {e}");
                }
            }
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
            peer_map.insert(rank, Arc::new(TcpPeer::new(rank, stream, &settings, lanes)));
            read_sides.push(NewConnection {
                rank,
                stream: read,
                primary: true,
                lane: false,
            });
        }
        let connector = Arc::new(Connector {
            me,
            job_id: options.job_id.clone(),
            secret: options.secret.clone(),
            addresses: peers.iter().map(|p| p.tcp).collect(),
            remote: routes.iter().map(|r| matches!(r, Route::Remote)).collect(),
            lazy,
            settings,
            peers: RwLock::new(peer_map),
            connecting: Mutex::new(()),
            registrar: Mutex::new(None),
            closed: AtomicBool::new(false),
            opened: AtomicU64::new(0),
            adopted: AtomicU64::new(0),
        });
        Ok(TcpSetup {
            backend: options.config.tcp_backend,
            max_frame: options.config.max_frame,
            max_message: options.config.max_message,
            connector,
            read_sides,
            listener,
            job_id: options.job_id.clone(),
            secret: options.secret.clone(),
            rank: me,
            size: options.size,
        })
    }

    /// The sending half toward `rank`.
    /// Connections this rank holds for sending, and those it opened and
    /// accepted after setup (on first use).
    pub(crate) fn connections(&self) -> (usize, u64, u64) {
        (
            self.connector.connected(),
            self.connector.opened.load(Ordering::Relaxed),
            self.connector.adopted.load(Ordering::Relaxed),
        )
    }

    /// "io_uring" or "epoll".
    pub(crate) fn backend_name(&self) -> &'static str {
        self.backend_name
    }

    /// Says goodbye to every peer and stops the threads.
    pub(crate) fn shutdown(mut self, me: Rank) {
        let goodbye = wire::encode_reason(true, "endpoint closed");
        self.connector.closed.store(true, Ordering::Release);
        // Taken after `closed`: a connect in progress finishes first.
        drop(
            self.connector
                .connecting
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        );
        let peers = self.connector.all();
        for peer in &peers {
            peer.goodbye(
                &FrameHeader::control(FrameKind::Goodbye, me, goodbye.len() as u32),
                &goodbye,
            );
        }
        self.stop.store(true, Ordering::Release);
        if let Some(waker) = &self.waker {
            let _ = rustix::io::write(&**waker, &1u64.to_ne_bytes());
        }
        // SAFETY: shutting down our own listening socket wakes the blocked accept.
        unsafe { libc::shutdown(self.listener_fd, libc::SHUT_RDWR) };
        if let Some(h) = self.acceptor.take() {
            let _ = h.join();
        }
        if let Some(h) = self.receiver.take() {
            // The receiver itself ends the endpoint when it drops the last
            // reference (an endpoint dropped without `close`).
            if h.thread().id() != std::thread::current().id() {
                let _ = h.join();
            }
        }
        for peer in &peers {
            peer.shutdown();
            tracing::trace!(peer = peer.rank, "connection shut down");
        }
    }
}

impl TcpSetup {
    /// Who holds the sending halves (shared with the running domain).
    pub(crate) fn connector(&self) -> Arc<Connector> {
        self.connector.clone()
    }

    /// Starts the acceptor and receiver threads; `None` when there is nothing remote
    /// and nothing can arrive.
    pub(crate) fn start<I: Inbox + 'static>(
        self,
        shared: &Arc<I>,
    ) -> Result<Option<TcpDomain>, TransportError> {
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel::<NewConnection>();
        for conn in self.read_sides {
            let _ = tx.send(conn);
        }
        // Without a waker, shutdown and connections made after setup wait
        // out the receiver's 20 ms wait.
        let waker = rustix::event::eventfd(
            0,
            rustix::event::EventfdFlags::CLOEXEC | rustix::event::EventfdFlags::NONBLOCK,
        )
        .map(Arc::new)
        .map_err(|e| tracing::debug!("no waker for the TCP receiver: {e}"))
        .ok();
        let woken = waker.clone();
        *self
            .connector
            .registrar
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(Registrar {
            tx: tx.clone(),
            waker: waker.clone(),
        });
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
            let connector = self.connector.clone();
            std::thread::Builder::new()
                .name(format!("lumen-accept-{rank}"))
                .spawn(move || {
                    let me = (rank, size);
                    accept_late(listener, &job_id, me, &secret, tx, &connector, &stop)
                })
                .map_err(|source| TransportError::Io {
                    context: "starting the accept thread".into(),
                    source,
                })?
        };
        let weak: Weak<dyn Inbox> = Arc::downgrade(shared) as Weak<dyn Inbox>;
        let (max_frame, max_message) = (self.max_frame, self.max_message);
        let uring = match self.backend {
            // Caller-driven reading measured faster than the io_uring thread
            // (module docs), so only an explicit choice gets io_uring.
            TcpBackend::Epoll | TcpBackend::Auto => None,
            choice => match super::uring::UringCore::new() {
                Ok(uring) => Some(Arc::new(uring)),
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
        let readers = shared.readers().clone();
        if let Some(uring) = &uring {
            let _ = readers.uring.set(uring.clone());
        }
        let receiver = spawn_receiver(shared.rank(), move || match uring {
            Some(uring) => uring.run(
                weak,
                &readers,
                rx,
                receiver_stop,
                woken,
                (max_frame, max_message),
            ),
            None => background_receiver(
                weak,
                &readers,
                rx,
                receiver_stop,
                woken,
                (max_frame, max_message),
            ),
        })?;
        Ok(Some(TcpDomain {
            connector: self.connector,
            stop,
            listener_fd,
            _listener: self.listener,
            receiver: Some(receiver),
            acceptor: Some(acceptor),
            backend_name,
            waker,
        }))
    }
}

pub(super) fn spawn_receiver(
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

pub(super) fn accept_expected(
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
pub(super) fn accept_late(
    listener: TcpListener,
    job_id: &str,
    (me, size): (Rank, u32),
    secret: &crate::auth::JobSecret,
    tx: mpsc::Sender<NewConnection>,
    connector: &Connector,
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
            Ok(rank) if rank < size && rank != me && connector.lazy => {
                let _ = stream.set_read_timeout(None);
                let _ = stream.set_nodelay(true);
                connector.adopted.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(
                    peer = rank,
                    "accepted a connection on first use from {from}"
                );
                if let Err(e) = connector.adopt(rank, stream) {
                    tracing::debug!(peer = rank, "could not adopt its connection: {e}");
                    return; // the endpoint is closing
                }
            }
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
pub(super) fn background_receiver(
    shared: Weak<dyn Inbox>,
    readers: &TcpReaders,
    rx: mpsc::Receiver<NewConnection>,
    stop: Arc<AtomicBool>,
    woken: Option<Arc<std::os::fd::OwnedFd>>,
    (max_frame, max_message): (u32, u64),
) {
    let epoll = Epoll::new()
        .map_err(|e| {
            tracing::error!("epoll unavailable ({e}): TCP peers are read only by waiting callers")
        })
        .ok();
    // Key 0 (connections count from 1): readable once shutdown has begun.
    if let (Some(epoll), Some(woken)) = (&epoll, &woken) {
        if let Err(e) = epoll.add(woken.as_raw_fd(), 0) {
            tracing::debug!("shutdown waker not watched ({e}): shutdown waits up to 20 ms");
        }
    }
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
                state: Mutex::new(ConnState::new(conn, max_frame, max_message)),
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
            if key == 0 {
                // The waker: shutdown began, or connections are waiting in `rx`.
                if let Some(woken) = &woken {
                    let mut count = [0u8; 8];
                    let _ = rustix::io::read(&**woken, &mut count);
                }
                continue;
            }
            let Some(conn) = conns.get(&key) else {
                continue;
            };
            if !conn.closed.load(Ordering::Acquire) {
                let mut state = conn.state.lock().unwrap_or_else(|p| p.into_inner());
                conn.read(&*shared, &mut state, &mut scratch);
            }
            if conn.closed.load(Ordering::Acquire) {
                epoll.delete(conn.fd);
                readers.remove(key);
                conns.remove(&key);
            }
        }
    }
}
/// Connects to `addr`, retrying while the listener is not up yet.
pub(super) fn connect_with_retry(
    addr: SocketAddr,
    timeout: Duration,
) -> std::io::Result<TcpStream> {
    let start = Instant::now();
    loop {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
            Ok(stream) => return Ok(stream),
            Err(e) if start.elapsed() < timeout => {
                tracing::debug!("connect to {addr} failed ({e}); retrying");
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(e),
        }
    }
}
