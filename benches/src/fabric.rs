//! `lumen bench fabric` (feature `ofi`): Lumen's one-sided reads on a
//! libfabric provider beside libfabric's own `fi_pingpong` (Debian
//! `libfabric-bin`) on the same provider, both between two processes of
//! this machine (`tcp;ofi_rxm` over loopback, and `shm`), measured in the
//! same invocation, rounds alternating; medians and ratios.
//!
//! What is compared: a Lumen read of `size` bytes is a full round trip
//! (the request goes to the peer, the bytes come back), timed one read at
//! a time for latency and with 16 reads in flight for bandwidth;
//! `fi_pingpong`'s `usec/xfer` is half of its ping-pong round trip, so the
//! latency ratio is taken against twice that (a like-for-like round trip),
//! and its MB/s as it reports it.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use lumen_transport::fabric::ofi::OfiEndpoint;
use lumen_transport::fabric::RemoteKey;
use serde::Serialize;

const JOB: u64 = 0xbe7c;
const REGION: usize = 64 << 20;

/// Options of `lumen bench fabric`.
#[derive(Debug, Clone)]
pub struct FabricBenchOptions {
    /// Providers to measure.
    pub providers: Vec<String>,
    /// Transfer sizes in bytes.
    pub sizes: Vec<usize>,
    /// Rounds (Lumen and fi_pingpong alternate).
    pub rounds: usize,
    /// Iteration scale (1.0 full, 0.05 smoke).
    pub scale: f64,
}

/// One measured row.
#[derive(Debug, Clone, Serialize)]
pub struct FabricRow {
    /// The provider.
    pub provider: String,
    /// Bytes per transfer.
    pub size: usize,
    /// Lumen: one read at a time, µs per read (a round trip).
    pub lumen_read_us: f64,
    /// fi_pingpong: µs per transfer (half a round trip), as it reports.
    pub pingpong_us: f64,
    /// `lumen_read_us / (2 * pingpong_us)`: below 1 is faster.
    pub latency_ratio: f64,
    /// Lumen: 16 reads in flight, MB/s.
    pub lumen_mb_s: f64,
    /// fi_pingpong's MB/s.
    pub pingpong_mb_s: f64,
    /// `lumen_mb_s / pingpong_mb_s`.
    pub bandwidth_ratio: f64,
}

fn node_for(provider: &str) -> Option<&'static str> {
    (provider == "tcp;ofi_rxm").then_some("127.0.0.1")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> anyhow::Result<Vec<u8>> {
    (0..text.len() / 2)
        .map(|i| {
            u8::from_str_radix(&text[2 * i..2 * i + 2], 16).context("a hex address from the server")
        })
        .collect()
}

/// The serving process (`lumen-bench worker fabric-server PROVIDER`):
/// registers a region, prints its address and key, adds the client's
/// address from stdin, and serves until stdin closes.
pub fn server(provider: &str) -> anyhow::Result<()> {
    let ep = OfiEndpoint::open(provider, node_for(provider), JOB)?;
    let mut region = vec![0x5au8; REGION];
    // SAFETY: `region` outlives `ep` (dropped after it, below).
    let registered = unsafe { ep.register(region.as_mut_ptr(), region.len()) }?;
    println!(
        "ADDR {} KEY {}",
        hex(&ep.address()?),
        hex(&registered.key.to_bytes())
    );
    std::io::stdout().flush()?;
    let mut lines = std::io::stdin().lock().lines();
    let client = lines.next().context("the client's address")??;
    ep.insert_peer(&unhex(client.trim())?)?;
    // Served by the endpoint's progress thread until the client is done.
    for _ in lines {}
    drop(ep);
    drop(region);
    Ok(())
}

fn iterations(size: usize, scale: f64) -> usize {
    let base = if size <= 4096 {
        20_000
    } else {
        (256 << 20) / size.max(1)
    };
    ((base as f64 * scale) as usize).clamp(8, 200_000)
}

/// Lumen's side of one round on `provider`: (size, µs per read, MB/s).
fn lumen_round(
    provider: &str,
    sizes: &[usize],
    scale: f64,
) -> anyhow::Result<Vec<(usize, f64, f64)>> {
    let me = std::env::current_exe()?;
    let mut child = Command::new(me)
        .args(["worker", "fabric-server", provider])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("starting the fabric server")?;
    let mut stdin = child.stdin.take().context("its stdin")?;
    let stdout = child.stdout.take().context("its stdout")?;
    let line = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .find(|l| l.starts_with("ADDR "))
        .context("the server's address")?;
    let parts: Vec<&str> = line.split_whitespace().collect();
    if parts.len() != 4 {
        bail!("unexpected server line {line:?}");
    }
    let ep = Arc::new(OfiEndpoint::open(provider, node_for(provider), JOB)?);
    let peer = ep.insert_peer(&unhex(parts[1])?)?;
    let key = RemoteKey::from_bytes(&unhex(parts[3])?)?;
    writeln!(stdin, "{}", hex(&ep.address()?))?;
    stdin.flush()?;
    let mut local = vec![0u8; REGION];
    // SAFETY: `local` outlives every transfer below and `ep` (the threads
    // are joined before it drops).
    unsafe { ep.register(local.as_mut_ptr(), local.len()) }?;
    let base = local.as_mut_ptr() as usize;
    let t = Duration::from_secs(60);
    let mut out = Vec::new();
    for &size in sizes {
        let size = size.min(REGION / 16);
        let n = iterations(size, scale);
        // SAFETY: inside the registered local buffer.
        let slice = unsafe { std::slice::from_raw_parts_mut(base as *mut u8, size) };
        for _ in 0..n.min(100) {
            ep.read(peer, &key, 0, slice, t)?;
        }
        let started = Instant::now();
        for _ in 0..n {
            ep.read(peer, &key, 0, slice, t)?;
        }
        let latency_us = started.elapsed().as_secs_f64() * 1e6 / n as f64;
        // Bandwidth: 16 threads, one read in flight each, disjoint slices.
        let started = Instant::now();
        let threads: Vec<_> = (0..16usize)
            .map(|i| {
                let ep = ep.clone();
                std::thread::spawn(move || -> anyhow::Result<()> {
                    // SAFETY: thread i owns bytes [i * size, (i + 1) * size)
                    // of the registered buffer (size <= REGION / 16).
                    let mine = unsafe {
                        std::slice::from_raw_parts_mut((base + i * size) as *mut u8, size)
                    };
                    for _ in 0..n.div_ceil(16) {
                        ep.read(peer, &key, (i * size) as u64, mine, t)?;
                    }
                    Ok(())
                })
            })
            .collect();
        for thread in threads {
            thread
                .join()
                .map_err(|_| anyhow::anyhow!("a reader thread panicked"))??;
        }
        let bytes = (n.div_ceil(16) * 16 * size) as f64;
        let mb_s = bytes / started.elapsed().as_secs_f64() / 1e6;
        out.push((size, latency_us, mb_s));
    }
    drop(stdin);
    let _ = child.wait();
    drop(ep);
    drop(local);
    Ok(out)
}

