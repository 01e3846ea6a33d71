//! The libfabric backend (crate feature `ofi`): one `FI_EP_RDM` endpoint
//! per process on a provider named at open (`tcp;ofi_rxm` and `shm` here;
//! `cxi` on Slingshot, `efa` on AWS, `psm2`/`opx` on Omni-Path,
//! `verbs;ofi_rxm` on InfiniBand), memory registration (`fi_mr_reg`), and
//! one-sided `fi_read`/`fi_write` whose completions a progress thread reaps
//! from the endpoint's completion queue.
//!
//! Lumen's own thin bindings: libfabric's data-path calls are inline
//! functions over the provider's ops tables, so `ofi_shim.c` (built by
//! `build.rs`, linked with `-lfabric`) turns the few used here into plain
//! functions over one opaque handle, and this file declares those.
//!
//! # Progress
//! Many providers (`tcp;ofi_rxm` among them) move data only while the
//! application reads its completion queue — on the *target* of a read too.
//! So each endpoint has one progress thread that polls the queue (spinning
//! briefly after activity, then backing off to 50 µs sleeps while idle), and
//! wakes the caller of each completed operation; a process that only
//! serves reads still makes progress.
//!
//! # Operations
//! An operation's context (`Op`) starts with the `struct fi_context` the
//! provider may use (`FI_CONTEXT` mode), is boxed and stays alive until its
//! completion (or error entry) comes back, then wakes its waiter. Transfers
//! larger than the provider's `max_msg_size` are cut into pieces, all
//! posted before waiting. Memory inside a registered region is used in
//! place (zero copy); other memory goes through a bounce buffer that the
//! transfer owns (one copy), so that a transfer which does not complete
//! within its timeout ([`FabricError::Timeout`]) can return while the
//! provider still holds the operation: nothing is ever written into the
//! caller's memory after the call returns. Registered regions are the
//! caller's to keep valid (see [`OfiEndpoint::register`]). The price: a
//! timed-out operation keeps its bounce buffer, and with it the domain,
//! open until the provider returns it — if it never does (shm reading from
//! a killed peer), until the process exits, and shm's `/dev/shm/{pid}:…`
//! region then outlives the process.

use std::collections::BTreeMap;
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{FabricError, OneSided, RemoteKey};

#[repr(C)]
struct RawHandle {
    _opaque: [u8; 0],
}

extern "C" {
    fn lumen_ofi_open(
        prov: *const c_char,
        node: *const c_char,
        out: *mut *mut RawHandle,
        err: *mut c_char,
        errlen: usize,
    ) -> c_int;
    fn lumen_ofi_close(h: *mut RawHandle);
    fn lumen_ofi_provider(h: *const RawHandle) -> *const c_char;
    fn lumen_ofi_fabric(h: *const RawHandle) -> *const c_char;
    fn lumen_ofi_max_msg(h: *const RawHandle) -> u64;
    fn lumen_ofi_virt_addr(h: *const RawHandle) -> c_int;
    fn lumen_ofi_waitable(h: *const RawHandle) -> c_int;
    fn lumen_ofi_wait(h: *mut RawHandle, timeout_ms: c_int) -> c_int;
    fn lumen_ofi_context_size() -> usize;
    fn lumen_ofi_name(h: *mut RawHandle, buf: *mut c_void, len: *mut usize) -> c_int;
    fn lumen_ofi_insert(h: *mut RawHandle, addr: *const c_void, out: *mut u64) -> c_int;
    fn lumen_ofi_mr_reg(
        h: *mut RawHandle,
        buf: *mut c_void,
        len: usize,
        access: u64,
        requested: u64,
        mr: *mut *mut c_void,
        key: *mut u64,
        desc: *mut *mut c_void,
    ) -> c_int;
    fn lumen_ofi_mr_close(mr: *mut c_void) -> c_int;
    fn lumen_ofi_read(
        h: *mut RawHandle,
        buf: *mut c_void,
        len: usize,
        desc: *mut c_void,
        peer: u64,
        addr: u64,
        key: u64,
        ctx: *mut c_void,
    ) -> isize;
    fn lumen_ofi_write(
        h: *mut RawHandle,
        buf: *const c_void,
        len: usize,
        desc: *mut c_void,
        peer: u64,
        addr: u64,
        key: u64,
        ctx: *mut c_void,
    ) -> isize;
    fn lumen_ofi_poll(
        h: *mut RawHandle,
        ctxs: *mut *mut c_void,
        max: usize,
        timeout_ms: c_int,
        err_ctx: *mut *mut c_void,
        err: *mut c_int,
        errbuf: *mut c_char,
        errlen: usize,
    ) -> isize;
    fn lumen_ofi_strerror(rc: c_int) -> *const c_char;
}

