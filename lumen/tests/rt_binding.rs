//! Binding on real processes: with `LUMEN_BIND=cores` each rank of a
//! 2-rank job on this machine binds every one of its threads to cores of
//! its own chosen from the topology; `Runtime::binding()` says which, and a
//! task's executor thread really runs there (read back with
//! `sched_getaffinity`). With `LUMEN_BIND=none` nothing is bound.

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
