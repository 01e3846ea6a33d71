//! A small TCP key-value store where the ranks of a job meet at bootstrap:
//! every rank publishes its endpoint bytes, fetches everyone else's, and
//! waits in barriers.
//!
//! ```text
//!  rank 0 ──┐                        ┌──────────────────────────────┐
//!  rank 1 ──┼── TCP, authenticated ──▶ RendezvousServer             │
//!   ...     │   (job id + secret)    │   thread per connection      │
//!  rank n ──┘                        │   Mutex<StoreState> (sans-IO)│
//!                                    └──────────────────────────────┘
//! ```
//!
//! - `StoreState` is the protocol: a pure state machine, stepped in unit
//!   tests without sockets.
//! - [`RendezvousServer`] is its IO shell: it accepts connections, runs the
//!   handshake of [`lumen_transport::handshake`] (the client's rank is the
//!   initiator rank; the server uses `SERVER_RANK`), and moves
//!   [`FrameKind::Store`](lumen_transport::frame::FrameKind::Store) frames
//!   carrying [`crate::wire`] messages between the sockets and the state.
//! - [`RendezvousClient`] is what a rank uses: [`put`](RendezvousClient::put),
//!   [`get`](RendezvousClient::get), [`barrier`](RendezvousClient::barrier),
//!   [`allgather`](RendezvousClient::allgather),
//!   [`finalize`](RendezvousClient::finalize).
//!
//! # Where the server lives
//!
//! Under `lumen run` the server runs inside the `lumen run` process and its
//! address reaches the ranks as `LUMEN_RENDEZVOUS`. Under Slurm without a
//! launcher process there is no address to hand out, so the server (hosted
//! by one rank) and the clients derive it: the port comes from a hash of job
//! id and step id into [`DERIVED_PORTS`], and when that port is taken (by
//! another job, or by anything else) the server takes the next of
//! `DERIVED_PORT_ATTEMPTS` ports. Clients walk the same ports and skip any
//! server that refuses them as belonging to another job, so two jobs on one
//! host never meet each other's store. The job id of the handshake is then
//! `{job_id}.{step_id}`, so two steps of one allocation are told apart too.
//!
//! # Failure
//!
//! A rank that disconnects without finalizing makes every waiting and later
//! barrier fail at once with an error naming it. A wait that times out asks
//! the server who is missing and says so: "rendezvous timed out after 30 s:
//! ranks [2, 5] never arrived (of 6)".

mod client;
mod server;
mod state;

use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::time::Duration;

use lumen_transport::handshake::HandshakeError;
use thiserror::Error;

pub use client::RendezvousClient;
pub use server::RendezvousServer;
pub(crate) use state::StoreState;

/// Rank the server names itself in the handshake.
pub(crate) const SERVER_RANK: u32 = u32::MAX;
/// Rank a tool names itself in the handshake to read the store without
/// being one of the job's ranks ([`RendezvousClient::observe`]): it may
/// only `get`, is answered at once, and its leaving is never taken for a
/// rank's death.
pub const OBSERVER_RANK: u32 = u32::MAX - 1;
/// Largest frame either side accepts after the handshake (16 MiB).
pub const MAX_FRAME: u32 = 16 << 20;
/// Ports that `derived_port` hashes into.
pub const DERIVED_PORTS: Range<u16> = 20000..40000;
/// How many consecutive ports from the derived one a server tries to bind
/// and a client tries to reach.
pub(crate) const DERIVED_PORT_ATTEMPTS: u16 = 32;

/// The first port of the derived sequence for a job step: a stable hash
/// (64-bit FNV-1a, the same in every build) of job id and step id into
/// [`DERIVED_PORTS`].
/// (Example: the unit test `examples::derived_port_is_stable_and_in_range`.)
pub(crate) fn derived_port(job_id: &str, step_id: &str) -> u16 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in job_id.bytes().chain([0]).chain(step_id.bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    let span = u64::from(DERIVED_PORTS.end - DERIVED_PORTS.start);
    // The remainder is below `span`, which fits a u16.
    DERIVED_PORTS.start + u16::try_from(hash % span).unwrap_or(0)
}

/// The ports a server binds and clients try, in order, starting at `base`.
pub(crate) fn port_sequence(base: u16) -> impl Iterator<Item = u16> + Clone {
    (0..DERIVED_PORT_ATTEMPTS).filter_map(move |step| base.checked_add(step))
}

/// The job id used in the handshake for a derived rendezvous of a job step.
pub(crate) fn derived_job_id(job_id: &str, step_id: &str) -> String {
    format!("{job_id}.{step_id}")
}

/// A duration printed for people: to the second from 10 s up ("30 s"),
/// else to a tenth ("0.5 s", "1 s").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seconds(pub Duration);

impl fmt::Display for Seconds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let millis = self.0.as_millis();
        let tenths = (millis + 50) / 100;
        if millis >= 10_000 {
            write!(f, "{} s", (millis + 500) / 1000)
        } else if tenths % 10 == 0 {
            write!(f, "{} s", tenths / 10)
        } else {
            write!(f, "{}.{} s", tenths / 10, tenths % 10)
        }
    }
}

