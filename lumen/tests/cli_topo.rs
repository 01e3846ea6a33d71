//! `lumen topo` on this machine and on the synthetic hwloc XML machines of
//! `lumen-sched`'s tests: it prints the machine and, with `--ranks N`, the
//! binding of N local ranks; bad input is an error, not a panic.

use std::path::PathBuf;
use std::process::{Command, Output};

fn topo(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lumen"))
        .arg("topo")
        .args(args)
        .output()
        .expect("running lumen topo")
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn machine(name: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../sched/tests/machines")
        .join(name)
        .display()
        .to_string()
}

#[test]
fn this_machine_and_two_ranks() {
    let out = topo(&["--ranks", "2"]);
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(
        all.contains("Machine") && all.contains("NUMANode P#0"),
        "{all}"
    );
    assert!(
        all.contains("local rank   0:") && all.contains("local rank   1:"),
        "{all}"
    );
}

#[test]
fn dgx_like_node_binds_each_rank_next_to_its_gpu() {
    let out = topo(&["--xml", &machine("dgx-like.xml"), "--ranks", "8"]);
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(all.contains("binding of 8 local ranks"), "{all}");
    // Two GPUs per NUMA node: ranks 0-1 on NUMA 0, ..., 6-7 on NUMA 3.
    for rank in 0..8 {
        let line = all
            .lines()
            .find(|l| l.contains(&format!("local rank {rank:>3}:")))
            .unwrap_or_else(|| panic!("no line for rank {rank}:\n{all}"));
        assert!(line.contains(&format!("NUMA {}", rank / 2)), "{line}");
        assert!(line.contains(&format!("GPU {rank} ")), "{line}");
        assert!(line.contains(&format!("NIC ib{}", rank / 2)), "{line}");
    }
}

#[test]
fn grace_hopper_like_node_one_rank_per_gpu_and_numa_node() {
    let out = topo(&["--xml", &machine("grace-hopper-like.xml"), "--ranks", "4"]);
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    for rank in 0..4 {
        assert!(
            all.contains(&format!("local rank {rank:>3}: NUMA {rank} ")),
            "{all}"
        );
    }
}

#[test]
fn json_output_and_a_cpu_list() {
    let out = topo(&[
        "--xml",
        &machine("laptop.xml"),
        "--ranks",
        "2",
        "--cpus",
        "0-3",
        "--json",
    ]);
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    let value: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let binding = value["binding"].as_array().expect("a binding");
    assert_eq!(binding.len(), 2, "{all}");
    for rank in binding {
        for cpu in rank["cpus"].as_array().expect("cpus") {
            assert!(cpu.as_u64().is_some_and(|c| c <= 3), "{all}");
        }
    }
}

#[test]
fn bad_input_is_a_clear_error() {
    let missing = topo(&["--xml", "/nonexistent/machine.xml"]);
    assert!(!missing.status.success());
    assert!(text(&missing).contains("cannot read /nonexistent/machine.xml"));
    let dir = std::env::temp_dir().join(format!("lumen-topo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let bad = dir.join("bad.xml");
    std::fs::write(&bad, "<topology><object type=\"Machine\"").expect("writing");
    let malformed = topo(&["--xml", &bad.display().to_string()]);
    assert!(!malformed.status.success());
    assert!(
        text(&malformed).contains("not well-formed XML"),
        "{}",
        text(&malformed)
    );
    let range = topo(&["--ranks", "1", "--cpus", "5-2"]);
    assert!(!range.status.success());
    assert!(text(&range).contains("bad cpu range"));
    let _ = std::fs::remove_dir_all(&dir);
}
