//! A rank SIGKILLed in the middle of a stream of 1 MiB allreduces: every other
//! rank's collective returns an error (naming the dead rank) instead of
//! hanging, before `lumen run`'s one-second failure window closes. Both ways
//! of waiting are covered: the transport's spin-then-sleep receive and the
//! poll-and-yield receive used on oversubscribed nodes.

mod common;
use common::*;
use std::process::Command;

fn killed_rank_fails_every_survivor(ranks: u32, victim: u32, yield_when_idle: &str) {
    let out = run_with_timeout(
        Command::new(lumen())
            .env("LUMEN_COLL_YIELD", yield_when_idle)
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
fn four_ranks_one_killed_during_allreduce_spin_then_sleep() {
    killed_rank_fails_every_survivor(4, 2, "off");
}

#[test]
fn five_ranks_one_killed_during_allreduce_poll_and_yield() {
    killed_rank_fails_every_survivor(5, 0, "on");
}
