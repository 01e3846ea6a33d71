//! Per-rank metrics in Prometheus' text format (`LUMEN_METRICS_PORT`, off
//! by default).
//!
//! With `LUMEN_METRICS_PORT=P`, the rank that is local rank L of its node
//! serves `GET /metrics` on port P + L (so every rank of a node has its own
//! and a scrape config lists P..P+ranks per node), on
//! `LUMEN_METRICS_ADDR` (default 127.0.0.1: the counters are not
//! authenticated, so exposing them beyond the node is a choice to make).
//! Each scrape reads the rank's counters ([`RankStats`]) at that moment,
//! labelled with the job, rank and node. One thread per rank accepts and
//! answers one request at a time, with a 2 s read bound and requests
//! capped at 8 KiB: a slow or malformed client cannot hold it.
//!
//! Besides the counters, two histograms (buckets from 10 µs to 10 s):
//! `lumen_task_run_seconds`, how long this rank's tasks and actor calls
//! ran (one clock read at each end of a task), and
//! `lumen_call_latency_seconds`, how long the tasks and calls this rank
//! submitted took from send to reply (a clock read at each). Object bytes
//! fetched are counted by path (`lumen_fetched_bytes_{one_sided,chunked,
//! shm,tcp}_total`), with retried tasks and restarted actors.
//!
//! Not exported yet: bytes the transport moved outside object fetches
//! (messages, collectives) by path.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Weak};
use std::time::Duration;

use super::Inner;
use crate::runtime::protocol::RankStats;

/// `LUMEN_METRICS_PORT`.
pub(crate) const PORT_VAR: &str = "LUMEN_METRICS_PORT";
/// `LUMEN_METRICS_ADDR`.
pub(crate) const ADDR_VAR: &str = "LUMEN_METRICS_ADDR";

/// Counters that go up and down (the rest only go up).
const GAUGES: &[&str] = &[
    "owned_objects",
    "borrowed_objects",
    "stored_values",
    "arena_objects",
    "actors_hosted",
    "tasks_pending",
    "tasks_pending_peak",
    "tasks_running",
    "tasks_queued",
    "arena_used_bytes",
    "arena_capacity",
    "arena_spilled_objects",
    "arena_spilled_bytes",
];

/// Fields of [`RankStats`] that are not exported as counters: the process
/// id is not a measurement, and the task time and count are the
/// histogram's sum and count.
const NOT_EXPORTED: &[&str] = &["pid", "task_run_nanos", "tasks_finished"];

/// Object bytes fetched from other ranks, by the path they took (the
/// `how` of `store::Moved`).
#[derive(Debug, Default)]
pub(crate) struct PathBytes {
    one_sided: std::sync::atomic::AtomicU64,
    chunked: std::sync::atomic::AtomicU64,
    shm: std::sync::atomic::AtomicU64,
    tcp: std::sync::atomic::AtomicU64,
}

impl PathBytes {
    fn slot(&self, how: &str) -> Option<&std::sync::atomic::AtomicU64> {
        match how {
            "one-sided pull" => Some(&self.one_sided),
            "chunked pull" => Some(&self.chunked),
            "shm get" => Some(&self.shm),
            "tcp get" => Some(&self.tcp),
            _ => None,
        }
    }

