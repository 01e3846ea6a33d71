//! Helpers shared by the multi-process tests: where the binaries are, and how
//! to run a job and look at what it printed.

#![allow(dead_code, unreachable_pub)]

#[macro_use]
pub mod scenario;

use std::path::PathBuf;
use std::process::{Command, Output};

/// The `lumen` binary built for this test run.
pub fn lumen() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_lumen"))
}

/// An example binary of the `lumen` crate (built by `cargo build --examples`,
/// which scripts/test.sh does before running the tests).
pub fn example(name: &str) -> PathBuf {
    let path = lumen()
        .parent()
        .expect("target dir")
        .join("examples")
        .join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build -p lumen --examples` first",
        path.display()
    );
    path
}

/// Runs a command to completion with a time limit, so a hang fails the test.
pub fn run_with_timeout(command: &mut Command, seconds: u64) -> Output {
    let mut timed = Command::new("timeout");
    timed
        .args(["-k", "5", &seconds.to_string()])
        .arg(command.get_program())
        .args(command.get_args());
    for (k, v) in command.get_envs() {
        match v {
            Some(v) => timed.env(k, v),
            None => timed.env_remove(k),
        };
    }
    let output = timed.output().expect("spawning the job");
    assert_ne!(
        output.status.code(),
        Some(124),
        "timed out after {seconds} s:\n{}",
        text(&output)
    );
    output
}

/// stdout and stderr together, for assertions and failure messages.
pub fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// The job id printed by the ping example (`job <id>`), if any.
pub fn job_id(output: &Output) -> Option<String> {
    text(output)
        .lines()
        .find_map(|l| l.split("job id ").nth(1))
        .map(|s| s.split_whitespace().next().unwrap_or("").to_string())
}

/// Shared-memory files of a job that are still there.
pub fn leftover_segments(job_id: &str) -> Vec<String> {
    std::fs::read_dir("/dev/shm")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&format!("lumen-{job_id}-")))
                .collect()
        })
        .unwrap_or_default()
}