/// Why a rendezvous operation failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum RendezvousError {
    /// The job size is zero.
    #[error("a rendezvous needs at least one rank, got size 0")]
    EmptyJob,
    /// The server could not listen on the address.
    #[error("could not listen for the rendezvous on {addr}: {source}; choose another address (e.g. `lumen run --rendezvous-bind`) or free the port")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// Every port of the derived sequence is taken.
    #[error("could not listen for the rendezvous on {ip}: ports {first}..={last} are all in use; set LUMEN_RENDEZVOUS to an explicit address instead")]
    NoFreePort {
        /// The address.
        ip: std::net::IpAddr,
        /// First port tried.
        first: u16,
        /// Last port tried.
        last: u16,
    },
    /// The server was not reachable before the timeout.
    #[error("rank {rank} could not reach the rendezvous at {target} within {waited} ({last_error}); check that the process hosting it (`lumen run`, or rank 0) is running and that LUMEN_RENDEZVOUS is right")]
    Unreachable {
        /// The rank trying.
        rank: u32,
        /// Address, or address and port range, tried.
        target: String,
        /// How long it tried.
        waited: Seconds,
        /// The last error seen.
        last_error: String,
    },
    /// The server refused this rank after authenticating it.
    #[error("the rendezvous refused rank {rank}: {reason}")]
    Refused {
        /// The refused rank.
        rank: u32,
        /// The server's reason.
        reason: String,
    },
    /// The handshake failed: wrong secret, or not a Lumen rendezvous.
    #[error("rank {rank} could not authenticate with the rendezvous at {addr}: {source}; every rank must get the same LUMEN_JOB_SECRET")]
    Authentication {
        /// The rank trying.
        rank: u32,
        /// The server's address.
        addr: SocketAddr,
        /// What went wrong.
        #[source]
        source: HandshakeError,
    },
    /// The connection to the server broke.
    #[error("rank {rank} lost its connection to the rendezvous at {addr}: {source}; the process hosting the store (`lumen run`, or rank 0) probably exited, see its output")]
    Io {
        /// The rank.
        rank: u32,
        /// The server's address.
        addr: SocketAddr,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// The server sent something this client cannot understand.
    #[error("rank {rank} got a malformed message from the rendezvous: {detail}; all ranks and the launcher must run the same Lumen build")]
    Protocol {
        /// The rank.
        rank: u32,
        /// What was wrong.
        detail: String,
    },
    /// The server answered with an error.
    #[error("the rendezvous failed for rank {rank}: {reason}")]
    Failed {
        /// The rank whose request failed.
        rank: u32,
        /// The server's reason (often naming another rank that crashed).
        reason: String,
    },
    /// A wait ran out of time.
    #[error("rendezvous timed out after {waited}: {detail}; rank {rank} was waiting {during}. See the output of the missing ranks, or raise LUMEN_RENDEZVOUS_TIMEOUT_MS")]
    TimedOut {
        /// The rank that waited.
        rank: u32,
        /// How long it waited.
        waited: Seconds,
        /// What it waited for ("in barrier 0", "for key \"ep/3\"").
        during: String,
        /// Ranks that did not arrive (in the barrier, when waiting in one).
        missing: Vec<u32>,
        /// Who is missing, in words.
        detail: String,
    },
    /// A key and value too large for one frame.
    #[error("rank {rank} cannot put {len} bytes under key {key:?}: a rendezvous message holds at most {MAX_FRAME} bytes; put large data elsewhere and publish its location")]
    TooLarge {
        /// The rank.
        rank: u32,
        /// The key.
        key: String,
        /// Key and value length.
        len: usize,
    },
    /// A reply that does not fit the request (a bug on one side).
    #[error("rank {rank} asked the rendezvous for {asked} and got {got}; all ranks and the launcher must run the same Lumen build")]
    UnexpectedReply {
        /// The rank.
        rank: u32,
        /// The request.
        asked: &'static str,
        /// The reply received.
        got: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_ports_are_in_range_and_spread() {
        let mut seen = std::collections::HashSet::new();
        for job in 0..200 {
            let port = derived_port(&job.to_string(), "0");
            assert!(DERIVED_PORTS.contains(&port));
            seen.insert(port);
        }
        assert!(seen.len() > 190, "{}", seen.len());
        assert_ne!(derived_port("12", "3"), derived_port("1", "23"));
        let ports: Vec<u16> = port_sequence(39990).collect();
        assert_eq!(ports.len(), usize::from(DERIVED_PORT_ATTEMPTS));
        assert_eq!(ports[0], 39990);
        assert_eq!(port_sequence(65530).count(), 6);
    }

    #[test]
    fn seconds_read_well() {
        assert_eq!(Seconds(Duration::from_secs(30)).to_string(), "30 s");
        assert_eq!(Seconds(Duration::from_millis(1500)).to_string(), "1.5 s");
        assert_eq!(Seconds(Duration::from_micros(505_759)).to_string(), "0.5 s");
        assert_eq!(Seconds(Duration::from_millis(30_004)).to_string(), "30 s");
        assert_eq!(Seconds(Duration::from_millis(1_003)).to_string(), "1 s");
    }
}

/// The examples of this module's docs, as tests (their items are crate-private).
#[cfg(test)]
mod examples {
    use super::{derived_port, DERIVED_PORTS};

    #[test]
    fn derived_port_is_stable_and_in_range() {
        let port = derived_port("4711", "0");
        assert!(DERIVED_PORTS.contains(&port));
        assert_eq!(port, derived_port("4711", "0"));
    }
}