    /// Counts `bytes` fetched by `how`.
    pub(crate) fn add(&self, how: &str, bytes: u64) {
        if let Some(slot) = self.slot(how) {
            slot.fetch_add(bytes, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Bytes fetched by `how` so far.
    pub(crate) fn get(&self, how: &str) -> u64 {
        self.slot(how)
            .map_or(0, |slot| slot.load(std::sync::atomic::Ordering::Relaxed))
    }
}

/// Upper bounds of the task-time buckets, in seconds.
const BUCKETS: [f64; 7] = [1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0];

/// A histogram of durations with [`BUCKETS`] (counts per bucket, not
/// cumulative; the last slot is above 10 s), updated without a lock.
#[derive(Debug, Default)]
pub(crate) struct Histogram {
    counts: [std::sync::atomic::AtomicU64; 8],
    sum_nanos: std::sync::atomic::AtomicU64,
}

impl Histogram {
    /// Counts one duration.
    pub(crate) fn record(&self, took: Duration) {
        use std::sync::atomic::Ordering::Relaxed;
        let seconds = took.as_secs_f64();
        let slot = BUCKETS
            .iter()
            .position(|&bound| seconds <= bound)
            .unwrap_or(BUCKETS.len());
        self.counts[slot].fetch_add(1, Relaxed);
        let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Relaxed);
    }

    /// The sum of the durations, in nanoseconds.
    pub(crate) fn sum_nanos(&self) -> u64 {
        self.sum_nanos.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// How many durations were counted.
    pub(crate) fn count(&self) -> u64 {
        self.counts().iter().sum()
    }

    /// The counts per bucket (not cumulative).
    fn counts(&self) -> [u64; 8] {
        let mut out = [0; 8];
        for (out, count) in out.iter_mut().zip(&self.counts) {
            *out = count.load(std::sync::atomic::Ordering::Relaxed);
        }
        out
    }
}

/// The Prometheus exposition of `histogram` as `metric` with `labels`.
fn render_histogram(out: &mut String, metric: &str, help: &str, labels: &str, h: &Histogram) {
    use std::fmt::Write as _;
    let counts = h.counts();
    let _ = writeln!(out, "# HELP {metric} {help}");
    let _ = writeln!(out, "# TYPE {metric} histogram");
    let mut cumulative = 0;
    for (bound, count) in BUCKETS.iter().zip(counts) {
        cumulative += count;
        let _ = writeln!(
            out,
            "{metric}_bucket{{{labels},le=\"{bound}\"}} {cumulative}"
        );
    }
    cumulative += counts[BUCKETS.len()];
    let _ = writeln!(out, "{metric}_bucket{{{labels},le=\"+Inf\"}} {cumulative}");
    let sum = h.sum_nanos() as f64 / 1e9;
    let _ = writeln!(out, "{metric}_sum{{{labels}}} {sum}");
    let _ = writeln!(out, "{metric}_count{{{labels}}} {cumulative}");
}

/// One help line per counter (the field docs of [`RankStats`], shortened).
fn help(name: &str) -> &'static str {
    match name {
        "owned_objects" => "Objects owned by this rank and not yet freed.",
        "borrowed_objects" => "Objects this rank borrows.",
        "stored_values" => "Values held in this rank's process memory.",
        "arena_objects" => "Live objects in this rank's node arena.",
        "freed_objects" => "Owned objects freed so far.",
        "tasks_executed" => "Tasks executed on this rank.",
        "actors_hosted" => "Actors running on this rank.",
        "chunks_served" => "Chunks of arena objects sent to ranks of other nodes.",
        "one_sided_pulls" => "Objects pulled from other nodes with one-sided reads.",
        "objects_rebuilt" => "Owned objects rebuilt from lineage after their rank died.",
        "tasks_pending" => "Tasks and actor calls submitted here that have not finished.",
        "tasks_pending_peak" => "The most tasks pending at once.",
        "submissions_waited" => "Submissions that waited for room under LUMEN_MAX_PENDING_TASKS.",
        "waits_slept" => "Waits whose answer came by another thread's wake-up.",
        "executor_sleeps" => "Times an idle executor thread went to sleep.",
        "actor_sleeps" => "Times an actor thread slept waiting for its next call.",
        "idle_spins_found" => "Idle executor spins that found a task.",
        "idle_spins_empty" => "Idle executor spins that ran out and slept.",
        "poll_sessions" => "Poll sessions begun by waiting threads.",
        "polls_refused" => "Poll sessions refused because another thread polled.",
        "doorbell_rings" => "Wake-up system calls made ringing shared-memory doorbells.",
        "tasks_running" => "Tasks and actor calls running on this rank's executor now.",
        "tasks_queued" => "Tasks queued at this rank's executor, not started yet.",
        "arena_used_bytes" => "Heap bytes of the node arena in use.",
        "arena_capacity" => "Heap bytes of the node arena.",
        "arena_spilled_objects" => "Objects of the node arena spilled to disk now.",
        "arena_spilled_bytes" => "Bytes of the node arena spilled to disk now.",
        "arena_spills" => "Spills of the node arena since it was made.",
        "tasks_retried" => "Tasks sent again after the rank running them died.",
        "actors_restarted" => "Actors created here that were restarted after their rank died.",
        "fetched_bytes_one_sided" => "Object bytes fetched from other ranks by one-sided reads.",
        "fetched_bytes_chunked" => "Object bytes pulled in chunks into this node's arena.",
        "fetched_bytes_shm" => "Object bytes read from another rank's memory on this node.",
        "fetched_bytes_tcp" => "Object bytes read from another rank's memory on another node.",
        _ => "A Lumen rank counter.",
    }
}

/// Escapes a label value (backslash, quote, newline).
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The Prometheus text exposition of one rank's counters.
pub(crate) fn render(
    stats: &RankStats,
    (task_runs, call_latency): (&Histogram, &Histogram),
    job: &str,
    rank: u32,
    node: u32,
) -> String {
    use std::fmt::Write as _;
    let labels = format!("job=\"{}\",rank=\"{rank}\",node=\"{node}\"", label(job));
    let mut out = String::new();
    let fields = serde_json::to_value(stats).unwrap_or_default();
    if let Some(fields) = fields.as_object() {
        for (name, value) in fields {
            let Some(value) = value.as_u64() else {
                continue;
            };
            if NOT_EXPORTED.contains(&name.as_str()) {
                continue;
            }
            let (kind, metric) = if GAUGES.contains(&name.as_str()) {
                ("gauge", format!("lumen_{name}"))
            } else {
                ("counter", format!("lumen_{name}_total"))
            };
            let _ = writeln!(out, "# HELP {metric} {}", help(name));
            let _ = writeln!(out, "# TYPE {metric} {kind}");
            let _ = writeln!(out, "{metric}{{{labels}}} {value}");
        }
    }
    render_histogram(
        &mut out,
        "lumen_task_run_seconds",
        "How long this rank's tasks and actor calls ran.",
        &labels,
        task_runs,
    );
    render_histogram(
        &mut out,
        "lumen_call_latency_seconds",
        "How long tasks and actor calls this rank submitted took, from send to reply.",
        &labels,
        call_latency,
    );
    out
}

/// Where this rank serves, from the environment: `None` when
/// `LUMEN_METRICS_PORT` is unset or empty; an error naming the variable
/// when it is malformed.
pub(crate) fn address_from_env(
    get: impl Fn(&str) -> Option<String>,
    local_rank: u32,
) -> Result<Option<SocketAddr>, String> {
    let Some(port) = get(PORT_VAR).filter(|v| !v.trim().is_empty()) else {
        return Ok(None);
    };
    let base: u16 = port.trim().parse().map_err(|_| {
        format!(
            "{PORT_VAR}={port:?} is not a port (1 to 65535; rank L of a node serves on port + L)"
        )
    })?;
    let port = base
        .checked_add(u16::try_from(local_rank).unwrap_or(u16::MAX))
        .filter(|_| base > 0)
        .ok_or_else(|| {
            format!("{PORT_VAR}={base}: local rank {local_rank} would serve beyond port 65535")
        })?;
    let ip = match get(ADDR_VAR).filter(|v| !v.trim().is_empty()) {
        Some(text) => text
            .trim()
            .parse::<IpAddr>()
            .map_err(|_| format!("{ADDR_VAR}={text:?} is not an IP address"))?,
        None => IpAddr::V4(Ipv4Addr::LOCALHOST),
    };
    Ok(Some(SocketAddr::new(ip, port)))
}

/// Starts the metrics thread of `inner` on `addr`.
pub(crate) fn serve(inner: &Arc<Inner>, addr: SocketAddr) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr)?;
    let weak = Arc::downgrade(inner);
    let node = inner
        .ranks
        .get(inner.rank as usize)
        .map_or(0, |info| info.node);
    let (job, rank) = (inner.job_id.clone(), inner.rank);
    tracing::info!(rank, "metrics at http://{}/metrics", listener.local_addr()?);
    std::thread::Builder::new()
        .name("lumen-metrics".into())
        .spawn(move || {
            for stream in listener.incoming() {
                let Some(inner) = weak.upgrade() else { return };
                if inner.stopping.load(std::sync::atomic::Ordering::Acquire) {
                    return;
                }
                if let Ok(stream) = stream {
                    answer(stream, &weak, &job, rank, node);
                }
            }
        })?;
    Ok(())
}

