//! Pulling objects between two ranks on different nodes (TCP between them)
//! and on one node (shared memory), each rank with its own arena: a 256 MiB
//! object arrives intact (checksum), odd sizes and small chunks work, and a
//! pull of an object the server does not have fails with its reason.

mod common;
use common::*;

use std::time::Duration;

use lumen_objstore::{
    pull, ArenaOptions, NodeArena, ObjectId, ObjectServer, ObjectStoreError, PullOptions,
};
use lumen_transport::Source;

const LIMIT: Duration = Duration::from_secs(240);
const CHECKSUM_TAG: u64 = 0x0b0b;
const DONE_TAG: u64 = 0x0b0c;

fn pull_between(nodes: &'static [u32], objects: &'static [(u64, u64, PullOptionsSpec)]) {
    with_time_limit(LIMIT, move || {
        let names: Vec<String> = (0..2).map(|_| unique_name("pull")).collect();
        job(nodes, move |ep| {
            let me = ep.rank();
            let total: u64 = objects.iter().map(|o| o.1).sum();
            let arena = NodeArena::create(
                &names[me as usize],
                total + (8 << 20),
                ArenaOptions::default(),
            )
            .unwrap();
            if me == 0 {
                let _server = ObjectServer::register(&ep, &arena).unwrap();
                for &(lo, len, _) in objects {
                    let id = ObjectId::new(42, lo);
                    let mut w = arena.create_object(id, len).unwrap();
                    fill_pattern(&mut w, lo);
                    let sum = checksum(&w);
                    w.seal().unwrap();
                    ep.send(1, CHECKSUM_TAG, &sum.to_le_bytes()).unwrap();
                }
                // Waiting here drives progress, which runs the server's handler.
                ep.recv(Source::Rank(1), DONE_TAG).unwrap();
            } else {
                for &(lo, len, spec) in objects {
                    let sum = ep.recv(Source::Rank(0), CHECKSUM_TAG).unwrap();
                    let sum = u64::from_le_bytes(sum.data.try_into().unwrap());
                    let options = PullOptions {
                        chunk_bytes: spec.chunk,
                        window: spec.window,
                        copy_thread: spec.copy_thread,
                        ..PullOptions::default()
                    };
                    let id = ObjectId::new(42, lo);
                    let view = pull(&arena, &ep, 0, id, len, &options).unwrap();
                    assert_eq!(view.len() as u64, len);
                    assert_eq!(checksum(&view), sum, "object {id} differs after the pull");
                    drop(view);
                    // A second pull finds the local copy (no transfer).
                    let again = pull(&arena, &ep, 0, id, len, &options).unwrap();
                    assert_eq!(checksum(&again), sum);
                }
                let missing = ObjectId::new(42, 999);
                match pull(&arena, &ep, 0, missing, 1000, &PullOptions::default()) {
                    Err(ObjectStoreError::PullRefused {
                        rank: 0, detail, ..
                    }) => {
                        assert!(detail.contains("not in rank 0"), "{detail}")
                    }
                    other => panic!("expected a refusal, got {other:?}"),
                }
                assert!(
                    arena.get(missing).unwrap().is_none(),
                    "failed pull leaves nothing"
                );
                assert_eq!(arena.live_objects(), objects.len() as u64);
                arena.check_consistency().unwrap();
                ep.send(0, DONE_TAG, &[]).unwrap();
            }
            drop(arena);
            NodeArena::unlink(&names[me as usize]).unwrap();
        });
    });
}

#[derive(Clone, Copy)]
struct PullOptionsSpec {
    chunk: u64,
    window: u32,
    copy_thread: bool,
}

const DEFAULT: PullOptionsSpec = PullOptionsSpec {
    chunk: 8 << 20,
    window: 4,
    copy_thread: false,
};
const COPIER: PullOptionsSpec = PullOptionsSpec {
    chunk: 4 << 20,
    window: 2,
    copy_thread: true,
};
const SMALL: PullOptionsSpec = PullOptionsSpec {
    chunk: 100_000,
    window: 3,
    copy_thread: false,
};

#[test]
fn pull_256_mib_between_nodes_over_tcp() {
    pull_between(
        &[0, 1],
        &[
            (1, 256 << 20, DEFAULT),
            (2, 3_000_001, SMALL),
            (3, 1, SMALL),
            (5, 50_000_007, COPIER),
        ],
    );
}

#[test]
fn pull_between_arenas_on_one_node_over_shared_memory() {
    pull_between(
        &[0, 0],
        &[(1, 40 << 20, DEFAULT), (2, 777_777, SMALL), (4, 0, SMALL)],
    );
}

#[test]
fn two_ranks_of_a_node_pulling_one_object_share_a_single_copy() {
    with_time_limit(LIMIT, || {
        let server_arena = unique_name("pull");
        let shared_arena = unique_name("pull");
        let len: u64 = 48 << 20;
        job(&[0, 1, 1], move |ep| {
            let me = ep.rank();
            let id = ObjectId::new(77, 1);
            let arena = match me {
                0 => NodeArena::create(&server_arena, len + (1 << 20), Default::default()),
                1 => NodeArena::create(&shared_arena, len + (1 << 20), Default::default()),
                _ => NodeArena::open_wait(&shared_arena, Duration::from_secs(30)),
            }
            .unwrap();
            if me == 0 {
                let _server = ObjectServer::register(&ep, &arena).unwrap();
                let mut w = arena.create_object(id, len).unwrap();
                fill_pattern(&mut w, 5);
                let sum = checksum(&w);
                w.seal().unwrap();
                for r in [1, 2] {
                    ep.send(r, CHECKSUM_TAG, &sum.to_le_bytes()).unwrap();
                }
                for r in [1, 2] {
                    ep.recv(Source::Rank(r), DONE_TAG).unwrap();
                }
                drop(arena);
                NodeArena::unlink(&server_arena).unwrap();
            } else {
                let sum = ep.recv(Source::Rank(0), CHECKSUM_TAG).unwrap();
                let sum = u64::from_le_bytes(sum.data.try_into().unwrap());
                let view = pull(&arena, &ep, 0, id, len, &PullOptions::default()).unwrap();
                assert_eq!(checksum(&view), sum);
                assert_eq!(arena.live_objects(), 1, "one copy on the node");
                drop(view);
                ep.send(0, DONE_TAG, &[]).unwrap();
                // Both ranks are past their pulls before the arena goes.
                let peer = 3 - me;
                ep.send(peer, DONE_TAG, &[]).unwrap();
                ep.recv(Source::Rank(peer), DONE_TAG).unwrap();
                if me == 1 {
                    drop(arena);
                    NodeArena::unlink(&shared_arena).unwrap();
                }
            }
        });
    });
}
