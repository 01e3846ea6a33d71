//! Test support for Lumen: simulated multi-host clusters on one machine,
//! and running jobs from integration tests ([`job`]: the workspace's
//! binaries and examples, time limits, what a job printed and left behind).
//!
//! Two kinds: [`NetnsCluster`] (below) for tests that start ranks themselves,
//! and [`SlurmCluster`] ([`slurm`]), a real Slurm whose hosts are network
//! namespaces, for tests that launch with `srun`/`sbatch`.
//!
//! Integration tests that need several "nodes" (multi-node transports, the
//! launcher's rendezvous, Slurm-like host lists) take this crate as a
//! dev-dependency and build a [`NetnsCluster`]: `n` Linux network namespaces,
//! each with its own `eth0` and address, joined by a bridge.
//!
//! ```text
//!      namespace {prefix}-br            namespaces {prefix}-h0 .. {prefix}-h{n-1}
//!  +---------------------------+
//!  |  br0 --+-- vh0  <== veth ==>  eth0  10.S.0.10/24   (+ lo up)    host 0
//!  |        +-- vh1  <== veth ==>  eth0  10.S.0.11/24   (+ lo up)    host 1
//!  |        +-- ...                                                    ...
//!  +---------------------------+
//! ```
//!
//! Nothing is created in the caller's own network namespace: the bridge lives
//! in a namespace of its own and each veth pair is created directly with one
//! end in the bridge namespace and the other in its host's namespace. Two
//! clusters (two concurrent tests) therefore never share an interface name or
//! a route, even when they happen to get the same subnet `S` (see
//! [`subnet_octet`]).
//!
//! Everything is driven through the `ip` command of iproute2; processes enter a
//! host with `setns(2)` (see [`NetnsCluster::command`] for why not
//! `ip netns exec`). Creating namespaces needs root (`CAP_SYS_ADMIN` and
//! `CAP_NET_ADMIN`); tests check [`can_create_netns`] first and skip, printing
//! [`netns_unavailable_reason`], where that is missing.
//!
//! Cleanup: dropping the cluster (also while a test panics and unwinds) kills
//! what still runs in its namespaces and deletes them. A run killed before its
//! destructors ran leaves namespaces behind; [`NetnsCluster::cleanup_stale`]
//! removes those whose embedded process id is no longer alive. Use
//! [`unique_prefix`] to make prefixes that embed the process id.
//!
//! # Example
//!
//! ```
//! use lumen_testkit::{can_create_netns, netns_unavailable_reason, unique_prefix, NetnsCluster};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! if !can_create_netns() {
//!     eprintln!("skipped: {}", netns_unavailable_reason().unwrap_or_default());
//!     return Ok(());
//! }
//! let cluster = NetnsCluster::create(&unique_prefix("lumen-doc"), 2)?;
//! let status = cluster
//!     .command(0, "ip")
//!     .args(["-brief", "address", "show", "dev", "eth0"])
//!     .status()?;
//! assert!(status.success());
//! assert_eq!(cluster.host_addr(1).octets()[3], 11);
//! # Ok(())
//! # }
//! ```
#![warn(missing_docs, unreachable_pub, rust_2018_idioms)]
#![deny(unsafe_op_in_unsafe_fn)]

mod cluster;
pub mod fuzz;
mod ip;
pub mod job;
mod naming;
pub mod slurm;

pub use cluster::{can_create_netns, list_namespaces, netns_unavailable_reason, NetnsCluster};
pub use naming::{subnet_octet, unique_prefix, MAX_HOSTS, SUBNET_OCTETS};
pub use slurm::{slurm_unavailable_reason, SlurmCluster, SlurmClusterError, SlurmMode};

use std::io;
use std::process::ExitStatus;

/// Why creating, entering or removing a simulated cluster failed.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// The prefix cannot be used to name namespaces.
    #[error("invalid namespace prefix {prefix:?}: {reason}")]
    InvalidPrefix {
        /// The prefix that was given.
        prefix: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The number of hosts is outside `1..=MAX_HOSTS`.
    #[error("a cluster has 1 to {max} hosts, {requested} were asked for")]
    HostCount {
        /// The number that was asked for.
        requested: usize,
        /// The largest number supported ([`MAX_HOSTS`]).
        max: usize,
    },
    /// A helper program (`ip`) could not be started at all.
    #[error("could not run `{command}`: {source}")]
    Spawn {
        /// The command line that was attempted.
        command: String,
        /// The error from `exec`.
        #[source]
        source: io::Error,
    },
    /// A helper program ran and exited unsuccessfully.
    #[error("`{command}` failed ({status}): {stderr}")]
    CommandFailed {
        /// The command line that failed.
        command: String,
        /// Its exit status.
        status: ExitStatus,
        /// What it printed on stderr, trimmed.
        stderr: String,
    },
    /// A thread could not join a host's namespace.
    #[error("could not enter network namespace {namespace}: {source}")]
    EnterNamespace {
        /// The namespace name.
        namespace: String,
        /// The error from `open` or `setns`.
        #[source]
        source: io::Error,
    },
    /// Some namespaces could not be removed; each entry says which and why.
    #[error("could not remove {}", .failures.join("; "))]
    Cleanup {
        /// One `"<namespace>: <error>"` line per namespace left behind.
        failures: Vec<String>,
    },
}
