//! NCCL communicators over GPU buffers (feature `nccl`), through `cudarc`.
//!
//! An [`NcclCommunicator`] is created collectively from a CPU
//! [`Communicator`]: rank 0 of it asks NCCL for a unique id, the id travels
//! to the other ranks with the communicator's own `bcast` (so through Lumen's
//! transport, no extra rendezvous), and every rank joins with
//! `ncclCommInitRank` on the GPU it names. Operations take `cudarc` device
//! slices and are enqueued on the communicator's stream, as NCCL does;
//! [`NcclCommunicator::synchronize`] waits for them.
//!
//! cudarc loads `libcuda` and `libnccl` at run time and panics when they are
//! missing, so every entry point first checks [`nccl_available`] and returns
//! [`CollectiveError::Device`] with what is missing instead.
//!
//! Operations offered (those NCCL has): allreduce, broadcast, reduce,
//! allgather, reduce-scatter, send and receive. Bitwise reductions, which
//! NCCL lacks, return [`CollectiveError::UnsupportedOp`].
//!
//! Not run here: this development machine has no GPU. The correctness check
//! for a machine with one is `scripts/gpu-nccl-check.sh`.

use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaSlice, CudaStream, DeviceRepr};
use cudarc::nccl::{Comm, Id, NcclType};

use crate::comm::Communicator;
use crate::element::{Element, ReduceOp};
use crate::error::{CollectiveError, Result};

/// Checks that the CUDA driver and NCCL libraries can be loaded.
pub fn nccl_available() -> Result<()> {
    // SAFETY: only tries to dlopen the library names; no CUDA call is made.
    let driver = unsafe { cudarc::driver::sys::is_culib_present() };
    if !driver {
        return Err(CollectiveError::Device(
            "the CUDA driver library (libcuda.so) is not installed or not on the library path: NCCL collectives need an NVIDIA GPU and its driver".into(),
        ));
    }
    // SAFETY: as above, for libnccl.
    let nccl = unsafe { cudarc::nccl::sys::is_culib_present() };
    if !nccl {
        return Err(CollectiveError::Device(
            "libnccl.so is not installed or not on the library path (install NCCL, e.g. the libnccl2 package or pip's nvidia-nccl-cu12, and set LD_LIBRARY_PATH)".into(),
        ));
    }
    Ok(())
}

/// Element types NCCL can reduce.
pub trait NcclElement: Element + NcclType + DeviceRepr {}
impl<T: Element + NcclType + DeviceRepr> NcclElement for T {}

fn nccl_op(
    op: &'static str,
    reduce: ReduceOp,
    kind: crate::ElementKind,
) -> Result<cudarc::nccl::ReduceOp> {
    Ok(match reduce {
        ReduceOp::Sum => cudarc::nccl::ReduceOp::Sum,
        ReduceOp::Prod => cudarc::nccl::ReduceOp::Prod,
        ReduceOp::Min => cudarc::nccl::ReduceOp::Min,
        ReduceOp::Max => cudarc::nccl::ReduceOp::Max,
        ReduceOp::BitAnd | ReduceOp::BitOr | ReduceOp::BitXor => {
            return Err(CollectiveError::UnsupportedOp { op, reduce, kind })
        }
    })
}

fn nccl_error(op: &str, e: cudarc::nccl::result::NcclError) -> CollectiveError {
    CollectiveError::Device(format!("NCCL {op} failed: {:?}", e.0))
}

fn driver_error(op: &str, e: cudarc::driver::DriverError) -> CollectiveError {
    CollectiveError::Device(format!("CUDA {op} failed: {e:?}"))
}

/// A communicator of GPUs, one per rank, built over a CPU communicator.
#[derive(Debug)]
pub struct NcclCommunicator {
    comm: Comm,
    stream: Arc<CudaStream>,
    context: Arc<CudaContext>,
}

