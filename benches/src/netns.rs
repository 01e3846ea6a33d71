//! TCP between two network-namespace hosts (a bridge and veth pairs, the
//! closest this machine gets to two nodes): Lumen's two-rank ping-pong and
//! windowed bandwidth beside the physical limit of the same path, measured in
//! the same run — a raw-socket ping-pong (plain `TcpStream`, no framing, no
//! matching, busy-polling non-blocking reads as Lumen and Open MPI do, so it
//! is the latency floor of the path) and `iperf3`'s single-stream throughput.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Instant;

use anyhow::{bail, Context};
use lumen_testkit::{netns_unavailable_reason, unique_prefix, NetnsCluster};

use super::{parse_json_rows, Row, TransportBenchOptions};

/// Reads exactly `buf.len()` bytes from a non-blocking socket, spinning on
/// `WouldBlock` (a blocking read would add a ~20 µs wake-up per message).
fn read_exact_spin(stream: &mut TcpStream, mut buf: &mut [u8]) -> std::io::Result<()> {
    while !buf.is_empty() {
        match stream.read(buf) {
            Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => buf = &mut buf[n..],
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::hint::spin_loop(),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Writes all of `buf` to a non-blocking socket, spinning on `WouldBlock`.
fn write_all_spin(stream: &mut TcpStream, mut buf: &[u8]) -> std::io::Result<()> {
    while !buf.is_empty() {
        match stream.write(buf) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => buf = &buf[n..],
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::hint::spin_loop(),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Raw-socket ping-pong client: half round trip in µs for each size.
pub fn raw_client(
    server: SocketAddr,
    sizes: &[usize],
    scale: f64,
) -> anyhow::Result<Vec<(usize, f64)>> {
    let mut stream = TcpStream::connect(server)?;
    stream.set_nodelay(true)?;
    stream.set_nonblocking(true)?;
    let mut out = Vec::new();
    for &size in sizes {
        let iters = super::transport::iterations(size, scale);
        let buffer = vec![0x42u8; size];
        let mut reply = vec![0u8; size];
        write_all_spin(&mut stream, &(size as u64).to_le_bytes())?;
        write_all_spin(&mut stream, &(iters as u64).to_le_bytes())?;
        let mut start = Instant::now();
        let warmup = (iters / 10).max(5);
        for i in 0..warmup + iters {
            if i == warmup {
                start = Instant::now();
            }
            write_all_spin(&mut stream, &buffer)?;
            read_exact_spin(&mut stream, &mut reply)?;
        }
        out.push((
            size,
            start.elapsed().as_secs_f64() * 1e6 / iters as f64 / 2.0,
        ));
    }
    write_all_spin(&mut stream, &u64::MAX.to_le_bytes())?;
    Ok(out)
}

/// Raw-socket ping-pong server: echoes until the client says stop.
pub fn raw_server(listener: TcpListener) -> anyhow::Result<()> {
    let (mut stream, _) = listener.accept()?;
    stream.set_nodelay(true)?;
    stream.set_nonblocking(true)?;
    loop {
        let mut word = [0u8; 8];
        read_exact_spin(&mut stream, &mut word)?;
        let size = u64::from_le_bytes(word);
        if size == u64::MAX {
            return Ok(());
        }
        read_exact_spin(&mut stream, &mut word)?;
        let iters = u64::from_le_bytes(word) as usize;
        let mut buffer = vec![0u8; size as usize];
        for _ in 0..(iters / 10).max(5) + iters {
            read_exact_spin(&mut stream, &mut buffer)?;
            write_all_spin(&mut stream, &buffer)?;
        }
    }
}

/// iperf3's single-stream throughput from host 0 to host 1, MB/s.
pub(crate) fn iperf3(cluster: &NetnsCluster) -> anyhow::Result<f64> {
    let server = cluster
        .command(1, "iperf3")
        .args(["-s", "-1", "-B"])
        .arg(cluster.host_addr(1).to_string())
        .stdout(std::process::Stdio::null())
        .spawn();
    let mut server = server.context("starting iperf3 (apt-get install iperf3)")?;
    std::thread::sleep(std::time::Duration::from_millis(300));
    let output = cluster
        .command(0, "iperf3")
        .args(["-c", &cluster.host_addr(1).to_string(), "-t", "3", "-J"])
        .output()
        .context("running iperf3")?;
    let _ = server.wait();
    if !output.status.success() {
        bail!("iperf3 failed: {}", String::from_utf8_lossy(&output.stdout));
    }
    let v: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    let bps = v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .context("iperf3 JSON lacks end.sum_received")?;
    Ok(bps / 8.0 / 1e6)
}

/// Runs the namespace comparison; rows compare Lumen with the raw-socket
/// ping-pong (latency) and iperf3 (bandwidth).
pub fn run(options: &TransportBenchOptions) -> anyhow::Result<Vec<Row>> {
    if let Some(reason) = netns_unavailable_reason() {
        bail!("network namespaces unavailable ({reason}); run as root with iproute2 installed");
    }
    let cluster = NetnsCluster::create(&unique_prefix("lbench"), 2)?;
    let exe = crate::bench_exe()?;
    let sizes: Vec<String> = options.sizes.iter().map(ToString::to_string).collect();
    let hosts = format!("{}:1,{}:1", cluster.namespace(0), cluster.namespace(1));
    // One Lumen run per TCP receiver asked for (`--tcp-backends`).
    let mut lumen = Vec::new();
    for (name, backend) in crate::tcp_receivers(options, "tcp-netns") {
        let output = cluster
            .command(0, &exe)
            .args([
                "launch",
                "-n",
                "2",
                "--hosts",
                &hosts,
                "--launch-agent",
                "ip netns exec {host}",
            ])
            .args(["--rendezvous-bind", &cluster.host_addr(0).to_string(), "--"])
            .arg(&exe)
            .args([
                "worker",
                "transport",
                "--scale",
                &options.scale.to_string(),
                "--sizes",
                &sizes.join(","),
            ])
            .env("LUMEN_TCP_IF", cluster.subnet_cidr())
            .env("LUMEN_TCP_BACKEND", backend)
            .output()
            .context("running lumen in the namespaces")?;
        if !output.status.success() {
            bail!(
                "lumen bench worker across namespaces failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        lumen.extend(
            parse_json_rows(&output.stdout)?
                .into_iter()
                .map(|(test, size, value)| (name.clone(), test, size, value)),
        );
    }

    let server_addr = SocketAddr::from((cluster.host_addr(1), 47_001));
    let listener = cluster.run_in(1, move || TcpListener::bind(server_addr))??;
    let server = std::thread::spawn(move || raw_server(listener));
    let sizes_owned = options.sizes.clone();
    let scale = options.scale;
    let raw = cluster.run_in(0, move || raw_client(server_addr, &sizes_owned, scale))??;
    server
        .join()
        .map_err(|_| anyhow::anyhow!("raw server panicked"))??;
    let iperf = iperf3(&cluster)
        .map_err(|e| eprintln!("lumen bench: iperf3 baseline unavailable: {e:#}"))
        .ok();
    cluster.destroy()?;

    Ok(lumen
        .into_iter()
        .map(|(transport, test, size, value)| {
            let (name, baseline) = if test == "latency" {
                ("raw-tcp", raw.iter().find(|r| r.0 == size).map(|r| r.1))
            } else {
                ("iperf3", iperf)
            };
            Row::new(&transport, &test, size, value, name, baseline)
        })
        .collect())
}
