//! The smallest rank program: joins the job however it was started, meets
//! every other rank at a barrier, and leaves. Rank 0 prints how many ranks
//! met and what its process holds at that point (threads, open sockets),
//! for start-up figures (`farm-bench -- lumen run -n N -- hello_ranks`,
//! BENCHMARKS.md):
//!
//! ```text
//! lumen run -n 8 -- target/release/examples/hello_ranks
//! hello: 8 ranks met; rank 0 has 1 threads and 0 sockets
//! ```

fn count(dir: &str, keep: impl Fn(&std::path::Path) -> bool) -> usize {
    std::fs::read_dir(dir)
        .map(|entries| entries.flatten().filter(|e| keep(&e.path())).count())
        .unwrap_or(0)
}

fn main() -> anyhow::Result<()> {
    let job = lumen::bootstrap::join()?;
    job.endpoint.barrier()?;
    if job.endpoint.rank() == 0 {
        let threads = count("/proc/self/task", |_| true);
        let sockets = count("/proc/self/fd", |fd| {
            std::fs::read_link(fd)
                .is_ok_and(|target| target.to_string_lossy().starts_with("socket:"))
        });
        println!(
            "hello: {} ranks met; rank 0 has {threads} threads and {sockets} sockets",
            job.endpoint.size()
        );
    }
    job.finish()?;
    Ok(())
}
