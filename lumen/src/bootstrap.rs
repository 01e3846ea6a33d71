//! Joining the job this process was started in: detect the launcher, learn
//! the job secret and every rank's endpoint address, bind this rank to its
//! CPUs, and bring up the transport endpoint.
//!
//! | started by | how ranks exchange addresses | job secret |
//! |---|---|---|
//! | `lumen run` | the store inside `lumen run` (`LUMEN_RENDEZVOUS`) | `LUMEN_JOB_SECRET` |
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

use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use lumen_launcher::config::{local_interfaces, select_interface_addr, Config, TcpBackendChoice};
use lumen_launcher::env::{detect, job_secret_from_env, LaunchKind, World};
use lumen_launcher::pmi::client::{Pmi1Client, Pmi2Client};
use lumen_launcher::pmi::exchange::{self, KeyValueSpace};
use lumen_launcher::pmi::PmiError;
use lumen_launcher::rendezvous::{RendezvousClient, RendezvousServer};
use lumen_slurm::binding::{cpus_for_local_rank, gpus_for_local_rank, CpuBinding, GpuAssignment};
use lumen_transport::{
    Endpoint, EndpointBuilder, EndpointOptions, JobSecret, PeerAddress, TcpBackend, TransportConfig,
};

use crate::error::{LumenError, Result};

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
}

/// What the allocation gives one rank.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RankResources {
    /// CPUs the process was bound to; `None` when it was left unbound (the
    /// reason is logged at debug level).
    pub cpus: Option<Vec<usize>>,
    /// GPUs of this rank: CUDA ordinal in this process and the node's name
    /// for the device.
    pub gpus: Vec<GpuAssignment>,
}

/// How the ranks of this job talk before the endpoint exists.
#[derive(Debug)]
enum Exchange {
    Rendezvous(RendezvousClient),
    Pmi2(Pmi2Client),
    Pmi1(Pmi1Client),
}

impl Exchange {
    fn barrier(&mut self, timeout: Duration) -> Result<()> {
        match self {
            Exchange::Rendezvous(client) => Ok(client.barrier(timeout)?),
            Exchange::Pmi2(client) => client.fence().map_err(pmi_error),
            Exchange::Pmi1(client) => client.barrier().map_err(pmi_error),
        }
    }

    fn kvs(&mut self) -> Option<&mut dyn KeyValueSpace> {
        match self {
            Exchange::Rendezvous(_) => None,
            Exchange::Pmi2(client) => Some(client),
            Exchange::Pmi1(client) => Some(client),
        }
    }

    fn finalize(self) -> Result<()> {
        match self {
            Exchange::Rendezvous(client) => Ok(client.finalize()?),
            Exchange::Pmi2(client) => client.finalize().map_err(pmi_error),
            Exchange::Pmi1(client) => client.finalize().map_err(pmi_error),
        }
    }
}

fn pmi_error(error: PmiError) -> LumenError {
    LumenError::Bootstrap(error.to_string())
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

fn bootstrap_error(error: impl std::fmt::Display) -> LumenError {
    LumenError::Bootstrap(error.to_string())
}

fn key_file_secret(context: &str) -> Result<JobSecret> {
    let home = env("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp"));
    let dir = home.join(".lumen");
    let path = dir.join("job-key");
    let read = std::fs::read(&path);
    let key = match read {
        Ok(key) if key.len() >= 32 => key,
        _ => {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::create_dir_all(&dir)
                .map_err(|e| LumenError::Bootstrap(format!("creating {}: {e}", dir.display())))?;
            let key = lumen_transport::auth::random_bytes().to_vec();
            let tmp = dir.join(format!("job-key.{}", std::process::id()));
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)
                .and_then(|mut f| std::io::Write::write_all(&mut f, &key))
                .map_err(|e| LumenError::Bootstrap(format!("writing {}: {e}", tmp.display())))?;
            // Two ranks racing here: link fails for the loser, who then reads the winner's key.
            if std::fs::hard_link(&tmp, &path).is_err() {
                let _ = std::fs::remove_file(&tmp);
                return std::fs::read(&path)
                    .map(|k| JobSecret::derive(&k, context))
                    .map_err(|e| {
                        LumenError::Bootstrap(format!("reading {}: {e}", path.display()))
                    });
            }
            let _ = std::fs::remove_file(&tmp);
            key
        }
    };
    Ok(JobSecret::derive(&key, context))
}

