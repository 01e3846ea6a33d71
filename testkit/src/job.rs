//! Running jobs from integration tests: where the workspace's binaries and
//! examples are (built on first use when a test run did not build them),
//! how to run a command with a time limit, and how to read what a job
//! printed and left behind.
//!
//! The transport's and the collectives' multi-rank tests start their ranks
//! with `lumen run` (the launcher's spawner behind the `lumen` binary) and
//! an example of their own crate as the rank program. Cargo only promises a
//! crate's tests its own binaries (`CARGO_BIN_EXE_*`), so these helpers find
//! the others next to the test executable (`target/<profile>/`) and, when
//! one is missing, build it with the cargo that built the tests.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;

/// The build profile directory the running test executable lives in
/// (`target/<profile>`, the parent of `deps/`).
pub fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable's path");
    exe.parent()
        .and_then(Path::parent)
        .expect("a test executable under target/<profile>/deps")
        .to_path_buf()
}

/// One build at a time from this process (tests run on several threads).
static BUILDING: Mutex<()> = Mutex::new(());

fn build_if_missing(path: PathBuf, cargo_args: &[&str]) -> PathBuf {
    let _one = BUILDING.lock().unwrap_or_else(|p| p.into_inner());
    if path.exists() {
        return path;
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("testkit lives in the workspace");
    let mut command = Command::new(option_env!("CARGO").unwrap_or("cargo"));
    command.arg("build").args(cargo_args).current_dir(workspace);
    if profile_dir().file_name().is_some_and(|p| p == "release") {
        command.arg("--release");
    }
    let status = command.status().expect("running cargo build");
    assert!(
        status.success() && path.exists(),
        "building {} failed (cargo build {})",
        path.display(),
        cargo_args.join(" ")
    );
    path
}

/// The binary `name` of workspace package `package`, built if missing.
pub fn workspace_binary(package: &str, name: &str) -> PathBuf {
    build_if_missing(profile_dir().join(name), &["-p", package, "--bin", name])
}

/// The example `name` of workspace package `package`, built if missing.
pub fn workspace_example(package: &str, name: &str) -> PathBuf {
    build_if_missing(
        profile_dir().join("examples").join(name),
        &["-p", package, "--example", name],
    )
}

/// The `lumen` command line (`lumen run` starts jobs like `mpirun`).
pub fn lumen_binary() -> PathBuf {
    workspace_binary("lumen", "lumen")
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

/// The job id a rank program printed (`job id <id>`), if any.
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