/// Keys asked for at registration (unique in the process: providers that
/// let the application choose keys refuse a key in use).
fn next_key() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// libfabric's FI_EAGAIN and FI_EAVAIL (positive values of `fi_errno.h`).
const FI_EAGAIN: isize = 11;
const FI_EAVAIL: isize = 259;
/// `FI_READ | FI_WRITE | FI_REMOTE_READ | FI_REMOTE_WRITE` (the shim
/// passes libfabric's own macros; this names the intent at call sites).
const ACCESS_ALL: u64 = (1 << 8) | (1 << 9) | (1 << 12) | (1 << 13);

fn strerror(rc: c_int) -> String {
    // SAFETY: fi_strerror returns a static NUL-terminated string for any code.
    unsafe { CStr::from_ptr(lumen_ofi_strerror(rc)) }
        .to_string_lossy()
        .into_owned()
}

/// The libfabric handle; closed once, when the last user drops it.
struct Handle(*mut RawHandle);

// SAFETY: the domain is opened with FI_THREAD_SAFE, so libfabric
// serialises concurrent calls on the handle's objects itself.
unsafe impl Send for Handle {}
// SAFETY: as above.
unsafe impl Sync for Handle {}

impl Drop for Handle {
    fn drop(&mut self) {
        // SAFETY: the handle came from lumen_ofi_open and is closed only here.
        unsafe { lumen_ofi_close(self.0) }
    }
}

/// One in-flight operation (see the module docs). `fi` must come first:
/// the provider's `struct fi_context` lives at the context pointer.
#[repr(C)]
struct Op {
    fi: [*mut c_void; 8],
    done: Arc<Completion>,
}

/// What the waiter of one transfer and its pieces share: pieces left,
/// the first error, and the bounce buffer when the caller's memory was
/// not registered (freed, and deregistered, with the last of them).
#[derive(Default)]
struct Completion {
    left: AtomicU32,
    error: Mutex<Option<String>>,
    failed: AtomicBool,
    bounce: Mutex<Option<Bounce>>,
}

/// A registered buffer standing in for unregistered caller memory.
struct Bounce {
    buf: Box<[u8]>,
    mr: *mut c_void,
    /// Keeps the domain open until the registration is closed.
    _handle: Arc<Handle>,
}

// SAFETY: `mr` is a libfabric object of a FI_THREAD_SAFE domain.
unsafe impl Send for Bounce {}

impl Drop for Bounce {
    fn drop(&mut self) {
        // SAFETY: `mr` came from fi_mr_reg; no operation uses it any more
        // (the last holder of the completion drops it).
        unsafe { lumen_ofi_mr_close(self.mr) };
    }
}

/// A registered memory region: its local descriptor and remote key.
struct Registration {
    mr: *mut c_void,
    desc: *mut c_void,
    key: u64,
    len: usize,
}

// SAFETY: the pointers are libfabric objects of a FI_THREAD_SAFE domain,
// used only through the shim.
unsafe impl Send for Registration {}

pub use super::{FabricStats as OfiStats, Region};

/// A libfabric RDM endpoint (see the module docs).
pub struct OfiEndpoint {
    handle: Arc<Handle>,
    provider: String,
    fabric: String,
    max_msg: usize,
    virt_addr: bool,
    job: u64,
    /// Registered regions by start address.
    regions: Mutex<BTreeMap<u64, Registration>>,
    peers: Mutex<Vec<u64>>,
    stop: Arc<AtomicBool>,
    progress: Option<std::thread::JoinHandle<()>>,
    stats: Mutex<OfiStats>,
    /// Last error of the completion queue itself.
    queue_error: Arc<AtomicI32>,
    /// Callers waiting in `transfer` (they reap the queue themselves).
    waiters: Arc<AtomicU32>,
    /// Registered bytes the read-back after a write lands in (never read).
    scratch: Box<[u8]>,
    scratch_mr: *mut c_void,
    scratch_desc: *mut c_void,
}