fn transport_config(config: &Config, world: &World) -> Result<TransportConfig> {
    let single_host = world.num_nodes <= 1 && world.hosts.len() <= 1;
    let tcp_bind = if single_host && matches!(world.kind, LaunchKind::Lumen | LaunchKind::OpenMpi)
        || world.num_nodes == 1 && config.tcp_interfaces.is_empty()
    {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else {
        let candidates = local_interfaces()
            .map_err(|e| LumenError::Bootstrap(format!("listing network interfaces: {e}")))?;
        select_interface_addr(&config.tcp_interfaces, &candidates).ok_or_else(|| {
            LumenError::Bootstrap(format!(
                "no network interface matches LUMEN_TCP_IF={:?}; interfaces here: {:?}",
                env("LUMEN_TCP_IF").unwrap_or_default(),
                candidates
            ))
        })?
    };
    Ok(TransportConfig {
        eager_limit: config.eager_limit,
        ring_bytes: config.shm_ring_bytes,
        spin: config.spin,
        tcp_backend: match config.tcp_backend {
            TcpBackendChoice::Auto => TcpBackend::Auto,
            TcpBackendChoice::Uring => TcpBackend::Uring,
            TcpBackendChoice::Epoll => TcpBackend::Epoll,
        },
        tcp_bind,
        tcp_conns: config.tcp_conns_per_peer as usize,
        connect_timeout: config.rendezvous_timeout,
        ..TransportConfig::default()
    })
}

/// `PMI_FD` as a descriptor number.
fn pmi_fd() -> Result<i32> {
    let value = env("PMI_FD").unwrap_or_default();
    value
        .trim()
        .parse()
        .map_err(|_| pmi_error(PmiError::BadFd { value }))
}

/// Joins the job described by this process's environment.
pub fn join() -> Result<Job> {
    let mut world = detect(env).map_err(bootstrap_error)?;
    let config = Config::from_env(env).map_err(bootstrap_error)?;
    let timeout = config.rendezvous_timeout;
    let mut server = None;
    let mut secret = None;
    let mut exchange = match (&world.kind, &world.rendezvous) {
        (_, Some(addr)) => {
            let shared = job_secret_from_env(env).map_err(bootstrap_error)?.ok_or_else(|| {
                LumenError::Bootstrap("LUMEN_RENDEZVOUS is set but LUMEN_JOB_SECRET is not".into())
            })?;
            let addr = resolve(addr)?;
            let client = RendezvousClient::connect(addr, &world.job_id, world.rank, &shared, timeout)?;
            secret = Some(shared);
            Some(Exchange::Rendezvous(client))
        }
        (LaunchKind::Slurm { pmi2: true }, None) => {
            let jobid = env("PMI_JOBID").unwrap_or_else(|| world.job_id.clone());
            let client = Pmi2Client::connect(pmi_fd()?, &jobid, world.rank, timeout).map_err(pmi_error)?;
            let init = client.init();
            if (init.rank, init.size) != (world.rank, world.size) {
                return Err(LumenError::Bootstrap(format!(
                    "the PMI-2 server says rank {} of {} but SLURM_PROCID/SLURM_NTASKS say {} of {}; the step's environment is inconsistent",
                    init.rank, init.size, world.rank, world.size
                )));
            }
            Some(Exchange::Pmi2(client))
        }
        (LaunchKind::Hydra, None) if env("PMI_FD").is_some() => {
            let client = Pmi1Client::connect(pmi_fd()?, world.rank, timeout).map_err(pmi_error)?;
            Some(Exchange::Pmi1(client))
        }
        (LaunchKind::Slurm { pmi2: false }, None) => {
            let (client, hosted, shared) = slurm_rendezvous(&world, timeout)?;
            server = hosted;
            secret = Some(shared);
            Some(Exchange::Rendezvous(client))
        }
        (LaunchKind::OpenMpi, None) if world.size > 1 => {
            let (client, hosted, shared) = open_mpi_rendezvous(&world, timeout)?;
            server = hosted;
            secret = Some(shared);
            Some(Exchange::Rendezvous(client))
        }
        (_, None) if world.size == 1 => {
            secret = Some(JobSecret::random());
            None
        }
        (kind, None) => {
            return Err(LumenError::Bootstrap(format!(
                "started by {kind:?} with {} ranks but no way to meet the other ranks: launch with `srun`, `srun --mpi=pmi2`, `mpiexec.mpich` (PMI_FD), `lumen run`, or set LUMEN_RENDEZVOUS=host:port and LUMEN_JOB_SECRET",
                world.size
            )))
        }
    };
    if let Some(kvs) = exchange.as_mut().and_then(Exchange::kvs) {
        secret = Some(pmi_secret_and_nodes(kvs, &mut world)?);
    }
    if world.num_nodes == 0 {
        if let Some(Exchange::Rendezvous(client)) = exchange.as_mut() {
            // Open MPI does not say which ranks share a node: ask the store.
            let table = keep_store_for_others(
                &server,
                client
                    .allgather("host", hostname().as_bytes(), timeout)
                    .map_err(Into::into),
            )?;
            let hosts: Vec<String> = table
                .iter()
                .map(|name| String::from_utf8_lossy(name).into_owned())
                .collect();
            let (node_index, nodes) = node_layout(&hosts, world.rank);
            world.node_index = node_index;
            world.num_nodes = nodes.len() as u32;
            world.hosts = nodes;
        }
    }
    let secret = secret.ok_or_else(|| LumenError::Bootstrap("no job secret".into()))?;
    let resources = bind_resources(&world)?;
    let transport = transport_config(&config, &world)?;
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
        job_id: sanitize(&job_id),
        secret,
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
        Some(other) => {
            let mine = builder.address().encode();
            let kvs = other
                .kvs()
                .ok_or_else(|| LumenError::Bootstrap("no PMI".into()))?;
            let table = exchange::allgather(kvs, "lumen.ep", world.rank, world.size, &mine)
                .map_err(pmi_error)?;
            let peers = decode_peers(&table)?;
            builder.connect(&peers, || other.barrier(timeout))?
        }
    };
    Ok(Job {
        world,
        config,
        endpoint,
        resources,
        exchange,
        server,
    })
}

