//! Helpers shared by the multi-process tests: where the binaries are, and how
//! to run a job and look at what it printed.

#![allow(dead_code, unreachable_pub)]

#[macro_use]
pub mod scenario;

use std::path::PathBuf;

/// The `lumen` binary built for this test run.
pub fn lumen() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_lumen"))
}

/// An example binary of the `lumen` crate (built by `cargo build --examples`,
/// which scripts/test.sh does before running the tests; built here if not).
pub fn example(name: &str) -> PathBuf {
    lumen_testkit::job::workspace_example("lumen", name)
}

/// A long-running job's stdout, line by line as it comes (each echoed
/// with `job: ` for the test's log), through a channel.
pub fn stdout_lines(child: &mut std::process::Child) -> std::sync::mpsc::Receiver<String> {
    use std::io::BufRead;
    let stdout = child.stdout.take().expect("piped stdout");
    let (lines, received) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            println!("job: {line}");
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    received
}

/// The first line containing `needle` within `within`; `None` when the
/// time passed or the job's output ended first.
pub fn wait_for_line(
    lines: &std::sync::mpsc::Receiver<String>,
    needle: &str,
    within: std::time::Duration,
) -> Option<String> {
    use std::sync::mpsc::RecvTimeoutError;
    let deadline = std::time::Instant::now() + within;
    while std::time::Instant::now() < deadline {
        match lines.recv_timeout(std::time::Duration::from_secs(1)) {
            Ok(line) if line.contains(needle) => return Some(line),
            Ok(_) | Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return None,
        }
    }
    None
}

#[allow(unused_imports)]
pub use lumen_testkit::job::{job_id, leftover_segments, run_with_timeout, text};
