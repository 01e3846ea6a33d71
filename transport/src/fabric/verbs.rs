//! The InfiniBand / RoCE verbs backend (crate feature `verbs`): rdma-core's
//! libibverbs through `ibverbs-sys` (raw bindings; the safe `ibverbs` crate
//! has no RDMA read or write).
//!
//! # What it does
//! - **Discovery** ([`devices`]): the devices and their ports. A kernel
//!   without RDMA support answers `ENOSYS`: that is "no devices", not an
//!   error, so `LUMEN_FABRIC=auto` moves on to the next backend.
//! - **One protection domain, one completion queue, one shared receive
//!   queue** per endpoint, on the first device with an active port (or
//!   the one `LUMEN_VERBS_DEVICE` names, `mlx5_0` or `mlx5_0:1`).
//! - **RC queue pairs, one per peer and direction**, connected when a peer
//!   is inserted: the address a rank publishes at bootstrap carries its
//!   LID, GID and a handshake port; [`OneSided::insert_peer`] connects to
//!   that port, the two sides exchange queue pair numbers, PSNs and MTUs
//!   (as `rdma_cm` would, over the node network the control plane already
//!   uses) and both move their queue pair through INIT, RTR and RTS. The
//!   target's queue pair takes its receives from the shared receive queue,
//!   so a rank with many peers posts one pool of receives, not one per
//!   peer.
//! - **A memory-region cache**: a region is registered once
//!   (`ibv_reg_mr`); a range inside one (a view of a pool) is served from
//!   it, so 10 000 views of one arena cost 10 000 lookups.
//! - **RDMA read and write** for object pulls and rendezvous, cut into
//!   pieces of the port's `max_msg_sz`, all posted before waiting;
//!   **write with immediate** for eager messages: the bytes land in the
//!   target's registered memory and the immediate (a sequence or slot
//!   number) arrives through the shared receive queue
//!   ([`VerbsEndpoint::next_immediate`]).
//! - **Completions** are reaped by a progress thread (and by a waiting
//!   caller) from the one queue; each posted piece carries a boxed context
//!   that lives until its completion comes back, and memory outside any
//!   registered region goes through a bounce buffer that the transfer owns,
//!   so a transfer that times out never writes into the caller's memory
//!   afterwards (the same rule as the libfabric backend).
//!
//! # Failure
//! An RC queue pair whose peer stops answering retries (`retry_cnt` 7,
//! `timeout` 14: 4.096 µs × 2^14 ≈ 67 ms per try, about 0.5 s in all), then
//! completes every posted request with an error status, which is reported
//! with its name (`IBV_WC_RETRY_EXC_ERR`: the peer is gone). A remote
//! access error (a bad key) also breaks the queue pair, as RDMA does. A
//! broken or timed-out queue pair is moved to the error state (so every
//! request still posted on it completes, flushed, and nothing lands late)
//! and the next transfer to that peer connects a new one.
//!
//! Completions of all queue pairs share one queue: sends in flight across
//! the endpoint are capped so that they and the shared receives always fit
//! in it (an overrun would break every queue pair).
//!
//! # Tested where
//! The conformance suite runs this backend where a device exists; on a
//! machine without one it says so and skips. `scripts/verbs-hw.sh` runs it
//! and the fabric benchmark on a machine with a card.

use std::collections::{BTreeMap, VecDeque};
use std::ffi::CStr;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use ibverbs_sys as ffi;

use super::{FabricError, FabricStats, OneSided, Region, RemoteKey};

/// Outstanding work requests per queue pair.
const MAX_SEND_WR: u32 = 256;
/// Receives kept posted on the shared receive queue.
const SRQ_DEPTH: u32 = 1024;
/// Completion queue entries.
const CQ_DEPTH: i32 = 4096;
/// Reads in flight per queue pair, both directions, at most (ConnectX
/// supports 16; clamped to the device's `max_qp_rd_atom`).
const RD_ATOMIC: u8 = 16;
/// Sends in flight over the endpoint: with the shared receives they must
/// fit in the completion queue.
const MAX_IN_FLIGHT: u32 = CQ_DEPTH as u32 - SRQ_DEPTH;
/// Work request id of the shared receive queue's receives (contexts of
/// posted sends are boxes, never 0).
const RECV_WR_ID: u64 = 0;
const HANDSHAKE_MAGIC: u32 = 0x4c56_4253; // "LVBS"

/// One port of a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortInfo {
    /// Port number (from 1).
    pub port: u8,
    /// Whether the port is ACTIVE.
    pub active: bool,
    /// `InfiniBand` or `Ethernet` (RoCE).
    pub link_layer: &'static str,
    /// LID (InfiniBand; 0 on RoCE).
    pub lid: u16,
    /// Active MTU in bytes.
    pub mtu: u32,
    /// Largest message the port takes.
    pub max_msg: u32,
}

/// A verbs device and its ports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    /// `mlx5_0`, `rxe0`, ...
    pub name: String,
    /// Node GUID (host order).
    pub guid: u64,
    /// Its ports.
    pub ports: Vec<PortInfo>,
}

fn setup(detail: String) -> FabricError {
    FabricError::Setup {
        provider: "verbs".into(),
        detail,
    }
}

fn call(call: &'static str, detail: String) -> FabricError {
    FabricError::Call {
        call,
        provider: "verbs".into(),
        detail,
    }
}

fn errno() -> std::io::Error {
    std::io::Error::last_os_error()
}

fn mtu_bytes(mtu: ffi::ibv_mtu) -> u32 {
    match mtu {
        ffi::IBV_MTU_256 => 256,
        ffi::IBV_MTU_512 => 512,
        ffi::IBV_MTU_1024 => 1024,
        ffi::IBV_MTU_2048 => 2048,
        ffi::IBV_MTU_4096 => 4096,
        _ => 0,
    }
}

/// The device list, freed on drop.
struct DeviceList {
    list: *mut *mut ffi::ibv_device,
    len: usize,
}

impl DeviceList {
    /// `Ok(None)` where the kernel has no RDMA support (ENOSYS) or no
    /// device is present.
    fn get() -> Result<Option<Self>, FabricError> {
        let mut n = 0i32;
        // SAFETY: `n` is a valid out-parameter; the list is freed in Drop.
        let list = unsafe { ffi::ibv_get_device_list(&mut n) };
        if list.is_null() {
            let e = errno();
            return match e.raw_os_error() {
                Some(libc::ENOSYS) | Some(libc::ENOENT) | Some(0) | None => Ok(None),
                _ => Err(setup(format!("ibv_get_device_list: {e}"))),
            };
        }
        let list = DeviceList {
            list,
            len: usize::try_from(n).unwrap_or(0),
        };
        Ok((list.len > 0).then_some(list))
    }

    fn device(&self, i: usize) -> *mut ffi::ibv_device {
        debug_assert!(i < self.len);
        // SAFETY: `i < len`, the number of entries ibv_get_device_list gave.
        unsafe { *self.list.add(i) }
    }
}

impl Drop for DeviceList {
    fn drop(&mut self) {
        // SAFETY: the list came from ibv_get_device_list and is freed once.
        unsafe { ffi::ibv_free_device_list(self.list) };
    }
}

