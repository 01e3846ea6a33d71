//! Three "nodes" as network namespaces, two ranks each: the world
//! communicator is hierarchical (shared memory inside a node, TCP between
//! node leaders) and hierarchical allreduce, flat allreduce, alltoall(v) and
//! every other collective are checked element for element across nodes.
//! Needs root and iproute2; skips with a message otherwise.

mod common;
use common::*;
use lumen_testkit::{netns_unavailable_reason, unique_prefix, NetnsCluster};

#[test]
fn three_nodes_two_ranks_hierarchical_allreduce_and_alltoall() {
    if let Some(reason) = netns_unavailable_reason() {
        eprintln!("SKIPPED: network namespaces unavailable here: {reason}");
        return;
    }
    let cluster = NetnsCluster::create(&unique_prefix("lmc"), 3).expect("creating namespaces");
    let hosts: Vec<String> = (0..3)
        .map(|i| format!("{}:2", cluster.namespace(i)))
        .collect();
    let mut command = cluster.command(0, "timeout");
    command
        .args(["-k", "5", "240"])
        .arg(lumen())
        .args(["run", "-n", "6", "--label", "--hosts", &hosts.join(",")])
        .args(["--launch-agent", "ip netns exec {host}"])
        .args(["--rendezvous-bind", &cluster.host_addr(0).to_string()])
        .arg("--")
        .arg(example("coll_check"))
        .args([
            "--sizes",
            "0,1,7,4099",
            "--types",
            "f64,i32,u8",
            "--hier",
            "--two-comms",
        ])
        .env("LUMEN_TCP_IF", cluster.subnet_cidr());
    let output = command.output().expect("running lumen in the namespace");
    let all = text(&output);
    assert!(output.status.success(), "job failed:\n{all}");
    assert!(
        all.contains("coll_check: 6 ranks,") && all.contains("(hierarchical: true)"),
        "{all}"
    );
    cluster.destroy().expect("removing namespaces");
}

#[test]
fn across_nodes_large_buffers_go_as_one_sided_reads() {
    if let Some(reason) = netns_unavailable_reason() {
        eprintln!("SKIPPED: network namespaces unavailable here: {reason}");
        return;
    }
    let cluster = NetnsCluster::create(&unique_prefix("lmr"), 2).expect("creating namespaces");
    let hosts: Vec<String> = (0..2)
        .map(|i| format!("{}:2", cluster.namespace(i)))
        .collect();
    let mut command = cluster.command(0, "timeout");
    command
        .args(["-k", "5", "240"])
        .arg(lumen())
        .args(["run", "-n", "4", "--label", "--hosts", &hosts.join(",")])
        .args(["--launch-agent", "ip netns exec {host}"])
        .args(["--rendezvous-bind", &cluster.host_addr(0).to_string()])
        .arg("--")
        .arg(example("coll_check"))
        .args([
            "--sizes", "4099", "--types", "f32", "--big", "1048576", "--hier",
        ])
        .args(["--rendezvous", "65536"])
        .env("LUMEN_TCP_IF", cluster.subnet_cidr());
    let output = command.output().expect("running lumen in the namespace");
    let all = text(&output);
    cluster.destroy().expect("removing namespaces");
    assert!(output.status.success(), "job failed:\n{all}");
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
