//! Object-store micro-benchmark, each row beside its anchor in the same run:
//! - put (create + copy + seal, then release) vs `memcpy` of the same size
//!   into a pre-faulted buffer;
//! - get + drop of a view (pin/unpin) for a small and a large object;
//! - pull between two endpoints (threads of this process, on two "nodes":
//!   TCP over loopback; and on one node: shared memory) vs the transport's
//!   raw two-sided bandwidth for the same bytes in the same message size, and
//!   vs the one-sided `Endpoint::get` of a registered region.
//!
//! Run: `cargo run --release -p lumen-objstore --example objstore_bench`
//! (`--quick` for smaller sizes).

use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use lumen_objstore::{pull, ArenaOptions, NodeArena, ObjectId, ObjectServer, PullOptions};
use lumen_transport::{
    Endpoint, EndpointBuilder, EndpointOptions, JobSecret, PeerAddress, Source, TransportConfig,
};

fn gbps(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / d.as_secs_f64() / 1e9
}

fn best_of(reps: usize, mut f: impl FnMut() -> Duration) -> Duration {
    (0..reps).map(|_| f()).min().unwrap_or_default()
}

fn main() -> anyhow::Result<()> {
    let quick = std::env::args().any(|a| a == "--quick");
    let big: u64 = if quick { 64 << 20 } else { 256 << 20 };
    let name = format!("lumen-objbench-{}", std::process::id());
    let arena = NodeArena::create(&name, big + (64 << 20), ArenaOptions::default())?;
    println!("# lumen-objstore bench (best of several runs; other builds may share the CPU)");
    println!(
        "{:<34} {:>12} {:>12} {:>8}",
        "row", "lumen", "anchor", "ratio"
    );

    // put vs memcpy
    for size in [1u64 << 20, 64 << 20, big] {
        let src = vec![0x5au8; size as usize];
        let mut dst = vec![0u8; size as usize];
        dst.copy_from_slice(&src); // fault the pages in
        let id = ObjectId::new(1, size);
        arena.put_bytes(id, &src)?; // fault the arena pages in
        arena.release(id)?;
        let reps = if size >= 64 << 20 { 5 } else { 50 };
        let put = best_of(reps, || {
            let t = Instant::now();
            arena.put_bytes(id, &src).expect("put");
            let d = t.elapsed();
            arena.release(id).expect("release");
            d
        });
        let copy = best_of(reps, || {
            let t = Instant::now();
            dst.copy_from_slice(std::hint::black_box(&src));
            std::hint::black_box(&dst);
            t.elapsed()
        });
        println!(
            "{:<34} {:>8.2} GB/s {:>7.2} GB/s {:>8.2}",
            format!("put {} MiB vs memcpy", size >> 20),
            gbps(size, put),
            gbps(size, copy),
            gbps(size, put) / gbps(size, copy)
        );
    }

    // get + drop: independent of size
    for size in [1024u64, big] {
        let id = ObjectId::new(2, size);
        let mut w = arena.create_object(id, size)?;
        w.fill(1);
        w.seal()?;
        let n = 100_000;
        let t = Instant::now();
        for _ in 0..n {
            let v = arena.get(id)?.expect("present");
            std::hint::black_box(v.len());
        }
        let per = t.elapsed() / n;
        println!(
            "{:<34} {:>9} ns {:>12} {:>8}",
            format!("get+drop view of {} B", size),
            per.as_nanos(),
            "-",
            "-"
        );
        arena.release(id)?;
    }
    // small put + release rate
    {
        let n = 100_000u64;
        let t = Instant::now();
        for i in 0..n {
            let id = ObjectId::new(3, i + 1);
            arena.put_bytes(id, &[7u8; 64])?;
            arena.release(id)?;
        }
        let per = t.elapsed() / n as u32;
        println!(
            "{:<34} {:>9} ns {:>12} {:>8}",
            "put+release 64 B",
            per.as_nanos(),
            "-",
            "-"
        );
    }
    drop(arena);
    NodeArena::unlink(&name)?;

    for (label, nodes) in [("tcp", [0u32, 1]), ("shm", [0, 0])] {
        let results = two_ranks(&nodes, big)?;
        for (row, lumen, anchor) in results {
            println!(
                "{:<34} {:>7.2} GB/s {:>7.2} GB/s {:>8.2}",
                format!("{label}: {row}"),
                lumen,
                anchor,
                lumen / anchor
            );
        }
    }
    Ok(())
}

const GO: u64 = 0x51;
const DATA: u64 = 0x53;
const KEY: u64 = 0x54;

