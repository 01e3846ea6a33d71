//! Lumen programs started by MPI launchers: MPICH's `mpiexec.mpich` (Hydra,
//! PMI-1 over PMI_FD) and Open MPI's `mpirun` (rendezvous derived from the
//! Open MPI job id: one host, or across hosts inside a Slurm allocation). Skips, saying so, when a launcher is not
//! installed (scripts/install-deps.sh installs both).

mod common;

use std::process::Command;

use common::*;

fn installed(program: &str) -> bool {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        eprintln!("SKIPPED: {program} is not installed (scripts/install-deps.sh installs it)");
    }
    found
}

fn open_mpi(command: &mut Command) -> &mut Command {
    command
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .env("OMPI_MCA_rmaps_base_oversubscribe", "1")
        .env("OMPI_MCA_btl_tcp_if_include", "lo")
        .env("OMPI_MCA_oob_tcp_if_include", "lo")
        .env("RUST_BACKTRACE", "0")
}

#[test]
fn mpi_launch_mpiexec_mpich_four_ranks() {
    if !installed("mpiexec.mpich") {
        return;
    }
    let output = run_with_timeout(
        Command::new("mpiexec.mpich")
            .args(["-n", "4"])
            .arg(example("slurm_probe"))
            .arg("--verbose")
            .env("RUST_BACKTRACE", "0"),
        120,
    );
    let all = text(&output);
    assert!(output.status.success(), "{all}");
    assert!(all.contains("probe: ok 4 ranks on 1 hosts"), "{all}");
    assert!(all.contains("via Hydra"), "{all}");
    let output = run_with_timeout(
        Command::new("mpiexec.mpich")
            .args(["-n", "4"])
            .arg(ping())
            .args(["--sizes", "0,8,1048576"]),
        120,
    );
    let all = text(&output);
    assert!(output.status.success(), "{all}");
    assert!(all.contains("4 ranks exchanged 3 sizes"), "{all}");
}

#[test]
fn mpi_launch_open_mpi_mpirun_four_ranks() {
    if !installed("mpirun.openmpi") {
        return;
    }
    let output = run_with_timeout(
        open_mpi(
            Command::new("mpirun.openmpi")
                .args(["-n", "4"])
                .arg(example("slurm_probe")),
        ),
        120,
    );
    let all = text(&output);
    assert!(output.status.success(), "{all}");
    assert!(all.contains("probe: ok 4 ranks on 1 hosts"), "{all}");
    assert!(all.contains("via OpenMpi"), "{all}");
    let output = run_with_timeout(
        open_mpi(
            Command::new("mpirun.openmpi")
                .args(["-n", "4"])
                .arg(ping())
                .args(["--sizes", "0,8,1048576"]),
        ),
        120,
    );
    let all = text(&output);
    assert!(output.status.success(), "{all}");
    assert!(all.contains("4 ranks exchanged 3 sizes"), "{all}");
}

#[test]
fn mpi_launch_two_mpirun_jobs_at_once_do_not_meet() {
    if !installed("mpirun.openmpi") {
        return;
    }
    let spawn = || {
        open_mpi(
            Command::new("timeout")
                .args(["-k", "5", "120", "mpirun.openmpi", "-n", "3"])
                .arg(example("slurm_probe"))
                .args(["--hold", "1"]),
        )
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("starting mpirun")
    };
    let (a, b) = (spawn(), spawn());
    for child in [a, b] {
        let output = child.wait_with_output().unwrap();
        let all = text(&output);
        assert!(output.status.success(), "{all}");
        assert!(all.contains("probe: ok 3 ranks"), "{all}");
    }
}

/// Both MPI launchers across the three namespace hosts of the Slurm test
/// cluster, started from inside an allocation (they start their daemons
/// with srun): Hydra's PMI-1 spans hosts; Open MPI's rank 0 hosts the store
/// on the allocation's first node.
#[test]
fn mpi_launch_across_hosts_inside_a_slurm_allocation() {
    use lumen_testkit::{slurm_unavailable_reason, SlurmCluster, SlurmMode};
    if let Some(reason) = slurm_unavailable_reason(SlurmMode::Netns) {
        eprintln!("SKIPPED: no Slurm test cluster here: {reason}");
        return;
    }
    if !installed("mpiexec.mpich") || !installed("mpirun.openmpi") {
        return;
    }
    let cluster = SlurmCluster::ensure(SlurmMode::Netns).expect("starting the Slurm test cluster");
    let three_hosts = r#"probe: ok 6 ranks on 3 hosts ["h1", "h2", "h3"]"#;
    let output = run_with_timeout(
        cluster
            .command("salloc")
            .args(["-N", "3", "--ntasks-per-node=2", "mpiexec.mpich", "-n", "6"])
            .arg(example("slurm_probe"))
            .env("RUST_BACKTRACE", "0"),
        120,
    );
    let all = text(&output);
    assert!(output.status.success(), "{all}");
    assert!(all.contains(&format!("{three_hosts} via Hydra")), "{all}");
    let output = run_with_timeout(
        open_mpi(
            cluster
                .command("salloc")
                .args([
                    "-N",
                    "3",
                    "--ntasks-per-node=2",
                    "mpirun.openmpi",
                    "-n",
                    "6",
                ])
                .arg(example("slurm_probe")),
        )
        .env("OMPI_MCA_btl_tcp_if_include", "10.78.0.0/24")
        .env("OMPI_MCA_oob_tcp_if_include", "10.78.0.0/24"),
        120,
    );
    let all = text(&output);
    assert!(output.status.success(), "{all}");
    assert!(all.contains(&format!("{three_hosts} via OpenMpi")), "{all}");
}

/// Feature `mpi`: a program that initialises MPI itself builds Lumen's world
/// from MPI_COMM_WORLD (same rank order) and uses both. scripts/test.sh runs
/// this file a second time with `--features mpi`.
#[test]
fn mpi_launch_world_from_mpi_comm_world() {
    if !cfg!(feature = "mpi") {
        eprintln!("SKIPPED: built without the `mpi` feature (scripts/test.sh runs it with --features mpi)");
        return;
    }
    if !installed("mpirun.openmpi") {
        return;
    }
    let output = run_with_timeout(
        open_mpi(
            Command::new("mpirun.openmpi")
                .args(["-n", "4"])
                .arg(example("mpi_interop")),
        ),
        120,
    );
    let all = text(&output);
    assert!(output.status.success(), "{all}");
    assert!(
        all.contains("mpi_interop: 4 ranks, MPI allreduce 6 = Lumen ring 6, same rank order"),
        "{all}"
    );
}

/// The transport's all-to-all check (an example of `lumen-transport`).
fn ping() -> std::path::PathBuf {
    lumen_testkit::job::workspace_example("lumen-transport", "ping")
}