/// Joins a job whose ranks already run MPI (feature `mpi`): Lumen's world
/// is `comm` (usually `MPI_COMM_WORLD`) with the same rank order, so an MPI
/// code can adopt Lumen next to its MPI calls. MPI itself carries the
/// bootstrap: host names and endpoint addresses travel by `MPI_Allgather`,
/// the job secret and job id by `MPI_Bcast` from rank 0; no PMI, store or
/// port of Lumen's is involved, so this works under any MPI launcher.
///
/// Drop (or [`finish`](Job::finish)) the job before MPI is finalized.
#[cfg(feature = "mpi")]
pub fn join_mpi<C: mpi::traits::Communicator>(comm: &C) -> Result<Job> {
    use mpi::traits::{CommunicatorCollectives, Root};

    /// Room for one host name, and for one encoded endpoint address.
    const HOST_BYTES: usize = 256;
    const ADDRESS_BYTES: usize = 512;

    fn padded(bytes: &[u8], width: usize, what: &str) -> Result<Vec<u8>> {
        if bytes.len() + 2 > width {
            return Err(LumenError::Bootstrap(format!(
                "{what} is longer than {} bytes",
                width - 2
            )));
        }
        let mut out = Vec::with_capacity(width);
        out.extend_from_slice(&(bytes.len() as u16).to_le_bytes());
        out.extend_from_slice(bytes);
        out.resize(width, 0);
        Ok(out)
    }
    fn unpadded(chunk: &[u8]) -> &[u8] {
        let len = u16::from_le_bytes([chunk[0], chunk[1]]) as usize;
        chunk.get(2..2 + len).unwrap_or_default()
    }

    let rank = u32::try_from(comm.rank()).map_err(bootstrap_error)?;
    let size = u32::try_from(comm.size()).map_err(bootstrap_error)?;
    let config = Config::from_env(env).map_err(bootstrap_error)?;
    let kind = detect(env).map(|w| w.kind).unwrap_or(LaunchKind::Singleton);

    let mine = padded(hostname().as_bytes(), HOST_BYTES, "the host name")?;
    let mut all = vec![0u8; HOST_BYTES * size as usize];
    comm.all_gather_into(&mine[..], &mut all[..]);
    let hosts: Vec<String> = all
        .chunks(HOST_BYTES)
        .map(|chunk| String::from_utf8_lossy(unpadded(chunk)).into_owned())
        .collect();
    let (node_index, nodes) = node_layout(&hosts, rank);
    let here = &hosts[rank as usize];
    let local_rank = hosts[..rank as usize].iter().filter(|h| *h == here).count() as u32;
    let local_size = hosts.iter().filter(|h| *h == here).count() as u32;

    // Rank 0 draws the secret and a job id; everyone else receives them.
    let mut shared = [0u8; 48];
    if rank == 0 {
        shared[..32].copy_from_slice(&lumen_transport::auth::random_bytes());
        shared[32..].copy_from_slice(&lumen_transport::auth::random_bytes()[..16]);
    }
    comm.process_at_rank(0).broadcast_into(&mut shared[..]);
    let mut secret_bytes = [0u8; 32];
    secret_bytes.copy_from_slice(&shared[..32]);
    let secret = JobSecret::from_bytes(secret_bytes);
    let job_id = format!("mpi-{}", exchange::to_hex(&shared[32..40]));

    let world = World {
        rank,
        size,
        local_rank,
        local_size,
        node_index,
        num_nodes: nodes.len() as u32,
        hosts: nodes,
        job_id: job_id.clone(),
        step_id: None,
        kind,
        rendezvous: None,
    };
    let transport = transport_config(&config, &world)?;
    let options = EndpointOptions {
        rank,
        size,
        node: world.node_index,
        local_rank,
        local_size,
        job_id,
        secret,
        config: transport,
    };
    let builder = EndpointBuilder::new(options)?;
    let mine = padded(
        &builder.address().encode(),
        ADDRESS_BYTES,
        "the endpoint address",
    )?;
    let mut all = vec![0u8; ADDRESS_BYTES * size as usize];
    comm.all_gather_into(&mine[..], &mut all[..]);
    let table: Vec<Vec<u8>> = all
        .chunks(ADDRESS_BYTES)
        .map(|c| unpadded(c).to_vec())
        .collect();
    let peers = decode_peers(&table)?;
    let endpoint = builder.connect(&peers, || {
        comm.barrier();
        Ok::<(), String>(())
    })?;
    Ok(Job {
        world,
        config,
        endpoint,
        resources: RankResources::default(),
        exchange: None,
        server: None,
    })
}

