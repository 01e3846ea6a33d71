//! [`join_mpi`]: a Lumen job over ranks that already run MPI (feature `mpi`,
//! rsmpi): MPI itself carries the bootstrap.

use ::mpi::traits::{Communicator, CommunicatorCollectives, Root};
use lumen_transport::{EndpointBuilder, EndpointOptions, JobSecret};

use super::error::BootstrapError;
use super::meet::{decode_peers, hostname, node_layout, tcp_bind};
use super::{Job, RankResources};
use crate::config::Config;
use crate::env::{detect, LaunchKind, World};
use crate::pmi::exchange;

/// Room for one host name in the exchange.
const HOST_BYTES: usize = 256;
/// Room for one encoded endpoint address in the exchange.
const ADDRESS_BYTES: usize = 512;

/// `bytes` behind a two-byte little-endian length, zero-padded to `width`.
fn padded(bytes: &[u8], width: usize, what: &'static str) -> Result<Vec<u8>, BootstrapError> {
    if bytes.len() + 2 > width {
        return Err(BootstrapError::MpiValueTooLong {
            what,
            max: width - 2,
        });
    }
    let mut out = Vec::with_capacity(width);
    // Below `width`, which is at most 512.
    out.extend_from_slice(&(bytes.len() as u16).to_le_bytes());
    out.extend_from_slice(bytes);
    out.resize(width, 0);
    Ok(out)
}

/// What [`padded`] wrapped; empty for a malformed slot.
fn unpadded(chunk: &[u8]) -> &[u8] {
    let [low, high, ..] = *chunk else {
        return &[];
    };
    let len = u16::from_le_bytes([low, high]) as usize;
    chunk.get(2..2 + len).unwrap_or_default()
}

/// Joins a job whose ranks already run MPI (feature `mpi`): Lumen's world
/// is `comm` (usually `MPI_COMM_WORLD`) with the same rank order, so an MPI
/// code can adopt Lumen next to its MPI calls. MPI itself carries the
/// bootstrap: host names and endpoint addresses travel by `MPI_Allgather`,
/// the job secret and job id by `MPI_Bcast` from rank 0; no PMI, store or
/// port of Lumen's is involved, so this works under any MPI launcher.
///
/// Drop (or [`finish`](Job::finish)) the job before MPI is finalized.
pub fn join_mpi<C: Communicator>(comm: &C) -> Result<Job, BootstrapError> {
    let env = |name: &str| std::env::var(name).ok();
    let rank = u32::try_from(comm.rank()).map_err(|_| BootstrapError::MpiCommunicator {
        what: "rank",
        value: comm.rank(),
    })?;
    let size = u32::try_from(comm.size()).map_err(|_| BootstrapError::MpiCommunicator {
        what: "size",
        value: comm.size(),
    })?;
    let config = Config::from_env(env)?;
    let kind = detect(env).map(|w| w.kind).unwrap_or(LaunchKind::Singleton);

    let mine = padded(hostname().as_bytes(), HOST_BYTES, "the host name")?;
    let mut all = vec![0u8; HOST_BYTES * size as usize];
    comm.all_gather_into(&mine[..], &mut all[..]);
    let hosts: Vec<String> = all
        .chunks(HOST_BYTES)
        .map(|chunk| String::from_utf8_lossy(unpadded(chunk)).into_owned())
        .collect();
    let (node_index, nodes) = node_layout(&hosts, rank);
    let here = hosts.get(rank as usize).cloned().unwrap_or_default();
    let local_rank = hosts[..rank as usize]
        .iter()
        .filter(|h| **h == here)
        .count() as u32;
    let local_size = hosts.iter().filter(|h| **h == here).count() as u32;

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
    let transport = config.transport_config(tcp_bind(&config, &world, &env)?)?;
    let options = EndpointOptions {
        rank,
        size,
        node: world.node_index,
        local_rank,
        local_size,
        job_id,
        secret: secret.clone(),
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
        secret,
    })
}