/// Reads one request and answers it; every failure only drops the client.
fn answer(mut stream: TcpStream, inner: &Weak<Inner>, job: &str, rank: u32, node: u32) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(2)));
    let mut request = Vec::with_capacity(512);
    let mut buffer = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") && !request.windows(2).any(|w| w == b"\n\n")
    {
        match stream.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(n) => request.extend_from_slice(&buffer[..n]),
        }
        if request.len() > 8192 {
            let _ = respond(
                &mut stream,
                "431 Request Header Fields Too Large",
                "request too large\n",
            );
            return;
        }
    }
    let line = String::from_utf8_lossy(&request);
    let mut words = line.split_whitespace();
    let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let _ = match (method, path.split('?').next().unwrap_or("")) {
        ("GET", "/metrics") => match inner.upgrade() {
            Some(inner) => respond(
                &mut stream,
                "200 OK",
                &render(
                    &inner.local_stats(),
                    (&inner.task_runs, &inner.call_latency),
                    job,
                    rank,
                    node,
                ),
            ),
            None => respond(
                &mut stream,
                "503 Service Unavailable",
                "the rank is leaving\n",
            ),
        },
        ("GET", _) => respond(
            &mut stream,
            "404 Not Found",
            "only /metrics is served here\n",
        ),
        _ => respond(&mut stream, "405 Method Not Allowed", "GET /metrics\n"),
    };
}

