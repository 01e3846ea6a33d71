//! The CUDA memory domain (feature `cuda`): one device allocation on a GPU,
//! through cudarc with the driver loaded at run time, so builds need no
//! CUDA. Without the driver library or a GPU, [`CudaDomain::open`] says so
//! (`DeviceError::Unavailable`) instead of panicking, as cudarc would.

use std::sync::{Arc, Mutex};

use cudarc::driver::{sys, CudaContext, CudaSlice, CudaStream, DevicePtr};

use super::{check_range, DeviceError, DeviceMemory, ExportedRegion};

fn driver(call: &'static str) -> impl FnOnce(cudarc::driver::DriverError) -> DeviceError {
    move |e| DeviceError::Driver {
        call,
        detail: e.to_string(),
    }
}

/// Whether this machine can run the CUDA domain: the driver library loads
/// and at least one GPU answers; else what is missing.
pub fn available() -> Result<usize, DeviceError> {
    // SAFETY: only tries to dlopen the driver library; no CUDA call is made.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err(DeviceError::Unavailable(
            "the CUDA driver library (libcuda.so) is not installed or not on the library path: device objects need an NVIDIA GPU and its driver".into(),
        ));
    }
    let count = CudaContext::device_count().map_err(driver("cuDeviceGetCount"))?;
    if count <= 0 {
        return Err(DeviceError::Unavailable(
            "the CUDA driver sees no GPU (check CUDA_VISIBLE_DEVICES and nvidia-smi)".into(),
        ));
    }
    Ok(count as usize)
}

/// Binds the primary context of GPU `ordinal` to the calling thread (a
/// task or actor with GPUs runs with it current), retained once per
/// process and GPU.
pub fn bind_primary_context(ordinal: usize) -> Result<(), DeviceError> {
    type Contexts = Mutex<std::collections::HashMap<usize, Arc<CudaContext>>>;
    static CONTEXTS: std::sync::OnceLock<Contexts> = std::sync::OnceLock::new();
    available()?;
    let ctx = {
        let mut contexts = CONTEXTS
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        match contexts.get(&ordinal) {
            Some(ctx) => ctx.clone(),
            None => {
                let ctx = CudaContext::new(ordinal).map_err(driver("cuDevicePrimaryCtxRetain"))?;
                contexts.insert(ordinal, ctx.clone());
                ctx
            }
        }
    };
    ctx.bind_to_thread().map_err(driver("cuCtxSetCurrent"))
}

/// The PCI bus id of a device (`cuDeviceGetPCIBusId`).
fn pci_bus_id(device: sys::CUdevice) -> Option<String> {
    let mut buf = [0 as std::ffi::c_char; 32];
    // SAFETY: the buffer's length is passed; the driver writes a
    // NUL-terminated string into it.
    unsafe {
        sys::cuDeviceGetPCIBusId(buf.as_mut_ptr(), buf.len() as std::ffi::c_int, device)
            .result()
            .ok()?;
    }
    let bytes: Vec<u8> = buf
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8(bytes).ok()
}

/// One allocation of `len` bytes on a GPU.
#[derive(Debug)]
pub struct CudaDomain {
    stream: Arc<CudaStream>,
    /// cuMemAlloc memory (see `open`), freed by `Drop`, not by cudarc.
    buf: Mutex<std::mem::ManuallyDrop<CudaSlice<u8>>>,
    len: u64,
    name: String,
    /// The GPU's PCI bus id (`0000:3b:00.0`), to tell peers apart.
    bus_id: String,
    ordinal: usize,
}

impl CudaDomain {
    /// Allocates `len` bytes on GPU `ordinal` (of the visible ones).
    pub fn open(ordinal: usize, len: usize) -> Result<Self, DeviceError> {
        let count = available()?;
        if ordinal >= count {
            return Err(DeviceError::Unavailable(format!(
                "GPU {ordinal} asked for; {count} visible"
            )));
        }
        let ctx = CudaContext::new(ordinal).map_err(driver("cuCtxCreate"))?;
        let name = ctx.name().unwrap_or_else(|_| "unknown GPU".into());
        let stream = ctx.default_stream();
        ctx.bind_to_thread().map_err(driver("cuCtxSetCurrent"))?;
        // cuMemAlloc, not the stream-ordered pool allocation cudarc's
        // `alloc_zeros` makes on GPUs with memory pools: only cuMemAlloc
        // memory can be exported with cuIpcGetMemHandle. Whole 2 MiB pages,
        // so the allocation can also be exported as a dma-buf for
        // GPU-direct RDMA (`dmabuf`).
        let alloc_len = len.max(1).div_ceil(DMABUF_ALIGN) * DMABUF_ALIGN;
        // SAFETY: the context is bound to this thread; the allocation is
        // zeroed before use and freed once, by `Drop` (after `leak`).
        let buf = unsafe {
            let ptr =
                cudarc::driver::result::malloc_sync(alloc_len).map_err(driver("cuMemAlloc"))?;
            if let Err(e) = cudarc::driver::result::memset_d8_sync(ptr, 0, alloc_len) {
                let _ = cudarc::driver::result::free_sync(ptr);
                return Err(driver("cuMemsetD8")(e));
            }
            stream.upgrade_device_ptr::<u8>(ptr, alloc_len)
        };
        let bus_id = pci_bus_id(ctx.cu_device()).unwrap_or_default();
        Ok(CudaDomain {
            stream,
            buf: Mutex::new(std::mem::ManuallyDrop::new(buf)),
            len: len as u64,
            name: format!("cuda:{ordinal} ({name})"),
            bus_id,
            ordinal,
        })
    }

