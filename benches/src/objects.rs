//! `lumen bench objects`: pulling objects between two network-namespace
//! hosts (the closest this machine gets to two nodes), 1 MiB to 1 GiB,
//! with the object store's two-sided chunked pull (`LUMEN_FABRIC=tcp`)
//! and with one-sided libfabric reads (`LUMEN_FABRIC=ofi`, its
//! `tcp;ofi_rxm` provider here; needs a build with `--features ofi`),
//! beside `iperf3`'s single-stream throughput on the same link, measured
//! in the same invocation. Fabrics alternate round by round; each row is
//! the median over the rounds, with the ratio to iperf3.
//!
//! Each round is one 4-rank job (`lumen run`, two ranks per host): for
//! each size a task on the second host stores a slice in that host's
//! arena (`put_slice`) and returns its ref; the driver on the first host
//! then times `get()` of the slice — the pull into its own arena, no
//! decoding — and checks the bytes. One untimed 1 MiB pull first makes the
//! connections (tcp;ofi_rxm connects to a peer on its first operation).

use std::time::Instant;

use anyhow::{bail, Context};
use lumen::prelude::*;
use lumen_testkit::{netns_unavailable_reason, unique_prefix, NetnsCluster};
use serde::Serialize;

/// Options of `lumen bench objects`.
#[derive(Debug, Clone)]
pub struct ObjectsBenchOptions {
    /// Object sizes in bytes.
    pub sizes: Vec<usize>,
    /// Rounds per fabric.
    pub rounds: usize,
    /// Fabrics to compare (`tcp`, `ofi`).
    pub fabrics: Vec<String>,
}

/// One row: a size, a fabric, its median throughput and the anchor.
#[derive(Debug, Clone, Serialize)]
pub struct ObjectRow {
    /// Object bytes.
    pub size: usize,
    /// `tcp` (chunked two-sided) or `ofi` (one-sided).
    pub fabric: String,
    /// Median MB/s over the rounds.
    pub mb_s: f64,
    /// Slowest and fastest round.
    pub min_mb_s: f64,
    /// Fastest round.
    pub max_mb_s: f64,
    /// iperf3 on the same link, MB/s (median of its runs).
    pub iperf3_mb_s: f64,
    /// `mb_s / iperf3_mb_s`.
    pub ratio: f64,
    /// Pulls the driver made one-sided (per round, the last round's).
    pub one_sided_pulls: u64,
}

#[lumen::remote]
fn make_slice(len: usize, seed: u8) -> lumen::Result<ObjectRef<[u8]>> {
    let bytes: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_add(seed)).collect();
    lumen::current()?.put_slice(&bytes)
}

/// The driver's side of one round (`lumen-bench worker objects`): prints
/// one `objects: SIZE MB/s` line per size and the one-sided pull count.
pub fn worker(sizes: &[usize]) -> anyhow::Result<()> {
    let rt = lumen::init()?;
    if rt.num_nodes() < 2 {
        bail!(
            "objects bench needs two nodes, this job has {}",
            rt.num_nodes()
        );
    }
    // A first pull, not timed: connections (and, on tcp;ofi_rxm, the
    // provider's own connection to the peer) are made on first use.
    let warm = make_slice::options().node(1).remote(&rt, 1 << 20, 7)?;
    let _ = warm.get()?.get()?;
    for (i, &size) in sizes.iter().enumerate() {
        let seed = i as u8;
        let made = make_slice::options().node(1).remote(&rt, size, seed)?;
        let inner: ObjectRef<[u8]> = made.get()?;
        let started = Instant::now();
        let view = inner.get()?;
        let took = started.elapsed();
        if view.len() != size
            || view
                .iter()
                .enumerate()
                .any(|(j, &b)| b != (j as u8).wrapping_add(seed))
        {
            bail!("the {size}-byte object arrived damaged");
        }
        println!(
            "objects: {size} {:.1}",
            size as f64 / took.as_secs_f64() / 1e6
        );
    }
    println!("objects: one-sided pulls {}", rt.stats(0)?.one_sided_pulls);
    Ok(())
}

