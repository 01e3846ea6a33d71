//! One-sided transfers: memory registered once, then read or written by a
//! peer without the owner's CPU taking part — the RDMA model that verbs,
//! libfabric, and (emulated) TCP and shared memory all fit.
//!
//! What lives here:
//! - [`RemoteKey`]: what a peer needs to reach a registered region (the
//!   job it belongs to, the target address or offset, its length and the
//!   provider's key), with a fixed 32-byte encoding for the control plane.
//!   A key is checked before anything is posted: a key of another job, or
//!   a range outside the region, is refused with [`FabricError`].
//! - [`FabricChoice`]: `LUMEN_FABRIC=verbs|ofi|tcp|auto` and the order
//!   `auto` tries backends in.
//! - `ofi` (crate feature `ofi`, Debian `libfabric-dev`): the libfabric
//!   backend, [`ofi::OfiEndpoint`] — `FI_EP_RDM`, `fi_mr_reg`, `fi_read`,
//!   `fi_write`, a progress thread. It runs here on the `tcp;ofi_rxm` and
//!   `shm` providers, and on cxi (Slingshot), efa, opx/psm2 (Omni-Path)
//!   and `verbs;ofi_rxm` where those exist.
//!
//! - [`OneSided`]: the interface every backend implements (register, read,
//!   write, peers by address), so the object store and the benchmarks use
//!   whichever backend [`open`] picked, and one conformance suite
//!   (`tests/fabric_conformance.rs`) runs on each:
//!   - [`tcp::TcpOneSided`]: one-sided transfers emulated over TCP (a
//!     serving thread on the target moves the bytes straight between its
//!     registered memory and the socket), always there;
//!   - [`vm::VmOneSided`]: same node, a single `process_vm_readv` /
//!     `process_vm_writev` copy from or into the peer's registered memory;
//!   - `ofi` (feature `ofi`), `verbs` (feature `verbs`).
//! - [`pending`]: completion by polling ([`start_read`], [`start_write`],
//!   [`Transfer::poll`]) on any backend.
//!
//! # Choosing a backend
//! [`open`] takes the `LUMEN_FABRIC` choice. `auto` means verbs when a
//! device is there, else libfabric on a hardware provider, else TCP: a
//! software libfabric provider is no faster than Lumen's TCP path (see
//! BENCHMARKS.md), so it is used only when asked for (`ofi`). Asking for a
//! backend this build or node lacks is an error that says so, not a
//! silent fallback.
//!
//! Per peer, the choice is by where the peer is: ranks of the same node
//! never go through the network backend (the object store reads their
//! objects in the shared node arena, and the endpoint's large messages to
//! them are single `process_vm_readv` copies); ranks of other nodes go
//! through the backend [`open`] picked, for object pulls and, where it
//! wins, large messages ([`crate::FabricRoute`]). [`vm`] is that same-node
//! copy behind this interface, for callers that hold keys rather than
//! arena offsets.

#[cfg(feature = "ofi")]
pub mod ofi;
pub mod pending;
pub mod tcp;
#[cfg(feature = "verbs")]
pub mod verbs;
pub mod vm;

pub use pending::{start_read, start_write, Transfer};

use std::time::Duration;

/// What a peer needs to read or write a registered region.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RemoteKey {
    /// The job whose process registered it (keys never cross jobs).
    pub job: u64,
    /// The target address of the region's first byte (a virtual address,
    /// or 0 where the provider addresses regions by offset).
    pub base: u64,
    /// Bytes reachable from `base`.
    pub len: u64,
    /// The provider's key.
    pub key: u64,
}

impl RemoteKey {
    /// Encoded size.
    pub const BYTES: usize = 32;

    /// Little-endian `job, base, len, key`.
    pub fn to_bytes(&self) -> [u8; Self::BYTES] {
        let mut out = [0u8; Self::BYTES];
        for (i, v) in [self.job, self.base, self.len, self.key].iter().enumerate() {
            out[i * 8..i * 8 + 8].copy_from_slice(&v.to_le_bytes());
        }
        out
    }

