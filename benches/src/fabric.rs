//! `lumen bench fabric` (also `lumen bench transport --fabric NAME`):
//! Lumen's one-sided reads on each backend (`tcp` emulated, `vm` same-node,
//! `ofi/tcp;ofi_rxm` and `ofi/shm` with the `ofi` feature, `verbs` with the
//! `verbs` feature) between two processes of this machine, beside
//! libfabric's own `fi_pingpong` (Debian `libfabric-bin`) on the matching
//! provider and beside Open MPI's point-to-point (our OSU-style
//! `mpi_pingpong`, `btl tcp` or `vader` to match), all in the same
//! invocation, rounds alternating; medians and ratios.
//!
//! What is compared: a Lumen read of `size` bytes is a full round trip
//! (the request goes to the peer, the bytes come back), timed one read at
//! a time for latency and with 16 reads in flight for bandwidth;
//! `fi_pingpong`'s `usec/xfer` and the MPI ping-pong's `usec` are half a
//! round trip, so latency ratios are taken against twice those (a
//! like-for-like round trip); bandwidths as each reports them.
//!
//! Matching baselines: `tcp` and `ofi/tcp;ofi_rxm` beside `fi_pingpong -p
//! tcp;ofi_rxm` and MPI over `btl tcp` (loopback); `vm` and `ofi/shm`
//! beside `fi_pingpong -p shm` and MPI over `vader` (shared memory);
//! `verbs` beside `fi_pingpong -p verbs;ofi_rxm` and MPI's default
//! transport (UCX or openib, whatever the machine's Open MPI uses).

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use lumen_transport::fabric::{OneSided, RemoteKey};
use serde::Serialize;

const JOB: u64 = 0xbe7c;
const REGION: usize = 64 << 20;

/// Options of `lumen bench fabric`.
#[derive(Debug, Clone)]
pub struct FabricBenchOptions {
    /// Backends to measure (`tcp`, `vm`, `ofi/<provider>`, `verbs`).
    pub backends: Vec<String>,
    /// Also run the Open MPI baseline.
    pub mpi: bool,
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
    /// The backend.
    pub backend: String,
    /// The fi_pingpong provider beside it.
    pub pingpong_provider: String,
    /// Bytes per transfer.
    pub size: usize,
    /// Lumen: one read at a time, µs per read (a round trip).
    pub lumen_read_us: f64,
    /// fi_pingpong: µs per transfer (half a round trip), as it reports.
    pub pingpong_us: f64,
    /// `lumen_read_us / (2 * pingpong_us)`: below 1 is faster.
    pub latency_ratio: f64,
    /// Open MPI ping-pong: µs half round trip (NaN when not run).
    pub mpi_us: f64,
    /// `lumen_read_us / (2 * mpi_us)`.
    pub mpi_latency_ratio: f64,
    /// Lumen: 16 reads in flight, MB/s.
    pub lumen_mb_s: f64,
    /// fi_pingpong's MB/s.
    pub pingpong_mb_s: f64,
    /// `lumen_mb_s / pingpong_mb_s`.
    pub bandwidth_ratio: f64,
    /// Open MPI's windowed bandwidth, MB/s (NaN when not run).
    pub mpi_mb_s: f64,
    /// `lumen_mb_s / mpi_mb_s`.
    pub mpi_bandwidth_ratio: f64,
    /// Min and max over the rounds of each round's ratio (Lumen and the
    /// baseline of the same round), in the order latency/fi_pingpong,
    /// bandwidth/fi_pingpong, latency/MPI, bandwidth/MPI.
    pub ratio_ranges: [[f64; 2]; 4],
}

/// Opens backend `name` (see the module docs).
pub fn open_backend(name: &str) -> anyhow::Result<Box<dyn OneSided>> {
    use lumen_transport::fabric::{tcp::TcpOneSided, vm::VmOneSided};
    Ok(match name {
        "tcp" => Box::new(TcpOneSided::open(Some("127.0.0.1"), JOB)?),
        "vm" => Box::new(VmOneSided::open(JOB)?),
        #[cfg(feature = "ofi")]
        ofi if ofi.starts_with("ofi/") => {
            let provider = &ofi[4..];
            let node = (provider == "tcp;ofi_rxm").then_some("127.0.0.1");
            Box::new(lumen_transport::fabric::ofi::OfiEndpoint::open(provider, node, JOB)?)
        }
        #[cfg(feature = "verbs")]
        "verbs" => Box::new(lumen_transport::fabric::verbs::VerbsEndpoint::open(
            None,
            Some("127.0.0.1"),
            JOB,
        )?),
        other => bail!(
            "no fabric backend {other:?} in this build (tcp, vm; ofi/<provider> with the ofi feature; verbs with the verbs feature)"
        ),
    })
}

/// The names `lumen bench transport --fabric NAME` expands to.
pub fn expand_fabric(name: &str) -> Vec<String> {
    match name {
        "ofi" => vec!["ofi/tcp;ofi_rxm".into(), "ofi/shm".into()],
        "all" => {
            let mut all = vec!["tcp".to_string(), "vm".to_string()];
            if cfg!(feature = "ofi") {
                all.extend(["ofi/tcp;ofi_rxm".to_string(), "ofi/shm".to_string()]);
            }
            if cfg!(feature = "verbs") {
                all.push("verbs".into());
            }
            all
        }
        other => other.split(',').map(|s| s.trim().to_string()).collect(),
    }
}

