//! Device objects between two ranks of two nodes through host memory (the
//! host-staged path), over the real transport, with the host stand-in as
//! both ranks' "device" (the bookkeeping and the protocol are what is under
//! test; `scripts/gpu-check.sh` runs the CUDA domain on a GPU): objects of
//! odd sizes arrive intact in the reader's device arena, an object evicted
//! at the owner is restored and served, the owner's pins are released, and
//! an object the owner does not have is refused with its reason.

mod common;
use common::*;

use std::sync::Arc;
use std::time::Duration;

use lumen_objstore::device::path::TransferPath;
use lumen_objstore::device::{
    pull_ipc, pull_staged, pull_to_host, DeviceArena, DeviceError, DeviceMemory, DeviceServer,
    HostDomain, IpcCache,
};
use lumen_objstore::ObjectId;
use lumen_transport::Source;

const READY: u64 = 0x0d01;
const DONE: u64 = 0x0d02;
const T: Duration = Duration::from_secs(60);

#[test]
fn device_objects_move_between_nodes_through_host_staging() {
    let sizes: &'static [(u64, usize)] = &[(1, 5_000_003), (2, 1), (3, 256 << 10)];
    with_time_limit(Duration::from_secs(120), move || {
        job(&[0, 1], move |ep| {
            // 8 MiB each: the owner's three objects need an eviction.
            let arena = Arc::new(DeviceArena::new(HostDomain::new(8 << 20)));
            if ep.rank() == 0 {
                let server = DeviceServer::register(&ep, arena.clone()).expect("serve");
                for &(lo, len) in sizes {
                    arena
                        .put(ObjectId::new(9, lo), &pattern(len, lo))
                        .expect("put");
                }
                // Fill the rest so that object 1 (the oldest) is evicted.
                arena
                    .put(ObjectId::new(9, 100), &pattern(3 << 20, 100))
                    .expect("a put that evicts");
                assert!(arena.stats().evictions >= 1, "{:?}", arena.stats());
                ep.send(1, READY, &[]).expect("ready");
                ep.recv(Source::Rank(1), DONE).expect("done");
                assert_eq!(server.served(), 2 * sizes.len() as u64);
                assert!(arena.remove(ObjectId::new(9, 1)).is_ok(), "pins released");
                arena.check().expect("consistent");
            } else {
                ep.recv(Source::Rank(0), READY).expect("ready");
                for &(lo, len) in sizes {
                    let id = ObjectId::new(9, lo);
                    let moved = pull_staged(&ep, 0, id, &arena, 1 << 20, T).expect("pulled");
                    assert_eq!(moved.path, TransferPath::HostStaged);
                    assert_eq!(moved.block.len, len as u64);
                    assert_eq!(moved.chunks, (len as u64).div_ceil(1 << 20));
                    let back = arena.read_to_host(id).expect("on the reader's device");
                    assert!(matches_pattern(&back, lo), "object {lo} differs");
                    // And straight to host memory (a reader without a GPU).
                    let host = pull_to_host(&ep, 0, id, 1 << 20, T).expect("to host");
                    assert!(
                        matches_pattern(&host, lo),
                        "object {lo} differs on the host"
                    );
                }
                match pull_staged(&ep, 0, ObjectId::new(9, 77), &arena, 1 << 20, T) {
                    Err(DeviceError::Refused { rank: 0, detail }) => {
                        assert!(detail.contains("not in this device arena"), "{detail}")
                    }
                    other => panic!("expected a refusal, got {other:?}"),
                }
                arena.check().expect("consistent");
                ep.send(0, DONE, &[]).expect("done");
            }
        });
    });
}

/// The same-node path: the reader maps the owner's region (the shared host
/// stand-in's file, as CUDA IPC maps another process's allocation) and
/// copies into its own arena; the owner's lease is released; an evicted
/// object is restored first; an object the owner does not have is refused.
#[test]
fn device_objects_on_one_node_are_mapped_not_streamed() {
    with_time_limit(Duration::from_secs(120), move || {
        job(&[0, 0], move |ep| {
            if ep.rank() == 0 {
                let arena = Arc::new(DeviceArena::new(
                    HostDomain::shared(8 << 20).expect("a shared stand-in"),
                ));
                assert!(arena.memory().export().is_some());
                let server = DeviceServer::register(&ep, arena.clone()).expect("serve");
                arena
                    .put(ObjectId::new(5, 1), &pattern(3 << 20, 1))
                    .expect("put");
                arena
                    .put(ObjectId::new(5, 2), &pattern(12345, 2))
                    .expect("put");
                // Evicts object 1 to host memory.
                arena
                    .put(ObjectId::new(5, 3), &pattern(5 << 20, 3))
                    .expect("put");
                assert!(arena.stats().evictions >= 1, "{:?}", arena.stats());
                ep.send(1, READY, &[]).expect("ready");
                ep.recv(Source::Rank(1), DONE).expect("done");
                assert_eq!(server.mapped(), 2);
                for lo in [1, 2] {
                    assert!(
                        arena.remove(ObjectId::new(5, lo)).is_ok(),
                        "the lease of object {lo} was released"
                    );
                }
                arena.check().expect("consistent");
            } else {
                let arena = DeviceArena::new(HostDomain::shared(8 << 20).expect("shared"));
                let cache = IpcCache::default();
                ep.recv(Source::Rank(0), READY).expect("ready");
                for (lo, len) in [(1u64, 3usize << 20), (2, 12345)] {
                    let id = ObjectId::new(5, lo);
                    let moved = pull_ipc(&ep, 0, id, &arena, &cache, T).expect("mapped");
                    assert_eq!(moved.path, TransferPath::CudaIpc { peer_copy: false });
                    assert_eq!(moved.block.len, len as u64);
                    let back = arena.read_to_host(id).expect("copied here");
                    assert!(matches_pattern(&back, lo), "object {lo} differs");
                }
                assert_eq!(cache.len(), 1, "one owner's region opened once");
                match pull_ipc(&ep, 0, ObjectId::new(5, 99), &arena, &cache, T) {
                    Err(DeviceError::Refused { rank: 0, .. }) => {}
                    other => panic!("expected a refusal, got {other:?}"),
                }
                arena.check().expect("consistent");
                ep.send(0, DONE, &[]).expect("done");
            }
        });
    });
}