    /// The whole allocation as a dma-buf (`cuMemGetHandleForAddressRange`):
    /// its file descriptor, base address and length, for registering it
    /// with an RDMA device (GPU-direct).
    pub fn dmabuf(&self) -> Result<(std::os::fd::OwnedFd, u64, usize), DeviceError> {
        let base = self.base_ptr();
        let len = (self.len.max(1) as usize).div_ceil(DMABUF_ALIGN) * DMABUF_ALIGN;
        self.context()
            .bind_to_thread()
            .map_err(driver("cuCtxSetCurrent"))?;
        let mut fd: std::ffi::c_int = -1;
        // SAFETY: `base..base + len` is this domain's allocation (rounded to
        // whole 2 MiB pages in `open`); the driver writes an fd on success.
        unsafe {
            sys::cuMemGetHandleForAddressRange(
                (&mut fd as *mut std::ffi::c_int).cast(),
                base,
                len,
                sys::CUmemRangeHandleType::CU_MEM_RANGE_HANDLE_TYPE_DMA_BUF_FD,
                0,
            )
            .result()
            .map_err(driver("cuMemGetHandleForAddressRange"))?;
        }
        if fd < 0 {
            return Err(DeviceError::Driver {
                call: "cuMemGetHandleForAddressRange",
                detail: "no file descriptor".into(),
            });
        }
        // SAFETY: the driver gave this process a new descriptor it owns.
        let fd = unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) };
        Ok((fd, base, len))
    }

    /// The GPU (a CUDA ordinal of this process).
    pub fn ordinal(&self) -> usize {
        self.ordinal
    }

    /// The GPU's context (bind it before handing addresses to a library).
    pub fn context(&self) -> &Arc<CudaContext> {
        self.stream.context()
    }

    /// The allocation's base address (a `CUdeviceptr` of this process),
    /// valid while the domain lives.
    pub fn base_ptr(&self) -> u64 {
        let buf = self.buf();
        let (ptr, _sync) = buf.device_ptr(&self.stream);
        ptr
    }

    fn buf(&self) -> std::sync::MutexGuard<'_, std::mem::ManuallyDrop<CudaSlice<u8>>> {
        self.buf.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl DeviceMemory for CudaDomain {
    fn len(&self) -> u64 {
        self.len
    }

    fn write(&self, offset: u64, src: &[u8]) -> Result<(), DeviceError> {
        check_range(offset, src.len() as u64, self.len)?;
        if src.is_empty() {
            return Ok(());
        }
        let mut buf = self.buf();
        let at = offset as usize;
        let mut view = buf.slice_mut(at..at + src.len());
        self.stream
            .memcpy_htod(src, &mut view)
            .map_err(driver("cuMemcpyHtoDAsync"))?;
        // `src` is borrowed only for this call: wait for the copy.
        self.stream
            .synchronize()
            .map_err(driver("cuStreamSynchronize"))
    }

    fn read(&self, offset: u64, dst: &mut [u8]) -> Result<(), DeviceError> {
        check_range(offset, dst.len() as u64, self.len)?;
        if dst.is_empty() {
            return Ok(());
        }
        let buf = self.buf();
        let at = offset as usize;
        let view = buf.slice(at..at + dst.len());
        self.stream
            .memcpy_dtoh(&view, dst)
            .map_err(driver("cuMemcpyDtoHAsync"))?;
        self.stream
            .synchronize()
            .map_err(driver("cuStreamSynchronize"))
    }

    fn copy_within(&self, from: u64, to: u64, len: u64) -> Result<(), DeviceError> {
        check_range(from, len, self.len)?;
        check_range(to, len, self.len)?;
        if len == 0 || from == to {
            return Ok(());
        }
        let mut buf = self.buf();
        let (from, to, len) = (from as usize, to as usize, len as usize);
        // Through a temporary: the ranges may overlap, and one buffer
        // cannot be borrowed as source and destination at once.
        let mut tmp = self
            .stream
            .alloc_zeros::<u8>(len)
            .map_err(driver("cuMemAlloc"))?;
        self.stream
            .memcpy_dtod(&buf.slice(from..from + len), &mut tmp)
            .map_err(driver("cuMemcpyDtoDAsync"))?;
        self.stream
            .memcpy_dtod(&tmp, &mut buf.slice_mut(to..to + len))
            .map_err(driver("cuMemcpyDtoDAsync"))?;
        self.stream
            .synchronize()
            .map_err(driver("cuStreamSynchronize"))
    }

    fn describe(&self) -> String {
        self.name.clone()
    }

    fn cuda(&self) -> Option<&CudaDomain> {
        Some(self)
    }

    /// A CUDA IPC handle of the whole allocation (`cuIpcGetMemHandle`),
    /// its length and the GPU's PCI bus id: 64 + 8 + the id's bytes.
    fn export(&self) -> Option<Vec<u8>> {
        self.stream.context().bind_to_thread().ok()?;
        let buf = self.buf();
        let (ptr, _sync) = buf.device_ptr(&self.stream);
        let mut handle = std::mem::MaybeUninit::<sys::CUipcMemHandle>::uninit();
        // SAFETY: `ptr` is the base of a live cuMemAlloc allocation (see
        // `open`) owned by this domain, in the context bound to this thread; the driver
        // writes the whole handle on success.
        let handle = unsafe {
            sys::cuIpcGetMemHandle(handle.as_mut_ptr(), ptr)
                .result()
                .ok()?;
            handle.assume_init()
        };
        let mut out = Vec::with_capacity(IPC_HANDLE_LEN + 8 + self.bus_id.len());
        out.extend(handle.reserved.iter().map(|&c| c as u8));
        out.extend_from_slice(&self.len.to_le_bytes());
        out.extend_from_slice(self.bus_id.as_bytes());
        Some(out)
    }

    fn open_exported(&self, handle: &[u8]) -> Result<Box<dyn ExportedRegion>, DeviceError> {
        if handle.len() < IPC_HANDLE_LEN + 8 {
            return Err(DeviceError::Unavailable(format!(
                "a CUDA IPC handle of {} bytes (expected at least {})",
                handle.len(),
                IPC_HANDLE_LEN + 8
            )));
        }
        let mut raw = sys::CUipcMemHandle {
            reserved: [0; IPC_HANDLE_LEN],
        };
        for (dst, &src) in raw.reserved.iter_mut().zip(&handle[..IPC_HANDLE_LEN]) {
            *dst = src as std::ffi::c_char;
        }
        let mut len = [0u8; 8];
        len.copy_from_slice(&handle[IPC_HANDLE_LEN..IPC_HANDLE_LEN + 8]);
        let len = u64::from_le_bytes(len);
        let bus_id = String::from_utf8_lossy(&handle[IPC_HANDLE_LEN + 8..]).into_owned();
        let ctx = self.stream.context().clone();
        ctx.bind_to_thread().map_err(driver("cuCtxSetCurrent"))?;
        let mut ptr: sys::CUdeviceptr = 0;
        // SAFETY: `raw` is a handle another process exported; the driver
        // validates it and fails (no mapping) when it is not one. The
        // context of this domain is bound to this thread.
        unsafe {
            sys::cuIpcOpenMemHandle_v2(
                &mut ptr,
                raw,
                sys::CUipcMem_flags::CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS as std::ffi::c_uint,
            )
            .result()
            .map_err(driver("cuIpcOpenMemHandle"))?;
        }
        Ok(Box::new(CudaExported {
            ctx,
            ptr,
            len,
            same_device: bus_id == self.bus_id,
        }))
    }

    fn copy_from_exported(
        &self,
        region: &dyn ExportedRegion,
        from: u64,
        to: u64,
        len: u64,
    ) -> Result<(), DeviceError> {
        let Some(peer) = region.as_any().downcast_ref::<CudaExported>() else {
            return Err(DeviceError::Unavailable(
                "a CUDA domain copies only from a region opened by CUDA IPC".into(),
            ));
        };
        check_range(from, len, peer.len)?;
        check_range(to, len, self.len)?;
        if len == 0 {
            return Ok(());
        }
        self.stream
            .context()
            .bind_to_thread()
            .map_err(driver("cuCtxSetCurrent"))?;
        let buf = self.buf();
        let (dst, _sync) = buf.device_ptr(&self.stream);
        // SAFETY: both ranges were checked against their allocations (the
        // peer's mapping lives while `peer` does, which the caller holds);
        // cuMemcpy with unified addressing copies between the two devices
        // (peer to peer when they differ).
        unsafe {
            sys::cuMemcpy(dst + to, peer.ptr + from, len as usize)
                .result()
                .map_err(driver("cuMemcpy"))?;
        }
        // Device-to-device copies may still run when cuMemcpy returns; the
        // owner's lease ends after this, so wait for it.
        cudarc::driver::result::ctx::synchronize().map_err(driver("cuCtxSynchronize"))
    }
}

