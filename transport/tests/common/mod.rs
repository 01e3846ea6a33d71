//! A job of several ranks inside one test process, one thread per rank, with
//! real endpoints, shared memory and TCP sockets.

#![allow(dead_code, unreachable_pub)]

use std::path::PathBuf;
use std::sync::{Arc, Barrier, Mutex};
use std::time::Duration;

use lumen_transport::{
    Endpoint, EndpointBuilder, EndpointOptions, JobSecret, PeerAddress, Source, TcpBackend,
    TransportConfig,
};

/// What a rank's body knows about its job.
#[derive(Clone)]
pub struct JobInfo {
    pub job_id: String,
    pub secret: JobSecret,
    pub addresses: Vec<PeerAddress>,
}

/// Starts `nodes.len()` ranks; rank i lives on node `nodes[i]`.
pub fn job(
    nodes: &[u32],
    backend: TcpBackend,
    body: impl Fn(Endpoint, JobInfo) + Send + Sync + 'static,
) {
    job_with_config(
        nodes,
        TransportConfig {
            tcp_backend: backend,
            ..TransportConfig::default()
        },
        body,
    )
}

/// As [`job`], with every rank using `base` (its connect timeout is shortened).
pub fn job_with_config(
    nodes: &[u32],
    base: TransportConfig,
    body: impl Fn(Endpoint, JobInfo) + Send + Sync + 'static,
) {
    job_inner(nodes, base, true, body)
}

/// As [`job_with_config`], without the barrier and close after `body`:
/// the body ends its endpoint itself (or drops it).
pub fn job_raw(
    nodes: &[u32],
    base: TransportConfig,
    body: impl Fn(Endpoint, JobInfo) + Send + Sync + 'static,
) {
    job_inner(nodes, base, false, body)
}

fn job_inner(
    nodes: &[u32],
    base: TransportConfig,
    finish: bool,
    body: impl Fn(Endpoint, JobInfo) + Send + Sync + 'static,
) {
    let size = nodes.len() as u32;
    let job_id = format!("t{}x{}", std::process::id(), rand_suffix());
    let secret = JobSecret::random();
    let table = Arc::new(Mutex::new(vec![None::<PeerAddress>; nodes.len()]));
    let barrier = Arc::new(Barrier::new(nodes.len()));
    let body = Arc::new(body);
    let threads: Vec<_> = (0..size)
        .map(|rank| {
            let base = base.clone();
            let (table, barrier, body, secret, job_id) = (
                table.clone(),
                barrier.clone(),
                body.clone(),
                secret.clone(),
                job_id.clone(),
            );
            let nodes = nodes.to_vec();
            std::thread::spawn(move || {
                let node = nodes[rank as usize];
                let local: Vec<u32> = (0..size).filter(|&r| nodes[r as usize] == node).collect();
                let config = TransportConfig {
                    connect_timeout: base.connect_timeout.min(Duration::from_secs(10)),
                    ..base
                };
                let options = EndpointOptions {
                    rank,
                    size,
                    node,
                    local_rank: local.iter().position(|&r| r == rank).unwrap() as u32,
                    local_size: local.len() as u32,
                    job_id,
                    secret,
                    config,
                };
                let (job_id_for_body, secret_for_body) =
                    (options.job_id.clone(), options.secret.clone());
                let builder = EndpointBuilder::new(options).unwrap();
                table.lock().unwrap()[rank as usize] = Some(builder.address().clone());
                barrier.wait();
                let peers: Vec<PeerAddress> = table
                    .lock()
                    .unwrap()
                    .iter()
                    .map(|p| p.clone().unwrap())
                    .collect();
                let endpoint = builder
                    .connect(&peers, || {
                        barrier.wait();
                        Ok::<(), String>(())
                    })
                    .unwrap();
                let info = JobInfo {
                    job_id: job_id_for_body,
                    secret: secret_for_body,
                    addresses: peers.clone(),
                };
                body(endpoint.clone(), info);
                if finish {
                    endpoint.barrier().unwrap();
                    endpoint.close();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

pub fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(0u8)
}

pub fn pattern(len: usize, seed: u32) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2654435761).wrapping_add(seed) as u8)
        .collect()
}

#[allow(unused_imports)]
pub use lumen_testkit::job::{job_id, leftover_segments, run_with_timeout, text};

/// The `lumen` command line; `lumen run` starts the multi-process jobs.
pub fn lumen() -> PathBuf {
    lumen_testkit::job::lumen_binary()
}

/// An example of this crate (the rank program of the multi-process jobs).
pub fn example(name: &str) -> PathBuf {
    lumen_testkit::job::workspace_example("lumen-transport", name)
}

/// Every rank sends a distinct pattern of each size to every other rank and
/// checks what it receives.
pub fn all_to_all(ep: &Endpoint, sizes: &[usize]) {
    let (me, n) = (ep.rank(), ep.size());
    for (round, &len) in sizes.iter().enumerate() {
        let tag = 100 + round as u64;
        // Post sends from a helper thread so large rendezvous sends cannot block the receives.
        let sender = {
            let ep = ep.clone();
            std::thread::spawn(move || {
                for d in 1..n {
                    let dst = (me + d) % n;
                    ep.send(dst, tag, &pattern(len, me * 1000 + dst)).unwrap();
                }
            })
        };
        for _ in 1..n {
            let m = ep.recv(Source::Any, tag).unwrap();
            assert_eq!(m.data.len(), len);
            assert!(
                m.data == pattern(len, m.src * 1000 + me),
                "corrupted {len}-byte message from {}",
                m.src
            );
        }
        sender.join().unwrap();
    }
}
