//! Endpoints of several ranks inside one test process (one thread per rank):
//! quick checks of the protocol paths; the multi-process tests live in the
//! `lumen` crate's tests.

mod common;
use common::*;
use std::sync::Arc;

use lumen_transport::{Endpoint, Source, TcpBackend};

const SIZES: &[usize] = &[0, 1, 8, 4096, 16 * 1024, 16 * 1024 + 1, 300_000, 4 << 20];

#[test]
fn shm_all_to_all_four_ranks() {
    job(&[0, 0, 0, 0], TcpBackend::Auto, |ep, _| {
        assert!(ep.is_local((ep.rank() + 1) % 4));
        all_to_all(&ep, SIZES)
    });
}

#[test]
fn tcp_uring_all_to_all_three_nodes() {
    job(&[0, 1, 2], TcpBackend::Uring, |ep, _| {
        assert_eq!(ep.tcp_backend(), "io_uring");
        all_to_all(&ep, SIZES)
    });
}

#[test]
fn tcp_epoll_all_to_all_mixed() {
    job(&[0, 0, 1, 1], TcpBackend::Epoll, |ep, _| {
        assert_eq!(ep.tcp_backend(), "epoll");
        all_to_all(&ep, SIZES)
    });
}

#[test]
fn per_pair_order_and_tags() {
    job(&[0, 0, 1], TcpBackend::Auto, |ep, _| {
        let (me, n) = (ep.rank(), ep.size());
        for dst in (0..n).filter(|&d| d != me) {
            for i in 0..200u32 {
                let len = if i % 50 == 0 { 100_000 } else { 4 };
                let mut data = pattern(len, i);
                data[..4].copy_from_slice(&i.to_le_bytes());
                ep.send(dst, 7 + (i % 2) as u64, &data).unwrap();
            }
        }
        for src in (0..n).filter(|&s| s != me) {
            for tag in [7u64, 8] {
                let mut last = None;
                for _ in 0..100 {
                    let m = ep.recv(Source::Rank(src), tag).unwrap();
                    let i = u32::from_le_bytes(m.data[..4].try_into().unwrap());
                    assert_eq!(i % 2, (tag - 7) as u32);
                    if let Some(l) = last {
                        assert!(i > l, "out of order from {src}: {i} after {l}");
                    }
                    last = Some(i);
                }
            }
        }
    });
}

#[test]
fn one_sided_get_and_handlers() {
    job(&[0, 0, 1], TcpBackend::Auto, |ep, _| {
        let me = ep.rank();
        let data: Arc<[u8]> = pattern(1 << 20, me).into();
        let key = ep.register_region(data);
        let hits = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let h = hits.clone();
        ep.register_handler(
            55,
            Arc::new(move |ep: &Endpoint, m: lumen_transport::Message| {
                h.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                ep.send(m.src, 56, &m.data).unwrap();
            }),
        )
        .unwrap();
        ep.spawn_progress_thread();
        // Keys are allocated identically on every rank (first registration = 1).
        for peer in 0..ep.size() {
            let got = ep.get(peer, key, 1000, 5000).unwrap();
            assert_eq!(got, pattern(1 << 20, peer)[1000..6000]);
            assert!(ep.get(peer, key, (1 << 20) - 1, 2).is_err());
            assert!(ep.get(peer, lumen_transport::RegionKey(999), 0, 1).is_err());
        }
        for peer in (0..ep.size()).filter(|&p| p != me) {
            ep.send(peer, 55, &[me as u8; 3]).unwrap();
            let echo = ep.recv(Source::Rank(peer), 56).unwrap();
            assert_eq!(echo.data, vec![me as u8; 3]);
        }
        ep.barrier().unwrap();
        assert_eq!(
            hits.load(std::sync::atomic::Ordering::SeqCst),
            ep.size() - 1
        );
    });
}

/// Caller-driven TCP reading with several threads of one rank receiving at
/// once (each connection is read by one thread at a time, under `try_lock`),
/// mixed sizes so that some payloads are received in place.
#[test]
fn tcp_two_threads_receive_concurrently() {
    job(&[0, 1], TcpBackend::Auto, |ep, _| {
        assert_eq!(ep.tcp_backend(), "epoll");
        let peer = 1 - ep.rank();
        const PER_THREAD: u32 = 300;
        let lens = |i: u32| match i % 10 {
            0 => 200_000,
            5 => 20_000,
            _ => (i % 97) as usize,
        };
        let receivers: Vec<_> = (0..2u64)
            .map(|t| {
                let ep = ep.clone();
                std::thread::spawn(move || {
                    for i in 0..PER_THREAD {
                        let m = ep.recv(Source::Rank(peer), 40 + t).unwrap();
                        assert_eq!(m.data, pattern(lens(i), i), "thread {t} message {i}");
                    }
                })
            })
            .collect();
        for i in 0..PER_THREAD {
            for t in 0..2u64 {
                ep.send(peer, 40 + t, &pattern(lens(i), i)).unwrap();
            }
        }
        for r in receivers {
            r.join().unwrap();
        }
        ep.barrier().unwrap();
    });
}

/// A rank that computes without calling in while its peer streams a lot at it
/// (more than the sockets buffer) must not stall the peer for good: the
/// background receiver drains. Then the rank receives everything, in order.
#[test]
fn tcp_computing_rank_does_not_block_its_sender() {
    computing_rank_does_not_block_its_sender(TcpBackend::Auto);
}

/// The io_uring receiver is caller-driven too: while the rank computes, its
/// background thread arms and reaps the receives no caller armed.
#[test]
fn tcp_uring_computing_rank_does_not_block_its_sender() {
    computing_rank_does_not_block_its_sender(TcpBackend::Uring);
}

fn computing_rank_does_not_block_its_sender(backend: TcpBackend) {
    job(&[0, 1], backend, |ep, _| {
        const COUNT: u32 = 64;
        const LEN: usize = 1 << 20;
        if ep.rank() == 0 {
            let start = std::time::Instant::now();
            for i in 0..COUNT {
                ep.send(1, 9, &pattern(LEN, i)).unwrap();
            }
            // 64 MiB cannot sit in two socket buffers: the peer's background
            // thread read it while the peer was busy.
            assert!(
                start.elapsed() < std::time::Duration::from_secs(20),
                "sends stalled for {:?}",
                start.elapsed()
            );
            ep.send(1, 10, &[]).unwrap();
        } else {
            // "Compute" (no transport calls) until the sender is done.
            std::thread::sleep(std::time::Duration::from_millis(1500));
            ep.recv(Source::Rank(0), 10).unwrap();
            for i in 0..COUNT {
                let m = ep.recv(Source::Rank(0), 9).unwrap();
                assert!(m.data == pattern(LEN, i), "message {i} corrupted");
            }
        }
        ep.barrier().unwrap();
    });
}

/// Two ranks stream large messages at each other at the same time with no
/// receive posted until both are done sending: each side's reading must keep
/// going while its own writes block.
#[test]
fn tcp_simultaneous_large_sends_do_not_deadlock() {
    job(&[0, 1], TcpBackend::Auto, |ep, _| {
        let peer = 1 - ep.rank();
        for i in 0..16u32 {
            ep.send(peer, 21, &pattern(4 << 20, i)).unwrap();
        }
        for i in 0..16u32 {
            let m = ep.recv(Source::Rank(peer), 21).unwrap();
            assert!(m.data == pattern(4 << 20, i), "message {i} corrupted");
        }
        ep.barrier().unwrap();
    });
}