/// Queries port `port` of an open context.
fn query_port(ctx: *mut ffi::ibv_context, port: u8) -> Option<ffi::ibv_port_attr> {
    // SAFETY: ibv_port_attr is a plain C struct; all zeroes is a valid value.
    let mut attr: ffi::ibv_port_attr = unsafe { std::mem::zeroed() };
    // SAFETY: `ctx` is an open context; libibverbs fills the compat prefix
    // of `attr`, which is at least that large (the ibverbs crate does the
    // same cast).
    let rc =
        unsafe { ffi::ibv_query_port(ctx, port, (&mut attr as *mut ffi::ibv_port_attr).cast()) };
    (rc == 0).then_some(attr)
}

fn port_info(port: u8, attr: &ffi::ibv_port_attr) -> PortInfo {
    PortInfo {
        port,
        active: attr.state == ffi::ibv_port_state::IBV_PORT_ACTIVE,
        link_layer: if u32::from(attr.link_layer) == ffi::IBV_LINK_LAYER_ETHERNET {
            "Ethernet"
        } else {
            "InfiniBand"
        },
        lid: attr.lid,
        mtu: mtu_bytes(attr.active_mtu),
        max_msg: attr.max_msg_sz,
    }
}

/// The verbs devices of this node; empty (not an error) where the kernel
/// has no RDMA support or no device is present.
pub fn devices() -> Result<Vec<DeviceInfo>, FabricError> {
    let Some(list) = DeviceList::get()? else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for i in 0..list.len {
        let dev = list.device(i);
        // SAFETY: `dev` is an entry of the live list; the name is a
        // NUL-terminated string it owns.
        let name = unsafe { CStr::from_ptr(ffi::ibv_get_device_name(dev)) }
            .to_string_lossy()
            .into_owned();
        // SAFETY: as above.
        let guid = u64::from_be(unsafe { ffi::ibv_get_device_guid(dev) });
        let mut ports = Vec::new();
        // SAFETY: `dev` is live; the context is closed below.
        let ctx = unsafe { ffi::ibv_open_device(dev) };
        if !ctx.is_null() {
            for port in 1..=u8::MAX {
                match query_port(ctx, port) {
                    Some(attr) => ports.push(port_info(port, &attr)),
                    None => break,
                }
            }
            // SAFETY: opened above, closed once.
            unsafe { ffi::ibv_close_device(ctx) };
        }
        out.push(DeviceInfo { name, guid, ports });
    }
    Ok(out)
}

/// The context, protection domain, completion queue and shared receive
/// queue of one endpoint, destroyed in reverse order.
struct Context {
    ctx: *mut ffi::ibv_context,
    pd: *mut ffi::ibv_pd,
    cq: *mut ffi::ibv_cq,
    srq: *mut ffi::ibv_srq,
}

// SAFETY: libibverbs objects may be used from any thread (the library
// locks internally; each queue pair's posting is serialised by Lumen).
unsafe impl Send for Context {}
// SAFETY: as above.
unsafe impl Sync for Context {}

impl Drop for Context {
    fn drop(&mut self) {
        // SAFETY: each object was created once and is destroyed once, after
        // every queue pair and memory region that uses it (they hold an
        // Arc of this context).
        unsafe {
            if !self.srq.is_null() {
                ffi::ibv_destroy_srq(self.srq);
            }
            if !self.cq.is_null() {
                ffi::ibv_destroy_cq(self.cq);
            }
            if !self.pd.is_null() {
                ffi::ibv_dealloc_pd(self.pd);
            }
            if !self.ctx.is_null() {
                ffi::ibv_close_device(self.ctx);
            }
        }
    }
}

impl Context {
    fn post_srq_recv(&self, n: u32) -> Result<(), FabricError> {
        for _ in 0..n {
            // SAFETY: ibv_recv_wr is a plain C struct; zeroes are valid.
            let mut wr: ffi::ibv_recv_wr = unsafe { std::mem::zeroed() };
            wr.wr_id = RECV_WR_ID;
            wr.num_sge = 0; // write-with-immediate needs no receive buffer
            let mut bad: *mut ffi::ibv_recv_wr = std::ptr::null_mut();
            // SAFETY: `srq` is live; `post_srq_recv` is the provider's entry
            // (what the inline ibv_post_srq_recv calls); `wr` outlives it.
            let rc = unsafe {
                match (*(*self.srq).context).ops.post_srq_recv {
                    Some(post) => post(self.srq, &mut wr, &mut bad),
                    None => libc::ENOSYS,
                }
            };
            if rc != 0 {
                return Err(call(
                    "ibv_post_srq_recv",
                    std::io::Error::from_raw_os_error(rc).to_string(),
                ));
            }
        }
        Ok(())
    }
}

/// A registered memory region.
struct Mr {
    mr: *mut ffi::ibv_mr,
    len: usize,
    lkey: u32,
    rkey: u32,
    _ctx: Arc<Context>,
}

// SAFETY: see Context.
unsafe impl Send for Mr {}
// SAFETY: see Context.
unsafe impl Sync for Mr {}

impl Drop for Mr {
    fn drop(&mut self) {
        // SAFETY: registered once, deregistered once, before the context.
        unsafe { ffi::ibv_dereg_mr(self.mr) };
    }
}

fn access() -> i32 {
    (ffi::ibv_access_flags::IBV_ACCESS_LOCAL_WRITE
        | ffi::ibv_access_flags::IBV_ACCESS_REMOTE_WRITE
        | ffi::ibv_access_flags::IBV_ACCESS_REMOTE_READ)
        .0 as i32
}

fn register_mr(ctx: &Arc<Context>, addr: *mut u8, len: usize) -> Result<Mr, FabricError> {
    // SAFETY: the caller keeps the range valid while registered (the
    // `register` contract, or a bounce buffer the Mr's owner holds).
    let mr = unsafe { ffi::ibv_reg_mr(ctx.pd, addr.cast(), len.max(1), access()) };
    if mr.is_null() {
        return Err(call("ibv_reg_mr", errno().to_string()));
    }
    // SAFETY: `mr` is the live region just registered.
    let (lkey, rkey) = unsafe { ((*mr).lkey, (*mr).rkey) };
    Ok(Mr {
        mr,
        len,
        lkey,
        rkey,
        _ctx: ctx.clone(),
    })
}

/// What the two sides of a queue pair tell each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct QpInfo {
    job: u64,
    lid: u16,
    gid: [u8; 16],
    qpn: u32,
    psn: u32,
    mtu: u32,
}

impl QpInfo {
    const BYTES: usize = 4 + 8 + 2 + 16 + 4 + 4 + 4;

    fn encode(&self) -> [u8; Self::BYTES] {
        let mut b = [0u8; Self::BYTES];
        b[0..4].copy_from_slice(&HANDSHAKE_MAGIC.to_le_bytes());
        b[4..12].copy_from_slice(&self.job.to_le_bytes());
        b[12..14].copy_from_slice(&self.lid.to_le_bytes());
        b[14..30].copy_from_slice(&self.gid);
        b[30..34].copy_from_slice(&self.qpn.to_le_bytes());
        b[34..38].copy_from_slice(&self.psn.to_le_bytes());
        b[38..42].copy_from_slice(&self.mtu.to_le_bytes());
        b
    }

