//! Three "nodes" as network namespaces joined by a bridge, two ranks each:
//! shared memory inside a node, TCP across, with io_uring and with the epoll
//! fallback forced. Needs root and iproute2; skips with a message otherwise.

mod common;
use common::*;
use lumen_testkit::{netns_unavailable_reason, unique_prefix, NetnsCluster};

fn run_across_namespaces(backend: &str) {
    if let Some(reason) = netns_unavailable_reason() {
        eprintln!("SKIPPED: network namespaces unavailable here: {reason}");
        return;
    }
    let cluster = NetnsCluster::create(&unique_prefix("lmn"), 3).expect("creating namespaces");
    let hosts: Vec<String> = (0..3)
        .map(|i| format!("{}:2", cluster.namespace(i)))
        .collect();
    // `timeout` turns a hang into a failure instead of a stuck test.
    let mut command = cluster.command(0, "timeout");
    command
        .args(["-k", "5", "180"])
        .arg(lumen())
        .args(["run", "-n", "6", "--label", "--hosts", &hosts.join(",")])
        .args(["--launch-agent", "ip netns exec {host}"])
        .args(["--rendezvous-bind", &cluster.host_addr(0).to_string()])
        .arg("--")
        .arg(example("ping"))
        .args(["--sizes", "0,8,65536,1048576,8388608"])
        .env("LUMEN_TCP_IF", cluster.subnet_cidr())
        .env("LUMEN_TCP_BACKEND", backend);
    let output = command.output().expect("running lumen in the namespace");
    let all = text(&output);
    assert!(output.status.success(), "job failed:\n{all}");
    assert!(all.contains("6 ranks exchanged 5 sizes"), "{all}");
    assert!(all.contains("on 3 nodes"), "{all}");
    let expected = if backend == "epoll" {
        "tcp receiver: epoll"
    } else {
        "tcp receiver: io_uring"
    };
    assert!(all.contains(expected), "{all}");
    cluster.destroy().expect("removing namespaces");
}

#[test]
fn three_nodes_two_ranks_each_io_uring() {
    run_across_namespaces("uring");
}

#[test]
fn three_nodes_two_ranks_each_epoll_fallback() {
    run_across_namespaces("epoll");
}
