//! How the ranks of a job find each other before the endpoint exists: the
//! derived TCP stores of plain `srun` and Open MPI's `mpirun`, the job
//! secrets they derive, what travels through PMI, and the host facts every
//! path needs (node layout, host name, the TCP listening address).

use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use lumen_transport::{JobSecret, PeerAddress};

use super::error::BootstrapError;
use super::Env;
use crate::config::{local_interfaces, select_interface_addr, Config, TCP_IF_VAR};
use crate::env::{LaunchKind, World};
use crate::pmi::exchange::{self, KeyValueSpace};
use crate::rendezvous::{RendezvousClient, RendezvousServer};

/// A rendezvous client, the store when this rank hosts it, and the secret.
pub(super) type Hosted = (RendezvousClient, Option<RendezvousServer>, JobSecret);

/// The job secret derived from `~/.lumen/job-key` (created on first use,
/// mode 0600) for `context`.
pub(super) fn key_file_secret(context: &str, env: Env<'_>) -> Result<JobSecret, BootstrapError> {
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
            std::fs::create_dir_all(&dir).map_err(|source| BootstrapError::KeyFile {
                action: "creating",
                path: dir.clone(),
                source,
            })?;
            let key = lumen_transport::auth::random_bytes().to_vec();
            let tmp = dir.join(format!("job-key.{}", std::process::id()));
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)
                .and_then(|mut f| std::io::Write::write_all(&mut f, &key))
                .map_err(|source| BootstrapError::KeyFile {
                    action: "writing",
                    path: tmp.clone(),
                    source,
                })?;
            // Two ranks racing here: link fails for the loser, who then reads the winner's key.
            if std::fs::hard_link(&tmp, &path).is_err() {
                let _ = std::fs::remove_file(&tmp);
                return std::fs::read(&path)
                    .map(|k| JobSecret::derive(&k, context))
                    .map_err(|source| BootstrapError::KeyFile {
                        action: "reading",
                        path,
                        source,
                    });
            }
            let _ = std::fs::remove_file(&tmp);
            key
        }
    };
    Ok(JobSecret::derive(&key, context))
}

/// The address the TCP transport listens on: loopback when every rank runs
/// on this host, else the interface `LUMEN_TCP_IF` selects.
pub(super) fn tcp_bind(
    config: &Config,
    world: &World,
    env: Env<'_>,
) -> Result<IpAddr, BootstrapError> {
    let single_host = world.num_nodes <= 1 && world.hosts.len() <= 1;
    if single_host && matches!(world.kind, LaunchKind::Lumen | LaunchKind::OpenMpi)
        || world.num_nodes == 1 && config.tcp_interfaces.is_empty()
    {
        return Ok(IpAddr::V4(Ipv4Addr::LOCALHOST));
    }
    let candidates = local_interfaces().map_err(BootstrapError::Interfaces)?;
    select_interface_addr(&config.tcp_interfaces, &candidates).ok_or_else(|| {
        BootstrapError::NoInterface {
            selection: env(TCP_IF_VAR).unwrap_or_default(),
            candidates,
        }
    })
}

