//! Joining the job this process was started in: detect the launcher, learn
//! the job secret and every rank's endpoint address, bind this rank to its
//! CPUs, and bring up the transport endpoint ([`join`], giving a [`Job`]).
//!
//! | started by | how ranks exchange addresses | job secret |
//! |---|---|---|
//! | `lumen run` | the store inside `lumen run` (`LUMEN_RENDEZVOUS`) | `LUMEN_JOB_SECRET` |
//! | embedded local cluster (`lumen::init` started bare) | the store inside rank 0 ([`crate::spawn::LocalRanks`]) | `LUMEN_JOB_SECRET` |
//! | `srun --mpi=pmi2` | PMI-2 put/fence/get over `PMI_FD` (slurmstepd) | drawn by rank 0, shared through PMI |
//! | `srun` | TCP store hosted by local rank 0 of the step's first node, at a port derived from job and step id | derived from `~/.lumen/job-key` and job.step |
//! | `mpiexec.mpich` (Hydra) | PMI-1 put/barrier/get over `PMI_FD` | drawn by rank 0, shared through PMI |
//! | `mpirun` (Open MPI) | TCP store hosted by rank 0, port derived from the Open MPI job id: on 127.0.0.1 on one host, on the first node of `SLURM_JOB_NODELIST` across hosts (elsewhere: `LUMEN_RENDEZVOUS`) | derived from Open MPI's per-job `orte_precondition_transports` key, else the key file |
//! | any, with `LUMEN_RENDEZVOUS` | that store | `LUMEN_JOB_SECRET` |
//! | bare `./app` (one rank) | none | random |
//! | `join_mpi` (feature `mpi`), any MPI launcher | `MPI_Allgather` on the given communicator | drawn by rank 0, `MPI_Bcast` |
//!
//! Every wait is bounded by `LUMEN_RENDEZVOUS_TIMEOUT_MS`: a rank that
//! never starts turns into an error naming the missing ranks (the TCP store
//! knows who arrived; PMI servers do not say, so PMI errors say so instead).
//!
//! Two jobs, or two steps of one job, on the same nodes never meet: derived
//! ports walk a sequence and the store's handshake carries `job.step`; PMI
//! servers are per step by construction.
//!
//! Under Slurm the rank's resources come from the allocation
//! ([`lumen_slurm::binding`]): with `--cpus-per-task` the process is bound
//! (`sched_setaffinity`) to its share of the CPUs it may use, and its GPUs
//! (`SLURM_STEP_GPUS`, `CUDA_VISIBLE_DEVICES`, `SLURM_GPUS_PER_TASK`) are in
//! [`Job::resources`].
//!
//! Modules: `meet` (the derived stores, secrets and PMI exchange),
//! `resources` (CPU and GPU binding), `with_mpi` (`join_mpi`); failures are
//! [`BootstrapError`]s.

mod error;
mod meet;
mod resources;
#[cfg(feature = "mpi")]
mod with_mpi;

use std::time::Duration;

use lumen_transport::{Endpoint, EndpointBuilder, EndpointOptions, JobSecret};

pub use error::BootstrapError;
pub use resources::RankResources;
#[cfg(feature = "mpi")]
pub use with_mpi::join_mpi;

use crate::config::Config;
use crate::env::{detect, job_secret_from_env, LaunchKind, World};
use crate::pmi::client::{Pmi1Client, Pmi2Client};
use crate::pmi::exchange::{self, KeyValueSpace};
use crate::pmi::PmiError;
use crate::rendezvous::{RendezvousClient, RendezvousServer};
use meet::{decode_peers, keep_store_for_others, pmi_secret_and_nodes, set_nodes};

/// How bootstrap reads the environment: a variable's value, if set.
type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

/// A joined job: who we are, and the endpoint to everyone else.
#[derive(Debug)]
pub struct Job {
    /// Rank, size and placement of this process.
    pub world: World,
    /// The settings in force.
    pub config: Config,
    /// Messages to any rank.
    pub endpoint: Endpoint,
    /// The CPUs and GPUs the allocation gives this rank.
    pub resources: RankResources,
    exchange: Option<Exchange>,
    server: Option<RendezvousServer>,
    secret: JobSecret,
}

/// How the ranks of this job talk before the endpoint exists.
#[derive(Debug)]
enum Exchange {
    Rendezvous(RendezvousClient),
    Pmi2(Pmi2Client),
    Pmi1(Pmi1Client),
}

impl Exchange {
    fn finalize(self) -> Result<(), BootstrapError> {
        match self {
            Exchange::Rendezvous(client) => Ok(client.finalize()?),
            Exchange::Pmi2(client) => Ok(client.finalize()?),
            Exchange::Pmi1(client) => Ok(client.finalize()?),
        }
    }
}

