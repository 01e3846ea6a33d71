//! PMI, the process-management interface that `srun --mpi=pmi2` and MPICH's
//! Hydra (`mpiexec.mpich`) give their tasks: a key-value space shared by the
//! ranks of a job with put, fence (a barrier that publishes the puts) and get.
//! Lumen uses it at bootstrap to exchange endpoint addresses without any
//! rendezvous port of its own. Only [`PmiError`] is public (it reaches users
//! inside [`BootstrapError::Pmi`](crate::bootstrap::BootstrapError::Pmi));
//! the clients and codecs are the bootstrap's internals.
//!
//! Two wire protocols, both spoken over the already-connected socket whose
//! descriptor the launcher passes in `PMI_FD`, neither needing `libpmi`:
//!
//! - `pmi2`: PMI-2 (`srun --mpi=pmi2`): a PMI-1 style `cmd=init
//!   pmi_version=2 pmi_subversion=0` line, then commands framed by a 6-byte
//!   ASCII length and written as `cmd=kvs-put;key=K;value=V;` records.
//! - `pmi1`: PMI-1 (Hydra, and Slurm's PMI-1 mode): newline-terminated
//!   `cmd=put kvsname=K key=K value=V` lines.
//!
//! Both modules are sans-IO codecs (bytes in, messages out) tested without
//! sockets; `client` drives them over the descriptor with deadlines, and
//! `exchange` gives both the same put/fence/get face, with values
//! hex-encoded and split into chunks below the servers' value limit.
//!
//! References: MPICH's `src/pmi/simple` (PMI-1) and `src/pmi/pmi2/simple`
//! (PMI-2) clients, Slurm's `src/plugins/mpi/pmi2` server, and Flux RFC 13
//! (a written description of the PMI-1 wire protocol).

pub(crate) mod client;
pub(crate) mod exchange;
pub(crate) mod pmi1;
pub(crate) mod pmi2;

use thiserror::Error;

/// Why a PMI operation failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum PmiError {
    /// `PMI_FD` does not hold a usable descriptor.
    #[error("PMI_FD={value:?} is not an open descriptor number; the launcher (srun --mpi=pmi2, mpiexec) did not pass its PMI socket, or something closed it")]
    BadFd {
        /// The variable's value.
        value: String,
    },
    /// Reading or writing the PMI socket failed.
    #[error("PMI socket {op} failed: {source}; the process manager (slurmstepd or hydra_pmi_proxy) probably went away")]
    Io {
        /// What was being done.
        op: &'static str,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// The server closed the socket.
    #[error("the PMI server closed the connection while rank {rank} waited for `{waiting_for}`; the job step is probably being torn down")]
    Closed {
        /// This rank.
        rank: u32,
        /// The reply expected.
        waiting_for: String,
    },
    /// No reply before the deadline.
    #[error("rank {rank} waited {seconds} s for `{waiting_for}` from the PMI server; {hint}. Raise LUMEN_RENDEZVOUS_TIMEOUT_MS if the job is just slow to start")]
    TimedOut {
        /// This rank.
        rank: u32,
        /// The reply expected.
        waiting_for: String,
        /// How long it waited.
        seconds: u64,
        /// What probably happened.
        hint: &'static str,
    },
    /// A message that does not follow the protocol.
    #[error("malformed PMI message {message:?}: {reason}")]
    Malformed {
        /// The message (truncated to 200 bytes).
        message: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A reply other than the one expected.
    #[error("expected PMI reply `{expected}`, got {got:?}")]
    UnexpectedReply {
        /// The command expected.
        expected: &'static str,
        /// What came.
        got: String,
    },
    /// The server answered with a non-zero return code.
    #[error("PMI `{command}` failed with rc={rc}{}", .message.as_deref().map(|m| format!(": {m}")).unwrap_or_default())]
    Failed {
        /// The command.
        command: &'static str,
        /// Its return code.
        rc: i64,
        /// The server's message, if any.
        message: Option<String>,
    },
    /// A key or value that cannot travel in this protocol.
    #[error("PMI {what} {value:?} cannot be sent: {reason}")]
    InvalidArgument {
        /// "key" or "value".
        what: &'static str,
        /// The offending text (truncated).
        value: String,
        /// Why.
        reason: &'static str,
    },
    /// A key that no rank put.
    #[error("PMI key {key:?} was not found after the fence; a rank did not publish it (started with another Lumen build?)")]
    NotFound {
        /// The key.
        key: String,
    },
    /// What a rank published is not what Lumen puts there.
    #[error("PMI value under {key:?} is not valid: {reason}")]
    BadValue {
        /// The key.
        key: String,
        /// What is wrong.
        reason: String,
    },
}

/// `text`, cut to at most 200 bytes on a character boundary, for messages.
pub(crate) fn excerpt(text: &str) -> String {
    let mut end = text.len().min(200);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}