    fn decode(b: &[u8; Self::BYTES]) -> Result<Self, String> {
        let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        if u32_at(0) != HANDSHAKE_MAGIC {
            return Err("not a Lumen verbs handshake".into());
        }
        let mut job = [0u8; 8];
        job.copy_from_slice(&b[4..12]);
        let mut gid = [0u8; 16];
        gid.copy_from_slice(&b[14..30]);
        Ok(QpInfo {
            job: u64::from_le_bytes(job),
            lid: u16::from_le_bytes([b[12], b[13]]),
            gid,
            qpn: u32_at(30),
            psn: u32_at(34) & 0xff_ffff,
            mtu: u32_at(38),
        })
    }
}

fn mtu_enum(bytes: u32) -> ffi::ibv_mtu {
    match bytes {
        b if b >= 4096 => ffi::IBV_MTU_4096,
        b if b >= 2048 => ffi::IBV_MTU_2048,
        b if b >= 1024 => ffi::IBV_MTU_1024,
        b if b >= 512 => ffi::IBV_MTU_512,
        _ => ffi::IBV_MTU_256,
    }
}

/// One RC queue pair.
struct Qp {
    qp: *mut ffi::ibv_qp,
    /// Work requests posted and not yet completed.
    outstanding: AtomicU32,
    /// The same, over every queue pair of the endpoint (they share one
    /// completion queue).
    total: Arc<AtomicU32>,
    /// Set when a completion came back with an error: the queue pair is in
    /// the error state and must be replaced.
    broken: AtomicBool,
    _ctx: Arc<Context>,
}

// SAFETY: see Context; posting to one queue pair from several threads is
// allowed by libibverbs: providers lock the send queue (mlx5 unless
// MLX5_SINGLE_THREADED=1 is set, which Lumen's users must not set).
unsafe impl Send for Qp {}
// SAFETY: as above.
unsafe impl Sync for Qp {}

impl Drop for Qp {
    fn drop(&mut self) {
        // SAFETY: created once, destroyed once, before the context.
        unsafe { ffi::ibv_destroy_qp(self.qp) };
    }
}

/// The local side of the endpoint that queue pairs are made on.
struct Local {
    ctx: Arc<Context>,
    /// Sends in flight over all queue pairs (see `MAX_IN_FLIGHT`).
    in_flight: Arc<AtomicU32>,
    /// Reads in flight per queue pair, as the device allows (at most 16).
    rd_atomic: u8,
    port: u8,
    lid: u16,
    gid: [u8; 16],
    gid_index: u8,
    mtu: u32,
    ethernet: bool,
    job: u64,
}

impl Local {
    fn create_qp(&self) -> Result<Qp, FabricError> {
        // SAFETY: ibv_qp_init_attr is a plain C struct; zeroes are valid.
        let mut init: ffi::ibv_qp_init_attr = unsafe { std::mem::zeroed() };
        init.send_cq = self.ctx.cq;
        init.recv_cq = self.ctx.cq;
        init.srq = self.ctx.srq;
        init.qp_type = ffi::ibv_qp_type::IBV_QPT_RC;
        init.cap.max_send_wr = MAX_SEND_WR;
        init.cap.max_send_sge = 1;
        init.cap.max_recv_sge = 1;
        // SAFETY: `pd` is live and `init` names live queues.
        let qp = unsafe { ffi::ibv_create_qp(self.ctx.pd, &mut init) };
        if qp.is_null() {
            return Err(call("ibv_create_qp", errno().to_string()));
        }
        let qp = Qp {
            qp,
            outstanding: AtomicU32::new(0),
            total: self.in_flight.clone(),
            broken: AtomicBool::new(false),
            _ctx: self.ctx.clone(),
        };
        // SAFETY: ibv_qp_attr is a plain C struct; zeroes are valid.
        let mut attr: ffi::ibv_qp_attr = unsafe { std::mem::zeroed() };
        attr.qp_state = ffi::ibv_qp_state::IBV_QPS_INIT;
        attr.pkey_index = 0;
        attr.port_num = self.port;
        attr.qp_access_flags = access() as u32;
        let mask = ffi::ibv_qp_attr_mask::IBV_QP_STATE
            | ffi::ibv_qp_attr_mask::IBV_QP_PKEY_INDEX
            | ffi::ibv_qp_attr_mask::IBV_QP_PORT
            | ffi::ibv_qp_attr_mask::IBV_QP_ACCESS_FLAGS;
        modify(&qp, &mut attr, mask, "INIT")?;
        Ok(qp)
    }

    fn info(&self, qp: &Qp, psn: u32) -> QpInfo {
        QpInfo {
            job: self.job,
            lid: self.lid,
            gid: self.gid,
            // SAFETY: `qp` is live.
            qpn: unsafe { (*qp.qp).qp_num },
            psn,
            mtu: self.mtu,
        }
    }

    /// INIT -> RTR -> RTS towards `remote`.
    fn connect(&self, qp: &Qp, psn: u32, remote: &QpInfo) -> Result<(), FabricError> {
        // SAFETY: ibv_qp_attr is a plain C struct; zeroes are valid.
        let mut attr: ffi::ibv_qp_attr = unsafe { std::mem::zeroed() };
        attr.qp_state = ffi::ibv_qp_state::IBV_QPS_RTR;
        attr.path_mtu = mtu_enum(self.mtu.min(remote.mtu));
        attr.dest_qp_num = remote.qpn;
        attr.rq_psn = remote.psn;
        attr.max_dest_rd_atomic = self.rd_atomic;
        attr.min_rnr_timer = 12;
        attr.ah_attr.dlid = remote.lid;
        attr.ah_attr.sl = 0;
        attr.ah_attr.src_path_bits = 0;
        attr.ah_attr.port_num = self.port;
        // RoCE (and InfiniBand across subnets) routes by GID.
        if self.ethernet || remote.gid != [0u8; 16] && remote.lid == 0 {
            attr.ah_attr.is_global = 1;
            attr.ah_attr.grh.dgid.raw = remote.gid;
            attr.ah_attr.grh.sgid_index = self.gid_index;
            attr.ah_attr.grh.hop_limit = 64;
        }
        let mask = ffi::ibv_qp_attr_mask::IBV_QP_STATE
            | ffi::ibv_qp_attr_mask::IBV_QP_AV
            | ffi::ibv_qp_attr_mask::IBV_QP_PATH_MTU
            | ffi::ibv_qp_attr_mask::IBV_QP_DEST_QPN
            | ffi::ibv_qp_attr_mask::IBV_QP_RQ_PSN
            | ffi::ibv_qp_attr_mask::IBV_QP_MAX_DEST_RD_ATOMIC
            | ffi::ibv_qp_attr_mask::IBV_QP_MIN_RNR_TIMER;
        modify(qp, &mut attr, mask, "RTR")?;
        // SAFETY: as above.
        let mut attr: ffi::ibv_qp_attr = unsafe { std::mem::zeroed() };
        attr.qp_state = ffi::ibv_qp_state::IBV_QPS_RTS;
        attr.timeout = 14;
        attr.retry_cnt = 7;
        attr.rnr_retry = 7;
        attr.sq_psn = psn;
        attr.max_rd_atomic = self.rd_atomic;
        let mask = ffi::ibv_qp_attr_mask::IBV_QP_STATE
            | ffi::ibv_qp_attr_mask::IBV_QP_TIMEOUT
            | ffi::ibv_qp_attr_mask::IBV_QP_RETRY_CNT
            | ffi::ibv_qp_attr_mask::IBV_QP_RNR_RETRY
            | ffi::ibv_qp_attr_mask::IBV_QP_SQ_PSN
            | ffi::ibv_qp_attr_mask::IBV_QP_MAX_QP_RD_ATOMIC;
        modify(qp, &mut attr, mask, "RTS")
    }
}

