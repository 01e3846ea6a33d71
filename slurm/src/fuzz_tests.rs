//! Fuzz harnesses of the Slurm parsers (lumen_testkit::fuzz;
//! `LUMEN_FUZZ_ITERS` inputs each): host lists, tasks-per-node strings, a
//! step's `SLURM_*` environment with one variable mutated at a time, and
//! `CUDA_VISIBLE_DEVICES` for the GPU binding. None may panic or hang.

use std::collections::HashMap;
use std::time::Duration;

use lumen_testkit::fuzz::{fuzz, iterations};

const HANG: Duration = Duration::from_secs(1);

fn text_seeds(seeds: &[&str]) -> Vec<Vec<u8>> {
    seeds.iter().map(|s| s.as_bytes().to_vec()).collect()
}

#[test]
fn hostlists() {
    let seeds = text_seeds(&[
        "n[1-2]",
        "node[001-128],gpu[1,3-5]",
        "a,b,c",
        "rack[1-2]-n[01-04]",
        "x[9-11]y",
    ]);
    fuzz("hostlist", &seeds, iterations(), |input| {
        if let Ok(hosts) = crate::hostlist::expand(&String::from_utf8_lossy(input)) {
            let _ = crate::hostlist::compress(&hosts);
        }
    })
    .assert_clean(HANG);
}

#[test]
fn tasks_per_node() {
    let seeds = text_seeds(&["2(x2)", "4,3(x2),1", "1", "8(x128)"]);
    fuzz("tasks_per_node", &seeds, iterations(), |input| {
        let _ = crate::tasks_per_node::decode(&String::from_utf8_lossy(input));
    })
    .assert_clean(HANG);
}

#[test]
fn step_environment() {
    let base: Vec<(&str, &str)> = vec![
        ("SLURM_JOB_ID", "42"),
        ("SLURM_STEP_ID", "0"),
        ("SLURM_PROCID", "3"),
        ("SLURM_NTASKS", "4"),
        ("SLURM_LOCALID", "1"),
        ("SLURM_NODEID", "1"),
        ("SLURM_STEP_NODELIST", "n[1-2]"),
        ("SLURM_STEP_TASKS_PER_NODE", "2(x2)"),
        ("SLURM_CPUS_PER_TASK", "2"),
        ("SLURM_STEP_GPUS", "0,1"),
        ("SLURM_GPUS_PER_TASK", "1"),
    ];
    // A seed per variable: its value; the mutant replaces that variable.
    let seeds: Vec<Vec<u8>> = base
        .iter()
        .enumerate()
        .map(|(i, (_, v))| {
            let mut seed = vec![i as u8];
            seed.extend_from_slice(v.as_bytes());
            seed
        })
        .collect();
    fuzz("slurm_env", &seeds, iterations(), |input| {
        let Some((&which, value)) = input.split_first() else {
            return;
        };
        let mut env: HashMap<&str, String> =
            base.iter().map(|(k, v)| (*k, v.to_string())).collect();
        let key = base[which as usize % base.len()].0;
        env.insert(key, String::from_utf8_lossy(value).into_owned());
        if let Ok(Some(step)) = crate::SlurmStep::from_env(|k| env.get(k).cloned()) {
            let _ = step.rank_nodes();
            let _ = step.block_distribution_matches();
        }
    })
    .assert_clean(HANG);
}

#[test]
fn gpu_binding() {
    let seeds = text_seeds(&["0,1,2,3", "GPU-1234,GPU-5678", "3", ""]);
    fuzz("gpu_binding", &seeds, iterations(), |input| {
        let text = String::from_utf8_lossy(input);
        for (rank, size, per) in [(0, 1, None), (1, 2, Some(1)), (3, 4, Some(2))] {
            let _ = crate::binding::gpus_for_local_rank(
                Some(&[0, 1, 2, 3]),
                Some(&text),
                rank,
                size,
                per,
            );
            let _ = crate::binding::gpus_for_local_rank(None, Some(&text), rank, size, per);
        }
    })
    .assert_clean(HANG);
}
