//! The host-staged path (the fallback when neither GPU-direct RDMA nor NCCL
//! connects two GPUs): device-to-host copies of chunk k+1 overlap the send
//! of chunk k at the owner, and host-to-device copies of chunk k overlap
//! the receive of chunk k+1 at the reader. Two host buffers per side, so
//! memory stays bounded whatever the object's size; on CUDA they are the
//! pinned buffers the copies need to run asynchronously.

use std::sync::mpsc::{channel, sync_channel};

use super::{check_range, DeviceError, DeviceMemory};

/// Why a staged transfer stopped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StagingError {
    /// A device copy failed.
    #[error("staging: {0}")]
    Device(#[from] DeviceError),
    /// The network side failed (the caller's send or receive).
    #[error("staging: the transfer failed: {0}")]
    Transfer(String),
}

/// What one staged transfer did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StageStats {
    /// Chunks moved.
    pub chunks: u64,
    /// Bytes moved.
    pub bytes: u64,
}

/// Sends `len` bytes at `offset` of `memory` through `send`, `chunk` bytes
/// at a time, in order, copying the next chunk off the device while the
/// current one is sent.
pub fn stage_out(
    memory: &dyn DeviceMemory,
    offset: u64,
    len: u64,
    chunk: usize,
    mut send: impl FnMut(&[u8]) -> Result<(), String>,
) -> Result<StageStats, StagingError> {
    check_range(offset, len, memory.len())?;
    let chunk = chunk.max(1) as u64;
    let (full_tx, full_rx) = sync_channel::<Result<Vec<u8>, DeviceError>>(1);
    let (empty_tx, empty_rx) = channel::<Vec<u8>>();
    for _ in 0..2 {
        let _ = empty_tx.send(Vec::with_capacity(chunk as usize));
    }
    std::thread::scope(|scope| {
        scope.spawn(move || {
            let mut at = 0u64;
            while at < len {
                let Ok(mut buf) = empty_rx.recv() else { return };
                let n = chunk.min(len - at) as usize;
                buf.resize(n, 0);
                let copied = memory.read(offset + at, &mut buf).map(|()| buf);
                let failed = copied.is_err();
                if full_tx.send(copied).is_err() || failed {
                    return;
                }
                at += n as u64;
            }
        });
        let mut stats = StageStats::default();
        while stats.bytes < len {
            let buf = full_rx
                .recv()
                .map_err(|_| StagingError::Transfer("the copy thread ended early".into()))??;
            send(&buf).map_err(StagingError::Transfer)?;
            stats.chunks += 1;
            stats.bytes += buf.len() as u64;
            let _ = empty_tx.send(buf);
        }
        // Dropping the channels ends the copy thread if it still waits.
        drop(empty_tx);
        Ok(stats)
    })
}

/// Receives `len` bytes through `recv` (which fills the buffer it is given,
/// `chunk` bytes but the last) and writes them at `offset` of `memory`,
/// writing chunk k to the device while chunk k+1 is received.
pub fn stage_in(
    memory: &dyn DeviceMemory,
    offset: u64,
    len: u64,
    chunk: usize,
    mut recv: impl FnMut(&mut [u8]) -> Result<(), String>,
) -> Result<StageStats, StagingError> {
    check_range(offset, len, memory.len())?;
    let chunk = chunk.max(1) as u64;
    let (full_tx, full_rx) = sync_channel::<(u64, Vec<u8>)>(1);
    let (empty_tx, empty_rx) = channel::<Result<Vec<u8>, DeviceError>>();
    for _ in 0..2 {
        let _ = empty_tx.send(Ok(Vec::with_capacity(chunk as usize)));
    }
    std::thread::scope(|scope| {
        let writer = scope.spawn(move || {
            while let Ok((at, buf)) = full_rx.recv() {
                let written = memory.write(offset + at, &buf).map(|()| buf);
                let failed = written.is_err();
                if empty_tx.send(written).is_err() || failed {
                    return;
                }
            }
        });
        let mut stats = StageStats::default();
        let mut at = 0u64;
        let result: Result<(), StagingError> = (|| {
            while at < len {
                let mut buf = empty_rx
                    .recv()
                    .map_err(|_| StagingError::Transfer("the copy thread ended early".into()))??;
                let n = chunk.min(len - at) as usize;
                buf.resize(n, 0);
                recv(&mut buf).map_err(StagingError::Transfer)?;
                full_tx
                    .send((at, buf))
                    .map_err(|_| StagingError::Transfer("the copy thread ended early".into()))?;
                at += n as u64;
                stats.chunks += 1;
                stats.bytes += n as u64;
            }
            Ok(())
        })();
        drop(full_tx);
        let _ = writer.join();
        result?;
        // The last writes' outcomes.
        while let Ok(done) = empty_rx.try_recv() {
            done?;
        }
        Ok(stats)
    })
}

#[cfg(test)]
mod tests {
    use super::super::HostDomain;
    use super::*;

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8).collect()
    }

    #[test]
    fn a_device_region_goes_out_and_in_in_order_through_two_buffers() {
        let len = 3_000_001usize;
        let owner = HostDomain::new(len + 100);
        owner.write(100, &pattern(len)).expect("fill");
        let reader = HostDomain::new(len + 7);
        // The "network": chunks in a queue, with a delay so that the
        // copies overlap the sends.
        let mut wire: std::collections::VecDeque<Vec<u8>> = Default::default();
        let out = stage_out(&owner, 100, len as u64, 256 << 10, |c| {
            std::thread::sleep(std::time::Duration::from_micros(200));
            wire.push_back(c.to_vec());
            Ok(())
        })
        .expect("staged out");
        assert_eq!(out.bytes, len as u64);
        assert_eq!(out.chunks, (len as u64).div_ceil(256 << 10));
        let got = stage_in(&reader, 7, len as u64, 256 << 10, |buf| {
            let c = wire.pop_front().ok_or("the wire ran dry")?;
            buf.copy_from_slice(&c);
            Ok(())
        })
        .expect("staged in");
        assert_eq!(got, out);
        let mut back = vec![0u8; len];
        reader.read(7, &mut back).expect("read");
        assert!(back == pattern(len), "the bytes differ after staging");
    }

    #[test]
    fn failures_stop_the_pipeline_with_their_reason() {
        let owner = HostDomain::new(1 << 20);
        let mut sent = 0;
        let e = stage_out(&owner, 0, 1 << 20, 64 << 10, |_| {
            sent += 1;
            if sent == 3 {
                Err("peer 4 closed".into())
            } else {
                Ok(())
            }
        })
        .expect_err("a failed send");
        assert_eq!(e, StagingError::Transfer("peer 4 closed".into()));
        assert!(matches!(
            stage_out(&owner, 1, 1 << 20, 4096, |_| Ok(())),
            Err(StagingError::Device(DeviceError::OutOfRange { .. }))
        ));
        let reader = HostDomain::new(1000);
        assert!(matches!(
            stage_in(&reader, 0, 2000, 100, |_| Ok(())),
            Err(StagingError::Device(DeviceError::OutOfRange { .. }))
        ));
    }
}
