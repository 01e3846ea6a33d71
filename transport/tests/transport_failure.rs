//! A rank killed with SIGKILL mid-job: the survivors report "peer N died"
//! within a bounded time, `lumen run` exits non-zero, and no shared-memory
//! segment of the job is left behind.

mod common;
use common::*;
use std::process::Command;
use std::time::Instant;

#[test]
fn sigkilled_rank_is_reported_and_job_fails_cleanly() {
    let start = Instant::now();
    let out = run_with_timeout(
        Command::new(lumen())
            .args(["run", "-n", "4", "--label", "--"])
            .arg(example("ping"))
            .args(["--sizes", "8,1024,65536,1048576", "--kill-rank", "2"]),
        60,
    );
    let all = text(&out);
    assert!(!out.status.success(), "job should fail:\n{all}");
    assert_eq!(
        out.status.code(),
        Some(137),
        "exit code should be 128+SIGKILL:\n{all}"
    );
    assert!(all.contains("rank 2 exited with signal 9"), "{all}");
    assert!(
        all.contains("peer 2 died"),
        "survivors should name the dead peer:\n{all}"
    );
    assert!(start.elapsed().as_secs() < 30, "took {:?}", start.elapsed());
    let id = job_id(&out).expect("ping prints its job id");
    assert!(
        leftover_segments(&id).is_empty(),
        "segments left behind: {:?}",
        leftover_segments(&id)
    );
}
