//! Connecting on first use (`TcpConnect::Lazy`): ranks on different
//! "nodes" of one test process open only the connections their traffic
//! needs, both sides connecting at once is sorted out without losing or
//! reordering a message, a goodbye is never taken for a death, and a send
//! to a rank that is gone fails within the connect timeout.

mod common;
use common::*;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use lumen_transport::{Source, TcpConnect, TcpConnections, TransportConfig, TransportError};

fn lazy() -> TransportConfig {
    TransportConfig {
        tcp_connect: TcpConnect::Lazy,
        ..TransportConfig::default()
    }
}

const SIZES: &[usize] = &[0, 8, 4096, 300_000, 4 << 20];

#[test]
fn lazy_all_to_all_four_nodes() {
    let before = Arc::new(Barrier::new(4));
    job_with_config(&[0, 1, 2, 3], lazy(), move |ep, _| {
        let connections = ep.tcp_connections();
        before.wait(); // every rank has counted before any sends
        assert_eq!(
            connections.connected, 0,
            "nothing is connected before the first send"
        );
        all_to_all(&ep, SIZES);
        let c = ep.tcp_connections();
        assert_eq!(c.connected, 3);
        assert!(
            c.opened_on_first_use + c.accepted_on_first_use >= 3,
            "{c:?}"
        );
    });
}

/// Connections made on first use reach the io_uring receiver too (the
/// eventfd it polls through its ring wakes it).
#[test]
fn lazy_ping_pong_through_io_uring() {
    let config = TransportConfig {
        tcp_backend: lumen_transport::TcpBackend::Uring,
        ..lazy()
    };
    job_with_config(&[0, 1, 2], config, |ep, _| {
        assert_eq!(ep.tcp_backend(), "io_uring");
        let (me, n) = (ep.rank(), ep.size());
        for round in 0..20u32 {
            let to = (me + 1 + round % (n - 1)) % n;
            let from = (me + n - 1 - round % (n - 1)) % n;
            ep.send(to, 40, &pattern(3000, round)).unwrap();
            let m = ep.recv(Source::Rank(from), 40).unwrap();
            assert!(m.data == pattern(3000, round), "corrupted from {from}");
        }
    });
}

#[test]
fn lazy_ring_opens_only_what_it_uses() {
    let nodes: Vec<u32> = (0..6).collect();
    // Counted while every rank is between its exchange and the harness's
    // closing barrier (which connects further peers).
    let counted = Arc::new(Barrier::new(nodes.len()));
    job_with_config(&nodes, lazy(), move |ep, _| {
        let (me, n) = (ep.rank(), ep.size());
        let next = (me + 1) % n;
        let prev = (me + n - 1) % n;
        for i in 0..50u32 {
            ep.send(next, 5, &i.to_le_bytes()).unwrap();
        }
        for i in 0..50u32 {
            let m = ep.recv(Source::Rank(prev), 5).unwrap();
            assert_eq!(m.data, i.to_le_bytes(), "out of order from {prev}");
        }
        counted.wait();
        let connections = ep.tcp_connections();
        counted.wait();
        // The one it opened toward `next`, and the one `prev` opened toward it.
        assert_eq!(
            connections,
            TcpConnections {
                connected: 2,
                opened_on_first_use: 1,
                accepted_on_first_use: 1,
            }
        );
    });
}

#[test]
fn lazy_simultaneous_first_sends_keep_order_and_part_cleanly() {
    for _ in 0..5 {
        let start = Arc::new(Barrier::new(2));
        job_raw(&[0, 1], lazy(), move |ep, _| {
            let other = 1 - ep.rank();
            start.wait(); // both send their first message at the same moment
            for i in 0..200u32 {
                let len = if i % 40 == 0 { 200_000 } else { 4 };
                let mut data = pattern(len, i);
                data[..4].copy_from_slice(&i.to_le_bytes());
                ep.send(other, 9, &data).unwrap();
            }
            for i in 0..200u32 {
                let m = ep.recv(Source::Rank(other), 9).unwrap();
                assert_eq!(m.data[..4], i.to_le_bytes(), "out of order from {other}");
            }
            let c = ep.tcp_connections();
            assert_eq!(c.connected, 1, "{c:?}");
            ep.barrier().unwrap();
            if ep.rank() == 1 {
                ep.close();
                return;
            }
            // Rank 1 left with a goodbye (on every connection it had): a
            // departure, never a death, however the two connections raced.
            let started = Instant::now();
            match ep.recv(Source::Rank(1), 10) {
                Err(TransportError::PeerClosed { rank: 1 }) => {}
                other => panic!("expected rank 1 to have closed its endpoint, got {other:?}"),
            }
            assert!(started.elapsed() < Duration::from_secs(10));
            ep.close();
        });
    }
}

#[test]
fn lazy_send_to_a_rank_that_left_fails_within_the_connect_timeout() {
    let left = Arc::new(Barrier::new(2));
    let config = TransportConfig {
        connect_timeout: Duration::from_secs(1),
        ..lazy()
    };
    job_raw(&[0, 1], config, move |ep, _| {
        if ep.rank() == 1 {
            ep.close();
            left.wait();
            return;
        }
        left.wait();
        let started = Instant::now();
        let error = ep.send(1, 3, b"anyone?").unwrap_err();
        let text = error.to_string();
        assert!(text.contains("rank 1"), "the error names the rank: {text}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "bounded: {:?}",
            started.elapsed()
        );
        ep.close();
    });
}
