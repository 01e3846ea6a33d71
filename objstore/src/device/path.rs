//! Which way a device object moves from its owner to a reader: a pure
//! function of where the two are and what the machines offer, so the
//! choice is tested here and reported in the object's transfer stats.
//!
//! In order of preference (issue 13):
//! 1. same process: no copy (a peer copy when the reader's GPU differs);
//! 2. same node: CUDA IPC (the owner exports the allocation; the reader
//!    maps it), then a peer copy over NVLink/PCIe when the GPUs differ;
//! 3. other nodes: GPU-direct RDMA (device memory registered with the
//!    verbs backend) when both ends have it; else NCCL send/recv between
//!    the two ranks; else host staging (device to host, the network, host
//!    to device, pipelined: `staging`).
//!
//! A reader without a GPU gets host memory: the owner's device-to-host
//! copy then the network (or nothing more on its own node).

/// Where one side of a transfer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    /// The node.
    pub node: u32,
    /// The process (its rank).
    pub process: u32,
    /// The GPU (device ordinal on its node), or `None` for host memory.
    pub gpu: Option<u32>,
}

/// What the two machines offer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// CUDA IPC between processes of a node (same driver, not disabled).
    pub cuda_ipc: bool,
    /// Peer access between the two GPUs of a node (NVLink or PCIe P2P).
    pub peer_access: bool,
    /// GPU-direct RDMA on both ends (a verbs device and dma-buf support).
    pub gpudirect: bool,
    /// NCCL loaded on both ends.
    pub nccl: bool,
}

/// How the bytes move.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransferPath {
    /// The reader is the owner's process and GPU: the same buffer.
    SameBuffer,
    /// Same process, another GPU: one device-to-device copy.
    PeerCopy,
    /// Same node, another process: CUDA IPC, plus a peer copy when the
    /// GPUs differ.
    CudaIpc {
        /// Whether a peer copy follows the mapping.
        peer_copy: bool,
    },
    /// Other node: RDMA straight between the two GPUs' memories.
    GpuDirect,
    /// Other node: NCCL send/recv between the two ranks.
    Nccl,
    /// Device to host at the owner, the network (or nothing on one node),
    /// host to device at the reader, pipelined.
    HostStaged,
    /// The reader wants host memory: device to host at the owner (and the
    /// network when the reader is elsewhere).
    ToHost,
}

impl TransferPath {
    /// Whether the bytes leave GPU memory on the way.
    pub fn touches_host(self) -> bool {
        matches!(self, TransferPath::HostStaged | TransferPath::ToHost)
    }
}

/// The path for moving a device object from `owner` (on a GPU) to `reader`.
pub fn choose(owner: Location, reader: Location, caps: Capabilities) -> TransferPath {
    let Some(reader_gpu) = reader.gpu else {
        return TransferPath::ToHost;
    };
    let same_gpu = owner.gpu == Some(reader_gpu);
    if owner.node == reader.node {
        // Between two GPUs of a node without peer access, the copy goes
        // through host memory.
        let p2p_ok = same_gpu || caps.peer_access;
        if owner.process == reader.process {
            return if same_gpu {
                TransferPath::SameBuffer
            } else if p2p_ok {
                TransferPath::PeerCopy
            } else {
                TransferPath::HostStaged
            };
        }
        if caps.cuda_ipc && p2p_ok {
            return TransferPath::CudaIpc {
                peer_copy: !same_gpu,
            };
        }
        return TransferPath::HostStaged;
    }
    if caps.gpudirect {
        TransferPath::GpuDirect
    } else if caps.nccl {
        TransferPath::Nccl
    } else {
        TransferPath::HostStaged
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(node: u32, process: u32, gpu: Option<u32>) -> Location {
        Location { node, process, gpu }
    }

    #[test]
    fn paths_follow_the_order_of_preference() {
        let all = Capabilities {
            cuda_ipc: true,
            peer_access: true,
            gpudirect: true,
            nccl: true,
        };
        let none = Capabilities::default();
        let owner = at(0, 0, Some(0));
        assert_eq!(
            choose(owner, at(0, 0, Some(0)), none),
            TransferPath::SameBuffer
        );
        assert_eq!(
            choose(owner, at(0, 0, Some(1)), all),
            TransferPath::PeerCopy
        );
        assert_eq!(
            choose(owner, at(0, 0, Some(1)), none),
            TransferPath::HostStaged
        );
        assert_eq!(
            choose(owner, at(0, 1, Some(0)), all),
            TransferPath::CudaIpc { peer_copy: false }
        );
        assert_eq!(
            choose(owner, at(0, 1, Some(3)), all),
            TransferPath::CudaIpc { peer_copy: true }
        );
        assert_eq!(
            choose(owner, at(0, 1, Some(0)), none),
            TransferPath::HostStaged
        );
        assert_eq!(
            choose(owner, at(1, 4, Some(0)), all),
            TransferPath::GpuDirect
        );
        let nccl_only = Capabilities { nccl: true, ..none };
        assert_eq!(
            choose(owner, at(1, 4, Some(0)), nccl_only),
            TransferPath::Nccl
        );
        assert_eq!(
            choose(owner, at(1, 4, Some(0)), none),
            TransferPath::HostStaged
        );
        assert_eq!(choose(owner, at(1, 4, None), all), TransferPath::ToHost);
        assert!(TransferPath::HostStaged.touches_host());
        assert!(!TransferPath::GpuDirect.touches_host());
    }
}
