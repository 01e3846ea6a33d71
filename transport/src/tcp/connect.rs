//! Who holds the sending half toward each remote rank ([`Connector`]), and
//! connecting on first use (`TcpConnect::Lazy`).
//!
//! Eager setup (`TcpDomain::establish`) connects every pair of ranks on
//! different nodes before the endpoint is returned: N - (ranks per node)
//! connections per rank, all opened at start. That is what a small job
//! wants (a dead peer shows up as a closed connection even if this rank
//! never talked to it), and what a large one cannot afford: at 8192 ranks
//! it is ~8100 sockets and handshakes per rank before the first message.
//! Lazily, a rank opens a connection the first time it sends to a peer
//! (a message, a one-sided get, a get's reply), and adopts the first one a
//! peer opens toward it as that peer's connection for sending back.
//!
//! When two ranks connect to each other at the same moment, each sends on
//! the one it adopted first and reads both; a second connection to a peer
//! is kept as a read side only ("extra"), and the goodbye at shutdown goes
//! out on every connection to the peer, so whichever the peer reads last
//! it has seen the goodbye before the end of stream.
//!
//! Invariant: a rank's entry in `peers` is set once; every message to that
//! rank goes through it, so messages to one peer keep their order.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use crate::error::TransportError;
use crate::handshake;
use crate::types::Rank;

use super::conn::NewConnection;
use super::peer::TcpPeer;

/// What a new sending half is built with.
#[derive(Debug, Clone)]
pub(crate) struct PeerSettings {
    pub(crate) zerocopy_min: usize,
    pub(crate) stripe_min: usize,
    pub(crate) failure_timeout: Option<Duration>,
    pub(crate) connect_timeout: Duration,
    pub(crate) tune_malloc: Option<usize>,
}

/// Hands connections to the background receiver and wakes it.
pub(crate) struct Registrar {
    pub(crate) tx: mpsc::Sender<NewConnection>,
    pub(crate) waker: Option<Arc<OwnedFd>>,
}

impl Registrar {
    /// False once the receiver is gone.
    pub(crate) fn register(&self, conn: NewConnection) -> bool {
        if self.tx.send(conn).is_err() {
            return false;
        }
        if let Some(waker) = &self.waker {
            let _ = rustix::io::write(&**waker, &1u64.to_ne_bytes());
        }
        true
    }
}

/// The sending halves toward remote ranks, and (lazily) how to make more.
pub(crate) struct Connector {
    pub(crate) me: Rank,
    pub(crate) job_id: String,
    pub(crate) secret: crate::auth::JobSecret,
    /// Every rank's TCP address (index = rank).
    pub(crate) addresses: Vec<SocketAddr>,
    /// Ranks on other nodes.
    pub(crate) remote: Vec<bool>,
    /// Connect on first use (else every entry was made at setup).
    pub(crate) lazy: bool,
    pub(crate) settings: PeerSettings,
    pub(crate) peers: RwLock<HashMap<Rank, Arc<TcpPeer>>>,
    /// One connect at a time: a second sender to the same rank waits for it.
    pub(crate) connecting: Mutex<()>,
    /// Set once the receiver runs.
    pub(crate) registrar: Mutex<Option<Registrar>>,
    pub(crate) closed: AtomicBool,
    /// Connections opened by this rank after setup, and adopted from peers.
    pub(crate) opened: AtomicU64,
    pub(crate) adopted: AtomicU64,
}

impl Connector {
    /// The sending half toward `rank`: the existing one, or (lazily) a new
    /// connection, authenticated before it is returned.
    pub(crate) fn peer(&self, rank: Rank) -> Result<Arc<TcpPeer>, TransportError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(TransportError::PeerClosed { rank });
        }
        if let Some(peer) = self.existing(rank) {
            return Ok(peer);
        }
        if !self.lazy || !self.remote.get(rank as usize).copied().unwrap_or(false) {
            return Err(TransportError::PeerClosed { rank });
        }
        let _one = self.connecting.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(peer) = self.existing(rank) {
            return Ok(peer); // adopted from the peer, or connected by another thread
        }
        let addr = self.addresses[rank as usize];
        let timeout = self.settings.connect_timeout;
        // Every rank's listener was up before setup ended (the rendezvous
        // barrier), so a refusal now means the rank's endpoint or process
        // is gone: no retry, the caller marks the rank dead.
        let mut stream =
            TcpStream::connect_timeout(&addr, timeout).map_err(|source| TransportError::Io {
                context: format!(
                    "rank {rank} at {addr} refused a connection on first use (its process or endpoint is gone)"
                ),
                source,
            })?;
        let _ = stream.set_nodelay(true);
        let _ = stream.set_read_timeout(Some(timeout));
        handshake::initiate(&mut stream, &self.job_id, self.me, &self.secret)
            .map_err(|source| TransportError::Handshake { rank, source })?;
        let _ = stream.set_read_timeout(None);
        self.opened.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(peer = rank, "connected on first use");
        self.adopt(rank, stream)
    }

    fn existing(&self, rank: Rank) -> Option<Arc<TcpPeer>> {
        self.peers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&rank)
            .cloned()
    }

    /// An authenticated connection with `rank` (opened by either side): the
    /// rank's sending half if it has none yet, else an extra read side.
    pub(crate) fn adopt(
        &self,
        rank: Rank,
        stream: TcpStream,
    ) -> Result<Arc<TcpPeer>, TransportError> {
        if let Some(bound) = self.settings.failure_timeout {
            if let Err(e) = crate::sys::set_failure_timeout(stream.as_raw_fd(), bound) {
                tracing::debug!(peer = rank, "TCP_USER_TIMEOUT not set: {e}");
            }
        }
        if let Some(max_frame) = self.settings.tune_malloc {
            crate::sys::tune_malloc(max_frame);
        }
        let read = stream.try_clone().map_err(|source| TransportError::Io {
            context: "cloning a socket".into(),
            source,
        })?;
        let (peer, primary) = {
            let mut peers = self.peers.write().unwrap_or_else(|p| p.into_inner());
            match peers.get(&rank) {
                Some(peer) => {
                    peer.add_extra(stream);
                    (peer.clone(), false)
                }
                None => {
                    let peer = Arc::new(TcpPeer::new(rank, stream, &self.settings, Vec::new()));
                    peers.insert(rank, peer.clone());
                    (peer, true)
                }
            }
        };
        let registered = self
            .registrar
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .is_some_and(|r| {
                r.register(NewConnection {
                    rank,
                    stream: read,
                    primary,
                    lane: false,
                })
            });
        if !registered {
            return Err(TransportError::PeerClosed { rank });
        }
        Ok(peer)
    }

    /// Every sending half (for the goodbye at shutdown).
    pub(crate) fn all(&self) -> Vec<Arc<TcpPeer>> {
        self.peers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// Connections this rank holds for sending (entries, not extras).
    pub(crate) fn connected(&self) -> usize {
        self.peers.read().unwrap_or_else(|p| p.into_inner()).len()
    }
}