/// When this rank hosts the store and its bootstrap failed, keeps the store
/// up (a few seconds at most) until the other ranks have failed too, so that
/// each of them reports the real cause (say, "rank 4 never arrived") rather
/// than "the rank hosting the store left".
pub(super) fn keep_store_for_others<T>(
    server: &Option<RendezvousServer>,
    result: Result<T, BootstrapError>,
) -> Result<T, BootstrapError> {
    if let (Err(_), Some(server)) = (&result, server) {
        let deadline = std::time::Instant::now() + Duration::from_secs(3);
        while server.status().connected.len() > 1 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    result
}

pub(super) fn decode_peers(table: &[Vec<u8>]) -> Result<Vec<PeerAddress>, BootstrapError> {
    Ok(table
        .iter()
        .map(|bytes| PeerAddress::decode(bytes))
        .collect::<Result<Vec<_>, _>>()?)
}

/// Under PMI: rank 0 draws the job secret and every rank publishes its host
/// name; after one fence every rank knows the secret and, when the launcher
/// did not say (Hydra), which ranks share its node.
pub(super) fn pmi_secret_and_nodes(
    kvs: &mut dyn KeyValueSpace,
    world: &mut World,
) -> Result<JobSecret, BootstrapError> {
    let learn_nodes = world.num_nodes == 0;
    if world.rank == 0 {
        exchange::put_bytes(kvs, "lumen.secret", JobSecret::random().to_hex().as_bytes())?;
    }
    let host = hostname();
    if learn_nodes {
        exchange::put_bytes(kvs, &format!("lumen.host.{}", world.rank), host.as_bytes())?;
    }
    kvs.fence()?;
    let hex = exchange::get_bytes(kvs, "lumen.secret")?;
    let secret = std::str::from_utf8(&hex)
        .ok()
        .and_then(|hex| JobSecret::from_hex(hex).ok())
        .ok_or(BootstrapError::BadPmiSecret)?;
    if learn_nodes {
        let mut hosts = Vec::with_capacity(world.size as usize);
        for rank in 0..world.size {
            let name = if rank == world.rank {
                host.clone()
            } else {
                let bytes = exchange::get_bytes(kvs, &format!("lumen.host.{rank}"))?;
                String::from_utf8_lossy(&bytes).into_owned()
            };
            hosts.push(name);
        }
        set_nodes(world, &hosts);
    }
    Ok(secret)
}

/// Fills in `world`'s node facts from every rank's host name.
pub(super) fn set_nodes(world: &mut World, rank_hosts: &[String]) {
    let (node_index, nodes) = node_layout(rank_hosts, world.rank);
    world.node_index = node_index;
    world.num_nodes = nodes.len() as u32;
    world.hosts = nodes;
}

/// Node index of `rank` and the distinct hosts in order of first appearance.
pub(super) fn node_layout(rank_hosts: &[String], rank: u32) -> (u32, Vec<String>) {
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

pub(super) fn hostname() -> String {
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

/// Plain `srun`: local rank 0 of the step's first node hosts the store (so
/// the host is known to all without asking anyone, whatever the task
/// distribution), on the address that node's name resolves to.
pub(super) fn slurm_rendezvous(
    world: &World,
    timeout: Duration,
    env: Env<'_>,
) -> Result<Hosted, BootstrapError> {
    let step = world.step_id.clone().unwrap_or_default();
    let secret = key_file_secret(&format!("slurm/{}.{step}", world.job_id), env)?;
    let first = world
        .hosts
        .first()
        .cloned()
        .unwrap_or_else(|| "localhost".into());
    let ip = resolve_ipv4(&format!("{first}:0"))
        .map_err(|source| BootstrapError::FirstNodeUnresolved {
            node: first.clone(),
            source,
        })?
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
pub(super) fn open_mpi_rendezvous(
    world: &World,
    timeout: Duration,
    env: Env<'_>,
) -> Result<Hosted, BootstrapError> {
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
                return Err(BootstrapError::OpenMpiRankZeroElsewhere {
                    host: hostname(),
                    first: first.clone(),
                });
            }
            resolve(&format!("{first}:0"))?.ip()
        }
        (true, None) => {
            return Err(BootstrapError::OpenMpiAcrossHosts {
                size: world.size,
                local_size: world.local_size,
            })
        }
    };
    if world.job_id.is_empty() {
        return Err(BootstrapError::OpenMpiNoJobId);
    }
    let context = format!("ompi/{}", world.job_id);
    let secret = match env("OMPI_MCA_orte_precondition_transports") {
        // A random per-job key that mpirun gives every rank of this job only.
        Some(key) if key.len() >= 16 => JobSecret::derive(key.as_bytes(), &context),
        _ => key_file_secret(&context, env)?,
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

/// A job id safe in file names (the transport names shared memory after it).
pub(super) fn sanitize(job_id: &str) -> String {
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

/// The first IPv4 address of `addr` (`host:port`).
pub(super) fn resolve(addr: &str) -> Result<SocketAddr, BootstrapError> {
    resolve_ipv4(addr).map_err(|source| BootstrapError::Resolve {
        addr: addr.to_owned(),
        source,
    })
}

fn resolve_ipv4(addr: &str) -> std::io::Result<SocketAddr> {
    addr.to_socket_addrs()?
        .find(SocketAddr::is_ipv4)
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no IPv4 address"))
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
