//! The one-sided data plane of a rank: which fabric moves object pulls
//! between nodes, chosen at start-up (`LUMEN_FABRIC`, printed at
//! `LUMEN_LOG=info`), and the pulls themselves.
//!
//! - `tcp`: no one-sided backend; pulls are the object store's chunked
//!   two-sided pulls over the transport (as before).
//! - `verbs` (build with `--features verbs`, rdma-core's libibverbs): the
//!   native InfiniBand/RoCE backend, RC queue pairs connected when the
//!   ranks learn each other's addresses (the hello below).
//! - `ofi` (build with `--features ofi`, Debian libfabric): a libfabric
//!   RDM endpoint on the first provider that opens, hardware ones first
//!   (cxi, efa, opx, psm2, verbs;ofi_rxm), then `tcp;ofi_rxm` bound to the
//!   rank's own transport address.
//! - `auto` (default): verbs when the build has it and the node a device,
//!   else `ofi` on a hardware provider, else `tcp`. A software provider is
//!   not chosen automatically: `tcp;ofi_rxm` moves the same bytes over the
//!   same sockets as Lumen's own TCP path (measure before choosing it).
//!
//! Whatever the backend ([`lumen_transport::fabric::OneSided`]), each rank
//! registers its mapping of the node arena once and serves pins
//! (`lumen_objstore::OneSidedServer`); its backend, address and arena key
//! travel in the bootstrap hello; a pull from a rank of another node that
//! offers the same backend is then one read from that rank's arena block
//! straight into this node's arena (`lumen_objstore::pull_one_sided`). A
//! one-sided pull that fails (the provider refused, the peer's fabric is
//! unreachable) falls back to the two-sided pull, logged.
//!
//! [`RankStats::one_sided_pulls`](super::RankStats) counts the pulls that
//! went one-sided.
//!
//! The same backend carries the transport's rendezvous for large messages
//! to those ranks (`Endpoint::attach_fabric`: the receiver reads the
//! sender's buffer), from `LUMEN_RDMA_RENDEZVOUS` bytes: by default 1 MiB on
//! verbs and hardware libfabric providers, off on software ones, where it
//! was measured to lose to the streaming TCP path
//! (`lumen_transport::fabric::rendezvous_threshold`). Collectives between
//! nodes go through the endpoint, so their large buffers take it too.

use serde::{Deserialize, Serialize};

use lumen_transport::fabric::FabricChoice;
use lumen_transport::Endpoint;

use super::error::RuntimeError;
use crate::error::{LumenError, Result};

/// What a rank tells the others about its fabric at bootstrap.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct FabricHello {
    /// The libfabric provider (`tcp;ofi_rxm`, `cxi`, ...).
    pub provider: String,
    /// Its endpoint address.
    pub address: Vec<u8>,
    /// Its arena mapping's remote key (`RemoteKey::to_bytes`).
    pub arena_key: Vec<u8>,
}

fn refuse(detail: String) -> LumenError {
    LumenError::Runtime(RuntimeError::Cluster(detail))
}

mod plane {
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use lumen_objstore::{
        pull_one_sided, NodeArena, ObjectId, ObjectStoreError, ObjectView, OneSidedServer,
        OneSidedSource,
    };
    use lumen_transport::fabric::{OneSided, RemoteKey};
    use lumen_transport::{Endpoint, Rank};

    use super::FabricHello;
    use crate::runtime::protocol::RankInfo;

    /// How long one one-sided pull may take before it fails (and falls back).
    const PULL_TIMEOUT: Duration = Duration::from_secs(60);

    /// A rank's one-sided backend, its arena server and its peers.
    pub(crate) struct Fabric {
        backend: Arc<dyn OneSided>,
        /// What peers must offer for pulls from them to go one-sided.
        name: String,
        server: OneSidedServer,
        peers: Mutex<HashMap<Rank, OneSidedSource>>,
        pulls: AtomicU64,
    }

