//! The CUDA memory domain (feature `cuda`): one device allocation on a GPU,
//! through cudarc with the driver loaded at run time, so builds need no
//! CUDA. Without the driver library or a GPU, [`CudaDomain::open`] says so
//! (`DeviceError::Unavailable`) instead of panicking, as cudarc would.

use std::sync::{Arc, Mutex};

use cudarc::driver::{CudaContext, CudaSlice, CudaStream};

use super::{check_range, DeviceError, DeviceMemory};

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

/// One allocation of `len` bytes on a GPU.
#[derive(Debug)]
pub struct CudaDomain {
    stream: Arc<CudaStream>,
    buf: Mutex<CudaSlice<u8>>,
    len: u64,
    name: String,
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
        let buf = stream
            .alloc_zeros::<u8>(len.max(1))
            .map_err(driver("cuMemAlloc"))?;
        Ok(CudaDomain {
            stream,
            buf: Mutex::new(buf),
            len: len as u64,
            name: format!("cuda:{ordinal} ({name})"),
        })
    }

    fn buf(&self) -> std::sync::MutexGuard<'_, CudaSlice<u8>> {
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
