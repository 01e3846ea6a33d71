//! The smallest rank program: joins the job however it was started, meets
//! every other rank at a barrier, and leaves. Rank 0 prints how many ranks
//! met and what its process holds at that point (threads, open sockets),
//! for start-up figures (`lumen bench startup`, BENCHMARKS.md):
//!
//! ```text
//! lumen run -n 8 -- target/release/examples/hello_ranks
//! hello: 8 ranks met; rank 0 has 1 threads and 0 sockets
//! ```
//!
//! Given the launcher's start time (`CLOCK_REALTIME` nanoseconds) as its
//! argument, rank 0 prints a JSON line instead, with launch to ready (every
//! rank through the first barrier): `{"ready_ms":..,"threads":..,"sockets":..}`.

fn count(dir: &str, keep: impl Fn(&std::path::Path) -> bool) -> usize {
    std::fs::read_dir(dir)
        .map(|entries| entries.flatten().filter(|e| keep(&e.path())).count())
        .unwrap_or(0)
}

fn main() -> anyhow::Result<()> {
    let started: Option<u128> = match std::env::args().nth(1) {
        Some(arg) => Some(
            arg.parse()
                .map_err(|e| anyhow::anyhow!("the start time {arg:?} is not nanoseconds: {e}"))?,
        ),
        None => None,
    };
    let job = lumen::bootstrap::join()?;
    job.endpoint.barrier()?;
    if job.endpoint.rank() == 0 {
        let ready = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let threads = count("/proc/self/task", |_| true);
        let sockets = count("/proc/self/fd", |fd| {
            std::fs::read_link(fd)
                .is_ok_and(|target| target.to_string_lossy().starts_with("socket:"))
        });
        match started {
            Some(t0) => println!(
                "{{\"ready_ms\": {:.3}, \"threads\": {threads}, \"sockets\": {sockets}}}",
                ready.saturating_sub(t0) as f64 / 1e6
            ),
            None => println!(
                "hello: {} ranks met; rank 0 has {threads} threads and {sockets} sockets",
                job.endpoint.size()
            ),
        }
    }
    job.finish()?;
    Ok(())
}