/// The fi_pingpong provider and whether Open MPI should go over TCP, for a
/// backend (see the module docs).
fn baselines_of(name: &str) -> (&str, Option<bool>) {
    match name {
        "vm" => ("shm", Some(false)),
        "tcp" => ("tcp;ofi_rxm", Some(true)),
        "verbs" => ("verbs;ofi_rxm", None),
        ofi => {
            let provider = ofi.strip_prefix("ofi/").unwrap_or(ofi);
            (provider, Some(provider != "shm"))
        }
    }
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

/// The serving process (`lumen-bench worker fabric-server BACKEND`):
/// registers a region, prints its address and key, adds the client's
/// address from stdin, and serves until stdin closes.
pub fn server(backend: &str) -> anyhow::Result<()> {
    let ep = open_backend(backend)?;
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

/// Lumen's side of one round on `backend`: (size, µs per read, MB/s).
fn lumen_round(
    backend: &str,
    sizes: &[usize],
    scale: f64,
) -> anyhow::Result<Vec<(usize, f64, f64)>> {
    let me = std::env::current_exe()?;
    let mut child = Command::new(me)
        .args(["worker", "fabric-server", backend])
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
    let ep: Arc<dyn OneSided> = Arc::from(open_backend(backend)?);
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
    for backend in &options.backends {
        if let Err(e) = open_backend(backend) {
            eprintln!("lumen bench fabric: backend {backend} unavailable, skipped: {e}");
            continue;
        }
        let (provider, mpi_tcp) = baselines_of(backend);
        let k = options.sizes.len();
        let mut series = vec![
            [
                Vec::new(),
                Vec::new(),
                Vec::new(),
                Vec::new(),
                Vec::new(),
                Vec::new()
            ];
            k
        ];
        for _ in 0..options.rounds.max(1) {
            for (i, (_, us, mb)) in lumen_round(backend, &options.sizes, options.scale)?
                .into_iter()
                .enumerate()
            {
                series[i][0].push(us);
                series[i][1].push(mb);
            }
            for (i, &size) in options.sizes.iter().enumerate() {
                match pingpong(provider, size, options.scale) {
                    Ok((us, mb)) => {
                        series[i][2].push(us);
                        series[i][3].push(mb);
                    }
                    Err(e) => eprintln!("lumen bench fabric: fi_pingpong -p {provider}: {e}"),
                }
            }
            if let (true, Some(tcp)) = (options.mpi, mpi_tcp) {
                match crate::mpi::run(tcp, &options.sizes, options.scale) {
                    Ok(mpi_rows) => {
                        for (i, &size) in options.sizes.iter().enumerate() {
                            for r in mpi_rows.iter().filter(|r| r.size == size) {
                                if let Some(us) = r.usec {
                                    series[i][4].push(us);
                                }
                                if let Some(mb) = r.mbps {
                                    series[i][5].push(mb);
                                }
                            }
                        }
                    }
                    Err(e) => eprintln!("lumen bench fabric: the Open MPI baseline: {e}"),
                }
            }
        }
        for (i, &size) in options.sizes.iter().enumerate() {
            let [l, b, pl, pb, ml, mb] = series[i].clone().map(|mut v| median(&mut v));
            let range = |lumen: &[f64], base: &[f64], scale: f64| -> [f64; 2] {
                let ratios: Vec<f64> = lumen
                    .iter()
                    .zip(base)
                    .map(|(a, b)| a / (scale * b))
                    .collect();
                [
                    ratios.iter().copied().fold(f64::INFINITY, f64::min),
                    ratios.iter().copied().fold(f64::NEG_INFINITY, f64::max),
                ]
            };
            let k = &series[i];
            let ratio_ranges = [
                range(&k[0], &k[2], 2.0),
                range(&k[1], &k[3], 1.0),
                range(&k[0], &k[4], 2.0),
                range(&k[1], &k[5], 1.0),
            ];
            rows.push(FabricRow {
                backend: backend.clone(),
                pingpong_provider: provider.to_string(),
                size,
                lumen_read_us: l,
                pingpong_us: pl,
                latency_ratio: l / (2.0 * pl),
                mpi_us: ml,
                mpi_latency_ratio: l / (2.0 * ml),
                lumen_mb_s: b,
                pingpong_mb_s: pb,
                bandwidth_ratio: b / pb,
                mpi_mb_s: mb,
                mpi_bandwidth_ratio: b / mb,
                ratio_ranges,
            });
        }
    }
    Ok(rows)
}

/// Prints the rows as a table.
pub fn print_table(rows: &[FabricRow]) {
    println!(
        "{:<16} {:>8} {:>8} {:>8} {:>17} {:>7} {:>17} {:>9} {:>9} {:>17} {:>9} {:>17}",
        "backend",
        "bytes",
        "read us",
        "fi_pp us",
        "ratio* (range)",
        "mpi us",
        "ratio* (range)",
        "read MB/s",
        "fi_pp MB/s",
        "ratio (range)",
        "mpi MB/s",
        "ratio (range)"
    );
    let cell =
        |ratio: f64, range: [f64; 2]| format!("{ratio:.2} ({:.2}-{:.2})", range[0], range[1]);
    for r in rows {
        println!(
            "{:<16} {:>8} {:>8.2} {:>8.2} {:>17} {:>7.2} {:>17} {:>9.1} {:>9.1} {:>17} {:>9.1} {:>17}",
            r.backend,
            r.size,
            r.lumen_read_us,
            r.pingpong_us,
            cell(r.latency_ratio, r.ratio_ranges[0]),
            r.mpi_us,
            cell(r.mpi_latency_ratio, r.ratio_ranges[2]),
            r.lumen_mb_s,
            r.pingpong_mb_s,
            cell(r.bandwidth_ratio, r.ratio_ranges[1]),
            r.mpi_mb_s,
            cell(r.mpi_bandwidth_ratio, r.ratio_ranges[3])
        );
    }
    println!(
        "* a read is a round trip: compared with twice fi_pingpong's usec/xfer and twice MPI's half round trip; ranges: min-max of the per-round ratios"
    );
}