/// When this rank hosts the store and its bootstrap failed, keeps the store
/// up (a few seconds at most) until the other ranks have failed too, so that
/// each of them reports the real cause (say, "rank 4 never arrived") rather
/// than "the rank hosting the store left".
fn keep_store_for_others<T>(server: &Option<RendezvousServer>, result: Result<T>) -> Result<T> {
    if let (Err(_), Some(server)) = (&result, server) {
        let deadline = std::time::Instant::now() + Duration::from_secs(3);
        while server.status().connected.len() > 1 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    result
}

fn decode_peers(table: &[Vec<u8>]) -> Result<Vec<PeerAddress>> {
    Ok(table
        .iter()
        .map(|bytes| PeerAddress::decode(bytes))
        .collect::<std::result::Result<Vec<_>, _>>()?)
}

/// Under PMI: rank 0 draws the job secret and every rank publishes its host
/// name; after one fence every rank knows the secret and, when the launcher
/// did not say (Hydra), which ranks share its node.
fn pmi_secret_and_nodes(kvs: &mut dyn KeyValueSpace, world: &mut World) -> Result<JobSecret> {
    let learn_nodes = world.num_nodes == 0;
    if world.rank == 0 {
        exchange::put_bytes(kvs, "lumen.secret", JobSecret::random().to_hex().as_bytes())
            .map_err(pmi_error)?;
    }
    let host = hostname();
    if learn_nodes {
        exchange::put_bytes(kvs, &format!("lumen.host.{}", world.rank), host.as_bytes())
            .map_err(pmi_error)?;
    }
    kvs.fence().map_err(pmi_error)?;
    let hex = exchange::get_bytes(kvs, "lumen.secret").map_err(pmi_error)?;
    let secret = std::str::from_utf8(&hex)
        .ok()
        .and_then(|hex| JobSecret::from_hex(hex).ok())
        .ok_or_else(|| {
            LumenError::Bootstrap("rank 0 published a malformed job secret through PMI".into())
        })?;
    if learn_nodes {
        let mut hosts = Vec::with_capacity(world.size as usize);
        for rank in 0..world.size {
            let name = if rank == world.rank {
                host.clone()
            } else {
                let bytes =
                    exchange::get_bytes(kvs, &format!("lumen.host.{rank}")).map_err(pmi_error)?;
                String::from_utf8_lossy(&bytes).into_owned()
            };
            hosts.push(name);
        }
        let (node_index, nodes) = node_layout(&hosts, world.rank);
        world.node_index = node_index;
        world.num_nodes = nodes.len() as u32;
        world.hosts = nodes;
    }
    Ok(secret)
}

/// Node index of `rank` and the distinct hosts in order of first appearance.
fn node_layout(rank_hosts: &[String], rank: u32) -> (u32, Vec<String>) {
    let mut nodes: Vec<String> = Vec::new();
    for host in rank_hosts {
        if !nodes.contains(host) {
            nodes.push(host.clone());
        }
    }
    let mine = rank_hosts.get(rank as usize);
    let index = nodes.iter().position(|n| Some(n) == mine).unwrap_or(0);
    (index as u32, nodes)
}

/// `h1` of `h1.cluster.example`.
fn short_name(host: &str) -> &str {
    host.split('.').next().unwrap_or(host)
}

fn hostname() -> String {
    let mut buffer = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates
    // within it or truncates.
    let rc = unsafe { libc::gethostname(buffer.as_mut_ptr().cast(), buffer.len()) };
    if rc != 0 {
        return format!("pid-{}", std::process::id());
    }
    let end = buffer.iter().position(|&b| b == 0).unwrap_or(buffer.len());
    String::from_utf8_lossy(&buffer[..end]).into_owned()
}

type Hosted = (RendezvousClient, Option<RendezvousServer>, JobSecret);

/// Plain `srun`: local rank 0 of the step's first node hosts the store (so
/// the host is known to all without asking anyone, whatever the task
/// distribution), on the address that node's name resolves to.
fn slurm_rendezvous(world: &World, timeout: Duration) -> Result<Hosted> {
    let step = world.step_id.clone().unwrap_or_default();
    let secret = key_file_secret(&format!("slurm/{}.{step}", world.job_id))?;
    let first = world
        .hosts
        .first()
        .cloned()
        .unwrap_or_else(|| "localhost".into());
    let ip = resolve(&format!("{first}:0"))
        .map_err(|e| LumenError::Bootstrap(format!("the step's first node {first:?} (SLURM_STEP_NODELIST) does not resolve, so ranks cannot find the rendezvous: {e}; set LUMEN_RENDEZVOUS and LUMEN_JOB_SECRET, or use srun --mpi=pmi2")))?
        .ip();
    let mut server = None;
    if world.node_index == 0 && world.local_rank == 0 {
        let bind_ip = if world.num_nodes <= 1 {
            ip
        } else {
            IpAddr::V4(Ipv4Addr::UNSPECIFIED)
        };
        server = Some(RendezvousServer::bind_derived(
            bind_ip,
            &world.job_id,
            &step,
            world.size,
            secret.clone(),
        )?);
    }
    let client =
        RendezvousClient::connect_derived(ip, &world.job_id, &step, world.rank, &secret, timeout)?;
    Ok((client, server, secret))
}

/// `mpirun` of Open MPI: rank 0 hosts the store at a port derived from the
/// Open MPI job id, on 127.0.0.1 when every rank is local, else on the
/// allocation's first node (inside Slurm only).
fn open_mpi_rendezvous(world: &World, timeout: Duration) -> Result<Hosted> {
    let nodes = env("OMPI_MCA_orte_num_nodes").and_then(|n| n.parse::<u32>().ok());
    let multi_host = world.local_size != world.size || nodes.is_some_and(|n| n > 1);
    // Across hosts, only inside a Slurm allocation: mpirun maps rank 0 to the
    // allocation's first node (by-slot mapping, the default), whose name
    // every rank can read and resolve.
    let first_node = env("SLURM_JOB_NODELIST")
        .and_then(|list| lumen_slurm::hostlist::expand(&list).ok())
        .and_then(|hosts| hosts.into_iter().next());
    let ip = match (multi_host, &first_node) {
        (false, _) => IpAddr::V4(Ipv4Addr::LOCALHOST),
        (true, Some(first)) => {
            if world.rank == 0 && short_name(&hostname()) != short_name(first) {
                return Err(LumenError::Bootstrap(format!(
                    "mpirun (Open MPI) across hosts: rank 0 runs on {} but the allocation's first node is {first}; Lumen expects rank 0 there (the default by-slot mapping). Drop --map-by/--rankfile options, or set LUMEN_RENDEZVOUS and LUMEN_JOB_SECRET",
                    hostname()
                )));
            }
            resolve(&format!("{first}:0"))?.ip()
        }
        (true, None) => {
            return Err(LumenError::Bootstrap(format!(
                "mpirun (Open MPI) started {} ranks on several hosts ({} on this one) outside a Slurm allocation; Lumen meets Open MPI ranks without help on one host or inside an allocation. Otherwise set LUMEN_RENDEZVOUS=host:port and LUMEN_JOB_SECRET for every rank, or launch with srun / mpiexec.mpich",
                world.size, world.local_size
            )))
        }
    };
    if world.job_id.is_empty() {
        return Err(LumenError::Bootstrap(
            "mpirun (Open MPI) exported no job id (OMPI_MCA_ess_base_jobid, PMIX_NAMESPACE); set LUMEN_RENDEZVOUS and LUMEN_JOB_SECRET".into(),
        ));
    }
    let context = format!("ompi/{}", world.job_id);
    let secret = match env("OMPI_MCA_orte_precondition_transports") {
        // A random per-job key that mpirun gives every rank of this job only.
        Some(key) if key.len() >= 16 => JobSecret::derive(key.as_bytes(), &context),
        _ => key_file_secret(&context)?,
    };
    let mut server = None;
    if world.rank == 0 {
        let bind_ip = if multi_host {
            IpAddr::V4(Ipv4Addr::UNSPECIFIED)
        } else {
            ip
        };
        server = Some(RendezvousServer::bind_derived(
            bind_ip,
            &world.job_id,
            "ompi",
            world.size,
            secret.clone(),
        )?);
    }
    let client =
        RendezvousClient::connect_derived(ip, &world.job_id, "ompi", world.rank, &secret, timeout)?;
    Ok((client, server, secret))
}

/// Computes (and applies, for CPUs) the rank's share of the allocation.
fn bind_resources(world: &World) -> Result<RankResources> {
    if !matches!(world.kind, LaunchKind::Slurm { .. }) {
        return Ok(RankResources::default());
    }
    let number = |name: &str| env(name).and_then(|v| v.trim().parse::<u32>().ok());
    let step_gpus: Option<Vec<u32>> = env("SLURM_STEP_GPUS")
        .or_else(|| env("SLURM_JOB_GPUS"))
        .map(|list| {
            list.split(',')
                .filter_map(|g| g.trim().parse().ok())
                .collect()
        });
    let gpus = gpus_for_local_rank(
        step_gpus.as_deref(),
        env("CUDA_VISIBLE_DEVICES").as_deref(),
        world.local_rank,
        world.local_size,
        number("SLURM_GPUS_PER_TASK"),
    )
    .map_err(|e| LumenError::Bootstrap(format!("rank {}: {e}", world.rank)))?;
    let cpus = match cpus_for_local_rank(
        &allowed_cpus(),
        world.local_rank,
        world.local_size,
        number("SLURM_CPUS_PER_TASK"),
    ) {
        CpuBinding::Cpus(cpus) => {
            set_affinity(&cpus).map_err(|e| {
                LumenError::Bootstrap(format!(
                    "rank {}: binding to CPUs {cpus:?}: {e}",
                    world.rank
                ))
            })?;
            Some(cpus)
        }
        CpuBinding::Unbound(reason) => {
            tracing::debug!(rank = world.rank, reason, "not binding CPUs");
            None
        }
    };
    Ok(RankResources { cpus, gpus })
}

/// The CPUs this process may run on.
fn allowed_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain data; zeroed is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid cpu_set_t of the size passed.
    let rc =
        unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if rc != 0 {
        return Vec::new();
    }
    (0..libc::CPU_SETSIZE as usize)
        // SAFETY: `i` is below CPU_SETSIZE, the set's capacity.
        .filter(|&i| unsafe { libc::CPU_ISSET(i, &set) })
        .collect()
}