// SAFETY: the raw pointers are libfabric objects of a FI_THREAD_SAFE
// domain (and the scratch bytes only the provider writes).
unsafe impl Send for OfiEndpoint {}
// SAFETY: as above; every other field is Sync.
unsafe impl Sync for OfiEndpoint {}

impl std::fmt::Debug for OfiEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "OfiEndpoint({} on {})", self.provider, self.fabric)
    }
}

/// Raw pointer wrapper for the progress thread.
struct SendPtr(*mut RawHandle);
// SAFETY: see `Handle`: the domain is thread safe.
unsafe impl Send for SendPtr {}

impl OfiEndpoint {
    /// Opens an endpoint on `provider` (`"tcp;ofi_rxm"`, `"shm"`, ...),
    /// bound to local address `node` when given (`"127.0.0.1"`, a
    /// namespace's address). `job` tags its keys: keys of another job are
    /// refused before anything is posted.
    pub fn open(provider: &str, node: Option<&str>, job: u64) -> Result<Self, FabricError> {
        let prov = CString::new(provider).map_err(|_| FabricError::Setup {
            provider: provider.to_string(),
            detail: "the provider name has a NUL byte".into(),
        })?;
        let node_c = match node {
            Some(n) => Some(CString::new(n).map_err(|_| FabricError::Setup {
                provider: provider.to_string(),
                detail: "the address has a NUL byte".into(),
            })?),
            None => None,
        };
        // SAFETY: FFI query with no arguments.
        if unsafe { lumen_ofi_context_size() } > std::mem::size_of::<[*mut c_void; 8]>() {
            return Err(FabricError::Setup {
                provider: provider.to_string(),
                detail: "libfabric's fi_context is larger than Lumen reserves".into(),
            });
        }
        let mut raw: *mut RawHandle = std::ptr::null_mut();
        let mut err = [0 as c_char; 256];
        // SAFETY: the strings are NUL-terminated and outlive the call; `raw`
        // and `err` are valid out-parameters of the sizes given.
        let rc = unsafe {
            lumen_ofi_open(
                prov.as_ptr(),
                node_c.as_ref().map_or(std::ptr::null(), |n| n.as_ptr()),
                &mut raw,
                err.as_mut_ptr(),
                err.len(),
            )
        };
        if rc != 0 || raw.is_null() {
            // SAFETY: the shim wrote a NUL-terminated message (snprintf).
            let detail = unsafe { CStr::from_ptr(err.as_ptr()) }
                .to_string_lossy()
                .into_owned();
            return Err(FabricError::Setup {
                provider: provider.to_string(),
                detail: if detail.is_empty() {
                    strerror(rc)
                } else {
                    detail
                },
            });
        }
        let handle = Arc::new(Handle(raw));
        // SAFETY: `raw` is a live handle; the names are NUL-terminated
        // strings owned by its fi_info.
        let (provider_name, fabric, max_msg, virt_addr) = unsafe {
            (
                CStr::from_ptr(lumen_ofi_provider(raw))
                    .to_string_lossy()
                    .into_owned(),
                CStr::from_ptr(lumen_ofi_fabric(raw))
                    .to_string_lossy()
                    .into_owned(),
                lumen_ofi_max_msg(raw),
                lumen_ofi_virt_addr(raw) != 0,
            )
        };
        let stop = Arc::new(AtomicBool::new(false));
        let queue_error = Arc::new(AtomicI32::new(0));
        let waiters = Arc::new(AtomicU32::new(0));
        let progress = {
            let stop = stop.clone();
            let handle = handle.clone();
            let queue_error = queue_error.clone();
            let waiters = waiters.clone();
            std::thread::Builder::new()
                .name("lumen-ofi-progress".into())
                .spawn(move || progress_loop(handle, stop, queue_error, waiters))
                .map_err(|e| FabricError::Setup {
                    provider: provider.to_string(),
                    detail: format!("starting the progress thread: {e}"),
                })?
        };
        tracing::info!("fabric: libfabric provider {provider_name} on {fabric}");
        let mut scratch = vec![0u8; 64].into_boxed_slice();
        let (mut scratch_mr, mut scratch_key, mut scratch_desc) =
            (std::ptr::null_mut(), 0u64, std::ptr::null_mut());
        // SAFETY: `scratch` is owned by the endpoint and deregistered in its
        // Drop before it is freed.
        let rc = unsafe {
            lumen_ofi_mr_reg(
                handle.0,
                scratch.as_mut_ptr().cast(),
                scratch.len(),
                ACCESS_ALL,
                next_key(),
                &mut scratch_mr,
                &mut scratch_key,
                &mut scratch_desc,
            )
        };
        if rc != 0 {
            stop.store(true, Ordering::Release);
            let _ = progress.join();
            return Err(FabricError::Setup {
                provider: provider.to_string(),
                detail: format!("registering a scratch buffer: {}", strerror(rc)),
            });
        }
        Ok(OfiEndpoint {
            handle,
            provider: provider_name,
            fabric,
            max_msg: usize::try_from(max_msg).unwrap_or(usize::MAX).max(4096),
            virt_addr,
            job,
            regions: Mutex::new(BTreeMap::new()),
            peers: Mutex::new(Vec::new()),
            stop,
            progress: Some(progress),
            stats: Mutex::new(OfiStats::default()),
            queue_error,
            waiters,
            scratch,
            scratch_mr,
            scratch_desc,
        })
    }

