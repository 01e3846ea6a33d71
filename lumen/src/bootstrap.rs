//! Joining the job this process was started in: detect the launcher, meet the
//! other ranks at the rendezvous store, and bring up the transport endpoint.
//!
//! | started by | rendezvous |
//! |---|---|
//! | `lumen run` | the store inside `lumen run` (`LUMEN_RENDEZVOUS`) |
//! | `srun` | rank 0 hosts the store on the first node at a port derived from job and step id |
//! | bare `./app` (one rank) | none |
//!
//! The job secret comes from `lumen run` (`LUMEN_JOB_SECRET`); under Slurm it
//! is derived from the per-user key `~/.lumen/job-key` (created on first use,
//! mode 0600, on the shared home directory of the cluster) and the job and
//! step ids, so only the user's own processes can join the job.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;

use lumen_launcher::config::{local_interfaces, select_interface_addr, Config, TcpBackendChoice};
use lumen_launcher::env::{detect, job_secret_from_env, LaunchKind, World};
use lumen_launcher::rendezvous::{RendezvousClient, RendezvousServer};
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
    rendezvous: Option<RendezvousClient>,
    server: Option<RendezvousServer>,
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok()
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
    let tcp_bind =
        if world.num_nodes <= 1 && world.kind == LaunchKind::Lumen && world.hosts.len() <= 1 {
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

/// Joins the job described by this process's environment.
pub fn join() -> Result<Job> {
    let world = detect(env).map_err(|e| LumenError::Bootstrap(e.to_string()))?;
    let config = Config::from_env(env).map_err(|e| LumenError::Bootstrap(e.to_string()))?;
    let transport = transport_config(&config, &world)?;
    let timeout = config.rendezvous_timeout;
    let mut server = None;
    let (secret, job_id, mut client) = match (&world.kind, &world.rendezvous) {
        (_, Some(addr)) => {
            let secret = job_secret_from_env(env)
                .map_err(|e| LumenError::Bootstrap(e.to_string()))?
                .ok_or_else(|| LumenError::Bootstrap("LUMEN_RENDEZVOUS is set but LUMEN_JOB_SECRET is not".into()))?;
            let addr = resolve(addr)?;
            let client = RendezvousClient::connect(addr, &world.job_id, world.rank, &secret, timeout)?;
            (secret, world.job_id.clone(), Some(client))
        }
        (LaunchKind::Slurm { .. }, None) => {
            let step = world.step_id.clone().unwrap_or_default();
            let secret = key_file_secret(&format!("slurm/{}.{step}", world.job_id))?;
            let first = world.hosts.first().cloned().unwrap_or_else(|| "localhost".into());
            let ip = resolve(&format!("{first}:0"))?.ip();
            if world.rank == 0 {
                let bind_ip = if world.num_nodes <= 1 { ip } else { IpAddr::V4(Ipv4Addr::UNSPECIFIED) };
                server = Some(RendezvousServer::bind_derived(bind_ip, &world.job_id, &step, world.size, secret.clone())?);
            }
            let client = RendezvousClient::connect_derived(ip, &world.job_id, &step, world.rank, &secret, timeout)?;
            (secret, format!("{}.{step}", world.job_id), Some(client))
        }
        (_, None) if world.size == 1 => (JobSecret::random(), world.job_id.clone(), None),
        (kind, None) => {
            return Err(LumenError::Bootstrap(format!(
                "started by {kind:?} with {} ranks but no rendezvous address: set LUMEN_RENDEZVOUS=host:port or launch with `lumen run`",
                world.size
            )))
        }
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
    let endpoint = match client.as_mut() {
        None => {
            let me = builder.address().clone();
            builder.connect(&[me], || Ok::<(), String>(()))?
        }
        Some(client) => {
            let table = client.allgather("endpoint", &builder.address().encode(), timeout)?;
            let peers = table
                .iter()
                .map(|bytes| PeerAddress::decode(bytes))
                .collect::<std::result::Result<Vec<_>, _>>()?;
            builder.connect(&peers, || client.barrier(timeout))?
        }
    };
    Ok(Job {
        world,
        config,
        endpoint,
        rendezvous: client,
        server,
    })
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
    /// rendezvous store this rank is done (so its exit is not taken for a crash).
    pub fn finish(mut self) -> Result<()> {
        self.endpoint.barrier()?;
        self.endpoint.close();
        if let Some(client) = self.rendezvous.take() {
            client.finalize()?;
        }
        if let Some(mut server) = self.server.take() {
            server.shutdown();
        }
        Ok(())
    }
}
