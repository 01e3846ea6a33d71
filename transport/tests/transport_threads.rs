//! Endpoints of several ranks inside one test process (one thread per rank):
//! quick checks of the protocol paths; the multi-process tests live in the
//! `lumen` crate's tests.

mod common;
use common::*;
use std::sync::Arc;

use lumen_transport::{Endpoint, Source, TcpBackend};

fn all_to_all(ep: &Endpoint, sizes: &[usize]) {
    let (me, n) = (ep.rank(), ep.size());
    for (round, &len) in sizes.iter().enumerate() {
        let tag = 100 + round as u64;
        // Post sends from a helper thread so large rendezvous sends cannot block the receives.
        let sender = {
            let ep = ep.clone();
            std::thread::spawn(move || {
                for d in 1..n {
                    let dst = (me + d) % n;
                    ep.send(dst, tag, &pattern(len, me * 1000 + dst)).unwrap();
                }
            })
        };
        for _ in 1..n {
            let m = ep.recv(Source::Any, tag).unwrap();
            assert_eq!(m.data.len(), len);
            assert!(
                m.data == pattern(len, m.src * 1000 + me),
                "corrupted {len}-byte message from {}",
                m.src
            );
        }
        sender.join().unwrap();
    }
}

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