    /// Decodes [`RemoteKey::to_bytes`]; a buffer of another length is an
    /// error (from the network: never trusted).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, FabricError> {
        if bytes.len() != Self::BYTES {
            return Err(FabricError::BadKey(format!(
                "{} bytes where a remote key has {}",
                bytes.len(),
                Self::BYTES
            )));
        }
        let word = |i: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&bytes[i * 8..i * 8 + 8]);
            u64::from_le_bytes(w)
        };
        Ok(RemoteKey {
            job: word(0),
            base: word(1),
            len: word(2),
            key: word(3),
        })
    }

    /// Refuses a key of another job or a range outside the region.
    pub fn check(&self, job: u64, offset: u64, len: u64) -> Result<(), FabricError> {
        if self.job != job {
            return Err(FabricError::ForeignKey {
                ours: job,
                theirs: self.job,
            });
        }
        match offset.checked_add(len) {
            // The target address must not wrap either (`base` came from
            // the network too).
            Some(end) if end <= self.len && self.base.checked_add(end).is_some() => Ok(()),
            Some(end) if end <= self.len => Err(FabricError::BadKey(format!(
                "base {:#x} + {end} bytes wraps around",
                self.base
            ))),
            _ => Err(FabricError::OutOfRange {
                offset,
                len,
                region: self.len,
            }),
        }
    }
}

/// A region of this process's memory registered with a backend, with its
/// serialisable [`RemoteKey`] for peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    /// Start address.
    pub addr: u64,
    /// Bytes.
    pub len: u64,
    /// What a peer needs to read or write it.
    pub key: RemoteKey,
}

/// Counters of one backend endpoint.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FabricStats {
    /// Regions registered with the provider.
    pub registrations: u64,
    /// Registrations served from the cache (a region, or a range inside
    /// one, registered already).
    pub cache_hits: u64,
    /// Operations posted (pieces of transfers).
    pub posted: u64,
}

/// One-sided transfers on one backend: what the object store's pulls, the
/// benchmarks and the conformance suite use, whatever moves the bytes.
///
/// Peers are added by the address they publish ([`OneSided::address`],
/// exchanged over the control plane at bootstrap) and named by the index
/// [`OneSided::insert_peer`] returns. A transfer checks its key first (of
/// this job, inside the region) and completes, fails or times out before
/// it returns; nothing is written into `local` after that.
pub trait OneSided: Send + Sync + std::fmt::Debug {
    /// The backend and provider, for logs (`tcp`, `vm`, `ofi/shm`,
    /// `verbs/mlx5_0:1`).
    fn describe(&self) -> String;

    /// This endpoint's address for peers.
    fn address(&self) -> Result<Vec<u8>, FabricError>;

    /// Adds a peer by its address; returns its index.
    fn insert_peer(&self, address: &[u8]) -> Result<usize, FabricError>;

    /// Registers `len` bytes at `addr` for remote reads and writes, once:
    /// a range inside a region registered already is served from it (so
    /// views of one pool cost a lookup).
    ///
    /// # Safety
    /// The range must stay mapped and allocated until it is deregistered
    /// (or the endpoint dropped), and be deregistered only once no transfer
    /// into it is in flight: peers may read and write it until then.
    unsafe fn register(&self, addr: *mut u8, len: usize) -> Result<Region, FabricError>;

    /// Deregisters the region starting at `addr` (a no-op if none does).
    fn deregister(&self, addr: *const u8);

    /// Whether `[addr, addr + len)` lies inside a region registered here
    /// (so a transfer from it needs no registration of its own).
    fn registered(&self, addr: *const u8, len: usize) -> bool;

    /// Reads `local.len()` bytes at `offset` of the peer's region `key`.
    fn read(
        &self,
        peer: usize,
        key: &RemoteKey,
        offset: u64,
        local: &mut [u8],
        timeout: Duration,
    ) -> Result<(), FabricError>;

    /// Writes `local` at `offset` of the peer's region `key`; returns once
    /// the bytes are in the target's memory.
    fn write(
        &self,
        peer: usize,
        key: &RemoteKey,
        offset: u64,
        local: &[u8],
        timeout: Duration,
    ) -> Result<(), FabricError>;

    /// Counters.
    fn stats(&self) -> FabricStats;

    /// Registers `len` bytes of device memory exported as the dma-buf `fd`
    /// (from byte `offset` of it) for remote reads and writes, addressed by
    /// peers at `iova` (the device address): GPU-direct RDMA. Only a verbs
    /// device offers it; the others refuse.
    ///
    /// # Safety
    /// The memory must stay allocated until deregistered (`deregister(iova)`)
    /// or the endpoint dropped.
    unsafe fn register_dmabuf(
        &self,
        _fd: i32,
        _offset: u64,
        _len: usize,
        _iova: u64,
    ) -> Result<Region, FabricError> {
        Err(FabricError::BadSetting(format!(
            "{} cannot register device memory (GPU-direct RDMA needs a verbs device)",
            self.describe()
        )))
    }

