//! Why a process could not join its job.

use std::io;
use std::net::IpAddr;
use std::path::PathBuf;

use lumen_slurm::binding::BindingError;
use lumen_transport::TransportError;
use thiserror::Error;

use crate::config::ConfigError;
use crate::env::{DetectError, LaunchKind};
use crate::pmi::PmiError;
use crate::rendezvous::RendezvousError;

/// Why [`join`](super::join) (or `join_mpi`, or leaving
/// with [`Job::finish`](super::Job::finish)) failed: one variant per cause,
/// each saying what to change.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum BootstrapError {
    /// The launcher's variables do not describe a job.
    #[error(transparent)]
    Environment(#[from] DetectError),
    /// A `LUMEN_*` tuning variable is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// `LUMEN_RENDEZVOUS` names a store but no secret authenticates with it.
    #[error("LUMEN_RENDEZVOUS is set but LUMEN_JOB_SECRET is not")]
    MissingSecret,
    /// The rendezvous store failed (a rank never arrived, a bad secret...).
    #[error(transparent)]
    Rendezvous(#[from] RendezvousError),
    /// The PMI server of `srun --mpi=pmi2` or Hydra failed.
    #[error(transparent)]
    Pmi(#[from] PmiError),
    /// The PMI-2 server and Slurm's variables disagree about this rank.
    #[error("the PMI-2 server says rank {pmi_rank} of {pmi_size} but SLURM_PROCID/SLURM_NTASKS say {rank} of {size}; the step's environment is inconsistent")]
    PmiMismatch {
        /// The rank PMI-2 gave.
        pmi_rank: u32,
        /// The size PMI-2 gave.
        pmi_size: u32,
        /// `SLURM_PROCID`.
        rank: u32,
        /// `SLURM_NTASKS`.
        size: u32,
    },
    /// What rank 0 published as the job secret through PMI is not one.
    #[error("rank 0 published a malformed job secret through PMI")]
    BadPmiSecret,
    /// The launcher gives no way for the ranks to meet.
    #[error("started by {kind:?} with {size} ranks but no way to meet the other ranks: launch with `srun`, `srun --mpi=pmi2`, `mpiexec.mpich` (PMI_FD), `lumen run`, or set LUMEN_RENDEZVOUS=host:port and LUMEN_JOB_SECRET")]
    NoRendezvous {
        /// The launcher detected.
        kind: LaunchKind,
        /// Ranks in the job.
        size: u32,
    },
    /// The key file `~/.lumen/job-key` (the root of derived job secrets)
    /// could not be created, written or read.
    #[error("{action} {}: {source}", path.display())]
    KeyFile {
        /// "creating", "writing" or "reading".
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
    /// The network interfaces could not be listed.
    #[error("listing network interfaces: {0}")]
    Interfaces(#[source] io::Error),
    /// `LUMEN_TCP_IF` selects no interface of this host.
    #[error(
        "no network interface matches LUMEN_TCP_IF={selection:?}; interfaces here: {candidates:?}"
    )]
    NoInterface {
        /// The variable's value.
        selection: String,
        /// The interfaces and addresses of this host.
        candidates: Vec<(String, IpAddr)>,
    },
    /// A rendezvous address does not resolve to an IPv4 address.
    #[error("cannot resolve {addr}: {source}")]
    Resolve {
        /// `host:port`.
        addr: String,
        /// What the resolver said.
        #[source]
        source: io::Error,
    },
    /// Under plain `srun`: the node hosting the store does not resolve.
    #[error("the step's first node {node:?} (SLURM_STEP_NODELIST) does not resolve, so ranks cannot find the rendezvous: {source}; set LUMEN_RENDEZVOUS and LUMEN_JOB_SECRET, or use srun --mpi=pmi2")]
    FirstNodeUnresolved {
        /// The node's name.
        node: String,
        /// What the resolver said.
        #[source]
        source: io::Error,
    },
    /// Under Open MPI across hosts: rank 0 is not on the allocation's first
    /// node, where the other ranks look for the store.
    #[error("mpirun (Open MPI) across hosts: rank 0 runs on {host} but the allocation's first node is {first}; Lumen expects rank 0 there (the default by-slot mapping). Drop --map-by/--rankfile options, or set LUMEN_RENDEZVOUS and LUMEN_JOB_SECRET")]
    OpenMpiRankZeroElsewhere {
        /// Where rank 0 runs.
        host: String,
        /// The allocation's first node.
        first: String,
    },
    /// Under Open MPI across hosts outside a Slurm allocation: nowhere known
    /// to meet.
    #[error("mpirun (Open MPI) started {size} ranks on several hosts ({local_size} on this one) outside a Slurm allocation; Lumen meets Open MPI ranks without help on one host or inside an allocation. Otherwise set LUMEN_RENDEZVOUS=host:port and LUMEN_JOB_SECRET for every rank, or launch with srun / mpiexec.mpich")]
    OpenMpiAcrossHosts {
        /// Ranks in the job.
        size: u32,
        /// Ranks on this host.
        local_size: u32,
    },
    /// Open MPI exported no job id to derive the store's port from.
    #[error("mpirun (Open MPI) exported no job id (OMPI_MCA_ess_base_jobid, PMIX_NAMESPACE); set LUMEN_RENDEZVOUS and LUMEN_JOB_SECRET")]
    OpenMpiNoJobId,
    /// The allocation's GPUs cannot be shared out to this rank.
    #[error("rank {rank}: {source}")]
    Gpus {
        /// This rank.
        rank: u32,
        /// Why.
        #[source]
        source: BindingError,
    },
    /// Binding this rank to its share of the CPUs failed.
    #[error("rank {rank}: binding to CPUs {cpus:?}: {source}")]
    Affinity {
        /// This rank.
        rank: u32,
        /// The CPUs asked for.
        cpus: Vec<usize>,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
    /// The settings would give the transport an invalid configuration.
    #[error(transparent)]
    TransportConfig(#[from] lumen_transport::ConfigError),
    /// The transport endpoint could not be built or connected.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// Under `join_mpi`: a value too long for its slot of
    /// the MPI exchange.
    #[error("{what} is longer than {max} bytes")]
    MpiValueTooLong {
        /// What was being exchanged.
        what: &'static str,
        /// The most bytes it may have.
        max: usize,
    },
    /// Under `join_mpi`: the communicator's rank or size
    /// is not a valid count.
    #[error("the MPI communicator's {what} is {value}")]
    MpiCommunicator {
        /// "rank" or "size".
        what: &'static str,
        /// What MPI returned.
        value: i32,
    },
}
