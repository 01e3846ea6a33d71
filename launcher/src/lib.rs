//! Bootstrap of a Lumen job: how the rank was started, who its peers are, how they meet.
pub mod config;
pub mod env;
pub mod pmi;
pub mod rendezvous;
pub mod spawn;
pub mod wire;