    /// Reads `len` bytes at `offset` of the peer's region `key` into
    /// `local`, which must lie inside a region registered here (device
    /// memory included): no bounce buffer, so nothing on the host touches
    /// it.
    ///
    /// # Safety
    /// `local..local + len` must be inside a registered region that nobody
    /// else reads or writes until this returns.
    unsafe fn read_registered(
        &self,
        _peer: usize,
        _key: &RemoteKey,
        _offset: u64,
        _local: *mut u8,
        _len: usize,
        _timeout: Duration,
    ) -> Result<(), FabricError> {
        Err(FabricError::BadSetting(format!(
            "{} cannot read into registered device memory",
            self.describe()
        )))
    }
}

/// Opens the network backend `choice` names (see the module docs), bound
/// to local address `node` where the backend takes one. `job` tags keys.
pub fn open(
    choice: FabricChoice,
    node: Option<&str>,
    job: u64,
) -> Result<Box<dyn OneSided>, FabricError> {
    let opened: Box<dyn OneSided> = match choice {
        FabricChoice::Tcp => Box::new(tcp::TcpOneSided::open(node, job)?),
        FabricChoice::Verbs => open_verbs(node, job)?,
        FabricChoice::Ofi => open_ofi(choice, node, job)?,
        FabricChoice::Auto => match open_verbs(node, job) {
            Ok(verbs) => verbs,
            Err(why_not_verbs) => match open_ofi(choice, node, job) {
                Ok(ofi) => ofi,
                Err(why_not_ofi) => {
                    tracing::debug!("fabric auto: {why_not_verbs}; {why_not_ofi}");
                    Box::new(tcp::TcpOneSided::open(node, job)?)
                }
            },
        },
    };
    tracing::info!("fabric: one-sided transfers over {}", opened.describe());
    Ok(opened)
}

#[cfg(feature = "verbs")]
fn open_verbs(node: Option<&str>, job: u64) -> Result<Box<dyn OneSided>, FabricError> {
    Ok(Box::new(verbs::VerbsEndpoint::open(None, node, job)?))
}

#[cfg(not(feature = "verbs"))]
fn open_verbs(_node: Option<&str>, _job: u64) -> Result<Box<dyn OneSided>, FabricError> {
    Err(FabricError::Setup {
        provider: "verbs".into(),
        detail: "this build has no verbs backend: build with the `verbs` feature".into(),
    })
}

#[cfg(feature = "ofi")]
fn open_ofi(
    choice: FabricChoice,
    node: Option<&str>,
    job: u64,
) -> Result<Box<dyn OneSided>, FabricError> {
    let mut tried = Vec::new();
    for provider in choice.ofi_providers() {
        match ofi::OfiEndpoint::open(provider, node, job) {
            Ok(ep) => return Ok(Box::new(ep)),
            Err(e) => tried.push(e.to_string()),
        }
    }
    Err(FabricError::Setup {
        provider: "ofi".into(),
        detail: format!("no libfabric provider opened: {}", tried.join("; ")),
    })
}

#[cfg(not(feature = "ofi"))]
fn open_ofi(
    _choice: FabricChoice,
    _node: Option<&str>,
    _job: u64,
) -> Result<Box<dyn OneSided>, FabricError> {
    Err(FabricError::Setup {
        provider: "ofi".into(),
        detail: "this build has no libfabric backend: build with the `ofi` feature".into(),
    })
}

/// The size from which messages to other nodes go as one-sided reads by
/// the receiver (`Endpoint::attach_fabric`) on backend `name` (as the
/// runtime names it: `verbs`, `ofi/<provider>`, `tcp`), given
/// `LUMEN_RDMA_RENDEZVOUS` (`off`, or a size: `65536`, `256K`, `1M`);
/// `None`: never.
///
/// Default: 1 MiB on verbs and on libfabric's hardware providers, where
/// the NIC moves the bytes without a copy; off on software ones
/// (`tcp;ofi_rxm`, `shm`, Lumen's emulated `tcp`), where a read is a
/// request round trip per message beside a TCP path that streams: measured
/// here (2 nodes over loopback, 1 GiB in 1 MiB messages, release), 2.84
/// GB/s through the emulated read and 1.52 GB/s through `tcp;ofi_rxm`,
/// against 6.46 GB/s for the TCP path (0.44 and 0.23 of it; BENCHMARKS.md).
pub fn rendezvous_threshold(name: &str, env: Option<&str>) -> Result<Option<usize>, FabricError> {
    let software = matches!(
        name,
        "tcp"
            | "vm"
            | "ofi/tcp;ofi_rxm"
            | "ofi/shm"
            | "ofi/tcp"
            | "ofi/udp;ofi_rxd"
            | "ofi/sockets"
    );
    match env.map(str::trim) {
        None | Some("") | Some("auto") => Ok((!software).then_some(1 << 20)),
        Some("off") | Some("0") | Some("never") => Ok(None),
        Some(text) => parse_size(text)
            .filter(|&n| n > 0)
            .map(Some)
            .ok_or_else(|| {
                FabricError::BadSetting(format!(
                    "LUMEN_RDMA_RENDEZVOUS={text:?}: expected off, auto, or a size such as 256K"
                ))
            }),
    }
}