/// Publishes this rank's endpoint address through PMI, reads everyone's,
/// and connects, with PMI's fence as the barrier.
fn connect_through_pmi(
    builder: EndpointBuilder,
    kvs: &mut dyn KeyValueSpace,
    world: &World,
) -> Result<Endpoint, BootstrapError> {
    let mine = builder.address().encode();
    let table = exchange::allgather(kvs, "lumen.ep", world.rank, world.size, &mine)?;
    let peers = decode_peers(&table)?;
    Ok(builder.connect(&peers, || kvs.fence())?)
}

/// `PMI_FD` as a descriptor number.
fn pmi_fd(env: Env<'_>) -> Result<i32, BootstrapError> {
    let value = env("PMI_FD").unwrap_or_default();
    value
        .trim()
        .parse()
        .map_err(|_| PmiError::BadFd { value }.into())
}

/// Attaches to the rendezvous store of a running job as an observer (a
/// tool: `lumen status`), with the job's secret. `rendezvous` is the
/// store's `host:port` (under `lumen run`: `LUMEN_RENDEZVOUS` of its
/// ranks).
pub fn observe(
    rendezvous: &str,
    job_id: &str,
    secret: &JobSecret,
    timeout: Duration,
) -> Result<RendezvousClient, BootstrapError> {
    let addr = meet::resolve(rendezvous)?;
    Ok(RendezvousClient::observe(addr, job_id, secret, timeout)?)
}

