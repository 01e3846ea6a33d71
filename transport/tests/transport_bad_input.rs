//! Hostile and broken input sent to a listening rank: random bytes, truncated
//! and oversized frames, a client with the wrong secret, a peer from another
//! job, and an authenticated connection that then sends garbage or spoofs
//! another rank. Each is refused or closed, and the rank keeps serving its
//! real peers afterwards.

mod common;
use common::*;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use lumen_transport::frame::{encode_frame, FrameHeader, FrameKind, MAGIC, VERSION};
use lumen_transport::{handshake, JobSecret, Source, TcpBackend};

/// True when the peer closes the connection within a few seconds.
fn closed_by_peer(mut stream: TcpStream) -> bool {
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue, // a refusal frame may come first
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                return false
            }
            Err(_) => return true,
        }
    }
}

fn attack(target: SocketAddr, job_id: &str, secret: &JobSecret) {
    // 1. Random bytes.
    let mut s = TcpStream::connect(target).unwrap();
    let noise: Vec<u8> = (0..500u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let _ = s.write_all(&noise);
    assert!(closed_by_peer(s), "random bytes must close the connection");

    // 2. A valid header announcing a 1 GiB handshake frame.
    let mut s = TcpStream::connect(target).unwrap();
    let _ = s.write_all(&FrameHeader::control(FrameKind::Hello, 0, 1 << 30).encode());
    assert!(
        closed_by_peer(s),
        "oversized frame must close the connection"
    );

    // 3. Truncated: half a header, then hang up (must not wedge the acceptor).
    let mut s = TcpStream::connect(target).unwrap();
    let _ = s.write_all(&MAGIC.to_le_bytes());
    let _ = s.write_all(&[VERSION]);
    drop(s);

    // 4. Wrong version.
    let mut s = TcpStream::connect(target).unwrap();
    let mut header = FrameHeader::control(FrameKind::Hello, 0, 4).encode();
    header[4] = VERSION + 1;
    let _ = s.write_all(&header);
    assert!(closed_by_peer(s), "wrong version must close the connection");

    // 5. Wrong secret: the handshake fails on both sides.
    let mut s = TcpStream::connect(target).unwrap();
    let err = handshake::initiate(&mut s, job_id, 0, &JobSecret::random()).unwrap_err();
    assert!(err.to_string().contains("secret"), "{err}");

    // 6. A peer from another job is refused with a reason.
    let mut s = TcpStream::connect(target).unwrap();
    let err = handshake::initiate(&mut s, "some-other-job", 0, secret).unwrap_err();
    assert!(err.to_string().contains("refused"), "{err}");

    // 7. Authenticated as rank 0, then garbage: that connection is closed.
    let mut s = TcpStream::connect(target).unwrap();
    handshake::initiate(&mut s, job_id, 0, secret).unwrap();
    let _ = s.write_all(b"this is not a frame at all, not even close......");
    assert!(
        closed_by_peer(s),
        "garbage after the handshake must close the connection"
    );

    // 8. Authenticated as rank 0, then a data frame claiming to come from rank 1.
    let mut s = TcpStream::connect(target).unwrap();
    handshake::initiate(&mut s, job_id, 0, secret).unwrap();
    let _ = s.write_all(&encode_frame(&FrameHeader::data(1, 9, 3, 3, false), b"abc"));
    assert!(
        closed_by_peer(s),
        "a spoofed source rank must close the connection"
    );

    // 9. Authenticated, then a data chunk longer than its announced message.
    let mut s = TcpStream::connect(target).unwrap();
    handshake::initiate(&mut s, job_id, 0, secret).unwrap();
    let mut bad = FrameHeader::data(0, 9, 3, 3, false).encode();
    bad[24..32].copy_from_slice(&1u64.to_le_bytes());
    let _ = s.write_all(&bad);
    let _ = s.write_all(b"abc");
    assert!(
        closed_by_peer(s),
        "an inconsistent frame must close the connection"
    );

    // 10. Authenticated (a late, secondary connection), then a striped-message
    // announcement, which only a primary connection may make: it would hold
    // back every later message of that rank.
    let mut s = TcpStream::connect(target).unwrap();
    handshake::initiate(&mut s, job_id, 0, secret).unwrap();
    let mut begin = FrameHeader::control(FrameKind::StripeBegin, 0, 8);
    begin.aux = 1 << 20;
    let _ = s.write_all(&encode_frame(&begin, &7u64.to_le_bytes()));
    assert!(
        closed_by_peer(s),
        "a stripe announcement on a secondary connection must close it"
    );

    // 11. Authenticated, then the first chunk of a message announced at
    // 2^62 bytes: refused before anything is allocated for it (this once
    // reserved the announced size and aborted the process).
    let mut s = TcpStream::connect(target).unwrap();
    handshake::initiate(&mut s, job_id, 0, secret).unwrap();
    let _ = s.write_all(&encode_frame(
        &FrameHeader::data(0, 9, 3, 1 << 62, true),
        b"abc",
    ));
    assert!(
        closed_by_peer(s),
        "a message above the limit must close the connection"
    );
}

/// `max_message` (`LUMEN_MAX_MESSAGE_BYTES`): a larger send fails at once
/// with an error naming the limit, over shared memory and TCP, and the
/// endpoint goes on working.
#[test]
fn a_message_above_the_limit_is_refused_by_its_sender() {
    let config = lumen_transport::TransportConfig {
        max_message: 64 << 10,
        ..lumen_transport::TransportConfig::default()
    };
    job_with_config(&[0, 0, 1], config, |ep, _| {
        let me = ep.rank();
        for peer in (0..ep.size()).filter(|&p| p != me) {
            let err = ep.send(peer, 3, &pattern(100_000, me)).unwrap_err();
            assert!(
                matches!(
                    err,
                    lumen_transport::TransportError::MessageTooLarge {
                        bytes: 100_000,
                        limit: 65536,
                        ..
                    }
                ),
                "{err}"
            );
            assert!(err.to_string().contains("LUMEN_MAX_MESSAGE_BYTES"), "{err}");
            ep.send(peer, 3, &pattern(60_000, me)).unwrap();
        }
        for _ in 1..ep.size() {
            let m = ep.recv(Source::Any, 3).unwrap();
            assert_eq!(m.data, pattern(60_000, m.src));
        }
        ep.barrier().unwrap();
    });
}

#[test]
fn hostile_input_is_rejected_and_the_rank_keeps_serving() {
    for backend in [TcpBackend::Uring, TcpBackend::Epoll] {
        job(&[0, 0, 1], backend, |ep, info| {
            let me = ep.rank();
            if me == 0 {
                attack(info.addresses[2].tcp, &info.job_id, &info.secret);
            }
            ep.barrier().unwrap();
            // Everyone still talks to everyone, over shm and TCP.
            for peer in (0..ep.size()).filter(|&p| p != me) {
                ep.send(peer, 3, &pattern(100_000, me)).unwrap();
            }
            for _ in 1..ep.size() {
                let m = ep.recv(Source::Any, 3).unwrap();
                assert_eq!(m.data, pattern(100_000, m.src));
            }
        });
    }
}
