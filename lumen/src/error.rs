//! Errors a Lumen program sees. A leaf of the crate: it names the
//! runtime's error types (`runtime/error.rs`, which imports only ids) and
//! the lower crates' errors, never the runtime's machinery, so every
//! module can return [`Result`] without an import circle.

use thiserror::Error;

/// Everything that can fail in the `lumen` facade.
#[derive(Debug, Error)]
pub enum LumenError {
    /// Starting the runtime failed for a reason of the runtime's own (a
    /// malformed hello, the embedded cluster's settings).
    #[error("bootstrap failed: {0}")]
    Bootstrap(String),
    /// The process could not join its job (environment, rendezvous, PMI,
    /// secret, binding): see [`BootstrapError`](lumen_launcher::bootstrap::BootstrapError).
    #[error("bootstrap failed: {0}")]
    Join(#[from] lumen_launcher::bootstrap::BootstrapError),
    /// The rendezvous store failed.
    #[error(transparent)]
    Rendezvous(#[from] lumen_launcher::rendezvous::RendezvousError),
    /// The transport failed (a peer died, a connection broke...).
    #[error(transparent)]
    Transport(#[from] lumen_transport::TransportError),
    /// A task, actor or object call of the runtime failed.
    #[error(transparent)]
    Runtime(#[from] crate::runtime::error::RuntimeError),
    /// A collective operation or communicator failed.
    #[error(transparent)]
    Collective(#[from] lumen_collectives::CollectiveError),
}

/// Result with [`LumenError`].
pub type Result<T, E = LumenError> = std::result::Result<T, E>;
