//! Fuzz harnesses of the transport's decoders that face the network
//! (lumen_testkit::fuzz; `LUMEN_FUZZ_ITERS` inputs each): the frame
//! decoder a TCP reader feeds with whatever arrives, the control messages
//! (hello, challenge, get requests, reasons), and the accepting side of the
//! handshake given a byte stream from a stranger. None may panic or hang,
//! and no stranger's bytes may pass the handshake.

use std::io::{Cursor, Read, Write};
use std::time::Duration;

use lumen_testkit::fuzz::{fuzz, iterations};
use lumen_transport::frame::{encode_frame, FrameDecoder, FrameHeader, FrameKind, HEADER_LEN};
use lumen_transport::{handshake, wire, JobSecret};

const HANG: Duration = Duration::from_secs(1);

fn frames() -> Vec<Vec<u8>> {
    let mut seeds = Vec::new();
    for (i, len) in [0u32, 1, 17, 300].into_iter().enumerate() {
        let payload = vec![i as u8; len as usize];
        seeds.push(encode_frame(
            &FrameHeader::data(3, 0x55 + i as u64, len, u64::from(len), false),
            &payload,
        ));
        seeds.push(encode_frame(
            &FrameHeader::control(FrameKind::Hello, 1, len),
            &payload,
        ));
    }
    let mut two = seeds[0].clone();
    two.extend_from_slice(&seeds[3]);
    seeds.push(two);
    seeds
}

#[test]
fn frame_stream() {
    fuzz("frames", &frames(), iterations(), |input| {
        let mut decoder = FrameDecoder::new(1 << 16);
        // In pieces, as reads deliver them.
        for piece in input.chunks(7) {
            if decoder.feed(piece, |_| {}).is_err() {
                break;
            }
        }
        if input.len() >= HEADER_LEN {
            let mut header = [0u8; HEADER_LEN];
            header.copy_from_slice(&input[..HEADER_LEN]);
            let _ = FrameHeader::decode(&header, 1 << 16);
        }
    })
    .assert_clean(HANG);
}

#[test]
fn control_messages() {
    let seeds = vec![
        wire::encode_proof(&[7u8; 32]),
        wire::encode_reason(false, "this endpoint belongs to job 12"),
        wire::encode_reason(true, "bye"),
    ];
    fuzz("control", &seeds, iterations(), |input| {
        let _ = wire::decode_proof(input);
        let _ = wire::decode_reason(false, input);
        let _ = wire::decode_reason(true, input);
        let _ = wire::HelloMsg::decode(input);
        let _ = wire::ChallengeMsg::decode(input);
        let _ = wire::ReadyToSendMsg::decode(input);
        let _ = wire::GetRequestMsg::decode(input);
        let _ = wire::GetGrantMsg::decode(input);
    })
    .assert_clean(HANG);
}

/// A byte stream from a peer; what the acceptor writes back is dropped.
struct Stranger(Cursor<Vec<u8>>);

impl Read for Stranger {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.read(buf)
    }
}

impl Write for Stranger {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// What a real initiator of job `job` sends first (its hello).
struct Recorder(Vec<u8>);

impl Read for Recorder {
    fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
        Ok(0)
    }
}

impl Write for Recorder {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn handshake_from_strangers() {
    let secret = JobSecret::from_bytes([9; 32]);
    let mut hello = Recorder(Vec::new());
    let _ = handshake::initiate(&mut hello, "job-7", 2, &secret);
    let mut with_proof = hello.0.clone();
    with_proof.extend_from_slice(&encode_frame(
        &FrameHeader::control(FrameKind::Proof, 2, 34),
        &wire::encode_proof(&[1u8; 32]),
    ));
    let seeds = vec![hello.0, with_proof];
    let report = fuzz("handshake", &seeds, iterations(), |input| {
        let mut stream = Stranger(Cursor::new(input.to_vec()));
        if let Ok(rank) = handshake::accept(&mut stream, "job-7", 0, &secret) {
            panic!("a stranger passed the handshake as rank {rank}");
        }
    });
    report.assert_clean(HANG);
}
