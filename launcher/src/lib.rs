//! How a Lumen job starts: the processes of a job are spawned, find each
//! other, and join with a connected transport endpoint.
//!
//! This crate owns:
//!
//! - **Bootstrap** ([`bootstrap::join`], giving a [`bootstrap::Job`]):
//!   which launcher started this process ([`env`](mod@env): `lumen run`,
//!   the embedded local cluster, `srun`, `srun --mpi=pmi2`, Open MPI's
//!   `mpirun`, MPICH's Hydra), the job secret, the exchange of endpoint
//!   addresses, the rank's CPU and GPU binding. `bootstrap::join_mpi`
//!   (feature `mpi`) builds the job from an MPI communicator instead.
//! - **Where ranks meet**: the TCP [`rendezvous`] store (a sans-IO state
//!   machine behind a thread-per-connection server, and its client) and the PMI-1/PMI-2 clients of `srun` and Hydra (`pmi`,
//!   crate-private: sans-IO codecs and a socket driver), with the wire
//!   schema of the store in [`wire`].
//! - **The one spawner** ([`spawn`]): [`spawn::run_job`] behind `lumen run`
//!   (start the ranks, host their store, forward their output, stop them
//!   on failure or signal, remove their shared memory), and
//!   [`spawn::LocalRanks`], the same spawning for the embedded local
//!   cluster whose rank 0 is the calling process.
//! - **Slurm from the command line** ([`submit`]): `lumen submit` (an
//!   sbatch script, submitted and optionally followed) and the decision to
//!   start a job's ranks with `srun` inside an allocation.
//! - **One typed configuration** ([`config::Config`]): the `LUMEN_*`
//!   tuning variables, parsed and checked once, mapped onto the transport's
//!   settings by [`config::Config::transport_config`].
//!
//! ```text
//!  lumen run / lumen::init ──spawn──▶ ranks ──bootstrap::join──▶ Job { world, endpoint }
//!                                       │            │
//!                          LUMEN_* env ─┘            ├─ rendezvous store (TCP)
//!                  srun / mpirun / mpiexec env ──────┴─ PMI-2 / PMI-1 (PMI_FD)
//! ```
//!
//! Dependencies: among Lumen crates, only `lumen-slurm` (the Slurm
//! environment, host lists, binding policies) and `lumen-transport` (the
//! endpoint it brings up). It must not depend on the runtime (`lumen`),
//! the object store, the collectives or the scheduler: those sit above it
//! and are started through it.

pub mod bootstrap;
pub mod config;
pub mod env;
pub mod jobs;
pub mod pmi;
pub mod rendezvous;
pub mod spawn;
pub mod submit;
pub mod wire;

#[cfg(test)]
mod fuzz_tests;