fn set_affinity(cpus: &[usize]) -> std::io::Result<()> {
    // SAFETY: cpu_set_t is plain data; zeroed is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &cpu in cpus.iter().filter(|&&c| c < libc::CPU_SETSIZE as usize) {
        // SAFETY: `cpu` is below CPU_SETSIZE.
        unsafe { libc::CPU_SET(cpu, &mut set) };
    }
    // SAFETY: `set` is a valid cpu_set_t of the size passed.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn sanitize(job_id: &str) -> String {
    job_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn resolve(addr: &str) -> Result<SocketAddr> {
    addr.to_socket_addrs()
        .map_err(|e| LumenError::Bootstrap(format!("cannot resolve {addr}: {e}")))?
        .find(SocketAddr::is_ipv4)
        .ok_or_else(|| LumenError::Bootstrap(format!("{addr} has no IPv4 address")))
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

    /// Leaves in order: waits for every rank, closes the endpoint, and tells the
    /// rendezvous store or PMI server this rank is done (so its exit is not
    /// taken for a crash).
    pub fn finish(mut self) -> Result<()> {
        self.endpoint.barrier()?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_layout_groups_ranks_by_host_in_order() {
        let hosts: Vec<String> = ["b", "a", "b", "c", "a"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(
            node_layout(&hosts, 0),
            (0, vec!["b".into(), "a".into(), "c".into()])
        );
        assert_eq!(node_layout(&hosts, 4).0, 1);
        assert_eq!(node_layout(&hosts, 3).0, 2);
    }
}
