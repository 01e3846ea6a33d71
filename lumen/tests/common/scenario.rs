//! Running scenarios: a scenario is an ignored test in the test binary's
//! `scenarios` module that calls `lumen::init()` itself; a runner test
//! starts this same binary with the scenario's name, bare (the embedded
//! local cluster, the binary re-executed as workers) or under `lumen run`,
//! with a time limit, and checks it printed `scenario NAME: ok`.

#![allow(unused_macros)]

use std::path::PathBuf;
use std::process::Command;

use super::*;

pub fn this_binary() -> PathBuf {
    std::env::current_exe().expect("test binary path")
}

pub fn scenario_args(name: &str) -> Vec<String> {
    vec![
        format!("scenarios::{name}"),
        "--exact".into(),
        "--ignored".into(),
        "--nocapture".into(),
        "--test-threads=1".into(),
    ]
}

/// Runs a scenario on the embedded cluster (3 workers); returns its output.
pub fn embedded(name: &str) -> String {
    embedded_with(name, 3)
}

pub fn embedded_with(name: &str, workers: u32) -> String {
    embedded_with_env(name, workers, &[])
}

/// [`embedded_with`] with these settings in the environment.
pub fn embedded_with_env(name: &str, workers: u32, env: &[(&str, &str)]) -> String {
    let mut command = Command::new(this_binary());
    command
        .args(scenario_args(name))
        .env("LUMEN_NUM_WORKERS", workers.to_string())
        .env_remove("LUMEN_RANK");
    for (k, v) in env {
        command.env(k, v);
    }
    let output = run_with_timeout(&mut command, 120);
    let all = text(&output);
    assert!(output.status.success(), "scenario {name} failed:\n{all}");
    assert!(all.contains(&format!("scenario {name}: ok")), "{all}");
    all
}

/// Runs a scenario under `lumen run -n 4`; returns its output.
pub fn launched(name: &str) -> String {
    let mut command = Command::new(lumen());
    command
        .args(["run", "-n", "4", "--"])
        .arg(this_binary())
        .args(scenario_args(name));
    let output = run_with_timeout(&mut command, 120);
    let all = text(&output);
    assert!(output.status.success(), "scenario {name} failed:\n{all}");
    assert!(all.contains(&format!("scenario {name}: ok")), "{all}");
    all
}

/// Processes still running with this job id in their environment.
pub fn processes_of_job(job_id: &str) -> Vec<u32> {
    let needle = format!("LUMEN_JOB_ID={job_id}");
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()))
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .map(|env| env.split(|&b| b == 0).any(|kv| kv == needle.as_bytes()))
                .unwrap_or(false)
        })
        .collect()
}

pub fn printed_job_id(output: &str) -> String {
    output
        .lines()
        .find_map(|l| l.split("job id ").nth(1))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| panic!("no job id printed:\n{output}"))
}

/// Runs a scenario under `lumen run -n N --keep-going`: a rank that dies
/// does not stop the job, so the runtime's own recovery is what is tested.
pub fn launched_keep_going(name: &str, ranks: u32) -> String {
    let mut command = Command::new(lumen());
    command
        .args(["run", "-n", &ranks.to_string(), "--keep-going", "--"])
        .arg(this_binary())
        .args(scenario_args(name));
    let output = run_with_timeout(&mut command, 120);
    let all = text(&output);
    assert!(output.status.success(), "scenario {name} failed:\n{all}");
    assert!(all.contains(&format!("scenario {name}: ok")), "{all}");
    all
}

/// Runner tests for each named scenario, on the embedded cluster and under
/// `lumen run` (modules `embedded_cluster` and `lumen_run`).
macro_rules! both_ways {
    ($($name:ident),* $(,)?) => {
        mod embedded_cluster {
            $(
                #[test]
                fn $name() {
                    super::embedded(stringify!($name));
                }
            )*
        }
        mod lumen_run {
            $(
                #[test]
                fn $name() {
                    super::launched(stringify!($name));
                }
            )*
        }
    };
}

/// Runs `scenario` (a name in the test binary's `module`, `scenarios` or
/// `scenario`) under `lumen run` on one network namespace per entry of
/// `per_node` with that many ranks each and the extra environment;
/// `keep_going` keeps the job alive when a rank dies. The namespaces are
/// removed before the job's result is checked. Returns its output, or
/// `None` (with a message) where namespaces cannot be made.
pub fn run_on_netns_nodes(
    tag: &str,
    per_node: &[u32],
    module: &str,
    scenario: &str,
    env: &[(&str, &str)],
    keep_going: bool,
) -> Option<String> {
    use lumen_testkit::{netns_unavailable_reason, unique_prefix, NetnsCluster};
    if let Some(reason) = netns_unavailable_reason() {
        eprintln!("SKIPPED: network namespaces unavailable here: {reason}");
        return None;
    }
    let nodes = per_node.len();
    let cluster = NetnsCluster::create(&unique_prefix(tag), nodes).expect("creating namespaces");
    let hosts: Vec<String> = per_node
        .iter()
        .enumerate()
        .map(|(i, n)| format!("{}:{n}", cluster.namespace(i)))
        .collect();
    let ranks: u32 = per_node.iter().sum();
    let mut command = cluster.command(0, "timeout");
    command.args(["-k", "5", "180"]).arg(lumen()).args([
        "run",
        "-n",
        &ranks.to_string(),
        "--label",
    ]);
    if keep_going {
        command.arg("--keep-going");
    }
    command
        .args(["--hosts", &hosts.join(",")])
        .args(["--launch-agent", "ip netns exec {host}"])
        .args(["--rendezvous-bind", &cluster.host_addr(0).to_string()])
        .arg("--")
        .arg(this_binary())
        .args([
            &format!("{module}::{scenario}"),
            "--exact",
            "--ignored",
            "--nocapture",
        ])
        .env("LUMEN_TCP_IF", cluster.subnet_cidr())
        // For scenarios that cut a host's link (`ip -n BRIDGE link set vhI down`).
        .env("LUMEN_TEST_BRIDGE", cluster.bridge_namespace())
        .envs(env.iter().copied());
    let output = command.output().expect("running lumen in the namespace");
    let all = text(&output);
    cluster.destroy().expect("removing namespaces");
    assert!(output.status.success(), "job failed:\n{all}");
    assert!(all.contains(&format!("scenario {scenario}: ok")), "{all}");
    Some(all)
}
