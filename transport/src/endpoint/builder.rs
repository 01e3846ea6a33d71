//! The two setup phases of an endpoint. [`EndpointBuilder::new`] binds the
//! TCP listener and, on local rank 0, creates the node segment; the launcher
//! then all-gathers the [`PeerAddress`]es; [`EndpointBuilder::connect`]
//! checks the peer table, attaches the segment, probes single-copy reads,
//! connects TCP and builds the shared state.
//!
//! Invariant: the node segment's name is removed once every local rank has
//! mapped it, or when the builder is dropped or `connect` fails, so no job
//! leaves it in /dev/shm.

use std::collections::{HashMap, VecDeque};
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize};
use std::sync::{Arc, Mutex, RwLock};

use crate::error::{io_err, TransportError};
use crate::shm::NodeSegment;
use crate::sys::{read_process_memory, ProcessWatch, SharedMapping};
use crate::tcp::{TcpDomain, TcpReaders};
use crate::types::{EndpointOptions, PeerAddress, Rank, Route, PEER_ALIVE};

use super::shared::{Bell, ConsumerState, Mailbox, Producer, Shared};
use super::Endpoint;
use crate::types::segment_name;

const PROBE_VALUE: u64 = 0x4c55_4d45_4e50_524f;
static PROBE: AtomicU64 = AtomicU64::new(PROBE_VALUE);

/// First phase of setting up an endpoint: listen and (on local rank 0) create
/// the node segment, then publish [`EndpointBuilder::address`] to all ranks.
#[derive(Debug)]
pub struct EndpointBuilder {
    options: EndpointOptions,
    listener: TcpListener,
    segment: Option<NodeSegment>,
    address: PeerAddress,
    /// Removes the node segment's name when the builder is dropped or
    /// `connect` returns, successful or not (a job that fails before every
    /// local rank has mapped the segment, e.g. a rank that never starts
    /// under `srun`, where no spawner cleans up, would otherwise leave it in
    /// /dev/shm).
    _created: Option<UnlinkOnDrop>,
}

/// Unlinks a shared-memory name when dropped.
#[derive(Debug)]
struct UnlinkOnDrop(String);

impl Drop for UnlinkOnDrop {
    fn drop(&mut self) {
        let _ = SharedMapping::unlink(&self.0);
    }
}

impl EndpointBuilder {
    /// Binds the TCP listener and creates the node segment if this is local rank 0.
    pub fn new(options: EndpointOptions) -> Result<Self, TransportError> {
        options.config.validate()?;
        if options.rank >= options.size {
            return Err(TransportError::InvalidRank {
                rank: options.rank,
                size: options.size,
            });
        }
        let listener = TcpListener::bind((options.config.tcp_bind, 0)).map_err(io_err(format!(
            "binding TCP on {}",
            options.config.tcp_bind
        )))?;
        let tcp = listener
            .local_addr()
            .map_err(io_err("reading the listener address"))?;
        let (segment, created) = if options.local_size > 1 && options.local_rank == 0 {
            let name = segment_name(&options.job_id, options.node);
            let segment = NodeSegment::create(
                &name,
                options.local_size as usize,
                options.config.ring_bytes,
            )?;
            (Some(segment), Some(UnlinkOnDrop(name)))
        } else {
            (None, None)
        };
        let address = PeerAddress {
            rank: options.rank,
            node: options.node,
            pid: std::process::id() as i32,
            tcp,
            probe: PROBE.as_ptr() as u64,
        };
        Ok(EndpointBuilder {
            options,
            listener,
            segment,
            address,
            _created: created,
        })
    }

    /// What the other ranks need to reach this one.
    pub fn address(&self) -> &PeerAddress {
        &self.address
    }