/// A size in bytes with an optional K, M or G suffix (`65536`, `256K`,
/// `8G`), as Lumen's size settings take them; `None` when malformed or
/// too large.
pub fn parse_size(text: &str) -> Option<usize> {
    let text = text.trim();
    let (digits, unit) = match text.as_bytes().last()? {
        b'K' | b'k' => (&text[..text.len() - 1], 1usize << 10),
        b'M' | b'm' => (&text[..text.len() - 1], 1 << 20),
        b'G' | b'g' => (&text[..text.len() - 1], 1 << 30),
        _ => (text, 1),
    };
    digits.parse::<usize>().ok()?.checked_mul(unit)
}

/// Whether this node has a verbs device (never, in a build without the
/// `verbs` feature).
pub fn verbs_devices_present() -> bool {
    #[cfg(feature = "verbs")]
    {
        verbs::devices().is_ok_and(|d| !d.is_empty())
    }
    #[cfg(not(feature = "verbs"))]
    {
        false
    }
}

/// The registered region holding `[start, start + len)`, if any, in a map
/// of regions by start address whose values report their length.
pub(crate) fn containing<R>(
    regions: &std::collections::BTreeMap<u64, R>,
    start: u64,
    len: usize,
    region_len: impl Fn(&R) -> usize,
) -> Option<(u64, &R)> {
    let (&base, reg) = regions.range(..=start).next_back()?;
    let end = start.checked_add(len as u64)?;
    (end <= base + region_len(reg) as u64).then_some((base, reg))
}

/// Which backend moves one-sided transfers (`LUMEN_FABRIC`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FabricChoice {
    /// InfiniBand/RoCE verbs (crate feature `verbs`).
    Verbs,
    /// libfabric (crate feature `ofi`).
    Ofi,
    /// The TCP path (emulated one-sided transfers), always there.
    Tcp,
    /// The best one the node has: verbs, then libfabric on a hardware
    /// provider, then TCP.
    Auto,
}

impl FabricChoice {
    /// Parses `LUMEN_FABRIC` (`None`/empty: `auto`).
    pub fn parse(value: Option<&str>) -> Result<Self, FabricError> {
        match value.map(str::trim) {
            None | Some("") | Some("auto") => Ok(FabricChoice::Auto),
            Some("verbs") => Ok(FabricChoice::Verbs),
            Some("ofi") | Some("libfabric") => Ok(FabricChoice::Ofi),
            Some("tcp") => Ok(FabricChoice::Tcp),
            Some(other) => Err(FabricError::BadChoice(other.to_string())),
        }
    }

    /// libfabric providers to try, best first, for this choice: the
    /// hardware ones for `auto` (a software provider is not faster than
    /// Lumen's own TCP path), every one Lumen knows for `ofi`.
    pub fn ofi_providers(self) -> &'static [&'static str] {
        match self {
            FabricChoice::Auto => &["cxi", "efa", "opx", "psm2", "verbs;ofi_rxm"],
            FabricChoice::Ofi => &["cxi", "efa", "opx", "psm2", "verbs;ofi_rxm", "tcp;ofi_rxm"],
            FabricChoice::Verbs | FabricChoice::Tcp => &[],
        }
    }
}

