//! Errors of the collectives.

use lumen_transport::TransportError;

use crate::element::{ElementKind, ReduceOp};

/// Why a collective operation or communicator call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CollectiveError {
    /// The transport failed underneath an operation, typically because a
    /// rank of the job died: the communicator cannot be used any more.
    #[error("{op} failed at rank {rank} of communicator {context:#x}: {source}. Every rank of the communicator gets an error; end the job (collective errors are not recoverable)")]
    Transport {
        /// The operation.
        op: &'static str,
        /// This rank within the communicator.
        rank: u32,
        /// The communicator's context id.
        context: u32,
        /// What the transport saw.
        #[source]
        source: TransportError,
    },
    /// A buffer has the wrong number of elements.
    #[error("{op}: {what} has {got} elements, expected {expected} (rank {rank} of {size})")]
    BufferSize {
        /// The operation.
        op: &'static str,
        /// Which buffer.
        what: &'static str,
        /// Its length.
        got: usize,
        /// The length the operation needs.
        expected: usize,
        /// This rank.
        rank: u32,
        /// Communicator size.
        size: u32,
    },
    /// A root or peer outside the communicator.
    #[error("{op}: rank {given} is not in this communicator of {size} ranks")]
    InvalidRank {
        /// The operation.
        op: &'static str,
        /// The rank given.
        given: u32,
        /// Communicator size.
        size: u32,
    },
    /// A rank called a group operation for a group it is not part of.
    #[error("{op}: rank {rank} called it but is not among the group's ranks {ranks:?}; only the group's members call create_group")]
    NotMember {
        /// The operation.
        op: &'static str,
        /// The calling rank (in the parent communicator).
        rank: u32,
        /// The group asked for.
        ranks: Vec<u32>,
    },
    /// A rank list names a rank twice.
    #[error("{op}: rank {rank} is listed twice in {ranks:?}; list each rank once")]
    DuplicateRank {
        /// The operation.
        op: &'static str,
        /// The repeated rank.
        rank: u32,
        /// The list given.
        ranks: Vec<u32>,
    },
    /// A reduction the element type does not support (bitwise on floats).
    #[error("{op}: reduction {reduce} is not defined for {} elements; bitwise operations need an integer type", kind.name())]
    UnsupportedOp {
        /// The operation.
        op: &'static str,
        /// The reduction.
        reduce: ReduceOp,
        /// The element type.
        kind: ElementKind,
    },
    /// A peer sent a message of the wrong size: the ranks called different
    /// collectives, or with different counts.
    #[error("{op}: rank {peer} sent {got} bytes where {expected} were expected; do all ranks call the same collectives with the same counts, in the same order?")]
    Mismatch {
        /// The operation.
        op: &'static str,
        /// The sending rank (within the communicator).
        peer: u32,
        /// Bytes received.
        got: usize,
        /// Bytes expected.
        expected: usize,
    },
    /// A configuration variable has a value that cannot be used.
    #[error("{variable}={value:?} is not valid: {expected}")]
    Config {
        /// The variable.
        variable: &'static str,
        /// Its value.
        value: String,
        /// What is accepted.
        expected: &'static str,
    },
    /// Every context id has been used (2^20 communicators in this process).
    #[error("no communicator context id left ({0} used); free communicators are not recycled")]
    ContextsExhausted(u32),
    /// The helper thread of non-blocking operations could not start or is gone.
    #[error("non-blocking {op} could not run: {detail}")]
    Worker {
        /// The operation.
        op: &'static str,
        /// Why.
        detail: String,
    },
    /// A single-copy read of a peer's buffer on this node failed (the peer
    /// died or unmapped the buffer in the middle of the collective).
    #[error("{op}: reading rank {peer}'s buffer on this node failed: {detail}; every rank of the communicator gets an error, end the job")]
    SingleCopy {
        /// The operation.
        op: &'static str,
        /// The rank read from (within the communicator).
        peer: u32,
        /// The system's error.
        detail: String,
    },
    /// A GPU (NCCL/CUDA) operation failed or is unavailable.
    #[error("{0}")]
    Device(String),
}

/// Result of the collectives.
pub type Result<T, E = CollectiveError> = std::result::Result<T, E>;
