//! Object pulls between two namespace nodes through the one-sided fabric
//! (`LUMEN_FABRIC=ofi`, libfabric's `tcp;ofi_rxm` here, built with the
//! `ofi` feature): a 64 MiB object made on node 1 and read on node 0
//! arrives intact, the driver's `one_sided_pulls` counter says it went
//! one-sided, and the start-up log names the provider. With
//! `LUMEN_FABRIC=tcp` the same pull goes in chunks (counter 0). Needs root
//! and iproute2; skips otherwise. `LUMEN_FABRIC=verbs` on a machine with no
//! RDMA device (or a build without the `verbs` feature) fails the job at
//! start-up saying so and what to use instead.

mod common;

use common::*;
#[cfg(feature = "ofi")]
use lumen_testkit::{netns_unavailable_reason, unique_prefix, NetnsCluster};

#[cfg(feature = "ofi")]
fn run(fabric: &str, tag: &str) -> Option<String> {
    if let Some(reason) = netns_unavailable_reason() {
        eprintln!("SKIPPED: network namespaces unavailable here: {reason}");
        return None;
    }
    let cluster = NetnsCluster::create(&unique_prefix(tag), 2).expect("creating namespaces");
    let hosts = format!("{}:2,{}:2", cluster.namespace(0), cluster.namespace(1));
    let mut command = cluster.command(0, "timeout");
    command
        .args(["-k", "5", "180"])
        .arg(lumen())
        .args(["run", "-n", "4", "--label"])
        .args(["--hosts", &hosts])
        .args(["--launch-agent", "ip netns exec {host}"])
        .args(["--rendezvous-bind", &cluster.host_addr(0).to_string()])
        .arg("--")
        .arg(std::env::current_exe().expect("test binary"))
        .args([
            "scenario::pull_across_nodes",
            "--exact",
            "--ignored",
            "--nocapture",
        ])
        .env("LUMEN_TCP_IF", cluster.subnet_cidr())
        .env("LUMEN_FABRIC", fabric)
        .env("LUMEN_LOG", "info");
    let output = command.output().expect("running lumen in the namespaces");
    let all = text(&output);
    cluster.destroy().expect("removing namespaces");
    assert!(output.status.success(), "job failed:\n{all}");
    assert!(all.contains("scenario pull_across_nodes: ok"), "{all}");
    Some(all)
}

#[cfg(feature = "ofi")]
#[test]
fn pulls_between_nodes_go_one_sided_over_libfabric() {
    let Some(all) = run("ofi", "lfo") else {
        return;
    };
    assert!(
        all.contains("fabric: object pulls between nodes go one-sided over ofi/tcp;ofi_rxm"),
        "{all}"
    );
    assert!(all.contains("one-sided pulls: 1"), "{all}");
    for line in all.lines().filter(|l| l.contains("MB/s")) {
        eprintln!("{line}");
    }
}

#[cfg(feature = "ofi")]
#[test]
fn with_lumen_fabric_tcp_they_go_in_chunks() {
    let Some(all) = run("tcp", "lft") else {
        return;
    };
    assert!(all.contains("fabric: tcp (LUMEN_FABRIC=tcp)"), "{all}");
    assert!(all.contains("one-sided pulls: 0"), "{all}");
    for line in all.lines().filter(|l| l.contains("MB/s")) {
        eprintln!("{line}");
    }
}

#[test]
fn lumen_fabric_verbs_without_a_device_is_refused_saying_what_to_do() {
    if cfg!(feature = "verbs") && !lumen_transport::fabric::verbs_devices_present() {
        eprintln!("(no verbs device here: the refusal names the missing device)");
    } else if cfg!(feature = "verbs") {
        eprintln!("SKIPPED: this machine has a verbs device; the refusal cannot be shown");
        return;
    }
    let output = std::process::Command::new("timeout")
        .args(["-k", "5", "120"])
        .arg(lumen())
        .args(["run", "-n", "2", "--"])
        .arg(std::env::current_exe().expect("test binary"))
        .args([
            "scenario::pull_across_nodes",
            "--exact",
            "--ignored",
            "--nocapture",
        ])
        .env("LUMEN_FABRIC", "verbs")
        .output()
        .expect("running lumen");
    let all = text(&output);
    assert!(!output.status.success(), "the job should fail:\n{all}");
    assert!(all.contains("LUMEN_FABRIC=verbs on rank"), "{all}");
    assert!(
        all.contains("no verbs backend") || all.contains("no RDMA device"),
        "{all}"
    );
    assert!(all.contains("use LUMEN_FABRIC=tcp or auto"), "{all}");
}

mod scenario {
    #[lumen::remote]
    fn make(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8).collect()
    }

    #[test]
    #[ignore = "a scenario: run by the tests above under lumen run"]
    fn pull_across_nodes() -> lumen::Result<()> {
        let rt = lumen::init()?;
        assert_eq!(rt.num_nodes(), 2);
        let len = 64 << 20;
        let made = make::options().node(1).remote(&rt, len)?;
        lumen::wait(std::slice::from_ref(&made), 1, None)?;
        let started = std::time::Instant::now();
        let bytes = made.get()?;
        let took = started.elapsed();
        assert_eq!(bytes.len(), len);
        assert!(bytes.iter().enumerate().all(|(i, &b)| b == (i % 251) as u8));
        let stats = rt.stats(0)?;
        println!(
            "pulled 64 MiB across nodes in {took:?} ({:.0} MB/s); one-sided pulls: {}",
            len as f64 / took.as_secs_f64() / 1e6,
            stats.one_sided_pulls
        );
        println!("scenario pull_across_nodes: ok");
        Ok(())
    }
}