impl Drop for CudaDomain {
    fn drop(&mut self) {
        let buf = self.buf.get_mut().unwrap_or_else(|p| p.into_inner());
        // SAFETY: taken once, here; the slice is not used after.
        let slice = unsafe { std::mem::ManuallyDrop::take(buf) };
        // Waits for pending work on it and gives up the slice without
        // freeing (cudarc would free it as pool memory).
        let ptr = slice.leak();
        if self.stream.context().bind_to_thread().is_ok() {
            // SAFETY: `ptr` came from cuMemAlloc in `open` and is freed
            // once, here.
            let _ = unsafe { cudarc::driver::result::free_sync(ptr) };
        }
    }
}

impl CudaDomain {
    /// Copies `len` bytes at `from` of `src` (another GPU's domain of this
    /// process) to `to` here, GPU to GPU (`cuMemcpyPeer`: NVLink or PCIe
    /// peer to peer where the GPUs allow it, else staged by the driver).
    pub fn copy_peer_from(
        &self,
        src: &CudaDomain,
        from: u64,
        to: u64,
        len: u64,
    ) -> Result<(), DeviceError> {
        check_range(from, len, src.len)?;
        check_range(to, len, self.len)?;
        if len == 0 {
            return Ok(());
        }
        let (dst_base, src_base) = (self.base_ptr(), src.base_ptr());
        self.context()
            .bind_to_thread()
            .map_err(driver("cuCtxSetCurrent"))?;
        // SAFETY: both ranges were checked against live allocations of the
        // two contexts named; cuMemcpyPeer is synchronous with respect to
        // the host for device-to-device copies only once the context is
        // synchronised, which follows.
        unsafe {
            sys::cuMemcpyPeer(
                dst_base + to,
                self.context().cu_ctx(),
                src_base + from,
                src.context().cu_ctx(),
                len as usize,
            )
            .result()
            .map_err(driver("cuMemcpyPeer"))?;
        }
        cudarc::driver::result::ctx::synchronize().map_err(driver("cuCtxSynchronize"))
    }
}

