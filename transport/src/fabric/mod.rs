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
//! Not here yet (issue 12's remaining parts): the `Endpoint`-level API
//! that picks a backend per peer (shm on the node, ofi or verbs across),
//! the verbs backend, and the object store's pulls and the rendezvous of
//! large messages going through it.

#[cfg(feature = "ofi")]
pub mod ofi;

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
            Some(end) if end <= self.len => Ok(()),
            _ => Err(FabricError::OutOfRange {
                offset,
                len,
                region: self.len,
            }),
        }
    }
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
