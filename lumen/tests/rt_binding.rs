//! Binding on real processes: with `LUMEN_BIND=cores` each rank of a
//! 2-rank job on this machine binds every one of its threads to cores of
//! its own chosen from the topology; `Runtime::binding()` says which, and a
//! task's executor thread really runs there (read back with
//! `sched_getaffinity`). With `LUMEN_BIND=none` nothing is bound. On the
//! synthetic DGX-like machine (`LUMEN_TOPOLOGY_XML`, its cpus 0 and 1 being
//! this machine's), each serving rank owns the GPUs its binding gives it:
//! its process sees only them (`CUDA_VISIBLE_DEVICES`), its tasks get
//! their ordinals; large objects are asked for on its NUMA node.

#[macro_use]
mod common;

use std::process::Command;

use common::scenario::*;
use common::*;

fn check(name: &str, output: &std::process::Output) {
    let all = text(output);
    assert!(output.status.success(), "scenario {name} failed:\n{all}");
    assert!(all.contains(&format!("scenario {name}: ok")), "{all}");
}

fn embedded(name: &str, bind: &str) {
    let mut command = Command::new(this_binary());
    command
        .args(scenario_args(name))
        .env("LUMEN_NUM_WORKERS", "1")
        .env("LUMEN_BIND", bind)
        .env_remove("LUMEN_RANK");
    check(name, &run_with_timeout(&mut command, 120));
}

fn launched(name: &str, bind: &str) {
    let mut command = Command::new(lumen());
    command
        .args(["run", "-n", "2", "--"])
        .arg(this_binary())
        .args(scenario_args(name))
        .env("LUMEN_BIND", bind);
    check(name, &run_with_timeout(&mut command, 120));
}

#[test]
fn embedded_cluster_binds_each_rank() {
    embedded("ranks_are_bound_to_cores_of_their_own", "cores");
}

#[test]
fn lumen_run_binds_each_rank() {
    launched("ranks_are_bound_to_cores_of_their_own", "cores");
}

#[test]
fn ranks_own_the_gpus_next_to_their_cores() {
    let name = "gpus_follow_the_binding";
    let xml = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../sched/tests/machines/dgx-like.xml"
    );
    let mut command = Command::new(lumen());
    command
        .args(["run", "-n", "3", "--"])
        .arg(this_binary())
        .args(scenario_args(name))
        .env("LUMEN_BIND", "cores")
        .env("LUMEN_TOPOLOGY_XML", xml)
        .env_remove("CUDA_VISIBLE_DEVICES")
        .env_remove("LUMEN_NUM_GPUS");
    check(name, &run_with_timeout(&mut command, 120));
}

#[test]
fn lumen_bind_none_binds_nothing() {
    launched("nothing_is_bound", "none");
}

mod scenarios {

    /// The cpus the calling thread may run on.
    fn my_cpus() -> Vec<usize> {
        // SAFETY: `set` is a plain bit set the kernel fills; its size is passed.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
                return Vec::new();
            }
            (0..libc::CPU_SETSIZE as usize)
                .filter(|&c| libc::CPU_ISSET(c, &set))
                .collect()
        }
    }

    /// What a serving rank says about its binding and its thread.
    #[lumen::remote]
    fn where_am_i() -> lumen::Result<(u32, Option<Vec<usize>>, Vec<usize>)> {
        let rt = lumen::current()?;
        Ok((rt.rank(), rt.binding().map(|b| b.cpus), my_cpus()))
    }

    #[test]
    #[ignore = "a scenario: run by the tests above in its own processes"]
    fn ranks_are_bound_to_cores_of_their_own() -> lumen::Result<()> {
        let rt = lumen::init()?;
        let mine = rt.binding().expect("LUMEN_BIND=cores binds the driver");
        assert!(!mine.cpus.is_empty());
        assert_eq!(my_cpus(), mine.cpus, "the driver's thread is pinned");
        let (rank, theirs, thread) = where_am_i::remote(&rt)?.get()?;
        assert_eq!(rank, 1);
        let theirs = theirs.expect("the serving rank bound itself");
        assert_eq!(thread, theirs, "its executor thread runs on its cores");
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        if cores >= 2 {
            assert!(
                mine.cpus.iter().all(|c| !theirs.contains(c)),
                "two ranks on {cores} cores share cpus: {:?} {:?}",
                mine.cpus,
                theirs
            );
        }
        println!("scenario ranks_are_bound_to_cores_of_their_own: ok");
        Ok(())
    }

    /// A serving rank's GPU view: (rank, CUDA_VISIBLE_DEVICES, its GPUs'
    /// PCI ids from the binding, the task's GPU ids).
    type GpuView = (u32, Option<String>, Vec<String>, Vec<u32>);

    #[lumen::remote]
    fn my_gpus() -> lumen::Result<GpuView> {
        let rt = lumen::current()?;
        let pci = rt
            .binding()
            .map(|b| b.gpus.into_iter().map(|g| g.pci_bus_id).collect())
            .unwrap_or_default();
        Ok((
            rt.rank(),
            std::env::var("CUDA_VISIBLE_DEVICES").ok(),
            pci,
            rt.gpu_ids(),
        ))
    }

    #[test]
    #[ignore = "a scenario: run by the tests above in its own processes"]
    fn gpus_follow_the_binding() -> lumen::Result<()> {
        let rt = lumen::init()?;
        let mut seen = std::collections::BTreeMap::new();
        // Two GPUs per serving rank (8 GPUs over 3 local ranks): one-GPU
        // tasks on both ranks, each seeing an ordinal of its rank's own.
        let refs: Vec<_> = (0..8)
            .map(|_| my_gpus::options().num_gpus(1.0).remote(&rt))
            .collect::<lumen::Result<_>>()?;
        for r in refs {
            let (rank, visible, pci, ids) = r.get()?;
            assert_eq!(ids.len(), 1, "one GPU: {ids:?}");
            assert!(ids[0] < 2, "ordinals of the rank's own GPUs: {ids:?}");
            let visible = visible.expect("CUDA_VISIBLE_DEVICES narrowed");
            assert_eq!(visible.split(',').count(), pci.len(), "{visible} {pci:?}");
            seen.entry(rank).or_insert((visible, pci));
        }
        assert_eq!(seen.len(), 2, "both serving ranks ran GPU tasks: {seen:?}");
        let views: Vec<&String> = seen.values().map(|(v, _)| v).collect();
        assert_ne!(views[0], views[1], "two ranks own different GPUs: {seen:?}");
        // A large object stored by a bound rank: its pages prefer its node.
        let big = rt.put(&vec![7u8; 4 << 20])?;
        assert_eq!(big.get()?.len(), 4 << 20);
        println!("gpus: {seen:?}");
        println!("scenario gpus_follow_the_binding: ok");
        Ok(())
    }

    #[test]
    #[ignore = "a scenario: run by the tests above in its own processes"]
    fn nothing_is_bound() -> lumen::Result<()> {
        let rt = lumen::init()?;
        assert!(rt.binding().is_none());
        let (_, theirs, _) = where_am_i::remote(&rt)?.get()?;
        assert!(theirs.is_none());
        println!("scenario nothing_is_bound: ok");
        Ok(())
    }
}
