//! Every collective × every element type × sizes {0, 1, 7, 4099} × ranks
//! {1..5} under `lumen run`, each rank checking element for element against
//! a reference it computes itself (see examples/coll_check.rs for the
//! tolerance); two and three communicators driven at once from threads; and
//! large buffers (1 Mi elements for every operation of f32, bf16, i8 and u64
//! at 3 ranks; 1 Mi and 16 Mi + 1 elements of allreduce f32/f64/i64 with
//! every algorithm at 2 and 4 ranks, 1 Mi at 5).

mod common;
use common::*;
use std::process::Command;

fn coll_check(ranks: u32, args: &[&str], seconds: u64) {
    coll_check_env(ranks, args, seconds, &[]);
}

fn coll_check_env(ranks: u32, args: &[&str], seconds: u64, env: &[(&str, &str)]) {
    let out = run_with_timeout(
        Command::new(lumen())
            .envs(env.iter().copied())
            .args(["run", "-n", &ranks.to_string(), "--label", "--"])
            .arg(example("coll_check"))
            .args(args),
        seconds,
    );
    let all = text(&out);
    assert!(out.status.success(), "job failed:\n{all}");
    assert!(
        all.contains(&format!("coll_check: {ranks} ranks,")),
        "no summary line:\n{all}"
    );
}

#[test]
fn one_rank_every_op_and_type() {
    coll_check(1, &["--sizes", "0,1,7,4099"], 60);
}

#[test]
fn two_ranks_every_op_and_type_and_concurrent_communicators() {
    coll_check(2, &["--sizes", "0,1,7,4099", "--two-comms"], 120);
}

#[test]
fn three_ranks_every_op_and_type_and_concurrent_communicators() {
    coll_check(3, &["--sizes", "0,1,7,4099", "--two-comms"], 120);
}

#[test]
fn four_ranks_every_op_and_type_and_concurrent_communicators() {
    coll_check(4, &["--sizes", "0,1,7,4099", "--two-comms"], 120);
}

#[test]
fn point_to_point_algorithms_every_op_three_and_four_ranks() {
    // Inside one node the shared-memory algorithms are chosen; these runs
    // turn them off so the point-to-point schedules (the ones used across
    // nodes) are checked on every operation too.
    for ranks in [3, 4] {
        coll_check_env(
            ranks,
            &["--sizes", "0,1,7,4099", "--two-comms"],
            120,
            &[("LUMEN_COLL_SHM", "off")],
        );
    }
}

#[test]
fn shared_memory_paths_every_op_two_ranks_with_tiny_slots() {
    // Slots of one page and single-copy reads from 1 KiB: every operation
    // crosses many pipelined slots and the single-copy paths.
    coll_check_env(
        2,
        &["--sizes", "1,7,4099,70000", "--types", "f64,u8,i32"],
        120,
        &[
            ("LUMEN_COLL_SHM_SLOT", "4096"),
            ("LUMEN_COLL_SHM_COPY_MIN", "1024"),
            ("LUMEN_COLL_SHM_REDUCE_COPY_MIN", "4096"),
            ("LUMEN_COLL_SHM_BCAST_COPY_MIN", "1024"),
        ],
    );
}

#[test]
fn five_ranks_every_op_and_type_and_concurrent_communicators() {
    coll_check(5, &["--sizes", "0,1,7,4099", "--two-comms"], 180);
}

#[test]
fn three_ranks_one_mi_elements_every_op_four_types() {
    // One float, one half, one narrow and one wide integer type: the big
    // size exercises segmentation, which does not depend on the type.
    coll_check(
        3,
        &["--sizes", "1048576", "--types", "f32,bf16,i8,u64"],
        240,
    );
}

#[test]
fn big_allreduce_two_ranks() {
    coll_check(2, &["--sizes", "", "--big", "1048576,16777217"], 240);
}

#[test]
fn big_allreduce_four_ranks() {
    coll_check(4, &["--sizes", "", "--big", "1048576,16777217"], 240);
}

#[test]
fn big_allreduce_five_ranks() {
    coll_check(5, &["--sizes", "", "--big", "1048576"], 240);
}

#[test]
fn three_ranks_yielding_waits_with_credit_flow_control() {
    // Forced on, so that machines with many cores test this path too: eager
    // segments between ranks of a node, credits every 8 segments.
    coll_check_env(
        3,
        &["--sizes", "4099,1048576", "--types", "f32,u8"],
        240,
        &[("LUMEN_COLL_YIELD", "on")],
    );
}
