//! The transport's codec, the work on every message: the 32-byte frame
//! header (`lumen_transport::frame`), the stream decoder a TCP reader feeds,
//! and the verified flatbuffers control messages (`lumen_transport::wire`).

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use lumen_transport::frame::{encode_frame, FrameDecoder, FrameHeader};
use lumen_transport::wire::{HelloMsg, ReadyToSendMsg};

fn header(c: &mut Criterion) {
    let header = FrameHeader::data(3, 0x8000_0042, 4096, 4096, false);
    let bytes = header.encode();
    c.bench_function("frame/header encode", |b| {
        b.iter(|| black_box(black_box(&header).encode()))
    });
    c.bench_function("frame/header decode", |b| {
        b.iter(|| FrameHeader::decode(black_box(&bytes), u32::MAX).expect("a valid header"))
    });
}

/// A stream of 64 data frames of `size` bytes, fed in 64 KiB reads (one
/// `recv` each), as the TCP reader does.
fn decoder(c: &mut Criterion) {
    const FRAMES: usize = 64;
    const READ: usize = 64 << 10;
    let mut group = c.benchmark_group("frame/decoder feed");
    for size in [8usize, 4096, 65536] {
        let payload = vec![0x5a_u8; size];
        let stream: Vec<u8> = (0..FRAMES)
            .flat_map(|_| {
                let header = FrameHeader::data(1, 7, size as u32, size as u64, false);
                encode_frame(&header, &payload)
            })
            .collect();
        group.throughput(Throughput::Bytes(stream.len() as u64));
        group.bench_with_input(BenchmarkId::from_parameter(size), &stream, |b, stream| {
            b.iter(|| {
                let mut decoder = FrameDecoder::new(u32::MAX);
                let mut frames = 0;
                for chunk in stream.chunks(READ) {
                    decoder
                        .feed(chunk, |frame| {
                            frames += 1;
                            black_box(frame);
                        })
                        .expect("a valid stream");
                }
                assert_eq!(frames, FRAMES);
            })
        });
    }
    group.finish();
    c.bench_function("frame/encode 8 B frame", |b| {
        let header = FrameHeader::data(1, 7, 8, 8, false);
        b.iter(|| black_box(encode_frame(black_box(&header), black_box(&[1u8; 8]))))
    });
}

fn wire(c: &mut Criterion) {
    let rts = ReadyToSendMsg {
        cookie: 17,
        len: 1 << 20,
        pid: 4242,
        addr: 0x7f00_dead_beef,
    };
    let rts_bytes = rts.encode();
    c.bench_function("wire/ready-to-send encode", |b| {
        b.iter(|| black_box(black_box(&rts).encode()))
    });
    c.bench_function("wire/ready-to-send decode", |b| {
        b.iter(|| ReadyToSendMsg::decode(black_box(&rts_bytes)).expect("a valid message"))
    });
    let hello = HelloMsg {
        protocol: 1,
        job_id: "j1234567890abcdef".to_string(),
        rank: 5,
        nonce: vec![9u8; 32],
    };
    let hello_bytes = hello.encode();
    c.bench_function("wire/hello encode", |b| {
        b.iter(|| black_box(black_box(&hello).encode()))
    });
    c.bench_function("wire/hello decode", |b| {
        b.iter(|| HelloMsg::decode(black_box(&hello_bytes)).expect("a valid message"))
    });
}

criterion_group!(benches, header, decoder, wire);
criterion_main!(benches);
