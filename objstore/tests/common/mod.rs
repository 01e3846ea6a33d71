//! Shared test support: unique arena names, byte patterns, and child
//! processes made by re-executing the test binary itself.
//!
//! A test spawns `current_exe --exact child_entry --nocapture` with
//! `LUMEN_OBJSTORE_CHILD=<role>` and its arguments in `LUMEN_OBJSTORE_ARGS`;
//! the binary's `child_entry` test runs the role and exits (it does nothing
//! in a normal run). Children talk to the parent through stdin/stdout lines.

#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub const CHILD_ROLE: &str = "LUMEN_OBJSTORE_CHILD";
pub const CHILD_ARGS: &str = "LUMEN_OBJSTORE_ARGS";

/// A name no other test (or test run) uses.
pub fn unique_name(what: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "lumen-objtest-{what}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Deterministic bytes for object `seed`.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let take = (len - out.len()).min(8);
        out.extend_from_slice(&x.to_le_bytes()[..take]);
    }
    out
}

/// Whether `bytes` equal `pattern(bytes.len(), seed)`.
pub fn matches_pattern(bytes: &[u8], seed: u64) -> bool {
    bytes == pattern(bytes.len(), seed).as_slice()
}

/// A 64-bit checksum (FNV-1a over 8-byte words).
pub fn checksum(bytes: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    let mut words = bytes.chunks_exact(8);
    for w in &mut words {
        let mut a = [0u8; 8];
        a.copy_from_slice(w);
        h = (h ^ u64::from_le_bytes(a)).wrapping_mul(0x100_0000_01b3);
    }
    for &b in words.remainder() {
        h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
    }
    h
}

/// A child process running `role`.
pub struct ChildProc {
    pub child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    role: String,
}

impl ChildProc {
    pub fn spawn(role: &str, args: &[String]) -> ChildProc {
        let exe = std::env::current_exe().expect("test binary path");
        let mut child = Command::new(exe)
            .args(["--exact", "child_entry", "--nocapture", "--test-threads=1"])
            .env(CHILD_ROLE, role)
            .env(CHILD_ARGS, args.join(" "))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawning a child");
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().expect("child stdout"));
        ChildProc {
            child,
            stdin,
            stdout,
            role: role.into(),
        }
    }

    /// The text after `@` of the next line the child prints that has one
    /// (other text is the harness's own, such as `test child_entry ... `,
    /// which may precede the `@` on its line).
    pub fn read_line(&mut self) -> String {
        loop {
            let mut line = String::new();
            let n = self.stdout.read_line(&mut line).expect("reading child");
            assert!(n > 0, "child {} ended before answering", self.role);
            if let Some((_, rest)) = line.trim_end().split_once('@') {
                return rest.to_owned();
            }
        }
    }

    pub fn send_line(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("child stdin");
        writeln!(stdin, "{line}").expect("writing to child");
        stdin.flush().expect("flushing child stdin");
    }

    /// Waits for the child to exit successfully within `limit` (kills it and
    /// fails otherwise).
    pub fn wait_ok(mut self, limit: Duration) {
        drop(self.stdin.take());
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("waiting for child") {
                assert!(status.success(), "child {} failed: {status}", self.role);
                return;
            }
            if start.elapsed() > limit {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("child {} did not finish within {limit:?}", self.role);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Kills the child with SIGKILL and reaps it.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// In a child: prints a protocol line for the parent.
pub fn say(line: &str) {
    println!("@{line}");
}

/// In a child: waits for the parent's next line.
pub fn hear() -> String {
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .expect("reading parent");
    line.trim_end().to_owned()
}

/// In a child: the role and its arguments, if this process is a child.
pub fn child_role() -> Option<(String, Vec<String>)> {
    let role = std::env::var(CHILD_ROLE).ok()?;
    let args = std::env::var(CHILD_ARGS)
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    Some((role, args))
}

/// Runs `body` on a thread and fails the test if it takes longer than `limit`.
pub fn with_time_limit<T: Send + 'static>(
    limit: Duration,
    body: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    let handle = std::thread::spawn(move || {
        let _ = tx.send(body());
    });
    match rx.recv_timeout(limit) {
        Ok(v) => {
            let _ = handle.join();
            v
        }
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
            // The body panicked: surface its panic.
            match handle.join() {
                Err(p) => std::panic::resume_unwind(p),
                Ok(()) => unreachable!("sender dropped without sending"),
            }
        }
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => panic!("test exceeded {limit:?}"),
    }
}

/// Fills `buf` with `pattern(buf.len(), seed)` (word at a time; fast for
/// large objects).
pub fn fill_pattern(buf: &mut [u8], seed: u64) {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut chunks = buf.chunks_exact_mut(8);
    for c in &mut chunks {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        c.copy_from_slice(&x.to_le_bytes());
    }
    let rest = chunks.into_remainder();
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    let n = rest.len();
    rest.copy_from_slice(&x.to_le_bytes()[..n]);
}

/// Starts one thread per rank (rank i on node `nodes[i]`), each with a real
/// transport endpoint (shared memory on a node, TCP between nodes), and runs
/// `body` on each; as in the transport's own tests.
pub fn job(nodes: &[u32], body: impl Fn(lumen_transport::Endpoint) + Send + Sync + 'static) {
    use lumen_transport::{
        EndpointBuilder, EndpointOptions, JobSecret, PeerAddress, TransportConfig,
    };
    use std::sync::{Arc, Barrier, Mutex};
    let size = nodes.len() as u32;
    let job_id = unique_name("job");
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
            let nodes = nodes.to_vec();
            std::thread::spawn(move || {
                let node = nodes[rank as usize];
                let local: Vec<u32> = (0..size).filter(|&r| nodes[r as usize] == node).collect();
                let options = EndpointOptions {
                    rank,
                    size,
                    node,
                    local_rank: local.iter().position(|&r| r == rank).unwrap() as u32,
                    local_size: local.len() as u32,
                    job_id,
                    secret,
                    config: TransportConfig {
                        connect_timeout: Duration::from_secs(10),
                        ..TransportConfig::default()
                    },
                };
                let builder = EndpointBuilder::new(options).unwrap();
                table.lock().unwrap()[rank as usize] = Some(builder.address().clone());
                barrier.wait();
                let peers: Vec<PeerAddress> = table
                    .lock()
                    .unwrap()
                    .iter()
                    .map(|p| p.clone().unwrap())
                    .collect();
                let endpoint = builder
                    .connect(&peers, || {
                        barrier.wait();
                        Ok::<(), String>(())
                    })
                    .unwrap();
                body(endpoint.clone());
                endpoint.barrier().unwrap();
                endpoint.close();
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}
