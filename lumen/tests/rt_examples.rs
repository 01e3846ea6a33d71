//! The runtime's examples run to completion on the embedded local cluster
//! (started bare) and under `lumen run -n 4`.

mod common;

use std::process::Command;

use common::*;

fn bare(name: &str) -> String {
    let mut command = Command::new(example(name));
    command
        .env("LUMEN_NUM_WORKERS", "3")
        .env_remove("LUMEN_RANK");
    let output = run_with_timeout(&mut command, 120);
    let all = text(&output);
    assert!(output.status.success(), "{name} failed:\n{all}");
    all
}

fn launched(name: &str) -> String {
    let mut command = Command::new(lumen());
    command.args(["run", "-n", "4", "--"]).arg(example(name));
    let output = run_with_timeout(&mut command, 120);
    let all = text(&output);
    assert!(output.status.success(), "{name} failed:\n{all}");
    all
}

#[test]
fn quickstart_embedded_and_launched() {
    for all in [bare("quickstart"), launched("quickstart")] {
        assert!(all.contains("quickstart: ok"), "{all}");
        assert!(all.contains("fib(10) by nested tasks = 55"), "{all}");
    }
}

#[test]
fn monte_carlo_pi_embedded_and_launched() {
    for all in [bare("monte_carlo_pi"), launched("monte_carlo_pi")] {
        assert!(all.contains("pi ~= 3.14"), "{all}");
    }
}

#[test]
fn parameter_server_embedded_and_launched() {
    for all in [bare("parameter_server"), launched("parameter_server")] {
        assert!(all.contains("largest weight error 0.0"), "{all}");
    }
}

#[test]
fn shard_transfer_embedded_and_launched() {
    for all in [bare("shard_transfer"), launched("shard_transfer")] {
        assert!(
            all.contains("shard_transfer: 3 ranks read 4 shards (256 MiB each rank)"),
            "{all}"
        );
    }
}