    impl std::fmt::Debug for Fabric {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "Fabric({})", self.name)
        }
    }

    /// A job id as the 64-bit tag of its keys.
    pub(super) fn job_tag(job: &str) -> u64 {
        job.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        })
    }

    impl Fabric {
        /// Registers `arena` with `backend` (named `name` in the hello).
        pub(crate) fn new(
            backend: Box<dyn OneSided>,
            name: String,
            endpoint: &Endpoint,
            arena: &NodeArena,
        ) -> std::result::Result<Self, ObjectStoreError> {
            let server = OneSidedServer::register(endpoint, arena, &*backend)?;
            tracing::info!(
                rank = endpoint.rank(),
                "fabric: object pulls between nodes go one-sided over {}",
                backend.describe()
            );
            Ok(Fabric {
                backend: Arc::from(backend),
                name,
                server,
                peers: Mutex::new(HashMap::new()),
                pulls: AtomicU64::new(0),
            })
        }

        pub(crate) fn hello(&self) -> Option<FabricHello> {
            let address = self.backend.address().ok()?;
            Some(FabricHello {
                provider: self.name.clone(),
                address,
                arena_key: self.server.key().to_bytes().to_vec(),
            })
        }

        /// Adds every rank of another node that offers the same backend,
        /// and routes large messages to them as one-sided reads where that
        /// wins (`LUMEN_RDMA_RENDEZVOUS`, see
        /// `lumen_transport::fabric::rendezvous_threshold`).
        pub(crate) fn connect(&self, endpoint: &Endpoint, ranks: &[RankInfo]) {
            self.add_peers(endpoint.rank(), ranks);
            let env = std::env::var("LUMEN_RDMA_RENDEZVOUS").ok();
            // Attached either way, for Endpoint::fabric_read/write by rank;
            // usize::MAX keeps every message on TCP.
            let min_bytes =
                match lumen_transport::fabric::rendezvous_threshold(&self.name, env.as_deref()) {
                    Ok(min) => min.unwrap_or(usize::MAX),
                    Err(e) => {
                        tracing::warn!(rank = endpoint.rank(), "{e}; large messages stay on TCP");
                        usize::MAX
                    }
                };
            let peers: HashMap<Rank, usize> = self
                .peers
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .map(|(&rank, source)| (rank, source.peer))
                .collect();
            if peers.is_empty() {
                return;
            }
            let route = lumen_transport::FabricRoute {
                backend: self.backend.clone(),
                peers,
                min_bytes,
            };
            if let Err(e) = endpoint.attach_fabric(route) {
                tracing::warn!(rank = endpoint.rank(), "fabric: {e}");
            }
        }

        fn add_peers(&self, me: Rank, ranks: &[RankInfo]) {
            let node = ranks.get(me as usize).map(|r| r.node);
            let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
            for info in ranks {
                if Some(info.node) == node {
                    continue;
                }
                let Some(hello) = &info.fabric else {
                    continue;
                };
                if hello.provider != self.name {
                    tracing::info!(
                        rank = me,
                        "fabric: rank {} offers {}, this rank {}: pulls from it stay two-sided",
                        info.rank,
                        hello.provider,
                        self.name
                    );
                    continue;
                }
                let key = match RemoteKey::from_bytes(&hello.arena_key) {
                    Ok(key) => key,
                    Err(e) => {
                        tracing::warn!(rank = me, "fabric: rank {}'s arena key: {e}", info.rank);
                        continue;
                    }
                };
                match self.backend.insert_peer(&hello.address) {
                    Ok(peer) => {
                        peers.insert(
                            info.rank,
                            OneSidedSource {
                                rank: info.rank,
                                peer,
                                key,
                            },
                        );
                    }
                    Err(e) => tracing::warn!(rank = me, "fabric: rank {}: {e}", info.rank),
                }
            }
        }

        /// A one-sided pull from `rank`, or `None` when it has no fabric
        /// peer here.
        pub(crate) fn pull(
            &self,
            arena: &NodeArena,
            endpoint: &Endpoint,
            rank: Rank,
            id: ObjectId,
            len: u64,
        ) -> Option<std::result::Result<ObjectView, ObjectStoreError>> {
            let source = *self
                .peers
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&rank)?;
            let pulled = pull_one_sided(
                arena,
                endpoint,
                &*self.backend,
                &source,
                id,
                len,
                PULL_TIMEOUT,
            );
            if pulled.is_ok() {
                self.pulls.fetch_add(1, Ordering::Relaxed);
            }
            Some(pulled)
        }

        /// The backend (for device memory registered with it).
        #[cfg(feature = "cuda")]
        pub(crate) fn backend(&self) -> Arc<dyn OneSided> {
            self.backend.clone()
        }

        /// Whether the backend is a verbs device (GPU-direct RDMA needs one).
        #[cfg(feature = "cuda")]
        pub(crate) fn is_verbs(&self) -> bool {
            self.name.starts_with("verbs")
        }

        /// `rank`'s index on the backend, if it is a fabric peer.
        #[cfg(feature = "cuda")]
        pub(crate) fn peer_of(&self, rank: Rank) -> Option<usize> {
            self.peers
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&rank)
                .map(|s| s.peer)
        }

        /// Pulls that went one-sided so far.
        pub(crate) fn pulls(&self) -> u64 {
            self.pulls.load(Ordering::Relaxed)
        }
    }
}

