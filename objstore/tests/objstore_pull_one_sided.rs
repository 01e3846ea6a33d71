//! One-sided pulls: rank 1 reads rank 0's arena block straight into its
//! own arena with one read, on every backend this build has — Lumen's
//! emulated `tcp` and same-node `vm` always; libfabric's `tcp;ofi_rxm`
//! (over loopback) and `shm` with the `ofi` feature: a 256 MiB object and odd sizes arrive
//! intact (checksum), no chunk is served two-sided, the owner's pin goes
//! once the pull is done, and an object the owner does not have is
//! refused with its reason.

mod common;
use common::*;

use std::time::Duration;

use lumen_objstore::{
    pull_one_sided, ArenaOptions, NodeArena, ObjectId, ObjectServer, ObjectStoreError,
    OneSidedServer, OneSidedSource,
};
use lumen_transport::fabric::{FabricError, OneSided, RemoteKey};
use lumen_transport::Source;

const LIMIT: Duration = Duration::from_secs(240);
const ADDR_TAG: u64 = 0x0c01;
const SUM_TAG: u64 = 0x0c02;
const DONE_TAG: u64 = 0x0c03;
const T: Duration = Duration::from_secs(60);

fn open(provider: &str) -> Result<Box<dyn OneSided>, FabricError> {
    use lumen_transport::fabric::{tcp::TcpOneSided, vm::VmOneSided};
    match provider {
        "tcp" => Ok(Box::new(TcpOneSided::open(Some("127.0.0.1"), 1)?)),
        "vm" => Ok(Box::new(VmOneSided::open(1)?)),
        #[cfg(feature = "ofi")]
        "tcp;ofi_rxm" => Ok(Box::new(lumen_transport::fabric::ofi::OfiEndpoint::open(
            provider,
            Some("127.0.0.1"),
            1,
        )?)),
        #[cfg(feature = "ofi")]
        "shm" => Ok(Box::new(lumen_transport::fabric::ofi::OfiEndpoint::open(
            provider, None, 1,
        )?)),
        other => panic!("no backend {other}"),
    }
}

fn one_sided_pulls(provider: &'static str) {
    if let Err(e) = open(provider) {
        eprintln!("SKIPPED: fabric backend {provider} unavailable here: {e}");
        return;
    }
    let objects: &'static [(u64, u64)] = &[(1, 256 << 20), (2, 3_000_001), (3, 1)];
    with_time_limit(LIMIT, move || {
        let names: Vec<String> = (0..2).map(|_| unique_name("osp")).collect();
        job(&[0, 1], move |ep| {
            let me = ep.rank();
            let total: u64 = objects.iter().map(|o| o.1).sum();
            let arena = NodeArena::create(
                &names[me as usize],
                total + (8 << 20),
                ArenaOptions::default(),
            )
            .unwrap();
            let fabric = open(provider).unwrap();
            let other = 1 - me;
            if me == 0 {
                let chunks = ObjectServer::register(&ep, &arena).unwrap();
                let server = OneSidedServer::register(&ep, &arena, &*fabric).unwrap();
                let mut hello = fabric.address().unwrap();
                hello.extend_from_slice(&server.key().to_bytes());
                ep.send(other, ADDR_TAG, &hello).unwrap();
                let theirs = ep.recv(Source::Rank(other), ADDR_TAG).unwrap();
                fabric.insert_peer(&theirs.data).unwrap();
                for &(lo, len) in objects {
                    let id = ObjectId::new(42, lo);
                    let mut w = arena.create_object(id, len).unwrap();
                    fill_pattern(&mut w, lo);
                    let sum = checksum(&w);
                    w.seal().unwrap();
                    ep.send(other, SUM_TAG, &sum.to_le_bytes()).unwrap();
                }
                ep.recv(Source::Rank(other), DONE_TAG).unwrap();
                assert_eq!(server.served(), objects.len() as u64);
                assert_eq!(server.pinned(), 0, "every pin was released");
                assert_eq!(chunks.chunks_served(), 0, "nothing went two-sided");
                eprintln!("{provider}: {:?}", fabric.stats());
            } else {
                // The puller's arena is registered too: reads land in place.
                let (start, len) = arena.mapping();
                // SAFETY: `arena` outlives `fabric` (declared before it, so
                // dropped after).
                unsafe { fabric.register(start.cast_mut(), len) }.unwrap();
                let hello = ep.recv(Source::Rank(other), ADDR_TAG).unwrap();
                let split = hello.data.len() - RemoteKey::BYTES;
                let peer = fabric.insert_peer(&hello.data[..split]).unwrap();
                let key = RemoteKey::from_bytes(&hello.data[split..]).unwrap();
                ep.send(other, ADDR_TAG, &fabric.address().unwrap())
                    .unwrap();
                let source = OneSidedSource { rank: 0, peer, key };
                for &(lo, len) in objects {
                    let sum = ep.recv(Source::Rank(other), SUM_TAG).unwrap();
                    let sum = u64::from_le_bytes(sum.data.try_into().unwrap());
                    let id = ObjectId::new(42, lo);
                    let started = std::time::Instant::now();
                    let view = pull_one_sided(&arena, &ep, &*fabric, &source, id, len, T).unwrap();
                    let took = started.elapsed();
                    assert_eq!(view.len() as u64, len);
                    assert_eq!(checksum(&view), sum, "object {id} differs after the pull");
                    if len >= 1 << 20 {
                        eprintln!(
                            "{provider}: pulled {} MiB in {took:?} ({:.2} GB/s)",
                            len >> 20,
                            len as f64 / took.as_secs_f64() / 1e9
                        );
                    }
                }
                let stats = fabric.stats();
                assert_eq!(
                    stats.registrations, 1,
                    "the arena is registered once: {stats:?}"
                );
                let missing = ObjectId::new(42, 999);
                match pull_one_sided(&arena, &ep, &*fabric, &source, missing, 1000, T) {
                    Err(ObjectStoreError::PullRefused {
                        rank: 0, detail, ..
                    }) => {
                        assert!(detail.contains("not in rank 0"), "{detail}")
                    }
                    other => panic!("expected a refusal, got {other:?}"),
                }
                assert!(
                    arena.get(missing).unwrap().is_none(),
                    "a failed pull leaves nothing"
                );
                arena.check_consistency().unwrap();
                // Unpins travel before this (same link, in order).
                ep.send(other, DONE_TAG, &[]).unwrap();
            }
            drop(fabric);
            drop(arena);
            NodeArena::unlink(&names[me as usize]).unwrap();
        });
    });
}

#[test]
fn one_sided_pulls_over_lumen_tcp() {
    one_sided_pulls("tcp");
}

#[test]
fn one_sided_pulls_over_process_vm_readv() {
    one_sided_pulls("vm");
}

#[cfg(feature = "ofi")]
#[test]
fn one_sided_pulls_over_tcp_ofi_rxm() {
    one_sided_pulls("tcp;ofi_rxm");
}

#[cfg(feature = "ofi")]
#[test]
fn one_sided_pulls_over_shm() {
    one_sided_pulls("shm");
}