/// Attaches to the store of a running plain-`srun` job step as an
/// observer: the store its first node hosts at the port derived from job
/// and step id, authenticated with the step's secret derived from
/// `~/.lumen/job-key` (so this works on any host that shares the home
/// directory with the job, as the ranks' own derivation needs). Returns the
/// client and the secret.
pub fn observe_slurm_step(
    job_id: &str,
    step_id: &str,
    first_node: &str,
    timeout: Duration,
) -> Result<(RendezvousClient, JobSecret), BootstrapError> {
    let env = |name: &str| std::env::var(name).ok();
    let secret = meet::key_file_secret(&format!("slurm/{job_id}.{step_id}"), &env)?;
    let ip = meet::resolve(&format!("{first_node}:0"))
        .map_err(|_| BootstrapError::FirstNodeUnresolved {
            node: first_node.to_string(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no IPv4 address"),
        })?
        .ip();
    let client = RendezvousClient::observe_derived(ip, job_id, step_id, &secret, timeout)?;
    Ok((client, secret))
}

/// Joins the job described by this process's environment (see the
/// [module documentation](self) for the launchers it recognises).
pub fn join() -> Result<Job, BootstrapError> {
    join_with(|name| std::env::var(name).ok())
}

/// Joins the job that the variables of `env` describe, as [`join`] does
/// with the process environment: the embedded local cluster's rank 0 joins
/// with the variables its workers were started with
/// ([`LocalRanks::caller_env`](crate::spawn::LocalRanks::caller_env)).
pub fn join_with(env: impl Fn(&str) -> Option<String>) -> Result<Job, BootstrapError> {
    join_env(&env)
}

fn join_env(env: Env<'_>) -> Result<Job, BootstrapError> {
    let mut world = detect(env)?;
    let config = Config::from_env(env)?;
    let timeout = config.rendezvous_timeout;
    let mut server = None;
    let (mut exchange, secret) = match (&world.kind, &world.rendezvous) {
        (_, Some(addr)) => {
            let shared = job_secret_from_env(env)?.ok_or(BootstrapError::MissingSecret)?;
            let addr = meet::resolve(addr)?;
            let client =
                RendezvousClient::connect(addr, &world.job_id, world.rank, &shared, timeout)?;
            (Some(Exchange::Rendezvous(client)), shared)
        }
        (LaunchKind::Slurm { pmi2: true }, None) => {
            let jobid = env("PMI_JOBID").unwrap_or_else(|| world.job_id.clone());
            let mut client = Pmi2Client::connect(pmi_fd(env)?, &jobid, world.rank, timeout)?;
            let init = client.init();
            if (init.rank, init.size) != (world.rank, world.size) {
                return Err(BootstrapError::PmiMismatch {
                    pmi_rank: init.rank,
                    pmi_size: init.size,
                    rank: world.rank,
                    size: world.size,
                });
            }
            let secret = pmi_secret_and_nodes(&mut client, &mut world)?;
            (Some(Exchange::Pmi2(client)), secret)
        }
        (LaunchKind::Hydra, None) if env("PMI_FD").is_some() => {
            let mut client = Pmi1Client::connect(pmi_fd(env)?, world.rank, timeout)?;
            let secret = pmi_secret_and_nodes(&mut client, &mut world)?;
            (Some(Exchange::Pmi1(client)), secret)
        }
        (LaunchKind::Slurm { pmi2: false }, None) => {
            let (client, hosted, shared) = meet::slurm_rendezvous(&world, timeout, env)?;
            server = hosted;
            (Some(Exchange::Rendezvous(client)), shared)
        }
        (LaunchKind::OpenMpi, None) if world.size > 1 => {
            let (client, hosted, shared) = meet::open_mpi_rendezvous(&world, timeout, env)?;
            server = hosted;
            (Some(Exchange::Rendezvous(client)), shared)
        }
        (_, None) if world.size == 1 => (None, JobSecret::random()),
        (kind, None) => {
            return Err(BootstrapError::NoRendezvous {
                kind: *kind,
                size: world.size,
            })
        }
    };
    if world.num_nodes == 0 {
        if let Some(Exchange::Rendezvous(client)) = exchange.as_mut() {
            // Open MPI does not say which ranks share a node: ask the store.
            let table = keep_store_for_others(
                &server,
                client
                    .allgather("host", meet::hostname().as_bytes(), timeout)
                    .map_err(Into::into),
            )?;
            let hosts: Vec<String> = table
                .iter()
                .map(|name| String::from_utf8_lossy(name).into_owned())
                .collect();
            set_nodes(&mut world, &hosts);
        }
    }
    let resources = resources::bind_resources(&world, env)?;
    let transport = config.transport_config(meet::tcp_bind(&config, &world, env)?)?;
    let job_id = match (&world.kind, &world.step_id) {
        (LaunchKind::Slurm { .. }, Some(step)) => format!("{}.{step}", world.job_id),
        _ => world.job_id.clone(),
    };
    let options = EndpointOptions {
        rank: world.rank,
        size: world.size,
        node: world.node_index,
        local_rank: world.local_rank,
        local_size: world.local_size,
        job_id: meet::sanitize(&job_id),
        secret: secret.clone(),
        config: transport,
    };
    let builder = EndpointBuilder::new(options)?;
    let endpoint = match exchange.as_mut() {
        None => {
            let me = builder.address().clone();
            builder.connect(&[me], || Ok::<(), String>(()))?
        }
        Some(Exchange::Rendezvous(client)) => {
            let table = keep_store_for_others(
                &server,
                client
                    .allgather("endpoint", &builder.address().encode(), timeout)
                    .map_err(Into::into),
            )?;
            let peers = decode_peers(&table)?;
            let connected = builder
                .connect(&peers, || client.barrier(timeout))
                .map_err(Into::into);
            keep_store_for_others(&server, connected)?
        }
        Some(Exchange::Pmi2(client)) => connect_through_pmi(builder, client, &world)?,
        Some(Exchange::Pmi1(client)) => connect_through_pmi(builder, client, &world)?,
    };
    Ok(Job {
        world,
        config,
        endpoint,
        resources,
        exchange,
        server,
        secret,
    })
}

impl Job {
    /// This rank.
    pub fn rank(&self) -> u32 {
        self.world.rank
    }

    /// Ranks in the job.
    pub fn size(&self) -> u32 {
        self.world.size
    }

    /// The job's secret: what a tool attaching to the job (`lumen status`)
    /// must prove it knows.
    pub fn secret(&self) -> &JobSecret {
        &self.secret
    }

    /// Stores `value` under `key` in the job's rendezvous store, for
    /// observers (`lumen status`) to read while the job runs; `Ok(false)`
    /// when the job met through PMI or has no store (a singleton), where
    /// there is nothing an observer could read.
    pub fn publish(&mut self, key: &str, value: &[u8]) -> Result<bool, BootstrapError> {
        match &mut self.exchange {
            Some(Exchange::Rendezvous(client)) => {
                client.put(key, value)?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// Leaves in order: waits for every rank, closes the endpoint, and tells the
    /// rendezvous store or PMI server this rank is done (so its exit is not
    /// taken for a crash).
    pub fn finish(self) -> Result<(), BootstrapError> {
        self.leave(true)
    }

    /// Leaves without the closing barrier, for when a rank is known to be
    /// dead (the barrier would fail on it): closes the endpoint and tells the
    /// store or PMI server this rank is done.
    pub fn finish_without_barrier(self) -> Result<(), BootstrapError> {
        self.leave(false)
    }

    fn leave(mut self, barrier: bool) -> Result<(), BootstrapError> {
        if barrier {
            self.endpoint.barrier()?;
        }
        self.endpoint.close();
        if let Some(exchange) = self.exchange.take() {
            exchange.finalize()?;
        }
        if let Some(mut server) = self.server.take() {
            // The hosting rank is one of the job's ranks: it must keep the
            // store up until every other rank has finalized (or gone), or a
            // slower rank's finalize meets a closed socket.
            let deadline = std::time::Instant::now() + self.config.rendezvous_timeout;
            loop {
                let status = server.status();
                let done = status.finalized.len() + status.departed.len();
                if done >= status.size as usize || std::time::Instant::now() >= deadline {
                    break;
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            server.shutdown();
        }
        Ok(())
    }
}
