//! Same-node one-sided transfers: one copy, kernel to kernel, straight from
//! or into the peer's registered memory (`process_vm_readv` /
//! `process_vm_writev`), the path large messages on a node already take.
//!
//! A peer's address names its machine (the kernel's boot id, so a peer on
//! another node is refused when it is inserted, not at the first transfer)
//! and its process; the process is watched through a pidfd, so a transfer
//! to a peer that has exited fails at once naming it, and a recycled pid is
//! never read.
//!
//! # What protects a region
//! The kernel's ptrace check (same user, and Yama's `ptrace_scope` where it
//! is set; a refusal is reported as such) decides who may copy. Lumen's key
//! check bounds each transfer to the registered range the owner handed out
//! (and to this job); the target's CPU takes no part, so a key's 64-bit
//! provider field is not verified here, as libfabric's `shm` provider does
//! not verify it either.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{FabricError, FabricStats, OneSided, Region, RemoteKey};
use crate::sys::{read_process_memory, write_process_memory, ProcessWatch};

#[derive(Debug)]
struct Peer {
    pid: i32,
    watch: Option<ProcessWatch>,
}

/// A same-node endpoint (see the module docs).
#[derive(Debug)]
pub struct VmOneSided {
    job: u64,
    boot_id: String,
    key: u64,
    regions: Mutex<BTreeMap<u64, usize>>,
    peers: Mutex<Vec<Arc<Peer>>>,
    stats: Mutex<FabricStats>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn boot_id() -> Result<String, FabricError> {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .map_err(|e| FabricError::Setup {
            provider: "vm".into(),
            detail: format!("reading /proc/sys/kernel/random/boot_id: {e}"),
        })
}

impl VmOneSided {
    /// Opens this process's same-node endpoint. `job` tags keys.
    pub fn open(job: u64) -> Result<Self, FabricError> {
        Ok(VmOneSided {
            job,
            boot_id: boot_id()?,
            key: rand::random(),
            regions: Mutex::new(BTreeMap::new()),
            peers: Mutex::new(Vec::new()),
            stats: Mutex::new(FabricStats::default()),
        })
    }

    fn peer(&self, peer: usize) -> Result<Arc<Peer>, FabricError> {
        let peer = lock(&self.peers)
            .get(peer)
            .cloned()
            .ok_or(FabricError::NoSuchPeer(peer))?;
        Ok(peer)
    }

    fn transfer_error(what: &'static str, peer: &Peer, e: std::io::Error) -> FabricError {
        let detail = match e.raw_os_error() {
            Some(libc::ESRCH) => format!("peer process {} has exited", peer.pid),
            Some(libc::EPERM) => format!(
                "the kernel refused to copy from process {} (another user, or Yama's \
                 ptrace_scope): run the ranks as one user, or use the network backend",
                peer.pid
            ),
            Some(libc::EFAULT) => format!(
                "the range is not mapped in process {} (a region freed while registered)",
                peer.pid
            ),
            _ => format!("process {}: {e}", peer.pid),
        };
        FabricError::Transfer { what, detail }
    }

    fn check_alive(what: &'static str, peer: &Peer) -> Result<(), FabricError> {
        if peer.watch.as_ref().is_some_and(ProcessWatch::exited) {
            return Err(FabricError::Transfer {
                what,
                detail: format!("peer process {} has exited", peer.pid),
            });
        }
        Ok(())
    }
}

impl OneSided for VmOneSided {
    fn describe(&self) -> String {
        "vm (process_vm_readv/writev, same node)".into()
    }

    fn address(&self) -> Result<Vec<u8>, FabricError> {
        Ok(format!("vm:{}:{}", self.boot_id, std::process::id()).into_bytes())
    }

    fn insert_peer(&self, address: &[u8]) -> Result<usize, FabricError> {
        let text =
            std::str::from_utf8(address).map_err(|_| FabricError::BadAddress("not text".into()))?;
        let mut parts = text.splitn(3, ':');
        let (Some("vm"), Some(boot), Some(pid)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(FabricError::BadAddress(format!(
                "{text:?} is not a vm address"
            )));
        };
        if boot != self.boot_id {
            return Err(FabricError::BadAddress(format!(
                "peer {text:?} runs on another machine (boot id {boot}, ours {})",
                self.boot_id
            )));
        }
        let pid: i32 = pid
            .parse()
            .ok()
            .filter(|&p| p > 0)
            .ok_or_else(|| FabricError::BadAddress(format!("{text:?}: bad pid")))?;
        let watch = ProcessWatch::open(pid).ok();
        let mut peers = lock(&self.peers);
        peers.push(Arc::new(Peer { pid, watch }));
        Ok(peers.len() - 1)
    }

    unsafe fn register(&self, addr: *mut u8, len: usize) -> Result<Region, FabricError> {
        let start = addr as u64;
        let mut regions = lock(&self.regions);
        if super::containing(&regions, start, len, |l| *l).is_some() {
            lock(&self.stats).cache_hits += 1;
        } else if let Some(&have) = regions.get(&start) {
            return Err(FabricError::AlreadyRegistered {
                addr: start,
                have: have as u64,
                want: len as u64,
            });
        } else {
            regions.insert(start, len);
            lock(&self.stats).registrations += 1;
        }
        Ok(Region {
            addr: start,
            len: len as u64,
            key: RemoteKey {
                job: self.job,
                base: start,
                len: len as u64,
                key: self.key,
            },
        })
    }

    fn registered(&self, addr: *const u8, len: usize) -> bool {
        super::containing(&lock(&self.regions), addr as u64, len, |l| *l).is_some()
    }

    fn deregister(&self, addr: *const u8) {
        lock(&self.regions).remove(&(addr as u64));
    }

    fn read(
        &self,
        peer: usize,
        key: &RemoteKey,
        offset: u64,
        local: &mut [u8],
        _timeout: Duration,
    ) -> Result<(), FabricError> {
        key.check(self.job, offset, local.len() as u64)?;
        let peer = self.peer(peer)?;
        if local.is_empty() {
            return Ok(());
        }
        Self::check_alive("read", &peer)?;
        lock(&self.stats).posted += 1;
        read_process_memory(peer.pid, key.base + offset, local)
            .map_err(|e| Self::transfer_error("read", &peer, e))?;
        // A pid recycled between the check and the copy would have been
        // read: the watch tells, and the bytes are then refused.
        Self::check_alive("read", &peer)
    }

    fn write(
        &self,
        peer: usize,
        key: &RemoteKey,
        offset: u64,
        local: &[u8],
        _timeout: Duration,
    ) -> Result<(), FabricError> {
        key.check(self.job, offset, local.len() as u64)?;
        let peer = self.peer(peer)?;
        if local.is_empty() {
            return Ok(());
        }
        Self::check_alive("write", &peer)?;
        lock(&self.stats).posted += 1;
        write_process_memory(peer.pid, key.base + offset, local)
            .map_err(|e| Self::transfer_error("write", &peer, e))
    }

    fn stats(&self) -> FabricStats {
        *lock(&self.stats)
    }
}
