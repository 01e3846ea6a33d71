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

#[allow(unused_imports)]
pub use lumen_testkit::job::{job_id, leftover_segments, run_with_timeout, text};