/// Why a one-sided transfer or its setup failed; each says what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FabricError {
    /// `LUMEN_FABRIC` names no backend.
    #[error("LUMEN_FABRIC={0:?}: expected verbs, ofi, tcp or auto")]
    BadChoice(String),
    /// Another fabric setting is malformed (the text says which).
    #[error("{0}")]
    BadSetting(String),
    /// The backend could not be opened (no such provider, no device).
    #[error("fabric provider {provider} could not be opened: {detail}")]
    Setup {
        /// The provider asked for.
        provider: String,
        /// What libfabric said.
        detail: String,
    },
    /// A provider call failed.
    #[error("{call} failed on {provider}: {detail}")]
    Call {
        /// The libfabric call.
        call: &'static str,
        /// The provider.
        provider: String,
        /// What libfabric said.
        detail: String,
    },
    /// A remote key from the wire is malformed.
    #[error("malformed remote key: {0}")]
    BadKey(String),
    /// A remote key of another job (a stale key, or a peer of another job).
    #[error("remote key of job {theirs:#x} refused: this process is in job {ours:#x}")]
    ForeignKey {
        /// This process's job.
        ours: u64,
        /// The key's job.
        theirs: u64,
    },
    /// The range is not inside the registered region.
    #[error("bytes {offset}..{offset}+{len} are outside the {region}-byte registered region")]
    OutOfRange {
        /// Offset asked.
        offset: u64,
        /// Length asked.
        len: u64,
        /// The region's length.
        region: u64,
    },
    /// A peer address is malformed.
    #[error("malformed fabric address: {0}")]
    BadAddress(String),
    /// A region starting at this address is registered already and does
    /// not hold the range asked for: registering over it would drop the
    /// key its peers hold.
    #[error("a {have}-byte region is registered at {addr:#x} already (asked for {want} bytes): deregister it first")]
    AlreadyRegistered {
        /// The address.
        addr: u64,
        /// The registered region's length.
        have: u64,
        /// The length asked for.
        want: u64,
    },
    /// No peer with this index was inserted.
    #[error("no fabric peer {0}")]
    NoSuchPeer(usize),
    /// The provider reported the transfer failed (a dead peer, a bad key).
    #[error("one-sided {what} failed: {detail}")]
    Transfer {
        /// `read` or `write`.
        what: &'static str,
        /// The provider's error.
        detail: String,
    },
    /// The transfer did not complete in time (the peer stopped answering).
    #[error("one-sided {what} of {bytes} bytes did not complete within {after:?}")]
    Timeout {
        /// `read` or `write`.
        what: &'static str,
        /// Bytes asked.
        bytes: u64,
        /// The limit.
        after: Duration,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_are_checked() {
        let key = RemoteKey {
            job: 7,
            base: 0x7f00_0000_1000,
            len: 4096,
            key: 42,
        };
        assert_eq!(RemoteKey::from_bytes(&key.to_bytes()), Ok(key));
        assert!(matches!(
            RemoteKey::from_bytes(&[0; 31]),
            Err(FabricError::BadKey(_))
        ));
        assert_eq!(key.check(7, 4000, 96), Ok(()));
        assert!(matches!(
            key.check(7, 4000, 97),
            Err(FabricError::OutOfRange { .. })
        ));
        assert!(matches!(
            key.check(7, u64::MAX, 2),
            Err(FabricError::OutOfRange { .. })
        ));
        assert!(matches!(
            key.check(8, 0, 1),
            Err(FabricError::ForeignKey { .. })
        ));
        let wrapping = RemoteKey {
            base: u64::MAX - 10,
            ..key
        };
        assert!(matches!(
            wrapping.check(7, 0, 100),
            Err(FabricError::BadKey(_))
        ));
    }

    #[test]
    fn rendezvous_thresholds() {
        assert_eq!(rendezvous_threshold("verbs", None), Ok(Some(1 << 20)));
        assert_eq!(
            rendezvous_threshold("ofi/cxi", Some("auto")),
            Ok(Some(1 << 20))
        );
        assert_eq!(rendezvous_threshold("ofi/tcp;ofi_rxm", None), Ok(None));
        assert_eq!(
            rendezvous_threshold("tcp", Some("256K")),
            Ok(Some(256 << 10))
        );
        assert_eq!(rendezvous_threshold("verbs", Some("off")), Ok(None));
        assert!(rendezvous_threshold("verbs", Some("lots")).is_err());
        assert!(rendezvous_threshold("verbs", Some("99999999999999999G")).is_err());
    }

    #[test]
    fn lumen_fabric_is_parsed() {
        assert_eq!(FabricChoice::parse(None), Ok(FabricChoice::Auto));
        assert_eq!(FabricChoice::parse(Some("ofi")), Ok(FabricChoice::Ofi));
        assert_eq!(FabricChoice::parse(Some(" tcp ")), Ok(FabricChoice::Tcp));
        assert!(FabricChoice::parse(Some("ib")).is_err());
        assert!(!FabricChoice::Auto.ofi_providers().contains(&"tcp;ofi_rxm"));
    }
}