impl NcclCommunicator {
    /// Collective over `cpu`: every rank joins with GPU `device` (ordinal).
    pub fn new(cpu: &Communicator, device: usize) -> Result<Self> {
        nccl_available()?;
        let mut id = [0u8; 128];
        let created = if cpu.rank() == 0 {
            Id::new().map(|id_value| {
                for (b, c) in id.iter_mut().zip(id_value.internal().iter()) {
                    *b = *c as u8;
                }
            })
        } else {
            Ok(())
        };
        // Rank 0 broadcasts either the id or a failure flag, so no rank waits
        // for an id that will never come.
        let mut flag = [u8::from(created.is_ok())];
        cpu.bcast(&mut flag, 0)?;
        if flag[0] == 0 {
            return Err(match created {
                Err(e) => nccl_error("ncclGetUniqueId", e),
                Ok(()) => {
                    CollectiveError::Device("rank 0 could not create the NCCL unique id".into())
                }
            });
        }
        cpu.bcast(&mut id, 0)?;
        let mut internal = [0 as std::ffi::c_char; 128];
        for (c, b) in internal.iter_mut().zip(id.iter()) {
            *c = *b as std::ffi::c_char;
        }
        let context =
            CudaContext::new(device).map_err(|e| driver_error("opening the device", e))?;
        let stream = context.default_stream();
        let comm = Comm::from_rank(
            stream.clone(),
            cpu.rank() as usize,
            cpu.size() as usize,
            Id::uninit(internal),
        )
        .map_err(|e| nccl_error("ncclCommInitRank", e))?;
        Ok(NcclCommunicator {
            comm,
            stream,
            context,
        })
    }

    /// This rank.
    pub fn rank(&self) -> usize {
        self.comm.rank()
    }

    /// Number of ranks.
    pub fn size(&self) -> usize {
        self.comm.world_size()
    }

    /// The stream operations are enqueued on (allocate and copy with it).
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// The CUDA context of this rank's GPU.
    pub fn context(&self) -> &Arc<CudaContext> {
        &self.context
    }

    /// Waits until every enqueued operation has finished.
    pub fn synchronize(&self) -> Result<()> {
        self.stream
            .synchronize()
            .map_err(|e| driver_error("stream synchronize", e))
    }

    /// In-place allreduce of a device buffer.
    pub fn allreduce<T: NcclElement>(&self, buffer: &mut CudaSlice<T>, op: ReduceOp) -> Result<()> {
        let op = nccl_op("allreduce", op, T::KIND)?;
        self.comm
            .all_reduce_in_place(buffer, &op)
            .map(|_| ())
            .map_err(|e| nccl_error("allreduce", e))
    }

    /// In-place broadcast from `root`.
    pub fn bcast<T: NcclElement>(&self, buffer: &mut CudaSlice<T>, root: usize) -> Result<()> {
        self.comm
            .broadcast_in_place(buffer, root as i32)
            .map(|_| ())
            .map_err(|e| nccl_error("broadcast", e))
    }

    /// In-place reduce to `root`.
    pub fn reduce<T: NcclElement>(
        &self,
        buffer: &mut CudaSlice<T>,
        op: ReduceOp,
        root: usize,
    ) -> Result<()> {
        let op = nccl_op("reduce", op, T::KIND)?;
        self.comm
            .reduce_in_place(buffer, &op, root as i32)
            .map(|_| ())
            .map_err(|e| nccl_error("reduce", e))
    }

    /// Allgather: `recv` has `size * send.len()` elements.
    pub fn allgather<T: NcclElement>(
        &self,
        send: &CudaSlice<T>,
        recv: &mut CudaSlice<T>,
    ) -> Result<()> {
        self.comm
            .all_gather(send, recv)
            .map(|_| ())
            .map_err(|e| nccl_error("allgather", e))
    }

    /// Reduce-scatter: `send` has `size * recv.len()` elements.
    pub fn reduce_scatter<T: NcclElement>(
        &self,
        send: &CudaSlice<T>,
        recv: &mut CudaSlice<T>,
        op: ReduceOp,
    ) -> Result<()> {
        let op = nccl_op("reduce_scatter", op, T::KIND)?;
        self.comm
            .reduce_scatter(send, recv, &op)
            .map(|_| ())
            .map_err(|e| nccl_error("reduce_scatter", e))
    }

    /// Sends a device buffer to rank `peer`.
    pub fn send<T: NcclElement>(&self, data: &CudaSlice<T>, peer: usize) -> Result<()> {
        self.comm
            .send(data, peer as i32)
            .map_err(|e| nccl_error("send", e))
    }

    /// Receives into a device buffer from rank `peer`.
    pub fn recv<T: NcclElement>(&self, buffer: &mut CudaSlice<T>, peer: usize) -> Result<()> {
        self.comm
            .recv(buffer, peer as i32)
            .map(|_| ())
            .map_err(|e| nccl_error("recv", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_libraries_give_a_clear_error_not_a_panic() {
        match nccl_available() {
            Ok(()) => eprintln!(
                "CUDA and NCCL are present: nothing to check here (see scripts/gpu-nccl-check.sh)"
            ),
            Err(e) => {
                let text = e.to_string();
                assert!(
                    text.contains("libcuda") || text.contains("libnccl"),
                    "{text}"
                );
            }
        }
        assert!(nccl_op("allreduce", ReduceOp::BitAnd, crate::ElementKind::I32).is_err());
    }
}