/// Allocations are whole multiples of this (dma-buf export wants whole
/// pages; GPUs map 2 MiB pages).
const DMABUF_ALIGN: usize = 2 << 20;

/// Bytes of a CUDA IPC memory handle.
const IPC_HANDLE_LEN: usize = 64;

/// Another process's allocation mapped here by CUDA IPC; unmapped on drop.
#[derive(Debug)]
struct CudaExported {
    ctx: Arc<CudaContext>,
    ptr: sys::CUdeviceptr,
    len: u64,
    same_device: bool,
}

impl ExportedRegion for CudaExported {
    fn len(&self) -> u64 {
        self.len
    }

    fn same_device(&self) -> bool {
        self.same_device
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

impl Drop for CudaExported {
    fn drop(&mut self) {
        if self.ctx.bind_to_thread().is_ok() {
            // SAFETY: `ptr` came from cuIpcOpenMemHandle in this context and
            // is closed once, here.
            let _ = unsafe { sys::cuIpcCloseMemHandle(self.ptr) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::DeviceArena;
    use crate::ObjectId;

    #[test]
    fn a_device_arena_on_a_gpu_or_a_clear_refusal() {
        match CudaDomain::open(0, 64 << 20) {
            Err(DeviceError::Unavailable(why)) => {
                eprintln!("SKIPPED: no GPU here ({why}); the CUDA domain needs one");
            }
            Err(other) => panic!("a GPU answered but failed: {other}"),
            Ok(domain) => {
                eprintln!("device: {}", domain.describe());
                let arena = DeviceArena::new(domain);
                let bytes: Vec<u8> = (0..3_000_001u32).map(|i| (i % 251) as u8).collect();
                let block = arena
                    .put(ObjectId::new(1, 1), &bytes)
                    .expect("put on the GPU");
                assert_eq!(
                    arena.read_to_host(ObjectId::new(1, 1)).expect("back"),
                    bytes
                );
                arena
                    .memory()
                    .copy_within(block.offset, block.offset + 1, 1000)
                    .expect("device to device");
                arena.check().expect("consistent");
            }
        }
    }
}