fn respond(stream: &mut TcpStream, status: &str, body: &str) -> std::io::Result<()> {
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    stream.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_render_as_prometheus_text() {
        let stats = RankStats {
            tasks_executed: 7,
            tasks_pending: 2,
            ..RankStats::default()
        };
        let runs = Histogram::default();
        runs.record(Duration::from_micros(50));
        runs.record(Duration::from_millis(2));
        runs.record(Duration::from_secs(20));
        let latency = Histogram::default();
        let text = render(&stats, (&runs, &latency), "job \"a\"", 3, 1);
        assert!(text.contains("# TYPE lumen_tasks_executed_total counter\n"));
        assert!(text.contains(
            "lumen_tasks_executed_total{job=\"job \\\"a\\\"\",rank=\"3\",node=\"1\"} 7\n"
        ));
        assert!(text.contains("# TYPE lumen_tasks_pending gauge\n"));
        assert!(
            text.contains("lumen_tasks_pending{job=\"job \\\"a\\\"\",rank=\"3\",node=\"1\"} 2\n")
        );
        // The histogram: cumulative buckets, +Inf = count, sum in seconds.
        let labels = "job=\"job \\\"a\\\"\",rank=\"3\",node=\"1\"";
        assert!(text.contains("# TYPE lumen_task_run_seconds histogram\n"));
        for (le, n) in [
            ("0.00001", 0),
            ("0.0001", 1),
            ("0.001", 1),
            ("0.01", 2),
            ("10", 2),
            ("+Inf", 3),
        ] {
            let line = format!("lumen_task_run_seconds_bucket{{{labels},le=\"{le}\"}} {n}\n");
            assert!(text.contains(&line), "{line} missing from\n{text}");
        }
        assert!(text.contains(&format!("lumen_task_run_seconds_count{{{labels}}} 3\n")));
        assert!(text.contains(&format!("lumen_task_run_seconds_sum{{{labels}}} 20.00205")));
        assert!(!text.contains("lumen_pid"));
        // Every counter line has a HELP and a TYPE line before it.
        let samples = text
            .lines()
            .filter(|l| {
                !l.starts_with('#')
                    && !l.starts_with("lumen_task_run_seconds")
                    && !l.starts_with("lumen_call_latency_seconds")
            })
            .count()
            + 2;
        assert_eq!(
            text.lines().filter(|l| l.starts_with("# TYPE")).count(),
            samples
        );
    }

    #[test]
    fn the_port_comes_from_the_environment_and_bad_values_are_named() {
        let env = |port: &'static str, addr: Option<&'static str>| {
            move |name: &str| match name {
                PORT_VAR => Some(port.to_string()),
                ADDR_VAR => addr.map(str::to_string),
                _ => None,
            }
        };
        assert_eq!(address_from_env(|_| None, 0), Ok(None));
        assert_eq!(address_from_env(env("", None), 0), Ok(None));
        assert_eq!(
            address_from_env(env("9100", None), 2),
            Ok(Some("127.0.0.1:9102".parse().unwrap()))
        );
        assert_eq!(
            address_from_env(env("9100", Some("0.0.0.0")), 0),
            Ok(Some("0.0.0.0:9100".parse().unwrap()))
        );
        assert!(address_from_env(env("http", None), 0)
            .unwrap_err()
            .contains(PORT_VAR));
        assert!(address_from_env(env("65535", None), 1)
            .unwrap_err()
            .contains("65535"));
        assert!(address_from_env(env("9100", Some("localhost:1")), 0)
            .unwrap_err()
            .contains(ADDR_VAR));
    }
}
