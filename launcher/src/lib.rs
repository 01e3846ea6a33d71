//! Bootstrap of a Lumen job: how the rank was started ([`env`](mod@env)), who its peers are,
//! and how they meet: the TCP [`rendezvous`] store, or the launcher's own PMI
//! key-value space ([`pmi`]: PMI-2 for `srun --mpi=pmi2`, PMI-1 for Hydra).
pub mod config;
pub mod env;
pub mod pmi;
pub mod rendezvous;
pub mod spawn;
pub mod wire;
