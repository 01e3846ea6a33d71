//! Lumen: Ray Core's programming model (tasks, actors, objects) as an HPC
//! runtime. This crate is the facade: it joins the job a process was started in
//! ([`bootstrap::join`]) and hosts the `lumen` command line (run, bench).
//!
//! ```no_run
//! let job = lumen::bootstrap::join()?;
//! let ep = &job.endpoint;
//! if job.rank() == 0 {
//!     for peer in 1..job.size() {
//!         ep.send(peer, 1, b"hello")?;
//!     }
//! } else {
//!     let m = ep.recv(lumen_transport::Source::Rank(0), 1)?;
//!     assert_eq!(m.data, b"hello");
//! }
//! job.finish()?;
//! # Ok::<(), lumen::LumenError>(())
//! ```

pub mod bench;
pub mod bootstrap;
pub mod error;

pub use error::{LumenError, Result};
pub use lumen_collectives as collectives;
pub use lumen_transport as transport;

/// The communicator of every rank of a joined job (collective: every rank
/// calls it once; clone the result to share it). Settings come from the
/// `LUMEN_COLL_*` variables, see [`collectives::config`].
pub fn world_communicator(
    job: &bootstrap::Job,
) -> std::result::Result<collectives::Communicator, collectives::CollectiveError> {
    collectives::Communicator::world(job.endpoint.clone())
}