/// Runs the comparison (see the module docs).
pub fn run(options: &ObjectsBenchOptions) -> anyhow::Result<Vec<ObjectRow>> {
    if let Some(reason) = netns_unavailable_reason() {
        bail!("network namespaces unavailable here: {reason}");
    }
    let me = std::env::current_exe().context("this benchmark's binary")?;
    let lumen = me.with_file_name("lumen");
    let cluster = NetnsCluster::create(&unique_prefix("lob"), 2)?;
    let result = (|| {
        let mut iperf = Vec::new();
        let mut results: Vec<Vec<Vec<f64>>> =
            vec![vec![Vec::new(); options.sizes.len()]; options.fabrics.len()];
        let mut one_sided = vec![0u64; options.fabrics.len()];
        let sizes = options
            .sizes
            .iter()
            .map(usize::to_string)
            .collect::<Vec<_>>()
            .join(",");
        for _round in 0..options.rounds.max(1) {
            iperf.push(super::netns::iperf3(&cluster)?);
            for (f, fabric) in options.fabrics.iter().enumerate() {
                let hosts = format!("{}:2,{}:2", cluster.namespace(0), cluster.namespace(1));
                let output = cluster
                    .command(0, "timeout")
                    .args(["-k", "5", "600"])
                    .arg(&lumen)
                    .args(["run", "-n", "4", "--hosts", &hosts])
                    .args(["--launch-agent", "ip netns exec {host}"])
                    .args(["--rendezvous-bind", &cluster.host_addr(0).to_string()])
                    .arg("--")
                    .arg(&me)
                    .args(["worker", "objects", "--sizes", &sizes])
                    .env("LUMEN_TCP_IF", cluster.subnet_cidr())
                    .env("LUMEN_FABRIC", fabric)
                    .output()
                    .context("running the objects job")?;
                let text = String::from_utf8_lossy(&output.stdout).into_owned()
                    + &String::from_utf8_lossy(&output.stderr);
                if !output.status.success() {
                    bail!("LUMEN_FABRIC={fabric}: the job failed:\n{text}");
                }
                for line in text.lines() {
                    let Some(rest) = line.trim().strip_prefix("objects: ") else {
                        continue;
                    };
                    if let Some(n) = rest.strip_prefix("one-sided pulls ") {
                        one_sided[f] = n.trim().parse().unwrap_or(0);
                        continue;
                    }
                    let mut parts = rest.split_whitespace();
                    let (Some(size), Some(mb)) = (parts.next(), parts.next()) else {
                        continue;
                    };
                    let (Ok(size), Ok(mb)) = (size.parse::<usize>(), mb.parse::<f64>()) else {
                        continue;
                    };
                    if let Some(at) = options.sizes.iter().position(|&s| s == size) {
                        results[f][at].push(mb);
                    }
                }
            }
        }
        let iperf3 = median(&mut iperf);
        let mut rows = Vec::new();
        for (f, fabric) in options.fabrics.iter().enumerate() {
            for (s, &size) in options.sizes.iter().enumerate() {
                let runs = &mut results[f][s];
                if runs.is_empty() {
                    continue;
                }
                let mb_s = median(runs);
                rows.push(ObjectRow {
                    size,
                    fabric: fabric.clone(),
                    mb_s,
                    min_mb_s: runs.iter().copied().fold(f64::INFINITY, f64::min),
                    max_mb_s: runs.iter().copied().fold(0.0, f64::max),
                    iperf3_mb_s: iperf3,
                    ratio: mb_s / iperf3,
                    one_sided_pulls: one_sided[f],
                });
            }
        }
        Ok(rows)
    })();
    cluster.destroy()?;
    result
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Prints the rows as a table.
pub fn print_table(rows: &[ObjectRow]) {
    println!(
        "{:>12} {:<6} {:>10} {:>21} {:>10} {:>7} {:>9}",
        "bytes", "fabric", "MB/s", "min-max", "iperf3", "ratio", "1-sided"
    );
    for r in rows {
        println!(
            "{:>12} {:<6} {:>10.1} {:>10.1}-{:<10.1} {:>10.1} {:>7.2} {:>9}",
            r.size,
            r.fabric,
            r.mb_s,
            r.min_mb_s,
            r.max_mb_s,
            r.iperf3_mb_s,
            r.ratio,
            r.one_sided_pulls
        );
    }
}