/// Marks `qp` broken and moves it to the error state, so every request
/// still posted on it completes (flushed) instead of landing later.
fn break_qp(qp: &Qp) {
    if qp.broken.swap(true, Ordering::AcqRel) {
        return;
    }
    // SAFETY: ibv_qp_attr is a plain C struct; zeroes are valid.
    let mut attr: ffi::ibv_qp_attr = unsafe { std::mem::zeroed() };
    attr.qp_state = ffi::ibv_qp_state::IBV_QPS_ERR;
    if let Err(e) = modify(qp, &mut attr, ffi::ibv_qp_attr_mask::IBV_QP_STATE, "ERR") {
        tracing::warn!("verbs: {e}");
    }
}

fn modify(
    qp: &Qp,
    attr: &mut ffi::ibv_qp_attr,
    mask: ffi::ibv_qp_attr_mask,
    state: &str,
) -> Result<(), FabricError> {
    // SAFETY: `qp` is live; `attr` is filled for `mask`.
    let rc = unsafe { ffi::ibv_modify_qp(qp.qp, attr, mask.0 as i32) };
    if rc != 0 {
        return Err(call(
            "ibv_modify_qp",
            format!(
                "moving a queue pair to {state}: {}",
                std::io::Error::from_raw_os_error(rc)
            ),
        ));
    }
    Ok(())
}

/// A peer as inserted: where its handshake port is, and the queue pair
/// connected to it (replaced when it breaks).
struct Peer {
    handshake: SocketAddr,
    qp: Mutex<Option<Arc<Qp>>>,
}

/// Completion state of one transfer (all its pieces).
#[derive(Default)]
struct Completion {
    left: AtomicUsize,
    failed: AtomicBool,
    error: Mutex<Option<String>>,
    bounce: Mutex<Option<(Box<[u8]>, Mr)>>,
    lock: Mutex<()>,
    cv: Condvar,
}

/// The boxed context of one posted work request.
struct Op {
    done: Arc<Completion>,
    qp: Arc<Qp>,
}

/// A write-with-immediate that arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Immediate {
    /// The 32-bit immediate the writer sent.
    pub imm: u32,
    /// Bytes the write placed.
    pub len: u32,
    /// The local queue pair it arrived on.
    pub qp_num: u32,
}

#[derive(Default)]
struct Arrivals {
    queue: Mutex<VecDeque<Immediate>>,
    cv: Condvar,
}

/// A verbs endpoint (see the module docs).
pub struct VerbsEndpoint {
    local: Arc<Local>,
    device: String,
    max_msg: usize,
    regions: Mutex<BTreeMap<u64, Mr>>,
    peers: Mutex<Vec<Arc<Peer>>>,
    /// Queue pairs peers connected to this endpoint (their targets).
    served: Arc<Mutex<Vec<Arc<Qp>>>>,
    handshake: SocketAddr,
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
    stats: Mutex<FabricStats>,
    arrivals: Arc<Arrivals>,
}

impl std::fmt::Debug for VerbsEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "VerbsEndpoint({}:{})", self.device, self.local.port)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// `mlx5_0` or `mlx5_0:1`.
fn parse_device(spec: &str) -> (String, Option<u8>) {
    match spec.split_once(':') {
        Some((name, port)) => (name.to_string(), port.parse().ok()),
        None => (spec.to_string(), None),
    }
}

