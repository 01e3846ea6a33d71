//! Helpers shared by the multi-process collectives tests: `lumen run` and
//! this crate's `coll_check` example, found or built by lumen-testkit.

#![allow(dead_code, unreachable_pub)]

use std::path::PathBuf;

#[allow(unused_imports)]
pub use lumen_testkit::job::{job_id, leftover_segments, run_with_timeout, text};

/// The `lumen` command line; `lumen run` starts the multi-process jobs.
pub fn lumen() -> PathBuf {
    lumen_testkit::job::lumen_binary()
}

/// An example of this crate (the rank program of the multi-process jobs).
pub fn example(name: &str) -> PathBuf {
    lumen_testkit::job::workspace_example("lumen-collectives", name)
}
