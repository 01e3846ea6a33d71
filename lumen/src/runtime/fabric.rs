//! The one-sided data plane of a rank: which fabric moves object pulls
//! between nodes, chosen at start-up (`LUMEN_FABRIC`, printed at
//! `LUMEN_LOG=info`), and the pulls themselves.
//!
//! - `tcp`: no one-sided backend; pulls are the object store's chunked
//!   two-sided pulls over the transport (as before).
//! - `ofi` (build with `--features ofi`, Debian libfabric): a libfabric
//!   RDM endpoint on the first provider that opens, hardware ones first
//!   (cxi, efa, opx, psm2, verbs;ofi_rxm), then `tcp;ofi_rxm` bound to the
//!   rank's own transport address. Each rank registers its mapping of the
//!   node arena once and serves pins (`lumen_objstore::OneSidedServer`);
//!   its fabric address and arena key travel in the bootstrap hello; a
//!   pull from a rank of another node is then one `fi_read` from that
//!   rank's arena block straight into this node's arena
//!   (`lumen_objstore::pull_one_sided`). A one-sided pull that fails (the
//!   provider refused, the peer's fabric is unreachable) falls back to the
//!   two-sided pull, logged.
//! - `auto` (default): `ofi` on a hardware provider when the build has
//!   the backend and the node a device; else `tcp`. A software provider is
//!   not chosen automatically: `tcp;ofi_rxm` moves the same bytes over the
//!   same sockets as Lumen's own TCP path (measure before choosing it).
//! - `verbs`: refused with what to use instead (the native verbs backend
//!   is not built yet; `LUMEN_FABRIC=ofi` reaches InfiniBand through
//!   libfabric's `verbs;ofi_rxm`).
//!
//! [`RankStats::one_sided_pulls`](super::RankStats) counts the pulls that
//! went one-sided.

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

#[cfg(feature = "ofi")]
mod ofi {
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Mutex;
    use std::time::Duration;

    use lumen_objstore::{
        pull_one_sided, NodeArena, ObjectId, ObjectStoreError, ObjectView, OneSidedServer,
        OneSidedSource,
    };
    use lumen_transport::fabric::ofi::OfiEndpoint;
    use lumen_transport::fabric::{FabricChoice, RemoteKey};
    use lumen_transport::{Endpoint, Rank};

    use super::{refuse, FabricHello};
    use crate::error::Result;
    use crate::runtime::protocol::RankInfo;

    /// How long one one-sided pull may take before it fails (and falls back).
    const PULL_TIMEOUT: Duration = Duration::from_secs(60);

    /// A rank's libfabric endpoint, its arena server and its peers.
    pub(crate) struct Fabric {
        endpoint: OfiEndpoint,
        server: OneSidedServer,
        peers: Mutex<HashMap<Rank, OneSidedSource>>,
        pulls: AtomicU64,
    }

    impl std::fmt::Debug for Fabric {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "Fabric({:?})", self.endpoint)
        }
    }

    /// A job id as the 64-bit tag of its keys.
    fn job_tag(job: &str) -> u64 {
        job.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        })
    }

    /// Opens the first provider of `choice` that works, registers `arena`.
    pub(crate) fn open(
        choice: FabricChoice,
        endpoint: &Endpoint,
        arena: &NodeArena,
        job: &str,
    ) -> Result<Option<Fabric>> {
        let rank = endpoint.rank();
        let ip = endpoint.tcp_address().ip().to_string();
        let mut tried = Vec::new();
        for &provider in choice.ofi_providers() {
            let node = (provider == "tcp;ofi_rxm").then_some(ip.as_str());
            match OfiEndpoint::open(provider, node, job_tag(job)) {
                Ok(ep) => match OneSidedServer::register(endpoint, arena, &ep) {
                    Ok(server) => {
                        tracing::info!(
                            rank,
                            "fabric: object pulls between nodes go one-sided over libfabric {}",
                            ep.provider()
                        );
                        return Ok(Some(Fabric {
                            endpoint: ep,
                            server,
                            peers: Mutex::new(HashMap::new()),
                            pulls: AtomicU64::new(0),
                        }));
                    }
                    Err(e) => tried.push(format!("{provider}: {e}")),
                },
                Err(e) => tried.push(format!("{provider}: {e}")),
            }
        }
        if choice == FabricChoice::Ofi {
            return Err(refuse(format!(
                "LUMEN_FABRIC=ofi: no libfabric provider opened on rank {rank} ({}); use LUMEN_FABRIC=tcp or auto",
                tried.join("; ")
            )));
        }
        tracing::info!(rank, "fabric: tcp (no RDMA provider here)");
        Ok(None)
    }

    impl Fabric {
        pub(crate) fn hello(&self) -> Option<FabricHello> {
            let address = self.endpoint.address().ok()?;
            Some(FabricHello {
                provider: self.endpoint.provider().to_string(),
                address,
                arena_key: self.server.key().to_bytes().to_vec(),
            })
        }

        /// Adds every rank of another node that offers the same provider.
        pub(crate) fn connect(&self, me: Rank, ranks: &[RankInfo]) {
            let node = ranks.get(me as usize).map(|r| r.node);
            let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
            for info in ranks {
                if Some(info.node) == node {
                    continue;
                }
                let Some(hello) = &info.fabric else {
                    continue;
                };
                if hello.provider != self.endpoint.provider() {
                    tracing::info!(
                        rank = me,
                        "fabric: rank {} offers {}, this rank {}: pulls from it stay two-sided",
                        info.rank,
                        hello.provider,
                        self.endpoint.provider()
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
                match self.endpoint.insert_peer(&hello.address) {
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
                &self.endpoint,
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

        /// Pulls that went one-sided so far.
        pub(crate) fn pulls(&self) -> u64 {
            self.pulls.load(Ordering::Relaxed)
        }
    }
}

#[cfg(feature = "ofi")]
pub(crate) use ofi::Fabric;

/// Without the `ofi` feature there is no one-sided backend.
#[cfg(not(feature = "ofi"))]
#[derive(Debug)]
pub(crate) struct Fabric;

#[cfg(not(feature = "ofi"))]
impl Fabric {
    pub(crate) fn hello(&self) -> Option<FabricHello> {
        None
    }
    pub(crate) fn pulls(&self) -> u64 {
        0
    }
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
    match choice {
        FabricChoice::Tcp => {
            tracing::info!(rank, "fabric: tcp (LUMEN_FABRIC=tcp)");
            Ok(None)
        }
        FabricChoice::Verbs => Err(refuse(
            "LUMEN_FABRIC=verbs: the native verbs backend is not built yet; LUMEN_FABRIC=ofi reaches InfiniBand through libfabric's verbs;ofi_rxm provider".to_string(),
        )),
        FabricChoice::Ofi | FabricChoice::Auto => {
            let Some(arena) = arena else {
                if choice == FabricChoice::Ofi {
                    tracing::warn!(rank, "fabric: LUMEN_FABRIC=ofi but no node arena: nothing is pulled one-sided");
                }
                return Ok(None);
            };
            #[cfg(feature = "ofi")]
            {
                ofi::open(choice, endpoint, arena, job)
            }
            #[cfg(not(feature = "ofi"))]
            {
                let _ = (arena, job);
                if choice == FabricChoice::Ofi {
                    return Err(refuse(
                        "LUMEN_FABRIC=ofi: this build has no libfabric backend; build lumen with --features ofi (needs libfabric-dev)".to_string(),
                    ));
                }
                tracing::info!(rank, "fabric: tcp (built without the ofi feature)");
                Ok(None)
            }
        }
    }
}