impl VerbsEndpoint {
    /// Opens an endpoint on `device` (`mlx5_0` or `mlx5_0:1`; `None`: the
    /// `LUMEN_VERBS_DEVICE` variable, else the first device with an active
    /// port), its handshake port listening on `node` (the address peers
    /// reach this rank at; loopback when `None`). `job` tags keys and
    /// handshakes: a peer of another job is refused.
    pub fn open(device: Option<&str>, node: Option<&str>, job: u64) -> Result<Self, FabricError> {
        let wanted = device
            .map(str::to_string)
            .or_else(|| std::env::var("LUMEN_VERBS_DEVICE").ok())
            .map(|s| parse_device(&s));
        let list = DeviceList::get()?.ok_or_else(|| {
            setup("no RDMA device on this node (the kernel has no RDMA support or no card)".into())
        })?;
        let mut chosen = None;
        let mut seen = Vec::new();
        for i in 0..list.len {
            let dev = list.device(i);
            // SAFETY: a live entry; NUL-terminated name owned by it.
            let name = unsafe { CStr::from_ptr(ffi::ibv_get_device_name(dev)) }
                .to_string_lossy()
                .into_owned();
            seen.push(name.clone());
            if wanted.as_ref().is_some_and(|(w, _)| *w != name) {
                continue;
            }
            // SAFETY: `dev` is live; closed by Context's Drop (or below).
            let ctx = unsafe { ffi::ibv_open_device(dev) };
            if ctx.is_null() {
                continue;
            }
            let want_port = wanted.as_ref().and_then(|(_, p)| *p);
            let port = (1..=u8::MAX)
                .map_while(|p| query_port(ctx, p).map(|a| (p, a)))
                .find(|(p, a)| {
                    a.state == ffi::ibv_port_state::IBV_PORT_ACTIVE
                        && want_port.is_none_or(|w| w == *p)
                });
            match port {
                Some((p, attr)) => {
                    chosen = Some((name, ctx, p, attr));
                    break;
                }
                // SAFETY: opened above, not kept.
                None => unsafe {
                    ffi::ibv_close_device(ctx);
                },
            }
        }
        drop(list);
        let Some((name, raw_ctx, port, attr)) = chosen else {
            return Err(setup(format!(
                "no device with an active port{} among {seen:?}",
                wanted
                    .map(|(w, p)| format!(
                        " named {w}{}",
                        p.map(|p| format!(":{p}")).unwrap_or_default()
                    ))
                    .unwrap_or_default()
            )));
        };
        let mut ctx = Context {
            ctx: raw_ctx,
            pd: std::ptr::null_mut(),
            cq: std::ptr::null_mut(),
            srq: std::ptr::null_mut(),
        };
        // SAFETY: `ctx.ctx` is an open context; each object is checked and
        // owned by `ctx` (destroyed in its Drop, also on the error paths).
        unsafe {
            ctx.pd = ffi::ibv_alloc_pd(ctx.ctx);
            if ctx.pd.is_null() {
                return Err(call("ibv_alloc_pd", errno().to_string()));
            }
            ctx.cq = ffi::ibv_create_cq(
                ctx.ctx,
                CQ_DEPTH,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                0,
            );
            if ctx.cq.is_null() {
                return Err(call("ibv_create_cq", errno().to_string()));
            }
            let mut srq_init: ffi::ibv_srq_init_attr = std::mem::zeroed();
            srq_init.attr.max_wr = SRQ_DEPTH;
            srq_init.attr.max_sge = 1;
            ctx.srq = ffi::ibv_create_srq(ctx.pd, &mut srq_init);
            if ctx.srq.is_null() {
                return Err(call("ibv_create_srq", errno().to_string()));
            }
        }
        ctx.post_srq_recv(SRQ_DEPTH)?;
        let ethernet = u32::from(attr.link_layer) == ffi::IBV_LINK_LAYER_ETHERNET;
        let gid_index: u8 = std::env::var("LUMEN_VERBS_GID_INDEX")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        // SAFETY: ibv_gid is a plain C union of bytes; zeroes are valid.
        let mut gid: ffi::ibv_gid = unsafe { std::mem::zeroed() };
        // SAFETY: `ctx` is open, `gid` a valid out-parameter.
        let rc = unsafe { ffi::ibv_query_gid(ctx.ctx, port, i32::from(gid_index), &mut gid) };
        if rc != 0 && ethernet {
            return Err(call(
                "ibv_query_gid",
                format!("GID index {gid_index} of {name}:{port} (RoCE needs one; set LUMEN_VERBS_GID_INDEX)"),
            ));
        }
        let gid = if rc == 0 {
            // SAFETY: every bit pattern is a valid [u8; 16].
            unsafe { gid.raw }
        } else {
            [0u8; 16]
        };
        let ctx = Arc::new(ctx);
        // SAFETY: ibv_device_attr is a plain C struct; zeroes are valid.
        let mut dev_attr: ffi::ibv_device_attr = unsafe { std::mem::zeroed() };
        // SAFETY: `ctx` is open; `dev_attr` is a valid out-parameter.
        let rd_atomic = if unsafe { ffi::ibv_query_device(ctx.ctx, &mut dev_attr) } == 0 {
            let device_max = dev_attr.max_qp_rd_atom.min(dev_attr.max_qp_init_rd_atom);
            u8::try_from(device_max.clamp(1, i32::from(RD_ATOMIC))).unwrap_or(1)
        } else {
            RD_ATOMIC
        };
        let local = Arc::new(Local {
            ctx: ctx.clone(),
            in_flight: Arc::new(AtomicU32::new(0)),
            rd_atomic,
            port,
            lid: attr.lid,
            gid,
            gid_index,
            mtu: mtu_bytes(attr.active_mtu).max(256),
            ethernet,
            job,
        });
        let ip: std::net::IpAddr = node
            .unwrap_or("127.0.0.1")
            .parse()
            .map_err(|e| setup(format!("{node:?} is not an IP address: {e}")))?;
        let listener = TcpListener::bind(SocketAddr::new(ip, 0))
            .map_err(|e| setup(format!("the handshake port on {ip}: {e}")))?;
        let handshake = listener
            .local_addr()
            .map_err(|e| setup(format!("the handshake port: {e}")))?;
        let stop = Arc::new(AtomicBool::new(false));
        let served = Arc::new(Mutex::new(Vec::new()));
        let arrivals = Arc::new(Arrivals::default());
        let mut threads = Vec::new();
        {
            let (local, stop, served) = (local.clone(), stop.clone(), served.clone());
            threads.push(
                std::thread::Builder::new()
                    .name("lumen-verbs-accept".into())
                    .spawn(move || accept_loop(listener, local, stop, served))
                    .map_err(|e| setup(format!("starting the handshake thread: {e}")))?,
            );
        }
        {
            let (ctx, stop, arrivals) = (ctx.clone(), stop.clone(), arrivals.clone());
            threads.push(
                std::thread::Builder::new()
                    .name("lumen-verbs-progress".into())
                    .spawn(move || progress_loop(ctx, stop, arrivals))
                    .map_err(|e| setup(format!("starting the progress thread: {e}")))?,
            );
        }
        tracing::info!(
            "fabric: verbs device {name} port {port} ({}, LID {}, MTU {})",
            if ethernet { "RoCE" } else { "InfiniBand" },
            attr.lid,
            mtu_bytes(attr.active_mtu)
        );
        Ok(VerbsEndpoint {
            local,
            device: name,
            max_msg: (attr.max_msg_sz as usize).clamp(4096, 1 << 30),
            regions: Mutex::new(BTreeMap::new()),
            peers: Mutex::new(Vec::new()),
            served,
            handshake,
            stop,
            threads,
            stats: Mutex::new(FabricStats::default()),
            arrivals,
        })
    }