    /// The provider that answered (`tcp;ofi_rxm`, `shm`).
    pub fn provider(&self) -> &str {
        &self.provider
    }

    /// This endpoint's address, for peers' [`OfiEndpoint::insert_peer`]
    /// (exchanged over the control plane at bootstrap).
    pub fn address(&self) -> Result<Vec<u8>, FabricError> {
        let mut buf = vec![0u8; ADDRESS_MAX];
        let mut len = buf.len();
        // SAFETY: `buf` has `len` writable bytes; the shim writes at most that.
        let rc = unsafe { lumen_ofi_name(self.handle.0, buf.as_mut_ptr().cast(), &mut len) };
        if rc != 0 {
            return Err(self.op_error("fi_getname", rc));
        }
        buf.truncate(len.min(ADDRESS_MAX));
        Ok(buf)
    }

    /// Adds a peer by its address; returns its index for reads and writes.
    pub fn insert_peer(&self, address: &[u8]) -> Result<usize, FabricError> {
        if address.is_empty() {
            return Err(FabricError::BadAddress("empty".into()));
        }
        // The provider reads as many bytes as its addresses may have (the
        // caller's length is not passed on), at most the 256 `address`
        // reserves: copy the peer's into a zeroed buffer of that size, so a
        // short address from the network is never read past its end (and a
        // name is NUL-terminated).
        if address.len() > ADDRESS_MAX {
            return Err(FabricError::BadAddress(format!(
                "{} bytes where {} addresses have at most {ADDRESS_MAX}",
                address.len(),
                self.provider
            )));
        }
        let mut padded = vec![0u8; ADDRESS_MAX + 1];
        padded[..address.len()].copy_from_slice(address);
        let mut fi_addr = 0u64;
        // SAFETY: `padded` holds more bytes than any address of this
        // provider; a malformed one is rejected by fi_av_insert (count != 1).
        let rc = unsafe { lumen_ofi_insert(self.handle.0, padded.as_ptr().cast(), &mut fi_addr) };
        if rc != 0 {
            return Err(FabricError::BadAddress(format!(
                "fi_av_insert refused it: {}",
                strerror(rc)
            )));
        }
        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        peers.push(fi_addr);
        Ok(peers.len() - 1)
    }

    /// Registers `len` bytes at `addr` for remote reads and writes, once:
    /// a range inside a region registered already is served from it.
    ///
    /// # Safety
    /// The range must stay mapped and allocated until it is deregistered
    /// (or the endpoint dropped), and be deregistered only once no
    /// transfer into it is in flight (one that timed out may still be):
    /// peers and the provider may read and write it until then.
    pub unsafe fn register(&self, addr: *mut u8, len: usize) -> Result<Region, FabricError> {
        let start = addr as u64;
        let mut regions = self.regions.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(found) = containing(&regions, start, len) {
            self.stats
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .cache_hits += 1;
            return Ok(Region {
                addr: start,
                len: len as u64,
                key: self.key_for(found.0, found.1.key, start, len),
            });
        }
        if let Some(have) = regions.get(&start) {
            return Err(FabricError::AlreadyRegistered {
                addr: start,
                have: have.len as u64,
                want: len as u64,
            });
        }
        let (mut mr, mut key, mut desc) = (std::ptr::null_mut(), 0u64, std::ptr::null_mut());
        // SAFETY: the caller keeps the range valid (this function's contract);
        // the out-parameters are valid.
        let rc = unsafe {
            lumen_ofi_mr_reg(
                self.handle.0,
                addr.cast(),
                len.max(1),
                ACCESS_ALL,
                next_key(),
                &mut mr,
                &mut key,
                &mut desc,
            )
        };
        if rc != 0 {
            return Err(self.op_error("fi_mr_reg", rc));
        }
        regions.insert(start, Registration { mr, desc, key, len });
        self.stats
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .registrations += 1;
        Ok(Region {
            addr: start,
            len: len as u64,
            key: self.key_for(start, key, start, len),
        })
    }

