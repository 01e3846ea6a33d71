//! `run_job` with real processes on this machine, using the `rank_probe`
//! example as the rank program.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use lumen_launcher::spawn::{
    run_job, shm_segment_prefix, ExitCause, JobOutcome, JobSpec, RankFailure,
};

/// Path of the `rank_probe` example, built on first use if `cargo test` did not
/// build it already (it does, unless a single test target was selected).
fn probe() -> &'static Path {
    static PROBE: OnceLock<PathBuf> = OnceLock::new();
    PROBE.get_or_init(|| {
        let exe = std::env::current_exe().expect("test executable path");
        // target/<profile>/deps/spawn_local-hash → target/<profile>/examples/rank_probe
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("test executable under target/<profile>/deps");
        let path = profile_dir.join("examples").join("rank_probe");
        if !path.exists() {
            let status = Command::new(env!("CARGO"))
                .args(["build", "-p", "lumen-launcher", "--example", "rank_probe"])
                .current_dir(env!("CARGO_MANIFEST_DIR"))
                .status()
                .expect("run cargo");
            assert!(status.success(), "building rank_probe failed");
        }
        path
    })
}

fn spec(ranks: u32, args: &[&str]) -> JobSpec {
    let mut spec = JobSpec::local(ranks, probe());
    spec.args = args.iter().map(Into::into).collect();
    spec.label_output = true;
    spec
}

fn run(spec: &JobSpec) -> (JobOutcome, Duration) {
    let started = Instant::now();
    match run_job(spec) {
        Ok(outcome) => (outcome, started.elapsed()),
        Err(error) => panic!("run_job: {error}"),
    }
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("lumen-spawn-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// Asserts that no process whose pid a probe wrote to `dir` still exists.
fn assert_no_leftovers(dir: &Path, ranks: u32) {
    for rank in 0..ranks {
        let file = dir.join(format!("rank{rank}.pid"));
        let pid =
            std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let cmdline = std::fs::read(format!("/proc/{}/cmdline", pid.trim())).unwrap_or_default();
        assert!(
            !String::from_utf8_lossy(&cmdline).contains("rank_probe"),
            "rank {rank} (pid {pid}) is still running"
        );
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn four_ranks_succeed() {
    let (outcome, _) = run(&spec(4, &[]));
    assert_eq!(outcome.exit_code, 0, "{outcome:?}");
    assert_eq!(outcome.first_failure, None);
    assert_eq!(outcome.exits, vec![ExitCause::Code(0); 4]);
    assert!(outcome.job_id.starts_with('l'));
}

#[test]
fn failing_rank_stops_the_job_with_its_code() {
    let dir = temp_dir("exit");
    let dir_arg = dir.to_string_lossy().into_owned();
    let (outcome, took) = run(&spec(4, &["exit", "2", "3", "hang", "pids", &dir_arg]));
    assert_eq!(outcome.exit_code, 3, "{outcome:?}");
    assert_eq!(
        outcome.first_failure,
        Some(RankFailure {
            rank: 2,
            cause: ExitCause::Code(3)
        })
    );
    // The hanging ranks were stopped by SIGTERM, well within the grace period.
    for rank in [0usize, 1, 3] {
        assert_eq!(
            outcome.exits[rank],
            ExitCause::Signal(libc::SIGTERM),
            "{outcome:?}"
        );
    }
    assert!(took < Duration::from_secs(20), "{took:?}");
    assert_no_leftovers(&dir, 4);
}

#[test]
fn keep_going_outlives_a_failing_rank_but_not_rank_0() {
    let mut going = spec(4, &["exit", "2", "3", "sleep", "300", "nobarrier"]);
    going.keep_going = true;
    let (outcome, _) = run(&going);
    assert_eq!(outcome.exit_code, 0, "{outcome:?}");
    assert_eq!(outcome.first_failure, None);
    assert_eq!(outcome.exits[2], ExitCause::Code(3));
    for rank in [0usize, 1, 3] {
        assert_eq!(outcome.exits[rank], ExitCause::Code(0), "{outcome:?}");
    }
    // Rank 0 failing still stops the job, with its code.
    let mut driver_fails = spec(3, &["exit", "0", "4", "hang"]);
    driver_fails.keep_going = true;
    let (outcome, _) = run(&driver_fails);
    assert_eq!(outcome.exit_code, 4, "{outcome:?}");
    assert_eq!(
        outcome.first_failure,
        Some(RankFailure {
            rank: 0,
            cause: ExitCause::Code(4)
        })
    );
}

#[test]
fn killed_rank_fails_the_job_and_shm_is_cleaned() {
    let dir = temp_dir("kill");
    let dir_arg = dir.to_string_lossy().into_owned();
    let (outcome, _) = run(&spec(
        4,
        &["selfkill", "1", "hang", "shm", "pids", &dir_arg],
    ));
    assert_eq!(
        outcome.first_failure,
        Some(RankFailure {
            rank: 1,
            cause: ExitCause::Signal(libc::SIGKILL)
        }),
        "{outcome:?}"
    );
    assert_eq!(outcome.exit_code, 128 + libc::SIGKILL);
    let segment = format!("/dev/shm/{}n0", shm_segment_prefix(&outcome.job_id));
    assert!(!Path::new(&segment).exists(), "{segment} was left behind");
    assert_no_leftovers(&dir, 4);
}

#[test]
fn ranks_that_never_arrive_are_named() {
    let mut spec = spec(3, &["skip", "2"]);
    spec.env
        .push(("LUMEN_RENDEZVOUS_TIMEOUT_MS".into(), "1000".into()));
    let (outcome, took) = run(&spec);
    assert_ne!(outcome.exit_code, 0);
    assert_eq!(outcome.never_arrived, vec![2], "{outcome:?}");
    assert!(matches!(
        outcome.first_failure,
        Some(RankFailure {
            rank: 0 | 1,
            cause: ExitCause::Code(1)
        })
    ));
    assert!(took < Duration::from_secs(20), "{took:?}");
}

#[test]
fn missing_program_is_a_spawn_error() {
    let spec = JobSpec::local(2, "/nonexistent/lumen-program");
    match run_job(&spec) {
        Err(error) => {
            let text = error.to_string();
            assert!(text.contains("could not start rank 0"), "{text}");
        }
        Ok(outcome) => panic!("expected an error, got {outcome:?}"),
    }
}