    /// The queue pair to `peer`, connecting (or reconnecting a broken one)
    /// through its handshake port.
    fn qp_for(&self, peer: &Peer, deadline: Instant) -> Result<Arc<Qp>, FabricError> {
        let mut slot = lock(&peer.qp);
        if let Some(qp) = slot.as_ref() {
            if !qp.broken.load(Ordering::Acquire) {
                return Ok(qp.clone());
            }
        }
        let qp = self.local.create_qp()?;
        let psn = rand::random::<u32>() & 0xff_ffff;
        let mine = self.local.info(&qp, psn);
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1));
        let theirs = (|| -> std::io::Result<Result<QpInfo, String>> {
            let mut s = TcpStream::connect_timeout(&peer.handshake, left)?;
            s.set_read_timeout(Some(left))?;
            s.set_write_timeout(Some(left))?;
            s.write_all(&mine.encode())?;
            let mut b = [0u8; QpInfo::BYTES];
            s.read_exact(&mut b)?;
            Ok(QpInfo::decode(&b))
        })()
        .map_err(|e| FabricError::Transfer {
            what: "connect",
            detail: format!("handshake with {}: {e}", peer.handshake),
        })?
        .map_err(|e| FabricError::Transfer {
            what: "connect",
            detail: format!("handshake with {}: {e}", peer.handshake),
        })?;
        if theirs.job != self.local.job {
            return Err(FabricError::ForeignKey {
                ours: self.local.job,
                theirs: theirs.job,
            });
        }
        if theirs.qpn == 0 {
            return Err(FabricError::Transfer {
                what: "connect",
                detail: format!("{} refused the queue pair", peer.handshake),
            });
        }
        self.local.connect(&qp, psn, &theirs)?;
        let qp = Arc::new(qp);
        *slot = Some(qp.clone());
        Ok(qp)
    }

    /// Writes `local` at `offset` of the peer's region `key` and delivers
    /// `imm` to the target with it ([`VerbsEndpoint::next_immediate`]
    /// there): an eager message whose bytes land in place.
    pub fn write_with_immediate(
        &self,
        peer: usize,
        key: &RemoteKey,
        offset: u64,
        local: &[u8],
        imm: u32,
        timeout: Duration,
    ) -> Result<(), FabricError> {
        if local.len() > self.max_msg {
            return Err(FabricError::OutOfRange {
                offset,
                len: local.len() as u64,
                region: self.max_msg as u64,
            });
        }
        self.transfer(
            peer,
            key,
            offset,
            local.as_ptr().cast_mut(),
            local.len(),
            Kind::WriteImm(imm),
            timeout,
        )
    }

    /// The next write-with-immediate that arrived, waiting up to `timeout`.
    pub fn next_immediate(&self, timeout: Duration) -> Option<Immediate> {
        let deadline = Instant::now() + timeout;
        let mut queue = lock(&self.arrivals.queue);
        loop {
            if let Some(i) = queue.pop_front() {
                return Some(i);
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            queue = self
                .arrivals
                .cv
                .wait_timeout(queue, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// The device and port in use.
    pub fn device(&self) -> (&str, u8) {
        (&self.device, self.local.port)
    }

    #[allow(clippy::too_many_arguments)]
    fn transfer(
        &self,
        peer: usize,
        key: &RemoteKey,
        offset: u64,
        local: *mut u8,
        len: usize,
        kind: Kind,
        timeout: Duration,
    ) -> Result<(), FabricError> {
        key.check(self.local.job, offset, len as u64)?;
        let peer = lock(&self.peers)
            .get(peer)
            .cloned()
            .ok_or(FabricError::NoSuchPeer(peer))?;
        if len == 0 && !matches!(kind, Kind::WriteImm(_)) {
            return Ok(());
        }
        let what = kind.what();
        let deadline = Instant::now() + timeout;
        let qp = self.qp_for(&peer, deadline)?;
        let rkey = u32::try_from(key.key)
            .map_err(|_| FabricError::BadKey(format!("{:#x} is not a verbs rkey", key.key)))?;
        let done = Arc::new(Completion::default());
        // The local memory: a registered region in place, or a bounce
        // buffer the completion owns (see the module docs).
        let registered = {
            let regions = lock(&self.regions);
            super::containing(&regions, local as u64, len, |m| m.len).map(|(_, m)| m.lkey)
        };
        let (buffer, lkey) = match registered {
            Some(lkey) => {
                lock(&self.stats).cache_hits += 1;
                (local, lkey)
            }
            None => {
                let mut bounce = Vec::new();
                bounce
                    .try_reserve_exact(len.max(1))
                    .map_err(|_| FabricError::Transfer {
                        what,
                        detail: format!("could not allocate a {len}-byte bounce buffer"),
                    })?;
                bounce.resize(len.max(1), 0);
                let mut bounce = bounce.into_boxed_slice();
                if kind.is_write() && len > 0 {
                    // SAFETY: `local` is `len` readable bytes (the caller's slice).
                    bounce[..len]
                        .copy_from_slice(unsafe { std::slice::from_raw_parts(local, len) });
                }
                let mr = register_mr(&self.local.ctx, bounce.as_mut_ptr(), bounce.len())?;
                lock(&self.stats).registrations += 1;
                let (ptr, lkey) = (bounce.as_mut_ptr(), mr.lkey);
                *lock(&done.bounce) = Some((bounce, mr));
                (ptr, lkey)
            }
        };
        let pieces = len.div_ceil(self.max_msg).max(1);
        let mut post_error = None;
        for piece in 0..pieces {
            let at = piece * self.max_msg;
            let size = self.max_msg.min(len - at);
            // The immediate goes with the last piece only.
            let opcode = match kind {
                Kind::Read => ffi::ibv_wr_opcode::IBV_WR_RDMA_READ,
                Kind::Write => ffi::ibv_wr_opcode::IBV_WR_RDMA_WRITE,
                Kind::WriteImm(_) if piece + 1 < pieces => ffi::ibv_wr_opcode::IBV_WR_RDMA_WRITE,
                Kind::WriteImm(_) => ffi::ibv_wr_opcode::IBV_WR_RDMA_WRITE_WITH_IMM,
            };
            let imm = match kind {
                Kind::WriteImm(i) => i,
                _ => 0,
            };
            // SAFETY: `buffer + at .. + size` lies in a registered region
            // (the caller's or the bounce buffer `done` owns).
            let addr = unsafe { buffer.add(at) } as u64;
            let target = key.base + offset + at as u64;
            if let Err(e) = self.post(
                &qp, &done, deadline, opcode, addr, size, lkey, target, rkey, imm,
            ) {
                post_error = Some(e);
                break;
            }
        }
        lock(&self.stats).posted += pieces as u64;
        let finished = wait_for(&done, deadline);
        if finished
            && matches!(kind, Kind::Read)
            && post_error.is_none()
            && !done.failed.load(Ordering::Acquire)
        {
            if let Some((bounce, _)) = lock(&done.bounce).as_ref() {
                // SAFETY: `local` is `len` writable bytes (the caller's
                // slice); every piece into the bounce buffer completed.
                unsafe { std::ptr::copy_nonoverlapping(bounce.as_ptr(), local, len) };
            }
        }
        if let Some(e) = post_error {
            return Err(e);
        }
        if !finished {
            break_qp(&qp);
            return Err(FabricError::Timeout {
                what,
                bytes: len as u64,
                after: timeout,
            });
        }
        if done.failed.load(Ordering::Acquire) {
            break_qp(&qp);
            return Err(FabricError::Transfer {
                what,
                detail: lock(&done.error).clone().unwrap_or_default(),
            });
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn post(
        &self,
        qp: &Arc<Qp>,
        done: &Arc<Completion>,
        deadline: Instant,
        opcode: ffi::ibv_wr_opcode::Type,
        addr: u64,
        size: usize,
        lkey: u32,
        target: u64,
        rkey: u32,
        imm: u32,
    ) -> Result<(), FabricError> {
        // Keep within the send queue's depth, and all queue pairs within
        // the completion queue's.
        let take = |counter: &AtomicU32, max: u32| {
            counter
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                    (n < max).then_some(n + 1)
                })
                .is_ok()
        };
        loop {
            if take(&qp.outstanding, MAX_SEND_WR) {
                if take(&qp.total, MAX_IN_FLIGHT) {
                    break;
                }
                qp.outstanding.fetch_sub(1, Ordering::AcqRel);
            }
            if Instant::now() >= deadline {
                return Err(FabricError::Timeout {
                    what: "post",
                    bytes: size as u64,
                    after: Duration::ZERO,
                });
            }
            std::thread::yield_now();
        }
        done.left.fetch_add(1, Ordering::AcqRel);
        let op = Box::into_raw(Box::new(Op {
            done: done.clone(),
            qp: qp.clone(),
        }));
        let mut sge = ffi::ibv_sge {
            addr,
            length: size as u32,
            lkey,
        };
        // SAFETY: ibv_send_wr is a plain C struct; zeroes are valid.
        let mut wr: ffi::ibv_send_wr = unsafe { std::mem::zeroed() };
        wr.wr_id = op as u64;
        wr.sg_list = &mut sge;
        wr.num_sge = if size == 0 { 0 } else { 1 };
        wr.opcode = opcode;
        wr.send_flags = ffi::ibv_send_flags::IBV_SEND_SIGNALED.0;
        wr.__bindgen_anon_1.imm_data = imm.to_be();
        wr.wr.rdma.remote_addr = target;
        wr.wr.rdma.rkey = rkey;
        let mut bad: *mut ffi::ibv_send_wr = std::ptr::null_mut();
        // SAFETY: `qp` is live and connected; `post_send` is the provider's
        // entry (what the inline ibv_post_send calls); `wr` and `sge`
        // outlive the call (the provider copies them); the memory they name
        // is registered and outlives the request (see `transfer`); `op`
        // lives until its completion is reaped.
        let rc = unsafe {
            match (*(*qp.qp).context).ops.post_send {
                Some(post) => post(qp.qp, &mut wr, &mut bad),
                None => libc::ENOSYS,
            }
        };
        if rc != 0 {
            // SAFETY: not handed over: the provider refused it.
            drop(unsafe { Box::from_raw(op) });
            done.left.fetch_sub(1, Ordering::AcqRel);
            qp.outstanding.fetch_sub(1, Ordering::AcqRel);
            qp.total.fetch_sub(1, Ordering::AcqRel);
            return Err(call(
                "ibv_post_send",
                std::io::Error::from_raw_os_error(rc).to_string(),
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Read,
    Write,
    WriteImm(u32),
}

impl Kind {
    fn what(self) -> &'static str {
        match self {
            Kind::Read => "read",
            Kind::Write | Kind::WriteImm(_) => "write",
        }
    }

    fn is_write(self) -> bool {
        !matches!(self, Kind::Read)
    }
}

fn wait_for(done: &Completion, deadline: Instant) -> bool {
    let mut guard = lock(&done.lock);
    loop {
        if done.left.load(Ordering::Acquire) == 0 {
            return true;
        }
        let Some(left) = deadline.checked_duration_since(Instant::now()) else {
            return false;
        };
        guard = done
            .cv
            .wait_timeout(guard, left.min(Duration::from_millis(1)))
            .unwrap_or_else(|p| p.into_inner())
            .0;
    }
}

/// Reaps the completion queue: wakes the transfers whose pieces completed,
/// queues arrived immediates and re-posts their receives.
fn progress_loop(ctx: Arc<Context>, stop: Arc<AtomicBool>, arrivals: Arc<Arrivals>) {
    let mut wcs = [ffi::ibv_wc::default(); 32];
    let mut idle = 0u32;
    while !stop.load(Ordering::Acquire) {
        // SAFETY: `cq` is live while `ctx` is; `poll_cq` is the provider's
        // entry (what the inline ibv_poll_cq calls); `wcs` has room for 32.
        let n = unsafe {
            match (*(*ctx.cq).context).ops.poll_cq {
                Some(poll) => poll(ctx.cq, wcs.len() as i32, wcs.as_mut_ptr()),
                None => -1,
            }
        };
        if n < 0 {
            // Transient or not, stopping would leave every transfer to time
            // out: say so once a second and keep polling.
            if idle % 20_000 == 0 {
                tracing::error!("verbs: polling the completion queue failed ({n})");
            }
            idle = idle.wrapping_add(1);
            std::thread::sleep(Duration::from_micros(50));
            continue;
        }
        if n == 0 {
            idle = idle.saturating_add(1);
            if idle > 2000 {
                std::thread::sleep(Duration::from_micros(50));
            } else {
                std::hint::spin_loop();
            }
            continue;
        }
        idle = 0;
        for wc in &wcs[..n as usize] {
            if wc.wr_id() == RECV_WR_ID {
                if wc.opcode() == ffi::ibv_wc_opcode::IBV_WC_RECV_RDMA_WITH_IMM && wc.is_valid() {
                    lock(&arrivals.queue).push_back(Immediate {
                        imm: u32::from_be(wc.imm_data),
                        len: wc.len() as u32,
                        qp_num: wc.qp_num,
                    });
                    arrivals.cv.notify_all();
                }
                // A flushed receive (its queue pair broke) is re-posted too.
                if ctx.post_srq_recv(1).is_err() {
                    tracing::warn!("verbs: could not re-post a shared receive");
                }
                continue;
            }
            // SAFETY: a send's wr_id is the Op box `post` leaked; each
            // completes exactly once, so it is reclaimed once.
            let op = unsafe { Box::from_raw(wc.wr_id() as *mut Op) };
            if let Some((status, vendor)) = wc.error() {
                // SAFETY: returns a static NUL-terminated string.
                let name = unsafe { CStr::from_ptr(ffi::ibv_wc_status_str(status)) }
                    .to_string_lossy()
                    .into_owned();
                let mut error = lock(&op.done.error);
                if error.is_none() {
                    *error = Some(format!(
                        "{name} (status {status}, vendor error {vendor:#x}){}",
                        if status == ffi::ibv_wc_status::IBV_WC_RETRY_EXC_ERR {
                            ": the peer stopped answering"
                        } else if status == ffi::ibv_wc_status::IBV_WC_REM_ACCESS_ERR {
                            ": the target refused the key or range"
                        } else {
                            ""
                        }
                    ));
                }
                op.done.failed.store(true, Ordering::Release);
                op.qp.broken.store(true, Ordering::Release);
            }
            op.qp.outstanding.fetch_sub(1, Ordering::AcqRel);
            op.qp.total.fetch_sub(1, Ordering::AcqRel);
            if op.done.left.fetch_sub(1, Ordering::AcqRel) == 1 {
                let _guard = lock(&op.done.lock);
                op.done.cv.notify_all();
            }
        }
    }
}

/// Answers peers' handshakes: a queue pair per peer, connected back.
fn accept_loop(
    listener: TcpListener,
    local: Arc<Local>,
    stop: Arc<AtomicBool>,
    served: Arc<Mutex<Vec<Arc<Qp>>>>,
) {
    for stream in listener.incoming() {
        if stop.load(Ordering::Acquire) {
            return;
        }
        let Ok(s) = stream else { continue };
        // One thread per handshake: a stalled connector holds only its own.
        let (local, served) = (local.clone(), served.clone());
        let spawned = std::thread::Builder::new()
            .name("lumen-verbs-handshake".into())
            .spawn(move || answer_handshake(s, &local, &served));
        if let Err(e) = spawned {
            tracing::warn!("verbs: could not start a handshake thread: {e}");
        }
    }
}

/// Answers one peer's handshake: a queue pair for it, connected back.
fn answer_handshake(mut s: TcpStream, local: &Local, served: &Mutex<Vec<Arc<Qp>>>) {
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = s.set_write_timeout(Some(Duration::from_secs(10)));
    let mut b = [0u8; QpInfo::BYTES];
    if s.read_exact(&mut b).is_err() {
        return;
    }
    let refuse = |s: &mut TcpStream, why: &str| {
        tracing::warn!("verbs: refused a handshake from {:?}: {why}", s.peer_addr());
        let none = QpInfo {
            job: local.job,
            lid: 0,
            gid: [0; 16],
            qpn: 0,
            psn: 0,
            mtu: 0,
        };
        let _ = s.write_all(&none.encode());
    };
    let theirs = match QpInfo::decode(&b) {
        Ok(t) if t.job == local.job => t,
        Ok(t) => return refuse(&mut s, &format!("a peer of job {:#x}", t.job)),
        Err(e) => return refuse(&mut s, &e),
    };
    let connected = local.create_qp().and_then(|qp| {
        let psn = rand::random::<u32>() & 0xff_ffff;
        local.connect(&qp, psn, &theirs)?;
        Ok((local.info(&qp, psn), qp))
    });
    match connected {
        Ok((mine, qp)) => {
            if s.write_all(&mine.encode()).is_ok() {
                let mut served = lock(served);
                // Queue pairs whose connector broke them (and reconnected)
                // are in the error state: let them go.
                served.retain(|q| !q.broken.load(Ordering::Acquire));
                served.push(Arc::new(qp));
            }
        }
        Err(e) => refuse(&mut s, &e.to_string()),
    }
}

impl OneSided for VerbsEndpoint {
    fn describe(&self) -> String {
        format!(
            "verbs/{}:{} ({})",
            self.device,
            self.local.port,
            if self.local.ethernet {
                "RoCE"
            } else {
                "InfiniBand"
            }
        )
    }

    fn address(&self) -> Result<Vec<u8>, FabricError> {
        let gid: String = self.local.gid.iter().map(|b| format!("{b:02x}")).collect();
        Ok(format!("verbs:{}:{gid}:{}", self.local.lid, self.handshake).into_bytes())
    }

    fn insert_peer(&self, address: &[u8]) -> Result<usize, FabricError> {
        let text =
            std::str::from_utf8(address).map_err(|_| FabricError::BadAddress("not text".into()))?;
        let mut parts = text.splitn(4, ':');
        let (Some("verbs"), Some(_lid), Some(gid), Some(handshake)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(FabricError::BadAddress(format!(
                "{text:?} is not a verbs address"
            )));
        };
        if gid.len() != 32 || !gid.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(FabricError::BadAddress(format!("{text:?}: bad GID")));
        }
        let handshake: SocketAddr = handshake
            .parse()
            .map_err(|e| FabricError::BadAddress(format!("{text:?}: {e}")))?;
        let mut peers = lock(&self.peers);
        peers.push(Arc::new(Peer {
            handshake,
            qp: Mutex::new(None),
        }));
        Ok(peers.len() - 1)
    }

    unsafe fn register(&self, addr: *mut u8, len: usize) -> Result<Region, FabricError> {
        let start = addr as u64;
        let mut regions = lock(&self.regions);
        let rkey = match super::containing(&regions, start, len, |m| m.len) {
            Some((_, m)) => {
                lock(&self.stats).cache_hits += 1;
                m.rkey
            }
            None => {
                if let Some(have) = regions.get(&start) {
                    return Err(FabricError::AlreadyRegistered {
                        addr: start,
                        have: have.len as u64,
                        want: len as u64,
                    });
                }
                let mr = register_mr(&self.local.ctx, addr, len)?;
                let rkey = mr.rkey;
                regions.insert(start, mr);
                lock(&self.stats).registrations += 1;
                rkey
            }
        };
        Ok(Region {
            addr: start,
            len: len as u64,
            key: RemoteKey {
                job: self.local.job,
                // RC RDMA addresses the target's virtual addresses.
                base: start,
                len: len as u64,
                key: u64::from(rkey),
            },
        })
    }

    fn registered(&self, addr: *const u8, len: usize) -> bool {
        super::containing(&lock(&self.regions), addr as u64, len, |m| m.len).is_some()
    }

    unsafe fn register_dmabuf(
        &self,
        fd: i32,
        offset: u64,
        len: usize,
        iova: u64,
    ) -> Result<Region, FabricError> {
        let mut regions = lock(&self.regions);
        if let Some(have) = regions.get(&iova) {
            if have.len >= len {
                return Ok(Region {
                    addr: iova,
                    len: len as u64,
                    key: RemoteKey {
                        job: self.local.job,
                        base: iova,
                        len: len as u64,
                        key: u64::from(have.rkey),
                    },
                });
            }
            return Err(FabricError::AlreadyRegistered {
                addr: iova,
                have: have.len as u64,
                want: len as u64,
            });
        }
        // SAFETY: the caller keeps the device memory behind `fd` allocated
        // while registered; the kernel pins it through the dma-buf.
        let mr = unsafe {
            ffi::ibv_reg_dmabuf_mr(self.local.ctx.pd, offset, len.max(1), iova, fd, access())
        };
        if mr.is_null() {
            return Err(call(
                "ibv_reg_dmabuf_mr",
                format!(
                    "{} (GPU-direct needs the GPU driver's dma-buf support and rdma-core 34+)",
                    errno()
                ),
            ));
        }
        // SAFETY: `mr` is the live region just registered.
        let (lkey, rkey) = unsafe { ((*mr).lkey, (*mr).rkey) };
        regions.insert(
            iova,
            Mr {
                mr,
                len,
                lkey,
                rkey,
                _ctx: self.local.ctx.clone(),
            },
        );
        lock(&self.stats).registrations += 1;
        Ok(Region {
            addr: iova,
            len: len as u64,
            key: RemoteKey {
                job: self.local.job,
                base: iova,
                len: len as u64,
                key: u64::from(rkey),
            },
        })
    }

    unsafe fn read_registered(
        &self,
        peer: usize,
        key: &RemoteKey,
        offset: u64,
        local: *mut u8,
        len: usize,
        timeout: Duration,
    ) -> Result<(), FabricError> {
        if !self.registered(local, len) {
            return Err(FabricError::BadSetting(format!(
                "{len} bytes at {local:p} are not inside a region registered here"
            )));
        }
        self.transfer(peer, key, offset, local, len, Kind::Read, timeout)
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
        timeout: Duration,
    ) -> Result<(), FabricError> {
        self.transfer(
            peer,
            key,
            offset,
            local.as_mut_ptr(),
            local.len(),
            Kind::Read,
            timeout,
        )
    }

    fn write(
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
            Kind::Write,
            timeout,
        )
    }

    fn stats(&self) -> FabricStats {
        *lock(&self.stats)
    }
}

impl Drop for VerbsEndpoint {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        let _ = TcpStream::connect_timeout(&self.handshake, Duration::from_secs(1));
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        // Queue pairs before regions before the context (Arcs keep the
        // context alive until the last of them).
        lock(&self.peers).clear();
        lock(&self.served).clear();
        lock(&self.regions).clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshakes_round_trip_and_foreign_bytes_are_refused() {
        let info = QpInfo {
            job: 0x10b,
            lid: 7,
            gid: [3; 16],
            qpn: 0x1234,
            psn: 0xab_cdef,
            mtu: 4096,
        };
        assert_eq!(QpInfo::decode(&info.encode()), Ok(info));
        let mut bad = info.encode();
        bad[0] ^= 1;
        assert!(QpInfo::decode(&bad).is_err());
        assert_eq!(mtu_enum(4096), ffi::IBV_MTU_4096);
        assert_eq!(mtu_enum(1500), ffi::IBV_MTU_1024);
        assert_eq!(mtu_bytes(ffi::IBV_MTU_2048), 2048);
        assert_eq!(parse_device("mlx5_0:1"), ("mlx5_0".to_string(), Some(1)));
        assert_eq!(parse_device("rxe0"), ("rxe0".to_string(), None));
    }

    #[test]
    fn no_device_is_not_an_error() {
        // Here (no RDMA modules): ENOSYS or an empty list, both "none".
        match devices() {
            Ok(list) if list.is_empty() => {
                eprintln!("SKIPPED: no verbs device on this machine; device tests need one");
                let e = VerbsEndpoint::open(None, None, 1).expect_err("no device to open");
                assert!(e.to_string().contains("no RDMA device"), "{e}");
            }
            Ok(list) => eprintln!("verbs devices: {list:?}"),
            Err(e) => panic!("device discovery failed: {e}"),
        }
    }
}