    /// Second phase: attach the node segment, connect to every rank on other
    /// nodes, authenticate, and start the receiver. `barrier` must return once
    /// every rank of the job has called it (the rendezvous barrier).
    pub fn connect<E: std::fmt::Display>(
        self,
        peers: &[PeerAddress],
        mut barrier: impl FnMut() -> Result<(), E>,
    ) -> Result<Endpoint, TransportError> {
        // `_created` lives to the end of this call: the name goes once every
        // local rank has mapped the segment (below), or when this fails.
        let EndpointBuilder {
            options,
            listener,
            segment,
            address,
            _created,
        } = self;
        let listen_addr = address.tcp;
        let size = options.size as usize;
        if peers.len() != size {
            return Err(TransportError::PeerTable(format!(
                "{} addresses for {size} ranks",
                peers.len()
            )));
        }
        for (i, p) in peers.iter().enumerate() {
            if p.rank as usize != i {
                return Err(TransportError::PeerTable(format!(
                    "entry {i} is for rank {}",
                    p.rank
                )));
            }
        }
        let local_ranks: Vec<Rank> = peers
            .iter()
            .filter(|p| p.node == options.node)
            .map(|p| p.rank)
            .collect();
        if local_ranks.len() != options.local_size as usize {
            return Err(TransportError::PeerTable(format!(
                "{} ranks report node {}, but this rank was told its node has {}",
                local_ranks.len(),
                options.node,
                options.local_size
            )));
        }
        let my_local = local_ranks
            .iter()
            .position(|&r| r == options.rank)
            .unwrap_or(0);
        if my_local != options.local_rank as usize {
            return Err(TransportError::PeerTable(format!(
                "rank {} is local rank {my_local} by the table but was started as local rank {}",
                options.rank, options.local_rank
            )));
        }
        let segment_name = segment_name(&options.job_id, options.node);
        let segment = match segment {
            Some(s) => Some(s),
            None if local_ranks.len() > 1 => Some(NodeSegment::attach(
                &segment_name,
                local_ranks.len(),
                options.config.ring_bytes,
                options.config.connect_timeout,
            )?),
            None => None,
        };
        if let Some(seg) = &segment {
            seg.announce(my_local, std::process::id() as i32);
            // Received messages above glibc's mmap threshold (128 KiB)
            // would each cost an mmap, a fault per page and an munmap, as
            // on TCP (see `sys::tune_malloc`). Measured on 2026-12-07 in
            // alternating runs with and without: 256 KiB bandwidth 1.03-1.11x
            // Open MPI against 0.92-0.97x, 4 MiB latency 0.86-0.95x against
            // 1.16-1.24x.
            if local_ranks.len() > 1 && options.config.tune_malloc {
                crate::sys::tune_malloc(options.config.max_frame as usize);
            }
        }
        let mut routes = Vec::with_capacity(size);
        let mut watches = Vec::with_capacity(local_ranks.len());
        let mut single_copy = Vec::with_capacity(local_ranks.len());
        for p in peers {
            if p.rank == options.rank {
                routes.push(Route::Myself);
            } else if p.node == options.node {
                routes.push(Route::Local(
                    local_ranks.iter().position(|&r| r == p.rank).unwrap_or(0),
                ));
            } else {
                routes.push(Route::Remote);
            }
        }
        for &r in &local_ranks {
            let p = &peers[r as usize];
            if r == options.rank {
                watches.push(None);
                single_copy.push(true);
                continue;
            }
            watches.push(ProcessWatch::open(p.pid).ok());
            let mut word = [0u8; 8];
            let ok = read_process_memory(p.pid, p.probe, &mut word).is_ok()
                && u64::from_ne_bytes(word) == PROBE_VALUE;
            if !ok {
                tracing::info!(
                    peer = r,
                    "process_vm_readv refused: large messages to this peer stream through the ring"
                );
            }
            single_copy.push(ok);
        }
        let tcp = TcpDomain::establish(&options, listener, peers, &routes)?;
        barrier().map_err(|e| {
            TransportError::PeerTable(format!("rendezvous barrier after connecting failed: {e}"))
        })?;
        if segment.is_some() && my_local == 0 {
            // Everyone has mapped it: from now on it vanishes with the last process,
            // even if every rank crashes.
            let _ = SharedMapping::unlink(&segment_name);
        }
        let local_count = local_ranks.len();
        let shared = Arc::new(Shared {
            rank: options.rank,
            size: options.size,
            config: options.config.clone(),
            routes,
            local_ranks,
            my_local,
            segment,
            own_bell: Bell::default(),
            ring_producers: (0..local_count)
                .map(|_| Mutex::new(Producer::default()))
                .collect(),
            consumer: Mutex::new(ConsumerState {
                partial: (0..local_count).map(|_| None).collect(),
            }),
            mailbox: Mutex::new(Mailbox::default()),
            mailbox_len: AtomicUsize::new(0),
            handlers: RwLock::new(HashMap::new()),
            handler_count: AtomicUsize::new(0),
            pending_handlers: Mutex::new(VecDeque::new()),
            get_requests: Mutex::new(VecDeque::new()),
            fabric: std::sync::OnceLock::new(),
            rdma_pending: Mutex::new(VecDeque::new()),
            rdma_cookie: AtomicU64::new(1),
            rdma_stats: Default::default(),
            regions: RwLock::new(HashMap::new()),
            next_region: AtomicU64::new(1),
            gets: Mutex::new(HashMap::new()),
            next_get: AtomicU64::new(1),
            peer_state: (0..size).map(|_| AtomicU8::new(PEER_ALIVE)).collect(),
            heard: (0..size).map(|_| AtomicBool::new(false)).collect(),
            sent: (0..size).map(|_| AtomicBool::new(false)).collect(),
            death: Mutex::new(vec![None; size]),
            watches: super::shared::LocalWatches::new(watches),
            single_copy,
            tcp: Mutex::new(None),
            tcp_connector: std::sync::OnceLock::new(),
            tcp_address: listen_addr,
            barrier_epoch: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            progress_thread: Mutex::new(None),
            tcp_readers: Arc::new(TcpReaders::default()),
            standby: Default::default(),
        });
        let _ = shared.tcp_connector.set(tcp.connector());
        let receiver = tcp.start(&shared)?;
        *shared.tcp.lock().unwrap_or_else(|p| p.into_inner()) = receiver;
        Ok(Endpoint { shared })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::JobSecret;
    use crate::config::TransportConfig;

    #[test]
    fn bad_ring_size_is_an_error_not_a_panic() {
        let options = EndpointOptions {
            rank: 0,
            size: 2,
            node: 0,
            local_rank: 0,
            local_size: 2,
            job_id: format!("badring-{}", std::process::id()),
            secret: JobSecret::random(),
            config: TransportConfig {
                ring_bytes: 1000,
                ..TransportConfig::default()
            },
        };
        let err = EndpointBuilder::new(options).unwrap_err();
        assert!(
            matches!(
                err,
                TransportError::Config(crate::config::ConfigError::RingBytes(1000))
            ),
            "{err}"
        );
        assert!(err.to_string().contains("power of two"), "{err}");
    }

    #[test]
    fn node_segment_name_goes_when_the_job_fails_before_everyone_mapped_it() {
        let options = |job: &str| EndpointOptions {
            rank: 0,
            size: 2,
            node: 0,
            local_rank: 0,
            local_size: 2,
            job_id: job.to_string(),
            secret: JobSecret::random(),
            config: TransportConfig::default(),
        };
        let exists = |job: &str| {
            std::path::Path::new("/dev/shm")
                .join(segment_name(job, 0))
                .exists()
        };
        // Dropped before connecting (the rendezvous failed).
        let job = format!("unlinktest-{}-a", std::process::id());
        let builder = EndpointBuilder::new(options(&job)).unwrap();
        assert!(exists(&job));
        drop(builder);
        assert!(
            !exists(&job),
            "segment of a builder dropped before connect left behind"
        );
        // connect fails (a peer table that does not match).
        let job = format!("unlinktest-{}-b", std::process::id());
        let builder = EndpointBuilder::new(options(&job)).unwrap();
        let me = builder.address().clone();
        assert!(builder.connect(&[me], || Ok::<(), String>(())).is_err());
        assert!(!exists(&job), "segment of a failed connect left behind");
    }
}