pub(crate) use plane::Fabric;

/// A backend that opened, with the name peers must match.
type Opened = (Box<dyn lumen_transport::fabric::OneSided>, String);

#[cfg(feature = "verbs")]
fn open_verbs(ip: &str, job: u64) -> std::result::Result<Opened, String> {
    lumen_transport::fabric::verbs::VerbsEndpoint::open(None, Some(ip), job)
        .map(|ep| (Box::new(ep) as _, "verbs".to_string()))
        .map_err(|e| e.to_string())
}

#[cfg(not(feature = "verbs"))]
fn open_verbs(_ip: &str, _job: u64) -> std::result::Result<Opened, String> {
    Err(
        "this build has no verbs backend; build lumen with --features verbs (needs libibverbs-dev)"
            .into(),
    )
}

#[cfg(feature = "ofi")]
fn open_ofi(choice: FabricChoice, ip: &str, job: u64) -> std::result::Result<Opened, String> {
    use lumen_transport::fabric::ofi::OfiEndpoint;
    let mut tried = Vec::new();
    for &provider in choice.ofi_providers() {
        let node = (provider == "tcp;ofi_rxm").then_some(ip);
        match OfiEndpoint::open(provider, node, job) {
            Ok(ep) => {
                let name = format!("ofi/{}", ep.provider());
                return Ok((Box::new(ep), name));
            }
            Err(e) => tried.push(format!("{provider}: {e}")),
        }
    }
    Err(format!(
        "no libfabric provider opened ({})",
        tried.join("; ")
    ))
}

#[cfg(not(feature = "ofi"))]
fn open_ofi(_choice: FabricChoice, _ip: &str, _job: u64) -> std::result::Result<Opened, String> {
    Err("this build has no libfabric backend; build lumen with --features ofi (needs libfabric-dev)".into())
}

/// Opens this rank's fabric for `choice` (see the module docs); `None`:
/// pulls stay two-sided.
pub(crate) fn open(
    choice: FabricChoice,
    endpoint: &Endpoint,
    arena: Option<&lumen_objstore::NodeArena>,
    job: &str,
) -> Result<Option<Fabric>> {
    let rank = endpoint.rank();
    if choice == FabricChoice::Tcp {
        tracing::info!(rank, "fabric: tcp (LUMEN_FABRIC=tcp)");
        return Ok(None);
    }
    let Some(arena) = arena else {
        if choice != FabricChoice::Auto {
            tracing::warn!(
                rank,
                "fabric: LUMEN_FABRIC={choice:?} but no node arena: nothing is pulled one-sided"
            );
        }
        return Ok(None);
    };
    let ip = endpoint.tcp_address().ip().to_string();
    let job = plane::job_tag(job);
    let opened = match choice {
        FabricChoice::Verbs => open_verbs(&ip, job),
        FabricChoice::Ofi => open_ofi(choice, &ip, job),
        _ => open_verbs(&ip, job).or_else(|why_not_verbs| {
            open_ofi(choice, &ip, job)
                .map_err(|why_not_ofi| format!("{why_not_verbs}; {why_not_ofi}"))
        }),
    };
    match opened {
        Ok((backend, name)) => match Fabric::new(backend, name, endpoint, arena) {
            Ok(fabric) => Ok(Some(fabric)),
            Err(e) if choice == FabricChoice::Auto => {
                tracing::info!(rank, "fabric: tcp ({e})");
                Ok(None)
            }
            Err(e) => Err(refuse(format!(
                "LUMEN_FABRIC={choice:?} on rank {rank}: {e}"
            ))),
        },
        Err(why) if choice == FabricChoice::Auto => {
            tracing::info!(rank, "fabric: tcp (no RDMA backend here: {why})");
            Ok(None)
        }
        Err(why) => Err(refuse(format!(
            "LUMEN_FABRIC={} on rank {rank}: {why}; use LUMEN_FABRIC=tcp or auto",
            match choice {
                FabricChoice::Verbs => "verbs",
                _ => "ofi",
            }
        ))),
    }
}