/// fi_pingpong on `provider`, server and client on this machine: (µs per
/// transfer, MB/s) for `size`.
fn pingpong(provider: &str, size: usize, scale: f64) -> anyhow::Result<(f64, f64)> {
    let iters = iterations(size, scale).to_string();
    let size_arg = size.to_string();
    let mut args = vec!["-p", provider, "-e", "rdm", "-I", &iters, "-S", &size_arg];
    let port = "47592";
    args.extend(["-P", port]);
    let mut server = Command::new("fi_pingpong")
        .args(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting fi_pingpong (apt-get install libfabric-bin)")?;
    std::thread::sleep(Duration::from_millis(300));
    let mut client_args = args.clone();
    if provider == "tcp;ofi_rxm" {
        client_args.push("127.0.0.1");
    } else {
        client_args.push("localhost");
    }
    let output = Command::new("fi_pingpong").args(&client_args).output()?;
    let _ = server.wait();
    let text = String::from_utf8_lossy(&output.stdout);
    // bytes #sent #ack total time MB/sec usec/xfer Mxfers/sec
    for line in text.lines() {
        let cols: Vec<&str> = line.split_whitespace().collect();
        // It writes sizes as `8`, `64k`, `1m`; one size per run, so the
        // first data line is ours.
        if cols.len() >= 8 && cols[0].starts_with(|c: char| c.is_ascii_digit()) {
            let mb: f64 = cols[5].parse().context("fi_pingpong's MB/sec")?;
            let us: f64 = cols[6].parse().context("fi_pingpong's usec/xfer")?;
            return Ok((us, mb));
        }
    }
    bail!(
        "fi_pingpong -p {provider} -S {size} printed no result: {}{}",
        text,
        String::from_utf8_lossy(&output.stderr)
    )
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Runs the comparison (see the module docs).
pub fn run(options: &FabricBenchOptions) -> anyhow::Result<Vec<FabricRow>> {
    let mut rows = Vec::new();
    for provider in &options.providers {
        if let Err(e) = OfiEndpoint::open(provider, node_for(provider), JOB) {
            eprintln!("lumen bench fabric: provider {provider} unavailable, skipped: {e}");
            continue;
        }
        let k = options.sizes.len();
        let (mut lat, mut bw, mut pp_lat, mut pp_bw) = (
            vec![Vec::new(); k],
            vec![Vec::new(); k],
            vec![Vec::new(); k],
            vec![Vec::new(); k],
        );
        for _ in 0..options.rounds.max(1) {
            for (i, (_, us, mb)) in lumen_round(provider, &options.sizes, options.scale)?
                .into_iter()
                .enumerate()
            {
                lat[i].push(us);
                bw[i].push(mb);
            }
            for (i, &size) in options.sizes.iter().enumerate() {
                let (us, mb) = pingpong(provider, size, options.scale)?;
                pp_lat[i].push(us);
                pp_bw[i].push(mb);
            }
        }
        for (i, &size) in options.sizes.iter().enumerate() {
            let (l, b, pl, pb) = (
                median(&mut lat[i]),
                median(&mut bw[i]),
                median(&mut pp_lat[i]),
                median(&mut pp_bw[i]),
            );
            rows.push(FabricRow {
                provider: provider.clone(),
                size,
                lumen_read_us: l,
                pingpong_us: pl,
                latency_ratio: l / (2.0 * pl),
                lumen_mb_s: b,
                pingpong_mb_s: pb,
                bandwidth_ratio: b / pb,
            });
        }
    }
    Ok(rows)
}

/// Prints the rows as a table.
pub fn print_table(rows: &[FabricRow]) {
    println!(
        "{:<12} {:>10} {:>12} {:>14} {:>8} {:>11} {:>13} {:>8}",
        "provider",
        "bytes",
        "read us",
        "pingpong us",
        "ratio*",
        "read MB/s",
        "pingpong MB/s",
        "ratio"
    );
    for r in rows {
        println!(
            "{:<12} {:>10} {:>12.2} {:>14.2} {:>8.2} {:>11.1} {:>13.1} {:>8.2}",
            r.provider,
            r.size,
            r.lumen_read_us,
            r.pingpong_us,
            r.latency_ratio,
            r.lumen_mb_s,
            r.pingpong_mb_s,
            r.bandwidth_ratio
        );
    }
    println!(
        "* a read is a round trip: compared with twice fi_pingpong's usec/xfer (half a round trip)"
    );
}