    /// Deregisters the region starting at `addr` (a no-op if none does).
    pub fn deregister(&self, addr: *const u8) {
        let reg = self
            .regions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(addr as u64));
        if let Some(reg) = reg {
            // SAFETY: `mr` came from fi_mr_reg and is closed once (removed above).
            unsafe { lumen_ofi_mr_close(reg.mr) };
        }
    }

    fn key_for(&self, region_start: u64, key: u64, start: u64, len: usize) -> RemoteKey {
        RemoteKey {
            job: self.job,
            // With FI_MR_VIRT_ADDR the target address is virtual, else an
            // offset into the registered region.
            base: if self.virt_addr {
                start
            } else {
                start - region_start
            },
            len: len as u64,
            key,
        }
    }

    /// Counters.
    pub fn stats(&self) -> OfiStats {
        *self.stats.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reads `local.len()` bytes at `offset` of the peer's region `key`
    /// into `local`, waiting at most `timeout`.
    pub fn read(
        &self,
        peer: usize,
        key: &RemoteKey,
        offset: u64,
        local: &mut [u8],
        timeout: Duration,
    ) -> Result<(), FabricError> {
        self.transfer(
            peer,
            key,
            offset,
            local.as_mut_ptr(),
            local.len(),
            false,
            timeout,
        )
    }

    /// Writes `local` at `offset` of the peer's region `key`, waiting at
    /// most `timeout` for the provider to complete it.
    pub fn write(
        &self,
        peer: usize,
        key: &RemoteKey,
        offset: u64,
        local: &[u8],
        timeout: Duration,
    ) -> Result<(), FabricError> {
        self.transfer(
            peer,
            key,
            offset,
            local.as_ptr().cast_mut(),
            local.len(),
            true,
            timeout,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn transfer(
        &self,
        peer: usize,
        key: &RemoteKey,
        offset: u64,
        local: *mut u8,
        len: usize,
        write: bool,
        timeout: Duration,
    ) -> Result<(), FabricError> {
        key.check(self.job, offset, len as u64)?;
        if len == 0 {
            return Ok(());
        }
        let fi_peer = *self
            .peers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(peer)
            .ok_or(FabricError::NoSuchPeer(peer))?;
        // The local buffer: inside a registered region (used in place), or
        // a registered bounce buffer owned by the transfer's completion, so
        // a transfer that times out never writes into the caller's memory
        // afterwards (see the module docs).
        let registered = {
            let regions = self.regions.lock().unwrap_or_else(|p| p.into_inner());
            containing(&regions, local as u64, len).map(|(_, reg)| reg.desc)
        };
        let done = Arc::new(Completion::default());
        let (buffer, desc) = match registered {
            Some(desc) => {
                self.stats
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .cache_hits += 1;
                (local, desc)
            }
            None => {
                let mut bounce = vec![0u8; len].into_boxed_slice();
                if write {
                    // SAFETY: `local` is `len` readable bytes (our caller's slice).
                    bounce.copy_from_slice(unsafe { std::slice::from_raw_parts(local, len) });
                }
                let (mut mr, mut k, mut d) = (std::ptr::null_mut(), 0u64, std::ptr::null_mut());
                // SAFETY: the bounce buffer lives in `done` until every posted
                // piece has completed (the ops hold `done`).
                let rc = unsafe {
                    lumen_ofi_mr_reg(
                        self.handle.0,
                        bounce.as_mut_ptr().cast(),
                        len,
                        ACCESS_ALL,
                        next_key(),
                        &mut mr,
                        &mut k,
                        &mut d,
                    )
                };
                if rc != 0 {
                    return Err(self.op_error("fi_mr_reg (bounce buffer)", rc));
                }
                self.stats
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .registrations += 1;
                let ptr = bounce.as_mut_ptr();
                *done.bounce.lock().unwrap_or_else(|p| p.into_inner()) = Some(Bounce {
                    buf: bounce,
                    mr,
                    _handle: self.handle.clone(),
                });
                (ptr, d)
            }
        };
        let pieces = len.div_ceil(self.max_msg);
        let deadline = Instant::now() + timeout;
        let mut posted = 0u64;
        let mut post_error = None;
        for piece in 0..pieces {
            let at = piece * self.max_msg;
            let size = self.max_msg.min(len - at);
            let target = key.base + offset + at as u64;
            let result = self.post(&done, deadline, |op| {
                // SAFETY: `buffer + at .. + size` lies in the caller's
                // registered region or the bounce buffer; `op` stays alive
                // until its completion is reaped (the progress thread frees
                // it) or is leaked on timeout.
                unsafe {
                    if write {
                        lumen_ofi_write(
                            self.handle.0,
                            buffer.add(at).cast(),
                            size,
                            desc,
                            fi_peer,
                            target,
                            key.key,
                            op,
                        )
                    } else {
                        lumen_ofi_read(
                            self.handle.0,
                            buffer.add(at).cast(),
                            size,
                            desc,
                            fi_peer,
                            target,
                            key.key,
                            op,
                        )
                    }
                }
            });
            if let Err(rc) = result {
                let call = if write { "fi_write" } else { "fi_read" };
                post_error = Some(if rc == -(FI_EAGAIN as c_int) {
                    // The queue stayed full until the deadline: the peer
                    // is not taking the operations (gone, or stalled).
                    FabricError::Timeout {
                        what: if write { "write" } else { "read" },
                        bytes: len as u64,
                        after: timeout,
                    }
                } else {
                    self.op_error(call, rc)
                });
                break;
            }
            posted += 1;
        }
        if write && post_error.is_none() {
            // The read-back that tells the writes reached the target (RAW
            // order): one byte of the last piece, into the scratch buffer.
            let last = key.base + offset + len as u64 - 1;
            let read_back = self.post(&done, deadline, |op| {
                // SAFETY: the scratch buffer lives as long as the endpoint;
                // `op` as for the pieces above.
                unsafe {
                    lumen_ofi_read(
                        self.handle.0,
                        self.scratch.as_ptr().cast_mut().cast(),
                        1,
                        self.scratch_desc,
                        fi_peer,
                        last,
                        key.key,
                        op,
                    )
                }
            });
            match read_back {
                Ok(()) => posted += 1,
                Err(rc) => post_error = Some(self.op_error("fi_read (write's read-back)", rc)),
            }
        }
        self.stats.lock().unwrap_or_else(|p| p.into_inner()).posted += posted;
        // While a caller waits it reaps the queue itself; the progress
        // thread stands aside meanwhile (two threads polling one queue on
        // few cores starve the peer's progress thread of a core).
        self.waiters.fetch_add(1, Ordering::AcqRel);
        let finished = wait(self.handle.0, &done, deadline, &self.queue_error);
        self.waiters.fetch_sub(1, Ordering::AcqRel);
        if finished && !write && post_error.is_none() {
            let bounce = done.bounce.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(bounce) = bounce.as_ref() {
                // SAFETY: `local` is `len` writable bytes (our caller's
                // slice); the bounce buffer is `len` bytes the provider is
                // done with (every piece completed).
                unsafe { std::ptr::copy_nonoverlapping(bounce.buf.as_ptr(), local, len) };
            }
        }
        if let Some(e) = post_error {
            return Err(e);
        }
        if !finished {
            return Err(FabricError::Timeout {
                what: if write { "write" } else { "read" },
                bytes: len as u64,
                after: timeout,
            });
        }
        if done.failed.load(Ordering::Acquire) {
            let detail = done
                .error
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone()
                .unwrap_or_default();
            return Err(FabricError::Transfer {
                what: if write { "write" } else { "read" },
                detail,
            });
        }
        let queue = self.queue_error.load(Ordering::Acquire);
        if queue != 0 {
            return Err(self.op_error("fi_cq_read", queue));
        }
        Ok(())
    }

    /// Posts one operation of `done` with `call` (given the context to
    /// pass), retrying while the provider's queue is full until `deadline`;
    /// the operation then counts in `done` until its completion is reaped.
    /// On failure nothing was handed to the provider: the context is freed
    /// and the provider's code returned.
    fn post(
        &self,
        done: &Arc<Completion>,
        deadline: Instant,
        call: impl Fn(*mut c_void) -> isize,
    ) -> Result<(), c_int> {
        done.left.fetch_add(1, Ordering::AcqRel);
        let op = Box::into_raw(Box::new(Op {
            fi: [std::ptr::null_mut(); 8],
            done: done.clone(),
        }));
        loop {
            let rc = call(op.cast());
            if rc == 0 {
                return Ok(());
            }
            if rc == -FI_EAGAIN && Instant::now() < deadline {
                std::thread::yield_now();
                continue;
            }
            // SAFETY: `op` came from Box::into_raw above and was not handed over.
            drop(unsafe { Box::from_raw(op) });
            done.left.fetch_sub(1, Ordering::AcqRel);
            return Err(rc as c_int);
        }
    }

    fn op_error(&self, call: &'static str, rc: c_int) -> FabricError {
        FabricError::Call {
            call,
            provider: self.provider.clone(),
            detail: strerror(rc),
        }
    }
}

impl Drop for OfiEndpoint {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.progress.take() {
            let _ = thread.join();
        }
        let regions = std::mem::take(&mut *self.regions.lock().unwrap_or_else(|p| p.into_inner()));
        for (_, reg) in regions {
            // SAFETY: each mr is closed once, before the handle (dropped after).
            unsafe { lumen_ofi_mr_close(reg.mr) };
        }
        // SAFETY: closed once; the scratch buffer is freed after this.
        unsafe { lumen_ofi_mr_close(self.scratch_mr) };
    }
}

/// The registered region holding `[start, start + len)`, if any.
fn containing(
    regions: &BTreeMap<u64, Registration>,
    start: u64,
    len: usize,
) -> Option<(u64, &Registration)> {
    super::containing(regions, start, len, |reg| reg.len)
}

/// Waits until every piece of `done` completed, or `deadline`, reaping
/// completions itself meanwhile (the queue is thread safe), so a waiting
/// caller does not depend on the progress thread being scheduled.
fn wait(
    raw: *mut RawHandle,
    done: &Completion,
    deadline: Instant,
    queue_error: &AtomicI32,
) -> bool {
    let mut spins = 0u32;
    loop {
        if done.left.load(Ordering::Acquire) == 0 {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        if reap(raw, 0, queue_error) {
            spins = 0;
            continue;
        }
        if spins < 20_000 {
            spins += 1;
            std::hint::spin_loop();
        } else {
            std::thread::sleep(Duration::from_micros(20));
        }
    }
}

/// Reaps completions: up to 64 (non-blocking when `timeout_ms` is 0, else
/// sleeping in the provider's wait object up to that long); true when it
/// found any.
fn reap(raw: *mut RawHandle, timeout_ms: c_int, queue_error: &AtomicI32) -> bool {
    let mut ctxs = [std::ptr::null_mut::<c_void>(); 64];
    let mut errbuf = [0 as c_char; 256];
    let (mut err_ctx, mut err) = (std::ptr::null_mut(), 0 as c_int);
    // SAFETY: `raw` is a live handle (its owner holds an Arc); the buffers
    // are ours and of the sizes given.
    let n = unsafe {
        lumen_ofi_poll(
            raw,
            ctxs.as_mut_ptr(),
            ctxs.len(),
            timeout_ms,
            &mut err_ctx,
            &mut err,
            errbuf.as_mut_ptr(),
            errbuf.len(),
        )
    };
    if n > 0 {
        for &ctx in &ctxs[..n as usize] {
            complete(ctx, None);
        }
        return true;
    }
    if n == -FI_EAVAIL {
        // SAFETY: the shim wrote a NUL-terminated message.
        let text = unsafe { CStr::from_ptr(errbuf.as_ptr()) }
            .to_string_lossy()
            .into_owned();
        complete(err_ctx, Some(format!("error {err}: {text}")));
        return true;
    }
    if n < 0 && n != -FI_EAGAIN {
        queue_error.store(n as c_int, Ordering::Release);
    }
    false
}

/// The longest provider address Lumen takes (fi_getname's buffer).
const ADDRESS_MAX: usize = 256;

/// How long the progress thread stays busy after activity before it
/// sleeps (time, not a count of polls: an empty poll costs tens of
/// nanoseconds on one provider and microseconds on another).
const BUSY_WINDOW: Duration = Duration::from_millis(2);

fn progress_loop(
    handle: Arc<Handle>,
    stop: Arc<AtomicBool>,
    queue_error: Arc<AtomicI32>,
    waiters: Arc<AtomicU32>,
) {
    let raw = SendPtr(handle.0);
    // SAFETY: FFI query on a live handle.
    let waitable = unsafe { lumen_ofi_waitable(raw.0) } != 0;
    let mut busy_until = Instant::now() + BUSY_WINDOW;
    while !stop.load(Ordering::Acquire) {
        if waiters.load(Ordering::Acquire) > 0 {
            // A waiting caller reaps (see `transfer`).
            std::thread::sleep(Duration::from_micros(50));
            continue;
        }
        // Busy for BUSY_WINDOW after activity; then, with a wait object,
        // sleep in the kernel until the provider has work (100 ms at most,
        // to see `stop`); without one, nap.
        let now = Instant::now();
        let idle = now >= busy_until;
        if waitable && idle {
            // SAFETY: `raw` is a live handle; the call only polls its fd.
            match unsafe { lumen_ofi_wait(raw.0, 100) } {
                // The provider has work: a completion of ours, or a peer's
                // one-sided request served here (the target of a read sees
                // no completion) — more are likely, so stay busy; else each
                // pays a wake-up (26 us of a 46 us 8-byte read on
                // tcp;ofi_rxm here).
                1 => busy_until = Instant::now() + BUSY_WINDOW,
                0 => continue,
                // No descriptor: fi_cq_sread below sleeps instead.
                _ => {}
            }
        }
        let idle = Instant::now() >= busy_until;
        let timeout = if waitable && idle { 100 } else { 0 };
        if reap(raw.0, timeout, &queue_error) {
            busy_until = Instant::now() + BUSY_WINDOW;
            continue;
        }
        if !waitable && idle {
            std::thread::sleep(Duration::from_micros(50));
        } else {
            std::hint::spin_loop();
        }
    }
}

/// Completes the operation at `ctx` (an `Op` from `transfer`), freeing it.
fn complete(ctx: *mut c_void, error: Option<String>) {
    if ctx.is_null() {
        return;
    }
    // SAFETY: every context Lumen posts is a leaked Box<Op>; the provider
    // returns each once, so it is freed once, here.
    let op = unsafe { Box::from_raw(ctx.cast::<Op>()) };
    if let Some(error) = error {
        op.done.failed.store(true, Ordering::Release);
        let mut slot = op.done.error.lock().unwrap_or_else(|p| p.into_inner());
        slot.get_or_insert(error);
    }
    op.done.left.fetch_sub(1, Ordering::AcqRel);
}

impl OneSided for OfiEndpoint {
    fn describe(&self) -> String {
        format!("ofi/{} on {}", self.provider, self.fabric)
    }

    fn address(&self) -> Result<Vec<u8>, FabricError> {
        OfiEndpoint::address(self)
    }

    fn insert_peer(&self, address: &[u8]) -> Result<usize, FabricError> {
        OfiEndpoint::insert_peer(self, address)
    }

    unsafe fn register(&self, addr: *mut u8, len: usize) -> Result<Region, FabricError> {
        // SAFETY: the trait's contract is this method's.
        unsafe { OfiEndpoint::register(self, addr, len) }
    }

    fn registered(&self, addr: *const u8, len: usize) -> bool {
        let regions = self.regions.lock().unwrap_or_else(|p| p.into_inner());
        containing(&regions, addr as u64, len).is_some()
    }

    fn deregister(&self, addr: *const u8) {
        OfiEndpoint::deregister(self, addr)
    }

    fn read(
        &self,
        peer: usize,
        key: &RemoteKey,
        offset: u64,
        local: &mut [u8],
        timeout: Duration,
    ) -> Result<(), FabricError> {
        OfiEndpoint::read(self, peer, key, offset, local, timeout)
    }

    fn write(
        &self,
        peer: usize,
        key: &RemoteKey,
        offset: u64,
        local: &[u8],
        timeout: Duration,
    ) -> Result<(), FabricError> {
        OfiEndpoint::write(self, peer, key, offset, local, timeout)
    }

    fn stats(&self) -> OfiStats {
        OfiEndpoint::stats(self)
    }
}
