//! A rank SIGKILLed in the middle of a stream of 1 MiB allreduces: every other
//! rank's collective returns an error (naming the dead rank) instead of
//! hanging, before `lumen run`'s one-second failure window closes.

mod common;
use common::*;
use std::process::Command;

fn killed_rank_fails_every_survivor(ranks: u32, victim: u32) {
    let out = run_with_timeout(
        Command::new(lumen())
            .args(["run", "-n", &ranks.to_string(), "--label", "--"])
            .arg(example("coll_check"))
            .args(["--kill-rank", &victim.to_string()]),
        60,
    );
    let all = text(&out);
    assert!(!out.status.success(), "job should fail:\n{all}");
    for rank in (0..ranks).filter(|&r| r != victim) {
        assert!(
            all.contains(&format!("coll_check: rank {rank} got an error")),
            "rank {rank} did not report an error:\n{all}"
        );
    }
    assert!(
        all.contains(&format!("peer {victim} died")),
        "the error should name the dead rank:\n{all}"
    );
}

#[test]
fn four_ranks_one_killed_during_allreduce() {
    killed_rank_fails_every_survivor(4, 2);
}

#[test]
fn five_ranks_one_killed_during_allreduce() {
    killed_rank_fails_every_survivor(5, 0);
}
