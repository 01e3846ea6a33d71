//! Three "nodes" as network namespaces, two ranks each: the world
//! communicator is hierarchical (shared memory inside a node, TCP between
//! node leaders) and hierarchical allreduce, flat allreduce, alltoall(v) and
//! every other collective are checked element for element across nodes.
//! Needs root and iproute2; skips with a message otherwise.

mod common;
use common::*;
use lumen_testkit::{netns_unavailable_reason, unique_prefix, NetnsCluster};

/// Runs `coll_check ARGS` under `lumen run` on `nodes` namespace nodes
/// of two ranks each; None (skipped, saying why) without namespaces.
fn coll_check_across(tag: &str, nodes: usize, args: &[&str]) -> Option<String> {
    if let Some(reason) = netns_unavailable_reason() {
        eprintln!("SKIPPED: network namespaces unavailable here: {reason}");
        return None;
    }
    let cluster = NetnsCluster::create(&unique_prefix(tag), nodes).expect("creating namespaces");
    let hosts: Vec<String> = (0..nodes)
        .map(|i| format!("{}:2", cluster.namespace(i)))
        .collect();
    let mut command = cluster.command(0, "timeout");
    command
        .args(["-k", "5", "240"])
        .arg(lumen())
        .args([
            "run",
            "-n",
            &(2 * nodes).to_string(),
            "--label",
            "--hosts",
            &hosts.join(","),
        ])
        .args(["--launch-agent", "ip netns exec {host}"])
        .args(["--rendezvous-bind", &cluster.host_addr(0).to_string()])
        .arg("--")
        .arg(example("coll_check"))
        .args(args)
        .env("LUMEN_TCP_IF", cluster.subnet_cidr());
    let output = command.output().expect("running lumen in the namespace");
    let all = text(&output);
    cluster.destroy().expect("removing namespaces");
    assert!(output.status.success(), "job failed:\n{all}");
    Some(all)
}

#[test]
fn three_nodes_two_ranks_hierarchical_allreduce_and_alltoall() {
    let Some(all) = coll_check_across(
        "lmc",
        3,
        &[
            "--sizes",
            "0,1,7,4099",
            "--types",
            "f64,i32,u8",
            "--hier",
            "--two-comms",
        ],
    ) else {
        return;
    };
    assert!(
        all.contains("coll_check: 6 ranks,") && all.contains("(hierarchical: true)"),
        "{all}"
    );
}

#[test]
fn across_nodes_large_buffers_go_as_one_sided_reads() {
    let Some(all) = coll_check_across(
        "lmr",
        2,
        &[
            "--sizes",
            "4099",
            "--types",
            "f32",
            "--big",
            "1048576",
            "--hier",
            "--rendezvous",
            "65536",
        ],
    ) else {
        return;
    };
    assert!(all.contains("coll_check: 4 ranks,"), "{all}");
    let sent: u64 = all
        .lines()
        .filter_map(|l| l.split("rendezvous: sent ").nth(1))
        .filter_map(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    eprintln!(
        "{}",
        all.lines()
            .filter(|l| l.contains("rendezvous"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(sent > 0, "no large buffer went one-sided:\n{all}");
    assert!(!all.contains("fallbacks 1"), "{all}");
}
