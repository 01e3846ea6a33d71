//! Four ranks on one node under `lumen run` exchange messages all-to-all over
//! shared memory, 0 B to 64 MiB, every byte verified by the receiver.

mod common;
use common::*;
use std::process::Command;

#[test]
fn four_ranks_all_to_all_zero_to_64_mib() {
    let sizes = "0,1,8,1000,16384,16385,65536,1048576,16777216,67108864";
    let out = run_with_timeout(
        Command::new(lumen())
            .args(["run", "-n", "4", "--"])
            .arg(example("ping"))
            .args(["--sizes", sizes]),
        240,
    );
    let all = text(&out);
    assert!(out.status.success(), "job failed:\n{all}");
    assert!(
        all.contains("4 ranks exchanged 10 sizes all-to-all"),
        "{all}"
    );
    let id = job_id(&out).expect("ping prints its job id");
    assert!(
        leftover_segments(&id).is_empty(),
        "segments left behind: {:?}",
        leftover_segments(&id)
    );
}

#[test]
fn small_eager_limit_and_ring_still_deliver_everything() {
    // A tiny ring forces wrap-around and chunking paths.
    let out = run_with_timeout(
        Command::new(lumen())
            .args(["run", "-n", "3", "--"])
            .arg(example("ping"))
            .args(["--sizes", "0,3000,5000,100000,1048576"])
            .env("LUMEN_SHM_RING_BYTES", "16K")
            .env("LUMEN_EAGER_LIMIT", "1K"),
        120,
    );
    assert!(out.status.success(), "job failed:\n{}", text(&out));
}
