//! [`TransportError`], the one error type of the transport's public API.
//!
//! A leaf module: it names the errors of the node segment ([`ShmError`]),
//! of the handshake and of the configuration, and imports none of the
//! modules that return it (`endpoint`, `tcp`, `stripe`), so that they all
//! depend on it and not on each other.

use std::time::Duration;

use crate::config::ConfigError;
use crate::handshake;
use crate::shm::ShmError;
use crate::{Rank, RESERVED_TAGS};

/// Errors of the transport.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// A peer process or connection is gone without closing in order.
    #[error("peer {rank} died: {detail}. The job cannot complete; check rank {rank}'s output for the cause")]
    PeerDied {
        /// The dead rank.
        rank: Rank,
        /// What was observed.
        detail: String,
    },
    /// A message larger than the job's limit (`max_message`).
    #[error("a message of {bytes} bytes to rank {rank} is above the limit of {limit} bytes (LUMEN_MAX_MESSAGE_BYTES); send it in parts, or put it in the object store")]
    MessageTooLarge {
        /// The destination.
        rank: Rank,
        /// The message's size.
        bytes: u64,
        /// The limit.
        limit: u64,
    },
    /// A peer closed its endpoint in order; it will not send or receive again.
    #[error("peer {rank} has closed its endpoint")]
    PeerClosed {
        /// The rank.
        rank: Rank,
    },
    /// A rank number outside the job.
    #[error("rank {rank} is not in this job of {size} ranks")]
    InvalidRank {
        /// The rank asked for.
        rank: Rank,
        /// Job size.
        size: u32,
    },
    /// A tag in the reserved range.
    #[error("tag {0:#x} is reserved for Lumen's own protocols (tags >= {RESERVED_TAGS:#x})")]
    ReservedTag(u64),
    /// A bounded wait ran out.
    #[error("{what} timed out after {waited:?}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// How long.
        waited: Duration,
    },
    /// The [`TransportConfig`](crate::TransportConfig) handed to the
    /// endpoint builder is invalid; nothing was set up.
    #[error("invalid transport configuration: {0}")]
    Config(#[from] ConfigError),
    /// The node segment failed.
    #[error(transparent)]
    Shm(#[from] ShmError),
    /// An OS call failed.
    #[error("{context}: {source}")]
    Io {
        /// What we were doing.
        context: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// Connecting to a peer failed, or a peer failed authentication.
    #[error("connection with rank {rank} failed: {source}")]
    Handshake {
        /// The peer.
        rank: Rank,
        /// Why.
        source: handshake::HandshakeError,
    },
    /// The peer table handed to `connect` is inconsistent.
    #[error("bad peer table: {0}")]
    PeerTable(String),
    /// A one-sided get named a region the target does not have.
    #[error("rank {rank} has no registered region {key} covering [{offset}, {offset}+{len})")]
    NoSuchRegion {
        /// Target rank.
        rank: Rank,
        /// Region key.
        key: u64,
        /// Requested offset.
        offset: u64,
        /// Requested length.
        len: u64,
    },
    /// A one-sided get failed at the target.
    #[error("get from rank {rank} failed: {detail}")]
    GetFailed {
        /// Target rank.
        rank: Rank,
        /// Why.
        detail: String,
    },
    /// A one-sided read or write through the attached fabric failed, or
    /// the rank has no route on it.
    #[error("one-sided transfer with rank {rank}: {detail}")]
    Fabric {
        /// The peer rank.
        rank: Rank,
        /// Why (the backend's error, or the missing route).
        detail: String,
    },
}

pub(crate) fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> TransportError {
    let context = context.into();
    move |source| TransportError::Io { context, source }
}