/// Runs rank 0 (server) and rank 1 (puller) as threads; rank 1 returns rows
/// (name, lumen GB/s, anchor GB/s).
fn two_ranks(nodes: &[u32; 2], big: u64) -> anyhow::Result<Vec<(String, f64, f64)>> {
    let rows = Arc::new(Mutex::new(Vec::new()));
    let out = rows.clone();
    run_job(nodes, move |ep| {
        let me = ep.rank();
        let name = format!("lumen-objbench-{}-r{me}", std::process::id());
        let arena =
            NodeArena::create(&name, big + (16 << 20), ArenaOptions::default()).expect("arena");
        let id = ObjectId::new(9, 9);
        let reps = 3;
        let chunks = [1u64 << 20, 8 << 20, 16 << 20];
        if me == 0 {
            let _server = ObjectServer::register(&ep, &arena).expect("server");
            let mut w = arena.create_object(id, big).expect("create");
            w.fill(3);
            w.seal().expect("seal");
            let region: Arc<[u8]> = vec![3u8; big as usize].into();
            let key = ep.register_region(region);
            ep.send(1, KEY, &key.0.to_le_bytes()).expect("send key");
            // Raw two-sided anchor: each GO names a message size; the bytes
            // follow in messages of that size. GO with 0 ends the benchmark.
            // Pulls and gets are served (by the handler) while this waits.
            let payload = vec![3u8; 16 << 20];
            loop {
                let go = ep.recv(Source::Rank(1), GO).expect("go");
                let chunk = u64::from_le_bytes(go.data.try_into().expect("8 bytes"));
                if chunk == 0 {
                    break;
                }
                let mut off = 0;
                while off < big {
                    let n = chunk.min(big - off);
                    ep.send(1, DATA, &payload[..n as usize]).expect("send");
                    off += n;
                }
            }
        } else {
            let key = ep.recv(Source::Rank(0), KEY).expect("key");
            let key = lumen_transport::RegionKey(u64::from_le_bytes(
                key.data.try_into().expect("8 bytes"),
            ));
            let raw = |chunk: u64| {
                let t = Instant::now();
                ep.send(0, GO, &chunk.to_le_bytes()).expect("go");
                let mut got = 0;
                while got < big {
                    got += ep.recv(Source::Rank(0), DATA).expect("data").data.len() as u64;
                }
                t.elapsed()
            };
            let pulled = |options: &PullOptions| {
                let t = Instant::now();
                let view = pull(&arena, &ep, 0, id, big, options).expect("pull");
                let d = t.elapsed();
                drop(view);
                arena.release(id).expect("release");
                d
            };
            let got = |chunk: u64| {
                let t = Instant::now();
                let mut off = 0;
                while off < big {
                    let n = chunk.min(big - off);
                    let bytes = ep.get(0, key, off, n).expect("get");
                    std::hint::black_box(bytes.len());
                    off += n;
                }
                t.elapsed()
            };
            let mut rows = Vec::new();
            for &chunk in &chunks {
                // Interleave the variants so that load from other processes
                // hits them alike; keep the best of each.
                let variants = [(1u32, false), (4, false), (4, true)];
                let mut best = [Duration::MAX; 5];
                for _ in 0..reps {
                    best[0] = best[0].min(raw(chunk));
                    for (v, &(window, copy_thread)) in variants.iter().enumerate() {
                        let options = PullOptions {
                            chunk_bytes: chunk,
                            window,
                            copy_thread,
                            ..PullOptions::default()
                        };
                        best[1 + v] = best[1 + v].min(pulled(&options));
                    }
                    best[4] = best[4].min(got(chunk));
                }
                for (v, &(window, copy_thread)) in variants.iter().enumerate() {
                    rows.push((
                        format!(
                            "pull {}MiB w{window}{} vs send/recv",
                            chunk >> 20,
                            if copy_thread { " +copier" } else { "" }
                        ),
                        gbps(big, best[1 + v]),
                        gbps(big, best[0]),
                    ));
                }
                rows.push((
                    format!("pull {}MiB w4 +copier vs 1-sided get", chunk >> 20),
                    gbps(big, best[3]),
                    gbps(big, best[4]),
                ));
            }
            ep.send(0, GO, &0u64.to_le_bytes()).expect("end");
            *out.lock().expect("rows") = rows;
        }
        drop(arena);
        let _ = NodeArena::unlink(&name);
    });
    let rows = rows.lock().map(|r| r.clone()).unwrap_or_default();
    Ok(rows)
}

fn run_job(nodes: &[u32; 2], body: impl Fn(Endpoint) + Send + Sync + 'static) {
    let size = nodes.len() as u32;
    let job_id = format!("objbench{}", std::process::id());
    let secret = JobSecret::random();
    let table = Arc::new(Mutex::new(vec![None::<PeerAddress>; nodes.len()]));
    let barrier = Arc::new(Barrier::new(nodes.len()));
    let body = Arc::new(body);
    let threads: Vec<_> = (0..size)
        .map(|rank| {
            let (table, barrier, body, secret, job_id) = (
                table.clone(),
                barrier.clone(),
                body.clone(),
                secret.clone(),
                job_id.clone(),
            );
            let nodes = *nodes;
            std::thread::spawn(move || {
                let node = nodes[rank as usize];
                let local: Vec<u32> = (0..size).filter(|&r| nodes[r as usize] == node).collect();
                let options = EndpointOptions {
                    rank,
                    size,
                    node,
                    local_rank: local.iter().position(|&r| r == rank).unwrap_or(0) as u32,
                    local_size: local.len() as u32,
                    job_id: format!("{job_id}-{}", nodes[0] == nodes[1]),
                    secret,
                    config: TransportConfig::default(),
                };
                let builder = EndpointBuilder::new(options).expect("endpoint");
                table.lock().expect("table")[rank as usize] = Some(builder.address().clone());
                barrier.wait();
                let peers: Vec<PeerAddress> = table
                    .lock()
                    .expect("table")
                    .iter()
                    .map(|p| p.clone().expect("address"))
                    .collect();
                let endpoint = builder
                    .connect(&peers, || {
                        barrier.wait();
                        Ok::<(), String>(())
                    })
                    .expect("connect");
                body(endpoint.clone());
                let _ = endpoint.barrier();
                endpoint.close();
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
}
