//! The optional TCP send paths: zero-copy sends (`tcp_zerocopy_min`) and the
//! default-off malloc tuning, with data verified in both directions at once.

mod common;

use common::*;
use lumen_transport::{Endpoint, Source, TcpBackend, TransportConfig};

/// Sizes around the zero-copy threshold and across frame boundaries.
const SIZES: &[usize] = &[
    0,
    1,
    4095,
    32 * 1024 - 1,
    32 * 1024,
    100_000,
    1 << 20,
    (3 << 20) + 17,
    16 << 20,
];

/// Both ranks send every size to each other before receiving, then check
/// order and contents; the sender's buffer is overwritten right after `send`
/// returns, which must not change what the peer receives.
fn exchange(ep: &Endpoint) {
    let peer = 1 - ep.rank();
    let mut buffer = Vec::new();
    for (i, &size) in SIZES.iter().enumerate() {
        buffer.clear();
        buffer.extend_from_slice(&pattern(size, i as u32 + ep.rank() * 100));
        ep.send(peer, 40, &buffer).unwrap();
        // `send` returned: the buffer is ours again (zero-copy must have completed).
        buffer.iter_mut().for_each(|b| *b = !*b);
    }
    for (i, &size) in SIZES.iter().enumerate() {
        let m = ep.recv(Source::Rank(peer), 40).unwrap();
        assert_eq!(m.data.len(), size, "message {i} has the wrong length");
        assert!(
            m.data == pattern(size, i as u32 + peer * 100),
            "message {i} ({size} bytes) corrupted or out of order"
        );
    }
}

#[test]
fn tcp_zerocopy_sends_both_directions() {
    let config = TransportConfig {
        tcp_backend: TcpBackend::Auto,
        tcp_zerocopy_min: 32 * 1024,
        ..TransportConfig::default()
    };
    job_with_config(&[0, 1], config, |ep, _| {
        for _ in 0..3 {
            exchange(&ep);
        }
        ep.barrier().unwrap();
    });
}

#[test]
fn tcp_zerocopy_with_small_frames() {
    // Many zero-copy send calls per message (one per 64 KiB frame).
    let config = TransportConfig {
        tcp_zerocopy_min: 1,
        max_frame: 64 * 1024,
        ..TransportConfig::default()
    };
    job_with_config(&[0, 1], config, |ep, _| {
        exchange(&ep);
        ep.barrier().unwrap();
    });
}

#[test]
fn tcp_without_malloc_tuning() {
    let config = TransportConfig {
        tune_malloc: false,
        ..TransportConfig::default()
    };
    job_with_config(&[0, 1], config, |ep, _| {
        exchange(&ep);
        ep.barrier().unwrap();
    });
}

/// Several connections per peer: messages from 32 KiB up are striped, the
/// smaller ones between them must stay in order; both directions at once.
fn striped(backend: TcpBackend, max_frame: u32) {
    let config = TransportConfig {
        tcp_backend: backend,
        tcp_conns: 3,
        tcp_stripe_min: 32 * 1024,
        max_frame,
        ..TransportConfig::default()
    };
    job_with_config(&[0, 1], config, |ep, _| {
        for _ in 0..2 {
            exchange(&ep);
        }
        ep.barrier().unwrap();
    });
}

#[test]
fn tcp_striped_over_several_connections() {
    striped(TcpBackend::Auto, 64 << 20);
}

#[test]
fn tcp_striped_with_many_frames_per_lane() {
    striped(TcpBackend::Auto, 64 * 1024);
}

#[test]
fn tcp_striped_through_io_uring() {
    striped(TcpBackend::Uring, 256 * 1024);
}
